//! Admission, through the real server: address deny and allow lists, connections open per
//! client address and new connections per second per client address, over two workers, each
//! refusal with its own drop reason, before the hello is read; other clients are unaffected.
//! A client over its limit is shunned in the kernel (through the binary): its new handshakes
//! get no answer while its limit would refuse it, others are served, and the entry expires.
mod common;

use common::*;
use sni_dispatch::config::RuntimeOverrides;
use sni_dispatch::metrics::DropReason;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn edge(rules: &str, backend: SocketAddr, workers: usize) -> String {
    format!(
        "[runtime]\nworkers = {workers}\nhello_timeout_ms = 5000\nconnect_timeout_ms = 2000\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n{rules}\n[fallback]\nno_sni = \"all\"\nunknown_sni = \"all\"\n\
         [[route]]\nname = \"all\"\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbackends = [\"{backend}\"]\n"
    )
}

/// A connection from `source`; `None` when it was reset before connect returned (refused).
fn from(source: &str, to: SocketAddr) -> Option<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(source.parse().unwrap(), 0).into()).unwrap();
    match s.connect_timeout(&to.into(), IO_TIMEOUT) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("connect from {source}: {e}"),
    }
    let s: TcpStream = s.into();
    // A connection refused at once may be reset already, and this reports it.
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    Some(s)
}

/// Opens a relayed connection from `source` and keeps it: the echo of the hello came back.
fn hold(source: &str, to: SocketAddr) -> Option<TcpStream> {
    let mut c = from(source, to)?;
    let _ = c.write_all(OPENSSL_SNI);
    let mut buf = vec![0u8; OPENSSL_SNI.len()];
    c.read_exact(&mut buf).ok().map(|_| c)
}

/// Whether a connection from `source` is relayed (else the proxy closed or reset it).
fn admitted(source: &str, to: SocketAddr) -> bool {
    hold(source, to).is_some()
}

#[test]
fn address_lists_refuse_before_the_hello() {
    let b = backend(Mode::Echo);
    let (server, _f) =
        start(&edge("deny = [\"127.0.0.66\"]\nallow = [\"127.0.0.0/8\"]", b.addr, 1), &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    assert!(admitted("127.0.0.65", addr));
    assert!(!admitted("127.0.0.66", addr));
    wait_metrics(&server, |m| m.dropped_by(DropReason::DeniedAddress) == 1);
    server.shutdown();
    let (server, _f) = start(&edge("allow = [\"127.0.0.64/30\"]", b.addr, 1), &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    assert!(admitted("127.0.0.67", addr));
    assert!(!admitted("127.0.0.68", addr));
    // Refused before a byte was read: nothing was parsed or routed.
    if let Some(mut c) = from("127.0.0.68", addr) {
        let mut got = Vec::new();
        let r = c.read_to_end(&mut got);
        assert!(got.is_empty() && (r.is_ok() || r.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset));
    }
    let m = wait_metrics(&server, |m| m.dropped_by(DropReason::DeniedAddress) == 2);
    assert_eq!(m.routed_total(), 1);
    server.shutdown();
}

#[test]
fn connections_open_per_client_are_limited_over_all_workers() {
    let b = backend(Mode::Echo);
    let (server, _f) = start(&edge("max_conns_per_client = 3\nshun = false", b.addr, 2), &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    // Several source ports from one address land on both workers (SO_REUSEPORT hashes them).
    let held: Vec<TcpStream> = (0..3).map(|_| hold("127.0.0.70", addr).expect("within the limit")).collect();
    for _ in 0..4 {
        assert!(!admitted("127.0.0.70", addr), "a fourth connection at once");
    }
    assert!(admitted("127.0.0.71", addr), "another client is not limited");
    let m = wait_metrics(&server, |m| m.dropped_by(DropReason::ClientConnLimit) == 4);
    assert_eq!(m.dropped_total(), 4);
    drop(held);
    assert!(wait_until(Duration::from_secs(10), || admitted("127.0.0.70", addr)), "freed when they closed");
    server.shutdown();
}

#[test]
fn new_connections_per_second_per_client_are_limited() {
    let b = backend(Mode::Echo);
    let (server, _f) =
        start(&edge("max_conn_rate_per_client = 5\nshun = false", b.addr, 2), &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    let t0 = std::time::Instant::now();
    let ok = (0..30).filter(|_| admitted("127.0.0.80", addr)).count();
    let secs = t0.elapsed().as_secs_f64();
    // 5 per second over a sliding window: 5 in the first second, then about 5 more per second.
    assert!(ok >= 5 && (ok as f64) <= 5.0 * (secs + 1.0) + 1.0, "{ok} admitted in {secs:.2} s");
    assert!(admitted("127.0.0.81", addr), "another client is not limited");
    let m = wait_metrics(&server, |m| m.dropped_by(DropReason::ClientRateLimit) == (30 - ok) as u64);
    assert_eq!(m.dropped_total(), (30 - ok) as u64);
    server.shutdown();
}

/// How a connect from `source` came out within `limit`: answered (a handshake), reset, or no
/// answer at all (its SYN dropped).
#[derive(Debug)]
enum Dial {
    Answered(TcpStream),
    Reset,
    NoAnswer,
}

fn dial(source: &str, to: SocketAddr, limit: Duration) -> Dial {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(source.parse().unwrap(), 0).into()).unwrap();
    match s.connect_timeout(&to.into(), limit) {
        Ok(()) => Dial::Answered(s.into()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Dial::NoAnswer,
        Err(_) => Dial::Reset,
    }
}

/// The value of the sample `name` (with its labels) on the admin endpoint's `/metrics`.
fn sample(admin: SocketAddr, name: &str) -> u64 {
    let (_, _, text) = http_raw(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[test]
fn a_client_over_its_limit_is_shunned_in_the_kernel_until_the_limit_admits_it() {
    let b = backend(Mode::Echo);
    let (port, admin_port) = (free_port(), free_port());
    let toml = format!(
        "[runtime]\nworkers = 1\nhello_timeout_ms = 5000\nconnect_timeout_ms = 2000\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\nmax_conn_rate_per_client = 5\n\
         [fallback]\nno_sni = \"all\"\nunknown_sni = \"all\"\n\
         [[route]]\nname = \"all\"\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbackends = [\"{}\"]\n",
        b.addr
    );
    let f = config_file(&toml);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let p = spawn_binary(&f, &["--log", "sni_dispatch=info"], addr);
    // The flood: connections from one address one after the other. The first ones are relayed
    // (5 in the window), the next is refused after accept and shuns the address; from then on
    // its handshakes get no answer at all (the kernel drops its SYNs before the accept queue).
    // (relayed, refused after accept, unanswered)
    let mut outcomes = (0, 0, 0);
    for _ in 0..40 {
        match dial("127.0.0.90", addr, Duration::from_millis(300)) {
            Dial::Answered(mut c) => {
                let _ = c.set_read_timeout(Some(IO_TIMEOUT));
                let _ = c.write_all(OPENSSL_SNI);
                let mut buf = vec![0u8; OPENSSL_SNI.len()];
                match c.read_exact(&mut buf) {
                    Ok(()) => outcomes.0 += 1,
                    Err(_) => outcomes.1 += 1,
                }
            }
            Dial::Reset => outcomes.1 += 1,
            Dial::NoAnswer => outcomes.2 += 1,
        }
        if outcomes.2 >= 3 {
            break;
        }
    }
    assert!(outcomes.2 >= 3, "no connect went unanswered (relayed, refused, unanswered): {outcomes:?}");
    assert!(outcomes.0 >= 5, "the limit's own share was relayed: {outcomes:?}");
    assert!(sample(admin, "sni_dispatch_admission_shuns_total{reason=\"client_rate_limit\"}") >= 1);
    assert!(sample(admin, "sni_dispatch_admission_shunned") >= 1 || outcomes.2 > 0);
    // Another client is served meanwhile.
    assert!(admitted("127.0.0.91", addr), "another client is served");
    // The entry expires once the rate window lets the client in again: its connects are
    // answered and relayed.
    assert!(
        wait_until(Duration::from_secs(10), || sample(admin, "sni_dispatch_admission_shunned") == 0),
        "the entry never expired"
    );
    assert!(admitted("127.0.0.90", addr), "admitted again after the entry expired");
    let log = p.stderr();
    assert!(log.contains("client shunned") && log.contains("127.0.0.90"), "{log}");
}
