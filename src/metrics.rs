//! Prometheus metrics (SPEC §7), with typed label sets and one registry
//! that `run` creates and passes down: no globals.
//!
//! Hot-path counters are resolved once at start-up, so counting a hit is
//! one atomic add, not a label lookup. Labels with a closed set of values
//! (reasons, skip reasons) are created at zero, so every SPEC §7 family is
//! on `/metrics` before its first sample and `rate()` sees the first one.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cache::outcome::Outcome;

/// The `cache` label of `oddscache_requests_total`: the class of a
/// request's [`Outcome`], as in `X-Cache`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CacheOutcome {
    hit,
    miss,
    stale,
    bypass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    pub cache: CacheOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The upstream's status code, or `error` / `timeout` when none came.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhyLabel {
    pub why: String,
}

/// The connections of one listener, which the accept loop updates.
///
/// Cloning shares the underlying metrics, so the loop gets its own handle.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    /// Connections open now (holding one of `max_connections`).
    pub open: Gauge,
    /// Connections closed at accept because `max_connections` were open.
    pub rejected: Counter,
}

pub struct Metrics {
    pub registry: Registry,
    pub hits: Counter,
    pub misses: Counter,
    pub stale: Counter,
    pub bypass: Counter,
    pub coalesced: Counter,
    pub upstream_requests: Family<StatusLabel, Counter>,
    pub upstream_duration: Histogram,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub invalidations: Family<ReasonLabel, Counter>,
    pub keys_deleted: Counter,
    pub invalidations_per_minute: Gauge,
    /// `invalidation.alert_per_minute`, so dashboards and alert rules
    /// compare against the configured threshold instead of a copy of it.
    pub alert_threshold_per_minute: Gauge,
    /// 1 while the per-minute rate is above the threshold (`alerting`).
    pub alerting: Gauge,
    pub propagation: Histogram,
    pub redis_up: Gauge,
    /// 1 when a Redis URL is configured, so "Redis down" alerts can skip
    /// local-only sidecars, whose `redis_up` is always 0.
    pub redis_configured: Gauge,
    pub redis_errors: Counter,
    pub registrations_dropped: Counter,
    pub l2_hits: Counter,
    pub watch_skipped: Family<WhyLabel, Counter>,
    pub rate_limited: Counter,
    /// The proxy port's; the admin port is not counted.
    pub proxy_connections: ConnectionMetrics,
    /// Flushes of tagged entries because the event log could not cover a
    /// gap: `start`, `gap` (the last applied entry is gone from the log) or
    /// `peer_overflow` (a peer's outbox overflowed).
    pub resyncs: Family<WhyLabel, Counter>,
    /// Events waiting for Redis to take them.
    pub outbox_events: Gauge,
    pub outbox_overflows: Counter,
    /// The worst lag behind the log among live replicas, as this replica
    /// last read their confirmations.
    pub fleet_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub push: PushMetrics,
}

/// Change hints to browsers (SPEC §8).
#[derive(Clone, Debug, Default)]
pub struct PushMetrics {
    /// Streams open now, SSE and WebSocket.
    pub clients: Gauge,
    /// Hints written to clients, one per client per hint.
    pub messages: Counter,
    /// Clients dropped or refused: `slow` (fell a whole buffer behind),
    /// `max_clients` (refused at `push.max_clients`). A reader stalled
    /// for good is closed by the kernel after `proxy.send_timeout`.
    pub dropped: Family<WhyLabel, Counter>,
}

impl PushMetrics {
    pub fn dropped(&self, why: &str) {
        self.dropped
            .get_or_create(&WhyLabel { why: why.into() })
            .inc();
    }
}

impl Metrics {
    /// Counts one answered request by its outcome: its class in
    /// `oddscache_requests_total`, and the counters that single out some
    /// outcomes (`coalesced`, `l2_hits`, `rate_limited`). A hit is one
    /// atomic add.
    #[inline]
    pub fn count(&self, outcome: Outcome) {
        let class = match outcome.label() {
            CacheOutcome::hit => &self.hits,
            CacheOutcome::miss => &self.misses,
            CacheOutcome::stale => &self.stale,
            CacheOutcome::bypass => &self.bypass,
        };
        class.inc();
        let also = match outcome {
            Outcome::Coalesced => &self.coalesced,
            Outcome::L2 => &self.l2_hits,
            Outcome::RateLimited => &self.rate_limited,
            _ => return,
        };
        also.inc();
    }

    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("oddscache");
        let requests = Family::<CacheLabel, Counter>::default();
        registry.register(
            "requests",
            "Proxied requests by cache outcome",
            requests.clone(),
        );
        let outcome = |cache| requests.get_or_create(&CacheLabel { cache }).clone();
        let (hits, misses, stale, bypass) = (
            outcome(CacheOutcome::hit),
            outcome(CacheOutcome::miss),
            outcome(CacheOutcome::stale),
            outcome(CacheOutcome::bypass),
        );
        let coalesced = Counter::default();
        registry.register(
            "coalesced",
            "Misses served by another request's fill",
            coalesced.clone(),
        );
        let upstream_requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "upstream_requests",
            "Upstream requests by status",
            upstream_requests.clone(),
        );
        let upstream_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "upstream_duration_seconds",
            "Time to the upstream's response head",
            upstream_duration.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the L1 cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Weighed bytes in the L1 cache",
            cache_bytes.clone(),
        );
        let invalidations = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "invalidations",
            "Invalidations by reason",
            invalidations.clone(),
        );
        for reason in crate::watch::Reason::ALL {
            let _ = invalidations.get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            });
        }
        let keys_deleted = Counter::default();
        registry.register(
            "invalidation_keys_deleted",
            "Keys deleted by invalidations",
            keys_deleted.clone(),
        );
        let invalidations_per_minute = Gauge::default();
        registry.register(
            "invalidations_per_minute",
            "Invalidations in the last 60 seconds",
            invalidations_per_minute.clone(),
        );
        let alert_threshold_per_minute = Gauge::default();
        registry.register(
            "invalidation_alert_threshold_per_minute",
            "The configured invalidation.alert_per_minute",
            alert_threshold_per_minute.clone(),
        );
        let alerting = Gauge::default();
        registry.register(
            "invalidation_alerting",
            "1 while invalidations in the last 60 seconds exceed the threshold",
            alerting.clone(),
        );
        let propagation = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "invalidation_propagation_seconds",
            "From a peer event's timestamp to local eviction",
            propagation.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "1 when Redis commands go through and the event log is being read",
            redis_up.clone(),
        );
        let redis_configured = Gauge::default();
        registry.register(
            "redis_configured",
            "1 when a Redis URL is configured (0: local-only)",
            redis_configured.clone(),
        );
        let redis_errors = Counter::default();
        registry.register(
            "redis_errors",
            "Failed Redis commands and connections",
            redis_errors.clone(),
        );
        let registrations_dropped = Counter::default();
        registry.register(
            "registrations_dropped",
            "Registry writes dropped because Redis was slow or down",
            registrations_dropped.clone(),
        );
        let l2_hits = Counter::default();
        registry.register(
            "l2_hits",
            "L1 misses answered from the shared Redis L2",
            l2_hits.clone(),
        );
        let watch_skipped = Family::<WhyLabel, Counter>::default();
        registry.register(
            "watch_skipped",
            "Bodies the watcher could not read",
            watch_skipped.clone(),
        );
        for why in crate::watch::SkipReason::ALL {
            let _ = watch_skipped.get_or_create(&WhyLabel {
                why: why.as_str().to_string(),
            });
        }
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Proxy requests refused by the rate limit",
            rate_limited.clone(),
        );
        let proxy_connections = ConnectionMetrics::default();
        registry.register(
            "connections",
            "Open client connections on the proxy port",
            proxy_connections.open.clone(),
        );
        registry.register(
            "connections_rejected",
            "Proxy connections closed at accept because proxy.max_connections were open",
            proxy_connections.rejected.clone(),
        );
        let resyncs = Family::<WhyLabel, Counter>::default();
        registry.register(
            "resyncs",
            "Tagged-entry flushes because the event log could not cover a gap",
            resyncs.clone(),
        );
        for why in ["start", "gap", "peer_overflow"] {
            let _ = resyncs.get_or_create(&WhyLabel { why: why.into() });
        }
        let outbox_events = Gauge::default();
        registry.register(
            "outbox_events",
            "Invalidation events waiting for Redis to take them",
            outbox_events.clone(),
        );
        let outbox_overflows = Counter::default();
        registry.register(
            "outbox_overflows",
            "Times the invalidation outbox overflowed and was replaced by a resync",
            outbox_overflows.clone(),
        );
        let fleet_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "fleet_lag_seconds",
            "The worst lag behind the event log among live replicas",
            fleet_lag_seconds.clone(),
        );
        let push = PushMetrics::default();
        registry.register(
            "push_clients",
            "Open change-hint streams on the proxy port",
            push.clients.clone(),
        );
        registry.register(
            "push_messages",
            "Change hints written to clients",
            push.messages.clone(),
        );
        registry.register(
            "push_dropped",
            "Change-hint clients dropped for falling behind, or refused at push.max_clients",
            push.dropped.clone(),
        );
        for why in ["slow", "max_clients"] {
            let _ = push.dropped.get_or_create(&WhyLabel { why: why.into() });
        }
        Arc::new(Metrics {
            registry,
            hits,
            misses,
            stale,
            bypass,
            coalesced,
            upstream_requests,
            upstream_duration,
            cache_entries,
            cache_bytes,
            invalidations,
            keys_deleted,
            invalidations_per_minute,
            alert_threshold_per_minute,
            alerting,
            propagation,
            redis_up,
            redis_configured,
            redis_errors,
            registrations_dropped,
            l2_hits,
            watch_skipped,
            rate_limited,
            proxy_connections,
            resyncs,
            outbox_events,
            outbox_overflows,
            fleet_lag_seconds,
            push,
        })
    }

    pub fn resync(&self, why: &str) {
        self.resyncs
            .get_or_create(&WhyLabel { why: why.into() })
            .inc();
    }

    pub fn upstream_status(&self, status: &str) {
        self.upstream_requests
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .inc();
    }

    pub fn watch_skipped(&self, why: &str) {
        self.watch_skipped
            .get_or_create(&WhyLabel {
                why: why.to_string(),
            })
            .inc();
    }

    /// Every metric in the OpenMetrics text format ([`OPENMETRICS`]); see
    /// [`to_prometheus_text`] for the classic format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`to_prometheus_text`]'s output.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text rewritten in the Prometheus text format 0.0.4, for
/// scrapers that do not ask for OpenMetrics. The two differ where a 0.0.4
/// parser would lose types: an OpenMetrics counter family `x` has samples
/// `x_total`, which 0.0.4 names the family itself; `unknown` is
/// `untyped`; and 0.0.4 has no `# UNIT` or `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_closed_label_set_is_there_at_zero() {
        let text = Metrics::new().encode();
        for reason in crate::watch::Reason::ALL {
            let line = format!("oddscache_invalidations_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{line}");
        }
        for why in crate::watch::SkipReason::ALL {
            let line = format!(
                "oddscache_watch_skipped_total{{why=\"{}\"}} 0",
                why.as_str()
            );
            assert!(text.contains(&line), "{line}");
        }
    }

    #[test]
    fn the_classic_format_names_counter_families_with_total() {
        let m = Metrics::new();
        m.upstream_status("200");
        let text = to_prometheus_text(&m.encode());
        assert!(text.contains("# TYPE oddscache_requests_total counter\n"));
        assert!(text.contains("# HELP oddscache_requests_total Proxied requests"));
        assert!(text.contains("oddscache_requests_total{cache=\"hit\"} 0\n"));
        assert!(text.contains("# TYPE oddscache_upstream_requests_total counter\n"));
        assert!(text.contains("# TYPE oddscache_cache_entries gauge\n"));
        assert!(text.contains("# TYPE oddscache_upstream_duration_seconds histogram\n"));
        assert!(!text.contains("# EOF"));
        assert!(text.ends_with('\n'));
        let om = "# TYPE a unknown\n# UNIT a seconds\na 1\n# EOF\n";
        assert_eq!(to_prometheus_text(om), "# TYPE a untyped\na 1\n");
    }
}
