//! Helpers shared by the policy tests: building header maps, a fixed
//! `now` and HTTP-dates around it, the rules of a matched route, running
//! [`storability`] on literal headers, and a strategy for header bytes.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use proptest::prelude::*;

use super::{storability, Freshness, FreshnessRules, NotStorable};

pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

pub(super) fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub(super) fn date(offset: i64) -> String {
    let t = if offset >= 0 {
        now() + Duration::from_secs(offset.unsigned_abs())
    } else {
        now() - Duration::from_secs(offset.unsigned_abs())
    };
    httpdate::fmt_http_date(t)
}

pub(super) const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) const MATCHED: FreshnessRules = FreshnessRules {
    honor_origin: true,
    route_ttl: None,
    status_ttl: None,
    default_ttl: Some(secs(30)),
    plain: false,
};

pub(super) fn store(
    resp: &[(&str, &str)],
    rules: &FreshnessRules,
) -> Result<Freshness, NotStorable> {
    store_full(&Method::GET, &[], 200, resp, rules)
}

pub(super) fn store_full(
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

/// Bytes `HeaderValue::from_bytes` accepts: HTAB, visible ASCII and
/// space, and obs-text.
pub(super) fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..96)
}
