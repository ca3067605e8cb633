//! Rendering the workers' published metrics: Prometheus text exposition, JSON, and the
//! one-screen summary printed on SIGUSR1 and at shutdown.
//!
//! Counters are merged over workers (a `worker` label only on the per-worker series
//! `sni_dispatch_worker_*`, so summing a metric never double counts); latencies are summaries
//! with quantiles 0.5, 0.9, 0.99, 0.999 merged across workers, plus `_sum` and `_count`.
use crate::metrics::{
    ControlCounters, Counters, Direction, DropReason, Family, Hist, Histograms, Registry, RelayKind, Unit, PHASES,
};
use crate::route::Match;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::time::Duration;

/// Prefix of every metric name.
pub const PREFIX: &str = "sni_dispatch_";
/// The quantiles of each summary.
pub const QUANTILES: [(f64, &str); 4] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")];

fn f(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
}

/// Scales a recorded value (ns or bytes) to the exposed unit (seconds or bytes).
fn scaled(k: Hist, v: u64) -> f64 {
    match k.unit() {
        Unit::Seconds => v as f64 / 1e9,
        Unit::Bytes => v as f64,
    }
}

fn metric_name(k: Hist) -> String {
    match k.unit() {
        Unit::Seconds => format!("{}_seconds", k.name()),
        Unit::Bytes => format!("{}_bytes", k.name()),
    }
}

/// The Prometheus text exposition (format 0.0.4) of `registry`.
pub fn prometheus(registry: &Registry, accepting: bool) -> String {
    let per = registry.snapshot();
    let mut m = registry.process();
    for c in &per {
        m.merge(c);
    }
    let hists = registry.merged_histograms();
    let mut out = String::with_capacity(16 * 1024);

    header(&mut out, "accepting", "gauge", "1 while the process accepts connections, 0 while draining.");
    let _ = writeln!(out, "{PREFIX}accepting {}", u8::from(accepting));
    header(&mut out, "workers", "gauge", "Worker threads.");
    let _ = writeln!(out, "{PREFIX}workers {}", per.len());
    let mut family = |family: &Family, value: &dyn crate::metrics::Value| {
        header(&mut out, family.name, family.kind.as_str(), family.help);
        value.samples(&mut |label, n| {
            let _ = match label {
                None => writeln!(out, "{PREFIX}{} {n}", family.name),
                Some((key, v)) => writeln!(out, "{PREFIX}{}{{{key}=\"{v}\"}} {n}", family.name),
            };
        });
    };
    m.visit(&mut family);
    let control = registry.control_snapshot();
    control.counters.visit(&mut family);
    header(
        &mut out,
        "config_last_change_timestamp_seconds",
        "gauge",
        "When the configuration last changed (Unix time).",
    );
    let _ = writeln!(out, "{PREFIX}config_last_change_timestamp_seconds {}", f(control.changed_at));
    header(
        &mut out,
        "config_last_reload_seconds",
        "gauge",
        "What the last reload or API change spent, by phase (parse, build, swap).",
    );
    for (phase, v) in PHASES.iter().zip(control.last) {
        let _ = writeln!(out, "{PREFIX}config_last_reload_seconds{{phase=\"{phase}\"}} {}", f(v));
    }

    for k in Hist::ALL {
        let name = metric_name(k);
        header(&mut out, &name, "summary", k.help());
        let empty = hists.count(k) == 0;
        for (q, label) in QUANTILES {
            let v = if empty { f64::NAN } else { scaled(k, hists.quantile(k, q)) };
            let _ = writeln!(out, "{PREFIX}{name}{{quantile=\"{label}\"}} {}", f(v));
        }
        let _ = writeln!(out, "{PREFIX}{name}_sum {}", f(scaled(k, hists.sum(k))));
        let _ = writeln!(out, "{PREFIX}{name}_count {}", hists.count(k));
    }

    header(&mut out, "worker_connections_accepted_total", "counter", "Connections accepted, per worker.");
    for (i, c) in per.iter().enumerate() {
        let _ = writeln!(out, "{PREFIX}worker_connections_accepted_total{{worker=\"{i}\"}} {}", c.accepted);
    }
    header(&mut out, "worker_connections_open", "gauge", "Connections open now, per worker.");
    for (i, c) in per.iter().enumerate() {
        let _ = writeln!(out, "{PREFIX}worker_connections_open{{worker=\"{i}\"}} {}", c.open);
    }
    header(&mut out, "worker_connections_dropped_total", "counter", "Connections dropped (all reasons), per worker.");
    for (i, c) in per.iter().enumerate() {
        let _ = writeln!(out, "{PREFIX}worker_connections_dropped_total{{worker=\"{i}\"}} {}", c.dropped_total());
    }
    out
}

/// Every family of `c` under its field name: a number, or an object by label value.
fn counters_json(c: &Counters) -> Value {
    let mut out = Map::new();
    c.visit(&mut |family, value| family_json(&mut out, family, value));
    Value::Object(out)
}

/// The control plane's counters, as [`counters_json`] renders a worker's.
fn control_json(c: &ControlCounters) -> Value {
    let mut out = Map::new();
    c.visit(&mut |family, value| family_json(&mut out, family, value));
    Value::Object(out)
}

fn family_json(out: &mut Map<String, Value>, family: &Family, value: &dyn crate::metrics::Value) {
    {
        let mut by = Map::new();
        let mut plain = None;
        value.samples(&mut |label, n| match label {
            None => plain = Some(n),
            Some((_, v)) => {
                by.insert(v.to_owned(), n.into());
            }
        });
        out.insert(family.field.to_owned(), plain.map_or(Value::Object(by), Value::from));
    }
}

fn hists_json(h: &Histograms) -> Value {
    let mut m = Map::new();
    for k in Hist::ALL {
        let count = h.count(k);
        let q = |p: f64| if count == 0 { Value::Null } else { json!(scaled(k, h.quantile(k, p))) };
        m.insert(
            metric_name(k),
            json!({
                "count": count,
                "sum": scaled(k, h.sum(k)),
                "p50": q(0.5),
                "p90": q(0.9),
                "p99": q(0.99),
                "p999": q(0.999),
                "max": if count == 0 { Value::Null } else { json!(scaled(k, h.get(k).max())) },
            }),
        );
    }
    Value::Object(m)
}

/// `/stats`: counters and latency summaries (seconds; sizes in bytes) per worker and merged.
pub fn stats_json(registry: &Registry, accepting: bool, uptime: Duration) -> String {
    stats_json_with(registry, accepting, uptime, None)
}

/// [`stats_json`], with the routes' and back ends' figures of `config` (`routes`, `backends`).
pub fn stats_json_with(
    registry: &Registry,
    accepting: bool,
    uptime: Duration,
    config: Option<&crate::config::Config>,
) -> String {
    let per = registry.snapshot();
    let hists = registry.histograms();
    let mut merged = registry.process();
    let mut merged_h = Histograms::default();
    let workers: Vec<Value> = per
        .iter()
        .zip(&hists)
        .enumerate()
        .map(|(i, (c, h))| {
            merged.merge(c);
            merged_h.merge(h);
            json!({ "worker": i, "counters": counters_json(c), "latency": hists_json(h) })
        })
        .collect();
    let control = registry.control_snapshot();
    let last: Map<String, Value> = PHASES.iter().zip(control.last).map(|(p, v)| ((*p).to_owned(), v.into())).collect();
    let mut v = json!({
        "accepting": accepting,
        "uptime_seconds": uptime.as_secs_f64(),
        "control": {
            "counters": control_json(&control.counters),
            "last_change_timestamp_seconds": control.changed_at,
            "last_reload_seconds": last,
        },
        "merged": { "counters": counters_json(&merged), "latency": hists_json(&merged_h) },
        "workers": workers,
    });
    if let Some(cfg) = config {
        let (backends, routes) = super::upstream::stats_json(cfg);
        v["backends"] = backends;
        v["routes"] = routes;
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// A value for people: `850ns`, `12.3µs`, `4.56ms`, `1.23s`; sizes as `517B`.
fn human(k: Hist, v: u64, count: u64) -> String {
    if count == 0 {
        return "-".into();
    }
    if k.unit() == Unit::Bytes {
        return format!("{v}B");
    }
    let ns = v as f64;
    if ns < 1e3 {
        format!("{v}ns")
    } else if ns < 1e6 {
        format!("{:.1}µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

fn pcts(h: &Histograms, k: Hist) -> String {
    let n = h.count(k);
    format!(
        "{}/{}/{}",
        human(k, h.quantile(k, 0.5), n),
        human(k, h.quantile(k, 0.99), n),
        human(k, h.quantile(k, 0.999), n)
    )
}

/// The one-screen summary: merged outcomes and latencies, then one line per worker.
pub fn summary(registry: &Registry, uptime: Duration) -> String {
    let per = registry.snapshot();
    let hists = registry.histograms();
    let mut m = registry.process();
    let mut mh = Histograms::default();
    for (c, h) in per.iter().zip(&hists) {
        m.merge(c);
        mh.merge(h);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sni-dispatch summary after {:.1} s, {} worker(s): {} accepted, {} open, {} routed, {} dropped",
        uptime.as_secs_f64(),
        per.len(),
        m.accepted,
        m.open,
        m.routed_total(),
        m.dropped_total()
    );
    let routed: Vec<String> = Match::ALL
        .iter()
        .filter(|x| m.routed_by(**x) > 0)
        .map(|x| format!("{} {}", x.as_str(), m.routed_by(*x)))
        .collect();
    let _ = writeln!(out, "  routed:  {}", if routed.is_empty() { "-".into() } else { routed.join(", ") });
    let dropped: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| m.dropped_by(**r) > 0)
        .map(|r| format!("{} {}", r.as_str(), m.dropped_by(*r)))
        .collect();
    let _ = writeln!(out, "  dropped: {}", if dropped.is_empty() { "-".into() } else { dropped.join(", ") });
    let _ = writeln!(
        out,
        "  relays:  splice {}, buffered {}, tls {}, handoff {} ({} handshakes, {} resumed); errors {}, idle timeouts {}, backend connect failures {}",
        m.relays.get(RelayKind::Splice),
        m.relays.get(RelayKind::Buffered),
        m.relays.get(RelayKind::Tls),
        m.relays.get(RelayKind::Handoff),
        m.tls_handshakes,
        m.tls_resumed,
        m.relay_errors.total(),
        m.idle_timeouts,
        m.backend_connect_failures.total()
    );
    let _ = writeln!(
        out,
        "  bytes:   client→backend {}, backend→client {}",
        m.bytes.get(Direction::ClientToBackend),
        m.bytes.get(Direction::BackendToClient)
    );
    let _ = writeln!(out, "  {:<22} {:>8}  p50/p99/p99.9", "latency", "count");
    for k in Hist::ALL {
        let _ = writeln!(out, "  {:<22} {:>8}  {}", k.name(), mh.count(k), pcts(&mh, k));
    }
    for (i, (c, h)) in per.iter().zip(&hists).enumerate() {
        let _ = writeln!(
            out,
            "  worker {i}: accepted {}, routed {}, dropped {}, open {}; hello wait {}, lifetime {}",
            c.accepted,
            c.routed_total(),
            c.dropped_total(),
            c.open,
            pcts(h, Hist::HelloWait),
            pcts(h, Hist::Lifetime)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Local;

    #[test]
    fn renders_every_series() {
        let reg = Registry::new(2);
        let a = Local::new(reg.slot(0));
        a.routed(Match::ExactSni);
        a.dropped(DropReason::UnknownSni);
        a.record(Hist::RouteLookup, 700);
        a.publish_final();
        let text = prometheus(&reg, true);
        assert!(text.contains("sni_dispatch_connections_routed_total{how=\"sni\"} 1\n"));
        assert!(text.contains("sni_dispatch_connections_dropped_total{reason=\"unknown_sni\"} 1\n"));
        assert!(text.contains("sni_dispatch_route_lookup_seconds_count 1\n"));
        assert!(text.contains("sni_dispatch_route_lookup_seconds{quantile=\"0.5\"} 0.0000007"));
        assert!(text.contains("sni_dispatch_tls_handshake_seconds{quantile=\"0.99\"} NaN\n"));
        assert!(text.contains("sni_dispatch_worker_connections_accepted_total{worker=\"1\"} 0\n"));
        let v: Value = serde_json::from_str(&stats_json(&reg, true, Duration::from_secs(1))).unwrap();
        assert_eq!(v["merged"]["counters"]["routed"]["sni"], 1);
        assert_eq!(v["workers"][0]["latency"]["route_lookup_seconds"]["count"], 1);
        assert!(v["workers"][1]["latency"]["route_lookup_seconds"]["p50"].is_null());
        let s = summary(&reg, Duration::from_secs(3));
        assert!(s.contains("unknown_sni 1"), "{s}");
        assert!(s.lines().count() <= 24, "{s}");
    }
}
