//! ClientHello bytes: rewrite the SNI of a captured hello, re-frame it into several records,
//! generate one with rustls, and find where a hello ends (for the back ends).

use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    Short,
    NotHandshake,
    NotClientHello,
    Malformed(&'static str),
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for HelloError {}

/// A parsed ClientHello: the record version and the handshake message (type, length, body).
#[derive(Debug, Clone)]
pub struct Hello {
    pub record_version: [u8; 2],
    /// The complete handshake message: 1 byte type, 3 bytes length, body.
    pub message: Vec<u8>,
}

fn be16(b: &[u8]) -> usize {
    ((b[0] as usize) << 8) | b[1] as usize
}

impl Hello {
    /// Parse one or more handshake records that carry a single ClientHello.
    pub fn parse(bytes: &[u8]) -> Result<Hello, HelloError> {
        let mut msg = Vec::new();
        let mut pos = 0;
        let mut version = [3, 1];
        loop {
            if bytes.len() < pos + 5 {
                return Err(HelloError::Short);
            }
            if bytes[pos] != 22 {
                return Err(HelloError::NotHandshake);
            }
            version = if pos == 0 { [bytes[1], bytes[2]] } else { version };
            let len = be16(&bytes[pos + 3..]);
            if bytes.len() < pos + 5 + len {
                return Err(HelloError::Short);
            }
            msg.extend_from_slice(&bytes[pos + 5..pos + 5 + len]);
            pos += 5 + len;
            if msg.len() >= 4 {
                if msg[0] != 1 {
                    return Err(HelloError::NotClientHello);
                }
                let hl = ((msg[1] as usize) << 16) | ((msg[2] as usize) << 8) | msg[3] as usize;
                if msg.len() >= 4 + hl {
                    msg.truncate(4 + hl);
                    return Ok(Hello { record_version: version, message: msg });
                }
            }
        }
    }

    /// Offsets of the extensions block inside `message`: (offset of the 2-byte length, end).
    fn extensions(&self) -> Result<(usize, usize), HelloError> {
        let m = &self.message;
        let mut p = 4 + 2 + 32;
        let need = |p: usize, n: usize| {
            if m.len() < p + n {
                Err(HelloError::Malformed("truncated"))
            } else {
                Ok(())
            }
        };
        need(p, 1)?;
        p += 1 + m[p] as usize; // session id
        need(p, 2)?;
        p += 2 + be16(&m[p..]); // cipher suites
        need(p, 1)?;
        p += 1 + m[p] as usize; // compression
        if p == m.len() {
            return Ok((p, p)); // no extensions at all
        }
        need(p, 2)?;
        let end = p + 2 + be16(&m[p..]);
        if end != m.len() {
            return Err(HelloError::Malformed("extensions length"));
        }
        Ok((p, end))
    }

    /// The server_name in the hello, if any.
    pub fn sni(&self) -> Result<Option<String>, HelloError> {
        let (p, end) = self.extensions()?;
        let m = &self.message;
        let mut q = if p == end { end } else { p + 2 };
        while q + 4 <= end {
            let ty = be16(&m[q..]);
            let len = be16(&m[q + 2..]);
            if ty == 0 {
                let e = &m[q + 4..q + 4 + len];
                if e.len() < 5 {
                    return Err(HelloError::Malformed("server_name"));
                }
                let nl = be16(&e[3..]);
                return Ok(Some(String::from_utf8_lossy(&e[5..5 + nl]).into_owned()));
            }
            q += 4 + len;
        }
        Ok(None)
    }

    /// Replace (or remove, with `None`) the server_name extension, fixing every length.
    /// A new extension takes the old one's place, or goes first, so pre_shared_key stays last.
    pub fn with_sni(&self, name: Option<&str>) -> Result<Hello, HelloError> {
        let (p, end) = self.extensions()?;
        let m = &self.message;
        let mut exts: Vec<u8> = Vec::with_capacity(end - p + 64);
        let new_ext = name.map(|n| {
            let n = n.as_bytes();
            let mut e = Vec::with_capacity(n.len() + 9);
            e.extend_from_slice(&[0, 0]);
            e.extend_from_slice(&((n.len() + 5) as u16).to_be_bytes());
            e.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
            e.push(0);
            e.extend_from_slice(&(n.len() as u16).to_be_bytes());
            e.extend_from_slice(n);
            e
        });
        let mut placed = false;
        if p != end {
            let mut q = p + 2;
            let had_sni = {
                let mut r = q;
                let mut found = false;
                while r + 4 <= end {
                    if be16(&m[r..]) == 0 {
                        found = true;
                    }
                    r += 4 + be16(&m[r + 2..]);
                }
                found
            };
            if !had_sni {
                if let Some(e) = &new_ext {
                    exts.extend_from_slice(e);
                    placed = true;
                }
            }
            while q + 4 <= end {
                let ty = be16(&m[q..]);
                let len = be16(&m[q + 2..]);
                if q + 4 + len > end {
                    return Err(HelloError::Malformed("extension length"));
                }
                if ty == 0 {
                    if let Some(e) = &new_ext {
                        exts.extend_from_slice(e);
                        placed = true;
                    }
                } else {
                    exts.extend_from_slice(&m[q..q + 4 + len]);
                }
                q += 4 + len;
            }
        } else if let Some(e) = &new_ext {
            exts.extend_from_slice(e);
            placed = true;
        }
        debug_assert!(placed || new_ext.is_none());
        let mut out = Vec::with_capacity(p + 2 + exts.len());
        out.extend_from_slice(&m[..p]);
        if !exts.is_empty() || p != end {
            out.extend_from_slice(&(exts.len() as u16).to_be_bytes());
            out.extend_from_slice(&exts);
        }
        let body = out.len() - 4;
        out[1] = (body >> 16) as u8;
        out[2] = (body >> 8) as u8;
        out[3] = body as u8;
        Ok(Hello { record_version: self.record_version, message: out })
    }

    /// The hello as TLS records of at most `max_fragment` bytes of handshake data each.
    pub fn to_records(&self, max_fragment: usize) -> Vec<u8> {
        let frag = max_fragment.clamp(1, 16384);
        let mut out = Vec::with_capacity(self.message.len() + 5 * (self.message.len() / frag + 1));
        for chunk in self.message.chunks(frag) {
            out.push(22);
            out.extend_from_slice(&self.record_version);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }
}

/// How many bytes at the start of `buf` make up a complete ClientHello (possibly over several
/// records): Ok(Some(n)) when complete, Ok(None) when more bytes are needed.
pub fn hello_len(buf: &[u8]) -> Result<Option<usize>, HelloError> {
    let mut pos = 0;
    let mut have = 0usize; // handshake bytes so far
    let mut need: Option<usize> = None;
    let mut hdr = [0u8; 4];
    loop {
        if buf.len() < pos + 5 {
            return Ok(None);
        }
        if buf[pos] != 22 {
            return Err(HelloError::NotHandshake);
        }
        let len = be16(&buf[pos + 3..]);
        if buf.len() < pos + 5 + len {
            return Ok(None);
        }
        for (i, &b) in buf[pos + 5..pos + 5 + len].iter().enumerate() {
            if have + i < 4 {
                hdr[have + i] = b;
            }
        }
        have += len;
        pos += 5 + len;
        if need.is_none() && have >= 4 {
            if hdr[0] != 1 {
                return Err(HelloError::NotClientHello);
            }
            need = Some(4 + (((hdr[1] as usize) << 16) | ((hdr[2] as usize) << 8) | hdr[3] as usize));
        }
        if let Some(n) = need {
            if have >= n {
                return Ok(Some(pos));
            }
        }
    }
}

/// Generate a ClientHello with a rustls client for `name` (None: no SNI).
pub fn generate(name: Option<&str>) -> Vec<u8> {
    use rustls::pki_types::{IpAddr, ServerName};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::certs::NoVerify::new()))
        .with_no_client_auth();
    let sn: ServerName<'static> = match name {
        Some(n) => ServerName::try_from(n.to_string()).expect("valid DNS name"),
        None => ServerName::IpAddress(IpAddr::from(std::net::Ipv4Addr::new(127, 0, 0, 1))),
    };
    let mut c = rustls::ClientConnection::new(Arc::new(cfg), sn).unwrap();
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> Option<Vec<u8>> {
        std::fs::read(format!("{}/../src/hello/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).ok()
    }

    #[test]
    fn rewrite_generated() {
        let raw = generate(Some("www.example.com"));
        assert_eq!(hello_len(&raw).unwrap(), Some(raw.len()));
        let h = Hello::parse(&raw).unwrap();
        assert_eq!(h.sni().unwrap().as_deref(), Some("www.example.com"));
        let h2 = h.with_sni(Some("a-much-longer-name-than-before.example.org")).unwrap();
        assert_eq!(h2.sni().unwrap().as_deref(), Some("a-much-longer-name-than-before.example.org"));
        let rec = h2.to_records(16384);
        assert_eq!(hello_len(&rec).unwrap(), Some(rec.len()));
        let back = Hello::parse(&rec).unwrap();
        assert_eq!(back.message, h2.message);
        let none = h.with_sni(None).unwrap();
        assert_eq!(none.sni().unwrap(), None);
        let again = none.with_sni(Some("www.example.com")).unwrap();
        assert_eq!(again.sni().unwrap().as_deref(), Some("www.example.com"));
        assert_eq!(again.message.len(), h.message.len());
    }

    #[test]
    fn rewritten_hello_is_accepted_by_rustls_server() {
        // a rustls server must parse the rewritten hello and see the new name
        let raw = generate(Some("www.example.com"));
        let h = Hello::parse(&raw).unwrap().with_sni(Some("other.example.net")).unwrap();
        let mut acc = rustls::server::Acceptor::default();
        let bytes = h.to_records(100);
        let mut rd: &[u8] = &bytes;
        while !rd.is_empty() {
            acc.read_tls(&mut rd).unwrap();
        }
        let a = acc.accept().ok().unwrap().unwrap();
        assert_eq!(a.client_hello().server_name(), Some("other.example.net"));
    }

    #[test]
    fn reframe_and_incremental_length() {
        let raw = generate(None);
        let h = Hello::parse(&raw).unwrap();
        assert_eq!(h.sni().unwrap(), None);
        let rec = h.to_records(50);
        assert!(rec.len() > raw.len());
        for cut in 0..rec.len() {
            assert_eq!(hello_len(&rec[..cut]).unwrap(), None, "cut {cut}");
        }
        assert_eq!(hello_len(&rec).unwrap(), Some(rec.len()));
        let mut more = rec.clone();
        more.extend_from_slice(b"trailing");
        assert_eq!(hello_len(&more).unwrap(), Some(rec.len()));
        assert!(hello_len(b"GET / HTTP/1.1\r\n").is_err());
    }

    #[test]
    fn captured_hellos() {
        for (f, sni) in [
            ("openssl-sni.bin", Some("www.example.com")),
            ("openssl-nosni.bin", None),
            ("openssl-tls12.bin", Some("www.example.com")),
            ("curl.bin", Some("www.example.com")),
            ("chromium-pq.bin", Some("www.example.com")),
        ] {
            let Some(raw) = testdata(f) else { continue };
            let h = Hello::parse(&raw).unwrap();
            assert_eq!(h.sni().unwrap().as_deref(), sni, "{f}");
            let r = h.with_sni(Some("n123456.example.com")).unwrap();
            assert_eq!(r.sni().unwrap().as_deref(), Some("n123456.example.com"), "{f}");
            let bytes = r.to_records(16384);
            let mut acc = rustls::server::Acceptor::default();
            let mut rd: &[u8] = &bytes;
            while !rd.is_empty() {
                acc.read_tls(&mut rd).unwrap();
            }
            let a = acc.accept().ok().unwrap().unwrap();
            assert_eq!(a.client_hello().server_name(), Some("n123456.example.com"), "{f}");
        }
    }
}
