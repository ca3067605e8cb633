//! Moving bytes between a client and its back end once both are connected and the first bytes
//! (PROXY header, ClientHello) have gone out.
//!
//! - [`relay`] relays both directions until both are shut down, through one of two strategies:
//!   - [`splice`]: zero-copy. Readiness comes from io_uring POLL_ADD; data moves with non-blocking
//!     `splice(2)` socket → pipe → socket. Needs two pipes from the worker's [`PipePool`].
//!   - [`copy`]: buffered, io_uring RECV/SEND through a pooled buffer per direction. Used with
//!     `--no-splice` or when the pipe pool is exhausted.
//! - The TLS relay of terminating routes ([`crate::tls`]) ends the same way: every relay returns
//!   one [`Relayed`] (how it ended, bytes each way), which the connection counts in one place.
//! - **Half-close**: when one side ends its stream (EOF), the other side's write half is shut down
//!   and the opposite direction keeps going. The relay ends when both directions have ended; the
//!   second EOF is passed on by the close that follows rather than by one more shutdown(2).
//! - **Errors** (reset, broken pipe) in one direction shut both sockets down entirely, which ends
//!   the other direction too ([`Pair::abort`]).
//! - **Idle timeout**: a connection with no bytes moved in either direction for `idle` is shut
//!   down (both sockets, which completes every pending operation) and dropped ([`Pair::idle`]).
pub mod copy;
pub mod pool;
pub mod splice;

pub use pool::{BufPool, PipePool, BUF_SIZE, PIPE_SIZE};

use crate::metrics::{RelayCause, RelayKind};
use crate::sys::Socket;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// What a relay needs from its worker.
pub struct Env<'a> {
    pub pipes: &'a RefCell<PipePool>,
    pub bufs: &'a RefCell<BufPool>,
    /// Use splice when two pipes are available.
    pub splice: bool,
    pub idle: Duration,
    /// Stamp the first byte relayed from the back end to the client (for the first-byte latency).
    pub timing: bool,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides shut down cleanly.
    Closed,
    /// No traffic for the idle timeout.
    Idle,
    /// An error on one side (then both were shut down).
    Error(RelayCause),
}

/// What one relay moved, and how it ended: the one outcome of spliced, buffered and TLS relays.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    pub kind: RelayKind,
    pub end: End,
    /// Bytes written to the back end and to the client (plaintext when terminating).
    pub to_backend: u64,
    pub to_client: u64,
    /// When the first back-end byte went to the client (if stamped).
    pub first_to_client: Option<Instant>,
}

/// A direction's byte count, and (optionally) when its first bytes went through.
pub(crate) struct Moved {
    bytes: Cell<u64>,
    first: Cell<Option<Instant>>,
    stamp_first: bool,
}

impl Moved {
    pub(crate) fn new(stamp_first: bool) -> Self {
        Self { bytes: Cell::new(0), first: Cell::new(None), stamp_first }
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        if self.stamp_first && n > 0 && self.first.get().is_none() {
            self.first.set(Some(Instant::now()));
        }
        self.bytes.set(self.bytes.get() + n);
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    pub(crate) fn first(&self) -> Option<Instant> {
        self.first.get()
    }
}

/// The two sockets of a relayed connection and what both directions share: when bytes last
/// moved, and how many directions have ended. Used by every relay, TLS included.
pub struct Pair<'a> {
    pub client: &'a Socket,
    pub backend: &'a Socket,
    last_activity: Cell<Instant>,
    /// Directions that have reached end of stream.
    ended: Cell<u8>,
}

impl<'a> Pair<'a> {
    pub fn new(client: &'a Socket, backend: &'a Socket) -> Self {
        Self { client, backend, last_activity: Cell::new(Instant::now()), ended: Cell::new(0) }
    }

    /// Bytes moved: the idle clock restarts.
    #[inline]
    pub fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    /// `src` reached end of stream: passes it on as a FIN on `dst`. The direction that ends last
    /// skips the shutdown(2): both sockets are closed right after, and close sends the same FIN.
    pub(crate) fn end_of_stream(&self, dst: &Socket) {
        let ended = self.ended.get() + 1;
        self.ended.set(ended);
        if ended < 2 {
            dst.shutdown(Shutdown::Write);
        }
    }

    /// Ends both directions after an error (pending operations complete, later writes fail).
    pub fn abort(&self) {
        self.client.shutdown(Shutdown::Both);
        self.backend.shutdown(Shutdown::Both);
    }

    /// Completes once no bytes have moved for `idle`.
    pub async fn idle(&self, idle: Duration) {
        loop {
            let deadline = self.last_activity.get() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }

    /// Runs `work` (both directions) under the idle watchdog: on idle, aborts both sockets and
    /// waits for `work` to notice. Returns `work`'s result and whether the watchdog fired.
    pub async fn watch<T>(&self, idle: Duration, work: impl std::future::Future<Output = T>) -> (T, bool) {
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => (out, false),
            () = self.idle(idle) => {
                self.abort();
                (work.await, true)
            }
        }
    }
}

/// How a relay whose directions returned `res` ended.
pub fn end_of(res: io::Result<()>, idle: bool) -> End {
    match res {
        _ if idle => End::Idle,
        Ok(()) => End::Closed,
        Err(e) => End::Error(RelayCause::of(&e)),
    }
}

/// Relays both directions until both have ended, an error, or the idle timeout. The caller has
/// sent the first bytes already and closes both sockets afterwards.
pub async fn relay(env: &Env<'_>, client: &Socket, backend: &Socket) -> Relayed {
    let pair = Pair::new(client, backend);
    let pipes = if env.splice { pool::take_two(env.pipes) } else { None };
    let kind = if pipes.is_some() { RelayKind::Splice } else { RelayKind::Buffered };
    let up = Moved::new(false);
    let down = Moved::new(env.timing);
    let work = async {
        match pipes {
            Some((mut p1, mut p2)) => {
                let (a, b) = tokio::join!(
                    splice::direction(&pair, client, backend, p1.get(), &up),
                    splice::direction(&pair, backend, client, p2.get(), &down),
                );
                a.and(b)
            }
            None => {
                let (first, second) = {
                    let mut bufs = env.bufs.borrow_mut();
                    (bufs.take(BUF_SIZE), bufs.take(BUF_SIZE))
                };
                let (a, b) = tokio::join!(
                    copy::direction(&pair, client, backend, first, &up),
                    copy::direction(&pair, backend, client, second, &down),
                );
                let mut bufs = env.bufs.borrow_mut();
                bufs.give(a.1);
                bufs.give(b.1);
                a.0.and(b.0)
            }
        }
    };
    let (res, idle) = pair.watch(env.idle, work).await;
    Relayed {
        kind,
        end: end_of(res, idle),
        to_backend: up.bytes(),
        to_client: down.bytes(),
        first_to_client: down.first(),
    }
}
