//! `POST /api/v1/shared/cache/invalidate`: the guards in front of the
//! invalidation door and the parsing of what to invalidate.
//!
//! Order matters: the bearer token is checked first (so an anonymous
//! client learns nothing and spends nobody's quota), then the global rate
//! limit, then the body size, and only then is JSON parsed.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{error, json, Admin, AdminBody};
use crate::invalidate::{Invalidation, Origin, Target};
use crate::watch::{is_valid_id, GameId, Reason};

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most tags one request may name.
pub const MAX_TAGS: usize = 1000;
/// Longest accepted tag, in bytes.
pub const MAX_TAG_BYTES: usize = 512;

/// The outcome of checking `Authorization` against the configured token.
#[derive(Debug, PartialEq, Eq)]
pub enum Auth {
    Allowed,
    /// No token configured: mutations are off.
    Disabled,
    /// Missing, malformed or wrong credentials.
    Denied,
}

/// Checks `Authorization: Bearer <token>`, comparing in constant time.
pub fn check_auth(headers: &HeaderMap, token: Option<&str>) -> Auth {
    let Some(token) = token else {
        return Auth::Disabled;
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, cred)| cred.trim());
    match presented {
        Some(cred) if bool::from(cred.as_bytes().ct_eq(token.as_bytes())) => Auth::Allowed,
        _ => Auth::Denied,
    }
}

/// The request body, as sent. A field may be left out but not `null`,
/// as `openapi.json` documents: `{"game_id": null, "tags": [...]}` is
/// more likely a client bug than a tags request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default, deserialize_with = "present")]
    game_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    sidebar: Option<Sidebar>,
    #[serde(default, deserialize_with = "present")]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidebar {
    #[serde(default, deserialize_with = "present")]
    sport_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    league_id: Option<String>,
}

/// A field that is there must hold a `T`: `null` is refused.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Parses and validates a body into a target and reason.
pub fn parse_body(bytes: &[u8]) -> Result<(Target, Reason), String> {
    let body: Body =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON body: {e}"))?;
    let reason = match body.reason.as_deref() {
        None | Some("MANUAL") => Reason::Manual,
        Some("SIDEBAR_REFRESH") => Reason::SidebarRefresh,
        Some(other) => {
            return Err(format!(
                "reason {other:?} is not allowed here (expected MANUAL or SIDEBAR_REFRESH)"
            ))
        }
    };
    let target = match (body.game_id, body.tags, body.sidebar) {
        (Some(id), None, None) => Target::Game {
            game_id: GameId::try_from(id).map_err(|e| format!("game_id: {e}"))?,
            sport_id: None,
            league_id: None,
            with_sidebar: false,
        },
        (None, Some(tags), None) => Target::Tags(check_tags(tags)?),
        (None, None, Some(s)) => {
            for (name, id) in [("sport_id", &s.sport_id), ("league_id", &s.league_id)] {
                if id.as_deref().is_some_and(|id| !is_valid_id(id)) {
                    return Err(format!(
                        "sidebar.{name}: 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
                    ));
                }
            }
            if s.sport_id.is_none() && s.league_id.is_some() {
                return Err("sidebar.league_id needs sidebar.sport_id".into());
            }
            Target::Sidebar {
                sport_id: s.sport_id,
                league_id: s.league_id,
            }
        }
        _ => return Err("give exactly one of game_id, tags or sidebar".into()),
    };
    Ok((target, reason))
}

fn check_tags(tags: Vec<String>) -> Result<Vec<String>, String> {
    if tags.is_empty() || tags.len() > MAX_TAGS {
        return Err(format!("tags: give 1 to {MAX_TAGS} tags"));
    }
    for tag in &tags {
        if tag.is_empty()
            || tag.len() > MAX_TAG_BYTES
            || tag
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '*')
        {
            return Err(format!(
                "tags: {tag:?} is not a tag (1 to {MAX_TAG_BYTES} bytes, no whitespace or '*')"
            ));
        }
    }
    Ok(tags)
}

/// The whole POST: auth, quota, size, parse, then the door.
pub async fn invalidate(
    admin: &Admin,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<AdminBody> {
    match check_auth(req.headers(), admin.token.as_deref()) {
        Auth::Allowed => {}
        Auth::Disabled => {
            return error(
                StatusCode::FORBIDDEN,
                "mutations are disabled: ODDSCACHE_ADMIN_TOKEN is unset",
            )
        }
        Auth::Denied => {
            tracing::warn!(%peer, "admin mutation refused: bad or missing bearer token");
            let mut resp = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"oddscache-admin\""),
            );
            return resp;
        }
    }
    if let Err(not_until) = admin.limiter.check() {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(admin.limiter.clock()));
        // Retry-After is whole seconds; round up so a retry is admitted.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            "admin mutation rate limit exceeded",
        );
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return resp;
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
    };
    let (target, reason) = match parse_body(&bytes) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let event = admin
        .invalidator
        .invalidate(Invalidation {
            target,
            reason,
            origin: Origin::Api,
            detail: format!("admin API from {}", peer.ip()),
            state: None,
        })
        .await;
    json(StatusCode::OK, &*event)
}

fn too_large() -> Response<AdminBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {MAX_BODY} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn bearer_tokens() {
        let t = Some("s3cret");
        assert_eq!(check_auth(&headers("Bearer s3cret"), t), Auth::Allowed);
        assert_eq!(check_auth(&headers("bearer s3cret"), t), Auth::Allowed);
        assert_eq!(check_auth(&headers("Bearer s3cre"), t), Auth::Denied);
        assert_eq!(check_auth(&headers("Bearer s3cret2"), t), Auth::Denied);
        assert_eq!(check_auth(&headers("Basic s3cret"), t), Auth::Denied);
        assert_eq!(check_auth(&headers("s3cret"), t), Auth::Denied);
        assert_eq!(check_auth(&HeaderMap::new(), t), Auth::Denied);
        assert_eq!(check_auth(&headers("Bearer s3cret"), None), Auth::Disabled);
    }

    #[test]
    fn bodies_name_exactly_one_target() {
        let (t, r) = parse_body(br#"{"game_id": "g-1"}"#).unwrap();
        assert_eq!(r, Reason::Manual);
        assert!(matches!(t, Target::Game { ref game_id, .. } if game_id.as_str() == "g-1"));
        let (t, r) = parse_body(br#"{"tags": ["sidebar"], "reason": "SIDEBAR_REFRESH"}"#).unwrap();
        assert_eq!(t, Target::Tags(vec!["sidebar".into()]));
        assert_eq!(r, Reason::SidebarRefresh);
        let (t, _) = parse_body(br#"{"sidebar": {"sport_id": "soccer"}}"#).unwrap();
        assert_eq!(t.tags(), ["sidebar:soccer"]);
        let (t, _) = parse_body(br#"{"sidebar": {}}"#).unwrap();
        assert_eq!(t.tags(), ["sidebar"]);
    }

    #[test]
    fn bad_bodies() {
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        let many = serde_json::json!({ "tags": many }).to_string();
        for bad in [
            "",
            "{",
            "[]",
            "{}",
            r#"{"game_id": "g-1", "tags": ["x"]}"#,
            r#"{"game_id": "g 1"}"#,
            r#"{"game_id": "g*1"}"#,
            r#"{"game_id": 7}"#,
            r#"{"tags": []}"#,
            r#"{"tags": [""]}"#,
            r#"{"tags": ["a b"]}"#,
            r#"{"tags": ["game:*"]}"#,
            r#"{"sidebar": {"league_id": "epl"}}"#,
            r#"{"sidebar": {"sport_id": "so*"}}"#,
            r#"{"game_id": "g-1", "reason": "STATUS_CHANGE"}"#,
            r#"{"game_id": "g-1", "reason": "manual"}"#,
            r#"{"game_id": "g-1", "extra": 1}"#,
            r#"{"game_id": null, "tags": ["x"]}"#,
            r#"{"game_id": "g-1", "reason": null}"#,
            r#"{"sidebar": {"sport_id": null}}"#,
            r#"{"sidebar": null}"#,
            many.as_str(),
        ] {
            assert!(parse_body(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
