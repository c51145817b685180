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
use crate::watch::{self, GameId, GameSnapshot, Reason, Status, WatchRules};

use super::known::{adopt, Known, KnownGames};
use super::{Invalidation, Invalidator, Origin, Target};

/// Upstream status values logged as unknown, at most.
const LOGGED_UNKNOWN: usize = 1000;
/// Compare-and-set retries before a replica gives way to its peers.
const CAS_ATTEMPTS: usize = 3;

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
        match extraction.skipped {
            // Counted once per skipped game, below.
            Some(watch::SkipReason::GameId) | None => {}
            Some(why) => self.metrics.watch_skipped(why.as_str()),
        }
        for why in &extraction.rejected {
            self.metrics
                .watch_skipped(watch::SkipReason::GameId.as_str());
            let mut logged = self
                .logged_unknown
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let key = format!("\u{0}id:{why}");
            if logged.len() < LOGGED_UNKNOWN && logged.insert(key) {
                tracing::warn!(why, "skipped a game whose id cannot become part of a tag or key (SPEC §5: 1 to 128 bytes of letters, digits and . _ - : / +)");
            }
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
    /// The sequence numbers of the L1 invalidations it made are returned,
    /// for the fetch to forgive (see `cache::freshness`).
    pub async fn observe(&self, games: &[GameSnapshot]) -> Vec<u64> {
        self.observe_fetched(games, None).await
    }

    /// [`Self::observe`] for a body whose fetch began at `fetch_began_ms`
    /// (unix ms): a game whose fleet state was written after that is not
    /// judged by this body, which may predate it (SPEC §4).
    pub async fn observe_fetched(
        &self,
        games: &[GameSnapshot],
        fetch_began_ms: Option<u64>,
    ) -> Vec<u64> {
        self.load_unknown(games).await;
        let mut caused = Vec::new();
        for g in games {
            caused.extend(self.observe_one(g, fetch_began_ms).await);
        }
        caused
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
        let states = redis.load_states(&missing).await.ok();
        let suspect = self.invalidator.suspect();
        for (i, id) in missing.into_iter().enumerate() {
            match states.as_ref().and_then(|s| s.get(i).cloned().flatten()) {
                Some(state) => {
                    suspect.invalidate(id);
                    adopt(&self.known, id.clone(), state);
                }
                // Redis has no readable state, or cannot say: judge the body
                // against what this replica knew before its resync, so a
                // change is never taken for a first sighting.
                None => {
                    if let Some(old) = suspect.remove(id) {
                        adopt(&self.known, id.clone(), old);
                    }
                }
            }
        }
    }

    /// Whether anything cached may predate `id`'s first sighting: entries
    /// of the game here, or a registry set of it in Redis (another
    /// replica's, or one that outlived a lost state key).
    async fn may_have_copies(&self, id: &GameId) -> bool {
        let tag = format!("game:{id}");
        if !self.invalidator.store().keys_for_tag(&tag).is_empty() {
            return true;
        }
        match self.invalidator.redis() {
            Some(redis) => redis.registry_exists(&tag).await.unwrap_or(true),
            None => false,
        }
    }

    async fn observe_one(&self, g: &GameSnapshot, fetch_began_ms: Option<u64>) -> Vec<u64> {
        let threshold = self.rules.threshold();
        let mut known = self.known.get(&g.game_id);
        // A local eviction after losing a compare-and-set, to forgive.
        let mut caused: Vec<u64> = Vec::new();
        for _ in 0..CAS_ATTEMPTS {
            let state = known.as_ref().map(|k| &k.state);
            let change = watch::diff(state, g, threshold);
            let next = watch::next_state(state, g, change.is_some());
            if change.is_none() && state == Some(&next) {
                return caused;
            }
            let next = Known::after(known.as_ref(), next);
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
                    Ok(super::redis::Cas::Seeded) => {
                        // Redis held no state. If copies of the game exist
                        // anywhere they may show another state, and no
                        // replica would ever invalidate them: this one does,
                        // for the fleet. Otherwise peers that knew a state
                        // compare it with the seed.
                        if change.is_none() && self.may_have_copies(&g.game_id).await {
                            adopt(&self.known, g.game_id.clone(), next.clone());
                            let req = Invalidation {
                                target: Target::Game {
                                    game_id: g.game_id.clone(),
                                    sport_id: g.sport_id.clone(),
                                    league_id: g.league_id.clone(),
                                    with_sidebar: true,
                                },
                                reason: watch::status_change_reason(g.status),
                                origin: Origin::Local,
                                detail: format!(
                                    "the fleet's state of this game was missing; seeded {} and dropped what may predate it",
                                    g.status.as_str()
                                ),
                                state: Some(next),
                            };
                            caused.push(self.invalidator.invalidate_seq(req).await.1);
                            return caused;
                        }
                        self.invalidator.announce_seed(&g.game_id, &next);
                    }
                    Ok(super::redis::Cas::Current(current)) => {
                        // A peer recorded a transition first. If the fleet
                        // moved away from what this replica knew, its own
                        // entries were built on the old state: they go
                        // here, whether or not an event for that move
                        // reaches this replica (SPEC §6, never zero).
                        if fetch_began_ms.is_some_and(|b| current.seq >= b) {
                            // Written after this body was asked for: the
                            // body may be older. It is not judged (that
                            // could roll the fleet back), and if it differs
                            // from the fleet's state it is not stored: the
                            // eviction below is not forgiven.
                            let differs = watch::diff(Some(&current.state), g, threshold).is_some()
                                || known.as_ref().is_some_and(|k| k.state != current.state);
                            if differs {
                                let was =
                                    known.as_ref().map_or(Status::Unknown, |k| k.state.status);
                                self.invalidator.evict_locally(
                                    &g.game_id,
                                    was,
                                    current,
                                    "a body fetched before the fleet's last transition".into(),
                                    false,
                                );
                            } else {
                                adopt(&self.known, g.game_id.clone(), current);
                            }
                            return caused;
                        }
                        if change.is_some() {
                            if let Some(prior) = known.as_ref().filter(|k| k.state != current.state)
                            {
                                let detail = format!(
                                    "the fleet moved this game from {} to {} first",
                                    prior.state.status.as_str(),
                                    current.state.status.as_str()
                                );
                                let was = prior.state.status;
                                let (_, seq) = self.invalidator.evict_locally(
                                    &g.game_id,
                                    was,
                                    current.clone(),
                                    detail,
                                    false,
                                );
                                caused.push(seq);
                            }
                        }
                        adopt(&self.known, g.game_id.clone(), current.clone());
                        known = Some(current);
                        continue;
                    }
                    // Redis is down: decide locally rather than stay stale.
                    Err(_) => {}
                }
            }
            adopt(&self.known, g.game_id.clone(), next.clone());
            let Some(change) = change else {
                return caused;
            };
            let status_changed = change.from != change.to;
            let req = Invalidation {
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
            caused.push(self.invalidator.invalidate_seq(req).await.1);
            return caused;
        }
        caused
    }
}
