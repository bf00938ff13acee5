//! The rerank function binary. Its scorer follows its snapshot: a `bert-cross-encoder`
//! snapshot reads each (query, document) pair; a `bert-sentence-encoder` snapshot
//! compares embeddings.

use mimalloc::MiMalloc;
use thaw_fn::FnError;
use thaw_snapshot::Architecture;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> Result<(), thaw_fn::Error> {
    thaw_fn::run(|| {
        let dir = thaw_fn::snapshot_dir()?;
        let device = thaw_models::device::from_env().map_err(FnError::init)?;
        let meta = thaw_snapshot::SnapshotMeta::read(&dir).map_err(FnError::init)?;
        let scorer = match meta.architecture {
            Architecture::BertCrossEncoder => rerank::Scorer::Cross(
                thaw_models::CrossEncoder::restore(&dir, &device).map_err(FnError::init)?,
            ),
            Architecture::BertSentenceEncoder => rerank::Scorer::Bi(
                thaw_models::SentenceEncoder::restore(&dir, &device)
                    .map_err(FnError::init)?,
            ),
            other => {
                return Err(FnError::init(format!(
                    "snapshot {:?} is a {other:?} model; rerank needs a BERT cross-encoder or sentence encoder",
                    meta.name
                )))
            }
        };
        tracing::info!(target: "thaw::startup", model = %meta.name, architecture = ?meta.architecture, "rerank ready");
        Ok(rerank::Rerank::new(scorer, rerank::Limits::from_env()))
    })
}
