//! Change detection over the games a filled response carries.
//!
//! The pure watcher finds games and diffs them; this module keeps what is
//! known about each game (bounded, in moka), decides a transition once per
//! fleet through Redis' compare-and-set, and sends changes to the door.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::TtlByStatus;
use crate::metrics::Metrics;
use crate::watch::{self, GameId, GameSnapshot, GameState, Reason, Status, WatchRules};

use super::{Invalidator, Origin, Request, Target};

/// What this replica knows of each game, shared by the detector and the
/// door (which adopts the states peers announce).
pub type KnownGames = moka::sync::Cache<GameId, GameState>;

/// Games remembered at once; the least recently seen are forgotten first.
const KNOWN_GAMES: u64 = 200_000;
/// Upstream status values logged as unknown, at most.
const LOGGED_UNKNOWN: usize = 1000;
/// Compare-and-set retries before a replica gives way to its peers.
const CAS_ATTEMPTS: usize = 3;

pub fn known_games() -> KnownGames {
    moka::sync::Cache::builder()
        .max_capacity(KNOWN_GAMES)
        .time_to_idle(Duration::from_secs(24 * 3600))
        .build()
}

pub struct Detector {
    rules: WatchRules,
    ttl: TtlByStatus,
    known: KnownGames,
    logged_unknown: Mutex<HashSet<String>>,
    invalidator: Arc<Invalidator>,
    metrics: Arc<Metrics>,
    /// Decoded bodies larger than this are not inspected.
    max_decoded: usize,
}

impl Detector {
    pub fn new(
        rules: WatchRules,
        ttl: TtlByStatus,
        known: KnownGames,
        invalidator: Arc<Invalidator>,
        metrics: Arc<Metrics>,
        max_decoded: usize,
    ) -> Detector {
        Detector {
            rules,
            ttl,
            known,
            logged_unknown: Mutex::default(),
            invalidator,
            metrics,
            max_decoded,
        }
    }

    pub fn invalidator(&self) -> &Arc<Invalidator> {
        &self.invalidator
    }

    /// The games in a body; counts and logs what could not be read.
    pub fn extract(&self, content_encoding: Option<&str>, body: &[u8]) -> Vec<GameSnapshot> {
        let decoded = match watch::decode(content_encoding, body, self.max_decoded) {
            Ok(d) => d,
            Err(why) => {
                self.metrics.watch_skipped(why.as_str());
                return Vec::new();
            }
        };
        let extraction = self.rules.extract(&decoded);
        if let Some(why) = extraction.skipped {
            self.metrics.watch_skipped(why.as_str());
        }
        for g in &extraction.games {
            if let Some(raw) = &g.raw_status {
                let mut logged = self
                    .logged_unknown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if logged.len() < LOGGED_UNKNOWN && logged.insert(raw.clone()) {
                    tracing::warn!(status = %raw, game_id = %g.game_id, "unmapped upstream status; treated as unknown (add it to [watch.status_map])");
                }
            }
        }
        extraction.games
    }

    /// `game:{id}` and `odds:{status}:{id}` for every game.
    pub fn tags(games: &[GameSnapshot]) -> Vec<Arc<str>> {
        games
            .iter()
            .flat_map(|g| {
                [
                    Arc::from(format!("game:{}", g.game_id)),
                    Arc::from(format!("odds:{}:{}", g.status.as_str(), g.game_id)),
                ]
            })
            .collect()
    }

    /// The shortest `ttl_by_status` of the games, if any.
    pub fn status_ttl(&self, games: &[GameSnapshot]) -> Option<Duration> {
        games.iter().map(|g| self.ttl_for(g.status)).min()
    }

    fn ttl_for(&self, s: Status) -> Duration {
        let t = &self.ttl;
        match s {
            Status::Scheduled => t.scheduled,
            Status::Live => t.live,
            Status::Finished => t.finished,
            Status::Cancelled => t.cancelled,
            Status::Postponed => t.postponed,
            Status::Unknown => t.unknown,
        }
        .get()
    }

    /// Compares each game with what is known and invalidates on a change.
    /// Returns when every invalidation is done, so the caller stores the
    /// revealing response only after its own invalidation.
    pub async fn observe(&self, games: &[GameSnapshot]) {
        self.load_unknown(games).await;
        for g in games {
            self.observe_one(g).await;
        }
    }

    /// Fetches the fleet's state of games this replica has not seen, in one
    /// round trip, so a list of fifty new games costs one, not fifty.
    async fn load_unknown(&self, games: &[GameSnapshot]) {
        let Some(redis) = self.invalidator.redis() else {
            return;
        };
        let missing: Vec<&GameId> = games
            .iter()
            .map(|g| &g.game_id)
            .filter(|id| !self.known.contains_key(*id))
            .collect();
        if let Ok(states) = redis.load_states(&missing).await {
            for (id, state) in missing.into_iter().zip(states) {
                if let Some(state) = state {
                    self.known.insert(id.clone(), state);
                }
            }
        }
    }

    async fn observe_one(&self, g: &GameSnapshot) {
        let threshold = self.rules.threshold();
        let mut known = self.known.get(&g.game_id);
        for _ in 0..CAS_ATTEMPTS {
            let change = watch::diff(known.as_ref(), g, threshold);
            let next = watch::next_state(known.as_ref(), g, change.is_some());
            if change.is_none() && known.as_ref() == Some(&next) {
                return;
            }
            // A change, a first sighting, or the first odds since an
            // invalidation setting the baseline: all go through the
            // compare-and-set, so every replica judges the next body against
            // the same baseline, not one it set on its own.
            if let Some(redis) = self.invalidator.redis() {
                match redis
                    .compare_and_set(&g.game_id, known.as_ref(), &next)
                    .await
                {
                    Ok(super::redis::Cas::Set) => {}
                    Ok(super::redis::Cas::Current(current)) => {
                        // A peer recorded a transition first: judge again
                        // against what the fleet now knows.
                        self.known.insert(g.game_id.clone(), current.clone());
                        known = Some(current);
                        continue;
                    }
                    // Redis is down: decide locally rather than stay stale.
                    Err(_) => {}
                }
            }
            self.known.insert(g.game_id.clone(), next.clone());
            let Some(change) = change else {
                return;
            };
            let status_changed = change.from != change.to;
            let req = Request {
                target: Target::Game {
                    game_id: g.game_id.clone(),
                    sport_id: g.sport_id.clone(),
                    league_id: g.league_id.clone(),
                    with_sidebar: status_changed,
                },
                reason: change.reason,
                origin: Origin::Local,
                detail: change.detail,
                state: Some(next),
            };
            debug_assert!(req.reason != Reason::Manual);
            self.invalidator.invalidate(req).await;
            return;
        }
    }
}
