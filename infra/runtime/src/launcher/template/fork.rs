//! One fork of a template: asked for, isolated, placed in its cgroup and network
//! namespace from outside ([`prepare`]), and controlled through its supervisor
//! ([`ForkControl`]).

use std::io::{IoSlice, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thaw_manifest::FunctionPlan;
use thaw_protocol::template::{EXIT_PREFIX, TERMINATE};

use super::{Template, TemplateError};
use crate::launcher::process::{host_listener, kill_cgroup, limits};
use crate::launcher::{signal_pid, InstanceControl, LaunchError};
use crate::sandbox::cgroup::{CgroupRoot, InstanceCgroup};
use crate::sandbox::netns::NetNs;

/// A fork that has isolated itself and has its cgroup and network namespace, waiting
/// for its environment: all of a cold start but the instance's own start.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) socket: UnixStream,
    /// Its supervisor's pid.
    pub(super) pid: u32,
    /// The read ends of its stdout and stderr.
    pub(super) out: OwnedFd,
    pub(super) err: OwnedFd,
    pub(super) cgroup: Option<Arc<InstanceCgroup>>,
    pub(super) netns: Option<NetNs>,
    pub(super) listener: std::net::TcpListener,
}

impl Prepared {
    /// Ends it unused: on the hang-up its supervisor exits, and its cgroup goes.
    pub(super) async fn discard(self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(cg) = self.cgroup {
            let _ = tokio::task::spawn_blocking(move || {
                cg.kill_all();
                cg.remove();
            })
            .await;
        }
    }
}

/// Asks `template` for a fork and makes its places from outside: what an exec'd
/// instance gets from its slot, around a process that already exists.
pub(super) async fn prepare(
    template: Arc<Template>,
    net: bool,
    cgroups: Option<Arc<CgroupRoot>>,
    plan: &FunctionPlan,
    name: String,
) -> Result<Prepared, TemplateError> {
    let fork_err = |e: std::io::Error| TemplateError::Fork(e.to_string());
    let (ours, theirs) = UnixStream::pair().map_err(fork_err)?;
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::PassCred, &true)
        .map_err(|e| TemplateError::Fork(e.to_string()))?;
    let (out, out_w) = pipe().map_err(fork_err)?;
    let (err, err_w) = pipe().map_err(fork_err)?;
    {
        let control = template.control.lock().map_err(|_| TemplateError::Died)?;
        let fds = [theirs.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            control.as_raw_fd(),
            &[IoSlice::new(b"f")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(|e| {
            template.dead.store(true, Ordering::SeqCst);
            TemplateError::Fork(format!("the template does not take requests: {e}"))
        })?;
    }
    drop((theirs, out_w, err_w));
    let timeout = plan.spec.startup_timeout.0;
    let socket = ours.try_clone().map_err(fork_err)?;
    let pid = match tokio::task::spawn_blocking(move || fork_pid(&socket, timeout)).await {
        Ok(Ok(pid)) => pid,
        Ok(Err(TemplateError::Fork(why))) => {
            return Err(TemplateError::Fork(format!("{why}{}", last_words(&err))))
        }
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(TemplateError::Fork(e.to_string())),
    };
    let lim = limits(plan);
    let places = tokio::task::spawn_blocking(move || -> Result<_, LaunchError> {
        let cgroup = match cgroups {
            Some(root) => {
                let cg = root.create(&name, lim).map_err(LaunchError::Cgroup)?;
                cg.add(pid).map_err(LaunchError::Cgroup)?;
                Some(Arc::new(cg))
            }
            None => None,
        };
        let (netns, listener) = if net {
            let (ns, l) = NetNs::of_process(pid).map_err(LaunchError::RuntimeApi)?;
            (Some(ns), l)
        } else {
            (None, host_listener()?)
        };
        Ok((cgroup, netns, listener))
    })
    .await
    .map_err(|e| TemplateError::Fork(e.to_string()))?;
    match places {
        Ok((cgroup, netns, listener)) => Ok(Prepared {
            socket: ours,
            pid,
            out,
            err,
            cgroup,
            netns,
            listener,
        }),
        Err(e) => {
            // Its supervisor kills it on the hang-up.
            let _ = ours.shutdown(std::net::Shutdown::Both);
            Err(e.into())
        }
    }
}

/// The fork's pid in thaw's namespace, from its credentials. Blocking.
fn fork_pid(socket: &UnixStream, timeout: Duration) -> Result<u32, TemplateError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixCredentials};
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| TemplateError::Fork(e.to_string()))?;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .map_err(|e| TemplateError::Fork(format!("no word from the fork: {e}")))?;
    if msg.bytes == 0 {
        return Err(TemplateError::Fork(
            "the fork ended before it reported".into(),
        ));
    }
    let pid = msg
        .cmsgs()
        .map_err(|e| TemplateError::Fork(e.to_string()))?
        .find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(creds) => u32::try_from(creds.pid()).ok(),
            _ => None,
        })
        .filter(|&pid| pid > 1)
        .ok_or_else(|| TemplateError::Fork("the fork sent no credentials".into()))?;
    socket
        .set_read_timeout(None)
        .map_err(|e| TemplateError::Fork(e.to_string()))?;
    Ok(pid)
}

/// How the forked instance ended, as its supervisor reports it; its socket closing
/// without a report means the supervisor was killed.
pub(super) async fn read_exit(mut socket: tokio::net::UnixStream) -> String {
    use tokio::io::AsyncReadExt as _;
    // Only one short line is expected; anything longer is not a report.
    const MAX_LINE: usize = 4096;
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return "killed".to_owned(),
            Ok(n) => n,
        };
        for &b in &chunk[..n] {
            if b != b'\n' {
                if line.len() < MAX_LINE {
                    line.push(b);
                }
                continue;
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            if let Some(status) = text.strip_prefix(EXIT_PREFIX) {
                return status.to_owned();
            }
            line.clear();
        }
    }
}

/// Signals for a forked instance: through its supervisor, and its cgroup.
#[derive(Debug)]
pub(super) struct ForkControl {
    /// The supervisor's pid.
    pub(super) pid: u32,
    pub(super) socket: UnixStream,
    pub(super) alive: AtomicBool,
    pub(super) cgroup: Option<Arc<InstanceCgroup>>,
}

impl InstanceControl for ForkControl {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn terminate(&self) {
        if self.alive.load(Ordering::SeqCst) {
            let _ = (&self.socket).write_all(&[TERMINATE]);
        }
    }

    fn kill(&self) {
        // The supervisor kills the instance when its socket closes.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if self.alive.load(Ordering::SeqCst) && self.cgroup.is_none() {
            signal_pid(self.pid, libc::SIGKILL);
        }
        kill_cgroup(self.cgroup.clone());
    }
}

/// A pipe whose ends close on exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// What a fork that failed wrote to its stderr, if anything, for the error.
fn last_words(err: &OwnedFd) -> String {
    use std::io::Read as _;
    let Ok(fd) = err.try_clone() else {
        return String::new();
    };
    let mut pipe = std::fs::File::from(fd);
    let _ = nix::fcntl::fcntl(
        &pipe,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut said = vec![0u8; 2048];
    match pipe.read(&mut said) {
        Ok(n) if n > 0 => format!(": {}", String::from_utf8_lossy(&said[..n]).trim()),
        _ => String::new(),
    }
}
