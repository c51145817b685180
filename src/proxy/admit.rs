//! Admission: the first step of the request path, a per-client-IP rate
//! limit (`[rate_limit]`, SPEC §3).
//!
//! One governor GCRA bucket per client IP: the socket peer, or the first
//! `X-Forwarded-For` hop when `trust_forwarded_for` says a proxy in front
//! sets it. Without `[rate_limit]` no [`Admission`] exists and the request
//! path pays nothing.
//!
//! Keys must stay bounded under a flood of distinct (or spoofed) IPs, so
//! buckets that are back to full are dropped by [`Admission::prune`]: every
//! [`PRUNE_EVERY`] from a background task, and on the request path whenever
//! the key count passes a cap.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;

use crate::config::RateLimitConfig;
use crate::shutdown;

/// How often the background task drops full buckets.
pub const PRUNE_EVERY: Duration = Duration::from_secs(5);
/// Keys past which the request path prunes without waiting for the task.
pub const MAX_KEYS: usize = 100_000;
/// The key count is read (a walk over every shard) once per this many
/// checks, not on every request.
const LEN_CHECK_EVERY: u32 = 256;

/// The per-client limiter and how it picks the client.
pub struct Admission {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Key on the first `X-Forwarded-For` hop: only safe behind a proxy
    /// that overwrites it, or clients would pick their own bucket.
    trust_forwarded_for: bool,
    /// Counts checks, to read the key count every [`LEN_CHECK_EVERY`].
    checks: AtomicU32,
    /// The key count that triggers a prune from the request path. Raised
    /// to twice what survives a prune, so a flood of buckets that are all
    /// still in use does not rescan the map on every check.
    prune_at: AtomicUsize,
    /// The floor of `prune_at`.
    cap: usize,
}

impl Admission {
    pub fn new(config: &RateLimitConfig) -> Admission {
        Admission::with_cap(config, MAX_KEYS)
    }

    /// As [`Admission::new`] with another key cap, for tests.
    pub fn with_cap(config: &RateLimitConfig, cap: usize) -> Admission {
        // Validation refuses zeros; MIN is only a fallback for callers
        // that skipped it.
        let per_second = NonZeroU32::new(config.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        Admission {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            trust_forwarded_for: config.trust_forwarded_for,
            checks: AtomicU32::new(0),
            prune_at: AtomicUsize::new(cap),
            cap,
        }
    }

    /// The IP a request is counted against.
    pub fn client_ip(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        let forwarded = self
            .trust_forwarded_for
            .then(|| first_forwarded_hop(headers))
            .flatten();
        forwarded.unwrap_or(peer.ip()).to_canonical()
    }

    /// Spends one cell of the client's bucket; `Err` carries how long until
    /// the next request would be admitted.
    pub fn check(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<(), Duration> {
        let ip = self.client_ip(headers, peer);
        let outcome = self.limiter.check_key(&ip);
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(LEN_CHECK_EVERY)
        {
            self.cap_keys();
        }
        outcome.map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Live keys (client IPs with a bucket).
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Drops the buckets that are full again (indistinguishable from a
    /// fresh one) and gives their memory back.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn cap_keys(&self) {
        if self.limiter.len() <= self.prune_at.load(Ordering::Relaxed) {
            return;
        }
        self.prune();
        let left = self.limiter.len();
        self.prune_at
            .store(self.cap.max(left.saturating_mul(2)), Ordering::Relaxed);
        tracing::debug!(keys = left, "rate limiter pruned at its key cap");
    }

    /// Prunes every [`PRUNE_EVERY`] until shutdown.
    pub fn spawn_pruner(self: &Arc<Self>, mut shutdown: shutdown::Signal) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        this.prune();
                        // A quiet period lowers the bar again.
                        this.prune_at.store(this.cap, Ordering::Relaxed);
                    }
                    _ = shutdown.recv() => break,
                }
            }
        });
    }
}

/// `Retry-After` in whole seconds: rounded up, so a client that waits that
/// long is admitted, and at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The left-most entry of the first `X-Forwarded-For` field: the client as
/// the first proxy saw it. A bare IP, or `IP:port` / `[IPv6]:port` as some
/// proxies write it; anything else is `None`.
fn first_forwarded_hop(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get("x-forwarded-for")?.to_str().ok()?;
    let hop = value.split(',').next()?.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn config(per_second: u32, burst: u32, trust: bool) -> RateLimitConfig {
        RateLimitConfig {
            per_second,
            burst,
            trust_forwarded_for: trust,
        }
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        h
    }

    const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000);

    #[test]
    fn forwarded_for_counts_only_when_trusted() {
        let trusted = Admission::new(&config(1, 1, true));
        let untrusted = Admission::new(&config(1, 1, false));
        let h = xff("203.0.113.7, 10.0.0.1");
        assert_eq!(
            trusted.client_ip(&h, PEER),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(untrusted.client_ip(&h, PEER), PEER.ip());
        for (value, want) in [
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:443, 10.0.0.1", "2001:db8::1"),
            ("198.51.100.2:5555", "198.51.100.2"),
            ("::ffff:192.0.2.9", "192.0.2.9"),
            (" 192.0.2.1 ", "192.0.2.1"),
            ("unknown, 192.0.2.1", "127.0.0.1"),
            ("_hidden", "127.0.0.1"),
            ("", "127.0.0.1"),
        ] {
            let want: IpAddr = want.parse().unwrap();
            assert_eq!(trusted.client_ip(&xff(value), PEER), want, "{value:?}");
        }
        assert_eq!(trusted.client_ip(&HeaderMap::new(), PEER), PEER.ip());
    }

    #[test]
    fn a_mapped_peer_shares_the_ipv4_bucket() {
        let a = Admission::new(&config(1, 1, false));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:9".parse().unwrap();
        assert_eq!(a.client_ip(&HeaderMap::new(), mapped), PEER.ip());
    }

    #[test]
    fn past_the_burst_the_client_waits() {
        let a = Admission::new(&config(1, 3, false));
        let none = HeaderMap::new();
        for _ in 0..3 {
            assert_eq!(a.check(&none, PEER), Ok(()));
        }
        let wait = a.check(&none, PEER).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another client has its own bucket.
        let other: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert_eq!(a.check(&none, other), Ok(()));
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
    }

    #[test]
    fn full_buckets_are_pruned() {
        // 1000/s refills a single spent cell within milliseconds.
        let a = Admission::new(&config(1000, 10, true));
        for i in 0..2000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(a.check(&xff(&ip.to_string()), PEER).is_ok());
        }
        assert_eq!(a.len(), 2000);
        std::thread::sleep(Duration::from_millis(10));
        a.prune();
        assert!(a.is_empty(), "{} keys left", a.len());
    }

    #[test]
    fn the_request_path_caps_the_key_count() {
        // A slow refill keeps every bucket in use, so nothing can be
        // dropped; the cap still bounds how often the map is rescanned.
        let cap = 1000;
        let a = Admission::with_cap(&config(1, 1, true), cap);
        let mut prune_points = 0;
        let mut last_bar = cap;
        for i in 0..20_000u32 {
            let _ = a.check(&xff(&IpAddr::from(i.to_be_bytes()).to_string()), PEER);
            let bar = a.prune_at.load(Ordering::Relaxed);
            if bar != last_bar {
                prune_points += 1;
                last_bar = bar;
            }
        }
        // Every bucket is recent, so the bar doubles instead of rescanning.
        assert!(prune_points <= 6, "{prune_points}");

        // With a fast refill the cap keeps the map near its size.
        let a = Admission::with_cap(&config(1_000_000, 1, true), cap);
        let mut most = 0;
        for i in 0..20_000u32 {
            let _ = a.check(&xff(&IpAddr::from(i.to_be_bytes()).to_string()), PEER);
            most = most.max(a.len());
        }
        assert!(
            most <= cap + LEN_CHECK_EVERY as usize,
            "{most} keys at once"
        );
    }
}
