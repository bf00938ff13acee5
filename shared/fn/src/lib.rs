//! The SDK for a thaw function.
//!
//! A function implements [`Function`]: a blocking, batch-shaped handler with serde
//! request and response types. [`run`] does the rest:
//!
//! 1. defaults `RAYON_NUM_THREADS` to 1 and `TOKENIZERS_PARALLELISM` to false (scale by
//!    instances, not by threads fighting over cores) and initialises tracing from
//!    `RUST_LOG`;
//! 2. builds the function, loading its model **once**, on a dedicated inference thread;
//!    an init failure exits the process before its first `next`, with the message on
//!    stderr, which is how the platform tells an init error from a crash. Started as a
//!    warm template, it loads on the main thread instead and forks an instance per
//!    request ([`template`]). The author writes the same `init`; it then runs once, with
//!    the template's environment (`THAW_INSTANCE_ID` is `<function>-template`), no
//!    network, and a `/tmp` the instances do not see, and must start no thread or
//!    process;
//! 3. runs `lambda_runtime` (concurrently when `AWS_LAMBDA_MAX_CONCURRENCY` > 1), and for
//!    each event unwraps one of three shapes ([`envelope`]): a raw JSON event, a function
//!    URL event (payload 2.0, base64 bodies included) or a `{"thaw_batch": [...]}` envelope;
//! 4. computes together what arrives together: a platform batch in one `handle_batch` call,
//!    and with concurrency > 1 every job waiting for the model when it frees
//!    ([`InferenceThread`]).
//!
//! A function may also stream a response as it produces it (token by token, for a
//! generator): [`Function::streams`] says which requests do, and
//! [`Function::handle_stream`] writes their chunks ([`stream`]).
//!
//! Errors are [`FnError`]s with a stable [`ErrorType`]. They are mapped in one place,
//! [`envelope`]: to an HTTP status and JSON body for URL events, and to a `Diagnostic` for
//! the Runtime API.

mod envelope;
mod error;
pub mod stream;
mod template;
mod worker;

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use error::FnError;
pub use lambda_runtime::Error;
pub use stream::Chunks;
pub use thaw_protocol::ErrorType;
pub use worker::InferenceThread;

/// A function's logic. Runs on the inference thread, so it may block.
///
/// Implement [`Function::handle`]; a model function that can compute several requests in
/// one forward pass also overrides [`Function::handle_batch`].
pub trait Function: Send + 'static {
    /// The request type, parsed from the event (or from a URL event's body).
    type Request: DeserializeOwned + Send + 'static;
    /// The response type.
    type Response: Serialize + Send + 'static;

    /// Handles one request.
    fn handle(&mut self, request: Self::Request) -> Result<Self::Response, FnError>;

    /// Handles a batch: one result per request, in order. Under platform batching
    /// (`batch` in the manifest) or in-instance batching (`concurrency` > 1, see
    /// [`InferenceThread`]) several requests arrive together. The default handles them
    /// one by one; a model function answers them all with one forward pass.
    fn handle_batch(
        &mut self,
        requests: Vec<Self::Request>,
    ) -> Vec<Result<Self::Response, FnError>> {
        requests.into_iter().map(|r| self.handle(r)).collect()
    }

    /// The content type of a streamed response.
    const STREAM_CONTENT_TYPE: &'static str = "application/x-ndjson";

    /// Whether `request` asks for its response streamed (default: never). A raw event or
    /// a function URL event may stream; an item of a platform batch never does.
    fn streams(_request: &Self::Request) -> bool {
        false
    }

    /// Handles one request whose response streams, writing it to `out` as it is
    /// produced. The default writes [`Function::handle`]'s response as one JSON line.
    ///
    /// An error returned before the first chunk is the request's error, as from
    /// `handle`; after it, it ends the stream with Lambda's error trailer.
    fn handle_stream(&mut self, request: Self::Request, out: &mut Chunks) -> Result<(), FnError> {
        let response = self.handle(request)?;
        out.send_json_line(&response);
        Ok(())
    }
}

/// How many requests may wait for the inference thread before callers wait to enqueue.
const INFERENCE_QUEUE: usize = worker::MAX_DRAINED;

/// Runs a function under the Lambda Runtime API until the process is killed.
///
/// `init` builds the function (loads its model). It runs once, before the first `next`.
pub fn run<F, I>(init: I) -> Result<(), lambda_runtime::Error>
where
    F: Function,
    I: FnOnce() -> Result<F, FnError> + Send + 'static,
{
    thread_defaults();
    init_tracing();
    let started = match template::config_from_env() {
        None => InferenceThread::<F>::spawn(INFERENCE_QUEUE, init),
        Some(Ok(config)) => {
            // A warm template: load here, on the only thread, then fork on request.
            // `serve` returns in a fork, which becomes an instance.
            let function = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(init)) {
                Ok(Ok(function)) => function,
                Ok(Err(e)) => init_failed(&e),
                Err(_) => init_failed(&FnError::init("init panicked")),
            };
            let function = template::serve(&config, function);
            thread_defaults();
            InferenceThread::start(INFERENCE_QUEUE, function)
        }
        Some(Err(e)) => init_failed(&FnError::init(e)),
    };
    let worker = match started {
        Ok(worker) => Arc::new(worker),
        Err(e) => init_failed(&e),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // A response is buffered JSON, or a stream of chunks for a request that streams.
        let handler = service_fn(move |event: LambdaEvent<Value>| {
            let worker = Arc::clone(&worker);
            async move { envelope::dispatch(&worker, event.payload).await }
        });
        lambda_runtime::run_concurrent(handler).await
    })
}

/// Exiting before the first `next` is the init-error signal the platform reads; the
/// message on stderr is what callers will see.
fn init_failed(e: &FnError) -> ! {
    eprintln!("init error: {e}");
    tracing::error!(error = %e, "function failed to initialise");
    std::process::exit(1);
}

/// Threads are for scaling by instances, not for fighting over cores. Set before any
/// thread exists (at start, and in a fork whose environment was just replaced), so
/// these cannot race with a reader.
fn thread_defaults() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    // With one rayon thread, the tokenizer's "parallel" batch encoding only hands each
    // batch to that thread and back; encode on the inference thread itself.
    if std::env::var_os("TOKENIZERS_PARALLELISM").is_none() {
        std::env::set_var("TOKENIZERS_PARALLELISM", "false");
    }
}

/// Tracing from `RUST_LOG` (default `info`), to stderr, which the platform captures.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// The snapshot directory the platform gave this instance (`THAW_SNAPSHOT_DIR`).
pub fn snapshot_dir() -> Result<std::path::PathBuf, FnError> {
    let key = thaw_protocol::runtime_api::env::SNAPSHOT_DIR;
    std::env::var_os(key)
        .map(std::path::PathBuf::from)
        .ok_or_else(|| FnError::new(ErrorType::InitError, format!("{key} is not set")))
}

/// The directory of the snapshot with `role` (`THAW_SNAPSHOT_DIR_<ROLE>`, from the
/// manifest's `snapshots = { role = "name" }`).
pub fn snapshot_dir_for(role: &str) -> Result<std::path::PathBuf, FnError> {
    let key = thaw_protocol::runtime_api::env::snapshot_dir_for(role);
    std::env::var_os(&key)
        .map(std::path::PathBuf::from)
        .ok_or_else(|| FnError::new(ErrorType::InitError, format!("{key} is not set")))
}

/// Every snapshot the platform gave this instance: `(None, dir)` for the manifest's
/// `snapshot`, `(Some(role), dir)` for each of `snapshots = { role = "name" }` (the role
/// lower-cased, as the variable's name upper-cased it), sorted by role.
pub fn snapshot_dirs() -> Vec<(Option<String>, std::path::PathBuf)> {
    let single = thaw_protocol::runtime_api::env::SNAPSHOT_DIR;
    let prefix = format!("{single}_");
    let mut found: Vec<(Option<String>, std::path::PathBuf)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            let role = if k == single {
                None
            } else {
                Some(k.strip_prefix(&prefix)?.to_ascii_lowercase())
            };
            Some((role, std::path::PathBuf::from(v)))
        })
        .collect();
    found.sort();
    found
}

/// A positive number from the environment, or `default` when unset or invalid: how
/// functions read their request limits (`EMBED_MAX_TEXTS`, ...).
pub fn env_limit(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}
