//! The analyze function binary. It restores three snapshots, named by role in the
//! manifest: `encoder` (MiniLM, for coherence and concept coverage), `words` (English
//! word frequencies, for jargon) and `llm` (SmolLM2 Q8_0, for the follow-up question).

use mimalloc::MiMalloc;
use thaw_fn::{ErrorType, FnError};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> Result<(), thaw_fn::Error> {
    thaw_fn::run(|| {
        let init_error =
            |e: &dyn std::fmt::Display| FnError::new(ErrorType::InitError, e.to_string());
        let device = thaw_models::device::default_device();
        let t = std::time::Instant::now();
        let encoder =
            thaw_models::SentenceEncoder::restore(&thaw_fn::snapshot_dir_for("encoder")?, &device)
                .map_err(|e| init_error(&e))?;
        let words = thaw_models::WordFrequencies::restore(&thaw_fn::snapshot_dir_for("words")?)
            .map_err(|e| init_error(&e))?;
        let chat = thaw_models::ChatModel::restore(&thaw_fn::snapshot_dir_for("llm")?, &device)
            .map_err(|e| init_error(&e))?;
        tracing::info!(
            target: "thaw::startup",
            load_ms = t.elapsed().as_millis() as u64,
            words = words.len(),
            "analyze models loaded"
        );
        Ok(analyze::Analyze::new(
            encoder,
            words,
            chat,
            analyze::Settings::from_env(),
        ))
    })
}
