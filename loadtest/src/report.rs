//! Results: per-run figures, per-target medians, ratio tables, terminal tables and JSON.

use crate::workloads::SlowStats;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50_us: h.value_at_quantile(0.5) as f64,
            p90_us: h.value_at_quantile(0.9) as f64,
            p99_us: h.value_at_quantile(0.99) as f64,
            p999_us: h.value_at_quantile(0.999) as f64,
            max_us: h.max() as f64,
            mean_us: h.mean(),
        }
    }
}

/// The percentile curve of a histogram: (percentile in 0..100, latency µs), HDR style.
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return vec![];
    }
    let mut v: Vec<(f64, f64)> =
        h.iter_quantiles(5).map(|q| (q.percentile(), h.highest_equivalent(q.value_iterated_to()) as f64)).collect();
    v.dedup_by(|a, b| a.0 == b.0);
    v
}

/// One run of one workload against one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub target: String,
    pub run: usize,
    pub ok: u64,
    pub expected_drops: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    /// successful connections per second
    pub rate: f64,
    pub bytes: u64,
    pub gib_per_s: f64,
    /// coordinated-omission corrected in open loops
    pub latency: Percentiles,
    /// from the actual start of each connection
    pub service: Percentiles,
    pub cpu_s: f64,
    pub cpu_us_per_conn: f64,
    pub cpu_s_per_gib: f64,
    pub peak_rss_kib: u64,
    pub resumed_share: f64,
    /// CPU seconds of sni-loadtest itself (load generators and back ends) during the run
    #[serde(default)]
    pub load_cpu_s: f64,
    pub slowloris: Option<SlowStats>,
    /// open loop: connections due that were never started (overload)
    #[serde(default)]
    pub not_started: u64,
}

impl RunResult {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Medians over the runs of one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetSummary {
    pub target: String,
    pub runs: usize,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub rate: f64,
    pub gib_per_s: f64,
    pub latency: Percentiles,
    pub cpu_us_per_conn: f64,
    pub cpu_s_per_gib: f64,
    pub peak_rss_kib: u64,
    pub resumed_share: f64,
    /// percentile curve of all runs merged
    pub curve: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadReport {
    pub name: String,
    pub kind: String,
    pub shape: String,
    /// bulk workloads compare CPU per GiB, the others CPU per connection
    pub bulk: bool,
    pub runs: Vec<RunResult>,
    pub summary: Vec<TargetSummary>,
}

/// baseline ÷ peer, per workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub workload: String,
    pub baseline: String,
    pub peer: String,
    /// CPU per connection (per GiB for bulk): below 1, the baseline is cheaper
    pub cpu: Option<f64>,
    /// rate (GiB/s for bulk): above 1, the baseline is faster
    pub rate: Option<f64>,
    /// p99 latency: below 1, the baseline is quicker
    pub p99: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub suite: String,
    pub description: String,
    pub unix_time: u64,
    pub host: String,
    pub targets: Vec<String>,
    /// targets that could not be started, and why
    pub target_errors: BTreeMap<String, String>,
    pub workloads: Vec<WorkloadReport>,
    pub ratios: Vec<Ratio>,
    /// suites with `[scaling]`: every size's placement and figures (the per-size workloads are
    /// also in `workloads`, named `WORKLOAD.wN`)
    #[serde(default)]
    pub scaling: Option<crate::scaling::ScalingReport>,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Summarize the runs of `target`; `merged` is the histogram of all its runs.
pub fn summarize(target: &str, runs: &[RunResult], merged: &Histogram<u64>) -> TargetSummary {
    let rs: Vec<&RunResult> = runs.iter().filter(|r| r.target == target).collect();
    let m = |f: &dyn Fn(&RunResult) -> f64| median(rs.iter().map(|r| f(r)).collect());
    let mut errors = BTreeMap::new();
    for r in &rs {
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    TargetSummary {
        target: target.to_string(),
        runs: rs.len(),
        ok: rs.iter().map(|r| r.ok).sum(),
        errors,
        rate: m(&|r| r.rate),
        gib_per_s: m(&|r| r.gib_per_s),
        latency: Percentiles {
            p50_us: m(&|r| r.latency.p50_us),
            p90_us: m(&|r| r.latency.p90_us),
            p99_us: m(&|r| r.latency.p99_us),
            p999_us: m(&|r| r.latency.p999_us),
            max_us: m(&|r| r.latency.max_us),
            mean_us: m(&|r| r.latency.mean_us),
        },
        cpu_us_per_conn: m(&|r| r.cpu_us_per_conn),
        cpu_s_per_gib: m(&|r| r.cpu_s_per_gib),
        peak_rss_kib: rs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0),
        resumed_share: m(&|r| r.resumed_share),
        curve: curve(merged),
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// Ratios of the first target (the baseline) to each other target, per workload.
pub fn ratios(workloads: &[WorkloadReport], baseline: &str) -> Vec<Ratio> {
    let mut out = Vec::new();
    for w in workloads {
        let Some(b) = w.summary.iter().find(|s| s.target == baseline) else { continue };
        for p in w.summary.iter().filter(|s| s.target != baseline) {
            out.push(Ratio {
                workload: w.name.clone(),
                baseline: baseline.to_string(),
                peer: p.target.clone(),
                cpu: if w.bulk {
                    ratio(b.cpu_s_per_gib, p.cpu_s_per_gib)
                } else {
                    ratio(b.cpu_us_per_conn, p.cpu_us_per_conn)
                },
                rate: if w.bulk { ratio(b.gib_per_s, p.gib_per_s) } else { ratio(b.rate, p.rate) },
                p99: ratio(b.latency.p99_us, p.latency.p99_us),
            });
        }
    }
    out
}

pub fn fmt_us(us: f64) -> String {
    if us <= 0.0 {
        "-".into()
    } else if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

fn errors_text(e: &BTreeMap<String, u64>) -> String {
    if e.is_empty() {
        return "0".into();
    }
    e.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A plain-text table; the first column left-aligned, the others right-aligned.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut w = vec![0; cols];
    for r in std::iter::once(header).chain(rows.iter().map(|r| r.as_slice())) {
        for (i, c) in r.iter().enumerate().take(cols) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, r: &[String]| {
        for (i, c) in r.iter().enumerate().take(cols) {
            let pad = w[i] - c.chars().count();
            if i == 0 {
                let _ = write!(out, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{c}", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(&mut out, header);
    let total: usize = w.iter().sum::<usize>() + 2 * (cols - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in rows {
        line(&mut out, r);
    }
    out
}

pub fn workload_table(w: &WorkloadReport) -> String {
    let h: Vec<String> = if w.bulk {
        ["target", "conns", "GiB/s", "errors", "p50", "p99", "max", "CPU s/GiB", "CPU µs/conn", "peak RSS"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        ["target", "conn/s", "ok (all runs)", "errors", "p50", "p90", "p99", "p99.9", "max", "CPU µs/conn", "peak RSS"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let mut rows = Vec::new();
    for s in &w.summary {
        let rss = format!("{:.1}MiB", s.peak_rss_kib as f64 / 1024.0);
        let l = &s.latency;
        let mut name = s.target.clone();
        if s.resumed_share > 0.0 {
            name = format!("{name} ({:.0}% resumed)", s.resumed_share * 100.0);
        }
        rows.push(if w.bulk {
            vec![
                name,
                s.ok.to_string(),
                format!("{:.2}", s.gib_per_s),
                errors_text(&s.errors),
                fmt_us(l.p50_us),
                fmt_us(l.p99_us),
                fmt_us(l.max_us),
                format!("{:.3}", s.cpu_s_per_gib),
                format!("{:.0}", s.cpu_us_per_conn),
                rss,
            ]
        } else {
            vec![
                name,
                format!("{:.0}", s.rate),
                s.ok.to_string(),
                errors_text(&s.errors),
                fmt_us(l.p50_us),
                fmt_us(l.p90_us),
                fmt_us(l.p99_us),
                fmt_us(l.p999_us),
                fmt_us(l.max_us),
                format!("{:.1}", s.cpu_us_per_conn),
                rss,
            ]
        });
    }
    let runs = w.summary.first().map(|s| s.runs).unwrap_or(0);
    let mut out = format!(
        "== {} ({}; {}; median of {} run{})\n",
        w.name,
        w.kind,
        w.shape,
        runs,
        if runs == 1 { "" } else { "s" }
    );
    out.push_str(&table(&h, &rows));
    for r in &w.runs {
        if r.not_started > 0 {
            let _ = writeln!(
                out,
                "   {} run {}: {} connections due were never started (overloaded; latency counts from intended starts)",
                r.target, r.run, r.not_started
            );
        }
        if let Some(sl) = &r.slowloris {
            let _ = writeln!(
                out,
                "   slowloris vs {} run {}: opened {}, closed by target {} (mean life {:.1}s), hello completed {}, still open {}",
                r.target, r.run, sl.opened, sl.closed_by_target, sl.mean_life_s, sl.hello_completed, sl.open_at_end
            );
        }
    }
    out
}

pub fn ratio_table(r: &[Ratio]) -> String {
    if r.is_empty() {
        return String::new();
    }
    let b = &r[0].baseline;
    let h: Vec<String> = vec!["workload".into(), "peer".into(), "CPU".into(), "rate".into(), "p99".into()];
    let rows: Vec<Vec<String>> = r
        .iter()
        .map(|x| vec![x.workload.clone(), x.peer.clone(), fmt_opt(x.cpu), fmt_opt(x.rate), fmt_opt(x.p99)])
        .collect();
    format!(
        "== ratios {b} ÷ peer (CPU per connection, per GiB for bulk: < 1 means {b} is cheaper; rate: > 1 means {b} is faster; p99: < 1 means {b} is quicker)\n{}",
        table(&h, &rows)
    )
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (t, e) in &self.target_errors {
            let _ = writeln!(out, "!! {t} not measured: {e}");
        }
        for w in &self.workloads {
            out.push_str(&workload_table(w));
            out.push('\n');
        }
        out.push_str(&ratio_table(&self.ratios));
        if let Some(s) = &self.scaling {
            out.push('\n');
            out.push_str(&crate::scaling::text(s));
        }
        out
    }
    pub fn total_errors(&self) -> u64 {
        self.workloads.iter().flat_map(|w| &w.runs).map(|r| r.error_count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: &str, run: usize, rate: f64, cpu: f64, p99: f64) -> RunResult {
        RunResult {
            target: target.into(),
            run,
            ok: 1000,
            rate,
            cpu_us_per_conn: cpu,
            latency: Percentiles { p50_us: p99 / 2.0, p99_us: p99, ..Default::default() },
            ..Default::default()
        }
    }

    fn sample() -> Report {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let runs = vec![
            run("sni-dispatch", 0, 20000.0, 40.0, 300.0),
            run("haproxy", 0, 15000.0, 66.0, 500.0),
            run("sni-dispatch", 1, 22000.0, 44.0, 320.0),
            run("haproxy", 1, 14000.0, 70.0, 520.0),
            run("sni-dispatch", 2, 21000.0, 42.0, 900.0),
            run("haproxy", 2, 16000.0, 68.0, 510.0),
        ];
        let mut errs = BTreeMap::new();
        errs.insert("reset".to_string(), 2u64);
        let mut runs = runs;
        runs[1].errors = errs;
        let summary = vec![summarize("sni-dispatch", &runs, &h), summarize("haproxy", &runs, &h)];
        let w = WorkloadReport {
            name: "short".into(),
            kind: "hello_replay".into(),
            shape: "closed loop, 32 connections".into(),
            bulk: false,
            runs,
            summary,
        };
        let ratios = ratios(std::slice::from_ref(&w), "sni-dispatch");
        Report {
            suite: "t".into(),
            targets: vec!["sni-dispatch".into(), "haproxy".into()],
            workloads: vec![w],
            ratios,
            ..Default::default()
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        let r = sample();
        let s = &r.workloads[0].summary[0];
        assert_eq!(s.rate, 21000.0);
        assert_eq!(s.cpu_us_per_conn, 42.0);
        assert_eq!(s.latency.p99_us, 320.0);
        assert_eq!(s.runs, 3);
        assert_eq!(s.ok, 3000);
    }

    #[test]
    fn ratio_table_values() {
        let r = sample();
        assert_eq!(r.ratios.len(), 1);
        let x = &r.ratios[0];
        assert_eq!(x.peer, "haproxy");
        assert!((x.cpu.unwrap() - 42.0 / 68.0).abs() < 1e-9);
        assert!((x.rate.unwrap() - 21000.0 / 15000.0).abs() < 1e-9);
        assert!((x.p99.unwrap() - 320.0 / 510.0).abs() < 1e-9);
        let t = ratio_table(&r.ratios);
        assert!(t.contains("short"), "{t}");
        assert!(t.contains("0.62"), "{t}"); // 42/68
        assert!(t.contains("1.40"), "{t}"); // 21000/15000
        let text = r.text();
        assert!(text.contains("reset=2"), "{text}");
        assert!(text.contains("21000"), "{text}");
        assert_eq!(r.total_errors(), 2);
    }

    #[test]
    fn ratio_missing_figures_are_none() {
        let mut r = sample();
        r.workloads[0].summary[1].cpu_us_per_conn = 0.0;
        let x = ratios(&r.workloads, "sni-dispatch");
        assert_eq!(x[0].cpu, None);
        assert!(ratio_table(&x).contains(" -"));
        assert!(ratios(&r.workloads, "nginx").is_empty());
    }

    #[test]
    fn json_round_trip() {
        let r = sample();
        let j = serde_json::to_string_pretty(&r).unwrap();
        let back: Report = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
        assert!(j.contains("\"cpu_us_per_conn\""));
    }

    #[test]
    fn curve_is_monotone() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in 1..=100_000u64 {
            h.record(v).unwrap();
        }
        let c = curve(&h);
        assert!(c.len() > 20);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!(c.last().unwrap().0 > 99.99);
    }
}
