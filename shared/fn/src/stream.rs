//! Streamed responses, the function's side.
//!
//! A request that [`Function::streams`](crate::Function::streams) is handled by
//! [`Function::handle_stream`](crate::Function::handle_stream), on the inference thread,
//! which writes its response as it is produced into [`Chunks`]. [`crate::run`] hands the
//! chunks to `lambda_runtime` as a Lambda streaming response, so the platform delivers
//! each one when it is written: under thaw through the function URL, on AWS through a
//! function URL in `RESPONSE_STREAM` mode or `InvokeWithResponseStream`.
//!
//! What a caller sees of an error depends on when it happened: before the first chunk it
//! is the request's error, answered as a buffered call's would be (a `400` for bad
//! input); after it, the stream ends with Lambda's error trailer, which carries the error
//! document ([`MidStreamError`]), so its type survives.

use bytes::Bytes;
use tokio::sync::mpsc;

/// How many chunks may wait for the Runtime API client: a slow reader then blocks the
/// handler instead of growing memory.
pub(crate) const CHUNKS_IN_FLIGHT: usize = 64;

/// Where a streaming handler writes its response.
#[derive(Debug)]
pub struct Chunks {
    tx: mpsc::Sender<Bytes>,
    sent: usize,
}

impl Chunks {
    pub(crate) fn new(tx: mpsc::Sender<Bytes>) -> Self {
        Self { tx, sent: 0 }
    }

    /// Sends the next chunk, blocking while the reader is behind (a reader that stops
    /// reading holds the handler up to the function's timeout). False once the response
    /// can no longer be delivered (its post to the platform failed): the handler should
    /// stop. A caller that hangs up does not make it false: as on Lambda, the function
    /// runs to its end, and the platform drops what it writes.
    pub fn send(&mut self, chunk: impl Into<Bytes>) -> bool {
        let chunk = chunk.into();
        if chunk.is_empty() {
            return !self.tx.is_closed();
        }
        let ok = self.tx.blocking_send(chunk).is_ok();
        if ok {
            self.sent += 1;
        }
        ok
    }

    /// Sends `value` as one line of JSON (the `application/x-ndjson` framing).
    pub fn send_json_line<T: serde::Serialize>(&mut self, value: &T) -> bool {
        match serde_json::to_vec(value) {
            Ok(mut line) => {
                line.push(b'\n');
                self.send(line)
            }
            Err(e) => {
                tracing::error!(error = %e, "a stream line could not be encoded");
                false
            }
        }
    }

    /// Chunks sent so far.
    pub fn sent(&self) -> usize {
        self.sent
    }
}

/// A handler's error after its stream began. `lambda_runtime` reports it in Lambda's
/// error trailer as `Runtime.StreamError` with its `Display`, base64-encoded; that
/// `Display` is the error document (`{"errorType", "errorMessage"}`), so the platform
/// reads the typed error back rather than a string.
#[derive(Debug)]
pub(crate) struct MidStreamError(pub(crate) crate::FnError);

impl std::fmt::Display for MidStreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(&self.0.to_diagnostic()) {
            Ok(doc) => f.write_str(&doc),
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for MidStreamError {}
