//! Routed → Connected → Relayed, for a passthrough route: connect to a back end in the order of
//! the route's balancing (the first bytes go out with the connect; a hand-off back end takes the
//! client's socket itself instead, and the connection ends here), read the back end's
//! ServerHello version where `min_tls` needs it, then relay the raw bytes (splice, or buffered).

use super::trace::Trace;
use super::{send_and_recycle, Accepted, Outcome, Resources, Routed};
use crate::backend::{self, handoff, Key, Link};
use crate::config::{Limits, Route};
use crate::hello::{server_hello_version, ServerVersion};
use crate::metrics::{DropReason, RelayKind};
use crate::relay::{self, End, Relayed, BUF_SIZE};
use crate::route::{Balance, TlsVersion};
use crate::sys::Socket;
use std::net::Shutdown;
use std::time::Duration;

/// A passthrough connection with its back end: `first[sent..]` is still to be sent.
pub struct Connected {
    pub backend: Socket,
    pub first: Vec<u8>,
    pub sent: usize,
    /// Bytes the back end already sent that are still to go to the client (its ServerHello,
    /// read for the version check).
    pub early: Vec<u8>,
}

pub(super) async fn run(
    res: &Resources,
    rt: &Limits,
    route: &Route,
    conn: &Accepted,
    routed: Routed,
    t: &mut Trace,
) -> Outcome {
    t.connect_start = t.routed_at;
    let Routed { id, route: held, first, header, check_server, sni_hash } = routed;
    let (c, _active) = {
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
            timeout: Duration::from_millis(rt.connect_timeout_ms),
            metrics: &res.metrics,
            first: &first,
            key: Key { client, sni: sni_hash },
            handoff,
            timing: res.timing,
        };
        let connected = backend::connect(&held.pools, &req).await;
        t.connected_at = res.now();
        match connected {
            Ok(b) => {
                t.backend = Some(b.backend);
                match b.link {
                    Link::HandedOff => {
                        // The receiver owns the connection now; ours closes with this task.
                        let moved = (first.len() - header) as u64;
                        res.bufs.borrow_mut().give(first);
                        return Outcome::Relayed(Relayed {
                            kind: RelayKind::Handoff,
                            end: End::Closed,
                            to_backend: moved,
                            to_client: 0,
                            first_to_client: None,
                        });
                    }
                    Link::Socket { socket, sent } => {
                        (Connected { backend: socket, first, sent, early: Vec::new() }, b.active)
                    }
                }
            }
            Err(e) => {
                res.bufs.borrow_mut().give(first);
                return Outcome::Dropped(if e.is_local() {
                    DropReason::LocalResources
                } else {
                    DropReason::BackendsDown
                });
            }
        }
    };
    let mut c = c;
    if let Some(min) = check_server {
        let limit = Duration::from_millis(rt.hello_timeout_ms);
        c = match check_server_version(res, &conn.client, c, min, limit).await {
            Ok(c) => c,
            Err(reason) => return Outcome::Dropped(reason),
        };
    }
    let (n_first, n_early) = (c.first.len() as u64, c.early.len() as u64);
    if !send_and_recycle(res, &c.backend, c.first, c.sent).await {
        res.bufs.borrow_mut().give(c.early);
        return Outcome::Dropped(DropReason::BackendWrite);
    }
    if !send_and_recycle(res, &conn.client, c.early, 0).await {
        return Outcome::Dropped(DropReason::ClientClosed);
    }
    let env = relay::Env {
        pipes: &res.pipes,
        bufs: &res.bufs,
        splice: rt.splice,
        idle: Duration::from_millis(rt.idle_timeout_ms),
        timing: res.timing,
    };
    let mut done = relay::relay(&env, &conn.client, &c.backend).await;
    done.to_backend += n_first;
    done.to_client += n_early;
    Outcome::Relayed(done)
}

/// A fatal `protocol_version` alert (RFC 8446 §6.2), as a TLS server sends it.
const PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70];

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
    let (verdict, buf) = match tokio::time::timeout(limit, read).await {
        Ok(x) => x,
        Err(_) => {
            c.backend.shutdown(Shutdown::Both);
            (ServerVersion::Invalid("no ServerHello in time"), Vec::new())
        }
    };
    let reason = match verdict {
        ServerVersion::Chosen(v) if v < min.0 => {
            let version = TlsVersion(v);
            tracing::debug!(worker = res.worker, %version, %min, "back end chose a version below min_tls");
            let mut alert = buf;
            alert.clear();
            alert.extend_from_slice(&PROTOCOL_VERSION_ALERT);
            send_and_recycle(res, client, alert, 0).await;
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
