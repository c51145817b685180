//! Building client responses: hits from prebuilt entries, 304s, STALE
//! copies, MISS/BYPASS answers from the upstream's head, and the JSON
//! error answer when the upstream fails.
//!
//! Every answer is labelled here from its [`Outcome`], and counted in the
//! same step: the headers and `oddscache_requests_total` cannot disagree,
//! and no path can label an answer without counting it.

use std::time::Instant;

use http::header::{HeaderValue, AGE, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Response, StatusCode};

use super::body::ProxyBody;
use super::upstream::{append_via, UpstreamError};
use crate::cache::entry::age_value;
use crate::cache::outcome::Outcome;
use crate::cache::policy::{not_modified, strip_hop_by_hop};
use crate::cache::Entry;
use crate::metrics::Metrics;

/// A fresh hit: prebuilt headers, one `Age` and a `Bytes` clone. Answers
/// 304 when the client's validators match.
pub fn hit(
    metrics: &Metrics,
    method: &Method,
    req_headers: &HeaderMap,
    entry: &Entry,
    now: Instant,
) -> Response<ProxyBody> {
    metrics.count(Outcome::Hit);
    if has_conditionals(req_headers) && {
        let (etag, last_modified) = entry.validators();
        not_modified(req_headers, etag, last_modified)
    } {
        return not_modified_response(entry, now, Outcome::Hit);
    }
    with_body(method, entry, entry.hit_headers(entry.age(now)))
}

/// An entry served for any other outcome (a STALE copy, a MISS that just
/// filled it, a coalesced or L2 hit), honouring the client's validators
/// too.
pub fn from_entry(
    metrics: &Metrics,
    method: &Method,
    req_headers: &HeaderMap,
    entry: &Entry,
    now: Instant,
    outcome: Outcome,
) -> Response<ProxyBody> {
    metrics.count(outcome);
    if has_conditionals(req_headers) && {
        let (etag, last_modified) = entry.validators();
        not_modified(req_headers, etag, last_modified)
    } {
        return not_modified_response(entry, now, outcome);
    }
    let headers = entry.labelled_headers(outcome, entry.age(now));
    with_body(method, entry, headers)
}

/// The entry's status and body (none for HEAD) under `headers`.
fn with_body(method: &Method, entry: &Entry, mut headers: HeaderMap) -> Response<ProxyBody> {
    let body = if method == Method::HEAD {
        // The length a GET would get (RFC 9110 §9.3.2), which hyper writes
        // from the body for a GET and an entry does not store.
        if !matches!(entry.status.as_u16(), 100..=199 | 204 | 304) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(entry.body_len()));
        }
        ProxyBody::empty()
    } else {
        ProxyBody::full(entry.body())
    };
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = entry.status;
    parts.headers = headers;
    Response::from_parts(parts, body)
}

/// One pass over the request's fields, cheaper than two hashed lookups
/// for the handful a request carries.
fn has_conditionals(h: &HeaderMap) -> bool {
    h.keys()
        .any(|n| n == http::header::IF_NONE_MATCH || n == http::header::IF_MODIFIED_SINCE)
}

/// RFC 9110 §15.4.5: a 304 carries the fields a 200 would have that help
/// the client update its copy
/// ([`NOT_MODIFIED_FIELDS`](crate::cache::entry::NOT_MODIFIED_FIELDS)), and
/// no body.
fn not_modified_response(entry: &Entry, now: Instant, outcome: Outcome) -> Response<ProxyBody> {
    let mut headers = HeaderMap::with_capacity(10);
    for (name, v) in entry.not_modified_fields() {
        headers.append(name.clone(), v.clone());
    }
    headers.insert(AGE, age_value(entry.age(now)));
    outcome.write(&mut headers);
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    *resp.headers_mut() = headers;
    resp
}

/// The headers stored with an entry and sent on a MISS: the upstream's,
/// without hop-by-hop fields, plus `Via`.
pub fn clean_upstream_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    append_via(headers);
}

/// Labels and counts an answer that did not come from an entry: the
/// upstream's, or one of this cache's refusals.
pub fn label(metrics: &Metrics, headers: &mut HeaderMap, outcome: Outcome) {
    metrics.count(outcome);
    outcome.write(headers);
}

/// The JSON answer for a failed upstream with no stale copy to serve,
/// labelled like every other answer: `outcome` is
/// [`Outcome::Failed`] or [`Outcome::BypassFailed`], with `err`'s label.
pub fn upstream_error(
    metrics: &Metrics,
    upstream: &str,
    err: &UpstreamError,
    outcome: Outcome,
) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": err.to_string(), "upstream": upstream });
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = err.status();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    label(metrics, resp.headers_mut(), outcome);
    resp
}
