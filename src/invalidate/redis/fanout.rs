//! The fan-out (SPEC §6): which pub/sub carries the invalidation events,
//! publishing one, and the subscriber that applies peers' events and, after
//! any gap in its subscription, drops the tagged L1 entries.
//!
//! - **One server or a sentinel-managed primary: classic** `PUBLISH` /
//!   `SUBSCRIBE`. Every subscriber is on the one primary, so sharding
//!   would change nothing.
//! - **A cluster: sharded** `SPUBLISH` / `SSUBSCRIBE` when its servers have
//!   them (Redis 7+; asked once with `COMMAND INFO SPUBLISH`), classic
//!   otherwise, or what `[redis] pubsub` pins. A classic message is
//!   broadcast over the cluster bus to every node; a sharded one stays in
//!   the shard that owns the channel's slot, so fan-out traffic does not
//!   grow with the number of nodes. The decision is made once per process,
//!   so a sidecar never publishes on one kind while it listens on the
//!   other.
//!
//! The sharded subscriber holds one RESP3 connection to the primary that
//! owns the slot, found from a seed: a replica names its primary (`ROLE`),
//! a primary that does not own the slot answers `SSUBSCRIBE` with `MOVED`.
//! (A replica would accept the subscription itself and deliver what its
//! replication stream brings, but a replica cut off from its primary goes
//! silent without closing anything, so only primaries are used.) It loses
//! the subscription when that connection closes (the owner died), when the
//! server sends `sunsubscribe` (the slot moved away), or when the node
//! stops answering `ROLE` as a primary (demoted, or gone without closing
//! the socket); then it subscribes afresh wherever the slot lives now, and
//! the resync rule drops the tagged L1 entries.
//!
//! The cluster client's own `ssubscribe` is not used: it re-homes
//! subscriptions only when a failing command makes it refresh its slot
//! map, and its pushes do not say which node dropped one, so a gap could
//! pass unnoticed, and the resync rule depends on noticing every gap.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::{Backend, RedisError, RedisTier};
use crate::config::PubSubMode;
use crate::invalidate::{wire, Invalidator};
use crate::shutdown;

/// Hops followed to find the channel's owner: a replica to its primary,
/// then a `MOVED`, and one more for a slot moving meanwhile.
const MAX_REDIRECTS: usize = 3;
/// How often the sharded subscriber checks that its node is still a
/// primary that answers.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Which pub/sub carries the events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fanout {
    Classic,
    Sharded,
}

impl Fanout {
    fn publish_command(self) -> &'static str {
        match self {
            Fanout::Classic => "PUBLISH",
            Fanout::Sharded => "SPUBLISH",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fanout::Classic => "classic",
            Fanout::Sharded => "sharded",
        }
    }
}

/// Whether a `COMMAND INFO <name>` reply describes the command: a server
/// that does not know it answers `[nil]`.
pub(super) fn knows_command(reply: &Value) -> bool {
    match reply {
        Value::Array(items) => items
            .first()
            .is_some_and(|i| matches!(i, Value::Array(info) if !info.is_empty())),
        _ => false,
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

/// A held subscription, where peers' events arrive.
enum Feed {
    /// The crate's pub/sub stream; it ends when its connection does.
    Classic(redis::aio::PubSubStream),
    Sharded {
        /// The connection to the channel's owner; kept for the `ROLE`
        /// checks, and open for as long as this is held.
        conn: MultiplexedConnection,
        /// Its pushes: `smessage`, and `sunsubscribe` or a disconnection
        /// when the subscription ends.
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        check: tokio::time::Interval,
        check_timeout: Duration,
    },
}

impl Feed {
    /// The next event; `None` once the subscription is gone.
    async fn next(&mut self) -> Option<Result<wire::Message, wire::DecodeError>> {
        match self {
            Feed::Classic(stream) => stream
                .next()
                .await
                .map(|m| wire::decode(m.get_payload_bytes())),
            Feed::Sharded {
                conn,
                pushes,
                check,
                check_timeout,
            } => loop {
                tokio::select! {
                    push = pushes.recv() => {
                        let push = push?;
                        match push.kind {
                            PushKind::SMessage => {
                                // [channel, payload]
                                if let Some(Value::BulkString(payload)) = push.data.get(1) {
                                    return Some(wire::decode(payload));
                                }
                            }
                            PushKind::SUnsubscribe => {
                                tracing::warn!("Redis ended the sharded subscription: the channel's slot moved or its owner was demoted");
                                return None;
                            }
                            PushKind::Disconnection => return None,
                            _ => {}
                        }
                    }
                    _ = check.tick() => {
                        let ask = redis::cmd("ROLE");
                        let reply = ask.query_async::<Value>(conn);
                        match tokio::time::timeout(*check_timeout, reply).await {
                            Ok(Ok(r)) if role(&r) == Role::Primary => {}
                            // An unsolicited `sunsubscribe` taken for the answer:
                            // it is in `pushes` too.
                            Ok(Ok(Value::Push { .. })) => {}
                            Ok(Ok(_)) => {
                                tracing::warn!("the channel's owner is no longer a primary");
                                return None;
                            }
                            _ => {
                                tracing::warn!("the channel's owner stopped answering");
                                return None;
                            }
                        }
                    }
                }
            },
        }
    }
}

impl RedisTier {
    /// The fan-out, when it needs no question to the server: configured,
    /// not a cluster, or already decided.
    fn settled_fanout(&self) -> Option<Fanout> {
        if let Some(f) = self.fanout.get() {
            return Some(*f);
        }
        let cluster = matches!(self.backend, Backend::Cluster { .. });
        let f = match (cluster, self.pubsub) {
            (false, _) | (true, PubSubMode::Classic) => Fanout::Classic,
            (true, PubSubMode::Sharded) => Fanout::Sharded,
            (true, PubSubMode::Auto) => return None,
        };
        Some(self.settle(f))
    }

    /// Records the fan-out for the process's lifetime; the first decision
    /// wins, so the publisher and the subscriber cannot disagree.
    fn settle(&self, f: Fanout) -> Fanout {
        *self.fanout.get_or_init(|| {
            tracing::info!(pubsub = f.as_str(), channel = %self.channel, "invalidation fan-out");
            f
        })
    }

    /// The fan-out, asking the server on `conn` whether it has `SPUBLISH`
    /// when that is still open (a cluster with `pubsub = "auto"`).
    async fn fanout(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<Fanout, RedisError> {
        if let Some(f) = self.settled_fanout() {
            return Ok(f);
        }
        let mut ask = redis::cmd("COMMAND");
        ask.arg("INFO").arg("SPUBLISH");
        let f = match tokio::time::timeout(self.timeout, ask.query_async::<Value>(conn)).await {
            Err(_) => return Err(RedisError::Timeout(self.timeout)),
            Ok(Ok(reply)) if knows_command(&reply) => Fanout::Sharded,
            Ok(Ok(_)) => Fanout::Classic,
            Ok(Err(e)) if e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error() => {
                return Err(e.into())
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot ask Redis for SPUBLISH; using classic pub/sub");
                Fanout::Classic
            }
        };
        Ok(self.settle(f))
    }

    pub async fn publish(&self, msg: &wire::Message) -> Result<(), RedisError> {
        let fanout = match self.settled_fanout() {
            Some(f) => f,
            None => {
                let mut conn = self.manager().ok_or(RedisError::NotConnected)?;
                self.fanout(&mut conn)
                    .await
                    .inspect_err(|e| self.failed(e))?
            }
        };
        let mut pipe = redis::pipe();
        pipe.cmd(fanout.publish_command())
            .arg(&self.channel)
            .arg(wire::encode(msg))
            .ignore();
        self.query_always::<()>(&pipe).await
    }

    /// Subscribes to the channel and applies peers' events, resubscribing
    /// with backoff; after any resubscribe the tagged L1 entries are dropped.
    pub fn spawn_subscriber(
        self: &Arc<Self>,
        invalidator: Arc<Invalidator>,
        shutdown: shutdown::Signal,
    ) {
        let tier = Arc::clone(self);
        tokio::spawn(async move { tier.subscribe_loop(invalidator, shutdown).await });
    }

    async fn subscribe_loop(
        self: Arc<Self>,
        invalidator: Arc<Invalidator>,
        mut shutdown: shutdown::Signal,
    ) {
        let mut backoff = Duration::from_millis(50);
        let mut missed_some = false;
        let mut attempt = 0usize;
        loop {
            match self.subscribe_once(attempt).await {
                Ok(mut feed) => {
                    if missed_some {
                        let dropped = invalidator.store().flush_tagged();
                        tracing::warn!(dropped, "resubscribed to Redis; dropped tagged L1 entries that may have missed invalidations");
                    }
                    self.subscribed.store(true, Ordering::Relaxed);
                    self.publish_up();
                    backoff = Duration::from_millis(50);
                    loop {
                        tokio::select! {
                            msg = feed.next() => match msg {
                                Some(Ok(m)) => { invalidator.apply_peer(m); }
                                Some(Err(e)) => tracing::warn!(error = %e, "ignored a malformed invalidation message"),
                                None => break,
                            },
                            _ = shutdown.recv() => return,
                        }
                    }
                    tracing::warn!("lost the Redis subscription; serving from L1 and upstream while reconnecting");
                }
                Err(e) => tracing::debug!(error = %e, "cannot subscribe to Redis"),
            }
            missed_some = true;
            attempt = attempt.wrapping_add(1);
            self.subscribed.store(false, Ordering::Relaxed);
            self.publish_up();
            self.metrics.redis_errors.inc();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.recv() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Where the subscription starts: the server, the primary the
    /// sentinels name, or in a cluster the next seed node in turn (classic
    /// pub/sub is broadcast to every node, so any one will do; a sharded
    /// subscription is redirected from there to the channel's owner).
    async fn subscription_client(&self, attempt: usize) -> Result<redis::Client, RedisError> {
        match &self.backend {
            Backend::Standalone(client) => Ok(client.clone()),
            Backend::Cluster { seeds, .. } => Ok(seeds[attempt % seeds.len()].clone()),
            Backend::Sentinel(_) => Ok(self.sentinel_primary().await?.0),
        }
    }

    async fn subscribe_once(&self, attempt: usize) -> Result<Feed, RedisError> {
        let within = self.timeout.max(Duration::from_secs(1));
        let connect = async {
            let client = self.subscription_client(attempt).await?;
            let fanout = match self.settled_fanout() {
                Some(f) => f,
                None => {
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    self.fanout(&mut conn).await?
                }
            };
            match fanout {
                Fanout::Classic => {
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(&self.channel).await?;
                    Ok(Feed::Classic(ps.into_on_message()))
                }
                Fanout::Sharded => self.ssubscribe(client, within).await,
            }
        };
        tokio::time::timeout(within * 2, connect)
            .await
            .map_err(|_| RedisError::Timeout(within * 2))?
    }

    /// `SSUBSCRIBE` on the primary that owns the channel's slot, over
    /// RESP3 so the subscription and its checks share one connection.
    async fn ssubscribe(
        &self,
        mut client: redis::Client,
        within: Duration,
    ) -> Result<Feed, RedisError> {
        for _ in 0..=MAX_REDIRECTS {
            let info = client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let resp3 = redis::Client::open(info.set_redis_settings(settings))?;
            let (tx, rx) = mpsc::unbounded_channel();
            let config = redis::AsyncConnectionConfig::new()
                .set_push_sender(tx)
                .set_connection_timeout(Some(within))
                .set_response_timeout(Some(within));
            let mut conn = resp3
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            match role(&redis::cmd("ROLE").query_async::<Value>(&mut conn).await?) {
                Role::Primary => {}
                Role::Replica(primary) => {
                    client = redirected(&client, &primary)?;
                    continue;
                }
                Role::Other => {
                    return Err(RedisError::Decode(format!(
                        "{} is neither a primary nor a replica",
                        client.get_connection_info().addr()
                    )))
                }
            }
            let mut sub = redis::cmd("SSUBSCRIBE");
            sub.arg(&self.channel);
            match sub.query_async::<Value>(&mut conn).await {
                Ok(_) => {
                    tracing::info!(node = %client.get_connection_info().addr(), channel = %self.channel, "subscribed to the sharded channel on its slot's primary");
                    let start = tokio::time::Instant::now() + CHECK_EVERY;
                    return Ok(Feed::Sharded {
                        conn,
                        pushes: rx,
                        check: tokio::time::interval_at(start, CHECK_EVERY),
                        check_timeout: within,
                    });
                }
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved) => {
                    let (node, _slot) = e.redirect_node().ok_or_else(|| {
                        RedisError::Decode(format!("MOVED without an address: {e}"))
                    })?;
                    client = redirected(&client, node)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RedisError::Decode(format!(
            "the owner of {} kept moving ({MAX_REDIRECTS} redirections)",
            self.channel
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn command_info_tells_a_server_with_spublish_from_one_without() {
        // Redis 7: the command's description; Redis 6: [nil].
        let seven = Value::Array(vec![Value::Array(vec![
            bulk("spublish"),
            Value::Int(3),
            Value::Array(vec![]),
        ])]);
        assert!(knows_command(&seven));
        assert!(!knows_command(&Value::Array(vec![Value::Nil])));
        assert!(!knows_command(&Value::Array(vec![])));
        assert!(!knows_command(&Value::Nil));
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
        assert_eq!(
            redirected(&seed, "[::1]:7002")
                .unwrap()
                .get_connection_info()
                .addr()
                .to_string(),
            "::1:7002"
        );
        assert!(redirected(&seed, "nowhere").is_err());
        assert!(redirected(&seed, "host:port").is_err());
    }
}
