//! Readiness from the runtime's epoll (tokio's reactor) instead of a ring POLL_ADD, for the UDP
//! sockets of QUIC.
//!
//! A ring completion that arrives while the worker sleeps in `epoll_wait` (tokio-uring parks
//! there) is delivered as task work: the kernel interrupts the wait (`EINTR`), runs the work on
//! the way out, and the worker goes round its loop again (`io_uring_enter`, `epoll_wait`) before
//! it sees the completion. Four system calls per wake-up instead of one. A datagram socket
//! registered with the epoll itself wakes the worker straight out of `epoll_wait`, with no
//! re-arming per wait; its cost is one `epoll_ctl` when it is watched and one when it is not.
//! That pays for a socket woken more than once, as every QUIC socket is (a handshake alone wakes
//! a flow's socket several times), and not for a short TCP connection, which stays on the ring.
//!
//! [`Watched`] holds the socket (one more holder of its fd), so the registration is always
//! removed before the fd is closed and its number reused.

use super::Socket;
use std::io;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;

/// A socket registered with the runtime's epoll for reading (edge-triggered). Drop it when the
/// socket is no longer read: a watched socket whose datagrams nobody reads still wakes the worker.
pub struct Watched(AsyncFd<Socket>);

/// The socket was readable: read until the queue is empty, then say so ([`drained`]); dropped
/// without it, the next [`Watched::readable`] returns at once (for a reader that stopped early to
/// let others run).
///
/// [`drained`]: Readable::drained
pub struct Readable<'a>(AsyncFdReadyGuard<'a, Socket>);

impl Watched {
    /// Registers `sock` (one `epoll_ctl`). Call it on a worker's thread.
    pub fn new(sock: Socket) -> io::Result<Self> {
        // SAFETY: the `Socket` moved in holds its fd open (an `Rc` of the `OwnedFd`, which never
        // changes) for as long as the `AsyncFd` owns it, so the number stays open and names the
        // same socket until the registration is removed at drop.
        unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }.map(Self).map_err(|e| e.into_parts().1)
    }

    /// The socket.
    pub fn socket(&self) -> &Socket {
        self.0.get_ref()
    }

    /// Waits until the socket has something to read, or an error, or was shut down.
    pub async fn readable(&self) -> io::Result<Readable<'_>> {
        self.0.readable().await.map(Readable)
    }
}

impl Readable<'_> {
    /// The last read found the queue empty (`EAGAIN`, or fewer datagrams than asked for): the
    /// next [`Watched::readable`] waits for new ones. A datagram that arrived after that read
    /// began is a new edge: it wakes the reader again.
    pub fn drained(mut self) {
        self.0.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn on_ring<F: std::future::Future<Output = ()>>(f: F) {
        super::super::runtime(super::super::RingOptions { entries: 8, sqpoll: false, sqpoll_idle_ms: 0 })
            .expect("ring")
            .block_on(f);
    }

    /// A datagram wakes the reader; once drained, the reader waits for the next one, which wakes
    /// it again (the edge is not lost); a shutdown wakes it too.
    #[test]
    fn a_watched_socket_wakes_for_each_new_datagram_and_for_a_shutdown() {
        on_ring(async {
            let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            rx.set_nonblocking(true).expect("nonblocking");
            let to = rx.local_addr().expect("addr");
            let sock = Socket::from(std::os::fd::OwnedFd::from(rx));
            let w = Watched::new(sock.clone()).expect("watch");
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let mut buf = [0u8; 64];
            for round in 0..3u8 {
                tx.send_to(&[round], to).expect("send");
                let r = tokio::time::timeout(Duration::from_secs(5), w.readable()).await;
                let r = r.expect("woken").expect("readable");
                assert_eq!(sock.try_recv(&mut buf).expect("datagram"), 1);
                assert_eq!(buf[0], round);
                assert!(sock.try_recv(&mut buf).is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock));
                r.drained();
                // Drained and nothing new: the wait does not return.
                let idle = tokio::time::timeout(Duration::from_millis(20), w.readable()).await;
                assert!(idle.is_err(), "round {round}: woken with nothing to read");
            }
            sock.shutdown(std::net::Shutdown::Both);
            let r = tokio::time::timeout(Duration::from_secs(5), w.readable()).await;
            assert!(r.is_ok(), "a shutdown wakes the reader");
        });
    }
}
