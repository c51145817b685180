//! A small harness: the demo simulator as upstream, sidecars in front of
//! it on loopback ports, and a plain HTTP client.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oddscache::config::{Config, Overrides, SHIPPED};
use oddscache::demo::{SimConfig, Simulator};
use oddscache::shutdown;
use tokio::net::TcpListener;

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("cannot bind a loopback port")
}

/// The demo API without its ticker: games change only when a test says so.
pub struct Upstream {
    pub sim: Arc<Simulator>,
    pub addr: SocketAddr,
    _stop: shutdown::Trigger,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let sim = Simulator::new(SimConfig {
            tick: std::time::Duration::ZERO,
            ..SimConfig::default()
        });
        let listener = bind().await;
        let addr = listener.local_addr().unwrap();
        let (trigger, signal) = shutdown::channel();
        tokio::spawn(oddscache::demo::serve(Arc::clone(&sim), listener, signal));
        Upstream {
            sim,
            addr,
            _stop: trigger,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The shipped config pointed at `upstream` and `redis_url`, as `replica`.
pub fn config(upstream: &str, redis_url: Option<&str>, replica: &str) -> Config {
    Config::from_toml(
        SHIPPED,
        &Overrides {
            upstream: Some(upstream.to_string()),
            redis_url: redis_url.map(str::to_string),
            replica_id: Some(replica.to_string()),
            ..Overrides::default()
        },
    )
    .expect("the shipped config is valid")
}

/// What a test looks at in a response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub x_cache: String,
    pub cache_status: String,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }

    /// The `status` field of a game object.
    pub fn game_status(&self) -> String {
        self.json()["status"]
            .as_str()
            .unwrap_or_else(|| panic!("no status in {}", String::from_utf8_lossy(&self.body)))
            .to_string()
    }
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(&self, method: Method, url: &str, body: &str) -> Reply {
        let mut req = Request::builder().method(method).uri(url);
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        let resp = self
            .client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
        let status = resp.status();
        let x_cache = resp
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let cache_status = resp
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("body from {url} failed: {e}"))
            .to_bytes();
        Reply {
            status,
            x_cache,
            cache_status,
            body,
        }
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(Method::GET, url, "").await
    }

    pub async fn put(&self, url: &str, body: &str) -> Reply {
        self.send(Method::PUT, url, body).await
    }
}

/// Polls `url` until it shows upstream status `want`; panics with what it
/// saw after `within`. Returns how long that took.
pub async fn until_status(
    http: &Http,
    url: &str,
    want: &str,
    within: std::time::Duration,
) -> std::time::Duration {
    let began = std::time::Instant::now();
    loop {
        let r = http.get(url).await;
        if r.status == 200 && r.game_status() == want {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < within,
            "{url} still shows {:?} ({}) {within:?} after it became {want}",
            r.game_status(),
            r.x_cache
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
