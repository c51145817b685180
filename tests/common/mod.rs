//! The harness of the integration tests: the real sidecar started in
//! process on `127.0.0.1:0` (`sidecar`), a scriptable upstream it proxies
//! to and a raw TCP upstream for broken responses (`upstream`), the demo
//! simulator (`sim`), one client that speaks HTTP or raw bytes (`client`),
//! real `redis-server` processes (`redis_server`, and the cluster and
//! sentinel sets in `redis_cluster`), a blackholing TCP relay (`relay`),
//! and the chaos scenarios' load and judge (`chaos`).
//!
//! Nothing here uses a fixed port, a sleep as synchronisation, or kills a
//! process by name: waits are on conditions (`Upstream::wait_hits`), and
//! every server stops when its handle is dropped.
//!
//! Every test binary declares `mod common;` and so compiles this whole
//! tree, but no binary uses all of it: the one `allow(dead_code)` for the
//! tree is this one.
#![allow(dead_code)]

pub mod chaos;
pub mod client;
pub mod redis_cluster;
pub mod redis_server;
pub mod relay;
pub mod sidecar;
pub mod sim;
pub mod upstream;

use std::time::Duration;

/// Every wait in the harness gives up after this, so a broken sidecar fails
/// the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(10);
