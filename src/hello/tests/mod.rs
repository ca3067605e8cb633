mod framing;
mod ja4;
mod message;
mod vs_rustls;

use super::*;
use proptest::prelude::*;

const MAX: usize = DEFAULT_MAX_HELLO_BYTES;

const OPENSSL_SNI: &[u8] = include_bytes!("../testdata/openssl-sni.bin");
const OPENSSL_NOSNI: &[u8] = include_bytes!("../testdata/openssl-nosni.bin");
const OPENSSL_TLS12: &[u8] = include_bytes!("../testdata/openssl-tls12.bin");
const CURL: &[u8] = include_bytes!("../testdata/curl.bin");
const CHROMIUM_PQ: &[u8] = include_bytes!("../testdata/chromium-pq.bin");
const FIREFOX: &[u8] = include_bytes!("../testdata/firefox.bin");
const GO: &[u8] = include_bytes!("../testdata/go.bin");
const JAVA: &[u8] = include_bytes!("../testdata/java.bin");
const PYTHON: &[u8] = include_bytes!("../testdata/python.bin");
const RUSTLS: &[u8] = include_bytes!("../testdata/rustls.bin");

const CAPTURES: &[(&str, &[u8])] = &[
    ("openssl-sni", OPENSSL_SNI),
    ("openssl-nosni", OPENSSL_NOSNI),
    ("openssl-tls12", OPENSSL_TLS12),
    ("curl", CURL),
    ("chromium-pq", CHROMIUM_PQ),
    ("firefox", FIREFOX),
    ("go", GO),
    ("java", JAVA),
    ("python", PYTHON),
    ("rustls", RUSTLS),
];

const X25519: u16 = 0x001d;
const X25519_MLKEM768: u16 = 0x11ec;

// ---------------------------------------------------------------------------------------
// Helpers

/// A deterministic generator for seeded mutations (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// 1 to 3 random byte edits.
    fn mutate(&mut self, buf: &mut [u8]) {
        for _ in 0..1 + self.below(3) {
            self.mutate_once(buf);
        }
    }

    /// One random byte edit: a new value, or a length-style nudge by ±1.
    fn mutate_once(&mut self, buf: &mut [u8]) {
        let i = self.below(buf.len());
        buf[i] = match self.below(3) {
            0 => self.next() as u8,
            1 => buf[i].wrapping_add(1),
            _ => buf[i].wrapping_sub(1),
        };
    }
}

/// Owned copy of everything a ClientHello exposes except its framing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    sni: Option<String>,
    has_sni_ext: bool,
    alpn: Vec<Vec<u8>>,
    legacy_version: u16,
    max_version: u16,
    ech: bool,
    groups: Vec<u16>,
    suites: Vec<u16>,
}

fn summary(h: &ClientHello<'_>) -> Summary {
    Summary {
        sni: h.sni().map(str::to_owned),
        has_sni_ext: h.has_sni_extension(),
        alpn: h.alpn().map(|p| p.to_vec()).collect(),
        legacy_version: h.legacy_version(),
        max_version: h.max_version(),
        ech: h.has_ech(),
        groups: h.key_share_groups().collect(),
        suites: h.cipher_suites().collect(),
    }
}

fn complete(buf: &[u8]) -> ClientHello<'_> {
    match parse(buf, MAX) {
        Parsed::Complete(h) => h,
        other => panic!("expected Complete, got {other:?}"),
    }
}

fn rejected(buf: &[u8]) -> Reject {
    match parse(buf, MAX) {
        Parsed::Rejected(r) => r,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// The handshake message carried by a sequence of handshake records.
fn message(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = records;
    while rest.len() >= 5 {
        let n = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        out.extend_from_slice(&rest[5..5 + n]);
        rest = &rest[5 + n..];
    }
    assert!(rest.is_empty());
    out
}

/// `msg` framed into handshake records of at most `size` payload bytes.
fn reframe(msg: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in msg.chunks(size) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn u16b(v: usize) -> [u8; 2] {
    (v as u16).to_be_bytes()
}

/// Builder for hand-crafted ClientHellos.
#[derive(Clone)]
struct Hello {
    msg_type: u8,
    legacy_version: u16,
    random: [u8; 32],
    session_id: Vec<u8>,
    suites: Vec<u8>,
    compression: Vec<u8>,
    /// None: no extensions block at all.
    exts: Option<Vec<(u16, Vec<u8>)>>,
}

impl Hello {
    fn new() -> Self {
        Hello {
            msg_type: 1,
            legacy_version: 0x0303,
            random: [0x42; 32],
            session_id: vec![7; 32],
            suites: vec![0x13, 0x01, 0xc0, 0x2f],
            compression: vec![0],
            exts: Some(vec![]),
        }
    }

    fn ext(mut self, typ: u16, data: Vec<u8>) -> Self {
        self.exts.get_or_insert_with(Vec::new).push((typ, data));
        self
    }

    fn sni(self, name: &[u8]) -> Self {
        self.ext(0, sni_ext(&[(0, name)]))
    }

    fn body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.legacy_version.to_be_bytes());
        b.extend_from_slice(&self.random);
        b.push(self.session_id.len() as u8);
        b.extend_from_slice(&self.session_id);
        b.extend_from_slice(&u16b(self.suites.len()));
        b.extend_from_slice(&self.suites);
        b.push(self.compression.len() as u8);
        b.extend_from_slice(&self.compression);
        if let Some(exts) = &self.exts {
            let mut e = Vec::new();
            for (t, d) in exts {
                e.extend_from_slice(&t.to_be_bytes());
                e.extend_from_slice(&u16b(d.len()));
                e.extend_from_slice(d);
            }
            b.extend_from_slice(&u16b(e.len()));
            b.extend_from_slice(&e);
        }
        b
    }

    fn message(&self) -> Vec<u8> {
        let body = self.body();
        let mut m = vec![self.msg_type];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        m.extend_from_slice(&body);
        m
    }

    fn bytes(&self) -> Vec<u8> {
        reframe(&self.message(), 16384)
    }

    /// Decomposes a well-formed ClientHello message (a capture's), for editing.
    fn from_message(msg: &[u8]) -> Self {
        let b = &msg[4..];
        let sid_len = usize::from(b[34]);
        let mut at = 35 + sid_len;
        let session_id = b[35..at].to_vec();
        let n = usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
        let suites = b[at + 2..at + 2 + n].to_vec();
        at += 2 + n;
        let n = usize::from(b[at]);
        let compression = b[at + 1..at + 1 + n].to_vec();
        at += 1 + n;
        let exts = (at < b.len()).then(|| {
            let mut exts = Vec::new();
            let mut e = &b[at + 2..];
            while e.len() >= 4 {
                let t = u16::from_be_bytes([e[0], e[1]]);
                let n = usize::from(u16::from_be_bytes([e[2], e[3]]));
                exts.push((t, e[4..4 + n].to_vec()));
                e = &e[4 + n..];
            }
            exts
        });
        Hello {
            msg_type: msg[0],
            legacy_version: u16::from_be_bytes([b[0], b[1]]),
            random: b[2..34].try_into().unwrap(),
            session_id,
            suites,
            compression,
            exts,
        }
    }

    /// Replaces extension `typ`'s data (or adds the extension at the end).
    fn set_ext(mut self, typ: u16, data: Vec<u8>) -> Self {
        let exts = self.exts.get_or_insert_with(Vec::new);
        match exts.iter_mut().find(|(t, _)| *t == typ) {
            Some(e) => e.1 = data,
            None => exts.push((typ, data)),
        }
        self
    }

    fn has_ext(&self, typ: u16) -> bool {
        self.exts.iter().flatten().any(|(t, _)| *t == typ)
    }
}

fn sni_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (t, name) in entries {
        list.push(*t);
        list.extend_from_slice(&u16b(name.len()));
        list.extend_from_slice(name);
    }
    let mut d = u16b(list.len()).to_vec();
    d.extend_from_slice(&list);
    d
}

fn alpn_ext(protos: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protos {
        list.push(p.len() as u8);
        list.extend_from_slice(p);
    }
    let mut d = u16b(list.len()).to_vec();
    d.extend_from_slice(&list);
    d
}

fn versions_ext(vs: &[u16]) -> Vec<u8> {
    let mut d = vec![(vs.len() * 2) as u8];
    for v in vs {
        d.extend_from_slice(&v.to_be_bytes());
    }
    d
}

/// Parses `buf` after checking that every strict prefix is NeedMore.
fn parse_checking_prefixes(buf: &[u8]) -> Parsed<'_> {
    for i in 0..buf.len() {
        assert_eq!(parse(&buf[..i], MAX), Parsed::NeedMore, "prefix of {i} bytes");
    }
    parse(buf, MAX)
}

// ---------------------------------------------------------------------------------------
// Real captures

#[test]
fn openssl_sni() {
    let h = complete(OPENSSL_SNI);
    assert_eq!(h.sni(), Some("www.example.com"));
    assert!(h.has_sni_extension());
    assert_eq!(h.alpn().count(), 0);
    assert_eq!(h.legacy_version(), TLS1_2);
    assert_eq!(h.max_version(), TLS1_3);
    assert!(!h.has_ech());
    assert_eq!(h.key_share_groups().collect::<Vec<_>>(), [X25519]);
    assert!(h.cipher_suites().any(|s| s == 0x1301));
    assert_eq!(h.len(), OPENSSL_SNI.len());
    assert!(!h.is_record_fragmented());
}

#[test]
fn openssl_nosni() {
    let h = complete(OPENSSL_NOSNI);
    assert_eq!(h.sni(), None);
    assert!(!h.has_sni_extension());
    assert_eq!(h.max_version(), TLS1_3);
    assert_eq!(h.key_share_groups().collect::<Vec<_>>(), [X25519]);
    assert_eq!(h.len(), OPENSSL_NOSNI.len());
}

#[test]
fn openssl_tls12() {
    let h = complete(OPENSSL_TLS12);
    assert_eq!(h.sni(), Some("www.example.com"));
    assert_eq!(h.legacy_version(), TLS1_2);
    assert_eq!(h.max_version(), TLS1_2);
    assert_eq!(h.key_share_groups().count(), 0);
    assert_eq!(h.len(), OPENSSL_TLS12.len());
}

#[test]
fn curl() {
    let h = complete(CURL);
    assert_eq!(h.sni(), Some("www.example.com"));
    assert_eq!(h.alpn().collect::<Vec<_>>(), [&b"h2"[..], b"http/1.1"]);
    assert!(h.alpn().all(|p| p.borrowed().is_some()));
    assert_eq!(h.max_version(), TLS1_3);
    assert_eq!(h.key_share_groups().collect::<Vec<_>>(), [X25519]);
    assert_eq!(h.len(), CURL.len());
}

#[test]
fn chromium_pq() {
    let h = complete(CHROMIUM_PQ);
    assert_eq!(h.sni(), Some("www.example.com"));
    assert_eq!(h.alpn().collect::<Vec<_>>(), [&b"h2"[..], b"http/1.1"]);
    assert_eq!(h.legacy_version(), TLS1_2);
    assert_eq!(h.max_version(), TLS1_3);
    assert!(h.has_ech(), "Chromium sends (GREASE) ECH");
    let groups: Vec<u16> = h.key_share_groups().collect();
    assert_eq!(groups, [X25519_MLKEM768, X25519]);
    assert!(h.cipher_suites().all(|s| !is_grease(s)));
    assert_eq!(h.len(), CHROMIUM_PQ.len());
    assert!(CHROMIUM_PQ.len() > 1800);
}

/// What each of the newer captures shows (see testdata/README.md).
#[test]
fn firefox_go_java_python_rustls() {
    for (name, cap) in [("firefox", FIREFOX), ("go", GO), ("java", JAVA), ("python", PYTHON), ("rustls", RUSTLS)] {
        let h = complete(cap);
        assert_eq!(h.sni(), Some("www.example.com"), "{name}");
        assert_eq!(h.max_version(), TLS1_3, "{name}");
        assert_eq!(h.len(), cap.len(), "{name}");
        assert!(h.key_share_groups().any(|g| g == X25519), "{name}");
        assert!(h.signature_algorithms().count() > 0, "{name}");
        let alpn: Vec<_> = h.alpn().collect();
        assert_eq!(alpn, [&b"h2"[..], b"http/1.1"], "{name}");
    }
    assert!(complete(FIREFOX).has_ech(), "Firefox sends (GREASE) ECH");
    assert_eq!(complete(JAVA).min_version(), TLS1_2);
}

/// Re-creates testdata/rustls.bin: the ClientHello a rustls 0.23 client (this crate's
/// rustls, default provider) writes for www.example.com with ALPN h2 and http/1.1.
#[test]
#[ignore]
fn write_rustls_capture() {
    let mut cfg = ::rustls::ClientConfig::builder()
        .with_root_certificates(::rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("www.example.com").unwrap();
    let mut conn = ::rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/hello/testdata/rustls.bin");
    std::fs::write(path, &out).unwrap();
}

#[test]
fn trailing_bytes_after_hello_are_not_consumed() {
    for (name, cap) in CAPTURES {
        let mut buf = cap.to_vec();
        buf.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x10, 1, 2, 3]);
        let h = complete(&buf);
        assert_eq!(h.len(), cap.len(), "{name}");
        assert_eq!(h, complete(cap), "{name}");
    }
}

#[test]
fn every_prefix_of_every_capture_needs_more() {
    for (name, cap) in CAPTURES {
        match parse_checking_prefixes(cap) {
            Parsed::Complete(h) => assert_eq!(h.len(), cap.len(), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn reframed_captures_give_identical_results() {
    for (name, cap) in CAPTURES {
        let whole = summary(&complete(cap));
        let msg = message(cap);
        for size in [1, 2, 3, 5, 7, 100, 512, 16384] {
            let buf = reframe(&msg, size);
            let h = complete(&buf);
            assert_eq!(summary(&h), whole, "{name} in records of {size}");
            assert_eq!(h.len(), buf.len(), "{name} in records of {size}");
            assert_eq!(h.is_record_fragmented(), size < msg.len(), "{name} {size}");
        }
    }
}

#[test]
fn reframed_prefixes_need_more() {
    for (name, cap) in CAPTURES {
        let msg = message(cap);
        for size in [1, 2, 100, 512] {
            let buf = reframe(&msg, size);
            for i in 0..buf.len() {
                assert_eq!(parse(&buf[..i], MAX), Parsed::NeedMore, "{name} {size} {i}");
            }
        }
    }
}

#[test]
fn alpn_straddling_records_is_copied() {
    let buf = reframe(&message(CURL), 3);
    let h = complete(&buf);
    let protos: Vec<_> = h.alpn().collect();
    assert_eq!(protos, [&b"h2"[..], b"http/1.1"]);
    assert!(protos.iter().any(|p| p.borrowed().is_none()));
    assert!(protos[1] == b"http/1.1");
}

#[test]
fn sni_straddling_records() {
    let buf = reframe(&Hello::new().sni(b"WWW.Example.COM.").message(), 4);
    assert_eq!(complete(&buf).sni(), Some("www.example.com"));
}

// ---------------------------------------------------------------------------------------
// Hand-crafted accepts

#[test]
fn minimal_hellos() {
    let h = Hello::new();
    let buf = h.bytes();
    let c = complete(&buf);
    assert_eq!((c.sni(), c.max_version(), c.len()), (None, TLS1_2, buf.len()));
    assert_eq!(c.cipher_suites().collect::<Vec<_>>(), [0x1301, 0xc02f]);

    // No extensions block at all (SSL 3.0-era layout), TLS 1.0.
    let mut h = Hello::new();
    h.exts = None;
    h.legacy_version = TLS1_0;
    let buf = h.bytes();
    assert_eq!(complete(&buf).max_version(), TLS1_0);

    // Empty session id, empty key_share list (asks for HelloRetryRequest).
    let mut h = Hello::new().ext(51, vec![0, 0]).ext(43, versions_ext(&[0x0304]));
    h.session_id.clear();
    let buf = h.bytes();
    let c = complete(&buf);
    assert_eq!((c.max_version(), c.key_share_groups().count()), (TLS1_3, 0));
}

#[test]
fn grease_is_ignored() {
    let buf = Hello::new().ext(0x0a0a, vec![]).ext(43, versions_ext(&[0x3a3a, 0x0304, 0x0303])).bytes();
    assert_eq!(complete(&buf).max_version(), TLS1_3);
    assert!(is_grease(0xfafa) && is_grease(0x0a0a) && !is_grease(0x0a1a) && !is_grease(0x0304));
}

#[test]
fn unknown_server_name_types_end_the_list() {
    // As rustls: a name of unknown type cannot be skipped, so it and the rest are ignored.
    let buf = Hello::new().ext(0, sni_ext(&[(0, b"a.example"), (7, b"xx"), (0, b"b.example")])).bytes();
    assert_eq!(complete(&buf).sni(), Some("a.example"));
    let buf = Hello::new().ext(0, sni_ext(&[(7, b"xx"), (0, b"a.example")])).bytes();
    let c = complete(&buf);
    assert_eq!((c.sni(), c.has_sni_extension()), (None, true));
    // Even when the rest is not a length-prefixed value.
    let mut d = sni_ext(&[(0, b"a.example")]);
    d.extend_from_slice(&[9, 1]);
    d[1] += 2;
    assert_eq!(complete(&Hello::new().ext(0, d).bytes()).sni(), Some("a.example"));
}

#[test]
fn ech_detected() {
    let buf = Hello::new().ext(0xfe0d, vec![0, 1, 2]).bytes();
    assert!(complete(&buf).has_ech());
}

#[test]
fn limit_is_on_the_body_length() {
    let h = Hello::new().ext(0xaaaa, vec![0; 1000]);
    let buf = h.bytes();
    let body = h.body().len();
    assert!(matches!(parse(&buf, body), Parsed::Complete(_)));
    assert_eq!(parse(&buf, body - 1), Parsed::Rejected(Reject::TooLarge));
    // Decided from the 4-byte header alone.
    assert_eq!(parse(&buf[..9], body - 1), Parsed::Rejected(Reject::TooLarge));
    assert_eq!(parse(&buf[..8], body - 1), Parsed::NeedMore);
    // Also when the header itself is split over 1-byte records.
    let split = reframe(&h.message(), 1);
    assert_eq!(parse(&split[..24], body - 1), Parsed::Rejected(Reject::TooLarge));
}

#[test]
fn large_hello_over_several_full_records() {
    // A 40 KiB body needs 3 records of 2^14: fine with a raised limit.
    let h = Hello::new().sni(b"big.example").ext(0xaaaa, vec![0; 40000]);
    let buf = reframe(&h.message(), 16384);
    match parse(&buf, 64 * 1024) {
        Parsed::Complete(c) => {
            assert_eq!((c.sni(), c.len()), (Some("big.example"), buf.len()));
            assert!(c.is_record_fragmented());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(parse(&buf, MAX), Parsed::Rejected(Reject::TooLarge));
}

// ---------------------------------------------------------------------------------------
// Rejects

#[test]
fn not_tls() {
    for b in [&b"\x00"[..], b"\x15\x03\x03\x00\x02\x02\x28", b"\x17", b"hello", b"\x16\x02", b"\x16\xff"] {
        assert_eq!(rejected(b), Reject::NotTls { http: false }, "{b:?}");
    }
    assert_eq!(rejected(b"GET / HTTP/1.1\r\n"), Reject::NotTls { http: true });
}

#[test]
fn http_detected_after_four_bytes() {
    for m in ["GET ", "POST", "HEAD", "PUT ", "OPTIONS", "DELETE", "CONNECT", "PATCH", "TRACE", "PRI * HTTP/2.0"] {
        let line = format!("{m} / HTTP/1.1\r\n");
        let b = line.as_bytes();
        for i in 0..4 {
            assert_eq!(parse(&b[..i], MAX), Parsed::NeedMore, "{m} {i}");
        }
        assert_eq!(parse(&b[..4], MAX), Parsed::Rejected(Reject::NotTls { http: true }), "{m}");
    }
    // Not a method: rejected as soon as it cannot be one.
    assert_eq!(rejected(b"GE!"), Reject::NotTls { http: false });
    assert_eq!(rejected(b"GETX"), Reject::NotTls { http: false });
    assert_eq!(rejected(b"get "), Reject::NotTls { http: false });
    assert_eq!(Reject::NotTls { http: true }.as_str(), "http");
}

#[test]
fn sslv2() {
    // SSLv2 CLIENT-HELLO: 0x80 len, msg_type 1, version 0x0301, ...
    let v2 = [0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10];
    assert_eq!(parse(&v2[..2], MAX), Parsed::NeedMore);
    assert_eq!(rejected(&v2), Reject::SslV2);
    assert_eq!(rejected(&[0x80, 0x2e, 0x04]), Reject::NotTls { http: false });
    assert_eq!(rejected(&[0xff, 0xff, 0xff, 0xff]), Reject::NotTls { http: false });
}

#[test]
fn ssl3_or_older() {
    // SSL 3.0 client: legacy_version 0x0300, no supported_versions.
    let mut h = Hello::new();
    h.legacy_version = SSL3_0;
    assert_eq!(rejected(&h.bytes()), Reject::Ssl3OrOlder);
    let mut h3 = h.clone();
    h3.exts = None;
    assert_eq!(rejected(&h3.bytes()), Reject::Ssl3OrOlder);
    // supported_versions offering only SSL 3.0.
    let h2 = Hello::new().ext(43, versions_ext(&[0x0300]));
    assert_eq!(rejected(&h2.bytes()), Reject::Ssl3OrOlder);
    // legacy 0x0300 but supported_versions offers TLS 1.2: accepted.
    let ok = h.clone().ext(43, versions_ext(&[0x0303, 0x0300]));
    assert_eq!(complete(&ok.bytes()).max_version(), TLS1_2);
    // Below SSL 3.0 without supported_versions: nothing offered.
    let mut old = Hello::new();
    old.legacy_version = 0x0200;
    assert_eq!(rejected(&old.bytes()), Reject::Ssl3OrOlder);
    // Record version 0x0300 is fine (TLS 1.x clients send it).
    let mut buf = Hello::new().bytes();
    buf[2] = 0;
    complete(&buf);
}

/// RFC 8446 §4.2.1: supported_versions governs when present; GREASE and unknown values never
/// count, so the best *known* offer is what `min_tls` sees (the min_tls bypass of issue 13).
#[test]
fn versions_by_the_rfc() {
    let offer = |vs: &[u16]| {
        let buf = Hello::new().ext(43, versions_ext(vs)).bytes();
        let c = complete(&buf);
        (c.max_version(), c.min_version())
    };
    // An unknown value above TLS 1.3 must not lift a TLS 1.0 offer.
    assert_eq!(offer(&[0x0305, 0x0301]), (TLS1_0, TLS1_0));
    assert_eq!(offer(&[0x7f1c, 0x0303]), (TLS1_2, TLS1_2));
    assert_eq!(offer(&[0x0304, 0x0303]), (TLS1_3, TLS1_2));
    assert_eq!(offer(&[0x2a2a, 0x0304, 0x0301]), (TLS1_3, TLS1_0));
    assert_eq!(offer(&[0x0304]), (TLS1_3, TLS1_3));
    // Nothing known offered: no version to negotiate.
    for vs in [&[0x1a1a][..], &[0x0305], &[0x7f1c, 0xfafa], &[0xffff]] {
        assert_eq!(rejected(&Hello::new().ext(43, versions_ext(vs)).bytes()), Reject::NoKnownVersion, "{vs:x?}");
    }
    // legacy_version above TLS 1.2 without supported_versions counts as TLS 1.2.
    for legacy in [0x0304, 0x0305, 0x03ff] {
        let mut h = Hello::new();
        h.legacy_version = legacy;
        let buf = h.bytes();
        let c = complete(&buf);
        assert_eq!((c.max_version(), c.min_version()), (TLS1_2, TLS1_0), "{legacy:#x}");
    }
    // With supported_versions, legacy_version is only a field: even below SSL 3.0.
    let mut h = Hello::new().ext(43, versions_ext(&[0x0304]));
    h.legacy_version = 0x0200;
    let buf = h.bytes();
    assert_eq!(complete(&buf).max_version(), TLS1_3);
    let mut h = Hello::new().ext(43, versions_ext(&[0x0302]));
    h.legacy_version = 0x0304;
    let buf = h.bytes();
    assert_eq!(complete(&buf).max_version(), 0x0302);
    // A TLS 1.1 client without supported_versions offers TLS 1.0 and 1.1 (never SSL 3.0).
    let mut h = Hello::new();
    h.legacy_version = 0x0302;
    let buf = h.bytes();
    assert_eq!((complete(&buf).max_version(), complete(&buf).min_version()), (0x0302, TLS1_0));
    // The versions set itself.
    let buf = Hello::new().ext(43, versions_ext(&[0x0304, 0x0302, 0x0300])).bytes();
    let v = complete(&buf).versions();
    assert!(v.from_extension() && v.contains(0x0300) && v.contains(0x0302) && !v.contains(0x0303));
    assert!(!v.contains(0x0305) && !v.contains(0x02ff));
}

#[test]
fn not_client_hello() {
    let mut h = Hello::new();
    h.msg_type = 2; // ServerHello
    let buf = h.bytes();
    assert_eq!(rejected(&buf[..6]), Reject::NotClientHello);
    assert_eq!(parse(&buf[..5], MAX), Parsed::NeedMore);
}

#[test]
fn duplicate_extension() {
    let buf = Hello::new().ext(10, vec![0, 2, 0, 0x1d]).ext(11, vec![1, 0]).ext(10, vec![0, 2, 0, 0x1d]).bytes();
    assert_eq!(rejected(&buf), Reject::DuplicateExtension(10));
    let buf = Hello::new().sni(b"a.example").sni(b"b.example").bytes();
    assert_eq!(rejected(&buf), Reject::DuplicateExtension(0));
    // More than 32 distinct extensions is fine (the bitmap path), a duplicate among them is not.
    let mut h = Hello::new();
    for t in 100..200 {
        h = h.ext(t, vec![]);
    }
    complete(&h.bytes());
    let h = h.ext(150, vec![]);
    assert_eq!(rejected(&h.bytes()), Reject::DuplicateExtension(150));
    let h2 = (0..40).fold(Hello::new(), |h, t| h.ext(t * 7 + 1000, vec![])).ext(1000, vec![]);
    assert_eq!(rejected(&h2.bytes()), Reject::DuplicateExtension(1000));
}

#[test]
fn multiple_host_names() {
    let buf = Hello::new().ext(0, sni_ext(&[(0, b"a.example"), (0, b"b.example")])).bytes();
    assert_eq!(rejected(&buf), Reject::MultipleHostNames);
    // Even when the second name is invalid.
    let buf = Hello::new().ext(0, sni_ext(&[(0, b"a.example"), (0, b"")])).bytes();
    assert_eq!(rejected(&buf), Reject::MultipleHostNames);
}

/// Edits the body of a small hello (SNI + ALPN), re-frames it (keeping the handshake
/// length consistent with the edited body) and expects `Malformed(field)`.
fn expect_malformed(body_fix: impl Fn(&mut Vec<u8>), field: &'static str) {
    let h = Hello::new().sni(b"x.example").ext(16, alpn_ext(&[b"h2"]));
    let mut body = h.body();
    body_fix(&mut body);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let buf = reframe(&msg, 16384);
    assert_eq!(rejected(&buf), Reject::Malformed(field), "{field}");
}

// Offsets in Hello::new().body(): version 0..2, random 2..34, sid len 34, sid 35..67,
// suites len 67..69, suites 69..73, compression len 73, compression 74, ext len 75..77,
// first extension (server_name) at 77: type 77..79, len 79..81, list len 81..83,
// name type 83, name len 84..86, name 86..95; ALPN at 95: type, len 97..99,
// list len 99..101, proto len 101, "h2" 102..104.

#[test]
fn malformed_lengths() {
    expect_malformed(|b| b[34] = 33, "session_id length");
    expect_malformed(|b| b[68] = 3, "cipher_suites length");
    expect_malformed(|b| b[68] = 0, "cipher_suites length");
    expect_malformed(|b| b[73] = 0, "compression_methods length");
    expect_malformed(|b| b[76] += 1, "extensions length");
    expect_malformed(|b| b[76] -= 1, "extensions length");
    expect_malformed(|b| b[80] += 1, "server_name list length");
    expect_malformed(|b| b[82] += 1, "server_name list length");
    expect_malformed(|b| b[82] = 0, "server_name list length");
    expect_malformed(|b| b[85] += 1, "server_name length");
    // (A host_name 1 byte shorter leaves a byte that reads as a name of unknown type,
    // which ends the list: see unknown_server_name_types_end_the_list.)
    expect_malformed(|b| b[100] += 1, "alpn list length");
    expect_malformed(|b| b[101] = 0, "alpn protocol length");
    expect_malformed(|b| b[101] = 3, "alpn protocol length");
    expect_malformed(|b| b[98] += 1, "extension length");
    expect_malformed(|b| b.truncate(20), "random");
    expect_malformed(|b| b.truncate(50), "session_id length");
    expect_malformed(|b| b.truncate(1), "legacy_version");
    expect_malformed(|b| b.truncate(100), "extensions length");
    expect_malformed(|b| b.truncate(76), "extensions length");
}

#[test]
fn malformed_extension_bodies() {
    let cases: Vec<(Hello, &str)> = vec![
        (Hello::new().ext(43, vec![3, 3, 4, 3]), "supported_versions length"),
        (Hello::new().ext(43, vec![0]), "supported_versions length"),
        (Hello::new().ext(43, vec![4, 3, 4]), "supported_versions length"),
        (Hello::new().ext(51, vec![0, 4, 0, 0x1d, 0, 0]), "key_share key_exchange length"),
        (Hello::new().ext(51, vec![0, 6, 0, 0x1d, 0, 1, 9]), "key_share length"),
        (Hello::new().ext(51, vec![0, 5, 0, 0x1d, 0, 2, 9]), "key_share entry"),
        (Hello::new().ext(16, vec![0, 0]), "alpn list length"),
        (Hello::new().ext(0, vec![0, 0]), "server_name list length"),
        (Hello::new().ext(0, vec![0]), "server_name list length"),
        (Hello::new().ext(13, vec![0, 0]), "signature_algorithms length"),
        (Hello::new().ext(13, vec![0, 3, 4, 3, 8]), "signature_algorithms length"),
        (Hello::new().ext(13, vec![0, 4, 4, 3]), "signature_algorithms length"),
    ];
    for (h, field) in cases {
        assert_eq!(rejected(&h.bytes()), Reject::Malformed(field), "{field}");
    }
}

#[test]
fn malformed_records() {
    let msg = Hello::new().sni(b"a.example").message();
    // Record length disagreeing with the message: trailing bytes in the record.
    let mut buf = reframe(&msg, 16384);
    buf.push(0);
    buf[4] += 1;
    assert_eq!(rejected(&buf), Reject::Malformed("record: data after ClientHello"));
    // ... decided without waiting for the rest of a long record.
    let mut buf = reframe(&msg, 16384);
    buf[3] = 0x3f;
    assert_eq!(rejected(&buf), Reject::Malformed("record: data after ClientHello"));
    // A second handshake message in the same record.
    let mut two = msg.clone();
    two.extend_from_slice(&[14, 0, 0, 0]);
    assert_eq!(rejected(&reframe(&two, 16384)), Reject::Malformed("record: data after ClientHello"));
    // Record over 2^14, empty record.
    let mut buf = reframe(&msg, 16384);
    buf[3] = 0x40;
    buf[4] = 1;
    assert_eq!(rejected(&buf[..5]), Reject::Malformed("record length: over 2^14"));
    let buf = [0x16, 3, 1, 0, 0];
    assert_eq!(rejected(&buf), Reject::Malformed("record length: empty handshake record"));
    // An alert, CCS or application data interleaved before the hello completes: rejected
    // on its header (judged whole, as rustls does), an unknown type on its first byte.
    let split = reframe(&msg, 40);
    for bad in [0x15u8, 0x14, 0x17, 0x18] {
        let mut buf = split[..45].to_vec();
        buf.extend_from_slice(&[bad, 3, 3, 0]);
        assert_eq!(parse(&buf, MAX), Parsed::NeedMore);
        buf.push(2);
        assert_eq!(rejected(&buf), Reject::Malformed("record type: non-handshake record inside ClientHello"));
        buf[46] = 2;
        assert_eq!(rejected(&buf[..47]), Reject::Malformed("record version"));
    }
    let mut buf = split[..45].to_vec();
    buf.push(0x42);
    assert_eq!(rejected(&buf), Reject::Malformed("record type: unknown content type inside ClientHello"));
    // Bad version in a continuation record.
    let mut buf = split[..45].to_vec();
    buf.extend_from_slice(&[0x16, 0x02]);
    assert_eq!(rejected(&buf), Reject::Malformed("record version"));
    // An empty continuation record.
    let mut buf = split[..45].to_vec();
    buf.extend_from_slice(&[0x16, 3, 3, 0, 0]);
    assert_eq!(rejected(&buf), Reject::Malformed("record length: empty handshake record"));
}

#[test]
fn reject_labels_and_display() {
    let all = [
        Reject::NotTls { http: false },
        Reject::NotTls { http: true },
        Reject::SslV2,
        Reject::Ssl3OrOlder,
        Reject::NoKnownVersion,
        Reject::TooLarge,
        Reject::Malformed("x"),
        Reject::NotClientHello,
        Reject::DuplicateExtension(0),
        Reject::MultipleHostNames,
    ];
    let labels: Vec<_> = all.iter().map(Reject::as_str).collect();
    assert_eq!(labels, Reject::LABELS);
    assert_eq!(Reject::Malformed("session_id length").to_string(), "malformed ClientHello: session_id length");
    assert_eq!(Reject::DuplicateExtension(0x2b).to_string(), "duplicate extension 0x002b");
}

#[test]
fn empty_input_needs_more() {
    assert_eq!(parse(&[], MAX), Parsed::NeedMore);
    assert_eq!(parse(&[0x16], MAX), Parsed::NeedMore);
}

// ---------------------------------------------------------------------------------------
// Host names

fn sni_of(name: &[u8]) -> (Option<String>, bool) {
    let buf = Hello::new().sni(name).bytes();
    let h = complete(&buf);
    (h.sni().map(str::to_owned), h.has_sni_extension())
}

#[test]
fn host_name_normalisation() {
    let ok = |raw: &[u8], want: &str| assert_eq!(sni_of(raw), (Some(want.to_owned()), true), "{raw:?}");
    let none = |raw: &[u8]| assert_eq!(sni_of(raw), (None, true), "{raw:?}");
    ok(b"WWW.Example.COM", "www.example.com");
    ok(b"www.example.com.", "www.example.com");
    ok(b"_dmarc.my-host.example", "_dmarc.my-host.example");
    ok(b"localhost", "localhost");
    ok(b"a", "a");
    ok(b"v6.example1", "v6.example1");
    ok(b"1.2.3.4.example", "1.2.3.4.example");
    ok(b"0xcafe.example", "0xcafe.example");
    none(b"www.example.com..");
    none(b"");
    none(b".");
    none(b".example.com");
    none(b"a..example");
    none(b"*.example.com");
    none(b"exa mple.com");
    none(b"caf\xc3\xa9.example");
    none(b"ex\0ample.com");
    none(b"127.0.0.1");
    none(b"127.0.0.1.");
    none(b"127.1");
    none(b"0x7f.1");
    none(b"example.0x7f");
    none(b"::1");
    none(b"[::1]");
    none(b"fe80::1%eth0");
    none(b"2001:db8::1");

    let label63 = "a".repeat(63);
    ok(format!("{label63}.example").as_bytes(), &format!("{label63}.example"));
    none(format!("{}.example", "a".repeat(64)).as_bytes());

    // 253 bytes: 4 labels of 62 + 1 label of 1 + 4 dots = 253.
    let l62 = "b".repeat(62);
    let n253 = format!("{l62}.{l62}.{l62}.{l62}.c");
    assert_eq!(n253.len(), 253);
    ok(n253.as_bytes(), &n253);
    ok(format!("{n253}.").as_bytes(), &n253);
    ok(n253.to_uppercase().as_bytes(), &n253);
    let n254 = format!("{l62}.{l62}.{l62}.{l62}.cc");
    none(n254.as_bytes());
    none(format!("{n254}.").as_bytes());
    none("x".repeat(5000).as_bytes());
}

#[test]
fn host_name_type() {
    let h = HostName::new(b"Example.ORG.").unwrap();
    assert_eq!(h, "example.org");
    assert_eq!(h.as_bytes(), b"example.org");
    assert_eq!(h.len(), 11);
    assert_eq!(format!("{h} {h:?}"), "example.org \"example.org\"");
    let mut set = std::collections::HashSet::new();
    set.insert(h);
    assert!(set.contains("example.org"));
    assert_eq!(HostName::new(b"EXAMPLE.org"), Some(h));
}

// ---------------------------------------------------------------------------------------
// Properties

fn arb_capture() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(CAPTURES.iter().map(|(_, c)| *c).collect::<Vec<_>>())
}

/// Invariants any result must satisfy. In particular a decision is final: once a prefix is
/// Complete or Rejected, every longer buffer gives the same answer.
fn check_invariants(buf: &[u8], max: usize, p: &Parsed<'_>) {
    for cut in [0, buf.len() / 4, buf.len() / 2, buf.len().saturating_sub(1)] {
        let q = parse(&buf[..cut], max);
        if q != Parsed::NeedMore {
            assert_eq!(&q, p, "prefix of {cut} bytes decided differently");
        }
    }
    if let Parsed::Complete(h) = p {
        assert!(h.len() <= buf.len() && !h.is_empty());
        if let Some(s) = h.sni() {
            assert_eq!(HostName::new(s.as_bytes()).as_deref(), Some(s));
            assert!(!s.bytes().any(|c| c.is_ascii_uppercase()));
        }
        let _ = (h.alpn().count(), h.key_share_groups().count(), h.cipher_suites().count());
        let _ = format!("{h:?}");
        // The consumed prefix alone gives the same hello.
        assert_eq!(parse(&buf[..h.len()], max), Parsed::Complete(*h));
    }
    if let Parsed::Rejected(r) = p {
        assert!(Reject::LABELS.contains(&r.as_str()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..600), max in 0usize..20000) {
        let p = parse(&buf, max);
        check_invariants(&buf, max, &p);
    }

    #[test]
    fn arbitrary_records_never_panic(
        head in prop::collection::vec(any::<u8>(), 0..300),
        size in 1usize..64,
    ) {
        // Valid record framing around arbitrary message bytes reaches the deeper code.
        let mut msg = vec![1, 0];
        msg.extend_from_slice(&u16b(head.len()));
        msg.extend_from_slice(&head);
        let buf = reframe(&msg, size);
        let p = parse(&buf, MAX);
        check_invariants(&buf, MAX, &p);
    }

    #[test]
    fn split_at_any_offset(cap in arb_capture(), at in any::<prop::sample::Index>()) {
        let whole = parse(cap, MAX);
        let i = at.index(cap.len());
        prop_assert_eq!(parse(&cap[..i], MAX), Parsed::NeedMore);
        // Same buffer contents re-assembled from two reads: identical result.
        let mut joined = cap[..i].to_vec();
        joined.extend_from_slice(&cap[i..]);
        prop_assert_eq!(parse(&joined, MAX), whole);
    }

    #[test]
    fn reframed_truncated_need_more(
        cap in arb_capture(),
        size in prop::sample::select(vec![1usize, 2, 3, 100, 512]),
        at in any::<prop::sample::Index>(),
    ) {
        let buf = reframe(&message(cap), size);
        let i = at.index(buf.len());
        prop_assert_eq!(parse(&buf[..i], MAX), Parsed::NeedMore);
        let h = complete(&buf);
        prop_assert_eq!(summary(&h), summary(&complete(cap)));
        prop_assert_eq!(h.len(), buf.len());
    }

    #[test]
    fn reframed_random_sizes(cap in arb_capture(), sizes in prop::collection::vec(1usize..700, 1..20)) {
        // Records of varying sizes, cycling through `sizes`.
        let msg = message(cap);
        let mut buf = Vec::new();
        let mut rest = &msg[..];
        for s in sizes.iter().cycle() {
            if rest.is_empty() { break; }
            let (part, r) = rest.split_at((*s).min(rest.len()));
            buf.extend_from_slice(&[0x16, 3, 3]);
            buf.extend_from_slice(&u16b(part.len()));
            buf.extend_from_slice(part);
            rest = r;
        }
        let h = complete(&buf);
        prop_assert_eq!(summary(&h), summary(&complete(cap)));
        prop_assert_eq!(h.len(), buf.len());
    }

    #[test]
    fn mutated_captures_never_panic(
        cap in arb_capture(),
        muts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        size in prop::sample::select(vec![3usize, 100, 16384]),
    ) {
        for framed in [cap.to_vec(), reframe(&message(cap), size)] {
            let mut buf = framed;
            for (i, b) in &muts {
                let i = i.index(buf.len());
                buf[i] = *b;
            }
            let p = parse(&buf, MAX);
            check_invariants(&buf, MAX, &p);
        }
    }

    #[test]
    fn truncated_or_extended_lengths_never_panic(
        cap in arb_capture(),
        at in any::<prop::sample::Index>(),
        delta in -3i32..=3,
    ) {
        // Nudge one byte by a small amount: hits length fields off-by-one.
        let mut buf = cap.to_vec();
        let i = at.index(buf.len());
        buf[i] = (i32::from(buf[i]) + delta) as u8;
        let p = parse(&buf, MAX);
        check_invariants(&buf, MAX, &p);
    }
}

#[test]
fn result_types_stay_small_and_shareable() {
    fn assert_traits<T: Copy + Send + Sync + 'static>() {}
    assert_traits::<Parsed<'static>>();
    assert_traits::<Reject>();
    assert!(std::mem::size_of::<Parsed<'static>>() <= 512);
    assert!(std::mem::size_of::<Reject>() <= 24);
}
