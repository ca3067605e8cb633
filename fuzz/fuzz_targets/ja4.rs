//! Fuzz `hello::ja4` over whatever `parse` and `parse_message` accept: never panics, and the
//! fingerprint always has JA4's shape (`[tq]` + 9 characters, `_`, 12 hex, `_`, 12 hex).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_dispatch::hello::{ja4, ja4_raw, parse, parse_message, ClientHello, Parsed, Transport};

fn check(h: &ClientHello<'_>, t: Transport) {
    let j = ja4(h, t);
    let s = j.as_str();
    assert_eq!(s.len(), 36);
    assert_eq!(&s[0..1], if t == Transport::Tcp { "t" } else { "q" });
    assert!(matches!(&s[3..4], "d" | "i"));
    assert!(s[4..8].bytes().all(|c| c.is_ascii_digit()));
    assert!(s[8..10].bytes().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!((&s[10..11], &s[23..24]), ("_", "_"));
    assert!(s[11..23].bytes().chain(s[24..].bytes()).all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
    let raw = ja4_raw(h, t).to_string();
    assert_eq!(&raw[..10], &s[..10]);
}

fuzz_target!(|data: &[u8]| {
    if let Parsed::Complete(h) = parse(data, 1 << 16) {
        check(&h, Transport::Tcp);
    }
    if let Parsed::Complete(h) = parse_message(data, 1 << 16) {
        check(&h, Transport::Quic);
    }
});
