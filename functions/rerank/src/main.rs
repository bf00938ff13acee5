//! The rerank function binary. Its scorer follows its snapshot: a cross-encoder (BERT,
//! XLM-RoBERTa, DeBERTa-v2) reads each (query, document) pair; a sentence encoder (BERT,
//! XLM-RoBERTa, T5) compares embeddings.

use mimalloc::MiMalloc;
use thaw_fn::FnError;
use thaw_snapshot::Role;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> Result<(), thaw_fn::Error> {
    thaw_fn::run(|| {
        let dir = thaw_fn::snapshot_dir()?;
        let device = thaw_models::device::from_env().map_err(FnError::init)?;
        let meta = thaw_snapshot::SnapshotMeta::read(&dir).map_err(FnError::init)?;
        let scorer = match meta.architecture.role() {
            Role::CrossEncoder => rerank::Scorer::Cross(
                thaw_models::CrossEncoder::restore(&dir, &device).map_err(FnError::init)?,
            ),
            Role::Embedder => rerank::Scorer::Bi(
                thaw_models::SentenceEncoder::restore(&dir, &device).map_err(FnError::init)?,
            ),
            _ => {
                return Err(FnError::init(format!(
                "snapshot {:?} is a {} model; rerank needs a cross-encoder or a sentence encoder",
                meta.name,
                meta.architecture.name()
            )))
            }
        };
        tracing::info!(target: "thaw::startup", model = %meta.name, architecture = ?meta.architecture, "rerank ready");
        Ok(rerank::Rerank::new(scorer, rerank::Limits::from_env()))
    })
}
