//! Helpers shared by the crate's unit tests.

use thaw_manifest::FunctionPlan;

/// A plan for function `f` (binary `/opt/fns/f`, no snapshots) with the manifest lines
/// `extra`.
pub(crate) fn plan(extra: &str) -> FunctionPlan {
    let text = format!("[app]\nname = \"t\"\n[function.f]\nbinary = \"f\"\n{extra}");
    let manifest = thaw_manifest::Manifest::parse(&text).expect("manifest");
    let spec = manifest
        .function
        .values()
        .next()
        .cloned()
        .expect("function");
    FunctionPlan {
        name: thaw_manifest::FunctionName::new("f").expect("name"),
        binary_path: "/opt/fns/f".into(),
        args: Vec::new(),
        workdir: None,
        read_only: Vec::new(),
        snapshot_dir: None,
        snapshot_dirs: Default::default(),
        missing_snapshots: Vec::new(),
        template: false,
        spec,
    }
}
