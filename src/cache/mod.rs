//! The cache: keys, the HTTP caching rules, the moka L1 and its tag index.
//!
//! [`policy`] is pure: it reads headers and returns decisions, and never
//! touches storage, clocks or the network.

pub mod policy;
