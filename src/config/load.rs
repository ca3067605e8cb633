//! Reading configuration files fast and in bounded memory: a large file is cut at its
//! `[[route]]` headers into pieces of about [`PIECE`] bytes, the pieces are parsed and their
//! routes resolved in parallel (on the calling thread and helpers with the same CPU placement,
//! which the control plane keeps off the workers' CPUs), and each piece's syntax tree is dropped
//! as soon as its routes are resolved, so a 45 MB file never exists as one tree.
//!
//! Cutting is safe: a piece begins at a line that starts with `[[route]]`, and if a cut fell
//! inside a multi-line string, the piece before it would end inside that string and fail to
//! parse; any piece that fails, or tables given in two pieces, send the whole file through one
//! plain parse, whose errors (with line and column) are what the operator sees.
//!
//! Included files (`include = ["routes.d/*.toml"]`) are found here too, with the stamp
//! ([`Stamp`]: device, inode, size, times, content hash) that lets a reload skip a file that did
//! not change.

use super::file::{FileConfig, IncludedFile, RouteFile};
use super::routes::resolve_route;
use super::{Located, Route};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Pieces are cut at the first `[[route]]` line after this many bytes.
const PIECE: usize = 512 * 1024;

/// What a file's content and metadata were when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    /// Of the content (0 when not read).
    pub(crate) hash: u64,
}

impl Stamp {
    /// The metadata part, from `stat` (following symlinks, as a ConfigMap's files are).
    pub(crate) fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            hash: 0,
        })
    }

    /// A stamp of content only (its metadata unknown: the first reload looks at the file).
    pub(crate) fn of_content(bytes: &[u8]) -> Self {
        Self { hash: content_hash(bytes), ..Self::default() }
    }

    /// Whether the metadata says the file is the one stamped (same inode, size and times).
    pub(crate) fn same_file(&self, other: &Self) -> bool {
        Self { hash: 0, ..*self } == Self { hash: 0, ..*other }
    }
}

/// A fast hash of file content (FNV-1a over 8-byte words; collisions only cost a re-parse
/// never being skipped wrongly when metadata changed too).
pub(crate) fn content_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(23);
    }
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Reads a file whole, with its stamp.
pub(crate) fn read(path: &Path) -> Result<(String, Stamp), String> {
    let mut stamp = Stamp::of(path).ok_or_else(|| match std::fs::metadata(path) {
        Err(e) => format!("cannot read: {e}"),
        Ok(_) => "cannot read".to_owned(),
    })?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    stamp.hash = content_hash(text.as_bytes());
    Ok((text, stamp))
}

/// Byte ranges of `text`: the head (up to the first `[[route]]` line after [`PIECE`] bytes), then
/// pieces that each start at a `[[route]]` line; with the number of such lines in each.
fn pieces(text: &str) -> Vec<(usize, usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut headers) = (0, 0);
    let mut at = 0;
    while at < b.len() {
        let line_end = b[at..].iter().position(|&c| c == b'\n').map_or(b.len(), |i| at + i + 1);
        if b[at..line_end].starts_with(b"[[route]]") {
            if at - start >= PIECE {
                out.push((start, at, headers));
                start = at;
                headers = 0;
            }
            headers += 1;
        }
        at = line_end;
    }
    out.push((start, b.len(), headers));
    out
}

/// One parsed piece: its syntax (routes removed) and its routes, resolved.
struct Piece<F> {
    file: F,
    routes: Vec<Option<Route>>,
    unchanged: Vec<String>,
}

/// For a reload: whether a parsed route is the same as the running one of its name (then only
/// its name is kept, and the parsed copy is dropped as its piece is parsed: a reload of a big
/// file holds the running table and the routes that changed, not a second table).
pub(super) type Same<'a> = Option<&'a (dyn Fn(&Route) -> bool + Sync)>;

/// What [`parse_main`] or [`parse_included`] produced.
pub(super) struct Parsed<F> {
    /// The file's tables, routes taken out.
    pub(super) file: F,
    /// One per `[[route]]`, in order: `None` for a route with problems (they are in `errors`).
    pub(super) routes: Vec<Option<Route>>,
    /// The names of the routes that `same` said are unchanged (they are not in `routes`).
    pub(super) unchanged: Vec<String>,
}

/// A file's syntax whose `[[route]]` tables can be taken out.
pub(super) trait HasRoutes: DeserializeOwned + Default + Send {
    fn take_routes(&mut self) -> Vec<RouteFile>;
    /// Adds a later piece's tables; false if a table is given twice.
    fn absorb(&mut self, later: Self) -> bool;
}

impl HasRoutes for FileConfig {
    fn take_routes(&mut self) -> Vec<RouteFile> {
        std::mem::take(&mut self.routes)
    }

    fn absorb(&mut self, later: Self) -> bool {
        fn once<T>(a: &mut Option<T>, b: Option<T>) -> bool {
            match (a.is_some(), b) {
                (true, Some(_)) => false,
                (_, Some(v)) => {
                    *a = Some(v);
                    true
                }
                (_, None) => true,
            }
        }
        let ok = once(&mut self.include, later.include)
            & once(&mut self.watch, later.watch)
            & once(&mut self.watch_debounce_ms, later.watch_debounce_ms)
            & once(&mut self.runtime, later.runtime)
            & once(&mut self.admin, later.admin)
            & once(&mut self.tls, later.tls)
            & once(&mut self.fallback, later.fallback);
        self.listeners.extend(later.listeners);
        ok
    }
}

impl HasRoutes for IncludedFile {
    fn take_routes(&mut self) -> Vec<RouteFile> {
        std::mem::take(&mut self.routes)
    }

    fn absorb(&mut self, _: Self) -> bool {
        true
    }
}

/// The TOML error of `text` in one line per problem (the line and column are in it).
fn toml_error(e: &toml::de::Error) -> String {
    e.to_string().trim_end().to_owned()
}

/// Parses `text` (the file `path`, relative paths anchored at `base`), resolving each route as
/// its piece is parsed. Syntax errors come back as `Err`; problems of routes go to `errors`
/// (keyed `route "name".field`, `route[i]` for a route without a name).
pub(super) fn parse<F: HasRoutes>(
    text: &str,
    base: &Path,
    same: Same<'_>,
    tls: &crate::tls::Shared,
    errors: &mut Vec<Located>,
) -> Result<Parsed<F>, String> {
    let ranges = pieces(text);
    let mut firsts = Vec::with_capacity(ranges.len());
    let mut n = 0;
    for &(_, _, headers) in &ranges {
        firsts.push(n);
        n += headers;
    }
    let work: Vec<(usize, &str)> =
        ranges.iter().zip(&firsts).map(|(&(a, b, _), &first)| (first, &text[a..b])).collect();
    let parsed = crate::sys::parallel_map(&work, |&(first, piece)| {
        let mut file: F = toml::from_str(piece).map_err(|e| toml_error(&e))?;
        let raw = file.take_routes();
        let mut errs = Vec::new();
        let mut unchanged = Vec::new();
        let mut routes: Vec<Option<Route>> = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let key = if r.name.is_empty() { format!("route[{}]", first + i) } else { format!("route {:?}", r.name) };
            match resolve_route(r, &key, base, tls, &mut errs) {
                Some(route) if same.is_some_and(|same| same(&route)) => unchanged.push(route.name),
                resolved => routes.push(resolved),
            }
        }
        Ok::<_, String>((Piece { file, routes, unchanged }, errs))
    });
    let mut out: Option<Parsed<F>> = None;
    let mut whole_file = false;
    let mut route_errors = Vec::new();
    let mut syntax = None;
    for (p, (first, _)) in parsed.into_iter().zip(&work) {
        let (piece, errs) = match p {
            Ok(x) => x,
            Err(e) => {
                whole_file = true;
                syntax.get_or_insert(e);
                continue;
            }
        };
        if out.as_ref().map_or(0, |o| o.routes.len() + o.unchanged.len()) != *first {
            // A `[[route]]` written differently (`[[ route ]]`): numbering would be off.
            whole_file = true;
        }
        match &mut out {
            None => out = Some(Parsed { file: piece.file, routes: piece.routes, unchanged: piece.unchanged }),
            Some(o) => {
                whole_file |= !o.file.absorb(piece.file);
                o.routes.extend(piece.routes);
                o.unchanged.extend(piece.unchanged);
            }
        }
        route_errors.extend(errs);
    }
    if whole_file && work.len() > 1 {
        // One plain parse: TOML's own message for what the pieces could not settle.
        return parse_whole(text, base, same, tls, errors);
    }
    if let Some(e) = syntax {
        return Err(e);
    }
    errors.extend(route_errors);
    out.ok_or_else(|| "empty file".to_owned())
}

/// [`parse`] without pieces.
fn parse_whole<F: HasRoutes>(
    text: &str,
    base: &Path,
    same: Same<'_>,
    tls: &crate::tls::Shared,
    errors: &mut Vec<Located>,
) -> Result<Parsed<F>, String> {
    let mut file: F = toml::from_str(text).map_err(|e| toml_error(&e))?;
    let raw = file.take_routes();
    let mut unchanged = Vec::new();
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = if r.name.is_empty() { format!("route[{i}]") } else { format!("route {:?}", r.name) };
        match resolve_route(r, &key, base, tls, errors) {
            Some(route) if same.is_some_and(|same| same(&route)) => unchanged.push(route.name),
            resolved => routes.push(resolved),
        }
    }
    Ok(Parsed { file, routes, unchanged })
}

/// The files an `include` entry names, sorted: a path, or a directory and a file pattern with
/// `*` and `?` (`routes.d/*.toml`). Hidden files (a leading `.`, as a ConfigMap's `..data` and
/// editors' temporary files) never match a pattern. A plain path must exist; a pattern may
/// match nothing.
pub(crate) fn expand(pattern: &str, base: &Path) -> Result<Vec<PathBuf>, String> {
    let path = base.join(pattern);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    if !name.contains(['*', '?']) {
        if path.parent().and_then(|p| p.to_str()).is_some_and(|p| p.contains(['*', '?'])) {
            return Err(format!("{pattern:?}: a pattern may have '*' and '?' only in its last part"));
        }
        return match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(vec![path]),
            Ok(_) => Err(format!("{}: not a file", path.display())),
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.to_str().is_some_and(|p| p.contains(['*', '?'])) {
        return Err(format!("{pattern:?}: a pattern may have '*' and '?' only in its last part"));
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        // A directory that does not exist (yet) holds no file: `api_dir` before the first PUT,
        // a ConfigMap not mounted yet. The watcher sees it appear.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if file.starts_with('.') || !glob(name.as_bytes(), file.as_bytes()) {
            continue;
        }
        let p = dir.join(file);
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// `*` (any run) and `?` (one byte) matching.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"*.toml", b"a.toml"));
        assert!(glob(b"*.toml", b".toml"));
        assert!(!glob(b"*.toml", b"a.toml.tmp"));
        assert!(glob(b"r?-*.toml", b"r1-x.toml"));
        assert!(!glob(b"r?-*.toml", b"r12-x.toml"));
        assert!(glob(b"*", b"anything"));
    }

    #[test]
    fn pieces_start_at_route_headers() {
        let route = "[[route]]\nname = \"x\"\naction = \"passthrough\"\nbackends = [\"127.0.0.1:1\"]\n";
        let text = format!("[[listener]]\naddress = \"127.0.0.1:1\"\n{}", route.repeat(30_000));
        let p = pieces(&text);
        assert!(p.len() > 2, "{}", p.len());
        let mut n = 0;
        for (i, &(a, b, h)) in p.iter().enumerate() {
            if i > 0 {
                assert!(text[a..b].starts_with("[[route]]"));
            }
            n += h;
        }
        assert_eq!(n, 30_000);
        assert_eq!(p.last().unwrap().1, text.len());
    }
}
