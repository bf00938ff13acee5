//! The batch envelope that `thaw serve` sends when dynamic batching is on.
//!
//! Request: `{"thaw_batch": [event, ...]}`. Reply: `{"thaw_batch": [{"ok": ..} | {"error": ..}]}`
//! in the same order, so one bad item never fails its neighbours.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Diagnostic;

/// Key of the envelope.
pub const BATCH_KEY: &str = "thaw_batch";

/// A batch of raw events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The events, in order.
    pub thaw_batch: Vec<Value>,
}

/// One item's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchItem {
    /// The item's reply.
    Ok(Value),
    /// The item's typed error.
    Error(Diagnostic),
}

/// The reply to a [`BatchRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// One outcome per input item, in input order.
    pub thaw_batch: Vec<BatchItem>,
}

/// Whether a raw event is a batch envelope.
pub fn is_batch(event: &Value) -> bool {
    event
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key(BATCH_KEY))
}
