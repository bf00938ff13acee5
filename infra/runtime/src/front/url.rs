//! Function URLs: an HTTP request in, a payload-2.0 event to the function
//! ([`thaw_protocol::url_event::build`], AWS's own event type), its `{statusCode, headers,
//! body}` back out as the HTTP response.
//!
//! A function that streams its response (Lambda response streaming, as `lambda_http`'s
//! `run_with_streaming_response` or a `StreamResponse` does) is answered as it produces:
//! its metadata prelude's status, headers and cookies, then a chunked body that carries
//! each chunk when the instance posts it ([`super::streaming`]). An error after the first
//! chunk cuts the body off, so a client never mistakes a broken stream for a whole one.
//!
//! The function and the path it sees are cut from the request's *raw* path, never from
//! axum's decoded captures: `rawPath` must keep `%2F`, and a path that does not decode to
//! UTF-8 is the function's business, not a 400 of ours. Function names need no encoding,
//! so the raw segment is the name.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;
use thaw_protocol::url_event::{self, HttpRequest, Origin, UrlResponse};

use super::streaming::{self, Answer};
use super::{pool, read_body, ApiError, Shared};
use crate::runtime_api::StreamHead;

/// Where function URLs live on the full router.
pub(super) const PREFIX: &str = "/fn/";

/// `/fn/{function}/{rest}` split into the raw function segment and the path the function
/// sees (`/` when there is none).
pub(super) fn split(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix(PREFIX)?;
    Some(match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    })
}

/// `ANY /fn/{function}/...`.
pub(super) async fn prefixed(State(rt): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let (function, path) = split(req.uri().path())
        .map(|(f, p)| (f.to_owned(), p.to_owned()))
        .ok_or(ApiError::RouteNotFound)?;
    call(rt, &function, &path, req).await
}

/// `--single`: every path is `function`'s URL.
pub(super) async fn single(
    rt: Shared,
    function: Arc<str>,
    req: Request,
) -> Result<Response, ApiError> {
    let path = req.uri().path().to_owned();
    call(rt, &function, &path, req).await
}

async fn call(
    rt: Shared,
    function: &str,
    raw_path: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let pool = Arc::clone(pool(&rt, function)?);
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let source_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "127.0.0.1".to_owned(),
            |ConnectInfo(a)| a.ip().to_string(),
        );
    let event = url_event::build(
        &HttpRequest {
            method: &parts.method,
            version: parts.version,
            raw_path,
            raw_query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            body: &body,
        },
        Origin {
            request_id: crate::runtime_api::new_request_id(),
            time_epoch_ms: crate::calls::now_ms(),
            source_ip,
        },
    );
    let payload = serde_json::to_vec(&event)
        .map_err(|e| ApiError::BadRequest(format!("cannot encode the request as an event: {e}")))?;
    match streaming::invoke(pool, Bytes::from(payload)).await? {
        Answer::Whole(Ok(bytes)) => Ok(response(&bytes)),
        Answer::Whole(Err(d)) => Err(ApiError::Function(d)),
        Answer::Streaming(s) => Ok(streamed(&s.head, Body::from_stream(s.body))),
    }
}

/// A streamed answer: the prelude's status, headers and cookies over `body`.
fn streamed(head: &StreamHead, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in &head.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(k.as_str()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    // The body's length is unknown until it ends; a function's own framing headers
    // would contradict the chunked encoding.
    resp.headers_mut()
        .remove(axum::http::header::CONTENT_LENGTH);
    resp.headers_mut()
        .remove(axum::http::header::TRANSFER_ENCODING);
    for c in &head.cookies {
        if let Ok(value) = HeaderValue::from_str(c) {
            resp.headers_mut().append("set-cookie", value);
        }
    }
    resp
}

/// A function's URL response, or, as AWS does for other shapes, its JSON as the body.
fn response(bytes: &[u8]) -> Response {
    let parsed: Option<UrlResponse> = serde_json::from_slice::<Value>(bytes)
        .ok()
        .filter(|v| v.get("statusCode").is_some())
        .and_then(|v| serde_json::from_value(v).ok());
    let Some(r) = parsed else {
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            bytes.to_vec(),
        )
            .into_response();
    };
    let body = if r.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(&r.body)
            .unwrap_or_default()
    } else {
        r.body.into_bytes()
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in &r.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(k.as_str()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
    for c in &r.cookies {
        if let Ok(value) = HeaderValue::from_str(c) {
            resp.headers_mut().append("set-cookie", value);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn the_function_and_its_raw_path_are_cut_from_the_raw_path() {
        assert_eq!(split("/fn/embed"), Some(("embed", "/")));
        assert_eq!(split("/fn/embed/"), Some(("embed", "/")));
        assert_eq!(split("/fn/embed/a%2Fb/c"), Some(("embed", "/a%2Fb/c")));
        assert_eq!(split("/fn/embed/%ff"), Some(("embed", "/%ff")));
        assert_eq!(split("/v1/functions"), None);
    }
}
