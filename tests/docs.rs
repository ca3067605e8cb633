//! The reference docs follow the code. Each test lists what the program itself reports and fails
//! when any of it has no row in `docs/configuration.md` or `docs/metrics.md`, naming what is
//! missing and the table to add its row to:
//!
//! - every subcommand and every flag that `sni-dispatch [COMMAND] --help` shows;
//! - every key the configuration parser accepts, table by table (read from the parser's own
//!   "unknown field, expected one of …" answer, so a key added in code is found without a list);
//! - every endpoint, metric family (type and labels), label value, `/stats` counter and
//!   access-log field that a running server produces, and every drop reason (`DropReason::ALL`).
mod common;

use common::*;
use sni_dispatch::config::{Config, RuntimeOverrides};
use sni_dispatch::metrics::DropReason;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// A Markdown file of `docs/`, read as headings and table rows.
struct Doc {
    name: String,
    text: String,
}

impl Doc {
    fn load(name: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { name: name.to_owned(), text }
    }

    /// The first heading that contains `needle`, and the text under it up to the next heading of
    /// the same or a higher level.
    fn section(&self, needle: &str) -> Option<(&str, String)> {
        let lines: Vec<&str> = self.text.lines().collect();
        let level = |l: &str| l.starts_with('#').then(|| l.chars().take_while(|c| *c == '#').count());
        let start = lines.iter().position(|l| level(l).is_some() && l.contains(needle))?;
        let own = level(lines[start])?;
        let end = lines[start + 1..]
            .iter()
            .position(|l| level(l).is_some_and(|n| n <= own))
            .map_or(lines.len(), |i| start + 1 + i);
        Some((lines[start], lines[start + 1..end].join("\n")))
    }
}

/// The cells of every table row in `text` (separator rows skipped).
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| ---"))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect())
        .collect()
}

/// The row whose first cell names `item` in code: `` `item` `` or `` `item VALUE` ``.
fn row_for(text: &str, item: &str) -> Option<Vec<String>> {
    let exact = format!("`{item}`");
    let with_value = format!("`{item} ");
    rows(text).into_iter().find(|r| r.first().is_some_and(|c| c.contains(&exact) || c.contains(&with_value)))
}

/// Fails with every line of `missing`, if any.
fn report(missing: &[String]) {
    assert!(missing.is_empty(), "the docs lack {} item(s):\n- {}\n", missing.len(), missing.join("\n- "));
}

// ---- commands and flags -------------------------------------------------------------------

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sni-dispatch")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "sni-dispatch {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands under "Commands:" of the top-level help, without clap's own `help`.
fn subcommands(top: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in top.lines() {
        if line.starts_with("Commands:") {
            inside = true;
        } else if inside && line.trim().is_empty() {
            break;
        } else if inside && line.starts_with("  ") && !line.starts_with("   ") {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name != "help" {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// The long flags of a help text: `--name` in the option column of each option line.
fn long_flags(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split("  ").next())
        .flat_map(|spec| spec.split([' ', ',']).filter(|w| w.starts_with("--") && w.len() > 2).map(str::to_owned))
        .collect()
}

#[test]
fn every_command_and_flag_of_help_is_documented() {
    let doc = Doc::load("docs/configuration.md");
    let top = help(&[]);
    let commands = subcommands(&top);
    assert!(commands.len() >= 3, "found no subcommands in `sni-dispatch --help`:\n{top}");
    let mut missing = Vec::new();
    let mut helps = vec![(String::new(), top.clone())];
    for c in &commands {
        if doc.section(&format!("`sni-dispatch {c}`")).is_none() {
            missing.push(format!(
                "{}: the command `sni-dispatch {c}` (in `sni-dispatch --help`) has no heading: add \
                 \"### `sni-dispatch {c}`\" with a table of its flags, and a row to the table under \"## Commands\"",
                doc.name
            ));
        }
        helps.push((format!("{c} "), help(&[c])));
    }
    let mut seen = BTreeSet::new();
    for (cmd, text) in &helps {
        for flag in long_flags(text) {
            if seen.insert(flag.clone()) && row_for(&doc.text, &flag).is_none() {
                let table = match cmd.trim() {
                    "" => "\"### Options of every command\"".to_owned(),
                    c => format!(
                        "\"### `sni-dispatch {c}`\" (or under \"### Tuning flags\" if `run` and `demo` share it)"
                    ),
                };
                missing.push(format!(
                    "{}: the flag `{flag}` (in `sni-dispatch {cmd}--help`) has no row: add \"| `{flag} VALUE` | default | meaning |\" \
                     to the table under {table}",
                    doc.name
                ));
            }
        }
    }
    assert!(seen.contains("--config") && seen.contains("--workers"), "no flags parsed from --help: {seen:?}");
    report(&missing);
}

// ---- configuration keys ---------------------------------------------------------------------

/// The parser's error for `text`, or `None` if it loads.
fn parse_error(text: &str) -> Option<String> {
    Config::from_str(text, Path::new("probe.toml"), &RuntimeOverrides::default()).err().map(|e| e.to_string())
}

const PROBE: &str = "sni_dispatch_docs_probe";

/// The fields serde lists after "unknown field `PROBE`, expected …" (`deny_unknown_fields`).
fn expected_fields(error: &str) -> Option<Vec<String>> {
    let (_, rest) = error.split_once(&format!("unknown field `{PROBE}`, expected"))?;
    let list = rest.lines().next().unwrap_or_default();
    Some(list.split('`').skip(1).step_by(2).map(str::to_owned).collect())
}

/// Every table of the file and its keys, as the parser reports them: `(heading, keys)` with
/// `heading` `[name]` or `[[name]]`; an error line for a key whose keys cannot be listed.
fn config_tables() -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let mut top_level = Vec::new();
    let top = parse_error(&format!("{PROBE} = 1\n")).and_then(|e| expected_fields(&e));
    let top = top.expect("the configuration no longer rejects an unknown top-level key (deny_unknown_fields)");
    let mut tables = Vec::new();
    let mut unlisted = Vec::new();
    for name in top {
        let as_table = parse_error(&format!("[{name}]\n{PROBE} = 1\n")).unwrap_or_default();
        let as_array = parse_error(&format!("[[{name}]]\n{PROBE} = 1\n")).unwrap_or_default();
        let plain_key = |answer: &str| answer.contains("invalid type: map, expected");
        match (expected_fields(&as_table), expected_fields(&as_array)) {
            (Some(keys), _) => tables.push((format!("[{name}]"), keys)),
            (None, Some(keys)) => tables.push((format!("[[{name}]]"), keys)),
            // A plain top-level key (`include = [...]`, `watch = true`): its row is in the
            // table of top-level keys.
            (None, None) if plain_key(&as_table) => top_level.push(name),
            (None, None) => unlisted.push(format!(
                "the keys of the configuration's `{name}` cannot be listed: as a table it answered {as_table:?}, \
                 as an array of tables {as_array:?}; give its struct #[serde(deny_unknown_fields)] (or teach tests/docs.rs \
                 this kind of value) and document it in docs/configuration.md"
            )),
        }
    }
    if !top_level.is_empty() {
        tables.push(("top-level keys".to_owned(), top_level));
    }
    (tables, unlisted)
}

#[test]
fn every_configuration_key_is_documented() {
    let doc = Doc::load("docs/configuration.md");
    let (tables, mut missing) = config_tables();
    let names: Vec<&str> = tables.iter().map(|(t, _)| t.as_str()).collect();
    for t in ["[runtime]", "[admin]", "[[listener]]", "[fallback]", "[[route]]"] {
        assert!(names.contains(&t), "the parser no longer reports the table {t}: {names:?}");
    }
    for (table, keys) in &tables {
        let heading = if table == "top-level keys" { "Top-level keys".to_owned() } else { format!("`{table}`") };
        let Some((_, section)) = doc.section(&heading) else {
            missing.push(format!(
                "{}: the configuration table {table} has no heading: add \"### `{table}`\" with a row per key ({})",
                doc.name,
                keys.join(", ")
            ));
            continue;
        };
        for key in keys {
            if row_for(&section, key).is_none() {
                missing.push(format!(
                    "{}: the key `{key}` of {table} (the parser accepts it) has no row: add \"| `{key}` | type | default | meaning |\" \
                     to the table under \"### `{table}`\"",
                    doc.name
                ));
            }
        }
    }
    report(&missing);
}

// ---- what a running server serves -------------------------------------------------------------

/// A server with an admin endpoint and an access log, after one dropped connection: its
/// `/metrics`, `/stats`, the body of a 404, and the access log's lines.
struct Served {
    metrics: String,
    stats: serde_json::Value,
    not_found: String,
    access_log: Vec<serde_json::Map<String, serde_json::Value>>,
}

fn serve_once() -> Served {
    let b = backend(Mode::Echo);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = format!(
        "{RUNTIME}[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"r\"\nsni = [\"a.example\"]\naction = \"passthrough\"\nbackends = [\"{}\"]\n",
        b.addr
    );
    let overrides = RuntimeOverrides { access_log: Some(log.clone()), ..Default::default() };
    let (server, _f) = start(&toml, &overrides);
    let admin = server.admin_addr().expect("admin endpoint");
    expect_dropped(server.local_addrs()[0], b"not a ClientHello");
    wait_metrics(&server, |m| m.dropped_total() == 1 && m.open == 0);
    let get = |path: &str| http_raw(admin, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let (status, _, metrics) = get("/metrics");
    assert_eq!(status, 200);
    let (status, _, stats) = get("/stats");
    assert_eq!(status, 200);
    let (status, _, not_found) = get("/sni-dispatch-docs-probe");
    assert_eq!(status, 404);
    assert!(server.shutdown());
    let lines = std::fs::read_to_string(&log).unwrap();
    let access_log =
        lines.lines().map(|l| serde_json::from_str(l).expect("an access-log line is a JSON object")).collect();
    Served { metrics, stats: serde_json::from_str(&stats).expect("/stats is JSON"), not_found, access_log }
}

/// Families of a Prometheus text exposition: name → (type, label names, label name → values).
type Families = BTreeMap<String, (String, BTreeSet<String>, BTreeMap<String, BTreeSet<String>>)>;

fn families(text: &str) -> Families {
    let mut fams = Families::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            fams.insert(name.to_owned(), (kind.to_owned(), BTreeSet::new(), BTreeMap::new()));
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let sample = line.split([' ', '{']).next().unwrap();
        let family = [
            sample,
            sample.trim_end_matches("_sum"),
            sample.trim_end_matches("_count"),
            sample.trim_end_matches("_bucket"),
        ]
        .into_iter()
        .find(|f| fams.contains_key(*f))
        .unwrap_or_else(|| panic!("sample {sample} of no # TYPE family"));
        let entry = fams.get_mut(family).unwrap();
        if let Some((labels, _)) = line.split_once('{').and_then(|(_, r)| r.split_once('}')) {
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap();
                entry.1.insert(k.to_owned());
                entry.2.entry(k.to_owned()).or_default().insert(v.trim_matches('"').to_owned());
            }
        }
    }
    fams
}

/// Whether the section under the heading containing `heading` has a row for `item`; if not, says
/// in `missing` that `what` lacks its row, and which row to add there.
fn need(doc: &Doc, missing: &mut Vec<String>, heading: &str, item: &str, what: &str, row: &str) -> bool {
    let found = doc.section(heading).is_some_and(|(_, s)| row_for(&s, item).is_some());
    if !found {
        missing.push(format!(
            "{}: {what} `{item}` has no row: add \"{row}\" to the table under the heading {heading}",
            doc.name
        ));
    }
    found
}

#[test]
fn every_endpoint_metric_label_counter_and_log_field_is_documented() {
    let doc = Doc::load("docs/metrics.md");
    let served = serve_once();
    let mut missing = Vec::new();
    let need = |missing: &mut Vec<String>, heading: &str, item: &str, what: &str, row: &str| {
        need(&doc, missing, heading, item, what, row)
    };

    // Endpoints, as the 404 lists them.
    let endpoints: Vec<&str> =
        served.not_found.split([' ', ',', '\n']).filter(|w| w.starts_with('/') && w.len() > 1).collect();
    assert!(
        !endpoints.is_empty(),
        "the admin 404 no longer lists the endpoints ({:?}): update tests/docs.rs",
        served.not_found
    );
    for e in &endpoints {
        need(&mut missing, "## Endpoints", e, "the endpoint", &format!("| `{e}` | what it answers |"));
    }

    // Metric families: name, type, labels; label values.
    let fams = families(&served.metrics);
    assert!(fams.len() > 20, "few families in /metrics:\n{}", served.metrics);
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, (kind, labels, by_label)) in &fams {
        let row = format!("| `{name}` | {kind} | labels | meaning |");
        if !need(&mut missing, "## Metrics", name, "the metric", &row) {
            continue;
        }
        let (_, section) = doc.section("## Metrics").unwrap();
        let cells = row_for(&section, name).unwrap();
        if cells.get(1).map(String::as_str) != Some(kind.as_str()) {
            missing.push(format!("{}: the metric `{name}` is a {kind}, its row says {:?}", doc.name, cells.get(1)));
        }
        for l in labels {
            if !cells.get(2).is_some_and(|c| c.contains(&format!("`{l}`"))) {
                missing.push(format!(
                    "{}: the metric `{name}` has the label `{l}`: name it in its row's labels cell",
                    doc.name
                ));
            }
        }
        for (l, vs) in by_label {
            values.entry(l.clone()).or_default().extend(vs.iter().cloned());
        }
    }
    for (label, vs) in &values {
        // Values that the configuration or the histogram buckets give, not the program.
        if matches!(label.as_str(), "worker" | "quantile" | "le" | "backend" | "route") {
            continue;
        }
        for v in vs {
            need(
                &mut missing,
                &format!("### `{label}`"),
                v,
                &format!("the `{label}` label value"),
                &format!("| `{v}` | meaning |"),
            );
        }
    }
    for r in DropReason::ALL {
        need(&mut missing, "### `reason`", r.as_str(), "the drop reason", &format!("| `{}` | meaning |", r.as_str()));
    }

    // /stats: its top-level keys and the counters.
    let top = served.stats.as_object().expect("/stats is an object");
    for key in top.keys() {
        need(&mut missing, "## `/stats`", key, "the /stats key", &format!("| `{key}` | meaning |"));
    }
    let counters = served.stats["merged"]["counters"].as_object().expect("/stats merged.counters");
    for key in counters.keys() {
        need(&mut missing, "## `/stats`", key, "the /stats counter", &format!("| `{key}` | meaning |"));
    }

    // The access log: one line (the dropped connection), every field present.
    assert_eq!(served.access_log.len(), 1, "{:?}", served.access_log);
    for field in served.access_log[0].keys() {
        need(&mut missing, "## Access log", field, "the access-log field", &format!("| `{field}` | meaning |"));
    }
    report(&missing);
}

// ---- links --------------------------------------------------------------------------------

/// The Markdown files of the repository (not `target/` nor hidden directories).
fn markdown_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces as dashes.
fn anchor(heading: &str) -> String {
    let text = heading.trim_start_matches('#').trim().to_lowercase();
    text.chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (a repeated heading gets `-1`, `-2`, … as on GitHub).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let a = anchor(line);
        let n = seen.entry(a.clone()).or_insert(0);
        out.insert(if *n == 0 { a.clone() } else { format!("{a}-{n}") });
        *n += 1;
    }
    out
}

/// A clone of the repository is all a reader has: every relative link of every Markdown file
/// points at a file inside it (and at a heading that exists), and none into `../shared`.
#[test]
fn docs_stand_alone_in_a_clone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).canonicalize().unwrap();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.len() >= 5, "{files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        if text.contains("shared/notes") || text.contains("shared/spec") || text.contains("../shared") {
            broken.push(format!("{shown}: refers to the workspace's shared/ directory, which a clone lacks: bring what the reader needs into the repository"));
        }
        for (_, rest) in text.match_indices("](").map(|(i, _)| text.split_at(i + 2)) {
            let target = rest.split(')').next().unwrap_or_default();
            if target.contains("://") || target.starts_with("mailto:") || target.contains(char::is_whitespace) {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
            let linked = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            match linked.canonicalize() {
                Ok(p) if !p.starts_with(&root) => {
                    broken.push(format!("{shown}: `{target}` points outside the repository"))
                }
                Ok(p) if !fragment.is_empty() && p.extension().is_some_and(|e| e == "md") => {
                    let there = std::fs::read_to_string(&p).unwrap();
                    if !anchors(&there).contains(fragment) {
                        broken.push(format!("{shown}: `{target}`: no heading with the anchor #{fragment}"));
                    }
                }
                Ok(_) => {}
                Err(_) => broken.push(format!("{shown}: `{target}` does not exist")),
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n- {}\n", broken.join("\n- "));
}
