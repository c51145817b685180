//! oddscache: a sidecar reverse-proxy cache for live-odds APIs.
//!
//! The request path flows one way: admit → key → lookup → hit, or
//! upstream → watch → store. Changes the watcher notices go through one
//! invalidation door, which the admin API and the Redis subscriber use too.
//!
//! Map of the crate:
//! - [`config`]: the TOML contract, CLI/env overrides and validation.
//! - [`server`]: the accept loop shared by the proxy and admin listeners.
//! - [`shutdown`]: the signal that drains both listeners.
//! - `proxy/`: the request path and the upstream client.
//! - `cache/`: keys, HTTP caching rules, the moka L1 and its tag index.
//! - `watch/`: pure extraction of games from JSON bodies and change detection.
//! - `demo/`: the built-in reference odds API simulator.
#![forbid(unsafe_code)]

pub mod demo;
pub mod server;
pub mod shutdown;
