//! Results: per-run figures, per-target medians, ratio tables, terminal tables and JSON.

use crate::counts::Counts;
use crate::idle::IdleStats;
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
    /// `refusal_expected`: connections the target refused (not errors)
    #[serde(default)]
    pub refused: u64,
    /// idle workloads: memory and descriptors per held connection
    #[serde(default)]
    pub idle: Option<IdleStats>,
    /// `--counts`: system calls, io_uring submissions, wake-ups, TCP segments
    #[serde(default)]
    pub counts: Option<Counts>,
    /// the workload that ran beside this one (`background`)
    #[serde(default)]
    pub background: Option<Background>,
}

/// What a background workload did during one run (its errors are also in the run's, as `bg_KIND`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Background {
    pub workload: String,
    pub ok: u64,
    pub refused: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub bytes: u64,
    /// ok + refused + expected drops: the connections the target saw
    pub conns: u64,
    pub rate: f64,
    pub gib_per_s: f64,
    pub bulk: bool,
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
    /// target CPU seconds of a run, median
    #[serde(default)]
    pub cpu_s: f64,
    #[serde(default)]
    pub refused: u64,
    /// idle workloads: the run with the median KiB per connection
    #[serde(default)]
    pub idle: Option<IdleStats>,
    /// `--counts`: totals summed over the runs, per-connection figures the medians of the runs'
    #[serde(default)]
    pub counts: Option<Counts>,
    /// the background workload: counts summed, rates the medians of the runs'
    #[serde(default)]
    pub background: Option<Background>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadReport {
    pub name: String,
    pub kind: String,
    pub shape: String,
    /// bulk workloads compare CPU per GiB, the others CPU per connection
    pub bulk: bool,
    /// idle workloads: memory per connection instead of rates and latency
    #[serde(default)]
    pub idle: bool,
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
    /// workloads with `compare_to`: their latency against the other workload's, per target
    #[serde(default)]
    pub comparisons: Vec<Comparison>,
}

/// A workload against the one it names in `compare_to` (the same load without its background),
/// for one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub workload: String,
    pub baseline: String,
    pub target: String,
    pub p50_alone_us: f64,
    pub p50_with_us: f64,
    pub p99_alone_us: f64,
    pub p99_with_us: f64,
    /// p99 with ÷ p99 alone (1: unaffected)
    pub p99_ratio: Option<f64>,
    pub background: Option<String>,
    /// connections the background made per run (median)
    pub background_conns: f64,
    /// successful background connections per second (median)
    #[serde(default)]
    pub background_rate: f64,
    pub background_gib_per_s: f64,
    /// the target's CPU beyond what the workload's connections cost alone, per background
    /// connection: (CPU − conns × CPU per conn alone) ÷ background conns, median of the runs
    pub bg_cpu_us_per_conn: Option<f64>,
    /// the same per GiB the background moved (bulk backgrounds)
    pub bg_cpu_s_per_gib: Option<f64>,
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
        cpu_s: m(&|r| r.cpu_s),
        refused: rs.iter().map(|r| r.refused).sum(),
        idle: median_idle(&rs),
        counts: sum_counts(&rs),
        background: sum_background(&rs),
    }
}

/// The idle figures of the run with the median KiB per connection (the lower one of two).
fn median_idle(rs: &[&RunResult]) -> Option<IdleStats> {
    let mut v: Vec<&IdleStats> = rs.iter().filter_map(|r| r.idle.as_ref()).collect();
    v.sort_by(|a, b| a.kib_per_conn.total_cmp(&b.kib_per_conn));
    v.get(v.len().saturating_sub(1) / 2).map(|x| (*x).clone())
}

fn median_of(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = v.flatten().collect();
    (!v.is_empty()).then(|| median(v))
}

fn sum_of(v: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    v.fold(None, |a, x| match (a, x) {
        (None, x) => x,
        (a, None) => a,
        (Some(a), Some(x)) => Some(a + x),
    })
}

fn sum_counts(rs: &[&RunResult]) -> Option<Counts> {
    let c: Vec<&Counts> = rs.iter().filter_map(|r| r.counts.as_ref()).collect();
    if c.is_empty() {
        return None;
    }
    let mut notes: Vec<String> = c.iter().flat_map(|x| x.notes.iter().cloned()).collect();
    notes.sort();
    notes.dedup();
    Some(Counts {
        conns: c.iter().map(|x| x.conns).sum(),
        syscalls: sum_of(c.iter().map(|x| x.syscalls)),
        io_uring_submits: sum_of(c.iter().map(|x| x.io_uring_submits)),
        wakeups: sum_of(c.iter().map(|x| x.wakeups)),
        tcp_out_segs: sum_of(c.iter().map(|x| x.tcp_out_segs)),
        syscalls_per_conn: median_of(c.iter().map(|x| x.syscalls_per_conn)),
        io_uring_submits_per_conn: median_of(c.iter().map(|x| x.io_uring_submits_per_conn)),
        wakeups_per_conn: median_of(c.iter().map(|x| x.wakeups_per_conn)),
        tcp_segs_per_conn: median_of(c.iter().map(|x| x.tcp_segs_per_conn)),
        notes,
    })
}

fn sum_background(rs: &[&RunResult]) -> Option<Background> {
    let b: Vec<&Background> = rs.iter().filter_map(|r| r.background.as_ref()).collect();
    let first = b.first()?;
    let mut errors = BTreeMap::new();
    for x in &b {
        for (k, v) in &x.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    Some(Background {
        workload: first.workload.clone(),
        ok: b.iter().map(|x| x.ok).sum(),
        refused: b.iter().map(|x| x.refused).sum(),
        errors,
        elapsed_s: median(b.iter().map(|x| x.elapsed_s).collect()),
        bytes: b.iter().map(|x| x.bytes).sum(),
        conns: b.iter().map(|x| x.conns).sum(),
        rate: median(b.iter().map(|x| x.rate).collect()),
        gib_per_s: median(b.iter().map(|x| x.gib_per_s).collect()),
        bulk: first.bulk,
    })
}

/// `with` (a workload with a background) against `alone` (its `compare_to`), target by target.
pub fn compare(with: &WorkloadReport, alone: &WorkloadReport) -> Vec<Comparison> {
    let mut out = Vec::new();
    for s in &with.summary {
        let Some(a) = alone.summary.iter().find(|x| x.target == s.target) else { continue };
        let runs: Vec<&RunResult> = with.runs.iter().filter(|r| r.target == s.target).collect();
        let bgs: Vec<&Background> = runs.iter().filter_map(|r| r.background.as_ref()).collect();
        // the CPU the background added: the run's CPU less its own connections at their cost alone
        let extra = |r: &RunResult| r.cpu_s - (r.ok + r.expected_drops) as f64 * a.cpu_us_per_conn / 1e6;
        let per = |f: &dyn Fn(&Background) -> f64, scale: f64| {
            median_of(runs.iter().filter_map(|r| {
                let b = r.background.as_ref()?;
                let d = f(b);
                (d > 0.0 && a.cpu_us_per_conn > 0.0).then(|| Some(extra(r) * scale / d))
            }))
        };
        let bulk = bgs.first().is_some_and(|b| b.bulk);
        out.push(Comparison {
            workload: with.name.clone(),
            baseline: alone.name.clone(),
            target: s.target.clone(),
            p50_alone_us: a.latency.p50_us,
            p50_with_us: s.latency.p50_us,
            p99_alone_us: a.latency.p99_us,
            p99_with_us: s.latency.p99_us,
            p99_ratio: ratio(s.latency.p99_us, a.latency.p99_us),
            background: bgs.first().map(|b| b.workload.clone()),
            background_conns: median(bgs.iter().map(|b| b.conns as f64).collect()),
            background_rate: median(bgs.iter().map(|b| b.rate).collect()),
            background_gib_per_s: median(bgs.iter().map(|b| b.gib_per_s).collect()),
            bg_cpu_us_per_conn: if bulk { None } else { per(&|b| b.conns as f64, 1e6) },
            bg_cpu_s_per_gib: if bulk { per(&|b| b.bytes as f64 / (1u64 << 30) as f64, 1.0) } else { None },
        });
    }
    out
}

pub fn comparison_table(c: &[Comparison]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < c.len() {
        let (w, b) = (&c[i].workload, &c[i].baseline);
        let group: Vec<&Comparison> = c[i..].iter().take_while(|x| &x.workload == w && &x.baseline == b).collect();
        i += group.len();
        let bulk = group.iter().any(|x| x.bg_cpu_s_per_gib.is_some());
        let h: Vec<String> = [
            "target",
            "p50 alone",
            "p50 with",
            "p99 alone",
            "p99 with",
            "p99 with ÷ alone",
            "background",
            "bg conns/run",
            if bulk { "bg GiB/s" } else { "bg conn/s" },
            if bulk { "bg CPU s/GiB" } else { "bg CPU µs/conn" },
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let rows: Vec<Vec<String>> = group
            .iter()
            .map(|x| {
                vec![
                    x.target.clone(),
                    fmt_us(x.p50_alone_us),
                    fmt_us(x.p50_with_us),
                    fmt_us(x.p99_alone_us),
                    fmt_us(x.p99_with_us),
                    fmt_opt(x.p99_ratio),
                    x.background.clone().unwrap_or_else(|| "-".into()),
                    format!("{:.0}", x.background_conns),
                    if bulk { format!("{:.2}", x.background_gib_per_s) } else { format!("{:.0}", x.background_rate) },
                    if bulk { fmt_opt3(x.bg_cpu_s_per_gib) } else { fmt_opt1(x.bg_cpu_us_per_conn) },
                ]
            })
            .collect();
        let _ = writeln!(out, "== {w} against {b} (latency of {w}'s own connections; background CPU = the target's CPU beyond {w}'s connections at their cost in {b})");
        out.push_str(&table(&h, &rows));
    }
    out
}

fn fmt_opt1(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

fn fmt_opt3(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
}

/// The idle workloads in one table: state × target → KiB and descriptors per held connection,
/// and RSS after the clients left.
pub fn idle_table(workloads: &[WorkloadReport]) -> String {
    let mut rows = Vec::new();
    for w in workloads.iter().filter(|w| w.idle) {
        for s in &w.summary {
            let Some(st) = &s.idle else { continue };
            rows.push(vec![
                w.name.clone(),
                st.state.clone(),
                s.target.clone(),
                format!("{}/{}", st.held, st.requested),
                format!("{:.1}", st.kib_per_conn),
                format!("{:.2}", st.fds_per_conn),
                format!("{:.1}MiB", st.baseline_rss_kib as f64 / 1024.0),
                format!("{:.1}MiB", st.loaded_rss_kib as f64 / 1024.0),
                format!("{:.0}%", st.after_pct_of_baseline),
                st.retained_pct.map(|x| format!("{x:.0}%")).unwrap_or_else(|| "-".into()),
                errors_text(&s.errors),
            ]);
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let h: Vec<String> = [
        "workload",
        "state",
        "target",
        "held",
        "KiB/conn",
        "fds/conn",
        "RSS before",
        "RSS held",
        "RSS after leave",
        "growth kept",
        "errors",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    format!(
        "== idle connections (KiB/conn = (RSS held − RSS before) ÷ held; RSS after leave = RSS some seconds after the clients closed, % of RSS before; growth kept = the part of the growth still resident then; kernel socket memory is not in RSS)\n{}",
        table(&h, &rows)
    )
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// Ratios of the first target (the baseline) to each other target, per workload.
pub fn ratios(workloads: &[WorkloadReport], baseline: &str) -> Vec<Ratio> {
    let mut out = Vec::new();
    for w in workloads.iter().filter(|w| !w.idle) {
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
    let runs = w.summary.first().map(|s| s.runs).unwrap_or(0);
    let mut out = format!(
        "== {} ({}; {}; median of {} run{})\n",
        w.name,
        w.kind,
        w.shape,
        runs,
        if runs == 1 { "" } else { "s" }
    );
    if w.idle {
        out.push_str(&idle_rows(w));
        return out;
    }
    let mut h: Vec<&str> = if w.bulk {
        vec!["target", "conns", "GiB/s", "errors", "p50", "p99", "max", "CPU s/GiB", "CPU µs/conn", "peak RSS"]
    } else {
        vec![
            "target",
            "conn/s",
            "ok (all runs)",
            "errors",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "CPU µs/conn",
            "peak RSS",
        ]
    };
    let counted = w.summary.iter().any(|s| s.counts.is_some());
    if counted {
        h.extend(["syscalls/conn", "io_uring submits/conn", "wake-ups/conn", "TCP segs/conn"]);
    }
    let h: Vec<String> = h.iter().map(|s| s.to_string()).collect();
    let mut rows = Vec::new();
    for s in &w.summary {
        let rss = format!("{:.1}MiB", s.peak_rss_kib as f64 / 1024.0);
        let l = &s.latency;
        let mut name = s.target.clone();
        if s.resumed_share > 0.0 {
            name = format!("{name} ({:.0}% resumed)", s.resumed_share * 100.0);
        }
        let mut row = if w.bulk {
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
        };
        if counted {
            let c = s.counts.clone().unwrap_or_default();
            row.extend(
                [c.syscalls_per_conn, c.io_uring_submits_per_conn, c.wakeups_per_conn, c.tcp_segs_per_conn]
                    .map(fmt_opt),
            );
        }
        rows.push(row);
    }
    out.push_str(&table(&h, &rows));
    for s in &w.summary {
        if let Some(c) = &s.counts {
            for n in &c.notes {
                let _ = writeln!(out, "   counts vs {}: {n}", s.target);
            }
        }
        if let Some(b) = &s.background {
            let what = if b.bulk { format!("{:.2} GiB/s", b.gib_per_s) } else { format!("{:.0} conn/s", b.rate) };
            let _ = writeln!(
                out,
                "   background {} vs {}: {} ok, {} refused, {what}, errors {}",
                b.workload,
                s.target,
                b.ok,
                b.refused,
                errors_text(&b.errors)
            );
        }
        if s.refused > 0 {
            let _ = writeln!(out, "   {}: {} connections refused by the target (expected)", s.target, s.refused);
        }
    }
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

fn idle_rows(w: &WorkloadReport) -> String {
    let h: Vec<String> = [
        "target",
        "held",
        "errors",
        "open s",
        "KiB/conn",
        "fds/conn",
        "RSS before",
        "RSS held",
        "RSS after leave",
        "CPU µs/conn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = w
        .summary
        .iter()
        .filter_map(|s| {
            let st = s.idle.as_ref()?;
            Some(vec![
                s.target.clone(),
                format!("{}/{}", st.held, st.requested),
                errors_text(&s.errors),
                format!("{:.1}", st.open_s),
                format!("{:.1}", st.kib_per_conn),
                format!("{:.2}", st.fds_per_conn),
                format!("{:.1}MiB", st.baseline_rss_kib as f64 / 1024.0),
                format!("{:.1}MiB", st.loaded_rss_kib as f64 / 1024.0),
                format!("{:.0}%", st.after_pct_of_baseline),
                format!("{:.1}", s.cpu_us_per_conn),
            ])
        })
        .collect();
    table(&h, &rows)
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
        let idle = idle_table(&self.workloads);
        if !idle.is_empty() {
            out.push('\n');
            out.push_str(&idle);
        }
        if !self.comparisons.is_empty() {
            out.push('\n');
            out.push_str(&comparison_table(&self.comparisons));
        }
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
            idle: false,
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

    fn workload(name: &str, runs: Vec<RunResult>, targets: &[&str]) -> WorkloadReport {
        let h = Histogram::<u64>::new(3).unwrap();
        let summary = targets.iter().map(|t| summarize(t, &runs, &h)).collect();
        WorkloadReport { name: name.into(), runs, summary, ..Default::default() }
    }

    #[test]
    fn counts_columns_and_medians() {
        let c = |sys: f64, note: &str| Counts {
            conns: 1000,
            syscalls: Some((sys * 1000.0) as u64),
            syscalls_per_conn: Some(sys),
            tcp_segs_per_conn: Some(20.0),
            notes: if note.is_empty() { vec![] } else { vec![note.to_string()] },
            ..Default::default()
        };
        let mut runs = vec![run("sni-dispatch", 0, 1.0, 1.0, 1.0), run("sni-dispatch", 1, 1.0, 1.0, 1.0)];
        runs.push(run("sni-dispatch", 2, 1.0, 1.0, 1.0));
        runs[0].counts = Some(c(13.0, ""));
        runs[1].counts = Some(c(16.0, "perf: io_uring:io_uring_submit_req not supported here"));
        runs[2].counts = Some(c(14.0, ""));
        let w = workload("short", runs, &["sni-dispatch"]);
        let s = w.summary[0].counts.as_ref().unwrap();
        assert_eq!(s.syscalls_per_conn, Some(14.0));
        assert_eq!(s.syscalls, Some(43_000));
        assert_eq!(s.conns, 3000);
        assert_eq!(s.io_uring_submits_per_conn, None);
        let t = workload_table(&w);
        assert!(t.contains("syscalls/conn") && t.contains("TCP segs/conn"), "{t}");
        assert!(t.contains("14.00") && t.contains("20.00"), "{t}");
        assert!(t.contains("not supported here"), "{t}");
        // without --counts: no such columns
        let t = workload_table(&workload("short", vec![run("nginx", 0, 1.0, 1.0, 1.0)], &["nginx"]));
        assert!(!t.contains("syscalls/conn"), "{t}");
    }

    #[test]
    fn idle_tables() {
        let st = IdleStats::compute(
            crate::suite::IdleState::PartialHello,
            (1000, 1000, 1000),
            0.5,
            [10_240, 56_320, 10_240],
            [10, 1010, 10],
        );
        let r = RunResult { target: "nginx".into(), ok: 1000, idle: Some(st), ..Default::default() };
        let mut w = workload("idle-partial", vec![r], &["nginx"]);
        w.idle = true;
        let t = workload_table(&w);
        assert!(t.contains("1000/1000") && t.contains("46.1") && t.contains("1.00") && t.contains("100%"), "{t}");
        let all = idle_table(std::slice::from_ref(&w));
        assert!(all.contains("partial_hello") && all.contains("nginx") && all.contains("0%"), "{all}");
        assert!(ratios(&[w], "nginx").is_empty());
        assert_eq!(idle_table(&[]), "");
    }

    #[test]
    fn comparison_with_a_background() {
        let alone = workload("short-alone", vec![run("haproxy", 0, 1000.0, 100.0, 2000.0)], &["haproxy"]);
        let mut with = run("haproxy", 0, 1000.0, 150.0, 5000.0);
        // 1000 connections at 100 µs alone = 0.1 s; the run took 0.3 s: 0.2 s for 4000 flood connections
        with.cpu_s = 0.3;
        with.background =
            Some(Background { workload: "flood".into(), ok: 4000, conns: 4000, rate: 400.0, ..Default::default() });
        let with = workload("short-flood", vec![with], &["haproxy"]);
        let c = compare(&with, &alone);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].p99_ratio, Some(2.5));
        assert!((c[0].bg_cpu_us_per_conn.unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(c[0].bg_cpu_s_per_gib, None);
        assert_eq!(c[0].background.as_deref(), Some("flood"));
        let t = comparison_table(&c);
        assert!(t.contains("2.50") && t.contains("50.0") && t.contains("short-flood against short-alone"), "{t}");
        // a bulk background: CPU per GiB it moved
        let mut b = run("haproxy", 0, 1000.0, 150.0, 3000.0);
        b.cpu_s = 0.6;
        b.background =
            Some(Background { workload: "bulk".into(), bytes: 1 << 30, conns: 4, bulk: true, ..Default::default() });
        let c = compare(&workload("short-bulk", vec![b], &["haproxy"]), &alone);
        assert!((c[0].bg_cpu_s_per_gib.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(c[0].bg_cpu_us_per_conn, None);
        assert!(comparison_table(&c).contains("bg CPU s/GiB"));
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
