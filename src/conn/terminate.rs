//! Routed → Relayed, for a terminating route: the TLS handshake with the route's certificate
//! (the hello bytes already read go to rustls first), a connection to the back end, the PROXY
//! header if asked (it carries the SNI and the negotiated ALPN), then the TLS relay.

use super::trace::Trace;
use super::{proxy_header, send_and_recycle, Accepted, Outcome, Resources};
use crate::backend;
use crate::config::{Limits, Route};
use crate::metrics::DropReason;
use crate::route::ProxyProtocol;
use crate::tls::{self, TlsMaterial};
use std::net::Shutdown;

pub(super) async fn run(
    res: &Resources,
    rt: &Limits,
    route: &Route,
    material: &TlsMaterial,
    conn: &Accepted,
    routed: super::Routed,
    t: &mut Trace,
) -> Outcome {
    let (id, hello, sni_hash, held) = (routed.id, routed.first, routed.sni_hash, routed.route);
    let client = &conn.client;
    // The SNI for a PROXY header: rustls's unbuffered connection does not keep it, the hello does.
    let sni = (route.proxy_protocol != ProxyProtocol::None).then_some(()).and_then(|()| {
        match crate::hello::parse(&hello, rt.max_hello_bytes()) {
            crate::hello::Parsed::Complete(h) => h.sni().map(str::to_owned),
            _ => None,
        }
    });
    let hs = tokio::time::timeout(
        rt.hello_timeout(),
        tls::handshake(client, &material.server_config, hello, tls::ktls::enabled(rt.ktls)),
    )
    .await;
    let mut est = match hs {
        Err(_) => {
            client.shutdown(Shutdown::Both);
            return Outcome::Dropped(DropReason::TlsTimeout);
        }
        Ok(Err(e)) => {
            let reason = e.drop_reason();
            crate::debug_every_second!(
                worker = res.worker,
                route = %route.name,
                peer = ?conn.peer(),
                reason = reason.as_str(),
                error = %e,
                "TLS handshake failed"
            );
            return Outcome::Dropped(reason);
        }
        Ok(Ok(est)) => est,
    };
    if let Some(buf) = est.take_spare_buffer() {
        // The hello's buffer, unless it holds what the client sent after its Finished.
        res.bufs.borrow_mut().give(buf);
    }
    t.handshake_done = res.now();
    if t.log {
        t.alpn = est.alpn(&material.server_config).map(|p| String::from_utf8_lossy(p).into_owned());
    }
    let resumed = est.resumed();
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
        timeout: rt.connect_timeout(),
        metrics: &res.metrics,
        first: &[],
        key: backend::Key { client: client_ip, sni: sni_hash },
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
            let out = est.close_notify(res.bufs.borrow_mut().take(64));
            send_and_recycle(res, client, out, 0).await;
            return Outcome::Dropped(if e.is_local() { DropReason::LocalResources } else { DropReason::BackendsDown });
        }
    };
    if route.proxy_protocol != ProxyProtocol::None {
        let header = proxy_header(res, route, conn, sni.as_deref(), est.alpn(&material.server_config), 0);
        if !send_and_recycle(res, &backend, header, 0).await {
            return Outcome::Dropped(DropReason::BackendWrite);
        }
    }
    Outcome::Relayed(tls::relay(client, est, &backend, rt.idle_timeout(), route.half_close).await)
}
