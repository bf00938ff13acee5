//! The HTTP front of `thaw serve`.
//!
//! | route | what |
//! |---|---|
//! | `ANY /fn/{function}/{path...}` | function URL: a payload-2.0 event in, `{statusCode, headers, body}` out |
//! | `POST /2015-03-31/functions/{function}/invocations` | the AWS Lambda Invoke API |
//! | `POST /v1/functions/{function}/spawn` | a durable call: 202 `{"call_id"}` ([`calls`]) |
//! | `GET`, `DELETE /v1/calls/{id}` | long-poll a call's state, cancel it |
//! | `POST /v1/functions/{function}/map` | fan-out: inputs in, NDJSON results streamed out ([`maps`]) |
//! | `POST /v1/functions/{function}/spawn_map` | a durable map: 202 `{"map_id"}` |
//! | `GET`, `DELETE /v1/maps/{id}` | a map's progress and paged results, cancel it |
//! | `GET /v1/functions` | config and live state of every function |
//! | `GET /v1/functions/{function}/logs?tail=N&since=MS` | captured output |
//! | `GET /healthz`, `GET /metrics` | health, Prometheus |
//!
//! Platform errors are `{"error": {"type", "message"}}`: 400, 401, 404, 413 (over 6 MiB),
//! 429 (queue full, with `Retry-After`), 502 (crash, init failure), 503 (shutting down),
//! 504 (timeout). The Invoke API answers in AWS's shapes instead.

mod calls;
mod maps;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use thaw_protocol::url_event::{HttpContext, RequestContext, UrlEvent, UrlResponse};
use thaw_protocol::ApiErrorBody;

use crate::calls::store::StoreError;
use crate::calls::CallKind;
use crate::pool::{CallError, FunctionPool};
use crate::runtime_api::Outcome;
use crate::Runtime;

/// Largest request body, as on AWS Lambda.
pub const MAX_BODY: usize = 6 * 1024 * 1024;
/// How much of an oversized body is drained before answering 413.
const DRAIN_CAP: usize = 64 * 1024 * 1024;
/// Longest a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

type Shared = Arc<Runtime>;

/// The front's routes.
pub fn router(runtime: Shared) -> Router {
    Router::new()
        .route("/fn/{function}", any(function_url_root))
        .route("/fn/{function}/", any(function_url_root))
        .route("/fn/{function}/{*path}", any(function_url))
        .route(
            "/2015-03-31/functions/{function}/invocations",
            post(invoke_api),
        )
        .route("/v1/functions/{function}/spawn", post(calls::spawn))
        .route("/v1/calls/{id}", get(calls::get).delete(calls::cancel))
        .route("/v1/functions/{function}/map", post(maps::map))
        .route("/v1/functions/{function}/spawn_map", post(maps::spawn_map))
        .route("/v1/maps/{id}", get(maps::get).delete(maps::cancel))
        .route("/v1/functions", get(list_functions))
        .route("/v1/functions/{function}/logs", get(logs))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "NotFound", "no such route") })
        .with_state(runtime)
}

/// The routes of `thaw serve --single <function>`, the container entrypoint on Knative:
/// every path is the function's URL (plain HTTP in, its response out), and `/healthz` is
/// the readiness probe: 200 once an instance has loaded its model, 503 until then (with
/// the init error if it failed).
pub fn single_router(runtime: Shared, function: String) -> Router {
    let f1 = function.clone();
    let f2 = function.clone();
    Router::new()
        .route(
            "/healthz",
            get(move |State(rt): State<Shared>| readiness(rt, function.clone())),
        )
        .route("/metrics", get(metrics))
        .route(
            "/",
            any(move |State(rt): State<Shared>, req: Request| {
                url_call(rt, f1.clone(), String::new(), req)
            }),
        )
        .route(
            "/{*path}",
            any(
                move |State(rt): State<Shared>, Path(path): Path<String>, req: Request| {
                    url_call(rt, f2.clone(), path, req)
                },
            ),
        )
        .with_state(runtime)
}

async fn readiness(rt: Shared, function: String) -> Response {
    let Some(pool) = rt.pools.get(&function) else {
        return error(
            StatusCode::NOT_FOUND,
            "FunctionNotFound",
            format!("no function {function:?}"),
        );
    };
    let state = pool.status();
    if rt.accepting() && state.idle + state.busy > 0 {
        return Json(json!({"status": "ready", "function": function, "state": state}))
            .into_response();
    }
    let message = match &state.init_error {
        Some(e) => format!("{function} failed to initialise: {e}"),
        None => format!("{function} is starting"),
    };
    error(StatusCode::SERVICE_UNAVAILABLE, "NotReady", message)
}

/// A platform error response.
pub fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (status, Json(ApiErrorBody::new(kind, message))).into_response()
}

/// A call-store failure: 503 while thaw stops, else 500.
fn store_error(e: &StoreError) -> Response {
    match e {
        StoreError::Stopped => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ShuttingDown",
            "thaw is shutting down",
        ),
        other => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "StoreError",
            other.to_string(),
        ),
    }
}

fn call_error(e: &CallError) -> Response {
    let status = match e {
        CallError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
        CallError::FunctionCrashed(_)
        | CallError::InitFailed(_)
        | CallError::OutOfMemory { .. }
        | CallError::ResponseTooLarge { .. } => StatusCode::BAD_GATEWAY,
        CallError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        CallError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut resp = error(status, e.kind(), e.to_string());
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    resp
}

// The error is the response itself, returned as is by the handlers.
#[allow(clippy::result_large_err)]
fn pool<'a>(rt: &'a Runtime, name: &str) -> Result<&'a Arc<FunctionPool>, Response> {
    if !rt.accepting() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ShuttingDown",
            "thaw is shutting down",
        ));
    }
    rt.pools.get(name).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "FunctionNotFound",
            format!("no function {name:?}"),
        )
    })
}

/// Reads a request body of at most [`MAX_BODY`] bytes. An oversized body is read on (and
/// discarded) up to [`DRAIN_CAP`] before the 413, so the client finishes sending and reads
/// our answer instead of a connection reset.
async fn read_body(body: Body) -> Result<Bytes, Response> {
    use http_body_util::BodyExt as _;
    let read = async move {
        let mut body = body;
        let mut buf = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("cannot read request body: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                total += data.len();
                if total <= MAX_BODY {
                    buf.extend_from_slice(&data);
                } else if total > DRAIN_CAP {
                    break;
                }
            }
        }
        if total > MAX_BODY {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("request body exceeds {MAX_BODY} bytes"),
            ));
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(result) => result,
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            "request body not received in time",
        )),
    }
}

async fn function_url_root(
    State(rt): State<Shared>,
    Path(function): Path<String>,
    req: Request,
) -> Response {
    url_call(rt, function, String::new(), req).await
}

async fn function_url(
    State(rt): State<Shared>,
    Path((function, path)): Path<(String, String)>,
    req: Request,
) -> Response {
    url_call(rt, function, path, req).await
}

async fn url_call(rt: Shared, function: String, path: String, req: Request) -> Response {
    let pool = match pool(&rt, &function) {
        Ok(p) => Arc::clone(p),
        Err(r) => return r,
    };
    if pool.plan().spec.url.auth == thaw_manifest::UrlAuth::Token {
        let expected = rt.url_token.as_deref().map(|t| format!("Bearer {t}"));
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if expected.is_none() || given != expected.as_deref() {
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing or wrong bearer token",
            );
        }
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let event = url_event(&parts, &path, &body);
    let payload = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
    match pool.invoke(payload).await {
        Ok(Outcome::Response(bytes)) => url_response(&bytes),
        Ok(Outcome::Error(d)) => error(StatusCode::BAD_GATEWAY, &d.error_type, d.error_message),
        Err(e) => call_error(&e),
    }
}

fn url_event(parts: &axum::http::request::Parts, path: &str, body: &[u8]) -> UrlEvent {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == "cookie" {
            cookies.extend(
                value
                    .split(';')
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty()),
            );
            continue;
        }
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query
            .entry(k.to_owned())
            .and_modify(|old| {
                old.push(',');
                old.push_str(v);
            })
            .or_insert_with(|| v.to_owned());
    }
    let raw_path = format!("/{path}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut event = UrlEvent {
        version: "2.0".into(),
        route_key: "$default".into(),
        raw_path: raw_path.clone(),
        raw_query_string: raw_query,
        cookies,
        query_string_parameters: query,
        request_context: RequestContext {
            http: HttpContext {
                method: parts.method.to_string(),
                path: raw_path,
                protocol: format!("{:?}", parts.version),
                source_ip: "127.0.0.1".into(),
                user_agent: headers.get("user-agent").cloned().unwrap_or_default(),
            },
            request_id: crate::runtime_api::new_request_id(),
            route_key: "$default".into(),
            stage: "$default".into(),
            time_epoch: now_ms,
            domain_name: headers.get("host").cloned().unwrap_or_default(),
        },
        headers,
        ..UrlEvent::default()
    };
    event.set_body(body);
    event
}

/// A function's URL response, or, as AWS does for other shapes, its JSON as the body.
fn url_response(bytes: &[u8]) -> Response {
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

/// AWS's error shape: `x-amzn-ErrorType` and `{"Type", "message"}`.
fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut resp = (status, Json(json!({"Type": "User", "message": message}))).into_response();
    if let Ok(v) = HeaderValue::from_str(kind) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

async fn invoke_api(
    State(rt): State<Shared>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !rt.accepting() {
        return aws_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceException",
            "thaw is shutting down",
        );
    }
    let Some(pool) = rt.pools.get(&function).cloned() else {
        return aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: arn:aws:lambda:local:000000000000:function:{function}"),
        );
    };
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let kind = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    let payload = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json",
        );
    }
    match kind {
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        // Durable before the 202, and retried as the manifest says, as on AWS.
        "Event" => match rt
            .store
            .spawn(&function, CallKind::Event, payload, None)
            .await
        {
            Ok(spawned) => {
                let mut resp = StatusCode::ACCEPTED.into_response();
                if let Ok(v) = HeaderValue::from_str(&spawned.call_id) {
                    resp.headers_mut().insert("thaw-call-id", v);
                }
                resp
            }
            Err(e) => aws_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                &e.to_string(),
            ),
        },
        "RequestResponse" => match pool.invoke(payload).await {
            Ok(Outcome::Response(bytes)) => (
                StatusCode::OK,
                [
                    ("content-type", "application/json"),
                    ("x-amz-executed-version", "$LATEST"),
                ],
                bytes,
            )
                .into_response(),
            Ok(Outcome::Error(d)) => function_error(&d.error_type, &d.error_message),
            Err(CallError::QueueFull(_)) => {
                let mut resp = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"Type": "User", "message": "Rate Exceeded.", "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"})),
                )
                    .into_response();
                resp.headers_mut().insert(
                    "x-amzn-errortype",
                    HeaderValue::from_static("TooManyRequestsException"),
                );
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                resp
            }
            Err(CallError::ShuttingDown) => aws_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                "thaw is shutting down",
            ),
            // As on AWS, a crash, timeout or init failure is the function's error.
            Err(e) => function_error(e.kind(), &e.to_string()),
        },
        other => aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("unknown X-Amz-Invocation-Type {other:?}: RequestResponse, Event or DryRun"),
        ),
    }
}

fn function_error(error_type: &str, message: &str) -> Response {
    let mut resp = (
        StatusCode::OK,
        Json(json!({"errorMessage": message, "errorType": error_type})),
    )
        .into_response();
    resp.headers_mut().insert(
        "x-amz-function-error",
        HeaderValue::from_static("Unhandled"),
    );
    resp
}

async fn list_functions(State(rt): State<Shared>) -> Response {
    let durable = rt.store.active_counts().await.unwrap_or_default();
    let functions: Vec<Value> = rt
        .pools
        .iter()
        .map(|(name, pool)| {
            let (queued, running) = durable.get(name).copied().unwrap_or_default();
            json!({
                "name": name,
                "config": redacted(&pool.plan().spec),
                "state": pool.status(),
                "sandbox": pool.sandbox(),
                "durable": {"queued": queued, "running": running},
            })
        })
        .collect();
    Json(json!({"functions": functions})).into_response()
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    tail: Option<usize>,
    since: Option<u64>,
}

async fn logs(
    State(rt): State<Shared>,
    Path(function): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Some(pool) = rt.pools.get(&function) else {
        return error(
            StatusCode::NOT_FOUND,
            "FunctionNotFound",
            format!("no function {function:?}"),
        );
    };
    let since = q.since.unwrap_or(0);
    let lines: Vec<_> = pool
        .logs
        .tail(q.tail.unwrap_or(100).min(2000))
        .into_iter()
        .filter(|l| l.ts_ms > since)
        .collect();
    Json(json!({"lines": lines})).into_response()
}

async fn healthz(State(rt): State<Shared>) -> Response {
    if rt.accepting() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ShuttingDown",
            "thaw is shutting down",
        )
    }
}

async fn metrics(State(rt): State<Shared>) -> Response {
    for (name, pool) in &rt.pools {
        rt.metrics.set_state(name, &pool.status());
    }
    (
        [("content-type", crate::metrics::CONTENT_TYPE)],
        rt.metrics.render(),
    )
        .into_response()
}

/// A function's settings for `/v1/functions`, with `env` values hidden: they are the
/// function's secrets, and this endpoint is readable by anyone who can reach thaw.
fn redacted(spec: &thaw_manifest::FunctionSpec) -> serde_json::Value {
    let mut v = serde_json::to_value(spec).unwrap_or_default();
    if let Some(env) = v.get_mut("env").and_then(serde_json::Value::as_object_mut) {
        for value in env.values_mut() {
            *value = serde_json::Value::String("(set)".into());
        }
    }
    v
}
