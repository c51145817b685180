//! Writing the log: the in-order [`Outbox`] of events that Redis has not
//! taken yet, and the task that drains it (delete the event's keys, append
//! it, wait for a replica with Sentinel or Cluster), replacing an
//! overflowed queue with one `resync` event. See the parent's header.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::*;
use crate::cache::store::FetchTicket;

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

impl RedisTier {
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
    pub(in crate::invalidate::redis) async fn drain_outbox(
        self: Arc<Self>,
        mut shutdown: shutdown::Signal,
    ) {
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
    pub(in crate::invalidate::redis) async fn drain_once(&self) -> bool {
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
    pub(in crate::invalidate::redis) async fn append_resync(&self) -> Result<(), RedisError> {
        let lost = std::mem::take(&mut *self.outbox.lost.lock().unwrap_or_else(|p| p.into_inner()));
        let tags: Vec<String> = lost.tags.into_iter().collect();
        let patterns: Vec<String> = lost.patterns.into_iter().collect();
        let done = async {
            // A deletion Redis refuses for good is logged and passed over,
            // as `deliver` does: it must not hold the outbox for ever.
            let skip_permanent = |r: Result<crate::invalidate::redis::Deleted, RedisError>| match r {
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
    pub(in crate::invalidate::redis) async fn deliver(
        &self,
        p: &mut Pending,
    ) -> Result<u64, RedisError> {
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
    pub(in crate::invalidate::redis) async fn append(
        &self,
        msg: &wire::Message,
    ) -> Result<(), RedisError> {
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
}
