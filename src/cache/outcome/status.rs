//! The `Cache-Status` member this cache adds to responses (RFC 9211),
//! written from its parameters, and the `fwd` reason a request went
//! upstream.

use std::fmt;

use http::HeaderValue;

/// Cache name used in `Cache-Status` (RFC 9211).
pub const CACHE_NAME: &str = "oddscache";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_values() {
        let hit = CacheStatus {
            hit: true,
            ..CacheStatus::default()
        };
        assert_eq!(hit.to_header_value(), "oddscache; hit");
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
}
