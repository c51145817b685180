//! The request path end to end: the real sidecar on `127.0.0.1:0` in front
//! of a scriptable upstream, checked against SPEC §4.
//!
//! Short TTLs come from the config (`/short/{id}` lives 1s) and are waited
//! out with real sleeps: moka keeps its own clock, so pausing tokio's would
//! not expire anything. Nothing else sleeps to synchronise.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use common::client::{raw_exchange, raw_status, Client, Resp};
use common::sidecar::Sidecar;
use common::upstream::{dead_port_url, RawEnd, RawUpstream, Reply, Upstream};

const GAMES: &str = r#"{"games":[]}"#;

/// Routes of the reference API plus `/short/{id}`, whose 1s TTL lets tests
/// watch an entry expire, and `/swr/{id}`, which is then served stale while
/// it is refreshed. `proxy` and `cache` are extra lines for those
/// sections; the upstream is filled in by [`Sidecar::start`].
fn config(proxy: &str, cache: &str) -> String {
    format!(
        r#"
[proxy]
upstream = "{{UPSTREAM}}"
shutdown_grace = "5s"
{proxy}

[cache]
{cache}

[[route]]
name = "game-odds"
path = "/api/v1/games/{{game_id}}/odds"
tags = ["game:{{game_id}}"]

[[route]]
name = "games-list"
path = "/api/v1/games"
ttl = "15s"

[[route]]
name = "sports"
path = "/api/v1/sports"
ttl = "10m"

[[route]]
name = "short"
path = "/short/{{id}}"
ttl = "1s"

[[route]]
name = "swr"
path = "/swr/{{id}}"
ttl = "1s"
stale_while_revalidate = "1m"
"#
    )
}

async fn sidecar(upstream: &str) -> Sidecar {
    Sidecar::from_template(&config("", ""), upstream).await
}

/// Longer than the 1s TTL of `/short/{id}`, with room for a slow machine.
async fn outlive_short_ttl() {
    tokio::time::sleep(Duration::from_millis(1300)).await;
}

fn age(r: &Resp) -> u64 {
    r.header("age").parse().expect("Age is delta-seconds")
}

/// An upstream whose bodies count its answers: `v1`, `v2`, ...
async fn counting_upstream(extra: &'static [(&'static str, &'static str)]) -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |_, _| {
        let v = n.fetch_add(1, Ordering::SeqCst) + 1;
        let mut r = Reply::json(format!("v{v}"));
        for (name, value) in extra {
            r = r.header(name, value);
        }
        r
    })
    .await
}

// --- hits and misses -------------------------------------------------------

#[tokio::test]
async fn miss_then_hit() {
    let up = Upstream::fixed(GAMES).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games?sport_id=soccer");

    let first = c.get(&url).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, GAMES);
    assert_eq!(first.x_cache(), "MISS");

    let second = c.get(&url).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, GAMES);
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(second.header("content-type"), "application/json");

    assert_eq!(up.hits(), 1);
    assert_eq!(up.last().uri, "/api/v1/games?sport_id=soccer");
}

#[tokio::test]
async fn every_answer_is_labelled() {
    let up = Upstream::start(|parts, _| match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/api/v1/sports") => Reply::json("{}").header("cache-control", "no-store"),
        _ => Reply::json(GAMES),
    })
    .await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();

    let miss = c.get(&sc.url("/api/v1/games")).await;
    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(
        miss.cache_status(),
        "oddscache; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(age(&miss), 0);

    let hit = c.get(&sc.url("/api/v1/games")).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.cache_status(), "oddscache; hit");
    assert!(age(&hit) <= 1);

    // Not stored: still labelled, with the reason.
    let refused = c.get(&sc.url("/api/v1/sports")).await;
    assert_eq!(refused.x_cache(), "MISS");
    assert!(
        refused
            .cache_status()
            .starts_with("oddscache; fwd=uri-miss")
            && refused.cache_status().contains("detail=no-store"),
        "{}",
        refused.cache_status()
    );

    let post = c
        .send(Method::POST, &sc.url("/api/v1/games"), &[], "{}")
        .await;
    assert_eq!(post.x_cache(), "BYPASS");
    assert!(post.cache_status().starts_with("oddscache; fwd=bypass"));
}

#[tokio::test]
async fn age_grows_while_an_entry_is_held() {
    let up = Upstream::start(|_, _| Reply::json(GAMES).header("cache-control", "max-age=60")).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    c.get(&sc.url("/short/age")).await;
    outlive_short_ttl().await;
    // max-age=60 beats the route's 1s, so this is still a hit, a second old.
    let hit = c.get(&sc.url("/short/age")).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(age(&hit) >= 1, "Age {}", age(&hit));
    assert_eq!(up.hits(), 1);
}

// --- validators ------------------------------------------------------------

#[tokio::test]
async fn client_if_none_match_is_answered_304_from_the_cache() {
    let up = Upstream::start(|_, _| Reply::json(GAMES).header("etag", "\"v1\"")).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games");

    // The fill itself asks for the whole body, and answers the client's
    // validator from it.
    let first = c.get_with(&url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(first.status, StatusCode::NOT_MODIFIED);
    assert!(first.body.is_empty());
    assert_eq!(up.last().header("if-none-match"), None);

    let not_modified = c.get_with(&url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), "\"v1\"");
    assert_eq!(not_modified.x_cache(), "HIT");
    assert_eq!(not_modified.cache_status(), "oddscache; hit");
    age(&not_modified);

    let weak = c.get_with(&url, &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!(weak.status, StatusCode::NOT_MODIFIED);

    let other = c.get_with(&url, &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body, GAMES);
    assert_eq!(other.x_cache(), "HIT");

    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn expired_entry_is_revalidated_and_an_upstream_304_refreshes_it() {
    let up = Upstream::start(|parts, _| {
        if parts
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            Reply::new(304)
                .header("etag", "\"v1\"")
                .header("x-revalidated", "yes")
        } else {
            Reply::json("old body").header("etag", "\"v1\"")
        }
    })
    .await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/short/reval");

    assert_eq!(c.get(&url).await.x_cache(), "MISS");
    outlive_short_ttl().await;

    let refreshed = c.get(&url).await;
    assert_eq!(up.hits(), 2);
    assert_eq!(up.last().header("if-none-match"), Some("\"v1\""));
    assert_eq!(refreshed.status, StatusCode::OK);
    assert_eq!(refreshed.body, "old body");
    assert!(
        refreshed.cache_status().contains("fwd=stale")
            && refreshed.cache_status().contains("fwd-status=304"),
        "{}",
        refreshed.cache_status()
    );

    // Fresh again: served without asking, with the headers the 304
    // updated (RFC 9111 §4.3.4).
    let hit = c.get(&url).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.body, "old body");
    assert_eq!(hit.header("x-revalidated"), "yes");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn expired_entry_is_revalidated_with_if_modified_since() {
    const LM: &str = "Tue, 24 Nov 2026 20:00:00 GMT";
    let up = Upstream::start(|parts, _| {
        if parts
            .headers
            .get("if-modified-since")
            .is_some_and(|v| v == LM)
        {
            Reply::new(304)
        } else {
            Reply::json("dated").header("last-modified", LM)
        }
    })
    .await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/short/lm");

    c.get(&url).await;
    outlive_short_ttl().await;
    let refreshed = c.get(&url).await;
    assert_eq!(refreshed.body, "dated");
    assert_eq!(up.last().header("if-modified-since"), Some(LM));
    assert_eq!(c.get(&url).await.x_cache(), "HIT");
    assert_eq!(up.hits(), 2);
}

// --- freshness -------------------------------------------------------------

#[tokio::test]
async fn entry_expires_after_the_route_ttl() {
    let up = counting_upstream(&[]).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/short/1");

    assert_eq!(c.get(&url).await.body, "v1");
    assert_eq!(c.get(&url).await.x_cache(), "HIT");
    assert_eq!(up.hits(), 1);

    outlive_short_ttl().await;
    let refetched = c.get(&url).await;
    assert_eq!(refetched.body, "v2");
    assert_eq!(refetched.x_cache(), "MISS");
    assert!(refetched.cache_status().contains("fwd=stale"));
    assert_eq!(up.hits(), 2);

    let hit = c.get(&url).await;
    assert_eq!(hit.body, "v2");
    assert_eq!(hit.x_cache(), "HIT");
}

#[tokio::test]
async fn stale_while_revalidate_serves_the_old_copy_and_refreshes_once() {
    let up = counting_upstream(&[]).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/swr/1");

    c.get(&url).await;
    outlive_short_ttl().await;
    let stale = c.get(&url).await;
    assert_eq!((stale.x_cache(), stale.text()), ("STALE", "v1"));
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );

    // The refresh runs in the background; poll until it has landed.
    let started = Instant::now();
    loop {
        let r = c.get(&url).await;
        if r.x_cache() == "HIT" {
            assert_eq!(r.body, "v2");
            break;
        }
        assert_eq!((r.x_cache(), r.text()), ("STALE", "v1"));
        assert!(started.elapsed() < common::PATIENCE, "never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.hits(), 2, "one background refresh, however many asked");
}

#[tokio::test]
async fn origin_max_age_beats_the_route_ttl() {
    let up = counting_upstream(&[("cache-control", "max-age=60")]).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/short/origin");

    c.get(&url).await;
    outlive_short_ttl().await;
    let hit = c.get(&url).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.body, "v1");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn targeted_cache_control_beats_cache_control_and_passes_through() {
    let up = Upstream::start(|parts, _| match parts.uri.path() {
        // Browsers must not store it; this cache may, for a minute.
        "/api/v1/games/g-1/odds" => Reply::json("odds")
            .header("cache-control", "no-store")
            .header("oddscache-cache-control", "max-age=60"),
        // Browsers may store it; this cache must not.
        "/api/v1/games/g-2/odds" => Reply::json("odds")
            .header("cache-control", "max-age=60")
            .header("oddscache-cache-control", "no-store"),
        // CDN-Cache-Control counts too, but ours comes first.
        "/api/v1/games/g-3/odds" => Reply::json("odds")
            .header("cdn-cache-control", "no-store")
            .header("oddscache-cache-control", "max-age=60"),
        _ => Reply::json("odds")
            .header("cache-control", "max-age=60")
            .header("cdn-cache-control", "no-store"),
    })
    .await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();

    let url = sc.url("/api/v1/games/g-1/odds");
    for expected in ["MISS", "HIT"] {
        let r = c.get(&url).await;
        assert_eq!(r.x_cache(), expected);
        assert_eq!(r.header("cache-control"), "no-store");
        assert_eq!(r.header("oddscache-cache-control"), "max-age=60");
    }
    assert_eq!(up.hits(), 1);

    let url = sc.url("/api/v1/games/g-2/odds");
    for _ in 0..2 {
        let r = c.get(&url).await;
        assert_eq!(r.x_cache(), "MISS");
        assert_eq!(r.header("cache-control"), "max-age=60");
        assert_eq!(r.header("oddscache-cache-control"), "no-store");
    }
    assert_eq!(up.hits(), 3);

    let url = sc.url("/api/v1/games/g-3/odds");
    c.get(&url).await;
    assert_eq!(c.get(&url).await.x_cache(), "HIT");
    assert_eq!(up.hits(), 4);

    let url = sc.url("/api/v1/games/g-4/odds");
    c.get(&url).await;
    let r = c.get(&url).await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.header("cdn-cache-control"), "no-store");
    assert_eq!(up.hits(), 6);
}

/// A plain shared cache (no `[[route]]`) gives a response with only
/// `Last-Modified` a tenth of its age as freshness (RFC 9111 §4.2.2); a
/// routed config's unmatched path still stores nothing without explicit
/// freshness.
#[tokio::test]
async fn a_plain_cache_uses_heuristic_freshness() {
    let modified =
        httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(10 * 24 * 3600));
    let up =
        Upstream::start(move |_, _| Reply::json("doc").header("last-modified", &modified)).await;
    let plain = Sidecar::from_template("[proxy]\nupstream = \"{UPSTREAM}\"\n", &up.url()).await;
    let c = Client::new();
    let url = plain.url("/plain/doc");
    assert_eq!(c.get(&url).await.x_cache(), "MISS");
    assert_eq!(c.get(&url).await.x_cache(), "HIT");
    let routed = sidecar(&up.url()).await;
    let url = routed.url("/plain/doc");
    c.get(&url).await;
    assert_eq!(c.get(&url).await.x_cache(), "MISS");
    assert_eq!(up.hits(), 3);
}

/// RFC 9111 §5.1 and RFC 9213 §2.1, as a plain shared cache sees them: a
/// list-valued `Age` counts by its first member, so a response that came
/// 7200 s old with `max-age=3600` is stale on arrival; an invalid
/// `CDN-Cache-Control` is ignored and `Cache-Control` decides.
#[tokio::test]
async fn a_list_valued_age_and_an_invalid_targeted_field() {
    let up = Upstream::start(|parts, _| match parts.uri.path() {
        "/plain/age" => Reply::json("old")
            .header("cache-control", "max-age=3600")
            .header("age", "7200, 0"),
        "/plain/cdn" => Reply::json("private")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=10000, &&&&&"),
        _ => Reply::json("typed")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=\"10000\""),
    })
    .await;
    let sc = Sidecar::from_template("[proxy]\nupstream = \"{UPSTREAM}\"\n", &up.url()).await;
    let c = Client::new();
    for path in ["/plain/age", "/plain/cdn", "/plain/typed"] {
        let first = c.get(&sc.url(path)).await;
        assert_eq!(first.status, StatusCode::OK, "{path}");
        let second = c.get(&sc.url(path)).await;
        assert_ne!(second.x_cache(), "HIT", "{path} was served from the cache");
    }
    assert_eq!(up.hits(), 6, "every request went upstream");
}

// --- HEAD, keys and Vary ---------------------------------------------------

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let up = Upstream::start(|_, _| Reply::json(GAMES).header("etag", "\"h\"")).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games");

    let get = c.get(&url).await;
    let head = c.send(Method::HEAD, &url, &[], Bytes::new()).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.x_cache(), "HIT");
    for name in ["content-type", "etag", "content-length"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn head_on_a_miss_goes_upstream_and_stores_nothing() {
    let up = Upstream::fixed(GAMES).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games");

    let head = c.send(Method::HEAD, &url, &[], Bytes::new()).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(up.last().method, Method::HEAD);

    let get = c.get(&url).await;
    assert_eq!(get.x_cache(), "MISS");
    assert_eq!(get.body, GAMES);
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn query_order_does_not_split_the_cache() {
    let up = Upstream::fixed(GAMES).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();

    assert_eq!(
        c.get(&sc.url("/api/v1/games?a=1&b=2")).await.x_cache(),
        "MISS"
    );
    let reordered = c.get(&sc.url("/api/v1/games?b=2&a=1")).await;
    assert_eq!(reordered.x_cache(), "HIT");
    assert_eq!(reordered.body, GAMES);
    assert_eq!(up.hits(), 1);

    // A different value is a different resource.
    assert_eq!(
        c.get(&sc.url("/api/v1/games?b=3&a=1")).await.x_cache(),
        "MISS"
    );
    assert_eq!(up.hits(), 2);
}

/// An upstream answering the request's `Accept-Language` (or `none`), with
/// `Vary: Accept-Language`.
async fn language_upstream() -> Upstream {
    Upstream::start(|parts, _| {
        let lang = parts
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| "none".into());
        Reply::json(lang).header("vary", "Accept-Language")
    })
    .await
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let up = language_upstream().await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games");
    let get = |lang: &'static str| {
        let c = c.clone();
        let url = url.clone();
        async move { c.get_with(&url, &[("accept-language", lang)]).await }
    };

    let en = get("en").await;
    assert_eq!((en.x_cache(), en.text()), ("MISS", "en"));
    let fr = get("fr").await;
    assert_eq!((fr.x_cache(), fr.text()), ("MISS", "fr"));
    assert_eq!(up.hits(), 2);

    let en = get("en").await;
    assert_eq!((en.x_cache(), en.text()), ("HIT", "en"));
    let fr = get("fr").await;
    assert_eq!((fr.x_cache(), fr.text()), ("HIT", "fr"));
    assert_eq!(up.hits(), 2);

    let none = c.get(&url).await;
    assert_eq!((none.x_cache(), none.text()), ("MISS", "none"));
    assert_eq!(up.hits(), 3);
}

// --- what is not stored ----------------------------------------------------

/// Two GETs of `path` both reach the upstream, and the answers say why.
async fn assert_not_stored(
    reply: impl Fn() -> Reply + Send + Sync + 'static,
    path: &str,
    headers: &[(&str, &str)],
    detail: &str,
) {
    let up = Upstream::start(move |_, _| reply()).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    for _ in 0..2 {
        let r = c.get_with(&sc.url(path), headers).await;
        assert_eq!(r.x_cache(), "MISS", "{detail}");
        assert!(
            r.cache_status().contains(&format!("detail={detail}")),
            "{detail}: {}",
            r.cache_status()
        );
    }
    assert_eq!(up.hits(), 2, "{detail}: the second GET must go upstream");
}

#[tokio::test]
async fn no_store_is_not_stored() {
    assert_not_stored(
        || Reply::json(GAMES).header("cache-control", "no-store"),
        "/api/v1/games",
        &[],
        "no-store",
    )
    .await;
}

#[tokio::test]
async fn private_is_not_stored() {
    assert_not_stored(
        || Reply::json(GAMES).header("cache-control", "private, max-age=60"),
        "/api/v1/games",
        &[],
        "private",
    )
    .await;
}

#[tokio::test]
async fn set_cookie_is_not_stored() {
    assert_not_stored(
        || Reply::json(GAMES).header("set-cookie", "session=abc"),
        "/api/v1/games",
        &[],
        "set-cookie",
    )
    .await;
}

#[tokio::test]
async fn vary_star_is_not_stored() {
    assert_not_stored(
        || Reply::json(GAMES).header("vary", "*"),
        "/api/v1/games",
        &[],
        "vary-star",
    )
    .await;
}

#[tokio::test]
async fn authorized_request_is_not_stored() {
    assert_not_stored(
        || Reply::json(GAMES),
        "/api/v1/games",
        &[("authorization", "Bearer t")],
        "authorization",
    )
    .await;
}

#[tokio::test]
async fn authorized_request_is_stored_when_the_response_says_public() {
    let up = Upstream::start(|_, _| Reply::json(GAMES).header("cache-control", "public")).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let auth = [("authorization", "Bearer t")];
    assert_eq!(
        c.get_with(&sc.url("/api/v1/games"), &auth).await.x_cache(),
        "MISS"
    );
    assert_eq!(
        c.get_with(&sc.url("/api/v1/games"), &auth).await.x_cache(),
        "HIT"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn server_error_without_explicit_freshness_is_not_stored() {
    assert_not_stored(
        || Reply::new(500).body("boom"),
        "/api/v1/games",
        &[],
        "status",
    )
    .await;
}

#[tokio::test]
async fn statuses_follow_the_heuristic_list() {
    let up = Upstream::start(|parts, _| match parts.uri.path() {
        "/api/v1/games/missing/odds" => Reply::new(404).body("no such game"),
        "/api/v1/games/forbidden/odds" => Reply::new(403).body("no"),
        _ => Reply::new(500)
            .body("cached failure")
            .header("cache-control", "max-age=60"),
    })
    .await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();

    // 404 is heuristically cacheable: the route TTL applies.
    let url = sc.url("/api/v1/games/missing/odds");
    assert_eq!(c.get(&url).await.status, StatusCode::NOT_FOUND);
    let hit = c.get(&url).await;
    assert_eq!((hit.status, hit.x_cache()), (StatusCode::NOT_FOUND, "HIT"));
    assert_eq!(up.hits(), 1);

    // 403 is not, and has no explicit freshness.
    let url = sc.url("/api/v1/games/forbidden/odds");
    c.get(&url).await;
    assert_eq!(c.get(&url).await.x_cache(), "MISS");
    assert_eq!(up.hits(), 3);

    // Any final status may be stored with explicit freshness (RFC 9111 §3).
    let url = sc.url("/api/v1/games/fails/odds");
    c.get(&url).await;
    let hit = c.get(&url).await;
    assert_eq!(hit.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn unmatched_path_without_explicit_freshness_is_not_stored() {
    assert_not_stored(|| Reply::json("{}"), "/other/thing", &[], "no-freshness").await;
}

#[tokio::test]
async fn unmatched_path_with_max_age_is_stored() {
    let up = Upstream::start(|_, _| Reply::json("{}").header("cache-control", "max-age=60")).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    assert_eq!(c.get(&sc.url("/other/thing")).await.x_cache(), "MISS");
    assert_eq!(c.get(&sc.url("/other/thing")).await.x_cache(), "HIT");
    assert_eq!(up.hits(), 1);
}

// --- coalescing ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_upstream_request() {
    let up = Upstream::start(|_, _| Reply::json(GAMES).delay(Duration::from_millis(200))).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games?sport_id=soccer");

    let requests: Vec<_> = (0..100)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move { c.get(&url).await })
        })
        .collect();
    let mut misses = 0;
    for r in requests {
        let r = r.await.expect("request task");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, GAMES);
        if r.x_cache() == "MISS" {
            misses += 1;
        }
    }
    assert_eq!(up.hits(), 1);
    assert_eq!(misses, 1, "only the leader is a miss");
}

// --- upstream failures -----------------------------------------------------

/// SPEC §4: an invalidated entry is never served, whatever happens
/// upstream. The fill that holds the expired copy as its fallback is
/// already on its way when a write drops the URI; the upstream then
/// answers 500, and the 500 goes through, not the dropped copy.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalidated_copy_is_not_served_stale_if_error() {
    let up = Upstream::start(|_, _| Reply::json("old body")).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/short/sie-dead");
    assert_eq!(c.get(&url).await.x_cache(), "MISS");
    outlive_short_ttl().await;
    up.set_handler(|parts, _| {
        if parts.method == Method::GET {
            Reply::new(500)
                .body("boom")
                .delay(Duration::from_millis(600))
        } else {
            Reply::json("written")
        }
    });
    let refill = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move { c.get(&url).await })
    };
    up.wait_hits(2).await;
    let w = c.send(Method::PUT, &url, &[], "{}").await;
    assert_eq!(w.x_cache(), "BYPASS");
    let r = refill.await.expect("the refill's request");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{r:?}");
    assert_ne!(r.x_cache(), "STALE");
    assert_eq!(r.text(), "boom");
}

#[tokio::test]
async fn expired_copy_stands_in_for_an_upstream_500() {
    let up = Upstream::start(|_, _| Reply::json("old body")).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/short/sie");

    c.get(&url).await;
    outlive_short_ttl().await;
    up.set_handler(|_, _| Reply::new(500).body("boom"));

    let stale = c.get(&url).await;
    assert_eq!(up.hits(), 2);
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, "old body");
    assert_eq!(stale.x_cache(), "STALE");
    let cs = stale.cache_status();
    assert!(
        cs.contains("fwd=stale") && cs.contains("fwd-status=500") && cs.contains("stale-if-error"),
        "{cs}"
    );
    assert!(age(&stale) >= 1);

    // Once the upstream recovers, the next request refreshes the entry.
    up.set_handler(|_, _| Reply::json("new body"));
    let fresh = c.get(&url).await;
    assert_eq!((fresh.x_cache(), fresh.text()), ("MISS", "new body"));
    assert_eq!(c.get(&url).await.x_cache(), "HIT");
}

#[tokio::test]
async fn expired_copy_stands_in_for_a_refused_connection() {
    let up = Upstream::start(|_, _| Reply::json("old body")).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/short/down");

    c.get(&url).await;
    up.stop();
    outlive_short_ttl().await;
    let stale = c.get(&url).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, "old body");
    assert_eq!(stale.x_cache(), "STALE");
    assert!(
        stale.cache_status().contains("fwd-status=502"),
        "{}",
        stale.cache_status()
    );
}

/// RFC 9111 §5.2.2.4: a stored `no-cache` response is never used without
/// a successful validation, so when revalidation cannot reach the upstream
/// the client gets the error, not the copy (which stale-if-error would
/// otherwise allow). A plain shared cache stores it, with its validator,
/// and revalidates it on every use.
#[tokio::test]
async fn a_no_cache_copy_is_not_served_when_its_revalidation_fails() {
    let up = Upstream::start(|parts, _| {
        if parts
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            return Reply::new(304).header("etag", "\"v1\"");
        }
        Reply::json("must validate")
            .header("cache-control", "no-cache")
            .header("etag", "\"v1\"")
    })
    .await;
    let sc = Sidecar::from_template(
        "[proxy]\nupstream = \"{UPSTREAM}\"\n[cache]\nstale_if_error = \"1h\"\n",
        &up.url(),
    )
    .await;
    let c = Client::new();
    let url = sc.url("/plain/no-cache");
    assert_eq!(c.get(&url).await.x_cache(), "MISS");
    // Stored, and validated on every use.
    let again = c.get(&url).await;
    assert_eq!(again.text(), "must validate");
    assert_eq!(
        up.last()
            .headers
            .get("if-none-match")
            .map(|v| v.to_str().unwrap()),
        Some("\"v1\"")
    );
    assert_eq!(up.hits(), 2);
    up.stop();
    let r = c.get(&url).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "served {:?} {:?}",
        r.x_cache(),
        r.text()
    );
}

#[tokio::test]
async fn upstream_500_without_a_copy_passes_through() {
    let up = Upstream::start(|_, _| {
        Reply::new(500)
            .header("content-type", "text/plain")
            .body("boom")
    })
    .await;
    let sc = sidecar(&up.url()).await;
    let r = Client::new().get(&sc.url("/api/v1/games")).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.body, "boom");
    assert_eq!(r.header("content-type"), "text/plain");
    assert_eq!(r.x_cache(), "MISS");
}

#[tokio::test]
async fn refused_connection_is_a_502_with_json() {
    let dead = dead_port_url().await;
    let sc = sidecar(&dead).await;
    let r = Client::new().get(&sc.url("/api/v1/games")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.header("content-type"), "application/json");
    let body = r.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert_eq!(body["upstream"], dead.as_str());
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.cache_status(), "oddscache; fwd=uri-miss; detail=error");
}

#[tokio::test]
async fn slow_upstream_is_a_504_with_json() {
    let up = Upstream::start(|_, _| Reply::json(GAMES).delay(Duration::from_secs(2))).await;
    let sc = Sidecar::from_template(&config(r#"upstream_timeout = "300ms""#, ""), &up.url()).await;
    let started = Instant::now();
    let r = Client::new().get(&sc.url("/api/v1/games")).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.header("content-type"), "application/json");
    let body = r.json();
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(body["upstream"], up.url().as_str());
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.cache_status(), "oddscache; fwd=uri-miss; detail=timeout");
}

/// OPTIONS and TRACE are safe methods (RFC 9110 §9.2.1): a CORS preflight
/// answered 204 drops nothing, so it costs the fleet no invalidation.
#[tokio::test]
async fn a_safe_method_other_than_get_drops_nothing() {
    let up = Upstream::start(|parts, _| match parts.method {
        Method::OPTIONS => Reply::new(204).header("access-control-allow-methods", "GET"),
        _ => Reply::json(GAMES),
    })
    .await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games/g-8/odds");
    assert_eq!(c.get(&url).await.x_cache(), "MISS");
    let pre = c.send(Method::OPTIONS, &url, &[], "").await;
    assert_eq!(pre.status, StatusCode::NO_CONTENT);
    assert_eq!(
        c.get(&url).await.x_cache(),
        "HIT",
        "a preflight dropped the entry"
    );
    let post = c.send(Method::POST, &url, &[], "{}").await;
    assert_eq!(post.status, StatusCode::OK);
    assert_eq!(c.get(&url).await.x_cache(), "MISS");
}

#[tokio::test]
async fn invalidated_entry_is_never_served_stale() {
    let up = Upstream::fixed(GAMES).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games/g-9/odds");

    c.get(&url).await;
    let post = c.send(Method::POST, &url, &[], "{}").await;
    assert_eq!(post.status, StatusCode::OK);
    up.stop();
    let r = c.get(&url).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}

// --- big and streamed bodies -----------------------------------------------

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn large_body_streams_through_and_is_not_stored() {
    let big = pattern(5 * 1024 * 1024);
    let body = big.clone();
    let up = Upstream::start(move |_, _| Reply::new(200).body(body.clone())).await;
    let sc = Sidecar::from_template(&config("", r#"max_object_bytes = "1MiB""#), &up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games");

    let r = c.get(&url).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big, "body differs");
    assert_eq!(r.x_cache(), "MISS");
    assert!(
        r.cache_status().contains("too-large"),
        "{}",
        r.cache_status()
    );

    assert!(c.get(&url).await.body == big);
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn large_chunked_body_streams_through_and_is_not_stored() {
    let chunks: Vec<Bytes> = (0..5).map(|i| pattern(1024 * 1024 + i * 7)).collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let up = Upstream::start(move |_, _| Reply::new(200).chunked(chunks.clone())).await;
    let sc = Sidecar::from_template(&config("", r#"max_object_bytes = "1MiB""#), &up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games");

    let r = c.get(&url).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), whole.len());
    assert!(r.body == whole, "body differs");
    assert!(c.get(&url).await.body == whole);
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn small_chunked_body_is_stored_whole() {
    let chunks: Vec<Bytes> = vec!["{\"games\":".into(), "[]".into(), "}".into()];
    let up = Upstream::start(move |_, _| Reply::new(200).chunked(chunks.clone())).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games");

    assert_eq!(c.get(&url).await.body, GAMES);
    let hit = c.get(&url).await;
    assert_eq!((hit.x_cache(), hit.text()), ("HIT", GAMES));
    assert_eq!(up.hits(), 1);
}

// --- unsafe methods --------------------------------------------------------

#[tokio::test]
async fn post_invalidates_the_get_entry_of_its_uri() {
    let up = Upstream::start(|parts, _| match parts.method {
        Method::POST if parts.uri.path().ends_with("/fail/odds") => Reply::new(500),
        _ => Reply::json("odds"),
    })
    .await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games/g-1/odds");
    let gets = || up.seen().iter().filter(|s| s.method == Method::GET).count();

    c.get(&url).await;
    let post = c
        .send(
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            "{\"x\":1}",
        )
        .await;
    assert_eq!(post.status, StatusCode::OK);
    assert_eq!(up.last().method, Method::POST);
    assert_eq!(up.last().body, "{\"x\":1}");
    let after = c.get(&url).await;
    assert_eq!(after.x_cache(), "MISS");
    assert_eq!(gets(), 2);

    // A write elsewhere leaves it alone.
    c.send(Method::POST, &sc.url("/api/v1/games/g-2/odds"), &[], "{}")
        .await;
    assert_eq!(c.get(&url).await.x_cache(), "HIT");

    // A failed write changed nothing, so invalidates nothing.
    let failing = sc.url("/api/v1/games/fail/odds");
    c.get(&failing).await;
    let post = c.send(Method::POST, &failing, &[], "{}").await;
    assert_eq!(post.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(c.get(&failing).await.x_cache(), "HIT");
}

#[tokio::test]
async fn post_invalidates_every_variant_of_its_uri() {
    let up = language_upstream().await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games");
    let other = sc.url("/api/v1/games?page=2");
    let get = |url: &str, lang: &'static str| {
        let (c, url) = (c.clone(), url.to_string());
        async move {
            c.get_with(&url, &[("accept-language", lang)])
                .await
                .x_cache()
                .to_string()
        }
    };
    for lang in ["en", "fr"] {
        get(&url, lang).await;
        assert_eq!(get(&url, lang).await, "HIT");
    }
    get(&other, "en").await;

    let post = c.send(Method::POST, &url, &[], "{}").await;
    assert_eq!(post.status, StatusCode::OK);
    assert_eq!(get(&url, "en").await, "MISS");
    assert_eq!(get(&url, "fr").await, "MISS");
    assert_eq!(
        get(&other, "en").await,
        "HIT",
        "another URI's variant was dropped"
    );
}

// --- shutdown --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_response_finish() {
    let up = Upstream::start(|_, _| Reply::json(GAMES).delay(Duration::from_millis(500))).await;
    let sc = sidecar(&up.url()).await;
    let addr = sc.addr;
    let url = sc.url("/api/v1/games");
    let in_flight = tokio::spawn(async move { Client::new().get(&url).await });

    up.wait_hits(1).await;
    let run = sc.shutdown();
    let r = in_flight.await.expect("request task");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, GAMES);

    // Serving cannot fail: `run` fails only in building the sidecar, which
    // `Sidecar::start` asserts ("the sidecar builds").
    tokio::time::timeout(common::PATIENCE, run)
        .await
        .expect("run returns after draining")
        .expect("run task");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

// --- bad input and forwarding ----------------------------------------------

/// RFC 9112 §6.1 lets a server either reject a request with both
/// `Content-Length` and `Transfer-Encoding` or process it by
/// `Transfer-Encoding` alone and close the connection after it. hyper does
/// the latter before the proxy sees the request (it drops the length), so
/// what is checked is what matters: the upstream never gets both, and the
/// bytes hidden behind the conflicting length are never read as a request.
#[tokio::test]
async fn conflicting_framing_cannot_smuggle_a_request() {
    let up = Upstream::fixed(GAMES).await;
    let sc = sidecar(&up.url()).await;
    let answer = raw_exchange(
        sc.addr,
        b"POST /api/v1/games HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer: {text}");
    let status = raw_status(&answer);
    assert!(status == 400 || status == 200, "{text}");
    let seen = up.seen();
    assert!(seen.len() <= 1);
    for s in &seen {
        assert_eq!(s.uri.path(), "/api/v1/games");
        assert!(s.body.is_empty(), "the chunked framing won");
        assert!(
            !(s.headers.contains_key("content-length")
                && s.headers.contains_key("transfer-encoding")),
            "{:?}",
            s.headers
        );
    }
}

#[tokio::test]
async fn conflicting_content_lengths_are_a_400() {
    let up = Upstream::fixed(GAMES).await;
    let sc = sidecar(&up.url()).await;
    let answer = raw_exchange(
        sc.addr,
        b"POST /api/v1/games HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
          Content-Length: 5\r\n\r\nabcde",
    )
    .await;
    assert_eq!(raw_status(&answer), 400);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn oversized_headers_are_refused_and_serving_goes_on() {
    let up = Upstream::fixed(GAMES).await;
    let sc = Sidecar::from_template(&config(r#"max_header_bytes = "16KiB""#, ""), &up.url()).await;
    let big = "a".repeat(32 * 1024);
    let request = format!("GET /api/v1/games HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let answer = raw_exchange(sc.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&answer), 431);
    assert_eq!(up.hits(), 0);

    let c = Client::new();
    let fine = "b".repeat(4 * 1024);
    let r = c
        .get_with(&sc.url("/api/v1/games"), &[("x-fine", &fine)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn header_limit_is_the_configured_one() {
    let up = Upstream::fixed(GAMES).await;
    let sc = Sidecar::from_template(&config(r#"max_header_bytes = "8KiB""#, ""), &up.url()).await;
    let head = |n: usize| {
        format!(
            "GET /api/v1/games HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(n)
        )
    };
    let over = raw_exchange(sc.addr, head(10 * 1024).as_bytes()).await;
    assert_eq!(raw_status(&over), 431);
    let under = raw_exchange(sc.addr, head(6 * 1024).as_bytes()).await;
    assert_eq!(raw_status(&under), 200);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn malformed_request_line_is_a_400() {
    let up = Upstream::fixed(GAMES).await;
    let sc = sidecar(&up.url()).await;
    for garbage in [
        &b"NOT A REQUEST\r\n\r\n"[..],
        b"GET /api/v1/games HTTP/9.9\r\n\r\n",
        b"GET /api v1 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let answer = raw_exchange(sc.addr, garbage).await;
        assert_eq!(
            raw_status(&answer),
            400,
            "{:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    assert_eq!(up.hits(), 0);
    assert_eq!(
        Client::new().get(&sc.url("/api/v1/games")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_forwarding_headers_set() {
    let up = Upstream::start(|_, _| {
        Reply::json(GAMES)
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("x-resp-keep", "1")
    })
    .await;
    let sc = sidecar(&up.url()).await;
    let answer = raw_exchange(
        sc.addr,
        b"GET /api/v1/games HTTP/1.1\r\nHost: x\r\n\
          Connection: close, X-Hop\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
          Upgrade: websocket\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
          Proxy-Connection: keep-alive\r\nX-Hop: secret\r\nX-Keep: yes\r\n\
          X-Forwarded-For: 203.0.113.9\r\nVia: 1.1 ingress\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200);

    let seen = up.last();
    for name in [
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-hop",
    ] {
        assert!(seen.header(name).is_none(), "{name} reached the upstream");
    }
    assert_eq!(seen.header("x-keep"), Some("yes"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("via"), Some("1.1 ingress, 1.1 oddscache"));

    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let head = head.split("\r\n\r\n").next().unwrap_or_default();
    assert!(head.contains("\r\nx-resp-keep: 1"), "{head}");
    assert!(head.contains("\r\nvia: 1.1 oddscache"), "{head}");
    for name in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            !head.contains(&format!("\r\n{name}:")),
            "{name} reached the client: {head}"
        );
    }
}

#[tokio::test]
async fn forwarding_headers_on_a_plain_request() {
    let up = Upstream::fixed(GAMES).await;
    let sc = sidecar(&up.url()).await;
    Client::new().get(&sc.url("/api/v1/games")).await;
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("via"), Some("1.1 oddscache"));
}

#[tokio::test]
async fn h2c_clients_are_served_from_the_same_cache() {
    let up = Upstream::fixed(GAMES).await;
    let sc = sidecar(&up.url()).await;
    let h2: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut labels = Vec::new();
    for _ in 0..2 {
        let resp = h2
            .get(sc.url("/api/v1/games").parse().unwrap())
            .await
            .expect("h2c response");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        labels.push(resp.headers()["x-cache"].to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, GAMES);
    }
    assert_eq!(labels, ["MISS", "HIT"]);
    assert_eq!(up.hits(), 1);
    assert_eq!(up.last().header("host"), Some(sc.addr.to_string().as_str()));
}

// --- broken upstreams ------------------------------------------------------

/// An interim `103 Early Hints` before the final response is never cached
/// nor answered in its place: the client gets the final 200, and the
/// hints' fields do not leak into the stored response. (Forwarding the 103
/// itself is not possible: hyper 1.x's server cannot send a 1xx.)
#[tokio::test]
async fn an_interim_response_is_neither_cached_nor_answered() {
    let up = RawUpstream::start(
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
            .to_vec(),
        RawEnd::Close,
    )
    .await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    let url = sc.url("/api/v1/games");
    for expected in ["MISS", "HIT"] {
        let r = c.get(&url).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "{}"), "{expected}");
        assert_eq!(r.x_cache(), expected);
        assert!(
            r.headers.get("link").is_none(),
            "the 103's fields were kept"
        );
    }
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn short_upstream_body_is_a_502_and_not_stored() {
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"games\":"
            .to_vec(),
        RawEnd::Close,
    )
    .await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    for n in 1..=2 {
        let r = c.get(&sc.url("/api/v1/games")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(r.json()["upstream"], up.url().as_str());
        assert_eq!(up.hits(), n, "nothing was stored");
    }
}

#[tokio::test]
async fn upstream_reset_is_an_error_and_not_stored() {
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"ga".to_vec(),
        RawEnd::Reset,
    )
    .await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    for n in 1..=2 {
        let r = c.get(&sc.url("/api/v1/games")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(up.hits(), n, "nothing was stored");
    }
}

#[tokio::test]
async fn upstream_dying_mid_stream_aborts_the_response_and_stores_nothing() {
    let len = 5 * 1024 * 1024;
    let mut reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    reply.extend_from_slice(&pattern(64 * 1024));
    let up = RawUpstream::start(reply, RawEnd::Close).await;
    let sc = sidecar(&up.url()).await;
    let c = Client::new();
    for n in 1..=2 {
        // The head went out before the body broke: the client sees 200 and
        // then a stream that ends early, never a whole-looking body.
        let resp = c
            .head_only(Method::GET, &sc.url("/api/v1/games"), &[], Bytes::new())
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = tokio::time::timeout(common::PATIENCE, resp.into_body().collect())
            .await
            .expect("the stream ends");
        match body {
            Err(_) => {}
            Ok(b) => assert!(b.to_bytes().len() < len, "a truncated body looked whole"),
        }
        assert_eq!(up.hits(), n, "nothing was stored");
    }
}
