//! Reading the log: each replica's `XREAD BLOCK` loop from its last
//! applied entry, with the heartbeat that replaces a silent connection,
//! replay after a reconnect, resync when the entry is gone, and the
//! confirmations the fleet view reads. See the parent's header.

use super::*;

/// Where the log is read from, and what has been applied.
pub(super) struct Reader {
    pub(super) conn: MultiplexedConnection,
    /// The node, for the logs.
    pub(super) node: String,
    pub(super) sentinel: bool,
    pub(super) role_checked: Instant,
}

impl RedisTier {
    /// Reads the log and applies peers' events until `shutdown`.
    pub fn spawn_subscriber(
        self: &Arc<Self>,
        invalidator: Arc<Invalidator>,
        shutdown: shutdown::Signal,
    ) {
        let tier = Arc::clone(self);
        tokio::spawn(async move { tier.read_loop(invalidator, shutdown).await });
    }

    pub(super) async fn read_loop(
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
    pub(super) async fn resume(
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
            tracing::warn!(dropped, last = last.as_deref().unwrap_or(""), head = %head, "the invalidation log no longer holds the last entry this replica applied (trimmed, or lost in a Redis restart or failover); dropped its L1 entries and known game states");
        }
        *last = Some(head);
        Ok(())
    }

    /// Reads and applies entries until the connection fails or the slot
    /// moves; returns why it stopped.
    pub(super) async fn follow(
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
                        tracing::warn!(dropped, last = %from, "the invalidation log was trimmed past this replica's last entry while it caught up; dropped its L1 entries and known game states");
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
    pub(super) async fn trimmed_past(
        &self,
        reader: &mut Reader,
        from: &str,
    ) -> Result<bool, RedisError> {
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
    pub(super) async fn confirm(&self, last: Option<&str>) {
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
            "seen_at_ms": crate::invalidate::events::unix_ms(std::time::SystemTime::now()),
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
            .arg(crate::invalidate::events::unix_ms(
                std::time::SystemTime::now(),
            ))
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
    pub(super) async fn read_cmd(
        &self,
        reader: &mut Reader,
        cmd: &redis::Cmd,
    ) -> Result<Value, RedisError> {
        let within = BLOCK + self.liveness;
        match tokio::time::timeout(within, cmd.query_async::<Value>(&mut reader.conn)).await {
            Err(_) => Err(RedisError::Timeout(within)),
            Ok(r) => Ok(r?),
        }
    }

    /// Where reading starts: the server, the primary the sentinels name,
    /// or in a cluster the next seed in turn, followed to the log's owner.
    pub(super) async fn open_reader(&self, attempt: usize) -> Result<Reader, RedisError> {
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
}
