//! The generate function binary: a `lambda_runtime` process that runs under `thaw serve`,
//! on AWS Lambda (as `bootstrap`) or in a Knative container.

use mimalloc::MiMalloc;
use thaw_fn::FnError;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> Result<(), thaw_fn::Error> {
    thaw_fn::run(|| {
        let device = thaw_models::device::from_env().map_err(FnError::init)?;
        let dirs = thaw_fn::snapshot_dirs();
        if dirs.is_empty() {
            return Err(FnError::init(
                "generate needs a GGUF chat model: set `snapshot` (or `snapshots`) in the manifest",
            ));
        }
        let mut models = Vec::with_capacity(dirs.len());
        for (role, dir) in dirs {
            let started = std::time::Instant::now();
            let model = thaw_models::ChatModel::restore(&dir, &device).map_err(FnError::init)?;
            tracing::info!(
                target: "thaw::startup",
                model = model.name(),
                role = role.as_deref().unwrap_or("-"),
                load_us = started.elapsed().as_micros() as u64,
                "model loaded"
            );
            models.push(generate::Served { role, model });
        }
        Ok(generate::Generate::new(
            models,
            generate::Limits::from_env(),
        ))
    })
}
