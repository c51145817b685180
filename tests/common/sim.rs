//! The demo simulator as the upstream: the reference API the sidecar was
//! built for, its ticker off so games change only when a test says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use oddscache::demo::{SimConfig, Simulator};
use oddscache::shutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The demo API without its ticker, killable and restartable on its port.
pub struct SimUpstream {
    pub sim: Arc<Simulator>,
    pub addr: SocketAddr,
    running: Option<(shutdown::Trigger, JoinHandle<()>)>,
}

impl SimUpstream {
    pub async fn start() -> SimUpstream {
        let sim = Simulator::new(SimConfig {
            tick: Duration::ZERO,
            ..SimConfig::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut up = SimUpstream {
            sim,
            addr,
            running: None,
        };
        up.serve(listener);
        up
    }

    fn serve(&mut self, listener: TcpListener) {
        let (trigger, signal) = shutdown::channel();
        let task = tokio::spawn(oddscache::demo::serve(
            Arc::clone(&self.sim),
            listener,
            signal,
        ));
        self.running = Some((trigger, task));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and closes its connections: the port refuses.
    pub async fn kill(&mut self) {
        if let Some((trigger, task)) = self.running.take() {
            trigger.fire();
            let _ = task.await;
        }
    }

    /// Listens on the same port again.
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the upstream's port");
        self.serve(listener);
    }
}

/// A raw status other than `old`, for a test that changes a game.
pub fn other_status(old: &str) -> &'static str {
    if old == "halftime" {
        "final"
    } else {
        "halftime"
    }
}

/// The demo API's odds of game `id`.
pub fn odds_path(id: &str) -> String {
    format!("/api/v1/games/{id}/odds")
}

/// The demo API's game `id`, which a PUT changes.
pub fn game_path(id: &str) -> String {
    format!("/api/v1/games/{id}")
}
