//! Just enough DER to read what a TLS front door must check itself: a certificate's serial,
//! issuer, subject key and extensions, and an OCSP response ([`super::ocsp`]). Every read is
//! bounds-checked and returns an error rather than panicking: the bytes come from files an
//! operator (or an OCSP responder) wrote.
//!
//! Only the subset that X.509 and OCSP use: single-byte tags, definite lengths up to 4 bytes.

use std::fmt;

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const OID: u8 = 0x06;
pub(crate) const ENUMERATED: u8 = 0x0a;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;
pub(crate) const UTC_TIME: u8 = 0x17;
pub(crate) const BOOLEAN: u8 = 0x01;

/// A context-specific constructed tag: `[n] EXPLICIT`.
pub(crate) const fn explicit(n: u8) -> u8 {
    0xa0 | n
}

/// A context-specific primitive tag: `[n] IMPLICIT` of a primitive type.
pub(crate) const fn implicit(n: u8) -> u8 {
    0x80 | n
}

/// What was wrong with the bytes, and where (the field being read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DerError(pub(crate) &'static str);

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed DER ({})", self.0)
    }
}

/// A cursor over DER bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Der<'a> {
    buf: &'a [u8],
}

/// One element: its tag, its contents, and the whole encoding (tag and length included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) value: &'a [u8],
    pub(crate) whole: &'a [u8],
}

impl<'a> Der<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// The next element, whatever its tag.
    pub(crate) fn any(&mut self, what: &'static str) -> Result<Tlv<'a>, DerError> {
        let err = DerError(what);
        let (&tag, rest) = self.buf.split_first().ok_or(err.clone())?;
        if tag & 0x1f == 0x1f {
            return Err(err); // multi-byte tags: never used by X.509 or OCSP
        }
        let (&first, mut rest) = rest.split_first().ok_or(err.clone())?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err(err); // indefinite length (BER) or absurd
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if rest.len() < len {
            return Err(err);
        }
        let header = self.buf.len() - rest.len();
        let whole = self.buf.get(..header + len).ok_or(err.clone())?;
        let (value, after) = rest.split_at(len);
        self.buf = after;
        Ok(Tlv { tag, value, whole })
    }

    /// The next element, which must have `tag`.
    pub(crate) fn tlv(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, DerError> {
        if self.peek_tag() != Some(tag) {
            return Err(DerError(what));
        }
        self.any(what)
    }

    /// The contents of the next element, which must have `tag`.
    pub(crate) fn read(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], DerError> {
        self.tlv(tag, what).map(|t| t.value)
    }

    /// The contents of the next element if it has `tag`.
    pub(crate) fn optional(&mut self, tag: u8, what: &'static str) -> Result<Option<&'a [u8]>, DerError> {
        if self.peek_tag() == Some(tag) {
            self.read(tag, what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A cursor over the contents of the next element, which must have `tag`.
    pub(crate) fn nested(&mut self, tag: u8, what: &'static str) -> Result<Der<'a>, DerError> {
        self.read(tag, what).map(Der::new)
    }

    /// Skips the next element, whatever it is.
    pub(crate) fn skip(&mut self, what: &'static str) -> Result<(), DerError> {
        self.any(what).map(|_| ())
    }

    /// Fails unless every byte was read.
    pub(crate) fn end(&self, what: &'static str) -> Result<(), DerError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DerError(what))
        }
    }
}

/// A BIT STRING's bits, which must be whole bytes (keys and signatures are).
pub(crate) fn bit_string_bytes<'a>(value: &'a [u8], what: &'static str) -> Result<&'a [u8], DerError> {
    match value.split_first() {
        Some((0, bits)) => Ok(bits),
        _ => Err(DerError(what)),
    }
}

/// A DER INTEGER's magnitude without leading zero bytes (serial numbers compare this way).
pub(crate) fn integer_magnitude(value: &[u8]) -> &[u8] {
    let mut v = value;
    while let [0, rest @ ..] = v {
        if rest.is_empty() {
            break;
        }
        v = rest;
    }
    v
}

/// A GeneralizedTime (`YYYYMMDDHHMMSSZ`, optional fractional seconds) or a UTCTime
/// (`YYMMDDHHMMSSZ`) as seconds since the Unix epoch.
pub(crate) fn time(tag: u8, value: &[u8]) -> Result<i64, DerError> {
    let err = DerError("time");
    let s = std::str::from_utf8(value).map_err(|_| err.clone())?;
    let s = s.strip_suffix('Z').ok_or(err.clone())?;
    let (year, rest) = match tag {
        GENERALIZED_TIME => {
            let year: i64 = s.get(..4).and_then(|y| y.parse().ok()).ok_or(err.clone())?;
            (year, s.get(4..).ok_or(err.clone())?)
        }
        UTC_TIME => {
            let yy: i64 = s.get(..2).and_then(|y| y.parse().ok()).ok_or(err.clone())?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..).ok_or(err.clone())?)
        }
        _ => return Err(err),
    };
    // Fractional seconds (GeneralizedTime only) are dropped.
    let rest = rest.split('.').next().unwrap_or(rest);
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err);
    }
    let field = |i: usize| rest.get(i..i + 2).and_then(|f| f.parse::<i64>().ok()).ok_or(err.clone());
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(err);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The fields of an X.509 certificate that OCSP checks need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CertFields<'a> {
    /// `tbsCertificate`, whole (what the issuer signed).
    pub(crate) tbs: &'a [u8],
    /// `signatureAlgorithm`'s contents (without the SEQUENCE header).
    pub(crate) signature_alg: &'a [u8],
    pub(crate) signature: &'a [u8],
    pub(crate) serial: &'a [u8],
    /// `issuer`, whole (the DER of the Name).
    pub(crate) issuer: &'a [u8],
    /// `subject`, whole.
    pub(crate) subject: &'a [u8],
    /// `subjectPublicKeyInfo`'s algorithm contents.
    pub(crate) spki_alg: &'a [u8],
    /// `subjectPublicKey`'s bits.
    pub(crate) public_key: &'a [u8],
    /// The contents of the `extensions` SEQUENCE, if any.
    pub(crate) extensions: Option<&'a [u8]>,
}

/// Reads the fields of a DER certificate.
pub(crate) fn certificate(der: &[u8]) -> Result<CertFields<'_>, DerError> {
    let mut outer = Der::new(der);
    let mut cert = outer.nested(SEQUENCE, "certificate")?;
    outer.end("bytes after the certificate")?;
    let tbs_tlv = cert.tlv(SEQUENCE, "tbsCertificate")?;
    let signature_alg = cert.read(SEQUENCE, "certificate signatureAlgorithm")?;
    let signature = bit_string_bytes(cert.read(BIT_STRING, "certificate signature")?, "certificate signature")?;
    let mut tbs = Der::new(tbs_tlv.value);
    tbs.optional(explicit(0), "certificate version")?;
    let serial = tbs.read(INTEGER, "certificate serialNumber")?;
    tbs.skip("certificate signature algorithm")?;
    let issuer = tbs.tlv(SEQUENCE, "certificate issuer")?.whole;
    tbs.skip("certificate validity")?;
    let subject = tbs.tlv(SEQUENCE, "certificate subject")?.whole;
    let mut spki = tbs.nested(SEQUENCE, "subjectPublicKeyInfo")?;
    let spki_alg = spki.read(SEQUENCE, "subjectPublicKeyInfo algorithm")?;
    let public_key = bit_string_bytes(spki.read(BIT_STRING, "subjectPublicKey")?, "subjectPublicKey")?;
    let mut extensions = None;
    while !tbs.is_empty() {
        let t = tbs.any("certificate tail")?;
        if t.tag == explicit(3) {
            extensions = Some(Der::new(t.value).read(SEQUENCE, "certificate extensions")?);
        }
    }
    Ok(CertFields {
        tbs: tbs_tlv.whole,
        signature_alg,
        signature,
        serial,
        issuer,
        subject,
        spki_alg,
        public_key,
        extensions,
    })
}

/// Whether the certificate's extendedKeyUsage lists the purpose whose OID contents are `oid`.
pub(crate) fn has_extended_key_usage(cert: &CertFields<'_>, oid: &[u8]) -> bool {
    const EKU: &[u8] = &[0x55, 0x1d, 0x25]; // 2.5.29.37
    let Some(exts) = cert.extensions else { return false };
    let mut exts = Der::new(exts);
    while let Ok(mut ext) = exts.nested(SEQUENCE, "extension") {
        let Ok(id) = ext.read(OID, "extension id") else { return false };
        let _ = ext.optional(BOOLEAN, "critical");
        let Ok(value) = ext.read(OCTET_STRING, "extension value") else { return false };
        if id == EKU {
            let Ok(mut purposes) = Der::new(value).nested(SEQUENCE, "extendedKeyUsage") else { return false };
            while let Ok(p) = purposes.read(OID, "key purpose") {
                if p == oid {
                    return true;
                }
            }
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_short_long_and_truncated() {
        let mut d = Der::new(&[0x04, 0x02, 0xaa, 0xbb, 0x04, 0x81, 0x01, 0xcc]);
        assert_eq!(d.read(OCTET_STRING, "a").unwrap(), &[0xaa, 0xbb]);
        let t = d.any("b").unwrap();
        assert_eq!((t.tag, t.value, t.whole.len()), (OCTET_STRING, &[0xcc][..], 4));
        assert!(d.is_empty());
        for bad in [&[0x04, 0x03, 0x00][..], &[0x04, 0x80], &[0x04, 0x85, 1, 1, 1, 1, 1], &[0x1f, 0x01, 0x00], &[0x04]]
        {
            assert!(Der::new(bad).any("x").is_err(), "{bad:?}");
        }
        assert!(Der::new(&[0x02, 0x01, 0x00]).read(OCTET_STRING, "x").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(time(GENERALIZED_TIME, b"19700101000000Z").unwrap(), 0);
        assert_eq!(time(GENERALIZED_TIME, b"20240229123456Z").unwrap(), 1_709_210_096);
        assert_eq!(time(GENERALIZED_TIME, b"20240229123456.5Z").unwrap(), 1_709_210_096);
        assert_eq!(time(UTC_TIME, b"240229123456Z").unwrap(), 1_709_210_096);
        for bad in [&b"2024022912345Z"[..], b"20241329123456Z", b"20240229123456", b"2024022912345xZ", b""] {
            assert!(time(GENERALIZED_TIME, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn certificate_fields() {
        let ca = crate::pki::Ca::new("der test CA").unwrap();
        let leaf = ca.issue(&["a.example"]).unwrap();
        let leaf_der = leaf.cert_der();
        let ca_der = ca.der();
        let l = certificate(&leaf_der).unwrap();
        let c = certificate(&ca_der).unwrap();
        assert_eq!(l.issuer, c.subject);
        assert_eq!(c.issuer, c.subject);
        assert!(!l.serial.is_empty() && l.public_key.len() == 65, "P-256 uncompressed point");
        assert!(!has_extended_key_usage(&l, &[0x2b, 6, 1, 5, 5, 7, 3, 9]));
        // Every truncation fails cleanly.
        for n in 0..leaf_der.len() {
            assert!(certificate(&leaf_der[..n]).is_err());
        }
    }

    #[test]
    fn integer_magnitudes() {
        assert_eq!(integer_magnitude(&[0, 0x80, 1]), &[0x80, 1]);
        assert_eq!(integer_magnitude(&[0]), &[0]);
        assert_eq!(integer_magnitude(&[5]), &[5]);
    }
}
