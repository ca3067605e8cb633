//! JA4, FoxIO's TLS client fingerprint (the JA4 method only, which is BSD-licensed; the
//! other JA4+ methods carry a different licence and are not implemented here).
//!
//! `t13d1516h2_8daaf6152771_e5627efa2ab1`, from `technical_details/JA4.md` in
//! FoxIO-LLC/ja4:
//! - `a`: transport (`t` TCP, `q` QUIC), version (the highest non-GREASE value in
//!   supported_versions, else `legacy_version`: `13` `12` `11` `10` `s3` `s2` `d1` `d2` `d3`,
//!   anything else `00`), `d` with a server_name extension else `i`, the number of cipher
//!   suites and of extensions (GREASE not counted, at most 99), the first and last
//!   characters of the first ALPN protocol (`00` without ALPN; when either end byte is not
//!   ASCII alphanumeric, the first and last hex digits of the protocol instead);
//! - `b`: the first 12 hex digits of the SHA-256 of the cipher suites as 4-digit lowercase
//!   hex, sorted, comma-separated (`000000000000` when there are none);
//! - `c`: the same of the extension types, sorted, without server_name (`0000`) and ALPN
//!   (`0010`), followed by `_` and the signature_algorithms in the client's order when
//!   there are any (`000000000000` when no extension is left).
//!
//! GREASE values are skipped everywhere. Computed from the parsed [`ClientHello`] without
//! allocating: the sorted lists come from a two-level counting sort over the hello's own
//! bytes (at most 256 passes however long the list, one per distinct high byte; a handful in
//! real hellos) and are streamed into the hash.

use core::fmt;

use aws_lc_rs::digest;

use super::ClientHello;

/// The transport a ClientHello came over: the fingerprint's first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TLS over TCP (`t`): a hello from [`parse`](super::parse).
    Tcp,
    /// QUIC (`q`): a hello from [`parse_message`](super::parse_message) over CRYPTO data.
    Quic,
}

/// A JA4 fingerprint: 36 ASCII bytes inline, e.g. `t13d1516h2_8daaf6152771_e5627efa2ab1`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ja4 {
    bytes: [u8; Ja4::LEN],
}

impl Ja4 {
    /// Length of every JA4 fingerprint.
    pub const LEN: usize = 36;

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written, so this never falls back.
        core::str::from_utf8(&self.bytes).unwrap_or("")
    }

    pub fn as_bytes(&self) -> &[u8; Ja4::LEN] {
        &self.bytes
    }
}

impl fmt::Display for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Ja4 {
    fn eq(&self, o: &str) -> bool {
        self.as_str() == o
    }
}

impl PartialEq<&str> for Ja4 {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_ALPN: u16 = 0x0010;
const HEX: &[u8; 16] = b"0123456789abcdef";

/// The JA4 fingerprint of `hello`, received over `transport`.
pub fn ja4(hello: &ClientHello<'_>, transport: Transport) -> Ja4 {
    let mut bytes = [b'0'; Ja4::LEN];
    let (a, rest) = bytes.split_at_mut(10);
    a.copy_from_slice(&part_a(hello, transport));
    if let [u1, b @ .., u2] = rest.get_mut(..14).unwrap_or(&mut []) {
        *u1 = b'_';
        *u2 = b'_';
        hash12(b, |s| ciphers(hello, s));
    }
    if let Some(c) = rest.get_mut(14..) {
        hash12(c, |s| extensions_and_signatures(hello, s));
    }
    Ja4 { bytes }
}

/// JA4_r, the raw fingerprint (the lists before hashing), e.g. for logs and debugging:
/// `t13d1516h2_002f,0035,…_0005,000a,…_0403,0804,…`. Formats without allocating.
pub fn ja4_raw<'h>(hello: &'h ClientHello<'h>, transport: Transport) -> impl fmt::Display + 'h {
    struct Raw<'h>(&'h ClientHello<'h>, Transport);
    impl fmt::Display for Raw<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let a = part_a(self.0, self.1);
            f.write_str(core::str::from_utf8(&a).unwrap_or(""))?;
            f.write_str("_")?;
            let mut out = FmtSink { f, res: Ok(()) };
            ciphers(self.0, &mut out);
            out.put(b"_");
            extensions_and_signatures(self.0, &mut out);
            out.res
        }
    }
    Raw(hello, transport)
}

fn part_a(hello: &ClientHello<'_>, transport: Transport) -> [u8; 10] {
    let mut a = [b'0'; 10];
    a[0] = match transport {
        Transport::Tcp => b't',
        Transport::Quic => b'q',
    };
    a[1..3].copy_from_slice(match hello.highest_listed_version() {
        0x0304 => b"13",
        0x0303 => b"12",
        0x0302 => b"11",
        0x0301 => b"10",
        0x0300 => b"s3",
        0x0002 => b"s2",
        0xfeff => b"d1",
        0xfefd => b"d2",
        0xfefc => b"d3",
        _ => b"00",
    });
    a[3] = if hello.has_sni_extension() { b'd' } else { b'i' };
    a[4..6].copy_from_slice(&two_digits(hello.cipher_suites().count()));
    a[6..8].copy_from_slice(&two_digits(hello.extension_types().count()));
    if let Some(p) = hello.alpn().next() {
        if let (Some(&first), Some(&last)) = (p.first(), p.last()) {
            a[8..10].copy_from_slice(&if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
                [first, last]
            } else {
                [HEX[usize::from(first >> 4)], HEX[usize::from(last & 0xf)]]
            });
        }
    }
    a
}

fn two_digits(n: usize) -> [u8; 2] {
    let n = n.min(99) as u8;
    [b'0' + n / 10, b'0' + n % 10]
}

/// Where the comma-separated lists go: the hash, or a formatter for JA4_r.
trait Sink {
    fn put(&mut self, s: &[u8]);
}

/// `xxxx,xxxx,…` of `values` in ascending order (duplicates kept).
fn put_sorted<I: Iterator<Item = u16> + Clone>(values: I, out: &mut impl Sink) {
    let mut first = true;
    for_each_sorted(values, |v| {
        if !first {
            out.put(b",");
        }
        first = false;
        out.put(&hex4(v));
    });
}

fn ciphers(hello: &ClientHello<'_>, out: &mut impl Sink) {
    put_sorted(hello.cipher_suites(), out);
}

fn extensions_and_signatures(hello: &ClientHello<'_>, out: &mut impl Sink) {
    let exts = hello.extension_types().filter(|&t| t != EXT_SERVER_NAME && t != EXT_ALPN);
    if exts.clone().next().is_none() {
        return; // no extension left: `000000000000`, signatures or not
    }
    put_sorted(exts, out);
    let mut sigs = hello.signature_algorithms();
    if let Some(first) = sigs.next() {
        out.put(b"_");
        out.put(&hex4(first));
        for s in sigs {
            out.put(b",");
            out.put(&hex4(s));
        }
    }
}

fn hex4(v: u16) -> [u8; 4] {
    let [a, b] = v.to_be_bytes();
    [HEX[usize::from(a >> 4)], HEX[usize::from(a & 0xf)], HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]
}

/// Calls `f` for each value in ascending order: a counting sort on the low byte, once per
/// distinct high byte, re-walking `values` (a cheap iterator over the hello's bytes) each
/// time. At most 256 + 256 × len steps whatever the input; no allocation.
fn for_each_sorted<I: Iterator<Item = u16> + Clone>(values: I, mut f: impl FnMut(u16)) {
    let mut highs = [0u64; 4];
    for v in values.clone() {
        let h = usize::from(v >> 8);
        if let Some(w) = highs.get_mut(h / 64) {
            *w |= 1 << (h % 64);
        }
    }
    for (wi, &w) in highs.iter().enumerate() {
        let mut bits = w;
        while bits != 0 {
            let high = (wi * 64 + bits.trailing_zeros() as usize) as u16;
            bits &= bits - 1;
            let mut counts = [0u16; 256];
            for v in values.clone().filter(|v| v >> 8 == high) {
                if let Some(c) = counts.get_mut(usize::from(v & 0xff)) {
                    *c = c.saturating_add(1);
                }
            }
            for (low, &n) in counts.iter().enumerate() {
                for _ in 0..n {
                    f(high << 8 | low as u16);
                }
            }
        }
    }
}

/// Writes into `out` (12 bytes) the first 12 hex digits of the SHA-256 of what `fill`
/// puts, or leaves `000000000000` when it puts nothing.
fn hash12(out: &mut [u8], fill: impl FnOnce(&mut HashSink)) {
    let mut sink = HashSink { ctx: digest::Context::new(&digest::SHA256), buf: [0; 256], len: 0, total: 0 };
    fill(&mut sink);
    if sink.total == 0 {
        out.fill(b'0');
        return;
    }
    sink.flush();
    let digest = sink.ctx.finish();
    for (pair, &b) in out.chunks_mut(2).zip(digest.as_ref()) {
        if let [hi, lo] = pair {
            *hi = HEX[usize::from(b >> 4)];
            *lo = HEX[usize::from(b & 0xf)];
        }
    }
}

/// SHA-256 fed through a small buffer (one `update` call per 256 bytes, not per value).
struct HashSink {
    ctx: digest::Context,
    buf: [u8; 256],
    len: usize,
    total: usize,
}

impl HashSink {
    fn flush(&mut self) {
        self.ctx.update(self.buf.get(..self.len).unwrap_or(&[]));
        self.len = 0;
    }
}

impl Sink for HashSink {
    fn put(&mut self, s: &[u8]) {
        if self.len + s.len() > self.buf.len() {
            self.flush();
        }
        match self.buf.get_mut(self.len..self.len + s.len()) {
            Some(dst) => {
                dst.copy_from_slice(s);
                self.len += s.len();
            }
            None => self.ctx.update(s),
        }
        self.total += s.len();
    }
}

struct FmtSink<'f, 'g> {
    f: &'f mut fmt::Formatter<'g>,
    res: fmt::Result,
}

impl Sink for FmtSink<'_, '_> {
    fn put(&mut self, s: &[u8]) {
        if self.res.is_ok() {
            self.res = self.f.write_str(core::str::from_utf8(s).unwrap_or(""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(s: &str) -> String {
        let mut out = [0u8; 12];
        hash12(&mut out, |sink| {
            // In pieces, across the sink's buffer boundary.
            for piece in s.as_bytes().chunks(7) {
                sink.put(piece);
            }
        });
        String::from_utf8(out.to_vec()).unwrap()
    }

    /// The hashes printed in FoxIO's `technical_details/JA4.md`.
    #[test]
    fn spec_hashes() {
        assert_eq!(
            hash_of("002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"),
            "8daaf6152771"
        );
        let exts = "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01";
        assert_eq!(hash_of(exts), "6d807ffa2a79");
        assert_eq!(hash_of(&format!("{exts}_0403,0804,0401,0503,0805,0501,0806,0601")), "e5627efa2ab1");
        assert_eq!(hash_of(""), "000000000000");
        // Longer than the sink's buffer.
        let long = "abcd,".repeat(100);
        let want = aws_lc_rs::digest::digest(&digest::SHA256, long.as_bytes());
        assert_eq!(hash_of(&long), want.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect::<String>());
    }
}
