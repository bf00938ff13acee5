//! The inference thread: the function's model lives on one dedicated OS thread, fed by a
//! bounded channel, answering each job on a oneshot. The async executor never runs model
//! code, so a long forward pass cannot stall the Runtime API loop.

use std::panic::AssertUnwindSafe;

use tokio::sync::{mpsc, oneshot};

use crate::{FnError, Function};

type Job<F> = (
    Vec<<F as Function>::Request>,
    oneshot::Sender<Vec<Result<<F as Function>::Response, FnError>>>,
);

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
        let (jobs, mut rx) = mpsc::channel::<Job<F>>(capacity);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let mut function = match std::panic::catch_unwind(AssertUnwindSafe(init)) {
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
                while let Some((requests, reply)) = rx.blocking_recv() {
                    // A panic may leave the model half-updated: never serve from it again.
                    // Exit, so the platform reports a crash and starts a clean instance.
                    match std::panic::catch_unwind(AssertUnwindSafe(|| {
                        function.handle_batch(requests)
                    })) {
                        Ok(results) => {
                            let _ = reply.send(results);
                        }
                        Err(panic) => {
                            eprintln!("handler panicked: {}", panic_message(&panic));
                            std::process::exit(101);
                        }
                    }
                }
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
    pub async fn call(&self, requests: Vec<F::Request>) -> Vec<Result<F::Response, FnError>> {
        let n = requests.len();
        let gone = || {
            (0..n)
                .map(|_| {
                    Err(FnError::new(
                        thaw_protocol::ErrorType::Internal,
                        "inference thread stopped",
                    ))
                })
                .collect()
        };
        let (tx, rx) = oneshot::channel();
        if self.jobs.send((requests, tx)).await.is_err() {
            return gone();
        }
        let mut results = rx.await.unwrap_or_else(|_| gone());
        // A handler that answers the wrong number of results is a bug; never let it shift
        // one caller's answer onto another.
        if results.len() != n {
            results = (0..n)
                .map(|_| {
                    Err(FnError::new(
                        thaw_protocol::ErrorType::Internal,
                        "handler returned the wrong number of results",
                    ))
                })
                .collect();
        }
        results
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
