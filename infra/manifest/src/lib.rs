//! `infra/functions.toml`: the one manifest that drives `thaw serve` and renders deploys.
//!
//! Three stages, as in Spin: [`Manifest::parse`] reads TOML into the schema (unknown keys
//! are errors that name the key and its line; durations and sizes are typed);
//! [`Manifest::validate`] checks what the schema cannot: every number within its
//! [`limits`], min ≤ max, ..., each error naming the key and its line;
//! [`Manifest::resolve`] finds each binary, snapshot and volume on disk and yields a [`Plan`], the
//! only thing the runtime consumes.
//!
//! The crate does no snapshot I/O of its own: [`Resolver`] is handed a [`SnapshotLookup`]
//! (the CLI passes the snapshot cache), so the deploy renderers that depend on this crate
//! stay free of the snapshot crate's storage and model dependencies.

mod error;
mod gpu;
mod lines;
mod plan;
mod program;
mod schema;
mod units;
mod validate;

pub use error::{Limit, ManifestError};
pub use gpu::{CudaArch, Gpu, GpuKind};
pub use plan::{FunctionPlan, LookupError, Plan, Resolver, SnapshotLookup};
pub use program::{MAX_COMMAND_ARG, MAX_COMMAND_ARGS};
pub use schema::{
    App, Batch, EnvName, FunctionName, FunctionSpec, Manifest, Network, Routes, SnapshotStore,
    UrlAuth, UrlConfig,
};
pub use units::{ByteSize, Duration};
pub use validate::limits;

#[cfg(test)]
mod golden {
    //! Golden tests: `golden/valid/*.toml` parse and validate to `.json`; every
    //! `golden/invalid/*.toml` fails with the message in `.err`. `UPDATE_GOLDEN=1`
    //! rewrites the expectations.

    use std::path::PathBuf;

    use crate::Manifest;

    fn cases(kind: &str) -> Vec<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("golden")
            .join(kind);
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        assert!(!v.is_empty(), "no golden cases in {}", dir.display());
        v
    }

    fn check(path: &std::path::Path, ext: &str, actual: &str) {
        let expected_path = path.with_extension(ext);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&expected_path, actual)
                .unwrap_or_else(|e| panic!("write {}: {e}", expected_path.display()));
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        assert_eq!(actual, expected, "golden mismatch for {}", path.display());
    }

    #[test]
    fn valid_manifests_match_their_json() {
        for path in cases("valid") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let manifest = Manifest::parse(&text).and_then(|m| m.validate().map(|()| m));
            let manifest =
                manifest.unwrap_or_else(|e| panic!("{} should be valid: {e}", path.display()));
            let json = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
            check(&path, "json", &json);
        }
    }

    #[test]
    fn invalid_manifests_match_their_error() {
        for path in cases("invalid") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let err = match Manifest::parse(&text).and_then(|m| m.validate()) {
                Ok(()) => panic!("{} should be invalid", path.display()),
                Err(e) => e.to_string() + "\n",
            };
            check(&path, "err", &err);
        }
    }
}
