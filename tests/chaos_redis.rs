//! Chaos: Redis dies, or stalls, under a steady load on two replicas
//! (SPEC §6: Redis is never on the hit path, and a replica that may have
//! missed invalidations drops its tagged entries when it resubscribes).
//!
//! Run with `cargo test --test chaos_redis -- --nocapture` for the table rows.

mod common;

use common::client::Client;
use common::sim::{odds_path, SimUpstream};
use common::{chaos, redis_server};

use std::time::{Duration, Instant};

use chaos::{
    alive_tasks, assert_no_leaks, hit_latencies, percentile, report, Load, Replica, Truth, BOUND,
    SERIAL,
};
use redis_server::RedisServer;

const PACE: Duration = Duration::from_millis(5);

struct Setup {
    up: SimUpstream,
    r1: Replica,
    r2: Replica,
    truth: Truth,
    http: Client,
    games: Vec<String>,
    /// `/api/v1/sidebar/{sport}/{league}` of the first game.
    sidebar: String,
}

async fn setup(redis: &RedisServer) -> Setup {
    let up = SimUpstream::start().await;
    let (r1, r2) = chaos::pair(&up.url(), &redis.url(), &[]).await;
    let truth = Truth::default();
    let games = truth.track(&up.sim, 3, "pre_game");
    let http = Client::new();
    let odds: serde_json::Value = {
        let (_, body) =
            chaos::admin_get(up.addr, &format!("/api/v1/games/{}/odds", games[0])).await;
        serde_json::from_slice(&body).expect("odds JSON")
    };
    let sidebar = format!(
        "/api/v1/sidebar/{}/{}",
        odds["sport_id"].as_str().expect("sport_id"),
        odds["league_id"].as_str().expect("league_id")
    );
    Setup {
        up,
        r1,
        r2,
        truth,
        http,
        games,
        sidebar,
    }
}

/// Registrations both replicas have dropped so far.
async fn dropped(s: &Setup) -> f64 {
    s.r1.metric("oddscache_registrations_dropped_total").await
        + s.r2.metric("oddscache_registrations_dropped_total").await
}

/// Waits until `replica` serves `game` with `status`; answers how long it took.
async fn until_shows(http: &Client, replica: &Replica, game: &str, status: &str) -> Duration {
    let started = Instant::now();
    loop {
        let s = http.sample(0, &replica.url(""), &odds_path(game)).await;
        if s.games.iter().any(|g| g.status == status) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < chaos::WAIT,
            "{} never showed {game} as {status}",
            replica.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Redis is killed mid-load and restarted on its port. Clients see no
/// failure; `oddscache_redis_up` goes 0 and back to 1; a change made
/// through r1 while Redis is down is never served stale by r2 once it has
/// resubscribed (its resync flush), and changes fan out again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_then_restarted() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let port = redis.port();
    let mut s = setup(&redis).await;
    let (a, b) = (s.games[0].as_str(), s.games[1].as_str());
    let paths = [
        odds_path(a),
        odds_path(b),
        odds_path(&s.games[2]),
        s.sidebar.clone(),
        format!("{}?n={{n}}", odds_path(&s.games[2])),
    ];
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let baseline = alive_tasks();
    let load = Load::start(&[&s.r1, &s.r2], &paths, 4, PACE);
    tokio::time::sleep(Duration::from_millis(800)).await;

    drop(redis);
    for r in [&s.r1, &s.r2] {
        r.wait_metric("oddscache_redis_up", 0.0).await;
    }
    // The change only r1 sees: its publish cannot reach r2.
    let changed = Instant::now();
    s.truth.change(&s.http, &s.r1, a, "in_progress").await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    let restarted = Instant::now();
    let redis = RedisServer::start_on(port);
    let mut back = Vec::new();
    for r in [&s.r1, &s.r2] {
        back.push(r.wait_metric("oddscache_redis_up", 1.0).await);
    }
    let recovery = back
        .iter()
        .max()
        .expect("two replicas")
        .duration_since(restarted);
    // r2 may serve the old status until it has resubscribed (SPEC §6),
    // and not one bound after.
    s.truth.excuse(1, changed, back[1] + BOUND);
    let dropped_after_recovery = dropped(&s).await;

    // After recovery a change fans out again within the bound.
    s.truth.change(&s.http, &s.r2, b, "in_progress").await;
    let fanout = until_shows(&s.http, &s.r1, b, "in_progress").await;
    assert!(fanout < BOUND, "the change took {fanout:?} to reach r1");
    until_shows(&s.http, &s.r2, a, "in_progress").await;
    tokio::time::sleep(BOUND + Duration::from_millis(500)).await;

    // Registrations go through again: Redis is back in use, not only
    // subscribed to.
    assert_eq!(
        dropped(&s).await,
        dropped_after_recovery,
        "registrations are still dropped after Redis came back"
    );
    let samples = load.stop().await;
    let v = s.truth.judge(&samples);
    report("redis killed, restarted", &v, Some(recovery));
    assert_eq!(v.failed, 0, "client requests failed");
    assert_eq!(v.server_errors, 0, "5xx served");
    assert_eq!(v.stale, 0, "stale statuses served: {:?}", v.examples);
    let after = samples
        .iter()
        .filter(|x| x.start > back[1] + BOUND && x.replica == 1);
    assert!(
        after.count() > 50,
        "too little load after recovery to judge"
    );
    drop(s.http);
    assert_no_leaks(&[&s.r1, &s.r2], s.up.kill(), baseline).await;
    drop(redis);
}

/// Redis stalls for two seconds (`CLIENT PAUSE`). HITs stay as fast as
/// before, registrations are dropped and counted instead of queued, and
/// `oddscache_redis_up` goes 0 then back to 1 once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_mid_load() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let mut s = setup(&redis).await;
    let paths = [
        odds_path(&s.games[0]),
        odds_path(&s.games[1]),
        s.sidebar.clone(),
        // A fill, so a registration, per request.
        format!("{}?n={{n}}", odds_path(&s.games[2])),
    ];
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let baseline = alive_tasks();
    let load = Load::start(&[&s.r1, &s.r2], &paths, 4, PACE);
    let warm = Instant::now() + Duration::from_millis(300);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let dropped_before = dropped(&s).await;
    let paused = Instant::now();
    redis.pause(Duration::from_millis(2000)).await;
    let resumes = paused + Duration::from_millis(2000);
    for r in [&s.r1, &s.r2] {
        r.wait_metric("oddscache_redis_up", 0.0).await;
    }
    tokio::time::sleep(resumes.saturating_duration_since(Instant::now())).await;
    let dropped_during = dropped(&s).await - dropped_before;
    let mut back = Vec::new();
    for r in [&s.r1, &s.r2] {
        back.push(r.wait_metric("oddscache_redis_up", 1.0).await);
    }
    let recovery = back
        .iter()
        .max()
        .expect("two")
        .saturating_duration_since(resumes);
    let dropped_after_recovery = dropped(&s).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        dropped(&s).await,
        dropped_after_recovery,
        "registrations are still dropped after Redis answers again"
    );
    let samples = load.stop().await;

    let v = s.truth.judge(&samples);
    report("redis paused 2s", &v, Some(recovery));
    let mut before = hit_latencies(&samples, warm, paused);
    let mut during = hit_latencies(&samples, paused, resumes);
    assert!(
        before.len() > 50 && during.len() > 50,
        "too few HITs to compare"
    );
    let (p99_before, p99_during) = (percentile(&mut before, 0.99), percentile(&mut during, 0.99));
    let worst = *during.last().expect("some");
    println!(
        "CHAOS | redis paused 2s: HIT p99 {p99_before:?} before, {p99_during:?} during (max {worst:?}); {dropped_during} registrations dropped"
    );
    assert!(
        worst < Duration::from_millis(200),
        "a HIT took {worst:?} while Redis was paused"
    );
    assert!(
        p99_during <= (p99_before * 5).max(Duration::from_millis(50)),
        "HIT p99 went from {p99_before:?} to {p99_during:?}"
    );
    assert!(
        dropped_during > 0.0,
        "no registration was dropped while Redis was paused"
    );
    assert_eq!(v.failed, 0, "client requests failed");
    assert_eq!(v.server_errors, 0, "5xx served");
    assert_eq!(v.stale, 0, "stale statuses served: {:?}", v.examples);
    drop(s.http);
    assert_no_leaks(&[&s.r1, &s.r2], s.up.kill(), baseline).await;
}
