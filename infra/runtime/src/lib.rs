//! thaw's control plane.
//!
//! - [`runtime_api`]: the AWS Lambda Runtime API, one listener per instance on
//!   127.0.0.1:0. `lambda_runtime` polls fixed paths, so the port is how thaw knows which
//!   instance is asking for work.

pub mod runtime_api;
