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

    fn owner(&self, id: RouteId) -> Option<&Path> {
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
    pub parse_ms: f64,
    pub build_ms: f64,
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
    /// Routes the file still defines exactly as the running table has them (a reload keeps
    /// those and parses past them).
    unchanged: Vec<String>,
}

/// For a reload over `table`: "this parsed route is the running one".
fn same_as_running(table: &Table) -> impl Fn(&Route) -> bool + Sync + '_ {
    move |r: &Route| table.id_of(&r.name).and_then(|id| table.get(id)).is_some_and(|o| o.same_as(r))
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
        let out = match load::read(path) {
            Err(e) => {
                errs.push(Located::new("", e));
                None
            }
            Ok((text, stamp)) => match load::parse::<IncludedFile>(&text, base, same, tls, &mut errs) {
                Ok(p) => Some(FileRoutes {
                    path: path.clone(),
                    stamp,
                    routes: p.routes.into_iter().flatten().collect(),
                    unchanged: p.unchanged,
                }),
                Err(e) => {
                    errs.push(Located::new("", format!("{e}; an included file holds only [[route]] tables")));
                    None
                }
            },
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

/// Parses the main file: its settings and its own routes.
fn parse_main(
    text: &str,
    path: &Path,
    overrides: &RuntimeOverrides,
    same: load::Same<'_>,
    tls: &Shared,
    errors: &mut Vec<Located>,
) -> Result<(Settings, Vec<Route>, Vec<String>), ConfigError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    // toml's message carries the line, column and the offending key.
    let parsed =
        load::parse::<FileConfig>(text, &base, same, tls, errors).map_err(|e| ConfigError::one(path, "", e))?;
    let mut file = parsed.file;
    let settings = settings(&mut file, &base, overrides, errors);
    Ok((settings, parsed.routes.into_iter().flatten().collect(), parsed.unchanged))
}

/// `Config::load`: every file read and parsed, the table built at once.
pub(super) fn load(text: &str, stamp: Stamp, path: &Path, overrides: &RuntimeOverrides) -> Result<Config, ConfigError> {
    let mut errors = Vec::new();
    // Routes are resolved as the files are parsed, before `[tls]` may have been read: the
    // ticket keys are given once it has been.
    let tls = Arc::new(Shared::pending());
    let (settings, main_routes, _) = parse_main(text, path, overrides, None, &tls, &mut errors)?;
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
    // The ids the changed files held: a route of a changed file that the old table has under one
    // of them is the same route (or one moving between changed files); under another id, it
    // belongs to a file that did not change, and is a conflict.
    let mut was_changed: HashSet<RouteId> = HashSet::new();
    let mut gone: HashSet<String> = HashSet::new();
    for (p, _) in &changes {
        if let Some(old_src) = old.sources.files.get(p) {
            was_changed.extend(old_src.routes.iter().copied());
            gone.extend(old_src.routes.iter().filter_map(|id| t.get(*id)).map(|r| r.name.clone()));
        }
    }
    let changed: HashSet<PathBuf> = changes.iter().map(|(p, _)| p.clone()).collect();
    // Each changed file's route names in file order (its sources entry after the change).
    let mut order: Vec<(PathBuf, Vec<String>)> = Vec::new();
    let mut keep: Vec<(Route, PathBuf)> = Vec::new();
    let mut defined: HashMap<String, PathBuf> = HashMap::new();
    for (p, f) in changes {
        let Some(f) = f else {
            sources.files.remove(&p);
            continue;
        };
        let terminate = f.routes.iter().any(|r| r.action.is_terminate());
        sources.files.insert(p.clone(), Source { stamp: f.stamp, routes: Vec::new(), terminate });
        let mut names = Vec::with_capacity(f.routes.len() + f.unchanged.len());
        // A route name this change may give to `p`: not claimed twice among the changed files,
        // nor by a file that did not change.
        let mut claim = |name: &str, errors: &mut Vec<Located>| -> bool {
            if let Some(first) = defined.insert(name.to_owned(), p.clone()) {
                let reason = if first == p {
                    "used twice in this file".to_owned()
                } else {
                    format!("also defined in {}", first.display())
                };
                errors.push(Located::new(format!("route {name:?}.name"), reason).in_file(&p));
                return false;
            }
            if let Some(id) = t.id_of(name).filter(|id| !was_changed.contains(id)) {
                let owner =
                    old.sources.owner(id).map_or_else(|| "another file".to_owned(), |o| o.display().to_string());
                errors
                    .push(Located::new(format!("route {name:?}.name"), format!("also defined in {owner}")).in_file(&p));
                return false;
            }
            gone.remove(name);
            true
        };
        for name in f.unchanged {
            // The same as the running route of that name: kept as it is.
            if claim(&name, &mut errors) {
                names.push(name);
            }
        }
        for r in f.routes {
            if !claim(&r.name, &mut errors) {
                continue;
            }
            names.push(r.name.clone());
            match t.id_of(&r.name).and_then(|id| t.get(id)) {
                Some(o) if o.same_as(&r) => {}
                Some(_) => {
                    report.routes_changed += 1;
                    keep.push((r, p.clone()));
                }
                None => {
                    report.routes_added += 1;
                    keep.push((r, p.clone()));
                }
            }
        }
        order.push((p, names));
    }
    if !errors.is_empty() {
        return Err(ConfigError { file: path.clone(), problems: errors });
    }
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
    let table = if touched > t.len() / 4 + 1024 {
        report.full_build = true;
        full_rebuild(old, &settings, keep, &gone, &mut sources, &changed)?
    } else {
        touched_names = Some(gone.iter().cloned().chain(keep.iter().map(|(r, _)| r.name.clone())).collect());
        let file_of: HashMap<String, PathBuf> = keep.iter().map(|(r, p)| (r.name.clone(), p.clone())).collect();
        let mut c = t.change();
        for name in &gone {
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
    // Every changed file lists its routes by their ids in the new table, in file order.
    for (p, names) in order {
        if let Some(src) = sources.files.get_mut(&p) {
            src.routes = names.iter().filter_map(|n| table.id_of(n)).collect();
        }
    }
    report.build_ms = ms(built);
    let names: Vec<&str> = touched_names.iter().flatten().map(String::as_str).collect();
    let touched = touched_names.is_some().then_some((old, names.as_slice()));
    if report.unchanged {
        let mut c = finish(path, settings, table, sources, old.generation, tls, touched)?;
        c.changed_at = old.changed_at;
        return Ok((c, report));
    }
    Ok((finish(path, settings, table, sources, old.generation + 1, tls, touched)?, report))
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
    gone: &HashSet<String>,
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
            if gone.contains(&r.name) || replaced.contains(r.name.as_str()) {
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
    let path = &old.path;
    let parsed_at = Instant::now();
    let mut report = Report { shards: old.table.shard_count(), ..Default::default() };
    let mut errors = Vec::new();
    let mut changes: Vec<FileChange> = Vec::new();
    // Every terminating route is resolved again (its files are always parsed), with this: the
    // `[tls]` key file is read again below, also when the main file did not change.
    let tls = Arc::new(Shared::pending());
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
        let (text, stamp) = load::read(path).map_err(|e| ConfigError::one(path, "", e))?;
        if old_main.is_some_and(|o| o.stamp.hash == stamp.hash && !o.terminate) {
            // Touched, not changed (its stamp is refreshed below): not parsed again.
            (settings_of(old), old.sources.patterns.clone())
        } else {
            report.files_parsed += 1;
            let same = same_as_running(&old.table);
            let (s, routes, unchanged) =
                parse_main(&text, path, &old.sources.overrides, Some(&same), &tls, &mut errors)?;
            changes.push((path.clone(), Some(FileRoutes { path: path.clone(), stamp, routes, unchanged })));
            let patterns = s.include.clone();
            (s, patterns)
        }
    };
    super::certs::configure_tickets(&settings.tls, &tls, &mut errors);
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
        !matches!(load::read(f), Ok((_, s)) if s.hash == old_stamp.hash && !old.sources.files.get(f).is_some_and(|o| o.terminate))
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
                if let Ok((_, st)) = load::read(p) {
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
    let path = api_file(old, name)?;
    let invalid = |reason: String| ApiError::Invalid(ConfigError::one(&path, &format!("route {name:?}"), reason));
    let mut table: toml::Table = if json {
        let v: serde_json::Value = serde_json::from_str(body).map_err(|e| invalid(format!("bad JSON: {e}")))?;
        if !v.is_object() {
            return Err(invalid("the body must be one route: a JSON object".into()));
        }
        toml::Table::try_from(v).map_err(|e| invalid(format!("not a route table: {e}")))?
    } else {
        toml::from_str(body).map_err(|e| invalid(format!("bad TOML: {}", e.to_string().trim_end())))?
    };
    match table.get("name") {
        None => {
            table.insert("name".into(), toml::Value::String(name.to_owned()));
        }
        Some(toml::Value::String(n)) if n == name => {}
        Some(other) => return Err(invalid(format!("the body's name {other} is not the name in the path, {name:?}"))),
    }
    let route: RouteFile = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| invalid(e.to_string().trim_end().replace('\n', " ")))?;
    check_owner(old, name, &path)?;
    let text = toml::to_string(&IncludedFile { routes: vec![route] })
        .map_err(|e| ApiError::Io(format!("cannot write the route as TOML: {e}")))?;
    let mut errors = Vec::new();
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    // The running configuration's TLS state: the other routes keep it, so this one shares it.
    let parsed = load::parse::<IncludedFile>(&text, &base, None, &old.tls, &mut errors).map_err(invalid)?;
    if !errors.is_empty() {
        return Err(ApiError::Invalid(ConfigError {
            file: path.clone(),
            problems: errors.into_iter().map(|e| e.in_file(&path)).collect(),
        }));
    }
    let routes = parsed.routes.into_iter().flatten().collect();
    // Stamped by content only: the next reload reads the file once, finds the same content and
    // keeps it (then stamps its metadata too).
    let stamp = Stamp::of_content(text.as_bytes());
    let change = (path.clone(), Some(FileRoutes { path: path.clone(), stamp, routes, unchanged: Vec::new() }));
    let report = Report { files_parsed: 1, shards: old.table.shard_count(), ..Default::default() };
    let (new, report) =
        apply(old, settings_of(old), vec![change], report, Arc::clone(&old.tls)).map_err(ApiError::Invalid)?;
    Ok((new, report, PendingWrite { path, text: Some(text) }))
}

/// The file an API change still has to write (or remove), once the change serves: what makes it
/// survive a restart. [`PendingWrite::commit`] writes it atomically and syncs it; if that fails
/// the caller puts the previous configuration back.
#[derive(Debug)]
pub struct PendingWrite {
    path: PathBuf,
    /// `None`: remove the file.
    text: Option<String>,
}

impl PendingWrite {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes (or removes) the file and syncs it and its directory.
    pub fn commit(&self) -> Result<(), String> {
        let path = &self.path;
        match &self.text {
            Some(text) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
                }
                write_atomically(path, text.as_bytes()).map_err(|e| format!("{}: cannot write: {e}", path.display()))
            }
            None => {
                std::fs::remove_file(path).map_err(|e| format!("{}: cannot remove: {e}", path.display()))?;
                if let Some(dir) = path.parent() {
                    if let Ok(d) = std::fs::File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
                Ok(())
            }
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
    Ok((new, report, PendingWrite { path, text: None }))
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
