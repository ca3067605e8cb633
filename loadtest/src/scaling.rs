//! Scaling runs (`[scaling]` in a suite): which CPUs the target's N workers get and which the load
//! generators and back ends get at each size, the per-size load, and the scaling report.
//!
//! The allocation rule, deterministic for a given set of allowed CPUs and their cores:
//!
//! 1. The order: with `[scaling] cpus = "LIST"`, that list as written (CPUs this process may not
//!    use are left out). Otherwise [`default_order`]: the CPUs grouped by physical core (sysfs
//!    `physical_package_id`, `core_id`), cores by their lowest CPU; first the first thread of
//!    every core except the core of the lowest allowed CPU, then the second threads, and so on;
//!    the lowest CPU's core comes last. Without SMT that is simply 1, 2, ..., P-1, 0.
//! 2. N workers take the first N CPUs of the order; a size larger than the order is skipped.
//! 3. The load generators and the back ends get every allowed CPU the target did not take; when
//!    the target took them all (N = P), they share the target's CPUs and a warning says so.
//!
//! On 2 CPUs: 1 worker on CPU 1, load on CPU 0; 2 workers on CPUs 0-1, load on 0-1 (shared);
//! 4 and 8 skipped. On 16 CPUs without SMT: N workers on CPUs 1..=N, load on 0 and N+1..=15.

use crate::report::{self, median, table, WorkloadReport};
use crate::suite::Workload;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// An allowed CPU and its physical core (package, core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    pub id: usize,
    pub core: (u32, u32),
}

fn sysfs_u32(cpu: usize, what: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{what}")).ok()?.trim().parse().ok()
}

/// The CPUs the calling thread may run on, with their cores. Call it before pinning the thread.
/// A CPU whose topology cannot be read counts as a core of its own.
pub fn allowed_cpus() -> Vec<Cpu> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    if ids.is_empty() {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        ids = (0..n).collect();
    }
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .map(|id| {
            let core = match (sysfs_u32(id, "physical_package_id"), sysfs_u32(id, "core_id")) {
                (Some(p), Some(c)) => (p, c),
                _ => (u32::MAX, id as u32),
            };
            Cpu { id, core }
        })
        .collect()
}

/// The default order in which the target takes CPUs: one per physical core first (cores by their
/// lowest CPU), the core of the lowest CPU last, so that load generators keep it.
pub fn default_order(cpus: &[Cpu]) -> Vec<usize> {
    let mut sorted = cpus.to_vec();
    sorted.sort_by_key(|c| c.id);
    sorted.dedup_by_key(|c| c.id);
    // cores in order of their lowest CPU, each with its CPUs ascending
    let mut cores: Vec<((u32, u32), Vec<usize>)> = Vec::new();
    for c in &sorted {
        match cores.iter_mut().find(|(k, _)| *k == c.core) {
            Some((_, v)) => v.push(c.id),
            None => cores.push((c.core, vec![c.id])),
        }
    }
    let Some(((_, reserved), others)) = cores.split_first() else { return vec![] };
    let depth = others.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(sorted.len());
    for k in 0..depth {
        out.extend(others.iter().filter_map(|(_, v)| v.get(k)));
    }
    out.extend(reserved);
    out
}

/// Where one size runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub workers: usize,
    /// the target's CPUs, ascending (one worker or thread pinned to each)
    pub target: Vec<usize>,
    /// the load generators' and back ends' CPUs, ascending
    pub load: Vec<usize>,
    /// the load runs on the target's CPUs (N = every CPU)
    pub shared: bool,
    /// warnings: sharing, fewer load CPUs than workers, SMT siblings
    pub notes: Vec<String>,
}

/// Place `workers` workers (see the module's rule). `Err` says why the size is skipped.
pub fn allocate(workers: usize, cpus: &[Cpu], explicit: Option<&[usize]>) -> Result<Placement, String> {
    let allowed: Vec<usize> = {
        let mut v: Vec<usize> = cpus.iter().map(|c| c.id).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let order: Vec<usize> = match explicit {
        Some(list) => {
            let mut o: Vec<usize> = Vec::new();
            for c in list {
                if allowed.contains(c) && !o.contains(c) {
                    o.push(*c);
                }
            }
            o
        }
        None => default_order(cpus),
    };
    if workers == 0 {
        return Err("0 workers".into());
    }
    if workers > order.len() {
        return Err(format!(
            "{workers} workers need {workers} CPUs; {} {} available{}",
            order.len(),
            if order.len() == 1 { "is" } else { "are" },
            if explicit.is_some() { " in [scaling] cpus" } else { "" }
        ));
    }
    let mut target = order[..workers].to_vec();
    target.sort_unstable();
    let mut load: Vec<usize> = allowed.iter().copied().filter(|c| !target.contains(c)).collect();
    let mut notes = Vec::new();
    let shared = load.is_empty();
    if shared {
        load = allowed.clone();
        notes.push(format!(
            "load generators and back ends share the target's {} CPUs: rates are lower than on a larger machine, CPU per connection still counts the target only",
            allowed.len()
        ));
    } else if load.len() < workers {
        notes.push(format!(
            "load generators and back ends have {} CPU{} for {workers} workers: the load side may limit the rate (see load CPU)",
            load.len(),
            if load.len() == 1 { "" } else { "s" }
        ));
    }
    let core = |id: usize| cpus.iter().find(|c| c.id == id).map(|c| c.core);
    let same_core = |a: usize, b: usize| a != b && core(a).is_some() && core(a) == core(b);
    let t_t = target.iter().filter(|&&a| target.iter().any(|&b| same_core(a, b))).count();
    if t_t > 0 {
        notes.push(format!("{t_t} of the target's CPUs are SMT siblings of one another"));
    }
    if !shared {
        let t_l = target.iter().filter(|&&a| load.iter().any(|&b| same_core(a, b))).count();
        if t_l > 0 {
            notes.push(format!("{t_l} of the target's CPUs are SMT siblings of load CPUs"));
        }
    }
    Ok(Placement { workers, target, load, shared, notes })
}

/// One planned size: its placement, or why it is skipped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SizePlan {
    pub workers: usize,
    pub placement: Option<Placement>,
    pub skipped: Option<String>,
}

/// The placements of `sizes`, in their order.
pub fn plan(sizes: &[usize], cpus: &[Cpu], explicit: Option<&[usize]>) -> Vec<SizePlan> {
    sizes
        .iter()
        .map(|&n| match allocate(n, cpus, explicit) {
            Ok(p) => SizePlan { workers: n, placement: Some(p), skipped: None },
            Err(e) => SizePlan { workers: n, placement: None, skipped: Some(e) },
        })
        .collect()
}

/// A CPU list in the kernel's compact form: "0-3,8".
/// The `[cpus]` of one size: the workers on the placement's target CPUs, load and back ends on the rest.
pub fn cpus_of(p: &Placement) -> crate::suite::Cpus {
    crate::suite::Cpus {
        dispatcher: fmt_cpus(&p.target),
        workers: p.workers,
        load: fmt_cpus(&p.load),
        backends: fmt_cpus(&p.load),
    }
}

pub fn fmt_cpus(cpus: &[usize]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if j == i { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(",")
}

/// The workload as run with `workers` workers: concurrency, open-loop rate and `max_count`
/// multiplied by `workers` when `scale_load` (so every bound stays finite and proportional).
pub fn scale_workload(w: &Workload, workers: usize, scale_load: bool) -> Workload {
    let mut w = w.clone();
    if scale_load && workers > 1 {
        w.concurrency = w.concurrency.saturating_mul(workers);
        w.rate = w.rate.map(|r| r * workers as f64);
        w.max_count = w.max_count.saturating_mul(workers as u64);
    }
    w
}

/// One (workload, size, target) of a scaling run: medians over the runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalingRow {
    pub workers: usize,
    pub target: String,
    pub target_cpus: String,
    pub runs: usize,
    pub ok: u64,
    pub errors: u64,
    pub rate: f64,
    pub p99_us: f64,
    pub cpu_us_per_conn: f64,
    /// the target's CPU time ÷ (wall time × workers), median: 1 = every worker busy
    pub target_cpu_share: f64,
    /// this process's CPU time (load generators and back ends) ÷ (wall time × load CPUs), median
    pub load_cpu_share: f64,
    /// (rate ÷ workers) ÷ (rate ÷ workers at the smallest size run), per target: 1 = linear
    pub efficiency: Option<f64>,
    /// CPU per connection ÷ CPU per connection at the smallest size run, per target
    pub cpu_vs_smallest: Option<f64>,
    /// the baseline target's rate ÷ this target's rate at the same size (> 1: the baseline is faster)
    pub baseline_rate_ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalingWorkload {
    pub name: String,
    pub kind: String,
    /// the load shape per worker
    pub shape: String,
    pub rows: Vec<ScalingRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalingReport {
    pub allowed_cpus: String,
    pub scale_load: bool,
    /// the first target (the dispatcher when it runs): `baseline_rate_ratio` divides its rate
    pub baseline: String,
    pub sizes: Vec<SizePlan>,
    pub workloads: Vec<ScalingWorkload>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// The rows of one size of one workload, from its report (whose runs carry `load_cpu_s`).
pub fn rows_of(w: &WorkloadReport, p: &Placement) -> Vec<ScalingRow> {
    w.summary
        .iter()
        .map(|s| {
            let runs: Vec<&report::RunResult> = w.runs.iter().filter(|r| r.target == s.target).collect();
            let share = |f: &dyn Fn(&report::RunResult) -> f64, cpus: usize| {
                median(runs.iter().map(|r| f(r) / (r.elapsed_s.max(1e-9) * cpus.max(1) as f64)).collect())
            };
            ScalingRow {
                workers: p.workers,
                target: s.target.clone(),
                target_cpus: fmt_cpus(&p.target),
                runs: s.runs,
                ok: s.ok,
                errors: s.errors.values().sum(),
                rate: s.rate,
                p99_us: s.latency.p99_us,
                cpu_us_per_conn: s.cpu_us_per_conn,
                target_cpu_share: share(&|r| r.cpu_s, p.workers),
                load_cpu_share: share(&|r| r.load_cpu_s, p.load.len()),
                ..Default::default()
            }
        })
        .collect()
}

/// Fill the relative figures: efficiency and CPU against each target's smallest size, and the
/// baseline's rate against each target's at the same size.
pub fn finish(rows: &mut [ScalingRow], baseline: &str) {
    let snapshot = rows.to_vec();
    for r in rows.iter_mut() {
        if let Some(b) = snapshot.iter().filter(|x| x.target == r.target && x.rate > 0.0).min_by_key(|x| x.workers) {
            let per_worker = |x: &ScalingRow| x.rate / x.workers.max(1) as f64;
            r.efficiency = ratio(per_worker(r), per_worker(b));
            r.cpu_vs_smallest = ratio(r.cpu_us_per_conn, b.cpu_us_per_conn);
        }
        if r.target != baseline {
            if let Some(b) = snapshot.iter().find(|x| x.target == baseline && x.workers == r.workers) {
                r.baseline_rate_ratio = ratio(b.rate, r.rate);
            }
        }
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// The scaling section of the report: the sizes, then one table per workload.
pub fn text(r: &ScalingReport) -> String {
    let mut out = format!(
        "== scaling: {} CPUs allowed ({}); load {}\n",
        crate::net::parse_cpus(&r.allowed_cpus).map(|v| v.len()).unwrap_or(0),
        r.allowed_cpus,
        if r.scale_load { "scaled by the number of workers" } else { "the same at every size" }
    );
    for s in &r.sizes {
        match (&s.placement, &s.skipped) {
            (Some(p), _) => {
                let _ = writeln!(
                    out,
                    "   {} worker{}: target CPUs {}, load and back ends {}",
                    s.workers,
                    if s.workers == 1 { "" } else { "s" },
                    fmt_cpus(&p.target),
                    fmt_cpus(&p.load)
                );
                for n in &p.notes {
                    let _ = writeln!(out, "      note: {n}");
                }
            }
            (None, why) => {
                let _ = writeln!(out, "   {} workers: skipped: {}", s.workers, why.as_deref().unwrap_or("?"));
            }
        }
    }
    let base = &r.baseline;
    for w in &r.workloads {
        let _ = writeln!(out, "\n== scaling: {} ({}; {})", w.name, w.kind, w.shape);
        let h: Vec<String> = [
            "workers",
            "target",
            "CPUs",
            "conn/s",
            "p99",
            "CPU µs/conn",
            "efficiency",
            "CPU ÷ smallest",
            &format!("{base} ÷ this (conn/s)"),
            "target CPU",
            "load CPU",
            "errors",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let rows: Vec<Vec<String>> = w
            .rows
            .iter()
            .map(|x| {
                vec![
                    x.workers.to_string(),
                    x.target.clone(),
                    x.target_cpus.clone(),
                    format!("{:.0}", x.rate),
                    report::fmt_us(x.p99_us),
                    format!("{:.1}", x.cpu_us_per_conn),
                    opt(x.efficiency),
                    opt(x.cpu_vs_smallest),
                    opt(x.baseline_rate_ratio),
                    pct(x.target_cpu_share),
                    pct(x.load_cpu_share),
                    x.errors.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&h, &rows));
    }
    out.push_str(
        "   efficiency = (conn/s ÷ workers) ÷ (conn/s ÷ workers at the smallest size); CPU ÷ smallest = CPU µs/conn ÷ the same at the smallest size;\n   target CPU = its CPU time ÷ (wall time × workers); load CPU = load generators' and back ends' CPU time ÷ (wall time × their CPUs): near 100 %, the load side limits the rate\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::Suite;

    fn flat(n: usize) -> Vec<Cpu> {
        (0..n).map(|id| Cpu { id, core: (0, id as u32) }).collect()
    }

    /// `cores` cores of 2 threads, siblings numbered (i, i + cores) as on most x86 hosts.
    fn smt_split(cores: usize) -> Vec<Cpu> {
        (0..2 * cores).map(|id| Cpu { id, core: (0, (id % cores) as u32) }).collect()
    }

    /// siblings numbered (2i, 2i + 1)
    fn smt_adjacent(cores: usize) -> Vec<Cpu> {
        (0..2 * cores).map(|id| Cpu { id, core: (0, (id / 2) as u32) }).collect()
    }

    #[test]
    fn two_cpus() {
        let c = flat(2);
        assert_eq!(default_order(&c), vec![1, 0]);
        let p = allocate(1, &c, None).unwrap();
        assert_eq!((p.target.clone(), p.load.clone(), p.shared), (vec![1], vec![0], false));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        let p = allocate(2, &c, None).unwrap();
        assert_eq!((p.target.clone(), p.load.clone(), p.shared), (vec![0, 1], vec![0, 1], true));
        assert!(p.notes.iter().any(|n| n.contains("share")), "{:?}", p.notes);
        assert!(allocate(4, &c, None).is_err());
        let pl = plan(&[1, 2, 4, 8], &c, None);
        assert_eq!(pl.iter().map(|s| s.placement.is_some()).collect::<Vec<_>>(), vec![true, true, false, false]);
        assert!(pl[3].skipped.as_deref().unwrap_or("").contains("2 are available"), "{:?}", pl[3]);
    }

    #[test]
    fn sixteen_cpus_without_smt() {
        let c = flat(16);
        for n in [1usize, 2, 4, 8] {
            let p = allocate(n, &c, None).unwrap();
            assert_eq!(p.target, (1..=n).collect::<Vec<_>>());
            let mut load = vec![0];
            load.extend(n + 1..16);
            assert_eq!(p.load, load);
            assert!(!p.shared);
            assert!(p.notes.is_empty(), "{n}: {:?}", p.notes);
        }
        let p = allocate(12, &c, None).unwrap();
        assert!(p.notes.iter().any(|n| n.contains("4 CPUs for 12 workers")), "{:?}", p.notes);
        let p = allocate(16, &c, None).unwrap();
        assert!(p.shared);
        assert_eq!(p.target, p.load);
        assert!(allocate(17, &c, None).is_err());
    }

    #[test]
    fn smt_one_thread_per_core_first() {
        let c = smt_split(8);
        assert_eq!(default_order(&c), vec![1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 0, 8]);
        let p = allocate(4, &c, None).unwrap();
        assert_eq!(p.target, vec![1, 2, 3, 4]);
        assert!(
            p.notes.iter().any(|n| n.contains("4 of the target's CPUs are SMT siblings of load CPUs")),
            "{:?}",
            p.notes
        );
        let p = allocate(8, &c, None).unwrap();
        assert_eq!(p.target, vec![1, 2, 3, 4, 5, 6, 7, 9]);
        assert_eq!(p.load, vec![0, 8, 10, 11, 12, 13, 14, 15]);
        assert!(
            p.notes.iter().any(|n| n.contains("2 of the target's CPUs are SMT siblings of one another")),
            "{:?}",
            p.notes
        );
        let c = smt_adjacent(8);
        assert_eq!(allocate(4, &c, None).unwrap().target, vec![2, 4, 6, 8]);
        assert_eq!(allocate(8, &c, None).unwrap().target, vec![2, 3, 4, 6, 8, 10, 12, 14]);
    }

    #[test]
    fn explicit_order() {
        let c = flat(8);
        let p = allocate(2, &c, Some(&[6, 7, 1])).unwrap();
        assert_eq!(p.target, vec![6, 7]);
        assert_eq!(p.load, vec![0, 1, 2, 3, 4, 5]);
        // CPUs this process may not use are left out
        let p = allocate(2, &c, Some(&[9, 3, 3, 2])).unwrap();
        assert_eq!(p.target, vec![2, 3]);
        let e = allocate(3, &c, Some(&[9, 3, 2])).unwrap_err();
        assert!(e.contains("in [scaling] cpus"), "{e}");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(fmt_cpus(&[1]), "1");
        assert_eq!(fmt_cpus(&[3, 1, 2, 0, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(fmt_cpus(&[]), "");
        for s in ["0-3,8", "1", "0,2,4-7"] {
            assert_eq!(fmt_cpus(&crate::net::parse_cpus(s).unwrap()), s);
        }
    }

    const SUITE: &str = r#"
        [scaling]
        workers = [1, 2, 4, 8]
        [[route]]
        name = "a"
        action = "passthrough"
        sni = ["a.example.com"]
        backend = "hello"
        [[workload]]
        name = "w"
        kind = "hello_replay"
        concurrency = 16
        rate = 100.0
        max_count = 1000
    "#;

    fn parse(extra: &str) -> Result<Suite, String> {
        let text = SUITE.replace("[scaling]\n", &format!("[scaling]\n{extra}\n"));
        let s: Suite = toml::from_str(&text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    #[test]
    fn config_parsing() {
        let s = parse("").unwrap();
        let sc = s.scaling.clone().unwrap();
        assert_eq!(sc.workers, vec![1, 2, 4, 8]);
        assert_eq!(sc.cpus, None);
        assert!(sc.scale_load);
        let sc = parse("cpus = \"2-7\"\nscale_load = false").unwrap().scaling.unwrap();
        assert_eq!(sc.cpus.as_deref(), Some("2-7"));
        assert!(!sc.scale_load);
        assert!(parse("cpus = \"x\"").unwrap_err().contains("cpus"));
        assert!(parse("threads = 3").is_err());
        let without: String = SUITE
            .lines()
            .filter(|l| !l.contains("scaling]") && !l.contains("workers ="))
            .collect::<Vec<_>>()
            .join("\n");
        let none: Suite = toml::from_str(&without).unwrap();
        assert!(none.scaling.is_none());
        for bad in ["[]", "[0, 1]", "[1, 2, 1]", "[2000]"] {
            let text = SUITE.replace("[1, 2, 4, 8]", bad);
            let s: Suite = toml::from_str(&text).unwrap();
            assert!(s.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn load_scales_with_workers() {
        let s = parse("").unwrap();
        let w = &s.workloads[0];
        let w4 = scale_workload(w, 4, true);
        assert_eq!((w4.concurrency, w4.rate, w4.max_count), (64, Some(400.0), 4000));
        let w1 = scale_workload(w, 1, true);
        assert_eq!((w1.concurrency, w1.rate, w1.max_count), (16, Some(100.0), 1000));
        let same = scale_workload(w, 8, false);
        assert_eq!((same.concurrency, same.rate, same.max_count), (16, Some(100.0), 1000));
    }

    fn row(workers: usize, target: &str, rate: f64, cpu: f64) -> ScalingRow {
        ScalingRow { workers, target: target.into(), rate, cpu_us_per_conn: cpu, ..Default::default() }
    }

    #[test]
    fn efficiency_and_ratios() {
        let mut rows = vec![
            row(1, "sni-dispatch", 10_000.0, 50.0),
            row(1, "nginx", 8_000.0, 60.0),
            row(2, "sni-dispatch", 19_000.0, 52.0),
            row(2, "nginx", 12_000.0, 66.0),
            row(4, "sni-dispatch", 36_000.0, 54.0),
        ];
        finish(&mut rows, "sni-dispatch");
        assert!((rows[0].efficiency.unwrap() - 1.0).abs() < 1e-9);
        assert!((rows[2].efficiency.unwrap() - 0.95).abs() < 1e-9);
        assert!((rows[4].efficiency.unwrap() - 0.9).abs() < 1e-9);
        assert!((rows[4].cpu_vs_smallest.unwrap() - 1.08).abs() < 1e-9);
        assert!((rows[3].efficiency.unwrap() - 0.75).abs() < 1e-9);
        assert!((rows[3].cpu_vs_smallest.unwrap() - 1.1).abs() < 1e-9);
        assert!((rows[3].baseline_rate_ratio.unwrap() - 19.0 / 12.0).abs() < 1e-9);
        assert_eq!(rows[0].baseline_rate_ratio, None);
        // the smallest size run is the reference when 1 was skipped
        let mut rows = vec![row(2, "x", 10_000.0, 50.0), row(4, "x", 20_000.0, 50.0)];
        finish(&mut rows, "x");
        assert!((rows[1].efficiency.unwrap() - 1.0).abs() < 1e-9);
        let rep = ScalingReport {
            allowed_cpus: "0-1".into(),
            scale_load: true,
            baseline: "x".into(),
            sizes: plan(&[1, 2, 4], &flat(2), None),
            workloads: vec![ScalingWorkload { name: "w".into(), kind: "k".into(), shape: "s".into(), rows }],
        };
        let t = text(&rep);
        assert!(t.contains("2 CPUs allowed (0-1)"), "{t}");
        assert!(t.contains("4 workers: skipped"), "{t}");
        assert!(t.contains("== scaling: w (k; s)"), "{t}");
        let j = serde_json::to_string(&rep).unwrap();
        assert_eq!(serde_json::from_str::<ScalingReport>(&j).unwrap(), rep);
    }
}
