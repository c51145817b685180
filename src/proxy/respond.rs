//! Building client responses: hits from prebuilt entries, 304s, STALE
//! copies, MISS/BYPASS answers from the upstream's head, and the JSON
//! error answer when the upstream fails.

use std::time::Instant;

use http::header::{HeaderValue, AGE, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Response, StatusCode};

use super::body::ProxyBody;
use super::upstream::{append_via, UpstreamError};
use crate::cache::entry::age_value;
use crate::cache::outcome::{cache_status_hit, CacheStatus, Fwd, XCache, CACHE_STATUS, X_CACHE};
use crate::cache::policy::{not_modified, strip_hop_by_hop};
use crate::cache::Entry;

/// A fresh hit: prebuilt headers, one `Age` and a `Bytes` clone. Answers
/// 304 when the client's validators match.
pub fn hit(
    method: &Method,
    req_headers: &HeaderMap,
    entry: &Entry,
    now: Instant,
) -> Response<ProxyBody> {
    if has_conditionals(req_headers) && {
        let (etag, last_modified) = entry.validators();
        not_modified(req_headers, etag, last_modified)
    } {
        return not_modified_response(entry, now, XCache::Hit, None);
    }
    with_body(method, entry, entry.hit_headers(entry.age(now)))
}

/// An entry served with a non-HIT status line (STALE, or a MISS that just
/// filled it), honouring the client's validators too.
pub fn from_entry(
    method: &Method,
    req_headers: &HeaderMap,
    entry: &Entry,
    now: Instant,
    x_cache: XCache,
    status: CacheStatus,
) -> Response<ProxyBody> {
    if has_conditionals(req_headers) && {
        let (etag, last_modified) = entry.validators();
        not_modified(req_headers, etag, last_modified)
    } {
        return not_modified_response(entry, now, x_cache, Some(status));
    }
    let headers = entry.labelled_headers(x_cache.value(), status.to_header_value(), entry.age(now));
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
fn not_modified_response(
    entry: &Entry,
    now: Instant,
    x_cache: XCache,
    status: Option<CacheStatus>,
) -> Response<ProxyBody> {
    let mut headers = HeaderMap::with_capacity(10);
    for (name, v) in entry.not_modified_fields() {
        headers.append(name.clone(), v.clone());
    }
    headers.insert(AGE, age_value(entry.age(now)));
    headers.insert(X_CACHE.clone(), x_cache.value());
    let cs = status.map_or_else(cache_status_hit, |s| s.to_header_value());
    headers.insert(CACHE_STATUS.clone(), cs);
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

/// Labels an answer that came straight from the upstream.
pub fn label(headers: &mut HeaderMap, x_cache: XCache, status: CacheStatus) {
    headers.insert(X_CACHE.clone(), x_cache.value());
    headers.insert(CACHE_STATUS.clone(), status.to_header_value());
}

/// The JSON answer for a failed upstream with no stale copy to serve,
/// labelled like every other answer.
pub fn upstream_error(
    upstream: &str,
    err: &UpstreamError,
    x_cache: XCache,
    fwd: Fwd,
) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": err.to_string(), "upstream": upstream });
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = err.status();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let status = CacheStatus {
        fwd: Some(fwd),
        detail: Some(err.label()),
        ..CacheStatus::default()
    };
    label(resp.headers_mut(), x_cache, status);
    resp
}
