//! In a real browser: headless Chromium (Debian's `chromium`), driven over
//! the DevTools protocol, loads the demo's example page and the admin
//! port's live page, and the tests read what they show from the DOM.
//!
//! Screenshots go to `target/screenshots/`; with
//! `ODDSCACHE_SCREENSHOTS=docs` they go to `docs/`, where README links
//! them.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use oddscache::config::{Config, Overrides};
use oddscache::shutdown;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::client::Client;
use common::sidecar::{shipped_config, Sidecar};
use common::sim::{other_status as changed, SimUpstream};

/// Page loads, scripts and a few polls of the admin page fit in this.
const WITHIN: Duration = Duration::from_secs(20);
const TOKEN: &str = "browser-test-token";

/// Chromium, headless, with its own profile, killed on drop.
struct Chromium {
    child: Child,
    profile: PathBuf,
    devtools: String,
}

impl Chromium {
    async fn start() -> Chromium {
        let profile = std::env::temp_dir().join(format!(
            "oddscache-chromium-{}-{:x}",
            std::process::id(),
            rand_u64()
        ));
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--window-size=1280,860",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start `chromium`: install it (apt-get install chromium; .ci/run does)");
        // Its stderr is read to the end on a thread of its own, so it never
        // blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (found, devtools) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut found = Some(found);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = found.take() {
                        let _ = tx.send(url.trim().to_string());
                    }
                }
            }
        });
        let devtools = tokio::time::timeout(WITHIN, devtools)
            .await
            .expect("chromium printed no DevTools endpoint in time")
            .expect("chromium exited without a DevTools endpoint");
        Chromium {
            child,
            profile,
            devtools,
        }
    }

    async fn connect(&self) -> Cdp {
        let authority = self
            .devtools
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("a ws:// URL");
        let tcp = TcpStream::connect(authority).await.expect("DevTools port");
        let (ws, _) = tokio_tungstenite::client_async(self.devtools.as_str(), tcp)
            .await
            .expect("DevTools handshake");
        Cdp { ws, next_id: 0 }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// A DevTools protocol client on the browser's endpoint.
struct Cdp {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
}

impl Cdp {
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .expect("DevTools send");
        loop {
            let reply = tokio::time::timeout(WITHIN, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools open")
                .expect("DevTools message");
            let Message::Text(text) = reply else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab; answers the session to drive it with.
    async fn open(&mut self, url: &str) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_string()
    }

    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let r = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy; answers its value.
    async fn wait_for(&mut self, session: &str, expression: &str, what: &str) -> Value {
        let deadline = Instant::now() + WITHIN;
        loop {
            let v = self.eval(session, expression).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the page, to `target/screenshots/` or, with
    /// `ODDSCACHE_SCREENSHOTS=docs`, to `docs/`.
    async fn screenshot(&mut self, session: &str, name: &str) -> PathBuf {
        let shot = self
            .call(
                Some(session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        let png = data_encoding::BASE64
            .decode(shot["data"].as_str().expect("base64 data").as_bytes())
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = match std::env::var("ODDSCACHE_SCREENSHOTS").as_deref() {
            Ok("docs") => root.join("docs"),
            _ => root.join("target").join("screenshots"),
        };
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

use futures_util::{SinkExt, StreamExt};

fn config(upstream: &str, page_origin: Option<&str>) -> Config {
    let mut c = shipped_config(
        |text| text,
        Overrides {
            upstream: Some(upstream.into()),
            admin_token: Some(TOKEN.into()),
            ..Overrides::default()
        },
    );
    if let Some(origin) = page_origin {
        c.push.as_mut().unwrap().allow_origins = vec![origin.into()];
    }
    c.admin.mutations_per_second = 1000;
    c
}

/// The demo's example page subscribes to change hints; a status change
/// that passes through the sidecar reaches it as a hint, and the page
/// refetches the game and shows its new status.
#[tokio::test(flavor = "multi_thread")]
async fn the_example_page_refetches_a_game_when_its_hint_arrives() {
    let up = SimUpstream::start().await;
    let (sim, upstream) = (&up.sim, up.url());
    let page_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let sidecar = Sidecar::start(config(&upstream, Some(&page_origin))).await;
    let base = format!("http://{}", sidecar.addr);
    let (_stop_page, page_signal) = shutdown::channel();
    tokio::spawn(oddscache::demo::page::serve(
        page_listener,
        oddscache::demo::page::render(&base, "/_oddscache/changes"),
        page_signal,
    ));

    let chromium = Chromium::start().await;
    let mut cdp = chromium.connect().await;
    let tab = cdp.open(&format!("{page_origin}/")).await;
    cdp.wait_for(
        &tab,
        "document.getElementById('state').textContent.includes('subscribed')",
        "its change stream open",
    )
    .await;
    let shown = cdp
        .wait_for(
            &tab,
            "[...document.querySelectorAll('#games tr')].map(tr => [tr.dataset.game, tr.querySelector('.status').textContent])",
            "the games",
        )
        .await;
    let shown = shown.as_array().expect("rows");
    assert!(shown.len() >= 3, "{shown:?}");
    let http = Client::new();
    // Three games change; each is revealed by a body through the sidecar.
    let mut expect = Vec::new();
    for row in &shown[..3] {
        let (game, old) = (row[0].as_str().unwrap(), row[1].as_str().unwrap());
        let new = changed(old);
        assert!(sim.set_status(game, new));
        let seen = http.get(&format!("{base}/api/v1/games/{game}/odds")).await;
        assert_eq!(seen.json()["status"], new);
        expect.push((game.to_string(), new));
    }
    for (game, new) in &expect {
        let status = cdp
            .wait_for(
                &tab,
                &format!(
                    "(() => {{ const s = document.querySelector('tr[data-game=\"{game}\"] .status').textContent; return s === '{new}' ? s : null; }})()"
                ),
                &format!("{game}'s new status {new}"),
            )
            .await;
        assert_eq!(status, *new);
    }
    let log = cdp
        .eval(
            &tab,
            "[...document.querySelectorAll('#log li')].map(li => li.textContent)",
        )
        .await;
    let log: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for (game, new) in &expect {
        assert!(
            log.iter()
                .any(|l| l.contains(game.as_str()) && l.contains(&format!("refetched: {new}"))),
            "no hint for {game} in {log:?}"
        );
    }
    let shot = cdp.screenshot(&tab, "push-demo.png").await;
    assert!(std::fs::metadata(shot).unwrap().len() > 10_000);
}

/// The admin port's live page fills its events table from the journal and
/// the live stream, and draws its chart of invalidations per minute.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_page_shows_events_live_and_draws_its_chart() {
    let up = SimUpstream::start().await;
    let sidecar = Sidecar::start(config(&up.url(), None)).await;
    let admin = sidecar.admin;
    let http = Client::new();
    let invalidate = |game: String| {
        let http = &http;
        async move {
            let r = http
                .send(
                    Method::POST,
                    &format!("http://{admin}/api/v1/shared/cache/invalidate"),
                    &[("authorization", &format!("Bearer {TOKEN}"))],
                    format!(r#"{{"game_id": "{game}"}}"#),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["id"].as_str().unwrap().to_string()
        }
    };
    for i in 1..=5 {
        invalidate(format!("g-100{i}")).await;
    }
    // Some traffic, so the tiles have something to say.
    for _ in 0..3 {
        http.get(&sidecar.url("/api/v1/games/g-1001/odds")).await;
    }

    let chromium = Chromium::start().await;
    let mut cdp = chromium.connect().await;
    let tab = cdp.open(&format!("http://{admin}/")).await;
    cdp.wait_for(
        &tab,
        "document.querySelectorAll('#events tr').length >= 5",
        "the recent events",
    )
    .await;
    cdp.wait_for(
        &tab,
        "document.getElementById('stream-state').textContent.includes('live')",
        "its event stream open",
    )
    .await;
    let live = invalidate("g-1009".into()).await;
    cdp.wait_for(
        &tab,
        &format!("document.querySelector('tr[data-id=\"{live}\"]') !== null"),
        "the live event",
    )
    .await;
    let points = cdp
        .wait_for(
            &tab,
            "Number(document.getElementById('chart').dataset.points || 0) >= 2 && document.getElementById('chart').dataset.points",
            "a chart of two polls",
        )
        .await;
    assert!(points.as_str().unwrap().parse::<u32>().unwrap() >= 2);
    cdp.wait_for(
        &tab,
        "document.getElementById('total').textContent === '6'",
        "six invalidations in its tile",
    )
    .await;
    let tiles = cdp
        .eval(
            &tab,
            "[document.getElementById('hit-ratio').textContent, document.getElementById('upstream').textContent, document.getElementById('redis').textContent, document.getElementById('total').textContent]",
        )
        .await;
    assert_eq!(tiles[0], "66.7%", "{tiles}");
    assert_eq!(tiles[1], "ready");
    assert_eq!(tiles[2], "disabled");
    assert_eq!(tiles[3], "6");
    let shot = cdp.screenshot(&tab, "admin-page.png").await;
    assert!(std::fs::metadata(shot).unwrap().len() > 10_000);
}
