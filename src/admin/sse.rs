//! `GET /api/v1/shared/cache/invalidation/events/stream`: invalidation
//! events live, as server-sent events.
//!
//! Each event is one `data: <event json>` frame. An idle stream sends a
//! `: keep-alive` comment every [`super::KEEP_ALIVE`] so intermediaries keep
//! it open. A reader too slow for the journal's broadcast buffer is
//! disconnected rather than buffered for: memory stays bounded, and an SSE
//! client reconnects and can catch up from the events endpoint. Streams end
//! at shutdown so draining does not wait on them.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{Admin, AdminBody};
use crate::invalidate::Event;
use crate::shutdown;

/// One SSE frame for an event.
pub fn frame(event: &Event) -> Bytes {
    // Serialized JSON has no raw newlines, so one `data:` line suffices.
    let json = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("data: {json}\n\n"))
}

struct State {
    rx: broadcast::Receiver<Arc<Event>>,
    keep_alive: Interval,
    shutdown: shutdown::Signal,
    /// Set after the farewell comment to a lagging reader.
    done: bool,
}

/// Subscribes before answering, so every event recorded after the client
/// has the response head is on the stream.
pub fn stream(admin: &Admin) -> Response<AdminBody> {
    let mut keep_alive =
        tokio::time::interval_at(Instant::now() + admin.keep_alive, admin.keep_alive);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = State {
        rx: admin.invalidator.journal().subscribe(),
        keep_alive,
        shutdown: admin.shutdown.clone(),
        done: false,
    };
    crate::event_stream::response(futures_util::stream::unfold(state, next_frame))
}

async fn next_frame(mut st: State) -> Option<(Bytes, State)> {
    if st.done || st.shutdown.is_shutdown() {
        return None;
    }
    tokio::select! {
        received = st.rx.recv() => match received {
            Ok(event) => Some((frame(&event), st)),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "event stream reader too slow; disconnecting it");
                st.done = true;
                Some((Bytes::from(format!(": lagged by {missed} events; reconnect\n\n")), st))
            }
            Err(RecvError::Closed) => None,
        },
        _ = st.keep_alive.tick() => Some((Bytes::from_static(crate::event_stream::KEEP_ALIVE), st)),
        _ = st.shutdown.recv() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidate::{Journal, Origin};
    use crate::watch::Reason;

    #[test]
    fn one_data_line_per_event() {
        let j = Journal::new("r", 4, 100);
        let e = j.new_event(
            Reason::Manual,
            Some("g-1".into()),
            vec!["game:g-1".into()],
            Origin::Api,
            "line\nbreak".into(),
        );
        let f = frame(&e);
        let text = std::str::from_utf8(&f).unwrap();
        assert!(text.starts_with("data: {"));
        assert!(text.ends_with("}\n\n"));
        assert_eq!(text.matches('\n').count(), 2);
        let back: Event = serde_json::from_str(&text[6..text.len() - 2]).unwrap();
        assert_eq!(back, e);
    }

    #[tokio::test]
    async fn a_lagging_reader_is_cut_off() {
        let j = Journal::new("r", 4, 100_000);
        let (_trigger, signal) = shutdown::channel();
        let mut st = State {
            rx: j.subscribe(),
            keep_alive: tokio::time::interval_at(
                Instant::now() + std::time::Duration::from_secs(3600),
                std::time::Duration::from_secs(3600),
            ),
            shutdown: signal,
            done: false,
        };
        for _ in 0..300 {
            j.record(j.new_event(Reason::Manual, None, vec![], Origin::Api, String::new()));
        }
        let (bytes, next) = next_frame(st).await.unwrap();
        assert!(bytes.starts_with(b": lagged"), "{bytes:?}");
        st = next;
        assert!(next_frame(st).await.is_none());
    }
}
