//! The chaos harness: two sidecars with admin ports, the demo simulator as
//! a restartable upstream, a steady load that records every response, and
//! a truth model that knows each game's status at every instant.
//!
//! A scenario breaks something under load, then judges what the clients
//! saw: failures, 5xx, stale statuses (shown after the change plus
//! [`BOUND`]), and leaks (open connections, live tasks).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use oddscache::config::{Config, Overrides};
use oddscache::demo::Simulator;
use tokio::task::JoinHandle;

use super::client::{one_shot, Client};
use super::sidecar::{shipped_config, Sidecar};

/// The propagation bound: a change must be visible on every replica this
/// long after the write that made it returned. A correctness bound, not a
/// speed target: loopback propagation is a few milliseconds.
pub const BOUND: Duration = Duration::from_secs(1);
/// Any single client request may take this long before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a condition the scenario waits for may take.
pub const WAIT: Duration = Duration::from_secs(10);
/// The admin token the chaos sidecars accept.
pub const TOKEN: &str = "chaos-token";

/// Chaos scenarios measure latency and memory; one at a time per binary.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The shipped config with `edits` (pairs of exact text and replacement)
/// applied, pointed at `upstream` and `redis`, as `replica`.
pub fn config(
    upstream: &str,
    redis: Option<&str>,
    replica: &str,
    edits: &[(&str, &str)],
) -> Config {
    shipped_config(
        |mut text| {
            for (from, to) in edits {
                assert!(text.contains(from), "config.toml has no {from:?}");
                text = text.replacen(from, to, 1);
            }
            text
        },
        Overrides {
            upstream: Some(upstream.to_string()),
            redis_url: redis.map(str::to_string),
            replica_id: Some(replica.to_string()),
            admin_token: Some(TOKEN.to_string()),
            ..Overrides::default()
        },
    )
}

/// One sidecar with its admin port.
pub struct Replica {
    pub name: String,
    pub sidecar: Sidecar,
    pub admin: SocketAddr,
}

impl Replica {
    pub async fn start(name: &str, config: Config) -> Replica {
        let sidecar = Sidecar::start(config).await;
        Replica {
            name: name.to_string(),
            admin: sidecar.admin,
            sidecar,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.sidecar.url(path)
    }

    pub async fn metric(&self, series: &str) -> f64 {
        self.sidecar.metric(series).await
    }

    pub async fn admin_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = admin_get(self.admin, path).await;
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&body))
        });
        (status, json)
    }

    /// Waits until `metric` reads `want`; answers when it did.
    pub async fn wait_metric(&self, series: &str, want: f64) -> Instant {
        self.sidecar
            .wait_metric(series, |got| got == want, WAIT)
            .await;
        Instant::now()
    }
}

/// Two replicas, `r1` and `r2`, in front of `upstream` and sharing
/// `redis`, with `edits` to the shipped config; answers once both say Redis
/// is up. (Entries filled before a replica first subscribes are dropped when
/// it does: it may have missed invalidations.)
pub async fn pair(upstream: &str, redis: &str, edits: &[(&str, &str)]) -> (Replica, Replica) {
    let r1 = Replica::start("r1", config(upstream, Some(redis), "r1", edits)).await;
    let r2 = Replica::start("r2", config(upstream, Some(redis), "r2", edits)).await;
    for r in [&r1, &r2] {
        r.wait_metric("oddscache_redis_up", 1.0).await;
    }
    (r1, r2)
}

/// A GET on a fresh connection closed after the answer, so probes hold no
/// pooled connection or task that a leak check would count.
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    one_shot(addr, "GET", path, &[], "").await
}

pub async fn admin_post(addr: SocketAddr, path: &str, body: &str) -> (u16, Vec<u8>) {
    let auth = format!("Bearer {TOKEN}");
    one_shot(
        addr,
        "POST",
        path,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// A game as one response showed it.
#[derive(Clone, Debug)]
pub struct Shown {
    pub game: String,
    pub status: String,
}

/// One client request and what came back.
#[derive(Clone, Debug)]
pub struct Sample {
    pub replica: usize,
    pub path: String,
    pub start: Instant,
    pub took: Duration,
    /// 0 when no response arrived (connect error, timeout, broken body).
    pub status: u16,
    pub x_cache: String,
    pub games: Vec<Shown>,
    pub error: Option<String>,
}

impl Sample {
    pub fn failed(&self) -> bool {
        self.status == 0
    }
}

fn games_in(body: &[u8]) -> Vec<Shown> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let one = |g: &serde_json::Value| {
        Some(Shown {
            game: g.get("game_id")?.as_str()?.to_string(),
            status: g.get("status")?.as_str()?.to_string(),
        })
    };
    match v.get("games").and_then(|g| g.as_array()) {
        Some(list) => list.iter().filter_map(one).collect(),
        None => one(&v).into_iter().collect(),
    }
}

/// The chaos scenarios' use of the harness's client: a sample reports a
/// failure instead of panicking, and every exchange has [`REQUEST_TIMEOUT`].
impl Client {
    pub async fn sample(&self, replica: usize, base: &str, path: &str) -> Sample {
        let start = Instant::now();
        let outcome = self
            .try_send(
                Method::GET,
                &format!("{base}{path}"),
                &[],
                Bytes::new(),
                REQUEST_TIMEOUT,
            )
            .await;
        let took = start.elapsed();
        let mut s = Sample {
            replica,
            path: path.to_string(),
            start,
            took,
            status: 0,
            x_cache: String::new(),
            games: Vec::new(),
            error: None,
        };
        match outcome {
            Ok(r) => {
                s.status = r.status.as_u16();
                s.x_cache = r.maybe("x-cache").unwrap_or("").to_string();
                if s.status == 200 {
                    s.games = games_in(&r.body);
                }
            }
            Err(e) => s.error = Some(e),
        }
        s
    }

    /// A write through a replica; panics unless it answers 200.
    pub async fn put_ok(&self, url: &str, body: &str) {
        let resp = self
            .try_send(
                Method::PUT,
                url,
                &[("content-type", "application/json")],
                body.to_string(),
                REQUEST_TIMEOUT,
            )
            .await
            .unwrap_or_else(|e| panic!("PUT {url} failed: {e}"));
        assert_eq!(resp.status, 200, "PUT {url}");
    }
}

/// A steady request load on every (replica, path) pair, recording each
/// response. A `{n}` in a path becomes a fresh number per request, to make
/// misses.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(replicas: &[&Replica], paths: &[&str], workers: usize, pace: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let targets: Arc<Vec<(usize, String, String)>> = Arc::new(
            replicas
                .iter()
                .enumerate()
                .flat_map(|(i, r)| paths.iter().map(move |p| (i, r.url(""), (*p).to_string())))
                .collect(),
        );
        let workers = (0..workers)
            .map(|w| {
                let (stop, counter, targets) = (
                    Arc::clone(&stop),
                    Arc::clone(&counter),
                    Arc::clone(&targets),
                );
                tokio::spawn(async move {
                    let http = Client::new();
                    let mut samples = Vec::new();
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        let (replica, base, path) = &targets[i % targets.len()];
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let path = path.replace("{n}", &n.to_string());
                        samples.push(http.sample(*replica, base, &path).await);
                        i += 1;
                        tokio::time::sleep(pace).await;
                    }
                    samples
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the workers and hands back every sample, oldest first. The
    /// workers' clients, and their pooled connections, are gone after it.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.await.expect("load worker panicked"));
        }
        all.sort_by_key(|s| s.start);
        all
    }
}

/// One status a game held: from when the write that set it began, to when
/// the write that replaced it ended (plus [`BOUND`]).
#[derive(Clone, Debug)]
struct Held {
    status: String,
    begin: Instant,
}

#[derive(Clone, Debug)]
struct Change {
    held: Held,
    /// When the write returned: the old status may show until this + BOUND.
    end: Instant,
}

/// Each tracked game's true status over time.
#[derive(Default)]
pub struct Truth {
    games: Mutex<HashMap<String, (Held, Vec<Change>)>>,
    /// (replica, from, until): stale answers in here are allowed (e.g. the
    /// peer of a change made while Redis was down, until it resubscribes).
    excused: Mutex<Vec<(usize, Instant, Instant)>>,
}

/// How one run went, judged against the truth.
#[derive(Debug, Default)]
pub struct Verdict {
    pub sent: usize,
    pub failed: usize,
    pub server_errors: usize,
    pub stale: usize,
    pub stale_excused: usize,
    /// Up to five stale samples, for the failure message.
    pub examples: Vec<String>,
}

impl Truth {
    /// Sets a game's status in the simulator before any replica caches it.
    pub fn init(&self, sim: &Simulator, game: &str, status: &str) {
        assert!(sim.set_status(game, status), "unknown game {game}");
        let held = Held {
            status: status.to_string(),
            begin: Instant::now(),
        };
        self.games
            .lock()
            .unwrap()
            .insert(game.to_string(), (held, Vec::new()));
    }

    /// Tracks the simulator's first `n` games, each set to `status` first.
    pub fn track(&self, sim: &Simulator, n: usize, status: &str) -> Vec<String> {
        let games = sim.game_ids()[..n].to_vec();
        for g in &games {
            self.init(sim, g, status);
        }
        games
    }

    /// Changes a game's status with a watched write through `replica`.
    pub async fn change(&self, http: &Client, replica: &Replica, game: &str, status: &str) {
        let begin = Instant::now();
        http.put_ok(
            &replica.url(&format!("/api/v1/games/{game}")),
            &format!(r#"{{"status":"{status}"}}"#),
        )
        .await;
        let end = Instant::now();
        let mut games = self.games.lock().unwrap();
        let (_, changes) = games.get_mut(game).expect("a tracked game");
        changes.push(Change {
            held: Held {
                status: status.to_string(),
                begin,
            },
            end,
        });
    }

    pub fn excuse(&self, replica: usize, from: Instant, until: Instant) {
        self.excused.lock().unwrap().push((replica, from, until));
    }

    /// Whether a game may show `status` to a request that ran from `at`
    /// to `done`: the status held at some instant of it.
    fn allowed(&self, game: &str, status: &str, at: Instant, done: Instant) -> bool {
        let games = self.games.lock().unwrap();
        let Some((first, changes)) = games.get(game) else {
            return true; // not tracked
        };
        // Each status holds from when its write began until the write
        // that replaced it returned, plus the bound.
        let mut held = first;
        for c in changes {
            if held.status == status && done >= held.begin && at < c.end + BOUND {
                return true;
            }
            held = &c.held;
        }
        held.status == status && done >= held.begin
    }

    fn excused(&self, replica: usize, at: Instant) -> bool {
        self.excused
            .lock()
            .unwrap()
            .iter()
            .any(|(r, from, until)| *r == replica && at >= *from && at < *until)
    }

    /// Judges every sample; 5xx are counted, not judged stale.
    pub fn judge(&self, samples: &[Sample]) -> Verdict {
        let mut v = Verdict {
            sent: samples.len(),
            ..Verdict::default()
        };
        for s in samples {
            if s.failed() {
                v.failed += 1;
                continue;
            }
            if s.status >= 500 {
                v.server_errors += 1;
            }
            for g in &s.games {
                if self.allowed(&g.game, &g.status, s.start, s.start + s.took) {
                    continue;
                }
                if self.excused(s.replica, s.start) {
                    v.stale_excused += 1;
                } else {
                    v.stale += 1;
                    if v.examples.len() < 5 {
                        v.examples.push(format!(
                            "r{} {} {} showed {} {} ({})",
                            s.replica, s.path, s.x_cache, g.game, g.status, s.status
                        ));
                    }
                }
            }
        }
        v
    }
}

/// Prints the scenario's row of the chaos table.
pub fn report(scenario: &str, v: &Verdict, recovery: Option<Duration>) {
    let recovery = recovery.map_or("-".to_string(), |d| format!("{:.2}s", d.as_secs_f64()));
    println!(
        "CHAOS | {scenario} | requests {} | failed {} | 5xx {} | stale {} (excused {}) | recovery {recovery}",
        v.sent, v.failed, v.server_errors, v.stale, v.stale_excused
    );
}

/// Tasks alive on this runtime: a leak check's raw figure.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Tasks allowed above the baseline once the upstream is closed: a
/// replaced Redis connection's driver may still be winding down.
const LEAK_SLACK: usize = 2;

/// Closes the upstream (`close_upstream`), then waits until the runtime's live tasks are back
/// to at most the baseline (plus [`LEAK_SLACK`]) and the replicas' open proxy
/// connections to zero: nothing the load started outlives it.
///
/// The upstream goes first because its keep-alive connections, two tasks
/// each (the replica's pooled client, the upstream's server side), are
/// held on purpose for `pool_idle_timeout` and number as many as the load's
/// peak concurrency: counting them as slack made the check both loose and
/// flaky.
pub async fn assert_no_leaks(
    replicas: &[&Replica],
    close_upstream: impl std::future::Future<Output = ()>,
    baseline: usize,
) {
    close_upstream.await;
    let deadline = Instant::now() + WAIT;
    loop {
        let mut open = 0.0;
        for r in replicas {
            open += r.metric("oddscache_connections").await;
        }
        let tasks = alive_tasks();
        if open == 0.0 && tasks <= baseline + LEAK_SLACK {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "leak: {open} proxy connections still open, {tasks} tasks alive (baseline {baseline} + {LEAK_SLACK}, upstream closed)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Percentile of durations (sorted in place).
pub fn percentile(d: &mut [Duration], p: f64) -> Duration {
    if d.is_empty() {
        return Duration::ZERO;
    }
    d.sort();
    d[((d.len() as f64 - 1.0) * p).round() as usize]
}

/// The HIT latencies of samples started in `[from, until)`.
pub fn hit_latencies(samples: &[Sample], from: Instant, until: Instant) -> Vec<Duration> {
    samples
        .iter()
        .filter(|s| s.x_cache == "HIT" && s.start >= from && s.start < until)
        .map(|s| s.took)
        .collect()
}

/// Resident memory of this process, from /proc (Linux).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}
