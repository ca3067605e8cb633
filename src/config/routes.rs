//! One `[[route]]`: its action, names, dedicated IPs, `min_tls`, back ends and PROXY protocol,
//! validated; a terminating route's certificate and key through [`super::certs`].

use super::certs::load_tls;
use super::file::{BackendFile, HealthCheckFile, RouteFile};
use super::{Located, Route};
use crate::route::{
    self, Action, Backend, Balance, CheckKind, Eject, HealthCheck, ProxyProtocol, TlsVersion, Upstream,
};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// One route as written, resolved (its certificate loaded through `tls`, whose cache makes an
/// unchanged one cheap); `None` with its problems in `errors`. Routes are resolved on every
/// allowed CPU as their pieces of the file are parsed ([`super::load::parse`]).
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
    if r.backends.len() > crate::backend::pool::MAX_BACKENDS {
        bad("backends", format!("at most {} back ends", crate::backend::pool::MAX_BACKENDS));
    }
    let mut backends: Vec<Backend> = Vec::with_capacity(r.backends.len());
    for (i, b) in r.backends.iter().enumerate() {
        let (raw, weight, backup) = match b {
            BackendFile::Address(a) => (a.as_str(), None, false),
            BackendFile::Table(t) => (t.address.as_str(), t.weight, t.backup),
        };
        let target = match raw.parse::<route::Target>() {
            Ok(t) => t,
            Err(e) => {
                bad("backends", format!("{raw:?} {e}"));
                continue;
            }
        };
        let weight = weight.unwrap_or(1);
        if !(1..=1000).contains(&weight) {
            bad("backends", format!("{raw:?}: weight {weight} is not from 1 to 1000"));
        }
        if backends.iter().any(|o| o.target == target) {
            bad("backends", format!("{raw:?} is listed twice (entry {i})"));
        }
        backends.push(Backend { target, weight, backup });
    }
    if !backends.is_empty() && backends.iter().all(|b| b.backup) {
        bad("backends", "every back end is a backup: at least one must not be".into());
    }
    let balance = match r.balance.as_deref() {
        None => Balance::First,
        Some(b) => Balance::from_config(b).unwrap_or_else(|| {
            let all: Vec<&str> = Balance::ALL.iter().map(|b| b.as_str()).collect();
            bad("balance", format!("{b:?} is not one of {}", all.join(", ")));
            Balance::First
        }),
    };
    let health = r.health_check.as_ref().and_then(|h| health_check(h, &r.sni, &mut bad));
    if matches!(health, Some(HealthCheck { kind: CheckKind::Tls { .. }, .. }))
        && backends.iter().any(|b| b.target.is_handoff())
    {
        bad(
            "health_check.type",
            "a hand-off back end is checked by connecting to its socket: use type = \"connect\"".into(),
        );
    }
    if matches!(health, Some(HealthCheck { kind: CheckKind::Quic, .. }))
        && backends.iter().any(|b| !matches!(b.target, crate::route::Target::Tcp(_)))
    {
        bad("health_check.type", "type = \"quic\" checks host:port back ends over UDP only".into());
    }
    let defaults = Eject::default();
    let base_ms = r.eject_ms.unwrap_or(defaults.base_ms);
    let eject = Eject {
        after: r.eject_after.unwrap_or(defaults.after),
        base_ms,
        max_ms: r.eject_max_ms.unwrap_or(defaults.max_ms.max(base_ms)),
    };
    if eject.base_ms == 0 {
        bad("eject_ms", "must be greater than 0".into());
    }
    if eject.max_ms < eject.base_ms {
        bad("eject_max_ms", format!("{} is below eject_ms ({})", eject.max_ms, eject.base_ms));
    }
    let mut alpn_match = Vec::with_capacity(r.alpn_match.len());
    for (i, p) in r.alpn_match.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            bad("alpn_match", format!("entry {i} must be 1 to 255 bytes"));
        }
        alpn_match.push(p.as_bytes().to_vec());
    }
    for (i, p) in r.alpn.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            bad("alpn", format!("entry {i} must be 1 to 255 bytes"));
        }
    }

    let action = match kind {
        Some(Kind::Terminate) if backends.iter().any(|b| b.target.is_handoff()) => {
            bad(
                "backends",
                "a hand-off back end takes the client's TLS connection as it is: only for action = \"passthrough\""
                    .into(),
            );
            None
        }
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
    let upstream = Upstream { balance, health, eject };
    Some(Route {
        name: r.name,
        action: action?,
        sni,
        dedicated_ips,
        min_tls,
        backends,
        proxy_protocol,
        upstream,
        alpn_match,
        half_close: r.half_close.unwrap_or(true),
    })
}

/// `health_check = { type, sni, interval_ms, timeout_ms, rise, fall }`, with HAProxy's defaults.
fn health_check(h: &HealthCheckFile, names: &[String], bad: &mut impl FnMut(&str, String)) -> Option<HealthCheck> {
    let d = HealthCheck::default();
    let kind = match h.kind.as_deref() {
        None | Some("connect") => {
            if h.sni.is_some() {
                bad("health_check.sni", "applies only to type = \"tls\"".into());
            }
            CheckKind::Connect
        }
        Some("tls") => {
            let first_exact = names.iter().find(|n| !n.starts_with("*.")).cloned();
            match h.sni.clone().or(first_exact) {
                Some(sni) => CheckKind::Tls { sni },
                None => {
                    bad("health_check.sni", "type = \"tls\" needs an sni (the route has no exact name to use)".into());
                    return None;
                }
            }
        }
        Some("quic") => {
            if h.sni.is_some() {
                bad("health_check.sni", "applies only to type = \"tls\"".into());
            }
            CheckKind::Quic
        }
        Some(other) => {
            bad("health_check.type", format!("{other:?} is not \"connect\", \"tls\" or \"quic\""));
            return None;
        }
    };
    let spec = HealthCheck {
        kind,
        interval_ms: h.interval_ms.unwrap_or(d.interval_ms),
        timeout_ms: h.timeout_ms.unwrap_or(d.timeout_ms),
        rise: h.rise.unwrap_or(d.rise),
        fall: h.fall.unwrap_or(d.fall),
    };
    for (key, v) in [("interval_ms", spec.interval_ms), ("timeout_ms", spec.timeout_ms)] {
        if v == 0 {
            bad(&format!("health_check.{key}"), "must be greater than 0".into());
        }
    }
    for (key, v) in [("rise", spec.rise), ("fall", spec.fall)] {
        if v == 0 {
            bad(&format!("health_check.{key}"), "must be at least 1".into());
        }
    }
    Some(spec)
}
