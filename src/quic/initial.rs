//! Initial packet protection (RFC 9001 §5, RFC 9369 §3.3): the client's Initial keys derived from
//! the Destination Connection ID of its first Initial, header protection removed, the payload
//! decrypted. The key schedule, salts and AEAD are rustls's (`rustls::quic::Keys::initial` with
//! TLS_AES_128_GCM_SHA256 from the aws-lc-rs provider); nothing here is hand-rolled crypto.

use super::packet::{Long, Version};
use super::Bad;
use rustls::quic::{DirectionalKeys, Keys};
use rustls::Side;

/// Header-protection sample length for AES (RFC 9001 §5.4.2).
const SAMPLE: usize = 16;
/// AEAD tag length.
const TAG: usize = 16;

/// The keys that open a client's Initial packets (and, for tests and tools, that seal them).
pub struct InitialKeys {
    client: DirectionalKeys,
}

impl std::fmt::Debug for InitialKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitialKeys").finish_non_exhaustive()
    }
}

fn suite() -> Option<rustls::quic::Suite> {
    match rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(s) => s.quic_suite(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

impl InitialKeys {
    /// The client's Initial keys for `dcid` (the Destination Connection ID of its first Initial).
    pub fn new(version: Version, dcid: &[u8]) -> Option<Self> {
        let s = suite()?;
        let keys = Keys::initial(version.rustls(), s.suite, s.quic, dcid, Side::Server);
        Some(Self { client: keys.remote })
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
        let mut sample = [0u8; SAMPLE];
        sample.copy_from_slice(&scratch[pn_at + 4..pn_at + 4 + SAMPLE]);
        let (header, rest) = scratch.split_at_mut(pn_at);
        let first = header.first_mut().ok_or(Bad::Truncated)?;
        self.client.header.decrypt_in_place(&sample, first, &mut rest[..4]).map_err(|_| Bad::Decrypt)?;
        let first = scratch[0];
        let pn_len = usize::from(first & 3) + 1;
        let pn = scratch[pn_at..pn_at + pn_len].iter().fold(0u64, |v, b| v << 8 | u64::from(*b));
        let (aad, payload) = scratch.split_at_mut(pn_at + pn_len);
        let plain = self.client.packet.decrypt_in_place(pn, aad, payload).map_err(|_| Bad::Decrypt)?;
        // The reserved bits must be zero once unprotected (RFC 9000 §17.2); checked after the
        // AEAD (which covers them), so a mis-keyed packet reads as undecryptable.
        if first & 0x0c != 0 {
            return Err(Bad::ReservedBits);
        }
        Ok((pn, plain))
    }
}

/// Seals an Initial as a client would (for tests, the fuzz target and the load generator):
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
