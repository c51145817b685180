//! Chaos: an invalidation storm at 10,000 a minute (for ten seconds, the
//! same rate as the issue's minute) through the admin API of two replicas,
//! under a steady request load.
//!
//! The proxy keeps serving, memory stays bounded, the rate alert fires once
//! per replica (counted from the log), and the event ring stays at its
//! capacity. This binary installs a global log subscriber and reads the
//! process's RSS, so it holds this one scenario only.

mod common;

use common::sim::SimUpstream;
use common::{chaos, redis_server};

use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::{admin_post, alive_tasks, assert_no_leaks, report, rss_kib, Load, Truth};
use redis_server::RedisServer;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// 10,000 a minute.
const RATE_PER_SECOND: u64 = 10_000 / 60;
const STORM: Duration = Duration::from_secs(10);
/// What RSS may grow by over the storm: generous, since the allocator keeps
/// freed pages; a leak per invalidation would pass it many times over.
const RSS_GROWTH_KIB: u64 = 64 * 1024;

/// Counts the journal's "crossed the alert threshold" warnings.
struct AlertCounter(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AlertCounter {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Crossed(bool);
        impl Visit for Crossed {
            fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
                if field.name() == "message"
                    && format!("{value:?}").contains("crossed the alert threshold")
                {
                    self.0 = true;
                }
            }
        }
        let mut v = Crossed(false);
        event.record(&mut v);
        if v.0 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_storm() {
    let alerts = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(AlertCounter(Arc::clone(&alerts))),
    )
    .expect("the only subscriber of this binary");

    let redis = RedisServer::start();
    let mut up = SimUpstream::start().await;
    let edits = [("mutations_per_second = 10 ", "mutations_per_second = 1000 ")];
    let (r1, r2) = chaos::pair(&up.url(), &redis.url(), &edits).await;
    let truth = Truth::default();
    let games = truth.track(&up.sim, 2, "pre_game");
    let paths = [
        format!("/api/v1/games/{}/odds", games[0]),
        format!("/api/v1/games/{}/odds", games[1]),
    ];
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let baseline = alive_tasks();
    let load = Load::start(&[&r1, &r2], &paths, 4, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib();

    // The storm: alternating replicas, mostly unknown games, every tenth
    // one a game the load is reading, so misses keep coming.
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SECOND));
    let mut sent = 0u64;
    while started.elapsed() < STORM {
        every.tick().await;
        let game = if sent.is_multiple_of(10) {
            games[(sent / 10) as usize % games.len()].clone()
        } else {
            format!("g-storm-{}", sent % 500)
        };
        let admin = if sent.is_multiple_of(2) {
            r1.admin
        } else {
            r2.admin
        };
        let (status, body) = admin_post(
            admin,
            "/api/v1/shared/cache/invalidate",
            &format!(r#"{{"game_id": "{game}"}}"#),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        sent += 1;
    }
    let took = started.elapsed();
    let rss_after = rss_kib();
    let samples = load.stop().await;

    let v = truth.judge(&samples);
    report("invalidation storm", &v, None);
    println!(
        "CHAOS | storm: {sent} invalidations in {took:?} ({:.0}/min), RSS {rss_before} -> {rss_after} KiB, {} alert warnings",
        sent as f64 * 60.0 / took.as_secs_f64(),
        alerts.load(Ordering::SeqCst)
    );
    assert!(
        sent as f64 / took.as_secs_f64() >= RATE_PER_SECOND as f64 * 0.9,
        "the storm ran below 10,000 a minute"
    );
    assert_eq!(v.failed, 0, "client requests failed");
    assert_eq!(v.server_errors, 0, "5xx served");
    assert_eq!(v.stale, 0, "stale statuses served: {:?}", v.examples);
    assert!(
        samples.iter().filter(|s| s.start > started).count() > 500,
        "the proxy stopped serving during the storm"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_KIB,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    for r in [&r1, &r2] {
        let (_, stats) = r
            .admin_json("/api/v1/shared/cache/invalidation/stats")
            .await;
        assert_eq!(stats["alerting"], true, "{}: {stats}", r.name);
        assert!(
            stats["total_invalidations"].as_u64().expect("a count") >= sent,
            "{}: every replica records every event: {stats}",
            r.name
        );
        let (status, events) = r
            .admin_json("/api/v1/shared/cache/invalidation/events?limit=1000")
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            events["events"].as_array().expect("events").len(),
            1000,
            "{}: the ring holds exactly its capacity",
            r.name
        );
    }
    // Once per replica: the origin's journal and the peer's both cross.
    assert_eq!(
        alerts.load(Ordering::SeqCst),
        2,
        "the alert fired more than once per replica"
    );
    assert_no_leaks(&[&r1, &r2], up.kill(), baseline).await;
}
