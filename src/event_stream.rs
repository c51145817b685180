//! A `text/event-stream` response (server-sent events), as both the admin
//! port's live events and the proxy port's change hints answer: never
//! stored, never buffered by a proxy in between.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};

/// The comment an idle stream sends so intermediaries keep it open.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// A response whose body is `frames`, each one written as it comes.
pub fn response<S>(frames: S) -> Response<UnsyncBoxBody<Bytes, Infallible>>
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let frames = frames.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
