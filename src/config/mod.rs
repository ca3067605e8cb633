//! The TOML configuration: parsed strictly, validated whole, turned into a [`Config`] that
//! cannot hold a contradiction (two routes owning one name or IP, a fallback to nowhere, a
//! terminating route whose key does not match its certificate).
//!
//! Every problem is reported, not just the first, and each names the file, the key and the
//! reason, so `sni-dispatch check` tells an operator everything wrong with a file in one go.

mod certs;
mod file;
mod listeners;
mod load;
mod routes;
mod runtime;
mod sources;

pub use crate::access_log::SampleRate;
pub use certs::TlsSettings;
pub use listeners::{AcceptProxy, Admission, CidrSet, HandoffListener, Ja4Pattern, Listener};
pub use runtime::{parse_cpu_list, Limits, Runtime, RuntimeOverrides};
pub use sources::{ApiError, PendingWrite, Report};

use crate::backend::Pools;
use crate::route::{self, RouteId, TlsVersion};
use crate::tls::TlsMaterial;
use file::FileConfig;
use runtime::check_runtime;
use sources::Sources;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The routing table as configured: a terminating route carries its TLS material.
pub type Table = route::Table<Arc<TlsMaterial>>;
/// One configured route.
pub type Route = route::Route<Arc<TlsMaterial>>;

/// The admin endpoint's settings beyond its address (`[admin]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminSettings {
    /// A unix socket to serve on as well (or instead).
    pub socket: Option<PathBuf>,
    /// The bearer token the route API requires (read from `token_file`).
    pub token: Option<String>,
    /// Where `PUT`/`DELETE /routes/NAME` write their files; inside an `include` pattern.
    pub api_dir: Option<PathBuf>,
    /// Connections served at once; beyond, each gets 503 after its request was read.
    pub max_connections: usize,
}

/// Connections the admin endpoint serves at once, by default.
pub const ADMIN_MAX_CONNECTIONS: usize = 4096;
/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; relative paths in it are relative to its directory.
    pub path: PathBuf,
    pub runtime: Runtime,
    pub admin: Option<SocketAddr>,
    pub admin_settings: AdminSettings,
    pub listeners: Vec<Listener>,
    /// Hand-off listeners (`[[listener]] handoff = "/path"`).
    pub handoff: Vec<HandoffListener>,
    pub table: Table,
    /// The state behind the routes' back ends (health, balancing, statistics); connections
    /// keep it with their route.
    pub pools: Arc<Pools>,
    /// What every terminating route shares: the session-ticket keys (`[tls]`), the base rustls
    /// configurations. Kept so that a route built later (one route changed through the API)
    /// shares them too; a reload makes a new one (the key file read again) and carries the
    /// retired keys' window over (`Tickets::inherit`).
    pub tls: Arc<crate::tls::Shared>,
    /// `[tls]` as configured, for a reload whose main file did not change.
    pub tls_settings: TlsSettings,
    /// Follow the files with inotify (`watch = true`), debounced by this.
    pub watch: Option<Duration>,
    /// Counts the configurations applied since start (1 for the first).
    pub generation: u64,
    /// When the routes or settings last changed.
    pub changed_at: SystemTime,
    /// Things that load but may not do what the operator meant, as "key: reason".
    pub warnings: Vec<String>,
    /// Terminating routes with an `ocsp` file, by what became of it (the gauge
    /// `tls_ocsp_responses`): counted when the table is built, followed by each change, so a
    /// swap does not walk every route.
    pub ocsp: [u64; crate::metrics::OcspState::COUNT],
    /// Which file holds which routes, and how each file was when read.
    pub(crate) sources: Arc<Sources>,
}

/// One problem, located by file and key (`route "shop".cert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file, when it is not the configuration file itself (an included file).
    pub file: Option<PathBuf>,
    pub key: String,
    pub reason: String,
}

impl Located {
    pub(crate) fn new(key: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self { file: None, key: key.into(), reason: reason.to_string() }
    }

    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        self.file.get_or_insert_with(|| file.to_owned());
        self
    }
}

/// Everything wrong with a configuration.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Located>,
}

impl ConfigError {
    pub(crate) fn one(file: &Path, key: &str, reason: impl fmt::Display) -> Self {
        Self { file: file.to_owned(), problems: vec![Located::new(key, reason)] }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let file = p.file.as_deref().unwrap_or(&self.file);
            if p.key.is_empty() {
                write!(f, "{}: {}", file.display(), p.reason)?;
            } else {
                write!(f, "{}: {}: {}", file.display(), p.key, p.reason)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The same configuration (generation included) with the table's delta folded into its
    /// shards ([`Table::folded`]); `None` when the table has none. Everything else is shared.
    pub fn folded(&self) -> Option<Self> {
        let table = self.table.folded()?;
        Some(Self { table, ..self.clone() })
    }

    /// Reads, parses and validates `path` and the files it includes, then applies command-line
    /// `overrides` on top of its `[runtime]` table. Certificates and keys are read and checked
    /// here, so a config that loads can be served.
    pub fn load(path: &Path, overrides: &RuntimeOverrides) -> Result<Self, ConfigError> {
        sources::load(None, path, overrides)
    }

    /// As [`Config::load`], from text already read; `path` names the file in errors and anchors
    /// relative paths (included files are read from the file system).
    pub fn from_str(text: &str, path: &Path, overrides: &RuntimeOverrides) -> Result<Self, ConfigError> {
        sources::load(Some((text, load::Stamp::default())), path, overrides)
    }

    /// Reads the configuration again for a reload: only the files that changed are parsed, and
    /// only the routes that changed go into the new table (which shares everything else with
    /// this one). Keys that cannot change while running are refused, naming them.
    pub fn reload(&self) -> Result<(Self, Report), ConfigError> {
        sources::reload(self)
    }

    /// Adds or replaces the route `name` through the admin API: `body` is the route's table (TOML,
    /// or JSON when `json`), validated as `check` would. Returns the new configuration and the
    /// route's file in `api_dir`, to be written ([`PendingWrite::commit`]) once it serves.
    pub fn put_route(&self, name: &str, body: &str, json: bool) -> Result<(Self, Report, PendingWrite), ApiError> {
        sources::put_route(self, name, body, json)
    }

    /// Removes the route `name` that the admin API added; its file in `api_dir` is removed by
    /// the [`PendingWrite`].
    pub fn delete_route(&self, name: &str) -> Result<(Self, Report, PendingWrite), ApiError> {
        sources::delete_route(self, name)
    }

    /// Replaces the certificate chain and key of the route `name` that the admin API added with
    /// the PEM bundle `pem` (`PUT /certs/NAME`), validated as `check` validates a route's files
    /// and required to cover the route's names; written under `api_dir/certs/NAME/`.
    pub fn put_cert(&self, name: &str, pem: &str) -> Result<(Self, Report, PendingWrite), ApiError> {
        sources::put_cert(self, name, pem)
    }

    /// The certificate route `name` serves, as JSON (`GET /certs/NAME`): its files, the chain's
    /// length, the leaf's SHA-256 and which of the route's names it covers; never the key.
    pub fn cert_json(&self, name: &str) -> Option<serde_json::Value> {
        sources::cert_json(self, name)
    }

    /// The route `name` as JSON (what `GET /routes/NAME` answers), with the file it comes from.
    pub fn route_json(&self, name: &str) -> Option<serde_json::Value> {
        sources::route_json(self, name)
    }

    /// The files the configuration was read from (the main file first), for the watcher.
    pub fn files(&self) -> Vec<PathBuf> {
        self.sources.files()
    }

    /// The directories the watcher follows: the main file's and each include pattern's.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        self.sources.dirs(&self.path)
    }

    /// A short human summary for `check` and the start-up log.
    pub fn summary(&self) -> String {
        let terminate = self.table.routes().filter(|(_, r)| r.action.is_terminate()).count();
        let routes = self.table.len();
        let (exact, wild) = self.table.name_count();
        let mut s = String::new();
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|l| if l.quic { format!("{} (+ QUIC)", l.address) } else { l.address.to_string() })
            .collect();
        s += &format!("listeners: {}\n", listeners.join(", "));
        s += &format!("routes: {} ({} terminate, {} passthrough)\n", routes, terminate, routes - terminate);
        s += &format!("names: {exact} exact, {wild} wildcard\n");
        s += &format!("dedicated IPs: {}\n", self.table.dedicated_ips().count());
        let name =
            |id: Option<RouteId>| id.map_or("drop".to_owned(), |id| format!("route {:?}", self.table.route(id).name));
        s += &format!("no SNI: {}; unknown SNI: {}\n", name(self.table.no_sni()), name(self.table.unknown_sni()));
        let files = self.sources.file_count();
        if files > 0 {
            s += &format!("included files: {files}\n");
        }
        let backends: Vec<_> = self.pools.backends().collect();
        let checked = backends.iter().filter(|b| b.health.is_some()).count();
        s += &format!("back ends: {} ({checked} health-checked)\n", backends.len());
        for h in &self.handoff {
            s += &format!("hand-off listener: {} (uids {:?})\n", h.path.display(), h.uids);
        }
        if let Some(admin) = self.admin {
            s += &format!("admin: http://{admin}/metrics\n");
        }
        if let Some(sock) = &self.admin_settings.socket {
            s += &format!("admin socket: {}\n", sock.display());
        }
        s
    }

    /// The warnings a table gives (terminating routes below TLS 1.2, OCSP responses not
    /// stapled or about to expire).
    fn table_warnings(table: &Table) -> Vec<String> {
        let mut warnings = Vec::new();
        for (_, r) in table.routes() {
            Self::route_warnings(r, &mut warnings);
        }
        warnings
    }

    /// The warnings of one route (each begins `route "NAME".`).
    fn route_warnings(r: &route::Route<Arc<TlsMaterial>>, out: &mut Vec<String>) {
        if let route::Action::Terminate(m) = &r.action {
            if r.min_tls < TlsVersion::TLS12 {
                out.push(format!(
                    "route {:?}.min_tls: rustls serves TLS 1.2 and 1.3 only; {} acts as 1.2",
                    r.name, r.min_tls
                ));
            }
            out.extend(m.warnings().into_iter().map(|(k, w)| format!("route {:?}.{k}: {w}", r.name)));
        }
    }

    /// What became of `r`'s OCSP response, if it has one.
    fn ocsp_state(r: &route::Route<Arc<TlsMaterial>>) -> Option<crate::metrics::OcspState> {
        use crate::metrics::OcspState;
        use crate::tls::Stapling;
        let route::Action::Terminate(m) = &r.action else { return None };
        match m.stapling.as_ref()? {
            Stapling::Stapled(c) if c.revoked => Some(OcspState::Revoked),
            Stapling::Stapled(_) => Some(OcspState::Stapled),
            Stapling::Refused(_) => Some(OcspState::Refused),
        }
    }

    /// [`Config::ocsp`] for `table`, which differs from `old`'s only in the routes named in
    /// `touched` (every route counted when there is no `old`).
    fn ocsp_counts(table: &Table, touched: Option<(&Config, &[&str])>) -> [u64; crate::metrics::OcspState::COUNT] {
        let Some((old, names)) = touched else {
            let mut n = [0; crate::metrics::OcspState::COUNT];
            for s in table.routes().filter_map(|(_, r)| Self::ocsp_state(r)) {
                n[s as usize] += 1;
            }
            return n;
        };
        let mut n = old.ocsp;
        for name in names {
            if let Some(s) = old.table.id_of(name).and_then(|id| old.table.get(id)).and_then(|r| Self::ocsp_state(r)) {
                n[s as usize] = n[s as usize].saturating_sub(1);
            }
            if let Some(s) = table.id_of(name).and_then(|id| table.get(id)).and_then(|r| Self::ocsp_state(r)) {
                n[s as usize] += 1;
            }
        }
        n
    }

    /// The warnings of `table`, which differs from the table that gave `old` only in the routes
    /// named in `touched`: `old`'s for the others, the touched routes' own anew.
    fn changed_table_warnings(table: &Table, old: &[String], touched: &[&str]) -> Vec<String> {
        let prefixes: Vec<String> = touched.iter().map(|n| format!("route {n:?}.")).collect();
        let mut warnings: Vec<String> =
            old.iter().filter(|w| !prefixes.iter().any(|p| w.starts_with(p.as_str()))).cloned().collect();
        for name in touched {
            if let Some(id) = table.id_of(name) {
                Self::route_warnings(table.route(id), &mut warnings);
            }
        }
        warnings
    }
}

/// How many workers `rt` starts (as the server plans them: `workers`, else one per CPU of
/// `cpus`, else per CPU the process may run on), for the per-worker state of back ends.
pub fn worker_count(rt: &Runtime) -> usize {
    match (rt.workers, &rt.cpus) {
        (0, Some(cpus)) => cpus.len().max(1),
        (0, None) => core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)),
        (n, _) => n,
    }
}

impl Config {
    /// The TCP listener bound to `address`, if one is (a listener configured with port 0
    /// matches the port it was given).
    #[inline]
    pub fn listener(&self, address: std::net::SocketAddr) -> Option<&Listener> {
        self.listeners
            .iter()
            .find(|l| l.address == address || (l.address.port() == 0 && l.address.ip() == address.ip()))
    }
}

/// The settings of the main file (everything but its routes), validated.
struct Settings {
    runtime: Runtime,
    admin: Option<SocketAddr>,
    admin_settings: AdminSettings,
    listeners: Vec<Listener>,
    handoff: Vec<HandoffListener>,
    no_sni: Option<String>,
    unknown_sni: Option<String>,
    include: Vec<String>,
    watch: Option<Duration>,
    tls: TlsSettings,
}

/// The main file's tables, validated into [`Settings`] (routes are resolved elsewhere).
fn settings(file: &mut FileConfig, base: &Path, overrides: &RuntimeOverrides, errors: &mut Vec<Located>) -> Settings {
    let mut runtime = Runtime::default();
    if let Some(rt) = &file.runtime {
        rt.apply(&mut runtime, "runtime", errors);
    }
    overrides.apply(&mut runtime, "--flag", errors);
    check_runtime(&runtime, errors);

    let admin_file = file.admin.take().unwrap_or_default();
    let admin = admin_file.listen.and_then(|s| match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(Located::new("admin.listen", format!("{s:?} is not an address like \"127.0.0.1:9900\"")));
            None
        }
    });
    let admin = overrides.admin.or(admin);
    let token = admin_file.token_file.as_ref().and_then(|p| {
        let path = base.join(p);
        match std::fs::read_to_string(&path) {
            Ok(t) if t.trim().len() >= 16 => Some(t.trim().to_owned()),
            Ok(_) => {
                errors.push(Located::new(
                    "admin.token_file",
                    format!("{}: the token must be at least 16 characters", path.display()),
                ));
                None
            }
            Err(e) => {
                errors.push(Located::new("admin.token_file", format!("{}: cannot read: {e}", path.display())));
                None
            }
        }
    });
    if let Some(a) = admin {
        if !a.ip().is_loopback() && admin_file.token_file.is_none() {
            errors.push(Located::new(
                "admin.token_file",
                format!("required when the admin endpoint listens on {a}, which is not a loopback address"),
            ));
        }
    }
    let max_connections = admin_file.max_connections.unwrap_or(ADMIN_MAX_CONNECTIONS);
    if max_connections == 0 {
        errors.push(Located::new("admin.max_connections", "must be greater than 0"));
    }
    let include = file.include.take().unwrap_or_default();
    let api_dir = admin_file.api_dir.map(|d| base.join(d));
    if let Some(dir) = &api_dir {
        let covered = include.iter().any(|p| {
            let full = base.join(p);
            full.parent() == Some(dir.as_path())
                && full.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == "*.toml" || n == "*")
        });
        if !covered {
            errors.push(Located::new(
                "admin.api_dir",
                format!(
                    "{}: no include pattern covers it (add \"{}/*.toml\" to include), so routes added through the API would be lost at the next start",
                    dir.display(),
                    dir.strip_prefix(base).unwrap_or(dir).display()
                ),
            ));
        }
    }
    let admin_settings =
        AdminSettings { socket: admin_file.socket.map(|s| base.join(s)), token, api_dir, max_connections };

    if file.listeners.is_empty() {
        errors.push(Located::new("listener", "at least one [[listener]] with an address is required"));
    }
    let mut listeners: Vec<Listener> = Vec::new();
    let mut handoff: Vec<HandoffListener> = Vec::new();
    for (i, l) in file.listeners.iter().enumerate() {
        match listeners::resolve_listener(i, l, errors) {
            Some(listeners::Resolved::Tcp(l)) if listeners.iter().any(|o| o.address == l.address) => {
                errors.push(Located::new(format!("listener[{i}].address"), format!("{} is listed twice", l.address)))
            }
            Some(listeners::Resolved::Tcp(l)) => listeners.push(l),
            Some(listeners::Resolved::Handoff(h)) if handoff.iter().any(|o| o.path == h.path) => errors
                .push(Located::new(format!("listener[{i}].handoff"), format!("{} is listed twice", h.path.display()))),
            Some(listeners::Resolved::Handoff(h)) => handoff.push(h),
            None => {}
        }
    }
    let fallback = file.fallback.take().unwrap_or_default();
    let tls = certs::resolve_tls(&file.tls.take().unwrap_or_default(), base, errors);
    let debounce = file.watch_debounce_ms.unwrap_or(200);
    if debounce > 60_000 {
        errors.push(Located::new("watch_debounce_ms", "must be at most 60000"));
    }
    Settings {
        runtime,
        admin,
        admin_settings,
        listeners,
        handoff,
        no_sni: fallback.no_sni.filter(|n| !n.is_empty()),
        unknown_sni: fallback.unknown_sni.filter(|n| !n.is_empty()),
        include,
        watch: file.watch.unwrap_or(false).then(|| Duration::from_millis(debounce)),
        tls,
    }
}

#[cfg(test)]
mod tests;
