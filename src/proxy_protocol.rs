//! PROXY protocol headers (v1 text, v2 binary), as specified by HAProxy's proxy-protocol.txt:
//! written in front of what goes to a back end ([`encode`]) and read in front of what comes from
//! an L4 load balancer ([`decode`]).
//!
//! v2 carries two TLVs when known: `PP2_TYPE_AUTHORITY` (0x02) with the SNI, and `PP2_TYPE_ALPN`
//! (0x01) with the client's most preferred offered protocol. In passthrough the proxy never sees
//! the negotiated protocol, so the first offered one is the best it can say. The other TLVs of an
//! inbound v2 header (a balancer's connection or endpoint ids, …) are passed on after them
//! ([`Header::tlvs`], [`passable_tlvs`]).
use crate::route::ProxyProtocol;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
pub const PP2_TYPE_ALPN: u8 = 0x01;
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub const PP2_TYPE_CRC32C: u8 = 0x03;
pub const PP2_TYPE_NOOP: u8 = 0x04;
/// The longest v1 header (the specification's bound, CRLF included).
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: the 16 fixed bytes and up to 2 KiB of addresses and TLVs
/// (balancers send a few dozen bytes of TLVs; the format allows 64 KiB).
pub const V2_MAX: usize = 16 + 2048;

/// What a header says about a connection.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// The client's address (source).
    pub client: SocketAddr,
    /// The address the client dialed (destination).
    pub local: SocketAddr,
    pub sni: Option<&'a str>,
    pub alpn: Option<&'a [u8]>,
    /// Raw v2 TLVs to pass on after ALPN and AUTHORITY (see [`passable_tlvs`]); v1 has none.
    pub tlvs: &'a [u8],
}

fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        a => a,
    }
}

/// Appends the header for `version` to `out` (nothing for `ProxyProtocol::None`).
pub fn encode(version: ProxyProtocol, h: &Header<'_>, out: &mut Vec<u8>) {
    match version {
        ProxyProtocol::None => {}
        ProxyProtocol::V1 => encode_v1(h, out),
        ProxyProtocol::V2 => encode_v2(h, out),
    }
}

/// `PROXY TCP4 1.2.3.4 5.6.7.8 1111 443\r\n`; `PROXY UNKNOWN\r\n` when the families differ.
pub fn encode_v1(h: &Header<'_>, out: &mut Vec<u8>) {
    let (src, dst) = (canonical(h.client), canonical(h.local));
    // Writing to a Vec cannot fail.
    let _ = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            write!(out, "PROXY TCP4 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port())
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            write!(out, "PROXY TCP6 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port())
        }
        _ => write!(out, "PROXY UNKNOWN\r\n"),
    };
}

/// Binary v2 header, command PROXY over TCP (v4 or v6), with AUTHORITY and ALPN TLVs.
pub fn encode_v2(h: &Header<'_>, out: &mut Vec<u8>) {
    let (src, dst) = (canonical(h.client), canonical(h.local));
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    let len_at = out.len() + 1;
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 0]); // AF_INET, STREAM; length patched below
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            out.extend_from_slice(&[0x21, 0, 0]); // AF_INET6, STREAM
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => out.extend_from_slice(&[0x00, 0, 0]), // UNSPEC: receivers ignore the addresses
    }
    let mut tlv = |kind: u8, value: &[u8]| {
        // SNI (<= 255 by the hello parser) and ALPN (<= 255 on the wire) always fit.
        let n = value.len().min(u16::MAX as usize);
        out.push(kind);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&value[..n]);
    };
    if let Some(alpn) = h.alpn {
        tlv(PP2_TYPE_ALPN, alpn);
    }
    if let Some(sni) = h.sni {
        tlv(PP2_TYPE_AUTHORITY, sni.as_bytes());
    }
    out.extend_from_slice(h.tlvs);
    let body = out.len() - (len_at + 2);
    let body = (body.min(u16::MAX as usize) as u16).to_be_bytes();
    out[len_at] = body[0];
    out[len_at + 1] = body[1];
}

/// Which inbound header a listener requires (`accept_proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    V1,
    V2,
    /// Either, told apart by the first bytes.
    Any,
}

impl Accept {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::Any => "any",
        }
    }
}

/// A complete inbound header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound<'a> {
    /// The header's length in bytes: what to consume before the TLS bytes.
    pub len: usize,
    pub version: u8,
    /// The client (source) and the address it dialed (destination); `None` for v1 `UNKNOWN`,
    /// a v2 `LOCAL` command (the balancer's own connection, e.g. a health check) and v2
    /// families without IP addresses: the socket's own addresses count then.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// The v2 TLVs, raw (empty for v1).
    pub tlvs: &'a [u8],
}

/// What the bytes at the start of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A prefix of an acceptable header: read more.
    NeedMore,
    Header(Inbound<'a>),
    /// Not an acceptable header, and why.
    Invalid(&'static str),
}

/// Reads an inbound header at the start of `buf`, of a version `accept` allows.
pub fn decode(buf: &[u8], accept: Accept) -> Decoded<'_> {
    const V1: &[u8] = b"PROXY ";
    let is_prefix = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    let v1 = matches!(accept, Accept::V1 | Accept::Any) && is_prefix(V1);
    let v2 = matches!(accept, Accept::V2 | Accept::Any) && is_prefix(&V2_SIGNATURE);
    match (v1, v2) {
        (true, _) if buf.len() >= V1.len() => decode_v1(buf),
        (_, true) if buf.len() >= V2_SIGNATURE.len() => decode_v2(buf),
        (true, _) | (_, true) => Decoded::NeedMore,
        _ => Decoded::Invalid(match accept {
            Accept::V1 => "not a PROXY v1 header",
            Accept::V2 => "not a PROXY v2 header",
            Accept::Any => "no PROXY header",
        }),
    }
}

fn decode_v1(buf: &[u8]) -> Decoded<'_> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Decoded::Invalid("v1 header longer than 107 bytes")
        } else if window.iter().any(|&b| b == b'\n' || !(b == b'\r' || (0x20..0x7f).contains(&b))) {
            Decoded::Invalid("v1 header with a byte that is not printable ASCII")
        } else {
            Decoded::NeedMore
        };
    };
    let len = cr + 2;
    // The same bytes are refused whole as in pieces (above): a header must not be accepted
    // or refused depending on how the client's segments fell.
    if !buf[6..cr].iter().all(|b| (0x20..0x7f).contains(b)) {
        return Decoded::Invalid("v1 header with a byte that is not printable ASCII");
    }
    let Ok(line) = std::str::from_utf8(&buf[6..cr]) else { return Decoded::Invalid("v1 header is not ASCII") };
    let mut parts = line.split(' ');
    let addresses = match parts.next() {
        Some("UNKNOWN") => None,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(dst), Some(sport), Some(dport), None) =
                (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Decoded::Invalid("v1 header without exactly four fields after the protocol");
            };
            let ip = |s: &str| -> Option<IpAddr> {
                if proto == "TCP4" {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                }
            };
            let port = |s: &str| -> Option<u16> {
                (!s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(s), Some(d), Some(sp), Some(dp)) => Some((SocketAddr::new(s, sp), SocketAddr::new(d, dp))),
                _ => return Decoded::Invalid("v1 header with a bad address or port"),
            }
        }
        _ => return Decoded::Invalid("v1 header with an unknown protocol"),
    };
    Decoded::Header(Inbound { len, version: 1, addresses, tlvs: &[] })
}

fn decode_v2(buf: &[u8]) -> Decoded<'_> {
    let Some(head) = buf.get(..16) else { return Decoded::NeedMore };
    if head[12] >> 4 != 2 {
        return Decoded::Invalid("v2 header of another version");
    }
    let command = head[12] & 0x0f;
    if command > 1 {
        return Decoded::Invalid("v2 header with an unknown command");
    }
    let body_len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    let len = 16 + body_len;
    if len > V2_MAX {
        return Decoded::Invalid("v2 header longer than 2 KiB");
    }
    let Some(body) = buf.get(16..len) else { return Decoded::NeedMore };
    let (addr_len, family) = match head[13] {
        0x00 => (0, 0),
        0x11 | 0x12 => (12, 4),
        0x21 | 0x22 => (36, 6),
        0x31 | 0x32 => (216, 0),
        _ => return Decoded::Invalid("v2 header with an unknown address family"),
    };
    if body.len() < addr_len {
        return Decoded::Invalid("v2 header too short for its addresses");
    }
    let (a, tlvs) = body.split_at(addr_len);
    let mut rest = tlvs;
    while !rest.is_empty() {
        let Some(&[_, hi, lo]) = rest.get(..3) else { return Decoded::Invalid("v2 header with a truncated TLV") };
        let n = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(next) = rest.get(n..) else { return Decoded::Invalid("v2 header with a TLV past its end") };
        rest = next;
    }
    let addresses = match (command, family) {
        (1, 4) => {
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some((SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10))))
        }
        (1, 6) => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some((SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34))))
        }
        _ => None,
    };
    Decoded::Header(Inbound { len, version: 2, addresses, tlvs })
}

/// Appends the TLVs of `raw` (an inbound header's) that an outbound v2 header passes on: all
/// but ALPN and AUTHORITY (written afresh from the hello), CRC32C (it covered the inbound
/// header) and NOOP.
pub fn passable_tlvs(raw: &[u8], out: &mut Vec<u8>) {
    let mut rest = raw;
    while let Some(&[kind, hi, lo]) = rest.get(..3) {
        let n = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(tlv) = rest.get(..n) else { return };
        if !matches!(kind, PP2_TYPE_ALPN | PP2_TYPE_AUTHORITY | PP2_TYPE_CRC32C | PP2_TYPE_NOOP) {
            out.extend_from_slice(tlv);
        }
        rest = &rest[n..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(c: &str, l: &str, sni: Option<&'a str>, alpn: Option<&'a [u8]>) -> Header<'a> {
        Header { client: c.parse().unwrap(), local: l.parse().unwrap(), sni, alpn, tlvs: &[] }
    }

    #[test]
    fn v1_refused_alike_whole_and_in_pieces() {
        let whole = b"PROXY UNKNOWN \x01\r\n";
        assert!(matches!(decode(whole, Accept::V1), Decoded::Invalid(_)));
        assert!(matches!(decode(&whole[..whole.len() - 2], Accept::V1), Decoded::Invalid(_)));
    }

    #[test]
    fn v1_tcp4() {
        let mut out = Vec::new();
        encode(ProxyProtocol::V1, &h("192.0.2.1:56324", "127.0.0.2:443", Some("x"), None), &mut out);
        assert_eq!(out, b"PROXY TCP4 192.0.2.1 127.0.0.2 56324 443\r\n");
    }

    #[test]
    fn v1_tcp6_and_mapped() {
        let mut out = Vec::new();
        encode_v1(&h("[2001:db8::1]:1000", "[::1]:443", None, None), &mut out);
        assert_eq!(out, b"PROXY TCP6 2001:db8::1 ::1 1000 443\r\n");
        out.clear();
        encode_v1(&h("[::ffff:10.0.0.1]:5", "[::ffff:10.0.0.2]:6", None, None), &mut out);
        assert_eq!(out, b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n");
        out.clear();
        encode_v1(&h("10.0.0.1:5", "[2001:db8::2]:6", None, None), &mut out);
        assert_eq!(out, b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_tcp4_with_tlvs() {
        let mut out = Vec::new();
        encode(
            ProxyProtocol::V2,
            &h("192.0.2.1:56324", "127.0.0.2:443", Some("www.example.com"), Some(b"h2")),
            &mut out,
        );
        let mut want = Vec::new();
        want.extend_from_slice(b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a");
        want.extend_from_slice(&[0x21, 0x11]);
        let body_len: u16 = 12 + (3 + 2) + (3 + 15);
        want.extend_from_slice(&body_len.to_be_bytes());
        want.extend_from_slice(&[192, 0, 2, 1, 127, 0, 0, 2]);
        want.extend_from_slice(&56324u16.to_be_bytes());
        want.extend_from_slice(&443u16.to_be_bytes());
        want.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        want.extend_from_slice(&[0x02, 0x00, 0x0f]);
        want.extend_from_slice(b"www.example.com");
        assert_eq!(out, want);
    }

    #[test]
    fn v2_tcp6_without_tlvs() {
        let mut out = Vec::new();
        encode_v2(&h("[2001:db8::1]:1", "[2001:db8::2]:2", None, None), &mut out);
        assert_eq!(out.len(), 16 + 36);
        assert_eq!(&out[12..16], &[0x21, 0x21, 0x00, 36]);
        assert_eq!(&out[48..52], &[0, 1, 0, 2]);
    }

    #[test]
    fn none_writes_nothing() {
        let mut out = Vec::new();
        encode(ProxyProtocol::None, &h("1.1.1.1:1", "2.2.2.2:2", None, None), &mut out);
        assert!(out.is_empty());
    }

    fn addrs(s: &str, d: &str) -> Option<(SocketAddr, SocketAddr)> {
        Some((s.parse().unwrap(), d.parse().unwrap()))
    }

    #[test]
    fn decodes_what_it_encodes_and_every_prefix_asks_for_more() {
        for (c, l) in [("192.0.2.1:56324", "127.0.0.2:443"), ("[2001:db8::1]:1000", "[2001:db8::2]:443")] {
            let mut tlvs = Vec::new();
            tlvs.extend_from_slice(&[0xea, 0x00, 0x03, b'v', b'p', b'c']);
            let header = Header {
                client: c.parse().unwrap(),
                local: l.parse().unwrap(),
                sni: Some("a.example"),
                alpn: Some(b"h2"),
                tlvs: &tlvs,
            };
            for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
                let mut out = Vec::new();
                encode(version, &header, &mut out);
                let n = out.len();
                out.extend_from_slice(b"\x16\x03\x01 the hello");
                let Decoded::Header(h) = decode(&out, Accept::Any) else {
                    panic!("{version:?}: {:?}", decode(&out, Accept::Any))
                };
                assert_eq!((h.len, h.addresses), (n, addrs(c, l)), "{version:?}");
                if version == ProxyProtocol::V2 {
                    let mut passed = Vec::new();
                    passable_tlvs(h.tlvs, &mut passed);
                    assert_eq!(passed, tlvs, "only the balancer's own TLV is passed on");
                }
                for cut in 0..n {
                    assert_eq!(decode(&out[..cut], Accept::Any), Decoded::NeedMore, "{version:?} cut at {cut}");
                }
                let other = if version == ProxyProtocol::V1 { Accept::V2 } else { Accept::V1 };
                assert!(
                    matches!(decode(&out, other), Decoded::Invalid(_)),
                    "{version:?} where only {other:?} is accepted"
                );
            }
        }
    }

    #[test]
    fn real_senders_headers() {
        // nginx stream `proxy_protocol on` and HAProxy `send-proxy`.
        let h = b"PROXY TCP4 127.0.0.1 127.0.0.3 41234 8443\r\n\x16";
        assert_eq!(
            decode(h, Accept::V1),
            Decoded::Header(Inbound {
                len: 43,
                version: 1,
                addresses: addrs("127.0.0.1:41234", "127.0.0.3:8443"),
                tlvs: &[]
            })
        );
        assert_eq!(
            decode(b"PROXY UNKNOWN\r\n", Accept::Any),
            Decoded::Header(Inbound { len: 15, version: 1, addresses: None, tlvs: &[] })
        );
        assert_eq!(
            decode(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", Accept::V1),
            Decoded::Header(Inbound { len: 35, version: 1, addresses: None, tlvs: &[] })
        );
        // v2 LOCAL (a balancer's health check): the socket's addresses count.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            decode(&local, Accept::V2),
            Decoded::Header(Inbound { len: 16, version: 2, addresses: None, tlvs: &[] })
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4\n",
        ];
        for b in bad {
            assert!(matches!(decode(b, Accept::Any), Decoded::Invalid(_)), "{:?}", String::from_utf8_lossy(b));
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert!(matches!(decode(&long, Accept::V1), Decoded::Invalid(_)));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0x00, 0x05, 1, 2, 3, 4, 5]);
        assert!(matches!(decode(&v2, Accept::V2), Decoded::Invalid(_)), "addresses cut short");
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x31, 0x11, 0x00, 0x0c]);
        v2.extend_from_slice(&[0; 12]);
        assert!(matches!(decode(&v2, Accept::V2), Decoded::Invalid(_)), "version 3");
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0x00, 0x0f]);
        v2.extend_from_slice(&[0; 12]);
        v2.extend_from_slice(&[0xea, 0x00, 0x09]);
        assert!(matches!(decode(&v2, Accept::V2), Decoded::Invalid(_)), "TLV past the end");
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0x10, 0x00]);
        assert!(matches!(decode(&v2, Accept::V2), Decoded::Invalid(_)), "too long");
    }

    proptest::proptest! {
        /// Whatever the bytes, decoding neither panics nor claims more bytes than it was given.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), v2 in proptest::prelude::any::<bool>()) {
            let mut buf = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
            buf.extend_from_slice(&bytes);
            for accept in [Accept::V1, Accept::V2, Accept::Any] {
                if let Decoded::Header(h) = decode(&buf, accept) {
                    proptest::prop_assert!(h.len <= buf.len());
                }
                let _ = decode(&bytes, accept);
            }
        }
    }
}
