//! Soak: two replicas, a real Redis and the demo simulator upstream under a
//! steady mixed load for a long time (issue 7, part 4). `bench/soak.sh`
//! runs it in release; it is `#[ignore]`d so `cargo test` skips it.
//!
//! Environment: `SOAK_SECS` (default 1800), `SOAK_RATE` client requests
//! per second over both replicas (default 500), `SOAK_CHANGES` writes per
//! second, half status changes and half odds moves (default 4),
//! `SOAK_EVERY` seconds between table rows (default 30).
//!
//! Traffic: HITs on tracked games' odds, their sidebars and the catalogue;
//! MISSes from query variants (a bounded set that keeps re-filling, and an
//! unbounded one that only ever misses); status changes through a watched
//! write on either replica; odds moves of ±15% in the simulator followed
//! by a watched write. Every response is judged by the chaos truth model
//! (a status shown after its change plus [`chaos::BOUND`] is stale).
//!
//! The sidecars run in this process, so RSS is this process's `VmRSS`;
//! each replica's `/metrics` gives its entry count and weighed bytes.
//! Asserts: no failed or non-200 response, nothing stale, and (for runs of
//! 10 minutes or more) RSS at the end within 15% + 16 MiB of RSS at 5 min.

mod common;

use common::client::Client;
use common::sim::SimUpstream;
use common::{chaos, redis_server};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::{admin_get, rss_kib, Replica, Sample, Truth, Verdict};
use redis_server::RedisServer;
use tokio::time::MissedTickBehavior;

/// Concurrent client loops sharing `SOAK_RATE`.
const WORKERS: u64 = 16;
/// A sample is judged only once every write that may overlap it has been
/// recorded in the truth: a write is recorded when it returns, and one
/// that takes longer than the request timeout fails the run.
const JUDGE_AFTER: Duration = Duration::from_secs(8);
/// RSS is compared against its value at this point of the run.
const WARM_UP: Duration = Duration::from_secs(300);
/// Statuses a tracked game cycles through: each maps to a different
/// canonical status, so each change invalidates (SPEC: a change between
/// two raw strings of one canonical status is not an invalidation).
const CYCLE: [&str; 4] = ["pre_game", "in_progress", "final", "postponed"];
const TRACKED: usize = 8;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// Running totals of what the clients saw, judged against the truth.
#[derive(Default)]
struct Tally {
    served: u64,
    hits: u64,
    errors: u64,
    stale: u64,
    examples: Vec<String>,
}

impl Tally {
    fn add(&mut self, batch: &[Sample], v: &Verdict) {
        self.served += batch.iter().filter(|s| !s.failed()).count() as u64;
        self.hits += batch.iter().filter(|s| s.x_cache == "HIT").count() as u64;
        for s in batch.iter().filter(|s| s.status != 200) {
            self.errors += 1;
            if self.examples.len() < 10 {
                self.examples.push(format!(
                    "r{} {} -> {} {:?}",
                    s.replica, s.path, s.status, s.error
                ));
            }
        }
        self.stale += v.stale as u64;
        for e in &v.examples {
            if self.examples.len() < 10 {
                self.examples.push(format!("stale: {e}"));
            }
        }
    }
}

/// Samples waiting for [`JUDGE_AFTER`], and the totals of those judged.
#[derive(Default)]
struct Judge {
    pending: Mutex<VecDeque<Sample>>,
    tally: Mutex<Tally>,
}

impl Judge {
    /// Judges every pending sample that ended before `cutoff` (all of them
    /// with `None`).
    fn judge(&self, truth: &Truth, cutoff: Option<Instant>) {
        let batch: Vec<Sample> = {
            let mut pending = self.pending.lock().unwrap();
            let n = match cutoff {
                Some(c) => pending.iter().take_while(|s| s.start + s.took < c).count(),
                None => pending.len(),
            };
            pending.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let v = truth.judge(&batch);
        self.tally.lock().unwrap().add(&batch, &v);
    }
}

/// Sums every series of a metric (all label sets) in a `/metrics` text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name || series.starts_with(&format!("{name}{{")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// (entries, weighed bytes, requests the replica counted) from `/metrics`.
async fn store(r: &Replica) -> (f64, f64, f64) {
    let (status, body) = admin_get(r.admin, "/metrics").await;
    assert_eq!(status, 200, "{}: /metrics", r.name);
    let text = String::from_utf8_lossy(&body);
    (
        metric_sum(&text, "oddscache_cache_entries"),
        metric_sum(&text, "oddscache_cache_bytes"),
        metric_sum(&text, "oddscache_requests_total"),
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by bench/soak.sh"]
async fn soak() {
    let secs = env_u64("SOAK_SECS", 1800);
    let rate = env_u64("SOAK_RATE", 500).max(1);
    let changes = env_u64("SOAK_CHANGES", 4).max(1);
    let every = Duration::from_secs(env_u64("SOAK_EVERY", 30).max(1));
    let run_for = Duration::from_secs(secs);
    println!(
        "SOAK | {secs}s at {rate} req/s, {changes} writes/s, a row every {}s",
        every.as_secs()
    );

    let redis = RedisServer::start();
    let up = SimUpstream::start().await;
    let (r1, r2) = chaos::pair(&up.url(), &redis.url(), &[]).await;
    let replicas = Arc::new([r1, r2]);

    let truth = Arc::new(Truth::default());
    let games = truth.track(&up.sim, TRACKED, CYCLE[0]);
    let mut sidebars = Vec::new();
    for g in &games {
        let (_, body) = admin_get(up.addr, &format!("/api/v1/games/{g}/odds")).await;
        let odds: serde_json::Value = serde_json::from_slice(&body).expect("odds JSON");
        let sidebar = format!(
            "/api/v1/sidebar/{}/{}",
            odds["sport_id"].as_str().expect("sport_id"),
            odds["league_id"].as_str().expect("league_id")
        );
        if !sidebars.contains(&sidebar) {
            sidebars.push(sidebar);
        }
    }
    // The mix, by weight: mostly HITs, a tenth re-filled query variants,
    // a twentieth unbounded one-off MISSes.
    let mut paths: Vec<String> = Vec::new();
    for _ in 0..3 {
        paths.extend(games.iter().map(|g| format!("/api/v1/games/{g}/odds")));
    }
    paths.extend(sidebars.iter().cloned());
    paths.push("/api/v1/sports".to_string());
    for g in &games[..3] {
        paths.push(format!("/api/v1/games/{g}/odds?variant={{v}}"));
    }
    paths.push(format!("/api/v1/games/{}/odds?n={{n}}", games[3]));
    paths.push(format!("{}?n={{n}}", sidebars[0]));
    let paths = Arc::new(paths);

    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let judge = Arc::new(Judge::default());
    let period = Duration::from_secs_f64(WORKERS as f64 / rate as f64);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (stop, counter, judge, paths, replicas) = (
                Arc::clone(&stop),
                Arc::clone(&counter),
                Arc::clone(&judge),
                Arc::clone(&paths),
                Arc::clone(&replicas),
            );
            tokio::spawn(async move {
                let http = Client::new();
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    // Spread paths and replicas independently of the worker.
                    let replica = ((n / 7) % 2) as usize;
                    let path = paths[(n % paths.len() as u64) as usize]
                        .replace("{v}", &(n % 64).to_string())
                        .replace("{n}", &n.to_string());
                    let base = replicas[replica].url("");
                    let s = http.sample(replica, &base, &path).await;
                    judge.pending.lock().unwrap().push_back(s);
                }
            })
        })
        .collect();

    // Writes: status changes and odds moves, alternating, one at a time.
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, truth, replicas, games, sim, writes) = (
            Arc::clone(&stop),
            Arc::clone(&truth),
            Arc::clone(&replicas),
            games.clone(),
            Arc::clone(&up.sim),
            Arc::clone(&writes),
        );
        tokio::spawn(async move {
            let http = Client::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / changes as f64));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut step = vec![0usize; games.len()];
            let mut up_moves = vec![true; games.len()];
            let mut i: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let g = (i / 2) as usize % games.len();
                let via = &replicas[(i / 3 % 2) as usize];
                if i.is_multiple_of(2) {
                    step[g] = (step[g] + 1) % CYCLE.len();
                    truth.change(&http, via, &games[g], CYCLE[step[g]]).await;
                } else {
                    // +15% then back: past the 10% threshold each way.
                    let factor = if up_moves[g] { 1.15 } else { 1.0 / 1.15 };
                    up_moves[g] = !up_moves[g];
                    if sim.scale_line(&games[g], "/moneyline/home", factor) {
                        http.put_ok(&via.url(&format!("/api/v1/games/{}", games[g])), "{}")
                            .await;
                    }
                }
                writes.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };

    println!(
        "SOAK | {:>6} | {:>8} | {:>8} | {:>9} | {:>8} | {:>9} | {:>9} | {:>6} | {:>6} | {:>5} | {:>6}",
        "time",
        "RSS MiB",
        "r1 ent",
        "r1 MiB",
        "r2 ent",
        "r2 MiB",
        "served",
        "hit %",
        "errors",
        "stale",
        "writes"
    );
    let started = Instant::now();
    let mut rss_warm: Option<u64> = None;
    let mut rss_end;
    let mut next = started + every;
    loop {
        let done = Instant::now() >= started + run_for;
        if !done {
            let wake = next.min(started + run_for);
            while Instant::now() < wake {
                tokio::time::sleep(Duration::from_secs(1).min(wake - Instant::now())).await;
                judge.judge(&truth, Some(Instant::now() - JUDGE_AFTER));
                assert!(!writer.is_finished(), "the writer stopped (a write failed)");
            }
        }
        let rss = rss_kib();
        let elapsed = started.elapsed();
        if rss_warm.is_none() && elapsed >= WARM_UP {
            rss_warm = Some(rss);
        }
        rss_end = rss;
        let (e1, b1, _) = store(&replicas[0]).await;
        let (e2, b2, _) = store(&replicas[1]).await;
        {
            let t = judge.tally.lock().unwrap();
            println!(
                "SOAK | {:>5}s | {:>8.1} | {:>8} | {:>9.2} | {:>8} | {:>9.2} | {:>9} | {:>6.1} | {:>6} | {:>5} | {:>6}",
                elapsed.as_secs(),
                mib(rss),
                e1,
                b1 / 1048576.0,
                e2,
                b2 / 1048576.0,
                t.served,
                100.0 * t.hits as f64 / t.served.max(1) as f64,
                t.errors,
                t.stale,
                writes.load(Ordering::Relaxed)
            );
        }
        if Instant::now() >= started + run_for {
            break;
        }
        next += every;
    }

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("a load worker panicked");
    }
    writer.await.expect("the writer panicked (a write failed)");
    judge.judge(&truth, None);
    let (_, _, c1) = store(&replicas[0]).await;
    let (_, _, c2) = store(&replicas[1]).await;
    let t = judge.tally.lock().unwrap();
    println!(
        "SOAK | result | {}s | requests served {} (replicas counted {}) | hits {:.1}% | errors {} | stale {} | writes {} | RSS at 5 min {} | RSS at end {:.1} MiB",
        started.elapsed().as_secs(),
        t.served,
        c1 + c2,
        100.0 * t.hits as f64 / t.served.max(1) as f64,
        t.errors,
        t.stale,
        writes.load(Ordering::Relaxed),
        rss_warm.map_or("-".to_string(), |r| format!("{:.1} MiB", mib(r))),
        mib(rss_end)
    );
    assert!(t.served > 0, "nothing was served");
    assert_eq!(t.errors, 0, "errors: {:?}", t.examples);
    assert_eq!(t.stale, 0, "stale statuses served: {:?}", t.examples);
    if secs >= 600 {
        let warm = rss_warm.expect("an RSS sample at 5 min");
        let limit = warm + warm * 15 / 100 + 16 * 1024;
        assert!(
            rss_end <= limit,
            "RSS grew after warm-up: {:.1} MiB at 5 min, {:.1} MiB at the end (limit {:.1} MiB)",
            mib(warm),
            mib(rss_end),
            mib(limit)
        );
    }
    drop(t);
    drop(replicas);
    drop(up);
    drop(redis);
}
