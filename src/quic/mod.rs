//! QUIC without terminating it: reading a new flow's ClientHello out of its Initial packets, so
//! that the flow can be routed like a TCP connection (dedicated IP, then SNI, then fallbacks) and
//! its datagrams forwarded, unchanged, to the route's back end.
//!
//! - [`packet`]: the invariant and long headers (v1, RFC 9000; v2, RFC 9369), coalesced packets,
//!   the Version Negotiation reply;
//! - [`initial`]: the client's Initial keys from its Destination Connection ID (RFC 9001 §5.2 over
//!   aws-lc-rs's HMAC-SHA256), header protection and decryption (aws-lc-rs's AES and
//!   AES-128-GCM);
//! - [`crypto`]: the frames an Initial may carry and the CRYPTO stream put back in order across
//!   packets, in any order, with duplicates and overlaps;
//! - [`pending`]: the per-worker table of flows whose ClientHello is not complete yet, bounded in
//!   number, bytes and time.
//!
//! [`Hello`] ties them together for one client: [`Hello::feed`] takes each datagram, and once the
//! CRYPTO prefix holds a whole ClientHello, [`Hello::parsed`] hands it to
//! [`crate::hello::parse_message`], the TCP path's parser without the record layer. The I/O (the
//! UDP loop, the flow table, forwarding) is the worker's (`worker/quic.rs`).
#![forbid(unsafe_code)]

pub mod crypto;
pub mod initial;
pub mod packet;
pub mod pending;

pub use crypto::{Frames, Reassembly};
pub use initial::InitialKeys;
pub use packet::{Head, Long, LongType, Version};
pub use pending::PendingTable;

use crate::hello::{self, Parsed};
use crate::metrics::QuicDatagramDrop;

/// The smallest datagram that may carry a client's Initial (RFC 9000 §14.1).
pub const MIN_INITIAL_DATAGRAM: usize = 1200;
/// The shortest Destination Connection ID of a client's first Initial (RFC 9000 §7.2).
pub const MIN_INITIAL_DCID: usize = 8;

/// Why a datagram cannot start (or continue) a flow's ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// A length runs past the datagram, or a varint is cut.
    Truncated,
    /// A connection ID longer than 20 bytes, or a first Destination Connection ID under 8.
    ConnectionId,
    /// The datagram is under 1200 bytes (RFC 9000 §14.1).
    SmallDatagram,
    /// The fixed bit is clear in an Initial.
    FixedBit,
    /// Header protection or the AEAD did not open: not sealed with this DCID's Initial keys.
    Decrypt,
    /// The reserved header bits are not zero once unprotected.
    ReservedBits,
    /// A frame an Initial may not carry, or an empty payload.
    Frame,
    /// CRYPTO data beyond the largest ClientHello accepted.
    CryptoTooLong,
    /// CRYPTO data in too many pieces.
    CryptoGaps,
    /// A later Initial of the same client under another Destination Connection ID.
    OtherConnection,
}

impl Bad {
    /// The label of the dropped datagram.
    pub fn reason(self) -> QuicDatagramDrop {
        match self {
            Self::SmallDatagram => QuicDatagramDrop::SmallInitial,
            Self::Decrypt => QuicDatagramDrop::Undecryptable,
            _ => QuicDatagramDrop::BadInitial,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::ConnectionId => "connection ID length",
            Self::SmallDatagram => "datagram under 1200 bytes",
            Self::FixedBit => "fixed bit clear",
            Self::Decrypt => "does not decrypt with its Initial keys",
            Self::ReservedBits => "reserved bits set",
            Self::Frame => "frame not allowed in an Initial",
            Self::CryptoTooLong => "CRYPTO data past max_hello_bytes",
            Self::CryptoGaps => "CRYPTO data in too many pieces",
            Self::OtherConnection => "another connection ID from the same address",
        }
    }
}

/// A client whose ClientHello is being read out of its Initials.
#[derive(Debug)]
pub struct Hello {
    pub version: Version,
    dcid: ([u8; packet::MAX_CID], u8),
    keys: InitialKeys,
    crypto: Reassembly,
    /// Initial packets opened.
    pub packets: u32,
    /// The client sent CONNECTION_CLOSE.
    pub closed: bool,
}

impl Hello {
    /// Starts reading the hello of a client whose first Initial is `head` in `dgram`.
    pub fn new(dgram: &[u8], head: &Long) -> Result<Self, Bad> {
        let dcid = dgram.get(head.dcid.clone()).ok_or(Bad::Truncated)?;
        if dcid.len() < MIN_INITIAL_DCID || dcid.len() > packet::MAX_CID {
            return Err(Bad::ConnectionId);
        }
        let keys = InitialKeys::new(head.version, dcid).ok_or(Bad::Decrypt)?;
        let mut id = [0u8; packet::MAX_CID];
        id[..dcid.len()].copy_from_slice(dcid);
        Ok(Self {
            version: head.version,
            dcid: (id, dcid.len() as u8),
            keys,
            crypto: Reassembly::default(),
            packets: 0,
            closed: false,
        })
    }

    /// The Destination Connection ID of the client's first Initial.
    pub fn dcid(&self) -> &[u8] {
        &self.dcid.0[..usize::from(self.dcid.1)]
    }

    /// Opens every Initial of `dgram` (coalesced packets included; 0-RTT and other long-header
    /// packets are left for the back end) and adds their CRYPTO data. `limit` is the most CRYPTO
    /// bytes accepted (`max_hello_bytes` + the 4-byte handshake header).
    pub fn feed(&mut self, dgram: &[u8], scratch: &mut Vec<u8>, limit: usize) -> Result<(), Bad> {
        if dgram.len() < MIN_INITIAL_DATAGRAM {
            return Err(Bad::SmallDatagram);
        }
        let mut at = 0;
        let mut opened = 0;
        while at < dgram.len() {
            // Zero bytes after the last packet are datagram padding (RFC 9000 §12.2).
            if dgram[at] == 0 {
                break;
            }
            let long = match packet::parse(dgram, at)? {
                Head::Long(l) => l,
                // A short-header packet ends the datagram; other versions cannot be coalesced.
                _ => break,
            };
            at = long.end;
            if long.ty != LongType::Initial {
                continue;
            }
            if dgram[long.start] & packet::FIXED == 0 {
                return Err(Bad::FixedBit);
            }
            if long.version != self.version || dgram.get(long.dcid.clone()) != Some(self.dcid()) {
                return Err(Bad::OtherConnection);
            }
            let (_pn, plain) = self.keys.open(dgram, &long, scratch)?;
            let crypto = &mut self.crypto;
            let frames = crypto::walk(plain, |off, data| crypto.insert(off, data, limit))?;
            self.closed |= frames.closed;
            opened += 1;
        }
        if opened == 0 {
            return Err(Bad::Truncated);
        }
        self.packets += opened;
        Ok(())
    }

    /// The ClientHello as far as the CRYPTO data in order goes: complete, a valid prefix
    /// ([`Parsed::NeedMore`]), or rejected.
    pub fn parsed(&self, max_hello_bytes: usize) -> Parsed<'_> {
        let prefix = self.crypto.prefix();
        if prefix.is_empty() {
            return Parsed::NeedMore;
        }
        hello::parse_message(prefix, max_hello_bytes)
    }

    /// Bytes of memory this state holds beyond its own size.
    pub fn held(&self) -> usize {
        self.crypto.held()
    }
}

#[cfg(test)]
mod tests;
