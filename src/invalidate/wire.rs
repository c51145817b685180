//! The event log's entry: a versioned JSON envelope around one event, the
//! cache keys it deleted, the game state it leaves behind, and which
//! process wrote it. Pure.

use serde::{Deserialize, Serialize};

use super::events::Event;
use super::known::Known;

/// 2: the log replaced pub/sub, and entries say which process wrote them.
pub const VERSION: u32 = 2;
/// Larger messages are refused unread: a peer never sends one.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Keys listed in one message; tags cover the rest.
pub const MAX_KEYS: usize = 1000;

/// What an entry asks of every replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Drop what the event names and adopt its game state.
    #[default]
    Invalidate,
    /// A writer's outbox overflowed: events were lost, so every replica
    /// drops its tagged entries and known game states.
    Resync,
    /// A game's state was written where Redis had none (the key expired or
    /// was lost): a replica that knew another state evicts the game.
    Seed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub v: u32,
    #[serde(default)]
    pub kind: Kind,
    /// The writing process's nonce: two processes with one replica id (one
    /// hostname) still apply each other's events.
    #[serde(default)]
    pub instance: String,
    pub event: Event,
    /// Cache keys (not Redis names) deleted, for peers whose index missed them.
    #[serde(default)]
    pub keys: Vec<String>,
    /// The game's state after the change, so peers share one baseline, with
    /// its `seq` so that they keep the newest whatever the arrival order.
    #[serde(default)]
    pub state: Option<Known>,
}

impl Message {
    /// An invalidation event, as this process writes it.
    pub fn new(event: Event, instance: &str, keys: Vec<String>, state: Option<Known>) -> Message {
        Message {
            v: VERSION,
            kind: Kind::Invalidate,
            instance: instance.to_owned(),
            event,
            keys,
            state,
        }
    }

    /// The event a writer appends after its outbox overflowed.
    pub fn resync(replica: &str, instance: &str) -> Message {
        let event = Event {
            id: format!("{replica}-resync"),
            at: String::new(),
            at_ms: super::events::unix_ms(std::time::SystemTime::now()),
            reason: crate::watch::Reason::Manual,
            game_id: None,
            sport_id: None,
            league_id: None,
            status: None,
            tags: Vec::new(),
            keys_deleted: 0,
            origin: super::events::Origin::Local,
            replica: replica.to_owned(),
            detail: "outbox overflowed: events were lost".into(),
        };
        Message {
            kind: Kind::Resync,
            ..Message::new(event, instance, Vec::new(), None)
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("unsupported message version {0}")]
    Version(u32),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The entry's bytes. A message over [`MAX_MESSAGE_BYTES`] (a thousand
/// long keys) sheds keys until it fits, rather than be refused by every
/// reader: the tags cover the keys it no longer lists.
pub fn encode(msg: &Message) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    let bytes = serde_json::to_vec(msg).unwrap_or_default();
    if bytes.len() <= MAX_MESSAGE_BYTES || msg.keys.is_empty() {
        return bytes;
    }
    let mut smaller = msg.clone();
    loop {
        let keep = smaller.keys.len() / 2;
        smaller.keys.truncate(keep);
        let bytes = serde_json::to_vec(&smaller).unwrap_or_default();
        if bytes.len() <= MAX_MESSAGE_BYTES || smaller.keys.is_empty() {
            return bytes;
        }
    }
}

pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    #[derive(Deserialize)]
    struct Versioned {
        v: u32,
    }
    let v: Versioned =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if v.v != VERSION {
        return Err(DecodeError::Version(v.v));
    }
    let mut msg: Message =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    msg.keys.truncate(MAX_KEYS);
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidate::events::Origin;
    use crate::watch::{GameState, Reason, Status};
    use proptest::prelude::*;

    fn message() -> Message {
        Message {
            v: VERSION,
            kind: Kind::Invalidate,
            instance: "n1".into(),
            event: Event {
                id: "r1-1".into(),
                at: "2026-11-25T20:31:07.000Z".into(),
                at_ms: 1,
                reason: Reason::StatusChange,
                game_id: Some("g-1".into()),
                sport_id: None,
                league_id: None,
                status: None,
                tags: vec!["game:g-1".into()],
                keys_deleted: 3,
                origin: Origin::Local,
                replica: "r1".into(),
                detail: "status scheduled -> live".into(),
            },
            keys: vec!["/api/v1/games/g-1/odds".into()],
            state: Some(Known {
                state: GameState {
                    status: Status::Live,
                    baseline: [("/moneyline/home".to_string(), 2.1)].into_iter().collect(),
                    baseline_known: true,
                },
                seq: 1_790_000_000_000,
            }),
        }
    }

    #[test]
    fn round_trips() {
        let m = message();
        assert_eq!(decode(&encode(&m)).unwrap(), m);
    }

    #[test]
    fn refuses_other_versions_and_junk() {
        let mut m = message();
        m.v = 1;
        assert_eq!(decode(&encode(&m)), Err(DecodeError::Version(1)));
        assert!(matches!(decode(b"{"), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            decode(b"{\"v\":2}"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode(&vec![b' '; MAX_MESSAGE_BYTES + 1]),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn an_oversized_message_sheds_keys_and_still_decodes() {
        let mut m = message();
        m.keys = (0..MAX_KEYS)
            .map(|i| format!("/{i}/{}", "x".repeat(2000)))
            .collect();
        let bytes = encode(&m);
        assert!(bytes.len() <= MAX_MESSAGE_BYTES, "{}", bytes.len());
        let back = decode(&bytes).unwrap();
        assert_eq!(back.event, m.event, "the tags still travel");
        assert!(!back.keys.is_empty() && back.keys.len() < m.keys.len());
    }

    #[test]
    fn baselines_round_trip_bit_for_bit() {
        // Found by fuzz/wire_decode: serde_json's default float parser could
        // land one ULP off the nearest f64, so a peer re-encoding a baseline
        // sent a different number than it received.
        let text = "-1111111100000000000000000000000000000000000000000012810238940076077511.5";
        let mut m = message();
        let json = String::from_utf8(encode(&m)).unwrap().replace("2.1", text);
        let decoded = decode(json.as_bytes()).unwrap();
        let line = decoded.state.as_ref().unwrap().state.baseline["/moneyline/home"];
        assert_eq!(line, text.parse::<f64>().unwrap());
        assert_eq!(decode(&encode(&decoded)).unwrap(), decoded);
        m.state
            .as_mut()
            .unwrap()
            .state
            .baseline
            .insert("/x".into(), line);
        assert_eq!(decode(&encode(&m)).unwrap(), m);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }
    }
}
