//! The version a back end chose, read from its ServerHello.
//!
//! A passthrough route enforces `min_tls` on the client's offer, but a server may pick any
//! version the client offered: a client offering TLS 1.3 and TLS 1.0 to a back end that only
//! speaks TLS 1.0 gets TLS 1.0. So when the client offered anything below the route's
//! `min_tls`, the dispatcher reads the back end's first flight up to the end of its ServerHello
//! and checks the version chosen there before relaying a byte of it
//! ([`server_hello_version`]). Same cursor as the ClientHello parser: the message may span
//! records, and every access is bounds-checked.

use super::reader::{malformed, Cursor, Error, Reader, R};
use super::{Reject, SSL3_0, TLS1_3};

const HANDSHAKE_SERVER_HELLO: u8 = 2;
const ALERT: u8 = 0x15;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// A ServerHello is at most a few hundred bytes; refuse to wait for a larger one.
const MAX_SERVER_HELLO: usize = 16 * 1024;

/// What the back end's first bytes say about the version it chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerVersion {
    /// A valid prefix: read more.
    NeedMore,
    /// The version chosen (from supported_versions when present, else `legacy_version`).
    Chosen(u16),
    /// The back end answered with an alert: no version was negotiated, so nothing to check.
    Alert,
    /// Not a ServerHello (names the field that was wrong).
    Invalid(&'static str),
}

/// Reads the ServerHello at the start of `buf` (the back end's bytes so far).
pub fn server_hello_version(buf: &[u8]) -> ServerVersion {
    match buf.first() {
        None => return ServerVersion::NeedMore,
        Some(&ALERT) => return ServerVersion::Alert,
        Some(_) => {}
    }
    match parse(buf) {
        Ok(v) => ServerVersion::Chosen(v),
        Err(Error::NeedMore) => ServerVersion::NeedMore,
        Err(Error::Reject(Reject::Malformed(field))) => ServerVersion::Invalid(field),
        Err(Error::Reject(_)) => ServerVersion::Invalid("record"),
    }
}

fn parse(buf: &[u8]) -> R<u16> {
    let mut cur = Cursor::new(buf);
    if cur.u8()? != HANDSHAKE_SERVER_HELLO {
        return Err(malformed("handshake type: not a ServerHello"));
    }
    let len = usize::from(cur.u8()?) << 16 | usize::from(cur.u16()?);
    if len > MAX_SERVER_HELLO {
        return Err(malformed("ServerHello length"));
    }
    let mut body = Reader::new(&mut cur, len);
    let legacy = body.u16("legacy_version")?;
    body.skip(32, "random")?;
    let sid = body.u8("session_id length")?;
    if sid > 32 {
        return Err(malformed("session_id length"));
    }
    body.skip(usize::from(sid), "session_id length")?;
    body.u16("cipher_suite")?;
    body.u8("compression_method")?;
    let mut chosen = legacy;
    if !body.is_empty() {
        let n = usize::from(body.u16("extensions length")?);
        if n != body.left() {
            return Err(malformed("extensions length"));
        }
        while !body.is_empty() {
            let typ = body.u16("extension type")?;
            let n = usize::from(body.u16("extension length")?);
            let mut ext = body.sub(n, "extension length")?;
            if typ == EXT_SUPPORTED_VERSIONS {
                chosen = ext.u16("supported_versions")?;
            } else {
                ext.skip_rest()?;
            }
            ext.finish("supported_versions")?;
        }
    }
    if !(SSL3_0..=TLS1_3).contains(&chosen) {
        return Err(malformed("selected version"));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ServerHello record choosing `legacy` and, if given, `selected` in supported_versions.
    fn server_hello(legacy: u16, selected: Option<u16>) -> Vec<u8> {
        let mut body = legacy.to_be_bytes().to_vec();
        body.extend_from_slice(&[0x5a; 32]);
        body.push(32);
        body.extend_from_slice(&[0x11; 32]);
        body.extend_from_slice(&[0x13, 0x01, 0x00]);
        let mut exts = vec![0x00, 0x33, 0x00, 0x02, 0x00, 0x1d]; // an unrelated extension first
        if let Some(v) = selected {
            exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x02]);
            exts.extend_from_slice(&v.to_be_bytes());
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![HANDSHAKE_SERVER_HELLO, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x03, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn versions_chosen() {
        assert_eq!(server_hello_version(&server_hello(0x0303, Some(0x0304))), ServerVersion::Chosen(0x0304));
        assert_eq!(server_hello_version(&server_hello(0x0301, None)), ServerVersion::Chosen(0x0301));
        // A TLS 1.2 ServerHello with no extensions block at all.
        let mut old = server_hello(0x0302, None);
        old.truncate(old.len() - 8);
        let body_len = old.len() - 9;
        old[7..9].copy_from_slice(&(body_len as u16).to_be_bytes());
        old[3..5].copy_from_slice(&((body_len + 4) as u16).to_be_bytes());
        assert_eq!(server_hello_version(&old), ServerVersion::Chosen(0x0302));
    }

    #[test]
    fn prefixes_need_more_and_alerts_pass() {
        let full = server_hello(0x0303, Some(0x0304));
        for i in 0..full.len() {
            assert_eq!(server_hello_version(&full[..i]), ServerVersion::NeedMore, "prefix {i}");
        }
        assert_eq!(server_hello_version(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]), ServerVersion::Alert);
    }

    #[test]
    fn split_over_records() {
        let full = server_hello(0x0303, Some(0x0304));
        let msg = &full[5..];
        let mut framed = Vec::new();
        for part in msg.chunks(7) {
            framed.extend_from_slice(&[0x16, 0x03, 0x03, 0x00, part.len() as u8]);
            framed.extend_from_slice(part);
        }
        assert_eq!(server_hello_version(&framed), ServerVersion::Chosen(0x0304));
    }

    #[test]
    fn invalid() {
        assert!(matches!(server_hello_version(b"HTTP/1.1 200 OK\r\n"), ServerVersion::Invalid(_)));
        let mut not_sh = server_hello(0x0303, None);
        not_sh[5] = 11; // Certificate
        assert!(matches!(server_hello_version(&not_sh), ServerVersion::Invalid(_)));
        assert!(matches!(server_hello_version(&server_hello(0x0303, Some(0x7f1c))), ServerVersion::Invalid(_)));
        assert!(matches!(server_hello_version(&server_hello(0x0200, None)), ServerVersion::Invalid(_)));
    }
}
