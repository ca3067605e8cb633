//! A terminating route's certificate chain and key: read, parsed, checked to belong together,
//! and turned into the route's rustls configuration.

use super::Located;
use crate::route::TlsVersion;
use crate::tls::TlsMaterial;
use std::path::Path;
use std::sync::Arc;

/// Reads a PEM chain and key, and checks that they belong together, so that a route whose key
/// was swapped for another site's fails `check` instead of every handshake.
pub(super) fn load_tls(
    cert: &Path,
    key: &Path,
    route: &str,
    min_tls: TlsVersion,
    alpn: &[String],
    errors: &mut Vec<Located>,
) -> Option<TlsMaterial> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut bad = |field: &str, path: &Path, reason: String| {
        errors.push(Located::new(format!("{route}.{field}"), format!("{}: {reason}", path.display())))
    };
    let chain: Option<Vec<CertificateDer<'static>>> = match std::fs::read(cert) {
        Err(e) => {
            bad("cert", cert, format!("cannot read: {e}"));
            None
        }
        Ok(pem) => match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Err(e) => {
                bad("cert", cert, format!("bad PEM: {e}"));
                None
            }
            Ok(c) if c.is_empty() => {
                bad("cert", cert, "holds no CERTIFICATE block".into());
                None
            }
            Ok(c) => Some(c),
        },
    };
    let private_key = match std::fs::read(key) {
        Err(e) => {
            bad("key", key, format!("cannot read: {e}"));
            None
        }
        Ok(pem) => match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(k) => Some(k),
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                bad("key", key, "holds no private key (PKCS#8, PKCS#1 or SEC1 PEM block)".into());
                None
            }
            Err(e) => {
                bad("key", key, format!("bad PEM: {e}"));
                None
            }
        },
    };
    let (chain, private_key) = (chain?, private_key?);
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, private_key, &provider) {
        Ok(ck) => {
            let certified_key = Arc::new(ck);
            match crate::tls::server_config(certified_key.clone(), min_tls, alpn) {
                Ok(server_config) => Some(TlsMaterial {
                    cert_path: cert.to_owned(),
                    key_path: key.to_owned(),
                    certified_key,
                    server_config,
                }),
                Err(e) => {
                    bad("cert", cert, format!("unusable with rustls: {e}"));
                    None
                }
            }
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            bad("key", key, format!("does not match the certificate in {}", cert.display()));
            None
        }
        Err(e) => {
            bad("key", key, format!("unusable: {e}"));
            None
        }
    }
}
