//! The sidecar started in process on loopback ports; the harnesses add
//! their own constructors.
use std::net::SocketAddr;

use oddscache::{Config, Listeners, RunError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The sidecar, running in process until shut down or dropped.
pub struct Sidecar {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl Sidecar {
    pub async fn start(config: Config) -> Sidecar {
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = proxy.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(oddscache::run(
            config,
            Listeners { proxy, admin: None },
            async move {
                // A dropped sender is a shutdown too.
                let _ = stopped.await;
            },
        ));
        Sidecar {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts with an admin port too, and keeps a [`oddscache::Handle`] on
    /// the sidecar's internals. Answers the sidecar, its handle and the
    /// admin port's address.
    pub async fn with_handle(config: Config) -> (Sidecar, oddscache::Handle, SocketAddr) {
        let built = oddscache::Sidecar::new(config).expect("the sidecar builds");
        let handle = built.handle();
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = proxy.local_addr().expect("local addr");
        let admin_addr = admin.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let listeners = Listeners {
                proxy,
                admin: Some(admin),
            };
            built
                .serve(listeners, async move {
                    let _ = stopped.await;
                })
                .await;
            Ok(())
        });
        let sidecar = Sidecar {
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        (sidecar, handle, admin_addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Fires the shutdown signal (as SIGTERM would) and hands back `run`.
    pub fn shutdown(mut self) -> JoinHandle<Result<(), RunError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("running")
    }

    /// Shuts down and waits for the drain.
    pub async fn stop(self) {
        let _ = self.shutdown().await;
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
