//! A network namespace per instance, with the instance's Runtime API listening inside it.
//!
//! The Runtime API has no authentication: whoever can connect to it can take the
//! instance's invocations. So thaw never puts it where another process can connect.
//! A short-lived thread unshares a new network namespace (namespace membership is per
//! thread), brings its loopback up, binds the listener on `127.0.0.1:9001` there, keeps
//! a descriptor of the namespace, and ends. The listening socket stays in the namespace it
//! was made in while thaw accepts on it from its own threads, and the instance is put
//! into the same namespace before exec. Nothing outside that namespace can reach the
//! port, and there is no proxy hop on the warm path.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The Runtime API address inside an instance's namespace, as on AWS Lambda.
pub const RUNTIME_API_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9001);

/// A network namespace that holds nothing but loopback.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
}

impl NetNs {
    /// Makes a namespace and a listener on [`RUNTIME_API_ADDR`] inside it. Blocking (a
    /// thread is started and joined): call it from a blocking context.
    pub fn with_listener() -> io::Result<(Self, TcpListener)> {
        std::thread::scope(|s| {
            s.spawn(|| -> io::Result<(Self, TcpListener)> {
                unshare_net()?;
                loopback_up()?;
                let fd = std::fs::File::open("/proc/thread-self/ns/net")?;
                let listener = TcpListener::bind(RUNTIME_API_ADDR)?;
                listener.set_nonblocking(true)?;
                Ok((Self { fd: fd.into() }, listener))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
        })
    }

    /// The namespace process `pid` made for itself (a fork of a warm template), with a
    /// listener on [`RUNTIME_API_ADDR`] bound inside it and its loopback up. Blocking.
    pub fn of_process(pid: u32) -> io::Result<(Self, TcpListener)> {
        let ns: OwnedFd = std::fs::File::open(format!("/proc/{pid}/ns/net"))?.into();
        std::thread::scope(|s| {
            s.spawn(|| -> io::Result<TcpListener> {
                enter(&ns)?;
                loopback_up()?;
                let listener = TcpListener::bind(RUNTIME_API_ADDR)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
        })
        .map(|listener| (Self { fd: ns }, listener))
    }

    /// The descriptor to `setns` into (in the child, before exec).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// `/proc/<thaw>/fd/<n>`: a path naming the namespace, for helpers like slirp4netns.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.raw_fd())
    }
}

#[allow(unsafe_code)]
fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare(2) takes flags only. CLONE_NEWNET moves just the calling thread,
    // a scoped thread that ends right after; the rest of thaw keeps its namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[allow(unsafe_code)]
fn enter(ns: &OwnedFd) -> io::Result<()> {
    // SAFETY: setns(2) on a namespace descriptor we hold; like unshare_net it moves only
    // the calling thread, a scoped thread that ends right after.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings `lo` up in the current thread's namespace (SIOCGIFFLAGS, then SIOCSIFFLAGS).
#[allow(unsafe_code)]
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) has no memory preconditions; the descriptor is owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_ifru.ifru_flags of the ifreq we
    // own, which lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union's flags member was just written by the kernel.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads the ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_is_unreachable_from_thaws_namespace() {
        // Needs CAP_SYS_ADMIN; where thaw runs unprivileged this is the degraded mode.
        let Ok((ns, listener)) = NetNs::with_listener() else {
            return;
        };
        assert_eq!(listener.local_addr().ok(), Some(RUNTIME_API_ADDR));
        assert!(ns.raw_fd() >= 0);
        // From here (thaw's namespace), 9001 is somebody else's or nobody's port, never
        // this listener: accept must not see a connection.
        let _ = std::net::TcpStream::connect_timeout(
            &RUNTIME_API_ADDR,
            std::time::Duration::from_millis(50),
        );
        assert!(listener.accept().is_err());
    }
}
