//! Fetching from the upstream and filling the cache: conditional
//! revalidation of expired entries, stale-if-error, buffering bodies that
//! fit `max_object_bytes` (larger or unbounded ones stream through), the
//! storability decision and storing. Unsafe methods are in `write`, L2
//! answers in `from_l2`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::respond;
use super::upstream::{UpstreamBody, UpstreamError};
use super::Proxy;
use crate::cache::entry::NewEntry;
use crate::cache::outcome::{Fwd, Outcome, Unstored};
use crate::cache::policy::{self, FreshnessRules};
use crate::cache::store::{uri_tag, FetchTicket, FillGuard, FillState};
use crate::cache::{key, Entry};
use crate::invalidate::detect::Detector;
use crate::invalidate::events::unix_ms;
use crate::watch::GameSnapshot;

/// What a fetch fills: the URI's primary key (the stored key follows from
/// it and the response's `Vary`), and the expired entry it may revalidate
/// or fall back on.
pub struct FillTarget {
    pub primary: Arc<str>,
    pub stale: Option<Arc<Entry>>,
}

/// How a filled response fared.
enum Stored {
    /// It may be cached; `false` when an invalidation overtook the fetch.
    Cacheable(Arc<Entry>, bool),
    /// It may not; the parts come back with the reason.
    Refused(HeaderMap, Bytes, policy::NotStorable),
}

pub(super) enum Read {
    Whole(Bytes),
    /// Over the limit: what was read so far, and the rest of the stream.
    Partial(Bytes, Incoming),
}

/// Reads up to `limit` bytes; past it, hands back the prefix and the
/// stream so the body can flow through without being held whole.
pub(super) async fn read_limited(mut body: Incoming, limit: usize) -> Result<Read, hyper::Error> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        // Trailers are not stored; the cache keeps the representation.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        len += data.len();
        chunks.push(data);
        if len > limit {
            return Ok(Read::Partial(concat(chunks, len), body));
        }
    }
    Ok(Read::Whole(concat(chunks, len)))
}

fn concat(mut chunks: Vec<Bytes>, len: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(len);
    for c in chunks {
        buf.extend_from_slice(&c);
    }
    buf.freeze()
}

pub(super) fn content_encoding(h: &HeaderMap) -> Option<&str> {
    h.get(CONTENT_ENCODING).and_then(|v| v.to_str().ok())
}

pub(super) fn declared_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

impl Proxy {
    pub(super) async fn fetch(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        target: FillTarget,
        guard: Option<FillGuard>,
    ) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        self.fetch_parts(
            Request::from_parts(parts, Either::Left(body)),
            peer,
            target,
            guard,
        )
        .await
    }

    /// Fetches a GET for `target`, and stores what may be stored.
    pub(super) async fn fetch_parts(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        peer: SocketAddr,
        target: FillTarget,
        guard: Option<FillGuard>,
    ) -> Response<ProxyBody> {
        let mut ticket = self.store.begin_fetch();
        let (mut parts, body) = req.into_parts();
        let client_headers = parts.headers.clone();
        let method = parts.method.clone();
        self.upstream.prepare(&mut parts, peer);
        // The fill asks for the whole representation, which can be shared;
        // the client's own validators are checked against it here.
        parts.headers.remove(IF_NONE_MATCH);
        parts.headers.remove(IF_MODIFIED_SINCE);
        let revalidating = match &target.stale {
            Some(e) if e.has_validators() => {
                if let Some(etag) = e.etag() {
                    parts.headers.insert(IF_NONE_MATCH, etag.clone());
                }
                if let Some(lm) = e.last_modified() {
                    parts.headers.insert(IF_MODIFIED_SINCE, lm.clone());
                }
                true
            }
            _ => false,
        };
        let resp = match self
            .upstream
            .send(Request::from_parts(parts, body), &self.metrics)
            .await
        {
            Ok(resp) => resp,
            Err(e) => return self.failed(&method, &client_headers, target.stale, guard, e),
        };
        let status = resp.status();
        if revalidating && status == StatusCode::NOT_MODIFIED {
            if let Some(stale) = target.stale {
                return self.refreshed(
                    &method,
                    &client_headers,
                    &target.primary,
                    stale,
                    resp,
                    &ticket,
                    guard,
                );
            }
        }
        if status.is_server_error() {
            if let Some(s) = target
                .stale
                .as_ref()
                .filter(|s| self.store.ledger().usable_on_error(s, Instant::now()))
            {
                if let Some(g) = guard {
                    g.finish(FillState::NotStored);
                }
                return self.serve_stale(&method, &client_headers, s, status.as_u16());
            }
        }
        self.fill_from(resp, &method, &client_headers, target, &mut ticket, guard)
            .await
    }

    /// The upstream gave no response: a stale copy if one may stand in,
    /// else 502/504 with a JSON body.
    /// Answers an upstream failure: a usable stale copy, else the error.
    /// The leader's waiters are told the failure and answer it the same
    /// way, so a failing upstream gets one request per key per fill.
    pub(super) fn failed(
        &self,
        method: &Method,
        client_headers: &HeaderMap,
        stale: Option<Arc<Entry>>,
        guard: Option<FillGuard>,
        err: UpstreamError,
    ) -> Response<ProxyBody> {
        if let Some(g) = guard {
            g.finish(FillState::Failed(Arc::new(err.clone())));
        }
        tracing::warn!(upstream = self.upstream.url(), error = %err, "upstream request failed");
        let fwd = if stale.is_some() {
            Fwd::Stale
        } else {
            Fwd::UriMiss
        };
        // An invalidated copy is gone, whatever the upstream says.
        match stale.filter(|s| self.store.ledger().usable_on_error(s, Instant::now())) {
            Some(s) => self.serve_stale(method, client_headers, &s, err.status().as_u16()),
            None => {
                let outcome = Outcome::Failed {
                    fwd,
                    error: err.label(),
                };
                respond::upstream_error(&self.metrics, self.upstream.url(), &err, outcome)
            }
        }
    }

    fn serve_stale(
        &self,
        method: &Method,
        client_headers: &HeaderMap,
        e: &Entry,
        fwd_status: u16,
    ) -> Response<ProxyBody> {
        let now = Instant::now();
        let outcome = Outcome::StaleIfError {
            fwd_status,
            ttl: e.ttl_secs(now),
        };
        respond::from_entry(&self.metrics, method, client_headers, e, now, outcome)
    }

    /// A 304 to our conditional request: the stored body is still good;
    /// its headers are updated (RFC 9111 §4.3.4) and its freshness renewed.
    #[allow(clippy::too_many_arguments)]
    fn refreshed(
        &self,
        method: &Method,
        client_headers: &HeaderMap,
        primary: &str,
        stale: Arc<Entry>,
        resp: Response<Incoming>,
        ticket: &FetchTicket,
        guard: Option<FillGuard>,
    ) -> Response<ProxyBody> {
        let (mut rparts, _) = resp.into_parts();
        respond::clean_upstream_headers(&mut rparts.headers);
        let mut headers = stale.origin_headers();
        for name in rparts.headers.keys() {
            if name == CONTENT_LENGTH {
                continue;
            }
            headers.remove(name);
            for v in rparts.headers.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        // Same body, same games: re-read for the tags, not for changes.
        let games = self
            .detector
            .extract(content_encoding(&headers), stale.body_bytes());
        let stored = self.store_entry(
            method,
            client_headers,
            primary,
            stale.status,
            headers,
            stale.body(),
            &games,
            ticket,
            guard,
        );
        let now = Instant::now();
        match stored {
            Stored::Cacheable(entry, stored) => {
                let outcome = Outcome::Miss {
                    fwd: Fwd::Stale,
                    fwd_status: 304,
                    stored,
                };
                respond::from_entry(&self.metrics, method, client_headers, &entry, now, outcome)
            }
            // The refreshed headers forbid storing (e.g. now `no-store`):
            // the stale copy goes, and this answer still uses its body.
            Stored::Refused(headers, body, why) => {
                self.store.invalidate_key(stale.key());
                let mut resp = Response::new(ProxyBody::full(body));
                *resp.status_mut() = stale.status;
                *resp.headers_mut() = headers;
                let outcome = Outcome::NotStored {
                    fwd: Fwd::Stale,
                    fwd_status: 304,
                    why: Unstored::Refused(why),
                };
                respond::label(&self.metrics, resp.headers_mut(), outcome);
                resp
            }
        }
    }

    async fn fill_from(
        &self,
        resp: Response<Incoming>,
        method: &Method,
        client_headers: &HeaderMap,
        target: FillTarget,
        ticket: &mut FetchTicket,
        guard: Option<FillGuard>,
    ) -> Response<ProxyBody> {
        let fwd = if target.stale.is_some() {
            Fwd::Stale
        } else {
            Fwd::UriMiss
        };
        let (mut rparts, rbody) = resp.into_parts();
        respond::clean_upstream_headers(&mut rparts.headers);
        let upstream_status = rparts.status.as_u16();
        let passthrough = |headers: &mut HeaderMap, why: Unstored| {
            let outcome = Outcome::NotStored {
                fwd,
                fwd_status: upstream_status,
                why,
            };
            respond::label(&self.metrics, headers, outcome);
        };
        let limit = self.settings.max_object_bytes;
        if declared_length(&rparts.headers).is_some_and(|n| n > limit as u64) {
            if let Some(g) = guard {
                g.finish(FillState::NotStored);
            }
            passthrough(&mut rparts.headers, Unstored::TooLarge);
            return Response::from_parts(rparts, ProxyBody::stream(None, rbody));
        }
        let read = tokio::time::timeout(self.upstream_timeout(), read_limited(rbody, limit)).await;
        let body = match read {
            Ok(Ok(Read::Whole(body))) => body,
            Ok(Ok(Read::Partial(prefix, rest))) => {
                if let Some(g) = guard {
                    g.finish(FillState::NotStored);
                }
                passthrough(&mut rparts.headers, Unstored::TooLarge);
                return Response::from_parts(rparts, ProxyBody::stream(Some(prefix), rest));
            }
            // Nothing half-received is stored or sent on.
            Ok(Err(e)) => {
                return self.failed(
                    method,
                    client_headers,
                    target.stale,
                    guard,
                    UpstreamError::Body(e.to_string()),
                )
            }
            Err(_) => {
                let err = UpstreamError::Timeout(self.upstream_timeout());
                return self.failed(method, client_headers, target.stale, guard, err);
            }
        };
        let games = self.watch(&rparts.headers, &body, Some(&mut *ticket)).await;
        match self.store_entry(
            method,
            client_headers,
            &target.primary,
            rparts.status,
            rparts.headers,
            body,
            &games,
            ticket,
            guard,
        ) {
            Stored::Cacheable(entry, stored) => {
                let outcome = Outcome::Miss {
                    fwd,
                    fwd_status: upstream_status,
                    stored,
                };
                respond::from_entry(
                    &self.metrics,
                    method,
                    client_headers,
                    &entry,
                    Instant::now(),
                    outcome,
                )
            }
            Stored::Refused(headers, body, why) => {
                let mut resp = Response::new(ProxyBody::full(body));
                *resp.status_mut() = rparts.status;
                *resp.headers_mut() = headers;
                passthrough(resp.headers_mut(), Unstored::Refused(why));
                resp
            }
        }
    }

    fn upstream_timeout(&self) -> std::time::Duration {
        self.upstream.timeout()
    }

    /// Decides storability and stores.
    #[allow(clippy::too_many_arguments)]
    fn store_entry(
        &self,
        method: &Method,
        client_headers: &HeaderMap,
        primary: &str,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        games: &[GameSnapshot],
        ticket: &FetchTicket,
        guard: Option<FillGuard>,
    ) -> Stored {
        let path = primary.split('?').next().unwrap_or(primary);
        let route = self.routes.find(path);
        let mut tags: Vec<Arc<str>> = route
            .as_ref()
            .map(|r| r.tags().into_iter().map(Arc::from).collect())
            .unwrap_or_default();
        tags.extend(Detector::tags(games));
        let rules = FreshnessRules {
            honor_origin: self.settings.honor_origin,
            route_ttl: route.as_ref().and_then(|r| r.route.ttl),
            status_ttl: self.detector.status_ttl(games),
            default_ttl: route.as_ref().map(|_| self.settings.default_ttl),
            plain: self.routes.is_empty(),
        };
        let now = SystemTime::now();
        let verdict = policy::storability(method, client_headers, status, &headers, &rules, now)
            .and_then(|fresh| {
                policy::vary_names(&headers)
                    .map(|names| (fresh, names))
                    .map_err(|_| policy::NotStorable::VaryStar)
            });
        let (fresh, vary) = match verdict {
            Ok(v) => v,
            Err(why) => {
                if let Some(g) = guard {
                    g.finish(FillState::NotStored);
                }
                return Stored::Refused(headers, body, why);
            }
        };
        let key: Arc<str> = if vary.is_empty() {
            primary.into()
        } else {
            // A variant is found through its URI's tag; see `uri_tag`.
            tags.push(uri_tag(primary));
            key::variant(primary, &vary, client_headers).into()
        };
        let initial_age = policy::initial_age(&headers, now);
        let swr = route
            .as_ref()
            .and_then(|r| r.route.stale_while_revalidate)
            .unwrap_or(self.settings.stale_while_revalidate);
        let entry = Arc::new(Entry::new(
            NewEntry {
                key,
                status,
                headers,
                body,
                initial_age,
                fresh_for: fresh.fresh_for(initial_age),
                stale_if_error: fresh.stale_if_error_window(self.settings.stale_if_error),
                stale_while_revalidate: fresh.stale_while_revalidate_window(swr),
                must_revalidate: fresh.must_revalidate,
                tags,
            },
            Instant::now(),
        ));
        let stored = self
            .store
            .insert(ticket, primary, &vary, Arc::clone(&entry));
        if stored {
            self.detector.invalidator().register(&entry, ticket.began());
        }
        if let Some(g) = guard {
            g.finish(if stored {
                FillState::Filled(Arc::clone(&entry))
            } else {
                FillState::NotStored
            });
        }
        Stored::Cacheable(entry, stored)
    }

    /// Finds the games in a body and acts on their changes before the body
    /// is stored. A fetch that an invalidation of its games overtook may
    /// predate the change: its games are not compared, or they would flap.
    pub(super) async fn watch(
        &self,
        headers: &HeaderMap,
        body: &Bytes,
        ticket: Option<&mut FetchTicket>,
    ) -> Vec<GameSnapshot> {
        let games = self.detector.extract(content_encoding(headers), body);
        if games.is_empty() {
            return games;
        }
        let overtaken = ticket.as_ref().is_some_and(|t| {
            self.store
                .superseded(t, Detector::tags(&games).iter().map(|t| &**t))
        });
        if !overtaken {
            let began_ms = ticket.as_ref().map(|t| {
                let ago = u64::try_from(t.began().elapsed().as_millis()).unwrap_or(u64::MAX);
                unix_ms(SystemTime::now()).saturating_sub(ago)
            });
            let caused = self.detector.observe_fetched(&games, began_ms).await;
            // The invalidations this body just caused must not stop it from
            // being stored: it is the response that revealed the change.
            // Only those: a peer's that landed meanwhile still supersedes it.
            if let Some(t) = ticket {
                for seq in caused {
                    t.forgive(seq);
                }
            }
        }
        games
    }
}
