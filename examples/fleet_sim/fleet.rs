//! The sidecar processes: their config, their start and stop, the HTTP
//! client that talks to their proxy and admin ports, and the fleet-wide
//! sums of their metrics.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use oddscache::config::SHIPPED;

use super::Opts;

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One `oddscache` process, killed on drop.
pub struct Sidecar {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped config, in cluster mode on `seeds`.
pub fn config_file(opts: &Opts, i: usize, seeds: &[String]) -> PathBuf {
    let mut cfg: toml::Table = toml::from_str(SHIPPED).expect("the shipped config parses");
    let redis = cfg
        .entry("redis")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[redis] is a table");
    redis.insert("mode".into(), "cluster".into());
    redis.insert(
        "urls".into(),
        toml::Value::Array(seeds.iter().map(|s| s.as_str().into()).collect()),
    );
    let path = opts.logs.join(format!("fleet-sidecar-{i}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).expect("config renders")).expect("write config");
    path
}

pub fn spawn_sidecar(opts: &Opts, i: usize, upstream: SocketAddr) -> Sidecar {
    let mut seeds = opts.nodes.clone();
    seeds.rotate_left(i % opts.nodes.len());
    let config = config_file(opts, i, &seeds);
    let (proxy, admin) = (free_port(), free_port());
    let log = std::fs::File::create(opts.logs.join(format!("fleet-sidecar-{i}.log")))
        .expect("sidecar log file");
    let child = Command::new(&opts.bin)
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{proxy}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &format!("http://{upstream}")])
        .args(["--replica-id", &format!("s{i}")])
        .args(["--log-format", "json"])
        .env(
            "RUST_LOG",
            std::env::var("FLEET_RUST_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::from(log.try_clone().expect("log handle")))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", opts.bin.display()));
    Sidecar {
        child,
        proxy: ([127, 0, 0, 1], proxy).into(),
        admin: ([127, 0, 0, 1], admin).into(),
    }
}

#[derive(Clone)]
pub struct Http(pub Client<HttpConnector, Full<Bytes>>);

pub struct Reply {
    pub status: u16,
    pub x_cache: String,
    pub body: Bytes,
}

impl Http {
    pub fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Http(
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(64)
                // Well before the sidecars drop idle clients
                // (`proxy.header_read_timeout`, 30 s).
                .pool_idle_timeout(Duration::from_secs(5))
                .build(connector),
        )
    }

    pub async fn send(&self, method: Method, url: &str, body: &str) -> Option<Reply> {
        self.try_send(method, url, body)
            .await
            .inspect_err(|e| {
                static SHOWN: AtomicU64 = AtomicU64::new(0);
                if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("fleet: {url}: {e}");
                }
            })
            .ok()
    }

    pub async fn try_send(&self, method: Method, url: &str, body: &str) -> Result<Reply, String> {
        let req = Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let resp = self.0.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let x_cache = resp
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            x_cache,
            body,
        })
    }

    pub async fn get(&self, url: &str) -> Option<Reply> {
        self.send(Method::GET, url, "").await
    }
}

/// The fleet's `oddscache_invalidation_propagation_seconds` histogram,
/// summed over the sidecars: (upper bound, cumulative count).
pub async fn fleet_histogram(http: &Http, sidecars: &[Sidecar]) -> Vec<(f64, u64)> {
    let mut sum: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for s in sidecars {
        let Some(r) = http.get(&format!("http://{}/metrics", s.admin)).await else {
            continue;
        };
        for line in String::from_utf8_lossy(&r.body).lines() {
            let Some(rest) =
                line.strip_prefix("oddscache_invalidation_propagation_seconds_bucket{le=\"")
            else {
                continue;
            };
            let Some((le, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let count: u64 = count.trim().parse().unwrap_or(0);
            let e = sum.entry(le.to_bits()).or_insert((le, 0));
            e.1 += count;
        }
    }
    let mut v: Vec<(f64, u64)> = sum.into_values().collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// A counter or gauge summed over the sidecars' `/metrics`.
pub async fn fleet_sum(http: &Http, sidecars: &[Sidecar], metric: &str) -> f64 {
    let mut sum = 0.0;
    for s in sidecars {
        let Some(r) = http.get(&format!("http://{}/metrics", s.admin)).await else {
            continue;
        };
        for line in String::from_utf8_lossy(&r.body).lines() {
            if let Some(v) = line.strip_prefix(metric).and_then(|r| r.strip_prefix(' ')) {
                sum += v.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    sum
}

pub fn histogram_quantile(h: &[(f64, u64)], q: f64) -> f64 {
    let total = h.last().map_or(0, |b| b.1);
    let rank = (total as f64 * q).ceil() as u64;
    h.iter()
        .find(|b| b.1 >= rank)
        .map_or(f64::INFINITY, |b| b.0)
}
