//! Shunning: a client over its per-client limit is refused in the kernel, not after accept.
//!
//! When admission refuses a client by `max_conns_per_client` or `max_conn_rate_per_client`, the
//! worker adds the client (an IPv4 address, an IPv6 /64) to the set of its own listening socket
//! for that listener and compiles the set into the socket's handshake filter
//! ([`crate::sys::filter`]): the client's new handshakes (pure SYNs) are dropped by the kernel,
//! before the accept queue, so while its entry lives a flood costs this process nothing per
//! attempt (no accept, no descriptor, no wake-up). The client's kernel retransmits the SYN (after
//! 1 s, then 2 s, …), as for a lost segment: a connect that outlives the entry gets in.
//!
//! The policy is the limit's own, not a stricter one (think of many users behind one NAT): an
//! entry lives while the limit would still refuse the client, re-checked every tick (100 ms), so
//! the client gets what the limit allows it (its `max_conn_rate_per_client` per second, its
//! `max_conns_per_client` at once) and its SYNs beyond that are dropped instead of its accepted
//! connections reset. Each worker has its own set per listener (`SO_REUSEPORT` gives each worker
//! its own socket and the kernel spreads a client's SYNs over them; the counts the limits read are
//! shared, so each worker's socket learns the client at its first refusal there), bounded by
//! `shun_max`: beyond it a client is refused after accept as before (counted). Off where the
//! kernel does not see the client (`accept_proxy`: the SYNs come from the balancer).

use super::admission::Tables;
use crate::config::Config;
use crate::metrics::{labels::ShunSkip, DropReason, Local, ShunCause};
use crate::sys::filter::ShunKey;
use crate::sys::Socket;
use std::net::{IpAddr, SocketAddr};

/// One shunned client of a listener.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: ShunKey,
    /// An address of the client, to ask the limits again.
    ip: IpAddr,
}

/// One listening socket of this worker and the clients its filter drops.
#[derive(Debug)]
struct Listening {
    listen: SocketAddr,
    socket: Socket,
    /// Sorted by key, unique.
    entries: Vec<Entry>,
    /// The attached filter is not of `entries` (an update failed): tried again every tick.
    stale: bool,
}

/// A worker's shunned clients, per listener it accepts on.
#[derive(Debug, Default)]
pub struct Shuns {
    listeners: Vec<Listening>,
}

impl Shuns {
    /// A listener this worker accepts on (its accept loop calls this when it starts).
    pub fn register(&mut self, listen: SocketAddr, socket: Socket) {
        self.forget(listen);
        self.listeners.push(Listening { listen, socket, entries: Vec::new(), stale: false });
    }

    /// The listener stops accepting here (a stop, a reload removed it, a binary upgrade handed
    /// it over): no more shunning on it; a filter this set attached is taken off (a socket
    /// handed over keeps serving in the new process, which knows nothing of our entries).
    pub fn forget(&mut self, listen: SocketAddr) {
        self.listeners.retain(|l| {
            if l.listen == listen && (!l.entries.is_empty() || l.stale) {
                let _ = l.socket.clear_filter();
            }
            l.listen != listen
        });
    }

    /// Clients shunned now, on all of this worker's listeners (the gauge).
    pub fn len(&self) -> usize {
        self.listeners.iter().map(|l| l.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether [`Shuns::expire`] has anything to do: a client shunned, or a filter to update.
    pub fn pending(&self) -> bool {
        self.listeners.iter().any(|l| !l.entries.is_empty() || l.stale)
    }

    /// Shuns the client at `ip` on the listener bound to `listen`, refused by `reason`, with at
    /// most `max` clients shunned there; nothing if it already is.
    pub fn shun(&mut self, m: &Local, worker: usize, listen: SocketAddr, ip: IpAddr, reason: DropReason, max: usize) {
        let Some(l) = self.listeners.iter_mut().find(|l| l.listen == listen) else { return };
        let key = ShunKey::of(ip);
        let Err(at) = l.entries.binary_search_by_key(&key, |e| e.key) else { return };
        if l.entries.len() >= max.min(crate::sys::filter::MAX_SHUNNED) {
            m.bump(|c| c.shun_skipped.bump(ShunSkip::Full));
            crate::debug_every_second!(worker, listener = %listen, peer = %ip, max, "cannot shun: shun_max clients are shunned already");
            return;
        }
        l.entries.insert(at, Entry { key, ip });
        if let Err(e) = attach(l) {
            l.entries.remove(at);
            m.bump(|c| c.shun_skipped.bump(ShunSkip::Filter));
            crate::warn_every_second!(worker, listener = %listen, peer = %ip, error = %e, "cannot attach the shunning filter");
            return;
        }
        l.stale = false;
        let cause = if reason == DropReason::ClientConnLimit { ShunCause::ConnLimit } else { ShunCause::RateLimit };
        m.bump(|c| c.shuns.bump(cause));
        crate::warn_every_second!(worker, listener = %listen, peer = %ip, reason = reason.as_str(), shunned = l.entries.len(), "client shunned: its new connections are dropped in the kernel while its limit would refuse them");
    }

    /// Lets go of the clients the limits would admit again (and of every client of a listener
    /// whose configuration no longer shuns), re-attaching the filters that changed.
    pub fn expire(&mut self, m: &Local, worker: usize, cfg: &Config, tables: &Tables) {
        for l in &mut self.listeners {
            if l.entries.is_empty() && !l.stale {
                continue;
            }
            let before = l.entries.len();
            match (cfg.listener(l.listen), tables.get(l.listen)) {
                (Some(conf), Some(table)) if conf.admission.shun => {
                    l.entries.retain(|e| table.refuses(e.ip, &conf.admission).is_some());
                }
                _ => l.entries.clear(),
            }
            if l.entries.len() != before || l.stale {
                let attached = attach(l);
                l.stale = attached.is_err();
                if let Err(e) = attached {
                    // The old filter stays: its clients stay shunned until the next tick tries again.
                    m.bump(|c| c.shun_skipped.bump(ShunSkip::Filter));
                    crate::warn_every_second!(worker, listener = %l.listen, error = %e, "cannot update the shunning filter");
                }
            }
        }
    }
}

fn attach(l: &Listening) -> std::io::Result<()> {
    let keys: Vec<ShunKey> = l.entries.iter().map(|e| e.key).collect();
    l.socket.shun_sources(&keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuntimeOverrides;
    use crate::metrics::Registry;
    use std::os::fd::OwnedFd;
    use std::path::Path;

    /// A filter the kernel would not update (here: a descriptor that is no socket) stays marked
    /// stale and is tried again every tick until it takes: otherwise a client the limits let go
    /// of would stay dropped in the kernel.
    #[test]
    fn a_filter_that_failed_to_update_is_tried_again() {
        let reg = Registry::new(1);
        let m = Local::new(reg.slot(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = listener.local_addr().unwrap();
        let real = Socket::from(OwnedFd::from(listener));
        let mut shuns = Shuns::default();
        shuns.register(listen, real.clone());
        shuns.shun(&m, 0, listen, "127.0.0.9".parse().unwrap(), DropReason::ClientRateLimit, 8);
        assert_eq!((shuns.len(), shuns.pending()), (1, true));
        let not_a_socket = Socket::from(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        shuns.listeners[0].socket = not_a_socket;
        // A configuration without that listener: its clients are let go.
        let toml = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\nsni = [\"a.example\"]\naction = \"passthrough\"\nbackends = [\"127.0.0.1:9\"]\n";
        let cfg = Config::from_str(toml, Path::new("edge.toml"), &RuntimeOverrides::default()).unwrap();
        let tables = Tables::new(&[], 1);
        let failed = |m: &Local| m.get().shun_skipped.get(ShunSkip::Filter);
        shuns.expire(&m, 0, &cfg, &tables);
        assert_eq!((shuns.len(), shuns.pending(), failed(&m)), (0, true, 1));
        shuns.expire(&m, 0, &cfg, &tables);
        assert_eq!((shuns.pending(), failed(&m)), (true, 2), "tried again");
        shuns.listeners[0].socket = real;
        shuns.expire(&m, 0, &cfg, &tables);
        assert_eq!((shuns.pending(), failed(&m)), (false, 2), "updated once the kernel takes it");
    }
}
