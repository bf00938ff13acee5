//! Routes in the shapes other serving stacks' clients already speak, so that the OpenAI
//! SDK, Hugging Face's `InferenceClient`, TEI clients and Cohere- or Jina-style rerank
//! clients work against thaw unchanged.
//!
//! The routes are one declared table, [`ROUTES`]: a path, and the [`Api`] whose adapter
//! turns the request into the input of a function with `embed`'s, `rerank`'s or `generate`'s contract
//! and that function's answer into the reply. Every request goes through the function's
//! pool like any call, so scaling from zero, batching, queue limits, metrics and the
//! function's `url.auth` all apply; nothing here computes an embedding.
//!
//! | route | api | function |
//! |---|---|---|
//! | `POST /v1/embeddings` | OpenAI embeddings (string or list, `encoding_format` float or base64, `usage`) | `model`, else `[routes] embeddings` |
//! | `GET /v1/models` | OpenAI model list | the routed functions and their snapshots |
//! | `POST /embed`, `POST /` | TEI embed | `[routes] embeddings` |
//! | `POST /rerank` | TEI rerank | `[routes] rerank` |
//! | `GET /info` | TEI info | `[routes] embeddings` |
//! | `POST /v1/rerank` | Cohere/Jina rerank | `model`, else `[routes] rerank` |
//! | `POST /v1/chat/completions` | OpenAI chat (`stream` false or true) | `model`, else `[routes] chat` |
//!
//! A `model` names a function, or a snapshot (its `snapshot`, or one of its `snapshots`):
//! then the routed function if it serves that snapshot, else the first function (by name)
//! that does. Only functions with the route's contract count: the one `[routes]` names,
//! and those running thaw's `embed`, `rerank` or `generate` binary. Errors answer in each API's own
//! shape ([`CompatError`], mapped in one place).

mod chat;
mod error;
mod openai;
mod rerank;
mod sse;
mod tei;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use self::error::CompatError;
use self::error::Dialect;
use super::auth::Guard;
use super::{read_body, Shared};
use crate::pool::FunctionPool;

/// One compatible route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path.
    pub path: &'static str,
    /// The API it speaks.
    pub api: Api,
}

/// The APIs the routes speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI `embeddings.create`.
    OpenAiEmbeddings,
    /// OpenAI `models.list`.
    OpenAiModels,
    /// TEI `/embed`.
    TeiEmbed,
    /// TEI `/rerank`.
    TeiRerank,
    /// TEI `/info`.
    TeiInfo,
    /// Cohere's and Jina's `/v1/rerank`.
    Rerank,
    /// OpenAI `chat.completions.create`.
    OpenAiChat,
}

/// Which contract a route's function has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `embed`'s: `{"texts"}` in, `{"embeddings", "dims", "model", "tokens"}` out.
    Embeddings,
    /// `rerank`'s: `{"query", "documents"}` in, `{"results", "model"}` out.
    Rerank,
    /// `generate`'s: `{"messages", ...}` in, `{"text", "finish_reason", "usage", "model"}` out.
    Chat,
}

impl Role {
    /// thaw's function binary with this contract.
    fn binary(self) -> &'static str {
        match self {
            Self::Embeddings => "embed",
            Self::Rerank => "rerank",
            Self::Chat => "generate",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Embeddings => "embeddings",
            Self::Rerank => "rerank",
            Self::Chat => "chat",
        }
    }
}

impl Api {
    fn dialect(self) -> Dialect {
        match self {
            Self::OpenAiEmbeddings | Self::OpenAiModels | Self::OpenAiChat => Dialect::OpenAi,
            Self::TeiEmbed | Self::TeiRerank | Self::TeiInfo => Dialect::Tei,
            Self::Rerank => Dialect::Cohere,
        }
    }
}

/// Every compatible route.
pub const ROUTES: [Route; 8] = [
    Route {
        method: Method::POST,
        path: "/v1/embeddings",
        api: Api::OpenAiEmbeddings,
    },
    Route {
        method: Method::GET,
        path: "/v1/models",
        api: Api::OpenAiModels,
    },
    Route {
        method: Method::POST,
        path: "/embed",
        api: Api::TeiEmbed,
    },
    Route {
        method: Method::POST,
        path: "/",
        api: Api::TeiEmbed,
    },
    Route {
        method: Method::POST,
        path: "/rerank",
        api: Api::TeiRerank,
    },
    Route {
        method: Method::GET,
        path: "/info",
        api: Api::TeiInfo,
    },
    Route {
        method: Method::POST,
        path: "/v1/rerank",
        api: Api::Rerank,
    },
    Route {
        method: Method::POST,
        path: "/v1/chat/completions",
        api: Api::OpenAiChat,
    },
];

/// What a handler has: the runtime, and the guard that checks the target function's
/// `url.auth` (the function is known only once the body is read).
#[derive(Clone)]
pub(super) struct Compat {
    rt: Shared,
    guard: Guard,
}

/// The routes of [`ROUTES`]; the caller layers the control-plane guard over them.
pub(super) fn routes(rt: Shared, guard: Guard) -> Router<Shared> {
    let state = Compat { rt, guard };
    let mut router = Router::new();
    for route in &ROUTES {
        let Ok(filter) = MethodFilter::try_from(route.method.clone()) else {
            continue;
        };
        let api = route.api;
        router = router.route(
            route.path,
            on(
                filter,
                move |State(c): State<Compat>, headers: HeaderMap, body: Body| {
                    handle(c, api, headers, body)
                },
            ),
        );
    }
    router.with_state(state)
}

async fn handle(c: Compat, api: Api, headers: HeaderMap, body: Body) -> Response {
    let answer = match api {
        Api::OpenAiModels => Ok(openai::models(&c.rt)),
        Api::TeiInfo => tei::info(&c, &headers).await,
        _ => match read_body(body).await {
            Err(e) => Err(CompatError::from(e)),
            Ok(body) => match api {
                Api::OpenAiEmbeddings => openai::embeddings(&c, &headers, &body).await,
                Api::TeiEmbed => tei::embed(&c, &headers, &body).await,
                Api::TeiRerank => tei::rerank(&c, &headers, &body).await,
                Api::OpenAiChat => chat::completions(&c, &headers, &body).await,
                _ => rerank::rerank(&c, &headers, &body).await,
            },
        },
    };
    answer.unwrap_or_else(|e| e.into_response_for(api.dialect()))
}

impl Compat {
    /// The function a request for `role` reaches: the one `model` names (a function, or a
    /// snapshot), else the routed one; checked against its `url.auth`.
    fn target(
        &self,
        role: Role,
        model: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Arc<FunctionPool>, CompatError> {
        if !self.rt.accepting() {
            return Err(CompatError::ShuttingDown);
        }
        let routed = match role {
            Role::Embeddings => self.rt.routes.embeddings.as_ref(),
            Role::Rerank => self.rt.routes.rerank.as_ref(),
            Role::Chat => self.rt.routes.chat.as_ref(),
        }
        .map(|f| f.as_str());
        // A function answers a route family when the manifest routes it there, or when it
        // runs thaw's own binary with that contract; any other function (analyze, a
        // Python function) is never reached by a `model` that happens to name it or one
        // of its snapshots.
        let speaks = |f: &str| {
            routed == Some(f)
                || self
                    .rt
                    .pools
                    .get(f)
                    .is_some_and(|p| p.plan().spec.binary.as_deref() == Some(role.binary()))
        };
        let name = match model.filter(|m| !m.is_empty()) {
            None => routed.ok_or(CompatError::NoRoute(role.as_str()))?,
            Some(m) if self.rt.pools.contains_key(m) && speaks(m) => m,
            Some(m) => {
                let serves = |f: &str| {
                    speaks(f)
                        && self.rt.pools.get(f).is_some_and(|p| {
                            let spec = &p.plan().spec;
                            spec.snapshot.as_deref() == Some(m)
                                || spec.snapshots.values().any(|s| s == m)
                        })
                };
                routed
                    .filter(|f| serves(f))
                    .or_else(|| self.rt.pools.keys().map(String::as_str).find(|f| serves(f)))
                    .ok_or_else(|| CompatError::ModelNotFound(m.to_owned()))?
            }
        };
        if !self.guard.allows(name, headers) {
            return Err(CompatError::Unauthorized);
        }
        self.rt
            .pools
            .get(name)
            .cloned()
            .ok_or_else(|| CompatError::ModelNotFound(name.to_owned()))
    }
}

/// Calls `pool` with `input` and reads its answer as `T`.
async fn call<I: Serialize, T: DeserializeOwned>(
    pool: &FunctionPool,
    input: I,
) -> Result<T, CompatError> {
    let payload = serde_json::to_vec(&input)
        .map_err(|e| CompatError::BadRequest(format!("cannot encode the input: {e}")))?;
    match pool.invoke(payload.into()).await?.buffered() {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            CompatError::BadReply(format!(
                "function {} answered outside its contract: {e}",
                pool.plan().name
            ))
        }),
        Err(d) => Err(CompatError::Function(d)),
    }
}

/// Parses a request body as `T`, saying what is wrong in the client's terms.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, CompatError> {
    serde_json::from_slice(body).map_err(|e| CompatError::BadRequest(e.to_string()))
}

/// The JSON answer of a handler.
fn json<T: Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}
