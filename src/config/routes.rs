//! One `[[route]]`: its action, names, dedicated IPs, `min_tls`, back ends and PROXY protocol,
//! validated; a terminating route's certificate and key through [`super::certs`].

use super::certs::load_tls;
use super::file::RouteFile;
use super::{Located, Route};
use crate::route::{self, Action, ProxyProtocol, TlsVersion};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

/// Resolves every route, in order, each with the problems found before (`problems`) and its
/// own; on every allowed CPU when there are enough routes to pay for the threads (most of the
/// cost of a large configuration is reading and parsing certificates and keys).
pub(super) fn resolve_all(
    routes: Vec<(RouteFile, String, Vec<Located>)>,
    base: &Path,
    tls: &crate::tls::Shared,
) -> Vec<(Option<Route>, Vec<Located>)> {
    const PER_THREAD: usize = 512;
    let one = |(r, key, mut problems): (RouteFile, String, Vec<Located>)| {
        let route = resolve_route(r, &key, base, tls, &mut problems);
        (route, problems)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(routes.len() / PER_THREAD).min(16);
    if threads <= 1 {
        return routes.into_iter().map(one).collect();
    }
    let chunk = routes.len().div_ceil(threads);
    let mut chunks: Vec<Vec<_>> = Vec::with_capacity(threads);
    let mut rest = routes.into_iter();
    for _ in 0..threads {
        chunks.push(rest.by_ref().take(chunk).collect());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| {
                std::thread::Builder::new()
                    .name("sni-config".into())
                    .spawn_scoped(s, move || c.into_iter().map(one).collect::<Vec<_>>())
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            match h {
                Ok(h) => match h.join() {
                    Ok(part) => out.extend(part),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                // No thread: cannot happen on Linux short of exhausting the process's threads;
                // then the load fails rather than silently missing routes.
                Err(e) => out.push((None, vec![Located::new("route", format!("cannot start a loader thread: {e}"))])),
            }
        }
        out
    })
}

pub(super) fn resolve_route(
    r: RouteFile,
    key: &str,
    base: &Path,
    tls: &crate::tls::Shared,
    errors: &mut Vec<Located>,
) -> Option<Route> {
    let before = errors.len();
    let mut bad = |field: &str, reason: String| errors.push(Located::new(format!("{key}.{field}"), reason));

    #[derive(PartialEq)]
    enum Kind {
        Terminate,
        Passthrough,
    }
    let kind = match r.action.as_str() {
        "terminate" => Some(Kind::Terminate),
        "passthrough" => Some(Kind::Passthrough),
        other => {
            bad("action", format!("{other:?} is not \"terminate\" or \"passthrough\""));
            None
        }
    };
    let min_tls = match r.min_tls.as_deref() {
        None => TlsVersion::TLS12,
        Some(v) => TlsVersion::from_config(v).unwrap_or_else(|| {
            bad("min_tls", format!("{v:?} is not one of \"1.0\", \"1.1\", \"1.2\", \"1.3\""));
            TlsVersion::TLS12
        }),
    };
    let proxy_protocol = match r.proxy_protocol.as_deref() {
        None | Some("none") => ProxyProtocol::None,
        Some("v1") => ProxyProtocol::V1,
        Some("v2") => ProxyProtocol::V2,
        Some(other) => {
            bad("proxy_protocol", format!("{other:?} is not \"none\", \"v1\" or \"v2\""));
            ProxyProtocol::None
        }
    };
    // Duplicates, within a route or across routes, are found by the table's index in O(n).
    let mut sni = Vec::with_capacity(r.sni.len());
    for raw in &r.sni {
        match route::normalize_pattern(raw) {
            Ok(n) => sni.push(n),
            Err(e) => bad("sni", format!("{raw:?}: {e}")),
        }
    }
    let mut dedicated_ips = Vec::with_capacity(r.dedicated_ips.len());
    for raw in &r.dedicated_ips {
        match raw.parse::<IpAddr>() {
            Ok(ip) => dedicated_ips.push(ip),
            Err(_) => bad("dedicated_ips", format!("{raw:?} is not an IP address")),
        }
    }
    if r.backends.is_empty() {
        bad("backends", "at least one back end address is required".into());
    }
    let mut backends = Vec::with_capacity(r.backends.len());
    for raw in &r.backends {
        match raw.parse::<SocketAddr>() {
            Ok(a) => backends.push(a),
            Err(_) => bad("backends", format!("{raw:?} is not an address like \"127.0.0.1:8080\"")),
        }
    }
    for (i, p) in r.alpn.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            bad("alpn", format!("entry {i} must be 1 to 255 bytes"));
        }
    }

    let action = match kind {
        Some(Kind::Terminate) => match (&r.cert, &r.key) {
            (Some(cert), Some(pkey)) => {
                let ocsp = r.ocsp.as_ref().map(|p| base.join(p));
                load_tls(tls, &base.join(cert), &base.join(pkey), ocsp.as_deref(), key, min_tls, &r.alpn, errors)
                    .map(|m| Action::Terminate(Arc::new(m)))
            }
            (c, k) => {
                if c.is_none() {
                    bad("cert", "a terminate route needs a certificate chain (PEM)".into());
                }
                if k.is_none() {
                    bad("key", "a terminate route needs a private key (PEM)".into());
                }
                None
            }
        },
        Some(Kind::Passthrough) => {
            for (field, set) in [
                ("cert", r.cert.is_some()),
                ("key", r.key.is_some()),
                ("ocsp", r.ocsp.is_some()),
                ("alpn", !r.alpn.is_empty()),
            ] {
                if set {
                    bad(field, "applies only to action = \"terminate\"".into());
                }
            }
            Some(Action::Passthrough)
        }
        None => None,
    };
    if errors.len() > before {
        return None;
    }
    Some(Route { name: r.name, action: action?, sni, dedicated_ips, min_tls, backends, proxy_protocol })
}
