//! The suite file (TOML) and the routing model derived from it.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Alternating runs per target and workload; medians are reported.
    #[serde(default = "one")]
    pub runs: usize,
    /// Exit non-zero on any error (CI's smoke suite).
    #[serde(default)]
    pub fail_on_error: bool,
    #[serde(default)]
    pub cpus: Cpus,
    #[serde(default)]
    pub dispatcher: DispatcherCfg,
    #[serde(default)]
    pub backends: BackendsCfg,
    #[serde(default)]
    pub fallback: Fallback,
    /// Per-client limits on the shared listener, for every target that has them: the
    /// dispatcher's `max_conns_per_client`/`max_conn_rate_per_client`, HAProxy's stick-table
    /// `conn_cur`/`conn_rate` rejects, nginx's `limit_conn` (nginx's stream module has no rate).
    #[serde(default)]
    pub admission: Option<AdmissionCfg>,
    #[serde(rename = "route", default)]
    pub routes: Vec<Route>,
    #[serde(rename = "workload", default)]
    pub workloads: Vec<Workload>,
    /// Scaling runs: every workload at each number of workers (see [`Scaling`]); `[cpus]` is then
    /// replaced, size by size, by the allocation of [`crate::scaling::allocate`].
    #[serde(default)]
    pub scaling: Option<Scaling>,
    /// A control-plane suite: the cost of checking, starting, reloading and changing a large
    /// configuration (see [`crate::control`]); its workloads are its own.
    #[serde(default)]
    pub control_plane: Option<crate::control::ControlPlane>,
}

/// `[scaling]`: run every workload against every target with 1, 2, 4, ... workers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// The sizes to run, in this order; a size larger than the CPUs available is skipped with a note.
    pub workers: Vec<usize>,
    /// The CPUs the target's workers are taken from, first N for N workers, in this order (e.g.
    /// "2-15"); default: one CPU per physical core first, avoiding the core of the lowest CPU
    /// (see `scaling::default_order`). The load generators and back ends get every other CPU.
    #[serde(default)]
    pub cpus: Option<String>,
    /// Multiply each workload's `concurrency` (and open-loop `rate`, and `max_count`) by the
    /// number of workers, so that the load grows with the target.
    #[serde(default = "yes")]
    pub scale_load: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cpus {
    /// CPUs of the dispatcher's workers (`--cpus`), and of each peer's single worker.
    #[serde(default = "cpu1")]
    pub dispatcher: String,
    /// `--workers` of the dispatcher.
    #[serde(default = "one")]
    pub workers: usize,
    /// CPUs of the load-generating threads.
    #[serde(default = "cpu0")]
    pub load: String,
    /// CPUs of the built-in back ends.
    #[serde(default = "cpu0")]
    pub backends: String,
}
fn cpu0() -> String {
    "0".into()
}
fn cpu1() -> String {
    "1".into()
}
impl Default for Cpus {
    fn default() -> Self {
        Cpus { dispatcher: cpu1(), workers: 1, load: cpu0(), backends: cpu0() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherCfg {
    /// Listening port of the dispatcher; peers listen on port+1 (haproxy), +2 (haproxy-splice), +3 (nginx).
    /// 0 (the default): every target gets a port that is free when it starts.
    #[serde(default)]
    pub port: u16,
    /// Extra keys for the generated config's `[runtime]` table.
    #[serde(default)]
    pub runtime: toml::Table,
    /// `[admin] listen` address, if the suite wants the admin endpoint.
    #[serde(default)]
    pub admin: Option<String>,
    /// Extra command-line arguments after `run --config FILE --workers N --cpus LIST`.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Seconds to wait for every target to accept connections.
    #[serde(default = "start_timeout")]
    pub start_timeout_s: f64,
}
fn start_timeout() -> f64 {
    20.0
}
impl Default for DispatcherCfg {
    fn default() -> Self {
        DispatcherCfg {
            port: 0,
            runtime: toml::Table::new(),
            admin: None,
            extra_args: vec![],
            start_timeout_s: start_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsCfg {
    /// Route i's back end listens on 127.0.0.1:(port + i). 0 (the default): each back end binds
    /// a port of the kernel's choosing (they need not be consecutive).
    #[serde(default)]
    pub port: u16,
    /// Accepting threads per back end.
    #[serde(default = "backend_threads")]
    pub threads: usize,
}
fn backend_threads() -> usize {
    64
}
impl Default for BackendsCfg {
    fn default() -> Self {
        BackendsCfg { port: 0, threads: backend_threads() }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionCfg {
    /// Connections open at once per client address.
    #[serde(default)]
    pub max_conns_per_client: Option<u32>,
    /// New connections per second per client address.
    #[serde(default)]
    pub max_conn_rate_per_client: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    pub no_sni: Option<String>,
    pub unknown_sni: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Passthrough,
    Terminate,
}

/// The built-in back end behind a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Reads a (PROXY header and a) ClientHello, answers 64 fixed bytes naming the route, closes.
    Hello,
    /// Echoes everything.
    Echo,
    /// Reads to EOF, answers the byte count and CRC32.
    Sink,
    /// The bulk protocol: hello, command, push and/or pull N bytes, CRC32 trailer.
    Bulk,
    /// A rustls TLS terminator with the route's certificate, echoing the plaintext.
    Tls,
    /// Holds connections open: answers a ClientHello like `hello` (after a PROXY header where
    /// asked), echoes anything else, closes only when the client does. One epoll thread serves
    /// them all, so thousands of idle connections cost no threads (idle workloads).
    Hold,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    pub action: Action,
    #[serde(default)]
    pub sni: Vec<String>,
    /// Generated names: `pattern` with `{}` replaced by 0..count.
    #[serde(default)]
    pub sni_pattern: Option<String>,
    #[serde(default)]
    pub sni_count: u64,
    #[serde(default)]
    pub dedicated_ips: Vec<Ipv4Addr>,
    pub backend: BackendKind,
    #[serde(default = "pp_none")]
    pub proxy_protocol: String,
    #[serde(default)]
    pub alpn: Vec<String>,
    #[serde(default)]
    pub min_tls: Option<String>,
    /// TCP half-close: `true` passes one side's end of stream on and relays the other way until
    /// it ends too; `false` closes both ways at the first end (nginx's default,
    /// `proxy_half_close off`). Unset: each target's default (sni-dispatch and HAProxy
    /// half-close; nginx does not). HAProxy always half-closes.
    #[serde(default)]
    pub half_close: Option<bool>,
}
fn pp_none() -> String {
    "none".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    HelloReplay,
    FullTls,
    Bulk,
    /// Open `connections` connections, hold them in one `state`, measure the target's memory
    /// and descriptors per connection (see [`crate::idle`]).
    Idle,
}

/// What an idle connection has done when it is held (`kind = "idle"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleState {
    /// The first `partial_bytes` bytes of the ClientHello, then nothing.
    PartialHello,
    /// The whole hello sent, the back end's answer read: a relayed (spliced) passthrough connection.
    Spliced,
    /// A TLS 1.3 handshake completed with the target and 16 bytes echoed through it.
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DistKind {
    Fixed,
    Uniform,
    Zipf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniDist {
    pub dist: DistKind,
    /// `fixed`: the names (each must be routable, or fall back).
    #[serde(default)]
    pub names: Vec<String>,
    /// `uniform`/`zipf`: the first `count` names of the suite's name table (default: all).
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default = "zipf_s")]
    pub exponent: f64,
    /// `uniform`/`zipf`: draw only from these routes' names (default: the whole table).
    #[serde(default)]
    pub routes: Vec<String>,
}
fn zipf_s() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowMode {
    /// One byte of the hello every `interval_ms`.
    Trickle,
    /// `stall_after` bytes, then nothing.
    Stall,
}

/// A command run while a workload runs (`[workload.during]`), e.g. a binary upgrade or a reload
/// of the target: the workload's errors are what its clients saw across it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct During {
    /// Seconds after the workload's window opens.
    pub after_s: f64,
    /// Run with `sh -c` from the repository root, with the target described in `SLT_*`
    /// variables (see the README); bounded by `timeout_s`.
    pub command: String,
    #[serde(default = "sixty")]
    pub timeout_s: f64,
}
fn sixty() -> f64 {
    60.0
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Slowloris {
    pub connections: usize,
    pub mode: SlowMode,
    #[serde(default = "thousand")]
    pub interval_ms: u64,
    #[serde(default = "ten")]
    pub stall_after: usize,
    /// Open a new slow connection whenever the target closes one.
    #[serde(default = "yes")]
    pub reconnect: bool,
}
fn thousand() -> u64 {
    1000
}
fn ten() -> usize {
    10
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub kind: Kind,
    #[serde(default = "five")]
    pub duration_s: f64,
    #[serde(default = "max_count")]
    pub max_count: u64,
    #[serde(default)]
    pub warmup_s: f64,
    /// Closed loop: connections in flight. Open loop: the worker pool.
    #[serde(default = "eight")]
    pub concurrency: usize,
    /// Open loop: connections per second (coordinated-omission corrected latency).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Closed loop: apply HdrHistogram's expected-interval correction with this interval.
    #[serde(default)]
    pub expected_interval_us: Option<u64>,
    /// IP to dial: "shared" (127.0.0.1) or a dedicated IP.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// Share of connections that dial one of `dedicated_ips` (default: all routes' dedicated IPs).
    #[serde(default)]
    pub dedicated_share: f64,
    #[serde(default)]
    pub dedicated_ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub sni: Option<SniDist>,
    /// Share of connections with no SNI.
    #[serde(default)]
    pub no_sni_share: f64,
    /// Hello replay: a captured hello (path relative to the repository root) or "rustls".
    #[serde(default)]
    pub hello: Option<String>,
    /// Hello replay: write the first `split_at` bytes, pause, then the rest.
    #[serde(default)]
    pub split_at: Option<usize>,
    #[serde(default)]
    pub split_pause_ms: u64,
    /// Hello replay: re-frame the hello into records of at most this many handshake bytes.
    #[serde(default)]
    pub record_size: Option<usize>,
    /// Full TLS: resume sessions.
    #[serde(default)]
    pub resumption: bool,
    /// Full TLS: offer X25519MLKEM768 first.
    #[serde(default)]
    pub pq: bool,
    /// Full TLS: request (and echoed response) size.
    #[serde(default = "sixteen")]
    pub request_bytes: usize,
    /// Full TLS: verify the certificate against the suite's CA.
    #[serde(default = "yes")]
    pub verify: bool,
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Bulk: MiB the client sends / receives per connection.
    #[serde(default)]
    pub push_mib: f64,
    #[serde(default)]
    pub pull_mib: f64,
    /// Bulk: keep each direction of each connection at this many MiB/s at most (0: as fast as it goes).
    #[serde(default)]
    pub mib_per_s: f64,
    #[serde(default = "io_timeout")]
    pub io_timeout_ms: u64,
    #[serde(default)]
    pub slowloris: Option<Slowloris>,
    /// A command run while the workload runs (a binary upgrade, a reload).
    #[serde(default)]
    pub during: Option<During>,
    /// Targets that skip this workload (e.g. a peer that cannot express it).
    #[serde(default)]
    pub skip_targets: Vec<String>,
    /// Bind this source address before connecting (default: 32 addresses 127.1.0.x in turn).
    #[serde(default)]
    pub source: Option<Ipv4Addr>,
    /// Connections the target refuses (connect refused or reset, closed or reset before the
    /// answer) are counted as `refused`, not as errors (an admission flood).
    #[serde(default)]
    pub refusal_expected: bool,
    /// Another workload of the suite that runs at the same time against the same target, from
    /// half a second before this one starts until it ends (its own `max_count` still bounds it).
    #[serde(default)]
    pub background: Option<String>,
    /// Run only as another workload's `background` (or when named by `--only`).
    #[serde(default)]
    pub background_only: bool,
    /// Report this workload's latency against that workload's (e.g. the same load without the
    /// background): p99 with ÷ p99 without, per target.
    #[serde(default)]
    pub compare_to: Option<String>,
    /// Idle: connections to open and hold (`--connections N` overrides it).
    #[serde(default = "five_thousand")]
    pub connections: usize,
    /// Idle: what each connection has done when it is held.
    #[serde(default)]
    pub state: Option<IdleState>,
    /// Idle, `partial_hello`: bytes of the hello sent.
    #[serde(default = "twenty")]
    pub partial_bytes: usize,
    /// Idle: seconds between the last connection opened and the measurement.
    #[serde(default = "two")]
    pub settle_s: f64,
    /// Idle: seconds between closing every connection and the last RSS reading.
    #[serde(default = "ten_f")]
    pub leave_s: f64,
}
fn five_thousand() -> usize {
    5000
}
fn twenty() -> usize {
    20
}
fn two() -> f64 {
    2.0
}
fn ten_f() -> f64 {
    10.0
}
fn five() -> f64 {
    5.0
}
fn eight() -> usize {
    8
}
fn sixteen() -> usize {
    16
}
fn max_count() -> u64 {
    10_000_000
}
fn io_timeout() -> u64 {
    5000
}

impl Suite {
    pub fn load(path: &Path) -> Result<Suite, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut s: Suite = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if s.name.is_empty() {
            s.name = path.file_stem().map(|x| x.to_string_lossy().into_owned()).unwrap_or_default();
        }
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.control_plane.is_some() {
            // Its routes and load are generated (crate::control).
            return Ok(());
        }
        if self.routes.is_empty() {
            return Err("a suite needs at least one [[route]]".into());
        }
        let names: HashMap<&str, usize> = self.routes.iter().enumerate().map(|(i, r)| (r.name.as_str(), i)).collect();
        if names.len() != self.routes.len() {
            return Err("route names must be unique".into());
        }
        if self.dispatcher.port > u16::MAX - 9 {
            return Err(format!("[dispatcher] port {}: the targets need port + 0..=9", self.dispatcher.port));
        }
        if self.backends.port > 0 && usize::from(self.backends.port) + self.routes.len() > usize::from(u16::MAX) {
            return Err(format!(
                "[backends] port {}: {} routes need port + 0..{}",
                self.backends.port,
                self.routes.len(),
                self.routes.len()
            ));
        }
        for f in [&self.fallback.no_sni, &self.fallback.unknown_sni].into_iter().flatten() {
            if !f.is_empty() && !names.contains_key(f.as_str()) {
                return Err(format!("fallback names unknown route {f}"));
            }
        }
        for r in &self.routes {
            if r.sni_pattern.as_ref().is_some_and(|p| p.matches("{}").count() != 1) {
                return Err(format!("route {}: sni_pattern needs exactly one {{}}", r.name));
            }
            if !matches!(r.proxy_protocol.as_str(), "none" | "v1" | "v2") {
                return Err(format!("route {}: proxy_protocol must be none, v1 or v2", r.name));
            }
        }
        for w in &self.workloads {
            if w.duration_s <= 0.0 || w.max_count == 0 || w.concurrency == 0 {
                return Err(format!("workload {}: duration_s, max_count and concurrency must be positive", w.name));
            }
            if w.duration_s > 3600.0 {
                return Err(format!("workload {}: duration_s over an hour", w.name));
            }
            if !(0.0..=1.0).contains(&w.no_sni_share) || !(0.0..=1.0).contains(&w.dedicated_share) {
                return Err(format!("workload {}: shares must be within 0..1", w.name));
            }
            if !(w.mib_per_s >= 0.0 && w.mib_per_s.is_finite()) {
                return Err(format!("workload {}: mib_per_s must be 0 or more", w.name));
            }
            if w.kind == Kind::Bulk && w.push_mib <= 0.0 && w.pull_mib <= 0.0 {
                return Err(format!("workload {}: bulk needs push_mib or pull_mib", w.name));
            }
            if let Some(d) = &w.during {
                let within = (0.0..w.duration_s).contains(&d.after_s) && d.timeout_s > 0.0 && d.timeout_s <= 600.0;
                if !within {
                    return Err(format!(
                        "workload {}: during.after_s must be within the workload's duration_s, timeout_s within 0..=600",
                        w.name
                    ));
                }
                if w.kind == Kind::Idle {
                    return Err(format!("workload {}: an idle workload takes no `during`", w.name));
                }
            }
            self.validate_idle(w)?;
            self.validate_links(w)?;
        }
        if let Some(sc) = &self.scaling {
            if sc.workers.is_empty() {
                return Err("[scaling] workers must list at least one size".into());
            }
            for (i, &n) in sc.workers.iter().enumerate() {
                if n == 0 || n > 1024 {
                    return Err(format!("[scaling] workers: {n} is not within 1..=1024"));
                }
                if sc.workers[..i].contains(&n) {
                    return Err(format!("[scaling] workers: {n} is listed twice"));
                }
            }
            if let Some(c) = &sc.cpus {
                crate::net::parse_cpus(c).map_err(|e| format!("[scaling] cpus: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Suite {
    /// The workload named `name`.
    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name == name)
    }

    fn validate_idle(&self, w: &Workload) -> Result<(), String> {
        if w.kind != Kind::Idle {
            if w.state.is_some() {
                return Err(format!("workload {}: `state` is for kind = \"idle\"", w.name));
            }
            return Ok(());
        }
        let Some(state) = w.state else {
            return Err(format!("workload {}: idle needs state = partial_hello, spliced or terminated", w.name));
        };
        if w.connections == 0 || w.connections > 100_000 {
            return Err(format!("workload {}: connections must be within 1..=100000", w.name));
        }
        if state == IdleState::PartialHello && w.partial_bytes == 0 {
            return Err(format!("workload {}: partial_bytes must be positive", w.name));
        }
        if !(0.0..=600.0).contains(&w.settle_s) || !(0.0..=600.0).contains(&w.leave_s) {
            return Err(format!("workload {}: settle_s and leave_s must be within 0..=600", w.name));
        }
        if w.slowloris.is_some() || w.background.is_some() || w.rate.is_some() {
            return Err(format!("workload {}: an idle workload takes no slowloris, background or rate", w.name));
        }
        Ok(())
    }

    /// `background` and `compare_to` name other workloads; a background has none of its own.
    fn validate_links(&self, w: &Workload) -> Result<(), String> {
        if let Some(b) = &w.background {
            let bg =
                self.workload(b).ok_or_else(|| format!("workload {}: background {b} is not a workload", w.name))?;
            if bg.name == w.name || bg.background.is_some() || bg.kind == Kind::Idle {
                return Err(format!(
                    "workload {}: background {b} must be another workload, not idle, without a background",
                    w.name
                ));
            }
        }
        if let Some(c) = &w.compare_to {
            if c == &w.name || self.workload(c).is_none() {
                return Err(format!("workload {}: compare_to {c} is not another workload", w.name));
            }
        }
        if w.source.is_some_and(|a| a.is_unspecified()) {
            return Err(format!("workload {}: source must be an address", w.name));
        }
        Ok(())
    }

    /// The most client connections any workload keeps open at once (with its slowloris and
    /// background): the generated peer configs raise `maxconn` and `worker_connections` to fit.
    pub fn peak_connections(&self) -> usize {
        let one = |w: &Workload| match w.kind {
            Kind::Idle => w.connections,
            _ => w.concurrency + w.slowloris.as_ref().map_or(0, |s| s.connections),
        };
        self.workloads
            .iter()
            .map(|w| one(w) + w.background.as_deref().and_then(|b| self.workload(b)).map_or(0, one))
            .max()
            .unwrap_or(0)
    }
}

/// One block of the name table: a route's explicit names, or its generated range.
#[derive(Debug, Clone)]
enum Block {
    List(Vec<String>),
    Pattern { prefix: String, suffix: String, count: u64 },
}

impl Block {
    fn len(&self) -> u64 {
        match self {
            Block::List(v) => v.len() as u64,
            Block::Pattern { count, .. } => *count,
        }
    }
}

/// Every SNI name of the suite in a fixed order, with its route; generated ranges stay implicit,
/// so a million names cost nothing until drawn.
#[derive(Debug, Clone, Default)]
pub struct NameTable {
    blocks: Vec<(usize, u64, Block)>, // route, first index, block
    total: u64,
    exact: HashMap<String, usize>,
    wildcards: Vec<(String, usize)>, // ".suffix" -> route
}

impl NameTable {
    pub fn new(routes: &[Route]) -> NameTable {
        let mut t = NameTable::default();
        for (ri, r) in routes.iter().enumerate() {
            let mut list = Vec::new();
            for n in &r.sni {
                let n = n.to_ascii_lowercase();
                if let Some(rest) = n.strip_prefix("*.") {
                    t.wildcards.push((format!(".{rest}"), ri));
                    list.push(format!("any.{rest}"));
                } else {
                    t.exact.insert(n.clone(), ri);
                    list.push(n);
                }
            }
            if !list.is_empty() {
                let len = list.len() as u64;
                t.blocks.push((ri, t.total, Block::List(list)));
                t.total += len;
            }
            if let Some(p) = &r.sni_pattern {
                if r.sni_count > 0 {
                    let (a, b) = p.split_once("{}").unwrap();
                    let blk = Block::Pattern {
                        prefix: a.to_ascii_lowercase(),
                        suffix: b.to_ascii_lowercase(),
                        count: r.sni_count,
                    };
                    t.blocks.push((ri, t.total, blk));
                    t.total += r.sni_count;
                }
            }
        }
        // most specific wildcard first
        t.wildcards.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        t
    }
    pub fn len(&self) -> u64 {
        self.total
    }
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
    /// The name at `i` and its route.
    pub fn get(&self, i: u64) -> (String, usize) {
        let k = self.blocks.partition_point(|(_, first, _)| *first <= i) - 1;
        let (ri, first, b) = &self.blocks[k];
        let j = i - first;
        debug_assert!(j < b.len());
        match b {
            Block::List(v) => (v[j as usize].clone(), *ri),
            Block::Pattern { prefix, suffix, .. } => (format!("{prefix}{j}{suffix}"), *ri),
        }
    }
    /// The route that serves `name` by SNI: exact, generated, then the most specific wildcard.
    pub fn lookup(&self, name: &str) -> Option<usize> {
        let name = name.to_ascii_lowercase();
        if let Some(&r) = self.exact.get(&name) {
            return Some(r);
        }
        for (ri, _, b) in &self.blocks {
            if let Block::Pattern { prefix, suffix, count } = b {
                if let Some(mid) = name.strip_prefix(prefix.as_str()).and_then(|x| x.strip_suffix(suffix.as_str())) {
                    if let Ok(j) = mid.parse::<u64>() {
                        if j < *count && mid == j.to_string() {
                            return Some(*ri);
                        }
                    }
                }
            }
        }
        for (suffix, ri) in &self.wildcards {
            if let Some(head) = name.strip_suffix(suffix.as_str()) {
                if !head.is_empty() && !head.contains('.') {
                    return Some(*ri);
                }
            }
        }
        None
    }
    /// Index ranges (first, len) of the table that belong to `routes` (all when empty).
    pub fn ranges(&self, routes: &[usize]) -> Vec<(u64, u64)> {
        self.blocks
            .iter()
            .filter(|(r, _, _)| routes.is_empty() || routes.contains(r))
            .map(|(_, first, b)| (*first, b.len()))
            .collect()
    }
    /// Iterate every (name, route) in order; the generated ones are produced on the fly.
    pub fn iter(&self) -> impl Iterator<Item = (String, usize)> + '_ {
        (0..self.total).map(move |i| self.get(i))
    }
    /// Wildcard entries as written in the suite ("*.x"), with their route.
    pub fn wildcard_patterns(&self) -> Vec<(String, usize)> {
        self.wildcards.iter().map(|(s, r)| (format!("*{s}"), *r)).collect()
    }
}

/// Routing as the suite defines it: what a correct dispatcher does with each connection.
#[derive(Debug, Clone)]
pub struct Model {
    pub table: NameTable,
    pub route_names: Vec<String>,
    /// per route: TLS is terminated by the target (the back end sees plaintext)
    pub route_terminate: Vec<bool>,
    pub dip: HashMap<Ipv4Addr, usize>,
    pub no_sni: Option<usize>,
    pub unknown_sni: Option<usize>,
}

impl Model {
    pub fn new(s: &Suite) -> Model {
        let idx = |n: &Option<String>| {
            n.as_ref().filter(|x| !x.is_empty()).and_then(|n| s.routes.iter().position(|r| &r.name == n))
        };
        let mut dip = HashMap::new();
        for (i, r) in s.routes.iter().enumerate() {
            for ip in &r.dedicated_ips {
                dip.insert(*ip, i);
            }
        }
        Model {
            table: NameTable::new(&s.routes),
            route_names: s.routes.iter().map(|r| r.name.clone()).collect(),
            route_terminate: s.routes.iter().map(|r| r.action == Action::Terminate).collect(),
            dip,
            no_sni: idx(&s.fallback.no_sni),
            unknown_sni: idx(&s.fallback.unknown_sni),
        }
    }
    /// The route a connection to `ip` with `sni` must reach; None: it must be dropped.
    pub fn expect(&self, ip: Ipv4Addr, sni: Option<&str>) -> Option<usize> {
        if let Some(&r) = self.dip.get(&ip) {
            return Some(r);
        }
        match sni {
            None => self.no_sni,
            Some(n) => self.table.lookup(n).or(self.unknown_sni),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, sni: &[&str], pat: Option<(&str, u64)>) -> Route {
        Route {
            name: name.into(),
            action: Action::Passthrough,
            sni: sni.iter().map(|s| s.to_string()).collect(),
            sni_pattern: pat.map(|p| p.0.to_string()),
            sni_count: pat.map(|p| p.1).unwrap_or(0),
            dedicated_ips: vec![],
            backend: BackendKind::Hello,
            proxy_protocol: "none".into(),
            alpn: vec![],
            min_tls: None,
            half_close: None,
        }
    }

    #[test]
    fn every_shipped_suite_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("suites");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) != Some("toml") {
                continue;
            }
            let s = Suite::load(&p).unwrap_or_else(|e| panic!("{e}"));
            if s.control_plane.is_some() {
                // Its load is its own (crate::control).
                n += 1;
                continue;
            }
            assert!(!s.workloads.is_empty(), "{}", p.display());
            let m = Model::new(&s);
            for w in &s.workloads {
                if let Some(h) = &w.hello {
                    if h != "rustls" {
                        assert!(crate::workloads::resolve(h, &dir).exists(), "{}: {h}", p.display());
                    }
                }
                if let Some(a) = w.address {
                    assert!(a == Ipv4Addr::LOCALHOST || m.dip.contains_key(&a), "{}: {a}", p.display());
                }
            }
            n += 1;
        }
        assert!(n >= 9, "only {n} suites");
        let smoke = Suite::load(&dir.join("smoke.toml")).unwrap();
        assert!(smoke.fail_on_error);
    }

    #[test]
    fn a_during_command_must_run_within_the_workload() {
        let suite = |during: &str| -> Result<Suite, String> {
            let text = format!(
                "[[route]]\nname = \"a\"\naction = \"passthrough\"\nsni = [\"a.example.com\"]\nbackend = \"hello\"\n\
                 [[workload]]\nname = \"w\"\nkind = \"hello_replay\"\nhello = \"rustls\"\nduration_s = 4\n{during}\n"
            );
            let s: Suite = toml::from_str(&text).map_err(|e| e.to_string())?;
            s.validate().map(|()| s)
        };
        let ok = suite("during = { after_s = 1, command = \"true\" }").unwrap();
        let d = ok.workloads[0].during.as_ref().unwrap();
        assert_eq!((d.after_s, d.command.as_str(), d.timeout_s), (1.0, "true", 60.0));
        for bad in [
            "during = { after_s = 4, command = \"true\" }",
            "during = { after_s = -1, command = \"true\" }",
            "during = { after_s = 1, command = \"true\", timeout_s = 0 }",
            "during = { after_s = 1, command = \"true\", when = 2 }",
        ] {
            assert!(suite(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_indexing_and_lookup() {
        let rs = vec![
            route("a", &["a.example.com", "*.w.example.com"], None),
            route("b", &[], Some(("n{}.example.com", 1_000_000))),
            route("c", &["c.example.com"], Some(("c{}.example.org", 3))),
        ];
        let t = NameTable::new(&rs);
        assert_eq!(t.len(), 2 + 1_000_000 + 1 + 3);
        assert_eq!(t.get(0), ("a.example.com".into(), 0));
        assert_eq!(t.get(1), ("any.w.example.com".into(), 0));
        assert_eq!(t.get(2), ("n0.example.com".into(), 1));
        assert_eq!(t.get(1_000_001), ("n999999.example.com".into(), 1));
        assert_eq!(t.get(1_000_002), ("c.example.com".into(), 2));
        assert_eq!(t.get(1_000_005), ("c2.example.org".into(), 2));
        assert_eq!(t.lookup("N42.example.com"), Some(1));
        assert_eq!(t.lookup("n1000000.example.com"), None);
        assert_eq!(t.lookup("n042.example.com"), None);
        assert_eq!(t.lookup("x.w.example.com"), Some(0));
        assert_eq!(t.lookup("y.x.w.example.com"), None);
        assert_eq!(t.lookup("c.example.com"), Some(2));
        for i in [0u64, 1, 2, 500_000, 1_000_003] {
            let (n, r) = t.get(i);
            assert_eq!(t.lookup(&n), Some(r), "{n}");
        }
    }
}
