//! Answering a miss from the shared L2 (`store_responses`): the fill
//! leader reads a peer's copy from Redis before going upstream, and serves
//! it only when no invalidation it made or applied is newer.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Response};

use super::body::ProxyBody;
use super::respond;
use super::Proxy;
use crate::cache::outcome::Outcome;
use crate::cache::policy;
use crate::cache::store::{uri_tag, FillGuard, FillState};
use crate::cache::{key, l2};
use crate::invalidate::events::unix_ms;

impl Proxy {
    /// A fill leader's last stop before the upstream: the shared L2. A
    /// fresh copy found there is stored in L1, unless an invalidation
    /// overtook the read, and answered as a HIT; otherwise the fill lock
    /// comes back for the upstream fetch. Redis being down or slow costs
    /// nothing or at most `command_timeout` (see `RedisTier::load_response`).
    pub(super) async fn answer_from_l2(
        &self,
        method: &Method,
        client_headers: &HeaderMap,
        key: &Arc<str>,
        primary: &str,
        guard: FillGuard,
    ) -> Result<Response<ProxyBody>, FillGuard> {
        let Some(redis) = &self.l2 else {
            return Err(guard);
        };
        let ticket = self.store.begin_shared_fetch();
        let raw = match redis.load_response(key).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return Err(guard),
            Err(e) => {
                tracing::debug!(error = %e, "L2 read failed; filling from upstream");
                return Err(guard);
            }
        };
        let stored = match l2::decode(Bytes::from(raw)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, key = %key, "ignored a malformed L2 entry");
                return Err(guard);
            }
        };
        // Another process stored it: refused if it may predate an
        // invalidation this replica made or applied, or, while this replica
        // is cut off from the log, if it is older than the outage bound
        // (see `freshness`).
        let ledger = self.store.ledger();
        let now = Instant::now();
        let now_ms = unix_ms(SystemTime::now());
        // Every copy counts as tagged with its URI, as `Store::insert`
        // counts every entry: a PUT applied here refuses copies fetched
        // before it, the URI's own included.
        let uri = uri_tag(primary);
        if ledger.marks.predates(
            stored.tags.iter().map(|t| &**t).chain([&*uri]),
            stored.fetch_began_ms,
        ) || (ledger.is_cut_off(now)
            && now_ms.saturating_sub(stored.stored_at_ms)
                > u64::try_from(ledger.outage_bound().as_millis()).unwrap_or(u64::MAX))
        {
            return Err(guard);
        }
        let Some(entry) = stored.into_entry(Arc::clone(key), now_ms, now) else {
            return Err(guard);
        };
        // The copy must sit where a fill of this request would put it.
        let Ok(vary) = policy::vary_names(&entry.origin_headers()) else {
            return Err(guard);
        };
        let expected = if vary.is_empty() {
            primary.to_owned()
        } else {
            key::variant(primary, &vary, client_headers)
        };
        if *expected != **key {
            return Err(guard);
        }
        let entry = Arc::new(entry);
        if !self
            .store
            .insert(&ticket, primary, &vary, Arc::clone(&entry))
        {
            return Err(guard);
        }
        guard.finish(FillState::Filled(Arc::clone(&entry)));
        Ok(respond::from_entry(
            &self.metrics,
            method,
            client_headers,
            &entry,
            now,
            Outcome::L2,
        ))
    }
}
