//! Which pages may open change streams (`push.allow_origins`, SPEC §8):
//! the `Origin` check and the CORS preflight.

use http::header::{HeaderMap, HeaderValue, HOST, ORIGIN};
use http::{Response, StatusCode};

use super::{empty, Body};

/// Which origins may connect.
#[derive(Debug)]
pub(super) enum Origins {
    Any,
    List(Vec<String>),
}

/// An `Origin` that `push.allow_origins` does not list.
pub(super) struct Forbidden;

impl Origins {
    pub(super) fn new(allow: &[String]) -> Origins {
        if allow.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            Origins::List(allow.to_vec())
        }
    }

    /// `Ok(Some(origin))` to echo in `Access-Control-Allow-Origin`,
    /// `Ok(None)` without an `Origin` (not a browser's cross-origin
    /// request), or `Err` for a 403.
    pub(super) fn allowed(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, Forbidden> {
        let Some(origin) = headers.get(ORIGIN) else {
            return Ok(None);
        };
        let text = origin.to_str().unwrap_or("");
        let listed = match self {
            Origins::Any => true,
            // Browsers serialize origins in lowercase; a config may not.
            Origins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(text)),
        };
        if listed || same_origin(text, headers) {
            Ok(Some(origin.clone()))
        } else {
            Err(Forbidden)
        }
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the host the request
/// was sent to. The scheme is not compared: TLS may end before the sidecar.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let authority = origin.split_once("://").map_or("", |(_, a)| a);
    headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| !host.is_empty() && host.eq_ignore_ascii_case(authority))
}

pub(super) fn preflight() -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("last-event-id, cache-control"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::headers;

    #[test]
    fn same_origin_compares_the_host_not_the_scheme() {
        let h = headers(&[("host", "odds.example:8080")]);
        assert!(same_origin("http://odds.example:8080", &h));
        assert!(same_origin("https://ODDS.example:8080", &h));
        assert!(!same_origin("http://odds.example", &h));
        assert!(!same_origin("http://evil.example:8080", &h));
        assert!(!same_origin("http://odds.example:8080", &HeaderMap::new()));
    }

    #[test]
    fn listed_origins_match_in_any_case_and_others_are_forbidden() {
        let origins = Origins::new(&["https://Odds.example".to_string()]);
        let ok = headers(&[("origin", "https://odds.example"), ("host", "sidecar:8080")]);
        assert!(matches!(origins.allowed(&ok), Ok(Some(_))));
        let other = headers(&[("origin", "https://evil.example"), ("host", "sidecar:8080")]);
        assert!(origins.allowed(&other).is_err());
        assert!(matches!(origins.allowed(&HeaderMap::new()), Ok(None)));
        assert!(matches!(
            Origins::new(&["*".into()]).allowed(&other),
            Ok(Some(_))
        ));
    }
}
