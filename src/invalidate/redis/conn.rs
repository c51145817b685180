//! The command connection, whichever the deployment: one server, a
//! Sentinel-managed primary, or a cluster ([`Conn`]); its health probe,
//! which follows a failover and replaces a silent connection; and the
//! timed, health-gated query helpers the rest of the tier sends through.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;

use super::{fanout, RedisError, RedisTier, BULK_TIMEOUT_FACTOR, REPLACE_EVERY};
use crate::shutdown;

/// Where the commands go.
pub(super) enum Backend {
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

impl RedisTier {
    pub(super) async fn connect_loop(self: Arc<Self>, mut shutdown: shutdown::Signal) {
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
    pub(super) async fn open(&self) -> Result<Conn, RedisError> {
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
    pub(super) async fn manage(
        &self,
        client: &redis::Client,
    ) -> Result<ConnectionManager, RedisError> {
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
    pub(super) async fn sentinel_primary(&self) -> Result<(redis::Client, String), RedisError> {
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
    pub(super) async fn probe(&self, conn: &mut Conn, sentinel: bool) -> bool {
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
    pub(super) async fn follow_failover(&self) -> bool {
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
    pub(super) async fn probe_loop(self: Arc<Self>, mut shutdown: shutdown::Signal) {
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

    pub(super) fn manager(&self) -> Option<Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn connection(&self) -> Result<Conn, RedisError> {
        if !self.healthy.load(Ordering::Relaxed) {
            return Err(RedisError::NotConnected);
        }
        self.manager().ok_or(RedisError::NotConnected)
    }

    /// Runs one round trip under `command_timeout`, counting failures; fails
    /// at once while Redis is unhealthy. For the fill path's work, which has
    /// a local fallback.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let conn = self.connection()?;
        self.round_trip(conn, pipe, self.timeout).await
    }

    /// Like `query`, but tried even while Redis looks unhealthy: deleting
    /// and publishing an invalidation is worth a `command_timeout`, since a
    /// peer that misses it would serve stale odds.
    pub(super) async fn query_always<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let conn = self.manager().ok_or(RedisError::NotConnected)?;
        self.round_trip(conn, pipe, self.timeout).await
    }

    /// For a tag's whole registry (100k members is a 4 MB reply): a healthy
    /// Redis gets `BULK_TIMEOUT_FACTOR` times `command_timeout`, an
    /// unhealthy one no more than any other command.
    pub(super) async fn query_bulk<T: redis::FromRedisValue>(
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

    pub(super) async fn round_trip<T: redis::FromRedisValue>(
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

    pub(super) fn failed(&self, e: &RedisError) {
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
    pub(super) fn publish_up(&self) {
        let up = self.healthy.load(Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed);
        self.metrics.redis_up.set(i64::from(up));
    }
}
