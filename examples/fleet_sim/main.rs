//! The fleet simulation of issue 8 (item 6), driven by `bench/fleet.sh`,
//! which starts the Redis Cluster and passes its nodes in `FLEET_NODES`.
//!
//! - upstream: the demo simulator, in this process, with `FLEET_GAMES`
//!   games (1,000) and no ticker: games change only when this driver says;
//! - `FLEET_SIDECARS` (8) `oddscache` processes (`ODDSCACHE_BIN`), the
//!   shipped config in `mode = "cluster"`, each with a different first
//!   seed, each with its own admin port;
//! - a warmer that GETs every game's odds and every sidebar through every
//!   sidecar, round and round at `FLEET_WARM_RATE` requests/s;
//! - phases: warm-up (every URL once through every sidecar), then the
//!   registry is measured; `FLEET_QUIET_SECS` of warming alone (the
//!   background rate of Redis commands); `FLEET_CHANGE_SECS` of game-day
//!   changes, `FLEET_STATUS_RATE` status changes/s and `FLEET_ODDS_RATE`
//!   odds moves/s, each a watched PUT through a random sidecar, with a
//!   probe on another sidecar for the propagation time; last,
//!   `FLEET_BURST_SECS` of writes as fast as `FLEET_BURST_WRITERS`
//!   writers go, for the throughput ceiling on this machine.
//!
//! One table at the end. The sidecars are children of this process and are
//! killed when it exits (the script also kills its process group).
//!
//! - `fleet`: the sidecar processes, the HTTP client, their metrics;
//! - `load`: the warmer, the changes, the propagation probe, the burst;
//! - `redis_stats`: what is read from the cluster (commands, memory,
//!   registry, subscribers, the channel's messages).

mod fleet;
mod load;
mod redis_stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oddscache::demo::{SimConfig, Simulator};
use oddscache::shutdown;

use fleet::{fleet_histogram, fleet_sum, histogram_quantile, spawn_sidecar, Http, Sidecar};
use load::{burst, changes, urls, warm_loop, Games, Samples};
use redis_stats::{
    commandstats, delta, listen_sizes, nodes, ours, registry, shard_subscribers, used_memory,
};

/// The shipped config's `redis.channel` and `redis.key_prefix`.
pub const CHANNEL: &str = "oddscache:invalidations";
pub const PREFIX: &str = "oddscache:";

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub struct Opts {
    pub bin: PathBuf,
    pub nodes: Vec<String>,
    pub sidecars: usize,
    pub games: usize,
    pub warm_rate: f64,
    pub quiet: Duration,
    pub change: Duration,
    pub status_rate: f64,
    pub odds_rate: f64,
    pub burst: Duration,
    pub burst_writers: usize,
    pub logs: PathBuf,
}

impl Opts {
    fn from_env() -> Opts {
        let nodes: Vec<String> = std::env::var("FLEET_NODES")
            .expect(
                "FLEET_NODES: the cluster's node URLs, comma-separated (bench/fleet.sh sets it)",
            )
            .split(',')
            .map(str::to_owned)
            .collect();
        Opts {
            bin: env("ODDSCACHE_BIN", PathBuf::from("target/release/oddscache")),
            nodes,
            sidecars: env("FLEET_SIDECARS", 8),
            games: env("FLEET_GAMES", 1000),
            warm_rate: env("FLEET_WARM_RATE", 2000.0),
            quiet: Duration::from_secs(env("FLEET_QUIET_SECS", 20)),
            change: Duration::from_secs(env("FLEET_CHANGE_SECS", 60)),
            status_rate: env("FLEET_STATUS_RATE", 20.0),
            odds_rate: env("FLEET_ODDS_RATE", 50.0),
            burst: Duration::from_secs(env("FLEET_BURST_SECS", 10)),
            burst_writers: env("FLEET_BURST_WRITERS", 16),
            logs: env("FLEET_LOGS", std::env::temp_dir()),
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let opts = Opts::from_env();
    let started = Instant::now();
    let http = Http::new();
    let mut redis_nodes = nodes(&opts.nodes).await;

    // Upstream.
    let sim = Simulator::new(SimConfig {
        games: opts.games,
        tick: Duration::ZERO,
        ..SimConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (_stop_upstream, signal) = shutdown::channel();
    tokio::spawn(oddscache::demo::serve(Arc::clone(&sim), listener, signal));

    // Sidecars.
    let sidecars: Vec<Sidecar> = (0..opts.sidecars)
        .map(|i| spawn_sidecar(&opts, i, upstream))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &sidecars {
        loop {
            let up = http
                .get(&format!("http://{}/metrics", s.admin))
                .await
                .is_some_and(|r| {
                    String::from_utf8_lossy(&r.body)
                        .lines()
                        .any(|l| l == "oddscache_redis_up 1")
                });
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar on {} never reported oddscache_redis_up 1 (logs in {})",
                s.admin,
                opts.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (owner, sharded_subs, classic_subs) = shard_subscribers(&mut redis_nodes).await;
    let sharded = sharded_subs > 0;
    eprintln!(
        "fleet: {} sidecars up; {} ({} sharded subscribers on {owner}, {classic_subs} classic)",
        sidecars.len(),
        if sharded {
            "sharded pub/sub"
        } else {
            "classic pub/sub"
        },
        sharded_subs
    );

    // Warm-up: every URL once through every sidecar.
    let (games, sidebars, list) = urls(&http, upstream).await;
    let paths: Vec<String> = games.iter().chain(&sidebars).cloned().collect();
    let bases: Vec<String> = sidecars
        .iter()
        .map(|s| format!("http://{}", s.proxy))
        .collect();
    let mem_before = used_memory(&mut redis_nodes).await;
    let run0 = commandstats(&mut redis_nodes).await;
    let warm_started = Instant::now();
    {
        let all: Vec<String> = paths
            .iter()
            .flat_map(|p| bases.iter().map(move |b| format!("{b}{p}")))
            .collect();
        for chunk in all.chunks(32) {
            let calls = chunk.iter().map(|u| http.get(u));
            for r in futures_util::future::join_all(calls).await {
                assert!(r.is_some_and(|r| r.status == 200), "a warm-up GET failed");
            }
        }
    }
    // Registration is queued off the request path: wait until it settles.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut keys = 0u64;
        for n in redis_nodes.iter_mut() {
            keys += redis::cmd("DBSIZE")
                .query_async::<u64>(&mut n.conn)
                .await
                .unwrap_or(0);
        }
        if keys == last {
            break;
        }
        last = keys;
    }
    let warm_took = warm_started.elapsed();
    let mem_after = used_memory(&mut redis_nodes).await;
    let reg = registry(&mut redis_nodes).await;
    eprintln!(
        "fleet: warmed {} URLs through {} sidecars in {warm_took:?}; {reg:?}",
        paths.len(),
        bases.len()
    );

    // The warmer runs from here to the end.
    let stop_warm = Arc::new(AtomicBool::new(false));
    let warmed = Arc::new(AtomicU64::new(0));
    let warmer = tokio::spawn(warm_loop(
        http.clone(),
        bases.clone(),
        paths.clone(),
        opts.warm_rate,
        Arc::clone(&stop_warm),
        Arc::clone(&warmed),
    ));
    let (sizes, listener) = listen_sizes(opts.nodes.clone(), sharded).await;

    // Quiet phase: the background rate of commands.
    let q0 = commandstats(&mut redis_nodes).await;
    let qt = Instant::now();
    tokio::time::sleep(opts.quiet).await;
    let quiet_secs = qt.elapsed().as_secs_f64();
    let quiet = delta(&commandstats(&mut redis_nodes).await, &q0);

    // Change phase.
    let games_state = Arc::new(Games::from_list(&list));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let c0 = commandstats(&mut redis_nodes).await;
    let ct = Instant::now();
    let proxies: Vec<SocketAddr> = sidecars.iter().map(|s| s.proxy).collect();
    let (status_changes, odds_moves) = changes(
        &http,
        &proxies,
        &games_state,
        &samples,
        &listener,
        opts.status_rate,
        opts.odds_rate,
        opts.change,
    )
    .await;
    let change_secs = ct.elapsed().as_secs_f64();
    // Let refills and their registrations land before reading the counters.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let change_secs_counted = ct.elapsed().as_secs_f64();
    let changed = delta(&commandstats(&mut redis_nodes).await, &c0);
    let histogram = fleet_histogram(&http, &sidecars).await;

    // Burst: writes back to back, for the ceiling.
    let b0 = commandstats(&mut redis_nodes).await;
    let bt = Instant::now();
    let burst_writes = burst(
        &http,
        &proxies,
        &games_state,
        opts.burst_writers,
        opts.burst,
    )
    .await;
    let burst_secs = bt.elapsed().as_secs_f64();
    let burst = delta(&commandstats(&mut redis_nodes).await, &b0);
    stop_warm.store(true, Ordering::Relaxed);
    let _ = warmer.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = delta(&commandstats(&mut redis_nodes).await, &run0);
    let heard = fleet_sum(
        &http,
        &sidecars,
        "oddscache_invalidation_propagation_seconds_count",
    )
    .await;
    let redis_errors = fleet_sum(&http, &sidecars, "oddscache_redis_errors_total").await;
    let dropped = fleet_sum(&http, &sidecars, "oddscache_registrations_dropped_total").await;

    // The table.
    let s = samples.lock().unwrap();
    let mut prop = s.propagation.clone();
    prop.sort();
    let mut wr = s.write.clone();
    wr.sort();
    let publish = if sharded { "spublish" } else { "publish" };
    let invalidations = *changed.get(publish).unwrap_or(&0);
    let burst_invalidations = *burst.get(publish).unwrap_or(&0);
    let cached_keys = reg.distinct_members.max(1);
    let registry_bytes = reg.set_bytes + reg.game_bytes;
    let mut per_inv: BTreeMap<String, f64> = BTreeMap::new();
    for (cmd, n) in &changed {
        if ours(cmd) {
            continue;
        }
        let bg = quiet.get(cmd).copied().unwrap_or(0) as f64 / quiet_secs * change_secs_counted;
        let net = (*n as f64 - bg).max(0.0);
        if net >= 0.5 {
            per_inv.insert(cmd.clone(), net / invalidations.max(1) as f64);
        }
    }
    let per_inv_total: f64 = per_inv.values().sum();
    let background: BTreeMap<&String, f64> = quiet
        .iter()
        .filter(|(c, _)| !ours(c))
        .map(|(c, n)| (c, *n as f64 / quiet_secs))
        .collect();
    let mut size = sizes.lock().unwrap().clone();
    size.sort_unstable();
    let avg_size = size.iter().sum::<usize>() as f64 / size.len().max(1) as f64;
    let fmt_map = |m: &BTreeMap<String, f64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    println!();
    println!(
        "FLEET {} sidecars, {} games, {} primaries, {} pub/sub; {:.0}s",
        sidecars.len(),
        opts.games,
        opts.nodes.len(),
        if sharded { "sharded" } else { "classic" },
        started.elapsed().as_secs_f64()
    );
    println!("| figure | value | how |");
    println!("| --- | --- | --- |");
    println!(
        "| cached keys registered | {} | distinct members of the registry sets after warm-up ({} URLs x {} sidecars) |",
        reg.distinct_members,
        paths.len(),
        sidecars.len()
    );
    println!(
        "| registry memory per cached key | {:.0} B | MEMORY USAGE of every {PREFIX}* key ({} sets with {} members: {} B; {} game-state keys: {} B) / cached keys |",
        registry_bytes as f64 / cached_keys as f64,
        reg.sets,
        reg.members,
        reg.set_bytes,
        reg.game_keys,
        reg.game_bytes
    );
    println!(
        "| ... per registry membership | {:.0} B | set bytes / members |",
        reg.set_bytes as f64 / reg.members.max(1) as f64
    );
    println!(
        "| used_memory growth per cached key | {:.0} B | INFO memory used_memory summed over primaries, after warm-up minus before ({} B) |",
        mem_after.saturating_sub(mem_before) as f64 / cached_keys as f64,
        mem_after.saturating_sub(mem_before)
    );
    println!(
        "| changes sent | {} status + {} odds in {:.0}s ({:.1}/s) | Poisson arrivals, PUT through a random sidecar |",
        status_changes,
        odds_moves,
        change_secs,
        (status_changes + odds_moves) as f64 / change_secs
    );
    println!(
        "| invalidations | {} ({:.1}/s) | {} calls during the change phase |",
        invalidations,
        invalidations as f64 / change_secs_counted,
        publish.to_uppercase()
    );
    println!(
        "| Redis commands per invalidation | {:.1} | commandstats delta over the primaries minus the quiet phase's rate: {} |",
        per_inv_total,
        fmt_map(&per_inv)
    );
    let registration: f64 = ["sadd", "expire"]
        .iter()
        .filter_map(|c| per_inv.get(*c))
        .sum();
    println!(
        "| ... on the invalidation path | {:.1} | compare-and-set (EVALSHA, and the GET and SET it runs), SMEMBERS, UNLINK, {} |",
        per_inv_total - registration,
        publish.to_uppercase()
    );
    println!(
        "| ... re-registering refilled entries | {:.1} ({:.1} per sidecar) | SADD and EXPIRE of the entries the warmer refilled on every sidecar |",
        registration,
        registration / sidecars.len() as f64
    );
    println!(
        "| background commands/s (quiet) | {:.1} | {} |",
        background.values().sum::<f64>(),
        background
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| propagation p50 / p99 / max | {} / {} / {} | PUT sent through one sidecar until a GET on another returns the new body ({} samples; {} not cached at start, {} lost) |",
        ms(pct(&prop, 0.5)),
        ms(pct(&prop, 0.99)),
        ms(prop.last().copied().unwrap_or_default()),
        prop.len(),
        s.uncached,
        s.lost
    );
    println!(
        "| write (PUT) p50 / p99 | {} / {} | through the origin sidecar: upstream, watcher, compare-and-set, Redis deletes, publish ({} failed) |",
        ms(pct(&wr, 0.5)),
        ms(pct(&wr, 0.99)),
        s.failed_writes
    );
    println!(
        "| fleet eviction lag p50 / p99 | <= {:.1} ms / <= {:.1} ms | oddscache_invalidation_propagation_seconds on all sidecars (event at_ms to peer eviction; ms clock, bucket bounds) |",
        histogram_quantile(&histogram, 0.5) * 1000.0,
        histogram_quantile(&histogram, 0.99) * 1000.0
    );
    println!(
        "| message size avg / p99 | {:.0} B / {} B | payloads heard on the channel ({} messages) |",
        avg_size,
        size.get(((size.len() as f64 - 1.0) * 0.99).max(0.0) as usize)
            .copied()
            .unwrap_or(0),
        size.len()
    );
    println!(
        "| invalidation throughput, burst | {:.0}/s | {} writers back to back for {:.0}s ({} writes), {} calls / s |",
        burst_invalidations as f64 / burst_secs,
        opts.burst_writers,
        burst_secs,
        burst_writes,
        publish.to_uppercase()
    );
    let published = *run.get(publish).unwrap_or(&0);
    println!(
        "| fan-out completeness | {:.4} | peer events applied (oddscache_invalidation_propagation_seconds_count, all sidecars) / ({} x {} peers), whole run |",
        heard / (published as f64 * (sidecars.len() - 1) as f64).max(1.0),
        publish.to_uppercase(),
        sidecars.len() - 1
    );
    println!(
        "| Redis errors, registrations dropped | {redis_errors:.0}, {dropped:.0} | oddscache_redis_errors_total, oddscache_registrations_dropped_total, all sidecars |"
    );
    println!(
        "| warmer | {:.0} GET/s | {} GETs over the quiet, change and burst phases |",
        warmed.load(Ordering::Relaxed) as f64 / qt.elapsed().as_secs_f64(),
        warmed.load(Ordering::Relaxed)
    );
    drop(sidecars);
}
