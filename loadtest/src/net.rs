//! Client sockets: source addresses spread over 127.1.0.x with IP_BIND_ADDRESS_NO_PORT, pinning.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Number of client source addresses (127.1.0.1 ..).
pub const SOURCES: u32 = 32;

pub fn source_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, 0, (i % SOURCES) as u8 + 1)
}

/// Connect to `dst` from source address number `src`, letting the kernel pick the port at
/// connect time (IP_BIND_ADDRESS_NO_PORT), with TCP_NODELAY and I/O timeouts.
pub fn connect(dst: SocketAddrV4, src: u32, timeout: Duration) -> io::Result<TcpStream> {
    connect_from(dst, source_addr(src), timeout)
}

/// [`connect`] from the source address `src` itself.
pub fn connect_from(dst: SocketAddrV4, src: Ipv4Addr, timeout: Duration) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    let one: libc::c_int = 1;
    // SAFETY: plain setsockopt on a socket we own, with a c_int value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))?;
    s.set_nodelay(true)?;
    // a blocking connect bounded by SO_SNDTIMEO (Linux applies it to connect): fewer system
    // calls than a non-blocking connect and poll
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    match s.connect(&SockAddr::from(SocketAddr::V4(dst))) {
        Ok(()) => Ok(s.into()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Err(io::ErrorKind::TimedOut.into()),
        Err(e) => Err(e),
    }
}

/// Raise this process's soft limit on open files to its hard limit (idle workloads hold
/// thousands of client and back-end sockets); returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

/// Parse a CPU list such as "0-3,8".
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a.trim().parse().map_err(|_| format!("bad CPU list {s}"))?;
            let b: usize = b.trim().parse().map_err(|_| format!("bad CPU list {s}"))?;
            if b < a {
                return Err(format!("bad CPU range {part}"));
            }
            v.extend(a..=b);
        } else {
            v.push(part.parse().map_err(|_| format!("bad CPU list {s}"))?);
        }
    }
    if v.is_empty() {
        return Err(format!("empty CPU list {s:?}"));
    }
    Ok(v)
}

/// Pin the calling thread to one CPU of `cpus` (round robin by `i`); ignores CPUs that do not exist.
pub fn pin(cpus: &[usize], i: usize) {
    if cpus.is_empty() {
        return;
    }
    let id = cpus[i % cpus.len()];
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id });
}

/// A TCP port that is free on every address of `ips` at once (a target listens on one port of
/// 127.0.0.1 and of each dedicated IP): the kernel's pick for the first address, kept if the
/// others can bind it too. The port is released on return, so a target started right after binds
/// it; [`crate::targets::start`] picks again if another program took it in between.
pub fn free_port(ips: &[Ipv4Addr]) -> io::Result<u16> {
    let first = ips.first().copied().unwrap_or(Ipv4Addr::LOCALHOST);
    let mut last = io::Error::from(io::ErrorKind::AddrInUse);
    for _ in 0..64 {
        let probe = std::net::TcpListener::bind(SocketAddrV4::new(first, 0))?;
        let port = probe.local_addr()?.port();
        let others: io::Result<Vec<_>> =
            ips.iter().skip(1).map(|ip| std::net::TcpListener::bind(SocketAddrV4::new(*ip, port))).collect();
        match others {
            Ok(_) => return Ok(port),
            Err(e) => last = e,
        }
    }
    Err(io::Error::new(last.kind(), format!("no port free on all of {ips:?}: {last}")))
}

/// Kind of an I/O error, for the error table.
pub fn io_kind(e: &io::Error) -> &'static str {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused",
        ConnectionReset | BrokenPipe => "reset",
        ConnectionAborted => "aborted",
        TimedOut | WouldBlock => "timeout",
        UnexpectedEof => "eof_early",
        AddrNotAvailable | AddrInUse => "no_source_port",
        _ => match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => "no_fd",
            _ => "io_other",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_cpus("1").unwrap(), vec![1]);
        assert!(parse_cpus("").is_err());
        assert!(parse_cpus("3-1").is_err());
    }

    #[test]
    fn a_free_port_binds_on_every_address() {
        let ips = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
        let port = free_port(&ips).unwrap();
        assert_ne!(port, 0);
        let held: Vec<_> = ips.iter().map(|ip| std::net::TcpListener::bind(SocketAddrV4::new(*ip, port))).collect();
        assert!(held.iter().all(Result::is_ok), "{held:?}");
        // while they are held, another pick is another port
        assert_ne!(free_port(&ips).unwrap(), port);
    }
}
