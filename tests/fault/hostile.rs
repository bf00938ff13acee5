//! Hostile actions that a sandbox must contain: memory, files, other processes' secrets,
//! processes that outlive the instance, and a fork bomb. `probe` (the network) is in
//! [`crate::probe`].

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Map, Value};
use thaw_fn::{ErrorType, FnError};

use crate::probe::io_error;

const PAGE: usize = 4096;

/// `alloc`: `mb` MiB, every page written so it is really resident.
pub fn alloc(mb: usize) -> Result<Vec<u8>, FnError> {
    let len = mb
        .checked_mul(1 << 20)
        .ok_or_else(|| FnError::invalid_input(format!("alloc: {mb} MiB is too large")))?;
    let mut block = Vec::new();
    block
        .try_reserve_exact(len)
        .map_err(|e| FnError::new(ErrorType::Internal, format!("alloc: {mb} MiB failed: {e}")))?;
    block.resize(len, 0);
    // Already resident from the zero fill; a byte per page makes that explicit.
    block.iter_mut().step_by(PAGE).for_each(|b| *b = 1);
    Ok(block)
}

/// This process's resident set in MiB, from `/proc/self/status`.
pub fn rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// `read`: per path, `{"ok": true, "bytes", "head"}` (first 64 bytes of a file),
/// `{"ok": true, "dir": true, "entries"}` for a directory, or `{"ok": false, "error"}`.
pub fn read(paths: &[String]) -> Value {
    let report: Map<String, Value> = paths
        .iter()
        .map(|p| {
            let outcome = match read_one(Path::new(p)) {
                Ok(v) => v,
                Err(e) => json!({"ok": false, "error": io_error(&e)}),
            };
            (p.clone(), outcome)
        })
        .collect();
    Value::Object(report)
}

fn read_one(path: &Path) -> std::io::Result<Value> {
    if std::fs::metadata(path)?.is_dir() {
        let entries = std::fs::read_dir(path)?.count();
        return Ok(json!({"ok": true, "dir": true, "entries": entries}));
    }
    // At most 64 bytes: the path may be a device or a huge file.
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(path)?.take(64).read_to_end(&mut head)?;
    Ok(json!({
        "ok": true,
        "bytes": head.len(),
        "head": String::from_utf8_lossy(&head),
    }))
}

/// `environ`: this process's environment.
pub fn environ() -> Value {
    let env: Map<String, Value> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                Value::String(v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    Value::Object(env)
}

/// `proc_environ`: every other pid in `/proc`, and the first 200 bytes (lossy, NULs as
/// newlines) of each `/proc/PID/environ` that could be read.
pub fn proc_environ() -> Value {
    let me = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| *pid != me)
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    let readable: Map<String, Value> = pids
        .iter()
        .filter_map(|pid| {
            let mut head = Vec::with_capacity(200);
            std::fs::File::open(format!("/proc/{pid}/environ"))
                .ok()?
                .take(200)
                .read_to_end(&mut head)
                .ok()?;
            let text = String::from_utf8_lossy(&head).replace('\0', "\n");
            Some((pid.to_string(), Value::String(text)))
        })
        .collect();
    json!({"self_pid": me, "visible_pids": pids, "readable": readable})
}

/// This binary, to re-exec: the path on disk, or `/proc/self/exe` if that is gone.
fn self_exe() -> PathBuf {
    match std::env::current_exe() {
        Ok(p) if p.exists() => p,
        _ => PathBuf::from("/proc/self/exe"),
    }
}

/// `thaw-fault <mode> <marker>`, with no stdio: a lingering child must not hold the
/// instance's log pipes open.
fn self_command(mode: &str, marker: &str) -> Command {
    let mut cmd = Command::new(self_exe());
    cmd.arg(mode)
        .arg(marker)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Makes `cmd`'s process call `setsid()` before exec: a new session and process group,
/// so killing the instance's process group does not reach it.
#[allow(unsafe_code)]
fn new_session(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are sound. It calls only setsid(2), which is
    // async-signal-safe, and builds an io::Error from errno without allocating; it
    // touches no locks and no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// `spawn_tree`: three lingering processes whose command line carries `marker`: a plain
/// child, a child in its own session, and a daemon orphaned by a double fork. Returns the
/// report and the two direct children, which the instance reaps if they die.
pub fn spawn_tree(marker: &str) -> Result<(Value, Vec<Child>), FnError> {
    let spawn_err = |what: &str, e: std::io::Error| {
        FnError::new(
            ErrorType::Internal,
            format!("spawn_tree: {what}: {}", io_error(&e)),
        )
    };
    let plain = self_command("--linger", marker)
        .spawn()
        .map_err(|e| spawn_err("plain child", e))?;
    let session = new_session(&mut self_command("--linger", marker))
        .spawn()
        .map_err(|e| spawn_err("setsid child", e))?;
    let status = self_command("--daemonize", marker)
        .status()
        .map_err(|e| spawn_err("daemon", e))?;
    if !status.success() {
        return Err(FnError::new(
            ErrorType::Internal,
            format!("spawn_tree: --daemonize failed: {status}"),
        ));
    }
    let report = json!({
        "spawned": 3,
        "marker": marker,
        "child_pids": [plain.id(), session.id()],
    });
    Ok((report, vec![plain, session]))
}

/// `forkbomb`: starts up to `n` lingering children, stopping at the first spawn error,
/// then kills and reaps them all. No extra threads: they would count against pids too.
pub fn forkbomb(n: usize, marker: &str) -> Result<Value, FnError> {
    let mut children = Vec::with_capacity(n.min(100_000));
    let mut failure = None;
    for _ in 0..n {
        match self_command("--linger", marker).spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let started = children.len();
    for child in &mut children {
        let _ = child.kill();
    }
    for child in &mut children {
        let _ = child.wait();
    }
    match failure {
        Some(e) => Err(FnError::new(
            ErrorType::Internal,
            format!("process limit reached after {started} processes: {e}"),
        )),
        None => Ok(json!({"started": started})),
    }
}

/// `--linger M`: sleeps forever.
pub fn linger() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `--daemonize M`: starts `--linger M` in a new session and exits at once, orphaning it.
pub fn daemonize(marker: &str) -> ! {
    let code = match new_session(&mut self_command("--linger", marker)).spawn() {
        Ok(_) => 0,
        Err(_) => 1,
    };
    std::process::exit(code)
}

/// `write`: `mb` MiB of zeros into `path`, 1 MiB at a time; `{"ok", "written_mb", "error"}`.
pub fn write(path: &str, mb: usize) -> Value {
    use std::io::Write as _;
    let chunk = vec![0u8; 1 << 20];
    let mut file = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return json!({"ok": false, "written_mb": 0, "error": crate::probe::io_error(&e)}),
    };
    for i in 0..mb {
        if let Err(e) = file.write_all(&chunk).and_then(|()| file.flush()) {
            return json!({"ok": false, "written_mb": i, "error": crate::probe::io_error(&e)});
        }
    }
    json!({"ok": true, "written_mb": mb})
}

/// Writes `mb` MiB of `x` to stderr with no newline, 64 KiB at a time.
pub fn long_line(mb: usize) {
    use std::io::Write as _;
    let chunk = [b'x'; 64 * 1024];
    let mut err = std::io::stderr().lock();
    for _ in 0..mb * 16 {
        if err.write_all(&chunk).is_err() {
            return;
        }
    }
    let _ = err.flush();
}
