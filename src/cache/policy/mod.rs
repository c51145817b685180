//! The HTTP caching rules this shared cache lives by, as pure functions.
//!
//! Owns: parsing `Cache-Control` and its targeted variants (RFC 9111 §5.2,
//! RFC 9213, RFC 5861), deciding whether a response may be stored and for how
//! long it is fresh (RFC 9111 §3, §4.2, SPEC §4), the age a response arrives
//! with, `Vary` names, answering conditional requests from a stored entry
//! (RFC 9110 §13) and hop-by-hop stripping (RFC 9110 §7.6.1). What an answer
//! says about itself (`X-Cache`, `Cache-Status`) is [`super::outcome`]'s.
//!
//! Nothing here does I/O or reads a clock: the caller passes `now`, so every
//! rule is unit-tested beside its code. It runs on every miss, so parsing
//! borrows from the header bytes and allocates only where a result must own
//! its data.
//!
//! One principle settles the cases the RFCs leave to configuration: when
//! `honor_origin_cache_control` is off, only the origin's *permissive*
//! freshness (`max-age`, `s-maxage`, `Expires`, `stale-*`) is ignored. Its
//! *restrictive* directives (`no-store`, `private`, `no-cache`,
//! `must-revalidate`, `proxy-revalidate`) still apply, because ignoring them
//! could serve something the origin said must not be served.
//!
//! Map of the module (the submodules are private; everything callers use is
//! re-exported here, so every path stays `crate::cache::policy::X`):
//! - `cache_control`: the `Cache-Control` parser and the choice among the
//!   RFC 9213 targeted fields.
//! - `storability`: whether a response is stored, its freshness lifetime and
//!   stale windows, and the age it arrives with.
//! - `conditional`: `Vary` names and answering conditional requests.
//! - `hop_by_hop`: stripping hop-by-hop fields.
//! - `structured`: Structured Field Dictionaries, for the targeted fields.
//! - `syntax`: the field-value syntax the others share.

mod cache_control;
mod conditional;
mod hop_by_hop;
mod storability;
mod structured;
mod syntax;
#[cfg(test)]
mod test_util;

pub use cache_control::{
    cache_control_with_source, effective_cache_control, CacheControl, ControlSource,
    CDN_CACHE_CONTROL, ODDSCACHE_CACHE_CONTROL,
};
pub use conditional::{has_vary_star, not_modified, validator_date, vary_names, VaryStar};
pub use hop_by_hop::strip_hop_by_hop;
pub use storability::{
    heuristically_cacheable, initial_age, storability, Freshness, FreshnessRules, FreshnessSource,
    NotStorable,
};
pub use syntax::DELTA_SECONDS_MAX;

/// Properties that cut across the submodules: no input makes any rule panic.
#[cfg(test)]
mod tests {
    use super::storability::MAX_LIFETIME;
    use super::test_util::{header_bytes, now, MATCHED};
    use super::*;
    use http::header::{self, HeaderMap, HeaderValue};
    use http::{Method, StatusCode};
    use proptest::prelude::*;

    proptest! {
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
            let bytes = |name| resp.get(name).map(HeaderValue::as_bytes);
            let _ = not_modified(&req, bytes(header::ETAG), bytes(header::DATE));
            req.insert(header::CONNECTION, HeaderValue::from_bytes(&control).unwrap());
            strip_hop_by_hop(&mut req);
            prop_assert!(!req.contains_key(header::CONNECTION));
        }
    }
}
