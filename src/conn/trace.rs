//! What one connection measured, filled in as it goes, and what becomes of it when it closes:
//! its latencies go into the worker's HDR histograms and, if the connection was sampled, one
//! access-log line.

use super::{Outcome, Resources};
use crate::access_log;
use crate::config::Route;
use crate::metrics::{Hist, RelayKind};
use crate::relay::End;
use crate::route::{Match, RouteId};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Instants are `None` when latency histograms are off (or the stage was not reached); `sni`,
/// `alpn`, `client` and `local` are only read for a sampled connection (`log`).
#[derive(Debug, Default)]
pub struct Trace {
    pub log: bool,
    pub accepted: Option<Instant>,
    pub hello_done: Option<Instant>,
    pub hello_bytes: Option<u64>,
    pub routed_at: Option<Instant>,
    pub handshake_done: Option<Instant>,
    pub connect_start: Option<Instant>,
    pub connected_at: Option<Instant>,
    pub how: Option<Match>,
    pub route: Option<RouteId>,
    /// The route's statistics count this connection open (to be closed with it).
    pub route_open: bool,
    /// The back end reached (its index in the configuration's pools).
    pub backend: Option<crate::backend::BackendId>,
    /// The hello's JA4 (sampled connections, or a listener with JA4 rules).
    /// Boxed: only sampled connections and listeners with JA4 rules have one, and every
    /// connection's task holds the trace for its whole life.
    pub ja4: Option<Box<crate::hello::Ja4>>,
    pub client: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub sni: Option<String>,
    pub alpn: Option<String>,
}

impl Trace {
    pub fn new(accepted: Option<Instant>, log: bool) -> Self {
        Self { log, accepted, ..Self::default() }
    }
}

pub(super) fn between(a: Option<Instant>, b: Option<Instant>) -> Option<Duration> {
    Some(b?.saturating_duration_since(a?))
}

fn micros(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Records a finished connection's latencies and, if sampled, its access-log line. (The outcome
/// and what it moved come from the `outcome`, not the trace, which every connection's task holds
/// for its whole life.)
pub fn finish(res: &Resources, held: Option<&super::Held>, t: &Trace, outcome: &Outcome) {
    let end = res.now();
    let relayed = match outcome {
        Outcome::Relayed(r) => Some(r),
        Outcome::Dropped(_) => None,
    };
    let first_to_client = relayed.and_then(|r| r.first_to_client).filter(|_| res.timing);
    let m = &res.metrics;
    let hello_wait = between(t.accepted, t.hello_done);
    let lookup = between(t.hello_done, t.routed_at);
    let connect = between(t.connect_start, t.connected_at);
    let handshake = between(t.routed_at, t.handshake_done);
    let first_byte = between(t.connected_at, first_to_client);
    let lifetime = between(t.accepted, end);
    for (k, d) in [
        (Hist::HelloWait, hello_wait),
        (Hist::RouteLookup, lookup),
        (Hist::BackendConnect, connect),
        (Hist::TlsHandshake, handshake),
        (Hist::FirstByte, first_byte),
        (Hist::Lifetime, lifetime),
    ] {
        if let Some(d) = d {
            m.record_duration(k, d);
        }
    }
    if let (Some(n), true) = (t.hello_bytes, res.timing) {
        m.record(Hist::HelloSize, n);
    }
    let Some(log) = res.log.as_ref().filter(|_| t.log) else {
        return;
    };
    let route: Option<&Route> = held.map(|h| &*h.route);
    let (outcome, reason) = match outcome {
        Outcome::Dropped(r) => ("dropped", Some(r.as_str())),
        Outcome::Relayed(r) => match r.end {
            End::Closed => ("closed", None),
            End::Idle => ("idle_timeout", None),
            End::Error(cause) => ("error", Some(cause.as_str())),
        },
    };
    let action = match relayed {
        Some(r) if r.kind == RelayKind::Tls => Some("terminate"),
        Some(r) if r.kind == RelayKind::Handoff => Some("handoff"),
        _ => route.map(|r| r.action.as_str()),
    };
    let time = access_log::rfc3339(std::time::SystemTime::now());
    let backend = t.backend.and_then(|id| held?.pools.backend(id)).map(|b| b.target.to_string());
    let entry = access_log::Entry {
        time: &time,
        worker: res.worker,
        transport: "tcp",
        client: t.client,
        local: t.local,
        sni: t.sni.as_deref(),
        alpn: t.alpn.as_deref(),
        route: route.map(|r| r.name.as_str()),
        how: t.how.map(Match::as_str),
        action,
        backend: backend.as_deref(),
        ja4: t.ja4.as_deref().map(|j| j.as_str()),
        outcome,
        reason,
        bytes_client_to_backend: relayed.map_or(0, |r| r.to_backend),
        bytes_backend_to_client: relayed.map_or(0, |r| r.to_client),
        hello_bytes: t.hello_bytes,
        hello_wait_us: micros(hello_wait),
        route_lookup_ns: lookup.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        backend_connect_us: micros(connect),
        tls_handshake_us: micros(handshake),
        first_byte_us: micros(first_byte),
        lifetime_us: micros(lifetime),
    };
    log.log(&entry, m);
}
