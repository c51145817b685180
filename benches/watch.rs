//! The watcher on bodies of the demo simulator's shape (SPEC §2): finding
//! the games (`WatchRules::extract`) and diffing each against a known
//! state with the same lines (`watch::diff`, every line compared), as a
//! filled response costs it. One game of 1.5 kB (the demo's game object
//! with alternative total lines added), and `{"games": [...]}` lists of
//! demo game objects of about 20 kB and 200 kB.
//!
//! `cargo bench --bench watch -- --warm-up-time 1 --measurement-time 3`

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use oddscache::config::{Config, Overrides, SHIPPED};
use oddscache::watch::{diff, next_state, GameId, GameState, WatchRules};
use serde_json::{json, Value};
use std::hint::black_box;

const SPORTS: [(&str, &str, &[&str]); 3] = [
    (
        "soccer",
        "epl",
        &["Arsenal", "Chelsea", "Liverpool", "Everton"],
    ),
    (
        "basketball",
        "nba",
        &["Lakers", "Celtics", "Bulls", "Knicks"],
    ),
    (
        "tennis",
        "atp",
        &["Alcaraz", "Sinner", "Djokovic", "Zverev"],
    ),
];
const STATUSES: [&str; 5] = ["scheduled", "pre_game", "in_progress", "halftime", "final"];

/// A game object as the demo's `GameView` serialises it.
fn game(i: usize) -> Value {
    let (sport, league, teams) = SPORTS[i % SPORTS.len()];
    let f = (i % 17) as f64 / 100.0;
    let mut moneyline = json!({"home": 2.10 + f, "away": 3.60 - f});
    if sport == "soccer" {
        moneyline["draw"] = json!(3.30 + f);
    }
    json!({
        "game_id": format!("g-{}", 1001 + i),
        "sport_id": sport,
        "league_id": league,
        "status": STATUSES[i % STATUSES.len()],
        "start_time": "2026-11-25T20:00:00Z",
        "home": teams[i % teams.len()],
        "away": teams[(i + 1) % teams.len()],
        "odds": {
            "moneyline": moneyline,
            "spread": {"line": -0.5 - f, "home": 1.95, "away": 1.90},
            "total": {"line": 2.5 + f, "over": 1.85, "under": 2.00},
        },
        "updated_at": "2026-11-25T20:31:07Z",
    })
}

/// One game padded to about 1.5 kB with more markets of the same shape.
fn big_game() -> Vec<u8> {
    let mut g = game(0);
    let mut k = 0;
    while serde_json::to_vec(&g).unwrap().len() < 1500 {
        g["odds"][format!("alt_total_{k}")] =
            json!({"line": 3.5 + k as f64, "over": 1.90, "under": 1.95});
        k += 1;
    }
    serde_json::to_vec(&g).unwrap()
}

/// A games list of at least `bytes`.
fn list(bytes: usize) -> Vec<u8> {
    let mut games = Vec::new();
    loop {
        let body = serde_json::to_vec(&json!({ "games": games })).unwrap();
        if body.len() >= bytes {
            return body;
        }
        games.push(game(games.len()));
    }
}

fn watch(c: &mut Criterion) {
    let config = Config::from_toml(SHIPPED, &Overrides::default()).expect("shipped config");
    let rules = WatchRules::new(&config.watch).expect("shipped [watch]");
    let threshold = config.watch.odds_movement_threshold;
    let mut g = c.benchmark_group("watch/extract+diff");
    for (name, body) in [
        ("1.5kB one game", big_game()),
        ("20kB list", list(20_000)),
        ("200kB list", list(200_000)),
    ] {
        let games = rules.extract(&body).games;
        assert!(!games.is_empty(), "{name}: no games");
        // What the detector knew: the same lines, so every line is compared.
        let known: HashMap<GameId, GameState> = games
            .iter()
            .map(|s| (s.game_id.clone(), next_state(None, s, false)))
            .collect();
        g.throughput(Throughput::Bytes(body.len() as u64));
        let label = format!("{name} ({} B, {} games)", body.len(), games.len());
        g.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
            b.iter(|| {
                let found = rules.extract(black_box(body));
                let mut changed = 0;
                for s in &found.games {
                    changed += usize::from(diff(known.get(&s.game_id), s, threshold).is_some());
                }
                assert_eq!(changed, 0);
                found.games.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, watch);
criterion_main!(benches);
