//! thaw's one end-to-end test binary: real binaries, real snapshots, real Runtime API.
//!
//! Run through `make test`, which fetches the models and builds the snapshots and
//! binaries these tests use.

mod analyze;
mod auth;
mod batching;
mod cpu_encoder;
mod cuda_build;
mod durable;
mod durable_bounds;
mod edge;
mod edge_load;
mod embed_function;
mod families;
mod hardening_instances;
mod parity;
mod python_clients;
mod rerank;
mod runtime;
mod s3;
mod sandbox;
mod snapshot_faults;
mod streaming;
mod templates;
