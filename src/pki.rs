//! Throw-away certificates for the demo, the tests and the load tests: a CA, leaf certificates
//! it signs, and self-signed leaves, as PEM and DER or written as PEM files.
//!
//! Every key is ECDSA P-256 (rcgen's default), made on the spot and written unprotected: this is
//! for `sni-dispatch demo` and for tests, never for serving real sites.
//!
//! ```no_run
//! use sni_dispatch::pki::{Ca, Leaf};
//! let dir = std::path::Path::new("/tmp/certs");
//! let ca = Ca::new("test CA")?;
//! ca.write(dir, "ca.pem")?;
//! // shop.pem (the leaf, then the CA) and shop.key; names may be wildcards or IP addresses
//! let files = ca.issue(&["shop.example.com", "*.shop.example.com", "127.0.0.2"])?.write(dir, "shop")?;
//! let alone = Leaf::self_signed(&["www.example.com"])?; // its own trust anchor
//! # Ok::<(), sni_dispatch::pki::Error>(())
//! ```

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, Error> {
    match std::fs::write(&path, text) {
        Ok(()) => Ok(path),
        Err(source) => Err(Error::Write { path, source }),
    }
}

/// A certificate authority that signs leaves with [`Ca::issue`].
pub struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA whose subject is `CN = common_name`.
    pub fn new(common_name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        let cert = params.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    /// The CA certificate as PEM (what a client's `--cacert` / `-CAfile` takes).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate as DER (a root for a rustls `RootCertStore`).
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Writes [`Ca::pem`] to `dir/file` and returns that path.
    pub fn write(&self, dir: &Path, file: &str) -> Result<PathBuf, Error> {
        write(dir.join(file), &self.pem())
    }

    /// A leaf signed by this CA for `names` (DNS names, `*.` wildcards, or IP addresses), whose
    /// subject is `CN = ` the first name.
    pub fn issue(&self, names: &[&str]) -> Result<Leaf, Error> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(names)?.signed_by(&key, &self.cert, &self.key)?;
        let chain_pem = format!("{}{}", cert.pem(), self.cert.pem());
        Ok(Leaf { key, cert, chain_pem })
    }
}

fn leaf_params(names: &[&str]) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    Ok(params)
}

/// A leaf certificate and its private key.
pub struct Leaf {
    key: KeyPair,
    cert: rcgen::Certificate,
    /// The leaf, then its issuer when a [`Ca`] signed it.
    chain_pem: String,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf").finish_non_exhaustive()
    }
}

/// Where [`Leaf::write`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// `STEM.pem`: the chain, leaf first.
    pub cert: PathBuf,
    /// `STEM.key`: the private key (PKCS#8 PEM).
    pub key: PathBuf,
}

impl Leaf {
    /// A self-signed leaf for `names` (as for [`Ca::issue`]): a client trusts it by adding the
    /// certificate itself as a root.
    pub fn self_signed(names: &[&str]) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(names)?.self_signed(&key)?;
        let chain_pem = cert.pem();
        Ok(Self { key, cert, chain_pem })
    }

    /// The leaf certificate alone, as PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The chain as PEM: the leaf, then the CA that signed it (a self-signed leaf: the leaf alone).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The leaf certificate as DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The private key as PKCS#8 DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// Writes the chain to `dir/STEM.pem` and the key to `dir/STEM.key`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<Files, Error> {
        let cert = write(dir.join(format!("{stem}.pem")), &self.chain_pem)?;
        let key = write(dir.join(format!("{stem}.key")), &self.key_pem())?;
        Ok(Files { cert, key })
    }
}

/// A rustls client configuration (aws-lc-rs, TLS 1.2 and 1.3) that trusts `root` alone: a
/// [`Ca::der`], or the [`Leaf::cert_der`] of a self-signed leaf.
pub fn client_config(root: CertificateDer<'static>) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root)?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rustls server with `leaf`'s chain and key and a client trusting `root` complete a handshake.
    fn handshake(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>, root: CertificateDer<'static>) {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let client = client_config(root).unwrap();
        let name = rustls_pki_types::ServerName::try_from("a.shop.example.com").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().unwrap();
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
    }

    #[test]
    fn issued_and_self_signed_leaves_verify() {
        let ca = Ca::new("test CA").unwrap();
        let leaf = ca.issue(&["shop.example.com", "*.shop.example.com", "127.0.0.2"]).unwrap();
        handshake(vec![leaf.cert_der(), ca.der()], leaf.key_der(), ca.der());
        let alone = Leaf::self_signed(&["a.shop.example.com"]).unwrap();
        handshake(vec![alone.cert_der()], alone.key_der(), alone.cert_der());
    }

    #[test]
    fn files_hold_the_chain_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        assert_eq!(std::fs::read_to_string(ca.write(dir.path(), "ca.pem").unwrap()).unwrap(), ca.pem());
        let leaf = ca.issue(&["shop.example.com"]).unwrap();
        let files = leaf.write(dir.path(), "shop").unwrap();
        assert_eq!(files, Files { cert: dir.path().join("shop.pem"), key: dir.path().join("shop.key") });
        let chain = std::fs::read_to_string(&files.cert).unwrap();
        assert_eq!(chain, format!("{}{}", leaf.cert_pem(), ca.pem()));
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(std::fs::read_to_string(&files.key).unwrap().contains("BEGIN PRIVATE KEY"));
        let err = leaf.write(&dir.path().join("missing"), "x").unwrap_err();
        assert!(err.to_string().contains("missing/x.pem"), "{err}");
    }
}
