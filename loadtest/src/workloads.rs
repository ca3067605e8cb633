//! The client side of the workloads: hello replay, full TLS, bulk, and slowloris in the background.

use crate::backends::{answer_label, bulk_cmd, stream_crc, write_stream, ANSWER_LEN};
use crate::co::{corrected_latency, record_with_expected_interval, Schedule};
use crate::dist::IndexDist;
use crate::hello::Hello;
use crate::net::{connect, connect_from, io_kind, pin};
use crate::suite::{DistKind, Kind, Model, SlowMode, Slowloris, Workload};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustls::pki_types::{IpAddr as PkiIp, ServerName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type Err = &'static str;

/// A workload made ready to run: names, hello template, TLS client config, bulk checksums.
pub struct Prepared {
    pub w: Workload,
    pub model: Arc<Model>,
    names: Names,
    hello: Option<Hello>,
    hello_records: Vec<u8>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    dips: Vec<Ipv4Addr>,
    bulk: Option<BulkPlan>,
}

enum Names {
    /// keep the template's own SNI
    Template,
    Fixed(Vec<String>),
    /// a distribution over the concatenated ranges of the table
    Table(IndexDist, Vec<(u64, u64)>),
}

fn map_ranges(ranges: &[(u64, u64)], mut i: u64) -> u64 {
    for &(first, len) in ranges {
        if i < len {
            return first + i;
        }
        i -= len;
    }
    ranges.last().map(|&(f, l)| f + l - 1).unwrap_or(0)
}

struct BulkPlan {
    push: u64,
    pull: u64,
    seed: u32,
    pattern: Arc<Vec<u8>>,
    push_crc: u32,
    pull_crc: u32,
}

/// Resolve a file named by a suite: as given, then against the directories above the suite.
pub fn resolve(path: &str, suite_dir: &std::path::Path) -> std::path::PathBuf {
    let p = std::path::PathBuf::from(path);
    if p.is_absolute() || p.exists() {
        return p;
    }
    for d in suite_dir.ancestors() {
        let c = d.join(path);
        if c.exists() {
            return c;
        }
    }
    p
}

impl Prepared {
    pub fn new(
        w: &Workload,
        model: Arc<Model>,
        ca: Option<rustls::pki_types::CertificateDer<'static>>,
        suite_dir: &std::path::Path,
    ) -> Result<Prepared, String> {
        let names = match &w.sni {
            None => Names::Template,
            Some(d) => match d.dist {
                DistKind::Fixed => {
                    if d.names.is_empty() {
                        return Err(format!("workload {}: fixed distribution needs names", w.name));
                    }
                    Names::Fixed(d.names.clone())
                }
                DistKind::Uniform | DistKind::Zipf => {
                    let mut ids = Vec::new();
                    for r in &d.routes {
                        ids.push(
                            model
                                .route_names
                                .iter()
                                .position(|x| x == r)
                                .ok_or_else(|| format!("workload {}: unknown route {r}", w.name))?,
                        );
                    }
                    let ranges = model.table.ranges(&ids);
                    let avail: u64 = ranges.iter().map(|r| r.1).sum();
                    let n = d.count.unwrap_or(avail).min(avail);
                    if n == 0 {
                        return Err(format!("workload {}: the suite has no names to draw", w.name));
                    }
                    let dist = if d.dist == DistKind::Uniform {
                        IndexDist::uniform(n)
                    } else {
                        IndexDist::zipf(n, d.exponent)
                    };
                    Names::Table(dist, ranges)
                }
            },
        };
        let hello = match w.kind {
            Kind::HelloReplay | Kind::Bulk | Kind::Idle => {
                let raw = match w.hello.as_deref() {
                    None | Some("rustls") => crate::hello::generate(Some("www.example.com")),
                    Some(path) => {
                        let f = resolve(path, suite_dir);
                        std::fs::read(&f).map_err(|e| format!("workload {}: hello {}: {e}", w.name, f.display()))?
                    }
                };
                Some(Hello::parse(&raw).map_err(|e| format!("workload {}: hello: {e}", w.name))?)
            }
            Kind::FullTls => None,
        };
        let hello_records = hello.as_ref().map(|h| h.to_records(w.record_size.unwrap_or(16384))).unwrap_or_default();
        // bulk uses TLS when the route it reaches terminates
        let tls = matches!(w.kind, Kind::FullTls | Kind::Bulk | Kind::Idle).then(|| client_config(w, ca.clone()));
        let mut dips = w.dedicated_ips.clone();
        if dips.is_empty() {
            dips = model.dip.keys().copied().collect();
            dips.sort();
        }
        if w.dedicated_share > 0.0 && dips.is_empty() {
            return Err(format!("workload {}: dedicated_share but no dedicated IPs", w.name));
        }
        let bulk = (w.kind == Kind::Bulk).then(|| {
            let seed = 0x5eed;
            let pattern = Arc::new(crate::backends::pattern(seed));
            let push = (w.push_mib * 1048576.0) as u64;
            let pull = (w.pull_mib * 1048576.0) as u64;
            BulkPlan {
                push,
                pull,
                seed,
                push_crc: stream_crc(&pattern, push),
                pull_crc: stream_crc(&pattern, pull),
                pattern,
            }
        });
        Ok(Prepared { w: w.clone(), model, names, hello, hello_records, tls, dips, bulk })
    }

    /// Connect to `dst` from the workload's `source`, else from source address number `n`.
    pub fn dial(&self, dst: SocketAddrV4, n: u32) -> io::Result<TcpStream> {
        let to = Duration::from_millis(self.w.io_timeout_ms);
        match self.w.source {
            Some(ip) => connect_from(dst, ip, to),
            None => connect(dst, n, to),
        }
    }

    /// Where the next connection goes: the IP dialed and the SNI (None: no SNI).
    pub fn pick(&self, rng: &mut SmallRng) -> (Ipv4Addr, Option<String>) {
        let w = &self.w;
        let ip = if w.dedicated_share > 0.0 && rng.gen_bool(w.dedicated_share) {
            self.dips[rng.gen_range(0..self.dips.len())]
        } else {
            w.address.unwrap_or(Ipv4Addr::LOCALHOST)
        };
        if w.no_sni_share > 0.0 && rng.gen_bool(w.no_sni_share) {
            return (ip, None);
        }
        let sni = match &self.names {
            Names::Template => self.hello.as_ref().and_then(|h| h.sni().ok().flatten()),
            Names::Fixed(v) => Some(v[rng.gen_range(0..v.len())].clone()),
            Names::Table(d, ranges) => Some(self.model.table.get(map_ranges(ranges, d.sample(rng))).0),
        };
        (ip, sni)
    }

    pub fn hello_bytes(&self, sni: Option<&str>) -> Vec<u8> {
        let h = self.hello.as_ref().unwrap();
        if matches!(self.names, Names::Template) && sni.is_some() {
            return self.hello_records.clone();
        }
        match h.with_sni(sni) {
            Ok(x) => x.to_records(self.w.record_size.unwrap_or(16384)),
            Err(_) => self.hello_records.clone(),
        }
    }
}

fn client_config(w: &Workload, ca: Option<rustls::pki_types::CertificateDer<'static>>) -> Arc<rustls::ClientConfig> {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    let mut provider = default_provider();
    provider.kx_groups = if w.pq {
        vec![kx_group::X25519MLKEM768, kx_group::X25519, kx_group::SECP256R1]
    } else {
        vec![kx_group::X25519, kx_group::SECP256R1]
    };
    let b =
        rustls::ClientConfig::builder_with_provider(Arc::new(provider)).with_safe_default_protocol_versions().unwrap();
    let mut cfg = match (w.verify, ca) {
        (true, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            b.with_root_certificates(roots).with_no_client_auth()
        }
        _ => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::certs::NoVerify::new()))
            .with_no_client_auth(),
    };
    cfg.resumption = if w.resumption {
        rustls::client::Resumption::in_memory_sessions(65536)
    } else {
        rustls::client::Resumption::disabled()
    };
    cfg.alpn_protocols = w.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// What one run of a workload against one target produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlowStats {
    pub opened: u64,
    pub closed_by_target: u64,
    pub hello_completed: u64,
    pub answered: u64,
    pub connect_errors: u64,
    pub open_at_end: u64,
    pub mean_life_s: f64,
}

pub struct Outcome {
    pub ok: u64,
    pub expected_drops: u64,
    pub errors: BTreeMap<String, u64>,
    /// latency from the intended start (open loop) or the actual start (closed loop), µs
    pub latency: Histogram<u64>,
    /// latency from the actual start, µs
    pub service: Histogram<u64>,
    pub bytes: u64,
    pub resumed: u64,
    pub elapsed_s: f64,
    pub slow: Option<SlowStats>,
    /// open loop: connections due before the deadline that no worker could start in time
    pub not_started: u64,
    /// `refusal_expected`: connections the target refused
    pub refused: u64,
}

impl Outcome {
    /// Nothing counted yet: a thread's start and the sum over threads.
    pub fn empty() -> Self {
        Self {
            ok: 0,
            expected_drops: 0,
            errors: BTreeMap::new(),
            latency: new_hist(),
            service: new_hist(),
            bytes: 0,
            resumed: 0,
            elapsed_s: 0.0,
            slow: None,
            not_started: 0,
            refused: 0,
        }
    }

    /// Add a thread's tallies (everything but the elapsed time and the slowloris figures).
    pub fn add(&mut self, o: &Outcome) {
        self.ok += o.ok;
        self.expected_drops += o.expected_drops;
        self.bytes += o.bytes;
        self.resumed += o.resumed;
        self.not_started += o.not_started;
        self.refused += o.refused;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.latency.add(&o.latency).unwrap();
        self.service.add(&o.service).unwrap();
    }
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

struct Done {
    bytes: u64,
    resumed: bool,
    dropped: bool,
}

/// Live counters for the progress bar.
#[derive(Default)]
pub struct Live {
    pub ok: AtomicU64,
    pub err: AtomicU64,
}

/// Run `p` against a target listening on `port` of each IP. Bounded by `duration` and max_count.
pub fn run(p: &Arc<Prepared>, port: u16, cpus: &[usize], duration: Duration, seed: u64, live: &Arc<Live>) -> Outcome {
    let w = &p.w;
    let stop = Arc::new(AtomicBool::new(false));
    let slow = w.slowloris.clone().map(|s| {
        let stop = stop.clone();
        let hello = p.hello_records.clone();
        let hello = if hello.is_empty() { crate::hello::generate(Some("www.example.com")) } else { hello };
        let dst = SocketAddrV4::new(w.address.unwrap_or(Ipv4Addr::LOCALHOST), port);
        let cpus = cpus.to_vec();
        std::thread::spawn(move || {
            pin(&cpus, usize::MAX / 2);
            slowloris(&s, dst, &hello, &stop)
        })
    });
    if slow.is_some() {
        // let the slow connections pile up before measuring
        std::thread::sleep(Duration::from_millis(500));
    }
    let start = Instant::now();
    let deadline = start + duration;
    let schedule = w.rate.map(|r| Arc::new(Schedule::new(r)));
    let issued = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..w.concurrency {
        let p = p.clone();
        let cpus = cpus.to_vec();
        let schedule = schedule.clone();
        let issued = issued.clone();
        let live = live.clone();
        handles.push(
            std::thread::Builder::new()
                .stack_size(512 * 1024)
                .spawn(move || {
                    pin(&cpus, t);
                    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(t as u64));
                    let mut o = Outcome::empty();
                    let max = p.w.max_count;
                    let interval_us = p.w.expected_interval_us.unwrap_or(0);
                    let mut n = t as u32;
                    loop {
                        let intended = match &schedule {
                            Some(s) => {
                                let (i, at_ns) = s.take();
                                let at = start + Duration::from_nanos(at_ns);
                                if i >= max || at >= deadline {
                                    break;
                                }
                                let now = Instant::now();
                                if now >= deadline {
                                    // overload (of the target or of the load generator): due but never sent
                                    o.not_started += 1;
                                    continue;
                                }
                                if at > now {
                                    std::thread::sleep(at - now);
                                }
                                at
                            }
                            None => {
                                if issued.fetch_add(1, Ordering::Relaxed) >= max {
                                    break;
                                }
                                let now = Instant::now();
                                if now >= deadline {
                                    break;
                                }
                                now
                            }
                        };
                        let t0 = Instant::now();
                        n = n.wrapping_add(p.w.concurrency as u32);
                        let (ip, sni) = p.pick(&mut rng);
                        let expect = p.model.expect(ip, sni.as_deref());
                        let dst = SocketAddrV4::new(ip, port);
                        let r = match p.w.kind {
                            Kind::HelloReplay => hello_once(&p, dst, n, sni.as_deref(), expect),
                            Kind::FullTls => tls_once(&p, dst, n, sni.as_deref(), expect, &mut rng),
                            Kind::Bulk => bulk_once(&p, dst, n, sni.as_deref(), expect, &cpus),
                            Kind::Idle => Err("idle_in_load_loop"),
                        };
                        let end = Instant::now();
                        match r {
                            Ok(d) => {
                                live.ok.fetch_add(1, Ordering::Relaxed);
                                if d.dropped {
                                    o.expected_drops += 1;
                                    continue;
                                }
                                o.ok += 1;
                                o.bytes += d.bytes;
                                o.resumed += d.resumed as u64;
                                let lat = (end - intended).as_micros() as u64;
                                let svc = (end - t0).as_micros() as u64;
                                if schedule.is_some() {
                                    o.latency.saturating_record(corrected_latency(0, lat));
                                } else if interval_us > 0 {
                                    record_with_expected_interval(&mut o.latency, lat, interval_us);
                                } else {
                                    o.latency.saturating_record(lat);
                                }
                                o.service.saturating_record(svc);
                            }
                            Err(e) if p.w.refusal_expected && is_refusal(e) => {
                                live.ok.fetch_add(1, Ordering::Relaxed);
                                o.refused += 1;
                            }
                            Err(e) => {
                                live.err.fetch_add(1, Ordering::Relaxed);
                                *o.errors.entry(e.to_string()).or_default() += 1;
                            }
                        }
                    }
                    o
                })
                .expect("spawn client thread"),
        );
    }
    let mut total = Outcome::empty();
    for h in handles {
        total.add(&h.join().expect("client thread panicked"));
    }
    total.elapsed_s = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = slow {
        total.slow = h.join().ok();
    }
    total
}

/// A connection the target turned away: refused, reset or unanswered at connect (a target that
/// drops a shunned client's SYNs in the kernel), closed or reset before answering.
pub fn is_refusal(e: Err) -> bool {
    matches!(
        e,
        "connect_refused"
            | "connect_timeout"
            | "connect_reset"
            | "reset"
            | "aborted"
            | "closed_no_answer"
            | "eof_early"
            | "handshake_reset"
            | "handshake_eof"
    )
}

pub fn io_err(e: io::Error) -> Err {
    if let Some(re) = e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>()) {
        return match re {
            rustls::Error::InvalidCertificate(_) => "tls_cert",
            rustls::Error::AlertReceived(_) => "tls_alert",
            _ => "tls_handshake",
        };
    }
    io_kind(&e)
}

pub fn connect_err(e: io::Error) -> Err {
    match io_kind(&e) {
        "timeout" => "connect_timeout",
        "refused" => "connect_refused",
        "reset" => "connect_reset",
        k => k,
    }
}

/// Read until `buf` is full or EOF; returns the bytes read.
pub fn read_full(s: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One plaintext fatal alert record and nothing else (`15 03 0x 00 02 02 desc`).
fn is_fatal_alert(b: &[u8]) -> bool {
    matches!(b, [0x15, 0x03, _, 0x00, 0x02, 0x02, _])
}

fn hello_once(
    p: &Prepared,
    dst: SocketAddrV4,
    src: u32,
    sni: Option<&str>,
    expect: Option<usize>,
) -> Result<Done, Err> {
    let bytes = p.hello_bytes(sni);
    let mut s = p.dial(dst, src).map_err(connect_err)?;
    match p.w.split_at {
        Some(k) if k > 0 && k < bytes.len() => {
            s.write_all(&bytes[..k]).map_err(|e| io_kind(&e))?;
            std::thread::sleep(Duration::from_millis(p.w.split_pause_ms));
            s.write_all(&bytes[k..]).map_err(|e| io_kind(&e))?;
        }
        _ => s.write_all(&bytes).map_err(|e| io_kind(&e))?,
    }
    let mut a = [0u8; ANSWER_LEN];
    let got = read_full(&mut s, &mut a);
    let Some(route) = expect else {
        // no route: the target must close without answering, or with nothing but a fatal
        // alert (sni-dispatch sends unrecognized_name, as a TLS server would)
        return match got {
            Ok(0) => Ok(Done { bytes: 0, resumed: false, dropped: true }),
            Ok(n) if is_fatal_alert(&a[..n]) => Ok(Done { bytes: 0, resumed: false, dropped: true }),
            Err(e) if io_kind(&e) == "reset" => Ok(Done { bytes: 0, resumed: false, dropped: true }),
            Err(e) => Err(io_kind(&e)),
            Ok(_) => Err("not_dropped"),
        };
    };
    let n = got.map_err(|e| io_kind(&e))?;
    if n < ANSWER_LEN {
        return Err(if n == 0 { "closed_no_answer" } else { "short_answer" });
    }
    match answer_label(&a) {
        Some(l) if l == p.model.route_names[route] => {}
        Some(_) => return Err("wrong_route"),
        None => return Err("bad_answer"),
    }
    let mut extra = [0u8; 64];
    match s.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err("extra_bytes"),
        Err(e) => {
            return Err(match io_kind(&e) {
                "timeout" => "no_eof",
                k => k,
            })
        }
    }
    Ok(Done { bytes: (bytes.len() + ANSWER_LEN) as u64, resumed: false, dropped: false })
}

/// A rustls client for `sni` (no SNI: the IP dialed) over a connection from source `src`,
/// before its handshake.
pub fn tls_client(
    p: &Prepared,
    dst: SocketAddrV4,
    src: u32,
    sni: Option<&str>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, Err> {
    let cfg = p.tls.clone().ok_or("tls_config")?;
    let name: ServerName<'static> = match sni {
        Some(n) => ServerName::try_from(n.to_string()).map_err(|_| "bad_name")?,
        None => ServerName::IpAddress(PkiIp::from(*dst.ip())),
    };
    let conn = rustls::ClientConnection::new(cfg, name).map_err(|_| "tls_config")?;
    let sock = p.dial(dst, src).map_err(connect_err)?;
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// Complete the client's handshake; socket failures are named `handshake_*`.
pub fn handshake(tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> Result<(), Err> {
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(|e| match io_err(e) {
            "timeout" => "handshake_timeout",
            "reset" => "handshake_reset",
            "eof_early" => "handshake_eof",
            k => k,
        })?;
    }
    Ok(())
}

fn tls_once(
    p: &Prepared,
    dst: SocketAddrV4,
    src: u32,
    sni: Option<&str>,
    expect: Option<usize>,
    rng: &mut SmallRng,
) -> Result<Done, Err> {
    let mut tls = tls_client(p, dst, src, sni)?;
    let r = (|| -> Result<(bool, u64), Err> {
        handshake(&mut tls)?;
        let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let mut req = vec![0u8; p.w.request_bytes.max(1)];
        rng.fill(&mut req[..]);
        tls.write_all(&req).map_err(io_err)?;
        tls.flush().map_err(io_err)?;
        let mut resp = vec![0u8; req.len()];
        let n = read_full(&mut tls, &mut resp).map_err(io_err)?;
        if n < resp.len() {
            return Err(if n == 0 { "closed_no_answer" } else { "short_answer" });
        }
        if resp != req {
            return Err("bad_echo");
        }
        Ok((resumed, 2 * req.len() as u64))
    })();
    // close politely either way
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    let _ = tls.sock.shutdown(Shutdown::Write);
    let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 512];
    while let Ok(k) = tls.sock.read(&mut sink) {
        if k == 0 {
            break;
        }
    }
    match (r, expect) {
        (Ok((resumed, bytes)), Some(_)) => Ok(Done { bytes, resumed, dropped: false }),
        (Ok(_), None) => Err("not_dropped"),
        (Err(_), None) => Ok(Done { bytes: 0, resumed: false, dropped: true }),
        (Err(e), Some(_)) => Err(e),
    }
}

fn bulk_once(
    p: &Prepared,
    dst: SocketAddrV4,
    src: u32,
    sni: Option<&str>,
    expect: Option<usize>,
    cpus: &[usize],
) -> Result<Done, Err> {
    if expect.is_some_and(|r| p.model.route_terminate[r]) {
        return bulk_tls_once(p, dst, src, sni, cpus);
    }
    let plan = p.bulk.as_ref().unwrap();
    let hello = p.hello_bytes(sni);
    let mut s = p.dial(dst, src).map_err(connect_err)?;
    let mut w = s.try_clone().map_err(|e| io_kind(&e))?;
    let (push, pull, seed, pat) = (plan.push, plan.pull, plan.seed, plan.pattern.clone());
    let mib_per_s = p.w.mib_per_s;
    let cpus = cpus.to_vec();
    let writer = std::thread::spawn(move || -> io::Result<()> {
        pin(&cpus, src as usize);
        let mut head = hello;
        head.extend_from_slice(&bulk_cmd(push, pull, seed));
        w.write_all(&head)?;
        write_stream(&mut Paced::new(w, mib_per_s), &pat, push)
    });
    let pace = Pace::new(mib_per_s);
    let mut h = crc32fast::Hasher::new();
    let mut left = plan.pull;
    let mut b = vec![0u8; 256 * 1024];
    let mut res: Result<(), Err> = Ok(());
    while left > 0 {
        let want = (b.len() as u64).min(left) as usize;
        match s.read(&mut b[..want]) {
            Ok(0) => {
                res = Err("eof_early");
                break;
            }
            Ok(n) => {
                h.update(&b[..n]);
                left -= n as u64;
                pace.wait(plan.pull - left);
            }
            Err(e) => {
                res = Err(io_kind(&e));
                break;
            }
        }
    }
    let wr = writer.join().map_err(|_| "writer_panic")?;
    res?;
    wr.map_err(|e| io_kind(&e))?;
    if h.finalize() != plan.pull_crc {
        return Err("checksum_pull");
    }
    let mut t = [0u8; 8];
    let n = read_full(&mut s, &mut t).map_err(|e| io_kind(&e))?;
    if n < 8 || &t[4..] != b"DONE" {
        return Err("no_trailer");
    }
    if u32::from_be_bytes(t[..4].try_into().unwrap()) != plan.push_crc {
        return Err("checksum_push");
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut x = [0u8; 16];
    match s.read(&mut x) {
        Ok(0) => {}
        Ok(_) => return Err("extra_bytes"),
        Err(e) => return Err(io_kind(&e)),
    }
    Ok(Done { bytes: plan.push + plan.pull, resumed: false, dropped: false })
}

/// Keeps a stream at `mib_per_s` at most, from its creation (0: unbounded).
#[derive(Debug, Clone, Copy)]
struct Pace {
    start: Instant,
    bytes_per_s: Option<f64>,
}

impl Pace {
    fn new(mib_per_s: f64) -> Pace {
        Pace { start: Instant::now(), bytes_per_s: (mib_per_s > 0.0).then_some(mib_per_s * 1048576.0) }
    }
    /// Sleep until `done` bytes are due.
    fn wait(&self, done: u64) {
        if let Some(r) = self.bytes_per_s {
            let due = self.start + Duration::from_secs_f64(done as f64 / r);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
}

/// A writer kept at a `Pace` (64 KiB writes at most, so that it stays smooth).
struct Paced<W> {
    w: W,
    pace: Pace,
    done: u64,
}

impl<W: Write> Paced<W> {
    fn new(w: W, mib_per_s: f64) -> Self {
        Paced { w, pace: Pace::new(mib_per_s), done: 0 }
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = if self.pace.bytes_per_s.is_some() {
            self.w.write(&b[..b.len().min(64 * 1024)])?
        } else {
            self.w.write(b)?
        };
        self.done += n as u64;
        self.pace.wait(self.done);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// The sending half of a TLS connection shared with a reading thread: plaintext is encrypted
/// under the connection's lock, the records are written under the socket's lock (held across
/// both, so records leave in order); the reader never blocks on the socket's lock.
struct TlsSender {
    conn: Arc<std::sync::Mutex<rustls::ClientConnection>>,
    sock: Arc<std::sync::Mutex<TcpStream>>,
    out: Vec<u8>,
}

impl Write for TlsSender {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut sock = self.sock.lock().unwrap();
        let n = {
            let mut c = self.conn.lock().unwrap();
            let n = c.writer().write(b)?;
            self.out.clear();
            while c.wants_write() {
                c.write_tls(&mut self.out)?;
            }
            n
        };
        sock.write_all(&self.out)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The pulled plaintext: the stream (CRC32), then the 8-byte trailer, then nothing.
struct PullSink {
    h: crc32fast::Hasher,
    left: u64,
    trailer: Vec<u8>,
    closing: bool,
    buf: Vec<u8>,
}

impl PullSink {
    fn accept(&mut self, d: &[u8]) -> Result<(), Err> {
        if self.closing {
            return Err("extra_bytes");
        }
        let first = self.left.min(d.len() as u64) as usize;
        self.h.update(&d[..first]);
        self.left -= first as u64;
        let rest = &d[first..];
        if self.trailer.len() + rest.len() > 8 {
            return Err("extra_bytes");
        }
        self.trailer.extend_from_slice(rest);
        Ok(())
    }
}

/// Feed socket bytes to rustls and the plaintext to `sink`; Ok(false) once the peer sent close_notify.
fn tls_feed(
    conn: &std::sync::Mutex<rustls::ClientConnection>,
    wsock: &std::sync::Mutex<TcpStream>,
    data: &[u8],
    sink: &mut PullSink,
) -> Result<bool, Err> {
    let mut rd = data;
    let mut open = true;
    let mut c = conn.lock().unwrap();
    let mut pb = std::mem::take(&mut sink.buf);
    pb.resize(64 * 1024, 0);
    let r = (|| -> Result<(), Err> {
        loop {
            if !rd.is_empty() {
                c.read_tls(&mut rd).map_err(io_err)?;
            }
            let st = c.process_new_packets().map_err(tls_kind)?;
            let mut avail = st.plaintext_bytes_to_read();
            while avail > 0 {
                let want = avail.min(pb.len());
                let k = c.reader().read(&mut pb[..want]).map_err(|e| io_kind(&e))?;
                if k == 0 {
                    break;
                }
                sink.accept(&pb[..k])?;
                avail -= k;
            }
            if st.peer_has_closed() {
                open = false;
            }
            if rd.is_empty() {
                return Ok(());
            }
        }
    })();
    sink.buf = pb;
    r?;
    // anything rustls wants to send in answer (a key update): only if the writer is idle
    if c.wants_write() {
        if let Ok(mut ws) = wsock.try_lock() {
            let mut out = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut out).map_err(|e| io_kind(&e))?;
            }
            drop(c);
            ws.write_all(&out).map_err(|e| io_kind(&e))?;
        }
    }
    Ok(open)
}

fn tls_kind(e: rustls::Error) -> Err {
    io_err(io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Bulk through a terminate route: a rustls client pushes and pulls plaintext at once (two
/// threads over one connection), the back end sees the bulk command and the streams in clear.
fn bulk_tls_once(p: &Prepared, dst: SocketAddrV4, src: u32, sni: Option<&str>, cpus: &[usize]) -> Result<Done, Err> {
    use std::sync::Mutex;
    let plan = p.bulk.as_ref().unwrap();
    let mut tls = tls_client(p, dst, src, sni)?;
    tls.conn.set_buffer_limit(Some(512 * 1024));
    handshake(&mut tls)?;
    let rustls::StreamOwned { conn, sock: mut s } = tls;
    let conn = Arc::new(Mutex::new(conn));
    let wsock = Arc::new(Mutex::new(s.try_clone().map_err(|e| io_kind(&e))?));
    let mut out = Vec::new();
    let mut tx = TlsSender { conn: conn.clone(), sock: wsock.clone(), out: Vec::with_capacity(640 * 1024) };
    let (push, pull, seed, pat) = (plan.push, plan.pull, plan.seed, plan.pattern.clone());
    let mib_per_s = p.w.mib_per_s;
    let cpus = cpus.to_vec();
    let writer = std::thread::spawn(move || -> io::Result<()> {
        pin(&cpus, src as usize);
        tx.write_all(&bulk_cmd(push, pull, seed))?;
        write_stream(&mut Paced::new(tx, mib_per_s), &pat, push)
    });
    let pace = Pace::new(mib_per_s);
    let mut read = 0u64;
    let mut sink = PullSink {
        h: crc32fast::Hasher::new(),
        left: plan.pull,
        trailer: Vec::with_capacity(8),
        closing: false,
        buf: Vec::new(),
    };
    let mut b = vec![0u8; 256 * 1024];
    let mut res: Result<(), Err> = Ok(());
    while sink.left > 0 || sink.trailer.len() < 8 {
        match s.read(&mut b) {
            Ok(0) => {
                res = Err("eof_early");
                break;
            }
            Ok(n) => match tls_feed(&conn, &wsock, &b[..n], &mut sink) {
                Ok(true) => {
                    read += n as u64;
                    pace.wait(read);
                }
                Ok(false) => {
                    if sink.left > 0 || sink.trailer.len() < 8 {
                        res = Err("eof_early");
                    }
                    break;
                }
                Err(e) => {
                    res = Err(e);
                    break;
                }
            },
            Err(e) => {
                res = Err(io_kind(&e));
                break;
            }
        }
    }
    if res.is_err() {
        // unblock the writer
        let _ = s.shutdown(Shutdown::Both);
    }
    let wr = writer.join().map_err(|_| "writer_panic")?;
    res?;
    wr.map_err(io_err)?;
    if sink.h.clone().finalize() != plan.pull_crc {
        return Err("checksum_pull");
    }
    if &sink.trailer[4..] != b"DONE" {
        return Err("no_trailer");
    }
    if u32::from_be_bytes(sink.trailer[..4].try_into().unwrap()) != plan.push_crc {
        return Err("checksum_push");
    }
    // close_notify, FIN, then the target's close: no more plaintext
    {
        let mut c = conn.lock().unwrap();
        c.send_close_notify();
        while c.wants_write() {
            c.write_tls(&mut out).map_err(|e| io_kind(&e))?;
        }
    }
    let _ = s.write_all(&out);
    let _ = s.shutdown(Shutdown::Write);
    sink.closing = true;
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => {
                if !tls_feed(&conn, &wsock, &b[..n], &mut sink)? {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(io_kind(&e)),
        }
    }
    Ok(Done { bytes: plan.push + plan.pull, resumed: false, dropped: false })
}

struct SlowConn {
    s: TcpStream,
    sent: usize,
    opened: Instant,
    next: Instant,
}

/// Keep `cfg.connections` slow connections open against `dst` until `stop`.
pub fn slowloris(cfg: &Slowloris, dst: SocketAddrV4, hello: &[u8], stop: &AtomicBool) -> SlowStats {
    let mut st = SlowStats::default();
    let mut life_sum = 0.0;
    let interval = Duration::from_millis(cfg.interval_ms.max(1));
    let mut src = 1000u32;
    let open = |src: &mut u32, st: &mut SlowStats| -> Option<SlowConn> {
        *src += 1;
        match connect(dst, *src, Duration::from_secs(2)) {
            Ok(mut s) => {
                st.opened += 1;
                let first = match cfg.mode {
                    SlowMode::Trickle => 1,
                    SlowMode::Stall => cfg.stall_after.min(hello.len().saturating_sub(1)),
                };
                let _ = s.write_all(&hello[..first]);
                let _ = s.set_nonblocking(true);
                Some(SlowConn { s, sent: first, opened: Instant::now(), next: Instant::now() + interval })
            }
            Err(_) => {
                st.connect_errors += 1;
                None
            }
        }
    };
    let mut conns: Vec<SlowConn> = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(c) = open(&mut src, &mut st) {
            conns.push(c);
        }
    }
    let tick = interval.min(Duration::from_millis(100));
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        let now = Instant::now();
        let mut i = 0;
        let mut reopen = 0;
        while i < conns.len() {
            let c = &mut conns[i];
            let closed = match c.s.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => {
                    st.answered += 1;
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            if !closed && cfg.mode == SlowMode::Trickle && now >= c.next && c.sent < hello.len() {
                match c.s.write(&hello[c.sent..c.sent + 1]) {
                    Ok(1) => {
                        c.sent += 1;
                        c.next += interval;
                        if c.sent == hello.len() {
                            st.hello_completed += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {}
                }
            }
            if closed {
                st.closed_by_target += 1;
                life_sum += c.opened.elapsed().as_secs_f64();
                conns.swap_remove(i);
                reopen += 1;
            } else {
                i += 1;
            }
        }
        if cfg.reconnect {
            for _ in 0..reopen {
                if let Some(c) = open(&mut src, &mut st) {
                    conns.push(c);
                }
            }
        }
    }
    st.open_at_end = conns.len() as u64;
    st.mean_life_s = if st.closed_by_target > 0 { life_sum / st.closed_by_target as f64 } else { 0.0 };
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::Suite;

    fn prepared(extra: &str) -> Prepared {
        let text = format!(
            "[[route]]\nname = \"site\"\naction = \"passthrough\"\nsni = [\"www.example.com\"]\nbackend = \"hello\"\n\
             [[workload]]\nname = \"w\"\nkind = \"hello_replay\"\n{extra}\n"
        );
        let suite: Suite = toml::from_str(&text).unwrap();
        suite.validate().unwrap();
        let model = Arc::new(Model::new(&suite));
        Prepared::new(&suite.workloads[0], model, None, std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn source_address_is_bound_before_connect() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = match l.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let _c = prepared("source = \"127.0.0.9\"").dial(dst, 7).unwrap();
        assert_eq!(l.accept().unwrap().1.ip(), std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)));
        // without `source`: the spread over 127.1.0.x
        let _c = prepared("").dial(dst, 7).unwrap();
        assert_eq!(l.accept().unwrap().1.ip(), std::net::IpAddr::V4(crate::net::source_addr(7)));
    }

    #[test]
    fn paced_streams() {
        // 10 MiB/s: 1 MiB is due after 100 ms
        let t = Instant::now();
        let mut w = Paced::new(Vec::new(), 10.0);
        w.write_all(&vec![7u8; 1 << 20]).unwrap();
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(95), "{e:?}");
        assert_eq!(w.w.len(), 1 << 20);
        // unbounded: no wait
        let t = Instant::now();
        Pace::new(0.0).wait(u64::MAX);
        let mut w = Paced::new(Vec::new(), 0.0);
        w.write_all(&vec![7u8; 1 << 20]).unwrap();
        assert!(t.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn refusals() {
        for e in ["connect_refused", "connect_timeout", "reset", "closed_no_answer", "eof_early"] {
            assert!(is_refusal(e), "{e}");
        }
        for e in ["wrong_route", "bad_answer", "timeout", "extra_bytes"] {
            assert!(!is_refusal(e), "{e}");
        }
    }
}
