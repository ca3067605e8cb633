//! Swapping in a new configuration: the listeners it adds are bound (one socket per worker) and
//! handed to the workers before the swap, those it removes are closed after it (their open
//! connections go on); the access log is reopened on request; the replaced configuration is
//! retired here and dropped on the control thread once no worker holds it (the one mechanism
//! that keeps a worker from freeing a replaced table). Session-ticket keys the new
//! configuration no longer has keep decrypting for their window.

use super::{bind_all, lock, publish_config, ServeError, Server, Shared};
use crate::config::Config;
use crate::worker::Command;
use std::sync::Arc;
use std::time::Instant;

impl Server {
    /// Swaps in `new` for new connections (listeners added and removed as it says). What cannot
    /// change while running is checked by [`Config::reload`], which is how a reload gets here.
    pub fn reload(&self, new: Config) -> Result<(), ServeError> {
        self.shared.swap(new, None).map(|_| ())
    }
}

impl Shared {
    /// Swaps `new` in; returns how long the swap took (binding new listeners included). A
    /// listener that cannot be bound fails the whole swap: the running configuration stays.
    pub(crate) fn swap(&self, new: Config, timings: Option<[f64; 2]>) -> Result<f64, ServeError> {
        self.swap_arc(Arc::new(new), timings)
    }

    /// [`Shared::swap`] of a configuration already shared (one that ran before, put back).
    ///
    /// Back ends and routes that did not change keep their health, counts and statistics: the
    /// new configuration's pools take the running one's state over ([`crate::backend::Pools::adopt`], when the
    /// configuration is not shared yet; one put back still has its own), and the health checker
    /// follows the new back ends.
    pub(crate) fn swap_arc(&self, mut new: Arc<Config>, timings: Option<[f64; 2]>) -> Result<f64, ServeError> {
        let started = Instant::now();
        let old = self.config.load_full();
        if let Some(c) = Arc::get_mut(&mut new) {
            if let Some(pools) = Arc::get_mut(&mut c.pools) {
                pools.adopt(&old.pools, &old.table, &c.table);
            }
        }
        let n = self.commands.len();
        let mut bound = lock(&self.listeners);
        let wanted: Vec<std::net::SocketAddr> = new.listeners.iter().map(|l| l.address).collect();
        let mut added = Vec::new();
        for addr in wanted.iter().filter(|a| !bound.iter().any(|(c, _)| c == *a)) {
            added.push((*addr, bind_all(*addr, n, new.runtime.backlog)?));
        }
        let removed: Vec<(std::net::SocketAddr, std::net::SocketAddr)> =
            bound.iter().filter(|(c, _)| !wanted.contains(c)).copied().collect();
        for (configured, (actual, fds)) in added {
            if let Some(offered) = &self.offered {
                // Offered to a new binary as the listeners bound at start are.
                let dups = super::dup_all(&fds, actual)?;
                // A reload adds no QUIC listener (a listener's `quic` is fixed at start).
                lock(offered).push(super::upgrade::Offered { configured, bound: actual, fds: dups, udp: Vec::new() });
            }
            if !self.admission.add(actual) {
                tracing::warn!(listener = %actual, "too many listeners for per-client limits; this one has none");
            }
            for (tx, fd) in self.commands.iter().zip(fds) {
                let _ = tx.send(Command::Listen(fd, actual));
            }
            tracing::info!(listener = %actual, "listener added");
            bound.push((configured, actual));
        }
        // Session-ticket keys dropped from the file keep decrypting for their window (a
        // configuration that shares the running one's TLS state, an API change, has it already).
        new.tls.tickets.inherit(&old.tls.tickets);
        log_warnings(&new);
        publish_gauges(&self.registry, &new);
        let generation = new.generation;
        let (routes, names) = (new.table.len(), new.table.name_count());
        self.checker.watch(&new.pools);
        self.config.store(Arc::clone(&new));
        for (configured, actual) in &removed {
            for tx in &self.commands {
                let _ = tx.send(Command::Unlisten(*actual));
            }
            tracing::info!(listener = %actual, "listener removed; its open connections go on");
            bound.retain(|(c, _)| c != configured);
            if let Some(offered) = &self.offered {
                // Its duplicate would keep the socket listening (in the SO_REUSEPORT group).
                lock(offered).retain(|o| o.configured != *configured);
            }
        }
        // Keep configured order.
        bound.sort_by_key(|(c, _)| wanted.iter().position(|w| w == c).unwrap_or(usize::MAX));
        drop(bound);
        let swap = started.elapsed().as_secs_f64();
        publish_config(&self.registry, &new, timings.map(|[p, b]| [p, b, swap]));
        if !Arc::ptr_eq(&old, &new) {
            lock(&self.retired).push(old);
        }
        let (certs_parsed, certs_reused) = new.tls.loads();
        tracing::info!(
            generation,
            routes,
            exact = names.0,
            wildcard = names.1,
            certs_parsed,
            certs_reused,
            "configuration reloaded"
        );
        Ok(swap)
    }

    /// Swaps in `new`, the running configuration with its table's delta folded (the same
    /// routes, generation and everything else): nothing to bind, adopt or publish.
    pub(crate) fn replace_folded(&self, new: Arc<Config>) {
        let delta = new.table.delta_len() as u64;
        let old = self.config.swap(new);
        lock(&self.retired).push(old);
        self.registry.control(|m| {
            m.counters.config_delta_names = delta;
            m.counters.config_delta_folds += 1;
        });
    }

    /// Reopens the access log at the running configuration's path (SIGHUP: after logrotate).
    pub(crate) fn reopen_access_log(&self) {
        let path = self.config.load().runtime.access_log.clone();
        if let (Some(sink), Some(path)) = (lock(&self.access_log).as_ref(), path) {
            if !sink.reopen(&path) {
                tracing::warn!(path = %path.display(), "access log: could not ask the writer to reopen");
            }
        }
    }

    /// Drops the retired configurations that no worker holds any more (this thread then pays
    /// for freeing them, not a worker); whether it dropped any.
    pub(crate) fn collect_retired(&self) -> bool {
        let mut retired = lock(&self.retired);
        let before = retired.len();
        retired.retain(|c| Arc::strong_count(c) > 1);
        retired.len() < before
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
    // Counted with the table (not by walking 250,000 routes on every swap).
    let ocsp = config.ocsp;
    let configured = config.tls.ticket_file().map_or(0, |f| f.len()) as u64;
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
