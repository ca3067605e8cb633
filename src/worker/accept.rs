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
use tokio::sync::watch;

/// Accepts on `listener` until the worker is told to stop, or `own` says this listener was
/// removed (a reload), spawning a task per connection.
///
/// Stopping loses no connection the kernel already accepted: the connections queued in the
/// backlog are taken without blocking and served, and the accept still in flight in the ring is
/// completed (by shutting the listener down) and, if it brought a connection, that one is served
/// too. They count as open, so the drain waits for them like for the others.
pub(crate) async fn run(w: Rc<Worker>, listener: Socket, addr: SocketAddr, mut own: watch::Receiver<bool>) {
    let mut stop = w.stop.clone();
    w.conns.shuns.borrow_mut().register(addr, listener.clone());
    if *stop.borrow_and_update() || *own.borrow_and_update() {
        return stop_accepting(&w, &listener, addr, None::<std::pin::Pin<&mut std::future::Ready<_>>>).await;
    }
    // One future for both signals, made once: each accept waits beside it without making (and
    // dropping, which takes the channel's lock) two new ones. Either channel changing, or
    // closing, is the stop.
    let stopped = async {
        tokio::select! {
            _ = stop.changed() => {}
            _ = own.changed() => {}
        }
    };
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let max = w.config().runtime.max_conns_per_worker;
        if max > 0 && w.open.get() >= max {
            w.metrics().bump(|c| c.conn_limit_waits += 1);
            tokio::select! {
                biased;
                () = &mut stopped => break,
                () = w.slot_freed.notified() => continue,
            }
        }
        let mut accept = std::pin::pin!(listener.accept());
        let res = tokio::select! {
            biased;
            r = &mut accept => r,
            () = &mut stopped => return stop_accepting(&w, &listener, addr, Some(accept)).await,
        };
        match res {
            Ok(client) => spawn(&w, client, addr),
            Err(e) => {
                if let Some(d) = failed(&w, addr, &e) {
                    tokio::select! {
                        biased;
                        () = &mut stopped => break,
                        () = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
    }
    stop_accepting(&w, &listener, addr, None::<std::pin::Pin<&mut std::future::Ready<_>>>).await;
}

/// How many 1 ms pauses the drain of a stopping listener makes for handshakes under way.
const HANDSHAKE_PAUSES: u32 = 5;

/// Connections already queued: takes them without blocking, then shuts the listener down,
/// which completes the accept in flight (with a connection that came in meanwhile, or an
/// error), so its fd is not left to a completion nobody reads; serves what they brought.
///
/// A listener a new process took over (a binary upgrade) is shared with it: its backlog is the
/// new process's to serve and shutting it down would close it for both. Only the accept in
/// flight is cancelled (a connection it already took is served here).
async fn stop_accepting<F>(w: &Rc<Worker>, listener: &Socket, addr: SocketAddr, pending: Option<std::pin::Pin<&mut F>>)
where
    F: std::future::Future<Output = std::io::Result<Socket>>,
{
    // No more shunning here; a shunning filter comes off (a listener handed over serves on in
    // the new process, which knows nothing of our entries).
    w.conns.shuns.borrow_mut().forget(addr);
    if w.handed_off.get().is_some_and(|adopted| adopted.contains(&addr)) {
        let mut served = 0;
        if let Some(accept) = pending {
            match listener.cancel_pending().await {
                Ok(_) => {
                    if let Ok(client) = accept.await {
                        spawn(w, client, addr);
                        served = 1;
                    }
                }
                // Before Linux 5.19: the accept stays armed until this ring closes.
                Err(e) => {
                    tracing::warn!(worker = w.id(), listener = %addr, error = %e, "cannot cancel the accept in flight")
                }
            }
        }
        tracing::debug!(worker = w.id(), listener = %addr, served, "handed over: stopped accepting");
        return;
    }
    // New handshakes are dropped first (their clients retry and find the listener closed), so
    // the drain below empties a queue that nothing joins before the shutdown.
    if let Err(e) = listener.refuse_new_handshakes() {
        tracing::debug!(worker = w.id(), listener = %addr, error = %e, "cannot filter new handshakes before the drain");
    }
    // Handshakes already under way still complete (their last ACK passes the filter) and join
    // the queue a moment after the drain has found it empty; the shutdown would reset them
    // after their clients saw the connect succeed. So the drain pauses (1 ms, the worker serving
    // on) and drains again, until a pause brings nothing or after HANDSHAKE_PAUSES of them: a
    // handshake whose ACK takes longer than that (a client a long round trip away) is still
    // reset, as by any proxy that stops listening.
    let mut drained = 0;
    if listener.set_nonblocking().is_ok() {
        let mut pauses = 0;
        loop {
            let mut took = 0;
            while let Ok(client) = listener.try_accept() {
                spawn(w, client, addr);
                took += 1;
            }
            drained += took;
            if pauses == HANDSHAKE_PAUSES || (pauses > 0 && took == 0) {
                break;
            }
            pauses += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    listener.shutdown(Shutdown::Both);
    if let Some(accept) = pending {
        if let Ok(client) = accept.await {
            spawn(w, client, addr);
            drained += 1;
        }
    }
    tracing::debug!(worker = w.id(), listener = %addr, drained, "stopped accepting");
}

/// Counts a new connection open and starts its task.
fn spawn(w: &Rc<Worker>, client: Socket, listen: SocketAddr) {
    let at = w.conns.now();
    w.open.set(w.open.get() + 1);
    w.metrics().bump(|c| c.accepted += 1);
    // Boxed: tokio moves a task's future by value when it spawns it and writes its stage (as
    // large as the future) when it completes; a box makes those copies a pointer's.
    tokio_uring::spawn(Box::pin(serve(OpenGuard(Rc::clone(w)), Accepted::new(client, listen, at))));
}

/// Counts a failed accept and says how long to back off before the next one.
fn failed(w: &Worker, addr: SocketAddr, e: &std::io::Error) -> Option<Duration> {
    let cause = AcceptCause::of(e);
    w.metrics().bump(|c| c.accept_errors.bump(cause));
    match cause {
        AcceptCause::Descriptors | AcceptCause::Memory => {
            crate::warn_every_second!(worker = w.id(), listener = %addr, error = %e, "accept: out of descriptors or memory; backing off");
            Some(Duration::from_millis(100))
        }
        // The peer gave up while queued: nothing to do.
        AcceptCause::Aborted => None,
        AcceptCause::Other => {
            crate::warn_every_second!(worker = w.id(), listener = %addr, error = %e, "accept failed");
            Some(Duration::from_millis(10))
        }
    }
}

/// One connection's task: served with the configuration of the moment (it keeps only its
/// route), counted open until done. The task owns the connection (stored once: `conn::serve`
/// borrows it) and closes it at the end.
#[allow(clippy::manual_async_fn)] // an `async move` block: its arguments are stored once
fn serve(guard: OpenGuard, mut conn: Accepted) -> impl std::future::Future<Output = ()> {
    async move {
        let w = &guard.0;
        conn::serve(&w.conns, &**w, &mut conn).await;
        // Through the ring: batched with the other submissions, no close(2) of its own.
        conn.client.close();
    }
}
