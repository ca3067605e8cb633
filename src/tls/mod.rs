//! TLS termination with rustls (aws-lc-rs, which prefers the X25519MLKEM768 hybrid).
//!
//! The route, and so the certificate, is chosen by the dispatcher before rustls sees a byte,
//! with the same precedence as passthrough: dedicated IP, exact SNI, wildcard SNI, the `no_sni`
//! route (the default certificate), else drop. Each terminating route therefore owns one
//! `ServerConfig` whose resolver always answers that route's certificate; rustls's
//! SNI resolver (exact names only, no default) is not used.
//!
//! At edge scale (100,000 routes, each with its own certificate) what can be shared is:
//! - the parsed chain and key ([`store`]): one per pair of files, cached by file identity, so a
//!   reload parses only what changed, and intermediates are one copy per process;
//! - one base `ServerConfig` per (versions, ALPN) of a configuration ([`Shared`]), which each
//!   route's config clones with its own resolver (a few hundred bytes, no allocation of the
//!   provider or the session cache per route).
//!
//! A route may staple an OCSP response ([`ocsp`]): checked when loaded, stapled while current.
//!
//! Resumption works on every core and across hosts: a configuration's routes share one
//! ticketer ([`tickets`]: keys from `[tls] ticket_keys`, or a process-wide random ticketer), and
//! one process-wide session-ID cache (TLS 1.2 clients without tickets) survives reloads.

mod buffers;
mod der;
mod handshake;
pub mod ktls;
mod record;
mod relay;
#[cfg(test)]
mod tests;

pub mod ocsp;
pub mod store;
pub mod tickets;

pub use handshake::{handshake, Established, HandshakeError};
pub use relay::relay;
pub use tickets::{KeyFile, Tickets};

use crate::metrics::{Counters, TicketResult};
use crate::route::TlsVersion;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What a terminating route carries (its `route::Action::Terminate` payload): the certificate
/// material, parsed and checked when the config was loaded, and the rustls configuration built
/// from it.
pub struct TlsMaterial {
    /// The route's `ocsp` file, if it has one.
    pub ocsp_path: Option<PathBuf>,
    /// The chain and key, ready for rustls (without a staple; shared by every route that names
    /// the same files).
    pub certified_key: Arc<CertifiedKey>,
    /// What became of the route's OCSP response, if it has one.
    pub stapling: Option<Stapling>,
    /// The route's rustls configuration (its certificate, `min_tls`, `alpn`, shared resumption).
    pub server_config: Arc<ServerConfig>,
    /// Keeps the cache entries alive while a configuration uses them.
    loaded: (Arc<store::LoadedCert>, Option<Arc<store::LoadedOcsp>>),
}

impl fmt::Debug for TlsMaterial {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_path", &self.cert_path())
            .field("key_path", &self.key_path())
            .field("ocsp_path", &self.ocsp_path)
            .field("stapling", &self.stapling)
            .finish_non_exhaustive()
    }
}

/// A route's OCSP response, as checked when the configuration was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stapling {
    /// Stapled to every handshake until `next_update` (Unix seconds; `None`: no end).
    Stapled(ocsp::Checked),
    /// Not stapled, and why.
    Refused(ocsp::Problem),
}

impl TlsMaterial {
    /// Whether `other` serves exactly what this does: the same chain and key from the cache
    /// (files unchanged), the same OCSP response with the same verdict, the same ALPN and the
    /// same ticketer (built with the same configuration's TLS state). A reload keeps the running
    /// route then, instead of a second copy of every certificate's configuration.
    pub fn same(&self, other: &Self) -> bool {
        let ocsp_same = match (&self.loaded.1, &other.loaded.1) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        Arc::ptr_eq(&self.loaded.0, &other.loaded.0)
            && ocsp_same
            && self.ocsp_path == other.ocsp_path
            && self.stapling == other.stapling
            && self.server_config.alpn_protocols == other.server_config.alpn_protocols
            && std::ptr::addr_eq(Arc::as_ptr(&self.server_config.ticketer), Arc::as_ptr(&other.server_config.ticketer))
    }

    /// The route's `cert` file.
    pub fn cert_path(&self) -> &Path {
        &self.loaded.0.cert_path
    }

    /// The route's `key` file.
    pub fn key_path(&self) -> &Path {
        &self.loaded.0.key_path
    }

    /// The route's problems that do not stop it from serving ("`ocsp`: reason"), for `check`
    /// and the load and reload logs.
    pub fn warnings(&self) -> Vec<(&'static str, String)> {
        let (Some(path), Some(stapling)) = (&self.ocsp_path, &self.stapling) else { return Vec::new() };
        let p = path.display();
        match stapling {
            Stapling::Refused(problem) => vec![("ocsp", format!("{p}: {problem}; not stapled"))],
            Stapling::Stapled(c) if c.revoked => {
                vec![("ocsp", format!("{p}: says the certificate is revoked (stapled: clients will refuse it)"))]
            }
            Stapling::Stapled(ocsp::Checked { next_update: Some(t), .. }) if *t - ocsp::now() < 3600 => vec![(
                "ocsp",
                format!(
                    "{p}: expires within the hour (nextUpdate {}); refresh the file and reload",
                    ocsp::format_time(*t)
                ),
            )],
            Stapling::Stapled(_) => Vec::new(),
        }
    }
}

/// TLS 1.2 session-ID cache entries, shared by all workers and routes.
const SESSION_CACHE_SIZE: usize = 64 * 1024;

/// The process-wide TLS 1.2 session-ID cache (it survives reloads).
fn session_cache() -> Arc<dyn StoresServerSessions> {
    static SHARED: OnceLock<Arc<dyn StoresServerSessions>> = OnceLock::new();
    SHARED.get_or_init(|| ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)).clone()
}

thread_local! {
    /// Handshakes on this worker since its last publish that went without their route's OCSP
    /// response because it had expired.
    static OCSP_WITHHELD: Cell<u64> = const { Cell::new(0) };
}

/// Adds what rustls's callbacks counted on this thread since the last call (ticket outcomes,
/// withheld staples) into `c`: a worker calls it when it publishes its counters.
pub fn drain_counts(c: &mut Counters) {
    let tickets = tickets::EVENTS.with(|e| e.replace([0; TicketResult::COUNT]));
    for (r, n) in TicketResult::ALL.iter().zip(tickets) {
        c.tls_tickets.add(*r, n);
    }
    c.tls_ocsp_withheld += OCSP_WITHHELD.with(|w| w.replace(0));
}

/// Always the route's certificate: the route was chosen before the handshake began. With an
/// OCSP response, the stapled copy until the response's `nextUpdate`, the plain one after.
#[derive(Debug)]
struct RouteCert {
    plain: Arc<CertifiedKey>,
    stapled: Option<(Arc<CertifiedKey>, i64)>,
}

impl RouteCert {
    /// The chain to send now.
    fn current(&self) -> Arc<CertifiedKey> {
        if let Some((key, until)) = &self.stapled {
            if ocsp::now() < *until {
                return Arc::clone(key);
            }
            OCSP_WITHHELD.with(|w| w.set(w.get() + 1));
            crate::warn_every_second!(
                next_update = %ocsp::format_time(*until),
                "a route's OCSP response expired while serving; its handshakes go without a staple until the file is refreshed and reloaded"
            );
        }
        Arc::clone(&self.plain)
    }
}

impl ResolvesServerCert for RouteCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What a base configuration depends on: TLS 1.3 only, and the ALPN list.
type BaseKey = (bool, Vec<String>);

/// What every terminating route of one configuration shares: the ticketer, the session cache,
/// and one base `ServerConfig` per (versions, ALPN) that route configs are cloned from.
pub struct Shared {
    pub tickets: Arc<Tickets>,
    /// The `[tls] ticket_keys` file, if configured.
    ticket_file: OnceLock<Option<KeyFile>>,
    bases: Mutex<HashMap<BaseKey, Arc<ServerConfig>>>,
    /// Chains and keys read and parsed by [`Shared::material`], and reused from the cache.
    parsed: AtomicUsize,
    reused: AtomicUsize,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("ticket_file", &self.ticket_file().map(|k| &k.path)).finish_non_exhaustive()
    }
}

impl Default for Shared {
    /// No key file: the process-wide random ticketer.
    fn default() -> Self {
        Self::new(None, tickets::DEFAULT_LIFETIME_S)
    }
}

/// Why a route's TLS material could not be built, and which of its keys is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterialError {
    /// `cert`, `key` or `ocsp`.
    pub field: &'static str,
    pub reason: String,
}

impl Shared {
    pub fn new(ticket_file: Option<KeyFile>, lifetime_s: u32) -> Self {
        Self {
            tickets: Tickets::new(ticket_file.as_ref(), lifetime_s),
            ticket_file: OnceLock::from(ticket_file),
            bases: Mutex::new(HashMap::new()),
            parsed: AtomicUsize::new(0),
            reused: AtomicUsize::new(0),
        }
    }

    /// A `Shared` whose session-ticket keys are given later ([`Shared::configure_tickets`]):
    /// routes are resolved with it while the files are parsed, before the `[tls]` table may
    /// have been read.
    pub fn pending() -> Self {
        Self {
            tickets: Tickets::pending(),
            ticket_file: OnceLock::new(),
            bases: Mutex::new(HashMap::new()),
            parsed: AtomicUsize::new(0),
            reused: AtomicUsize::new(0),
        }
    }

    /// Gives a [`Shared::pending`] its `[tls]` keys (once; later calls change nothing).
    pub fn configure_tickets(&self, ticket_file: Option<KeyFile>, lifetime_s: u32) {
        self.tickets.configure(ticket_file.as_ref(), lifetime_s);
        let _ = self.ticket_file.set(ticket_file);
    }

    /// The `[tls] ticket_keys` file, if configured.
    pub fn ticket_file(&self) -> Option<&KeyFile> {
        self.ticket_file.get().and_then(Option::as_ref)
    }

    /// Chains and keys this configuration's routes (and routes built later with it) read and
    /// parsed, and found unchanged in the cache, since it was made or the last reload that
    /// reused it began: `(parsed, reused)`.
    pub fn loads(&self) -> (usize, usize) {
        (self.parsed.load(Ordering::Relaxed), self.reused.load(Ordering::Relaxed))
    }

    /// Starts [`Shared::loads`] again from zero (a reload that keeps this TLS state counts its own).
    pub fn reset_loads(&self) {
        self.parsed.store(0, Ordering::Relaxed);
        self.reused.store(0, Ordering::Relaxed);
    }

    /// A route's configuration: the base for its versions and ALPN, with `resolver`.
    fn route_config(
        &self,
        resolver: Arc<dyn ResolvesServerCert>,
        min_tls: TlsVersion,
        alpn: &[String],
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let tls13_only = min_tls >= TlsVersion::TLS13;
        let mut bases = self.bases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let base = match bases.get(&(tls13_only, alpn.to_vec())) {
            Some(b) => Arc::clone(b),
            None => {
                let b = Arc::new(base_config(tls13_only, alpn, Arc::clone(&self.tickets) as _)?);
                bases.insert((tls13_only, alpn.to_vec()), Arc::clone(&b));
                b
            }
        };
        drop(bases);
        let mut config = (*base).clone();
        config.cert_resolver = resolver;
        Ok(Arc::new(config))
    }

    /// Loads a terminating route's chain, key and OCSP response (reusing what the cache holds
    /// for unchanged files) and builds its rustls configuration.
    pub fn material(
        &self,
        cert: &Path,
        key: &Path,
        ocsp_path: Option<&Path>,
        min_tls: TlsVersion,
        alpn: &[String],
    ) -> Result<(TlsMaterial, store::Loaded), Vec<MaterialError>> {
        let bad = |field, reason: String| MaterialError { field, reason };
        let (loaded, how) = store::load(cert, key).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| match e {
                    store::LoadError::Mismatch => {
                        bad("key", format!("{}: does not match the certificate in {}", key.display(), cert.display()))
                    }
                    e if e.is_cert() => bad("cert", format!("{}: {e}", cert.display())),
                    e => bad("key", format!("{}: {e}", key.display())),
                })
                .collect::<Vec<_>>()
        })?;
        match how {
            store::Loaded::Parsed => self.parsed.fetch_add(1, Ordering::Relaxed),
            store::Loaded::Reused => self.reused.fetch_add(1, Ordering::Relaxed),
        };
        let (stapling, ocsp_entry) = match ocsp_path {
            None => (None, None),
            Some(p) => {
                let entry =
                    store::load_ocsp(p, &loaded).map_err(|e| vec![bad("ocsp", format!("{}: {e}", p.display()))])?;
                (Some(entry.stapling(ocsp::now())), Some(entry))
            }
        };
        let stapled = match (&stapling, &ocsp_entry) {
            (Some(Stapling::Stapled(c)), Some(e)) => {
                e.stapled.as_ref().map(|k| (Arc::clone(k), c.next_update.unwrap_or(i64::MAX)))
            }
            _ => None,
        };
        let resolver = Arc::new(RouteCert { plain: Arc::clone(&loaded.certified_key), stapled });
        let server_config = self
            .route_config(resolver, min_tls, alpn)
            .map_err(|e| vec![bad("cert", format!("{}: unusable with rustls: {e}", cert.display()))])?;
        let material = TlsMaterial {
            ocsp_path: ocsp_path.map(Path::to_owned),
            certified_key: Arc::clone(&loaded.certified_key),
            stapling,
            server_config,
            loaded: (loaded, ocsp_entry),
        };
        Ok((material, how))
    }
}

fn base_config(
    tls13_only: bool,
    alpn: &[String],
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
) -> Result<ServerConfig, rustls::Error> {
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls13_only { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
    config.ticketer = ticketer;
    config.session_storage = session_cache();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // One ticket is enough for a proxy's clients to resume, and each costs an encryption.
    config.send_tls13_tickets = 1;
    // The record layer after the handshake is ours (or the kernel's): tls::record, with the
    // keys rustls extracts and the traffic secrets its key log hands over (for KeyUpdates).
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(handshake::TrafficSecretsLog);
    // Our order of cipher suites, not the client's (see `provider`).
    config.ignore_client_order = true;
    Ok(config)
}

/// Builds a terminating route's rustls configuration on its own (no shared base; the
/// process-wide random ticketer).
///
/// rustls speaks TLS 1.2 and 1.3 only, so `min_tls` "1.0" and "1.1" serve as 1.2; `check`
/// warns about that.
pub fn server_config(
    key: Arc<CertifiedKey>,
    min_tls: TlsVersion,
    alpn: &[String],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    Shared::default().route_config(Arc::new(RouteCert { plain: key, stapled: None }), min_tls, alpn)
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

#[cfg(test)]
mod resolver_tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        let leaf = crate::pki::Leaf::self_signed(&["a.example"]).unwrap();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        Arc::new(CertifiedKey::from_der(vec![leaf.cert_der()], leaf.key_der(), &provider).unwrap())
    }

    #[test]
    fn a_staple_goes_out_until_next_update_then_the_plain_chain() {
        let plain = key();
        let mut with = (*plain).clone();
        with.ocsp = Some(vec![0x30, 0x00]);
        let with = Arc::new(with);
        let current = RouteCert { plain: Arc::clone(&plain), stapled: Some((Arc::clone(&with), ocsp::now() + 3600)) };
        assert!(Arc::ptr_eq(&current.current(), &with));
        OCSP_WITHHELD.with(|w| w.set(0));
        let expired = RouteCert { plain: Arc::clone(&plain), stapled: Some((with, ocsp::now() - 1)) };
        assert!(Arc::ptr_eq(&expired.current(), &plain));
        let mut c = Counters::default();
        drain_counts(&mut c);
        assert_eq!(c.tls_ocsp_withheld, 1);
    }
}
