//! Change-hint figures (SPEC §8) on loopback, printed as tables:
//!
//! - across replicas: an invalidation asked of replica A until the SSE
//!   hint is read by a client of replica B, through a real Redis event log
//!   (p50/p99/max over `CHANGES`, default 500);
//! - idle streams: the RSS a release sidecar (a child process) adds for
//!   `CLIENTS` (default 10,000) open SSE streams, per stream;
//! - fan-out: the sidecar's CPU time (utime + stime from `/proc`) to
//!   deliver one hint to every one of those streams, over `BROADCASTS`
//!   (default 50) hints, and how long the last client waited.
//!
//! Run: `cargo build --release && cargo run --release --example
//! push_figures`. It starts its own `redis-server` on a free port, and the
//! sidecar from `target/release/oddscache` (or `$ODDSCACHE`); both stop
//! when it ends. Needs `ulimit -n` above `CLIENTS` + a few hundred.

// The tests' Redis process type; this example uses part of it.
#[allow(dead_code)]
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use oddscache::config::{Config, Overrides, SHIPPED};
use oddscache::demo::{SimConfig, Simulator};
use oddscache::{shutdown, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use redis_server::RedisServer;

const TOKEN: &str = "figures";
const PATH: &str = "/_oddscache/changes";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let upstream = start_sim().await;
    across_replicas(&upstream, env_or("CHANGES", 500)).await;
    idle_and_fanout(
        &upstream,
        env_or("CLIENTS", 10_000),
        env_or("BROADCASTS", 50),
    )
    .await;
}

async fn start_sim() -> String {
    let sim = Simulator::new(SimConfig {
        tick: Duration::ZERO,
        ..SimConfig::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (trigger, signal) = shutdown::channel();
    std::mem::forget(trigger); // runs until the process ends
    tokio::spawn(oddscache::demo::serve(sim, listener, signal));
    url
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn invalidate(http: &Http, admin: SocketAddr, game: &str) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{admin}/api/v1/shared/cache/invalidate"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(format!(
            r#"{{"game_id": "{game}"}}"#
        ))))
        .unwrap();
    let resp = http.request(req).await.expect("admin POST");
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await;
}

/// An in-process replica with an admin port.
async fn replica(upstream: &str, redis: &str, name: &str) -> (SocketAddr, SocketAddr) {
    let mut config = Config::from_toml(
        SHIPPED,
        &Overrides {
            upstream: Some(upstream.into()),
            redis_url: Some(redis.into()),
            replica_id: Some(name.into()),
            admin_token: Some(TOKEN.into()),
            ..Overrides::default()
        },
    )
    .unwrap();
    config.admin.mutations_per_second = 1_000_000;
    let sidecar = oddscache::Sidecar::new(config).unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
    tokio::spawn(sidecar.serve(
        Listeners {
            proxy,
            admin: Some(admin),
        },
        std::future::pending(),
    ));
    addrs
}

/// Reads an SSE response body until `n` hints (`id:` lines) have arrived.
struct Hints {
    body: hyper::body::Incoming,
    carry: Vec<u8>,
}

impl Hints {
    async fn open(addr: SocketAddr) -> Hints {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(PATH)
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        Hints {
            body: resp.into_body(),
            carry: Vec::new(),
        }
    }

    /// Waits for the next hint.
    async fn next(&mut self) {
        loop {
            if let Some(at) = find(&self.carry, b"\nevent: ") {
                self.carry.drain(..at + 8);
                return;
            }
            let frame = self.body.frame().await.expect("open").expect("frame");
            if let Ok(data) = frame.into_data() {
                self.carry.extend_from_slice(&data);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn across_replicas(upstream: &str, changes: usize) {
    let redis = RedisServer::start();
    let (_, admin_a) = replica(upstream, &redis.url(), "a").await;
    let (proxy_b, _) = replica(upstream, &redis.url(), "b").await;
    redis.wait_fleet_connected(2).await;
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let mut hints = Hints::open(proxy_b).await;
    // Warm both paths.
    for i in 0..20 {
        invalidate(&http, admin_a, &format!("g-warm-{i}")).await;
        hints.next().await;
    }
    let mut took = Vec::with_capacity(changes);
    for i in 0..changes {
        let began = Instant::now();
        let post = {
            let http = http.clone();
            let game = format!("g-{}", 1001 + i % 36);
            tokio::spawn(async move { invalidate(&http, admin_a, &game).await })
        };
        hints.next().await;
        took.push(began.elapsed());
        post.await.unwrap();
    }
    took.sort();
    println!("## A change asked of replica A, until a client of replica B reads its hint\n");
    println!("| changes | p50 ms | p99 ms | max ms | goal p99 |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {changes} | {} | {} | {} | ≤ 5 ms |\n",
        ms(percentile(&took, 0.50)),
        ms(percentile(&took, 0.99)),
        ms(*took.last().unwrap())
    );
}

/// VmRSS of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's closing parenthesis: state is field 3, utime 14.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// The child sidecar and its config file, both gone on drop.
struct Sidecar(Child, std::path::PathBuf);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// The release sidecar as a child process, up and warm.
async fn child(upstream: &str, clients: usize) -> (Sidecar, SocketAddr, SocketAddr) {
    let bin = std::env::var("ODDSCACHE").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/oddscache").to_string()
    });
    let (proxy_port, admin_port) = (free_port(), free_port());
    let config = std::env::temp_dir().join(format!(
        "push-figures-{}-{proxy_port}.toml",
        std::process::id()
    ));
    let text = SHIPPED
        .replace(
            "max_connections = 10000 ",
            &format!("max_connections = {} ", clients + 100),
        )
        .replace(
            "max_clients = 10000 ",
            &format!("max_clients = {} ", clients),
        )
        .replace(
            "mutations_per_second = 10 ",
            "mutations_per_second = 100000 ",
        );
    std::fs::write(&config, text).unwrap();
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{proxy_port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args(["--upstream", upstream])
        .env("ODDSCACHE_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}; run cargo build --release"));
    let sidecar = Sidecar(child, config);
    let proxy: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(proxy).await.is_err() {
        assert!(Instant::now() < deadline, "the sidecar did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm: a few requests and hints through an SSE stream.
    {
        let mut warm = Hints::open(proxy).await;
        for i in 0..10 {
            invalidate(&http, admin, &format!("g-warm-{i}")).await;
            get_text(&http, &format!("http://{proxy}/api/v1/sports")).await;
            warm.next().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (sidecar, proxy, admin)
}

/// What `clients` idle keep-alive connections cost after one hit each:
/// hyper's part of an idle stream, for reference.
async fn idle_keep_alive(upstream: &str, clients: usize) -> (u64, u64) {
    let (sidecar, proxy, _) = child(upstream, clients).await;
    let pid = sidecar.0.id();
    let before = rss(pid);
    let mut held = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut tcp = TcpStream::connect(proxy).await.expect("connect");
        tcp.write_all(b"GET /api/v1/sports HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        // The whole answer (its length is in the head).
        loop {
            let n = tcp.read(&mut buf[got..]).await.unwrap();
            assert!(n > 0, "closed");
            got += n;
            let text = String::from_utf8_lossy(&buf[..got]);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
        held.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (before, rss(pid))
}

async fn idle_and_fanout(upstream: &str, clients: usize, broadcasts: usize) {
    let (ka_before, ka_after) = idle_keep_alive(upstream, clients).await;
    let (sidecar, proxy, admin) = child(upstream, clients).await;
    let pid = sidecar.0.id();
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let before = rss(pid);

    // Idle streams: raw sockets, one task each, counting hints.
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut tcp = TcpStream::connect(proxy).await.expect("connect");
        tcp.write_all(format!("GET {PATH} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let received = Arc::clone(&received);
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut tail = Vec::new();
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        tail.extend_from_slice(&buf[..n]);
                        let mut at = 0;
                        while let Some(i) = find(&tail[at..], b"\nevent: ") {
                            received.fetch_add(1, Ordering::Relaxed);
                            at += i + 8;
                        }
                        tail.drain(..at.max(tail.len().saturating_sub(8)));
                    }
                }
            }
        }));
    }
    // Every stream counted by the sidecar.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = get_text(&http, &format!("http://{admin}/metrics")).await;
        let open = text
            .lines()
            .find_map(|l| l.strip_prefix("oddscache_push_clients "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if open >= clients {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {open} of {clients} streams opened"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss(pid);
    println!("## {clients} idle SSE streams on one sidecar (release build, child process)\n");
    println!("| connections | RSS before | RSS after | added | per connection | goal |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let row = |what: &str, before: u64, after: u64, goal: &str| {
        let added = after.saturating_sub(before);
        println!(
            "| {clients} {what} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} KiB | {goal} |",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            added as f64 / 1048576.0,
            added as f64 / 1024.0 / clients as f64
        );
    };
    row("SSE streams", before, after, "≤ 60 MiB, ≤ 6 KiB each");
    row(
        "idle keep-alive connections after one hit (reference)",
        ka_before,
        ka_after,
        "",
    );
    println!();

    // Fan-out: each hint to every stream; the sidecar's CPU for it.
    let cpu_before = cpu_seconds(pid);
    let mut waits = Vec::with_capacity(broadcasts);
    for b in 0..broadcasts {
        let want = ((b + 1) * clients) as u64;
        let began = Instant::now();
        invalidate(&http, admin, &format!("g-{}", 1001 + b % 36)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.load(Ordering::Relaxed) < want {
            assert!(
                Instant::now() < deadline,
                "a hint did not reach every stream"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        waits.push(began.elapsed());
    }
    let cpu = cpu_seconds(pid) - cpu_before;
    waits.sort();
    println!("## One hint to all {clients} streams\n");
    println!("| hints | sidecar CPU per hint | per stream | last stream reached, p50 | p99 |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {broadcasts} | {:.2} ms | {:.2} µs | {} ms | {} ms |",
        cpu * 1000.0 / broadcasts as f64,
        cpu * 1e6 / (broadcasts * clients) as f64,
        ms(percentile(&waits, 0.5)),
        ms(percentile(&waits, 0.99))
    );
    drop(sidecar);
    for t in tasks {
        t.abort();
    }
}

async fn get_text(http: &Http, url: &str) -> String {
    let req = Request::builder()
        .uri(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = http.request(req).await.expect("GET");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}
