//! The change stream as server-sent events: a `retry:` line, the replayed
//! hints, then live ones, a comment at each heartbeat. A stream that fell
//! behind gets a last comment and ends; the browser's EventSource
//! reconnects with `Last-Event-ID` and is replayed what it missed.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::{Body, Next, Replay, Stream};

/// How long a browser waits before it reconnects.
const OPENING: &[u8] = b"retry: 2000\n\n";
const HEARTBEAT: &[u8] = b": keep-alive\n\n";

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
    let frames = futures_util::stream::unfold(state, next_frame)
        .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
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
        Next::Heartbeat => Bytes::from_static(HEARTBEAT),
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
