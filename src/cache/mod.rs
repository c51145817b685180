//! The in-process cache (L1): keys, stored entries, the moka store with its
//! tag index, invalidation epochs and fill locks, and the HTTP caching
//! rules that decide what may be stored and for how long. [`policy`] is
//! pure: it reads headers and returns decisions, and never touches storage,
//! clocks or the network.

pub mod entry;
pub mod freshness;
mod intern;
pub mod key;
pub mod l2;
pub mod lock;
pub mod outcome;
pub mod policy;
pub mod store;
mod tags;

pub use entry::{Entry, NewEntry, Standing};
pub use store::{Fill, FillState, Lookup, Store};
