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
//! - [`shun`]: clients over their limits shunned in the kernel (the listener's SYN filter);
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
pub mod shun;
pub mod terminate;
pub mod trace;

use crate::access_log;
use crate::backend::Pools;
use crate::config::{Config, Limits, Route};
use crate::metrics::{Direction, DropReason, Local};
use crate::proxy_protocol;
use crate::relay::{self, BufPool, PipePool, Relayed, Scratch, Timers};
use crate::route::{ProxyProtocol, RouteId};
use crate::sys::Socket;
use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
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
    /// The clients this worker's listening sockets drop in the kernel (borrowed, never across
    /// an await).
    pub shuns: RefCell<shun::Shuns>,
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

/// A route as a connection keeps it: the route and the back-end state of the configuration it
/// was chosen in (balancing, health, per-route statistics). Workers hand out `Rc`s of their own
/// to one `Held` per route, so cloning one is a non-atomic increment on a count no other core
/// touches.
#[derive(Debug)]
pub struct Held {
    /// The route's id in the table (and in `pools`) it came from.
    pub id: RouteId,
    pub route: Arc<Route>,
    pub pools: Arc<Pools>,
}

impl Held {
    /// Route `id` of `cfg`, with `cfg`'s back-end state.
    pub fn of(cfg: &Config, id: RouteId) -> Self {
        Self { id, route: Arc::clone(cfg.table.route_arc(id)), pools: Arc::clone(&cfg.pools) }
    }
}

impl std::ops::Deref for Held {
    type Target = Route;
    fn deref(&self) -> &Route {
        &self.route
    }
}

/// A route as a connection keeps it (see [`Held`]).
pub type Kept = Rc<Held>;

/// How a connection reaches the running configuration (its worker implements it): the
/// current snapshot, read when the hello is complete, and the route it chose as a handle the
/// connection keeps for its life. A connection holds neither the snapshot nor anything shared
/// across cores after routing: the worker hands out `Rc`s of its own to each route's `Arc`.
pub trait Snapshots {
    /// The configuration new decisions use.
    fn current(&self) -> Rc<Arc<Config>>;
    /// Route `id` of `cfg` (an id `cfg`'s table gave), as the connection keeps it.
    fn keep(&self, cfg: &Config, id: RouteId) -> Kept;
}

/// A connection whose ClientHello was read and routed.
pub struct Routed {
    pub id: RouteId,
    /// The route, kept for the connection's life (not the snapshot it came from).
    pub route: Kept,
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
/// The limits (timeouts, sizes) and the listener's settings (PROXY in, admission) are those of
/// the configuration current at accept; the route is chosen with the one current when the hello
/// is complete, and from then on the connection holds only its route (no snapshot).
///
/// The futures of the stages a connection keeps while it is idle (this one, the passthrough
/// relay) are `async move` blocks rather than `async fn`s, whose arguments rustc stores twice;
/// stages that pass quickly are boxed. An idle connection's task is what it costs (see
/// `tuning/README.md`, "Memory per connection").
#[allow(clippy::manual_async_fn)] // an `async move` block: its arguments are stored once
pub fn serve<'a, S: Snapshots>(
    res: &'a Resources,
    snaps: &'a S,
    conn: &'a mut Accepted,
) -> impl Future<Output = ()> + 'a {
    async move {
        let at_accept = snaps.current();
        let lim = at_accept.runtime.limits();
        let mut t = Trace::new(conn.at, res.log.as_ref().is_some_and(|l| l.sample()));
        let admitted = {
            let listener = if conn.handed_off { None } else { at_accept.listener(conn.listen) };
            // Boxed: it is passed through quickly, and the task need not hold its state.
            Box::pin(admit(res, &lim, listener, conn)).await
        };
        if t.log {
            t.client = conn.peer();
            t.local = Some(conn.dialed());
        }
        let (outcome, logged, route) = match admitted {
            Ok(guard) => {
                let o = run(res, snaps, &lim, at_accept, conn, &mut t).await;
                drop(guard);
                o
            }
            Err(reason) => {
                drop(at_accept);
                (Outcome::Dropped(reason), false, None)
            }
        };
        close(res, route.as_deref(), conn, &t, outcome, logged);
        trace::finish(res, route.as_deref(), &t, &outcome);
    }
}

/// What happens before the hello: the PROXY header where the listener requires one, then the
/// listener's address lists and per-client limits (the guard counts the connection open).
async fn admit<'r>(
    res: &'r Resources,
    lim: &Limits,
    listener: Option<&crate::config::Listener>,
    conn: &mut Accepted,
) -> Result<Option<admission::Admitted<'r>>, DropReason> {
    let Some(l) = listener else { return Ok(None) };
    if let Some(accept) = l.accept_proxy {
        let timeout = lim.hello_timeout();
        conn.hello_deadline = Some(conn.at.unwrap_or_else(Instant::now) + timeout);
        proxy_in::read(res, l, accept, conn, timeout).await?;
    }
    if l.admission.before_hello() {
        return admission::before_hello(res, l, conn);
    }
    Ok(None)
}

/// The connection's outcome, whether its drop line was written already (a refused hello's,
/// where the cause was at hand), and its route. `at_accept` (the snapshot the listener's
/// settings come from) is let go of once the hello is routed: from then on the connection holds
/// only its route.
#[allow(clippy::manual_async_fn)] // an `async move` block: its arguments are stored once
#[allow(clippy::redundant_allocation)] // the worker's own `Rc` of the snapshot: no atomic count
fn run<'a, S: Snapshots>(
    res: &'a Resources,
    snaps: &'a S,
    lim: &'a Limits,
    at_accept: Rc<Arc<Config>>,
    conn: &'a Accepted,
    t: &'a mut Trace,
) -> impl Future<Output = (Outcome, bool, Option<Kept>)> + 'a {
    async move {
        // The blocks keep what only the hello and the opening need out of the task's state
        // while it relays (what an idle connection costs).
        let kept: Kept;
        // The block's value is the relay future, awaited in place (a named future would be
        // stored twice).
        let outcome = {
            let routed = {
                let listener = if conn.handed_off { None } else { at_accept.listener(conn.listen) };
                let read = hello::read(res, lim, snaps, listener, conn, t).await;
                drop(at_accept);
                match read {
                    Ok(r) => r,
                    Err(r) => return (Outcome::Dropped(r.reason), r.logged, None),
                }
            };
            kept = Rc::clone(&routed.route);
            if let Some(stats) = kept.pools.route_stats(routed.id) {
                stats.routed(res.worker);
                t.route_open = true;
            }
            let opened = match &kept.route.action {
                // Boxed: the TLS state machine would otherwise make every connection's task
                // (passthrough included) several KiB larger, and each task is memcpy'd when it
                // is spawned.
                crate::route::Action::Terminate(tls) => {
                    Err(Box::pin(terminate::run(res, lim, &kept, tls, conn, routed, t)).await)
                }
                // Opening is boxed, as every stage a connection passes through quickly: the task
                // then holds little more than the relay, which is what an idle connection costs.
                crate::route::Action::Passthrough => {
                    Box::pin(passthrough::open(res, lim, &kept, conn, routed, t)).await
                }
            };
            // The relay owns what it relays (nothing of this block stays in the task's state).
            passthrough::relay(res, lim, conn, opened)
        }
        .await;
        (outcome, false, Some(kept))
    }
}

/// Counts the outcome (the one place that does).
fn close(res: &Resources, route: Option<&Held>, conn: &Accepted, t: &Trace, outcome: Outcome, logged: bool) {
    if let (true, Some(held)) = (t.route_open, route) {
        if let Some(stats) = held.pools.route_stats(held.id) {
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
