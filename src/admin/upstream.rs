//! The routes' and back ends' figures ([`crate::backend::Pools`]) in `/metrics` (families with a
//! `backend` or `route` label; connect latencies as Prometheus histograms) and in `/stats`
//! (`backends`, `routes`).

use crate::backend::pool::BUCKETS_S;
use crate::backend::{BackendSnapshot, Hist, Pools, RouteSnapshot};
use crate::config::Config;
use crate::metrics::{CheckResult, ConnectCause, DropReason};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;

use super::render::PREFIX;

/// One route as the readers see it.
pub struct RouteView {
    pub name: String,
    pub action: &'static str,
    pub balance: &'static str,
    /// Its back ends: snapshot, weight, backup.
    pub backends: Vec<(BackendSnapshot, u32, bool)>,
    /// `None` until its first connection.
    pub stats: Option<RouteSnapshot>,
}

/// Routes listed whatever their traffic; beyond them only routes that had a connection.
pub const LISTED_ROUTES: usize = 1000;

/// The routes (in configuration order) with their back ends' figures: the first `limit`, and
/// beyond [`LISTED_ROUTES`] only those that had a connection.
pub fn routes(cfg: &Config, limit: usize) -> Vec<RouteView> {
    cfg.table
        .routes()
        .enumerate()
        .filter(|(i, (id, _))| *i < LISTED_ROUTES || cfg.pools.route_stats_if_used(*id).is_some())
        .take(limit)
        .map(|(_, (id, r))| RouteView {
            name: r.name.clone(),
            action: r.action.as_str(),
            balance: r.upstream.balance.as_str(),
            backends: cfg.pools.route_backends(id).map(|(b, w, backup)| (b.snapshot(), w, backup)).collect(),
            stats: cfg.pools.route_stats_if_used(id).map(|s| s.snapshot()),
        })
        .collect()
}

/// Every back end once (back ends shared by routes appear once).
pub fn backends(pools: &Pools) -> Vec<BackendSnapshot> {
    pools.backends().map(|b| b.snapshot()).collect()
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
}

/// One sample: `sni_dispatch_{name}{k="v",…} n` (values escaped).
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], n: impl std::fmt::Display) {
    let _ = write!(out, "{PREFIX}{name}{{");
    for (i, (k, v)) in labels.iter().enumerate() {
        let _ = write!(out, "{}{k}=\"{}\"", if i == 0 { "" } else { "," }, esc(v));
    }
    let _ = writeln!(out, "}} {n}");
}

fn histogram(out: &mut String, name: &str, label: &str, value: &str, h: &Hist) {
    let bucket = format!("{name}_bucket");
    let mut cum = 0u64;
    for (i, le) in BUCKETS_S.iter().enumerate() {
        cum += h.buckets[i];
        sample(out, &bucket, &[(label, value), ("le", &le.to_string())], cum);
    }
    sample(out, &bucket, &[(label, value), ("le", "+Inf")], h.count());
    sample(out, &format!("{name}_sum"), &[(label, value)], h.sum_ns as f64 / 1e9);
    sample(out, &format!("{name}_count"), &[(label, value)], h.count());
}

/// A family of one sample per item: name, type, help, and the value of an item.
type Plain<'a, T> = (&'a str, &'a str, &'a str, &'a dyn Fn(&T) -> u64);

/// Appends the per-back-end and per-route families to a Prometheus exposition.
pub fn prometheus(cfg: &Config, out: &mut String) {
    let backs = backends(&cfg.pools);
    let plain: [Plain<'_, BackendSnapshot>; 5] = [
        ("backend_up", "gauge", "1 while the back end's health checks say up (always without checks), else 0.", &|b| {
            u64::from(b.up)
        }),
        ("backend_connections_open", "gauge", "Connections open to the back end now.", &|b| b.active),
        ("backend_connections_total", "counter", "Connections made (or handed off) to the back end.", &|b| {
            b.connections
        }),
        (
            "backend_ejected_workers",
            "gauge",
            "Workers that have the back end set aside now (passive ejection).",
            &|b| b.ejected_by,
        ),
        ("backend_ejections_total", "counter", "Times a worker set the back end aside.", &|b| b.ejections),
    ];
    for (name, kind, help, f) in plain {
        header(out, name, kind, help);
        for b in &backs {
            sample(out, name, &[("backend", &b.target)], f(b));
        }
    }
    header(out, "backend_failures_total", "counter", "Failed connects (or hand-offs) to the back end, by cause.");
    for b in &backs {
        for c in ConnectCause::ALL {
            sample(
                out,
                "backend_failures_total",
                &[("backend", &b.target), ("cause", c.as_str())],
                b.failures[*c as usize],
            );
        }
    }
    header(out, "backend_checks_total", "counter", "Active health checks of the back end, by result.");
    for b in backs.iter().filter(|b| b.checked) {
        for (r, n) in &b.checks {
            sample(out, "backend_checks_total", &[("backend", &b.target), ("result", r.as_str())], n);
        }
    }
    let name = "backend_connect_duration_seconds";
    header(out, name, "histogram", "Connect (or hand-off) time of successful attempts, per back end.");
    for b in &backs {
        histogram(out, name, "backend", &b.target, &b.connect);
    }
    let views = routes(cfg, usize::MAX);
    let used: Vec<(&RouteView, &RouteSnapshot)> =
        views.iter().filter_map(|v| v.stats.as_ref().map(|s| (v, s))).collect();
    let plain: [Plain<'_, RouteSnapshot>; 2] = [
        ("route_connections_total", "counter", "Connections routed to the route (routes that had one).", &|s| {
            s.connections
        }),
        ("route_connections_open", "gauge", "Connections of the route open now.", &|s| s.open),
    ];
    for (name, kind, help, f) in plain {
        header(out, name, kind, help);
        for (v, s) in &used {
            sample(out, name, &[("route", &v.name)], f(s));
        }
    }
    header(out, "route_dropped_total", "counter", "Connections of the route dropped after routing, by reason.");
    for (v, s) in &used {
        for r in DropReason::ALL.iter().filter(|r| s.dropped[**r as usize] > 0) {
            sample(out, "route_dropped_total", &[("route", &v.name), ("reason", r.as_str())], s.dropped[*r as usize]);
        }
    }
    let name = "route_connect_duration_seconds";
    header(out, name, "histogram", "Routed to back end connected (or handed off), per route.");
    for (v, s) in &used {
        histogram(out, name, "route", &v.name, &s.connect);
    }
}

fn latency_json(h: &Hist) -> Value {
    json!({ "count": h.count(), "sum": h.sum_ns as f64 / 1e9, "p50": h.quantile(0.5), "p99": h.quantile(0.99) })
}

/// A back end in `/stats`.
pub fn backend_json(b: &BackendSnapshot) -> Value {
    let failures: Map<String, Value> = ConnectCause::ALL
        .iter()
        .filter(|c| b.failures[**c as usize] > 0)
        .map(|c| (c.as_str().to_owned(), b.failures[*c as usize].into()))
        .collect();
    let checks: Map<String, Value> = b.checks.iter().map(|(r, n)| (r.as_str().to_owned(), (*n).into())).collect();
    json!({
        "backend": b.target,
        "state": b.state(),
        "up": b.up,
        "connections_open": b.active,
        "connections": b.connections,
        "failures": failures,
        "ejections": b.ejections,
        "ejected_workers": b.ejected_by,
        "health_checked": b.checked,
        "checks": if b.checked { Value::Object(checks) } else { Value::Null },
        "last_check": b.last_check.map(CheckResult::as_str),
        "downs": b.downs,
        "connect": latency_json(&b.connect),
    })
}

/// `/stats`' `backends` and `routes`.
pub fn stats_json(cfg: &Config) -> (Value, Value) {
    let backs: Vec<Value> = backends(&cfg.pools).iter().map(backend_json).collect();
    let routes: Vec<Value> = routes(cfg, usize::MAX)
        .iter()
        .map(|v| {
            let s = v.stats.clone().unwrap_or_default();
            let dropped: Map<String, Value> = DropReason::ALL
                .iter()
                .filter(|r| s.dropped[**r as usize] > 0)
                .map(|r| (r.as_str().to_owned(), s.dropped[*r as usize].into()))
                .collect();
            json!({
                "route": v.name,
                "action": v.action,
                "balance": v.balance,
                "backends": v.backends.iter().map(|(b, w, backup)| json!({ "backend": b.target, "weight": w, "backup": backup, "state": b.state() })).collect::<Vec<_>>(),
                "connections": s.connections,
                "connections_open": s.open,
                "dropped": dropped,
                "connect": latency_json(&s.connect),
            })
        })
        .collect();
    (Value::Array(backs), Value::Array(routes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let mut out = String::new();
        let mut h = Hist::default();
        h.buckets[0] = 2; // ≤ 10 µs
        h.buckets[3] = 1; // ≤ 100 µs
        h.buckets[BUCKETS_S.len()] = 1; // +Inf
        h.sum_ns = 20_000_000_000;
        histogram(&mut out, "x_seconds", "route", "a\"b", &h);
        assert!(out.contains("sni_dispatch_x_seconds_bucket{route=\"a\\\"b\",le=\"0.00001\"} 2\n"), "{out}");
        assert!(out.contains("le=\"0.0001\"} 3\n"), "{out}");
        assert!(out.contains("le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("sni_dispatch_x_seconds_sum{route=\"a\\\"b\"} 20\n"), "{out}");
        assert!(out.contains("sni_dispatch_x_seconds_count{route=\"a\\\"b\"} 4\n"), "{out}");
        let b = crate::backend::pool::AtomicHist::default();
        b.record(Duration::from_micros(30));
        let mut m = Hist::default();
        b.merge_into(&mut m);
        assert_eq!(m.count(), 1);
    }
}
