//! Built-in back ends: hello responder (PROXY v1/v2 aware), echo, sink, bulk, rustls terminator.
//! Each listens on 127.0.0.1:PORT and serves connections from a pool of pinned threads.

use crate::hello::hello_len;
use crate::suite::BackendKind;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
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
    /// Skip a PROXY v1 or v2 header if one is there; true if one was.
    fn skip_proxy_header(&mut self) -> io::Result<bool> {
        self.need(1)?;
        if self.buf[0] == b'P' {
            loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    if !self.buf.starts_with(b"PROXY ") {
                        return Err(io::Error::other("bad PROXY v1 header"));
                    }
                    self.consume(p + 2);
                    return Ok(true);
                }
                if self.buf.len() > 107 || self.fill()? == 0 {
                    return Err(io::Error::other("bad PROXY v1 header"));
                }
            }
        }
        if self.buf[0] == 0x0D {
            self.need(16)?;
            if &self.buf[..12] != b"\r\n\r\n\0\r\nQUIT\n" {
                return Err(io::Error::other("bad PROXY v2 signature"));
            }
            let len = u16::from_be_bytes([self.buf[14], self.buf[15]]) as usize;
            self.need(16 + len)?;
            self.consume(16 + len);
            return Ok(true);
        }
        Ok(false)
    }
    /// Read and drop one ClientHello if the stream starts with a TLS record.
    fn skip_hello(&mut self) -> io::Result<()> {
        self.need(1)?;
        if self.buf[0] != 22 {
            return Ok(());
        }
        loop {
            match hello_len(&self.buf) {
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
            if !c.skip_proxy_header()? {
                return Err(io::Error::other("PROXY header missing"));
            }
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

/// Serve `backend` on `addr` (port 0: one the kernel picks) with `threads` threads pinned over
/// `cpus`. Runs until the process exits. Returns the port it listens on and its counters.
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
    let n = threads.max(1);
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
}
