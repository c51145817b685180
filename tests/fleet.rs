//! The fleet (SPEC §5, §6): several sidecars on one Redis in front of one
//! upstream, and the invalidation door driven in-process where the events
//! each replica records have to be counted.
//!
//! Run with `cargo test --test fleet`; the figures test prints with
//! `-- --nocapture`.

mod common;

use common::client::{Client, Resp};
use common::sim::{game_path, odds_path, SimUpstream};
use common::{redis_server, sidecar};

use std::sync::Arc;
use std::time::{Duration, Instant};

use oddscache::invalidate::detect::Detector;
use oddscache::invalidate::known::Known;
use oddscache::invalidate::redis::RedisTier;
use oddscache::invalidate::wire::{self, Message};
use oddscache::invalidate::{Event, Invalidation, Invalidator, Origin, Target};
use oddscache::shutdown;
use oddscache::watch::{self, GameSnapshot, Reason};
use redis::AsyncCommands;

use redis_server::RedisServer;
use sidecar::{config, fleet, put_status};

const PREFIX: &str = "oddscache:";
/// How long a peer may take to see an invalidation on loopback.
const PROPAGATION: Duration = Duration::from_secs(2);
/// Generous bound for setup probes (connections, subscriptions).
const SETUP: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// Three sidecars, all caching the game: a status change written through r1
/// reaches r2 and r3, whose next GET is a MISS with the new status.
#[tokio::test(flavor = "multi_thread")]
async fn a_status_change_on_one_replica_evicts_the_game_on_its_peers() {
    let redis = RedisServer::start();
    let up = SimUpstream::start().await;
    let fleet = fleet(&redis, &up.url(), ["r1", "r2", "r3"]).await;
    let http = Client::new();
    let id = up.sim.game_ids()[0].clone();
    assert!(up.sim.set_status(&id, "pre_game"));
    let odds = odds_path(&id);

    for (i, s) in fleet.iter().enumerate() {
        let first = http.get(&s.url(&odds)).await;
        assert_eq!(first.status, 200, "r{}", i + 1);
        assert_eq!(first.x_cache(), "MISS", "r{}: first GET", i + 1);
        assert_eq!(first.game_status(), "pre_game");
        let second = http.get(&s.url(&odds)).await;
        assert_eq!(second.x_cache(), "HIT", "r{}: second GET", i + 1);
        assert_eq!(second.game_status(), "pre_game");
    }
    let served = up.sim.requests_served();
    assert_eq!(served, 3, "one upstream fetch per replica");

    // The change, seen only by r1: a watched write.
    let w = put_status(&http, &fleet[0], &id, "in_progress").await;
    assert_eq!(w.status, 200);
    assert_eq!(w.x_cache(), "BYPASS");
    assert_eq!(w.game_status(), "in_progress");

    // r1 dropped its own copy before answering the write.
    let r1 = http.get(&fleet[0].url(&odds)).await;
    assert_eq!(
        (r1.x_cache(), r1.game_status().as_str()),
        ("MISS", "in_progress")
    );

    for (i, s) in fleet.iter().enumerate().skip(1) {
        let deadline = Instant::now() + PROPAGATION;
        loop {
            let r = http.get(&s.url(&odds)).await;
            assert_eq!(r.status, 200);
            if r.game_status() == "in_progress" {
                assert_eq!(
                    r.x_cache(),
                    "MISS",
                    "r{}: the new status is a fresh fill",
                    i + 1
                );
                break;
            }
            // Until the event lands the old copy is still a HIT, never a refetch.
            assert_eq!(
                r.x_cache(),
                "HIT",
                "r{}: old status from {}",
                i + 1,
                r.x_cache()
            );
            assert!(
                Instant::now() < deadline,
                "r{} still serves the old status {PROPAGATION:?} after the change",
                i + 1
            );
            tokio::time::sleep(POLL).await;
        }
    }
    // Once propagated, nobody serves the old status, and the fleet caches again.
    for (i, s) in fleet.iter().enumerate() {
        for _ in 0..3 {
            let r = http.get(&s.url(&odds)).await;
            assert_eq!(r.game_status(), "in_progress", "r{}", i + 1);
            assert_eq!(r.x_cache(), "HIT", "r{}", i + 1);
        }
    }
    // 3 first fills + the write + one refill per replica.
    assert_eq!(up.sim.requests_served(), served + 4);
    for s in fleet {
        s.stop().await;
    }
}

/// A write through r1 that changes nothing watched still drops its URI on
/// every replica (RFC 9111 §4.4, fleet-wide): r2's copy is gone within the
/// propagation bound, through the one door, whose log entry says `MANUAL`
/// and names the method.
#[tokio::test(flavor = "multi_thread")]
async fn an_unsafe_method_through_one_replica_drops_its_uri_on_every_replica() {
    let redis = RedisServer::start();
    let up = SimUpstream::start().await;
    let [r1, r2] = fleet(&redis, &up.url(), ["r1", "r2"]).await;
    let http = Client::new();
    let id = up.sim.game_ids()[0].clone();
    assert!(up.sim.set_status(&id, "pre_game"));
    let odds = odds_path(&id);
    for s in [&r1, &r2] {
        assert_eq!(http.get(&s.url(&odds)).await.x_cache(), "MISS");
        assert_eq!(http.get(&s.url(&odds)).await.x_cache(), "HIT");
    }

    // The same status and odds: the watcher sees no change.
    let w = http.put(&r1.url(&odds), r#"{"status":"pre_game"}"#).await;
    assert_eq!((w.status.as_u16(), w.x_cache()), (200, "BYPASS"));
    assert_eq!(http.get(&r1.url(&odds)).await.x_cache(), "MISS", "r1");
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let r = http.get(&r2.url(&odds)).await;
        if r.x_cache() == "MISS" {
            break;
        }
        assert_eq!(r.x_cache(), "HIT");
        assert!(
            Instant::now() < deadline,
            "r2 still serves its copy {PROPAGATION:?} after a PUT through r1"
        );
        tokio::time::sleep(POLL).await;
    }

    let uri: Vec<_> = redis
        .log()
        .await
        .into_iter()
        .filter(|m| m.event.replica == "r1" && m.event.reason == Reason::Manual)
        .collect();
    assert_eq!(
        uri.len(),
        1,
        "one logged invalidation for the write: {uri:?}"
    );
    assert!(
        uri[0].event.detail.contains("PUT") && uri[0].keys.contains(&odds),
        "the event names the method and the URI's key: {:?}",
        uri[0]
    );
    r1.stop().await;
    r2.stop().await;
}

/// A peer's URI invalidation drops the URI's own entry by its tag, even
/// when the keys the event lists were cut (a long list is cut to fit the
/// log): here they are empty.
#[tokio::test(flavor = "multi_thread")]
async fn a_logged_uri_invalidation_drops_the_uri_without_its_keys() {
    let redis = RedisServer::start();
    let up = SimUpstream::start().await;
    let [r2] = fleet(&redis, &up.url(), ["r2"]).await;
    let http = Client::new();
    let odds = odds_path(&up.sim.game_ids()[0]);
    assert_eq!(http.get(&r2.url(&odds)).await.x_cache(), "MISS");
    assert_eq!(http.get(&r2.url(&odds)).await.x_cache(), "HIT");

    let event = Event {
        id: "e-1".into(),
        at: "2026-12-02T00:00:00.000Z".into(),
        at_ms: 0,
        reason: Reason::Manual,
        game_id: None,
        sport_id: None,
        league_id: None,
        status: None,
        tags: vec![format!("#uri {odds}")],
        keys_deleted: 0,
        origin: Origin::Local,
        replica: "r9".into(),
        detail: "PUT answered 200".into(),
    };
    let msg = Message::new(event, "elsewhere", Vec::new(), None);
    let mut c = redis.conn().await;
    let _: String = redis::cmd("XADD")
        .arg("oddscache:events")
        .arg("*")
        .arg("m")
        .arg(wire::encode(&msg))
        .query_async(&mut c)
        .await
        .expect("XADD");
    let deadline = Instant::now() + PROPAGATION;
    while http.get(&r2.url(&odds)).await.x_cache() == "HIT" {
        assert!(
            Instant::now() < deadline,
            "r2 still serves {odds} {PROPAGATION:?} after a logged PUT on it"
        );
        tokio::time::sleep(POLL).await;
    }
    r2.stop().await;
}

/// A replica without HTTP: its door, detector and Redis tier, as `run`
/// wires them, so the events it records can be counted.
struct Replica {
    inv: Arc<Invalidator>,
    detector: Arc<Detector>,
    tier: Arc<RedisTier>,
    _stop: shutdown::Trigger,
}

impl Replica {
    fn start(redis: &RedisServer, id: &str) -> Replica {
        let cfg = config("http://127.0.0.1:9", Some(&redis.url()), id);
        let (trigger, signal) = shutdown::channel();
        let core = oddscache::Core::start(&cfg, signal).expect("core");
        Replica {
            inv: core.invalidator,
            detector: core.detector,
            tier: core.redis.expect("redis configured"),
            _stop: trigger,
        }
    }

    /// `(origin, reason)` of this replica's events about `game`, oldest first.
    fn events(&self, game: &str) -> Vec<(Origin, Reason)> {
        let mut e: Vec<_> = self
            .inv
            .journal()
            .recent(usize::MAX, None, Some(game))
            .iter()
            .map(|e| (e.origin, e.reason))
            .collect();
        e.reverse();
        e
    }
}

async fn replicas(redis: &RedisServer, n: usize) -> Vec<Replica> {
    let fleet: Vec<Replica> = (1..=n)
        .map(|i| Replica::start(redis, &format!("r{i}")))
        .collect();
    let deadline = Instant::now() + SETUP;
    while !fleet.iter().all(|r| r.tier.is_connected()) {
        assert!(
            Instant::now() < deadline,
            "replicas did not connect to Redis"
        );
        tokio::time::sleep(POLL).await;
    }
    redis.wait_fleet_connected(n).await;
    fleet
}

fn game_json(id: &str, status: &str, home: f64) -> String {
    serde_json::json!({
        "game_id": id,
        "sport_id": "soccer",
        "league_id": "epl",
        "status": status,
        "odds": {"moneyline": {"home": home, "draw": 3.2, "away": 4.0}},
    })
    .to_string()
}

fn snapshot(r: &Replica, id: &str, status: &str) -> Vec<GameSnapshot> {
    let games = r
        .detector
        .extract(None, game_json(id, status, 2.0).as_bytes());
    assert_eq!(games.len(), 1);
    games
}

/// Waits until `check` holds over the fleet's events, or fails with them.
async fn until_events(
    fleet: &[Replica],
    game: &str,
    check: impl Fn(&[Vec<(Origin, Reason)>]) -> bool,
) {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let all: Vec<_> = fleet.iter().map(|r| r.events(game)).collect();
        if check(&all) {
            return;
        }
        assert!(Instant::now() < deadline, "events never settled: {all:?}");
        tokio::time::sleep(POLL).await;
    }
}

async fn redis_state(redis: &RedisServer, game: &str) -> serde_json::Value {
    let raw: Option<String> = redis
        .conn()
        .await
        .get(format!("{PREFIX}game:{game}"))
        .await
        .unwrap();
    serde_json::from_str(&raw.unwrap_or_else(|| panic!("no {PREFIX}game:{game} in Redis"))).unwrap()
}

/// Three replicas see the same transition at once: one records it as
/// `local` and fans it out, the other two record it as `peer`.
#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_seeing_one_transition_record_it_once() {
    let redis = RedisServer::start();
    let fleet = replicas(&redis, 3).await;
    let game = "g-7";
    for r in &fleet {
        r.detector.observe(&snapshot(r, game, "pre_game")).await;
    }
    assert!(
        fleet.iter().all(|r| r.events(game).is_empty()),
        "first sightings invalidate nothing"
    );
    assert_eq!(redis_state(&redis, game).await["status"], "scheduled");

    let live: Vec<_> = fleet
        .iter()
        .map(|r| snapshot(r, game, "in_progress"))
        .collect();
    futures_util::future::join_all(fleet.iter().zip(&live).map(|(r, g)| r.detector.observe(g)))
        .await;

    let count = |all: &[Vec<(Origin, Reason)>], o: Origin| {
        all.iter()
            .flatten()
            .filter(|(origin, _)| *origin == o)
            .count()
    };
    until_events(&fleet, game, |all| count(all, Origin::Peer) >= 2).await;
    // Give a duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all: Vec<_> = fleet.iter().map(|r| r.events(game)).collect();
    assert_eq!(count(&all, Origin::Local), 1, "{all:?}");
    assert_eq!(count(&all, Origin::Peer), 2, "{all:?}");
    for (i, events) in all.iter().enumerate() {
        assert_eq!(events.len(), 1, "r{}: {events:?}", i + 1);
        assert_eq!(events[0].1, Reason::StatusChange);
    }
    assert_eq!(redis_state(&redis, game).await["status"], "live");

    // Seen again by everyone: nothing more to record.
    for (r, g) in fleet.iter().zip(&live) {
        r.detector.observe(g).await;
    }
    let again: Vec<_> = fleet.iter().map(|r| r.events(game)).collect();
    assert_eq!(again, all);
}

/// `cancelled` and `postponed` give their own reasons, on the origin and on
/// its peers, and the shared state records the new status.
#[tokio::test(flavor = "multi_thread")]
async fn cancelled_and_postponed_give_their_reasons() {
    let redis = RedisServer::start();
    let fleet = replicas(&redis, 2).await;
    for (game, status, reason) in [
        ("g-21", "cancelled", Reason::Cancelled),
        ("g-22", "postponed", Reason::Postponed),
    ] {
        let (origin, peer) = (&fleet[0], &fleet[1]);
        origin
            .detector
            .observe(&snapshot(origin, game, "pre_game"))
            .await;
        peer.detector
            .observe(&snapshot(peer, game, "pre_game"))
            .await;
        origin
            .detector
            .observe(&snapshot(origin, game, status))
            .await;
        assert_eq!(origin.events(game), [(Origin::Local, reason)]);
        until_events(&fleet, game, |all| !all[1].is_empty()).await;
        assert_eq!(peer.events(game), [(Origin::Peer, reason)]);
        assert_eq!(redis_state(&redis, game).await["status"], status);
        let event = &origin.inv.journal().recent(1, None, Some(game))[0];
        assert!(
            event.tags.contains(&format!("game:{game}")),
            "{:?}",
            event.tags
        );
        assert!(
            event.tags.contains(&"sidebar:soccer:epl".to_string()),
            "{:?}",
            event.tags
        );
        // The peer adopted the state: its own sighting is no news.
        peer.detector.observe(&snapshot(peer, game, status)).await;
        assert_eq!(peer.events(game).len(), 1);
    }
}

fn observed(r: &Replica, body: serde_json::Value) -> Vec<GameSnapshot> {
    let games = r.detector.extract(None, body.to_string().as_bytes());
    assert_eq!(games.len(), 1);
    games
}

/// The first odds after a status change set the baseline for the fleet,
/// not for the replica that saw them: r1 fills from 2.0 after the game
/// went live (its revealing body had no odds), then r2 meets 2.5, 25% away
/// from what r1's entries were built from. That is a movement, decided once.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_odds_after_a_status_change_set_the_fleet_baseline() {
    let redis = RedisServer::start();
    let fleet = replicas(&redis, 2).await;
    let (r1, r2) = (&fleet[0], &fleet[1]);
    let game = "g-31";
    for r in &fleet {
        r.detector.observe(&snapshot(r, game, "pre_game")).await;
    }
    // The change, revealed by a body without odds: no baseline any more.
    let bare = serde_json::json!({"game_id": game, "status": "in_progress"});
    r1.detector.observe(&observed(r1, bare)).await;
    assert_eq!(r1.events(game), [(Origin::Local, Reason::StatusChange)]);
    until_events(&fleet, game, |all| !all[1].is_empty()).await;
    assert_eq!(redis_state(&redis, game).await["baseline_known"], false);

    // r1 refills from 2.0: that is the baseline of its entries, fleet-wide.
    let at = |r: &Replica, home: f64| {
        observed(
            r,
            serde_json::from_str(&game_json(game, "in_progress", home)).unwrap(),
        )
    };
    r1.detector.observe(&at(r1, 2.0)).await;
    assert_eq!(r1.events(game).len(), 1, "setting a baseline is no change");
    let shared = redis_state(&redis, game).await;
    assert_eq!(shared["baseline_known"], true, "{shared}");
    assert_eq!(shared["baseline"]["/moneyline/home"], 2.0, "{shared}");

    // r2 meets 2.5: r1's copies built from 2.0 are stale.
    r2.detector.observe(&at(r2, 2.5)).await;
    assert_eq!(
        r2.events(game),
        [
            (Origin::Peer, Reason::StatusChange),
            (Origin::Local, Reason::OddsMovement)
        ]
    );
    until_events(&fleet, game, |all| all[0].len() == 2).await;
    assert_eq!(r1.events(game)[1], (Origin::Peer, Reason::OddsMovement));
    assert_eq!(
        redis_state(&redis, game).await["baseline"]["/moneyline/home"],
        2.5
    );
}

/// SPEC §5: the odds baseline resets at each invalidation, a manual one
/// too, on every replica and in Redis. r1 and r2 know 2.0; after an SRE
/// invalidates the game through r1, 2.3 (15% from 2.0) is a first sighting
/// that sets the new baseline, and 2.6 (13% from 2.3) is a movement.
#[tokio::test(flavor = "multi_thread")]
async fn a_manual_invalidation_resets_the_fleet_baseline() {
    let redis = RedisServer::start();
    let fleet = replicas(&redis, 2).await;
    let (r1, r2) = (&fleet[0], &fleet[1]);
    let game = "g-51";
    for r in &fleet {
        r.detector.observe(&snapshot(r, game, "in_progress")).await;
    }
    r1.inv
        .invalidate(Invalidation {
            target: Target::Game {
                game_id: watch::GameId::try_from(game).unwrap(),
                sport_id: None,
                league_id: None,
                with_sidebar: false,
            },
            reason: Reason::Manual,
            origin: Origin::Api,
            detail: "test".into(),
            state: None,
        })
        .await;
    until_events(&fleet, game, |all| all[1].len() == 1).await;
    assert_eq!(r2.events(game), [(Origin::Peer, Reason::Manual)]);
    let at = |home: f64| {
        observed(
            r2,
            serde_json::from_str(&game_json(game, "in_progress", home)).unwrap(),
        )
    };
    r2.detector.observe(&at(2.3)).await;
    assert_eq!(
        r2.events(game),
        [(Origin::Peer, Reason::Manual)],
        "2.3 was judged against the baseline from before the invalidation"
    );
    r2.detector.observe(&at(2.6)).await;
    assert_eq!(
        r2.events(game).last(),
        Some(&(Origin::Local, Reason::OddsMovement))
    );
    until_events(&fleet, game, |all| all[0].len() == 2).await;
}

/// A peer keeps the newest game state by compare-and-set order, not the
/// last event to arrive: two transitions published in the reverse order of
/// their compare-and-sets (the first one's Redis deletion was slower) leave
/// r2 knowing the newer baseline, 2.5, so a body back at 2.0 is a movement.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_keeps_the_newest_state_whatever_order_the_events_arrive_in() {
    let redis = RedisServer::start();
    let fleet = replicas(&redis, 2).await;
    let (r1, r2) = (&fleet[0], &fleet[1]);
    let game = "g-41";
    for r in &fleet {
        r.detector.observe(&snapshot(r, game, "in_progress")).await;
    }
    let first: Known = serde_json::from_value(redis_state(&redis, game).await).unwrap();
    assert!(first.seq > 0, "{first:?}");

    // Two moves, 2.0 -> 2.3 by r8 then 2.3 -> 2.6 by r9, as their
    // compare-and-sets left Redis.
    let at = |home: f64| {
        let g = &observed(
            r1,
            serde_json::from_str(&game_json(game, "in_progress", home)).unwrap(),
        )[0];
        watch::next_state(Some(&first.state), g, true)
    };
    let older = Known::after(Some(&first), at(2.3));
    let newer = Known::after(Some(&older), at(2.6));
    let _: () = redis
        .conn()
        .await
        .set(
            format!("{PREFIX}game:{game}"),
            serde_json::to_string(&newer).unwrap(),
        )
        .await
        .unwrap();
    let message = |replica: &str, state: &Known| Message {
        v: wire::VERSION,
        kind: wire::Kind::Invalidate,
        instance: "test".into(),
        event: Event {
            id: format!("{replica}-1"),
            at: "2026-11-25T20:31:07.000Z".into(),
            at_ms: 0,
            reason: Reason::OddsMovement,
            game_id: Some(game.into()),
            sport_id: None,
            league_id: None,
            status: None,
            tags: vec![format!("game:{game}")],
            keys_deleted: 0,
            origin: Origin::Local,
            replica: replica.into(),
            detail: String::new(),
        },
        keys: Vec::new(),
        state: Some(state.clone()),
    };
    // Delivered newest first.
    r1.tier.publish(&message("r9", &newer)).await.unwrap();
    r1.tier.publish(&message("r8", &older)).await.unwrap();
    until_events(&fleet, game, |all| all[1].len() == 2).await;

    // 2.3 is 11.5% from the fleet's baseline, 2.6: r2's copies are stale.
    r2.detector
        .observe(&observed(
            r2,
            serde_json::from_str(&game_json(game, "in_progress", 2.3)).unwrap(),
        ))
        .await;
    assert_eq!(
        r2.events(game).last(),
        Some(&(Origin::Local, Reason::OddsMovement)),
        "{:?}",
        r2.events(game)
    );
    let shared: Known = serde_json::from_value(redis_state(&redis, game).await).unwrap();
    assert!(shared.seq > newer.seq, "{shared:?} after {newer:?}");
    assert_eq!(shared.state.baseline["/moneyline/home"], 2.3);
}

/// The threshold is 10%: 9% is kept in cache, a drift to 11% from the
/// baseline evicts the game on every replica.
#[tokio::test(flavor = "multi_thread")]
async fn nine_percent_odds_movement_invalidates_nothing_eleven_does() {
    let redis = RedisServer::start();
    let up = SimUpstream::start().await;
    let [r1, r2] = fleet(&redis, &up.url(), ["r1", "r2"]).await;
    let http = Client::new();
    let id = up.sim.game_ids()[1].clone();
    assert!(up.sim.set_status(&id, "pre_game"));
    let odds = odds_path(&id);
    let home = |r: &Resp| r.json()["odds"]["moneyline"]["home"].as_f64().unwrap();

    let mut base = 0.0;
    for s in [&r1, &r2] {
        let miss = http.get(&s.url(&odds)).await;
        assert_eq!(miss.x_cache(), "MISS");
        base = home(&miss);
        assert_eq!(http.get(&s.url(&odds)).await.x_cache(), "HIT");
    }

    // 9%: r1 sees it through a write that returns the game; nothing moves.
    assert!(up.sim.scale_line(&id, "/moneyline/home", 1.09));
    let w = http.put(&r1.url(&game_path(&id)), "{}").await;
    assert_eq!(w.status, 200);
    assert!(
        (home(&w) / base - 1.09).abs() < 1e-6,
        "{} vs {base}",
        home(&w)
    );
    for s in [&r1, &r2] {
        let r = http.get(&s.url(&odds)).await;
        assert_eq!(r.x_cache(), "HIT", "9% must not invalidate");
        assert_eq!(home(&r), base);
    }
    let conn_ = &mut redis.conn().await;
    let state: String = conn_.get(format!("{PREFIX}game:{id}")).await.unwrap();
    assert!(
        state.contains(&format!("{base}")),
        "the baseline stays put: {state}"
    );

    // Further to 11% from the baseline: the drift fires.
    assert!(up.sim.scale_line(&id, "/moneyline/home", 1.11 / 1.09));
    let w = http.put(&r1.url(&game_path(&id)), "{}").await;
    let moved = home(&w);
    assert!((moved / base - 1.11).abs() < 1e-5, "{moved} vs {base}");
    let r = http.get(&r1.url(&odds)).await;
    assert_eq!((r.x_cache(), home(&r)), ("MISS", moved));
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let r = http.get(&r2.url(&odds)).await;
        if r.x_cache() == "MISS" {
            assert_eq!(home(&r), moved);
            break;
        }
        assert_eq!((r.x_cache(), home(&r)), ("HIT", base));
        assert!(Instant::now() < deadline, "r2 never dropped the moved odds");
        tokio::time::sleep(POLL).await;
    }
    r1.stop().await;
    r2.stop().await;
}

/// Registry sets get the 24h TTL on fill, and a game's invalidation deletes
/// them, their members (ours and other producers'), and the
/// `game_key_patterns` keys of every status.
#[tokio::test(flavor = "multi_thread")]
async fn registry_sets_expire_in_a_day_and_go_with_the_game() {
    let redis = RedisServer::start();
    let up = SimUpstream::start().await;
    let [r1] = fleet(&redis, &up.url(), ["r1"]).await;
    let http = Client::new();
    let id = up.sim.game_ids()[2].clone();
    assert!(up.sim.set_status(&id, "pre_game"));
    let c = &mut redis.conn().await;

    assert_eq!(http.get(&r1.url(&odds_path(&id))).await.x_cache(), "MISS");
    let registries = [
        format!("{PREFIX}registry:game:{id}"),
        format!("{PREFIX}registry:odds:scheduled:{id}"),
    ];
    // Registration is queued off the request path: wait for it.
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let exist: usize = redis::cmd("EXISTS")
            .arg(&registries[..])
            .query_async(c)
            .await
            .unwrap();
        if exist == registries.len() {
            break;
        }
        assert!(Instant::now() < deadline, "registry sets never appeared");
        tokio::time::sleep(POLL).await;
    }
    let ours = format!("{PREFIX}resp:/api/v1/games/{id}/odds");
    for reg in &registries {
        let ttl: i64 = c.ttl(reg).await.unwrap();
        assert!((86_000..=86_400).contains(&ttl), "{reg}: TTL {ttl}");
        let members: Vec<String> = c.smembers(reg).await.unwrap();
        assert_eq!(members, std::slice::from_ref(&ours), "{reg}");
    }

    // Another producer files its own key under the game, and per-status keys exist.
    let foreign = format!("api:game-detail:{id}");
    let _: () = c.set(&foreign, "x").await.unwrap();
    let _: () = c.sadd(&registries[0], &foreign).await.unwrap();
    let statuses = [
        "scheduled",
        "live",
        "finished",
        "cancelled",
        "postponed",
        "unknown",
    ];
    let per_status: Vec<String> = statuses.iter().map(|s| format!("odds:{s}:{id}")).collect();
    for k in &per_status {
        let _: () = c.set(k, "1").await.unwrap();
    }
    let unrelated = format!("odds:scheduled:{id}0");
    let _: () = c.set(&unrelated, "1").await.unwrap();

    // The write's answer reveals the change; it is acted on before r1 answers.
    let w = put_status(&http, &r1, &id, "in_progress").await;
    assert_eq!(w.status, 200);
    let mut gone = registries.to_vec();
    gone.push(foreign);
    gone.extend(per_status);
    for k in &gone {
        let exists: bool = c.exists(k).await.unwrap();
        assert!(!exists, "{k} survived the game's invalidation");
    }
    let exists: bool = c.exists(&unrelated).await.unwrap();
    assert!(exists, "another game's key was deleted");
    r1.stop().await;
}

/// Redis dies: the sidecars keep answering from L1 and upstream. It comes
/// back on the same port: the fleet resubscribes and converges again.
#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_rides_out_a_redis_outage_and_converges_after() {
    let redis = RedisServer::start();
    let port = redis.port();
    let up = SimUpstream::start().await;
    let [r1, r2] = fleet(&redis, &up.url(), ["r1", "r2"]).await;
    let http = Client::new();
    let ids = up.sim.game_ids();
    let (a, b) = (ids[3].clone(), ids[4].clone());
    assert!(up.sim.set_status(&a, "pre_game"));
    for s in [&r1, &r2] {
        assert_eq!(http.get(&s.url(&odds_path(&a))).await.x_cache(), "MISS");
    }

    drop(redis);
    for s in [&r1, &r2] {
        let hit = http.get(&s.url(&odds_path(&a))).await;
        assert_eq!((hit.status.as_u16(), hit.x_cache()), (200, "HIT"));
        // A fill still works: upstream, watch and store, without Redis.
        for _ in 0..2 {
            let r = http.get(&s.url(&odds_path(&b))).await;
            assert_eq!(r.status, 200);
        }
        let w = http.put(&s.url(&game_path(&b)), "{}").await;
        assert_eq!(w.status, 200);
    }
    assert_eq!(http.get(&r1.url(&odds_path(&b))).await.x_cache(), "HIT");

    let redis = RedisServer::start_on(port);
    redis.wait_fleet_connected(2).await;
    // A resubscribed replica drops its tagged entries, since it may have
    // missed invalidations: the game is filled again, then cached again.
    for s in [&r1, &r2] {
        for want in ["MISS", "HIT"] {
            let deadline = Instant::now() + PROPAGATION;
            loop {
                let r = http.get(&s.url(&odds_path(&a))).await;
                assert_eq!(r.game_status(), "pre_game");
                if r.x_cache() == want {
                    break;
                }
                assert!(Instant::now() < deadline, "no {want} after the resubscribe");
                tokio::time::sleep(POLL).await;
            }
        }
    }

    let w = put_status(&http, &r1, &a, "in_progress").await;
    assert_eq!(w.game_status(), "in_progress");
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let r = http.get(&r2.url(&odds_path(&a))).await;
        assert_eq!(r.status, 200);
        if r.game_status() == "in_progress" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "r2 still serves the old status after Redis came back"
        );
        tokio::time::sleep(POLL).await;
    }
    r1.stop().await;
    r2.stop().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The figures for the report: change-to-peer-journal latency over 200
/// changes, and one tag holding 10,000 registered keys deleted at once.
#[tokio::test(flavor = "multi_thread")]
async fn figures_propagation_latency_and_bulk_delete() {
    let redis = RedisServer::start();
    let fleet = replicas(&redis, 2).await;
    let (origin, peer) = (&fleet[0], &fleet[1]);
    let mut seen = peer.inv.journal().subscribe();
    let mut latencies = Vec::with_capacity(200);
    for i in 0..200 {
        let game = format!("g-lat-{i}");
        let started = Instant::now();
        let event = origin
            .inv
            .invalidate(Invalidation {
                target: Target::Game {
                    game_id: game.as_str().try_into().unwrap(),
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
        let arrived = tokio::time::timeout(PROPAGATION, seen.recv())
            .await
            .unwrap_or_else(|_| panic!("change {i} never reached the peer"))
            .expect("journal broadcast");
        latencies.push(started.elapsed());
        assert_eq!(arrived.id, event.id);
        assert_eq!(arrived.origin, Origin::Peer);
    }
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    println!(
        "propagation over {} changes: p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() - 1]
    );
    assert!(p99 < PROPAGATION);

    let c = &mut redis.conn().await;
    let tag = "game:g-bulk";
    let registry = format!("{PREFIX}registry:{tag}");
    fill_registry(c, &registry, 10_000).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(c)
        .await
        .unwrap();
    let started = Instant::now();
    let deleted = origin
        .tier
        .delete(&[tag.to_string()], &[])
        .await
        .expect("bulk delete");
    let took = started.elapsed();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (smembers, unlink) = (calls("smembers"), calls("unlink"));
    // The registry set goes too, but UNLINK counts only the members.
    assert_eq!(deleted.deleted, 10_000);
    let set_left: bool = c.exists(&registry).await.unwrap();
    assert!(!set_left, "the registry set survived");
    assert_eq!(
        deleted.cache_keys.len(),
        oddscache::invalidate::wire::MAX_KEYS
    );
    assert_eq!(smembers, 1);
    // Only the fleet's own bookkeeping is left: the event log and the
    // replicas' confirmations.
    let left: Vec<String> = redis::cmd("KEYS").arg("*").query_async(c).await.unwrap();
    assert!(
        left.iter().all(|k| k == &format!("{PREFIX}events")
            || k == &format!("{PREFIX}replicas")
            || k.starts_with(&format!("{PREFIX}replica:"))),
        "keys left after the bulk delete: {left:?}"
    );

    println!(
        "bulk delete of 10000 keys under one tag: {took:?}, {} deleted, \
         commands: {smembers} SMEMBERS + {unlink} UNLINK in two pipelines",
        deleted.deleted
    );
    // One SMEMBERS, then ten UNLINKs of 1,000 members and one for the set,
    // sent as one pipeline.
    assert_eq!(unlink, 11);
}

async fn fill_registry(c: &mut redis::aio::MultiplexedConnection, registry: &str, n: usize) {
    let keys: Vec<String> = (0..n).map(|i| format!("{PREFIX}resp:/bulk/{i}")).collect();
    for chunk in keys.chunks(1000) {
        let _: () = c.sadd(registry, chunk).await.unwrap();
        let pairs: Vec<(&String, &str)> = chunk.iter().map(|k| (k, "x")).collect();
        let _: () = c.mset(&pairs).await.unwrap();
    }
}
