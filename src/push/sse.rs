//! The change stream as server-sent events: a `retry:` line, the replayed
//! hints, then live ones, a comment at each heartbeat. A stream that fell
//! behind gets a last comment and ends; the browser's EventSource
//! reconnects with `Last-Event-ID` and is replayed what it missed.

use bytes::Bytes;
use http::Response;

use super::{Body, Next, Replay, Stream};

/// How long a browser waits before it reconnects.
const OPENING: &[u8] = b"retry: 2000\n\n";

struct State {
    stream: Stream,
    /// Frames to write before the live ones.
    queued: std::vec::IntoIter<Bytes>,
    done: bool,
}

pub(super) fn respond(stream: Stream, backlog: Option<Replay>) -> Response<Body> {
    let mut queued = vec![Bytes::from_static(OPENING)];
    match backlog {
        Some(Replay::Missed(hints)) => {
            stream.slot.metrics.messages.inc_by(hints.len() as u64);
            queued.extend(hints.iter().map(|h| h.sse.clone()));
        }
        Some(Replay::Gone(resync)) => queued.push(resync.sse.clone()),
        None => {}
    }
    let state = State {
        stream,
        queued: queued.into_iter(),
        done: false,
    };
    crate::event_stream::response(futures_util::stream::unfold(state, next_frame))
}

async fn next_frame(mut st: State) -> Option<(Bytes, State)> {
    if let Some(frame) = st.queued.next() {
        return Some((frame, st));
    }
    if st.done {
        return None;
    }
    let frame = match st.stream.next().await {
        Next::Hint(h) => h.sse.clone(),
        Next::Heartbeat => Bytes::from_static(crate::event_stream::KEEP_ALIVE),
        Next::Resync(resync) => resync.sse.clone(),
        Next::Lagged(missed) => {
            st.done = true;
            Bytes::from(format!(
                ": fell {missed} hints behind; reconnect with Last-Event-ID\n\n"
            ))
        }
        Next::End => return None,
    };
    Some((frame, st))
}
