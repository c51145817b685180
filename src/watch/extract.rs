//! Extraction: every game object in a decoded body, read through the rules.
//!
//! The body is parsed once into a [`Node`] tree that borrows from it, and
//! everything after walks references into it. Nothing here assumes the
//! reference API's field names: they all come from [`WatchRules`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;

use super::doc::{members, Node};
#[cfg(test)]
use super::is_valid_game_id;
use super::pointer::{push_segment, Pointer};
use super::{
    game_id_problem, is_valid_id, GameId, GameSnapshot, Lines, SkipReason, Status, WatchRules,
};

/// Deeper odds than this are ignored rather than walked: real odds are a few
/// levels deep, and the cap bounds the work a hostile body can cause.
const MAX_ODDS_DEPTH: usize = 32;

/// Enough to recognise a value in a log line; see `GameSnapshot::raw_status`.
const MAX_RAW_STATUS: usize = 64;

/// What one body yielded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extraction {
    /// In pointer order, then array order; one per game id.
    pub games: Vec<GameSnapshot>,
    /// Set exactly when `games` is empty.
    pub skipped: Option<SkipReason>,
    /// Why each game object whose id could not be used was skipped
    /// (`"length"`, `"character"`), in order.
    pub rejected: Vec<&'static str>,
}

impl Extraction {
    pub fn skip(why: SkipReason) -> Self {
        Extraction {
            games: Vec::new(),
            skipped: Some(why),
            rejected: Vec::new(),
        }
    }
}

impl WatchRules {
    /// Finds every game in an already decoded `body`.
    ///
    /// Each `games` pointer is followed in order, `*` fanning out over array
    /// elements in order; a pointer that lands on an array is not expanded
    /// unless it ends in `/*`. What it lands on is a game when it is an
    /// object with a valid id; the first sighting of an id wins.
    pub fn extract(&self, body: &[u8]) -> Extraction {
        // serde_json caps nesting at 128, so hostile depth is a parse error
        // here rather than a stack overflow later.
        let Ok(root) = Node::parse(body) else {
            return Extraction::skip(SkipReason::NotJson);
        };
        let mut games = Vec::new();
        // Borrows ids from `root`, so deduplication costs no copies.
        let mut seen = HashSet::new();
        let mut scratch = Scratch::default();
        let mut rejected = Vec::new();
        for pointer in &self.games {
            pointer.each_match(&root, &mut |candidate| {
                let id = match self.game_id_of(candidate) {
                    Some(Ok(id)) => id,
                    Some(Err(why)) => return rejected.push(why),
                    None => return,
                };
                if !seen.contains(&id) {
                    let game = self.snapshot(candidate, GameId(id.to_string()), &mut scratch);
                    games.push(game);
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

    /// The id of a candidate game object: `None` when it is no game (not
    /// an object, or no id), an error naming why its id cannot be used.
    fn game_id_of<'v>(
        &self,
        candidate: &'v Node<'_>,
    ) -> Option<Result<Cow<'v, str>, &'static str>> {
        if !matches!(candidate, Node::Object(_)) {
            return None;
        }
        let id = id_text(self.game_id.get(candidate)?)?;
        Some(match game_id_problem(&id) {
            None => Ok(id),
            Some(why) => Err(why),
        })
    }

    fn snapshot(&self, game: &Node<'_>, game_id: GameId, scratch: &mut Scratch) -> GameSnapshot {
        let (status, raw_status) = self.status_of(self.status.get(game));
        let odds = self.odds.get(game);
        // Games of one body tend to have as many lines as each other.
        let mut found = Vec::with_capacity(scratch.lines);
        if let Some(odds) = odds {
            scratch.name.clear();
            walk_lines(odds, &mut scratch.name, 0, &mut found);
        }
        scratch.lines = found.len();
        GameSnapshot {
            game_id,
            status,
            raw_status,
            sport_id: self.label(game, &self.sport_id),
            league_id: self.label(game, &self.league_id),
            // Names are unique (see `walk_lines`): sorting them once and
            // building the map in bulk beats inserting them one by one.
            lines: Lines::from_iter(found),
            has_odds: odds.is_some(),
        }
    }

    fn label(&self, game: &Node<'_>, pointer: &Pointer) -> Option<String> {
        let text = id_text(pointer.get(game)?)?;
        is_valid_id(&text).then(|| text.into_owned())
    }

    fn status_of(&self, raw: Option<&Node<'_>>) -> (Status, Option<String>) {
        let raw = match raw {
            Some(Node::String(s)) => Cow::Borrowed(s.as_ref()),
            Some(Node::Number(n)) => Cow::Owned(n.to_string()),
            _ => return (Status::Unknown, None),
        };
        self.classify_status(raw)
    }

    /// A status's text as a [`Status`]: the configured map first, then the
    /// canonical names; anything else is unknown and kept (truncated) for
    /// the log.
    fn classify_status(&self, raw: Cow<'_, str>) -> (Status, Option<String>) {
        if let Some(&status) = self.status_map.get(raw.as_ref()) {
            return (status, None);
        }
        if let Some(status) = Status::parse_canonical(&raw) {
            return (status, None);
        }
        let mut raw = raw.into_owned();
        if raw.len() > MAX_RAW_STATUS {
            let mut end = MAX_RAW_STATUS;
            while !raw.is_char_boundary(end) {
                end -= 1;
            }
            raw.truncate(end);
        }
        (Status::Unknown, Some(raw))
    }
}

/// Buffers one extraction reuses from game to game.
#[derive(Default)]
struct Scratch {
    /// The name of the line being read.
    name: String,
    /// How many lines the last game had.
    lines: usize,
}

/// A string as is, or an integer as its decimal string. Floats are refused:
/// `1001.0` and `1001` would otherwise name two different games.
fn id_text<'v>(v: &'v Node<'_>) -> Option<Cow<'v, str>> {
    match v {
        Node::String(s) => Some(Cow::Borrowed(s)),
        Node::Number(n) if n.is_i64() || n.is_u64() => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// Collects every finite number below `v`, named by its pointer; `name` is a
/// scratch buffer shared by the whole walk. Each name is found once: an
/// escaped segment has no `/`, a node is a number or a container but not
/// both, and [`members`] skips the members a repeated key overrides.
fn walk_lines(v: &Node<'_>, name: &mut String, depth: usize, out: &mut Vec<(String, f64)>) {
    let len = name.len();
    match v {
        Node::Number(n) => {
            if let Some(x) = n.as_f64().filter(|x| x.is_finite()) {
                out.push((name.clone(), x));
            }
        }
        Node::Object(map) if depth < MAX_ODDS_DEPTH => {
            members(map, |key, item| {
                push_segment(name, key);
                walk_lines(item, name, depth + 1, out);
                name.truncate(len);
            });
        }
        Node::Array(items) if depth < MAX_ODDS_DEPTH => {
            for (i, item) in items.iter().enumerate() {
                let _ = write!(name, "/{i}");
                walk_lines(item, name, depth + 1, out);
                name.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
