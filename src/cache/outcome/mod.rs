//! What this cache says about an answer: the `X-Cache` field, the
//! `Cache-Status` field (RFC 9211) and their names and values, all in one
//! place. [`status`] writes the `Cache-Status` member from its parameters.

use http::header::{HeaderName, HeaderValue};

mod status;

pub use status::{cache_status_hit, CacheStatus, Fwd, CACHE_NAME};

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The `X-Cache` value of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XCache {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl XCache {
    pub fn as_str(self) -> &'static str {
        match self {
            XCache::Hit => "HIT",
            XCache::Miss => "MISS",
            XCache::Stale => "STALE",
            XCache::Bypass => "BYPASS",
        }
    }

    pub fn value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}
