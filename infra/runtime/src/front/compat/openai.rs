//! OpenAI's `POST /v1/embeddings` and `GET /v1/models`, over a function with `embed`'s
//! contract.
//!
//! The SDK asks for `encoding_format: "base64"` unless told otherwise: each vector is
//! then its f32 values, little-endian, in base64, which is what it decodes. A list of
//! up to [`MAX_INPUTS`] texts is split into calls of [`CHUNK`] (embed's own limit per
//! call), run at once, so a large request spreads over the function's instances and
//! batches. Token-id input is refused: the function tokenizes with its model's own
//! tokenizer, and ids from another tokenizer would embed garbage. As on OpenAI, a text
//! longer than the model's context is an error, not silently cut, and an empty text is
//! refused.

use std::collections::BTreeSet;

use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{call, json, parse, Compat, CompatError, Role};

/// Most texts in one request, as OpenAI allows.
pub(super) const MAX_INPUTS: usize = 2048;
/// Texts per call to the function: `embed`'s `EMBED_MAX_TEXTS` default.
pub(super) const CHUNK: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    input: Input,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<Format>,
    #[serde(default)]
    dimensions: Option<usize>,
    /// An end-user id for abuse tracking; thaw has no use for it.
    #[serde(default, rename = "user")]
    _user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
    Tokens(serde::de::IgnoredAny),
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    Float,
    Base64,
}

/// `embed`'s input, as this adapter sends it.
#[derive(Debug, Serialize)]
pub(super) struct EmbedInput<'a> {
    pub texts: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
}

/// `embed`'s answer, the parts read here.
#[derive(Debug, Deserialize)]
pub(super) struct EmbedOutput {
    pub embeddings: Vec<Vec<f32>>,
    pub dims: usize,
    #[serde(default)]
    pub tokens: Vec<usize>,
}

pub(super) async fn embeddings(
    c: &Compat,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, CompatError> {
    let req: EmbeddingsRequest = parse(body)?;
    let texts = match req.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
        Input::Tokens(_) => {
            return Err(CompatError::BadRequest(
                "input must be a string or a list of strings (token-id input is not \
                 accepted: the function tokenizes with its model's own tokenizer)"
                    .into(),
            ))
        }
    };
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(CompatError::BadRequest(format!(
            "input[{i}] is empty: each text must hold at least one character"
        )));
    }
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(CompatError::BadRequest(format!(
            "input must hold 1 to {MAX_INPUTS} texts, not {}",
            texts.len()
        )));
    }
    let pool = c.target(Role::Embeddings, req.model.as_deref(), headers)?;
    let outputs = embed_all(&pool, &texts, None, Some(false)).await?;
    let dims = outputs.first().map_or(0, |o| o.dims);
    if let Some(d) = req.dimensions.filter(|d| *d != dims) {
        return Err(CompatError::BadRequest(format!(
            "dimensions = {d}: this model gives {dims}-dimensional vectors and does not shorten them"
        )));
    }
    let format = req.encoding_format.unwrap_or(Format::Float);
    let mut data = Vec::with_capacity(texts.len());
    let mut tokens = 0usize;
    for (index, vector) in outputs.iter().flat_map(|o| o.embeddings.iter()).enumerate() {
        let embedding = match format {
            Format::Float => json!(vector),
            Format::Base64 => json!(base64_f32(vector)),
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    for o in &outputs {
        tokens += o.tokens.iter().sum::<usize>();
    }
    let model = req.model.unwrap_or_else(|| pool.plan().name.to_string());
    Ok(json(&json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

/// `texts` through the embedding function, [`CHUNK`] per call, all calls at once; the
/// answers in order, each checked to hold one vector per text.
pub(super) async fn embed_all(
    pool: &crate::pool::FunctionPool,
    texts: &[String],
    normalize: Option<bool>,
    truncate: Option<bool>,
) -> Result<Vec<EmbedOutput>, CompatError> {
    let outputs: Vec<EmbedOutput> = try_join_all(texts.chunks(CHUNK).map(|chunk| {
        call(
            pool,
            EmbedInput {
                texts: chunk,
                normalize,
                truncate,
            },
        )
    }))
    .await?;
    for (chunk, out) in texts.chunks(CHUNK).zip(&outputs) {
        if out.embeddings.len() != chunk.len() {
            return Err(CompatError::BadReply(format!(
                "function {} gave {} vectors for {} texts",
                pool.plan().name,
                out.embeddings.len(),
                chunk.len()
            )));
        }
    }
    Ok(outputs)
}

/// A vector as OpenAI's base64 encoding: its f32 values, little-endian.
pub(super) fn base64_f32(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `GET /v1/models`: the routed functions, and the snapshots they serve (a `model` may
/// name either; a function serving several models is listed by its models only).
pub(super) fn models(rt: &crate::Runtime) -> Response {
    let routed = [&rt.routes.embeddings, &rt.routes.rerank, &rt.routes.chat];
    let mut ids = BTreeSet::new();
    for name in routed.into_iter().flatten() {
        // A function serving several models needs a `model` naming one: list those.
        let several = rt
            .pools
            .get(name.as_str())
            .is_some_and(|p| p.plan().spec.snapshots.len() > 1);
        if !several {
            ids.insert(name.to_string());
        }
        if let Some(spec) = rt.pools.get(name.as_str()).map(|p| &p.plan().spec) {
            ids.extend(spec.snapshot.iter().cloned());
            ids.extend(spec.snapshots.values().cloned());
        }
    }
    let data: Vec<Value> = ids
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "thaw"}))
        .collect();
    json(&json!({"object": "list", "data": data}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32_as_the_sdk_decodes_it() {
        let encoded = base64_f32(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        assert_eq!(bytes, [0, 0, 128, 63, 0, 0, 32, 192]);
    }

    #[test]
    fn requests_parse_as_the_sdk_sends_them() {
        let one: EmbeddingsRequest =
            serde_json::from_str(r#"{"input":"hi","model":"embed","encoding_format":"base64"}"#)
                .expect("one");
        assert!(matches!(one.input, Input::One(_)));
        assert_eq!(one.encoding_format, Some(Format::Base64));
        let tokens: EmbeddingsRequest =
            serde_json::from_str(r#"{"input":[[1,2]],"model":"m"}"#).expect("tokens");
        assert!(matches!(tokens.input, Input::Tokens(_)));
        assert!(serde_json::from_str::<EmbeddingsRequest>(r#"{"input":"x","nope":1}"#).is_err());
    }
}
