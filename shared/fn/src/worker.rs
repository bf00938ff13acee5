//! The inference thread: the function's model lives on one dedicated OS thread, fed by a
//! bounded channel, answering each job on a oneshot. The async executor never runs model
//! code, so a long forward pass cannot stall the Runtime API loop.
//!
//! **In-instance batching.** With `AWS_LAMBDA_MAX_CONCURRENCY` > 1 several invocations
//! are in flight at once, and while the model is busy their jobs queue here. When the
//! thread frees, it takes every job already waiting (up to [`MAX_DRAINED`] requests) into
//! one [`Function::handle_batch`] call, as a batching server does, so the calls that
//! arrived together are computed together instead of one forward pass each. A lone job
//! is taken at once: nothing waits for company.

use std::panic::AssertUnwindSafe;

use tokio::sync::{mpsc, oneshot};

use crate::{FnError, Function};

/// Most requests one drain hands to `handle_batch`: bounds the latency the first job of a
/// drain pays for the others, and the memory of one call.
pub const MAX_DRAINED: usize = 256;

type Results<F> = Vec<Result<<F as Function>::Response, FnError>>;
type Job<F> = (Vec<<F as Function>::Request>, oneshot::Sender<Results<F>>);

/// Handle to the inference thread of a [`Function`].
#[derive(Debug)]
pub struct InferenceThread<F: Function> {
    jobs: mpsc::Sender<Job<F>>,
}

impl<F: Function> InferenceThread<F> {
    /// Starts the thread and builds the function on it. Returns once `init` has finished,
    /// with its error if it failed.
    pub fn spawn<I>(capacity: usize, init: I) -> Result<Self, FnError>
    where
        I: FnOnce() -> Result<F, FnError> + Send + 'static,
    {
        let (jobs, rx) = mpsc::channel::<Job<F>>(capacity);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let function = match std::panic::catch_unwind(AssertUnwindSafe(init)) {
                    Ok(Ok(f)) => {
                        let _ = ready_tx.send(Ok(()));
                        f
                    }
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    Err(panic) => {
                        let _ = ready_tx.send(Err(FnError::new(
                            thaw_protocol::ErrorType::InitError,
                            format!("init panicked: {}", panic_message(&panic)),
                        )));
                        return;
                    }
                };
                serve(function, rx);
            })
            .map_err(|e| {
                FnError::new(
                    thaw_protocol::ErrorType::InitError,
                    format!("cannot start inference thread: {e}"),
                )
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { jobs }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(FnError::new(
                thaw_protocol::ErrorType::InitError,
                "inference thread died during init",
            )),
        }
    }

    /// Runs a batch on the inference thread and waits for its results.
    pub async fn call(&self, requests: Vec<F::Request>) -> Results<F> {
        let n = requests.len();
        let (tx, rx) = oneshot::channel();
        if self.jobs.send((requests, tx)).await.is_err() {
            return failed(n, "inference thread stopped");
        }
        rx.await
            .unwrap_or_else(|_| failed(n, "inference thread stopped"))
    }
}

/// The thread's loop: take what is waiting, compute it in one call, answer each job.
fn serve<F: Function>(mut function: F, mut rx: mpsc::Receiver<Job<F>>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut items = jobs[0].0.len();
        while items < MAX_DRAINED {
            match rx.try_recv() {
                Ok(job) => {
                    items += job.0.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut counts = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut requests = Vec::with_capacity(items);
        for (job_requests, reply) in jobs {
            counts.push(job_requests.len());
            replies.push(reply);
            requests.extend(job_requests);
        }
        // A panic may leave the model half-updated: never serve from it again. Exit, so
        // the platform reports a crash and starts a clean instance.
        let results =
            match std::panic::catch_unwind(AssertUnwindSafe(|| function.handle_batch(requests))) {
                Ok(results) => results,
                Err(panic) => {
                    eprintln!("handler panicked: {}", panic_message(&panic));
                    std::process::exit(101);
                }
            };
        // A handler that answers the wrong number of results is a bug; never let it shift
        // one caller's answer onto another.
        let mut results = if results.len() == items {
            Some(results.into_iter())
        } else {
            None
        };
        for (n, reply) in counts.into_iter().zip(replies) {
            let answer = match results.as_mut() {
                Some(r) => r.by_ref().take(n).collect(),
                None => failed(n, "handler returned the wrong number of results"),
            };
            let _ = reply.send(answer);
        }
    }
}

fn failed<T>(n: usize, why: &str) -> Vec<Result<T, FnError>> {
    (0..n)
        .map(|_| Err(FnError::new(thaw_protocol::ErrorType::Internal, why)))
        .collect()
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records the size of every `handle_batch` call; the first call blocks until the
    /// test lets it go, so later jobs queue behind it.
    struct Recorder {
        sizes: Arc<Mutex<Vec<usize>>>,
        gate: std::sync::mpsc::Receiver<()>,
    }

    impl Function for Recorder {
        type Request = u32;
        type Response = u32;

        fn handle(&mut self, request: u32) -> Result<u32, FnError> {
            if request == 0 {
                return Err(FnError::invalid_input("zero"));
            }
            Ok(request * 10)
        }

        fn handle_batch(&mut self, requests: Vec<u32>) -> Vec<Result<u32, FnError>> {
            let first = self.sizes.lock().map(|mut s| {
                s.push(requests.len());
                s.len() == 1
            });
            if first.unwrap_or(false) {
                let _ = self.gate.recv();
            }
            requests.into_iter().map(|r| self.handle(r)).collect()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_waiting_while_the_model_is_busy_are_computed_in_one_call_and_answered_each() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = std::sync::mpsc::channel();
        let recorded = Arc::clone(&sizes);
        let worker = Arc::new(
            InferenceThread::spawn(64, move || {
                Ok(Recorder {
                    sizes: recorded,
                    gate,
                })
            })
            .expect("starts"),
        );
        // The first job occupies the model until the gate opens.
        let first = tokio::spawn({
            let w = Arc::clone(&worker);
            async move { w.call(vec![1]).await }
        });
        while sizes.lock().map(|s| s.is_empty()).unwrap_or(true) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let waiting: Vec<_> = (2..=9u32)
            .map(|i| {
                let w = Arc::clone(&worker);
                // One bad request among them fails only its own caller.
                let r = if i == 5 { 0 } else { i };
                tokio::spawn(async move { (r, w.call(vec![r]).await) })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        open.send(()).expect("gate");
        assert_eq!(first.await.expect("joins")[0], Ok(10));
        for job in waiting {
            let (r, got) = job.await.expect("joins");
            assert_eq!(got.len(), 1);
            if r == 0 {
                assert!(got[0].is_err(), "{got:?}");
            } else {
                assert_eq!(got[0], Ok(r * 10));
            }
        }
        let sizes = sizes.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(sizes, vec![1, 8], "the 8 waiting jobs share one call");
    }

    #[tokio::test]
    async fn a_lone_job_is_computed_at_once() {
        struct Echo;
        impl Function for Echo {
            type Request = u32;
            type Response = u32;
            fn handle(&mut self, r: u32) -> Result<u32, FnError> {
                Ok(r)
            }
        }
        let worker = InferenceThread::spawn(4, || Ok(Echo)).expect("starts");
        assert_eq!(worker.call(vec![7, 8]).await, vec![Ok(7), Ok(8)]);
    }
}
