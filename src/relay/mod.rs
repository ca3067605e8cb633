//! Moving bytes between a client and its back end once both are connected and the first bytes
//! (PROXY header, ClientHello) have gone out.
//!
//! - [`relay`] relays both directions until both are shut down. Each direction waits for its
//!   source to be readable (io_uring POLL_ADD, which holds no buffer and no pipe), then moves
//!   one burst through one of two strategies:
//!   - [`splice`]: zero-copy `splice(2)` socket → pipe → socket, with a pipe borrowed from the
//!     worker's [`PipePool`] for the burst and given back once drained, so an idle connection
//!     holds no pipe and `pipe_pool` pipes serve every connection, not the first few hundred;
//!     a burst that finds no pipe is copied instead (`splice_fallbacks_total{cause}`). A
//!     passthrough direction splices only once it is a stream: its bursts are copied until one
//!     fills the scratch buffer ([`Env::copy_first`]), since a short response's few bytes cost
//!     less copied once than moved into a pipe and out of it;
//!   - [`copy`]: a non-blocking read into the worker's [`Scratch`] buffer and a non-blocking
//!     send; only what a full socket did not take is kept (in a pooled buffer) until it goes;
//!     `--no-splice` uses it for every burst.
//! - **Fairness**: a direction that keeps finding data yields to the worker's other tasks after
//!   every [`YIELD_AFTER`] bytes, so one bulk stream cannot hold its worker.
//! - The TLS relay of terminating routes ([`crate::tls`]) ends the same way: every relay returns
//!   one [`Relayed`] (how it ended, bytes each way), which the connection counts in one place.
//! - **Half-close** (a route's `half_close`, on by default): when one side ends its stream (EOF),
//!   the other side's write half is shut down and the opposite direction keeps going. The relay
//!   ends when both directions have ended; the second EOF is passed on by the close that follows
//!   rather than by one more shutdown(2). With `half_close = false` the first EOF ends the
//!   connection both ways, as nginx's `proxy_half_close off` does ([`Pair::pass_end`]).
//! - **The FIN rides with the last bytes**: a direction's first [`PEEK_BURSTS`] bursts that do
//!   not fill their room read once more at once; when that read finds the end of the stream, the
//!   burst goes out corked (`MSG_MORE`) and the shutdown or close that follows sends its FIN in
//!   the same segment: a short response costs the client one segment and one wake-up fewer,
//!   and the relay no poll for the end.
//! - **Errors** (reset, broken pipe) in one direction shut both sockets down entirely, which ends
//!   the other direction too ([`Pair::abort`]).
//! - **Idle timeout**: a connection with no bytes moved in either direction for `idle` is shut
//!   down (both sockets, which completes every pending operation) and dropped: for passthrough
//!   by the worker's wheel ([`Timers`], no timer per connection), for TLS by [`Pair::watch`].
pub mod copy;
pub mod pool;
pub mod splice;
pub mod timers;

pub use pool::{BufPool, PipePool, Scratch, BUF_SIZE, PIPE_SIZE, SCRATCH_SIZE};
pub use timers::{Deadline, Timers};

use crate::metrics::{Local, RelayCause, RelayKind};
use crate::sys::{Socket, POLLHUP, POLLIN, POLLOUT, POLLRDHUP};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// Bytes a relay direction moves before it lets the worker's other tasks run (when its source
/// keeps having data; a direction that has to wait for data yields anyway).
pub const YIELD_AFTER: usize = 256 * 1024;

/// Bursts of a direction, from its first, after which a short read looks for the end of the
/// stream at once (one read more; see the module doc). Beyond them a long-lived connection's
/// small bursts (interactive traffic) pay no extra read each.
pub const PEEK_BURSTS: u8 = 2;

/// A relay direction's byte budget: [`YIELD_AFTER`] bytes moved without waiting, then the
/// direction yields through the ring once (every relay loop, plain and TLS, in user space and
/// kernel TLS, keeps one).
#[derive(Debug)]
pub struct Budget(usize);

impl Default for Budget {
    fn default() -> Self {
        Self(YIELD_AFTER)
    }
}

impl Budget {
    /// Counts `n` bytes moved.
    pub fn spend(&mut self, n: usize) {
        self.0 = self.0.saturating_sub(n);
    }

    /// Whether the budget is spent: then it starts again, and the caller yields now.
    pub fn renew(&mut self) -> bool {
        let spent = self.0 == 0;
        if spent {
            self.0 = YIELD_AFTER;
        }
        spent
    }
}

/// How a relay treats its two ends (from the route and the back end's socket).
#[derive(Debug, Clone, Copy)]
pub struct Ends {
    /// The route's `half_close` ([`Pair::pass_end`]).
    pub half_close: bool,
    /// The back end's socket still has Nagle on (made for first bytes,
    /// [`Socket::tcp_for_first_bytes`]): TCP_NODELAY is set before the first burst to it, so a
    /// connection that sends nothing after its first bytes never pays the system call.
    pub nodelay_later: bool,
}

impl Default for Ends {
    fn default() -> Self {
        Self { half_close: true, nodelay_later: false }
    }
}

/// What a relay needs from its worker.
pub struct Env<'a> {
    pub pipes: &'a RefCell<PipePool>,
    pub bufs: &'a RefCell<BufPool>,
    pub scratch: &'a RefCell<Scratch>,
    pub timers: &'a Timers,
    pub metrics: &'a Local,
    /// Splice through pooled pipes (else every burst is copied).
    pub splice: bool,
    /// With `splice`: copy a direction's bursts until one fills the scratch buffer, and splice
    /// from the next (a short response costs less copied once than moved into a pipe and out of
    /// it; a stream pays one buffer's copy). `false` splices from the first burst: passthrough
    /// always sets it, the relay's tests clear it to put short bursts through the pipes.
    pub copy_first: bool,
    pub idle: Duration,
    /// Stamp the first byte relayed from the back end to the client (for the first-byte latency).
    pub timing: bool,
}

/// What one burst of a direction did.
pub(crate) enum Burst {
    /// Moved `n` bytes; `more` when the source probably has more right now (the read filled
    /// all the room it had), so the next burst need not wait for readiness.
    Moved { n: usize, more: bool },
    /// Nothing to read after all (a spurious wake-up): wait for readiness.
    WouldBlock,
    /// The source ended its stream.
    Eof,
    /// Moved bytes, then the source ended its stream (found by the read right after): the bytes
    /// went out corked, for the FIN to go with them.
    Last,
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
    /// The worker's wheel watches this pair for idleness (else [`Pair::watch`] does).
    deadline: Option<&'a Deadline<'a>>,
    /// Directions that have reached end of stream.
    ended: Cell<u8>,
    /// Pass one side's end of stream on and keep the other direction going (else the first end
    /// closes both ways).
    half_close: bool,
    /// Not half-closing, and one direction ended: the other stops at its next wake-up.
    closing: Cell<bool>,
    /// Directions waiting for their destination to take bytes (POLLOUT).
    waiting_out: Cell<u8>,
    /// TCP_NODELAY is still to be set on the back end's socket ([`Ends::nodelay_later`]).
    nodelay_later: Cell<bool>,
}

impl<'a> Pair<'a> {
    pub fn new(client: &'a Socket, backend: &'a Socket) -> Self {
        Self {
            client,
            backend,
            last_activity: Cell::new(Instant::now()),
            deadline: None,
            ended: Cell::new(0),
            half_close: true,
            closing: Cell::new(false),
            waiting_out: Cell::new(0),
            nodelay_later: Cell::new(false),
        }
    }

    /// A pair whose idleness `deadline` watches (it shuts both sockets down when it fires).
    pub fn watched(client: &'a Socket, backend: &'a Socket, deadline: &'a Deadline<'a>) -> Self {
        Self { deadline: Some(deadline), ..Self::new(client, backend) }
    }

    /// Bytes moved: the idle clock restarts.
    #[inline]
    pub fn touch(&self) {
        match self.deadline {
            Some(d) => d.touch(),
            None => self.last_activity.set(Instant::now()),
        }
    }

    /// How the pair treats its ends (else: half-closing, TCP_NODELAY already set).
    pub fn ends(self, ends: Ends) -> Self {
        self.nodelay_later.set(ends.nodelay_later);
        Self { half_close: ends.half_close, ..self }
    }

    /// Bytes are about to go to `dst`: the back end's TCP_NODELAY, if still to be set, is set
    /// first ([`Ends::nodelay_later`]).
    #[inline]
    pub(crate) fn before_send(&self, dst: &Socket) {
        if self.nodelay_later.get() && std::ptr::eq(dst, self.backend) {
            self.nodelay_later.set(false);
            dst.set_nodelay();
        }
    }

    /// A direction reached end of stream; `dst` is the socket it wrote to.
    /// - Half-closing: the FIN goes on with a shutdown of `dst`'s write half. The direction that
    ///   ends last skips it: both sockets are closed right after, and the close sends the same FIN.
    /// - Not half-closing (the first end closes both ways): `dst` is shut down both ways, which
    ///   sends the FIN and wakes the other direction's wait for data; that direction then stops
    ///   without reading ([`closing`](Self::closing)). One waiting for its destination to drain is
    ///   woken by shutting both sockets down.
    pub(crate) fn pass_end(&self, dst: &Socket) {
        let ended = self.ended.get() + 1;
        self.ended.set(ended);
        if ended >= 2 {
            return;
        }
        if self.half_close {
            dst.shutdown(Shutdown::Write);
            return;
        }
        self.closing.set(true);
        if self.waiting_out.get() > 0 {
            self.abort();
        } else {
            dst.shutdown(Shutdown::Both);
        }
    }

    /// Not half-closing and the other direction has ended: stop without reading more.
    pub(crate) fn closing(&self) -> bool {
        self.closing.get()
    }

    /// Waits until `dst` takes bytes again (counted, so that an end of stream without half-close
    /// knows to wake this wait).
    pub(crate) async fn writable(&self, dst: &Socket) -> io::Result<u32> {
        self.waiting_out.set(self.waiting_out.get() + 1);
        let r = dst.poll(POLLOUT).await;
        self.waiting_out.set(self.waiting_out.get() - 1);
        r
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
#[allow(clippy::manual_async_fn)] // an `async move` block: its arguments are stored once
pub fn relay<'a>(
    env: &'a Env<'a>,
    client: &'a Socket,
    backend: &'a Socket,
    ends: Ends,
) -> impl Future<Output = Relayed> + 'a {
    async move {
        let deadline = env.timers.arm([Some(client), Some(backend)], env.idle);
        let pair = Pair::watched(client, backend, &deadline).ends(ends);
        let kind = if env.splice { RelayKind::Splice } else { RelayKind::Buffered };
        let up = Moved::new(false);
        let down = Moved::new(env.timing);
        let to_backend = Dir { pair: &pair, env, src: client, dst: backend, moved: &up };
        let to_client = Dir { pair: &pair, env, src: backend, dst: client, moved: &down };
        let (a, b) = tokio::join!(direction(&to_backend), direction(&to_client));
        Relayed {
            kind,
            end: end_of(a.and(b), deadline.fired()),
            to_backend: up.bytes(),
            to_client: down.bytes(),
            first_to_client: down.first(),
        }
    }
}

/// One direction of a relay: what its loop needs, behind one reference.
struct Dir<'a> {
    pair: &'a Pair<'a>,
    env: &'a Env<'a>,
    src: &'a Socket,
    dst: &'a Socket,
    moved: &'a Moved,
}

/// One direction, `src` → `dst`, until `src` ends its stream (then `dst`'s write half is shut
/// down) or an error (then both sockets are, which ends the other direction too).
///
/// One flat loop, on purpose: an idle connection's task holds two of these (waiting on a poll),
/// and each nested `async fn` would add its own state to every connection's task. The bursts
/// themselves are [`splice::fill`]/[`splice::drain`] and [`copy::read`]/[`copy::send`].
#[allow(clippy::manual_async_fn)] // an `async move` block: its arguments are stored once
fn direction<'a>(d: &'a Dir<'a>) -> impl Future<Output = io::Result<()>> + 'a {
    async move {
        macro_rules! or_abort {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => {
                        d.pair.abort();
                        return Err(e);
                    }
                }
            };
        }
        // `src` is known to have data (the last burst filled its room, or the peer's FIN was seen:
        // the next read returns the rest or 0), so the next burst needs no poll first.
        let mut ready = false;
        let mut hup = false;
        let mut budget = Budget::default();
        let mut peeks = PEEK_BURSTS;
        // Copied until a burst fills its room (`Env::copy_first`), spliced from then on.
        let mut streaming = !d.env.copy_first;
        loop {
            if !ready {
                hup = or_abort!(d.src.poll(POLLIN | POLLRDHUP).await) & (POLLRDHUP | POLLHUP) != 0;
                if d.pair.closing() {
                    return Ok(());
                }
            }
            let peek = peeks > 0;
            peeks = peeks.saturating_sub(1);
            // A burst: spliced through a pipe lent for it, or copied (no splice, not a stream yet,
            // or no pipe). Each arm keeps its own state across its await, so the two share the
            // space.
            let burst = if let Some(mut loan) = (d.env.splice && streaming).then(|| splice::loan(d.env)).flatten() {
                let burst = or_abort!(splice::fill(loan.get(), d.src, peek));
                if let Burst::Moved { .. } | Burst::Last = burst {
                    let last = matches!(burst, Burst::Last);
                    d.pair.touch();
                    d.pair.before_send(d.dst);
                    while or_abort!(splice::drain(loan.get(), d.dst, d.moved, last)) {
                        or_abort!(d.pair.writable(d.dst).await);
                        if d.pair.closing() {
                            return Ok(());
                        }
                    }
                    d.pair.touch();
                }
                burst
            } else {
                let (burst, rest) = or_abort!(copy::read(d.pair, d.env, d.src, d.dst, d.moved, peek));
                if let Some(rest) = rest {
                    let sent = copy_rest(d, &rest).await;
                    d.env.bufs.borrow_mut().give(rest);
                    or_abort!(sent);
                    if d.pair.closing() {
                        return Ok(());
                    }
                }
                burst
            };
            match burst {
                Burst::Eof | Burst::Last => {
                    d.pair.pass_end(d.dst);
                    return Ok(());
                }
                Burst::WouldBlock => ready = false,
                Burst::Moved { n, more } => {
                    ready = more || hup;
                    streaming |= more;
                    budget.spend(n);
                    if budget.renew() {
                        // Yield through the ring, not to the scheduler: the poll completes at
                        // once, but only after the worker has parked, which is when tokio-uring
                        // hands every task's queued submissions to the kernel (a `yield_now`
                        // would let the other tasks run, yet leave their new operations, an
                        // accept included, unsubmitted for as long as this one stays busy).
                        ready = false;
                    }
                }
            }
        }
    }
}

/// Sends what a full `dst` did not take of a copied burst, as it drains.
#[allow(clippy::manual_async_fn)] // an `async move` block: its arguments are stored once
fn copy_rest<'a>(d: &'a Dir<'a>, rest: &'a [u8]) -> impl Future<Output = io::Result<()>> + 'a {
    async move {
        let mut from = 0;
        while !copy::send(d.dst, rest, &mut from, d.moved)? {
            d.pair.touch();
            d.pair.writable(d.dst).await?;
            if d.pair.closing() {
                return Ok(());
            }
        }
        d.pair.touch();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Local, Registry};
    use std::fs::{File, OpenOptions};
    use std::os::fd::OwnedFd;

    /// What a worker lends a relay, for one test.
    struct Rig {
        pipes: RefCell<PipePool>,
        bufs: RefCell<BufPool>,
        scratch: RefCell<Scratch>,
        timers: Timers,
        metrics: Local,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                pipes: RefCell::new(PipePool::new(2)),
                bufs: RefCell::new(BufPool::default()),
                scratch: RefCell::new(Scratch::default()),
                timers: Timers::default(),
                metrics: Local::new(Registry::new(1).slot(0)),
            }
        }

        fn env(&self, splice: bool) -> Env<'_> {
            Env {
                pipes: &self.pipes,
                bufs: &self.bufs,
                scratch: &self.scratch,
                timers: &self.timers,
                metrics: &self.metrics,
                splice,
                copy_first: false,
                idle: Duration::from_secs(60),
                timing: false,
            }
        }
    }

    /// A TCP pair on loopback, both ends non-blocking: (the end the relay uses, its peer).
    fn tcp_pair() -> (Socket, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (peer, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (Socket::from(OwnedFd::from(ours)), peer)
    }

    /// Runs `f` on a ring of its own, in a thread of its own: what it returns, within 30 s.
    fn on_ring<T, F>(f: impl FnOnce() -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: Future<Output = T>,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(tokio_uring::start(f()));
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("the relay did not end")
    }

    /// A source whose last bytes and FIN are both waiting: the direction sends the bytes and the
    /// FIN in one segment (its peer counts the segments it receives), through a pipe and copied.
    /// Without the read that looks for the end right after the bytes, they leave in two.
    #[test]
    fn the_fin_leaves_with_the_last_bytes() {
        for splice in [true, false] {
            let (got, segments) = on_ring(move || async move {
                let (src, mut writer) = tcp_pair();
                let (dst, mut reader) = tcp_pair();
                std::io::Write::write_all(&mut writer, b"the last bytes").unwrap();
                writer.shutdown(Shutdown::Write).unwrap();
                // Both have arrived once the source reports its peer's FIN.
                while src.poll(POLLIN | POLLRDHUP).await.unwrap() & POLLRDHUP == 0 {}
                let reader_sock = Socket::from(OwnedFd::from(reader.try_clone().unwrap()));
                let before = reader_sock.segments_in().unwrap();
                let rig = Rig::new();
                let env = rig.env(splice);
                let pair = Pair::new(&src, &dst);
                let moved = Moved::new(false);
                direction(&Dir { pair: &pair, env: &env, src: &src, dst: &dst, moved: &moved }).await.unwrap();
                let mut got = Vec::new();
                reader.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                std::io::Read::read_to_end(&mut reader, &mut got).unwrap();
                let segments = reader_sock.segments_in().unwrap() - before;
                (got, segments)
            });
            assert_eq!(got, b"the last bytes");
            assert_eq!(segments, 1, "splice {splice}: the bytes and the FIN in one segment");
        }
    }

    /// With `copy_first`, a short response is copied (no pipe is ever lent) and a stream is
    /// spliced once a burst has filled the scratch buffer; every byte arrives either way.
    #[test]
    fn a_direction_copies_until_a_burst_fills_the_scratch_buffer_then_splices() {
        for size in [100usize, 4 << 20] {
            let sent: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let to_send = sent.clone();
            let (got, pipes) = on_ring(move || async move {
                let (src, mut writer) = tcp_pair();
                let (dst, mut reader) = tcp_pair();
                let sent = to_send;
                let w = std::thread::spawn(move || {
                    std::io::Write::write_all(&mut writer, &sent).unwrap();
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                let r = std::thread::spawn(move || {
                    let mut got = Vec::new();
                    reader.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    std::io::Read::read_to_end(&mut reader, &mut got).unwrap();
                    got
                });
                let rig = Rig::new();
                let env = Env { copy_first: true, ..rig.env(true) };
                let pair = Pair::new(&src, &dst);
                let moved = Moved::new(false);
                direction(&Dir { pair: &pair, env: &env, src: &src, dst: &dst, moved: &moved }).await.unwrap();
                w.join().unwrap();
                drop(dst);
                let pipes = rig.pipes.borrow().live();
                (r.join().unwrap(), pipes)
            });
            assert!(got == sent, "{size} bytes: {} arrived", got.len());
            if size < SCRATCH_SIZE {
                assert_eq!(pipes, 0, "a short response is copied");
            } else {
                assert!(pipes > 0, "a stream is spliced");
            }
        }
    }

    /// A back end made for first bytes gets TCP_NODELAY before the first bytes relayed to it,
    /// and never when the client sends nothing more (spliced and copied).
    #[test]
    fn the_back_end_gets_nodelay_before_the_first_relayed_bytes() {
        for (splice, upload) in [(true, true), (false, true), (true, false)] {
            let (before, after, end, got) = on_ring(move || async move {
                let (client, mut client_peer) = tcp_pair();
                let (backend, mut backend_peer) = tcp_pair();
                let rig = Rig::new();
                let env = rig.env(splice);
                if upload {
                    std::io::Write::write_all(&mut client_peer, b"more").unwrap();
                }
                client_peer.shutdown(Shutdown::Write).unwrap();
                backend_peer.shutdown(Shutdown::Write).unwrap();
                let before = backend.nodelay();
                let done = relay(&env, &client, &backend, Ends { nodelay_later: true, ..Ends::default() }).await;
                let mut got = Vec::new();
                backend_peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = std::io::Read::read_to_end(&mut backend_peer, &mut got);
                (before, backend.nodelay(), done.end, got)
            });
            assert!(!before, "the test's socket starts with Nagle on");
            assert_eq!(end, End::Closed);
            assert_eq!(after, upload, "splice {splice}, upload {upload}");
            assert_eq!(got, if upload { &b"more"[..] } else { &b""[..] });
        }
    }

    /// Without half-close, the first end of stream shuts the other socket down both ways: the
    /// other direction, waiting for data there, stops without reading what is queued, and its
    /// peer sees the FIN.
    #[test]
    fn without_half_close_the_first_end_closes_both_ways() {
        let (end, eof, from_client) = on_ring(move || async move {
            let (client, mut client_peer) = tcp_pair();
            let (backend, mut backend_peer) = tcp_pair();
            let rig = Rig::new();
            let env = rig.env(true);
            backend_peer.shutdown(Shutdown::Write).unwrap();
            let done = relay(&env, &client, &backend, Ends { half_close: false, ..Ends::default() }).await;
            // The client's later bytes go nowhere: the relay is over.
            let _ = std::io::Write::write_all(&mut client_peer, b"late");
            let mut got = Vec::new();
            client_peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let eof = std::io::Read::read_to_end(&mut client_peer, &mut got).map(|_| got.is_empty());
            backend_peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut from_client = Vec::new();
            let _ = std::io::Read::read_to_end(&mut backend_peer, &mut from_client);
            (done.end, eof.ok(), from_client)
        });
        assert_eq!(end, End::Closed);
        assert_eq!(eof, Some(true), "the client reads the FIN");
        assert!(from_client.is_empty(), "{from_client:?}");
    }

    /// Without half-close, a direction waiting for its destination to drain when the other way
    /// ends is woken and stops: the relay ends closed, not with an error (spliced and copied).
    /// Here the client uploads more than the back end's buffers hold, and the back end, which
    /// reads none of it, answers and ends its stream.
    #[test]
    fn without_half_close_a_blocked_direction_ends_cleanly() {
        for splice in [true, false] {
            let end = on_ring(move || async move {
                let (client, client_peer) = tcp_pair();
                let (backend, mut backend_peer) = tcp_pair();
                let rig = Rig::new();
                let env = rig.env(splice);
                let writer = std::thread::spawn(move || {
                    let mut client_peer = client_peer;
                    let chunk = vec![7u8; 1 << 20];
                    for _ in 0..64 {
                        if std::io::Write::write_all(&mut client_peer, &chunk).is_err() {
                            break;
                        }
                    }
                });
                let ends = async {
                    // Long enough for the upload to fill the back end's buffers, after which
                    // that direction waits for POLLOUT.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    std::io::Write::write_all(&mut backend_peer, b"bye").unwrap();
                    backend_peer.shutdown(Shutdown::Write).unwrap();
                };
                let (done, ()) =
                    tokio::join!(relay(&env, &client, &backend, Ends { half_close: false, ..Ends::default() }), ends);
                // Closed, as the connection's task closes them: the writer stops.
                drop((client, backend, backend_peer));
                let _ = writer.join();
                done.end
            });
            assert_eq!(end, End::Closed, "splice {splice}");
        }
    }

    /// /dev/zero → /dev/null never waits: both are always ready. A direction that kept going
    /// while it can would never give the worker back, and another task's ring operation (here a
    /// poll, as an accept or another connection's read would be) would never be submitted: the
    /// test then times out. With the byte budget it yields through the ring every
    /// [`YIELD_AFTER`] bytes.
    #[test]
    fn a_direction_that_never_waits_still_lets_other_tasks_run() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tokio_uring::start(async move {
                let zero = Socket::from(OwnedFd::from(File::open("/dev/zero").unwrap()));
                let null = Socket::from(OwnedFd::from(OpenOptions::new().write(true).open("/dev/null").unwrap()));
                let rig = Rig::new();
                let env = rig.env(true);
                let pair = Pair::new(&zero, &null);
                let moved = Moved::new(false);
                let d = Dir { pair: &pair, env: &env, src: &zero, dst: &null, moved: &moved };
                // Another connection's operations go through the ring while the direction runs.
                let other = Socket::from(OwnedFd::from(OpenOptions::new().write(true).open("/dev/null").unwrap()));
                let enough = 8 * YIELD_AFTER as u64;
                tokio::select! {
                    biased;
                    r = direction(&d) => panic!("/dev/zero ended: {r:?}"),
                    () = async {
                        while moved.bytes() < enough {
                            other.poll(crate::sys::POLLOUT).await.unwrap();
                        }
                    } => {}
                }
                tx.send(moved.bytes()).unwrap();
            })
        });
        let moved = rx.recv_timeout(Duration::from_secs(60)).expect("the relay never let another task run");
        assert!(moved >= 8 * YIELD_AFTER as u64, "moved {moved}");
    }
}
