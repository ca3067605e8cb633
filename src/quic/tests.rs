//! Initials built and sealed as clients build them (RFC 9001 and RFC 9369 appendix A's packets
//! first), then read back: keys, header protection, frames, reassembly across packets in any
//! order, and every way a datagram can be bad.

use super::initial::{client_initial as initial, crypto_frame, seal_client_initial};
use super::*;
use crate::hello::{ja4, Parsed, Transport};

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// RFC 9001 A.2 (and RFC 9369 A.2): the client's CRYPTO frame, a ClientHello for example.com.
const RFC_CRYPTO_FRAME: &str = "
    060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868
    04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578
    616d706c652e636f6dff01000100000a00080006001d00170018001000070005
    04616c706e000500050100000000003300260024001d00209370b2c9caa47fba
    baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400
    0d0010000e0403050306030203080408050806002d00020101001c0002400100
    3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000
    75300901100f088394c8f03e51570806048000ffff";
const RFC_DCID: &str = "8394c8f03e515708";

fn rfc_packet(version: Version, header: &str) -> Vec<u8> {
    let mut payload = unhex(RFC_CRYPTO_FRAME);
    payload.resize(1162, 0);
    seal_client_initial(version, &unhex(RFC_DCID), &unhex(header), 2, &payload).unwrap()
}

fn head(dgram: &[u8]) -> Long {
    match packet::parse(dgram, 0).unwrap() {
        Head::Long(l) => l,
        h => panic!("{h:?}"),
    }
}

fn sni_of(h: &Hello) -> String {
    match h.parsed(16384) {
        Parsed::Complete(c) => c.sni().unwrap().to_owned(),
        p => panic!("{p:?}"),
    }
}

/// The client's Initial key material of RFC 9001 A.1 and RFC 9369 A.1 (the packets below check
/// the same through rustls's sealer).
#[test]
fn client_initial_keys_of_the_rfcs() {
    for (version, key, iv, hp) in [
        (
            Version::V1,
            "1f369613dd76d5467730efcbe3b1a22d",
            "fa044b2f42a3fd3b46fb255c",
            "9f50449e04a0e810283a1e9933adedd2",
        ),
        (
            Version::V2,
            "8b1a0bc121284290a29e0971b5cd045d",
            "91f73e2351d8fa91660e909f",
            "45b95e15235d6f45a6b19cbcb0294ba9",
        ),
    ] {
        let (k, i, h) = super::initial::client_key_material(version, &unhex(RFC_DCID));
        assert_eq!((k.to_vec(), i.to_vec(), h.to_vec()), (unhex(key), unhex(iv), unhex(hp)), "{version:?}");
    }
}

#[test]
fn rfc9001_client_initial() {
    let dgram = rfc_packet(Version::V1, "c300000001088394c8f03e5157080000449e00000002");
    // The protected header and the sample, as printed in RFC 9001 A.2.
    assert_eq!(dgram.len(), 1200);
    assert_eq!(dgram[..22], unhex("c000000001088394c8f03e5157080000449e7b9aec34")[..]);
    assert_eq!(dgram[22..38], unhex("d1b1c98dd7689fb8ec11d242b123dc9b")[..]);
    let l = head(&dgram);
    assert_eq!((l.version, l.ty, l.pn_offset, l.end), (Version::V1, LongType::Initial, 18, 1200));
    let mut h = Hello::new(&dgram, &l).unwrap();
    h.feed(&dgram, &mut Vec::new(), 16388).unwrap();
    assert_eq!(sni_of(&h), "example.com");
}

#[test]
fn rfc9369_client_initial() {
    let dgram = rfc_packet(Version::V2, "d36b3343cf088394c8f03e5157080000449e00000002");
    assert_eq!(dgram[..22], unhex("d76b3343cf088394c8f03e5157080000449ea0c95e82")[..]);
    assert_eq!(dgram[22..38], unhex("ffe67b6abcdb4298b485dd04de806071")[..]);
    let l = head(&dgram);
    assert_eq!((l.version, l.ty), (Version::V2, LongType::Initial));
    let mut h = Hello::new(&dgram, &l).unwrap();
    h.feed(&dgram, &mut Vec::new(), 16388).unwrap();
    assert_eq!(sni_of(&h), "example.com");
    match h.parsed(16384) {
        Parsed::Complete(c) => assert!(ja4(&c, Transport::Quic).as_str().starts_with("q13d")),
        p => panic!("{p:?}"),
    }
}

/// Chromium's post-quantum ClientHello (1,918 bytes: it needs two Initials) without its record header.
fn pq_hello() -> Vec<u8> {
    include_bytes!("../hello/testdata/chromium-pq.bin")[5..].to_vec()
}

/// The hello in `n` Initials of about equal CRYPTO pieces.
fn split(hello: &[u8], n: usize, dcid: &[u8]) -> Vec<Vec<u8>> {
    let step = hello.len().div_ceil(n);
    hello.chunks(step).enumerate().map(|(i, c)| initial(dcid, i as u32, &crypto_frame(i * step, c))).collect()
}

fn feed_all(dgrams: &[&Vec<u8>]) -> (Hello, Vec<&'static str>) {
    let mut h = Hello::new(dgrams[0], &head(dgrams[0])).unwrap();
    let mut states = Vec::new();
    let mut scratch = Vec::new();
    for d in dgrams {
        h.feed(d, &mut scratch, 16388).unwrap();
        states.push(match h.parsed(16384) {
            Parsed::NeedMore => "more",
            Parsed::Complete(_) => "complete",
            Parsed::Rejected(_) => "rejected",
        });
    }
    (h, states)
}

#[test]
fn a_hello_over_two_or_three_initials_in_order_reordered_and_duplicated() {
    let hello = pq_hello();
    let dcid = [0x11; 8];
    for n in [2, 3] {
        let d = split(&hello, n, &dcid);
        let orders: Vec<Vec<&Vec<u8>>> = vec![
            d.iter().collect(),
            d.iter().rev().collect(),
            // a duplicate of the first in the middle
            std::iter::once(&d[0]).chain(std::iter::once(&d[0])).chain(d[1..].iter()).collect(),
        ];
        for order in orders {
            let (h, states) = feed_all(&order);
            assert_eq!(states.last(), Some(&"complete"), "n={n}");
            assert!(states[..states.len() - 1].iter().all(|s| *s == "more"), "{states:?}");
            assert_eq!(sni_of(&h), "www.example.com");
        }
    }
}

#[test]
fn overlapping_crypto_frames_in_one_packet() {
    let hello = pq_hello();
    let mut frames = crypto_frame(0, &hello[..700]);
    frames.extend(crypto_frame(500, &hello[500..1000]));
    let a = initial(&[7; 9], 0, &frames);
    let b = initial(&[7; 9], 1, &crypto_frame(900, &hello[900..]));
    let (h, _) = feed_all(&[&a, &b]);
    assert_eq!(sni_of(&h), "www.example.com");
}

#[test]
fn bad_datagrams_are_refused_with_a_reason() {
    let good = initial(&[1; 8], 0, &crypto_frame(0, &pq_hello()[..800]));
    let l = head(&good);
    let mut scratch = Vec::new();

    // Mis-keyed: sealed for another DCID, then given this one.
    let mut miskeyed = initial(&[2; 8], 0, &crypto_frame(0, b"x"));
    miskeyed[6..14].copy_from_slice(&[1; 8]);
    let mut h = Hello::new(&miskeyed, &head(&miskeyed)).unwrap();
    assert_eq!(h.feed(&miskeyed, &mut scratch, 16388), Err(Bad::Decrypt));

    // One flipped bit in the ciphertext.
    let mut flipped = good.clone();
    flipped[600] ^= 1;
    let mut h = Hello::new(&flipped, &l).unwrap();
    assert_eq!(h.feed(&flipped, &mut scratch, 16388), Err(Bad::Decrypt));

    // Truncated: cut anywhere, the header's Length no longer fits.
    for cut in [1, 5, 6, 14, 17, 20, 400, 1199] {
        let t = &good[..cut];
        let r = packet::parse(t, 0).and_then(|h| match h {
            Head::Long(l) => Hello::new(t, &l).and_then(|mut h| h.feed(t, &mut scratch, 16388)),
            _ => Err(Bad::Truncated),
        });
        assert!(r.is_err(), "cut at {cut}");
    }

    // Small datagram: a whole Initial under 1200 bytes.
    let mut small = good.clone();
    small.truncate(1100);
    let mut h = Hello::new(&good, &l).unwrap();
    assert_eq!(h.feed(&small, &mut scratch, 16388), Err(Bad::SmallDatagram));

    // A frame an Initial may not carry (STREAM).
    let stream = initial(&[1; 8], 0, &[0x08, 0, 1, b'a']);
    let mut h = Hello::new(&stream, &head(&stream)).unwrap();
    assert_eq!(h.feed(&stream, &mut scratch, 16388), Err(Bad::Frame));

    // CRYPTO data past the limit.
    let far = initial(&[1; 8], 0, &crypto_frame(20_000, b"abc"));
    let mut h = Hello::new(&far, &head(&far)).unwrap();
    assert_eq!(h.feed(&far, &mut scratch, 16388), Err(Bad::CryptoTooLong));

    // A DCID under 8 bytes cannot start a flow.
    let short = initial(&[1; 4], 0, &crypto_frame(0, b"x"));
    assert_eq!(Hello::new(&short, &head(&short)).unwrap_err(), Bad::ConnectionId);

    // A second Initial under another DCID.
    let mut h = Hello::new(&good, &l).unwrap();
    h.feed(&good, &mut scratch, 16388).unwrap();
    let other = initial(&[3; 8], 1, &crypto_frame(800, b"x"));
    assert_eq!(h.feed(&other, &mut scratch, 16388), Err(Bad::OtherConnection));
}

#[test]
fn garbage_never_panics() {
    // Every prefix and many single-byte corruptions of a real Initial, and random bytes.
    let good = initial(&[1; 8], 0, &crypto_frame(0, &pq_hello()[..800]));
    let mut scratch = Vec::new();
    let mut try_one = |d: &[u8]| {
        if let Ok(Head::Long(l)) = packet::parse(d, 0) {
            if let Ok(mut h) = Hello::new(d, &l) {
                let _ = h.feed(d, &mut scratch, 16388);
                let _ = h.parsed(16384);
            }
        }
    };
    for cut in 0..good.len() {
        try_one(&good[..cut]);
    }
    let mut x: u32 = 0x1234_5678;
    for i in 0..2000 {
        let mut d = good.clone();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        d[(x as usize) % 64] = (x >> 8) as u8;
        try_one(&d);
        let random: Vec<u8> = (0..1200 + i % 50).map(|j| (x as usize).wrapping_mul(j + 7) as u8).collect();
        try_one(&random);
    }
}

#[test]
fn version_negotiation_reply() {
    // A long header of version 0x1a2a3a4a, DCID 8 bytes, SCID 4 bytes.
    let mut d = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8, 1, 2, 3, 4, 5, 6, 7, 8, 4, 9, 9, 9, 9];
    d.resize(1200, 0);
    let (dcid, scid) = match packet::parse(&d, 0).unwrap() {
        Head::Unsupported { version: 0x1a2a_3a4a, dcid, scid } => (dcid, scid),
        h => panic!("{h:?}"),
    };
    let mut out = Vec::new();
    packet::version_negotiation(&d, &dcid, &scid, &mut out);
    assert_eq!(out[0] & 0x80, 0x80);
    assert_eq!(&out[1..5], &[0, 0, 0, 0]);
    // IDs swapped: the client's SCID is our DCID.
    assert_eq!(&out[5..10], &[4, 9, 9, 9, 9]);
    assert_eq!(&out[10..19], &[8, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&out[19..], &[0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf]);
    assert_eq!(packet::parse(&out, 0).unwrap(), Head::VersionNegotiation);
}

#[test]
fn short_headers_and_coalesced_packets() {
    assert_eq!(packet::parse(&[0x40, 1, 2, 3], 0).unwrap(), Head::Short);
    // An Initial followed by a 0-RTT packet in one datagram: the Initial is read, the 0-RTT left.
    let hello = pq_hello();
    let mut d = initial(&[5; 8], 0, &crypto_frame(0, &hello));
    let zero_rtt = [0xd3u8, 0, 0, 0, 1, 8, 5, 5, 5, 5, 5, 5, 5, 5, 0, 0x40, 20];
    d.extend_from_slice(&zero_rtt);
    d.extend_from_slice(&[0xaa; 20]);
    let l = head(&d);
    let mut h = Hello::new(&d, &l).unwrap();
    h.feed(&d, &mut Vec::new(), 16388).unwrap();
    assert_eq!(sni_of(&h), "www.example.com");
    match packet::parse(&d, l.end).unwrap() {
        Head::Long(z) => assert_eq!((z.ty, z.end), (LongType::ZeroRtt, d.len())),
        h => panic!("{h:?}"),
    }
}
