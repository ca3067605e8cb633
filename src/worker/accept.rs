//! The accept loop of one listener on one worker: admission under `max_conns_per_worker`
//! (connections beyond the cap wait in the listen backlog), the errno policy (back off on
//! EMFILE/ENFILE/ENOMEM, ignore a peer that gave up while queued), and the stop signal.

use super::{OpenGuard, Worker};
use crate::conn::{self, Accepted};
use crate::metrics::AcceptCause;
use crate::sys::Socket;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

/// Accepts on `listener` until the worker is told to stop, spawning a task per connection.
pub(crate) async fn run(w: Rc<Worker>, listener: Socket, addr: SocketAddr) {
    let mut stop = w.stop.clone();
    loop {
        if *stop.borrow() {
            break;
        }
        let max = w.config().runtime.max_conns_per_worker;
        if max > 0 && w.open.get() >= max {
            w.metrics().bump(|c| c.conn_limit_waits += 1);
            tokio::select! {
                () = w.slot_freed.notified() => continue,
                _ = stop.changed() => break,
            }
        }
        let res = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
        };
        match res {
            Ok(client) => {
                let at = w.conns.now();
                w.open.set(w.open.get() + 1);
                w.metrics().bump(|c| c.accepted += 1);
                tokio_uring::spawn(serve(OpenGuard(Rc::clone(&w)), Accepted { client, listen: addr, at }));
            }
            Err(e) => {
                let cause = AcceptCause::of(&e);
                w.metrics().bump(|c| c.accept_errors.bump(cause));
                let backoff = match cause {
                    AcceptCause::Descriptors | AcceptCause::Memory => {
                        tracing::warn!(worker = w.id(), listener = %addr, error = %e, "accept: out of descriptors or memory; backing off");
                        Some(Duration::from_millis(100))
                    }
                    // The peer gave up while queued: nothing to do.
                    AcceptCause::Aborted => None,
                    AcceptCause::Other => {
                        tracing::warn!(worker = w.id(), listener = %addr, error = %e, "accept failed");
                        Some(Duration::from_millis(10))
                    }
                };
                if let Some(d) = backoff {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
    }
    // Completes the pending accept (if any), so the fd closes once that op returns.
    listener.shutdown(Shutdown::Both);
    tracing::debug!(worker = w.id(), listener = %addr, "stopped accepting");
}

/// One connection's task: served with the snapshot current at accept, counted open until done.
async fn serve(guard: OpenGuard, conn: Accepted) {
    let w = &guard.0;
    let cfg = w.config();
    conn::serve(&w.conns, &cfg, conn).await;
}
