//! Per-worker counters: owned by one worker thread, updated without atomics, and published as a
//! plain copy for readers on other threads.
//!
//! ## Shape
//! - [`Counters`] is a plain `Copy` struct of `u64`s. Each worker owns one inside a [`Local`]
//!   and bumps fields through [`Local::bump`], which borrows a `RefCell` for a few nanoseconds;
//!   nothing is shared and nothing is atomic.
//! - Every [`PUBLISH_EVERY`] and when the worker stops, the worker copies its counters into its
//!   [`Slot`] (an `Arc<Mutex<Counters>>`; the worker uses `try_lock` so a slow reader never blocks
//!   it). Readers ([`Registry::snapshot`]) lock each slot briefly, off the hot path.
//! - To add a metric: add a field to [`Counters`] (and to [`Counters::merge`]); for labelled
//!   counters use a fixed array indexed by an enum with `ALL` and `as_str()`, like
//!   [`DropReason`]. Histograms (HDR) can be added the same way: a worker-local value published
//!   as a copy, merged by the reader.
use crate::route::Match;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a worker publishes its counters.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Why a connection was closed before (or instead of) being relayed. `as_str()` is the counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The first bytes are not a TLS handshake record (garbage).
    NotTls,
    /// Plain HTTP on the TLS port.
    Http,
    /// An SSL 2.0 ClientHello.
    SslV2,
    /// A hello offering SSL 3.0 or older only.
    Ssl3OrOlder,
    /// The best version offered is below the route's `min_tls`.
    BelowMinTls,
    /// The ClientHello exceeds `max_hello_bytes`.
    Oversize,
    /// The ClientHello is malformed (bad lengths, not a ClientHello, duplicate extensions, ...).
    Malformed,
    /// The whole ClientHello did not arrive within `hello_timeout_ms`.
    HelloTimeout,
    /// The client closed or reset before its ClientHello was complete.
    ClientClosed,
    /// No SNI on a shared address, and no `fallback.no_sni`.
    NoSni,
    /// SNI names no route, and no `fallback.unknown_sni`.
    UnknownSni,
    /// Every back end refused or timed out.
    BackendsDown,
    /// A terminating route's TLS handshake failed (bad or incompatible client; an alert was sent).
    TlsHandshake,
    /// A terminating route's TLS handshake did not finish within `hello_timeout_ms`.
    TlsTimeout,
    /// The PROXY header or ClientHello could not be written to the back end.
    BackendWrite,
}

impl DropReason {
    pub const ALL: [Self; 15] = [
        Self::NotTls,
        Self::Http,
        Self::SslV2,
        Self::Ssl3OrOlder,
        Self::BelowMinTls,
        Self::Oversize,
        Self::Malformed,
        Self::HelloTimeout,
        Self::ClientClosed,
        Self::NoSni,
        Self::UnknownSni,
        Self::BackendsDown,
        Self::TlsHandshake,
        Self::TlsTimeout,
        Self::BackendWrite,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotTls => "not_tls",
            Self::Http => "http",
            Self::SslV2 => "sslv2",
            Self::Ssl3OrOlder => "ssl3_or_older",
            Self::BelowMinTls => "below_min_tls",
            Self::Oversize => "oversize",
            Self::Malformed => "malformed",
            Self::HelloTimeout => "hello_timeout",
            Self::ClientClosed => "client_closed",
            Self::NoSni => "no_sni",
            Self::UnknownSni => "unknown_sni",
            Self::BackendsDown => "backends_down",
            Self::TlsHandshake => "tls_handshake",
            Self::TlsTimeout => "tls_timeout",
            Self::BackendWrite => "backend_write",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl From<crate::hello::Reject> for DropReason {
    fn from(r: crate::hello::Reject) -> Self {
        use crate::hello::Reject;
        match r {
            Reject::NotTls { http: false } => Self::NotTls,
            Reject::NotTls { http: true } => Self::Http,
            Reject::SslV2 => Self::SslV2,
            Reject::Ssl3OrOlder => Self::Ssl3OrOlder,
            Reject::TooLarge => Self::Oversize,
            _ => Self::Malformed,
        }
    }
}

impl From<crate::route::Miss> for DropReason {
    fn from(m: crate::route::Miss) -> Self {
        match m {
            crate::route::Miss::NoSni => Self::NoSni,
            crate::route::Miss::UnknownSni => Self::UnknownSni,
        }
    }
}

/// How a relay moved its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    Splice,
    Buffered,
}

/// One worker's counters (or several merged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub accepted: u64,
    /// Connections open now (a gauge; merged by summing).
    pub open: u64,
    /// Routed connections by [`Match`], indexed like `Match::ALL`.
    pub routed: [u64; 5],
    /// Dropped connections by [`DropReason`], indexed like `DropReason::ALL`.
    pub dropped: [u64; DropReason::COUNT],
    /// Back-end connection attempts that failed (refused, timed out); the next back end is tried.
    pub backend_connect_failures: u64,
    pub bytes_client_to_backend: u64,
    pub bytes_backend_to_client: u64,
    /// Relays that spliced through pipes / copied through buffers.
    pub relays_splice: u64,
    pub relays_buffered: u64,
    /// Completed TLS handshakes on terminating routes, and how many of them resumed a session.
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    /// Connections closed by `idle_timeout_ms`.
    pub idle_timeouts: u64,
    /// Relays ended by an error (reset, broken pipe) rather than two clean shutdowns.
    pub relay_errors: u64,
    /// accept() failures, and how many of them were EMFILE/ENFILE back-offs.
    pub accept_errors: u64,
    pub accept_fd_exhausted: u64,
}

impl Counters {
    pub fn routed_by(&self, m: Match) -> u64 {
        self.routed[match_index(m)]
    }

    pub fn dropped_by(&self, r: DropReason) -> u64 {
        self.dropped[r.index()]
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Adds `other` into `self` (for the merged view).
    pub fn merge(&mut self, other: &Counters) {
        self.accepted += other.accepted;
        self.open += other.open;
        for (a, b) in self.routed.iter_mut().zip(other.routed) {
            *a += b;
        }
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
        self.backend_connect_failures += other.backend_connect_failures;
        self.bytes_client_to_backend += other.bytes_client_to_backend;
        self.bytes_backend_to_client += other.bytes_backend_to_client;
        self.relays_splice += other.relays_splice;
        self.relays_buffered += other.relays_buffered;
        self.tls_handshakes += other.tls_handshakes;
        self.tls_resumed += other.tls_resumed;
        self.idle_timeouts += other.idle_timeouts;
        self.relay_errors += other.relay_errors;
        self.accept_errors += other.accept_errors;
        self.accept_fd_exhausted += other.accept_fd_exhausted;
    }
}

fn match_index(m: Match) -> usize {
    Match::ALL.iter().position(|x| *x == m).unwrap_or(0)
}

/// A worker's published copy.
pub type Slot = Arc<Mutex<Counters>>;

/// The worker-owned, thread-local counters.
#[derive(Debug)]
pub struct Local {
    counters: RefCell<Counters>,
    slot: Slot,
}

impl Local {
    pub fn new(slot: Slot) -> Self {
        Self {
            counters: RefCell::new(Counters::default()),
            slot,
        }
    }

    /// Applies `f` to the counters.
    #[inline]
    pub fn bump(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters.borrow_mut());
    }

    #[inline]
    pub fn dropped(&self, r: DropReason) {
        self.bump(|c| c.dropped[r.index()] += 1);
    }

    #[inline]
    pub fn routed(&self, m: Match) {
        self.bump(|c| c.routed[match_index(m)] += 1);
    }

    pub fn get(&self) -> Counters {
        *self.counters.borrow()
    }

    /// Copies the counters into the published slot; skipped if a reader holds it right now.
    pub fn publish(&self) {
        if let Ok(mut slot) = self.slot.try_lock() {
            *slot = self.get();
        }
    }

    /// Like [`publish`](Self::publish) but waits for the lock (used once, when the worker stops).
    pub fn publish_final(&self) {
        let c = self.get();
        match self.slot.lock() {
            Ok(mut slot) => *slot = c,
            Err(poisoned) => *poisoned.into_inner() = c,
        }
    }
}

/// Every worker's slot, for readers (admin endpoint, tests, shutdown log).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    slots: Vec<Slot>,
}

impl Registry {
    /// Creates `n` empty slots.
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
        }
    }

    pub fn slot(&self, i: usize) -> Slot {
        Arc::clone(&self.slots[i])
    }

    /// The last published counters of each worker (at most [`PUBLISH_EVERY`] old).
    pub fn snapshot(&self) -> Vec<Counters> {
        self.slots
            .iter()
            .map(|s| match s.lock() {
                Ok(c) => *c,
                Err(poisoned) => *poisoned.into_inner(),
            })
            .collect()
    }

    /// All workers merged.
    pub fn merged(&self) -> Counters {
        let mut total = Counters::default();
        for c in self.snapshot() {
            total.merge(&c);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indexed() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert!(seen.insert(r.as_str()));
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn publish_and_merge() {
        let reg = Registry::new(2);
        let a = Local::new(reg.slot(0));
        let b = Local::new(reg.slot(1));
        a.dropped(DropReason::NotTls);
        a.routed(Match::ExactSni);
        b.routed(Match::ExactSni);
        b.bump(|c| c.bytes_client_to_backend += 10);
        a.publish();
        b.publish_final();
        let m = reg.merged();
        assert_eq!(m.dropped_by(DropReason::NotTls), 1);
        assert_eq!(m.routed_by(Match::ExactSni), 2);
        assert_eq!(m.bytes_client_to_backend, 10);
    }
}
