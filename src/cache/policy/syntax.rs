//! Field-value syntax the other rules share: optional whitespace, members of
//! comma-separated lists, HTTP-dates and delta-seconds (RFC 9110 §5.6,
//! RFC 9111 §1.2.2).
//!
//! Works on header bytes and borrows from them; nothing here allocates.

use std::time::SystemTime;

use http::header::{self, HeaderMap};

/// RFC 9111 §1.2.2: larger delta-seconds, or overflowing sums, become 2^31
/// ("infinity", over 68 years). Capping also keeps `Instant + lifetime` from
/// overflowing in the caller.
pub const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// `delta-seconds = 1*DIGIT`, capped at [`DELTA_SECONDS_MAX`].
pub(super) fn delta_seconds(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = bytes.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some(n.min(DELTA_SECONDS_MAX))
}

fn is_ows(b: &u8) -> bool {
    matches!(b, b' ' | b'\t')
}

pub(super) fn trim_start(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    &s[start..]
}

pub(super) fn trim_end(s: &[u8]) -> &[u8] {
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(0, |i| i + 1);
    &s[..end]
}

pub(super) fn trim(s: &[u8]) -> &[u8] {
    trim_end(trim_start(s))
}

/// Members of a comma-separated list field across all its lines, trimmed,
/// empty members skipped (RFC 9110 §5.6.1). Only for lists whose members
/// cannot contain commas (field names, connection options).
pub(super) fn list_members(
    headers: &HeaderMap,
    name: impl header::AsHeaderName,
) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(trim)
        .filter(|m| !m.is_empty())
}

/// An HTTP-date field value (RFC 9110 §5.6.7), from its bytes.
pub(super) fn http_date(value: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(value).ok()?;
    httpdate::parse_http_date(s.trim_matches([' ', '\t'])).ok()
}
