//! Fleet figures on loopback Redis, printed as tables:
//!
//! - invalidation fan-out: a change invalidated on replica A until replica B
//!   no longer holds the entry (p50/p99/max over `FANOUT_CHANGES`, default 1000);
//! - tag invalidation cost for 100, 1k, 10k and 100k keys under one tag, in
//!   L1 and in Redis, with the Redis commands it took.
//!
//! - the event log under faults: how soon after Redis answers again the
//!   outbox is drained and a peer has applied every queued event; how soon
//!   a replica whose flows are blackholed notices, reconnects and applies
//!   what it missed; and that a 10 s partition is replayed whole, in order.
//!
//! Run: `cargo run --release --example fleet_figures`. It starts its own
//! `redis-server` on a free loopback port and stops it when done.

#[path = "../tests/common/relay.rs"]
mod relay;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use oddscache::cache::{Entry, Lookup, NewEntry};
use oddscache::config::{Config, Overrides, SHIPPED};
use oddscache::invalidate::{Invalidation, Origin, Target};
use oddscache::watch::{GameId, Reason};
use oddscache::{shutdown, Core};

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        // Dropped on every path from here, so the server is always reaped.
        let redis = Redis { child, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn core(redis: &Redis, id: &str, signal: shutdown::Signal) -> Core {
    core_at(&redis.url(), id, signal)
}

fn core_at(url: &str, id: &str, signal: shutdown::Signal) -> Core {
    let overrides = Overrides {
        redis_url: Some(url.into()),
        replica_id: Some(id.into()),
        upstream: Some("http://127.0.0.1:9".into()),
        ..Overrides::default()
    };
    let config = Config::from_toml(SHIPPED, &overrides).expect("config");
    Core::start(&config, signal).expect("core")
}

fn entry(key: &str, tags: &[&str]) -> Arc<Entry> {
    Arc::new(Entry::new(
        NewEntry {
            key: key.into(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(&[b'x'; 1500]),
            initial_age: Duration::ZERO,
            fresh_for: Duration::from_secs(3600),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            must_revalidate: false,
            tags: tags.iter().map(|t| Arc::from(*t)).collect(),
        },
        Instant::now(),
    ))
}

fn held(core: &Core, key: &str) -> bool {
    matches!(
        core.store.lookup(key, &HeaderMap::new()).0,
        Lookup::Found(_)
    )
}

async fn until_connected(cores: &[&Core]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cores
        .iter()
        .all(|c| c.redis.as_ref().is_some_and(|r| r.is_connected()))
    {
        assert!(Instant::now() < deadline, "replicas did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The subscriptions come up on their own connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn fanout(redis: &Redis, changes: usize) {
    let (_stop, signal) = shutdown::channel();
    let a = core(redis, "a", signal.clone());
    let b = core(redis, "b", signal);
    until_connected(&[&a, &b]).await;
    let mut took = Vec::with_capacity(changes);
    for i in 0..changes {
        let id = format!("g-{i}");
        let key = format!("/api/v1/games/{id}/odds");
        let tag = format!("game:{id}");
        let ticket = b.store.begin_fetch();
        b.store.insert(&ticket, &key, &[], entry(&key, &[&tag]));
        drop(ticket);
        let started = Instant::now();
        a.invalidator
            .invalidate(Invalidation {
                target: Target::Game {
                    game_id: GameId::try_from(id.as_str()).unwrap(),
                    sport_id: None,
                    league_id: None,
                    with_sidebar: false,
                },
                reason: Reason::StatusChange,
                origin: Origin::Local,
                detail: String::new(),
                state: None,
            })
            .await;
        while held(&b, &key) {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "change {i} never reached b"
            );
            tokio::task::yield_now().await;
        }
        took.push(started.elapsed());
    }
    took.sort();
    println!("\n## Invalidation fan-out, replica A → B over loopback Redis ({changes} changes)\n");
    println!("| p50 | p99 | max |\n| --- | --- | --- |");
    println!(
        "| {:?} | {:?} | {:?} |",
        pct(&took, 0.5),
        pct(&took, 0.99),
        took[took.len() - 1]
    );
}

async fn tag_costs(redis: &Redis) {
    let (_stop, signal) = shutdown::channel();
    let a = core(redis, "t", signal);
    until_connected(&[&a]).await;
    let tier = Arc::clone(a.redis.as_ref().unwrap());
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    println!("\n## Invalidating one tag\n");
    println!("| keys under the tag | L1 invalidate | Redis delete (SMEMBERS + UNLINK) | Redis commands |");
    println!("| --- | --- | --- | --- |");
    for n in [100usize, 1_000, 10_000, 100_000] {
        let tag = format!("bulk:{n}");
        let ticket = a.store.begin_fetch();
        for i in 0..n {
            let key = format!("/bulk/{n}/{i}");
            a.store.insert(&ticket, &key, &[], entry(&key, &[&tag]));
        }
        drop(ticket);
        let registry = format!("oddscache:registry:{tag}");
        let members: Vec<String> = (0..n)
            .map(|i| format!("oddscache:resp:/bulk/{n}/{i}"))
            .collect();
        for chunk in members.chunks(5000) {
            let mut pipe = redis::pipe();
            pipe.cmd("SADD").arg(&registry).arg(chunk).ignore();
            for m in chunk {
                pipe.cmd("SET").arg(m).arg("x").ignore();
            }
            let _: () = pipe.query_async(&mut conn).await.unwrap();
        }
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        let started = Instant::now();
        let local = a.store.invalidate_tags(&[tag.as_str()]);
        let local_took = started.elapsed();
        let started = Instant::now();
        // The tag's registry can exceed the fill path's 250ms budget at
        // 100k members; the benchmark measures, it does not time out.
        let deleted = tier.delete(std::slice::from_ref(&tag), &[]).await;
        let redis_took = started.elapsed();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let calls: u64 = info
            .lines()
            .filter(|l| l.starts_with("cmdstat_smembers:") || l.starts_with("cmdstat_unlink:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        let redis_cell = match deleted {
            Ok(d) => format!("{redis_took:?} ({} keys)", d.deleted),
            Err(e) => format!("failed after {redis_took:?}: {e}"),
        };
        println!(
            "| {n} | {local_took:?} ({local} entries) | {redis_cell} | {calls} in 2 round trips |"
        );
    }
}

fn game(id: &str) -> Invalidation {
    Invalidation {
        target: Target::Game {
            game_id: GameId::try_from(id).unwrap(),
            sport_id: None,
            league_id: None,
            with_sidebar: false,
        },
        reason: Reason::StatusChange,
        origin: Origin::Local,
        detail: String::new(),
        state: None,
    }
}

/// Stores `n` entries `/f/{prefix}/{i}` tagged `game:{prefix}-{i}` in `core`.
fn fill(core: &Core, prefix: &str, n: usize) {
    let ticket = core.store.begin_fetch();
    for i in 0..n {
        let key = format!("/f/{prefix}/{i}");
        let tag = format!("game:{prefix}-{i}");
        core.store.insert(&ticket, &key, &[], entry(&key, &[&tag]));
    }
}

/// Waits until `core` holds none of `fill(prefix, n)`'s entries.
async fn until_dropped(core: &Core, prefix: &str, n: usize, within: Duration) -> Duration {
    let started = Instant::now();
    while (0..n).any(|i| held(core, &format!("/f/{prefix}/{i}"))) {
        assert!(started.elapsed() < within, "{prefix}: never dropped");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

async fn log_faults() {
    println!(
        "
## The event log under faults
"
    );
    println!(
        "| fault | measured | bound |
| --- | --- | --- |"
    );
    // Redis down while A invalidates 100 games: from Redis answering again
    // to A's outbox empty, and to B having dropped all 100.
    {
        let mut redis = Redis::start();
        let port = redis.port;
        let (_stop, signal) = shutdown::channel();
        let a = core(&redis, "a", signal.clone());
        let b = core(&redis, "b", signal);
        until_connected(&[&a, &b]).await;
        fill(&b, "down", 100);
        drop(redis);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Each waits up to 4 × command_timeout for delivery, together.
        let ids: Vec<String> = (0..100).map(|i| format!("down-{i}")).collect();
        futures_util::future::join_all(ids.iter().map(|id| a.invalidator.invalidate(game(id))))
            .await;
        let tier = Arc::clone(a.redis.as_ref().unwrap());
        assert_eq!(tier.outbox_len(), 100, "the events wait in the outbox");
        redis = Redis::start_on(port);
        let back = Instant::now();
        while tier.outbox_len() > 0 {
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "outbox never drained"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let drained = back.elapsed();
        let applied = drained + until_dropped(&b, "down", 100, Duration::from_secs(10)).await;
        println!("| Redis down, 100 events queued: outbox drained after Redis answers | {drained:?} | 1 s |");
        println!("| … and the peer has applied all 100 | {applied:?} | |");
        drop(redis);
    }
    // A's flows blackholed: B invalidates 100 ms later; A reconnects and
    // drops the entry.
    {
        let redis = Redis::start();
        let relay = relay::Relay::start(redis.port).await;
        let (_stop, signal) = shutdown::channel();
        let a = core_at(&relay.url(), "a", signal.clone());
        let b = core(&redis, "b", signal);
        until_connected(&[&a, &b]).await;
        fill(&a, "hole", 1);
        relay.blackhole_open_flows();
        let cut = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.invalidator.invalidate(game("hole-0")).await;
        until_dropped(&a, "hole", 1, Duration::from_secs(20)).await;
        println!(
            "| flows blackholed: the change reaches the cut-off replica after | {:?} | liveness_timeout (3 s) + 1 s heartbeat + 1 s |",
            cut.elapsed()
        );
    }
    // A cut off for 10 s while B writes 200 events: all replayed, in order.
    {
        let redis = Redis::start();
        let relay = relay::Relay::start(redis.port).await;
        let (_stop, signal) = shutdown::channel();
        let a = core_at(&relay.url(), "a", signal.clone());
        let b = core(&redis, "b", signal);
        until_connected(&[&a, &b]).await;
        fill(&a, "part", 200);
        relay.blackhole_everything();
        for i in 0..200 {
            b.invalidator.invalidate(game(&format!("part-{i}"))).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        relay.heal();
        let healed = Instant::now();
        let took = until_dropped(&a, "part", 200, Duration::from_secs(20)).await;
        let order: Vec<String> = a
            .invalidator
            .journal()
            .recent(usize::MAX, None, None)
            .iter()
            .rev()
            .filter_map(|e| e.game_id.clone())
            .collect();
        let want: Vec<String> = (0..200).map(|i| format!("part-{i}")).collect();
        let in_order = order == want;
        println!(
            "| 10 s partition, 200 events: replayed after healing | {} of 200 in {took:?} ({:?} after healing), {} | all, in order |",
            order.len(),
            healed.elapsed(),
            if in_order { "in order" } else { "OUT OF ORDER" }
        );
        assert!(in_order, "replayed out of order: {order:?}");
    }
}

#[tokio::main]
async fn main() {
    let changes = std::env::var("FANOUT_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let redis = Redis::start();
    fanout(&redis, changes).await;
    tag_costs(&redis).await;
    log_faults().await;
}
