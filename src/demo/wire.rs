//! A game as the outside world sees and changes it: the SPEC §2 JSON view,
//! the write bodies of `PUT|PATCH|POST`, and the test hooks.
//!
//! A game's shape on the wire lives here alone; `sim` owns what happens to
//! games between requests, `api` owns routing and headers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::odds::Odds;
use super::sim::{Game, UnixSecs};

/// The body of `PUT|PATCH|POST /api/v1/games/{id}`. Unknown fields are
/// ignored so that a fetched game object can be sent back as a write.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Write {
    pub(super) status: Option<String>,
    /// Merged line by line: `{"moneyline": {"home": 2.5}}` touches one price.
    pub(super) odds: Option<BTreeMap<String, BTreeMap<String, f64>>>,
}

/// A game object as SPEC §2 spells it; without `odds` it is a summary.
#[derive(Serialize)]
pub(super) struct GameView<'a> {
    game_id: &'a str,
    sport_id: &'static str,
    league_id: &'static str,
    status: &'a str,
    start_time: String,
    home: &'static str,
    away: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    odds: Option<&'a Odds>,
    updated_at: String,
}

impl Game {
    pub(super) fn view(&self, with_odds: bool) -> GameView<'_> {
        GameView {
            game_id: &self.id,
            sport_id: self.sport.id,
            league_id: self.league.id,
            status: &self.status,
            start_time: rfc3339(self.start_time),
            home: self.home,
            away: self.away,
            odds: with_odds.then_some(&self.odds),
            updated_at: rfc3339(self.updated_at),
        }
    }

    /// Test hook: any raw string is accepted, including ones the sidecar
    /// cannot map, because that path needs exercising too.
    pub(super) fn set_status(&mut self, status: &str, now: UnixSecs) {
        self.restatus(status.to_owned());
        self.touch(now);
    }

    /// Test hook: false when the game has no such line (e.g. a tennis draw),
    /// or when the result would not be a number JSON can carry.
    pub(super) fn scale_line(&mut self, pointer: &str, factor: f64, now: UnixSecs) -> bool {
        let Some(value) = self.odds.line_mut(pointer) else {
            return false;
        };
        // Exact multiples read better in test failures than float dust.
        let scaled = (*value * factor * 1e6).round() / 1e6;
        if !scaled.is_finite() {
            return false;
        }
        *value = scaled;
        self.touch(now);
        true
    }

    /// Applies a write all-or-nothing; `updated_at` moves only if something did.
    pub(super) fn apply(&mut self, write: Write, now: UnixSecs) -> Result<(), String> {
        let mut odds = self.odds.clone();
        for (market, lines) in write.odds.iter().flatten() {
            for (line, &value) in lines {
                let pointer = format!("/{market}/{line}");
                *odds
                    .line_mut(&pointer)
                    .ok_or_else(|| format!("unknown odds line {pointer}"))? = value;
            }
        }
        let status = match write.status {
            Some(s) if s.is_empty() => return Err("status must not be empty".to_owned()),
            Some(s) if s != self.status => Some(s),
            _ => None,
        };
        if status.is_none() && odds == self.odds {
            return Ok(());
        }
        if let Some(status) = status {
            self.restatus(status);
        }
        self.odds = odds;
        self.touch(now);
        Ok(())
    }
}

/// `2026-11-25T20:31:07Z`, the timestamp form SPEC §2 uses.
pub(super) fn rfc3339(t: UnixSecs) -> String {
    let (year, month, day) = civil_from_days(t / 86_400);
    let secs = t % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Howard Hinnant's `civil_from_days`, for days since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::sim::World;

    /// 2026-11-25T20:31:07Z, the SPEC's example instant.
    const NOW: UnixSecs = 1_795_638_667;

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339(NOW), "2026-11-25T20:31:07Z");
    }

    #[test]
    fn hooks_change_one_game_and_bump_it() {
        let mut world = World::new(36, 3, NOW);
        let game = world.get_mut("g-1001").unwrap();
        game.set_status("abandoned", NOW + 10);
        assert_eq!(
            (game.status.as_str(), game.updated_at),
            ("abandoned", NOW + 10)
        );
        let home = game.odds.moneyline.home;
        assert!(game.scale_line("/moneyline/home", 1.5, NOW + 20));
        assert_eq!(game.odds.moneyline.home, (home * 1.5 * 1e6).round() / 1e6);
        assert_eq!(game.updated_at, NOW + 20);
        assert!(!game.scale_line("/moneyline/nope", 1.5, NOW + 30));
        assert!(!game.scale_line("/moneyline/home", f64::NAN, NOW + 30));
        assert!(!game.scale_line("/moneyline/home", f64::INFINITY, NOW + 30));
        assert_eq!(game.updated_at, NOW + 20);
        // Unknown raw statuses are left alone by the script.
        world.tick(NOW + 40);
        assert_eq!(world.get("g-1001").unwrap().status, "abandoned");
    }

    #[test]
    fn writes_merge_lines_all_or_nothing() {
        let mut world = World::new(36, 3, NOW);
        let game = world.get_mut("g-1001").unwrap();
        let write: Write = serde_json::from_str(r#"{"status": "in_progress", "odds": {"moneyline": {"home": 9.5}, "total": {"line": 3.5}}}"#).unwrap();
        let away = game.odds.moneyline.away;
        game.apply(write, NOW + 1).unwrap();
        assert_eq!(game.status, "in_progress");
        assert_eq!(
            (
                game.odds.moneyline.home,
                game.odds.moneyline.away,
                game.odds.total.line
            ),
            (9.5, away, 3.5)
        );
        assert_eq!(game.updated_at, NOW + 1);

        let bad: Write = serde_json::from_str(
            r#"{"status": "final", "odds": {"moneyline": {"home": 1.5, "cheese": 2.0}}}"#,
        )
        .unwrap();
        assert_eq!(
            game.apply(bad, NOW + 2).unwrap_err(),
            "unknown odds line /moneyline/cheese"
        );
        assert_eq!(
            (game.status.as_str(), game.odds.moneyline.home),
            ("in_progress", 9.5)
        );

        let empty: Write = serde_json::from_str(r#"{"status": ""}"#).unwrap();
        assert!(game.apply(empty, NOW + 3).is_err());
        let same: Write =
            serde_json::from_str(r#"{"status": "in_progress", "game_id": "ignored"}"#).unwrap();
        game.apply(same, NOW + 4).unwrap();
        assert_eq!(game.updated_at, NOW + 1, "a no-op write is not a change");
    }

    #[test]
    fn views_match_the_spec_shape() {
        let world = World::new(36, 3, NOW);
        let game = world.get("g-1001").unwrap();
        let full = serde_json::to_value(game.view(true)).unwrap();
        let keys: Vec<_> = full.as_object().unwrap().keys().cloned().collect();
        let mut expected = [
            "game_id",
            "sport_id",
            "league_id",
            "status",
            "start_time",
            "home",
            "away",
            "odds",
            "updated_at",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(full["updated_at"], "2026-11-25T20:31:07Z");
        for market in ["moneyline", "spread", "total"] {
            assert!(full["odds"][market].is_object(), "{market}");
        }
        let summary = serde_json::to_value(game.view(false)).unwrap();
        assert!(summary.get("odds").is_none());
        let text = serde_json::to_string(&game.view(true)).unwrap();
        assert!(
            text.starts_with(r#"{"game_id":"g-1001","sport_id":"#),
            "field order follows the SPEC: {text}"
        );
    }
}
