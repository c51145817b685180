//! The one invalidation door.
//!
//! The watcher (through [`detect::Detector`]), unsafe methods, the Redis
//! subscriber and the admin API all invalidate through [`Invalidator`]. It
//! drops the L1 entries at once, deletes the Redis registry members and the
//! `game_key_patterns` keys, publishes one event for the fleet, and records
//! the event for the stats and events endpoints.

pub mod detect;
pub mod events;
pub mod redis;
pub mod wire;

use std::sync::Arc;
use std::time::SystemTime;

use crate::cache::Store;
use crate::config::{route::Template, Config};
use crate::metrics::{Metrics, ReasonLabel};
use crate::watch::{GameId, Reason, Status};
pub use events::{Event, Journal, Origin, StatsSnapshot};

/// What to invalidate.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Both tag families of the game for every status, its
    /// `game_key_patterns`, and its league's sidebar when known.
    Game {
        game_id: GameId,
        sport_id: Option<String>,
        league_id: Option<String>,
        with_sidebar: bool,
    },
    /// All sidebars, one sport's, or one league's.
    Sidebar {
        sport_id: Option<String>,
        league_id: Option<String>,
    },
    Tags(Vec<String>),
}

impl Target {
    pub fn tags(&self) -> Vec<String> {
        match self {
            Target::Game {
                game_id,
                sport_id,
                league_id,
                with_sidebar,
            } => {
                let id = game_id.as_str();
                let mut tags = vec![format!("game:{id}")];
                tags.extend(
                    Status::ALL
                        .iter()
                        .map(|s| format!("odds:{}:{id}", s.as_str())),
                );
                if let (true, Some(sport), Some(league)) = (with_sidebar, sport_id, league_id) {
                    tags.push(format!("sidebar:{sport}:{league}"));
                }
                tags
            }
            Target::Sidebar {
                sport_id,
                league_id,
            } => match (sport_id, league_id) {
                (None, _) => vec!["sidebar".to_string()],
                (Some(sport), None) => vec![format!("sidebar:{sport}")],
                (Some(sport), Some(league)) => vec![format!("sidebar:{sport}:{league}")],
            },
            Target::Tags(tags) => tags.clone(),
        }
    }

    fn game_id(&self) -> Option<&GameId> {
        match self {
            Target::Game { game_id, .. } => Some(game_id),
            _ => None,
        }
    }
}

/// One request at the door.
#[derive(Clone, Debug)]
pub struct Request {
    pub target: Target,
    pub reason: Reason,
    pub origin: Origin,
    pub detail: String,
    /// The game's state after a detected change, shared with peers.
    pub state: Option<detect::Known>,
}

pub struct Invalidator {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    journal: Journal,
    redis: Option<Arc<redis::RedisTier>>,
    /// `[invalidation] game_key_patterns`, expanded per status for Redis.
    patterns: Vec<Template>,
    /// Game states peers announce land here, so change detection agrees.
    known: detect::KnownGames,
}

impl Invalidator {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        redis: Option<Arc<redis::RedisTier>>,
        known: detect::KnownGames,
    ) -> Invalidator {
        let patterns = config
            .invalidation
            .game_key_patterns
            .iter()
            .filter_map(|p| crate::config::route::check_key_pattern(p).ok())
            .collect();
        if let Some(redis) = &redis {
            redis.attach_store(Arc::clone(&store));
        }
        Invalidator {
            store,
            metrics,
            journal: Journal::new(
                &config.replica_id,
                config.admin.events_capacity,
                config.invalidation.alert_per_minute,
            ),
            redis,
            patterns,
            known,
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn redis(&self) -> Option<&Arc<redis::RedisTier>> {
        self.redis.as_ref()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Invalidates `req.target` in L1 at once, then in Redis and the fleet.
    pub async fn invalidate(&self, req: Request) -> Arc<Event> {
        let tags = req.target.tags();
        // Until Redis has deleted them too, copies read back from the L2
        // count as older than this invalidation.
        let _hold = self.redis.as_ref().map(|_| self.store.begin_hold());
        let local = self.store.invalidate_tags(&tags) as u64;
        let game_id = req.target.game_id().cloned();
        let mut event = self.journal.new_event(
            req.reason,
            game_id.as_ref().map(|g| g.as_str().to_string()),
            tags.clone(),
            req.origin,
            req.detail,
        );
        let mut deleted = local;
        if let Some(redis) = &self.redis {
            let patterns: Vec<String> = game_id
                .as_ref()
                .map(|g| self.expand_patterns(g.as_str()))
                .unwrap_or_default();
            // Published even when the deletion failed: a peer whose
            // subscription never broke has no resync to fall back on, and
            // its L1 copies are the ones clients see.
            let keys = match redis.delete(&tags, &patterns).await {
                Ok(outcome) => {
                    deleted += outcome.deleted;
                    event.keys_deleted = deleted;
                    outcome.cache_keys
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Redis could not delete the tags' keys; L1 is clean, publishing the event anyway");
                    Vec::new()
                }
            };
            let msg = wire::Message {
                v: wire::VERSION,
                event: event.clone(),
                keys,
                state: req.state.clone(),
            };
            if let Err(e) = redis.publish(&msg).await {
                tracing::warn!(error = %e, "cannot publish invalidation; peers rely on TTLs and resync");
            }
        }
        event.keys_deleted = deleted;
        self.record(event)
    }

    /// An event a peer published: drop what it names, adopt its game state.
    pub fn apply_peer(&self, msg: wire::Message) -> Option<Arc<Event>> {
        if msg.event.replica == self.journal.replica() {
            return None; // our own, already applied
        }
        let mut removed = self.store.invalidate_tags(&msg.event.tags) as u64;
        removed += msg
            .keys
            .iter()
            .filter(|k| self.store.invalidate_key(k))
            .count() as u64;
        let now_ms = events::unix_ms(SystemTime::now());
        self.metrics
            .propagation
            .observe(now_ms.saturating_sub(msg.event.at_ms) as f64 / 1000.0);
        if let (Some(id), Some(state)) = (msg.event.game_id.as_deref(), msg.state) {
            if let Ok(id) = GameId::try_from(id) {
                // Newest by compare-and-set order, not by arrival.
                detect::adopt(&self.known, id, state);
            }
        }
        let mut event = msg.event;
        event.origin = Origin::Peer;
        event.keys_deleted = removed;
        Some(self.record(event))
    }

    fn record(&self, event: Event) -> Arc<Event> {
        self.metrics
            .invalidations
            .get_or_create(&ReasonLabel {
                reason: event.reason.as_str().to_string(),
            })
            .inc();
        self.metrics.keys_deleted.inc_by(event.keys_deleted);
        let (event, rate) = self.journal.record(event);
        self.metrics.invalidations_per_minute.set(rate as i64);
        tracing::info!(
            reason = %event.reason,
            game_id = event.game_id.as_deref().unwrap_or(""),
            origin = ?event.origin,
            keys_deleted = event.keys_deleted,
            detail = %event.detail,
            "invalidated"
        );
        event
    }

    fn expand_patterns(&self, game_id: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for p in &self.patterns {
            for s in Status::ALL {
                let status = s.as_str();
                if let Some(k) = p.expand(|n| match n {
                    "game_id" => Some(game_id),
                    "status" => Some(status),
                    _ => None,
                }) {
                    keys.push(k);
                }
            }
        }
        keys
    }

    /// Files a stored entry under its tags in Redis, and copies it to the
    /// shared L2 with `store_responses` (queued, off the request path).
    pub fn register(&self, entry: &Arc<crate::cache::Entry>) {
        if let Some(redis) = &self.redis {
            redis.register(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn game_targets_cover_every_status_and_the_sidebar() {
        let t = Target::Game {
            game_id: GameId::try_from("g-1").unwrap(),
            sport_id: Some("soccer".into()),
            league_id: Some("epl".into()),
            with_sidebar: true,
        };
        let tags = t.tags();
        assert!(tags.contains(&"game:g-1".to_string()));
        for s in ["scheduled", "live", "finished", "cancelled", "postponed"] {
            assert!(tags.contains(&format!("odds:{s}:g-1")), "{s}");
        }
        assert!(tags.contains(&"sidebar:soccer:epl".to_string()));
    }

    #[test]
    fn sidebar_targets() {
        let side = |s: Option<&str>, l: Option<&str>| {
            Target::Sidebar {
                sport_id: s.map(Into::into),
                league_id: l.map(Into::into),
            }
            .tags()
        };
        assert_eq!(side(None, None), ["sidebar"]);
        assert_eq!(side(Some("soccer"), None), ["sidebar:soccer"]);
        assert_eq!(side(Some("soccer"), Some("epl")), ["sidebar:soccer:epl"]);
    }
}
