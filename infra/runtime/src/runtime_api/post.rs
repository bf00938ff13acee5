//! `POST .../invocation/{id}/response`, `.../{id}/error` and `/runtime/init/error`: what
//! an instance posts to end an invocation, read under the invocation's size limit, and
//! the error documents of every runtime normalised into thaw's [`Diagnostic`].
//!
//! A response posted in streaming mode is [`super::stream`]'s.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use thaw_protocol::runtime_api::header;
use thaw_protocol::{Diagnostic, ErrorType};

use super::{
    accepted, finish, limit_of, stream, unknown_id, Lifecycle, Outcome, Refused, Shared, MAX_DRAIN,
    MAX_RESPONSE,
};

/// The `errorType` `lambda_runtime` reports for an event it could not deserialize into
/// the handler's request type (its Rust type name, behind a reference).
const DESERIALIZE_ERROR: &str = "lambda_runtime::deserializer::DeserializeError";

/// What the instance posted, read up to the invocation's limit.
enum Posted {
    Body(Bytes),
    /// Over the limit: the rest was discarded (`drained`) or the post was abandoned.
    TooLarge {
        drained: bool,
    },
    /// The connection failed mid-body.
    Broken,
}

/// Reads a posted body up to `limit`. Past the limit, `on_too_large` runs at once (the
/// caller is answered before the rest arrives), then the rest is discarded up to
/// [`MAX_DRAIN`].
async fn read_posted(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    on_too_large: impl FnOnce(),
) -> Posted {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut kept = BytesMut::new();
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let mut on_too_large = Some(on_too_large);
    if over {
        if let Some(f) = on_too_large.take() {
            f();
        }
    }
    let mut seen: usize = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Posted::Broken;
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: nothing of ours
        };
        seen = seen.saturating_add(data.len());
        if !over && seen > limit {
            over = true;
            kept = BytesMut::new();
            if let Some(f) = on_too_large.take() {
                f();
            }
        }
        if over {
            if seen > limit.saturating_add(MAX_DRAIN) {
                return Posted::TooLarge { drained: false };
            }
        } else {
            kept.extend_from_slice(&data);
        }
    }
    if over {
        Posted::TooLarge { drained: true }
    } else {
        Posted::Body(kept.freeze())
    }
}

/// Completes invocation `id` from what was posted for it: `outcome` builds its outcome
/// from a body within the limit.
async fn complete(
    shared: &Shared,
    id: &str,
    headers: &HeaderMap,
    body: Body,
    outcome: impl FnOnce(Bytes) -> Outcome,
) -> Response {
    // Read (or drain) the body even for an unknown id: a connection left with an unread
    // body is closed, and the runtime's worker on it with it.
    let limit = limit_of(shared, id);
    let refuse = || {
        finish(shared, id, Err(Refused::TooLarge { limit }));
    };
    match read_posted(headers, body, limit, refuse).await {
        Posted::Body(bytes) => match finish(shared, id, Ok(outcome(bytes))) {
            true => accepted(),
            false => unknown_id(),
        },
        Posted::TooLarge { drained } => too_large(shared, id, limit, drained),
        // The instance went away mid-post; its exit fails the call.
        Posted::Broken => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The instance's answer to a post over `limit`: `413`, and when the rest of the post
/// was not drained, a closed connection and the instance marked unusable.
pub(super) fn too_large(shared: &Shared, id: &str, limit: usize, drained: bool) -> Response {
    tracing::warn!(
        request_id = id,
        limit,
        "instance posted a response over the limit"
    );
    let mut resp = (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"errorType\":\"RequestEntityTooLarge\",\"errorMessage\":\"response is larger than {limit} bytes\"}}"
        ),
    )
        .into_response();
    if !drained {
        shared.lifecycle.send_replace(Lifecycle::Unusable(format!(
            "posted a reply of more than {} bytes",
            limit + MAX_DRAIN
        )));
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    resp
}

pub(super) async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if stream::is_streaming(&headers) {
        return stream::receive(&shared, &id, &headers, body).await;
    }
    complete(&shared, &id, &headers, body, Outcome::Response).await
}

/// An error document as runtimes post it: every field optional, and `stackTrace` a list
/// of frames (awslambdaric) or one string (some Node runtimes).
#[derive(Debug, Deserialize)]
struct ErrorDoc {
    #[serde(rename = "errorType", default)]
    error_type: String,
    #[serde(rename = "errorMessage", default)]
    error_message: String,
    #[serde(rename = "stackTrace", default)]
    stack_trace: Option<StackTrace>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StackTrace {
    Frames(Vec<String>),
    Text(String),
    Other(serde::de::IgnoredAny),
}

/// Frames kept of a stack trace, at most: what a caller reads, not a memory sink.
const MAX_FRAMES: usize = 256;

fn diagnostic(headers: &HeaderMap, body: &[u8]) -> Diagnostic {
    let header_type = headers
        .get(header::FUNCTION_ERROR_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Unhandled");
    diagnostic_of(header_type, body)
}

/// An error document's diagnostic, `error_type` where the document names none (or is
/// not a document at all: then its text is the message).
pub(super) fn diagnostic_of(error_type: &str, body: &[u8]) -> Diagnostic {
    let doc: ErrorDoc = serde_json::from_slice(body).unwrap_or(ErrorDoc {
        error_type: String::new(),
        error_message: String::from_utf8_lossy(body).into_owned(),
        stack_trace: None,
    });
    let stack_trace = match doc.stack_trace {
        Some(StackTrace::Frames(frames)) => frames.into_iter().take(MAX_FRAMES).collect(),
        Some(StackTrace::Text(text)) => text.lines().take(MAX_FRAMES).map(str::to_owned).collect(),
        Some(StackTrace::Other(_)) | None => Vec::new(),
    };
    normalised(Diagnostic {
        error_type: if doc.error_type.is_empty() {
            error_type.to_owned()
        } else {
            doc.error_type
        },
        error_message: doc.error_message,
        stack_trace,
    })
}

/// The one mapping of what runtimes report to thaw's typed errors: an event the runtime
/// could not deserialize is the caller's [`ErrorType::InvalidInput`].
pub(super) fn normalised(mut d: Diagnostic) -> Diagnostic {
    if d.error_type.trim_start_matches('&') == DESERIALIZE_ERROR {
        d.error_type = ErrorType::InvalidInput.as_str().to_owned();
        d.error_message = format!("the function cannot read this input: {}", d.error_message);
    }
    d
}

pub(super) async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let doc_headers = headers.clone();
    complete(&shared, &id, &headers, body, move |b| {
        Outcome::Error(diagnostic(&doc_headers, &b))
    })
    .await
}

pub(super) async fn init_error(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_posted(&headers, body, MAX_RESPONSE, || {}).await {
        Posted::Body(b) => b,
        // An oversized init error still is one; its text is not worth the memory.
        Posted::TooLarge { .. } | Posted::Broken => {
            Bytes::from_static(b"(init error document too large or cut off)")
        }
    };
    let _ = shared
        .lifecycle
        .send(Lifecycle::InitFailed(diagnostic(&headers, &body)));
    accepted()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deserialize_error_is_invalid_input_and_other_types_are_kept() {
        let d = normalised(Diagnostic::new(
            "&lambda_runtime::deserializer::DeserializeError",
            "failed to deserialize the incoming data",
        ));
        assert_eq!(d.error_type, "InvalidInput");
        assert!(d.error_message.contains("failed to deserialize"), "{d:?}");
        let kept = normalised(Diagnostic::new("ModelError", "m"));
        assert_eq!(kept.error_type, "ModelError");
    }
}
