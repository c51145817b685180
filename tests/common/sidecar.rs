//! A small harness: the demo simulator as upstream, and the shipped config
//! for sidecars in front of it.

use std::net::SocketAddr;
use std::sync::Arc;

use oddscache::config::{Config, Overrides, SHIPPED};
use oddscache::demo::{SimConfig, Simulator};
use oddscache::shutdown;
use tokio::net::TcpListener;

use super::client::Client;

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

/// Polls `url` until it shows upstream status `want`; panics with what it
/// saw after `within`. Returns how long that took.
pub async fn until_status(
    http: &Client,
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
            r.x_cache()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
