//! Sockets driven through the ring: async `accept`/`recv`/`send`/`poll`, a two-step connect, and
//! non-blocking `try_send_vectored` for bytes that live in someone else's buffers.
//!
//! Every operation owns, until its completion, an `Rc` of the socket's fd (the fd is closed only
//! when the last operation referencing it has completed, which also rules out a stale operation
//! hitting a reused fd number) and the buffer it reads into or writes from. A connection that
//! gives up on a pending operation (timeout, idle, drain) calls [`Socket::shutdown`] first, which
//! completes every pending operation on it promptly.

use super::ring::{submit, Submitted};
use io_uring::{opcode, types};
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// poll(2) event bits, re-exported so callers need no libc.
pub const POLLIN: u32 = libc::POLLIN as u32;
pub const POLLOUT: u32 = libc::POLLOUT as u32;
pub const POLLRDHUP: u32 = libc::POLLRDHUP as u32;
pub const POLLERR: u32 = libc::POLLERR as u32;
pub const POLLHUP: u32 = libc::POLLHUP as u32;

/// A socket fd shared by its owner and the operations in flight on it; closed (synchronously, by
/// `OwnedFd`'s drop) when the last of them lets go.
#[derive(Clone)]
pub struct Socket {
    fd: Rc<OwnedFd>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Socket").field(&self.fd.as_raw_fd()).finish()
    }
}

/// A pending POLL_ADD ([`Socket::poll`]): the ready mask, or the error.
#[must_use = "the poll is already submitted"]
pub struct Ready(Submitted<Rc<OwnedFd>>);

impl Future for Ready {
    type Output = io::Result<u32>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|(res, _fd)| res)
    }
}

impl From<OwnedFd> for Socket {
    fn from(fd: OwnedFd) -> Self {
        Self { fd: Rc::new(fd) }
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A non-blocking, close-on-exec TCP socket of `addr`'s family.
fn new_tcp(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking().cloexec(), Some(socket2::Protocol::TCP))
}

impl Socket {
    fn sock_ref(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(self.fd.as_ref())
    }

    /// Accepts one connection, non-blocking and close-on-exec, without reading the peer address.
    pub async fn accept(&self) -> io::Result<Socket> {
        let fd = Rc::clone(&self.fd);
        let sqe = opcode::Accept::new(types::Fd(fd.as_raw_fd()), std::ptr::null_mut(), std::ptr::null_mut())
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build();
        // SAFETY: the entry holds no pointers (null address and length), and `fd` keeps the
        // listening socket open until the completion.
        let (res, _fd) = unsafe { submit(fd, sqe) }.await;
        let raw = res? as RawFd;
        // SAFETY: a successful accept returns a new fd that nobody else owns.
        Ok(Socket::from(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Cancels every operation this ring has in flight on this socket (`IORING_OP_ASYNC_CANCEL`
    /// by fd, Linux 5.19 and later); returns how many were cancelled. Each cancelled operation
    /// completes with `ECANCELED`, or with its result if it had already finished (an accept that
    /// took a connection returns it). Unlike [`shutdown`](Self::shutdown) this leaves the socket
    /// itself alone: another process sharing it (a binary upgrade) keeps accepting on it.
    pub async fn cancel_pending(&self) -> io::Result<u32> {
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(self.fd.as_raw_fd())).all()).build();
        // SAFETY: the entry holds no pointers; the Rc keeps the fd open until the completion.
        let (res, _fd) = unsafe { submit(Rc::clone(&self.fd), sqe) }.await;
        match res {
            // Nothing was in flight.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(0),
            other => other,
        }
    }

    /// One non-blocking accept(2) outside the ring (the listener must be non-blocking):
    /// `WouldBlock` when nothing is queued.
    pub fn try_accept(&self) -> io::Result<Socket> {
        // SAFETY: accept4 with null address pointers writes nothing; the fd is borrowed from
        // `self`, which keeps it open for the call.
        let raw = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a successful accept returns a new fd that nobody else owns.
        Ok(Socket::from(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Makes a TCP listener drop every new handshake (a pure SYN) while it keeps completing the
    /// ones already under way and keeps its accept queue: a socket filter that passes every
    /// segment with ACK set. Between "drain the backlog" and "close the listener" a SYN would
    /// otherwise become a connection the kernel lets in and then resets when the listener closes.
    /// A dropped SYN is retransmitted by the client (after 1 s) and then finds the listener
    /// gone: refused, never reset after connecting. (For TCP the filter sees the segment from
    /// its TCP header; byte 13 holds the flags. Children of the listener inherit the filter,
    /// which never matches on an established connection.)
    pub fn refuse_new_handshakes(&self) -> io::Result<()> {
        self.sock_ref().attach_filter(&super::filter::refuse_all())
    }

    /// Makes a TCP listener drop the new handshakes (pure SYNs) of the sources in `keys`
    /// (sorted, unique, at most [`filter::MAX_SHUNNED`](super::filter::MAX_SHUNNED)), replacing
    /// the filter it had; with no keys, takes the filter off. Everything else passes.
    pub fn shun_sources(&self, keys: &[super::filter::ShunKey]) -> io::Result<()> {
        if keys.is_empty() {
            return self.clear_filter();
        }
        self.sock_ref().attach_filter(&super::filter::shunning(keys))
    }

    /// Takes the socket filter off (none attached: fine).
    pub fn clear_filter(&self) -> io::Result<()> {
        match self.sock_ref().detach_filter() {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Makes the socket non-blocking (for [`try_accept`](Self::try_accept) on a listener).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        self.sock_ref().set_nonblocking(true)
    }

    /// Receives into the spare capacity of `buf` (after its current length), extending its length by
    /// the bytes received. `Ok(0)` is end of stream (or no spare capacity).
    pub async fn recv(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.recv_at_most(buf, usize::MAX).await
    }

    /// Like [`recv`](Self::recv), reading at most `max` bytes.
    pub async fn recv_at_most(&self, mut buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        let spare = (buf.capacity() - buf.len()).min(max);
        let ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let sqe = opcode::Recv::new(types::Fd(self.fd.as_raw_fd()), ptr, spare.min(u32::MAX as usize) as u32).build();
        // SAFETY: as in `recv`: `ptr..ptr+spare` lies in the heap spare capacity of `buf`, owned by
        // the stored data until the completion; the Rc keeps the fd open.
        let (res, (_fd, mut buf)) = unsafe { submit((Rc::clone(&self.fd), buf), sqe) }.await;
        match res {
            Ok(n) => {
                let n = (n as usize).min(spare);
                // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    /// Reads up to `max` bytes of what is queued without consuming them (`MSG_PEEK`) into
    /// `buf` (cleared first); waits until something is queued. `Ok(0)` is end of stream.
    pub async fn peek(&self, mut buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        let spare = buf.capacity().min(max);
        let ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let sqe = opcode::Recv::new(types::Fd(self.fd.as_raw_fd()), ptr, spare.min(u32::MAX as usize) as u32)
            .flags(libc::MSG_PEEK)
            .build();
        // SAFETY: as in `recv`: the spare capacity of `buf` is owned by the stored data until the
        // completion; the Rc keeps the fd open.
        let (res, (_fd, mut buf)) = unsafe { submit((Rc::clone(&self.fd), buf), sqe) }.await;
        match res {
            Ok(n) => {
                let n = (n as usize).min(spare);
                // SAFETY: the kernel initialised the first `n` bytes.
                unsafe { buf.set_len(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    /// Sends `buf[from..]` once; returns how many bytes went.
    pub async fn send(&self, buf: Vec<u8>, from: usize) -> (io::Result<usize>, Vec<u8>) {
        let from = from.min(buf.len());
        let rest = &buf[from..];
        let sqe =
            opcode::Send::new(types::Fd(self.fd.as_raw_fd()), rest.as_ptr(), rest.len().min(u32::MAX as usize) as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build();
        // SAFETY: the pointer and length describe initialised heap bytes of `buf`, owned by the
        // stored data until the completion; the Rc keeps the fd open.
        let (res, (_fd, buf)) = unsafe { submit((Rc::clone(&self.fd), buf), sqe) }.await;
        (res.map(|n| n as usize), buf)
    }

    /// Sends all of `buf[from..]`.
    pub async fn send_all(&self, mut buf: Vec<u8>, mut from: usize) -> (io::Result<()>, Vec<u8>) {
        while from < buf.len() {
            let (res, b) = self.send(buf, from).await;
            buf = b;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => from += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// One non-blocking send(2) of `bufs`, outside the ring: for bytes that live in someone else's
    /// buffers (rustls's queued records), which need not outlive the call because the kernel has
    /// copied them when it returns. `WouldBlock` when the send buffer is full.
    pub fn try_send_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.sock_ref().send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    }

    /// As [`try_send_vectored`](Self::try_send_vectored), with MSG_MORE: the bytes wait in the
    /// kernel for what follows, so that a FIN sent right after (the close) leaves in the same
    /// segment (one segment and one wake-up of the peer fewer). Only for the last bytes before
    /// a close that comes at once: corked bytes wait for it.
    pub fn try_send_vectored_before_close(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.sock_ref().send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | libc::MSG_MORE)
    }

    /// One non-blocking readv(2) into `bufs` in order (see [`try_recv`](Self::try_recv)).
    pub fn try_recv_vectored(&self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        let count = bufs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        loop {
            // SAFETY: `IoSliceMut` is ABI-compatible with `struct iovec` (std guarantees it on
            // Unix) and each describes memory valid for writes for the duration of the call; the
            // fd is borrowed from `self`. The socket is non-blocking (every socket here is).
            let n = unsafe { libc::readv(self.fd.as_raw_fd(), bufs.as_mut_ptr().cast(), count) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Waits until the socket is ready for `events` (POLLIN, POLLOUT); returns the ready mask.
    /// The POLL_ADD is submitted when this is called (await it at once): waiting this way holds
    /// no buffer, and the future is a few words ([`Ready`]).
    pub fn poll(&self, events: u32) -> Ready {
        let sqe = opcode::PollAdd::new(types::Fd(self.fd.as_raw_fd()), events).build();
        // SAFETY: the entry holds no pointers; the Rc keeps the fd open until the completion.
        Ready(unsafe { submit(Rc::clone(&self.fd), sqe) })
    }

    /// One non-blocking recv(2) into `buf`, outside the ring: `Ok(0)` is end of stream,
    /// `WouldBlock` means nothing has arrived. For reads into a buffer that is not kept while
    /// waiting (the worker's scratch buffer): wait with [`poll`](Self::poll) first.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of its length for the duration of the call; the
            // fd is borrowed from `self`, which keeps it open.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Two non-blocking reads in one system call (`recvmmsg(2)` of two messages on a stream
    /// socket): the first into `buf[..split]`, the second into `buf[split..]` right after it.
    /// Returns what the first read and, if it found anything, the second: `Some(0)` is the end
    /// of the stream seen by the second read, `None` a second read that would block. An error of
    /// the second read is kept by the kernel for the next one (`recvmmsg` stores it in the
    /// socket's `SO_ERROR`), so it is not lost. This is how a burst learns that its peer's FIN
    /// followed it without a read of its own (`relay::copy::read`).
    pub fn try_recv_twice(&self, buf: &mut [u8], split: usize) -> io::Result<(usize, Option<usize>)> {
        let split = split.min(buf.len());
        let (a, b) = buf.split_at_mut(split);
        let mut iov = [
            libc::iovec { iov_base: a.as_mut_ptr().cast(), iov_len: a.len() },
            libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() },
        ];
        // SAFETY: an all-zero `mmsghdr` is valid (no name, no control data, no iovecs).
        let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        loop {
            // SAFETY: each header points at one iovec describing memory valid for writes (two
            // disjoint halves of `buf`) for the duration of the call; the kernel writes only
            // `msg_len` and `msg_flags` of the headers; the fd is borrowed from `self`.
            let k = unsafe {
                libc::recvmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), 2, libc::MSG_DONTWAIT, std::ptr::null_mut())
            };
            match k {
                2 => return Ok((msgs[0].msg_len as usize, Some(msgs[1].msg_len as usize))),
                1 => return Ok((msgs[0].msg_len as usize, None)),
                k if k >= 0 => return Err(io::ErrorKind::WouldBlock.into()),
                _ => {}
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// One non-blocking send(2) of `buf`, outside the ring (no SIGPIPE): how many bytes the
    /// kernel took; `WouldBlock` when the send buffer is full.
    pub fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for reads of its length for the duration of the call (the
            // kernel copies it before returning); the fd is borrowed from `self`.
            let n = unsafe {
                libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// A new non-blocking TCP socket with TCP_NODELAY, of `addr`'s family, ready to [`start_connect`](Self::start_connect).
    pub fn tcp_for(addr: SocketAddr) -> io::Result<Socket> {
        let sock = new_tcp(addr)?;
        sock.set_nodelay(true)?;
        Ok(Socket::from(OwnedFd::from(sock)))
    }

    /// A new non-blocking TCP socket for a connection whose first bytes are sent as soon as it
    /// is established (passthrough: the ClientHello). `TCP_DEFER_ACCEPT` on a connecting socket
    /// makes the kernel hold back the handshake's last ACK for the first bytes, which carry it:
    /// one segment fewer, and the back end takes the connection and its first bytes from one.
    /// (The ACK goes alone after 200 ms if no bytes come.) TCP_NODELAY is left for
    /// [`set_nodelay`](Self::set_nodelay) once more than the first bytes go: a short
    /// connection sends nothing else, and nothing is ever delayed before then (a send with no
    /// bytes unacknowledged goes at once).
    pub fn tcp_for_first_bytes(addr: SocketAddr) -> io::Result<Socket> {
        let sock = new_tcp(addr)?;
        let one: libc::c_int = 1;
        // SAFETY: `one` is a valid c_int for the duration of the call; the fd is owned by `sock`.
        // A refusal costs one segment more, nothing else: the socket is used as it is.
        let _ = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(Socket::from(OwnedFd::from(sock)))
    }

    /// Sends any ACK the kernel is holding back and turns quick ACKs on for this socket
    /// (TCP_QUICKACK), for a connection accepted in delayed-ACK mode (the listeners' setting)
    /// whose first bytes came in pieces: a client waiting for the ACK of the first piece (Nagle)
    /// then sends the rest at once. Errors (not TCP) are ignored.
    pub fn ack_now(&self) {
        let _ = self.sock_ref().set_quickack(true);
    }

    /// Whether TCP_NODELAY is set (false for a socket that is not TCP).
    pub fn nodelay(&self) -> bool {
        self.sock_ref().nodelay().unwrap_or(false)
    }

    /// Sets TCP_NODELAY (see [`tcp_for_first_bytes`](Self::tcp_for_first_bytes)); a socket that
    /// is not TCP (a unix back end) is left as it is.
    pub fn set_nodelay(&self) {
        let _ = self.sock_ref().set_nodelay(true);
    }

    /// A new non-blocking unix stream socket, ready to [`start_connect_unix`](Self::start_connect_unix).
    pub fn unix_stream() -> io::Result<Socket> {
        let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM.nonblocking().cloexec(), None)?;
        Ok(Socket::from(OwnedFd::from(sock)))
    }

    /// Starts a connect to the unix socket at `path` (see [`start_connect`](Self::start_connect));
    /// a full backlog is `WouldBlock`.
    pub fn start_connect_unix(&self, path: &std::path::Path) -> io::Result<bool> {
        let addr = socket2::SockAddr::unix(path)?;
        match self.sock_ref().connect(&addr) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINPROGRESS) | Some(libc::EALREADY)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A non-blocking unix `SOCK_SEQPACKET` socket connected to `path` (a local connect
    /// completes at once, or fails: `EAGAIN` when the listener's backlog is full).
    pub fn seqpacket_connect(path: &std::path::Path) -> io::Result<Socket> {
        let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET.nonblocking().cloexec(), None)?;
        sock.connect(&socket2::SockAddr::unix(path)?)?;
        Ok(Socket::from(OwnedFd::from(sock)))
    }

    /// A listening unix `SOCK_SEQPACKET` socket at `path`, non-blocking; a stale socket file
    /// (nothing listening) is replaced, anything else at `path` is an error.
    pub fn seqpacket_listen(path: &std::path::Path, backlog: u32) -> io::Result<OwnedFd> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"));
            }
            match Self::seqpacket_connect(path) {
                Ok(_) => return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process listens on it")),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process listens on it"))
                }
                Err(_) => std::fs::remove_file(path)?,
            }
        }
        let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET.nonblocking().cloexec(), None)?;
        sock.bind(&socket2::SockAddr::unix(path)?)?;
        // Any local process may connect: who may hand off is decided by its uid (SO_PEERCRED)
        // once connected, not by the file's mode (the sender usually runs as another user).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        sock.listen(backlog.min(i32::MAX as u32) as i32)?;
        Ok(OwnedFd::from(sock))
    }

    /// Makes the next close send a reset (`SO_LINGER` 0): how a refused connection is closed
    /// without leaving TIME_WAIT here.
    pub fn set_reset_on_close(&self) {
        let _ = self.sock_ref().set_linger(Some(std::time::Duration::ZERO));
    }

    /// Starts a connect with a plain non-blocking connect(2): `Ok(true)` when it is already
    /// established, `Ok(false)` when it is in progress (on loopback and fast LANs the handshake is
    /// usually over by the time the call returns, so the caller can send at once and let the
    /// peer wake up once, to a connection that already holds its first bytes).
    pub fn start_connect(&self, addr: SocketAddr) -> io::Result<bool> {
        match self.sock_ref().connect(&addr.into()) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINPROGRESS) | Some(libc::EALREADY)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits for a connect started by [`start_connect`](Self::start_connect) to finish. If this
    /// future is dropped before it completes, the caller must [`shutdown`](Self::shutdown) the
    /// socket, or the fd lingers until the kernel gives up.
    pub async fn finish_connect(&self) -> io::Result<()> {
        self.poll(POLLOUT).await?;
        match self.sock_ref().take_error()? {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Closes the socket through the ring when this is its last holder; else the last holder's
    /// drop closes it. The close goes to the kernel with the ring's next batch of submissions, not
    /// as a close(2) of its own, and runs inline there (a socket has no `flush`, so no io-wq
    /// thread). It is not awaited: a connection's closes (back end, then client) share one
    /// submission and one completion pass, where awaiting each cost the worker a loop of its own
    /// (an `epoll_wait` and an `io_uring_enter`) per close when nothing else was queued. On a
    /// kernel without IORING_OP_CLOSE, close(2). (IORING_OP_SHUTDOWN is not used: the kernel
    /// always hands it to an io-wq thread.)
    pub fn close(self) {
        let Ok(fd) = Rc::try_unwrap(self.fd) else { return };
        if !super::ring::closes_on_ring() {
            drop(fd);
            return;
        }
        let raw = fd.into_raw_fd();
        let sqe = opcode::Close::new(types::Fd(raw)).build();
        // SAFETY: the entry holds no pointers. The fd is owned by the operation from here on:
        // `into_raw_fd` gave up the only owner, so nothing else uses or closes the number until
        // the kernel has closed it; dropping the future leaves the operation to complete on its
        // own (tokio-uring keeps its slot until the completion arrives).
        drop(unsafe { submit((), sqe) });
    }

    /// shutdown(2). Also completes every operation pending on the socket, which is how a
    /// connection abandons them (see the module docs). Errors (already closed) are ignored.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = self.sock_ref().shutdown(how);
    }

    /// TCP segments this socket has received (`tcpi_segs_in` of TCP_INFO): for tests and
    /// diagnostics of what the relay puts on the wire.
    pub fn segments_in(&self) -> io::Result<u32> {
        // SAFETY: `tcp_info` is plain data (all-zero is a valid value); getsockopt writes at most
        // `len` bytes into it and the fd is borrowed from `self`.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` and `len` are valid for writes for the duration of the call.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info.tcpi_segs_in)
    }

    /// getsockname(2): the local address the client dialed (the dedicated IP).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock_ref()
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
    }

    /// getpeername(2).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock_ref()
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A connection accepted from a listener in delayed-ACK mode starts in it (what
    /// `server::bind` relies on), and `ack_now` takes it out (quick ACKs on).
    #[test]
    fn ack_now_ends_the_delayed_ack_mode_a_connection_inherited() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&l).set_quickack(false).unwrap();
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        let s = Socket::from(OwnedFd::from(accepted));
        assert!(!s.sock_ref().quickack().unwrap(), "inherited from the listener");
        s.ack_now();
        assert!(s.sock_ref().quickack().unwrap());
    }

    /// `try_recv_twice` on a TCP connection: the bytes and the end of the stream behind them in
    /// one call; bytes alone (the second read would block); nothing yet; the end alone; and a
    /// second read that finds more bytes, which land in the second half.
    #[test]
    fn two_reads_in_one_call_see_the_bytes_and_the_end_behind_them() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let pair = || {
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (a, _) = l.accept().unwrap();
            (c, Socket::from(OwnedFd::from(a)))
        };
        let readable = |s: &Socket| {
            let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut p, 1, 5_000) };
        };
        let mut buf = [0u8; 64];
        let (mut c, s) = pair();
        assert_eq!(s.try_recv_twice(&mut buf, 32).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        c.write_all(b"hello").unwrap();
        readable(&s);
        assert_eq!(s.try_recv_twice(&mut buf, 32).unwrap(), (5, None));
        assert_eq!(&buf[..5], b"hello");
        c.write_all(b"bye").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        // The FIN is queued behind the bytes by the time the peer's shutdown returns (loopback);
        // poll until both are there.
        let mut got = (0, None);
        for _ in 0..100 {
            readable(&s);
            got = s.try_recv_twice(&mut buf, 32).unwrap();
            if got.1 == Some(0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(got.1, Some(0));
        assert_eq!(&buf[..3], b"bye");
        assert_eq!(s.try_recv_twice(&mut buf, 32).unwrap(), (0, Some(0)));
        // More than the first half holds: the rest goes into the second.
        let (mut c, s) = pair();
        c.write_all(&[7u8; 40]).unwrap();
        readable(&s);
        let (a, b) = s.try_recv_twice(&mut buf, 32).unwrap();
        assert_eq!(a, 32);
        assert!(b.is_some_and(|b| b > 0 && b <= 8), "{b:?}");
    }

    #[test]
    fn a_listener_refusing_new_handshakes_keeps_its_queue() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let queued = std::net::TcpStream::connect(addr).unwrap();
        let s = Socket::from(OwnedFd::from(l));
        s.refuse_new_handshakes().unwrap();
        // A new handshake gets no answer (its SYN is dropped, not reset) ...
        let late = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert_eq!(late.map(|_| ()).unwrap_err().kind(), io::ErrorKind::TimedOut);
        // ... while the connection already queued is still there to accept.
        s.set_nonblocking().unwrap();
        assert!(s.try_accept().is_ok());
        drop(queued);
    }

    /// The filter reads an IPv6 source's /64 from the IPv6 header (the kernel, not our
    /// interpreter): ::1 shunned gets no answer, another /64 shunned leaves it alone.
    #[test]
    fn an_ipv6_source_is_shunned_by_its_64() {
        use super::super::filter::ShunKey;
        let Ok(l) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("skipped: no IPv6 loopback");
            return;
        };
        let addr = l.local_addr().unwrap();
        let s = Socket::from(OwnedFd::from(l));
        let other = ShunKey::of("2001:db8::1".parse().unwrap());
        s.shun_sources(&[other]).unwrap();
        assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok());
        let mut keys = vec![other, ShunKey::of("::1".parse().unwrap())];
        keys.sort();
        s.shun_sources(&keys).unwrap();
        let e = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    /// Connects from `src` to `addr` within 300 ms, or says why not.
    fn connect_from(src: std::net::IpAddr, addr: SocketAddr) -> io::Result<socket2::Socket> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        s.connect_timeout(&addr.into(), Duration::from_millis(300))?;
        Ok(s)
    }

    #[test]
    fn a_shunned_source_gets_no_answer_and_others_are_served() {
        use super::super::filter::ShunKey;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (bad, good): (std::net::IpAddr, std::net::IpAddr) =
            ("127.0.0.9".parse().unwrap(), "127.0.0.10".parse().unwrap());
        let s = Socket::from(OwnedFd::from(l));
        // A connection of the source made before the shun stays.
        let before = connect_from(bad, addr).unwrap();
        let mut keys = vec![ShunKey::of(bad), ShunKey::of("10.1.2.3".parse().unwrap())];
        keys.sort();
        s.shun_sources(&keys).unwrap();
        let refused = connect_from(bad, addr).map(|_| ()).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::TimedOut, "{refused}");
        let served = connect_from(good, addr);
        assert!(served.is_ok(), "{served:?}");
        // The kernel takes the largest program too (its verifier checks every jump).
        let mut many: Vec<ShunKey> = (1..super::super::filter::MAX_SHUNNED as u32)
            .map(|i| ShunKey::of(std::net::Ipv4Addr::from(0x0a00_0000 + i * 3).into()))
            .chain([ShunKey::of(bad)])
            .collect();
        many.sort();
        assert_eq!(many.len(), super::super::filter::MAX_SHUNNED);
        s.shun_sources(&many).unwrap();
        assert!(connect_from(bad, addr).is_err());
        assert!(connect_from(good, addr).is_ok());
        // The entry gone, the source is answered again.
        s.shun_sources(&[]).unwrap();
        assert!(connect_from(bad, addr).is_ok());
        s.clear_filter().unwrap();
        drop(before);
    }

    /// Segments the accepting side receives for a connection whose first bytes go right after
    /// the connect: with [`Socket::tcp_for_first_bytes`] the handshake's last ACK rides with
    /// them (one segment fewer than with [`Socket::tcp_for`]), and Nagle is off only once
    /// [`Socket::set_nodelay`] says so.
    #[test]
    fn first_bytes_carry_the_handshake_ack() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut seen = Vec::new();
        for first in [false, true] {
            let s = if first { Socket::tcp_for_first_bytes(addr) } else { Socket::tcp_for(addr) }.unwrap();
            let nodelay = || s.sock_ref().nodelay().unwrap();
            assert_eq!(nodelay(), !first);
            // On loopback the handshake is over when connect returns (as `backend::dial` finds).
            s.start_connect(addr).unwrap();
            assert_eq!(s.try_send(b"hello").unwrap(), 5);
            let (mut peer, _) = l.accept().unwrap();
            let mut got = [0u8; 5];
            std::io::Read::read_exact(&mut peer, &mut got).unwrap();
            assert_eq!(&got, b"hello");
            let peer = Socket::from(OwnedFd::from(peer));
            seen.push(peer.segments_in().unwrap());
            s.set_nodelay();
            assert!(nodelay());
        }
        assert_eq!(seen[1] + 1, seen[0], "segments received, plain then first bytes: {seen:?}");
    }
}
