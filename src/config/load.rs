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
use crate::route::RouteId;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Pieces are cut at the first `[[route]]` line after this many bytes.
const PIECE: usize = 512 * 1024;

/// A file read as it is parsed ([`parse_file`]) is cut in smaller pieces: a piece's syntax tree
/// is many times its text, and a reload holds one per thread at a time (measured at a million
/// names: a reload's RSS rose 17 MiB over steady while it parsed 512 KiB pieces).
const STREAM_PIECE: usize = 128 * 1024;

/// Pieces each thread parses per round of [`parse_file`] (threads start once per round).
const PIECES_PER_THREAD: usize = 4;

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

/// A fast hash of file content (FNV-1a over 8-byte words, the length mixed in last;
/// collisions only cost a re-parse never being skipped wrongly when metadata changed too).
pub(crate) fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = ContentHash::default();
    h.update(bytes);
    h.finish()
}

/// [`content_hash`] over content that arrives in pieces (the same value as over the whole).
#[derive(Debug, Clone)]
pub(crate) struct ContentHash {
    h: u64,
    /// Bytes of a word not complete yet.
    carry: [u8; 8],
    carried: usize,
    len: u64,
}

impl Default for ContentHash {
    fn default() -> Self {
        Self { h: 0xcbf2_9ce4_8422_2325, carry: [0; 8], carried: 0, len: 0 }
    }
}

impl ContentHash {
    fn word(&mut self, w: [u8; 8]) {
        self.h = (self.h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(23);
    }

    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.carried > 0 {
            let n = (8 - self.carried).min(bytes.len());
            self.carry[self.carried..self.carried + n].copy_from_slice(&bytes[..n]);
            self.carried += n;
            bytes = &bytes[n..];
            if self.carried < 8 {
                return;
            }
            self.word(self.carry);
            self.carried = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(w);
        }
        let rest = chunks.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len();
    }

    pub(crate) fn finish(&self) -> u64 {
        let mut h = self.h;
        for &b in &self.carry[..self.carried] {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        (h ^ self.len).wrapping_mul(0x0000_0100_0000_01b3)
    }
}

/// Reads a whole file, with its stamp.
pub(crate) fn read(path: &Path) -> Result<(String, Stamp), String> {
    let mut stamp = stat(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    stamp.hash = content_hash(text.as_bytes());
    Ok((text, stamp))
}

/// The metadata part of a file's stamp, or why it cannot be read.
fn stat(path: &Path) -> Result<Stamp, String> {
    Stamp::of(path).ok_or_else(|| match std::fs::metadata(path) {
        Err(e) => format!("cannot read: {e}"),
        Ok(_) => "cannot read".to_owned(),
    })
}

/// A file's stamp with its content hash, read in blocks (never held whole): a reload finds out
/// whether a file whose metadata moved changed at all before it parses it.
pub(crate) fn stamp_with_hash(path: &Path) -> Result<Stamp, String> {
    use std::io::Read;
    let mut stamp = stat(path)?;
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut h = ContentHash::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    stamp.hash = h.finish();
    Ok(stamp)
}

/// Byte ranges of `text`: the head (up to the first `[[route]]` line after [`PIECE`] bytes), then
/// pieces that each start at a `[[route]]` line; with the number of such lines in each.
#[cfg(test)]
fn pieces(text: &str) -> Vec<(usize, usize, usize)> {
    let mut cut = Cutter::new(PIECE);
    let mut out = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if let Some((len, headers)) = cut.line(line.as_bytes()) {
            out.push((at, at + len, headers));
            at += len;
        }
    }
    let (len, headers) = cut.rest();
    out.push((at, at + len, headers));
    out
}

/// Where a file is cut into pieces, line by line: before a line that starts with `[[route]]`
/// once the piece has `size` bytes.
struct Cutter {
    size: usize,
    len: usize,
    headers: usize,
}

impl Cutter {
    fn new(size: usize) -> Self {
        Self { size, len: 0, headers: 0 }
    }

    /// Takes the next line; a finished piece (its length and `[[route]]` lines) when the line
    /// starts the next one.
    fn line(&mut self, line: &[u8]) -> Option<(usize, usize)> {
        let mut done = None;
        if line.starts_with(b"[[route]]") {
            if self.len >= self.size {
                done = Some((self.len, self.headers));
                self.len = 0;
                self.headers = 0;
            }
            self.headers += 1;
        }
        self.len += line.len();
        done
    }

    /// The last piece.
    fn rest(&mut self) -> (usize, usize) {
        (std::mem::take(&mut self.len), std::mem::take(&mut self.headers))
    }
}

/// For a reload: the running route that a parsed route is the same as (then only its id is
/// kept, and the parsed copy is dropped as its piece is parsed: a reload of a big file holds
/// the running table and the routes that changed, not a second table).
pub(super) type Same<'a> = Option<&'a (dyn Fn(&Route) -> Option<RouteId> + Sync)>;

/// What [`parse`] or [`parse_file`] produced (or one piece of it).
pub(super) struct Parsed<F> {
    /// The file's tables, routes taken out.
    pub(super) file: F,
    /// One per `[[route]]`, in order: `None` for a route with problems (they are in `errors`).
    pub(super) routes: Vec<Option<Route>>,
    /// The running routes that `same` found unchanged (they are not in `routes`).
    pub(super) unchanged: Vec<RouteId>,
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

/// The routes of one piece, resolved: the piece's number of the first route is `first` (for the
/// keys of routes without a name).
fn parse_piece<F: HasRoutes>(
    first: usize,
    piece: &str,
    base: &Path,
    same: Same<'_>,
    tls: &crate::tls::Shared,
) -> Result<(Parsed<F>, Vec<Located>), String> {
    let mut file: F = toml::from_str(piece).map_err(|e| toml_error(&e))?;
    let raw = file.take_routes();
    let mut errs = Vec::new();
    let mut unchanged = Vec::new();
    let mut routes: Vec<Option<Route>> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = if r.name.is_empty() { format!("route[{}]", first + i) } else { format!("route {:?}", r.name) };
        let resolved = resolve_route(r, &key, base, tls, &mut errs);
        match resolved.as_ref().and_then(|route| same.and_then(|same| same(route))) {
            Some(id) => unchanged.push(id),
            None => routes.push(resolved),
        }
    }
    Ok((Parsed { file, routes, unchanged }, errs))
}

/// The pieces' results put together in file order; `whole_file` once they cannot be (a piece that
/// does not parse, a table given in two pieces, `[[route]]` written so that the cut missed it).
struct Merged<F> {
    out: Option<Parsed<F>>,
    errors: Vec<Located>,
    syntax: Option<String>,
    whole_file: bool,
    pieces: usize,
}

impl<F: HasRoutes> Merged<F> {
    fn new() -> Self {
        Self { out: None, errors: Vec::new(), syntax: None, whole_file: false, pieces: 0 }
    }

    fn add(&mut self, first: usize, result: Result<(Parsed<F>, Vec<Located>), String>) {
        self.pieces += 1;
        let (piece, errs) = match result {
            Ok(x) => x,
            Err(e) => {
                self.whole_file = true;
                self.syntax.get_or_insert(e);
                return;
            }
        };
        if self.out.as_ref().map_or(0, |o| o.routes.len() + o.unchanged.len()) != first {
            // A `[[route]]` written differently (`[[ route ]]`): numbering would be off.
            self.whole_file = true;
        }
        match &mut self.out {
            None => self.out = Some(piece),
            Some(o) => {
                self.whole_file |= !o.file.absorb(piece.file);
                o.routes.extend(piece.routes);
                o.unchanged.extend(piece.unchanged);
            }
        }
        self.errors.extend(errs);
    }

    /// The file's routes; `None` when only a plain parse of the whole file can tell.
    fn finish(self, errors: &mut Vec<Located>) -> Option<Result<Parsed<F>, String>> {
        if self.whole_file && self.pieces > 1 {
            return None;
        }
        if let Some(e) = self.syntax {
            return Some(Err(e));
        }
        errors.extend(self.errors);
        Some(self.out.ok_or_else(|| "empty file".to_owned()))
    }
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
    let mut cut = Cutter::new(PIECE);
    let mut work: Vec<(usize, &str)> = Vec::new();
    let (mut at, mut first) = (0, 0);
    let mut ends = Vec::new();
    for line in text.split_inclusive('\n') {
        ends.extend(cut.line(line.as_bytes()));
    }
    ends.push(cut.rest());
    for (len, headers) in ends {
        work.push((first, &text[at..at + len]));
        at += len;
        first += headers;
    }
    let parsed = crate::sys::parallel_map(&work, |&(first, piece)| parse_piece::<F>(first, piece, base, same, tls));
    let mut merged = Merged::new();
    for (p, (first, _)) in parsed.into_iter().zip(&work) {
        merged.add(*first, p);
    }
    // One plain parse: TOML's own message for what the pieces could not settle.
    merged.finish(errors).unwrap_or_else(|| parse_whole(text, base, same, tls, errors))
}

/// Why [`parse_file`] failed: the file could not be read, or its syntax is wrong (TOML's message).
pub(super) enum FileError {
    Read(String),
    Syntax(String),
}

/// [`parse`] of the file at `path`, read in pieces as it is parsed: at most a few pieces
/// (one per parsing thread) are in memory at once, never the whole text (45 MB at a million
/// names), so a reload of a big file costs the routes that changed, not a copy of the file.
/// The stamp is of what was read.
pub(super) fn parse_file<F: HasRoutes>(
    path: &Path,
    base: &Path,
    same: Same<'_>,
    tls: &crate::tls::Shared,
    errors: &mut Vec<Located>,
) -> Result<(Parsed<F>, Stamp), FileError> {
    use std::io::BufRead;
    let mut stamp = stat(path).map_err(FileError::Read)?;
    let f = std::fs::File::open(path).map_err(|e| FileError::Read(format!("cannot read: {e}")))?;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, f);
    let threads = crate::sys::parallelism();
    let mut hash = ContentHash::default();
    let mut cut = Cutter::new(STREAM_PIECE);
    let mut merged = Merged::new();
    // Pieces read and not parsed yet: (number of the first route, text).
    let mut batch: Vec<(usize, String)> = Vec::with_capacity(threads * PIECES_PER_THREAD);
    let mut piece: Vec<u8> = Vec::with_capacity(STREAM_PIECE + 16 * 1024);
    let mut line: Vec<u8> = Vec::new();
    let mut first = 0;
    let bad_utf8 = || FileError::Read("cannot read: stream did not contain valid UTF-8".to_owned());
    let parse_batch = |batch: &mut Vec<(usize, String)>, merged: &mut Merged<F>| {
        let parsed = crate::sys::parallel_map(batch, |(first, piece)| parse_piece::<F>(*first, piece, base, same, tls));
        for (p, (first, _)) in parsed.into_iter().zip(batch.iter()) {
            merged.add(*first, p);
        }
        batch.clear();
    };
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| FileError::Read(format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        hash.update(&line);
        if let Some((_, headers)) = cut.line(&line) {
            let text = String::from_utf8(std::mem::take(&mut piece)).map_err(|_| bad_utf8())?;
            batch.push((first, text));
            first += headers;
            piece.reserve(STREAM_PIECE + 16 * 1024);
            if batch.len() >= threads * PIECES_PER_THREAD {
                parse_batch(&mut batch, &mut merged);
            }
        }
        piece.extend_from_slice(&line);
    }
    let text = String::from_utf8(std::mem::take(&mut piece)).map_err(|_| bad_utf8())?;
    batch.push((first, text));
    parse_batch(&mut batch, &mut merged);
    stamp.hash = hash.finish();
    match merged.finish(errors) {
        Some(Ok(p)) => Ok((p, stamp)),
        Some(Err(e)) => Err(FileError::Syntax(e)),
        None => {
            // TOML's own message, with the line and column in the whole file.
            let (text, stamp) = read(path).map_err(FileError::Read)?;
            parse_whole(&text, base, same, tls, errors).map(|p| (p, stamp)).map_err(FileError::Syntax)
        }
    }
}

/// The TOML error of `text` in one line per problem (the line and column are in it).
fn toml_error(e: &toml::de::Error) -> String {
    e.to_string().trim_end().to_owned()
}

/// [`parse`] without pieces.
fn parse_whole<F: HasRoutes>(
    text: &str,
    base: &Path,
    same: Same<'_>,
    tls: &crate::tls::Shared,
    errors: &mut Vec<Located>,
) -> Result<Parsed<F>, String> {
    let (piece, errs) = parse_piece::<F>(0, text, base, same, tls)?;
    errors.extend(errs);
    Ok(piece)
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
    fn the_content_hash_of_pieces_is_the_hash_of_the_whole() {
        let text: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).map(|b| b ^ 0x5a).collect();
        let whole = content_hash(&text);
        for step in [1, 3, 7, 8, 9, 4096, 5000] {
            let mut h = ContentHash::default();
            for c in text.chunks(step) {
                h.update(c);
            }
            assert_eq!(h.finish(), whole, "in pieces of {step}");
        }
        assert_ne!(content_hash(b"a"), content_hash(b"a\0"));
    }

    /// A main file of many pieces, with a route that has a problem.
    fn big_file(routes: usize, bad: usize) -> String {
        let mut text = String::from("[[listener]]\naddress = \"127.0.0.1:1\"\n\n");
        for i in 0..routes {
            let action = if i == bad { "bounce" } else { "passthrough" };
            text += &format!(
                "[[route]]\nname = \"r{i}\"\nsni = [\"a{i}.example.com\", \"*.b{i}.example.com\"]\naction = \"{action}\"\nbackends = [\"127.0.0.1:9\"]\n\n"
            );
        }
        text
    }

    #[test]
    fn a_file_parsed_as_it_is_read_gives_what_its_text_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        let text = big_file(20_000, 12_345);
        std::fs::write(&path, &text).unwrap();
        let tls = crate::tls::Shared::default();
        let (mut e1, mut e2) = (Vec::new(), Vec::new());
        // Every third route "the same as a running one" (a reload): kept by id, in file order.
        let same = |r: &Route| r.name[1..].parse::<u32>().ok().filter(|i| i % 3 == 0).map(RouteId);
        let same: Same<'_> = Some(&same);
        let a = parse::<FileConfig>(&text, dir.path(), same, &tls, &mut e1).unwrap_or_else(|e| panic!("{e}"));
        let (b, stamp) = match parse_file::<FileConfig>(&path, dir.path(), same, &tls, &mut e2) {
            Ok(x) => x,
            Err(FileError::Read(e) | FileError::Syntax(e)) => panic!("{e}"),
        };
        assert!(pieces(&text).len() > 4);
        assert_eq!(stamp.hash, content_hash(text.as_bytes()));
        let names =
            |p: &Parsed<FileConfig>| p.routes.iter().map(|r| r.as_ref().map(|r| r.name.clone())).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b));
        assert_eq!(a.unchanged, b.unchanged);
        assert_eq!(b.unchanged.len(), 6_666, "every third, less the route with a problem");
        assert!(b.unchanged.windows(2).all(|w| w[0].0 < w[1].0), "in file order");
        assert_eq!(b.routes.len() + b.unchanged.len(), 20_000);
        assert_eq!(b.routes.iter().filter(|r| r.is_none()).count(), 1);
        let msgs = |e: &[Located]| e.iter().map(|l| format!("{}: {}", l.key, l.reason)).collect::<Vec<_>>();
        assert_eq!(msgs(&e1), msgs(&e2));
        assert_eq!(e2.len(), 1);
        assert!(msgs(&e2)[0].contains("route \"r12345\""), "{:?}", msgs(&e2));
        assert_eq!(b.file.listeners.len(), 1);
        // A syntax error far into the file: TOML's message with the line in the whole file.
        let broken = text.replacen("name = \"r15000\"", "name = \"r15000", 1);
        std::fs::write(&path, &broken).unwrap();
        let whole = parse::<FileConfig>(&broken, dir.path(), None, &tls, &mut Vec::new()).err().unwrap();
        let streamed = match parse_file::<FileConfig>(&path, dir.path(), None, &tls, &mut Vec::new()) {
            Err(FileError::Syntax(e)) => e,
            Err(FileError::Read(e)) => panic!("{e}"),
            Ok(_) => panic!("parsed"),
        };
        assert_eq!(whole, streamed);
        let line = broken.lines().position(|l| l == "name = \"r15000").unwrap() + 1;
        assert!(streamed.contains(&format!("line {line}")), "{streamed}");
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
