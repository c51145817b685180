//! What an invalidation names, and the tags that names (SPEC §5): a game
//! with both its tag families and its sidebar, sidebars, raw tags, or one
//! URI after an unsafe method.

use crate::cache::store::uri_tag;
use crate::watch::{GameId, Status};

/// What to invalidate.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Both tag families of the game for every status, its
    /// `game_key_patterns`, and its league's sidebar when known.
    Game {
        game_id: GameId,
        sport_id: Option<String>,
        league_id: Option<String>,
        with_sidebar: bool,
    },
    /// All sidebars, one sport's, or one league's.
    Sidebar {
        sport_id: Option<String>,
        league_id: Option<String>,
    },
    Tags(Vec<String>),
    /// One URI after a successful unsafe method (RFC 9111 §4.4): its entry
    /// and its `Vary` variants, on every replica and in the L2.
    Uri {
        primary: String,
    },
}

impl Target {
    pub fn tags(&self) -> Vec<String> {
        match self {
            Target::Game {
                game_id,
                sport_id,
                league_id,
                with_sidebar,
            } => {
                let id = game_id.as_str();
                let mut tags = vec![format!("game:{id}")];
                tags.extend(
                    Status::ALL
                        .iter()
                        .map(|s| format!("odds:{}:{id}", s.as_str())),
                );
                if let (true, Some(sport), Some(league)) = (with_sidebar, sport_id, league_id) {
                    tags.push(format!("sidebar:{sport}:{league}"));
                }
                tags
            }
            Target::Sidebar {
                sport_id,
                league_id,
            } => match (sport_id, league_id) {
                (None, _) => vec!["sidebar".to_string()],
                (Some(sport), None) => vec![format!("sidebar:{sport}")],
                (Some(sport), Some(league)) => vec![format!("sidebar:{sport}:{league}")],
            },
            Target::Tags(tags) => tags.clone(),
            Target::Uri { primary } => vec![uri_tag(primary).to_string()],
        }
    }

    /// The sport and league the target names, for change hints.
    pub(super) fn scope(&self) -> (Option<String>, Option<String>) {
        match self {
            Target::Game {
                sport_id,
                league_id,
                ..
            }
            | Target::Sidebar {
                sport_id,
                league_id,
            } => (sport_id.clone(), league_id.clone()),
            Target::Tags(_) | Target::Uri { .. } => (None, None),
        }
    }

    pub(super) fn game_id(&self) -> Option<&GameId> {
        match self {
            Target::Game { game_id, .. } => Some(game_id),
            _ => None,
        }
    }
}
