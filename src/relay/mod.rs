//! Moving bytes between a client and its back end once the route is known.
//!
//! - [`connect_backends`]: back ends in order, each within the connect timeout.
//! - [`relay`]: forwards bytes already read (PROXY header + ClientHello), then relays both
//!   directions until both are shut down, through one of two strategies:
//!   - [`splice`]: zero-copy. Readiness comes from io_uring POLL_ADD; data moves with non-blocking
//!     `splice(2)` socket → pipe → socket. Needs two pipes from the worker's [`PipePool`].
//!   - [`copy`]: buffered, io_uring RECV/SEND through a pooled buffer per direction. Used with
//!     `--no-splice` or when the pipe pool is exhausted.
//! - **Half-close**: when one side ends its stream (EOF), the other side's write half is shut down
//!   and the opposite direction keeps going. The relay ends when both directions have ended; the
//!   second EOF is passed on by the close that follows rather than by one more shutdown(2).
//! - **Errors** (reset, broken pipe) in one direction shut both sockets down entirely, which ends
//!   the other direction too.
//! - **Idle timeout**: a connection with no bytes moved in either direction for `idle` is shut
//!   down (both sockets, which completes every pending operation) and dropped.
pub mod copy;
pub mod proxy_protocol;
pub mod splice;

use crate::metrics::{Local, RelayKind};
use crate::worker::ring::{Pipe, Socket};
use std::cell::{Cell, RefCell};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;

/// Size of a pooled relay buffer (and the minimum size of a hello buffer).
pub const BUF_SIZE: usize = 16 * 1024;
/// Pipe capacity requested with F_SETPIPE_SZ: 256 KiB moves a bulk stream in few splices
/// while an idle pipe costs no memory (pipe pages are allocated on write).
pub const PIPE_SIZE: usize = 256 * 1024;
/// Buffers kept for reuse per worker; more are freed when returned.
const MAX_FREE_BUFS: usize = 4096;

/// A worker's pipes: at most `limit` exist at once; created lazily, reused when returned empty.
#[derive(Debug)]
pub struct PipePool {
    free: Vec<Pipe>,
    live: usize,
    limit: usize,
}

impl PipePool {
    pub fn new(limit: usize) -> Self {
        Self { free: Vec::new(), live: 0, limit }
    }

    /// A clean pipe, or `None` when the pool's limit is reached (or pipe creation failed).
    fn take(&mut self) -> Option<Pipe> {
        if let Some(p) = self.free.pop() {
            return Some(p);
        }
        if self.live >= self.limit {
            return None;
        }
        let p = Pipe::new(PIPE_SIZE).ok()?;
        self.live += 1;
        Some(p)
    }

    /// Returns a pipe; one still holding bytes (a relay cut short) is closed instead.
    fn give(&mut self, p: Pipe) {
        if p.held == 0 {
            self.free.push(p);
        } else {
            self.live -= 1;
        }
    }

    /// Pipes in existence (in use or free).
    pub fn live(&self) -> usize {
        self.live
    }
}

/// A pipe on loan; goes back to its pool when dropped (also when a relay is abandoned).
pub(crate) struct PipeLoan<'a> {
    pipe: Option<Pipe>,
    pool: &'a RefCell<PipePool>,
}

impl PipeLoan<'_> {
    pub(crate) fn get(&mut self) -> &mut Pipe {
        #[allow(clippy::expect_used)]
        self.pipe.as_mut().expect("a loan holds its pipe until dropped")
    }
}

impl Drop for PipeLoan<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pipe.take() {
            self.pool.borrow_mut().give(p);
        }
    }
}

/// Reusable buffers of at least [`BUF_SIZE`] bytes capacity.
#[derive(Debug, Default)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
}

impl BufPool {
    /// An empty buffer with at least `cap` bytes of capacity.
    pub fn take(&mut self, cap: usize) -> Vec<u8> {
        let mut b = self.free.pop().unwrap_or_default();
        b.clear();
        if b.capacity() < cap {
            b.reserve_exact(cap);
        }
        b
    }

    pub fn give(&mut self, b: Vec<u8>) {
        if b.capacity() >= BUF_SIZE && self.free.len() < MAX_FREE_BUFS {
            self.free.push(b);
        }
    }
}

/// What a relay needs from its worker.
pub struct Env<'a> {
    pub metrics: &'a Local,
    pub pipes: &'a RefCell<PipePool>,
    pub bufs: &'a RefCell<BufPool>,
    /// Use splice when two pipes are available.
    pub splice: bool,
    pub idle: Duration,
    /// Stamp the first byte relayed from the back end to the client (for the first-byte latency).
    pub timing: bool,
}

/// Why a back end could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("route has no back ends")]
    NoBackends,
    #[error("every back end failed; last {addr}: {source}")]
    AllFailed { addr: SocketAddr, source: io::Error },
}

/// Connects to `backends` in order, each within `timeout`; the first that accepts wins and gets
/// as much of `first` (PROXY header + ClientHello) as its send buffer takes at once; the count
/// comes back with the socket, for [`relay`] to send the rest. Each failed attempt bumps
/// `backend_connect_failures`.
pub async fn connect_backends(
    backends: &[SocketAddr],
    timeout: Duration,
    metrics: &Local,
    first: &[u8],
) -> Result<(Socket, SocketAddr, usize), ConnectError> {
    let mut last = None;
    for &addr in backends {
        let err = match Socket::tcp_for(addr) {
            Err(e) => e,
            Ok(sock) => match dial(&sock, addr, timeout, first).await {
                Ok(sent) => return Ok((sock, addr, sent)),
                Err(e) => e,
            },
        };
        metrics.bump(|c| c.backend_connect_failures += 1);
        tracing::debug!(%addr, error = %err, "back-end connect failed");
        last = Some((addr, err));
    }
    match last {
        None => Err(ConnectError::NoBackends),
        Some((addr, source)) => Err(ConnectError::AllFailed { addr, source }),
    }
}

/// One back end: connect(2), then send `first` in the same breath, as HAProxy and nginx do. On
/// loopback and fast LANs the handshake is over when connect returns, so the back end is woken
/// once, to a connection that already holds the ClientHello; through the ring the send would
/// follow a completion round trip later and wake it a second time. A handshake still in flight
/// (EAGAIN) is waited for with POLLOUT, and the bytes go later ([`relay`]); 0 are sent then.
async fn dial(sock: &Socket, addr: SocketAddr, timeout: Duration, first: &[u8]) -> io::Result<usize> {
    let connected = sock.start_connect(addr)?;
    if !first.is_empty() {
        match sock.try_send_vectored(&[io::IoSlice::new(first)]) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            // Refused or reset during the handshake: the next back end.
            Err(e) => return Err(e),
        }
    } else if connected {
        return Ok(0);
    }
    match tokio::time::timeout(timeout, sock.finish_connect()).await {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            // The poll is still pending: shutting the socket down completes it, so its fd is
            // closed instead of lingering through SYN retries.
            sock.shutdown(Shutdown::Both);
            Err(io::ErrorKind::TimedOut.into())
        }
    }
}

/// What one relay moved, and how it ended.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    pub outcome: Outcome,
    /// Bytes written to the back end (the PROXY header and hello included) and to the client.
    pub to_backend: u64,
    pub to_client: u64,
    /// When the first back-end byte was written to the client (with [`Env::timing`]).
    pub first_to_client: Option<std::time::Instant>,
}

/// A direction's byte count, and (optionally) when its first bytes went through.
pub(crate) struct Moved {
    bytes: Cell<u64>,
    first: Cell<Option<std::time::Instant>>,
    stamp_first: bool,
}

impl Moved {
    fn new(stamp_first: bool) -> Self {
        Self { bytes: Cell::new(0), first: Cell::new(None), stamp_first }
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        if self.stamp_first && n > 0 && self.first.get().is_none() {
            self.first.set(Some(std::time::Instant::now()));
        }
        self.bytes.set(self.bytes.get() + n);
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides shut down cleanly.
    Closed,
    /// An error (reset, broken pipe) on one side.
    Error,
    /// No traffic for the idle timeout.
    Idle,
    /// The first bytes could not be written to the back end.
    FirstWrite,
}

/// Shared by a relay's two directions.
pub(crate) struct Shared<'a> {
    pub(crate) last_activity: Cell<Instant>,
    /// Directions that have reached end of stream.
    pub(crate) ended: Cell<u8>,
    pub(crate) client: &'a Socket,
    pub(crate) backend: &'a Socket,
}

impl Shared<'_> {
    #[inline]
    pub(crate) fn touch(&self) {
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

    /// Ends both directions after an error.
    pub(crate) fn abort(&self) {
        self.client.shutdown(Shutdown::Both);
        self.backend.shutdown(Shutdown::Both);
    }
}

/// Sends what is left of `first` (PROXY header and the ClientHello, possibly empty; `sent` bytes
/// of it went out with the connect) to the back end, then relays both directions until both
/// have ended, an error, or the idle timeout. Bytes are counted in the worker's metrics. The
/// caller drops (closes) both sockets afterwards.
pub async fn relay(env: &Env<'_>, client: &Socket, backend: &Socket, first: Vec<u8>, sent: usize) -> Relayed {
    let n_first = first.len() as u64;
    let first = if sent < first.len() {
        let (res, buf) = backend.send_all(first, sent).await;
        if res.is_err() {
            env.bufs.borrow_mut().give(buf);
            return Relayed { outcome: Outcome::FirstWrite, to_backend: 0, to_client: 0, first_to_client: None };
        }
        buf
    } else {
        first
    };
    env.metrics.bump(|c| c.bytes_client_to_backend += n_first);
    let shared = Shared { last_activity: Cell::new(Instant::now()), ended: Cell::new(0), client, backend };

    let pipes = if env.splice { take_two(env.pipes) } else { None };
    let kind = if pipes.is_some() { RelayKind::Splice } else { RelayKind::Buffered };
    env.metrics.bump(|c| match kind {
        RelayKind::Splice => c.relays_splice += 1,
        RelayKind::Buffered => c.relays_buffered += 1,
    });

    let up = Moved::new(false);
    let down = Moved::new(env.timing);
    let work = async {
        match pipes {
            Some((mut p1, mut p2)) => {
                env.bufs.borrow_mut().give(first);
                let (a, b) = tokio::join!(
                    splice::direction(&shared, client, backend, p1.get(), &up),
                    splice::direction(&shared, backend, client, p2.get(), &down),
                );
                a.and(b)
            }
            None => {
                let second = env.bufs.borrow_mut().take(BUF_SIZE);
                let (a, b) = tokio::join!(
                    copy::direction(&shared, client, backend, first, &up),
                    copy::direction(&shared, backend, client, second, &down),
                );
                let mut bufs = env.bufs.borrow_mut();
                bufs.give(a.1);
                bufs.give(b.1);
                a.0.and(b.0)
            }
        }
    };
    let outcome = tokio::select! {
        res = work => if res.is_ok() { Outcome::Closed } else { Outcome::Error },
        () = idle(&shared.last_activity, env.idle) => {
            shared.abort();
            Outcome::Idle
        }
    };
    env.metrics.bump(|c| {
        c.bytes_client_to_backend += up.bytes.get();
        c.bytes_backend_to_client += down.bytes.get();
        match outcome {
            Outcome::Idle => c.idle_timeouts += 1,
            Outcome::Error => c.relay_errors += 1,
            _ => {}
        }
    });
    Relayed {
        outcome,
        to_backend: n_first + up.bytes.get(),
        to_client: down.bytes.get(),
        first_to_client: down.first.get(),
    }
}

fn take_two(pool: &RefCell<PipePool>) -> Option<(PipeLoan<'_>, PipeLoan<'_>)> {
    let mut p = pool.borrow_mut();
    let a = p.take()?;
    match p.take() {
        Some(b) => Some((PipeLoan { pipe: Some(a), pool }, PipeLoan { pipe: Some(b), pool })),
        None => {
            p.give(a);
            None
        }
    }
}

/// Completes once `last` is older than `idle`.
async fn idle(last: &Cell<Instant>, idle: Duration) {
    loop {
        let deadline = last.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A back end whose accept queue is full drops our SYN, so the handshake is still in flight
    /// when connect(2) returns: nothing may be sent then (0 bytes reported), the connect must
    /// still complete once the SYN is retried, and the bytes then go through in full.
    #[test]
    fn a_connect_still_in_flight_sends_nothing_early() {
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        // Fills the accept queue (a backlog of 0 holds one connection).
        let filler = std::net::TcpStream::connect(addr).unwrap();
        let listener = std::net::TcpListener::from(listener);
        let drainer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let (_first, _) = listener.accept().unwrap();
            let (mut ours, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            ours.read_to_end(&mut got).unwrap();
            got
        });
        let hello = b"ClientHello bytes".to_vec();
        let sent = tokio_uring::start(async {
            let metrics = Local::new(crate::metrics::Registry::new(1).slot(0));
            let (sock, _, sent) = connect_backends(&[addr], Duration::from_secs(10), &metrics, &hello).await.unwrap();
            let (res, _) = sock.send_all(hello.clone(), sent).await;
            res.unwrap();
            sent
        });
        assert_eq!(sent, 0, "bytes were sent before the handshake finished");
        assert_eq!(drainer.join().unwrap(), hello);
        drop(filler);
    }
}
