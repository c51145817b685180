//! Stripping hop-by-hop fields (RFC 9110 §7.6.1), which describe one
//! connection and must be neither forwarded nor stored.

use http::header::{self, HeaderMap, HeaderName};

use super::syntax::list_members;

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
    use crate::cache::policy::test_util::headers;

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
}
