//! Bounds-checked cursors over the logical handshake message.
//!
//! A ClientHello may be split over several TLS records. Instead of copying the fragments
//! together, [`Cursor`] walks the handshake message across the record payloads in place,
//! validating and skipping each 5-byte record header as it crosses it. [`Reader`] adds a
//! length limit on top, so that every length field is checked against its enclosing one
//! *before* we wait for more bytes: an inconsistent prefix is rejected at once.
//!
//! Every access goes through `slice::get`, so no input can make these panic.

use super::Reject;

/// Why a read did not produce a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Error {
    /// The buffer ends before the value; the prefix read so far is valid.
    NeedMore,
    Reject(Reject),
}

pub(crate) type R<T> = Result<T, Error>;

#[inline]
pub(crate) fn malformed(field: &'static str) -> Error {
    Error::Reject(Reject::Malformed(field))
}

/// TLS content type of handshake records.
pub(crate) const HANDSHAKE: u8 = 0x16;
/// RFC 8446 §5.1: a plaintext record carries at most 2^14 bytes.
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
/// RFC 5246 §6.2.3 lets a protected record carry up to 2^14 + 2048 bytes; rustls deframes
/// records shorter than that, whatever their type, and refuses the others as undecodable.
const MAX_ANY_RECORD_PAYLOAD: usize = MAX_RECORD_PAYLOAD + 2048;
/// Bytes of a TLS record header: type, version, length.
pub(crate) const RECORD_HEADER: usize = 5;

/// Field names of the record-layer rejects, shared with [`super::Reject::alert`].
pub(crate) const REC_NOT_HANDSHAKE: &str = "record type: non-handshake record inside ClientHello";
pub(crate) const REC_UNKNOWN_TYPE: &str = "record type: unknown content type inside ClientHello";
pub(crate) const REC_VERSION: &str = "record version";
pub(crate) const REC_EMPTY: &str = "record length: empty handshake record";
pub(crate) const REC_OVER_2_14: &str = "record length: over 2^14";
/// Longer than any record rustls deframes (it refuses 2^14 + 2048 and up with decode_error).
pub(crate) const REC_OVER_MAX: &str = "record length: 2^14 + 2048 or more";
pub(crate) const REC_TRAILING: &str = "record: data after ClientHello";

/// Checks the record header at the start of `h` (a handshake record continuing, or starting,
/// the ClientHello): whatever part of it is present is checked before asking for more, so
/// that a bad prefix is rejected at once. Returns the payload length.
///
/// The one place that validates record headers: [`Cursor`] calls it when it crosses a
/// record boundary, and so does [`super::Framing`] when it scans ahead of the parse.
///
/// The checks come in rustls's order (type, version, length), so that a refused record gets
/// the alert rustls sends for it: a record of another known type is judged on its whole
/// header, as rustls does, before it is refused as interleaved.
#[inline]
pub(crate) fn record_header(h: &[u8]) -> R<usize> {
    let other = match h.first() {
        None | Some(&HANDSHAKE) => false,
        // change_cipher_spec, alert, application_data, heartbeat.
        Some(0x14 | 0x15 | 0x17 | 0x18) => true,
        Some(_) => return Err(malformed(REC_UNKNOWN_TYPE)),
    };
    if let Some(&major) = h.get(1) {
        if major != 3 {
            return Err(malformed(REC_VERSION));
        }
    }
    let len = match (h.get(3), h.get(4)) {
        (Some(&a), Some(&b)) => usize::from(u16::from_be_bytes([a, b])),
        _ => return Err(Error::NeedMore),
    };
    // RFC 8446 §5.1 forbids zero-length handshake fragments (they would also let a peer make
    // us walk an unbounded number of headers); only application data may be empty.
    if len == 0 && h.first() != Some(&0x17) {
        return Err(malformed(REC_EMPTY));
    }
    if len >= MAX_ANY_RECORD_PAYLOAD {
        return Err(malformed(REC_OVER_MAX));
    }
    if other {
        return Err(malformed(REC_NOT_HANDSHAKE));
    }
    if len > MAX_RECORD_PAYLOAD {
        return Err(malformed(REC_OVER_2_14));
    }
    Ok(len)
}

/// Position in the handshake message, which is spread over the payloads of one or more
/// handshake records in `buf`. Copy, so a position can be saved and re-read later.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    /// Index in `buf` of the next message byte (or of the next record header when
    /// `pos == rec_end`).
    pos: usize,
    /// `min(rec_end, buf.len())`: bytes up to here can be read without further checks
    /// (the fast path of every read).
    seg_end: usize,
    /// Index in `buf` one past the current record's payload; may lie beyond `buf.len()`
    /// while the record is still arriving.
    rec_end: usize,
    /// Records entered so far.
    records: u32,
}

impl<'a> Cursor<'a> {
    /// A cursor before the first record header at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0, seg_end: 0, rec_end: 0, records: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// The whole buffer the cursor walks.
    pub(crate) fn buf(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn records(&self) -> u32 {
        self.records
    }

    /// Whether the cursor sits exactly at the end of a record's payload.
    pub(crate) fn at_record_end(&self) -> bool {
        self.pos == self.rec_end
    }

    /// A cursor over a bare handshake message (no record layer, as in QUIC CRYPTO frames):
    /// the whole of `msg` is one segment, and the "record" never ends.
    pub(crate) fn message(msg: &'a [u8]) -> Self {
        Cursor { buf: msg, pos: 0, seg_end: msg.len(), rec_end: usize::MAX, records: 0 }
    }

    /// Enters the record whose header starts at `pos` (== `rec_end`).
    #[cold]
    #[inline(never)]
    fn next_record(&mut self) -> R<()> {
        let len = record_header(self.buf.get(self.pos..).unwrap_or(&[]))?;
        self.pos += RECORD_HEADER;
        self.rec_end = self.pos + len;
        self.seg_end = self.rec_end.min(self.buf.len());
        self.records += 1;
        Ok(())
    }

    /// Up to `max` (> 0) contiguous message bytes: never empty, possibly shorter than `max`
    /// at a record boundary or at the end of `buf`.
    #[inline(always)]
    pub(crate) fn chunk(&mut self, max: usize) -> R<&'a [u8]> {
        if self.pos == self.rec_end {
            self.next_record()?;
        }
        let end = self.seg_end.min(self.pos.saturating_add(max));
        match self.buf.get(self.pos..end) {
            Some(s) if !s.is_empty() => {
                self.pos = end;
                Ok(s)
            }
            _ => Err(Error::NeedMore),
        }
    }

    #[inline(always)]
    pub(crate) fn u8(&mut self) -> R<u8> {
        if self.pos < self.seg_end {
            if let Some(&b) = self.buf.get(self.pos) {
                self.pos += 1;
                return Ok(b);
            }
        }
        self.u8_slow()
    }

    #[cold]
    #[inline(never)]
    fn u8_slow(&mut self) -> R<u8> {
        match self.chunk(1)?.first() {
            Some(&b) => Ok(b),
            None => Err(Error::NeedMore), // unreachable: chunk is never empty
        }
    }

    #[inline(always)]
    pub(crate) fn u16(&mut self) -> R<u16> {
        let end = self.pos.saturating_add(2);
        if end <= self.seg_end {
            if let Some(&[a, b]) = self.buf.get(self.pos..end) {
                self.pos = end;
                return Ok(u16::from_be_bytes([a, b]));
            }
        }
        self.u16_slow()
    }

    #[cold]
    #[inline(never)]
    fn u16_slow(&mut self) -> R<u16> {
        Ok(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }

    #[inline(always)]
    pub(crate) fn skip(&mut self, n: usize) -> R<()> {
        let end = self.pos.saturating_add(n);
        if end <= self.seg_end {
            self.pos = end;
            return Ok(());
        }
        self.skip_slow(n)
    }

    #[inline(never)]
    fn skip_slow(&mut self, mut n: usize) -> R<()> {
        while n > 0 {
            n -= self.chunk(n)?.len();
        }
        Ok(())
    }
}

/// A [`Cursor`] limited to the `left` bytes of one length-delimited field. Reading past
/// the limit is `Malformed(field)` even when the bytes have not arrived yet.
///
/// A sub-field's reader borrows the same cursor (rather than a copy of it) so that the
/// parse stays in registers: copying the cursor struct back and forth through the stack
/// cost more than the parsing itself.
pub(crate) struct Reader<'c, 'a> {
    cur: &'c mut Cursor<'a>,
    left: usize,
}

impl<'c, 'a> Reader<'c, 'a> {
    pub(crate) fn new(cur: &'c mut Cursor<'a>, left: usize) -> Self {
        Reader { cur, left }
    }

    pub(crate) fn left(&self) -> usize {
        self.left
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// [`Reader::span`] in 12 bytes, without the buffer (see [`Mark`]).
    #[inline(always)]
    pub(crate) fn mark(&self) -> Mark {
        Mark::of(self.cur, self.left)
    }

    #[inline(always)]
    fn take(&mut self, n: usize, field: &'static str) -> R<()> {
        if n > self.left {
            return Err(malformed(field));
        }
        self.left -= n;
        Ok(())
    }

    #[inline(always)]
    pub(crate) fn u8(&mut self, field: &'static str) -> R<u8> {
        self.take(1, field)?;
        self.cur.u8()
    }

    #[inline(always)]
    pub(crate) fn u16(&mut self, field: &'static str) -> R<u16> {
        self.take(2, field)?;
        self.cur.u16()
    }

    #[inline(always)]
    pub(crate) fn skip(&mut self, n: usize, field: &'static str) -> R<()> {
        self.take(n, field)?;
        self.cur.skip(n)
    }

    #[inline(always)]
    pub(crate) fn skip_rest(&mut self) -> R<()> {
        let n = self.left;
        self.left = 0;
        self.cur.skip(n)
    }

    /// Up to `max` contiguous bytes, at most `left`. `Malformed(field)` when empty.
    #[inline(always)]
    pub(crate) fn chunk(&mut self, max: usize, field: &'static str) -> R<&'a [u8]> {
        let max = max.min(self.left);
        if max == 0 {
            return Err(malformed(field));
        }
        let s = self.cur.chunk(max)?;
        self.left -= s.len();
        Ok(s)
    }

    /// The next `n` bytes as their own reader, over the same cursor. It must be consumed
    /// completely (see [`Reader::finish`]) before `self` is read again. Parsing the
    /// sub-field in place, rather than skipping it first, keeps rejection early.
    #[inline(always)]
    pub(crate) fn sub(&mut self, n: usize, field: &'static str) -> R<Reader<'_, 'a>> {
        self.take(n, field)?;
        Ok(Reader { cur: &mut *self.cur, left: n })
    }

    /// Ends a sub-reader, which must have been read to its end (else `Malformed(field)`).
    #[inline(always)]
    pub(crate) fn finish(self, field: &'static str) -> R<()> {
        if self.left != 0 {
            return Err(malformed(field));
        }
        Ok(())
    }
}

/// A saved [`Reader`]: a field's position and length, for iterating over it later.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span<'a> {
    cur: Cursor<'a>,
    left: usize,
}

impl<'a> Span<'a> {
    pub(crate) fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// Runs `f` on a reader over the rest of the span, then records how far it got.
    #[inline(always)]
    pub(crate) fn read<T>(&mut self, f: impl FnOnce(&mut Reader<'_, 'a>) -> R<T>) -> R<T> {
        let mut r = Reader { cur: &mut self.cur, left: self.left };
        let out = f(&mut r);
        self.left = r.left;
        out
    }
}

/// A [`Span`] without its buffer, in 12 bytes: a parsed ClientHello keeps five of these and
/// one reference to the buffer. Positions fit in `u32` because a handshake message is at
/// most 2^24 bytes, so the records holding it are at most 6 × 2^24 bytes (see
/// [`super::Framing::max_raw_bytes`]); `u32::MAX` stands for a bare message's endless record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    pos: u32,
    rec_end: u32,
    left: u32,
}

impl Mark {
    pub(crate) const EMPTY: Mark = Mark { pos: 0, rec_end: 0, left: 0 };

    #[inline(always)]
    fn of(cur: &Cursor<'_>, left: usize) -> Mark {
        let narrow = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Mark { pos: narrow(cur.pos), rec_end: narrow(cur.rec_end), left: narrow(left) }
    }

    /// The span this mark was taken from, over the same `buf`.
    #[inline(always)]
    pub(crate) fn span(self, buf: &[u8]) -> Span<'_> {
        let rec_end = if self.rec_end == u32::MAX { usize::MAX } else { self.rec_end as usize };
        let cur = Cursor { buf, pos: self.pos as usize, seg_end: rec_end.min(buf.len()), rec_end, records: 0 };
        Span { cur, left: self.left as usize }
    }
}
