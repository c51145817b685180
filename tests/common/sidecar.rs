//! The one starter: the sidecar built from a config and served in process
//! on two loopback ports, proxy and admin, as `oddscache::run` serves it;
//! the configs tests start it with; and a wait on what it serves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oddscache::config::{Config, Overrides, SHIPPED};
use oddscache::{Handle, Listeners};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::{one_shot, Client, Resp};
use super::redis_server::RedisServer;
use super::sim::{game_path, odds_path};

/// The sidecar, running in process until shut down or dropped.
pub struct Sidecar {
    pub addr: SocketAddr,
    /// The admin port.
    pub admin: SocketAddr,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Sidecar {
    /// Builds the sidecar from `config` (what `oddscache::run` does first,
    /// and its only way to fail) and serves its proxy and admin ports.
    pub async fn start(config: Config) -> Sidecar {
        let built = oddscache::Sidecar::new(config).expect("the sidecar builds");
        let handle = built.handle();
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = proxy.local_addr().expect("local addr");
        let admin_addr = admin.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners {
            proxy,
            admin: Some(admin),
        };
        let task = tokio::spawn(built.serve(listeners, async move {
            // A dropped sender is a shutdown too.
            let _ = stopped.await;
        }));
        Sidecar {
            addr,
            admin: admin_addr,
            handle,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts with a config text whose `{UPSTREAM}` is replaced by `upstream`.
    pub async fn from_template(template: &str, upstream: &str) -> Sidecar {
        let text = template.replace("{UPSTREAM}", upstream);
        let config = Config::from_toml(&text, &Overrides::default())
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n---\n{text}"));
        Sidecar::start(config).await
    }

    /// Starts with the shipped `config.toml`, pointed at `upstream`.
    pub async fn shipped(upstream: &str) -> Sidecar {
        let overrides = Overrides {
            upstream: Some(upstream.to_string()),
            ..Overrides::default()
        };
        Sidecar::start(shipped_config(|text| text, overrides)).await
    }

    /// Read-only views into the running sidecar's internals.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// One sample of a metric (the first series whose name and labels
    /// are `series`, or start with `series{`), from the admin port's
    /// `/metrics` on a fresh connection, so no pooled connection outlives it.
    pub async fn metric(&self, series: &str) -> f64 {
        let (status, body) = one_shot(self.admin, "GET", "/metrics", &[], "").await;
        assert_eq!(status, 200, "/metrics");
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series || name.starts_with(&format!("{series}{{")))
                    .then(|| value.parse().ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    }

    /// Polls a metric until `want` holds; panics after `within`.
    pub async fn wait_metric(
        &self,
        series: &str,
        want: impl Fn(f64) -> bool,
        within: Duration,
    ) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let got = self.metric(series).await;
            if want(got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{series} on {} stuck at {got} for {within:?}",
                self.admin
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fires the shutdown signal (as SIGTERM would) and hands back the
    /// serving task, which ends once the drain is over.
    pub fn shutdown(mut self) -> JoinHandle<()> {
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

/// The shipped `config.toml`, its text changed by `edit`, with `overrides`.
pub fn shipped_config(edit: impl FnOnce(String) -> String, overrides: Overrides) -> Config {
    Config::from_toml(&edit(SHIPPED.to_string()), &overrides)
        .unwrap_or_else(|e| panic!("the shipped config, as the test edits it, is invalid: {e}"))
}

/// The shipped config pointed at `upstream` and `redis_url`, as `replica`.
pub fn config(upstream: &str, redis_url: Option<&str>, replica: &str) -> Config {
    shipped_config(
        |text| text,
        Overrides {
            upstream: Some(upstream.to_string()),
            redis_url: redis_url.map(str::to_string),
            replica_id: Some(replica.to_string()),
            ..Overrides::default()
        },
    )
}

/// Polls `url` until it shows upstream status `want`; panics with what it
/// saw after `within`. Returns how long that took.
pub async fn until_status(
    http: &Client,
    url: &str,
    want: &str,
    within: std::time::Duration,
) -> std::time::Duration {
    let began = std::time::Instant::now();
    loop {
        let r = http.get(url).await;
        if r.status == 200 && r.game_status() == want {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < within,
            "{url} still shows {:?} ({}) {within:?} after it became {want}",
            r.game_status(),
            r.x_cache()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A watched write: game `id`'s status set to `status` through `sidecar`.
pub async fn put_status(http: &Client, sidecar: &Sidecar, id: &str, status: &str) -> Resp {
    http.put(
        &sidecar.url(&game_path(id)),
        &format!(r#"{{"status":"{status}"}}"#),
    )
    .await
}

/// Sidecars named `replicas`, started in order in front of `upstream` on
/// `redis`; answers once `redis` sees each of them reading the event log.
pub async fn fleet<const N: usize>(
    redis: &RedisServer,
    upstream: &str,
    replicas: [&str; N],
) -> [Sidecar; N] {
    let mut fleet = Vec::new();
    for r in replicas {
        fleet.push(Sidecar::start(config(upstream, Some(&redis.url()), r)).await);
    }
    redis.wait_fleet_connected(N).await;
    fleet.try_into().ok().expect("one sidecar per replica")
}

/// Waits until `sidecar` serves game `id`'s odds with upstream status
/// `status`; it may serve the old one for at most `within`.
pub async fn until_serves(
    http: &Client,
    sidecar: &Sidecar,
    id: &str,
    status: &str,
    within: Duration,
) -> Duration {
    until_status(http, &sidecar.url(&odds_path(id)), status, within).await
}

/// A client reading `urls` round after round (a `pause` between rounds)
/// until stopped, as clients go on reading while something fails under the
/// sidecars. It counts its reads, and the answers that are not a 200
/// showing game status `want`.
pub struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicUsize>,
    wrong: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Reader {
    pub fn start(urls: Vec<String>, want: &'static str, pause: Duration) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        let wrong = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (stop, reads, wrong) = (stop.clone(), reads.clone(), wrong.clone());
            async move {
                let http = Client::new();
                while !stop.load(Ordering::Relaxed) {
                    for u in &urls {
                        let r = http.get(u).await;
                        reads.fetch_add(1, Ordering::Relaxed);
                        if r.status != 200 || r.game_status() != want {
                            wrong.fetch_add(1, Ordering::Relaxed);
                            eprintln!("during failover: {u}: {} {}", r.status, r.game_status());
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        });
        Reader {
            stop,
            reads,
            wrong,
            task,
        }
    }

    /// Stops reading; answers how many reads there were, and how many of
    /// them were wrong.
    pub async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the reader panicked");
        (
            self.reads.load(Ordering::Relaxed),
            self.wrong.load(Ordering::Relaxed),
        )
    }
}
