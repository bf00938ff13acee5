//! A layer that keeps a keep-alive connection usable when a handler answers without
//! reading the request body.
//!
//! hyper reads an unread body only as far as the bytes already received; if the rest is
//! still in flight it closes the connection after the response. A client that sent its
//! headers and then its body (botocore does) sees its 404 or 401 and then a closed
//! connection: `ConnectionClosedError`. So the body a handler dropped unread is handed
//! back here and read to its end, up to [`DRAIN_LIMIT`] bytes within [`DRAIN_TIME`],
//! before the response goes out. Past either bound the response says
//! `Connection: close`, so the client knows not to reuse the connection.
//!
//! A body still held when the response is ready (a streaming map reads on in its own
//! task) is left alone.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use tokio::sync::oneshot;

/// The most of an unread body read on before answering.
pub const DRAIN_LIMIT: usize = 8 * 1024 * 1024;
/// The longest an unread body is waited for before answering.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Layer: drains what the handler left unread (see the module docs).
pub async fn drain_unread(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let (back, mut returned) = oneshot::channel();
    let body = Body::new(Returned {
        inner: Some(body),
        back: Some(back),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    // Sent: dropped unread. Closed: read to the end. Empty: still held by a task.
    if let Ok(unread) = returned.try_recv() {
        if !drain(unread).await {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Reads `body` to its end within the bounds; whether it got there.
async fn drain(body: Body) -> bool {
    use http_body_util::BodyExt as _;
    let read = async move {
        let mut body = body;
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                total += data.len();
                if total > DRAIN_LIMIT {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, read)
        .await
        .unwrap_or(false)
}

/// A request body that, dropped before its end, sends itself back.
struct Returned {
    inner: Option<Body>,
    back: Option<oneshot::Sender<Body>>,
}

impl HttpBody for Returned {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take()) {
            if !inner.is_end_stream() {
                let _ = back.send(inner);
            }
        }
    }
}
