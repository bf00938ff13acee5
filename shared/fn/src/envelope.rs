//! The three event shapes, and the one place where errors become wire responses.

use serde_json::Value;
use thaw_protocol::batch::{is_batch, BatchItem, BatchRequest, BatchResponse};
use thaw_protocol::url_event::{self, UrlEvent, UrlResponse};
use thaw_protocol::ApiErrorBody;

use crate::{FnError, Function, InferenceThread};

/// Handles one Runtime API event of any shape.
///
/// - Raw event: the reply is the response JSON, or a `Diagnostic` (`Err`).
/// - URL event: always a successful invocation whose payload is `{statusCode, headers, body}`;
///   a function error becomes its HTTP status and `{"error": {"type", "message"}}`.
/// - Batch envelope: always successful, with `{"ok"}` or `{"error"}` per item, in order.
pub(crate) async fn dispatch<F: Function>(
    worker: &InferenceThread<F>,
    event: Value,
) -> Result<Value, FnError> {
    if is_batch(&event) {
        return Ok(batch(worker, event).await);
    }
    if url_event::is_url_event(&event) {
        return Ok(url(worker, event).await);
    }
    let request = parse_request::<F>(event)?;
    let result = worker
        .call(vec![request])
        .await
        .pop()
        .unwrap_or_else(|| Err(FnError::invalid_input("no result")));
    result.and_then(to_value)
}

async fn url<F: Function>(worker: &InferenceThread<F>, event: Value) -> Value {
    let response = match url_request::<F>(event) {
        Ok(request) => match worker.call(vec![request]).await.pop() {
            Some(Ok(reply)) => to_value(reply).map(|v| UrlResponse::json(200, &v)),
            Some(Err(e)) => Err(e),
            None => Err(FnError::invalid_input("no result")),
        },
        Err(e) => Err(e),
    };
    let response = response.unwrap_or_else(|e| error_response(&e));
    serde_json::to_value(response).unwrap_or(Value::Null)
}

fn url_request<F: Function>(event: Value) -> Result<F::Request, FnError> {
    let event: UrlEvent = serde_json::from_value(event)
        .map_err(|e| FnError::invalid_input(format!("malformed function URL event: {e}")))?;
    let body = url_event::body_bytes(&event)
        .map_err(|e| FnError::invalid_input(format!("body is not valid base64: {e}")))?;
    serde_json::from_slice(&body)
        .map_err(|e| FnError::invalid_input(format!("request body is not a valid request: {e}")))
}

/// The single mapping from a typed function error to an HTTP response.
fn error_response(e: &FnError) -> UrlResponse {
    let body = ApiErrorBody::new(e.error_type.as_str(), &e.message);
    UrlResponse::json(
        e.error_type.http_status(),
        &serde_json::to_value(body).unwrap_or(Value::Null),
    )
}

async fn batch<F: Function>(worker: &InferenceThread<F>, event: Value) -> Value {
    let items = match serde_json::from_value::<BatchRequest>(event) {
        Ok(b) => b.thaw_batch,
        Err(e) => return serde_json::json!({"thaw_batch": [], "error": e.to_string()}),
    };
    // Parse every item; only the valid ones go to the model, in one call.
    let parsed: Vec<Result<F::Request, FnError>> =
        items.into_iter().map(parse_request::<F>).collect();
    let mut slots: Vec<Option<BatchItem>> = Vec::with_capacity(parsed.len());
    let mut valid = Vec::new();
    for item in parsed {
        match item {
            Ok(request) => {
                valid.push(request);
                slots.push(None);
            }
            Err(e) => slots.push(Some(BatchItem::Error(e.to_diagnostic()))),
        }
    }
    let mut results = worker.call(valid).await.into_iter();
    let out = slots
        .into_iter()
        .map(|slot| {
            slot.unwrap_or_else(|| match results.next() {
                Some(Ok(reply)) => match to_value(reply) {
                    Ok(v) => BatchItem::Ok(v),
                    Err(e) => BatchItem::Error(e.to_diagnostic()),
                },
                Some(Err(e)) => BatchItem::Error(e.to_diagnostic()),
                None => BatchItem::Error(FnError::invalid_input("no result").to_diagnostic()),
            })
        })
        .collect();
    serde_json::to_value(BatchResponse { thaw_batch: out }).unwrap_or(Value::Null)
}

fn parse_request<F: Function>(event: Value) -> Result<F::Request, FnError> {
    serde_json::from_value(event)
        .map_err(|e| FnError::invalid_input(format!("invalid request: {e}")))
}

fn to_value<T: serde::Serialize>(reply: T) -> Result<Value, FnError> {
    serde_json::to_value(reply)
        .map_err(|e| FnError::new(thaw_protocol::ErrorType::Internal, e.to_string()))
}
