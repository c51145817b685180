//! End-to-end tests of the simulator's HTTP face: the real [`serve`] on an
//! ephemeral loopback port, driven by hyper-util's client, ticked by hand.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{serve, SimConfig, Simulator};
use crate::shutdown::{self, Trigger};

type Body = BoxBody<Bytes, Infallible>;

/// The simulator served on an ephemeral loopback port, ticked by hand.
struct Upstream {
    sim: Arc<Simulator>,
    addr: SocketAddr,
    base: String,
    client: Client<HttpConnector, Body>,
    _shutdown: Trigger,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Upstream {
    async fn start() -> Upstream {
        let sim = Simulator::new(SimConfig {
            tick: Duration::ZERO,
            ..SimConfig::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let (trigger, signal) = shutdown::channel();
        tokio::spawn(serve(sim.clone(), listener, signal));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Upstream {
            sim,
            addr,
            base,
            client,
            _shutdown: trigger,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = self.client.request(req.body(body).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Writes raw bytes and reads the answer to EOF, for requests that must
    /// stop at an exact byte: the server refuses oversized bodies unread, and
    /// bytes still unread when it closes would reset the connection.
    async fn raw(&self, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the server kept the connection open")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, &[], empty()).await
    }

    async fn write(&self, method: Method, path: &str, body: &str) -> Answer {
        let body = Full::new(Bytes::from(body.to_owned())).boxed();
        self.send(method, path, &[("content-type", "application/json")], body)
            .await
    }
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

fn empty() -> Body {
    Empty::new().boxed()
}

#[tokio::test]
async fn game_odds_answers_a_spec_game_object_with_validators() {
    let up = Upstream::start().await;
    let answer = up.get("/api/v1/games/g-1001/odds").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "application/json");
    assert_eq!(answer.header("cache-control"), "");
    let etag = answer.header("etag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );
    let game = answer.json();
    let updated = httpdate::parse_http_date(answer.header("last-modified")).unwrap();
    let updated_at = up.sim.world().get("g-1001").unwrap().updated_at;
    assert_eq!(updated, UNIX_EPOCH + Duration::from_secs(updated_at));
    assert_eq!(game["game_id"], "g-1001");
    assert_eq!(
        (game["sport_id"].as_str(), game["league_id"].as_str()),
        (Some("soccer"), Some("epl"))
    );
    assert!(game["odds"]["moneyline"]["draw"].is_f64());
    assert!(game["odds"]["spread"]["line"].is_f64());
    assert!(game["odds"]["total"]["under"].is_f64());
    assert!(game["start_time"].as_str().unwrap().ends_with('Z'));

    let missing = up.get("/api/v1/games/g-9999/odds").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.header("content-type"), "application/json");
    assert_eq!(missing.json(), json!({"error": "unknown game"}));
    assert_eq!(
        up.get("/api/v1/nowhere").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        up.get("/api/v1/games/g-1001/odds/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn games_list_filters_on_sport_league_and_raw_status() {
    let up = Upstream::start().await;
    let all = up.get("/api/v1/games").await.json();
    assert_eq!(all["games"].as_array().unwrap().len(), 36);
    assert!(all["games"][0]["odds"].is_object());
    let ids = |answer: &Answer| -> Vec<String> {
        let games = answer.json()["games"].as_array().unwrap().clone();
        games
            .iter()
            .map(|g| g["game_id"].as_str().unwrap().to_owned())
            .collect()
    };

    let tennis = up.get("/api/v1/games?sport_id=tennis").await;
    assert_eq!(tennis.json()["games"].as_array().unwrap().len(), 6);
    assert!(tennis.json()["games"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["sport_id"] == "tennis"));
    let laliga = up
        .get("/api/v1/games?sport_id=soccer&league_id=laliga")
        .await
        .json();
    assert!(laliga["games"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["league_id"] == "laliga"));
    assert_eq!(laliga["games"].as_array().unwrap().len(), 6);
    assert!(ids(&up.get("/api/v1/games?sport_id=soccer&league_id=nba").await).is_empty());
    let nfl = up.get("/api/v1/games?sport_id=american%5Ffootball").await;
    assert_eq!(ids(&nfl).len(), 6);

    assert!(up.sim.set_status("g-1002", "abandoned"));
    assert_eq!(
        ids(&up.get("/api/v1/games?status=abandoned").await),
        ["g-1002"]
    );
    let unfiltered = up.get("/api/v1/games?sport_id=&status=").await;
    assert_eq!(ids(&unfiltered).len(), 36);
}

#[tokio::test]
async fn sidebar_lists_one_leagues_summaries() {
    let up = Upstream::start().await;
    let answer = up.get("/api/v1/sidebar/soccer/epl").await;
    assert_eq!(answer.status, StatusCode::OK);
    let sidebar = answer.json();
    assert_eq!(
        (sidebar["sport_id"].as_str(), sidebar["league_id"].as_str()),
        (Some("soccer"), Some("epl"))
    );
    let games = sidebar["games"].as_array().unwrap();
    assert_eq!(games.len(), 6);
    for game in games {
        assert_eq!(game["league_id"], "epl");
        assert!(
            game.get("odds").is_none() && game["status"].is_string(),
            "{game}"
        );
    }
    let wrong = up.get("/api/v1/sidebar/basketball/epl").await;
    assert_eq!(wrong.status, StatusCode::NOT_FOUND);
    assert_eq!(wrong.json(), json!({"error": "unknown league"}));
}

#[tokio::test]
async fn sports_is_a_static_catalogue_dated_at_startup() {
    let up = Upstream::start().await;
    let answer = up.get("/api/v1/sports").await;
    assert_eq!(answer.status, StatusCode::OK);
    let sports = answer.json()["sports"].as_array().unwrap().clone();
    let ids: Vec<_> = sports
        .iter()
        .map(|s| s["sport_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "soccer",
            "basketball",
            "tennis",
            "icehockey",
            "american_football"
        ]
    );
    for sport in &sports {
        assert!(sport["name"].is_string());
        for league in sport["leagues"].as_array().unwrap() {
            assert!(
                league["league_id"].is_string() && league["name"].is_string(),
                "{league}"
            );
        }
    }
    let started = httpdate::parse_http_date(answer.header("last-modified")).unwrap();
    assert_eq!(started, up.sim.started);
    up.sim.tick();
    assert_eq!(
        up.get("/api/v1/sports").await.header("etag"),
        answer.header("etag")
    );
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let up = Upstream::start().await;
    for path in [
        "/api/v1/games/g-1004/odds",
        "/api/v1/games",
        "/api/v1/sports",
        "/api/v1/games/nope/odds",
    ] {
        let get = up.get(path).await;
        let head = up.send(Method::HEAD, path, &[], empty()).await;
        assert_eq!(head.status, get.status, "{path}");
        assert!(head.body.is_empty(), "{path}");
        assert_eq!(
            head.header("content-length"),
            get.body.len().to_string(),
            "{path}"
        );
        assert_eq!(head.header("etag"), get.header("etag"), "{path}");
        assert_eq!(head.header("content-type"), "application/json", "{path}");
    }
}

#[tokio::test]
async fn if_none_match_answers_304_until_the_body_changes() {
    let up = Upstream::start().await;
    let path = "/api/v1/games/g-1005/odds";
    let first = up.get(path).await;
    let etag = first.header("etag").to_owned();
    let weak_list = format!(r#""other", W/{etag}"#);
    for inm in [etag.as_str(), weak_list.as_str(), "*"] {
        for method in [Method::GET, Method::HEAD] {
            let answer = up
                .send(method.clone(), path, &[("if-none-match", inm)], empty())
                .await;
            assert_eq!(answer.status, StatusCode::NOT_MODIFIED, "{method} {inm}");
            assert!(answer.body.is_empty());
            assert_eq!(answer.header("etag"), etag);
            assert_eq!(
                answer.header("last-modified"),
                first.header("last-modified")
            );
        }
    }
    let other = up
        .send(
            Method::GET,
            path,
            &[("if-none-match", r#""other""#)],
            empty(),
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);
    // If-Modified-Since alone never yields 304: see the `api` module doc.
    let ims = up
        .send(
            Method::GET,
            path,
            &[("if-modified-since", first.header("last-modified"))],
            empty(),
        )
        .await;
    assert_eq!(ims.status, StatusCode::OK);

    assert!(up.sim.scale_line("g-1005", "/total/over", 1.2));
    let changed = up
        .send(Method::GET, path, &[("if-none-match", &etag)], empty())
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_ne!(changed.header("etag"), etag);
    let write = up.write(Method::PATCH, path, "{}").await;
    assert_eq!(write.status, StatusCode::OK, "writes ignore If-None-Match");
}

#[tokio::test]
async fn writes_merge_into_the_game_and_answer_it() {
    let up = Upstream::start().await;
    let put = up
        .write(
            Method::PUT,
            "/api/v1/games/g-1007",
            r#"{"status": "in_progress"}"#,
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(put.header("content-type"), "application/json");
    assert!(!put.header("etag").is_empty() && !put.header("last-modified").is_empty());
    assert_eq!(put.json()["status"], "in_progress");
    assert!(put.json()["odds"].is_object());

    let before = up.get("/api/v1/games/g-1007/odds").await.json();
    let patch = up
        .write(
            Method::PATCH,
            "/api/v1/games/g-1007/odds",
            r#"{"odds": {"moneyline": {"home": 7.5}}}"#,
        )
        .await;
    assert_eq!(patch.json()["odds"]["moneyline"]["home"], 7.5);
    assert_eq!(
        patch.json()["odds"]["moneyline"]["away"],
        before["odds"]["moneyline"]["away"]
    );

    // A fetched game object can be written back; its other fields are ignored.
    let mut echoed = patch.json();
    echoed["status"] = json!("final");
    echoed["home"] = json!("Someone Else");
    let post = up
        .write(Method::POST, "/api/v1/games/g-1007", &echoed.to_string())
        .await;
    assert_eq!(post.status, StatusCode::OK);
    let after = up.get("/api/v1/games/g-1007/odds").await.json();
    assert_eq!(after["status"], "final");
    assert_eq!(after["home"], before["home"]);
    assert_eq!(after, post.json());
}

#[tokio::test]
async fn bad_writes_change_nothing() {
    let up = Upstream::start().await;
    let path = "/api/v1/games/g-1008";
    let before = up.get("/api/v1/games/g-1008/odds").await.body;

    let bad_json = up.write(Method::PUT, path, "{not json").await;
    assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
    assert!(bad_json.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid JSON body"));
    let wrong_type = up.write(Method::PUT, path, r#"{"status": 3}"#).await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    let bad_line = up
        .write(
            Method::PATCH,
            path,
            r#"{"odds": {"spread": {"hone": 2.0}}}"#,
        )
        .await;
    assert_eq!(bad_line.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad_line.json(),
        json!({"error": "unknown odds line /spread/hone"})
    );
    let unknown = up
        .write(
            Method::PUT,
            "/api/v1/games/g-9999",
            r#"{"status": "final"}"#,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    assert_eq!(up.get("/api/v1/games/g-1008/odds").await.body, before);
}

#[tokio::test]
async fn bodies_past_64_kib_get_413_and_change_nothing() {
    let up = Upstream::start().await;
    let before = up.get("/api/v1/games/g-1008/odds").await.body;

    // Declared too large: refused before a byte of the body is read.
    let head = format!(
        "PUT /api/v1/games/g-1008 HTTP/1.1\r\nhost: sim\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        64 * 1024 + 1
    );
    let answer = up.raw(head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#"{"error":"request body exceeds 65536 bytes"}"#));

    // Chunked, so only counting finds it: 64 KiB of whitespace, then one byte more.
    let mut chunked = b"POST /api/v1/games/g-1008/odds HTTP/1.1\r\nhost: sim\r\n\
        transfer-encoding: chunked\r\nconnection: close\r\n\r\n10000\r\n"
        .to_vec();
    chunked.extend(vec![b' '; 64 * 1024]);
    chunked.extend(b"\r\n1\r\n{\r\n");
    let answer = up.raw(&chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(up.get("/api/v1/games/g-1008/odds").await.body, before);

    // Exactly the limit is fine.
    let status = r#"{"status": "final"}"#;
    let exact = format!("{status}{}", " ".repeat(64 * 1024 - status.len()));
    let answer = up.write(Method::PUT, "/api/v1/games/g-1008", &exact).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["status"], "final");
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let up = Upstream::start().await;
    let cases = [
        (
            Method::DELETE,
            "/api/v1/games/g-1001/odds",
            "GET, HEAD, PUT, PATCH, POST",
        ),
        (Method::GET, "/api/v1/games/g-1001", "PUT, PATCH, POST"),
        (Method::POST, "/api/v1/sports", "GET, HEAD"),
        (Method::PUT, "/api/v1/games", "GET, HEAD"),
        (Method::OPTIONS, "/api/v1/sidebar/soccer/epl", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let answer = up.send(method.clone(), path, &[], empty()).await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(answer.header("allow"), allow, "{method} {path}");
        assert_eq!(answer.json(), json!({"error": "method not allowed"}));
    }
}

#[tokio::test]
async fn every_request_is_counted() {
    let up = Upstream::start().await;
    assert_eq!(up.sim.requests_served(), 0);
    let etag = up.get("/api/v1/sports").await.header("etag").to_owned();
    up.send(
        Method::GET,
        "/api/v1/sports",
        &[("if-none-match", &etag)],
        empty(),
    )
    .await;
    up.get("/nowhere").await;
    up.send(Method::DELETE, "/api/v1/games", &[], empty()).await;
    up.write(Method::PUT, "/api/v1/games/g-1001", "{").await;
    assert_eq!(up.sim.requests_served(), 5);
}
