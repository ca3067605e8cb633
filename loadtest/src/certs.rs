//! Certificates for terminate routes and TLS back ends: one CA, one ECDSA P-256 leaf per route,
//! made by `sni_dispatch::pki` and written where HAProxy, nginx and the dispatcher read them.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sni_dispatch::pki;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub struct Ca(pki::Ca);

/// A leaf certificate and its key, in DER and as PEM files on disk.
#[derive(Clone)]
pub struct Leaf {
    pub cert_der: CertificateDer<'static>,
    pub ca_der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub cert_pem_path: PathBuf,
    pub key_pem_path: PathBuf,
    /// certificate chain and key in one file (HAProxy's `crt`)
    pub combined_pem_path: PathBuf,
}

impl Leaf {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone(), self.ca_der.clone()]
    }
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl Ca {
    #[allow(clippy::expect_used)]
    pub fn new() -> Ca {
        Ca(pki::Ca::new("sni-loadtest CA").expect("generating the CA"))
    }
    pub fn der(&self) -> CertificateDer<'static> {
        self.0.der()
    }
    /// Issue a leaf for `names` (DNS names, wildcards allowed) and `ips`, written under `dir/stem.*`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[String], ips: &[IpAddr]) -> std::io::Result<Leaf> {
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        let sans: Vec<&str> = names.iter().chain(&ips).map(String::as_str).collect();
        let fail = |e: pki::Error| std::io::Error::other(format!("{stem}: {e}"));
        let leaf = self.0.issue(&sans).map_err(fail)?;
        let files = leaf.write(dir, stem).map_err(fail)?;
        let combined_pem_path = dir.join(format!("{stem}.combined.pem"));
        std::fs::write(&combined_pem_path, format!("{}{}", leaf.chain_pem(), leaf.key_pem()))?;
        Ok(Leaf {
            cert_der: leaf.cert_der(),
            ca_der: self.der(),
            // PKCS#8, as `pki` makes every key
            key_der: leaf.key_der().secret_der().to_vec(),
            cert_pem_path: files.cert,
            key_pem_path: files.key,
            combined_pem_path,
        })
    }
}

impl Default for Ca {
    fn default() -> Self {
        Self::new()
    }
}

/// Accepts any certificate (used only to generate ClientHellos and where a suite turns verification off).
#[derive(Debug)]
pub struct NoVerify(rustls::crypto::WebPkiSupportedAlgorithms);

impl NoVerify {
    pub fn new() -> Self {
        NoVerify(rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms)
    }
}
impl Default for NoVerify {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
