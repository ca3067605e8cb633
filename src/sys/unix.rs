//! Unix-domain sockets: passing file descriptors (`SCM_RIGHTS`) and reading the peer's
//! credentials (`SO_PEERCRED`).
//!
//! Used to hand listening sockets to a new binary on upgrade and to hand an accepted client
//! connection to a local terminator. These calls work on any unix socket fd (`std`'s
//! `UnixStream`/`UnixDatagram`, or a ring [`super::Socket`]); pass `MSG_DONTWAIT` in `flags`
//! on a socket a worker must never block on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Most descriptors sent or received in one message.
pub const MAX_FDS: usize = 64;

/// The credentials of the process at the other end of a unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Sends `data` (at least one byte: a stream socket needs one to carry the descriptors) with
/// `fds` attached. Returns the bytes of `data` sent; the descriptors go with the first byte.
pub fn send_fds(sock: &impl AsRawFd, data: &[u8], fds: &[RawFd], flags: i32) -> io::Result<usize> {
    if data.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "send_fds needs data and at most MAX_FDS fds"));
    }
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: an all-zero msghdr is a valid empty header; the fields are filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes we own, enough for one cmsghdr with
        // `fd_bytes` of data (CMSG_SPACE), so CMSG_FIRSTHDR is non-null and in bounds, and
        // CMSG_DATA has room for `fds`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fd_bytes);
        }
    }
    // SAFETY: msg points at our iovec and control buffer, both alive for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Receives into `buf`, appending any descriptors that came with it to `fds` (close-on-exec).
/// Returns the bytes received (0 at end of stream).
pub fn recv_fds(sock: &impl AsRawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>, flags: i32) -> io::Result<usize> {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is a valid empty header; the fields are filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at `buf` and the control buffer, both alive and writable for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed cmsghdrs;
    // CMSG_FIRSTHDR/CMSG_NXTHDR stay inside it, and each SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / 4 descriptors that are now ours to own.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "descriptors were truncated"));
    }
    Ok(n as usize)
}

/// The effective user id of this process (what `SO_PEERCRED` reports of a peer).
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The real uid of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The credentials of the peer of a connected unix socket.
pub fn peer_cred(sock: &impl AsRawFd) -> io::Result<PeerCred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred { pid: cred.pid, uid: cred.uid, gid: cred.gid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_and_credentials_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut keep, give) = UnixStream::pair().unwrap();
        assert_eq!(send_fds(&a, b"x", &[give.as_raw_fd()], 0).unwrap(), 1);
        drop(give);
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        assert_eq!(recv_fds(&b, &mut buf, &mut fds, 0).unwrap(), 1);
        assert_eq!((buf[0], fds.len()), (b'x', 1));
        // The received descriptor is the other end of `keep`.
        let mut got = UnixStream::from(fds.pop().unwrap());
        got.write_all(b"hello").unwrap();
        let mut five = [0u8; 5];
        keep.read_exact(&mut five).unwrap();
        assert_eq!(&five, b"hello");
        let me = peer_cred(&a).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        // SAFETY: getuid has no preconditions.
        assert_eq!(me.uid, unsafe { libc::getuid() });
        assert!(send_fds(&a, b"", &[], 0).is_err());
    }
}
