//! The platform side of dynamic batching's wire format: several queued calls go to an
//! instance as one `{"thaw_batch": [event, ...]}` invocation, and its reply
//! `{"thaw_batch": [{"ok": ..} | {"error": ..}, ...]}` is split back into one outcome per
//! call, in order ([`thaw_protocol::batch`] is the contract).
//!
//! Payloads are concatenated, not re-encoded: every payload reaching the pool is JSON
//! (each front path validates it, and the pool sends any that is not alone), so the
//! envelope is their bytes between brackets. Each call's reply is a slice of the batch
//! reply's buffer, not a copy.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use thaw_protocol::batch::BATCH_KEY;
use thaw_protocol::Diagnostic;

use super::CallError;
use crate::runtime_api::{Outcome, MAX_RESPONSE};

/// Whether `payload` is one JSON document, so it can stand inside an envelope without
/// making its neighbours' bytes invalid.
pub(super) fn is_json(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// `{"thaw_batch":[p1,p2,...]}` from the calls' payloads.
pub(super) fn envelope<'a>(payloads: impl ExactSizeIterator<Item = &'a Bytes>) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(BATCH_KEY.as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, p) in payloads.enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"]}");
    out.freeze()
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow)]
    thaw_batch: Vec<Item<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Item<'a> {
    #[serde(borrow)]
    Ok(&'a RawValue),
    Error(Diagnostic),
}

/// One outcome per call of a batch of `n` from the batch's answer.
///
/// - thaw's own failure of the batch (a crash, a timeout, the memory limit) fails every
///   call with it: each was in the instance when it happened.
/// - The function's error for the whole envelope (a runtime that does not speak it) is
///   every call's error.
/// - A reply is split item by item; an item over [`MAX_RESPONSE`] fails only its call.
///   A reply that is not a batch reply of `n` items fails every call with
///   [`CallError::BadBatchReply`]: no call can be matched to its answer.
pub(super) fn split(
    answer: Result<Outcome, CallError>,
    n: usize,
) -> Vec<Result<Outcome, CallError>> {
    let bytes = match answer.map(Outcome::buffered) {
        Err(e) => return vec![Err(e); n],
        Ok(Err(d)) => return vec![Ok(Outcome::Error(d)); n],
        Ok(Ok(bytes)) => bytes,
    };
    let reply = match serde_json::from_slice::<Reply<'_>>(&bytes) {
        Ok(r) if r.thaw_batch.len() == n => r,
        Ok(r) => {
            let why = format!("{} results for a batch of {n}", r.thaw_batch.len());
            return vec![Err(CallError::BadBatchReply(why)); n];
        }
        Err(e) => {
            let why = format!("not a {BATCH_KEY} reply: {e}");
            return vec![Err(CallError::BadBatchReply(why)); n];
        }
    };
    reply
        .thaw_batch
        .into_iter()
        .map(|item| match item {
            Item::Ok(raw) if raw.get().len() > MAX_RESPONSE => Err(CallError::ResponseTooLarge {
                limit: MAX_RESPONSE,
            }),
            Item::Ok(raw) => Ok(Outcome::Response(bytes.slice_ref(raw.get().as_bytes()))),
            Item::Error(d) => Ok(Outcome::Error(d)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_is_the_payloads_in_order() {
        let calls = [Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"[2]")];
        let env = envelope(calls.iter());
        let v: serde_json::Value = serde_json::from_slice(&env).expect("json");
        assert_eq!(v, serde_json::json!({"thaw_batch": [{"a": 1}, [2]]}));
        assert!(thaw_protocol::batch::is_batch(&v));
        assert!(is_json(b" {\"a\": [1, 2]} "));
        assert!(!is_json(b"{\"a\":1} {"));
        assert!(!is_json(b""));
    }

    #[test]
    fn a_reply_is_split_per_call_and_an_item_error_stays_with_its_call() {
        let reply = Bytes::from_static(
            br#"{"thaw_batch":[{"ok":{"v":1}},{"error":{"errorType":"InvalidInput","errorMessage":"bad"}},{"ok":[3]}]}"#,
        );
        let got = split(Ok(Outcome::Response(reply)), 3);
        assert_eq!(
            got[0],
            Ok(Outcome::Response(Bytes::from_static(b"{\"v\":1}")))
        );
        assert_eq!(
            got[1],
            Ok(Outcome::Error(Diagnostic::new("InvalidInput", "bad")))
        );
        assert_eq!(got[2], Ok(Outcome::Response(Bytes::from_static(b"[3]"))));
    }

    #[test]
    fn a_failed_batch_fails_each_call_and_a_wrong_reply_is_typed() {
        let crashed = split(Err(CallError::FunctionCrashed("gone".into())), 2);
        assert_eq!(
            crashed,
            vec![Err(CallError::FunctionCrashed("gone".into())); 2]
        );
        let short = split(
            Ok(Outcome::Response(Bytes::from_static(
                br#"{"thaw_batch":[{"ok":1}]}"#,
            ))),
            2,
        );
        assert!(matches!(&short[1], Err(CallError::BadBatchReply(w)) if w.contains("1 results")));
        let other = split(Ok(Outcome::Response(Bytes::from_static(b"{\"x\":1}"))), 2);
        assert!(matches!(&other[0], Err(CallError::BadBatchReply(_))));
    }

    #[test]
    fn an_item_over_the_response_limit_fails_only_its_call() {
        let big = format!("\"{}\"", "x".repeat(MAX_RESPONSE));
        let reply = format!(r#"{{"thaw_batch":[{{"ok":{big}}},{{"ok":2}}]}}"#);
        let got = split(Ok(Outcome::Response(Bytes::from(reply))), 2);
        assert!(matches!(got[0], Err(CallError::ResponseTooLarge { .. })));
        assert_eq!(got[1], Ok(Outcome::Response(Bytes::from_static(b"2"))));
    }
}
