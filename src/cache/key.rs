//! Cache keys: the request path plus its query parameters sorted by name,
//! and, for responses that `Vary`, the values of the named request headers.
//!
//! Pure and allocation-free in the common case: a path whose query is
//! already in order is borrowed as is, so a hit never builds a string.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, Uri};

/// The primary key of a request URI.
pub fn primary(uri: &Uri) -> Cow<'_, str> {
    let Some(pq) = uri.path_and_query() else {
        return Cow::Borrowed("/");
    };
    let Some(query) = pq.query() else {
        return Cow::Borrowed(pq.as_str());
    };
    // An absolute-form target with an empty path (`http://h?a=1`) keeps no
    // `/` in its text; it is the same resource as `/?a=1`, so it takes the
    // owned path, where `path()` supplies the `/`.
    if query_is_normal(query) && pq.as_str().starts_with(pq.path()) {
        return Cow::Borrowed(pq.as_str());
    }
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    // Stable: repeated names keep their relative order, which can matter.
    params.sort_by(|a, b| param_name(a).cmp(param_name(b)));
    let path = pq.path();
    let mut key = String::with_capacity(pq.as_str().len());
    key.push_str(path);
    if !params.is_empty() {
        key.push('?');
        key.push_str(&params.join("&"));
    }
    Cow::Owned(key)
}

fn param_name(param: &str) -> &str {
    param.split_once('=').map_or(param, |(name, _)| name)
}

fn query_is_normal(query: &str) -> bool {
    if query.is_empty() {
        return false;
    }
    let mut prev = "";
    for p in query.split('&') {
        if p.is_empty() {
            return false;
        }
        let name = param_name(p);
        if name < prev {
            return false;
        }
        prev = name;
    }
    true
}

/// The key of one variant of a response that varies on `names`.
///
/// `\n` cannot appear in a URI or a header value, so variants never collide
/// with each other or with a primary key.
pub fn variant(primary: &str, names: &[HeaderName], headers: &HeaderMap) -> String {
    let mut key = String::with_capacity(primary.len() + 16 * names.len());
    key.push_str(primary);
    for name in names {
        key.push('\n');
        key.push_str(name.as_str());
        key.push(':');
        let mut first = true;
        for v in headers.get_all(name) {
            if !first {
                key.push(',');
            }
            first = false;
            // Non-visible bytes are replaced rather than trusted.
            key.push_str(&String::from_utf8_lossy(v.as_bytes()).replace('\n', " "));
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(uri: &str) -> String {
        primary(&uri.parse().unwrap()).into_owned()
    }

    #[test]
    fn query_order_does_not_matter() {
        assert_eq!(key("/g?b=2&a=1"), "/g?a=1&b=2");
        assert_eq!(key("/g?a=1&b=2"), "/g?a=1&b=2");
        assert_eq!(key("/g?b=2&&a=1&"), "/g?a=1&b=2");
        assert_eq!(key("/g?"), "/g");
        assert_eq!(key("/g"), "/g");
        assert_eq!(key("http://h:1/g?z&y=1"), "/g?y=1&z");
    }

    #[test]
    fn repeated_names_keep_their_order() {
        assert_eq!(key("/g?a=2&b=1&a=1"), "/g?a=2&a=1&b=1");
        assert_ne!(key("/g?a=1&a=2"), key("/g?a=2&a=1"));
    }

    #[test]
    fn an_empty_absolute_path_is_slash() {
        // Found by fuzz/cache_key: this was the key "?a=1", which is no
        // path and split the cache from "/?a=1".
        assert_eq!(key("http://h?a=1"), "/?a=1");
        assert_eq!(key("http://h?b=1&a=2"), key("/?a=2&b=1"));
        assert_eq!(key("http://h"), "/");
        assert_eq!(key("*"), "*");
    }

    #[test]
    fn normal_queries_are_borrowed() {
        let uri: Uri = "/g?a=1&b=2".parse().unwrap();
        assert!(matches!(primary(&uri), Cow::Borrowed(_)));
    }

    #[test]
    fn variants_differ_by_header_values() {
        let names = [HeaderName::from_static("accept-encoding")];
        let mut h = HeaderMap::new();
        let none = variant("/g", &names, &h);
        h.insert("accept-encoding", "gzip".parse().unwrap());
        let gzip = variant("/g", &names, &h);
        assert_ne!(none, gzip);
        assert_ne!(gzip, "/g");
    }

    proptest! {
        #[test]
        fn any_permutation_gives_one_key(mut params in proptest::collection::vec("[a-z]{1,3}=[0-9]{0,2}", 0..6)) {
            params.sort();
            params.dedup_by(|a, b| param_name(a) == param_name(b));
            let sorted = key(&format!("/p?{}", params.join("&")));
            params.reverse();
            let reversed = key(&format!("/p?{}", params.join("&")));
            prop_assert_eq!(sorted, reversed);
        }
    }
}
