//! The built-in reference odds API (SPEC §2): a simulator that
//! `oddscache demo` puts behind the sidecar and that integration tests use as
//! their upstream.
//!
//! - this file: the public face: [`SimConfig`], the shared [`Simulator`]
//!   handle with its test hooks, and [`serve`] with its ticker.
//! - `api`: routing, JSON bodies, validators and writes ([`Simulator::handle`]).
//! - `sim`: the games and how their statuses progress tick by tick.
//! - `wire`: the game object's JSON view, write bodies and test hooks.
//! - `odds`: one game's markets and how prices move.
//! - `catalogue`: the static sports, leagues and rosters.
//! - `browse`: the demo's built-in browsing load through the sidecar.
//! - `page`: the demo's example page, which subscribes to change hints.
//! - `serve_tests`: end-to-end tests through [`serve`] on loopback.
//!
//! Statuses and prices are a pure function of the seed and the number of
//! ticks, so a seed reproduces a run; timestamps come from the wall clock.
//! Statuses use the raw upstream vocabulary (`pre_game`, `in_progress`,
//! `halftime`, `final`, ...), because mapping it is the sidecar's job.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Request;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::server::{self, HttpLimits};
use crate::shutdown::Signal;

mod api;
pub mod browse;
mod catalogue;
mod odds;
pub mod page;
#[cfg(test)]
mod serve_tests;
mod sim;
mod wire;

use sim::{UnixSecs, World};

/// In-flight requests get this long to finish once shutdown begins; the
/// simulator answers from memory, so anything slower is a stuck client.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How many games to invent (`g-1001`, `g-1002`, ...).
    pub games: usize,
    /// How often [`serve`]'s ticker advances the world. Zero disables the
    /// ticker, for tests that call [`Simulator::tick`] themselves.
    pub tick: Duration,
    /// Same seed, same statuses and prices after the same number of ticks.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            games: 36,
            tick: Duration::from_secs(2),
            seed: 42,
        }
    }
}

pub struct Simulator {
    /// One lock for the whole world: a tick touches every game and a request
    /// holds it for microseconds, so finer locking would buy nothing.
    world: Mutex<World>,
    /// Lets tests prove that an answer came from the cache, not from here.
    served: AtomicU64,
    /// Ticks so far; a watch so tests can wait for the ticker without sleeping.
    ticks: watch::Sender<u64>,
    /// The ticker's period; zero means no ticker.
    tick_every: Duration,
    /// `Last-Modified` of the static catalogue.
    started: SystemTime,
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Arc<Simulator> {
        let now = unix_now();
        Arc::new(Simulator {
            world: Mutex::new(World::new(cfg.games, cfg.seed, now)),
            served: AtomicU64::new(0),
            ticks: watch::Sender::new(0),
            tick_every: cfg.tick,
            started: UNIX_EPOCH + Duration::from_secs(now),
        })
    }

    /// Advance one tick: statuses progress and odds drift (deterministic from the seed).
    pub fn tick(&self) {
        self.world().tick(unix_now());
        self.ticks.send_modify(|n| *n += 1);
    }

    /// Every request answered, whatever its outcome.
    pub fn requests_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Ids of all games, for tests and the demo banner.
    pub fn game_ids(&self) -> Vec<String> {
        self.world().games().iter().map(|g| g.id.clone()).collect()
    }

    /// Test hook: set a game's status (raw upstream string, e.g. "in_progress")
    /// and bump `updated_at`. False for an unknown game.
    pub fn set_status(&self, game_id: &str, status: &str) -> bool {
        let now = unix_now();
        self.world()
            .get_mut(game_id)
            .map(|game| game.set_status(status, now))
            .is_some()
    }

    /// Test hook: multiply one odds line (pointer below `odds`, e.g.
    /// "/moneyline/home") by `factor`. False for an unknown game or a line the
    /// game does not have.
    pub fn scale_line(&self, game_id: &str, line: &str, factor: f64) -> bool {
        let now = unix_now();
        self.world()
            .get_mut(game_id)
            .is_some_and(|game| game.scale_line(line, factor, now))
    }

    fn world(&self) -> MutexGuard<'_, World> {
        // A test thread that panics while holding the lock must not take the
        // upstream down with it; no update can leave a game unreadable.
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serve the simulator on `listener` until shutdown; also spawns the ticker
/// task (stops at shutdown).
pub async fn serve(sim: Arc<Simulator>, listener: TcpListener, shutdown: Signal) {
    let ticker = (!sim.tick_every.is_zero()).then(|| {
        tokio::spawn(server::until_shutdown(
            run_ticker(sim.clone()),
            shutdown.clone(),
        ))
    });
    let make_service = move |_peer: SocketAddr| {
        let sim = sim.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| sim.clone().handle(req))
    };
    server::serve(
        "demo",
        listener,
        make_service,
        HttpLimits::default(),
        None,
        shutdown,
        DRAIN_GRACE,
    )
    .await;
    if let Some(ticker) = ticker {
        let _ = ticker.await;
    }
}

async fn run_ticker(sim: Arc<Simulator>) {
    // The first tick waits a full period: the opening state is worth seeing.
    let mut every = tokio::time::interval_at(Instant::now() + sim.tick_every, sim.tick_every);
    // After a stall, carry on at the normal pace instead of fast-forwarding.
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        sim.tick();
    }
}

fn unix_now() -> UnixSecs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown;

    fn manual(seed: u64) -> Arc<Simulator> {
        Simulator::new(SimConfig {
            seed,
            tick: Duration::ZERO,
            ..SimConfig::default()
        })
    }

    fn statuses(sim: &Simulator) -> Vec<String> {
        sim.world()
            .games()
            .iter()
            .map(|g| g.status.clone())
            .collect()
    }

    #[test]
    fn is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Simulator>();
    }

    #[test]
    fn lists_the_default_games() {
        let ids = manual(1).game_ids();
        assert_eq!(ids.len(), 36);
        assert_eq!((ids[0].as_str(), ids[35].as_str()), ("g-1001", "g-1036"));
    }

    #[test]
    fn seeds_reproduce_through_the_public_api() {
        let (a, b) = (manual(5), manual(5));
        for _ in 0..40 {
            a.tick();
            b.tick();
        }
        assert_eq!(statuses(&a), statuses(&b));
        assert_eq!(*a.ticks.borrow(), 40);
    }

    #[test]
    fn hooks_report_unknown_games_and_lines() {
        let sim = manual(1);
        assert!(sim.set_status("g-1001", "halftime"));
        assert_eq!(sim.world().get("g-1001").unwrap().status, "halftime");
        assert!(!sim.set_status("g-9999", "final"));
        // Catalogue order makes g-1001 soccer (with a draw), g-1003 basketball.
        assert!(sim.scale_line("g-1001", "/moneyline/draw", 2.0));
        assert!(!sim.scale_line("g-1003", "/moneyline/draw", 2.0));
        assert!(!sim.scale_line("g-9999", "/moneyline/home", 2.0));
        assert!(!sim.scale_line("g-1001", "/nope/home", 2.0));
    }

    #[tokio::test]
    async fn ticker_advances_the_world_and_stops_at_shutdown() {
        let sim = Simulator::new(SimConfig {
            tick: Duration::from_millis(5),
            ..SimConfig::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (trigger, signal) = shutdown::channel();
        let task = tokio::spawn(serve(sim.clone(), listener, signal));
        let mut ticks = sim.ticks.subscribe();
        tokio::time::timeout(Duration::from_secs(10), ticks.wait_for(|n| *n >= 3))
            .await
            .expect("the ticker never ticked")
            .unwrap();
        trigger.fire();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve outlived shutdown")
            .unwrap();
    }
}
