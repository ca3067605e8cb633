//! Fuzz the QUIC Initial path (`quic::packet::parse`, `quic::Hello::feed`, the frame walk, CRYPTO
//! reassembly, then `hello::parse_message`): never panics, on any datagram, and on any plaintext
//! sealed into one or two genuine Initials (the first byte says where to split it), fed in order
//! and reversed; both orders agree on the SNI when both complete.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_dispatch::hello::Parsed;
use sni_dispatch::quic::initial::client_initial;
use sni_dispatch::quic::{packet, Head, Hello};

fn read(dgrams: &[&[u8]], scratch: &mut Vec<u8>) -> Option<String> {
    let Ok(Head::Long(l)) = packet::parse(dgrams.first()?, 0) else { return None };
    let mut h = Hello::new(dgrams[0], &l).ok()?;
    for d in dgrams {
        let _ = h.feed(d, scratch, 16388);
    }
    match h.parsed(16384) {
        Parsed::Complete(c) => Some(c.sni().unwrap_or("").to_owned()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    // The bytes as a datagram.
    let _ = read(&[data], &mut scratch);
    // The bytes as the frames of one or two sealed Initials.
    let Some((&cut, rest)) = data.split_first() else { return };
    let rest = &rest[..rest.len().min(8000)];
    let at = usize::from(cut) * rest.len() / 256;
    let dcid = [0x5a; 8];
    let (a, b) = (client_initial(&dcid, 0, &rest[..at]), client_initial(&dcid, 1, &rest[at..]));
    let forward = read(&[&a, &b], &mut scratch);
    let backward = read(&[&b, &a], &mut scratch);
    if let (Some(f), Some(r)) = (&forward, &backward) {
        assert_eq!(f, r);
    }
});
