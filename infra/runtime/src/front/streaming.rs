//! A call whose response may stream, as the HTTP fronts consume it.
//!
//! [`invoke`] queues the call with a sink and waits for whichever comes first: the
//! stream's head (the function streams) or the call's end (it answered in one piece, or
//! failed before streaming anything). A streaming answer is a [`Streaming`]: its head and a
//! [`Stream`] of body chunks that ends with the call. Whatever ends the call after the
//! head (the function's error trailer, a timeout, a crash) is the stream's last item, an
//! `Err`, so an HTTP body built from it is cut off, never ended as if complete.
//!
//! The stream owns the call: a client that disconnects drops it, and the instance's
//! remaining output is read and discarded by the Runtime API.

use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use futures_util::future::BoxFuture;
use futures_util::Stream;
use thaw_protocol::Diagnostic;
use tokio::sync::mpsc;

use crate::pool::{CallError, FunctionPool};
use crate::runtime_api::{Outcome, StreamHead, StreamPart};

/// How many parts may wait between the instance's post and the HTTP client: enough to
/// cover a scheduling hiccup, few enough that a slow client slows the function.
const PARTS_IN_FLIGHT: usize = 64;

/// What ends a stream early.
#[derive(Debug, thiserror::Error)]
pub(super) enum StreamFailed {
    /// The function reported an error after streaming began.
    #[error("{}: {}", .0.error_type, .0.error_message)]
    Function(Diagnostic),
    /// thaw ended the call (timeout, crash, limit).
    #[error(transparent)]
    Call(#[from] CallError),
}

/// A call's answer.
pub(super) enum Answer {
    /// It ended without streaming: its outcome as a buffered call's.
    Whole(Result<Bytes, Diagnostic>),
    /// It is streaming.
    Streaming(Streaming),
}

/// A streaming answer.
pub(super) struct Streaming {
    /// Its status and headers.
    pub head: StreamHead,
    /// Its body, to the end of the call.
    pub body: StreamBody,
}

/// The body of a streaming answer.
pub(super) type StreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, StreamFailed>> + Send>>;

/// How long a failing body waits before it fails, so what was produced reaches the
/// client first.
const FLUSH_BEFORE_CUT: std::time::Duration = std::time::Duration::from_millis(50);

type Call = BoxFuture<'static, Result<Outcome, CallError>>;

/// Runs `payload` on `pool`, streaming if the function streams.
pub(super) async fn invoke(pool: Arc<FunctionPool>, payload: Bytes) -> Result<Answer, CallError> {
    let (sink, mut parts) = mpsc::channel(PARTS_IN_FLIGHT);
    let mut call: Call = Box::pin(async move { pool.invoke_streaming(payload, sink).await });
    let head = tokio::select! {
        biased;
        part = parts.recv() => part,
        outcome = &mut call => return whole(outcome, &mut parts),
    };
    match head {
        Some(StreamPart::Head(head)) => Ok(Answer::Streaming(Streaming {
            head,
            body: body(parts, call),
        })),
        // The sink closes when the post ends (or breaks off), just before the call is
        // answered: await the answer. A body part before a head is never sent.
        Some(StreamPart::Data(_)) | None => whole(call.await, &mut parts),
    }
}

/// A call that ended before its stream's head.
fn whole(
    outcome: Result<Outcome, CallError>,
    parts: &mut mpsc::Receiver<StreamPart>,
) -> Result<Answer, CallError> {
    match outcome? {
        // A stream that ended with nothing in it is an empty body.
        Outcome::Streamed { .. } => {
            let mut data = Vec::new();
            while let Ok(part) = parts.try_recv() {
                if let StreamPart::Data(d) = part {
                    data.extend_from_slice(&d);
                }
            }
            Ok(Answer::Whole(Ok(Bytes::from(data))))
        }
        other => Ok(Answer::Whole(other.buffered())),
    }
}

/// Where a body stream is: reading parts while the call runs, draining what is left once
/// it ended, done.
enum BodyState {
    Running(mpsc::Receiver<StreamPart>, Call),
    Ended(mpsc::Receiver<StreamPart>, Result<Outcome, CallError>),
    Done,
}

fn body(parts: mpsc::Receiver<StreamPart>, call: Call) -> StreamBody {
    Box::pin(futures_util::stream::unfold(
        BodyState::Running(parts, call),
        |state| async move {
            let mut state = state;
            loop {
                state = match state {
                    BodyState::Running(mut parts, mut call) => {
                        tokio::select! {
                            biased;
                            part = parts.recv() => match part {
                                Some(StreamPart::Data(d)) => {
                                    return Some((Ok(d), BodyState::Running(parts, call)))
                                }
                                Some(StreamPart::Head(_)) => BodyState::Running(parts, call),
                                None => {
                                    let outcome = call.await;
                                    BodyState::Ended(parts, outcome)
                                }
                            },
                            outcome = &mut call => BodyState::Ended(parts, outcome),
                        }
                    }
                    // Every part was queued before the call was answered: drain them.
                    BodyState::Ended(mut parts, outcome) => match parts.try_recv() {
                        Ok(StreamPart::Data(d)) => {
                            return Some((Ok(d), BodyState::Ended(parts, outcome)))
                        }
                        Ok(StreamPart::Head(_)) => BodyState::Ended(parts, outcome),
                        Err(_) => {
                            let last = match outcome {
                                Ok(Outcome::Streamed { .. }) => return None,
                                Ok(Outcome::Response(b)) => Ok(b),
                                Ok(Outcome::Error(d)) => Err(StreamFailed::Function(d)),
                                Err(e) => Err(StreamFailed::Call(e)),
                            };
                            if last.is_err() {
                                // hyper drops the bytes it has buffered but not written
                                // when a body fails: give it a moment to write out the
                                // head and the chunks before the cut.
                                tokio::time::sleep(FLUSH_BEFORE_CUT).await;
                            }
                            return Some((last, BodyState::Done));
                        }
                    },
                    BodyState::Done => return None,
                };
            }
        },
    ))
}
