//! The server: every worker and the listening sockets they share, the admin endpoint and the
//! access log, started together and stopped together.
//!
//! - [`Server::start`] binds each `[[listener]]` once per worker (`SO_REUSEPORT`; a `:0` listener
//!   gets one port for all workers), starts the workers on their CPUs ([`cpus`]) and returns once
//!   each has its ring;
//! - [`Server::reload`] swaps in a new configuration for new connections; [`control`] runs
//!   reloads (SIGHUP, the [`watcher`], `POST /reload`) and route API changes on a thread off the
//!   workers' CPUs, one at a time;
//! - [`Server::shutdown`] stops accepting and drains open connections up to `drain_timeout_ms`;
//! - [`lifecycle::serve`] drives all three from signals (what `sni-dispatch run` does);
//! - [`upgrade`]: a new binary takes over the listening sockets ([`Server::start_with`] with
//!   what [`upgrade::take`] brought, [`Server::offer_listeners`] on the running one).
pub mod control;
pub mod cpus;
pub mod lifecycle;
mod reload;
pub mod upgrade;
mod watcher;

pub use lifecycle::{serve, NO_LATENCY_ENV};
pub use upgrade::{Inherited, UpgradeError, UpgradeOptions};

use crate::access_log::Sink;
use crate::admin::{self, Admin};
use crate::config::{Config, ConfigError};
use crate::metrics::Registry;
use crate::sys::{self, RingOptions};
use crate::worker;
use arc_swap::ArcSwap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("listener {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Worker(#[from] worker::StartError),
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
    #[error("{0}")]
    Upgrade(#[from] UpgradeError),
    #[error("hand-off listener {path}: {source}")]
    Handoff { path: String, source: io::Error },
    #[error("health checks: {0}")]
    Health(io::Error),
}

/// What stops accepting, shared with the upgrade thread: a new process that took the
/// listeners over stops them through [`upgrade::HandOver`].
pub(crate) struct Control {
    registry: Registry,
    admin: Mutex<Option<Admin>>,
    stop: watch::Sender<bool>,
    accepting: Arc<AtomicBool>,
    handed_off: Arc<OnceLock<Vec<SocketAddr>>>,
    /// Set with `handed_off`: the QUIC listeners whose UDP sockets and flows the new process took.
    quic_handed_off: Arc<OnceLock<Vec<SocketAddr>>>,
    /// Set with `handed_off`: the hand-off listeners (paths) the new process accepts on.
    handoff_handed_off: Arc<OnceLock<Vec<std::path::PathBuf>>>,
    /// Each worker's command channel (to ask for its QUIC flows).
    commands: Vec<tokio::sync::mpsc::UnboundedSender<worker::Command>>,
}

impl Control {
    /// Stops the admin endpoint (the requests it accepted are answered first).
    fn stop_admin(&self) {
        let admin = lock(&self.admin).take();
        if let Some(a) = admin {
            a.stop();
        }
    }
}

impl upgrade::HandOver for Control {
    fn hand_over(
        &self,
        adopted: Vec<SocketAddr>,
        admin: bool,
        quic: Vec<SocketAddr>,
        handoff: Vec<std::path::PathBuf>,
    ) {
        // The admin socket first: once it is the new process's alone, /healthz there says 200
        // while this one drains (503 here would be read as the host going down).
        if admin {
            self.stop_admin();
        }
        let _ = self.quic_handed_off.set(quic);
        let _ = self.handoff_handed_off.set(handoff);
        let _ = self.handed_off.set(adopted);
        self.accepting.store(false, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }

    fn quic_flows(&self) -> Vec<upgrade::Flow> {
        // Each worker answers on its own thread; one that does not within the limit (stuck, or
        // gone) keeps its flows, which then end with this process's drain.
        let mut waiting = Vec::new();
        for tx in &self.commands {
            let (reply, rx) = mpsc::channel();
            if tx.send(worker::Command::ExportQuic(reply)).is_ok() {
                waiting.push(rx);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut all = Vec::new();
        for rx in waiting {
            if let Ok(flows) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                all.extend(flows.into_iter().map(offer_flow));
            }
        }
        all
    }

    fn quic_resume(&self) {
        for tx in &self.commands {
            let _ = tx.send(worker::Command::ResumeQuic);
        }
    }

    fn count(&self, result: crate::metrics::UpgradeResult) {
        self.registry.bump_process(|c| c.upgrade_takers.bump(result));
    }
}

/// A running set of workers (what [`serve`] drives; usable directly from tests and tools).
pub struct Server {
    pub(crate) config: Arc<ArcSwap<Config>>,
    pub(crate) shared: Arc<Shared>,
    registry: Registry,
    done: mpsc::Receiver<usize>,
    workers: usize,
    control: Arc<Control>,
    admin_addr: Option<SocketAddr>,
    /// The control plane's thread (reloads, route API changes).
    plane: control::Handle,
    watcher: Option<watcher::Watcher>,
    pub(crate) started: Instant,
    /// A duplicate of the admin endpoint's socket, kept to offer it to a new binary (the
    /// listeners' are in [`Shared::offered`]).
    offered_admin: Option<upgrade::OfferedAdmin>,
    /// Duplicates of the hand-off listeners' sockets, kept to offer them too.
    offered_handoff: Vec<upgrade::OfferedHandoff>,
    offer: Option<upgrade::Offer>,
}

/// What the control plane changes while the server runs: the configuration, the listeners (and
/// each worker's command channel to hand them over), the access log, the published state.
pub(crate) struct Shared {
    pub(crate) config: Arc<ArcSwap<Config>>,
    pub(crate) registry: Registry,
    pub(crate) commands: Vec<tokio::sync::mpsc::UnboundedSender<worker::Command>>,
    /// Each listener as configured, with the address its sockets are bound to.
    pub(crate) listeners: Mutex<Vec<(SocketAddr, SocketAddr)>>,
    pub(crate) access_log: Mutex<Option<Sink>>,
    /// The CPUs the workers are pinned to (the control plane stays off them).
    pub(crate) worker_cpus: Vec<usize>,
    /// Replaced configurations, dropped here (not on a worker) once no worker holds them.
    pub(crate) retired: Mutex<Vec<Arc<Config>>>,
    /// The health checker: told of each configuration's back ends as it is swapped in.
    pub(crate) checker: crate::backend::health::Checker,
    /// The listeners' per-client counts (a listener added by a reload gets its table here).
    pub(crate) admission: Arc<crate::conn::admission::Tables>,
    /// With `--upgrade-socket`: a duplicate of every listening socket, to offer to a new binary
    /// (a reload adds and removes entries as it adds and removes listeners).
    pub(crate) offered: Option<Arc<Mutex<Vec<upgrade::Offered>>>>,
}

impl Server {
    /// Binds every listener (port 0 becomes one port shared by all workers), starts the workers
    /// and returns once each has its ring.
    pub fn start(config: Config) -> Result<Self, ServeError> {
        Self::start_with(config, None, false)
    }

    /// As [`Server::start`], adopting the listening sockets (and the admin endpoint's) that a
    /// running process handed over, for every listener configured as it was there (the others
    /// are bound anew; workers beyond the sockets handed over bind theirs into the same
    /// `SO_REUSEPORT` group). With `offerable`, keeps a duplicate of every listening socket so
    /// that [`Server::offer_listeners`] can hand them on.
    pub fn start_with(
        config: Config,
        mut inherited: Option<&mut Inherited>,
        offerable: bool,
    ) -> Result<Self, ServeError> {
        if config.listeners.is_empty() && config.handoff.is_empty() {
            return Err(ServeError::NoListeners);
        }
        let rt = config.runtime.clone();
        // Kernel TLS is probed (and the answer logged) once, at start.
        crate::tls::ktls::enabled(rt.ktls);
        reload::log_warnings(&config);
        let fd_limit = sys::raise_fd_limit().ok();
        let cpus = cpus::plan_cpus(&rt);
        let n = cpus.len();
        // The pipe pools' descriptors count against the limit (worker::plan_descriptors).
        let pipe_pool = if rt.splice { rt.pipe_pool } else { 0 };
        let fds = fd_limit
            .map(|l| worker::plan_descriptors(l, n, config.listeners.len(), pipe_pool, rt.max_conns_per_worker));
        if let Some(w) = fds.as_ref().and_then(|p| p.warning.as_ref()) {
            tracing::warn!("{w}");
        }
        let pipe_pool = fds.as_ref().map_or(pipe_pool, |p| p.pipe_pool);

        // Per worker, one socket per listener; the first bound fixes the port of a `:0` listener.
        // Handed-over sockets go round the workers (a worker may get two: none is closed, so none
        // of their queued connections is lost); workers beyond them bind their own.
        let mut local_addrs = Vec::new();
        let mut per_worker: Vec<Vec<(OwnedFd, SocketAddr)>> = (0..n).map(|_| Vec::new()).collect();
        let mut udp_per_worker: Vec<Vec<worker::UdpSocket>> = (0..n).map(|_| Vec::new()).collect();
        let mut quic_flows: Vec<Vec<worker::quic::Handed>> = (0..n).map(|_| Vec::new()).collect();
        let mut offered = Vec::new();
        for l in &config.listeners {
            let addr = l.address;
            let (actual, mut sockets) = match inherited.as_deref_mut().and_then(|i| i.listener(addr)) {
                Some((bound, fds)) => {
                    for fd in &fds {
                        // A new backlog applies to a listening socket at once.
                        let _ = socket2::SockRef::from(fd).listen(rt.backlog.min(i32::MAX as u32) as i32);
                        // As `bind` sets it (a binary from before may not have).
                        let _ = socket2::SockRef::from(fd).set_quickack(false);
                    }
                    (bound, fds)
                }
                None => bind_all(addr, 1, rt.backlog)?,
            };
            while sockets.len() < n {
                let s = bind(actual, rt.backlog).map_err(|source| ServeError::Bind { addr: actual, source })?;
                sockets.push(s.into());
            }
            let mut udp_dups = Vec::new();
            if l.quic {
                // UDP on the TCP listener's port (a `:0` listener's too), one socket per worker:
                // those a binary upgrade handed over first (socket j to worker j % n, with the
                // open flows that arrive on it), then one bound for each worker still without.
                let bad = |source| ServeError::Bind { addr: actual, source };
                let (taken, mut flows) = match inherited.as_deref_mut().and_then(|i| i.udp(addr)) {
                    Some((bound, fds)) if bound == actual => {
                        let flows = inherited.as_deref_mut().map(|i| i.quic_flows(bound)).unwrap_or_default();
                        (fds, flows)
                    }
                    _ => (Vec::new(), Vec::new()),
                };
                let mut sockets: Vec<(OwnedFd, sys::udp::UdpFeatures)> = Vec::new();
                for fd in taken {
                    let features = sys::udp::adopt_udp(&fd, rt.quic_gro).map_err(bad)?;
                    sockets.push((fd, features));
                }
                while sockets.len() < n {
                    let (fd, _, features) = sys::udp::bind_udp(actual, rt.quic_gro).map_err(bad)?;
                    sockets.push((fd, features));
                }
                for (slot, (fd, features)) in sockets.into_iter().enumerate() {
                    if offerable {
                        udp_dups.push(fd.try_clone().map_err(bad)?);
                    }
                    let handed: Vec<worker::quic::Handed> =
                        flows.extract_if(.., |f| f.msg.socket == slot).filter_map(upgrade_flow).collect();
                    quic_flows[slot % n].extend(handed);
                    udp_per_worker[slot % n].push(worker::UdpSocket { fd, addr: actual, features, slot });
                }
                if !flows.is_empty() {
                    tracing::warn!(listener = %actual, flows = flows.len(), "QUIC flows handed over on sockets that were not: not taken");
                }
            }
            if offerable {
                offered.push(upgrade::Offered {
                    configured: addr,
                    bound: actual,
                    fds: dup_all(&sockets, actual)?,
                    udp: udp_dups,
                });
            }
            local_addrs.push((addr, actual));
            for (i, fd) in sockets.into_iter().enumerate() {
                per_worker[i % n].push((fd, actual));
            }
        }

        // Hand-off listeners: one socket, shared by every worker.
        // (The socket a binary upgrade handed over, else one bound now.)
        let mut handoff = Vec::new();
        let mut offered_handoff = Vec::new();
        for h in &config.handoff {
            let path = h.path.display().to_string();
            let bad = |source| ServeError::Handoff { path: path.clone(), source };
            let fd = match inherited.as_deref_mut().and_then(|i| i.handoff(&h.path)) {
                Some(fd) => fd,
                None => sys::Socket::seqpacket_listen(&h.path, rt.backlog).map_err(bad)?,
            };
            if offerable {
                offered_handoff
                    .push(upgrade::OfferedHandoff { path: h.path.clone(), fd: fd.try_clone().map_err(bad)? });
            }
            handoff.push((fd, h.path.clone()));
        }
        let mut handoff_per_worker: Vec<Vec<(OwnedFd, std::path::PathBuf)>> = (0..n).map(|_| Vec::new()).collect();
        for (fd, path) in &handoff {
            for fds in &mut handoff_per_worker {
                let dup = fd
                    .try_clone()
                    .map_err(|source| ServeError::Handoff { path: path.display().to_string(), source })?;
                fds.push((dup, path.clone()));
            }
        }
        drop(handoff);
        let bound: Vec<SocketAddr> = local_addrs.iter().map(|(_, actual)| *actual).collect();
        let admission = Arc::new(crate::conn::admission::Tables::new(&bound, n));
        let checker = crate::backend::health::Checker::start(cpus::admin_cpu(&cpus)).map_err(ServeError::Health)?;
        checker.watch(&config.pools);

        let started = Instant::now();
        let timing = !matches!(std::env::var_os(lifecycle::NO_LATENCY_ENV), Some(v) if !v.is_empty() && v != "0");
        let access_log = match &rt.access_log {
            Some(path) => Some(
                Sink::open(path)
                    .map_err(|source| ServeError::AccessLog { path: path.display().to_string(), source })?,
            ),
            None => None,
        };
        let admin_addr = config.admin;
        let admin_socket = config.admin_settings.socket.clone();
        let max_connections = config.admin_settings.max_connections;
        let registry = Registry::new(n);
        publish_config(&registry, &config, None);
        reload::publish_gauges(&registry, &config);
        let shared_config = Arc::new(ArcSwap::from_pointee(config));
        let accepting = Arc::new(AtomicBool::new(true));
        let mut commands = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            commands.push(tx);
            receivers.push(rx);
        }
        let worker_cpus: Vec<usize> = cpus.iter().flatten().copied().collect();
        let shared = Arc::new(Shared {
            config: Arc::clone(&shared_config),
            registry: registry.clone(),
            commands,
            listeners: Mutex::new(local_addrs),
            access_log: Mutex::new(None),
            worker_cpus,
            retired: Mutex::new(Vec::new()),
            checker,
            admission: Arc::clone(&admission),
            offered: offerable.then(|| Arc::new(Mutex::new(offered))),
        });
        let plane = control::start(Arc::clone(&shared)).map_err(ServeError::Thread)?;
        let mut offered_admin = None;
        let admin = match (admin_addr, &admin_socket) {
            (None, None) => None,
            _ => {
                let state = admin::State {
                    registry: registry.clone(),
                    accepting: Arc::clone(&accepting),
                    started,
                    config: Arc::clone(&shared_config),
                    control: Some(Arc::new(plane.submitter())),
                    max_connections,
                    rates: Arc::default(),
                };
                let addr = admin_addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
                let bad = |source| ServeError::Admin { addr, source };
                // The TCP socket a binary upgrade handed over, else one bound now.
                let tcp = match admin_addr {
                    Some(a) => Some(match inherited.and_then(|i| i.admin(a)) {
                        Some(l) => l,
                        None => std::net::TcpListener::bind(a).map_err(bad)?,
                    }),
                    None => None,
                };
                if let (true, Some(l)) = (offerable, &tcp) {
                    let bound = l.local_addr().map_err(bad)?;
                    let fd = OwnedFd::from(l.try_clone().map_err(bad)?);
                    offered_admin = Some(upgrade::OfferedAdmin { configured: addr, bound, fd });
                }
                Some(Admin::start_on(tcp, admin_socket, state, cpus::admin_cpu(&cpus)).map_err(bad)?)
            }
        };
        let (stop, stop_rx) = watch::channel(false);
        let handed_off = Arc::new(OnceLock::new());
        let (done_tx, done) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), worker::StartError>>();
        let quic_listeners: Vec<SocketAddr> = config_quic_addrs(&udp_per_worker);
        let quic_handed_off = Arc::new(OnceLock::new());
        let handoff_handed_off = Arc::new(OnceLock::new());
        for (id, (((((cpu, listeners), udp), commands), handoff), quic_flows)) in cpus
            .iter()
            .copied()
            .zip(per_worker)
            .zip(udp_per_worker)
            .zip(receivers)
            .zip(handoff_per_worker)
            .zip(quic_flows)
            .enumerate()
        {
            let w = worker::Setup {
                id,
                cpu,
                ring: RingOptions { entries: rt.ring_entries, sqpoll: rt.sqpoll, sqpoll_idle_ms: rt.sqpoll_idle_ms },
                pipe_pool,
                listeners,
                udp,
                quic_flows,
                quic_handed_off: Arc::clone(&quic_handed_off),
                handoff_handed_off: Arc::clone(&handoff_handed_off),
                config: Arc::clone(&shared_config),
                slot: registry.slot(id),
                stop: stop_rx.clone(),
                timing,
                log: access_log.as_ref().map(|s| s.writer(rt.access_log_sample)),
                commands,
                handed_off: Arc::clone(&handed_off),
                admission: Arc::clone(&admission),
                handoff,
            };
            let ready = ready_tx.clone();
            let done = done_tx.clone();
            std::thread::Builder::new()
                .name(format!("sni-worker-{id}"))
                .spawn(move || {
                    worker::main(w, ready);
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
                    return Err(e.into());
                }
                Err(_) => break,
            }
        }
        *lock(&shared.access_log) = access_log;
        let watcher = watcher::start(Arc::clone(&shared), plane.submitter());
        let admin_bound = admin.as_ref().and_then(Admin::local_addr);
        let control = Arc::new(Control {
            registry: registry.clone(),
            admin: Mutex::new(admin),
            stop,
            accepting,
            handed_off,
            quic_handed_off,
            handoff_handed_off,
            commands: shared.commands.clone(),
        });
        tracing::info!(
            workers = n,
            cpus = ?cpus,
            listeners = ?lock(&shared.listeners).iter().map(|l| l.1).collect::<Vec<_>>(),
            quic = ?quic_listeners,
            splice = rt.splice,
            pipe_pool,
            ring_entries = rt.ring_entries,
            sqpoll = rt.sqpoll,
            fd_limit,
            admin = ?admin_bound,
            access_log = ?rt.access_log,
            latency_histograms = timing,
            "sni-dispatch serving"
        );
        Ok(Self {
            config: shared_config,
            shared,
            registry,
            done,
            workers: n,
            control,
            admin_addr: admin_bound,
            plane,
            watcher,
            started,
            offered_admin,
            offered_handoff,
            offer: None,
        })
    }

    /// Offers the listening sockets on the unix socket `path` for a binary upgrade (see
    /// [`upgrade`]); `then` runs once a new process has taken them over and this one has stopped
    /// accepting (`run` raises SIGTERM there, to drain and exit). Needs a server started with
    /// `offerable`.
    pub fn offer_listeners(&mut self, path: &std::path::Path, then: Box<dyn Fn() + Send>) -> Result<(), ServeError> {
        let Some(listeners) = self.shared.offered.clone().filter(|_| self.offer.is_none()) else {
            return Err(UpgradeError::Protocol {
                path: path.to_owned(),
                reason: "the server was started without keeping its sockets to offer".into(),
            }
            .into());
        };
        let control: Arc<dyn upgrade::HandOver> = Arc::clone(&self.control) as _;
        let handoff = std::mem::take(&mut self.offered_handoff);
        self.offer = Some(upgrade::Offer::start(path, listeners, self.offered_admin.take(), handoff, control, then)?);
        Ok(())
    }

    /// The admin endpoint's bound address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Asks the control thread for a reload (what SIGHUP does), without waiting for it.
    pub fn request_reload(&self, why: &'static str) {
        self.plane.reload(why);
    }

    /// The one-screen summary (what SIGUSR1 prints).
    pub fn summary(&self) -> String {
        admin::render::summary(&self.registry, self.started.elapsed())
    }

    /// The bound listener addresses, in configuration order (ports resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.shared.listeners).iter().map(|l| l.1).collect()
    }

    /// Per-worker counters, published every [`metrics::PUBLISH_EVERY`].
    pub fn metrics(&self) -> &Registry {
        &self.registry
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Stops accepting, waits for open connections up to `drain_timeout_ms`; returns whether every
    /// worker finished in time (the others are abandoned and end with the process).
    pub fn shutdown(mut self) -> bool {
        drop(self.offer.take());
        let timeout = Duration::from_millis(self.config.load().runtime.drain_timeout_ms);
        self.control.accepting.store(false, Ordering::SeqCst);
        let _ = self.control.stop.send(true);
        let deadline = Instant::now() + timeout + Duration::from_millis(200);
        let mut finished = 0;
        while finished < self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(_) => finished += 1,
                Err(_) => break,
            }
        }
        if let Some(w) = self.watcher {
            w.stop();
        }
        self.plane.stop();
        self.control.stop_admin();
        self.shared.checker.stop();
        // A hand-off socket a new process took over is its own now, file included.
        let handed = self.control.handoff_handed_off.get().cloned().unwrap_or_default();
        for h in self.config.load().handoff.iter().filter(|h| !handed.contains(&h.path)) {
            let _ = std::fs::remove_file(&h.path);
        }
        if let Some(log) = lock(&self.shared.access_log).take() {
            // Workers that finished have dropped their writers (after a final flush).
            log.close(Duration::from_secs(if finished == self.workers { 5 } else { 0 }));
        }
        finished == self.workers
    }
}

/// Publishes what the configuration is (generation, size, when it changed) for the readers;
/// `timings` are the last reload's parse, build and swap times.
pub(crate) fn publish_config(registry: &Registry, c: &Config, timings: Option<[f64; 3]>) {
    let at = c.changed_at.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let (exact, wild) = c.table.name_count();
    registry.control(|m| {
        m.counters.config_generation = c.generation;
        m.counters.config_routes = c.table.len() as u64;
        m.counters.config_names = (exact + wild) as u64;
        m.counters.config_delta_names = c.table.delta_len() as u64;
        m.changed_at = at;
        if let Some(t) = timings {
            m.last = t;
        }
    });
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Binds `n` sockets to `addr` (one per worker, `SO_REUSEPORT`); the first fixes the port of a
/// `:0` address for the others. Returns the bound address and the sockets.
pub(crate) fn bind_all(addr: SocketAddr, n: usize, backlog: u32) -> Result<(SocketAddr, Vec<OwnedFd>), ServeError> {
    let first = bind(addr, backlog).map_err(|source| ServeError::Bind { addr, source })?;
    let actual = first.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr);
    let mut fds: Vec<OwnedFd> = vec![first.into()];
    for _ in 1..n {
        let s = bind(actual, backlog).map_err(|source| ServeError::Bind { addr: actual, source })?;
        fds.push(s.into());
    }
    Ok((actual, fds))
}

/// Duplicates of a listener's sockets (to offer them to a new binary).
pub(crate) fn dup_all(sockets: &[OwnedFd], addr: SocketAddr) -> Result<Vec<OwnedFd>, ServeError> {
    sockets
        .iter()
        .map(OwnedFd::try_clone)
        .collect::<io::Result<Vec<_>>>()
        .map_err(|source| ServeError::Bind { addr, source })
}

/// The QUIC listeners' addresses (one worker's list is every worker's).
fn config_quic_addrs(udp: &[Vec<worker::UdpSocket>]) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = udp.first().map(|v| v.iter().map(|u| u.addr).collect()).unwrap_or_default();
    all.dedup();
    all
}

/// A QUIC flow as the running process handed it over, as a worker takes it (`None`: its
/// connection ID is not hex, so the flow is left out).
fn upgrade_flow(f: upgrade::Flow) -> Option<worker::quic::Handed> {
    let m = f.msg;
    let scid = (0..m.scid.len())
        .step_by(2)
        .map(|i| m.scid.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    Some(worker::quic::Handed {
        listener: m.listener,
        slot: m.socket,
        client: m.client,
        local: m.local,
        scid,
        route: m.route,
        backend: m.backend,
        fd: f.fd,
    })
}

/// A worker's QUIC flow as this process hands it over.
fn offer_flow(h: worker::quic::Handed) -> upgrade::Flow {
    let scid = h.scid.iter().map(|b| format!("{b:02x}")).collect();
    upgrade::Flow {
        msg: upgrade::FlowMsg {
            listener: h.listener,
            socket: h.slot,
            client: h.client,
            local: h.local,
            scid,
            route: h.route,
            backend: h.backend,
        },
        fd: h.fd,
    }
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
    // They also inherit delayed-ACK ("pingpong") mode, set after listen(2), which clears it: the
    // ACK of the client's first bytes rides with the first bytes sent back (the back end's
    // ServerHello, or ours) instead of going alone, one segment fewer per connection (HAProxy's
    // `option tcp-smart-accept` sets the same). A hello that arrives in pieces turns quick ACKs
    // back on for its connection (`Socket::ack_now`), so a client whose Nagle holds the rest
    // waits for no delayed ACK; the kernel leaves the mode by itself when a delayed ACK had to
    // go alone. A kernel that refuses it costs one segment per connection, nothing else.
    let _ = s.set_quickack(false);
    Ok(s)
}
