//! What the cache did for one request, and everything an answer says about
//! it: the `X-Cache` field, the `Cache-Status` field (RFC 9211) and the
//! `oddscache_requests_total{cache}` label all come from one [`Outcome`],
//! so they cannot disagree. The field names and every value they take live
//! here; [`status`] writes a `Cache-Status` member from its parameters.
//!
//! The hit path reads this too: a hit's values are static, so labelling
//! one formats and allocates nothing.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::policy::NotStorable;
use crate::metrics::CacheOutcome;

mod status;

pub use status::{CacheStatus, Fwd, CACHE_NAME};

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the cache did for one request, as pingora's `CachePhase` says it.
/// Each variant holds what its `Cache-Status` member reports, and no more:
/// it is `Copy` and three words wide at most, for the hit path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A fresh entry from L1.
    Hit,
    /// A fresh entry that another request's fill, which this one waited
    /// for, just stored.
    Coalesced,
    /// A peer's copy from the shared L2, now in L1 too.
    L2,
    /// An expired entry within `stale-while-revalidate`, served while one
    /// background fetch refreshes it; `ttl` is its freshness left, in
    /// seconds (negative).
    StaleWhileRevalidate { ttl: i64 },
    /// An expired entry standing in for an upstream that failed:
    /// `fwd_status` is the upstream's 5xx, or the 502/504 it would have
    /// got when the upstream gave no answer.
    StaleIfError { fwd_status: u16, ttl: i64 },
    /// Went upstream and answers with what came back: `stored` when it is
    /// in the cache now (not when an invalidation overtook the fetch, nor
    /// for a HEAD or Range request, which are passed). A revalidation is
    /// `fwd: Fwd::Stale, fwd_status: 304`.
    Miss {
        fwd: Fwd,
        fwd_status: u16,
        stored: bool,
    },
    /// Went upstream; what came back is answered but not stored.
    NotStored {
        fwd: Fwd,
        fwd_status: u16,
        why: Unstored,
    },
    /// Went upstream, got no answer, and no stale copy could stand in;
    /// `error` is the failure's label (`error`, `timeout`).
    Failed { fwd: Fwd, error: &'static str },
    /// An unsafe method, forwarded as it is.
    Bypass { fwd_status: u16 },
    /// An unsafe method whose upstream gave no answer.
    BypassFailed { error: &'static str },
    /// Refused by the rate limit before any lookup.
    RateLimited,
}

/// Why an answer from the upstream was not stored: its `Cache-Status`
/// `detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unstored {
    /// Its body is over `max_object_bytes` (declared or as read), so it
    /// streams through.
    TooLarge,
    /// The caching rules refuse it.
    Refused(NotStorable),
}

impl Unstored {
    pub fn as_str(self) -> &'static str {
        match self {
            Unstored::TooLarge => "too-large",
            Unstored::Refused(why) => why.as_str(),
        }
    }
}

impl Outcome {
    /// The `cache` label of `oddscache_requests_total`, which `X-Cache`
    /// spells in capitals.
    pub fn label(self) -> CacheOutcome {
        match self {
            Outcome::Hit | Outcome::Coalesced | Outcome::L2 => CacheOutcome::hit,
            Outcome::StaleWhileRevalidate { .. } | Outcome::StaleIfError { .. } => {
                CacheOutcome::stale
            }
            Outcome::Miss { .. } | Outcome::NotStored { .. } | Outcome::Failed { .. } => {
                CacheOutcome::miss
            }
            Outcome::Bypass { .. } | Outcome::BypassFailed { .. } | Outcome::RateLimited => {
                CacheOutcome::bypass
            }
        }
    }

    /// The `X-Cache` value.
    pub fn x_cache(self) -> HeaderValue {
        HeaderValue::from_static(match self.label() {
            CacheOutcome::hit => "HIT",
            CacheOutcome::miss => "MISS",
            CacheOutcome::stale => "STALE",
            CacheOutcome::bypass => "BYPASS",
        })
    }

    /// The parameters of this cache's `Cache-Status` member.
    pub fn params(self) -> CacheStatus {
        let none = CacheStatus::default();
        match self {
            Outcome::Hit => CacheStatus { hit: true, ..none },
            Outcome::Coalesced => CacheStatus {
                hit: true,
                detail: Some("coalesced"),
                ..none
            },
            Outcome::L2 => CacheStatus {
                hit: true,
                detail: Some("l2"),
                ..none
            },
            Outcome::StaleWhileRevalidate { ttl } => CacheStatus {
                hit: true,
                ttl: Some(ttl),
                detail: Some("stale-while-revalidate"),
                ..none
            },
            Outcome::StaleIfError { fwd_status, ttl } => CacheStatus {
                fwd: Some(Fwd::Stale),
                fwd_status: Some(fwd_status),
                ttl: Some(ttl),
                detail: Some("stale-if-error"),
                ..none
            },
            Outcome::Miss {
                fwd,
                fwd_status,
                stored,
            } => CacheStatus {
                fwd: Some(fwd),
                fwd_status: Some(fwd_status),
                stored,
                ..none
            },
            Outcome::NotStored {
                fwd,
                fwd_status,
                why,
            } => CacheStatus {
                fwd: Some(fwd),
                fwd_status: Some(fwd_status),
                detail: Some(why.as_str()),
                ..none
            },
            Outcome::Failed { fwd, error } => CacheStatus {
                fwd: Some(fwd),
                detail: Some(error),
                ..none
            },
            Outcome::Bypass { fwd_status } => CacheStatus {
                fwd: Some(Fwd::Bypass),
                fwd_status: Some(fwd_status),
                ..none
            },
            Outcome::BypassFailed { error } => CacheStatus {
                fwd: Some(Fwd::Bypass),
                detail: Some(error),
                ..none
            },
            Outcome::RateLimited => CacheStatus {
                detail: Some("rate-limited"),
                ..none
            },
        }
    }

    /// The `Cache-Status` value: static for the outcomes without numbers
    /// (a hit above all), written from [`Self::params`] for the rest.
    pub fn cache_status(self) -> HeaderValue {
        match self {
            Outcome::Hit => HeaderValue::from_static("oddscache; hit"),
            Outcome::Coalesced => HeaderValue::from_static("oddscache; hit; detail=coalesced"),
            Outcome::L2 => HeaderValue::from_static("oddscache; hit; detail=l2"),
            Outcome::RateLimited => HeaderValue::from_static("oddscache; detail=rate-limited"),
            _ => self.params().to_header_value(),
        }
    }

    /// Writes `X-Cache` and `Cache-Status`, replacing any the origin sent.
    pub fn write(self, headers: &mut HeaderMap) {
        headers.insert(X_CACHE.clone(), self.x_cache());
        headers.insert(CACHE_STATUS.clone(), self.cache_status());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each, with the header text each answered with before there
    /// was an `Outcome` (tests/proxy.rs checks them end to end).
    fn every_outcome() -> Vec<(Outcome, &'static str, &'static str)> {
        use Fwd::*;
        vec![
            (Outcome::Hit, "HIT", "oddscache; hit"),
            (
                Outcome::Coalesced,
                "HIT",
                "oddscache; hit; detail=coalesced",
            ),
            (Outcome::L2, "HIT", "oddscache; hit; detail=l2"),
            (
                Outcome::StaleWhileRevalidate { ttl: -2 },
                "STALE",
                "oddscache; hit; ttl=-2; detail=stale-while-revalidate",
            ),
            (
                Outcome::StaleIfError {
                    fwd_status: 503,
                    ttl: -40,
                },
                "STALE",
                "oddscache; fwd=stale; fwd-status=503; ttl=-40; detail=stale-if-error",
            ),
            (
                Outcome::Miss {
                    fwd: UriMiss,
                    fwd_status: 200,
                    stored: true,
                },
                "MISS",
                "oddscache; fwd=uri-miss; fwd-status=200; stored",
            ),
            (
                Outcome::Miss {
                    fwd: Stale,
                    fwd_status: 304,
                    stored: false,
                },
                "MISS",
                "oddscache; fwd=stale; fwd-status=304",
            ),
            (
                Outcome::NotStored {
                    fwd: UriMiss,
                    fwd_status: 200,
                    why: Unstored::TooLarge,
                },
                "MISS",
                "oddscache; fwd=uri-miss; fwd-status=200; detail=too-large",
            ),
            (
                Outcome::NotStored {
                    fwd: Stale,
                    fwd_status: 304,
                    why: Unstored::Refused(NotStorable::NoStore),
                },
                "MISS",
                "oddscache; fwd=stale; fwd-status=304; detail=no-store",
            ),
            (
                Outcome::Failed {
                    fwd: Stale,
                    error: "timeout",
                },
                "MISS",
                "oddscache; fwd=stale; detail=timeout",
            ),
            (
                Outcome::Bypass { fwd_status: 201 },
                "BYPASS",
                "oddscache; fwd=bypass; fwd-status=201",
            ),
            (
                Outcome::BypassFailed { error: "error" },
                "BYPASS",
                "oddscache; fwd=bypass; detail=error",
            ),
            (
                Outcome::RateLimited,
                "BYPASS",
                "oddscache; detail=rate-limited",
            ),
        ]
    }

    #[test]
    fn each_outcome_labels_its_answer() {
        for (outcome, x_cache, cache_status) in every_outcome() {
            assert_eq!(outcome.x_cache(), x_cache, "{outcome:?}");
            assert_eq!(outcome.cache_status(), cache_status, "{outcome:?}");
            let mut h = HeaderMap::new();
            h.insert(X_CACHE.clone(), HeaderValue::from_static("origin's"));
            outcome.write(&mut h);
            assert_eq!(h.len(), 2);
            assert_eq!(h[&X_CACHE], x_cache);
            assert_eq!(h[&CACHE_STATUS], cache_status);
        }
    }

    #[test]
    fn the_static_values_are_what_the_params_write() {
        for (outcome, _, _) in every_outcome() {
            assert_eq!(
                outcome.cache_status(),
                outcome.params().to_header_value(),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn the_metric_label_is_x_cache_in_lower_case() {
        for (outcome, x_cache, _) in every_outcome() {
            let label = format!("{:?}", outcome.label());
            assert_eq!(label, x_cache.to_ascii_lowercase(), "{outcome:?}");
        }
    }

    #[test]
    fn an_outcome_is_small() {
        assert!(std::mem::size_of::<Outcome>() <= 24);
    }
}
