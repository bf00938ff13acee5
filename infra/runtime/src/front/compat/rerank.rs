//! Cohere's and Jina's `POST /v1/rerank`, over a function with `rerank`'s contract:
//! `{"model", "query", "documents", "top_n", "return_documents"}` in, results with
//! `relevance_score` out, best first.

use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{call, json, parse, Compat, CompatError, Role};

/// A document as these APIs take it: a string, or an object with `text`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Document {
    Text(String),
    Object { text: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default)]
    model: Option<String>,
    query: String,
    documents: Vec<Document>,
    #[serde(default)]
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: Option<bool>,
}

/// `rerank`'s input, as the adapters send it.
#[derive(Debug, Serialize)]
pub(super) struct RerankInput<'a> {
    pub query: &'a str,
    pub documents: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_documents: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
}

/// `rerank`'s answer, the parts read here.
#[derive(Debug, Deserialize)]
pub(super) struct RerankOutput {
    pub results: Vec<Ranked>,
}

/// One scored document.
#[derive(Debug, Deserialize)]
pub(super) struct Ranked {
    pub index: usize,
    pub score: f32,
}

pub(super) async fn rerank(
    c: &Compat,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, CompatError> {
    let req: Request = parse(body)?;
    let documents: Vec<String> = req
        .documents
        .into_iter()
        .map(|d| match d {
            Document::Text(t) | Document::Object { text: t } => t,
        })
        .collect();
    let pool = c.target(Role::Rerank, req.model.as_deref(), headers)?;
    let out: RerankOutput = call(
        &pool,
        &RerankInput {
            query: &req.query,
            documents: &documents,
            top_k: req.top_n,
            return_documents: Some(false),
            normalize: Some(true),
        },
    )
    .await?;
    let with_documents = req.return_documents.unwrap_or(true);
    let results: Vec<Value> = out
        .results
        .iter()
        .map(|r| {
            let mut v = json!({"index": r.index, "relevance_score": r.score});
            if with_documents {
                v["document"] = json!({"text": documents.get(r.index)});
            }
            v
        })
        .collect();
    let model = req.model.unwrap_or_else(|| pool.plan().name.to_string());
    Ok(json(&json!({
        "id": uuid::Uuid::now_v7().to_string(),
        "model": model,
        "results": results,
        "meta": {"billed_units": {"search_units": 1}},
    })))
}
