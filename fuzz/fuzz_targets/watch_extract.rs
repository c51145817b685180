//! The watcher reading an upstream body: `watch::decode` under every coding
//! it understands, then `WatchRules::extract` with the SPEC §3 defaults.
//!
//! Invariants: extraction is deterministic; a body is skipped exactly when
//! it yields no games; every game has a valid, unique id, finite lines and a
//! capped raw status; and a game compared with the state it leaves behind
//! is no change.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oddscache::watch::{self, GameId, WatchRules, WatchSpec};

/// The shipped `cache.max_object_bytes`; larger bodies are never watched.
const MAX_DECODED: usize = 1 << 20;
const CODINGS: [Option<&str>; 5] = [
    None,
    Some("gzip"),
    Some("deflate"),
    Some("br"),
    Some("gzip, br"),
];

fn rules() -> &'static WatchRules {
    static RULES: OnceLock<WatchRules> = OnceLock::new();
    RULES.get_or_init(|| WatchRules::new(&WatchSpec::default()).expect("the defaults are valid"))
}

fuzz_target!(|data: &[u8]| {
    for coding in CODINGS {
        let Ok(body) = watch::decode(coding, data, MAX_DECODED) else {
            continue;
        };
        assert!(body.len() <= MAX_DECODED, "{coding:?} decoded past the cap");
        check(&body);
    }
});

fn check(body: &[u8]) {
    let rules = rules();
    let x = rules.extract(body);
    assert_eq!(x, rules.extract(body), "extraction is not deterministic");
    assert_eq!(x.skipped.is_some(), x.games.is_empty(), "{x:?}");
    let mut seen = HashSet::new();
    for g in &x.games {
        assert!(
            GameId::try_from(g.game_id.as_str()).is_ok(),
            "{:?}",
            g.game_id
        );
        assert!(seen.insert(g.game_id.clone()), "duplicate {}", g.game_id);
        assert!(g.lines.values().all(|v| v.is_finite()), "{:?}", g.lines);
        assert!(g.raw_status.as_ref().is_none_or(|r| r.len() <= 64));
        for label in [&g.sport_id, &g.league_id].into_iter().flatten() {
            assert!(GameId::try_from(label.as_str()).is_ok(), "{label:?}");
        }
        let state = watch::next_state(None, g, false);
        assert_eq!(
            watch::diff(Some(&state), g, rules.threshold()),
            None,
            "{g:?}"
        );
    }
}
