//! Wire types shared by thaw's control plane and its functions.
//!
//! This crate holds only data shapes and constants: no sockets, no files, no async.
//! Both sides of every boundary depend on it, so a change here is a protocol change.
//!
//! - [`runtime_api`]: the AWS Lambda Runtime API paths, headers and environment.
//! - [`url_event`]: the function URL event and response, payload format 2.0.
//! - [`batch`]: the `{"thaw_batch": [...]}` envelope for dynamic batching.
//! - [`template`]: how thaw forks instances from a function's warm template.
//! - [`error`]: typed function errors ([`ErrorType`]) and the platform's JSON error body.

pub mod arn;
pub mod batch;
pub mod error;
pub mod runtime_api;
pub mod template;
pub mod url_event;

pub use error::{ApiError, ApiErrorBody, Diagnostic, ErrorType};
