//! A scriptable HTTP/1.1 upstream on `127.0.0.1:0` that logs what it
//! receives, and a raw TCP one for responses no well-behaved server sends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use super::PATIENCE;

/// What the upstream answers: status, headers, a body (whole or chunked),
/// and how long to wait before sending the head.
pub struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: ReplyBody,
    delay: Duration,
}

enum ReplyBody {
    Full(Bytes),
    /// Sent without `Content-Length`, one frame per chunk.
    Chunked(Vec<Bytes>),
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("valid status"),
            headers: Vec::new(),
            body: ReplyBody::Full(Bytes::new()),
            delay: Duration::ZERO,
        }
    }

    /// A 200 with a JSON body.
    pub fn json(body: impl Into<Bytes>) -> Reply {
        Reply::new(200)
            .header("content-type", "application/json")
            .body(body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        ));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = ReplyBody::Full(body.into());
        self
    }

    pub fn chunked(mut self, chunks: Vec<Bytes>) -> Reply {
        self.body = ReplyBody::Chunked(chunks);
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    fn into_response(self) -> (Response<UpBody>, Duration) {
        let body: UpBody = match self.body {
            ReplyBody::Full(b) => Full::new(b).map_err(|never| match never {}).boxed(),
            ReplyBody::Chunked(chunks) => StreamBody::new(futures_util::stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Ok::<_, Infallible>(Frame::data(c))),
            ))
            .boxed(),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        for (name, value) in self.headers {
            resp.headers_mut().append(name, value);
        }
        (resp, self.delay)
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

/// The test's script for the upstream: it sees the request head and body.
pub type Handler = Arc<dyn Fn(&Parts, &Bytes) -> Reply + Send + Sync>;

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ascii"))
    }
}

struct UpstreamState {
    handler: RwLock<Handler>,
    log: Mutex<Vec<Seen>>,
    /// Requests received so far; a watch so tests can wait for a count.
    hits: watch::Sender<usize>,
    conns: Mutex<Vec<AbortHandle>>,
}

/// A scriptable HTTP/1.1 upstream on `127.0.0.1:0`.
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    accept: JoinHandle<()>,
}

impl Upstream {
    pub async fn start<F>(handler: F) -> Upstream
    where
        F: Fn(&Parts, &Bytes) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(UpstreamState {
            handler: RwLock::new(Arc::new(handler)),
            log: Mutex::new(Vec::new()),
            hits: watch::channel(0).0,
            conns: Mutex::new(Vec::new()),
        });
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&accept_state);
                let conn = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                accept_state.conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        Upstream {
            addr,
            state,
            accept,
        }
    }

    /// An upstream that answers every request with the same JSON body.
    pub async fn fixed(body: &'static str) -> Upstream {
        Upstream::start(move |_, _| Reply::json(body)).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_handler<F>(&self, handler: F)
    where
        F: Fn(&Parts, &Bytes) -> Reply + Send + Sync + 'static,
    {
        *self.state.handler.write().unwrap() = Arc::new(handler);
    }

    /// How many requests reached the upstream.
    pub fn hits(&self) -> usize {
        *self.state.hits.borrow()
    }

    /// Every request received so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw a request")
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_hits(&self, n: usize) {
        let mut rx = self.state.hits.subscribe();
        tokio::time::timeout(PATIENCE, rx.wait_for(|h| *h >= n))
            .await
            .unwrap_or_else(|_| panic!("upstream saw {} requests, not {n}", self.hits()))
            .expect("upstream state alive");
    }

    /// Stops listening and closes every connection, so the port refuses.
    pub fn stop(&self) {
        self.accept.abort();
        for c in self.state.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(state: &UpstreamState, req: Request<Incoming>) -> Response<UpBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.log.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    state.hits.send_modify(|h| *h += 1);
    let handler = Arc::clone(&state.handler.read().unwrap());
    let (resp, delay) = handler(&parts, &body).into_response();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    resp
}

/// How a [`RawUpstream`] ends each connection after writing its bytes.
#[derive(Clone, Copy, Debug)]
pub enum RawEnd {
    /// An orderly close (FIN).
    Close,
    /// A reset (RST), as a crashed peer would.
    Reset,
}

/// An upstream that answers every request with fixed bytes and hangs up:
/// for responses no well-behaved server would send.
pub struct RawUpstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(reply: Vec<u8>, end: RawEnd) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let reply = Bytes::from(reply);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = Arc::clone(&counter);
                let reply = reply.clone();
                tokio::spawn(async move {
                    if read_head(&mut stream).await.is_none() {
                        return; // an idle pooled connection closed
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.write_all(&reply).await;
                    match end {
                        RawEnd::Close => {
                            let _ = stream.shutdown().await;
                        }
                        RawEnd::Reset => {
                            // Linger 0 turns the close into a RST; nothing
                            // blocks, since there is no lingering.
                            #[allow(deprecated)]
                            let _ = stream.set_linger(Some(Duration::ZERO));
                        }
                    }
                    drop(stream);
                });
            }
        });
        RawUpstream { addr, hits, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads up to the end of a request head (GETs only: no body).
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// A port with nothing listening on it: bound, read, released.
pub async fn dead_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    format!("http://{addr}")
}
