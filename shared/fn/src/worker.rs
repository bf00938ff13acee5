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
//!
//! A streaming request is a job of its own: it is never batched, and runs after the
//! batch it was drained with, writing its chunks as it goes ([`crate::stream`]).

use std::panic::AssertUnwindSafe;

use tokio::sync::{mpsc, oneshot};

use crate::stream::{Chunks, CHUNKS_IN_FLIGHT};
use crate::{FnError, Function};

/// Most requests one drain hands to `handle_batch`: bounds the latency the first job of a
/// drain pays for the others, and the memory of one call.
pub const MAX_DRAINED: usize = 256;

type Results<F> = Vec<Result<<F as Function>::Response, FnError>>;

/// A streaming job's end: `Ok` once the handler returned, or its error.
pub(crate) type StreamEnd = oneshot::Receiver<Result<(), FnError>>;

enum Job<F: Function> {
    /// Requests computed together, one result each.
    Batch(Vec<F::Request>, oneshot::Sender<Results<F>>),
    /// One request whose response streams into its chunks.
    Stream(F::Request, Chunks, oneshot::Sender<Result<(), FnError>>),
}

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
        Self::start_with(capacity, init)
    }

    /// Starts the thread with a function already loaded (in a fork of a warm template).
    pub fn start(capacity: usize, function: F) -> Result<Self, FnError> {
        Self::start_with(capacity, move || Ok(function))
    }

    fn start_with<I>(capacity: usize, init: I) -> Result<Self, FnError>
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
        if self.jobs.send(Job::Batch(requests, tx)).await.is_err() {
            return failed(n, "inference thread stopped");
        }
        rx.await
            .unwrap_or_else(|_| failed(n, "inference thread stopped"))
    }

    /// Runs a streaming request on the inference thread: its chunks as they are written,
    /// and how it ended once it has.
    pub(crate) async fn stream(
        &self,
        request: F::Request,
    ) -> (mpsc::Receiver<bytes::Bytes>, StreamEnd) {
        let (chunks, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (done_tx, done) = oneshot::channel();
        let job = Job::Stream(request, Chunks::new(chunks), done_tx);
        if let Err(mpsc::error::SendError(Job::Stream(_, _, done_tx))) = self.jobs.send(job).await {
            let _ = done_tx.send(Err(FnError::new(
                thaw_protocol::ErrorType::Internal,
                "inference thread stopped",
            )));
        }
        (rx, done)
    }
}

/// The thread's loop: take what is waiting, compute the batch in one call and answer
/// each job, then run the streaming jobs drained with it, in order.
fn serve<F: Function>(mut function: F, mut rx: mpsc::Receiver<Job<F>>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::new();
        let mut streams = Vec::new();
        let mut items = 0;
        let mut sort = |job: Job<F>, items: &mut usize| match job {
            Job::Batch(requests, reply) => {
                *items += requests.len();
                batch.push((requests, reply));
            }
            Job::Stream(request, chunks, done) => streams.push((request, chunks, done)),
        };
        sort(first, &mut items);
        while items < MAX_DRAINED {
            match rx.try_recv() {
                Ok(job) => sort(job, &mut items),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            run_batch(&mut function, batch, items);
        }
        for (request, mut chunks, done) in streams {
            let ended = guarded(|| function.handle_stream(request, &mut chunks));
            drop(chunks);
            let _ = done.send(ended);
        }
    }
}

/// Runs `f`, exiting the process if it panics: a panic may leave the model
/// half-updated, so it is never served from again; the platform reports a crash and
/// starts a clean instance.
fn guarded<T>(f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(t) => t,
        Err(panic) => {
            eprintln!("handler panicked: {}", panic_message(&panic));
            std::process::exit(101);
        }
    }
}

type BatchJob<F> = (Vec<<F as Function>::Request>, oneshot::Sender<Results<F>>);

/// Computes the drained batch jobs in one `handle_batch` call and answers each.
fn run_batch<F: Function>(function: &mut F, jobs: Vec<BatchJob<F>>, items: usize) {
    let mut counts = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let mut requests = Vec::with_capacity(items);
    for (job_requests, reply) in jobs {
        counts.push(job_requests.len());
        replies.push(reply);
        requests.extend(job_requests);
    }
    let results = guarded(|| function.handle_batch(requests));
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
