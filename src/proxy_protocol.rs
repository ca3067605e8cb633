//! PROXY protocol headers (v1 text, v2 binary), as specified by HAProxy's proxy-protocol.txt.
//!
//! v2 carries two TLVs when known: `PP2_TYPE_AUTHORITY` (0x02) with the SNI, and `PP2_TYPE_ALPN`
//! (0x01) with the client's most preferred offered protocol. In passthrough the proxy never sees
//! the negotiated protocol, so the first offered one is the best it can say.
use crate::route::ProxyProtocol;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
pub const PP2_TYPE_ALPN: u8 = 0x01;
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;

/// What a header says about a connection.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// The client's address (source).
    pub client: SocketAddr,
    /// The address the client dialed (destination).
    pub local: SocketAddr,
    pub sni: Option<&'a str>,
    pub alpn: Option<&'a [u8]>,
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
    let body = out.len() - (len_at + 2);
    let body = (body.min(u16::MAX as usize) as u16).to_be_bytes();
    out[len_at] = body[0];
    out[len_at + 1] = body[1];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(c: &str, l: &str, sni: Option<&'a str>, alpn: Option<&'a [u8]>) -> Header<'a> {
        Header { client: c.parse().unwrap(), local: l.parse().unwrap(), sni, alpn }
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
}
