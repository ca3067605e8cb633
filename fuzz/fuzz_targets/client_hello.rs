//! Fuzz `sni_dispatch::hello::parse`: it must never panic, and its answers must be
//! consistent with each other whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_dispatch::hello::{parse, HostName, Parsed, DEFAULT_MAX_HELLO_BYTES};

fn check(data: &[u8], max: usize) {
    let p = parse(data, max);
    match &p {
        Parsed::Complete(h) => {
            assert!(h.len() > 0 && h.len() <= data.len());
            if let Some(sni) = h.sni() {
                assert!(!sni.is_empty() && sni.len() <= HostName::MAX_LEN);
                assert!(sni.bytes().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.')));
                assert_eq!(HostName::new(sni.as_bytes()).as_deref(), Some(sni));
            }
            for p in h.alpn() {
                assert!(!p.is_empty());
            }
            let _ = (h.key_share_groups().count(), h.cipher_suites().count(), h.max_version());
            // The consumed bytes alone give the same hello.
            assert_eq!(parse(&data[..h.len()], max), p);
        }
        Parsed::Rejected(r) => assert!(!r.as_str().is_empty()),
        Parsed::NeedMore => {}
    }
    // A decision is final: a prefix that is decided agrees with the whole.
    if let Some(half) = data.get(..data.len() / 2) {
        let q = parse(half, max);
        if q != Parsed::NeedMore {
            assert_eq!(q, p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, DEFAULT_MAX_HELLO_BYTES);
    if let Some(&b) = data.first() {
        // A small limit derived from the input, to exercise TooLarge at every size.
        check(data, usize::from(b) * 8);
    }
});
