//! The invariant and long headers of QUIC packets (RFC 8999, RFC 9000 §17.2, RFC 9369 §3.2): what a
//! datagram's first packet is, its connection IDs, and where each coalesced long-header packet ends.
//! Every read is bounds-checked; nothing here decrypts.

use super::Bad;
use std::ops::Range;

/// QUIC version 1 (RFC 9000).
pub const V1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369).
pub const V2: u32 = 0x6b33_43cf;

/// The versions whose Initial packets we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn from_wire(v: u32) -> Option<Self> {
        match v {
            V1 => Some(Self::V1),
            V2 => Some(Self::V2),
            _ => None,
        }
    }

    pub fn wire(self) -> u32 {
        match self {
            Self::V1 => V1,
            Self::V2 => V2,
        }
    }

    pub(super) fn rustls(self) -> rustls::quic::Version {
        match self {
            Self::V1 => rustls::quic::Version::V1,
            Self::V2 => rustls::quic::Version::V2,
        }
    }

    /// The long packet type of the two type bits (v2 permutes them, RFC 9369 §3.2).
    fn long_type(self, bits: u8) -> LongType {
        match (self, bits & 3) {
            (Self::V1, 0) | (Self::V2, 1) => LongType::Initial,
            (Self::V1, 1) | (Self::V2, 2) => LongType::ZeroRtt,
            (Self::V1, 2) | (Self::V2, 3) => LongType::Handshake,
            _ => LongType::Retry,
        }
    }
}

/// The type of a long-header packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

/// What the first packet of a datagram is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// A short header (1-RTT) packet: only meaningful to a flow that exists.
    Short,
    /// A Version Negotiation packet (version 0): servers send these, never clients.
    VersionNegotiation,
    /// A long header of a version we cannot read: the IDs, for a Version Negotiation reply.
    Unsupported { version: u32, dcid: Range<usize>, scid: Range<usize> },
    /// A long header of v1 or v2.
    Long(Long),
}

/// A parsed long header of a version we know. Ranges index the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Long {
    /// Where this packet starts in the datagram.
    pub start: usize,
    pub version: Version,
    pub ty: LongType,
    pub dcid: Range<usize>,
    pub scid: Range<usize>,
    /// Offset of the (protected) packet number; Retry packets have none (0).
    pub pn_offset: usize,
    /// Where this packet ends (the next coalesced packet starts): `pn_offset + Length`; the
    /// datagram's end for Retry.
    pub end: usize,
}

/// A bounds-checked reader over a datagram.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(super) fn u8(&mut self) -> Result<u8, Bad> {
        let b = *self.buf.get(self.pos).ok_or(Bad::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        let end = self.pos.checked_add(n).ok_or(Bad::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(Bad::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// Skips a run of zero bytes (PADDING frames, most of a client's first Initial), 16 at a
    /// time where it can.
    pub(super) fn skip_zeros(&mut self) {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let mut n =
            rest.chunks_exact(16).take_while(|c| u128::from_ne_bytes((*c).try_into().unwrap_or([1; 16])) == 0).count()
                * 16;
        n += rest.get(n..).unwrap_or_default().iter().take_while(|b| **b == 0).count();
        self.pos += n;
    }

    fn range(&mut self, n: usize) -> Result<Range<usize>, Bad> {
        let start = self.pos;
        self.take(n)?;
        Ok(start..self.pos)
    }

    fn u32(&mut self) -> Result<u32, Bad> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A variable-length integer (RFC 9000 §16).
    pub(super) fn varint(&mut self) -> Result<u64, Bad> {
        let first = self.u8()?;
        let extra = (1usize << (first >> 6)) - 1;
        let mut v = u64::from(first & 0x3f);
        for &b in self.take(extra)? {
            v = v << 8 | u64::from(b);
        }
        Ok(v)
    }

    /// A varint that must fit a length of this datagram.
    pub(super) fn len(&mut self) -> Result<usize, Bad> {
        usize::try_from(self.varint()?).map_err(|_| Bad::Truncated)
    }
}

/// The first byte's header form bit: long header.
const LONG: u8 = 0x80;
/// The fixed bit (RFC 9000 §17.2), which RFC 9287 lets peers grease; we do not require it on
/// packets we only forward, but an Initial of a new flow must have it (nobody greases before
/// transport parameters are exchanged).
pub const FIXED: u8 = 0x40;
/// Longest connection ID of v1 and v2 (RFC 9000 §17.2).
pub const MAX_CID: usize = 20;

/// Reads the header of the packet at `at` in `dgram`.
pub fn parse(dgram: &[u8], at: usize) -> Result<Head, Bad> {
    let mut c = Cursor::new(dgram, at);
    let first = c.u8()?;
    if first & LONG == 0 {
        return Ok(Head::Short);
    }
    let version = c.u32()?;
    let dlen = usize::from(c.u8()?);
    let dcid = c.range(dlen)?;
    let slen = usize::from(c.u8()?);
    let scid = c.range(slen)?;
    if version == 0 {
        return Ok(Head::VersionNegotiation);
    }
    let Some(v) = Version::from_wire(version) else {
        return Ok(Head::Unsupported { version, dcid, scid });
    };
    if dlen > MAX_CID || slen > MAX_CID {
        return Err(Bad::ConnectionId);
    }
    let ty = v.long_type(first >> 4);
    if ty == LongType::Retry {
        return Ok(Head::Long(Long { start: at, version: v, ty, dcid, scid, pn_offset: 0, end: dgram.len() }));
    }
    if ty == LongType::Initial {
        let token = c.len()?;
        c.take(token)?;
    }
    let length = c.len()?;
    let pn_offset = c.pos();
    let end = pn_offset.checked_add(length).filter(|e| *e <= dgram.len()).ok_or(Bad::Truncated)?;
    Ok(Head::Long(Long { start: at, version: v, ty, dcid, scid, pn_offset, end }))
}

/// The Version Negotiation packet answering a client's long header of an unsupported version
/// (RFC 9000 §17.2.1): its IDs swapped, listing v1 and v2. `dgram` is the client's datagram.
pub fn version_negotiation(dgram: &[u8], dcid: &Range<usize>, scid: &Range<usize>, out: &mut Vec<u8>) {
    out.clear();
    // The unused bits are random; the top bit is set.
    let random = dgram.len() as u8 ^ dgram.get(dcid.start).copied().unwrap_or(0);
    out.push(LONG | (random & 0x7f));
    out.extend_from_slice(&0u32.to_be_bytes());
    let (d, s) = (dgram.get(scid.clone()).unwrap_or(&[]), dgram.get(dcid.clone()).unwrap_or(&[]));
    out.push(d.len() as u8);
    out.extend_from_slice(d);
    out.push(s.len() as u8);
    out.extend_from_slice(s);
    out.extend_from_slice(&V1.to_be_bytes());
    out.extend_from_slice(&V2.to_be_bytes());
}
