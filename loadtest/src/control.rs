//! The control-plane suite (`[control_plane]`, e.g. `loadtest/suites/control-plane.toml`): a
//! configuration of `routes × names_per_route` names (a million by default), and what changing
//! it costs, beside HAProxy holding the same names in a map:
//!
//! - `check`: wall time and peak RSS (HAProxy: `haproxy -c`);
//! - start to the first routed connection, and RSS while serving;
//! - a steady open-loop stream of `rate` connections per second (hello in, answer out), its
//!   p50/p99 before and during each full reload (a route added to the big file, then SIGHUP;
//!   HAProxy: the map file edited, then a master-worker reload), the time from the signal to the
//!   new route serving, and the peak RSS during the reload; and during a window of the same
//!   probing (a connection every 2 ms until a name serves) with nothing reloaded, which is the
//!   load tool's own share of the reload windows' latency (`p99_ratio_probing_only`). The load
//!   tool's threads (stream, probes, back ends, RSS sampler) all run on the `load` CPUs;
//! - single route changes under the same stream: `PUT /routes/NAME` on the admin socket until
//!   the new name is served (HAProxy: `add map` and `set map` on its stats socket);
//! - memory over `memory_reloads` full reloads with `long_lived` connections held open.
//!
//! Every loop is bounded in count and time; all traffic stays on 127.0.0.0/8.

use crate::net;
use crate::procstat;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[control_plane]` of a suite.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    #[serde(default = "routes")]
    pub routes: usize,
    #[serde(default = "names_per_route")]
    pub names_per_route: usize,
    /// Connections per second of the steady stream.
    #[serde(default = "rate")]
    pub rate: u32,
    /// Seconds of stream measured before the reloads (the baseline).
    #[serde(default = "baseline")]
    pub baseline_s: f64,
    /// Full reloads under the stream (each adds a route to the big file).
    #[serde(default = "reloads")]
    pub reloads: usize,
    /// Single route changes through the API (sni-dispatch) or the runtime API (HAProxy).
    #[serde(default = "changes")]
    pub single_changes: usize,
    /// Full reloads with `long_lived` connections open, for the memory curve.
    #[serde(default = "memory_reloads")]
    pub memory_reloads: usize,
    #[serde(default = "long_lived")]
    pub long_lived: usize,
    /// Give up on a reload or a change that is not serving after this.
    #[serde(default = "give_up")]
    pub give_up_s: f64,
}
fn routes() -> usize {
    250_000
}
fn names_per_route() -> usize {
    4
}
fn rate() -> u32 {
    500
}
fn baseline() -> f64 {
    10.0
}
fn reloads() -> usize {
    3
}
fn changes() -> usize {
    20
}
fn memory_reloads() -> usize {
    100
}
fn long_lived() -> usize {
    200
}
fn give_up() -> f64 {
    60.0
}

fn name(route: usize, k: usize) -> String {
    format!("n{k}.c{route}.example.com")
}

/// A back end: answers `ok\n` to the first bytes of each connection, then holds it until the
/// client closes (long-lived connections stay open).
fn backend(stop: Arc<AtomicBool>) -> std::io::Result<SocketAddrV4> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = match l.local_addr()? {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    l.set_nonblocking(true)?;
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(600)));
                        let mut buf = [0u8; 4096];
                        if matches!(s.read(&mut buf), Ok(n) if n > 0) {
                            let _ = s.write_all(b"ok\n");
                        }
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    Ok(addr)
}

/// One client connection: hello for `sni`, the back end's `ok`. Its latency, or why not.
fn probe(dst: SocketAddrV4, src: u32, hello: &[u8]) -> Result<Duration, String> {
    let t = Instant::now();
    let mut s = net::connect(dst, src, Duration::from_secs(5)).map_err(|e| net::io_kind(&e).to_owned())?;
    s.write_all(hello).map_err(|e| net::io_kind(&e).to_owned())?;
    let mut got = [0u8; 3];
    s.read_exact(&mut got).map_err(|_| "dropped".to_owned())?;
    if &got != b"ok\n" {
        return Err("bad answer".into());
    }
    Ok(t.elapsed())
}

fn hello_for(sni: &str) -> Vec<u8> {
    crate::hello::generate(Some(sni))
}

/// Waits until `sni` is served through `dst`; how long that took.
fn until_served(dst: SocketAddrV4, sni: &str, limit: Duration) -> Option<Duration> {
    let hello = hello_for(sni);
    let t = Instant::now();
    let mut i = 0;
    while t.elapsed() < limit {
        if probe(dst, 31 - (i % 4), &hello).is_ok() {
            return Some(t.elapsed());
        }
        i += 1;
        // Fine enough to time a change of a millisecond or two (one probe is a connection).
        std::thread::sleep(Duration::from_micros(250));
    }
    None
}

/// The steady stream: `rate` connections per second (open loop: each latency counts from its
/// intended start), names drawn over the whole table. Samples are (intended start since the
/// stream began, latency or failure).
/// (intended start in seconds since the stream began, latency in seconds or `None` if it failed).
type Sample = (f64, Option<f64>);

struct Stream {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    started: Instant,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(dst: SocketAddrV4, rate: u32, routes: usize, npr: usize, load_cpus: &[usize]) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        // A few hellos, reused (generating one costs a rustls client): names spread over the table.
        let hellos: Arc<Vec<Vec<u8>>> =
            Arc::new((0..64).map(|i| hello_for(&name((i * 7919) % routes, i % npr))).collect());
        let workers = 16usize;
        let interval = 1.0 / rate as f64;
        let mut threads = Vec::new();
        for w in 0..workers {
            let (stop, samples, hellos) = (Arc::clone(&stop), Arc::clone(&samples), Arc::clone(&hellos));
            let cpus = load_cpus.to_vec();
            threads.push(std::thread::spawn(move || {
                net::pin(&cpus, w);
                let mut k = w as u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = k as f64 * interval;
                    let now = started.elapsed().as_secs_f64();
                    if due > now {
                        std::thread::sleep(Duration::from_secs_f64(due - now));
                    }
                    let hello = &hellos[(k % hellos.len() as u64) as usize];
                    let r = probe(dst, k as u32, hello).ok();
                    // Latency from the intended start: a stall is charged to every connection due in it.
                    let lat = r.map(|_| started.elapsed().as_secs_f64() - due);
                    if let Ok(mut s) = samples.lock() {
                        s.push((due, lat));
                    }
                    k += workers as u64;
                }
            }));
        }
        Stream { stop, samples, started, threads }
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let s = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        s
    }
}

/// p50, p99, max (ms) and failures of the samples whose intended start is in the windows.
fn window(samples: &[Sample], windows: &[(f64, f64)]) -> serde_json::Value {
    let mut lat: Vec<f64> = Vec::new();
    let mut failed = 0;
    for &(t, l) in samples {
        if windows.iter().any(|&(a, b)| t >= a && t < b) {
            match l {
                Some(l) => lat.push(l * 1e3),
                None => failed += 1,
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() - 1) as f64 * p).round() as usize] };
    json!({ "count": lat.len(), "failed": failed, "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": lat.last().copied().unwrap_or(f64::NAN) })
}

fn rss_kib(pid: u32) -> u64 {
    rss_of(&procstat::tree(pid))
}

/// The RSS of these processes, KiB.
fn rss_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Samples the RSS of `pid`'s tree every 10 ms until `stop`; the peak. The tree is found again
/// every 100 ms only (finding it reads every process's stat: done every 10 ms, that was the
/// load tool's own load on the machine during a reload).
fn rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        let mut tree = procstat::tree(pid);
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if i % 10 == 9 {
                tree = procstat::tree(pid);
            }
            peak = peak.max(rss_of(&tree));
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

/// Pins the calling thread to `cpus` (all of them; threads it starts inherit the set): the load
/// tool's own threads (back ends, probes, the RSS sampler) stay off the target's CPUs, as the
/// stream's do.
fn pin_to(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it for ids below
    // CPU_SETSIZE (checked); sched_setaffinity(0) reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A window of the same probing a reload's is (until a name serves, every 2 ms), for a name
/// that never serves, with nothing changing: the stream's latency there is what the load tool's
/// own probing costs it.
fn probing_only(stream: &Stream, dst: SocketAddrV4, seconds: f64) -> (f64, f64) {
    let a = stream.now();
    let _ = until_served(dst, "never-served.example.com", Duration::from_secs_f64(seconds));
    (a, stream.now() + 0.25)
}

/// Runs `cmd` to its end: (wall seconds, peak RSS KiB, success), from wait4's rusage.
fn timed(cmd: &mut Command) -> Result<(f64, u64, bool), String> {
    let t = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| e.to_string())?;
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: rusage is plain data written by wait4 for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok((t.elapsed().as_secs_f64(), ru.ru_maxrss as u64, libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0))
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process we started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// One HTTP exchange on a unix socket: (status, body).
fn http_unix(sock: &Path, req: &str) -> Result<(u16, String), String> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// One command on HAProxy's stats socket: its answer.
fn haproxy_cmd(sock: &Path, cmd: &str) -> Result<String, String> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    s.write_all(format!("{cmd}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Ok(out)
}

/// Full reloads of a target under the stream.
struct Reloads {
    pid: u32,
    dst: SocketAddrV4,
    steady_rss: u64,
    give_up: Duration,
    /// Pause after each reload.
    settle: Duration,
}

impl Reloads {
    /// `n` times: `rewrite(i)` changes the files and names a route only the new ones have, `sig`
    /// goes to the target, and the time until that route serves is taken, with the RSS peak.
    /// The stream's windows of each reload, the seconds to serving, the largest peak ÷ steady RSS.
    fn run(
        &self,
        stream: &Stream,
        n: usize,
        sig: i32,
        mut rewrite: impl FnMut(usize) -> String,
    ) -> (Vec<(f64, f64)>, Vec<f64>, f64) {
        let (mut windows, mut to_serving, mut peak_ratio) = (Vec::new(), Vec::new(), 0f64);
        for i in 0..n {
            let probe = rewrite(i);
            let stop = Arc::new(AtomicBool::new(false));
            let sampler = rss_sampler(self.pid, Arc::clone(&stop));
            let a = stream.now();
            signal(self.pid, sig);
            let served = until_served(self.dst, &probe, self.give_up);
            let b = stream.now();
            stop.store(true, Ordering::Relaxed);
            let peak = sampler.join().unwrap_or(0);
            peak_ratio = peak_ratio.max(peak as f64 / self.steady_rss.max(1) as f64);
            to_serving.push(served.map_or(f64::NAN, |d| d.as_secs_f64()));
            windows.push((a, b + 0.25));
            std::thread::sleep(self.settle);
        }
        (windows, to_serving, peak_ratio)
    }
}

/// The stream's latency before, during the reloads and during the single changes.
fn stream_json(
    cp: &ControlPlane,
    samples: &[Sample],
    baseline: (f64, f64),
    probing: (f64, f64),
    reloads: &[(f64, f64)],
    changes: &[(f64, f64)],
) -> serde_json::Value {
    let base = window(samples, &[baseline]);
    let during = window(samples, reloads);
    let probed = window(samples, &[probing]);
    let p99 = |v: &serde_json::Value| v["p99_ms"].as_f64().unwrap_or(f64::NAN);
    json!({
        "rate": cp.rate,
        "p99_ratio_during_reloads": p99(&during) / p99(&base),
        // The same probing as during a reload, nothing reloaded: the load tool's own share.
        "p99_ratio_probing_only": p99(&probed) / p99(&base),
        "baseline": base,
        "during_probing_only": probed,
        "during_reloads": during,
        "during_single_changes": window(samples, changes),
    })
}

/// What the full reloads took: seconds to serving, the RSS peak over the steady RSS.
fn reload_json(to_serving: &[f64], peak_ratio: f64, steady_rss: u64) -> serde_json::Value {
    json!({
        "seconds_to_serving": to_serving,
        "median_seconds_to_serving": median(&mut to_serving.to_vec()),
        "peak_rss_ratio": peak_ratio,
        "steady_rss_mib": steady_rss as f64 / 1024.0,
    })
}

/// The phases of each API change as the dispatcher logged them ("route change applied" lines:
/// `parse_ms=… table_ms=…`): median and max of each.
fn server_phases(log: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = serde_json::Map::new();
    for key in ["parse_ms", "table_ms", "pools_ms", "build_ms", "swap_ms", "serving_ms", "total_ms"] {
        let mut v: Vec<f64> = text
            .lines()
            .filter(|l| l.contains("route change applied"))
            .filter_map(|l| {
                let at = l.find(&format!(" {key}="))? + key.len() + 2;
                l[at..].split([' ', ',']).next()?.parse().ok()
            })
            .collect();
        let max = v.iter().copied().fold(f64::NAN, f64::max);
        out.insert(key.into(), json!({ "median": median(&mut v), "max": max, "count": v.len() }));
    }
    serde_json::Value::Object(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn write_dispatcher_config(dir: &Path, cp: &ControlPlane, port: u16, backend: SocketAddrV4, extra: usize) -> PathBuf {
    let path = dir.join("edge.toml");
    let mut s = String::with_capacity(cp.routes * 200);
    s += "include = [\"api.d/*.toml\"]\n\n[runtime]\nworkers = 1\n\n";
    s += &format!("[admin]\nsocket = \"{}\"\napi_dir = \"api.d\"\n\n", dir.join("admin.sock").display());
    s += &format!("[[listener]]\naddress = \"127.0.0.1:{port}\"\n\n");
    for r in 0..cp.routes + extra {
        let names: Vec<String> = (0..cp.names_per_route).map(|k| format!("\"{}\"", name(r, k))).collect();
        s += &format!(
            "[[route]]\nname = \"c{r}\"\nsni = [{}]\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbackends = [\"{backend}\"]\n\n",
            names.join(", ")
        );
    }
    let _ = std::fs::create_dir_all(dir.join("api.d"));
    std::fs::write(&path, s).expect("write the config");
    path
}

/// The sni-dispatch half.
fn dispatcher(
    bin: &Path,
    dir: &Path,
    cp: &ControlPlane,
    cpus: &Cpu,
    backend: SocketAddrV4,
) -> Result<serde_json::Value, String> {
    let port = net::free_port(&[std::net::Ipv4Addr::LOCALHOST]).map_err(|e| e.to_string())?;
    let dst = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
    let config = write_dispatcher_config(dir, cp, port, backend, 0);
    let size = std::fs::metadata(&config).map(|m| m.len()).unwrap_or(0);
    let mut out = json!({ "config_bytes": size, "names": cp.routes * cp.names_per_route });

    let (wall, rss, ok) =
        timed(Command::new("taskset").args(["-c", &cpus.target]).arg(bin).arg("check").arg("--config").arg(&config))?;
    out["check"] = json!({ "seconds": wall, "peak_rss_mib": rss as f64 / 1024.0, "ok": ok });

    let t = Instant::now();
    let child = Command::new("taskset")
        .args(["-c", &cpus.target])
        .arg(bin)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--cpus", &cpus.target])
        .env("SNI_DISPATCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("dispatcher.log")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| e.to_string())?;
    let p = Proc(child);
    let pid = p.0.id();
    let started = until_served(dst, &name(cp.routes / 2, 1), Duration::from_secs_f64(cp.give_up_s))
        .ok_or("sni-dispatch did not serve in time")?;
    let _ = t;
    std::thread::sleep(Duration::from_secs(2));
    out["start"] =
        json!({ "seconds_to_first_routed": started.as_secs_f64(), "rss_mib_serving": rss_kib(pid) as f64 / 1024.0 });

    let sock = dir.join("admin.sock");
    let stream = Stream::start(dst, cp.rate, cp.routes, cp.names_per_route, &cpus.load);
    std::thread::sleep(Duration::from_secs_f64(cp.baseline_s));
    let baseline = (1.0, stream.now());
    let steady_rss = rss_kib(pid);
    let probing = probing_only(&stream, dst, 1.0);
    std::thread::sleep(Duration::from_secs(1));
    let r = Reloads {
        pid,
        dst,
        steady_rss,
        give_up: Duration::from_secs_f64(cp.give_up_s),
        settle: Duration::from_secs(2),
    };
    let (reload_windows, to_serving, peak_ratio) = r.run(&stream, cp.reloads, libc::SIGHUP, |i| {
        write_dispatcher_config(dir, cp, port, backend, i + 1);
        name(cp.routes + i, 0)
    });
    // Single route changes through the API, under the same stream.
    let mut change_ms = Vec::new();
    let mut answer_ms = Vec::new();
    let mut change_windows = Vec::new();
    for i in 0..cp.single_changes {
        let n = format!("api{i}.example.com");
        let body =
            format!("sni = [\"{n}\"]\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbackends = [\"{backend}\"]\n");
        let req = format!("PUT /routes/api-{i} HTTP/1.1\r\nHost: x\r\nContent-Type: application/toml\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let a = stream.now();
        let t = Instant::now();
        // Serving is measured from the submission, by probing while the request is answered (the
        // answer waits for the route's file to be synced; the route serves before that).
        let sock2 = sock.clone();
        let put = std::thread::spawn(move || {
            let r = http_unix(&sock2, &req);
            (r, t.elapsed())
        });
        let served =
            until_served(dst, &n, Duration::from_secs(10)).map_or(f64::NAN, |_| t.elapsed().as_secs_f64() * 1e3);
        let (answer, answered) = put.join().map_err(|_| "PUT thread panicked".to_owned())?;
        let (status, answer) = answer?;
        if status != 200 {
            return Err(format!("PUT /routes/api-{i}: {status} {answer}"));
        }
        change_windows.push((a, stream.now() + 0.05));
        answer_ms.push(answered.as_secs_f64() * 1e3);
        change_ms.push(served);
        std::thread::sleep(Duration::from_millis(200));
    }
    let samples = stream.stop();
    out["stream"] = stream_json(cp, &samples, baseline, probing, &reload_windows, &change_windows);
    out["full_reload"] = reload_json(&to_serving, peak_ratio, steady_rss);
    out["single_change"] = json!({
        "put_answer_ms_median": median(&mut answer_ms.clone()),
        "submitted_to_serving_ms_median": median(&mut change_ms.clone()),
        "submitted_to_serving_ms_max": change_ms.iter().copied().fold(f64::NAN, f64::max),
        "count": change_ms.len(),
        "server_phases_ms": server_phases(&dir.join("dispatcher.log")),
    });

    // Memory over many full reloads with long-lived connections open.
    let held: Vec<TcpStream> = (0..cp.long_lived)
        .filter_map(|i| {
            let mut s = net::connect(dst, i as u32, Duration::from_secs(5)).ok()?;
            s.write_all(&hello_for(&name(i, 0))).ok()?;
            let mut ok = [0u8; 3];
            s.read_exact(&mut ok).ok()?;
            Some(s)
        })
        .collect();
    let mut curve = Vec::new();
    let first_rss = rss_kib(pid);
    for i in 0..cp.memory_reloads {
        write_dispatcher_config(dir, cp, port, backend, cp.reloads + 1 + (i % 2));
        let (status, body) = http_unix(&sock, "POST /reload HTTP/1.1\r\nHost: x\r\n\r\n")?;
        if status != 200 {
            return Err(format!("POST /reload: {status} {body}"));
        }
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(600));
            curve.push(rss_kib(pid) as f64 / 1024.0);
        }
    }
    let open = held.len();
    drop(held);
    out["memory_over_reloads"] = json!({
        "reloads": cp.memory_reloads,
        "long_lived_open": open,
        "rss_mib_before": first_rss as f64 / 1024.0,
        "rss_mib_every_10": curve,
    });
    signal(pid, libc::SIGTERM);
    Ok(out)
}

fn write_haproxy(dir: &Path, cp: &ControlPlane, port: u16, backend: SocketAddrV4, extra: usize) -> PathBuf {
    let map = dir.join("sni.map");
    let mut m = String::with_capacity(cp.routes * cp.names_per_route * 32);
    for r in 0..cp.routes + extra {
        for k in 0..cp.names_per_route {
            m += &format!("{} be{}\n", name(r, k), r % 4);
        }
    }
    std::fs::write(&map, m).expect("write the map");
    let cfg = dir.join("haproxy.cfg");
    let mut c = format!(
        "global\n  maxconn 8000\n  nbthread 1\n  stats socket {} mode 600 level admin\n\
         defaults\n  mode tcp\n  timeout connect 3s\n  timeout client 60s\n  timeout server 60s\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  tcp-request inspect-delay 5s\n  tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
         \x20 use_backend %[req_ssl_sni,lower,map({})]\n",
        dir.join("haproxy.sock").display(),
        map.display()
    );
    for b in 0..4 {
        c += &format!("backend be{b}\n  server s 127.0.0.1:{}\n", backend.port());
    }
    std::fs::write(&cfg, c).expect("write the haproxy config");
    cfg
}

/// The HAProxy half: the same names in a map (to 4 back ends: HAProxy needs a backend section
/// per destination, and a quarter of a million of them is not a configuration anyone runs).
fn haproxy(dir: &Path, cp: &ControlPlane, cpus: &Cpu, backend: SocketAddrV4) -> Result<serde_json::Value, String> {
    let dir = dir.join("haproxy");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let port = net::free_port(&[std::net::Ipv4Addr::LOCALHOST]).map_err(|e| e.to_string())?;
    let dst = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
    let cfg = write_haproxy(&dir, cp, port, backend, 0);
    let mut out = json!({ "map_bytes": std::fs::metadata(dir.join("sni.map")).map(|m| m.len()).unwrap_or(0) });
    let (wall, rss, ok) =
        timed(Command::new("taskset").args(["-c", &cpus.target]).args(["haproxy", "-c", "-q", "-f"]).arg(&cfg))?;
    out["check"] = json!({ "seconds": wall, "peak_rss_mib": rss as f64 / 1024.0, "ok": ok });
    let child = Command::new("taskset")
        .args(["-c", &cpus.target])
        .args(["haproxy", "-W", "-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| e.to_string())?;
    let p = Proc(child);
    let pid = p.0.id();
    let started = until_served(dst, &name(cp.routes / 2, 1), Duration::from_secs_f64(cp.give_up_s))
        .ok_or("haproxy did not serve in time")?;
    std::thread::sleep(Duration::from_secs(2));
    out["start"] =
        json!({ "seconds_to_first_routed": started.as_secs_f64(), "rss_mib_serving": rss_kib(pid) as f64 / 1024.0 });
    let sock = dir.join("haproxy.sock");
    let stream = Stream::start(dst, cp.rate, cp.routes, cp.names_per_route, &cpus.load);
    std::thread::sleep(Duration::from_secs_f64(cp.baseline_s));
    let baseline = (1.0, stream.now());
    let steady_rss = rss_kib(pid);
    let probing = probing_only(&stream, dst, 1.0);
    std::thread::sleep(Duration::from_secs(1));
    let map = dir.join("sni.map");
    // The old worker finishes its connections and leaves before the next reload.
    let r = Reloads {
        pid,
        dst,
        steady_rss,
        give_up: Duration::from_secs_f64(cp.give_up_s),
        settle: Duration::from_secs(3),
    };
    let (windows, to_serving, peak_ratio) = r.run(&stream, cp.reloads, libc::SIGUSR2, |i| {
        write_haproxy(&dir, cp, port, backend, i + 1);
        name(cp.routes + i, 0)
    });
    let mut add_ms = Vec::new();
    let mut set_ms = Vec::new();
    let mut change_windows = Vec::new();
    for i in 0..cp.single_changes {
        let n = format!("api{i}.example.com");
        let a = stream.now();
        let t = Instant::now();
        haproxy_cmd(&sock, &format!("add map {} {n} be{}", map.display(), i % 4))?;
        let served = until_served(dst, &n, Duration::from_secs(10));
        add_ms.push(served.map_or(f64::NAN, |d| (t.elapsed().max(d)).as_secs_f64() * 1e3));
        let t = Instant::now();
        haproxy_cmd(&sock, &format!("set map {} {n} be{}", map.display(), (i + 1) % 4))?;
        set_ms.push(t.elapsed().as_secs_f64() * 1e3);
        change_windows.push((a, stream.now() + 0.05));
        std::thread::sleep(Duration::from_millis(200));
    }
    let samples = stream.stop();
    out["stream"] = stream_json(cp, &samples, baseline, probing, &windows, &change_windows);
    out["full_reload"] = reload_json(&to_serving, peak_ratio, steady_rss);
    out["single_change"] = json!({
        "add_map_to_serving_ms_median": median(&mut add_ms.clone()),
        "set_map_answer_ms_median": median(&mut set_ms.clone()),
        "count": add_ms.len(),
    });
    signal(pid, libc::SIGTERM);
    Ok(out)
}

/// Where things run: the target on `target`, the stream's client threads on `load`.
pub struct Cpu {
    pub target: String,
    pub load: Vec<usize>,
}

/// Runs the control-plane suite; the report as JSON (also printed).
pub fn run(
    cp: &ControlPlane,
    bin: &Path,
    compare: &[String],
    cpus: Cpu,
    json_out: Option<&Path>,
) -> Result<i32, String> {
    let tmp = tempfile::Builder::new().prefix("sni-loadtest-cp-").tempdir().map_err(|e| e.to_string())?;
    // Everything the load tool runs itself stays on the load CPUs (the targets are started on
    // theirs with taskset).
    pin_to(&cpus.load);
    let stop = Arc::new(AtomicBool::new(false));
    let backend = backend(Arc::clone(&stop)).map_err(|e| e.to_string())?;
    let mut report = json!({ "routes": cp.routes, "names_per_route": cp.names_per_route });
    eprintln!("control-plane: sni-dispatch at {} names ...", cp.routes * cp.names_per_route);
    report["sni-dispatch"] = dispatcher(bin, tmp.path(), cp, &cpus, backend)?;
    if compare.iter().any(|c| c.starts_with("haproxy")) {
        eprintln!("control-plane: HAProxy with the same names in a map ...");
        report["haproxy"] = haproxy(tmp.path(), cp, &cpus, backend)?;
        let r = |path: &[&str]| -> f64 {
            let get = |who: &str| path.iter().fold(&report[who], |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
            get("sni-dispatch") / get("haproxy")
        };
        report["ratios_sni_dispatch_over_haproxy"] = json!({
            "check_seconds": r(&["check", "seconds"]),
            "check_peak_rss": r(&["check", "peak_rss_mib"]),
            "start_seconds": r(&["start", "seconds_to_first_routed"]),
            "rss_serving": r(&["start", "rss_mib_serving"]),
            "full_reload_to_serving": r(&["full_reload", "median_seconds_to_serving"]),
            "p99_during_reloads": r(&["stream", "during_reloads", "p99_ms"]),
            "reload_peak_rss_ratio": r(&["full_reload", "peak_rss_ratio"]),
        });
    }
    stop.store(true, Ordering::Relaxed);
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    println!("{text}");
    if let Some(p) = json_out {
        std::fs::write(p, &text).map_err(|e| e.to_string())?;
    }
    Ok(0)
}
