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
//! A third rule bounds what a replica that cannot hear the fleet serves
//! ([`Ledger::cut_off`]): while its event log cannot be read, a tagged
//! entry stored more than `outage_max_staleness` ago counts as expired, so
//! it revalidates with the upstream instead of being answered from L1.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::entry::{Entry, Freshness};
use super::store::is_local_tag;

/// Whether `entry` may be served at all: no invalidation has found it.
pub fn servable(entry: &Entry) -> bool {
    !entry.is_dead()
}

/// Whether an expired `entry` may stand in for a failed upstream: it is
/// servable and within its `stale-if-error` window.
pub fn usable_on_error(entry: &Entry, now: Instant) -> bool {
    servable(entry) && entry.usable_on_error(now)
}

/// The invalidations that fetches in flight may predate.
pub struct Ledger {
    inner: Mutex<Epochs>,
    /// Bumped by every invalidation and flush.
    seq: AtomicU64,
    /// Set while the fleet's event log cannot be read (see the module
    /// header); read on every hit, so a plain flag.
    cut_off: AtomicBool,
    /// `outage_max_staleness` in milliseconds.
    outage_bound_ms: AtomicU64,
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
            cut_off: AtomicBool::new(false),
            outage_bound_ms: AtomicU64::new(u64::MAX),
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

    /// Sets whether the fleet's log can be read, and the staleness bound
    /// that applies while it cannot.
    pub fn set_cut_off(&self, cut_off: bool) {
        self.cut_off.store(cut_off, Ordering::Relaxed);
    }

    pub fn is_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Relaxed)
    }

    pub fn set_outage_bound(&self, bound: Duration) {
        let ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        self.outage_bound_ms.store(ms, Ordering::Relaxed);
    }

    /// How `entry` stands at `now` for serving: its own freshness, except
    /// that while the replica is cut off from the fleet a tagged entry older
    /// than the outage bound counts as expired (it revalidates).
    pub fn freshness(&self, entry: &Entry, now: Instant) -> Freshness {
        let own = entry.freshness(now);
        if own == Freshness::Stale || !self.cut_off.load(Ordering::Relaxed) {
            return own;
        }
        let bound = Duration::from_millis(self.outage_bound_ms.load(Ordering::Relaxed));
        let old = now.saturating_duration_since(entry.stored_at()) > bound;
        if old && entry.tags().any(|t| !is_local_tag(t)) {
            Freshness::Stale
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
    /// Taken by [`Ledger::begin_hold`]: also listed in `holds`.
    hold: bool,
    /// The invalidations this fetch caused itself: the response that
    /// revealed a change is stored after that change.
    forgiven: Vec<u64>,
    ledger: Arc<Ledger>,
}

impl FetchTicket {
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
