//! The fill lock: one request per key goes upstream, and the requests
//! that miss the same key meanwhile wait for its outcome (coalescing). As
//! pingora-cache keeps its cache lock in `lock.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::entry::Entry;

/// How a fill ended, as its waiters hear it.
#[derive(Clone, Debug)]
pub enum FillState {
    Pending,
    Filled(Arc<Entry>),
    /// The response could not be shared; waiters fetch for themselves.
    NotStored,
    /// The leader went away (client gone, error); one waiter takes over.
    Abandoned,
    /// The leader's fetch failed (connect error, timeout): waiters answer
    /// with that failure too, rather than each asking a failing upstream
    /// again and waiting out a second timeout.
    Failed(Arc<dyn std::error::Error + Send + Sync>),
}

type Locks = Mutex<HashMap<Arc<str>, watch::Receiver<FillState>>>;

fn lock(locks: &Locks) -> MutexGuard<'_, HashMap<Arc<str>, watch::Receiver<FillState>>> {
    locks.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fills under way, by key.
#[derive(Default)]
pub struct FillLocks {
    locks: Arc<Locks>,
}

impl FillLocks {
    /// Leads the fill of `key`, or waits for the one under way.
    pub fn fill(&self, key: &str) -> Fill {
        let mut fills = lock(&self.locks);
        if let Some(rx) = fills.get(key) {
            return Fill::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(FillState::Pending);
        let key: Arc<str> = key.into();
        fills.insert(Arc::clone(&key), rx);
        Fill::Lead(FillGuard {
            key,
            tx,
            locks: Arc::clone(&self.locks),
            done: false,
        })
    }
}

pub enum Fill {
    Lead(FillGuard),
    Wait(watch::Receiver<FillState>),
}

/// Held by the one request filling a key; waiters hear how it ended.
pub struct FillGuard {
    key: Arc<str>,
    tx: watch::Sender<FillState>,
    locks: Arc<Locks>,
    done: bool,
}

impl FillGuard {
    pub fn finish(mut self, state: FillState) {
        self.release(state);
    }

    fn release(&mut self, state: FillState) {
        if self.done {
            return;
        }
        self.done = true;
        lock(&self.locks).remove(&self.key);
        self.tx.send_replace(state);
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.release(FillState::Abandoned);
    }
}

/// Waits for a fill to end; `None` when `timeout` passes first.
pub async fn wait_fill(mut rx: watch::Receiver<FillState>, timeout: Duration) -> Option<FillState> {
    let waited =
        tokio::time::timeout(timeout, rx.wait_for(|s| !matches!(s, FillState::Pending))).await;
    match waited {
        Ok(Ok(state)) => Some(state.clone()),
        // The sender is gone without a verdict: treat as abandoned.
        Ok(Err(_)) => Some(FillState::Abandoned),
        Err(_) => None,
    }
}
