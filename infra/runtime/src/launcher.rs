//! The launcher seam: how an instance process comes to exist.
//!
//! [`ExecLauncher`] execs the function binary. A later launcher will fork instances from a
//! warm template process that has already loaded its model. Either way the instance:
//!
//! - gets the environment `lambda_runtime` requires, pointing at its own Runtime API;
//! - leads its own process group, so a signal reaches anything it started;
//! - dies with thaw (`PR_SET_PDEATHSIG`), so not even a SIGKILL of thaw leaves it behind;
//! - has its stdout and stderr read line by line into the function's [`LogRing`].

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;

use thaw_manifest::FunctionPlan;
use thaw_protocol::runtime_api::env;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::logs::LogRing;

/// Starts instances by exec'ing the function's binary.
#[derive(Debug, Clone, Default)]
pub struct ExecLauncher;

impl ExecLauncher {
    /// Spawns one instance of `plan` served by the Runtime API at `api`.
    pub fn spawn(
        &self,
        plan: &FunctionPlan,
        api: SocketAddr,
        instance: &str,
        logs: &Arc<LogRing>,
    ) -> std::io::Result<Child> {
        let spec = &plan.spec;
        let mut cmd = Command::new(&plan.binary_path);
        cmd.env(env::RUNTIME_API, api.to_string())
            .env(env::FUNCTION_NAME, plan.name.as_str())
            .env(env::MEMORY_SIZE, spec.memory.mebibytes().to_string())
            .env(env::FUNCTION_VERSION, "$LATEST")
            .env(env::MAX_CONCURRENCY, spec.concurrency.to_string())
            .env(env::INSTANCE_ID, instance)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &plan.snapshot_dir {
            cmd.env(env::SNAPSHOT_DIR, dir);
        }
        for (role, dir) in &plan.snapshot_dirs {
            cmd.env(env::snapshot_dir_for(role), dir);
        }
        if let Some(kind) = &spec.gpu.kind {
            cmd.env("THAW_GPU", format!("{kind}:{}", spec.gpu.count));
            cmd.env(
                "THAW_GPU_REQUIRED",
                if spec.gpu_required { "1" } else { "0" },
            );
            if let Some(devices) = gpu_devices(instance_number(instance), spec.gpu.count) {
                cmd.env("CUDA_VISIBLE_DEVICES", devices);
            }
        }
        let parent = std::process::id() as libc::pid_t;
        die_with_parent(&mut cmd, parent);
        let mut child = cmd.spawn()?;
        if let Some(out) = child.stdout.take() {
            pump_lines(out, instance.to_owned(), "stdout", Arc::clone(logs));
        }
        if let Some(err) = child.stderr.take() {
            pump_lines(err, instance.to_owned(), "stderr", Arc::clone(logs));
        }
        Ok(child)
    }
}

#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command, parent: libc::pid_t) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed; prctl, getppid and _exit are all
    // async-signal-safe, and it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // thaw may have died between fork and prctl: then nobody would signal us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

fn pump_lines<R: AsyncRead + Unpin + Send + 'static>(
    pipe: R,
    instance: String,
    stream: &'static str,
    logs: Arc<LogRing>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(64 * 1024, pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // read_until keeps reading a huge line; cap what we keep, not what we drain.
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf[..buf.len().min(16 * 1024)])
                        .trim_end()
                        .to_owned();
                    logs.push(&instance, stream, line);
                }
            }
        }
    });
}

/// Sends `signal` to an instance's whole process group.
#[allow(unsafe_code)]
pub fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the
    // process group this instance leads (process_group(0) at spawn).
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// The number at the end of an instance name (`embed-3` -> 3).
fn instance_number(instance: &str) -> usize {
    instance
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The GPUs of instance `n` of a function that wants `count`: the machine's GPUs
/// (`THAW_GPUS`, else thaw's own `CUDA_VISIBLE_DEVICES`) cut into groups of `count`,
/// handed out round-robin. `None` when thaw does not know the machine's GPUs: the
/// instance then sees them all.
fn gpu_devices(n: usize, count: u32) -> Option<String> {
    let all = std::env::var("THAW_GPUS")
        .or_else(|_| std::env::var("CUDA_VISIBLE_DEVICES"))
        .ok()?;
    let ids: Vec<&str> = all
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let count = (count as usize).max(1);
    if ids.len() < count {
        return Some(ids.join(","));
    }
    let groups = ids.len() / count;
    let g = n % groups;
    Some(ids[g * count..(g + 1) * count].join(","))
}

/// Raises this process's soft open-file limit to its hard limit: each long-poll, map
/// stream and instance holds descriptors, and the common soft default of 1024 is too low
/// for a thousand waiting clients. Returns the new soft limit.
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own; raising soft to hard is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_get_their_own_group_of_gpus_round_robin() {
        assert_eq!(instance_number("embed-gpu-3"), 3);
        std::env::set_var("THAW_GPUS", "0,1,2,3");
        assert_eq!(gpu_devices(1, 2).as_deref(), Some("2,3"));
        assert_eq!(gpu_devices(2, 2).as_deref(), Some("0,1"));
        assert_eq!(gpu_devices(3, 1).as_deref(), Some("3"));
        // Asking for more than the machine has: all of them.
        assert_eq!(gpu_devices(1, 8).as_deref(), Some("0,1,2,3"));
        std::env::remove_var("THAW_GPUS");
    }
}
