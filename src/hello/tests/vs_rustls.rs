//! Differential tests against rustls 0.23: the alert for a refused hello, and SNI/ALPN of
//! an accepted one.

use super::*;
use crate::hello::reader::REC_OVER_2_14;
use std::sync::{Arc, OnceLock};

/// A throwaway rustls server: self-signed certificate for localhost, ALPN h2 and http/1.1.
fn server_config() -> Arc<rustls::ServerConfig> {
    static CFG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let mut cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    })
    .clone()
}

/// What a rustls server does with `bytes` as a client's first flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rustls {
    /// Waiting for more bytes, nothing written.
    NeedMore,
    /// Answered with handshake records (a ServerHello): the hello was accepted.
    Answered,
    /// Refused with this alert record (7 bytes).
    Alert([u8; 7]),
    /// Refused without writing anything.
    Silent(String),
}

pub(super) fn rustls_server(bytes: &[u8]) -> Rustls {
    let mut conn = rustls::ServerConnection::new(server_config()).unwrap();
    let mut rd = bytes;
    let mut err = None;
    while !rd.is_empty() {
        match conn.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
        }
        if let Err(e) = conn.process_new_packets() {
            err = Some(format!("{e:?}"));
            break;
        }
    }
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    match (out.first(), err) {
        (Some(0x15), _) if out.len() == 7 => Rustls::Alert(out[..7].try_into().unwrap()),
        (Some(0x16), None) => Rustls::Answered,
        (None, Some(e)) => Rustls::Silent(e),
        (None, None) => Rustls::NeedMore,
        (_, e) => panic!("unexpected rustls output {out:x?} ({e:?})"),
    }
}

/// Feeds `bytes` to rustls and, while it waits for more, completes what it waits for with
/// zeros (the rest of the record, then further zero-filled records, a few times): so that a
/// hello we refuse from its length fields alone is compared with rustls's eventual answer.
fn rustls_decision(bytes: &[u8]) -> Rustls {
    let mut buf = bytes.to_vec();
    for _ in 0..6 {
        let r = rustls_server(&buf);
        if r != Rustls::NeedMore {
            return r;
        }
        let short = record_shortfall(&buf);
        if short > 0 {
            buf.resize(buf.len() + short, 0);
        } else {
            buf.extend_from_slice(&[0x16, 3, 3, 0x40, 0]);
            buf.resize(buf.len() + 16384, 0);
        }
    }
    Rustls::NeedMore
}

/// Bytes missing from the last record of `buf` (0 when it ends on a record boundary).
fn record_shortfall(buf: &[u8]) -> usize {
    let mut at = 0;
    while at + 5 <= buf.len() {
        at += 5 + usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
    }
    at.saturating_sub(buf.len())
}

/// Where our alert may differ from rustls's, by design (see [`Reject::alert`]): returns the
/// reason, or None when they must agree.
fn documented_difference(r: Reject, bytes: &[u8], theirs: &Rustls) -> Option<&'static str> {
    let declared = |b: &[u8]| b.get(6..9).map(|l| usize::from(l[0]) << 16 | usize::from(l[1]) << 8 | usize::from(l[2]));
    match r {
        Reject::NotTls { .. } if matches!(bytes.first(), Some(0x14 | 0x17)) => (theirs
            == &Rustls::Alert(Alert::UnexpectedMessage.record()))
            .then_some("CCS/app data first: unexpected_message"),
        Reject::NotTls { .. } if bytes.first() == Some(&0x15) => (!matches!(theirs, Rustls::Alert(_))
            || theirs == &Rustls::Alert(Alert::DecodeError.record()))
            .then_some("an alert record first: rustls processes the alert"),
        Reject::TooLarge if declared(bytes).is_none_or(|n| n <= 0xffff) => {
            Some("below rustls's own limit, it reads the hello")
        }
        Reject::NotClientHello if theirs == &Rustls::Alert(Alert::DecodeError.record()) => {
            Some("the body does not decode as the declared message type either")
        }
        Reject::Malformed(REC_OVER_2_14) => Some("rustls reads records of up to 2^14 + 2047 bytes"),
        Reject::DuplicateExtension(_) if theirs == &Rustls::Alert(Alert::DecodeError.record()) => {
            Some("rustls decodes the whole message before looking for duplicates")
        }
        _ if declared(bytes).is_some_and(|n| n <= 0xffff)
            && theirs == &Rustls::Silent("InvalidMessage(HandshakePayloadTooLarge)".to_owned()) =>
        {
            Some("bytes past the ClientHello declare a message over 2^16 - 1, which rustls refuses first")
        }
        _ => None,
    }
}

/// Compares our alert for each refused buffer with rustls's; returns how many were compared.
fn check_alerts(cases: &[(String, Vec<u8>)]) -> (usize, usize) {
    let (mut same, mut documented) = (0, 0);
    let mut failures = Vec::new();
    for (name, bytes) in cases {
        let Parsed::Rejected(r) = parse(bytes, MAX) else { continue };
        let theirs = rustls_decision(bytes);
        let ours = match r.alert() {
            Some(a) => Rustls::Alert(a.record()),
            None => Rustls::Silent(String::new()),
        };
        let agree = match (&ours, &theirs) {
            (Rustls::Silent(_), Rustls::Silent(_)) => true,
            (a, b) => a == b,
        };
        if agree {
            same += 1;
        } else if documented_difference(r, bytes, &theirs).is_some() {
            documented += 1;
        } else {
            failures.push(format!("{name}: {r:?} -> ours {ours:x?}, rustls {theirs:x?}"));
        }
    }
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
    (same, documented)
}

/// Refused hellos built from each capture, one per reject reason the capture allows.
fn edited_captures() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, cap) in CAPTURES {
        let msg = message(cap);
        let base = Hello::from_message(&msg);
        assert_eq!(base.message(), msg, "{name}: decomposition");
        let mut push = |what: &str, h: Hello| out.push((format!("{name}: {what}"), h.bytes()));
        if base.has_ext(43) {
            push("offers SSL 3.0 only", base.clone().set_ext(43, versions_ext(&[0x0300])));
            push("offers GREASE only", base.clone().set_ext(43, versions_ext(&[0x3a3a])));
        } else {
            let mut h = base.clone();
            h.legacy_version = SSL3_0;
            push("legacy SSL 3.0", h);
        }
        let first = base.exts.as_ref().unwrap()[1].clone();
        push("duplicate extension", base.clone().ext(first.0, first.1));
        push("two host names", base.clone().set_ext(0, sni_ext(&[(0, b"a.example"), (0, b"b.example")])));
        push("empty server_name list", base.clone().set_ext(0, vec![0, 0]));
        push("empty ALPN list", base.clone().set_ext(16, vec![0, 0]));
        push("empty ALPN protocol", base.clone().set_ext(16, vec![0, 3, 2, b'h', b'2', 0]));
        push("empty signature_algorithms", base.clone().set_ext(13, vec![0, 0]));
        push("odd signature_algorithms", base.clone().set_ext(13, vec![0, 3, 4, 3, 8]));
        push("supported_versions odd", base.clone().set_ext(43, vec![3, 3, 4, 3]));
        push("key share without key", base.clone().set_ext(51, vec![0, 4, 0, 0x1d, 0, 0]));
        push("key share list short", base.clone().set_ext(51, vec![0, 6, 0, 0x1d, 0, 1, 9]));
        let mut h = base.clone();
        h.session_id = vec![1; 33];
        push("session id of 33", h);
        let mut h = base.clone();
        h.suites.pop();
        push("odd cipher_suites", h);
        let mut h = base.clone();
        h.compression.clear();
        push("no compression methods", h);
        let mut h = base.clone();
        h.msg_type = 2;
        push("ServerHello type", h);
        // Framing faults.
        let mut two = msg.clone();
        two.extend_from_slice(&[14, 0, 0, 0]);
        out.push((format!("{name}: ServerHelloDone in the hello's record"), reframe(&two, 16384)));
        let split = reframe(&msg, 100);
        for (what, tail) in [
            ("alert inside", &[0x15u8, 3, 3, 0, 2, 2, 40][..]),
            ("CCS inside", &[0x14, 3, 3, 0, 1, 1]),
            ("app data inside", &[0x17, 3, 3, 0, 1, 1]),
            ("bad record version inside", &[0x16, 2, 0, 0, 1, 1]),
            ("empty record inside", &[0x16, 3, 3, 0, 0]),
        ] {
            let mut b = split[..105].to_vec();
            b.extend_from_slice(tail);
            out.push((format!("{name}: {what}"), b));
        }
        let mut b = split[..105].to_vec();
        b.extend_from_slice(&[0x16, 3, 3, 0x48, 0]);
        b.resize(b.len() + 0x4800, 0);
        out.push((format!("{name}: record of 2^14 + 2048 inside"), b));
        let mut b = cap.to_vec();
        b[2] = 0;
        b[1] = 2;
        out.push((format!("{name}: record version 2.0"), b));
        let big = base.clone().ext(0xaaab, vec![0; 70_000]);
        out.push((format!("{name}: 70 kB hello"), reframe(&big.message(), 16384)));
    }
    // Not TLS at all.
    for (what, b) in [
        ("zeros", &b"\0\0\0\0\0\0"[..]),
        ("HTTP/1.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("heartbeat record", b"\x18\x03\x03\x00\x03abc"),
        ("SSL 2.0 hello", &[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10]),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.2\r\n"),
        ("CCS first", b"\x14\x03\x03\x00\x01\x01"),
        ("app data first", b"\x17\x03\x03\x00\x03abc"),
        ("alert first", b"\x15\x03\x03\x00\x02\x02\x28"),
    ] {
        out.push((what.to_owned(), b.to_vec()));
    }
    // A well-formed handshake message of another type: rustls's own ServerHello.
    let mut conn = ::rustls::ServerConnection::new(server_config()).unwrap();
    conn.read_tls(&mut &CURL[..]).unwrap();
    conn.process_new_packets().unwrap();
    let mut sh = Vec::new();
    conn.write_tls(&mut sh).unwrap();
    let end = 5 + usize::from(u16::from_be_bytes([sh[3], sh[4]]));
    out.push(("rustls's ServerHello".to_owned(), sh[..end].to_vec()));
    out
}

#[test]
fn alerts_match_rustls_on_edited_captures() {
    let cases = edited_captures();
    for (name, bytes) in &cases {
        assert!(matches!(parse(bytes, MAX), Parsed::Rejected(_)), "{name}: {:?}", parse(bytes, MAX));
    }
    let (same, documented) = check_alerts(&cases);
    println!("{same} same alert as rustls, {documented} documented differences, of {}", cases.len());
    assert!(same > cases.len() * 3 / 4, "{same} of {}", cases.len());
}

#[test]
fn alerts_match_rustls_on_mutated_captures() {
    let mut rng = Rng(0x5eed_a1e7);
    let mut cases = Vec::new();
    for (name, cap) in CAPTURES {
        for size in [16384, 100, 7] {
            let framed = reframe(&message(cap), size);
            // One edit each: with several faults, rustls (which reads exactly the declared
            // message before decoding it) and this parser (which stops at the first fault in
            // stream order) may each find a different one.
            for i in 0..80 {
                let mut b = framed.clone();
                rng.mutate_once(&mut b);
                cases.push((format!("{name} records of {size}, mutant {i}"), b));
            }
        }
    }
    let (same, documented) = check_alerts(&cases);
    let refused = same + documented;
    println!(
        "{refused} of {} mutants refused: {same} same alert as rustls, {documented} documented differences",
        cases.len()
    );
    assert!(refused > cases.len() / 5, "{refused}");
}

#[test]
fn alert_records() {
    assert_eq!(Alert::DecodeError.record(), [0x15, 3, 3, 0, 2, 2, 50]);
    assert_eq!(Alert::ProtocolVersion.description(), 70);
    assert_eq!(Alert::UnrecognizedName.to_string(), "unrecognized_name");
    let codes: Vec<u8> = Alert::ALL.iter().map(|a| a.description()).collect();
    assert_eq!(codes, [10, 22, 40, 47, 49, 50, 70, 80, 112, 120]);
    assert_eq!(Reject::TooLarge.alert(), None);
    assert_eq!(Reject::Malformed("session_id length").alert(), Some(Alert::DecodeError));
}

/// What rustls's `Acceptor` reads from a client's first bytes: SNI and ALPN, or None when it
/// waits for more or refuses the hello.
type View = (Option<String>, Option<Vec<Vec<u8>>>);

fn rustls_view(bytes: &[u8]) -> Option<View> {
    let mut acceptor = ::rustls::server::Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let ch = accepted.client_hello();
                let sni = ch.server_name().map(str::to_owned);
                let alpn = ch.alpn().map(|protos| protos.map(<[u8]>::to_vec).collect());
                return Some((sni, alpn));
            }
            Ok(None) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Our view, SNI normalised; rustls's server_name is as sent (case, trailing dot), so it is
/// normalised the same way (`HostName::new`) before comparing.
fn compare_views(name: &str, bytes: &[u8]) -> bool {
    let (Parsed::Complete(h), Some((sni, alpn))) = (parse(bytes, MAX), rustls_view(bytes)) else {
        return false;
    };
    let theirs = sni.and_then(|s| HostName::new(s.as_bytes())).map(|h| h.as_str().to_owned());
    assert_eq!(h.sni().map(str::to_owned), theirs, "{name}: SNI");
    let ours: Vec<Vec<u8>> = h.alpn().map(|p| p.to_vec()).collect();
    assert_eq!(Some(ours).filter(|v| !v.is_empty()), alpn, "{name}: ALPN");
    true
}

#[test]
fn sni_and_alpn_agree_with_rustls_acceptor() {
    let mut rng = Rng(0xacce_97ed);
    let (mut both, mut total) = (0, 0);
    for (name, cap) in CAPTURES {
        let msg = message(cap);
        let base = Hello::from_message(&msg);
        let mut variants = vec![("as captured".to_owned(), msg.clone())];
        for sni in [
            &b"WWW.Example.COM"[..],
            b"www.example.com.",
            b"127.0.0.1",
            b"under_score.example",
            b"xn--bcher-kva.example",
        ] {
            variants
                .push((format!("SNI {}", sni.escape_ascii()), base.clone().set_ext(0, sni_ext(&[(0, sni)])).message()));
        }
        variants.push(("ALPN h3 x".to_owned(), base.clone().set_ext(16, alpn_ext(&[b"h3", b"x"])).message()));
        for (what, m) in variants {
            for size in [1, 2, 7, 100, 512, 16384] {
                let framed = reframe(&m, size);
                total += 1;
                both += usize::from(compare_views(&format!("{name} {what} in records of {size}"), &framed));
                for i in 0..5 {
                    let mut b = framed.clone();
                    rng.mutate(&mut b);
                    total += 1;
                    both += usize::from(compare_views(&format!("{name} {what} in records of {size}, mutant {i}"), &b));
                }
            }
        }
    }
    println!("{both} of {total} hellos accepted by both and compared");
    assert!(both > total / 3, "{both} of {total}");
}
