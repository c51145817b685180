//! The one freshness rule (SPEC §4, §6), in one place:
//!
//! > An entry is served (fresh, stale-while-revalidate, stale-if-error, to
//! > a coalesced waiter, from the L2) only if no invalidation of its tags,
//! > and no flush, is newer than the moment its fetch began. The only
//! > exception is the invalidations that the fetch itself caused.
//!
//! Two halves keep it, and nothing else decides it:
//!
//! - **At store time**, [`Ledger::superseded`]: every invalidation takes a
//!   sequence number; a fetch remembers the number when it began (its
//!   [`FetchTicket`]), and a response whose tags were invalidated later,
//!   by anyone but the fetch itself ([`FetchTicket::forgive`]), is not
//!   stored. The store makes this check and files the entry in its tag
//!   index under the ledger's lock, the same lock an invalidation holds
//!   while it reads the index, so an invalidation either comes first and
//!   refuses the entry or comes after and finds it. There is no window
//!   between the check and the filing.
//! - **At serve time**, [`servable`]: an invalidation marks every entry it
//!   finds dead before it returns (as Varnish's xkey purge does), and a
//!   dead entry is never served, whichever path holds it: a lookup, a
//!   fill's stale fallback, a waiter handed the leader's entry, the L2
//!   writer about to copy it.
//!
//! Copies read back from the shared L2 come from another process, whose
//! fetch this ledger never saw: [`Marks`] remembers, by the wall clock, when
//! each tag was last invalidated (by this replica or by an event it
//! applied), and a copy whose fetch began before that is not used (the
//! copy carries its fetch's start; pods' clocks are assumed within a few
//! milliseconds, as NTP keeps them). A resync marks everything.
//!
//! A third rule bounds what a replica that cannot hear the fleet serves
//! ([`Ledger::is_cut_off`]): when its reader has not been caught up with
//! the event log for [`LOG_SILENCE`] (Redis down, a blackholed flow not yet
//! detected, a backlog not yet replayed), a tagged entry stored more than
//! `outage_max_staleness` ago counts as expired, so it revalidates with the
//! upstream instead of being answered from L1, and is not served
//! stale-if-error either.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::entry::{since_epoch, Entry, Standing};

/// Whether `entry` may be served at all: no invalidation has found it.
pub fn servable(entry: &Entry) -> bool {
    !entry.is_dead()
}

/// Whether an expired `entry` may stand in for a failed upstream: it is
/// servable and within its `stale-if-error` window.
pub fn usable_on_error(entry: &Entry, now: Instant) -> bool {
    servable(entry) && entry.usable_on_error(now)
}

/// How long the log's reader may go without being caught up before the
/// replica counts as cut off: its blocking read returns at least every
/// second when it is.
pub const LOG_SILENCE: Duration = Duration::from_secs(2);
/// `caught_up` of a sidecar without a fleet: never cut off.
const NO_FLEET: i64 = i64::MAX;
/// `caught_up` before the log was first read.
const NEVER: i64 = i64::MIN;

/// Tags' invalidation times remembered for L2 reads; past this the oldest
/// are folded into one floor.
const MARKS: usize = 100_000;

/// When tags were last invalidated, by the wall clock (unix ms).
#[derive(Default)]
pub struct Marks {
    inner: Mutex<MarksInner>,
}

#[derive(Default)]
struct MarksInner {
    by_tag: HashMap<Arc<str>, u64>,
    order: VecDeque<(Arc<str>, u64)>,
    /// Every copy stored before this is refused: a resync, or marks folded
    /// away to keep the map bounded.
    floor: u64,
}

impl Marks {
    fn lock(&self) -> MutexGuard<'_, MarksInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `tags` were invalidated at `at_ms`.
    pub fn mark<T: AsRef<str>>(&self, tags: &[T], at_ms: u64) {
        let mut m = self.lock();
        for t in tags {
            let tag: Arc<str> = Arc::from(t.as_ref());
            let at = m.by_tag.get(&tag).map_or(at_ms, |&old| old.max(at_ms));
            m.by_tag.insert(Arc::clone(&tag), at);
            m.order.push_back((tag, at));
        }
        while m.order.len() > MARKS {
            let Some((tag, at)) = m.order.pop_front() else {
                break;
            };
            if m.by_tag.get(&tag) == Some(&at) {
                m.by_tag.remove(&tag);
                m.floor = m.floor.max(at);
            }
        }
    }

    /// Every copy stored up to `at_ms` is refused from now on.
    pub fn mark_all(&self, at_ms: u64) {
        let mut m = self.lock();
        m.floor = m.floor.max(at_ms);
        m.by_tag.clear();
        m.order.clear();
    }

    /// Whether a copy tagged `tags` whose fetch began at `fetch_began_ms`
    /// may predate an invalidation this replica knows of.
    pub fn predates<'t>(
        &self,
        tags: impl IntoIterator<Item = &'t str>,
        fetch_began_ms: u64,
    ) -> bool {
        let m = self.lock();
        let before = |at: u64| fetch_began_ms <= at;
        if m.floor > 0 && before(m.floor) {
            return true;
        }
        tags.into_iter()
            .any(|t| m.by_tag.get(t).is_some_and(|&at| before(at)))
    }
}

/// The invalidations that fetches in flight may predate.
pub struct Ledger {
    inner: Mutex<Epochs>,
    /// Bumped by every invalidation and flush.
    seq: AtomicU64,
    /// When the log's reader was last caught up, in nanoseconds from the
    /// entries' epoch ([`NO_FLEET`] without one). Read on every hit.
    caught_up: AtomicI64,
    /// `outage_max_staleness` in milliseconds.
    outage_bound_ms: AtomicU64,
    /// Wall-clock invalidation times, for L2 copies.
    pub marks: Marks,
}

#[derive(Default)]
pub(super) struct Epochs {
    /// The sequence numbers of each tag's invalidations, kept only as long
    /// as a fetch that started before them is still in flight: all of
    /// them, not only the last, so that forgiving a fetch its own
    /// invalidation does not also forgive a peer's that came first.
    by_tag: HashMap<Arc<str>, Vec<u64>>,
    /// Every tagged entry was dropped at this sequence (a resync): nothing
    /// tagged that was fetched earlier may be stored.
    flush: u64,
    /// Start sequences of fetches in flight, with their counts.
    inflight: BTreeMap<u64, usize>,
    /// The same for holds: invalidations whose Redis side is not done yet.
    holds: BTreeMap<u64, usize>,
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger {
            inner: Mutex::default(),
            seq: AtomicU64::new(0),
            caught_up: AtomicI64::new(NO_FLEET),
            outage_bound_ms: AtomicU64::new(u64::MAX),
            marks: Marks::default(),
        }
    }
}

impl Ledger {
    pub(super) fn lock(&self) -> MutexGuard<'_, Epochs> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a fetch: the ticket remembers which invalidations it predates.
    pub fn begin_fetch(self: &Arc<Self>) -> FetchTicket {
        let mut ep = self.lock();
        let start = self.seq.load(Ordering::SeqCst);
        *ep.inflight.entry(start).or_default() += 1;
        self.ticket(start, false)
    }

    /// Taken by an invalidation before it drops L1 entries and kept until
    /// their Redis copies are deleted too: until then,
    /// [`Self::begin_shared_fetch`] treats the invalidation as newer than
    /// anything read from Redis.
    pub fn begin_hold(self: &Arc<Self>) -> FetchTicket {
        let mut ep = self.lock();
        let start = self.seq.load(Ordering::SeqCst);
        *ep.inflight.entry(start).or_default() += 1;
        *ep.holds.entry(start).or_default() += 1;
        self.ticket(start, true)
    }

    /// Starts a read of a copy another replica stored (the Redis L2). The
    /// copy may predate every invalidation whose Redis deletion is still
    /// under way, so the ticket starts before the oldest of them.
    pub fn begin_shared_fetch(self: &Arc<Self>) -> FetchTicket {
        let mut ep = self.lock();
        let now = self.seq.load(Ordering::SeqCst);
        let start = ep.holds.keys().next().map_or(now, |&h| h.min(now));
        *ep.inflight.entry(start).or_default() += 1;
        self.ticket(start, false)
    }

    fn ticket(self: &Arc<Self>, start: u64, hold: bool) -> FetchTicket {
        FetchTicket {
            start,
            began: Instant::now(),
            hold,
            forgiven: Vec::new(),
            ledger: Arc::clone(self),
        }
    }

    /// Records an invalidation of `tags` under the held lock; returns its
    /// sequence number.
    pub(super) fn invalidated<T: AsRef<str>>(&self, ep: &mut Epochs, tags: &[T]) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        ep.prune();
        if !ep.inflight.is_empty() {
            for t in tags {
                ep.by_tag
                    .entry(Arc::from(t.as_ref()))
                    .or_default()
                    .push(seq);
            }
        }
        seq
    }

    /// Records a flush of every tagged entry under the held lock.
    pub(super) fn flushed(&self, ep: &mut Epochs) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        ep.flush = seq;
        ep.prune();
        seq
    }

    /// Whether an invalidation of any of `tags` (or a flush), other than
    /// the ones the ticket's fetch caused itself, happened after it began.
    pub fn superseded<'t>(
        &self,
        ticket: &FetchTicket,
        tags: impl IntoIterator<Item = &'t str>,
    ) -> bool {
        let ep = self.lock();
        ep.superseded(ticket, tags)
    }

    /// This replica is in a fleet whose log it has not read yet.
    pub fn join_fleet(&self) {
        self.caught_up.store(NEVER, Ordering::Relaxed);
    }

    /// The reader has applied everything the log held at `now`.
    pub fn caught_up(&self, now: Instant) {
        self.caught_up.store(since_epoch(now), Ordering::Relaxed);
    }

    /// Whether, at `now`, the replica has not been caught up with the log
    /// for [`LOG_SILENCE`].
    pub fn is_cut_off(&self, now: Instant) -> bool {
        let at = self.caught_up.load(Ordering::Relaxed);
        if at == NO_FLEET {
            return false;
        }
        let silence = i64::try_from(LOG_SILENCE.as_nanos()).unwrap_or(i64::MAX);
        at == NEVER || since_epoch(now).saturating_sub(at) > silence
    }

    /// Whether the outage bound keeps `entry` from being served at `now`:
    /// cut off, and stored longer ago than the bound. Untagged entries too:
    /// an unsafe method's URI reaches them through the log.
    fn beyond_outage_bound(&self, entry: &Entry, now: Instant) -> bool {
        if !self.is_cut_off(now) {
            return false;
        }
        let bound = Duration::from_millis(self.outage_bound_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(entry.stored_at()) > bound
    }

    /// Whether an expired `entry` may stand in for a failed upstream:
    /// servable, within its `stale-if-error` window, and not beyond the
    /// outage bound.
    pub fn usable_on_error(&self, entry: &Entry, now: Instant) -> bool {
        usable_on_error(entry, now) && !self.beyond_outage_bound(entry, now)
    }

    pub fn outage_bound(&self) -> Duration {
        Duration::from_millis(self.outage_bound_ms.load(Ordering::Relaxed))
    }

    pub fn set_outage_bound(&self, bound: Duration) {
        let ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        self.outage_bound_ms.store(ms, Ordering::Relaxed);
    }

    /// How `entry` stands at `now` for serving: its own freshness, except
    /// that while the replica is cut off from the fleet a tagged entry older
    /// than the outage bound counts as expired (it revalidates).
    pub fn freshness(&self, entry: &Entry, now: Instant) -> Standing {
        let own = entry.freshness(now);
        if own != Standing::Stale && self.beyond_outage_bound(entry, now) {
            Standing::Stale
        } else {
            own
        }
    }
}

impl Epochs {
    pub(super) fn superseded<'t>(
        &self,
        ticket: &FetchTicket,
        tags: impl IntoIterator<Item = &'t str>,
    ) -> bool {
        let mut tags = tags.into_iter().peekable();
        if self.flush > ticket.start && tags.peek().is_some() {
            return true;
        }
        tags.any(|t| {
            self.by_tag.get(t).is_some_and(|seqs| {
                seqs.iter()
                    .any(|&s| s > ticket.start && !ticket.forgiven.contains(&s))
            })
        })
    }

    /// Forgets epochs no in-flight fetch can predate, keeping the map small.
    fn prune(&mut self) {
        match self.inflight.keys().next().copied() {
            None => self.by_tag.clear(),
            Some(oldest) => self.by_tag.retain(|_, seqs| {
                seqs.retain(|&s| s > oldest);
                !seqs.is_empty()
            }),
        }
    }

    #[cfg(test)]
    pub(super) fn inflight_is_empty(&self) -> bool {
        self.inflight.is_empty()
    }
}

/// Registered while a fetch is in flight, so epochs it may need are kept.
pub struct FetchTicket {
    start: u64,
    /// When the fetch began, for the L2 copy of what it stores.
    began: Instant,
    /// Taken by [`Ledger::begin_hold`]: also listed in `holds`.
    hold: bool,
    /// The invalidations this fetch caused itself: the response that
    /// revealed a change is stored after that change.
    forgiven: Vec<u64>,
    ledger: Arc<Ledger>,
}

impl FetchTicket {
    pub fn began(&self) -> Instant {
        self.began
    }

    /// Exempts the invalidation numbered `seq`, which this fetch's own
    /// response caused, from superseding it. Nothing else is exempted: a
    /// peer's invalidation that landed while the fetch awaited Redis still
    /// supersedes it.
    pub fn forgive(&mut self, seq: u64) {
        self.forgiven.push(seq);
    }
}

fn release(counts: &mut BTreeMap<u64, usize>, at: u64) {
    if let Some(n) = counts.get_mut(&at) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&at);
        }
    }
}

impl Drop for FetchTicket {
    fn drop(&mut self) {
        let mut ep = self.ledger.lock();
        release(&mut ep.inflight, self.start);
        if self.hold {
            release(&mut ep.holds, self.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_copies_older_than_a_known_invalidation_are_refused() {
        let m = Marks::default();
        m.mark(&["game:1"], 10_000);
        assert!(m.predates(["game:1"], 9_000), "fetched before");
        assert!(m.predates(["game:1"], 10_000), "in the same millisecond");
        assert!(!m.predates(["game:1"], 10_001));
        assert!(!m.predates(["game:2"], 9_000), "another tag");
        m.mark_all(20_000);
        assert!(m.predates(["game:2"], 15_000), "before a resync");
        assert!(!m.predates(["game:2"], 21_001));
    }

    #[test]
    fn marks_stay_bounded_and_fold_into_the_floor() {
        let m = Marks::default();
        for i in 0..(MARKS as u64 + 10) {
            m.mark(&[format!("game:{i}")], 1_000 + i);
        }
        assert!(m.lock().by_tag.len() <= MARKS);
        // The folded-away oldest marks still refuse what predates them.
        assert!(m.predates(["game:0"], 1_000));
    }
}
