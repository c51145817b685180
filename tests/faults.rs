//! Freshness under faults (SPEC §6): a change seen on one replica reaches
//! the others through the event log even when Redis refuses writes for a
//! while, or when a replica's Redis flows go silent without an RST.
//!
//! Real `redis-server`, real sidecars, the demo simulator as upstream, and
//! a TCP relay in the test that can blackhole a replica's flows (keep the
//! sockets, drop the bytes), as a rescheduled Redis pod's old address does.

mod common;

use common::client::Client;
use common::sim::{odds_path, SimUpstream};
use common::{redis_server, relay, sidecar};

use std::time::{Duration, Instant};

use oddscache::config::Dur;
use redis_server::RedisServer;
use relay::Relay;
use sidecar::{config, fleet, put_status, until_status, Sidecar};

const POLL: Duration = Duration::from_millis(20);

/// Makes game number `n` `pre_game` at the upstream and has every sidecar
/// of `fleet` cache its odds (its second GET a HIT); returns the game's id.
async fn cache_pre_game(http: &Client, up: &SimUpstream, fleet: &[&Sidecar], n: usize) -> String {
    let id = up.sim.game_ids()[n].clone();
    assert!(up.sim.set_status(&id, "pre_game"));
    for s in fleet {
        let url = s.url(&odds_path(&id));
        assert_eq!(http.get(&url).await.game_status(), "pre_game");
        assert_eq!(http.get(&url).await.x_cache(), "HIT");
    }
    id
}

/// Redis stalls (`CLIENT PAUSE … ALL`) just as replica B sees a game go
/// live: B's compare-and-set, deletion and append all wait out their
/// timeouts. The event waits in B's outbox and reaches A once Redis
/// answers again.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_seen_while_redis_stalls_reaches_the_fleet_after() {
    let redis = RedisServer::start();
    let up = SimUpstream::start().await;
    let [a, b] = fleet(&redis, &up.url(), ["a", "b"]).await;
    let http = Client::new();
    let id = cache_pre_game(&http, &up, &[&a, &b], 0).await;
    let odds = odds_path(&id);

    let pause = Duration::from_millis(1500);
    redis.pause(pause).await;
    let paused_at = Instant::now();
    let w = put_status(&http, &b, &id, "in_progress").await;
    assert_eq!(w.game_status(), "in_progress");
    // B itself dropped its copy at once.
    assert_eq!(http.get(&b.url(&odds)).await.game_status(), "in_progress");
    let took = until_status(
        &http,
        &a.url(&odds),
        "in_progress",
        pause + Duration::from_secs(3),
    )
    .await;
    println!(
        "A saw the change {:?} after the pause began ({pause:?} pause)",
        took + (Instant::now() - paused_at - took)
    );
    a.stop().await;
    b.stop().await;
}

/// Replica B sees a game go live while its own flows to Redis are silent
/// (new ones too): its compare-and-set, deletion and append never reach
/// Redis. Replica A's read of the log is never interrupted, so no resync
/// covers it. The event waits in B's outbox; when B's flows carry bytes
/// again, B's command connection is replaced and the event reaches A. (On
/// the pub/sub build, B logged "cannot publish invalidation" and dropped
/// the event, and A served the old status as a HIT until its TTL ran out.)
#[tokio::test(flavor = "multi_thread")]
async fn an_event_its_writer_could_not_send_reaches_the_fleet_later() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let up = SimUpstream::start().await;
    let a = Sidecar::start(config(&up.url(), Some(&redis.url()), "a")).await;
    let b = Sidecar::start(config(&up.url(), Some(&relay.url()), "b")).await;
    redis.wait_fleet_connected(2).await;
    let http = Client::new();
    let id = cache_pre_game(&http, &up, &[&a, &b], 6).await;
    let odds = odds_path(&id);
    relay.blackhole_everything();
    let w = put_status(&http, &b, &id, "in_progress").await;
    assert_eq!(w.game_status(), "in_progress");
    assert_eq!(http.get(&b.url(&odds)).await.game_status(), "in_progress");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Still cut off: A cannot know yet.
    relay.heal();
    let healed = Instant::now();
    let took = until_status(&http, &a.url(&odds), "in_progress", Duration::from_secs(3)).await;
    println!(
        "A served the change {took:?} after B's flows came back ({:?})",
        healed.elapsed()
    );
    a.stop().await;
    b.stop().await;
}

/// A sidecar that stops with invalidations still queued (Redis could not
/// take them a moment ago) hands them to the log before it exits: the
/// event is in the log by the time `stop` returns, and the peer drops the
/// game.
#[tokio::test(flavor = "multi_thread")]
async fn queued_invalidations_reach_the_log_before_a_sidecar_exits() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let up = SimUpstream::start().await;
    let a = Sidecar::start(config(&up.url(), Some(&redis.url()), "a")).await;
    let b = Sidecar::start(config(&up.url(), Some(&relay.url()), "b")).await;
    redis.wait_fleet_connected(2).await;
    let http = Client::new();
    let id = cache_pre_game(&http, &up, &[&a, &b], 7).await;
    let odds = odds_path(&id);
    relay.blackhole_everything();
    let w = put_status(&http, &b, &id, "in_progress").await;
    assert_eq!(w.game_status(), "in_progress");
    relay.heal();
    b.stop().await;
    let from_b: Vec<_> = redis
        .log()
        .await
        .into_iter()
        .filter(|m| m.event.replica == "b" && m.event.game_id.as_deref() == Some(id.as_str()))
        .collect();
    assert!(
        !from_b.is_empty(),
        "b exited without appending its queued invalidation"
    );
    until_status(&http, &a.url(&odds), "in_progress", Duration::from_secs(2)).await;
    a.stop().await;
}

/// Replica A reaches Redis through a relay that blackholes its flows; two
/// seconds later replica B sees a change. A's blocking read of the log
/// gets no reply, so within `liveness_timeout` past its heartbeat A makes
/// a new connection, resumes from the last entry it applied and drops the
/// game. (The pub/sub subscriber waited on its dead stream forever.)
#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_replica_reconnects_and_replays_what_it_missed() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let up = SimUpstream::start().await;
    let liveness = Duration::from_secs(1);
    let mut cfg_a = config(&up.url(), Some(&relay.url()), "a");
    let ra = cfg_a.redis.as_mut().expect("redis configured");
    ra.liveness_timeout = Dur(liveness);
    // Only the replay may make A drop the game: not the outage bound.
    ra.outage_max_staleness = Dur(Duration::from_secs(3600));
    let a = Sidecar::start(cfg_a).await;
    let b = Sidecar::start(config(&up.url(), Some(&redis.url()), "b")).await;
    redis.wait_fleet_connected(2).await;
    let http = Client::new();
    let id = cache_pre_game(&http, &up, &[&a, &b], 1).await;
    let odds = odds_path(&id);

    relay.blackhole_open_flows();
    let cut_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w = put_status(&http, &b, &id, "in_progress").await;
    assert_eq!(w.game_status(), "in_progress");
    // The read's heartbeat (1 s), the liveness timeout, a reconnection.
    let bound = Duration::from_secs(1) + liveness + Duration::from_secs(2);
    until_status(&http, &a.url(&odds), "in_progress", bound).await;
    println!(
        "A served the change {:?} after its flows were blackholed",
        cut_at.elapsed()
    );
    a.stop().await;
    b.stop().await;
}

/// Zero-fire after the state key is lost (SPEC §6, "never zero times").
/// r1 and r2 cache a game as `pre_game`; `{prefix}game:{id}` goes (a Redis
/// restart without persistence, or its TTL), and the game goes live at the
/// upstream. r3, which never saw the game, sees it first, already live. It
/// must not take that for a first sighting with nothing to invalidate:
/// copies of the game exist (its registry set says so), so it invalidates
/// the game for the fleet. For a second game the registry went too; r3's
/// seed then reaches r1 and r2, which knew another state and evict.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_state_key_never_hides_a_transition() {
    let redis = RedisServer::start();
    let up = SimUpstream::start().await;
    let fleet = fleet(&redis, &up.url(), ["r1", "r2", "r3"]).await;
    let http = Client::new();
    let ids = up.sim.game_ids();
    let (kept, lost) = (ids[2].clone(), ids[3].clone());
    let mut c = redis.conn().await;
    for id in [&kept, &lost] {
        assert!(up.sim.set_status(id, "pre_game"));
        for s in &fleet[..2] {
            assert_eq!(
                http.get(&s.url(&odds_path(id))).await.game_status(),
                "pre_game"
            );
            assert_eq!(http.get(&s.url(&odds_path(id))).await.x_cache(), "HIT");
        }
    }
    // Registrations are written off the request path.
    let registry = |id: &str| format!("oddscache:registry:game:{id}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis::cmd("EXISTS")
        .arg(registry(&lost))
        .query_async::<bool>(&mut c)
        .await
        .unwrap()
    {
        assert!(Instant::now() < deadline, "the registry was never written");
        tokio::time::sleep(POLL).await;
    }
    for id in [&kept, &lost] {
        let _: () = redis::cmd("DEL")
            .arg(format!("oddscache:game:{id}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(up.sim.set_status(id, "in_progress"));
    }
    let _: () = redis::cmd("DEL")
        .arg(registry(&lost))
        .query_async(&mut c)
        .await
        .unwrap();
    for id in [&kept, &lost] {
        let first = http.get(&fleet[2].url(&odds_path(id))).await;
        assert_eq!(first.game_status(), "in_progress");
        for s in &fleet[..2] {
            until_status(
                &http,
                &s.url(&odds_path(id)),
                "in_progress",
                Duration::from_secs(2),
            )
            .await;
        }
    }
    for s in fleet {
        s.stop().await;
    }
}

/// Two processes with one replica id (one hostname, say two containers of
/// a misconfigured pod) still apply each other's events: each tells its own
/// by a per-process nonce, not by the id alone.
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_with_one_replica_id_hear_each_other() {
    let redis = RedisServer::start();
    let up = SimUpstream::start().await;
    let [a, b] = fleet(&redis, &up.url(), ["same", "same"]).await;
    let http = Client::new();
    let id = cache_pre_game(&http, &up, &[&a, &b], 4).await;
    let odds = odds_path(&id);
    let w = put_status(&http, &b, &id, "in_progress").await;
    assert_eq!(w.game_status(), "in_progress");
    until_status(&http, &a.url(&odds), "in_progress", Duration::from_secs(2)).await;
    a.stop().await;
    b.stop().await;
}

/// Confirmation (SPEC §6, §7): the admin port's fleet view shows which
/// replica has not applied the log's newest event, and by how much, and
/// `oddscache_fleet_lag_seconds` exports the worst lag. A is cut off
/// (every flow silent, new ones too) while B writes a change; B's view
/// shows A behind. Healed, A catches up and the lag goes back to 0.
#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_view_shows_a_replica_that_is_behind() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let up = SimUpstream::start().await;
    let mut cfg_a = config(&up.url(), Some(&relay.url()), "a");
    cfg_a.redis.as_mut().expect("redis").liveness_timeout = Dur(Duration::from_secs(1));
    let a = Sidecar::start(cfg_a).await;
    let b = Sidecar::start(config(&up.url(), Some(&redis.url()), "b")).await;
    redis.wait_fleet_connected(2).await;
    let http = Client::new();
    let fleet_url = b.admin_url("/api/v1/shared/cache/fleet");
    let view = |v: &serde_json::Value, who: &str| {
        v["replicas"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["replica"] == who).cloned())
    };
    let wait_for = |check: &'static (dyn Fn(&serde_json::Value) -> bool + Sync)| {
        let (http, url) = (&http, fleet_url.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let v = http.get(&url).await.json();
                if check(&v) {
                    return v;
                }
                assert!(Instant::now() < deadline, "fleet view never settled: {v}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Both confirmed, nothing behind.
    let both = wait_for(&|v| {
        ["a", "b"].iter().all(|r| {
            v["replicas"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|x| x["replica"] == *r && x["behind_events"] == 0)
            })
        })
    })
    .await;
    assert!(both["head"].is_string(), "{both}");

    relay.blackhole_everything();
    let id = up.sim.game_ids()[5].clone();
    let w = put_status(&http, &b, &id, "in_progress").await;
    assert_eq!(w.status, 200);
    let behind = wait_for(&|v| {
        v["replicas"].as_array().is_some_and(|rs| {
            rs.iter()
                .any(|x| x["replica"] == "a" && x["behind_events"].as_u64().is_some_and(|n| n >= 1))
        })
    })
    .await;
    let lag = view(&behind, "a").unwrap();
    assert!(lag["behind_ms"].as_u64().unwrap() > 0, "{lag}");
    assert_eq!(view(&behind, "b").unwrap()["behind_events"], 0, "{behind}");
    let metrics = http.get(&b.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let gauge: f64 = text
        .lines()
        .find(|l| l.starts_with("oddscache_fleet_lag_seconds "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .expect("oddscache_fleet_lag_seconds");
    assert!(gauge > 0.0, "{gauge}");

    relay.heal();
    wait_for(&|v| {
        v["replicas"].as_array().is_some_and(|rs| {
            rs.iter()
                .any(|x| x["replica"] == "a" && x["behind_events"] == 0)
        })
    })
    .await;
    a.stop().await;
    b.stop().await;
}
