//! Checks of the workspace itself, run by `cargo test` like any other test: the
//! dependency graph stays cut where it was cut, and the MSRV is declared once and true.
//!
//! They ask cargo (`cargo tree`, `cargo metadata`, with `--locked` so they never change
//! Cargo.lock) rather than parse Cargo.toml files, so that features, renames and
//! transitive dependencies count as cargo counts them.

use std::path::PathBuf;
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs cargo in the repository root and returns its stdout.
fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The crates a package compiles for itself (normal dependencies, all features off
/// but the defaults), one name per line.
fn normal_dependencies(package: &str) -> Vec<String> {
    cargo(&[
        "tree", "--locked", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}",
    ])
    .lines()
    .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
    .collect()
}

/// The deploy renderers and the manifest are pure: they must not compile the snapshot
/// store's AWS SDK, the model runtime or the tokenizer. They did, through one snapshot
/// lookup in thaw-manifest, until the lookup moved behind `thaw_manifest::SnapshotLookup`.
#[test]
fn deploy_and_manifest_compile_no_sdk_and_no_model_runtime() {
    const HEAVY: [&str; 6] = [
        "aws-sdk-s3",
        "aws-config",
        "candle-core",
        "tokenizers",
        "thaw-snapshot",
        "tokio",
    ];
    for package in ["thaw-deploy", "thaw-manifest"] {
        let deps = normal_dependencies(package);
        assert!(
            deps.iter().any(|d| d == package),
            "cargo tree of {package} is empty: {deps:?}"
        );
        let heavy: Vec<&String> = deps
            .iter()
            .filter(|d| HEAVY.contains(&d.as_str()))
            .collect();
        assert!(heavy.is_empty(), "{package} depends on {heavy:?} again");
    }
}

/// Every crate inherits the workspace's `rust-version`, and that version is what the
/// locked dependency graph needs: the highest `rust-version` among the dependencies.
/// (Clippy's `incompatible_msrv` lint checks our own code's std use against it.)
#[test]
fn msrv_is_inherited_and_is_what_the_dependencies_need() {
    let meta: serde_json::Value =
        serde_json::from_str(&cargo(&["metadata", "--locked", "--format-version", "1"]))
            .expect("cargo metadata is JSON");
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let packages = meta["packages"].as_array().expect("packages");
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let mut declared = None;
    let mut needed: Option<(Vec<u64>, String)> = None;
    for p in packages {
        let id = p["id"].as_str().unwrap_or_default();
        let name = p["name"].as_str().unwrap_or_default();
        let rv = p["rust_version"].as_str();
        if members.contains(&id) {
            let manifest = p["manifest_path"].as_str().unwrap_or_default();
            let text = std::fs::read_to_string(manifest).expect("read member Cargo.toml");
            assert!(
                text.contains("rust-version.workspace = true"),
                "{manifest} does not inherit the workspace's rust-version"
            );
            let rv = rv.unwrap_or_else(|| panic!("{name} has no rust-version"));
            match &declared {
                None => declared = Some(rv.to_owned()),
                Some(d) => assert_eq!(d, rv, "{name}'s rust-version differs"),
            }
        } else if let Some(rv) = rv {
            if needed.as_ref().is_none_or(|(v, _)| parse(rv) > *v) {
                needed = Some((parse(rv), format!("{name} {rv}")));
            }
        }
    }
    let declared = declared.expect("a workspace member");
    let (needed, by) = needed.expect("dependencies with a rust-version");
    assert_eq!(
        parse(&declared),
        needed,
        "the workspace declares rust-version {declared}, but the locked dependencies need \
         {by}: set [workspace.package] rust-version to match"
    );
}
