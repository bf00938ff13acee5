//! The HTTP edge: accepting connections, bounded.
//!
//! hyper's HTTP/1 server does the protocol; this module only sets its bounds and owns the
//! accept loop:
//!
//! - **Header-read timeout** ([`Edge::header_timeout`]): a client must send a request's
//!   whole head within it, or hyper closes the connection. It runs from the moment a
//!   connection waits for a head, so it is also the **idle keep-alive timeout**: a
//!   kept-alive connection with no next request is closed after it. A slowloris client
//!   (one header byte a second) holds a connection for this long, not forever.
//! - **Connection cap** ([`Edge::max_connections`]): a semaphore permit is taken before
//!   each accept and held by the connection, so at the cap thaw stops accepting (new
//!   clients wait in the kernel's backlog) instead of running out of file descriptors,
//!   which would fail instance starts and the call store alike.
//!
//! - **Listen backlog** ([`BACKLOG`], see [`bind`]): a burst of new connections (a
//!   thousand clients at once, or slow clients reconnecting together after the header
//!   timeout) waits in the kernel's accept queue instead of overflowing it: a dropped SYN
//!   costs its client a one-second retransmit.
//!
//! Bodies have their own bound (30 s per body, in the handlers), and a long-poll, which
//! has sent its head, is not cut by the header timeout.
//!
//! Each request carries the peer address as `ConnectInfo<SocketAddr>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower_service::Service as _;

/// Bounds of the HTTP edge.
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    /// Longest wait for a request's head, and for the next request on an idle
    /// kept-alive connection.
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Edge {
    /// The default header timeout.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(20);

    /// A cap for a process allowed `fd_limit` open files: half of them, leaving the rest
    /// to instances (pipes, Runtime API listeners, cgroup files) and the call store.
    pub fn max_connections_for(fd_limit: u64) -> usize {
        usize::try_from(fd_limit / 2)
            .unwrap_or(usize::MAX)
            .clamp(64, 16_384)
    }
}

impl Default for Edge {
    fn default() -> Self {
        Self {
            header_timeout: Self::HEADER_TIMEOUT,
            max_connections: 1024,
        }
    }
}

/// The accept queue asked of the kernel (which caps it at `net.core.somaxconn`).
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`; port 0 picks a free one) with a [`BACKLOG`]-deep queue.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std's bind does: a restarted thaw can take its port back at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// Serves `app` on `listener` until `stop` turns true; then stops accepting and gives
/// open connections up to `drain` to finish the request they are on.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    edge: Edge,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(edge.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(edge.header_timeout)
        .keep_alive(true);
    loop {
        if *stop.borrow() {
            break;
        }
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if !connection_error(&e) {
                        // EMFILE and the like: wait for descriptors to come back.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let mut router = router.clone();
            async move { Ok::<_, Infallible>(router.call(req).await.unwrap_or_else(|e| match e {})) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!("connections still open after {drain:?}; closing them");
        }
    }
    Ok(())
}

/// Errors of one connection (reset before it was accepted), not of the listener.
fn connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::Edge;

    #[test]
    fn the_cap_leaves_descriptors_for_instances() {
        assert_eq!(Edge::max_connections_for(1024), 512);
        assert_eq!(Edge::max_connections_for(20_000), 10_000);
        assert_eq!(Edge::max_connections_for(10), 64);
        assert_eq!(Edge::max_connections_for(u64::MAX), 16_384);
    }
}
