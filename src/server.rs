//! The accept loop shared by the proxy and admin listeners.
//!
//! Shaped after hyper-util's `server_graceful` example: accept until the
//! shutdown signal fires, then stop accepting and give in-flight connections
//! up to the grace period to finish. HTTP/1.1 and h2c share one port through
//! hyper-util's auto builder.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::shutdown;

/// Per-listener HTTP limits.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Bounds the request head; hyper answers 431 past it.
    pub max_header_bytes: usize,
    /// A client that has not sent its whole head by then is dropped (slowloris).
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `listener` until `shutdown` fires, then drains for up to `grace`.
///
/// `make_service` is called once per connection with the peer address, so
/// services can key rate limits and `X-Forwarded-For` on it.
pub async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    make_service: M,
    limits: HttpLimits,
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's floor for the read buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), make_service(peer))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(listener = name, %peer, error = %e, "connection ended with error");
            }
        });
    }
    drop(listener);
    info!(
        listener = name,
        "stopped accepting; draining in-flight requests"
    );
    tokio::select! {
        _ = graceful.shutdown() => debug!(listener = name, "drained"),
        _ = tokio::time::sleep(grace) => warn!(listener = name, ?grace, "shutdown grace expired; closing remaining connections"),
    }
}

/// Runs `fut` to completion or until shutdown, whichever comes first.
pub async fn until_shutdown<F: Future<Output = ()>>(fut: F, mut shutdown: shutdown::Signal) {
    tokio::select! {
        _ = fut => {}
        _ = shutdown.recv() => {}
    }
}
