//! The frames of a decrypted Initial and the CRYPTO stream they carry.
//!
//! [`walk`] reads every frame of an Initial payload: PADDING, PING, ACK (with or without ECN
//! counts) and CRYPTO are what a client's Initial may hold, and CONNECTION_CLOSE of the transport
//! (the client giving up); anything else is a protocol violation (RFC 9000 §12.4, table 3).
//!
//! [`Reassembly`] puts CRYPTO data back in order by offset, across packets, in any order, with
//! duplicates and overlaps: bytes already held are kept, and only the contiguous prefix from
//! offset 0 is ever handed to the ClientHello parser. It is bounded in bytes (the largest
//! ClientHello we accept plus its 4-byte header) and in the number of disjoint ranges (so a peer
//! that sends one byte every other offset costs a bounded amount of work).

use super::packet::Cursor;
use super::Bad;

const PADDING: u8 = 0x00;
const PING: u8 = 0x01;
const ACK: u8 = 0x02;
const ACK_ECN: u8 = 0x03;
const CRYPTO: u8 = 0x06;
const CONNECTION_CLOSE: u8 = 0x1c;

/// What a walk over an Initial's frames found, besides the CRYPTO data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Frames {
    /// CRYPTO frames seen.
    pub crypto: u32,
    /// The client sent CONNECTION_CLOSE: it has given up on this connection.
    pub closed: bool,
}

/// Walks the frames of a decrypted Initial payload, handing each CRYPTO frame's offset and data
/// to `on_crypto`.
pub fn walk(payload: &[u8], mut on_crypto: impl FnMut(u64, &[u8]) -> Result<(), Bad>) -> Result<Frames, Bad> {
    if payload.is_empty() {
        // A packet with no frames is a protocol violation (RFC 9000 §12.4).
        return Err(Bad::Frame);
    }
    let mut c = Cursor::new(payload, 0);
    let mut out = Frames::default();
    while !c.is_empty() {
        // Frame types are varints, but every type allowed here fits one byte; a longer
        // encoding of a small type is itself a protocol violation (RFC 9000 §12.4).
        match c.u8()? {
            // A run of PADDING frames at once.
            PADDING => c.skip_zeros(),
            PING => {}
            ty @ (ACK | ACK_ECN) => {
                let _largest = c.varint()?;
                let _delay = c.varint()?;
                let ranges = c.varint()?;
                let _first = c.varint()?;
                // Each further range is two varints of at least one byte each.
                if ranges > payload.len() as u64 {
                    return Err(Bad::Truncated);
                }
                for _ in 0..ranges {
                    c.varint()?;
                    c.varint()?;
                }
                if ty == ACK_ECN {
                    for _ in 0..3 {
                        c.varint()?;
                    }
                }
            }
            CRYPTO => {
                let offset = c.varint()?;
                let len = c.len()?;
                let data = c.take(len)?;
                on_crypto(offset, data)?;
                out.crypto += 1;
            }
            CONNECTION_CLOSE => {
                let _code = c.varint()?;
                let _frame = c.varint()?;
                let reason = c.len()?;
                c.take(reason)?;
                out.closed = true;
            }
            _ => return Err(Bad::Frame),
        }
    }
    Ok(out)
}

/// Most disjoint ranges of CRYPTO data held while a hello is incomplete.
pub const MAX_RANGES: usize = 16;

/// CRYPTO data put back in order.
#[derive(Debug, Default)]
pub struct Reassembly {
    buf: Vec<u8>,
    /// Disjoint, sorted, non-adjacent `[start, end)` ranges of `buf` that hold data.
    ranges: Vec<(usize, usize)>,
}

impl Reassembly {
    /// Holds `data` at `offset`; `limit` is the most stream bytes accepted.
    pub fn insert(&mut self, offset: u64, data: &[u8], limit: usize) -> Result<(), Bad> {
        if data.is_empty() {
            return Ok(());
        }
        let start = usize::try_from(offset).map_err(|_| Bad::CryptoTooLong)?;
        let end = start.checked_add(data.len()).filter(|e| *e <= limit).ok_or(Bad::CryptoTooLong)?;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        // Write only the gaps: bytes already held stay as first received.
        let mut at = start;
        for &(s, e) in &self.ranges {
            if e <= at {
                continue;
            }
            if s >= end {
                break;
            }
            if s > at {
                self.buf[at..s].copy_from_slice(&data[at - start..s - start]);
            }
            at = at.max(e);
            if at >= end {
                break;
            }
        }
        if at < end {
            self.buf[at..end].copy_from_slice(&data[at - start..]);
        }
        // Merge [start, end) into the ranges.
        let first = self.ranges.partition_point(|&(_, e)| e < start);
        let mut merged = (start, end);
        let mut last = first;
        while last < self.ranges.len() && self.ranges[last].0 <= end {
            merged.0 = merged.0.min(self.ranges[last].0);
            merged.1 = merged.1.max(self.ranges[last].1);
            last += 1;
        }
        self.ranges.splice(first..last, [merged]);
        if self.ranges.len() > MAX_RANGES {
            return Err(Bad::CryptoGaps);
        }
        Ok(())
    }

    /// The bytes in order from offset 0, as far as they are contiguous.
    pub fn prefix(&self) -> &[u8] {
        match self.ranges.first() {
            Some(&(0, e)) => &self.buf[..e],
            _ => &[],
        }
    }

    /// Bytes of memory held.
    pub fn held(&self) -> usize {
        self.buf.capacity() + self.ranges.capacity() * std::mem::size_of::<(usize, usize)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembly_in_any_order_with_overlaps() {
        let msg: Vec<u8> = (0..200u8).collect();
        let pieces = [(120, 200), (0, 50), (40, 60), (60, 120), (0, 10), (150, 160)];
        let mut r = Reassembly::default();
        for (s, e) in pieces {
            r.insert(s as u64, &msg[s..e], 1000).unwrap();
        }
        assert_eq!(r.prefix(), &msg[..]);
        // Held bytes are never overwritten by a later, different duplicate.
        r.insert(0, &[9; 10], 1000).unwrap();
        assert_eq!(r.prefix(), &msg[..]);
    }

    #[test]
    fn gaps_hold_no_prefix_and_are_bounded() {
        let mut r = Reassembly::default();
        r.insert(10, b"abc", 1000).unwrap();
        assert!(r.prefix().is_empty());
        r.insert(0, b"0123456789", 1000).unwrap();
        assert_eq!(r.prefix(), b"0123456789abc");
        let mut r = Reassembly::default();
        let mut err = None;
        for i in 0..40u64 {
            if let Err(e) = r.insert(i * 2 + 1, b"x", 1000) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(Bad::CryptoGaps));
        assert_eq!(Reassembly::default().insert(990, &[0; 20], 1000), Err(Bad::CryptoTooLong));
        assert_eq!(Reassembly::default().insert(u64::MAX, &[0; 20], 1000), Err(Bad::CryptoTooLong));
    }

    #[test]
    fn frames_of_an_initial() {
        // PING, ACK with one extra range, ACK_ECN, CRYPTO(off 0, "hi"), PADDING.
        let p = [1, 2, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 6, 0, 2, b'h', b'i', 0, 0, 0];
        let mut got = Vec::new();
        let f = walk(&p, |o, d| {
            got.push((o, d.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(f.crypto, 1);
        assert_eq!(got, vec![(0, b"hi".to_vec())]);
        // STREAM (0x08) in an Initial, an empty payload, a cut CRYPTO frame.
        assert_eq!(walk(&[8, 0, 0], |_, _| Ok(())), Err(Bad::Frame));
        assert_eq!(walk(&[], |_, _| Ok(())), Err(Bad::Frame));
        assert_eq!(walk(&[6, 0, 5, 1], |_, _| Ok(())), Err(Bad::Truncated));
        let close = walk(&[0x1c, 0, 0, 0], |_, _| Ok(())).unwrap();
        assert!(close.closed);
    }

    #[test]
    fn padding_runs_of_any_length_around_frames() {
        for before in 0..40 {
            for after in [0, 1, 15, 16, 17, 1000] {
                let mut p = vec![0u8; before];
                p.extend_from_slice(&[6, 0, 2, b'h', b'i']);
                p.extend(std::iter::repeat_n(0, after));
                p.push(1); // PING, after the padding
                let mut got = Vec::new();
                let f = walk(&p, |o, d| {
                    got.push((o, d.to_vec()));
                    Ok(())
                })
                .unwrap();
                assert_eq!((f.crypto, got), (1, vec![(0, b"hi".to_vec())]), "{before} {after}");
                // A frame type that is not allowed after the padding is still seen.
                *p.last_mut().unwrap() = 8;
                assert_eq!(walk(&p, |_, _| Ok(())), Err(Bad::Frame), "{before} {after}");
            }
        }
    }
}
