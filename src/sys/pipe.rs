//! Non-blocking pipes and `splice(2)`, for the zero-copy relay.
//!
//! IORING_OP_SPLICE always runs on io-wq kernel threads; the relay uses POLL_ADD for readiness and
//! `splice(2)` with `SPLICE_F_NONBLOCK` on O_NONBLOCK sockets instead (no kernel worker threads,
//! the best bulk rate measured).

use super::socket::Socket;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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

fn splice(from: RawFd, to: RawFd, len: usize, more: bool) -> io::Result<Spliced> {
    let flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE | if more { libc::SPLICE_F_MORE } else { 0 };
    loop {
        // SAFETY: plain syscall on fds the caller borrows for the duration of the call; null
        // offsets are required for pipes and sockets.
        let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
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
        let r = splice(src.as_raw_fd(), self.write.as_raw_fd(), room, false)?;
        if let Spliced::Moved(n) = r {
            self.held += n;
        }
        Ok(r)
    }

    /// Moves what the pipe holds into `dst`. `corked`: a shutdown or close follows at once, so
    /// the socket holds the last part back for the FIN to leave in the same segment
    /// (`SPLICE_F_MORE`, which is `MSG_MORE` for a socket).
    pub fn drain_to(&mut self, dst: &Socket, corked: bool) -> io::Result<Spliced> {
        let r = splice(self.read.as_raw_fd(), dst.as_raw_fd(), self.held, corked)?;
        if let Spliced::Moved(n) = r {
            self.held -= n.min(self.held);
        }
        Ok(r)
    }
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
