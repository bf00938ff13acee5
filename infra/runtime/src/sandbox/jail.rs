//! `thaw __jail` and `thaw __shim`: processes with one job each, so that a sandbox can be
//! made *before* the cold start that needs it.
//!
//! Joining a cgroup costs an RCU grace period in the kernel (about 15 ms here for the first
//! move after a quiet spell), which would otherwise be paid on every cold start. So thaw
//! keeps one spare sandbox per function: a network namespace with the Runtime API's
//! listener, a cgroup, and this jail process already inside both, blocked reading its
//! standard input. A cold start writes one line, a [`JailSpec`], and the jail drops to the
//! function's uid, re-arms `PR_SET_PDEATHSIG` (a uid change clears it), and execs
//! bubblewrap. It never starts a thread.
//!
//! Where the function's files can be bound into a sandbox, the whole sandbox is built ahead:
//! the jail is handed its command as soon as it is in the cgroup, bubblewrap builds the
//! namespaces and mounts, and runs [`shim_main`] (thaw's own binary, bound read-only at
//! [`SHIM_PATH`]) inside, which waits for a [`ShimSpec`]: the function's binary and the
//! instance's environment, the only things that depend on which instance it becomes. A
//! cold start then costs one line on a pipe and the function's exec.

use std::os::unix::process::CommandExt as _;

use serde::{Deserialize, Serialize};

/// The hidden subcommand that runs [`main`].
pub const SUBCOMMAND: &str = "__jail";
/// The hidden subcommand that runs [`shim_main`].
pub const SHIM_SUBCOMMAND: &str = "__shim";
/// Where thaw's binary is bound inside a sandbox, to run the shim.
pub const SHIM_PATH: &str = "/run/thaw/shim";

/// What the shim execs, as one JSON line on its standard input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    /// The function's program.
    pub program: String,
    /// Its arguments (a `command` function's).
    #[serde(default)]
    pub args: Vec<String>,
    /// Where it runs, if not where the sandbox put it (`/tmp`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// The instance's whole environment.
    pub env: Vec<(String, String)>,
}

/// What the jail execs, as one JSON line on its standard input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailSpec {
    /// The program (bubblewrap).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// The uid (and gid) to drop to, if any.
    pub uid: Option<u32>,
    /// Where the program starts (a `command`'s workdir when no bubblewrap enters it).
    #[serde(default)]
    pub cwd: Option<String>,
    /// thaw's pid: if the jail's parent is no longer thaw, it exits instead.
    pub parent: i32,
}

/// One JSON line from stdin, read without buffering past it (the rest of the pipe belongs
/// to whoever runs next). `Ok(None)`: end of input.
fn read_spec<T: serde::de::DeserializeOwned>() -> Result<Option<T>, String> {
    let mut line = Vec::new();
    loop {
        // Not std's stdin: it buffers, and would swallow the line meant for the shim.
        match read_byte() {
            Ok(None) if line.is_empty() => return Ok(None),
            Ok(None) | Ok(Some(b'\n')) => break,
            Ok(Some(b)) => line.push(b),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the spec: {e}")),
        }
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| format!("bad spec: {e}"))
}

/// One byte of fd 0, unbuffered; `None` at end of input.
#[allow(unsafe_code)]
fn read_byte() -> std::io::Result<Option<u8>> {
    let mut byte = 0u8;
    // SAFETY: read(2) into one byte we own.
    match unsafe { libc::read(0, (&mut byte as *mut u8).cast(), 1) } {
        1 => Ok(Some(byte)),
        0 => Ok(None),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Waits for a [`JailSpec`] on stdin, then becomes it. Returns only on error (the exit code
/// to use); end of input (thaw dropped the spare sandbox) is a quiet exit 0.
pub fn main() -> i32 {
    let spec: JailSpec = match read_spec() {
        Ok(Some(s)) => s,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("thaw jail: {e}");
            return 1;
        }
    };
    if let Err(e) = drop_to(spec.uid, spec.parent) {
        eprintln!("thaw jail: cannot drop privileges: {e}");
        return 1;
    }
    // stdin stays thaw's pipe: a shim inside reads its spec from it.
    let mut command = std::process::Command::new(&spec.program);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let err = command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .exec();
    eprintln!("thaw jail: cannot exec {}: {err}", spec.program);
    127
}

/// Inside a ready sandbox: waits for a [`ShimSpec`], then execs the function with the
/// instance's environment and /dev/null for stdin. Returns only on error.
pub fn shim_main() -> i32 {
    let spec: ShimSpec = match read_spec() {
        Ok(Some(s)) => s,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("thaw shim: {e}");
            return 1;
        }
    };
    let mut command = std::process::Command::new(&spec.program);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let err = command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .exec();
    eprintln!("thaw shim: cannot exec {}: {err}", spec.program);
    127
}

/// Drops to `uid` (same gid, no supplementary groups), arms `PR_SET_PDEATHSIG` (a uid
/// change clears it), and exits at once if the parent is no longer `parent` (thaw died
/// before the signal was armed, so nobody would send it). Only async-signal-safe calls
/// and no allocation: it also runs between fork and exec.
#[allow(unsafe_code)]
pub(crate) fn drop_to(uid: Option<u32>, parent: i32) -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    if let Some(uid) = uid {
        // SAFETY: plain-value syscalls; the caller is single-threaded (a forked child, or
        // the jail, which starts no thread).
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return fail();
            }
        }
    }
    // SAFETY: prctl and getppid take plain values; _exit never returns.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return fail();
        }
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}
