//! The analyze function binary. It restores three snapshots, named by role in the
//! manifest: `encoder` (MiniLM, for coherence and concept coverage), `words` (English
//! word frequencies, for jargon) and `llm` (SmolLM2 Q8_0, for the follow-up question).

use mimalloc::MiMalloc;
use thaw_fn::FnError;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> Result<(), thaw_fn::Error> {
    thaw_fn::run(|| {
        let device = thaw_models::device::from_env().map_err(FnError::init)?;
        let t = std::time::Instant::now();
        let encoder =
            thaw_models::SentenceEncoder::restore(&thaw_fn::snapshot_dir_for("encoder")?, &device)
                .map_err(FnError::init)?;
        let words = thaw_models::WordFrequencies::restore(&thaw_fn::snapshot_dir_for("words")?)
            .map_err(FnError::init)?;
        let chat = thaw_models::ChatModel::restore(&thaw_fn::snapshot_dir_for("llm")?, &device)
            .map_err(FnError::init)?;
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
