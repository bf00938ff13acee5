//! `thaw __jail`: a process with one job, so that a sandbox can be made *before* the cold
//! start that needs it.
//!
//! Joining a cgroup costs an RCU grace period in the kernel (about 15 ms here for the first
//! move after a quiet spell), which would otherwise be paid on every cold start. So thaw
//! keeps one spare sandbox per function: a network namespace with the Runtime API's
//! listener, a cgroup, and this jail process already inside both, blocked reading its
//! standard input. A cold start writes one line, a [`JailSpec`], and the jail drops to the
//! function's uid, re-arms `PR_SET_PDEATHSIG` (a uid change clears it), and execs
//! bubblewrap with the function's command and environment. It never starts a thread.

use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;

use serde::{Deserialize, Serialize};

/// The hidden subcommand that runs [`main`].
pub const SUBCOMMAND: &str = "__jail";

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
    /// thaw's pid: if the jail's parent is no longer thaw, it exits instead.
    pub parent: i32,
}

/// Waits for a [`JailSpec`] on stdin, then becomes it. Returns only on error (the exit code
/// to use); end of input (thaw dropped the spare sandbox) is a quiet exit 0.
pub fn main() -> i32 {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) => return 0,
        Ok(_) => {}
        Err(e) => {
            eprintln!("thaw jail: cannot read the spec: {e}");
            return 1;
        }
    }
    let spec: JailSpec = match serde_json::from_str(&line) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("thaw jail: bad spec: {e}");
            return 1;
        }
    };
    if let Err(e) = drop_to(spec.uid, spec.parent) {
        eprintln!("thaw jail: cannot drop privileges: {e}");
        return 1;
    }
    // stdin stays open to thaw's pipe otherwise; the function gets /dev/null as before.
    let err = std::process::Command::new(&spec.program)
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .exec();
    eprintln!("thaw jail: cannot exec {}: {err}", spec.program);
    127
}

#[allow(unsafe_code)]
fn drop_to(uid: Option<u32>, parent: i32) -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    if let Some(uid) = uid {
        // SAFETY: plain-value syscalls in a single-threaded process.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return fail();
            }
        }
    }
    // SAFETY: prctl and getppid take plain values.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return fail();
        }
        if libc::getppid() != parent {
            return Err(std::io::Error::other("thaw is gone"));
        }
    }
    Ok(())
}
