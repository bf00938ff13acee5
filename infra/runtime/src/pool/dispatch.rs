//! Dispatch: which queued calls go to an instance together, and how their answers come
//! back.
//!
//! Without `batch`, a dispatch is one call. With `batch = { max_size, wait }`:
//!
//! - When an instance has a free slot, it takes every batchable call queued, up to
//!   `max_size`, at once: a lone call on an idle function waits for nothing, and under
//!   load the batch is whatever queued while the instance was busy, as a batching server
//!   takes what is queued when its backend frees.
//! - A batch carries at most [`MAX_BATCH_PAYLOAD`] bytes of payloads (the envelope is
//!   their copy); a call larger than that goes alone.
//! - `wait` (default 0) may hold a partial batch until its oldest call has waited that
//!   long, to let it fill; a full batch goes at once.
//! - A dispatch of several calls is one `thaw_batch` envelope ([`super::batch`]). Each
//!   caller gets its own item's answer. A crash, timeout or OOM of the batch fails each
//!   of its calls with that error; the durable executor then retries each of them
//!   alone ([`Company::Alone`](super::Company)), so a poison item cannot fail the same
//!   neighbours twice.
//! - Batches never mix functions (a pool is one function), and a call marked alone is
//!   never batched.
//!
//! A call's timeout counts from when the instance takes it with `next`, not from when it
//! was handed to the instance: time waiting behind other work is not the function's. A
//! call the instance never takes (its runtime stopped polling) fails as a timeout after
//! `concurrency × timeout`, and the instance is killed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{batch, CallError, FunctionPool, Pending, State};
use crate::launcher::InstanceExit;
use crate::runtime_api::{
    new_request_id, reply_limit, InstanceApi, Invocation, Outcome, Refused, StreamSink,
    MAX_RESPONSE,
};

/// Most payload bytes one batch carries. A call over it alone still goes, alone.
pub(super) const MAX_BATCH_PAYLOAD: usize = 6 << 20;

/// What the queue gives a free slot.
pub(super) enum Take {
    /// These calls, as one dispatch.
    Calls(Vec<Pending>),
    /// Nothing yet: a partial batch is held until this instant.
    Hold(Instant),
}

impl FunctionPool {
    /// Takes the next dispatch from a non-empty queue.
    pub(super) fn take(&self, st: &mut State, now: Instant) -> Take {
        let Some(batch) = &self.plan.spec.batch else {
            return Take::Calls(st.queue.pop_front().into_iter().collect());
        };
        let max = batch.max_size.max(1) as usize;
        // The batchable calls at the front of the queue, up to max_size; a call that
        // must go alone goes alone when it reaches the front.
        // ...and within MAX_BATCH_PAYLOAD bytes in all: the envelope is a copy of its
        // calls' payloads, so this bounds what one dispatch adds to thaw's memory.
        let mut bytes = 0usize;
        let n = st
            .queue
            .iter()
            .take(max)
            .take_while(|p| {
                bytes = bytes.saturating_add(p.payload.len());
                !p.alone && bytes <= MAX_BATCH_PAYLOAD
            })
            .count();
        if n == 0 {
            return Take::Calls(st.queue.pop_front().into_iter().collect());
        }
        // A batch that stopped at the byte bound is as full as it can be.
        let full = n == max || st.queue.len() > n;
        if !full && !batch.wait.0.is_zero() {
            if let Some(oldest) = st.queue.front() {
                let due = oldest.queued_at + batch.wait.0;
                if now < due {
                    return Take::Hold(due);
                }
            }
        }
        Take::Calls(st.queue.drain(..n).collect())
    }

    /// Makes sure the pool is pumped again at `until`, when a held batch is due.
    pub(super) fn wake_at(&self, st: &mut State, until: Instant) {
        if st.wake_at.is_some_and(|t| t <= until) {
            return;
        }
        st.wake_at = Some(until);
        let me = self.me.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(me) = me.upgrade() {
                {
                    let mut st = me.lock();
                    if st.wake_at == Some(until) {
                        st.wake_at = None;
                    }
                }
                me.pump();
            }
        });
    }

    /// One dispatch on instance `id`: one call as its own event, several as a batch.
    pub(super) async fn run_dispatch(
        self: Arc<Self>,
        id: u64,
        api: Arc<InstanceApi>,
        exit: watch::Receiver<Option<InstanceExit>>,
        mut calls: Vec<Pending>,
    ) {
        let n = calls.len();
        let from_ms = u64::try_from(crate::calls::now_ms()).unwrap_or(0);
        let results = if n == 1 {
            let payload = calls[0].payload.clone();
            let stream = calls[0].stream.take();
            vec![
                self.deliver(id, &api, exit, payload, MAX_RESPONSE, stream)
                    .await,
            ]
        } else {
            // A batch's reply is one document: its calls' sinks get nothing, and each is
            // answered whole.
            let payload = batch::envelope(calls.iter().map(|c| &c.payload));
            let answer = self
                .deliver(id, &api, exit, payload, reply_limit(n), None)
                .await;
            batch::split(answer, n)
        };
        // A caller that wants the call's log gets what the instance wrote from the
        // dispatch until its answer had a moment to be followed by its last lines; the
        // slot is still held, so no other call of this one's writes into that window.
        if calls.iter().any(|c| c.log.is_some()) {
            tokio::time::sleep(super::LOG_SETTLE).await;
            let lines = self.logs.since(&self.instance_name(id), from_ms);
            for call in &mut calls {
                if let Some(tx) = call.log.take() {
                    let _ = tx.send(lines.clone());
                }
            }
        }
        for (call, result) in calls.into_iter().zip(results) {
            let _ = call.reply.send(result);
        }
        self.slot_freed(id);
    }

    /// Hands one invocation to instance `id` and waits for its answer, the instance's
    /// exit, or the timeout (which kills the instance).
    async fn deliver(
        &self,
        id: u64,
        api: &InstanceApi,
        mut exit: watch::Receiver<Option<InstanceExit>>,
        payload: bytes::Bytes,
        limit: usize,
        stream: Option<StreamSink>,
    ) -> Result<Outcome, CallError> {
        let timeout = self.plan.spec.timeout.0;
        let (reply, mut rx) = oneshot::channel();
        let (taken_tx, taken) = oneshot::channel();
        let streaming = stream.is_some();
        let invocation = Invocation {
            id: new_request_id(),
            payload,
            timeout,
            limit,
            reply,
            taken: Some(taken_tx),
            stream,
        };
        if api.submit(invocation).await.is_err() {
            return Err(CallError::FunctionCrashed(
                "instance stopped before the call was delivered".into(),
            ));
        }
        let answer = {
            // The instance's exit drops our reply, unless the call was dispatched as it
            // exited and never reached it: then its exit is what says the call is lost.
            let gone = async {
                let _ = exit.wait_for(Option::is_some).await;
            };
            tokio::pin!(gone);
            // Until the instance takes it, only its exit can lose the call. (A dropped
            // `taken` means the invocation was dropped: `rx` then says so at once.) It
            // may wait behind the calls already in the instance, each bounded by its
            // own timeout; past `concurrency × timeout` the runtime has stopped polling
            // `next`, and the instance is killed as for a timeout.
            let untaken = timeout.saturating_mul(self.plan.spec.concurrency.max(1));
            let early = tokio::select! {
                biased;
                r = &mut rx => Some(Ok(r.ok())),
                () = &mut gone => Some(Ok(None)),
                _ = taken => None,
                () = tokio::time::sleep(untaken) => Some(Err(())),
            };
            match early {
                Some(a) => a,
                None => tokio::select! {
                    biased;
                    r = &mut rx => Ok(r.ok()),
                    () = &mut gone => Ok(None),
                    () = tokio::time::sleep(timeout) => Err(()),
                },
            }
        };
        match answer {
            Ok(Some(Ok(outcome))) => Ok(outcome),
            // A batch's reply is held to each call's share when it is split: the caller's
            // limit is the single call's (or the stream's) either way.
            Ok(Some(Err(Refused::TooLarge { limit }))) => Err(CallError::ResponseTooLarge {
                limit: if streaming { limit } else { MAX_RESPONSE },
            }),
            Ok(Some(Err(Refused::BadStream(why)))) => Err(CallError::BadResponseStream(why)),
            Ok(None) => {
                if let Some(InstanceExit::OutOfMemory { limit }) = &*exit.borrow() {
                    return Err(CallError::OutOfMemory { limit: *limit });
                }
                // The instance's exit dropped our reply; give its last stderr a moment
                // to be read so the caller sees why.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let tail = self.logs.instance_tail(&self.instance_name(id), 5);
                let why = if tail.is_empty() {
                    "the instance exited".to_owned()
                } else {
                    tail
                };
                Err(CallError::FunctionCrashed(why))
            }
            Err(()) => {
                self.kill(id);
                Err(CallError::Timeout(timeout))
            }
        }
    }

    /// Frees the slot a dispatch held on instance `id`, stops the instance if it was
    /// retiring and this was its last, and dispatches what is queued.
    pub(super) fn slot_freed(&self, id: u64) {
        {
            let mut st = self.lock();
            let mut last_of_retiring = false;
            if let Some(inst) = st.instances.get_mut(&id) {
                inst.in_flight = inst.in_flight.saturating_sub(1);
                inst.idle_since = Instant::now();
                last_of_retiring = inst.retiring && inst.in_flight == 0;
            }
            if last_of_retiring {
                self.stop(&mut st, id);
            }
        }
        self.pump();
    }
}
