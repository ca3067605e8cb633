//! Passthrough end to end on loopback: routing, hello framing, failover, PROXY headers,
//! half-close, idle and hello timeouts, bulk transfers through both relay paths, bad input,
//! and the real binary with openssl and curl.
mod common;

use common::*;
use sni_dispatch::config::RuntimeOverrides;
use sni_dispatch::hello::Alert;
use sni_dispatch::metrics::{Direction, DropReason, PipeMiss, RelayKind};
use sni_dispatch::pki::Leaf;
use sni_dispatch::route::Match;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

const REPLY: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"; // 64 bytes

fn replier(n: usize) -> Backend {
    backend(Mode::ReplyAfter { n, reply: Arc::new(REPLY.to_vec()) })
}

/// A passthrough route. The back ends here are scripted, not TLS servers, so unless `extra`
/// sets its own, the route's `min_tls` is "1.0": no offer is below it, and the ServerHello
/// version check (tests/min_tls.rs) does not read their replies.
fn passthrough(name: &str, extra: &str, backends: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let min_tls = if extra.contains("min_tls") { "" } else { "min_tls = \"1.0\"\n" };
    format!(
        "[[route]]\nname = \"{name}\"\naction = \"passthrough\"\nbackends = [{}]\n{min_tls}{extra}\n",
        list.join(", ")
    )
}

fn listener(addr: &str) -> String {
    format!("[[listener]]\naddress = \"{addr}\"\n")
}

#[test]
fn routes_by_exact_and_wildcard_sni() {
    let exact = replier(1);
    let wild = replier(1);
    let toml = format!(
        "{RUNTIME}{}{}{}",
        listener("127.0.0.1:0"),
        passthrough("exact", "sni = [\"www.example.com\"]", &[exact.addr]),
        passthrough("wild", "sni = [\"*.shop.test\"]", &[wild.addr]),
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];

    assert_eq!(roundtrip(addr, OPENSSL_SNI), REPLY);
    assert!(OPENSSL_SNI.starts_with(&exact.next().bytes));
    let hello = rustls_hello(Some("a.shop.test"), &[]);
    assert_eq!(roundtrip(addr, &hello), REPLY);
    assert!(!wild.next().bytes.is_empty());

    let m = wait_metrics(&server, |m| m.routed_by(Match::WildcardSni) == 1 && m.routed_by(Match::ExactSni) == 1);
    assert_eq!(m.dropped_total(), 0);
    assert!(server.shutdown());
}

#[test]
fn forwards_the_hello_bytes_exactly() {
    let b = backend(Mode::ReplyAfter { n: CURL.len(), reply: Arc::new(REPLY.to_vec()) });
    let toml =
        format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("r", "sni = [\"www.example.com\"]", &[b.addr]));
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    assert_eq!(roundtrip(server.local_addrs()[0], CURL), REPLY);
    assert_eq!(b.next().bytes, CURL);
    server.shutdown();
}

#[test]
fn routes_by_dedicated_ip_with_and_without_sni_and_over_sni() {
    let ded = replier(1);
    let named = replier(1);
    let toml = format!(
        "{RUNTIME}{}{}{}",
        listener("0.0.0.0:0"),
        passthrough("ded", "dedicated_ips = [\"127.0.0.2\"]", &[ded.addr]),
        passthrough("named", "sni = [\"www.example.com\"]", &[named.addr]),
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let port = server.local_addrs()[0];
    // Dedicated IP, no SNI.
    assert_eq!(roundtrip(at("127.0.0.2", port), OPENSSL_NOSNI), REPLY);
    ded.next();
    // Dedicated IP wins over an SNI that another route owns.
    assert_eq!(roundtrip(at("127.0.0.2", port), OPENSSL_SNI), REPLY);
    ded.next();
    // The same SNI on a shared address goes to its route.
    assert_eq!(roundtrip(at("127.0.0.1", port), OPENSSL_SNI), REPLY);
    named.next();
    let m = wait_metrics(&server, |m| m.routed_by(Match::DedicatedIp) == 2 && m.routed_by(Match::ExactSni) == 1);
    assert_eq!(m.dropped_total(), 0);
    server.shutdown();
}

#[test]
fn fallbacks_and_drops_without_them() {
    let def = replier(1);
    let other = replier(1);
    let toml = format!(
        "{RUNTIME}{}[fallback]\nno_sni = \"def\"\nunknown_sni = \"other\"\n{}{}",
        listener("127.0.0.1:0"),
        passthrough("def", "", &[def.addr]),
        passthrough("other", "", &[other.addr]),
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    assert_eq!(roundtrip(addr, OPENSSL_NOSNI), REPLY);
    def.next();
    assert_eq!(roundtrip(addr, &rustls_hello(Some("nobody.test"), &[])), REPLY);
    other.next();
    wait_metrics(&server, |m| m.routed_by(Match::NoSniFallback) == 1 && m.routed_by(Match::UnknownSniFallback) == 1);
    server.shutdown();

    // Without fallbacks both are dropped and counted.
    let named = replier(1);
    let toml = format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("n", "sni = [\"a.test\"]", &[named.addr]));
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    // The alerts a TLS server sends when it has nothing for the name: access_denied (49, what
    // rustls sends when no certificate resolves) without SNI, unrecognized_name (112) for an
    // unknown one.
    expect_alert(addr, OPENSSL_NOSNI, 49);
    expect_alert(addr, &rustls_hello(Some("b.test"), &[]), 112);
    let m =
        wait_metrics(&server, |m| m.dropped_by(DropReason::NoSni) == 1 && m.dropped_by(DropReason::UnknownSni) == 1);
    assert_eq!(m.alerts_sent.get(Alert::AccessDenied), 1, "{m:#?}");
    assert_eq!(m.alerts_sent.get(Alert::UnrecognizedName), 1, "{m:#?}");
    server.shutdown();
}

#[test]
fn post_quantum_hello_split_with_a_pause_and_reframed() {
    let b = backend(Mode::ReplyAfter { n: CHROMIUM_PQ.len(), reply: Arc::new(REPLY.to_vec()) });
    let toml =
        format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("r", "sni = [\"www.example.com\"]", &[b.addr]));
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];

    // Two reads with a pause between: nothing is routed on the first.
    let mut c = connect(addr);
    send_partial_hello(&mut c, &CHROMIUM_PQ[..700], &server, &b);
    c.write_all(&CHROMIUM_PQ[700..]).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), REPLY);
    drop(c);
    assert_eq!(b.next().bytes, CHROMIUM_PQ);
    wait_metrics(&server, |m| m.routed_total() == 1);

    // Re-framed into many small records, sent in pieces.
    let many = reframe(CHROMIUM_PQ, 64);
    assert!(many.len() > CHROMIUM_PQ.len() + 100);
    let b2 = backend(Mode::ReplyAfter { n: many.len(), reply: Arc::new(REPLY.to_vec()) });
    let toml =
        format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("r", "sni = [\"www.example.com\"]", &[b2.addr]));
    let (server2, _f2) = start(&toml, &RuntimeOverrides::default());
    let mut c = connect(server2.local_addrs()[0]);
    // All but the last 40 bytes in pieces of 333; nothing is routed before those 40 arrive.
    let last = many.len() - 40;
    for part in many[..last - 333].chunks(333) {
        c.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    send_partial_hello(&mut c, &many[last - 333..last], &server2, &b2);
    c.write_all(&many[last..]).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), REPLY);
    drop(c);
    assert_eq!(b2.next().bytes, many);
    server.shutdown();
    server2.shutdown();
}

/// A listener whose accept queue is full: SYNs to it are dropped, so connects time out.
fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>, std::net::SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..4 {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            fill.push(c);
        }
    }
    (s, fill, addr)
}

#[test]
fn backend_failover_on_refusal_and_timeout() {
    let good = replier(1);
    let refused = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (_hole, _fill, hole) = blackhole();
    let toml = format!(
        "[runtime]\nworkers = 1\nconnect_timeout_ms = 500\n{}{}",
        listener("127.0.0.1:0"),
        passthrough("r", "sni = [\"www.example.com\"]", &[refused, hole, good.addr]),
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    assert_eq!(roundtrip(addr, OPENSSL_SNI), REPLY);
    good.next();
    wait_metrics(&server, |m| m.backend_connect_failures.total() == 2);
    server.shutdown();

    // All back ends down: dropped and counted.
    let toml = format!(
        "[runtime]\nworkers = 1\nconnect_timeout_ms = 500\n{}{}",
        listener("127.0.0.1:0"),
        passthrough("r", "sni = [\"www.example.com\"]", &[refused]),
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    expect_dropped(server.local_addrs()[0], OPENSSL_SNI);
    wait_metrics(&server, |m| m.dropped_by(DropReason::BackendsDown) == 1);
    server.shutdown();
}

fn proxy_case(
    version: &str,
    hello: &[u8],
    expected_header: impl Fn(std::net::SocketAddr, std::net::SocketAddr) -> Vec<u8>,
) {
    let probe_len = expected_header("127.0.0.1:1".parse().unwrap(), "127.0.0.2:2".parse().unwrap()).len();
    let b = backend(Mode::ReplyAfter { n: probe_len + hello.len(), reply: Arc::new(REPLY.to_vec()) });
    let toml = format!(
        "{RUNTIME}{}{}",
        listener("0.0.0.0:0"),
        passthrough("r", &format!("sni = [\"pp.test\"]\nproxy_protocol = \"{version}\""), &[b.addr]),
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let dst = at("127.0.0.2", server.local_addrs()[0]);
    let mut c = connect(dst);
    let src = c.local_addr().unwrap();
    c.write_all(hello).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), REPLY);
    let mut want = expected_header(src, dst);
    want.extend_from_slice(hello);
    assert_eq!(b.next().bytes, want);
    server.shutdown();
}

#[test]
fn proxy_protocol_v1_bytes() {
    let hello = rustls_hello(Some("pp.test"), &[b"h2"]);
    proxy_case("v1", &hello, |src, dst| {
        format!("PROXY TCP4 {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes()
    });
}

#[test]
fn proxy_protocol_v2_bytes() {
    let hello = rustls_hello(Some("pp.test"), &[b"h2", b"http/1.1"]);
    proxy_case("v2", &hello, |src, dst| {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x21, 0x11]);
        let body: u16 = 12 + (3 + 2) + (3 + 7);
        h.extend_from_slice(&body.to_be_bytes());
        let (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) = (src.ip(), dst.ip()) else { panic!("v4") };
        h.extend_from_slice(&s.octets());
        h.extend_from_slice(&d.octets());
        h.extend_from_slice(&src.port().to_be_bytes());
        h.extend_from_slice(&dst.port().to_be_bytes());
        h.extend_from_slice(&[0x01, 0, 2]);
        h.extend_from_slice(b"h2");
        h.extend_from_slice(&[0x02, 0, 7]);
        h.extend_from_slice(b"pp.test");
        h
    });
}

fn half_close_case(splice: bool) {
    let overrides = RuntimeOverrides { splice: Some(splice), ..Default::default() };
    // Client half-closes first: the back end sees EOF, then still answers.
    let b = backend(Mode::ReplyAtEof { reply: Arc::new(REPLY.to_vec()) });
    let toml =
        format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("r", "sni = [\"www.example.com\"]", &[b.addr]));
    let (server, _f) = start(&toml, &overrides);
    let mut c = connect(server.local_addrs()[0]);
    c.write_all(OPENSSL_SNI).unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), REPLY);
    let mut want = OPENSSL_SNI.to_vec();
    want.extend_from_slice(b"request");
    assert_eq!(b.next().bytes, want);
    server.shutdown();

    // Back end half-closes first: the client reads EOF and can still send.
    let b = backend(Mode::ReplyThenRead { n: OPENSSL_SNI.len(), reply: Arc::new(REPLY.to_vec()) });
    let toml =
        format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("r", "sni = [\"www.example.com\"]", &[b.addr]));
    let (server, _f) = start(&toml, &overrides);
    let mut c = connect(server.local_addrs()[0]);
    c.write_all(OPENSSL_SNI).unwrap();
    let mut got = vec![0u8; REPLY.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, REPLY);
    let mut rest = [0u8; 1];
    assert_eq!(c.read(&mut rest).unwrap(), 0, "EOF after the back end's half-close");
    c.write_all(b"after eof").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut want = OPENSSL_SNI.to_vec();
    want.extend_from_slice(b"after eof");
    assert_eq!(b.next().bytes, want);
    let m = wait_metrics(&server, |m| {
        m.open == 0 && (m.relays.get(RelayKind::Splice) + m.relays.get(RelayKind::Buffered)) == 1
    });
    assert_eq!(m.relays.get(RelayKind::Splice), splice as u64);
    server.shutdown();
}

#[test]
fn half_close_both_ways_splice() {
    half_close_case(true);
}

#[test]
fn half_close_both_ways_buffered() {
    half_close_case(false);
}

/// One connection relayed and closed.
fn relayed_one(m: &sni_dispatch::metrics::Counters) -> bool {
    m.open == 0 && m.relays.get(RelayKind::Splice) + m.relays.get(RelayKind::Buffered) == 1
}

/// `half_close = false` (nginx's `proxy_half_close off`): the first end of stream, from either
/// side, closes the connection both ways.
fn no_half_close_case(splice: bool) {
    let overrides = RuntimeOverrides { splice: Some(splice), ..Default::default() };
    let route = "sni = [\"www.example.com\"]\nhalf_close = false";
    // The back end ends first: the client reads the reply and the end while it still holds its
    // socket open, and the back end reads its end without the client having closed.
    let b = backend(Mode::ReplyThenRead { n: OPENSSL_SNI.len(), reply: Arc::new(REPLY.to_vec()) });
    let toml = format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("r", route, &[b.addr]));
    let (server, _f) = start(&toml, &overrides);
    let mut c = connect(server.local_addrs()[0]);
    c.write_all(OPENSSL_SNI).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), REPLY);
    assert_eq!(b.next().bytes, OPENSSL_SNI, "the back end's read ended while the client was still open");
    wait_metrics(&server, relayed_one);
    drop(c);
    server.shutdown();

    // The client ends first: the back end reads the request and its end, and its answer after
    // that reaches nobody (the connection is closed).
    let b = backend(Mode::ReplyAtEof { reply: Arc::new(REPLY.to_vec()) });
    let toml = format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("r", route, &[b.addr]));
    let (server, _f) = start(&toml, &overrides);
    let mut c = connect(server.local_addrs()[0]);
    c.write_all(OPENSSL_SNI).unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let got = read_to_end(&mut c).unwrap_or_default();
    assert!(got.is_empty(), "the answer after the client's end went through: {got:?}");
    let mut want = OPENSSL_SNI.to_vec();
    want.extend_from_slice(b"request");
    assert_eq!(b.next().bytes, want);
    let m = wait_metrics(&server, relayed_one);
    assert_eq!(m.relays.get(RelayKind::Splice), splice as u64);
    server.shutdown();
}

#[test]
fn no_half_close_ends_both_ways_at_the_first_end_splice() {
    no_half_close_case(true);
}

#[test]
fn no_half_close_ends_both_ways_at_the_first_end_buffered() {
    no_half_close_case(false);
}

#[test]
fn idle_and_hello_timeouts_close_connections() {
    let b = backend(Mode::Echo);
    let toml = format!(
        "[runtime]\nworkers = 1\nhello_timeout_ms = 300\nidle_timeout_ms = 400\n{}{}",
        listener("127.0.0.1:0"),
        passthrough("r", "sni = [\"www.example.com\"]", &[b.addr]),
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    // Idle: the hello is echoed back, then nothing moves.
    let mut c = connect(addr);
    c.write_all(OPENSSL_SNI).unwrap();
    let echoed = read_to_end(&mut c).unwrap();
    assert_eq!(echoed, OPENSSL_SNI);
    // Hello timeout: half a hello, then silence.
    let mut c = connect(addr);
    c.write_all(&OPENSSL_SNI[..20]).unwrap();
    assert!(read_to_end(&mut c).unwrap().is_empty());
    wait_metrics(&server, |m| m.idle_timeouts == 1 && m.dropped_by(DropReason::HelloTimeout) == 1 && m.open == 0);
    server.shutdown();
}

/// An SSL 3.0 ClientHello (no extensions, record and client version 3.0).
fn sslv3_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x00];
    body.extend_from_slice(&[0x11; 32]);
    body.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]);
    let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x00, 0x00, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn bad_input_is_dropped_and_counted() {
    let b = replier(1);
    let strict = replier(1);
    let toml = format!(
        "[runtime]\nworkers = 1\nmax_hello_bytes = 1024\n{}[fallback]\nno_sni = \"r\"\nunknown_sni = \"r\"\n{}{}",
        listener("127.0.0.1:0"),
        passthrough("r", "", &[b.addr]),
        passthrough("strict", "sni = [\"www.example.com\"]\nmin_tls = \"1.3\"", &[strict.addr]),
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    // Each refusal gets the alert a rustls server sends for the same bytes (hello::Reject::alert)
    // before the close: decode_error (50), protocol_version (70), or nothing.
    expect_alert(addr, b"\x00\x01garbage garbage garbage", 50);
    expect_alert(addr, b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n", 50);
    expect_alert(addr, &[0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10], 50);
    expect_alert(addr, &sslv3_hello(), 70);
    // Below the passthrough route's min_tls: protocol_version, as rustls on a terminating route.
    expect_alert(addr, include_bytes!("../src/hello/testdata/openssl-tls12.bin"), 70);
    // 1923 bytes > max_hello_bytes: rustls closes such a hello without an alert.
    assert_eq!(expect_dropped(addr, CHROMIUM_PQ), None);
    let mut malformed = OPENSSL_SNI.to_vec();
    malformed[6..9].copy_from_slice(&[0x00, 0x00, 0x05]); // handshake length disagrees with its body
    expect_alert(addr, &malformed[..60], 50);
    let m = wait_metrics(&server, |m| m.dropped_total() == 7);
    assert_eq!(m.alerts_sent.get(Alert::DecodeError), 4, "{m:#?}");
    assert_eq!(m.alerts_sent.get(Alert::ProtocolVersion), 2, "{m:#?}");
    assert_eq!(m.alerts_sent.total(), 6, "{m:#?}");
    for r in [
        DropReason::NotTls,
        DropReason::Http,
        DropReason::SslV2,
        DropReason::Ssl3OrOlder,
        DropReason::BelowMinTls,
        DropReason::Oversize,
        DropReason::Malformed,
    ] {
        assert_eq!(m.dropped_by(r), 1, "{}: {m:#?}", r.as_str());
    }
    // The server still serves.
    assert_eq!(roundtrip(addr, &rustls_hello(Some("ok.test"), &[])), REPLY);
    server.shutdown();
}

/// Pushes `n` bytes of `Stream(seed)` into `w`, then shuts its write half.
fn push(mut w: std::net::TcpStream, seed: u64, n: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut st = Stream::new(seed);
        let mut chunk = Vec::with_capacity(BLOCK);
        let mut left = n;
        while left > 0 {
            let k = left.min(256 * 1024) as usize;
            st.next_chunk(&mut chunk, k);
            w.write_all(&chunk).expect("bulk write");
            left -= k as u64;
        }
        w.shutdown(Shutdown::Write).unwrap();
    })
}

/// Reads exactly `n` bytes of `Stream(seed)` then EOF from `r`, verifying every byte.
fn pull(r: &mut std::net::TcpStream, seed: u64, n: u64) {
    let mut st = Stream::new(seed);
    let mut buf = vec![0u8; 256 * 1024];
    let mut scratch = Vec::with_capacity(buf.len());
    let mut got = 0u64;
    loop {
        let k = r.read(&mut buf).expect("bulk read");
        if k == 0 {
            break;
        }
        assert!(st.verify(&buf[..k], &mut scratch), "corrupt bytes near offset {got}");
        got += k as u64;
        assert!(got <= n, "more bytes than sent");
    }
    assert_eq!(got, n, "stream ended early");
}

fn bulk_case(splice: bool) {
    let n = bulk_bytes();
    let hello = OPENSSL_SNI;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = l.local_addr().unwrap();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut h = vec![0u8; hello.len()];
        s.read_exact(&mut h).unwrap();
        assert_eq!(h, hello);
        let w = push(s.try_clone().unwrap(), 2, n);
        pull(&mut s, 1, n);
        w.join().unwrap();
    });
    let overrides = RuntimeOverrides { splice: Some(splice), ..Default::default() };
    let toml = format!(
        "{RUNTIME}{}{}",
        listener("127.0.0.1:0"),
        passthrough("r", "sni = [\"www.example.com\"]", &[backend_addr])
    );
    let (server, _f) = start(&toml, &overrides);
    let mut c = connect(server.local_addrs()[0]);
    c.write_all(hello).unwrap();
    let w = push(c.try_clone().unwrap(), 1, n);
    pull(&mut c, 2, n);
    w.join().unwrap();
    backend.join().unwrap();
    drop(c);
    let m = wait_metrics(&server, |m| m.open == 0 && m.bytes.get(Direction::BackendToClient) == n);
    assert_eq!(m.bytes.get(Direction::ClientToBackend), n + hello.len() as u64);
    if splice {
        assert_eq!((m.relays.get(RelayKind::Splice), m.relays.get(RelayKind::Buffered)), (1, 0));
    } else {
        assert_eq!((m.relays.get(RelayKind::Splice), m.relays.get(RelayKind::Buffered)), (0, 1));
    }
    assert!(server.shutdown());
}

#[test]
fn bulk_both_ways_checksummed_splice() {
    bulk_case(true);
}

#[test]
fn bulk_both_ways_checksummed_buffered() {
    bulk_case(false);
}

#[test]
fn exhausted_pipe_pool_copies_bursts_and_counts_them() {
    let b = backend(Mode::Echo);
    // No pipe at all: every burst the spliced relay would splice is copied through a buffer
    // instead. A stream each way (4 MiB), since a direction splices only once one of its bursts
    // has filled the copy buffer.
    let overrides = RuntimeOverrides { pipe_pool: Some(0), ..Default::default() };
    let toml =
        format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("r", "sni = [\"www.example.com\"]", &[b.addr]));
    let (server, _f) = start(&toml, &overrides);
    let mut c = connect(server.local_addrs()[0]);
    c.write_all(OPENSSL_SNI).unwrap();
    let data: Vec<u8> = (0..4usize << 20).map(|i| (i % 251) as u8).collect();
    let (mut w, sent) = (c.try_clone().unwrap(), data.clone());
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_to_end(&mut c).unwrap();
    writer.join().unwrap();
    let mut want = OPENSSL_SNI.to_vec();
    want.extend_from_slice(&data);
    assert!(got == want, "{} of {} bytes came back", got.len(), want.len());
    let m = wait_metrics(&server, |m| m.open == 0 && m.relays.get(RelayKind::Splice) == 1);
    assert!(m.splice_fallbacks.get(PipeMiss::PoolFull) >= 2, "each direction's bursts: {m:#?}");
    assert_eq!(m.pipes_open, 0);
    server.shutdown();
}

/// Pipes are lent per burst: connections that are open but idle hold none, so two pipes serve
/// many spliced connections at once, and the pool is empty again once the worker is quiet.
#[test]
fn idle_spliced_connections_hold_no_pipes() {
    let b = backend(Mode::Echo);
    let overrides = RuntimeOverrides { pipe_pool: Some(2), ..Default::default() };
    let toml =
        format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("r", "sni = [\"www.example.com\"]", &[b.addr]));
    let (server, _f) = start(&toml, &overrides);
    let mut conns = Vec::new();
    for i in 0..20u8 {
        let mut c = connect(server.local_addrs()[0]);
        c.write_all(OPENSSL_SNI).unwrap();
        let mut echoed = vec![0u8; OPENSSL_SNI.len()];
        c.read_exact(&mut echoed).unwrap();
        // Bytes both ways after the hello, one connection at a time: each burst borrows a pipe.
        c.write_all(&[i; 1000]).unwrap();
        let mut got = [0u8; 1000];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, [i; 1000]);
        conns.push(c);
    }
    // Quiet, all 20 still open: the pool closes what it does not need (two trims, about 2 s).
    let m = wait_metrics(&server, |m| m.pipes_open == 0 && m.open == 20);
    assert_eq!(m.splice_fallbacks.total(), 0, "every burst found a pipe: {m:#?}");
    for mut c in conns {
        c.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_end(&mut c).unwrap().is_empty());
    }
    // 20 relays spliced, none of their bursts copied for want of a pipe.
    let m = wait_metrics(&server, |m| m.open == 0 && m.relays.get(RelayKind::Splice) == 20);
    assert_eq!(m.splice_fallbacks.total(), 0, "{m:#?}");
    server.shutdown();
}

// ---- the real binary ----------------------------------------------------------------------

fn binary_config(extra_runtime: &str, routes: &str) -> (ConfigFile, std::net::SocketAddr) {
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let f = config_file(&format!("[runtime]\nworkers = 1\n{extra_runtime}\n{}{routes}", listener(&addr.to_string())));
    (f, addr)
}

#[test]
fn silent_connections_time_out_and_fds_return_to_baseline() {
    let b = replier(1);
    let (f, addr) =
        binary_config("hello_timeout_ms = 1500", &passthrough("r", "sni = [\"www.example.com\"]", &[b.addr]));
    let p = spawn_binary(&f, &[], addr);
    let pid = p.pid();
    // Settle: the probe connection of spawn_binary has been dropped by now (hello timeout at worst).
    assert!(wait_until(Duration::from_secs(20), || {
        let a = fd_count(pid);
        std::thread::sleep(Duration::from_millis(300));
        a == fd_count(pid) && p.stderr().contains("serving")
    }));
    std::thread::sleep(Duration::from_millis(1600));
    let baseline = fd_count(pid);
    let mut conns = Vec::new();
    for i in 0..2000 {
        let mut c = connect(addr);
        if i % 2 == 0 {
            // Half send part of a hello; half send nothing.
            let _ = c.write_all(&OPENSSL_SNI[..10]);
        }
        conns.push(c);
    }
    assert!(fd_count(pid) > baseline, "connections hold fds");
    // Every connection is closed by the proxy.
    for c in conns.iter_mut() {
        assert!(read_to_end(c).unwrap_or_default().is_empty());
    }
    drop(conns);
    let back = wait_until(Duration::from_secs(30), || fd_count(pid) <= baseline);
    assert!(back, "fds: baseline {baseline}, now {}", fd_count(pid));
    // Still serving.
    assert_eq!(roundtrip(addr, OPENSSL_SNI), REPLY);
}

#[test]
fn no_io_wq_threads_under_load() {
    let echo = backend(Mode::Echo);
    let (f, addr) = binary_config("", &passthrough("r", "sni = [\"www.example.com\"]", &[echo.addr]));
    let p = spawn_binary(&f, &[], addr);
    let pid = p.pid();
    // 50 idle spliced connections plus 8 busy ones, then look at the threads.
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut c = connect(addr);
        c.write_all(OPENSSL_SNI).unwrap();
        let mut back = vec![0u8; OPENSSL_SNI.len()];
        c.read_exact(&mut back).unwrap();
        idle.push(c);
    }
    let busy: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                c.write_all(OPENSSL_SNI).unwrap();
                let mut back = vec![0u8; OPENSSL_SNI.len()];
                c.read_exact(&mut back).unwrap();
                let msg = [7u8; 1000];
                let mut got = [0u8; 1000];
                for _ in 0..300 {
                    c.write_all(&msg).unwrap();
                    c.read_exact(&mut got).unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.extend(thread_names(pid).into_iter().filter(|n| n.starts_with("iou-wrk")));
        std::thread::sleep(Duration::from_millis(25));
    }
    for t in busy {
        t.join().unwrap();
    }
    seen.extend(thread_names(pid).into_iter().filter(|n| n.starts_with("iou-wrk")));
    assert!(seen.is_empty(), "io-wq threads appeared: {seen:?}");
    drop(idle);
}

#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    let echo = backend(Mode::Echo);
    let (f, addr) =
        binary_config("drain_timeout_ms = 20000", &passthrough("r", "sni = [\"www.example.com\"]", &[echo.addr]));
    let mut p = spawn_binary(&f, &[], addr);
    let mut c = connect(addr);
    c.write_all(OPENSSL_SNI).unwrap();
    let mut back = vec![0u8; OPENSSL_SNI.len()];
    c.read_exact(&mut back).unwrap();
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(p.pid() as i32, libc::SIGTERM) };
    // New connections are refused once the listener is closed.
    assert!(wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_err()));
    // The open one still relays.
    c.write_all(b"still here").unwrap();
    let mut got = [0u8; 10];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
    assert!(p.child.try_wait().unwrap().is_none(), "exited before the connection closed");
    c.shutdown(Shutdown::Write).unwrap();
    let _ = read_to_end(&mut c);
    let st = p.signal_and_wait(0, Duration::from_secs(20)).expect("exits after draining");
    assert!(st.success(), "exit status {st}: {}", p.stderr());
}

#[test]
fn end_to_end_with_openssl_s_server_s_client_and_curl() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not installed; skipping");
        return;
    }
    let leaf = Leaf::self_signed(&["www.example.com"]).unwrap();
    let (f, addr) = binary_config("", "");
    let files = leaf.write(f.dir.path(), "s_server").unwrap();
    let sport = free_port();
    let server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(sport.to_string())
        .arg("-cert")
        .arg(&files.cert)
        .arg("-key")
        .arg(&files.key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(server);
    let backend = std::net::SocketAddr::from(([127, 0, 0, 1], sport));
    assert!(wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(backend).is_ok()));
    let toml =
        std::fs::read_to_string(&f.path).unwrap() + &passthrough("site", "sni = [\"www.example.com\"]", &[backend]);
    std::fs::write(&f.path, toml).unwrap();
    let _p = spawn_binary(&f, &[], addr);

    let mut s_client = std::process::Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect"])
        .arg(addr.to_string())
        .args(["-servername", "www.example.com", "-ign_eof"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    s_client.stdin.take().unwrap().write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let out = s_client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The certificate the client got is the back end's (passthrough: the proxy has none).
    let pem = leaf.cert_pem();
    let first_line = pem.lines().nth(1).unwrap();
    assert!(text.contains(first_line), "not the back end's certificate: {text}");
    assert!(text.contains("s_server"), "no s_server page through the proxy: {text}");

    let out = std::process::Command::new("curl")
        .args(["-sSk", "--max-time", "20", "--resolve"])
        .arg(format!("www.example.com:{}:127.0.0.1", addr.port()))
        .arg(format!("https://www.example.com:{}/", addr.port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("s_server"), "curl: {text} {}", String::from_utf8_lossy(&out.stderr));
}

/// One short connection through `addr` to a replier: the hello out, the reply back (checked).
/// Returns the client's socket, still open.
fn hello_and_reply(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut c = connect(addr);
    c.write_all(OPENSSL_SNI).unwrap();
    let mut got = [0u8; REPLY.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got[..], REPLY);
    c
}

/// The client's hello is not acknowledged on its own: the listener's delayed-ACK mode holds the
/// ACK for the first bytes back (here the back end's reply), so the client receives the SYN-ACK
/// and then the reply, two segments, where a quick ACK would make three. Counted on the client
/// (`tcpi_segs_in`) over 20 connections; a delayed ACK whose timer fires first (a stalled
/// machine) sends it alone, so the test asks that most connections, not all, save the segment.
#[test]
fn the_hellos_ack_rides_with_the_reply() {
    use std::os::fd::OwnedFd;
    let b = replier(OPENSSL_SNI.len());
    let toml =
        format!("{RUNTIME}{}{}", listener("127.0.0.1:0"), passthrough("r", "sni = [\"www.example.com\"]", &[b.addr]));
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    let mut saved = 0;
    for _ in 0..20 {
        let c = hello_and_reply(addr);
        let counted = sni_dispatch::sys::Socket::from(OwnedFd::from(c));
        if counted.segments_in().unwrap() == 2 {
            saved += 1;
        }
        let _ = b.next();
    }
    assert!(saved >= 10, "{saved} of 20 connections got the hello's ACK with the reply");
    server.shutdown();
}

/// Runs the binary with one passthrough route and attaches Debian's `strace -e trace=TRACE` to
/// its worker thread over `conns` connections made one at a time (each: the hello in, the back
/// end's reply out, the back end's close), so that the worker sleeps between them. Returns what
/// strace wrote, one system call a line.
fn strace_worker(trace: &str, conns: usize) -> String {
    let b = replier(OPENSSL_SNI.len());
    let (f, addr) = binary_config("", &passthrough("r", "sni = [\"www.example.com\"]", &[b.addr]));
    let p = spawn_binary(&f, &[], addr);
    // The listener accepts (into its backlog) before the worker thread has started and named
    // itself: wait for the thread.
    let task = format!("/proc/{}/task", p.pid());
    let find = || {
        std::fs::read_dir(&task)
            .ok()?
            .flatten()
            .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "sni-worker-0"))
            .map(|t| t.file_name().to_string_lossy().into_owned())
    };
    assert!(wait_until(Duration::from_secs(20), || find().is_some()), "no thread named sni-worker-0");
    let worker = find().unwrap();
    let out = f.dir.path().join("strace.out");
    let mut strace = std::process::Command::new("strace")
        .args(["-e", &format!("trace={trace}"), "-e", "signal=none", "-o"])
        .arg(&out)
        .args(["-p", &worker])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn strace");
    // strace says "Process N attached" on stderr once it traces the thread.
    let mut err = std::io::BufReader::new(strace.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("attached"), "strace: {line}");
    for _ in 0..conns {
        drop(hello_and_reply(addr));
        let _ = b.next();
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child's pid: strace detaches and writes out what it saw.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().unwrap();
    std::fs::read_to_string(&out).unwrap()
}

/// A short response and the back end's FIN after it are read in one system call: the burst's
/// read and the read that looks for the end of the stream go together in one `recvmmsg(2)` of
/// two messages (`relay::copy::read`, `Socket::try_recv_twice`). Each connection's back-end burst
/// is one `recvmmsg`; the single reads left are the hello's and the client's end (and the back
/// end's end when its FIN came after the look), at most 3 a connection where there were 4
/// (hello, burst, the look, the client's end) with a read of their own each.
#[test]
fn a_burst_and_the_fin_after_it_are_one_read() {
    if std::process::Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: strace is not installed (.ci/run installs it)");
        return;
    }
    let conns = 40;
    let seen = strace_worker("recvfrom,recvmmsg", conns);
    let count = |name: &str| seen.lines().filter(|l| l.starts_with(name)).count();
    let (single, paired) = (count("recvfrom("), count("recvmmsg("));
    assert!(paired >= conns, "{paired} recvmmsg for {conns} connections (recvfrom: {single}):\n{seen}");
    assert!(single <= 3 * conns, "{single} recvfrom for {conns} connections (recvmmsg: {paired})");
}

/// A worker parks in `epoll_wait` without an `io_uring_enter` that submits nothing: the vendored
/// tokio-uring skips it (src/sys/vendor/tokio-uring/PATCHES.md). Upstream entered the ring before
/// every park, and most parks submit nothing (a completion that wakes the worker interrupts its
/// wait, and the wait that follows submits nothing): at 1,000 connections a second a fifth of the
/// worker's system calls. `strace` (Debian's) watches the binary's worker over 40 connections
/// made one at a time, so that the worker sleeps between them; every `io_uring_enter` it makes
/// must submit something or wait for completions.
#[test]
fn a_worker_parks_without_an_empty_ring_enter() {
    if std::process::Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: strace is not installed (.ci/run installs it)");
        return;
    }
    let seen = strace_worker("io_uring_enter", 40);
    let enters: Vec<&str> = seen.lines().filter(|l| l.starts_with("io_uring_enter(")).collect();
    // io_uring_enter(fd, to_submit, min_complete, flags, ...)
    let empty = enters
        .iter()
        .filter(|l| {
            let args: Vec<&str> = l.split(['(', ',']).map(str::trim).collect();
            args.get(2) == Some(&"0") && !args.get(4).is_some_and(|f| f.contains("GETEVENTS"))
        })
        .count();
    assert!(!enters.is_empty(), "strace saw no io_uring_enter: {seen}");
    assert!(empty <= 4, "{empty} of {} io_uring_enter calls submitted nothing and waited for nothing", enters.len());
}
