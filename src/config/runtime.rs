//! The `[runtime]` table: defaults, the file's keys, tuning profiles (`--profile`) and command-line
//! flags merged in that order, and their checks.

use super::{ConfigError, Located};
use crate::access_log::SampleRate;
use crate::tls::ktls::Ktls;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `[runtime]` table with defaults applied and flags merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// 0 = one per allowed CPU (resolved by the worker module, which knows the CPU set).
    pub workers: usize,
    /// `None` = the CPUs the process may run on.
    pub cpus: Option<Vec<usize>>,
    pub ring_entries: u32,
    pub sqpoll: bool,
    pub sqpoll_idle_ms: u32,
    pub hello_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    pub max_hello_bytes: usize,
    /// 0 = unlimited.
    pub max_conns_per_worker: usize,
    pub splice: bool,
    /// Pipes each worker keeps for splicing; a connection that finds none uses buffered relay.
    pub pipe_pool: usize,
    pub backlog: u32,
    /// JSON-lines access log (`access_log`, `--access-log`); `None` = off.
    pub access_log: Option<PathBuf>,
    /// Fraction of connections written to the access log.
    pub access_log_sample: SampleRate,
    /// Kernel TLS for terminated connections (`tls::ktls`).
    pub ktls: Ktls,
    /// QUIC flows per worker whose ClientHello is not complete yet.
    pub quic_pending_max: usize,
    /// Bytes of datagrams one pending QUIC flow may buffer before its hello is complete.
    pub quic_pending_bytes: usize,
    /// How long a QUIC flow may take from its first Initial to a complete ClientHello.
    pub quic_pending_timeout_ms: u64,
    /// Routed QUIC flows per worker.
    pub quic_max_flows: usize,
    /// A routed QUIC flow with no datagram either way for this long is closed.
    pub quic_idle_timeout_ms: u64,
    /// A routed QUIC flow whose client has sent no short-header packet yet (its handshake is not
    /// done) is closed after this long without a datagram.
    pub quic_handshake_timeout_ms: u64,
    /// UDP GRO on QUIC sockets (and GSO to send the trains on) where the kernel has it.
    pub quic_gro: bool,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            workers: 0,
            cpus: None,
            ring_entries: 4096,
            sqpoll: false,
            sqpoll_idle_ms: 1000,
            hello_timeout_ms: 5000,
            connect_timeout_ms: 3000,
            idle_timeout_ms: 300_000,
            drain_timeout_ms: 30_000,
            max_hello_bytes: 16 * 1024,
            max_conns_per_worker: 0,
            splice: true,
            pipe_pool: 1024,
            backlog: 4096,
            access_log: None,
            access_log_sample: SampleRate::ALL,
            ktls: Ktls::Off,
            quic_pending_max: 1024,
            quic_pending_bytes: 64 * 1024,
            quic_pending_timeout_ms: 1000,
            quic_max_flows: 65_536,
            quic_idle_timeout_ms: 30_000,
            quic_handshake_timeout_ms: 10_000,
            quic_gro: true,
        }
    }
}

/// What a connection needs of `[runtime]` for its whole life, copied at accept (so that it
/// holds no configuration snapshot). Packed small: every connection's task holds one (times in
/// milliseconds up to 49 days, sizes up to 4 GiB; larger values are clamped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    hello_timeout_ms: u32,
    connect_timeout_ms: u32,
    idle_timeout_ms: u32,
    max_hello_bytes: u32,
    pub splice: bool,
    /// Start-only (refused on reload), so the same in every snapshot.
    pub ktls: Ktls,
}

impl Limits {
    /// `hello_timeout_ms`.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms.into())
    }

    /// `connect_timeout_ms`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.into())
    }

    /// `idle_timeout_ms`.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.into())
    }

    /// `max_hello_bytes`.
    pub fn max_hello_bytes(&self) -> usize {
        self.max_hello_bytes as usize
    }
}

impl Runtime {
    /// The per-connection limits.
    pub fn limits(&self) -> Limits {
        let small = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Limits {
            hello_timeout_ms: small(self.hello_timeout_ms),
            connect_timeout_ms: small(self.connect_timeout_ms),
            idle_timeout_ms: small(self.idle_timeout_ms),
            max_hello_bytes: small(self.max_hello_bytes as u64),
            splice: self.splice,
            ktls: self.ktls,
        }
    }
}

/// `[runtime]` as written in the file, and also the command-line overrides: every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeOverrides {
    pub workers: Option<usize>,
    pub cpus: Option<String>,
    pub ring_entries: Option<u32>,
    pub sqpoll: Option<bool>,
    pub sqpoll_idle_ms: Option<u32>,
    pub hello_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub drain_timeout_ms: Option<u64>,
    pub max_hello_bytes: Option<usize>,
    pub max_conns_per_worker: Option<usize>,
    pub splice: Option<bool>,
    pub pipe_pool: Option<usize>,
    pub backlog: Option<u32>,
    /// Kernel TLS for terminated connections: "auto", "off" or "on" [default: off].
    pub ktls: Option<Ktls>,
    /// Path of the JSON-lines access log (relative paths are used as given, from the working directory).
    pub access_log: Option<PathBuf>,
    /// Fraction of connections logged, 0 to 1 [default: 1].
    pub access_log_sample: Option<f64>,
    pub quic_pending_max: Option<usize>,
    pub quic_pending_bytes: Option<usize>,
    pub quic_pending_timeout_ms: Option<u64>,
    pub quic_max_flows: Option<usize>,
    pub quic_idle_timeout_ms: Option<u64>,
    pub quic_handshake_timeout_ms: Option<u64>,
    pub quic_gro: Option<bool>,
    /// `--admin ADDR`: not a `[runtime]` key (it overrides `[admin] listen`), so never read from the file.
    #[serde(skip)]
    pub admin: Option<SocketAddr>,
}

/// Calls `$then!` with the `[runtime]` keys whose override is a plain `Copy` value, so that
/// merging and applying overrides list them once.
macro_rules! plain_runtime_keys {
    ($then:ident) => {
        $then!(
            workers,
            ring_entries,
            sqpoll,
            sqpoll_idle_ms,
            hello_timeout_ms,
            connect_timeout_ms,
            idle_timeout_ms,
            drain_timeout_ms,
            max_hello_bytes,
            max_conns_per_worker,
            splice,
            pipe_pool,
            backlog,
            ktls,
            quic_pending_max,
            quic_pending_bytes,
            quic_pending_timeout_ms,
            quic_max_flows,
            quic_idle_timeout_ms,
            quic_handshake_timeout_ms,
            quic_gro
        )
    };
}

/// A tuning profile file (`--profile`): a `[runtime]` table and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    runtime: RuntimeOverrides,
}

impl RuntimeOverrides {
    /// Reads a tuning profile (see `tuning/profiles/`): its `[runtime]` keys override the
    /// config's, and command-line flags override both (see [`RuntimeOverrides::then`]).
    pub fn from_profile(path: &Path) -> Result<Self, ConfigError> {
        let fail = |reason: String| ConfigError { file: path.to_owned(), problems: vec![Located::new("", reason)] };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let file: ProfileFile = toml::from_str(&text).map_err(|e| fail(e.to_string().trim_end().to_owned()))?;
        let mut errors = Vec::new();
        file.runtime.apply(&mut Runtime::default(), "runtime", &mut errors);
        if !errors.is_empty() {
            return Err(ConfigError { file: path.to_owned(), problems: errors });
        }
        Ok(file.runtime)
    }

    /// These overrides with every key that `later` sets replaced by its value.
    pub fn then(self, later: &Self) -> Self {
        macro_rules! pick {
            ($($field:ident),*) => {
                Self {
                    $( $field: later.$field.or(self.$field), )*
                    cpus: later.cpus.clone().or(self.cpus),
                    access_log: later.access_log.clone().or(self.access_log),
                    access_log_sample: later.access_log_sample.or(self.access_log_sample),
                    admin: later.admin.or(self.admin),
                }
            };
        }
        plain_runtime_keys!(pick)
    }

    /// Applies every key that is set; `origin` names where they came from in errors.
    pub(super) fn apply(&self, rt: &mut Runtime, origin: &str, errors: &mut Vec<Located>) {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { rt.$field = v; } )* };
        }
        plain_runtime_keys!(set);
        if let Some(p) = &self.access_log {
            rt.access_log = Some(p.clone());
        }
        if let Some(f) = self.access_log_sample {
            match SampleRate::new(f) {
                Some(r) => rt.access_log_sample = r,
                None => errors.push(Located::new(
                    format!("{origin}.access_log_sample"),
                    format!("{f} is not a fraction from 0 to 1"),
                )),
            }
        }
        if let Some(list) = &self.cpus {
            match parse_cpu_list(list) {
                Ok(cpus) => rt.cpus = cpus,
                Err(e) => errors.push(Located::new(format!("{origin}.cpus"), e)),
            }
        }
    }
}

pub(super) fn check_runtime(rt: &Runtime, errors: &mut Vec<Located>) {
    let mut bad = |key: &str, reason: &str| errors.push(Located::new(format!("runtime.{key}"), reason));
    if !(1..=32768).contains(&rt.ring_entries) || !rt.ring_entries.is_power_of_two() {
        bad("ring_entries", "must be a power of two from 1 to 32768");
    }
    if rt.max_hello_bytes < 512 || rt.max_hello_bytes > 1 << 20 {
        bad("max_hello_bytes", "must be between 512 and 1048576");
    }
    for (key, v) in [
        ("hello_timeout_ms", rt.hello_timeout_ms),
        ("connect_timeout_ms", rt.connect_timeout_ms),
        ("idle_timeout_ms", rt.idle_timeout_ms),
        ("quic_pending_timeout_ms", rt.quic_pending_timeout_ms),
        ("quic_idle_timeout_ms", rt.quic_idle_timeout_ms),
        ("quic_handshake_timeout_ms", rt.quic_handshake_timeout_ms),
    ] {
        if v == 0 {
            bad(key, "must be greater than 0");
        }
    }
    if rt.backlog == 0 {
        bad("backlog", "must be greater than 0");
    }
    if rt.ktls == Ktls::On {
        if let Err(why) = crate::tls::ktls::probe() {
            bad("ktls", &format!("\"on\" needs kernel TLS, which this kernel does not offer: {why}"));
        }
    }
    if rt.quic_pending_max == 0 || rt.quic_max_flows == 0 {
        let key = if rt.quic_pending_max == 0 { "quic_pending_max" } else { "quic_max_flows" };
        bad(key, "must be greater than 0");
    }
    if rt.quic_pending_bytes < 1200 || rt.quic_pending_bytes > 16 << 20 {
        bad("quic_pending_bytes", "must be between 1200 (one Initial) and 16777216");
    }
}

/// Parses a CPU list such as `"0-3,8"`. The empty string means "the allowed set" (`None`).
pub fn parse_cpu_list(s: &str) -> Result<Option<Vec<usize>>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let bad = || format!("{part:?} is not a CPU number or range (expected a list like \"0-3,8\")");
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => {
                (a.trim().parse::<usize>().map_err(|_| bad())?, b.trim().parse::<usize>().map_err(|_| bad())?)
            }
            None => {
                let n = part.parse::<usize>().map_err(|_| bad())?;
                (n, n)
            }
        };
        if lo > hi || hi >= 4096 {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(Some(cpus))
}
