//! Dispatch of the admin port and the read-only endpoints: invalidation
//! stats and events, cache stats, metrics, liveness and readiness.
//!
//! Reads touch only counters and the journal; they never reach Redis or
//! the upstream, so a scrape cannot add load to a struggling dependency.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::{error, json, mutate, sse, Admin, AdminBody};
use crate::metrics::StatusLabel;
use crate::watch::Reason;

pub const STATS: &str = "/api/v1/shared/cache/invalidation/stats";
pub const EVENTS: &str = "/api/v1/shared/cache/invalidation/events";
pub const STREAM: &str = "/api/v1/shared/cache/invalidation/events/stream";
pub const INVALIDATE: &str = "/api/v1/shared/cache/invalidate";
pub const CACHE_STATS: &str = "/api/v1/shared/cache/stats";
/// Which replica has applied which event of the log (SPEC §7).
pub const FLEET: &str = "/api/v1/shared/cache/fleet";
/// Prometheus scrape path; the k8s annotations and the dashboard use it.
pub const METRICS: &str = "/metrics";
/// Liveness: the kubelet's `livenessProbe`.
pub const HEALTHZ: &str = "/healthz";
/// Readiness: the kubelet's `readinessProbe`.
pub const READYZ: &str = "/readyz";

/// `limit` when the query names none.
pub const DEFAULT_LIMIT: usize = 100;

/// What a route answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    InvalidationStats,
    Events,
    Stream,
    Invalidate,
    CacheStats,
    Fleet,
    Metrics,
    Healthz,
    Readyz,
    OpenApi,
    Page,
}

/// One path of the admin port and the one method it answers.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub path: &'static str,
    pub method: &'static str,
    pub endpoint: Endpoint,
}

/// Every route the admin port answers: the router dispatches on this list
/// and a test holds `openapi.json` to it.
pub const ROUTES: &[Route] = &[
    route(STATS, "GET", Endpoint::InvalidationStats),
    route(EVENTS, "GET", Endpoint::Events),
    route(STREAM, "GET", Endpoint::Stream),
    route(INVALIDATE, "POST", Endpoint::Invalidate),
    route(CACHE_STATS, "GET", Endpoint::CacheStats),
    route(FLEET, "GET", Endpoint::Fleet),
    route(METRICS, "GET", Endpoint::Metrics),
    route(HEALTHZ, "GET", Endpoint::Healthz),
    route(READYZ, "GET", Endpoint::Readyz),
    route("/openapi.json", "GET", Endpoint::OpenApi),
    route("/", "GET", Endpoint::Page),
];

const fn route(path: &'static str, method: &'static str, endpoint: Endpoint) -> Route {
    Route {
        path,
        method,
        endpoint,
    }
}

/// Routes a request; unknown paths are 404, known paths with another
/// method 405 with `Allow`.
pub async fn dispatch(
    admin: &Admin,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<AdminBody> {
    let path = req.uri().path();
    let Some(route) = ROUTES.iter().find(|r| r.path == path) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint at {path}"),
        );
    };
    if req.method().as_str() != route.method {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} only answers {}", route.method),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(route.method));
        return resp;
    }
    match route.endpoint {
        Endpoint::InvalidationStats => {
            json(StatusCode::OK, &admin.invalidator.journal().snapshot())
        }
        Endpoint::Events => events(admin, req.uri().query()),
        Endpoint::Stream => sse::stream(admin),
        Endpoint::CacheStats => json(StatusCode::OK, &cache_stats(admin)),
        // The view the Redis tier last read in the background: this read
        // does not reach Redis either.
        Endpoint::Fleet => json(
            StatusCode::OK,
            &admin
                .invalidator
                .redis()
                .map(|r| r.fleet_view())
                .unwrap_or_default(),
        ),
        Endpoint::Metrics => metrics(admin, req.headers()),
        Endpoint::Healthz => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        Endpoint::Readyz => readyz(admin),
        Endpoint::OpenApi => {
            let mut resp = Response::new(Full::new(admin.openapi.clone()).boxed_unsync());
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Endpoint::Page => page(),
        Endpoint::Invalidate => mutate::invalidate(admin, req, peer).await,
    }
}

/// The filters of the events endpoint, validated.
#[derive(Debug, PartialEq)]
pub struct EventsQuery {
    pub limit: usize,
    pub reason: Option<Reason>,
    pub game_id: Option<String>,
}

/// Parses `limit`, `reason` and `game_id`; anything else, a repeated
/// parameter or a bad value is an error naming the parameter.
pub fn parse_events_query(query: Option<&str>, capacity: usize) -> Result<EventsQuery, String> {
    let mut q = EventsQuery {
        limit: DEFAULT_LIMIT.min(capacity),
        reason: None,
        game_id: None,
    };
    let mut seen = [false; 3];
    for pair in crate::query::pairs(query) {
        let (name, value) = pair?;
        let slot = match name.as_str() {
            "limit" => 0,
            "reason" => 1,
            "game_id" => 2,
            _ => {
                return Err(format!(
                    "unknown query parameter {name:?} (expected limit, reason, game_id)"
                ))
            }
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(format!("query parameter {name} given twice"));
        }
        match slot {
            0 => {
                q.limit = match value.parse::<usize>() {
                    Ok(n) if (1..=capacity).contains(&n) => n,
                    _ => return Err(format!("limit must be a number from 1 to {capacity}")),
                }
            }
            1 => q.reason = Some(Reason::from_str(&value).map_err(|e| format!("reason: {e}"))?),
            _ => {
                if !crate::watch::is_valid_game_id(&value) {
                    return Err(format!("game_id: {}", crate::watch::InvalidGameId));
                }
                q.game_id = Some(value);
            }
        }
    }
    Ok(q)
}

fn events(admin: &Admin, query: Option<&str>) -> Response<AdminBody> {
    let journal = admin.invalidator.journal();
    match parse_events_query(query, journal.capacity()) {
        Ok(q) => {
            let recent = journal.recent(q.limit, q.reason, q.game_id.as_deref());
            let events: Vec<&crate::invalidate::Event> = recent.iter().map(|e| &**e).collect();
            json(StatusCode::OK, &serde_json::json!({ "events": events }))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// The answer of `GET /api/v1/shared/cache/stats`.
#[derive(Debug, serde::Serialize)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub coalesced: u64,
    /// `hits / (hits + misses)`, 0 before any lookup.
    pub hit_ratio: f64,
    /// Upstream requests that got no answer: errors and timeouts.
    pub upstream_errors: u64,
    /// `up`, `down`, or `disabled` without `[redis]`.
    pub redis: &'static str,
}

fn cache_stats(admin: &Admin) -> CacheStats {
    admin.store.sync();
    let m = &admin.metrics;
    let (hits, misses) = (m.hits.get(), m.misses.get());
    let upstream_errors = ["error", "timeout"]
        .iter()
        .filter_map(|s| {
            m.upstream_requests
                .get(&StatusLabel {
                    status: (*s).to_string(),
                })
                .map(|c| c.get())
        })
        .sum();
    CacheStats {
        entries: admin.store.entry_count(),
        bytes: admin.store.weighted_size(),
        hits,
        misses,
        stale: m.stale.get(),
        coalesced: m.coalesced.get(),
        hit_ratio: match hits + misses {
            0 => 0.0,
            n => hits as f64 / n as f64,
        },
        upstream_errors,
        redis: match admin.invalidator.redis() {
            None => "disabled",
            Some(r) if r.is_connected() => "up",
            Some(_) => "down",
        },
    }
}

/// OpenMetrics to a scraper that asks for it (Prometheus does), the
/// classic text format to everyone else.
fn metrics(admin: &Admin, headers: &http::HeaderMap) -> Response<AdminBody> {
    // Gauges that nothing on the request path keeps current.
    admin.store.sync();
    let m = &admin.metrics;
    m.cache_entries.set(gauge(admin.store.entry_count()));
    m.cache_bytes.set(gauge(admin.store.weighted_size()));
    let journal = admin.invalidator.journal().snapshot();
    m.invalidations_per_minute
        .set(gauge(journal.invalidations_last_minute));
    m.alert_threshold_per_minute
        .set(gauge(journal.alert_threshold_per_minute));
    m.alerting.set(i64::from(journal.alerting));
    m.redis_configured
        .set(i64::from(admin.invalidator.redis().is_some()));
    let openmetrics = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (m.encode(), crate::metrics::OPENMETRICS)
    } else {
        (
            crate::metrics::to_prometheus_text(&m.encode()),
            crate::metrics::PROMETHEUS_TEXT,
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The live page for SREs (SPEC §7): one self-contained document whose
/// script reads the endpoints above. Nothing comes from elsewhere, and the
/// policy says so to the browser.
const PAGE: &str = include_str!("page.html");

fn page() -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    resp
}

fn readyz(admin: &Admin) -> Response<AdminBody> {
    let now = Instant::now();
    let ready = admin.health.is_ready(now, admin.readiness_window);
    // Told, not counted against readiness: a replica cut off from Redis
    // still serves (within outage_max_staleness) and must stay in the
    // Service.
    let fanout = match admin.invalidator.redis() {
        None => "disabled",
        Some(_) if admin.store.ledger().is_cut_off(now) => "cut_off",
        Some(_) => "reading",
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "unready" },
        "upstream_last_success_seconds_ago": admin.health.last_success_age(now).map(|d| d.as_secs_f64()),
        "fanout": fanout,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_query_defaults() {
        let q = parse_events_query(None, 1000).unwrap();
        assert_eq!(q.limit, 100);
        assert_eq!(q.reason, None);
        assert_eq!(q.game_id, None);
        assert_eq!(parse_events_query(Some(""), 10).unwrap().limit, 10);
    }

    #[test]
    fn events_query_filters() {
        let q = parse_events_query(Some("limit=5&reason=MANUAL&game_id=g-1001"), 1000).unwrap();
        assert_eq!(
            q,
            EventsQuery {
                limit: 5,
                reason: Some(Reason::Manual),
                game_id: Some("g-1001".into()),
            }
        );
        let q = parse_events_query(Some("reason=SIDEBAR%5FREFRESH"), 1000).unwrap();
        assert_eq!(q.reason, Some(Reason::SidebarRefresh));
    }

    #[test]
    fn events_query_rejects_bad_parameters() {
        for bad in [
            "limit=abc",
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=",
            "reason=manual",
            "reason=NOPE",
            "game_id=a*b",
            "game_id=",
            "foo=1",
            "limit=1&limit=2",
            "reason=%ZZ",
        ] {
            assert!(parse_events_query(Some(bad), 1000).is_err(), "{bad}");
        }
        assert!(parse_events_query(Some("limit=1000"), 1000).is_ok());
    }
}
