//! Incremental framing: when is it worth parsing?
//!
//! [`parse`](super::parse) is stateless, so calling it after every read costs O(bytes so far)
//! each time: a client that sends its hello in 1-byte records over 1-byte segments makes the
//! re-parse loop quadratic. [`Framing`] remembers how far it has scanned and, after each
//! read, looks only at bytes it has not seen: the record headers (checked by the same
//! function the parser's cursor uses) and the 4-byte handshake header; the message bytes
//! themselves are skipped, not read. It says when the records holding the whole handshake
//! message are present ([`Progress::Complete`]: parse once, now), how many bytes the buffer
//! needs at least before that can happen ([`Progress::NeedMore`]), or why the bytes can
//! never be a ClientHello ([`Progress::Rejected`], as early as the framing allows).
//!
//! # Framing allowance
//!
//! The limit is on the ClientHello *body* (its 24-bit handshake length, `max_hello_bytes`),
//! whatever the record framing: records of any size from 1 byte to 2^14 are accepted, so the
//! raw bytes of an acceptable hello are `5 × records + 4 + body`, at most
//! [`Framing::max_raw_bytes`] = `6 × (max_hello_bytes + 4)` (1-byte records). A 6,000-byte
//! hello in 1-byte records (36 KiB raw) is accepted with the default 16 KiB limit. The
//! buffer never needs to be larger than [`Progress::NeedMore::at_least`], which assumes the
//! rest of the message comes in one record: a client sending little costs little.
//!
//! # Agreement with `parse`
//!
//! On the final buffer of a connection (the one `advance` answered last):
//! - `parse` Complete ⇒ `Complete`; `Complete` ⇒ `parse` gives Complete, or Rejected for a
//!   fault inside the message body (those are found by the one parse, not by the scan);
//! - `Rejected(r)` ⇒ `parse` gives `Rejected(r)`: on a framing fault the reason is the one
//!   `parse` finds first (one parse of the buffer, once, when the connection is refused);
//! - `NeedMore` ⇒ `parse` gives NeedMore, or Rejected for a body fault already visible.

use super::reader::{record_header, Error, RECORD_HEADER};
use super::{parse, sniff, Parsed, Reject, HANDSHAKE_CLIENT_HELLO};

/// Bytes of the handshake header: type and 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
/// Largest body a 24-bit handshake length can declare.
const MAX_BODY: usize = (1 << 24) - 1;

/// What [`Framing::advance`] knows after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The hello is not complete yet. It cannot be complete before the buffer holds
    /// `at_least` bytes (always more than it holds now): grow the buffer to that, no further,
    /// read, and call [`Framing::advance`] again.
    NeedMore {
        /// Lower bound on the raw bytes (records included) of the complete hello.
        at_least: usize,
    },
    /// The records holding the whole handshake message are in the buffer: call
    /// [`parse`](super::parse) once on it (it returns Complete or Rejected, never NeedMore).
    Complete,
    /// The bytes can never become a ClientHello we route, for this reason (the same reason
    /// [`parse`](super::parse) gives for the same buffer).
    Rejected(Reject),
}

/// Incremental framing tracker for one connection's first bytes (see the module docs of
/// [`hello`](super) for the framing allowance). Small and `Copy`; no allocation.
///
/// ```
/// use sni_dispatch::hello::{parse, Framing, Parsed, Progress, DEFAULT_MAX_HELLO_BYTES};
/// # let hello: &[u8] = include_bytes!("testdata/curl.bin");
/// let mut framing = Framing::new(DEFAULT_MAX_HELLO_BYTES);
/// let mut buf = Vec::new();
/// for segment in hello.chunks(100) {
///     buf.extend_from_slice(segment); // a read
///     match framing.advance(&buf) {
///         Progress::NeedMore { at_least } => assert!(at_least > buf.len()),
///         Progress::Complete => break,
///         Progress::Rejected(r) => panic!("{r}"),
///     }
/// }
/// let Parsed::Complete(h) = parse(&buf, DEFAULT_MAX_HELLO_BYTES) else { panic!() };
/// assert_eq!(h.sni(), Some("www.example.com"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    max_hello_bytes: usize,
    /// Whether the first bytes were classified as TLS (see `sniff`).
    sniffed: bool,
    /// Index of the next byte to scan: in a record's payload, or (`== rec_end`) the start of
    /// the next record header.
    pos: usize,
    /// Index one past the current record's payload.
    rec_end: usize,
    records: u32,
    /// Handshake header bytes seen so far.
    hs: [u8; HANDSHAKE_HEADER],
    hs_len: u8,
    /// Message body bytes not yet seen (meaningful once `hs_len == 4`).
    body_left: usize,
    /// The final answer, once there is one.
    verdict: Option<Progress>,
}

impl Framing {
    /// A tracker for a connection that has sent nothing yet. `max_hello_bytes` limits the
    /// ClientHello body as in [`parse`](super::parse).
    pub fn new(max_hello_bytes: usize) -> Self {
        Framing {
            max_hello_bytes,
            sniffed: false,
            pos: 0,
            rec_end: 0,
            records: 0,
            hs: [0; HANDSHAKE_HEADER],
            hs_len: 0,
            body_left: 0,
            verdict: None,
        }
    }

    /// The most raw bytes a hello within `max_hello_bytes` can take: `4 + body` message
    /// bytes in as many 1-byte records, each with its 5-byte header.
    pub const fn max_raw_bytes(max_hello_bytes: usize) -> usize {
        let body = if max_hello_bytes < MAX_BODY { max_hello_bytes } else { MAX_BODY };
        (HANDSHAKE_HEADER + body) * (RECORD_HEADER + 1)
    }

    /// Records entered so far.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Call after each read with all the bytes received so far (each call's `buf` extends
    /// the previous one). Scans only the bytes not seen before, so the total work over a
    /// connection is linear in its bytes; once it has answered `Complete` or `Rejected` it
    /// keeps answering the same.
    pub fn advance(&mut self, buf: &[u8]) -> Progress {
        if let Some(v) = self.verdict {
            return v;
        }
        let p = self.scan(buf);
        if !matches!(p, Progress::NeedMore { .. }) {
            self.verdict = Some(p);
        }
        p
    }

    fn scan(&mut self, buf: &[u8]) -> Progress {
        if !self.sniffed {
            match sniff(buf) {
                // A lone 0x16 passes before its version byte is in; a bad one is then caught
                // by `record_header`, and `refuse` names it as `parse` does (not TLS).
                Ok(()) => self.sniffed = true,
                Err(Error::NeedMore) => return self.need_more(),
                Err(Error::Reject(r)) => return Progress::Rejected(r),
            }
        }
        loop {
            if self.pos == self.rec_end {
                let len = match record_header(buf.get(self.pos..).unwrap_or(&[])) {
                    Ok(len) => len,
                    Err(Error::NeedMore) => return self.need_more(),
                    Err(Error::Reject(r)) => return self.refuse(buf, r),
                };
                self.pos += RECORD_HEADER;
                self.rec_end = self.pos + len;
                self.records = self.records.saturating_add(1);
            }
            let avail = self.rec_end.min(buf.len());
            if self.pos >= avail {
                return self.need_more();
            }
            if usize::from(self.hs_len) < HANDSHAKE_HEADER {
                // At most 4 bytes over the whole connection.
                while usize::from(self.hs_len) < HANDSHAKE_HEADER && self.pos < avail {
                    let (Some(slot), Some(&b)) = (self.hs.get_mut(usize::from(self.hs_len)), buf.get(self.pos)) else {
                        break;
                    };
                    *slot = b;
                    self.hs_len += 1;
                    self.pos += 1;
                }
                if self.hs[0] != HANDSHAKE_CLIENT_HELLO {
                    return self.refuse(buf, Reject::NotClientHello);
                }
                if usize::from(self.hs_len) < HANDSHAKE_HEADER {
                    continue;
                }
                let [_, a, b, c] = self.hs;
                self.body_left = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                if self.body_left > self.max_hello_bytes {
                    return self.refuse(buf, Reject::TooLarge);
                }
            } else {
                // Message bytes: skipped without being read (the parse reads them once).
                let take = self.body_left.min(avail - self.pos);
                self.pos += take;
                self.body_left -= take;
            }
            if self.body_left == 0 && usize::from(self.hs_len) == HANDSHAKE_HEADER {
                return Progress::Complete;
            }
        }
    }

    /// The message bytes still to come (a lower bound before the handshake header is in).
    fn message_left(&self) -> usize {
        if usize::from(self.hs_len) < HANDSHAKE_HEADER {
            HANDSHAKE_HEADER - usize::from(self.hs_len)
        } else {
            self.body_left
        }
    }

    /// `NeedMore` with the smallest buffer that could complete the hello: the rest of the
    /// message in the current record if it fits, else in one more record.
    fn need_more(&self) -> Progress {
        let need = self.message_left();
        let at_least = if self.pos == self.rec_end {
            self.pos.saturating_add(RECORD_HEADER).saturating_add(need)
        } else {
            let in_record = self.rec_end - self.pos;
            if need <= in_record {
                self.pos + need
            } else {
                self.rec_end.saturating_add(RECORD_HEADER).saturating_add(need - in_record)
            }
        };
        Progress::NeedMore { at_least }
    }

    /// A framing fault: the verdict is the reason `parse` finds first in the same bytes
    /// (a fault inside the message body may come before this one). One parse, once.
    #[cold]
    fn refuse(&self, buf: &[u8], own: Reject) -> Progress {
        match parse(buf, self.max_hello_bytes) {
            Parsed::Rejected(r) => Progress::Rejected(r),
            _ => Progress::Rejected(own),
        }
    }
}
