//! `/v1` durable calls: spawn, long-poll get, cancel.
//!
//! - `POST /v1/functions/{f}/spawn`: the body is the function's input, which must be JSON
//!   (valid UTF-8 included, or 400). It is committed before the 202 `{"call_id"}`. An
//!   `Idempotency-Key` header returns the call that key first created (with
//!   `Idempotent-Replayed: true`), across restarts too, if the input is the same; another
//!   input under a used key is 422 `IdempotencyKeyReused`. With `max_queue` calls of the
//!   function already queued, 429 `QueueFull` with `Retry-After`.
//! - `GET /v1/calls/{id}?wait=S`: the call's state; with `wait`, holds the request until
//!   the call is finished or `S` seconds (at most 60; more is 60) pass, woken by the
//!   commit itself.
//!   A call whose result outlived `result_ttl` answers 410 `CallExpired`.
//! - `DELETE /v1/calls/{id}`: cancels a queued call, which then never runs. A running or
//!   finished call answers 409 with its state.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{pool, read_body, ApiError, ApiPath, ApiQuery, Shared};
use crate::calls::store::CallRecord;
use crate::calls::{now_ms, CallKind, CallStatus};

/// The longest long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The longest idempotency key.
const MAX_KEY: usize = 255;

/// `?wait=SECONDS` (fractions allowed).
#[derive(Debug, Deserialize)]
pub(super) struct WaitQuery {
    wait: Option<f64>,
}

/// The `wait` of a query, bounded by [`MAX_WAIT`]: clamped before it becomes a
/// `Duration`, since `Duration::from_secs_f64` panics past `u64::MAX` seconds (`1e20`).
pub(super) fn wait_of(wait: Option<f64>) -> Duration {
    match wait {
        Some(s) if s > 0.0 => Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64())),
        // Negative, zero or NaN (a query cannot spell NaN, but a float can hold it).
        _ => Duration::ZERO,
    }
}

pub(super) async fn spawn(
    State(rt): State<Shared>,
    ApiPath(function): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    pool(&rt, &function)?;
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_KEY => Some(k.to_owned()),
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"
            )))
        }
    };
    let body = read_body(body).await?;
    let input = if body.is_empty() {
        axum::body::Bytes::from_static(b"{}")
    } else {
        body
    };
    if let Err(e) = crate::calls::input::validate_json(&input) {
        return Err(ApiError::BadRequest(format!(
            "request body is not JSON: {e}"
        )));
    }
    let spawned = rt
        .store
        .spawn(&function, CallKind::Spawn, input, key)
        .await?;
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(json!({"call_id": spawned.call_id})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/calls/{}", spawned.call_id)) {
        resp.headers_mut().insert("location", v);
    }
    if spawned.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

fn expired(record: &CallRecord) -> bool {
    record.expired || record.expires_ms.is_some_and(|t| t <= now_ms())
}

fn call_response(record: &CallRecord) -> Result<Response, ApiError> {
    if expired(record) {
        return Err(ApiError::CallExpired(record.call_id.clone()));
    }
    Ok(Json(record).into_response())
}

pub(super) async fn get(
    State(rt): State<Shared>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Response, ApiError> {
    let wait = wait_of(q.wait);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before the first read, so a finish between the read and the wait wakes us.
    let mut watch = (!wait.is_zero()).then(|| rt.store.signals().watch_call(&id));
    let mut closing = rt.closing_signal();
    loop {
        let record = rt
            .store
            .get(&id)
            .await?
            .ok_or_else(|| ApiError::CallNotFound(id.clone()))?;
        let Some(w) = watch.as_mut() else {
            return call_response(&record);
        };
        if record.status.is_terminal()
            || tokio::time::Instant::now() >= deadline
            || *closing.borrow()
        {
            return call_response(&record);
        }
        tokio::select! {
            () = w.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
            _ = closing.changed() => {}
        }
    }
}

pub(super) async fn cancel(
    State(rt): State<Shared>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let record = rt
        .store
        .cancel(&id)
        .await?
        .ok_or_else(|| ApiError::CallNotFound(id.clone()))?;
    match record.status {
        CallStatus::Cancelled => call_response(&record),
        CallStatus::Running => Err(ApiError::CallRunning(id)),
        status => Err(ApiError::CallFinished {
            id,
            status: status.as_str(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_or_odd_wait_is_clamped_never_a_panic() {
        assert_eq!(wait_of(Some(1e20)), MAX_WAIT);
        assert_eq!(wait_of(Some(f64::INFINITY)), MAX_WAIT);
        assert_eq!(wait_of(Some(f64::MAX)), MAX_WAIT);
        assert_eq!(wait_of(Some(f64::NAN)), Duration::ZERO);
        assert_eq!(wait_of(Some(-1e20)), Duration::ZERO);
        assert_eq!(wait_of(Some(0.25)), Duration::from_millis(250));
        assert_eq!(wait_of(None), Duration::ZERO);
    }
}
