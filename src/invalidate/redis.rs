//! The Redis tier (SPEC §6): the tag registry, fleet-wide deletion, the
//! game-state compare-and-set, and the event log (in [`fanout`]).
//!
//! Redis is never on the hit path. Registrations go through a bounded
//! queue that drops (and counts) when Redis is slow; every command has
//! `command_timeout`. A probe runs every 100 ms while Redis is unhealthy:
//! a connection that errors is reconnected by the manager at once (20 to
//! 200 ms backoff), so the command path is back within a probe or two of
//! Redis answering again; one that stays silent for `liveness_timeout` (a
//! blackholed flow) is replaced by a new one.
//!
//! With `store_responses` the same writer also copies each stored entry to
//! the shared L2 (`{prefix}resp:{cache_key}`, in [`l2`]'s encoding), with
//! the entry's remaining retention as its TTL; fill leaders read it back
//! on an L1 miss through the health-gated path. Invalidation deletes those
//! keys with the other registry members.
//!
//! The same code runs on one server, a Redis Cluster or a Sentinel-managed
//! primary (`[redis] mode`): [`Conn`] hides which. In a cluster every
//! pipeline is sent as single commands, each routed to its slot's node, and
//! a multi-key UNLINK is split per slot by the cluster client, so no
//! command crosses slots and the key names stay those of SPEC §6 (see
//! README, "Redis layout"). The event log, its outbox and its reader live
//! in [`fanout`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use tokio::sync::mpsc;

use super::events::unix_ms;
use super::known::Known;
use super::wire;
use crate::cache::store::is_local_tag;
use crate::cache::{l2, Entry, Store};
use crate::config::{RedisConfig, RedisMode};
use crate::metrics::Metrics;
use crate::shutdown;
use crate::watch::GameId;

pub mod fanout;
pub mod fleet;
use fanout::Outbox;
pub use fanout::Pending;

/// Registrations waiting for Redis; past this they are dropped.
const QUEUE: usize = 16_384;
/// Registrations written per pipeline.
const BATCH: usize = 512;
/// How much longer than `command_timeout` a tag's bulk deletion may take.
const BULK_TIMEOUT_FACTOR: u32 = 20;
/// How often a failing command connection is replaced by a new one at most.
const REPLACE_EVERY: Duration = Duration::from_millis(500);
/// Members per UNLINK command.
const UNLINK_CHUNK: usize = 1000;

/// Compare-and-set on `{prefix}game:{id}`: one key, so one slot in a
/// cluster. A missing or unreadable value is replaced, and says so (2), so
/// the writer tells the fleet that the state was seeded, not changed.
const CAS_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return {1, ''}
end
if cur == false or not pcall(cjson.decode, cur) then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return {2, ''}
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
    /// Set where Redis held no readable state: the key had expired, was
    /// lost, or was corrupt. Peers that knew a state must hear of it.
    Seeded,
    /// Another replica changed it first; this is the state now.
    Current(Known),
}

/// What a deletion removed.
#[derive(Debug, Default)]
pub struct Deleted {
    pub deleted: u64,
    /// Cache keys among the registry members, for peers.
    pub cache_keys: Vec<String>,
}

/// Where the commands go.
enum Backend {
    Standalone(redis::Client),
    /// The cluster client, and a plain client per seed where the
    /// subscription starts.
    Cluster {
        client: ClusterClient,
        seeds: Vec<redis::Client>,
    },
    /// The sentinels, asked for the primary at connect time and whenever
    /// the primary stops answering as one.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// The command connection, whichever the deployment: one server (or the
/// primary a sentinel named), or a cluster.
#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    /// In a cluster a pipeline's commands are sent one by one, concurrently
    /// on the client's per-node connections, each to its own slot's node:
    /// the cluster client refuses pipelines that cross slots.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move {
                    if offset != 0 {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "transactions are not used on a cluster",
                        )));
                    }
                    let calls = pipeline.cmd_iter().take(count).map(|cmd| {
                        let mut c = c.clone();
                        async move { c.req_packed_command(cmd).await }
                    });
                    futures_util::future::try_join_all(calls).await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A stored entry on its way to Redis: its registry memberships and, with
/// `store_responses`, its L2 copy.
struct Registration {
    key: Arc<str>,
    tags: Box<[Arc<str>]>,
    entry: Option<Arc<Entry>>,
    fetch_began: Instant,
}

pub struct RedisTier {
    backend: Backend,
    conn: Mutex<Option<Conn>>,
    /// Sentinel mode: the address of the primary `conn` talks to.
    primary: Mutex<Option<String>>,
    prefix: String,
    registry_ttl: u64,
    /// This replica's id and this process's nonce, as its events carry them.
    replica: Arc<str>,
    instance: Arc<str>,
    events_max_len: u64,
    /// `liveness_timeout`: a reader silent this long past its heartbeat is
    /// replaced.
    liveness: Duration,
    outbox: Outbox,
    /// When `{prefix}replica:{id}` was last written.
    confirmed: Mutex<Option<Instant>>,
    /// When the command connection was last replaced.
    replaced: Mutex<Option<Instant>>,
    /// Cluster mode: the connection to the log's owner that events are
    /// appended and waited for on.
    writer: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// The last fleet view read, for the admin port.
    fleet: Mutex<fleet::FleetView>,
    /// The outbox's drainer, awaited at shutdown (see [`Self::finish`]).
    drainer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Logged once: the log's primary has no replica to wait for.
    warned_no_replica: AtomicBool,
    timeout: Duration,
    store_responses: bool,
    /// The L1, so the writer can skip L2 copies of entries that were
    /// invalidated while queued.
    store: Arc<Store>,
    queue: mpsc::Sender<Registration>,
    metrics: Arc<Metrics>,
    cas: redis::Script,
    /// Whether the last health probe or command succeeded. While false,
    /// commands fail at once instead of each waiting `command_timeout`, so
    /// a dead or stalled Redis costs fills nothing.
    healthy: AtomicBool,
    /// Whether the log's reader is reading. With `healthy`, it makes
    /// `oddscache_redis_up`: either one down means peers' events or our own
    /// commands are not going through.
    subscribed: AtomicBool,
}

impl RedisTier {
    /// Starts the connector and the registration writer; connecting happens
    /// in the background, so a Redis that is down does not stop start-up.
    pub fn start(
        cfg: &RedisConfig,
        identity: (&str, &str),
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        shutdown: shutdown::Signal,
    ) -> Result<Arc<RedisTier>, RedisError> {
        let (replica, instance) = identity;
        let backend = match cfg.mode {
            RedisMode::Standalone => {
                let url = cfg.url.as_deref().ok_or(RedisError::NotConnected)?;
                Backend::Standalone(redis::Client::open(url)?)
            }
            RedisMode::Cluster => {
                let urls: Vec<&str> = cfg
                    .urls
                    .iter()
                    .map(String::as_str)
                    .chain(cfg.url.as_deref())
                    .collect();
                if urls.is_empty() {
                    return Err(RedisError::NotConnected);
                }
                let seeds = urls
                    .iter()
                    .map(|u| redis::Client::open(*u))
                    .collect::<Result<Vec<_>, _>>()?;
                let client = ClusterClient::builder(urls)
                    .connection_timeout(cfg.command_timeout.get().max(Duration::from_secs(1)))
                    .response_timeout(cfg.command_timeout.get())
                    .build()?;
                Backend::Cluster { client, seeds }
            }
            RedisMode::Sentinel => {
                let client = SentinelClient::build(
                    cfg.urls.iter().map(String::as_str).collect(),
                    cfg.master_name.clone(),
                    None,
                    SentinelServerType::Master,
                )?;
                Backend::Sentinel(tokio::sync::Mutex::new(client))
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let tier = Arc::new(RedisTier {
            backend,
            conn: Mutex::new(None),
            primary: Mutex::new(None),
            prefix: cfg.key_prefix.clone(),
            registry_ttl: cfg.registry_ttl.get().as_secs().max(1),
            replica: replica.into(),
            instance: instance.into(),
            events_max_len: cfg.events_max_len,
            liveness: cfg.liveness_timeout.get(),
            outbox: Outbox::new(cfg.outbox_capacity),
            confirmed: Mutex::new(None),
            replaced: Mutex::new(None),
            writer: tokio::sync::Mutex::new(None),
            warned_no_replica: AtomicBool::new(false),
            fleet: Mutex::default(),
            drainer: Mutex::new(None),
            timeout: cfg.command_timeout.get(),
            store_responses: cfg.store_responses,
            store,
            queue: tx,
            metrics,
            cas: redis::Script::new(CAS_LUA),
            healthy: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&tier).connect_loop(shutdown.clone()));
        let drainer = tokio::spawn(Arc::clone(&tier).drain_outbox(shutdown.clone()));
        *tier.drainer.lock().unwrap_or_else(|p| p.into_inner()) = Some(drainer);
        tokio::spawn(Arc::clone(&tier).watch_fleet(shutdown.clone()));
        tokio::spawn(Arc::clone(&tier).write_registrations(rx, shutdown));
        Ok(tier)
    }

    /// After the shutdown signal: waits, for a bounded time, for the outbox
    /// to hand what it holds to the log (`fanout::SHUTDOWN_DRAIN`).
    pub async fn finish(&self) {
        let drainer = self
            .drainer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(drainer) = drainer {
            let within = fanout::SHUTDOWN_DRAIN * 2 + self.timeout * BULK_TIMEOUT_FACTOR;
            if tokio::time::timeout(within, drainer).await.is_err() {
                tracing::error!(
                    left = self.outbox.len(),
                    "the invalidation outbox did not drain before exit"
                );
            }
        }
    }

    pub fn registry_key(&self, tag: &str) -> String {
        format!("{}registry:{tag}", self.prefix)
    }

    pub fn response_key(&self, cache_key: &str) -> String {
        format!("{}resp:{cache_key}", self.prefix)
    }

    /// Whether this tier keeps the shared L2 of response bodies.
    pub fn stores_responses(&self) -> bool {
        self.store_responses
    }

    pub fn game_key(&self, id: &GameId) -> String {
        format!("{}game:{id}", self.prefix)
    }

    pub fn command_timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last probe or command went through.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
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
            match self.open().await {
                Ok(conn) => {
                    *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                    self.healthy.store(true, Ordering::Relaxed);
                    self.publish_up();
                    tracing::info!("connected to Redis");
                    return self.probe_loop(shutdown).await;
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
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// A new command connection. Sentinel mode asks the sentinels for the
    /// primary first.
    async fn open(&self) -> Result<Conn, RedisError> {
        match &self.backend {
            Backend::Standalone(client) => Ok(Conn::Standalone(self.manage(client).await?)),
            Backend::Cluster { client, .. } => {
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
            Backend::Sentinel(_) => {
                let (client, addr) = self.sentinel_primary().await?;
                let conn = self.manage(&client).await?;
                *self.primary.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
                Ok(Conn::Standalone(conn))
            }
        }
    }

    /// A command connection to `client`'s server: reconnections retried
    /// quickly (the probe replaces the connection when they do not help),
    /// and TCP keepalive.
    async fn manage(&self, client: &redis::Client) -> Result<ConnectionManager, RedisError> {
        let tcp = redis::io::tcp::TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(fanout::keepalive(self.liveness))
            .set_user_timeout(self.liveness);
        let info = client.get_connection_info().clone().set_tcp_settings(tcp);
        let client = redis::Client::open(info)?;
        // No response timeout of the manager's own: every call is bounded
        // by its caller (`command_timeout`, or 20 times it for a tag's
        // whole registry).
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200))
            .set_number_of_retries(2);
        let open = client.get_connection_manager_with_config(config);
        let within = self.timeout.max(Duration::from_secs(1)) * 2;
        tokio::time::timeout(within, open)
            .await
            .map_err(|_| RedisError::Timeout(within))?
            .map_err(RedisError::from)
    }

    /// The primary the sentinels name now, and its address.
    async fn sentinel_primary(&self) -> Result<(redis::Client, String), RedisError> {
        let Backend::Sentinel(sentinel) = &self.backend else {
            return Err(RedisError::NotConnected);
        };
        let ask = async { sentinel.lock().await.async_get_client().await };
        let client = tokio::time::timeout(self.timeout.max(Duration::from_secs(1)), ask)
            .await
            .map_err(|_| RedisError::Timeout(self.timeout))??;
        let addr = client.get_connection_info().addr().to_string();
        Ok((client, addr))
    }

    /// Sentinel mode, after a failed probe: if the sentinels name another
    /// primary (a failover), connects to it and drops the old connection.
    /// One health check: PING, or in sentinel mode ROLE, since a demoted
    /// primary still answers PING.
    async fn probe(&self, conn: &mut Conn, sentinel: bool) -> bool {
        if sentinel {
            let role = redis::cmd("ROLE");
            match tokio::time::timeout(self.timeout, role.query_async::<redis::Value>(conn)).await {
                Ok(Ok(redis::Value::Array(v))) => matches!(
                    v.first(),
                    Some(redis::Value::BulkString(r)) if r.as_slice() == b"master"
                ),
                _ => false,
            }
        } else {
            let ping = redis::cmd("PING");
            matches!(
                tokio::time::timeout(self.timeout, ping.query_async::<String>(conn)).await,
                Ok(Ok(_))
            )
        }
    }

    /// Whether it switched to a primary that answers as one.
    async fn follow_failover(&self) -> bool {
        let current = self
            .primary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (client, addr) = match self.sentinel_primary().await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask the sentinels for the primary");
                return false;
            }
        };
        if current.as_deref() == Some(addr.as_str()) {
            return false;
        }
        let mut conn = match self.manage(&client).await {
            Ok(conn) => Conn::Standalone(conn),
            Err(e) => {
                tracing::debug!(error = %e, primary = %addr, "cannot connect to the new primary");
                return false;
            }
        };
        let ok = self.probe(&mut conn, true).await;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        *self.primary.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.clone());
        tracing::warn!(primary = %addr, "the sentinels named a new primary; switched to it");
        ok
    }

    /// PINGs twice a second (ten times while unhealthy). The ConnectionManager reconnects on the next
    /// command after an I/O error, so the probe is that command: Redis is
    /// back in use within a probe interval of returning, and `healthy`
    /// follows it.
    async fn probe_loop(self: Arc<Self>, mut shutdown: shutdown::Signal) {
        let mut failing_since: Option<Instant> = None;
        loop {
            let every = if self.healthy.load(Ordering::Relaxed) {
                Duration::from_millis(500)
            } else {
                Duration::from_millis(100)
            };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.recv() => return,
            }
            // The manager, not `connection()`: that one refuses while
            // unhealthy, and the probe is what makes Redis healthy again.
            let Some(mut conn) = self.manager() else {
                continue;
            };
            let sentinel = matches!(self.backend, Backend::Sentinel(_));
            let mut ok = self.probe(&mut conn, sentinel).await;
            if sentinel && !ok {
                // Healthy at once on the new primary, not a probe later.
                ok = self.follow_failover().await;
            }
            if ok {
                failing_since = None;
            } else {
                // The connection itself may be the problem: a blackholed
                // flow never errors. One silent for `liveness_timeout` is
                // replaced (a Redis that is only paused or slow for less
                // keeps its connection, and no half-open ones pile up);
                // one that errors is reconnected by the manager at once.
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.liveness {
                    ok = self.replace_connection(sentinel).await;
                }
            }
            let was = self.healthy.swap(ok, Ordering::Relaxed);
            if was != ok {
                if ok {
                    tracing::info!("Redis commands are going through again");
                } else {
                    self.metrics.redis_errors.inc();
                    tracing::warn!("Redis is not answering; registrations are dropped and decisions made locally until it does");
                }
            }
            self.publish_up();
        }
    }

    /// Opens a new command connection and keeps it if it answers; at most
    /// once per [`REPLACE_EVERY`], so a Redis that is merely paused does not
    /// collect half-open connections.
    pub(super) async fn replace_connection(&self, sentinel: bool) -> bool {
        {
            let mut last = self.replaced.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < REPLACE_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let Ok(mut fresh) = self.open().await else {
            return false;
        };
        if !self.probe(&mut fresh, sentinel).await {
            return false;
        }
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
        tracing::info!("replaced the Redis command connection");
        true
    }

    fn manager(&self) -> Option<Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn connection(&self) -> Result<Conn, RedisError> {
        if !self.healthy.load(Ordering::Relaxed) {
            return Err(RedisError::NotConnected);
        }
        self.manager().ok_or(RedisError::NotConnected)
    }

    /// Runs one round trip under `command_timeout`, counting failures; fails
    /// at once while Redis is unhealthy. For the fill path's work, which has
    /// a local fallback.
    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let conn = self.connection()?;
        self.round_trip(conn, pipe, self.timeout).await
    }

    /// Like `query`, but tried even while Redis looks unhealthy: deleting
    /// and publishing an invalidation is worth a `command_timeout`, since a
    /// peer that misses it would serve stale odds.
    async fn query_always<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let conn = self.manager().ok_or(RedisError::NotConnected)?;
        self.round_trip(conn, pipe, self.timeout).await
    }

    /// For a tag's whole registry (100k members is a 4 MB reply): a healthy
    /// Redis gets `BULK_TIMEOUT_FACTOR` times `command_timeout`, an
    /// unhealthy one no more than any other command.
    async fn query_bulk<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let conn = self.manager().ok_or(RedisError::NotConnected)?;
        let timeout = if self.healthy.load(Ordering::Relaxed) {
            self.timeout * BULK_TIMEOUT_FACTOR
        } else {
            self.timeout
        };
        self.round_trip(conn, pipe, timeout).await
    }

    async fn round_trip<T: redis::FromRedisValue>(
        &self,
        mut conn: Conn,
        pipe: &redis::Pipeline,
        timeout: Duration,
    ) -> Result<T, RedisError> {
        let result = match tokio::time::timeout(timeout, pipe.query_async::<T>(&mut conn)).await {
            Err(_) => Err(RedisError::Timeout(timeout)),
            Ok(r) => r.map_err(RedisError::from),
        };
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    fn failed(&self, e: &RedisError) {
        self.metrics.redis_errors.inc();
        let broken = match e {
            RedisError::Timeout(_) => true,
            RedisError::Redis(e) => {
                e.is_io_error()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                    || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            }
            RedisError::NotConnected | RedisError::Decode(_) => false,
        };
        if broken && self.healthy.swap(false, Ordering::Relaxed) {
            self.publish_up();
            tracing::warn!(error = %e, "a Redis command failed; registrations are dropped and decisions made locally until a probe answers");
        }
    }

    /// `oddscache_redis_up`: 1 while commands go through and the log is
    /// being read.
    fn publish_up(&self) {
        let up = self.healthy.load(Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed);
        self.metrics.redis_up.set(i64::from(up));
    }

    /// Queues a stored entry's registration, and its L2 copy with
    /// `store_responses`; drops them when the queue is full.
    /// `fetch_began`: when the fetch that produced it began.
    pub fn register(&self, entry: &Arc<Entry>, fetch_began: Instant) {
        let tags: Box<[Arc<str>]> = entry
            .tags()
            .filter(|t| !is_local_tag(t))
            .map(Arc::from)
            .collect();
        if tags.is_empty() && !self.store_responses {
            return;
        }
        let reg = Registration {
            key: Arc::from(entry.key()),
            tags,
            entry: self.store_responses.then(|| Arc::clone(entry)),
            fetch_began,
        };
        if self.queue.try_send(reg).is_err() {
            self.metrics.registrations_dropped.inc();
        }
    }

    /// The L2 value of a queued entry and its TTL in milliseconds; `None`
    /// when no peer could use it any more: expired, or no longer the
    /// entry in L1 (invalidated or replaced while it waited).
    fn l2_value(&self, entry: &Arc<Entry>, fetch_began: Instant) -> Option<(Vec<u8>, u64)> {
        if !self.store.is_current(entry) {
            return None;
        }
        let resident = Instant::now().saturating_duration_since(entry.stored_at());
        if resident >= entry.fresh_for() {
            return None;
        }
        let ttl = entry.retention().saturating_sub(resident);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let resident_ms = u64::try_from(resident.as_millis()).unwrap_or(u64::MAX);
        let now_ms = unix_ms(SystemTime::now());
        let stored_at_ms = now_ms.saturating_sub(resident_ms);
        let fetching = Instant::now().saturating_duration_since(fetch_began);
        let began_ms =
            now_ms.saturating_sub(u64::try_from(fetching.as_millis()).unwrap_or(u64::MAX));
        l2::encode(entry, stored_at_ms, began_ms.min(stored_at_ms)).map(|v| (v, ttl_ms))
    }

    /// The L2 copy of `cache_key`, if any. Fails at once while Redis is
    /// unhealthy, and within `command_timeout` otherwise: a fill leader
    /// asks before going upstream, so a dead Redis must cost it nothing.
    pub async fn load_response(&self, cache_key: &str) -> Result<Option<Vec<u8>>, RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.response_key(cache_key));
        let mut values: Vec<Option<Vec<u8>>> = self.query(&pipe).await?;
        Ok(values.pop().flatten())
    }

    /// Deletes the L2 copies of `cache_keys` (an unsafe method's URI).
    pub async fn delete_responses(&self, cache_keys: &[Arc<str>]) -> Result<(), RedisError> {
        if cache_keys.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = cache_keys.iter().map(|k| self.response_key(k)).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(&names).ignore();
        self.query_always::<()>(&pipe).await
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
            // Filed first, written after: an invalidation whose SMEMBERS
            // comes after the copy exists also finds it. Two pipelines,
            // since a cluster sends one pipeline's commands concurrently.
            let mut filing = redis::pipe();
            let mut expire = HashSet::new();
            for reg in &batch {
                let member = self.response_key(&reg.key);
                for tag in reg.tags.iter() {
                    let set = self.registry_key(tag);
                    filing.cmd("SADD").arg(&set).arg(&member).ignore();
                    expire.insert(set);
                }
            }
            if !expire.is_empty() {
                for reg in &expire {
                    filing
                        .cmd("EXPIRE")
                        .arg(reg)
                        .arg(self.registry_ttl)
                        .ignore();
                }
                if let Err(e) = self.query::<()>(&filing).await {
                    self.metrics.registrations_dropped.inc_by(n as u64);
                    tracing::debug!(error = %e, dropped = n, "registry write failed");
                    continue;
                }
            }
            // Decided after the filing landed: an entry invalidated while
            // it was queued or filed is not copied.
            let copies: Vec<(&Arc<Entry>, String, Instant)> = batch
                .iter()
                .filter_map(|reg| {
                    Some((
                        reg.entry.as_ref()?,
                        self.response_key(&reg.key),
                        reg.fetch_began,
                    ))
                })
                .collect();
            let mut writing = redis::pipe();
            let mut written = Vec::new();
            for (entry, member, began) in &copies {
                if let Some((value, ttl_ms)) = self.l2_value(entry, *began) {
                    writing
                        .cmd("SET")
                        .arg(member)
                        .arg(value)
                        .arg("PX")
                        .arg(ttl_ms)
                        .ignore();
                    written.push((*entry, member));
                }
            }
            if written.is_empty() {
                continue;
            }
            if let Err(e) = self.query::<()>(&writing).await {
                self.metrics
                    .registrations_dropped
                    .inc_by(written.len() as u64);
                tracing::debug!(error = %e, "L2 copy write failed");
                continue;
            }
            // An invalidation that found the entry while its copy was on
            // the way may have deleted before the write landed: take the
            // copy back. (Readers also refuse copies older than the
            // invalidations they applied: `Marks`.)
            let stale: Vec<&String> = written
                .iter()
                .filter(|(e, _)| !self.store.is_current(e))
                .map(|(_, m)| *m)
                .collect();
            if !stale.is_empty() {
                let mut undo = redis::pipe();
                undo.cmd("UNLINK").arg(&stale).ignore();
                let _ = self.query_always::<()>(&undo).await;
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
            let sets: Vec<Vec<String>> = self.query_bulk(&pipe).await?;
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
            self.query_bulk(&pipe).await?
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

    /// Whether `tag`'s registry set exists.
    pub async fn registry_exists(&self, tag: &str) -> Result<bool, RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(self.registry_key(tag));
        let n: Vec<i64> = self.query(&pipe).await?;
        Ok(n.first().is_some_and(|&n| n > 0))
    }

    /// The fleet's known state of each game, in one round trip.
    pub async fn load_states(&self, ids: &[&GameId]) -> Result<Vec<Option<Known>>, RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("GET").arg(self.game_key(id));
        }
        let raw: Vec<Option<String>> = self.query(&pipe).await?;
        // A corrupt value is treated as unknown, not as an error for all.
        Ok(raw
            .into_iter()
            .map(|r| r.and_then(|s| serde_json::from_str(&s).ok()))
            .collect())
    }

    /// Atomically replaces the game's state if it is still `expected`.
    ///
    /// A transition (`expected` known) is tried even while Redis looks
    /// unhealthy, like the deletion and the publish that follow it: one
    /// decided locally leaves the fleet's state behind, and the next CAS
    /// against that old state would judge a real change to be none. Seeding
    /// a first sighting (`expected` = `None`) fails at once instead: it
    /// runs on fills, which a dead Redis must not slow down.
    pub async fn compare_and_set(
        &self,
        id: &GameId,
        expected: Option<&Known>,
        new: &Known,
    ) -> Result<Cas, RedisError> {
        let mut conn = if expected.is_some() {
            self.manager().ok_or(RedisError::NotConnected)?
        } else {
            self.connection()?
        };
        let expected = expected.map(encode_state).unwrap_or_default();
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
        let (set, current) = result.inspect_err(|e| self.failed(e))?;
        match set {
            1 => return Ok(Cas::Set),
            2 => return Ok(Cas::Seeded),
            _ => {}
        }
        serde_json::from_str(&current)
            .map(Cas::Current)
            .map_err(|e| RedisError::Decode(e.to_string()))
    }
}

fn encode_state(s: &Known) -> String {
    serde_json::to_string(s).unwrap_or_default()
}
