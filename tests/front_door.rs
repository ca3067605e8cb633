//! The front door under hostile and idle traffic, through the real binary: refused hellos get
//! the alert a TLS server sends (read by `openssl s_client`) and a debug line naming the peer and
//! the cause; legal fragmentation down to 1-byte records is accepted; the splice pipes go back
//! to the system after a burst, so a process under a small open-file limit keeps its room for
//! connections.
mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const REPLY: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn route(name: &str, extra: &str, backend: SocketAddr) -> String {
    let min_tls = if extra.contains("min_tls") { "" } else { "min_tls = \"1.0\"\n" };
    format!("[[route]]\nname = \"{name}\"\naction = \"passthrough\"\nbackends = [\"{backend}\"]\n{min_tls}{extra}\n")
}

/// A config for the binary on a free port: one worker, `runtime` lines, `routes`.
fn binary_config(runtime: &str, routes: &str) -> (ConfigFile, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let f = config_file(&format!("[runtime]\nworkers = 1\n{runtime}\n[[listener]]\naddress = \"{addr}\"\n{routes}"));
    (f, addr)
}

/// What `openssl s_client` printed (stdout and stderr) for one handshake attempt.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Each refusal a TLS client can provoke gets the alert a TLS server sends for it, which
/// `openssl s_client` reports ("SSL alert number N"), and a rate-limited debug line that names
/// the peer and the cause.
#[test]
fn refused_hellos_get_the_alert_a_tls_server_sends_and_a_debug_line() {
    let b = backend(Mode::ReplyAfter { n: 1, reply: Arc::new(REPLY.to_vec()) });
    let (f, addr) = binary_config(
        "",
        &format!(
            "{}{}",
            route("site", "sni = [\"www.example.com\"]", b.addr),
            route("modern", "sni = [\"modern.example.com\"]\nmin_tls = \"1.3\"", b.addr)
        ),
    );
    let p = spawn_binary(&f, &["--log", "sni_dispatch=debug"], addr);
    // An SNI no route names, and no fallback: unrecognized_name.
    let out = s_client(addr, &["-servername", "nobody.example.com"]);
    assert!(out.contains("SSL alert number 112"), "unknown SNI: {out}");
    // TLS 1.2 at most, to a route with min_tls = "1.3": protocol_version, as rustls answers on a
    // terminating route.
    let out = s_client(addr, &["-servername", "modern.example.com", "-tls1_2"]);
    assert!(out.contains("SSL alert number 70"), "below min_tls: {out}");
    // Not a ClientHello (a ServerHello's handshake type): unexpected_message, and the debug line
    // says what was wrong.
    expect_alert(addr, &[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00], 10);
    // The debug lines are one per second per call site: the no-SNI case waits its turn.
    std::thread::sleep(Duration::from_millis(1100));
    let out = s_client(addr, &["-noservername"]);
    assert!(out.contains("SSL alert number 49"), "no SNI: {out}");
    // The server still serves.
    let mut c = connect(addr);
    c.write_all(OPENSSL_SNI).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), REPLY);
    let logs = p.stderr();
    let line = |needle: &str| logs.lines().find(|l| l.contains(needle)).map(str::to_owned);
    let unknown = line("unknown_sni").unwrap_or_else(|| panic!("no unknown_sni line: {logs}"));
    assert!(unknown.contains("hello refused") && unknown.contains("peer=Some(127.0.0.1:"), "{unknown}");
    assert!(unknown.contains("nobody.example.com") && unknown.contains("unrecognized_name"), "{unknown}");
    let version = line("below_min_tls").unwrap_or_else(|| panic!("no below_min_tls line: {logs}"));
    assert!(version.contains("offered=TLS 1.2") && version.contains("min_tls=TLS 1.3"), "{version}");
    let wrong = line("not a ClientHello").unwrap_or_else(|| panic!("no parser line: {logs}"));
    assert!(wrong.contains("peer=Some(127.0.0.1:") && wrong.contains("unexpected_message"), "{wrong}");
    assert!(line("no_sni").is_some_and(|l| l.contains("access_denied")), "{logs}");
}

/// `hello` (one record) with a padding extension (RFC 7685) that makes its body `body` bytes.
fn padded(hello: &[u8], body: usize) -> Vec<u8> {
    let old_body = u32::from_be_bytes([0, hello[6], hello[7], hello[8]]) as usize;
    let add = body - old_body;
    assert!(add >= 4, "padding needs at least its 4-byte header");
    // Walk to the extensions length: version, random, session id, cipher suites, compression.
    let mut at = 9 + 2 + 32;
    at += 1 + hello[at] as usize;
    at += 2 + u16::from_be_bytes([hello[at], hello[at + 1]]) as usize;
    at += 1 + hello[at] as usize;
    let ext_len = u16::from_be_bytes([hello[at], hello[at + 1]]) as usize;
    let mut out = hello.to_vec();
    out[at..at + 2].copy_from_slice(&((ext_len + add) as u16).to_be_bytes());
    out.extend_from_slice(&[0x00, 0x15]);
    out.extend_from_slice(&((add - 4) as u16).to_be_bytes());
    out.resize(out.len() + add - 4, 0);
    let b = (body as u32).to_be_bytes();
    out[6..9].copy_from_slice(&b[1..]);
    out[3..5].copy_from_slice(&((body + 4) as u16).to_be_bytes());
    out
}

/// A 6,000-byte ClientHello in 1-byte records (36 KB of records), its first records in 1-byte
/// segments: routed, and every byte reaches the back end as sent.
#[test]
fn a_6000_byte_hello_in_1_byte_records_is_routed() {
    let hello = padded(OPENSSL_SNI, 6000);
    assert!(matches!(
        sni_dispatch::hello::parse(&hello, sni_dispatch::hello::DEFAULT_MAX_HELLO_BYTES),
        sni_dispatch::hello::Parsed::Complete(h) if h.sni() == Some("www.example.com")
    ));
    let records = reframe(&hello, 1);
    assert_eq!(records.len(), 6 * 6004);
    let b = backend(Mode::ReplyAfter { n: records.len(), reply: Arc::new(REPLY.to_vec()) });
    let (f, addr) = binary_config("", &route("site", "sni = [\"www.example.com\"]", b.addr));
    let _p = spawn_binary(&f, &[], addr);
    let mut c = connect(addr);
    let (slow, rest) = records.split_at(600);
    for byte in slow {
        c.write_all(std::slice::from_ref(byte)).unwrap();
    }
    for chunk in rest.chunks(1000) {
        c.write_all(chunk).unwrap();
    }
    assert_eq!(read_to_end(&mut c).unwrap(), REPLY);
    assert_eq!(b.next().bytes, records);
}

/// Spawns the binary under `ulimit -n limit` (soft and hard).
fn spawn_with_fd_limit(f: &ConfigFile, limit: u32, addr: SocketAddr) -> Proc {
    let bin = std::env::var("SNI_DISPATCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sni-dispatch").to_string());
    let stderr_path = f.dir.path().join("stderr.log");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(bin)
        .args(["run", "--config"])
        .arg(&f.path)
        .env("SNI_DISPATCH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn sni-dispatch under sh");
    let p = Proc { child, stderr_path };
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()),
        "not listening: {}",
        p.stderr()
    );
    p
}

/// Under `ulimit -n 256` the pipe pool is capped at a quarter of the limit (with a start-up
/// warning), and after a burst of 40 spliced connections its pipes are closed again: the
/// descriptors go back to the baseline, and the process then holds 200 waiting connections.
#[test]
fn pipes_go_back_after_a_burst_under_a_small_fd_limit() {
    let echo = backend(Mode::Echo);
    let (f, addr) = binary_config("hello_timeout_ms = 60000", &route("site", "sni = [\"www.example.com\"]", echo.addr));
    let p = spawn_with_fd_limit(&f, 256, addr);
    let pid = p.child.id();
    assert!(wait_until(Duration::from_secs(20), || p.stderr().contains("serving")), "{}", p.stderr());
    let logs = p.stderr();
    assert!(logs.contains("capped at 32") && logs.contains("RLIMIT_NOFILE"), "no fd warning: {logs}");
    // Settle (the probe connection of the start-up check is closed at its hello timeout or EOF).
    assert!(wait_until(Duration::from_secs(20), || {
        let a = fd_count(pid);
        std::thread::sleep(Duration::from_millis(300));
        a == fd_count(pid)
    }));
    let baseline = fd_count(pid);
    // A burst: 40 spliced connections at once, 256 KiB each way.
    let block = vec![7u8; 256 * 1024];
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let block = block.clone();
            std::thread::spawn(move || {
                let mut c = connect(addr);
                c.write_all(OPENSSL_SNI).unwrap();
                let reader = {
                    let mut r = c.try_clone().unwrap();
                    std::thread::spawn(move || read_to_end(&mut r).map(|v| v.len()))
                };
                c.write_all(&block).unwrap();
                c.shutdown(std::net::Shutdown::Write).unwrap();
                reader.join().unwrap()
            })
        })
        .collect();
    for t in burst {
        assert_eq!(t.join().unwrap(), Ok(OPENSSL_SNI.len() + block.len()));
    }
    // The pool closes the pipes the quiet seconds did not need.
    assert!(
        wait_until(Duration::from_secs(20), || fd_count(pid) <= baseline),
        "fds: baseline {baseline}, now {} (pipes kept)",
        fd_count(pid)
    );
    // Room for the waiting connections again: 200 clients that sent part of a hello.
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut c = connect(addr);
        c.write_all(&OPENSSL_SNI[..20]).unwrap();
        held.push(c);
    }
    assert!(
        wait_until(Duration::from_secs(20), || fd_count(pid) >= baseline + 200),
        "held {} of 200 (baseline {baseline})",
        fd_count(pid) - baseline
    );
    assert!(!p.stderr().contains("out of descriptors"), "{}", p.stderr());
}
