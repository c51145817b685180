//! oddscache on a real Redis Cluster (issue 8): three primaries on
//! loopback, two sidecars connected through different seed nodes.
//!
//! Run with `cargo test --test cluster`; needs `redis-server` and
//! `redis-cli` on PATH (Debian's redis packages).

#[path = "common/redis_cluster.rs"]
mod redis_cluster;
#[path = "common/sidecar.rs"]
mod sidecar;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oddscache::config::{Config, RedisConfig, RedisMode};
use redis::AsyncCommands;

use redis_cluster::Cluster;
use sidecar::{config, Http, Sidecar, Upstream};

const PREFIX: &str = "oddscache:";
const CHANNEL: &str = "oddscache:invalidations";
const PROPAGATION: Duration = Duration::from_secs(2);
const SETUP: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// The shipped config in cluster mode on `seeds`, with the shared L2 on so
/// response keys land in the cluster too.
fn cluster_config(upstream: &str, seeds: Vec<String>, replica: &str) -> Config {
    let mut cfg = config(upstream, None, replica);
    cfg.redis = Some(RedisConfig {
        mode: RedisMode::Cluster,
        urls: seeds,
        store_responses: true,
        ..RedisConfig::default()
    });
    assert!(cfg.redis_enabled().is_some());
    cfg
}

/// `seeds` rotated so that node `first` comes first: the sidecar subscribes there.
fn seeds_from(cluster: &Cluster, first: usize) -> Vec<String> {
    let mut urls = cluster.urls();
    urls.rotate_left(first);
    urls
}

/// Waits until node `i` has a subscriber to the invalidation channel.
async fn wait_subscribed(cluster: &Cluster, i: usize) {
    let deadline = Instant::now() + SETUP;
    loop {
        let (_, subs): (String, usize) = cluster.nodes[i]
            .cmd(redis::cmd("PUBSUB").arg("NUMSUB").arg(CHANNEL))
            .expect("PUBSUB NUMSUB");
        if subs >= 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nobody subscribed on node {i} (port {})",
            cluster.nodes[i].port
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the live nodes have `n` subscribers between them.
async fn wait_subscribers(cluster: &Cluster, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let subs: usize = cluster
            .primaries()
            .into_iter()
            .chain((0..cluster.nodes.len()).filter(|i| !cluster.primaries().contains(i)))
            .filter_map(|i| {
                cluster.nodes[i]
                    .cmd::<(String, usize)>(redis::cmd("PUBSUB").arg("NUMSUB").arg(CHANNEL))
                    .ok()
            })
            .map(|(_, s)| s)
            .sum();
        if subs >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{subs} subscribers on the cluster, want {n}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn odds_path(id: &str) -> String {
    format!("/api/v1/games/{id}/odds")
}

fn game_path(id: &str) -> String {
    format!("/api/v1/games/{id}")
}

/// Registrations and L2 copies of several games land on different
/// primaries; a status change written through r1 deletes every one of them
/// across slots before r1 answers, and reaches r2, which subscribed on
/// another node.
#[tokio::test(flavor = "multi_thread")]
async fn registration_invalidation_and_fan_out_across_slots_and_nodes() {
    let cluster = Cluster::start();
    let up = Upstream::start().await;
    let r1 = Sidecar::start(cluster_config(&up.url(), seeds_from(&cluster, 0), "r1")).await;
    let r2 = Sidecar::start(cluster_config(&up.url(), seeds_from(&cluster, 1), "r2")).await;
    wait_subscribed(&cluster, 0).await;
    wait_subscribed(&cluster, 1).await;
    let http = Http::new();
    let c = &mut cluster.connection().await;

    let ids: Vec<String> = up.sim.game_ids().into_iter().take(6).collect();
    for id in &ids {
        assert!(up.sim.set_status(id, "pre_game"));
        for (name, s) in [("r1", &r1), ("r2", &r2)] {
            let first = http.get(&s.url(&odds_path(id))).await;
            assert_eq!(first.status, 200);
            // r2 may already find r1's copy in the shared L2.
            if name == "r1" {
                assert_eq!(first.x_cache, "MISS", "{name} {id}");
            }
            let second = http.get(&s.url(&odds_path(id))).await;
            assert_eq!(second.x_cache, "HIT", "{name} {id}");
        }
    }

    // Registration is queued off the request path: wait for it.
    let keys_of = |id: &str| {
        [
            format!("{PREFIX}registry:game:{id}"),
            format!("{PREFIX}registry:odds:scheduled:{id}"),
            format!("{PREFIX}resp:/api/v1/games/{id}/odds"),
        ]
    };
    let all: Vec<String> = ids.iter().flat_map(|id| keys_of(id)).collect();
    let deadline = Instant::now() + SETUP;
    for k in &all {
        loop {
            let exists: bool = c.exists(k).await.unwrap();
            if exists {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{k} never appeared in the cluster"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    let owners: HashSet<usize> = all.iter().map(|k| cluster.owner(k)).collect();
    assert_eq!(
        owners.len(),
        3,
        "the test's keys should spread over all three primaries"
    );
    for id in &ids {
        let [game, _, resp] = keys_of(id);
        let members: Vec<String> = c.smembers(&game).await.unwrap();
        assert_eq!(members, [resp], "{game}");
    }
    // Per-status keys of another producer, on their own slots.
    for id in &ids {
        for s in ["scheduled", "live", "finished"] {
            let _: () = c.set(format!("odds:{s}:{id}"), "1").await.unwrap();
        }
    }

    for id in &ids {
        let w = http
            .put(&r1.url(&game_path(id)), r#"{"status":"in_progress"}"#)
            .await;
        assert_eq!(w.status, 200);
        // Deleted before r1 answered, whichever node each key lives on.
        for k in keys_of(id).iter().cloned().chain(
            ["scheduled", "live", "finished"]
                .iter()
                .map(|s| format!("odds:{s}:{id}")),
        ) {
            let exists: bool = c.exists(&k).await.unwrap();
            assert!(!exists, "{k} survived the invalidation of {id}");
        }
        let state: Option<String> = c.get(format!("{PREFIX}game:{id}")).await.unwrap();
        assert!(
            state.is_some_and(|s| s.contains("live")),
            "the compare-and-set stored the game's new state"
        );
    }

    // r2 heard every change through its own node.
    for id in &ids {
        let deadline = Instant::now() + PROPAGATION;
        loop {
            let r = http.get(&r2.url(&odds_path(id))).await;
            assert_eq!(r.status, 200);
            if r.game_status() == "in_progress" {
                assert_eq!(r.x_cache, "MISS", "r2 {id}: the new status is a fresh fill");
                break;
            }
            assert_eq!(r.x_cache, "HIT", "r2 {id}: old status from {}", r.x_cache);
            assert!(
                Instant::now() < deadline,
                "r2 still serves the old status of {id} {PROPAGATION:?} after the change"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    r1.stop().await;
    r2.stop().await;
}

/// A primary dies under two sidecars, one of them subscribed on it: while
/// its replica takes over, clients reading from both see no errors and no
/// wrong odds; afterwards a status change written through r1 deletes its
/// keys on the new topology and reaches r2. Nothing stale survives.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_failing_over_costs_clients_nothing_and_leaves_nothing_stale() {
    let mut cluster = Cluster::start_with(1);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "three primaries, three replicas");
    let (victim, other) = (primaries[0], primaries[1]);
    let up = Upstream::start().await;
    let r1 = Sidecar::start(cluster_config(
        &up.url(),
        seeds_from(&cluster, victim),
        "r1",
    ))
    .await;
    let r2 = Sidecar::start(cluster_config(&up.url(), seeds_from(&cluster, other), "r2")).await;
    wait_subscribed(&cluster, victim).await;
    wait_subscribed(&cluster, other).await;
    let http = Http::new();

    let ids: Vec<String> = up.sim.game_ids().into_iter().take(6).collect();
    for id in &ids {
        assert!(up.sim.set_status(id, "pre_game"));
        for s in [&r1, &r2] {
            assert_eq!(http.get(&s.url(&odds_path(id))).await.status, 200);
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, errors, reads) = (stop.clone(), errors.clone(), reads.clone());
        let urls: Vec<String> = ids
            .iter()
            .flat_map(|id| [r1.url(&odds_path(id)), r2.url(&odds_path(id))])
            .collect();
        tokio::spawn(async move {
            let http = Http::new();
            while !stop.load(Ordering::Relaxed) {
                for u in &urls {
                    let r = http.get(u).await;
                    reads.fetch_add(1, Ordering::Relaxed);
                    if r.status != 200 || r.game_status() != "pre_game" {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("during failover: {u}: {} {}", r.status, r.game_status());
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };

    let killed_at = Instant::now();
    cluster.nodes[victim].kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.primaries().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no replica took over the killed primary: {}",
            cluster.nodes[other]
                .cmd::<String>(redis::cmd("CLUSTER").arg("NODES"))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.wait_ok();
    wait_subscribers(&cluster, 2, SETUP).await;
    eprintln!("failover and resubscription took {:?}", killed_at.elapsed());
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "clients saw errors or wrong odds during the failover ({} reads)",
        reads.load(Ordering::Relaxed)
    );

    let c = &mut cluster.connection().await;
    for id in &ids {
        let w = http
            .put(&r1.url(&game_path(id)), r#"{"status":"in_progress"}"#)
            .await;
        assert_eq!(w.status, 200);
        let registry = format!("{PREFIX}registry:game:{id}");
        let exists: bool = c.exists(&registry).await.unwrap();
        assert!(
            !exists,
            "{registry} survived the invalidation after failover"
        );
    }
    for id in &ids {
        for (name, s) in [("r1", &r1), ("r2", &r2)] {
            let deadline = Instant::now() + PROPAGATION;
            loop {
                let r = http.get(&s.url(&odds_path(id))).await;
                assert_eq!(r.status, 200);
                if r.game_status() == "in_progress" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} still serves the old status of {id} {PROPAGATION:?} after the change"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
    r1.stop().await;
    r2.stop().await;
}
