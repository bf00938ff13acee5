//! The HTTP front of `thaw serve`.
//!
//! | route | what |
//! |---|---|
//! | `ANY /fn/{function}/{path...}` | function URL: a payload-2.0 event in, `{statusCode, headers, body}` out |
//! | `POST /2015-03-31/functions/{function}/invocations` | the AWS Lambda Invoke API ([`lambda_api`]) |
//! | `GET /2015-03-31/functions/[{function}[/configuration]]` | ListFunctions, GetFunction, GetFunctionConfiguration |
//! | `POST /v1/functions/{function}/spawn` | a durable call: 202 `{"call_id"}` ([`calls`]) |
//! | `GET`, `DELETE /v1/calls/{id}` | long-poll a call's state, cancel it |
//! | `POST /v1/functions/{function}/map` | fan-out: inputs in, NDJSON results streamed out ([`maps`]) |
//! | `POST /v1/functions/{function}/spawn_map` | a durable map: 202 `{"map_id"}` |
//! | `GET`, `DELETE /v1/maps/{id}` | a map's progress and paged results, cancel it |
//! | `GET /v1/functions` | config (env names only) and live state of every function |
//! | `GET /v1/functions/{function}/logs?tail=N&since=MS` | captured output |
//! | `GET /healthz`, `GET /metrics` | health, Prometheus |
//! | `POST /v1/embeddings`, `GET /v1/models`, `POST /embed`, `/rerank`, `GET /info`, `POST /v1/rerank` | OpenAI-, TEI- and Cohere-compatible routes ([`compat`]) |
//!
//! Who may call what is decided by tower layers in front of the routes ([`auth`]): the
//! control-plane token, and each function's `url.auth` on every route that reaches it.
//! The connections themselves are bounded at the edge ([`edge`]: header-read timeout,
//! connection cap), and a body a handler leaves unread is drained so that an error does
//! not cost the client its keep-alive connection ([`drain`]).
//!
//! Platform errors are `{"error": {"type", "message"}}`, axum's own rejections (a bad path
//! segment, a bad query, 404, 405) included: 400, 401, 404, 405, 413 (over 6 MiB), 429
//! (queue full, with `Retry-After`), 502 (crash, init failure), 503 (shutting down), 504
//! (timeout). The Lambda API answers in AWS's shapes instead. Both are mapped in one place
//! each, [`ApiError`] and [`AwsError`]. A function URL answers whatever the function
//! answers.

mod auth;
mod calls;
pub mod compat;
mod drain;
mod edge;
mod error;
mod lambda_api;
mod maps;
mod streaming;
mod url;

pub use auth::{bearer, Auth, Token, TokenError};
pub use edge::{bind, serve, Edge};
pub use error::{ApiError, ApiPath, ApiQuery, AwsError, AwsPath, AwsQuery, BodyError};

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use self::auth::{Guard, Surface};
use crate::pool::FunctionPool;
use crate::Runtime;

/// Largest request body, as on AWS Lambda.
pub const MAX_BODY: usize = 6 * 1024 * 1024;
/// How much of an oversized body is drained before answering 413.
const DRAIN_CAP: usize = 64 * 1024 * 1024;
/// Longest a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

type Shared = Arc<Runtime>;

/// The front's routes, each behind the guards [`auth`] describes:
///
/// | routes | control-plane token | the function's `url.auth` |
/// |---|---|---|
/// | Invoke API | yes | yes |
/// | `spawn`, `map`, `spawn_map` | yes | yes |
/// | the rest of `/v1`, `/metrics` (unless public) | yes | |
/// | `/fn/...` | | yes |
/// | `/healthz` | | |
pub fn router(runtime: Shared, auth: Auth) -> Router {
    let public_metrics = auth.public_metrics;
    let auth = Arc::new(auth);
    let guard = |surface| Guard::new(Arc::clone(&auth), Arc::clone(&runtime), surface);
    // route_layer: the guards run only on a matched route, so an unknown route is a 404
    // and a wrong method a 405, whoever asks. A later route_layer wraps an earlier one:
    // the control plane is checked first.
    let invoke = lambda_api::invoke_routes()
        .route_layer(from_fn_with_state(guard(Surface::Aws), auth::function))
        .route_layer(from_fn_with_state(guard(Surface::Aws), auth::control_plane));
    let lambda_management = lambda_api::management_routes()
        .route_layer(from_fn_with_state(guard(Surface::Aws), auth::control_plane));
    let into_functions = Router::new()
        .route("/v1/functions/{function}/spawn", post(calls::spawn))
        .route("/v1/functions/{function}/map", post(maps::map))
        .route("/v1/functions/{function}/spawn_map", post(maps::spawn_map))
        .route_layer(from_fn_with_state(guard(Surface::Thaw), auth::function));
    let mut control = Router::new()
        .route("/v1/calls/{id}", get(calls::get).delete(calls::cancel))
        .route("/v1/maps/{id}", get(maps::get).delete(maps::cancel))
        .route("/v1/functions", get(list_functions))
        .route("/v1/functions/{function}/logs", get(logs))
        .merge(into_functions);
    let mut open = Router::new().route("/healthz", get(healthz));
    if public_metrics {
        open = open.route("/metrics", get(metrics));
    } else {
        control = control.route("/metrics", get(metrics));
    }
    let control = control.route_layer(from_fn_with_state(
        guard(Surface::Thaw),
        auth::control_plane,
    ));
    // The compatible routes call a function like spawn does: the control plane, then
    // (in the handler, once the body names it) the function's url.auth.
    let compat = compat::routes(Arc::clone(&runtime), guard(Surface::Thaw)).route_layer(
        from_fn_with_state(guard(Surface::Thaw), auth::control_plane),
    );
    let urls = Router::new()
        .route("/fn/{function}", any(url::prefixed))
        .route("/fn/{function}/", any(url::prefixed))
        .route("/fn/{function}/{*path}", any(url::prefixed))
        .route_layer(from_fn_with_state(guard(Surface::Thaw), auth::function));
    Router::new()
        .merge(invoke)
        .merge(lambda_management)
        .merge(compat)
        .merge(control)
        .merge(urls)
        .merge(open)
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(from_fn(drain::drain_unread))
        .with_state(runtime)
}

/// The routes of `thaw serve --single <function>`, the container entrypoint on Knative:
/// every path is the function's URL (plain HTTP in, its response out, behind its
/// `url.auth`), and `/healthz` is the readiness probe: 200 once an instance has loaded its
/// model, 503 until then (with the init error if it failed). `/metrics` is the control
/// plane, as on the full router.
pub fn single_router(runtime: Shared, function: String, auth: Auth) -> Router {
    let public_metrics = auth.public_metrics;
    let auth = Arc::new(auth);
    let name: Arc<str> = function.as_str().into();
    let guard = |surface| Guard::new(Arc::clone(&auth), Arc::clone(&runtime), surface);
    let (f1, f2) = (Arc::clone(&name), Arc::clone(&name));
    let urls = Router::new()
        .route(
            "/",
            any(move |State(rt): State<Shared>, req: Request| {
                url::single(rt, Arc::clone(&f1), req)
            }),
        )
        .route(
            "/{*path}",
            any(move |State(rt): State<Shared>, req: Request| {
                url::single(rt, Arc::clone(&f2), req)
            }),
        )
        .route_layer(from_fn_with_state(
            guard(Surface::Thaw).for_function(&name),
            auth::function,
        ));
    let mut metrics_route = Router::new().route("/metrics", get(metrics));
    if !public_metrics {
        metrics_route = metrics_route.route_layer(from_fn_with_state(
            guard(Surface::Thaw),
            auth::control_plane,
        ));
    }
    Router::new()
        .route(
            "/healthz",
            get(move |State(rt): State<Shared>| readiness(rt, function.clone())),
        )
        .merge(metrics_route)
        .merge(urls)
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(from_fn(drain::drain_unread))
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
            Json(json!({"status": "ready", "function": function, "state": state})).into_response(),
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

/// A function's settings for `/v1/functions`, with `env` reduced to its names: values
/// are the function's secrets (a `DB_PASSWORD`), and nothing that answers HTTP shows them.
fn redacted(spec: &thaw_manifest::FunctionSpec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or_default();
    if let Some(config) = v.as_object_mut() {
        let names: Vec<Value> = spec
            .env
            .keys()
            .map(|k| Value::String(k.to_string()))
            .collect();
        config.insert("env".to_owned(), Value::Array(names));
    }
    v
}
