//! The demo's example page: a live-odds table that subscribes to the
//! sidecar's change hints (SPEC §8) and refetches a game's odds when its
//! hint arrives. Served on its own port, as a site's page would be, so its
//! EventSource is a cross-origin one that `push.allow_origins` admits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::server::{self, HttpLimits};
use crate::shutdown::Signal;

const PAGE: &str = include_str!("page.html");

/// The page with the sidecar's base URL (`http://host:port`) and the
/// stream's path filled in.
pub fn render(sidecar: &str, push_path: &str) -> Bytes {
    Bytes::from(
        PAGE.replace("__SIDECAR__", sidecar)
            .replace("__PUSH_PATH__", push_path),
    )
}

/// Serves the page at `/` until shutdown.
pub async fn serve(listener: TcpListener, page: Bytes, shutdown: Signal) {
    let make_service = move |_peer: SocketAddr| {
        let page = page.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let page = page.clone();
            async move { Ok::<_, Infallible>(answer(&req, page)) }
        })
    };
    server::serve(
        "demo-page",
        listener,
        make_service,
        HttpLimits::default(),
        None,
        shutdown,
        Duration::from_secs(1),
    )
    .await;
}

fn answer(req: &Request<Incoming>, page: Bytes) -> Response<Full<Bytes>> {
    let (status, body, kind) = match req.uri().path() {
        "/" => (StatusCode::OK, page, "text/html; charset=utf-8"),
        _ => (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"not found: the demo page is at /\n"),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_the_sidecar_and_the_stream() {
        let page = render("http://127.0.0.1:8080", "/_oddscache/changes");
        let text = std::str::from_utf8(&page).unwrap();
        assert!(text.contains(r#"const SIDECAR = "http://127.0.0.1:8080";"#));
        assert!(text.contains(r#"const PUSH_PATH = "/_oddscache/changes";"#));
        assert!(!text.contains("__"));
    }
}
