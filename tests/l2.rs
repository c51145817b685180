//! The shared L2 (`[redis] store_responses = true`, SPEC §6): sidecars on
//! one Redis in front of one upstream answer each other's fills from
//! `{prefix}resp:{cache_key}`, and invalidations take those copies away.
//!
//! Run with `cargo test --test l2`.

mod common;

use common::client::Client;
use common::sim::{odds_path, SimUpstream};
use common::{redis_server, sidecar};

use std::time::{Duration, Instant};

use oddscache::Config;
use redis::AsyncCommands;

use redis_server::RedisServer;
use sidecar::{config, put_status, Sidecar};

/// How long a peer may take to see an invalidation on loopback.
const PROPAGATION: Duration = Duration::from_secs(2);
/// Generous bound for setup probes and the off-path L2 write.
const SETUP: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

fn l2_config(up: &SimUpstream, redis: &RedisServer, replica: &str) -> Config {
    let mut cfg = config(&up.url(), Some(&redis.url()), replica);
    cfg.redis
        .as_mut()
        .expect("the shipped config has [redis]")
        .store_responses = true;
    cfg
}

/// Two sidecars sharing the L2, both reading the log, with a Redis
/// connection and a client for the test.
struct Pair {
    redis: RedisServer,
    up: SimUpstream,
    r1: Sidecar,
    r2: Sidecar,
    c: redis::aio::MultiplexedConnection,
    http: Client,
}

async fn pair() -> Pair {
    let redis = RedisServer::start();
    let up = SimUpstream::start().await;
    let r1 = Sidecar::start(l2_config(&up, &redis, "r1")).await;
    let r2 = Sidecar::start(l2_config(&up, &redis, "r2")).await;
    redis.wait_fleet_connected(2).await;
    let c = redis.conn().await;
    Pair {
        redis,
        up,
        r1,
        r2,
        c,
        http: Client::new(),
    }
}

fn resp_key(path: &str) -> String {
    format!("oddscache:resp:{path}")
}

/// Waits for the writer to copy a fill to the L2 (it runs off the request
/// path, so the fill's answer does not wait for it).
async fn wait_stored(c: &mut redis::aio::MultiplexedConnection, key: &str) {
    let deadline = Instant::now() + SETUP;
    while !c.exists::<_, bool>(key).await.expect("EXISTS") {
        assert!(Instant::now() < deadline, "{key} never reached Redis");
        tokio::time::sleep(POLL).await;
    }
    let ttl: i64 = c.pttl(key).await.expect("PTTL");
    assert!(ttl > 0, "{key} has no TTL ({ttl})");
}

/// r1 fills; r2's first GET is a HIT from the L2 without an upstream
/// request; after a status change written through r1, r2 never gets the
/// old body from the L2 again.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_answers_from_the_l2_until_an_invalidation_removes_it() {
    let Pair {
        redis: _redis,
        up,
        r1,
        r2,
        mut c,
        http,
    } = pair().await;
    let id = up.sim.game_ids()[0].clone();
    assert!(up.sim.set_status(&id, "pre_game"));
    let odds = odds_path(&id);

    let filled = http.get(&r1.url(&odds)).await;
    assert_eq!(filled.status, 200);
    assert_eq!(filled.x_cache(), "MISS");
    assert_eq!(filled.game_status(), "pre_game");
    assert_eq!(up.sim.requests_served(), 1);
    wait_stored(&mut c, &resp_key(&odds)).await;

    let from_l2 = http.get(&r2.url(&odds)).await;
    assert_eq!(from_l2.status, 200);
    assert_eq!(from_l2.x_cache(), "HIT");
    assert_eq!(from_l2.cache_status(), "oddscache; hit; detail=l2");
    assert_eq!(from_l2.body, filled.body);
    assert_eq!(up.sim.requests_served(), 1, "no upstream request for r2");
    // Now in r2's L1.
    let again = http.get(&r2.url(&odds)).await;
    assert_eq!(
        (again.x_cache(), again.cache_status()),
        ("HIT", "oddscache; hit")
    );
    assert_eq!(up.sim.requests_served(), 1);

    // The change, seen only by r1: a watched write. Its invalidation has
    // deleted the L2 copy by the time the write is answered.
    let w = put_status(&http, &r1, &id, "in_progress").await;
    assert_eq!(w.status, 200);
    assert_eq!(w.game_status(), "in_progress");
    assert!(
        !c.exists::<_, bool>(resp_key(&odds)).await.unwrap(),
        "the L2 copy outlived the invalidation"
    );

    // r2 may serve its L1 copy until the event lands, never the L2's.
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let r = http.get(&r2.url(&odds)).await;
        assert_eq!(r.status, 200);
        if r.game_status() == "in_progress" {
            assert_eq!(r.x_cache(), "MISS", "the new status is a fresh fill");
            break;
        }
        assert_eq!(
            (r.x_cache(), r.cache_status()),
            ("HIT", "oddscache; hit"),
            "the old status came from somewhere other than r2's L1"
        );
        assert!(
            Instant::now() < deadline,
            "r2 still serves the old status {PROPAGATION:?} after the change"
        );
        tokio::time::sleep(POLL).await;
    }
    let served = up.sim.requests_served();

    // r2's new fill is the fleet's copy now: r1 gets it from the L2.
    wait_stored(&mut c, &resp_key(&odds)).await;
    let r = http.get(&r1.url(&odds)).await;
    assert_eq!(r.game_status(), "in_progress");
    assert_eq!(r.cache_status(), "oddscache; hit; detail=l2");
    assert_eq!(up.sim.requests_served(), served);
    r1.stop().await;
    r2.stop().await;
}

/// A copy of a URI fetched before a PUT on it, written to the L2 after the
/// PUT's deletion (a registry writer that raced it), is refused by a peer
/// that applied the PUT: every copy counts as tagged with its URI.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_that_predates_an_unsafe_method_is_refused_from_the_l2() {
    let Pair {
        redis: _redis,
        up,
        r1,
        r2,
        mut c,
        http,
    } = pair().await;
    let odds = odds_path(&up.sim.game_ids()[0]);
    assert_eq!(http.get(&r1.url(&odds)).await.x_cache(), "MISS");
    wait_stored(&mut c, &resp_key(&odds)).await;
    let old: Vec<u8> = c.get(resp_key(&odds)).await.expect("GET the copy");
    assert_eq!(
        http.get(&r2.url(&odds)).await.cache_status(),
        "oddscache; hit; detail=l2"
    );

    let w = http.put(&r1.url(&odds), "{}").await;
    assert_eq!(w.status, 200);
    let _: () = c
        .set_ex(resp_key(&odds), old, 60)
        .await
        .expect("write the raced copy back");
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let r = http.get(&r2.url(&odds)).await;
        if r.cache_status() != "oddscache; hit" {
            assert_eq!(
                r.x_cache(),
                "MISS",
                "r2 served a copy from before the PUT ({})",
                r.cache_status()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "r2 still serves its L1 copy {PROPAGATION:?} after the PUT"
        );
        tokio::time::sleep(POLL).await;
    }
    r1.stop().await;
    r2.stop().await;
}

/// A successful unsafe method drops the L2 copy of its URI along with the
/// L1 entry (RFC 9111 §4.4), and a value that does not decode is ignored.
#[tokio::test(flavor = "multi_thread")]
async fn unsafe_methods_and_junk_do_not_serve_from_the_l2() {
    let Pair {
        redis: _redis,
        up,
        r1,
        r2,
        mut c,
        http,
    } = pair().await;
    let ids = up.sim.game_ids();
    let odds = odds_path(&ids[0]);

    assert_eq!(http.get(&r1.url(&odds)).await.x_cache(), "MISS");
    wait_stored(&mut c, &resp_key(&odds)).await;
    // A write to the URI itself that changes nothing the watcher acts on.
    let w = http.put(&r1.url(&odds), "{}").await;
    assert_eq!(w.status, 200);
    assert!(
        !c.exists::<_, bool>(resp_key(&odds)).await.unwrap(),
        "the L2 copy outlived an unsafe method on its URI"
    );
    let served = up.sim.requests_served();
    let r = http.get(&r2.url(&odds)).await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(up.sim.requests_served(), served + 1);

    // Junk under a key: refused, and the fill goes upstream.
    let junk_path = odds_path(&ids[1]);
    let _: () = c
        .set_ex(resp_key(&junk_path), "not a stored response", 60)
        .await
        .unwrap();
    let r = http.get(&r2.url(&junk_path)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS");
    assert!(!r.game_status().is_empty());
    assert_eq!(up.sim.requests_served(), served + 2);
    r1.stop().await;
    r2.stop().await;
}
