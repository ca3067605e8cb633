//! A worker thread: one tokio-uring runtime pinned to its CPU, with its own `SO_REUSEPORT`
//! listening socket per `[[listener]]`, so the kernel spreads connections and the workers share
//! nothing mutable.
//!
//! - [`main`]: the thread's body: pin, ring, accept loops, the publish tick, drain;
//! - [`accept`]: the accept loop, its admission (`max_conns_per_worker`) and errno policy;
//! - [`quic`]: the UDP loop of each QUIC listener: new flows routed by their Initials'
//!   ClientHello, the pending and flow tables, forwarding both ways;
//! - each connection runs as its own task through [`crate::conn::serve`].
//!
//! The configuration is read through an [`ArcSwap`] cache (a pointer comparison) at accept and
//! when a hello is complete; a reload is picked up by the next decision. A connection keeps
//! only its route after routing, through the worker's own `Rc` of that route's `Arc`
//! ([`conn::Snapshots`]): no snapshot kept alive by day-long connections, and no atomic
//! reference count shared across cores bumped per connection.
pub mod accept;
pub mod handoff;
pub mod quic;

use crate::access_log;
use crate::config::Config;
use crate::conn;
use crate::metrics::{self, Local};
use crate::relay::{timers, BufPool, PipePool, Scratch, Timers};
use crate::route::RouteId;
use crate::sys::{self, RingOptions, Socket};
use arc_swap::{ArcSwap, Cache};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What the server tells a running worker (after a reload changed the listeners).
#[derive(Debug)]
pub enum Command {
    /// Accept on this new listening socket too.
    Listen(OwnedFd, SocketAddr),
    /// Stop accepting on the listener bound to this address and close it; its open connections
    /// go on (and those already queued on it are still taken and served).
    Unlisten(SocketAddr),
    /// A binary upgrade: answer with every open QUIC flow (each with a duplicate of its socket)
    /// and open no new flow until [`Command::ResumeQuic`] or the stop.
    ExportQuic(mpsc::Sender<Vec<quic::Handed>>),
    /// The upgrade that asked for the flows failed: open new flows again.
    ResumeQuic,
}

/// One UDP socket of a QUIC listener, as a worker gets it.
pub struct UdpSocket {
    pub fd: OwnedFd,
    /// The listener's address (port resolved).
    pub addr: SocketAddr,
    /// What the kernel offered.
    pub features: sys::udp::UdpFeatures,
    /// Its position among the listener's sockets (what a handed-over flow names).
    pub slot: usize,
}

/// What a worker thread starts with.
pub struct Setup {
    pub id: usize,
    pub cpu: Option<usize>,
    pub ring: RingOptions,
    pub pipe_pool: usize,
    /// One listening socket per `[[listener]]`, with its address.
    pub listeners: Vec<(OwnedFd, SocketAddr)>,
    /// The UDP sockets of the `[[listener]]`s with `quic = true` (one each, or more when a
    /// binary upgrade handed over more sockets than there are workers).
    pub udp: Vec<UdpSocket>,
    /// Open QUIC flows the previous process handed over on those sockets.
    pub quic_flows: Vec<quic::Handed>,
    /// Set before the stop signal when a new process took over QUIC listeners (bound addresses):
    /// their sockets and flows are its now.
    pub quic_handed_off: Arc<OnceLock<Vec<SocketAddr>>>,
    /// Set before the stop signal when a new process took over hand-off listeners (paths).
    pub handoff_handed_off: Arc<OnceLock<Vec<std::path::PathBuf>>>,
    pub config: Arc<ArcSwap<Config>>,
    pub slot: metrics::Slot,
    pub stop: watch::Receiver<bool>,
    pub timing: bool,
    pub log: Option<access_log::Writer>,
    pub commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    /// Set before the stop signal when a new process took over these listeners (a binary
    /// upgrade): the bound addresses it adopted, whose sockets it now accepts on.
    pub handed_off: Arc<OnceLock<Vec<SocketAddr>>>,
    /// The listeners' per-client counts, shared by every worker.
    pub admission: Arc<conn::admission::Tables>,
    /// One socket per hand-off listener (`[[listener]] handoff`), with its path.
    pub handoff: Vec<(OwnedFd, std::path::PathBuf)>,
}

/// Descriptors a process needs besides its connections and pipes: stdio, the admin listener,
/// the access log, signal and runtime internals.
const FIXED_FDS: u64 = 32;
/// Descriptors each worker needs besides its connections and pipes: its ring, its runtime's
/// epoll and wake-up fds (its listeners are counted apart).
const WORKER_FDS: u64 = 4;

/// How the splice pipe pool fits under `RLIMIT_NOFILE` (checked at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdPlan {
    /// Pipes each worker may have at once (`pipe_pool`, or less to fit the limit).
    pub pipe_pool: usize,
    /// What the operator should know, when the configuration does not fit the limit.
    pub warning: Option<String>,
}

/// Counts the pipe pool's descriptors (two per pipe, `pipe_pool` per worker) against the
/// open-file limit: the pools may take at most a quarter of it, so that connections (two
/// descriptors each) keep the rest, and `pipe_pool` is lowered to fit; with
/// `max_conns_per_worker` set, says whether the connections it allows fit beside them.
pub fn plan_descriptors(
    limit: u64,
    workers: usize,
    listeners: usize,
    pipe_pool: usize,
    max_conns_per_worker: usize,
) -> FdPlan {
    let w = workers.max(1) as u64;
    let fixed = FIXED_FDS + w * (WORKER_FDS + listeners as u64);
    let cap = (limit / 4 / (2 * w)) as usize;
    let mut notes = Vec::new();
    let pool = if pipe_pool > cap {
        notes.push(format!(
            "pipe_pool = {pipe_pool} per worker would take {} of the {limit} descriptors this process may open (RLIMIT_NOFILE); capped at {cap} per worker, a quarter of the limit, so that connections keep the rest",
            2 * pipe_pool as u64 * w
        ));
        cap
    } else {
        pipe_pool
    };
    let pipes = 2 * pool as u64 * w;
    if max_conns_per_worker > 0 {
        let conns = 2 * max_conns_per_worker as u64 * w;
        if fixed + pipes + conns > limit {
            notes.push(format!(
                "max_conns_per_worker = {max_conns_per_worker} on {w} worker(s) needs {conns} descriptors (two per connection), which with the pipe pools ({pipes}) and the process's own ({fixed}) exceeds RLIMIT_NOFILE = {limit}: accepts will fail with EMFILE before the cap is reached"
            ));
        }
    } else {
        let room = limit.saturating_sub(fixed + pipes) / 2;
        if room < 1024 {
            notes.push(format!(
                "RLIMIT_NOFILE = {limit} leaves room for about {room} connections beside the pipe pools ({pipes} descriptors) and the process's own ({fixed})"
            ));
        }
    }
    let warning = (!notes.is_empty()).then(|| {
        notes
            .push("raise the limit (ulimit -n, systemd LimitNOFILE=) or lower pipe_pool / max_conns_per_worker".into());
        notes.join("; ")
    });
    FdPlan { pipe_pool: pool, warning }
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
#[error("worker {worker}: cannot set up io_uring: {source}")]
pub struct StartError {
    pub worker: usize,
    pub source: std::io::Error,
}

/// A worker's state, shared by its tasks (one thread, so `Rc` and `RefCell`).
#[allow(clippy::redundant_allocation)] // Rc<Arc<Config>>: per-connection clones stay non-atomic
pub(crate) struct Worker {
    cache: RefCell<Cache<Arc<ArcSwap<Config>>, Arc<Config>>>,
    current: RefCell<Rc<Arc<Config>>>,
    /// This worker's handles on the routes of `current` that its connections chose.
    routes: RefCell<HashMap<u32, conn::Kept, IdHash>>,
    /// What its connections share: counters, pools, the access-log writer.
    pub(crate) conns: conn::Resources,
    pub(crate) open: Cell<usize>,
    /// Woken when a connection closes, for an accept loop waiting under `max_conns_per_worker`.
    pub(crate) slot_freed: Notify,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) handed_off: Arc<OnceLock<Vec<SocketAddr>>>,
    pub(crate) quic_handed_off: Arc<OnceLock<Vec<SocketAddr>>>,
    pub(crate) handoff_handed_off: Arc<OnceLock<Vec<std::path::PathBuf>>>,
}

impl Worker {
    /// The configuration snapshot for a new connection: a pointer comparison, and an `Rc` clone.
    #[allow(clippy::redundant_allocation)] // the worker's own `Rc`: clones stay non-atomic
    pub(crate) fn config(&self) -> Rc<Arc<Config>> {
        let mut cache = self.cache.borrow_mut();
        let latest = cache.load();
        let mut cur = self.current.borrow_mut();
        if !Arc::ptr_eq(&cur, latest) {
            *cur = Rc::new(Arc::clone(latest));
            // Handles of the old snapshot's routes: open connections keep theirs.
            self.routes.borrow_mut().clear();
        }
        Rc::clone(&cur)
    }

    pub(crate) fn id(&self) -> usize {
        self.conns.worker
    }

    pub(crate) fn metrics(&self) -> &Local {
        &self.conns.metrics
    }
}

impl conn::Snapshots for Worker {
    fn current(&self) -> Rc<Arc<Config>> {
        self.config()
    }

    fn keep(&self, cfg: &Config, id: RouteId) -> conn::Kept {
        let same = std::ptr::eq(&***self.current.borrow(), cfg);
        if !same {
            // A snapshot older than the cached one (a reload between the two reads): no handle
            // to share, so an `Arc` of its own.
            return Rc::new(conn::Held::of(cfg, id));
        }
        let mut routes = self.routes.borrow_mut();
        if let Some(kept) = routes.get(&id.0) {
            return Rc::clone(kept);
        }
        let kept = Rc::new(conn::Held::of(cfg, id));
        // Bounded, so that letting go of it at a reload stays cheap: beyond the bound, a route
        // costs one atomic increment per connection instead.
        if routes.len() < ROUTE_HANDLES {
            routes.insert(id.0, Rc::clone(&kept));
        }
        kept
    }
}

/// Routes a worker keeps its own handle of (per configuration): the busiest ones, as they are
/// the first to come.
const ROUTE_HANDLES: usize = 4096;

/// A hasher for route ids (small integers): one multiply.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The body of a worker thread: pins it, builds its ring, says it is ready (or why not), and
/// serves its listeners until told to stop, then drains its connections.
pub fn main(setup: Setup, ready: mpsc::Sender<Result<(), StartError>>) {
    let Setup {
        id,
        cpu,
        ring: ring_opts,
        pipe_pool,
        listeners,
        udp,
        quic_flows,
        quic_handed_off,
        handoff_handed_off,
        config,
        slot,
        stop,
        timing,
        log,
        mut commands,
        handed_off,
        admission,
        handoff,
    } = setup;
    if let Some(cpu) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            tracing::warn!(worker = id, cpu, "cannot pin worker to its CPU; running unpinned");
        }
    }
    let rt = match sys::runtime(ring_opts) {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(StartError { worker: id, source }));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    rt.block_on(async move {
        let current = Rc::new(config.load_full());
        let w = Rc::new(Worker {
            cache: RefCell::new(Cache::new(config)),
            current: RefCell::new(current),
            routes: RefCell::new(HashMap::default()),
            conns: conn::Resources {
                worker: id,
                metrics: Local::new(slot),
                pipes: RefCell::new(PipePool::new(pipe_pool)),
                bufs: RefCell::new(BufPool::default()),
                scratch: RefCell::new(Scratch::default()),
                timers: Timers::default(),
                timing,
                log,
                admission,
                shuns: RefCell::default(),
            },
            open: Cell::new(0),
            slot_freed: Notify::new(),
            stop,
            handed_off,
            quic_handed_off,
            handoff_handed_off,
        });
        let accepting: RefCell<Vec<Listening>> = RefCell::new(Vec::new());
        let listen = |fd: OwnedFd, addr: SocketAddr| {
            let (own, own_rx) = watch::channel(false);
            let task = tokio_uring::spawn(accept::run(Rc::clone(&w), Socket::from(fd), addr, own_rx));
            accepting.borrow_mut().push(Listening { addr, own, task });
        };
        for (fd, addr) in listeners {
            listen(fd, addr);
        }
        let handoffs: Vec<_> = handoff
            .into_iter()
            .map(|(fd, path)| tokio_uring::spawn(handoff::run(Rc::clone(&w), Socket::from(fd), path)))
            .collect();
        let publisher = tokio_uring::spawn(tick_loop(Rc::clone(&w)));
        let quic = (!udp.is_empty()).then(|| Rc::new(quic::Quic::new(&w.config())));
        let mut udp_loops = Vec::new();
        if let Some(q) = &quic {
            let mut sockets = Vec::new();
            for (i, u) in udp.into_iter().enumerate() {
                let l = quic::Listener {
                    index: i as u16,
                    socket: Socket::from(u.fd),
                    addr: u.addr,
                    features: u.features,
                    slot: u.slot,
                };
                sockets.push(Rc::new(l));
            }
            quic::adopt(&w, q, &sockets, quic_flows);
            for l in sockets {
                udp_loops.push(tokio_uring::spawn(quic::run(Rc::clone(&w), Rc::clone(q), l)));
            }
            udp_loops.push(tokio_uring::spawn(quic::sweep(Rc::clone(&w), Rc::clone(q))));
        }
        let mut stopping = w.stop.clone();
        loop {
            if *stopping.borrow() {
                break;
            }
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Listen(fd, addr)) => {
                        tracing::debug!(worker = id, listener = %addr, "accepting on a new listener");
                        listen(fd, addr);
                    }
                    Some(Command::Unlisten(addr)) => {
                        // The accept loop drains its backlog, then the socket closes; its task
                        // ends by itself and is not awaited.
                        accepting.borrow_mut().retain(|l| {
                            if l.addr == addr {
                                let _ = l.own.send(true);
                            }
                            l.addr != addr
                        });
                    }
                    Some(Command::ExportQuic(reply)) => {
                        let _ = reply.send(quic.as_ref().map(|q| quic::export(&w, q)).unwrap_or_default());
                    }
                    Some(Command::ResumeQuic) => {
                        if let Some(q) = &quic {
                            quic::resume(q);
                        }
                    }
                    None => {
                        if stopping.changed().await.is_err() {
                            break;
                        }
                    }
                },
                r = stopping.changed() => if r.is_err() { break },
            }
        }
        let tasks: Vec<Listening> = accepting.borrow_mut().drain(..).collect();
        for l in tasks {
            let _ = l.task.await;
        }
        for task in handoffs {
            let _ = task.await;
        }
        // Draining: the server gives up on us after drain_timeout_ms; until then, wait. QUIC
        // flows are forwarded meanwhile, and end with the drain.
        while w.open.get() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(q) = &quic {
            quic::finish(&w, q);
            for task in udp_loops {
                let _ = task.await;
            }
        }
        publisher.abort();
        let m = w.metrics();
        m.bump(|c| {
            c.open = 0;
            crate::tls::drain_counts(c);
        });
        if let Some(log) = &w.conns.log {
            log.flush(m);
        }
        m.publish_final();
        tracing::debug!(worker = w.id(), "worker drained");
    });
}

/// One listener a worker accepts on.
struct Listening {
    addr: SocketAddr,
    /// Set when a reload removed it.
    own: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Ticks of the housekeeping loop between two trims of the pools.
const TRIM_EVERY_TICKS: u32 = 10;

/// The worker's housekeeping, every [`timers::TICK`]: the wheel of deadlines advances (hello
/// timeouts, idle connections), and every [`metrics::PUBLISH_EVERY`] the gauges, the access-log
/// buffer and the counters go out to the readers (and an idle worker lets go of a replaced
/// snapshot); about once a second the pools give back what the last second did not need and
/// the allocator returns freed pages to the system.
async fn tick_loop(w: Rc<Worker>) {
    let publish_every = (metrics::PUBLISH_EVERY.as_nanos() / timers::TICK.as_nanos()).max(1) as u32;
    let mut n: u32 = 0;
    loop {
        tokio::time::sleep(timers::TICK).await;
        n = n.wrapping_add(1);
        let c = &w.conns;
        c.timers.advance(std::time::Instant::now());
        if c.shuns.borrow().pending() {
            let cfg = w.config();
            c.shuns.borrow_mut().expire(&c.metrics, c.worker, &cfg, &c.admission);
        }
        if n.is_multiple_of(TRIM_EVERY_TICKS) {
            c.pipes.borrow_mut().trim();
            c.bufs.borrow_mut().trim();
            c.timers.shrink();
            sys::release_free_memory();
        }
        if n.is_multiple_of(publish_every) {
            // An idle worker lets go of a replaced snapshot too (the control thread frees it).
            drop(w.config());
            let open = w.open.get() as u64;
            let pipes = c.pipes.borrow().live() as u64;
            let buffered = c.bufs.borrow().free_bytes() as u64;
            let shunned = c.shuns.borrow().len() as u64;
            let m = w.metrics();
            m.bump(|c| {
                c.open = open;
                c.pipes_open = pipes;
                c.buffer_pool_bytes = buffered;
                c.shunned = shunned;
                // What rustls's callbacks (tickets, OCSP staples) counted on this thread.
                crate::tls::drain_counts(c);
            });
            if let Some(log) = &c.log {
                log.flush(m);
            }
            m.publish();
        }
    }
}

/// Counts a connection open for its lifetime.
pub(crate) struct OpenGuard(pub(crate) Rc<Worker>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
        self.0.slot_freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_pools_fit_a_quarter_of_the_fd_limit() {
        // The default pool on a generous limit: unchanged, nothing to say.
        assert_eq!(plan_descriptors(1 << 20, 4, 1, 1024, 0), FdPlan { pipe_pool: 1024, warning: None });
        // ulimit -n 256, one worker: 1024 pipes would be 2048 fds; capped at 32 pipes (64 fds).
        let p = plan_descriptors(256, 1, 1, 1024, 0);
        assert_eq!(p.pipe_pool, 32);
        let w = p.warning.unwrap();
        assert!(w.contains("capped at 32") && w.contains("RLIMIT_NOFILE"), "{w}");
        // Connections that cannot fit beside the pools are called out.
        let p = plan_descriptors(20_000, 2, 1, 1024, 10_000);
        assert_eq!(p.pipe_pool, 1024);
        assert!(p.warning.unwrap().contains("max_conns_per_worker = 10000"));
        assert_eq!(plan_descriptors(100_000, 2, 1, 1024, 10_000).warning, None);
    }
}
