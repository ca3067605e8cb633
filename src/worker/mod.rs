//! A worker thread: one tokio-uring runtime pinned to its CPU, with its own `SO_REUSEPORT`
//! listening socket per `[[listener]]`, so the kernel spreads connections and the workers share
//! nothing mutable.
//!
//! - [`main`]: the thread's body: pin, ring, accept loops, the publish tick, drain;
//! - [`accept`]: the accept loop, its admission (`max_conns_per_worker`) and errno policy;
//! - each connection runs as its own task through [`crate::conn::serve`].
//!
//! The configuration is read through an [`ArcSwap`] cache once per accepted connection (a
//! pointer comparison); a reload is picked up by the next connection.
pub mod accept;

use crate::access_log;
use crate::config::Config;
use crate::conn;
use crate::metrics::{self, Local};
use crate::relay::{timers, BufPool, PipePool, Scratch, Timers};
use crate::sys::{self, RingOptions, Socket};
use arc_swap::{ArcSwap, Cache};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What a worker thread starts with.
pub struct Setup {
    pub id: usize,
    pub cpu: Option<usize>,
    pub ring: RingOptions,
    pub pipe_pool: usize,
    /// One listening socket per `[[listener]]`, with its address.
    pub listeners: Vec<(OwnedFd, SocketAddr)>,
    pub config: Arc<ArcSwap<Config>>,
    pub slot: metrics::Slot,
    pub stop: watch::Receiver<bool>,
    pub timing: bool,
    pub log: Option<access_log::Writer>,
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
    /// What its connections share: counters, pools, the access-log writer.
    pub(crate) conns: conn::Resources,
    pub(crate) open: Cell<usize>,
    /// Woken when a connection closes, for an accept loop waiting under `max_conns_per_worker`.
    pub(crate) slot_freed: Notify,
    pub(crate) stop: watch::Receiver<bool>,
}

impl Worker {
    /// The configuration snapshot for a new connection: a pointer comparison, and an `Rc` clone.
    #[allow(clippy::redundant_allocation)]
    pub(crate) fn config(&self) -> Rc<Arc<Config>> {
        let mut cache = self.cache.borrow_mut();
        let latest = cache.load();
        let mut cur = self.current.borrow_mut();
        if !Arc::ptr_eq(&cur, latest) {
            *cur = Rc::new(Arc::clone(latest));
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

/// The body of a worker thread: pins it, builds its ring, says it is ready (or why not), and
/// serves its listeners until told to stop, then drains its connections.
pub fn main(setup: Setup, ready: mpsc::Sender<Result<(), StartError>>) {
    let Setup { id, cpu, ring: ring_opts, pipe_pool, listeners, config, slot, stop, timing, log } = setup;
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
            conns: conn::Resources {
                worker: id,
                metrics: Local::new(slot),
                pipes: RefCell::new(PipePool::new(pipe_pool)),
                bufs: RefCell::new(BufPool::default()),
                scratch: RefCell::new(Scratch::default()),
                timers: Timers::default(),
                timing,
                log,
            },
            open: Cell::new(0),
            slot_freed: Notify::new(),
            stop,
        });
        let mut accepting = Vec::new();
        for (fd, addr) in listeners {
            accepting.push(tokio_uring::spawn(accept::run(Rc::clone(&w), Socket::from(fd), addr)));
        }
        let publisher = tokio_uring::spawn(tick_loop(Rc::clone(&w)));
        for task in accepting {
            let _ = task.await;
        }
        // Draining: the server gives up on us after drain_timeout_ms; until then, wait.
        while w.open.get() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        publisher.abort();
        let m = w.metrics();
        m.bump(|c| c.open = 0);
        if let Some(log) = &w.conns.log {
            log.flush(m);
        }
        m.publish_final();
        tracing::debug!(worker = w.id(), "worker drained");
    });
}

/// Ticks of the housekeeping loop between two trims of the pools.
const TRIM_EVERY_TICKS: u32 = 10;

/// The worker's housekeeping, every [`timers::TICK`]: the wheel of deadlines advances (hello
/// timeouts, idle connections), and every [`metrics::PUBLISH_EVERY`] the gauges, the access-log
/// buffer and the counters go out to the readers; about once a second the pools give back what
/// the last second did not need and the allocator returns freed pages to the system.
async fn tick_loop(w: Rc<Worker>) {
    let publish_every = (metrics::PUBLISH_EVERY.as_nanos() / timers::TICK.as_nanos()).max(1) as u32;
    let mut n: u32 = 0;
    loop {
        tokio::time::sleep(timers::TICK).await;
        n = n.wrapping_add(1);
        let c = &w.conns;
        c.timers.advance(std::time::Instant::now());
        if n.is_multiple_of(TRIM_EVERY_TICKS) {
            c.pipes.borrow_mut().trim();
            c.bufs.borrow_mut().trim();
            c.timers.shrink();
            sys::release_free_memory();
        }
        if n.is_multiple_of(publish_every) {
            let open = w.open.get() as u64;
            let pipes = c.pipes.borrow().live() as u64;
            let buffered = c.bufs.borrow().free_bytes() as u64;
            let m = w.metrics();
            m.bump(|c| {
                c.open = open;
                c.pipes_open = pipes;
                c.buffer_pool_bytes = buffered;
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
