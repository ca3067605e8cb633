//! OCSP stapling: a route's `ocsp` file (a DER `OCSPResponse`, as `openssl ocsp -respout`
//! writes it) is checked against the route's certificate before rustls staples it
//! ([`rustls::sign::CertifiedKey::ocsp`]).
//!
//! A response is stapled only if it is a successful basic response that has a `SingleResponse`
//! for this certificate (serial number, issuer name hash and issuer key hash, with SHA-1 or
//! SHA-256/384/512), signed by the issuer or by a responder certificate the issuer signed for
//! OCSP signing, and current (`thisUpdate` not in the future beyond [`CLOCK_SKEW_S`],
//! `nextUpdate` not past). Anything else is a [`Problem`]: reported by `check` and logged at
//! load and reload, and the route's handshakes go without a staple. A response that was
//! current when loaded stops being stapled at its `nextUpdate` ([`Checked::next_update`]).
//!
//! A response saying the certificate is revoked is stapled (that is the truth a client must
//! learn) and reported as a warning.

use super::der::{self, Der, DerError};
use rustls::pki_types::CertificateDer;
use std::fmt;

/// How far in the future a `thisUpdate` may be (responder clocks run ahead).
pub const CLOCK_SKEW_S: i64 = 300;

/// The largest OCSP response read (real ones are 1 to 4 KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A response that may be stapled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Unix seconds after which the response must not be stapled; `None`: no `nextUpdate`.
    pub next_update: Option<i64>,
    /// The response says the certificate is revoked (stapled anyway; reported).
    pub revoked: bool,
}

/// Why a response is not stapled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Malformed(String),
    /// `responseStatus` is not `successful` (0).
    Status(u8),
    /// Not an `id-pkix-ocsp-basic` response.
    NotBasic,
    /// The chain holds only the leaf: the issuer's key is needed to check the response.
    NoIssuer,
    /// No `SingleResponse` names this certificate's serial number.
    WrongSerial {
        cert: String,
        response: Vec<String>,
    },
    /// The serial matches but the issuer hashes do not (a response from another CA).
    WrongIssuer,
    /// Hash algorithm of the `CertID` not supported.
    UnknownHash,
    /// The signer is neither the issuer nor a responder certificate the issuer signed with the
    /// OCSP-signing purpose.
    UnknownSigner,
    /// The signature does not verify (or its algorithm is not supported).
    BadSignature,
    /// `nextUpdate` is past.
    Expired {
        next_update: i64,
    },
    /// `thisUpdate` is in the future.
    NotYetValid {
        this_update: i64,
    },
    /// `certStatus` is `unknown`.
    StatusUnknown,
}

impl From<DerError> for Problem {
    fn from(e: DerError) -> Self {
        Self::Malformed(e.to_string())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "not an OCSP response: {e}"),
            Self::Status(s) => write!(f, "responseStatus is {s} ({}), not successful", status_name(*s)),
            Self::NotBasic => f.write_str("not a basic OCSP response (id-pkix-ocsp-basic)"),
            Self::NoIssuer => f.write_str(
                "the certificate chain holds no issuer certificate to check the response against (add it after the leaf)",
            ),
            Self::WrongSerial { cert, response } => {
                write!(f, "is for serial {}, not this certificate's serial {cert}", response.join(", "))
            }
            Self::WrongIssuer => f.write_str("names this serial number but another issuer (issuer name or key hash differs)"),
            Self::UnknownHash => f.write_str("its CertID uses a hash other than SHA-1 or SHA-256/384/512"),
            Self::UnknownSigner => {
                f.write_str("is signed neither by the issuer nor by a responder certificate the issuer signed for OCSP")
            }
            Self::BadSignature => f.write_str("its signature does not verify (or uses an unsupported algorithm)"),
            Self::Expired { next_update } => write!(f, "expired: nextUpdate {} is past", format_time(*next_update)),
            Self::NotYetValid { this_update } => {
                write!(f, "not yet valid: thisUpdate {} is in the future", format_time(*this_update))
            }
            Self::StatusUnknown => f.write_str("the responder does not know this certificate (certStatus unknown)"),
        }
    }
}

fn status_name(s: u8) -> &'static str {
    match s {
        1 => "malformedRequest",
        2 => "internalError",
        3 => "tryLater",
        5 => "sigRequired",
        6 => "unauthorized",
        _ => "unknown",
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Inverse of der::days_from_civil (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The current time in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

// OID contents.
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
const KP_OCSP_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x09];
const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

fn digest(alg_oid: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::digest;
    let alg = match alg_oid {
        SHA1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        SHA256 => &digest::SHA256,
        SHA384 => &digest::SHA384,
        SHA512 => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(alg, data).as_ref().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Verifies `signature` over `message` by the key `public_key` of algorithm `spki_alg`, with the
/// signature algorithm `sig_alg` (both AlgorithmIdentifier contents), using rustls's webpki
/// algorithms (aws-lc-rs).
fn verify(spki_alg: &[u8], public_key: &[u8], sig_alg: &[u8], message: &[u8], signature: &[u8]) -> bool {
    static ALGS: std::sync::OnceLock<&'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm]> =
        std::sync::OnceLock::new();
    let algs = ALGS.get_or_init(|| rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.all);
    algs.iter()
        .filter(|a| a.signature_alg_id().as_ref() == sig_alg && a.public_key_alg_id().as_ref() == spki_alg)
        .any(|a| a.verify_signature(public_key, message, signature).is_ok())
}

/// Checks `response` (a DER OCSPResponse) for `chain` (leaf first, then its issuer) at `now`.
pub fn check(response: &[u8], chain: &[CertificateDer<'_>], now: i64) -> Result<Checked, Problem> {
    // OCSPResponse
    let mut outer = Der::new(response);
    let mut resp = outer.nested(der::SEQUENCE, "OCSPResponse")?;
    outer.end("bytes after the OCSPResponse")?;
    let status = resp.read(der::ENUMERATED, "responseStatus")?;
    match status {
        [0] => {}
        [s] => return Err(Problem::Status(*s)),
        _ => return Err(Problem::Malformed("responseStatus".into())),
    }
    let mut bytes = resp.nested(der::explicit(0), "responseBytes")?.nested(der::SEQUENCE, "ResponseBytes")?;
    if bytes.read(der::OID, "responseType")? != OCSP_BASIC {
        return Err(Problem::NotBasic);
    }
    let basic = bytes.read(der::OCTET_STRING, "response")?;

    // BasicOCSPResponse
    let mut outer = Der::new(basic);
    let mut basic = outer.nested(der::SEQUENCE, "BasicOCSPResponse")?;
    let tbs = basic.tlv(der::SEQUENCE, "tbsResponseData")?;
    let sig_alg = basic.read(der::SEQUENCE, "signatureAlgorithm")?;
    let signature = der::bit_string_bytes(basic.read(der::BIT_STRING, "signature")?, "signature")?;
    let certs = basic.optional(der::explicit(0), "certs")?;

    // The leaf and its issuer.
    let leaf_der = chain.first().ok_or(Problem::NoIssuer)?;
    let leaf = der::certificate(leaf_der)?;
    let issuer_der = chain.get(1).ok_or(Problem::NoIssuer)?;
    let issuer = der::certificate(issuer_der)?;
    if issuer.subject != leaf.issuer {
        return Err(Problem::NoIssuer);
    }

    // ResponseData
    let mut data = Der::new(tbs.value);
    data.optional(der::explicit(0), "version")?;
    let responder = data.any("responderID")?;
    let _produced_at = data.read(der::GENERALIZED_TIME, "producedAt")?;
    let mut responses = data.nested(der::SEQUENCE, "responses")?;
    let mut serials = Vec::new();
    let mut found = None;
    let mut issuer_mismatch = false;
    let mut unknown_hash = false;
    while !responses.is_empty() {
        let mut single = responses.nested(der::SEQUENCE, "SingleResponse")?;
        let mut cert_id = single.nested(der::SEQUENCE, "CertID")?;
        let mut hash_alg = cert_id.nested(der::SEQUENCE, "hashAlgorithm")?;
        let hash_oid = hash_alg.read(der::OID, "hashAlgorithm")?;
        let name_hash = cert_id.read(der::OCTET_STRING, "issuerNameHash")?;
        let key_hash = cert_id.read(der::OCTET_STRING, "issuerKeyHash")?;
        let serial = cert_id.read(der::INTEGER, "serialNumber")?;
        let status = single.any("certStatus")?;
        let this_update = single.read(der::GENERALIZED_TIME, "thisUpdate")?;
        let next_update = match single.optional(der::explicit(0), "nextUpdate")? {
            Some(v) => Some(Der::new(v).read(der::GENERALIZED_TIME, "nextUpdate")?),
            None => None,
        };
        if der::integer_magnitude(serial) != der::integer_magnitude(leaf.serial) {
            serials.push(hex(der::integer_magnitude(serial)));
            continue;
        }
        let (Some(nh), Some(kh)) = (digest(hash_oid, leaf.issuer), digest(hash_oid, issuer.public_key)) else {
            unknown_hash = true;
            continue;
        };
        if nh != name_hash || kh != key_hash {
            issuer_mismatch = true;
            continue;
        }
        found = Some((status.tag, this_update, next_update));
        break;
    }
    let Some((status_tag, this_update, next_update)) = found else {
        return Err(if issuer_mismatch {
            Problem::WrongIssuer
        } else if unknown_hash {
            Problem::UnknownHash
        } else {
            Problem::WrongSerial { cert: hex(der::integer_magnitude(leaf.serial)), response: serials }
        });
    };

    // Who signed it: the issuer, or a delegated responder certificate the issuer signed.
    let names_issuer = |responder: &der::Tlv<'_>, cert: &der::CertFields<'_>| match responder.tag {
        t if t == der::explicit(1) => responder.value == cert.subject,
        t if t == der::explicit(2) => {
            Der::new(responder.value).read(der::OCTET_STRING, "responderID byKey").ok()
                == digest(SHA1, cert.public_key).as_deref()
        }
        _ => false,
    };
    let signer = if names_issuer(&responder, &issuer) {
        issuer
    } else {
        let mut list = match certs {
            Some(c) => Der::new(c).nested(der::SEQUENCE, "certs")?,
            None => return Err(Problem::UnknownSigner),
        };
        let mut delegated = None;
        while !list.is_empty() {
            let c = list.tlv(der::SEQUENCE, "responder certificate")?;
            let fields = der::certificate(c.whole)?;
            if names_issuer(&responder, &fields) {
                delegated = Some(fields);
                break;
            }
        }
        let d = delegated.ok_or(Problem::UnknownSigner)?;
        let signed_by_issuer = d.issuer == issuer.subject
            && verify(issuer.spki_alg, issuer.public_key, d.signature_alg, d.tbs, d.signature);
        if !signed_by_issuer || !der::has_extended_key_usage(&d, KP_OCSP_SIGNING) {
            return Err(Problem::UnknownSigner);
        }
        d
    };
    if !verify(signer.spki_alg, signer.public_key, sig_alg, tbs.whole, signature) {
        return Err(Problem::BadSignature);
    }

    let this_update = der::time(der::GENERALIZED_TIME, this_update)?;
    if this_update > now + CLOCK_SKEW_S {
        return Err(Problem::NotYetValid { this_update });
    }
    let next_update = next_update.map(|t| der::time(der::GENERALIZED_TIME, t)).transpose()?;
    if let Some(next_update) = next_update {
        if next_update <= now {
            return Err(Problem::Expired { next_update });
        }
    }
    match status_tag {
        t if t == der::implicit(0) => Ok(Checked { next_update, revoked: false }),
        t if t == der::explicit(1) => Ok(Checked { next_update, revoked: true }),
        t if t == der::implicit(2) => Err(Problem::StatusUnknown),
        _ => Err(Problem::Malformed("certStatus".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    /// Responses made by `openssl ocsp` (testdata/ocsp/make.sh), checked on 2026-06-01.
    mod captured {
        use super::super::*;
        use rustls::pki_types::pem::PemObject;

        fn pem(name: &str) -> CertificateDer<'static> {
            let path = format!("{}/src/tls/testdata/ocsp/{name}", env!("CARGO_MANIFEST_DIR"));
            CertificateDer::from_pem_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        }

        fn der(name: &str) -> Vec<u8> {
            let path = format!("{}/src/tls/testdata/ocsp/{name}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        }

        fn now() -> i64 {
            crate::tls::der::time(crate::tls::der::GENERALIZED_TIME, b"20260601000000Z").unwrap()
        }

        fn check_file(name: &str) -> Result<Checked, Problem> {
            check(&der(name), &[pem("leaf.pem"), pem("ca.pem")], now())
        }

        #[test]
        fn a_current_response_of_the_issuer_is_stapled() {
            let next = crate::tls::der::time(crate::tls::der::GENERALIZED_TIME, b"20260619000000Z").unwrap();
            assert_eq!(check_file("good.der"), Ok(Checked { next_update: Some(next), revoked: false }));
            // The responder named by key hash rather than by name.
            assert_eq!(check_file("by-key.der"), Ok(Checked { next_update: Some(next), revoked: false }));
            // A delegated responder with the OCSP-signing purpose, signed by the issuer.
            assert_eq!(check_file("delegated.der"), Ok(Checked { next_update: Some(next), revoked: false }));
            assert_eq!(check_file("revoked.der"), Ok(Checked { next_update: Some(next), revoked: true }));
        }

        #[test]
        fn expired_early_mismatched_or_unauthorised_ones_are_not() {
            assert!(
                matches!(check_file("expired.der"), Err(Problem::Expired { .. })),
                "{:?}",
                check_file("expired.der")
            );
            assert!(matches!(check_file("future.der"), Err(Problem::NotYetValid { .. })));
            assert_eq!(
                check_file("other-serial.der"),
                Err(Problem::WrongSerial { cert: "1001".into(), response: vec!["1002".into()] })
            );
            assert_eq!(check_file("other-issuer.der"), Err(Problem::WrongIssuer));
            assert_eq!(check_file("not-a-responder.der"), Err(Problem::UnknownSigner));
            // Without the issuer in the chain nothing can be checked.
            assert_eq!(check(&der("good.der"), &[pem("leaf.pem")], now()), Err(Problem::NoIssuer));
            // The chain of another CA with the same name: not this leaf's issuer key.
            assert_eq!(
                check(&der("good.der"), &[pem("leaf.pem"), pem("other-ca.pem")], now()),
                Err(Problem::WrongIssuer)
            );
        }

        #[test]
        fn a_flipped_signature_bit_or_any_truncation_fails_cleanly() {
            let good = der("good.der");
            let chain = [pem("leaf.pem"), pem("ca.pem")];
            // producedAt, one digit later: still well-formed, no longer what the issuer signed.
            let mut bad = good.clone();
            let at = bad.windows(8).position(|w| w == b"20260520").unwrap() + 7;
            bad[at] = b'1';
            assert_eq!(check(&bad, &chain, now()), Err(Problem::BadSignature));
            for n in 0..good.len() {
                assert!(check(&good[..n], &chain, now()).is_err());
            }
            // Every single-byte change is either refused or still the same verdict, never a panic.
            for i in 0..good.len() {
                let mut m = good.clone();
                m[i] = m[i].wrapping_add(0x41);
                let _ = check(&m, &chain, now());
            }
        }
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let ca = crate::pki::Ca::new("ocsp test CA").unwrap();
        let leaf = ca.issue(&["a.example"]).unwrap();
        let chain = vec![leaf.cert_der(), ca.der()];
        for bad in [&[][..], &[0x30, 0x03, 0x0a, 0x01, 0x00], &[0x30, 0x03, 0x0a, 0x01, 0x03], &[0xff; 40]] {
            assert!(check(bad, &chain, 0).is_err(), "{bad:?}");
        }
        assert_eq!(check(&[0x30, 0x03, 0x0a, 0x01, 0x03], &chain, 0), Err(Problem::Status(3)));
    }
}
