//! The bubblewrap command line for one instance.
//!
//! The root is a fresh tmpfs, remounted read-only at the end, holding only:
//! `/usr` and the `/bin`, `/lib*` and `/sbin` links or directories (read-only), a short
//! list of `/etc` files programs need to run (the loader cache, TLS roots, name
//! resolution; never `shadow`, `passwd` or anything of thaw's), a new `/proc` for the
//! instance's PID namespace, a minimal `/dev`, a size-capped private `/tmp`, the
//! function's binary and snapshot directories read-only at their own paths, and the
//! manifest's volumes read-write. GPU functions also get `/dev/nvidia*` and `/sys`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use thaw_manifest::FunctionPlan;

/// `/etc` entries an ordinary program may need; each is bound only if it exists.
const ETC: [&str; 14] = [
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    // TLS roots only: never /etc/ssl/private or /etc/pki/tls/private.
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/gai.conf",
    "/etc/alternatives",
];

/// Top-level entries that are links into /usr on merged-/usr systems, directories on
/// others.
const ROOT_DIRS: [&str; 6] = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Finds bubblewrap (`THAW_BWRAP`, else `bwrap` on `PATH`) and checks that it can make
/// a sandbox here as uid `uid`: user namespaces may be off in the kernel.
pub fn probe(uid: u32) -> Result<PathBuf, String> {
    let path = match std::env::var_os("THAW_BWRAP") {
        Some(p) => PathBuf::from(p),
        None => super::which("bwrap").ok_or("bwrap is not on PATH")?,
    };
    let mut cmd = Command::new(&path);
    cmd.args([
        "--cap-drop",
        "ALL",
        "--unshare-user",
        "--disable-userns",
        "--unshare-pid",
        "--die-with-parent",
    ])
    .args(["--ro-bind", "/usr", "/usr"])
    .args(root_links())
    .args(["--proc", "/proc", "--", "/usr/bin/true"])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    crate::launcher::as_uid(&mut cmd, Some(uid));
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if out.status.success() {
        Ok(path)
    } else {
        Err(format!(
            "{} cannot make a sandbox here: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `/bin` and friends: a symlink where the host has one, a read-only bind otherwise.
fn root_links() -> Vec<OsString> {
    let mut args = Vec::new();
    for dir in ROOT_DIRS {
        match std::fs::read_link(dir) {
            Ok(target) => {
                args.extend(["--symlink".into(), target.into_os_string(), dir.into()]);
            }
            Err(_) if Path::new(dir).is_dir() => {
                args.extend(["--ro-bind".into(), dir.into(), dir.into()]);
            }
            Err(_) => {}
        }
    }
    args
}

/// The arguments before the command. `shim`: thaw's binary, bound read-only at
/// [`SHIM_PATH`](super::jail::SHIM_PATH) to run the shim inside.
pub fn args(plan: &FunctionPlan, shim: Option<&Path>) -> Vec<OsString> {
    let spec = &plan.spec;
    let mut a: Vec<OsString> = [
        // Run as root (the root-mapped fallback) bubblewrap keeps its capabilities unless
        // told; drop them all, always, and forbid nested user namespaces.
        "--cap-drop",
        "ALL",
        "--unshare-user",
        "--disable-userns",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "thaw",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    a.extend(root_links());
    for etc in ETC {
        a.extend(["--ro-bind-try".into(), etc.into(), etc.into()]);
    }
    a.extend(["--proc", "/proc", "--dev", "/dev"].map(OsString::from));
    a.extend([
        "--size".into(),
        spec.tmp.0.to_string().into(),
        "--tmpfs".into(),
        "/tmp".into(),
    ]);
    let ro = |a: &mut Vec<OsString>, p: &Path| {
        a.extend(["--ro-bind".into(), p.into(), p.into()]);
    };
    // A command's workdir and interpreter prefix; its program unless one of them (or
    // /usr) holds it already, since binding over a bound path's symlink fails.
    for dir in &plan.read_only {
        ro(&mut a, dir);
    }
    let bound = plan
        .read_only
        .iter()
        .any(|d| plan.binary_path.starts_with(d))
        || plan.binary_path.starts_with("/usr");
    if !bound {
        ro(&mut a, &plan.binary_path);
    }
    for dir in plan.snapshot_dir.iter().chain(plan.snapshot_dirs.values()) {
        ro(&mut a, dir);
    }
    for (inside, host) in &spec.volumes {
        a.extend(["--bind".into(), host.into(), inside.into()]);
    }
    if spec.gpu.kind.is_some() {
        for dev in nvidia_devices() {
            a.extend(["--dev-bind".into(), dev.clone().into(), dev.into()]);
        }
        a.extend(["--ro-bind-try", "/sys", "/sys"].map(OsString::from));
    }
    if let Some(shim) = shim {
        a.extend([
            "--ro-bind".into(),
            shim.into(),
            super::jail::SHIM_PATH.into(),
        ]);
    }
    let workdir = plan.workdir.as_deref().unwrap_or(Path::new("/tmp"));
    a.extend(["--chdir".into(), workdir.into()]);
    a.extend(["--remount-ro", "/", "--"].map(OsString::from));
    a
}

/// The arguments for a function's warm template: those of an instance, except that the
/// template shares thaw's PID namespace, so that its forks do not die with it (each fork
/// makes its own PID namespace), and may make the user namespaces its forks isolate
/// themselves in. With `own_net`, it has a network namespace of its own, empty: it
/// serves nothing, and each fork makes its own.
pub fn template_args(plan: &FunctionPlan, own_net: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = args(plan, None)
        .into_iter()
        .filter(|arg| arg != "--disable-userns" && arg != "--unshare-pid")
        .collect();
    if own_net {
        a.insert(0, "--unshare-net".into());
    }
    a
}

/// `/dev/nvidia*` on this machine.
fn nvidia_devices() -> Vec<PathBuf> {
    let mut devs: Vec<PathBuf> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
        .map(|e| e.path())
        .collect();
    devs.sort();
    devs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: &str) -> FunctionPlan {
        let mut plan = crate::test_support::plan(extra);
        plan.snapshot_dir = Some(PathBuf::from("/cache/objects/abc"));
        plan
    }

    fn has_pair(args: &[OsString], flag: &str, a: &str, b: &str) -> bool {
        args.windows(3)
            .any(|w| w[0] == flag && w[1] == a && w[2] == b)
    }

    #[test]
    fn binds_only_the_functions_own_files_and_caps_tmp() {
        let a = args(&plan("tmp = \"64MiB\""), None);
        assert!(has_pair(&a, "--ro-bind", "/opt/fns/f", "/opt/fns/f"));
        assert!(has_pair(
            &a,
            "--ro-bind",
            "/cache/objects/abc",
            "/cache/objects/abc"
        ));
        assert!(has_pair(&a, "--size", "67108864", "--tmpfs"));
        assert!(!a
            .iter()
            .any(|x| x == "/etc/shadow" || x == "/etc/passwd" || x == "/etc/ssl"));
        assert!(has_pair(&a, "--cap-drop", "ALL", "--unshare-user"));
        assert!(!a.iter().any(|x| x == "--share-net"));
        assert!(!a
            .iter()
            .any(|x| x.to_string_lossy().starts_with("/dev/nvidia")));
        assert_eq!(a.last().map(OsString::as_os_str), Some("--".as_ref()));
    }

    #[test]
    fn volumes_are_bound_read_write() {
        let a = args(
            &plan("volumes = { \"/mnt/data\" = \"/tmp\" }"),
            Some(Path::new("/opt/thaw")),
        );
        assert!(has_pair(&a, "--ro-bind", "/opt/thaw", "/run/thaw/shim"));
        assert!(has_pair(&a, "--bind", "/tmp", "/mnt/data"));
    }
}
