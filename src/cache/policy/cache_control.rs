//! Parsing `Cache-Control` (RFC 9111 §5.2, RFC 5861) and choosing which
//! field this cache obeys: `Oddscache-Cache-Control`, then
//! `CDN-Cache-Control` (RFC 9213 targeted fields), then `Cache-Control`.
//!
//! Owns [`CacheControl`], the lenient directive parser behind it and
//! [`ControlSource`]. What the directives mean for storing and freshness is
//! decided in `storability`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::structured::{self, Item};
use super::syntax::{delta_seconds, trim_end, trim_start, DELTA_SECONDS_MAX};

/// The targeted field (RFC 9213) meant for this cache alone.
pub const ODDSCACHE_CACHE_CONTROL: &str = "oddscache-cache-control";
/// The targeted field (RFC 9213) for CDN-class caches, which this cache is.
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// Parsed Cache-Control (all header lines joined).
///
/// Lenient the way deployed caches are (for `Cache-Control`; the targeted
/// fields are strict Structured Fields, see [`cache_control_with_source`]):
/// directive names are case-insensitive, `;` separates directives like `,`
/// (origins write `public; max-age=60`), values may be tokens or quoted strings, and unknown
/// directives are ignored. A directive that appears twice keeps its first
/// occurrence (RFC 9111 §4.2.1). An invalid delta-seconds value makes the
/// directive absent, except `max-age`, which becomes 0 so the response is
/// treated as stale. A qualified `private="..."` or `no-cache="..."` counts
/// as the unqualified directive: this cache does not strip named fields, so
/// the whole response gets the stricter treatment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<u64>,
    /// Shared caches prefer this over `max-age`, and it carries
    /// `proxy-revalidate` semantics (RFC 9111 §5.2.2.10).
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    /// Lets a response to a request with `Authorization` be stored.
    pub public: bool,
    pub must_revalidate: bool,
    /// Same as `must-revalidate` for a shared cache like this one.
    pub proxy_revalidate: bool,
    pub stale_if_error: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub immutable: bool,
}

impl CacheControl {
    /// Parses every line of `name`; `None` when the header is absent.
    pub fn parse(headers: &HeaderMap, name: &HeaderName) -> Option<CacheControl> {
        let mut lines = headers.get_all(name).iter().peekable();
        lines.peek()?;
        let mut cc = CacheControl::default();
        let mut seen = Seen::default();
        for line in lines {
            for (name, value) in Directives::new(line.as_bytes()) {
                cc.apply(name, value, &mut seen);
            }
        }
        Some(cc)
    }

    fn apply(&mut self, name: &[u8], value: Value<'_>, seen: &mut Seen) {
        // Lowercase into a stack buffer so one `match` recognises names
        // without allocating; nothing known is longer than 22 bytes.
        let mut buf = [0u8; 24];
        let Some(lower) = buf.get_mut(..name.len()) else {
            return;
        };
        for (dst, src) in lower.iter_mut().zip(name) {
            *dst = src.to_ascii_lowercase();
        }
        match &*lower {
            b"max-age" if seen.first(Seen::MAX_AGE) => {
                self.max_age = Some(value.delta_seconds().unwrap_or(0));
            }
            b"s-maxage" if seen.first(Seen::S_MAXAGE) => self.s_maxage = value.delta_seconds(),
            b"stale-if-error" if seen.first(Seen::STALE_IF_ERROR) => {
                self.stale_if_error = value.delta_seconds();
            }
            b"stale-while-revalidate" if seen.first(Seen::STALE_WHILE_REVALIDATE) => {
                self.stale_while_revalidate = value.delta_seconds();
            }
            b"no-store" => self.no_store = true,
            b"no-cache" => self.no_cache = true,
            b"private" => self.private = true,
            b"public" => self.public = true,
            b"must-revalidate" => self.must_revalidate = true,
            b"proxy-revalidate" => self.proxy_revalidate = true,
            b"immutable" => self.immutable = true,
            _ => {}
        }
    }
}

/// Which delta-seconds directives were already met, for first-wins.
#[derive(Default)]
struct Seen(u8);

impl Seen {
    const MAX_AGE: u8 = 1;
    const S_MAXAGE: u8 = 2;
    const STALE_IF_ERROR: u8 = 4;
    const STALE_WHILE_REVALIDATE: u8 = 8;

    fn first(&mut self, bit: u8) -> bool {
        let first = self.0 & bit == 0;
        self.0 |= bit;
        first
    }
}

/// A directive's argument, borrowed from the header bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value<'a> {
    None,
    Token(&'a [u8]),
    /// Inside the quotes, escapes left in place: no numeric value has any.
    Quoted(&'a [u8]),
    /// Unterminated quote, or junk after the closing quote.
    Malformed,
}

impl Value<'_> {
    /// `delta-seconds = 1*DIGIT`, capped at
    /// [`DELTA_SECONDS_MAX`](super::DELTA_SECONDS_MAX).
    fn delta_seconds(self) -> Option<u64> {
        match self {
            Value::Token(b) | Value::Quoted(b) => delta_seconds(b),
            Value::None | Value::Malformed => None,
        }
    }
}

/// Iterates `name[=value]` items of one field line, split on `,` or `;`
/// outside quoted strings. Items without a name are skipped.
struct Directives<'a> {
    rest: &'a [u8],
}

impl<'a> Directives<'a> {
    fn new(line: &'a [u8]) -> Self {
        Directives { rest: line }
    }
}

impl<'a> Iterator for Directives<'a> {
    type Item = (&'a [u8], Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let s = trim_start(self.rest);
            let s = match s.first()? {
                b',' | b';' => {
                    self.rest = &s[1..];
                    continue;
                }
                _ => s,
            };
            let name_end = s
                .iter()
                .position(|&b| matches!(b, b'=' | b',' | b';'))
                .unwrap_or(s.len());
            let name = trim_end(&s[..name_end]);
            let after_name = &s[name_end..];
            let (value, rest) = match after_name.split_first() {
                Some((b'=', v)) => parse_value(trim_start(v)),
                _ => (Value::None, after_name),
            };
            self.rest = rest;
            if !name.is_empty() {
                return Some((name, value));
            }
        }
    }
}

/// Returns the value and what follows it (starting at the delimiter).
fn parse_value(v: &[u8]) -> (Value<'_>, &[u8]) {
    if v.first() == Some(&b'"') {
        let Some(close) = closing_quote(v) else {
            return (Value::Malformed, &[]);
        };
        let inner = &v[1..close];
        let after = &v[close + 1..];
        let end = after
            .iter()
            .position(|&b| matches!(b, b',' | b';'))
            .unwrap_or(after.len());
        if trim_start(&after[..end]).is_empty() {
            (Value::Quoted(inner), &after[end..])
        } else {
            // `"60"x` is neither a quoted string nor a token.
            (Value::Malformed, &after[end..])
        }
    } else {
        let end = v
            .iter()
            .position(|&b| matches!(b, b',' | b';'))
            .unwrap_or(v.len());
        (Value::Token(trim_end(&v[..end])), &v[end..])
    }
}

/// Index of the quote closing the quoted-string that opens `v`.
fn closing_quote(v: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < v.len() {
        match v[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Where the directives this cache obeys came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlSource {
    /// `Oddscache-Cache-Control`: for this cache only.
    Oddscache,
    /// `CDN-Cache-Control`: for every CDN-class cache.
    Cdn,
    /// Plain `Cache-Control`, shared with browsers.
    CacheControl,
}

impl ControlSource {
    pub fn header_name(self) -> &'static str {
        match self {
            ControlSource::Oddscache => ODDSCACHE_CACHE_CONTROL,
            ControlSource::Cdn => CDN_CACHE_CONTROL,
            ControlSource::CacheControl => "cache-control",
        }
    }

    /// RFC 9213 §2.1: a targeted field also overrides `Expires`.
    pub fn is_targeted(self) -> bool {
        !matches!(self, ControlSource::CacheControl)
    }
}

/// RFC 9213 targeted fields: the first non-empty of
/// `Oddscache-Cache-Control`, then `CDN-Cache-Control`, replaces
/// `Cache-Control` for this cache's own decisions. Default when none is
/// present.
pub fn effective_cache_control(resp_headers: &HeaderMap) -> CacheControl {
    cache_control_with_source(resp_headers)
        .map(|(cc, _)| cc)
        .unwrap_or_default()
}

/// [`effective_cache_control`] plus the field it came from; `None` when the
/// response has no usable cache-control field at all.
///
/// Targeted fields are Structured Field Dictionaries (RFC 9213 §2.1) and
/// parsed strictly: an empty one, one that does not parse, or one whose
/// known directive has a value of the wrong type (`max-age="60"`) is
/// ignored as if absent, and the next field decides.
pub fn cache_control_with_source(
    resp_headers: &HeaderMap,
) -> Option<(CacheControl, ControlSource)> {
    for (name, source) in [
        (ODDSCACHE_CACHE_CONTROL, ControlSource::Oddscache),
        (CDN_CACHE_CONTROL, ControlSource::Cdn),
    ] {
        if let Some(cc) = targeted(resp_headers.get_all(name).iter()) {
            return Some((cc, source));
        }
    }
    CacheControl::parse(resp_headers, &header::CACHE_CONTROL)
        .map(|cc| (cc, ControlSource::CacheControl))
}

/// A targeted field's directives; `None` when it is absent, empty or
/// invalid. Booleans set to `?0` are absent; parameters are dropped; a
/// qualified `private="..."` or `no-cache="..."` counts as unqualified.
fn targeted<'a>(mut lines: impl Iterator<Item = &'a HeaderValue>) -> Option<CacheControl> {
    let first = lines.next()?;
    let mut joined = first.as_bytes().to_vec();
    for line in lines {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line.as_bytes());
    }
    let members = structured::dictionary(&joined).ok()?;
    if members.is_empty() {
        return None;
    }
    let mut cc = CacheControl::default();
    for (key, item) in members {
        let seconds = || match item {
            Item::Integer(n) => u64::try_from(n).ok().map(|n| n.min(DELTA_SECONDS_MAX)),
            _ => None,
        };
        let flag = |qualified_ok: bool| match item {
            Item::Boolean(b) => Some(b),
            Item::String(_) if qualified_ok => Some(true),
            _ => None,
        };
        match key {
            b"max-age" => cc.max_age = Some(seconds()?),
            b"s-maxage" => cc.s_maxage = Some(seconds()?),
            b"stale-if-error" => cc.stale_if_error = Some(seconds()?),
            b"stale-while-revalidate" => cc.stale_while_revalidate = Some(seconds()?),
            b"no-store" => cc.no_store = flag(false)?,
            b"no-cache" => cc.no_cache = flag(true)?,
            b"private" => cc.private = flag(true)?,
            b"public" => cc.public = flag(false)?,
            b"must-revalidate" => cc.must_revalidate = flag(false)?,
            b"proxy-revalidate" => cc.proxy_revalidate = flag(false)?,
            b"immutable" => cc.immutable = flag(false)?,
            _ => {}
        }
    }
    Some(cc)
}

#[cfg(test)]
#[path = "cache_control_tests.rs"]
mod tests;
