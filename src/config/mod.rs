//! The TOML configuration: parsed strictly, validated whole, turned into a [`Config`] that
//! cannot hold a contradiction (two routes owning one name or IP, a fallback to nowhere, a
//! terminating route whose key does not match its certificate).
//!
//! Every problem is reported, not just the first, and each names the file, the key and the
//! reason, so `sni-dispatch check` tells an operator everything wrong with a file in one go.

mod certs;
mod file;
mod routes;
mod runtime;

pub use crate::access_log::SampleRate;
pub use runtime::{parse_cpu_list, Runtime, RuntimeOverrides};

use crate::route::{self, RouteId, TlsVersion};
use crate::tls::TlsMaterial;
use file::FileConfig;
use runtime::check_runtime;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The routing table as configured: a terminating route carries its TLS material.
pub type Table = route::Table<Arc<TlsMaterial>>;
/// One configured route.
pub type Route = route::Route<Arc<TlsMaterial>>;

/// One `[[listener]]`: where each worker binds a socket of its own (`SO_REUSEPORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// A wildcard address serves every local IP (dedicated IPs are read per connection).
    pub address: SocketAddr,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from; relative cert/key paths were resolved against its directory.
    pub path: PathBuf,
    pub runtime: Runtime,
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<Listener>,
    pub table: Table,
    /// Things that load but may not do what the operator meant, as "key: reason".
    pub warnings: Vec<String>,
}

/// One problem, located by key (`route "shop".cert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub key: String,
    pub reason: String,
}

impl Located {
    pub(crate) fn new(key: impl Into<String>, reason: impl fmt::Display) -> Self {
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
        let terminate = self.table.routes().filter(|(_, r)| r.action.is_terminate()).count();
        let routes = self.table.len();
        let (exact, wild) = self.table.name_count();
        let mut s = String::new();
        let listeners: Vec<String> = self.listeners.iter().map(|l| l.address.to_string()).collect();
        s += &format!("listeners: {}\n", listeners.join(", "));
        s += &format!("routes: {} ({} terminate, {} passthrough)\n", routes, terminate, routes - terminate);
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
            Ok(a) if listeners.iter().any(|l: &Listener| l.address == a) => {
                errors.push(Located::new(format!("listener[{i}].address"), format!("{a} is listed twice")))
            }
            Ok(a) => listeners.push(Listener { address: a }),
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
        if let Some(route) = routes::resolve_route(r, &key, base, errors) {
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
                .map(|(_, r)| r)
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
                route::BuildError::DuplicateRoute(name) => format!("route {name:?}.name"),
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

#[cfg(test)]
mod tests;
