//! oddscache on a Sentinel-managed primary (issue 8): a primary, a replica
//! and three sentinels on loopback; the primary is killed mid-test.
//!
//! Run with `cargo test --test sentinel`; needs `redis-server` on PATH.

#[path = "common/redis_cluster.rs"]
mod redis_cluster;
#[path = "common/sidecar.rs"]
mod sidecar;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oddscache::config::{Config, RedisConfig, RedisMode};

use redis_cluster::{Node, Sentinels, MASTER_NAME};
use sidecar::{config, Http, Sidecar, Upstream};

const CHANNEL: &str = "oddscache:invalidations";
const PROPAGATION: Duration = Duration::from_secs(2);
const SETUP: Duration = Duration::from_secs(10);
/// Sentinel's down-after is 1 s; the election and promotion take a few more.
const FAILOVER: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

fn sentinel_config(upstream: &str, sentinels: Vec<String>, replica: &str) -> Config {
    let mut cfg = config(upstream, None, replica);
    cfg.redis = Some(RedisConfig {
        mode: RedisMode::Sentinel,
        urls: sentinels,
        master_name: MASTER_NAME.into(),
        ..RedisConfig::default()
    });
    assert!(cfg.redis_enabled().is_some());
    cfg
}

/// Waits until `n` sidecars hold their subscription and their command
/// connection on `node`.
async fn wait_on(node: &Node, n: usize, deadline: Duration) {
    let until = Instant::now() + deadline;
    loop {
        let subs = node
            .cmd::<(String, usize)>(redis::cmd("PUBSUB").arg("NUMSUB").arg(CHANNEL))
            .map(|(_, s)| s)
            .unwrap_or(0);
        let clients = node
            .cmd::<String>(redis::cmd("CLIENT").arg("LIST"))
            .map(|l| {
                l.lines()
                    .filter(|l| !l.contains("cmd=client") && !l.contains("name=sentinel"))
                    .count()
            })
            .unwrap_or(0);
        if subs >= n && clients >= 2 * n {
            return;
        }
        assert!(
            Instant::now() < until,
            "the sidecars did not connect to port {}: {subs} subscribers, {clients} clients",
            node.port
        );
        tokio::time::sleep(POLL).await;
    }
}

fn odds_path(id: &str) -> String {
    format!("/api/v1/games/{id}/odds")
}

/// The primary dies with two sidecars caching a game: they keep answering
/// (no errors) while the sentinels promote the replica, follow the new
/// primary without a restart, and a status change written through r1
/// afterwards reaches r2: nothing stale survives the switch.
#[tokio::test(flavor = "multi_thread")]
async fn the_sidecars_follow_a_sentinel_failover_without_errors_or_stale_odds() {
    let mut set = Sentinels::start();
    let up = Upstream::start().await;
    let r1 = Sidecar::start(sentinel_config(&up.url(), set.urls(), "r1")).await;
    let r2 = Sidecar::start(sentinel_config(&up.url(), set.urls(), "r2")).await;
    wait_on(&set.primary, 2, SETUP).await;
    let http = Http::new();
    let id = up.sim.game_ids()[0].clone();
    assert!(up.sim.set_status(&id, "pre_game"));
    for s in [&r1, &r2] {
        assert_eq!(http.get(&s.url(&odds_path(&id))).await.x_cache, "MISS");
        assert_eq!(http.get(&s.url(&odds_path(&id))).await.x_cache, "HIT");
    }

    // A client keeps reading from both sidecars through the failover.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, errors, reads) = (stop.clone(), errors.clone(), reads.clone());
        let urls = [r1.url(&odds_path(&id)), r2.url(&odds_path(&id))];
        tokio::spawn(async move {
            let http = Http::new();
            while !stop.load(Ordering::Relaxed) {
                for u in &urls {
                    let r = http.get(u).await;
                    reads.fetch_add(1, Ordering::Relaxed);
                    if r.status != 200 || r.game_status() != "pre_game" {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("during failover: {} {}", r.status, r.game_status());
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };

    let old = set.primary.port;
    set.primary.kill();
    let deadline = Instant::now() + FAILOVER;
    while set.primary_port() != Some(set.replica.port) {
        assert!(
            Instant::now() < deadline,
            "the sentinels never promoted the replica (still {:?}, was {old})",
            set.primary_port()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = Instant::now();
    wait_on(&set.replica, 2, SETUP).await;
    eprintln!(
        "sidecars on the new primary {:?} after the sentinels named it",
        promoted.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "clients saw errors or wrong odds during the failover ({} reads)",
        reads.load(Ordering::Relaxed)
    );

    // A change after the switch goes through the new primary to the peer.
    let w = http
        .put(
            &r1.url(&format!("/api/v1/games/{id}")),
            r#"{"status":"in_progress"}"#,
        )
        .await;
    assert_eq!(w.status, 200);
    for (name, s) in [("r1", &r1), ("r2", &r2)] {
        let deadline = Instant::now() + PROPAGATION;
        loop {
            let r = http.get(&s.url(&odds_path(&id))).await;
            assert_eq!(r.status, 200);
            if r.game_status() == "in_progress" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still serves the old status {PROPAGATION:?} after the change"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    let state: Option<String> = set
        .replica
        .cmd(redis::cmd("GET").arg(format!("oddscache:game:{id}")))
        .unwrap();
    assert!(
        state.is_some_and(|s| s.contains("live")),
        "the new primary holds the game's new state"
    );
    r1.stop().await;
    r2.stop().await;
}
