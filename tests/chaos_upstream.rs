//! Chaos: the upstream dies, stalls and flaps, and the sidecar is told to
//! stop, all under a steady load on two replicas sharing a real Redis
//! (SPEC §4: stale-if-error, 502 and 504; coalescing; draining).
//!
//! Run with `cargo test --test chaos_upstream -- --nocapture` for the rows.

mod common;

use common::client::Client;
use common::sim::{odds_path, SimUpstream};
use common::{chaos, redis_server};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::{
    admin_get, alive_tasks, assert_no_leaks, config, report, Load, Replica, Truth, SERIAL, WAIT,
};
use redis_server::RedisServer;

/// How long after recovery a 502 may still start (see its use).
const JOINED_FILL_GRACE: Duration = Duration::from_millis(250);

const PACE: Duration = Duration::from_millis(5);

/// Waits until `/readyz` answers `want` on `r`; answers when it did.
async fn until_ready(r: &Replica, want: u16) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _) = admin_get(r.admin, "/readyz").await;
        if status == want {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{}: /readyz stayed {status}",
            r.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The upstream goes away and comes back on its port. Expired entries are
/// served STALE (within `stale_if_error`), URLs never cached get a quick
/// 502, `/readyz` turns 503 after `readiness_window` and 200 once the
/// upstream answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_then_restarted() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let mut up = SimUpstream::start().await;
    let edits = [
        ("readiness_window = \"30s\"", "readiness_window = \"1s\""),
        ("scheduled = \"60s\"", "scheduled = \"1s\""),
        ("ttl = \"30s\"", "ttl = \"1s\""),
    ];
    let (r1, r2) = chaos::pair(&up.url(), &redis.url(), &edits).await;
    let truth = Truth::default();
    let games = truth.track(&up.sim, 3, "pre_game");
    let cached = [odds_path(&games[0]), odds_path(&games[1])];
    let never = format!("{}?n={{n}}", odds_path(&games[2]));
    let http = Client::new();
    for r in [&r1, &r2] {
        for p in &cached {
            assert_eq!(http.sample(0, &r.url(""), p).await.status, 200);
        }
    }
    drop(http);
    let paths = [cached[0].as_str(), cached[1].as_str(), never.as_str()];
    let baseline = alive_tasks();
    let load = Load::start(&[&r1, &r2], &paths, 4, PACE);
    tokio::time::sleep(Duration::from_millis(600)).await;

    let killed = Instant::now();
    up.kill().await;
    let mut unready = Vec::new();
    for r in [&r1, &r2] {
        unready.push(until_ready(r, 503).await.duration_since(killed));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = Instant::now();
    up.restart().await;
    let mut ready = Vec::new();
    for r in [&r1, &r2] {
        ready.push(until_ready(r, 200).await);
    }
    let recovery = ready.iter().max().expect("two").duration_since(restarted);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let samples = load.stop().await;

    let v = truth.judge(&samples);
    report("upstream killed, restarted", &v, Some(recovery));
    println!("CHAOS | upstream killed: /readyz 503 after {unready:?}");
    assert_eq!(v.failed, 0, "client requests failed");
    assert_eq!(v.stale, 0, "stale statuses served: {:?}", v.examples);
    let errors: Vec<_> = samples.iter().filter(|s| s.status >= 500).collect();
    assert!(!errors.is_empty(), "no 502 while the upstream was down");
    for s in &errors {
        assert_eq!(s.status, 502, "{} answered {}", s.path, s.status);
        assert!(
            s.path.contains("?n="),
            "{} had a stale copy, yet got 502",
            s.path
        );
        assert!(s.took < Duration::from_secs(1), "a 502 took {:?}", s.took);
        // A 502 must overlap the outage: a request in flight when the
        // upstream died fails with it, and one that joined a fill begun just
        // before the upstream came back shares that fill's failure (on a
        // loaded machine the fill can end a little after /readyz recovered).
        assert!(
            s.start + s.took >= killed && s.start < ready[s.replica] + JOINED_FILL_GRACE,
            "a 502 outside the outage: started {:?} after the kill, {:?} after recovery",
            s.start.saturating_duration_since(killed),
            s.start.saturating_duration_since(ready[s.replica])
        );
    }
    let stale_served = samples
        .iter()
        .filter(|s| s.x_cache == "STALE" && s.status == 200)
        .count();
    assert!(stale_served > 0, "no expired entry was served STALE");
    // After recovery, the cached URLs are fresh again.
    let fresh_after = samples
        .iter()
        .filter(|s| s.start > ready[s.replica] + Duration::from_millis(500))
        .filter(|s| !s.path.contains("?n="))
        .all(|s| s.x_cache == "HIT" || s.x_cache == "MISS");
    assert!(fresh_after, "STALE served after the upstream came back");
    for u in &unready {
        assert!(
            *u >= Duration::from_secs(1),
            "unready before the window: {u:?}"
        );
    }
    assert_no_leaks(&[&r1, &r2], up.kill(), baseline).await;
}

/// The upstream flaps between fast and slower than `upstream_timeout`.
/// Each 504 comes within the timeout plus a margin, and each replica sends
/// one request per key per fill: waiters share the leader's answer, its
/// failure included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slow_and_flapping() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let slow = Arc::new(AtomicBool::new(false));
    let arrivals: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let (flag, log) = (Arc::clone(&slow), Arc::clone(&arrivals));
    let up = common::upstream::Upstream::start(move |parts, _| {
        let path = parts.uri.path().to_string();
        log.lock().unwrap().push((path, Instant::now()));
        // max-age=2, not 1: the age counts from a whole-second `Date`, so
        // an entry stays fresh for one to two seconds.
        let reply =
            common::upstream::Reply::json(r#"{"ok": true}"#).header("cache-control", "max-age=2");
        if flag.load(Ordering::Relaxed) {
            reply.delay(Duration::from_millis(1500))
        } else {
            reply
        }
    })
    .await;
    let timeout = Duration::from_millis(500);
    let edits = [
        ("upstream_timeout = \"10s\"", "upstream_timeout = \"500ms\""),
        ("stale_if_error = \"5m\"", "stale_if_error = \"0s\""),
    ];
    // Entries filled before a replica first subscribes would look like a
    // second fill: the pair is ready once both have.
    let (r1, r2) = chaos::pair(&up.url(), &redis.url(), &edits).await;
    let baseline = alive_tasks();
    let p1 = ["/flap/r1/a", "/flap/r1/b", "/flap/r1/c"];
    let p2 = ["/flap/r2/a", "/flap/r2/b", "/flap/r2/c"];
    let l1 = Load::start(&[&r1], &p1, 4, PACE);
    let l2 = Load::start(&[&r2], &p2, 4, PACE);
    let started = Instant::now();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        slow.fetch_xor(true, Ordering::Relaxed);
    }
    let mut samples = l1.stop().await;
    let mut more = l2.stop().await;
    // Their replica numbers are both 0; fix r2's.
    more.iter_mut().for_each(|s| s.replica = 1);
    samples.append(&mut more);
    let flapped = started.elapsed();

    let v = Truth::default().judge(&samples);
    report("upstream slow, flapping", &v, None);
    assert_eq!(v.failed, 0, "client requests failed");
    let timeouts: Vec<_> = samples.iter().filter(|s| s.status >= 500).collect();
    assert!(!timeouts.is_empty(), "no 504 while the upstream was slow");
    for s in &timeouts {
        assert_eq!(s.status, 504, "{} answered {}", s.path, s.status);
        assert!(
            s.took < timeout + Duration::from_millis(300),
            "a 504 took {:?}, upstream_timeout is {timeout:?}",
            s.took
        );
    }
    assert!(samples.iter().filter(|s| s.status == 200).count() > 100);
    // One upstream request per key per fill: a fill lasts at least the
    // timeout (slow) or the max-age (fast), so two requests for one key
    // much closer than that are a herd (waiters fetching side by side
    // arrive within milliseconds). Arrivals are stamped by the upstream,
    // after a fresh connection is accepted, which on a busy machine lags
    // the sidecar's clock by up to ~150ms: hence the margin.
    let mut by_key: HashMap<String, Vec<Instant>> = HashMap::new();
    for (path, at) in arrivals.lock().unwrap().iter() {
        by_key.entry(path.clone()).or_default().push(*at);
    }
    let mut fills = 0;
    for (path, times) in &by_key {
        fills += times.len();
        for w in times.windows(2) {
            let gap = w[1].duration_since(w[0]);
            assert!(
                gap >= timeout / 2,
                "{path}: two upstream requests {gap:?} apart; arrivals (ms): {:?}; its non-HITs (start ms, status, took ms): {:?}",
                times.iter().map(|t| t.duration_since(started).as_millis()).collect::<Vec<_>>(),
                samples
                    .iter()
                    .filter(|s| s.path == *path && s.x_cache != "HIT")
                    .map(|s| (s.start.duration_since(started).as_millis(), s.status, s.took.as_millis()))
                    .collect::<Vec<_>>()
            );
        }
    }
    println!(
        "CHAOS | upstream flapping: {} client requests, {} 504, {fills} upstream requests over {} keys in {flapped:?}",
        samples.len(),
        timeouts.len(),
        by_key.len()
    );
    assert_no_leaks(&[&r1, &r2], async { up.stop() }, baseline).await;
}

/// Shutdown (what SIGTERM triggers) while 50 requests are in flight, 40
/// of them waiting on distinct slow upstream paths and 10 coalesced on
/// one: every one completes with 200, and the sidecar then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_cuts_nothing() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let up = common::upstream::Upstream::start(|parts, _| {
        let reply =
            common::upstream::Reply::json(r#"{"ok": true}"#).header("cache-control", "max-age=60");
        if parts.uri.path().starts_with("/slow/") {
            reply.delay(Duration::from_millis(1000))
        } else {
            reply
        }
    })
    .await;
    let r1 = Replica::start("r1", config(&up.url(), Some(&redis.url()), "r1", &[])).await;
    let r2 = Replica::start("r2", config(&up.url(), Some(&redis.url()), "r2", &[])).await;
    let paths: Vec<String> = (0..40)
        .map(|i| format!("/slow/{i}"))
        .chain((0..10).map(|_| "/slow/shared".to_string()))
        .collect();
    let base = r1.url("");
    let started = Instant::now();
    let inflight: Vec<_> = paths
        .into_iter()
        .map(|p| {
            let base = base.clone();
            tokio::spawn(async move { Client::new().sample(0, &base, &p).await })
        })
        .collect();
    // All 41 distinct fetches have reached the upstream: every request is
    // accepted and in flight.
    up.wait_hits(41).await;
    let sigterm = Instant::now();
    let Replica {
        sidecar, admin: _, ..
    } = r1;
    let run = sidecar.shutdown();
    let mut samples = Vec::new();
    for t in inflight {
        samples.push(t.await.expect("client task"));
    }
    let stopped = tokio::time::timeout(WAIT, run).await;
    let drained = sigterm.elapsed();
    assert!(stopped.is_ok(), "the sidecar did not stop within {WAIT:?}");
    let v = Truth::default().judge(&samples);
    report("shutdown under load", &v, Some(drained));
    assert_eq!(v.sent, 50);
    assert_eq!(
        v.failed,
        0,
        "in-flight requests were cut: {:?}",
        samples
            .iter()
            .filter(|s| s.failed())
            .map(|s| &s.error)
            .collect::<Vec<_>>()
    );
    assert!(
        samples.iter().all(|s| s.status == 200),
        "not every request got 200"
    );
    assert!(started.elapsed() >= Duration::from_millis(1000));
    // The other replica carries on.
    let other = Client::new().sample(1, &r2.url(""), "/fast").await;
    assert_eq!(other.status, 200);
}
