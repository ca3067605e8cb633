//! Fuzz `tls::ocsp::check` (an OCSP response file, written by an operator's cron job or a
//! responder): never panics, and a verdict of "stapled" only for a response that verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_dispatch::tls::ocsp;
use std::sync::OnceLock;

/// The chain the test vectors were made for (src/tls/testdata/ocsp), checked on 2026-06-01.
fn chain() -> &'static [rustls_pki_types::CertificateDer<'static>] {
    static CHAIN: OnceLock<Vec<rustls_pki_types::CertificateDer<'static>>> = OnceLock::new();
    CHAIN.get_or_init(|| {
        use rustls_pki_types::pem::PemObject;
        [&include_bytes!("../../src/tls/testdata/ocsp/leaf.pem")[..], include_bytes!("../../src/tls/testdata/ocsp/ca.pem")]
            .iter()
            .map(|p| rustls_pki_types::CertificateDer::from_pem_slice(p).expect("test vector"))
            .collect()
    })
}

const NOW: i64 = 1_780_272_000; // 2026-06-01T00:00:00Z

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = ocsp::check(data, chain(), NOW) {
        assert!(c.next_update.map_or(true, |t| t > NOW));
    }
    // Without the issuer nothing can be checked, whatever the bytes.
    assert!(ocsp::check(data, &chain()[..1], NOW).is_err());
});
