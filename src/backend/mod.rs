//! Back ends: where a route's connections go, and getting there.
//!
//! - [`pool`]: the state behind the configured back ends: health verdicts, per-worker counts,
//!   per-route statistics ([`Pools`], built from the routing table);
//! - [`balance`]: the order in which a connection tries them ([`Plan`], by `balance`);
//! - [`health`]: the active health checks, on their own thread;
//! - [`handoff`]: handing the client's socket itself to a local terminator.
//!
//! [`connect`] walks the plan: each attempt within the connect timeout, the first that
//! accepts wins (a TCP or unix connect with the first bytes sent at once, or a hand-off). Each
//! failed attempt is counted by cause (`backend_connect_failures_total{cause}` and the back
//! end's own failures) and may set the back end aside for this worker (passive ejection); when
//! every attempt failed the error says whether the back ends were down or this host ran out of
//! descriptors or ports.
pub mod balance;
pub mod handoff;
pub mod health;
pub mod pool;

pub use balance::{client_key, Key, Plan, Tried};
pub use pool::{Active, BackendId, BackendSnapshot, Hist, Pool, PoolError, Pools, RouteSnapshot, RouteStats, Shared};

use crate::metrics::{ConnectCause, Local};
use crate::route::{RouteId, Target};
use crate::sys::Socket;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

/// What a connection brings to [`connect`].
pub struct Request<'a> {
    pub route: RouteId,
    pub worker: usize,
    pub timeout: Duration,
    pub metrics: &'a Local,
    /// Sent with the connect to a TCP or unix back end (PROXY header + ClientHello), as much as
    /// the socket takes at once.
    pub first: &'a [u8],
    /// What the hashes hash.
    pub key: Key,
    /// The client's socket and what goes with it, for hand-off back ends (passthrough only).
    pub handoff: Option<(&'a Socket, handoff::Message<'a>)>,
    /// Record the connect latency.
    pub timing: bool,
}

/// How the connection reached its back end.
#[derive(Debug)]
pub enum Link {
    /// A connected socket, with how many of the first bytes went out with the connect.
    /// `nodelay_later`: a TCP socket made for first bytes, whose TCP_NODELAY is still to be set
    /// before anything more goes ([`Socket::tcp_for_first_bytes`]).
    Socket { socket: Socket, sent: usize, nodelay_later: bool },
    /// The client's socket went to a local terminator, which owns the connection now.
    HandedOff,
}

/// A connection that reached a back end.
#[derive(Debug)]
pub struct Connected<'a> {
    pub link: Link,
    pub backend: BackendId,
    /// Counts the connection open to the back end (least connections) while held.
    pub active: Option<Active<'a>>,
}

/// No back end could be reached: the last failure and its cause (`tried` 0: every back end
/// was down, none was tried).
#[derive(Debug, thiserror::Error)]
#[error("no back end could be reached ({tried} tried); last: {source}")]
pub struct ConnectError {
    pub backend: Option<BackendId>,
    pub cause: ConnectCause,
    pub tried: usize,
    pub source: io::Error,
}

impl ConnectError {
    /// Whether this host, not the back ends, was the problem (descriptors, memory, ports).
    pub fn is_local(&self) -> bool {
        self.cause == ConnectCause::LocalResources
    }
}

/// Connects the connection of `req` to a back end of its route (in `pools`), in the order of
/// its plan.
pub async fn connect<'p>(pools: &'p Pools, req: &Request<'_>) -> Result<Connected<'p>, ConnectError> {
    let none = || io::Error::new(io::ErrorKind::NotFound, "every back end is down");
    let Some(pool) = pools.pool(req.route) else {
        return Err(ConnectError { backend: None, cause: ConnectCause::Other, tried: 0, source: none() });
    };
    let mut last: Option<ConnectError> = None;
    let mut tried = 0;
    for (id, b) in Plan::new(pools, pool, req.worker, &req.key) {
        tried += 1;
        let started = req.timing.then(Instant::now);
        let res = attempt(req, &b.target).await;
        let took = started.map(|s| s.elapsed());
        match res {
            Ok(link) => {
                b.connected(req.worker, took);
                let active = matches!(link, Link::Socket { .. }).then(|| b.open(req.worker));
                return Ok(Connected { link, backend: id, active });
            }
            Err((cause, err)) => {
                req.metrics.bump(|c| c.backend_connect_failures.bump(cause));
                if b.failed(req.worker, cause, &pool.eject) {
                    req.metrics.bump(|c| c.backend_ejections += 1);
                    crate::warn_every_second!(
                        worker = req.worker,
                        backend = %b.target,
                        cause = cause.as_str(),
                        "back end set aside after failed connects in a row"
                    );
                }
                crate::debug_every_second!(backend = %b.target, cause = cause.as_str(), error = %err, "back-end connect failed");
                last = Some(ConnectError { backend: Some(id), cause, tried, source: err });
            }
        }
    }
    Err(match last {
        Some(mut e) => {
            e.tried = tried;
            e
        }
        None => ConnectError { backend: None, cause: ConnectCause::Other, tried: 0, source: none() },
    })
}

/// One attempt at one back end.
async fn attempt(req: &Request<'_>, target: &Target) -> Result<Link, (ConnectCause, io::Error)> {
    let io_err = |e: io::Error| (ConnectCause::of(&e), e);
    match target {
        Target::Tcp(addr) => {
            // With first bytes, their segment carries the handshake's last ACK, and TCP_NODELAY
            // waits until more than them goes (the relay sets it: `relay::Pair::nodelay_later`).
            let socket = if req.first.is_empty() { Socket::tcp_for(*addr) } else { Socket::tcp_for_first_bytes(*addr) };
            let socket = socket.map_err(io_err)?;
            let sent = dial(&socket, |s| s.start_connect(*addr), req.timeout, req.first).await.map_err(io_err)?;
            Ok(Link::Socket { socket, sent, nodelay_later: !req.first.is_empty() })
        }
        Target::Unix(path) => {
            let socket = Socket::unix_stream().map_err(io_err)?;
            let sent = dial(&socket, |s| s.start_connect_unix(path), req.timeout, req.first).await.map_err(|e| {
                // A unix listener with a full backlog refuses at once (EAGAIN): the back end's
                // problem, not ours.
                let cause = match e.raw_os_error() {
                    Some(libc::EAGAIN) => ConnectCause::Refused,
                    Some(libc::ENOENT) => ConnectCause::Refused,
                    _ => ConnectCause::of(&e),
                };
                (cause, e)
            })?;
            Ok(Link::Socket { socket, sent, nodelay_later: false })
        }
        Target::Handoff(path) => {
            let Some((client, msg)) = &req.handoff else {
                let e = io::Error::new(io::ErrorKind::Unsupported, "a hand-off needs the client's socket");
                return Err((ConnectCause::Other, e));
            };
            match handoff::hand_off(path, client, msg, req.timeout).await {
                Ok(()) => Ok(Link::HandedOff),
                Err(cause) => Err((cause, io::Error::other(cause.as_str()))),
            }
        }
    }
}

/// Connects `addr` with nothing sent first (tests and tools).
pub async fn dial_tcp(addr: SocketAddr, timeout: Duration, first: &[u8]) -> io::Result<(Socket, usize)> {
    let socket = Socket::tcp_for(addr)?;
    let sent = dial(&socket, |s| s.start_connect(addr), timeout, first).await?;
    Ok((socket, sent))
}

/// One back end: connect(2), then send `first` in the same breath, as HAProxy and nginx do. On
/// loopback and fast LANs the handshake is over when connect returns, so the back end is woken
/// once, to a connection that already holds the ClientHello; through the ring the send would
/// follow a completion round trip later and wake it a second time. A handshake still in flight
/// (EAGAIN) is waited for with POLLOUT, and the bytes go later ([`relay`]); 0 are sent then.
async fn dial(
    sock: &Socket,
    start: impl FnOnce(&Socket) -> io::Result<bool>,
    timeout: Duration,
    first: &[u8],
) -> io::Result<usize> {
    let connected = start(sock)?;
    if !first.is_empty() {
        match sock.try_send_vectored(&[io::IoSlice::new(first)]) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            // Refused or reset during the handshake: the next back end.
            Err(e) => return Err(e),
        }
    } else if connected {
        return Ok(0);
    }
    match tokio::time::timeout(timeout, sock.finish_connect()).await {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            // The poll is still pending: shutting the socket down completes it, so its fd is
            // closed instead of lingering through SYN retries.
            sock.shutdown(Shutdown::Both);
            Err(io::ErrorKind::TimedOut.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A back end whose accept queue is full drops our SYN, so the handshake is still in flight
    /// when connect(2) returns: nothing may be sent then (0 bytes reported), the connect must
    /// still complete once the SYN is retried, and the bytes then go through in full.
    #[test]
    fn a_connect_still_in_flight_sends_nothing_early() {
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        // Fills the accept queue (a backlog of 0 holds one connection).
        let filler = std::net::TcpStream::connect(addr).unwrap();
        let listener = std::net::TcpListener::from(listener);
        let drainer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let (_first, _) = listener.accept().unwrap();
            let (mut ours, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            ours.read_to_end(&mut got).unwrap();
            got
        });
        let hello = b"ClientHello bytes".to_vec();
        let sent = tokio_uring::start(async {
            let (sock, sent) = dial_tcp(addr, Duration::from_secs(10), &hello).await.unwrap();
            let (res, _) = sock.send_all(hello.clone(), sent).await;
            res.unwrap();
            sent
        });
        assert_eq!(sent, 0, "bytes were sent before the handshake finished");
        assert_eq!(drainer.join().unwrap(), hello);
        drop(filler);
    }
}
