//! Confirmation (SPEC §6, §7 `fleet`): which replica has applied which
//! event of the log, and how far behind it is.
//!
//! Each replica's reader writes `{prefix}replica:{replica_id}` every second
//! (see `fanout::confirm`) and files its id in `{prefix}replicas`, a sorted
//! set scored by when it last did, so the live ones can be listed without
//! scanning the keyspace. A background task here reads them every
//! [`WATCH_EVERY`], works out each one's lag against the log, keeps the
//! view for the admin port (whose reads never reach Redis) and sets
//! `oddscache_fleet_lag_seconds` to the worst lag.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use serde::{Deserialize, Serialize};

use super::fanout::{stream_id, REPLICA_TTL};
use super::{unix_ms, RedisError, RedisTier};
use crate::shutdown;

/// How often the fleet's confirmations are read.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);
/// Entries counted behind a replica at most.
const MAX_BEHIND: usize = 1000;

/// What the admin port answers for `GET /api/v1/shared/cache/fleet`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FleetView {
    /// The log's newest entry, if Redis has been read.
    pub head: Option<String>,
    pub replicas: Vec<ReplicaLag>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicaLag {
    pub replica: String,
    pub last_event_id: String,
    /// Log entries after the last one it applied (at most 1000 counted).
    pub behind_events: u64,
    /// How long the oldest entry it has not applied has waited; 0 when it
    /// is caught up.
    pub behind_ms: u64,
    /// RFC 3339: when it last confirmed.
    pub seen_at: String,
}

/// The value of `{prefix}replica:{id}`.
#[derive(Debug, Deserialize)]
pub(super) struct Confirmation {
    pub last_event_id: String,
    pub seen_at_ms: u64,
}

impl RedisTier {
    pub fn replicas_key(&self) -> String {
        format!("{}replicas", self.prefix)
    }

    /// The last fleet view read (empty until the first read).
    pub fn fleet_view(&self) -> FleetView {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) async fn watch_fleet(self: Arc<Self>, mut shutdown: shutdown::Signal) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = shutdown.recv() => return,
            }
            if !self.healthy.load(Ordering::Relaxed) {
                continue;
            }
            match self.read_fleet().await {
                Ok(view) => {
                    let worst = view.replicas.iter().map(|r| r.behind_ms).max().unwrap_or(0);
                    self.metrics.fleet_lag_seconds.set(worst as f64 / 1000.0);
                    *self.fleet.lock().unwrap_or_else(|p| p.into_inner()) = view;
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the fleet's confirmations"),
            }
        }
    }

    async fn read_fleet(&self) -> Result<FleetView, RedisError> {
        let now_ms = unix_ms(SystemTime::now());
        let live_since = now_ms.saturating_sub(ms(REPLICA_TTL));
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(self.replicas_key())
            .arg("-inf")
            .arg(format!("({live_since}"))
            .ignore();
        pipe.cmd("ZRANGE").arg(self.replicas_key()).arg(0).arg(-1);
        pipe.cmd("XREVRANGE")
            .arg(self.events_key())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let (ids, head): (Vec<String>, Value) = self.query(&pipe).await?;
        let head = super::fanout::entry_ids(&head).into_iter().next();
        let mut replicas = Vec::new();
        if !ids.is_empty() {
            let mut gets = redis::pipe();
            for id in &ids {
                gets.cmd("GET").arg(self.replica_key(id));
            }
            let values: Vec<Option<String>> = self.query(&gets).await?;
            for (id, value) in ids.into_iter().zip(values) {
                let Some(c) = value
                    .and_then(|v| serde_json::from_str::<Confirmation>(&v).ok())
                    // A clock far ahead (or a value not ours): not shown,
                    // and never formatted past the year 9999.
                    .filter(|c| c.seen_at_ms <= now_ms.saturating_add(ms(REPLICA_TTL)))
                else {
                    continue;
                };
                let (behind_events, behind_ms) = match &head {
                    Some(h) if stream_id(h) > stream_id(&c.last_event_id) => {
                        self.behind(&c.last_event_id, now_ms).await?
                    }
                    _ => (0, 0),
                };
                replicas.push(ReplicaLag {
                    replica: id,
                    last_event_id: c.last_event_id,
                    behind_events,
                    behind_ms,
                    seen_at: super::super::events::rfc3339(
                        UNIX_EPOCH + Duration::from_millis(c.seen_at_ms),
                    ),
                });
            }
        }
        replicas.sort_by(|a, b| {
            b.behind_ms
                .cmp(&a.behind_ms)
                .then(a.replica.cmp(&b.replica))
        });
        Ok(FleetView { head, replicas })
    }

    /// Entries after `last`, and how long the first of them has waited.
    async fn behind(&self, last: &str, now_ms: u64) -> Result<(u64, u64), RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(self.events_key())
            .arg(format!("({last}"))
            .arg("+")
            .arg("COUNT")
            .arg(MAX_BEHIND);
        let (entries,): (Value,) = self.query(&pipe).await?;
        let ids = super::fanout::entry_ids(&entries);
        let waited = ids
            .first()
            .and_then(|id| stream_id(id))
            .map_or(0, |(ms, _)| now_ms.saturating_sub(ms));
        Ok((ids.len() as u64, waited))
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
