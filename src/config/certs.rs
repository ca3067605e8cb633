//! A terminating route's certificate chain, key and OCSP response: read, parsed, checked to
//! belong together, and turned into the route's rustls configuration (through
//! [`crate::tls::Shared`], which caches what did not change since the last load); and the `[tls]`
//! table that every terminating route shares.

use super::file::TlsFile;
use super::Located;
use crate::route::TlsVersion;
use crate::tls::{self, TlsMaterial};
use std::path::{Path, PathBuf};

/// Reads a PEM chain and key (and the route's OCSP response), and checks that they belong
/// together, so that a route whose key was swapped for another site's fails `check` instead of
/// every handshake.
#[allow(clippy::too_many_arguments)]
pub(super) fn load_tls(
    shared: &tls::Shared,
    cert: &Path,
    key: &Path,
    ocsp: Option<&Path>,
    route: &str,
    min_tls: TlsVersion,
    alpn: &[String],
    errors: &mut Vec<Located>,
) -> Option<TlsMaterial> {
    match shared.material(cert, key, ocsp, min_tls, alpn) {
        Ok((material, _)) => Some(material),
        Err(problems) => {
            errors.extend(problems.into_iter().map(|e| Located::new(format!("{route}.{}", e.field), e.reason)));
            None
        }
    }
}

/// `[tls]` as configured: the session-ticket key file (resolved against the main file's
/// directory) and the ticket lifetime. Kept with the configuration: the key file is read again
/// on every reload, also one whose main file did not change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub ticket_keys: Option<PathBuf>,
    pub ticket_lifetime_s: u32,
}

/// `[tls]`: the session-ticket key file and lifetime. Relative paths are relative to `base`.
pub(super) fn resolve_tls(t: &TlsFile, base: &Path, errors: &mut Vec<Located>) -> TlsSettings {
    let lifetime = match t.ticket_lifetime_s {
        None => tls::tickets::DEFAULT_LIFETIME_S,
        Some(s) if (1..=tls::tickets::MAX_LIFETIME_S).contains(&s) => s,
        Some(s) => {
            errors.push(Located::new(
                "tls.ticket_lifetime_s",
                format!("{s} is not from 1 to {} (7 days, the most TLS 1.3 allows)", tls::tickets::MAX_LIFETIME_S),
            ));
            tls::tickets::DEFAULT_LIFETIME_S
        }
    };
    TlsSettings { ticket_keys: t.ticket_keys.as_ref().map(|p| base.join(p)), ticket_lifetime_s: lifetime }
}

/// Reads the `[tls]` key file (if any) and gives `shared` (made with [`tls::Shared::pending`])
/// its session-ticket keys; a file that cannot be read or holds bad keys is a problem.
pub(super) fn configure_tickets(s: &TlsSettings, shared: &tls::Shared, errors: &mut Vec<Located>) {
    let file = s.ticket_keys.as_ref().and_then(|path| match tls::KeyFile::read(path) {
        Ok(f) => Some(f),
        Err(reason) => {
            errors.push(Located::new("tls.ticket_keys", format!("{}: {reason}", path.display())));
            None
        }
    });
    shared.configure_tickets(file, s.ticket_lifetime_s);
}
