//! `GET /status`: one HTML page in the spirit of HAProxy's stats page, served from the binary
//! (no external assets): a summary line, then every route with its back ends — state (up, down,
//! ejected, backup), open connections, connections per second since the previous view,
//! totals, failures by cause, connect latency p50/p99 — refreshing itself every 2 s (inline
//! script; a `<noscript>` meta refresh without scripts). Rows carry `data-route`,
//! `data-backend` and `data-state` attributes for scripts and tests.

use super::upstream::{routes, RouteView};
use crate::backend::{BackendSnapshot, Hist};
use crate::config::Config;
use crate::metrics::{ConnectCause, Counters, DropReason, Registry};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Routes shown at most (a million-name configuration has hundreds of thousands).
pub const MAX_ROUTES: usize = 500;

/// Totals seen at earlier views, to turn counters into rates.
#[derive(Debug, Default)]
pub struct Rates {
    seen: HashMap<String, (Instant, u64)>,
}

impl Rates {
    /// Per second since the sample of `key` taken at least a second ago (kept until a newer one
    /// is a second old); `None` on the first view.
    fn rate(&mut self, key: String, total: u64, now: Instant) -> Option<f64> {
        match self.seen.get(&key) {
            Some(&(at, before)) => {
                let dt = now.saturating_duration_since(at);
                let r =
                    (dt >= Duration::from_millis(200)).then(|| total.saturating_sub(before) as f64 / dt.as_secs_f64());
                if dt >= Duration::from_secs(1) {
                    self.seen.insert(key, (now, total));
                }
                r
            }
            None => {
                self.seen.insert(key, (now, total));
                None
            }
        }
    }
}

fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 0.001 => format!("{:.0} µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.2} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

fn rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{r:.1}"))
}

fn latency(h: &Hist) -> String {
    format!("{} / {}", ms(h.quantile(0.5)), ms(h.quantile(0.99)))
}

fn failures(b: &BackendSnapshot) -> String {
    let parts: Vec<String> = ConnectCause::ALL
        .iter()
        .filter(|c| b.failures[**c as usize] > 0)
        .map(|c| format!("{} {}", c.as_str(), b.failures[*c as usize]))
        .collect();
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(", ")
    }
}

fn drops(d: &[u64]) -> String {
    let parts: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| d[**r as usize] > 0)
        .map(|r| format!("{} {}", r.as_str(), d[*r as usize]))
        .collect();
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(", ")
    }
}

const STYLE: &str = "body{font:13px/1.4 system-ui,sans-serif;margin:1em;color:#222}\
h1{font-size:18px;margin:0 0 .3em}p.sum{margin:.2em 0 1em}\
table{border-collapse:collapse;width:100%;margin-bottom:1.2em}\
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}\
th{background:#e8e8f0}td.l,th.l{text-align:left}\
tr.route td{background:#d8e4f8;font-weight:600}\
tr.up td.state{background:#9e9;color:#040}tr.down td.state{background:#e77;color:#fff}\
tr.ejected td.state{background:#fc6}tr.backup td.name{font-style:italic}\
tr.route.down td.state{background:#e77;color:#fff}tr.route.up td.state{background:#9e9;color:#040}";

const SCRIPT: &str = "setInterval(function(){fetch(location.pathname,{cache:'no-store'})\
.then(function(r){return r.text()}).then(function(t){var d=new DOMParser().parseFromString(t,'text/html');\
var m=d.querySelector('main');if(m){document.querySelector('main').replaceWith(m)}}).catch(function(){})},2000);";

/// The page.
pub fn page(cfg: &Config, registry: &Registry, accepting: bool, uptime: Duration, rates: &Mutex<Rates>) -> String {
    let mut rates = rates.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let m: Counters = registry.merged();
    let views = routes(cfg, MAX_ROUTES);
    let mut out = String::with_capacity(8192 + views.len() * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sni-dispatch status</title>\
         <noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript><style>{STYLE}</style></head><body><main>"
    );
    let accepted_rate = rates.rate("accepted".into(), m.accepted, now);
    let _ = write!(
        out,
        "<h1>sni-dispatch</h1><p class=\"sum\" id=\"summary\">{} for {:.0} s &middot; {} accepted ({} /s) &middot; \
         {} open &middot; {} routed &middot; {} dropped &middot; {} handed off &middot; {} routes, {} back ends</p>",
        if accepting { "serving" } else { "draining" },
        uptime.as_secs_f64(),
        m.accepted,
        rate(accepted_rate),
        m.open,
        m.routed_total(),
        m.dropped_total(),
        m.relays.get(crate::metrics::RelayKind::Handoff),
        cfg.table.len(),
        cfg.pools.backends().count(),
    );
    out.push_str(
        "<table id=\"routes\"><thead><tr><th class=\"l\">route / back end</th><th>state</th><th class=\"l\">balance / weight</th>\
         <th>open</th><th>conn/s</th><th>total</th><th class=\"l\">failures</th><th class=\"l\">health</th>\
         <th>connect p50 / p99</th></tr></thead>",
    );
    for v in &views {
        route_rows(&mut out, v, &mut rates, now);
    }
    out.push_str("</table>");
    if cfg.table.len() > MAX_ROUTES {
        let _ = write!(out, "<p>… and {} more routes (see /stats).</p>", cfg.table.len() - MAX_ROUTES);
    }
    let _ = write!(out, "</main><script>{SCRIPT}</script></body></html>");
    out
}

fn route_rows(out: &mut String, v: &RouteView, rates: &mut Rates, now: Instant) {
    let s = v.stats.clone().unwrap_or_default();
    let usable = v.backends.iter().any(|(b, _, _)| b.up);
    let state = if usable { "up" } else { "down" };
    let r = rates.rate(format!("route {}", v.name), s.connections, now);
    let name = html(&v.name);
    let _ = write!(
        out,
        "<tbody data-route=\"{name}\"><tr class=\"route {state}\" data-route=\"{name}\" data-state=\"{state}\">\
         <td class=\"l name\">{name} <small>({})</small></td><td class=\"state\">{}</td><td class=\"l\">{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td><td class=\"l\"></td><td>{}</td></tr>",
        v.action,
        state.to_uppercase(),
        v.balance,
        s.open,
        rate(r),
        s.connections,
        drops(&s.dropped),
        latency(&s.connect),
    );
    for (b, weight, backup) in &v.backends {
        let st = b.state();
        let target = html(&b.target);
        let r = rates.rate(format!("backend {}", b.target), b.connections, now);
        let health = if !b.checked {
            "not checked".to_owned()
        } else {
            let last = b.last_check.map_or("pending", |c| c.as_str());
            format!("last {last}, {} down", b.downs)
        };
        let shown = if *backup && st == "up" { "BACKUP".to_owned() } else { st.to_uppercase() };
        let _ = write!(
            out,
            "<tr class=\"backend {st}{}\" data-route=\"{name}\" data-backend=\"{target}\" data-state=\"{st}\">\
             <td class=\"l name\">&nbsp;&nbsp;{target}</td><td class=\"state\">{shown}</td><td class=\"l\">{weight}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td></tr>",
            if *backup { " backup" } else { "" },
            b.active,
            rate(r),
            b.connections,
            failures(b),
            html(&health),
            latency(&b.connect),
        );
    }
    out.push_str("</tbody>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_compare_with_a_sample_at_least_a_second_old() {
        let mut r = Rates::default();
        let t0 = Instant::now();
        assert_eq!(r.rate("a".into(), 100, t0), None);
        let got = r.rate("a".into(), 150, t0 + Duration::from_millis(500)).unwrap();
        assert!((got - 100.0).abs() < 1e-9, "{got}");
        let got = r.rate("a".into(), 300, t0 + Duration::from_secs(2)).unwrap();
        assert!((got - 100.0).abs() < 1e-9, "{got}");
        assert_eq!(html("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
