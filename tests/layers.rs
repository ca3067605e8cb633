//! The module floors: each module of `src/` may use only modules on lower floors (the table in
//! `src/lib.rs`'s docs and `docs/architecture.md`), and `unsafe` appears only in `src/sys/`.
//! Reads the sources as text: a `crate::X` path outside a comment is a use of `X`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Module → floor. Keep in step with src/lib.rs.
const FLOORS: &[(&str, u8)] = &[
    ("sys", 0),
    ("logs", 0),
    ("hello", 1),
    ("route", 1),
    ("pki", 1),
    ("proxy_protocol", 2),
    ("metrics", 2),
    ("relay", 3),
    ("backend", 3),
    ("access_log", 3),
    ("quic", 3),
    ("tls", 4),
    ("config", 5),
    ("conn", 6),
    ("worker", 7),
    ("admin", 7),
    ("server", 8),
    ("demo", 9),
];

/// Macros exported at the crate root (`crate::name!`), by the module that defines them.
const MACROS: &[(&str, &str)] = &[("warn_every_second", "logs"), ("debug_every_second", "logs")];

fn floor(module: &str) -> Option<u8> {
    FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

/// The `.rs` files of our crate under `dir`. A folder with its own `Cargo.toml` is another crate
/// (the vendored tokio-uring in `src/sys/vendor/tokio-uring`), whose `crate::` paths are its own: it
/// is skipped (its `unsafe` is still on the `sys` floor, where it lives).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            if !p.join("Cargo.toml").exists() {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").map(str::to_owned).unwrap_or(first);
    (name != "lib" && name != "main").then_some(name)
}

/// Code lines of a file: comments dropped (`//`, `//!`, `///`), string contents kept (cheap and
/// good enough: no module name appears in a string as `crate::name`).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")).map(|(i, l)| (i + 1, l))
}

#[test]
fn no_module_imports_upward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut unknown = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let Some(own) = floor(&module) else {
            unknown.insert(module.clone(), file.display().to_string());
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, code) in code_lines(&text) {
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + 7..];
                let mut used: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if rest[used.len()..].starts_with('!') {
                    match MACROS.iter().find(|(m, _)| *m == used) {
                        Some((_, owner)) => used = (*owner).to_owned(),
                        None => {
                            unknown.insert(format!("{used}! (add it to MACROS)"), format!("{}:{line}", file.display()));
                            continue;
                        }
                    }
                }
                if used.is_empty() {
                    wrong.push(format!(
                        "{}:{line}: write `crate::module::…` paths one module at a time (this check reads them)",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                    continue;
                }
                if used == module {
                    continue;
                }
                match floor(&used) {
                    Some(f) if f < own => {}
                    Some(f) => wrong.push(format!(
                        "{}:{line}: {module} (floor {own}) uses {used} (floor {f})",
                        file.strip_prefix(&src).unwrap().display()
                    )),
                    None => {
                        unknown.insert(used, format!("{}:{line}", file.display()));
                    }
                }
            }
        }
    }
    assert!(unknown.is_empty(), "modules missing from FLOORS (tests/layers.rs and src/lib.rs): {unknown:#?}");
    assert!(wrong.is_empty(), "imports that do not go down a floor:\n{}", wrong.join("\n"));
}

#[test]
fn unsafe_lives_only_in_sys() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in &files {
        if module_of(&src, file).as_deref() == Some("sys") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (line, code) in code_lines(&text) {
            let c = code.replace("unsafe_code", "");
            if c.contains("unsafe {") || c.contains("unsafe fn") || c.contains("unsafe impl") {
                found.push(format!("{}:{line}", file.strip_prefix(&src).unwrap().display()));
            }
        }
    }
    assert!(found.is_empty(), "unsafe outside src/sys: {found:?}");
}

#[test]
fn every_module_is_on_a_floor() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ").and_then(|r| r.strip_suffix(';')) {
            assert!(floor(m).is_some(), "module {m} of src/lib.rs has no floor in tests/layers.rs");
            assert!(lib.contains(&format!("[`{m}`]")), "module {m} is missing from the table in src/lib.rs");
        }
    }
}
