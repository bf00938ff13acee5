//! The three event shapes, and the one place where errors become wire responses.
//!
//! Every event is first read into a [`Shape`] and a request (or the reason it is not
//! one); the requests that parsed go to the inference thread together; each result is
//! then written back in its own event's shape. A lone event and a `thaw_batch` envelope
//! take the same path, so an item inside a batch is answered exactly as it would be
//! alone, and one bad item never fails its neighbours.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use lambda_runtime::{FunctionResponse, MetadataPrelude, StreamResponse};
use serde_json::Value;
use thaw_protocol::batch::{is_batch, BatchItem, BatchRequest, BatchResponse};
use thaw_protocol::url_event::{self, UrlEvent, UrlResponse};
use thaw_protocol::ApiErrorBody;

use crate::stream::MidStreamError;
use crate::worker::StreamEnd;
use crate::{FnError, Function, InferenceThread};

/// A streamed response's body: the handler's chunks, then its error if it failed
/// mid-stream.
pub(crate) type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, MidStreamError>> + Send>>;

/// What one event is answered with.
pub(crate) type Reply = FunctionResponse<Value, ChunkStream>;

/// How an event arrived, which decides how its result is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A raw JSON event: the reply is the response JSON, or a `Diagnostic`.
    Raw,
    /// A function URL event: always a successful invocation whose payload is
    /// `{statusCode, headers, body}`; a function error becomes its HTTP status.
    Url,
}

/// Handles one Runtime API event of any shape.
///
/// - Raw event: the reply is the response JSON, or a `Diagnostic` (`Err`).
/// - URL event: a URL response, whatever happened.
/// - Batch envelope: always successful, `{"ok"}` or `{"error"}` per item, in order; an
///   item may itself be a raw or a URL event.
/// - A request that streams: its chunks as a Lambda streaming response, whatever its
///   shape (the platform strips the metadata prelude for a raw event).
pub(crate) async fn dispatch<F: Function>(
    worker: &InferenceThread<F>,
    event: Value,
) -> Result<Reply, FnError> {
    if is_batch(&event) {
        return Ok(FunctionResponse::BufferedResponse(
            batch(worker, event).await,
        ));
    }
    let (shape, request) = read::<F>(event);
    let request = match request {
        Ok(r) if F::streams(&r) => return stream(worker, shape, r).await,
        other => other,
    };
    let mut written = answer(worker, vec![(shape, request)]).await;
    written
        .pop()
        .unwrap_or_else(|| Err(FnError::invalid_input("no result")))
        .map(FunctionResponse::BufferedResponse)
}

/// Runs a streaming request. Until its first chunk, it may still be answered in one
/// piece: an error then is the request's error in its event's shape.
async fn stream<F: Function>(
    worker: &InferenceThread<F>,
    shape: Shape,
    request: F::Request,
) -> Result<Reply, FnError> {
    let (mut chunks, end) = worker.stream(request).await;
    let first = chunks.recv().await;
    if first.is_none() {
        if let Err(e) = ended(end).await {
            return write(shape, Err(e)).map(FunctionResponse::BufferedResponse);
        }
        return Ok(streaming::<F>(Box::pin(futures_util::stream::empty())));
    }
    let body = futures_util::stream::unfold(
        (first, Some(chunks), Some(end)),
        |(first, chunks, end)| async move {
            if let Some(chunk) = first {
                return Some((Ok(chunk), (None, chunks, end)));
            }
            let mut chunks = chunks?;
            if let Some(chunk) = chunks.recv().await {
                return Some((Ok(chunk), (None, Some(chunks), end)));
            }
            // The handler returned: its error, if any, ends the stream.
            match ended(end?).await {
                Ok(()) => None,
                Err(e) => Some((Err(MidStreamError(e)), (None, None, None))),
            }
        },
    );
    Ok(streaming::<F>(Box::pin(body)))
}

async fn ended(end: StreamEnd) -> Result<(), FnError> {
    end.await.unwrap_or_else(|_| {
        Err(FnError::new(
            thaw_protocol::ErrorType::Internal,
            "inference thread stopped",
        ))
    })
}

/// A `200` streaming response of the function's stream content type.
fn streaming<F: Function>(body: ChunkStream) -> Reply {
    let mut metadata_prelude = MetadataPrelude {
        status_code: http::StatusCode::OK,
        ..MetadataPrelude::default()
    };
    if let Ok(v) = http::HeaderValue::from_str(F::STREAM_CONTENT_TYPE) {
        metadata_prelude
            .headers
            .insert(http::header::CONTENT_TYPE, v);
    }
    FunctionResponse::StreamingResponse(StreamResponse {
        metadata_prelude,
        stream: body,
    })
}

async fn batch<F: Function>(worker: &InferenceThread<F>, event: Value) -> Value {
    let items = match serde_json::from_value::<BatchRequest>(event) {
        Ok(b) => b.thaw_batch,
        Err(e) => return serde_json::json!({"thaw_batch": [], "error": e.to_string()}),
    };
    let read: Vec<_> = items.into_iter().map(read::<F>).collect();
    let out = answer(worker, read)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(v) => BatchItem::Ok(v),
            Err(e) => BatchItem::Error(e.to_diagnostic()),
        })
        .collect();
    serde_json::to_value(BatchResponse { thaw_batch: out }).unwrap_or(Value::Null)
}

/// Sends the requests that parsed to the model in one call and writes every result in
/// its event's shape, in order.
async fn answer<F: Function>(
    worker: &InferenceThread<F>,
    read: Vec<(Shape, Result<F::Request, FnError>)>,
) -> Vec<Result<Value, FnError>> {
    let mut shapes = Vec::with_capacity(read.len());
    let mut early = Vec::with_capacity(read.len());
    let mut valid = Vec::new();
    for (shape, request) in read {
        shapes.push(shape);
        match request {
            Ok(r) => {
                valid.push(r);
                early.push(None);
            }
            Err(e) => early.push(Some(e)),
        }
    }
    let mut results = if valid.is_empty() {
        Vec::new().into_iter()
    } else {
        worker.call(valid).await.into_iter()
    };
    shapes
        .into_iter()
        .zip(early)
        .map(|(shape, early)| {
            let result = match early {
                Some(e) => Err(e),
                None => results
                    .next()
                    .unwrap_or_else(|| Err(FnError::invalid_input("no result")))
                    .and_then(to_value),
            };
            write(shape, result)
        })
        .collect()
}

/// An event's shape and its request, or why it is not a valid one.
fn read<F: Function>(event: Value) -> (Shape, Result<F::Request, FnError>) {
    if url_event::is_url_event(&event) {
        return (Shape::Url, url_request::<F>(event));
    }
    let request = serde_json::from_value(event)
        .map_err(|e| FnError::invalid_input(format!("invalid request: {e}")));
    (Shape::Raw, request)
}

fn url_request<F: Function>(event: Value) -> Result<F::Request, FnError> {
    let event: UrlEvent = serde_json::from_value(event)
        .map_err(|e| FnError::invalid_input(format!("malformed function URL event: {e}")))?;
    let body = url_event::body_bytes(&event)
        .map_err(|e| FnError::invalid_input(format!("body is not valid base64: {e}")))?;
    serde_json::from_slice(&body)
        .map_err(|e| FnError::invalid_input(format!("request body is not a valid request: {e}")))
}

/// The single mapping from a result to what its event's shape answers.
fn write(shape: Shape, result: Result<Value, FnError>) -> Result<Value, FnError> {
    match shape {
        Shape::Raw => result,
        Shape::Url => {
            let response = match result {
                Ok(v) => UrlResponse::json(200, &v),
                Err(e) => {
                    let body = ApiErrorBody::new(e.error_type.as_str(), &e.message);
                    UrlResponse::json(
                        e.error_type.http_status(),
                        &serde_json::to_value(body).unwrap_or(Value::Null),
                    )
                }
            };
            to_value(response)
        }
    }
}

fn to_value<T: serde::Serialize>(reply: T) -> Result<Value, FnError> {
    serde_json::to_value(reply)
        .map_err(|e| FnError::new(thaw_protocol::ErrorType::Internal, e.to_string()))
}
