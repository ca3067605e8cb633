//! Reloading: a new configuration for new connections, while open ones keep the snapshot they
//! started with. What cannot change while running (listeners, workers, CPUs, ring, pipe pool)
//! stays as started.

use super::Server;
use crate::config::Config;
use std::sync::Arc;

impl Server {
    /// Swaps in a new configuration for new connections. Listeners, worker count, CPUs, ring and
    /// pipe pool stay as started; a changed listener set is logged as a warning.
    pub fn reload(&self, mut new: Config) {
        let old = self.config.load();
        // Back ends and routes that did not change keep their health, counts and statistics.
        new.pools.adopt(&old.pools, &old.table, &new.table);
        self.checker.watch(&new.pools);
        let addresses = |c: &Config| c.listeners.iter().map(|l| l.address).collect::<Vec<_>>();
        if addresses(&old) != addresses(&new) || old.handoff != new.handoff {
            tracing::warn!(
                old = ?old.listeners,
                new = ?new.listeners,
                "listener set changed; listeners are not rebound on reload (restart to apply)"
            );
        }
        // Session-ticket keys dropped from the file keep decrypting for their window.
        new.tls.tickets.inherit(&old.tls.tickets);
        log_warnings(&new);
        publish_gauges(&self.registry, &new);
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

/// The gauges that describe the configuration rather than traffic: OCSP responses by state,
/// session-ticket keys by state.
pub(super) fn publish_gauges(registry: &crate::metrics::Registry, config: &Config) {
    use crate::metrics::{OcspState, TicketKeyState};
    use crate::tls::Stapling;
    let mut ocsp = [0u64; OcspState::COUNT];
    for r in config.table.routes() {
        if let crate::route::Action::Terminate(m) = &r.action {
            let state = match &m.stapling {
                None => continue,
                Some(Stapling::Stapled(c)) if c.revoked => OcspState::Revoked,
                Some(Stapling::Stapled(_)) => OcspState::Stapled,
                Some(Stapling::Refused(_)) => OcspState::Refused,
            };
            ocsp[state as usize] += 1;
        }
    }
    let configured = config.tls.ticket_file.as_ref().map_or(0, |f| f.len()) as u64;
    let retired = config.tls.tickets.retired_names().len() as u64;
    registry.bump_process(|c| {
        c.tls_ocsp_responses = Default::default();
        for (s, n) in OcspState::ALL.iter().zip(ocsp) {
            c.tls_ocsp_responses.add(*s, n);
        }
        c.tls_ticket_keys = Default::default();
        c.tls_ticket_keys.add(TicketKeyState::Configured, configured);
        c.tls_ticket_keys.add(TicketKeyState::Retired, retired);
    });
}
