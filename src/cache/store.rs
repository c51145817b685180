//! The L1: a moka cache weighed in bytes, with its lookups, inserts,
//! invalidations and expiry walk. The tag index's layout is in `tags`, the
//! fill lock in `lock`, and the rule that keeps a slow fetch from storing
//! what an invalidation removed in `freshness`.
//!
//! Invalidation is visible at once: the tag's keys are removed from moka
//! before `invalidate_tags` returns, so the next lookup misses.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;

use super::entry::Entry;
pub use super::freshness::FetchTicket;
use super::freshness::{self, Ledger};
use super::key;
pub use super::lock::{wait_fill, Fill, FillGuard, FillLocks, FillState};
pub use super::tags::{is_local_tag, uri_tag, URI_TAG_PREFIX};
use super::tags::{Filed, TagIndex};

/// Hashes cache keys: foldhash with a per-store random seed, a fraction of
/// SipHash's cost on every lookup, and no fixed hash function a client
/// could aim colliding URLs at.
type KeyHasher = foldhash::quality::RandomState;

/// moka's keys are those 64-bit hashes, not the keys' text: an entry keeps
/// its key in its own block, and moka's node then holds 8 bytes instead of
/// a second allocation. Two keys with one hash (2^-64 for a pair, under a
/// seed no client knows) share a slot: every lookup compares the whole key,
/// so the other key's response is never served, only missed.
#[derive(Clone, Default)]
struct PreHashed;

impl BuildHasher for PreHashed {
    type Hasher = PassThrough;

    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// Passes a `u64` key through: it is a hash already.
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is called for a `u64`; anything else still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What moka holds under a key.
#[derive(Clone, Debug)]
pub enum Slot {
    Entry(Arc<Entry>),
    /// The response varies on some request headers; its variants live
    /// under [`key::variant`] keys.
    Vary(Arc<Varies>),
}

/// A `Vary` slot: the key it is for, the request headers it names, and
/// when it expires.
#[derive(Debug)]
pub struct Varies {
    key: Box<str>,
    names: Box<[HeaderName]>,
    until: Instant,
}

/// How long a `Vary` slot outlives its last write: longer than any
/// variant, and a stale one only costs a second lookup.
const VARY_RETENTION: Duration = Duration::from_secs(24 * 3600);

impl Slot {
    /// When the slot may go: an entry's retention after it was stored.
    fn until(&self) -> Instant {
        match self {
            Slot::Entry(e) => e.stored_at() + e.retention(),
            Slot::Vary(v) => v.until,
        }
    }
}

/// How long [`Store::spawn_expirer`] waits at least between two walks of
/// the store for slots whose retention is over. moka's own per-entry
/// expiry would give every entry a 48-byte timer-wheel node; the walk costs
/// no memory, and ~0.5 µs per entry (`examples/rss_figures.rs` prints it).
/// A slot past its retention is harmless until the walk comes: a lookup
/// finds it stale, as it was a moment before.
pub const EXPIRE_EVERY: Duration = Duration::from_secs(5);

/// The pause after a walk is at least this many times as long as the walk
/// took, so walking takes at most 0.5% of a core (at 100k entries, one
/// walk every ~10 s).
const EXPIRE_PAUSE_FACTOR: u32 = 200;

/// What [`Store::invalidate_uri`] dropped.
#[derive(Debug)]
pub struct UriDropped {
    /// Entries removed.
    pub removed: usize,
    /// The URI's own key, then its variants': peers and the L2 drop the
    /// same.
    pub keys: Vec<Arc<str>>,
    /// The invalidation's sequence number (see [`FetchTicket::forgive`]).
    pub seq: u64,
}

pub struct Store {
    cache: Cache<u64, Slot, PreHashed>,
    hasher: KeyHasher,
    shared: Arc<Shared>,
    fills: FillLocks,
}

/// Invalidations of more entries than this finish their moka removal on a
/// blocking thread; the entries are dead (unservable) before it starts.
const INLINE_REMOVALS: usize = 256;

struct Shared {
    tags: Mutex<TagIndex>,
    /// The invalidations fetches in flight may predate: see [`freshness`].
    ledger: Arc<Ledger>,
}

pub enum Lookup {
    Found(Arc<Entry>),
    Miss,
}

impl Store {
    pub fn new(max_bytes: u64) -> Store {
        let shared = Arc::new(Shared {
            tags: Mutex::default(),
            ledger: Arc::default(),
        });
        let listener_shared = Arc::clone(&shared);
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &u64, v: &Slot| match v {
                Slot::Entry(e) => e.weight(),
                Slot::Vary(v) => (v.key.len() + 64 * v.names.len() + 128) as u32,
            })
            .eviction_listener(move |_, slot, _| {
                // A replacement under the same key filed the new entry in
                // its place already, and this finds the old one gone; one
                // under another key with the same hash still needs this.
                if let Slot::Entry(e) = slot {
                    listener_shared.unindex(&e);
                }
            })
            .build_with_hasher(PreHashed);
        Store {
            cache,
            hasher: KeyHasher::default(),
            shared,
            fills: FillLocks::default(),
        }
    }

    /// The slot stored under `key`, if it is that key's.
    fn get(&self, key: &str) -> Option<Slot> {
        slot_of(&self.cache, self.hasher.hash_one(key), key)
    }

    /// Finds the entry for a request, following a `Vary` slot to its variant.
    /// Returns the key that a fill for this request must use.
    pub fn lookup<'k>(&self, primary: &'k str, headers: &HeaderMap) -> (Lookup, KeyRef<'k>) {
        match self.get(primary) {
            Some(Slot::Entry(e)) if freshness::servable(&e) => {
                (Lookup::Found(e), KeyRef::Primary(primary))
            }
            Some(Slot::Vary(v)) => {
                let vkey = key::variant(primary, &v.names, headers);
                let found = match self.get(vkey.as_str()) {
                    Some(Slot::Entry(e)) if freshness::servable(&e) => Lookup::Found(e),
                    _ => Lookup::Miss,
                };
                (found, KeyRef::Variant(vkey))
            }
            _ => (Lookup::Miss, KeyRef::Primary(primary)),
        }
    }

    /// The freshness rule's ledger: tickets, supersession, the outage bound.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.shared.ledger
    }

    /// Starts a fetch: the ticket remembers which invalidations it predates.
    pub fn begin_fetch(&self) -> FetchTicket {
        self.shared.ledger.begin_fetch()
    }

    /// See [`Ledger::begin_hold`].
    pub fn begin_hold(&self) -> FetchTicket {
        self.shared.ledger.begin_hold()
    }

    /// See [`Ledger::begin_shared_fetch`].
    pub fn begin_shared_fetch(&self) -> FetchTicket {
        self.shared.ledger.begin_shared_fetch()
    }

    /// Whether an invalidation of any of `tags` (or a flush) that the
    /// ticket's fetch did not cause happened after it began.
    pub fn superseded<'t>(
        &self,
        ticket: &FetchTicket,
        tags: impl IntoIterator<Item = &'t str>,
    ) -> bool {
        self.shared.ledger.superseded(ticket, tags)
    }

    /// How `entry` stands for serving at `now` (see [`Ledger::freshness`]).
    pub fn freshness(&self, entry: &Entry, now: Instant) -> crate::cache::Standing {
        self.shared.ledger.freshness(entry, now)
    }

    /// Stores `entry` unless the fetch was superseded. `vary` names the
    /// request headers the response varies on (empty for none).
    pub fn insert(
        &self,
        ticket: &FetchTicket,
        primary: &str,
        vary: &[HeaderName],
        entry: Arc<Entry>,
    ) -> bool {
        // Every entry counts as tagged with its URI: an unsafe method that
        // succeeded while this fetch was under way supersedes it.
        let uri = uri_tag(primary);
        {
            // Checked and filed under the ledger's lock, which every
            // invalidation holds while it reads the index: one that lands
            // now either refuses this entry here or finds it filed and
            // kills it. See `freshness`.
            let ep = self.shared.ledger.lock();
            if ep.superseded(ticket, entry.tags().chain([&*uri])) {
                return false;
            }
            // No moka call under these locks: moka may run its maintenance
            // inside any call, and its eviction listener takes the index's.
            let mut index = self.shared.lock_tags();
            for (i, tag) in entry.tags().enumerate() {
                let (filed, displaced) = Filed::insert(index.take(tag), &entry, i);
                index.insert(filed);
                // The entry this one replaces is no longer filed: an
                // invalidation from now on would not find it, so it stops
                // being servable here rather than when moka is overwritten.
                if let Some(old) = displaced.filter(|old| !Arc::ptr_eq(old, &entry)) {
                    old.kill();
                }
            }
        }
        if !vary.is_empty() {
            let varies = Varies {
                key: primary.into(),
                names: vary.into(),
                until: Instant::now() + VARY_RETENTION,
            };
            self.cache
                .insert(self.hasher.hash_one(primary), Slot::Vary(Arc::new(varies)));
        }
        let hash = self.hasher.hash_one(entry.key());
        self.cache.insert(hash, Slot::Entry(Arc::clone(&entry)));
        if !freshness::servable(&entry) {
            // Killed between the filing and this write: it never serves,
            // and goes now rather than at the expiry walk.
            self.remove_keys(vec![entry]);
            return false;
        }
        true
    }

    /// Removes the slots whose retention is over at `now`; returns how
    /// many. Run every [`EXPIRE_EVERY`] by [`Self::spawn_expirer`]. Walking
    /// moka's table counts as no access to its entries.
    pub fn expire(&self, now: Instant) -> usize {
        let due: Vec<u64> = self
            .cache
            .iter()
            .filter(|(_, slot)| slot.until() <= now)
            .map(|(hash, _)| *hash)
            .collect();
        let mut expired = 0;
        for hash in due {
            // Checked and removed under moka's lock for the key, so a slot
            // written since with a later deadline stays.
            let removed = self.cache.entry(hash).and_compute_with(|slot| match slot {
                Some(slot) if slot.value().until() <= now => Op::Remove,
                _ => Op::Nop,
            });
            expired += usize::from(matches!(removed, CompResult::Removed(_)));
        }
        expired
    }

    /// Expires slots, off the runtime's workers, until `shutdown`: a walk,
    /// then a pause of [`EXPIRE_EVERY`] or [`EXPIRE_PAUSE_FACTOR`] times the
    /// walk, whichever is longer.
    pub fn spawn_expirer(self: &Arc<Self>, mut shutdown: crate::shutdown::Signal) {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let began = Instant::now();
                let walker = Arc::clone(&store);
                let _ = tokio::task::spawn_blocking(move || walker.expire(Instant::now())).await;
                let pause = EXPIRE_EVERY.max(began.elapsed() * EXPIRE_PAUSE_FACTOR);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.recv() => break,
                }
            }
        });
    }

    /// Removes every entry filed under any of `tags`; returns how many.
    pub fn invalidate_tags<T: AsRef<str>>(&self, tags: &[T]) -> usize {
        self.invalidate_tags_seq(tags).0
    }

    /// [`Self::invalidate_tags`], with the invalidation's sequence number,
    /// which the fetch that caused it passes to [`FetchTicket::forgive`].
    pub fn invalidate_tags_seq<T: AsRef<str>>(&self, tags: &[T]) -> (usize, u64) {
        let seq;
        let keys: Vec<Arc<Entry>> = {
            let mut ep = self.shared.ledger.lock();
            seq = self.shared.ledger.invalidated(&mut ep, tags);
            let mut index = self.shared.lock_tags();
            tags.iter()
                .filter_map(|t| index.take(t.as_ref()))
                .flat_map(Filed::into_entries)
                .collect()
        };
        (self.remove_keys(keys), seq)
    }

    /// Drops what is cached for one URI after an unsafe method (RFC 9111
    /// §4.4): the entry under its own key and its `Vary` variants, and
    /// supersedes the fetches of it under way.
    pub fn invalidate_uri(&self, primary: &str) -> UriDropped {
        let tag = uri_tag(primary);
        let seq;
        let mut entries: Vec<Arc<Entry>> = {
            let mut ep = self.shared.ledger.lock();
            seq = self.shared.ledger.invalidated(&mut ep, &[&*tag]);
            let mut index = self.shared.lock_tags();
            index
                .take(&*tag)
                .map(Filed::into_entries)
                .unwrap_or_default()
        };
        // The URI's own key first: a long list is cut from its tail.
        let mut keys: Vec<Arc<str>> = vec![primary.into()];
        keys.extend(entries.iter().map(|e| Arc::from(e.key())));
        if let Some(Slot::Entry(e)) = self.get(primary) {
            entries.push(e);
        }
        UriDropped {
            removed: self.remove_keys(entries),
            keys,
            seq,
        }
    }

    /// Whether `entry` is still the one stored under its key, and servable.
    pub fn is_current(&self, entry: &Arc<Entry>) -> bool {
        freshness::servable(entry)
            && matches!(self.get(entry.key()), Some(Slot::Entry(e)) if Arc::ptr_eq(&e, entry))
    }

    /// Drops one key (an explicit key from a peer's event).
    pub fn invalidate_key(&self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        let killed = match slot_of(&self.cache, hash, key) {
            Some(Slot::Entry(e)) => e.kill(),
            Some(Slot::Vary(_)) => false,
            // Nothing, or another key's: it stays.
            None => return false,
        };
        self.cache.invalidate(&hash);
        killed
    }

    /// Drops every entry (after the fleet's log could not be replayed, when
    /// invalidations of any kind may have been missed, an unsafe method's
    /// URI among them) and refuses the fetches begun before; returns how
    /// many entries went.
    pub fn flush(&self) -> usize {
        let mut entries: Vec<Arc<Entry>> = {
            let mut ep = self.shared.ledger.lock();
            self.shared.ledger.flushed(&mut ep);
            let mut index = self.shared.lock_tags();
            index.drain().flat_map(Filed::into_entries).collect()
        };
        // Untagged entries are in no index. Read outside the locks: moka
        // may run its maintenance, whose listener takes the index's lock.
        entries.extend(self.cache.iter().filter_map(|(_, slot)| match slot {
            Slot::Entry(e) => Some(e),
            Slot::Vary(_) => None,
        }));
        self.remove_keys(entries)
    }

    /// Kills the entries at once, then removes them from moka: inline for a
    /// few, on a blocking thread for many, so a 100k-key tag costs the
    /// invalidating request only the marking.
    fn remove_keys(&self, mut entries: Vec<Arc<Entry>>) -> usize {
        // An entry filed under several of the tags appears once per tag.
        entries.sort_unstable_by_key(Arc::as_ptr);
        entries.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let killed = entries.iter().filter(|e| e.kill()).count();
        let (cache, hasher) = (self.cache.clone(), self.hasher.clone());
        let remove = move || {
            for dead in entries {
                // Only the entry that was indexed: a newer one under the
                // same key was stored after this invalidation and is current.
                let hash = hasher.hash_one(dead.key());
                if let Some(Slot::Entry(e)) = cache.get(&hash) {
                    if Arc::ptr_eq(&e, &dead) {
                        cache.invalidate(&hash);
                    }
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if killed > INLINE_REMOVALS => drop(rt.spawn_blocking(remove)),
            _ => remove(),
        }
        killed
    }

    /// Claims the right to fill `key`, or joins the fill in progress.
    pub fn fill(&self, key: &str) -> Fill {
        self.fills.fill(key)
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Applies pending moka maintenance (tests and stats want exact counts).
    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }

    /// Keys currently indexed under `tag` (for tests and the admin API).
    pub fn keys_for_tag(&self, tag: &str) -> Vec<Arc<str>> {
        self.shared
            .lock_tags()
            .get(tag)
            .map(Filed::keys)
            .unwrap_or_default()
    }
}

/// The key a lookup resolved to.
pub enum KeyRef<'k> {
    Primary(&'k str),
    Variant(String),
}

impl KeyRef<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            KeyRef::Primary(k) => k,
            KeyRef::Variant(k) => k,
        }
    }
}

impl Shared {
    fn lock_tags(&self) -> MutexGuard<'_, TagIndex> {
        self.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unindex(&self, entry: &Entry) {
        let mut index = self.lock_tags();
        for tag in entry.tags() {
            if let Some(filed) = index.take(tag).and_then(|f| f.remove(entry)) {
                index.insert(filed);
            }
        }
    }
}

/// The slot under `hash`, if it is `key`'s.
fn slot_of(cache: &Cache<u64, Slot, PreHashed>, hash: u64, key: &str) -> Option<Slot> {
    cache.get(&hash).filter(|slot| match slot {
        Slot::Entry(e) => e.key_bytes() == key.as_bytes(),
        Slot::Vary(v) => *v.key == *key,
    })
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
