//! Running a suite: certificates, back ends, targets, alternating runs, report.

use crate::backends::{self, Backend, BackendStats};
use crate::certs::Ca;
use crate::net::{parse_cpus, pin};
use crate::procstat;
use crate::report::{self, Percentiles, Report, RunResult, WorkloadReport};
use crate::scaling;
use crate::suite::{Action, BackendKind, IdleState, Kind, Model, Suite, Workload};
use crate::targets::{self, Env, RouteRt, Running, DISPATCHER};
use crate::workloads::{self, new_hist, Live, Prepared};
use crate::{counts, idle};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// `sni-loadtest suite`'s arguments.
#[derive(clap::Args)]
pub struct Options {
    /// the suite file (TOML), e.g. loadtest/suites/smoke.toml
    #[arg(value_name = "FILE")]
    pub suite: PathBuf,
    /// the sni-dispatch binary to measure (e.g. target/release/sni-dispatch)
    #[arg(long)]
    pub dispatcher: Option<PathBuf>,
    /// write every figure as JSON here, and one SVG latency plot per workload beside it
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// peers to run the same workloads against, alternately: haproxy, haproxy-splice, nginx
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// alternating runs per target (default: the suite's `runs`)
    #[arg(long)]
    pub runs: Option<usize>,
    /// run only these workloads
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// multiply every workload's duration (e.g. 0.2 for a quick look)
    #[arg(long, default_value_t = 1.0)]
    pub duration_scale: f64,
    /// keep the temporary directory with the generated configs and logs
    #[arg(long)]
    pub keep_tmp: bool,
    /// exit 1 on any error even if the suite does not ask for it
    #[arg(long)]
    pub fail_on_error: bool,
    /// no progress bars or per-run lines; print the report at the end
    #[arg(long)]
    pub quiet: bool,
    /// count the target's system calls, io_uring submissions and wake-ups (perf stat on
    /// tracepoints) and the host's TCP segments (nstat) in each measured window, per connection
    #[arg(long)]
    pub counts: bool,
    /// idle workloads: hold N connections instead of the suite's `connections` (e.g. 1000, 3000, 5000)
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// every route's `half_close` for every target: `true` relays the other way after one side's
    /// end of stream until it ends too, `false` closes both ways at the first end (nginx's
    /// default `proxy_half_close off`; HAProxy always half-closes)
    #[arg(long, value_name = "BOOL")]
    pub half_close: Option<bool>,
}

fn names_for_cert(r: &crate::suite::Route) -> Vec<String> {
    let mut v: Vec<String> = r.sni.clone();
    if let Some(p) = &r.sni_pattern {
        if let Some((_, suffix)) = p.split_once("{}") {
            let suffix = suffix.trim_start_matches(|c: char| c != '.');
            if suffix.len() > 1 {
                v.push(format!("*{suffix}"));
            }
        }
    }
    if v.is_empty() {
        v.push(format!("{}.invalid", r.name));
    }
    v
}

fn host() -> String {
    let k = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("Linux {}, {n} CPUs, {cpu}", k.trim())
}

/// What every measurement of a suite shares.
struct Ctx<'a> {
    o: &'a Options,
    /// the run's temporary directory (perf's output files)
    dir: &'a Path,
    suite_dir: &'a Path,
    model: &'a Arc<Model>,
    ca: &'a Ca,
    runs: usize,
}

/// Start `names`; a target that does not start goes to `errors` under its name and `tag`.
fn start_targets(
    names: &[String],
    env: &Env,
    o: &Options,
    tag: &str,
    errors: &mut BTreeMap<String, String>,
) -> Vec<Running> {
    let mut running = Vec::new();
    for n in names {
        if !o.quiet {
            eprintln!("starting {n}{tag} ...");
        }
        match targets::start(n, env, o.dispatcher.as_deref()) {
            Ok(r) => running.push(r),
            Err(e) => {
                eprintln!("!! {e}");
                errors.insert(format!("{n}{tag}"), e);
            }
        }
    }
    running
}

fn shape(w: &Workload, duration_scale: f64, unit: &str) -> String {
    if w.kind == Kind::Idle {
        return format!(
            "{} connections{unit} held, opened within {} s, read {} s after, {} s after they leave",
            w.connections,
            w.duration_s * duration_scale,
            w.settle_s,
            w.leave_s
        );
    }
    let bg = w.background.as_ref().map(|b| format!(", beside {b}")).unwrap_or_default();
    let src = w.source.map(|a| format!(", from {a}")).unwrap_or_default();
    let shape = match w.rate {
        Some(r) => format!("open loop {r:.0}/s, pool {}{unit}, {} s", w.concurrency, w.duration_s * duration_scale),
        None => format!("closed loop {} conns{unit}, {} s", w.concurrency, w.duration_s * duration_scale),
    };
    format!("{shape}{src}{bg}")
}

fn kind_text(w: &Workload) -> &'static str {
    match w.kind {
        Kind::HelloReplay => "hello replay",
        Kind::FullTls => {
            if w.resumption {
                "full TLS, resumption on"
            } else {
                "full TLS"
            }
        }
        Kind::Bulk => "bulk",
        Kind::Idle => match w.state {
            Some(IdleState::PartialHello) => "idle, partial hello",
            Some(IdleState::Spliced) => "idle, spliced passthrough",
            Some(IdleState::Terminated) => "idle, terminated TLS",
            None => "idle",
        },
    }
}

/// One workload as measured: its index (for seeds), itself (scaled in scaling runs), the
/// workload running beside it, the report's name and the targets' tag.
struct Job<'a> {
    wi: usize,
    w: &'a Workload,
    bg: Option<Workload>,
    label: &'a str,
    tag: &'a str,
}

/// Half a second of background load before the workload's window opens.
const BACKGROUND_LEAD: Duration = Duration::from_millis(500);

/// Stop target `t` and start it again (idle workloads measure a fresh process).
fn restart(t: &mut Running, env: &Env, o: &Options) -> Result<(), String> {
    t.stop();
    *t = targets::start(&t.name.clone(), env, o.dispatcher.as_deref())?;
    Ok(())
}

/// One idle run against `t`: a fresh target, the connections held, the readings.
fn idle_run(prep: &Prepared, t: &Running, run: usize, open_within: Duration, seed: u64) -> RunResult {
    let pid = t.pid();
    let cpu0 = procstat::cpu_seconds(pid);
    let own0 = procstat::own_cpu_seconds();
    let (st, errors) = idle::run(prep, pid, t.port, open_within, seed);
    let cpu = procstat::cpu_seconds(pid) - cpu0;
    RunResult {
        target: t.name.clone(),
        run,
        ok: st.held,
        errors,
        elapsed_s: st.open_s,
        rate: st.opened as f64 / st.open_s.max(1e-9),
        cpu_s: cpu,
        cpu_us_per_conn: if st.opened > 0 { cpu * 1e6 / st.opened as f64 } else { 0.0 },
        peak_rss_kib: procstat::peak_rss_kib(pid),
        load_cpu_s: procstat::own_cpu_seconds() - own0,
        idle: Some(st),
        ..Default::default()
    }
}

/// `runs` runs of workload `job.w` against every running target, alternating the order between
/// runs; a target that dies goes to `target_errors` under its name and `job.tag`.
fn measure(
    ctx: &Ctx,
    env: &Env,
    job: &Job,
    running: &mut [Running],
    names: &[String],
    load_cpus: &[usize],
    target_errors: &mut BTreeMap<String, String>,
) -> Result<WorkloadReport, String> {
    let (o, w, label, tag) = (ctx.o, job.w, job.label, job.tag);
    let runs = ctx.runs;
    let ca_der = Some(ctx.ca.der());
    let prep = Arc::new(Prepared::new(w, ctx.model.clone(), ca_der.clone(), ctx.suite_dir)?);
    let bg = match &job.bg {
        Some(b) => Some(Arc::new(Prepared::new(b, ctx.model.clone(), ca_der, ctx.suite_dir)?)),
        None => None,
    };
    let duration = Duration::from_secs_f64(w.duration_s * o.duration_scale);
    let mut results: Vec<RunResult> = Vec::new();
    let mut merged: BTreeMap<String, hdrhistogram::Histogram<u64>> = BTreeMap::new();
    for run in 0..runs {
        let k = running.len().max(1);
        for ti in 0..running.len() {
            // alternate the order between runs
            let t = &mut running[(ti + run) % k];
            if w.skip_targets.contains(&t.name) {
                continue;
            }
            if let Some(st) = t.exited() {
                let e = format!("{}{tag} exited ({st}) before workload {label}:\n{}", t.name, t.log_tail());
                eprintln!("!! {e}");
                target_errors.entry(format!("{}{tag}", t.name)).or_insert(e);
                continue;
            }
            let seed = (job.wi as u64) << 32 | run as u64;
            if w.kind == Kind::Idle {
                if let Err(e) = restart(t, env, o) {
                    eprintln!("!! {e}");
                    target_errors.entry(format!("{}{tag}", t.name)).or_insert(e);
                    continue;
                }
                let r = idle_run(&prep, t, run, duration, seed);
                if !o.quiet {
                    let st = r.idle.as_ref().unwrap();
                    eprintln!(
                        "  {label} · {} · run {}: {} held, {} errors, {:.1} KiB/conn, {:.2} fds/conn, RSS after leave {:.0}% of before",
                        t.name,
                        run + 1,
                        st.held,
                        r.error_count(),
                        st.kib_per_conn,
                        st.fds_per_conn,
                        st.after_pct_of_baseline
                    );
                }
                results.push(r);
                continue;
            }
            let live = Arc::new(Live::default());
            if w.warmup_s > 0.0 {
                workloads::run(
                    &prep,
                    t.port,
                    load_cpus,
                    Duration::from_secs_f64(w.warmup_s * o.duration_scale),
                    seed ^ 0xabc,
                    &live,
                );
            }
            let live = Arc::new(Live::default());
            let pid = t.pid();
            // the window of CPU time and counts: the workload's, and its background's whole life
            let perf = o.counts.then(|| {
                counts::Perf::start(&procstat::tree(pid), ctx.dir, &format!("{}-{}-{run}", label, t.name))
                    .and_then(|mut p| p.enable().map(|()| p))
            });
            let segs0 = o.counts.then(counts::tcp_out_segs);
            let cpu0 = procstat::cpu_seconds(pid);
            let own0 = procstat::own_cpu_seconds();
            // the background starts first and opens connections until the workload ends
            let bg_run = bg.clone().map(|b| {
                let (port, cpus) = (t.port, load_cpus.to_vec());
                let h = std::thread::spawn(move || {
                    workloads::run(&b, port, &cpus, duration + BACKGROUND_LEAD, seed ^ 0xb6, &Arc::new(Live::default()))
                });
                std::thread::sleep(BACKGROUND_LEAD);
                h
            });
            let bar =
                progress(o.quiet, duration, &format!("{label} · {} · run {}/{}", t.name, run + 1, runs), live.clone());
            let hook = w.during.as_ref().map(|d| during(d, t, env, o, ctx.suite_dir));
            let out = workloads::run(&prep, t.port, load_cpus, duration, seed, &live);
            if let Some((b, stop)) = bar {
                stop.store(true, Ordering::Relaxed);
                b.finish_and_clear();
            }
            let bg_out = bg_run.map(|h| h.join().unwrap_or_else(|_| workloads::Outcome::empty()));
            let hook = hook.map(|h| h.finish(t));
            // A process that replaced the target (or its workers: nginx's reload) took its CPU
            // time with it: not comparable, not reported.
            let replaced = t.pid() != pid;
            let cpu = if w.during.is_some() { 0.0 } else { procstat::cpu_seconds(pid) - cpu0 };
            let load_cpu = procstat::own_cpu_seconds() - own0;
            let segs = segs0.map(|a| Ok(counts::tcp_out_segs()?.saturating_sub(a?)));
            let perf = perf.map(|p| p.and_then(counts::Perf::finish));
            let rss = procstat::peak_rss_kib(pid);
            let mut errors = out.errors.clone();
            let background = bg_out.map(|b| {
                for (k, v) in &b.errors {
                    *errors.entry(format!("bg_{k}")).or_default() += v;
                }
                let gib = b.bytes as f64 / (1u64 << 30) as f64;
                report::Background {
                    workload: job.bg.as_ref().map(|x| x.name.clone()).unwrap_or_default(),
                    ok: b.ok,
                    refused: b.refused,
                    errors: b.errors.clone(),
                    elapsed_s: b.elapsed_s,
                    bytes: b.bytes,
                    conns: b.ok + b.refused + b.expected_drops,
                    rate: b.ok as f64 / b.elapsed_s.max(1e-9),
                    gib_per_s: gib / b.elapsed_s.max(1e-9),
                    bulk: job.bg.as_ref().is_some_and(|x| x.kind == Kind::Bulk),
                }
            });
            if let Some(Err(e)) = &hook {
                *errors.entry("during_failed".into()).or_default() += 1;
                eprintln!("!! {}{tag}: the `during` command of {label} failed: {e}", t.name);
            }
            if let Some(st) = t.exited() {
                *errors.entry("target_exited".into()).or_default() += 1;
                eprintln!("!! {}{tag} exited ({st}) during {label}:\n{}", t.name, t.log_tail());
            }
            if replaced && !o.quiet {
                eprintln!("  {label} · {}: now pid {} (was {pid})", t.name, t.pid());
            }
            let gib = out.bytes as f64 / (1u64 << 30) as f64;
            let conns = out.ok + out.expected_drops + out.refused;
            let counts = perf.map(|p| {
                let all = conns + background.as_ref().map_or(0, |b| b.conns);
                counts::Counts::new(all, p, segs.unwrap_or_else(|| Err("nstat: not read".into())))
            });
            let r = RunResult {
                target: t.name.clone(),
                run,
                ok: out.ok,
                expected_drops: out.expected_drops,
                errors,
                elapsed_s: out.elapsed_s,
                rate: out.ok as f64 / out.elapsed_s.max(1e-9),
                bytes: out.bytes,
                gib_per_s: gib / out.elapsed_s.max(1e-9),
                latency: Percentiles::of(&out.latency),
                service: Percentiles::of(&out.service),
                cpu_s: cpu,
                cpu_us_per_conn: if conns > 0 { cpu * 1e6 / conns as f64 } else { 0.0 },
                cpu_s_per_gib: if gib > 0.0 { cpu / gib } else { 0.0 },
                peak_rss_kib: rss,
                resumed_share: if out.ok > 0 { out.resumed as f64 / out.ok as f64 } else { 0.0 },
                load_cpu_s: load_cpu,
                slowloris: out.slow.clone(),
                not_started: out.not_started,
                refused: out.refused,
                idle: None,
                counts,
                background,
            };
            merged.entry(t.name.clone()).or_insert_with(new_hist).add(&out.latency).map_err(|e| format!("{e:?}"))?;
            if !o.quiet {
                let c = r.counts.as_ref().map(counts_text).unwrap_or_default();
                eprintln!(
                    "  {label} · {} · run {}: {} ok, {} errors, {:.0}/s, p99 {}, CPU {:.1} µs/conn{c}",
                    t.name,
                    run + 1,
                    r.ok,
                    r.error_count(),
                    r.rate,
                    report::fmt_us(r.latency.p99_us),
                    r.cpu_us_per_conn
                );
            }
            results.push(r);
        }
    }
    let summary = names
        .iter()
        .filter_map(|n| {
            let h = merged.get(n).cloned().or_else(|| results.iter().any(|r| &r.target == n).then(new_hist))?;
            Some(report::summarize(n, &results, &h))
        })
        .collect();
    let wr = WorkloadReport {
        name: label.to_string(),
        kind: kind_text(w).into(),
        shape: shape(w, o.duration_scale, ""),
        bulk: w.kind == Kind::Bulk,
        idle: w.kind == Kind::Idle,
        runs: results,
        summary,
    };
    if !o.quiet {
        eprintln!();
        println!("{}", report::workload_table(&wr));
    }
    Ok(wr)
}

/// A `during` command running beside a workload.
struct Hook {
    thread: std::thread::JoinHandle<Result<(), String>>,
    pidfile: PathBuf,
}

/// Starts `d.command` after `d.after_s`, on its own thread, with the target in `SLT_*`.
fn during(d: &crate::suite::During, t: &Running, env: &Env, o: &Options, root: &Path) -> Hook {
    let pidfile = env.dir.join(format!("{}.successor.pid", t.name));
    let _ = std::fs::remove_file(&pidfile);
    let s = env.suite;
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["-s", "KILL", &format!("{}", d.timeout_s)]).arg("sh").arg("-c").arg(&d.command);
    // The repository root, where suites name their files from (the suite sits in loadtest/suites).
    let repo = root.ancestors().find(|p| p.join("Cargo.toml").exists() && p.join("loadtest").is_dir()).unwrap_or(root);
    cmd.current_dir(repo)
        .env("SLT_TARGET", &t.name)
        .env("SLT_PID", t.pid().to_string())
        .env("SLT_PORT", t.port.to_string())
        .env("SLT_CONFIG", &t.config)
        .env("SLT_LOG", &t.log)
        .env("SLT_DIR", env.dir)
        .env("SLT_PIDFILE", &pidfile)
        .env("SLT_CPUS", &s.cpus.dispatcher)
        .env("SLT_WORKERS", s.cpus.workers.to_string())
        .env("SLT_EXTRA_ARGS", crate::targets::extra_args(env).join(" "))
        .env("SLT_DISPATCHER", o.dispatcher.as_deref().map(|p| p.as_os_str().to_owned()).unwrap_or_default())
        .stdin(std::process::Stdio::null());
    let after = Duration::from_secs_f64(d.after_s * o.duration_scale);
    let thread = std::thread::spawn(move || {
        std::thread::sleep(after);
        let out = cmd.output().map_err(|e| format!("cannot run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&out.stderr);
            Err(format!("{} ({})", out.status, text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")))
        }
    });
    Hook { thread, pidfile }
}

impl Hook {
    /// Waits for the command; if it wrote the pid of a process that replaced the target to
    /// `SLT_PIDFILE`, the target is that process from now on.
    fn finish(self, t: &mut Running) -> Result<(), String> {
        let r = self.thread.join().unwrap_or_else(|_| Err("the command's thread panicked".into()));
        if let Some(pid) = std::fs::read_to_string(&self.pidfile).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
            t.replaced_by(pid);
            let _ = std::fs::remove_file(&self.pidfile);
        }
        r
    }
}

/// The per-run line's counts: ", 14.2 syscalls, 3.1 submits, 2.3 wake-ups, 20.0 segs per conn".
fn counts_text(c: &counts::Counts) -> String {
    let f = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    let mut s = format!(
        ", per conn: {} syscalls, {} io_uring submits, {} wake-ups, {} TCP segs",
        f(c.syscalls_per_conn),
        f(c.io_uring_submits_per_conn),
        f(c.wakeups_per_conn),
        f(c.tcp_segs_per_conn)
    );
    for n in &c.notes {
        s.push_str(&format!(" ({n})"));
    }
    s
}

pub fn run(o: &Options) -> Result<i32, String> {
    // the CPUs this process may use, read before the main thread is pinned
    let allowed = scaling::allowed_cpus();
    let mut suite = Suite::load(&o.suite)?;
    if let Some(cp) = &suite.control_plane {
        let bin = o.dispatcher.clone().unwrap_or_else(|| PathBuf::from("target/release/sni-dispatch"));
        let cpus = crate::control::Cpu { target: suite.cpus.dispatcher.clone(), load: parse_cpus(&suite.cpus.load)? };
        return crate::control::run(cp, &bin, &o.compare, cpus, o.json.as_deref());
    }
    if let Some(on) = o.half_close {
        for r in &mut suite.routes {
            r.half_close = Some(on);
        }
    }
    if let Some(n) = o.connections {
        for w in suite.workloads.iter_mut().filter(|w| w.kind == Kind::Idle) {
            w.connections = n;
        }
        suite.validate()?;
    }
    // every client socket and every back-end socket of an idle workload is ours
    let nofile = crate::net::raise_nofile();
    let want = 2 * suite.peak_connections() as u64 + 256;
    if nofile < want {
        eprintln!("warning: open-file limit {nofile} < {want} (client and back-end sockets of the largest workload)");
    }
    let suite_dir = o
        .suite
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let model = Arc::new(Model::new(&suite));
    let tmp = tempfile::Builder::new().prefix("sni-loadtest-").tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path().to_path_buf();
    // background-only workloads run beside others, or alone when --only names them
    let selected: Vec<(usize, &Workload)> = suite
        .workloads
        .iter()
        .enumerate()
        .filter(|(_, w)| if o.only.is_empty() { !w.background_only } else { o.only.contains(&w.name) })
        .collect();

    // scaling runs: a placement per size; the back ends and the load start where the first goes
    let plan = match &suite.scaling {
        Some(sc) => {
            let explicit = sc.cpus.as_deref().map(parse_cpus).transpose()?;
            Some(scaling::plan(&sc.workers, &allowed, explicit.as_deref()))
        }
        None => None,
    };
    let first = plan.iter().flatten().find_map(|s| s.placement.clone());
    let (load_cpus, backend_cpus, backend_threads) = match (&plan, &first) {
        (Some(plan), Some(p)) => {
            let largest = plan.iter().filter_map(|s| s.placement.as_ref()).map(|p| p.workers).max().unwrap_or(1);
            let scale = suite.scaling.as_ref().is_some_and(|s| s.scale_load);
            // a serving thread per connection in flight at the largest size
            let in_flight =
                selected.iter().map(|(_, w)| scaling::scale_workload(w, largest, scale).concurrency).max().unwrap_or(0);
            (p.load.clone(), p.load.clone(), suite.backends.threads.max(in_flight))
        }
        (Some(plan), None) => {
            let why: Vec<String> =
                plan.iter().map(|s| format!("{}: {}", s.workers, s.skipped.as_deref().unwrap_or("?"))).collect();
            return Err(format!("no [scaling] size fits this machine ({})", why.join("; ")));
        }
        (None, _) => {
            parse_cpus(&suite.cpus.dispatcher)?;
            (parse_cpus(&suite.cpus.load)?, parse_cpus(&suite.cpus.backends)?, suite.backends.threads)
        }
    };
    pin(&load_cpus, 0);

    // certificates and back ends
    let ca = Ca::new();
    let mut ips: Vec<IpAddr> = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    ips.extend(model.dip.keys().map(|i| IpAddr::V4(*i)));
    let mut routes_rt = Vec::new();
    let mut stats: Vec<(String, Arc<BackendStats>)> = Vec::new();
    for (i, r) in suite.routes.iter().enumerate() {
        let needs_cert = r.action == Action::Terminate || r.backend == BackendKind::Tls;
        let leaf = if needs_cert {
            Some(ca.issue(&dir, &format!("route{i}"), &names_for_cert(r), &ips).map_err(|e| e.to_string())?)
        } else {
            None
        };
        // 0: the kernel picks a free port for each back end
        let port = if suite.backends.port == 0 { 0 } else { suite.backends.port + i as u16 };
        let tls = match (r.backend == BackendKind::Tls, &leaf) {
            (true, Some(l)) => Some(backends::server_config(l, &r.alpn)),
            _ => None,
        };
        let be = Backend {
            kind: r.backend,
            proxy_protocol: r.proxy_protocol != "none",
            label: r.name.clone(),
            tls,
            stats: Default::default(),
        };
        let (port, st) =
            backends::spawn(be, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), backend_threads, backend_cpus.clone())
                .map_err(|e| format!("back end of route {} on port {port}: {e}", r.name))?;
        stats.push((r.name.clone(), st));
        routes_rt.push(RouteRt { backend_port: port, leaf });
    }

    // targets
    let mut names: Vec<String> = Vec::new();
    if o.dispatcher.is_some() {
        names.push(DISPATCHER.to_string());
    }
    for c in &o.compare {
        if !names.contains(c) {
            names.push(c.clone());
        }
    }
    if names.is_empty() {
        return Err("nothing to measure: give --dispatcher PATH and/or --compare haproxy,nginx".into());
    }
    let runs = o.runs.unwrap_or(suite.runs).max(1);
    let ctx = Ctx { o, dir: &dir, suite_dir: &suite_dir, model: &model, ca: &ca, runs };
    let mut target_errors = BTreeMap::new();
    let mut reports = Vec::new();
    let mut scaling_report = None;
    match (&plan, &suite.scaling) {
        (Some(plan), Some(sc)) => {
            let mut sw: Vec<scaling::ScalingWorkload> = selected
                .iter()
                .map(|(_, w)| scaling::ScalingWorkload {
                    name: w.name.clone(),
                    kind: kind_text(w).into(),
                    shape: shape(w, o.duration_scale, if sc.scale_load { " per worker" } else { "" }),
                    rows: vec![],
                })
                .collect();
            if o.keep_tmp && !o.quiet {
                eprintln!("configs and logs in {}/wN", dir.display());
            }
            for sp in plan {
                let Some(p) = &sp.placement else {
                    eprintln!("== {} workers: skipped: {}", sp.workers, sp.skipped.as_deref().unwrap_or("?"));
                    continue;
                };
                eprintln!(
                    "== {} worker{}: target CPUs {}, load generators and back ends {}",
                    p.workers,
                    if p.workers == 1 { "" } else { "s" },
                    scaling::fmt_cpus(&p.target),
                    scaling::fmt_cpus(&p.load)
                );
                for n in &p.notes {
                    eprintln!("   warning: {n}");
                }
                for (_, st) in &stats {
                    backends::repin(st, &p.load);
                }
                pin(&p.load, 0);
                let mut s = suite.clone();
                s.cpus = scaling::cpus_of(p);
                let sdir = dir.join(format!("w{}", p.workers));
                std::fs::create_dir_all(&sdir).map_err(|e| format!("{}: {e}", sdir.display()))?;
                let env = Env { suite: &s, model: &model, routes: &routes_rt, dir: &sdir, peer_workers: p.workers };
                let tag = format!(" ({} worker{})", p.workers, if p.workers == 1 { "" } else { "s" });
                let mut running = start_targets(&names, &env, o, &tag, &mut target_errors);
                for (wi, w) in &selected {
                    let ws = scaling::scale_workload(w, p.workers, sc.scale_load);
                    let label = format!("{}.w{}", w.name, p.workers);
                    let bg = background_of(&suite, w).map(|b| scaling::scale_workload(b, p.workers, sc.scale_load));
                    let job = Job { wi: *wi, w: &ws, bg, label: &label, tag: &tag };
                    let wr = measure(&ctx, &env, &job, &mut running, &names, &p.load, &mut target_errors)?;
                    if let Some(x) = sw.iter_mut().find(|x| x.name == w.name) {
                        x.rows.extend(scaling::rows_of(&wr, p));
                    }
                    reports.push(wr);
                }
                for t in running.iter_mut() {
                    t.stop();
                }
            }
            let baseline = names.iter().find(|n| sw.iter().any(|w| w.rows.iter().any(|r| &r.target == *n)));
            let baseline = baseline.cloned().unwrap_or_default();
            for w in sw.iter_mut() {
                scaling::finish(&mut w.rows, &baseline);
            }
            scaling_report = Some(scaling::ScalingReport {
                allowed_cpus: scaling::fmt_cpus(&allowed.iter().map(|c| c.id).collect::<Vec<_>>()),
                scale_load: sc.scale_load,
                baseline,
                sizes: plan.clone(),
                workloads: sw,
            });
        }
        _ => {
            let env = Env { suite: &suite, model: &model, routes: &routes_rt, dir: &dir, peer_workers: 1 };
            let mut running = start_targets(&names, &env, o, "", &mut target_errors);
            if o.keep_tmp && !o.quiet {
                eprintln!("configs and logs in {}", dir.display());
            }
            for (wi, w) in &selected {
                let job = Job { wi: *wi, w, bg: background_of(&suite, w).cloned(), label: &w.name, tag: "" };
                reports.push(measure(&ctx, &env, &job, &mut running, &names, &load_cpus, &mut target_errors)?);
            }
            for t in running.iter_mut() {
                t.stop();
            }
        }
    }
    let baseline = names
        .iter()
        .find(|n| reports.iter().any(|w| w.summary.iter().any(|s| &s.target == *n)))
        .cloned()
        .unwrap_or_default();
    let ratios = report::ratios(&reports, &baseline);
    let comparisons = comparisons_of(&suite, &reports);
    let rep = Report {
        suite: suite.name.clone(),
        description: suite.description.clone(),
        unix_time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        host: host(),
        targets: names.clone(),
        target_errors: target_errors.clone(),
        workloads: reports,
        ratios,
        scaling: scaling_report,
        comparisons,
    };
    if o.quiet {
        println!("{}", rep.text());
    } else {
        for (t, e) in &rep.target_errors {
            println!("!! {t} not measured: {}", e.lines().next().unwrap_or(""));
        }
        println!("{}", report::ratio_table(&rep.ratios));
        let idle = report::idle_table(&rep.workloads);
        if !idle.is_empty() {
            println!("{idle}");
        }
        if !rep.comparisons.is_empty() {
            println!("{}", report::comparison_table(&rep.comparisons));
        }
        if let Some(s) = &rep.scaling {
            println!("{}", scaling::text(s));
        }
    }
    for (name, st) in &stats {
        let e = st.errors.load(Ordering::Relaxed);
        if e > 0 && !o.quiet {
            eprintln!(
                "   back end {name}: {} connections, {e} ended in an error (clients or targets that gave up)",
                st.accepted.load(Ordering::Relaxed)
            );
        }
    }
    if let Some(j) = &o.json {
        std::fs::write(j, serde_json::to_string_pretty(&rep).unwrap()).map_err(|e| format!("{}: {e}", j.display()))?;
        let stem = j.with_extension("");
        let plotted: Vec<&WorkloadReport> = rep.workloads.iter().filter(|w| !w.idle).collect();
        for w in &plotted {
            let curves: Vec<(String, Vec<(f64, f64)>)> =
                w.summary.iter().map(|s| (s.target.clone(), s.curve.clone())).collect();
            let f = PathBuf::from(format!("{}.{}.svg", stem.display(), w.name));
            std::fs::write(
                &f,
                crate::plot::svg(&format!("{} · {}: latency by percentile", rep.suite, w.name), &curves),
            )
            .map_err(|e| format!("{}: {e}", f.display()))?;
        }
        eprintln!("wrote {} and {} plot(s) beside it", j.display(), plotted.len());
    }
    if o.keep_tmp {
        let p = tmp.keep();
        eprintln!("kept {}", p.display());
    }
    let failed = rep.total_errors() > 0 || !rep.target_errors.is_empty();
    if failed && (o.fail_on_error || suite.fail_on_error) {
        eprintln!("FAILED: {} errors, {} targets not measured", rep.total_errors(), rep.target_errors.len());
        return Ok(1);
    }
    Ok(0)
}

fn background_of<'a>(suite: &'a Suite, w: &Workload) -> Option<&'a Workload> {
    w.background.as_deref().and_then(|b| suite.workload(b))
}

/// Every measured workload with `compare_to` against the report of the workload it names (in
/// scaling runs, of the same size: `NAME.wN` against `BASELINE.wN`).
fn comparisons_of(suite: &Suite, reports: &[WorkloadReport]) -> Vec<report::Comparison> {
    let mut out = Vec::new();
    for r in reports {
        let (name, size) = match r.name.rsplit_once(".w") {
            Some((n, k)) if suite.workload(n).is_some() && k.parse::<usize>().is_ok() => (n, format!(".w{k}")),
            _ => (r.name.as_str(), String::new()),
        };
        let Some(base) = suite.workload(name).and_then(|w| w.compare_to.as_ref()) else { continue };
        if let Some(alone) = reports.iter().find(|x| x.name == format!("{base}{size}")) {
            out.extend(report::compare(r, alone));
        }
    }
    out
}

type Bar = Option<(ProgressBar, Arc<std::sync::atomic::AtomicBool>)>;

fn progress(quiet: bool, d: Duration, msg: &str, live: Arc<Live>) -> Bar {
    if quiet || d < Duration::from_secs(3) {
        return None;
    }
    let b = ProgressBar::new(d.as_millis() as u64);
    b.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed}/{duration} {msg}").unwrap().progress_chars("=> "),
    );
    b.set_prefix(msg.to_string());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (b2, s2) = (b.clone(), stop.clone());
    std::thread::spawn(move || {
        let t = std::time::Instant::now();
        while !s2.load(Ordering::Relaxed) {
            b2.set_position(t.elapsed().as_millis() as u64);
            b2.set_message(format!("ok {} err {}", live.ok.load(Ordering::Relaxed), live.err.load(Ordering::Relaxed)));
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    Some((b, stop))
}

/// Write the configs a suite generates into `out` without running anything.
pub fn write_configs(suite_path: &Path, out: &Path) -> Result<(), String> {
    let suite = Suite::load(suite_path)?;
    let model = Model::new(&suite);
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let ca = Ca::new();
    let mut ips: Vec<IpAddr> = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    ips.extend(model.dip.keys().map(|i| IpAddr::V4(*i)));
    let mut rts = Vec::new();
    for (i, r) in suite.routes.iter().enumerate() {
        let leaf = (r.action == Action::Terminate || r.backend == BackendKind::Tls)
            .then(|| ca.issue(out, &format!("route{i}"), &names_for_cert(r), &ips))
            .transpose()
            .map_err(|e| e.to_string())?;
        let backend_port = match suite.backends.port {
            0 => crate::net::free_port(&[Ipv4Addr::LOCALHOST]).map_err(|e| e.to_string())?,
            base => base + i as u16,
        };
        rts.push(RouteRt { backend_port, leaf });
    }
    let write = |suite: &Suite, dir: &Path, peer_workers: usize| -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let env = Env { suite, model: &model, routes: &rts, dir, peer_workers };
        // the suite's ports, or ports free now (a suite that leaves them to be picked)
        let port = |target: &str| match targets::port_of(suite, target) {
            Some(p) => Ok(p),
            None => crate::net::free_port(&targets::listen_ips(&env)).map_err(|e| e.to_string()),
        };
        std::fs::write(dir.join("sni-dispatch.toml"), targets::dispatcher_config(&env, port(DISPATCHER)?))
            .map_err(|e| e.to_string())?;
        for (name, r) in [
            ("haproxy.cfg", targets::haproxy_config(&env, port("haproxy")?, false)),
            ("nginx.conf", targets::nginx_config(&env, port("nginx")?)),
        ] {
            match r {
                Ok(c) => std::fs::write(dir.join(name), c).map_err(|e| e.to_string())?,
                Err(e) => eprintln!("{name}: {e}"),
            }
        }
        Ok(())
    };
    match &suite.scaling {
        None => write(&suite, out, 1)?,
        Some(sc) => {
            // one directory per size that fits this machine: out/w1, out/w2, ...
            let explicit = sc.cpus.as_deref().map(parse_cpus).transpose()?;
            for sp in scaling::plan(&sc.workers, &scaling::allowed_cpus(), explicit.as_deref()) {
                let Some(p) = &sp.placement else {
                    eprintln!("{} workers: skipped: {}", sp.workers, sp.skipped.as_deref().unwrap_or("?"));
                    continue;
                };
                let mut s = suite.clone();
                s.cpus = scaling::cpus_of(p);
                write(&s, &out.join(format!("w{}", p.workers)), p.workers)?;
            }
        }
    }
    Ok(())
}
