//! TLS termination with rustls (aws-lc-rs, which prefers the X25519MLKEM768 hybrid).
//!
//! The route, and so the certificate, is chosen by the dispatcher before rustls sees a byte,
//! with the same precedence as passthrough: dedicated IP, exact SNI, wildcard SNI, the `no_sni`
//! route (the default certificate), else drop. Each terminating route therefore owns one
//! `ServerConfig` whose resolver always answers that route's certificate; rustls's
//! SNI resolver (exact names only, no default) is not used.
//!
//! Resumption works on every core: all configs share one process-wide ticketer (TLS 1.3
//! tickets and TLS 1.2 tickets) and one session-ID cache (TLS 1.2 clients without tickets). Both
//! survive reloads, so a reload does not cost clients a full handshake.

mod buffers;
mod handshake;
pub mod ktls;
mod record;
mod relay;
#[cfg(test)]
mod tests;

pub use handshake::{handshake, Established, HandshakeError};
pub use relay::relay;

use crate::route::TlsVersion;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// What a terminating route carries (its `route::Action::Terminate` payload): the certificate
/// material, parsed and checked when the config was loaded, and the rustls configuration built
/// from it.
pub struct TlsMaterial {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The chain and key, ready for rustls.
    pub certified_key: Arc<CertifiedKey>,
    /// The route's rustls configuration (its certificate, `min_tls`, `alpn`, shared resumption).
    pub server_config: Arc<ServerConfig>,
}

impl fmt::Debug for TlsMaterial {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// TLS 1.2 session-ID cache entries, shared by all workers and routes.
const SESSION_CACHE_SIZE: usize = 64 * 1024;

/// The process-wide resumption state.
struct Resumption {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

fn resumption() -> &'static Resumption {
    static SHARED: OnceLock<Resumption> = OnceLock::new();
    SHARED.get_or_init(|| Resumption {
        // Fails only if the system RNG does; then resumption is off rather than the process down.
        ticketer: rustls::crypto::aws_lc_rs::Ticketer::new().unwrap_or_else(|e| {
            tracing::error!("TLS ticketer unavailable, resumption by ticket disabled: {e}");
            Arc::new(NoTickets)
        }),
        cache: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
    })
}

#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Always the route's certificate: the route was chosen before the handshake began.
#[derive(Debug)]
struct RouteCert(Arc<CertifiedKey>);

impl ResolvesServerCert for RouteCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Builds a terminating route's rustls configuration.
///
/// rustls speaks TLS 1.2 and 1.3 only, so `min_tls` "1.0" and "1.1" serve as 1.2; `check`
/// warns about that.
pub fn server_config(
    key: Arc<CertifiedKey>,
    min_tls: TlsVersion,
    alpn: &[String],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let versions: &[&rustls::SupportedProtocolVersion] = if min_tls >= TlsVersion::TLS13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(RouteCert(key)));
    let shared = resumption();
    config.ticketer = shared.ticketer.clone();
    config.session_storage = shared.cache.clone();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // One ticket is enough for a proxy's clients to resume, and each costs an encryption.
    config.send_tls13_tickets = 1;
    // The record layer after the handshake is ours (or the kernel's): tls::record, with the
    // keys rustls extracts and the traffic secrets its key log hands over (for KeyUpdates).
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(handshake::TrafficSecretsLog);
    // Our order of cipher suites, not the client's (see `provider`).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The crypto provider of every route (one, shared): aws-lc-rs with AES-128-GCM first. Every
/// TLS 1.3 client offers TLS_AES_128_GCM_SHA256 (RFC 8446 §9.1 makes it mandatory), and with
/// our order it is what they get, whatever they prefer: its key schedule runs on SHA-256,
/// which x86 (SHA-NI) and ARMv8 do in hardware, where TLS_AES_256_GCM_SHA384's SHA-384 runs in
/// software (and measured as the largest user-space cost of a resumed handshake here), and
/// AES-128 takes 10 rounds to AES-256's 14 on bulk. Then AES-256-GCM, then ChaCha20-Poly1305
/// (which only clients that offer neither AES suite get). The same order for TLS 1.2.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::aws_lc_rs::default_provider();
            p.cipher_suites.sort_by_key(|s| suite_rank(s.suite()));
            Arc::new(p)
        })
        .clone()
}

/// Where a suite goes in our order (lower first); TLS 1.3 before TLS 1.2, whose order only
/// matters among the suites of one certificate type.
fn suite_rank(s: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as C;
    match s {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384 => 1,
        C::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => 5,
        _ => 6,
    }
}
