//! The configuration contract (SPEC §1, §3): the TOML file, the CLI/env
//! overrides layered on top, and validation that runs before any port is
//! bound.
//!
//! Loading never stops at the first problem: every section is deserialized
//! on its own and every semantic check runs, so `oddscache check` can list
//! all problems at once, each naming its key (`cache.max_bytes: ...`).

mod push;
pub mod route;
mod types;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use push::PushConfig;
pub use route::{CompiledRoute, RouteMatch, Routes, Template};
pub use types::{Dur, Size};
pub use validate::{upstream_authority, UpstreamUrlError};

/// The config shipped in the repository, also used by `demo` and as the
/// fallback when the default path does not exist.
pub const SHIPPED: &str = include_str!("../../config.toml");

/// The only place the admin token comes from (SPEC §1): never a file.
pub const ADMIN_TOKEN_ENV: &str = "ODDSCACHE_ADMIN_TOKEN";

/// One problem, with the key it concerns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub cache: CacheConfig,
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    pub watch: WatchConfig,
    pub invalidation: InvalidationConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushConfig>,
    /// Names this replica in events and logs; from `--replica-id`, else the hostname.
    pub replica_id: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub upstream: String,
    /// Bounds the wait for the upstream's whole response head.
    pub upstream_timeout: Dur,
    pub max_header_bytes: Size,
    /// A client that has not sent its request head by then is dropped.
    pub header_read_timeout: Dur,
    /// Open client connections at most; past it new ones are closed at once.
    pub max_connections: usize,
    /// A connection whose client takes none of the data sent to it for
    /// this long is closed (TCP_USER_TIMEOUT): a reader that stopped
    /// reading gives its change stream's place back. `0s`: never.
    pub send_timeout: Dur,
    pub shutdown_grace: Dur,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: ([0, 0, 0, 0], 8080).into(),
            upstream: "http://127.0.0.1:8000".into(),
            upstream_timeout: Dur::secs(10),
            max_header_bytes: Size::kib(16),
            header_read_timeout: Dur::secs(30),
            max_connections: 10_000,
            send_timeout: Dur::secs(60),
            shutdown_grace: Dur::secs(10),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub events_capacity: usize,
    pub mutations_per_second: u32,
    /// How long every upstream request must fail before `/readyz` says 503:
    /// long enough that one upstream deploy does not pull every replica out
    /// of the load balancer at once.
    pub readiness_window: Dur,
    /// Only ever from `ODDSCACHE_ADMIN_TOKEN`: a token in a committed file leaks.
    #[serde(skip)]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: ([127, 0, 0, 1], 9090).into(),
            events_capacity: 1000,
            mutations_per_second: 10,
            readiness_window: Dur::secs(30),
            token: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub max_bytes: Size,
    pub max_object_bytes: Size,
    pub default_ttl: Dur,
    pub honor_origin_cache_control: bool,
    pub stale_if_error: Dur,
    pub stale_while_revalidate: Dur,
    pub coalesce_timeout: Dur,
    pub ttl_by_status: TtlByStatus,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: Size::mib(256),
            max_object_bytes: Size::mib(1),
            default_ttl: Dur::secs(30),
            honor_origin_cache_control: true,
            stale_if_error: Dur::secs(300),
            stale_while_revalidate: Dur::secs(0),
            coalesce_timeout: Dur::secs(10),
            ttl_by_status: TtlByStatus::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TtlByStatus {
    pub scheduled: Dur,
    pub live: Dur,
    pub finished: Dur,
    pub cancelled: Dur,
    pub postponed: Dur,
    pub unknown: Dur,
}

impl Default for TtlByStatus {
    fn default() -> Self {
        TtlByStatus {
            scheduled: Dur::secs(60),
            live: Dur::secs(5),
            finished: Dur::secs(3600),
            cancelled: Dur::secs(3600),
            postponed: Dur::secs(600),
            unknown: Dur::secs(5),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<Dur>,
}

/// `[watch]` is owned by the watcher, which validates it too.
pub type WatchConfig = crate::watch::WatchSpec;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InvalidationConfig {
    pub alert_per_minute: u32,
    pub game_key_patterns: Vec<String>,
}

impl Default for InvalidationConfig {
    fn default() -> Self {
        InvalidationConfig {
            alert_per_minute: 100,
            game_key_patterns: vec!["odds:{status}:{game_id}".into()],
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// How to reach Redis: one server (`url`), a Redis Cluster (seed
    /// `urls`) or a Sentinel-managed primary (sentinel `urls` and
    /// `master_name`).
    pub mode: RedisMode,
    /// Standalone mode: without a URL (here, `--redis-url` or
    /// `ODDSCACHE_REDIS_URL`) the sidecar runs local-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Cluster mode: seed nodes; sentinel mode: the sentinels.
    pub urls: Vec<String>,
    /// Sentinel mode: the monitored primary's name.
    pub master_name: String,
    pub key_prefix: String,
    pub registry_ttl: Dur,
    /// The event log's length (`XADD … MAXLEN ~`).
    pub events_max_len: u64,
    /// Events kept while Redis cannot take them.
    pub outbox_capacity: usize,
    /// A Redis connection silent this long past its heartbeat is replaced.
    pub liveness_timeout: Dur,
    /// While the log cannot be read, tagged entries stored longer ago than
    /// this revalidate instead of being served from L1.
    pub outage_max_staleness: Dur,
    pub store_responses: bool,
    pub command_timeout: Dur,
    /// Retired: the fan-out is the event log `{prefix}events` now. Read
    /// only to say so.
    #[serde(skip_serializing)]
    pub channel: Option<toml::Value>,
    /// Retired with `channel`.
    #[serde(skip_serializing)]
    pub pubsub: Option<toml::Value>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            mode: RedisMode::Standalone,
            url: None,
            urls: Vec::new(),
            master_name: String::new(),
            key_prefix: "oddscache:".into(),
            registry_ttl: Dur::secs(86_400),
            events_max_len: 100_000,
            outbox_capacity: 10_000,
            liveness_timeout: Dur::secs(3),
            outage_max_staleness: Dur::secs(5),
            store_responses: false,
            command_timeout: Dur::millis(250),
            channel: None,
            pubsub: None,
        }
    }
}

/// `[redis] mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: u32,
    pub burst: u32,
    /// Key on the first `X-Forwarded-For` hop instead of the socket peer;
    /// only safe behind a proxy that sets it.
    #[serde(default)]
    pub trust_forwarded_for: bool,
}

/// Values from flags and environment variables, which override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub redis_url: Option<String>,
    pub replica_id: Option<String>,
    pub admin_token: Option<String>,
}

/// The top level of the file, kept as raw TOML so each section can be
/// deserialized (and fail) on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    proxy: Option<toml::Value>,
    admin: Option<toml::Value>,
    cache: Option<toml::Value>,
    route: Option<toml::Value>,
    watch: Option<toml::Value>,
    invalidation: Option<toml::Value>,
    redis: Option<toml::Value>,
    rate_limit: Option<toml::Value>,
    push: Option<toml::Value>,
}

impl Config {
    /// Reads `path`; `explicit` says whether the user named it. A missing
    /// default file falls back to the shipped defaults.
    pub fn load(path: &Path, explicit: bool, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no config file; using the shipped defaults");
                SHIPPED.to_string()
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Config::from_toml(&text, overrides)
    }

    /// Parses and validates a whole file, collecting every problem.
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let raw: RawFile = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let key = e
                    .span()
                    .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
                    .unwrap_or_else(|| "file".into());
                return Err(ConfigError::Invalid(vec![Problem::new(
                    key,
                    e.message().to_string(),
                )]));
            }
        };
        let mut cfg = Config {
            proxy: section("proxy", raw.proxy, &mut problems),
            admin: section("admin", raw.admin, &mut problems),
            cache: section("cache", raw.cache, &mut problems),
            routes: section("route", raw.route, &mut problems),
            watch: section("watch", raw.watch, &mut problems),
            invalidation: section("invalidation", raw.invalidation, &mut problems),
            redis: raw.redis.map(|v| section("redis", Some(v), &mut problems)),
            rate_limit: raw
                .rate_limit
                .and_then(|v| optional_section("rate_limit", v, &mut problems)),
            push: raw
                .push
                .and_then(|v| optional_section("push", v, &mut problems)),
            replica_id: String::new(),
        };
        cfg.apply(overrides);
        cfg.validate(&mut problems);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(listen) = o.listen {
            self.proxy.listen = listen;
        }
        if let Some(listen) = o.admin_listen {
            self.admin.listen = listen;
        }
        if let Some(upstream) = &o.upstream {
            self.proxy.upstream = upstream.clone();
        }
        if let Some(url) = &o.redis_url {
            self.redis.get_or_insert_with(RedisConfig::default).url = Some(url.clone());
        }
        self.admin.token = o.admin_token.clone().filter(|t| !t.is_empty());
        self.replica_id = o
            .replica_id
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    }

    /// Whether the Redis tier is on: a `[redis]` table with a URL
    /// (standalone) or with `urls` (cluster, sentinel).
    pub fn redis_enabled(&self) -> Option<&RedisConfig> {
        self.redis.as_ref().filter(|r| match r.mode {
            RedisMode::Standalone => r.url.is_some(),
            RedisMode::Cluster => r.url.is_some() || !r.urls.is_empty(),
            RedisMode::Sentinel => !r.urls.is_empty(),
        })
    }

    /// The effective config as TOML, for `oddscache check`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if let Some(redis) = shown.redis.as_mut() {
            redis.url = redis.url.as_deref().map(redact_url);
            redis.urls = redis.urls.iter().map(|u| redact_url(u)).collect();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Hides a password in a Redis URL before it is printed.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn section<T: DeserializeOwned + Default>(
    name: &str,
    value: Option<toml::Value>,
    problems: &mut Vec<Problem>,
) -> T {
    match value {
        None => T::default(),
        Some(v) => optional_section(name, v, problems).unwrap_or_default(),
    }
}

fn optional_section<T: DeserializeOwned>(
    name: &str,
    mut value: toml::Value,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    // Each pass reports one bad key and drops it, so every problem of the
    // section is named, not only the first.
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return Some(t),
            Err(e) => {
                let path = e.path().clone();
                let shown = path.to_string();
                let key = if shown == "." {
                    name.to_string()
                } else if shown.starts_with('[') {
                    format!("{name}{shown}")
                } else {
                    format!("{name}.{shown}")
                };
                problems.push(Problem::new(key, e.into_inner().message().to_string()));
                if !remove_at(&mut value, path.iter()) {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the value at `path`; false when there is nothing to remove (a
/// missing key, or an error about the section as a whole).
fn remove_at<'a>(
    value: &mut toml::Value,
    mut path: impl Iterator<Item = &'a serde_path_to_error::Segment>,
) -> bool {
    use serde_path_to_error::Segment;
    let Some(segment) = path.next() else {
        return false;
    };
    let rest: Vec<&Segment> = path.collect();
    match (segment, value) {
        (Segment::Map { key }, toml::Value::Table(t)) => {
            if rest.is_empty() {
                t.remove(key).is_some()
            } else {
                t.get_mut(key)
                    .is_some_and(|v| remove_at(v, rest.into_iter()))
            }
        }
        (Segment::Seq { index }, toml::Value::Array(a)) => {
            // Removing an element would renumber the ones after it, and the
            // keys named in later problems would be wrong.
            if rest.is_empty() {
                false
            } else {
                a.get_mut(*index)
                    .is_some_and(|v| remove_at(v, rest.into_iter()))
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
