//! Change hints to browsers on the proxy port (SPEC §8).
//!
//! `GET {push.path}` is a server-sent event stream; a WebSocket upgrade on
//! the same path carries the same hints as text messages. One hint per
//! invalidation this replica applied, its own or a peer's, sent after the
//! replica dropped its entries, so a refetch through it gets the new body.
//!
//! The flow is one way: the journal records an event → [`relay`] encodes
//! it once ([`hint::Hint`]) → one broadcast → every stream filters
//! ([`filter`]) and writes the same bytes. Heartbeats go through the same
//! broadcast, so 10,000 idle streams cost no timers.
//!
//! - this file: the door (method, limits), the relay, and the replay of
//!   `Last-Event-ID` from the journal.
//! - `cors`: which origins may connect, and the preflight.
//! - `filter`: the query and which hints a stream hears.
//! - `hint`: one hint's SSE frame and WebSocket text.
//! - `sse`, `ws`: the two transports.
//!
//! Limits: `push.max_clients` streams (then 503 with `Retry-After`); new
//! streams pass the proxy port's per-IP rate limit before they get here; a
//! stream [`CLIENT_BUFFER`] hints behind is dropped and counted. Nothing of
//! a stream reaches the upstream or the cache.

mod cors;
pub mod filter;
pub mod hint;
mod sse;
mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, VARY};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::PushConfig;
use crate::invalidate::events::{Position, Since};
use crate::invalidate::{Event, Invalidator};
use crate::metrics::PushMetrics;
use crate::shutdown;
use cors::Origins;
use filter::Filter;
use hint::{Hint, Resync, Scope};

/// A stream's response body.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Hints a stream may fall behind by before it is dropped: the broadcast
/// holds them once for all streams, so a slow reader costs no memory of
/// its own beyond its socket and hyper's write buffer.
pub const CLIENT_BUFFER: usize = 256;

/// What the relay broadcasts to every stream.
#[derive(Clone, Debug)]
enum Msg {
    Hint(Arc<Hint>),
    Heartbeat,
    /// This replica dropped its whole cache: refetch everything.
    Resync(Arc<Resync>),
    /// Shutdown: end the stream.
    Closing,
}

/// How far before a reconnecting client's last event, by the events' own
/// clocks, a replay reaches back: another replica may have applied those
/// events after it (they propagate in milliseconds; this covers clock
/// skew and a slow peer).
const REPLAY_MARGIN_MS: u64 = 10_000;

/// Games' sports and leagues as hints named them, for hints that name
/// only the game (a manual invalidation, a local eviction). Forgotten
/// whole past this many games.
const SCOPES: usize = 100_000;

pub struct Push {
    path: String,
    origins: Origins,
    invalidator: Arc<Invalidator>,
    tx: broadcast::Sender<Msg>,
    slots: Arc<Semaphore>,
    metrics: PushMetrics,
    heartbeat: Duration,
    scopes: Mutex<HashMap<String, Scope>>,
    /// Set when the relay has ended (shutdown): no stream opens after.
    closed: AtomicBool,
}

/// One open stream's place under `push.max_clients`, and in the gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: PushMetrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.clients.dec();
    }
}

impl Push {
    /// Builds the door and starts the relay, which ends at `shutdown`.
    pub fn start(
        config: &PushConfig,
        invalidator: Arc<Invalidator>,
        metrics: PushMetrics,
        shutdown: shutdown::Signal,
    ) -> Arc<Push> {
        let origins = Origins::new(&config.allow_origins);
        let push = Arc::new(Push {
            path: config.path.clone(),
            origins,
            invalidator,
            tx: broadcast::channel(CLIENT_BUFFER).0,
            slots: Arc::new(Semaphore::new(
                config.max_clients.clamp(1, Semaphore::MAX_PERMITS),
            )),
            metrics,
            heartbeat: config.heartbeat.get(),
            scopes: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(relay(Arc::clone(&push), shutdown));
        push
    }

    /// `push.path`: the proxy answers it here, and never forwards it.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// One request on `push.path`.
    pub fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        let Ok(origin) = self.origins.allowed(req.headers()) else {
            return error(
                StatusCode::FORBIDDEN,
                "this origin may not open change streams (push.allow_origins)",
            );
        };
        let mut resp = match *req.method() {
            Method::GET => self.open(req),
            Method::OPTIONS => cors::preflight(),
            _ => {
                let mut resp = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "the change stream answers GET (SSE or a WebSocket upgrade) and OPTIONS",
                );
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, OPTIONS"));
                resp
            }
        };
        let h = resp.headers_mut();
        h.insert(VARY, HeaderValue::from_static("origin"));
        if let Some(origin) = origin {
            h.insert("access-control-allow-origin", origin);
        }
        resp
    }

    /// A stream, SSE or WebSocket, or the reason it cannot be opened.
    fn open(&self, req: Request<Incoming>) -> Response<Body> {
        let query = match filter::parse(req.uri().query()) {
            Ok(q) => q,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let last_event_id = match last_event_id(req.headers()) {
            Ok(header) => header.or(query.last_event_id),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let wants_ws = ws::is_upgrade(req.headers());
        if let Err(e) = wants_ws.then(|| ws::check(req.headers())).transpose() {
            return error(StatusCode::BAD_REQUEST, e);
        }
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.metrics.dropped("max_clients");
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many change streams on this replica (push.max_clients)",
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            return resp;
        };
        self.metrics.clients.inc();
        let slot = Slot {
            _permit: permit,
            metrics: self.metrics.clone(),
        };
        // Subscribe before reading the journal: an event recorded in
        // between is in both, and the stream skips the second copy.
        let rx = self.tx.subscribe();
        // After subscribing: a stream that subscribed before the relay
        // ended hears its `Closing`; one after it sees the flag.
        if self.closed.load(Ordering::Acquire) {
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
        let backlog = last_event_id.map(|id| self.replay(&id, &query.filter));
        let stream = Stream {
            rx,
            filter: query.filter,
            replayed: backlog.as_ref().map(Replay::ids).unwrap_or_default(),
            slot,
        };
        if wants_ws {
            ws::upgrade(req, stream, backlog)
        } else {
            sse::respond(stream, backlog)
        }
    }

    /// The hints a client that last saw `last` has missed, oldest first,
    /// from this replica's journal; a resync when they are gone from it,
    /// or when this replica dropped its cache since.
    fn replay(&self, last: &str, filter: &Filter) -> Replay {
        let journal = self.invalidator.journal();
        let since = match Position::parse(last) {
            Some(at) => journal.since_position(&at),
            None => journal.since(last, REPLAY_MARGIN_MS),
        };
        match since {
            Since::Missed(events) => {
                // Copied out, so the relay never waits on a replay.
                let scopes: Vec<Option<Scope>> = {
                    let scopes = self.scopes();
                    events
                        .iter()
                        .map(|e| scope_of(&scopes, e).cloned())
                        .collect()
                };
                Replay::Missed(
                    events
                        .iter()
                        .zip(&scopes)
                        .map(|(e, scope)| Arc::new(Hint::new(e, scope.as_ref())))
                        .filter(|h| filter.matches(h))
                        .collect(),
                )
            }
            Since::Gone => Replay::Gone(Arc::new(Resync::at(journal.position()))),
        }
    }

    fn scopes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Scope>> {
        self.scopes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes a journaled or unrecorded event, learning or filling in its
    /// game's sport and league.
    fn hint(&self, event: &Event, recorded: bool) -> Hint {
        let mut scopes = self.scopes();
        // Only a whole scope is learned: a partial one would stop the
        // game's later hints from reaching streams of its league.
        if let (Some(game), Some(_), Some(_)) = (&event.game_id, &event.sport_id, &event.league_id)
        {
            if scopes.len() >= SCOPES && !scopes.contains_key(game) {
                scopes.clear();
            }
            scopes.insert(
                game.clone(),
                (event.sport_id.clone(), event.league_id.clone()),
            );
        }
        let scope = scope_of(&scopes, event);
        if recorded {
            Hint::new(event, scope)
        } else {
            Hint::unrecorded(event, scope)
        }
    }
}

/// What a reconnecting client gets before the live hints.
enum Replay {
    Missed(Vec<Arc<Hint>>),
    /// The event it names is gone from the journal: refetch everything.
    Gone(Arc<Resync>),
}

impl Replay {
    fn ids(&self) -> Vec<Box<str>> {
        match self {
            Replay::Missed(hints) => hints.iter().map(|h| h.id.as_str().into()).collect(),
            Replay::Gone(_) => Vec::new(),
        }
    }
}

fn scope_of<'a>(scopes: &'a HashMap<String, Scope>, event: &Event) -> Option<&'a Scope> {
    event.game_id.as_ref().and_then(|g| scopes.get(g))
}

/// One client's view of the broadcast, shared by both transports.
struct Stream {
    rx: broadcast::Receiver<Msg>,
    filter: Filter,
    /// Ids replayed from the journal, which the broadcast may carry again;
    /// forgotten at the next heartbeat, long after the relay caught up.
    replayed: Vec<Box<str>>,
    /// Its place under `push.max_clients`, and the push metrics.
    slot: Slot,
}

/// What a transport writes next.
enum Next {
    Hint(Arc<Hint>),
    Heartbeat,
    Resync(Arc<Resync>),
    /// Fell [`CLIENT_BUFFER`] hints behind: dropped.
    Lagged(u64),
    End,
}

impl Stream {
    async fn next(&mut self) -> Next {
        loop {
            match self.rx.recv().await {
                Ok(Msg::Hint(h)) => {
                    let replayed = !h.id.is_empty() && self.replayed.iter().any(|r| **r == *h.id);
                    if replayed || !self.filter.matches(&h) {
                        continue;
                    }
                    self.slot.metrics.messages.inc();
                    return Next::Hint(h);
                }
                Ok(Msg::Heartbeat) => {
                    self.replayed = Vec::new();
                    return Next::Heartbeat;
                }
                Ok(Msg::Resync(r)) => return Next::Resync(r),
                Ok(Msg::Closing) | Err(RecvError::Closed) => return Next::End,
                Err(RecvError::Lagged(n)) => {
                    self.slot.metrics.dropped("slow");
                    // Counted once: the transport ends the stream now.
                    self.rx = self.rx.resubscribe();
                    return Next::Lagged(n);
                }
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A reader that stopped reading is not polled again, so it cannot
        // see its own lag: count it when its connection goes (a stalled
        // one is closed by `proxy.send_timeout`).
        if self.rx.len() > CLIENT_BUFFER {
            self.slot.metrics.dropped("slow");
        }
    }
}

/// Encodes each journal event once and broadcasts it, with this
/// replica's unrecorded evictions, the heartbeats and resyncs; at
/// shutdown tells every stream to end.
async fn relay(push: Arc<Push>, mut shutdown: shutdown::Signal) {
    let journal = push.invalidator.journal();
    let mut events = journal.subscribe();
    let mut evictions = journal.subscribe_evictions();
    let mut resyncs = journal.watch_resyncs();
    let mut beat = tokio::time::interval_at(Instant::now() + push.heartbeat, push.heartbeat);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let lagged = |missed: u64| {
        tracing::warn!(
            missed,
            "change hints fell behind the journal; telling clients to resync"
        );
        Msg::Resync(Arc::new(Resync::at(journal.position())))
    };
    loop {
        // Hints first: a heartbeat ahead of a backlog would let streams
        // forget replayed ids too early.
        let msg = tokio::select! {
            biased;
            got = events.recv() => match got {
                Ok(event) => Msg::Hint(Arc::new(push.hint(&event, true))),
                // Hints were lost here: every client refetches.
                Err(RecvError::Lagged(missed)) => lagged(missed),
                Err(RecvError::Closed) => break,
            },
            got = evictions.recv() => match got {
                Ok(event) => Msg::Hint(Arc::new(push.hint(&event, false))),
                Err(RecvError::Lagged(missed)) => lagged(missed),
                Err(RecvError::Closed) => break,
            },
            changed = resyncs.changed() => match changed {
                Ok(()) => Msg::Resync(Arc::new(Resync::at(journal.position()))),
                Err(_) => break,
            },
            _ = beat.tick() => Msg::Heartbeat,
            _ = shutdown.recv() => break,
        };
        // No streams is fine.
        let _ = push.tx.send(msg);
    }
    push.closed.store(true, Ordering::Release);
    let _ = push.tx.send(Msg::Closing);
}

/// `Last-Event-ID`, when given: one line, at most 256 bytes.
fn last_event_id(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if s.len() <= 256 => Ok((!s.is_empty()).then(|| s.to_owned())),
        _ => Err("Last-Event-ID must be an event id"),
    }
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed_unsync()
}

/// `{"error": message}`, never stored.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A header map from `(name, value)` pairs, for this module's tests.
#[cfg(test)]
pub(super) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                http::HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_is_one_short_line() {
        assert_eq!(last_event_id(&HeaderMap::new()), Ok(None));
        assert_eq!(
            last_event_id(&headers(&[("last-event-id", "r1-5-2")])),
            Ok(Some("r1-5-2".into()))
        );
        assert!(last_event_id(&headers(&[("last-event-id", &"x".repeat(300))])).is_err());
    }
}
