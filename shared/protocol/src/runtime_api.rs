//! The AWS Lambda Runtime API as `lambda_runtime` 1.5 speaks it.
//!
//! The paths are fixed, so a platform that runs several instances gives each one its own
//! listener: the port is what tells the platform which instance is asking for work.

/// The API version prefix of every Runtime API path.
pub const VERSION: &str = "2018-06-01";

/// `GET`: long-poll for the next invocation. Never answers 204.
pub const NEXT_PATH: &str = "/2018-06-01/runtime/invocation/next";
/// `POST`: the invocation's result, path `/2018-06-01/runtime/invocation/{id}/response`.
pub const RESPONSE_SUFFIX: &str = "response";
/// `POST`: the invocation's error, path `/2018-06-01/runtime/invocation/{id}/error`.
pub const ERROR_SUFFIX: &str = "error";
/// `POST`: the function failed to initialise.
pub const INIT_ERROR_PATH: &str = "/2018-06-01/runtime/init/error";
/// Prefix of the per-invocation paths.
pub const INVOCATION_PREFIX: &str = "/2018-06-01/runtime/invocation/";

/// Path of an invocation's response.
pub fn response_path(request_id: &str) -> String {
    format!("{INVOCATION_PREFIX}{request_id}/{RESPONSE_SUFFIX}")
}

/// Path of an invocation's error.
pub fn error_path(request_id: &str) -> String {
    format!("{INVOCATION_PREFIX}{request_id}/{ERROR_SUFFIX}")
}

/// Headers on every `next` answer. `lambda_runtime` panics without the first two.
pub mod header {
    /// The invocation id; required.
    pub const REQUEST_ID: &str = "lambda-runtime-aws-request-id";
    /// Milliseconds since the Unix epoch at which the invocation times out; required.
    pub const DEADLINE_MS: &str = "lambda-runtime-deadline-ms";
    /// The function's ARN.
    pub const FUNCTION_ARN: &str = "lambda-runtime-invoked-function-arn";
    /// An X-Ray style trace id.
    pub const TRACE_ID: &str = "lambda-runtime-trace-id";
    /// Set by the function on `/error` posts.
    pub const FUNCTION_ERROR_TYPE: &str = "lambda-runtime-function-error-type";
}

/// Environment a function process needs. `lambda_runtime::Config::from_env` panics if any
/// of the first four is missing.
pub mod env {
    /// `host:port` of the Runtime API, no scheme.
    pub const RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";
    /// The function's name.
    pub const FUNCTION_NAME: &str = "AWS_LAMBDA_FUNCTION_NAME";
    /// Memory in MB, an integer.
    pub const MEMORY_SIZE: &str = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE";
    /// The function's version.
    pub const FUNCTION_VERSION: &str = "AWS_LAMBDA_FUNCTION_VERSION";
    /// Number of concurrent `next` loops in one process (`run_concurrent`).
    pub const MAX_CONCURRENCY: &str = "AWS_LAMBDA_MAX_CONCURRENCY";
    /// thaw: the directory of the function's snapshot.
    pub const SNAPSHOT_DIR: &str = "THAW_SNAPSHOT_DIR";

    /// The variable naming the directory of the snapshot with `role` (manifest
    /// `snapshots = { role = "name" }`): `THAW_SNAPSHOT_DIR_<ROLE>`.
    pub fn snapshot_dir_for(role: &str) -> String {
        format!("{SNAPSHOT_DIR}_{}", role.to_ascii_uppercase())
    }
    /// thaw: the instance id, for logs and tests.
    pub const INSTANCE_ID: &str = "THAW_INSTANCE_ID";
}
