//! The embed function binary: a `lambda_runtime` process that runs under `thaw serve`,
//! on AWS Lambda (as `bootstrap`) or in a Knative container.

use mimalloc::MiMalloc;
use thaw_fn::FnError;

// mimalloc: +45 to 55% on 256-token passages against glibc malloc, which churns page faults.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> Result<(), thaw_fn::Error> {
    thaw_fn::run(|| {
        let device = thaw_models::device::from_env().map_err(FnError::init)?;
        let encoder = thaw_models::SentenceEncoder::restore(&thaw_fn::snapshot_dir()?, &device)
            .map_err(FnError::init)?;
        let t = encoder.load_timings();
        tracing::info!(
            target: "thaw::startup",
            tokenizer_us = t.tokenizer.as_micros() as u64,
            weights_us = t.weights.as_micros() as u64,
            load_us = t.total.as_micros() as u64,
            "model loaded"
        );
        Ok(embed::Embed::new(encoder, embed::Limits::from_env()))
    })
}
