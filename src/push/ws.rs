//! The change stream over a WebSocket (RFC 6455, framing by tungstenite on
//! hyper's upgrade): the same hints as text messages, a ping at each
//! heartbeat. Clients have nothing to say: what they send is read (so
//! pings are answered and a close is seen) and dropped, and a message over
//! 4 KiB closes the connection.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{
    HeaderMap, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::{empty, Body, Next, Replay, Stream};

/// A client whose socket takes no message for this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the request asks for a WebSocket (`Upgrade: websocket`).
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The handshake's other fields (RFC 6455 §4.2.1), for a 400 naming the
/// first one wrong.
pub(super) fn check(headers: &HeaderMap) -> Result<(), &'static str> {
    let upgrade_token = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !upgrade_token {
        return Err("a WebSocket handshake needs Connection: Upgrade");
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("only WebSocket version 13 is spoken (Sec-WebSocket-Version: 13)");
    }
    match headers.get(SEC_WEBSOCKET_KEY) {
        // 16 random bytes in base64.
        Some(key) if key.len() == 24 => Ok(()),
        _ => Err("a WebSocket handshake needs a Sec-WebSocket-Key"),
    }
}

/// Answers 101 and serves the stream on the upgraded connection.
pub(super) fn upgrade(
    mut req: Request<Incoming>,
    stream: Stream,
    backlog: Option<Replay>,
) -> Response<Body> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return super::error(StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0)
                    .max_write_buffer_size(64 << 10)
                    .max_message_size(Some(4096))
                    .max_frame_size(Some(4096));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                serve(ws, stream, backlog).await;
            }
            Err(e) => tracing::debug!(error = %e, "change stream upgrade failed"),
        }
    });
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

async fn serve<S>(mut ws: WebSocketStream<S>, mut stream: Stream, backlog: Option<Replay>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let first: Vec<Message> = match backlog {
        Some(Replay::Missed(hints)) => {
            stream.slot.metrics.messages.inc_by(hints.len() as u64);
            hints.iter().map(|h| Message::Text(h.ws.clone())).collect()
        }
        Some(Replay::Gone(resync)) => vec![Message::Text(resync.ws.clone())],
        None => Vec::new(),
    };
    for msg in first {
        if !send(&mut ws, msg).await {
            return;
        }
    }
    loop {
        let msg = tokio::select! {
            next = stream.next() => match next {
                Next::Hint(h) => Message::Text(h.ws.clone()),
                Next::Heartbeat => Message::Ping(bytes::Bytes::new()),
                Next::Resync(resync) => Message::Text(resync.ws.clone()),
                Next::Lagged(_) => {
                    close(&mut ws, CloseCode::Policy, "fell behind; reconnect with last_event_id").await;
                    return;
                }
                Next::End => {
                    close(&mut ws, CloseCode::Away, "shutting down").await;
                    return;
                }
            },
            incoming = ws.next() => match incoming {
                // Pings are answered inside tungstenite; the rest is dropped.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
        };
        if !send(&mut ws, msg).await {
            return;
        }
    }
}

/// False when the client is gone or too slow to take a message.
async fn send<S>(ws: &mut WebSocketStream<S>, msg: Message) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(msg)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!(
                "change stream client took no message for {SEND_TIMEOUT:?}; dropping it"
            );
            false
        }
    }
}

async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &'static str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::headers;

    #[test]
    fn a_handshake_needs_its_fields() {
        let good = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert!(is_upgrade(&headers(&good)));
        assert_eq!(check(&headers(&good)), Ok(()));
        for (i, says) in [
            (1, "Connection"),
            (2, "version 13"),
            (3, "Sec-WebSocket-Key"),
        ] {
            let mut fields = good.to_vec();
            fields.remove(i);
            assert!(check(&headers(&fields)).unwrap_err().contains(says));
        }
        assert!(!is_upgrade(&headers(&[("upgrade", "h2c")])));
        // RFC 6455 §1.3's example.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
