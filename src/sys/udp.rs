//! UDP sockets for QUIC: a listening socket per worker (`SO_REUSEPORT`, the destination address of
//! each datagram through `IP_PKTINFO`/`IPV6_RECVPKTINFO`, `UDP_GRO` where the kernel has it) and
//! connected sockets towards back ends.
//!
//! Readiness comes from the runtime's epoll ([`super::Watched`]: no ring poll to re-arm per wait,
//! and no interrupted wait per datagram); datagrams are then moved with non-blocking
//! `recvmsg(2)`/`sendmsg(2)` straight from and into the caller's buffers, so no buffer is parked in
//! the ring per socket (an idle flow holds no buffer at all) and one wake-up drains every datagram
//! queued. With GRO, one `recvmsg` returns several datagrams of one sender back to back, each
//! `segment` bytes long (the last may be shorter), and [`try_send`] hands such a train to the kernel
//! in one call with `UDP_SEGMENT` (GSO): the datagrams leave exactly as they came.

use super::Socket;
use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};

/// `UDP_SEGMENT` (GSO size on send) and `UDP_GRO` (coalesce on receive), from linux/udp.h: not
/// every libc target lists them.
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Room for the control messages we ask for: one pktinfo (IPv6's is the larger) and one int.
const CMSG_ROOM: usize = 128;

/// One datagram (or GRO train) received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// The sender.
    pub peer: SocketAddr,
    /// The local address it was sent to (from pktinfo; `None` when the kernel did not say).
    pub local: Option<IpAddr>,
    /// With GRO: the size of each datagram of the train (`len` is a multiple, the last shorter).
    pub segment: Option<u16>,
    /// The datagram was larger than the buffer and was cut (`MSG_TRUNC`).
    pub truncated: bool,
}

/// What the kernel offered when a UDP socket was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdpFeatures {
    /// `UDP_GRO` was accepted.
    pub gro: bool,
}

fn new_udp(addr: &SocketAddr) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(*addr);
    socket2::Socket::new(domain, socket2::Type::DGRAM.nonblocking().cloexec(), Some(socket2::Protocol::UDP))
}

fn set_int(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a live c_int on the stack and its size is passed with it; the fd
    // is borrowed from a socket that stays open for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `UDP_GRO` can be turned on for `fd` (kernels from 5.0); tries.
fn try_gro(fd: &impl AsRawFd) -> bool {
    set_int(fd, libc::SOL_UDP, UDP_GRO, 1).is_ok()
}

/// A non-blocking UDP socket bound to `addr` with `SO_REUSEPORT` (one per worker on the same
/// address), reporting each datagram's destination address, with GRO when `gro` and the kernel
/// has it.
pub fn bind_udp(addr: SocketAddr, gro: bool) -> io::Result<(OwnedFd, SocketAddr, UdpFeatures)> {
    let s = new_udp(&addr)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    match addr {
        SocketAddr::V4(_) => set_int(&s, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?,
        SocketAddr::V6(_) => {
            set_int(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
            // A dual-stack socket also reports IPv4 destinations this way.
            let _ = set_int(&s, libc::IPPROTO_IP, libc::IP_PKTINFO, 1);
        }
    }
    // Room for bursts of Initials while the worker is busy (the kernel caps it at rmem_max).
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    let features = UdpFeatures { gro: gro && try_gro(&s) };
    let actual = s.local_addr()?.as_socket().unwrap_or(addr);
    Ok((OwnedFd::from(s), actual, features))
}

/// Turns `UDP_GRO` on for `sock` (kernels from 5.0); whether it took.
pub fn enable_gro(sock: &Socket) -> bool {
    try_gro(sock)
}

/// A UDP socket another process handed over (a binary upgrade): made non-blocking (the flag
/// lives on the shared file, so it is usually set already), GRO tried again when `gro`.
pub fn adopt_udp(fd: &OwnedFd, gro: bool) -> io::Result<UdpFeatures> {
    socket2::SockRef::from(fd).set_nonblocking(true)?;
    Ok(UdpFeatures { gro: gro && try_gro(fd) })
}

/// A non-blocking UDP socket connected to `backend` (an ephemeral local port), with GRO when `gro`
/// and the kernel has it: what a flow sends its client's datagrams from.
pub fn connect_udp(backend: SocketAddr, gro: bool) -> io::Result<(Socket, UdpFeatures)> {
    let s = new_udp(&backend)?;
    s.connect(&backend.into())?;
    let features = UdpFeatures { gro: gro && try_gro(&s) };
    Ok((Socket::from(OwnedFd::from(s)), features))
}

/// A `cmsghdr`-aligned control buffer.
#[repr(C, align(8))]
struct Control([u8; CMSG_ROOM]);

fn sockaddr_to(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which is smaller than and
            // alignment-compatible with sockaddr_storage.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn sockaddr_from(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let s2: socket2::SockAddr = (*addr).into();
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are valid.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = (s2.len() as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: both regions are at least `len` bytes (`len` is bounded by the storage size) and
    // do not overlap (one is a fresh local).
    unsafe {
        std::ptr::copy_nonoverlapping(
            s2.as_ptr().cast::<u8>(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        )
    };
    (storage, len as libc::socklen_t)
}

/// The destination address (pktinfo) and GRO segment size a received `msg` carries.
fn control_of(msg: &libc::msghdr) -> (Option<IpAddr>, Option<u16>) {
    let mut local = None;
    let mut segment = None;
    // SAFETY: `msg` was filled by the kernel; CMSG_FIRSTHDR/NXTHDR walk the control buffer it
    // describes (msg_controllen was set by the kernel to what it wrote, never more than our room).
    let mut c = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !c.is_null() {
        // SAFETY: `c` is non-null and points at a cmsghdr inside the control buffer.
        let h = unsafe { &*c };
        // SAFETY: CMSG_DATA points just past the header of `c`, inside the buffer.
        let data = unsafe { libc::CMSG_DATA(c) };
        match (h.cmsg_level, h.cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                // SAFETY: the kernel writes an in_pktinfo for IP_PKTINFO; read unaligned.
                let p = unsafe { std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>()) };
                local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(p.ipi_addr.s_addr))));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                // SAFETY: the kernel writes an in6_pktinfo for IPV6_PKTINFO; read unaligned.
                let p = unsafe { std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>()) };
                let ip = Ipv6Addr::from(p.ipi6_addr.s6_addr);
                local = Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4));
            }
            (libc::SOL_UDP, UDP_GRO) => {
                // SAFETY: the kernel writes an int (the segment size) for UDP_GRO; read unaligned.
                let v = unsafe { std::ptr::read_unaligned(data.cast::<libc::c_int>()) };
                segment = u16::try_from(v).ok().filter(|s| *s > 0);
            }
            _ => {}
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        c = unsafe { libc::CMSG_NXTHDR(msg, c) };
    }
    (local, segment)
}

/// One non-blocking `recvmsg(2)` into `buf`: `WouldBlock` when nothing is queued.
pub fn try_recv(sock: &Socket, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: plain data; all-zero bytes are valid values.
    let mut from: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = MaybeUninit::<Control>::zeroed();
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: plain data; all-zero bytes are valid values.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_ROOM as _;
    // SAFETY: every pointer in `msg` points to a live local or into `buf`, with its true length;
    // they all outlive the call, which is synchronous (MSG_DONTWAIT).
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let peer = sockaddr_to(&from).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no peer address"))?;
    let (local, segment) = control_of(&msg);
    let len = (n as usize).min(buf.len());
    // A train of one datagram is a datagram.
    let segment = segment.filter(|s| usize::from(*s) < len);
    Ok(Received { len, peer, local, segment, truncated: msg.msg_flags & libc::MSG_TRUNC != 0 })
}

/// Points `msg` at `control` holding a pktinfo for the source address `from` and a GSO segment
/// size, as given (neither: no control data).
fn set_control(msg: &mut libc::msghdr, control: &mut MaybeUninit<Control>, from: Option<IpAddr>, segment: Option<u16>) {
    let mut used = 0usize;
    if from.is_some() || segment.is_some() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_ROOM as _;
        // SAFETY: the control buffer is CMSG_ROOM bytes, enough for one pktinfo and one u16
        // (each CMSG_SPACE is at most 40 bytes); msg describes it.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&*msg) };
        let mut put = |level: libc::c_int, ty: libc::c_int, bytes: &[u8]| {
            if c.is_null() {
                return;
            }
            // SAFETY: `c` points at room for a header and `bytes` inside the control buffer
            // (see above); the header fields are written before the data.
            unsafe {
                (*c).cmsg_level = level;
                (*c).cmsg_type = ty;
                (*c).cmsg_len = libc::CMSG_LEN(bytes.len() as u32) as _;
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), libc::CMSG_DATA(c), bytes.len());
            }
            // SAFETY: CMSG_SPACE of a small length is a small constant.
            used += unsafe { libc::CMSG_SPACE(bytes.len() as u32) } as usize;
            // SAFETY: walking our own (zeroed) control buffer of CMSG_ROOM bytes.
            c = unsafe { libc::CMSG_NXTHDR(&*msg, c) };
        };
        match from {
            Some(IpAddr::V4(ip)) => {
                // SAFETY: plain data; all-zero bytes are valid values.
                let mut p: libc::in_pktinfo = unsafe { zeroed() };
                p.ipi_spec_dst.s_addr = u32::from(ip).to_be();
                // SAFETY: reading the bytes of a plain-data local.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        (&p as *const libc::in_pktinfo).cast::<u8>(),
                        size_of::<libc::in_pktinfo>(),
                    )
                };
                put(libc::IPPROTO_IP, libc::IP_PKTINFO, bytes);
            }
            Some(IpAddr::V6(ip)) => {
                // SAFETY: plain data; all-zero bytes are valid values.
                let mut p: libc::in6_pktinfo = unsafe { zeroed() };
                p.ipi6_addr.s6_addr = ip.octets();
                // SAFETY: reading the bytes of a plain-data local.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        (&p as *const libc::in6_pktinfo).cast::<u8>(),
                        size_of::<libc::in6_pktinfo>(),
                    )
                };
                put(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, bytes);
            }
            None => {}
        }
        if let Some(s) = segment {
            put(libc::SOL_UDP, UDP_SEGMENT, &s.to_ne_bytes());
        }
        msg.msg_controllen = used as _;
        if used == 0 {
            msg.msg_control = std::ptr::null_mut();
        }
    }
}

/// One non-blocking `sendmsg(2)` of `buf`: to `to` (`None` on a connected socket), from the local
/// address `from` (pktinfo, for a listener bound to a wildcard address), as datagrams of `segment`
/// bytes each (GSO) when given. `WouldBlock` when the send buffer is full.
pub fn try_send(
    sock: &Socket,
    buf: &[u8],
    to: Option<SocketAddr>,
    from: Option<IpAddr>,
    segment: Option<u16>,
) -> io::Result<usize> {
    let mut control = MaybeUninit::<Control>::zeroed();
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: plain data; all-zero bytes are valid values.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    let mut name = to.map(|a| sockaddr_from(&a));
    if let Some((storage, len)) = name.as_mut() {
        msg.msg_name = (storage as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = *len;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    set_control(&mut msg, &mut control, from, segment);
    // SAFETY: every pointer in `msg` points to a live local or into `buf`, with its true length,
    // for the duration of this synchronous (MSG_DONTWAIT) call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Buffers for receiving up to `n` datagrams (or GRO trains) in one `recvmmsg(2)`: `n` slots of
/// `size` bytes, their addresses and control messages. One per worker, reused for every socket.
pub struct RecvBatch {
    size: usize,
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// (slot, what it holds) of the last receive.
    got: Vec<(usize, Received)>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("slots", &self.names.len()).field("size", &self.size).finish()
    }
}

impl RecvBatch {
    pub fn new(n: usize, size: usize) -> Self {
        let n = n.max(1);
        // SAFETY: plain data; all-zero bytes are valid values.
        let zero_name: libc::sockaddr_storage = unsafe { zeroed() };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { zeroed() };
        Self {
            size,
            bufs: vec![0; n * size],
            names: vec![zero_name; n],
            controls: (0..n).map(|_| Control([0; CMSG_ROOM])).collect(),
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n],
            hdrs: vec![zero_hdr; n],
            got: Vec::with_capacity(n),
        }
    }

    /// Slots: the most datagrams one [`recv`](Self::recv) returns.
    pub fn slots(&self) -> usize {
        self.names.len()
    }

    /// One non-blocking `recvmmsg(2)`: how many slots were filled (`WouldBlock` when none). Fewer
    /// than [`slots`](Self::slots) means the socket's queue was empty when the call returned.
    pub fn recv(&mut self, sock: &Socket) -> io::Result<usize> {
        let n = self.slots();
        for i in 0..n {
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i * self.size..].as_mut_ptr().cast(), iov_len: self.size };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = (&mut self.controls[i] as *mut Control).cast();
            h.msg_hdr.msg_controllen = CMSG_ROOM as _;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at this batch's own slot buffer, address and control
        // storage with their true sizes (rebuilt above; the Vecs are never resized), all live for
        // this synchronous (MSG_DONTWAIT) call.
        let k = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if k < 0 {
            return Err(io::Error::last_os_error());
        }
        self.got.clear();
        for i in 0..(k as usize).min(n) {
            let h = &self.hdrs[i];
            let Some(peer) = sockaddr_to(&self.names[i]) else { continue };
            let len = (h.msg_len as usize).min(self.size);
            let (local, segment) = control_of(&h.msg_hdr);
            let segment = segment.filter(|s| usize::from(*s) < len);
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.got.push((i, Received { len, peer, local, segment, truncated }));
        }
        Ok(k as usize)
    }

    /// The datagrams of the last [`recv`](Self::recv), each with its bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Received)> + '_ {
        let size = self.size;
        self.got.iter().map(move |&(i, r)| (&self.bufs[i * size..i * size + r.len], r))
    }
}

/// Sends each of `msgs` (a datagram, or a train of `segment`-byte datagrams) in one
/// `sendmmsg(2)`, all to `to` from `from` (as [`try_send`]); at most 16 at a time. Returns how
/// many went (`WouldBlock` when none).
pub fn try_send_many(
    sock: &Socket,
    msgs: &[(&[u8], Option<u16>)],
    to: Option<SocketAddr>,
    from: Option<IpAddr>,
) -> io::Result<usize> {
    const MAX: usize = 16;
    let n = msgs.len().min(MAX);
    if n == 0 {
        return Ok(0);
    }
    let mut name = to.map(|a| sockaddr_from(&a));
    let mut controls: [MaybeUninit<Control>; MAX] = std::array::from_fn(|_| MaybeUninit::zeroed());
    let mut iovs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX];
    // SAFETY: plain data; all-zero bytes are valid values.
    let mut hdrs: [libc::mmsghdr; MAX] = unsafe { zeroed() };
    for i in 0..n {
        let (buf, segment) = msgs[i];
        iovs[i] = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let m = &mut hdrs[i].msg_hdr;
        if let Some((storage, len)) = name.as_mut() {
            m.msg_name = (storage as *mut libc::sockaddr_storage).cast();
            m.msg_namelen = *len;
        }
        m.msg_iov = &mut iovs[i];
        m.msg_iovlen = 1;
        set_control(m, &mut controls[i], from, segment);
    }
    // SAFETY: every header points at live locals (address, iovec, control) or into the caller's
    // buffers, with their true lengths, for this synchronous (MSG_DONTWAIT) call.
    let k = unsafe {
        libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if k < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(k as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_readable(s: &Socket) {
        let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, 2000) };
    }

    #[test]
    fn datagrams_carry_their_addresses_both_ways() {
        let (fd, addr, _) = bind_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let listener = Socket::from(fd);
        let (client, _) = connect_udp(addr, false).unwrap();
        try_send(&client, b"hello", None, None, None).unwrap();
        wait_readable(&listener);
        let mut buf = [0u8; 64];
        let r = try_recv(&listener, &mut buf).unwrap();
        assert_eq!(&buf[..r.len], b"hello");
        assert_eq!(r.local, Some("127.0.0.1".parse().unwrap()));
        assert!(!r.truncated);
        // The answer goes out from the address the client dialed.
        try_send(&listener, b"back", Some(r.peer), r.local, None).unwrap();
        wait_readable(&client);
        let back = try_recv(&client, &mut buf).unwrap();
        assert_eq!(&buf[..back.len], b"back");
        assert_eq!(back.peer, addr);
        assert_eq!(try_recv(&client, &mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn wildcard_listener_reports_the_dialed_address_and_answers_from_it() {
        let (fd, addr, _) = bind_udp("0.0.0.0:0".parse().unwrap(), false).unwrap();
        let listener = Socket::from(fd);
        let dialed: SocketAddr = format!("127.0.0.3:{}", addr.port()).parse().unwrap();
        let (client, _) = connect_udp(dialed, false).unwrap();
        try_send(&client, b"x", None, None, None).unwrap();
        wait_readable(&listener);
        let mut buf = [0u8; 64];
        let r = try_recv(&listener, &mut buf).unwrap();
        assert_eq!(r.local, Some("127.0.0.3".parse().unwrap()));
        try_send(&listener, b"y", Some(r.peer), r.local, None).unwrap();
        wait_readable(&client);
        // A connected socket only accepts datagrams from the address it connected to: this one
        // arriving proves the answer left from 127.0.0.3.
        let back = try_recv(&client, &mut buf).unwrap();
        assert_eq!(back.peer, dialed);
    }

    #[test]
    fn batches_both_ways() {
        let (fd, addr, _) = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let listener = Socket::from(fd);
        let (client, _) = connect_udp(addr, false).unwrap();
        let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let refs: Vec<(&[u8], Option<u16>)> = msgs.iter().map(|m| (&m[..], None)).collect();
        assert_eq!(try_send_many(&client, &refs, None, None).unwrap(), 5);
        wait_readable(&listener);
        let mut batch = RecvBatch::new(4, 2048);
        let mut got = Vec::new();
        while got.len() < 5 {
            match batch.recv(&listener) {
                Ok(_) => got.extend(batch.iter().map(|(d, r)| (d.to_vec(), r.local))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(&listener),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(), msgs);
        assert!(got.iter().all(|(_, l)| *l == Some("127.0.0.1".parse().unwrap())));
        assert_eq!(batch.recv(&listener).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn gso_trains_arrive_whole_with_gro() {
        let (fd, addr, f) = bind_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let listener = Socket::from(fd);
        let (client, _) = connect_udp(addr, false).unwrap();
        let train = vec![7u8; 3 * 1000 + 500];
        if try_send(&client, &train, None, None, Some(1000)).is_err() {
            return; // no GSO on this kernel
        }
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        while got.iter().sum::<usize>() < train.len() {
            wait_readable(&listener);
            let r = try_recv(&listener, &mut buf).unwrap();
            match r.segment {
                Some(s) => got.extend(buf[..r.len].chunks(usize::from(s)).map(<[u8]>::len)),
                None => got.push(r.len),
            }
        }
        assert_eq!(got, vec![1000, 1000, 1000, 500], "gro: {}", f.gro);
    }
}
