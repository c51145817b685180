//! The watcher: pure reading of upstream JSON bodies and change detection.
//!
//! Everything under `watch/` is a function of its inputs. It does no I/O,
//! takes no clocks and logs nothing, so the request path can call it on every
//! filled response and tests can hammer it with arbitrary input. The caller
//! owns the side effects: it logs unmapped statuses, counts skips in
//! `oddscache_watch_skipped_total{why}`, and sends the [`Change`]s it gets to
//! the invalidation door.
//!
//! The pipeline, one file per step:
//! - [`decode()`] (`decode.rs`): undo `Content-Encoding` for inspection only,
//!   with a cap against decompression bombs.
//! - [`WatchRules::new`] (`rules.rs`): validate and compile `[watch]` once,
//!   into JSON pointers (`pointer.rs`) and a status table.
//! - [`WatchRules::extract`] (`extract.rs`): find every game object in a
//!   body and read its id, status and odds lines, from a tree that borrows
//!   from the body (`doc.rs`).
//! - [`diff()`] and [`next_state`] (`diff.rs`): compare a game with what was
//!   known about it, and decide what to remember.
//!
//! This file owns the vocabulary the steps and their callers share:
//! [`Status`], [`GameId`], [`GameSnapshot`], [`SkipReason`] and the
//! invalidation [`Reason`].

mod decode;
mod diff;
mod doc;
mod extract;
mod pointer;
mod rules;

pub use decode::decode;
pub use diff::{diff, next_state, status_change_reason, Change, GameState};
pub use extract::Extraction;
pub use rules::{WatchConfigError, WatchRules, WatchSpec};

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Canonical game status.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Scheduled,
    Live,
    Finished,
    Cancelled,
    Postponed,
    /// An upstream value that `[watch.status_map]` does not map, or no status
    /// at all. It is never a transition target, so a flaky field cannot make
    /// games flap.
    Unknown,
}

impl Status {
    /// The statuses a game can be invalidated under: `odds:{status}:{id}` is
    /// expanded for each of these.
    pub const CANONICAL: [Status; 5] = [
        Status::Scheduled,
        Status::Live,
        Status::Finished,
        Status::Cancelled,
        Status::Postponed,
    ];

    /// Every status, e.g. for `[cache.ttl_by_status]`, which has an `unknown` key.
    pub const ALL: [Status; 6] = [
        Status::Scheduled,
        Status::Live,
        Status::Finished,
        Status::Cancelled,
        Status::Postponed,
        Status::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Live => "live",
            Status::Finished => "finished",
            Status::Cancelled => "cancelled",
            Status::Postponed => "postponed",
            Status::Unknown => "unknown",
        }
    }

    /// Exact lowercase names only (including `unknown`): upstream spellings
    /// go through `[watch.status_map]`, not through guessing here.
    pub fn parse_canonical(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Odds lines, named by their JSON pointer below `odds` (e.g.
/// `/moneyline/home`), sorted by name. Values are always finite.
pub type Lines = BTreeMap<String, f64>;

/// A validated game id: 1..=128 bytes of `[A-Za-z0-9._-]`.
///
/// Ids come from upstream bodies and end up inside tags, Redis key names and
/// `game_key_patterns`, so the alphabet excludes everything that could glob
/// (`*`, `?`, `[`), separate (`:`, whitespace), or hash-tag (`{`) another key.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct GameId(#[serde(deserialize_with = "deserialize_id")] String);

/// Why a string is not a [`GameId`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a game id is 1 to 128 bytes of A-Z, a-z, 0-9 and . _ - : / +")]
pub struct InvalidGameId;

/// The alphabet of `sport_id`/`league_id`, which land in sidebar tags.
pub(crate) fn is_valid_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Game ids as real feeds write them (SPEC §5): letters, digits and
/// `. _ - : / +`, 1 to 128 bytes, so Sportradar's `sr:match:12345` is a
/// game. Nothing that could break a tag, a key or a pattern (space,
/// control bytes, `{ } * ? [ ]`, quotes) gets through.
pub(crate) fn game_id_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 128 {
        return Some("length");
    }
    let ok =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/' | b'+');
    (!s.bytes().all(ok)).then_some("character")
}

pub fn is_valid_game_id(s: &str) -> bool {
    game_id_problem(s).is_none()
}

impl GameId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for GameId {
    type Error = InvalidGameId;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        if is_valid_game_id(s) {
            Ok(GameId(s.to_owned()))
        } else {
            Err(InvalidGameId)
        }
    }
}

impl TryFrom<String> for GameId {
    type Error = InvalidGameId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if is_valid_game_id(&s) {
            Ok(GameId(s))
        } else {
            Err(InvalidGameId)
        }
    }
}

fn deserialize_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    if is_valid_id(&s) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(InvalidGameId))
    }
}

impl fmt::Display for GameId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for GameId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by `GameId` be queried with a `&str` from a request path.
impl Borrow<str> for GameId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// One game found in a body.
#[derive(Clone, Debug, PartialEq)]
pub struct GameSnapshot {
    pub game_id: GameId,
    pub status: Status,
    /// The upstream status when it mapped to nothing (so `status` is
    /// `Unknown`), for the caller to log once per value. `None` when the
    /// status mapped, or was absent or not a string or number. Cut to 64
    /// bytes, since the caller may keep a set of the values it has logged.
    pub raw_status: Option<String>,
    /// Only ids that pass the [`GameId`] alphabet: they become sidebar tags.
    pub sport_id: Option<String>,
    pub league_id: Option<String>,
    pub lines: Lines,
    /// Whether the `odds` pointer resolved at all. A sidebar summary has no
    /// odds: that says nothing about the lines, and must not read as "every
    /// line disappeared". `"odds": null` or `{}` does count as present.
    pub has_odds: bool,
}

/// Why a body yielded no games; the label of
/// `oddscache_watch_skipped_total{why}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    NotJson,
    NoGames,
    Undecodable,
    TooLarge,
    /// A game object whose id cannot become part of a tag or key.
    GameId,
}

impl SkipReason {
    pub const ALL: [SkipReason; 5] = [
        SkipReason::NotJson,
        SkipReason::NoGames,
        SkipReason::Undecodable,
        SkipReason::TooLarge,
        SkipReason::GameId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotJson => "not_json",
            SkipReason::NoGames => "no_games",
            SkipReason::Undecodable => "undecodable",
            SkipReason::TooLarge => "too_large",
            SkipReason::GameId => "game_id",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why entries were invalidated; public interface (SPEC §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    StatusChange,
    OddsMovement,
    Cancelled,
    Postponed,
    Manual,
    SidebarRefresh,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::StatusChange,
        Reason::OddsMovement,
        Reason::Cancelled,
        Reason::Postponed,
        Reason::Manual,
        Reason::SidebarRefresh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::StatusChange => "STATUS_CHANGE",
            Reason::OddsMovement => "ODDS_MOVEMENT",
            Reason::Cancelled => "CANCELLED",
            Reason::Postponed => "POSTPONED",
            Reason::Manual => "MANUAL",
            Reason::SidebarRefresh => "SIDEBAR_REFRESH",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason name that is not one of the six.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason {0:?} (expected one of STATUS_CHANGE, ODDS_MOVEMENT, CANCELLED, POSTPONED, MANUAL, SIDEBAR_REFRESH)")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for status in Status::ALL {
            assert_eq!(Status::parse_canonical(status.as_str()), Some(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
        }
        assert!(!Status::CANONICAL.contains(&Status::Unknown));
        assert_eq!(Status::parse_canonical("Live"), None);
        assert_eq!(Status::parse_canonical("in_progress"), None);
        assert_eq!(Status::parse_canonical(""), None);
    }

    #[test]
    fn game_id_alphabet() {
        for ok in [
            "g-1001",
            "1001",
            "a.b_c-D",
            "sr:match:12345",
            "feed/2026/g+1",
            &"x".repeat(128),
        ] {
            assert_eq!(GameId::try_from(ok).unwrap().as_str(), ok);
        }
        let long = "x".repeat(129);
        for bad in [
            "", "*", "a b", "a\nb", "{a}", "é", "a?", "a[1]", "a\"b", "a'b", &long,
        ] {
            assert_eq!(GameId::try_from(bad), Err(InvalidGameId), "{bad:?}");
        }
    }

    #[test]
    fn game_id_serde_is_a_validated_string() {
        let id = GameId::try_from("g-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"g-1\"");
        assert_eq!(serde_json::from_str::<GameId>("\"g-1\"").unwrap(), id);
        assert!(serde_json::from_str::<GameId>("\"a b\"").is_err());
        assert!(serde_json::from_str::<GameId>("\"\"").is_err());
        assert!(serde_json::from_str::<GameId>("12").is_err());
    }

    #[test]
    fn game_id_borrows_as_str() {
        let mut map = std::collections::HashMap::new();
        map.insert(GameId::try_from("g-1").unwrap(), 1);
        assert_eq!(map.get("g-1"), Some(&1));
        assert_eq!(GameId::try_from("g-1").unwrap().to_string(), "g-1");
    }

    #[test]
    fn reasons_round_trip() {
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{r}\""));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
        }
        assert!("manual".parse::<Reason>().is_err());
        assert_eq!(Reason::SidebarRefresh.as_str(), "SIDEBAR_REFRESH");
    }

    #[test]
    fn skip_reason_labels() {
        let labels: Vec<_> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "not_json",
                "no_games",
                "undecodable",
                "too_large",
                "game_id"
            ]
        );
    }
}
