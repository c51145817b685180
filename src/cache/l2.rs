//! The shared L2's value (`{prefix}resp:{cache_key}`, SPEC §6): one stored
//! response in a compact, versioned, length-prefixed binary layout. Pure:
//! the caller passes the clocks in, and nothing here touches Redis.
//!
//! Layout, integers big-endian:
//!
//! ```text
//! "OCR" version:u8=2 status:u16 flags:u8 (bit 0: must_revalidate)
//! stored_at_unix_ms:u64 fetch_began_unix_ms:u64 initial_age_ms:u64 fresh_for_ms:u64
//! stale_if_error_ms:u64 stale_while_revalidate_ms:u64
//! headers:u32 { name_len:u32 name value_len:u32 value }*
//! tags:u32 { len:u32 utf8 }*
//! body_len:u32 body
//! ```
//!
//! `fetch_began` is when the fetch that produced the response began, by the
//! storing replica's clock: a reader refuses a copy whose fetch began before
//! an invalidation of one of its tags that it knows of (see
//! `freshness::Marks`). Version 1 values, which lack it, are refused.
//!
//! Nothing may follow the body. Decoding checks every length against what
//! is left before it allocates, so a corrupt or hostile value costs at most
//! its own size and is refused with an error, never a panic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use super::entry::{Entry, NewEntry};
use super::policy::strip_hop_by_hop;

const MAGIC: &[u8; 3] = b"OCR";
pub const VERSION: u8 = 2;
/// More header fields or tags than this is not a response we stored.
pub const MAX_HEADERS: usize = 1024;
pub const MAX_TAGS: usize = 4096;
/// Bytes of the fixed part, up to the header count included.
const FIXED: usize = 3 + 1 + 2 + 1 + 6 * 8 + 4;

const MUST_REVALIDATE: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated stored response")]
    Truncated,
    #[error("not a stored response")]
    Magic,
    #[error("unsupported stored response version {0}")]
    Version(u8),
    #[error("bad status {0}")]
    Status(u16),
    #[error("too many {0}")]
    TooMany(&'static str),
    #[error("bad header field")]
    Header,
    #[error("bad tag")]
    Tag,
    #[error("{0} bytes after the body")]
    Trailing(usize),
}

/// A decoded value: everything needed to rebuild an [`Entry`].
#[derive(Debug, PartialEq)]
pub struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the entry was stored, by the wall clock of the replica that stored it.
    pub stored_at_ms: u64,
    /// When its fetch began, by the same clock.
    pub fetch_began_ms: u64,
    pub initial_age: Duration,
    pub fresh_for: Duration,
    pub stale_if_error: Duration,
    pub stale_while_revalidate: Duration,
    pub must_revalidate: bool,
    pub tags: Vec<Arc<str>>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn put_chunk(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.put_u32(u32::try_from(bytes.len()).ok()?);
    out.put_slice(bytes);
    Some(())
}

/// Encodes `entry`, stored at `stored_at_ms` and fetched from
/// `fetch_began_ms` (unix milliseconds). `None`
/// when a part does not fit the layout (a body or field over 4 GiB, or more
/// fields or tags than a decoder accepts).
pub fn encode(entry: &Entry, stored_at_ms: u64, fetch_began_ms: u64) -> Option<Vec<u8>> {
    if entry.headers().len() > MAX_HEADERS || entry.tags().count() > MAX_TAGS {
        return None;
    }
    let headers: usize = entry
        .headers()
        .map(|(k, v)| 8 + k.as_str().len() + v.len())
        .sum();
    let tags: usize = entry.tags().map(|t| 4 + t.len()).sum();
    let body = entry.body_bytes();
    let mut out = Vec::with_capacity(FIXED + headers + 4 + tags + 4 + body.len());
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u16(entry.status.as_u16());
    out.put_u8(if entry.must_revalidate() {
        MUST_REVALIDATE
    } else {
        0
    });
    out.put_u64(stored_at_ms);
    out.put_u64(fetch_began_ms);
    for d in [
        entry.initial_age(),
        entry.fresh_for(),
        entry.stale_if_error(),
        entry.stale_while_revalidate(),
    ] {
        out.put_u64(millis(d));
    }
    out.put_u32(entry.headers().len() as u32);
    for (name, value) in entry.headers() {
        put_chunk(&mut out, name.as_str().as_bytes())?;
        put_chunk(&mut out, value.as_bytes())?;
    }
    out.put_u32(entry.tags().count() as u32);
    for tag in entry.tags() {
        put_chunk(&mut out, tag.as_bytes())?;
    }
    put_chunk(&mut out, body)?;
    Some(out)
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.left() {
            return Err(DecodeError::Truncated);
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(&self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    fn millis(&mut self) -> Result<Duration, DecodeError> {
        self.u64().map(Duration::from_millis)
    }

    fn chunk(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A count of items each at least `min` bytes long, checked against
    /// both `max` and the bytes left, so no allocation outgrows the input.
    fn count(&mut self, max: usize, min: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError::TooMany(what));
        }
        if n.saturating_mul(min) > self.left() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
}

/// Decodes a value written by [`encode`]. The body and header values share
/// `bytes`' buffer. Hop-by-hop fields are dropped even if a writer left some.
pub fn decode(bytes: Bytes) -> Result<Stored, DecodeError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    if &r.array::<3>().map_err(|_| DecodeError::Magic)? != MAGIC {
        return Err(DecodeError::Magic);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let code = r.u16()?;
    let status = StatusCode::from_u16(code).map_err(|_| DecodeError::Status(code))?;
    let flags = r.u8()?;
    let stored_at_ms = r.u64()?;
    let fetch_began_ms = r.u64()?;
    let initial_age = r.millis()?;
    let fresh_for = r.millis()?;
    let stale_if_error = r.millis()?;
    let stale_while_revalidate = r.millis()?;
    let n = r.count(MAX_HEADERS, 8, "header fields")?;
    let mut headers = HeaderMap::with_capacity(n);
    for _ in 0..n {
        let name = HeaderName::from_bytes(&r.chunk()?).map_err(|_| DecodeError::Header)?;
        let value = HeaderValue::from_maybe_shared(r.chunk()?).map_err(|_| DecodeError::Header)?;
        headers.append(name, value);
    }
    strip_hop_by_hop(&mut headers);
    let n = r.count(MAX_TAGS, 4, "tags")?;
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        let tag = r.chunk()?;
        let tag = std::str::from_utf8(&tag).map_err(|_| DecodeError::Tag)?;
        tags.push(Arc::from(tag));
    }
    let body = r.chunk()?;
    if r.left() > 0 {
        return Err(DecodeError::Trailing(r.left()));
    }
    Ok(Stored {
        status,
        headers,
        body,
        stored_at_ms,
        fetch_began_ms,
        initial_age,
        fresh_for,
        stale_if_error,
        stale_while_revalidate,
        must_revalidate: flags & MUST_REVALIDATE != 0,
        tags,
    })
}

impl Stored {
    /// Freshness left at `now_ms` (unix milliseconds). A stored-at in the
    /// future (a peer's clock ahead of ours) counts as just stored.
    pub fn fresh_left(&self, now_ms: u64) -> Duration {
        self.fresh_for.saturating_sub(self.resident(now_ms))
    }

    fn resident(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.stored_at_ms))
    }

    /// Rebuilds the entry as stored under `key`, stored when it was (by
    /// `now_ms`'s reckoning): it keeps its age, expires at the same moment
    /// and keeps its stale windows, and the outage bound (which counts from
    /// the store) ages it from its first store, not from this read.
    /// `None` when it has no freshness left, since an L2 copy only ever
    /// stands in for a fresh fill.
    pub fn into_entry(self, key: Arc<str>, now_ms: u64, now: Instant) -> Option<Entry> {
        let fresh_for = self.fresh_left(now_ms);
        if fresh_for.is_zero() {
            return None;
        }
        let resident = self.resident(now_ms);
        let stored_at = now.checked_sub(resident).unwrap_or(now);
        let resident = now.saturating_duration_since(stored_at);
        Some(Entry::new(
            NewEntry {
                key,
                status: self.status,
                headers: self.headers,
                body: self.body,
                initial_age: self.initial_age,
                fresh_for: resident.saturating_add(fresh_for),
                stale_if_error: self.stale_if_error,
                stale_while_revalidate: self.stale_while_revalidate,
                must_revalidate: self.must_revalidate,
                tags: self.tags,
            },
            stored_at,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(
        status: u16,
        headers: &[(&str, &[u8])],
        body: &[u8],
        tags: &[&str],
        times_ms: [u64; 4],
        must_revalidate: bool,
    ) -> Entry {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        let [age, fresh, sie, swr] = times_ms.map(Duration::from_millis);
        Entry::new(
            NewEntry {
                key: "/k".into(),
                status: StatusCode::from_u16(status).unwrap(),
                headers: h,
                body: Bytes::copy_from_slice(body),
                initial_age: age,
                fresh_for: fresh,
                stale_if_error: sie,
                stale_while_revalidate: swr,
                must_revalidate,
                tags: tags.iter().map(|t| Arc::from(*t)).collect(),
            },
            Instant::now(),
        )
    }

    fn sample() -> Entry {
        entry(
            200,
            &[
                ("content-type", b"application/json"),
                ("set-cookie-not", b"a"),
                ("x-multi", b"1"),
                ("x-multi", b"2"),
                ("etag", b"\"v1\""),
            ],
            br#"{"game_id":"g-1","status":"live"}"#,
            &["game:g-1", "odds:live:g-1", "#uri /api/v1/games/g-1/odds"],
            [2000, 5000, 300_000, 0],
            false,
        )
    }

    fn same(e: &Entry, s: &Stored) {
        assert_eq!(s.status, e.status);
        assert_eq!(s.headers, e.origin_headers());
        assert_eq!(s.body, e.body());
        assert_eq!(s.initial_age, e.initial_age());
        assert_eq!(s.fresh_for, e.fresh_for());
        assert_eq!(s.stale_if_error, e.stale_if_error());
        assert_eq!(s.stale_while_revalidate, e.stale_while_revalidate());
        assert_eq!(s.must_revalidate, e.must_revalidate());
        assert!(s.tags.iter().map(|t| &**t).eq(e.tags()));
    }

    #[test]
    fn round_trips() {
        let e = sample();
        let s = decode(
            encode(&e, 1_700_000_000_000, 1_700_000_000_000)
                .unwrap()
                .into(),
        )
        .unwrap();
        assert_eq!(s.stored_at_ms, 1_700_000_000_000);
        same(&e, &s);
    }

    #[test]
    fn hop_by_hop_fields_are_dropped() {
        let e = entry(
            200,
            &[
                ("connection", b"x-secret"),
                ("x-secret", b"1"),
                ("keep-alive", b"5"),
                ("x-ok", b"1"),
            ],
            b"",
            &[],
            [0, 1000, 0, 0],
            true,
        );
        let s = decode(encode(&e, 0, 0).unwrap().into()).unwrap();
        assert_eq!(s.headers.len(), 1, "{:?}", s.headers);
        assert!(s.headers.contains_key("x-ok"));
        assert!(s.must_revalidate);
    }

    #[test]
    fn rebuilt_entries_keep_their_clock() {
        let e = sample(); // 2s old on arrival, fresh for 5s
        let raw = encode(&e, 10_000, 10_000).unwrap();
        let now = Instant::now();
        let rebuilt = decode(raw.clone().into())
            .unwrap()
            .into_entry("/k".into(), 11_500, now)
            .unwrap();
        assert_eq!(rebuilt.age(now), Duration::from_millis(3500));
        // Stored 1.5 s ago, fresh for 5 s from then: 3.5 s left.
        assert_eq!(rebuilt.stored_at(), now - Duration::from_millis(1500));
        assert_eq!(rebuilt.fresh_for(), Duration::from_millis(5000));
        assert_eq!(
            rebuilt.freshness(now + Duration::from_millis(3499)),
            crate::cache::Standing::Fresh
        );
        assert_ne!(
            rebuilt.freshness(now + Duration::from_millis(3501)),
            crate::cache::Standing::Fresh
        );
        assert_eq!(rebuilt.stale_if_error(), Duration::from_secs(300));
        assert_eq!(rebuilt.key(), "/k");
        // A peer clock ahead of ours: as if just stored.
        let ahead = decode(raw.clone().into()).unwrap();
        assert_eq!(ahead.fresh_left(9_000), Duration::from_secs(5));
        // No freshness left: not used.
        for now_ms in [15_000, 20_000] {
            let s = decode(raw.clone().into()).unwrap();
            assert!(s.into_entry("/k".into(), now_ms, now).is_none());
        }
    }

    #[test]
    fn refuses_junk_and_other_versions() {
        let raw = encode(&sample(), 1, 1).unwrap();
        assert_eq!(decode(Bytes::new()), Err(DecodeError::Magic));
        assert_eq!(
            decode(Bytes::from_static(b"{\"json\":1}")),
            Err(DecodeError::Magic)
        );
        // Version 1 has no fetch start: refused, not misread.
        let mut v1 = raw.clone();
        v1[3] = 1;
        assert_eq!(decode(v1.into()), Err(DecodeError::Version(1)));
        let mut v3 = raw.clone();
        v3[3] = 3;
        assert_eq!(decode(v3.into()), Err(DecodeError::Version(3)));
        let mut bad_status = raw.clone();
        bad_status[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(decode(bad_status.into()), Err(DecodeError::Status(7)));
        let mut trailing = raw.clone();
        trailing.push(0);
        assert_eq!(decode(trailing.into()), Err(DecodeError::Trailing(1)));
        let mut many = raw.clone();
        many[FIXED - 4..FIXED].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode(many.into()),
            Err(DecodeError::TooMany("header fields"))
        );
        let mut long = raw.clone();
        long[FIXED - 4..FIXED].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(decode(long.into()), Err(DecodeError::Truncated));
        let mut bad_name = raw;
        bad_name[FIXED + 4] = b' ';
        assert_eq!(decode(bad_name.into()), Err(DecodeError::Header));
    }

    #[test]
    fn every_truncation_is_refused() {
        let raw = encode(&sample(), 1, 1).unwrap();
        for n in 0..raw.len() {
            assert!(
                decode(Bytes::copy_from_slice(&raw[..n])).is_err(),
                "prefix of {n}"
            );
        }
    }

    fn header_name() -> impl Strategy<Value = String> {
        // `x-` keeps clear of the hop-by-hop names, which decoding drops.
        "x-[a-z0-9-]{1,12}"
    }

    proptest! {
        #[test]
        fn any_entry_round_trips(
            status in 100u16..1000,
            headers in proptest::collection::vec((header_name(), proptest::collection::vec(32u8..127, 0..40)), 0..12),
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            tags in proptest::collection::vec("\\PC{0,24}", 0..8),
            times in proptest::array::uniform4(0u64..1 << 40),
            must_revalidate in any::<bool>(),
            stored_at in any::<u64>(),
        ) {
            let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            let e = entry(status, &headers, &body, &tags, times, must_revalidate);
            let s = decode(encode(&e, stored_at, stored_at).unwrap().into()).unwrap();
            prop_assert_eq!(s.stored_at_ms, stored_at);
            same(&e, &s);
        }

        #[test]
        fn junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(bytes.into());
        }

        #[test]
        fn corrupted_values_never_panic(i in any::<prop::sample::Index>(), b in any::<u8>()) {
            let mut raw = encode(&sample(), 1, 1).unwrap();
            let i = i.index(raw.len());
            raw[i] = b;
            let _ = decode(raw.into());
        }
    }
}
