//! oddscache: a sidecar reverse-proxy cache for live-odds APIs.
//!
//! The request path flows one way: admit → key → lookup → hit, or
//! upstream → watch → store. Every invalidation, whoever asks for it (the
//! watcher, an unsafe method, the admin API, a peer's log entry), goes
//! through one door, [`invalidate::Invalidator`].
//!
//! Map of the crate:
//! - [`server`]: the accept loop shared by the proxy and admin listeners,
//!   with its drain (`server/drain.rs`) and its request-head deadlines
//!   (`server/header_timer.rs`).
//! - [`proxy`]: the request path. `mod.rs` routes a request; `admit.rs`
//!   rate-limits; `fill.rs` fetches, revalidates, stores and forwards
//!   unsafe methods; `respond.rs` builds every answer; `upstream.rs` is the
//!   client; `body.rs` the response body.
//! - [`push`]: change hints to browsers on the proxy port (SPEC §8): the
//!   door, relay and replay (`mod.rs`), origins (`cors.rs`), filters
//!   (`filter.rs`), one hint encoded once (`hint.rs`), and the SSE and
//!   WebSocket transports (`sse.rs`, `ws.rs`). It reads the journal; only
//!   the proxy's router calls it.
//! - [`admin`]: the admin port: stats, events and their SSE stream, manual
//!   invalidation, metrics, probes, and the live page (`page.html`).
//! - [`invalidate`]: the door (`mod.rs`), what it names (`target.rs`),
//!   change detection (`detect.rs`),
//!   known game state (`known.rs`), the event journal (`events.rs`), the
//!   wire format (`wire.rs`) and the Redis tier (`redis.rs`, with
//!   `redis/conn.rs`, `registry.rs`, `state.rs`, `fleet.rs` and the event
//!   log in `redis/fanout.rs`, `fanout/outbox.rs`, `fanout/reader.rs`).
//! - [`cache`]: the L1 (`store.rs`, its tag index `tags.rs`, its fill lock
//!   `lock.rs`), entries (`entry.rs`, sharing `intern.rs`), the freshness
//!   rule every serving path obeys (`freshness.rs`), keys (`key.rs`), the
//!   L2 encoding (`l2.rs`), what an answer says about the cache
//!   (`outcome/`: one `Outcome` yields `X-Cache`, `Cache-Status` and the
//!   metric label) and the HTTP caching rules (`policy/`).
//! - [`watch`]: pure extraction of games from JSON bodies and diffing.
//! - [`config`]: the TOML contract, CLI/env overrides and validation.
//! - [`metrics`], [`shutdown`], [`query`], [`event_stream`]: shared by all.
//! - [`demo`]: the built-in reference odds API simulator, its browsing load
//!   and its example page.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cache;
pub mod config;
pub mod demo;
pub mod event_stream;
pub mod invalidate;
pub mod metrics;
pub mod proxy;
pub mod push;
pub mod query;
pub mod server;
pub mod shutdown;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;

/// The sockets `run` serves, bound by the caller so tests can use
/// `127.0.0.1:0` and `main` can fail before anything starts.
pub struct Listeners {
    pub proxy: TcpListener,
    /// The admin port (SPEC §7); `None` serves no admin API.
    pub admin: Option<TcpListener>,
}

/// Errors that stop the sidecar from starting. A config that passed
/// `Config::load` meets none of them but the Redis one (a URL the client
/// library refuses).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid configuration: {key}: {source}")]
    Redis {
        key: &'static str,
        source: invalidate::redis::RedisError,
    },
    #[error("invalid configuration: {0}")]
    Watch(#[from] watch::WatchConfigError),
    #[error("invalid configuration: {0}")]
    Proxy(#[from] proxy::ProxyError),
}

/// The sidecar's parts behind the listeners, wired as `run` wires them:
/// the L1 store, the Redis tier and its subscriber, the invalidation door
/// and the change detector. Tests and benchmarks build replicas from it.
pub struct Core {
    pub metrics: Arc<metrics::Metrics>,
    pub store: Arc<cache::Store>,
    pub redis: Option<Arc<invalidate::redis::RedisTier>>,
    pub invalidator: Arc<invalidate::Invalidator>,
    pub detector: Arc<invalidate::detect::Detector>,
}

impl Core {
    /// Builds the parts; Redis connects in the background until `signal`.
    pub fn start(config: &Config, signal: shutdown::Signal) -> Result<Core, RunError> {
        let metrics = metrics::Metrics::new();
        let store = Arc::new(cache::Store::new(config.cache.max_bytes.bytes()));
        store.spawn_expirer(signal.clone());
        // Distinguishes this process from another with the same replica id
        // (one hostname), so each applies the other's events.
        let instance = format!("{:016x}", rand::random::<u64>());
        let redis = match config.redis_enabled() {
            Some(rc) => Some({
                store
                    .ledger()
                    .set_outage_bound(rc.outage_max_staleness.get());
                // Nothing covers the time before the log is first read.
                store.ledger().join_fleet();
                invalidate::redis::RedisTier::start(
                    rc,
                    (&config.replica_id, &instance),
                    Arc::clone(&store),
                    Arc::clone(&metrics),
                    signal.clone(),
                )
                .map_err(|source| RunError::Redis {
                    key: match rc.mode {
                        config::RedisMode::Standalone => "redis.url",
                        config::RedisMode::Cluster | config::RedisMode::Sentinel => "redis.urls",
                    },
                    source,
                })?
            }),
            None => None,
        };
        let known = invalidate::known::known_games();
        let invalidator = Arc::new(invalidate::Invalidator::new(
            config,
            Arc::clone(&store),
            Arc::clone(&metrics),
            redis.clone(),
            known.clone(),
            instance,
        ));
        if let Some(redis) = &redis {
            redis.spawn_subscriber(Arc::clone(&invalidator), signal);
        }
        let rules = watch::WatchRules::new(&config.watch)?;
        let detector = Arc::new(invalidate::detect::Detector::new(
            rules,
            config.cache.ttl_by_status,
            known,
            Arc::clone(&invalidator),
            Arc::clone(&metrics),
            // Decoded bodies get the same bound as stored ones, times a
            // margin for compression.
            config.cache.max_object_bytes.as_usize().saturating_mul(8),
        ));
        Ok(Core {
            metrics,
            store,
            redis,
            invalidator,
            detector,
        })
    }
}

/// Runs the sidecar until `shutdown` resolves, then drains in-flight
/// requests for up to `proxy.shutdown_grace`.
pub async fn run<F>(config: Config, listeners: Listeners, shutdown: F) -> Result<(), RunError>
where
    F: Future<Output = ()> + Send,
{
    Sidecar::new(config)?.serve(listeners, shutdown).await;
    Ok(())
}

/// A sidecar built from its config but not yet serving: what [`run`] does
/// in two steps, so a caller can keep a [`Handle`] on its internals.
pub struct Sidecar {
    config: Config,
    proxy: Arc<proxy::Proxy>,
    invalidator: Arc<invalidate::Invalidator>,
    metrics: Arc<metrics::Metrics>,
    upstream_health: Arc<proxy::upstream::UpstreamHealth>,
    /// Fired after the caller's shutdown future resolves; the background
    /// tasks started by `new` listen on its signal.
    trigger: shutdown::Trigger,
    signal: shutdown::Signal,
}

/// Read-only views into a running sidecar, for tests and embedders.
#[derive(Clone)]
pub struct Handle {
    admission: Option<Arc<proxy::admit::Admission>>,
}

impl Handle {
    /// Client IPs the rate limiter holds a bucket for; `None` without
    /// `[rate_limit]`.
    pub fn rate_limiter_keys(&self) -> Option<usize> {
        self.admission.as_ref().map(|a| a.len())
    }

    /// Drops the rate limiter's full buckets now, as its background task
    /// does every few seconds.
    pub fn prune_rate_limiter(&self) {
        if let Some(a) = &self.admission {
            a.prune();
        }
    }
}

impl Sidecar {
    /// Builds every part and starts the background tasks (Redis, the rate
    /// limiter's pruning); binds nothing. Needs a Tokio runtime.
    pub fn new(config: Config) -> Result<Sidecar, RunError> {
        let (trigger, signal) = shutdown::channel();
        let Core {
            metrics,
            store,
            redis,
            invalidator,
            detector,
            ..
        } = Core::start(&config, signal.clone())?;
        let push = config.push.as_ref().map(|pc| {
            push::Push::start(
                pc,
                Arc::clone(&invalidator),
                metrics.push.clone(),
                signal.clone(),
            )
        });
        let proxy = proxy::Proxy::new(
            &config,
            Arc::clone(&store),
            Arc::clone(&metrics),
            detector,
            redis,
            push,
        )?;
        if let Some(admission) = proxy.admission() {
            admission.spawn_pruner(signal.clone());
        }
        Ok(Sidecar {
            upstream_health: proxy.upstream_health(),
            proxy: Arc::new(proxy),
            config,
            invalidator,
            metrics,
            trigger,
            signal,
        })
    }

    pub fn handle(&self) -> Handle {
        Handle {
            admission: self.proxy.admission().cloned(),
        }
    }

    /// Serves `listeners` until `shutdown` resolves, then drains in-flight
    /// requests for up to `proxy.shutdown_grace`.
    pub async fn serve<F>(self, listeners: Listeners, shutdown: F)
    where
        F: Future<Output = ()> + Send,
    {
        let Sidecar {
            config,
            proxy,
            invalidator,
            metrics,
            upstream_health,
            trigger,
            signal,
        } = self;
        let limits = server::HttpLimits {
            max_header_bytes: config.proxy.max_header_bytes.as_usize(),
            header_read_timeout: config.proxy.header_read_timeout.get(),
            max_connections: config.proxy.max_connections,
            send_timeout: Some(config.proxy.send_timeout.get()).filter(|t| !t.is_zero()),
        };
        let proxy_connections = metrics.proxy_connections.clone();
        let grace = config.proxy.shutdown_grace.get();
        let redis = invalidator.redis().cloned();
        let proxy_server = tokio::spawn(server::serve(
            "proxy",
            listeners.proxy,
            move |peer| {
                let proxy = Arc::clone(&proxy);
                hyper::service::service_fn(move |req| proxy.call(req, peer))
            },
            limits,
            Some(proxy_connections),
            signal.clone(),
            grace,
        ));
        let admin_server = listeners.admin.map(|listener| {
            let admin = Arc::new(admin::Admin::new(
                &config,
                invalidator,
                metrics,
                upstream_health,
                signal.clone(),
            ));
            tokio::spawn(server::serve(
                "admin",
                listener,
                move |peer| {
                    let admin = Arc::clone(&admin);
                    hyper::service::service_fn(move |req| Arc::clone(&admin).serve(req, peer))
                },
                limits,
                None,
                signal.clone(),
                grace,
            ))
        });
        shutdown.await;
        tracing::info!("shutdown requested");
        trigger.fire();
        let _ = proxy_server.await;
        if let Some(admin_server) = admin_server {
            let _ = admin_server.await;
        }
        // Invalidations found before the signal still go to the fleet.
        if let Some(redis) = redis {
            redis.finish().await;
        }
    }
}
