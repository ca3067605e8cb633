//! Accepted → Routed: read the ClientHello (the whole hello within `hello_timeout_ms`) and
//! route it ([`super::routing`]) while the parse still borrows the bytes, so each hello is parsed
//! once; a refused hello gets the alert a TLS server would send, then the close.
//!
//! Memory: nothing is held while nothing has arrived (the connection waits with a POLL_ADD, and
//! its timeout is a slot in the worker's wheel). Each read is a non-blocking recv(2) into the
//! worker's scratch buffer. A hello that arrives whole (the common case) is parsed there and
//! copied once, at its exact size, into the bytes that go to the back end; the bytes of a hello
//! that arrives in pieces are kept in a buffer that grows with what arrived, never past what the
//! record and handshake headers say the hello needs ([`Framing`]'s `at_least`), so a client
//! that sends 20 bytes and stops costs 64 bytes, not the largest hello allowed.
//!
//! Work: [`Framing::advance`] after each read looks only at the bytes it has not seen, and the
//! hello is parsed once, when Framing says it is complete, so a hello in 1-byte records over
//! 1-byte segments costs work linear in its bytes. Legal fragmentation is accepted up to
//! [`Framing::max_raw_bytes`] (a 6,000-byte hello in 1-byte records is 36 KB of records).

use super::routing::{route, Decision, Refusal};
use super::trace::Trace;
use super::{Accepted, Resources, Routed, Snapshots};
use crate::config::{Limits, Listener};
use crate::hello::{self as parser, Framing, Parsed, Progress, Reject};
use crate::metrics::DropReason;
use crate::sys::{POLLIN, POLLRDHUP};
use std::borrow::Cow;
use std::io;
use std::net::Shutdown;

/// The least a partial hello's buffer is grown by (within what the headers say it needs), so
/// a client that dribbles bytes does not make a reallocation per byte.
const MIN_HELD: usize = 64;
/// Reads of a refused client's unread bytes before the close (so the close sends a FIN after
/// the alert, not a reset that could overtake it).
const DRAIN_READS: usize = 4;

/// What routing a hello needs besides the connection: the worker's snapshots (the route is
/// chosen in the one current when the hello is complete) and the listener's settings (from the
/// snapshot current at accept).
struct Where<'a, S> {
    snaps: &'a S,
    listener: Option<&'a Listener>,
}

impl<S> Clone for Where<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Where<'_, S> {}

/// Reads and routes the hello; the routed connection, or why it is refused.
pub(super) async fn read<S: Snapshots>(
    res: &Resources,
    lim: &Limits,
    snaps: &S,
    listener: Option<&Listener>,
    conn: &Accepted,
    t: &mut Trace,
) -> Result<Routed, Refusal> {
    // Behind a PROXY header the header and the hello share the one timeout.
    let timeout =
        conn.hello_deadline.map_or(lim.hello_timeout(), |d| d.saturating_duration_since(std::time::Instant::now()));
    let deadline = res.timers.arm([Some(&conn.client), None], timeout);
    let at = Where { snaps, listener };
    let mut out = read_and_route(res, lim.max_hello_bytes(), at, conn, t).await;
    if let Err(r) = &mut out {
        if r.reason == DropReason::ClientClosed && deadline.fired() {
            // The wheel shut the socket down: that was the timeout, not the client.
            r.reason = DropReason::HelloTimeout;
        }
        if let Some(alert) = r.alert {
            send_alert(res, conn, alert);
        }
    }
    out
}

/// What one read made of the hello.
enum Step {
    /// Nothing (more) has arrived: wait for the socket.
    Wait,
    Done(Result<Routed, Refusal>),
}

async fn read_and_route<S: Snapshots>(
    res: &Resources,
    max_hello_bytes: usize,
    at: Where<'_, S>,
    conn: &Accepted,
    t: &mut Trace,
) -> Result<Routed, Refusal> {
    let mut hello = Partial::new(max_hello_bytes);
    // A connection handed over by another process comes with its hello bytes.
    if !conn.early.is_empty() {
        if let Step::Done(r) = hello.take(res, at, conn, t, &conn.early) {
            return r;
        }
    }
    loop {
        match hello.read(res, at, conn, t) {
            Step::Done(r) => return r,
            Step::Wait => {
                if conn.client.poll(POLLIN | POLLRDHUP).await.is_err() {
                    return Err(DropReason::ClientClosed.into());
                }
            }
        }
    }
}

/// The bytes of a hello received so far, and how far they have been framed.
struct Partial {
    framing: Framing,
    max_hello_bytes: usize,
    /// Bytes received so far when the hello did not come in one read (empty until then).
    held: Vec<u8>,
    /// The least the whole hello can take, as far as the headers seen say.
    at_least: usize,
}

impl Partial {
    fn new(max_hello_bytes: usize) -> Self {
        Self { framing: Framing::new(max_hello_bytes), max_hello_bytes, held: Vec::new(), at_least: MIN_HELD }
    }

    /// One non-blocking read into the worker's scratch buffer, and what it made of the hello.
    /// Synchronous: the scratch buffer is borrowed only here.
    fn read(&mut self, res: &Resources, at: Where<'_, impl Snapshots>, conn: &Accepted, t: &mut Trace) -> Step {
        let mut scratch = res.scratch.borrow_mut();
        let n = match conn.client.try_recv(&mut scratch) {
            Ok(0) => return Step::Done(Err(DropReason::ClientClosed.into())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
            Err(_) => return Step::Done(Err(DropReason::ClientClosed.into())),
        };
        let got = scratch.get(..n).unwrap_or_default();
        self.take(res, at, conn, t, got)
    }

    /// What the bytes `got` (just received) make of the hello.
    fn take(
        &mut self,
        res: &Resources,
        at: Where<'_, impl Snapshots>,
        conn: &Accepted,
        t: &mut Trace,
        got: &[u8],
    ) -> Step {
        if self.held.is_empty() {
            // The whole hello in one read: parsed where it landed, copied once to go on.
            match self.framing.advance(got) {
                Progress::Complete => return Step::Done(self.route(res, at, conn, t, Cow::Borrowed(got))),
                Progress::Rejected(r) => return Step::Done(Err(rejected(res, conn, r))),
                Progress::NeedMore { at_least } => self.at_least = at_least,
            }
            // The hello comes in pieces: the ACK of this one goes now (the listener's
            // delayed-ACK mode would hold it for our first response, which needs the rest).
            conn.client.ack_now();
            self.keep(got);
            return Step::Wait;
        }
        self.keep(got);
        if self.held.len() > Framing::max_raw_bytes(self.max_hello_bytes) {
            return Step::Done(Err(rejected(res, conn, Reject::TooLarge)));
        }
        match self.framing.advance(&self.held) {
            Progress::NeedMore { at_least } => {
                self.at_least = at_least;
                Step::Wait
            }
            Progress::Rejected(r) => Step::Done(Err(rejected(res, conn, r))),
            Progress::Complete => {
                let held = std::mem::take(&mut self.held);
                Step::Done(self.route(res, at, conn, t, Cow::Owned(held)))
            }
        }
    }

    /// Appends `got`, growing the buffer at most to what the headers say the hello needs
    /// (doubling within that, so a hello in tiny pieces costs amortised linear copying).
    fn keep(&mut self, got: &[u8]) {
        let need = self.held.len() + got.len();
        if need > self.held.capacity() {
            let grown = (self.held.capacity() * 2).max(MIN_HELD).min(self.at_least);
            self.held.reserve_exact(need.max(grown) - self.held.len());
        }
        self.held.extend_from_slice(got);
    }

    /// Parses and routes a complete hello: borrowed from the scratch buffer (the bytes to send on
    /// are then copied at their exact size) or gathered in `held` (which becomes those bytes).
    fn route(
        &self,
        res: &Resources,
        at: Where<'_, impl Snapshots>,
        conn: &Accepted,
        t: &mut Trace,
        bytes: Cow<'_, [u8]>,
    ) -> Result<Routed, Refusal> {
        let Decision { header, id, route, check_server, sni_hash } = self.decide(res, at, conn, t, &bytes)?;
        let (first, header) = match header {
            Some(mut h) => {
                let len = h.len();
                h.extend_from_slice(&bytes);
                (h, len)
            }
            None => (bytes.into_owned(), 0),
        };
        Ok(Routed { id, route, first, header, check_server, sni_hash })
    }

    /// The one parse of a complete hello, and the route it gets.
    fn decide(
        &self,
        res: &Resources,
        at: Where<'_, impl Snapshots>,
        conn: &Accepted,
        t: &mut Trace,
        bytes: &[u8],
    ) -> Result<Decision, Refusal> {
        match parser::parse(bytes, self.max_hello_bytes) {
            Parsed::Complete(hello) => {
                t.hello_done = res.now();
                t.hello_bytes = Some(hello.len() as u64);
                let d = route(res, at.snaps, at.listener, conn, &hello, bytes.len(), t);
                t.routed_at = res.now();
                d
            }
            Parsed::Rejected(r) => Err(rejected(res, conn, r)),
            // Framing said complete: the parse cannot want more (see hello::Framing).
            Parsed::NeedMore => Err(rejected(res, conn, Reject::Malformed("incomplete after framing"))),
        }
    }
}

/// A hello the parser refused: its drop reason and alert, and its debug line (peer and cause).
fn rejected(res: &Resources, conn: &Accepted, r: Reject) -> Refusal {
    let reason = drop_reason(r);
    let alert = r.alert();
    crate::debug_every_second!(
        worker = res.worker,
        peer = ?conn.peer(),
        reason = reason.as_str(),
        cause = %r,
        alert = alert.map(|a| a.as_str()),
        "hello refused"
    );
    Refusal { reason, alert, logged: true }
}

/// Sends `alert` before the close, without waiting (best effort: a client whose socket cannot
/// take 7 bytes gets the close alone), then ends the write side and reads what the client still
/// had in flight, so that the close that follows sends a FIN rather than a reset.
fn send_alert(res: &Resources, conn: &Accepted, alert: parser::Alert) {
    let record = alert.record();
    if matches!(conn.client.try_send(&record), Ok(n) if n == record.len()) {
        res.metrics.bump(|c| c.alerts_sent.bump(alert));
    }
    conn.client.shutdown(Shutdown::Write);
    let mut scratch = res.scratch.borrow_mut();
    for _ in 0..DRAIN_READS {
        if !matches!(conn.client.try_recv(&mut scratch), Ok(n) if n > 0) {
            break;
        }
    }
}

/// The drop reason of a rejected hello.
pub(super) fn drop_reason(r: Reject) -> DropReason {
    match r {
        Reject::NotTls { http: false } => DropReason::NotTls,
        Reject::NotTls { http: true } => DropReason::Http,
        Reject::SslV2 => DropReason::SslV2,
        Reject::Ssl3OrOlder => DropReason::Ssl3OrOlder,
        Reject::NoKnownVersion => DropReason::NoKnownVersion,
        Reject::TooLarge => DropReason::Oversize,
        _ => DropReason::Malformed,
    }
}
