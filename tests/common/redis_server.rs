//! A throwaway `redis-server` on a free loopback port, killed on drop: the
//! one Redis process type. A plain server starts with [`RedisServer::start`];
//! the cluster and sentinel sets in `redis_cluster.rs` spawn theirs with
//! their own arguments through [`RedisServer::spawn`].
//!
//! A missing `redis-server` is a loud failure, never a skip: these tests
//! are the only proof that the fleet works.

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oddscache::invalidate::wire::Kind;

/// The key of the fleet's event log.
pub const EVENTS: &str = "oddscache:events";

/// How long a fresh server may take to answer PING.
pub const READY_WITHIN: Duration = Duration::from_secs(10);

/// One `redis-server` (or sentinel) process; `kill` or drop stops it.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

/// A loopback port the OS says is free.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free loopback port")
        .port()
}

/// The arguments every test server starts with: `port` on loopback, and
/// nothing written to disk.
pub fn server_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl RedisServer {
    /// Starts a server on a port the OS says is free.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts a server on `port`, e.g. again after killing one.
    pub fn start_on(port: u16) -> RedisServer {
        let mut server = RedisServer::spawn(port, &server_args(port));
        server.wait_ready(READY_WITHIN);
        server
    }

    /// Runs `redis-server` with `args` (which say `port`), without waiting
    /// for it: see [`RedisServer::wait_ready`].
    pub fn spawn(port: u16, args: &[String]) -> RedisServer {
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
        RedisServer {
            child: Some(child),
            port,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis url")
    }

    /// An async connection for inspecting what the sidecars wrote.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("cannot connect to the test Redis")
    }

    /// Stalls every client for `d` (`CLIENT PAUSE … ALL`): the server is
    /// up, and answers nothing until then.
    pub async fn pause(&self, d: Duration) {
        let mut c = self.conn().await;
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(d.as_millis() as u64)
            .arg("ALL")
            .query_async(&mut c)
            .await
            .expect("CLIENT PAUSE");
    }

    /// Every invalidation message in the event log (`oddscache:events`),
    /// oldest first.
    pub async fn log(&self) -> Vec<oddscache::invalidate::wire::Message> {
        let mut c = self.conn().await;
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(EVENTS)
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .expect("XRANGE the event log");
        log_messages(reply)
    }

    /// The games of the invalidations `replica` appended to the event log,
    /// as this server holds it now (a replica or a cluster node answers for
    /// its own copy). Blocking.
    pub fn logged_games(&self, replica: &str) -> HashSet<String> {
        let reply: redis::Value = self
            .cmd(redis::cmd("XRANGE").arg(EVENTS).arg("-").arg("+"))
            .unwrap_or_else(|e| panic!("XRANGE {EVENTS} on port {}: {e}", self.port));
        log_messages(reply)
            .into_iter()
            .filter(|m| m.kind == Kind::Invalidate && m.event.replica == replica)
            .filter_map(|m| m.event.game_id)
            .collect()
    }

    /// Readiness probe: `n` replicas hold their command connection and are
    /// reading the event log (a client blocked in `XREAD`), bounded by
    /// `READY_WITHIN`.
    pub async fn wait_fleet_connected(&self, n: usize) {
        let mut c = self.conn().await;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut c)
                .await
                .expect("CLIENT LIST");
            let readers = readers_in(&clients);
            // Our own connection plus two per replica.
            let others = clients.lines().count().saturating_sub(1);
            if readers >= n && others >= 2 * n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the fleet did not connect to Redis: {readers} log readers, {others} clients, want {n} replicas"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Blocking, for set-up: one command on this server alone.
    pub fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut c = self
            .client()
            .get_connection_with_timeout(Duration::from_millis(500))?;
        cmd.query(&mut c)
    }

    /// Whether the process is still there (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the process now; the port refuses afterwards.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Readiness probe: polls PING until `within`.
    pub fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
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
                "redis-server on port {} did not answer PING within {within:?}: {pong:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Clients of a `CLIENT LIST` reply that are reading the event log: their
/// last command is a blocking `XREAD`.
pub fn readers_in(client_list: &str) -> usize {
    client_list
        .lines()
        .filter(|l| l.split(' ').any(|f| f == "cmd=xread"))
        .count()
}

/// The invalidation messages of an `XRANGE` reply on the event log, in
/// order; markers (no `m` field) are left out. Panics on anything else: a
/// test reading the log wants to know.
pub fn log_messages(reply: redis::Value) -> Vec<oddscache::invalidate::wire::Message> {
    let redis::Value::Array(entries) = reply else {
        panic!("XRANGE answered {reply:?}");
    };
    entries
        .iter()
        .filter_map(|entry| {
            let redis::Value::Array(parts) = entry else {
                panic!("a log entry that is not [id, fields]: {entry:?}");
            };
            let Some(redis::Value::Array(fields)) = parts.get(1) else {
                panic!("a log entry without fields: {entry:?}");
            };
            fields.chunks(2).find_map(|kv| match kv {
                [redis::Value::BulkString(f), redis::Value::BulkString(v)] if f == b"m" => {
                    Some(oddscache::invalidate::wire::decode(v).unwrap_or_else(|e| {
                        panic!("a log entry that does not decode ({e}): {entry:?}")
                    }))
                }
                _ => None,
            })
        })
        .collect()
}
