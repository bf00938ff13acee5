//! Errors of the HTTP front, one type per surface, each mapped to HTTP in exactly one
//! place.
//!
//! - [`ApiError`]: thaw's own surface (function URLs, `/v1`, `/healthz`, `/metrics`),
//!   answered as `{"error": {"type", "message"}}`.
//! - [`AwsError`]: the AWS Lambda API, answered in AWS's shape
//!   (`x-amzn-ErrorType` and `{"Type", "message"}`), which boto3 and the AWS CLI parse.
//!
//! Handlers return `Result<Response, ApiError>` (or `AwsError`) and use `?`; extractor
//! failures (a bad path segment, a query that does not parse) go through [`ApiQuery`] and
//! [`ApiPath`], so even those answer in the JSON shape rather than axum's plain text.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;
use thaw_protocol::{ApiErrorBody, Diagnostic};

use crate::calls::store::StoreError;
use crate::pool::CallError;

/// An error on thaw's own surface.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: a body that is not JSON, a bad header or query.
    #[error("{0}")]
    BadRequest(String),
    /// No bearer token, or the wrong one.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// No such function in the manifest.
    #[error("no function {0:?}")]
    FunctionNotFound(String),
    /// No such durable call.
    #[error("no call {0:?}")]
    CallNotFound(String),
    /// No such map.
    #[error("no map {0:?}")]
    MapNotFound(String),
    /// No such route.
    #[error("no such route")]
    RouteNotFound,
    /// The route exists, not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The call's result outlived the function's `result_ttl`.
    #[error("call {0} expired: its result was kept for the function's result_ttl")]
    CallExpired(String),
    /// Only a queued call can be cancelled.
    #[error("call {0} is running; only a queued call can be cancelled")]
    CallRunning(String),
    /// The call has already finished.
    #[error("call {id} has already finished ({status})")]
    CallFinished {
        /// The call.
        id: String,
        /// Its terminal status.
        status: &'static str,
    },
    /// The request body is over the limit.
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// A map's input is over one of its limits; nothing of it was kept.
    #[error("{0}")]
    MapTooLarge(String),
    /// The client did not send its body in time.
    #[error("request body not received in time")]
    RequestTimeout,
    /// thaw is shutting down.
    #[error("thaw is shutting down")]
    ShuttingDown,
    /// `--single`'s readiness: no instance has loaded yet, or init failed.
    #[error("{0}")]
    NotReady(String),
    /// The platform could not run the call.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The function ran and reported an error; its own type is kept on the wire.
    #[error("{}", .0.error_message)]
    Function(Diagnostic),
    /// The durable call store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::FunctionNotFound(_)
            | Self::CallNotFound(_)
            | Self::MapNotFound(_)
            | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::CallExpired(_) => StatusCode::GONE,
            Self::CallRunning(_) | Self::CallFinished { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) | Self::MapTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ShuttingDown | Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Call(e) => call_status(e),
            Self::Function(_) => StatusCode::BAD_GATEWAY,
            Self::Store(StoreError::QueueFull { .. }) => StatusCode::TOO_MANY_REQUESTS,
            Self::Store(StoreError::IdempotencyKeyReused { .. }) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `type` on the wire.
    pub fn kind(&self) -> &str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::FunctionNotFound(_) => "FunctionNotFound",
            Self::CallNotFound(_) => "CallNotFound",
            Self::MapNotFound(_) => "MapNotFound",
            Self::RouteNotFound => "NotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::CallExpired(_) => "CallExpired",
            Self::CallRunning(_) => "CallRunning",
            Self::CallFinished { .. } => "CallFinished",
            Self::PayloadTooLarge(_) => "PayloadTooLarge",
            Self::MapTooLarge(_) => "MapTooLarge",
            Self::RequestTimeout => "RequestTimeout",
            Self::ShuttingDown => "ShuttingDown",
            Self::NotReady(_) => "NotReady",
            Self::Call(e) => e.kind(),
            Self::Function(d) => &d.error_type,
            Self::Store(StoreError::QueueFull { .. }) => "QueueFull",
            Self::Store(StoreError::IdempotencyKeyReused { .. }) => "IdempotencyKeyReused",
            Self::Store(StoreError::Unavailable(_)) => "StoreUnavailable",
            Self::Store(_) => "StoreError",
        }
    }
}

/// The status of a call the platform could not run, on every surface that answers one.
pub(super) fn call_status(e: &CallError) -> StatusCode {
    match e {
        CallError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
        CallError::FunctionCrashed(_)
        | CallError::InitFailed(_)
        | CallError::OutOfMemory { .. }
        | CallError::ResponseTooLarge { .. }
        | CallError::BadBatchReply(_)
        | CallError::BadResponseStream(_) => StatusCode::BAD_GATEWAY,
        CallError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        CallError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (
            status,
            Json(ApiErrorBody::new(self.kind(), self.to_string())),
        )
            .into_response();
        let headers = resp.headers_mut();
        if status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert("retry-after", HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert("www-authenticate", HeaderValue::from_static(CHALLENGE));
        }
        resp
    }
}

/// The `WWW-Authenticate` challenge of every 401 (RFC 6750).
pub(super) const CHALLENGE: &str = "Bearer realm=\"thaw\"";

/// An error on the AWS Lambda Invoke API, in AWS's shape.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No such function (or version): its ARN.
    #[error("Function not found: {0}")]
    ResourceNotFound(String),
    /// No such operation, or not with this method.
    #[error("no such Lambda API operation on this path and method")]
    UnknownOperation,
    /// The body is not JSON.
    #[error("Could not parse request body into json")]
    InvalidRequestContent,
    /// A parameter (header) has a value AWS would refuse.
    #[error("{0}")]
    InvalidParameterValue(String),
    /// The request body is over the limit.
    #[error("request body exceeds {0} bytes")]
    RequestTooLarge(usize),
    /// The client did not send its body in time.
    #[error("request body not received in time")]
    RequestTimeout,
    /// No bearer token, or the wrong one.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The function's queue is full.
    #[error("Rate Exceeded.")]
    TooManyRequests,
    /// thaw is stopping.
    #[error("{0}")]
    Service(String),
    /// thaw itself failed (its call store, say).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for AwsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QueueFull { .. } => Self::TooManyRequests,
            other => Self::Internal(other.to_string()),
        }
    }
}

impl AwsError {
    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            Self::ResourceNotFound(_) => (StatusCode::NOT_FOUND, "ResourceNotFoundException"),
            Self::UnknownOperation => (StatusCode::NOT_FOUND, "UnknownOperationException"),
            Self::InvalidRequestContent => {
                (StatusCode::BAD_REQUEST, "InvalidRequestContentException")
            }
            Self::InvalidParameterValue(_) => {
                (StatusCode::BAD_REQUEST, "InvalidParameterValueException")
            }
            Self::RequestTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLargeException",
            ),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "RequestTimeoutException"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "UnrecognizedClientException"),
            Self::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException"),
            Self::Service(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceException"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "ServiceException"),
        }
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_type();
        let mut body = json!({"Type": "User", "message": self.to_string()});
        if matches!(self, Self::TooManyRequests) {
            body["Reason"] = json!("ReservedFunctionConcurrentInvocationLimitExceeded");
        }
        let mut resp = (status, Json(body)).into_response();
        let headers = resp.headers_mut();
        headers.insert("x-amzn-errortype", HeaderValue::from_static(kind));
        if status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert("retry-after", HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert("www-authenticate", HeaderValue::from_static(CHALLENGE));
        }
        resp
    }
}

/// Why a request body could not be read; each surface answers it in its own shape.
#[derive(Debug)]
pub enum BodyError {
    /// The connection broke while reading.
    Broken(String),
    /// Over the limit (bytes).
    TooLarge(usize),
    /// Not received in time.
    Timeout,
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Broken(why) => Self::BadRequest(format!("cannot read request body: {why}")),
            BodyError::TooLarge(limit) => Self::PayloadTooLarge(limit),
            BodyError::Timeout => Self::RequestTimeout,
        }
    }
}

impl From<BodyError> for AwsError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Broken(why) => {
                Self::InvalidParameterValue(format!("cannot read request body: {why}"))
            }
            BodyError::TooLarge(limit) => Self::RequestTooLarge(limit),
            BodyError::Timeout => Self::RequestTimeout,
        }
    }
}

/// `Query<T>` whose rejection is a JSON [`ApiError::BadRequest`].
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// `Query<T>` whose rejection is an [`AwsError::InvalidParameterValue`], for the Lambda API.
#[derive(Debug)]
pub struct AwsQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for AwsQuery<T> {
    type Rejection = AwsError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AwsError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e: QueryRejection| AwsError::InvalidParameterValue(e.body_text()))
    }
}

/// `Path<T>` whose rejection is an [`AwsError::InvalidParameterValue`], for the Invoke API.
#[derive(Debug)]
pub struct AwsPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for AwsPath<T> {
    type Rejection = AwsError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AwsError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|e: PathRejection| AwsError::InvalidParameterValue(e.body_text()))
    }
}

/// `Path<T>` whose rejection (`%ff` in an id, say) is a JSON [`ApiError::BadRequest`].
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|e: PathRejection| ApiError::BadRequest(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_are_told_apart_and_none_is_shutting_down() {
        let cases = [
            (
                StoreError::Unavailable("the writer panicked".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "StoreUnavailable",
            ),
            (
                StoreError::Commit("disk full".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "StoreError",
            ),
            (
                StoreError::QueueFull {
                    function: "f".into(),
                    limit: 2,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "QueueFull",
            ),
            (
                StoreError::IdempotencyKeyReused { key: "k".into() },
                StatusCode::UNPROCESSABLE_ENTITY,
                "IdempotencyKeyReused",
            ),
        ];
        for (store, status, kind) in cases {
            let e = ApiError::from(store);
            assert_eq!((e.status(), e.kind()), (status, kind));
            let message = e.to_string();
            assert!(!message.contains("shutting down"), "{message}");
            let resp = e.into_response();
            assert_eq!(
                resp.headers().contains_key("retry-after"),
                status == StatusCode::TOO_MANY_REQUESTS
            );
        }
        let e = ApiError::MapTooLarge("a map is limited to 100000 items".into());
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn a_full_durable_queue_on_the_invoke_api_is_too_many_requests() {
        let e = AwsError::from(StoreError::QueueFull {
            function: "f".into(),
            limit: 2,
        });
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(resp.headers().contains_key("retry-after"));
        let e = AwsError::from(StoreError::Unavailable("down".into()));
        assert_eq!(
            e.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
