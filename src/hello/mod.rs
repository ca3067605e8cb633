//! Incremental, zero-copy, allocation-free TLS ClientHello parser.
//!
//! [`parse`] looks at the bytes received so far on a connection and says whether they hold
//! a complete ClientHello ([`Parsed::Complete`]), a valid prefix of one
//! ([`Parsed::NeedMore`]: read more and call again with the longer buffer) or something we
//! will never route ([`Parsed::Rejected`], with a reason usable as a metrics label).
//!
//! Both kinds of fragmentation give the same result as the unsplit message: any number of
//! reads, and a handshake message split over any number of TLS records (down to 1-byte
//! payloads). Record fragments are never copied together: the internal cursor walks the
//! message across the record payloads in place (see `reader.rs`).
//!
//! Rejection is as early as the bytes allow: each length field is checked against its
//! enclosing length as soon as it is read, so an invalid prefix never yields `NeedMore`.
//! No input can make the parser panic or read out of bounds: every access is checked, and
//! there is no `unsafe` (forbidden below).
//!
//! The parser is stateless. So that a connection costs work linear in its bytes however its
//! client slices them, the caller drives a [`Framing`] after each read and parses once, when
//! it says [`Progress::Complete`]; [`Framing::advance`] looks only at bytes it has not seen
//! (record headers and the handshake header) and rejects framing faults as early as `parse`.
//!
//! Framing allowance: `max_hello_bytes` limits the ClientHello *body* (the 24-bit handshake
//! length), not the raw bytes, so any legal fragmentation is accepted: records of 1 to 2^14
//! bytes, each with its 5-byte header, i.e. `raw = 5 × records + 4 + body`, at most
//! [`Framing::max_raw_bytes`] = `6 × (max_hello_bytes + 4)` (a 6,000-byte hello in 1-byte
//! records is 36 KB raw, and accepted). [`Progress::NeedMore`]'s `at_least` says how far to grow
//! the buffer, assuming the rest comes in one record, so a slow client costs what it sent.
//!
//! [`parse_message`] is the same parser over a bare handshake message, without the record
//! layer (QUIC's CRYPTO frames); [`ja4()`] computes FoxIO's JA4 fingerprint of a parsed hello.
//!
//! Alert policy: [`Reject::alert`] names the fatal alert to send before closing, chosen to be
//! the one a rustls 0.23 server sends for the same bytes (decode_error for undecodable input,
//! protocol_version for no usable version, illegal_parameter for a duplicate extension,
//! unexpected_message for a wrong message or data after the hello, none where rustls closes
//! silently: a hello over its size limit, another record type inside the hello); its docs
//! list the few inputs where rustls answers otherwise, and why. [`Alert::record`] is the
//! 7-byte record, with rustls's record version `0x0303`.
//!
//! Version policy (RFC 8446 §4.2.1, [`Versions`]): the record-layer version is ignored beyond
//! its major byte (TLS 1.x clients legitimately put `0x0300` or `0x0301` there). When
//! `supported_versions` is present it alone says what the client offers, and `legacy_version`
//! is only a field; GREASE and unknown values in it never count. Without it, the client offers
//! every version up to `legacy_version`, where anything above TLS 1.2 counts as TLS 1.2. A hello
//! that offers nothing known is rejected as [`Reject::NoKnownVersion`], one whose best offer is
//! SSL 3.0 as [`Reject::Ssl3OrOlder`].
#![forbid(unsafe_code)]

mod alert;
mod framing;
mod host;
mod ja4;
mod reader;
mod server;
#[cfg(test)]
mod tests;

use core::fmt;

pub use alert::Alert;
pub use framing::{Framing, Progress};
pub use host::HostName;
pub use ja4::{ja4, ja4_raw, Ja4, Transport};
use reader::{malformed, Cursor, Error, Mark, Reader, Span, HANDSHAKE, R, REC_TRAILING};
pub use server::{server_hello_version, ServerVersion};

/// Default limit on the ClientHello body (its 24-bit handshake length). Post-quantum
/// hellos from current browsers are about 2 KiB; 16 KiB is one full record.
pub const DEFAULT_MAX_HELLO_BYTES: usize = 16 * 1024;

/// Wire value of SSL 3.0.
pub const SSL3_0: u16 = 0x0300;
/// Wire value of TLS 1.0.
pub const TLS1_0: u16 = 0x0301;
/// Wire value of TLS 1.2.
pub const TLS1_2: u16 = 0x0303;
/// Wire value of TLS 1.3.
pub const TLS1_3: u16 = 0x0304;

const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_KEY_SHARE: u16 = 51;
const EXT_ECH: u16 = 0xfe0d;

/// Result of [`parse`].
// Large by design: the host name is stored inline because the parser never allocates.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A valid prefix: read more bytes and call [`parse`] again with the whole buffer.
    NeedMore,
    Complete(ClientHello<'a>),
    Rejected(Reject),
}

/// Why the bytes are not a ClientHello we can route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reject {
    /// The first byte is not a TLS handshake record (0x16), or the record version's major
    /// byte is not 3. `http` when the bytes start with an HTTP/1 method or the HTTP/2
    /// preface, so that plain HTTP can be counted (and one day redirected) apart.
    NotTls { http: bool },
    /// An SSL 2.0-format ClientHello (2-byte header with the high bit set, message type 1).
    SslV2,
    /// Offers nothing better than SSL 3.0 (see the module docs for the exact policy).
    Ssl3OrOlder,
    /// `supported_versions` offers no version we know (only GREASE or unknown values).
    NoKnownVersion,
    /// The declared handshake length exceeds the configured limit.
    TooLarge,
    /// A length or value that does not add up; names the field.
    Malformed(&'static str),
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// The same extension type appears twice (RFC 8446 §4.2).
    DuplicateExtension(u16),
    /// More than one host_name entry in server_name (RFC 6066 §3).
    MultipleHostNames,
}

impl Reject {
    /// Every value [`Reject::as_str`] can return, e.g. to pre-register metric labels.
    pub const LABELS: &'static [&'static str] = &[
        "not_tls",
        "http",
        "sslv2",
        "ssl3_or_older",
        "no_known_version",
        "too_large",
        "malformed",
        "not_client_hello",
        "duplicate_extension",
        "multiple_host_names",
    ];

    /// A stable, low-cardinality label for metrics (no field names or extension numbers).
    pub fn as_str(&self) -> &'static str {
        match self {
            Reject::NotTls { http: false } => "not_tls",
            Reject::NotTls { http: true } => "http",
            Reject::SslV2 => "sslv2",
            Reject::Ssl3OrOlder => "ssl3_or_older",
            Reject::NoKnownVersion => "no_known_version",
            Reject::TooLarge => "too_large",
            Reject::Malformed(_) => "malformed",
            Reject::NotClientHello => "not_client_hello",
            Reject::DuplicateExtension(_) => "duplicate_extension",
            Reject::MultipleHostNames => "multiple_host_names",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::NotTls { http: false } => f.write_str("not TLS"),
            Reject::NotTls { http: true } => f.write_str("plain HTTP on a TLS port"),
            Reject::SslV2 => f.write_str("SSL 2.0 ClientHello"),
            Reject::Ssl3OrOlder => f.write_str("offers SSL 3.0 or older only"),
            Reject::NoKnownVersion => f.write_str("supported_versions offers no known version"),
            Reject::TooLarge => f.write_str("ClientHello too large"),
            Reject::Malformed(field) => write!(f, "malformed ClientHello: {field}"),
            Reject::NotClientHello => f.write_str("first handshake message is not a ClientHello"),
            Reject::DuplicateExtension(t) => write!(f, "duplicate extension {t:#06x}"),
            Reject::MultipleHostNames => f.write_str("more than one host_name in server_name"),
        }
    }
}

impl std::error::Error for Reject {}

/// Parses the ClientHello at the start of `buf`, the bytes received so far.
///
/// `max_hello_bytes` limits the declared ClientHello body length (the 24-bit handshake
/// length); larger hellos are rejected as soon as that length is read.
pub fn parse(buf: &[u8], max_hello_bytes: usize) -> Parsed<'_> {
    match parse_hello(buf, max_hello_bytes) {
        Ok(hello) => Parsed::Complete(hello),
        Err(Error::NeedMore) => Parsed::NeedMore,
        Err(Error::Reject(r)) => Parsed::Rejected(r),
    }
}

/// HTTP/1 methods (and the HTTP/2 preface) as their first 4 bytes.
const HTTP_STARTS: [&[u8; 4]; 10] =
    [b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE", b"CONN", b"PATC", b"TRAC", b"PRI "];

/// Classifies the first bytes: Ok(()) when they start a TLS handshake record.
fn sniff(buf: &[u8]) -> R<()> {
    let not_tls = Error::Reject(Reject::NotTls { http: false });
    match buf {
        [] => Err(Error::NeedMore),
        [HANDSHAKE] | [HANDSHAKE, 3, ..] => Ok(()),
        [HANDSHAKE, ..] => Err(not_tls),
        // SSLv2 record: 2-byte length with the high bit set, then msg_type 1 (CLIENT-HELLO).
        [b0, ..] if b0 & 0x80 != 0 => match buf.get(2).copied() {
            None => Err(Error::NeedMore),
            Some(1) => Err(Error::Reject(Reject::SslV2)),
            Some(_) => Err(not_tls),
        },
        _ => {
            let head = buf.get(..4).unwrap_or(buf);
            let mut prefix_of_method = false;
            for m in HTTP_STARTS {
                if m.starts_with(head) {
                    if head.len() == 4 {
                        return Err(Error::Reject(Reject::NotTls { http: true }));
                    }
                    prefix_of_method = true;
                }
            }
            if prefix_of_method {
                Err(Error::NeedMore)
            } else {
                Err(not_tls)
            }
        }
    }
}

/// GREASE values (RFC 8701): 0x0a0a, 0x1a1a, ..., 0xfafa.
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

fn parse_hello(buf: &[u8], max_hello_bytes: usize) -> R<ClientHello<'_>> {
    sniff(buf)?;
    let mut cur = Cursor::new(buf);
    let mut hello = parse_handshake(&mut cur, max_hello_bytes)?;
    // The message is complete. Its last record must end with it: anything after it in the
    // same record would be a second handshake message in the first flight.
    if !cur.at_record_end() {
        return Err(malformed(REC_TRAILING));
    }
    check_versions(&hello)?;
    hello.len = cur.pos();
    hello.records = cur.records();
    Ok(hello)
}

/// Parses a bare ClientHello handshake message: the 4-byte handshake header and the body,
/// with no TLS record layer around it. This is what QUIC carries in the CRYPTO frames of its
/// Initial packets (RFC 9001 §4), once the caller has put the frames' data in order.
///
/// Same parser, results and accessors as [`parse`]: `msg` is the message bytes received so
/// far, [`Parsed::NeedMore`] asks for more of them, and [`ClientHello::len`] counts message
/// bytes (anything after the message is not consumed). The record-layer rejects
/// (`NotTls`, `SslV2`, `Malformed("record …")`) cannot occur.
pub fn parse_message(msg: &[u8], max_hello_bytes: usize) -> Parsed<'_> {
    let mut cur = Cursor::message(msg);
    let res = parse_handshake(&mut cur, max_hello_bytes).and_then(|mut hello| {
        check_versions(&hello)?;
        hello.len = cur.pos();
        Ok(hello)
    });
    match res {
        Ok(hello) => Parsed::Complete(hello),
        Err(Error::NeedMore) => Parsed::NeedMore,
        Err(Error::Reject(r)) => Parsed::Rejected(r),
    }
}

/// The version policy of the module docs, applied once the whole message has been read.
fn check_versions(hello: &ClientHello<'_>) -> R<()> {
    match hello.versions.max() {
        None if hello.versions.from_extension => Err(Error::Reject(Reject::NoKnownVersion)),
        Some(v) if v >= TLS1_0 => Ok(()),
        _ => Err(Error::Reject(Reject::Ssl3OrOlder)),
    }
}

/// Reads the ClientHello handshake message (header and body) at `cur`, leaving `cur` just
/// after it. Shared by the record-layer and bare-message entry points; `len` and `records`
/// are left for the caller to fill in.
fn parse_handshake<'a>(cur: &mut Cursor<'a>, max_hello_bytes: usize) -> R<ClientHello<'a>> {
    let buf = cur.buf();
    if cur.u8()? != HANDSHAKE_CLIENT_HELLO {
        return Err(Error::Reject(Reject::NotClientHello));
    }
    let len = usize::from(cur.u8()?) << 16 | usize::from(cur.u16()?);
    if len > max_hello_bytes {
        return Err(Error::Reject(Reject::TooLarge));
    }
    let mut body = Reader::new(cur, len);

    let legacy_version = body.u16("legacy_version")?;
    body.skip(32, "random")?;
    let sid = body.u8("session_id length")?;
    if sid > 32 {
        return Err(malformed("session_id length"));
    }
    body.skip(usize::from(sid), "session_id length")?;

    let n = usize::from(body.u16("cipher_suites length")?);
    if n < 2 || n % 2 != 0 {
        return Err(malformed("cipher_suites length"));
    }
    let mut suites = body.sub(n, "cipher_suites length")?;
    let cipher_suites = suites.mark();
    suites.skip_rest()?;

    let n = body.u8("compression_methods length")?;
    if n == 0 {
        return Err(malformed("compression_methods length"));
    }
    body.skip(usize::from(n), "compression_methods length")?;

    let mut hello = ClientHello {
        buf,
        len: 0,
        records: 0,
        legacy_version,
        versions: Versions::up_to_legacy(legacy_version),
        top_version: legacy_version,
        sni: HostName::EMPTY,
        has_sni_ext: false,
        has_ech: false,
        cipher_suites,
        alpn: Mark::EMPTY,
        key_shares: Mark::EMPTY,
        extensions: Mark::EMPTY,
        signature_algorithms: Mark::EMPTY,
    };

    // Extensions are optional (SSL 3.0 style) but, if present, fill the rest exactly.
    if !body.is_empty() {
        let n = usize::from(body.u16("extensions length")?);
        if n != body.left() {
            return Err(malformed("extensions length"));
        }
        hello.extensions = body.mark();
        let mut seen = Seen::new();
        while !body.is_empty() {
            let typ = body.u16("extension type")?;
            let n = usize::from(body.u16("extension length")?);
            if !seen.insert(typ) {
                return Err(Error::Reject(Reject::DuplicateExtension(typ)));
            }
            let mut ext = body.sub(n, "extension length")?;
            match typ {
                EXT_SERVER_NAME => {
                    hello.has_sni_ext = true;
                    server_name(&mut ext, &mut hello.sni)?;
                }
                EXT_ALPN => hello.alpn = alpn(&mut ext)?,
                EXT_SIGNATURE_ALGORITHMS => hello.signature_algorithms = signature_algorithms(&mut ext)?,
                EXT_SUPPORTED_VERSIONS => {
                    (hello.versions, hello.top_version) = supported_versions(&mut ext)?;
                }
                EXT_KEY_SHARE => hello.key_shares = key_share(&mut ext)?,
                EXT_ECH => {
                    hello.has_ech = true;
                    ext.skip_rest()?;
                }
                _ => ext.skip_rest()?,
            }
            ext.finish("extension length")?;
        }
    }
    Ok(hello)
}

/// server_name (RFC 6066 §3). Stores the normalised host name in `name`, left empty when
/// there is no host_name entry or it is not a valid host name (not a reason to reject).
fn server_name(ext: &mut Reader<'_, '_>, name: &mut HostName) -> R<()> {
    let n = usize::from(ext.u16("server_name list length")?);
    if n == 0 || n != ext.left() {
        return Err(malformed("server_name list length"));
    }
    let mut found = false;
    while !ext.is_empty() {
        let typ = ext.u8("server_name type")?;
        if typ == 0 && found {
            return Err(Error::Reject(Reject::MultipleHostNames));
        }
        if typ != 0 {
            // No other name type is defined, so its encoding (and whatever follows it) cannot
            // be parsed: the rest of the list is ignored, as rustls does (RFC 6066 §3 lets a
            // server skip name types it does not know).
            return ext.skip_rest();
        }
        let n = usize::from(ext.u16("server_name length")?);
        found = true;
        let mut r = ext.sub(n, "server_name length")?;
        host_name(&mut r, name)?;
        r.finish("server_name length")?;
    }
    Ok(())
}

/// Reads the host_name bytes; copies them only when they straddle records.
fn host_name(r: &mut Reader<'_, '_>, name: &mut HostName) -> R<()> {
    let n = r.left();
    // One trailing dot is allowed on top of HostName::MAX_LEN.
    if n == 0 || n > HostName::MAX_LEN + 1 {
        return r.skip_rest();
    }
    let first = r.chunk(n, "server_name length")?;
    if first.len() == n {
        name.set(first);
        return Ok(());
    }
    let mut tmp = [0u8; HostName::MAX_LEN + 1];
    let mut filled = 0;
    let mut chunk = first;
    loop {
        let dst = tmp.get_mut(filled..filled + chunk.len()).ok_or(malformed("server_name"))?;
        dst.copy_from_slice(chunk);
        filled += chunk.len();
        if r.is_empty() {
            break;
        }
        chunk = r.chunk(n, "server_name length")?;
    }
    name.set(tmp.get(..filled).unwrap_or(&[]));
    Ok(())
}

/// ALPN (RFC 7301): validates the list and returns the position of its entries.
fn alpn(ext: &mut Reader<'_, '_>) -> R<Mark> {
    let n = usize::from(ext.u16("alpn list length")?);
    if n == 0 || n != ext.left() {
        return Err(malformed("alpn list length"));
    }
    let list = ext.mark();
    while !ext.is_empty() {
        let n = ext.u8("alpn protocol length")?;
        if n == 0 {
            return Err(malformed("alpn protocol length"));
        }
        ext.skip(usize::from(n), "alpn protocol length")?;
    }
    Ok(list)
}

/// supported_versions (RFC 8446 §4.2.1): the known versions offered (GREASE and unknown
/// values, such as drafts or versions not yet defined, are skipped), and the highest value
/// listed, GREASE aside, known or not (what JA4 reports).
fn supported_versions(ext: &mut Reader<'_, '_>) -> R<(Versions, u16)> {
    let n = usize::from(ext.u8("supported_versions length")?);
    if n == 0 || n % 2 != 0 || n != ext.left() {
        return Err(malformed("supported_versions length"));
    }
    let mut set = Versions { bits: 0, from_extension: true };
    let mut top = 0;
    while !ext.is_empty() {
        let v = ext.u16("supported_versions length")?;
        set.insert(v);
        if !is_grease(v) {
            top = top.max(v);
        }
    }
    Ok((set, top))
}

/// signature_algorithms (RFC 8446 §4.2.3): a non-empty list of 2-byte schemes; returns the
/// position of the list.
fn signature_algorithms(ext: &mut Reader<'_, '_>) -> R<Mark> {
    let n = usize::from(ext.u16("signature_algorithms length")?);
    if n == 0 || n % 2 != 0 || n != ext.left() {
        return Err(malformed("signature_algorithms length"));
    }
    let list = ext.mark();
    ext.skip_rest()?;
    Ok(list)
}

/// The protocol versions a ClientHello offers, among the ones that exist: SSL 3.0 (`0x0300`)
/// to TLS 1.3 (`0x0304`). Anything else a client lists (GREASE, drafts, future versions)
/// cannot be negotiated by any server we pass to, so it never counts: a `min_tls` check
/// compares against [`Versions::max`], and no unknown value can lift an old offer past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// Bit `v - 0x0300` for each known version `v` offered.
    bits: u8,
    /// Whether the set came from `supported_versions` (else from `legacy_version`).
    from_extension: bool,
}

impl Versions {
    /// Without supported_versions: TLS 1.0 up to `legacy_version`, which counts as TLS 1.2 at
    /// most (RFC 8446 §4.2.1: such a client is negotiated TLS 1.2 or below). SSL 3.0 counts only
    /// when it is the `legacy_version` itself: a TLS client never accepts it from a server
    /// (RFC 7568 §3), so it is not part of a TLS 1.x client's offer.
    fn up_to_legacy(legacy: u16) -> Self {
        let top = legacy.min(TLS1_2);
        let bits = match top {
            _ if top < SSL3_0 => 0,
            SSL3_0 => 1,
            _ => ((1u8 << (top - SSL3_0 + 1)) - 1) & !1,
        };
        Self { bits, from_extension: false }
    }

    fn insert(&mut self, v: u16) {
        if (SSL3_0..=TLS1_3).contains(&v) {
            self.bits |= 1 << (v - SSL3_0);
        }
    }

    /// Whether `v` is offered.
    pub fn contains(&self, v: u16) -> bool {
        (SSL3_0..=TLS1_3).contains(&v) && self.bits & (1 << (v - SSL3_0)) != 0
    }

    /// The highest known version offered.
    pub fn max(&self) -> Option<u16> {
        (self.bits != 0).then(|| SSL3_0 + 7 - self.bits.leading_zeros() as u16)
    }

    /// The lowest known version offered.
    pub fn min(&self) -> Option<u16> {
        (self.bits != 0).then(|| SSL3_0 + self.bits.trailing_zeros() as u16)
    }

    /// Whether the versions came from the supported_versions extension.
    pub fn from_extension(&self) -> bool {
        self.from_extension
    }
}

/// key_share (RFC 8446 §4.2.8): validates the entries and returns their position. An empty
/// list is valid (the client asks for a HelloRetryRequest).
fn key_share(ext: &mut Reader<'_, '_>) -> R<Mark> {
    let n = usize::from(ext.u16("key_share length")?);
    if n != ext.left() {
        return Err(malformed("key_share length"));
    }
    let list = ext.mark();
    while !ext.is_empty() {
        ext.u16("key_share entry")?;
        let n = usize::from(ext.u16("key_share entry")?);
        if n == 0 {
            return Err(malformed("key_share key_exchange length"));
        }
        ext.skip(n, "key_share entry")?;
    }
    Ok(list)
}

/// Extension types seen so far, without allocating. Real hellos have about 20 extensions:
/// a 64-bit Bloom filter answers "new" for most of them, the others are checked against
/// a short list. A hostile hello with more than 32 extensions switches to an 8 KiB bitmap
/// on the stack, so that the check stays O(1) per extension whatever the input.
struct Seen {
    bloom: u64,
    n: usize,
    small: [u16; 32],
    big: Option<[u64; 1024]>,
}

impl Seen {
    fn new() -> Self {
        Seen { bloom: 0, n: 0, small: [0; 32], big: None }
    }

    /// False if `t` was already seen.
    #[inline]
    fn insert(&mut self, t: u16) -> bool {
        if let Some(bits) = &mut self.big {
            return bitmap_insert(bits, t);
        }
        // Top 6 bits of a multiplicative hash: spreads GREASE values (0x?a?a) too.
        let bit = 1u64 << (u32::from(t).wrapping_mul(0x9e37_79b1) >> 26);
        let maybe_seen = self.bloom & bit != 0;
        self.bloom |= bit;
        if maybe_seen && self.small.get(..self.n).unwrap_or(&[]).contains(&t) {
            return false;
        }
        if let Some(slot) = self.small.get_mut(self.n) {
            *slot = t;
            self.n += 1;
            return true;
        }
        self.overflow(t)
    }

    #[cold]
    #[inline(never)]
    fn overflow(&mut self, t: u16) -> bool {
        let mut bits = [0u64; 1024];
        for &s in &self.small {
            bitmap_insert(&mut bits, s);
        }
        bitmap_insert(&mut bits, t);
        self.big = Some(bits);
        true
    }
}

fn bitmap_insert(bits: &mut [u64; 1024], t: u16) -> bool {
    let mask = 1u64 << (t & 63);
    match bits.get_mut(usize::from(t >> 6)) {
        Some(w) if *w & mask != 0 => false,
        Some(w) => {
            *w |= mask;
            true
        }
        None => true, // unreachable: t >> 6 < 1024
    }
}

/// A parsed ClientHello. `Copy` and heap-free (about 360 bytes, mostly the inline host
/// name); borrows the buffer given to [`parse`] for the lists (ALPN, key shares, cipher
/// suites, extensions, signature algorithms), which are re-walked on demand rather than
/// stored.
#[derive(Clone, Copy)]
pub struct ClientHello<'a> {
    /// The buffer given to [`parse`] or [`parse_message`]; the marks below point into it.
    buf: &'a [u8],
    len: usize,
    records: u32,
    legacy_version: u16,
    versions: Versions,
    /// The highest version listed in supported_versions, GREASE aside, known or not; else
    /// `legacy_version`.
    top_version: u16,
    /// Empty when there is no (valid) host name.
    sni: HostName,
    has_sni_ext: bool,
    has_ech: bool,
    cipher_suites: Mark,
    alpn: Mark,
    key_shares: Mark,
    /// The extensions block (empty without one).
    extensions: Mark,
    signature_algorithms: Mark,
}

impl<'a> ClientHello<'a> {
    /// The normalised host name from server_name; None if the extension is absent, has no
    /// host_name entry, or its host name is invalid (see [`HostName::new`]).
    pub fn sni(&self) -> Option<&str> {
        self.host_name().map(HostName::as_str)
    }

    /// [`ClientHello::sni`] as a [`HostName`].
    pub fn host_name(&self) -> Option<&HostName> {
        Some(&self.sni).filter(|h| !h.is_empty())
    }

    /// Whether a server_name extension was sent, valid host name or not: with
    /// `sni().is_none()` this tells "no SNI" from "unusable SNI" for metrics.
    pub fn has_sni_extension(&self) -> bool {
        self.has_sni_ext
    }

    /// The ALPN protocols, in the client's order; empty without the extension.
    ///
    /// Items are [`AlpnProto`] rather than `&'a [u8]` because in a record-fragmented hello
    /// a protocol name may straddle two records; such a name is copied into the item
    /// (at most 255 bytes, inline), all others are borrowed from the buffer.
    pub fn alpn(&self) -> Alpn<'a> {
        Alpn { r: self.alpn.span(self.buf) }
    }

    /// The highest known version offered (see [`Versions`]); wire value, `0x0304` is TLS 1.3.
    /// At least TLS 1.0 in a parsed hello.
    pub fn max_version(&self) -> u16 {
        self.versions.max().unwrap_or(0)
    }

    /// The lowest known version offered: a server may pick any offered version, so a route
    /// whose `min_tls` is above this one must check the version its back end chose.
    pub fn min_version(&self) -> u16 {
        self.versions.min().unwrap_or(0)
    }

    /// Every known version offered.
    pub fn versions(&self) -> Versions {
        self.versions
    }

    /// The ClientHello's `legacy_version` field (`client_version` before TLS 1.3).
    pub fn legacy_version(&self) -> u16 {
        self.legacy_version
    }

    /// Whether the encrypted_client_hello extension (0xfe0d) is present. A GREASE ECH
    /// extension (sent by Chrome without an ECH config) is indistinguishable by design.
    pub fn has_ech(&self) -> bool {
        self.has_ech
    }

    /// Named groups of the key shares offered, in order, GREASE values skipped.
    pub fn key_share_groups(&self) -> KeyShareGroups<'a> {
        KeyShareGroups { r: self.key_shares.span(self.buf) }
    }

    /// Cipher suites offered, in order, GREASE values skipped.
    pub fn cipher_suites(&self) -> CipherSuites<'a> {
        CipherSuites { r: self.cipher_suites.span(self.buf) }
    }

    /// Extension types, in the client's order, GREASE values skipped.
    pub fn extension_types(&self) -> ExtensionTypes<'a> {
        ExtensionTypes { r: self.extensions.span(self.buf) }
    }

    /// The signature_algorithms extension's schemes, in the client's order, GREASE values
    /// skipped; empty without the extension.
    pub fn signature_algorithms(&self) -> SignatureAlgorithms<'a> {
        SignatureAlgorithms { r: self.signature_algorithms.span(self.buf) }
    }

    /// The highest version value the client lists, as JA4 reads it: the largest non-GREASE
    /// value in supported_versions (known or not, so a draft or future version counts), else
    /// `legacy_version`. Not a policy input: use [`ClientHello::max_version`] for that.
    pub fn highest_listed_version(&self) -> u16 {
        self.top_version
    }

    /// Bytes of the buffer consumed: whole records, up to and including the record that
    /// holds the end of the ClientHello. Anything after (e.g. 0-RTT data) is not consumed.
    /// From [`parse_message`]: the message's bytes (4-byte header and body).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (a ClientHello is never empty). Here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the ClientHello spans more than one TLS record.
    pub fn is_record_fragmented(&self) -> bool {
        self.records > 1
    }
}

impl PartialEq for ClientHello<'_> {
    /// Semantic equality: same consumed length and framing, same extracted values.
    fn eq(&self, o: &Self) -> bool {
        self.len == o.len
            && self.records == o.records
            && self.legacy_version == o.legacy_version
            && self.versions == o.versions
            && self.host_name() == o.host_name()
            && self.has_sni_ext == o.has_sni_ext
            && self.has_ech == o.has_ech
            && self.alpn().eq(o.alpn())
            && self.key_share_groups().eq(o.key_share_groups())
            && self.cipher_suites().eq(o.cipher_suites())
            && self.top_version == o.top_version
            && self.extension_types().eq(o.extension_types())
            && self.signature_algorithms().eq(o.signature_algorithms())
    }
}

impl Eq for ClientHello<'_> {}

impl fmt::Debug for ClientHello<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct List<I>(I);
        impl<I: Iterator<Item = T> + Clone, T: fmt::Debug> fmt::Debug for List<I> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list().entries(self.0.clone()).finish()
            }
        }
        struct Hex<I>(I);
        impl<I: Iterator<Item = u16> + Clone> fmt::Debug for Hex<I> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut l = f.debug_list();
                for v in self.0.clone() {
                    l.entry(&format_args!("{v:#06x}"));
                }
                l.finish()
            }
        }
        f.debug_struct("ClientHello")
            .field("len", &self.len)
            .field("records", &self.records)
            .field("sni", &self.host_name())
            .field("has_sni_extension", &self.has_sni_ext)
            .field("alpn", &List(self.alpn()))
            .field("legacy_version", &format_args!("{:#06x}", self.legacy_version))
            .field("max_version", &format_args!("{:#06x}", self.max_version()))
            .field("min_version", &format_args!("{:#06x}", self.min_version()))
            .field("has_ech", &self.has_ech)
            .field("key_share_groups", &Hex(self.key_share_groups()))
            .field("cipher_suites", &Hex(self.cipher_suites()))
            .field("extension_types", &Hex(self.extension_types()))
            .field("signature_algorithms", &Hex(self.signature_algorithms()))
            .finish()
    }
}

/// Iterator over the ALPN protocols of a [`ClientHello`].
#[derive(Clone)]
pub struct Alpn<'a> {
    r: Span<'a>,
}

impl<'a> Iterator for Alpn<'a> {
    type Item = AlpnProto<'a>;

    fn next(&mut self) -> Option<AlpnProto<'a>> {
        // The list was validated by `parse` over the same bytes, so errors cannot occur;
        // they would end the iteration.
        if self.r.is_empty() {
            return None;
        }
        self.r
            .read(|r| {
                let n = usize::from(r.u8("alpn")?);
                let first = r.chunk(n, "alpn")?;
                if first.len() == n {
                    return Ok(AlpnProto(ProtoRepr::Borrowed(first)));
                }
                let mut bytes = [0u8; 255];
                let mut filled = 0;
                let mut chunk = first;
                loop {
                    let dst = bytes.get_mut(filled..filled + chunk.len()).ok_or(malformed("alpn"))?;
                    dst.copy_from_slice(chunk);
                    filled += chunk.len();
                    if filled == n {
                        break;
                    }
                    chunk = r.chunk(n - filled, "alpn")?;
                }
                Ok(AlpnProto(ProtoRepr::Inline { len: n as u8, bytes }))
            })
            .ok()
    }
}

/// One ALPN protocol name (1..=255 bytes): borrowed from the buffer, or an inline copy
/// when it straddled two records. Compares with byte strings: `proto == b"h2"`.
#[derive(Clone, Copy)]
pub struct AlpnProto<'a>(ProtoRepr<'a>);

#[allow(clippy::large_enum_variant)] // inline on purpose: no heap
#[derive(Clone, Copy)]
enum ProtoRepr<'a> {
    Borrowed(&'a [u8]),
    Inline { len: u8, bytes: [u8; 255] },
}

impl<'a> AlpnProto<'a> {
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            ProtoRepr::Borrowed(s) => s,
            ProtoRepr::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
        }
    }

    /// The name as a slice of the parsed buffer, unless it straddled records.
    pub fn borrowed(&self) -> Option<&'a [u8]> {
        match self.0 {
            ProtoRepr::Borrowed(s) => Some(s),
            ProtoRepr::Inline { .. } => None,
        }
    }
}

impl core::ops::Deref for AlpnProto<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for AlpnProto<'_> {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for AlpnProto<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.as_bytes() == o.as_bytes()
    }
}

impl Eq for AlpnProto<'_> {}

impl PartialEq<[u8]> for AlpnProto<'_> {
    fn eq(&self, o: &[u8]) -> bool {
        self.as_bytes() == o
    }
}

impl PartialEq<&[u8]> for AlpnProto<'_> {
    fn eq(&self, o: &&[u8]) -> bool {
        self.as_bytes() == *o
    }
}

impl<const N: usize> PartialEq<[u8; N]> for AlpnProto<'_> {
    fn eq(&self, o: &[u8; N]) -> bool {
        self.as_bytes() == o
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for AlpnProto<'_> {
    fn eq(&self, o: &&[u8; N]) -> bool {
        self.as_bytes() == *o
    }
}

impl fmt::Debug for AlpnProto<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.as_bytes().escape_ascii())
    }
}

/// Iterator over the key-share groups of a [`ClientHello`].
#[derive(Clone)]
pub struct KeyShareGroups<'a> {
    r: Span<'a>,
}

impl Iterator for KeyShareGroups<'_> {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        while !self.r.is_empty() {
            let group = self
                .r
                .read(|r| {
                    let group = r.u16("key_share")?;
                    let n = r.u16("key_share")?;
                    r.skip(usize::from(n), "key_share")?;
                    Ok(group)
                })
                .ok()?;
            if !is_grease(group) {
                return Some(group);
            }
        }
        None
    }
}

/// Iterator over a list of 2-byte code points of a [`ClientHello`], in the client's order,
/// GREASE values skipped: [`CipherSuites`], [`SignatureAlgorithms`].
#[derive(Clone)]
pub struct Codes<'a> {
    r: Span<'a>,
}

/// Iterator over the cipher suites of a [`ClientHello`].
pub type CipherSuites<'a> = Codes<'a>;
/// Iterator over the signature algorithms of a [`ClientHello`].
pub type SignatureAlgorithms<'a> = Codes<'a>;

impl Iterator for Codes<'_> {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        while !self.r.is_empty() {
            let v = self.r.read(|r| r.u16("list")).ok()?;
            if !is_grease(v) {
                return Some(v);
            }
        }
        None
    }
}

/// Iterator over the extension types of a [`ClientHello`].
#[derive(Clone)]
pub struct ExtensionTypes<'a> {
    r: Span<'a>,
}

impl Iterator for ExtensionTypes<'_> {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        while !self.r.is_empty() {
            let typ = self
                .r
                .read(|r| {
                    let typ = r.u16("extension")?;
                    let n = r.u16("extension")?;
                    r.skip(usize::from(n), "extension")?;
                    Ok(typ)
                })
                .ok()?;
            if !is_grease(typ) {
                return Some(typ);
            }
        }
        None
    }
}
