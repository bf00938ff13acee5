//! The durable executor of one function.
//!
//! It holds one permit per call the function can run at once (`max_containers ×
//! concurrency`, times `batch.max_size` when the function is batched, so durable calls
//! fill batches as synchronous ones do). With free permits it claims that many due calls from the store, which
//! marks them running and counts the attempt before anything runs, and hands each to
//! the pool. A call still queued in the store is therefore not yet in anyone's memory,
//! and cancelling it is a plain update. With nothing due it sleeps until woken by a
//! commit, or until the next retry's backoff ends.
//!
//! A retry is dispatched alone, never in a batch (`batch` in the manifest): a batch that
//! crashed on one poison item must not take the same neighbours down again.
//!
//! What an attempt's outcome becomes:
//!
//! | outcome | recorded as |
//! |---|---|
//! | the function answered | succeeded |
//! | `InvalidInput` or `PayloadTooLarge` from the function (an event the runtime could not deserialize arrives as `InvalidInput`, see [`crate::runtime_api`]) | failed, never retried |
//! | a response over the Runtime API's limit (`ResponseTooLarge`) | failed, never retried: the same input makes the same reply |
//! | any other function error, a crash, a timeout, an init failure | retried after `retry_backoff × 2^failures` while `retries` remain, else failed with this error |
//! | the pool's queue was full, or thaw is closing | put back, the attempt not counted |
//! | the instance was killed because thaw is stopping | left running; the next start queues it again, attempt counted |

use std::sync::Arc;
use std::time::Duration;

use thaw_protocol::ErrorType;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::store::{CallStore, Claimed, Finish};
use super::{now_ms, CallFailure};
use crate::pool::{CallError, Company, FunctionPool};
use crate::runtime_api::Outcome;

/// Most durable calls of one function handed to its pool at once, whatever the
/// manifest's product of caps (up to 2^30): permits are taken one by one, and the pool
/// queues what it cannot run.
const MAX_IN_FLIGHT: usize = 4096;

/// The longest wait before a retry.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Whether a function error type means "this input will never work", so a retry can
/// only repeat the failure.
fn input_at_fault(error_type: &str) -> bool {
    matches!(
        ErrorType::parse(error_type),
        Some(ErrorType::InvalidInput | ErrorType::PayloadTooLarge)
    )
}

/// Runs `pool`'s durable calls until `closing` turns true.
pub async fn run(pool: Arc<FunctionPool>, store: CallStore, mut closing: watch::Receiver<bool>) {
    let function = pool.plan().name.to_string();
    let spec = &pool.plan().spec;
    let per_slot = spec.batch.as_ref().map_or(1, |b| b.max_size as usize);
    let capacity = (spec.max_containers as usize)
        .saturating_mul(spec.concurrency as usize)
        .saturating_mul(per_slot)
        .min(MAX_IN_FLIGHT);
    let permits = Arc::new(Semaphore::new(capacity.max(1)));
    let work = store.signals().work(&function);
    loop {
        if *closing.borrow() {
            return;
        }
        let first = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p,
            _ = closing.changed() => return,
        };
        let Ok(first) = first else { return };
        let mut held = vec![first];
        while let Ok(p) = Arc::clone(&permits).try_acquire_owned() {
            held.push(p);
        }
        let (claimed, next_due) = match store.claim(&function, held.len()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(function, error = %e, "cannot claim durable calls");
                drop(held);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = closing.changed() => return,
                }
            }
        };
        if claimed.is_empty() {
            drop(held);
            let nap = next_due.map_or(Duration::from_secs(3600), |due| {
                Duration::from_millis((due - now_ms()).max(1) as u64)
            });
            tokio::select! {
                () = work.notified() => {}
                () = tokio::time::sleep(nap) => {}
                _ = closing.changed() => return,
            }
            continue;
        }
        let mut held = held.into_iter();
        for call in claimed {
            let permit = held.next();
            tokio::spawn(attempt(
                Arc::clone(&pool),
                store.clone(),
                call,
                permit,
                closing.clone(),
            ));
        }
    }
}

/// One attempt of one call. The permit is released as soon as the instance is done with
/// the call, so the next claim shares a commit with this call's outcome.
async fn attempt(
    pool: Arc<FunctionPool>,
    store: CallStore,
    call: Claimed,
    permit: Option<OwnedSemaphorePermit>,
    closing: watch::Receiver<bool>,
) {
    let spec = &pool.plan().spec;
    let id = call.call_id.as_str();
    // A retry goes alone: if its batch failed because of a neighbour's item, it must not
    // share a batch with that item again.
    let company = if call.failures > 0 {
        Company::Alone
    } else {
        Company::Batchable
    };
    let outcome = pool.invoke_with(call.input.clone(), company).await;
    drop(permit);
    let failure = match outcome.map(Outcome::buffered) {
        Ok(Ok(bytes)) => {
            record(store.finish(id, Finish::Succeeded(bytes)).await, id);
            return;
        }
        Ok(Err(d)) => {
            let failure = CallFailure {
                kind: d.error_type,
                message: d.error_message,
            };
            if input_at_fault(&failure.kind) {
                record(store.finish(id, Finish::Failed(failure)).await, id);
                return;
            }
            failure
        }
        Err(CallError::QueueFull(_) | CallError::ShuttingDown) => {
            // It never reached an instance: not an attempt.
            record(store.unclaim(id, 100).await, id);
            return;
        }
        Err(_) if *closing.borrow() => {
            // Killed because thaw is stopping; recovery queues it again.
            return;
        }
        Err(e @ CallError::ResponseTooLarge { .. }) => {
            let failure = CallFailure {
                kind: e.kind().to_owned(),
                message: e.to_string(),
            };
            record(store.finish(id, Finish::Failed(failure)).await, id);
            return;
        }
        Err(e) => CallFailure {
            kind: e.kind().to_owned(),
            message: e.to_string(),
        },
    };
    if call.failures < i64::from(spec.retries) {
        let delay = backoff(spec.retry_backoff.0, call.failures);
        tracing::info!(
            function = %pool.plan().name, call = id, attempt = call.attempts, error = %failure.message,
            retry_in_ms = delay.as_millis() as u64, "attempt failed; retrying"
        );
        record(store.retry(id, failure, delay.as_millis() as i64).await, id);
    } else {
        record(store.finish(id, Finish::Failed(failure)).await, id);
    }
}

/// `base × 2^failures`, at most [`BACKOFF_MAX`].
fn backoff(base: Duration, failures: i64) -> Duration {
    let factor = 1u32 << failures.clamp(0, 20);
    base.saturating_mul(factor).min(BACKOFF_MAX)
}

fn record(result: Result<(), super::store::StoreError>, id: &str) {
    if let Err(e) = result {
        // The store retries an outcome until it commits, so this is only reached once
        // its writer has been stopped for good (and `/healthz` says so): the call stays
        // running until the next start queues it again.
        tracing::error!(call = id, error = %e, "cannot record a call's outcome");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_errors_are_never_retried_and_the_rest_are() {
        assert!(input_at_fault("InvalidInput"));
        assert!(input_at_fault("PayloadTooLarge"));
        for retried in [
            "ModelError",
            "Internal",
            "InitError",
            "Unhandled",
            "invalidinput",
        ] {
            assert!(!input_at_fault(retried), "{retried}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 0), Duration::from_millis(100));
        assert_eq!(backoff(b, 2), Duration::from_millis(400));
        assert_eq!(backoff(b, 40), BACKOFF_MAX);
    }
}
