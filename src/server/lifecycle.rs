//! The process's life: start, signals, stop.
//!
//! [`serve`] registers the signals first (so an early SIGTERM is neither lost nor fatal), loads
//! the configuration, starts the [`Server`], then waits for signals on this (the control) thread:
//! SIGHUP asks the control thread for a reload (a bad file is logged and the old one kept;
//! the access log is reopened), SIGUSR1 prints the one-screen summary, SIGTERM/SIGINT stop accepting and drain.

use super::upgrade::{self, UpgradeOptions};
use super::{ServeError, Server};
use crate::admin;
use crate::config::{Config, RuntimeOverrides};
use std::path::Path;

/// Set (to anything but `0`) to turn off latency histograms and their clock reads, e.g. to
/// measure what they cost. Counters stay on.
pub const NO_LATENCY_ENV: &str = "SNI_DISPATCH_NO_LATENCY";

/// The exit status after a second SIGTERM/SIGINT cut the drain short.
pub const EXIT_FORCED: i32 = 3;

/// Loads the configuration, starts the workers and serves until SIGTERM or SIGINT, then drains
/// open connections for up to `drain_timeout_ms` and returns `Ok(())`. SIGHUP reloads `path`
/// (with the same `overrides`): a bad file is logged and the running configuration kept.
///
/// With `upgrade.from`, the listening sockets are taken from the process offering them there
/// (after the configuration loaded: a bad one leaves the running process alone), which then
/// drains; with `upgrade.socket`, this process offers its own, and once a new process has
/// taken them it drains and exits as on SIGTERM.
pub fn serve(path: &Path, overrides: &RuntimeOverrides, upgrade: &UpgradeOptions) -> Result<(), ServeError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    // Register before starting workers so an early SIGTERM is not lost (or fatal).
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]).map_err(ServeError::Signals)?;
    if let Some(socket) = upgrade.socket.as_deref().filter(|s| upgrade.from.as_deref() != Some(*s)) {
        upgrade::check_free(socket)?;
    }
    // Reading a large configuration frees much more than the table keeps: given back at once
    // while nothing serves yet (a lower start-up peak), the default purge delay restored before
    // the workers start.
    let purge = crate::sys::purge_at_once();
    let config = Config::load(path, overrides)?;
    crate::sys::release_all_free_memory();
    drop(purge);
    let mut inherited = match &upgrade.from {
        Some(from) => upgrade::take(from)?,
        None => None,
    };
    let mut server = Server::start_with(config, inherited.as_mut(), upgrade.socket.is_some())?;
    if let Some(inherited) = inherited {
        let from = inherited.from_pid();
        match inherited.finish() {
            Ok(_) => tracing::info!(from, "binary upgrade: the previous process stopped accepting; serving"),
            // Both processes accept on the shared sockets meanwhile: nothing is refused.
            Err(e) => {
                tracing::warn!(from, error = %e, "binary upgrade: the previous process did not confirm; serving anyway")
            }
        }
    }
    if let Some(socket) = &upgrade.socket {
        // Once a new process has our listeners: drain and exit as on SIGTERM.
        let raise = || {
            if let Err(e) = signal_hook::low_level::raise(SIGTERM) {
                tracing::error!(error = %e, "cannot raise SIGTERM after the hand-over; send it to drain and exit");
            }
        };
        server.offer_listeners(socket, Box::new(raise))?;
    }
    for sig in signals.forever() {
        match sig {
            // Read, built and swapped on the control thread, off the workers' CPUs; the access
            // log is reopened too.
            SIGHUP => server.request_reload("SIGHUP"),
            SIGUSR1 => print_summary(&server.summary()),
            _ => {
                tracing::info!(signal = sig, "stopping: no new connections, draining open ones");
                break;
            }
        }
    }
    let registry = server.metrics().clone();
    let started = server.started;
    // A second SIGTERM or SIGINT during the drain means "now": exit without waiting.
    let open = registry.clone();
    let second = std::thread::Builder::new().name("sni-signals".into()).spawn(move || {
        for sig in signals.forever() {
            if sig == SIGTERM || sig == SIGINT {
                let left = open.merged().open;
                tracing::warn!(
                    signal = sig,
                    open = left,
                    "second stop signal: exiting without waiting for open connections"
                );
                std::process::exit(EXIT_FORCED);
            }
        }
    });
    if let Err(e) = second {
        tracing::warn!(error = %e, "cannot watch for a second stop signal; the drain runs to its end");
    }
    let drained = server.shutdown();
    tracing::info!(drained, "stopped");
    print_summary(&admin::render::summary(&registry, started.elapsed()));
    Ok(())
}

fn print_summary(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}
