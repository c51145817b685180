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
//!   restart or failover) does it resync: it drops its tagged L1 entries
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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::{oneshot, Notify};

use super::{Backend, RedisError, RedisTier};
use crate::cache::store::FetchTicket;
use crate::invalidate::{wire, Invalidator};
use crate::shutdown;

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

/// One event on its way to the log.
pub struct Pending {
    /// Tags and `game_key_patterns` keys whose Redis side is deleted first.
    pub tags: Vec<String>,
    pub patterns: Vec<String>,
    pub msg: wire::Message,
    /// Keeps copies read back from the L2 older than this invalidation until
    /// its Redis deletion is done (see `Ledger::begin_hold`).
    pub hold: Option<FetchTicket>,
    /// Told the number of Redis keys deleted once the event is in the log.
    pub done: Option<oneshot::Sender<u64>>,
    /// Its Redis deletion is done (a retry only appends), and how many.
    pub deleted: bool,
    pub deleted_count: u64,
    /// Failed deliveries so far.
    pub tries: u32,
}

impl Pending {
    pub fn new(msg: wire::Message, tags: Vec<String>, patterns: Vec<String>) -> Pending {
        Pending {
            tags,
            patterns,
            msg,
            hold: None,
            done: None,
            deleted: false,
            deleted_count: 0,
            tries: 0,
        }
    }
}

/// What overflowed events leave to do: their Redis deletions, done before
/// the resync is appended, so L2 copies and other producers' keys of a
/// dropped event go too.
#[derive(Default)]
struct Lost {
    tags: std::collections::HashSet<String>,
    patterns: std::collections::HashSet<String>,
    /// More than [`LOST_CAP`] were dropped: readers' resync also refuses
    /// every L2 copy older than it, which covers the copies; other
    /// producers' keys of those events stay until their TTL.
    incomplete: bool,
}

/// Tags and patterns of overflowed events remembered at most.
const LOST_CAP: usize = 50_000;
/// Tries after which an event's hold on L2 reads is let go, so one event
/// that cannot be delivered does not pin the ledger.
const HOLD_TRIES: u32 = 50;

/// Events that the log has not taken yet, oldest first.
pub struct Outbox {
    queue: Mutex<VecDeque<Pending>>,
    capacity: usize,
    /// Events were dropped: a `resync` goes first when Redis returns.
    overflowed: AtomicBool,
    lost: Mutex<Lost>,
    wake: Notify,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: Mutex::default(),
            capacity: capacity.max(1),
            overflowed: AtomicBool::new(false),
            lost: Mutex::default(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event; `false` when the queue was full, and was replaced
    /// by a resync that covers everything it held.
    pub fn push(&self, p: Pending) -> bool {
        let mut q = self.lock();
        let room = q.len() < self.capacity;
        if room {
            q.push_back(p);
        } else {
            // Every queued event, and this one, is covered by the resync;
            // their Redis deletions are kept to be done before it.
            let dropped: Vec<Pending> = q.drain(..).chain([p]).collect();
            drop(q);
            for d in dropped {
                if !d.deleted {
                    self.lose(d.tags, d.patterns);
                }
            }
            // Set once the deletions are remembered, so the resync that
            // clears the flag finds them.
            self.overflowed.store(true, Ordering::SeqCst);
            self.wake.notify_one();
            return false;
        }
        drop(q);
        self.wake.notify_one();
        room
    }

    /// Remembers a dropped event's Redis deletions for the resync.
    fn lose(&self, tags: Vec<String>, patterns: Vec<String>) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        for t in tags {
            if lost.tags.len() + lost.patterns.len() < LOST_CAP {
                lost.tags.insert(t);
            } else {
                lost.incomplete = true;
            }
        }
        for k in patterns {
            if lost.tags.len() + lost.patterns.len() < LOST_CAP {
                lost.patterns.insert(k);
            } else {
                lost.incomplete = true;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the log is read from, and what has been applied.
struct Reader {
    conn: MultiplexedConnection,
    /// The node, for the logs.
    node: String,
    sentinel: bool,
    role_checked: Instant,
}

impl RedisTier {
    pub fn events_key(&self) -> String {
        format!("{}events", self.prefix)
    }

    pub fn replica_key(&self, replica: &str) -> String {
        format!("{}replica:{replica}", self.prefix)
    }

    /// How long an invalidation waits for the log to take its event before
    /// it answers anyway (the event stays queued).
    pub fn delivery_wait(&self) -> Duration {
        self.timeout * 4
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Appends one message to the log at once, bypassing the outbox (tests
    /// and tools that write events of their own).
    pub async fn publish(&self, msg: &wire::Message) -> Result<(), RedisError> {
        self.append(msg).await
    }

    /// Queues `p` for the log; see [`Outbox`].
    pub fn enqueue(&self, p: Pending) {
        if !self.outbox.push(p) {
            self.metrics.outbox_overflows.inc();
            tracing::error!(
                capacity = self.outbox.capacity,
                "the invalidation outbox overflowed while Redis could not take events; a resync event will flush every replica's tagged entries when it returns"
            );
        }
        self.metrics.outbox_events.set(self.outbox.len() as i64);
    }

    /// Appends queued events in order until `shutdown`, each retried until
    /// the log has it. On shutdown, what is queued gets [`SHUTDOWN_DRAIN`]
    /// more to reach the log.
    pub(super) async fn drain_outbox(self: Arc<Self>, mut shutdown: shutdown::Signal) {
        loop {
            // Not raced against the shutdown: an event being delivered is
            // off the queue, and cancelling its delivery would lose it.
            // Each delivery is bounded by its commands' timeouts.
            self.drain_once().await;
            tokio::select! {
                _ = self.outbox.wake.notified() => {}
                _ = tokio::time::sleep(RETRY_EVERY) => {}
                _ = shutdown.recv() => break,
            }
        }
        if self.outbox.is_empty() && !self.outbox.overflowed.load(Ordering::SeqCst) {
            return;
        }
        // The probe has stopped with the rest: this loop replaces a command
        // connection that does not answer itself.
        let queued = self.outbox.len();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
        let sentinel = matches!(self.backend, Backend::Sentinel(_));
        let drained = tokio::time::timeout_at(deadline, async {
            loop {
                if !self.healthy.load(Ordering::Relaxed) {
                    let _ = self.replace_connection(sentinel).await;
                }
                if self.drain_once().await {
                    return;
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
        })
        .await;
        match drained {
            Ok(()) => tracing::info!(queued, "appended the queued invalidations before exiting"),
            Err(_) => tracing::error!(
                left = self.outbox.len(),
                "exiting with invalidations Redis did not take; peers rely on their TTLs for them"
            ),
        }
    }

    /// Delivers queued events in order until the queue is empty (`true`)
    /// or one cannot be delivered now (`false`; it stays at the front).
    async fn drain_once(&self) -> bool {
        loop {
            // Taken before the append, so an overflow during it is not
            // wiped out when it succeeds.
            if self.outbox.overflowed.swap(false, Ordering::SeqCst) {
                if let Err(e) = self.append_resync().await {
                    self.outbox.overflowed.store(true, Ordering::SeqCst);
                    tracing::debug!(error = %e, "cannot append the resync event yet");
                    return false;
                }
            }
            let next = self.outbox.lock().pop_front();
            let Some(mut p) = next else {
                self.metrics.outbox_events.set(0);
                return true;
            };
            match self.deliver(&mut p).await {
                Ok(deleted) => {
                    if let Some(done) = p.done.take() {
                        let _ = done.send(deleted);
                    }
                    self.metrics.outbox_events.set(self.outbox.len() as i64);
                }
                Err(e) => {
                    tracing::debug!(error = %e, queued = self.outbox.len() + 1, "cannot append an invalidation yet; it stays queued");
                    p.tries += 1;
                    if p.tries >= HOLD_TRIES {
                        p.hold = None;
                    }
                    // Back at the front, unless an overflow meanwhile
                    // replaced the queue with a resync that covers it; its
                    // Redis deletions then wait for the resync too.
                    if self.outbox.overflowed.load(Ordering::SeqCst) {
                        if !p.deleted {
                            self.outbox.lose(p.tags, p.patterns);
                        }
                    } else {
                        self.outbox.lock().push_front(p);
                    }
                    return false;
                }
            }
        }
    }

    /// After an overflow: the dropped events' Redis deletions, then one
    /// `resync` event that every replica applies as a flush.
    async fn append_resync(&self) -> Result<(), RedisError> {
        let lost = std::mem::take(&mut *self.outbox.lost.lock().unwrap_or_else(|p| p.into_inner()));
        let tags: Vec<String> = lost.tags.into_iter().collect();
        let patterns: Vec<String> = lost.patterns.into_iter().collect();
        let done = async {
            // A deletion Redis refuses for good is logged and passed over,
            // as `deliver` does: it must not hold the outbox for ever.
            let skip_permanent = |r: Result<super::Deleted, RedisError>| match r {
                Err(e) if permanent(&e) => {
                    tracing::error!(error = %e, "Redis refused to delete some keys of overflowed invalidations; appending the resync anyway");
                    Ok(())
                }
                other => other.map(|_| ()),
            };
            for chunk in tags.chunks(1000) {
                skip_permanent(self.delete(chunk, &[]).await)?;
            }
            for chunk in patterns.chunks(1000) {
                skip_permanent(self.delete(&[], chunk).await)?;
            }
            self.append(&wire::Message::resync(&self.replica, &self.instance))
                .await
        }
        .await;
        if let Err(e) = done {
            // Kept for the next try, with what overflowed meanwhile.
            self.outbox.lose(tags, patterns);
            if lost.incomplete {
                self.outbox
                    .lost
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .incomplete = true;
            }
            return Err(e);
        }
        if lost.incomplete {
            tracing::error!("more invalidations overflowed than their deletions can be remembered; other producers' keys of some of them stay until their TTL");
        }
        Ok(())
    }

    /// Deletes the event's Redis keys, then appends it: the deletion comes
    /// first so a peer that applies the event finds the L2 copies gone. A
    /// deletion Redis refuses for good (a key of another type under a
    /// registry name, say) is logged and the event goes out anyway: peers'
    /// L1 copies are the ones clients see.
    async fn deliver(&self, p: &mut Pending) -> Result<u64, RedisError> {
        if !p.deleted {
            match self.delete(&p.tags, &p.patterns).await {
                Ok(deleted) => {
                    if p.msg.keys.is_empty() {
                        p.msg.keys = deleted.cache_keys;
                    }
                    p.msg.event.keys_deleted =
                        p.msg.event.keys_deleted.saturating_add(deleted.deleted);
                    p.deleted_count = deleted.deleted;
                }
                Err(e) if permanent(&e) => {
                    tracing::error!(error = %e, tags = ?p.tags, "Redis refused to delete an invalidation's keys; appending the event anyway");
                }
                Err(e) => return Err(e),
            }
            p.deleted = true;
        }
        self.append(&p.msg).await?;
        p.hold = None;
        Ok(p.deleted_count)
    }

    /// `XADD` one message; with Sentinel or Cluster, then `WAIT` for one
    /// replica to have it, on the same connection to the log's primary.
    /// The append is sent once: a `WAIT` that counts no replica is asked
    /// again, not the event appended again.
    async fn append(&self, msg: &wire::Message) -> Result<(), RedisError> {
        let payload = wire::encode(msg);
        let mut add = redis::cmd("XADD");
        add.arg(self.events_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.events_max_len)
            .arg("*")
            .arg("m")
            .arg(&payload);
        let mut conn = match &self.backend {
            Backend::Standalone(_) => {
                let mut conn = self.manager().ok_or(RedisError::NotConnected)?;
                self.bounded(&mut conn, &add, self.timeout).await?;
                return Ok(());
            }
            Backend::Sentinel(_) => {
                let mut conn = self.manager().ok_or(RedisError::NotConnected)?;
                self.bounded(&mut conn, &add, self.timeout).await?;
                LogConn::Shared(conn)
            }
            Backend::Cluster { .. } => {
                let mut conn = self.log_writer().await?;
                let sent =
                    tokio::time::timeout(self.timeout, add.query_async::<Value>(&mut conn)).await;
                match sent {
                    Ok(Ok(_)) => LogConn::Owner(conn),
                    other => {
                        *self.writer.lock().await = None;
                        return Err(match other {
                            Ok(Err(e)) => e.into(),
                            _ => RedisError::Timeout(self.timeout),
                        });
                    }
                }
            }
        };
        // A primary without replicas has nobody to wait for (a cluster or
        // a sentinel set run without them, or just after a failover):
        // asked with ROLE on the same connection, one round trip.
        let role_reply = match &mut conn {
            LogConn::Shared(c) => self.bounded(c, &redis::cmd("ROLE"), self.timeout).await?,
            LogConn::Owner(c) => {
                match tokio::time::timeout(self.timeout, redis::cmd("ROLE").query_async::<Value>(c))
                    .await
                {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(RedisError::Timeout(self.timeout)),
                }
            }
        };
        if replicas_of(&role_reply) == Some(0) {
            if !self.warned_no_replica.swap(true, Ordering::Relaxed) {
                tracing::warn!("the log's primary has no replica: events count as delivered once it has them, and a failover could lose the newest");
            }
            return Ok(());
        }
        self.warned_no_replica.store(false, Ordering::Relaxed);
        // Short waits: WAIT holds the connection's other replies behind it.
        let ms = u64::try_from((self.timeout / 5).as_millis())
            .unwrap_or(50)
            .max(10);
        for attempt in 1..=WAIT_TRIES {
            let mut wait = redis::cmd("WAIT");
            wait.arg(1).arg(ms);
            let acked = match &mut conn {
                LogConn::Shared(c) => self.bounded(c, &wait, self.timeout).await?,
                LogConn::Owner(c) => {
                    match tokio::time::timeout(self.timeout, wait.query_async::<Value>(c)).await {
                        Ok(Ok(v)) => v,
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => return Err(RedisError::Timeout(self.timeout)),
                    }
                }
            };
            if matches!(acked, Value::Int(n) if n >= 1) {
                return Ok(());
            }
            tracing::debug!(
                attempt,
                "no Redis replica has acknowledged an invalidation event yet"
            );
        }
        // The primary has no replica that keeps up (after a failover, until
        // the old primary rejoins): waiting longer would stall every event
        // behind this one. Logged, and counted as an error.
        self.metrics.redis_errors.inc();
        tracing::warn!("an invalidation event is in the log, but no replica acknowledged it: a failover now could lose it");
        Ok(())
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

    /// Reads the log and applies peers' events until `shutdown`.
    pub fn spawn_subscriber(
        self: &Arc<Self>,
        invalidator: Arc<Invalidator>,
        shutdown: shutdown::Signal,
    ) {
        let tier = Arc::clone(self);
        tokio::spawn(async move { tier.read_loop(invalidator, shutdown).await });
    }

    async fn read_loop(
        self: Arc<Self>,
        invalidator: Arc<Invalidator>,
        mut shutdown: shutdown::Signal,
    ) {
        let mut last: Option<String> = None;
        let mut attempt = 0usize;
        let mut backoff = Duration::from_millis(50);
        loop {
            let connected = tokio::select! {
                r = self.open_reader(attempt) => r,
                _ = shutdown.recv() => return,
            };
            match connected {
                Ok(mut reader) => match self.resume(&mut reader, &invalidator, &mut last).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(50);
                        self.subscribed.store(true, Ordering::Relaxed);
                        self.publish_up();
                        tracing::info!(node = %reader.node, from = last.as_deref().unwrap_or(""), "reading the invalidation log");
                        let why = tokio::select! {
                            e = self.follow(&mut reader, &invalidator, &mut last) => e,
                            _ = shutdown.recv() => return,
                        };
                        tracing::warn!(error = %why, node = %reader.node, "lost the invalidation log; serving from L1 (within outage_max_staleness) and upstream while reconnecting");
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot resume the invalidation log"),
                },
                Err(e) => tracing::debug!(error = %e, "cannot reach the invalidation log"),
            }
            self.subscribed.store(false, Ordering::Relaxed);
            self.publish_up();
            self.metrics.redis_errors.inc();
            attempt = attempt.wrapping_add(1);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.recv() => return,
            }
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Decides where reading goes on from: the last applied entry when the
    /// log still has it; otherwise a resync, and the log's head. The first
    /// time, entries stored before the log was reachable are dropped too:
    /// nothing covers the time before.
    async fn resume(
        &self,
        reader: &mut Reader,
        invalidator: &Invalidator,
        last: &mut Option<String>,
    ) -> Result<(), RedisError> {
        let key = self.events_key();
        let gap = match last.as_deref() {
            Some(id) => {
                let mut probe = redis::cmd("XRANGE");
                probe.arg(&key).arg(id).arg(id);
                let found = self.read_cmd(reader, &probe).await?;
                !matches!(found, Value::Array(ref v) if !v.is_empty())
            }
            None => true,
        };
        if !gap {
            return Ok(());
        }
        let mut head = redis::cmd("XREVRANGE");
        head.arg(&key).arg("+").arg("-").arg("COUNT").arg(1);
        let newest = entry_ids(&self.read_cmd(reader, &head).await?);
        let head = match newest.into_iter().next() {
            Some(id) => id,
            // An empty log: a marker gives the next reconnection an entry
            // to find, so a log lost meanwhile is told from an empty one.
            None => {
                let mut mark = redis::cmd("XADD");
                mark.arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.events_max_len)
                    .arg("*")
                    .arg("mark")
                    .arg(&*self.replica);
                match self.read_cmd(reader, &mark).await? {
                    Value::BulkString(id) => String::from_utf8_lossy(&id).into_owned(),
                    Value::SimpleString(id) => id,
                    other => return Err(RedisError::Decode(format!("XADD answered {other:?}"))),
                }
            }
        };
        let why = if last.is_some() { "gap" } else { "start" };
        let dropped = invalidator.resync(why);
        if why == "gap" {
            tracing::warn!(dropped, last = last.as_deref().unwrap_or(""), head = %head, "the invalidation log no longer holds the last entry this replica applied (trimmed, or lost in a Redis restart or failover); dropped tagged L1 entries and known game states");
        }
        *last = Some(head);
        Ok(())
    }

    /// Reads and applies entries until the connection fails or the slot
    /// moves; returns why it stopped.
    async fn follow(
        &self,
        reader: &mut Reader,
        invalidator: &Invalidator,
        last: &mut Option<String>,
    ) -> RedisError {
        let key = self.events_key();
        let block_ms = u64::try_from(BLOCK.as_millis()).unwrap_or(1000);
        loop {
            let from = last.clone().unwrap_or_else(|| "0-0".to_owned());
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&key)
                .arg(&from);
            let reply = match self.read_cmd(reader, &read).await {
                Ok(v) => v,
                Err(e) => return e,
            };
            let entries = stream_entries(&reply);
            if entries.len() >= READ_COUNT {
                // Far behind: trimming may have passed this replica by.
                match self.trimmed_past(reader, &from).await {
                    Ok(false) => {}
                    Ok(true) => {
                        let dropped = invalidator.resync("gap");
                        tracing::warn!(dropped, last = %from, "the invalidation log was trimmed past this replica's last entry while it caught up; dropped tagged L1 entries and known game states");
                    }
                    Err(e) => return e,
                }
            }
            let caught_up = entries.len() < READ_COUNT;
            for (id, fields) in entries {
                if let Some(payload) = fields {
                    match wire::decode(&payload) {
                        Ok(msg) => {
                            invalidator.apply_logged(msg);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, id = %id, "ignored a malformed invalidation event")
                        }
                    }
                }
                *last = Some(id);
            }
            if caught_up {
                invalidator.store().ledger().caught_up(Instant::now());
            }
            self.confirm(last.as_deref()).await;
            if reader.sentinel && reader.role_checked.elapsed() >= ROLE_EVERY {
                reader.role_checked = Instant::now();
                match self.read_cmd(reader, &redis::cmd("ROLE")).await {
                    Ok(r) if role(&r) == Role::Primary => {}
                    Ok(_) => {
                        return RedisError::Decode("the log's node is no longer a primary".into())
                    }
                    Err(e) => return e,
                }
            }
        }
    }

    /// Whether entries after `from` may have been trimmed away: the log's
    /// oldest entry is newer than `from` (trimming moves only the start, so
    /// `max-deleted-entry-id` does not see it). When `from` itself was the
    /// last trimmed this is a resync that was not needed; that costs a
    /// refetch, never a stale read.
    async fn trimmed_past(&self, reader: &mut Reader, from: &str) -> Result<bool, RedisError> {
        let mut first = redis::cmd("XRANGE");
        first
            .arg(self.events_key())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let reply = self.read_cmd(reader, &first).await?;
        let oldest = entry_ids(&reply).into_iter().next();
        Ok(
            match (oldest.as_deref().and_then(stream_id), stream_id(from)) {
                (Some(o), Some(f)) => o > f,
                _ => false,
            },
        )
    }

    /// Writes `{prefix}replica:{id}`: the last applied entry and when.
    async fn confirm(&self, last: Option<&str>) {
        let Some(last) = last else {
            return;
        };
        let now = Instant::now();
        {
            let mut at = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
            if at.is_some_and(|t| now.duration_since(t) < BLOCK) {
                return;
            }
            *at = Some(now);
        }
        let value = serde_json::json!({
            "last_event_id": last,
            "seen_at_ms": super::unix_ms(std::time::SystemTime::now()),
            "instance": &*self.instance,
        })
        .to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.replica_key(&self.replica))
            .arg(value)
            .arg("EX")
            .arg(REPLICA_TTL.as_secs())
            .ignore();
        pipe.cmd("ZADD")
            .arg(self.replicas_key())
            .arg(super::unix_ms(std::time::SystemTime::now()))
            .arg(&*self.replica)
            .ignore();
        pipe.cmd("EXPIRE")
            .arg(self.replicas_key())
            .arg(REPLICA_TTL.as_secs() * 2)
            .ignore();
        if let Err(e) = self.query::<()>(&pipe).await {
            tracing::debug!(error = %e, "cannot refresh this replica's confirmation");
        }
    }

    /// A command on the reader's connection, which fails if no reply has
    /// come `liveness_timeout` after it was due.
    async fn read_cmd(&self, reader: &mut Reader, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let within = BLOCK + self.liveness;
        match tokio::time::timeout(within, cmd.query_async::<Value>(&mut reader.conn)).await {
            Err(_) => Err(RedisError::Timeout(within)),
            Ok(r) => Ok(r?),
        }
    }

    /// Where reading starts: the server, the primary the sentinels name,
    /// or in a cluster the next seed in turn, followed to the log's owner.
    async fn open_reader(&self, attempt: usize) -> Result<Reader, RedisError> {
        // Short, so that attempts during a partition end soon after it does.
        let within = self
            .liveness
            .clamp(Duration::from_millis(200), Duration::from_secs(1));
        let open = async {
            let (client, cluster, sentinel) = match &self.backend {
                Backend::Standalone(client) => (client.clone(), false, false),
                Backend::Cluster { seeds, .. } => {
                    (seeds[attempt % seeds.len()].clone(), true, false)
                }
                Backend::Sentinel(_) => (self.sentinel_primary().await?.0, false, true),
            };
            self.owner(client, cluster, sentinel, within).await
        };
        tokio::time::timeout(within * 2, open)
            .await
            .map_err(|_| RedisError::Timeout(within * 2))?
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
