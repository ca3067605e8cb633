//! One connection, from accept to close, as explicit states. Each transition consumes its state
//! and yields the next one or the connection's [`Outcome`]:
//!
//! ```text
//! Accepted ──read_hello──▶ Routed ──┬─ passthrough: connect ──▶ Connected ──relay──▶ Relayed
//!    │                              └─ terminate:   handshake ─▶ (TLS) ─────relay──▶ Relayed
//!    └──────────── any step ──────────────────────────────────────────────────▶ Dropped(reason)
//! ```
//!
//! - [`proxy_in`]: on a listener with `accept_proxy`, the PROXY header first (its addresses
//!   replace the socket's);
//! - [`admission`]: the listener's address lists and per-client limits (before the hello), its
//!   JA4 lists (on the hello);
//! - [`hello`]: reading the ClientHello within `hello_timeout_ms`, one parse per hello;
//! - [`routing`]: where the hello goes (dedicated IP, SNI, fallback), `min_tls`, the PROXY header;
//! - [`passthrough`]: connecting to the back ends, the back end's ServerHello version where
//!   `min_tls` needs it, and the relay (splice or buffered);
//! - [`terminate`]: the TLS handshake with the route's certificate, then the TLS relay;
//! - [`trace`]: what a connection measured, turned into histograms and the access-log line.
//!
//! Every outcome is counted in one place, [`close`]: a drop by its [`DropReason`], a relay by
//! its kind, bytes, and how it ended. Nothing a peer sends can end more than its own connection.

pub mod admission;
pub mod hello;
pub mod passthrough;
pub mod proxy_in;
pub mod routing;
pub mod terminate;
pub mod trace;

use crate::access_log;
use crate::config::{Config, Route};
use crate::metrics::{Direction, DropReason, Local};
use crate::proxy_protocol;
use crate::relay::{self, BufPool, PipePool, Relayed, Scratch, Timers};
use crate::route::{ProxyProtocol, RouteId};
use crate::sys::Socket;
use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trace::Trace;

/// What connections share with their worker (one thread, so `RefCell`s): counters, pools, the
/// scratch buffer every read lands in, the wheel of deadlines, the access-log writer.
pub struct Resources {
    /// The worker's index, for log lines.
    pub worker: usize,
    pub metrics: Local,
    pub pipes: RefCell<PipePool>,
    pub bufs: RefCell<BufPool>,
    /// Borrowed only between awaits (see [`Scratch`]).
    pub scratch: RefCell<Scratch>,
    /// Hello timeouts, idle watchdogs: one wheel, advanced by the worker's tick.
    pub timers: Timers,
    /// Record latency histograms (and read the clock for them).
    pub timing: bool,
    pub log: Option<access_log::Writer>,
    /// The per-client counts of the listeners (shared by every worker).
    pub admission: Arc<admission::Tables>,
}

impl Resources {
    /// A timestamp for the latency histograms, when they are on.
    #[inline]
    pub fn now(&self) -> Option<Instant> {
        self.timing.then(Instant::now)
    }
}

/// A connection just accepted on a listener bound to `listen`.
pub struct Accepted {
    pub client: Socket,
    pub listen: SocketAddr,
    /// When it was accepted (with latency histograms on).
    pub at: Option<Instant>,
    /// Who the client is and what it dialed, when something in front of us said so (a PROXY
    /// header on a listener that accepts one, or the process that handed the connection over);
    /// else the socket's own addresses count.
    pub proxied: Option<Proxied>,
    /// TLVs of the inbound PROXY v2 header to pass on in the outbound one.
    pub tlvs: Vec<u8>,
    /// ClientHello bytes already read (by the process that handed the connection over).
    pub early: Vec<u8>,
    /// Handed over on a hand-off listener: no listener's rules apply (the sender applied them).
    pub handed_off: bool,
    /// When the hello must be complete, if not `hello_timeout_ms` from when reading it starts
    /// (behind a PROXY header: `hello_timeout_ms` from accept, header included).
    pub hello_deadline: Option<Instant>,
}

/// The addresses a trusted PROXY header gave for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxied {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

impl Accepted {
    /// A connection accepted on `listen`, its addresses those of the socket.
    pub fn new(client: Socket, listen: SocketAddr, at: Option<Instant>) -> Self {
        Self {
            client,
            listen,
            at,
            proxied: None,
            tlvs: Vec::new(),
            early: Vec::new(),
            handed_off: false,
            hello_deadline: None,
        }
    }

    /// The client's address (getpeername(2) unless a PROXY header said otherwise).
    pub fn peer(&self) -> Option<SocketAddr> {
        match self.proxied {
            Some(p) => Some(p.source),
            None => self.client.peer_addr().ok(),
        }
    }

    /// The address the client dialed, the dedicated IP: what a PROXY header said, else the
    /// listener's own address, else (a wildcard listener) getsockname(2).
    pub fn dialed(&self) -> SocketAddr {
        match self.proxied {
            Some(p) => p.destination,
            None if self.listen.ip().is_unspecified() => self.client.local_addr().unwrap_or(self.listen),
            None => self.listen,
        }
    }
}

/// A connection whose ClientHello was read and routed.
pub struct Routed {
    pub id: RouteId,
    /// What goes to the back end first: the PROXY header (passthrough, if configured) followed by
    /// the ClientHello bytes read. On a terminating route: the hello bytes, for rustls.
    pub first: Vec<u8>,
    /// The PROXY header's length at the start of `first` (0 without one).
    pub header: usize,
    /// The SNI's hash, for `balance = "hash_sni"` (0 otherwise).
    pub sni_hash: u64,
    /// The route's `min_tls`, when the client also offered versions below it: the back end's
    /// choice is then checked in its ServerHello ([`passthrough::check_server_version`]).
    pub check_server: Option<crate::route::TlsVersion>,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Closed before (or instead of) being relayed.
    Dropped(DropReason),
    /// Relayed until both sides closed, an error, or the idle timeout.
    Relayed(Relayed),
}

/// Serves one accepted connection to its end, then counts and logs how it ended. The caller
/// owns the connection (and closes it when this is done), so that the task stores it once.
///
/// The futures of the stages a connection keeps while it is idle (this one, the passthrough
/// relay) are `async move` blocks rather than `async fn`s, whose arguments rustc stores twice;
/// stages that pass quickly are boxed. An idle connection's task is what it costs (see
/// `tuning/README.md`, "Memory per connection").
#[allow(clippy::manual_async_fn)] // an `async move` block: its arguments are stored once
pub fn serve<'a>(res: &'a Resources, cfg: &'a Config, conn: &'a mut Accepted) -> impl Future<Output = ()> + 'a {
    async move {
        let mut t = Trace::new(conn.at, res.log.as_ref().is_some_and(|l| l.sample()));
        let listener = if conn.handed_off { None } else { cfg.listener(conn.listen) };
        // Boxed: it is passed through quickly, and the task need not hold its state.
        let admitted = Box::pin(admit(res, cfg, listener, conn)).await;
        if t.log {
            t.client = conn.peer();
            t.local = Some(conn.dialed());
        }
        let (outcome, logged) = match admitted {
            Ok(guard) => {
                let o = run(res, cfg, conn, &mut t).await;
                drop(guard);
                o
            }
            Err(reason) => (Outcome::Dropped(reason), false),
        };
        close(res, cfg, conn, &t, outcome, logged);
        trace::finish(res, cfg, &t, &outcome);
    }
}

/// What happens before the hello: the PROXY header where the listener requires one, then the
/// listener's address lists and per-client limits (the guard counts the connection open).
async fn admit<'r>(
    res: &'r Resources,
    cfg: &Config,
    listener: Option<&crate::config::Listener>,
    conn: &mut Accepted,
) -> Result<Option<admission::Admitted<'r>>, DropReason> {
    let Some(l) = listener else { return Ok(None) };
    if let Some(accept) = l.accept_proxy {
        let timeout = Duration::from_millis(cfg.runtime.hello_timeout_ms);
        conn.hello_deadline = Some(conn.at.unwrap_or_else(Instant::now) + timeout);
        proxy_in::read(res, l, accept, conn, timeout).await?;
    }
    if l.admission.before_hello() {
        return admission::before_hello(res, l, conn);
    }
    Ok(None)
}

/// The connection's outcome, and whether its drop line was written already (a refused hello's,
/// where the cause was at hand).
#[allow(clippy::manual_async_fn)] // an `async move` block: its arguments are stored once
fn run<'a>(
    res: &'a Resources,
    cfg: &'a Config,
    conn: &'a Accepted,
    t: &'a mut Trace,
) -> impl Future<Output = (Outcome, bool)> + 'a {
    async move {
        let routed = match hello::read(res, cfg, conn, t).await {
            Ok(r) => r,
            Err(r) => return (Outcome::Dropped(r.reason), r.logged),
        };
        if let Some(stats) = cfg.pools.route_stats(routed.id) {
            stats.routed(res.worker);
            t.route_open = true;
        }
        let route = cfg.table.route(routed.id);
        let tls = match &route.action {
            crate::route::Action::Passthrough => None,
            crate::route::Action::Terminate(tls) => Some(tls),
        };
        let outcome = if let Some(tls) = tls {
            // Boxed: the TLS state machine would otherwise make every connection's task (passthrough
            // included) several KiB larger, and each task is memcpy'd when it is spawned.
            Box::pin(terminate::run(res, cfg, route, tls, conn, routed, t)).await
        } else {
            // Opening is boxed, as every stage a connection passes through quickly: the task
            // then holds little more than the relay, which is what an idle connection costs.
            let opened = Box::pin(passthrough::open(res, cfg, route, conn, routed, t)).await;
            match opened {
                Ok(opened) => passthrough::relay(res, cfg, conn, opened).await,
                Err(outcome) => outcome,
            }
        };
        (outcome, false)
    }
}

/// Counts the outcome (the one place that does).
fn close(res: &Resources, cfg: &Config, conn: &Accepted, t: &Trace, outcome: Outcome, logged: bool) {
    if let (true, Some(id)) = (t.route_open, t.route) {
        if let Some(stats) = cfg.pools.route_stats(id) {
            let dropped = match outcome {
                Outcome::Dropped(r) => Some(r),
                Outcome::Relayed(_) => None,
            };
            if let (Some(_), Some(d)) = (t.backend, trace::between(t.connect_start, t.connected_at)) {
                stats.connected(res.worker, d);
            }
            stats.closed(res.worker, dropped);
        }
    }
    match outcome {
        Outcome::Dropped(reason) => {
            if reason == DropReason::DeniedJa4 {
                admission::send_refusal_alert(conn);
            }
            res.metrics.dropped(reason);
            if !logged {
                crate::debug_every_second!(
                    worker = res.worker,
                    peer = ?conn.peer(),
                    reason = reason.as_str(),
                    "connection dropped"
                );
            }
        }
        Outcome::Relayed(r) => {
            res.metrics.bump(|c| {
                c.relays.bump(r.kind);
                c.bytes.add(Direction::ClientToBackend, r.to_backend);
                c.bytes.add(Direction::BackendToClient, r.to_client);
                match r.end {
                    relay::End::Closed => {}
                    relay::End::Idle => c.idle_timeouts += 1,
                    relay::End::Error(cause) => c.relay_errors.bump(cause),
                }
            });
            tracing::trace!(worker = res.worker, end = ?r.end, "connection closed");
        }
    }
}

/// The PROXY header for `route` (empty when it sends none): the client's address, the address it
/// dialed, SNI and ALPN. `room` is extra capacity to reserve for what follows the header.
fn proxy_header(
    _res: &Resources,
    route: &Route,
    conn: &Accepted,
    sni: Option<&str>,
    alpn: Option<&[u8]>,
    room: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(room + proxy_protocol_room(route.proxy_protocol, sni, alpn));
    if route.proxy_protocol != ProxyProtocol::None {
        let peer = conn.peer().unwrap_or_else(|| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0));
        let header = proxy_protocol::Header { client: peer, local: conn.dialed(), sni, alpn, tlvs: &conn.tlvs };
        proxy_protocol::encode(route.proxy_protocol, &header, &mut out);
    }
    out
}

/// Room for a PROXY header: v1 is at most 107 bytes; v2 is 16 + 36 (IPv6 addresses) plus the
/// SNI and ALPN TLVs (3 bytes of header each).
fn proxy_protocol_room(p: ProxyProtocol, sni: Option<&str>, alpn: Option<&[u8]>) -> usize {
    match p {
        ProxyProtocol::None => 0,
        ProxyProtocol::V1 => 108,
        ProxyProtocol::V2 => 52 + 3 + sni.map_or(0, str::len) + 3 + alpn.map_or(0, <[u8]>::len),
    }
}

/// Sends all of `buf[from..]`, then returns the buffer to the pool; whether it all went.
async fn send_and_recycle(res: &Resources, sock: &Socket, buf: Vec<u8>, from: usize) -> bool {
    let (r, buf) = sock.send_all(buf, from).await;
    res.bufs.borrow_mut().give(buf);
    r.is_ok()
}
