//! Initial packet protection (RFC 9001 §5, RFC 9369 §3.3): the client's Initial keys derived from
//! the Destination Connection ID of its first Initial, header protection removed, the payload
//! decrypted.
//!
//! Only the client's keys are derived (a dispatcher never seals an Initial), as the key schedule of
//! RFC 9001 §5.2 writes it: `initial_secret = HKDF-Extract(salt, dcid)`, the client's secret
//! `HKDF-Expand-Label(initial_secret, "client in", 32)`, and from it the AES-128-GCM key, IV and
//! header-protection key (labels `quic key`, `quic iv`, `quic hp`; `quicv2 …` for v2). Each
//! expansion here is one block long, which HKDF-Expand makes as `HMAC(PRK, info ‖ 0x01)` (RFC
//! 5869 §2.3): HMAC-SHA256, AES-128-GCM and the AES header-protection mask are aws-lc-rs's (the
//! provider rustls runs on); the HMAC of a secret is keyed once for its three labels, that of
//! each version's salt once per process. rustls's
//! `quic::Keys::initial` derives both sides and re-runs the extraction for each, 3.5 times the
//! work per new flow (callgrind, in the report of the change). The unit tests pin the RFC 9001 and
//! RFC 9369 Appendix A vectors, and the tests' sealer ([`seal_client_initial`]) is rustls's, so
//! every round trip checks this schedule against rustls's.

use super::packet::{Long, Version};
use super::Bad;
use aws_lc_rs::aead::{self, quic::HeaderProtectionKey, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use rustls::quic::Keys;
use rustls::Side;
use std::sync::OnceLock;

/// Header-protection sample length for AES (RFC 9001 §5.4.2).
const SAMPLE: usize = 16;
/// AEAD tag length.
const TAG: usize = 16;

/// The Initial salts: QUIC v1 (RFC 9001 §5.2) and v2 (RFC 9369 §3.3.1).
const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f,
    0x0a,
];
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e,
    0xd9,
];

/// The keys that open a client's Initial packets.
pub struct InitialKeys {
    packet: LessSafeKey,
    iv: [u8; 12],
    header: HeaderProtectionKey,
}

impl std::fmt::Debug for InitialKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitialKeys").finish_non_exhaustive()
    }
}

/// `HKDF-Expand-Label(secret, label, "", len)` for `len` ≤ 32 (RFC 8446 §7.1), one HMAC block:
/// the first `len` bytes of `HMAC(secret, HkdfLabel ‖ 0x01)`.
fn expand_label(secret: &hmac::Key, label: &[u8], len: u8) -> hmac::Tag {
    const PREFIX: &[u8] = b"tls13 ";
    let mut c = hmac::Context::with_key(secret);
    // HkdfLabel: uint16 length, opaque label<7..255> ("tls13 " + label), opaque context<0..255>
    // (empty); then HKDF-Expand's block counter.
    c.update(&[0, len, (PREFIX.len() + label.len()) as u8]);
    c.update(PREFIX);
    c.update(label);
    c.update(&[0, 1]);
    c.sign()
}

/// The client's Initial key, IV and header-protection key for `dcid`.
pub(super) fn client_key_material(version: Version, dcid: &[u8]) -> ([u8; 16], [u8; 12], [u8; 16]) {
    let (key, iv, hp): (&[u8], &[u8], &[u8]) = match version {
        Version::V1 => (b"quic key", b"quic iv", b"quic hp"),
        Version::V2 => (b"quicv2 key", b"quicv2 iv", b"quicv2 hp"),
    };
    // The salts' HMAC keys are constants: keyed once per process.
    static SALTS: OnceLock<[hmac::Key; 2]> = OnceLock::new();
    let salts = SALTS.get_or_init(|| [SALT_V1, SALT_V2].map(|s| hmac::Key::new(hmac::HMAC_SHA256, &s)));
    let salt = match version {
        Version::V1 => &salts[0],
        Version::V2 => &salts[1],
    };
    let initial = hmac::sign(salt, dcid);
    let client = expand_label(&hmac::Key::new(hmac::HMAC_SHA256, initial.as_ref()), b"client in", 32);
    let secret = hmac::Key::new(hmac::HMAC_SHA256, client.as_ref());
    let mut out = ([0u8; 16], [0u8; 12], [0u8; 16]);
    out.0.copy_from_slice(&expand_label(&secret, key, 16).as_ref()[..16]);
    out.1.copy_from_slice(&expand_label(&secret, iv, 12).as_ref()[..12]);
    out.2.copy_from_slice(&expand_label(&secret, hp, 16).as_ref()[..16]);
    out
}

impl InitialKeys {
    /// The client's Initial keys for `dcid` (the Destination Connection ID of its first Initial).
    pub fn new(version: Version, dcid: &[u8]) -> Option<Self> {
        let (key, iv, hp) = client_key_material(version, dcid);
        let packet = LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &key).ok()?);
        let header = HeaderProtectionKey::new(&aead::quic::AES_128, &hp).ok()?;
        Some(Self { packet, iv, header })
    }

    /// Removes header protection from the Initial `head` of `dgram` and decrypts it into
    /// `scratch` (the datagram itself is left as it is: it is forwarded unchanged). Returns the
    /// packet number and the plaintext frames.
    pub fn open<'s>(&self, dgram: &[u8], head: &Long, scratch: &'s mut Vec<u8>) -> Result<(u64, &'s [u8]), Bad> {
        let start = head.start;
        let pkt = dgram.get(start..head.end).ok_or(Bad::Truncated)?;
        let pn_at = head.pn_offset - start;
        // The sample assumes a 4-byte packet number (RFC 9001 §5.4.2); a packet too short for it
        // (or for the tag) cannot be genuine.
        if pkt.len() < pn_at + 4 + SAMPLE || pkt.len() < pn_at + 1 + TAG {
            return Err(Bad::Truncated);
        }
        scratch.clear();
        scratch.extend_from_slice(pkt);
        let mask = self.header.new_mask(&scratch[pn_at + 4..pn_at + 4 + SAMPLE]).map_err(|_| Bad::Decrypt)?;
        // A long header: the low 4 bits of the first byte are protected (RFC 9001 §5.4.1).
        let first = scratch.first_mut().ok_or(Bad::Truncated)?;
        *first ^= mask[0] & 0x0f;
        let first = *first;
        let pn_len = usize::from(first & 3) + 1;
        let mut pn = 0u64;
        for (b, m) in scratch[pn_at..pn_at + pn_len].iter_mut().zip(&mask[1..]) {
            *b ^= m;
            pn = pn << 8 | u64::from(*b);
        }
        // The nonce: the IV with the packet number XORed into its last bytes (RFC 9001 §5.3).
        let mut nonce = self.iv;
        for (n, p) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
            *n ^= p;
        }
        let (aad, payload) = scratch.split_at_mut(pn_at + pn_len);
        let plain = self
            .packet
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&*aad), payload)
            .map_err(|_| Bad::Decrypt)?;
        // The reserved bits must be zero once unprotected (RFC 9000 §17.2); checked after the
        // AEAD (which covers them), so a mis-keyed packet reads as undecryptable.
        if first & 0x0c != 0 {
            return Err(Bad::ReservedBits);
        }
        Ok((pn, plain))
    }
}

fn suite() -> Option<rustls::quic::Suite> {
    match rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(s) => s.quic_suite(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Seals an Initial as a client would, with rustls's keys (for tests, the fuzz target and the load
/// generator):
/// `header` is the unprotected long header up to and including a `pn_len`-byte packet number
/// whose Length field already counts the tag; `payload` the frames.
pub fn seal_client_initial(version: Version, dcid: &[u8], header: &[u8], pn: u64, payload: &[u8]) -> Option<Vec<u8>> {
    let s = suite()?;
    let keys = Keys::initial(version.rustls(), s.suite, s.quic, dcid, Side::Client);
    let pn_len = usize::from(header.first()? & 3) + 1;
    let pn_at = header.len().checked_sub(pn_len)?;
    let mut out = header.to_vec();
    let mut body = payload.to_vec();
    let tag = keys.local.packet.encrypt_in_place(pn, header, &mut body).ok()?;
    out.extend_from_slice(&body);
    out.extend_from_slice(tag.as_ref());
    let sample: [u8; SAMPLE] = out.get(pn_at + 4..pn_at + 4 + SAMPLE)?.try_into().ok()?;
    let (h, rest) = out.split_at_mut(pn_at);
    keys.local.header.encrypt_in_place(&sample, h.first_mut()?, &mut rest[..pn_len]).ok()?;
    Some(out)
}

/// A v1 client Initial (packet number `pn`, no token, no SCID) for `dcid` carrying `frames`,
/// padded with PADDING frames to a 1200-byte datagram (larger if the frames need it): what a
/// client's first flight looks like, for tests and the load generator's flood.
pub fn client_initial(dcid: &[u8], pn: u32, frames: &[u8]) -> Vec<u8> {
    client_initial_sized(dcid, pn, frames, 1200)
}

/// As [`client_initial`], padded to `size` bytes instead of 1200 (a datagram too small to be a
/// first Initial, for tests).
pub fn client_initial_sized(dcid: &[u8], pn: u32, frames: &[u8], size: usize) -> Vec<u8> {
    let mut header = vec![0xc3, 0, 0, 0, 1, dcid.len() as u8];
    header.extend_from_slice(dcid);
    header.extend_from_slice(&[0, 0]); // no SCID, no token
    let overhead = header.len() + 2 + 4 + TAG;
    let payload_len = frames.len().max(size.saturating_sub(overhead));
    let length = 4 + payload_len + TAG;
    header.extend_from_slice(&(0x4000 | (length as u16 & 0x3fff)).to_be_bytes());
    header.extend_from_slice(&pn.to_be_bytes());
    let mut payload = frames.to_vec();
    payload.resize(payload_len, 0);
    seal_client_initial(Version::V1, dcid, &header, u64::from(pn), &payload).unwrap_or_default()
}

/// A CRYPTO frame of `data` at `offset` (4-byte offset, 2-byte length varints).
pub fn crypto_frame(offset: usize, data: &[u8]) -> Vec<u8> {
    let mut f = vec![6];
    f.extend_from_slice(&(0x8000_0000u32 | (offset as u32 & 0x3fff_ffff)).to_be_bytes());
    f.extend_from_slice(&(0x4000 | (data.len() as u16 & 0x3fff)).to_be_bytes());
    f.extend_from_slice(data);
    f
}
