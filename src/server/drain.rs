//! Graceful shutdown of a listener's connections, as hyper-util's
//! `GracefulShutdown` does it, for a fraction of its cost per request.
//!
//! hyper-util's watch polls a `tokio::sync::watch` change future every time
//! a connection is polled: about 200 instructions and a shared cache line
//! on every request of every connection, for a signal that fires once in
//! the process's life. Here a connection reads one flag per poll, and
//! files its task's waker once, so a shutdown can wake it: an idle
//! keep-alive connection is asleep in a read and would not look otherwise.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use pin_project_lite::pin_project;
use tokio::sync::Notify;

/// A hyper connection that can be told to finish gracefully: hyper-util's
/// `GracefulConnection`, which is sealed and leaves out HTTP/1.1
/// connections that allow upgrades (the WebSocket of SPEC §8).
pub trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I, B, S> Graceful for http1::Connection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

impl<I, B, S> Graceful for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, B, S, E> Graceful for http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// One listener's connections, and their shutdown.
#[derive(Debug, Default)]
pub struct Drain {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    draining: AtomicBool,
    next_id: AtomicU64,
    /// The task of each connection still running, to wake on shutdown.
    conns: Mutex<HashMap<u64, Waker>>,
    /// Told when the last connection ends while draining.
    drained: Notify,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Waker>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Files a connection about to be served: [`Self::shutdown`] waits
    /// for it from now on, until the watcher (or what it watches) is
    /// dropped.
    pub fn watcher(&self) -> Watcher {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.conns().insert(id, Waker::noop().clone());
        Watcher {
            shared: Arc::clone(&self.shared),
            id,
        }
    }

    /// How many connections are running.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.shared.conns().len()
    }

    /// Tells every connection to finish, and resolves once they all have.
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        loop {
            let drained = self.shared.drained.notified();
            {
                let conns = self.shared.conns();
                if conns.is_empty() {
                    return;
                }
                for waker in conns.values() {
                    waker.wake_by_ref();
                }
            }
            drained.await;
        }
    }
}

/// A connection filed with a [`Drain`].
#[derive(Debug)]
pub struct Watcher {
    shared: Arc<Shared>,
    id: u64,
}

impl Watcher {
    /// `conn`, told to finish gracefully (the response in flight, then
    /// close) once the drain's shutdown begins.
    pub fn watch<C: Graceful>(self, conn: C) -> Watched<C> {
        Watched {
            conn,
            watcher: self,
            waker: None,
            told: false,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut conns = self.shared.conns();
        conns.remove(&self.id);
        if conns.is_empty() && self.shared.draining.load(Ordering::SeqCst) {
            self.shared.drained.notify_waiters();
        }
    }
}

pin_project! {
    /// A connection under a [`Drain`].
    pub struct Watched<C> {
        #[pin]
        conn: C,
        watcher: Watcher,
        // The waker filed for this connection's task.
        waker: Option<Waker>,
        // Whether the connection was told to finish.
        told: bool,
    }
}

impl<C: Graceful> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.told {
            let filed = this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            let shared = &this.watcher.shared;
            if !filed {
                shared.conns().insert(this.watcher.id, cx.waker().clone());
                *this.waker = Some(cx.waker().clone());
            }
            // Read after filing the waker: a shutdown that set the flag
            // before it did not wake this task, so it must see the flag.
            if shared.draining.load(Ordering::SeqCst) {
                *this.told = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use tokio::io::DuplexStream;

    use super::*;

    /// A served HTTP/1.1 connection whose answers take `delay`, and the
    /// client end of it.
    fn serve(
        drain: &Drain,
        delay: Duration,
    ) -> (
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
        DuplexStream,
    ) {
        let (client, server) = tokio::io::duplex(64 << 10);
        let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"odds"))))
        });
        let conn = drain
            .watcher()
            .watch(http1::Builder::new().serve_connection(TokioIo::new(server), svc));
        (tokio::spawn(conn), client)
    }

    async fn client(io: DuplexStream) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        send
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_waits_for_busy_ones() {
        let drain = Drain::new();
        let (idle, idle_io) = serve(&drain, Duration::ZERO);
        let (busy, busy_io) = serve(&drain, Duration::from_millis(300));
        let mut idle_client = client(idle_io).await;
        let mut busy_client = client(busy_io).await;
        // The idle connection has answered one request and waits for more.
        let r = idle_client
            .send_request(Request::new(Empty::new()))
            .await
            .unwrap();
        assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "odds");
        let in_flight = tokio::spawn(async move {
            let r = busy_client.send_request(Request::new(Empty::new())).await?;
            r.into_body().collect().await.map(|b| b.to_bytes())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(drain.count(), 2);

        let shutdown = tokio::spawn(drain.shutdown());
        // The idle one ends at once, asleep in its read as it was.
        tokio::time::timeout(Duration::from_millis(200), idle)
            .await
            .expect("the idle connection was not woken")
            .unwrap()
            .unwrap();
        assert!(
            !shutdown.is_finished(),
            "returned before the busy connection ended"
        );
        // The busy one finishes its response, then ends.
        assert_eq!(in_flight.await.unwrap().unwrap(), "odds");
        busy.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(1), shutdown)
            .await
            .expect("shutdown returns once both have ended")
            .unwrap();
    }

    #[tokio::test]
    async fn a_filed_connection_holds_the_shutdown_until_it_is_dropped() {
        let drain = Drain::new();
        // Accepted, still telling HTTP/1.1 from h2c: not yet watching.
        let peeking = drain.watcher();
        let shutdown = tokio::spawn(drain.shutdown());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!shutdown.is_finished(), "returned with a connection filed");
        drop(peeking);
        tokio::time::timeout(Duration::from_secs(1), shutdown)
            .await
            .expect("shutdown returns once it is dropped")
            .unwrap();
    }

    #[tokio::test]
    async fn a_connection_accepted_during_shutdown_is_told_at_its_first_poll() {
        let drain = Drain::new();
        let shared = Arc::clone(&drain.shared);
        shared.draining.store(true, Ordering::SeqCst);
        let (conn, io) = serve(&drain, Duration::ZERO);
        drop(io);
        conn.await.unwrap().unwrap();
        assert!(shared.conns().is_empty());
        // Nothing left: shutdown returns at once.
        tokio::time::timeout(Duration::from_secs(1), drain.shutdown())
            .await
            .expect("shutdown with no connections");
    }
}
