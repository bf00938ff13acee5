//! text-embeddings-inference's `POST /embed` (and `POST /`), `POST /rerank` and
//! `GET /info`, in TEI's request and reply shapes, over the routed functions.
//!
//! TEI's defaults are kept where they differ from thaw's functions: on `/embed`,
//! `truncate` is false (over-length input is an error, not silently cut), and rerank
//! scores are squashed unless `raw_scores`. thaw's rerank always fits each pair to the
//! model by truncating the text, so `/rerank` takes `truncate` absent or true and refuses
//! false. What TEI offers and the functions cannot do is refused, never ignored: prompts
//! (`prompt_name`), left truncation, shortened vectors.

use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::openai::{base64_f32, embed_all};
use super::rerank::{RerankInput, RerankOutput};
use super::{call, json, parse, Compat, CompatError, Role};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default)]
    normalize: Option<bool>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<String>,
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// What thaw does not do of TEI's options, said plainly.
fn refuse_unsupported(
    truncation_direction: Option<&str>,
    prompt_name: Option<&str>,
) -> Result<(), CompatError> {
    if let Some(d) = truncation_direction.filter(|d| !d.eq_ignore_ascii_case("right")) {
        return Err(CompatError::BadRequest(format!(
            "truncation_direction {d:?}: thaw's functions truncate on the right only"
        )));
    }
    if let Some(p) = prompt_name {
        return Err(CompatError::BadRequest(format!(
            "prompt_name {p:?}: this model has no prompts configured"
        )));
    }
    Ok(())
}

pub(super) async fn embed(
    c: &Compat,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, CompatError> {
    let req: EmbedRequest = parse(body)?;
    refuse_unsupported(
        req.truncation_direction.as_deref(),
        req.prompt_name.as_deref(),
    )?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(CompatError::BadRequest(format!(
                "encoding_format {other:?}: float or base64"
            )))
        }
    };
    let texts = match req.inputs {
        Inputs::One(t) => vec![t],
        Inputs::Many(t) => t,
    };
    if texts.is_empty() || texts.len() > super::openai::MAX_INPUTS {
        return Err(CompatError::BadRequest(format!(
            "inputs must hold 1 to {} texts, not {}",
            super::openai::MAX_INPUTS,
            texts.len()
        )));
    }
    let pool = c.target(Role::Embeddings, None, headers)?;
    let truncate = Some(req.truncate.unwrap_or(false));
    let outputs = embed_all(&pool, &texts, req.normalize, truncate).await?;
    let dims = outputs.first().map_or(0, |o| o.dims);
    if let Some(d) = req.dimensions.filter(|d| *d != dims) {
        return Err(CompatError::BadRequest(format!(
            "dimensions = {d}: this model gives {dims}-dimensional vectors and does not shorten them"
        )));
    }
    let vectors = outputs.iter().flat_map(|o| o.embeddings.iter());
    let reply: Vec<Value> = if base64 {
        vectors.map(|v| json!(base64_f32(v))).collect()
    } else {
        vectors.map(|v| json!(v)).collect()
    };
    Ok(json(&reply))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RerankRequest {
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<String>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
}

#[derive(Debug, Serialize)]
struct Rank {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

pub(super) async fn rerank(
    c: &Compat,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, CompatError> {
    let req: RerankRequest = parse(body)?;
    refuse_unsupported(req.truncation_direction.as_deref(), None)?;
    if req.truncate == Some(false) {
        return Err(CompatError::BadRequest(
            "truncate = false: thaw's rerank always fits each (query, text) pair to the model's \
             length by truncating the text"
                .into(),
        ));
    }
    let pool = c.target(Role::Rerank, None, headers)?;
    let out: RerankOutput = call(
        &pool,
        &RerankInput {
            query: &req.query,
            documents: &req.texts,
            top_k: None,
            return_documents: Some(false),
            normalize: Some(!req.raw_scores),
        },
    )
    .await?;
    let ranks: Vec<Rank> = out
        .results
        .into_iter()
        .map(|r| Rank {
            index: r.index,
            score: r.score,
            text: req
                .return_text
                .then(|| req.texts.get(r.index).cloned())
                .flatten(),
        })
        .collect();
    Ok(json(&ranks))
}

/// TEI's `/info`, from the routed embedding function's plan and snapshot.
pub(super) async fn info(c: &Compat, headers: &HeaderMap) -> Result<Response, CompatError> {
    let pool = c.target(Role::Embeddings, None, headers)?;
    let plan = pool.plan();
    let meta: Value = match &plan.snapshot_dir {
        Some(dir) => {
            let path = dir.join("snapshot.json");
            tokio::fs::read(&path)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        }
        None => Value::Null,
    };
    let spec = &plan.spec;
    let batch = spec.batch.as_ref().map_or(1, |b| b.max_size);
    let pooling = meta
        .get("pooling")
        .cloned()
        .unwrap_or_else(|| json!("mean"));
    Ok(json(&json!({
        "model_id": spec.snapshot.clone().unwrap_or_else(|| plan.name.to_string()),
        "model_sha": meta.pointer("/source/sha256"),
        "model_dtype": meta.get("dtype").cloned().unwrap_or_else(|| json!("float32")),
        "model_type": {"embedding": {"pooling": pooling}},
        "max_concurrent_requests": spec.max_queue,
        "max_input_length": meta.get("max_seq_length"),
        "max_batch_tokens": Value::Null,
        "max_batch_requests": batch,
        "max_client_batch_size": super::openai::MAX_INPUTS,
        "auto_truncate": false,
        "tokenization_workers": spec.max_containers,
        "version": env!("CARGO_PKG_VERSION"),
        "sha": Value::Null,
        "docker_label": Value::Null,
    })))
}
