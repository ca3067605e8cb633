//! `sni-loadtest topology SCENARIO`: the edge topology's goals, measured with real processes.
//!
//! - `pool`: short connections through a `round_robin` route over 3 back ends with health
//!   checks; one back end is killed under load (its listener closed and its open connections
//!   reset) and later restored. Reports the share of each back end, the connections that failed
//!   and whether they were in flight on the killed one, failures of connections that started
//!   after the checks marked it down (goal 0), the time to mark it down and to pick it up again
//!   (goal: within `fall` and `rise` intervals), HAProxy (`check inter … fall … rise …`) beside
//!   it.
//! - `handoff`: full TLS 1.3 handshakes to a same-host terminator (an sni-dispatch terminating
//!   `shop.example`), through four fronts in turn: sni-dispatch handing the connection off
//!   (`handoff:`), sni-dispatch passing it through on loopback TCP, HAProxy and nginx passing
//!   it through on loopback TCP. Reports each front's and the terminator's CPU per connection and
//!   their sum (the host's share of the edge), and the ratios the goals name.
//! - `unix`: short passthrough connections to a back end on a unix socket and on loopback TCP,
//!   for sni-dispatch (`unix:/path`), HAProxy (`unix@/path`) and nginx (`unix:/path`).
//!
//! Every target is pinned (`taskset`) to `--target-cpus`, load and back ends to `--load-cpus`;
//! CPU time is read from /proc (the process and its children). Runs alternate the targets;
//! figures are medians over `--runs`.

use crate::backends::{answer, answer_label, ANSWER_LEN};
use crate::hello::hello_len;
use crate::net;
use crate::procstat;
use clap::{Args, ValueEnum};
use serde::Serialize;
use socket2::{Domain, Socket, Type};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Pool,
    Handoff,
    Unix,
}

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The sni-dispatch binary.
    #[arg(long, default_value = "target/release/sni-dispatch")]
    pub dispatcher: PathBuf,
    /// Peers to measure beside it (haproxy, nginx); pool: haproxy only.
    #[arg(long, value_delimiter = ',', default_value = "haproxy,nginx")]
    pub compare: Vec<String>,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds per run (pool: the whole kill-and-restore timeline).
    #[arg(long, default_value_t = 8.0)]
    pub duration_s: f64,
    /// Connections in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// CPUs of the targets (fronts and terminator).
    #[arg(long, default_value = "1")]
    pub target_cpus: String,
    /// CPUs of the load and the back ends.
    #[arg(long, default_value = "0")]
    pub load_cpus: String,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

// ---- processes -------------------------------------------------------------------------

/// A target process, killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cpus: &str, program: &Path, args: &[String], dir: &Path) -> io::Result<Self> {
        let log = dir.join(format!("{}.log", name.replace(' ', "_")));
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpus)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Self { name: name.into(), child, log })
    }

    pub fn cpu(&self) -> f64 {
        procstat::cpu_seconds(self.child.id())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_tcp(&mut self, addr: SocketAddr) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("{} exited ({st}): {}", self.name, self.log()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{} did not listen on {addr}: {}", self.name, self.log()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    net::free_port(&[Ipv4Addr::LOCALHOST]).unwrap_or(0)
}

fn stream_module() -> String {
    let p = "/usr/lib/nginx/modules/ngx_stream_module.so";
    if Path::new(p).exists() {
        format!("load_module {p};\n")
    } else {
        String::new()
    }
}

fn dispatcher(opts: &Options, name: &str, dir: &Path, toml: &str, probe: SocketAddr) -> Result<Proc, String> {
    let cfg = dir.join(format!("{}.toml", name.replace(' ', "_")));
    std::fs::write(&cfg, toml).map_err(|e| e.to_string())?;
    let args = vec!["run".into(), "--config".into(), cfg.display().to_string(), "--log".into(), "warn".into()];
    let mut p =
        Proc::spawn(name, &opts.target_cpus, &opts.dispatcher, &args, dir).map_err(|e| format!("{name}: {e}"))?;
    p.wait_tcp(probe)?;
    Ok(p)
}

fn haproxy(opts: &Options, name: &str, dir: &Path, cfg: &str, probe: SocketAddr) -> Result<Proc, String> {
    let path = dir.join(format!("{}.cfg", name.replace(' ', "_")));
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let args = vec!["-db".into(), "-f".into(), path.display().to_string()];
    let mut p =
        Proc::spawn(name, &opts.target_cpus, Path::new("haproxy"), &args, dir).map_err(|e| format!("{name}: {e}"))?;
    p.wait_tcp(probe)?;
    Ok(p)
}

fn nginx(opts: &Options, name: &str, dir: &Path, stream: &str, probe: SocketAddr) -> Result<Proc, String> {
    let sub = dir.join(name.replace(' ', "_"));
    std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
    let path = sub.join("nginx.conf");
    let cfg = format!(
        "{}daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log crit;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 16000; }}\nstream {{\n{stream}\n}}\n",
        stream_module(),
        d = sub.display()
    );
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let args = vec![
        "-p".into(),
        sub.display().to_string(),
        "-e".into(),
        sub.join("error.log").display().to_string(),
        "-c".into(),
        path.display().to_string(),
    ];
    let mut p =
        Proc::spawn(name, &opts.target_cpus, Path::new("nginx"), &args, dir).map_err(|e| format!("{name}: {e}"))?;
    p.wait_tcp(probe)?;
    Ok(p)
}

const HAPROXY_GLOBAL: &str = "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n";

// ---- back ends -------------------------------------------------------------------------

/// A hello responder on TCP or a unix socket: reads a whole ClientHello, holds `hold`, answers
/// 64 bytes naming itself, closes. Killable (listener closed, open connections reset) and
/// restartable on the same address.
pub struct Responder {
    pub name: String,
    pub addr: Option<SocketAddrV4>,
    pub path: Option<PathBuf>,
    hold: Duration,
    threads: usize,
    cpus: Vec<usize>,
    listener: Option<Arc<OwnedFd>>,
    alive: Arc<AtomicBool>,
    open: Arc<Mutex<HashMap<u64, TcpStream>>>,
    pub served: Arc<AtomicU64>,
    /// When it served its first connection since the last `start` (ns since `epoch`).
    first_served_ns: Arc<AtomicU64>,
    epoch: Instant,
}

impl Responder {
    fn new(
        name: &str,
        addr: Option<SocketAddrV4>,
        path: Option<PathBuf>,
        hold: Duration,
        threads: usize,
        cpus: Vec<usize>,
        epoch: Instant,
    ) -> Self {
        Self {
            name: name.into(),
            addr,
            path,
            hold,
            threads,
            cpus,
            listener: None,
            alive: Arc::default(),
            open: Arc::default(),
            served: Arc::default(),
            first_served_ns: Arc::default(),
            epoch,
        }
    }

    fn start(&mut self) -> io::Result<()> {
        let sock = match (&self.addr, &self.path) {
            (Some(a), _) => {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&(*a).into())?;
                s.listen(4096)?;
                self.addr = s.local_addr()?.as_socket_ipv4();
                s
            }
            (None, Some(p)) => {
                let _ = std::fs::remove_file(p);
                let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
                s.bind(&socket2::SockAddr::unix(p)?)?;
                s.listen(4096)?;
                s
            }
            _ => return Err(io::Error::other("no address")),
        };
        let fd: OwnedFd = sock.into();
        let fd = Arc::new(fd);
        self.listener = Some(Arc::clone(&fd));
        self.alive = Arc::new(AtomicBool::new(true));
        self.first_served_ns.store(0, Ordering::SeqCst);
        let ids = Arc::new(AtomicU64::new(0));
        for t in 0..self.threads {
            let (fd, alive, open, served, first, ids) = (
                Arc::clone(&fd),
                Arc::clone(&self.alive),
                Arc::clone(&self.open),
                Arc::clone(&self.served),
                Arc::clone(&self.first_served_ns),
                Arc::clone(&ids),
            );
            let (name, hold, cpus, epoch) = (self.name.clone(), self.hold, self.cpus.clone(), self.epoch);
            std::thread::spawn(move || {
                net::pin(&cpus, t);
                let reply = answer(&name);
                loop {
                    // SAFETY: accept on a listening socket this thread keeps open (the Arc).
                    let raw = unsafe {
                        libc::accept4(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
                    };
                    if !alive.load(Ordering::SeqCst) {
                        if raw >= 0 {
                            // SAFETY: a new fd from accept4, ours to close.
                            drop(unsafe { OwnedFd::from_raw_fd(raw) });
                        }
                        return;
                    }
                    if raw < 0 {
                        continue;
                    }
                    // SAFETY: a new fd from accept4, owned from here on (a TcpStream works on
                    // unix stream sockets too: read, write, shutdown).
                    let mut s = unsafe { TcpStream::from_raw_fd(raw) };
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    if let Ok(c) = s.try_clone() {
                        open.lock().unwrap_or_else(|p| p.into_inner()).insert(id, c);
                    }
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut buf = [0u8; 4096];
                    let mut n = 0;
                    let ok = loop {
                        match s.read(&mut buf[n..]) {
                            Ok(0) | Err(_) => break false,
                            Ok(k) => n += k,
                        }
                        match hello_len(&buf[..n]) {
                            Ok(Some(_)) => break true,
                            Ok(None) if n < buf.len() => {}
                            _ => break false,
                        }
                    };
                    if ok {
                        if !hold.is_zero() {
                            std::thread::sleep(hold);
                        }
                        if alive.load(Ordering::SeqCst) && s.write_all(&reply).is_ok() {
                            served.fetch_add(1, Ordering::Relaxed);
                            let now = epoch.elapsed().as_nanos() as u64;
                            let _ = first.compare_exchange(0, now.max(1), Ordering::SeqCst, Ordering::SeqCst);
                        }
                    }
                    let _ = s.shutdown(Shutdown::Write);
                    let _ = s.read(&mut buf);
                    open.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                }
            });
        }
        Ok(())
    }

    /// Kills it: no more accepts (the listener is shut down and closed) and every open
    /// connection reset; returns how many were open.
    fn kill(&mut self) -> usize {
        self.alive.store(false, Ordering::SeqCst);
        if let Some(fd) = self.listener.take() {
            // SAFETY: shutdown on a listening fd we hold wakes the threads blocked in accept.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.len();
        for (_, s) in open.drain() {
            let sock = socket2::SockRef::from(&s);
            let _ = sock.set_linger(Some(Duration::ZERO));
            let _ = s.shutdown(Shutdown::Both);
        }
        n
    }

    fn first_served_since_start(&self) -> Option<Duration> {
        match self.first_served_ns.load(Ordering::SeqCst) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

/// An echo origin (the terminator's back end).
fn echo_origin(cpus: Vec<usize>, threads: usize) -> io::Result<SocketAddrV4> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let SocketAddr::V4(addr) = l.local_addr()? else { return Err(io::Error::other("v4")) };
    let l = Arc::new(l);
    for t in 0..threads {
        let (l, cpus) = (Arc::clone(&l), cpus.clone());
        std::thread::spawn(move || {
            net::pin(&cpus, t);
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
    }
    Ok(addr)
}

// ---- load ------------------------------------------------------------------------------

/// One connection's fate.
#[derive(Debug, Clone)]
struct Conn {
    start: Duration,
    took: Duration,
    /// The back end that answered, or the error.
    result: Result<String, String>,
}

/// Closed-loop load: `concurrency` threads, each connecting again and again until `duration`.
fn closed_loop(
    concurrency: usize,
    cpus: &[usize],
    duration: Duration,
    epoch: Instant,
    one: Arc<dyn Fn(u32) -> Result<String, String> + Send + Sync>,
) -> Vec<Conn> {
    let out = Arc::new(Mutex::new(Vec::with_capacity(100_000)));
    let end = Instant::now() + duration;
    let threads: Vec<_> = (0..concurrency)
        .map(|t| {
            let (out, one, cpus) = (Arc::clone(&out), Arc::clone(&one), cpus.to_vec());
            std::thread::spawn(move || {
                net::pin(&cpus, t);
                let mut mine = Vec::with_capacity(20_000);
                let mut i = t as u32;
                while Instant::now() < end {
                    let s = Instant::now();
                    let result = one(i);
                    mine.push(Conn { start: s.duration_since(epoch), took: s.elapsed(), result });
                    i = i.wrapping_add(concurrency as u32);
                }
                out.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mut v = std::mem::take(&mut *out.lock().unwrap_or_else(|p| p.into_inner()));
    v.sort_by_key(|c| c.start);
    v
}

fn hello_bytes() -> Vec<u8> {
    for p in ["src/hello/testdata/openssl-sni.bin", "../src/hello/testdata/openssl-sni.bin"] {
        if let Ok(b) = std::fs::read(p) {
            return b;
        }
    }
    crate::hello::generate(Some("www.example.com"))
}

/// A hello-replay connection: the back end's label.
fn hello_conn(to: SocketAddrV4, hello: &[u8], src: u32) -> Result<String, String> {
    let mut s = net::connect(to, src, Duration::from_secs(5)).map_err(|e| format!("connect: {}", net::io_kind(&e)))?;
    s.write_all(hello).map_err(|e| format!("write: {}", net::io_kind(&e)))?;
    let mut a = [0u8; ANSWER_LEN];
    s.read_exact(&mut a).map_err(|e| format!("read: {}", net::io_kind(&e)))?;
    Ok(answer_label(&a).unwrap_or("?").to_owned())
}

fn tls_client() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::certs::NoVerify::new()))
        .with_no_client_auth();
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// A full TLS 1.3 handshake with `sni`, 16 bytes echoed, close_notify.
fn tls_conn(to: SocketAddrV4, cfg: &Arc<rustls::ClientConfig>, sni: &str, src: u32) -> Result<String, String> {
    let mut s = net::connect(to, src, Duration::from_secs(5)).map_err(|e| format!("connect: {}", net::io_kind(&e)))?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let mut c = rustls::ClientConnection::new(Arc::clone(cfg), name).map_err(|e| e.to_string())?;
    while c.is_handshaking() {
        c.complete_io(&mut s).map_err(|e| format!("handshake: {}", net::io_kind(&e)))?;
    }
    let msg = *b"0123456789abcdef";
    let mut tls = rustls::Stream::new(&mut c, &mut s);
    tls.write_all(&msg).map_err(|e| format!("write: {}", net::io_kind(&e)))?;
    let mut got = [0u8; 16];
    tls.read_exact(&mut got).map_err(|e| format!("read: {}", net::io_kind(&e)))?;
    if got != msg {
        return Err("echo mismatch".into());
    }
    c.send_close_notify();
    let _ = c.complete_io(&mut s);
    Ok("tls".into())
}

// ---- figures ---------------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn pct(sorted_us: &[f64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i.min(sorted_us.len() - 1)]
}

fn p99_us(conns: &[Conn]) -> f64 {
    let mut v: Vec<f64> = conns.iter().filter(|c| c.result.is_ok()).map(|c| c.took.as_secs_f64() * 1e6).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    pct(&v, 0.99)
}

/// Polls the dispatcher's `/stats` for the state of back end `target`.
fn backend_state(admin: SocketAddr, target: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let json = body.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["backends"]
        .as_array()?
        .iter()
        .find(|b| b["backend"] == target)
        .and_then(|b| b["state"].as_str())
        .map(str::to_owned)
}

/// Polls HAProxy's stats socket for the status of server `srv` of back end `be`.
fn haproxy_state(sock: &Path, be: &str, srv: &str) -> Option<String> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    s.write_all(b"show stat\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let line = out.lines().find(|l| l.starts_with(&format!("{be},{srv},")))?;
    let status = line.split(',').nth(17)?;
    Some(if status.starts_with("UP") { "up".into() } else { "down".into() })
}

// ---- pool --------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct PoolRun {
    pub target: String,
    pub connections: usize,
    pub failed: usize,
    /// Connections open on the killed back end when it was killed.
    pub in_flight_on_killed: usize,
    /// Failed connections that started after the checks marked it down.
    pub failed_after_down: usize,
    /// Kill to marked down, ms (`None`: never seen down).
    pub down_after_ms: Option<f64>,
    /// Restore to marked up, ms.
    pub up_after_ms: Option<f64>,
    /// Restore to its first connection served, ms.
    pub first_served_after_ms: Option<f64>,
    /// Shares of the three back ends before the kill.
    pub shares_before: Vec<f64>,
    /// Shares after it was back up.
    pub shares_after: Vec<f64>,
    pub errors: HashMap<String, usize>,
}

const INTERVAL_MS: u64 = 250;
const FALL: u64 = 2;
const RISE: u64 = 2;

fn pool(opts: &Options, dir: &Path) -> Result<Vec<PoolRun>, String> {
    let load = net::parse_cpus(&opts.load_cpus)?;
    let epoch = Instant::now();
    let mut backs: Vec<Responder> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            Responder::new(
                n,
                Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
                None,
                Duration::from_millis(2),
                48,
                load.clone(),
                epoch,
            )
        })
        .collect();
    for b in &mut backs {
        b.start().map_err(|e| e.to_string())?;
    }
    let addrs: Vec<SocketAddrV4> =
        backs.iter().map(|b| b.addr.unwrap_or(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))).collect();
    let hello = Arc::new(hello_bytes());
    let mut runs = Vec::new();
    let mut targets = vec!["sni-dispatch"];
    if opts.compare.iter().any(|c| c == "haproxy") {
        targets.push("haproxy");
    }
    for run in 0..opts.runs {
        for k in 0..targets.len() {
            let target = targets[(k + run) % targets.len()];
            let port = free_port();
            let front = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let stats_sock = dir.join("haproxy-stats.sock");
            let proc_ = if target == "sni-dispatch" {
                let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
                let toml = format!(
                    "[runtime]\nworkers = 1\ncpus = \"{}\"\n[admin]\nlisten = \"{admin}\"\n[[listener]]\naddress = \"{front}\"\n\
                     [fallback]\nno_sni = \"pool\"\nunknown_sni = \"pool\"\n\
                     [[route]]\nname = \"pool\"\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbalance = \"round_robin\"\nbackends = [{}]\n\
                     health_check = {{ interval_ms = {INTERVAL_MS}, timeout_ms = {INTERVAL_MS}, rise = {RISE}, fall = {FALL} }}\n",
                    opts.target_cpus,
                    list.join(", ")
                );
                dispatcher(opts, "sni-dispatch", dir, &toml, SocketAddr::V4(front))?
            } else {
                let servers: String = addrs
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        format!(
                            "  server {} {a} check inter {INTERVAL_MS} fall {FALL} rise {RISE}\n",
                            ["a", "b", "c"][i]
                        )
                    })
                    .collect();
                let cfg = format!(
                    "global\n  nbthread 1\n  maxconn 8000\n  stats socket {} level admin\n\
                     defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                     frontend f\n  bind {front}\n  default_backend pool\nbackend pool\n  balance roundrobin\n  retries 3\n  option redispatch 1\n{servers}",
                    stats_sock.display(),
                );
                haproxy(opts, "haproxy", dir, &cfg, SocketAddr::V4(front))?
            };
            std::thread::sleep(Duration::from_millis(500));
            let total = Duration::from_secs_f64(opts.duration_s.max(6.0));
            let (kill_at, restore_at) = (total.mul_f64(0.35), total.mul_f64(0.65));
            let run_epoch = Instant::now();
            let h = Arc::clone(&hello);
            let one: Arc<dyn Fn(u32) -> Result<String, String> + Send + Sync> =
                Arc::new(move |i| hello_conn(front, &h, i));
            let conc = opts.concurrency;
            let load2 = load.clone();
            let loader = std::thread::spawn(move || closed_loop(conc, &load2, total, run_epoch, one));
            // The timeline: kill b, watch it go down, restore it, watch it come back.
            let state = |stats: &Path| -> Option<String> {
                if target == "sni-dispatch" {
                    backend_state(admin, &addrs[1].to_string())
                } else {
                    haproxy_state(stats, "pool", "b")
                }
            };
            sleep_until(run_epoch + kill_at);
            let killed_at = run_epoch.elapsed();
            let in_flight = backs[1].kill();
            let mut down_at = None;
            while run_epoch.elapsed() < restore_at {
                if down_at.is_none() && state(&stats_sock).as_deref() == Some("down") {
                    down_at = Some(run_epoch.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            backs[1].start().map_err(|e| e.to_string())?;
            let restored_at = run_epoch.elapsed();
            let restored_instant = Instant::now();
            let mut up_at = None;
            while run_epoch.elapsed() < total {
                if up_at.is_none() && state(&stats_sock).as_deref() == Some("up") {
                    up_at = Some(run_epoch.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let conns = loader.join().map_err(|_| "load thread panicked".to_string())?;
            let first_served =
                backs[1].first_served_since_start().map(|t| t.saturating_sub(restored_instant.duration_since(epoch)));
            let failed: Vec<&Conn> = conns.iter().filter(|c| c.result.is_err()).collect();
            let mut errors = HashMap::new();
            for c in &failed {
                if let Err(e) = &c.result {
                    *errors.entry(e.clone()).or_default() += 1;
                }
            }
            let share = |from: Duration, to: Duration| -> Vec<f64> {
                let window: Vec<&Conn> =
                    conns.iter().filter(|c| c.start >= from && c.start < to && c.result.is_ok()).collect();
                let n = window.len().max(1) as f64;
                ["a", "b", "c"]
                    .iter()
                    .map(|b| window.iter().filter(|c| c.result.as_deref() == Ok(*b)).count() as f64 / n)
                    .collect()
            };
            let after_up = up_at.unwrap_or(total) + Duration::from_millis(200);
            let r = PoolRun {
                target: target.to_string(),
                connections: conns.len(),
                failed: failed.len(),
                in_flight_on_killed: in_flight,
                failed_after_down: down_at.map_or(0, |d| failed.iter().filter(|c| c.start >= d).count()),
                down_after_ms: down_at.map(|d| (d - killed_at).as_secs_f64() * 1e3),
                up_after_ms: up_at.map(|u| (u - restored_at).as_secs_f64() * 1e3),
                first_served_after_ms: first_served.map(|d| d.as_secs_f64() * 1e3),
                shares_before: share(Duration::from_millis(300), killed_at),
                shares_after: share(after_up, total),
                errors,
            };
            eprintln!("{target} run {run}: {r:?}");
            runs.push(r);
            drop(proc_);
            let _ = std::fs::remove_file(&stats_sock);
        }
    }
    Ok(runs)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn pool_report(runs: &[PoolRun]) -> String {
    let mut out = String::new();
    out += &format!(
        "pool: round robin over 3 back ends (2 ms hold), health checks every {INTERVAL_MS} ms, fall {FALL}, rise {RISE}; back end b killed at 35 % of the run, restored at 65 %\n"
    );
    out += "target        conns  failed  in flight on b  failed after down  down after  up after  first served after  shares before (a/b/c)  shares after\n";
    for r in runs {
        let f = |v: &[f64]| v.iter().map(|x| format!("{:.1}%", x * 100.0)).collect::<Vec<_>>().join("/");
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ms"));
        out += &format!(
            "{:<12} {:>6}  {:>6}  {:>14}  {:>17}  {:>10}  {:>8}  {:>18}  {:>21}  {}\n",
            r.target,
            r.connections,
            r.failed,
            r.in_flight_on_killed,
            r.failed_after_down,
            ms(r.down_after_ms),
            ms(r.up_after_ms),
            ms(r.first_served_after_ms),
            f(&r.shares_before),
            f(&r.shares_after)
        );
    }
    out
}

// ---- hand-off ----------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct CpuRun {
    pub front: String,
    pub connections: usize,
    pub errors: usize,
    pub rate: f64,
    pub p99_us: f64,
    /// CPU µs per connection of the front, of the terminator (or back end), and both.
    pub front_us: f64,
    pub terminator_us: f64,
    pub total_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuSummary {
    pub front: String,
    pub runs: usize,
    pub rate: f64,
    pub p99_us: f64,
    pub front_us: f64,
    pub terminator_us: f64,
    pub total_us: f64,
    pub errors: usize,
}

fn summarize(runs: &[CpuRun]) -> Vec<CpuSummary> {
    let mut names: Vec<String> = Vec::new();
    for r in runs {
        if !names.contains(&r.front) {
            names.push(r.front.clone());
        }
    }
    names
        .iter()
        .map(|n| {
            let mine: Vec<&CpuRun> = runs.iter().filter(|r| &r.front == n).collect();
            let m = |f: &dyn Fn(&CpuRun) -> f64| median(mine.iter().map(|r| f(r)).collect());
            CpuSummary {
                front: n.clone(),
                runs: mine.len(),
                rate: m(&|r| r.rate),
                p99_us: m(&|r| r.p99_us),
                front_us: m(&|r| r.front_us),
                terminator_us: m(&|r| r.terminator_us),
                total_us: m(&|r| r.total_us),
                errors: mine.iter().map(|r| r.errors).sum(),
            }
        })
        .collect()
}

/// The table of a CPU scenario; `second` names the terminator's column (`None`: no second
/// process, no columns for it).
fn cpu_table(title: &str, s: &[CpuSummary], second: Option<&str>) -> String {
    let mut out = format!("{title}\nfront                      conn/s  p99 µs   front µs/conn");
    if let Some(second) = second {
        out += &format!("  {second:>15}  total µs/conn");
    }
    out += "  errors\n";
    for r in s {
        out += &format!("{:<24} {:>8.0} {:>7.0} {:>14.1}", r.front, r.rate, r.p99_us, r.front_us);
        if second.is_some() {
            out += &format!("  {:>15.1}  {:>13.1}", r.terminator_us, r.total_us);
        }
        out += &format!("  {:>6}\n", r.errors);
    }
    out
}

/// Runs `one` against a front for the options' duration; CPU of `front` and `back` over it.
fn measure(
    opts: &Options,
    name: &str,
    front: &Proc,
    back: Option<&Proc>,
    one: Arc<dyn Fn(u32) -> Result<String, String> + Send + Sync>,
) -> CpuRun {
    let load = net::parse_cpus(&opts.load_cpus).unwrap_or_default();
    // Warm-up: a short burst, not measured.
    let _ = closed_loop(opts.concurrency, &load, Duration::from_millis(500), Instant::now(), Arc::clone(&one));
    let (f0, b0) = (front.cpu(), back.map_or(0.0, Proc::cpu));
    let t0 = Instant::now();
    let conns = closed_loop(opts.concurrency, &load, Duration::from_secs_f64(opts.duration_s), t0, one);
    let wall = t0.elapsed().as_secs_f64();
    let (f1, b1) = (front.cpu(), back.map_or(0.0, Proc::cpu));
    let ok = conns.iter().filter(|c| c.result.is_ok()).count();
    let n = ok.max(1) as f64;
    let r = CpuRun {
        front: name.into(),
        connections: ok,
        errors: conns.len() - ok,
        rate: ok as f64 / wall,
        p99_us: p99_us(&conns),
        front_us: (f1 - f0) * 1e6 / n,
        terminator_us: (b1 - b0) * 1e6 / n,
        total_us: (f1 - f0 + b1 - b0) * 1e6 / n,
    };
    if r.errors > 0 {
        let first = conns.iter().find_map(|c| c.result.as_ref().err()).cloned().unwrap_or_default();
        eprintln!("{name}: {} errors (first: {first})", r.errors);
    }
    eprintln!("{name}: {} conn/s, front {:.1} µs/conn, back {:.1} µs/conn", r.rate as u64, r.front_us, r.terminator_us);
    r
}

fn handoff(opts: &Options, dir: &Path) -> Result<Vec<CpuRun>, String> {
    let load = net::parse_cpus(&opts.load_cpus)?;
    let origin = echo_origin(load.clone(), 32).map_err(|e| e.to_string())?;
    let ca = sni_dispatch::pki::Ca::new("topology load CA").map_err(|e| e.to_string())?;
    let files =
        ca.issue(&["shop.example"]).map_err(|e| e.to_string())?.write(dir, "shop").map_err(|e| e.to_string())?;
    let sock = dir.join("term.sock");
    let term_port = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port());
    let toml = format!(
        "[runtime]\nworkers = 1\ncpus = \"{}\"\n[[listener]]\nhandoff = {sock:?}\n[[listener]]\naddress = \"{term_port}\"\n\
         [[route]]\nname = \"shop\"\nsni = [\"shop.example\"]\naction = \"terminate\"\ncert = {:?}\nkey = {:?}\nbackends = [\"{origin}\"]\n",
        opts.target_cpus, files.cert, files.key
    );
    let term = dispatcher(opts, "terminator", dir, &toml, SocketAddr::V4(term_port))?;
    let tls = tls_client();
    let mut fronts: Vec<&str> = vec!["sni-dispatch handoff", "sni-dispatch tcp"];
    for c in &opts.compare {
        if c == "haproxy" || c == "nginx" {
            fronts.push(if c == "haproxy" { "haproxy tcp" } else { "nginx tcp" });
        }
    }
    let mut runs = Vec::new();
    for run in 0..opts.runs {
        for k in 0..fronts.len() {
            let name = fronts[(k + run) % fronts.len()];
            let port = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port());
            let front = match name {
                "sni-dispatch handoff" | "sni-dispatch tcp" => {
                    let backend = if name.ends_with("handoff") {
                        format!("handoff:{}", sock.display())
                    } else {
                        term_port.to_string()
                    };
                    let toml = format!(
                        "[runtime]\nworkers = 1\ncpus = \"{}\"\n[[listener]]\naddress = \"{port}\"\n\
                         [[route]]\nname = \"shop\"\nsni = [\"shop.example\"]\naction = \"passthrough\"\nbackends = [\"{backend}\"]\n",
                        opts.target_cpus
                    );
                    dispatcher(opts, name, dir, &toml, SocketAddr::V4(port))?
                }
                "haproxy tcp" => {
                    let cfg = format!(
                        "{HAPROXY_GLOBAL}frontend f\n  bind {port}\n  tcp-request inspect-delay 5s\n  tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
                         \x20 use_backend t if {{ req_ssl_sni -i shop.example }}\nbackend t\n  server s1 {term_port}\n"
                    );
                    haproxy(opts, name, dir, &cfg, SocketAddr::V4(port))?
                }
                _ => {
                    let stream = format!(
                        "  map $ssl_preread_server_name $up {{ shop.example t; default t; }}\n  upstream t {{ server {term_port}; }}\n\
                         \x20 server {{ listen {port}; ssl_preread on; proxy_pass $up; }}"
                    );
                    nginx(opts, name, dir, &stream, SocketAddr::V4(port))?
                }
            };
            let tls2 = Arc::clone(&tls);
            let one: Arc<dyn Fn(u32) -> Result<String, String> + Send + Sync> =
                Arc::new(move |i| tls_conn(port, &tls2, "shop.example", i));
            runs.push(measure(opts, name, &front, Some(&term), one));
            drop(front);
        }
    }
    drop(term);
    Ok(runs)
}

// ---- unix ------------------------------------------------------------------------------

fn unix(opts: &Options, dir: &Path) -> Result<Vec<CpuRun>, String> {
    let load = net::parse_cpus(&opts.load_cpus)?;
    let epoch = Instant::now();
    let path = dir.join("backend.sock");
    let mut ux = Responder::new("unix", None, Some(path.clone()), Duration::ZERO, 48, load.clone(), epoch);
    ux.start().map_err(|e| e.to_string())?;
    let mut tcp = Responder::new(
        "tcp",
        Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        None,
        Duration::ZERO,
        48,
        load.clone(),
        epoch,
    );
    tcp.start().map_err(|e| e.to_string())?;
    let tcp_addr = tcp.addr.ok_or("no tcp back end")?;
    let hello = Arc::new(hello_bytes());
    let mut fronts: Vec<(&str, bool)> = vec![("sni-dispatch unix", true), ("sni-dispatch tcp", false)];
    for c in &opts.compare {
        match c.as_str() {
            "haproxy" => fronts.extend([("haproxy unix", true), ("haproxy tcp", false)]),
            "nginx" => fronts.extend([("nginx unix", true), ("nginx tcp", false)]),
            _ => {}
        }
    }
    let mut runs = Vec::new();
    for run in 0..opts.runs {
        for k in 0..fronts.len() {
            let (name, on_unix) = fronts[(k + run) % fronts.len()];
            let port = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port());
            let front = if name.starts_with("sni-dispatch") {
                let backend = if on_unix { format!("unix:{}", path.display()) } else { tcp_addr.to_string() };
                let toml = format!(
                    "[runtime]\nworkers = 1\ncpus = \"{}\"\n[[listener]]\naddress = \"{port}\"\n[fallback]\nunknown_sni = \"r\"\nno_sni = \"r\"\n\
                     [[route]]\nname = \"r\"\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbackends = [\"{backend}\"]\n",
                    opts.target_cpus
                );
                dispatcher(opts, name, dir, &toml, SocketAddr::V4(port))?
            } else if name.starts_with("haproxy") {
                let server = if on_unix { format!("unix@{}", path.display()) } else { tcp_addr.to_string() };
                let cfg = format!(
                    "{HAPROXY_GLOBAL}frontend f\n  bind {port}\n  tcp-request inspect-delay 5s\n  tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
                     \x20 default_backend b\nbackend b\n  server s1 {server}\n"
                );
                haproxy(opts, name, dir, &cfg, SocketAddr::V4(port))?
            } else {
                let server = if on_unix { format!("unix:{}", path.display()) } else { tcp_addr.to_string() };
                let stream = format!(
                    "  map $ssl_preread_server_name $up {{ default b; }}\n  upstream b {{ server {server}; }}\n\
                     \x20 server {{ listen {port}; ssl_preread on; proxy_pass $up; }}"
                );
                nginx(opts, name, dir, &stream, SocketAddr::V4(port))?
            };
            let h = Arc::clone(&hello);
            let one: Arc<dyn Fn(u32) -> Result<String, String> + Send + Sync> =
                Arc::new(move |i| hello_conn(port, &h, i));
            runs.push(measure(opts, name, &front, None, one));
            drop(front);
        }
    }
    drop((ux, tcp));
    Ok(runs)
}

// ---- entry -------------------------------------------------------------------------------

/// Runs a scenario; prints its tables; the exit code.
pub fn run(opts: &Options) -> Result<i32, String> {
    net::raise_nofile();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (text, json) = match opts.scenario {
        Scenario::Pool => {
            let runs = pool(opts, dir.path())?;
            (pool_report(&runs), serde_json::json!({ "scenario": "pool", "runs": runs }))
        }
        Scenario::Handoff => {
            let runs = handoff(opts, dir.path())?;
            let s = summarize(&runs);
            let mut text = cpu_table(
                "handoff: full TLS 1.3 handshakes (ECDSA P-256) + 16 B echo, through each front to one sni-dispatch terminator (medians)",
                &s,
                Some("term µs/conn"),
            );
            let get = |n: &str| s.iter().find(|r| r.front == n);
            if let (Some(h), Some(hap)) = (get("sni-dispatch handoff"), get("haproxy tcp")) {
                text += &format!(
                    "front CPU, hand-off ÷ HAProxy passthrough: {:.2} (goal ≤ 0.30); host CPU (front + terminator), hand-off ÷ HAProxy → terminator: {:.2}\n",
                    h.front_us / hap.front_us,
                    h.total_us / hap.total_us
                );
            }
            if let (Some(h), Some(ngx)) = (get("sni-dispatch handoff"), get("nginx tcp")) {
                text +=
                    &format!("host CPU, hand-off ÷ nginx → terminator: {:.2} (goal < 1)\n", h.total_us / ngx.total_us);
            }
            if let (Some(h), Some(t)) = (get("sni-dispatch handoff"), get("sni-dispatch tcp")) {
                text += &format!(
                    "hand-off ÷ sni-dispatch TCP passthrough: front {:.2}, host {:.2}\n",
                    h.front_us / t.front_us,
                    h.total_us / t.total_us
                );
            }
            (text, serde_json::json!({ "scenario": "handoff", "runs": runs, "summary": s }))
        }
        Scenario::Unix => {
            let runs = unix(opts, dir.path())?;
            let s = summarize(&runs);
            let text = cpu_table(
                "unix: short passthrough (captured hello in, 64 B out) to a unix-socket and a TCP back end (medians)",
                &s,
                None,
            );
            (text, serde_json::json!({ "scenario": "unix", "runs": runs, "summary": s }))
        }
    };
    println!("{text}");
    if let Some(p) = &opts.json {
        std::fs::write(p, serde_json::to_string_pretty(&json).unwrap_or_default()).map_err(|e| e.to_string())?;
    }
    Ok(0)
}
