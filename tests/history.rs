//! The fault-history test (SPEC §6): two real sidecars, one real Redis,
//! the demo simulator as upstream, thousands of status changes written
//! through either sidecar, readers that record every answer, and faults
//! injected on the way: Redis paused, a replica's flows blackholed, Redis
//! killed and restarted without its data, a replica cut off altogether.
//!
//! The checker replays the history. A change counts as seen when the write
//! that made it is answered. A read that started more than [`HEALTHY`]
//! after a change was seen must show that change or a later one; while a
//! fault is on (and for the time recovery takes after it) the bound is
//! [`CUT_OFF`]: the log's heartbeat and `outage_max_staleness`.
//!
//! Run with `cargo test --test history -- --nocapture` for its figures.

mod common;

use common::client::Client;
use common::sim::{odds_path, SimUpstream};
use common::{redis_server, relay, sidecar};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oddscache::config::Dur;
use redis_server::RedisServer;
use relay::Relay;
use sidecar::{config, Sidecar};

/// Healthy: a change seen anywhere is everywhere within this.
const HEALTHY: Duration = Duration::from_millis(50);
/// `outage_max_staleness` in this test.
const OUTAGE_BOUND: Duration = Duration::from_secs(1);
/// While a fault is on: not caught up for 2 s makes a replica cut off,
/// then entries older than the outage bound revalidate; a reconnection
/// takes the heartbeat (1 s) plus `liveness_timeout` (1 s). With slack for
/// a loaded machine.
const CUT_OFF: Duration = Duration::from_millis(4500);
const STATUSES: [&str; 3] = ["pre_game", "in_progress", "final"];
/// Busy games, changed many times a second each: the volume.
const GAMES: usize = 8;
/// Writers, each moving its own half of the busy games.
const WRITERS: usize = 2;
/// Quiet games, changed one at a time every [`QUIET_EVERY`], so each stays
/// unchanged for longer than [`CUT_OFF`]: an event lost for one of them
/// shows as a stale read, not masked by the next change.
const QUIET: usize = 16;
const QUIET_EVERY: Duration = Duration::from_millis(400);

#[derive(Clone, Debug)]
struct Change {
    game: usize,
    status: &'static str,
    began: Instant,
    seen: Instant,
}

#[derive(Clone, Debug)]
struct Read {
    replica: usize,
    game: usize,
    status: String,
    /// `X-Cache` of the answer, for the report.
    x_cache: String,
    began: Instant,
    ended: Instant,
}

#[derive(Default)]
struct History {
    changes: Vec<Change>,
    reads: Vec<Read>,
    /// When each fault began and ended.
    faults: Vec<(&'static str, Instant, Instant)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_shows_a_change_older_than_the_bound_through_faults() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let relay = Relay::start(port).await;
    let up = SimUpstream::start().await;
    let tuned = |url: &str, name: &str| {
        let mut cfg = config(&up.url(), Some(url), name);
        let r = cfg.redis.as_mut().expect("redis");
        r.liveness_timeout = Dur(Duration::from_secs(1));
        r.outage_max_staleness = Dur(OUTAGE_BOUND);
        cfg
    };
    let fleet = Arc::new([
        Sidecar::start(tuned(&redis.url(), "a")).await,
        Sidecar::start(tuned(&relay.url(), "b")).await,
    ]);
    redis.wait_fleet_connected(2).await;
    let games: Vec<String> = up.sim.game_ids().into_iter().take(GAMES + QUIET).collect();
    assert_eq!(games.len(), GAMES + QUIET, "the simulator has enough games");
    let http = Client::new();
    for id in &games {
        assert!(up.sim.set_status(id, STATUSES[0]));
        for s in fleet.iter() {
            assert_eq!(
                http.get(&s.url(&odds_path(id))).await.game_status(),
                STATUSES[0]
            );
        }
    }
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Busy writers, each moving its own games many times a second, and a
    // quiet one; each goes through one replica or the other in turn.
    let mine = GAMES / WRITERS;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| (w * mine..(w + 1) * mine, w, Duration::from_millis(1)))
        .chain([(GAMES..GAMES + QUIET, 0, QUIET_EVERY)])
        .map(|(slots, offset, pause)| {
            let (fleet, history, stop, games) = (
                Arc::clone(&fleet),
                Arc::clone(&history),
                Arc::clone(&stop),
                games.clone(),
            );
            tokio::spawn(write(fleet, history, stop, games, slots, offset, pause))
        })
        .collect();
    // Readers, each on its own replica and game.
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (fleet, history, stop, games) = (
                Arc::clone(&fleet),
                Arc::clone(&history),
                Arc::clone(&stop),
                games.clone(),
            );
            tokio::spawn(async move {
                let http = Client::new();
                let mut n = i;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (replica, game) = (n % 2, (n / 2) % (GAMES + QUIET));
                    let began = Instant::now();
                    let r = http
                        .get(&fleet[replica].url(&odds_path(&games[game])))
                        .await;
                    let ended = Instant::now();
                    if r.status == 200 {
                        history.lock().unwrap().reads.push(Read {
                            replica,
                            game,
                            status: r.game_status(),
                            x_cache: r.x_cache().to_string(),
                            began,
                            ended,
                        });
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();

    let healthy = |d: u64| tokio::time::sleep(Duration::from_millis(d));
    let fault = |name: &'static str, began: Instant| {
        history
            .lock()
            .unwrap()
            .faults
            .push((name, began, Instant::now()));
    };
    healthy(1500).await;

    // Redis stalls for a second.
    let began = Instant::now();
    redis.pause(Duration::from_millis(1000)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    fault("pause", began);
    healthy(2000).await;

    // Redis dies and comes back empty.
    let began = Instant::now();
    drop(redis);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis = RedisServer::start_on(port);
    tokio::time::sleep(Duration::from_millis(500)).await;
    fault("restart", began);
    healthy(3000).await;

    // B's flows go silent without an RST; new ones work.
    let began = Instant::now();
    relay.blackhole_open_flows();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    fault("blackhole", began);
    healthy(3000).await;

    // B is cut off altogether for three seconds.
    let began = Instant::now();
    relay.blackhole_everything();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    relay.heal();
    fault("cut off", began);
    // Longer than the bound: whatever a fault lost shows by now.
    healthy(7000).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    check(&history.lock().unwrap());
    drop(redis);
    for s in Arc::try_unwrap(fleet).ok().expect("tasks are done") {
        s.stop().await;
    }
}

/// Moves the games in `slots` to their next status one after another, each
/// write through one replica or the other in turn, pausing `pause` between
/// writes, until `stop`; records each change once its write is answered.
async fn write(
    fleet: Arc<[Sidecar; 2]>,
    history: Arc<Mutex<History>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    games: Vec<String>,
    slots: std::ops::Range<usize>,
    offset: usize,
    pause: Duration,
) {
    let http = Client::new();
    let mut at = vec![0usize; games.len()];
    let len = slots.len();
    let mut n = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let game = slots.start + n % len;
        at[game] = (at[game] + 1) % STATUSES.len();
        let status = STATUSES[at[game]];
        let via = &fleet[(n / len + offset) % 2];
        let began = Instant::now();
        let body = format!(r#"{{"status":"{status}"}}"#);
        let w = http
            .put(&via.url(&format!("/api/v1/games/{}", games[game])), &body)
            .await;
        assert_eq!(w.status, 200, "write {n} of game {game}");
        history.lock().unwrap().changes.push(Change {
            game,
            status,
            began,
            seen: Instant::now(),
        });
        n += 1;
        tokio::time::sleep(pause).await;
    }
}

/// Fails on any read that shows a change older than the bound allows.
fn check(h: &History) {
    assert!(h.changes.len() > 2000, "only {} changes", h.changes.len());
    assert!(h.reads.len() > 1000, "only {} reads", h.reads.len());
    let in_fault = |r: &Read| {
        h.faults
            .iter()
            .any(|(_, began, ended)| r.ended >= *began && r.began <= *ended + CUT_OFF)
    };
    let mut worst_healthy = Duration::ZERO;
    let mut violations = Vec::new();
    for r in &h.reads {
        let bound = if in_fault(r) { CUT_OFF } else { HEALTHY };
        let changes: Vec<&Change> = h.changes.iter().filter(|c| c.game == r.game).collect();
        // The newest change seen at least `bound` before the read began...
        let settled = changes.iter().rposition(|c| c.seen + bound <= r.began);
        // ...or any later one that had begun by the time the read ended.
        let from = settled.unwrap_or(0);
        let allowed: Vec<&str> = match settled {
            Some(k) => changes[k..]
                .iter()
                .filter(|c| c.began <= r.ended)
                .map(|c| c.status)
                .collect(),
            None => std::iter::once(STATUSES[0])
                .chain(
                    changes
                        .iter()
                        .filter(|c| c.began <= r.ended)
                        .map(|c| c.status),
                )
                .collect(),
        };
        if allowed.contains(&r.status.as_str()) {
            continue;
        }
        // How stale: since the first change after the one it showed.
        let shown = changes[..from.min(changes.len())]
            .iter()
            .rposition(|c| c.status == r.status);
        let missed = shown.map_or(0, |i| i + 1);
        let since = changes.get(missed).map_or(Duration::ZERO, |c| {
            r.began.saturating_duration_since(c.seen)
        });
        if bound == HEALTHY {
            worst_healthy = worst_healthy.max(since);
        }
        violations.push(format!(
            "replica {} game {} showed {} ({}) at +{:?}, {:?} after a newer change was seen (bound {:?})",
            r.replica,
            r.game,
            r.status,
            r.x_cache,
            r.began.duration_since(h.reads[0].began),
            since,
            bound
        ));
    }
    println!(
        "HISTORY | {} changes, {} reads, faults: {} | violations {}",
        h.changes.len(),
        h.reads.len(),
        h.faults
            .iter()
            .map(|(n, b, e)| format!("{n} {:?}", e.duration_since(*b)))
            .collect::<Vec<_>>()
            .join(", "),
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{} stale reads; first ones:\n{}",
        violations.len(),
        violations
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = worst_healthy;
}
