//! `[watch]` from config, validated and compiled into [`WatchRules`].
//!
//! Config strings become pointer segments and a status table once, at
//! startup, so extraction never re-parses them, and every problem is
//! reported with the key it is about, as `oddscache check` prints them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::pointer::Pointer;
use super::Status;

/// Plain description of `[watch]` from config (strings as in SPEC §3).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSpec {
    /// Pointers to game objects; `*` is every element of an array.
    pub games: Vec<String>,
    /// Pointers inside a game object.
    pub game_id: String,
    pub status: String,
    pub sport_id: String,
    pub league_id: String,
    pub odds: String,
    pub odds_movement_threshold: f64,
    /// Upstream status → canonical status name.
    pub status_map: BTreeMap<String, String>,
}

/// The shipped defaults, which speak the reference API of SPEC §2.
impl Default for WatchSpec {
    fn default() -> Self {
        let map = [
            ("pre_game", "scheduled"),
            ("in_progress", "live"),
            ("halftime", "live"),
            ("suspended", "live"),
            ("final", "finished"),
        ];
        WatchSpec {
            games: vec![String::new(), "/games/*".into()],
            game_id: "/game_id".into(),
            status: "/status".into(),
            sport_id: "/sport_id".into(),
            league_id: "/league_id".into(),
            odds: "/odds".into(),
            odds_movement_threshold: 0.10,
            status_map: map
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// A `[watch]` problem. Display starts with the config key it is about.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WatchConfigError {
    #[error("{key}: {pointer:?} is not a usable JSON pointer: {problem}")]
    Pointer {
        key: String,
        pointer: String,
        problem: &'static str,
    },
    #[error("watch.odds_movement_threshold: must be a finite number above 0, got {0}")]
    Threshold(f64),
    #[error(
        "{key}: {value:?} is not a status (expected scheduled, live, finished, cancelled, \
         postponed or unknown)"
    )]
    StatusMap { key: String, value: String },
}

/// Compiled `[watch]` rules.
#[derive(Clone, Debug)]
pub struct WatchRules {
    pub(super) games: Vec<Pointer>,
    pub(super) game_id: Pointer,
    pub(super) status: Pointer,
    pub(super) sport_id: Pointer,
    pub(super) league_id: Pointer,
    pub(super) odds: Pointer,
    pub(super) threshold: f64,
    pub(super) status_map: BTreeMap<String, Status>,
}

impl WatchRules {
    /// Validates `spec`, stopping at the first problem.
    pub fn new(spec: &WatchSpec) -> Result<WatchRules, WatchConfigError> {
        Self::check(spec).map_err(|mut problems| problems.swap_remove(0))
    }

    /// Validates `spec` and reports every problem, for `oddscache check`.
    pub fn check(spec: &WatchSpec) -> Result<WatchRules, Vec<WatchConfigError>> {
        let mut problems = Vec::new();
        let mut pointer = |key: String, s: &str, games: bool| {
            Pointer::parse(s, games).unwrap_or_else(|problem| {
                problems.push(WatchConfigError::Pointer {
                    key,
                    pointer: s.to_owned(),
                    problem,
                });
                Pointer::default()
            })
        };
        let games = (spec.games.iter().enumerate())
            .map(|(i, s)| pointer(format!("watch.games[{i}]"), s, true))
            .collect();
        let game_id = pointer("watch.game_id".into(), &spec.game_id, false);
        let status = pointer("watch.status".into(), &spec.status, false);
        let sport_id = pointer("watch.sport_id".into(), &spec.sport_id, false);
        let league_id = pointer("watch.league_id".into(), &spec.league_id, false);
        let odds = pointer("watch.odds".into(), &spec.odds, false);

        let threshold = spec.odds_movement_threshold;
        if !(threshold.is_finite() && threshold > 0.0) {
            problems.push(WatchConfigError::Threshold(threshold));
        }
        let mut status_map = BTreeMap::new();
        for (raw, canonical) in &spec.status_map {
            match Status::parse_canonical(canonical) {
                Some(status) => {
                    status_map.insert(raw.clone(), status);
                }
                None => problems.push(WatchConfigError::StatusMap {
                    key: format!("watch.status_map.{}", toml_key(raw)),
                    value: canonical.clone(),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(WatchRules {
            games,
            game_id,
            status,
            sport_id,
            league_id,
            odds,
            threshold,
            status_map,
        })
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }
}

/// A status_map key as it would be written in TOML, so the error names it.
fn toml_key(key: &str) -> Cow<'_, str> {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{key:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_their_key() {
        let spec = WatchSpec {
            games: vec!["".into(), "/games/a*".into()],
            game_id: "game_id".into(),
            status: "/s~2".into(),
            odds: "/odds/*".into(),
            odds_movement_threshold: 0.0,
            status_map: [
                ("halftime", "half"),
                ("pre game", "Scheduled"),
                ("ok", "unknown"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..WatchSpec::default()
        };
        let problems: Vec<String> = WatchRules::check(&spec)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        let starts = [
            "watch.games[1]: \"/games/a*\"",
            "watch.game_id: ",
            "watch.status: ",
            "watch.odds: ",
            "watch.odds_movement_threshold: ",
            "watch.status_map.halftime: \"half\"",
            "watch.status_map.\"pre game\": ",
        ];
        assert_eq!(problems.len(), starts.len(), "{problems:#?}");
        for (problem, start) in problems.iter().zip(starts) {
            assert!(problem.starts_with(start), "{problem}");
        }
        let err = WatchRules::new(&spec).unwrap_err().to_string();
        assert!(err.starts_with("watch.games[1]"), "{err}");
    }

    #[test]
    fn threshold_must_be_finite_and_positive() {
        for bad in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            let spec = WatchSpec {
                odds_movement_threshold: bad,
                ..WatchSpec::default()
            };
            assert!(matches!(
                WatchRules::new(&spec),
                Err(WatchConfigError::Threshold(_))
            ));
        }
        assert_eq!(
            WatchRules::new(&WatchSpec::default()).unwrap().threshold(),
            0.10
        );
    }

    #[test]
    fn spec_deserializes_with_defaults_and_refuses_unknown_keys() {
        let spec: WatchSpec = serde_json::from_str(r#"{"games": ["/events/*"]}"#).unwrap();
        assert_eq!(spec.games, ["/events/*"]);
        assert_eq!(spec.status_map, WatchSpec::default().status_map);
        assert!(serde_json::from_str::<WatchSpec>(r#"{"game": "/id"}"#).is_err());
    }
}
