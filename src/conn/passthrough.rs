//! Routed → Connected → Relayed, for a passthrough route: connect to a back end in the order of
//! the route's balancing (the first bytes go out with the connect; a hand-off back end takes the
//! client's socket itself instead, and the connection ends here), read the back end's
//! ServerHello version where `min_tls` needs it, then relay the raw bytes (splice, or buffered).

use super::trace::Trace;
use super::{send_and_recycle, Accepted, Held, Outcome, Resources, Routed};
use crate::backend::{self, handoff, Key, Link};
use crate::config::Limits;
use crate::hello::{server_hello_version, Alert, ServerVersion};
use crate::metrics::{DropReason, RelayKind};
use crate::relay::{self, End, Relayed, BUF_SIZE};
use crate::route::{Balance, TlsVersion};
use crate::sys::Socket;
use std::future::Future;
use std::time::Duration;

/// A passthrough connection with its back end: `first[sent..]` is still to be sent.
pub struct Connected {
    pub backend: Socket,
    /// TCP_NODELAY is still to be set before more than the first bytes go
    /// ([`crate::sys::Socket::tcp_for_first_bytes`]).
    pub nodelay_later: bool,
    pub first: Vec<u8>,
    pub sent: usize,
    /// Bytes the back end already sent that are still to go to the client (its ServerHello,
    /// read for the version check).
    pub early: Vec<u8>,
}

/// A passthrough connection ready to relay: its back end, and the bytes already sent each way
/// (the first bytes, the back end's ServerHello read for the version check).
pub(super) struct Opened<'a> {
    backend: Socket,
    to_backend: u64,
    to_client: u64,
    /// The route's `half_close`.
    half_close: bool,
    /// The back end's TCP_NODELAY is for the relay to set, before its first burst there.
    nodelay_later: bool,
    /// Counts the connection open to its back end (least connections) until the relay ends.
    _active: Option<backend::Active<'a>>,
}

/// Relays an opened connection until both sides are done (a connection that did not open ends
/// with its outcome at once). An `async move` block, not an `async fn` (whose arguments rustc
/// stores twice): an idle connection's task holds this.
#[allow(clippy::manual_async_fn)] // an `async move` block: its arguments are stored once
pub(super) fn relay<'a>(
    res: &'a Resources,
    rt: &'a Limits,
    conn: &'a Accepted,
    opened: Result<Opened<'a>, Outcome>,
) -> impl Future<Output = Outcome> + 'a {
    async move {
        // Borrowed, not moved out: the argument is the one copy the task holds.
        let o = match &opened {
            Ok(o) => o,
            Err(outcome) => return *outcome,
        };
        let env = relay::Env {
            pipes: &res.pipes,
            bufs: &res.bufs,
            scratch: &res.scratch,
            timers: &res.timers,
            metrics: &res.metrics,
            splice: rt.splice,
            copy_first: true,
            idle: rt.idle_timeout(),
            timing: res.timing,
        };
        let mut done = relay::relay(
            &env,
            &conn.client,
            &o.backend,
            relay::Ends { half_close: o.half_close, nodelay_later: o.nodelay_later },
        )
        .await;
        done.to_backend += o.to_backend;
        done.to_client += o.to_client;
        // Through the ring: batched with the other submissions, no close(2) of its own.
        if let Ok(Opened { backend, _active, .. }) = opened {
            backend.close();
            drop(_active);
        }
        Outcome::Relayed(done)
    }
}

/// Everything before the relay: the connect (the first bytes with it), the back end's version
/// where `min_tls` needs it, the rest of the first bytes and the back end's early bytes. The
/// back end, and the bytes sent each way; or how the connection ended already (dropped, or
/// handed off). `route` is the connection's route with the back-end state of the configuration
/// it was chosen in (which the open connection counts in).
pub(super) async fn open<'a>(
    res: &Resources,
    rt: &Limits,
    route: &'a Held,
    conn: &Accepted,
    routed: Routed,
    t: &mut Trace,
) -> Result<Opened<'a>, Outcome> {
    t.connect_start = t.routed_at;
    // `routed.route` is `route` (the caller keeps it for the connection's life).
    let Routed { id, route: _, first, header, check_server, sni_hash } = routed;
    let (c, active) = {
        let client = match route.upstream.balance {
            Balance::HashClient => conn.peer().map(|p| p.ip()),
            _ => None,
        };
        // The receiver asks the socket for its addresses itself (when it needs them), unless a
        // PROXY header gave them.
        let handoff = route.backends.iter().any(|b| b.target.is_handoff()).then(|| {
            let msg = handoff::Message {
                addresses: conn.proxied.map(|p| (p.source, p.destination)),
                hello: first.get(header..).unwrap_or_default(),
            };
            (&conn.client, msg)
        });
        let req = backend::Request {
            route: id,
            worker: res.worker,
            timeout: rt.connect_timeout(),
            metrics: &res.metrics,
            first: &first,
            key: Key { client, sni: sni_hash },
            handoff,
            timing: res.timing,
        };
        let connected = backend::connect(&route.pools, &req).await;
        t.connected_at = res.now();
        match connected {
            Ok(b) => {
                t.backend = Some(b.backend);
                match b.link {
                    Link::HandedOff => {
                        // The receiver owns the connection now; ours closes with this task.
                        let moved = (first.len() - header) as u64;
                        res.bufs.borrow_mut().give(first);
                        return Err(Outcome::Relayed(Relayed {
                            kind: RelayKind::Handoff,
                            end: End::Closed,
                            to_backend: moved,
                            to_client: 0,
                            first_to_client: None,
                        }));
                    }
                    Link::Socket { socket, sent, nodelay_later } => {
                        (Connected { backend: socket, nodelay_later, first, sent, early: Vec::new() }, b.active)
                    }
                }
            }
            Err(e) => {
                res.bufs.borrow_mut().give(first);
                return Err(Outcome::Dropped(if e.is_local() {
                    DropReason::LocalResources
                } else {
                    DropReason::BackendsDown
                }));
            }
        }
    };
    let mut c = c;
    if c.nodelay_later && c.sent < c.first.len() {
        // The hello did not all go with the connect: the rest must not wait for an ACK.
        c.backend.set_nodelay();
        c.nodelay_later = false;
    }
    if let Some(min) = check_server {
        let limit = rt.hello_timeout();
        c = check_server_version(res, &conn.client, c, min, limit).await.map_err(Outcome::Dropped)?;
    }
    let (n_first, n_early) = (c.first.len() as u64, c.early.len() as u64);
    let Connected { backend, nodelay_later, first, sent, early } = c;
    // The hello usually went out with the connect: its bytes are freed before the relay starts.
    if sent < first.len() && !send_and_recycle(res, &backend, first, sent).await {
        return Err(Outcome::Dropped(DropReason::BackendWrite));
    }
    if !early.is_empty() && !send_and_recycle(res, &conn.client, early, 0).await {
        return Err(Outcome::Dropped(DropReason::ClientClosed));
    }
    Ok(Opened {
        backend,
        to_backend: n_first,
        to_client: n_early,
        half_close: route.half_close,
        nodelay_later,
        _active: active,
    })
}

/// Sends the rest of the first bytes to the back end, then reads its first flight up to the end
/// of its ServerHello and checks the version it chose against `min`: below it, the client gets a
/// `protocol_version` alert and nothing the back end sent. The back end's bytes read are kept in
/// [`Connected::early`], to go to the client before the relay starts.
pub async fn check_server_version(
    res: &Resources,
    client: &Socket,
    mut c: Connected,
    min: TlsVersion,
    limit: Duration,
) -> Result<Connected, DropReason> {
    let (sent, first) = c.backend.send_all(std::mem::take(&mut c.first), c.sent).await;
    c.first = first;
    if sent.is_err() {
        res.bufs.borrow_mut().give(std::mem::take(&mut c.first));
        return Err(DropReason::BackendWrite);
    }
    c.sent = c.first.len();
    let buf = res.bufs.borrow_mut().take(BUF_SIZE);
    let deadline = res.timers.arm([Some(&c.backend), None], limit);
    let read = async {
        let mut buf = buf;
        loop {
            if buf.len() == buf.capacity() {
                return (ServerVersion::Invalid("ServerHello too large"), buf);
            }
            let (r, b) = c.backend.recv(buf).await;
            buf = b;
            match r {
                Ok(0) | Err(_) => return (ServerVersion::Invalid("closed before its ServerHello"), buf),
                Ok(_) => {}
            }
            match server_hello_version(&buf) {
                ServerVersion::NeedMore => continue,
                verdict => return (verdict, buf),
            }
        }
    };
    let (mut verdict, buf) = read.await;
    if deadline.fired() {
        verdict = ServerVersion::Invalid("no ServerHello in time");
    }
    drop(deadline);
    let reason = match verdict {
        ServerVersion::Chosen(v) if v < min.0 => {
            let version = TlsVersion(v);
            tracing::debug!(worker = res.worker, %version, %min, "back end chose a version below min_tls");
            let mut alert = buf;
            alert.clear();
            alert.extend_from_slice(&Alert::ProtocolVersion.record());
            if send_and_recycle(res, client, alert, 0).await {
                res.metrics.bump(|c| c.alerts_sent.bump(Alert::ProtocolVersion));
            }
            DropReason::BackendBelowMinTls
        }
        ServerVersion::Chosen(_) | ServerVersion::Alert => {
            c.early = buf;
            return Ok(c);
        }
        ServerVersion::Invalid(_) | ServerVersion::NeedMore => {
            let field = if let ServerVersion::Invalid(f) = verdict { f } else { "incomplete" };
            tracing::debug!(worker = res.worker, field, "back end's first bytes are not a ServerHello");
            res.bufs.borrow_mut().give(buf);
            DropReason::BackendNotTls
        }
    };
    res.bufs.borrow_mut().give(std::mem::take(&mut c.first));
    Err(reason)
}
