//! The state behind the routes' back ends, built from a routing table: one [`Shared`] per
//! back-end target (its health verdict, published by the health checker, and one [`Slot`] per
//! worker), one [`Pool`] per distinct list of back ends (the balancer's per-worker cursors), and
//! per-route statistics ([`RouteStats`], allocated on a route's first connection).
//!
//! Nothing here is locked or updated with an atomic read-modify-write on the connection path:
//! each worker writes only its own slots (a relaxed load and a store, since no other thread
//! writes them), the health checker alone writes the verdicts, and readers (the admin endpoint)
//! load. A slot is 64-byte aligned, so workers never share a cache line they write.

use crate::metrics::{CheckResult, ConnectCause, DropReason};
use crate::route::{self, Backend, Balance, Eject, HealthCheck, RouteId, Target, Upstream};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Adds `n` to a counter that only the calling thread writes (a load and a store, no RMW).
#[inline]
pub(crate) fn add(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

#[inline]
fn sub(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).saturating_sub(n), Relaxed);
}

/// Milliseconds since the first call (a process-wide monotonic epoch), never 0.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
}

/// Upper bounds of the latency buckets, in seconds (the Prometheus `le` values); one more
/// bucket (`+Inf`) holds the rest.
pub const BUCKETS_S: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
const BUCKETS_NS: [u64; 19] = {
    let mut out = [0u64; 19];
    let mut i = 0;
    while i < 19 {
        out[i] = (BUCKETS_S[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A latency histogram with fixed buckets, written by one thread.
#[derive(Debug, Default)]
pub struct AtomicHist {
    buckets: [AtomicU64; BUCKETS_S.len() + 1],
    sum_ns: AtomicU64,
}

impl AtomicHist {
    #[inline]
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_NS.iter().position(|&b| ns <= b).unwrap_or(BUCKETS_NS.len());
        add(&self.buckets[i], 1);
        add(&self.sum_ns, ns);
    }

    /// Adds this histogram into `into` (a reader's merge).
    pub fn merge_into(&self, into: &mut Hist) {
        for (a, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *a += b.load(Relaxed);
        }
        into.sum_ns += self.sum_ns.load(Relaxed);
    }
}

/// A merged copy of [`AtomicHist`]s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    /// Per bucket (not cumulative), the last one `+Inf`.
    pub buckets: [u64; BUCKETS_S.len() + 1],
    pub sum_ns: u64,
}

impl Hist {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The value at quantile `q` in seconds, interpolated linearly inside its bucket (as
    /// Prometheus's `histogram_quantile`); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * n as f64;
        let mut seen = 0u64;
        for (i, &c) in self.buckets.iter().enumerate() {
            if c > 0 && (seen + c) as f64 >= rank {
                let Some(&hi) = BUCKETS_S.get(i) else { return BUCKETS_S.last().copied() };
                let lo = if i == 0 { 0.0 } else { BUCKETS_S[i - 1] };
                let into = (rank - seen as f64) / c as f64;
                return Some(lo + (hi - lo) * into.clamp(0.0, 1.0));
            }
            seen += c;
        }
        BUCKETS_S.last().copied()
    }
}

/// What one worker knows of one back end (written by that worker only).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Slot {
    /// This worker's connections open to it now (least connections counts these).
    pub(crate) active: AtomicU64,
    /// Failed connects in a row.
    fail_streak: AtomicU32,
    /// Ejections in a row (the back-off doubles with each).
    ejections: AtomicU32,
    /// Set aside until this [`now_ms`] (0: not ejected).
    ejected_until: AtomicU64,
    /// Connections made (or handed off) to it.
    connections: AtomicU64,
    failures: [AtomicU64; ConnectCause::COUNT],
    ejected_total: AtomicU64,
    connect: AtomicHist,
}

/// One back end, shared by every route that names it and by every worker.
#[derive(Debug)]
pub struct Shared {
    pub target: Target,
    /// Its active health check (the same for every route that names it).
    pub health: Option<HealthCheck>,
    /// The health checker's verdict; true without checks.
    up: AtomicBool,
    /// Check results (written by the health checker alone).
    checks: [AtomicU64; CheckResult::COUNT],
    /// The last check's result (its index), `u8::MAX` before the first.
    last_check: AtomicU8,
    /// Times it went down (health checks).
    downs: AtomicU64,
    slots: Box<[Slot]>,
    /// The target's name hashed: the rendezvous hashes' seed, the same in every process.
    pub(crate) seed: u64,
}

/// A 64-bit FNV-1a of `bytes` (stable across processes and builds), finished with a mix.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser: a good 64-bit mix.
#[inline]
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Shared {
    pub(crate) fn new(target: Target, health: Option<HealthCheck>, workers: usize) -> Self {
        let seed = stable_hash(target.to_string().as_bytes());
        Self {
            target,
            health,
            up: AtomicBool::new(true),
            checks: Default::default(),
            last_check: AtomicU8::new(u8::MAX),
            downs: AtomicU64::new(0),
            slots: (0..workers.max(1)).map(|_| Slot::default()).collect(),
            seed,
        }
    }

    /// The slot of `worker` (workers beyond the count the pools were built for share slots,
    /// which only blurs their counts).
    #[inline]
    pub(crate) fn slot(&self, worker: usize) -> &Slot {
        &self.slots[worker % self.slots.len()]
    }

    /// The health checker's verdict.
    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Publishes a verdict (the health checker; tests).
    pub fn set_up(&self, up: bool) {
        if self.up.swap(up, Relaxed) && !up {
            add(&self.downs, 1);
        }
    }

    /// Counts one check (the health checker alone calls this).
    pub(crate) fn checked(&self, r: CheckResult) {
        add(&self.checks[r as usize], 1);
        self.last_check.store(r as u8, Relaxed);
    }

    /// Whether `worker` has it set aside at `now` (a [`now_ms`]).
    #[inline]
    pub(crate) fn ejected(&self, worker: usize, now: u64) -> bool {
        self.ejected_with(worker, || now)
    }

    /// [`Shared::ejected`], reading the clock (`now`) only when it was set aside at all.
    #[inline]
    pub(crate) fn ejected_with(&self, worker: usize, now: impl FnOnce() -> u64) -> bool {
        let until = self.slot(worker).ejected_until.load(Relaxed);
        until != 0 && now() < until
    }

    /// A successful connect by `worker`, which took `took`.
    pub(crate) fn connected(&self, worker: usize, took: Option<Duration>) {
        let s = self.slot(worker);
        add(&s.connections, 1);
        if s.fail_streak.load(Relaxed) != 0 {
            s.fail_streak.store(0, Relaxed);
            s.ejections.store(0, Relaxed);
            s.ejected_until.store(0, Relaxed);
        }
        if let Some(d) = took {
            s.connect.record(d);
        }
    }

    /// A failed connect by `worker`; whether it was ejected by it.
    pub(crate) fn failed(&self, worker: usize, cause: ConnectCause, eject: &Eject) -> bool {
        let s = self.slot(worker);
        add(&s.failures[cause as usize], 1);
        // A local shortage says nothing about the back end.
        if cause == ConnectCause::LocalResources || eject.after == 0 {
            return false;
        }
        // Attempts that were in flight when it was set aside do not extend the back-off.
        let now = now_ms();
        let until = s.ejected_until.load(Relaxed);
        if until != 0 && now < until {
            return false;
        }
        let streak = s.fail_streak.load(Relaxed).saturating_add(1);
        s.fail_streak.store(streak, Relaxed);
        if streak < eject.after {
            return false;
        }
        let n = s.ejections.load(Relaxed);
        s.ejections.store(n.saturating_add(1), Relaxed);
        let backoff = eject.base_ms.saturating_mul(1u64 << n.min(20)).min(eject.max_ms.max(eject.base_ms));
        s.ejected_until.store(now.saturating_add(backoff), Relaxed);
        // The next attempt after the back-off is a trial: one more failure ejects it again.
        s.fail_streak.store(eject.after.saturating_sub(1), Relaxed);
        add(&s.ejected_total, 1);
        true
    }

    /// Counts a connection open to it (least connections) until the guard drops.
    pub(crate) fn open(&self, worker: usize) -> Active<'_> {
        self.hold(worker);
        Active { slot: self.slot(worker) }
    }

    /// Counts a connection open to it until [`Shared::release`] by the same worker: for a holder
    /// that cannot keep an [`Active`] guard beside the pools it borrows from (a QUIC flow keeps
    /// its route's pools and releases on close).
    pub(crate) fn hold(&self, worker: usize) {
        add(&self.slot(worker).active, 1);
    }

    /// Ends one [`Shared::hold`].
    pub(crate) fn release(&self, worker: usize) {
        sub(&self.slot(worker).active, 1);
    }

    /// Its figures, merged over workers.
    pub fn snapshot(&self) -> BackendSnapshot {
        let now = now_ms();
        let mut s = BackendSnapshot {
            target: self.target.to_string(),
            up: self.is_up(),
            checked: self.health.is_some(),
            last_check: CheckResult::ALL.get(usize::from(self.last_check.load(Relaxed))).copied(),
            checks: CheckResult::ALL.iter().map(|r| (*r, self.checks[*r as usize].load(Relaxed))).collect(),
            downs: self.downs.load(Relaxed),
            ..BackendSnapshot::default()
        };
        for (w, slot) in self.slots.iter().enumerate() {
            s.active += slot.active.load(Relaxed);
            s.connections += slot.connections.load(Relaxed);
            s.ejections += slot.ejected_total.load(Relaxed);
            if self.ejected(w, now) {
                s.ejected_by += 1;
            }
            for (total, f) in s.failures.iter_mut().zip(&slot.failures) {
                *total += f.load(Relaxed);
            }
            slot.connect.merge_into(&mut s.connect);
        }
        s
    }
}

/// A connection counted open to a back end; uncounted when dropped.
#[derive(Debug)]
pub struct Active<'a> {
    slot: &'a Slot,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        sub(&self.slot.active, 1);
    }
}

/// A back end's figures merged over workers, for `/metrics`, `/stats` and `/status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendSnapshot {
    pub target: String,
    /// The health checker's verdict (true without checks).
    pub up: bool,
    /// Whether it has an active health check.
    pub checked: bool,
    pub last_check: Option<CheckResult>,
    pub checks: Vec<(CheckResult, u64)>,
    pub downs: u64,
    /// Connections open to it now.
    pub active: u64,
    pub connections: u64,
    /// Failed connects by cause (indexed like `ConnectCause::ALL`).
    pub failures: [u64; ConnectCause::COUNT],
    pub ejections: u64,
    /// Workers that have it set aside right now.
    pub ejected_by: u64,
    pub connect: Hist,
}

impl BackendSnapshot {
    /// `up`, `down` (health checks) or `ejected` (up, but set aside by some worker).
    pub fn state(&self) -> &'static str {
        match (self.up, self.ejected_by) {
            (false, _) => "down",
            (true, 0) => "up",
            (true, _) => "ejected",
        }
    }
}

/// One worker's counts for one route.
#[derive(Debug)]
#[repr(align(64))]
struct RouteSlot {
    connections: AtomicU64,
    open: AtomicU64,
    dropped: [AtomicU64; DropReason::COUNT],
    connect: AtomicHist,
}

// By hand: `Default` is derived for arrays of at most 32 elements, and there are more drop reasons.
impl Default for RouteSlot {
    fn default() -> Self {
        Self {
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
            dropped: std::array::from_fn(|_| AtomicU64::new(0)),
            connect: AtomicHist::default(),
        }
    }
}

/// A route's figures (connections routed to it, open now, drops by reason, back-end connect
/// latency), one slot per worker.
#[derive(Debug)]
pub struct RouteStats {
    slots: Box<[RouteSlot]>,
}

impl RouteStats {
    fn new(workers: usize) -> Self {
        Self { slots: (0..workers.max(1)).map(|_| RouteSlot::default()).collect() }
    }

    #[inline]
    fn slot(&self, worker: usize) -> &RouteSlot {
        &self.slots[worker % self.slots.len()]
    }

    /// A connection routed here by `worker` (open until [`RouteStats::closed`]).
    #[inline]
    pub fn routed(&self, worker: usize) {
        let s = self.slot(worker);
        add(&s.connections, 1);
        add(&s.open, 1);
    }

    /// Its back end connected (or handed off) after `took`.
    #[inline]
    pub fn connected(&self, worker: usize, took: Duration) {
        self.slot(worker).connect.record(took);
    }

    /// A connection routed here closed; `dropped` when it was dropped (and why).
    #[inline]
    pub fn closed(&self, worker: usize, dropped: Option<DropReason>) {
        let s = self.slot(worker);
        sub(&s.open, 1);
        if let Some(r) = dropped {
            add(&s.dropped[r as usize], 1);
        }
    }

    pub fn snapshot(&self) -> RouteSnapshot {
        let mut out = RouteSnapshot::default();
        for s in self.slots.iter() {
            out.connections += s.connections.load(Relaxed);
            out.open += s.open.load(Relaxed);
            for (t, d) in out.dropped.iter_mut().zip(&s.dropped) {
                *t += d.load(Relaxed);
            }
            s.connect.merge_into(&mut out.connect);
        }
        out
    }
}

/// A route's figures merged over workers.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSnapshot {
    pub connections: u64,
    pub open: u64,
    /// Drops by reason (indexed like `DropReason::ALL`).
    pub dropped: [u64; DropReason::COUNT],
    pub connect: Hist,
}

impl Default for RouteSnapshot {
    fn default() -> Self {
        Self { connections: 0, open: 0, dropped: [0; DropReason::COUNT], connect: Hist::default() }
    }
}

/// A back end of a pool.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// Index into [`Pools::backends`].
    pub(crate) id: u32,
    pub(crate) weight: u32,
    pub(crate) backup: bool,
}

/// The balancer's per-worker state of a pool (written by its worker only).
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Cursor {
    /// Position in the round-robin schedule; also the rotating start of least connections.
    pub(crate) pos: AtomicU64,
    /// xorshift64 state of random_two.
    pub(crate) rng: AtomicU64,
}

/// One distinct list of back ends with its balancing: shared by the routes that name the same.
#[derive(Debug)]
pub struct Pool {
    pub(crate) members: Vec<Member>,
    pub(crate) balance: Balance,
    pub(crate) eject: Eject,
    /// Weighted round-robin order of the primaries (indices into `members`), smooth as nginx's.
    pub(crate) schedule: Box<[u16]>,
    pub(crate) cursors: Box<[Cursor]>,
}

/// Most back ends a route may have.
pub const MAX_BACKENDS: usize = 256;
/// Longest round-robin schedule (weights are scaled down beyond it).
const MAX_SCHEDULE: u64 = 4096;

impl Pool {
    fn new(members: Vec<Member>, upstream: &Upstream, workers: usize) -> Self {
        let primaries: Vec<(usize, u64)> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.backup)
            .map(|(i, m)| (i, u64::from(m.weight.max(1))))
            .collect();
        let schedule = smooth_schedule(&primaries);
        let workers = workers.max(1);
        let cursors = (0..workers)
            .map(|w| {
                // Workers start spread over the schedule, so they do not pick in step.
                let start = (w * schedule.len()) / workers;
                Cursor { pos: AtomicU64::new(start as u64), rng: AtomicU64::new(mix(0x5eed ^ (w as u64 + 1)) | 1) }
            })
            .collect();
        Self { members, balance: upstream.balance, eject: upstream.eject, schedule, cursors }
    }

    #[inline]
    pub(crate) fn cursor(&self, worker: usize) -> &Cursor {
        &self.cursors[worker % self.cursors.len()]
    }
}

/// nginx's smooth weighted round robin, unrolled into one cycle (length: the sum of the
/// weights, scaled down to at most [`MAX_SCHEDULE`]).
fn smooth_schedule(members: &[(usize, u64)]) -> Box<[u16]> {
    let total: u64 = members.iter().map(|m| m.1).sum();
    if total == 0 {
        return Box::new([]);
    }
    let scaled: Vec<(usize, i64)> = members
        .iter()
        .map(|&(i, w)| (i, if total > MAX_SCHEDULE { ((w * MAX_SCHEDULE) / total).max(1) as i64 } else { w as i64 }))
        .collect();
    let total: i64 = scaled.iter().map(|m| m.1).sum();
    let mut current = vec![0i64; scaled.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (j, &(_, w)) in scaled.iter().enumerate() {
            current[j] += w;
            if current[j] > current[best] {
                best = j;
            }
        }
        current[best] -= total;
        out.push(scaled[best].0 as u16);
    }
    out.into_boxed_slice()
}

/// The back-end state of a configuration: built from its routing table, then (on reload)
/// handed the running configuration's state for what did not change ([`Pools::adopt`]).
#[derive(Debug, Default)]
pub struct Pools {
    backends: Vec<Arc<Shared>>,
    /// How many pools name each back end: 0 for one that a [`Pools::change`] left behind (not
    /// checked, not listed; the next [`Pools::build`] drops it).
    backend_refs: Vec<u32>,
    pools: Vec<Arc<Pool>>,
    /// How many routes use each pool (0: left behind by a change).
    pool_refs: Vec<u32>,
    /// `RouteId` → index into `pools`.
    by_route: PerRoute<u32>,
    /// `RouteId` → its statistics, made on its first connection.
    route_stats: PerRoute<OnceLock<Arc<RouteStats>>>,
    workers: usize,
    /// Made by [`Pools::change`] from the running pools: their back ends' state and the routes'
    /// statistics are already shared, so [`Pools::adopt`] has nothing to take over.
    inherited: bool,
}

/// The hasher of [`Pools::build`]'s maps (keys from the configuration, not from peers): FNV-1a
/// over the bytes, finished with [`mix`]; several times faster than SipHash on these small keys,
/// which matters when every reload of a quarter-million routes builds the pools anew.
type Fast = std::hash::BuildHasherDefault<FastHasher>;

#[derive(Default)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// In [`Pools::by_route`]: an id no route has.
const NO_POOL: u32 = u32::MAX;

/// Routes per chunk of a [`PerRoute`].
const PER_ROUTE_CHUNK: usize = 1024;

/// A value per route id, in chunks each behind its own `Arc`: a change to a few routes copies
/// their chunks (a few KiB), not a quarter-million entries, and shares the others. A read is one
/// more pointer than a flat vector.
#[derive(Debug, Clone, Default)]
struct PerRoute<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T: Clone> PerRoute<T> {
    fn new(len: usize, fill: impl Fn() -> T) -> Self {
        let chunks = (0..len.div_ceil(PER_ROUTE_CHUNK))
            .map(|c| Arc::new((0..PER_ROUTE_CHUNK.min(len - c * PER_ROUTE_CHUNK)).map(|_| fill()).collect()))
            .collect();
        Self { chunks, len }
    }

    #[inline]
    fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / PER_ROUTE_CHUNK)?.get(i % PER_ROUTE_CHUNK)
    }

    /// The entry, its chunk copied first if it is shared.
    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        Arc::make_mut(self.chunks.get_mut(i / PER_ROUTE_CHUNK)?).get_mut(i % PER_ROUTE_CHUNK)
    }

    /// Grows to at least `len` entries, new ones `fill()`.
    fn grow_to(&mut self, len: usize, fill: impl Fn() -> T) {
        while self.len < len {
            if self.len.is_multiple_of(PER_ROUTE_CHUNK) {
                self.chunks.push(Arc::new(Vec::with_capacity(PER_ROUTE_CHUNK)));
            }
            if let Some(last) = self.chunks.last_mut() {
                Arc::make_mut(last).push(fill());
            }
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

/// A back end's index in its [`Pools`] (what a connection's trace keeps).
pub type BackendId = u32;

/// Why back ends cannot be built as configured (the configuration turns it into an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("{target} is also a back end of route {other:?}, with a different health_check")]
    HealthConflict { target: String, other: String },
    #[error("more than {MAX_BACKENDS} back ends")]
    TooMany,
}

impl Pools {
    /// Builds the state for `table`'s routes, each worker of `workers` with its own slots. Two
    /// routes naming one target share its state (they must then agree on its health check).
    pub fn build<T>(table: &route::Table<T>, workers: usize) -> Result<Self, (RouteId, PoolError)> {
        let workers = workers.max(1);
        let mut backends: Vec<Arc<Shared>> = Vec::new();
        let mut by_target: HashMap<Target, (u32, RouteId), Fast> = HashMap::default();
        let mut pools: Vec<Arc<Pool>> = Vec::new();
        let mut pool_refs: Vec<u32> = Vec::new();
        let mut by_key: HashMap<(&[Backend], &Upstream), u32, Fast> = HashMap::default();
        // Ids may have gaps (a table changed in place reuses the ids of removed routes).
        let bound = table.routes().map(|(id, _)| id.0 as usize + 1).max().unwrap_or(0);
        let mut by_route = PerRoute::new(bound, || NO_POOL);
        for (id, r) in table.routes() {
            if r.backends.len() > MAX_BACKENDS {
                return Err((id, PoolError::TooMany));
            }
            if let Some(&p) = by_key.get(&(r.backends.as_slice(), &r.upstream)) {
                if let Some(slot) = by_route.get_mut(id.0 as usize) {
                    *slot = p;
                }
                pool_refs[p as usize] += 1;
                continue;
            }
            let mut members = Vec::with_capacity(r.backends.len());
            for b in &r.backends {
                let health = r.upstream.health.clone();
                let bid = match by_target.get(&b.target) {
                    Some(&(bid, owner)) => {
                        if backends[bid as usize].health != health {
                            let other = table.route(owner).name.clone();
                            return Err((id, PoolError::HealthConflict { target: b.target.to_string(), other }));
                        }
                        bid
                    }
                    None => {
                        let bid = backends.len() as u32;
                        backends.push(Arc::new(Shared::new(b.target.clone(), health, workers)));
                        by_target.insert(b.target.clone(), (bid, id));
                        bid
                    }
                };
                members.push(Member { id: bid, weight: b.weight, backup: b.backup });
            }
            let p = pools.len() as u32;
            pools.push(Arc::new(Pool::new(members, &r.upstream, workers)));
            pool_refs.push(1);
            by_key.insert((r.backends.as_slice(), &r.upstream), p);
            if let Some(slot) = by_route.get_mut(id.0 as usize) {
                *slot = p;
            }
        }
        let mut backend_refs = vec![0u32; backends.len()];
        for pool in &pools {
            for m in &pool.members {
                backend_refs[m.id as usize] += 1;
            }
        }
        let route_stats = PerRoute::new(bound, OnceLock::new);
        Ok(Self { backends, backend_refs, pools, pool_refs, by_route, route_stats, workers, inherited: false })
    }

    /// The state for `new_table`, which differs from `old_table` (whose state `old` is) only in
    /// the routes named in `touched` (added, replaced or removed): `old`'s pools, back ends and
    /// statistics shared, a pool built for each touched route, in time proportional to the
    /// change (plus a copy of the id maps), not to the table: what keeps one API change at a
    /// million names within milliseconds. `None` where a full [`build`](Self::build) is the
    /// right answer: many routes touched, much left behind by earlier changes, or a health-check
    /// disagreement that `build` reports with its owner's name.
    pub fn change<T>(
        old: &Pools,
        old_table: &route::Table<T>,
        new_table: &route::Table<T>,
        touched: &[&str],
    ) -> Option<Result<Self, (RouteId, PoolError)>> {
        if touched.len() > 64 || old.pools.len() > new_table.len() + 4096 {
            return None;
        }
        let mut p = Pools {
            backends: old.backends.clone(),
            backend_refs: old.backend_refs.clone(),
            pools: old.pools.clone(),
            pool_refs: old.pool_refs.clone(),
            by_route: old.by_route.clone(),
            route_stats: old.route_stats.clone(),
            workers: old.workers,
            inherited: true,
        };
        // Let go of what the touched routes held.
        for name in touched {
            let Some(id) = old_table.id_of(name) else { continue };
            if p.by_route.get(id.0 as usize).is_none_or(|&s| s == NO_POOL) {
                continue;
            }
            let Some(slot) = p.by_route.get_mut(id.0 as usize) else { continue };
            let pool = std::mem::replace(slot, NO_POOL);
            if pool == NO_POOL {
                continue;
            }
            p.pool_refs[pool as usize] -= 1;
            if p.pool_refs[pool as usize] == 0 {
                for m in &p.pools[pool as usize].members {
                    p.backend_refs[m.id as usize] -= 1;
                }
            }
            // A route keeps its statistics where the new table has it under the same id and
            // name (a replacement); an id reused by another route starts afresh.
            let same = new_table.get(id).is_some_and(|r| r.name == **name);
            if !same {
                if let Some(cell) = p.route_stats.get_mut(id.0 as usize) {
                    *cell = OnceLock::new();
                }
            }
        }
        // A pool for each touched route the new table has.
        for name in touched {
            let Some(id) = new_table.id_of(name) else { continue };
            let r = new_table.route(id);
            if r.backends.len() > MAX_BACKENDS {
                return Some(Err((id, PoolError::TooMany)));
            }
            let mut members = Vec::with_capacity(r.backends.len());
            for b in &r.backends {
                let health = r.upstream.health.clone();
                let found = p.backends.iter().enumerate().filter(|(_, s)| s.target == b.target).find_map(|(i, s)| {
                    let live = p.backend_refs[i] > 0;
                    match (s.health == health, live) {
                        (true, _) => Some(Ok(i as u32)),
                        (false, true) => Some(Err(())),
                        (false, false) => None,
                    }
                });
                let bid = match found {
                    Some(Ok(bid)) => bid,
                    // Another route names this target with another health check.
                    Some(Err(())) => return None,
                    None => {
                        p.backends.push(Arc::new(Shared::new(b.target.clone(), health, p.workers)));
                        p.backend_refs.push(0);
                        (p.backends.len() - 1) as u32
                    }
                };
                members.push(Member { id: bid, weight: b.weight, backup: b.backup });
            }
            for m in &members {
                p.backend_refs[m.id as usize] += 1;
            }
            let i = id.0 as usize;
            p.by_route.grow_to(i + 1, || NO_POOL);
            p.route_stats.grow_to(i + 1, OnceLock::new);
            if let Some(slot) = p.by_route.get_mut(i) {
                *slot = p.pools.len() as u32;
            }
            p.pools.push(Arc::new(Pool::new(members, &r.upstream, p.workers)));
            p.pool_refs.push(1);
        }
        Some(Ok(p))
    }

    /// Takes over `old`'s state where it still applies: a back end with the same target and
    /// health check keeps its verdict, counters and per-worker state (connections open to it
    /// included); a route of the same name keeps its statistics. Call before the configuration
    /// serves (on reload).
    pub fn adopt<T>(&mut self, old: &Pools, old_table: &route::Table<T>, new_table: &route::Table<T>) {
        if self.inherited {
            // Shared already (a route whose first connection came after the change was built
            // starts its statistics afresh; nothing else is lost).
            return;
        }
        let by_target: HashMap<&Target, &Arc<Shared>> = old.backends.iter().map(|b| (&b.target, b)).collect();
        for b in &mut self.backends {
            if let Some(o) = by_target.get(&b.target) {
                if o.health == b.health && o.slots.len() == b.slots.len() {
                    *b = Arc::clone(o);
                }
            }
        }
        // Only routes that had a connection have statistics; a table changed in place keeps the
        // ids of the routes it kept, so most are found without a lookup by name.
        for (i, stats) in old.route_stats.iter().enumerate() {
            let (Some(stats), Some(old_route)) = (stats.get(), old_table.get(RouteId(i as u32))) else { continue };
            let same_id = new_table.get(RouteId(i as u32)).is_some_and(|r| r.name == old_route.name);
            let id = if same_id { Some(RouteId(i as u32)) } else { new_table.id_of(&old_route.name) };
            if let Some(cell) = id.and_then(|id| self.route_stats.get(id.0 as usize)) {
                let _ = cell.set(Arc::clone(stats));
            }
        }
    }

    /// The pool of route `id`.
    #[inline]
    pub fn pool(&self, id: RouteId) -> Option<&Pool> {
        self.by_route.get(id.0 as usize).and_then(|&p| self.pools.get(p as usize)).map(|p| &**p)
    }

    /// The back end `id` names.
    #[inline]
    pub fn backend(&self, id: BackendId) -> Option<&Shared> {
        self.backends.get(id as usize).map(|b| &**b)
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &[Arc<Shared>] {
        &self.backends
    }

    /// Every back end a route names (for the health checker and the readers).
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Shared>> + '_ {
        self.backends.iter().zip(&self.backend_refs).filter(|(_, &refs)| refs > 0).map(|(b, _)| b)
    }

    /// The back ends of route `id`, in configuration order, with their weight and backup flag.
    pub fn route_backends(&self, id: RouteId) -> impl Iterator<Item = (&Shared, u32, bool)> + '_ {
        self.pool(id)
            .into_iter()
            .flat_map(move |p| p.members.iter())
            .filter_map(move |m| self.backend(m.id).map(|b| (b, m.weight, m.backup)))
    }

    /// Route `id`'s statistics, made on first use.
    #[inline]
    pub fn route_stats(&self, id: RouteId) -> Option<&RouteStats> {
        let cell = self.route_stats.get(id.0 as usize)?;
        Some(cell.get_or_init(|| Arc::new(RouteStats::new(self.workers))))
    }

    /// Route `id`'s statistics if it has had a connection.
    pub fn route_stats_if_used(&self, id: RouteId) -> Option<&RouteStats> {
        self.route_stats.get(id.0 as usize)?.get().map(|s| &**s)
    }

    /// The workers the slots were made for.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Action, Backend, ProxyProtocol, Route, Table, TlsVersion};

    fn route(name: &str, targets: &[&str]) -> Route<()> {
        Route {
            name: name.into(),
            action: Action::Passthrough,
            sni: vec![format!("{name}.example")],
            dedicated_ips: vec![],
            min_tls: TlsVersion::TLS12,
            backends: targets
                .iter()
                .map(|t| Backend { target: t.parse().unwrap(), weight: 1, backup: false })
                .collect(),
            proxy_protocol: ProxyProtocol::None,
            upstream: Upstream::default(),
            alpn_match: vec![],
            half_close: true,
        }
    }

    fn plan(p: &Pools, t: &Table<()>) -> Vec<(String, Vec<String>)> {
        let mut v: Vec<_> = t
            .routes()
            .map(|(id, r)| (r.name.clone(), p.route_backends(id).map(|(b, _, _)| b.target.to_string()).collect()))
            .collect();
        v.sort();
        v
    }

    fn listed(p: &Pools) -> Vec<String> {
        let mut v: Vec<_> = p.backends().map(|b| b.target.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_change_builds_only_what_it_touches_and_equals_a_build() {
        let t = Table::build(
            vec![
                route("a", &["10.0.0.1:443"]),
                route("b", &["10.0.0.1:443", "10.0.0.2:443"]),
                route("c", &["10.0.0.3:443"]),
            ],
            None,
            None,
        )
        .unwrap();
        let old = Pools::build(&t, 2).unwrap();
        let mut c = t.change();
        c.remove("c");
        c.upsert(route("b", &["10.0.0.2:443", "10.0.0.4:443"]));
        c.upsert(route("d", &["10.0.0.1:443"]));
        let (t2, _, _) = c.finish().unwrap();
        let changed = Pools::change(&old, &t, &t2, &["c", "b", "d"]).expect("a small change").unwrap();
        let built = Pools::build(&t2, 2).unwrap();
        assert_eq!(plan(&changed, &t2), plan(&built, &t2));
        // What no route names any more is neither listed nor checked.
        assert_eq!(listed(&changed), listed(&built));
        // An untouched route's pool, and a back end still named, keep their state.
        let a = t2.id_of("a").unwrap();
        assert!(std::ptr::eq(changed.pool(a).unwrap(), old.pool(t.id_of("a").unwrap()).unwrap()));
        let shared = |p: &Pools, target: &str| p.backends().find(|b| b.target.to_string() == target).cloned().unwrap();
        assert!(Arc::ptr_eq(&shared(&changed, "10.0.0.2:443"), &shared(&old, "10.0.0.2:443")));
        // A change naming a target with another health check is left to a full build.
        let mut c = t2.change();
        let mut checked = route("e", &["10.0.0.1:443"]);
        checked.upstream.health = Some(Default::default());
        c.upsert(checked);
        let (t3, _, _) = c.finish().unwrap();
        assert!(Pools::change(&changed, &t2, &t3, &["e"]).is_none());
    }

    #[test]
    fn smooth_schedules_follow_the_weights_and_interleave() {
        let s = smooth_schedule(&[(0, 5), (1, 1), (2, 1)]);
        assert_eq!(&*s, &[0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_schedule(&[(0, 1), (1, 1), (2, 1)]);
        assert_eq!(&*s, &[0, 1, 2]);
        let big = smooth_schedule(&[(0, 10_000), (1, 30_000)]);
        assert!(big.len() as u64 <= MAX_SCHEDULE);
        let ones = big.iter().filter(|&&i| i == 1).count();
        assert_eq!(ones * 4, big.len() * 3);
    }

    #[test]
    fn histogram_quantiles_interpolate() {
        let h = AtomicHist::default();
        for _ in 0..90 {
            h.record(Duration::from_micros(30)); // (25µs, 50µs]
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(20)); // (10ms, 25ms]
        }
        h.record(Duration::from_secs(100)); // +Inf
        let mut m = Hist::default();
        h.merge_into(&mut m);
        assert_eq!(m.count(), 101);
        let p50 = m.quantile(0.5).unwrap();
        assert!((0.000025..=0.00005).contains(&p50), "{p50}");
        let p95 = m.quantile(0.95).unwrap();
        assert!((0.01..=0.025).contains(&p95), "{p95}");
        assert_eq!(m.quantile(1.0), Some(10.0));
        assert_eq!(Hist::default().quantile(0.5), None);
    }

    #[test]
    fn passive_ejection_backs_off_and_a_success_ends_it() {
        let b = Shared::new("127.0.0.1:1".parse().unwrap(), None, 2);
        let eject = Eject { after: 2, base_ms: 60_000, max_ms: 240_000 };
        assert!(!b.failed(0, ConnectCause::Refused, &eject));
        assert!(b.failed(0, ConnectCause::Refused, &eject));
        let now = now_ms();
        assert!(b.ejected(0, now) && !b.ejected(1, now), "ejection is per worker");
        let first = b.slot(0).ejected_until.load(Relaxed) - now;
        // Attempts in flight when it was ejected change nothing.
        assert!(!b.failed(0, ConnectCause::Refused, &eject));
        // The trial after the back-off fails: ejected again for twice as long.
        b.slot(0).ejected_until.store(1, Relaxed);
        assert!(b.failed(0, ConnectCause::TimedOut, &eject));
        let second = b.slot(0).ejected_until.load(Relaxed) - now_ms();
        assert!(second > first + 50_000, "{first} then {second}");
        assert!(!b.failed(0, ConnectCause::LocalResources, &eject) || b.ejected(0, now_ms()));
        b.connected(0, None);
        assert!(!b.ejected(0, now_ms()));
        let s = b.snapshot();
        assert_eq!((s.connections, s.ejections), (1, 2));
        assert_eq!(s.failures[ConnectCause::Refused as usize], 3);
        assert_eq!(s.state(), "up");
        b.set_up(false);
        assert_eq!(b.snapshot().state(), "down");
        assert_eq!(b.snapshot().downs, 1);
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use crate::route::{Action, ProxyProtocol, Route, Table, TlsVersion};

    /// What building the pools of a large table costs (every reload and API change builds them):
    /// `cargo test --release --lib pools_of_a_large_table -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn pools_of_a_large_table() {
        let routes: Vec<Route<()>> = (0..250_000)
            .map(|i| Route {
                name: format!("r{i}"),
                action: Action::Passthrough,
                sni: vec![format!("n{i}.example")],
                dedicated_ips: vec![],
                min_tls: TlsVersion::TLS12,
                backends: vec![format!("127.0.0.{}:443", 1 + i % 200).parse().unwrap()],
                proxy_protocol: ProxyProtocol::None,
                upstream: Upstream::default(),
                alpn_match: vec![],
                half_close: true,
            })
            .collect();
        let table = Table::build(routes, None, None).unwrap();
        let old = Pools::build(&table, 2).unwrap();
        for i in (0..250_000).step_by(10) {
            old.route_stats(RouteId(i));
        }
        let started = Instant::now();
        let mut new = Pools::build(&table, 2).unwrap();
        let built = started.elapsed();
        new.adopt(&old, &table, &table);
        eprintln!("250,000 routes (25,000 with statistics): build {built:?}, adopt {:?}", started.elapsed() - built);
        assert!(new.route_stats_if_used(RouteId(10)).is_some() && new.route_stats_if_used(RouteId(11)).is_none());
    }
}
