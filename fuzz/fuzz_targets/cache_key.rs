//! Cache-key normalisation: the first line is a request URI, each further
//! line an `Accept-Encoding` value for a `Vary` variant.
//!
//! Invariants: a primary key is a path, parses as a URI again, and
//! normalising it once more gives the same key; with nothing to vary on a
//! variant is its primary key; and a variant key has one `\n` per name, so
//! variants never collide with each other or with primary keys.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use oddscache::cache::key;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let Ok(uri) = Uri::try_from(lines.next().unwrap_or_default()) else {
        return;
    };
    let primary = key::primary(&uri);
    assert!(
        primary.starts_with('/') || primary == "*",
        "{uri:?} -> {primary:?}"
    );
    let again: Uri = primary
        .parse()
        .unwrap_or_else(|e| panic!("{uri:?} -> {primary:?} is no URI: {e}"));
    assert_eq!(key::primary(&again), primary, "not idempotent for {uri:?}");

    let mut headers = HeaderMap::new();
    for value in lines.filter_map(|l| HeaderValue::from_bytes(l).ok()) {
        headers.append(http::header::ACCEPT_ENCODING, value);
    }
    assert_eq!(key::variant(&primary, &[], &headers), primary);
    let names = [
        http::header::ACCEPT_ENCODING,
        HeaderName::from_static("accept-language"),
    ];
    let variant = key::variant(&primary, &names, &headers);
    assert!(variant.starts_with(&*primary));
    assert_eq!(variant.matches('\n').count(), names.len(), "{variant:?}");
});
