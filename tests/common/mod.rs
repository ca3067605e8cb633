//! Helpers for the passthrough tests: configs, in-process servers, spawned binaries, scripted
//! back ends, ClientHellos. Every wait is bounded; timeouts are generous (loaded 2-core CI).
#![allow(dead_code)]

pub mod peers;

use sni_dispatch::config::{Config, RuntimeOverrides};
use sni_dispatch::metrics::Counters;
use sni_dispatch::server::Server;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub const CHROMIUM_PQ: &[u8] = include_bytes!("../../src/hello/testdata/chromium-pq.bin");
pub const OPENSSL_SNI: &[u8] = include_bytes!("../../src/hello/testdata/openssl-sni.bin");
pub const CURL: &[u8] = include_bytes!("../../src/hello/testdata/curl.bin");
pub const OPENSSL_NOSNI: &[u8] = include_bytes!("../../src/hello/testdata/openssl-nosni.bin");

/// A config file in a temporary directory.
pub struct ConfigFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn config_file(toml: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sni-dispatch.toml");
    std::fs::write(&path, toml).expect("write config");
    ConfigFile { dir, path }
}

/// `[runtime]` lines shared by tests: one worker, short timeouts where a test waits on them.
pub const RUNTIME: &str = "[runtime]\nworkers = 1\nhello_timeout_ms = 5000\nconnect_timeout_ms = 2000\n";

/// Starts an in-process server for `toml` with `overrides`.
pub fn start(toml: &str, overrides: &RuntimeOverrides) -> (Server, ConfigFile) {
    let f = config_file(toml);
    let config = Config::load(&f.path, overrides).unwrap_or_else(|e| panic!("config: {e}"));
    let server = Server::start(config).unwrap_or_else(|e| panic!("start: {e}"));
    (server, f)
}

/// Connects to `addr` with I/O timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// `addr` with its IP replaced (dedicated IPs on loopback: 127.0.0.2 and up).
pub fn at(ip: &str, addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), addr.port())
}

/// Reads until EOF (bounded by the read timeout); returns what came, or the error kind.
pub fn read_to_end(s: &mut TcpStream) -> Result<Vec<u8>, std::io::ErrorKind> {
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(out),
        Err(e) => Err(e.kind()),
    }
}

/// Reads from `s` into `got` until it holds `n` bytes, or EOF, or an error.
fn read_at_least(s: &mut TcpStream, n: usize, got: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while got.len() < n {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
}

/// Polls `f` until it returns true, for at most `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `part` of a ClientHello that is not enough to route on `c`, the first connection to
/// `server` (TCP_NODELAY: the part leaves at once), pauses, and asserts that the proxy accepted
/// the connection but has neither routed nor dropped it and that `backend` saw no connection:
/// the proxy read this part on its own and waits for the rest, so the hello reaches it in more
/// than one read.
pub fn send_partial_hello(c: &mut TcpStream, part: &[u8], server: &Server, backend: &Backend) {
    assert!(c.nodelay().unwrap(), "the part must leave at once");
    c.write_all(part).unwrap();
    wait_metrics(server, |m| m.accepted == 1 && m.open == 1);
    // Published counters are at most 100 ms old: after this pause they show the connection
    // at least 200 ms after its first bytes arrived.
    std::thread::sleep(Duration::from_millis(300));
    let m = server.metrics().merged();
    assert_eq!((m.routed_total(), m.dropped_total()), (0, 0), "decided on the first {} bytes: {m:#?}", part.len());
    assert_eq!(backend.connections(), 0, "the back end was dialed before the hello was complete");
}

/// Waits until the merged counters satisfy `f` (they are published every 100 ms).
pub fn wait_metrics(server: &Server, f: impl Fn(&Counters) -> bool) -> Counters {
    let mut last = Counters::default();
    let ok = wait_until(Duration::from_secs(20), || {
        last = server.metrics().merged();
        f(&last)
    });
    assert!(ok, "metrics never matched: {last:#?}");
    last
}

/// What a scripted back end saw on one connection.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub bytes: Vec<u8>,
}

/// A back end that accepts connections, reads what the client sends until EOF, then answers
/// `reply` and closes. It reports each connection's bytes on a channel.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: std::sync::mpsc::Receiver<Seen>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    _thread: JoinHandle<()>,
}

/// `mode`: what the back end does with a connection.
#[derive(Clone)]
pub enum Mode {
    /// Read until `n` bytes arrived, reply `reply`, close.
    ReplyAfter { n: usize, reply: Arc<Vec<u8>> },
    /// Echo everything until EOF, then close.
    Echo,
    /// Read until EOF, then reply `reply` and close (the client half-closed first).
    ReplyAtEof { reply: Arc<Vec<u8>> },
    /// Read `n` bytes, reply, shut down the write half, then keep reading until EOF
    /// (the back end half-closed first); reports everything read.
    ReplyThenRead { n: usize, reply: Arc<Vec<u8>> },
}

pub fn backend(mode: Mode) -> Backend {
    backend_on("127.0.0.1:0", mode)
}

pub fn backend_on(bind: &str, mode: Mode) -> Backend {
    let l = TcpListener::bind(bind).expect("bind backend");
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let t = std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            let mode = mode.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(IO_TIMEOUT)).ok();
                s.set_write_timeout(Some(IO_TIMEOUT)).ok();
                let mut got = Vec::new();
                match mode {
                    Mode::ReplyAfter { n, reply } => {
                        read_at_least(&mut s, n, &mut got);
                        let _ = s.write_all(&reply);
                        let _ = tx.send(Seen { bytes: got });
                    }
                    Mode::ReplyAtEof { reply } => {
                        let _ = s.read_to_end(&mut got);
                        let _ = s.write_all(&reply);
                        let _ = s.shutdown(Shutdown::Write);
                        let _ = tx.send(Seen { bytes: got });
                    }
                    Mode::ReplyThenRead { n, reply } => {
                        read_at_least(&mut s, n, &mut got);
                        let _ = s.write_all(&reply);
                        let _ = s.shutdown(Shutdown::Write);
                        let _ = s.read_to_end(&mut got);
                        let _ = tx.send(Seen { bytes: got });
                    }
                    Mode::Echo => {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(k) => {
                                    got.extend_from_slice(&buf[..k]);
                                    if s.write_all(&buf[..k]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = s.shutdown(Shutdown::Write);
                        let _ = tx.send(Seen { bytes: got });
                    }
                }
            });
        }
    });
    Backend { addr, seen: rx, accepted, _thread: t }
}

impl Backend {
    /// Connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The next connection's bytes.
    pub fn next(&self) -> Seen {
        self.seen.recv_timeout(Duration::from_secs(30)).expect("back end saw no connection")
    }
}

/// A ClientHello from a real TLS client (rustls), for any SNI (`None`: no SNI, as for an IP).
pub fn rustls_hello(sni: Option<&str>, alpn: &[&[u8]]) -> Vec<u8> {
    use rustls::pki_types::ServerName;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.enable_sni = sni.is_some();
    let name = match sni {
        Some(s) => ServerName::try_from(s.to_string()).unwrap(),
        None => ServerName::IpAddress(std::net::Ipv4Addr::new(192, 0, 2, 1).into()),
    };
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Re-frames a single-record hello into records of at most `chunk` bytes of handshake data.
pub fn reframe(hello: &[u8], chunk: usize) -> Vec<u8> {
    assert_eq!(hello[0], 0x16);
    let len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
    let body = &hello[5..5 + len];
    let mut out = Vec::new();
    for part in body.chunks(chunk) {
        out.extend_from_slice(&[0x16, hello[1], hello[2]]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Sends `hello`, expects the back end's reply and then EOF; returns the reply.
pub fn roundtrip(addr: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut c = connect(addr);
    c.write_all(hello).unwrap();
    read_to_end(&mut c).expect("reply")
}

/// Sends `bytes` and expects the proxy to close the connection without relaying a byte: it
/// sends nothing, or only the fatal alert a TLS server would send (see [`expect_alert`]).
/// Returns the alert's description, if one came.
pub fn expect_dropped(addr: SocketAddr, bytes: &[u8]) -> Option<u8> {
    // A connection refused at accept (an untrusted PROXY source) may be reset before this
    // thread's connect has seen it established: that is the drop, already done.
    let mut c = match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("connect {addr}: {e}"),
    };
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = c.write_all(bytes);
    let got = read_to_end(&mut c).expect("proxy should close");
    match got.as_slice() {
        [] => None,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, desc] => Some(*desc),
        _ => panic!("expected a drop (nothing, or one alert record), got {} bytes: {got:02x?}", got.len()),
    }
}

/// Sends `bytes` and expects the proxy to answer exactly one fatal alert record with
/// description `desc` (RFC 8446 §6: `15 03 03 00 02 02 desc`), then close.
pub fn expect_alert(addr: SocketAddr, bytes: &[u8], desc: u8) {
    assert_eq!(expect_dropped(addr, bytes), Some(desc), "expected alert {desc}");
}

/// One HTTP exchange with the admin endpoint: raw request bytes in, (status, headers, body) out.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = connect(addr);
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

// ---- the binary --------------------------------------------------------------------------

/// A running `sni-dispatch run` process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `sig` and waits (bounded) for the exit status.
    pub fn signal_and_wait(&mut self, sig: i32, limit: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; a tiny race, fine on a test box).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Spawns `sni-dispatch run --config PATH ARGS...` (or `$SNI_DISPATCH_BIN run ...`) and waits until `probe` accepts connections.
pub fn spawn_binary(cfg: &ConfigFile, args: &[&str], probe: SocketAddr) -> Proc {
    spawn_binary_env(cfg, args, probe, &[])
}

/// As [`spawn_binary`], with more variables in the process's environment (`SNI_DISPATCH_BIN`
/// among them runs that binary).
#[allow(dead_code)] // not every test binary sets any
pub fn spawn_binary_env(cfg: &ConfigFile, args: &[&str], probe: SocketAddr, env: &[(&str, &str)]) -> Proc {
    let stderr_path = cfg.dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    // SNI_DISPATCH_BIN: test another build of the binary (e.g. a release one).
    let bin = env.iter().find(|(k, _)| *k == "SNI_DISPATCH_BIN").map(|(_, v)| v.to_string());
    let bin = bin
        .or_else(|| std::env::var("SNI_DISPATCH_BIN").ok())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_sni-dispatch").to_string());
    let child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&cfg.path)
        .args(args)
        .env("SNI_DISPATCH_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn sni-dispatch");
    let mut p = Proc { child, stderr_path };
    let up = wait_until(Duration::from_secs(20), || {
        if let Ok(Some(_)) = p.child.try_wait() {
            return true;
        }
        TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok()
    });
    assert!(up, "sni-dispatch did not start listening: {}", p.stderr());
    if let Ok(Some(st)) = p.child.try_wait() {
        panic!("sni-dispatch exited early ({st}): {}", p.stderr());
    }
    p
}

/// Number of open fds of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Names of the threads of process `pid`.
pub fn thread_names(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in d.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("comm")) {
                out.push(s.trim().to_string());
            }
        }
    }
    out
}

/// A deterministic byte stream that is cheap to produce and to verify even in debug builds:
/// 1 MiB blocks of pseudo-random bytes, each starting with its block number, so any lost,
/// duplicated, reordered or corrupted byte is caught by a memcmp.
pub struct Stream {
    base: Vec<u8>,
    pos: u64,
}

pub const BLOCK: usize = 1 << 20;

impl Stream {
    pub fn new(seed: u64) -> Self {
        let mut x = seed | 1;
        let mut base = vec![0u8; BLOCK];
        for chunk in base.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        Self { base, pos: 0 }
    }

    /// The next `n` bytes of the stream (n <= BLOCK, not crossing a block boundary if n divides BLOCK).
    pub fn next_chunk(&mut self, out: &mut Vec<u8>, n: usize) {
        out.clear();
        let mut left = n;
        while left > 0 {
            let off = (self.pos % BLOCK as u64) as usize;
            let take = left.min(BLOCK - off);
            let start = out.len();
            out.extend_from_slice(&self.base[off..off + take]);
            // The block number occupies the first 8 bytes of each block.
            let block = (self.pos / BLOCK as u64).to_le_bytes();
            for i in off..(off + take).min(8) {
                out[start + i - off] = block[i];
            }
            self.pos += take as u64;
            left -= take;
        }
    }

    /// Checks that `data` is the next part of the stream.
    pub fn verify(&mut self, data: &[u8], scratch: &mut Vec<u8>) -> bool {
        self.next_chunk(scratch, data.len());
        scratch.as_slice() == data
    }

    pub fn position(&self) -> u64 {
        self.pos
    }
}

/// Bytes for a bulk test: 1 GiB each way (about 15 s for both relay paths even in a debug
/// build: the kernel moves the bytes), unless `SNI_BULK_BYTES` says otherwise.
pub fn bulk_bytes() -> u64 {
    std::env::var("SNI_BULK_BYTES").ok().and_then(|s| s.parse().ok()).unwrap_or(1 << 30)
}

// ---- openssl s_client ---------------------------------------------------------------------

/// Runs `openssl s_client` against `addr`; returns its stdout and stderr together.
pub fn s_client(addr: SocketAddr, sni: Option<&str>, extra: &[&str]) -> String {
    s_client_with(addr, sni, extra, b"")
}

/// As [`s_client`], sending `input` and waiting for the server to close (`-ign_eof`) when there is any.
pub fn s_client_with(addr: SocketAddr, sni: Option<&str>, extra: &[&str], input: &[u8]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "openssl", "s_client", "-connect", &addr.to_string()]);
    match sni {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    cmd.args(extra);
    if input.is_empty() {
        cmd.stdin(Stdio::null());
    } else {
        cmd.arg("-ign_eof").stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("openssl s_client");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The CN of the certificate `s_client` was shown, or None.
pub fn subject(out: &str) -> Option<String> {
    let line = out.lines().find(|l| l.starts_with("subject="))?;
    Some(line.rsplit("CN").next()?.trim_start_matches([' ', '=']).trim().to_owned())
}

/// An HTTP origin that answers `site NAME path PATH` and closes.
pub fn http_origin(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                s.set_read_timeout(Some(IO_TIMEOUT)).ok();
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let path = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or("/").to_owned();
                let body = format!("site {name} path {path}\n");
                let _ =
                    write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            });
        }
    });
    addr
}

/// A binary upgrade: a new process of the binary with the configuration at `config` takes over
/// from `old`, which offers its sockets at `socket`; waits (bounded) until the new one says the
/// upgrade is done and `old` has exited 0. The new process logs to `log`.
#[allow(dead_code)] // not every test binary upgrades
pub fn upgrade(config: &Path, socket: &Path, old: &mut Proc, log: PathBuf) -> Proc {
    let bin = std::env::var("SNI_DISPATCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sni-dispatch").to_string());
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .arg("--upgrade-from")
        .arg(socket)
        .env("SNI_DISPATCH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn sni-dispatch");
    let new = Proc { child, stderr_path: log };
    assert!(
        wait_until(Duration::from_secs(30), || new.stderr().contains("the previous process stopped accepting")),
        "the upgrade did not complete:\n{}",
        new.stderr()
    );
    let mut old_exit = None;
    assert!(wait_until(Duration::from_secs(30), || {
        old_exit = old.child.try_wait().ok().flatten();
        old_exit.is_some()
    }));
    assert!(old_exit.is_some_and(|s| s.success()), "{old_exit:?}: {}", old.stderr());
    new
}

/// What the clients of a load loop saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub ok: u64,
    pub refused: u64,
    pub reset: u64,
    pub failed: u64,
}

/// `n` client threads making [`short_client`] connections one after another (each loop bounded
/// to 200,000 connections and 120 s) until [`Clients::stop`].
#[allow(dead_code)] // not every test binary runs load loops
pub struct Clients {
    stop: Arc<std::sync::atomic::AtomicBool>,
    total: Arc<std::sync::Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
}

#[allow(dead_code)] // not every test binary runs load loops
impl Clients {
    pub fn start(n: usize, addr: SocketAddr, hello: &'static [u8], reply: &'static [u8]) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let total = Arc::new(std::sync::Mutex::new(Tally::default()));
        let threads = (0..n)
            .map(|_| {
                let (stop, total) = (Arc::clone(&stop), Arc::clone(&total));
                std::thread::spawn(move || {
                    let end = Instant::now() + Duration::from_secs(120);
                    for _ in 0..200_000 {
                        if stop.load(Ordering::SeqCst) || Instant::now() > end {
                            break;
                        }
                        let mut t = Tally::default();
                        short_client(addr, hello, reply, &mut t);
                        let mut all = total.lock().unwrap();
                        all.ok += t.ok;
                        all.refused += t.refused;
                        all.reset += t.reset;
                        all.failed += t.failed;
                    }
                })
            })
            .collect();
        Self { stop, total, threads }
    }

    /// What they saw so far.
    pub fn tally(&self) -> Tally {
        *self.total.lock().unwrap()
    }

    /// Stops them; what they saw.
    pub fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.threads) {
            t.join().unwrap();
        }
        self.tally()
    }
}

/// One short passthrough connection: `hello` in, the back end's `reply` out, EOF; counted in `t`.
#[allow(dead_code)] // not every test binary runs load loops
pub fn short_client(addr: SocketAddr, hello: &[u8], reply: &[u8], t: &mut Tally) {
    let mut c = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return t.refused += 1,
        Err(_) => return t.failed += 1,
    };
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let res = c.write_all(hello).and_then(|()| c.read_to_end(&mut got));
    match res {
        Ok(_) if got == reply => t.ok += 1,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => t.reset += 1,
        _ => t.failed += 1,
    }
}
