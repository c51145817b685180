//! Change hints on the proxy port (SPEC §8): server-sent events and a
//! WebSocket on `push.path`, filters, `Last-Event-ID` replay, the limits,
//! CORS, and a change seen on one replica reaching a client of another.
//!
//! Every sidecar is the real one on loopback, in front of the demo
//! simulator; invalidations come from real bodies through the proxy or
//! from the admin port's POST.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use oddscache::config::{Config, Overrides};
use oddscache::shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use common::client::Client;
use common::redis_server::RedisServer;
use common::sidecar::{shipped_config, Sidecar};
use common::sim::{odds_path as odds, other_status as changed, SimUpstream};
use common::PATIENCE;

const PATH: &str = "/_oddscache/changes";
const TOKEN: &str = "push-test-token";

async fn sim() -> SimUpstream {
    SimUpstream::start().await
}

/// The shipped config in front of `upstream`, with a token for the admin
/// POST and no mutation quota to speak of.
fn config(upstream: &str, redis: Option<&str>, replica: &str) -> Config {
    let mut c = shipped_config(
        |text| text,
        Overrides {
            upstream: Some(upstream.into()),
            redis_url: redis.map(Into::into),
            replica_id: Some(replica.into()),
            admin_token: Some(TOKEN.into()),
            ..Overrides::default()
        },
    );
    c.admin.mutations_per_second = 1_000_000;
    c
}

struct Replica {
    sidecar: Sidecar,
    admin: SocketAddr,
    http: Client,
}

impl Replica {
    async fn start(config: Config) -> Replica {
        let sidecar = Sidecar::start(config).await;
        Replica {
            admin: sidecar.admin,
            sidecar,
            http: Client::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sidecar.addr
    }

    /// A manual invalidation through the admin port; answers the event id.
    async fn invalidate(&self, body: &str) -> String {
        let r = self
            .http
            .send(
                Method::POST,
                &format!("http://{}/api/v1/shared/cache/invalidate", self.admin),
                &[("authorization", &format!("Bearer {TOKEN}"))],
                body.to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["id"].as_str().expect("event id").to_string()
    }

    /// One sample of `/metrics`.
    async fn metric(&self, series: &str) -> f64 {
        self.sidecar.metric(series).await
    }
}

/// One block of an event stream.
#[derive(Debug, Default, PartialEq)]
struct Block {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    comment: Option<String>,
    retry: Option<String>,
}

impl Block {
    fn data(&self) -> serde_json::Value {
        serde_json::from_str(self.data.as_deref().expect("a data line")).expect("JSON data")
    }
}

/// A server-sent event client over one HTTP/1.1 connection.
struct Sse {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    buf: String,
    ended: bool,
}

impl Sse {
    async fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Sse {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .uri(target)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(
            PATIENCE,
            send.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
        )
        .await
        .expect("a response head within patience")
        .expect("a response");
        let (parts, body) = resp.into_parts();
        Sse {
            status: parts.status,
            headers: parts.headers,
            body,
            buf: String::new(),
            ended: false,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next block, or `None` when the stream ended or `within` passed.
    async fn next_block(&mut self, within: Duration) -> Option<Block> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let text: String = self.buf.drain(..end + 2).collect();
                return Some(parse_block(&text));
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf
                            .push_str(std::str::from_utf8(&data).expect("UTF-8"));
                    }
                }
            }
        }
    }

    /// The next block with an `event:` field, skipping comments.
    async fn next_event(&mut self, within: Duration) -> Option<Block> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let block = self.next_block(left).await?;
            if block.event.is_some() {
                return Some(block);
            }
        }
    }

    /// Every event within `within`.
    async fn events_within(&mut self, within: Duration) -> Vec<Block> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while let Some(b) = self
            .next_event(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            got.push(b);
        }
        got
    }
}

fn parse_block(text: &str) -> Block {
    let mut b = Block::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix(':') {
            b.comment = Some(c.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        let slot = match field {
            "id" => &mut b.id,
            "event" => &mut b.event,
            "data" => &mut b.data,
            "retry" => &mut b.retry,
            other => panic!("unexpected SSE field {other:?} in {text:?}"),
        };
        *slot = Some(value.to_string());
    }
    b
}

/// A stream whose reader never reads: a small receive window, its
/// request sent, nothing read, so the sidecar's writes stop once its
/// socket's send buffer is full.
async fn unread_stream(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {PATH} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stream
}

/// A game's status change revealed by a body through the proxy reaches a
/// stream filtered on that game, with the new status, after the replica
/// dropped the old copy: the refetch the hint prompts gets the new body.
#[tokio::test]
async fn a_status_change_reaches_the_stream_and_the_refetch_is_fresh() {
    let up = sim().await;
    let r = Replica::start(config(&up.url(), None, "r1")).await;
    let game = up.sim.game_ids()[0].clone();
    let before = r.http.get(&r.sidecar.url(&odds(&game))).await;
    assert_eq!(before.x_cache(), "MISS");
    let old = before.json()["status"].as_str().unwrap().to_string();
    assert_eq!(
        r.http.get(&r.sidecar.url(&odds(&game))).await.x_cache(),
        "HIT"
    );

    let mut sse = Sse::open(r.addr(), &format!("{PATH}?game_id={game}"), &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-store"));
    let first = sse.next_block(PATIENCE).await.expect("the opening block");
    assert_eq!(first.retry.as_deref(), Some("2000"));

    let raw_new = changed(&old);
    assert!(up.sim.set_status(&game, raw_new));
    // The games list is not cached yet: its body reveals the change.
    let list = r.http.get(&r.sidecar.url("/api/v1/games")).await;
    assert_eq!(list.status, 200);

    let hint = sse.next_event(PATIENCE).await.expect("a change hint");
    let data = hint.data();
    assert_eq!(data["game_id"], game.as_str());
    assert_eq!(hint.event.as_deref(), data["reason"].as_str());
    assert!(
        ["STATUS_CHANGE", "CANCELLED", "POSTPONED"].contains(&data["reason"].as_str().unwrap()),
        "{data}"
    );
    assert!(data["status"].is_string(), "{data}");
    assert!(
        data["sport_id"].is_string() && data["league_id"].is_string(),
        "{data}"
    );
    assert!(hint.id.is_some());

    let after = r.http.get(&r.sidecar.url(&odds(&game))).await;
    assert_eq!(
        after.x_cache(),
        "MISS",
        "the old copy was dropped before the hint"
    );
    assert_eq!(after.json()["status"], raw_new);
}

/// Filters are a union of game, sport and league ids; a stream hears only
/// what names one of them. A game whose sport and league no hint has named
/// yet reaches every scoped stream; once a change named them, only its own.
#[tokio::test]
async fn filters_pick_the_hints_a_stream_hears() {
    let up = sim().await;
    let r = Replica::start(config(&up.url(), None, "r1")).await;
    let mut by_game = Sse::open(r.addr(), &format!("{PATH}?game_id=g-1001"), &[]).await;
    let mut by_sport = Sse::open(r.addr(), &format!("{PATH}?sport_id=soccer"), &[]).await;
    let mut by_league = Sse::open(r.addr(), &format!("{PATH}?league_id=nba"), &[]).await;
    let mut all = Sse::open(r.addr(), PATH, &[]).await;

    let unknown_scope = r.invalidate(r#"{"game_id": "g-1001"}"#).await;
    let sidebar = r
        .invalidate(r#"{"sidebar": {"sport_id": "soccer", "league_id": "epl"}}"#)
        .await;
    let tags = r
        .invalidate(r#"{"tags": ["sidebar:basketball:nba"]}"#)
        .await;
    // A status change of g-1001 (soccer, epl) seen in a body.
    let before = r.http.get(&r.sidecar.url(&odds("g-1001"))).await.json();
    assert_eq!(before["league_id"], "epl");
    assert!(up
        .sim
        .set_status("g-1001", changed(before["status"].as_str().unwrap())));
    r.http.get(&r.sidecar.url("/api/v1/games")).await;
    let known_scope = r.invalidate(r#"{"game_id": "g-1001"}"#).await;

    let ids = |blocks: &[Block]| -> Vec<String> {
        blocks.iter().map(|b| b.id.clone().unwrap()).collect()
    };
    let settle = Duration::from_millis(500);
    let everything = all.events_within(settle).await;
    assert_eq!(everything.len(), 5, "{everything:?}");
    let status = &everything[3];
    assert_eq!(status.event.as_deref(), Some("STATUS_CHANGE"));
    assert_eq!(status.data()["sport_id"], "soccer");
    let status = status.id.clone().unwrap();
    assert_eq!(
        ids(&everything),
        [
            unknown_scope.clone(),
            sidebar.clone(),
            tags.clone(),
            status.clone(),
            known_scope.clone()
        ]
    );
    assert_eq!(
        everything[1].data(),
        serde_json::json!({"game_id": null, "sport_id": "soccer", "league_id": "epl",
            "status": null, "reason": "MANUAL", "at": everything[1].data()["at"]})
    );
    assert_eq!(
        ids(&by_game.events_within(settle).await),
        [unknown_scope.clone(), status.clone(), known_scope.clone()]
    );
    assert_eq!(
        ids(&by_sport.events_within(settle).await),
        [unknown_scope.clone(), sidebar, status, known_scope]
    );
    // The first, before its league was known; not the last.
    assert_eq!(
        ids(&by_league.events_within(settle).await),
        [unknown_scope, tags]
    );
}

/// A client that reconnects with `Last-Event-ID` gets what it missed, in
/// order, then live hints; one naming an event the journal no longer holds
/// is told to resync.
#[tokio::test]
async fn last_event_id_replays_what_was_missed() {
    let up = sim().await;
    let r = Replica::start(config(&up.url(), None, "r1")).await;
    let e1 = r.invalidate(r#"{"game_id": "g-1001"}"#).await;
    let e2 = r.invalidate(r#"{"game_id": "g-1002"}"#).await;
    let e3 = r.invalidate(r#"{"game_id": "g-1001"}"#).await;

    let mut sse = Sse::open(r.addr(), PATH, &[("last-event-id", &e1)]).await;
    assert_eq!(sse.next_event(PATIENCE).await.unwrap().id, Some(e2.clone()));
    assert_eq!(sse.next_event(PATIENCE).await.unwrap().id, Some(e3.clone()));
    let e4 = r.invalidate(r#"{"game_id": "g-1003"}"#).await;
    assert_eq!(sse.next_event(PATIENCE).await.unwrap().id, Some(e4));
    assert!(sse
        .events_within(Duration::from_millis(300))
        .await
        .is_empty());

    // Filtered replay, by query parameter (a browser WebSocket cannot set
    // headers).
    let mut filtered = Sse::open(
        r.addr(),
        &format!("{PATH}?game_id=g-1001&last_event_id={e1}"),
        &[],
    )
    .await;
    assert_eq!(filtered.next_event(PATIENCE).await.unwrap().id, Some(e3));

    // An id the journal no longer holds: resync, with a position to
    // reconnect from.
    let mut gone = Sse::open(r.addr(), PATH, &[("last-event-id", "r0-1-1")]).await;
    let resync = gone.next_event(PATIENCE).await.unwrap();
    assert_eq!(resync.event.as_deref(), Some("resync"));
    let position = resync.id.expect("a position");
    drop(gone);
    let e5 = r.invalidate(r#"{"game_id": "g-1004"}"#).await;
    let mut back = Sse::open(r.addr(), PATH, &[("last-event-id", &position)]).await;
    assert_eq!(back.next_event(PATIENCE).await.unwrap().id, Some(e5));
}

/// `push.max_clients` streams, then 503 with `Retry-After`, counted; a
/// closed stream gives its place back.
#[tokio::test]
async fn max_clients_then_503_and_a_closed_stream_frees_its_place() {
    let up = sim().await;
    let mut c = config(&up.url(), None, "r1");
    let push = c.push.as_mut().expect("the shipped config has [push]");
    push.max_clients = 2;
    push.heartbeat = oddscache::config::Dur::millis(100);
    let r = Replica::start(c).await;
    let a = Sse::open(r.addr(), PATH, &[]).await;
    let _b = Sse::open(r.addr(), PATH, &[]).await;
    assert_eq!((a.status, _b.status), (StatusCode::OK, StatusCode::OK));
    let refused = Sse::open(r.addr(), PATH, &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(r.metric("oddscache_push_clients").await, 2.0);
    assert_eq!(
        r.metric("oddscache_push_dropped_total{why=\"max_clients\"}")
            .await,
        1.0
    );

    drop(a);
    // The server learns of the close at its next write, a heartbeat.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let again = Sse::open(r.addr(), PATH, &[]).await;
        if again.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream kept its place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reader that stops reading falls a whole buffer behind once the
/// kernel's send buffer is full: it is dropped (its stream ends with a
/// comment saying so) and counted; the replica and a reader that keeps up
/// carry on.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_is_dropped_and_counted() {
    let up = sim().await;
    let r = Arc::new(Replica::start(config(&up.url(), None, "r1")).await);
    let mut slow = unread_stream(r.addr()).await;
    let mut healthy = Sse::open(r.addr(), PATH, &[]).await;
    r.sidecar
        .wait_metric("oddscache_push_clients", |n| n >= 2.0, PATIENCE)
        .await;
    // Enough hints (about 150 bytes each) to fill the largest send buffer
    // the kernel may grow, then a whole client buffer more.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let n = wmem_max / 150 + 4 * oddscache::push::CLIENT_BUFFER;
    let reader = tokio::spawn(async move {
        let mut seen = 0usize;
        while seen < n {
            healthy
                .next_event(PATIENCE)
                .await
                .expect("the healthy reader keeps up");
            seen += 1;
        }
        healthy
    });
    let posters: Vec<_> = (0..4)
        .map(|p| {
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                for i in (p..n).step_by(4) {
                    r.invalidate(&format!(r#"{{"tags": ["sidebar:s{i}"]}}"#))
                        .await;
                }
            })
        })
        .collect();
    for p in posters {
        p.await.unwrap();
    }
    let mut healthy = tokio::time::timeout(PATIENCE, reader)
        .await
        .expect("the healthy reader heard every hint")
        .unwrap();
    // Now read what the slow one was sent: it ends, saying why.
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    got.extend_from_slice(&buf[..k]);
                    if got.ends_with(b"0\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_all)
        .await
        .expect("the slow stream ended");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("hints behind; reconnect with Last-Event-ID"),
        "{}",
        &text[text.len().saturating_sub(500)..]
    );
    let delivered = text.matches("\nevent: MANUAL\n").count();
    assert!(delivered < n, "the slow reader was sent all {n} hints");
    assert_eq!(
        r.metric("oddscache_push_dropped_total{why=\"slow\"}").await,
        1.0
    );
    // The healthy stream still hears.
    let more = r.invalidate(r#"{"game_id": "g-1001"}"#).await;
    assert_eq!(healthy.next_event(PATIENCE).await.unwrap().id, Some(more));
}

/// A reader that stops reading for good is not polled again, so only the
/// kernel sees it: after `proxy.send_timeout` of a shut window its
/// connection is closed, and its place under `push.max_clients` is free.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_reader_is_closed_after_the_send_timeout() {
    let up = sim().await;
    let mut c = config(&up.url(), None, "r1");
    c.proxy.send_timeout = oddscache::config::Dur::secs(2);
    let push = c.push.as_mut().unwrap();
    push.max_clients = 2;
    // Heartbeats queue up behind a stalled reader: it goes with them unsent.
    push.heartbeat = oddscache::config::Dur::millis(200);
    let r = Arc::new(Replica::start(c).await);
    let mut stalled = unread_stream(r.addr()).await;
    let mut healthy = Sse::open(r.addr(), PATH, &[]).await;
    r.sidecar
        .wait_metric("oddscache_push_clients", |n| n >= 2.0, PATIENCE)
        .await;
    assert_eq!(
        Sse::open(r.addr(), PATH, &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "both places are taken"
    );
    // Enough hints to shut its window and fill what sits in between.
    let n = 6 * oddscache::push::CLIENT_BUFFER;
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            healthy
                .next_event(PATIENCE)
                .await
                .expect("the healthy reader keeps up");
        }
        healthy
    });
    for i in 0..n {
        r.invalidate(&format!(r#"{{"tags": ["sidebar:s{i}"]}}"#))
            .await;
    }
    let _healthy = reader.await.unwrap();
    // The stalled stream gives its place back.
    r.sidecar
        .wait_metric("oddscache_push_clients", |n| n <= 1.0, PATIENCE)
        .await;
    assert_eq!(Sse::open(r.addr(), PATH, &[]).await.status, StatusCode::OK);
    // Its connection was reset: reading now ends in an error or EOF
    // after what the kernel had delivered.
    let mut buf = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled connection is still open");
}

/// A replica that loses a compare-and-set drops its entries of the game
/// without recording an event (the fleet's records the change, or only a
/// seed does): its browsers still get a hint, without an `id:`, so their
/// `Last-Event-ID` stays where it was.
#[tokio::test]
async fn an_eviction_that_no_event_records_still_reaches_the_stream() {
    use oddscache::invalidate::known::Known;
    use oddscache::watch::{GameId, GameState, Status};
    let up = sim().await;
    let config = config(&up.url(), None, "r1");
    let (_trigger, signal) = shutdown::channel();
    let core = oddscache::Core::start(&config, signal.clone()).unwrap();
    let push = oddscache::push::Push::start(
        config.push.as_ref().unwrap(),
        Arc::clone(&core.invalidator),
        core.metrics.push.clone(),
        signal.clone(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(oddscache::server::serve(
        "push",
        listener,
        move |_peer| {
            let push = Arc::clone(&push);
            hyper::service::service_fn(move |req| {
                let resp = push.serve(req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            })
        },
        oddscache::server::HttpLimits::default(),
        None,
        signal,
        Duration::from_secs(1),
    ));
    let mut sse = Sse::open(addr, &format!("{PATH}?game_id=g-1001"), &[]).await;
    sse.next_block(PATIENCE).await.expect("the opening block");
    let now = Known {
        state: GameState {
            status: Status::Live,
            baseline: Default::default(),
            baseline_known: false,
        },
        seq: 1,
    };
    let (recorded, _) = core.invalidator.evict_locally(
        &GameId::try_from("g-1001").unwrap(),
        Status::Scheduled,
        now,
        "the fleet moved it first".into(),
        false,
    );
    assert!(recorded.is_none(), "nothing is journaled");
    let hint = sse
        .next_event(PATIENCE)
        .await
        .expect("a hint of the eviction");
    assert_eq!(hint.id, None);
    assert_eq!(hint.event.as_deref(), Some("STATUS_CHANGE"));
    assert_eq!(hint.data()["game_id"], "g-1001");
    assert_eq!(hint.data()["status"], "live");
}

/// CORS: listed origins and the same origin may connect, others get 403;
/// a preflight is answered; requests without `Origin` are not browsers'.
#[tokio::test]
async fn cors_admits_listed_origins_only() {
    let up = sim().await;
    let mut c = config(&up.url(), None, "r1");
    c.push.as_mut().unwrap().allow_origins = vec!["http://page.example:8081".into()];
    let r = Replica::start(c).await;
    let listed = Sse::open(r.addr(), PATH, &[("origin", "http://page.example:8081")]).await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.header("access-control-allow-origin"),
        Some("http://page.example:8081")
    );
    assert_eq!(listed.header("vary"), Some("origin"));
    let same = format!("http://{}", r.addr());
    let same_origin = Sse::open(r.addr(), PATH, &[("origin", &same)]).await;
    assert_eq!(same_origin.status, 200);
    let other = Sse::open(r.addr(), PATH, &[("origin", "http://evil.example")]).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_eq!(Sse::open(r.addr(), PATH, &[]).await.status, 200);

    let preflight = r
        .http
        .send(
            Method::OPTIONS,
            &r.sidecar.url(PATH),
            &[
                ("origin", "http://page.example:8081"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "last-event-id"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    assert_eq!(preflight.header("access-control-allow-methods"), "GET");
    assert!(preflight
        .header("access-control-allow-headers")
        .contains("last-event-id"));
}

/// Bad input gets a clear 400 (or 405), and nothing sent to the stream's
/// path reaches the upstream.
#[tokio::test]
async fn bad_requests_are_refused_and_never_reach_the_upstream() {
    let up = sim().await;
    let r = Replica::start(config(&up.url(), None, "r1")).await;
    let served = up.sim.requests_served();
    let many: Vec<String> = (0..101).map(|i| format!("game_id=g-{i}")).collect();
    for (query, says) in [
        ("team=arsenal", "unknown query parameter"),
        ("game_id=a%20b", "game_id"),
        ("sport_id=so*", "sport_id"),
        ("game_id=%zz", "percent-encoding"),
        (many.join("&").as_str(), "at most 100"),
    ] {
        let resp = r.http.get(&r.sidecar.url(&format!("{PATH}?{query}"))).await;
        assert_eq!(resp.status, 400, "{query}");
        assert!(
            resp.json()["error"].as_str().unwrap().contains(says),
            "{query}: {}",
            resp.text()
        );
    }
    let post = r
        .http
        .send(Method::POST, &r.sidecar.url(PATH), &[], "x")
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.header("allow"), "GET, OPTIONS");
    let bad_ws = r
        .http
        .send(
            Method::GET,
            &r.sidecar.url(PATH),
            &[("upgrade", "websocket"), ("connection", "upgrade")],
            Bytes::new(),
        )
        .await;
    assert_eq!(bad_ws.status, 400);
    assert_eq!(up.sim.requests_served(), served, "the upstream heard of it");
}

/// A WebSocket on the same path carries the same hints as text messages,
/// filtered and replayed the same way; a foreign origin is refused.
#[tokio::test]
async fn a_websocket_carries_the_same_hints() {
    let up = sim().await;
    let r = Replica::start(config(&up.url(), None, "r1")).await;
    let e1 = r.invalidate(r#"{"game_id": "g-1001"}"#).await;
    let e2 = r.invalidate(r#"{"game_id": "g-1001"}"#).await;
    let url = format!("ws://{}{PATH}?game_id=g-1001&last_event_id={e1}", r.addr());
    let tcp = TcpStream::connect(r.addr()).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .expect("the handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let replayed = next_text(&mut ws).await;
    assert_eq!(replayed["id"], e2.as_str());
    assert_eq!(replayed["event"], "MANUAL");
    assert_eq!(replayed["data"]["game_id"], "g-1001");
    r.invalidate(r#"{"game_id": "g-1002"}"#).await;
    let e4 = r.invalidate(r#"{"game_id": "g-1001"}"#).await;
    assert_eq!(next_text(&mut ws).await["id"], e4.as_str());
    // What a client sends is ignored; a ping is answered.
    ws.send(Message::Text("hello".into())).await.unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    let pong = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Message::Pong(p) = ws.next().await.unwrap().unwrap() {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"p");
    ws.close(None).await.unwrap();

    let mut foreign = format!("ws://{}{PATH}", r.addr())
        .into_client_request()
        .unwrap();
    foreign
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    let tcp = TcpStream::connect(r.addr()).await.unwrap();
    match tokio_tungstenite::client_async(foreign, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("a foreign origin upgraded: {other:?}"),
    }
}

/// The next text message, as JSON.
async fn next_text(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> serde_json::Value {
    let text = async {
        loop {
            if let Message::Text(t) = ws.next().await.expect("open").expect("a message") {
                return serde_json::from_str(t.as_str()).expect("JSON");
            }
        }
    };
    tokio::time::timeout(PATIENCE, text)
        .await
        .expect("a message within patience")
}

/// A change seen on replica A reaches a browser connected to replica B,
/// through the fleet's event log, after B dropped its own copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_seen_on_one_replica_reaches_a_client_of_another() {
    let redis = RedisServer::start();
    let up = sim().await;
    let a = Replica::start(config(&up.url(), Some(&redis.url()), "a")).await;
    let b = Replica::start(config(&up.url(), Some(&redis.url()), "b")).await;
    redis.wait_fleet_connected(2).await;
    let game = up.sim.game_ids()[0].clone();
    // Both know the game; B holds a copy of its odds.
    a.http.get(&a.sidecar.url("/api/v1/games")).await;
    let first = b.http.get(&b.sidecar.url(&odds(&game))).await;
    assert_eq!(first.x_cache(), "MISS");
    let raw_new = changed(first.json()["status"].as_str().unwrap());
    assert_eq!(
        b.http.get(&b.sidecar.url(&odds(&game))).await.x_cache(),
        "HIT"
    );
    let mut on_b = Sse::open(b.addr(), &format!("{PATH}?game_id={game}"), &[]).await;
    on_b.next_block(PATIENCE).await.expect("the opening block");

    assert!(up.sim.set_status(&game, raw_new));
    // A sees it: its copy of the odds is not cached yet.
    assert_eq!(
        a.http.get(&a.sidecar.url(&odds(&game))).await.x_cache(),
        "MISS"
    );
    let hint = on_b.next_event(PATIENCE).await.expect("the hint on B");
    assert_eq!(hint.data()["game_id"], game.as_str());
    let canonical = if raw_new == "final" {
        "finished"
    } else {
        "live"
    };
    assert_eq!(hint.data()["status"], canonical);
    let refetch = b.http.get(&b.sidecar.url(&odds(&game))).await;
    assert_eq!(refetch.x_cache(), "MISS");
    assert_eq!(refetch.json()["status"], raw_new);
}
