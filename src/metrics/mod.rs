//! Per-worker counters: owned by one worker thread, updated without atomics, and published as a
//! plain copy for readers on other threads.
//!
//! ## Shape
//! - [`Counters`] is a plain `Copy` struct of `u64`s. Each worker owns one inside a [`Local`]
//!   and bumps fields through [`Local::bump`], which borrows a `RefCell` for a few nanoseconds;
//!   nothing is shared and nothing is atomic.
//! - [`Histograms`] are HDR histograms (1 ns to 60 s, 3 significant digits, created once per
//!   worker; recording is an index computation and an increment, saturating at the top). The
//!   worker keeps the values recorded since its last publish as they are (up to 4,096; beyond,
//!   in an *interval* set); publishing records them into the slot's cumulative set, so readers
//!   see everything since start.
//! - Every [`PUBLISH_EVERY`] and when the worker stops, the worker copies its counters into its
//!   [`Slot`] and adds its interval histograms to the slot's (each behind its own `Mutex`; the
//!   worker uses `try_lock`, so a slow reader never blocks it: a skipped interval is simply
//!   published on the next tick). Readers ([`Registry::snapshot`], [`Registry::histograms`])
//!   lock each slot briefly and merge, off the hot path.
//! - To add a counter: one line in the table of [`counters`] (a labelled counter takes a
//!   [`Label`] enum from [`labels`]); for a distribution add a [`Hist`] variant. The admin
//!   endpoint ([`crate::admin`]) renders whatever the table defines.
pub mod counters;
pub mod labels;

pub use counters::{ControlCounters, Counters, Family, Kind, Label, Tally, Value};
pub use labels::{
    AcceptCause, AdminRefusal, ApiResult, CheckResult, ConnectCause, Direction, DropReason, HandoffCause, OcspState,
    PipeMiss, QuicDatagramDrop, QuicFlowDrop, QuicFlowEnd, RelayCause, RelayKind, ReloadResult, ShunCause,
    TicketKeyState, TicketResult, UpgradeResult,
};

use crate::route::Match;
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a worker publishes its counters.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// A latency or size distribution recorded per connection. Latencies are recorded in
/// nanoseconds, sizes in bytes; `name()` is the metric's stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hist {
    /// Accept to a complete ClientHello.
    HelloWait,
    /// Routing a complete hello (parse, table lookup, PROXY header).
    RouteLookup,
    /// Connecting to the back end (all attempts, failures included).
    BackendConnect,
    /// The TLS handshake of a terminating route.
    TlsHandshake,
    /// Connected to the back end until its first byte reached the client.
    FirstByte,
    /// Accept to close, every connection (dropped ones included).
    Lifetime,
    /// Bytes of the complete ClientHello (as read: records and all).
    HelloSize,
    /// A QUIC flow's first Initial to routed (every Initial of its hello, decryption, parse,
    /// lookup, the back-end socket).
    QuicRouting,
}

/// What a [`Hist`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Recorded in nanoseconds, exposed in seconds.
    Seconds,
    Bytes,
}

impl Hist {
    pub const ALL: [Self; 8] = [
        Self::HelloWait,
        Self::RouteLookup,
        Self::BackendConnect,
        Self::TlsHandshake,
        Self::FirstByte,
        Self::Lifetime,
        Self::HelloSize,
        Self::QuicRouting,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The metric stem: `sni_dispatch_{name}_{unit}`.
    pub fn name(self) -> &'static str {
        match self {
            Self::HelloWait => "client_hello_wait",
            Self::RouteLookup => "route_lookup",
            Self::BackendConnect => "backend_connect",
            Self::TlsHandshake => "tls_handshake",
            Self::FirstByte => "backend_first_byte",
            Self::Lifetime => "connection_lifetime",
            Self::HelloSize => "client_hello_size",
            Self::QuicRouting => "quic_initial_to_routed",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            Self::HelloSize => Unit::Bytes,
            _ => Unit::Seconds,
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Self::HelloWait => "Accept to a complete ClientHello.",
            Self::RouteLookup => "Routing a complete ClientHello (parse, lookup, PROXY header).",
            Self::BackendConnect => "Connecting to a back end, failed attempts included.",
            Self::TlsHandshake => "TLS handshakes of terminating routes (completed ones).",
            Self::FirstByte => "Back end connected to its first byte relayed to the client.",
            Self::Lifetime => "Accept to close, of every connection.",
            Self::HelloSize => "Size of complete ClientHellos as read.",
            Self::QuicRouting => {
                "A QUIC flow's first Initial to routed (all its hello's Initials, decrypt, parse, lookup)."
            }
        }
    }

    #[allow(clippy::expect_used)]
    fn new_histogram(self) -> Histogram<u64> {
        let high = match self.unit() {
            Unit::Seconds => HIGHEST_NS,
            Unit::Bytes => 1 << 21,
        };
        Histogram::new_with_bounds(1, high, 3).expect("constant histogram bounds are valid")
    }
}

/// The largest latency a histogram tells apart (larger values count as this).
pub const HIGHEST_NS: u64 = 60_000_000_000;

/// One histogram per [`Hist`], with exact sums (for Prometheus `_sum`).
#[derive(Debug, Clone)]
pub struct Histograms {
    h: [Histogram<u64>; Hist::COUNT],
    sum: [u64; Hist::COUNT],
}

impl Default for Histograms {
    fn default() -> Self {
        Self { h: std::array::from_fn(|i| Hist::ALL[i].new_histogram()), sum: [0; Hist::COUNT] }
    }
}

impl Histograms {
    /// Records `v` (ns or bytes); values above the range count as its top.
    #[inline]
    pub fn record(&mut self, k: Hist, v: u64) {
        let i = k as usize;
        self.h[i].saturating_record(v);
        self.sum[i] = self.sum[i].saturating_add(v);
    }

    pub fn get(&self, k: Hist) -> &Histogram<u64> {
        &self.h[k as usize]
    }

    /// Exact sum of the recorded values (ns or bytes).
    pub fn sum(&self, k: Hist) -> u64 {
        self.sum[k as usize]
    }

    pub fn count(&self, k: Hist) -> u64 {
        self.h[k as usize].len()
    }

    /// The value at quantile `q` (0..=1): ns or bytes; 0 when empty.
    pub fn quantile(&self, k: Hist, q: f64) -> u64 {
        let h = &self.h[k as usize];
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Self) {
        for i in 0..Hist::COUNT {
            if !other.h[i].is_empty() {
                // Same bounds on both sides: cannot fail.
                let _ = self.h[i].add(&other.h[i]);
            }
            self.sum[i] = self.sum[i].saturating_add(other.sum[i]);
        }
    }

    fn clear(&mut self) {
        for (h, s) in self.h.iter_mut().zip(self.sum.iter_mut()) {
            if !h.is_empty() {
                h.reset();
            }
            *s = 0;
        }
    }
}

/// What a worker publishes: a copy of its counters and its cumulative histograms, each behind
/// its own lock (only readers ever contend with the worker's `try_lock`).
#[derive(Debug, Default)]
pub struct Published {
    counters: Mutex<Counters>,
    hists: Mutex<Histograms>,
}

/// A worker's published copy.
pub type Slot = Arc<Published>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Values a worker keeps as recorded between two publishes, at most (beyond, they go into
/// interval histograms).
const VALUES_MAX: usize = 4096;

/// The worker-owned, thread-local counters and histograms.
#[derive(Debug)]
pub struct Local {
    counters: RefCell<Counters>,
    /// Recorded since the last successful publish, as recorded: publishing records them into
    /// the slot's histograms, a few instructions each. (Adding an interval histogram into the
    /// slot's and clearing it walks and zeroes all 28,000 buckets of each: 1.4 MB through
    /// the worker's cache ten times a second, 13 % of a short connection's instructions at
    /// 5,000 connections per second.)
    values: RefCell<Vec<(Hist, u64)>>,
    /// Recorded since the last successful publish beyond [`VALUES_MAX`] values (made at the
    /// first overflow).
    interval: RefCell<Option<Box<Histograms>>>,
    overflowed: Cell<bool>,
    pending: Cell<bool>,
    slot: Slot,
}

impl Local {
    pub fn new(slot: Slot) -> Self {
        Self {
            counters: RefCell::new(Counters::default()),
            values: RefCell::new(Vec::new()),
            interval: RefCell::new(None),
            overflowed: Cell::new(false),
            pending: Cell::new(false),
            slot,
        }
    }

    /// Records one value (ns or bytes) of `k`.
    #[inline]
    pub fn record(&self, k: Hist, v: u64) {
        let mut values = self.values.borrow_mut();
        if values.len() == VALUES_MAX {
            // Full before the next publish (a busy worker records more than VALUES_MAX in a
            // tenth of a second): into the slot now, a few instructions a value, unless a reader
            // holds it. The interval histograms are the rare way out: adding and clearing them
            // walks all their buckets.
            if let Ok(mut slot) = self.slot.hists.try_lock() {
                for (k, v) in values.drain(..) {
                    slot.record(k, v);
                }
            }
        }
        if values.len() < VALUES_MAX {
            values.push((k, v));
        } else {
            self.interval.borrow_mut().get_or_insert_with(Box::default).record(k, v);
            self.overflowed.set(true);
        }
        self.pending.set(true);
    }

    /// Adds what was recorded since the last publish into `into` and forgets it.
    fn flush_into(&self, into: &mut Histograms) {
        for (k, v) in self.values.borrow_mut().drain(..) {
            into.record(k, v);
        }
        if self.overflowed.get() {
            if let Some(interval) = self.interval.borrow_mut().as_mut() {
                into.merge(interval);
                interval.clear();
            }
            self.overflowed.set(false);
        }
        self.pending.set(false);
    }

    /// Records a duration of `k` in nanoseconds (saturating).
    #[inline]
    pub fn record_duration(&self, k: Hist, d: Duration) {
        self.record(k, u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Applies `f` to the counters.
    #[inline]
    pub fn bump(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters.borrow_mut());
    }

    #[inline]
    pub fn dropped(&self, r: DropReason) {
        self.bump(|c| c.dropped.bump(r));
    }

    #[inline]
    pub fn routed(&self, m: Match) {
        self.bump(|c| c.routed.bump(m));
    }

    pub fn get(&self) -> Counters {
        *self.counters.borrow()
    }

    /// Copies the counters into the published slot and adds the interval histograms to the
    /// slot's; each part is skipped (and published next time) if a reader holds it right now.
    pub fn publish(&self) {
        if let Ok(mut slot) = self.slot.counters.try_lock() {
            *slot = self.get();
        }
        if self.pending.get() {
            if let Ok(mut slot) = self.slot.hists.try_lock() {
                self.flush_into(&mut slot);
            }
        }
    }

    /// Like [`publish`](Self::publish) but waits for the locks (when the worker stops).
    pub fn publish_final(&self) {
        *lock(&self.slot.counters) = self.get();
        if self.pending.get() {
            self.flush_into(&mut lock(&self.slot.hists));
        }
    }
}

/// Every worker's slot, for readers (admin endpoint, tests, shutdown log), and one for what
/// the process's control threads count (a binary upgrade's takers): merged with the workers',
/// never shown as a worker.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    slots: Vec<Slot>,
    control: Arc<Mutex<Control>>,
    process: Slot,
}

/// The control plane's state for the readers: its counters, when the configuration last
/// changed and what the last reload cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Control {
    pub counters: ControlCounters,
    /// Seconds since the Unix epoch of the last change of the configuration.
    pub changed_at: f64,
    /// The last reload or API change: seconds spent parsing, building and swapping.
    pub last: [f64; 3],
}

/// The phases of [`Control::last`], as the `phase` label.
pub const PHASES: [&str; 3] = ["parse", "build", "swap"];

impl Registry {
    /// Creates `n` empty slots.
    pub fn new(n: usize) -> Self {
        Self { slots: (0..n).map(|_| Slot::default()).collect(), control: Arc::default(), process: Slot::default() }
    }

    /// Updates the control plane's state (control and admin threads only).
    pub fn control(&self, f: impl FnOnce(&mut Control)) {
        f(&mut lock(&self.control));
    }

    /// A copy of the control plane's state.
    pub fn control_snapshot(&self) -> Control {
        *lock(&self.control)
    }

    /// Applies `f` to the process's own counters (from a control thread, never a worker: it
    /// takes a lock).
    pub fn bump_process(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut lock(&self.process.counters));
    }

    pub fn slot(&self, i: usize) -> Slot {
        Arc::clone(&self.slots[i])
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The last published counters of each worker (at most [`PUBLISH_EVERY`] old).
    pub fn snapshot(&self) -> Vec<Counters> {
        self.slots.iter().map(|s| *lock(&s.counters)).collect()
    }

    /// A copy of each worker's published histograms (cumulative since start).
    pub fn histograms(&self) -> Vec<Histograms> {
        self.slots.iter().map(|s| lock(&s.hists).clone()).collect()
    }

    /// All workers' histograms merged.
    pub fn merged_histograms(&self) -> Histograms {
        let mut total = Histograms::default();
        for s in &self.slots {
            total.merge(&lock(&s.hists));
        }
        total
    }

    /// What the process's control threads counted ([`Registry::bump_process`]): the start of
    /// every merged view.
    pub fn process(&self) -> Counters {
        *lock(&self.process.counters)
    }

    /// All workers merged, with the process's own counters.
    pub fn merged(&self) -> Counters {
        let mut total = self.process();
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
    fn publish_and_merge() {
        let reg = Registry::new(2);
        let a = Local::new(reg.slot(0));
        let b = Local::new(reg.slot(1));
        a.dropped(DropReason::NotTls);
        a.routed(Match::ExactSni);
        b.routed(Match::ExactSni);
        b.bump(|c| c.bytes.add(Direction::ClientToBackend, 10));
        a.publish();
        b.publish_final();
        let m = reg.merged();
        assert_eq!(m.dropped_by(DropReason::NotTls), 1);
        assert_eq!(m.routed_by(Match::ExactSni), 2);
        assert_eq!(m.bytes.get(Direction::ClientToBackend), 10);
    }

    /// Past the values a worker keeps between publishes, they go into the slot at once, or,
    /// while a reader holds the slot, into interval histograms: nothing is lost, counts and sums
    /// stay exact, and the interval histograms (whose adding and clearing walks every bucket)
    /// are made only when the slot was held.
    #[test]
    fn values_beyond_the_buffer_are_counted_too() {
        let reg = Registry::new(1);
        let a = Local::new(reg.slot(0));
        let n = VALUES_MAX as u64 + 10;
        for i in 0..n {
            a.record(Hist::HelloSize, 100 + i % 7);
        }
        assert!(!a.overflowed.get() && a.interval.borrow().is_none(), "the slot was free");
        assert_eq!(a.values.borrow().len(), 10);
        {
            let slot = reg.slot(0);
            let _reader = lock(&slot.hists);
            for i in 0..n {
                a.record(Hist::HelloSize, 100 + i % 7);
            }
        }
        assert!(a.overflowed.get());
        a.publish();
        a.record(Hist::HelloSize, 5);
        a.publish_final();
        let h = reg.merged_histograms();
        assert_eq!(h.count(Hist::HelloSize), 2 * n + 1);
        assert_eq!(h.sum(Hist::HelloSize), 2 * (0..n).map(|i| 100 + i % 7).sum::<u64>() + 5);
        assert!(a.values.borrow().is_empty() && !a.overflowed.get());
    }

    #[test]
    fn histograms_publish_cumulatively_and_merge() {
        let reg = Registry::new(2);
        let a = Local::new(reg.slot(0));
        let b = Local::new(reg.slot(1));
        a.record_duration(Hist::RouteLookup, Duration::from_nanos(500));
        a.publish();
        a.record_duration(Hist::RouteLookup, Duration::from_nanos(1500));
        a.publish();
        b.record(Hist::HelloSize, 517);
        // Beyond the range: saturates instead of failing.
        b.record_duration(Hist::Lifetime, Duration::from_secs(3600));
        b.publish_final();
        let per = reg.histograms();
        assert_eq!(per[0].count(Hist::RouteLookup), 2);
        assert_eq!(per[0].sum(Hist::RouteLookup), 2000);
        assert_eq!(per[1].count(Hist::RouteLookup), 0);
        let m = reg.merged_histograms();
        assert_eq!(m.count(Hist::RouteLookup), 2);
        assert_eq!(m.count(Hist::HelloSize), 1);
        assert_eq!(m.count(Hist::Lifetime), 1);
        assert!(m.quantile(Hist::Lifetime, 0.5) >= HIGHEST_NS / 2);
        let p50 = m.quantile(Hist::RouteLookup, 0.5);
        assert!((499..=501).contains(&p50), "{p50}");
        assert_eq!(m.quantile(Hist::TlsHandshake, 0.99), 0);
    }

    #[test]
    fn hist_names_are_unique_and_indexed() {
        let mut seen = std::collections::HashSet::new();
        for (i, h) in Hist::ALL.iter().enumerate() {
            assert!(seen.insert(h.name()));
            assert_eq!(*h as usize, i);
        }
    }
}
