//! A throwaway 3-primary Redis Cluster on loopback, and a Sentinel set
//! (primary, replica, 3 sentinels), killed on drop.
//!
//! A missing `redis-server` or `redis-cli` is a loud failure, never a skip.
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh cluster or sentinel set may take to settle.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A loopback port that is free, and whose cluster-bus port (+10000) is too.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot find a free loopback port")
            .port();
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

/// One `redis-server` (or sentinel) process, killed on drop.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
}

impl Node {
    fn spawn(port: u16, args: &[String]) -> Node {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need it on PATH \
                     (apt-get install redis-server); they are not skipped"
                )
            });
        Node {
            child: Some(child),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis url")
    }

    /// Blocking, for set-up: one command on this node alone.
    pub fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut c = self
            .client()
            .get_connection_with_timeout(Duration::from_millis(500))?;
        cmd.query(&mut c)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_ping(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("cannot poll redis-server"))
            {
                panic!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                );
            }
            let pong = self.cmd::<String>(&redis::cmd("PING"));
            if matches!(pong.as_deref(), Ok("PONG")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "port {} did not answer PING: {pong:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three primaries, with `replicas` replicas each, all 16384 slots
/// assigned; a node missing for a second counts as failed.
pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(0)
    }

    pub fn start_with(replicas: usize) -> Cluster {
        let dir = scratch_dir("cluster");
        let mut nodes: Vec<Node> = (0..3 * (1 + replicas))
            .map(|_| {
                let port = free_port();
                let args: Vec<String> = [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
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
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                Node::spawn(port, &args)
            })
            .collect();
        for n in &mut nodes {
            n.wait_ping();
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
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
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
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
                    n.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Indexes of the nodes that are primaries now.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].child.is_some()
                    && self.nodes[i]
                        .cmd::<String>(redis::cmd("INFO").arg("replication"))
                        .is_ok_and(|info| info.contains("role:master"))
            })
            .collect()
    }

    /// Index of a live replica of the primary at `primary`.
    pub fn replica_of(&self, primary: usize) -> Option<usize> {
        let port = format!("master_port:{}", self.nodes[primary].port);
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i].child.is_some()
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
            .find(|n| n.child.is_some())
            .expect("a live node");
        let slot: i64 = live
            .cmd(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .expect("CLUSTER KEYSLOT");
        self.nodes
            .iter()
            .position(|n| {
                if n.child.is_none() {
                    return false;
                }
                let ranges: Vec<(i64, i64)> = n
                    .cmd::<Vec<Vec<redis::Value>>>(redis::cmd("CLUSTER").arg("SLOTS"))
                    .expect("CLUSTER SLOTS")
                    .into_iter()
                    .filter(|r| owner_port(r) == Some(i64::from(n.port)))
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
    pub primary: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    dir: PathBuf,
}

fn server_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.to_string_lossy(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Sentinels {
    pub fn start() -> Sentinels {
        let dir = scratch_dir("sentinel");
        let p = free_port();
        let mut primary = Node::spawn(p, &server_args(p, &dir));
        primary.wait_ping();
        let r = free_port();
        let mut args = server_args(r, &dir);
        args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
        let mut replica = Node::spawn(r, &args);
        replica.wait_ping();
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
                let mut n = Node::spawn(
                    port,
                    &[conf.to_string_lossy().into_owned(), "--sentinel".into()],
                );
                n.wait_ping();
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
        self.sentinels.iter().map(Node::url).collect()
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
