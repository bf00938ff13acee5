//! The compatible routes' errors: one enum, one status mapping, and the body each API's
//! clients parse ([`Dialect`]).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use thaw_protocol::{Diagnostic, ErrorType};

use crate::front::BodyError;
use crate::pool::CallError;

/// Why a compatible route could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// The request does not parse, or asks for what thaw does not do.
    #[error("{0}")]
    BadRequest(String),
    /// The body is over the limit.
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    /// The client did not send its body in time.
    #[error("request body not received in time")]
    RequestTimeout,
    /// The target function's `url.auth` (or the control plane) wants a token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// `model` names no function and no function's snapshot.
    #[error("model {0:?} is neither a function nor a snapshot a function serves")]
    ModelNotFound(String),
    /// No function answers this route (`[routes]`).
    #[error(
        "no function serves the {0} routes: set [routes] {0} in the manifest, or name one as model"
    )]
    NoRoute(&'static str),
    /// The function reported an error.
    #[error("{}: {}", .0.error_type, .0.error_message)]
    Function(Diagnostic),
    /// The platform could not run the call.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The function's answer is not in its contract's shape.
    #[error("{0}")]
    BadReply(String),
    /// thaw is shutting down.
    #[error("thaw is shutting down")]
    ShuttingDown,
}

impl From<BodyError> for CompatError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Broken(why) => Self::BadRequest(format!("cannot read request body: {why}")),
            BodyError::TooLarge(limit) => Self::TooLarge(limit),
            BodyError::Timeout => Self::RequestTimeout,
        }
    }
}

/// Whose error body to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"error", "error_type"}`, as text-embeddings-inference answers.
    Tei,
    /// `{"message"}`, as Cohere answers (Jina's clients read it too).
    Cohere,
}

impl CompatError {
    /// The status. TEI's own codes on its routes: 422 for a request it cannot take (a
    /// body that does not parse, an option it does not offer), 413 for input the model
    /// refuses (TEI's "Validation").
    fn status(&self, dialect: Dialect) -> StatusCode {
        match self {
            Self::BadRequest(_) if dialect == Dialect::Tei => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::ModelNotFound(_) | Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::Function(d) => match ErrorType::parse(&d.error_type) {
                Some(ErrorType::InvalidInput) if dialect == Dialect::Tei => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                Some(t) => StatusCode::from_u16(t.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                None => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Call(e) => crate::front::error::call_status(e),
            Self::BadReply(_) => StatusCode::BAD_GATEWAY,
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable type: thaw's own, or the function's.
    fn kind(&self) -> &str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::TooLarge(_) => "PayloadTooLarge",
            Self::RequestTimeout => "RequestTimeout",
            Self::Unauthorized => "Unauthorized",
            Self::ModelNotFound(_) => "ModelNotFound",
            Self::NoRoute(_) => "NoRoute",
            Self::Function(d) => &d.error_type,
            Self::Call(e) => e.kind(),
            Self::BadReply(_) => "BadReply",
            Self::ShuttingDown => "ShuttingDown",
        }
    }

    /// The answer in `dialect`'s shape.
    pub fn into_response_for(self, dialect: Dialect) -> Response {
        let status = self.status(dialect);
        let body = self.body(dialect);
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static(crate::front::error::CHALLENGE),
            );
        }
        resp
    }

    /// The error body in `dialect`'s shape: what a response carries, and what a stream
    /// that fails after it began sends as its last event.
    pub(super) fn body(&self, dialect: Dialect) -> Value {
        let status = self.status(dialect);
        let message = self.to_string();
        match dialect {
            Dialect::OpenAi => {
                let kind = match status.as_u16() {
                    401 => "authentication_error",
                    429 => "rate_limit_error",
                    400..=499 => "invalid_request_error",
                    _ => "server_error",
                };
                let param = match &self {
                    Self::ModelNotFound(_) | Self::NoRoute(_) => json!("model"),
                    Self::Function(_) => json!("input"),
                    _ => json!(null),
                };
                json!({"error": {"message": message, "type": kind, "param": param, "code": self.kind()}})
            }
            Dialect::Tei => {
                let kind = match status.as_u16() {
                    413 | 422 | 400 | 404 => "Validation",
                    401 => "Unauthorized",
                    429 => "Overloaded",
                    503 => "Unhealthy",
                    _ => "Backend",
                };
                json!({"error": message, "error_type": kind})
            }
            Dialect::Cohere => json!({"message": message, "type": self.kind()}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_functions_input_error_is_the_clients_in_every_dialect() {
        let e = || CompatError::Function(Diagnostic::new("InvalidInput", "empty list"));
        assert_eq!(e().status(Dialect::OpenAi), StatusCode::BAD_REQUEST);
        assert_eq!(e().status(Dialect::Tei), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e().status(Dialect::Cohere), StatusCode::BAD_REQUEST);
        let queue = CompatError::Call(CallError::QueueFull(3)).into_response_for(Dialect::OpenAi);
        assert_eq!(queue.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(queue.headers().contains_key("retry-after"));
        let crash = CompatError::Function(Diagnostic::new("ValueError", "boom"));
        assert_eq!(
            crash.status(Dialect::OpenAi),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            CompatError::ModelNotFound("x".into()).status(Dialect::Tei),
            StatusCode::NOT_FOUND
        );
    }
}
