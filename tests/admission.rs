//! Admission, through the real server: address deny and allow lists, connections open per
//! client address and new connections per second per client address, over two workers, each
//! refusal with its own drop reason, before the hello is read; other clients are unaffected.
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
    let (server, _f) = start(&edge("max_conns_per_client = 3", b.addr, 2), &RuntimeOverrides::default());
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
    let (server, _f) = start(&edge("max_conn_rate_per_client = 5", b.addr, 2), &RuntimeOverrides::default());
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
