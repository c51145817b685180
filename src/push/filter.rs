//! What a client asks to hear: the stream's query (`game_id=`, `sport_id=`,
//! `league_id=`, each repeatable, and `last_event_id=` for clients that
//! cannot set the `Last-Event-ID` header, such as a browser's WebSocket).
//! Pure.

use super::hint::Hint;
use crate::watch::{is_valid_game_id, is_valid_id, InvalidGameId};

/// Ids one stream may name, all filters together.
pub const MAX_IDS: usize = 100;

/// A client's filters. Empty: every hint. Otherwise a hint is sent when it
/// names any of the games, sports or leagues given (a union: a page
/// showing one league's sidebar and two games asks for all three).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    games: Vec<Box<str>>,
    sports: Vec<Box<str>>,
    leagues: Vec<Box<str>>,
}

/// The parsed query.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub filter: Filter,
    pub last_event_id: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.games.is_empty() && self.sports.is_empty() && self.leagues.is_empty()
    }

    pub fn matches(&self, hint: &Hint) -> bool {
        if self.is_empty() {
            return true;
        }
        let named = |ids: &[Box<str>], id: &Option<String>| {
            id.as_deref()
                .is_some_and(|id| ids.iter().any(|i| &**i == id))
        };
        let scoped = !(self.sports.is_empty() && self.leagues.is_empty());
        let unscoped = hint.sport_id.is_none() && hint.league_id.is_none();
        named(&self.games, &hint.game_id)
            || named(&self.sports, &hint.sport_id)
            || named(&self.leagues, &hint.league_id)
            // Every sidebar was invalidated: each sport's and league's too.
            || (hint.all_sidebars && scoped)
            // A game whose sport and league are not known may be in any:
            // a refetch too many is cheap, a hint too few is stale odds.
            || (unscoped && hint.game_id.is_some() && scoped)
            // Nor is a league when only the sport is named (a sport's
            // sidebar): it may be any of that sport's.
            || (!self.leagues.is_empty() && hint.league_id.is_none() && hint.sport_id.is_some())
            // Neither game nor scope (tags, an unsafe method's URI): it
            // may concern anything.
            || (unscoped && hint.game_id.is_none() && !hint.all_sidebars)
    }
}

/// Parses a stream's query; the error says what is wrong, for a 400.
pub fn parse(query: Option<&str>) -> Result<Query, String> {
    let mut q = Query::default();
    let mut ids = 0usize;
    for pair in crate::query::pairs(query) {
        let (name, value) = pair?;
        let list = match name.as_str() {
            "game_id" => &mut q.filter.games,
            "sport_id" => &mut q.filter.sports,
            "league_id" => &mut q.filter.leagues,
            "last_event_id" => {
                if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
                    return Err("last_event_id must be an event id".into());
                }
                q.last_event_id = Some(value);
                continue;
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {name:?} (expected game_id, sport_id, league_id, last_event_id)"
                ))
            }
        };
        if list_is_games(&name) && !is_valid_game_id(&value) {
            return Err(format!("{name}: {InvalidGameId}"));
        }
        if !list_is_games(&name) && !is_valid_id(&value) {
            return Err(format!(
                "{name}: an id is 1 to 128 bytes of A-Z, a-z, 0-9 and . _ -"
            ));
        }
        ids += 1;
        if ids > MAX_IDS {
            return Err(format!("at most {MAX_IDS} ids per stream"));
        }
        if !list.iter().any(|v| **v == *value) {
            list.push(value.into_boxed_str());
        }
    }
    Ok(q)
}

fn list_is_games(name: &str) -> bool {
    name == "game_id"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(game: Option<&str>, sport: Option<&str>, league: Option<&str>) -> Hint {
        Hint {
            game_id: game.map(Into::into),
            sport_id: sport.map(Into::into),
            league_id: league.map(Into::into),
            ..Hint::test()
        }
    }

    #[test]
    fn no_filter_hears_everything() {
        let f = parse(None).unwrap().filter;
        assert!(f.matches(&hint(None, None, None)));
        assert!(f.matches(&hint(Some("g-1"), Some("soccer"), Some("epl"))));
    }

    #[test]
    fn filters_are_a_union() {
        let f = parse(Some("game_id=g-1&league_id=nba&game_id=sr%3Amatch%3A7"))
            .unwrap()
            .filter;
        assert!(f.matches(&hint(Some("g-1"), Some("soccer"), Some("epl"))));
        assert!(f.matches(&hint(Some("sr:match:7"), None, None)));
        assert!(f.matches(&hint(None, Some("basketball"), Some("nba"))));
        assert!(!f.matches(&hint(Some("g-2"), Some("soccer"), Some("epl"))));
        // A sidebar-only hint carries no game.
        let games_only = parse(Some("game_id=g-1")).unwrap().filter;
        assert!(!games_only.matches(&hint(None, Some("soccer"), Some("epl"))));
        // A game of unknown sport and league reaches scoped streams, not
        // other games' streams; a hint naming nothing reaches all.
        assert!(f.matches(&hint(Some("g-9"), None, None)));
        assert!(!games_only.matches(&hint(Some("g-9"), None, None)));
        assert!(games_only.matches(&hint(None, None, None)));
        // A sport's sidebar may hold any of its leagues.
        let league = parse(Some("league_id=epl")).unwrap().filter;
        assert!(league.matches(&hint(None, Some("soccer"), None)));
        assert!(!league.matches(&hint(None, Some("soccer"), Some("laliga"))));
    }

    #[test]
    fn every_sidebar_reaches_sport_and_league_filters_only() {
        let all = Hint {
            all_sidebars: true,
            ..Hint::test()
        };
        assert!(parse(Some("sport_id=soccer")).unwrap().filter.matches(&all));
        assert!(!parse(Some("game_id=g-1")).unwrap().filter.matches(&all));
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for (query, says) in [
            ("team=x", "unknown query parameter \"team\""),
            ("game_id=", "game_id"),
            ("game_id=a%20b", "game_id"),
            ("sport_id=so*", "sport_id"),
            ("league_id=%7B%7D", "league_id"),
            ("game_id=%zz", "percent-encoding"),
            ("last_event_id=", "last_event_id"),
        ] {
            let err = parse(Some(query)).unwrap_err();
            assert!(err.contains(says), "{query}: {err}");
        }
        let many: Vec<String> = (0..=MAX_IDS).map(|i| format!("game_id=g-{i}")).collect();
        assert!(parse(Some(&many.join("&")))
            .unwrap_err()
            .contains("at most 100"));
        let enough = &many[..MAX_IDS].join("&");
        assert_eq!(parse(Some(enough)).unwrap().filter.games.len(), MAX_IDS);
    }

    #[test]
    fn last_event_id_comes_from_the_query_too() {
        let q = parse(Some("last_event_id=r1-17-3&game_id=g-1")).unwrap();
        assert_eq!(q.last_event_id.as_deref(), Some("r1-17-3"));
    }
}
