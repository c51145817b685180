//! Freshness under faults (SPEC §6): a change seen on one replica reaches
//! the others through the event log even when Redis refuses writes for a
//! while, or when a replica's Redis flows go silent without an RST.
//!
//! Real `redis-server`, real sidecars, the demo simulator as upstream, and
//! a TCP relay in the test that can blackhole a replica's flows (keep the
//! sockets, drop the bytes), as a rescheduled Redis pod's old address does.

#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/sidecar.rs"]
mod sidecar;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oddscache::config::Dur;
use redis_server::RedisServer;
use sidecar::{config, Http, Sidecar, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const POLL: Duration = Duration::from_millis(20);

fn odds_path(id: &str) -> String {
    format!("/api/v1/games/{id}/odds")
}

fn game_path(id: &str) -> String {
    format!("/api/v1/games/{id}")
}

/// Polls `url` until it shows `want`; panics with what it saw after
/// `within`. Returns how long that took.
async fn until_status(http: &Http, url: &str, want: &str, within: Duration) -> Duration {
    let began = Instant::now();
    loop {
        let r = http.get(url).await;
        if r.status == 200 && r.game_status() == want {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < within,
            "{url} still shows {:?} ({}) {within:?} after the change",
            r.game_status(),
            r.x_cache
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Redis refuses writes (`CLIENT PAUSE … WRITE`) just as replica B sees a
/// game go live: B's compare-and-set, deletion and append all time out.
/// Replica A's read of the log is never interrupted, so no resync covers
/// it. The event waits in B's outbox and reaches A once Redis takes writes
/// again. (On the pub/sub build, B logged "cannot publish invalidation"
/// and A served the old status as a HIT until its TTL ran out.)
#[tokio::test(flavor = "multi_thread")]
async fn an_event_seen_while_redis_refuses_writes_reaches_the_fleet_after() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let a = Sidecar::start(config(&up.url(), Some(&redis.url()), "a")).await;
    let b = Sidecar::start(config(&up.url(), Some(&redis.url()), "b")).await;
    redis.wait_fleet_connected(2).await;
    let http = Http::new();
    let id = up.sim.game_ids()[0].clone();
    assert!(up.sim.set_status(&id, "pre_game"));
    let odds = odds_path(&id);
    for s in [&a, &b] {
        assert_eq!(http.get(&s.url(&odds)).await.game_status(), "pre_game");
        assert_eq!(http.get(&s.url(&odds)).await.x_cache, "HIT");
    }

    let pause = Duration::from_millis(1500);
    let mut c = redis.conn().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("WRITE")
        .query_async(&mut c)
        .await
        .unwrap();
    let paused_at = Instant::now();
    let w = http
        .put(&b.url(&game_path(&id)), r#"{"status":"in_progress"}"#)
        .await;
    assert_eq!(w.game_status(), "in_progress");
    // B itself dropped its copy at once.
    assert_eq!(http.get(&b.url(&odds)).await.game_status(), "in_progress");
    let took = until_status(
        &http,
        &a.url(&odds),
        "in_progress",
        pause + Duration::from_secs(3),
    )
    .await;
    println!(
        "A saw the change {:?} after the pause began ({pause:?} pause)",
        took + (Instant::now() - paused_at - took)
    );
    a.stop().await;
    b.stop().await;
}

/// A TCP relay in front of Redis whose flows can be blackholed: the
/// sockets stay open and bytes are read but never forwarded, so the
/// client sees silence, not an RST. Flows opened after a blackhole carry
/// bytes again (the new address answers).
struct Relay {
    addr: SocketAddr,
    /// Flows opened at or before this generation are silent.
    silenced: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silenced = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(AtomicU64::new(1));
        let (s, g) = (Arc::clone(&silenced), Arc::clone(&generation));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let mine = g.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, mine, Arc::clone(&s)));
                tokio::spawn(pipe(sr, cw, mine, Arc::clone(&s)));
            }
        });
        Relay {
            addr,
            silenced,
            generation,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Every flow open now goes silent; new ones work.
    fn blackhole_open_flows(&self) {
        let now = self.generation.fetch_add(1, Ordering::SeqCst);
        self.silenced.store(now, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: u64,
    silenced: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if generation <= silenced.load(Ordering::SeqCst) {
            continue; // read and dropped: the peer sees silence
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Replica A reaches Redis through a relay that blackholes its flows; two
/// seconds later replica B sees a change. A's blocking read of the log
/// gets no reply, so within `liveness_timeout` past its heartbeat A makes
/// a new connection, resumes from the last entry it applied and drops the
/// game. (The pub/sub subscriber waited on its dead stream forever.)
#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_replica_reconnects_and_replays_what_it_missed() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let up = Upstream::start().await;
    let liveness = Duration::from_secs(1);
    let mut cfg_a = config(&up.url(), Some(&relay.url()), "a");
    let ra = cfg_a.redis.as_mut().expect("redis configured");
    ra.liveness_timeout = Dur(liveness);
    // Only the replay may make A drop the game: not the outage bound.
    ra.outage_max_staleness = Dur(Duration::from_secs(3600));
    let a = Sidecar::start(cfg_a).await;
    let b = Sidecar::start(config(&up.url(), Some(&redis.url()), "b")).await;
    redis.wait_fleet_connected(2).await;
    let http = Http::new();
    let id = up.sim.game_ids()[1].clone();
    assert!(up.sim.set_status(&id, "pre_game"));
    let odds = odds_path(&id);
    for s in [&a, &b] {
        assert_eq!(http.get(&s.url(&odds)).await.game_status(), "pre_game");
        assert_eq!(http.get(&s.url(&odds)).await.x_cache, "HIT");
    }

    relay.blackhole_open_flows();
    let cut_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w = http
        .put(&b.url(&game_path(&id)), r#"{"status":"in_progress"}"#)
        .await;
    assert_eq!(w.game_status(), "in_progress");
    // The read's heartbeat (1 s), the liveness timeout, a reconnection.
    let bound = Duration::from_secs(1) + liveness + Duration::from_secs(2);
    until_status(&http, &a.url(&odds), "in_progress", bound).await;
    println!(
        "A served the change {:?} after its flows were blackholed",
        cut_at.elapsed()
    );
    a.stop().await;
    b.stop().await;
}
