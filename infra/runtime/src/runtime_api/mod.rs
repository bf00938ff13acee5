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
//!
//! What the instance posts is bounded, as on AWS: a response or error document up to
//! [`MAX_RESPONSE`] (6 MiB; a batch of calls gets [`reply_limit`]) completes the
//! invocation; a larger one completes it at once
//! as [`Refused::TooLarge`], and the instance is answered `413 RequestEntityTooLarge`
//! after the rest of its body is read and discarded (up to [`MAX_DRAIN`]), so its
//! connection, and the `lambda_runtime` worker on it, stay usable (past that, the
//! connection is dropped and the instance reported [`Lifecycle::Unusable`], for the pool
//! to replace). Memory per post is bounded by the limit, never by what the function sends.
//!
//! Error documents are normalised in [`post`], the one place instance errors enter thaw:
//! an event `lambda_runtime` could not deserialize into the handler's type becomes
//! [`thaw_protocol::ErrorType::InvalidInput`], as it can never succeed however often it
//! is retried.
//!
//! A response posted with `Lambda-Runtime-Function-Response-Mode: streaming` is read as
//! it arrives ([`stream`]): to a caller that gave the invocation a [`StreamSink`], chunk by
//! chunk; to any other, collected into one response as a buffered invocation is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use thaw_protocol::runtime_api::header;
use thaw_protocol::Diagnostic;
use tokio::sync::{mpsc, oneshot, watch};

mod post;
mod stream;

pub use stream::{StreamHead, StreamPart, StreamSink, MAX_STREAMED};

/// How an invocation ended, as the function reported it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `POST .../response`: the payload bytes.
    Response(Bytes),
    /// `POST .../error`, or an error trailer ending a streamed response: the function's
    /// diagnostic.
    Error(Diagnostic),
    /// A streamed response, delivered to the invocation's [`StreamSink`] as it came:
    /// `bytes` of body in all.
    Streamed {
        /// Body bytes streamed.
        bytes: usize,
    },
}

impl Outcome {
    /// The outcome for a caller that gave no [`StreamSink`], and so can never see
    /// [`Outcome::Streamed`]: its payload or the function's error.
    pub fn buffered(self) -> Result<Bytes, Diagnostic> {
        match self {
            Self::Response(bytes) => Ok(bytes),
            Self::Error(d) => Err(d),
            // Only an invocation with a sink is streamed to; keep the promise visible.
            Self::Streamed { .. } => Err(Diagnostic::new(
                "Runtime.StreamError",
                "a streamed response reached a caller that did not ask for one",
            )),
        }
    }
}

/// The largest response or error document an instance may post, as on AWS (6 MiB for a
/// synchronous invocation).
pub const MAX_RESPONSE: usize = 6 << 20;

/// The most a batch's reply may be, however many calls it carries: what one reply can
/// hold in thaw's memory.
pub const MAX_BATCH_RESPONSE: usize = 48 << 20;

/// The largest reply an invocation carrying `calls` calls accepts: [`MAX_RESPONSE`] per
/// call, at most [`MAX_BATCH_RESPONSE`] in all. Each call's own share of a batch reply is
/// still held to [`MAX_RESPONSE`] when the batch is split.
pub fn reply_limit(calls: usize) -> usize {
    MAX_RESPONSE
        .saturating_mul(calls.max(1))
        .min(MAX_BATCH_RESPONSE)
}

/// How much of a refused (too large) post is read and discarded so the instance gets a
/// clean `413` on a reusable connection; past this the connection is dropped and the
/// instance is marked [`Lifecycle::Unusable`].
pub const MAX_DRAIN: usize = 24 << 20;

/// Why the Runtime API refused what an instance posted for an invocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The response (or error document) is larger than the invocation's limit:
    /// [`MAX_RESPONSE`] buffered (more for a batch), [`MAX_STREAMED`] streamed.
    #[error("the function's response is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// A streamed response broke its framing: a metadata prelude that does not parse or
    /// never ends.
    #[error("the function's response stream is malformed: {0}")]
    BadStream(String),
}

/// What an invocation's caller receives: the function's outcome, or why what the
/// instance posted was refused.
pub type Answer = Result<Outcome, Refused>;

/// Work handed to the instance on its next `next`.
#[derive(Debug)]
pub struct Invocation {
    /// The request id.
    pub id: String,
    /// The event JSON.
    pub payload: Bytes,
    /// How long the function has, from when it receives the event.
    pub timeout: Duration,
    /// The largest reply accepted: [`MAX_RESPONSE`], or more for a batch of calls.
    pub limit: usize,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Answer>,
    /// Told when the instance takes the invocation with `next`: the call's timeout counts
    /// from there, not from when it was queued for the instance.
    pub taken: Option<oneshot::Sender<()>>,
    /// Where a streamed response goes as it arrives; `None` collects it.
    pub stream: Option<StreamSink>,
}

/// An invocation the instance has taken and not yet answered.
#[derive(Debug)]
struct InFlight {
    reply: oneshot::Sender<Answer>,
    /// The largest buffered reply accepted.
    limit: usize,
    /// Taken by the first streamed post.
    sink: Option<StreamSink>,
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
    /// Its connection was dropped mid-post (a refused reply past [`MAX_DRAIN`]): the
    /// runtime worker on it may be gone, so the instance must be replaced, not reused.
    Unusable(String),
}

#[derive(Debug)]
struct Shared {
    /// The function's ARN, on every `next`.
    arn: HeaderValue,
    queue: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    /// Each unanswered invocation.
    in_flight: Mutex<HashMap<String, InFlight>>,
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
    /// An API for a function named `thaw`.
    fn default() -> Self {
        Self::new("thaw")
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
    /// An API for an instance of `function`, with nothing listening yet: the launcher
    /// decides where it listens ([`InstanceApi::serve`]); tests may drive it in-process
    /// instead.
    pub fn new(function: &str) -> Self {
        let (invocations, rx) = mpsc::channel(1024);
        let (lifecycle_tx, lifecycle) = watch::channel(Lifecycle::Initialising);
        let arn = HeaderValue::from_str(&thaw_protocol::arn::function_arn(function))
            .unwrap_or_else(|_| {
                HeaderValue::from_static("arn:aws:lambda:local:000000000000:function:thaw")
            });
        let shared = Arc::new(Shared {
            arn,
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
                post(post::response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(post::error),
            )
            .route(
                thaw_protocol::runtime_api::INIT_ERROR_PATH,
                post(post::init_error),
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
        let api = Self::new("thaw");
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

    /// In-process `response` / `error`: completes invocation `id`, under the same size
    /// limit and error normalisation as over HTTP. False if unknown.
    pub fn complete(&self, id: &str, outcome: Outcome) -> bool {
        let limit = limit_of(&self.shared, id);
        let answer = match outcome {
            Outcome::Response(b) if b.len() > limit => Err(Refused::TooLarge { limit }),
            Outcome::Error(d) => Ok(Outcome::Error(post::normalised(d))),
            other => Ok(other),
        };
        finish(&self.shared, id, answer)
    }

    /// Marks the instance [`Lifecycle::Unusable`]: the pool replaces it.
    pub fn mark_unusable(&self, why: String) {
        self.shared.lifecycle.send_replace(Lifecycle::Unusable(why));
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
        m.insert(
            inv.id.clone(),
            InFlight {
                reply: inv.reply,
                limit: inv.limit,
                sink: inv.stream,
            },
        );
    }
    if let Some(taken) = inv.taken {
        let _ = taken.send(());
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
    headers.insert(header::FUNCTION_ARN, shared.arn.clone());
    if let Ok(trace) = HeaderValue::from_str(&trace_id()) {
        headers.insert(header::TRACE_ID, trace);
    }
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (StatusCode::OK, headers, payload).into_response()
}

/// A fresh X-Ray style trace id, `Root=1-<epoch seconds, hex>-<96 random bits>;Sampled=0`:
/// runtimes copy it into `_X_AMZN_TRACE_ID`, and some refuse an invocation without one.
fn trace_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // A v7 uuid's low 96 bits: 16 bits of its time, its version and variant bits, and 74
    // random ones; unique per call, which is what a trace id needs.
    let random = uuid::Uuid::now_v7().as_u128() & ((1u128 << 96) - 1);
    format!("Root=1-{secs:08x}-{random:024x};Sampled=0")
}

/// The largest reply invocation `id` accepts ([`MAX_RESPONSE`] for an unknown id).
fn limit_of(shared: &Shared, id: &str) -> usize {
    shared
        .in_flight
        .lock()
        .ok()
        .and_then(|m| m.get(id).map(|f| f.limit))
        .unwrap_or(MAX_RESPONSE)
}

fn finish(shared: &Shared, id: &str, answer: Answer) -> bool {
    let reply = shared.in_flight.lock().ok().and_then(|mut m| m.remove(id));
    match reply {
        Some(f) => {
            let _ = f.reply.send(answer);
            true
        }
        None => false,
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, "{\"status\":\"OK\"}").into_response()
}

fn unknown_id() -> Response {
    (
        StatusCode::NOT_FOUND,
        "{\"errorType\":\"InvalidRequestID\"}",
    )
        .into_response()
}
