//! The simulator's HTTP face: routes SPEC §2 paths to the world, renders JSON
//! with validators, answers conditional GETs and applies writes.
//!
//! The strong `ETag` hashes the exact body, so it changes whenever any byte
//! does. `Last-Modified` has one-second resolution and a game can change
//! twice within a second, so `If-Modified-Since` is deliberately ignored: a
//! wrong 304 would hide a change from the sidecar, a 200 never does. No
//! `Cache-Control` either: the sidecar's configured TTLs decide.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    LAST_MODIFIED,
};
use http::request::Parts;
use http::{response, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use serde::Serialize;

use super::catalogue::{self, CatalogueBody};
use super::sim::{Game, UnixSecs};
use super::wire::{GameView, Write};
use super::{unix_now, Simulator};

/// Writes are a few hundred bytes; anything near this is a mistake.
const MAX_WRITE_BODY: usize = 64 * 1024;

#[derive(Debug, PartialEq)]
enum Route<'a> {
    GameOdds(&'a str),
    /// Only written to: SPEC §2 has no read at this path.
    Game(&'a str),
    Games,
    Sidebar(&'a str, &'a str),
    Sports,
}

/// What a route produced, before conditional requests and HEAD apply.
enum Reply {
    /// A representation: carries validators and may become a 304.
    Resource {
        body: Vec<u8>,
        last_modified: SystemTime,
    },
    Error {
        status: StatusCode,
        message: String,
    },
    MethodNotAllowed {
        allow: &'static str,
    },
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

#[derive(Serialize)]
struct GamesBody<'a> {
    games: Vec<GameView<'a>>,
}

#[derive(Serialize)]
struct SidebarBody<'a> {
    sport_id: &'a str,
    league_id: &'a str,
    games: Vec<GameView<'a>>,
}

impl Simulator {
    /// Answer one request (pure, no I/O beyond reading a write's body):
    /// GET/HEAD/PUT/PATCH/POST per SPEC §2.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        self.served.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let reply = self.route(&parts, body).await;
        Ok(reply.render(&parts.method, &parts.headers))
    }

    async fn route(&self, parts: &Parts, body: Incoming) -> Reply {
        let Some(route) = Route::parse(parts.uri.path()) else {
            return Reply::error(StatusCode::NOT_FOUND, "not found");
        };
        let read = matches!(parts.method, Method::GET | Method::HEAD);
        let write = matches!(parts.method, Method::PUT | Method::PATCH | Method::POST);
        match route {
            Route::GameOdds(id) if read => self.game(id),
            Route::GameOdds(id) | Route::Game(id) if write => self.write(id, body).await,
            Route::Games if read => self.games(&Filter::parse(parts.uri.query().unwrap_or(""))),
            Route::Sidebar(sport_id, league_id) if read => self.sidebar(sport_id, league_id),
            Route::Sports if read => self.catalogue(),
            route => Reply::MethodNotAllowed {
                allow: route.allow(),
            },
        }
    }

    fn catalogue(&self) -> Reply {
        let body = CatalogueBody {
            sports: catalogue::SPORTS,
        };
        Reply::resource(&body, self.started)
    }

    fn game(&self, id: &str) -> Reply {
        let world = self.world();
        match world.get(id) {
            Some(game) => Reply::resource(&game.view(true), at(game.updated_at)),
            None => Reply::error(StatusCode::NOT_FOUND, "unknown game"),
        }
    }

    fn games(&self, filter: &Filter) -> Reply {
        let world = self.world();
        let all = world.games();
        let games = all
            .iter()
            .filter(|g| filter.matches(g))
            .map(|g| g.view(true))
            .collect();
        // A game leaving a filtered list changes the list too, so the list is
        // as new as the newest game of all.
        Reply::resource(&GamesBody { games }, self.newest(all.iter()))
    }

    fn sidebar(&self, sport_id: &str, league_id: &str) -> Reply {
        let Some((sport, league)) = catalogue::find_league(sport_id, league_id) else {
            return Reply::error(StatusCode::NOT_FOUND, "unknown league");
        };
        let world = self.world();
        let in_league: Vec<&Game> = world
            .games()
            .iter()
            .filter(|g| g.sport.id == sport.id && g.league.id == league.id)
            .collect();
        let body = SidebarBody {
            sport_id: sport.id,
            league_id: league.id,
            games: in_league.iter().map(|g| g.view(false)).collect(),
        };
        Reply::resource(&body, self.newest(in_league.into_iter()))
    }

    async fn write(&self, id: &str, body: Incoming) -> Reply {
        // Games are never added, so checking first only spares reading a body
        // that could not be applied.
        if !self.knows(id) {
            return Reply::error(StatusCode::NOT_FOUND, "unknown game");
        }
        let bytes = match read_body(body).await {
            Ok(bytes) => bytes,
            Err(reply) => return reply,
        };
        let write: Write = match serde_json::from_slice(&bytes) {
            Ok(write) => write,
            Err(e) => {
                return Reply::error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}"))
            }
        };
        let now = unix_now();
        let mut world = self.world();
        let Some(game) = world.get_mut(id) else {
            return Reply::error(StatusCode::NOT_FOUND, "unknown game");
        };
        match game.apply(write, now) {
            Ok(()) => Reply::resource(&game.view(true), at(game.updated_at)),
            Err(message) => Reply::error(StatusCode::BAD_REQUEST, &message),
        }
    }

    fn knows(&self, id: &str) -> bool {
        self.world().get(id).is_some()
    }

    fn newest<'a>(&self, games: impl Iterator<Item = &'a Game>) -> SystemTime {
        games.map(|g| g.updated_at).max().map_or(self.started, at)
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    let too_large = || {
        Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body exceeds {MAX_WRITE_BODY} bytes"),
        )
    };
    // A declared Content-Length past the limit is refused unread.
    if body.size_hint().lower() > MAX_WRITE_BODY as u64 {
        return Err(too_large());
    }
    match Limited::new(body, MAX_WRITE_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
    }
}

fn at(t: UnixSecs) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t)
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Route<'a>> {
        let segments: Vec<&str> = path.strip_prefix("/api/v1/")?.split('/').collect();
        let route = match segments.as_slice() {
            ["games"] => Route::Games,
            ["games", id] => Route::Game(id),
            ["games", id, "odds"] => Route::GameOdds(id),
            ["sidebar", sport_id, league_id] => Route::Sidebar(sport_id, league_id),
            ["sports"] => Route::Sports,
            _ => return None,
        };
        match route {
            Route::Game("")
            | Route::GameOdds("")
            | Route::Sidebar("", _)
            | Route::Sidebar(_, "") => None,
            route => Some(route),
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            Route::GameOdds(_) => "GET, HEAD, PUT, PATCH, POST",
            Route::Game(_) => "PUT, PATCH, POST",
            Route::Games | Route::Sidebar(..) | Route::Sports => "GET, HEAD",
        }
    }
}

/// `?sport_id=&league_id=&status=`: each non-empty parameter must match
/// exactly; `status` is the raw upstream status, not a canonical one.
#[derive(Debug, Default, PartialEq)]
struct Filter {
    sport_id: Option<String>,
    league_id: Option<String>,
    status: Option<String>,
}

impl Filter {
    fn parse(query: &str) -> Filter {
        let mut filter = Filter::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = form_decode(value);
            if value.is_empty() {
                continue;
            }
            match form_decode(key).as_str() {
                "sport_id" => filter.sport_id = Some(value),
                "league_id" => filter.league_id = Some(value),
                "status" => filter.status = Some(value),
                // Unknown parameters are ignored, as most APIs do.
                _ => {}
            }
        }
        filter
    }

    fn matches(&self, game: &Game) -> bool {
        let accepts =
            |want: &Option<String>, have: &str| want.as_deref().is_none_or(|want| want == have);
        accepts(&self.sport_id, game.sport.id)
            && accepts(&self.league_id, game.league.id)
            && accepts(&self.status, &game.status)
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space and a
/// malformed escape stays literal rather than failing the request.
fn form_decode(s: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|&b| char::from(b).to_digit(16));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits are below 256 by construction.
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
            (b'+', ..) => out.push(b' '),
            (b, ..) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Reply {
    fn resource(value: &impl Serialize, last_modified: SystemTime) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply::Resource {
                body,
                last_modified,
            },
            Err(e) => Reply::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    fn error(status: StatusCode, message: &str) -> Reply {
        Reply::Error {
            status,
            message: message.to_owned(),
        }
    }

    fn render(self, method: &Method, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let head = method == Method::HEAD;
        match self {
            Reply::Resource {
                body,
                last_modified,
            } => {
                let etag = strong_etag(&body);
                let builder = Response::builder()
                    .header(ETAG, &etag)
                    .header(LAST_MODIFIED, httpdate::fmt_http_date(last_modified))
                    // Public odds, readable by the demo's page on its own
                    // origin, as browser-facing odds APIs are.
                    .header(ACCESS_CONTROL_ALLOW_ORIGIN, "*");
                // RFC 9110 §13.1.2: only GET and HEAD become 304; a write
                // always answers with the game it produced.
                if (head || method == Method::GET) && none_match(headers, &etag) {
                    return finish(builder.status(StatusCode::NOT_MODIFIED), Bytes::new());
                }
                json(builder.status(StatusCode::OK), body, head)
            }
            Reply::Error { status, message } => json(
                Response::builder().status(status),
                error_body(&message),
                head,
            ),
            Reply::MethodNotAllowed { allow } => json(
                Response::builder()
                    .status(StatusCode::METHOD_NOT_ALLOWED)
                    .header(ALLOW, allow),
                error_body("method not allowed"),
                head,
            ),
        }
    }
}

fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_default()
}

/// HEAD keeps GET's `Content-Length` and sends no body.
fn json(builder: response::Builder, body: Vec<u8>, head: bool) -> Response<Full<Bytes>> {
    let builder = builder
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len());
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    finish(builder, body)
}

fn finish(builder: response::Builder, body: Bytes) -> Response<Full<Bytes>> {
    builder
        .body(Full::new(body))
        .expect("every header value here is ASCII this module produced")
}

/// FNV-1a over the exact body: stable across builds and restarts, unlike
/// std's hasher, so the same bytes always get the same validator.
fn strong_etag(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

/// `If-None-Match` with the weak comparison RFC 9110 §13.1.2 prescribes;
/// `*` matches because only existing representations get here.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|list| list.trim() == "*" || entity_tags(list).any(|tag| tag == etag))
}

/// The opaque tags of an entity-tag list, `W/` stripped. Walks the quotes
/// instead of splitting on commas, which a tag may contain.
fn entity_tags(mut list: &str) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        let rest = list.trim_start_matches([' ', '\t', ',']);
        let rest = rest.strip_prefix("W/").unwrap_or(rest);
        let end = rest.strip_prefix('"')?.find('"')? + 2;
        list = &rest[end..];
        Some(&rest[..end])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_spec_paths_and_nothing_else() {
        assert_eq!(
            Route::parse("/api/v1/games/g-1/odds"),
            Some(Route::GameOdds("g-1"))
        );
        assert_eq!(Route::parse("/api/v1/games/g-1"), Some(Route::Game("g-1")));
        assert_eq!(Route::parse("/api/v1/games"), Some(Route::Games));
        assert_eq!(
            Route::parse("/api/v1/sidebar/soccer/epl"),
            Some(Route::Sidebar("soccer", "epl"))
        );
        assert_eq!(Route::parse("/api/v1/sports"), Some(Route::Sports));
        for path in [
            "/",
            "/api/v1",
            "/api/v1/",
            "/api/v2/sports",
            "/api/v1/games/",
            "/api/v1/games//odds",
            "/api/v1/games/g-1/odds/",
            "/api/v1/sidebar/soccer",
            "/api/v1/sidebar//epl",
            "/api/v1/sidebar/soccer/",
            "/api/v1/sports/soccer",
        ] {
            assert_eq!(Route::parse(path), None, "{path}");
        }
    }

    #[test]
    fn filters_decode_and_skip_empty_values() {
        let filter =
            Filter::parse("sport_id=american%5Ffootball&league_id=&status=in+progress&x=1&status");
        assert_eq!(
            filter,
            Filter {
                sport_id: Some("american_football".into()),
                league_id: None,
                status: Some("in progress".into()),
            }
        );
        assert_eq!(Filter::parse(""), Filter::default());
    }

    #[test]
    fn form_decoding_keeps_malformed_escapes() {
        assert_eq!(form_decode("a%20b+c"), "a b c");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert_eq!(form_decode("%+1"), "% 1");
        assert_eq!(form_decode("caf%C3%A9"), "café");
    }

    #[test]
    fn etags_are_strong_and_follow_the_bytes() {
        let etag = strong_etag(b"{}");
        assert_eq!(etag, strong_etag(b"{}"));
        assert_ne!(etag, strong_etag(b"{ }"));
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() == 18,
            "{etag}"
        );
        // FNV-1a's published test vector for the empty input.
        assert_eq!(strong_etag(b""), "\"cbf29ce484222325\"");
    }

    #[test]
    fn entity_tag_lists_parse_with_weakness_and_commas() {
        let tags: Vec<_> = entity_tags(r#""a", W/"b" ,"c,d",W/"e""#).collect();
        assert_eq!(tags, [r#""a""#, r#""b""#, r#""c,d""#, r#""e""#]);
        assert_eq!(entity_tags("garbage").count(), 0);
        assert_eq!(entity_tags(r#""unterminated"#).count(), 0);
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_star() {
        let mut headers = HeaderMap::new();
        assert!(!none_match(&headers, r#""x""#));
        headers.insert(IF_NONE_MATCH, r#""y", W/"x""#.parse().unwrap());
        assert!(none_match(&headers, r#""x""#));
        assert!(!none_match(&headers, r#""z""#));
        headers.insert(IF_NONE_MATCH, "*".parse().unwrap());
        assert!(none_match(&headers, r#""z""#));
    }
}
