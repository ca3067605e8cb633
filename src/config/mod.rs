//! The TOML configuration: parsed strictly, validated whole, turned into a [`Config`] that
//! cannot hold a contradiction (two routes owning one name or IP, a fallback to nowhere, a
//! terminating route whose key does not match its certificate).
//!
//! Every problem is reported, not just the first, and each names the file, the key and the
//! reason, so `sni-dispatch check` tells an operator everything wrong with a file in one go.

pub use crate::access_log::SampleRate;
use crate::route::{self, Action, ProxyProtocol, RouteId, TlsVersion};
use crate::tls::TlsMaterial;
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The routing table as configured: a terminating route carries its TLS material.
pub type Table = route::Table<Arc<TlsMaterial>>;
/// One configured route.
pub type Route = route::Route<Arc<TlsMaterial>>;

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from; relative cert/key paths were resolved against its directory.
    pub path: PathBuf,
    pub runtime: Runtime,
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<SocketAddr>,
    pub table: Table,
    /// Things that load but may not do what the operator meant, as "key: reason".
    pub warnings: Vec<String>,
}

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
    /// Path of the JSON-lines access log (relative paths are used as given, from the working directory).
    pub access_log: Option<PathBuf>,
    /// Fraction of connections logged, 0 to 1 [default: 1].
    pub access_log_sample: Option<f64>,
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
            backlog
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
    fn apply(&self, rt: &mut Runtime, origin: &str, errors: &mut Vec<Located>) {
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

fn check_runtime(rt: &Runtime, errors: &mut Vec<Located>) {
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
    ] {
        if v == 0 {
            bad(key, "must be greater than 0");
        }
    }
    if rt.backlog == 0 {
        bad("backlog", "must be greater than 0");
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

// ---- the file's syntax -------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    runtime: RuntimeOverrides,
    admin: Option<AdminFile>,
    #[serde(default, rename = "listener")]
    listeners: Vec<ListenerFile>,
    #[serde(default)]
    fallback: FallbackFile,
    #[serde(default, rename = "route")]
    routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerFile {
    address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FallbackFile {
    no_sni: Option<String>,
    unknown_sni: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    name: String,
    #[serde(default)]
    sni: Vec<String>,
    #[serde(default)]
    dedicated_ips: Vec<String>,
    action: String,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    min_tls: Option<String>,
    #[serde(default)]
    alpn: Vec<String>,
    #[serde(default)]
    backends: Vec<String>,
    proxy_protocol: Option<String>,
}

// ---- errors ------------------------------------------------------------------------------

/// One problem, located by key (`route "shop".cert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub key: String,
    pub reason: String,
}

impl Located {
    fn new(key: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self { key: key.into(), reason: reason.to_string() }
    }
}

/// Everything wrong with a configuration file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Located>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", self.file.display(), p.reason)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), p.key, p.reason)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---- loading -----------------------------------------------------------------------------

impl Config {
    /// Reads, parses and validates `path`, then applies command-line `overrides` on top of its
    /// `[runtime]` table. Certificates and keys are read and checked here, so a config that
    /// loads can be served.
    pub fn load(path: &Path, overrides: &RuntimeOverrides) -> Result<Self, ConfigError> {
        let fail = |reason: String| ConfigError { file: path.to_owned(), problems: vec![Located::new("", reason)] };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Self::from_str(&text, path, overrides)
    }

    /// As [`Config::load`], from text already read; `path` names the file in errors and anchors
    /// relative cert/key paths.
    pub fn from_str(text: &str, path: &Path, overrides: &RuntimeOverrides) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_owned(),
            // toml's message carries the line, column and the offending key.
            problems: vec![Located::new("", e.to_string().trim_end())],
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut errors = Vec::new();
        let config = resolve(file, path, &base, overrides, &mut errors);
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigError { file: path.to_owned(), problems: errors }),
        }
    }

    /// A short human summary for `check` and the start-up log.
    pub fn summary(&self) -> String {
        let routes = self.table.routes();
        let terminate = routes.iter().filter(|r| r.action.is_terminate()).count();
        let (exact, wild) = self.table.name_count();
        let mut s = String::new();
        let listeners: Vec<String> = self.listeners.iter().map(ToString::to_string).collect();
        s += &format!("listeners: {}\n", listeners.join(", "));
        s += &format!("routes: {} ({} terminate, {} passthrough)\n", routes.len(), terminate, routes.len() - terminate);
        s += &format!("names: {exact} exact, {wild} wildcard\n");
        s += &format!("dedicated IPs: {}\n", self.table.dedicated_ips().count());
        let name =
            |id: Option<RouteId>| id.map_or("drop".to_owned(), |id| format!("route {:?}", self.table.route(id).name));
        s += &format!("no SNI: {}; unknown SNI: {}\n", name(self.table.no_sni()), name(self.table.unknown_sni()));
        if let Some(admin) = self.admin {
            s += &format!("admin: http://{admin}/metrics\n");
        }
        s
    }
}

fn resolve(
    file: FileConfig,
    path: &Path,
    base: &Path,
    overrides: &RuntimeOverrides,
    errors: &mut Vec<Located>,
) -> Option<Config> {
    let mut runtime = Runtime::default();
    file.runtime.apply(&mut runtime, "runtime", errors);
    overrides.apply(&mut runtime, "--flag", errors);
    check_runtime(&runtime, errors);

    let admin = file.admin.and_then(|a| a.listen).and_then(|s| match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(Located::new("admin.listen", format!("{s:?} is not an address like \"127.0.0.1:9900\"")));
            None
        }
    });
    let admin = overrides.admin.or(admin);

    if file.listeners.is_empty() {
        errors.push(Located::new("listener", "at least one [[listener]] with an address is required"));
    }
    let mut listeners = Vec::new();
    for (i, l) in file.listeners.iter().enumerate() {
        match l.address.parse::<SocketAddr>() {
            Ok(a) if listeners.contains(&a) => {
                errors.push(Located::new(format!("listener[{i}].address"), format!("{a} is listed twice")))
            }
            Ok(a) => listeners.push(a),
            Err(_) => errors.push(Located::new(
                format!("listener[{i}].address"),
                format!("{:?} is not an address like \"0.0.0.0:443\"", l.address),
            )),
        }
    }

    let mut routes = Vec::with_capacity(file.routes.len());
    let mut names = std::collections::HashMap::new();
    for (i, r) in file.routes.into_iter().enumerate() {
        let key = if r.name.is_empty() { format!("route[{i}]") } else { format!("route {:?}", r.name) };
        if r.name.is_empty() {
            errors.push(Located::new(format!("{key}.name"), "must not be empty"));
        } else if let Some(first) = names.insert(r.name.clone(), i) {
            errors.push(Located::new(format!("{key}.name"), format!("also used by route[{first}]")));
        }
        if let Some(route) = resolve_route(r, &key, base, errors) {
            routes.push(route);
        }
    }

    let mut fallback = |field: &str, name: Option<String>| -> Option<RouteId> {
        let name = name.filter(|n| !n.is_empty())?;
        let found = routes.iter().position(|r| r.name == name).map(|i| RouteId(i as u32));
        if found.is_none() {
            errors.push(Located::new(format!("fallback.{field}"), format!("names no route: {name:?}")));
        }
        found
    };
    let no_sni = fallback("no_sni", file.fallback.no_sni);
    let unknown_sni = fallback("unknown_sni", file.fallback.unknown_sni);

    if !errors.is_empty() {
        return None;
    }
    match Table::build(routes, no_sni, unknown_sni) {
        Ok(table) => {
            let warnings = table
                .routes()
                .iter()
                .filter(|r| r.action.is_terminate() && r.min_tls < TlsVersion::TLS12)
                .map(|r| {
                    format!("route {:?}.min_tls: rustls serves TLS 1.2 and 1.3 only; {} acts as 1.2", r.name, r.min_tls)
                })
                .collect();
            Some(Config { path: path.to_owned(), runtime, admin, listeners, table, warnings })
        }
        Err(e) => {
            let key = match &e {
                route::BuildError::DuplicateName { second, .. } => format!("route {second:?}.sni"),
                route::BuildError::DuplicateIp { second, .. } => {
                    format!("route {second:?}.dedicated_ips")
                }
                route::BuildError::TooManyRoutes => "route".to_owned(),
            };
            let reason = match &e {
                route::BuildError::DuplicateName { name, first, second } if first == second => {
                    format!("{name:?} is listed twice")
                }
                _ => e.to_string(),
            };
            errors.push(Located::new(key, reason));
            None
        }
    }
}

fn resolve_route(r: RouteFile, key: &str, base: &Path, errors: &mut Vec<Located>) -> Option<Route> {
    let before = errors.len();
    let mut bad = |field: &str, reason: String| errors.push(Located::new(format!("{key}.{field}"), reason));

    #[derive(PartialEq)]
    enum Kind {
        Terminate,
        Passthrough,
    }
    let kind = match r.action.as_str() {
        "terminate" => Some(Kind::Terminate),
        "passthrough" => Some(Kind::Passthrough),
        other => {
            bad("action", format!("{other:?} is not \"terminate\" or \"passthrough\""));
            None
        }
    };
    let min_tls = match r.min_tls.as_deref() {
        None => TlsVersion::TLS12,
        Some(v) => TlsVersion::from_config(v).unwrap_or_else(|| {
            bad("min_tls", format!("{v:?} is not one of \"1.0\", \"1.1\", \"1.2\", \"1.3\""));
            TlsVersion::TLS12
        }),
    };
    let proxy_protocol = match r.proxy_protocol.as_deref() {
        None | Some("none") => ProxyProtocol::None,
        Some("v1") => ProxyProtocol::V1,
        Some("v2") => ProxyProtocol::V2,
        Some(other) => {
            bad("proxy_protocol", format!("{other:?} is not \"none\", \"v1\" or \"v2\""));
            ProxyProtocol::None
        }
    };
    // Duplicates, within a route or across routes, are found by the table's index in O(n).
    let mut sni = Vec::with_capacity(r.sni.len());
    for raw in &r.sni {
        match route::normalize_pattern(raw) {
            Ok(n) => sni.push(n),
            Err(e) => bad("sni", format!("{raw:?}: {e}")),
        }
    }
    let mut dedicated_ips = Vec::with_capacity(r.dedicated_ips.len());
    for raw in &r.dedicated_ips {
        match raw.parse::<IpAddr>() {
            Ok(ip) => dedicated_ips.push(ip),
            Err(_) => bad("dedicated_ips", format!("{raw:?} is not an IP address")),
        }
    }
    if r.backends.is_empty() {
        bad("backends", "at least one back end address is required".into());
    }
    let mut backends = Vec::with_capacity(r.backends.len());
    for raw in &r.backends {
        match raw.parse::<SocketAddr>() {
            Ok(a) => backends.push(a),
            Err(_) => bad("backends", format!("{raw:?} is not an address like \"127.0.0.1:8080\"")),
        }
    }
    for (i, p) in r.alpn.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            bad("alpn", format!("entry {i} must be 1 to 255 bytes"));
        }
    }

    let action = match kind {
        Some(Kind::Terminate) => match (&r.cert, &r.key) {
            (Some(cert), Some(pkey)) => load_tls(&base.join(cert), &base.join(pkey), key, min_tls, &r.alpn, errors)
                .map(|m| Action::Terminate(Arc::new(m))),
            (c, k) => {
                if c.is_none() {
                    bad("cert", "a terminate route needs a certificate chain (PEM)".into());
                }
                if k.is_none() {
                    bad("key", "a terminate route needs a private key (PEM)".into());
                }
                None
            }
        },
        Some(Kind::Passthrough) => {
            for (field, set) in [("cert", r.cert.is_some()), ("key", r.key.is_some()), ("alpn", !r.alpn.is_empty())] {
                if set {
                    bad(field, "applies only to action = \"terminate\"".into());
                }
            }
            Some(Action::Passthrough)
        }
        None => None,
    };
    if errors.len() > before {
        return None;
    }
    Some(Route { name: r.name, action: action?, sni, dedicated_ips, min_tls, backends, proxy_protocol })
}

/// Reads a PEM chain and key, and checks that they belong together, so that a route whose key
/// was swapped for another site's fails `check` instead of every handshake.
fn load_tls(
    cert: &Path,
    key: &Path,
    route: &str,
    min_tls: TlsVersion,
    alpn: &[String],
    errors: &mut Vec<Located>,
) -> Option<TlsMaterial> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut bad = |field: &str, path: &Path, reason: String| {
        errors.push(Located::new(format!("{route}.{field}"), format!("{}: {reason}", path.display())))
    };
    let chain: Option<Vec<CertificateDer<'static>>> = match std::fs::read(cert) {
        Err(e) => {
            bad("cert", cert, format!("cannot read: {e}"));
            None
        }
        Ok(pem) => match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Err(e) => {
                bad("cert", cert, format!("bad PEM: {e}"));
                None
            }
            Ok(c) if c.is_empty() => {
                bad("cert", cert, "holds no CERTIFICATE block".into());
                None
            }
            Ok(c) => Some(c),
        },
    };
    let private_key = match std::fs::read(key) {
        Err(e) => {
            bad("key", key, format!("cannot read: {e}"));
            None
        }
        Ok(pem) => match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(k) => Some(k),
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                bad("key", key, "holds no private key (PKCS#8, PKCS#1 or SEC1 PEM block)".into());
                None
            }
            Err(e) => {
                bad("key", key, format!("bad PEM: {e}"));
                None
            }
        },
    };
    let (chain, private_key) = (chain?, private_key?);
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, private_key, &provider) {
        Ok(ck) => {
            let certified_key = Arc::new(ck);
            match crate::tls::server_config(certified_key.clone(), min_tls, alpn) {
                Ok(server_config) => Some(TlsMaterial {
                    cert_path: cert.to_owned(),
                    key_path: key.to_owned(),
                    certified_key,
                    server_config,
                }),
                Err(e) => {
                    bad("cert", cert, format!("unusable with rustls: {e}"));
                    None
                }
            }
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            bad("key", key, format!("does not match the certificate in {}", cert.display()));
            None
        }
        Err(e) => {
            bad("key", key, format!("unusable: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests;
