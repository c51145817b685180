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
//! README, "Redis layout").
//!
//! The rooms: `conn` (the command connection, its probe and the query
//! helpers), `registry` (the registry writer, L2 copies and the deletion
//! an invalidation runs), `state` (the game-state compare-and-set),
//! [`fanout`] (the event log, its outbox and its reader) and [`fleet`] (the
//! replicas' confirmations). This file holds the tier itself: its settings,
//! its start and shutdown, and the key names of SPEC §6.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::sentinel::{SentinelClient, SentinelServerType};
use tokio::sync::mpsc;

use super::events::unix_ms;
use crate::cache::Store;
use crate::config::{RedisConfig, RedisMode};
use crate::metrics::Metrics;
use crate::shutdown;
use crate::watch::GameId;

mod conn;
pub mod fanout;
pub mod fleet;
mod registry;
mod state;
use conn::Backend;
pub use conn::Conn;
use fanout::Outbox;
pub use fanout::Pending;
pub use registry::Deleted;
use registry::Registration;
pub use state::Cas;

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
            cas: redis::Script::new(state::CAS_LUA),
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
}
