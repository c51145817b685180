//! One change hint, encoded once for every client: the SSE frame and the
//! WebSocket text (SPEC §8). Pure.

use bytes::Bytes;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::invalidate::events::Position;
use crate::invalidate::Event;

/// What a client hears about one invalidation.
#[derive(Debug)]
pub struct Hint {
    /// The event's id, as `Last-Event-ID` names it; empty when unrecorded.
    pub id: String,
    pub game_id: Option<String>,
    pub sport_id: Option<String>,
    pub league_id: Option<String>,
    /// Every sidebar was invalidated (tag `sidebar`).
    pub all_sidebars: bool,
    /// `id: …\nevent: REASON\ndata: {…}\n\n`.
    pub sse: Bytes,
    /// `{"id", "event", "data": {…}}`, one WebSocket text message.
    pub ws: Utf8Bytes,
}

/// The `data` of a hint.
#[derive(Serialize)]
struct Data<'a> {
    game_id: Option<&'a str>,
    sport_id: Option<&'a str>,
    league_id: Option<&'a str>,
    status: Option<&'a str>,
    reason: &'a str,
    at: &'a str,
}

#[derive(Serialize)]
struct WsMessage<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    event: &'a str,
    data: &'a Data<'a>,
}

/// A game's sport and league, as a hint carries them.
pub type Scope = (Option<String>, Option<String>);

/// Sent to a client whose missed hints cannot be replayed, and to every
/// client when this replica dropped its whole cache: refetch everything.
/// Its id is a [`Position`] in the journal that a reconnect replays from.
#[derive(Debug)]
pub struct Resync {
    pub sse: Bytes,
    pub ws: Utf8Bytes,
}

impl Resync {
    pub fn at(position: Position) -> Resync {
        let id = position.to_string();
        Resync {
            sse: Bytes::from(format!("id: {id}\nevent: resync\ndata: {{}}\n\n")),
            ws: Utf8Bytes::from(format!(r#"{{"id":"{id}","event":"resync","data":{{}}}}"#)),
        }
    }
}

impl Hint {
    /// The hint of a journaled event. `scope` fills in the sport and league
    /// when the event names the game without them.
    pub fn new(event: &Event, scope: Option<&Scope>) -> Hint {
        Hint::encode(event, scope, true)
    }

    /// The hint of a change this replica applied without journaling it:
    /// no `id:`, so a browser's `Last-Event-ID` stays where it was.
    pub fn unrecorded(event: &Event, scope: Option<&Scope>) -> Hint {
        Hint::encode(event, scope, false)
    }

    fn encode(event: &Event, scope: Option<&Scope>, with_id: bool) -> Hint {
        // A manual invalidation by tags names its game and league only in
        // them.
        let game_id = event
            .game_id
            .clone()
            .or_else(|| tag_value(&event.tags, "game:").map(str::to_owned));
        let (sport_id, league_id) = match (&event.sport_id, &event.league_id, scope) {
            (None, None, Some(known)) => known.clone(),
            (None, None, None) => sidebar_scope(&event.tags),
            (s, l, _) => (s.clone(), l.clone()),
        };
        let data = Data {
            game_id: game_id.as_deref(),
            sport_id: sport_id.as_deref(),
            league_id: league_id.as_deref(),
            status: event.status.as_deref(),
            reason: event.reason.as_str(),
            at: &event.at,
        };
        // serde_json escapes control characters, so the JSON is one line;
        // the id and reason are checked to be so too (SSE splits on CR/LF).
        let json = serde_json::to_string(&data).unwrap_or_else(|_| "{}".into());
        let id = with_id.then(|| one_line(&event.id));
        let sse = match &id {
            Some(id) => format!("id: {id}\nevent: {}\ndata: {json}\n\n", data.reason),
            None => format!("event: {}\ndata: {json}\n\n", data.reason),
        };
        let ws = serde_json::to_string(&WsMessage {
            id: id.as_deref(),
            event: data.reason,
            data: &data,
        })
        .unwrap_or_else(|_| "{}".into());
        let all_sidebars = event.tags.iter().any(|t| t == "sidebar");
        Hint {
            id: if with_id {
                event.id.clone()
            } else {
                String::new()
            },
            game_id,
            sport_id,
            league_id,
            all_sidebars,
            sse: Bytes::from(sse),
            ws: Utf8Bytes::from(ws),
        }
    }

    #[cfg(test)]
    pub fn test() -> Hint {
        Hint {
            id: "r-1".into(),
            game_id: None,
            sport_id: None,
            league_id: None,
            all_sidebars: false,
            sse: Bytes::new(),
            ws: Utf8Bytes::from_static(""),
        }
    }
}

fn tag_value<'a>(tags: &'a [String], prefix: &str) -> Option<&'a str> {
    tags.iter().find_map(|t| t.strip_prefix(prefix))
}

/// `sidebar:{sport}` or `sidebar:{sport}:{league}`, the most specific.
fn sidebar_scope(tags: &[String]) -> (Option<String>, Option<String>) {
    let mut best = (None, None);
    for rest in tags.iter().filter_map(|t| t.strip_prefix("sidebar:")) {
        match rest.split_once(':') {
            Some((sport, league)) => return (Some(sport.into()), Some(league.into())),
            None => best = (Some(rest.to_owned()), None),
        }
    }
    best
}

/// An SSE field value cannot hold a line break.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidate::{Journal, Origin};
    use crate::watch::Reason;

    fn event(game: Option<&str>, tags: &[&str]) -> Event {
        let j = Journal::new("r1", 4, 100);
        j.new_event(
            Reason::StatusChange,
            game.map(Into::into),
            tags.iter().map(|t| t.to_string()).collect(),
            Origin::Local,
            String::new(),
        )
    }

    #[test]
    fn an_sse_frame_has_id_event_and_one_data_line() {
        let mut e = event(Some("g-1"), &["game:g-1", "sidebar:soccer:epl"]);
        e.sport_id = Some("soccer".into());
        e.league_id = Some("epl".into());
        e.status = Some("live".into());
        let h = Hint::new(&e, None);
        let text = std::str::from_utf8(&h.sse).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], format!("id: {}", e.id));
        assert_eq!(lines[1], "event: STATUS_CHANGE");
        let data: serde_json::Value =
            serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"game_id": "g-1", "sport_id": "soccer", "league_id": "epl",
                "status": "live", "reason": "STATUS_CHANGE", "at": e.at})
        );
        assert_eq!(&lines[3..], ["", ""]);
        let ws: serde_json::Value = serde_json::from_str(h.ws.as_str()).unwrap();
        assert_eq!(ws["id"], e.id.as_str());
        assert_eq!(ws["event"], "STATUS_CHANGE");
        assert_eq!(ws["data"], data);
    }

    #[test]
    fn scope_comes_from_tags_when_the_event_names_none() {
        let h = Hint::new(&event(None, &["sidebar:soccer:epl"]), None);
        assert_eq!(
            (h.game_id, h.sport_id.as_deref(), h.league_id.as_deref()),
            (None, Some("soccer"), Some("epl"))
        );
        let h = Hint::new(&event(None, &["sidebar", "sidebar:tennis"]), None);
        assert_eq!(h.sport_id.as_deref(), Some("tennis"));
        assert!(h.all_sidebars);
        let h = Hint::new(&event(None, &["game:sr:match:1"]), None);
        assert_eq!(h.game_id.as_deref(), Some("sr:match:1"));
    }

    #[test]
    fn a_known_scope_fills_in_and_an_unrecorded_hint_has_no_id() {
        let e = event(Some("g-1"), &["game:g-1"]);
        let scope = (Some("soccer".to_string()), Some("epl".to_string()));
        let h = Hint::unrecorded(&e, Some(&scope));
        assert_eq!(h.sport_id.as_deref(), Some("soccer"));
        let text = std::str::from_utf8(&h.sse).unwrap();
        assert!(text.starts_with("event: STATUS_CHANGE\ndata: {"), "{text}");
        assert!(h.id.is_empty());
        let ws: serde_json::Value = serde_json::from_str(h.ws.as_str()).unwrap();
        assert!(ws.get("id").is_none(), "{ws}");
        let at = Journal::new("r1", 4, 100).position();
        let resync = Resync::at(at);
        let text = std::str::from_utf8(&resync.sse).unwrap();
        assert!(
            text.starts_with(&format!("id: {at}\nevent: resync\n")),
            "{text}"
        );
    }

    #[test]
    fn a_line_break_cannot_split_a_frame() {
        let mut e = event(Some("g-1"), &[]);
        e.id = "r1\n\ndata: forged".into();
        let text = String::from_utf8(Hint::new(&e, None).sse.to_vec()).unwrap();
        assert_eq!(text.matches("\n\n").count(), 1, "{text}");
        assert!(text.starts_with("id: r1  data: forged\n"));
    }
}
