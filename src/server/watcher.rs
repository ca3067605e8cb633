//! The file watcher (`watch = true`): the configuration's directories followed with inotify. An event on a file in
//! them (written and closed, created, renamed in or out, removed; the `..data` symlink swap of a
//! Kubernetes ConfigMap volume; the rename of consul-template and confd) starts a reload once
//! the directory has been quiet for `watch_debounce_ms`, so a burst of writes is one reload. A
//! half-written or broken file fails that reload (logged, the running table kept); the write
//! that completes it is another event, and the next reload serves it.

use super::control::Submitter;
use super::Shared;
use crate::sys::inotify::{Event, Inotify};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) struct Watcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Watcher {
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

/// Starts the watcher thread (it follows `watch` as each configuration says: off, it ignores
/// events and holds no watch).
pub(crate) fn start(shared: Arc<Shared>, control: Submitter) -> Option<Watcher> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("sni-watch".into())
        .spawn(move || {
            crate::sys::place_control_thread(&shared.worker_cpus);
            run(&shared, &control, &flag);
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot start the file watcher"))
        .ok()?;
    Some(Watcher { stop, thread })
}

/// Whether an event on `name` can matter: hidden files (editors' and the API's temporary
/// files) do not, except the ConfigMap's `..data` link.
fn relevant(e: &Event) -> bool {
    if e.overflowed() {
        return true;
    }
    match e.name.as_deref().and_then(|n| n.to_str()) {
        Some(n) => !n.starts_with('.') || n == "..data",
        None => true,
    }
}

fn run(shared: &Shared, control: &Submitter, stop: &AtomicBool) {
    let ino = match Inotify::new() {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "file watcher unavailable (inotify)");
            shared.registry.control(|c| c.counters.watch_errors += 1);
            return;
        }
    };
    let mut watched: BTreeMap<PathBuf, i32> = BTreeMap::new();
    let mut generation = 0;
    let mut pending: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let config = shared.config.load_full();
        let debounce = config.watch;
        if config.generation != generation || watched.is_empty() != debounce.is_none() {
            generation = config.generation;
            let added = sync(shared, &ino, &mut watched, debounce.map(|_| config.watched_dirs()).unwrap_or_default());
            if added {
                // A file that changed before its directory was watched gave no event: look once.
                pending = Some(Instant::now());
            }
        }
        drop(config);
        let wait = match (pending, debounce) {
            (Some(at), Some(d)) => d.saturating_sub(at.elapsed()).max(Duration::from_millis(1)),
            _ => Duration::from_millis(250),
        };
        let events = match ino.read(wait) {
            Ok(ev) => ev,
            Err(e) => {
                crate::warn_every_second!(error = %e, "file watcher: read failed");
                shared.registry.control(|c| c.counters.watch_errors += 1);
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
        };
        let Some(debounce) = debounce else { continue };
        let mut seen = 0;
        for e in &events {
            if e.overflowed() {
                shared.registry.control(|c| c.counters.watch_errors += 1);
            }
            if e.ignored() {
                // The directory went away (or was replaced): watch it again at the next sync.
                watched.retain(|_, wd| *wd != e.watch);
                generation = 0;
            }
            if relevant(e) {
                seen += 1;
            }
        }
        if seen > 0 {
            shared.registry.control(|c| c.counters.watch_events += seen);
            pending = Some(Instant::now());
        }
        if pending.is_some_and(|at| at.elapsed() >= debounce) {
            pending = None;
            control.reload("watch");
        }
    }
}

/// Watches exactly `dirs` (a directory that cannot be watched is counted and retried later);
/// whether a directory was added.
fn sync(shared: &Shared, ino: &Inotify, watched: &mut BTreeMap<PathBuf, i32>, dirs: Vec<PathBuf>) -> bool {
    let mut added = false;
    watched.retain(|d, wd| {
        let keep = dirs.contains(d);
        if !keep {
            ino.unwatch(*wd);
        }
        keep
    });
    for d in dirs {
        if watched.contains_key(&d) {
            continue;
        }
        match ino.watch(&d) {
            Ok(wd) => {
                watched.insert(d, wd);
                added = true;
            }
            Err(e) => {
                crate::warn_every_second!(dir = %d.display(), error = %e, "file watcher: cannot watch");
                shared.registry.control(|c| c.counters.watch_errors += 1);
            }
        }
    }
    added
}
