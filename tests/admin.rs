//! The admin port end to end: the whole sidecar in-process (the harness's
//! `Sidecar`, on two ephemeral loopback listeners) in front of the demo
//! simulator, driven by the harness's client.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::client::{Client, Resp};
use common::sidecar::{shipped_config, Sidecar};
use common::sim::SimUpstream;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use oddscache::config::Overrides;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "t0ken";
const INVALIDATE: &str = "/api/v1/shared/cache/invalidate";
const EVENTS: &str = "/api/v1/shared/cache/invalidation/events";
const STATS: &str = "/api/v1/shared/cache/invalidation/stats";
/// Generous: CI machines stall, and nothing here waits unless it fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// The demo simulator, the sidecar in front of it and a client.
struct Setup {
    sidecar: Sidecar,
    client: Client,
    _up: SimUpstream,
}

impl Setup {
    /// Starts the simulator and the sidecar; `edit` adjusts the shipped TOML.
    async fn start(token: Option<&str>, edit: impl Fn(String) -> String) -> Setup {
        let up = SimUpstream::start().await;
        let overrides = Overrides {
            upstream: Some(up.url()),
            admin_token: token.map(Into::into),
            replica_id: Some("test-replica".into()),
            ..Overrides::default()
        };
        Setup {
            sidecar: Sidecar::start(shipped_config(edit, overrides)).await,
            client: Client::with_patience(PATIENCE),
            _up: up,
        }
    }

    async fn send(
        &self,
        method: Method,
        url: String,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        self.client
            .send(method, &url, headers, body.to_string())
            .await
    }

    async fn admin_get(&self, path: &str) -> Resp {
        self.send(Method::GET, self.sidecar.admin_url(path), &[], "")
            .await
    }

    async fn proxy_get(&self, path: &str) -> Resp {
        self.send(Method::GET, self.sidecar.url(path), &[], "")
            .await
    }

    async fn post(&self, auth: Option<&str>, body: &str) -> Resp {
        let bearer = auth.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        self.send(
            Method::POST,
            self.sidecar.admin_url(INVALIDATE),
            &headers,
            body,
        )
        .await
    }
}

fn shipped(s: String) -> String {
    s
}

#[tokio::test]
async fn reads_have_the_spec_shapes() {
    let s = Setup::start(Some(TOKEN), shipped).await;

    let stats = s.admin_get(STATS).await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.header("content-type"), "application/json");
    let v = stats.json();
    for k in [
        "total_invalidations",
        "keys_deleted",
        "by_reason",
        "invalidations_last_minute",
        "alert_threshold_per_minute",
        "alerting",
        "since",
    ] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    for r in [
        "STATUS_CHANGE",
        "ODDS_MOVEMENT",
        "CANCELLED",
        "POSTPONED",
        "MANUAL",
        "SIDEBAR_REFRESH",
    ] {
        assert_eq!(v["by_reason"][r], 0, "{r}");
    }
    assert_eq!(v["alert_threshold_per_minute"], 100);
    assert_eq!(v["alerting"], false);

    assert_eq!(s.admin_get(EVENTS).await.json(), json!({ "events": [] }));

    s.proxy_get("/api/v1/sports").await;
    s.proxy_get("/api/v1/sports").await;
    let cache = s.admin_get("/api/v1/shared/cache/stats").await;
    assert_eq!(cache.status, StatusCode::OK);
    let v = cache.json();
    for k in [
        "entries",
        "bytes",
        "hits",
        "misses",
        "stale",
        "coalesced",
        "hit_ratio",
        "upstream_errors",
        "redis",
    ] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    assert_eq!(v["redis"], "disabled");
    assert_eq!(v["entries"], 1);
    assert_eq!(v["hits"], 1);
    assert_eq!(v["misses"], 1);
    assert_eq!(v["hit_ratio"], 0.5);
    assert_eq!(v["upstream_errors"], 0);

    let health = s.admin_get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({ "status": "ok" }));
    assert_eq!(s.admin_get("/readyz").await.status, StatusCode::OK);

    let doc = s.admin_get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.header("content-type"), "application/json");
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"][INVALIDATE]["post"].is_object());

    let missing = s.admin_get("/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].is_string());
    let wrong = s
        .send(Method::DELETE, s.sidecar.admin_url(STATS), &[], "")
        .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), "GET");
    let get_post = s.admin_get(INVALIDATE).await;
    assert_eq!(get_post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get_post.header("allow"), "POST");
}

#[tokio::test]
async fn a_manual_invalidation_drops_the_game_and_is_recorded() {
    let s = Setup::start(Some(TOKEN), shipped).await;
    let odds = "/api/v1/games/g-1001/odds";
    assert_eq!(s.proxy_get(odds).await.header("x-cache"), "MISS");
    assert_eq!(s.proxy_get(odds).await.header("x-cache"), "HIT");
    s.proxy_get("/api/v1/games/g-1002/odds").await;

    let resp = s.post(Some(TOKEN), r#"{"game_id": "g-1001"}"#).await;
    assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
    let event = resp.json();
    assert_eq!(event["reason"], "MANUAL");
    assert_eq!(event["origin"], "api");
    assert_eq!(event["game_id"], "g-1001");
    assert_eq!(event["replica"], "test-replica");
    assert!(event["keys_deleted"].as_u64().unwrap() >= 1, "{event}");
    assert!(event["tags"]
        .as_array()
        .unwrap()
        .contains(&json!("game:g-1001")));

    assert_eq!(s.proxy_get(odds).await.header("x-cache"), "MISS");
    assert_eq!(
        s.proxy_get("/api/v1/games/g-1002/odds")
            .await
            .header("x-cache"),
        "HIT"
    );

    let side = s
        .post(
            Some(TOKEN),
            r#"{"sidebar": {"sport_id": "soccer"}, "reason": "SIDEBAR_REFRESH"}"#,
        )
        .await;
    assert_eq!(side.status, StatusCode::OK);
    assert_eq!(side.json()["tags"], json!(["sidebar:soccer"]));

    let all = s.admin_get(EVENTS).await.json();
    let events = all["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["reason"], "SIDEBAR_REFRESH", "newest first");
    assert_eq!(events[1], event);

    let manual = s.admin_get(&format!("{EVENTS}?reason=MANUAL")).await.json();
    assert_eq!(manual["events"], json!([event]));
    let by_game = s
        .admin_get(&format!("{EVENTS}?game_id=g-1001"))
        .await
        .json();
    assert_eq!(by_game["events"], json!([event]));
    let other = s
        .admin_get(&format!("{EVENTS}?game_id=g-9999"))
        .await
        .json();
    assert_eq!(other["events"], json!([]));
    let one = s.admin_get(&format!("{EVENTS}?limit=1")).await.json();
    assert_eq!(one["events"].as_array().unwrap().len(), 1);

    let stats = s.admin_get(STATS).await.json();
    assert_eq!(stats["total_invalidations"], 2);
    assert_eq!(stats["by_reason"]["MANUAL"], 1);
    assert_eq!(stats["by_reason"]["SIDEBAR_REFRESH"], 1);

    let metrics = s.admin_get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics
        .header("content-type")
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8_lossy(&metrics.body);
    for name in [
        "oddscache_requests_total",
        "oddscache_upstream_requests_total",
        "oddscache_upstream_duration_seconds",
        "oddscache_cache_entries",
        "oddscache_cache_bytes",
        "oddscache_invalidations_total",
        "oddscache_invalidation_keys_deleted_total",
        "oddscache_invalidations_per_minute",
        "oddscache_redis_up",
        "oddscache_redis_errors_total",
        "oddscache_watch_skipped_total{why=\"too_large\"} 0",
        "oddscache_invalidations_total{reason=\"CANCELLED\"} 0",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(text.contains("# TYPE oddscache_requests_total counter"));
    assert!(!text.contains("# EOF"));
    assert!(text.contains("oddscache_cache_entries 2"), "{text}");
    let om = s
        .send(
            Method::GET,
            s.sidecar.admin_url("/metrics"),
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )],
            "",
        )
        .await;
    assert!(om
        .header("content-type")
        .starts_with("application/openmetrics-text; version=1.0.0"));
    let om = String::from_utf8_lossy(&om.body);
    assert!(om.contains("# TYPE oddscache_requests counter"), "{om}");
    assert!(om.ends_with("# EOF\n"));
    assert!(
        text.contains("oddscache_invalidations_per_minute 2"),
        "{text}"
    );
}

#[tokio::test]
async fn mutations_are_guarded() {
    let s = Setup::start(Some(TOKEN), shipped).await;
    let body = r#"{"game_id": "g-1001"}"#;
    for auth in [None, Some("wrong"), Some("t0ke"), Some("t0ken0")] {
        let resp = s.post(auth, body).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            resp.header("www-authenticate"),
            r#"Bearer realm="oddscache-admin""#
        );
        assert!(!String::from_utf8_lossy(&resp.body).contains(TOKEN));
    }
    let basic = s
        .send(
            Method::POST,
            s.sidecar.admin_url(INVALIDATE),
            &[("authorization", "Basic dDBrZW4=")],
            body,
        )
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);

    for bad in [
        "{not json",
        r#"{"game_id": "g-1001", "reason": "STATUS_CHANGE"}"#,
        r#"{"game_id": "g-1001", "tags": ["x"]}"#,
        r#"{"sidebar": {"league_id": "epl"}}"#,
        r#"{"tags": ["game:*"]}"#,
    ] {
        let resp = s.post(Some(TOKEN), bad).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(resp.json()["error"].is_string());
    }
    let big = format!(r#"{{"tags": ["x"], "pad": "{}"}}"#, "a".repeat(70 * 1024));
    assert_eq!(
        s.post(Some(TOKEN), &big).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    for q in [
        "limit=abc",
        "limit=0",
        "limit=1001",
        "reason=NOPE",
        "since=1",
    ] {
        let resp = s.admin_get(&format!("{EVENTS}?{q}")).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{q}");
        assert!(resp.json()["error"].is_string());
    }
}

/// A chunked body has no Content-Length to refuse early: the read is capped.
#[tokio::test]
async fn an_endless_chunked_body_is_cut_at_the_limit() {
    let s = Setup::start(Some(TOKEN), shipped).await;
    let addr = s.sidecar.admin;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let chunk = "a".repeat(8192);
    let mut req = format!(
        "POST {INVALIDATE} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    // 9 × 8 KiB passes 64 KiB with the last chunk, so nothing is left
    // unread in the kernel to turn the close into a reset.
    for _ in 0..9 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    // The server may answer and close before reading everything.
    let _ = tcp.write_all(req.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn no_token_configured_means_no_mutations() {
    let s = Setup::start(None, shipped).await;
    let resp = s.post(Some("anything"), r#"{"game_id": "g-1001"}"#).await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert!(resp.json()["error"]
        .as_str()
        .unwrap()
        .contains("ODDSCACHE_ADMIN_TOKEN"));
}

#[tokio::test]
async fn the_quota_answers_429_with_retry_after() {
    let s = Setup::start(Some(TOKEN), |t| {
        t.replace("mutations_per_second = 10", "mutations_per_second = 1")
    })
    .await;
    // Refused credentials spend no quota.
    for _ in 0..5 {
        assert_eq!(
            s.post(Some("wrong"), r#"{"tags": ["x"]}"#).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        s.post(Some(TOKEN), r#"{"tags": ["x"]}"#).await.status,
        StatusCode::OK
    );
    // One per second: back-to-back requests soon exceed it.
    let mut limited = None;
    for _ in 0..50 {
        let resp = s.post(Some(TOKEN), r#"{"tags": ["x"]}"#).await;
        if resp.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("never rate limited");
    let retry: u64 = resp.header("retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(resp.json()["error"].is_string());
}

#[tokio::test]
async fn the_stream_carries_a_posted_event() {
    let s = Setup::start(Some(TOKEN), shipped).await;
    let resp = s
        .client
        .head_only(
            Method::GET,
            &s.sidecar.admin_url(&format!("{EVENTS}/stream")),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The subscription exists once the head is here.
    let posted = s.post(Some(TOKEN), r#"{"game_id": "g-1003"}"#).await.json();
    let mut body = resp.into_body();
    let mut seen = String::new();
    let line = tokio::time::timeout(PATIENCE, async {
        loop {
            let frame = body.frame().await.expect("stream ended").unwrap();
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
            if let Some(end) = seen.find("\n\n") {
                if let Some(line) = seen[..end].strip_prefix("data: ") {
                    return line.to_string();
                }
                seen.drain(..end + 2);
            }
        }
    })
    .await
    .expect("no event on the stream");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event, posted);
}

#[tokio::test]
async fn past_the_threshold_the_stats_alert() {
    let s = Setup::start(Some(TOKEN), |t| {
        t.replace("mutations_per_second = 10", "mutations_per_second = 1000")
    })
    .await;
    for i in 0..100 {
        let body = format!(r#"{{"tags": ["t{i}"]}}"#);
        assert_eq!(s.post(Some(TOKEN), &body).await.status, StatusCode::OK);
    }
    let stats = s.admin_get(STATS).await.json();
    assert_eq!(stats["invalidations_last_minute"], 100);
    assert_eq!(stats["alerting"], false, "100 is not above 100");
    s.post(Some(TOKEN), r#"{"tags": ["t100"]}"#).await;
    let stats = s.admin_get(STATS).await.json();
    assert_eq!(stats["invalidations_last_minute"], 101);
    assert_eq!(stats["alerting"], true);
    let all = s.admin_get(&format!("{EVENTS}?limit=1000")).await.json();
    assert_eq!(all["events"].as_array().unwrap().len(), 101);
}
