//! The L1: a moka cache weighed in bytes, the local tag → keys index, the
//! invalidation epochs that keep a slow fetch from storing something an
//! invalidation already removed, and the fill locks that coalesce misses.
//!
//! Invalidation is visible at once: the tag's keys are removed from moka
//! before `invalidate_tags` returns, so the next lookup misses.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use tokio::sync::watch;

use super::entry::Entry;
pub use super::freshness::FetchTicket;
use super::freshness::{self, Ledger};
use super::key;

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

/// Prefix of the tag that files a `Vary` variant under its URI, so an
/// unsafe method can drop all of that URI's variants (RFC 9111 §4.4). An
/// entry stored under the URI itself is found by its key, and only counts
/// as carrying the tag (see [`Store::insert`]), which spares every entry an
/// index slot and the tag's bytes. Local only: never mirrored to Redis.
pub const URI_TAG_PREFIX: &str = "#uri ";

pub fn uri_tag(primary: &str) -> Arc<str> {
    format!("{URI_TAG_PREFIX}{primary}").into()
}

pub fn is_local_tag(tag: &str) -> bool {
    tag.starts_with(URI_TAG_PREFIX)
}

/// What [`Store::invalidate_uri`] dropped.
#[derive(Debug)]
pub struct UriDropped {
    /// Entries removed.
    pub removed: usize,
    /// The keys of the URI's entries (its variants' too), the URI's own
    /// always among them: peers and the L2 drop the same.
    pub keys: Vec<Arc<str>>,
    /// The invalidation's sequence number (see [`FetchTicket::forgive`]).
    pub seq: u64,
}

pub struct Store {
    cache: Cache<u64, Slot, PreHashed>,
    hasher: KeyHasher,
    shared: Arc<Shared>,
}

/// Every tag with the entries filed under it, looked up by the tag's text.
type TagIndex = HashSet<Filed>;

/// One tag of the index and its entries. Most tags (`game:{id}`,
/// `odds:{status}:{id}`, a URI) file one entry, so that case is 16 bytes:
/// the entry and which of its tags it is, whose text the entry holds. At
/// 100k entries a string and a map per tag would be megabytes.
#[derive(Debug)]
enum Filed {
    One(Arc<Entry>, u32),
    Many(Box<Many>),
}

#[derive(Debug)]
struct Many {
    tag: Arc<str>,
    entries: HashSet<ByKey>,
}

/// An entry in a set that finds it by its key.
#[derive(Debug)]
struct ByKey(Arc<Entry>);

impl Borrow<[u8]> for ByKey {
    fn borrow(&self) -> &[u8] {
        self.0.key_bytes()
    }
}

impl Hash for ByKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key_bytes().hash(state);
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &ByKey) -> bool {
        self.0.key_bytes() == other.0.key_bytes()
    }
}

impl Eq for ByKey {}

impl Filed {
    fn tag(&self) -> &str {
        match self {
            Filed::One(e, i) => e.tag(*i as usize).unwrap_or_default(),
            Filed::Many(m) => &m.tag,
        }
    }

    /// Files `entry`'s tag number `i` under `filed`, the tag's slot if any;
    /// also returns the entry of the same key it displaced, if any.
    // `ByKey` hashes the entry's key, which never changes; only its `dead`
    // flag does.
    #[allow(clippy::mutable_key_type)]
    fn insert(filed: Option<Filed>, entry: &Arc<Entry>, i: usize) -> (Filed, Option<Arc<Entry>>) {
        match filed {
            Some(Filed::One(e, _)) if e.key_bytes() != entry.key_bytes() => {
                let mut entries = HashSet::with_capacity(2);
                let tag = Arc::from(entry.tag(i).unwrap_or_default());
                entries.insert(ByKey(e));
                entries.insert(ByKey(Arc::clone(entry)));
                (Filed::Many(Box::new(Many { tag, entries })), None)
            }
            Some(Filed::Many(mut m)) => {
                let displaced = m.entries.replace(ByKey(Arc::clone(entry))).map(|b| b.0);
                (Filed::Many(m), displaced)
            }
            Some(Filed::One(e, _)) => (Filed::One(Arc::clone(entry), i as u32), Some(e)),
            None => (Filed::One(Arc::clone(entry), i as u32), None),
        }
    }

    /// Removes `entry` if it is still the one filed under its key; `None`
    /// when now empty.
    fn remove(self, entry: &Entry) -> Option<Filed> {
        match self {
            Filed::One(e, _) if std::ptr::eq(&*e, entry) => None,
            Filed::One(..) => Some(self),
            Filed::Many(mut m) => {
                let key = entry.key_bytes();
                if m.entries
                    .get(key)
                    .is_some_and(|e| std::ptr::eq(&*e.0, entry))
                {
                    m.entries.remove(key);
                }
                if m.entries.len() > 1 {
                    return Some(Filed::Many(m));
                }
                let ByKey(e) = m.entries.into_iter().next()?;
                let i = e.tags().position(|t| *t == *m.tag)?;
                Some(Filed::One(e, i as u32))
            }
        }
    }

    fn keys(&self) -> Vec<Arc<str>> {
        match self {
            Filed::One(e, _) => vec![Arc::from(e.key())],
            Filed::Many(m) => m.entries.iter().map(|e| Arc::from(e.0.key())).collect(),
        }
    }

    fn into_entries(self) -> Vec<Arc<Entry>> {
        match self {
            Filed::One(e, _) => vec![e],
            Filed::Many(m) => m.entries.into_iter().map(|e| e.0).collect(),
        }
    }
}

impl Borrow<str> for Filed {
    fn borrow(&self) -> &str {
        self.tag()
    }
}

impl Hash for Filed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tag().hash(state);
    }
}

impl PartialEq for Filed {
    fn eq(&self, other: &Filed) -> bool {
        self.tag() == other.tag()
    }
}

impl Eq for Filed {}

/// Invalidations of more entries than this finish their moka removal on a
/// blocking thread; the entries are dead (unservable) before it starts.
const INLINE_REMOVALS: usize = 256;

struct Shared {
    tags: Mutex<TagIndex>,
    /// The invalidations fetches in flight may predate: see [`freshness`].
    ledger: Arc<Ledger>,
    fills: Mutex<HashMap<Arc<str>, watch::Receiver<FillState>>>,
}

#[derive(Clone, Debug)]
pub enum FillState {
    Pending,
    Filled(Arc<Entry>),
    /// The response could not be shared; waiters fetch for themselves.
    NotStored,
    /// The leader went away (client gone, error); one waiter takes over.
    Abandoned,
    /// The leader's fetch failed (connect error, timeout): waiters answer
    /// with that failure too, rather than each asking a failing upstream
    /// again and waiting out a second timeout.
    Failed(Arc<dyn std::error::Error + Send + Sync>),
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
            fills: Mutex::default(),
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
        let mut keys: Vec<Arc<str>> = entries.iter().map(|e| Arc::from(e.key())).collect();
        keys.push(primary.into());
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

    /// Drops every entry that carries a tag (after a Redis resubscribe, when
    /// invalidations may have been missed); returns how many.
    pub fn flush_tagged(&self) -> usize {
        let keys: Vec<Arc<Entry>> = {
            let mut ep = self.shared.ledger.lock();
            self.shared.ledger.flushed(&mut ep);
            let mut index = self.shared.lock_tags();
            // Local tags stay indexed: their entries may outlive the flush
            // (untagged responses), and unsafe methods still need to find them.
            index
                .extract_if(|f| !is_local_tag(f.tag()))
                .flat_map(Filed::into_entries)
                .collect()
        };
        self.remove_keys(keys)
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
        let mut fills = self.shared.lock_fills();
        if let Some(rx) = fills.get(key) {
            return Fill::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(FillState::Pending);
        let key: Arc<str> = key.into();
        fills.insert(Arc::clone(&key), rx);
        Fill::Lead(FillGuard {
            key,
            tx,
            shared: Arc::clone(&self.shared),
            done: false,
        })
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

pub enum Fill {
    Lead(FillGuard),
    Wait(watch::Receiver<FillState>),
}

/// Held by the one request filling a key; waiters hear how it ended.
pub struct FillGuard {
    key: Arc<str>,
    tx: watch::Sender<FillState>,
    shared: Arc<Shared>,
    done: bool,
}

impl FillGuard {
    pub fn finish(mut self, state: FillState) {
        self.release(state);
    }

    fn release(&mut self, state: FillState) {
        if self.done {
            return;
        }
        self.done = true;
        self.shared.lock_fills().remove(&self.key);
        self.tx.send_replace(state);
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.release(FillState::Abandoned);
    }
}

/// Waits for a fill to end; `None` when `timeout` passes first.
pub async fn wait_fill(mut rx: watch::Receiver<FillState>, timeout: Duration) -> Option<FillState> {
    let waited =
        tokio::time::timeout(timeout, rx.wait_for(|s| !matches!(s, FillState::Pending))).await;
    match waited {
        Ok(Ok(state)) => Some(state.clone()),
        // The sender is gone without a verdict: treat as abandoned.
        Ok(Err(_)) => Some(FillState::Abandoned),
        Err(_) => None,
    }
}

impl Shared {
    fn lock_tags(&self) -> MutexGuard<'_, TagIndex> {
        self.tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_fills(&self) -> MutexGuard<'_, HashMap<Arc<str>, watch::Receiver<FillState>>> {
        self.fills.lock().unwrap_or_else(|p| p.into_inner())
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
mod tests {
    use super::*;
    use crate::cache::entry::NewEntry;
    use bytes::Bytes;
    use http::StatusCode;

    fn entry(key: &str, tags: &[&str]) -> Arc<Entry> {
        entry_at(key, tags, Instant::now())
    }

    /// An entry fresh for 60 s, with no grace or validators: its retention.
    fn entry_at(key: &str, tags: &[&str], stored_at: Instant) -> Arc<Entry> {
        Arc::new(Entry::new(
            NewEntry {
                key: key.into(),
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"{}"),
                initial_age: Duration::ZERO,
                fresh_for: Duration::from_secs(60),
                stale_if_error: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                must_revalidate: false,
                tags: tags.iter().map(|t| Arc::from(*t)).collect(),
            },
            stored_at,
        ))
    }

    fn found(store: &Store, key: &str) -> bool {
        matches!(store.lookup(key, &HeaderMap::new()).0, Lookup::Found(_))
    }

    #[test]
    fn expiry_removes_what_is_past_its_retention_and_nothing_else() {
        let store = Store::new(1 << 20);
        let t = store.begin_fetch();
        let at = Instant::now();
        assert!(store.insert(&t, "/a", &[], entry_at("/a", &["game:1"], at)));
        assert!(store.insert(&t, "/b", &[], entry_at("/b", &["game:2"], at)));
        assert_eq!(store.expire(at + Duration::from_secs(59)), 0);
        assert!(found(&store, "/a"));
        // Stored again later, "/b" is kept past the first copy's deadline.
        let later = at + Duration::from_secs(30);
        assert!(store.insert(&t, "/b", &[], entry_at("/b", &["game:2"], later)));
        assert_eq!(store.expire(at + Duration::from_secs(60)), 1);
        assert!(!found(&store, "/a"));
        assert!(found(&store, "/b"));
        store.sync();
        assert!(store.keys_for_tag("game:1").is_empty());
        assert_eq!(store.keys_for_tag("game:2").len(), 1);
        assert_eq!(store.expire(later + Duration::from_secs(60)), 1);
        store.sync();
        assert_eq!(store.entry_count(), 0);
        assert!(store.keys_for_tag("game:2").is_empty());
    }

    #[test]
    fn tag_invalidation_removes_only_tagged_keys() {
        let store = Store::new(1 << 20);
        let t = store.begin_fetch();
        assert!(store.insert(&t, "/a", &[], entry("/a", &["game:1", "sidebar"])));
        assert!(store.insert(&t, "/b", &[], entry("/b", &["game:2"])));
        assert_eq!(store.invalidate_tags(&["game:1"]), 1);
        assert!(!found(&store, "/a"));
        assert!(found(&store, "/b"));
        // The other tag of the removed entry no longer points at it.
        store.sync();
        assert!(store.keys_for_tag("sidebar").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_invalidation_is_visible_at_once_and_removal_follows() {
        let store = Store::new(64 << 20);
        let t = store.begin_fetch();
        let n = INLINE_REMOVALS * 4;
        for i in 0..n {
            let key = format!("/g/{i}");
            assert!(store.insert(&t, &key, &[], entry(&key, &["sidebar"])));
        }
        assert_eq!(store.invalidate_tags(&["sidebar"]), n);
        // Unservable before the background removal has run.
        assert!((0..n).all(|i| !found(&store, &format!("/g/{i}"))));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            store.sync();
            if store.entry_count() == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "entries were never removed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_fetch_that_predates_an_invalidation_is_not_stored() {
        let store = Store::new(1 << 20);
        let early = store.begin_fetch();
        store.invalidate_tags(&["game:1"]);
        assert!(!store.insert(&early, "/a", &[], entry("/a", &["game:1"])));
        assert!(store.insert(&early, "/b", &[], entry("/b", &["game:2"])));
        let late = store.begin_fetch();
        assert!(store.insert(&late, "/a", &[], entry("/a", &["game:1"])));
    }

    #[test]
    fn a_fetch_forgiven_its_own_invalidation_is_stored() {
        let store = Store::new(1 << 20);
        let mut t = store.begin_fetch();
        let (_, seq) = store.invalidate_tags_seq(&["game:1"]);
        t.forgive(seq);
        assert!(store.insert(&t, "/a", &[], entry("/a", &["game:1"])));
        drop(t);
        // Nothing in flight: the epochs are pruned at the next invalidation.
        store.invalidate_tags(&["game:2"]);
        assert!(store.shared.ledger.lock().inflight_is_empty());
    }

    #[test]
    fn a_fetch_is_forgiven_only_its_own_invalidation() {
        // The fetch awaits Redis while a peer invalidates the game, then
        // invalidates it itself: its body may predate the peer's change.
        let store = Store::new(1 << 20);
        let mut t = store.begin_fetch();
        store.invalidate_tags(&["game:1"]);
        let (_, own) = store.invalidate_tags_seq(&["game:1"]);
        t.forgive(own);
        assert!(!store.insert(&t, "/a", &[], entry("/a", &["game:1"])));
        // The same order the other way round: forgiving its own does not
        // forgive the peer's that came after.
        let mut t = store.begin_fetch();
        let (_, own) = store.invalidate_tags_seq(&["game:2"]);
        store.invalidate_tags(&["game:2"]);
        t.forgive(own);
        assert!(!store.insert(&t, "/b", &[], entry("/b", &["game:2"])));
    }

    /// One step of [`interleavings_keep_the_freshness_rule`].
    #[derive(Clone, Debug)]
    enum Op {
        Begin(usize),
        End(usize),
        /// A peer's (or an API's) invalidation of game `t`.
        Invalidate(usize),
        /// Fetch `i`'s own invalidation of game `t`, which it forgives.
        Own(usize, usize),
        Flush,
        /// Fetch `i` stores key `k`, tagged with game `t`.
        Insert(usize, usize, usize),
        Lookup(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..3usize).prop_map(Op::Begin),
            (0..3usize).prop_map(Op::End),
            (0..2usize).prop_map(Op::Invalidate),
            (0..3usize, 0..2usize).prop_map(|(i, t)| Op::Own(i, t)),
            Just(Op::Flush),
            (0..3usize, 0..3usize, 0..2usize).prop_map(|(i, k, t)| Op::Insert(i, k, t)),
            (0..3usize).prop_map(Op::Lookup),
        ]
    }

    proptest::proptest! {
        /// Every interleaving of fetches, invalidations (a peer's or the
        /// fetch's own), flushes, stores and lookups against a model of the
        /// rule in `freshness`: a store succeeds exactly when no
        /// invalidation of its tag, other than its fetch's own, and no
        /// flush came after its fetch began; a lookup finds exactly the
        /// entries stored since the last invalidation of their tag.
        #[test]
        fn interleavings_keep_the_freshness_rule(ops in proptest::collection::vec(op(), 1..60)) {
            let store = Store::new(1 << 20);
            let mut tickets: Vec<Option<FetchTicket>> = vec![None, None, None];
            // The model: the step each fetch began at and what it forgives;
            // each invalidation's step and game (None: a flush); each key's
            // entry: its game and whether it is alive.
            let mut began: Vec<usize> = vec![0; 3];
            let mut forgiven: Vec<Vec<usize>> = vec![Vec::new(); 3];
            let mut invalidations: Vec<(usize, Option<usize>)> = Vec::new();
            let mut keys: Vec<Option<(usize, bool)>> = vec![None; 3];
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Begin(i) => {
                        if tickets[i].is_none() {
                            tickets[i] = Some(store.begin_fetch());
                            began[i] = step;
                            forgiven[i].clear();
                        }
                    }
                    Op::End(i) => tickets[i] = None,
                    Op::Invalidate(t) => {
                        store.invalidate_tags(&[format!("game:{t}")]);
                        invalidations.push((step, Some(t)));
                        for k in keys.iter_mut().flatten() {
                            if k.0 == t {
                                k.1 = false;
                            }
                        }
                    }
                    Op::Own(i, t) => {
                        let Some(ticket) = tickets[i].as_mut() else { continue };
                        let (_, seq) = store.invalidate_tags_seq(&[format!("game:{t}")]);
                        ticket.forgive(seq);
                        forgiven[i].push(step);
                        invalidations.push((step, Some(t)));
                        for k in keys.iter_mut().flatten() {
                            if k.0 == t {
                                k.1 = false;
                            }
                        }
                    }
                    Op::Flush => {
                        store.flush_tagged();
                        invalidations.push((step, None));
                        for k in keys.iter_mut().flatten() {
                            k.1 = false;
                        }
                    }
                    Op::Insert(i, k, t) => {
                        let Some(ticket) = tickets[i].as_ref() else { continue };
                        let key = format!("/k{k}");
                        let stored = store.insert(ticket, &key, &[], entry(&key, &[&format!("game:{t}")]));
                        let superseded = invalidations.iter().any(|&(at, game)| {
                            at > began[i]
                                && (game.is_none() || game == Some(t))
                                && !(game.is_some() && forgiven[i].contains(&at))
                        });
                        proptest::prop_assert_eq!(stored, !superseded, "insert at step {}", step);
                        if stored {
                            keys[k] = Some((t, true));
                        }
                    }
                    Op::Lookup(k) => {
                        let alive = keys[k].is_some_and(|(_, alive)| alive);
                        proptest::prop_assert_eq!(found(&store, &format!("/k{k}")), alive, "lookup at step {}", step);
                    }
                }
            }
        }
    }

    #[test]
    fn replacing_entries_in_a_full_store_never_deadlocks() {
        // A full store evicts; moka may run its maintenance (and so the
        // eviction listener, which takes the tag index's lock) inside any
        // call. Replacing entries under the locks of `insert` once did.
        let (done, finished) = std::sync::mpsc::channel();
        let store = Arc::new(Store::new(16 << 10));
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (store, done) = (Arc::clone(&store), done.clone());
                std::thread::spawn(move || {
                    let t = store.begin_fetch();
                    for i in 0..20_000 {
                        let key = format!("/k{}", (i * 7 + w) % 64);
                        store.insert(&t, &key, &[], entry(&key, &["sidebar", "game:1"]));
                        found(&store, &key);
                    }
                    let _ = done.send(());
                })
            })
            .collect();
        for _ in &workers {
            finished
                .recv_timeout(Duration::from_secs(60))
                .expect("an insert deadlocked against the eviction listener");
        }
        for w in workers {
            w.join().unwrap();
        }
    }

    #[test]
    fn invalidated_entries_are_not_current_for_the_l2_writer() {
        let store = Store::new(1 << 20);
        let t = store.begin_fetch();
        let a = entry("/a", &["game:1"]);
        assert!(store.insert(&t, "/a", &[], Arc::clone(&a)));
        assert!(store.is_current(&a));
        // Killed, and still in moka until the removal runs.
        a.kill();
        assert!(!store.is_current(&a));
    }

    #[test]
    fn insert_and_invalidate_race_never_leaves_a_superseded_entry_alive() {
        // Real threads: one stores entries fetched before an invalidation
        // that another thread makes at the same time. Whichever wins, no
        // entry of the invalidated tag that predates it may be found.
        for round in 0..200 {
            let store = Arc::new(Store::new(1 << 20));
            let tickets: Vec<FetchTicket> = (0..8).map(|_| store.begin_fetch()).collect();
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let (s, b) = (Arc::clone(&store), Arc::clone(&barrier));
            let inserter = std::thread::spawn(move || {
                b.wait();
                for (i, t) in tickets.iter().enumerate() {
                    let key = format!("/r{round}/{i}");
                    s.insert(t, &key, &[], entry(&key, &["game:1"]));
                }
            });
            barrier.wait();
            store.invalidate_tags(&["game:1"]);
            inserter.join().unwrap();
            for i in 0..8 {
                assert!(
                    !found(&store, &format!("/r{round}/{i}")),
                    "round {round}: entry {i} survived an invalidation newer than its fetch"
                );
            }
        }
    }

    #[test]
    fn while_cut_off_old_tagged_entries_revalidate() {
        let store = Store::new(1 << 20);
        store.ledger().set_outage_bound(Duration::from_secs(5));
        let old = entry_at("/a", &["game:1"], Instant::now() - Duration::from_secs(10));
        let plain = entry_at("/p", &[], Instant::now() - Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(store.freshness(&old, now), crate::cache::Standing::Fresh);
        store.ledger().join_fleet();
        assert_eq!(store.freshness(&old, now), crate::cache::Standing::Stale);
        assert!(!store.ledger().usable_on_error(&old, now));
        store.ledger().caught_up(now);
        assert_eq!(store.freshness(&old, now), crate::cache::Standing::Fresh);
        // Silent for longer than a heartbeat: cut off again.
        let later = now + crate::cache::freshness::LOG_SILENCE + Duration::from_millis(10);
        assert!(store.ledger().is_cut_off(later));
        store.ledger().join_fleet();
        // Untagged entries are not the fleet's to invalidate.
        assert_eq!(store.freshness(&plain, now), crate::cache::Standing::Fresh);
        let young = entry("/y", &["game:1"]);
        assert_eq!(store.freshness(&young, now), crate::cache::Standing::Fresh);
    }

    #[test]
    fn flush_drops_tagged_entries_and_blocks_older_fetches() {
        let store = Store::new(1 << 20);
        let t = store.begin_fetch();
        store.insert(&t, "/a", &[], entry("/a", &["game:1"]));
        store.insert(&t, "/plain", &[], entry("/plain", &[]));
        store.insert(&t, "/local", &[], entry("/local", &[&uri_tag("/local")]));
        assert_eq!(store.flush_tagged(), 1);
        assert!(!found(&store, "/a"));
        assert!(found(&store, "/plain"));
        // The URI tag of an untagged entry survives the flush.
        assert_eq!(store.keys_for_tag(&uri_tag("/local")).len(), 1);
        assert!(!store.insert(&t, "/a", &[], entry("/a", &["game:1"])));
    }

    #[test]
    fn an_unsafe_method_drops_the_uri_its_variants_and_its_fetches() {
        let store = Store::new(1 << 20);
        let t = store.begin_fetch();
        let lang = [HeaderName::from_static("accept-language")];
        assert!(store.insert(&t, "/a", &[], entry("/a", &["game:1"])));
        assert!(store.insert(&t, "/v", &lang, entry("/v|fr", &[&uri_tag("/v")])));
        assert!(store.insert(&t, "/v", &lang, entry("/v|de", &[&uri_tag("/v")])));
        assert!(store.insert(&t, "/b", &[], entry("/b", &["game:1"])));
        // A plain entry is not indexed under its URI: its key finds it.
        assert!(store.keys_for_tag(&uri_tag("/a")).is_empty());

        let in_flight = store.begin_fetch();
        let dropped = store.invalidate_uri("/a");
        assert_eq!((dropped.removed, dropped.keys), (1, vec![Arc::from("/a")]));
        assert!(!found(&store, "/a"));
        assert!(found(&store, "/b"));
        assert_eq!(store.keys_for_tag("game:1"), [Arc::from("/b")]);
        assert!(
            !store.insert(&in_flight, "/a", &[], entry("/a", &["game:1"])),
            "a response fetched before the unsafe method was stored"
        );
        assert!(store.insert(&in_flight, "/b", &[], entry("/b", &["game:1"])));

        let dropped = store.invalidate_uri("/v");
        assert_eq!(dropped.removed, 2, "both variants");
        let mut keys = dropped.keys;
        keys.sort();
        assert_eq!(
            keys,
            [Arc::from("/v"), Arc::from("/v|de"), Arc::from("/v|fr")]
        );
        assert!(!found(&store, "/v|fr") && !found(&store, "/v|de"));
        // A URI with nothing cached still names itself, for the L2.
        assert_eq!(store.invalidate_uri("/none").keys, [Arc::from("/none")]);
    }

    #[test]
    fn replacing_an_entry_keeps_it_indexed() {
        let store = Store::new(1 << 20);
        let t = store.begin_fetch();
        store.insert(&t, "/a", &[], entry("/a", &["game:1"]));
        store.insert(&t, "/a", &[], entry("/a", &["game:1"]));
        store.sync();
        assert_eq!(store.invalidate_tags(&["game:1"]), 1);
        assert!(!found(&store, "/a"));
    }

    #[test]
    fn vary_slots_lead_to_variants() {
        let store = Store::new(1 << 20);
        let t = store.begin_fetch();
        let names = [HeaderName::from_static("accept-language")];
        let mut en = HeaderMap::new();
        en.insert("accept-language", "en".parse().unwrap());
        let vkey = key::variant("/v", &names, &en);
        store.insert(&t, "/v", &names, entry(&vkey, &[]));
        assert!(matches!(store.lookup("/v", &en).0, Lookup::Found(_)));
        let mut de = HeaderMap::new();
        de.insert("accept-language", "de".parse().unwrap());
        let (miss, k) = store.lookup("/v", &de);
        assert!(matches!(miss, Lookup::Miss));
        assert_ne!(k.as_str(), vkey);
    }

    #[test]
    fn shared_reads_predate_invalidations_still_deleting_in_redis() {
        let store = Store::new(1 << 20);
        let hold = store.begin_hold();
        store.invalidate_tags(&["game:1"]);
        // Read from Redis while the invalidation is still deleting there:
        // the copy may be the old one.
        let read = store.begin_shared_fetch();
        assert!(!store.insert(&read, "/a", &[], entry("/a", &["game:1"])));
        assert!(store.insert(&read, "/b", &[], entry("/b", &["game:2"])));
        drop(hold);
        let read = store.begin_shared_fetch();
        let a = entry("/a", &["game:1"]);
        assert!(store.insert(&read, "/a", &[], Arc::clone(&a)));
        assert!(store.is_current(&a));
        // Another entry under the same key is not the stored one.
        assert!(!store.is_current(&entry("/a", &["game:1"])));
    }

    #[tokio::test]
    async fn one_leader_per_key_and_waiters_hear_the_outcome() {
        let store = Store::new(1 << 20);
        let Fill::Lead(guard) = store.fill("/k") else {
            panic!("first is leader")
        };
        let Fill::Wait(rx) = store.fill("/k") else {
            panic!("second waits")
        };
        let e = entry("/k", &[]);
        guard.finish(FillState::Filled(Arc::clone(&e)));
        match wait_fill(rx, Duration::from_secs(5)).await {
            Some(FillState::Filled(got)) => assert!(Arc::ptr_eq(&got, &e)),
            other => panic!("unexpected {other:?}"),
        }
        // A dropped leader releases waiters as abandoned.
        let Fill::Lead(guard) = store.fill("/k") else {
            panic!("lock was released")
        };
        let Fill::Wait(rx) = store.fill("/k") else {
            panic!()
        };
        drop(guard);
        assert!(matches!(
            wait_fill(rx, Duration::from_secs(5)).await,
            Some(FillState::Abandoned)
        ));
    }

    #[test]
    fn shared_tags_file_each_entry_until_it_goes() {
        let store = Store::new(1 << 20);
        let t = store.begin_fetch();
        store.insert(&t, "/a", &[], entry("/a", &["game:1", "sidebar"]));
        store.insert(&t, "/b", &[], entry("/b", &["sidebar", "game:2"]));
        store.insert(&t, "/c", &[], entry("/c", &["sidebar"]));
        let mut keys = store.keys_for_tag("sidebar");
        keys.sort();
        assert_eq!(keys, [Arc::from("/a"), Arc::from("/b"), Arc::from("/c")]);
        // Replaced, /b stays filed once; dropped, /c is no longer filed.
        store.insert(&t, "/b", &[], entry("/b", &["sidebar", "game:2"]));
        assert!(store.invalidate_key("/c"));
        store.sync();
        let mut keys = store.keys_for_tag("sidebar");
        keys.sort();
        assert_eq!(keys, [Arc::from("/a"), Arc::from("/b")]);
        assert!(store.invalidate_key("/a"));
        store.sync();
        // Back to one entry: the tag is still found, under its text.
        assert_eq!(store.keys_for_tag("sidebar"), [Arc::from("/b")]);
        assert_eq!(store.keys_for_tag("game:1"), Vec::<Arc<str>>::new());
        assert_eq!(store.invalidate_tags(&["sidebar"]), 1);
        assert!(!found(&store, "/b"));
        store.sync();
        assert!(store.shared.lock_tags().is_empty());
    }
}
