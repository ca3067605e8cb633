//! Routed → Relayed, for a terminating route: the TLS handshake with the route's certificate
//! (the hello bytes already read go to rustls first), a connection to the back end, the PROXY
//! header if asked (it carries the SNI and the negotiated ALPN), then the TLS relay.

use super::trace::Trace;
use super::{proxy_header, send_and_recycle, Accepted, Outcome, Resources};
use crate::backend;
use crate::config::{Limits, Route};
use crate::metrics::DropReason;
use crate::route::ProxyProtocol;
use crate::tls::{self, HandshakeError, TlsMaterial};
use std::net::Shutdown;
use std::time::Duration;

pub(super) async fn run(
    res: &Resources,
    rt: &Limits,
    route: &Route,
    material: &TlsMaterial,
    conn: &Accepted,
    routed: super::Routed,
    t: &mut Trace,
) -> Outcome {
    let (id, hello, held) = (routed.id, routed.first, routed.route);
    let client = &conn.client;
    let hs = tokio::time::timeout(
        Duration::from_millis(rt.hello_timeout_ms),
        tls::handshake(client, material.server_config.clone(), &hello),
    )
    .await;
    res.bufs.borrow_mut().give(hello);
    let tls = match hs {
        Err(_) => {
            client.shutdown(Shutdown::Both);
            return Outcome::Dropped(DropReason::TlsTimeout);
        }
        Ok(Err(e)) => {
            tracing::debug!(worker = res.worker, route = %route.name, error = %e, "TLS handshake failed");
            return Outcome::Dropped(handshake_drop(&e));
        }
        Ok(Ok(tls)) => tls,
    };
    t.handshake_done = res.now();
    if t.log {
        t.alpn = tls.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    }
    let resumed = tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    res.metrics.bump(|c| {
        c.tls_handshakes += 1;
        c.tls_resumed += u64::from(resumed);
    });
    t.connect_start = t.handshake_done;
    let client_ip = match route.upstream.balance {
        crate::route::Balance::HashClient => conn.peer().map(|p| p.ip()),
        _ => None,
    };
    let req = backend::Request {
        route: id,
        worker: res.worker,
        timeout: Duration::from_millis(rt.connect_timeout_ms),
        metrics: &res.metrics,
        first: &[],
        key: backend::Key { client: client_ip, sni: backend::Key::sni_hash(tls.server_name()) },
        handoff: None,
        timing: res.timing,
    };
    let connected = backend::connect(&held.pools, &req).await;
    t.connected_at = res.now();
    let (backend, _active) = match connected {
        Ok(backend::Connected { link: backend::Link::Socket { socket, .. }, backend, active }) => {
            t.backend = Some(backend);
            (socket, active)
        }
        Ok(backend::Connected { link: backend::Link::HandedOff, .. }) => {
            // Config validation keeps hand-off back ends out of terminating routes.
            return Outcome::Dropped(DropReason::BackendsDown);
        }
        Err(e) => {
            // Tell the client politely: close_notify rather than a bare FIN.
            let mut tls = tls;
            tls.send_close_notify();
            let mut out = res.bufs.borrow_mut().take(64);
            while tls.wants_write() && tls.write_tls(&mut out).is_ok() {}
            send_and_recycle(res, client, out, 0).await;
            return Outcome::Dropped(if e.is_local() { DropReason::LocalResources } else { DropReason::BackendsDown });
        }
    };
    if route.proxy_protocol != ProxyProtocol::None {
        let header = proxy_header(res, route, conn, tls.server_name(), tls.alpn_protocol(), 0);
        if !send_and_recycle(res, &backend, header, 0).await {
            return Outcome::Dropped(DropReason::BackendWrite);
        }
    }
    Outcome::Relayed(tls::relay(client, tls, &backend, Duration::from_millis(rt.idle_timeout_ms)).await)
}

/// The drop reason of a failed handshake.
fn handshake_drop(e: &HandshakeError) -> DropReason {
    match e {
        HandshakeError::Tls(rustls::Error::PeerIncompatible(_)) => DropReason::BelowMinTls,
        HandshakeError::Eof | HandshakeError::Io(_) => DropReason::TlsClientClosed,
        HandshakeError::Tls(_) => DropReason::TlsHandshake,
    }
}
