//! Reloading: a new configuration for new connections, while open ones keep the snapshot they
//! started with. What cannot change while running (listeners, workers, CPUs, ring, pipe pool)
//! stays as started.

use super::Server;
use crate::config::Config;
use std::sync::Arc;

impl Server {
    /// Swaps in a new configuration for new connections. Listeners, worker count, CPUs, ring and
    /// pipe pool stay as started; a changed listener set is logged as a warning.
    pub fn reload(&self, new: Config) {
        let old = self.config.load();
        if old.listeners != new.listeners {
            tracing::warn!(
                old = ?old.listeners,
                new = ?new.listeners,
                "listener set changed; listeners are not rebound on reload (restart to apply)"
            );
        }
        // Session-ticket keys dropped from the file keep decrypting for their window.
        new.tls.tickets.inherit(&old.tls.tickets);
        log_warnings(&new);
        let (routes, names) = (new.table.routes().len(), new.table.name_count());
        let (certs_parsed, certs_reused) = new.tls.loads();
        self.config.store(Arc::new(new));
        tracing::info!(
            routes,
            exact = names.0,
            wildcard = names.1,
            certs_parsed,
            certs_reused,
            "configuration reloaded"
        );
    }
}

/// What loads but may not do what the operator meant (an OCSP response not stapled, …), one
/// line each, at start and on every reload.
pub(super) fn log_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(config = %config.path.display(), "{w}");
    }
}
