//! A stored response and the clock arithmetic around it.
//!
//! An entry is small: its body, its header values and its tags share one
//! exact-size allocation, its field names (and the values that describe a
//! kind of response rather than one response, such as `Content-Type`) are
//! shared with every entry whose origin sent the same ones, and a hit
//! clones a map prebuilt for them and writes the entry's own values into it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AGE, CONTENT_LENGTH};
use http::{HeaderMap, StatusCode};

pub use super::intern::{age_value, NOT_MODIFIED_FIELDS};
use super::intern::{Fields, Value, EMPTY};
use super::outcome::Outcome;

#[derive(Debug)]
pub struct Entry {
    /// The origin's field names without hop-by-hop fields, in the order a
    /// `HeaderMap` iterates them, and their shared values, shared between
    /// entries (see [`Fields`]).
    fields: Arc<Fields>,
    /// One exact-size allocation: the key, the entry's own value of each
    /// field whose value `fields` does not share (in order), and the tags,
    /// each a little-endian `u32` length and its bytes; then the body. A
    /// value is made into a `HeaderValue` when it is sent, which checks its
    /// bytes again (a hit's own values are a few dozen bytes) but spares
    /// every entry 40 bytes per value and an allocation.
    block: Bytes,
    /// When it was stored, in nanoseconds from [`epoch`] (292 years either
    /// way): half an `Instant`.
    stored_at: i64,
    /// The durations below in milliseconds, 49 days at most: a longer one
    /// is cut to that, which can only make a very long-lived entry
    /// revalidate (or leave the cache) sooner. Together with `stored_at`,
    /// this keeps the entry, which every hit reaches, in a 96-byte chunk.
    initial_age: u32,
    fresh_for: u32,
    stale_if_error: u32,
    stale_while_revalidate: u32,
    /// Where the body starts in `block`: after the key, values and tags,
    /// which the proxy's header limits keep far below 4 GiB.
    body_at: u32,
    pub status: StatusCode,
    must_revalidate: bool,
    /// Set by an invalidation: from then on no lookup returns the entry,
    /// fresh or stale, while its removal from moka happens off the
    /// invalidating path (as Varnish's xkey purge marks objects expired).
    dead: AtomicBool,
}

/// How an entry stands at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Fresh,
    /// Expired, but within `stale-while-revalidate`.
    StaleRevalidate,
    /// Expired; usable only when the upstream fails, or to revalidate.
    Stale,
}

pub struct NewEntry {
    pub key: Arc<str>,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub initial_age: Duration,
    pub fresh_for: Duration,
    pub stale_if_error: Duration,
    pub stale_while_revalidate: Duration,
    pub must_revalidate: bool,
    pub tags: Vec<Arc<str>>,
}

impl Entry {
    pub fn new(mut n: NewEntry, now: Instant) -> Entry {
        // The body's length is the one a client gets: hyper writes it from
        // the body (and `with_body` for a HEAD), so it is not stored twice.
        n.headers.remove(CONTENT_LENGTH);
        let fields = Fields::intern(&n.headers);
        let own = || {
            n.headers
                .values()
                .zip(fields.values.iter())
                .filter(|(_, slot)| matches!(slot, Value::Own))
                .map(|(v, _)| v)
        };
        let own_bytes: usize = own().map(|v| 4 + v.len()).sum();
        let tag_bytes: usize = n.tags.iter().map(|t| 4 + t.len()).sum();
        // A body read from the upstream is a slice of the connection's read
        // buffer: copied, it keeps nothing else alive.
        let mut block = Vec::with_capacity(4 + n.key.len() + own_bytes + tag_bytes + n.body.len());
        let mut put = |bytes: &[u8]| {
            block.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            block.extend_from_slice(bytes);
        };
        put(n.key.as_bytes());
        for v in own() {
            put(v.as_bytes());
        }
        for t in &n.tags {
            put(t.as_bytes());
        }
        let body_at = u32::try_from(block.len()).unwrap_or(u32::MAX);
        block.extend_from_slice(&n.body);
        Entry {
            fields,
            block: Bytes::from(block),
            stored_at: since_epoch(now),
            initial_age: millis(n.initial_age),
            fresh_for: millis(n.fresh_for),
            stale_if_error: millis(n.stale_if_error),
            stale_while_revalidate: millis(n.stale_while_revalidate),
            body_at,
            status: n.status,
            must_revalidate: n.must_revalidate,
            dead: AtomicBool::new(false),
        }
    }

    /// When the entry was stored.
    pub fn stored_at(&self) -> Instant {
        let (epoch, at) = (epoch(), self.stored_at.unsigned_abs());
        let at = Duration::from_nanos(at);
        if self.stored_at >= 0 {
            epoch + at
        } else {
            epoch.checked_sub(at).unwrap_or(epoch)
        }
    }

    /// Age the response already had when it arrived (RFC 9111 §4.2.3).
    pub fn initial_age(&self) -> Duration {
        Duration::from_millis(self.initial_age.into())
    }

    /// How long after `stored_at` the entry is fresh.
    pub fn fresh_for(&self) -> Duration {
        Duration::from_millis(self.fresh_for.into())
    }

    pub fn stale_if_error(&self) -> Duration {
        Duration::from_millis(self.stale_if_error.into())
    }

    pub fn stale_while_revalidate(&self) -> Duration {
        Duration::from_millis(self.stale_while_revalidate.into())
    }

    /// The body's length, for the `Content-Length` of a HEAD.
    pub fn body_len(&self) -> usize {
        self.block.len() - self.body_at as usize
    }

    /// `no-cache` / `must-revalidate`: never served stale without asking.
    pub fn must_revalidate(&self) -> bool {
        self.must_revalidate
    }

    /// The key it is stored under.
    pub fn key(&self) -> &str {
        // Written from a `str` by `Entry::new`.
        std::str::from_utf8(self.key_bytes()).unwrap_or_default()
    }

    /// The key's bytes, for comparing without a UTF-8 check.
    pub fn key_bytes(&self) -> &[u8] {
        let key = field(&self.block, 0);
        &self.block[key]
    }

    /// What the entry costs in memory, for moka's weigher.
    pub fn weight(&self) -> u32 {
        u32::try_from(weigh(self.block.len(), self.tags().count())).unwrap_or(u32::MAX)
    }

    /// The body, shared by reference count.
    pub fn body(&self) -> Bytes {
        self.block.slice(self.body_at as usize..)
    }

    pub fn body_bytes(&self) -> &[u8] {
        &self.block[self.body_at as usize..]
    }

    /// Where the first `n` own values end in `block`, reading only their
    /// lengths.
    fn own_end(&self, n: usize) -> usize {
        let mut at = field(&self.block, 0).end;
        for _ in 0..n {
            at = field(&self.block, at).end;
        }
        at
    }

    /// The entry's own values, in order, as `HeaderValue`s sharing `block`.
    fn own_values(&self) -> OwnValues<'_> {
        OwnValues {
            block: &self.block,
            at: self.own_end(0),
            left: self.fields.own,
        }
    }

    /// The entry's tags, in the order they were given.
    pub fn tags(&self) -> Tags<'_> {
        let at = self.own_end(self.fields.own.into());
        Tags {
            rest: self
                .block
                .get(at..self.body_at as usize)
                .unwrap_or_default(),
        }
    }

    /// The entry's `i`th tag (as [`Self::tags`] counts them).
    pub fn tag(&self, i: usize) -> Option<&str> {
        self.tags().nth(i)
    }

    fn resident(&self, now: Instant) -> Duration {
        let nanos = since_epoch(now).saturating_sub(self.stored_at);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Marks the entry invalidated; true if it was alive.
    pub fn kill(&self) -> bool {
        !self.dead.swap(true, Ordering::AcqRel)
    }

    /// The `Age` the entry is served with (RFC 9111 §4.2.3).
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age() + self.resident(now)
    }

    /// Seconds of freshness left; negative once stale (for `Cache-Status`).
    pub fn ttl_secs(&self, now: Instant) -> i64 {
        let fresh = self.fresh_for().as_secs() as i64;
        fresh - self.resident(now).as_secs() as i64
    }

    pub fn freshness(&self, now: Instant) -> Standing {
        let resident = self.resident(now);
        let fresh_for = self.fresh_for();
        if resident < fresh_for {
            Standing::Fresh
        } else if !self.must_revalidate && resident < fresh_for + self.stale_while_revalidate() {
            Standing::StaleRevalidate
        } else {
            Standing::Stale
        }
    }

    /// Whether an expired copy may stand in for a failed upstream.
    pub fn usable_on_error(&self, now: Instant) -> bool {
        self.resident(now) < self.fresh_for() + self.stale_if_error()
    }

    /// The stored fields, in order.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&HeaderName, HeaderValue)> + '_ {
        let mut own = self.own_values();
        self.fields.names.iter().zip(self.fields.values.iter()).map(
            move |(name, slot)| match slot {
                Value::Shared(v) => (name, v.clone()),
                // `Entry::new` kept one own value per `Own` slot.
                Value::Own => (name, own.next().unwrap_or_else(|| EMPTY.clone())),
            },
        )
    }

    /// The value of the `i`th field.
    fn value(&self, i: usize) -> Option<HeaderValue> {
        match self.fields.values.get(i)? {
            Value::Shared(v) => Some(v.clone()),
            Value::Own => Some(shared_value_of(&self.block, self.own_range(i))),
        }
    }

    /// Where the `i`th field's own value is in `block`, found past the own
    /// values before it by their lengths alone.
    fn own_range(&self, i: usize) -> std::ops::Range<usize> {
        let before = self.fields.values[..i]
            .iter()
            .filter(|s| matches!(s, Value::Own))
            .count();
        field(&self.block, self.own_end(before))
    }

    /// Every stored value of one field, in order.
    pub fn header_values<'a>(
        &'a self,
        name: &'a HeaderName,
    ) -> impl Iterator<Item = HeaderValue> + 'a {
        self.headers()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    pub fn etag(&self) -> Option<HeaderValue> {
        self.value_at(self.fields.etag)
    }

    pub fn last_modified(&self) -> Option<HeaderValue> {
        self.value_at(self.fields.last_modified)
    }

    fn value_at(&self, i: Option<u16>) -> Option<HeaderValue> {
        self.value(usize::from(i?))
    }

    /// The bytes of the first `ETag` and `Last-Modified`, for comparing
    /// with a client's validators without making `HeaderValue`s.
    pub fn validators(&self) -> (Option<&[u8]>, Option<&[u8]>) {
        (
            self.value_bytes(self.fields.etag),
            self.value_bytes(self.fields.last_modified),
        )
    }

    fn value_bytes(&self, i: Option<u16>) -> Option<&[u8]> {
        let i = usize::from(i?);
        match self.fields.values.get(i)? {
            Value::Shared(v) => Some(v.as_bytes()),
            Value::Own => self.block.get(self.own_range(i)),
        }
    }

    /// The stored fields a 304 carries ([`NOT_MODIFIED_FIELDS`]), in that
    /// list's order.
    pub fn not_modified_fields(&self) -> impl Iterator<Item = (&HeaderName, HeaderValue)> + '_ {
        self.fields.not_modified.iter().map(|&i| {
            let i = usize::from(i);
            let value = self.value(i).unwrap_or_else(|| EMPTY.clone());
            (&self.fields.names[i], value)
        })
    }

    /// The origin's headers as stored, without this cache's labels.
    pub fn origin_headers(&self) -> HeaderMap {
        self.headers_with_room(0)
    }

    /// The headers of an answer from this entry, labelled with `outcome`:
    /// one allocation and a reference-count bump per value.
    pub fn labelled_headers(&self, outcome: Outcome, age: Duration) -> HeaderMap {
        let mut h = self.headers_with_room(3);
        outcome.write(&mut h);
        h.insert(AGE, age_value(age));
        h
    }

    /// The headers of a hit: a clone of the map prebuilt for the entry's
    /// field names, with its values and `Age` written in place.
    pub fn hit_headers(&self, age: Duration) -> HeaderMap {
        let Some(template) = &self.fields.hit else {
            return self.labelled_headers(Outcome::Hit, age);
        };
        let mut h = template.clone();
        let mut slots = h.values_mut();
        let mut own = self.own_values();
        // The fields' slots first: the map has three more, labels and Age.
        for (kind, slot) in self.fields.values.iter().zip(slots.by_ref()) {
            if let Value::Own = kind {
                if let Some(v) = own.next() {
                    // The placeholder is static: dropping it would do
                    // nothing but an indirect call, on every field of
                    // every hit.
                    std::mem::forget(std::mem::replace(slot, v));
                }
            }
        }
        // Past X-Cache and Cache-Status, which the template holds already.
        if let Some(slot) = slots.nth(2) {
            std::mem::forget(std::mem::replace(slot, age_value(age)));
        }
        h
    }

    fn headers_with_room(&self, extra: usize) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(self.fields.names.len() + extra);
        for (name, value) in self.headers() {
            h.append(name.clone(), value);
        }
        h
    }

    pub fn has_validators(&self) -> bool {
        self.fields.etag.is_some() || self.fields.last_modified.is_some()
    }

    /// How long moka keeps the entry: its freshness plus every window in
    /// which an expired copy is still useful.
    pub fn retention(&self) -> Duration {
        let revalidate = if self.has_validators() {
            self.fresh_for()
                .clamp(Duration::from_secs(10), Duration::from_secs(600))
        } else {
            Duration::ZERO
        };
        let grace = self
            .stale_if_error()
            .max(self.stale_while_revalidate())
            .max(revalidate);
        self.fresh_for() + grace
    }
}

/// The range of the bytes whose little-endian `u32` length is at `at` in
/// `block` (empty past its end: `Entry::new` wrote every length).
fn field(block: &[u8], at: usize) -> std::ops::Range<usize> {
    let len = block
        .get(at..)
        .and_then(|rest| rest.first_chunk::<4>())
        .map_or(0, |len| u32::from_le_bytes(*len) as usize);
    let start = (at + 4).min(block.len());
    start..(start + len).min(block.len())
}

/// An entry's own header values, read from its block.
struct OwnValues<'a> {
    block: &'a Bytes,
    at: usize,
    left: u16,
}

impl Iterator for OwnValues<'_> {
    type Item = HeaderValue;

    fn next(&mut self) -> Option<HeaderValue> {
        self.left = self.left.checked_sub(1)?;
        let range = field(self.block, self.at);
        self.at = range.end;
        Some(shared_value_of(self.block, range))
    }
}

/// The value whose bytes are `range` of `block`, sharing them.
fn shared_value_of(block: &Bytes, range: std::ops::Range<usize>) -> HeaderValue {
    // The bytes were a valid value when stored; they still are.
    HeaderValue::from_maybe_shared(block.slice(range)).unwrap_or_else(|_| EMPTY.clone())
}

/// The tags of an entry, read from its block.
#[derive(Clone)]
pub struct Tags<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tags<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let (tag, rest) = rest.split_at(u32::from_le_bytes(*len) as usize);
        self.rest = rest;
        // Written from a `str` by `Entry::new`.
        Some(std::str::from_utf8(tag).unwrap_or_default())
    }
}

/// What an entry really costs, so `max_bytes` bounds the RSS. Measured with
/// valgrind's DHAT and glibc's malloc on `examples/rss_figures.rs` (chunks
/// rounded to 16 bytes, 8 of header each).
fn weigh(block: usize, tags: usize) -> usize {
    let entry = std::mem::size_of::<Entry>() + 16 + CHUNK;
    // The block and the `Bytes` header its first slice allocated.
    let block = block + CHUNK + 32;
    block + entry + MOKA_ENTRY + tags * TAG_SLOT
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The instant entries count their `stored_at` from: the first time one
/// asks. Instants before it are negative offsets.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(crate) fn since_epoch(t: Instant) -> i64 {
    let epoch = epoch();
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    match t.checked_duration_since(epoch) {
        Some(after) => nanos(after),
        None => -nanos(epoch.duration_since(t)),
    }
}

/// Allocator rounding and bookkeeping, per allocation.
const CHUNK: usize = 16;
/// moka's per-entry node: its key `Arc` (of a `u64`), value entry, entry
/// info, deque nodes and access-order node, hash-table bucket and slot
/// (seven allocations, in glibc's chunks).
const MOKA_ENTRY: usize = 304;
/// A tag's slot in the tag index: 16 bytes and a control byte, at the
/// table's load factor (its text is the entry's own).
const TAG_SLOT: usize = 32;

#[cfg(test)]
#[path = "entry_tests.rs"]
mod tests;
