//! The response body type of the proxy port.
//!
//! An enum rather than a boxed trait object, so a hit allocates nothing for
//! its body: it is a `Bytes` clone of the stored entry.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// A body held whole: a cached entry, a buffered fill, an error.
        Full { data: Option<Bytes> },
        /// Streams from the upstream, after an optional prefix that was
        /// read while deciding whether the body fits in the cache.
        Stream { prefix: Option<Bytes>, #[pin] rest: Incoming },
        /// A change-hint stream or its refusal (SPEC §8).
        Push { #[pin] body: crate::push::Body },
    }
}

impl ProxyBody {
    pub fn full(data: impl Into<Bytes>) -> ProxyBody {
        let data: Bytes = data.into();
        ProxyBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full { data: None }
    }

    pub fn push(body: crate::push::Body) -> ProxyBody {
        ProxyBody::Push { body }
    }

    pub fn stream(prefix: Option<Bytes>, rest: Incoming) -> ProxyBody {
        ProxyBody::Stream {
            prefix: prefix.filter(|p| !p.is_empty()),
            rest,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Stream { prefix, rest } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                rest.poll_frame(cx).map_err(Into::into)
            }
            ProxyBodyProj::Push { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data } => data.is_none(),
            ProxyBody::Stream { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            ProxyBody::Push { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Stream { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            ProxyBody::Push { body } => body.size_hint(),
        }
    }
}
