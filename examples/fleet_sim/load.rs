//! The load: the warmer that keeps every sidecar's cache warm, the game
//! changes, and the probe that times each change's propagation.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::fleet::Http;
use super::PREFIX;

/// A probe gives up after this; the change counts as lost.
pub const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// Raw statuses of four different canonical ones, in the order a game's
/// changes cycle through them.
pub const STATUSES: [&str; 4] = ["in_progress", "final", "postponed", "pre_game"];

/// The URLs the warmer keeps warm: every game's odds and every sidebar.
pub async fn urls(
    http: &Http,
    upstream: SocketAddr,
) -> (Vec<String>, Vec<String>, serde_json::Value) {
    let r = http
        .get(&format!("http://{upstream}/api/v1/games"))
        .await
        .expect("the upstream lists its games");
    let list: serde_json::Value = serde_json::from_slice(&r.body).expect("games JSON");
    let mut games = Vec::new();
    let mut sidebars = HashSet::new();
    for g in list["games"].as_array().expect("games array") {
        let id = g["game_id"].as_str().unwrap();
        games.push(format!("/api/v1/games/{id}/odds"));
        sidebars.insert(format!(
            "/api/v1/sidebar/{}/{}",
            g["sport_id"].as_str().unwrap(),
            g["league_id"].as_str().unwrap()
        ));
    }
    let mut sidebars: Vec<String> = sidebars.into_iter().collect();
    sidebars.sort();
    (games, sidebars, list)
}

/// GETs every path through every sidecar, round and round, at `rate`/s.
pub async fn warm_loop(
    http: Http,
    bases: Vec<String>,
    paths: Vec<String>,
    rate: f64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let every = Duration::from_secs_f64(64.0 / rate);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let all: Vec<String> = paths
        .iter()
        .flat_map(|p| bases.iter().map(move |b| format!("{b}{p}")))
        .collect();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // 64 requests per tick, concurrently.
        let batch: Vec<_> = (0..64).map(|k| all[(i + k) % all.len()].clone()).collect();
        i = (i + 64) % all.len();
        let calls = batch.into_iter().map(|u| {
            let http = http.clone();
            async move { http.get(&u).await }
        });
        futures_util::future::join_all(calls).await;
        done.fetch_add(64, Ordering::Relaxed);
    }
}

/// What one change does to a game, and how a body shows it.
#[derive(Clone)]
pub enum Change {
    Status(&'static str),
    Odds(f64),
}

impl Change {
    pub fn body(&self) -> String {
        match self {
            Change::Status(s) => format!(r#"{{"status":"{s}"}}"#),
            Change::Odds(x) => format!(r#"{{"odds":{{"moneyline":{{"home":{x}}}}}}}"#),
        }
    }

    pub fn shown_by(&self, body: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return false;
        };
        match self {
            Change::Status(s) => v["status"].as_str() == Some(s),
            Change::Odds(x) => v["odds"]["moneyline"]["home"]
                .as_f64()
                .is_some_and(|h| (h - x).abs() < 1e-9),
        }
    }
}

/// The canonical status of a raw one, as the shipped `[watch.status_map]`
/// maps it: two raw statuses with the same canonical one are no change.
pub fn canonical(raw: &str) -> &str {
    match raw {
        "pre_game" => "scheduled",
        "in_progress" | "halftime" | "suspended" => "live",
        "final" => "finished",
        other => other,
    }
}

/// Each game's current canonical status and moneyline, so that every
/// change picked is one the sidecars act on.
pub struct Games {
    pub ids: Vec<String>,
    pub state: Mutex<HashMap<String, (String, f64)>>,
    /// Games with a probed change in flight: a second change would hide
    /// the first from its probe.
    pub busy: Mutex<HashSet<String>>,
}

impl Games {
    pub fn from_list(list: &serde_json::Value) -> Games {
        let mut state = HashMap::new();
        for g in list["games"].as_array().expect("games array") {
            let id = g["game_id"].as_str().unwrap().to_owned();
            let status = canonical(g["status"].as_str().unwrap_or("")).to_owned();
            let home = g["odds"]["moneyline"]["home"].as_f64().unwrap_or(2.0);
            state.insert(id, (status, home));
        }
        let mut ids: Vec<String> = state.keys().cloned().collect();
        ids.sort();
        Games {
            ids,
            state: Mutex::new(state),
            busy: Mutex::new(HashSet::new()),
        }
    }

    /// A change on a game that has none in flight; `done` must follow, so
    /// changes to one game are written one at a time, in order.
    pub fn pick(&self, rng: &mut impl Rng, odds: bool) -> (String, Change) {
        let id = loop {
            let id = self.ids.choose(rng).unwrap();
            if self.busy.lock().unwrap().insert(id.clone()) {
                break id.clone();
            }
        };
        let change = self.next_change(&id, odds);
        (id, change)
    }

    pub fn done(&self, id: &str) {
        self.busy.lock().unwrap().remove(id);
    }

    pub fn next_change(&self, id: &str, odds: bool) -> Change {
        let mut state = self.state.lock().unwrap();
        let (status, home) = state.get_mut(id).unwrap();
        if odds {
            // A move of about 50%, never back to a recent price: a sidecar
            // one event behind would see A -> B -> A as no change. Prices
            // stay within 1.3..4.5.
            *home = if *home < 2.5 {
                *home * 1.5
            } else {
                *home / 1.45
            };
            *home = (*home * 100.0).round() / 100.0;
            Change::Odds(*home)
        } else {
            // The next canonical status in the cycle, for the same reason.
            let at = STATUSES
                .iter()
                .position(|s| canonical(s) == status.as_str());
            let next = STATUSES[at.map_or(0, |i| (i + 1) % STATUSES.len())];
            *status = canonical(next).to_owned();
            Change::Status(next)
        }
    }
}

#[derive(Default)]
pub struct Samples {
    pub propagation: Vec<Duration>,
    pub write: Vec<Duration>,
    /// The peer did not hold the old body when the probe began.
    pub uncached: u64,
    /// The peer still served the old body after `PROBE_LIMIT`.
    pub lost: u64,
    pub failed_writes: u64,
}

/// One change: the PUT through `writer`, and meanwhile GETs of the game's
/// odds on `peer` until its body shows the change.
pub async fn change_and_probe(
    mut fleet_state: redis::cluster_async::ClusterConnection,
    http: Http,
    writer: SocketAddr,
    peer: SocketAddr,
    id: String,
    change: Change,
    samples: Arc<Mutex<Samples>>,
) {
    let url = format!("http://{peer}/api/v1/games/{id}/odds");
    let first = http.get(&url).await;
    let cached = first
        .as_ref()
        .is_some_and(|r| r.x_cache == "HIT" && !change.shown_by(&r.body));
    let t0 = Instant::now();
    let put = {
        let http = http.clone();
        let (url, body) = (format!("http://{writer}/api/v1/games/{id}"), change.body());
        tokio::spawn(async move {
            let r = http.send(Method::PUT, &url, &body).await;
            let ok = r.as_ref().is_some_and(|r| r.status == 200);
            (ok, t0.elapsed())
        })
    };
    let mut seen = None;
    let mut last = None;
    if cached {
        while t0.elapsed() < PROBE_LIMIT {
            if let Some(r) = http.get(&url).await {
                if change.shown_by(&r.body) {
                    seen = Some(t0.elapsed());
                    break;
                }
                last = Some(r);
            }
        }
    }
    if cached && seen.is_none() {
        static SHOWN: AtomicU64 = AtomicU64::new(0);
        if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
            let last = last.map(|r| (r.x_cache, String::from_utf8_lossy(&r.body).into_owned()));
            let state: Option<String> = redis::cmd("GET")
                .arg(format!("{PREFIX}game:{id}"))
                .query_async(&mut fleet_state)
                .await
                .unwrap_or_default();
            eprintln!(
                "fleet: lost {id} {} via {writer}, peer {peer} still {last:?}; fleet state {state:?}",
                change.body()
            );
        }
    }
    let (ok, wrote) = put.await.unwrap_or((false, Duration::ZERO));
    let mut s = samples.lock().unwrap();
    if !ok {
        s.failed_writes += 1;
        return;
    }
    s.write.push(wrote);
    match (cached, seen) {
        (false, _) => s.uncached += 1,
        (true, Some(d)) => s.propagation.push(d),
        (true, None) => s.lost += 1,
    }
}

/// The change phase: Poisson arrivals at `status_rate + odds_rate` for
/// `length`, each a status change or an odds move in proportion to the
/// rates, written through a random sidecar and probed on another one.
/// Returns the status changes and odds moves sent.
#[allow(clippy::too_many_arguments)]
pub async fn changes(
    http: &Http,
    proxies: &[SocketAddr],
    games: &Arc<Games>,
    samples: &Arc<Mutex<Samples>>,
    fleet_state: &redis::cluster_async::ClusterConnection,
    status_rate: f64,
    odds_rate: f64,
    length: Duration,
) -> (u64, u64) {
    let started = Instant::now();
    let total_rate = status_rate + odds_rate;
    let mut rng = StdRng::from_os_rng();
    let mut tasks = Vec::new();
    let mut next_at = Instant::now();
    let (mut status_changes, mut odds_moves) = (0u64, 0u64);
    while started.elapsed() < length {
        let gap: f64 = -(1.0 - rng.random::<f64>()).ln() / total_rate;
        next_at += Duration::from_secs_f64(gap);
        tokio::time::sleep_until(tokio::time::Instant::from_std(next_at)).await;
        let odds = rng.random::<f64>() < odds_rate / total_rate;
        if odds {
            odds_moves += 1;
        } else {
            status_changes += 1;
        }
        let (id, change) = games.pick(&mut rng, odds);
        let w = rng.random_range(0..proxies.len());
        let mut p = rng.random_range(0..proxies.len() - 1);
        if p >= w {
            p += 1;
        }
        let (fleet_state, http, writer, peer, games, samples) = (
            fleet_state.clone(),
            http.clone(),
            proxies[w],
            proxies[p],
            Arc::clone(games),
            Arc::clone(samples),
        );
        tasks.push(tokio::spawn(async move {
            change_and_probe(fleet_state, http, writer, peer, id.clone(), change, samples).await;
            games.done(&id);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (status_changes, odds_moves)
}

/// Writes back to back from `writers` tasks for `length`, half of them
/// moving odds and half changing statuses; returns the writes answered 200.
pub async fn burst(
    http: &Http,
    proxies: &[SocketAddr],
    games: &Arc<Games>,
    writers: usize,
    length: Duration,
) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..writers)
        .map(|k| {
            let (http, games, stop, n) = (
                http.clone(),
                Arc::clone(games),
                Arc::clone(&stop),
                Arc::clone(&written),
            );
            let proxies = proxies.to_vec();
            tokio::spawn(async move {
                let mut rng = StdRng::from_os_rng();
                while !stop.load(Ordering::Relaxed) {
                    let (id, change) = games.pick(&mut rng, k % 2 == 0);
                    let w = proxies[rng.random_range(0..proxies.len())];
                    let url = format!("http://{w}/api/v1/games/{id}");
                    if http
                        .send(Method::PUT, &url, &change.body())
                        .await
                        .is_some_and(|r| r.status == 200)
                    {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    games.done(&id);
                }
            })
        })
        .collect();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    written.load(Ordering::Relaxed)
}
