//! The tag registry and the shared L2: the queued writer that files each
//! stored entry under its tags (and copies it, with `store_responses`),
//! the reads of L2 copies, and the deletion an invalidation runs before
//! its event goes to the log.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;

use super::{RedisError, RedisTier, BATCH, UNLINK_CHUNK};
use crate::cache::store::is_local_tag;
use crate::cache::{l2, Entry};
use crate::invalidate::events::unix_ms;
use crate::invalidate::wire;
use crate::shutdown;

/// What a deletion removed.
#[derive(Debug, Default)]
pub struct Deleted {
    pub deleted: u64,
    /// Cache keys among the registry members, for peers.
    pub cache_keys: Vec<String>,
}

/// A stored entry on its way to Redis: its registry memberships and, with
/// `store_responses`, its L2 copy.
pub(super) struct Registration {
    key: Arc<str>,
    tags: Box<[Arc<str>]>,
    entry: Option<Arc<Entry>>,
    fetch_began: Instant,
}

impl RedisTier {
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
    pub(super) fn l2_value(
        &self,
        entry: &Arc<Entry>,
        fetch_began: Instant,
    ) -> Option<(Vec<u8>, u64)> {
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

    pub(super) async fn write_registrations(
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
}
