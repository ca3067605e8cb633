//! Everything specific to io_uring, tokio-uring and raw file descriptors, in one place.
//!
//! The rest of the crate sees a [`Socket`] with async `accept`/`recv`/`send`/`poll`, a two-step
//! connect, non-blocking `try_send_vectored`, a
//! [`Pipe`] with non-blocking `splice`, and [`runtime`] to build a worker's ring. Every `unsafe`
//! block of the crate lives here, each with a `// SAFETY:` comment.
//!
//! ## Why these shapes
//! - tokio-uring 0.5 has no POLL_ADD, no socket-less accept and no splice, so operations are built
//!   with the `io-uring` crate and submitted through its public [`UnsubmittedOneshot`].
//! - **Dropping an in-flight operation does not cancel it.** The kernel keeps using the fd number and
//!   the buffer until the completion arrives. So every operation owns, until its completion, an `Rc`
//!   of the socket's fd (the fd is closed only when the last operation referencing it has completed,
//!   which also rules out a stale operation hitting a reused fd number) and the buffer it reads into
//!   or writes from. A connection that gives up on a pending operation (timeout, idle, drain) calls
//!   [`Socket::shutdown`] first, which completes every pending operation on it promptly.
//! - IORING_OP_SPLICE always runs on io-wq kernel threads; we use POLL_ADD for readiness and
//!   `splice(2)` with `SPLICE_F_NONBLOCK` on O_NONBLOCK sockets instead (see shared/notes/measured.md).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use io_uring::{cqueue, opcode, squeue, types};
use std::io;
use std::marker::PhantomData;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

/// poll(2) event bits, re-exported so callers need no libc.
pub const POLLIN: u32 = libc::POLLIN as u32;
pub const POLLOUT: u32 = libc::POLLOUT as u32;
pub const POLLRDHUP: u32 = libc::POLLRDHUP as u32;
pub const POLLERR: u32 = libc::POLLERR as u32;
pub const POLLHUP: u32 = libc::POLLHUP as u32;

// ---- submitting one-shot operations -------------------------------------------------------

/// Turns a completion into `(result, stored data)`.
struct Completion<D>(PhantomData<fn() -> D>);

impl<D> OneshotOutputTransform for Completion<D> {
    type Output = (io::Result<u32>, D);
    type StoredData = D;

    fn transform_oneshot_output(self, data: D, cqe: cqueue::Entry) -> Self::Output {
        let res = cqe.result();
        let out = if res >= 0 { Ok(res as u32) } else { Err(io::Error::from_raw_os_error(-res)) };
        (out, data)
    }
}

/// Submits `sqe`, keeping `data` alive until the kernel completes it, even if the returned future
/// is dropped first (tokio-uring then parks `data` in its driver until the completion arrives).
///
/// # Safety
/// Every pointer inside `sqe` must point into memory owned by `data` (heap memory, so moving `data`
/// does not move it), and every fd in `sqe` must be kept open by `data`.
async unsafe fn submit<D: Unpin + 'static>(data: D, sqe: squeue::Entry) -> (io::Result<u32>, D) {
    UnsubmittedOneshot::new(data, Completion(PhantomData), sqe).submit().await
}

// ---- sockets ------------------------------------------------------------------------------

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

    /// Receives into the spare capacity of `buf` (after its current length), extending its length by
    /// the bytes received. `Ok(0)` is end of stream (or no spare capacity).
    pub async fn recv(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let spare = buf.capacity() - buf.len();
        let ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let sqe = opcode::Recv::new(types::Fd(self.fd.as_raw_fd()), ptr, spare.min(u32::MAX as usize) as u32).build();
        // SAFETY: `ptr..ptr+spare` is the heap spare capacity of `buf`, which the stored data owns
        // until the completion (moving a Vec does not move its heap block); the Rc keeps the fd open.
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

    /// Waits until the socket is ready for `events` (POLLIN, POLLOUT); returns the ready mask.
    pub async fn poll(&self, events: u32) -> io::Result<u32> {
        let sqe = opcode::PollAdd::new(types::Fd(self.fd.as_raw_fd()), events).build();
        // SAFETY: the entry holds no pointers; the Rc keeps the fd open until the completion.
        let (res, _fd) = unsafe { submit(Rc::clone(&self.fd), sqe) }.await;
        res
    }

    /// A new non-blocking TCP socket with TCP_NODELAY, of `addr`'s family, ready to [`start_connect`](Self::start_connect).
    pub fn tcp_for(addr: SocketAddr) -> io::Result<Socket> {
        let domain = socket2::Domain::for_address(addr);
        let sock =
            socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking().cloexec(), Some(socket2::Protocol::TCP))?;
        sock.set_nodelay(true)?;
        Ok(Socket::from(OwnedFd::from(sock)))
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

    /// shutdown(2). Also completes every operation pending on the socket, which is how a
    /// connection abandons them (see the module docs). Errors (already closed) are ignored.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = self.sock_ref().shutdown(how);
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

// ---- pipes and splice ---------------------------------------------------------------------

/// A non-blocking pipe used to splice one direction of a connection.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes currently held in the pipe.
    pub held: usize,
    /// Capacity reported by F_GETPIPE_SZ.
    pub capacity: usize,
}

/// Result of one non-blocking splice.
pub enum Spliced {
    /// Bytes moved (0 = end of stream when reading a socket).
    Moved(usize),
    /// Nothing to move now: wait for readiness.
    WouldBlock,
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<Spliced> {
    loop {
        // SAFETY: plain syscall on fds the caller borrows for the duration of the call; null
        // offsets are required for pipes and sockets.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(Spliced::Moved(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(Spliced::WouldBlock),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

impl Pipe {
    /// Creates a non-blocking pipe and asks for `size` bytes of capacity (the kernel may give less,
    /// e.g. above /proc/sys/fs/pipe-max-size for unprivileged users; the default 64 KiB then stays).
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are new and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on an fd we own; failure is harmless (the default size stays).
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        let capacity = if got > 0 {
            got as usize
        } else {
            warn_small_pipes(size, io::Error::last_os_error());
            // SAFETY: as above.
            let cur = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if cur > 0 {
                cur as usize
            } else {
                65536
            }
        };
        Ok(Pipe { read, write, held: 0, capacity })
    }

    /// Moves up to the pipe's free space from `src` into the pipe.
    pub fn fill_from(&mut self, src: &Socket) -> io::Result<Spliced> {
        let room = self.capacity - self.held;
        let r = splice(src.as_raw_fd(), self.write.as_raw_fd(), room)?;
        if let Spliced::Moved(n) = r {
            self.held += n;
        }
        Ok(r)
    }

    /// Moves what the pipe holds into `dst`.
    pub fn drain_to(&mut self, dst: &Socket) -> io::Result<Spliced> {
        let r = splice(self.read.as_raw_fd(), dst.as_raw_fd(), self.held)?;
        if let Spliced::Moved(n) = r {
            self.held -= n.min(self.held);
        }
        Ok(r)
    }
}

// ---- process limits -----------------------------------------------------------------------

/// Raises the soft RLIMIT_NOFILE to the hard limit (every connection costs two fds); returns the
/// new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

// ---- runtime ------------------------------------------------------------------------------

/// Ring settings of one worker.
#[derive(Debug, Clone, Copy)]
pub struct RingOptions {
    pub entries: u32,
    pub sqpoll: bool,
    pub sqpoll_idle_ms: u32,
}

/// Builds a tokio-uring runtime. Tries COOP_TASKRUN + SINGLE_ISSUER (never DEFER_TASKRUN, which
/// hangs tokio-uring 0.5) and falls back to a plain ring on kernels that refuse them.
pub fn runtime(opts: RingOptions) -> io::Result<tokio_uring::Runtime> {
    let mut first = io_uring::IoUring::builder();
    if opts.sqpoll {
        first.setup_sqpoll(opts.sqpoll_idle_ms);
    } else {
        first.setup_coop_taskrun().setup_single_issuer();
    }
    let mut plain = io_uring::IoUring::builder();
    if opts.sqpoll {
        plain.setup_sqpoll(opts.sqpoll_idle_ms);
    }
    let mut last = None;
    for urb in [first, plain] {
        let mut b = tokio_uring::builder();
        b.entries(opts.entries).uring_builder(&urb);
        match tokio_uring::Runtime::new(&b) {
            Ok(rt) => return Ok(rt),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no ring")))
}

/// Says once per process that pipes are smaller than asked: an unprivileged process gets only
/// `fs.pipe-user-pages-soft` pages of pipes at full size (256 pipes of 256 KiB by default), after
/// which every new pipe keeps the 64 KiB default or less and splice moves less per call.
fn warn_small_pipes(size: usize, err: io::Error) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            size,
            error = %err,
            "the kernel refused to size a splice pipe; spliced connections get smaller pipes \
             (raise fs.pipe-user-pages-soft, see tuning/sysctl.conf, or lower --pipe-pool)"
        );
    }
}
