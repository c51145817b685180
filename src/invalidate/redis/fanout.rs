//! The fan-out (SPEC §6): the fleet's event log, the Redis stream
//! `{prefix}events`, written through an outbox and read by every replica.
//!
//! - **Writing.** An invalidation is queued in the [`Outbox`], in order. One
//!   task drains it: it deletes the event's Redis keys, appends the event
//!   (`XADD … MAXLEN ~ events_max_len`) and, with Sentinel or Cluster,
//!   waits for one replica to acknowledge it (`WAIT 1`), so a failover
//!   does not lose it. Only then is the event taken off the queue. While
//!   Redis cannot take it (down, failing over, slow) it stays queued and is
//!   retried every [`RETRY_EVERY`], so an event is appended within that of
//!   Redis answering again. A queue that overflows `outbox_capacity` is
//!   replaced by one `resync` event, which every replica applies as a
//!   flush of its tagged entries.
//! - **Reading.** Each replica reads the log with `XREAD BLOCK` from the
//!   last entry it applied, on a connection of its own. The blocking read
//!   returns at least every [`BLOCK`], so it doubles as the connection's
//!   heartbeat: a reply that has not come `liveness_timeout` after it was
//!   due means the flow is dead (a blackholed flow gets no RST), and the
//!   connection is made again. After any reconnection the replica goes on
//!   from its last entry, so it replays in order what it missed; only when
//!   that entry is gone from the log (trimmed away, or the stream lost in a
//!   restart or failover) does it resync: it drops its L1 entries
//!   and its known game states.
//! - **Where the log lives.** One key, so one slot in a cluster: the reader
//!   connects to a seed and follows `ROLE` (a replica names its primary)
//!   and `MOVED` to the primary that owns the slot, and follows it again
//!   whenever a read says the slot moved or the owner stops answering.
//!   Sentinel mode reads from the primary the sentinels name, and checks
//!   every [`ROLE_EVERY`] that it still is one.
//! - **Confirmation.** The reader writes the id of the last entry it
//!   applied to `{prefix}replica:{replica_id}` every second (expiring after
//!   [`REPLICA_TTL`]), so the admin port can show who is behind.
//!
//! The writer lives in `outbox`, the reader in `reader`; this file holds
//! what both use: finding the log's owner, the connections to it, and the
//! parsing of Redis' replies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::Notify;

use super::{Backend, RedisError, RedisTier};

mod outbox;
mod reader;
use crate::invalidate::{wire, Invalidator};
use crate::shutdown;
pub use outbox::{Outbox, Pending};
use reader::Reader;

/// Hops followed to find the log's owner: a replica to its primary, then a
/// `MOVED`, and one more for a slot moving meanwhile.
const MAX_REDIRECTS: usize = 3;
/// How long one blocking read waits for new entries at most: the log's
/// heartbeat, and how often the replica's confirmation is refreshed.
pub const BLOCK: Duration = Duration::from_millis(1000);
/// Entries read at once.
const READ_COUNT: usize = 512;
/// How often a queued event is tried again while Redis cannot take it.
pub const RETRY_EVERY: Duration = Duration::from_millis(100);
/// How often the sentinel-mode reader checks that its node is a primary.
const ROLE_EVERY: Duration = Duration::from_secs(2);
/// `{prefix}replica:{id}` expires this long after its last refresh.
pub const REPLICA_TTL: Duration = Duration::from_secs(30);
/// `WAIT 1` asked this many times (a fifth of `command_timeout` each)
/// before an event no replica acknowledged is taken as delivered anyway.
const WAIT_TRIES: usize = 5;
/// What queued events get to reach the log once the sidecar is stopping.
pub(super) const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Where an event is appended and waited for.
enum LogConn {
    /// The command connection (one server, or the sentinels' primary).
    Shared(super::Conn),
    /// A cluster: the log's owner.
    Owner(MultiplexedConnection),
}

/// Whether Redis refused a command for good: retrying it cannot help.
fn permanent(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match e {
        RedisError::Redis(e) => matches!(
            e.kind(),
            ErrorKind::Extension
                | ErrorKind::UnexpectedReturnType
                | ErrorKind::Parse
                | ErrorKind::Server(
                    ServerErrorKind::ResponseError
                        | ServerErrorKind::CrossSlot
                        | ServerErrorKind::NoPerm
                        | ServerErrorKind::ExecAbort
                )
        ),
        RedisError::Decode(_) => true,
        RedisError::NotConnected | RedisError::Timeout(_) => false,
    }
}

/// What `ROLE` says a node is.
#[derive(Debug, PartialEq)]
pub(super) enum Role {
    Primary,
    /// A replica, and the `host:port` of its primary.
    Replica(String),
    Other,
}

pub(super) fn role(reply: &Value) -> Role {
    let Value::Array(items) = reply else {
        return Role::Other;
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(Value::SimpleString(s)) => Some(s.clone()),
        _ => None,
    };
    match text(items.first()).as_deref() {
        Some("master") => Role::Primary,
        Some("slave") => match (text(items.get(1)), items.get(2)) {
            (Some(host), Some(Value::Int(port))) => Role::Replica(format!("{host}:{port}")),
            _ => Role::Other,
        },
        _ => Role::Other,
    }
}

/// The client for node `host:port` (a `MOVED` address or a replica's
/// primary), on `seed`'s scheme and settings.
fn redirected(seed: &redis::Client, node: &str) -> Result<redis::Client, RedisError> {
    let bad = || RedisError::Decode(format!("unusable node address {node:?}"));
    let (host, port) = node.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let info = seed.get_connection_info().clone();
    let addr = match info.addr() {
        redis::ConnectionAddr::Tcp(..) => redis::ConnectionAddr::Tcp(host, port),
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => return Err(bad()),
    };
    Ok(redis::Client::open(info.set_addr(addr))?)
}

impl RedisTier {
    pub fn events_key(&self) -> String {
        format!("{}events", self.prefix)
    }

    pub fn replica_key(&self, replica: &str) -> String {
        format!("{}replica:{replica}", self.prefix)
    }

    /// Cluster mode: a connection to the primary that owns the log's slot,
    /// made on first use and after any failure.
    async fn log_writer(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut slot = self.writer.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let Backend::Cluster { seeds, .. } = &self.backend else {
            return Err(RedisError::NotConnected);
        };
        let mut last = RedisError::NotConnected;
        for seed in seeds {
            let within = self.timeout.max(Duration::from_millis(500));
            match tokio::time::timeout(within * 2, self.owner(seed.clone(), true, false, within))
                .await
            {
                Ok(Ok(reader)) => {
                    *slot = Some(reader.conn.clone());
                    return Ok(reader.conn);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = RedisError::Timeout(within * 2),
            }
        }
        Err(last)
    }

    async fn bounded(
        &self,
        conn: &mut super::Conn,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<Value, RedisError> {
        let result = match tokio::time::timeout(timeout, cmd.query_async::<Value>(conn)).await {
            Err(_) => Err(RedisError::Timeout(timeout)),
            Ok(r) => r.map_err(RedisError::from),
        };
        result.inspect_err(|e| self.failed(e))
    }

    /// A connection to the node that serves the log: in a cluster the
    /// primary owning its slot, found through `ROLE` and `MOVED`.
    async fn owner(
        &self,
        mut client: redis::Client,
        cluster: bool,
        sentinel: bool,
        within: Duration,
    ) -> Result<Reader, RedisError> {
        for _ in 0..=MAX_REDIRECTS {
            let info = client.get_connection_info().clone();
            let tcp = redis::io::tcp::TcpSettings::default()
                .set_nodelay(true)
                .set_keepalive(keepalive(self.liveness))
                .set_user_timeout(self.liveness);
            let client_here = redis::Client::open(info.set_tcp_settings(tcp))?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(within))
                .set_response_timeout(Some(BLOCK + self.liveness));
            let mut conn = client_here
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let node = client.get_connection_info().addr().to_string();
            if !cluster {
                return Ok(Reader {
                    conn,
                    node,
                    sentinel,
                    role_checked: Instant::now(),
                });
            }
            match role(&redis::cmd("ROLE").query_async::<Value>(&mut conn).await?) {
                Role::Primary => {}
                Role::Replica(primary) => {
                    client = redirected(&client, &primary)?;
                    continue;
                }
                Role::Other => {
                    return Err(RedisError::Decode(format!(
                        "{node} is neither a primary nor a replica"
                    )))
                }
            }
            let mut probe = redis::cmd("XLEN");
            probe.arg(self.events_key());
            match probe.query_async::<Value>(&mut conn).await {
                Ok(_) => {
                    return Ok(Reader {
                        conn,
                        node,
                        sentinel,
                        role_checked: Instant::now(),
                    })
                }
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved) => {
                    let (to, _slot) = e.redirect_node().ok_or_else(|| {
                        RedisError::Decode(format!("MOVED without an address: {e}"))
                    })?;
                    client = redirected(&client, to)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RedisError::Decode(format!(
            "the owner of {} kept moving ({MAX_REDIRECTS} redirections)",
            self.events_key()
        )))
    }
}

/// TCP keepalive probes that notice a dead peer within about `liveness`.
pub(super) fn keepalive(liveness: Duration) -> socket2::TcpKeepalive {
    let every = (liveness / 3).max(Duration::from_secs(1));
    socket2::TcpKeepalive::new()
        .with_time(every)
        .with_interval(every)
        .with_retries(3)
}

/// How many replicas a primary's `ROLE` reply lists; `None` for a reply
/// that is not a primary's.
fn replicas_of(reply: &Value) -> Option<usize> {
    match (role(reply), reply) {
        (Role::Primary, Value::Array(items)) => match items.get(2) {
            Some(Value::Array(replicas)) => Some(replicas.len()),
            _ => None,
        },
        _ => None,
    }
}

/// A stream id's two numbers, for ordering.
pub(super) fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The ids of a `XRANGE`/`XREVRANGE` reply.
pub(super) fn entry_ids(reply: &Value) -> Vec<String> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| match e {
            Value::Array(parts) => text(parts.first()?),
            _ => None,
        })
        .collect()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The entries of an `XREAD` reply on one stream: each id and its `m`
/// field's payload (`None` for a marker). RESP2 answers
/// `[[key, [[id, [f, v, ...]], ...]]]`; RESP3 a map of key to entries.
fn stream_entries(reply: &Value) -> Vec<(String, Option<Vec<u8>>)> {
    let entries = match reply {
        Value::Array(streams) => streams.first().and_then(|s| match s {
            Value::Array(kv) => kv.get(1),
            _ => None,
        }),
        Value::Map(streams) => streams.first().map(|(_, v)| v),
        _ => None,
    };
    let Some(Value::Array(entries)) = entries else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let Value::Array(parts) = e else { return None };
            let id = text(parts.first()?)?;
            let payload = match parts.get(1) {
                Some(Value::Array(fields)) => fields.chunks(2).find_map(|kv| match kv {
                    [Value::BulkString(f), Value::BulkString(v)] if f == b"m" => Some(v.clone()),
                    _ => None,
                }),
                _ => None,
            };
            Some((id, payload))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn role_tells_a_primary_from_a_replica_and_names_its_primary() {
        let primary = Value::Array(vec![bulk("master"), Value::Int(42), Value::Array(vec![])]);
        assert_eq!(role(&primary), Role::Primary);
        let replica = Value::Array(vec![
            bulk("slave"),
            bulk("127.0.0.1"),
            Value::Int(7001),
            bulk("connected"),
            Value::Int(42),
        ]);
        assert_eq!(role(&replica), Role::Replica("127.0.0.1:7001".into()));
        let sentinel = Value::Array(vec![bulk("sentinel"), Value::Array(vec![])]);
        assert_eq!(role(&sentinel), Role::Other);
        assert_eq!(role(&Value::Nil), Role::Other);
    }

    #[test]
    fn moved_addresses_keep_the_seed_settings() {
        let seed = redis::Client::open("redis://user:pw@10.0.0.1:7000/").unwrap();
        let owner = redirected(&seed, "10.0.0.2:7001").unwrap();
        let info = owner.get_connection_info();
        assert_eq!(info.addr().to_string(), "10.0.0.2:7001");
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert!(redirected(&seed, "nowhere").is_err());
        assert!(redirected(&seed, "host:port").is_err());
    }

    #[test]
    fn role_counts_a_primarys_replicas() {
        let none = Value::Array(vec![bulk("master"), Value::Int(1), Value::Array(vec![])]);
        assert_eq!(replicas_of(&none), Some(0));
        let one = Value::Array(vec![
            bulk("master"),
            Value::Int(1),
            Value::Array(vec![Value::Array(vec![
                bulk("127.0.0.1"),
                bulk("7001"),
                bulk("1"),
            ])]),
        ]);
        assert_eq!(replicas_of(&one), Some(1));
        let replica = Value::Array(vec![bulk("slave"), bulk("h"), Value::Int(1)]);
        assert_eq!(replicas_of(&replica), None);
    }

    #[test]
    fn stream_ids_order_by_both_numbers() {
        assert!(stream_id("10-2") > stream_id("10-1"));
        assert!(stream_id("11-0") > stream_id("10-99"));
        assert_eq!(stream_id("junk"), None);
    }

    #[test]
    fn permanent_errors_are_told_from_transient_ones() {
        let wrongtype = redis::RedisError::from((redis::ErrorKind::Extension, "WRONGTYPE"));
        assert!(permanent(&RedisError::Redis(wrongtype)));
        let io = redis::RedisError::from(std::io::Error::other("reset"));
        assert!(!permanent(&RedisError::Redis(io)));
        assert!(!permanent(&RedisError::Timeout(Duration::from_millis(1))));
    }

    #[test]
    fn xread_replies_give_ids_and_payloads_in_order_markers_without_one() {
        let entry = |id: &str, f: &str, v: &str| {
            Value::Array(vec![bulk(id), Value::Array(vec![bulk(f), bulk(v)])])
        };
        let entries = Value::Array(vec![entry("1-0", "m", "{}"), entry("2-0", "mark", "r1")]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("k"), entries.clone()])]);
        let want = vec![
            ("1-0".to_string(), Some(b"{}".to_vec())),
            ("2-0".to_string(), None),
        ];
        assert_eq!(stream_entries(&resp2), want);
        let resp3 = Value::Map(vec![(bulk("k"), entries)]);
        assert_eq!(stream_entries(&resp3), want);
        // A blocking read that timed out answers nil.
        assert!(stream_entries(&Value::Nil).is_empty());
        assert_eq!(
            entry_ids(&Value::Array(vec![entry("7-1", "m", "x")])),
            ["7-1"]
        );
    }
}
