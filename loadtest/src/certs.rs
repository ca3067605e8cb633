//! Certificates for terminate routes and TLS back ends: one CA, one ECDSA P-256 leaf per route.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
}

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
    pub fn new() -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "sni-loadtest CA");
        let cert = p.self_signed(&key).unwrap();
        Ca { key, cert }
    }
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
    /// Issue a leaf for `names` (DNS names, wildcards allowed) and `ips`, written under `dir/stem.*`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[String], ips: &[IpAddr]) -> std::io::Result<Leaf> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_else(|| stem.to_string()));
        for n in names {
            p.subject_alt_names
                .push(SanType::DnsName(n.clone().try_into().map_err(|e| std::io::Error::other(format!("{n}: {e}")))?));
        }
        for ip in ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_pem_path = dir.join(format!("{stem}.pem"));
        let key_pem_path = dir.join(format!("{stem}.key"));
        let combined_pem_path = dir.join(format!("{stem}.combined.pem"));
        let chain_pem = format!("{}{}", cert.pem(), self.cert.pem());
        std::fs::write(&cert_pem_path, &chain_pem)?;
        std::fs::write(&key_pem_path, key.serialize_pem())?;
        std::fs::write(&combined_pem_path, format!("{chain_pem}{}", key.serialize_pem()))?;
        Ok(Leaf {
            cert_der: cert.der().clone(),
            ca_der: self.der(),
            key_der: key.serialize_der(),
            cert_pem_path,
            key_pem_path,
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
