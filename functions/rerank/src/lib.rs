//! `rerank`: a query and documents in, the documents' relevance scores out, best first.
//!
//! Request (the shape TEI and Cohere users know):
//! `{"query", "documents": [string | {"text"}], "top_k"?, "return_documents"?,
//! "batch_size"?, "normalize"?}`.
//! Reply: `{"results": [{"index", "score", "document"?: {"text"}}], "model"}`, sorted by
//! score, descending (ties by index).
//!
//! The scorer follows the snapshot's architecture:
//! - **cross-encoder** (`bert-cross-encoder`): each (query, document) pair is read together
//!   and scored with the classifier's raw logit; `"normalize": true` applies a sigmoid.
//! - **bi-encoder** (`bert-sentence-encoder`): the cosine of the query's and the
//!   document's normalised embeddings, the same vectors `embed` returns. Cosines are
//!   already bounded, so `normalize` leaves them as they are.

use serde::{Deserialize, Serialize};
use thaw_fn::{FnError, Function};
use thaw_models::{CrossEncoder, EncodeOptions, ModelError, SentenceEncoder};

/// A document: a bare string or `{"text": ..}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Document {
    /// `"text"`.
    Text(String),
    /// `{"text": "text"}`.
    Object(DocumentObject),
}

/// `{"text": ..}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DocumentObject {
    /// The document's text.
    pub text: String,
}

impl Document {
    fn text(&self) -> &str {
        match self {
            Self::Text(t) => t,
            Self::Object(o) => &o.text,
        }
    }
}

/// A rerank request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    /// What the documents are ranked against.
    pub query: String,
    /// The candidates.
    pub documents: Vec<Document>,
    /// Return only the best `top_k`.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Echo each document's text in its result.
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// Pairs (or texts) per forward pass, 1 to 256 (default 32).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Sigmoid over cross-encoder logits.
    #[serde(default)]
    pub normalize: Option<bool>,
}

/// One ranked document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RerankResult {
    /// Its position in the request.
    pub index: usize,
    /// Its relevance: a logit (cross-encoder), a probability (normalised), or a cosine.
    pub score: f32,
    /// Its text, when asked for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub document: Option<DocumentObject>,
}

/// A rerank reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RerankResponse {
    /// Best first.
    pub results: Vec<RerankResult>,
    /// The snapshot that scored them.
    pub model: String,
}

/// Request limits; each can be set from the environment.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most documents (`RERANK_MAX_DOCUMENTS`, default 1,000).
    pub max_documents: usize,
    /// Longest query or document in characters (`RERANK_MAX_CHARS`, default 100,000).
    pub max_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_documents: 1000,
            max_chars: 100_000,
        }
    }
}

impl Limits {
    /// Defaults, overridden by the environment where set and valid.
    pub fn from_env() -> Self {
        let d = Self::default();
        Self {
            max_documents: thaw_fn::env_limit("RERANK_MAX_DOCUMENTS", d.max_documents),
            max_chars: thaw_fn::env_limit("RERANK_MAX_CHARS", d.max_chars),
        }
    }
}

/// What scores the pairs.
#[derive(Debug)]
pub enum Scorer {
    /// Reads query and document together.
    Cross(CrossEncoder),
    /// Compares separate embeddings.
    Bi(SentenceEncoder),
}

impl Scorer {
    fn name(&self) -> &str {
        match self {
            Self::Cross(m) => m.name(),
            Self::Bi(m) => m.name(),
        }
    }

    fn score(&self, query: &str, docs: &[&str], batch_size: usize) -> Result<Vec<f32>, ModelError> {
        match self {
            Self::Cross(m) => m.score(query, docs, batch_size),
            Self::Bi(m) => {
                let mut texts = Vec::with_capacity(docs.len() + 1);
                texts.push(query);
                texts.extend_from_slice(docs);
                let encoded = m.encode(&texts, EncodeOptions::default())?;
                let (q, ds) = encoded
                    .embeddings
                    .split_first()
                    .ok_or_else(|| ModelError::Tokenize("no query embedding".into()))?;
                Ok(ds.iter().map(|d| cosine_of_unit(q, d)).collect())
            }
        }
    }
}

/// The cosine of two L2-normalised vectors: their dot product.
fn cosine_of_unit(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The rerank function.
#[derive(Debug)]
pub struct Rerank {
    scorer: Scorer,
    limits: Limits,
}

impl Rerank {
    /// Wraps a loaded scorer.
    pub fn new(scorer: Scorer, limits: Limits) -> Self {
        Self { scorer, limits }
    }

    /// Ranks one request.
    pub fn rerank(&self, r: &RerankRequest) -> Result<RerankResponse, FnError> {
        let n = r.documents.len();
        if n == 0 {
            return Err(FnError::invalid_input("\"documents\" is empty"));
        }
        if n > self.limits.max_documents {
            // A list over its documented length is a malformed request (400); only text
            // over its length is a payload problem (413).
            return Err(FnError::invalid_input(format!(
                "{n} documents in one request; the limit is {}",
                self.limits.max_documents
            )));
        }
        if r.top_k == Some(0) {
            return Err(FnError::invalid_input("\"top_k\" must be at least 1"));
        }
        let batch_size = r.batch_size.unwrap_or(32);
        if !(1..=256).contains(&batch_size) {
            return Err(FnError::invalid_input("\"batch_size\" must be 1 to 256"));
        }
        let too_long = |what: String, t: &str| {
            let chars = t.chars().count();
            (chars > self.limits.max_chars).then(|| {
                FnError::payload_too_large(format!(
                    "{what} has {chars} characters; the limit is {}",
                    self.limits.max_chars
                ))
            })
        };
        if let Some(e) = too_long("the query".into(), &r.query) {
            return Err(e);
        }
        let docs: Vec<&str> = r.documents.iter().map(Document::text).collect();
        for (i, d) in docs.iter().enumerate() {
            if let Some(e) = too_long(format!("document {i}"), d) {
                return Err(e);
            }
        }
        let scores = self
            .scorer
            .score(&r.query, &docs, batch_size)
            .map_err(|e| {
                if e.is_input_error() {
                    FnError::invalid_input(e.to_string())
                } else {
                    FnError::model(e.to_string())
                }
            })?;
        let squash = r.normalize.unwrap_or(false) && matches!(self.scorer, Scorer::Cross(_));
        let mut results: Vec<RerankResult> = scores
            .into_iter()
            .enumerate()
            .map(|(index, s)| RerankResult {
                index,
                score: if squash { sigmoid(s) } else { s },
                document: r.return_documents.unwrap_or(false).then(|| DocumentObject {
                    text: docs[index].to_owned(),
                }),
            })
            .collect();
        results.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        results.truncate(r.top_k.unwrap_or(n));
        Ok(RerankResponse {
            results,
            model: self.scorer.name().to_owned(),
        })
    }
}

impl Function for Rerank {
    type Request = RerankRequest;
    type Response = RerankResponse;

    fn handle(&mut self, request: RerankRequest) -> Result<RerankResponse, FnError> {
        self.rerank(&request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_strings_or_text_objects_and_nothing_else() {
        let r: RerankRequest = serde_json::from_str(
            r#"{"query": "q", "documents": ["a", {"text": "b"}], "top_k": 1}"#,
        )
        .expect("valid");
        assert_eq!(r.documents[1].text(), "b");
        assert!(serde_json::from_str::<RerankRequest>(
            r#"{"query": "q", "documents": [{"body": "b"}]}"#
        )
        .is_err());
        assert!(
            serde_json::from_str::<RerankRequest>(r#"{"query": "q", "documents": [1]}"#).is_err()
        );
        assert!(serde_json::from_str::<RerankRequest>(r#"{"documents": ["a"]}"#).is_err());
    }

    #[test]
    fn sigmoid_is_centred() {
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        assert!(sigmoid(10.0) > 0.9999);
    }
}
