//! The accept loop shared by the proxy and admin listeners.
//!
//! Shaped after hyper-util's `server_graceful` example: accept until the
//! shutdown signal fires, then stop accepting and give in-flight connections
//! up to the grace period to finish (through [`drain`], which does
//! what hyper-util's graceful watch does without polling a channel on every
//! request). HTTP/1.1 and h2c (prior knowledge)
//! share one port: the accept task peeks at the first bytes, which it must
//! wait for anyway to bound silent clients, and hands the connection to
//! hyper's HTTP/1.1 or HTTP/2 server. hyper-util's auto builder does the
//! same sniffing, but then reads every request through a rewind buffer.
//!
//! Hostile clients are bounded here, before any request exists: at most
//! `max_connections` are open at once, and a client must start its request
//! within `header_read_timeout` and finish the head within it too.

mod drain;
mod header_timer;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::metrics::ConnectionMetrics;
use crate::shutdown;
use drain::Drain;
use header_timer::HeaderDeadlines;

/// Per-listener HTTP limits.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Bounds the request head; hyper answers 431 past it.
    pub max_header_bytes: usize,
    /// A client that has not sent its whole head by then is dropped (slowloris).
    pub header_read_timeout: Duration,
    /// Open connections at most; each holds a permit until it ends.
    pub max_connections: usize,
    /// Data the client leaves unacknowledged (or its window shut) this
    /// long closes the connection, in the kernel (TCP_USER_TIMEOUT); a
    /// stalled reader is not polled, so nothing above TCP could see it.
    pub send_timeout: Option<Duration>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            send_timeout: None,
        }
    }
}

/// Counts one open connection for as long as it lives.
struct Open(Option<Gauge>);

impl Open {
    fn new(gauge: Option<&Gauge>) -> Open {
        if let Some(g) = gauge {
            g.inc();
        }
        Open(gauge.cloned())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// Serves `listener` until `shutdown` fires, then drains for up to `grace`.
///
/// `make_service` is called once per connection with the peer address, so
/// services can key rate limits and `X-Forwarded-For` on it. `conns`, when
/// given, counts open and refused connections.
///
/// At `max_connections`, a new connection is accepted and closed at once,
/// as Envoy's listener connection limit does, rather than left in the
/// kernel's backlog as nginx and HAProxy do when they stop accepting: the
/// client (or its load balancer) learns at once to try another replica
/// instead of waiting out a connect timeout, and each refusal can be
/// counted, which a backlog hides.
pub async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    make_service: M,
    limits: HttpLimits,
    conns: Option<ConnectionMetrics>,
    mut shutdown: shutdown::Signal,
    grace: Duration,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Each connection gets its own header timer (see `header_timer`).
    let deadlines = HeaderDeadlines::new(limits.header_read_timeout);
    let sweeper = tokio::spawn(Arc::clone(&deadlines).sweep());
    let mut h1 = http1::Builder::new();
    h1.header_read_timeout(limits.header_read_timeout)
        // hyper's floor for the read buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let drain = Drain::new();
    let permits = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let local = listener.local_addr().ok();
    info!(listener = name, addr = ?local, "listening");

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if let Some(c) = &conns {
                c.rejected.inc();
            }
            debug!(listener = name, %peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let open = Open::new(conns.as_ref().map(|c| &c.open));
        let _ = stream.set_nodelay(true);
        if let Some(timeout) = limits.send_timeout {
            let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(timeout));
        }
        let (mut h1, h2) = (h1.clone(), h2.clone());
        let deadlines = Arc::clone(&deadlines);
        let service = make_service(peer);
        let watcher = drain.watcher();
        let mut stop = shutdown.clone();
        let first_byte = limits.header_read_timeout;
        tokio::spawn(async move {
            let _held = (permit, open);
            // The wait for the first bytes is bounded like hyper bounds a
            // request head: a client that connects and says nothing, or
            // half of the h2 preface, does not hold its connection.
            let version = tokio::select! {
                said = tokio::time::timeout(first_byte, which_version(&stream)) => match said {
                    Ok(Some(v)) => v,
                    _ => {
                        debug!(listener = name, %peer, "no request within header_read_timeout; closing");
                        return;
                    }
                },
                _ = stop.recv() => return,
            };
            let io = TokioIo::new(stream);
            let ended = match version {
                Version::Http1 => {
                    // Only HTTP/1.1 reads a head per request under a deadline.
                    let deadline = deadlines.conn();
                    h1.timer(deadline.timer());
                    // Upgrades carry the change hints' WebSocket (SPEC §8);
                    // a service that never answers 101 never upgrades.
                    let conn = h1
                        .serve_connection(io, deadline.service(service))
                        .with_upgrades();
                    deadline.guard(watcher.watch(conn)).await
                }
                Version::H2 => Some(watcher.watch(h2.serve_connection(io, service)).await),
            };
            match ended {
                None => {
                    debug!(listener = name, %peer, "no complete head within header_read_timeout; closing")
                }
                Some(Err(e)) => {
                    debug!(listener = name, %peer, error = %e, "connection ended with error")
                }
                Some(Ok(())) => {}
            }
        });
    }
    drop(listener);
    info!(
        listener = name,
        "stopped accepting; draining in-flight requests"
    );
    tokio::select! {
        _ = drain.shutdown() => debug!(listener = name, "drained"),
        _ = tokio::time::sleep(grace) => warn!(listener = name, ?grace, "shutdown grace expired; closing remaining connections"),
    }
    sweeper.abort();
}

/// The protocol a connection speaks, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Http1,
    /// h2c with prior knowledge (RFC 9113 §3.3): the client's preface.
    H2,
}

/// Waits until the client has sent enough to tell HTTP/1.1 from h2c: a
/// byte that leaves the h2 preface, or the whole preface. `None` when the
/// client hung up first. Peeking consumes nothing, so hyper reads the
/// bytes again from the socket.
async fn which_version(stream: &tokio::net::TcpStream) -> Option<Version> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) if buf[..n] != PREFACE[..n] => return Some(Version::Http1),
            Ok(n) if n == PREFACE.len() => return Some(Version::H2),
            // Real h2c clients send the preface in one write, so only a
            // dawdler waits here; peek does not consume, so poll gently.
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Runs `fut` to completion or until shutdown, whichever comes first.
pub async fn until_shutdown<F: Future<Output = ()>>(fut: F, mut shutdown: shutdown::Signal) {
    tokio::select! {
        _ = fut => {}
        _ = shutdown.recv() => {}
    }
}
