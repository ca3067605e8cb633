//! QUIC through the real binary with real QUIC programs: aioquic HTTP/3 clients and servers
//! (`tests/quic/h3.py`; `.ci/run` installs aioquic from PyPI), routed by the SNI of the Initials'
//! ClientHello and by dedicated IP; hellos over two and three Initials, in order, reversed and
//! with a duplicate; and hostile datagrams (garbage, truncated, mis-keyed, small, short-header,
//! other versions, an Initial flood from random ports), with the counters and memory they leave.
mod common;

use common::*;
use sni_dispatch::quic::initial::{client_initial, client_initial_sized, crypto_frame};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn h3_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/quic/h3.py")
}

/// Whether aioquic can be imported (CI installs it; a developer without it is told so).
fn have_aioquic() -> bool {
    let ok = Command::new("python3").args(["-c", "import aioquic"]).status().is_ok_and(|s| s.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "aioquic is missing: `python3 -m pip install aioquic` (.ci/run does)"
    );
    if !ok {
        eprintln!("skipping: aioquic is not installed (python3 -m pip install aioquic)");
    }
    ok
}

/// A free UDP port on 127.0.0.1 whose TCP twin is free too (the dispatcher binds both).
fn free_udp_port() -> u16 {
    loop {
        let p = free_port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.3", p)).is_ok() {
            return p;
        }
    }
}

/// An aioquic HTTP/3 server answering "NAME PATH", killed on drop.
struct H3Server {
    child: Child,
    addr: SocketAddr,
    cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for H3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn h3_server(name: &str) -> H3Server {
    let dir = tempfile::tempdir().unwrap();
    let leaf = sni_dispatch::pki::Leaf::self_signed(&["a.example", "b.example", "c.example"]).unwrap();
    let files = leaf.write(dir.path(), name).unwrap();
    let (cert, key) = (files.cert, files.key);
    let port = free_udp_port();
    let mut child = Command::new("python3")
        .arg(h3_py())
        .args(["server", "--port", &port.to_string(), "--name", name])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    let out = child.stdout.take().unwrap();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert!(line.starts_with("READY"), "aioquic server did not start: {line:?}");
    H3Server { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), cert, _dir: dir }
}

/// One HTTP/3 GET with the aioquic client: Ok(body line) on a 200, Err(output) otherwise.
fn h3_get(to: SocketAddr, sni: &str, path: &str, extra: &[&str]) -> Result<String, String> {
    let out = Command::new("python3")
        .arg(h3_py())
        .args(["client", "--connect", &to.to_string(), "--sni", sni, "--path", path])
        .args(extra)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The merged counters of `/stats`.
fn counters(admin: SocketAddr) -> serde_json::Value {
    let (status, _, body) = http_raw(admin, b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["merged"]["counters"].clone()
}

fn count(c: &serde_json::Value, family: &str, label: &str) -> u64 {
    c[family][label].as_u64().unwrap_or(0)
}

/// Waits (bounded) until `f` holds for the published counters; returns them.
fn wait_counters(admin: SocketAddr, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let ok = wait_until(Duration::from_secs(20), || {
        last = counters(admin);
        f(&last)
    });
    assert!(ok, "counters never matched: {last:#}");
    last
}

struct Edge {
    proc_: Proc,
    shared: SocketAddr,
    dedicated: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _cfg: ConfigFile,
}

/// The binary with QUIC listeners on 127.0.0.1 and 127.0.0.3 (the latter b's dedicated IP):
/// a.example → `a`, b.example → `b`; `extra` is appended to the file.
fn edge(a: &H3Server, b: &H3Server, extra: &str) -> Edge {
    edge_to(&format!("\"{}\"", a.addr), b, extra)
}

/// As [`edge`], with route `a`'s back ends given as TOML list items.
fn edge_to(a_backends: &str, b: &H3Server, extra: &str) -> Edge {
    edge_route(&format!("backends = [{a_backends}]"), b, extra)
}

/// As [`edge`], with route `a`'s `backends` (and any more of its keys) given as TOML lines.
fn edge_route(a_route: &str, b: &H3Server, extra: &str) -> Edge {
    edge_args(a_route, b, extra, &[])
}

/// As [`edge_route`], with more arguments for `run`.
fn edge_args(a_route: &str, b: &H3Server, extra: &str, args: &[&str]) -> Edge {
    edge_full(&["a.example"], a_route, b, extra, args, &[])
}

/// As [`edge_args`], with route `a`'s names and more variables in the process's environment.
fn edge_full(names: &[&str], a_route: &str, b: &H3Server, extra: &str, args: &[&str], env: &[(&str, &str)]) -> Edge {
    let (port, dport, admin) = (free_udp_port(), free_udp_port(), free_port());
    // One worker unless told otherwise (balance shares are per worker).
    let workers = if extra.contains("workers =") { "" } else { "workers = 1\n" };
    let toml = format!(
        "[runtime]\n{workers}drain_timeout_ms = 500\n{extra}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\nquic = true\n\
         [[listener]]\naddress = \"127.0.0.3:{dport}\"\nquic = true\n\
         [[route]]\nname = \"a\"\nsni = {names:?}\naction = \"passthrough\"\n{a_route}\n\
         [[route]]\nname = \"b\"\nsni = [\"b.example\"]\ndedicated_ips = [\"127.0.0.3\"]\naction = \"passthrough\"\nbackends = [\"{}\"]\n",
        b.addr
    );
    let cfg = config_file(&toml);
    let log = cfg.dir.path().join("access.jsonl");
    let shared = SocketAddr::from(([127, 0, 0, 1], port));
    let mut all = vec!["--access-log", log.to_str().unwrap()];
    all.extend_from_slice(args);
    let proc_ = spawn_binary_env(&cfg, &all, shared, env);
    Edge {
        proc_,
        shared,
        dedicated: SocketAddr::from(([127, 0, 0, 3], dport)),
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        log,
        _cfg: cfg,
    }
}

#[test]
fn http3_by_sni_and_dedicated_ip_unknown_names_dropped() {
    if !have_aioquic() {
        return;
    }
    let (a, b) = (h3_server("A"), h3_server("B"));
    let e = edge(&a, &b, "");
    assert_eq!(h3_get(e.shared, "a.example", "/one", &[]), Ok("200 A /one".into()));
    assert_eq!(h3_get(e.shared, "b.example", "/two", &[]), Ok("200 B /two".into()));
    // The dedicated IP wins over the SNI.
    assert_eq!(h3_get(e.dedicated, "a.example", "/three", &[]), Ok("200 B /three".into()));
    // No route for c.example and no fallback: dropped, the client times out.
    assert!(h3_get(e.shared, "c.example", "/", &["--timeout", "2"]).is_err());
    let c = wait_counters(e.admin, |c| count(c, "quic_flows_dropped", "unknown_sni") >= 1);
    assert_eq!(count(&c, "quic_routed", "sni"), 2, "{c:#}");
    assert_eq!(count(&c, "quic_routed", "dedicated_ip"), 1, "{c:#}");
    assert!(count(&c, "quic_datagrams", "backend_to_client") >= 6, "{c:#}");
    // One access-log line per flow, when it ends (the drain ends them).
    let mut p = e.proc_;
    assert!(p.signal_and_wait(libc::SIGTERM, Duration::from_secs(30)).is_some_and(|s| s.success()));
    let text = std::fs::read_to_string(&e.log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let routed: Vec<_> = lines.iter().filter(|l| l["route"].is_string()).collect();
    assert_eq!(routed.len(), 3, "{text}");
    for l in &routed {
        assert_eq!(l["transport"], "quic", "{l}");
        assert!(l["ja4"].as_str().is_some_and(|j| j.starts_with("q13d")), "{l}");
        assert!(l["bytes_backend_to_client"].as_u64() > Some(1000), "{l}");
    }
    assert!(lines.iter().any(|l| l["reason"] == "unknown_sni" && l["transport"] == "quic"), "{text}");
}

#[test]
fn unknown_names_go_to_the_fallback() {
    if !have_aioquic() {
        return;
    }
    let (a, b) = (h3_server("A"), h3_server("B"));
    let e = edge(&a, &b, "quic_idle_timeout_ms = 700\n[fallback]\nunknown_sni = \"a\"\n");
    assert_eq!(h3_get(e.shared, "c.example", "/x", &[]), Ok("200 A /x".into()));
    let c = wait_counters(e.admin, |c| count(c, "quic_routed", "fallback_unknown_sni") == 1);
    assert_eq!(count(&c, "quic_flows_dropped", "unknown_sni"), 0, "{c:#}");
    // The flow idles out (quic_idle_timeout_ms) once the client is gone.
    wait_counters(e.admin, |c| count(c, "quic_flows_closed", "idle") == 1 && c["quic_flows_open"].as_u64() == Some(0));
}

#[test]
fn hellos_over_two_and_three_initials_in_any_order() {
    if !have_aioquic() {
        return;
    }
    let (a, b) = (h3_server("A"), h3_server("B"));
    let e = edge(&a, &b, "");
    let mut n = 0;
    // 45 extra ALPN values make a ~1.9 KB ClientHello (two Initials); 80 a ~3 KB one (three).
    for pad in ["45", "80"] {
        for order in ["none", "rev", "dup", "revdup"] {
            let got = h3_get(e.shared, "b.example", "/big", &["--alpn-pad", pad, "--order", order]);
            assert_eq!(got, Ok("200 B /big".into()), "pad {pad}, order {order}");
            n += 1;
        }
    }
    let c = wait_counters(e.admin, |c| c["quic_multi_packet_hellos"].as_u64() == Some(n));
    assert_eq!(count(&c, "quic_routed", "sni"), n, "{c:#}");
    // Each hello was read from the first flight as sent (reordered, duplicated), not from a
    // client's retransmission after a failed attempt: no flow was ever given up.
    let given_up: u64 = c["quic_flows_dropped"].as_object().map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
    assert_eq!(given_up, 0, "{c:#}");
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_datagrams_and_an_initial_flood() {
    if !have_aioquic() {
        return;
    }
    let (a, b) = (h3_server("A"), h3_server("B"));
    let e = edge(&a, &b, "quic_pending_max = 200\nquic_pending_bytes = 8192\n");
    let to = e.shared;
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pq = &CHROMIUM_PQ[5..];

    // Garbage (a long header that does not parse), and a short-header packet for no flow.
    s.send_to(&[0xc3, 0, 0, 0, 1, 200, 1, 2], to).unwrap();
    s.send_to(&[0x41; 100], to).unwrap();
    // A first Initial in a datagram under 1200 bytes.
    s.send_to(&client_initial_sized(&[9; 8], 0, &crypto_frame(0, &pq[..900]), 1100), to).unwrap();
    let good = client_initial(&[9; 8], 0, &crypto_frame(0, &pq[..900]));
    // Truncated: the header's Length (bytes 16-17) runs far past the datagram's end.
    let mut truncated = good[..40].to_vec();
    truncated.resize(1200, 0);
    truncated[16] = 0x7f;
    s.send_to(&truncated, to).unwrap();
    // Mis-keyed: sealed for another DCID.
    let mut miskeyed = client_initial(&[7; 8], 0, &crypto_frame(0, &pq[..900]));
    miskeyed[6..14].copy_from_slice(&[8; 8]);
    s.send_to(&miskeyed, to).unwrap();
    // Another version: a Version Negotiation packet comes back, listing 1 and 2.
    let mut v = vec![0xc0, 0x0a, 0x1a, 0x2a, 0x3a, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0];
    v.resize(1200, 0);
    s.send_to(&v, to).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = s.recv_from(&mut buf).expect("a Version Negotiation packet");
    assert_eq!(from, to);
    assert_eq!(&buf[1..5], &[0, 0, 0, 0], "not a Version Negotiation packet");
    assert!(buf[..n].windows(4).any(|w| w == [0, 0, 0, 1]), "v1 not listed");
    let c = wait_counters(e.admin, |c| count(c, "quic_datagrams_dropped", "unknown_version") == 1);
    for (reason, want) in [("bad_initial", 2), ("unknown_flow", 1), ("small_initial", 1), ("undecryptable", 1)] {
        assert!(count(&c, "quic_datagrams_dropped", reason) >= want, "{reason}: {c:#}");
    }

    // An Initial flood from 5,000 source ports: first halves of a two-Initial hello, each
    // leaving a pending flow. The first 1,000 fill the table to its cap (200) and warm the
    // allocator; the next 4,000 must not grow memory (a table without its cap would hold 4,000
    // more flows, each with its keys, reassembly buffer and datagram: over 10 MiB).
    let flood = |from: usize, n: usize| {
        let socks: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for (i, sock) in socks.iter().enumerate() {
            let dcid = (0x5000_0000u64 + (from + i) as u64).to_be_bytes();
            let _ = sock.send_to(&client_initial(&dcid, 0, &crypto_frame(0, &pq[..1000])), to);
            if i % 100 == 99 {
                // Paced a little, so the kernel's socket buffer keeps what a debug build reads slowly.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    flood(0, 1000);
    let c = wait_counters(e.admin, |c| count(c, "quic_flows_dropped", "pending_full") >= 700);
    assert!(c["quic_flows_pending"].as_u64() <= Some(200), "{c:#}");
    let rss_before = rss_kib(e.proc_.pid());
    flood(1000, 4000);
    let c = wait_counters(e.admin, |c| count(c, "quic_flows_dropped", "pending_full") >= 3700);
    assert!(c["quic_flows_pending"].as_u64() <= Some(200), "{c:#}");
    let grown = rss_kib(e.proc_.pid()).saturating_sub(rss_before);
    eprintln!("RSS grew {grown} KiB over 4,000 more flood packets");
    assert!(grown < 3 * 1024, "RSS grew {grown} KiB under the flood");
    // Nobody else noticed: a real client is served after it.
    assert_eq!(h3_get(e.shared, "a.example", "/after", &[]), Ok("200 A /after".into()));
    // The pending flows time out (quic_pending_timeout_ms, 1 s).
    let c = wait_counters(e.admin, |c| c["quic_flows_pending"].as_u64() == Some(0));
    assert!(count(&c, "quic_flows_dropped", "pending_timeout") >= 100, "{c:#}");
}

/// The base64 SHA-256 of a PEM certificate's SubjectPublicKeyInfo, for Chromium's
/// `--ignore-certificate-errors-spki-list` (openssl, as Chromium's docs do it).
fn spki_hash(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn chromium_loads_a_page_over_quic_through_the_dispatcher() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
    let Some(chromium) = chromium else {
        assert!(std::env::var_os("CI").is_none(), "chromium is required in CI (.ci/run installs it)");
        eprintln!("skipped: chromium not installed");
        return;
    };
    if !have_aioquic() {
        return;
    }
    let (a, b) = (h3_server("A"), h3_server("B"));
    let e = edge(&a, &b, "");
    let profile = tempfile::tempdir().unwrap();
    // QUIC forced on for the origin: no TCP at all, and the back end speaks only QUIC.
    let origin = format!("a.example:{}", e.shared.port());
    let out = Command::new("timeout")
        .args(["60", chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--host-resolver-rules=MAP a.example 127.0.0.1")
        .arg(format!("--origin-to-force-quic-on={origin}"))
        .arg(format!("--ignore-certificate-errors-spki-list={}", spki_hash(&a.cert)))
        .arg("--dump-dom")
        .arg(format!("https://{origin}/chromium"))
        .output()
        .expect("chromium");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("A /chromium"), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let c = wait_counters(e.admin, |c| count(c, "quic_routed", "sni") >= 1);
    // Chromium's post-quantum ClientHello spans two Initials.
    assert!(c["quic_multi_packet_hellos"].as_u64() >= Some(1), "{c:#}");
}

#[test]
fn a_back_end_answering_port_unreachable_fails_over_to_the_next() {
    if !have_aioquic() {
        return;
    }
    let (a, b) = (h3_server("A"), h3_server("B"));
    // Nothing listens on the first back end's UDP port: the kernel answers ICMP port unreachable.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let e = edge_route(&format!("backends = [\"{dead}\", \"{}\"]\neject_after = 1\neject_ms = 60000", a.addr), &b, "");
    assert_eq!(h3_get(e.shared, "a.example", "/failover", &[]), Ok("200 A /failover".into()));
    let c = wait_counters(e.admin, |c| c["quic_backend_failovers"].as_u64() >= Some(1));
    assert_eq!(count(&c, "quic_routed", "sni"), 1, "{c:#}");
    // The ICMP error on the flow's first datagrams was a failed connect of that back end, which
    // set it aside (eject_after = 1): the next flow goes straight to the one that answers.
    let s = backend_stats(e.admin, dead);
    assert_eq!((s["failures"]["refused"].as_u64(), s["ejections"].as_u64()), (Some(1), Some(1)), "{s}");
    assert_eq!(s["state"], "ejected", "{s}");
    assert_eq!(h3_get(e.shared, "a.example", "/after", &[]), Ok("200 A /after".into()));
    let c = wait_counters(e.admin, |c| count(c, "quic_routed", "sni") == 2);
    assert_eq!(c["quic_backend_failovers"].as_u64(), Some(1), "{c:#}");
    assert!(count(&c, "backend_connect_failures", "refused") >= 1, "{c:#}");
    assert_eq!(backend_stats(e.admin, a.addr)["connections"], 2);
}

/// `/stats`' figures of back end `addr`.
fn backend_stats(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let (status, _, body) = http_raw(admin, b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let all = v["backends"].as_array().cloned().unwrap_or_default();
    all.into_iter().find(|b| b["backend"] == addr.to_string()).unwrap_or_else(|| panic!("{addr} not in {body}"))
}

/// The servers that answered `n` HTTP/3 GETs for a.example (`extra`: the client's options).
fn served(to: SocketAddr, n: usize, path: &str, extra: &[&str]) -> Vec<String> {
    (0..n)
        .map(|_| {
            let got = h3_get(to, "a.example", path, extra).unwrap_or_else(|e| panic!("GET {path}: {e}"));
            got.split(' ').nth(1).unwrap_or_default().to_owned()
        })
        .collect()
}

fn tally(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

/// QUIC flows choose their back end through the route's pool: round robin sends them to both
/// back ends in turn, and each back end's figures count them (connections, open while the flow
/// lives, back to 0 when flows idle out).
#[test]
fn round_robin_spreads_quic_flows_and_back_ends_count_them() {
    if !have_aioquic() {
        return;
    }
    let (a1, a2, b) = (h3_server("A1"), h3_server("A2"), h3_server("B"));
    let e = edge_route(
        &format!("balance = \"round_robin\"\nbackends = [\"{}\", \"{}\"]", a1.addr, a2.addr),
        &b,
        "quic_idle_timeout_ms = 600000\n",
    );
    let got = served(e.shared, 4, "/rr", &[]);
    assert_eq!((tally(&got, "A1"), tally(&got, "A2")), (2, 2), "{got:?}");
    for a in [a1.addr, a2.addr] {
        let s = backend_stats(e.admin, a);
        assert_eq!(s["connections"], 2, "{s}");
        assert_eq!(s["connections_open"], 2, "flows open count as open connections: {s}");
    }
    // A reload shortens the idle timeout: the flows idle out, and nothing is counted open any more.
    let text = std::fs::read_to_string(&e._cfg.path).unwrap();
    std::fs::write(&e._cfg.path, text.replace("quic_idle_timeout_ms = 600000", "quic_idle_timeout_ms = 100")).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(e.proc_.pid() as i32, libc::SIGHUP) };
    assert!(wait_until(Duration::from_secs(20), || [a1.addr, a2.addr]
        .iter()
        .all(|a| backend_stats(e.admin, *a)["connections_open"] == 0)));
}

/// Route `a` over aioquic servers A1 and A2 by `balance` (the servers live as long as the first).
fn two_back_ends(balance: &str) -> ([H3Server; 3], Edge) {
    let (a1, a2, b) = (h3_server("A1"), h3_server("A2"), h3_server("B"));
    let e = edge_route(&format!("balance = \"{balance}\"\nbackends = [\"{}\", \"{}\"]", a1.addr, a2.addr), &b, "");
    ([a1, a2, b], e)
}

/// least_conn counts a worker's open QUIC flows: with every flow still open, new ones alternate.
#[test]
fn least_conn_counts_open_quic_flows() {
    if !have_aioquic() {
        return;
    }
    let (_servers, e) = two_back_ends("least_conn");
    let got = served(e.shared, 4, "/lc", &[]);
    assert_eq!((tally(&got, "A1"), tally(&got, "A2")), (2, 2), "{got:?}");
}

/// A back end the health checks (`type = "quic"`: Version Negotiation probes over UDP) mark
/// down is skipped, not tried; the backup serves only once every primary is down.
#[test]
fn quic_flows_skip_down_back_ends_and_use_the_backup_last() {
    if !have_aioquic() {
        return;
    }
    let (a1, a2, bk, b) = (h3_server("A1"), h3_server("A2"), h3_server("BK"), h3_server("B"));
    let e = edge_route(
        &format!(
            "balance = \"round_robin\"\nbackends = [\"{}\", \"{}\", {{ address = \"{}\", backup = true }}]\n\
             health_check = {{ type = \"quic\", interval_ms = 100, timeout_ms = 1000, rise = 1, fall = 3 }}",
            a1.addr, a2.addr, bk.addr
        ),
        &b,
        "",
    );
    let got = served(e.shared, 4, "/all-up", &[]);
    assert_eq!((tally(&got, "A1"), tally(&got, "A2"), tally(&got, "BK")), (2, 2, 0), "{got:?}");
    assert_eq!(backend_stats(e.admin, a1.addr)["checks"]["ok"].as_u64().map(|n| n > 0), Some(true));
    let a1_addr = a1.addr;
    drop(a1);
    assert!(wait_until(Duration::from_secs(20), || backend_stats(e.admin, a1_addr)["state"] == "down"));
    let got = served(e.shared, 3, "/one-down", &[]);
    assert_eq!(tally(&got, "A2"), 3, "{got:?}");
    let c = counters(e.admin);
    assert_eq!(c["quic_backend_failovers"].as_u64().unwrap_or(0), 0, "a down back end was tried: {c:#}");
    let a2_addr = a2.addr;
    drop(a2);
    assert!(wait_until(Duration::from_secs(20), || backend_stats(e.admin, a2_addr)["state"] == "down"));
    let got = served(e.shared, 2, "/primaries-down", &[]);
    assert_eq!(tally(&got, "BK"), 2, "{got:?}");
}

/// hash_client keeps a client address on one back end, flow after flow (each from a new port),
/// and spreads addresses over both.
#[test]
fn hash_client_keeps_an_address_on_one_back_end() {
    if !have_aioquic() {
        return;
    }
    let (_servers, e) = two_back_ends("hash_client");
    let mut seen = std::collections::HashSet::new();
    // The back ends' ports (part of their hash seeds) change from run to run: with 16
    // addresses, all on one back end has a chance of 2^-15.
    for i in 5..21 {
        let host = format!("127.0.0.{i}");
        let got = served(e.shared, 2, "/hash", &["--local-host", &host]);
        assert!(got.iter().all(|g| *g == got[0]), "{host}: {got:?}");
        seen.insert(got[0].clone());
    }
    assert_eq!(seen.len(), 2, "16 addresses all hashed to {seen:?}");
}

/// hash_sni keeps a name on one back end, QUIC flow after QUIC flow (each from a new port and
/// so a new flow), and spreads names over both. The route's back ends are hosts that serve TCP
/// and UDP on the same port (an aioquic server and a TCP server naming itself): a TCP connection
/// with the same SNI reaches the same host as the name's QUIC flows, as TCP and QUIC pick by the
/// same hash of the name over the same back-end addresses.
#[test]
fn hash_sni_keeps_a_name_on_one_back_end_over_quic_and_tcp() {
    if !have_aioquic() {
        return;
    }
    let (a1, a2, b) = (h3_server("A1"), h3_server("A2"), h3_server("B"));
    // The TCP twins, on the QUIC servers' ports, each answering its name.
    let tcp = |s: &H3Server, name: &str| {
        backend_on(&s.addr.to_string(), Mode::ReplyAfter { n: 1, reply: std::sync::Arc::new(name.as_bytes().to_vec()) })
    };
    let (_t1, _t2) = (tcp(&a1, "A1"), tcp(&a2, "A2"));
    // The back ends' ports (part of their hash seeds) change from run to run: with 16 names,
    // all on one back end has a chance of 2^-15.
    let names: Vec<String> = (0..16).map(|i| format!("n{i}.example")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let e = edge_full(
        &refs,
        &format!("balance = \"hash_sni\"\nbackends = [\"{}\", \"{}\"]", a1.addr, a2.addr),
        &b,
        "",
        &[],
        &[],
    );
    let mut seen = std::collections::HashSet::new();
    for name in &names {
        // Two flows from two ports (the client binds a new one each run).
        let got: Vec<String> = (0..2)
            .map(|_| {
                let got = h3_get(e.shared, name, "/sni", &[]).unwrap_or_else(|err| panic!("GET {name}: {err}"));
                got.split(' ').nth(1).unwrap_or_default().to_owned()
            })
            .collect();
        assert!(got[0] == got[1], "{name}: its QUIC flows went to {got:?}");
        let twin = roundtrip(e.shared, &rustls_hello(Some(name), &[b"h2"]));
        assert_eq!(String::from_utf8_lossy(&twin), got[0], "{name}: TCP went elsewhere than QUIC");
        seen.insert(got[0].clone());
    }
    assert_eq!(seen.len(), 2, "16 names all hashed to {seen:?}");
}

/// An aioquic client that GETs /before (answered by A), then waits for `pause` to exist and GETs
/// /after on the same connection (`timeout_s` for each); its output, past the first line.
fn before_and_after(to: SocketAddr, pause: &Path, timeout_s: u32) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut client = Command::new("python3")
        .arg(h3_py())
        .args(["client", "--connect", &to.to_string(), "--sni", "a.example", "--path", "/before"])
        .args(["--then-path", "/after", "--pause-file", pause.to_str().unwrap(), "--timeout", &timeout_s.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "200 A /before");
    (client, out)
}

/// A binary upgrade keeps QUIC: the new process takes the QUIC listeners' UDP sockets and the
/// open flows (with their sockets to the back ends), so an HTTP/3 connection opened before the
/// upgrade goes on after it, with the old process gone; new connections are served too.
#[test]
fn a_quic_connection_survives_a_binary_upgrade() {
    if !have_aioquic() {
        return;
    }
    let (a, b) = (h3_server("A"), h3_server("B"));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let sock_arg = sock.to_str().unwrap();
    let mut e =
        edge_args(&format!("backends = [\"{}\"]", a.addr), &b, "workers = 2\n", &["--upgrade-socket", sock_arg]);
    assert!(wait_until(Duration::from_secs(20), || sock.exists()), "no upgrade socket");
    let pause = dir.path().join("go");
    let (mut client, mut out) = before_and_after(e.shared, &pause, 20);
    let mut line = String::new();

    // The upgrade: the new process (the same configuration) takes the sockets and the flow.
    let new = upgrade(&e._cfg.path, &sock, &mut e.proc_, dir.path().join("new.log"));
    let new_log = || new.stderr();
    // The old process logged the flow it gave away.
    let text = std::fs::read_to_string(&e.log).unwrap_or_default();
    assert!(text.lines().any(|l| l.contains(r#""outcome":"handed_over""#) && l.contains(r#""route":"a""#)), "{text}");
    // Only the new process is left: the connection goes on through it.
    std::fs::write(&pause, b"").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "200 A /after", "the connection did not survive:\n{}", new_log());
    assert!(client.wait().unwrap().success());
    // The admin endpoint came with the sockets: these are the new process's figures.
    let c = counters(e.admin);
    assert_eq!(c["quic_flows_adopted"].as_u64(), Some(1), "{c:#}");
    assert_eq!(h3_get(e.shared, "a.example", "/new", &[]), Ok("200 A /new".into()));
    let c = counters(e.admin);
    assert_eq!(count(&c, "quic_datagrams_dropped", "unknown_flow"), 0, "{c:#}");
}

/// A binary upgrade from a process that speaks protocol version 1 only (a binary of before
/// version 2, played by this one under `SNI_DISPATCH_TEST_UPGRADE_VERSION=1`): the new process
/// asks for version 2, is refused, asks again for 1 and takes the TCP sockets (of the QUIC
/// listener too), so TCP clients connecting all along see no refused, reset or failed
/// connection. The UDP sockets do not pass in version 1: the new process binds its own beside
/// the old ones (one `SO_REUSEPORT` group), and new QUIC connections are served after the
/// upgrade. A QUIC connection open across it is lost once the old process exits at the end of
/// its drain: its datagrams reach the new process as an unknown flow, dropped.
#[test]
fn an_upgrade_from_a_version_1_process_keeps_tcp_and_serves_quic_anew() {
    if !have_aioquic() {
        return;
    }
    let (a, b) = (h3_server("A"), h3_server("B"));
    // Route a's TCP back end: a server on the aioquic server's port.
    let _tcp = backend_on(&a.addr.to_string(), Mode::ReplyAfter { n: 1, reply: std::sync::Arc::new(b"A".to_vec()) });
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let sock_arg = sock.to_str().unwrap();
    // SNI_DISPATCH_V1_BIN: a real binary of before version 2 (built from 3c0f88c) plays the old
    // process; otherwise this build does, speaking version 1 only.
    let real = std::env::var("SNI_DISPATCH_V1_BIN").ok();
    let v1 = match &real {
        Some(bin) => [("SNI_DISPATCH_BIN", bin.as_str())],
        None => [(sni_dispatch::server::upgrade::TEST_VERSION_ENV, "1")],
    };
    let mut e = edge_full(
        &["a.example"],
        &format!("backends = [\"{}\"]", a.addr),
        &b,
        "workers = 2\n",
        &["--upgrade-socket", sock_arg],
        &v1,
    );
    assert!(wait_until(Duration::from_secs(20), || sock.exists()), "no upgrade socket");
    // A QUIC connection open across the upgrade.
    let pause = dir.path().join("go");
    let (mut client, mut out) = before_and_after(e.shared, &pause, 3);
    let mut line = String::new();
    // TCP clients of route a, all along.
    static HELLO: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| rustls_hello(Some("a.example"), &[]));
    let clients = Clients::start(2, e.shared, &HELLO, b"A");
    assert!(wait_until(Duration::from_secs(20), || clients.tally().ok >= 20), "{:?}", clients.tally());

    let new = upgrade(&e._cfg.path, &sock, &mut e.proc_, dir.path().join("new.log"));
    assert!(new.stderr().contains("version=1"), "not taken as version 1:\n{}", new.stderr());
    let after = clients.tally().ok;
    assert!(wait_until(Duration::from_secs(20), || clients.tally().ok >= after + 20), "{:?}", clients.tally());
    let t = clients.stop();
    assert_eq!((t.refused, t.reset, t.failed), (0, 0, 0), "{t:?}");
    // New QUIC connections go through the new process's own UDP sockets.
    assert_eq!(h3_get(e.shared, "a.example", "/new", &[]), Ok("200 A /new".into()), "{}", new.stderr());
    let c = counters(e.admin);
    assert_eq!(c["quic_flows_adopted"].as_u64().unwrap_or(0), 0, "{c:#}");
    // The connection opened before: lost with the old process.
    std::fs::write(&pause, b"").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("failed"), "{line}");
    let _ = client.wait();
    let c = wait_counters(e.admin, |c| count(c, "quic_datagrams_dropped", "unknown_flow") >= 1);
    assert_eq!(c["quic_flows_adopted"].as_u64().unwrap_or(0), 0, "{c:#}");
}

/// A back end that never answers: the flow closes after quic_handshake_timeout_ms, and that
/// counts as a connect of that back end that timed out.
#[test]
fn a_silent_back_end_is_a_connect_that_timed_out() {
    if !have_aioquic() {
        return;
    }
    let b = h3_server("B");
    // A UDP socket that reads nothing: no ICMP error, no answer.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap();
    let e = edge_route(&format!("backends = [\"{dead}\"]"), &b, "quic_handshake_timeout_ms = 300\n");
    assert!(h3_get(e.shared, "a.example", "/silent", &["--timeout", "2"]).is_err());
    // At least one: the client may retransmit its Initials after the first flow idled out, which
    // opens a second flow to the same silent back end.
    assert!(wait_until(Duration::from_secs(20), || backend_stats(e.admin, dead)["failures"]["timed_out"]
        .as_u64()
        .unwrap_or(0)
        >= 1));
    let c = wait_counters(e.admin, |c| count(c, "quic_flows_closed", "idle") >= 1);
    assert!(count(&c, "backend_connect_failures", "timed_out") >= 1, "{c:#}");
    assert_eq!(backend_stats(e.admin, dead)["connections"], 0);
    drop(silent);
}
