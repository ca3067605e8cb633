//! Built-in back ends: hello responder (PROXY v1/v2 aware), echo, sink, bulk, rustls terminator,
//! and a holder of idle connections. Each listens on 127.0.0.1:PORT and serves connections from a
//! pool of pinned threads (the holder: from one epoll thread).

use crate::hello::hello_len;
use crate::suite::BackendKind;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const ANSWER_LEN: usize = 64;
pub const BULK_MAGIC: &[u8; 4] = b"SLTB";
pub const BULK_CMD_LEN: usize = 24;
pub const PATTERN_LEN: usize = (1 << 20) + 13;

/// The hello responder's fixed answer: 64 bytes naming the route.
pub fn answer(label: &str) -> [u8; ANSWER_LEN] {
    let mut a = [b' '; ANSWER_LEN];
    let s = format!("SNILT-OK {label}");
    let n = s.len().min(ANSWER_LEN - 1);
    a[..n].copy_from_slice(&s.as_bytes()[..n]);
    a[ANSWER_LEN - 1] = b'\n';
    a
}

/// The route named in an answer.
pub fn answer_label(a: &[u8]) -> Option<&str> {
    std::str::from_utf8(a).ok()?.strip_prefix("SNILT-OK ")?.trim_end().into()
}

/// The bulk data stream: a pseudo-random pattern of PATTERN_LEN bytes, repeated.
pub fn pattern(seed: u32) -> Vec<u8> {
    let mut x = (seed as u64) ^ 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(PATTERN_LEN + 8);
    while v.len() < PATTERN_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(PATTERN_LEN);
    v
}

/// Write `n` bytes of the stream.
pub fn write_stream<W: Write>(w: &mut W, pat: &[u8], mut n: u64) -> io::Result<()> {
    let mut off = 0usize;
    while n > 0 {
        let c = ((pat.len() - off) as u64).min(n).min(256 * 1024) as usize;
        w.write_all(&pat[off..off + c])?;
        off = (off + c) % pat.len();
        n -= c as u64;
    }
    Ok(())
}

/// CRC32 of the first `n` bytes of the stream.
pub fn stream_crc(pat: &[u8], mut n: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut off = 0usize;
    while n > 0 {
        let c = ((pat.len() - off) as u64).min(n) as usize;
        h.update(&pat[off..off + c]);
        off = (off + c) % pat.len();
        n -= c as u64;
    }
    h.finalize()
}

/// Bulk command: push (client → back end) and pull (back end → client) byte counts, pattern seed.
pub fn bulk_cmd(push: u64, pull: u64, seed: u32) -> [u8; BULK_CMD_LEN] {
    let mut c = [0u8; BULK_CMD_LEN];
    c[..4].copy_from_slice(BULK_MAGIC);
    c[4..12].copy_from_slice(&push.to_be_bytes());
    c[12..20].copy_from_slice(&pull.to_be_bytes());
    c[20..24].copy_from_slice(&seed.to_be_bytes());
    c
}

#[derive(Debug, Default)]
pub struct BackendStats {
    pub accepted: AtomicU64,
    pub errors: AtomicU64,
    pub proxy_headers: AtomicU64,
    /// kernel thread ids of the serving threads, in spawn order (for [`repin`])
    pub tids: std::sync::Mutex<Vec<libc::pid_t>>,
}

/// Pin serving thread i of a back end to CPU `cpus[i % len]`, as at spawn (scaling runs move
/// the back ends size by size). Errors (a CPU that does not exist) are ignored, as in `net::pin`.
pub fn repin(stats: &BackendStats, cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    let tids = match stats.tids.lock() {
        Ok(t) => t.clone(),
        Err(p) => p.into_inner().clone(),
    };
    for (i, tid) in tids.into_iter().enumerate() {
        let cpu = cpus[i % cpus.len()];
        // SAFETY: a zeroed cpu_set_t is an empty set; the CPU is checked against its size; the
        // thread ids are our own threads, which never exit.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if cpu < 8 * std::mem::size_of::<libc::cpu_set_t>() {
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        }
    }
}

const PROXY_V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Length of the PROXY v1 or v2 header at the start of `buf`: Ok(Some(n)) when it is complete,
/// Ok(None) when more bytes are needed, Err when `buf` does not start with one.
pub fn proxy_header_len(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => match buf.windows(2).position(|w| w == b"\r\n") {
            Some(p) if buf.starts_with(b"PROXY ") => Ok(Some(p + 2)),
            Some(_) => Err("bad PROXY v1 header"),
            None if buf.len() > 107 => Err("bad PROXY v1 header"),
            None => Ok(None),
        },
        Some(0x0D) => {
            if buf.len() < 16 {
                return Ok(None);
            }
            if &buf[..12] != PROXY_V2_SIG {
                return Err("bad PROXY v2 signature");
            }
            let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
            Ok((buf.len() >= len).then_some(len))
        }
        Some(_) => Err("PROXY header missing"),
    }
}

/// A connection with bytes read ahead.
struct Buffered {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Buffered {
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 4096];
        let n = self.s.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }
    fn need(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
    }
    /// Read until `len` finds a whole unit at the start of the buffer (Ok(Some(n))), then drop it.
    fn skip_unit<E>(&mut self, len: impl Fn(&[u8]) -> Result<Option<usize>, E>) -> io::Result<()>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        loop {
            match len(&self.buf) {
                Ok(Some(n)) => {
                    self.consume(n);
                    return Ok(());
                }
                Ok(None) => {
                    if self.fill()? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
    /// Skip the PROXY v1 or v2 header the stream must start with.
    fn skip_proxy_header(&mut self) -> io::Result<()> {
        self.skip_unit(proxy_header_len)
    }
    /// Read and drop one ClientHello if the stream starts with a TLS record.
    fn skip_hello(&mut self) -> io::Result<()> {
        self.need(1)?;
        if self.buf[0] != 22 {
            return Ok(());
        }
        self.skip_unit(hello_len)
    }
}

/// Reads the read-ahead bytes first, then the socket.
struct Prefixed {
    pre: Vec<u8>,
    pos: usize,
    s: TcpStream,
}
impl Read for Prefixed {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.pre.len() {
            let n = (self.pre.len() - self.pos).min(b.len());
            b[..n].copy_from_slice(&self.pre[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.s.read(b)
    }
}
impl Write for Prefixed {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.s.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

pub struct Backend {
    pub kind: BackendKind,
    /// expect a PROXY v1 or v2 header first
    pub proxy_protocol: bool,
    pub label: String,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub stats: Arc<BackendStats>,
}

impl Backend {
    fn handle(&self, s: TcpStream) -> io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut c = Buffered { s, buf: Vec::with_capacity(4096) };
        // a PROXY header only where the route asks for one: application data may start with 'P'
        if self.proxy_protocol {
            c.skip_proxy_header()?;
            self.stats.proxy_headers.fetch_add(1, Ordering::Relaxed);
        }
        match self.kind {
            BackendKind::Hello => {
                c.skip_hello()?;
                c.s.write_all(&answer(&self.label))?;
                // close first: the FIN (and the TIME_WAIT) stays on the back end's side
                Ok(())
            }
            BackendKind::Echo => {
                if !c.buf.is_empty() {
                    c.s.write_all(&c.buf)?;
                }
                let mut b = vec![0u8; 64 * 1024];
                loop {
                    let n = c.s.read(&mut b)?;
                    if n == 0 {
                        break;
                    }
                    c.s.write_all(&b[..n])?;
                }
                c.s.shutdown(Shutdown::Write)
            }
            BackendKind::Sink => {
                let mut h = crc32fast::Hasher::new();
                let mut total = c.buf.len() as u64;
                h.update(&c.buf);
                let mut b = vec![0u8; 256 * 1024];
                loop {
                    let n = c.s.read(&mut b)?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    h.update(&b[..n]);
                }
                let mut out = [0u8; 12];
                out[..8].copy_from_slice(&total.to_be_bytes());
                out[8..].copy_from_slice(&h.finalize().to_be_bytes());
                c.s.write_all(&out)?;
                c.s.shutdown(Shutdown::Write)
            }
            BackendKind::Bulk => {
                c.skip_hello()?;
                c.need(BULK_CMD_LEN)?;
                if &c.buf[..4] != BULK_MAGIC {
                    return Err(io::Error::other("bad bulk command"));
                }
                let push = u64::from_be_bytes(c.buf[4..12].try_into().unwrap());
                let pull = u64::from_be_bytes(c.buf[12..20].try_into().unwrap());
                let seed = u32::from_be_bytes(c.buf[20..24].try_into().unwrap());
                c.consume(BULK_CMD_LEN);
                let mut w = c.s.try_clone()?;
                let writer = std::thread::spawn(move || -> io::Result<()> {
                    if pull > 0 {
                        let pat = pattern(seed);
                        write_stream(&mut w, &pat, pull)?;
                    }
                    Ok(())
                });
                let mut h = crc32fast::Hasher::new();
                let first = (c.buf.len() as u64).min(push) as usize;
                h.update(&c.buf[..first]);
                let mut left = push - first as u64;
                let mut b = vec![0u8; 256 * 1024];
                while left > 0 {
                    let want = (b.len() as u64).min(left) as usize;
                    let n = c.s.read(&mut b[..want])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    h.update(&b[..n]);
                    left -= n as u64;
                }
                writer.join().map_err(|_| io::Error::other("writer panicked"))??;
                let mut t = [0u8; 8];
                t[..4].copy_from_slice(&h.finalize().to_be_bytes());
                t[4..].copy_from_slice(b"DONE");
                c.s.write_all(&t)?;
                c.s.shutdown(Shutdown::Write)?;
                // wait for the client's FIN
                let _ = c.s.read(&mut b);
                Ok(())
            }
            BackendKind::Hold => Err(io::Error::other("held connections are served by the holder's epoll thread")),
            BackendKind::Tls => {
                let cfg = self.tls.clone().ok_or_else(|| io::Error::other("no TLS config"))?;
                let conn = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
                let pre = std::mem::take(&mut c.buf);
                let mut tls = rustls::StreamOwned::new(conn, Prefixed { pre, pos: 0, s: c.s });
                let mut b = vec![0u8; 16 * 1024];
                loop {
                    let n = match tls.read(&mut b) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                        Err(e) => return Err(e),
                    };
                    if n == 0 {
                        break;
                    }
                    tls.write_all(&b[..n])?;
                    tls.flush()?;
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
                tls.sock.s.shutdown(Shutdown::Write)
            }
        }
    }
}

pub fn listener(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Where a held connection is in its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldPhase {
    /// waiting for the PROXY header
    Header,
    /// waiting for a ClientHello (or the first byte of something else)
    Hello,
    /// echoing
    Echo,
}

/// The held connection's protocol over the bytes in `buf`: the PROXY header (skipped), a
/// ClientHello (answered with `answer`), then everything else echoed. Returns the bytes to send;
/// Err closes the connection.
fn hold_step(phase: &mut HoldPhase, buf: &mut Vec<u8>, answer: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    loop {
        match *phase {
            HoldPhase::Header => match proxy_header_len(buf)? {
                Some(n) => {
                    buf.drain(..n);
                    *phase = HoldPhase::Hello;
                }
                None => return Ok(out),
            },
            HoldPhase::Hello => match buf.first() {
                None => return Ok(out),
                Some(22) => match hello_len(buf) {
                    Ok(Some(n)) => {
                        buf.drain(..n);
                        out.extend_from_slice(answer);
                        *phase = HoldPhase::Echo;
                    }
                    Ok(None) => return Ok(out),
                    Err(_) => *phase = HoldPhase::Echo,
                },
                Some(_) => *phase = HoldPhase::Echo,
            },
            HoldPhase::Echo => {
                out.append(buf);
                return Ok(out);
            }
        }
    }
}

fn epoll_ctl(ep: RawFd, op: libc::c_int, fd: RawFd) -> io::Result<()> {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
    // SAFETY: a valid epoll descriptor and event struct; the kernel copies the event.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `hold` back end: every connection on one epoll loop (level-triggered, blocking sockets
/// read once per readiness), held until the client closes it.
fn serve_hold(b: &Backend, l: TcpListener) -> io::Result<()> {
    l.set_nonblocking(true)?;
    // SAFETY: epoll_create1 has no preconditions; the descriptor is owned below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ep` is a fresh descriptor nobody else owns.
    let _owner = unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) };
    let lfd = l.as_raw_fd();
    epoll_ctl(ep, libc::EPOLL_CTL_ADD, lfd)?;
    let answer = answer(&b.label);
    let first = if b.proxy_protocol { HoldPhase::Header } else { HoldPhase::Hello };
    let mut conns: HashMap<RawFd, (TcpStream, Vec<u8>, HoldPhase)> = HashMap::new();
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut tmp = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: `evs` has room for the 256 events asked for.
        let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as libc::c_int, -1) };
        if n < 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        for ev in &evs[..n as usize] {
            let fd = { ev.u64 } as RawFd;
            if fd == lfd {
                while let Ok((s, _)) = l.accept() {
                    b.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    if epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd()).is_ok() {
                        conns.insert(s.as_raw_fd(), (s, Vec::new(), first));
                    }
                }
                continue;
            }
            let Some((s, buf, phase)) = conns.get_mut(&fd) else { continue };
            let close = match s.read(&mut tmp) {
                Ok(0) => true,
                Ok(k) => {
                    buf.extend_from_slice(&tmp[..k]);
                    let was = *phase;
                    match hold_step(phase, buf, &answer) {
                        Ok(out) => {
                            if was == HoldPhase::Header && *phase != HoldPhase::Header {
                                b.stats.proxy_headers.fetch_add(1, Ordering::Relaxed);
                            }
                            !out.is_empty() && s.write_all(&out).is_err()
                        }
                        Err(e) => {
                            if std::env::var_os("SLT_BE_DEBUG").is_some() {
                                eprintln!("backend {}: {e}", b.label);
                            }
                            b.stats.errors.fetch_add(1, Ordering::Relaxed);
                            true
                        }
                    }
                }
                Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted),
            };
            if close {
                let _ = epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd);
                conns.remove(&fd);
            }
        }
    }
}

/// Serve `backend` on `addr` (port 0: one the kernel picks) with `threads` threads pinned over
/// `cpus` (a `hold` back end: one thread). Runs until the process exits. Returns the port it listens on and its counters.
pub fn spawn(
    backend: Backend,
    addr: SocketAddrV4,
    threads: usize,
    cpus: Vec<usize>,
) -> io::Result<(u16, Arc<BackendStats>)> {
    let l = listener(addr)?;
    let port = l.local_addr()?.port();
    let stats = backend.stats.clone();
    let b = Arc::new(backend);
    let (tx, rx) = std::sync::mpsc::channel();
    let hold = b.kind == BackendKind::Hold;
    let n = if hold { 1 } else { threads.max(1) };
    for i in 0..n {
        let l = l.try_clone()?;
        let b = b.clone();
        let cpus = cpus.clone();
        let tx = tx.clone();
        std::thread::Builder::new().name(format!("be-{}", b.label)).stack_size(256 * 1024).spawn(move || {
            crate::net::pin(&cpus, i);
            // SAFETY: gettid has no preconditions.
            let _ = tx.send((i, unsafe { libc::gettid() }));
            drop(tx);
            if hold {
                if let Err(e) = serve_hold(&b, l) {
                    eprintln!("backend {}: the holder stopped: {e}", b.label);
                }
                return;
            }
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        b.stats.accepted.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = b.handle(s) {
                            if std::env::var_os("SLT_BE_DEBUG").is_some() {
                                eprintln!("backend {}: {e}", b.label);
                            }
                            b.stats.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })?;
    }
    drop(tx);
    let mut tids: Vec<(usize, libc::pid_t)> = rx.iter().take(n).collect();
    tids.sort_unstable();
    match stats.tids.lock() {
        Ok(mut t) => *t = tids.into_iter().map(|(_, t)| t).collect(),
        Err(p) => *p.into_inner() = tids.into_iter().map(|(_, t)| t).collect(),
    }
    Ok((port, stats))
}

/// A rustls server config for a TLS back end or test: the leaf's chain and key, TLS 1.2 and 1.3.
pub fn server_config(leaf: &crate::certs::Leaf, alpn: &[String]) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain(), leaf.key())
        .expect("certificate and key");
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn answers_and_streams() {
        let a = answer("shop");
        assert_eq!(a.len(), ANSWER_LEN);
        assert_eq!(answer_label(&a), Some("shop"));
        let p = pattern(7);
        assert_eq!(p.len(), PATTERN_LEN);
        let mut v = Vec::new();
        write_stream(&mut v, &p, 3 * PATTERN_LEN as u64 + 5).unwrap();
        assert_eq!(v.len(), 3 * PATTERN_LEN + 5);
        assert_eq!(crc32fast::hash(&v), stream_crc(&p, v.len() as u64));
        assert_ne!(pattern(8)[..64], p[..64]);
    }

    #[test]
    fn proxy_headers() {
        assert_eq!(proxy_header_len(b""), Ok(None));
        assert_eq!(proxy_header_len(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2"), Ok(None));
        assert_eq!(proxy_header_len(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nrest"), Ok(Some(32)));
        assert!(proxy_header_len(b"POST / HTTP/1.1\r\n").is_err());
        assert!(proxy_header_len(&[b'P'; 200]).is_err());
        let mut v2 = PROXY_V2_SIG.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12]);
        assert_eq!(proxy_header_len(&v2), Ok(None));
        v2.extend_from_slice(&[0; 12]);
        assert_eq!(proxy_header_len(&v2), Ok(Some(28)));
        assert!(proxy_header_len(b"\r\n\r\n\0\r\nQUITX1234").is_err());
        assert_eq!(proxy_header_len(&[22, 3, 1]), Err("PROXY header missing"));
    }

    #[test]
    fn held_connection_protocol() {
        let a = answer("site");
        let hello = crate::hello::generate(Some("www.example.com"));
        // the hello in two pieces, answered once, then an echo
        let (mut ph, mut buf) = (HoldPhase::Hello, hello[..20].to_vec());
        assert_eq!(hold_step(&mut ph, &mut buf, &a), Ok(vec![]));
        assert_eq!(ph, HoldPhase::Hello);
        buf.extend_from_slice(&hello[20..]);
        buf.extend_from_slice(b"ping");
        assert_eq!(hold_step(&mut ph, &mut buf, &a).unwrap(), [&a[..], b"ping"].concat());
        assert_eq!((ph, buf.len()), (HoldPhase::Echo, 0));
        // plaintext behind a terminating target: echoed from the first byte
        let (mut ph, mut buf) = (HoldPhase::Hello, b"SNILT-IDLE".to_vec());
        assert_eq!(hold_step(&mut ph, &mut buf, &a).unwrap(), b"SNILT-IDLE");
        // a PROXY header first
        let (mut ph, mut buf) = (HoldPhase::Header, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec());
        buf.extend_from_slice(&hello);
        assert_eq!(hold_step(&mut ph, &mut buf, &a).unwrap(), a.to_vec());
        let (mut ph, mut buf) = (HoldPhase::Header, hello.clone());
        assert!(hold_step(&mut ph, &mut buf, &a).is_err());
    }
}
