//! The request path of the proxy port.
//!
//! admit → key → lookup → hit, or upstream → inspect → store. GET and HEAD
//! are looked up; concurrent misses for one key share one upstream fetch
//! (the fill lock); every other method is forwarded and, when it succeeds,
//! drops the cached entries of its URI (RFC 9111 §4.4).

pub mod admit;
pub mod body;
mod fill;
mod from_l2;
pub mod respond;
pub mod upstream;
mod write;

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RANGE, RETRY_AFTER, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::debug;

use crate::cache::entry::Standing;
use crate::cache::key;
use crate::cache::outcome::{Fwd, Outcome, X_CACHE};
use crate::cache::store::{wait_fill, Fill, FillState, Lookup, Store};
use crate::config::{Config, Routes};
use crate::invalidate::detect::Detector;
use crate::invalidate::redis::RedisTier;
use crate::metrics::Metrics;
use crate::push::Push;
use admit::Admission;
use body::ProxyBody;
use upstream::Upstream;

/// What [`Proxy::call`] gives hyper: a hit, ready at once, or the boxed
/// rest of the request path.
pub type Answer = Either<
    Ready<Result<Response<ProxyBody>, Infallible>>,
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>,
>;

/// The settings of `[cache]` the request path reads, resolved once.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub max_object_bytes: usize,
    pub default_ttl: Duration,
    pub honor_origin: bool,
    pub stale_if_error: Duration,
    pub stale_while_revalidate: Duration,
    pub coalesce_timeout: Duration,
}

/// Why the request path cannot be built from a config (which `check`
/// would have refused).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Routes(Vec<crate::config::Problem>),
    #[error("proxy.upstream: {0}")]
    Upstream(#[from] crate::config::UpstreamUrlError),
}

pub struct Proxy {
    store: Arc<Store>,
    upstream: Upstream,
    routes: Routes,
    settings: CacheSettings,
    metrics: Arc<Metrics>,
    detector: Arc<Detector>,
    /// The per-client rate limit; `None` without `[rate_limit]`.
    admission: Option<Arc<Admission>>,
    /// The Redis tier when it keeps the shared L2 (`store_responses`).
    l2: Option<Arc<RedisTier>>,
    /// Change hints on `push.path`, with `[push]`.
    push: Option<Arc<Push>>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        detector: Arc<Detector>,
        redis: Option<Arc<RedisTier>>,
        push: Option<Arc<Push>>,
    ) -> Result<Proxy, ProxyError> {
        let routes = Routes::compile(&config.routes).map_err(ProxyError::Routes)?;
        let c = &config.cache;
        let l2 = redis.filter(|r| r.stores_responses());
        Ok(Proxy {
            store,
            upstream: Upstream::new(&config.proxy.upstream, config.proxy.upstream_timeout.get())?,
            routes,
            settings: CacheSettings {
                max_object_bytes: c.max_object_bytes.as_usize(),
                default_ttl: c.default_ttl.get(),
                honor_origin: c.honor_origin_cache_control,
                stale_if_error: c.stale_if_error.get(),
                stale_while_revalidate: c.stale_while_revalidate.get(),
                coalesce_timeout: c.coalesce_timeout.get(),
            },
            metrics,
            detector,
            admission: config
                .rate_limit
                .as_ref()
                .map(|rl| Arc::new(Admission::new(rl))),
            l2,
            push,
        })
    }

    /// The rate limiter, for its pruning task and for tests.
    pub fn admission(&self) -> Option<&Arc<Admission>> {
        self.admission.as_ref()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Whether the upstream answers lately, for the admin port's `/readyz`.
    pub fn upstream_health(&self) -> Arc<upstream::UpstreamHealth> {
        Arc::clone(self.upstream.health())
    }

    /// The hyper entry point: one request from `peer`.
    ///
    /// A fresh hit is answered here, synchronously, and its request is
    /// dropped before hyper returns to the connection: hyper starts the
    /// next head's read (and its deadline) as soon as a request is handed
    /// over, and a request still alive then pins the read buffer its
    /// fields point into, so every read would need a fresh one. Anything
    /// else runs in a boxed future.
    pub fn call(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Answer {
        // The per-request log line costs a clock read and two copies; only
        // pay for it when someone listens.
        if tracing::enabled!(tracing::Level::DEBUG) {
            return Either::Right(Box::pin(Arc::clone(self).serve_logged(req, peer)));
        }
        self.answer(req, peer)
    }

    /// The request path proper: refusals and fresh hits at once, the rest
    /// boxed.
    fn answer(self: &Arc<Self>, mut req: Request<Incoming>, peer: SocketAddr) -> Answer {
        if let Some(resp) = self.refuse(&mut req, peer) {
            return Either::Left(ready(Ok(resp)));
        }
        // After the rate limit, which bounds new streams per client too;
        // never looked up, stored or forwarded.
        if let Some(push) = self.push.as_ref().filter(|p| req.uri().path() == p.path()) {
            return Either::Left(ready(Ok(push.serve(req).map(ProxyBody::push))));
        }
        if let Some(resp) = self.fresh_hit(&req) {
            return Either::Left(ready(Ok(resp)));
        }
        let this = Arc::clone(self);
        Either::Right(Box::pin(async move { Ok(this.route(req, peer).await) }))
    }

    /// [`Self::answer`] with the per-request log line.
    async fn serve_logged(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = self.answer(req, peer).await?;
        debug!(
            %peer,
            %method,
            path = %path,
            status = resp.status().as_u16(),
            cache = resp.headers().get(&X_CACHE).and_then(|v| v.to_str().ok()).unwrap_or(""),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        Ok(resp)
    }

    /// What every request passes before it is looked up or forwarded: the
    /// client's rate limit and the framing checks. The refusal, if any;
    /// otherwise pins `Host` (see [`upstream::pin_host`]).
    fn refuse(&self, req: &mut Request<Incoming>, peer: SocketAddr) -> Option<Response<ProxyBody>> {
        if let Some(admission) = &self.admission {
            if let Err(wait) = admission.check(req.headers(), peer) {
                return Some(self.rate_limited(wait));
            }
        }
        if let Some(resp) = reject_framing(req) {
            return Some(resp);
        }
        upstream::pin_host(req);
        None
    }

    /// A fresh hit for a GET or HEAD, answered without awaiting anything.
    /// Anything else (a miss, a stale or dead entry) goes to
    /// [`Self::lookup`], which looks again.
    fn fresh_hit(&self, req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return None;
        }
        let primary = key::primary(req.uri());
        let (Lookup::Found(e), _) = self.store.lookup(&primary, req.headers()) else {
            return None;
        };
        let now = Instant::now();
        if !matches!(self.store.freshness(&e, now), Standing::Fresh) {
            return None;
        }
        Some(respond::hit(
            &self.metrics,
            req.method(),
            req.headers(),
            &e,
            now,
        ))
    }

    /// An admitted request that is not a fresh hit.
    async fn route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        match *req.method() {
            // A Range request is not filled (no 206 storage), but a hit may
            // answer it whole, which RFC 9110 §14.2 allows.
            Method::GET | Method::HEAD => self.lookup(req, peer).await,
            _ => self.forward_unsafe(req, peer).await,
        }
    }

    async fn lookup(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        loop {
            let now = Instant::now();
            let (stale, key, primary) = {
                let primary = key::primary(req.uri());
                let (found, key) = self.store.lookup(&primary, req.headers());
                let stale = match found {
                    Lookup::Found(e) => match self.store.freshness(&e, now) {
                        Standing::Fresh => {
                            return respond::hit(
                                &self.metrics,
                                req.method(),
                                req.headers(),
                                &e,
                                now,
                            );
                        }
                        Standing::StaleRevalidate => {
                            self.refresh_in_background(&req, key.as_str(), &primary);
                            let outcome = Outcome::StaleWhileRevalidate {
                                ttl: e.ttl_secs(now),
                            };
                            return respond::from_entry(
                                &self.metrics,
                                req.method(),
                                req.headers(),
                                &e,
                                now,
                                outcome,
                            );
                        }
                        Standing::Stale => Some(e),
                    },
                    Lookup::Miss => None,
                };
                (
                    stale,
                    Arc::<str>::from(key.as_str()),
                    Arc::<str>::from(primary.as_ref()),
                )
            };
            if req.method() == Method::HEAD || req.headers().contains_key(RANGE) {
                return self.pass(req, peer).await;
            }
            match self.store.fill(&key) {
                Fill::Lead(guard) => {
                    // A fill that ended between our lookup and taking the
                    // lead has stored a fresh entry: serve it instead of
                    // asking the upstream a second time.
                    if let (Lookup::Found(e), _) = self.store.lookup(&primary, req.headers()) {
                        if matches!(self.store.freshness(&e, Instant::now()), Standing::Fresh) {
                            guard.finish(FillState::Filled(e));
                            continue;
                        }
                    }
                    let guard = match self
                        .answer_from_l2(req.method(), req.headers(), &key, &primary, guard)
                        .await
                    {
                        Ok(resp) => return resp,
                        Err(guard) => guard,
                    };
                    return self
                        .fetch(req, peer, fill::FillTarget { primary, stale }, Some(guard))
                        .await;
                }
                Fill::Wait(rx) => match wait_fill(rx, self.settings.coalesce_timeout).await {
                    Some(FillState::Filled(e))
                        if e.key() == &*key && crate::cache::freshness::servable(&e) =>
                    {
                        return respond::from_entry(
                            &self.metrics,
                            req.method(),
                            req.headers(),
                            &e,
                            Instant::now(),
                            Outcome::Coalesced,
                        );
                    }
                    // Filled under another Vary variant, or the leader went
                    // away: look again, and maybe lead the next fill.
                    Some(FillState::Filled(_)) | Some(FillState::Abandoned) => continue,
                    Some(FillState::Failed(err)) => {
                        if let Some(err) = err.downcast_ref::<upstream::UpstreamError>() {
                            let (method, headers) = (req.method().clone(), req.headers().clone());
                            return self.failed(&method, &headers, stale, None, err.clone());
                        }
                        return self
                            .fetch(req, peer, fill::FillTarget { primary, stale }, None)
                            .await;
                    }
                    Some(FillState::NotStored) | Some(FillState::Pending) | None => {
                        return self
                            .fetch(req, peer, fill::FillTarget { primary, stale }, None)
                            .await
                    }
                },
            }
        }
    }

    /// Serves a STALE copy now and refreshes it with one background fetch.
    fn refresh_in_background(self: &Arc<Self>, req: &Request<Incoming>, key: &str, primary: &str) {
        let Fill::Lead(guard) = self.store.fill(key) else {
            return; // someone is already refreshing it
        };
        let mut parts = Request::new(()).into_parts().0;
        parts.method = Method::GET;
        parts.uri = req.uri().clone();
        parts.headers = req.headers().clone();
        let target = fill::FillTarget {
            primary: primary.into(),
            stale: None,
        };
        let this = Arc::clone(self);
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        tokio::spawn(async move {
            let req = Request::from_parts(
                parts,
                http_body_util::Either::Right(http_body_util::Empty::new()),
            );
            let _ = this.fetch_parts(req, peer, target, Some(guard)).await;
        });
    }

    /// Forwards a GET or HEAD that this cache does not fill (a HEAD, a
    /// Range request), unchanged: a MISS, whatever comes back.
    async fn pass(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let fwd = Fwd::UriMiss;
        let (mut parts, body) = req.into_parts();
        self.upstream.prepare(&mut parts, peer);
        let req = Request::from_parts(parts, http_body_util::Either::Left(body));
        match self.upstream.send(req, &self.metrics).await {
            Ok(resp) => {
                let outcome = Outcome::Miss {
                    fwd,
                    fwd_status: resp.status().as_u16(),
                    stored: false,
                };
                let (mut rparts, rbody) = resp.into_parts();
                respond::clean_upstream_headers(&mut rparts.headers);
                respond::label(&self.metrics, &mut rparts.headers, outcome);
                Response::from_parts(rparts, ProxyBody::stream(None, rbody))
            }
            Err(e) => {
                let outcome = Outcome::Failed {
                    fwd,
                    error: e.label(),
                };
                respond::upstream_error(&self.metrics, self.upstream.url(), &e, outcome)
            }
        }
    }

    /// 429 past the client's quota; counted as a bypass too, as labelled.
    fn rate_limited(&self, wait: Duration) -> Response<ProxyBody> {
        let mut resp = json_error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
        let h = resp.headers_mut();
        h.insert(
            RETRY_AFTER,
            HeaderValue::from(admit::retry_after_secs(wait)),
        );
        respond::label(&self.metrics, h, Outcome::RateLimited);
        resp
    }
}

/// RFC 9112 §6.3: a request with both `Transfer-Encoding` and
/// `Content-Length` is a smuggling attempt until proven otherwise. CONNECT
/// asks for a tunnel, which a cache in front of one API never opens.
///
/// A refusal closes the connection: whatever follows the refused request
/// on it may be the smuggled part, and must not be read as a request.
fn reject_framing(req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    // One pass over the fields (a request has few) instead of a hashed
    // lookup per name.
    let (mut lengths, mut chunked) = (0usize, false);
    for (name, _) in req.headers() {
        if name == CONTENT_LENGTH {
            lengths += 1;
        } else if name == TRANSFER_ENCODING {
            chunked = true;
        }
    }
    let (status, why) = if req.method() == Method::CONNECT {
        (StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported")
    } else if chunked && lengths > 0 {
        (
            StatusCode::BAD_REQUEST,
            "conflicting Content-Length and Transfer-Encoding",
        )
    } else if lengths > 1 {
        (StatusCode::BAD_REQUEST, "more than one Content-Length")
    } else {
        return None;
    };
    let mut resp = json_error(status, why);
    let h = resp.headers_mut();
    h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
    }
    Some(resp)
}

pub fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
