//! Routing a complete ClientHello: the dedicated IP of the local address, then the exact SNI,
//! the wildcard, then the fallbacks ([`crate::route::Table::lookup`]); on a passthrough route
//! `min_tls` against the best known version offered (and whether the back end's choice must be
//! checked); the PROXY header that goes in front of the hello bytes.

use super::trace::Trace;
use super::{proxy_header, Accepted, Kept, Resources, Snapshots};
use crate::config::{Listener, Route};
use crate::hello::{Alert, ClientHello};
use crate::metrics::DropReason;
use crate::route::{Action, Miss, ProxyProtocol, RouteId, TlsVersion};
use std::net::IpAddr;

/// Where a complete hello goes, and the PROXY header (if any) to send before it.
pub(super) struct Decision {
    pub(super) id: RouteId,
    pub(super) route: Kept,
    pub(super) header: Option<Vec<u8>>,
    pub(super) check_server: Option<TlsVersion>,
    /// The SNI's hash for `balance = "hash_sni"` (0 otherwise).
    pub(super) sni_hash: u64,
}

/// A connection refused before any route's TLS: why, the alert a TLS server would send for it
/// (sent before the close), and whether its debug line (peer and cause) was written already.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    pub(crate) reason: DropReason,
    pub(crate) alert: Option<Alert>,
    pub(crate) logged: bool,
}

impl From<DropReason> for Refusal {
    fn from(reason: DropReason) -> Self {
        Self { reason, alert: None, logged: false }
    }
}

/// Routes a complete hello: dedicated IP, SNI, fallback; `min_tls`; the PROXY header.
pub(super) fn route(
    res: &Resources,
    snaps: &dyn Snapshots,
    listener: Option<&Listener>,
    conn: &Accepted,
    hello: &ClientHello<'_>,
    buf_len: usize,
    t: &mut Trace,
) -> Result<Decision, Refusal> {
    if t.log {
        t.sni = hello.sni().map(str::to_owned);
        t.alpn = hello.alpn().next().map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned());
    }
    super::admission::on_hello(listener, hello, t)?;
    // The snapshot current now, held only for this decision.
    let cfg = snaps.current();
    let table = &cfg.table;
    // getsockname only when the answer matters: dedicated IPs or ALPN routes exist (and the
    // listener is a wildcard, see Accepted::dialed).
    let ip: IpAddr =
        if table.has_dedicated_ips() || table.has_alpn_routes() { conn.dialed().ip() } else { conn.listen.ip() };
    let alpn_route = if table.has_alpn_routes() {
        table.lookup_alpn(ip, hello.sni(), |want| hello.alpn().any(|p| p.as_bytes() == want))
    } else {
        None
    };
    let found = match alpn_route {
        Some(id) => Ok((id, crate::route::Match::Alpn)),
        None => table.lookup(ip, hello.sni()),
    };
    let (id, how) = match found {
        Ok(found) => found,
        Err(miss) => {
            // What a rustls server sends when no certificate resolves (access_denied), and
            // for a name it does not serve RFC 6066's unrecognized_name, as nginx does.
            let (reason, alert) = match miss {
                Miss::NoSni => (DropReason::NoSni, Alert::AccessDenied),
                Miss::UnknownSni => (DropReason::UnknownSni, Alert::UnrecognizedName),
            };
            crate::debug_every_second!(
                worker = res.worker,
                peer = ?conn.peer(),
                reason = reason.as_str(),
                sni = hello.sni(),
                local = %ip,
                alert = alert.as_str(),
                "hello refused: no route"
            );
            return Err(Refusal { reason, alert: Some(alert), logged: true });
        }
    };
    t.how = Some(how);
    t.route = Some(id);
    let kept = snaps.keep(&cfg, id);
    drop(cfg);
    let route: &Route = &kept;
    // A terminating route leaves the version to rustls, which answers with a protocol_version
    // alert. A passthrough route compares the best version offered (known versions only, so no
    // unknown value can lift an old offer past it); and when the client also offered versions
    // below min_tls, the version the back end picks is checked in its ServerHello.
    let mut check_server = None;
    if matches!(route.action, Action::Passthrough) {
        if hello.max_version() < route.min_tls.0 {
            let alert = Alert::ProtocolVersion;
            crate::debug_every_second!(
                worker = res.worker,
                peer = ?conn.peer(),
                reason = DropReason::BelowMinTls.as_str(),
                route = %route.name,
                offered = %TlsVersion(hello.max_version()),
                min_tls = %route.min_tls,
                alert = alert.as_str(),
                "hello refused: best version offered is below the route's min_tls"
            );
            return Err(Refusal { reason: DropReason::BelowMinTls, alert: Some(alert), logged: true });
        }
        if hello.min_version() < route.min_tls.0 {
            check_server = Some(route.min_tls);
        }
    }
    res.metrics.routed(how);
    let sni_hash = match route.upstream.balance {
        crate::route::Balance::HashSni => crate::backend::Key::sni_hash(hello.sni()),
        _ => 0,
    };
    if route.proxy_protocol == ProxyProtocol::None || route.action.is_terminate() {
        return Ok(Decision { id, route: kept, header: None, check_server, sni_hash });
    }
    let alpn = hello.alpn().next();
    let header = proxy_header(res, route, conn, hello.sni(), alpn.as_ref().map(|p| p.as_bytes()), buf_len);
    Ok(Decision { id, route: kept, header: Some(header), check_server, sni_hash })
}
