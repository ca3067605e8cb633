//! Where the routes come from (the main file and its included files), and changing them
//! without rebuilding what did not change: a reload re-reads only files whose stamp changed
//! (parsing only those whose content did) and turns the routes those files added, changed or
//! removed into one [`crate::route::Change`] of the running table; the admin API's `PUT` and
//! `DELETE` are a change to one file of `api_dir` that is validated first, then written.

use super::file::{FileConfig, IncludedFile, RouteFile};
use super::load::{self, Stamp};
use super::{settings, Config, ConfigError, Located, Route, RuntimeOverrides, Settings, Table};
use crate::backend::Pools;
use crate::route::{BuildError, RouteId};
use crate::tls::Shared;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The files behind a configuration.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    overrides: RuntimeOverrides,
    /// The main file's `include` patterns.
    patterns: Vec<String>,
    /// Every file with routes, the main file included, with its routes in file order.
    files: BTreeMap<PathBuf, Source>,
}

#[derive(Debug, Clone, Default)]
struct Source {
    stamp: Stamp,
    routes: Vec<RouteId>,
    /// A file with terminating routes is parsed again on every reload (its certificates and
    /// keys are read again).
    terminate: bool,
}

impl Sources {
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        self.files.keys().cloned().collect()
    }

    pub(crate) fn file_count(&self) -> usize {
        self.files.len().saturating_sub(1)
    }

    /// The directories to watch: the main file's and each included file's (and the pattern
    /// directories, so that new files are seen).
    pub(crate) fn dirs(&self, main: &Path) -> Vec<PathBuf> {
        let base = main.parent().map(Path::to_path_buf).unwrap_or_default();
        let patterns = self.patterns.iter().filter_map(|p| base.join(p).parent().map(Path::to_path_buf));
        let files = self
            .files
            .keys()
            .chain(std::iter::once(&main.to_path_buf()))
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect::<Vec<_>>();
        let mut dirs: Vec<PathBuf> = files.into_iter().chain(patterns).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    pub(super) fn owner(&self, id: RouteId) -> Option<&Path> {
        self.files.iter().find(|(_, s)| s.routes.contains(&id)).map(|(p, _)| p.as_path())
    }
}

/// What a reload or an API change did, for the log, the API's answer and the metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Files whose stamp had changed and were read.
    pub files_read: usize,
    /// Files whose content had changed and were parsed.
    pub files_parsed: usize,
    pub routes_added: usize,
    pub routes_changed: usize,
    pub routes_removed: usize,
    /// Whether the table was built anew (else copied on write).
    pub full_build: bool,
    pub shards_touched: usize,
    pub shards: usize,
    /// Reading and parsing the files (or the API's body), certificates included.
    pub parse_ms: f64,
    /// From parsed to a configuration ready to swap in: `table_ms` and `pools_ms` are parts of it.
    pub build_ms: f64,
    /// The table changed in place (`Table::change`) or built anew.
    pub table_ms: f64,
    /// The back-end pools and the warnings of the new table.
    pub pools_ms: f64,
    /// Names waiting in the table's delta, to be folded into its shards once changes pause.
    pub delta: usize,
    /// Nothing changed: the running configuration stays (its generation too).
    pub unchanged: bool,
}

/// Why an admin API change was refused.
#[derive(Debug)]
pub enum ApiError {
    /// The request itself is bad (a body that does not parse or validate): 400.
    Invalid(ConfigError),
    /// The route is not there (404), or belongs to a file the API does not own (409).
    NotFound(String),
    Conflict(String),
    /// The API is not configured (no `api_dir`): 404 with the reason.
    Disabled(String),
    /// Writing the route's file failed: 500.
    Io(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "{e}"),
            Self::NotFound(s) | Self::Conflict(s) | Self::Disabled(s) | Self::Io(s) => f.write_str(s),
        }
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// One file's routes as just parsed (`None` entries had problems, reported).
struct FileRoutes {
    path: PathBuf,
    stamp: Stamp,
    routes: Vec<Route>,
    /// The running routes the file still defines exactly as the table has them (a reload keeps
    /// those and parses past them).
    unchanged: Vec<RouteId>,
}

/// For a reload over `table`: the running route that a parsed route is the same as.
fn same_as_running(table: &Table) -> impl Fn(&Route) -> Option<RouteId> + Sync + '_ {
    move |r: &Route| table.id_of(&r.name).filter(|id| table.get(*id).is_some_and(|o| same_route(o, r)))
}

/// Whether two routes are the same, terminating ones included (the same certificate material,
/// built with the same TLS state).
fn same_route(a: &Route, b: &Route) -> bool {
    a.same_as_with(b, |x, y| x.same(y))
}

/// Reads and parses the included files `paths` in parallel (each file's problems located in it).
fn parse_files(
    paths: &[(PathBuf, Option<Stamp>)],
    same: load::Same<'_>,
    tls: &Shared,
    errors: &mut Vec<Located>,
) -> Vec<FileRoutes> {
    let results = crate::sys::parallel_map(paths, |(path, _)| {
        let mut errs = Vec::new();
        let base = path.parent().unwrap_or(Path::new(""));
        let out = match load::parse_file::<IncludedFile>(path, base, same, tls, &mut errs) {
            Err(load::FileError::Read(e)) => {
                errs.push(Located::new("", e));
                None
            }
            Ok((p, stamp)) => Some(FileRoutes {
                path: path.clone(),
                stamp,
                routes: p.routes.into_iter().flatten().collect(),
                unchanged: p.unchanged,
            }),
            Err(load::FileError::Syntax(e)) => {
                errs.push(Located::new("", format!("{e}; an included file holds only [[route]] tables")));
                None
            }
        };
        (out, errs.into_iter().map(|e| e.in_file(path)).collect::<Vec<_>>())
    });
    let mut out = Vec::new();
    for (f, errs) in results {
        errors.extend(errs);
        out.extend(f);
    }
    out
}

/// The included files the patterns name, in order (the main file never counts twice).
fn included(patterns: &[String], base: &Path, main: &Path, errors: &mut Vec<Located>) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    seen.insert(main.to_path_buf());
    let mut out = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        match load::expand(p, base) {
            Ok(files) => out.extend(files.into_iter().filter(|f| seen.insert(f.clone()))),
            Err(e) => errors.push(Located::new(format!("include[{i}]"), e)),
        }
    }
    out
}

/// The main file parsed: its settings, its own routes, the running routes it keeps unchanged,
/// and the stamp of what was read.
type Main = (Settings, Vec<Route>, Vec<RouteId>, Stamp);

/// Parses the main file (`text`, or read from `path` in pieces): its settings and its own routes.
fn parse_main(
    text: Option<(&str, Stamp)>,
    path: &Path,
    overrides: &RuntimeOverrides,
    same: load::Same<'_>,
    tls: &Shared,
    errors: &mut Vec<Located>,
) -> Result<Main, ConfigError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    // toml's message carries the line, column and the offending key.
    let (parsed, stamp) = match text {
        Some((text, stamp)) => (
            load::parse::<FileConfig>(text, &base, same, tls, errors).map_err(|e| ConfigError::one(path, "", e))?,
            stamp,
        ),
        None => load::parse_file::<FileConfig>(path, &base, same, tls, errors).map_err(|e| match e {
            load::FileError::Read(e) | load::FileError::Syntax(e) => ConfigError::one(path, "", e),
        })?,
    };
    let mut file = parsed.file;
    let settings = settings(&mut file, &base, overrides, errors);
    Ok((settings, parsed.routes.into_iter().flatten().collect(), parsed.unchanged, stamp))
}

/// `Config::load`: every file read and parsed (`text`: the main file's, already read), the table
/// built at once.
pub(super) fn load(
    text: Option<(&str, Stamp)>,
    path: &Path,
    overrides: &RuntimeOverrides,
) -> Result<Config, ConfigError> {
    let mut errors = Vec::new();
    // Routes are resolved as the files are parsed, before `[tls]` may have been read: the
    // ticket keys are given once it has been.
    let tls = Arc::new(Shared::pending());
    let (settings, main_routes, _, stamp) = parse_main(text, path, overrides, None, &tls, &mut errors)?;
    super::certs::configure_tickets(&settings.tls, &tls, &mut errors);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let paths = included(&settings.include, &base, path, &mut errors);
    let work: Vec<(PathBuf, Option<Stamp>)> = paths.into_iter().map(|p| (p, None)).collect();
    let files = parse_files(&work, None, &tls, &mut errors);
    let mut all = vec![FileRoutes { path: path.to_owned(), stamp, routes: main_routes, unchanged: Vec::new() }];
    all.extend(files);
    if !errors.is_empty() {
        // Every problem at once: the fallbacks too, against the routes that did load.
        for (field, name) in [("no_sni", &settings.no_sni), ("unknown_sni", &settings.unknown_sni)] {
            if let Some(name) = name {
                if !all.iter().any(|f| f.routes.iter().any(|r| &r.name == name)) {
                    errors.push(Located::new(format!("fallback.{field}"), format!("names no route: {name:?}")));
                }
            }
        }
        return Err(ConfigError { file: path.to_owned(), problems: errors });
    }
    build(path, settings, all, overrides, 1, tls)
}

/// Builds a whole table from the files' routes (main file first), with the sources that say
/// which file holds which route.
fn build(
    path: &Path,
    settings: Settings,
    files: Vec<FileRoutes>,
    overrides: &RuntimeOverrides,
    generation: u64,
    tls: Arc<Shared>,
) -> Result<Config, ConfigError> {
    let mut sources =
        Sources { overrides: overrides.clone(), patterns: settings.include.clone(), files: BTreeMap::new() };
    let mut routes = Vec::new();
    let mut owners: Vec<(usize, usize)> = Vec::new();
    let mut paths = Vec::new();
    for (fi, f) in files.into_iter().enumerate() {
        let ids: Vec<RouteId> = (routes.len()..routes.len() + f.routes.len()).map(|i| RouteId(i as u32)).collect();
        let terminate = f.routes.iter().any(|r| r.action.is_terminate());
        owners.extend((0..f.routes.len()).map(|i| (fi, i)));
        routes.extend(f.routes.into_iter().map(Arc::new));
        sources.files.insert(f.path.clone(), Source { stamp: f.stamp, routes: ids, terminate });
        paths.push(f.path);
    }
    let table =
        build_table(path, routes, &settings, |id| owners.get(id.0 as usize).map(|&(f, i)| (paths[f].clone(), i)))?;
    finish(path, settings, table, sources, generation, tls, None)
}

/// `Table::build_shared` with the fallbacks resolved by name, its errors located.
fn build_table(
    path: &Path,
    routes: Vec<Arc<Route>>,
    settings: &Settings,
    owner: impl Fn(RouteId) -> Option<(PathBuf, usize)>,
) -> Result<Table, ConfigError> {
    let mut errors = Vec::new();
    let position = |name: &str| routes.iter().position(|r| r.name == name).map(|i| RouteId(i as u32));
    let mut fallback = |field: &str, name: &Option<String>| -> Option<RouteId> {
        let name = name.as_ref()?;
        let found = position(name);
        if found.is_none() {
            errors.push(Located::new(format!("fallback.{field}"), format!("names no route: {name:?}")));
        }
        found
    };
    let no_sni = fallback("no_sni", &settings.no_sni);
    let unknown_sni = fallback("unknown_sni", &settings.unknown_sni);
    match Table::build_shared(routes, no_sni, unknown_sni) {
        Ok(t) if errors.is_empty() => Ok(t),
        Ok(_) => Err(ConfigError { file: path.to_owned(), problems: errors }),
        Err(e) => {
            errors.insert(0, located(&e, &|id| owner(id)));
            Err(ConfigError { file: path.to_owned(), problems: errors })
        }
    }
}

/// A table conflict as a located problem: in the file of the route that came second.
fn located(e: &BuildError, owner: &dyn Fn(RouteId) -> Option<(PathBuf, usize)>) -> Located {
    match e {
        BuildError::DuplicateName { name, first, second } if first == second => {
            Located::new(format!("route {second:?}.sni"), format!("{name:?} is listed twice"))
        }
        BuildError::DuplicateName { second, .. } => Located::new(format!("route {second:?}.sni"), e),
        BuildError::DuplicateIp { second, .. } => Located::new(format!("route {second:?}.dedicated_ips"), e),
        BuildError::DuplicateRoute { name, first, second } => {
            let (a, b) = (owner(*first), owner(*second));
            let reason = match (&a, &b) {
                (Some((fa, ia)), Some((fb, _))) if fa == fb => format!("also used by route[{ia}]"),
                (Some((fa, ia)), _) => format!("also used by route[{ia}] of {}", fa.display()),
                _ => "used twice".to_owned(),
            };
            let l = Located::new(format!("route {name:?}.name"), reason);
            match b {
                Some((fb, _)) => l.in_file(&fb),
                None => l,
            }
        }
        BuildError::TooManyRoutes => Located::new("route", e),
    }
}

/// What a change made in place touched, so that the pools and the warnings follow it instead of
/// being built for the whole table again: the running configuration, and the names of the
/// routes added, replaced or removed.
type Touched<'a> = (&'a Config, &'a [&'a str]);

/// The configuration of `table`, with the back-end state built for it (what the running one
/// still has of it is taken over when it is swapped in: `Pools::adopt`).
fn finish(
    path: &Path,
    s: Settings,
    table: Table,
    sources: Sources,
    generation: u64,
    tls: Arc<Shared>,
    touched: Option<Touched<'_>>,
) -> Result<Config, ConfigError> {
    let warnings = match touched {
        Some((old, names)) => Config::changed_table_warnings(&table, &old.warnings, names),
        None => Config::table_warnings(&table),
    };
    let ocsp = Config::ocsp_counts(&table, touched);
    let workers = super::worker_count(&s.runtime);
    let pools = touched
        .filter(|(old, _)| old.pools.workers() == workers.max(1))
        .and_then(|(old, names)| Pools::change(&old.pools, &old.table, &table, names));
    let pools = match pools.unwrap_or_else(|| Pools::build(&table, workers)) {
        Ok(p) => p,
        Err((id, e)) => {
            let name = table.get(id).map(|r| r.name.clone()).unwrap_or_default();
            let l = Located::new(format!("route {name:?}.backends"), e);
            let l = match sources.owner(id) {
                Some(f) if f != path => l.in_file(f),
                _ => l,
            };
            return Err(ConfigError { file: path.to_owned(), problems: vec![l] });
        }
    };
    Ok(Config {
        path: path.to_owned(),
        runtime: s.runtime,
        admin: s.admin,
        admin_settings: s.admin_settings,
        listeners: s.listeners,
        handoff: s.handoff,
        table,
        pools: Arc::new(pools),
        tls,
        tls_settings: s.tls,
        watch: s.watch,
        generation,
        changed_at: SystemTime::now(),
        warnings,
        ocsp,
        sources: Arc::new(sources),
    })
}

/// Keys that cannot change while the server runs, as `(key, old, new)`.
fn immovable(old: &Config, new: &Settings) -> Vec<Located> {
    let (a, b) = (&old.runtime, &new.runtime);
    let mut out = Vec::new();
    let mut check = |key: &str, same: bool, was: String, now: String| {
        if !same {
            out.push(Located::new(key, format!("cannot change while running ({was} → {now}); restart to apply")));
        }
    };
    check("runtime.workers", a.workers == b.workers, a.workers.to_string(), b.workers.to_string());
    check("runtime.cpus", a.cpus == b.cpus, format!("{:?}", a.cpus), format!("{:?}", b.cpus));
    check(
        "runtime.ring_entries",
        a.ring_entries == b.ring_entries,
        a.ring_entries.to_string(),
        b.ring_entries.to_string(),
    );
    check("runtime.sqpoll", a.sqpoll == b.sqpoll, a.sqpoll.to_string(), b.sqpoll.to_string());
    check(
        "runtime.sqpoll_idle_ms",
        a.sqpoll_idle_ms == b.sqpoll_idle_ms,
        a.sqpoll_idle_ms.to_string(),
        b.sqpoll_idle_ms.to_string(),
    );
    check("runtime.pipe_pool", a.pipe_pool == b.pipe_pool, a.pipe_pool.to_string(), b.pipe_pool.to_string());
    check(
        "runtime.access_log",
        a.access_log.is_some() == b.access_log.is_some(),
        format!("{:?}", a.access_log),
        format!("{:?}", b.access_log),
    );
    check(
        "runtime.quic_pending_max",
        a.quic_pending_max == b.quic_pending_max,
        a.quic_pending_max.to_string(),
        b.quic_pending_max.to_string(),
    );
    check("runtime.quic_gro", a.quic_gro == b.quic_gro, a.quic_gro.to_string(), b.quic_gro.to_string());
    // Probed and set up at start (the probe's answer decides every worker's record path).
    check("runtime.ktls", a.ktls == b.ktls, a.ktls.as_str().to_owned(), b.ktls.as_str().to_owned());
    // QUIC sockets are bound at start: a listener may not gain, lose or change `quic` on reload.
    let quic_of = |ls: &[super::Listener]| -> Vec<std::net::SocketAddr> {
        ls.iter().filter(|l| l.quic).map(|l| l.address).collect()
    };
    let (qa, qb) = (quic_of(&old.listeners), quic_of(&new.listeners));
    for (i, l) in new.listeners.iter().enumerate() {
        if l.quic != qa.contains(&l.address) {
            check(&format!("listener[{i}].quic"), false, (!l.quic).to_string(), l.quic.to_string());
        }
    }
    for addr in qa.iter().filter(|a| !qb.contains(a) && new.listeners.iter().all(|l| l.address != **a)) {
        check("listener", false, format!("{addr} with quic = true"), "removed".to_owned());
    }
    // Hand-off sockets are bound at start, too (their `handoff_uids` may change).
    let paths = |hs: &[super::HandoffListener]| hs.iter().map(|h| h.path.display().to_string()).collect::<Vec<_>>();
    let (ha, hb) = (paths(&old.handoff), paths(&new.handoff));
    check("listener.handoff", ha == hb, format!("{ha:?}"), format!("{hb:?}"));
    check("admin.listen", old.admin == new.admin, format!("{:?}", old.admin), format!("{:?}", new.admin));
    let (sa, sb) = (&old.admin_settings, &new.admin_settings);
    check("admin.socket", sa.socket == sb.socket, format!("{:?}", sa.socket), format!("{:?}", sb.socket));
    check(
        "admin.max_connections",
        sa.max_connections == sb.max_connections,
        sa.max_connections.to_string(),
        sb.max_connections.to_string(),
    );
    out
}

/// A file's new routes (`None`: the file is gone).
type FileChange = (PathBuf, Option<FileRoutes>);

/// A changed file's routes in file order: ids of the old table (a change keeps them), with the
/// new routes' places filled in once the new table has given them ids. Four bytes a route, as
/// the file of a million names has a quarter of a million.
struct Order {
    path: PathBuf,
    ids: Vec<RouteId>,
    /// Routes the old table does not have: their place in `ids`, and their name.
    new: Vec<(usize, String)>,
}

/// Who holds an id of the old table during [`apply`].
#[derive(Debug, Clone, Copy)]
enum Claim {
    /// A route of a file that did not change (or no route).
    Unchanged,
    /// A changed file's route, not defined again yet.
    Held,
    /// Defined again by the changed file of this index.
    By(u32),
}

/// The route names the changed files define, each once.
struct Claims {
    by_id: Vec<Claim>,
    /// Names the old table does not have, by the index of the changed file defining them.
    fresh: HashMap<String, usize>,
}

impl Claims {
    /// Whether the changed file `k` (of `files`) may define the route `name` (the old table's
    /// `id`, if it has one): not defined twice among the changed files, nor by a file that did
    /// not change (each refusal is a problem in `errors`).
    fn claim(
        &mut self,
        id: Option<RouteId>,
        name: &str,
        k: usize,
        files: &[PathBuf],
        old: &Config,
        errors: &mut Vec<Located>,
    ) -> bool {
        let p = &files[k];
        let twice = |first: usize, errors: &mut Vec<Located>| {
            let reason = if first == k {
                "used twice in this file".to_owned()
            } else {
                format!("also defined in {}", files[first].display())
            };
            errors.push(Located::new(format!("route {name:?}.name"), reason).in_file(p));
            false
        };
        let Some(id) = id else {
            return match self.fresh.insert(name.to_owned(), k) {
                Some(first) => twice(first, errors),
                None => true,
            };
        };
        match self.by_id.get(id.0 as usize).copied().unwrap_or(Claim::Unchanged) {
            Claim::By(first) => twice(first as usize, errors),
            Claim::Held => {
                self.by_id[id.0 as usize] = Claim::By(k as u32);
                true
            }
            Claim::Unchanged => {
                let owner =
                    old.sources.owner(id).map_or_else(|| "another file".to_owned(), |o| o.display().to_string());
                errors
                    .push(Located::new(format!("route {name:?}.name"), format!("also defined in {owner}")).in_file(p));
                false
            }
        }
    }
}

/// The new configuration: `settings` (new, or the running ones) and the changed files applied
/// to `old`'s table. Small changes are copied on write; large ones build the table anew. Linear
/// in the routes of the changed files (a million-name file that changed is parsed and compared
/// route by route, and only the routes that differ go into the change).
fn apply(
    old: &Config,
    settings: Settings,
    changes: Vec<FileChange>,
    mut report: Report,
    tls: Arc<Shared>,
) -> Result<(Config, Report), ConfigError> {
    let path = &old.path;
    let built = Instant::now();
    let mut sources = Sources {
        overrides: old.sources.overrides.clone(),
        patterns: old.sources.patterns.clone(),
        files: old.sources.files.clone(),
    };
    let t = &old.table;
    let mut errors = Vec::new();
    // Who holds each id of the old table: a route of a changed file that the old table has
    // under one of that file's ids is the same route (or one moving between changed files);
    // under another id, it belongs to a file that did not change, and is a conflict. By id, not
    // by name: a reload of a million-name file keeps no set of its names.
    let bound = old.sources.files.values().flat_map(|s| s.routes.iter()).map(|id| id.0 as usize + 1).max();
    let mut claims = Claims { by_id: vec![Claim::Unchanged; bound.unwrap_or(0)], fresh: HashMap::new() };
    for (p, _) in &changes {
        if let Some(old_src) = old.sources.files.get(p) {
            for id in &old_src.routes {
                if let Some(c) = claims.by_id.get_mut(id.0 as usize) {
                    *c = Claim::Held;
                }
            }
        }
    }
    let changed: HashSet<PathBuf> = changes.iter().map(|(p, _)| p.clone()).collect();
    let files: Vec<PathBuf> = changes.iter().map(|(p, _)| p.clone()).collect();
    // Each changed file's routes in file order (its sources entry after the change).
    let mut order: Vec<Order> = Vec::new();
    let mut keep: Vec<(Route, PathBuf)> = Vec::new();
    for (k, (p, f)) in changes.into_iter().enumerate() {
        let Some(f) = f else {
            sources.files.remove(&p);
            continue;
        };
        // Its unchanged routes count too: a file that terminates is read again on every reload.
        let terminate = f.routes.iter().any(|r| r.action.is_terminate())
            || f.unchanged.iter().any(|id| t.get(*id).is_some_and(|r| r.action.is_terminate()));
        sources.files.insert(p.clone(), Source { stamp: f.stamp, routes: Vec::new(), terminate });
        let mut entries =
            Order { path: p.clone(), ids: Vec::with_capacity(f.routes.len() + f.unchanged.len()), new: Vec::new() };
        for id in f.unchanged {
            // The same as the running route of that id: kept as it is.
            let name = t.get(id).map_or("", |r| r.name.as_str());
            if claims.claim(Some(id), name, k, &files, old, &mut errors) {
                entries.ids.push(id);
            }
        }
        for r in f.routes {
            let id = t.id_of(&r.name);
            if !claims.claim(id, &r.name, k, &files, old, &mut errors) {
                continue;
            }
            match id.and_then(|id| t.get(id).map(|o| (id, o))) {
                Some((id, o)) if same_route(o, &r) => entries.ids.push(id),
                Some((id, _)) => {
                    report.routes_changed += 1;
                    entries.ids.push(id);
                    keep.push((r, p.clone()));
                }
                None => {
                    report.routes_added += 1;
                    entries.new.push((entries.ids.len(), r.name.clone()));
                    entries.ids.push(RouteId(u32::MAX));
                    keep.push((r, p.clone()));
                }
            }
        }
        order.push(entries);
    }
    if !errors.is_empty() {
        return Err(ConfigError { file: path.clone(), problems: errors });
    }
    // What the changed files held and no longer define.
    let gone: Vec<RouteId> = claims
        .by_id
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Claim::Held))
        .map(|(i, _)| RouteId(i as u32))
        .filter(|id| t.get(*id).is_some())
        .collect();
    let gone_names: Vec<String> = gone.iter().filter_map(|id| t.get(*id)).map(|r| r.name.clone()).collect();
    report.routes_removed = gone.len();
    let fallbacks_same =
        settings.no_sni == fallback_name(t, t.no_sni()) && settings.unknown_sni == fallback_name(t, t.unknown_sni());
    let touched = keep.len() + gone.len();
    let settings_same = settings.runtime == old.runtime
        && settings.listeners == old.listeners
        && settings.handoff == old.handoff
        && settings.admin_settings == old.admin_settings
        && settings.watch == old.watch
        && settings.tls == old.tls_settings
        && fallbacks_same;
    if touched == 0 && settings_same {
        report.unchanged = !report_has_terminate(&sources);
    }
    // The routes this change touches, by name (for the pools), when the table changes in place.
    let mut touched_names: Option<Vec<String>> = None;
    let table_at = Instant::now();
    let table = if touched > t.len() / 4 + 1024 {
        report.full_build = true;
        let gone = |id: RouteId| matches!(claims.by_id.get(id.0 as usize), Some(Claim::Held));
        full_rebuild(old, &settings, keep, &gone, &mut sources, &changed)?
    } else {
        // Not needed any more: freed before the shards are copied (the peak of a reload).
        drop(claims);
        touched_names = Some(gone_names.iter().cloned().chain(keep.iter().map(|(r, _)| r.name.clone())).collect());
        let file_of: HashMap<String, PathBuf> = keep.iter().map(|(r, p)| (r.name.clone(), p.clone())).collect();
        let mut c = t.change();
        for name in &gone_names {
            c.remove(name);
        }
        for (r, _) in keep {
            c.upsert(r);
        }
        c.fallbacks(settings.no_sni.clone(), settings.unknown_sni.clone());
        let (table, stats, missing) = c.finish().map_err(|es| ConfigError {
            file: path.clone(),
            problems: es
                .iter()
                .map(|e| {
                    let second = match e {
                        BuildError::DuplicateName { second, .. } | BuildError::DuplicateIp { second, .. } => {
                            Some(second.clone())
                        }
                        _ => None,
                    };
                    let l = located(e, &|_| None);
                    match second.as_ref().and_then(|n| file_of.get(n)) {
                        Some(f) => l.in_file(f),
                        None => l,
                    }
                })
                .collect(),
        })?;
        if !missing.is_empty() {
            return Err(ConfigError {
                file: path.clone(),
                problems: missing
                    .iter()
                    .map(|n| {
                        let key = if settings.no_sni.as_deref() == Some(n) {
                            "fallback.no_sni"
                        } else {
                            "fallback.unknown_sni"
                        };
                        Located::new(key, format!("names no route: {n:?}"))
                    })
                    .collect(),
            });
        }
        report.shards_touched = stats.shards_touched;
        report.shards = stats.shards;
        table
    };
    report.table_ms = ms(table_at);
    report.delta = table.delta_len();
    // Every changed file lists its routes by their ids in the new table, in file order (a
    // change keeps the ids of the routes that stay; a full build gives new ones).
    for Order { path: p, mut ids, new } in order {
        if report.full_build {
            for id in ids.iter_mut() {
                *id = t.get(*id).and_then(|r| table.id_of(&r.name)).unwrap_or(RouteId(u32::MAX));
            }
        }
        for (at, name) in new {
            ids[at] = table.id_of(&name).unwrap_or(RouteId(u32::MAX));
        }
        ids.retain(|id| id.0 != u32::MAX);
        if let Some(src) = sources.files.get_mut(&p) {
            src.routes = ids;
        }
    }
    let names: Vec<&str> = touched_names.iter().flatten().map(String::as_str).collect();
    let touched = touched_names.is_some().then_some((old, names.as_slice()));
    let pools_at = Instant::now();
    let generation = if report.unchanged { old.generation } else { old.generation + 1 };
    let mut c = finish(path, settings, table, sources, generation, tls, touched)?;
    if report.unchanged {
        c.changed_at = old.changed_at;
    }
    report.pools_ms = ms(pools_at);
    report.build_ms = ms(built);
    Ok((c, report))
}

fn report_has_terminate(s: &Sources) -> bool {
    s.files.values().any(|f| f.terminate)
}

fn fallback_name(t: &Table, id: Option<RouteId>) -> Option<String> {
    id.and_then(|id| t.get(id)).map(|r| r.name.clone())
}

/// The table built anew from the unchanged routes (shared with the old table) and `keep`; the
/// unchanged files' route lists follow their routes' new ids (the changed files' are set by the
/// caller).
fn full_rebuild(
    old: &Config,
    settings: &Settings,
    keep: Vec<(Route, PathBuf)>,
    gone: &dyn Fn(RouteId) -> bool,
    sources: &mut Sources,
    changed: &HashSet<PathBuf>,
) -> Result<Table, ConfigError> {
    let t = &old.table;
    let replaced: HashSet<&str> = keep.iter().map(|(r, _)| r.name.as_str()).collect();
    let mut routes: Vec<Arc<Route>> = Vec::with_capacity(t.len() + keep.len());
    let mut owner: Vec<PathBuf> = Vec::with_capacity(routes.capacity());
    // Every route of the old table that stays as it is: the routes of unchanged files, and the
    // unchanged routes of changed files.
    for (p, src) in &old.sources.files {
        if !sources.files.contains_key(p) {
            continue;
        }
        let mut ids = Vec::with_capacity(src.routes.len());
        for id in &src.routes {
            let Some(r) = t.get(*id) else { continue };
            if gone(*id) || replaced.contains(r.name.as_str()) {
                continue;
            }
            ids.push(RouteId(routes.len() as u32));
            routes.push(Arc::clone(r));
            owner.push(p.clone());
        }
        if !changed.contains(p) {
            if let Some(s) = sources.files.get_mut(p) {
                s.routes = ids;
            }
        }
    }
    for (r, p) in keep {
        routes.push(Arc::new(r));
        owner.push(p);
    }
    build_table(&old.path, routes, settings, |id| owner.get(id.0 as usize).map(|p| (p.clone(), 0)))
}

/// The running settings, for a reload whose main file did not change.
fn settings_of(c: &Config) -> Settings {
    Settings {
        runtime: c.runtime.clone(),
        admin: c.admin,
        admin_settings: c.admin_settings.clone(),
        listeners: c.listeners.clone(),
        handoff: c.handoff.clone(),
        no_sni: fallback_name(&c.table, c.table.no_sni()),
        unknown_sni: fallback_name(&c.table, c.table.unknown_sni()),
        include: Vec::new(),
        watch: c.watch,
        tls: c.tls_settings.clone(),
    }
}

/// `Config::reload`.
pub(super) fn reload(old: &Config) -> Result<(Config, Report), ConfigError> {
    reload_with(old, tls_unchanged(old))
}

/// Whether the `[tls]` key file still holds the keys the running configuration has (or there is
/// none, as before): a reload then resolves its terminating routes with the running TLS state,
/// so that those whose files did not change are the running routes, kept and not built again.
fn tls_unchanged(old: &Config) -> bool {
    match (&old.tls_settings.ticket_keys, old.tls.ticket_file()) {
        (None, None) => true,
        (Some(path), Some(running)) => crate::tls::KeyFile::read(path).is_ok_and(|f| f.same_keys(running)),
        _ => false,
    }
}

/// [`reload`], with the running TLS state (`reuse`) or a new one.
fn reload_with(old: &Config, reuse: bool) -> Result<(Config, Report), ConfigError> {
    let path = &old.path;
    let parsed_at = Instant::now();
    let mut report = Report { shards: old.table.shard_count(), ..Default::default() };
    let mut errors = Vec::new();
    let mut changes: Vec<FileChange> = Vec::new();
    // Every terminating route is resolved again (its files are always parsed), with this: the
    // running TLS state when the key file did not change (a route whose files did not change is
    // then the running one), else a new one whose `[tls]` key file is read again below, also
    // when the main file did not change.
    let tls = if reuse {
        old.tls.reset_loads();
        Arc::clone(&old.tls)
    } else {
        Arc::new(Shared::pending())
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let old_main = old.sources.files.get(path);
    let main_stamp = Stamp::of(path);
    let main_same = match (old_main, main_stamp) {
        (Some(o), Some(n)) => o.stamp.same_file(&n) && !o.terminate && o.stamp.hash != 0,
        _ => false,
    };
    let (settings, patterns) = if main_same {
        (settings_of(old), old.sources.patterns.clone())
    } else {
        report.files_read += 1;
        // Hashed first, in blocks: a file touched but not changed is not parsed again.
        let stamp = load::stamp_with_hash(path).map_err(|e| ConfigError::one(path, "", e))?;
        if old_main.is_some_and(|o| o.stamp.hash == stamp.hash && !o.terminate) {
            // Touched, not changed (its stamp is refreshed below): not parsed again.
            (settings_of(old), old.sources.patterns.clone())
        } else {
            report.files_parsed += 1;
            let same = same_as_running(&old.table);
            let (s, routes, unchanged, stamp) =
                parse_main(None, path, &old.sources.overrides, Some(&same), &tls, &mut errors)?;
            changes.push((path.clone(), Some(FileRoutes { path: path.clone(), stamp, routes, unchanged })));
            let patterns = s.include.clone();
            (s, patterns)
        }
    };
    if reuse && settings.tls != old.tls_settings {
        // The `[tls]` table changed: a new TLS state for every terminating route.
        drop(changes);
        return reload_with(old, false);
    }
    if !reuse {
        super::certs::configure_tickets(&settings.tls, &tls, &mut errors);
    }
    let files = included(&patterns, &base, path, &mut errors);
    let mut to_parse = Vec::new();
    for f in &files {
        let old_src = old.sources.files.get(f);
        let stamp = Stamp::of(f);
        match (old_src, stamp) {
            (Some(o), Some(s)) if o.stamp.same_file(&s) && !o.terminate => continue,
            _ => {}
        }
        report.files_read += 1;
        to_parse.push((f.clone(), old_src.map(|o| o.stamp)));
    }
    // Content unchanged (a ConfigMap swap rewrites every file): skip the parse.
    to_parse.retain(|(f, old_stamp)| {
        let Some(old_stamp) = old_stamp else { return true };
        !matches!(load::stamp_with_hash(f), Ok(s) if s.hash == old_stamp.hash && !old.sources.files.get(f).is_some_and(|o| o.terminate))
    });
    report.files_parsed += to_parse.len();
    let same = same_as_running(&old.table);
    for f in parse_files(&to_parse, Some(&same), &tls, &mut errors) {
        changes.push((f.path.clone(), Some(f)));
    }
    for p in old.sources.files.keys() {
        if p != path && !files.contains(p) {
            changes.push((p.clone(), None));
        }
    }
    errors.extend(immovable(old, &settings));
    if !errors.is_empty() {
        return Err(ConfigError { file: path.clone(), problems: errors });
    }
    report.parse_ms = ms(parsed_at);
    let (mut new, report) = apply(old, settings, changes, report, tls)?;
    // Unchanged files whose stamp moved (touched, or a ConfigMap swap) keep their routes; their
    // stamps are refreshed so that the next reload skips them at once.
    if let Some(s) = Arc::get_mut(&mut new.sources) {
        for (p, src) in s.files.iter_mut() {
            if let Some(stamp) = Stamp::of(p) {
                if src.stamp.same_file(&stamp) {
                    continue;
                }
                if let Ok(st) = load::stamp_with_hash(p) {
                    if st.hash == src.stamp.hash {
                        src.stamp = st;
                    }
                }
            }
        }
        s.patterns = patterns;
    }
    Ok((new, report))
}

/// Route names the API accepts: they name its file.
fn api_name_ok(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn api_file(old: &Config, name: &str) -> Result<PathBuf, ApiError> {
    let dir = old.admin_settings.api_dir.as_ref().ok_or_else(|| {
        ApiError::Disabled("the route API is off: set admin.api_dir (a directory that include covers)".into())
    })?;
    if !api_name_ok(name) {
        return Err(ApiError::Invalid(ConfigError::one(
            dir,
            &format!("route {name:?}.name"),
            "a route changed through the API is named with letters, digits, '.', '_' and '-' (1 to 200, not starting with '.')",
        )));
    }
    Ok(dir.join(format!("{name}.toml")))
}

/// The route `name` must be the API's own (in `file`) if it exists.
fn check_owner(old: &Config, name: &str, file: &Path) -> Result<bool, ApiError> {
    let Some(id) = old.table.id_of(name) else { return Ok(false) };
    match old.sources.owner(id) {
        Some(owner) if owner != file => Err(ApiError::Conflict(format!(
            "route {name:?} is defined in {}; change it there (the API changes only the routes it wrote, in {})",
            owner.display(),
            file.parent().unwrap_or(file).display()
        ))),
        _ => Ok(true),
    }
}

/// `Config::put_route`.
pub(super) fn put_route(
    old: &Config,
    name: &str,
    body: &str,
    json: bool,
) -> Result<(Config, Report, PendingWrite), ApiError> {
    let parsed_at = Instant::now();
    let path = api_file(old, name)?;
    // Parse errors quote the body: never a key given inline.
    let invalid =
        |reason: String| ApiError::Invalid(ConfigError::one(&path, &format!("route {name:?}"), redact_pem(&reason)));
    let table: toml::Table = if json {
        let v: serde_json::Value = serde_json::from_str(body).map_err(|e| invalid(format!("bad JSON: {e}")))?;
        if !v.is_object() {
            return Err(invalid("the body must be one route: a JSON object".into()));
        }
        toml::Table::try_from(v).map_err(|e| invalid(format!("not a route table: {e}")))?
    } else {
        toml::from_str(body).map_err(|e| invalid(format!("bad TOML: {}", e.to_string().trim_end())))?
    };
    put_route_table(old, name, path, table, parsed_at)
}

/// `Config::put_cert`: the API route `name` with its certificate chain and key replaced by the
/// PEM bundle `pem` (everything else of the route as its file says).
pub(super) fn put_cert(old: &Config, name: &str, pem: &str) -> Result<(Config, Report, PendingWrite), ApiError> {
    let parsed_at = Instant::now();
    let path = api_file(old, name)?;
    let invalid = |key: &str, reason: String| {
        ApiError::Invalid(ConfigError::one(&path, &format!("route {name:?}.{key}"), reason))
    };
    let Some(id) = old.table.id_of(name) else {
        return Err(ApiError::NotFound(format!(
            "no route {name:?} (create it with PUT /routes/{name}, cert_pem and key_pem inline)"
        )));
    };
    check_owner(old, name, &path)?;
    if !old.table.route(id).action.is_terminate() {
        return Err(invalid("action", "passes through: only a terminating route has a certificate".into()));
    }
    let (certs, key) = split_pem(pem).map_err(|(k, r)| invalid(k, r))?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ApiError::Io(format!("{}: cannot read the route's file: {e}", path.display())))?;
    let file: IncludedFile = toml::from_str(&text)
        .map_err(|e| ApiError::Io(format!("{}: not the route file the API wrote: {e}", path.display())))?;
    let route =
        file.routes.into_iter().next().ok_or_else(|| ApiError::Io(format!("{}: holds no route", path.display())))?;
    let mut table =
        toml::Table::try_from(route).map_err(|e| ApiError::Io(format!("cannot read the route back: {e}")))?;
    // The new chain and key replace the route's files; its OCSP response was for the old chain.
    for k in ["cert", "key", "ocsp"] {
        table.remove(k);
    }
    table.insert("cert_pem".into(), toml::Value::String(certs));
    table.insert("key_pem".into(), toml::Value::String(key));
    put_route_table(old, name, path, table, parsed_at)
}

/// Splits a PEM bundle into its `CERTIFICATE` blocks (in order, leaf first) and its one private
/// key block; `(key, reason)` when it is not that.
fn split_pem(pem: &str) -> Result<(String, String), (&'static str, String)> {
    let (mut certs, mut keys) = (String::new(), Vec::new());
    let mut lines = pem.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            return Err((
                "cert",
                format!("not PEM: {:?} outside a -----BEGIN ...----- block", line.chars().take(40).collect::<String>()),
            ));
        };
        let end = format!("-----END {label}-----");
        let mut block = format!("{line}\n");
        loop {
            match lines.next() {
                Some(l) if l == end => break,
                Some(l) => {
                    block += l;
                    block.push('\n');
                }
                None => return Err(("cert", format!("the {label} block has no {end} line"))),
            }
        }
        block += &end;
        block.push('\n');
        match label {
            "CERTIFICATE" => certs += &block,
            l if l.ends_with("PRIVATE KEY") => keys.push(block),
            l => {
                return Err((
                    "cert",
                    format!("unexpected PEM block {l:?} (a chain of CERTIFICATE blocks and one PRIVATE KEY)"),
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(("cert", "holds no CERTIFICATE block".into()));
    }
    match keys.len() {
        1 => Ok((certs, keys.remove(0))),
        0 => Err(("key", "holds no private key (PKCS#8, PKCS#1 or SEC1 PEM block)".into())),
        n => Err(("key", format!("holds {n} private keys; one is expected"))),
    }
}

/// `text` with the inside of every PEM block (`-----BEGIN …` to `-----END …-----`) replaced by
/// `[PEM]`: an error that quotes a request body must not carry a private key into an answer or
/// a log.
fn redact_pem(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("-----BEGIN") {
        out.push_str(&rest[..at]);
        out.push_str("[PEM]");
        rest = &rest[at..];
        // To the end of the block's END line, or of the text.
        rest = match rest.find("-----END").and_then(|e| rest[e + 8..].find("-----").map(|t| e + 8 + t + 5)) {
            Some(end) => &rest[end..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// Where the API keeps route `name`'s certificates: `api_dir/certs/NAME/` (no include pattern
/// of `*.toml` matches what is in it).
fn cert_dir(api_file: &Path, name: &str) -> PathBuf {
    api_file.parent().unwrap_or(Path::new("")).join("certs").join(name)
}

/// Writes an inline chain and key (`cert_pem`, `key_pem` of a route the API is given) to files
/// named by the chain's digest in the route's certificate directory (the key readable by the
/// owner only), not yet synced, and points the route's `cert` and `key` at them (relative to
/// `api_dir`). The files are new names: nothing refers to them until the route's file does (the
/// same chain and key again are the same files, kept as they are). Returns the files the route
/// now names and those of them this call wrote.
fn stash_pem(table: &mut toml::Table, api_file: &Path, name: &str) -> Result<Stash, (&'static str, String)> {
    let (cert, key) = match (table.remove("cert_pem"), table.remove("key_pem")) {
        (None, None) => return Ok(Stash::default()),
        (Some(toml::Value::String(c)), Some(toml::Value::String(k))) => (c, k),
        (Some(_), Some(_)) => return Err(("cert_pem", "cert_pem and key_pem are PEM text (strings)".into())),
        (None, Some(_)) => return Err(("cert_pem", "key_pem without cert_pem".into())),
        (Some(_), None) => return Err(("key_pem", "cert_pem without key_pem".into())),
    };
    for k in ["cert", "key"] {
        if table.contains_key(k) {
            return Err(("cert_pem", format!("give {k} (a path) or {k}_pem (inline), not both")));
        }
    }
    if cert.len() as u64 > crate::tls::store::MAX_PEM_BYTES || key.len() as u64 > crate::tls::store::MAX_PEM_BYTES {
        return Err(("cert_pem", format!("larger than {} bytes", crate::tls::store::MAX_PEM_BYTES)));
    }
    let digest = {
        use std::hash::{Hash, Hasher};
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new();
        (&cert, &key).hash(&mut h);
        h.finish()
    };
    let dir = cert_dir(api_file, name);
    let io = |e: std::io::Error| ("cert_pem", format!("{}: cannot write: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let (crt, pkey) = (dir.join(format!("{digest:016x}.crt")), dir.join(format!("{digest:016x}.key")));
    let mut written = Vec::new();
    if !(crt.exists() && pkey.exists()) {
        write_file(&crt, cert.as_bytes(), 0o644, false).map_err(io)?;
        if let Err(e) = write_file(&pkey, key.as_bytes(), 0o600, false) {
            let _ = std::fs::remove_file(&crt);
            return Err(io(e));
        }
        written = vec![crt.clone(), pkey.clone()];
    }
    let rel = |p: &Path| format!("certs/{name}/{}", p.file_name().and_then(|n| n.to_str()).unwrap_or_default());
    table.insert("cert".into(), toml::Value::String(rel(&crt)));
    table.insert("key".into(), toml::Value::String(rel(&pkey)));
    Ok(Stash { names: vec![crt, pkey], written })
}

/// What [`stash_pem`] did.
#[derive(Debug, Default)]
struct Stash {
    /// The chain and key files the route names now (empty: it was given none inline).
    names: Vec<PathBuf>,
    /// Those of them written by this change (removed again if it is refused).
    written: Vec<PathBuf>,
}

/// Writes `bytes` to a new file `path` with `mode` (synced when `sync`).
fn write_file(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

/// Whether the leaf certificate `der` is valid for every name of `sni` (a wildcard `*.x` as a
/// name one label under `x`); the first name it does not cover.
fn uncovered(der: &rustls::pki_types::CertificateDer<'_>, sni: &[String]) -> Option<String> {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else { return sni.first().cloned() };
    sni.iter()
        .find(|p| {
            let probe = match p.strip_prefix("*.") {
                Some(parent) => format!("wildcard-probe.{parent}"),
                None => (*p).clone(),
            };
            let Ok(name) = rustls::pki_types::ServerName::try_from(probe) else { return true };
            cert.verify_is_valid_for_subject_name(&name).is_err()
        })
        .cloned()
}

/// `Config::cert_json`.
pub(super) fn cert_json(c: &Config, name: &str) -> Option<serde_json::Value> {
    let route = c.table.get(c.table.id_of(name)?)?;
    let crate::route::Action::Terminate(m) = &route.action else {
        return Some(
            serde_json::json!({ "route": name, "action": "passthrough", "error": "a passthrough route has no certificate" }),
        );
    };
    let chain = &m.certified_key.cert;
    let leaf = chain.first()?;
    let sha256: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let covers: serde_json::Map<String, serde_json::Value> =
        route.sni.iter().map(|n| (n.clone(), (uncovered(leaf, std::slice::from_ref(n)).is_none()).into())).collect();
    let via_api = c.admin_settings.api_dir.as_ref().is_some_and(|d| m.cert_path().starts_with(d.join("certs")));
    Some(serde_json::json!({
        "route": name,
        "cert": m.cert_path().display().to_string(),
        "key": m.key_path().display().to_string(),
        "ocsp": m.ocsp_path.as_ref().map(|p| p.display().to_string()),
        "set_through_api": via_api,
        "chain": chain.len(),
        "leaf_sha256": sha256,
        "covers": covers,
    }))
}

/// `PUT /routes/NAME` and `PUT /certs/NAME` once the body is a TOML table.
fn put_route_table(
    old: &Config,
    name: &str,
    path: PathBuf,
    mut table: toml::Table,
    parsed_at: Instant,
) -> Result<(Config, Report, PendingWrite), ApiError> {
    let invalid = |reason: String| ApiError::Invalid(ConfigError::one(&path, &format!("route {name:?}"), reason));
    match table.get("name") {
        None => {
            table.insert("name".into(), toml::Value::String(name.to_owned()));
        }
        Some(toml::Value::String(n)) if n == name => {}
        Some(other) => return Err(invalid(format!("the body's name {other} is not the name in the path, {name:?}"))),
    }
    check_owner(old, name, &path)?;
    let stashed = stash_pem(&mut table, &path, name).map_err(|(key, reason)| {
        ApiError::Invalid(ConfigError::one(&path, &format!("route {name:?}.{key}"), reason))
    })?;
    // Whatever goes wrong from here leaves no certificate file behind.
    let unstash = |e: ApiError| {
        for f in &stashed.written {
            let _ = std::fs::remove_file(f);
        }
        e
    };
    let route: RouteFile = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| unstash(invalid(redact_pem(&e.to_string()).trim_end().replace('\n', " "))))?;
    let text = toml::to_string(&IncludedFile { routes: vec![route] })
        .map_err(|e| unstash(ApiError::Io(format!("cannot write the route as TOML: {e}"))))?;
    let mut errors = Vec::new();
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    // The running configuration's TLS state: the other routes keep it, so this one shares it.
    // A certificate given inline is read back from the file it was written to, through the
    // same code as `check`.
    let parsed = load::parse::<IncludedFile>(&text, &base, None, &old.tls, &mut errors)
        .map_err(|e| unstash(invalid(e.to_string())))?;
    if !errors.is_empty() {
        return Err(unstash(ApiError::Invalid(ConfigError {
            file: path.clone(),
            problems: errors.into_iter().map(|e| e.in_file(&path)).collect(),
        })));
    }
    let routes: Vec<Route> = parsed.routes.into_iter().flatten().collect();
    if !stashed.names.is_empty() {
        // A certificate handed to the API must serve the route's names (a file's is only read).
        for r in &routes {
            if let crate::route::Action::Terminate(m) = &r.action {
                if let Some(leaf) = m.certified_key.cert.first() {
                    if let Some(n) = uncovered(leaf, &r.sni) {
                        return Err(unstash(ApiError::Invalid(ConfigError::one(
                            &path,
                            &format!("route {name:?}.cert_pem"),
                            format!("the certificate is not valid for {n:?}, one of the route's names"),
                        ))));
                    }
                }
            }
        }
    }
    // Stamped by content only: the next reload reads the file once, finds the same content and
    // keeps it (then stamps its metadata too).
    let stamp = Stamp::of_content(text.as_bytes());
    let change = (path.clone(), Some(FileRoutes { path: path.clone(), stamp, routes, unchanged: Vec::new() }));
    let report =
        Report { files_parsed: 1, shards: old.table.shard_count(), parse_ms: ms(parsed_at), ..Default::default() };
    let (new, report) = apply(old, settings_of(old), vec![change], report, Arc::clone(&old.tls))
        .map_err(|e| unstash(ApiError::Invalid(e)))?;
    let certs = (!stashed.names.is_empty()).then_some((stashed.names, stashed.written));
    Ok((new, report, PendingWrite { path, text: Some(text), certs }))
}

/// The file an API change still has to write (or remove), once the change serves: what makes it
/// survive a restart. [`PendingWrite::commit`] writes it atomically and syncs it; if that fails
/// the caller puts the previous configuration back.
#[derive(Debug)]
pub struct PendingWrite {
    path: PathBuf,
    /// `None`: remove the file.
    text: Option<String>,
    /// The certificate files the route names after this change and those of them it wrote
    /// (synced before the route's file that names them); the route's other certificate files
    /// are removed once it is written. `None`: the change brings no certificate (a route's
    /// certificate directory is removed with the route).
    certs: Option<(Vec<PathBuf>, Vec<PathBuf>)>,
}

impl PendingWrite {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes (or removes) the file and syncs it and its directory; certificate files first.
    pub fn commit(&self) -> Result<(), String> {
        let path = &self.path;
        let name = path.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
        let certs = cert_dir(path, name);
        match &self.text {
            Some(text) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
                }
                for f in self.certs.iter().flat_map(|(_, written)| written) {
                    std::fs::File::open(f)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| format!("{}: cannot sync: {e}", f.display()))?;
                }
                if self.certs.is_some() {
                    std::fs::File::open(&certs)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| format!("{}: cannot sync: {e}", certs.display()))?;
                }
                write_atomically(path, text.as_bytes())
                    .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
                if let Some((keep, _)) = &self.certs {
                    // The certificates this route used before: nothing names them any more.
                    for old in std::fs::read_dir(&certs).into_iter().flatten().flatten() {
                        if !keep.contains(&old.path()) {
                            let _ = std::fs::remove_file(old.path());
                        }
                    }
                }
                Ok(())
            }
            None => {
                std::fs::remove_file(path).map_err(|e| format!("{}: cannot remove: {e}", path.display()))?;
                if let Some(dir) = path.parent() {
                    if let Ok(d) = std::fs::File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
                let _ = std::fs::remove_dir_all(&certs);
                Ok(())
            }
        }
    }

    /// Undoes what was written before the change served (its certificate files), when the
    /// change is not kept.
    pub fn abandon(&self) {
        for f in self.certs.iter().flat_map(|(_, written)| written) {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// `Config::delete_route`.
pub(super) fn delete_route(old: &Config, name: &str) -> Result<(Config, Report, PendingWrite), ApiError> {
    let path = api_file(old, name)?;
    if !check_owner(old, name, &path)? {
        return Err(ApiError::NotFound(format!("no route {name:?}")));
    }
    let report = Report { shards: old.table.shard_count(), ..Default::default() };
    let (new, report) = apply(old, settings_of(old), vec![(path.clone(), None)], report, Arc::clone(&old.tls))
        .map_err(ApiError::Invalid)?;
    Ok((new, report, PendingWrite { path, text: None, certs: None }))
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a part:
/// a hidden temporary file in the same directory (no include pattern matches it), synced, renamed
/// over `path`, and the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("route");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `Config::route_json`.
pub(super) fn route_json(c: &Config, name: &str) -> Option<serde_json::Value> {
    use crate::route::{Action, CheckKind, ProxyProtocol};
    let id = c.table.id_of(name)?;
    let r = c.table.get(id)?;
    let mut v = serde_json::json!({
        "name": r.name,
        "file": c.sources.owner(id).map(|p| p.display().to_string()),
        "action": r.action.as_str(),
        "sni": r.sni,
        "dedicated_ips": r.dedicated_ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "min_tls": format!("1.{}", r.min_tls.0.saturating_sub(0x0301)),
        "backends": r.backends.iter().map(|b| if b.weight == 1 && !b.backup {
            serde_json::Value::from(b.target.to_string())
        } else {
            serde_json::json!({ "address": b.target.to_string(), "weight": b.weight, "backup": b.backup })
        }).collect::<Vec<_>>(),
        "proxy_protocol": match r.proxy_protocol { ProxyProtocol::None => "none", ProxyProtocol::V1 => "v1", ProxyProtocol::V2 => "v2" },
        "half_close": r.half_close,
        "balance": r.upstream.balance.as_str(),
        "eject_after": r.upstream.eject.after,
        "eject_ms": r.upstream.eject.base_ms,
        "eject_max_ms": r.upstream.eject.max_ms,
    });
    if let Some(h) = &r.upstream.health {
        let mut check = serde_json::json!({
            "type": match &h.kind { CheckKind::Connect => "connect", CheckKind::Tls { .. } => "tls", CheckKind::Quic => "quic" },
            "interval_ms": h.interval_ms,
            "timeout_ms": h.timeout_ms,
            "rise": h.rise,
            "fall": h.fall,
        });
        if let CheckKind::Tls { sni } = &h.kind {
            check["sni"] = sni.clone().into();
        }
        v["health_check"] = check;
    }
    if r.is_alpn() {
        v["alpn_match"] =
            r.alpn_match.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().into();
    }
    if let Action::Terminate(m) = &r.action {
        v["cert"] = m.cert_path().display().to_string().into();
        v["key"] = m.key_path().display().to_string().into();
        v["alpn"] = m
            .server_config
            .alpn_protocols
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .into();
    }
    Some(v)
}
