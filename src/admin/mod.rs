//! The admin port (SPEC §7): stats, events and manual invalidation for SREs.
//!
//! Endpoints, all answering JSON unless said otherwise:
//!
//! | method, path | answer |
//! | --- | --- |
//! | `GET /api/v1/shared/cache/invalidation/stats` | the journal's counters, all six reasons, the per-minute rate and `alerting` |
//! | `GET /api/v1/shared/cache/invalidation/events?limit=&reason=&game_id=` | `{"events": [...]}`, newest first; `limit` defaults to 100, at most `events_capacity` |
//! | `GET /api/v1/shared/cache/invalidation/events/stream` | `text/event-stream`: one `data:` line per event, `: keep-alive` every 15s |
//! | `POST /api/v1/shared/cache/invalidate` | `{"game_id"}`, `{"tags": [...]}` or `{"sidebar": {...}}`, optional `"reason"`; answers the event |
//! | `GET /api/v1/shared/cache/stats` | L1 entries and bytes, hit/miss/stale/coalesced counts, upstream errors, Redis state |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | liveness: 200 while the process serves |
//! | `GET /readyz` | 200 unless the upstream has been unreachable for `admin.readiness_window`, 30s by default (Redis does not count) |
//! | `GET /openapi.json` | the OpenAPI 3 document of this port |
//! | `GET /` | the live page for SREs (`page.html`): events as they happen, invalidations per minute against the threshold, hit ratio, upstream, Redis and fleet state |
//!
//! Reads are open: the port is meant for in-pod or in-cluster access only.
//! The one mutation needs `Authorization: Bearer $ODDSCACHE_ADMIN_TOKEN`
//! (403 when no token is configured, 401 when it does not match), then
//! passes a global governor quota (429 with `Retry-After`), then a 64 KiB
//! body limit (413). Every invalidation goes through the one door,
//! [`crate::invalidate::Invalidator`], with origin `api`.
//!
//! Files: [`routes`] lists the routes, dispatches and answers the reads,
//! [`mutate`] guards and parses the POST, [`sse`] streams live events,
//! [`openapi`] serves the document that describes all of them.

pub mod mutate;
pub mod openapi;
pub mod routes;
pub mod sse;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::cache::Store;
use crate::config::Config;
use crate::invalidate::Invalidator;
use crate::metrics::Metrics;
use crate::proxy::upstream::UpstreamHealth;
use crate::shutdown;

/// Whole answers and the event stream share one body type.
pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// How often an idle event stream sends a comment, so proxies and load
/// balancers in between do not close it.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Everything the admin handlers read or call, built once by `run`.
pub struct Admin {
    /// The one invalidation door, and its journal of events.
    invalidator: Arc<Invalidator>,
    /// Read for cache stats, encoded for `/metrics`.
    metrics: Arc<Metrics>,
    /// Entry count and weight for the cache gauges.
    store: Arc<Store>,
    /// Whether the upstream answers, for `/readyz`.
    health: Arc<UpstreamHealth>,
    /// `admin.readiness_window`: how long the upstream may fail before
    /// `/readyz` says 503.
    readiness_window: Duration,
    /// `ODDSCACHE_ADMIN_TOKEN`; `None` disables mutations. Never logged.
    token: Option<String>,
    /// One global quota for mutations: an invalidation storm from a script
    /// gone wrong hurts the upstream whoever sends it.
    limiter: DefaultDirectRateLimiter,
    /// Ends event streams at shutdown, so draining does not wait on them.
    shutdown: shutdown::Signal,
    keep_alive: Duration,
    /// `GET /openapi.json`, rendered once with this config's values.
    openapi: Bytes,
}

impl Admin {
    pub fn new(
        config: &Config,
        invalidator: Arc<Invalidator>,
        metrics: Arc<Metrics>,
        health: Arc<UpstreamHealth>,
        shutdown: shutdown::Signal,
    ) -> Admin {
        let per_second = std::num::NonZeroU32::new(config.admin.mutations_per_second)
            .unwrap_or(std::num::NonZeroU32::MIN);
        Admin {
            store: Arc::clone(invalidator.store()),
            invalidator,
            metrics,
            health,
            readiness_window: config.admin.readiness_window.get(),
            token: config.admin.token.clone(),
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
            shutdown,
            keep_alive: KEEP_ALIVE,
            openapi: openapi::render(config.admin.events_capacity),
        }
    }

    /// The hyper entry point: one request from `peer`.
    pub async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<AdminBody>, Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = routes::dispatch(&self, req, peer).await;
        tracing::debug!(%peer, %method, %path, status = resp.status().as_u16(), "admin request");
        Ok(resp)
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<AdminBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Stats change every second; nothing in between should keep them.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A JSON error: `{"error": message}`.
pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<AdminBody> {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}
