//! The control thread: every reload (SIGHUP, the file watcher, `POST /reload`) and every route
//! API change runs here, one at a time, on a thread placed off the workers' CPUs (pinned to the
//! CPUs they do not use, or at `SCHED_IDLE` when they use them all; the threads that parse big
//! files in parallel inherit that). Reloads asked for while one runs are coalesced into one.
//! Each says when it starts and how long parsing, building and swapping took.
//!
//! A route change writes its names to the table's small delta instead of copying the shards
//! they fall in ([`crate::route::Table::folded`]); once changes pause ([`FOLD_AFTER`]), or the
//! delta has grown to [`FOLD_AT`] names, a helper thread folds the delta into the shards and the
//! control thread swaps the folded table in, if nothing changed meanwhile (lookups answer the
//! same either way; a fold is never on the path of a change).

use super::{lock, Shared};
use crate::admin::{Control, ControlOp, ControlReply};
use crate::config::{ApiError, Config, ConfigError, Report};
use crate::metrics::{ApiResult, ReloadResult};
use crate::sys::{place_control_thread, Placement};
use serde_json::json;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

enum Msg {
    Reload {
        why: &'static str,
        reply: Option<oneshot::Sender<ControlReply>>,
    },
    Api(ControlOp, oneshot::Sender<ControlReply>),
    /// A fold done: `folded` is `from` with its table's delta in the shards (`None`: it had none).
    Folded {
        from: Arc<Config>,
        folded: Option<Box<Config>>,
    },
    Stop,
}

/// No change for this long: the table's delta is folded into its shards.
const FOLD_AFTER: Duration = Duration::from_millis(50);
/// A delta this large is folded after the change that made it, pause or not.
const FOLD_AT: usize = 1024;

/// The running control thread.
pub(crate) struct Handle {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

/// What the admin endpoint and the watcher hold to reach the control thread.
#[derive(Clone)]
pub(crate) struct Submitter(Arc<Mutex<mpsc::Sender<Msg>>>);

impl Control for Submitter {
    fn submit(&self, op: ControlOp, reply: oneshot::Sender<ControlReply>) {
        let msg = match op {
            ControlOp::Reload => Msg::Reload { why: "POST /reload", reply: Some(reply) },
            op => Msg::Api(op, reply),
        };
        // A stopped control thread drops the reply: the endpoint answers 503.
        let _ = lock(&self.0).send(msg);
    }
}

impl Submitter {
    pub(crate) fn reload(&self, why: &'static str) {
        let _ = lock(&self.0).send(Msg::Reload { why, reply: None });
    }
}

impl Handle {
    pub(crate) fn submitter(&self) -> Submitter {
        Submitter(Arc::new(Mutex::new(self.tx.clone())))
    }

    pub(crate) fn reload(&self, why: &'static str) {
        let _ = self.tx.send(Msg::Reload { why, reply: None });
    }

    pub(crate) fn stop(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn start(shared: Arc<Shared>) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::channel();
    let fold_tx = tx.clone();
    let thread = std::thread::Builder::new().name("sni-control".into()).spawn(move || {
        match place_control_thread(&shared.worker_cpus) {
            Placement::Pinned(cpus) => tracing::debug!(?cpus, "control thread pinned off the workers' CPUs"),
            Placement::Idle => tracing::debug!("control thread at SCHED_IDLE (the workers have every CPU)"),
            Placement::Unchanged(e) => tracing::warn!(error = %e, "control thread: cannot leave the workers' CPUs"),
        }
        run(&shared, &rx, &fold_tx);
    })?;
    Ok(Handle { tx, thread: Some(thread) })
}

fn run(shared: &Shared, rx: &mpsc::Receiver<Msg>, tx: &mpsc::Sender<Msg>) {
    let mut folding = false;
    loop {
        let delta = shared.config.load().table.delta_len();
        if delta >= FOLD_AT && !folding {
            folding = start_fold(shared, tx);
        }
        let wait = if delta > 0 && !folding { FOLD_AFTER } else { Duration::from_millis(500) };
        let msg = match rx.recv_timeout(wait) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if delta > 0 && !folding {
                    folding = start_fold(shared, tx);
                }
                if shared.collect_retired() {
                    // A replaced configuration the workers let go of since: its memory goes
                    // back to the kernel now, not at the allocator's leisure.
                    crate::sys::release_all_free_memory();
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        match msg {
            Msg::Stop => return,
            Msg::Folded { from, folded } => {
                folding = false;
                // Only onto the configuration it was folded from: a change since has its own
                // delta (which holds this one's) and is folded in turn.
                let Some(folded) = folded else { continue };
                if Arc::ptr_eq(&shared.config.load(), &from) {
                    let names = folded.table.delta_len();
                    shared.replace_folded(Arc::new(*folded));
                    tracing::debug!(names_left = names, "table delta folded into its shards");
                }
                continue;
            }
            Msg::Reload { why, reply } => {
                // Coalesce: every reload already queued is answered by this one.
                let mut replies: Vec<oneshot::Sender<ControlReply>> = reply.into_iter().collect();
                let mut later = Vec::new();
                let mut reopen = why == "SIGHUP";
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Msg::Reload { why, reply } => {
                            reopen |= why == "SIGHUP";
                            replies.extend(reply);
                        }
                        other => later.push(other),
                    }
                }
                let answer = reload(shared, why);
                if reopen {
                    shared.reopen_access_log();
                }
                for r in replies {
                    let _ = r.send(answer.clone());
                }
                for m in later {
                    match m {
                        Msg::Api(op, reply) => {
                            let _ = reply.send(api(shared, op));
                        }
                        Msg::Stop => return,
                        // Folded from a configuration this reload replaced.
                        Msg::Folded { .. } => folding = false,
                        Msg::Reload { .. } => {}
                    }
                }
            }
            Msg::Api(op, reply) => {
                let _ = reply.send(api(shared, op));
            }
        }
        shared.collect_retired();
        // What the parse freed goes back to the kernel now (not at the allocator's leisure).
        crate::sys::release_all_free_memory();
    }
}

/// Folds the running table's delta on a helper thread (placed as this one is), which sends the
/// result back; whether one was started.
fn start_fold(shared: &Shared, tx: &mpsc::Sender<Msg>) -> bool {
    let from = shared.config.load_full();
    let tx = tx.clone();
    let spawned = std::thread::Builder::new().name("sni-fold".into()).spawn(move || {
        let started = Instant::now();
        let folded = from.folded().map(Box::new);
        tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "table delta folded");
        let _ = tx.send(Msg::Folded { from, folded });
    });
    match spawned {
        Ok(_) => true,
        Err(e) => {
            crate::warn_every_second!(error = %e, "cannot start the thread that folds the table's delta; lookups stay correct");
            false
        }
    }
}

fn errors_json(e: &ConfigError) -> serde_json::Value {
    json!(e.to_string().lines().collect::<Vec<_>>())
}

fn report_json(r: &Report, generation: u64, swap_ms: f64) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["generation"] = generation.into();
    v["swap_ms"] = swap_ms.into();
    v
}

/// One reload: read what changed, build, swap; or keep the running configuration.
fn reload(shared: &Shared, why: &'static str) -> ControlReply {
    let started = Instant::now();
    tracing::info!(why, "reload started");
    let old = shared.config.load_full();
    let result = old.reload();
    drop(old);
    let bump = |r: ReloadResult| shared.registry.control(|c| c.counters.reloads.bump(r));
    match result {
        Err(e) => {
            bump(ReloadResult::Failed);
            tracing::error!("reload failed; keeping the running configuration:\n{e}");
            (400, json!({ "result": "failed", "errors": errors_json(&e) }))
        }
        Ok((new, report)) => {
            let unchanged = report.unchanged;
            let generation = new.generation;
            let timings = [report.parse_ms / 1e3, report.build_ms / 1e3];
            match shared.swap(new, (!unchanged).then_some(timings)) {
                Err(e) => {
                    bump(ReloadResult::Failed);
                    tracing::error!("reload failed; keeping the running configuration: {e}");
                    (400, json!({ "result": "failed", "errors": [e.to_string()] }))
                }
                Ok(swap) => {
                    bump(if unchanged { ReloadResult::Unchanged } else { ReloadResult::Applied });
                    tracing::info!(
                        why,
                        unchanged,
                        generation,
                        files_read = report.files_read,
                        files_parsed = report.files_parsed,
                        added = report.routes_added,
                        changed = report.routes_changed,
                        removed = report.routes_removed,
                        full_build = report.full_build,
                        shards_touched = report.shards_touched,
                        parse_ms = report.parse_ms,
                        build_ms = report.build_ms,
                        swap_ms = swap * 1e3,
                        total_ms = started.elapsed().as_secs_f64() * 1e3,
                        "reload done"
                    );
                    let result = if unchanged { "unchanged" } else { "applied" };
                    let mut v = report_json(&report, generation, swap * 1e3);
                    v["result"] = result.into();
                    (200, v)
                }
            }
        }
    }
}

/// One route API change: validated and built, swapped in (serving from then on), then its
/// file written and synced; the answer comes once the file is safe. If the file cannot be
/// written, the previous configuration is put back and the change refused.
fn api(shared: &Shared, op: ControlOp) -> ControlReply {
    let started = Instant::now();
    let old = shared.config.load_full();
    let (what, result) = match &op {
        ControlOp::Put { name, body, json } => (format!("PUT /routes/{name}"), old.put_route(name, body, *json)),
        ControlOp::Delete { name } => (format!("DELETE /routes/{name}"), old.delete_route(name)),
        ControlOp::PutCert { name, pem } => (format!("PUT /certs/{name}"), old.put_cert(name, pem)),
        ControlOp::Reload => return reload(shared, "POST /reload"),
    };
    let bump = |r: ApiResult| shared.registry.control(|c| c.counters.route_changes.bump(r));
    let refused = |status: u16, errors: Vec<String>| (status, json!({ "result": "refused", "errors": errors }));
    match result {
        Err(e) => {
            let (status, r) = match &e {
                ApiError::Invalid(_) => (400, ApiResult::Invalid),
                ApiError::NotFound(_) | ApiError::Disabled(_) => (404, ApiResult::NotFound),
                ApiError::Conflict(_) => (409, ApiResult::Conflict),
                ApiError::Io(_) => (500, ApiResult::Io),
            };
            bump(r);
            crate::debug_every_second!(change = %what, error = %e, "route API change refused");
            refused(status, e.to_string().lines().map(str::to_owned).collect())
        }
        Ok((new, report, pending)) => {
            let generation = new.generation;
            let timings = [report.parse_ms / 1e3, report.build_ms / 1e3];
            let swap = match shared.swap(new, Some(timings)) {
                Ok(swap) => swap,
                Err(e) => {
                    pending.abandon();
                    bump(ApiResult::Io);
                    return refused(500, vec![e.to_string()]);
                }
            };
            let serving = started.elapsed().as_secs_f64() * 1e3;
            if let Err(e) = pending.commit() {
                // Not durable: back to the configuration the files still say.
                let _ = shared.swap_arc(old, None);
                pending.abandon();
                bump(ApiResult::Io);
                tracing::error!(change = %what, error = %e, "route API change undone: its file could not be written");
                return refused(500, vec![e]);
            }
            bump(ApiResult::Applied);
            let total = started.elapsed().as_secs_f64() * 1e3;
            tracing::info!(
                change = %what,
                generation,
                shards_touched = report.shards_touched,
                delta = report.delta,
                parse_ms = report.parse_ms,
                build_ms = report.build_ms,
                table_ms = report.table_ms,
                pools_ms = report.pools_ms,
                swap_ms = swap * 1e3,
                serving_ms = serving,
                total_ms = total,
                file = %pending.path().display(),
                "route change applied"
            );
            let mut v = report_json(&report, generation, swap * 1e3);
            v["result"] = "applied".into();
            v["serving_ms"] = serving.into();
            v["total_ms"] = total.into();
            (200, v)
        }
    }
}
