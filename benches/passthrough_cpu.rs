//! Proxy CPU per connection and per GiB: sni-dispatch against HAProxy and nginx (when installed).
//!
//! `cargo bench --bench passthrough_cpu [-- SECONDS]`. The proxy under test is pinned to CPU 1 with
//! `taskset`, the load generator and back ends to CPU 0. CPU time is utime+stime of the proxy
//! process (and its children: none, nginx runs without a master) from /proc/PID/stat, read by
//! `sni_loadtest::procstat` as the load tests do, so it holds across noisy runs better than rates do.
//!
//! - short: captured ClientHello in, 64 bytes back, close (back end closes first).
//! - bulk: 4 connections each push 512 MiB from client to back end.
use sni_loadtest::procstat::cpu_seconds;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELLO: &[u8] = include_bytes!("../src/hello/testdata/openssl-sni.bin");
const REPLY: [u8; 64] = [b'x'; 64];
const LOAD_CPU: usize = 0;
const PROXY_CPU: &str = "1";

fn pin(cpu: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Short-connection back end: read the hello, answer 64 bytes, close.
fn short_backend(stop: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(false).unwrap();
    let l = Arc::new(l);
    for _ in 0..16 {
        let l = Arc::clone(&l);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            pin(LOAD_CPU);
            let mut buf = vec![0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else { continue };
                let mut got = 0;
                while got < HELLO.len() {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                let _ = s.write_all(&REPLY);
            }
        });
    }
    addr
}

/// Bulk back end: read and discard until EOF.
fn sink_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        pin(LOAD_CPU);
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                pin(LOAD_CPU);
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

struct Proxy {
    name: String,
    child: Child,
    pid: u32,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(addr: SocketAddr) -> bool {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn spawn(name: &str, mut cmd: Command, addr: SocketAddr) -> Option<Proxy> {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    let pid = child.id();
    let p = Proxy { name: name.to_string(), child, pid };
    if !wait_listening(addr) {
        eprintln!("{name}: did not start");
        return None;
    }
    std::thread::sleep(Duration::from_millis(300));
    Some(p)
}

fn sni_dispatch(dir: &Path, listen: SocketAddr, backend: SocketAddr, splice: bool) -> Option<Proxy> {
    let cfg = dir.join("sni.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\naddress = \"{listen}\"\n[[route]]\nname = \"r\"\nsni = [\"www.example.com\"]\naction = \"passthrough\"\nbackends = [\"{backend}\"]\n"
        ),
    )
    .ok()?;
    let mut c = Command::new("taskset");
    c.args(["-c", PROXY_CPU]).arg(bin()).args(["run", "--config"]).arg(&cfg).args([
        "--workers",
        "1",
        "--cpus",
        PROXY_CPU,
        "--log",
        "warn",
    ]);
    if !splice {
        c.arg("--no-splice");
    }
    spawn(if splice { "sni-dispatch" } else { "sni-dispatch --no-splice" }, c, listen)
}

fn haproxy(dir: &Path, listen: SocketAddr, backend: SocketAddr, splice: bool) -> Option<Proxy> {
    let cfg = dir.join("haproxy.cfg");
    let splice_opt = if splice { "  option splice-request\n  option splice-response\n" } else { "" };
    std::fs::write(
        &cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n{splice_opt}\
             frontend f\n  bind {listen}\n  tcp-request inspect-delay 5s\n  tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
             \x20 use_backend b if {{ req_ssl_sni -i www.example.com }}\n  default_backend b\nbackend b\n  server s1 {backend}\n"
        ),
    )
    .ok()?;
    let mut c = Command::new("taskset");
    c.args(["-c", PROXY_CPU, "haproxy", "-db", "-f"]).arg(&cfg);
    spawn(if splice { "haproxy+splice" } else { "haproxy" }, c, listen)
}

fn nginx(dir: &Path, listen: SocketAddr, backend: SocketAddr) -> Option<Proxy> {
    let cfg = dir.join("nginx.conf");
    std::fs::write(
        &cfg,
        format!(
            "{}daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log /dev/null crit;\npid {}/nginx.pid;\nevents {{ worker_connections 8000; }}\n\
             stream {{\n  map $ssl_preread_server_name $up {{ www.example.com b; default b; }}\n  upstream b {{ server {backend}; }}\n\
             \x20 server {{ listen {listen} reuseport; ssl_preread on; proxy_pass $up; }}\n}}\n",
            stream_module(),
            dir.display()
        ),
    )
    .ok()?;
    let mut c = Command::new("taskset");
    c.args(["-c", PROXY_CPU, "nginx", "-p"]).arg(dir).arg("-c").arg(&cfg);
    spawn("nginx", c, listen)
}

/// Runs short connections from `clients` threads for `secs`; returns (connections, latencies µs).
fn short_load(addr: SocketAddr, clients: usize, secs: f64) -> (u64, Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                pin(LOAD_CPU);
                let mut lat = Vec::new();
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let Ok(mut s) = TcpStream::connect(addr) else { continue };
                    let _ = s.set_nodelay(true);
                    if s.write_all(HELLO).is_err() {
                        continue;
                    }
                    let mut got = 0;
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    if got == REPLY.len() {
                        done.fetch_add(1, Ordering::Relaxed);
                        lat.push(t.elapsed().as_micros() as u32);
                    }
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u32> = threads.into_iter().flat_map(|t| t.join().unwrap_or_default()).collect();
    lat.sort_unstable();
    (done.load(Ordering::Relaxed), lat)
}

fn bulk_load(addr: SocketAddr, conns: usize, bytes: u64) {
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                pin(LOAD_CPU);
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(HELLO).unwrap();
                let chunk = vec![0x5au8; 1 << 20];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    s.write_all(&chunk[..n]).unwrap();
                    left -= n as u64;
                }
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn main() {
    let secs: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5.0);
    pin(LOAD_CPU);
    let dir = std::env::temp_dir().join(format!("sni-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();

    let stop = Arc::new(AtomicBool::new(false));
    let short_be = short_backend(Arc::clone(&stop));
    println!("short connections ({secs} s, 8 clients): proxy CPU µs per connection");
    type Start = fn(&Path, SocketAddr, SocketAddr) -> Option<Proxy>;
    let targets: [(&str, Start); 4] = [
        ("sni-dispatch", |d, l, b| sni_dispatch(d, l, b, true)),
        ("sni-dispatch --no-splice", |d, l, b| sni_dispatch(d, l, b, false)),
        ("haproxy", |d, l, b| haproxy(d, l, b, false)),
        ("nginx", |d, l, b| nginx(d, l, b)),
    ];
    for (name, start) in targets {
        if !only.is_empty() && !name.contains(&only) {
            continue;
        }
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let Some(p) = start(&dir, listen, short_be) else {
            println!("  {name:<26} (not available)");
            continue;
        };
        let t0 = cpu_seconds(p.pid);
        let (n, lat) = short_load(listen, 8, secs);
        let cpu = cpu_seconds(p.pid) - t0;
        let q =
            |f: f64| lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
        println!(
            "  {:<26} {:>7.1} µs/conn  {:>8.0} conn/s  p50 {} µs  p99 {} µs",
            p.name,
            cpu * 1e6 / n.max(1) as f64,
            n as f64 / secs,
            q(0.5),
            q(0.99)
        );
    }

    let sink = sink_backend();
    let per_conn: u64 = std::env::var("BENCH_BULK_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(512) << 20;
    println!("bulk (4 connections × {} MiB): proxy CPU s per GiB", per_conn >> 20);
    let bulk_targets: [(&str, Start); 4] = [
        ("sni-dispatch", |d, l, b| sni_dispatch(d, l, b, true)),
        ("sni-dispatch --no-splice", |d, l, b| sni_dispatch(d, l, b, false)),
        ("haproxy+splice", |d, l, b| haproxy(d, l, b, true)),
        ("nginx", |d, l, b| nginx(d, l, b)),
    ];
    for (name, start) in bulk_targets {
        if !only.is_empty() && !name.contains(&only) {
            continue;
        }
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let Some(p) = start(&dir, listen, sink) else {
            println!("  {name:<26} (not available)");
            continue;
        };
        let t0 = cpu_seconds(p.pid);
        let w0 = Instant::now();
        bulk_load(listen, 4, per_conn);
        let cpu = cpu_seconds(p.pid) - t0;
        let gib = (4 * per_conn) as f64 / (1u64 << 30) as f64;
        println!("  {:<26} {:>6.3} s/GiB  ({:.2} GiB/s wall)", p.name, cpu / gib, gib / w0.elapsed().as_secs_f64());
    }
    stop.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(&dir);
    let _: Option<PathBuf> = None;
}

/// The binary under test: `SNI_DISPATCH_BIN` or the one Cargo built.
fn bin() -> String {
    std::env::var("SNI_DISPATCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sni-dispatch").to_string())
}

/// Debian builds nginx's stream module as a dynamic module.
fn stream_module() -> String {
    let p = "/usr/lib/nginx/modules/ngx_stream_module.so";
    if Path::new(p).exists() {
        format!("load_module {p};\n")
    } else {
        String::new()
    }
}
