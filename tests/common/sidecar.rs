//! The shipped config for sidecars in front of the demo simulator, and a
//! wait on what they serve.

use oddscache::config::{Config, Overrides, SHIPPED};

use super::client::Client;

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
