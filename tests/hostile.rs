//! Hostile HTTP against the running proxy (issue 7, part 3): request
//! smuggling, header and URI floods, slowloris, a connection flood,
//! absolute-form and CONNECT, path tricks and unkeyed-header poisoning.
//!
//! Every case checks three things: what the attacker got, what the upstream
//! saw (its request log), and that a victim asking afterwards still gets
//! the clean cached entry. The upstream echoes what it received into its
//! body and makes every answer cacheable, so a poisoned entry shows itself.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use common::client::{raw_exchange, raw_status, Client, Resp};
use common::sidecar::Sidecar;
use common::upstream::{Reply, Upstream};
use common::PATIENCE;

/// A victim's entry, filled before each attack and checked after it.
const VICTIM: &str = "/api/v1/sports";

fn config(proxy: &str) -> String {
    format!(
        r#"
[proxy]
upstream = "{{UPSTREAM}}"
shutdown_grace = "2s"
{proxy}

[[route]]
name = "game-odds"
path = "/api/v1/games/{{game_id}}/odds"
tags = ["game:{{game_id}}"]

[[route]]
name = "games-list"
path = "/api/v1/games"
ttl = "10m"

[[route]]
name = "sports"
path = "/api/v1/sports"
ttl = "10m"
"#
    )
}

/// An upstream that answers every request with what it received, cacheable
/// for a minute: the request target, the method, and the headers a
/// careless framework would act on.
async fn echo_upstream() -> Upstream {
    Upstream::start(|parts, _| {
        let h = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let body = serde_json::json!({
            "uri": parts.uri.to_string(),
            "method": parts.method.as_str(),
            "host": h("host"),
            "x-forwarded-host": h("x-forwarded-host"),
            "x-original-url": h("x-original-url"),
            "x-rewrite-url": h("x-rewrite-url"),
            "x-http-method-override": h("x-http-method-override"),
        });
        Reply::json(body.to_string()).header("cache-control", "public, max-age=60")
    })
    .await
}

/// The sidecar (with its admin port, so tests can read `/metrics`) with
/// `proxy` lines added to the config, in front of `upstream`.
async fn start(proxy: &str, upstream: &Upstream) -> Sidecar {
    Sidecar::from_template(&config(proxy), &upstream.url()).await
}

/// Fills the victim's entry and returns its clean body.
async fn fill_victim(sc: &Sidecar) -> bytes::Bytes {
    let c = Client::new();
    let first = c.get(&sc.url(VICTIM)).await;
    assert_eq!(first.status, StatusCode::OK);
    let again = c.get(&sc.url(VICTIM)).await;
    assert_eq!(again.x_cache(), "HIT", "the victim's entry is cached");
    first.body
}

/// The victim still gets the clean entry, from the cache.
async fn assert_victim_clean(sc: &Sidecar, clean: &[u8]) {
    let r = Client::new().get(&sc.url(VICTIM)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.body, clean, "the victim's entry was replaced");
}

fn echo(r: &Resp) -> serde_json::Value {
    r.json()
}

fn text(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer).into_owned()
}

/// How many responses came back on one connection.
fn responses(answer: &[u8]) -> usize {
    text(answer).matches("HTTP/1.1 ").count()
}

// --- request smuggling -------------------------------------------------------

/// What a smuggled second request looks like; it must never reach the upstream.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

/// Each case is a request whose framing a front proxy could read differently
/// from the sidecar, with a second request hidden where one of the readings
/// would find it. Refused ones must be a 400 on a closed connection; the
/// others must be answered once, read by one framing only, and closed too
/// (hyper closes after a request that carried both framings).
#[tokio::test]
async fn smuggling_variants_never_reach_the_upstream_as_a_second_request() {
    let up = echo_upstream().await;
    let sc = start("", &up).await;
    let clean = fill_victim(&sc).await;
    let chunk_with_request = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let after_empty_chunk = format!("0\r\n\r\n{SMUGGLED}");
    let post = |headers: &str, body: &str| {
        format!("POST /api/v1/games HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}")
    };
    let cl = |body: &str| format!("Content-Length: {}\r\n", body.len());
    // (name, request, may it be served rather than refused?)
    let cases: Vec<(&str, String, bool)> = vec![
        (
            "CL.TE",
            post(
                &format!("{}Transfer-Encoding: chunked\r\n", cl("0\r\n\r\n")),
                &after_empty_chunk,
            ),
            true,
        ),
        (
            "TE.CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &chunk_with_request,
            ),
            true,
        ),
        (
            "conflicting Content-Length",
            post("Content-Length: 0\r\nContent-Length: 36\r\n", SMUGGLED),
            false,
        ),
        (
            "duplicate identical Content-Length",
            post(
                "Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n",
                &format!("hello{SMUGGLED}"),
            ),
            true,
        ),
        (
            "Content-Length list",
            post("Content-Length: 0, 36\r\n", SMUGGLED),
            false,
        ),
        (
            "signed Content-Length",
            post("Content-Length: +0\r\n", SMUGGLED),
            false,
        ),
        (
            "TE identity with CL",
            post(
                &format!("Transfer-Encoding: identity\r\n{}", cl(&after_empty_chunk)),
                &after_empty_chunk,
            ),
            false,
        ),
        (
            "TE chunked then identity",
            post(
                &format!(
                    "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n{}",
                    cl(&after_empty_chunk)
                ),
                &after_empty_chunk,
            ),
            false,
        ),
        (
            "TE list ending in identity",
            post("Transfer-Encoding: chunked, identity\r\n", &after_empty_chunk),
            false,
        ),
        (
            "TE xchunked",
            post(
                &format!("Transfer-Encoding: xchunked\r\n{}", cl("0\r\n\r\n")),
                &after_empty_chunk,
            ),
            false,
        ),
        (
            "space before the colon",
            post(
                &format!("Transfer-Encoding : chunked\r\n{}", cl(&after_empty_chunk)),
                &after_empty_chunk,
            ),
            false,
        ),
        (
            "odd casing and whitespace with CL",
            post(
                &format!(
                    "tRaNsFeR-eNcOdInG: \t ChUnKeD \t\r\n{}",
                    cl(&after_empty_chunk)
                ),
                &after_empty_chunk,
            ),
            true,
        ),
        (
            "obs-fold continuation of Transfer-Encoding",
            post(
                &format!("Transfer-Encoding:\r\n chunked\r\n{}", cl("0\r\n\r\n")),
                &after_empty_chunk,
            ),
            false,
        ),
        (
            "obs-fold continuation of another header",
            post(
                &format!("X-Folded: a\r\n\tb\r\n{}", cl(&after_empty_chunk)),
                &after_empty_chunk,
            ),
            false,
        ),
        (
            "bare LF hides a Content-Length",
            format!(
                "GET /api/v1/games HTTP/1.1\r\nHost: x\r\nX-Pad: a\nContent-Length: {}\r\nConnection: close\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
            true,
        ),
        (
            "bare CR",
            post(
                &format!("X-Pad: a\rTransfer-Encoding: chunked\r\n{}", cl(&after_empty_chunk)),
                &after_empty_chunk,
            ),
            false,
        ),
        (
            "HTTP/1.0 with Transfer-Encoding",
            format!(
                "POST /api/v1/games HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{}\r\n{after_empty_chunk}",
                cl(&after_empty_chunk)
            ),
            false,
        ),
    ];
    for (name, request, may_serve) in &cases {
        let before = up.hits();
        // raw_exchange returns only once the sidecar closes the connection.
        let answer = raw_exchange(sc.addr, request.as_bytes()).await;
        let status = raw_status(&answer);
        assert_eq!(
            responses(&answer),
            1,
            "{name}: one answer: {}",
            text(&answer)
        );
        if *may_serve {
            assert!(status == 200 || status == 400, "{name}: {}", text(&answer));
        } else {
            assert_eq!(status, 400, "{name}: {}", text(&answer));
            assert_eq!(
                up.hits(),
                before,
                "{name}: a refused request reached the upstream"
            );
        }
        for s in &up.seen()[before..] {
            assert_ne!(s.uri.path(), "/smuggled", "{name}: smuggled");
            assert!(
                !(s.headers.contains_key("content-length")
                    && s.headers.contains_key("transfer-encoding")),
                "{name}: both framings went upstream: {:?}",
                s.headers
            );
        }
        assert!(
            up.hits() <= before + 1,
            "{name}: more than one upstream request"
        );
    }
    assert!(up.seen().iter().all(|s| s.uri.path() != "/smuggled"));
    assert_victim_clean(&sc, &clean).await;
}

/// A request read by `Transfer-Encoding` goes upstream with the body it
/// framed, re-framed by the sidecar: the bytes a `Content-Length` reader
/// would have taken for a second request stay inside that body.
#[tokio::test]
async fn te_cl_body_is_forwarded_as_one_body() {
    let up = echo_upstream().await;
    let sc = start("", &up).await;
    let request = format!(
        "POST /api/v1/games HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
         Content-Length: 4\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
        SMUGGLED.len()
    );
    let answer = raw_exchange(sc.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{}", text(&answer));
    assert_eq!(responses(&answer), 1);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri.path(), "/api/v1/games");
    assert_eq!(seen[0].body, SMUGGLED.as_bytes());
    assert!(
        seen[0].header("transfer-encoding").is_none() || seen[0].header("content-length").is_none()
    );
}

/// Bare LF line endings are read as line ends (RFC 9112 §2.2 allows it) and
/// the request goes upstream normalised.
#[tokio::test]
async fn bare_lf_requests_are_normalised() {
    let up = echo_upstream().await;
    let sc = start("", &up).await;
    let answer = raw_exchange(
        sc.addr,
        b"GET /api/v1/games HTTP/1.1\nHost: x\nX-Keep: yes\nConnection: close\n\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{}", text(&answer));
    assert_eq!(up.hits(), 1);
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/api/v1/games");
    assert_eq!(seen.header("x-keep"), Some("yes"));
}

// --- floods ------------------------------------------------------------------

#[tokio::test]
async fn header_and_uri_floods_are_refused_and_serving_goes_on() {
    let up = echo_upstream().await;
    let sc = start(r#"max_header_bytes = "16KiB""#, &up).await;
    let clean = fill_victim(&sc).await;
    let hits = up.hits();
    let many = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    let cases: Vec<(&str, String, &[u16])> = vec![
        (
            "5000 headers",
            format!("GET {VICTIM} HTTP/1.1\r\nHost: x\r\n{}\r\n", many(5000)),
            &[431, 400],
        ),
        (
            "150 small headers",
            format!("GET {VICTIM} HTTP/1.1\r\nHost: x\r\n{}\r\n", many(150)),
            &[431, 400],
        ),
        (
            "one 1 MiB header",
            format!(
                "GET {VICTIM} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            ),
            &[431, 400],
        ),
        (
            "100 kB URI",
            format!(
                "GET {VICTIM}?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(100_000)
            ),
            &[414, 431, 400],
        ),
    ];
    for (name, request, allowed) in &cases {
        let answer = flood_exchange(sc.addr, request.as_bytes()).await;
        let status = raw_status(&answer);
        assert!(allowed.contains(&status), "{name}: {status}");
        assert_eq!(up.hits(), hits, "{name} reached the upstream");
        assert_victim_clean(&sc, &clean).await;
    }
}

/// Writes a request the server may refuse before reading it all: a reset
/// while writing is fine, the answer is what counts.
async fn flood_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.split();
    let write = async {
        let _ = wr.write_all(request).await;
    };
    let mut out = Vec::new();
    let read = async {
        let _ = tokio::time::timeout(PATIENCE, rd.read_to_end(&mut out)).await;
    };
    tokio::join!(write, read);
    out
}

#[tokio::test]
async fn many_requests_on_one_connection_are_served() {
    let up = echo_upstream().await;
    let sc = start("", &up).await;
    let n = 300;
    let mut requests = String::new();
    for i in 0..n {
        let close = if i == n - 1 {
            "Connection: close\r\n"
        } else {
            ""
        };
        requests.push_str(&format!("GET {VICTIM} HTTP/1.1\r\nHost: x\r\n{close}\r\n"));
    }
    let answer = raw_exchange(sc.addr, requests.as_bytes()).await;
    assert_eq!(text(&answer).matches("HTTP/1.1 200 OK").count(), n);
    assert_eq!(up.hits(), 1, "one fill, then hits");
}

// --- slowloris ---------------------------------------------------------------

/// Sends `head` then trickles `drip` every 100ms; returns how long until
/// the sidecar closed the connection and what it sent.
async fn trickle(addr: SocketAddr, head: &[u8], drip: &'static [u8]) -> (Duration, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    let _ = wr.write_all(head).await;
    let (closed_tx, mut closed_rx) = oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut closed_rx => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if !drip.is_empty() && wr.write_all(drip).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, rd.read_to_end(&mut out))
        .await
        .expect("the slow client was disconnected within patience");
    let took = started.elapsed();
    let _ = closed_tx.send(());
    let _ = writer.await;
    (took, out)
}

#[tokio::test]
async fn slow_clients_are_dropped_after_header_read_timeout() {
    let up = echo_upstream().await;
    let sc = start(r#"header_read_timeout = "1s""#, &up).await;
    let clean = fill_victim(&sc).await;
    let hits = up.hits();
    let cases: [(&str, &[u8], &'static [u8]); 4] = [
        (
            "partial head, trickled headers",
            b"GET /api/v1/games HTTP/1.1\r\nHost: x\r\n",
            b"X-a: b\r\n",
        ),
        ("one byte at a time", b"G", b"E"),
        ("silent after connecting", b"", b""),
        ("half an h2 preface", b"PRI * HTTP/2", b""),
    ];
    let attacks = cases.map(|(name, head, drip)| {
        let addr = sc.addr;
        (
            name,
            tokio::spawn(async move { trickle(addr, head, drip).await }),
        )
    });
    // Others are served while the slow clients hang on.
    let c = Client::new();
    for _ in 0..5 {
        let r = c.get(&sc.url(VICTIM)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, clean);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, attack) in attacks {
        let (took, out) = attack.await.expect("attack task");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{name}: closed after {took:?}"
        );
        if !out.is_empty() {
            let status = raw_status(&out);
            assert!(status == 408 || status == 400, "{name}: {}", text(&out));
        }
    }
    assert_eq!(up.hits(), hits, "no slow request reached the upstream");
    assert_victim_clean(&sc, &clean).await;
}

// --- connection flood --------------------------------------------------------

/// Whether the sidecar has closed `stream` (EOF or reset) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_counted() {
    let up = echo_upstream().await;
    let sc = start("max_connections = 50\nheader_read_timeout = \"60s\"", &up).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(
            TcpStream::connect(sc.addr)
                .await
                .expect("the kernel accepts"),
        );
    }
    sc.wait_metric(
        "oddscache_connections_rejected_total",
        |v| v >= 150.0,
        PATIENCE,
    )
    .await;
    assert_eq!(sc.metric("oddscache_connections").await, 50.0);
    assert_eq!(
        sc.metric("oddscache_connections_rejected_total").await,
        150.0
    );

    // The 150 refused ones were closed at once; 50 stay open and idle.
    let checks = idle.into_iter().map(|mut s| async move {
        let closed = closed_within(&mut s, Duration::from_millis(500)).await;
        (closed, s)
    });
    let (closed, open): (Vec<_>, Vec<_>) = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .partition(|(closed, _)| *closed);
    assert_eq!(closed.len(), 150);
    assert_eq!(open.len(), 50);
    let mut open: Vec<TcpStream> = open.into_iter().map(|(_, s)| s).collect();

    // A newcomer while full is closed without an answer.
    let refused = raw_exchange(
        sc.addr,
        format!("GET {VICTIM} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(refused.is_empty(), "{}", text(&refused));
    assert_eq!(
        sc.metric("oddscache_connections_rejected_total").await,
        151.0
    );
    assert_eq!(up.hits(), 0);

    // Once idle ones go, new clients are served.
    open.truncate(40);
    sc.wait_metric("oddscache_connections", |v| v <= 40.0, PATIENCE)
        .await;
    let r = Client::new().get(&sc.url(VICTIM)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.hits(), 1);
    assert_eq!(up.last().uri.path(), VICTIM);
    // The 40 still open were never disturbed.
    for s in &mut open {
        assert!(!closed_within(s, Duration::from_millis(1)).await);
    }
}

// --- absolute-form and CONNECT -----------------------------------------------

#[tokio::test]
async fn absolute_form_is_keyed_and_forwarded_by_path_only() {
    let up = echo_upstream().await;
    let sc = start("", &up).await;
    let answer = raw_exchange(
        sc.addr,
        format!("GET http://evil.example{VICTIM} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{}", text(&answer));
    assert_eq!(up.hits(), 1);
    let seen = up.last();
    // Origin-form to the configured upstream: the target's host went nowhere
    // but the Host header, which is the client's (see README, Host policy).
    assert_eq!(seen.uri.to_string(), VICTIM);
    assert_eq!(seen.header("host"), Some("evil.example"));

    // Keyed by path: an origin-form request for the same path is a hit.
    let r = Client::new().get(&sc.url(VICTIM)).await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(echo(&r)["uri"], VICTIM);
    assert_eq!(up.hits(), 1);

    // A target naming another scheme or port changes nothing either.
    let answer = raw_exchange(
        sc.addr,
        format!("GET https://evil.example:444{VICTIM}?a=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{}", text(&answer));
    assert_eq!(up.last().uri.to_string(), format!("{VICTIM}?a=1"));
}

/// A request without Host names its site only in the target's authority;
/// the Host sent upstream is then that authority, and the cache key sees
/// the same Host (for a response that `Vary: Host`), so it cannot land in
/// the variant of clients that named the real site.
#[tokio::test]
async fn host_is_keyed_as_forwarded_when_the_upstream_varies_on_it() {
    let up = Upstream::start(|parts, _| {
        let host = parts
            .headers
            .get("host")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        Reply::json(format!(r#"{{"link":"http://{host}/next"}}"#))
            .header("cache-control", "max-age=60")
            .header("vary", "Host")
    })
    .await;
    let sc = start("", &up).await;
    // The attacker: absolute-form, no Host.
    let answer = raw_exchange(
        sc.addr,
        format!("GET http://evil.example{VICTIM} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{}", text(&answer));
    assert_eq!(up.last().header("host"), Some("evil.example"));
    // The victims: HTTP/1.1 with Host, and h2c with only :authority.
    let r = Client::new().get(&sc.url(VICTIM)).await;
    assert!(!r.text().contains("evil"), "{}", r.text());
    let h2: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let resp = h2.get(sc.url(VICTIM).parse().unwrap()).await.expect("h2c");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains("evil"), "{body:?}");
    assert!(up.seen().iter().all(|s| s.header("host").is_some()));
}

#[tokio::test]
async fn connect_is_refused_and_never_tunnelled() {
    let up = echo_upstream().await;
    let sc = start("", &up).await;
    let clean = fill_victim(&sc).await;
    let hits = up.hits();
    for target in ["evil.example:443", &up.url()[7..]] {
        let answer = raw_exchange(
            sc.addr,
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n{SMUGGLED}").as_bytes(),
        )
        .await;
        let status = raw_status(&answer);
        assert!(
            status == 405 || status == 400,
            "{target}: {}",
            text(&answer)
        );
        assert_eq!(responses(&answer), 1, "{}", text(&answer));
    }
    assert_eq!(up.hits(), hits, "CONNECT reached the upstream");
    assert_victim_clean(&sc, &clean).await;
}

// --- path tricks -------------------------------------------------------------

/// Each trick path is keyed as exactly what is forwarded: it fills its own
/// entry with what the upstream answered for it, and neither fills nor
/// reads the entry of the path it might resolve to.
#[tokio::test]
async fn path_tricks_are_keyed_as_forwarded_and_poison_nothing() {
    let up = echo_upstream().await;
    let sc = start("", &up).await;
    let c = Client::new();
    let cases = [
        ("/api/v1/games/../sports", "/api/v1/sports"),
        ("/api/v1/games/%2e%2e/games", "/api/v1/games"),
        ("/api/v1/x/%2E%2E/games/g1/odds", "/api/v1/games/g1/odds"),
        ("/api/v1/./games/g2/odds", "/api/v1/games/g2/odds"),
        ("//api/v1/games/g3/odds", "/api/v1/games/g3/odds"),
        ("/api/v1//games/g4/odds", "/api/v1/games/g4/odds"),
        ("/api/v1/games%2Fg5/odds", "/api/v1/games/g5/odds"),
        ("/api/v1/games/g6/odds%00", "/api/v1/games/g6/odds"),
        ("/api/v1/games/g7%00/odds", "/api/v1/games/g7/odds"),
        ("/api/v1/games/..%2fg8/odds", "/api/v1/games/g8/odds"),
        ("/api/v1/games/g9/odds/..;/x", "/api/v1/games/g9/odds"),
    ];
    for (trick, plain) in cases {
        let before = up.hits();
        let r = c.get(&sc.url(trick)).await;
        assert_eq!(r.status, StatusCode::OK, "{trick}");
        assert_eq!(r.x_cache(), "MISS", "{trick}: served from another entry");
        assert_eq!(up.hits(), before + 1);
        assert_eq!(up.last().uri.to_string(), trick, "forwarded as keyed");
        assert_eq!(echo(&r)["uri"], trick);

        // The plain path was neither filled nor read by the trick.
        let p = c.get(&sc.url(plain)).await;
        assert_eq!(p.x_cache(), "MISS", "{trick} filled {plain}");
        assert_eq!(echo(&p)["uri"], plain);
        assert_eq!(up.last().uri.to_string(), plain);

        // Both are now cached, each with its own answer.
        let again = c.get(&sc.url(trick)).await;
        assert_eq!(again.x_cache(), "HIT", "{trick}");
        assert_eq!(echo(&again)["uri"], trick);
        let p = c.get(&sc.url(plain)).await;
        assert_eq!(p.x_cache(), "HIT", "{plain}");
        assert_eq!(echo(&p)["uri"], plain);
        assert_eq!(up.hits(), before + 2);
    }
}

#[tokio::test]
async fn raw_nul_and_control_bytes_in_the_target_are_a_400() {
    let up = echo_upstream().await;
    let sc = start("", &up).await;
    let clean = fill_victim(&sc).await;
    let hits = up.hits();
    for target in [
        &b"/api/v1/sports\0"[..],
        b"/api/v1/\0/sports",
        b"/api/v1/sports\x7f",
        b"/api/v1/sports\x01",
    ] {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        let answer = raw_exchange(sc.addr, &request).await;
        assert_eq!(
            raw_status(&answer),
            400,
            "{:?}",
            String::from_utf8_lossy(target)
        );
    }
    assert_eq!(up.hits(), hits);
    assert_victim_clean(&sc, &clean).await;

    // A fragment is the client's own business: it is dropped, and what is
    // left is the victim's URI, whose entry answers.
    let answer = raw_exchange(
        sc.addr,
        format!("GET {VICTIM}#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200);
    assert!(
        text(&answer).contains("\r\nx-cache: HIT\r\n"),
        "{}",
        text(&answer)
    );
    assert_eq!(up.hits(), hits);
    assert_victim_clean(&sc, &clean).await;
}

// --- unkeyed-header poisoning --------------------------------------------------

/// Headers that make some frameworks answer for another host, URL or
/// method are dropped on the way upstream, so an attacker's request fills
/// the entry with the same answer a plain one would get.
#[tokio::test]
async fn unkeyed_override_headers_cannot_poison_the_cache() {
    let up = echo_upstream().await;
    let sc = start("", &up).await;
    let c = Client::new();
    let attacks: [(&str, &str, &str); 6] = [
        ("/api/v1/games/p1/odds", "x-forwarded-host", "evil.example"),
        ("/api/v1/games/p2/odds", "x-original-url", "/admin"),
        ("/api/v1/games/p3/odds", "x-rewrite-url", "/admin"),
        ("/api/v1/games/p4/odds", "x-http-method-override", "DELETE"),
        ("/api/v1/games/p5/odds", "x-host", "evil.example"),
        ("/api/v1/games/p6/odds", "forwarded", "host=evil.example"),
    ];
    for (path, name, value) in attacks {
        let before = up.hits();
        let attacker = c.get_with(&sc.url(path), &[(name, value)]).await;
        assert_eq!(attacker.status, StatusCode::OK);
        assert_eq!(up.hits(), before + 1);
        let seen = up.last();
        assert!(seen.header(name).is_none(), "{name} reached the upstream");
        assert_eq!(seen.uri.path(), path);
        assert_eq!(seen.method, http::Method::GET);

        let victim = c.get(&sc.url(path)).await;
        assert_eq!(victim.x_cache(), "HIT");
        assert!(!victim.text().contains("evil"), "{name}: {}", victim.text());
        assert!(
            !victim.text().contains("/admin"),
            "{name}: {}",
            victim.text()
        );
        assert!(
            !victim.text().contains("DELETE"),
            "{name}: {}",
            victim.text()
        );
        assert_eq!(echo(&victim)["uri"], path);
        assert_eq!(up.hits(), before + 1);
    }
}
