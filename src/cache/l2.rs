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
#[path = "l2_tests.rs"]
mod tests;
