//! Worker threads: one tokio-uring runtime per thread, pinned to a CPU, each with its own
//! SO_REUSEPORT listening socket per `[[listener]]`, so the kernel spreads connections and the
//! workers share nothing mutable.
//!
//! Life of a connection ([`handle`]): read the ClientHello (whole hello within
//! `hello_timeout_ms`) → route (dedicated IP, SNI, fallback; `min_tls`) → connect to the route's
//! back ends in order → PROXY header if asked → [`relay`](crate::relay::relay) with the hello bytes
//! already read. Every early exit is counted by [`DropReason`] and closes only that connection.
//!
//! Lifecycle ([`serve`]): a control thread handles signals. SIGTERM/SIGINT stop accepting (each
//! worker shuts down and closes its listeners) and wait for open connections to finish, up to
//! `drain_timeout_ms`; SIGHUP reloads the configuration into an [`ArcSwap`] that every worker reads
//! once per accepted connection (listeners and per-worker resources are not rebuilt on reload).
pub mod ring;

use crate::admin::{self, Admin};
use crate::config::{Config, ConfigError, Runtime, RuntimeOverrides};
use crate::hello::{self, ClientHello, Parsed};
use crate::metrics::access_log::{self, Sink};
use crate::metrics::{self, DropReason, Hist, Local, Registry};
use crate::relay::{self, proxy_protocol, BufPool, PipePool};
use crate::route::{Action, Match, ProxyProtocol, Route, RouteId};
use crate::tls;
use arc_swap::{ArcSwap, Cache};
use ring::Socket;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("listener {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("worker {worker}: cannot set up io_uring: {source}")]
    Ring { worker: usize, source: io::Error },
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("no configured listener")]
    NoListeners,
    #[error("admin endpoint {addr}: {source}")]
    Admin { addr: SocketAddr, source: io::Error },
    #[error("access log {path}: {source}")]
    AccessLog { path: String, source: io::Error },
}

/// Set (to anything but `0`) to turn off latency histograms and their clock reads, e.g. to
/// measure what they cost. Counters stay on.
pub const NO_LATENCY_ENV: &str = "SNI_DISPATCH_NO_LATENCY";

/// Loads the configuration, starts the workers and serves until SIGTERM or SIGINT, then drains
/// open connections for up to `drain_timeout_ms` and returns `Ok(())`. SIGHUP reloads `path`
/// (with the same `overrides`): a bad file is logged and the running configuration kept.
pub fn serve(path: &Path, overrides: &RuntimeOverrides) -> Result<(), ServeError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    // Register before starting workers so an early SIGTERM is not lost (or fatal).
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]).map_err(ServeError::Signals)?;
    let config = Config::load(path, overrides)?;
    let server = Server::start(config)?;
    for sig in signals.forever() {
        match sig {
            SIGHUP => match Config::load(path, overrides) {
                Ok(c) => server.reload(c),
                Err(e) => tracing::error!("reload failed; keeping the running configuration:\n{e}"),
            },
            SIGUSR1 => print_summary(&server.summary()),
            _ => {
                tracing::info!(signal = sig, "stopping: no new connections, draining open ones");
                break;
            }
        }
    }
    let registry = server.metrics().clone();
    let started = server.started;
    let drained = server.shutdown();
    tracing::info!(drained, "stopped");
    print_summary(&admin::render::summary(&registry, started.elapsed()));
    Ok(())
}

fn print_summary(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// A running set of workers (what [`serve`] drives; usable directly from tests and tools).
pub struct Server {
    config: Arc<ArcSwap<Config>>,
    registry: Registry,
    local_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    done: mpsc::Receiver<usize>,
    workers: usize,
    accepting: Arc<AtomicBool>,
    admin: Option<Admin>,
    access_log: Option<Sink>,
    started: Instant,
}

impl Server {
    /// Binds every listener (port 0 becomes one port shared by all workers), starts the workers
    /// and returns once each has its ring.
    pub fn start(config: Config) -> Result<Self, ServeError> {
        if config.listeners.is_empty() {
            return Err(ServeError::NoListeners);
        }
        let rt = config.runtime.clone();
        let fd_limit = ring::raise_fd_limit().ok();
        let cpus = plan_cpus(&rt);
        let n = cpus.len();

        // Per worker, one socket per listener; the first bound fixes the port of a `:0` listener.
        let mut local_addrs = Vec::new();
        let mut per_worker: Vec<Vec<(OwnedFd, SocketAddr)>> = (0..n).map(|_| Vec::new()).collect();
        for &addr in &config.listeners {
            let first = bind(addr, rt.backlog).map_err(|source| ServeError::Bind { addr, source })?;
            let actual = first.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr);
            local_addrs.push(actual);
            per_worker[0].push((first.into(), actual));
            for fds in per_worker.iter_mut().skip(1) {
                let s = bind(actual, rt.backlog).map_err(|source| ServeError::Bind { addr: actual, source })?;
                fds.push((s.into(), actual));
            }
        }

        let started = Instant::now();
        let timing = !matches!(std::env::var_os(NO_LATENCY_ENV), Some(v) if !v.is_empty() && v != "0");
        let access_log = match &rt.access_log {
            Some(path) => Some(
                Sink::open(path)
                    .map_err(|source| ServeError::AccessLog { path: path.display().to_string(), source })?,
            ),
            None => None,
        };
        let admin_addr = config.admin;
        let shared = Arc::new(ArcSwap::from_pointee(config));
        let registry = Registry::new(n);
        let accepting = Arc::new(AtomicBool::new(true));
        let admin = match admin_addr {
            Some(addr) => {
                let state = admin::State { registry: registry.clone(), accepting: Arc::clone(&accepting), started };
                Some(Admin::start(addr, state, admin_cpu(&cpus)).map_err(|source| ServeError::Admin { addr, source })?)
            }
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), ServeError>>();
        for (id, (cpu, listeners)) in cpus.iter().copied().zip(per_worker).enumerate() {
            let w = WorkerSetup {
                id,
                cpu,
                ring: ring::RingOptions {
                    entries: rt.ring_entries,
                    sqpoll: rt.sqpoll,
                    sqpoll_idle_ms: rt.sqpoll_idle_ms,
                },
                pipe_pool: if rt.splice { rt.pipe_pool } else { 0 },
                listeners,
                config: Arc::clone(&shared),
                slot: registry.slot(id),
                stop: stop_rx.clone(),
                timing,
                log: access_log.as_ref().map(|s| s.writer(rt.access_log_sample)),
            };
            let ready = ready_tx.clone();
            let done = done_tx.clone();
            std::thread::Builder::new()
                .name(format!("sni-worker-{id}"))
                .spawn(move || {
                    worker_main(w, ready);
                    let _ = done.send(id);
                })
                .map_err(ServeError::Thread)?;
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = stop.send(true);
                    return Err(e);
                }
                Err(_) => break,
            }
        }
        tracing::info!(
            workers = n,
            cpus = ?cpus,
            listeners = ?local_addrs,
            splice = rt.splice,
            pipe_pool = rt.pipe_pool,
            ring_entries = rt.ring_entries,
            sqpoll = rt.sqpoll,
            fd_limit,
            admin = ?admin.as_ref().map(Admin::local_addr),
            access_log = ?rt.access_log,
            latency_histograms = timing,
            "sni-dispatch serving"
        );
        Ok(Self {
            config: shared,
            registry,
            local_addrs,
            stop,
            done,
            workers: n,
            accepting,
            admin,
            access_log,
            started,
        })
    }

    /// The admin endpoint's bound address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::local_addr)
    }

    /// The one-screen summary (what SIGUSR1 prints).
    pub fn summary(&self) -> String {
        admin::render::summary(&self.registry, self.started.elapsed())
    }

    /// The bound listener addresses, in configuration order (ports resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Per-worker counters, published every [`metrics::PUBLISH_EVERY`].
    pub fn metrics(&self) -> &Registry {
        &self.registry
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

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
        let (routes, names) = (new.table.routes().len(), new.table.name_count());
        self.config.store(Arc::new(new));
        tracing::info!(routes, exact = names.0, wildcard = names.1, "configuration reloaded");
    }

    /// Stops accepting, waits for open connections up to `drain_timeout_ms`; returns whether every
    /// worker finished in time (the others are abandoned and end with the process).
    pub fn shutdown(self) -> bool {
        let timeout = Duration::from_millis(self.config.load().runtime.drain_timeout_ms);
        self.accepting.store(false, Ordering::SeqCst);
        let _ = self.stop.send(true);
        let deadline = Instant::now() + timeout + Duration::from_millis(200);
        let mut finished = 0;
        while finished < self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(_) => finished += 1,
                Err(_) => break,
            }
        }
        if let Some(admin) = self.admin {
            admin.stop();
        }
        if let Some(log) = self.access_log {
            // Workers that finished have dropped their writers (after a final flush).
            log.close(Duration::from_secs(if finished == self.workers { 5 } else { 0 }));
        }
        finished == self.workers
    }
}

/// One CPU (or none, unpinned) per worker.
fn plan_cpus(rt: &Runtime) -> Vec<Option<usize>> {
    let allowed: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let cpus = rt.cpus.clone().unwrap_or(allowed);
    let n = match rt.workers {
        0 => cpus.len().max(1),
        n => n,
    };
    (0..n).map(|i| if cpus.is_empty() { None } else { Some(cpus[i % cpus.len()]) }).collect()
}

/// A CPU for the admin thread that no worker is pinned to (the first allowed one), if any.
fn admin_cpu(workers: &[Option<usize>]) -> Option<usize> {
    core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).find(|id| !workers.contains(&Some(*id)))
}

fn bind(addr: SocketAddr, backlog: u32) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket as S, Type};
    let s = S::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: no syscall per connection, and no
    // Nagle/delayed-ACK stall when a TLS server flight and its session ticket go out as two writes.
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(s)
}

struct WorkerSetup {
    id: usize,
    cpu: Option<usize>,
    ring: ring::RingOptions,
    pipe_pool: usize,
    listeners: Vec<(OwnedFd, SocketAddr)>,
    config: Arc<ArcSwap<Config>>,
    slot: metrics::Slot,
    stop: watch::Receiver<bool>,
    timing: bool,
    log: Option<access_log::Writer>,
}

/// A worker's state, shared by its tasks (one thread, so `Rc` and `RefCell`).
#[allow(clippy::redundant_allocation)] // Rc<Arc<Config>>: per-connection clones stay non-atomic
struct Worker {
    id: usize,
    cache: RefCell<Cache<Arc<ArcSwap<Config>>, Arc<Config>>>,
    current: RefCell<Rc<Arc<Config>>>,
    metrics: Local,
    pipes: RefCell<PipePool>,
    bufs: RefCell<BufPool>,
    open: Cell<usize>,
    /// Woken when a connection closes, for an accept loop waiting under `max_conns_per_worker`.
    slot_freed: Notify,
    stop: watch::Receiver<bool>,
    /// Record latency histograms (and read the clock for them).
    timing: bool,
    log: Option<access_log::Writer>,
}

impl Worker {
    /// The configuration snapshot for a new connection: a pointer comparison, and an `Rc` clone.
    #[allow(clippy::redundant_allocation)]
    fn config(&self) -> Rc<Arc<Config>> {
        let mut cache = self.cache.borrow_mut();
        let latest = cache.load();
        let mut cur = self.current.borrow_mut();
        if !Arc::ptr_eq(&cur, latest) {
            *cur = Rc::new(Arc::clone(latest));
        }
        Rc::clone(&cur)
    }

    /// A timestamp for the latency histograms, when they are on.
    #[inline]
    fn now(&self) -> Option<Instant> {
        self.timing.then(Instant::now)
    }
}

fn worker_main(setup: WorkerSetup, ready: mpsc::Sender<Result<(), ServeError>>) {
    let WorkerSetup { id, cpu, ring: ring_opts, pipe_pool, listeners, config, slot, stop, timing, log } = setup;
    if let Some(cpu) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            tracing::warn!(worker = id, cpu, "cannot pin worker to its CPU; running unpinned");
        }
    }
    let rt = match ring::runtime(ring_opts) {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(ServeError::Ring { worker: id, source }));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    rt.block_on(async move {
        let current = Rc::new(config.load_full());
        let w = Rc::new(Worker {
            id,
            cache: RefCell::new(Cache::new(config)),
            current: RefCell::new(current),
            metrics: Local::new(slot),
            pipes: RefCell::new(PipePool::new(pipe_pool)),
            bufs: RefCell::new(BufPool::default()),
            open: Cell::new(0),
            slot_freed: Notify::new(),
            stop,
            timing,
            log,
        });
        let mut accepting = Vec::new();
        for (fd, addr) in listeners {
            accepting.push(tokio_uring::spawn(accept_loop(Rc::clone(&w), Socket::from(fd), addr)));
        }
        let publisher = tokio_uring::spawn(publish_loop(Rc::clone(&w)));
        for task in accepting {
            let _ = task.await;
        }
        // Draining: the server gives up on us after drain_timeout_ms; until then, wait.
        while w.open.get() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        publisher.abort();
        w.metrics.bump(|c| c.open = 0);
        if let Some(log) = &w.log {
            log.flush(&w.metrics);
        }
        w.metrics.publish_final();
        tracing::debug!(worker = w.id, "worker drained");
    });
}

async fn publish_loop(w: Rc<Worker>) {
    loop {
        tokio::time::sleep(metrics::PUBLISH_EVERY).await;
        let open = w.open.get() as u64;
        w.metrics.bump(|c| c.open = open);
        if let Some(log) = &w.log {
            log.flush(&w.metrics);
        }
        w.metrics.publish();
    }
}

/// Counts a connection open for its lifetime.
struct OpenGuard(Rc<Worker>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
        self.0.slot_freed.notify_one();
    }
}

async fn accept_loop(w: Rc<Worker>, listener: Socket, addr: SocketAddr) {
    let mut stop = w.stop.clone();
    loop {
        if *stop.borrow() {
            break;
        }
        let max = w.config().runtime.max_conns_per_worker;
        if max > 0 && w.open.get() >= max {
            w.metrics.bump(|c| c.conn_limit_waits += 1);
            tokio::select! {
                () = w.slot_freed.notified() => continue,
                _ = stop.changed() => break,
            }
        }
        let res = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
        };
        match res {
            Ok(client) => {
                let accepted = w.now();
                w.open.set(w.open.get() + 1);
                w.metrics.bump(|c| c.accepted += 1);
                tokio_uring::spawn(handle(OpenGuard(Rc::clone(&w)), client, addr, accepted));
            }
            Err(e) => {
                w.metrics.bump(|c| c.accept_errors += 1);
                let backoff = match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
                        w.metrics.bump(|c| c.accept_fd_exhausted += 1);
                        tracing::warn!(worker = w.id, listener = %addr, error = %e, "accept: out of descriptors or memory; backing off");
                        Some(Duration::from_millis(100))
                    }
                    // The peer gave up while queued: nothing to do.
                    Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EPROTO) | Some(libc::EPERM) => None,
                    _ => {
                        tracing::warn!(worker = w.id, listener = %addr, error = %e, "accept failed");
                        Some(Duration::from_millis(10))
                    }
                };
                if let Some(d) = backoff {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
    }
    // Completes the pending accept (if any), so the fd closes once that op returns.
    listener.shutdown(Shutdown::Both);
    tracing::debug!(worker = w.id, listener = %addr, "stopped accepting");
}

/// Room for a ClientHello of `max_hello_bytes` re-framed into many small records.
fn hello_capacity(max_hello_bytes: usize) -> usize {
    (2 * max_hello_bytes + 512).max(relay::BUF_SIZE)
}

/// How a connection ended, for the access log.
#[derive(Debug, Clone, Copy)]
enum End {
    Dropped(DropReason),
    Relayed(relay::Outcome),
}

/// What one connection's measurements and access-log line need, filled in as it goes. Instants
/// are `None` when latency histograms are off (or the stage was not reached); `sni`, `alpn`,
/// `client` and `local` are only read for a sampled connection (`log`).
#[derive(Debug)]
struct Trace {
    log: bool,
    accepted: Option<Instant>,
    hello_done: Option<Instant>,
    hello_bytes: Option<u64>,
    routed_at: Option<Instant>,
    handshake_done: Option<Instant>,
    connect_start: Option<Instant>,
    connected_at: Option<Instant>,
    first_to_client: Option<Instant>,
    how: Option<Match>,
    route: Option<RouteId>,
    backend: Option<SocketAddr>,
    end: Option<End>,
    to_backend: u64,
    to_client: u64,
    client: Option<SocketAddr>,
    local: Option<SocketAddr>,
    sni: Option<String>,
    alpn: Option<String>,
}

impl Trace {
    fn new(accepted: Option<Instant>, log: bool) -> Self {
        Self {
            log,
            accepted,
            hello_done: None,
            hello_bytes: None,
            routed_at: None,
            handshake_done: None,
            connect_start: None,
            connected_at: None,
            first_to_client: None,
            how: None,
            route: None,
            backend: None,
            end: None,
            to_backend: 0,
            to_client: 0,
            client: None,
            local: None,
            sni: None,
            alpn: None,
        }
    }
}

fn between(a: Option<Instant>, b: Option<Instant>) -> Option<Duration> {
    Some(b?.saturating_duration_since(a?))
}

fn micros(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Records a finished connection's latencies and, if sampled, its access-log line.
fn finish(w: &Worker, cfg: &Config, t: &Trace) {
    let end = w.now();
    let m = &w.metrics;
    let hello_wait = between(t.accepted, t.hello_done);
    let lookup = between(t.hello_done, t.routed_at);
    let connect = between(t.connect_start, t.connected_at);
    let handshake = between(t.routed_at, t.handshake_done);
    let first_byte = between(t.connected_at, t.first_to_client);
    let lifetime = between(t.accepted, end);
    for (k, d) in [
        (Hist::HelloWait, hello_wait),
        (Hist::RouteLookup, lookup),
        (Hist::BackendConnect, connect),
        (Hist::TlsHandshake, handshake),
        (Hist::FirstByte, first_byte),
        (Hist::Lifetime, lifetime),
    ] {
        if let Some(d) = d {
            m.record_duration(k, d);
        }
    }
    if let (Some(n), true) = (t.hello_bytes, w.timing) {
        m.record(Hist::HelloSize, n);
    }
    let Some(log) = w.log.as_ref().filter(|_| t.log) else {
        return;
    };
    let route = t.route.map(|id| cfg.table.route(id));
    let (outcome, reason) = match t.end {
        Some(End::Dropped(r)) => ("dropped", Some(r.as_str())),
        Some(End::Relayed(relay::Outcome::Closed)) | None => ("closed", None),
        Some(End::Relayed(relay::Outcome::Error)) => ("error", None),
        Some(End::Relayed(relay::Outcome::Idle)) => ("idle_timeout", None),
        Some(End::Relayed(relay::Outcome::FirstWrite)) => ("dropped", Some(DropReason::BackendWrite.as_str())),
    };
    let time = access_log::rfc3339(std::time::SystemTime::now());
    let entry = access_log::Entry {
        time: &time,
        worker: w.id,
        client: t.client,
        local: t.local,
        sni: t.sni.as_deref(),
        alpn: t.alpn.as_deref(),
        route: route.map(|r| r.name.as_str()),
        how: t.how.map(Match::as_str),
        action: route.map(|r| match r.action {
            Action::Terminate => "terminate",
            Action::Passthrough => "passthrough",
        }),
        backend: t.backend,
        outcome,
        reason,
        bytes_client_to_backend: t.to_backend,
        bytes_backend_to_client: t.to_client,
        hello_bytes: t.hello_bytes,
        hello_wait_us: micros(hello_wait),
        route_lookup_ns: lookup.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        backend_connect_us: micros(connect),
        tls_handshake_us: micros(handshake),
        first_byte_us: micros(first_byte),
        lifetime_us: micros(lifetime),
    };
    log.log(&entry, m);
}

/// A routed connection, ready to dial.
struct Routed {
    route: RouteId,
    /// PROXY header (if any) followed by the ClientHello bytes read.
    first: Vec<u8>,
    check_server: Option<crate::route::TlsVersion>,
}

/// Connects to the route's back ends in order, sending what it can of `first` at once (the
/// connect time and the chosen back end go into the trace); the socket and the bytes of `first`
/// sent, or `None` when every back end failed.
async fn connect(w: &Worker, r: &Route, rt: &Runtime, t: &mut Trace, first: &[u8]) -> Option<(Socket, usize)> {
    let connected =
        relay::connect_backends(&r.backends, Duration::from_millis(rt.connect_timeout_ms), &w.metrics, first).await;
    t.connected_at = w.now();
    let (sock, addr, sent) = connected.ok()?;
    t.backend = Some(addr);
    Some((sock, sent))
}

/// A terminating route: handshake with the route's certificate (the hello bytes already read
/// go to rustls first), then relay plaintext to the back end behind an optional PROXY header
/// that carries the SNI and the negotiated ALPN.
async fn terminate(
    w: &Worker,
    t: &mut Trace,
    cfg: &Config,
    r: &Route,
    client: &Socket,
    listen: SocketAddr,
    hello: Vec<u8>,
) {
    let rt = &cfg.runtime;
    let Some(material) = &r.tls else {
        // Config validation makes this unreachable; never panic on it.
        w.bufs.borrow_mut().give(hello);
        return drop_conn(w, t, DropReason::TlsHandshake);
    };
    let hs = tokio::time::timeout(
        Duration::from_millis(rt.hello_timeout_ms),
        tls::handshake(client, material.server_config.clone(), &hello),
    )
    .await;
    w.bufs.borrow_mut().give(hello);
    let conn = match hs {
        Err(_) => {
            client.shutdown(Shutdown::Both);
            return drop_conn(w, t, DropReason::TlsTimeout);
        }
        Ok(Err(e)) => {
            tracing::debug!(worker = w.id, route = %r.name, error = %e, "TLS handshake failed");
            let reason = match e {
                tls::HandshakeError::Tls(rustls::Error::PeerIncompatible(_)) => DropReason::BelowMinTls,
                tls::HandshakeError::Eof | tls::HandshakeError::Io(_) => DropReason::ClientClosed,
                tls::HandshakeError::Tls(_) => DropReason::TlsHandshake,
            };
            return drop_conn(w, t, reason);
        }
        Ok(Ok(conn)) => conn,
    };
    t.handshake_done = w.now();
    if t.log {
        t.alpn = conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    }
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    w.metrics.bump(|c| {
        c.tls_handshakes += 1;
        c.tls_resumed += u64::from(resumed);
    });
    t.connect_start = t.handshake_done;
    let Some((backend, _)) = connect(w, r, rt, t, &[]).await else {
        // Tell the client politely: close_notify rather than a bare FIN.
        let mut conn = conn;
        conn.send_close_notify();
        let mut out = Vec::new();
        while conn.wants_write() && conn.write_tls(&mut out).is_ok() {}
        let _ = client.send_all(out, 0).await;
        return drop_conn(w, t, DropReason::BackendsDown);
    };
    if r.proxy_protocol != ProxyProtocol::None {
        let local = client.local_addr().unwrap_or(listen);
        let peer = client.peer_addr().unwrap_or_else(|_| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0));
        let header =
            proxy_protocol::Header { client: peer, local, sni: conn.server_name(), alpn: conn.alpn_protocol() };
        let mut first = w.bufs.borrow_mut().take(600);
        proxy_protocol::encode(r.proxy_protocol, &header, &mut first);
        let (res, first) = backend.send_all(first, 0).await;
        w.bufs.borrow_mut().give(first);
        if res.is_err() {
            return drop_conn(w, t, DropReason::BackendWrite);
        }
    }
    let done = tls::relay(client, conn, &backend, Duration::from_millis(rt.idle_timeout_ms)).await;
    t.to_backend = done.to_backend;
    t.to_client = done.to_client;
    t.first_to_client = done.first_to_client.filter(|_| w.timing);
    t.end = Some(End::Relayed(if done.idle_timeout {
        relay::Outcome::Idle
    } else if done.error {
        relay::Outcome::Error
    } else {
        relay::Outcome::Closed
    }));
    w.metrics.bump(|c| {
        c.bytes_client_to_backend += done.to_backend;
        c.bytes_backend_to_client += done.to_client;
        c.idle_timeouts += u64::from(done.idle_timeout);
        c.relay_errors += u64::from(done.error);
    });
}

async fn handle(guard: OpenGuard, client: Socket, listen: SocketAddr, accepted: Option<Instant>) {
    let w = &guard.0;
    let cfg = w.config();
    let mut t = Trace::new(accepted, w.log.as_ref().is_some_and(|l| l.sample()));
    if t.log {
        t.client = client.peer_addr().ok();
        t.local = Some(client.local_addr().unwrap_or(listen));
    }
    serve_conn(w, &mut t, &cfg, &client, listen).await;
    finish(w, &cfg, &t);
}

/// One connection from accept to close (see the module docs); `t` collects what it measured.
async fn serve_conn(w: &Worker, t: &mut Trace, cfg: &Config, client: &Socket, listen: SocketAddr) {
    let rt = &cfg.runtime;
    let buf = w.bufs.borrow_mut().take(hello_capacity(rt.max_hello_bytes));
    let decide = |hello: &ClientHello<'_>| {
        t.hello_done = w.now();
        t.hello_bytes = Some(hello.len() as u64);
        let d = route(w, t, cfg, client, listen, hello);
        t.routed_at = w.now();
        d
    };
    let read = tokio::time::timeout(
        Duration::from_millis(rt.hello_timeout_ms),
        read_hello(client, buf, rt.max_hello_bytes, decide),
    )
    .await;
    let (decided, buf) = match read {
        Err(_) => {
            // The recv is still pending; shutting down completes it so the fd is freed.
            client.shutdown(Shutdown::Both);
            return drop_conn(w, t, DropReason::HelloTimeout);
        }
        Ok(x) => x,
    };
    let routed = match decided {
        Ok(Decision { route, header: None, check_server }) => Routed { route, first: buf, check_server },
        Ok(Decision { route, header: Some(mut first), check_server }) => {
            first.extend_from_slice(&buf);
            w.bufs.borrow_mut().give(buf);
            Routed { route, first, check_server }
        }
        Err(reason) => {
            w.bufs.borrow_mut().give(buf);
            return drop_conn(w, t, reason);
        }
    };
    let r = cfg.table.route(routed.route);
    if r.action == Action::Terminate {
        // Boxed: the TLS state machine would otherwise make every connection's task (passthrough
        // included) several KiB larger, and each task is memcpy'd when it is spawned.
        return Box::pin(terminate(w, t, cfg, r, client, listen, routed.first)).await;
    }
    t.connect_start = t.routed_at;
    let Some((backend, mut sent)) = connect(w, r, rt, t, &routed.first).await else {
        w.bufs.borrow_mut().give(routed.first);
        return drop_conn(w, t, DropReason::BackendsDown);
    };
    let mut first = routed.first;
    let mut early = 0;
    if let Some(min) = routed.check_server {
        let limit = Duration::from_millis(rt.hello_timeout_ms);
        let (f, from_backend) = match check_server_version(w, client, &backend, first, sent, min, limit).await {
            Ok(x) => x,
            Err(reason) => return drop_conn(w, t, reason),
        };
        first = f;
        sent = first.len();
        early = from_backend.len() as u64;
        let (res, from_backend) = client.send_all(from_backend, 0).await;
        w.bufs.borrow_mut().give(from_backend);
        if res.is_err() {
            w.bufs.borrow_mut().give(first);
            return drop_conn(w, t, DropReason::ClientClosed);
        }
        w.metrics.bump(|c| c.bytes_backend_to_client += early);
    }
    let env = relay::Env {
        metrics: &w.metrics,
        pipes: &w.pipes,
        bufs: &w.bufs,
        splice: rt.splice,
        idle: Duration::from_millis(rt.idle_timeout_ms),
        timing: w.timing,
    };
    let done = relay::relay(&env, client, &backend, first, sent).await;
    t.to_backend = done.to_backend;
    t.to_client = early + done.to_client;
    t.first_to_client = done.first_to_client;
    t.end = Some(End::Relayed(done.outcome));
    if done.outcome == relay::Outcome::FirstWrite {
        w.metrics.dropped(DropReason::BackendWrite);
    }
    tracing::trace!(worker = w.id, outcome = ?done.outcome, "connection closed");
}

fn drop_conn(w: &Worker, t: &mut Trace, reason: DropReason) {
    t.end = Some(End::Dropped(reason));
    w.metrics.dropped(reason);
    tracing::debug!(worker = w.id, reason = reason.as_str(), "connection dropped");
}

/// Reads until the buffer holds a complete ClientHello (or a reason to drop the connection), then
/// hands the parsed hello to `decide` while it still borrows the buffer: one parse per hello.
async fn read_hello<R>(
    client: &Socket,
    mut buf: Vec<u8>,
    max: usize,
    mut decide: impl FnMut(&ClientHello<'_>) -> Result<R, DropReason>,
) -> (Result<R, DropReason>, Vec<u8>) {
    loop {
        if buf.len() == buf.capacity() {
            return (Err(DropReason::Oversize), buf);
        }
        let (res, b) = client.recv(buf).await;
        buf = b;
        match res {
            Ok(0) => return (Err(DropReason::ClientClosed), buf),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return (Err(DropReason::ClientClosed), buf),
        }
        let verdict = match hello::parse(&buf, max) {
            Parsed::NeedMore => continue,
            Parsed::Complete(hello) => decide(&hello),
            Parsed::Rejected(r) => Err(r.into()),
        };
        return (verdict, buf);
    }
}

/// Where a complete hello goes, and the PROXY header (if any) to send before it.
struct Decision {
    route: RouteId,
    header: Option<Vec<u8>>,
    /// The route's `min_tls`, when the client also offered versions below it: the back end's
    /// choice is then checked in its ServerHello ([`check_server_version`]).
    check_server: Option<crate::route::TlsVersion>,
}

/// Routes a complete hello: dedicated IP, SNI, fallback; `min_tls`; the PROXY header.
fn route(
    w: &Worker,
    t: &mut Trace,
    cfg: &Config,
    client: &Socket,
    listen: SocketAddr,
    hello: &ClientHello<'_>,
) -> Result<Decision, DropReason> {
    if t.log {
        t.sni = hello.sni().map(str::to_owned);
        t.alpn = hello.alpn().next().map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned());
    }
    let table = &cfg.table;
    // getsockname only when the answer matters: dedicated IPs exist (or for a PROXY header below).
    let mut local = None;
    let ip: IpAddr = if table.dedicated_ips().next().is_some() {
        let a = client.local_addr().unwrap_or(listen);
        local = Some(a);
        a.ip()
    } else {
        listen.ip()
    };
    let (id, how) = table.lookup(ip, hello.sni()).map_err(DropReason::from)?;
    t.how = Some(how);
    t.route = Some(id);
    let route = table.route(id);
    // A terminating route leaves the version to rustls, which answers with a protocol_version alert.
    // A passthrough route compares the best version offered (known versions only, so no
    // unknown value can lift an old offer past it); and when the client also offered versions
    // below min_tls, the version the back end picks is checked in its ServerHello.
    let mut check_server = None;
    if route.action == Action::Passthrough {
        if hello.max_version() < route.min_tls.0 {
            return Err(DropReason::BelowMinTls);
        }
        if hello.min_version() < route.min_tls.0 {
            check_server = Some(route.min_tls);
        }
    }
    w.metrics.routed(how);
    if route.proxy_protocol == ProxyProtocol::None || route.action == Action::Terminate {
        return Ok(Decision { route: id, header: None, check_server });
    }
    let local = local.unwrap_or_else(|| client.local_addr().unwrap_or(listen));
    let peer = client.peer_addr().unwrap_or_else(|_| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0));
    let alpn = hello.alpn().next();
    let header =
        proxy_protocol::Header { client: peer, local, sni: hello.sni(), alpn: alpn.as_ref().map(|p| p.as_bytes()) };
    let mut first = w.bufs.borrow_mut().take(hello.len() + 600);
    proxy_protocol::encode(route.proxy_protocol, &header, &mut first);
    Ok(Decision { route: id, header: Some(first), check_server })
}

/// A fatal `protocol_version` alert (RFC 8446 §6.2), as a TLS server sends it.
const PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70];

/// Sends the rest of `first` to the back end, then reads the back end's first flight up to the
/// end of its ServerHello and checks the version it chose against `min`: below it, the client
/// gets a `protocol_version` alert and nothing the back end sent. Returns `first` and the back
/// end's bytes read (to be sent to the client before relaying), or why the connection ends.
async fn check_server_version(
    w: &Worker,
    client: &Socket,
    backend: &Socket,
    first: Vec<u8>,
    sent: usize,
    min: crate::route::TlsVersion,
    limit: Duration,
) -> Result<(Vec<u8>, Vec<u8>), DropReason> {
    let (res, first) = backend.send_all(first, sent).await;
    if res.is_err() {
        w.bufs.borrow_mut().give(first);
        return Err(DropReason::BackendWrite);
    }
    let buf = w.bufs.borrow_mut().take(relay::BUF_SIZE);
    let read = async {
        let mut buf = buf;
        loop {
            if buf.len() == buf.capacity() {
                return (hello::ServerVersion::Invalid("ServerHello too large"), buf);
            }
            let (res, b) = backend.recv(buf).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => return (hello::ServerVersion::Invalid("closed before its ServerHello"), buf),
                Ok(_) => {}
            }
            match hello::server_hello_version(&buf) {
                hello::ServerVersion::NeedMore => continue,
                verdict => return (verdict, buf),
            }
        }
    };
    let (verdict, buf) = match tokio::time::timeout(limit, read).await {
        Ok(x) => x,
        Err(_) => {
            backend.shutdown(Shutdown::Both);
            w.bufs.borrow_mut().give(first);
            return Err(DropReason::BackendNotTls);
        }
    };
    let reason = match verdict {
        hello::ServerVersion::Chosen(v) if v < min.0 => {
            let version = crate::route::TlsVersion(v);
            tracing::debug!(worker = w.id, %version, %min, "back end chose a version below min_tls");
            let mut alert = buf;
            alert.clear();
            alert.extend_from_slice(&PROTOCOL_VERSION_ALERT);
            let (_, alert) = client.send_all(alert, 0).await;
            w.bufs.borrow_mut().give(alert);
            DropReason::BackendBelowMinTls
        }
        hello::ServerVersion::Chosen(_) | hello::ServerVersion::Alert => return Ok((first, buf)),
        hello::ServerVersion::Invalid(_) | hello::ServerVersion::NeedMore => {
            let field = if let hello::ServerVersion::Invalid(f) = verdict { f } else { "incomplete" };
            tracing::debug!(worker = w.id, field, "back end's first bytes are not a ServerHello");
            w.bufs.borrow_mut().give(buf);
            DropReason::BackendNotTls
        }
    };
    w.bufs.borrow_mut().give(first);
    Err(reason)
}
