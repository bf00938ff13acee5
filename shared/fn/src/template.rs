//! A function process as a warm template: load once, fork an instance per request.
//!
//! When thaw starts a function with [`thaw_protocol::template::ENV`] set, [`crate::run`]
//! loads the model *on the main thread* and hands the loaded function to [`serve`]. No
//! other thread may exist at that point: `fork` copies only the calling thread, so a
//! lock held by another thread (an allocator's, rayon's) would stay locked forever in
//! the child. [`serve`] checks this and refuses to be a template otherwise.
//!
//! Each fork request (see the protocol in [`thaw_protocol::template`]) forks twice:
//!
//! - the first child, the *supervisor*, enters new user, mount, PID, IPC, UTS (and
//!   network) namespaces, reports its credentials to thaw, waits for its environment,
//!   and forks the instance; it then only relays thaw's signals and reports the exit;
//! - the second child is PID 1 of its own PID namespace. It mounts a fresh `/proc` and a
//!   private `/tmp`, drops every capability, and forks the *instance*, then stays as the
//!   namespace's init: it reaps orphans, forwards SIGTERM, and exits as the instance
//!   did;
//! - the instance takes its environment and returns from [`serve`] with the function, to
//!   start its threads and its Runtime API client like any instance.
//!
//! Neither child exits with the template: an instance serving calls survives the
//! template's death. Each dies with thaw, through the instance socket (its end-of-file
//! makes the supervisor kill the instance).

// fork, descriptor passing and namespace set-up are system calls with no safe wrapper
// for what they do to the process; each use says why it is sound.
#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut, Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{
    recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use nix::unistd::{fork, ForkResult, Pid};
use thaw_protocol::template::{
    Go, TemplateConfig, ENV, EXIT_NOT_FORKABLE, EXIT_PREFIX, MAX_GO_LINE, READY, TERMINATE,
};

/// Why a fork could not become an instance.
#[derive(Debug, thiserror::Error)]
enum ForkError {
    #[error("{0}: {1}")]
    Sys(&'static str, nix::Error),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("bad answer from thaw: {0}")]
    Protocol(String),
}

/// The template configuration thaw passed, if this process was started as a template.
pub(crate) fn config_from_env() -> Option<Result<TemplateConfig, String>> {
    let raw = std::env::var(ENV).ok()?;
    Some(serde_json::from_str(&raw).map_err(|e| format!("bad {ENV}: {e}")))
}

/// Serves fork requests on standard input until thaw closes it (then exits). Returns
/// only in a fork that has become an instance, with the loaded function.
pub(crate) fn serve<F>(config: &TemplateConfig, function: F) -> F {
    let threads = thread_count();
    if threads != 1 {
        eprintln!(
            "template: init left {threads} threads running; forking would copy only one, \
             so this function cannot be a template"
        );
        std::process::exit(EXIT_NOT_FORKABLE);
    }
    // SAFETY: fd 0 is the control socket thaw passed; it stays open for the process's
    // life and is only used through this borrow.
    let control = unsafe { BorrowedFd::borrow_raw(0) };
    // Forks exit on their own schedule; let the kernel reap them.
    ignore_children(true);
    if write_all(control.as_raw_fd(), READY).is_err() {
        std::process::exit(0);
    }
    loop {
        let fds = match receive_fds(control) {
            Ok(Some(fds)) => fds,
            // thaw hung up: the template is no longer wanted.
            Ok(None) => std::process::exit(0),
            Err(e) => {
                eprintln!("template: cannot read a fork request: {e}");
                std::process::exit(1);
            }
        };
        let Ok([instance, stdout, stderr]) = <[OwnedFd; 3]>::try_from(fds) else {
            eprintln!("template: a fork request without its three descriptors");
            continue;
        };
        // SAFETY: this process has one thread (checked above, and nothing here starts
        // one), so the child inherits no lock held by another thread.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { .. }) => {}
            Ok(ForkResult::Child) => {
                if let Err(e) = become_instance(config, instance, stdout, stderr) {
                    // Not eprintln!: with its stderr gone it would panic, and unwind the
                    // template's stack in this child.
                    let _ = writeln!(std::io::stderr(), "template fork: {e}");
                    // SAFETY: _exit ends this forked child without running the
                    // template's exit handlers twice.
                    unsafe { libc::_exit(1) };
                }
                return function;
            }
            // thaw sees the instance socket close without credentials, and execs.
            Err(e) => eprintln!("template: fork failed: {e}"),
        }
    }
}

/// In the first child: isolate, report, wait for the environment, fork the instance
/// and supervise it. Returns in the instance only.
fn become_instance(
    config: &TemplateConfig,
    instance: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<(), ForkError> {
    nix::unistd::dup2_stdout(&stdout).map_err(|e| ForkError::Sys("stdout", e))?;
    nix::unistd::dup2_stderr(&stderr).map_err(|e| ForkError::Sys("stderr", e))?;
    drop((stdout, stderr));
    // The control socket is the template's, not the instance's.
    let null = std::fs::File::open("/dev/null").map_err(|e| ForkError::Io("/dev/null", e))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| ForkError::Sys("stdin", e))?;
    drop(null);
    ignore_children(false);
    nix::unistd::setsid().map_err(|e| ForkError::Sys("setsid", e))?;
    if config.isolate {
        enter_namespaces(config.net)?;
    }
    let mut socket = UnixStream::from(instance);
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(b"h")],
        &[ControlMessage::ScmCredentials(&UnixCredentials::new())],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| ForkError::Sys("cannot send credentials", e))?;
    let go = read_go(&mut socket)?;
    let supervisor = nix::unistd::getpid();
    // SAFETY: single-threaded, as the template was.
    match unsafe { fork() }.map_err(|e| ForkError::Sys("fork", e))? {
        ForkResult::Parent { child } => supervise(socket, child),
        ForkResult::Child => {
            drop(socket);
            // SAFETY: prctl and getppid take plain values.
            let (armed, parent) = unsafe {
                (
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0,
                    libc::getppid(),
                )
            };
            // In its own PID namespace the parent is outside it, and reads as 0.
            if !armed || (parent != 0 && parent != supervisor.as_raw()) {
                return Err(ForkError::Protocol(
                    "the supervisor died before the instance started".into(),
                ));
            }
            if config.isolate {
                set_up_instance(config.tmp)?;
                // This process is PID 1 of the namespace: it stays as its init, and the
                // instance is its child.
                reap_as_init()?;
            }
            for (key, _) in std::env::vars_os() {
                std::env::remove_var(key);
            }
            for (key, value) in go.env {
                std::env::set_var(key, value);
            }
            Ok(())
        }
    }
}

/// A new user namespace mapping only this uid and gid, then new mount, PID, IPC, UTS
/// and (with `net`) network namespaces owned by it.
fn enter_namespaces(net: bool) -> Result<(), ForkError> {
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| ForkError::Sys("user namespace", e))?;
    let write = |path: &'static str, text: String| {
        std::fs::write(path, text).map_err(|e| ForkError::Io(path, e))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| ForkError::Sys("namespaces", e))
}

/// In the instance, PID 1 of its namespace: its own `/proc` and `/tmp`, no nested user
/// namespaces, no capabilities, and SIGTERM ending it as it would any other process.
fn set_up_instance(tmp: u64) -> Result<(), ForkError> {
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| ForkError::Sys("private mounts", e))?;
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), hidden, none)
        .map_err(|e| ForkError::Sys("/proc", e))?;
    let tmp_options = format!("size={tmp},mode=1777");
    mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(tmp_options.as_str()),
    )
    .map_err(|e| ForkError::Sys("/tmp", e))?;
    if std::path::Path::new("/dev/shm").is_dir() {
        mount(Some("tmpfs"), "/dev/shm", Some("tmpfs"), hidden, none)
            .map_err(|e| ForkError::Sys("/dev/shm", e))?;
    }
    nix::unistd::sethostname("thaw").map_err(|e| ForkError::Sys("hostname", e))?;
    // As bubblewrap's --disable-userns: no user namespace below this one.
    std::fs::write("/proc/sys/user/max_user_namespaces", "0")
        .map_err(|e| ForkError::Io("max_user_namespaces", e))?;
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Bounding,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set)
            .map_err(|e| ForkError::Protocol(format!("cannot drop capabilities: {e}")))?;
    }
    Ok(())
}

/// The supervisor: relays thaw's SIGTERM, kills the instance when thaw hangs up, and
/// reports how the instance ended.
fn supervise(mut socket: UnixStream, child: Pid) -> ! {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signal::{kill, Signal};
    let pidfd = pidfd_open(child);
    let mut hung_up = false;
    loop {
        let mut fds = vec![];
        if !hung_up {
            fds.push(PollFd::new(socket.as_fd(), PollFlags::POLLIN));
        }
        if let Some(pidfd) = &pidfd {
            fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        let socket_ready = !hung_up && fds[0].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        if socket_ready {
            let mut byte = [0u8; 1];
            match socket.read(&mut byte) {
                Ok(1) if byte[0] == TERMINATE => {
                    let _ = kill(child, Signal::SIGTERM);
                }
                Ok(1) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // thaw hung up (or died): the instance must not outlive it.
                _ => {
                    hung_up = true;
                    let _ = kill(child, Signal::SIGKILL);
                }
            }
        }
        match nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
            Ok(status) => {
                let (line, code) = describe(status);
                let _ = socket.write_all(format!("{EXIT_PREFIX}{line}\n").as_bytes());
                // SAFETY: ends the supervisor without unwinding into the template's code.
                unsafe { libc::_exit(code) };
            }
            Err(nix::Error::EINTR) => {}
            // SAFETY: as above.
            Err(_) => unsafe { libc::_exit(1) },
        }
    }
}

/// The instance's end as std words it (`exit status: 0`, `signal: 9 (SIGKILL)`), and the
/// code the supervisor exits with.
fn describe(status: nix::sys::wait::WaitStatus) -> (String, i32) {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => (format!("exit status: {code}"), code),
        WaitStatus::Signaled(_, signal, _) => (
            format!("signal: {} ({})", signal as i32, signal.as_str()),
            128 + signal as i32,
        ),
        other => (format!("{other:?}"), 1),
    }
}

/// One fork request: three descriptors on one byte. `None`: thaw hung up.
fn receive_fds(control: BorrowedFd<'_>) -> Result<Option<Vec<OwnedFd>>, nix::Error> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    loop {
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = match recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
        };
        if msg.bytes == 0 {
            return Ok(None);
        }
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel just installed these descriptors in this process;
                // nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        return Ok(Some(fds));
    }
}

/// thaw's [`Go`] line, read byte by byte so nothing after it is taken.
fn read_go(socket: &mut UnixStream) -> Result<Go, ForkError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match socket.read(&mut byte) {
            Ok(0) => return Err(ForkError::Protocol("thaw hung up".into())),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_GO_LINE => {
                return Err(ForkError::Protocol(
                    "the environment line is too long".into(),
                ))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ForkError::Io("reading the environment", e)),
        }
    }
    serde_json::from_slice(&line).map_err(|e| ForkError::Protocol(e.to_string()))
}

fn write_all(fd: RawFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: write(2) from a live slice to a descriptor this process holds.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// How many threads this process has.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// SIGCHLD ignored (children reaped by the kernel) or back to its default.
fn ignore_children(ignore: bool) {
    let handler = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: installs a disposition, not a handler function.
    unsafe {
        libc::signal(libc::SIGCHLD, handler);
    }
}

/// The instance, for the init's signal handler.
static INSTANCE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_signal(signal: libc::c_int) {
    let pid = INSTANCE.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 1 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

/// As bubblewrap's PID 1 does: fork the instance, then reap every orphan the instance
/// leaves in the namespace (PID 1 inherits them), forward SIGTERM and SIGINT to the
/// instance (PID 1 would ignore them), and exit as the instance did. Returns only in
/// the instance.
fn reap_as_init() -> Result<(), ForkError> {
    use nix::sys::wait::{waitpid, WaitStatus};
    let init = nix::unistd::getpid();
    // SAFETY: single-threaded, as the template was.
    match unsafe { fork() }.map_err(|e| ForkError::Sys("fork", e))? {
        ForkResult::Child => {
            // SAFETY: prctl and getppid take plain values.
            let (armed, parent) = unsafe {
                (
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0,
                    libc::getppid(),
                )
            };
            if !armed || parent != init.as_raw() {
                return Err(ForkError::Protocol("the namespace's init is gone".into()));
            }
            Ok(())
        }
        ForkResult::Parent { child } => {
            INSTANCE.store(child.as_raw(), std::sync::atomic::Ordering::SeqCst);
            for signal in [libc::SIGTERM, libc::SIGINT] {
                // SAFETY: the handler only reads an atomic and calls kill(2).
                unsafe {
                    libc::signal(
                        signal,
                        forward_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
                    );
                }
            }
            loop {
                let code = match waitpid(None, None) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => code,
                    Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => 128 + signal as i32,
                    Err(nix::Error::ECHILD) => 1,
                    _ => continue,
                };
                // SAFETY: ends the init, and with it the namespace, without unwinding.
                unsafe { libc::_exit(code) };
            }
        }
    }
}

/// A descriptor that turns readable when `pid` (a child) exits.
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes plain values and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just opened this descriptor for us.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
