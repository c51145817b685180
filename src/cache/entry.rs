//! A stored response and the clock arithmetic around it.
//!
//! Everything a hit needs is computed once, when the entry is filled: the
//! response headers including `X-Cache` and `Cache-Status` are prebuilt, and
//! the body is a `Bytes` that each hit clones by reference count.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, AGE, ETAG, LAST_MODIFIED};
use http::{HeaderMap, StatusCode};

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Distinguishes two entries stored under one key, so an eviction notice
/// for the old one never unindexes the new one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub key: Arc<str>,
    pub status: StatusCode,
    /// The origin's headers without hop-by-hop fields, as a plain slice: a
    /// `HeaderMap` costs ~1.4 kB for eight fields, more than most bodies'
    /// headers are worth, so each answer builds its map from this. Values
    /// live in one block of their own, never in the upstream connection's
    /// read buffer.
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// The map a hit clones, built at the entry's first hit: hot entries
    /// answer at clone speed, cold ones never pay for a map.
    hit_map: OnceLock<HeaderMap>,
    pub body: Bytes,
    pub stored_at: Instant,
    /// Age the response already had when it arrived (RFC 9111 §4.2.3).
    pub initial_age: Duration,
    /// How long after `stored_at` the entry is fresh.
    pub fresh_for: Duration,
    pub stale_if_error: Duration,
    pub stale_while_revalidate: Duration,
    /// `no-cache` / `must-revalidate`: never served stale without asking.
    pub must_revalidate: bool,
    pub tags: Box<[Arc<str>]>,
    pub weight: u32,
    /// Set by an invalidation: from then on no lookup returns the entry,
    /// fresh or stale, while its removal from moka happens off the
    /// invalidating path (as Varnish's xkey purge marks objects expired).
    dead: AtomicBool,
}

/// How an entry stands at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
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
    pub fn new(n: NewEntry, now: Instant) -> Entry {
        let headers = compact(&n.headers);
        // What the entry really costs, so `max_bytes` bounds the RSS: the
        // body, each field (its bytes and its slot), key and tags, and a
        // fixed share for the entry, moka's node and the tag index.
        let header_bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + HEADER_SLOT)
            .sum::<usize>()
            + (headers.len() + 3) * HIT_MAP_SLOT;
        let tag_bytes: usize = n.tags.iter().map(|t| t.len() + TAG_SLOT).sum();
        let weight = n.body.len() + header_bytes + tag_bytes + 2 * n.key.len() + ENTRY_OVERHEAD;
        Entry {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            key: n.key,
            status: n.status,
            headers,
            hit_map: OnceLock::new(),
            // A body read from the upstream is a slice of the connection's
            // read buffer: copied, it keeps nothing else alive.
            body: Bytes::copy_from_slice(&n.body),
            stored_at: now,
            initial_age: n.initial_age,
            fresh_for: n.fresh_for,
            stale_if_error: n.stale_if_error,
            stale_while_revalidate: n.stale_while_revalidate,
            must_revalidate: n.must_revalidate,
            tags: n.tags.into_boxed_slice(),
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            dead: AtomicBool::new(false),
        }
    }

    fn resident(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
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
        self.initial_age + self.resident(now)
    }

    /// Seconds of freshness left; negative once stale (for `Cache-Status`).
    pub fn ttl_secs(&self, now: Instant) -> i64 {
        let fresh = self.fresh_for.as_secs() as i64;
        fresh - self.resident(now).as_secs() as i64
    }

    pub fn freshness(&self, now: Instant) -> Freshness {
        let resident = self.resident(now);
        if resident < self.fresh_for {
            Freshness::Fresh
        } else if !self.must_revalidate && resident < self.fresh_for + self.stale_while_revalidate {
            Freshness::StaleRevalidate
        } else {
            Freshness::Stale
        }
    }

    /// Whether an expired copy may stand in for a failed upstream.
    pub fn usable_on_error(&self, now: Instant) -> bool {
        self.resident(now) < self.fresh_for + self.stale_if_error
    }

    /// The stored fields, in order.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// Every stored value of one field, in order.
    pub fn header_values<'a>(
        &'a self,
        name: &'a HeaderName,
    ) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub fn etag(&self) -> Option<&HeaderValue> {
        self.header_values(&ETAG).next()
    }

    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.header_values(&LAST_MODIFIED).next()
    }

    /// The origin's headers as stored, without this cache's labels.
    pub fn origin_headers(&self) -> HeaderMap {
        self.headers_with_room(0)
    }

    /// The headers of an answer from this entry, labelled: one allocation
    /// and a reference-count bump per value.
    pub fn labelled_headers(
        &self,
        x_cache: HeaderValue,
        cache_status: HeaderValue,
        age: Duration,
    ) -> HeaderMap {
        let mut h = self.headers_with_room(3);
        h.insert(X_CACHE.clone(), x_cache);
        h.insert(CACHE_STATUS.clone(), cache_status);
        h.insert(AGE, age_value(age));
        h
    }

    /// The headers of a hit: a clone of the entry's prebuilt map, plus `Age`.
    pub fn hit_headers(&self, age: Duration) -> HeaderMap {
        let mut h = self
            .hit_map
            .get_or_init(|| {
                self.labelled_headers(
                    HeaderValue::from_static("HIT"),
                    HeaderValue::from_static("oddscache; hit"),
                    Duration::ZERO,
                )
            })
            .clone();
        h.insert(AGE, age_value(age));
        h
    }

    fn headers_with_room(&self, extra: usize) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(self.headers.len() + extra);
        for (name, value) in self.headers.iter() {
            h.append(name.clone(), value.clone());
        }
        h
    }

    pub fn has_validators(&self) -> bool {
        self.etag().is_some() || self.last_modified().is_some()
    }

    /// How long moka keeps the entry: its freshness plus every window in
    /// which an expired copy is still useful.
    pub fn retention(&self) -> Duration {
        let revalidate = if self.has_validators() {
            self.fresh_for
                .clamp(Duration::from_secs(10), Duration::from_secs(600))
        } else {
            Duration::ZERO
        };
        let grace = self
            .stale_if_error
            .max(self.stale_while_revalidate)
            .max(revalidate);
        self.fresh_for + grace
    }
}

/// Bytes one stored header field costs beyond its name and value.
const HEADER_SLOT: usize = 80;
/// Bytes one field costs in the hit map, once the entry has been hit.
const HIT_MAP_SLOT: usize = 170;
/// Bytes one tag costs beyond its text: its `Arc`, its index slot.
const TAG_SLOT: usize = 96;
/// The entry itself, moka's node and expiry bookkeeping, the key's `Arc`.
const ENTRY_OVERHEAD: usize = 640;

/// Copies the fields with every value in one shared block, so an entry
/// holds one small allocation for its values instead of pinning the
/// buffers they were parsed from.
fn compact(headers: &HeaderMap) -> Box<[(HeaderName, HeaderValue)]> {
    let total: usize = headers.iter().map(|(_, v)| v.len()).sum();
    let mut block = BytesMut::with_capacity(total);
    for (_, v) in headers {
        block.extend_from_slice(v.as_bytes());
    }
    let block = block.freeze();
    let mut at = 0;
    headers
        .iter()
        .map(|(name, v)| {
            let len = v.len();
            // The bytes were a valid value a moment ago; they still are.
            let value = HeaderValue::from_maybe_shared(block.slice(at..at + len))
                .unwrap_or_else(|_| v.clone());
            at += len;
            (name.clone(), value)
        })
        .collect()
}

/// `Age` values are prebuilt for the first hour so a hit formats nothing.
pub fn age_value(age: Duration) -> HeaderValue {
    const PREBUILT: usize = 3600;
    static TABLE: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let secs = age.as_secs();
    let table = TABLE.get_or_init(|| (0..PREBUILT as u64).map(HeaderValue::from).collect());
    usize::try_from(secs)
        .ok()
        .and_then(|s| table.get(s))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fresh_for: u64, swr: u64, sie: u64) -> Entry {
        Entry::new(
            NewEntry {
                key: "/k".into(),
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"{}"),
                initial_age: Duration::from_secs(2),
                fresh_for: Duration::from_secs(fresh_for),
                stale_if_error: Duration::from_secs(sie),
                stale_while_revalidate: Duration::from_secs(swr),
                must_revalidate: false,
                tags: vec![],
            },
            Instant::now(),
        )
    }

    #[test]
    fn freshness_windows() {
        let e = entry(10, 5, 60);
        let t0 = e.stored_at;
        assert_eq!(e.freshness(t0), Freshness::Fresh);
        assert_eq!(e.age(t0 + Duration::from_secs(3)).as_secs(), 5);
        assert_eq!(e.ttl_secs(t0 + Duration::from_secs(3)), 7);
        assert_eq!(
            e.freshness(t0 + Duration::from_secs(11)),
            Freshness::StaleRevalidate
        );
        assert_eq!(e.freshness(t0 + Duration::from_secs(15)), Freshness::Stale);
        assert_eq!(e.ttl_secs(t0 + Duration::from_secs(15)), -5);
        assert!(e.usable_on_error(t0 + Duration::from_secs(69)));
        assert!(!e.usable_on_error(t0 + Duration::from_secs(70)));
        assert_eq!(e.retention(), Duration::from_secs(70));
    }

    #[test]
    fn labelled_headers_and_age() {
        let e = entry(10, 0, 0);
        let h = e.labelled_headers(
            HeaderValue::from_static("HIT"),
            HeaderValue::from_static("oddscache; hit"),
            Duration::from_secs(7),
        );
        assert_eq!(h[&X_CACHE], "HIT");
        assert_eq!(h[&CACHE_STATUS], "oddscache; hit");
        assert_eq!(h[AGE], "7");
        assert!(e.origin_headers().is_empty());
        let hit = e.hit_headers(Duration::from_secs(9));
        assert_eq!(hit[&X_CACHE], "HIT");
        assert_eq!(hit[AGE], "9");
        assert_eq!(e.hit_headers(Duration::from_secs(10))[AGE], "10");
        assert_eq!(age_value(Duration::from_secs(42)), "42");
        assert_eq!(age_value(Duration::from_secs(100_000)), "100000");
    }
}
