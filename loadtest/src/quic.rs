//! `sni-loadtest quic`: QUIC through sni-dispatch and, side by side, nginx's stream UDP proxy
//! (`listen … udp reuseport; proxy_pass …`, which forwards without looking), with quinn clients and
//! a quinn back end.
//!
//! Workloads, each against each target in turn, the proxy pinned to `--proxy-cpu`, the clients
//! and the back end to `--load-cpu`:
//! - `handshakes`: `--handshakes` connections, `--concurrency` at a time, each a full QUIC
//!   handshake (SNI `a.example`), one bidirectional stream echoing 16 bytes, and a close; rate,
//!   latency p50/p99 and the proxy's CPU per connection and per datagram;
//! - `bulk`: `--bulk-streams` connections downloading `--bulk-mib` MiB in all; the proxy's CPU
//!   per datagram (datagrams counted by the clients' quinn statistics: every one went through the
//!   proxy) and per GiB;
//! - `idle`: `--idle-flows` connections held open (keep-alives); the proxy's RSS per flow;
//! - `flood` (sni-dispatch only): `--flood` first Initials of a two-Initial ClientHello, each from
//!   a new source port, so each leaves a pending flow; the dispatcher's CPU per packet and RSS.
//!
//! The exit code is 1 when any connection of any workload failed.
//!
//! The back end's protocol: a stream starts with 8 bytes, a big-endian count; 0 means "echo the
//! rest", anything else "send that many bytes back".

use crate::procstat;
use clap::Args;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ALPN: &[u8] = b"sni-lt";
const SNI: &str = "a.example";

#[derive(Args, Debug, Clone)]
pub struct QuicOptions {
    /// The sni-dispatch binary (a release build).
    #[arg(long)]
    pub dispatcher: PathBuf,
    /// Also measure these peers on the same traffic: nginx.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// Connections of the handshake workload.
    #[arg(long, default_value_t = 2000)]
    pub handshakes: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// MiB downloaded in all by the bulk workload (0: skip it).
    #[arg(long, default_value_t = 256)]
    pub bulk_mib: u64,
    /// Connections of the bulk workload.
    #[arg(long, default_value_t = 4)]
    pub bulk_streams: usize,
    /// Connections held open by the idle workload (0: skip it).
    #[arg(long, default_value_t = 1000)]
    pub idle_flows: usize,
    /// First Initials of the flood workload (0: skip it).
    #[arg(long, default_value_t = 50_000)]
    pub flood: usize,
    /// Rounds, alternating targets; medians are reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// The CPU the proxies run on.
    #[arg(long, default_value_t = 1)]
    pub proxy_cpu: usize,
    /// The CPU the clients and the back end run on.
    #[arg(long, default_value_t = 0)]
    pub load_cpu: usize,
    /// Extra arguments for `sni-dispatch run` (e.g. `--no-quic-gro`).
    #[arg(long, allow_hyphen_values = true)]
    pub dispatcher_args: Vec<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One workload's figures on one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub target: String,
    pub workload: String,
    pub count: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub datagrams: u64,
    pub proxy_cpu_s: f64,
    pub cpu_us_per_item: f64,
    pub cpu_ns_per_datagram: f64,
    pub rss_kib_per_item: f64,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config(leaf: &sni_dispatch::pki::Leaf) -> quinn::ServerConfig {
    let (chain, key) = (vec![leaf.cert_der()], leaf.key_der());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).expect("QUIC server crypto");
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(60).try_into().expect("idle timeout")));
    t.max_concurrent_bidi_streams(100u32.into());
    cfg.transport_config(Arc::new(t));
    cfg
}

fn client_config(cert: rustls::pki_types::CertificateDer<'static>) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let _ = roots.add(cert);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).expect("QUIC client crypto");
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(20).try_into().expect("idle timeout")));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    cfg.transport_config(Arc::new(t));
    cfg
}

/// The back end: serves streams until the runtime ends.
async fn serve(ep: quinn::Endpoint) {
    while let Some(incoming) = ep.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let mut head = [0u8; 8];
                    if recv.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let n = u64::from_be_bytes(head);
                    if n == 0 {
                        if let Ok(rest) = recv.read_to_end(1 << 20).await {
                            let _ = send.write_all(&rest).await;
                        }
                    } else {
                        let chunk = vec![0x5a; 64 * 1024];
                        let mut left = n;
                        while left > 0 {
                            let k = left.min(chunk.len() as u64) as usize;
                            if send.write_all(&chunk[..k]).await.is_err() {
                                return;
                            }
                            left -= k as u64;
                        }
                    }
                    let _ = send.finish();
                    let _ = send.stopped().await;
                });
            }
        });
    }
}

fn pin(cpu: usize) {
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
}

/// A proxy under test.
struct Target {
    name: String,
    child: Child,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for Target {
    fn drop(&mut self) {
        crate::targets::stop_child(&mut self.child, Duration::from_secs(30));
    }
}

fn free_udp_port() -> u16 {
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let p = s.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn start_target(name: &str, o: &QuicOptions, backend: SocketAddr) -> Result<Target, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_udp_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).map_err(|e| e.to_string())?;
    let (mut cmd, admin) = match name {
        "sni-dispatch" => {
            let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()));
            let cfg = dir.path().join("sni-dispatch.toml");
            let toml = format!(
                "[runtime]\nworkers = 1\ncpus = \"{cpu}\"\nquic_idle_timeout_ms = 30000\n[admin]\nlisten = \"{admin}\"\n\
                 [[listener]]\naddress = \"{addr}\"\nquic = true\n\
                 [[route]]\nname = \"a\"\nsni = [\"{SNI}\"]\naction = \"passthrough\"\nbackends = [\"{backend}\"]\n",
                cpu = o.proxy_cpu
            );
            std::fs::write(&cfg, toml).map_err(|e| e.to_string())?;
            let mut c = Command::new("taskset");
            c.arg("-c").arg(o.proxy_cpu.to_string()).arg(&o.dispatcher).arg("run").arg("--config").arg(&cfg);
            c.args(&o.dispatcher_args);
            (c, Some(admin))
        }
        "nginx" => {
            let cfg = dir.path().join("nginx.conf");
            let conf = format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\nworker_rlimit_nofile 20000;\npid {pid};\nevents {{ worker_connections 20000; }}\n\
                 stream {{\n  server {{\n    listen {addr} udp reuseport;\n    proxy_pass {backend};\n    proxy_timeout 30s;\n  }}\n}}\n",
                pid = dir.path().join("nginx.pid").display()
            );
            std::fs::write(&cfg, conf).map_err(|e| e.to_string())?;
            let mut c = Command::new("taskset");
            c.arg("-c").arg(o.proxy_cpu.to_string()).arg("nginx").arg("-p").arg(dir.path()).arg("-c").arg(&cfg);
            c.arg("-e").arg(dir.path().join("nginx-error.log")).arg("-g").arg("daemon off;");
            (c, None)
        }
        other => return Err(format!("unknown QUIC target {other}; known: sni-dispatch, nginx")),
    };
    cmd.stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
    let child = cmd.spawn().map_err(|e| format!("{name}: cannot start: {e}"))?;
    // Up when its UDP port is taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind(addr).is_ok() {
        if Instant::now() > deadline {
            return Err(format!("{name} did not bind {addr}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    Ok(Target { name: name.to_owned(), child, addr, admin, _dir: dir })
}

fn quantile_ms(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Full handshakes with a 16-byte echo each.
async fn handshakes(o: &QuicOptions, to: SocketAddr, cc: quinn::ClientConfig) -> (u64, u64, Vec<f64>, u64) {
    let per = o.handshakes.div_ceil(o.concurrency.max(1));
    let mut tasks = Vec::new();
    for _ in 0..o.concurrency.max(1) {
        let cc = cc.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err, mut lat, mut dgrams) = (0u64, 0u64, Vec::new(), 0u64);
            for _ in 0..per {
                // A new socket (port) per connection, as a browser does.
                let Ok(mut ep) = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))) else {
                    err += 1;
                    continue;
                };
                ep.set_default_client_config(cc.clone());
                let t = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(10), async {
                    let conn = ep.connect(to, SNI).map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
                    let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
                    let mut msg = vec![0u8; 8];
                    msg.extend_from_slice(b"0123456789abcdef");
                    s.write_all(&msg).await.map_err(|e| e.to_string())?;
                    let _ = s.finish();
                    let back = r.read_to_end(64).await.map_err(|e| e.to_string())?;
                    conn.close(0u32.into(), b"");
                    let st = conn.stats();
                    Ok::<_, String>((back == b"0123456789abcdef", st.udp_tx.datagrams + st.udp_rx.datagrams))
                })
                .await;
                match r {
                    Ok(Ok((true, d))) => {
                        ok += 1;
                        dgrams += d;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => err += 1,
                }
                // Not waiting for the close to drain: the next connection starts at once.
                drop(ep);
            }
            (ok, err, lat, dgrams)
        }));
    }
    let (mut ok, mut err, mut lat, mut dgrams) = (0, 0, Vec::new(), 0);
    for t in tasks {
        if let Ok((a, b, l, d)) = t.await {
            ok += a;
            err += b;
            lat.extend(l);
            dgrams += d;
        }
    }
    (ok, err, lat, dgrams)
}

/// Downloads, one connection per stream; returns (bytes, errors, datagrams).
async fn bulk(o: &QuicOptions, to: SocketAddr, cc: quinn::ClientConfig) -> (u64, u64, u64) {
    let each = o.bulk_mib * (1 << 20) / o.bulk_streams.max(1) as u64;
    let mut tasks = Vec::new();
    for _ in 0..o.bulk_streams.max(1) {
        let cc = cc.clone();
        tasks.push(tokio::spawn(async move {
            let mut ep =
                quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).map_err(|e| e.to_string())?;
            ep.set_default_client_config(cc);
            let conn = ep.connect(to, SNI).map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
            let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
            s.write_all(&each.to_be_bytes()).await.map_err(|e| e.to_string())?;
            let _ = s.finish();
            let mut got = 0u64;
            while let Some(c) = r.read_chunk(1 << 20, true).await.map_err(|e| e.to_string())? {
                got += c.bytes.len() as u64;
            }
            conn.close(0u32.into(), b"");
            let st = conn.stats();
            Ok::<_, String>((got, st.udp_tx.datagrams + st.udp_rx.datagrams))
        }));
    }
    let (mut bytes, mut err, mut dgrams) = (0, 0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok((b, d))) => {
                bytes += b;
                dgrams += d;
            }
            _ => err += 1,
        }
    }
    (bytes, err, dgrams)
}

/// Opens `n` connections and keeps them; returns them (dropping them closes them).
async fn idle(n: usize, to: SocketAddr, cc: quinn::ClientConfig) -> Vec<(quinn::Endpoint, quinn::Connection)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let Ok(mut ep) = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))) else { continue };
        ep.set_default_client_config(cc.clone());
        let Ok(c) = ep.connect(to, SNI) else { continue };
        if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(10), c).await {
            out.push((ep, conn));
        }
    }
    out
}

/// First halves of a two-Initial hello, each from a new source port.
fn flood(n: usize, to: SocketAddr) -> u64 {
    use sni_dispatch::quic::initial::{client_initial, crypto_frame};
    let hello: Vec<u8> = include_bytes!("../../src/hello/testdata/chromium-pq.bin")[5..].to_vec();
    let frame = crypto_frame(0, &hello[..1000]);
    let mut sent = 0;
    for i in 0..n {
        let dcid = (0x7100_0000_0000_0000u64 | i as u64).to_be_bytes();
        let pkt = client_initial(&dcid, 0, &frame);
        if let Ok(s) = UdpSocket::bind("127.0.0.1:0") {
            if s.send_to(&pkt, to).is_ok() {
                sent += 1;
            }
        }
        if i % 2000 == 1999 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    sent
}

fn median(v: &mut [f64]) -> f64 {
    quantile_ms(v, 0.5)
}

/// Runs every workload on every target, `runs` times alternating; prints a table, writes JSON.
pub fn run(o: &QuicOptions) -> Result<i32, String> {
    pin(o.load_cpu);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start({
            let cpu = o.load_cpu;
            move || pin(cpu)
        })
        .build()
        .map_err(|e| e.to_string())?;
    let leaf = sni_dispatch::pki::Leaf::self_signed(&[SNI]).map_err(|e| e.to_string())?;
    let server = server_config(&leaf);
    let backend_ep = rt
        .block_on(async { quinn::Endpoint::server(server, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))) })
        .map_err(|e| format!("back end: {e}"))?;
    let backend = backend_ep.local_addr().map_err(|e| e.to_string())?;
    let cc = client_config(leaf.cert_der());
    rt.spawn(serve(backend_ep.clone()));
    let mut targets = vec!["sni-dispatch".to_owned()];
    targets.extend(o.compare.iter().cloned());
    let mut all: Vec<Figures> = Vec::new();
    for round in 0..o.runs.max(1) {
        for name in &targets {
            let t = start_target(name, o, backend)?;
            eprintln!("round {}: {} on {}", round + 1, t.name, t.addr);
            let pid = t.child.id();
            // handshakes
            let cpu0 = procstat::cpu_seconds(pid);
            let t0 = Instant::now();
            let (ok, err, mut lat, dgrams) = rt.block_on(handshakes(o, t.addr, cc.clone()));
            let secs = t0.elapsed().as_secs_f64();
            let cpu = procstat::cpu_seconds(pid) - cpu0;
            all.push(Figures {
                target: name.clone(),
                workload: "handshakes".into(),
                count: ok,
                errors: err,
                seconds: secs,
                per_second: ok as f64 / secs,
                p50_ms: quantile_ms(&mut lat, 0.5),
                p99_ms: quantile_ms(&mut lat, 0.99),
                datagrams: dgrams,
                proxy_cpu_s: cpu,
                cpu_us_per_item: cpu * 1e6 / ok.max(1) as f64,
                cpu_ns_per_datagram: cpu * 1e9 / dgrams.max(1) as f64,
                rss_kib_per_item: 0.0,
            });
            if o.bulk_mib > 0 {
                let cpu0 = procstat::cpu_seconds(pid);
                let t0 = Instant::now();
                let (bytes, err, dgrams) = rt.block_on(bulk(o, t.addr, cc.clone()));
                let secs = t0.elapsed().as_secs_f64();
                let cpu = procstat::cpu_seconds(pid) - cpu0;
                all.push(Figures {
                    target: name.clone(),
                    workload: "bulk".into(),
                    count: bytes,
                    errors: err,
                    seconds: secs,
                    per_second: bytes as f64 / secs / (1 << 20) as f64,
                    datagrams: dgrams,
                    proxy_cpu_s: cpu,
                    cpu_us_per_item: cpu * 1e6 / (bytes as f64 / (1u64 << 30) as f64).max(1e-9) / 1e6,
                    cpu_ns_per_datagram: cpu * 1e9 / dgrams.max(1) as f64,
                    ..Figures::default()
                });
            }
            if o.idle_flows > 0 {
                let rss0 = procstat::rss_kib(pid);
                let held = rt.block_on(idle(o.idle_flows, t.addr, cc.clone()));
                std::thread::sleep(Duration::from_millis(500));
                let rss = procstat::rss_kib(pid);
                all.push(Figures {
                    target: name.clone(),
                    workload: "idle".into(),
                    count: held.len() as u64,
                    errors: (o.idle_flows - held.len()) as u64,
                    rss_kib_per_item: rss.saturating_sub(rss0) as f64 / held.len().max(1) as f64,
                    ..Figures::default()
                });
                rt.block_on(async {
                    for (ep, c) in &held {
                        c.close(0u32.into(), b"");
                        ep.close(0u32.into(), b"");
                    }
                });
                drop(held);
            }
            if o.flood > 0 && name == "sni-dispatch" {
                let rss0 = procstat::rss_kib(pid);
                let cpu0 = procstat::cpu_seconds(pid);
                let t0 = Instant::now();
                let sent = flood(o.flood, t.addr);
                std::thread::sleep(Duration::from_millis(300));
                let secs = t0.elapsed().as_secs_f64();
                let cpu = procstat::cpu_seconds(pid) - cpu0;
                let rss = procstat::rss_kib(pid);
                all.push(Figures {
                    target: name.clone(),
                    workload: "flood".into(),
                    count: sent,
                    seconds: secs,
                    per_second: sent as f64 / secs,
                    proxy_cpu_s: cpu,
                    cpu_us_per_item: cpu * 1e6 / sent.max(1) as f64,
                    rss_kib_per_item: rss.saturating_sub(rss0) as f64,
                    ..Figures::default()
                });
                if let Some(admin) = t.admin {
                    eprintln!("  {}", stats_line(admin));
                }
            }
            drop(t);
        }
    }
    report(&all, &targets);
    if let Some(p) = &o.json {
        std::fs::write(p, serde_json::to_string_pretty(&all).unwrap_or_default()).map_err(|e| e.to_string())?;
    }
    // Exit 1 when anything failed: a handshake, a download, an idle connection.
    Ok(i32::from(all.iter().any(|f| f.errors > 0)))
}

/// The QUIC counters of the dispatcher's `/stats`, in one line.
fn stats_line(admin: SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2)) else {
        return "no /stats".into();
    };
    let _ = s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let c = &v["merged"]["counters"];
    format!(
        "pending now {}, flows dropped {}, datagrams dropped {}",
        c["quic_flows_pending"], c["quic_flows_dropped"], c["quic_datagrams_dropped"]
    )
}

fn report(all: &[Figures], targets: &[String]) {
    println!("| workload | target | count | errors | rate | p50 | p99 | datagrams | proxy CPU | per item | ns/datagram | RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for w in ["handshakes", "bulk", "idle", "flood"] {
        for t in targets {
            let mut rows: Vec<&Figures> = all.iter().filter(|f| f.workload == w && &f.target == t).collect();
            if rows.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Figures) -> f64, rows: &mut Vec<&Figures>| {
                let mut v: Vec<f64> = rows.iter().map(|r| f(r)).collect();
                median(&mut v)
            };
            let count = med(&|f| f.count as f64, &mut rows);
            let errors = med(&|f| f.errors as f64, &mut rows);
            let rate = med(&|f| f.per_second, &mut rows);
            let p50 = med(&|f| f.p50_ms, &mut rows);
            let p99 = med(&|f| f.p99_ms, &mut rows);
            let dg = med(&|f| f.datagrams as f64, &mut rows);
            let cpu = med(&|f| f.proxy_cpu_s, &mut rows);
            let per = med(&|f| f.cpu_us_per_item, &mut rows);
            let nsd = med(&|f| f.cpu_ns_per_datagram, &mut rows);
            let rss = med(&|f| f.rss_kib_per_item, &mut rows);
            let (rate_s, per_s, rss_s) = match w {
                "handshakes" => (format!("{rate:.0}/s"), format!("{per:.1} µs/conn"), String::new()),
                "bulk" => (format!("{rate:.0} MiB/s"), format!("{per:.3} s/GiB"), String::new()),
                "idle" => (String::new(), String::new(), format!("{rss:.1} KiB/flow")),
                _ => (format!("{rate:.0}/s"), format!("{per:.2} µs/packet"), format!("+{rss:.0} KiB")),
            };
            println!(
                "| {w} | {t} | {count:.0} | {errors:.0} | {rate_s} | {p50:.2} ms | {p99:.2} ms | {dg:.0} | {cpu:.3} s | {per_s} | {nsd:.0} | {rss_s} |"
            );
        }
    }
}
