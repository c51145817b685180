//! oddscache on a real Redis Cluster (issue 8): three primaries on
//! loopback, two sidecars connected through different seed nodes. The
//! fan-out is the event log, the stream `oddscache:events`: one key, so one
//! slot, and both sidecars read it (`XREAD BLOCK`) on the primary that owns
//! that slot, wherever their seeds are, and follow the slot when its owner
//! dies or is demoted.
//!
//! Run with `cargo test --test cluster`; needs `redis-server` and
//! `redis-cli` on PATH (Debian's redis packages).

mod common;

use common::client::Client;
use common::sim::{odds_path, SimUpstream};
use common::{redis_cluster, redis_server, sidecar};

use std::collections::HashSet;
use std::time::{Duration, Instant};

use oddscache::config::{Config, RedisConfig, RedisMode};
use redis::AsyncCommands;

use redis_cluster::Cluster;
use redis_server::{readers_in, EVENTS};
use sidecar::{config, put_status, until_serves, Reader, Sidecar};

const PREFIX: &str = "oddscache:";
/// The event log's key (`{key_prefix}events`).
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

/// `seeds` rotated so that node `first` comes first: the sidecar's reader
/// starts there.
fn seeds_from(cluster: &Cluster, first: usize) -> Vec<String> {
    let mut urls = cluster.urls();
    urls.rotate_left(first);
    urls
}

/// Waits until every replica holds its primary's data: a fresh replica
/// waits for the full sync (Redis delays a diskless one by 5 s), and a
/// failover to one that has not finished it loses the shard's keys.
async fn wait_replicas_synced(cluster: &Cluster) {
    let deadline = Instant::now() + 3 * SETUP;
    loop {
        let infos: Vec<String> = cluster
            .primaries()
            .iter()
            .map(|&i| {
                cluster.nodes[i]
                    .cmd::<String>(redis::cmd("INFO").arg("replication"))
                    .unwrap_or_default()
            })
            .collect();
        let synced = infos.iter().all(|info| {
            let replicas: Vec<&str> = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state="))
                .collect();
            !replicas.is_empty() && replicas.iter().all(|l| l.contains("state=online"))
        });
        if synced {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas never synced: {infos:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clients reading the event log on node `i` (their last command is a
/// blocking `XREAD`). 0 for a dead node.
fn readers_on(cluster: &Cluster, i: usize) -> usize {
    cluster.nodes[i]
        .cmd::<String>(redis::cmd("CLIENT").arg("LIST"))
        .map_or(0, |list| readers_in(&list))
}

/// Waits until the node that owns the log's slot has `n` readers, and no
/// other node has any: every sidecar followed the slot. Returns that node.
async fn wait_readers_on_owner(cluster: &Cluster, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let owner = cluster.owner(EVENTS);
        let per_node: Vec<usize> = (0..cluster.nodes.len())
            .map(|i| readers_on(cluster, i))
            .collect();
        let total: usize = per_node.iter().sum();
        if per_node[owner] == n && total == n {
            return owner;
        }
        assert!(
            Instant::now() < deadline,
            "log readers per node {per_node:?}; want {n} on the log's owner (node {owner}) only"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the log on node `i` holds an invalidation of `game` that
/// `replica` appended.
async fn wait_logged(cluster: &Cluster, i: usize, replica: &str, game: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !cluster.nodes[i].logged_games(replica).contains(game) {
        assert!(
            Instant::now() < deadline,
            "{replica}'s invalidation of {game} is not in the log on node {i} after {within:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Calls of `command` (lower case, e.g. "xadd") on node `i` since start.
fn calls(cluster: &Cluster, i: usize, command: &str) -> u64 {
    let info: String = cluster.nodes[i]
        .cmd(redis::cmd("INFO").arg("commandstats"))
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Registrations and L2 copies of several games land on different
/// primaries; a status change written through r1 deletes every one of them
/// across slots before r1 answers, and reaches r2 through the event log.
/// r1's first seed is the node that owns the log's slot, r2's is another
/// one: r2 is redirected (`MOVED`) to the owner, both read the log there and
/// nowhere else, and the owner's log holds one entry per change, appended
/// with XADD; nothing goes out by pub/sub.
#[tokio::test(flavor = "multi_thread")]
async fn registration_invalidation_and_the_log_fan_out_across_slots_and_nodes() {
    let cluster = Cluster::start();
    let owner = cluster.owner(EVENTS);
    let elsewhere = (owner + 1) % cluster.nodes.len();
    let up = SimUpstream::start().await;
    let r1 = Sidecar::start(cluster_config(&up.url(), seeds_from(&cluster, owner), "r1")).await;
    let r2 = Sidecar::start(cluster_config(
        &up.url(),
        seeds_from(&cluster, elsewhere),
        "r2",
    ))
    .await;
    assert_eq!(wait_readers_on_owner(&cluster, 2, SETUP).await, owner);
    let http = Client::new();
    let c = &mut cluster.connection().await;

    let ids: Vec<String> = up.sim.game_ids().into_iter().take(6).collect();
    for id in &ids {
        assert!(up.sim.set_status(id, "pre_game"));
        for (name, s) in [("r1", &r1), ("r2", &r2)] {
            let first = http.get(&s.url(&odds_path(id))).await;
            assert_eq!(first.status, 200);
            // r2 may already find r1's copy in the shared L2.
            if name == "r1" {
                assert_eq!(first.x_cache(), "MISS", "{name} {id}");
            }
            let second = http.get(&s.url(&odds_path(id))).await;
            assert_eq!(second.x_cache(), "HIT", "{name} {id}");
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
        let w = put_status(&http, &r1, id, "in_progress").await;
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

    // r2 read every change from the log on the owner.
    for id in &ids {
        let deadline = Instant::now() + PROPAGATION;
        loop {
            let r = http.get(&r2.url(&odds_path(id))).await;
            assert_eq!(r.status, 200);
            if r.game_status() == "in_progress" {
                assert_eq!(
                    r.x_cache(),
                    "MISS",
                    "r2 {id}: the new status is a fresh fill"
                );
                break;
            }
            assert_eq!(
                r.x_cache(),
                "HIT",
                "r2 {id}: old status from {}",
                r.x_cache()
            );
            assert!(
                Instant::now() < deadline,
                "r2 still serves the old status of {id} {PROPAGATION:?} after the change"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    // One entry per change, appended to the log on its owner.
    let want: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        cluster.nodes[owner].logged_games("r1"),
        want,
        "the games of r1's entries in the log"
    );
    assert!(
        calls(&cluster, owner, "xadd") >= ids.len() as u64,
        "{} XADD on the owner for {} changes",
        calls(&cluster, owner, "xadd"),
        ids.len()
    );
    for i in 0..cluster.nodes.len() {
        for command in ["publish", "spublish"] {
            assert_eq!(
                calls(&cluster, i, command),
                0,
                "a {command} on node {i}: the fan-out is the log"
            );
        }
    }
    r1.stop().await;
    r2.stop().await;
}

/// The primary that owns the log's slot dies under two sidecars, both
/// reading the log on it, moments after they filled their caches: while
/// its replica takes over, clients reading from both see no errors and no
/// wrong odds. The failover loses whatever had not reached the replica (a
/// fresh replica may not have finished its first sync): log entries,
/// registry sets, game states. A status change written through r1 just
/// after the kill cannot be appended while the slot has no owner; r1's
/// outbox keeps it and appends it to the promoted replica's log, and r2
/// stops serving the old status (it applies the entry, or resyncs when the
/// last entry it applied is gone). Both end reading the log on the new
/// owner, and once both say Redis is up again, status changes written
/// through r1 delete their keys on the new topology and reach r2. Nothing
/// stale survives.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_owner_failing_over_costs_clients_nothing_and_leaves_nothing_stale() {
    let mut cluster = Cluster::start_with(1);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "three primaries, three replicas");
    let victim = cluster.owner(EVENTS);
    let other = *primaries.iter().find(|&&p| p != victim).unwrap();
    let up = SimUpstream::start().await;
    let r1 = Sidecar::start(cluster_config(
        &up.url(),
        seeds_from(&cluster, victim),
        "r1",
    ))
    .await;
    let r2 = Sidecar::start(cluster_config(&up.url(), seeds_from(&cluster, other), "r2")).await;
    assert_eq!(wait_readers_on_owner(&cluster, 2, SETUP).await, victim);
    let http = Client::new();

    let ids: Vec<String> = up.sim.game_ids().into_iter().take(7).collect();
    // Read throughout; `during` changes while the log has no owner.
    let (during, ids) = (ids[6].clone(), ids[..6].to_vec());
    for id in ids.iter().chain([&during]) {
        assert!(up.sim.set_status(id, "pre_game"));
        for s in [&r1, &r2] {
            assert_eq!(http.get(&s.url(&odds_path(id))).await.status, 200);
        }
    }
    assert_eq!(
        http.get(&r2.url(&odds_path(&during))).await.x_cache(),
        "HIT",
        "r2 holds {during} before the kill"
    );

    let urls: Vec<String> = ids
        .iter()
        .flat_map(|id| [r1.url(&odds_path(id)), r2.url(&odds_path(id))])
        .collect();
    let reader = Reader::start(urls, "pre_game", POLL);

    let killed_at = Instant::now();
    cluster.nodes[victim].kill();
    let w = put_status(&http, &r1, &during, "in_progress").await;
    assert_eq!(w.status, 200, "a write while the log's owner is down");
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
    let new_owner = wait_readers_on_owner(&cluster, 2, SETUP).await;
    assert_ne!(new_owner, victim);
    eprintln!(
        "failover and the readers' reconnection took {:?}",
        killed_at.elapsed()
    );
    until_serves(&http, &r2, &during, "in_progress", PROPAGATION).await;
    wait_logged(&cluster, new_owner, "r1", &during, PROPAGATION).await;
    let (reads, errors) = reader.stop().await;
    assert_eq!(
        errors, 0,
        "clients saw errors or wrong odds during the failover ({reads} reads)"
    );

    // The readers are back; so must the command connections be.
    for r in [&r1, &r2] {
        r.wait_metric("oddscache_redis_up", |v| v == 1.0, SETUP)
            .await;
    }
    let c = &mut cluster.connection().await;
    for id in &ids {
        let w = put_status(&http, &r1, id, "in_progress").await;
        assert_eq!(w.status, 200);
        let registry = format!("{PREFIX}registry:game:{id}");
        let exists: bool = c.exists(&registry).await.unwrap();
        assert!(
            !exists,
            "{registry} survived the invalidation after failover"
        );
    }
    for id in &ids {
        for s in [&r1, &r2] {
            until_serves(&http, s, id, "in_progress", PROPAGATION).await;
        }
    }
    r1.stop().await;
    r2.stop().await;
}

/// A manual failover (`CLUSTER FAILOVER` on the owner's replica) moves the
/// log's slot without closing any connection: the demoted primary ends its
/// blocked reads (or answers the next one with `MOVED`), and both sidecars
/// follow the slot to the promoted replica. The replicas are in sync
/// first, and a manual failover loses no write, so each sidecar goes on
/// from the last entry it applied, which the promoted replica holds: no
/// resync, and no tagged entry dropped. A change
/// written through r1 during the switch, and one after it, reach r2.
#[tokio::test(flavor = "multi_thread")]
async fn log_readers_follow_the_slot_to_a_promoted_replica_and_resume_without_a_resync() {
    let cluster = Cluster::start_with(1);
    wait_replicas_synced(&cluster).await;
    let owner = cluster.owner(EVENTS);
    let replica = cluster
        .replica_of(owner)
        .expect("the log's owner has a replica");
    let up = SimUpstream::start().await;
    let r1 = Sidecar::start(cluster_config(&up.url(), seeds_from(&cluster, owner), "r1")).await;
    let r2 = Sidecar::start(cluster_config(
        &up.url(),
        seeds_from(&cluster, replica),
        "r2",
    ))
    .await;
    assert_eq!(wait_readers_on_owner(&cluster, 2, SETUP).await, owner);
    let http = Client::new();
    let ids: Vec<String> = up.sim.game_ids().into_iter().take(2).collect();
    for id in &ids {
        assert!(up.sim.set_status(id, "pre_game"));
        for s in [&r1, &r2] {
            assert_eq!(http.get(&s.url(&odds_path(id))).await.status, 200);
        }
    }

    let failover = || {
        let _: String = cluster.nodes[replica]
            .cmd(redis::cmd("CLUSTER").arg("FAILOVER"))
            .expect("CLUSTER FAILOVER");
    };
    failover();
    let w = put_status(&http, &r1, &ids[0], "in_progress").await;
    assert_eq!(w.status, 200);
    // A manual failover gives up after 5 s when the primary is slow to
    // answer (a loaded machine); ask again until the slot has moved.
    let deadline = Instant::now() + 3 * SETUP;
    let mut asked = Instant::now();
    while cluster.owner(EVENTS) != replica {
        assert!(
            Instant::now() < deadline,
            "the replica never took the slot over"
        );
        if asked.elapsed() > Duration::from_secs(6) {
            failover();
            asked = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
    cluster.wait_ok();
    assert_eq!(wait_readers_on_owner(&cluster, 2, SETUP).await, replica);
    until_serves(&http, &r2, &ids[0], "in_progress", PROPAGATION).await;

    let w = put_status(&http, &r1, &ids[1], "in_progress").await;
    assert_eq!(w.status, 200);
    until_serves(&http, &r2, &ids[1], "in_progress", PROPAGATION).await;
    assert_eq!(
        cluster.nodes[replica].logged_games("r1"),
        ids.iter().cloned().collect::<HashSet<String>>(),
        "the games of r1's entries in the promoted replica's log"
    );
    // Both moved to the new owner, yet neither found a gap there.
    for (name, r) in [("r1", &r1), ("r2", &r2)] {
        let start = r.metric(r#"oddscache_resyncs_total{why="start"}"#).await;
        let gap = r.metric(r#"oddscache_resyncs_total{why="gap"}"#).await;
        assert_eq!(
            (start, gap),
            (1.0, 0.0),
            "{name}: (start, gap) resyncs after a manual failover"
        );
    }
    r1.stop().await;
    r2.stop().await;
}
