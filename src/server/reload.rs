//! Swapping in a new configuration: the listeners it adds are bound (one socket per worker) and
//! handed to the workers before the swap, those it removes are closed after it (their open
//! connections go on); the access log is reopened on request; the replaced configuration is
//! retired here and dropped on the control thread once no worker holds it.

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
            if !self.admission.add(actual) {
                tracing::warn!(listener = %actual, "too many listeners for per-client limits; this one has none");
            }
            for (tx, fd) in self.commands.iter().zip(fds) {
                let _ = tx.send(Command::Listen(fd, actual));
            }
            tracing::info!(listener = %actual, "listener added");
            bound.push((configured, actual));
        }
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
        }
        // Keep configured order.
        bound.sort_by_key(|(c, _)| wanted.iter().position(|w| w == c).unwrap_or(usize::MAX));
        drop(bound);
        let swap = started.elapsed().as_secs_f64();
        publish_config(&self.registry, &new, timings.map(|[p, b]| [p, b, swap]));
        if !Arc::ptr_eq(&old, &new) {
            lock(&self.retired).push(old);
        }
        tracing::info!(generation, routes, exact = names.0, wildcard = names.1, "configuration reloaded");
        Ok(swap)
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
    /// for freeing them, not a worker).
    pub(crate) fn collect_retired(&self) {
        lock(&self.retired).retain(|c| Arc::strong_count(c) > 1);
    }
}
