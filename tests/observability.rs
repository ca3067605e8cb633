//! Observability end to end: counters move by exactly the connections sent for each outcome,
//! histograms count the stages each connection reached, `/metrics` parses with Prometheus' own
//! Python parser, `/stats` is JSON, the admin server answers malformed requests sanely, the
//! access log has one JSON line per sampled connection, and the binary prints its summary on
//! SIGUSR1 and at shutdown.
mod common;

use common::*;
use sni_dispatch::config::RuntimeOverrides;
use sni_dispatch::metrics::{DropReason, Hist, RelayKind};
use sni_dispatch::pki::Leaf;
use sni_dispatch::route::Match;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REPLY: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A route. Passthrough back ends here are scripted, not TLS servers: `min_tls = "1.0"` keeps
/// the ServerHello version check (tests/min_tls.rs) off their replies.
fn route(name: &str, extra: &str, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let min_tls = if extra.contains("passthrough") { "min_tls = \"1.0\"\n" } else { "" };
    format!("[[route]]\nname = \"{name}\"\nbackends = [{}]\n{min_tls}{extra}\n", list.join(", "))
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, head, body) = http_raw(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    assert!(head.contains("Connection: close"), "{head}");
    (status, body)
}

/// Debian's Python with `prometheus_client` (installed by apt as python3-prometheus-client).
fn prometheus_python() -> Option<&'static str> {
    let py = "/usr/bin/python3";
    let ok = Command::new(py)
        .args(["-c", "import prometheus_client.parser"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI: /usr/bin/python3 lacks prometheus_client (apt-get install python3-prometheus-client)"
    );
    eprintln!("SKIPPED the Prometheus parser check: /usr/bin/python3 lacks prometheus_client");
    None
}

/// Parses `text` with `prometheus_client`'s text parser; returns `{sample name + labels: value}`
/// as JSON lines `name<TAB>labels-json<TAB>value`, and the family types.
const PARSE: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    print("F\t%s\t%s" % (fam.name, fam.type))
    for s in fam.samples:
        print("S\t%s\t%s\t%r" % (s.name, json.dumps(s.labels, sort_keys=True), s.value))
"#;

struct Parsed {
    families: Vec<(String, String)>,
    samples: Vec<(String, String, f64)>,
}

impl Parsed {
    fn value(&self, name: &str, labels: &str) -> f64 {
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels}"))
            .2
    }
}

fn parse_prometheus(py: &str, text: &str) -> Parsed {
    let mut child = Command::new(py)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut p = Parsed { families: Vec::new(), samples: Vec::new() };
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "F" => p.families.push((f[1].to_string(), f[2].to_string())),
            _ => p.samples.push((f[1].to_string(), f[2].to_string(), f[3].parse().unwrap_or(f64::NAN))),
        }
    }
    p
}

/// A full TLS exchange through a terminating route: "ping" → echoed "ping". The client trusts
/// `root` only.
fn tls_ping(addr: SocketAddr, name: &str, root: rustls::pki_types::CertificateDer<'static>) {
    let cfg = sni_dispatch::pki::client_config(root).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name.to_string().try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, connect(addr));
    tls.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    tls.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
}

#[test]
fn every_outcome_is_counted_exactly_and_exposed() {
    let up = backend(Mode::ReplyAfter { n: 1, reply: Arc::new(REPLY.to_vec()) });
    let echo = backend(Mode::Echo);
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().unwrap();
    let leaf = Leaf::self_signed(&["t.example"]).unwrap();
    let (cert, key) = leaf.write(dir.path(), "t").map(|f| (f.cert, f.key)).unwrap();
    let log_path = dir.path().join("access.log");
    let toml = format!(
        "{RUNTIME}[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\naddress = \"0.0.0.0:0\"\n{}{}{}{}{}",
        route("exact", "action = \"passthrough\"\nsni = [\"a.example\"]", &[up.addr]),
        route("wild", "action = \"passthrough\"\nsni = [\"*.w.example\"]", &[up.addr]),
        route("ded", "action = \"passthrough\"\ndedicated_ips = [\"127.0.0.2\"]", &[up.addr]),
        route("down", "action = \"passthrough\"\nsni = [\"down.example\"]", &[dead]),
        route(
            "tls",
            &format!("action = \"terminate\"\nsni = [\"t.example\"]\ncert = {cert:?}\nkey = {key:?}"),
            &[echo.addr]
        ),
    );
    let overrides = RuntimeOverrides { access_log: Some(log_path.clone()), ..Default::default() };
    let (server, _f) = start(&toml, &overrides);
    let admin = server.admin_addr().expect("admin endpoint");
    let port = server.local_addrs()[0].port();
    let lo = SocketAddr::from(([127, 0, 0, 1], port));
    let ded = SocketAddr::from(([127, 0, 0, 2], port));

    let (exact, wild, dedicated, unknown, garbage, down, tls) = (3, 2, 2, 2, 1, 1, 1);
    for _ in 0..exact {
        assert_eq!(roundtrip(lo, &rustls_hello(Some("a.example"), &[b"h2"])), REPLY);
    }
    for _ in 0..wild {
        assert_eq!(roundtrip(lo, &rustls_hello(Some("x.w.example"), &[])), REPLY);
    }
    for _ in 0..dedicated {
        assert_eq!(roundtrip(ded, &rustls_hello(None, &[])), REPLY);
    }
    for _ in 0..unknown {
        expect_dropped(lo, &rustls_hello(Some("nobody.example"), &[]));
    }
    for _ in 0..garbage {
        expect_dropped(lo, &[0u8; 64]);
    }
    for _ in 0..down {
        expect_dropped(lo, &rustls_hello(Some("down.example"), &[]));
    }
    for _ in 0..tls {
        tls_ping(lo, "t.example", leaf.cert_der());
    }
    let total = exact + wild + dedicated + unknown + garbage + down + tls;
    let routed = exact + wild + dedicated + down + tls;
    let relayed = exact + wild + dedicated + tls;
    let hellos = total - garbage;

    let m =
        wait_metrics(&server, |m| m.accepted == total && m.open == 0 && m.dropped_total() == unknown + garbage + down);
    assert_eq!(m.routed_by(Match::ExactSni), exact + down + tls);
    assert_eq!(m.routed_by(Match::WildcardSni), wild);
    assert_eq!(m.routed_by(Match::DedicatedIp), dedicated);
    assert_eq!(m.routed_by(Match::NoSniFallback) + m.routed_by(Match::UnknownSniFallback), 0);
    assert_eq!(m.dropped_by(DropReason::UnknownSni), unknown);
    assert_eq!(m.dropped_by(DropReason::NotTls), garbage);
    assert_eq!(m.dropped_by(DropReason::BackendsDown), down);
    assert_eq!(m.backend_connect_failures.total(), down);
    assert_eq!((m.relays.get(RelayKind::Splice) + m.relays.get(RelayKind::Buffered)), relayed - tls);
    assert_eq!(m.tls_handshakes, tls);

    // Histograms: each counts the connections that reached its stage.
    let ok =
        wait_until(Duration::from_secs(10), || server.metrics().merged_histograms().count(Hist::Lifetime) == total);
    assert!(ok, "lifetime histogram never reached {total}");
    let h = server.metrics().merged_histograms();
    for (k, want) in [
        (Hist::HelloWait, hellos),
        (Hist::HelloSize, hellos),
        (Hist::RouteLookup, hellos),
        (Hist::BackendConnect, routed),
        (Hist::TlsHandshake, tls),
        (Hist::FirstByte, relayed),
        (Hist::Lifetime, total),
    ] {
        assert_eq!(h.count(k), want, "{k:?}");
    }
    assert!(h.quantile(Hist::RouteLookup, 0.5) > 0);
    assert!(h.quantile(Hist::HelloSize, 0.99) >= 200);

    // /metrics through a real Prometheus parser.
    let (status, text) = get(admin, "/metrics");
    assert_eq!(status, 200);
    if let Some(py) = prometheus_python() {
        let p = parse_prometheus(py, &text);
        assert!(p.families.iter().all(|(n, _)| n.starts_with("sni_dispatch_")));
        let kind = |n: &str| p.families.iter().find(|(f, _)| f == n).map(|(_, t)| t.clone());
        // prometheus_client names counter families without `_total`.
        assert_eq!(kind("sni_dispatch_connections_accepted").as_deref(), Some("counter"));
        assert_eq!(kind("sni_dispatch_connection_lifetime_seconds").as_deref(), Some("summary"));
        assert_eq!(p.value("sni_dispatch_connections_accepted_total", "{}"), total as f64);
        assert_eq!(p.value("sni_dispatch_connections_routed_total", r#"{"how": "wildcard"}"#), wild as f64);
        assert_eq!(p.value("sni_dispatch_connections_dropped_total", r#"{"reason": "unknown_sni"}"#), unknown as f64);
        assert_eq!(p.value("sni_dispatch_connection_lifetime_seconds_count", "{}"), total as f64);
        assert_eq!(p.value("sni_dispatch_tls_handshake_seconds_count", "{}"), tls as f64);
        for q in ["0.5", "0.9", "0.99", "0.999"] {
            let v = p.value("sni_dispatch_client_hello_wait_seconds", &format!(r#"{{"quantile": "{q}"}}"#));
            assert!(v > 0.0 && v < 20.0, "hello wait q{q} = {v}");
        }
        assert_eq!(p.value("sni_dispatch_worker_connections_accepted_total", r#"{"worker": "0"}"#), total as f64);
    }

    // /stats is JSON, per worker and merged.
    let (status, body) = get(admin, "/stats");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("/stats is JSON");
    assert_eq!(v["merged"]["counters"]["accepted"], total);
    assert_eq!(v["merged"]["counters"]["dropped"]["not_tls"], garbage);
    assert_eq!(v["workers"][0]["latency"]["connection_lifetime_seconds"]["count"], total);
    assert!(v["merged"]["latency"]["backend_first_byte_seconds"]["p99"].as_f64().unwrap() > 0.0);
    assert_eq!(get(admin, "/healthz"), (200, "ok\n".to_string()));

    assert!(server.shutdown());

    // The access log: one valid JSON line per connection (sample rate 1).
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len() as u64, total, "{text}");
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| lines.iter().filter(|l| f(l)).count() as u64;
    assert_eq!(count(&|l| l["reason"] == "unknown_sni"), unknown);
    assert_eq!(count(&|l| l["reason"] == "not_tls"), garbage);
    assert_eq!(count(&|l| l["reason"] == "backends_down"), down);
    assert_eq!(count(&|l| l["outcome"] == "closed"), relayed);
    assert_eq!(count(&|l| l["route"] == "ded" && l["local"].as_str().unwrap().starts_with("127.0.0.2:")), dedicated);
    let exact_line = lines.iter().find(|l| l["route"] == "exact").unwrap();
    assert_eq!(exact_line["sni"], "a.example");
    assert_eq!(exact_line["alpn"], "h2");
    assert_eq!(exact_line["how"], "sni");
    assert_eq!(exact_line["action"], "passthrough");
    assert_eq!(exact_line["backend"], up.addr.to_string());
    assert_eq!(exact_line["bytes_backend_to_client"], REPLY.len());
    assert!(exact_line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    for key in ["hello_wait_us", "route_lookup_ns", "backend_connect_us", "first_byte_us", "lifetime_us", "hello_bytes"]
    {
        assert!(exact_line[key].is_u64(), "{key}: {exact_line}");
    }
    let tls_line = lines.iter().find(|l| l["route"] == "tls").unwrap();
    assert_eq!(tls_line["action"], "terminate");
    assert_eq!(tls_line["bytes_client_to_backend"], 4);
    assert!(tls_line["tls_handshake_us"].is_u64(), "{tls_line}");
    assert!(lines.iter().all(|l| l["time"].as_str().is_some_and(|t| t.ends_with('Z'))));
}

#[test]
fn admin_answers_malformed_requests_and_reports_draining() {
    let b = backend(Mode::Echo);
    let toml = format!(
        "[runtime]\nworkers = 1\ndrain_timeout_ms = 20000\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n{}",
        route("r", "action = \"passthrough\"\nsni = [\"a.example\"]", &[b.addr])
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let admin = server.admin_addr().unwrap();

    assert_eq!(get(admin, "/nope").0, 404);
    assert_eq!(get(admin, "/metrics?name=x").0, 200);
    let (status, head, _) = http_raw(admin, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    let (status, head, body) = http_raw(admin, b"HEAD /stats HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(!head.contains("Content-Length: 0"), "{head}");
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /metrics HTTP/9\r\n\r\n",
        b"hello\n\n",
    ] {
        assert_eq!(http_raw(admin, garbage).0, 400, "{garbage:?}");
    }
    // Oversized: a head that never ends within the limit.
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    big.extend(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(400));
    assert_eq!(http_raw(admin, &big).0, 431);
    // A client that connects and sends nothing, then closes: no answer, no harm.
    drop(TcpStream::connect(admin).unwrap());
    // Slowloris: half a head, then silence: 408 within the deadline; meanwhile others are served.
    let t = Instant::now();
    let slow = std::thread::spawn(move || http_raw(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(admin, "/healthz").0, 200);
    let (status, _, _) = slow.join().unwrap();
    assert_eq!(status, 408);
    assert!(t.elapsed() < Duration::from_secs(15));

    // Draining: /healthz turns 503 while a connection is still open.
    let mut c = connect(server.local_addrs()[0]);
    c.write_all(&rustls_hello(Some("a.example"), &[])).unwrap();
    let mut echoed = vec![0u8; 8];
    c.read_exact(&mut echoed).unwrap();
    assert!(wait_until(Duration::from_secs(10), || server.metrics().merged().open == 1));
    let stopper = std::thread::spawn(move || server.shutdown());
    assert!(wait_until(Duration::from_secs(10), || get(admin, "/healthz") == (503, "draining\n".to_string())));
    assert_eq!(get(admin, "/metrics").0, 200);
    drop(c);
    assert!(stopper.join().unwrap());
    assert!(TcpStream::connect_timeout(&admin, Duration::from_secs(1)).is_err(), "admin stops with the server");
}

#[test]
fn binary_samples_the_access_log_and_prints_summaries() {
    let up = backend(Mode::ReplyAfter { n: 1, reply: Arc::new(REPLY.to_vec()) });
    let port = free_port();
    let admin_port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = config_file(&format!(
        "[runtime]\nworkers = 2\n[[listener]]\naddress = \"{addr}\"\n{}",
        route("r", "action = \"passthrough\"\nsni = [\"a.example\"]", &[up.addr])
    ));
    let log = cfg.dir.path().join("access.log");
    let out_path = cfg.dir.path().join("stdout.txt");
    let bin = std::env::var("SNI_DISPATCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sni-dispatch").to_string());
    let child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&cfg.path)
        .args(["--admin", &format!("127.0.0.1:{admin_port}"), "--access-log"])
        .arg(&log)
        .args(["--access-log-sample", "0.5", "--log", "warn"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut p = Proc { child, stderr_path: cfg.dir.path().join("none") };
    assert!(wait_until(Duration::from_secs(20), || TcpStream::connect(addr).is_ok()));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    assert!(wait_until(Duration::from_secs(20), || TcpStream::connect(admin).is_ok()));
    // The probe connection above was accepted and dropped (client_closed): count it in.
    let n = 20;
    for _ in 0..n {
        assert_eq!(roundtrip(addr, &rustls_hello(Some("a.example"), &[])), REPLY);
    }
    let stats = || -> serde_json::Value { serde_json::from_str(&get(admin, "/stats").1).unwrap() };
    assert!(wait_until(Duration::from_secs(10), || stats()["merged"]["counters"]["routed"]["sni"] == n));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(p.pid() as i32, libc::SIGUSR1) };
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_to_string(&out_path)
        .unwrap_or_default()
        .contains("sni-dispatch summary")));
    let status = p.signal_and_wait(libc::SIGTERM, Duration::from_secs(30)).expect("exits on SIGTERM");
    assert!(status.success());
    let out = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(out.matches("sni-dispatch summary").count(), 2, "{out}");
    assert!(out.contains("routed:  sni 20"), "{out}");
    assert!(out.contains("worker 1:"), "{out}");
    assert!(out.contains("connection_lifetime"), "{out}");
    let accepted = stats_accepted(&out);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    // Each worker logs every other connection it served (the second, fourth, ...).
    assert!(
        lines.len() as u64 + 2 >= accepted / 2 && lines.len() as u64 <= accepted / 2 + 1,
        "{} lines for {accepted} connections",
        lines.len()
    );
    assert!(lines.iter().filter(|l| l["route"] == "r").count() >= (n as usize) / 2 - 2);
}

/// The accepted count from the summary's first line.
fn stats_accepted(summary: &str) -> u64 {
    let last = summary.rsplit("sni-dispatch summary").next().unwrap();
    last.split(": ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).expect("accepted count")
}
