//! Tests of extraction: the oracle, real feed shapes and hostile documents.

use super::*;
use crate::watch::doc::tests::arb_json_text;
use crate::watch::WatchSpec;
use proptest::prelude::*;
use serde_json::{json, Value};

/// The game object of SPEC §2.
const GAME: &str = r#"{"game_id": "g-1001", "sport_id": "soccer", "league_id": "epl",
 "status": "live", "start_time": "2026-11-25T20:00:00Z",
 "home": "Arsenal", "away": "Chelsea",
 "odds": {"moneyline": {"home": 2.10, "draw": 3.30, "away": 3.60},
          "spread": {"line": -0.5, "home": 1.95, "away": 1.90},
          "total":  {"line": 2.5, "over": 1.85, "under": 2.00}},
 "updated_at": "2026-11-25T20:31:07Z"}"#;

fn rules() -> WatchRules {
    WatchRules::new(&WatchSpec::default()).unwrap()
}

fn game(id: Value, status: Value) -> Value {
    json!({"game_id": id, "status": status, "sport_id": "soccer", "league_id": "epl",
           "odds": {"moneyline": {"home": 2.0}}})
}

fn extract(v: &Value) -> Extraction {
    rules().extract(&serde_json::to_vec(v).unwrap())
}

fn ids(x: &Extraction) -> Vec<&str> {
    x.games.iter().map(|g| g.game_id.as_str()).collect()
}

#[test]
fn reads_the_reference_game() {
    let x = rules().extract(GAME.as_bytes());
    assert_eq!(x.skipped, None);
    let [g] = &x.games[..] else { panic!("{x:?}") };
    assert_eq!(g.game_id.as_str(), "g-1001");
    assert_eq!((g.status, g.raw_status.as_deref()), (Status::Live, None));
    assert_eq!(g.sport_id.as_deref(), Some("soccer"));
    assert_eq!(g.league_id.as_deref(), Some("epl"));
    assert!(g.has_odds);
    let lines: Vec<(&str, f64)> = g.lines.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        lines,
        [
            ("/moneyline/away", 3.60),
            ("/moneyline/draw", 3.30),
            ("/moneyline/home", 2.10),
            ("/spread/away", 1.90),
            ("/spread/home", 1.95),
            ("/spread/line", -0.5),
            ("/total/line", 2.5),
            ("/total/over", 1.85),
            ("/total/under", 2.00),
        ]
    );
}

#[test]
fn reads_the_games_list_in_order() {
    let list = json!({"games": [game(json!("g-2"), json!("scheduled")),
                                game(json!("g-1"), json!("final"))]});
    let x = extract(&list);
    assert_eq!(ids(&x), ["g-2", "g-1"]);
    assert_eq!(x.games[1].status, Status::Finished);
}

#[test]
fn sidebar_summaries_have_no_odds() {
    let mut summary: Value = serde_json::from_str(GAME).unwrap();
    summary.as_object_mut().unwrap().remove("odds");
    let sidebar = json!({"sport_id": "soccer", "league_id": "epl", "games": [summary]});
    let x = extract(&sidebar);
    let [g] = &x.games[..] else { panic!("{x:?}") };
    assert_eq!(g.game_id.as_str(), "g-1001");
    assert!(g.lines.is_empty());
    assert!(!g.has_odds);
    // Odds present but null or empty are "no lines", not "no odds".
    let x = extract(&json!({"game_id": "g", "odds": null}));
    assert!(x.games[0].has_odds && x.games[0].lines.is_empty());
}

#[test]
fn maps_statuses() {
    let cases = [
        ("scheduled", Status::Scheduled),
        ("pre_game", Status::Scheduled),
        ("live", Status::Live),
        ("in_progress", Status::Live),
        ("halftime", Status::Live),
        ("suspended", Status::Live),
        ("final", Status::Finished),
        ("finished", Status::Finished),
        ("cancelled", Status::Cancelled),
        ("postponed", Status::Postponed),
        ("unknown", Status::Unknown),
    ];
    for (raw, status) in cases {
        let g = &extract(&game(json!("g"), json!(raw))).games[0];
        assert_eq!((g.status, g.raw_status.as_deref()), (status, None), "{raw}");
    }
}

#[test]
fn unmapped_statuses_are_unknown_and_kept_for_logging() {
    let status = |v: Value| {
        let g = extract(&game(json!("g"), v)).games.remove(0);
        (g.status, g.raw_status)
    };
    assert_eq!(
        status(json!("Live")),
        (Status::Unknown, Some("Live".into()))
    );
    assert_eq!(status(json!(7)), (Status::Unknown, Some("7".into())));
    assert_eq!(status(json!(true)), (Status::Unknown, None));
    assert_eq!(status(json!(null)), (Status::Unknown, None));
    let (_, raw) = status(json!("é".repeat(100)));
    assert_eq!(raw.unwrap(), "é".repeat(32));
    let g = extract(&json!({"game_id": "g"})).games.remove(0);
    assert_eq!((g.status, g.raw_status), (Status::Unknown, None));
}

#[test]
fn status_map_wins_and_takes_numbers() {
    let mut spec = WatchSpec::default();
    spec.status_map.insert("3".into(), "finished".into());
    spec.status_map.insert("live".into(), "postponed".into());
    let rules = WatchRules::new(&spec).unwrap();
    let status = |v: Value| {
        let body = serde_json::to_vec(&game(json!("g"), v)).unwrap();
        rules.extract(&body).games[0].status
    };
    assert_eq!(status(json!(3)), Status::Finished);
    assert_eq!(status(json!("live")), Status::Postponed);
}

#[test]
fn hostile_ids_are_no_game() {
    // Ids that cannot become part of a tag: the game is skipped and
    // says why; values that are no id at all make no game.
    let unusable = [
        (json!("*"), "character"),
        (json!("a b"), "character"),
        (json!("a\nb"), "character"),
        (json!("x".repeat(10_000)), "length"),
        (json!(""), "length"),
        (json!("{tag}"), "character"),
    ];
    for (id, why) in &unusable {
        let x = extract(&game(id.clone(), json!("live")));
        assert_eq!(x.skipped, Some(SkipReason::GameId), "{id}");
        assert_eq!(x.rejected, [*why], "{id}");
    }
    let not_ids = [
        json!(1.5),
        json!(true),
        json!(null),
        json!({"id": 1}),
        json!(["g-1"]),
    ];
    for id in &not_ids {
        let x = extract(&game(id.clone(), json!("live")));
        assert_eq!(x.skipped, Some(SkipReason::NoGames), "{id}");
    }
    let hostile: Vec<Value> = unusable
        .iter()
        .map(|(id, _)| id.clone())
        .chain(not_ids)
        .collect();
    let mut list: Vec<Value> = hostile
        .iter()
        .map(|id| game(id.clone(), json!("live")))
        .collect();
    list.insert(3, game(json!("ok"), json!("live")));
    list.push(json!("not an object"));
    assert_eq!(ids(&extract(&json!({ "games": list }))), ["ok"]);
}

#[test]
fn real_feed_ids_are_games() {
    let list = json!({"games": [game(json!("sr:match:12345"), json!("live")),
                                game(json!("feed/g+1"), json!("live"))]});
    assert_eq!(ids(&extract(&list)), ["sr:match:12345", "feed/g+1"]);
}

#[test]
fn numeric_ids_are_decimal_strings() {
    let list = json!({"games": [game(json!(1001), json!("live")),
                                game(json!(-5), json!("live")),
                                game(json!(u64::MAX), json!("live"))]});
    assert_eq!(ids(&extract(&list)), ["1001", "-5", "18446744073709551615"]);
}

#[test]
fn dedupes_keeping_the_first_sighting() {
    let mut body = game(json!("g-1"), json!("live"));
    body["games"] = json!([
        game(json!("g-1"), json!("final")),
        game(json!("g-2"), json!("live")),
        game(json!("g-2"), json!("final"))
    ]);
    let x = extract(&body);
    assert_eq!(ids(&x), ["g-1", "g-2"]);
    assert_eq!(
        (x.games[0].status, x.games[1].status),
        (Status::Live, Status::Live)
    );
}

#[test]
fn arrays_expand_only_with_a_wildcard() {
    let spec = WatchSpec {
        games: vec!["/games".into()],
        ..WatchSpec::default()
    };
    let body = serde_json::to_vec(&json!({"games": [game(json!("g"), json!("live"))]})).unwrap();
    let x = WatchRules::new(&spec).unwrap().extract(&body);
    assert_eq!(x.skipped, Some(SkipReason::NoGames));
}

#[test]
fn skips_say_why() {
    let r = rules();
    for body in [&b"<html>"[..], b"", b"{\"game_id\": \"g\"", b"\xff\xfe"] {
        assert_eq!(r.extract(body), Extraction::skip(SkipReason::NotJson));
    }
    for body in [
        &b"[]"[..],
        b"{}",
        b"null",
        b"{\"games\": {}}",
        b"{\"games\": [1, []]}",
    ] {
        assert_eq!(r.extract(body), Extraction::skip(SkipReason::NoGames));
    }
}

#[test]
fn lines_cover_every_finite_number_below_odds() {
    let body = json!({"game_id": "g", "odds": {
        "props": [1.5, {"x": 2}, "n/a", null, true],
        "a/b~c": 3, "label": "closed", "": 4}});
    let lines = extract(&body).games.remove(0).lines;
    let names: Vec<&str> = lines.keys().map(String::as_str).collect();
    assert_eq!(names, ["/", "/a~1b~0c", "/props/0", "/props/1/x"]);
    // A bare number under `odds` is one line named by the empty pointer.
    let lines = extract(&json!({"game_id": "g", "odds": 2.5}))
        .games
        .remove(0)
        .lines;
    assert_eq!(lines.get(""), Some(&2.5));
}

#[test]
fn odds_depth_is_capped() {
    let mut deep = json!(1.0);
    for _ in 0..60 {
        deep = json!({ "d": deep });
    }
    let body = json!({"game_id": "g", "odds": {"shallow": 2.0, "deep": deep}});
    let lines = extract(&body).games.remove(0).lines;
    assert_eq!(lines.keys().collect::<Vec<_>>(), ["/shallow"]);
}

#[test]
fn labels_are_checked_like_ids() {
    let body = json!({"game_id": "g", "sport_id": "a:b", "league_id": 7});
    let g = extract(&body).games.remove(0);
    assert_eq!((g.sport_id, g.league_id), (None, Some("7".into())));
}

#[test]
fn custom_pointers_with_escapes() {
    let spec = WatchSpec {
        games: vec!["/data/leagues/*/events/*".into()],
        game_id: "/ids/a~1b".into(),
        status: "/state/0".into(),
        odds: "/markets~0x".into(),
        ..WatchSpec::default()
    };
    let body = json!({"data": {"leagues": [
        {"events": [{"ids": {"a/b": "e1"}, "state": ["in_progress"], "markets~x": {"w": 1.9}}]},
        {"events": [{"ids": {"a/b": "e2"}}]}]}});
    let x = WatchRules::new(&spec)
        .unwrap()
        .extract(&serde_json::to_vec(&body).unwrap());
    assert_eq!(ids(&x), ["e1", "e2"]);
    assert_eq!(x.games[0].status, Status::Live);
    assert_eq!(x.games[0].lines.get("/w"), Some(&1.9));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("game_id".to_owned()),
        Just("games".to_owned()),
        Just("status".to_owned()),
        Just("odds".to_owned()),
        Just("sport_id".to_owned()),
        "[a-z~/*:]{0,4}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop_oneof![
            Just("g-1".to_owned()),
            Just("live".to_owned()),
            "[ -~]{0,8}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn check_invariants(x: &Extraction) {
    assert_eq!(x.skipped.is_some(), x.games.is_empty());
    let mut seen = HashSet::new();
    for g in &x.games {
        assert!(is_valid_game_id(g.game_id.as_str()));
        assert!(seen.insert(g.game_id.clone()), "duplicate {}", g.game_id);
        assert!(g.lines.values().all(|v| v.is_finite()));
        assert!(g
            .raw_status
            .as_ref()
            .is_none_or(|r| r.len() <= MAX_RAW_STATUS));
    }
}

/// Extraction as it was written over `serde_json::Value`, kept to check
/// that the borrowed tree changes nothing.
mod reference {
    use super::super::*;
    use serde_json::Value;

    pub(super) fn extract(rules: &WatchRules, body: &[u8]) -> Extraction {
        let Ok(root) = serde_json::from_slice::<Value>(body) else {
            return Extraction::skip(SkipReason::NotJson);
        };
        let mut games = Vec::new();
        let mut seen = HashSet::new();
        let mut rejected = Vec::new();
        for pointer in &rules.games {
            pointer.each_match(&root, &mut |candidate| {
                let Some(id) = game_id_of(rules, candidate) else {
                    return;
                };
                if let Some(why) = game_id_problem(&id) {
                    return rejected.push(why);
                }
                if !seen.contains(&id) {
                    games.push(snapshot(rules, candidate, GameId(id.to_string())));
                    seen.insert(id);
                }
            });
        }
        let skipped = match (games.is_empty(), rejected.is_empty()) {
            (false, _) => None,
            (true, true) => Some(SkipReason::NoGames),
            (true, false) => Some(SkipReason::GameId),
        };
        Extraction {
            games,
            skipped,
            rejected,
        }
    }

    fn game_id_of<'v>(rules: &WatchRules, candidate: &'v Value) -> Option<Cow<'v, str>> {
        if !candidate.is_object() {
            return None;
        }
        id_text(rules.game_id.get(candidate)?)
    }

    fn snapshot(rules: &WatchRules, game: &Value, game_id: GameId) -> GameSnapshot {
        let (status, raw_status) = status_of(rules, rules.status.get(game));
        let odds = rules.odds.get(game);
        let mut lines = Lines::new();
        if let Some(odds) = odds {
            walk_lines(odds, &mut String::new(), 0, &mut lines);
        }
        GameSnapshot {
            game_id,
            status,
            raw_status,
            sport_id: label(game, &rules.sport_id),
            league_id: label(game, &rules.league_id),
            lines,
            has_odds: odds.is_some(),
        }
    }

    fn label(game: &Value, pointer: &Pointer) -> Option<String> {
        let text = id_text(pointer.get(game)?)?;
        is_valid_id(&text).then(|| text.into_owned())
    }

    fn status_of(rules: &WatchRules, raw: Option<&Value>) -> (Status, Option<String>) {
        let raw = match raw {
            Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
            Some(Value::Number(n)) => Cow::Owned(n.to_string()),
            _ => return (Status::Unknown, None),
        };
        rules.classify_status(raw)
    }

    fn id_text(v: &Value) -> Option<Cow<'_, str>> {
        match v {
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(Cow::Owned(n.to_string())),
            _ => None,
        }
    }

    fn walk_lines(v: &Value, name: &mut String, depth: usize, out: &mut Lines) {
        let len = name.len();
        match v {
            Value::Number(n) => {
                if let Some(x) = n.as_f64().filter(|x| x.is_finite()) {
                    out.insert(name.clone(), x);
                }
            }
            Value::Object(map) if depth < MAX_ODDS_DEPTH => {
                for (key, item) in map {
                    push_segment(name, key);
                    walk_lines(item, name, depth + 1, out);
                    name.truncate(len);
                }
            }
            Value::Array(items) if depth < MAX_ODDS_DEPTH => {
                for (i, item) in items.iter().enumerate() {
                    let _ = write!(name, "/{i}");
                    walk_lines(item, name, depth + 1, out);
                    name.truncate(len);
                }
            }
            _ => {}
        }
    }
}

/// Rules that use what the shipped ones do not: more wildcards, an
/// index, deeper and escaped pointers, numeric statuses.
fn odd_rules() -> WatchRules {
    let mut spec = WatchSpec {
        games: vec![
            "/*".into(),
            "/games/0".into(),
            "/games/*/games/*".into(),
            String::new(),
        ],
        game_id: "/game_id".into(),
        status: "/status/0".into(),
        sport_id: "/a~1b".into(),
        league_id: "/0".into(),
        odds: "/games".into(),
        ..WatchSpec::default()
    };
    spec.status_map.insert("7".into(), "cancelled".into());
    spec.status_map.insert("-0".into(), "postponed".into());
    WatchRules::new(&spec).unwrap()
}

fn same_as_reference(body: &[u8]) {
    for rules in [rules(), odd_rules()] {
        assert_eq!(rules.extract(body), reference::extract(&rules, body));
    }
}

#[test]
fn the_bench_shapes_read_as_before() {
    let mut list = Vec::new();
    for i in 0..50 {
        let mut g: Value = serde_json::from_str(GAME).unwrap();
        g["game_id"] = json!(format!("g-{i}"));
        g["odds"][format!("alt_{i}")] = json!({"line": 3.5 + i as f64, "over": 1.9});
        list.push(g);
    }
    same_as_reference(GAME.as_bytes());
    same_as_reference(&serde_json::to_vec(&json!({ "games": list })).unwrap());
}

#[test]
fn repeated_keys_read_as_before() {
    for body in [
        r#"{"game_id": "a", "game_id": "b", "odds": {"x": {"p": 1}, "y": 2, "x": {"q": 3}}}"#,
        r#"{"games": [{"game_id": "a"}], "games": [{"game_id": "b", "status": "final"}]}"#,
        r#"{"game_id": "a", "status": "live", "status": 7, "odds": null, "odds": [1, 2]}"#,
    ] {
        same_as_reference(body.as_bytes());
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check_invariants(&rules().extract(&body));
    }

    #[test]
    fn arbitrary_json_is_deterministic(doc in arb_json()) {
        let body = serde_json::to_vec(&doc).unwrap();
        let r = rules();
        let first = r.extract(&body);
        check_invariants(&first);
        prop_assert_eq!(&first, &r.extract(&body));
        // Wrapped as a list, the same games come out in the same order.
        let list = serde_json::to_vec(&json!({"games": [doc.clone(), doc]})).unwrap();
        let listed = r.extract(&list);
        check_invariants(&listed);
        prop_assert_eq!(&listed, &r.extract(&list));
    }

    #[test]
    fn an_id_is_a_game_exactly_when_valid(id in "[ -~\n]{0,10}|[A-Za-z0-9._-]{1,130}") {
        let x = extract(&game(json!(id.clone()), json!("live")));
        prop_assert_eq!(x.games.len() == 1, GameId::try_from(id.as_str()).is_ok());
    }

    #[test]
    fn reads_json_as_before(doc in arb_json()) {
        let body = serde_json::to_vec(&doc).unwrap();
        same_as_reference(&body);
        same_as_reference(&serde_json::to_vec(&json!({"games": [doc.clone(), doc]})).unwrap());
    }

    #[test]
    fn reads_json_text_as_before(text in arb_json_text()) {
        same_as_reference(text.as_bytes());
        same_as_reference(format!(r#"{{"games": [{text}, {text}]}}"#).as_bytes());
    }

    #[test]
    fn reads_bytes_as_before(body in prop::collection::vec(any::<u8>(), 0..256)) {
        same_as_reference(&body);
    }
}
