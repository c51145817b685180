//! `[rate_limit]` end to end: the per-client quota on the proxy port, how
//! the client is identified, and the limiter's memory under a flood of
//! distinct client IPs.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::client::Client;
use common::sidecar::Sidecar;
use common::upstream::Upstream;
use common::PATIENCE;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use oddscache::config::Overrides;
use oddscache::{Config, Handle};
use tokio::net::TcpStream;

const SPORTS: &str = r#"{"sports":[]}"#;

async fn start(upstream: &Upstream, rate_limit: &str) -> (Sidecar, Handle, SocketAddr) {
    let text = format!(
        r#"
[proxy]
upstream = "{}"

[[route]]
name = "sports"
path = "/api/v1/sports"
ttl = "10m"

[rate_limit]
{rate_limit}
"#,
        upstream.url()
    );
    let config = Config::from_toml(&text, &Overrides::default()).expect("valid test config");
    let sidecar = Sidecar::start(config).await;
    let (handle, admin) = (sidecar.handle().clone(), sidecar.admin);
    (sidecar, handle, admin)
}

#[tokio::test]
async fn a_burst_over_the_quota_gets_429_with_retry_after() {
    let upstream = Upstream::fixed(SPORTS).await;
    let (sidecar, handle, admin) = start(&upstream, "per_second = 1\nburst = 3").await;
    let client = Client::new();
    let url = sidecar.url("/api/v1/sports");
    for want in ["MISS", "HIT", "HIT"] {
        let r = client.get(&url).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.x_cache(), want);
    }
    let r = client.get(&url).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), "1", "one cell per second");
    assert_eq!(r.x_cache(), "BYPASS");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json(), serde_json::json!({ "error": "rate limited" }));
    // Refused before lookup: nothing more reached the upstream either way.
    assert_eq!(upstream.hits(), 1);
    // Unsafe methods are admitted by the same bucket.
    let post = client
        .send(http::Method::POST, &url, &[], Bytes::new())
        .await;
    assert_eq!(post.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(upstream.hits(), 1);
    assert_eq!(handle.rate_limiter_keys(), Some(1));

    let metrics = client.get(&format!("http://{admin}/metrics")).await;
    assert!(
        metrics.text().contains("oddscache_rate_limited_total 2"),
        "{}",
        metrics.text()
    );
}

#[tokio::test]
async fn forwarded_for_names_the_client_only_when_trusted() {
    let upstream = Upstream::fixed(SPORTS).await;
    let client = Client::new();
    let get = |sidecar: &Sidecar, ip: &'static str| {
        let url = sidecar.url("/api/v1/sports");
        let client = client.clone();
        async move {
            client
                .get_with(&url, &[("x-forwarded-for", ip)])
                .await
                .status
        }
    };

    let (trusted, handle, _) = start(
        &upstream,
        "per_second = 1\nburst = 1\ntrust_forwarded_for = true",
    )
    .await;
    assert_eq!(get(&trusted, "192.0.2.1").await, StatusCode::OK);
    assert_eq!(
        get(&trusted, "192.0.2.1, 10.0.0.9").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(get(&trusted, "192.0.2.2").await, StatusCode::OK);
    // Garbage falls back to the socket peer, which has its own bucket.
    assert_eq!(get(&trusted, "not-an-ip").await, StatusCode::OK);
    assert_eq!(
        get(&trusted, "also-not").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(handle.rate_limiter_keys(), Some(3));

    let (untrusted, handle, _) = start(&upstream, "per_second = 1\nburst = 1").await;
    assert_eq!(get(&untrusted, "192.0.2.1").await, StatusCode::OK);
    assert_eq!(
        get(&untrusted, "192.0.2.2").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a client cannot pick its own bucket"
    );
    assert_eq!(handle.rate_limiter_keys(), Some(1));
}

/// 10,000 spoofed client IPs over a few keep-alive connections: each is
/// admitted, and once their buckets are full again pruning drops them.
#[tokio::test]
async fn a_flood_of_distinct_ips_leaves_a_bounded_limiter() {
    const CONNECTIONS: u32 = 4;
    const PER_CONNECTION: u32 = 2_500;
    let upstream = Upstream::fixed(SPORTS).await;
    // 1000/s refills a spent cell within a millisecond.
    let (sidecar, handle, _) = start(
        &upstream,
        "per_second = 1000\nburst = 10\ntrust_forwarded_for = true",
    )
    .await;
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let addr = sidecar.addr;
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            for i in 0..PER_CONNECTION {
                let n = c * PER_CONNECTION + i;
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + n);
                let req = Request::get("/api/v1/sports")
                    .header("host", "sidecar")
                    .header("x-forwarded-for", ip.to_string())
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
                    .await
                    .expect("answer within patience")
                    .expect("answer");
                assert_eq!(resp.status(), StatusCode::OK, "{ip}");
                resp.into_body().collect().await.expect("body");
            }
        }));
    }
    for t in tasks {
        t.await.expect("flood task");
    }
    let before = handle.rate_limiter_keys().expect("rate limit on");
    assert!(before <= 10_000, "{before}");
    handle.prune_rate_limiter();
    let after = handle.rate_limiter_keys().expect("rate limit on");
    // Only buckets touched in the last couple of milliseconds may remain.
    assert!(after <= 1_000, "{after} of {before} keys survived pruning");
    assert_eq!(upstream.hits(), 1);
}
