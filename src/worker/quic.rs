//! The worker's QUIC side: for each `[[listener]]` with `quic = true`, one `SO_REUSEPORT` UDP
//! socket per worker (the kernel hashes a client's 4-tuple to one worker, so each worker owns its
//! clients' flows and shares nothing), its receive loop, the pending and flow tables, forwarding
//! both ways, and the sweeper (pending timeouts, idle flows, gauges).
//!
//! A datagram from a client with a flow goes to the flow's back-end socket at once (a GRO train
//! as one GSO send). Otherwise its first packet decides ([`on_new`]): an Initial is opened and its
//! CRYPTO data added to the client's pending hello ([`crate::quic::Hello`]); once the ClientHello
//! is complete it is routed with the TCP table and precedence, a UDP socket connected to the
//! route's first back end is made, the buffered datagrams go out first, in the order they came,
//! and a task relays the back end's datagrams to the client (from the address the client dialed).
//!
//! Policy, documented in docs/configuration.md ("QUIC"):
//! - versions other than 1 and 2: a Version Negotiation packet (datagrams of 1200 bytes or more)
//!   and the datagram dropped (`unknown_version`);
//! - short-header, 0-RTT and Handshake packets from an address with no flow: dropped
//!   (`unknown_flow`); 0-RTT and Handshake packets of a pending flow are buffered with it;
//! - Version Negotiation and Retry packets from clients: dropped (`server_only`); a back end's
//!   Retry is forwarded like any datagram, and the client's next Initial (new DCID, same 4-tuple)
//!   stays on the flow;
//! - flows are pinned to the client's address and port: a migrated client (new port or address)
//!   is an unknown flow; QUIC-LB connection-ID routing is not done.

use super::Worker;
use crate::access_log;
use crate::backend::{self, BackendId, Plan, Pool, Shared, Tried};
use crate::config::{Config, Route};
use crate::hello::{self, Parsed, Reject, Transport};
use crate::metrics::{ConnectCause, Direction, DropReason, Hist, QuicDatagramDrop, QuicFlowDrop, QuicFlowEnd};
use crate::quic::{self, packet, Head, Hello, LongType, PendingTable};
use crate::route::{Action, Balance, Match, Miss, RouteId, Target};
use crate::sys::udp::{self, Received, RecvBatch, UdpFeatures};
use crate::sys::{Socket, Watched};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest datagram (or GRO train) read at once.
const BUF: usize = 65_536;
/// Datagrams (or trains) read per `recvmmsg`.
const SLOTS: usize = 8;
/// Datagrams handled per wake-up before other tasks get a turn.
const BURST: usize = 64;
/// The most bytes of a flow's first datagrams kept to replay to its next back end.
const REPLAY_BYTES: usize = 16 * 1024;
/// How often pending flows are expired and the clock read.
const TICK: Duration = Duration::from_millis(100);

/// A flow's key: which of the worker's QUIC sockets, and the client's address.
type Key = (u16, SocketAddr);

/// One QUIC socket of the worker.
pub(crate) struct Listener {
    pub(crate) index: u16,
    pub(crate) socket: Socket,
    /// The configured address; a wildcard means the dialed address comes from pktinfo.
    pub(crate) addr: SocketAddr,
    /// What the kernel offered (GRO), for the log.
    pub(crate) features: UdpFeatures,
    /// Its position among the listener's sockets (what a flow handed over in an upgrade names).
    pub(crate) slot: usize,
}

/// An open flow handed over in a binary upgrade (by the old process; to the new one): which
/// socket of which listener its client's datagrams arrive on, the client, the address it dialed,
/// its Source Connection ID, its route and back end by name, and its socket connected to the back
/// end (the same kernel socket in both processes).
#[derive(Debug)]
pub struct Handed {
    pub listener: SocketAddr,
    pub slot: usize,
    pub client: SocketAddr,
    pub local: IpAddr,
    pub scid: Vec<u8>,
    pub route: String,
    pub backend: String,
    pub fd: std::os::fd::OwnedFd,
}

/// A client whose ClientHello is not complete yet.
struct Pending {
    hello: Hello,
    /// The Source Connection ID of the client's first Initial.
    scid: Cid,
    /// Its datagrams as received, to be forwarded first, in order.
    dgrams: Vec<Vec<u8>>,
    bytes: usize,
    first_at: Instant,
    /// The address the client dialed, and the listener's port.
    local: IpAddr,
    port: u16,
    log: bool,
}

/// A connection ID, inline.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Cid([u8; packet::MAX_CID], u8);

impl Cid {
    fn of(b: &[u8]) -> Self {
        let mut c = [0u8; packet::MAX_CID];
        let n = b.len().min(packet::MAX_CID);
        c[..n].copy_from_slice(&b[..n]);
        Self(c, n as u8)
    }
}

/// A routed flow: it keeps its route (the worker's own handle of it), not the configuration
/// snapshot it was routed with, so a reload frees the old table under long-lived flows.
struct Flow {
    key: Key,
    /// The client's Source Connection ID: an Initial under another one from the same address and
    /// port is a new connection (a client reusing its port), routed afresh.
    scid: Cid,
    listener: Rc<Listener>,
    /// The address the client dialed (the source of every datagram sent back to it).
    local: IpAddr,
    route: crate::conn::Kept,
    backend: RefCell<Socket>,
    /// Its back end in `route.pools`, counted open there (least connections) while the flow
    /// lives ([`Shared::hold`]).
    backend_id: Cell<BackendId>,
    /// The pool members its plan has handed out (a failover goes on from there).
    tried: Cell<Tried>,
    /// What the hashes hash: the client's address, the SNI.
    balance_key: backend::Key,
    /// When the current back end got the flow's first datagrams (its first answer ends the
    /// "connect": latency, failures in a row reset).
    dialed_at: Cell<Instant>,
    /// GRO was asked for on the back-end socket (made without: see [`backend_loop`]).
    backend_gro: Cell<bool>,
    /// Until the back end's first datagram: the client's first datagrams, to replay to the next
    /// back end if this one answers with ICMP unreachable.
    replay: RefCell<Option<Vec<Vec<u8>>>>,
    last: Cell<Instant>,
    /// The client has sent a short-header packet: its handshake is done.
    confirmed: Cell<bool>,
    closed: Cell<bool>,
    opened: Instant,
    to_backend: Cell<(u64, u64)>,
    to_client: Cell<(u64, u64)>,
    log: Option<Box<LogInfo>>,
}

/// What a sampled flow's access-log line says about its hello.
struct LogInfo {
    sni: Option<String>,
    alpn: Option<String>,
    ja4: String,
    how: Match,
    hello_bytes: u64,
    routing_ns: u64,
}

/// The worker's QUIC state.
pub(crate) struct Quic {
    pending: RefCell<PendingTable<Key, Pending>>,
    flows: RefCell<HashMap<Key, Rc<Flow>, quic::pending::FlowHasher>>,
    /// The worker's receive buffers, shared by its sockets (never borrowed across an await).
    batch: RefCell<RecvBatch>,
    scratch: RefCell<Vec<u8>>,
    out: RefCell<Vec<u8>>,
    /// The clock, read every [`TICK`] (flows' last activity is this coarse).
    now: Cell<Instant>,
    /// GSO sends work here (turned off after the first refusal).
    gso: Cell<bool>,
    /// The worker stops: new flows are refused, open ones still forwarded.
    stopping: Cell<bool>,
    /// A binary upgrade has the flows: new ones are refused until it is done (or failed).
    exported: Cell<bool>,
    /// The worker has drained: the loops end.
    done: Cell<bool>,
    /// Wakes every loop to look at its state again: the listeners' when the worker has drained,
    /// the back ends' when flows were let go (handed over, so not shut down).
    wake: tokio::sync::Notify,
}

impl Quic {
    pub(crate) fn new(cfg: &Config) -> Self {
        Self {
            pending: RefCell::new(PendingTable::new(cfg.runtime.quic_pending_max)),
            flows: RefCell::new(HashMap::default()),
            batch: RefCell::new(RecvBatch::new(SLOTS, BUF)),
            scratch: RefCell::new(Vec::with_capacity(2048)),
            out: RefCell::new(Vec::with_capacity(64)),
            now: Cell::new(Instant::now()),
            gso: Cell::new(true),
            stopping: Cell::new(false),
            exported: Cell::new(false),
            done: Cell::new(false),
            wake: tokio::sync::Notify::new(),
        }
    }
}

/// Receives on one QUIC socket until the worker has drained ([`finish`]). Once the worker is told
/// to stop, new flows are refused (`draining`) and open ones are still forwarded: QUIC flows never
/// prolong the drain (their end is not visible to us), they end with it.
pub(crate) async fn run(w: Rc<Worker>, q: Rc<Quic>, l: Rc<Listener>) {
    let mut stop = w.stop.clone();
    let mut stopped = false;
    // Readiness from the epoll, not the ring: a datagram then wakes the worker straight out of
    // its wait (see `sys::epoll`).
    let watched = match Watched::new(l.socket.clone()) {
        Ok(watched) => watched,
        Err(e) => {
            tracing::error!(worker = w.id(), listener = %l.addr, error = %e, "QUIC listener: cannot watch the socket");
            return;
        }
    };
    // Registered once and kept across waits (a new `notified()` per wait would lock the
    // `Notify`'s waiter list twice per wake-up); made anew once it has fired.
    let mut woken = std::pin::pin!(q.wake.notified());
    while !q.done.get() {
        let ready = tokio::select! {
            r = watched.readable() => r.ok(),
            _ = stop.changed(), if !stopped => {
                stopped = *stop.borrow();
                q.stopping.set(q.stopping.get() || stopped);
                // A new process took this socket over (a binary upgrade): it reads it now, and
                // this process would only refuse the Initials it reads (`draining`).
                if stopped && handed_over(&w, &l) {
                    break;
                }
                continue;
            }
            () = woken.as_mut() => {
                woken.set(q.wake.notified());
                continue;
            }
        };
        let Some(ready) = ready else { continue };
        let mut drained = false;
        for _ in 0..BURST / SLOTS {
            let mut batch = q.batch.borrow_mut();
            match batch.recv(&l.socket) {
                Ok(k) => {
                    for (d, r) in batch.iter() {
                        on_datagram(&w, &q, &l, d, r);
                    }
                    // Fewer than asked: the queue is empty, no need to ask again.
                    if k < batch.slots() {
                        drained = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ICMP errors queued on the socket and the like: nothing to do for one of them.
                Err(_) => {}
            }
        }
        // Else a full burst: the next wait returns at once, after the other tasks have run.
        if drained {
            ready.drained();
        }
    }
    // No longer read here: out of the epoll before anything else (a watched socket nobody
    // reads would wake the worker for every datagram).
    drop(watched);
    if handed_over(&w, &l) {
        // The socket is the new process's too: leave it alone.
        hand_over_flows(&w, &q, l.index);
    } else {
        l.socket.shutdown(Shutdown::Both);
    }
    tracing::debug!(worker = w.id(), listener = %l.addr, gro = l.features.gro, "QUIC listener stopped");
}

/// The worker has drained: closes every flow (those a new process took over are let go
/// instead) and ends the loops.
pub(crate) fn finish(w: &Worker, q: &Quic) {
    let all: Vec<Rc<Flow>> = q.flows.borrow().values().cloned().collect();
    for f in all {
        if handed_over(w, &f.listener) {
            let_go(w, q, &f);
        } else {
            close(w, q, &f, QuicFlowEnd::Stopped);
        }
    }
    q.done.set(true);
    q.wake.notify_waiters();
    let (open, pending) = (q.flows.borrow().len() as u64, q.pending.borrow().len() as u64);
    w.metrics().bump(|c| {
        c.quic_flows_open = open;
        c.quic_flows_pending = pending;
    });
}

fn dropped(w: &Worker, from: SocketAddr, reason: QuicDatagramDrop) {
    w.metrics().bump(|c| c.quic_datagrams_dropped.bump(reason));
    crate::debug_every_second!(worker = w.id(), peer = %from, reason = reason.as_str(), "QUIC datagram dropped");
}

fn segments(len: usize, seg: Option<u16>) -> u64 {
    match seg {
        Some(s) if s > 0 => len.div_ceil(usize::from(s)) as u64,
        _ => 1,
    }
}

fn on_datagram(w: &Rc<Worker>, q: &Rc<Quic>, l: &Rc<Listener>, dgram: &[u8], r: Received) {
    if r.truncated {
        return dropped(w, r.peer, QuicDatagramDrop::Truncated);
    }
    let key = (l.index, r.peer);
    let flow = q.flows.borrow().get(&key).cloned();
    if let Some(flow) = flow {
        if !new_connection(&flow, dgram) {
            return to_backend(w, q, &flow, dgram, r.segment);
        }
        close(w, q, &flow, QuicFlowEnd::Replaced);
    }
    // No flow (yet): each datagram of a train on its own, since the first may create the flow.
    let step = r.segment.map_or(dgram.len(), usize::from).max(1);
    for d in dgram.chunks(step) {
        let flow = q.flows.borrow().get(&key).cloned();
        match flow {
            Some(flow) => to_backend(w, q, &flow, d, None),
            None => on_new(w, q, l, d, r.peer, r.local),
        }
    }
}

/// Whether `d`, from a flow's client, is the first Initial of another connection: a long-header
/// Initial under another Source Connection ID (a client's own ID never changes in the handshake;
/// only the Destination Connection ID does, after Retry or the server's first Initial).
fn new_connection(flow: &Flow, d: &[u8]) -> bool {
    if !matches!(d.first(), Some(b) if b & 0x80 != 0) {
        return false;
    }
    match packet::parse(d, 0) {
        Ok(Head::Long(l)) if l.ty == LongType::Initial => d.get(l.scid).is_some_and(|s| Cid::of(s) != flow.scid),
        _ => false,
    }
}

/// A client's datagram to its flow's back end.
fn to_backend(w: &Worker, q: &Quic, flow: &Rc<Flow>, d: &[u8], seg: Option<u16>) {
    flow.last.set(q.now.get());
    if !flow.confirmed.get() && d.first().is_some_and(|b| b & 0x80 == 0) {
        flow.confirmed.set(true);
    }
    if let Some(replay) = flow.replay.borrow_mut().as_mut() {
        // Still unanswered: keep the client's handshake datagrams for a failover, at most
        // REPLAY_BYTES of them (the flow is closed after quic_handshake_timeout_ms anyway).
        if replay.iter().map(Vec::len).sum::<usize>() + d.len() <= REPLAY_BYTES {
            replay.push(d.to_vec());
        }
    }
    let n = segments(d.len(), seg);
    let sent = send_train(q, &flow.backend.borrow(), d, None, None, seg);
    match sent {
        Ok(()) => {
            let (a, b) = flow.to_backend.get();
            flow.to_backend.set((a + n, b + d.len() as u64));
            w.metrics().bump(|c| {
                c.quic_datagrams.add(Direction::ClientToBackend, n);
                c.quic_bytes.add(Direction::ClientToBackend, d.len() as u64);
            });
        }
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            w.metrics().bump(|c| c.quic_datagrams_dropped.add(QuicDatagramDrop::SendFailed, n));
            // The ICMP error of an earlier datagram: the back end is not there.
            backend_refused(w, q, flow);
        }
        Err(_) => w.metrics().bump(|c| c.quic_datagrams_dropped.add(QuicDatagramDrop::SendFailed, n)),
    }
}

/// Sends `d` (a train of `seg`-byte datagrams when `seg` is given) with GSO, or datagram by
/// datagram where GSO is refused.
fn send_train(
    q: &Quic,
    sock: &Socket,
    d: &[u8],
    to: Option<SocketAddr>,
    from: Option<IpAddr>,
    seg: Option<u16>,
) -> io::Result<()> {
    match seg {
        Some(s) if q.gso.get() => match udp::try_send(sock, d, to, from, Some(s)) {
            Ok(_) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)) => {
                q.gso.set(false);
                tracing::info!(error = %e, "UDP GSO refused; sending datagrams one by one");
            }
            Err(e) => return Err(e),
        },
        _ => {}
    }
    let step = seg.map_or(d.len(), usize::from).max(1);
    for part in d.chunks(step) {
        udp::try_send(sock, part, to, from, None)?;
    }
    Ok(())
}

/// The first packet of a datagram from an address with no flow decides what it is.
fn on_new(w: &Rc<Worker>, q: &Rc<Quic>, l: &Rc<Listener>, d: &[u8], from: SocketAddr, local: Option<IpAddr>) {
    let key = (l.index, from);
    let head = match packet::parse(d, 0) {
        Ok(h) => h,
        Err(_) => return dropped(w, from, QuicDatagramDrop::BadInitial),
    };
    match head {
        Head::Short => dropped(w, from, QuicDatagramDrop::UnknownFlow),
        Head::VersionNegotiation => dropped(w, from, QuicDatagramDrop::ServerOnly),
        Head::Unsupported { dcid, scid, .. } => {
            // RFC 9000 §6.1: only for datagrams that could be a first Initial, so a reply is
            // never larger than what provoked it.
            if d.len() >= quic::MIN_INITIAL_DATAGRAM {
                let mut out = q.out.borrow_mut();
                packet::version_negotiation(d, &dcid, &scid, &mut out);
                let src = wildcard_source(l, local);
                if udp::try_send(&l.socket, &out, Some(from), src, None).is_ok() {
                    w.metrics().bump(|c| c.quic_version_negotiations += 1);
                }
            }
            dropped(w, from, QuicDatagramDrop::UnknownVersion)
        }
        Head::Long(long) => match long.ty {
            LongType::Initial => on_initial(w, q, l, d, from, local, &long),
            LongType::Retry => dropped(w, from, QuicDatagramDrop::ServerOnly),
            LongType::ZeroRtt | LongType::Handshake => {
                let mut pending = q.pending.borrow_mut();
                match pending.get_mut(&key) {
                    Some(p) if p.bytes + d.len() <= w.config().runtime.quic_pending_bytes => {
                        p.bytes += d.len();
                        p.dgrams.push(d.to_vec());
                    }
                    _ => {
                        drop(pending);
                        dropped(w, from, QuicDatagramDrop::UnknownFlow)
                    }
                }
            }
        },
    }
}

/// The source address for answers: the dialed address when the socket is bound to a wildcard.
fn wildcard_source(l: &Listener, local: Option<IpAddr>) -> Option<IpAddr> {
    if l.addr.ip().is_unspecified() {
        local
    } else {
        None
    }
}

/// What one more Initial did to a pending hello.
enum Step {
    /// Still incomplete: the datagram is buffered.
    Wait,
    /// This datagram is bad; the flow (if any) stays as it was.
    Datagram(quic::Bad),
    /// The flow is given up.
    Flow(QuicFlowDrop),
    /// Complete and routed.
    Route(Decision),
}

fn advance(cfg: &Config, q: &Quic, p: &mut Pending, d: &[u8]) -> Step {
    let rt = &cfg.runtime;
    if let Err(b) = p.hello.feed(d, &mut q.scratch.borrow_mut(), rt.max_hello_bytes + 4) {
        return match b {
            quic::Bad::CryptoTooLong | quic::Bad::CryptoGaps => Step::Flow(QuicFlowDrop::Oversize),
            _ => Step::Datagram(b),
        };
    }
    if p.hello.closed {
        return Step::Flow(QuicFlowDrop::ClientClosed);
    }
    match p.hello.parsed(rt.max_hello_bytes) {
        Parsed::NeedMore if p.bytes + d.len() > rt.quic_pending_bytes => Step::Flow(QuicFlowDrop::PendingBytes),
        Parsed::NeedMore => {
            p.bytes += d.len();
            p.dgrams.push(d.to_vec());
            Step::Wait
        }
        Parsed::Rejected(r) => Step::Flow(match r {
            Reject::TooLarge => QuicFlowDrop::Oversize,
            Reject::NoKnownVersion | Reject::Ssl3OrOlder => QuicFlowDrop::NotTls13,
            _ => QuicFlowDrop::BadHello,
        }),
        Parsed::Complete(ch) => match decide(cfg, p, &ch) {
            Ok(d) => Step::Route(d),
            Err(r) => Step::Flow(r),
        },
    }
}

fn on_initial(
    w: &Rc<Worker>,
    q: &Rc<Quic>,
    l: &Rc<Listener>,
    d: &[u8],
    from: SocketAddr,
    local: Option<IpAddr>,
    long: &quic::Long,
) {
    let key = (l.index, from);
    let cfg = w.config();
    // A client already pending: one more piece of its hello.
    let mut table = q.pending.borrow_mut();
    if let Some(p) = table.get_mut(&key) {
        let step = advance(&cfg, q, p, d);
        let p = match step {
            Step::Wait => return,
            Step::Datagram(b) => {
                drop(table);
                return dropped(w, from, b.reason());
            }
            _ => table.remove(&key),
        };
        drop(table);
        let Some(p) = p else { return };
        return match step {
            Step::Flow(r) => flow_dropped(w, from, &p, r),
            Step::Route(dec) => open_flow(w, q, l, cfg, key, p, d, dec),
            Step::Wait | Step::Datagram(_) => {}
        };
    }
    drop(table);
    if q.stopping.get() || q.exported.get() {
        return dropped(w, from, QuicDatagramDrop::Draining);
    }
    // Cheap refusals before any key is derived.
    if d.len() < quic::MIN_INITIAL_DATAGRAM {
        return dropped(w, from, QuicDatagramDrop::SmallInitial);
    }
    if d[0] & packet::FIXED == 0 {
        return dropped(w, from, QuicDatagramDrop::BadInitial);
    }
    let hello = match Hello::new(d, long) {
        Ok(h) => h,
        Err(b) => return dropped(w, from, b.reason()),
    };
    let log = w.conns.log.as_ref().is_some_and(|log| log.sample());
    let dialed = match local {
        Some(ip) if l.addr.ip().is_unspecified() => ip,
        _ => l.addr.ip(),
    };
    let first_at = Instant::now();
    q.now.set(first_at);
    let scid = Cid::of(d.get(long.scid.clone()).unwrap_or(&[]));
    let mut p =
        Pending { hello, scid, dgrams: Vec::new(), bytes: 0, first_at, local: dialed, port: l.addr.port(), log };
    match advance(&cfg, q, &mut p, d) {
        Step::Wait => keep_pending(w, q, key, p),
        Step::Datagram(b) => dropped(w, from, b.reason()),
        Step::Flow(r) => flow_dropped(w, from, &p, r),
        Step::Route(dec) => open_flow(w, q, l, cfg, key, p, d, dec),
    }
}

fn keep_pending(w: &Worker, q: &Quic, key: Key, p: Pending) {
    let now = p.first_at;
    let evicted = q.pending.borrow_mut().insert(key, p, now);
    if let Some(((_, addr), old)) = evicted {
        flow_dropped(w, addr, &old, QuicFlowDrop::PendingFull);
    }
}

/// Where a complete ClientHello goes.
struct Decision {
    route: RouteId,
    how: Match,
    /// The SNI's hash where the route balances by it (0 otherwise).
    sni_hash: u64,
    info: Option<Box<LogInfo>>,
}

fn decide(cfg: &Config, p: &Pending, ch: &hello::ClientHello<'_>) -> Result<Decision, QuicFlowDrop> {
    if ch.max_version() < hello::TLS1_3 {
        return Err(QuicFlowDrop::NotTls13);
    }
    let (route, how) = cfg.table.lookup(p.local, ch.sni()).map_err(|m| match m {
        Miss::NoSni => QuicFlowDrop::NoSni,
        Miss::UnknownSni => QuicFlowDrop::UnknownSni,
    })?;
    let info = p.log.then(|| {
        Box::new(LogInfo {
            sni: ch.sni().map(str::to_owned),
            alpn: ch.alpn().next().map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned()),
            ja4: hello::ja4(ch, Transport::Quic).as_str().to_owned(),
            how,
            hello_bytes: ch.len() as u64,
            routing_ns: 0,
        })
    });
    let sni_hash = match cfg.pools.pool(route).map(|p| p.balance) {
        Some(Balance::HashSni) => backend::Key::sni_hash(ch.sni()),
        _ => 0,
    };
    Ok(Decision { route, how, sni_hash, info })
}

fn route_of(cfg: &Config, id: RouteId) -> &Route {
    cfg.table.route(id)
}

#[allow(clippy::too_many_arguments, clippy::redundant_allocation)]
fn open_flow(
    w: &Rc<Worker>,
    q: &Rc<Quic>,
    l: &Rc<Listener>,
    cfg: Rc<Arc<Config>>,
    key: Key,
    p: Pending,
    last: &[u8],
    d: Decision,
) {
    let from = key.1;
    let route = route_of(&cfg, d.route);
    if let Action::Terminate(_) = route.action {
        return flow_dropped(w, from, &p, QuicFlowDrop::TerminateRoute);
    }
    if q.flows.borrow().len() >= cfg.runtime.quic_max_flows {
        return flow_dropped(w, from, &p, QuicFlowDrop::FlowsFull);
    }
    // The back end, chosen as a TCP connection's is: the pool's balance, weights, backups,
    // health verdicts and this worker's ejections.
    let held = crate::conn::Snapshots::keep(&**w, &cfg, d.route);
    let balance_key = backend::Key { client: Some(from.ip()), sni: d.sni_hash };
    let stats = held.pools.route_stats(d.route);
    if let Some(s) = stats {
        s.routed(w.id());
    }
    let dialed = held.pools.pool(d.route).map(|pool| {
        let mut plan = Plan::new(&held.pools, pool, w.id(), &balance_key);
        (dial(w, &mut plan, pool), plan.tried())
    });
    let Some((Some((backend, backend_id, gro)), tried)) = dialed else {
        if let Some(s) = stats {
            s.closed(w.id(), Some(DropReason::BackendsDown));
        }
        return flow_dropped(w, from, &p, QuicFlowDrop::BackendsDown);
    };
    let multi = p.hello.packets > 1;
    let mut first: Vec<Vec<u8>> = p.dgrams;
    first.push(last.to_vec());
    let routing = p.first_at.elapsed();
    let mut info = d.info;
    if let Some(i) = info.as_mut() {
        i.routing_ns = u64::try_from(routing.as_nanos()).unwrap_or(u64::MAX);
    }
    let flow = Rc::new(Flow {
        key,
        scid: p.scid,
        listener: Rc::clone(l),
        local: p.local,
        route: held,
        backend: RefCell::new(backend),
        backend_id: Cell::new(backend_id),
        tried: Cell::new(tried),
        balance_key,
        dialed_at: Cell::new(Instant::now()),
        backend_gro: Cell::new(gro),
        replay: RefCell::new(None),
        last: Cell::new(q.now.get()),
        confirmed: Cell::new(false),
        closed: Cell::new(false),
        opened: p.first_at,
        to_backend: Cell::new((0, 0)),
        to_client: Cell::new((0, 0)),
        log: info,
    });
    let m = w.metrics();
    m.bump(|c| {
        c.quic_routed.bump(d.how);
        c.quic_multi_packet_hellos += u64::from(multi);
    });
    if w.conns.timing {
        m.record_duration(Hist::QuicRouting, routing);
    }
    q.flows.borrow_mut().insert(key, Rc::clone(&flow));
    for dgram in &first {
        to_backend(w, q, &flow, dgram, None);
    }
    if !flow.closed.get() {
        *flow.replay.borrow_mut() = Some(first);
        tokio_uring::spawn(backend_loop(Rc::clone(w), Rc::clone(q), flow));
    }
}

/// A UDP socket connected to the next back end of `plan` that can be dialed (QUIC goes to
/// `host:port` back ends: unix and hand-off ones are TCP-only and skipped), counted open to it
/// ([`Shared::hold`]). A socket that cannot be made is a failed connect of that back end.
fn dial(w: &Worker, plan: &mut Plan<'_>, pool: &Pool) -> Option<(Socket, BackendId, bool)> {
    for (id, b) in plan.by_ref() {
        let Target::Tcp(addr) = &b.target else { continue };
        // Without GRO: the back-end loop turns it on when the back end sends trains.
        match udp::connect_udp(*addr, false) {
            Ok((s, f)) => {
                b.hold(w.id());
                return Some((s, id, f.gro));
            }
            Err(e) => {
                crate::warn_every_second!(backend = %addr, error = %e, "QUIC: cannot make a socket to the back end");
                connect_failed(w, b, pool, ConnectCause::of(&e));
            }
        }
    }
    None
}

/// One failed "connect" of a flow to `b` (a socket that could not be made, ICMP unreachable on
/// its first datagrams, no answer within the handshake timeout): counted by cause, for the back
/// end too, and towards its passive ejection, as a TCP connect failure is.
fn connect_failed(w: &Worker, b: &Shared, pool: &Pool, cause: ConnectCause) {
    w.metrics().bump(|c| c.backend_connect_failures.bump(cause));
    if b.failed(w.id(), cause, &pool.eject) {
        w.metrics().bump(|c| c.backend_ejections += 1);
        crate::warn_every_second!(
            worker = w.id(),
            backend = %b.target,
            cause = cause.as_str(),
            "back end set aside after failed connects in a row (QUIC)"
        );
    }
    crate::debug_every_second!(backend = %b.target, cause = cause.as_str(), "QUIC flow: back end unreachable");
}

/// The flow's back end and its pool (while the flow holds its route, both are there).
fn current(flow: &Flow) -> Option<(&Shared, &Pool)> {
    let pools = &flow.route.pools;
    Some((pools.backend(flow.backend_id.get())?, pools.pool(flow.route.id)?))
}

/// The back end answered with ICMP unreachable: before its first datagram, a failed connect of
/// that back end, and the flow moves to the next one of its plan with the client's datagrams so
/// far; after it, the error is transient.
fn backend_refused(w: &Worker, q: &Quic, flow: &Rc<Flow>) {
    let Some(replay) = flow.replay.borrow_mut().take() else { return };
    let worker = w.id();
    let next = {
        let pools = &flow.route.pools;
        let Some((b, pool)) = current(flow) else { return close(w, q, flow, QuicFlowEnd::BackendsDown) };
        connect_failed(w, b, pool, ConnectCause::Refused);
        b.release(worker);
        let mut plan = Plan::resume(pools, pool, worker, &flow.balance_key, flow.tried.get());
        let got = dial(w, &mut plan, pool);
        flow.tried.set(plan.tried());
        got
    };
    match next {
        Some((s, id, gro)) => {
            w.metrics().bump(|c| c.quic_backend_failovers += 1);
            let old = flow.backend.replace(s);
            // Completes the old socket's poll: the relay task then polls the new one.
            old.shutdown(Shutdown::Both);
            flow.backend_id.set(id);
            flow.backend_gro.set(gro);
            flow.dialed_at.set(Instant::now());
            for d in &replay {
                let _ = udp::try_send(&flow.backend.borrow(), d, None, None, None);
            }
            *flow.replay.borrow_mut() = Some(replay);
        }
        None => {
            // Released above: nothing is counted open any more.
            flow.backend_id.set(BackendId::MAX);
            close(w, q, flow, QuicFlowEnd::BackendsDown)
        }
    }
}

/// Relays the back end's datagrams to the client until the flow closes.
async fn backend_loop(w: Rc<Worker>, q: Rc<Quic>, flow: Rc<Flow>) {
    while !flow.closed.get() {
        // Watched until the flow closes or fails over (then the new socket is): readiness from
        // the epoll, one registration per socket instead of a ring poll per wait.
        let Ok(watched) = Watched::new(flow.backend.borrow().clone()) else {
            close(&w, &q, &flow, QuicFlowEnd::BackendsDown);
            break;
        };
        backend_socket_loop(&w, &q, &flow, &watched).await;
    }
}

/// Relays one back-end socket's datagrams until the flow closes or fails over to another socket
/// (which shuts this one down, so the wait returns).
async fn backend_socket_loop(w: &Worker, q: &Quic, flow: &Rc<Flow>, watched: &Watched) {
    let sock = watched.socket();
    // A flow let go (handed over to a new process) ends through this: its socket is shared, so
    // nothing shuts it down to wake the wait. Registered once per socket, not per wait.
    let mut woken = std::pin::pin!(q.wake.notified());
    loop {
        let ready = tokio::select! {
            r = watched.readable() => r,
            () = woken.as_mut() => {
                if flow.closed.get() {
                    return;
                }
                woken.set(q.wake.notified());
                continue;
            }
        };
        if flow.closed.get() || sock.as_raw_fd() != flow.backend.borrow().as_raw_fd() {
            return;
        }
        let Ok(ready) = ready else { return };
        let mut drained = false;
        for _ in 0..BURST / SLOTS {
            let mut batch = q.batch.borrow_mut();
            let k = match batch.recv(sock) {
                Ok(k) => {
                    to_client(w, q, flow, &batch);
                    k
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    drop(batch);
                    backend_refused(w, q, flow);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if k < SLOTS {
                drained = true;
                break;
            }
            // A full batch: the back end sends trains (a download). GRO from now on (a flow's
            // socket is made without it: a short flow never needs it, and the setsockopt is one
            // system call per flow).
            if !flow.backend_gro.replace(true) && w.config().runtime.quic_gro {
                udp::enable_gro(sock);
            }
        }
        if drained {
            ready.drained();
        }
    }
}

/// A batch of the back end's datagrams to the flow's client, in one `sendmmsg` (GSO trains
/// included), from the address the client dialed.
fn to_client(w: &Worker, q: &Quic, flow: &Flow, batch: &RecvBatch) {
    let mut msgs: [(&[u8], Option<u16>); SLOTS] = [(&[], None); SLOTS];
    let (mut m, mut n, mut bytes) = (0, 0u64, 0u64);
    for (d, r) in batch.iter() {
        if r.truncated {
            dropped(w, r.peer, QuicDatagramDrop::Truncated);
            continue;
        }
        if m < SLOTS {
            msgs[m] = (d, r.segment);
            m += 1;
            n += segments(d.len(), r.segment);
            bytes += d.len() as u64;
        }
    }
    if m == 0 {
        return;
    }
    flow.last.set(q.now.get());
    if flow.replay.borrow().is_some() {
        *flow.replay.borrow_mut() = None;
        answered(w, flow);
    }
    let src = wildcard_source(&flow.listener, Some(flow.local));
    let to = Some(flow.key.1);
    let trains = msgs[..m].iter().any(|(_, s)| s.is_some());
    let sent = if trains && !q.gso.get() {
        None
    } else {
        match udp::try_send_many(&flow.listener.socket, &msgs[..m], to, src) {
            Ok(k) => Some(k),
            Err(e) if trains && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)) => {
                q.gso.set(false);
                tracing::info!(error = %e, "UDP GSO refused; sending datagrams one by one");
                None
            }
            Err(_) => Some(0),
        }
    };
    // GSO refused (or off): datagram by datagram.
    let sent = sent.unwrap_or_else(|| {
        msgs[..m].iter().take_while(|(d, seg)| send_train(q, &flow.listener.socket, d, to, src, *seg).is_ok()).count()
    });
    let (lost_n, lost_bytes) =
        msgs[sent.min(m)..m].iter().fold((0, 0), |(a, b), (d, seg)| (a + segments(d.len(), *seg), b + d.len() as u64));
    let (n, bytes) = (n - lost_n, bytes - lost_bytes);
    let (a, b) = flow.to_client.get();
    flow.to_client.set((a + n, b + bytes));
    w.metrics().bump(|c| {
        c.quic_datagrams.add(Direction::BackendToClient, n);
        c.quic_bytes.add(Direction::BackendToClient, bytes);
        c.quic_datagrams_dropped.add(QuicDatagramDrop::SendFailed, lost_n);
    });
}

/// The back end's first datagram to a flow: its "connect" succeeded (the back end's connection
/// count, the connect latency of back end and route, its failures in a row forgotten).
fn answered(w: &Worker, flow: &Flow) {
    let took = w.conns.timing.then(|| flow.dialed_at.get().elapsed());
    if let Some(b) = flow.route.pools.backend(flow.backend_id.get()) {
        b.connected(w.id(), took);
    }
    if let (Some(s), Some(d)) = (flow.route.pools.route_stats_if_used(flow.route.id), took) {
        s.connected(w.id(), d);
    }
}

/// Closes a routed flow: counted, logged, its relay task ended.
fn close(w: &Worker, q: &Quic, flow: &Rc<Flow>, end: QuicFlowEnd) {
    if flow.closed.replace(true) {
        return;
    }
    q.flows.borrow_mut().remove(&flow.key);
    flow.backend.borrow().shutdown(Shutdown::Both);
    w.metrics().bump(|c| c.quic_flows_closed.bump(end));
    if let Some((b, pool)) = current(flow) {
        // Never answered within the handshake timeout: a connect that timed out.
        if end == QuicFlowEnd::Idle && flow.replay.borrow().is_some() {
            connect_failed(w, b, pool, ConnectCause::TimedOut);
        }
        b.release(w.id());
    }
    if let Some(s) = flow.route.pools.route_stats(flow.route.id) {
        s.closed(w.id(), (end == QuicFlowEnd::BackendsDown).then_some(DropReason::BackendsDown));
    }
    log_flow(w, flow, end);
    let _ = q;
}

/// A routed flow's access-log line (sampled when it was routed), as it ends here.
fn log_flow(w: &Worker, flow: &Flow, end: QuicFlowEnd) {
    if let (Some(info), Some(log)) = (flow.log.as_ref(), w.conns.log.as_ref()) {
        let (_, up) = flow.to_backend.get();
        let (_, down) = flow.to_client.get();
        let route: &Route = &flow.route;
        let backend = flow.route.pools.backend(flow.backend_id.get()).map(|b| b.target.to_string());
        let time = access_log::rfc3339(std::time::SystemTime::now());
        let outcome = match end {
            QuicFlowEnd::Idle => "idle_timeout",
            QuicFlowEnd::BackendsDown => "error",
            QuicFlowEnd::Stopped | QuicFlowEnd::Replaced => "closed",
            QuicFlowEnd::HandedOver => "handed_over",
        };
        let entry = access_log::Entry {
            client: Some(flow.key.1),
            local: Some(SocketAddr::new(flow.local, flow.listener.addr.port())),
            sni: info.sni.as_deref(),
            alpn: info.alpn.as_deref(),
            ja4: Some(&info.ja4),
            route: Some(route.name.as_str()),
            how: Some(info.how.as_str()),
            action: Some("passthrough"),
            backend: backend.as_deref(),
            reason: (end == QuicFlowEnd::BackendsDown).then_some("backends_down"),
            bytes_client_to_backend: up,
            bytes_backend_to_client: down,
            hello_bytes: Some(info.hello_bytes),
            route_lookup_ns: Some(info.routing_ns),
            lifetime_us: Some(u64::try_from(flow.opened.elapsed().as_micros()).unwrap_or(u64::MAX)),
            ..access_log::Entry::new(&time, w.id(), "quic", outcome)
        };
        log.log(&entry, w.metrics());
    }
}

/// Counts (and, if sampled, logs) a flow given up before it was routed.
fn flow_dropped(w: &Worker, from: SocketAddr, p: &Pending, reason: QuicFlowDrop) {
    w.metrics().bump(|c| c.quic_flows_dropped.bump(reason));
    crate::debug_every_second!(worker = w.id(), peer = %from, reason = reason.as_str(), "QUIC flow dropped");
    if let (true, Some(log)) = (p.log, w.conns.log.as_ref()) {
        let time = access_log::rfc3339(std::time::SystemTime::now());
        let entry = access_log::Entry {
            client: Some(from),
            local: Some(SocketAddr::new(p.local, p.port)),
            reason: Some(reason.as_str()),
            lifetime_us: Some(u64::try_from(p.first_at.elapsed().as_micros()).unwrap_or(u64::MAX)),
            ..access_log::Entry::new(&time, w.id(), "quic", "dropped")
        };
        log.log(&entry, w.metrics());
    }
}

// ---- binary upgrade ------------------------------------------------------------------------
//
// The old process offers its QUIC listeners' UDP sockets and every open flow (`export`: client,
// dialed address, Source Connection ID, route and back end by name, and a duplicate of the
// flow's socket connected to the back end); from then on it opens no new flow (an Initial is
// dropped as `draining`; the client retransmits it, and the new process routes it). The new
// process starts its workers on the same kernel sockets with those flows in their tables
// (`adopt`), so until the old one lets go both forward every flow correctly: whichever process
// reads a datagram, from a client or from a back end, sends it on through the same sockets. Once
// the new process is ready the old one lets go (`hand_over_flows`): its polls on the shared
// sockets are cancelled, nothing is shut down (that would shut them for the new process too).

/// Whether the new process of a binary upgrade took over listener `l`'s socket.
fn handed_over(w: &Worker, l: &Listener) -> bool {
    w.quic_handed_off.get().is_some_and(|list| list.contains(&l.addr))
}

/// Every open flow, each with a duplicate of its socket, for a binary upgrade; no new flow is
/// opened until [`resume`] or the stop.
pub(crate) fn export(w: &Worker, q: &Quic) -> Vec<Handed> {
    q.exported.set(true);
    let flows: Vec<Rc<Flow>> = q.flows.borrow().values().cloned().collect();
    let mut out = Vec::with_capacity(flows.len());
    for f in flows.iter().filter(|f| !f.closed.get()) {
        let fd = match f.backend.borrow().as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                crate::warn_every_second!(error = %e, "QUIC: cannot duplicate a flow's socket for the upgrade; it stays here");
                continue;
            }
        };
        let backend = f.route.pools.backend(f.backend_id.get()).map(|b| b.target.to_string()).unwrap_or_default();
        out.push(Handed {
            listener: f.listener.addr,
            slot: f.listener.slot,
            client: f.key.1,
            local: f.local,
            scid: f.scid.0[..usize::from(f.scid.1)].to_vec(),
            route: f.route.name.clone(),
            backend,
            fd,
        });
    }
    tracing::debug!(worker = w.id(), flows = out.len(), "QUIC flows offered to a new process");
    out
}

/// The upgrade that asked for the flows failed: new flows are opened again.
pub(crate) fn resume(q: &Quic) {
    q.exported.set(false);
}

/// The new process took over the flows of listener `index`: they leave the table without a
/// shutdown (their sockets are the new process's too), their relay tasks end.
fn hand_over_flows(w: &Worker, q: &Quic, index: u16) {
    let mine: Vec<Rc<Flow>> = q.flows.borrow().values().filter(|f| f.listener.index == index).cloned().collect();
    for f in mine {
        let_go(w, q, &f);
    }
    q.wake.notify_waiters();
}

/// One flow handed over: counted (`handed_over`), no longer forwarded here; its socket is not
/// shut down (the new process reads it). Its relay task ends when the caller wakes the loops
/// (`Quic::wake`), once for all the flows it let go.
fn let_go(w: &Worker, q: &Quic, flow: &Rc<Flow>) {
    if flow.closed.replace(true) {
        return;
    }
    q.flows.borrow_mut().remove(&flow.key);
    w.metrics().bump(|c| c.quic_flows_closed.bump(QuicFlowEnd::HandedOver));
    if let Some((b, _)) = current(flow) {
        b.release(w.id());
    }
    if let Some(s) = flow.route.pools.route_stats(flow.route.id) {
        s.closed(w.id(), None);
    }
    log_flow(w, flow, QuicFlowEnd::HandedOver);
}

/// Takes the flows the previous process handed over into the table, each on the socket
/// (`listeners`) its client's datagrams arrive on, with its route (by name, in the configuration
/// now) and back end, counted open there. A flow whose route is gone (or terminates now), or whose
/// socket is not here, is left out: its client's connection times out and it reconnects.
pub(crate) fn adopt(w: &Rc<Worker>, q: &Rc<Quic>, listeners: &[Rc<Listener>], flows: Vec<Handed>) {
    if flows.is_empty() {
        return;
    }
    let cfg = w.config();
    let now = Instant::now();
    let (mut adopted, mut left) = (0u64, 0usize);
    for h in flows {
        let Some(l) = listeners.iter().find(|l| l.addr == h.listener && l.slot == h.slot) else {
            left += 1;
            continue;
        };
        let Some(id) =
            cfg.table.id_of(&h.route).filter(|id| matches!(cfg.table.route(*id).action, Action::Passthrough))
        else {
            left += 1;
            continue;
        };
        let held = crate::conn::Snapshots::keep(&**w, &cfg, id);
        let backend_id = held
            .pools
            .pool(id)
            .and_then(|p| {
                p.members.iter().find(|m| held.pools.backend(m.id).is_some_and(|b| b.target.to_string() == h.backend))
            })
            .map_or(BackendId::MAX, |m| m.id);
        if let Some(b) = held.pools.backend(backend_id) {
            b.hold(w.id());
        }
        if let Some(s) = held.pools.route_stats(id) {
            s.routed(w.id());
        }
        let gro = udp::adopt_udp(&h.fd, cfg.runtime.quic_gro).map(|f| f.gro).unwrap_or(false);
        let key = (l.index, h.client);
        let flow = Rc::new(Flow {
            key,
            scid: Cid::of(&h.scid),
            listener: Rc::clone(l),
            local: h.local,
            route: held,
            backend: RefCell::new(Socket::from(h.fd)),
            backend_id: Cell::new(backend_id),
            tried: Cell::new([0; 4]),
            balance_key: backend::Key { client: Some(h.client.ip()), sni: 0 },
            dialed_at: Cell::new(now),
            backend_gro: Cell::new(gro),
            replay: RefCell::new(None),
            last: Cell::new(now),
            confirmed: Cell::new(true),
            closed: Cell::new(false),
            opened: now,
            to_backend: Cell::new((0, 0)),
            to_client: Cell::new((0, 0)),
            log: None,
        });
        if let Some(old) = q.flows.borrow_mut().insert(key, Rc::clone(&flow)) {
            old.closed.set(true);
        }
        tokio_uring::spawn(backend_loop(Rc::clone(w), Rc::clone(q), flow));
        adopted += 1;
    }
    w.metrics().bump(|c| c.quic_flows_adopted += adopted);
    tracing::info!(worker = w.id(), adopted, left_out = left, "QUIC flows taken over from the previous process");
}

/// Every [`TICK`]: the clock, pending timeouts, idle flows (each second), the gauges.
pub(crate) async fn sweep(w: Rc<Worker>, q: Rc<Quic>) {
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        q.now.set(now);
        let cfg = w.config();
        let rt = &cfg.runtime;
        let mut expired = Vec::new();
        if let Some(deadline) = now.checked_sub(Duration::from_millis(rt.quic_pending_timeout_ms)) {
            q.pending.borrow_mut().expire(deadline, |a, p| expired.push((a, p)));
        }
        for ((_, a), p) in expired {
            flow_dropped(&w, a, &p, QuicFlowDrop::PendingTimeout);
        }
        ticks += 1;
        if ticks >= 10 || q.stopping.get() {
            ticks = 0;
            let idle = Duration::from_millis(rt.quic_idle_timeout_ms);
            let handshake = Duration::from_millis(rt.quic_handshake_timeout_ms);
            let stale: Vec<Rc<Flow>> = q
                .flows
                .borrow()
                .values()
                .filter(|f| {
                    let limit = if f.confirmed.get() { idle } else { handshake.min(idle) };
                    now.saturating_duration_since(f.last.get()) >= limit
                })
                .cloned()
                .collect();
            for f in stale {
                close(&w, &q, &f, QuicFlowEnd::Idle);
            }
        }
        let (open, pending) = (q.flows.borrow().len() as u64, q.pending.borrow().len() as u64);
        w.metrics().bump(|c| {
            c.quic_flows_open = open;
            c.quic_flows_pending = pending;
        });
        if q.done.get() {
            break;
        }
    }
}
