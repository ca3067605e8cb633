//! Fuzz `hello::parse_message` (the bare handshake message, as QUIC carries it): never
//! panics, and agrees with `parse` of the same message put in one TLS record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_dispatch::hello::{parse, parse_message, Parsed, DEFAULT_MAX_HELLO_BYTES};

fuzz_target!(|msg: &[u8]| {
    let p = parse_message(msg, DEFAULT_MAX_HELLO_BYTES);
    if let Parsed::Complete(h) = &p {
        assert!(h.len() > 0 && h.len() <= msg.len() && !h.is_record_fragmented());
        let _ = (h.alpn().count(), h.extension_types().count(), h.signature_algorithms().count());
        assert_eq!(parse_message(&msg[..h.len()], DEFAULT_MAX_HELLO_BYTES), p);
    }
    if msg.len() <= 16384 && !msg.is_empty() {
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(msg);
        match (parse(&rec, DEFAULT_MAX_HELLO_BYTES), p) {
            (Parsed::Complete(a), Parsed::Complete(b)) => {
                assert_eq!(a.sni(), b.sni());
                assert!(a.alpn().eq(b.alpn()));
                assert!(a.cipher_suites().eq(b.cipher_suites()));
            }
            // The record holds more than the message: a fault for the record parser, found
            // before the version check that may refuse the message itself.
            (Parsed::Rejected(_), Parsed::Complete(b)) => assert!(b.len() < msg.len()),
            (Parsed::Rejected(r), Parsed::Rejected(_)) if r.to_string().contains("data after ClientHello") => {}
            (a, b) => assert_eq!(a, b),
        }
    }
});
