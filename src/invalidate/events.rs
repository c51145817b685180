//! What invalidations are remembered as: the event record, the bounded
//! ring of recent events, the counters behind the stats endpoint, the
//! sliding 60-second rate with its alert, and the live broadcast for SSE.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::watch::Reason;

/// Where an invalidation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// This replica's watcher or an unsafe method.
    Local,
    /// Another replica, through Redis pub/sub.
    Peer,
    /// The admin API.
    Api,
}

/// One invalidation, as the admin API and pub/sub carry it (SPEC §7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    /// RFC 3339, UTC, with milliseconds.
    pub at: String,
    /// Unix milliseconds of `at`, for propagation measurements.
    #[serde(default)]
    pub at_ms: u64,
    pub reason: Reason,
    pub game_id: Option<String>,
    /// The game's sport and league, when the change named them: what a
    /// browser filters change hints on (SPEC §8). A sidebar invalidation
    /// carries these without a game.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub league_id: Option<String>,
    /// The game's canonical status after the change, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    pub tags: Vec<String>,
    pub keys_deleted: u64,
    pub origin: Origin,
    pub replica: String,
    pub detail: String,
}

/// Counters and the sliding window, as the stats endpoint shows them.
#[derive(Clone, Debug, Serialize)]
pub struct StatsSnapshot {
    pub total_invalidations: u64,
    pub keys_deleted: u64,
    pub by_reason: serde_json::Map<String, serde_json::Value>,
    pub invalidations_last_minute: u64,
    pub alert_threshold_per_minute: u64,
    pub alerting: bool,
    pub since: String,
}

/// The sliding 60-second window, in one-second buckets: O(1) memory at any rate.
struct Window {
    buckets: [u64; 60],
    /// The second (since `origin`) the newest bucket belongs to.
    head: u64,
    origin: Instant,
}

impl Window {
    fn new() -> Window {
        Window {
            buckets: [0; 60],
            head: 0,
            origin: Instant::now(),
        }
    }

    fn advance(&mut self, now: Instant) {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        if sec <= self.head {
            return;
        }
        let gap = (sec - self.head).min(60);
        for i in 1..=gap {
            self.buckets[((self.head + i) % 60) as usize] = 0;
        }
        self.head = sec;
    }

    fn add(&mut self, now: Instant) {
        self.advance(now);
        self.buckets[(self.head % 60) as usize] += 1;
    }

    fn total(&mut self, now: Instant) -> u64 {
        self.advance(now);
        self.buckets.iter().sum()
    }
}

pub struct Journal {
    replica: String,
    capacity: usize,
    alert_per_minute: u64,
    since: String,
    next_id: AtomicU64,
    inner: Mutex<Inner>,
    live: broadcast::Sender<std::sync::Arc<Event>>,
    /// Counts this replica's cache flushes, which no event records: a
    /// change hint stream tells its clients to refetch everything.
    resyncs: tokio::sync::watch::Sender<u64>,
    /// Entries this replica dropped without recording an event, because
    /// the fleet's event records the change (a compare-and-set loser):
    /// its browsers still hear of it.
    evictions: broadcast::Sender<std::sync::Arc<Event>>,
    /// This process's nonce in [`Position`]s.
    boot: u64,
}

/// What a reconnecting client missed (see [`Journal::since`]).
#[derive(Debug)]
pub enum Since {
    /// Oldest first.
    Missed(Vec<std::sync::Arc<Event>>),
    /// The position is gone from the ring, or this replica dropped its
    /// whole cache after it: refetch everything.
    Gone,
}

struct Inner {
    ring: VecDeque<std::sync::Arc<Event>>,
    total: u64,
    keys_deleted: u64,
    by_reason: [u64; 6],
    window: Window,
    alerting: bool,
    /// `total` at the last resync: positions before it are gone.
    resynced_at: u64,
    /// Resyncs so far, part of every [`Position`].
    resyncs: u64,
    /// `total` when this replica last dropped a game's entries without
    /// recording an event: a replay from before it cannot say so, and is
    /// answered with a resync.
    evicted_at: Option<u64>,
}

/// A place in this process's journal, as a reconnecting client names it
/// (`~at-{boot}.{resyncs}.{total}`): only the process that issued it, and
/// only before its next resync, can replay from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    boot: u64,
    resyncs: u64,
    total: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "~at-{:x}.{}.{}", self.boot, self.resyncs, self.total)
    }
}

impl Position {
    /// The position an id names, if it is one; event ids start with a
    /// replica id, never with `~`.
    pub fn parse(id: &str) -> Option<Position> {
        let mut parts = id.strip_prefix("~at-")?.split('.');
        let boot = u64::from_str_radix(parts.next()?, 16).ok()?;
        let resyncs = parts.next()?.parse().ok()?;
        let total = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Position {
            boot,
            resyncs,
            total,
        })
    }
}

impl Journal {
    pub fn new(replica: &str, capacity: usize, alert_per_minute: u32) -> Journal {
        Journal {
            replica: replica.to_string(),
            capacity: capacity.max(1),
            alert_per_minute: u64::from(alert_per_minute),
            since: rfc3339(SystemTime::now()),
            next_id: AtomicU64::new(1),
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(capacity.min(4096)),
                total: 0,
                keys_deleted: 0,
                by_reason: [0; 6],
                window: Window::new(),
                alerting: false,
                resynced_at: 0,
                resyncs: 0,
                evicted_at: None,
            }),
            // Lagging subscribers lose events rather than grow this buffer.
            live: broadcast::channel(256).0,
            resyncs: tokio::sync::watch::Sender::new(0),
            evictions: broadcast::channel(256).0,
            boot: rand::random(),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// A fresh event of this replica, not yet recorded.
    pub fn new_event(
        &self,
        reason: Reason,
        game_id: Option<String>,
        tags: Vec<String>,
        origin: Origin,
        detail: String,
    ) -> Event {
        let now = SystemTime::now();
        let seq = self.next_id.fetch_add(1, Ordering::Relaxed);
        Event {
            id: format!("{}-{}-{seq}", self.replica, unix_ms(now)),
            at: rfc3339(now),
            at_ms: unix_ms(now),
            reason,
            game_id,
            sport_id: None,
            league_id: None,
            status: None,
            tags,
            keys_deleted: 0,
            origin,
            replica: self.replica.clone(),
            detail,
        }
    }

    /// Records an event: ring, counters, window, alert, live subscribers.
    /// Returns the per-minute rate after it.
    pub fn record(&self, event: Event) -> (std::sync::Arc<Event>, u64) {
        let event = std::sync::Arc::new(event);
        let now = Instant::now();
        let rate = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if inner.ring.len() == self.capacity {
                inner.ring.pop_back();
            }
            inner.ring.push_front(std::sync::Arc::clone(&event));
            inner.total += 1;
            inner.keys_deleted += event.keys_deleted;
            let idx = Reason::ALL
                .iter()
                .position(|r| *r == event.reason)
                .unwrap_or(0);
            inner.by_reason[idx] += 1;
            inner.window.add(now);
            let rate = inner.window.total(now);
            let above = rate > self.alert_per_minute;
            if above && !inner.alerting {
                tracing::warn!(
                    rate_per_minute = rate,
                    threshold = self.alert_per_minute,
                    "invalidation rate crossed the alert threshold"
                );
            } else if !above && inner.alerting {
                tracing::info!(
                    rate_per_minute = rate,
                    "invalidation rate back below the alert threshold"
                );
            }
            inner.alerting = above;
            rate
        };
        // No subscribers is fine.
        let _ = self.live.send(std::sync::Arc::clone(&event));
        (event, rate)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<Event>> {
        self.live.subscribe()
    }

    /// Notes that this replica dropped its whole cache (a resync), so
    /// events it never heard of may have gone by.
    pub fn resynced(&self) {
        {
            let mut inner = self.lock();
            inner.resynced_at = inner.total;
            inner.resyncs += 1;
        }
        self.resyncs.send_modify(|n| *n += 1);
    }

    /// Now, as a place [`Self::since_position`] replays from.
    pub fn position(&self) -> Position {
        let inner = self.lock();
        Position {
            boot: self.boot,
            resyncs: inner.resyncs,
            total: inner.total,
        }
    }

    /// Tells change-hint streams that this replica dropped a game's
    /// entries without recording an event (see `evictions`).
    pub fn evicted(&self, event: Event) {
        {
            let mut inner = self.lock();
            inner.evicted_at = Some(inner.total);
        }
        let _ = self.evictions.send(std::sync::Arc::new(event));
    }

    pub fn subscribe_evictions(&self) -> broadcast::Receiver<std::sync::Arc<Event>> {
        self.evictions.subscribe()
    }

    /// The events recorded after the one with `id`, and those recorded up
    /// to `margin_ms` (by their own clocks) before it: another replica may
    /// have applied those after it, and a client moving between replicas
    /// must not miss them (a duplicate only costs a refetch).
    pub fn since(&self, id: &str, margin_ms: u64) -> Since {
        let inner = self.lock();
        let Some(n) = inner.ring.iter().position(|e| e.id == id) else {
            return Since::Gone;
        };
        // ring[i] is the (total - 1 - i)th event recorded.
        let seq = inner.total - 1 - (n as u64);
        if seq < inner.resynced_at || inner.evicted_at.is_some_and(|t| t > seq) {
            return Since::Gone;
        }
        let at = inner.ring[n].at_ms;
        let mut out: Vec<_> = inner.ring.iter().take(n).cloned().collect();
        out.extend(
            inner
                .ring
                .iter()
                .skip(n + 1)
                .take(MARGIN_SCAN)
                .filter(|e| e.at_ms.saturating_add(margin_ms) >= at)
                .cloned(),
        );
        // Newest first, in record order: reversed, oldest first.
        out.reverse();
        Since::Missed(out)
    }

    /// The events recorded since `at` ([`Self::position`]).
    pub fn since_position(&self, at: &Position) -> Since {
        let inner = self.lock();
        let oldest = inner.total - inner.ring.len() as u64;
        let pos = at.total;
        if at.boot != self.boot
            || at.resyncs != inner.resyncs
            || pos < oldest
            || pos > inner.total
            || inner.evicted_at.is_some_and(|t| t >= pos)
        {
            return Since::Gone;
        }
        let n = (inner.total - pos) as usize;
        Since::Missed(inner.ring.iter().take(n).rev().cloned().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes with every [`Self::resynced`].
    pub fn watch_resyncs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.resyncs.subscribe()
    }

    /// Newest first, filtered, at most `limit`.
    pub fn recent(
        &self,
        limit: usize,
        reason: Option<Reason>,
        game_id: Option<&str>,
    ) -> Vec<std::sync::Arc<Event>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .ring
            .iter()
            .filter(|e| reason.is_none_or(|r| e.reason == r))
            .filter(|e| game_id.is_none_or(|g| e.game_id.as_deref() == Some(g)))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rate = inner.window.total(Instant::now());
        let alerting = rate > self.alert_per_minute;
        if inner.alerting && !alerting {
            tracing::info!(
                rate_per_minute = rate,
                "invalidation rate back below the alert threshold"
            );
        }
        inner.alerting = alerting;
        StatsSnapshot {
            total_invalidations: inner.total,
            keys_deleted: inner.keys_deleted,
            by_reason: Reason::ALL
                .iter()
                .zip(inner.by_reason)
                .map(|(r, n)| (r.as_str().to_string(), n.into()))
                .collect(),
            invalidations_last_minute: rate,
            alert_threshold_per_minute: self.alert_per_minute,
            alerting,
            since: self.since.clone(),
        }
    }
}

/// Events before a reconnecting client's last one that [`Journal::since`]
/// looks at for the margin.
const MARGIN_SCAN: usize = 1000;

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(j: &Journal, reason: Reason, game: &str) -> Event {
        j.new_event(
            reason,
            Some(game.into()),
            vec![format!("game:{game}")],
            Origin::Local,
            String::new(),
        )
    }

    #[test]
    fn ring_keeps_the_newest_and_counts_everything() {
        let j = Journal::new("r1", 3, 100);
        for (i, reason) in [
            Reason::Manual,
            Reason::StatusChange,
            Reason::Cancelled,
            Reason::OddsMovement,
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = event(&j, reason, &format!("g{i}"));
            e.keys_deleted = 2;
            j.record(e);
        }
        let recent = j.recent(10, None, None);
        assert_eq!(recent.len(), 3);
        assert_eq!(recent[0].game_id.as_deref(), Some("g3"));
        assert_eq!(j.recent(10, Some(Reason::Cancelled), None).len(), 1);
        assert_eq!(j.recent(10, None, Some("g1")).len(), 1);
        assert_eq!(j.recent(1, None, None).len(), 1);
        let s = j.snapshot();
        assert_eq!(s.total_invalidations, 4);
        assert_eq!(s.keys_deleted, 8);
        assert_eq!(s.by_reason.len(), 6);
        assert_eq!(s.by_reason["MANUAL"], 1);
        assert_eq!(s.by_reason["POSTPONED"], 0);
        assert_eq!(s.invalidations_last_minute, 4);
    }

    #[test]
    fn since_replays_after_an_id_with_a_margin_and_not_across_a_resync() {
        let j = Journal::new("r1", 10, 1000);
        let mut ids = Vec::new();
        for (i, at) in [1_000u64, 2_000, 9_000, 8_500, 20_000]
            .into_iter()
            .enumerate()
        {
            let mut e = event(&j, Reason::Manual, &format!("g{i}"));
            e.at_ms = at;
            ids.push(e.id.clone());
            j.record(e);
        }
        let got = |s: Since| match s {
            Since::Missed(v) => v
                .iter()
                .map(|e| e.game_id.clone().unwrap())
                .collect::<Vec<_>>(),
            Since::Gone => vec!["gone".to_string()],
        };
        // After g2 (at 9,000): g3 and g4 were recorded later; with a 1 s
        // margin, g1 (at 2,000) stays out.
        assert_eq!(got(j.since(&ids[2], 1_000)), ["g3", "g4"]);
        // After g3 (at 8,500): g2 was recorded before it here but is
        // within the margin, so another replica may have applied it later.
        assert_eq!(got(j.since(&ids[3], 1_000)), ["g2", "g4"]);
        assert_eq!(got(j.since("r0-1-1", 1_000)), ["gone"]);
        let pos = j.position();
        let back = |p: Position, n: u64| Position {
            total: p.total - n,
            ..p
        };
        assert_eq!(Position::parse(&pos.to_string()), Some(pos));
        assert_eq!(Position::parse(&ids[0]), None);
        assert_eq!(got(j.since_position(&pos)), Vec::<String>::new());
        assert_eq!(got(j.since_position(&back(pos, 2))), ["g3", "g4"]);
        // Another process's position, with the same numbers: gone.
        let other = Journal::new("r1", 10, 1000);
        assert_eq!(got(other.since_position(&pos)), ["gone"]);
        j.resynced();
        assert_eq!(got(j.since(&ids[3], 1_000)), ["gone"]);
        assert_eq!(got(j.since_position(&back(pos, 2))), ["gone"]);
        // Issued before the resync, even with nothing recorded since: gone.
        assert_eq!(got(j.since_position(&pos)), ["gone"]);
        let after = j.position();
        j.resynced();
        assert_eq!(got(j.since_position(&after)), ["gone"], "a second resync");
        let after = j.position();
        j.record(event(&j, Reason::Manual, "g5"));
        assert_eq!(got(j.since_position(&after)), ["g5"]);
        let g5 = j.recent(1, None, None)[0].id.clone();
        // An eviction no event records: a replay from before it is gone.
        j.evicted(event(&j, Reason::StatusChange, "g6"));
        assert_eq!(got(j.since_position(&after)), ["gone"]);
        assert_eq!(got(j.since(&g5, 0)), ["gone"]);
        let now = j.position();
        j.record(event(&j, Reason::Manual, "g7"));
        assert_eq!(
            got(j.since_position(&now)),
            ["gone"],
            "issued at the eviction"
        );
        let g7 = j.recent(1, None, None)[0].id.clone();
        // Recorded after the eviction: replayable (g5, of the same
        // millisecond, may come along in the margin).
        assert!(!got(j.since(&g7, 0)).contains(&"gone".to_string()));
    }

    #[test]
    fn alerting_follows_the_window() {
        let j = Journal::new("r1", 10, 3);
        for _ in 0..3 {
            j.record(event(&j, Reason::Manual, "g"));
        }
        assert!(!j.snapshot().alerting);
        j.record(event(&j, Reason::Manual, "g"));
        assert!(j.snapshot().alerting);
    }

    #[test]
    fn window_forgets_after_a_minute() {
        let mut w = Window::new();
        let t0 = w.origin;
        for _ in 0..5 {
            w.add(t0);
        }
        w.add(t0 + std::time::Duration::from_secs(30));
        assert_eq!(w.total(t0 + std::time::Duration::from_secs(59)), 6);
        assert_eq!(w.total(t0 + std::time::Duration::from_secs(61)), 1);
        assert_eq!(w.total(t0 + std::time::Duration::from_secs(200)), 0);
    }

    #[test]
    fn events_serialize_with_the_spec_names() {
        let j = Journal::new("pod-a", 10, 100);
        let e = event(&j, Reason::StatusChange, "g-1");
        let v = serde_json::to_value(&e).unwrap();
        for k in [
            "id",
            "at",
            "reason",
            "game_id",
            "tags",
            "keys_deleted",
            "origin",
            "replica",
            "detail",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["reason"], "STATUS_CHANGE");
        assert_eq!(v["origin"], "local");
    }
}
