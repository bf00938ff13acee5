//! The Lambda Runtime API for one instance.
//!
//! [`InstanceApi::serve`] serves it on a listener the launcher made (inside the
//! instance's network namespace where there is one):
//!
//! - `GET  /2018-06-01/runtime/invocation/next`: long-polls, with no timeout and never a
//!   204, for the next [`Invocation`]; answers with the payload and the request-id and
//!   deadline headers that `lambda_runtime` requires.
//! - `POST .../invocation/{id}/response` and `.../{id}/error`: complete the invocation.
//! - `POST /2018-06-01/runtime/init/error`: the function could not initialise.
//!
//! Several `next` polls may wait at once: that is how `AWS_LAMBDA_MAX_CONCURRENCY` > 1
//! looks from this side. The server stops when the [`InstanceApi`] is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use thaw_protocol::runtime_api::header;
use thaw_protocol::Diagnostic;
use tokio::sync::{mpsc, oneshot, watch};

/// How an invocation ended, as the function reported it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `POST .../response`: the payload bytes.
    Response(Bytes),
    /// `POST .../error`: the function's diagnostic.
    Error(Diagnostic),
}

/// Work handed to the instance on its next `next`.
#[derive(Debug)]
pub struct Invocation {
    /// The request id.
    pub id: String,
    /// The event JSON.
    pub payload: Bytes,
    /// How long the function has, from when it receives the event.
    pub timeout: Duration,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Outcome>,
}

/// What the instance has told the platform about itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Lifecycle {
    /// Started, no `next` yet.
    #[default]
    Initialising,
    /// Polled `next` at least once: initialised and serving.
    Ready,
    /// Posted `/runtime/init/error`.
    InitFailed(Diagnostic),
}

#[derive(Debug)]
struct Shared {
    queue: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    in_flight: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    lifecycle: watch::Sender<Lifecycle>,
}

/// The Runtime API of one instance, and the handle to give it work.
#[derive(Debug)]
pub struct InstanceApi {
    addr: Mutex<Option<SocketAddr>>,
    invocations: mpsc::Sender<Invocation>,
    lifecycle: watch::Receiver<Lifecycle>,
    shared: Arc<Shared>,
    /// Set on drop: the HTTP server stops.
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
}

impl Default for InstanceApi {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InstanceApi {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh request id: unique within this process, and across restarts by its time part.
pub fn new_request_id() -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{t:x}-{n:x}")
}

impl InstanceApi {
    /// An API with nothing listening yet: the launcher decides where it listens
    /// ([`InstanceApi::serve`]); tests may drive it in-process instead.
    pub fn new() -> Self {
        let (invocations, rx) = mpsc::channel(1024);
        let (lifecycle_tx, lifecycle) = watch::channel(Lifecycle::Initialising);
        let shared = Arc::new(Shared {
            queue: tokio::sync::Mutex::new(rx),
            in_flight: Mutex::new(HashMap::new()),
            lifecycle: lifecycle_tx,
        });
        let (stop, stopped) = watch::channel(false);
        Self {
            addr: Mutex::new(None),
            invocations,
            lifecycle,
            shared,
            stop,
            stopped,
        }
    }

    /// Serves the HTTP Runtime API on `listener` until this API is dropped.
    pub fn serve(&self, listener: tokio::net::TcpListener) {
        if let (Ok(addr), Ok(mut slot)) = (listener.local_addr(), self.addr.lock()) {
            *slot = Some(addr);
        }
        let app = Router::new()
            .route(thaw_protocol::runtime_api::NEXT_PATH, get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route(
                thaw_protocol::runtime_api::INIT_ERROR_PATH,
                post(init_error),
            )
            .with_state(Arc::clone(&self.shared));
        let mut stopped = self.stopped.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
    }

    /// An API served on the host's loopback, port 0: for tests and benchmarks that run
    /// a function outside thaw. (thaw's own instances listen in their network namespace.)
    pub async fn on_host_loopback() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let api = Self::new();
        api.serve(listener);
        Ok(api)
    }

    /// In-process `next`: the next invocation's id and payload, once there is one
    /// (`None` when the API is gone). Marks the instance ready, as an HTTP `next` does.
    pub async fn next_invocation(&self) -> Option<(String, Bytes)> {
        take_next(&self.shared)
            .await
            .map(|(id, payload, _)| (id, payload))
    }

    /// In-process `response` / `error`: completes invocation `id`. False if unknown.
    pub fn complete(&self, id: &str, outcome: Outcome) -> bool {
        finish(&self.shared, id, outcome)
    }

    /// In-process `init/error`.
    pub fn init_failed(&self, diagnostic: Diagnostic) {
        let _ = self
            .shared
            .lifecycle
            .send(Lifecycle::InitFailed(diagnostic));
    }

    /// Where [`InstanceApi::serve`] listens, as thaw sees it.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.lock().ok().and_then(|a| *a)
    }

    /// Queues an invocation for the instance's next `next`.
    pub async fn submit(&self, invocation: Invocation) -> Result<(), Invocation> {
        self.invocations.send(invocation).await.map_err(|e| e.0)
    }

    /// Waits until the instance polls `next` for the first time, or reports an init error.
    pub fn lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.clone()
    }

    /// Invocations handed out and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Drops every unanswered invocation's reply, so its caller sees the instance is gone.
    pub fn abandon_in_flight(&self) {
        if let Ok(mut m) = self.shared.in_flight.lock() {
            m.clear();
        }
    }
}

/// Waits for the next invocation and records it as in flight: what `next` does over
/// HTTP and in-process alike.
async fn take_next(shared: &Shared) -> Option<(String, Bytes, Duration)> {
    shared.lifecycle.send_if_modified(|l| {
        if *l == Lifecycle::Initialising {
            *l = Lifecycle::Ready;
            true
        } else {
            false
        }
    });
    // Long-poll with no timeout: lambda_runtime never expects a 204.
    let inv = {
        let mut queue = shared.queue.lock().await;
        queue.recv().await
    }?;
    if let Ok(mut m) = shared.in_flight.lock() {
        m.insert(inv.id.clone(), inv.reply);
    }
    Some((inv.id, inv.payload, inv.timeout))
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    let Some((id, payload, timeout)) = take_next(&shared).await else {
        return (StatusCode::GONE, "instance is shutting down").into_response();
    };
    let deadline = SystemTime::now()
        .checked_add(timeout)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis())
        .unwrap_or(u128::MAX);
    let mut headers = HeaderMap::new();
    let id = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid-id"));
    headers.insert(header::REQUEST_ID, id);
    headers.insert(header::DEADLINE_MS, HeaderValue::from(deadline as u64));
    headers.insert(
        header::FUNCTION_ARN,
        HeaderValue::from_static("arn:aws:lambda:local:000000000000:function:thaw"),
    );
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (StatusCode::OK, headers, payload).into_response()
}

fn finish(shared: &Shared, id: &str, outcome: Outcome) -> bool {
    let reply = shared.in_flight.lock().ok().and_then(|mut m| m.remove(id));
    match reply {
        Some(reply) => {
            let _ = reply.send(outcome);
            true
        }
        None => false,
    }
}

fn complete(shared: &Shared, id: &str, outcome: Outcome) -> Response {
    match finish(shared, id, outcome) {
        true => (StatusCode::ACCEPTED, "{\"status\":\"OK\"}").into_response(),
        false => (
            StatusCode::NOT_FOUND,
            "{\"errorType\":\"InvalidRequestID\"}",
        )
            .into_response(),
    }
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    complete(&shared, &id, Outcome::Response(body))
}

#[derive(Debug, Deserialize)]
struct ErrorDoc {
    #[serde(rename = "errorType", default)]
    error_type: String,
    #[serde(rename = "errorMessage", default)]
    error_message: String,
}

fn diagnostic(headers: &HeaderMap, body: &[u8]) -> Diagnostic {
    let doc: ErrorDoc = serde_json::from_slice(body).unwrap_or(ErrorDoc {
        error_type: String::new(),
        error_message: String::from_utf8_lossy(body).into_owned(),
    });
    let header_type = headers
        .get(header::FUNCTION_ERROR_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Unhandled");
    Diagnostic {
        error_type: if doc.error_type.is_empty() {
            header_type.to_owned()
        } else {
            doc.error_type
        },
        error_message: doc.error_message,
    }
}

async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    complete(&shared, &id, Outcome::Error(diagnostic(&headers, &body)))
}

async fn init_error(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _ = shared
        .lifecycle
        .send(Lifecycle::InitFailed(diagnostic(&headers, &body)));
    (StatusCode::ACCEPTED, "{\"status\":\"OK\"}").into_response()
}
