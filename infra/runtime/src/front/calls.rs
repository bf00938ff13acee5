//! `/v1` durable calls: spawn, long-poll get, cancel.
//!
//! - `POST /v1/functions/{f}/spawn`: the body is the function's input. It is committed
//!   before the 202 `{"call_id"}`. An `Idempotency-Key` header returns the call that key
//!   first created (with `Idempotent-Replayed: true`), across restarts too.
//! - `GET /v1/calls/{id}?wait=S`: the call's state; with `wait`, holds the request until
//!   the call is finished or `S` seconds (at most 60) pass, woken by the commit itself.
//!   A call whose result outlived `result_ttl` answers 410 `CallExpired`.
//! - `DELETE /v1/calls/{id}`: cancels a queued call, which then never runs. A running or
//!   finished call answers 409 with its state.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{error, pool, read_body, store_error, Shared};
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

/// A query string that does not parse: 400, in the platform's error shape.
pub(super) fn bad_query(e: &QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, "BadRequest", e.body_text())
}

/// The `wait` of a query, bounded by [`MAX_WAIT`].
pub(super) fn wait_of(wait: Option<f64>) -> Duration {
    match wait {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s).min(MAX_WAIT),
        _ => Duration::ZERO,
    }
}

pub(super) async fn spawn(
    State(rt): State<Shared>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = pool(&rt, &function) {
        return r;
    }
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_KEY => Some(k.to_owned()),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"),
            )
        }
    };
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let input = if body.is_empty() {
        axum::body::Bytes::from_static(b"{}")
    } else {
        body
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&input) {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("request body is not JSON: {e}"),
        );
    }
    match rt.store.spawn(&function, CallKind::Spawn, input, key).await {
        Ok(spawned) => {
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
            resp
        }
        Err(e) => store_error(&e),
    }
}

fn expired(record: &CallRecord) -> bool {
    record.expired || record.expires_ms.is_some_and(|t| t <= now_ms())
}

fn call_response(status: StatusCode, record: &CallRecord) -> Response {
    if expired(record) {
        return error(
            StatusCode::GONE,
            "CallExpired",
            format!(
                "call {} expired: its result was kept for the function's result_ttl",
                record.call_id
            ),
        );
    }
    (status, Json(record)).into_response()
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "CallNotFound",
        format!("no call {id:?}"),
    )
}

pub(super) async fn get(
    State(rt): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(&e),
    };
    let wait = wait_of(q.wait);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before the first read, so a finish between the read and the wait wakes us.
    let mut watch = (!wait.is_zero()).then(|| rt.store.signals().watch_call(&id));
    let mut closing = rt.closing_signal();
    loop {
        let record = match rt.store.get(&id).await {
            Ok(Some(r)) => r,
            Ok(None) => return not_found(&id),
            Err(e) => return store_error(&e),
        };
        let Some(w) = watch.as_mut() else {
            return call_response(StatusCode::OK, &record);
        };
        if record.status.is_terminal()
            || tokio::time::Instant::now() >= deadline
            || *closing.borrow()
        {
            return call_response(StatusCode::OK, &record);
        }
        tokio::select! {
            () = w.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
            _ = closing.changed() => {}
        }
    }
}

pub(super) async fn cancel(State(rt): State<Shared>, Path(id): Path<String>) -> Response {
    match rt.store.cancel(&id).await {
        Ok(None) => not_found(&id),
        Ok(Some(record)) => match record.status {
            CallStatus::Cancelled => call_response(StatusCode::OK, &record),
            CallStatus::Running => error(
                StatusCode::CONFLICT,
                "CallRunning",
                format!("call {id} is running; only a queued call can be cancelled"),
            ),
            _ => error(
                StatusCode::CONFLICT,
                "CallFinished",
                format!(
                    "call {id} has already finished ({})",
                    record.status.as_str()
                ),
            ),
        },
        Err(e) => store_error(&e),
    }
}
