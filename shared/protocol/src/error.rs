//! Typed errors on the wire.
//!
//! A function error has a stable [`ErrorType`]; the SDK maps it to an HTTP status for URL
//! events and to a [`Diagnostic`] for the Runtime API. The platform's own errors use
//! [`ApiErrorBody`]: `{"error": {"type", "message"}}`.

use serde::{Deserialize, Serialize};

/// The Runtime API's error document (`errorType`, `errorMessage`), as AWS defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// A stable machine-readable type, such as `InvalidInput`.
    #[serde(rename = "errorType")]
    pub error_type: String,
    /// A human-readable message.
    #[serde(rename = "errorMessage")]
    pub error_message: String,
    /// Where the error was raised, a frame per line, as runtimes such as `awslambdaric`
    /// report it; kept to the caller on the Invoke API. Empty when not given.
    #[serde(rename = "stackTrace", default, skip_serializing_if = "Vec::is_empty")]
    pub stack_trace: Vec<String>,
}

impl Diagnostic {
    /// A diagnostic without a stack trace.
    pub fn new(error_type: impl Into<String>, error_message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            error_message: error_message.into(),
            stack_trace: Vec::new(),
        }
    }
}

/// Stable error types a function reports. The string form is the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// The input was malformed or broke a documented limit (400).
    InvalidInput,
    /// The input was larger than a documented limit (413).
    PayloadTooLarge,
    /// The model failed while running (500).
    ModelError,
    /// The function could not initialise (502).
    InitError,
    /// Anything else inside the function (500).
    Internal,
}

impl ErrorType {
    /// The stable string written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "InvalidInput",
            Self::PayloadTooLarge => "PayloadTooLarge",
            Self::ModelError => "ModelError",
            Self::InitError => "InitError",
            Self::Internal => "Internal",
        }
    }

    /// The HTTP status a function URL answers with for this error.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidInput => 400,
            Self::PayloadTooLarge => 413,
            Self::ModelError | Self::Internal => 500,
            Self::InitError => 502,
        }
    }

    /// Parses the wire string; unknown strings are `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "InvalidInput" => Self::InvalidInput,
            "PayloadTooLarge" => Self::PayloadTooLarge,
            "ModelError" => Self::ModelError,
            "InitError" => Self::InitError,
            "Internal" => Self::Internal,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The platform's error body: `{"error": {"type", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// The error.
    pub error: ApiError,
}

/// One platform or function error as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable type, such as `InvalidInput`, `QueueFull` or `FunctionCrashed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable detail.
    pub message: String,
}

impl ApiErrorBody {
    /// Builds a body from a type and a message.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ApiError {
                kind: kind.into(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_round_trip_through_their_wire_strings() {
        for t in [
            ErrorType::InvalidInput,
            ErrorType::PayloadTooLarge,
            ErrorType::ModelError,
            ErrorType::InitError,
            ErrorType::Internal,
        ] {
            assert_eq!(ErrorType::parse(t.as_str()), Some(t));
        }
        assert_eq!(ErrorType::parse("Nope"), None);
    }

    #[test]
    fn diagnostic_uses_aws_field_names() {
        let d = Diagnostic::new("InvalidInput", "bad");
        let v = serde_json::to_value(&d).unwrap_or_default();
        assert_eq!(v["errorType"], "InvalidInput");
        assert_eq!(v["errorMessage"], "bad");
    }
}
