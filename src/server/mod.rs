//! The server: every worker and the listening sockets they share, the admin endpoint and the
//! access log, started together and stopped together.
//!
//! - [`Server::start`] binds each `[[listener]]` once per worker (`SO_REUSEPORT`; a `:0` listener
//!   gets one port for all workers), starts the workers on their CPUs ([`cpus`]) and returns once
//!   each has its ring;
//! - [`Server::reload`] swaps in a new configuration for new connections;
//! - [`Server::shutdown`] stops accepting and drains open connections up to `drain_timeout_ms`;
//! - [`lifecycle::serve`] drives all three from signals (what `sni-dispatch run` does).
pub mod cpus;
pub mod lifecycle;
mod reload;

pub use lifecycle::{serve, NO_LATENCY_ENV};

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
use std::sync::{mpsc, Arc};
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
    #[error("hand-off listener {path}: {source}")]
    Handoff { path: String, source: io::Error },
    #[error("health checks: {0}")]
    Health(io::Error),
}

/// A running set of workers (what [`serve`] drives; usable directly from tests and tools).
pub struct Server {
    pub(crate) config: Arc<ArcSwap<Config>>,
    registry: Registry,
    local_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    done: mpsc::Receiver<usize>,
    workers: usize,
    accepting: Arc<AtomicBool>,
    admin: Option<Admin>,
    access_log: Option<Sink>,
    pub(crate) checker: crate::backend::health::Checker,
    pub(crate) started: Instant,
}

impl Server {
    /// Binds every listener (port 0 becomes one port shared by all workers), starts the workers
    /// and returns once each has its ring.
    pub fn start(config: Config) -> Result<Self, ServeError> {
        if config.listeners.is_empty() && config.handoff.is_empty() {
            return Err(ServeError::NoListeners);
        }
        let rt = config.runtime.clone();
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
        let mut local_addrs = Vec::new();
        let mut per_worker: Vec<Vec<(OwnedFd, SocketAddr)>> = (0..n).map(|_| Vec::new()).collect();
        let mut udp_per_worker: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
        for l in &config.listeners {
            let addr = l.address;
            let first = bind(addr, rt.backlog).map_err(|source| ServeError::Bind { addr, source })?;
            let actual = first.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr);
            local_addrs.push(actual);
            per_worker[0].push((first.into(), actual));
            for fds in per_worker.iter_mut().skip(1) {
                let s = bind(actual, rt.backlog).map_err(|source| ServeError::Bind { addr: actual, source })?;
                fds.push((s.into(), actual));
            }
            if l.quic {
                // UDP on the TCP listener's port (a `:0` listener's too), one socket per worker.
                for fds in udp_per_worker.iter_mut() {
                    let (fd, _, features) = sys::udp::bind_udp(actual, rt.quic_gro)
                        .map_err(|source| ServeError::Bind { addr: actual, source })?;
                    fds.push((fd, actual, features));
                }
            }
        }

        // Hand-off listeners: one socket, shared by every worker.
        let mut handoff = Vec::new();
        for h in &config.handoff {
            let path = h.path.display().to_string();
            let fd = sys::Socket::seqpacket_listen(&h.path, rt.backlog)
                .map_err(|source| ServeError::Handoff { path: path.clone(), source })?;
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
        let admission = Arc::new(crate::conn::admission::Tables::new(&local_addrs, n));
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
        let shared = Arc::new(ArcSwap::from_pointee(config));
        let registry = Registry::new(n);
        let accepting = Arc::new(AtomicBool::new(true));
        let admin = match admin_addr {
            Some(addr) => {
                let state = admin::State {
                    registry: registry.clone(),
                    accepting: Arc::clone(&accepting),
                    started,
                    config: Arc::clone(&shared),
                    rates: Arc::default(),
                };
                Some(
                    Admin::start(addr, state, cpus::admin_cpu(&cpus))
                        .map_err(|source| ServeError::Admin { addr, source })?,
                )
            }
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), worker::StartError>>();
        let quic_listeners: Vec<SocketAddr> = config_quic_addrs(&udp_per_worker);
        for (id, (((cpu, listeners), udp), handoff)) in
            cpus.iter().copied().zip(per_worker).zip(udp_per_worker).zip(handoff_per_worker).enumerate()
        {
            let w = worker::Setup {
                id,
                cpu,
                ring: RingOptions { entries: rt.ring_entries, sqpoll: rt.sqpoll, sqpoll_idle_ms: rt.sqpoll_idle_ms },
                pipe_pool,
                listeners,
                udp,
                config: Arc::clone(&shared),
                slot: registry.slot(id),
                stop: stop_rx.clone(),
                timing,
                log: access_log.as_ref().map(|s| s.writer(rt.access_log_sample)),
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
        tracing::info!(
            workers = n,
            cpus = ?cpus,
            listeners = ?local_addrs,
            quic = ?quic_listeners,
            splice = rt.splice,
            pipe_pool,
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
            checker,
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
        self.checker.stop();
        for h in &self.config.load().handoff {
            let _ = std::fs::remove_file(&h.path);
        }
        if let Some(log) = self.access_log {
            // Workers that finished have dropped their writers (after a final flush).
            log.close(Duration::from_secs(if finished == self.workers { 5 } else { 0 }));
        }
        finished == self.workers
    }
}

/// The QUIC listeners' addresses (one worker's list is every worker's).
fn config_quic_addrs(udp: &[Vec<(OwnedFd, SocketAddr, sys::udp::UdpFeatures)>]) -> Vec<SocketAddr> {
    udp.first().map(|v| v.iter().map(|(_, a, _)| *a).collect()).unwrap_or_default()
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
