//! What this replica knows of each game: its last state and that state's
//! place in the fleet's compare-and-set order. The detector reads and
//! writes it, the door adopts what peers announce, and the Redis tier
//! stores it as `{prefix}game:{id}`; it depends on none of them.

use std::time::Duration;

use crate::watch::{GameId, GameState};

/// What this replica knows of each game, shared by the detector and the
/// door (which adopts the states peers announce).
pub type KnownGames = moka::sync::Cache<GameId, Known>;

/// A game's state and its place in the order of the compare-and-sets that
/// wrote it: the value of `{prefix}game:{id}`, and what a pub/sub event
/// carries. Its JSON is the state's with a `seq` field added, so replicas
/// that predate `seq` read it as a plain state.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Known {
    #[serde(flatten)]
    pub state: GameState,
    /// Strictly increasing along the game's compare-and-sets (each writes
    /// at least the one it replaced plus one), and started from the wall
    /// clock in milliseconds, so a chain begun after the key expired still
    /// orders after the old one. 0: written by a replica without it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Known {
    /// The state to write over `prev`, ordered after it.
    pub fn after(prev: Option<&Known>, state: GameState) -> Known {
        let now = super::events::unix_ms(std::time::SystemTime::now());
        let seq = prev.map_or(0, |p| p.seq).saturating_add(1).max(now);
        Known { state, seq }
    }
}

/// Remembers `incoming` unless a newer state of the game is already known.
/// Pub/sub events can arrive in another order than their compare-and-sets
/// ran in; the last to arrive must not win over a newer one. A state without
/// `seq` cannot be ordered and is taken as it comes.
pub fn adopt(known: &KnownGames, id: GameId, incoming: Known) {
    use moka::ops::compute::Op;
    known.entry(id).and_compute_with(|current| match current {
        Some(current) if incoming.seq != 0 && current.value().seq >= incoming.seq => Op::Nop,
        _ => Op::Put(incoming),
    });
}

/// Games remembered at once; the least recently seen are forgotten first.
const KNOWN_GAMES: u64 = 200_000;

pub fn known_games() -> KnownGames {
    moka::sync::Cache::builder()
        .max_capacity(KNOWN_GAMES)
        .time_to_idle(Duration::from_secs(24 * 3600))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Status;

    fn state(status: Status, home: f64) -> GameState {
        GameState {
            status,
            baseline: [("/moneyline/home".to_string(), home)]
                .into_iter()
                .collect(),
            baseline_known: true,
        }
    }

    #[test]
    fn a_state_without_seq_is_written_as_replicas_without_it_wrote_it() {
        // The compare-and-set compares strings: a value an older replica
        // wrote must still be matched by the one this replica expects.
        let legacy = state(Status::Live, 2.1);
        let text = serde_json::to_string(&legacy).unwrap();
        let read: Known = serde_json::from_str(&text).unwrap();
        assert_eq!(read.seq, 0);
        assert_eq!(read.state, legacy);
        assert_eq!(serde_json::to_string(&read).unwrap(), text);
        // And they read ours as a plain state.
        let ours = Known::after(Some(&read), state(Status::Live, 2.5));
        let text = serde_json::to_string(&ours).unwrap();
        assert_eq!(
            serde_json::from_str::<GameState>(&text).unwrap(),
            ours.state
        );
        assert_eq!(serde_json::from_str::<Known>(&text).unwrap(), ours);
    }

    #[test]
    fn seq_grows_along_the_chain_even_within_one_millisecond() {
        let a = Known::after(None, state(Status::Live, 2.0));
        let b = Known::after(Some(&a), state(Status::Live, 2.5));
        let c = Known::after(Some(&b), state(Status::Live, 3.0));
        assert!(a.seq < b.seq && b.seq < c.seq, "{a:?} {b:?} {c:?}");
        let ahead = Known {
            seq: u64::MAX - 1,
            ..c.clone()
        };
        assert!(Known::after(Some(&ahead), c.state).seq > ahead.seq);
    }

    #[test]
    fn adopt_keeps_the_newest_whatever_the_arrival_order() {
        let known = known_games();
        let id = GameId::try_from("g-1").unwrap();
        let older = Known::after(None, state(Status::Live, 2.0));
        let newer = Known::after(Some(&older), state(Status::Live, 2.5));
        adopt(&known, id.clone(), newer.clone());
        adopt(&known, id.clone(), older.clone());
        assert_eq!(known.get(&id), Some(newer.clone()));
        // Unordered (from a replica without seq): taken as it comes.
        let legacy = Known {
            state: state(Status::Cancelled, 2.0),
            seq: 0,
        };
        adopt(&known, id.clone(), legacy.clone());
        assert_eq!(known.get(&id), Some(legacy));
        adopt(&known, id.clone(), older.clone());
        assert_eq!(known.get(&id), Some(older));
    }
}
