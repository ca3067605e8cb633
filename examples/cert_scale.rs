//! Certificates at edge scale: generates N terminating routes, each with its own ECDSA P-256
//! certificate (one name each, signed by one test CA), then measures the real binary:
//! `check` (wall time, CPU, peak RSS), start to the first and last route serving, RSS per
//! certificate, a full SIGHUP reload with nothing changed, and one route's certificate
//! rewritten and reloaded: SIGHUP until the new certificate is served, the time from the swap
//! to the first handshake with it, and a sample of the other routes checked to still serve
//! their old certificates. Then one route's certificate changed through the admin API
//! (`PUT /certs/NAME`, a route made by `PUT /routes/NAME` with its certificate inline), 20
//! times: submitted to the new certificate served, median and max, with the server's own
//! `serving_ms`. In this process: the live heap per route of the loaded
//! configuration, and what building one route's certificate costs (the work a one-route change
//! does). With `--haproxy`, HAProxy 2.6 with the same certificates (`crt-list`) beside it: its
//! `-c` check, its start and its RSS.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example cert_scale -- --routes 100000 --dir /tmp/certs-100k --haproxy
//! ```
//!
//! The certificates are generated once per `--dir` (about 10 s per 100,000 on one core) and
//! reused by later runs with the same `--routes`. Every wait is bounded; the process stops the
//! server it started.

use rustls::pki_types::{CertificateDer, ServerName};
use sni_dispatch::pki;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

struct Args {
    routes: usize,
    dir: PathBuf,
    binary: PathBuf,
    workers: usize,
    cpus: Option<String>,
    /// Other routes checked to be untouched by a one-certificate change.
    sample: usize,
    haproxy: bool,
    /// Only the in-process measures (no server).
    in_process_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        routes: 100_000,
        dir: std::env::temp_dir().join("sni-cert-scale"),
        binary: PathBuf::from("target/release/sni-dispatch"),
        workers: 1,
        cpus: None,
        sample: 200,
        haproxy: false,
        in_process_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| die(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--routes" => a.routes = value().parse().unwrap_or_else(|_| die("--routes N")),
            "--dir" => a.dir = PathBuf::from(value()),
            "--binary" => a.binary = PathBuf::from(value()),
            "--workers" => a.workers = value().parse().unwrap_or_else(|_| die("--workers N")),
            "--cpus" => a.cpus = Some(value()),
            "--sample" => a.sample = value().parse().unwrap_or_else(|_| die("--sample N")),
            "--haproxy" => a.haproxy = true,
            "--in-process-only" => a.in_process_only = true,
            "-h" | "--help" => {
                println!(
                    "cert_scale [--routes N] [--dir DIR] [--binary PATH] [--workers N] [--cpus LIST] [--sample N] [--haproxy] [--in-process-only]"
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown flag {other}")),
        }
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("cert_scale: {msg}");
    std::process::exit(2)
}

fn name(i: usize) -> String {
    format!("r{i}.certs.example")
}

/// The name of the route whose certificate changes through the admin API.
const API_NAME: &str = "api-cert.certs.example";

/// Writes `DIR/ca.pem` and `DIR/certs/rI.{pem,key}` for every route (skipped when `DIR/count`
/// says they are there), in parallel.
fn generate(dir: &Path, n: usize) -> Vec<u8> {
    let marker = dir.join("count");
    if std::fs::read_to_string(&marker).ok().and_then(|s| s.trim().parse::<usize>().ok()) == Some(n) {
        return std::fs::read(dir.join("ca.der")).unwrap_or_else(|e| die(&format!("ca.der: {e}")));
    }
    let t = Instant::now();
    std::fs::create_dir_all(dir.join("certs")).unwrap_or_else(|e| die(&format!("{}: {e}", dir.display())));
    let ca = Arc::new(pki::Ca::new("cert-scale CA").unwrap_or_else(|e| die(&e.to_string())));
    ca.write(dir, "ca.pem").unwrap_or_else(|e| die(&e.to_string()));
    std::fs::write(dir.join("ca.der"), ca.der().as_ref()).unwrap_or_else(|e| die(&e.to_string()));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for t in 0..threads {
            let ca = Arc::clone(&ca);
            s.spawn(move || {
                for i in (t..n).step_by(threads) {
                    let leaf = ca.issue(&[&name(i)]).unwrap_or_else(|e| die(&e.to_string()));
                    leaf.write(&dir.join("certs"), &format!("r{i}")).unwrap_or_else(|e| die(&e.to_string()));
                }
            });
        }
    });
    // A second certificate for route n/2, swapped in during the run.
    ca.issue(&[&name(n / 2)])
        .and_then(|leaf| leaf.write(&dir.join("certs"), "alt"))
        .unwrap_or_else(|e| die(&e.to_string()));
    // Two for the route changed through the admin API.
    for stem in ["api1", "api2"] {
        ca.issue(&[API_NAME])
            .and_then(|leaf| leaf.write(&dir.join("certs"), stem))
            .unwrap_or_else(|e| die(&e.to_string()));
    }
    std::fs::write(&marker, n.to_string()).unwrap_or_else(|e| die(&e.to_string()));
    println!("generated {n} certificates in {:.1} s", t.elapsed().as_secs_f64());
    ca.der().to_vec()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| die(&e.to_string()))
}

/// An origin that answers every connection with `ok\n` and closes.
fn origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| die(&e.to_string()));
    let addr = l.local_addr().unwrap_or_else(|e| die(&e.to_string()));
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"ok\n");
        }
    });
    addr
}

fn write_config(dir: &Path, n: usize, port: u16, origin: SocketAddr) -> PathBuf {
    // The admin API on a unix socket, its routes in `api-N/` (emptied: each run starts afresh).
    let api = dir.join(format!("api-{n}"));
    let _ = std::fs::remove_dir_all(&api);
    std::fs::create_dir_all(&api).unwrap_or_else(|e| die(&e.to_string()));
    let mut toml = format!(
        "include = [\"api-{n}/*.toml\"]\n[admin]\nsocket = \"{}\"\napi_dir = \"api-{n}\"\n\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\n",
        dir.join(format!("admin-{n}.sock")).display()
    );
    for i in 0..n {
        toml += &format!(
            "[[route]]\nname = \"r{i}\"\nsni = [\"{}\"]\naction = \"terminate\"\ncert = \"certs/r{i}.pem\"\nkey = \"certs/r{i}.key\"\nbackends = [\"{origin}\"]\n\n",
            name(i)
        );
    }
    let path = dir.join(format!("edge-{n}.toml"));
    std::fs::write(&path, toml).unwrap_or_else(|e| die(&e.to_string()));
    path
}

/// One TLS handshake to `addr` for route `i`: the leaf certificate served, or why not.
fn handshake(client: &Arc<rustls::ClientConfig>, addr: SocketAddr, i: usize) -> Result<Vec<u8>, String> {
    handshake_to(client, addr, &name(i))
}

/// One request to the admin API's unix socket: (status, body).
fn admin(sock: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let ctype = if body.starts_with('{') { "application/json" } else { "application/x-pem-file" };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned()))
}

/// The route whose certificate changes through the admin API: made with `api1` inline, then
/// its certificate switched between `api2` and `api1` `times` times, each polled until served.
/// Prints submitted-to-served median and max, and the server's `serving_ms`.
fn api_changes(
    dir: &Path,
    n: usize,
    client: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    origin: SocketAddr,
    times: usize,
) {
    let sock = dir.join(format!("admin-{n}.sock"));
    let read = |stem: &str, ext: &str| {
        std::fs::read_to_string(dir.join("certs").join(format!("{stem}.{ext}"))).unwrap_or_else(|e| die(&e.to_string()))
    };
    let body = format!(
        "{{\"sni\": [\"{API_NAME}\"], \"action\": \"terminate\", \"backends\": [\"{origin}\"], \"cert_pem\": {:?}, \"key_pem\": {:?}}}",
        read("api1", "pem"),
        read("api1", "key")
    );
    match admin(&sock, "PUT", "/routes/api-cert", &body) {
        Ok((200, _)) => {}
        other => die(&format!("PUT /routes/api-cert: {other:?}")),
    }
    let mut current = wait_served_name(client, addr, API_NAME, None, Duration::from_secs(30))
        .unwrap_or_else(|| die("the API route never served"))
        .1;
    let (mut served_ms, mut server_ms) = (Vec::new(), Vec::new());
    for i in 0..times {
        let stem = if i % 2 == 0 { "api2" } else { "api1" };
        let bundle = format!("{}{}", read(stem, "pem"), read(stem, "key"));
        let sock = sock.clone();
        let t = Instant::now();
        let put = std::thread::spawn(move || admin(&sock, "PUT", "/certs/api-cert", &bundle));
        let (at, leaf) = wait_served_name(client, addr, API_NAME, Some(&current), Duration::from_secs(30))
            .unwrap_or_else(|| die("the new certificate was never served"));
        served_ms.push((at - t).as_secs_f64() * 1e3);
        match put.join() {
            Ok(Ok((200, answer))) => {
                let ms = answer
                    .split("\"serving_ms\":")
                    .nth(1)
                    .and_then(|v| v.split([',', '}']).next()?.parse::<f64>().ok());
                server_ms.extend(ms);
            }
            other => die(&format!("PUT /certs/api-cert: {other:?}")),
        }
        current = leaf;
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v.get(v.len() / 2).copied().unwrap_or(f64::NAN), v.last().copied().unwrap_or(f64::NAN))
    };
    let ((m, x), (sm, sx)) = (stats(&mut served_ms), stats(&mut server_ms));
    let all: Vec<String> = served_ms.iter().map(|v| format!("{v:.1}")).collect();
    println!("  submitted to served, each (ms, sorted): {}", all.join(" "));
    println!(
        "certificate through the API ({times} changes of one route's certificate among {n}): submitted to served {m:.2} ms median, {x:.2} ms max; server's serving_ms {sm:.2} median, {sx:.2} max"
    );
}

/// Polls `name` until it answers (with a certificate other than `not`, if given).
fn wait_served_name(
    client: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
    not: Option<&[u8]>,
    limit: Duration,
) -> Option<(Instant, Vec<u8>)> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(leaf) = handshake_to(client, addr, name) {
            if not != Some(&leaf[..]) {
                return Some((Instant::now(), leaf));
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

/// One TLS handshake to `addr` for `name`: the leaf certificate served, or why not.
fn handshake_to(client: &Arc<rustls::ClientConfig>, addr: SocketAddr, name: &str) -> Result<Vec<u8>, String> {
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::clone(client), name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    sock.set_write_timeout(Some(Duration::from_secs(5))).ok();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let leaf = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).ok_or("no certificate")?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let mut answer = [0u8; 3];
    tls.read_exact(&mut answer).map_err(|e| e.to_string())?;
    Ok(leaf)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system, all threads) a process has used so far.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// `check` under `/usr/bin/time`: (wall seconds, CPU seconds, peak RSS KiB).
fn check(binary: &Path, config: &Path) -> (f64, f64, u64) {
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M cpu_s=%U+%S"])
        .arg(binary)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap_or_else(|e| die(&format!("/usr/bin/time {}: {e}", binary.display())));
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        die(&format!("check failed: {stderr}"));
    }
    let line = stderr.lines().find(|l| l.starts_with("maxrss_kib=")).unwrap_or("");
    let field = |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name)).unwrap_or("0");
    let cpu = field("cpu_s=").split('+').filter_map(|v| v.parse::<f64>().ok()).sum();
    (secs, cpu, field("maxrss_kib=").parse().unwrap_or(0))
}

struct Running {
    child: Child,
    /// stderr lines, with the wall-clock time each was read.
    lines: mpsc::Receiver<(SystemTime, String)>,
}

impl Running {
    fn start(a: &Args, config: &Path) -> Self {
        let mut cmd = Command::new(&a.binary);
        cmd.args(["run", "--config"]).arg(config).args(["--workers", &a.workers.to_string()]);
        if let Some(cpus) = &a.cpus {
            cmd.args(["--cpus", cpus]);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| die(&format!("{}: {e}", a.binary.display())));
        let stderr = child.stderr.take().unwrap_or_else(|| die("no stderr"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send((SystemTime::now(), line)).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The first stderr line containing `needle` within `limit`, with when it was read.
    fn wait_line(&self, needle: &str, limit: Duration) -> Option<(SystemTime, String)> {
        let end = Instant::now() + limit;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if line.contains(needle) => return Some((at, line)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args(["-s", sig, &self.child.id().to_string()]).status();
    }

    fn stop(mut self) {
        self.signal("TERM");
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls route `i` until it answers (with a certificate other than `not`, if given).
fn wait_served(
    client: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    i: usize,
    not: Option<&[u8]>,
    limit: Duration,
) -> Option<(Instant, Vec<u8>)> {
    wait_served_name(client, addr, &name(i), not, limit)
}

fn main() {
    let a = args();
    let n = a.routes;
    let ca = generate(&a.dir, n);
    let client = {
        let mut c = pki::client_config(CertificateDer::from(ca)).unwrap_or_else(|e| die(&e.to_string()));
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    };
    let origin = origin();
    if a.in_process_only {
        let config = write_config(&a.dir, n, free_port(), origin);
        return in_process(&config, n, &a.dir);
    }

    // Baseline: one route, to subtract what the process holds without certificates.
    let port = free_port();
    let one = write_config(&a.dir, 1, port, origin);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let base = Running::start(&a, &one);
    wait_served(&client, addr, 0, None, Duration::from_secs(30)).unwrap_or_else(|| die("1-route server never served"));
    let rss_one = rss_kib(base.child.id());
    base.stop();

    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = write_config(&a.dir, n, port, origin);
    let (check_s, check_cpu, check_rss) = check(&a.binary, &config);
    println!("check: {check_s:.2} s ({check_cpu:.2} s CPU), peak RSS {:.0} MiB", check_rss as f64 / 1024.0);

    let t = Instant::now();
    let server = Running::start(&a, &config);
    let (first, _) =
        wait_served(&client, addr, 0, None, Duration::from_secs(120)).unwrap_or_else(|| die("never served route 0"));
    let (last, _) = wait_served(&client, addr, n - 1, None, Duration::from_secs(10))
        .unwrap_or_else(|| die("never served the last route"));
    let rss = rss_kib(server.child.id());
    let pid = server.child.id();
    println!(
        "start: first route served after {:.2} s ({:.2} s CPU), last after {:.2} s; RSS {:.0} MiB ({:.0} MiB for one route): {:.2} KiB per certificate",
        (first - t).as_secs_f64(),
        cpu_s(pid),
        (last - t).as_secs_f64(),
        rss as f64 / 1024.0,
        rss_one as f64 / 1024.0,
        (rss.saturating_sub(rss_one)) as f64 / n as f64
    );
    if let Some((_, line)) = server.wait_line("sni-dispatch serving", Duration::from_secs(1)) {
        println!("  {}", line.split("sni-dispatch serving").next().unwrap_or("").trim());
    }

    // The sample of other routes, and what they serve before the change.
    let step = (n / a.sample.max(1)).max(1);
    let sample: Vec<usize> = (1..n).step_by(step).take(a.sample).collect();
    let before: Vec<Vec<u8>> = sample
        .iter()
        .map(|&i| handshake(&client, addr, i).unwrap_or_else(|e| die(&format!("route {i}: {e}"))))
        .collect();

    // A full reload with nothing changed.
    let (t, cpu) = (Instant::now(), cpu_s(pid));
    server.signal("HUP");
    match server.wait_line("configuration reloaded", Duration::from_secs(120)) {
        Some((_, line)) => println!(
            "reload, nothing changed: {:.2} s ({:.2} s CPU)  ({})",
            t.elapsed().as_secs_f64(),
            cpu_s(pid) - cpu,
            tail(&line)
        ),
        None => die("no reload line"),
    }
    let after = rss_kib(pid);
    // The replaced configuration is freed on the control thread once no worker holds it (a
    // worker lets go on its tick, about a second).
    std::thread::sleep(Duration::from_secs(3));
    println!(
        "  RSS after the reload: {:.0} MiB at once, {:.0} MiB 3 s later ({:.2} / {:.2} KiB per certificate)",
        after as f64 / 1024.0,
        rss_kib(pid) as f64 / 1024.0,
        after.saturating_sub(rss_one) as f64 / n as f64,
        rss_kib(pid).saturating_sub(rss_one) as f64 / n as f64
    );

    // One route's certificate rewritten (a new key, same CA), then a reload.
    let k = n / 2;
    let certs = a.dir.join("certs");
    let old = handshake(&client, addr, k).unwrap_or_else(|e| die(&format!("route {k}: {e}")));
    for ext in ["pem", "key"] {
        let live = certs.join(format!("r{k}.{ext}"));
        std::fs::copy(&live, certs.join(format!("orig.{ext}"))).unwrap_or_else(|e| die(&e.to_string()));
        std::fs::copy(certs.join(format!("alt.{ext}")), &live).unwrap_or_else(|e| die(&e.to_string()));
    }
    let t = Instant::now();
    server.signal("HUP");
    let (served_at, new) = wait_served(&client, addr, k, Some(&old), Duration::from_secs(120))
        .unwrap_or_else(|| die("the new certificate was never served"));
    let line = server.wait_line("configuration reloaded", Duration::from_secs(5));
    // The reload's log line is written just after the new configuration is swapped in.
    let swap_to_served = line.as_ref().and_then(|(at, _)| {
        let served_wall = SystemTime::now() - served_at.elapsed();
        served_wall.duration_since(*at).ok().map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
    });
    println!(
        "one certificate changed: SIGHUP to the new certificate served {:.3} s; swap (log line) to served: {}{}",
        (served_at - t).as_secs_f64(),
        swap_to_served.unwrap_or_else(|| "served before the log line was read".into()),
        line.map(|(_, l)| format!("  ({})", tail(&l))).unwrap_or_default()
    );
    assert_ne!(old, new);
    for ext in ["pem", "key"] {
        std::fs::copy(certs.join(format!("orig.{ext}")), certs.join(format!("r{k}.{ext}")))
            .unwrap_or_else(|e| die(&e.to_string()));
    }

    api_changes(&a.dir, n, &client, addr, origin, 20);

    let after: Vec<Vec<u8>> = sample
        .iter()
        .map(|&i| handshake(&client, addr, i).unwrap_or_else(|e| die(&format!("route {i}: {e}"))))
        .collect();
    let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    println!(
        "others untouched: {} of {} sampled routes serve the same certificate as before",
        sample.len() - changed,
        sample.len()
    );
    server.stop();

    in_process(&config, n, &a.dir);
    if a.haproxy {
        haproxy(&a.dir, n, &client, origin);
    }
}

/// The live heap of the loaded configuration per route (glibc's count of bytes in use, which
/// covers this example's Rust allocations and aws-lc's), and one route's certificate built
/// with the cache cold and warm.
fn in_process(config: &Path, n: usize, dir: &Path) {
    use sni_dispatch::config::{Config, RuntimeOverrides};
    use sni_dispatch::route::TlsVersion;
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let heap = || unsafe { libc::mallinfo2() }.uordblks as f64;
    let before = heap();
    let t = Instant::now();
    let loaded = Config::load(config, &RuntimeOverrides::default()).unwrap_or_else(|e| die(&e.to_string()));
    let load_s = t.elapsed().as_secs_f64();
    let per_route = (heap() - before) / n as f64;
    let (parsed, reused) = loaded.tls.loads();
    println!(
        "in process: Config::load {load_s:.2} s ({parsed} parsed, {reused} reused); live heap {per_route:.0} B per terminating route"
    );
    // Medians: a single sample on a shared machine is mostly the scheduler's.
    let certs = dir.join("certs");
    let alpn = ["h2".to_string(), "http/1.1".to_string()];
    let build = |i: usize| {
        let (cert, key) = (certs.join(format!("alt-{i}.pem")), certs.join(format!("alt-{i}.key")));
        let t = Instant::now();
        let (m, how) =
            loaded.tls.material(&cert, &key, None, TlsVersion::TLS12, &alpn).unwrap_or_else(|_| die("alt cert"));
        (t.elapsed().as_secs_f64() * 1e6, how, m)
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for i in 0..21 {
        for ext in ["pem", "key"] {
            std::fs::copy(certs.join(format!("alt.{ext}")), certs.join(format!("alt-{i}.{ext}")))
                .unwrap_or_else(|e| die(&e.to_string()));
        }
    }
    let cold: Vec<f64> = (0..21).map(|i| build(i).0).collect();
    std::thread::sleep(Duration::from_millis(250)); // the copies settle (tls::store::SETTLE)
                                                    // A configuration holds the route (else the cache lets the certificate go).
    let (_, _, held) = build(0);
    let warm: Vec<f64> = (0..101)
        .map(|_| {
            let (us, how, _) = build(0);
            assert_eq!(how, sni_dispatch::tls::store::Loaded::Reused);
            us
        })
        .collect();
    drop(held);
    println!(
        "one route's certificate (what a one-route change builds), medians: {:.0} µs read and parsed, {:.0} µs unchanged (cache)",
        median(cold),
        median(warm)
    );
}

/// HAProxy with the same certificates: one `bind ... ssl crt-list`, one line per certificate
/// (the key beside each chain as `rI.pem.key`, HAProxy's convention, by symbolic link).
fn haproxy(dir: &Path, n: usize, client: &Arc<rustls::ClientConfig>, origin: SocketAddr) {
    let hdir = dir.join("haproxy");
    std::fs::create_dir_all(&hdir).unwrap_or_else(|e| die(&e.to_string()));
    let mut list = String::with_capacity(n * 64);
    for i in 0..n {
        let link = dir.join("certs").join(format!("r{i}.pem.key"));
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("r{i}.key"), &link).unwrap_or_else(|e| die(&e.to_string()));
        }
        list += &format!("{} [alpn h2,http/1.1] {}\n", dir.join("certs").join(format!("r{i}.pem")).display(), name(i));
    }
    std::fs::write(hdir.join("crt-list.txt"), list).unwrap_or_else(|e| die(&e.to_string()));
    let port = free_port();
    let cfg = hdir.join("haproxy.cfg");
    let text = format!(
        "global\n    nbthread 1\ndefaults\n    mode tcp\n    timeout connect 3s\n    timeout client 30s\n    timeout server 30s\n\
         frontend fe\n    bind 127.0.0.1:{port} ssl crt-list {}\n    default_backend be\nbackend be\n    server o {origin}\n",
        hdir.join("crt-list.txt").display()
    );
    std::fs::write(&cfg, text).unwrap_or_else(|e| die(&e.to_string()));
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M cpu_s=%U+%S", "haproxy", "-c", "-f"])
        .arg(&cfg)
        .output()
        .unwrap_or_else(|e| die(&format!("haproxy: {e}")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.starts_with("maxrss_kib=")).unwrap_or("");
    let verdict = if out.status.success() { "ok" } else { "FAILED" };
    println!("haproxy -c: {:.2} s ({verdict}), {line}", t.elapsed().as_secs_f64());
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let t = Instant::now();
    let mut child = Command::new("taskset")
        .args(["-c", "1", "haproxy", "-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| die(&format!("haproxy: {e}")));
    match wait_served(client, addr, n - 1, None, Duration::from_secs(600)) {
        Some((at, _)) => println!(
            "haproxy start: last route served after {:.2} s ({:.2} s CPU); RSS {:.0} MiB: {:.2} KiB per certificate",
            (at - t).as_secs_f64(),
            cpu_s(child.id()),
            rss_kib(child.id()) as f64 / 1024.0,
            rss_kib(child.id()) as f64 / n as f64
        ),
        None => println!("haproxy never served the last route"),
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What follows the message in a log line (its fields).
fn tail(line: &str) -> &str {
    line.split_once("reloaded").map_or(line, |(_, t)| t.trim())
}
