//! The HTTP caching rules this shared cache lives by, as pure functions.
//!
//! Owns: parsing `Cache-Control` and its targeted variants (RFC 9111 §5.2,
//! RFC 9213, RFC 5861), deciding whether a response may be stored and for how
//! long it is fresh (RFC 9111 §3, §4.2, SPEC §4), the age a response arrives
//! with, `Vary` names, answering conditional requests from a stored entry
//! (RFC 9110 §13), `Cache-Status` values (RFC 9211) and hop-by-hop stripping
//! (RFC 9110 §7.6.1).
//!
//! Nothing here does I/O or reads a clock: the caller passes `now`, so every
//! rule is tested inline. It runs on every miss, so parsing borrows from the
//! header bytes and allocates only where a result must own its data.
//!
//! One principle settles the cases the RFCs leave to configuration: when
//! `honor_origin_cache_control` is off, only the origin's *permissive*
//! freshness (`max-age`, `s-maxage`, `Expires`, `stale-*`) is ignored. Its
//! *restrictive* directives (`no-store`, `private`, `no-cache`,
//! `must-revalidate`, `proxy-revalidate`) still apply, because ignoring them
//! could serve something the origin said must not be served.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// The targeted field (RFC 9213) meant for this cache alone.
pub const ODDSCACHE_CACHE_CONTROL: &str = "oddscache-cache-control";
/// The targeted field (RFC 9213) for CDN-class caches, which this cache is.
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";
/// Cache name used in `Cache-Status` (RFC 9211).
pub const CACHE_NAME: &str = "oddscache";

/// RFC 9111 §1.2.2: larger delta-seconds, or overflowing sums, become 2^31
/// ("infinity", over 68 years). Capping also keeps `Instant + lifetime` from
/// overflowing in the caller.
pub const DELTA_SECONDS_MAX: u64 = 1 << 31;
const MAX_LIFETIME: Duration = Duration::from_secs(DELTA_SECONDS_MAX);

/// Parsed Cache-Control (all header lines joined).
///
/// Lenient the way deployed caches are: directive names are
/// case-insensitive, `;` separates directives like `,` (origins write
/// `public; max-age=60`, and it also drops Structured Field parameters from
/// targeted fields), values may be tokens or quoted strings, and unknown
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
        Self::parse_lines(headers.get_all(name).iter()).map(|(cc, _)| cc)
    }

    /// Also counts directives, because RFC 9213 ignores an empty targeted
    /// field rather than letting it erase `Cache-Control`.
    fn parse_lines<'a>(
        mut lines: impl Iterator<Item = &'a HeaderValue>,
    ) -> Option<(CacheControl, usize)> {
        let first = lines.next()?;
        let mut cc = CacheControl::default();
        let mut seen = Seen::default();
        let mut count = 0;
        for line in std::iter::once(first).chain(lines) {
            for (name, value) in Directives::new(line.as_bytes()) {
                count += 1;
                cc.apply(name, value, &mut seen);
            }
        }
        Some((cc, count))
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
    /// `delta-seconds = 1*DIGIT`, capped at [`DELTA_SECONDS_MAX`].
    fn delta_seconds(self) -> Option<u64> {
        match self {
            Value::Token(b) | Value::Quoted(b) => delta_seconds(b),
            Value::None | Value::Malformed => None,
        }
    }
}

fn delta_seconds(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = bytes.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some(n.min(DELTA_SECONDS_MAX))
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

fn is_ows(b: &u8) -> bool {
    matches!(b, b' ' | b'\t')
}

fn trim_start(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    &s[start..]
}

fn trim_end(s: &[u8]) -> &[u8] {
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(0, |i| i + 1);
    &s[..end]
}

fn trim(s: &[u8]) -> &[u8] {
    trim_end(trim_start(s))
}

/// Members of a comma-separated list field across all its lines, trimmed,
/// empty members skipped (RFC 9110 §5.6.1). Only for lists whose members
/// cannot contain commas (field names, connection options).
fn list_members(
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

fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    let s = value.to_str().ok()?;
    httpdate::parse_http_date(s.trim_matches([' ', '\t'])).ok()
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
/// Targeted fields are parsed with the same lenient parser rather than as
/// strict Structured Fields: a field with no directive name at all is the
/// "empty" one RFC 9213 says to skip.
pub fn cache_control_with_source(
    resp_headers: &HeaderMap,
) -> Option<(CacheControl, ControlSource)> {
    for (name, source) in [
        (ODDSCACHE_CACHE_CONTROL, ControlSource::Oddscache),
        (CDN_CACHE_CONTROL, ControlSource::Cdn),
    ] {
        if let Some((cc, count)) = CacheControl::parse_lines(resp_headers.get_all(name).iter()) {
            if count > 0 {
                return Some((cc, source));
            }
        }
    }
    CacheControl::parse(resp_headers, &header::CACHE_CONTROL)
        .map(|cc| (cc, ControlSource::CacheControl))
}

/// Heuristically cacheable statuses (RFC 9110 §15.1). 206 is left out
/// because this cache does not do ranges.
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Why a response was not stored; the label goes to logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStorable {
    Method,
    /// Not heuristically cacheable and no explicit freshness, or 206.
    Status,
    /// `no-store` in the response, or in the request (RFC 9111 §3).
    NoStore,
    Private,
    SetCookie,
    VaryStar,
    Authorization,
    /// Unmatched route with no explicit origin freshness.
    NoFreshness,
}

impl NotStorable {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::Authorization => "authorization",
            NotStorable::NoFreshness => "no-freshness",
        }
    }
}

impl fmt::Display for NotStorable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Inputs known from config and routing.
#[derive(Clone, Copy, Debug)]
pub struct FreshnessRules {
    /// `cache.honor_origin_cache_control`.
    pub honor_origin: bool,
    /// The matched route's `ttl`.
    pub route_ttl: Option<Duration>,
    /// Shortest `ttl_by_status` of the games in the body, computed by the
    /// caller; `None` when the body has no games.
    pub status_ttl: Option<Duration>,
    /// `cache.default_ttl`: `Some` only when a route matched, so `None`
    /// together with `route_ttl: None` means an unmatched path.
    pub default_ttl: Option<Duration>,
}

impl FreshnessRules {
    fn unmatched(&self) -> bool {
        self.route_ttl.is_none() && self.default_ttl.is_none()
    }
}

/// Which rule set the freshness lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreshnessSource {
    /// `s-maxage`, `max-age`, `Expires`, or `no-cache` forcing zero.
    Origin,
    Route,
    Status,
    Default,
}

/// How long a stored response is fresh, and how it may be served stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// Freshness lifetime; see [`Freshness::fresh_for`] for the part left
    /// after the age the response arrived with.
    pub lifetime: Duration,
    pub source: FreshnessSource,
    /// The response's `stale-if-error`, when the origin is honoured.
    pub stale_if_error: Option<Duration>,
    /// The response's `stale-while-revalidate`, when the origin is honoured.
    pub stale_while_revalidate: Option<Duration>,
    /// `no-cache`, `must-revalidate`, `proxy-revalidate` or `s-maxage`:
    /// never serve stale without revalidating (so no stale-while-revalidate).
    pub must_revalidate: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage` (RFC 9111
    /// §4.2.4): not even a failed upstream lets a stale copy stand in. Plain
    /// `no-cache` still allows stale-if-error.
    pub stale_if_error_forbidden: bool,
}

impl Freshness {
    /// Time left fresh for a response that arrived `initial_age` old. Only
    /// origin lifetimes count the age already spent upstream; route, status
    /// and default TTLs are this cache's own and start when it stores.
    pub fn fresh_for(&self, initial_age: Duration) -> Duration {
        match self.source {
            FreshnessSource::Origin => self.lifetime.saturating_sub(initial_age),
            FreshnessSource::Route | FreshnessSource::Status | FreshnessSource::Default => {
                self.lifetime
            }
        }
    }

    /// How long after expiry a copy may stand in for a failed upstream: the
    /// response's `stale-if-error`, else `configured`; zero when forbidden.
    pub fn stale_if_error_window(&self, configured: Duration) -> Duration {
        if self.stale_if_error_forbidden {
            Duration::ZERO
        } else {
            self.stale_if_error.unwrap_or(configured)
        }
    }

    /// How long after expiry a copy may be served while one background
    /// request revalidates it; zero when revalidation must come first.
    pub fn stale_while_revalidate_window(&self, configured: Duration) -> Duration {
        if self.must_revalidate {
            Duration::ZERO
        } else {
            self.stale_while_revalidate.unwrap_or(configured)
        }
    }
}

/// Decides whether a response may be stored and for how long it is fresh.
///
/// Not stored: a method other than GET (HEAD is answered from GET entries,
/// never stored), `no-store` (response, or request per RFC 9111 §3),
/// `private`, `Set-Cookie`, `Vary: *`, a request with `Authorization` unless
/// the response says `public` or `s-maxage` (RFC 9111 §3.5; the RFC's third
/// licence, `must-revalidate`, is deliberately not taken: the key ignores
/// `Authorization`), 206, and other statuses that are not heuristically
/// cacheable unless the origin gives explicit freshness.
///
/// Lifetime (SPEC §4): explicit origin freshness (`s-maxage` > `max-age` >
/// `Expires` − `Date`, from [`cache_control_with_source`]) when
/// `honor_origin`; else the route's ttl; else the status ttl; else the
/// default ttl. Unmatched paths need explicit origin freshness. An invalid
/// `Expires` means already expired: explicit, zero. `no-cache` stores with
/// a zero lifetime, so every reuse is revalidated first.
pub fn storability(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    rules: &FreshnessRules,
    now: SystemTime,
) -> Result<Freshness, NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    let (cc, control_source) = match cache_control_with_source(resp_headers) {
        Some((cc, source)) => (cc, Some(source)),
        None => (CacheControl::default(), None),
    };
    if cc.no_store || request_no_store(req_headers) {
        return Err(NotStorable::NoStore);
    }
    if cc.private {
        return Err(NotStorable::Private);
    }
    if resp_headers.contains_key(header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    if has_vary_star(resp_headers) {
        return Err(NotStorable::VaryStar);
    }
    if req_headers.contains_key(header::AUTHORIZATION) && !cc.public && cc.s_maxage.is_none() {
        return Err(NotStorable::Authorization);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStorable::Status);
    }

    let explicit = if rules.honor_origin {
        explicit_lifetime(&cc, control_source, resp_headers, now)
    } else {
        None
    };
    let (lifetime, source) = match explicit {
        Some(lifetime) => (lifetime, FreshnessSource::Origin),
        None if !heuristically_cacheable(status) => return Err(NotStorable::Status),
        None if rules.unmatched() => return Err(NotStorable::NoFreshness),
        None => match (rules.route_ttl, rules.status_ttl, rules.default_ttl) {
            (Some(ttl), _, _) => (ttl, FreshnessSource::Route),
            (None, Some(ttl), _) => (ttl, FreshnessSource::Status),
            (None, None, ttl) => (ttl.unwrap_or_default(), FreshnessSource::Default),
        },
    };
    let (lifetime, source) = if cc.no_cache {
        (Duration::ZERO, FreshnessSource::Origin)
    } else {
        (lifetime.min(MAX_LIFETIME), source)
    };

    let forbid_stale = cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some();
    let stale = |secs: Option<u64>| secs.filter(|_| rules.honor_origin).map(Duration::from_secs);
    Ok(Freshness {
        lifetime,
        source,
        stale_if_error: stale(cc.stale_if_error),
        stale_while_revalidate: stale(cc.stale_while_revalidate),
        must_revalidate: cc.no_cache || forbid_stale,
        stale_if_error_forbidden: forbid_stale,
    })
}

/// Explicit expiration time (RFC 9111 §4.2.1), as a lifetime.
fn explicit_lifetime(
    cc: &CacheControl,
    source: Option<ControlSource>,
    resp_headers: &HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(secs) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(secs));
    }
    if source.is_some_and(ControlSource::is_targeted) {
        return None;
    }
    // The first Expires wins, as for duplicate directives.
    let expires = resp_headers.get(header::EXPIRES)?;
    let Some(expires) = http_date(expires) else {
        // RFC 9111 §5.3: invalid dates, notably "0", mean already expired.
        return Some(Duration::ZERO);
    };
    // RFC 9111 §4.2.1: lifetime is Expires − Date; no Date means "now".
    let date = resp_headers
        .get(header::DATE)
        .and_then(http_date)
        .unwrap_or(now);
    Some(
        expires
            .duration_since(date)
            .unwrap_or_default()
            .min(MAX_LIFETIME),
    )
}

fn request_no_store(req_headers: &HeaderMap) -> bool {
    CacheControl::parse(req_headers, &header::CACHE_CONTROL).is_some_and(|cc| cc.no_store)
}

/// Age of the response when received (RFC 9111 §4.2.3, simplified without
/// the request's own delay): max(`Age`, now − `Date`, 0).
pub fn initial_age(resp_headers: &HeaderMap, now: SystemTime) -> Duration {
    let age = resp_headers
        .get(header::AGE)
        .and_then(|v| delta_seconds(trim(v.as_bytes())))
        .map(Duration::from_secs)
        .unwrap_or_default();
    let apparent = resp_headers
        .get(header::DATE)
        .and_then(http_date)
        .and_then(|date| now.duration_since(date).ok())
        .unwrap_or_default();
    age.max(apparent).min(MAX_LIFETIME)
}

/// A response that says `Vary: *` can never be matched to a later request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Vary: * matches no later request")]
pub struct VaryStar;

/// Whether any `Vary` member is `*`, without collecting the names.
pub fn has_vary_star(resp_headers: &HeaderMap) -> bool {
    list_members(resp_headers, header::VARY).any(|m| m == b"*")
}

/// The request header names a response varies on: lowercased, sorted and
/// deduplicated, so equal `Vary` values give equal keys. Members that are not
/// valid field names are dropped: no request can carry them, so they cannot
/// tell requests apart.
pub fn vary_names(resp_headers: &HeaderMap) -> Result<Vec<HeaderName>, VaryStar> {
    let mut names = Vec::new();
    for member in list_members(resp_headers, header::VARY) {
        if member == b"*" {
            return Err(VaryStar);
        }
        if let Ok(name) = HeaderName::from_bytes(member) {
            names.push(name);
        }
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Ok(names)
}

/// The date `If-Modified-Since` is compared with for a stored response:
/// `Last-Modified`, else `Date` (RFC 9111 §4.3.2).
pub fn validator_date(stored_headers: &HeaderMap) -> Option<&HeaderValue> {
    stored_headers
        .get(header::LAST_MODIFIED)
        .or_else(|| stored_headers.get(header::DATE))
}

/// Evaluates a GET/HEAD request's preconditions against a stored entry
/// (RFC 9110 §13.2.2); `true` means answer 304.
///
/// `If-None-Match` (weak comparison, `*` matches any stored entry) takes
/// precedence over `If-Modified-Since`, which is ignored when invalid or
/// repeated. Pass [`validator_date`] as `last_modified`.
pub fn not_modified(
    req_headers: &HeaderMap,
    etag: Option<&HeaderValue>,
    last_modified: Option<&HeaderValue>,
) -> bool {
    if req_headers.contains_key(header::IF_NONE_MATCH) {
        let stored = etag.map(|e| opaque_tag(trim(e.as_bytes())));
        return req_headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .flat_map(|line| EntityTags {
                rest: line.as_bytes(),
            })
            .any(|tag| tag == b"*" || Some(tag) == stored);
    }
    let mut since = req_headers.get_all(header::IF_MODIFIED_SINCE).iter();
    let (Some(since), None) = (since.next(), since.next()) else {
        return false;
    };
    match (http_date(since), last_modified.and_then(http_date)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Weak comparison ignores the `W/` prefix (RFC 9110 §8.8.3.2).
fn opaque_tag(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// Opaque tags of an `If-None-Match` line. Tags are quoted and may contain
/// commas, so the line is not simply split. Unquoted members are yielded as
/// they are, so a client echoing an origin's unquoted `ETag` still matches.
struct EntityTags<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for EntityTags<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let s = trim_start(self.rest);
            if *s.first()? == b',' {
                self.rest = &s[1..];
                continue;
            }
            let tag = opaque_tag(s);
            let len = if tag.first() == Some(&b'"') {
                // etagc excludes DQUOTE, so the next quote closes the tag.
                match tag[1..].iter().position(|&b| b == b'"') {
                    Some(i) => i + 2,
                    None => tag.len(),
                }
            } else {
                tag.iter().position(|&b| b == b',').unwrap_or(tag.len())
            };
            let (tag, after) = tag.split_at(len);
            let next_comma = after.iter().position(|&b| b == b',').unwrap_or(after.len());
            self.rest = &after[next_comma..];
            let tag = trim_end(tag);
            if !tag.is_empty() {
                return Some(tag);
            }
        }
    }
}

/// The RFC 9211 `fwd` parameter: why the request went to the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fwd {
    /// No entry for the URI.
    UriMiss,
    /// An entry for the URI, but none matching the `Vary`ing headers.
    VaryMiss,
    /// An entry, but stale: revalidated or refetched.
    Stale,
    /// The request asked for it (e.g. `no-cache` on the request).
    Request,
    /// Configuration or method sent it straight through.
    Bypass,
}

impl Fwd {
    pub fn as_str(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Bypass => "bypass",
        }
    }
}

/// `Cache-Status: oddscache; hit`.
pub fn cache_status_hit() -> HeaderValue {
    HeaderValue::from_static("oddscache; hit")
}

/// One `Cache-Status` member (RFC 9211) for this cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<Fwd>,
    /// Status the origin answered the forwarded request with.
    pub fwd_status: Option<u16>,
    pub stored: bool,
    /// Freshness left in seconds; negative when served stale.
    pub ttl: Option<i64>,
    /// Free-form reason, e.g. `stale-if-error`; quoted unless a token.
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn to_header_value(&self) -> HeaderValue {
        use fmt::Write as _;
        let mut out = String::with_capacity(64);
        out.push_str(CACHE_NAME);
        if self.hit {
            out.push_str("; hit");
        }
        // Writing into a String cannot fail.
        if let Some(fwd) = self.fwd {
            let _ = write!(out, "; fwd={}", fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(out, "; fwd-status={status}");
        }
        if self.stored {
            out.push_str("; stored");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(out, "; ttl={ttl}");
        }
        if let Some(detail) = self.detail {
            out.push_str("; detail=");
            push_sf_token_or_string(&mut out, detail);
        }
        // Every byte written is visible ASCII, so this cannot fail; the
        // fallback only keeps a header-building bug from panicking.
        HeaderValue::try_from(out).unwrap_or_else(|_| HeaderValue::from_static(CACHE_NAME))
    }
}

/// Writes an sf-token when `s` is one, else an sf-string (RFC 8941 §3.3),
/// dropping any character an sf-string cannot hold.
fn push_sf_token_or_string(out: &mut String, s: &str) {
    let is_token = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
    if is_token {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars().filter(|c| matches!(c, ' '..='~')) {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Hop-by-hop fields (RFC 9110 §7.6.1, plus the legacy ones proxies still
/// meet). They describe one connection and must not be forwarded or stored.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop fields and every field `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The named fields must be read before `Connection` itself goes; most
    // messages have no `Connection`, and then nothing is allocated.
    let listed: Vec<HeaderName> = list_members(headers, header::CONNECTION)
        .filter_map(|m| HeaderName::from_bytes(m).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn cc(value: &str) -> CacheControl {
        CacheControl::parse(
            &headers(&[("cache-control", value)]),
            &header::CACHE_CONTROL,
        )
        .unwrap()
    }

    fn cc_bytes(value: &[u8]) -> CacheControl {
        let mut map = HeaderMap::new();
        map.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(value).unwrap(),
        );
        CacheControl::parse(&map, &header::CACHE_CONTROL).unwrap()
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn date(offset: i64) -> String {
        let t = if offset >= 0 {
            now() + Duration::from_secs(offset.unsigned_abs())
        } else {
            now() - Duration::from_secs(offset.unsigned_abs())
        };
        httpdate::fmt_http_date(t)
    }

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    const MATCHED: FreshnessRules = FreshnessRules {
        honor_origin: true,
        route_ttl: None,
        status_ttl: None,
        default_ttl: Some(secs(30)),
    };

    const UNMATCHED: FreshnessRules = FreshnessRules {
        honor_origin: true,
        route_ttl: None,
        status_ttl: None,
        default_ttl: None,
    };

    fn store(resp: &[(&str, &str)], rules: &FreshnessRules) -> Result<Freshness, NotStorable> {
        store_full(&Method::GET, &[], 200, resp, rules)
    }

    fn store_full(
        method: &Method,
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
        rules: &FreshnessRules,
    ) -> Result<Freshness, NotStorable> {
        storability(
            method,
            &headers(req),
            StatusCode::from_u16(status).unwrap(),
            &headers(resp),
            rules,
            now(),
        )
    }

    fn lifetime(resp: &[(&str, &str)], rules: &FreshnessRules) -> (Duration, FreshnessSource) {
        let f = store(resp, rules).unwrap();
        (f.lifetime, f.source)
    }

    // ---- Cache-Control parsing ----

    #[test]
    fn parse_absent_is_none() {
        assert_eq!(
            CacheControl::parse(&HeaderMap::new(), &header::CACHE_CONTROL),
            None
        );
    }

    #[test]
    fn parse_empty_is_default() {
        assert_eq!(cc(""), CacheControl::default());
        assert_eq!(cc(" , ;, "), CacheControl::default());
    }

    #[test]
    fn parse_simple() {
        let c = cc("public, max-age=60");
        assert!(c.public);
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, None);
    }

    #[test]
    fn parse_every_flag() {
        let c =
            cc("no-store, no-cache, private, public, must-revalidate, proxy-revalidate, immutable");
        assert!(c.no_store && c.no_cache && c.private && c.public);
        assert!(c.must_revalidate && c.proxy_revalidate && c.immutable);
    }

    #[test]
    fn parse_every_number() {
        let c = cc("max-age=1, s-maxage=2, stale-if-error=3, stale-while-revalidate=4");
        assert_eq!(c.max_age, Some(1));
        assert_eq!(c.s_maxage, Some(2));
        assert_eq!(c.stale_if_error, Some(3));
        assert_eq!(c.stale_while_revalidate, Some(4));
    }

    #[test]
    fn parse_is_case_insensitive() {
        let c = cc("Public, MAX-AGE=60, S-MaxAge=5, No-Store");
        assert!(c.public && c.no_store);
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, Some(5));
    }

    #[test]
    fn parse_tolerates_whitespace() {
        let c = cc("  max-age = 60 ,\tno-cache\t,   s-maxage=\t7  ");
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, Some(7));
        assert!(c.no_cache);
    }

    #[test]
    fn parse_tolerates_stray_commas() {
        let c = cc(",,public,, max-age=5,");
        assert!(c.public);
        assert_eq!(c.max_age, Some(5));
    }

    #[test]
    fn parse_accepts_semicolons_as_delimiters() {
        let c = cc("public; max-age=0");
        assert!(c.public);
        assert_eq!(c.max_age, Some(0));
    }

    #[test]
    fn parse_drops_structured_field_parameters() {
        assert_eq!(cc("max-age=60;foo=bar, public").max_age, Some(60));
        assert!(cc("max-age=60;foo=bar, public").public);
    }

    #[test]
    fn parse_quoted_numbers() {
        assert_eq!(cc(r#"max-age="60""#).max_age, Some(60));
        assert_eq!(cc(r#"s-maxage = "5" , public"#).s_maxage, Some(5));
    }

    #[test]
    fn parse_quoted_value_may_hold_delimiters() {
        let c = cc(r#"no-cache="set-cookie, x-foo; y", max-age=5"#);
        assert!(c.no_cache);
        assert_eq!(c.max_age, Some(5));
        assert!(!c.public);
    }

    #[test]
    fn parse_quoted_value_with_escaped_quote() {
        let c = cc(r#"foo="a\"b,public", max-age=7"#);
        assert_eq!(c.max_age, Some(7));
        assert!(!c.public, "public sat inside the quoted string");
    }

    #[test]
    fn parse_unterminated_quote_swallows_the_rest() {
        let c = cc(r#"max-age="60, public"#);
        assert_eq!(c.max_age, Some(0), "malformed max-age means stale");
        assert!(!c.public);
    }

    #[test]
    fn parse_junk_after_quote_is_malformed() {
        let c = cc(r#"max-age="60"x, public"#);
        assert_eq!(c.max_age, Some(0));
        assert!(c.public);
        assert_eq!(cc(r#"s-maxage="60" 1, public"#).s_maxage, None);
    }

    #[test]
    fn parse_qualified_private_and_no_cache_count_as_unqualified() {
        assert!(cc(r#"private="set-cookie""#).private);
        assert!(cc("no-cache=x-foo").no_cache);
    }

    #[test]
    fn parse_unknown_directives_are_ignored() {
        let c = cc(r#"foo=bar, baz, qux="a,b", max-age=3, community="UCI""#);
        assert_eq!(
            c,
            CacheControl {
                max_age: Some(3),
                ..CacheControl::default()
            }
        );
    }

    #[test]
    fn parse_near_miss_names_are_unknown() {
        let c = cc("max-ages=5, no cache, nostore, public-ish, stale-while-revalidate-extended=9");
        assert_eq!(c, CacheControl::default());
    }

    #[test]
    fn parse_duplicate_first_wins() {
        assert_eq!(cc("max-age=10, max-age=20").max_age, Some(10));
        assert_eq!(cc("s-maxage=10, s-maxage=20").s_maxage, Some(10));
        assert_eq!(
            cc("stale-if-error=1, stale-if-error=2").stale_if_error,
            Some(1)
        );
        assert_eq!(
            cc("stale-while-revalidate=1, stale-while-revalidate=2").stale_while_revalidate,
            Some(1)
        );
    }

    #[test]
    fn parse_duplicate_invalid_first_still_wins() {
        assert_eq!(cc("max-age=abc, max-age=20").max_age, Some(0));
        assert_eq!(cc("s-maxage=abc, s-maxage=20").s_maxage, None);
    }

    #[test]
    fn parse_invalid_max_age_is_zero() {
        for v in [
            "max-age=abc",
            "max-age=-1",
            "max-age=+5",
            "max-age=1.5",
            "max-age=",
            "max-age",
            "max-age=60 seconds",
            "max-age=0x10",
            r#"max-age="""#,
        ] {
            assert_eq!(cc(v).max_age, Some(0), "{v}");
        }
    }

    #[test]
    fn parse_invalid_other_numbers_are_absent() {
        for v in [
            "s-maxage=abc, stale-if-error=-1, stale-while-revalidate",
            "s-maxage=, stale-if-error=1.5, stale-while-revalidate=x",
        ] {
            let c = cc(v);
            assert_eq!(c.s_maxage, None, "{v}");
            assert_eq!(c.stale_if_error, None, "{v}");
            assert_eq!(c.stale_while_revalidate, None, "{v}");
        }
    }

    #[test]
    fn parse_huge_numbers_saturate() {
        let c = cc("max-age=99999999999999999999999999, s-maxage=4294967296");
        assert_eq!(c.max_age, Some(DELTA_SECONDS_MAX));
        assert_eq!(c.s_maxage, Some(DELTA_SECONDS_MAX));
        assert_eq!(cc("max-age=2147483647").max_age, Some(2_147_483_647));
    }

    #[test]
    fn parse_joins_header_lines() {
        let map = headers(&[
            ("cache-control", "public,"),
            ("Cache-Control", "max-age=10"),
            ("cache-control", "max-age=20, no-cache"),
        ]);
        let c = CacheControl::parse(&map, &header::CACHE_CONTROL).unwrap();
        assert!(c.public && c.no_cache);
        assert_eq!(c.max_age, Some(10));
    }

    #[test]
    fn parse_quotes_do_not_span_lines() {
        let map = headers(&[
            ("cache-control", r#"foo="open"#),
            ("cache-control", "max-age=5"),
        ]);
        let c = CacheControl::parse(&map, &header::CACHE_CONTROL).unwrap();
        assert_eq!(c.max_age, Some(5));
    }

    #[test]
    fn parse_non_utf8_bytes() {
        let c = cc_bytes(b"max-age=5, \xffpublic, s-maxage=\xff1, private=\"\xfe\"");
        assert_eq!(c.max_age, Some(5));
        assert!(!c.public);
        assert_eq!(c.s_maxage, None);
        assert!(c.private);
    }

    #[test]
    fn parse_other_header_name() {
        let map = headers(&[("cdn-cache-control", "max-age=9")]);
        let name = HeaderName::from_static(CDN_CACHE_CONTROL);
        assert_eq!(CacheControl::parse(&map, &name).unwrap().max_age, Some(9));
        assert_eq!(CacheControl::parse(&map, &header::CACHE_CONTROL), None);
    }

    // ---- targeted fields (RFC 9213) ----

    #[test]
    fn targeted_none_present() {
        assert_eq!(cache_control_with_source(&HeaderMap::new()), None);
        assert_eq!(
            effective_cache_control(&HeaderMap::new()),
            CacheControl::default()
        );
    }

    #[test]
    fn targeted_plain_cache_control() {
        let (c, source) =
            cache_control_with_source(&headers(&[("cache-control", "max-age=5")])).unwrap();
        assert_eq!(c.max_age, Some(5));
        assert_eq!(source, ControlSource::CacheControl);
        assert!(!source.is_targeted());
    }

    #[test]
    fn targeted_cdn_replaces_cache_control() {
        let map = headers(&[
            ("cache-control", "no-store, private"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        let (c, source) = cache_control_with_source(&map).unwrap();
        assert_eq!(source, ControlSource::Cdn);
        assert_eq!(c.max_age, Some(600));
        assert!(!c.no_store && !c.private, "Cache-Control is not merged in");
    }

    #[test]
    fn targeted_oddscache_beats_cdn() {
        let map = headers(&[
            ("cache-control", "max-age=1"),
            ("cdn-cache-control", "max-age=2"),
            ("oddscache-cache-control", "max-age=3"),
        ]);
        let (c, source) = cache_control_with_source(&map).unwrap();
        assert_eq!(source, ControlSource::Oddscache);
        assert_eq!(source.header_name(), ODDSCACHE_CACHE_CONTROL);
        assert_eq!(c.max_age, Some(3));
        assert_eq!(effective_cache_control(&map).max_age, Some(3));
    }

    #[test]
    fn targeted_oddscache_beats_cache_control_without_cdn() {
        let map = headers(&[
            ("cache-control", "no-cache"),
            ("oddscache-cache-control", "max-age=3"),
        ]);
        assert_eq!(effective_cache_control(&map).max_age, Some(3));
        assert!(!effective_cache_control(&map).no_cache);
    }

    #[test]
    fn targeted_empty_field_is_skipped() {
        let map = headers(&[
            ("cache-control", "max-age=1"),
            ("cdn-cache-control", "max-age=2"),
            ("oddscache-cache-control", " , "),
        ]);
        let (c, source) = cache_control_with_source(&map).unwrap();
        assert_eq!(source, ControlSource::Cdn);
        assert_eq!(c.max_age, Some(2));

        let map = headers(&[("cache-control", "max-age=1"), ("cdn-cache-control", "")]);
        assert_eq!(
            cache_control_with_source(&map).unwrap().1,
            ControlSource::CacheControl
        );
    }

    #[test]
    fn targeted_unknown_directive_still_replaces() {
        // RFC 9213 §3.1's own example: "none" lets the CDN store despite no-store.
        let map = headers(&[("cache-control", "no-store"), ("cdn-cache-control", "none")]);
        let (c, source) = cache_control_with_source(&map).unwrap();
        assert_eq!(source, ControlSource::Cdn);
        assert_eq!(c, CacheControl::default());
        assert_eq!(
            store(
                &[("cache-control", "no-store"), ("cdn-cache-control", "none")],
                &MATCHED
            )
            .unwrap()
            .source,
            FreshnessSource::Default
        );
    }

    #[test]
    fn targeted_field_ignores_expires() {
        let resp = [
            ("cdn-cache-control", "public"),
            ("date", &date(0)),
            ("expires", &date(600)),
        ];
        assert_eq!(
            lifetime(&resp, &MATCHED),
            (secs(30), FreshnessSource::Default)
        );
        let resp = [
            ("cache-control", "public"),
            ("date", &date(0)),
            ("expires", &date(600)),
        ];
        assert_eq!(
            lifetime(&resp, &MATCHED),
            (secs(600), FreshnessSource::Origin)
        );
    }

    #[test]
    fn targeted_storability_uses_targeted_private() {
        let resp = [
            ("cache-control", "max-age=60"),
            ("oddscache-cache-control", "private"),
        ];
        assert_eq!(store(&resp, &MATCHED), Err(NotStorable::Private));
        let resp = [
            ("cache-control", "private"),
            ("oddscache-cache-control", "max-age=60"),
        ];
        assert_eq!(
            lifetime(&resp, &MATCHED),
            (secs(60), FreshnessSource::Origin)
        );
    }

    // ---- heuristic statuses ----

    #[test]
    fn heuristic_statuses() {
        for s in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            assert!(
                heuristically_cacheable(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
        for s in [
            201, 202, 206, 302, 303, 304, 307, 400, 401, 403, 429, 500, 502, 503, 504,
        ] {
            assert!(
                !heuristically_cacheable(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    // ---- storability: not stored ----

    #[test]
    fn not_stored_other_methods() {
        for m in [
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert_eq!(
                store_full(&m, &[], 200, &[("cache-control", "max-age=60")], &MATCHED),
                Err(NotStorable::Method),
                "{m}"
            );
        }
    }

    #[test]
    fn not_stored_no_store() {
        assert_eq!(
            store(&[("cache-control", "no-store")], &MATCHED),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            store(
                &[("cache-control", "max-age=60, no-store, public")],
                &MATCHED
            ),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn not_stored_request_no_store() {
        assert_eq!(
            store_full(
                &Method::GET,
                &[("cache-control", "no-store")],
                200,
                &[],
                &MATCHED
            ),
            Err(NotStorable::NoStore)
        );
        // A request's no-cache asks for a fresh answer, which may be stored.
        assert!(store_full(
            &Method::GET,
            &[("cache-control", "no-cache")],
            200,
            &[],
            &MATCHED
        )
        .is_ok());
    }

    #[test]
    fn not_stored_private() {
        assert_eq!(
            store(&[("cache-control", "private, max-age=60")], &MATCHED),
            Err(NotStorable::Private)
        );
    }

    #[test]
    fn not_stored_set_cookie() {
        assert_eq!(
            store(
                &[
                    ("cache-control", "public, max-age=60"),
                    ("set-cookie", "a=b")
                ],
                &MATCHED
            ),
            Err(NotStorable::SetCookie)
        );
    }

    #[test]
    fn not_stored_vary_star() {
        assert_eq!(
            store(&[("vary", "*")], &MATCHED),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(
            store(
                &[("vary", "accept"), ("vary", "accept-encoding, *")],
                &MATCHED
            ),
            Err(NotStorable::VaryStar)
        );
        assert!(store(&[("vary", "accept-encoding")], &MATCHED).is_ok());
    }

    #[test]
    fn authorization_needs_public_or_s_maxage() {
        let auth = [("authorization", "Bearer x")];
        let get = |resp: &[(&str, &str)]| store_full(&Method::GET, &auth, 200, resp, &MATCHED);
        assert_eq!(get(&[]), Err(NotStorable::Authorization));
        assert_eq!(
            get(&[("cache-control", "max-age=60")]),
            Err(NotStorable::Authorization)
        );
        assert_eq!(
            get(&[("cache-control", "must-revalidate")]),
            Err(NotStorable::Authorization)
        );
        assert_eq!(
            get(&[("cache-control", "public")]).unwrap().source,
            FreshnessSource::Default
        );
        let f = get(&[("cache-control", "s-maxage=10")]).unwrap();
        assert_eq!((f.lifetime, f.source), (secs(10), FreshnessSource::Origin));
        // An invalid s-maxage is absent, so it licenses nothing.
        assert_eq!(
            get(&[("cache-control", "s-maxage=x")]),
            Err(NotStorable::Authorization)
        );
    }

    #[test]
    fn authorization_public_from_targeted_field_only() {
        let auth = [("authorization", "Basic eA==")];
        let resp = [
            ("cache-control", "public"),
            ("cdn-cache-control", "max-age=60"),
        ];
        assert_eq!(
            store_full(&Method::GET, &auth, 200, &resp, &MATCHED),
            Err(NotStorable::Authorization)
        );
    }

    #[test]
    fn partial_content_never_stored() {
        assert_eq!(
            store_full(
                &Method::GET,
                &[],
                206,
                &[("cache-control", "public, max-age=60")],
                &MATCHED
            ),
            Err(NotStorable::Status)
        );
    }

    #[test]
    fn non_heuristic_status_needs_explicit_freshness() {
        for status in [500, 502, 503, 302, 307, 403] {
            assert_eq!(
                store_full(&Method::GET, &[], status, &[], &MATCHED),
                Err(NotStorable::Status),
                "{status}"
            );
            let f = store_full(
                &Method::GET,
                &[],
                status,
                &[("cache-control", "max-age=5")],
                &MATCHED,
            )
            .unwrap();
            assert_eq!(
                (f.lifetime, f.source),
                (secs(5), FreshnessSource::Origin),
                "{status}"
            );
        }
        let resp = [("date", &*date(0)), ("expires", &*date(20))];
        let f = store_full(&Method::GET, &[], 503, &resp, &MATCHED).unwrap();
        assert_eq!(f.lifetime, secs(20));
    }

    #[test]
    fn non_heuristic_status_with_route_ttl_only_is_not_stored() {
        let rules = FreshnessRules {
            route_ttl: Some(secs(15)),
            ..MATCHED
        };
        assert_eq!(
            store_full(&Method::GET, &[], 500, &[], &rules),
            Err(NotStorable::Status)
        );
    }

    #[test]
    fn non_heuristic_status_ignores_origin_when_not_honoured() {
        let rules = FreshnessRules {
            honor_origin: false,
            ..MATCHED
        };
        assert_eq!(
            store_full(
                &Method::GET,
                &[],
                500,
                &[("cache-control", "max-age=5")],
                &rules
            ),
            Err(NotStorable::Status)
        );
    }

    #[test]
    fn heuristic_error_statuses_use_route_rules() {
        for status in [404, 410, 501] {
            let f = store_full(&Method::GET, &[], status, &[], &MATCHED).unwrap();
            assert_eq!(
                (f.lifetime, f.source),
                (secs(30), FreshnessSource::Default),
                "{status}"
            );
        }
    }

    #[test]
    fn unmatched_needs_explicit_freshness() {
        assert_eq!(store(&[], &UNMATCHED), Err(NotStorable::NoFreshness));
        assert_eq!(
            store(&[("cache-control", "public")], &UNMATCHED),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store(&[("cache-control", "no-cache")], &UNMATCHED),
            Err(NotStorable::NoFreshness)
        );
        let with_games = FreshnessRules {
            status_ttl: Some(secs(5)),
            ..UNMATCHED
        };
        assert_eq!(store(&[], &with_games), Err(NotStorable::NoFreshness));
        assert_eq!(
            lifetime(&[("cache-control", "max-age=7")], &UNMATCHED),
            (secs(7), FreshnessSource::Origin)
        );
    }

    #[test]
    fn unmatched_ignores_origin_when_not_honoured() {
        let rules = FreshnessRules {
            honor_origin: false,
            ..UNMATCHED
        };
        assert_eq!(
            store(&[("cache-control", "max-age=7")], &rules),
            Err(NotStorable::NoFreshness)
        );
    }

    #[test]
    fn not_storable_labels() {
        let all = [
            (NotStorable::Method, "method"),
            (NotStorable::Status, "status"),
            (NotStorable::NoStore, "no-store"),
            (NotStorable::Private, "private"),
            (NotStorable::SetCookie, "set-cookie"),
            (NotStorable::VaryStar, "vary-star"),
            (NotStorable::Authorization, "authorization"),
            (NotStorable::NoFreshness, "no-freshness"),
        ];
        for (reason, label) in all {
            assert_eq!(reason.as_str(), label);
            assert_eq!(reason.to_string(), label);
        }
    }

    // ---- storability: freshness precedence ----

    #[test]
    fn freshness_s_maxage_beats_max_age_beats_expires() {
        let expires = date(900);
        let d = date(0);
        let all = [
            ("cache-control", "max-age=60, s-maxage=10"),
            ("date", d.as_str()),
            ("expires", expires.as_str()),
        ];
        assert_eq!(
            lifetime(&all, &MATCHED),
            (secs(10), FreshnessSource::Origin)
        );
        let no_s = [
            ("cache-control", "max-age=60"),
            ("date", &d),
            ("expires", &expires),
        ];
        assert_eq!(
            lifetime(&no_s, &MATCHED),
            (secs(60), FreshnessSource::Origin)
        );
        let only_expires = [("date", &*d), ("expires", &*expires)];
        assert_eq!(
            lifetime(&only_expires, &MATCHED),
            (secs(900), FreshnessSource::Origin)
        );
    }

    #[test]
    fn freshness_origin_beats_route_status_default() {
        let rules = FreshnessRules {
            honor_origin: true,
            route_ttl: Some(secs(15)),
            status_ttl: Some(secs(5)),
            default_ttl: Some(secs(30)),
        };
        assert_eq!(
            lifetime(&[("cache-control", "max-age=100")], &rules),
            (secs(100), FreshnessSource::Origin)
        );
        assert_eq!(
            lifetime(&[("cache-control", "max-age=0")], &rules),
            (secs(0), FreshnessSource::Origin)
        );
    }

    #[test]
    fn freshness_route_then_status_then_default() {
        let all = FreshnessRules {
            honor_origin: true,
            route_ttl: Some(secs(15)),
            status_ttl: Some(secs(5)),
            default_ttl: Some(secs(30)),
        };
        assert_eq!(lifetime(&[], &all), (secs(15), FreshnessSource::Route));
        let no_route = FreshnessRules {
            route_ttl: None,
            ..all
        };
        assert_eq!(lifetime(&[], &no_route), (secs(5), FreshnessSource::Status));
        let no_status = FreshnessRules {
            status_ttl: None,
            ..no_route
        };
        assert_eq!(
            lifetime(&[], &no_status),
            (secs(30), FreshnessSource::Default)
        );
        // A route ttl without default_ttl still counts as a matched route.
        let route_only = FreshnessRules {
            default_ttl: None,
            ..all
        };
        assert_eq!(
            lifetime(&[], &route_only),
            (secs(15), FreshnessSource::Route)
        );
    }

    #[test]
    fn freshness_not_honouring_origin_ignores_max_age_and_expires() {
        let rules = FreshnessRules {
            honor_origin: false,
            route_ttl: Some(secs(15)),
            status_ttl: None,
            default_ttl: Some(secs(30)),
        };
        let d = date(0);
        let e = date(900);
        let resp = [
            ("cache-control", "max-age=100, s-maxage=200"),
            ("date", &*d),
            ("expires", &*e),
        ];
        assert_eq!(lifetime(&resp, &rules), (secs(15), FreshnessSource::Route));
        assert_eq!(
            lifetime(
                &[("expires", "0")],
                &FreshnessRules {
                    route_ttl: None,
                    ..rules
                }
            ),
            (secs(30), FreshnessSource::Default)
        );
    }

    #[test]
    fn freshness_not_honouring_origin_keeps_restrictions() {
        let rules = FreshnessRules {
            honor_origin: false,
            ..MATCHED
        };
        assert_eq!(
            store(&[("cache-control", "no-store")], &rules),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            store(&[("cache-control", "private")], &rules),
            Err(NotStorable::Private)
        );
        assert_eq!(
            store(&[("set-cookie", "a=b")], &rules),
            Err(NotStorable::SetCookie)
        );
        let f = store(&[("cache-control", "no-cache")], &rules).unwrap();
        assert_eq!((f.lifetime, f.must_revalidate), (Duration::ZERO, true));
        let f = store(
            &[("cache-control", "must-revalidate, stale-if-error=60")],
            &rules,
        )
        .unwrap();
        assert_eq!(f.lifetime, secs(30));
        assert!(f.must_revalidate && f.stale_if_error_forbidden);
    }

    #[test]
    fn expires_minus_date() {
        let resp = [("date", &*date(-100)), ("expires", &*date(20))];
        assert_eq!(
            lifetime(&resp, &MATCHED),
            (secs(120), FreshnessSource::Origin)
        );
    }

    #[test]
    fn expires_without_date_counts_from_now() {
        assert_eq!(
            lifetime(&[("expires", &date(45))], &MATCHED),
            (secs(45), FreshnessSource::Origin)
        );
        let resp = [("date", "garbage"), ("expires", &*date(45))];
        assert_eq!(
            lifetime(&resp, &MATCHED),
            (secs(45), FreshnessSource::Origin)
        );
    }

    #[test]
    fn expires_in_the_past_is_zero() {
        let resp = [("date", &*date(0)), ("expires", &*date(-60))];
        assert_eq!(
            lifetime(&resp, &MATCHED),
            (Duration::ZERO, FreshnessSource::Origin)
        );
    }

    #[test]
    fn expires_other_date_formats() {
        // RFC 850 and asctime forms are obsolete but must be accepted.
        let resp = [
            ("date", "Sunday, 06-Nov-94 08:49:37 GMT"),
            ("expires", "Sun Nov  6 08:50:37 1994"),
        ];
        assert_eq!(
            lifetime(&resp, &MATCHED),
            (secs(60), FreshnessSource::Origin)
        );
    }

    #[test]
    fn invalid_expires_is_already_expired() {
        for bad in ["0", "-1", "never", "Thu, 32 Jan 2099 00:00:00 GMT", ""] {
            let f = store(&[("date", &*date(0)), ("expires", bad)], &MATCHED).unwrap();
            assert_eq!(
                (f.lifetime, f.source),
                (Duration::ZERO, FreshnessSource::Origin),
                "{bad:?}"
            );
        }
        // Already expired is still explicit, but only stored if otherwise allowed.
        assert_eq!(
            store(&[("expires", "0"), ("set-cookie", "a=b")], &MATCHED),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            store_full(&Method::GET, &[], 500, &[("expires", "0")], &MATCHED)
                .unwrap()
                .lifetime,
            Duration::ZERO
        );
    }

    #[test]
    fn first_expires_wins() {
        let mut map = headers(&[("date", &date(0)), ("expires", &date(10))]);
        map.append(header::EXPIRES, HeaderValue::from_str(&date(99)).unwrap());
        let f = storability(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &map,
            &MATCHED,
            now(),
        )
        .unwrap();
        assert_eq!(f.lifetime, secs(10));
    }

    #[test]
    fn max_age_beats_invalid_expires() {
        let resp = [("cache-control", "max-age=30"), ("expires", "0")];
        assert_eq!(
            lifetime(&resp, &MATCHED),
            (secs(30), FreshnessSource::Origin)
        );
    }

    #[test]
    fn invalid_max_age_is_stale() {
        let rules = FreshnessRules {
            route_ttl: Some(secs(15)),
            ..MATCHED
        };
        assert_eq!(
            lifetime(&[("cache-control", "max-age=soon")], &rules),
            (Duration::ZERO, FreshnessSource::Origin)
        );
    }

    #[test]
    fn lifetime_is_capped() {
        let resp = [
            ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        assert_eq!(lifetime(&resp, &MATCHED).0, MAX_LIFETIME);
        let rules = FreshnessRules {
            route_ttl: Some(Duration::MAX),
            ..MATCHED
        };
        assert_eq!(
            lifetime(&[], &rules),
            (MAX_LIFETIME, FreshnessSource::Route)
        );
    }

    #[test]
    fn no_cache_is_stored_with_zero_lifetime() {
        let rules = FreshnessRules {
            route_ttl: Some(secs(15)),
            ..MATCHED
        };
        for v in [
            "no-cache",
            "no-cache, max-age=60",
            r#"no-cache="set-cookie""#,
        ] {
            let f = store(&[("cache-control", v)], &rules).unwrap();
            assert_eq!(
                (f.lifetime, f.source),
                (Duration::ZERO, FreshnessSource::Origin),
                "{v}"
            );
            assert!(f.must_revalidate, "{v}");
            assert!(
                !f.stale_if_error_forbidden,
                "{v}: no-cache still allows stale-if-error"
            );
        }
    }

    #[test]
    fn must_revalidate_with_zero_freshness() {
        let f = store(&[("cache-control", "max-age=0, must-revalidate")], &MATCHED).unwrap();
        assert_eq!(f.lifetime, Duration::ZERO);
        assert!(f.must_revalidate && f.stale_if_error_forbidden);
    }

    #[test]
    fn default_has_no_revalidation_constraints() {
        let f = store(&[], &MATCHED).unwrap();
        assert_eq!(
            f,
            Freshness {
                lifetime: secs(30),
                source: FreshnessSource::Default,
                stale_if_error: None,
                stale_while_revalidate: None,
                must_revalidate: false,
                stale_if_error_forbidden: false,
            }
        );
    }

    #[test]
    fn stale_directives_are_carried_when_honoured() {
        let f = store(
            &[(
                "cache-control",
                "max-age=5, stale-if-error=60, stale-while-revalidate=10",
            )],
            &MATCHED,
        )
        .unwrap();
        assert_eq!(f.stale_if_error, Some(secs(60)));
        assert_eq!(f.stale_while_revalidate, Some(secs(10)));
        assert_eq!(f.stale_if_error_window(secs(300)), secs(60));
        assert_eq!(f.stale_while_revalidate_window(Duration::ZERO), secs(10));

        let rules = FreshnessRules {
            honor_origin: false,
            ..MATCHED
        };
        let f = store(
            &[(
                "cache-control",
                "stale-if-error=60, stale-while-revalidate=10",
            )],
            &rules,
        )
        .unwrap();
        assert_eq!((f.stale_if_error, f.stale_while_revalidate), (None, None));
        assert_eq!(f.stale_if_error_window(secs(300)), secs(300));
        assert_eq!(f.stale_while_revalidate_window(secs(7)), secs(7));
    }

    #[test]
    fn revalidation_directives_forbid_stale() {
        for v in ["must-revalidate", "proxy-revalidate", "s-maxage=60"] {
            let f = store(
                &[(
                    "cache-control",
                    &format!("{v}, stale-if-error=60, stale-while-revalidate=9"),
                )],
                &MATCHED,
            )
            .unwrap();
            assert!(f.must_revalidate && f.stale_if_error_forbidden, "{v}");
            assert_eq!(f.stale_if_error_window(secs(300)), Duration::ZERO, "{v}");
            assert_eq!(
                f.stale_while_revalidate_window(secs(60)),
                Duration::ZERO,
                "{v}"
            );
        }
        let f = store(
            &[("cache-control", "no-cache, stale-while-revalidate=9")],
            &MATCHED,
        )
        .unwrap();
        assert_eq!(f.stale_while_revalidate_window(secs(60)), Duration::ZERO);
        assert_eq!(f.stale_if_error_window(secs(300)), secs(300));
    }

    #[test]
    fn fresh_for_counts_upstream_age_only_for_origin() {
        let f = store(&[("cache-control", "max-age=60")], &MATCHED).unwrap();
        assert_eq!(f.fresh_for(secs(50)), secs(10));
        assert_eq!(f.fresh_for(secs(90)), Duration::ZERO);
        let f = store(&[], &MATCHED).unwrap();
        assert_eq!(f.fresh_for(secs(50)), secs(30));
    }

    // ---- initial age ----

    #[test]
    fn initial_age_cases() {
        assert_eq!(initial_age(&HeaderMap::new(), now()), Duration::ZERO);
        assert_eq!(initial_age(&headers(&[("age", "12")]), now()), secs(12));
        assert_eq!(
            initial_age(&headers(&[("date", &date(-7))]), now()),
            secs(7)
        );
        assert_eq!(
            initial_age(&headers(&[("age", "3"), ("date", &date(-7))]), now()),
            secs(7)
        );
        assert_eq!(
            initial_age(&headers(&[("age", "30"), ("date", &date(-7))]), now()),
            secs(30)
        );
        // A Date from the future (clock skew) is not a negative age.
        assert_eq!(
            initial_age(&headers(&[("date", &date(60))]), now()),
            Duration::ZERO
        );
        assert_eq!(
            initial_age(&headers(&[("age", "-5"), ("date", "nope")]), now()),
            Duration::ZERO
        );
        assert_eq!(initial_age(&headers(&[("age", " 4 ")]), now()), secs(4));
        assert_eq!(
            initial_age(&headers(&[("age", "99999999999999999999")]), now()),
            MAX_LIFETIME
        );
    }

    // ---- Vary ----

    #[test]
    fn vary_names_cases() {
        assert_eq!(vary_names(&HeaderMap::new()), Ok(vec![]));
        let map = headers(&[
            ("vary", "Accept-Encoding, X-Foo"),
            ("vary", " accept-encoding ,, Accept"),
        ]);
        let names = vary_names(&map).unwrap();
        let names: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "accept-encoding", "x-foo"]);
        assert!(!has_vary_star(&map));
    }

    #[test]
    fn vary_star() {
        assert_eq!(vary_names(&headers(&[("vary", "*")])), Err(VaryStar));
        assert_eq!(
            vary_names(&headers(&[("vary", "accept"), ("vary", " * ")])),
            Err(VaryStar)
        );
        assert!(has_vary_star(&headers(&[("vary", "accept, *")])));
    }

    #[test]
    fn vary_drops_invalid_names() {
        let names = vary_names(&headers(&[("vary", "bad name, x(y), Accept")])).unwrap();
        assert_eq!(names, [header::ACCEPT]);
    }

    // ---- conditional requests ----

    fn nm(req: &[(&str, &str)], etag: Option<&str>, last_modified: Option<&str>) -> bool {
        let etag = etag.map(|e| HeaderValue::from_str(e).unwrap());
        let lm = last_modified.map(|l| HeaderValue::from_str(l).unwrap());
        not_modified(&headers(req), etag.as_ref(), lm.as_ref())
    }

    #[test]
    fn if_none_match_strong_and_weak() {
        assert!(nm(&[("if-none-match", r#""a""#)], Some(r#""a""#), None));
        assert!(nm(&[("if-none-match", r#"W/"a""#)], Some(r#""a""#), None));
        assert!(nm(&[("if-none-match", r#""a""#)], Some(r#"W/"a""#), None));
        assert!(nm(&[("if-none-match", r#"W/"a""#)], Some(r#"W/"a""#), None));
        assert!(!nm(&[("if-none-match", r#""a""#)], Some(r#""b""#), None));
        assert!(
            !nm(&[("if-none-match", r#""a""#)], Some(r#""A""#), None),
            "opaque tags are case-sensitive"
        );
        assert!(
            !nm(&[("if-none-match", r#"w/"a""#)], Some(r#""a""#), None),
            "the W/ prefix is case-sensitive"
        );
    }

    #[test]
    fn if_none_match_lists() {
        let stored = Some(r#""c""#);
        assert!(nm(&[("if-none-match", r#""a", W/"b", "c""#)], stored, None));
        assert!(nm(
            &[("if-none-match", r#""a""#), ("if-none-match", r#" "c" "#)],
            stored,
            None
        ));
        assert!(nm(&[("if-none-match", r#",,"a",,"c","#)], stored, None));
        assert!(!nm(&[("if-none-match", r#""a", "b""#)], stored, None));
        // Commas may sit inside a tag.
        assert!(nm(
            &[("if-none-match", r#""x,y", "z""#)],
            Some(r#""x,y""#),
            None
        ));
        assert!(!nm(&[("if-none-match", r#""x,y""#)], Some(r#""x""#), None));
    }

    #[test]
    fn if_none_match_star() {
        assert!(nm(&[("if-none-match", "*")], Some(r#""a""#), None));
        assert!(nm(&[("if-none-match", "*")], None, None));
        assert!(nm(&[("if-none-match", r#""q", *"#)], None, None));
    }

    #[test]
    fn if_none_match_without_stored_etag() {
        assert!(!nm(&[("if-none-match", r#""a""#)], None, None));
    }

    #[test]
    fn if_none_match_unquoted_echo() {
        assert!(nm(&[("if-none-match", "abc")], Some("abc"), None));
        assert!(!nm(&[("if-none-match", r#""abc"#)], Some(r#""abc""#), None));
    }

    #[test]
    fn if_none_match_overrides_if_modified_since() {
        let lm = date(-100);
        let ims = date(0);
        let req = [
            ("if-none-match", r#""other""#),
            ("if-modified-since", &*ims),
        ];
        assert!(!nm(&req, Some(r#""a""#), Some(&lm)));
        assert!(nm(
            &[("if-modified-since", &ims)],
            Some(r#""a""#),
            Some(&lm)
        ));
    }

    #[test]
    fn if_modified_since() {
        let since = date(0);
        let req = [("if-modified-since", &*since)];
        assert!(nm(&req, None, Some(&date(-1))), "modified before");
        assert!(nm(&req, None, Some(&since)), "modified exactly then");
        assert!(!nm(&req, None, Some(&date(1))), "modified after");
        assert!(!nm(&req, None, None), "nothing to compare with");
        assert!(
            !nm(&req, None, Some("yesterday")),
            "unreadable Last-Modified"
        );
    }

    #[test]
    fn if_modified_since_malformed_or_repeated_is_ignored() {
        let lm = Some(date(-100));
        assert!(!nm(
            &[("if-modified-since", "not a date")],
            None,
            lm.as_deref()
        ));
        assert!(!nm(&[("if-modified-since", "0")], None, lm.as_deref()));
        let twice = [
            ("if-modified-since", &*date(0)),
            ("if-modified-since", &*date(0)),
        ];
        assert!(!nm(&twice, None, lm.as_deref()));
    }

    #[test]
    fn no_preconditions_is_not_304() {
        assert!(!nm(&[], Some(r#""a""#), Some(&date(-1))));
    }

    #[test]
    fn validator_date_prefers_last_modified() {
        let map = headers(&[("date", "d"), ("last-modified", "lm")]);
        assert_eq!(validator_date(&map).unwrap(), "lm");
        let map = headers(&[("date", "d")]);
        assert_eq!(validator_date(&map).unwrap(), "d");
        assert_eq!(validator_date(&HeaderMap::new()), None);
    }

    // ---- Cache-Status ----

    #[test]
    fn cache_status_values() {
        assert_eq!(cache_status_hit(), "oddscache; hit");
        let hit = CacheStatus {
            hit: true,
            ..CacheStatus::default()
        };
        assert_eq!(hit.to_header_value(), cache_status_hit());
        let stored = CacheStatus {
            fwd: Some(Fwd::UriMiss),
            stored: true,
            ..CacheStatus::default()
        };
        assert_eq!(stored.to_header_value(), "oddscache; fwd=uri-miss; stored");
        let revalidated = CacheStatus {
            fwd: Some(Fwd::Stale),
            fwd_status: Some(304),
            ..CacheStatus::default()
        };
        assert_eq!(
            revalidated.to_header_value(),
            "oddscache; fwd=stale; fwd-status=304"
        );
        let sie = CacheStatus {
            fwd: Some(Fwd::UriMiss),
            fwd_status: Some(502),
            detail: Some("stale-if-error"),
            ..CacheStatus::default()
        };
        assert_eq!(
            sie.to_header_value(),
            "oddscache; fwd=uri-miss; fwd-status=502; detail=stale-if-error"
        );
        let ttl = CacheStatus {
            hit: true,
            ttl: Some(-3),
            ..CacheStatus::default()
        };
        assert_eq!(ttl.to_header_value(), "oddscache; hit; ttl=-3");
        assert_eq!(CacheStatus::default().to_header_value(), "oddscache");
    }

    #[test]
    fn cache_status_detail_quoting() {
        let d = |detail| CacheStatus {
            fwd: Some(Fwd::Bypass),
            detail: Some(detail),
            ..CacheStatus::default()
        };
        assert_eq!(
            d("a/b:c").to_header_value(),
            "oddscache; fwd=bypass; detail=a/b:c"
        );
        assert_eq!(
            d("two words").to_header_value(),
            r#"oddscache; fwd=bypass; detail="two words""#
        );
        assert_eq!(
            d("9lives").to_header_value(),
            r#"oddscache; fwd=bypass; detail="9lives""#
        );
        assert_eq!(
            d(r#"say "hi"\"#).to_header_value(),
            r#"oddscache; fwd=bypass; detail="say \"hi\"\\""#
        );
        assert_eq!(
            d("é\n").to_header_value(),
            r#"oddscache; fwd=bypass; detail="""#
        );
    }

    #[test]
    fn fwd_tokens() {
        let all = [
            (Fwd::UriMiss, "uri-miss"),
            (Fwd::VaryMiss, "vary-miss"),
            (Fwd::Stale, "stale"),
            (Fwd::Request, "request"),
            (Fwd::Bypass, "bypass"),
        ];
        for (fwd, token) in all {
            assert_eq!(fwd.as_str(), token);
        }
    }

    // ---- hop-by-hop ----

    #[test]
    fn strips_hop_by_hop() {
        let mut map = headers(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "application/json"),
            ("cache-control", "max-age=5"),
        ]);
        strip_hop_by_hop(&mut map);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type", "cache-control"]);
    }

    #[test]
    fn strips_connection_listed_names() {
        let mut map = headers(&[
            ("Connection", "X-Internal, close"),
            ("connection", " X-Other ,, bad name"),
            ("x-internal", "1"),
            ("x-other", "2"),
            ("x-other", "3"),
            ("x-kept", "4"),
        ]);
        strip_hop_by_hop(&mut map);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn strip_without_hop_by_hop_is_noop() {
        let mut map = headers(&[("etag", r#""a""#), ("vary", "accept")]);
        let before = map.clone();
        strip_hop_by_hop(&mut map);
        assert_eq!(map, before);
    }

    // ---- properties ----

    /// Bytes `HeaderValue::from_bytes` accepts: HTAB, visible ASCII and
    /// space, and obs-text.
    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..96)
    }

    /// Directive-shaped text, which reaches deeper than random bytes.
    fn directive_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("max-age".to_owned()),
            Just("s-maxage".to_owned()),
            Just("no-cache".to_owned()),
            Just("private".to_owned()),
            Just("stale-if-error".to_owned()),
            Just("=".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just(",".to_owned()),
            Just(";".to_owned()),
            Just(" ".to_owned()),
            "[0-9]{1,25}",
            "[a-zA-Z-]{1,8}",
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(lines in proptest::collection::vec(header_bytes(), 1..4)) {
            let mut map = HeaderMap::new();
            for line in &lines {
                map.append(header::CACHE_CONTROL, HeaderValue::from_bytes(line).unwrap());
            }
            let c = CacheControl::parse(&map, &header::CACHE_CONTROL);
            prop_assert!(c.is_some());
            let c = c.unwrap();
            for n in [c.max_age, c.s_maxage, c.stale_if_error, c.stale_while_revalidate].into_iter().flatten() {
                prop_assert!(n <= DELTA_SECONDS_MAX);
            }
        }

        #[test]
        fn parse_never_panics_on_directives(text in directive_text()) {
            let _ = cc(&text);
        }

        #[test]
        fn lines_parse_like_one_joined_line(
            a in "[a-z0-9=, -]{0,30}",
            b in "[a-z0-9=, -]{0,30}",
        ) {
            // Without quotes nothing can span the line break.
            let split = CacheControl::parse(
                &headers(&[("cache-control", &a), ("cache-control", &b)]),
                &header::CACHE_CONTROL,
            );
            prop_assert_eq!(split, Some(cc(&format!("{a},{b}"))));
        }

        #[test]
        fn rules_never_panic(
            control in header_bytes(),
            targeted in header_bytes(),
            expires in header_bytes(),
            date_value in header_bytes(),
            age in header_bytes(),
            inm in header_bytes(),
            honor_origin: bool,
            status in 100u16..600,
        ) {
            let mut resp = HeaderMap::new();
            resp.insert(header::CACHE_CONTROL, HeaderValue::from_bytes(&control).unwrap());
            resp.insert(CDN_CACHE_CONTROL, HeaderValue::from_bytes(&targeted).unwrap());
            resp.insert(header::EXPIRES, HeaderValue::from_bytes(&expires).unwrap());
            resp.insert(header::DATE, HeaderValue::from_bytes(&date_value).unwrap());
            resp.insert(header::AGE, HeaderValue::from_bytes(&age).unwrap());
            resp.insert(header::VARY, HeaderValue::from_bytes(&inm).unwrap());
            resp.insert(header::ETAG, HeaderValue::from_bytes(&targeted).unwrap());
            let mut req = HeaderMap::new();
            req.insert(header::IF_NONE_MATCH, HeaderValue::from_bytes(&inm).unwrap());
            req.insert(header::IF_MODIFIED_SINCE, HeaderValue::from_bytes(&date_value).unwrap());
            let rules = FreshnessRules { honor_origin, ..MATCHED };
            let status = StatusCode::from_u16(status).unwrap();
            if let Ok(f) = storability(&Method::GET, &req, status, &resp, &rules, now()) {
                prop_assert!(f.lifetime <= MAX_LIFETIME);
            }
            prop_assert!(initial_age(&resp, now()) <= MAX_LIFETIME);
            let _ = vary_names(&resp);
            let _ = not_modified(&req, resp.get(header::ETAG), resp.get(header::DATE));
            req.insert(header::CONNECTION, HeaderValue::from_bytes(&control).unwrap());
            strip_hop_by_hop(&mut req);
            prop_assert!(!req.contains_key(header::CONNECTION));
        }
    }
}
