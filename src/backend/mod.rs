//! Back ends: connecting to a route's back ends.
//!
//! [`connect`] tries the route's back ends in order, each within the connect timeout; the first
//! that accepts wins. Each failed attempt is counted by cause (`backend_connect_failures_total
//! {cause}`: refused, timed out, unreachable, local resources), and when every attempt failed the
//! error says whether the back ends were down or this host ran out of descriptors or ports.

use crate::metrics::{ConnectCause, Local};
use crate::sys::Socket;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

/// A connected back end.
#[derive(Debug)]
pub struct Connected {
    pub socket: Socket,
    pub addr: SocketAddr,
    /// How many bytes of the first bytes went out with the connect.
    pub sent: usize,
}

/// Every back end failed; the last failure and its cause.
#[derive(Debug, thiserror::Error)]
#[error("every back end failed; last {addr:?}: {source}")]
pub struct ConnectError {
    pub addr: Option<SocketAddr>,
    pub cause: ConnectCause,
    pub source: io::Error,
}

impl ConnectError {
    /// Whether this host, not the back ends, was the problem (descriptors, memory, ports).
    pub fn is_local(&self) -> bool {
        self.cause == ConnectCause::LocalResources
    }
}

/// Connects to `backends` in order, each within `timeout`; the first that accepts wins and gets
/// as much of `first` (PROXY header + ClientHello) as its send buffer takes at once; the count
/// comes back with the socket, and the caller sends the rest. Each failed attempt bumps
/// `backend_connect_failures{cause}`.
pub async fn connect(
    backends: &[SocketAddr],
    timeout: Duration,
    metrics: &Local,
    first: &[u8],
) -> Result<Connected, ConnectError> {
    let mut last = None;
    for &addr in backends {
        let err = match Socket::tcp_for(addr) {
            Err(e) => e,
            Ok(socket) => match dial(&socket, addr, timeout, first).await {
                Ok(sent) => return Ok(Connected { socket, addr, sent }),
                Err(e) => e,
            },
        };
        let cause = ConnectCause::of(&err);
        metrics.bump(|c| c.backend_connect_failures.bump(cause));
        tracing::debug!(%addr, cause = cause.as_str(), error = %err, "back-end connect failed");
        last = Some(ConnectError { addr: Some(addr), cause, source: err });
    }
    Err(last.unwrap_or_else(|| ConnectError {
        addr: None,
        cause: ConnectCause::Other,
        source: io::Error::new(io::ErrorKind::NotFound, "route has no back ends"),
    }))
}

/// One back end: connect(2), then send `first` in the same breath, as HAProxy and nginx do. On
/// loopback and fast LANs the handshake is over when connect returns, so the back end is woken
/// once, to a connection that already holds the ClientHello; through the ring the send would
/// follow a completion round trip later and wake it a second time. A handshake still in flight
/// (EAGAIN) is waited for with POLLOUT, and the bytes go later ([`relay`]); 0 are sent then.
async fn dial(sock: &Socket, addr: SocketAddr, timeout: Duration, first: &[u8]) -> io::Result<usize> {
    let connected = sock.start_connect(addr)?;
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
            let metrics = Local::new(crate::metrics::Registry::new(1).slot(0));
            let c = connect(&[addr], Duration::from_secs(10), &metrics, &hello).await.unwrap();
            let (sock, sent) = (c.socket, c.sent);
            let (res, _) = sock.send_all(hello.clone(), sent).await;
            res.unwrap();
            sent
        });
        assert_eq!(sent, 0, "bytes were sent before the handshake finished");
        assert_eq!(drainer.join().unwrap(), hello);
        drop(filler);
    }
}
