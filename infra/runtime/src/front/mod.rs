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
//! 504 (timeout). The Invoke API answers in AWS's shapes instead. Both are mapped in one
//! place each, [`ApiError`] and [`AwsError`].

mod calls;
mod error;
mod maps;

pub use error::{ApiError, ApiPath, ApiQuery, AwsError, BodyError};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use thaw_protocol::url_event::{HttpContext, RequestContext, UrlEvent, UrlResponse};

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
        .fallback(|| async { ApiError::RouteNotFound })
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
                move |State(rt): State<Shared>, ApiPath(path): ApiPath<String>, req: Request| {
                    url_call(rt, f2.clone(), path, req)
                },
            ),
        )
        .with_state(runtime)
}

async fn readiness(rt: Shared, function: String) -> Result<Response, ApiError> {
    let pool = rt
        .pools
        .get(&function)
        .ok_or_else(|| ApiError::FunctionNotFound(function.clone()))?;
    let state = pool.status();
    if rt.accepting() && state.idle + state.busy > 0 {
        return Ok(
            Json(json!({"status": "ready", "function": function, "state": state}))
                .into_response(),
        );
    }
    Err(ApiError::NotReady(match &state.init_error {
        Some(e) => format!("{function} failed to initialise: {e}"),
        None => format!("{function} is starting"),
    }))
}

/// The pool of a function that exists, while thaw accepts calls.
fn pool<'a>(rt: &'a Runtime, name: &str) -> Result<&'a Arc<FunctionPool>, ApiError> {
    if !rt.accepting() {
        return Err(ApiError::ShuttingDown);
    }
    rt.pools
        .get(name)
        .ok_or_else(|| ApiError::FunctionNotFound(name.to_owned()))
}

/// Reads a request body of at most [`MAX_BODY`] bytes. An oversized body is read on (and
/// discarded) up to [`DRAIN_CAP`] before the 413, so the client finishes sending and reads
/// our answer instead of a connection reset.
async fn read_body(body: Body) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt as _;
    let read = async move {
        let mut body = body;
        let mut buf = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
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
            return Err(BodyError::TooLarge(MAX_BODY));
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(result) => result,
        Err(_) => Err(BodyError::Timeout),
    }
}

async fn function_url_root(
    State(rt): State<Shared>,
    ApiPath(function): ApiPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    url_call(rt, function, String::new(), req).await
}

async fn function_url(
    State(rt): State<Shared>,
    ApiPath((function, path)): ApiPath<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    url_call(rt, function, path, req).await
}

async fn url_call(
    rt: Shared,
    function: String,
    path: String,
    req: Request,
) -> Result<Response, ApiError> {
    let pool = Arc::clone(pool(&rt, &function)?);
    if pool.plan().spec.url.auth == thaw_manifest::UrlAuth::Token {
        let expected = rt.url_token.as_deref().map(|t| format!("Bearer {t}"));
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if expected.is_none() || given != expected.as_deref() {
            return Err(ApiError::Unauthorized);
        }
    }
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let event = url_event(&parts, &path, &body);
    let payload = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
    match pool.invoke(payload).await? {
        Outcome::Response(bytes) => Ok(url_response(&bytes)),
        Outcome::Error(d) => Err(ApiError::Function(d)),
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

async fn invoke_api(
    State(rt): State<Shared>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AwsError> {
    if !rt.accepting() {
        return Err(AwsError::Service("thaw is shutting down".into()));
    }
    let pool = rt
        .pools
        .get(&function)
        .cloned()
        .ok_or(AwsError::ResourceNotFound(function.clone()))?;
    let body = read_body(body).await?;
    let kind = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    let payload = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    if crate::calls::input::validate_json(&payload).is_err() {
        return Err(AwsError::InvalidRequestContent);
    }
    match kind {
        "DryRun" => Ok(StatusCode::NO_CONTENT.into_response()),
        // Durable before the 202, and retried as the manifest says, as on AWS.
        "Event" => {
            let spawned = rt
                .store
                .spawn(&function, CallKind::Event, payload, None)
                .await?;
            let mut resp = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&spawned.call_id) {
                resp.headers_mut().insert("thaw-call-id", v);
            }
            Ok(resp)
        }
        "RequestResponse" => match pool.invoke(payload).await {
            Ok(Outcome::Response(bytes)) => Ok((
                StatusCode::OK,
                [
                    ("content-type", "application/json"),
                    ("x-amz-executed-version", "$LATEST"),
                ],
                bytes,
            )
                .into_response()),
            Ok(Outcome::Error(d)) => Ok(function_error(&d.error_type, &d.error_message)),
            Err(CallError::QueueFull(_)) => Err(AwsError::TooManyRequests),
            Err(CallError::ShuttingDown) => Err(AwsError::Service("thaw is shutting down".into())),
            // As on AWS, a crash, timeout or init failure is the function's error.
            Err(e) => Ok(function_error(e.kind(), &e.to_string())),
        },
        other => Err(AwsError::InvalidParameterValue(format!(
            "unknown X-Amz-Invocation-Type {other:?}: RequestResponse, Event or DryRun"
        ))),
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
    ApiPath(function): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let pool = rt
        .pools
        .get(&function)
        .ok_or(ApiError::FunctionNotFound(function))?;
    let since = q.since.unwrap_or(0);
    let lines: Vec<_> = pool
        .logs
        .tail(q.tail.unwrap_or(100).min(2000))
        .into_iter()
        .filter(|l| l.ts_ms > since)
        .collect();
    Ok(Json(json!({"lines": lines})).into_response())
}

async fn healthz(State(rt): State<Shared>) -> Result<Response, ApiError> {
    if rt.accepting() {
        rt.store.health()?;
        Ok(Json(json!({"status": "ok"})).into_response())
    } else {
        Err(ApiError::ShuttingDown)
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
