//! What a stored response varies on, and answering conditional requests
//! from it: `Vary` names (RFC 9110 §12.5.5) and `If-None-Match` /
//! `If-Modified-Since` evaluation (RFC 9110 §13).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::syntax::{http_date, list_members, trim, trim_end, trim_start};

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
    etag: Option<&[u8]>,
    last_modified: Option<&[u8]>,
) -> bool {
    if req_headers.contains_key(header::IF_NONE_MATCH) {
        let stored = etag.map(|e| opaque_tag(trim(e)));
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
    match (
        http_date(since.as_bytes()),
        last_modified.and_then(http_date),
    ) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::test_util::{date, headers};

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
        not_modified(
            &headers(req),
            etag.map(str::as_bytes),
            last_modified.map(str::as_bytes),
        )
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
}
