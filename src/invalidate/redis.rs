//! The Redis tier (SPEC §6): the tag registry, fleet-wide deletion, the
//! game-state compare-and-set, and the pub/sub fan-out.
//!
//! Redis is never on the hit path. Registrations go through a bounded
//! queue that drops (and counts) when Redis is slow; every command has
//! `command_timeout`; the connection and the subscription come back with
//! backoff, and after a resubscribe every tagged L1 entry is dropped,
//! since invalidations may have been missed meanwhile.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::wire;
use super::Invalidator;
use crate::cache::store::is_local_tag;
use crate::config::RedisConfig;
use crate::metrics::Metrics;
use crate::shutdown;
use crate::watch::{GameId, GameState};

/// Registrations waiting for Redis; past this they are dropped.
const QUEUE: usize = 16_384;
/// Registrations written per pipeline.
const BATCH: usize = 512;
/// Members per UNLINK command.
const UNLINK_CHUNK: usize = 1000;

/// Compare-and-set on `{prefix}game:{id}`: one key, so one slot in a cluster.
const CAS_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return {1, ''}
end
return {0, cur}
";

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("not connected to Redis")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("bad game state in Redis: {0}")]
    Decode(String),
}

/// How a compare-and-set ended.
#[derive(Debug, PartialEq)]
pub enum Cas {
    Set,
    /// Another replica changed it first; this is the state now.
    Current(GameState),
}

/// What a deletion removed.
#[derive(Debug, Default)]
pub struct Deleted {
    pub deleted: u64,
    /// Cache keys among the registry members, for peers.
    pub cache_keys: Vec<String>,
}

type Registration = (Arc<str>, Box<[Arc<str>]>);

pub struct RedisTier {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    prefix: String,
    registry_ttl: u64,
    channel: String,
    timeout: Duration,
    queue: mpsc::Sender<Registration>,
    metrics: Arc<Metrics>,
    cas: redis::Script,
}

impl RedisTier {
    /// Starts the connector and the registration writer; connecting happens
    /// in the background, so a Redis that is down does not stop start-up.
    pub fn start(
        cfg: &RedisConfig,
        metrics: Arc<Metrics>,
        shutdown: shutdown::Signal,
    ) -> Result<Arc<RedisTier>, RedisError> {
        let url = cfg.url.as_deref().ok_or(RedisError::NotConnected)?;
        let client = redis::Client::open(url)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let tier = Arc::new(RedisTier {
            client,
            conn: Mutex::new(None),
            prefix: cfg.key_prefix.clone(),
            registry_ttl: cfg.registry_ttl.get().as_secs().max(1),
            channel: cfg.channel.clone(),
            timeout: cfg.command_timeout.get(),
            queue: tx,
            metrics,
            cas: redis::Script::new(CAS_LUA),
        });
        tokio::spawn(Arc::clone(&tier).connect_loop(shutdown.clone()));
        tokio::spawn(Arc::clone(&tier).write_registrations(rx, shutdown));
        Ok(tier)
    }

    pub fn registry_key(&self, tag: &str) -> String {
        format!("{}registry:{tag}", self.prefix)
    }

    pub fn response_key(&self, cache_key: &str) -> String {
        format!("{}resp:{cache_key}", self.prefix)
    }

    pub fn game_key(&self, id: &GameId) -> String {
        format!("{}game:{id}", self.prefix)
    }

    pub fn is_connected(&self) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    async fn connect_loop(self: Arc<Self>, mut shutdown: shutdown::Signal) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.client.get_connection_manager().await {
                Ok(conn) => {
                    *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                    tracing::info!("connected to Redis");
                    // ConnectionManager reconnects by itself from here on.
                    return;
                }
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot connect to Redis");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.recv() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn connection(&self) -> Result<ConnectionManager, RedisError> {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(RedisError::NotConnected)
    }

    /// Runs one round trip under `command_timeout`, counting failures.
    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let mut conn = self.connection()?;
        let result =
            match tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await {
                Err(_) => Err(RedisError::Timeout(self.timeout)),
                Ok(r) => r.map_err(RedisError::from),
            };
        if result.is_err() {
            self.metrics.redis_errors.inc();
        }
        result
    }

    /// Queues a stored entry's registration; drops it when the queue is full.
    pub fn register(&self, key: &Arc<str>, tags: &[Arc<str>]) {
        let tags: Box<[Arc<str>]> = tags.iter().filter(|t| !is_local_tag(t)).cloned().collect();
        if tags.is_empty() {
            return;
        }
        if self.queue.try_send((Arc::clone(key), tags)).is_err() {
            self.metrics.registrations_dropped.inc();
        }
    }

    async fn write_registrations(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Registration>,
        mut shutdown: shutdown::Signal,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            batch.clear();
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => n,
                _ = shutdown.recv() => return,
            };
            if n == 0 {
                return;
            }
            let mut pipe = redis::pipe();
            let mut expire = HashSet::new();
            for (key, tags) in &batch {
                let member = self.response_key(key);
                for tag in tags.iter() {
                    let reg = self.registry_key(tag);
                    pipe.cmd("SADD").arg(&reg).arg(&member).ignore();
                    expire.insert(reg);
                }
            }
            for reg in &expire {
                pipe.cmd("EXPIRE").arg(reg).arg(self.registry_ttl).ignore();
            }
            if let Err(e) = self.query::<()>(&pipe).await {
                self.metrics.registrations_dropped.inc_by(n as u64);
                tracing::debug!(error = %e, dropped = n, "registry write failed");
            }
        }
    }

    /// Deletes the registry members of `tags`, the `patterns` keys and the
    /// registry sets: two round trips whatever the number of keys.
    pub async fn delete(
        &self,
        tags: &[String],
        patterns: &[String],
    ) -> Result<Deleted, RedisError> {
        let registries: Vec<String> = tags
            .iter()
            .filter(|t| !is_local_tag(t))
            .map(|t| self.registry_key(t))
            .collect();
        let mut members: Vec<String> = Vec::new();
        if !registries.is_empty() {
            let mut pipe = redis::pipe();
            for r in &registries {
                pipe.cmd("SMEMBERS").arg(r);
            }
            let sets: Vec<Vec<String>> = self.query(&pipe).await?;
            let mut seen = HashSet::new();
            members = sets
                .into_iter()
                .flatten()
                .filter(|m| seen.insert(m.clone()))
                .collect();
        }
        let mut pipe = redis::pipe();
        for chunk in members.chunks(UNLINK_CHUNK) {
            pipe.cmd("UNLINK").arg(chunk);
        }
        if !patterns.is_empty() {
            pipe.cmd("UNLINK").arg(patterns);
        }
        if !registries.is_empty() {
            pipe.cmd("UNLINK").arg(&registries).ignore();
        }
        let counts: Vec<u64> = if members.is_empty() && patterns.is_empty() && registries.is_empty()
        {
            Vec::new()
        } else {
            self.query(&pipe).await?
        };
        let resp_prefix = self.response_key("");
        Ok(Deleted {
            deleted: counts.iter().sum(),
            cache_keys: members
                .iter()
                .filter_map(|m| m.strip_prefix(resp_prefix.as_str()))
                .take(wire::MAX_KEYS)
                .map(str::to_owned)
                .collect(),
        })
    }

    pub async fn publish(&self, msg: &wire::Message) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(&self.channel)
            .arg(wire::encode(msg))
            .ignore();
        self.query::<()>(&pipe).await
    }

    pub async fn load_state(&self, id: &GameId) -> Result<Option<GameState>, RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.game_key(id));
        let (raw,): (Option<String>,) = self.query(&pipe).await?;
        raw.map(|s| serde_json::from_str(&s).map_err(|e| RedisError::Decode(e.to_string())))
            .transpose()
    }

    /// Atomically replaces the game's state if it is still `expected`.
    pub async fn compare_and_set(
        &self,
        id: &GameId,
        expected: Option<&GameState>,
        new: &GameState,
    ) -> Result<Cas, RedisError> {
        let expected = expected.map(encode_state).unwrap_or_default();
        let mut conn = self.connection()?;
        let mut invocation = self.cas.key(self.game_key(id));
        invocation
            .arg(expected)
            .arg(encode_state(new))
            .arg(self.registry_ttl);
        let result = match tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, String)>(&mut conn),
        )
        .await
        {
            Err(_) => Err(RedisError::Timeout(self.timeout)),
            Ok(r) => r.map_err(RedisError::from),
        };
        let (set, current) = result.inspect_err(|_| {
            self.metrics.redis_errors.inc();
        })?;
        if set == 1 {
            return Ok(Cas::Set);
        }
        serde_json::from_str(&current)
            .map(Cas::Current)
            .map_err(|e| RedisError::Decode(e.to_string()))
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
        loop {
            match self.subscribe_once().await {
                Ok(mut stream) => {
                    if missed_some {
                        let dropped = invalidator.store().flush_tagged();
                        tracing::warn!(dropped, "resubscribed to Redis; dropped tagged L1 entries that may have missed invalidations");
                    }
                    self.metrics.redis_up.set(1);
                    backoff = Duration::from_millis(50);
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(msg) => match wire::decode(msg.get_payload_bytes()) {
                                    Ok(m) => { invalidator.apply_peer(m); }
                                    Err(e) => tracing::warn!(error = %e, "ignored a malformed invalidation message"),
                                },
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
            self.metrics.redis_up.set(0);
            self.metrics.redis_errors.inc();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.recv() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn subscribe_once(&self) -> Result<redis::aio::PubSubStream, RedisError> {
        let connect = async {
            let mut ps = self.client.get_async_pubsub().await?;
            ps.subscribe(&self.channel).await?;
            Ok::<_, RedisError>(ps.into_on_message())
        };
        tokio::time::timeout(self.timeout.max(Duration::from_secs(1)), connect)
            .await
            .map_err(|_| RedisError::Timeout(self.timeout))?
    }
}

fn encode_state(s: &GameState) -> String {
    serde_json::to_string(s).unwrap_or_default()
}
