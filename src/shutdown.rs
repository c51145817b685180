//! The drain signal shared by every listener and background task.
//!
//! `run` is handed one shutdown future; it fans out through a
//! [`tokio::sync::watch`] so each accept loop and background task can stop
//! accepting independently while in-flight work finishes.

use tokio::sync::watch;

/// Fires the shutdown once; dropping it fires it too, so a panicking owner
/// never leaves listeners running forever.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A cheap, cloneable view of the shutdown state.
#[derive(Clone, Debug)]
pub struct Signal(watch::Receiver<bool>);

/// Creates a linked trigger and signal.
pub fn channel() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Signal(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.fire();
    }
}

impl Signal {
    /// Resolves once shutdown has begun (immediately if it already has).
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which also means shut down.
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }
}

/// Resolves on SIGINT or SIGTERM (the signals Kubernetes and a terminal send).
pub async fn os_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
