//! oddscache on a Sentinel-managed primary (issue 8): a primary, a replica
//! and three sentinels on loopback; the primary is killed mid-test. The
//! fan-out is the event log, the stream `oddscache:events`, which every
//! sidecar reads (`XREAD BLOCK`) on the primary the sentinels name, and
//! follows to the replica they promote.
//!
//! Run with `cargo test --test sentinel`; needs `redis-server` on PATH.

mod common;

use common::client::Client;
use common::sim::{odds_path, SimUpstream};
use common::{redis_cluster, redis_server, sidecar};

use std::collections::HashSet;
use std::time::{Duration, Instant};

use oddscache::config::{Config, RedisConfig, RedisMode};

use redis_cluster::{Sentinels, MASTER_NAME};
use redis_server::{readers_in, RedisServer};
use sidecar::{config, put_status, until_serves, Reader, Sidecar};

/// The event log's key (`{key_prefix}events`).
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

/// Waits until `n` sidecars read the log (a client blocked in `XREAD`)
/// and hold their command connection on `node`.
async fn wait_on(node: &RedisServer, n: usize, deadline: Duration) {
    let until = Instant::now() + deadline;
    loop {
        let list = node
            .cmd::<String>(redis::cmd("CLIENT").arg("LIST"))
            .unwrap_or_default();
        let readers = readers_in(&list);
        let clients = list
            .lines()
            .filter(|l| !l.contains("cmd=client") && !l.contains("name=sentinel"))
            .count();
        if readers >= n && clients >= 2 * n {
            return;
        }
        assert!(
            Instant::now() < until,
            "the sidecars did not connect to port {}: {readers} log readers, {clients} clients",
            node.port()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The primary dies with two sidecars caching two games: they keep
/// answering (no errors) while the sentinels promote the replica, and
/// follow the new primary without a restart, reading the log there. A
/// status change written through r1 while there is no primary stays in
/// r1's outbox until the new primary takes it, and reaches r2 from the
/// log; so does one written afterwards: nothing stale survives the switch.
#[tokio::test(flavor = "multi_thread")]
async fn the_sidecars_follow_a_sentinel_failover_without_errors_or_stale_odds() {
    let mut set = Sentinels::start();
    let up = SimUpstream::start().await;
    let r1 = Sidecar::start(sentinel_config(&up.url(), set.urls(), "r1")).await;
    let r2 = Sidecar::start(sentinel_config(&up.url(), set.urls(), "r2")).await;
    wait_on(&set.primary, 2, SETUP).await;
    let http = Client::new();
    // Read throughout; `during` changes while there is no primary.
    let (id, during) = {
        let ids = up.sim.game_ids();
        (ids[0].clone(), ids[1].clone())
    };
    for g in [&id, &during] {
        assert!(up.sim.set_status(g, "pre_game"));
        for s in [&r1, &r2] {
            assert_eq!(http.get(&s.url(&odds_path(g))).await.x_cache(), "MISS");
            assert_eq!(http.get(&s.url(&odds_path(g))).await.x_cache(), "HIT");
        }
    }

    // A client keeps reading from both sidecars through the failover.
    let urls = vec![r1.url(&odds_path(&id)), r2.url(&odds_path(&id))];
    let reader = Reader::start(urls, "pre_game", POLL);

    let old = set.primary.port();
    set.primary.kill();
    let w = put_status(&http, &r1, &during, "in_progress").await;
    assert_eq!(w.status, 200, "a write while the primary is down");
    let deadline = Instant::now() + FAILOVER;
    while set.primary_port() != Some(set.replica.port()) {
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
    until_serves(&http, &r2, &during, "in_progress", PROPAGATION).await;
    let (reads, errors) = reader.stop().await;
    assert_eq!(
        errors, 0,
        "clients saw errors or wrong odds during the failover ({reads} reads)"
    );

    // A change after the switch goes through the new primary's log to the
    // peer.
    let w = put_status(&http, &r1, &id, "in_progress").await;
    assert_eq!(w.status, 200);
    for s in [&r1, &r2] {
        until_serves(&http, s, &id, "in_progress", PROPAGATION).await;
    }
    assert_eq!(
        set.replica.logged_games("r1"),
        HashSet::from([id.clone(), during.clone()]),
        "the games of r1's entries in the new primary's log"
    );
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
