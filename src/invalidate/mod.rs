//! The one invalidation door.
//!
//! The watcher (through [`detect::Detector`]), the proxy's unsafe methods
//! ([`Target::Uri`]), the admin API and the event log's reader all
//! invalidate through [`Invalidator`]. It drops the
//! L1 entries at once, queues the event for the fleet's log (whose writer
//! deletes the Redis registry members and `game_key_patterns` keys first,
//! and retries until the log has it: see `redis::fanout`), and records the
//! event for the stats and events endpoints.

pub mod detect;
pub mod events;
pub mod known;
pub mod redis;
mod target;
pub mod wire;

use std::sync::Arc;
use std::time::SystemTime;

use crate::cache::store::URI_TAG_PREFIX;
use crate::cache::Store;
use crate::config::{route::Template, Config};
use crate::metrics::{Metrics, ReasonLabel};
use crate::watch::{GameId, Reason, Status};
pub use events::{Event, Journal, Origin, StatsSnapshot};
pub use target::Target;

/// One request at the door.
#[derive(Clone, Debug)]
pub struct Invalidation {
    pub target: Target,
    pub reason: Reason,
    pub origin: Origin,
    pub detail: String,
    /// The game's state after a detected change, shared with peers.
    pub state: Option<known::Known>,
}

pub struct Invalidator {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    journal: Journal,
    redis: Option<Arc<redis::RedisTier>>,
    /// `[invalidation] game_key_patterns`, expanded per status for Redis.
    patterns: Vec<Template>,
    /// Game states peers announce land here, so change detection agrees.
    known: known::KnownGames,
    /// What this replica knew of games before its last resync: a body is
    /// judged against it when Redis has no state of the game (see
    /// `Detector::load_unknown`).
    suspect: known::KnownGames,
    /// This process's nonce: events it wrote come back in the log and are
    /// not applied twice; another process with the same replica id still
    /// applies them.
    instance: String,
}

impl Invalidator {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        redis: Option<Arc<redis::RedisTier>>,
        known: known::KnownGames,
        instance: String,
    ) -> Invalidator {
        let patterns = config
            .invalidation
            .game_key_patterns
            .iter()
            .filter_map(|p| crate::config::route::check_key_pattern(p).ok())
            .collect();
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
            suspect: known::known_games(),
            instance,
        }
    }

    pub fn suspect(&self) -> &known::KnownGames {
        &self.suspect
    }

    pub fn instance(&self) -> &str {
        &self.instance
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
    pub async fn invalidate(&self, req: Invalidation) -> Arc<Event> {
        self.invalidate_seq(req).await.0
    }

    /// [`Self::invalidate`], with the L1 invalidation's sequence number.
    pub async fn invalidate_seq(&self, req: Invalidation) -> (Arc<Event>, u64) {
        let tags = req.target.tags();
        // Until Redis has deleted them too, copies read back from the L2
        // count as older than this invalidation.
        let _hold = self.redis.as_ref().map(|_| self.store.begin_hold());
        // A URI's keys go to peers and the L2 by name: its variants are
        // filed under a tag that only this replica's index holds.
        let (local, seq, keys) = match &req.target {
            Target::Uri { primary } => {
                let dropped = self.store.invalidate_uri(primary);
                let keys: Vec<String> = dropped.keys.iter().map(|k| k.to_string()).collect();
                (dropped.removed, dropped.seq, keys)
            }
            _ => {
                let (removed, seq) = self.store.invalidate_tags_seq(&tags);
                (removed, seq, Vec::new())
            }
        };
        let local = local as u64;
        self.store
            .ledger()
            .marks
            .mark(&tags, events::unix_ms(SystemTime::now()));
        let game_id = req.target.game_id().cloned();
        let mut event = self.journal.new_event(
            req.reason,
            game_id.as_ref().map(|g| g.as_str().to_string()),
            tags.clone(),
            req.origin,
            req.detail,
        );
        (event.sport_id, event.league_id) = req.target.scope();
        event.status = req
            .state
            .as_ref()
            .map(|k| k.state.status.as_str().to_owned());
        if let Some(game_id) = &game_id {
            // SPEC §5: the baseline resets at each invalidation, so the
            // next body sets it afresh for every replica. A detected change
            // leaves its new state behind instead (`req.state`).
            if req.state.is_none() {
                self.known.invalidate(game_id);
            }
        }
        if let Some(redis) = &self.redis {
            let mut patterns: Vec<String> = game_id
                .as_ref()
                .map(|g| self.expand_patterns(g.as_str()))
                .unwrap_or_default();
            if let (Some(g), None) = (&game_id, &req.state) {
                // A manual invalidation resets the fleet's baseline too: the
                // next body seeds the game's state afresh.
                patterns.push(redis.game_key(g));
            }
            if redis.stores_responses() {
                patterns.extend(keys.iter().map(|k| redis.response_key(k)));
            }
            let (done, delivered) = tokio::sync::oneshot::channel();
            event.keys_deleted = local;
            let msg = wire::Message::new(event.clone(), &self.instance, keys, req.state);
            let mut pending = redis::Pending::new(msg, tags.clone(), patterns);
            pending.hold = _hold;
            pending.done = Some(done);
            redis.enqueue(pending);
            // Normally the log has it within a round trip or three; when
            // Redis cannot take it now the event stays queued and is
            // appended when it returns, and this answer does not wait
            // longer (one command's budget while Redis is known to be
            // down, so an outage does not hold up every revealing request).
            let wait = if redis.is_healthy() {
                redis.delivery_wait()
            } else {
                redis.command_timeout()
            };
            match tokio::time::timeout(wait, delivered).await {
                Ok(Ok(n)) => event.keys_deleted = local + n,
                _ => tracing::warn!(
                    queued = redis.outbox_len(),
                    "Redis cannot take the invalidation now; it stays in the outbox and goes to the fleet when Redis answers"
                ),
            }
        } else {
            event.keys_deleted = local;
        }
        (self.record(event), seq)
    }

    /// Every replica drops its L1 entries and its known game states: the
    /// log cannot cover what it may have missed (game changes, and unsafe
    /// methods' URIs, whose entries may carry no tag). Returns the entries
    /// dropped.
    pub fn resync(&self, why: &str) -> usize {
        let dropped = self.store.flush();
        // Known states may have missed events: the fleet's are read again
        // at each game's next sighting, and these kept only for when Redis
        // has none (a lost state key), so a change is never taken for a
        // first sighting.
        for (id, state) in self.known.iter() {
            self.suspect.insert(GameId::clone(&id), state);
        }
        self.known.invalidate_all();
        // L2 copies fetched before now may have missed the same events (at
        // start: ones this replica never heard of): none is used.
        self.store
            .ledger()
            .marks
            .mark_all(events::unix_ms(SystemTime::now()));
        self.metrics.resync(why);
        self.journal.resynced();
        dropped
    }

    /// An entry read from the fleet's log: drop what it names and adopt its
    /// game state, unless this process wrote it.
    pub fn apply_logged(&self, msg: wire::Message) -> Option<Arc<Event>> {
        if msg.event.replica == self.journal.replica() && msg.instance == self.instance {
            return None; // our own, already applied
        }
        match msg.kind {
            wire::Kind::Invalidate => self.apply_peer(msg),
            wire::Kind::Resync => {
                let dropped = self.resync("peer_overflow");
                tracing::warn!(dropped, replica = %msg.event.replica, "a peer's outbox overflowed; dropped its L1 entries and known game states");
                None
            }
            wire::Kind::Seed => self.apply_seed(msg),
        }
    }

    /// A game's state written where Redis had none. A replica that knew
    /// another state may hold entries built on it, which nobody else will
    /// invalidate: it evicts them here (SPEC §6, "never zero times").
    fn apply_seed(&self, msg: wire::Message) -> Option<Arc<Event>> {
        let (Some(id), Some(state)) = (msg.event.game_id.as_deref(), msg.state) else {
            return None;
        };
        let id = GameId::try_from(id).ok()?;
        let was = match self.known.get(&id) {
            Some(mine) if mine.state == state.state => {
                known::adopt(&self.known, id, state);
                return None;
            }
            Some(mine) => mine.state.status,
            // Nothing known to compare with: what is cached here was read
            // from the L2 or filled before a resync, and the seeder has
            // already invalidated the fleet if copies existed anywhere
            // (`Detector::may_have_copies`).
            None => {
                known::adopt(&self.known, id, state);
                return None;
            }
        };
        let detail = format!(
            "fleet state was lost; {} saw {} while this replica knew {}",
            msg.event.replica,
            state.state.status.as_str(),
            was.as_str()
        );
        self.evict_locally(&id, was, state, detail, true).0
    }

    /// Drops this replica's entries of a game whose fleet state moved from
    /// `was` without this replica hearing of it. `record`: journal it as an
    /// event of its own; a compare-and-set loser does not, since the winner's
    /// event (or seed) records the transition once for the fleet. Returns
    /// the event, if recorded, and the L1 invalidation's sequence number.
    pub fn evict_locally(
        &self,
        id: &GameId,
        was: Status,
        now: known::Known,
        detail: String,
        record: bool,
    ) -> (Option<Arc<Event>>, u64) {
        let target = Target::Game {
            game_id: id.clone(),
            sport_id: None,
            league_id: None,
            with_sidebar: false,
        };
        let tags = target.tags();
        let (removed, seq) = self.store.invalidate_tags_seq(&tags);
        self.store
            .ledger()
            .marks
            .mark(&tags, events::unix_ms(SystemTime::now()));
        let to = now.state.status;
        let reason = if to != was || matches!(to, Status::Cancelled | Status::Postponed) {
            crate::watch::status_change_reason(to)
        } else {
            Reason::OddsMovement
        };
        known::adopt(&self.known, id.clone(), now);
        if !record {
            tracing::info!(game_id = %id, removed, %detail, "evicted this replica's entries of a game the fleet moved first");
        }
        let mut event = self.journal.new_event(
            reason,
            Some(id.as_str().to_string()),
            tags,
            Origin::Local,
            detail,
        );
        event.keys_deleted = removed as u64;
        event.status = Some(to.as_str().to_owned());
        if !record {
            // Not journaled, but this replica's browsers hear of it: the
            // fleet's event for the change may never come (a seed).
            self.journal.evicted(event);
            return (None, seq);
        }
        (Some(self.record(event)), seq)
    }

    /// Tells the fleet that this replica wrote a game's state where Redis
    /// had none (see [`wire::Kind::Seed`]).
    pub fn announce_seed(&self, id: &GameId, state: &known::Known) {
        let Some(redis) = &self.redis else {
            return;
        };
        let mut event = self.journal.new_event(
            Reason::StatusChange,
            Some(id.as_str().to_string()),
            Vec::new(),
            Origin::Local,
            format!("seeded {}", state.state.status.as_str()),
        );
        event.at_ms = events::unix_ms(SystemTime::now());
        let msg = wire::Message {
            kind: wire::Kind::Seed,
            ..wire::Message::new(event, &self.instance, Vec::new(), Some(state.clone()))
        };
        redis.enqueue(redis::Pending::new(msg, Vec::new(), Vec::new()));
    }

    /// An event a peer wrote: drop what it names, adopt its game state.
    fn apply_peer(&self, msg: wire::Message) -> Option<Arc<Event>> {
        let mut removed = self.store.invalidate_tags(&msg.event.tags) as u64;
        // By the later of the two clocks: the event's, and ours now that we
        // applied it (a copy the peer's writer raced may carry either).
        let at = msg.event.at_ms.max(events::unix_ms(SystemTime::now()));
        self.store.ledger().marks.mark(&msg.event.tags, at);
        removed += msg
            .keys
            .iter()
            .filter(|k| self.store.invalidate_key(k))
            .count() as u64;
        // An unsafe method's URI by its own key too, whatever the keys say
        // (a long list is cut to fit the log).
        removed += msg
            .event
            .tags
            .iter()
            .filter_map(|t| t.strip_prefix(URI_TAG_PREFIX))
            .filter(|k| self.store.invalidate_key(k))
            .count() as u64;
        let now_ms = events::unix_ms(SystemTime::now());
        self.metrics
            .propagation
            .observe(now_ms.saturating_sub(msg.event.at_ms) as f64 / 1000.0);
        if let Some(id) = msg
            .event
            .game_id
            .as_deref()
            .and_then(|i| GameId::try_from(i).ok())
        {
            match msg.state {
                // Newest by compare-and-set order, not by arrival.
                Some(state) => known::adopt(&self.known, id, state),
                // A manual invalidation resets the baseline everywhere.
                None => self.known.invalidate(&id),
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
    pub fn register(&self, entry: &Arc<crate::cache::Entry>, fetch_began: std::time::Instant) {
        if let Some(redis) = &self.redis {
            redis.register(entry, fetch_began);
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
    fn a_uri_target_is_its_local_tag() {
        let t = Target::Uri {
            primary: "/api/v1/games/g-1/odds".into(),
        };
        assert_eq!(t.tags(), ["#uri /api/v1/games/g-1/odds"]);
        assert!(t.game_id().is_none());
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
