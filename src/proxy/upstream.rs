//! The pooled client to the upstream API and the rewriting of requests on
//! their way there: hop-by-hop fields dropped, `X-Forwarded-*` and `Via`
//! set, the response head bounded by `upstream_timeout`.
//!
//! Errors are tagged with their source, which decides what the client
//! gets: a refused connection is a 502, a timeout a 504.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, VIA};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::cache::policy::strip_hop_by_hop;
use crate::config::UpstreamUrlError;
use crate::metrics::Metrics;

pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const VIA_VALUE: &str = "1.1 oddscache";

/// Request fields some frameworks obey to answer for another host, URL or
/// method. None is in the cache key, so an attacker's answer would be
/// stored for everyone; they are dropped on the way upstream, as Varnish
/// setups do in `vcl_recv`, rather than keyed, which would split the cache
/// for no honest client's benefit.
const UNKEYED_OVERRIDES: [&str; 9] = [
    "x-forwarded-host",
    "x-forwarded-server",
    "x-host",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

#[derive(Clone, Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream: {0}")]
    Connect(String),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream failed: {0}")]
    Failed(String),
    #[error("upstream body failed: {0}")]
    Body(String),
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Timeout(_) => "timeout",
            _ => "error",
        }
    }
}

/// Whether the upstream has answered lately, for `/readyz`.
///
/// Lock-free: [`Upstream::send`] updates it on every request. Times are
/// nanoseconds since `origin`, plus one, so zero can mean "never".
#[derive(Debug)]
pub struct UpstreamHealth {
    origin: Instant,
    /// When the upstream last answered (any status: it is reachable).
    last_success: AtomicU64,
    /// When the current run of failures began; zero while it answers.
    failing_since: AtomicU64,
}

impl Default for UpstreamHealth {
    fn default() -> Self {
        UpstreamHealth {
            origin: Instant::now(),
            last_success: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
        }
    }
}

impl UpstreamHealth {
    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64 + 1
    }

    pub fn success(&self, at: Instant) {
        self.last_success.store(self.stamp(at), Ordering::Relaxed);
        self.failing_since.store(0, Ordering::Relaxed);
    }

    pub fn failure(&self, at: Instant) {
        // Only the first failure of a run starts the clock.
        let _ = self.failing_since.compare_exchange(
            0,
            self.stamp(at),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Ready unless every request for `window` (`admin.readiness_window`)
    /// has failed. A
    /// sidecar that has seen no traffic yet is ready: the upstream may
    /// simply be idle.
    pub fn is_ready(&self, now: Instant, window: Duration) -> bool {
        let since = self.failing_since.load(Ordering::Relaxed);
        since == 0 || self.stamp(now).saturating_sub(since) < window.as_nanos() as u64
    }

    /// How long ago the upstream last answered, if it ever did.
    pub fn last_success_age(&self, now: Instant) -> Option<Duration> {
        match self.last_success.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_nanos(self.stamp(now).saturating_sub(at))),
        }
    }
}

pub struct Upstream {
    client: Client<HttpConnector, UpstreamBody>,
    /// Shared with the admin port's `/readyz`.
    health: Arc<UpstreamHealth>,
    authority: Authority,
    /// As configured, for error bodies and logs.
    url: String,
    timeout: Duration,
}

impl Upstream {
    pub fn new(url: &str, timeout: Duration) -> Result<Upstream, UpstreamUrlError> {
        let authority = crate::config::upstream_authority(url)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Upstream {
            client,
            health: Arc::default(),
            authority,
            url: url.trim_end_matches('/').to_string(),
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn health(&self) -> &Arc<UpstreamHealth> {
        &self.health
    }

    /// Rewrites a client request in place for the upstream.
    pub fn prepare(&self, parts: &mut http::request::Parts, peer: SocketAddr) {
        // HTTP/2 clients name the site in :authority instead of Host; it
        // goes on as Host, as an HTTP/1.1 client's Host does.
        let client_authority = parts.uri.authority().cloned();
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build();
        if let Ok(u) = uri.as_mut() {
            parts.uri = std::mem::take(u);
        }
        parts.version = http::Version::HTTP_11;
        let h = &mut parts.headers;
        strip_hop_by_hop(h);
        for name in UNKEYED_OVERRIDES {
            h.remove(name);
        }
        if !h.contains_key(http::header::HOST) {
            let authority = client_authority.as_ref().unwrap_or(&self.authority);
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                h.insert(http::header::HOST, v);
            }
        }
        let ip = peer.ip().to_string();
        let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
        // An ingress in front may already know the scheme was https.
        if !h.contains_key(&X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        }
        append_via(h);
    }

    /// Sends a prepared request; the timeout covers the whole response head.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        metrics: &Metrics,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(source_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Failed(source_chain(&e))),
            Ok(Ok(resp)) => Ok(resp),
        };
        metrics
            .upstream_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(resp) => {
                self.health.success(Instant::now());
                metrics.upstream_status(resp.status().as_str());
            }
            Err(e) => {
                self.health.failure(Instant::now());
                metrics.upstream_status(e.label());
            }
        }
        result
    }
}

/// Makes the Host field say what the request's target names, before the
/// request is keyed or forwarded: an h2 client names the site only in
/// `:authority`, and an absolute-form target's authority replaces Host (RFC
/// 9112 §3.2.2). The key of a response that `Vary: Host` then holds the
/// Host the upstream got; without this, a request with no Host field was
/// keyed as Host-less but forwarded with its target's host, and filled the
/// variant every h2 client reads.
pub fn pin_host<B>(req: &mut Request<B>) {
    let Some(authority) = req.uri().authority() else {
        return;
    };
    // host[:port], without any userinfo.
    let host = match authority.port() {
        Some(port) => format!("{}:{}", authority.host(), port.as_str()),
        None => authority.host().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&host) {
        req.headers_mut().insert(http::header::HOST, v);
    }
}

pub fn append_via(h: &mut http::HeaderMap) {
    let via = match h.get(VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {VIA_VALUE}")).ok(),
        None => Some(HeaderValue::from_static(VIA_VALUE)),
    };
    if let Some(v) = via {
        h.insert(VIA, v);
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_follows_the_target_authority_without_userinfo() {
        let mut req = Request::get("http://user:pw@evil.example:81/g")
            .header("host", "x")
            .body(())
            .unwrap();
        pin_host(&mut req);
        assert_eq!(req.headers()["host"], "evil.example:81");
        let mut origin_form = Request::get("/g").header("host", "x").body(()).unwrap();
        pin_host(&mut origin_form);
        assert_eq!(origin_form.headers()["host"], "x");
    }

    #[test]
    fn ready_until_the_upstream_has_failed_for_a_while() {
        let h = UpstreamHealth::default();
        let t0 = h.origin;
        let w = Duration::from_secs(30);
        assert!(
            h.is_ready(t0 + Duration::from_secs(3600), w),
            "no traffic yet"
        );
        h.failure(t0 + Duration::from_secs(1));
        h.failure(t0 + Duration::from_secs(20));
        assert!(h.is_ready(t0 + Duration::from_secs(30), w));
        assert!(!h.is_ready(t0 + Duration::from_secs(31), w));
        assert!(
            !h.is_ready(t0 + Duration::from_secs(3), Duration::from_secs(1)),
            "a shorter window flips sooner"
        );
        h.success(t0 + Duration::from_secs(40));
        assert!(h.is_ready(t0 + Duration::from_secs(500), w));
        assert_eq!(
            h.last_success_age(t0 + Duration::from_secs(45)),
            Some(Duration::from_secs(5))
        );
    }
}
