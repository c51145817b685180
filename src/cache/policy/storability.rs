//! Whether a response may be stored, how long it is fresh, how it may be
//! served stale (RFC 9111 §3, §4.2, §4.2.4, RFC 5861, SPEC §4), and the age
//! it arrives with (RFC 9111 §4.2.3).
//!
//! Owns [`storability`], [`NotStorable`], [`FreshnessRules`],
//! [`Freshness`] and [`initial_age`]. The directives come from
//! `cache_control`; this module only decides what they mean.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use super::cache_control::{cache_control_with_source, CacheControl, ControlSource};
use super::conditional::has_vary_star;
use super::syntax::{delta_seconds, http_date, list_members, DELTA_SECONDS_MAX};

/// [`DELTA_SECONDS_MAX`] as a lifetime: the cap on every freshness lifetime
/// and age computed here.
pub(super) const MAX_LIFETIME: Duration = Duration::from_secs(DELTA_SECONDS_MAX);

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
    /// A plain shared cache (no `[[route]]` configured): an unmatched path
    /// may use heuristic freshness (RFC 9111 §4.2.2), and a `no-cache`
    /// response with a validator is stored to be revalidated on each use.
    pub plain: bool,
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
    /// A tenth of the time since `Last-Modified`, capped at
    /// [`HEURISTIC_MAX`] (RFC 9111 §4.2.2), in a plain shared cache.
    Heuristic,
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
    /// `no-cache` (RFC 9111 §5.2.2.4: never used without a successful
    /// validation), `must-revalidate`, `proxy-revalidate` or `s-maxage`
    /// (§4.2.4): not even a failed upstream lets a stale copy stand in.
    pub stale_if_error_forbidden: bool,
}

impl Freshness {
    /// Time left fresh for a response that arrived `initial_age` old. Only
    /// origin lifetimes count the age already spent upstream; route, status
    /// and default TTLs are this cache's own and start when it stores.
    pub fn fresh_for(&self, initial_age: Duration) -> Duration {
        match self.source {
            FreshnessSource::Origin | FreshnessSource::Heuristic => {
                self.lifetime.saturating_sub(initial_age)
            }
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
/// default ttl. Unmatched paths need explicit origin freshness, except in
/// a plain shared cache ([`FreshnessRules::plain`]), which uses heuristic
/// freshness from `Last-Modified`. An invalid `Expires` means already
/// expired: explicit, zero. `no-cache` stores with a zero lifetime, so every
/// reuse is revalidated first, and never serves stale on error.
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
        None if rules.unmatched() && !(rules.plain && rules.honor_origin) => {
            return Err(NotStorable::NoFreshness)
        }
        // A plain shared cache: heuristic freshness, or a `no-cache`
        // response kept to be revalidated on each use.
        None if rules.unmatched() => match heuristic_lifetime(resp_headers, now) {
            Some(lifetime) => (lifetime, FreshnessSource::Heuristic),
            None if cc.no_cache && has_validator(resp_headers) => {
                (Duration::ZERO, FreshnessSource::Origin)
            }
            None => return Err(NotStorable::NoFreshness),
        },
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
        stale_if_error_forbidden: cc.no_cache || forbid_stale,
    })
}

/// The longest heuristic freshness lifetime: a day, as a resource that has
/// not changed in ten days may still change tomorrow.
pub const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 3600);

/// RFC 9111 §4.2.2: a tenth of the time between `Last-Modified` and `Date`
/// (or now), capped at [`HEURISTIC_MAX`]; `None` without a usable
/// `Last-Modified`.
fn heuristic_lifetime(resp_headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let modified = http_date(resp_headers.get(header::LAST_MODIFIED)?.as_bytes())?;
    let date = resp_headers
        .get(header::DATE)
        .and_then(|d| http_date(d.as_bytes()))
        .unwrap_or(now);
    let age = date.duration_since(modified).ok()?;
    Some((age / 10).min(HEURISTIC_MAX))
}

fn has_validator(resp_headers: &HeaderMap) -> bool {
    resp_headers.contains_key(header::ETAG) || resp_headers.contains_key(header::LAST_MODIFIED)
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
    let Some(expires) = http_date(expires.as_bytes()) else {
        // RFC 9111 §5.3: invalid dates, notably "0", mean already expired.
        return Some(Duration::ZERO);
    };
    // RFC 9111 §4.2.1: lifetime is Expires − Date; no Date means "now".
    let date = resp_headers
        .get(header::DATE)
        .and_then(|d| http_date(d.as_bytes()))
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
/// the request's own delay): max(`Age`, now − `Date`, 0). A list-valued or
/// repeated `Age` counts by its first member, and an invalid one is
/// ignored (RFC 9111 §5.1).
pub fn initial_age(resp_headers: &HeaderMap, now: SystemTime) -> Duration {
    let age = list_members(resp_headers, header::AGE)
        .next()
        .and_then(delta_seconds)
        .map(Duration::from_secs)
        .unwrap_or_default();
    let apparent = resp_headers
        .get(header::DATE)
        .and_then(|d| http_date(d.as_bytes()))
        .and_then(|date| now.duration_since(date).ok())
        .unwrap_or_default();
    age.max(apparent).min(MAX_LIFETIME)
}

#[cfg(test)]
#[path = "storability_tests.rs"]
mod tests;
