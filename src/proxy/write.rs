//! PUT, POST, PATCH, DELETE and the rest: forwarded as they are, their
//! answers watched like any other, and a success drops the URI's entries
//! on every replica through the invalidation door (RFC 9111 §4.4).

use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::fill::{declared_length, read_limited, Read};
use super::respond;
use super::upstream::UpstreamError;
use super::Proxy;
use crate::cache::key;
use crate::cache::outcome::Outcome;
use crate::invalidate;
use crate::watch::Reason;

impl Proxy {
    /// Drops the cached entries of a URI after a successful unsafe method,
    /// on every replica and in the L2, through the one door.
    pub(super) async fn drop_uri(&self, method: &Method, primary: &str, status: StatusCode) {
        let req = invalidate::Invalidation {
            target: invalidate::Target::Uri {
                primary: primary.to_string(),
            },
            reason: Reason::Manual,
            origin: invalidate::Origin::Local,
            detail: format!("{method} answered {}", status.as_u16()),
            state: None,
        };
        self.detector.invalidator().invalidate(req).await;
    }

    /// PUT, POST, PATCH, DELETE and the rest: forwarded as they are; a
    /// success drops the cached entries of the URI (RFC 9111 §4.4).
    pub(super) async fn forward_unsafe(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let primary = key::primary(req.uri()).into_owned();
        let method = req.method().clone();
        let (mut parts, body) = req.into_parts();
        self.upstream.prepare(&mut parts, peer);
        let resp = match self
            .upstream
            .send(
                Request::from_parts(parts, Either::Left(body)),
                &self.metrics,
            )
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                let outcome = Outcome::BypassFailed { error: e.label() };
                return respond::upstream_error(&self.metrics, self.upstream.url(), &e, outcome);
            }
        };
        let status = resp.status();
        // OPTIONS and TRACE are safe (RFC 9110 §9.2.1): a CORS preflight
        // drops nothing.
        if (status.is_success() || status.is_redirection()) && !method.is_safe() {
            self.drop_uri(&method, &primary, status).await;
        }
        let (mut rparts, rbody) = resp.into_parts();
        respond::clean_upstream_headers(&mut rparts.headers);
        // Labelled (and counted) once its body is known to come whole.
        let outcome = Outcome::Bypass {
            fwd_status: status.as_u16(),
        };
        // A write answered with a game object is watched like any other.
        let limit = self.settings.max_object_bytes;
        if declared_length(&rparts.headers).is_some_and(|n| n > limit as u64) {
            respond::label(&self.metrics, &mut rparts.headers, outcome);
            return Response::from_parts(rparts, ProxyBody::stream(None, rbody));
        }
        match read_limited(rbody, limit).await {
            Ok(Read::Whole(body)) => {
                respond::label(&self.metrics, &mut rparts.headers, outcome);
                if status.is_success() {
                    self.watch(&rparts.headers, &body, None).await;
                }
                Response::from_parts(rparts, ProxyBody::full(body))
            }
            Ok(Read::Partial(prefix, rest)) => {
                respond::label(&self.metrics, &mut rparts.headers, outcome);
                Response::from_parts(rparts, ProxyBody::stream(Some(prefix), rest))
            }
            Err(e) => {
                let err = UpstreamError::Body(e.to_string());
                let outcome = Outcome::BypassFailed { error: err.label() };
                respond::upstream_error(&self.metrics, self.upstream.url(), &err, outcome)
            }
        }
    }
}
