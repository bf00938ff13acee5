use thaw_protocol::{Diagnostic, ErrorType};

/// A function's typed error: a stable [`ErrorType`] and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_type}: {message}")]
pub struct FnError {
    /// The stable type callers can match on.
    pub error_type: ErrorType,
    /// What went wrong.
    pub message: String,
}

impl FnError {
    /// An error of the given type.
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        Self {
            error_type,
            message: message.into(),
        }
    }

    /// The function could not initialise (its model or snapshot would not load).
    pub fn init(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorType::InitError, message.to_string())
    }

    /// Bad input: 400.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidInput, message)
    }

    /// Input over a size limit: 413.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorType::PayloadTooLarge, message)
    }

    /// The model failed: 500.
    pub fn model(message: impl Into<String>) -> Self {
        Self::new(ErrorType::ModelError, message)
    }

    /// The Runtime API's error document.
    pub fn to_diagnostic(&self) -> Diagnostic {
        Diagnostic::new(self.error_type.as_str(), self.message.clone())
    }
}

impl From<FnError> for lambda_runtime::Diagnostic {
    fn from(e: FnError) -> Self {
        let d = e.to_diagnostic();
        lambda_runtime::Diagnostic {
            error_type: d.error_type,
            error_message: d.error_message,
        }
    }
}
