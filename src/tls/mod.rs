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
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(RouteCert(key)));
    let shared = resumption();
    config.ticketer = shared.ticketer.clone();
    config.session_storage = shared.cache.clone();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // One ticket is enough for a proxy's clients to resume, and each costs an encryption.
    config.send_tls13_tickets = 1;
    // The record layer after the handshake is ours (or the kernel's): tls::record.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}
