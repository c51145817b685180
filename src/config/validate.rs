//! The semantic checks that run after every section has been read: bounds,
//! combinations, the upstream URL and the `[redis]` section. Each problem
//! names its key; none stops the others.

use super::*;

impl Config {
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        let mut check = |ok: bool, key: &str, message: &str| {
            if !ok {
                problems.push(Problem::new(key, message));
            }
        };
        check(
            self.proxy.upstream_timeout.get() > std::time::Duration::ZERO,
            "proxy.upstream_timeout",
            "must be greater than 0s",
        );
        // hyper bounds a request head by its read buffer, which cannot be
        // smaller than 8 KiB: a lower limit would be accepted and not enforced.
        check(
            self.proxy.max_header_bytes.bytes() >= 8192,
            "proxy.max_header_bytes",
            "must be at least 8KiB",
        );
        check(
            self.proxy.max_connections > 0,
            "proxy.max_connections",
            "must be greater than 0",
        );
        check(
            self.cache.max_bytes.bytes() > 0,
            "cache.max_bytes",
            "must be greater than 0",
        );
        check(
            self.cache.max_object_bytes <= self.cache.max_bytes,
            "cache.max_object_bytes",
            "must not exceed cache.max_bytes",
        );
        check(
            self.admin.events_capacity > 0 && self.admin.events_capacity <= 1_000_000,
            "admin.events_capacity",
            "must be between 1 and 1000000",
        );
        check(
            self.admin.mutations_per_second > 0,
            "admin.mutations_per_second",
            "must be greater than 0",
        );
        check(
            !self.admin.readiness_window.get().is_zero(),
            "admin.readiness_window",
            "must be greater than 0",
        );
        check(
            self.invalidation.alert_per_minute > 0,
            "invalidation.alert_per_minute",
            "must be greater than 0",
        );
        if let Err(e) = upstream_authority(&self.proxy.upstream) {
            problems.push(Problem::new("proxy.upstream", e.to_string()));
        }
        for (i, pattern) in self.invalidation.game_key_patterns.iter().enumerate() {
            if let Err(message) = route::check_key_pattern(pattern) {
                problems.push(Problem::new(
                    format!("invalidation.game_key_patterns[{i}]"),
                    message,
                ));
            }
        }
        if let Err(errors) = crate::watch::WatchRules::check(&self.watch) {
            for e in errors {
                let text = e.to_string();
                let (key, message) = text.split_once(": ").unwrap_or(("watch", &text));
                problems.push(Problem::new(key, message));
            }
        }
        if let Err(mut more) = Routes::compile(&self.routes) {
            problems.append(&mut more);
        }
        if let Some(redis) = &self.redis {
            validate_redis(redis, problems);
        }
        if let Some(push) = &self.push {
            push.validate(problems);
        }
        if let Some(rl) = &self.rate_limit {
            if rl.per_second == 0 {
                problems.push(Problem::new(
                    "rate_limit.per_second",
                    "must be greater than 0",
                ));
            }
            if rl.burst == 0 {
                problems.push(Problem::new("rate_limit.burst", "must be greater than 0"));
            }
        }
    }
}

fn validate_redis(redis: &RedisConfig, problems: &mut Vec<Problem>) {
    if let Some(url) = &redis.url {
        if let Err(e) = redis::Client::open(url.as_str()) {
            problems.push(Problem::new("redis.url", format!("invalid Redis URL: {e}")));
        }
    }
    for (i, url) in redis.urls.iter().enumerate() {
        if let Err(e) = redis::Client::open(url.as_str()) {
            problems.push(Problem::new(
                format!("redis.urls[{i}]"),
                format!("invalid Redis URL: {e}"),
            ));
        }
    }
    match redis.mode {
        RedisMode::Standalone => {
            if !redis.urls.is_empty() {
                problems.push(Problem::new(
                    "redis.urls",
                    "only for mode = \"cluster\" or \"sentinel\"; a single server takes `url`",
                ));
            }
        }
        RedisMode::Cluster => {
            if redis.urls.is_empty() && redis.url.is_none() {
                problems.push(Problem::new(
                    "redis.urls",
                    "mode = \"cluster\" needs at least one seed node",
                ));
            }
        }
        RedisMode::Sentinel => {
            if redis.urls.is_empty() {
                problems.push(Problem::new(
                    "redis.urls",
                    "mode = \"sentinel\" needs at least one sentinel address",
                ));
            }
            if redis.url.is_some() {
                problems.push(Problem::new(
                    "redis.url",
                    "not used with mode = \"sentinel\": the sentinels name the primary",
                ));
            }
        }
    }
    let named = !redis.master_name.trim().is_empty();
    match redis.mode {
        RedisMode::Sentinel if !named => problems.push(Problem::new(
            "redis.master_name",
            "mode = \"sentinel\" needs the monitored primary's name",
        )),
        RedisMode::Standalone | RedisMode::Cluster if named => problems.push(Problem::new(
            "redis.master_name",
            "only for mode = \"sentinel\"",
        )),
        _ => {}
    }
    if redis.channel.is_some() {
        problems.push(Problem::new(
            "redis.channel",
            "retired: invalidations travel on the event log, the stream {key_prefix}events; remove this key (see events_max_len, outbox_capacity, liveness_timeout)",
        ));
    }
    if redis.pubsub.is_some() {
        problems.push(Problem::new(
            "redis.pubsub",
            "retired: there is no pub/sub to choose; the event log {key_prefix}events is one stream, on one shard in a cluster; remove this key",
        ));
    }
    if redis.events_max_len < 1000 {
        problems.push(Problem::new(
            "redis.events_max_len",
            "must be at least 1000: a shorter log makes every brief outage a fleet-wide resync",
        ));
    }
    if redis.outbox_capacity == 0 {
        problems.push(Problem::new("redis.outbox_capacity", "must be at least 1"));
    }
    if redis.liveness_timeout.get() < std::time::Duration::from_millis(100)
        || redis.liveness_timeout.get() > std::time::Duration::from_secs(600)
    {
        problems.push(Problem::new(
            "redis.liveness_timeout",
            "must be from 100ms to 10m",
        ));
    }
    if redis.outage_max_staleness.get().is_zero() {
        problems.push(Problem::new(
            "redis.outage_max_staleness",
            "must be greater than 0s",
        ));
    }
    if redis
        .key_prefix
        .chars()
        .any(|c| c.is_whitespace() || c == '*')
    {
        problems.push(Problem::new(
            "redis.key_prefix",
            "must not contain whitespace or '*'",
        ));
    }
    if redis.registry_ttl.get().as_secs() == 0 {
        problems.push(Problem::new("redis.registry_ttl", "must be at least 1s"));
    }
    if redis.command_timeout.get().is_zero()
        || redis.command_timeout.get() > std::time::Duration::from_secs(60)
    {
        problems.push(Problem::new(
            "redis.command_timeout",
            "must be greater than 0s and at most 1m",
        ));
    }
}

/// Validates `http://host:port[/]` and returns the authority.
/// Why `proxy.upstream` is not a usable upstream URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamUrlError {
    #[error("invalid URL {url:?}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("https is not supported: the upstream runs in the same pod, speak http to it")]
    Https,
    #[error("{0:?} must start with http://")]
    Scheme(String),
    #[error("{0:?} must not have a path or query")]
    PathOrQuery(String),
    #[error("{0:?} has no host")]
    NoHost(String),
}

pub fn upstream_authority(upstream: &str) -> Result<http::uri::Authority, UpstreamUrlError> {
    let uri: http::Uri =
        upstream
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamUrlError::Invalid {
                url: upstream.to_string(),
                reason: e.to_string(),
            })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(UpstreamUrlError::Https),
        _ => return Err(UpstreamUrlError::Scheme(upstream.to_string())),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(UpstreamUrlError::PathOrQuery(upstream.to_string()));
    }
    uri.authority()
        .cloned()
        .ok_or_else(|| UpstreamUrlError::NoHost(upstream.to_string()))
}
