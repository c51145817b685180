//! A throwaway 3-primary Redis Cluster on loopback, and a Sentinel set
//! (primary, replica, 3 sentinels), killed on drop: sets of
//! [`RedisServer`] processes.
//!
//! A missing `redis-server` or `redis-cli` is a loud failure, never a skip.
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::redis_server::{self, server_args, RedisServer};

/// How long a fresh cluster or sentinel set may take to settle.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A loopback port that is free, and whose cluster-bus port (+10000) is too.
fn free_port() -> u16 {
    loop {
        let port = redis_server::free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "oddscache-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("cannot create a scratch directory");
    dir
}

/// Three primaries, with `replicas` replicas each, all 16384 slots
/// assigned; a node missing for a second counts as failed.
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(0)
    }

    pub fn start_with(replicas: usize) -> Cluster {
        let dir = scratch_dir("cluster");
        let mut nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                let port = free_port();
                let mut args = server_args(port);
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "1000",
                        // A replica may always take over: the test kills
                        // primaries a few seconds after start.
                        "--cluster-replica-validity-factor",
                        "0",
                        "--cluster-config-file",
                        &dir.join(format!("nodes-{port}.conf")).to_string_lossy(),
                        "--dir",
                        &dir.to_string_lossy(),
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                );
                RedisServer::spawn(port, &args)
            })
            .collect();
        for n in &mut nodes {
            n.wait_ready(READY_WITHIN);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); it is not skipped"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster { nodes, dir };
        cluster.wait_ok();
        cluster
    }

    /// Every live node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            loop {
                let info = n
                    .cmd::<String>(redis::cmd("CLUSTER").arg("INFO"))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} never reached cluster_state:ok: {info}",
                    n.port()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Indexes of the nodes that are primaries now.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].is_running()
                    && self.nodes[i]
                        .cmd::<String>(redis::cmd("INFO").arg("replication"))
                        .is_ok_and(|info| info.contains("role:master"))
            })
            .collect()
    }

    /// Index of a live replica of the primary at `primary`.
    pub fn replica_of(&self, primary: usize) -> Option<usize> {
        let port = format!("master_port:{}", self.nodes[primary].port());
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i].is_running()
                && self.nodes[i]
                    .cmd::<String>(redis::cmd("INFO").arg("replication"))
                    .is_ok_and(|info| {
                        info.contains("role:slave") && info.lines().any(|l| l.trim() == port)
                    })
        })
    }

    /// A cluster-aware connection for the test's own reads.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .expect("valid seed urls")
            .get_async_connection()
            .await
            .expect("cannot connect to the test cluster")
    }

    /// Index of the node that owns `key`.
    pub fn owner(&self, key: &str) -> usize {
        let live = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a live node");
        let slot: i64 = live
            .cmd(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .expect("CLUSTER KEYSLOT");
        self.nodes
            .iter()
            .position(|n| {
                if !n.is_running() {
                    return false;
                }
                let ranges: Vec<(i64, i64)> = n
                    .cmd::<Vec<Vec<redis::Value>>>(redis::cmd("CLUSTER").arg("SLOTS"))
                    .expect("CLUSTER SLOTS")
                    .into_iter()
                    .filter(|r| owner_port(r) == Some(i64::from(n.port())))
                    .filter_map(|r| match (&r[0], &r[1]) {
                        (redis::Value::Int(a), redis::Value::Int(b)) => Some((*a, *b)),
                        _ => None,
                    })
                    .collect();
                ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .expect("a slot without an owner")
    }
}

fn owner_port(range: &[redis::Value]) -> Option<i64> {
    match range.get(2) {
        Some(redis::Value::Array(node)) => match node.get(1) {
            Some(redis::Value::Int(p)) => Some(*p),
            _ => None,
        },
        _ => None,
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "odds";

/// A primary, one replica and three sentinels (quorum 2) watching it with a
/// 1 s down-after, so a killed primary is replaced within a few seconds.
pub struct Sentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
    dir: PathBuf,
}

/// A plain server's arguments, its files (none) in `dir`.
fn server_in(port: u16, dir: &std::path::Path) -> Vec<String> {
    let mut args = server_args(port);
    args.extend(["--dir".into(), dir.to_string_lossy().into_owned()]);
    args
}

impl Sentinels {
    pub fn start() -> Sentinels {
        let dir = scratch_dir("sentinel");
        let p = free_port();
        let mut primary = RedisServer::spawn(p, &server_in(p, &dir));
        primary.wait_ready(READY_WITHIN);
        let r = free_port();
        let mut args = server_in(r, &dir);
        args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
        let mut replica = RedisServer::spawn(r, &args);
        replica.wait_ready(READY_WITHIN);
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                let conf = dir.join(format!("sentinel-{port}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {p} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n",
                        dir.display()
                    ),
                )
                .expect("cannot write a sentinel config");
                let mut n = RedisServer::spawn(
                    port,
                    &[conf.to_string_lossy().into_owned(), "--sentinel".into()],
                );
                n.wait_ready(READY_WITHIN);
                n
            })
            .collect();
        let set = Sentinels {
            primary,
            replica,
            sentinels,
            dir,
        };
        set.wait_settled();
        set
    }

    /// Every sentinel knows the replica and the two other sentinels, and
    /// the replica is in sync: a failover can happen.
    fn wait_settled(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let ready = self.sentinels.iter().all(|s| {
                let replicas: Vec<redis::Value> = s
                    .cmd(redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME))
                    .unwrap_or_default();
                let peers: Vec<redis::Value> = s
                    .cmd(redis::cmd("SENTINEL").arg("SENTINELS").arg(MASTER_NAME))
                    .unwrap_or_default();
                replicas.len() == 1 && peers.len() == 2
            });
            let info: String = self
                .replica
                .cmd(redis::cmd("INFO").arg("replication"))
                .unwrap_or_default();
            if ready && info.contains("master_link_status:up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel set never settled: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The primary's port as the first sentinel answering names it.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            s.cmd::<Option<(String, u16)>>(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(MASTER_NAME),
            )
            .ok()
            .flatten()
            .map(|(_, port)| port)
        })
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for n in &mut self.sentinels {
            n.kill();
        }
        self.primary.kill();
        self.replica.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
