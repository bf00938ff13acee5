//! What an instance's process is given as its environment.

use thaw_manifest::FunctionPlan;
use thaw_protocol::runtime_api::env;

/// The instance's whole environment: nothing of thaw's own. `devices`: the GPU lent to
/// it (empty: none), if thaw knows the machine's.
pub(super) fn instance_env(
    plan: &FunctionPlan,
    instance: &str,
    api: std::net::SocketAddr,
    devices: Option<&str>,
) -> Vec<(String, String)> {
    let spec = &plan.spec;
    let mut vars: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOME".into(), "/tmp".into()),
        (env::RUNTIME_API.into(), api.to_string()),
        (env::FUNCTION_NAME.into(), plan.name.as_str().into()),
        (env::MEMORY_SIZE.into(), spec.memory.mebibytes().to_string()),
        (env::FUNCTION_VERSION.into(), "$LATEST".into()),
        (env::MAX_CONCURRENCY.into(), spec.concurrency.to_string()),
        (env::INSTANCE_ID.into(), instance.into()),
    ];
    if let Some(dir) = &plan.snapshot_dir {
        vars.push((env::SNAPSHOT_DIR.into(), dir.display().to_string()));
    }
    for (role, dir) in &plan.snapshot_dirs {
        vars.push((env::snapshot_dir_for(role), dir.display().to_string()));
    }
    if let Some(kind) = &spec.gpu.kind {
        vars.push(("THAW_GPU".into(), format!("{kind}:{}", spec.gpu.count)));
        let required = if spec.gpu_required { "1" } else { "0" };
        vars.push(("THAW_GPU_REQUIRED".into(), required.into()));
        if let Some(devices) = devices {
            vars.push(("CUDA_VISIBLE_DEVICES".into(), devices.into()));
        }
    }
    for (k, v) in &spec.env {
        vars.push((k.to_string(), v.clone()));
    }
    vars
}
