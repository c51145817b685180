//! The body watcher end to end on one replica (no Redis): the sidecar in
//! front of the demo simulator notices status changes and odds movements in
//! the bodies that pass through and invalidates the game's entries.

mod common;

use common::client::Client;
use common::sidecar::Sidecar;
use common::sim::{odds_path, SimUpstream};
use http::Method;
use oddscache::demo::Simulator;

/// A game that is still scheduled, so setting it live is a change.
fn scheduled_game(sim: &Simulator) -> String {
    let id = sim.game_ids()[0].clone();
    assert!(sim.set_status(&id, "scheduled"));
    id
}

#[tokio::test]
async fn a_status_change_seen_in_a_list_evicts_the_game_and_the_list_is_stored() {
    let up = SimUpstream::start().await;
    let sim = &up.sim;
    let sidecar = Sidecar::shipped(&up.url()).await;
    let client = Client::new();
    let id = scheduled_game(sim);

    assert_eq!(
        client.get(&sidecar.url(&odds_path(&id))).await.x_cache(),
        "MISS"
    );
    assert_eq!(
        client.get(&sidecar.url(&odds_path(&id))).await.x_cache(),
        "HIT"
    );

    // The change reaches the sidecar through another URL's body.
    sim.set_status(&id, "in_progress");
    let list = client.get(&sidecar.url("/api/v1/games")).await;
    assert_eq!(list.x_cache(), "MISS", "{}", list.cache_status());

    let after = client.get(&sidecar.url(&odds_path(&id))).await;
    assert_eq!(after.x_cache(), "MISS", "the game's entry was invalidated");
    assert_eq!(after.json()["status"], "in_progress");
    // The list that revealed the change was stored after its invalidation.
    let again = client.get(&sidecar.url("/api/v1/games")).await;
    assert_eq!(again.x_cache(), "HIT", "first: {}", list.cache_status());
}

#[tokio::test]
async fn a_write_answered_with_a_game_is_watched() {
    let up = SimUpstream::start().await;
    let sim = &up.sim;
    let sidecar = Sidecar::shipped(&up.url()).await;
    let client = Client::new();
    let id = scheduled_game(sim);
    client.get(&sidecar.url(&odds_path(&id))).await;
    assert_eq!(
        client.get(&sidecar.url(&odds_path(&id))).await.x_cache(),
        "HIT"
    );

    let put = client
        .send(
            Method::PUT,
            &sidecar.url(&format!("/api/v1/games/{id}")),
            &[("content-type", "application/json")],
            r#"{"status":"cancelled"}"#,
        )
        .await;
    assert_eq!(put.status, 200);
    let after = client.get(&sidecar.url(&odds_path(&id))).await;
    assert_eq!(after.x_cache(), "MISS");
    assert_eq!(after.json()["status"], "cancelled");
}

#[tokio::test]
async fn small_odds_moves_keep_the_entry_and_large_ones_evict_it() {
    let up = SimUpstream::start().await;
    let sim = &up.sim;
    let sidecar = Sidecar::shipped(&up.url()).await;
    let client = Client::new();
    let id = scheduled_game(sim);
    let list = format!("/api/v1/games?league_id={}", {
        let game = client.get(&sidecar.url(&odds_path(&id))).await.json();
        game["league_id"].as_str().unwrap().to_string()
    });
    assert_eq!(
        client.get(&sidecar.url(&odds_path(&id))).await.x_cache(),
        "HIT"
    );

    // 9%: noticed through a fresh list fetch, but below the threshold.
    assert!(sim.scale_line(&id, "/moneyline/home", 1.09));
    client.get(&sidecar.url(&format!("{list}&n=1"))).await;
    assert_eq!(
        client.get(&sidecar.url(&odds_path(&id))).await.x_cache(),
        "HIT"
    );

    // Another 4% makes 13.4% from the baseline: the drift fires.
    assert!(sim.scale_line(&id, "/moneyline/home", 1.04));
    client.get(&sidecar.url(&format!("{list}&n=2"))).await;
    assert_eq!(
        client.get(&sidecar.url(&odds_path(&id))).await.x_cache(),
        "MISS"
    );
}

#[tokio::test]
async fn a_sidebar_status_change_evicts_that_leagues_sidebar_only() {
    let up = SimUpstream::start().await;
    let sim = &up.sim;
    let sidecar = Sidecar::shipped(&up.url()).await;
    let client = Client::new();
    let id = scheduled_game(sim);
    let game = client.get(&sidecar.url(&odds_path(&id))).await.json();
    let (sport, league) = (
        game["sport_id"].as_str().unwrap(),
        game["league_id"].as_str().unwrap(),
    );
    let mine = format!("/api/v1/sidebar/{sport}/{league}");
    let other = if league == "nba" {
        "/api/v1/sidebar/soccer/epl"
    } else {
        "/api/v1/sidebar/basketball/nba"
    };
    for path in [&mine[..], other] {
        client.get(&sidecar.url(path)).await;
        assert_eq!(
            client.get(&sidecar.url(path)).await.x_cache(),
            "HIT",
            "{path}"
        );
    }

    sim.set_status(&id, "in_progress");
    client
        .get(&sidecar.url(&format!("/api/v1/games?sport_id={sport}")))
        .await;

    assert_eq!(client.get(&sidecar.url(&mine)).await.x_cache(), "MISS");
    assert_eq!(client.get(&sidecar.url(other)).await.x_cache(), "HIT");
}
