//! The TLS relay of a terminating route: plaintext between an established TLS client and the
//! back end, through the record layer ([`Session`]) in buffers of our own ([`RecordBuf`]).
//!
//! - **Nothing is held while idle.** Each direction waits for readiness (io_uring POLL_ADD)
//!   without a buffer, takes a record buffer to read, and gives it back once what it read has
//!   gone out. Only a record the client has half sent is kept, in a buffer of its size.
//! - **Back end → client**: one `readv` puts the back end's bytes straight into the plaintext
//!   slots of up to four full 16 KiB records, which are sealed where they lie and leave in one
//!   `send`: no copy between the two system calls, no allocation.
//! - **Client → back end**: records are opened in place where `recv` put them, and their
//!   plaintext leaves in one vectored `send`.
//! - A direction that read a full buffer reads again at once (more is queued); one that read
//!   less waits for readiness first. Every direction, user space and kernel TLS alike, yields
//!   through the ring after [`relay::YIELD_AFTER`] bytes, so a bulk stream that never has to
//!   wait cannot hold the worker.
//! - **One outgoing queue.** Records for the client leave in the order they were sealed
//!   (sequence numbers and key changes depend on it), whichever direction sealed them: data
//!   from the back end, our KeyUpdate answering the client's, alerts. Each direction waits until
//!   what it queued has gone, so the queue holds at most one buffer of data.
//!
//! Half-close in both directions: the client's close_notify (or EOF) shuts the back end's write
//! side; the back end's EOF sends close_notify and shuts the client's write side; the other
//! direction keeps flowing. The direction that ends second leaves its FIN to the close that
//! follows ([`Pair::end_of_stream`]), one system call fewer. A TLS error sends its alert and ends both. The idle watchdog, abort
//! and the outcome are the passthrough relay's ([`relay::Pair`], [`relay::Relayed`]).

use super::buffers::{RecordBuf, RECORDS};
use super::handshake::Established;
use super::ktls;
use super::record::{self, alert, content, Event, Fatal, Message, Session, Version, MAX_PLAINTEXT};
use crate::metrics::RelayKind;
use crate::relay::{self, Pair, Relayed};
use crate::sys::ktls::{self as abi, Direction};
use crate::sys::{Socket, POLLHUP, POLLIN, POLLOUT, POLLRDHUP};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Plaintext ranges passed to one vectored send to the back end.
const MAX_IOV: usize = 8;

/// A piece of the queue for the client.
enum Seg {
    /// Sealed data records in a record buffer.
    Records(RecordBuf, Range<usize>),
    /// Control records (alerts, KeyUpdate); `usize` bytes of it already sent.
    Bytes(Vec<u8>, usize),
}

impl Seg {
    fn pending(&self) -> &[u8] {
        match self {
            Self::Records(b, r) => &b[r.clone()],
            Self::Bytes(v, at) => &v[*at..],
        }
    }

    /// Marks `n` of the pending bytes sent; whether the piece is done.
    fn advance(&mut self, n: usize) -> bool {
        match self {
            Self::Records(_, r) => {
                r.start += n;
                r.start >= r.end
            }
            Self::Bytes(v, at) => {
                *at += n;
                *at >= v.len()
            }
        }
    }
}

/// Records sealed for the client, not yet sent, in order.
#[derive(Default)]
struct Out {
    segs: VecDeque<Seg>,
}

impl Out {
    fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Queues control records (`bytes`, emptied).
    fn push_bytes(&mut self, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        match self.segs.back_mut() {
            Some(Seg::Bytes(v, _)) => v.append(bytes),
            _ => self.segs.push_back(Seg::Bytes(std::mem::take(bytes), 0)),
        }
    }

    /// One non-blocking vectored send of what is queued; drops the pieces that went entirely.
    /// `last`: nothing follows but the close (MSG_MORE: the FIN joins these bytes' segment).
    fn send_to(&mut self, sock: &Socket, last: bool) -> io::Result<usize> {
        let mut iov = [IoSlice::new(&[]); 4];
        let mut k = 0;
        for (slot, seg) in iov.iter_mut().zip(self.segs.iter()) {
            *slot = IoSlice::new(seg.pending());
            k += 1;
        }
        let mut n =
            if last { sock.try_send_vectored_before_close(&iov[..k])? } else { sock.try_send_vectored(&iov[..k])? };
        let sent = n;
        while n > 0 {
            let Some(front) = self.segs.front_mut() else { break };
            let len = front.pending().len();
            let take = n.min(len);
            if front.advance(take) {
                self.segs.pop_front();
            }
            n -= take;
        }
        if self.segs.is_empty() {
            // An idle connection keeps no queue.
            self.segs = VecDeque::new();
        }
        Ok(sent)
    }
}

struct Shared<'a> {
    pair: Pair<'a>,
    client: &'a Socket,
    backend: &'a Socket,
    session: RefCell<Box<Session>>,
    out: RefCell<Out>,
    /// Tasks inside [`Shared::flush`]: one of them sends whatever is queued.
    flushers: Cell<u8>,
    to_backend: Cell<u64>,
    to_client: Cell<u64>,
    first_to_client: Cell<Option<Instant>>,
    /// Kernel TLS: the client asked for our KeyUpdate (sent before our next data).
    ktls_tx_update: Cell<bool>,
    /// The client → back end direction ended cleanly: the back end's EOF ends the relay.
    client_done: Cell<bool>,
}

/// A TLS failure of the connection, as the relay's error (counted as `relay_errors{cause="tls"}`).
impl<'a> Shared<'a> {
    fn new(client: &'a Socket, backend: &'a Socket, session: Box<Session>, half_close: bool) -> Self {
        Self {
            pair: Pair::new(client, backend).ends(relay::Ends { half_close, ..relay::Ends::default() }),
            client,
            backend,
            session: RefCell::new(session),
            out: RefCell::new(Out::default()),
            flushers: Cell::new(0),
            to_backend: Cell::new(0),
            to_client: Cell::new(0),
            first_to_client: Cell::new(None),
            ktls_tx_update: Cell::new(false),
            client_done: Cell::new(false),
        }
    }
}

fn tls_error(f: Fatal) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, f.why)
}

impl Shared<'_> {
    /// `n` bytes read from the back end for the client: the idle watchdog, the time of the
    /// first byte, the count.
    fn read_from_backend(&self, n: usize) {
        self.pair.touch();
        if self.first_to_client.get().is_none() {
            self.first_to_client.set(Some(Instant::now()));
        }
        self.to_client.set(self.to_client.get() + n as u64);
    }

    /// Sends everything queued for the client, waiting for room as needed; returns once the
    /// queue is empty (whoever queued it).
    async fn flush(&self) -> io::Result<()> {
        self.flushers.set(self.flushers.get() + 1);
        let res = self.flush_inner(false).await;
        self.flushers.set(self.flushers.get() - 1);
        res
    }

    /// As [`flush`](Self::flush), for the last bytes before the close (see [`Out::send_to`]).
    async fn flush_before_close(&self) -> io::Result<()> {
        self.flushers.set(self.flushers.get() + 1);
        let res = self.flush_inner(true).await;
        self.flushers.set(self.flushers.get() - 1);
        res
    }

    async fn flush_inner(&self, last: bool) -> io::Result<()> {
        loop {
            let sent = {
                let mut out = self.out.borrow_mut();
                if out.is_empty() {
                    return Ok(());
                }
                out.send_to(self.client, last)
            };
            match sent {
                Ok(_) => self.pair.touch(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.client.poll(POLLOUT).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends the connection for `f`: its alert, if any, goes out with what is queued (one
    /// non-blocking attempt: a client that does not read gets the close alone).
    fn fail(&self, f: Fatal) -> io::Error {
        tracing::debug!(reason = f.why, "TLS relay: closing the connection");
        if let Some(desc) = f.alert {
            let mut ctl = Vec::new();
            self.session.borrow_mut().seal_alert(desc, &mut ctl);
            let mut out = self.out.borrow_mut();
            out.push_bytes(&mut ctl);
            while !out.is_empty() && matches!(out.send_to(self.client, false), Ok(n) if n > 0) {}
        }
        tls_error(f)
    }
}

/// Relays plaintext between the client of an established TLS session and `backend` until both
/// directions are closed (see the module docs). `idle` closes both with no traffic either way.
/// With the traffic secrets kept ([`Established`] made for kernel TLS), the connection goes to
/// kernel TLS when it can ([`ktls`]), else stays with the user-space record layer.
pub async fn relay(
    client: &Socket,
    est: Box<Established>,
    backend: &Socket,
    idle: Duration,
    half_close: bool,
) -> Relayed {
    let Established { session, leftover, secrets, mut pending, .. } = *est;
    let s = Shared::new(client, backend, session, half_close);
    // The handshake's held-back ticket is queued first: it leaves with the first answer, or
    // sooner (see `client_to_backend_inner`).
    s.out.borrow_mut().push_bytes(&mut pending);
    let kernel = Cell::new(false);
    let both = async {
        let leftover = match secrets {
            // Boxed: kernel TLS is the rare path, and its futures would otherwise make every
            // connection's future (held while it is idle) as large as theirs.
            Some(secrets) => match Box::pin(to_kernel(&s, leftover, &secrets)).await? {
                None => {
                    kernel.set(true);
                    return Box::pin(async {
                        let (up, down) = tokio::join!(ktls_client_to_backend(&s), ktls_backend_to_client(&s));
                        up.and(down)
                    })
                    .await;
                }
                Some(leftover) => leftover,
            },
            None => leftover,
        };
        let (up, down) = tokio::join!(client_to_backend(&s, leftover), backend_to_client(&s));
        up.and(down)
    };
    // The idle watchdog, inline (as `Pair::watch`, whose argument would take a second copy of
    // `both` in this future: both directions' state, held while the connection is idle).
    let mut both = std::pin::pin!(both);
    let (res, idle) = tokio::select! {
        out = &mut both => (out, false),
        () = s.pair.idle(idle) => {
            s.pair.abort();
            ((&mut both).await, true)
        }
    };
    Relayed {
        kind: if kernel.get() { RelayKind::Ktls } else { RelayKind::Tls },
        end: relay::end_of(res, idle),
        to_backend: s.to_backend.get(),
        to_client: s.to_client.get(),
        first_to_client: s.first_to_client.get(),
    }
}

/// Hands the connection to kernel TLS if it is in a state the kernel can take over: the
/// client's leftover bytes are whole records, opened (and their plaintext sent) here first,
/// all of them data. `Ok(None)`: the kernel has it; `Ok(Some(leftover))`: it stays in user space
/// (the leftover, possibly already consumed, goes on to the user-space relay).
async fn to_kernel(
    s: &Shared<'_>,
    mut leftover: Vec<u8>,
    secrets: &rustls::ExtractedSecrets,
) -> io::Result<Option<Vec<u8>>> {
    let whole = {
        let session = s.session.borrow();
        let mut at = 0;
        while let Ok(Some(n)) = session.record_len(&leftover[at..]) {
            if at + n > leftover.len() {
                break;
            }
            at += n;
        }
        at == leftover.len()
    };
    if !whole {
        return Ok(Some(leftover));
    }
    let (consumed, _) = process_records(s, &mut leftover).await?;
    // What rustls sealed (a held-back ticket) leaves before the kernel seals anything.
    s.flush().await?;
    let session = s.session.borrow();
    if consumed < leftover.len() || session.peer_closed() || session.rekeyed() || !s.out.borrow().is_empty() {
        return Ok(Some(leftover[consumed..].to_vec()));
    }
    match ktls::offload(s.client, &session, secrets) {
        Ok(()) => Ok(None),
        Err(false) => Ok(Some(Vec::new())),
        Err(true) => Err(io::Error::new(io::ErrorKind::Unsupported, "the kernel refused the TLS keys")),
    }
}

async fn client_to_backend(s: &Shared<'_>, leftover: Vec<u8>) -> io::Result<()> {
    let result = client_to_backend_inner(s, leftover).await;
    s.client_done.set(result.is_ok());
    match &result {
        // The FIN to the back end (skipped when the other direction has ended: the close that
        // follows sends it).
        Ok(()) => pass_fin(&s.pair, s.backend),
        Err(_) => s.pair.abort(),
    }
    result
}

/// The ciphertext the client → back end direction holds between reads.
enum Held {
    /// Nothing (a record boundary): an idle connection.
    None,
    /// The start of a record, in a buffer of its own size (the client paused in mid-record).
    Stash(Vec<u8>),
    /// `usize` bytes at the front of a record buffer.
    Buf(RecordBuf, usize),
}

async fn client_to_backend_inner(s: &Shared<'_>, mut leftover: Vec<u8>) -> io::Result<()> {
    // The first wait keeps a held-back ticket (the answer to the leftover request carries it).
    let mut first = !leftover.is_empty();
    if !first {
        // No request came with the Finished: nothing to wait for.
        s.flush().await?;
    }
    if s.session.borrow().peer_closed() {
        // close_notify came with the handshake's leftover (kernel TLS declined).
        return Ok(());
    }
    let mut held = Held::None;
    if !leftover.is_empty() {
        // What came with the client's Finished: opened where it lies, in the handshake's buffer.
        let (consumed, closed) = process_records(s, &mut leftover).await?;
        if closed {
            return Ok(());
        }
        if consumed < leftover.len() {
            held = Held::Stash(leftover[consumed..].to_vec());
        }
    }
    drop(leftover);
    // A full read (more is queued): read again without waiting for readiness.
    let mut ready = false;
    let mut budget = relay::Budget::default();
    loop {
        if budget.renew() {
            // As in `backend_to_client_inner`: an upload that never waits yields after a budget.
            ready = false;
        }
        if !s.out.borrow().is_empty() && s.flushers.get() == 0 && !(ready || first) {
            // A held-back ticket whose answer did not come before the client spoke again.
            s.flush().await?;
        }
        first = false;
        if !ready {
            held = match held {
                // Going idle: no buffer, only a partial record's bytes in one of their size.
                Held::Buf(b, 0) => {
                    drop(b);
                    Held::None
                }
                Held::Buf(b, len) => Held::Stash(b[..len].to_vec()),
                h => h,
            };
            s.client.poll(POLLIN | POLLRDHUP).await?;
        }
        let (mut buf, mut len) = match std::mem::replace(&mut held, Held::None) {
            Held::Buf(b, len) => (b, len),
            Held::None => (RecordBuf::take(), 0),
            Held::Stash(v) => {
                let mut b = RecordBuf::take();
                b[..v.len()].copy_from_slice(&v);
                (b, v.len())
            }
        };
        let n = match s.client.try_recv(&mut buf[len..]) {
            // EOF without close_notify: a truncation, but the bytes relayed so far stand.
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                held = Held::Buf(buf, len);
                ready = false;
                continue;
            }
            Err(e) => return Err(e),
        };
        s.pair.touch();
        ready = len + n == buf.len();
        budget.spend(n);
        len += n;
        let (consumed, closed) = process_records(s, &mut buf[..len]).await?;
        if closed {
            return Ok(());
        }
        // What is left is the start of one record, shorter than the largest (every complete
        // one was consumed), and a buffer holds two of those: room remains for the next read.
        buf.copy_within(consumed..len, 0);
        held = Held::Buf(buf, len - consumed);
    }
}

/// Opens the complete records at the front of `buf` in place and sends their plaintext to the
/// back end; answers KeyUpdates. Returns the bytes consumed and whether the client closed.
async fn process_records(s: &Shared<'_>, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut at = 0;
    loop {
        let mut ranges: [Range<usize>; MAX_IOV] = std::array::from_fn(|_| 0..0);
        let mut k = 0;
        let mut closed = false;
        let mut failed = None;
        {
            let mut session = s.session.borrow_mut();
            while k < MAX_IOV {
                let len = match session.record_len(&buf[at..]) {
                    Ok(Some(n)) if n <= buf.len() - at => n,
                    Ok(_) => break,
                    Err(f) => {
                        failed = Some(f);
                        break;
                    }
                };
                match session.open(&mut buf[at..at + len]) {
                    Ok(Event::Data(r)) => {
                        if r.start < r.end {
                            ranges[k] = at + r.start..at + r.end;
                            k += 1;
                        }
                    }
                    Ok(Event::Closed) => closed = true,
                    Ok(Event::Nothing) => {}
                    Err(f) => {
                        failed = Some(f);
                        break;
                    }
                }
                at += len;
                if closed {
                    break;
                }
            }
        }
        send_plaintext(s, buf, &mut ranges[..k]).await?;
        if let Some(f) = failed {
            return Err(s.fail(f));
        }
        if closed || k < MAX_IOV {
            return Ok((at, closed));
        }
    }
}

/// Sends the plaintext at `ranges` of `buf` to the back end, all of it.
async fn send_plaintext(s: &Shared<'_>, buf: &[u8], ranges: &mut [Range<usize>]) -> io::Result<()> {
    let mut first = 0;
    while first < ranges.len() {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = ranges.len() - first;
        for (slot, r) in iov.iter_mut().zip(&ranges[first..]) {
            *slot = IoSlice::new(&buf[r.clone()]);
        }
        match s.backend.try_send_vectored(&iov[..n]) {
            Ok(mut sent) => {
                s.to_backend.set(s.to_backend.get() + sent as u64);
                s.pair.touch();
                while sent > 0 && first < ranges.len() {
                    let r = &mut ranges[first];
                    let take = sent.min(r.len());
                    r.start += take;
                    sent -= take;
                    if r.start >= r.end {
                        first += 1;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                s.backend.poll(POLLOUT).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn backend_to_client(s: &Shared<'_>) -> io::Result<()> {
    let result = backend_to_client_inner(s).await;
    if result.is_err() {
        s.pair.abort();
    }
    result
}

/// The back end's next bytes, in a record buffer taken only once the back end is readable
/// (nothing is held while it is idle): `read` reads into the buffer. `ready` (the last read
/// filled its buffer: more is queued) and `hup` (the back end's FIN was seen: the next reads
/// return the rest, then 0) skip the wait for readiness; a read that would block clears both.
async fn read_backend(
    s: &Shared<'_>,
    ready: &mut bool,
    hup: &mut bool,
    mut read: impl FnMut(&mut RecordBuf) -> io::Result<usize>,
) -> io::Result<(RecordBuf, usize)> {
    loop {
        if !*ready && !*hup {
            *hup = s.backend.poll(POLLIN | POLLRDHUP).await? & (POLLRDHUP | POLLHUP) != 0;
        }
        let mut buf = RecordBuf::take();
        match read(&mut buf) {
            Ok(n) => return Ok((buf, n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *ready = false;
                *hup = false;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn backend_to_client_inner(s: &Shared<'_>) -> io::Result<()> {
    let (prefix, suffix) = {
        let session = s.session.borrow();
        (session.prefix(), session.suffix())
    };
    let stride = prefix + MAX_PLAINTEXT + suffix;
    // `ready`: a full read (more is queued); `hup`: the back end's FIN was seen (the next reads
    // return the rest, then 0). Either way, read without waiting for readiness.
    let (mut ready, mut hup) = (false, false);
    let mut budget = relay::Budget::default();
    loop {
        if budget.renew() {
            // Fair to the client's direction (a KeyUpdate, a close) and to the worker's other
            // connections: with the back end always ready and the client's socket always taking
            // more, this loop would never wait. A poll through the ring completes at once, but
            // only once the worker has parked (as in `relay`).
            s.backend.poll(POLLIN | POLLRDHUP).await?;
        }
        let (mut buf, n) = read_backend(s, &mut ready, &mut hup, |buf| {
            let mut iov: [IoSliceMut<'_>; RECORDS] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
            for (v, slot) in iov.iter_mut().zip(buf.chunks_mut(stride)) {
                *v = IoSliceMut::new(&mut slot[prefix..prefix + MAX_PLAINTEXT]);
            }
            s.backend.try_recv_vectored(&mut iov)
        })
        .await?;
        if n == 0 {
            drop(buf);
            let mut ctl = Vec::new();
            s.session.borrow_mut().seal_alert(alert::CLOSE_NOTIFY, &mut ctl);
            s.out.borrow_mut().push_bytes(&mut ctl);
            if s.client_done.get() {
                // The relay ends here and the close follows at once: close_notify and the FIN
                // in one segment.
                s.flush_before_close().await?;
            } else {
                s.flush().await?;
            }
            pass_fin(&s.pair, s.client);
            return Ok(());
        }
        s.read_from_backend(n);
        ready = n == RECORDS * MAX_PLAINTEXT;
        budget.spend(n);
        let records = n.div_ceil(MAX_PLAINTEXT);
        let mut ctl = Vec::new();
        let sealed = {
            let mut session = s.session.borrow_mut();
            session.reserve(records as u64, &mut ctl).and_then(|()| {
                let mut end = 0;
                for i in 0..records {
                    let len = (n - i * MAX_PLAINTEXT).min(MAX_PLAINTEXT);
                    end = i * stride + session.seal(content::APPLICATION_DATA, &mut buf[i * stride..], len)?;
                }
                Ok(end)
            })
        };
        let end = sealed.map_err(|f| s.fail(f))?;
        {
            let mut out = s.out.borrow_mut();
            out.push_bytes(&mut ctl);
            out.segs.push_back(Seg::Records(buf, 0..end));
        }
        s.flush().await?;
    }
}

// ---- kernel TLS: the client socket carries plaintext --------------------------------------

/// Sends one control record (an alert, our KeyUpdate) through kernel TLS, waiting for room.
async fn ktls_send_record(s: &Shared<'_>, typ: u8, payload: &[u8]) -> io::Result<()> {
    loop {
        match abi::send_record(s.client, typ, payload) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                s.client.poll(POLLOUT).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Ends a kernel TLS connection for `f`: its alert (one non-blocking try), then the error.
fn ktls_fail(s: &Shared<'_>, f: Fatal) -> io::Error {
    tracing::debug!(reason = f.why, "kernel TLS relay: closing the connection");
    if let Some(desc) = f.alert {
        let mut session = s.session.borrow_mut();
        if !session.is_closed() {
            session.mark_closed();
            let _ = abi::send_record(s.client, content::ALERT, &record::alert_payload(desc));
        }
    }
    tls_error(f)
}

/// Our KeyUpdate, then our next key to the kernel (no await between the two, so nothing is
/// sent under the old key after the KeyUpdate).
async fn ktls_update_tx(s: &Shared<'_>) -> io::Result<()> {
    ktls_send_record(s, content::HANDSHAKE, &record::KEY_UPDATE_NOT_REQUESTED).await?;
    let r = ktls::rekey(s.client, &mut s.session.borrow_mut(), Direction::Tx);
    r.map_err(|e| ktls_rekey_error(s, e))
}

fn ktls_rekey_error(s: &Shared<'_>, e: ktls::RekeyError) -> io::Error {
    match e {
        ktls::RekeyError::Fatal(f) => ktls_fail(s, f),
        // Counted as relay_errors{cause="ktls"}.
        ktls::RekeyError::Refused(e) => e,
    }
}

async fn ktls_client_to_backend(s: &Shared<'_>) -> io::Result<()> {
    let result = ktls_client_to_backend_inner(s).await;
    match &result {
        // The FIN to the back end (skipped when the other direction has ended: the close that
        // follows sends it).
        Ok(()) => pass_fin(&s.pair, s.backend),
        Err(_) => s.pair.abort(),
    }
    result
}

async fn ktls_client_to_backend_inner(s: &Shared<'_>) -> io::Result<()> {
    let mut ready = false;
    let mut budget = relay::Budget::default();
    loop {
        if budget.renew() {
            // As in user space: an upload that never waits yields through the ring after a
            // budget (the poll completes at once, once the worker has parked).
            ready = false;
        }
        if !ready {
            s.client.poll(POLLIN | POLLRDHUP).await?;
        }
        let mut buf = RecordBuf::take();
        let (n, typ) = match abi::recv_record(s.client, &mut buf) {
            Ok((0, _)) => return Ok(()),
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready = false;
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EBADMSG) => {
                return Err(ktls_fail(s, Fatal { alert: Some(alert::BAD_RECORD_MAC), why: "bad record MAC" }));
            }
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                return Err(ktls_fail(s, Fatal { alert: Some(alert::RECORD_OVERFLOW), why: "record too large" }));
            }
            Err(e) => return Err(e),
        };
        s.pair.touch();
        ready = n == buf.len();
        budget.spend(n);
        let message = s.session.borrow_mut().classify(typ, &buf[..n]);
        match message.map_err(|f| ktls_fail(s, f))? {
            Message::Data => {
                let mut whole = [Range { start: 0, end: n }];
                send_plaintext(s, &buf, &mut whole).await?;
            }
            Message::Closed => return Ok(()),
            Message::Nothing => {}
            Message::KeyUpdate { requested } => {
                // Ours goes out before our next data (the back end → client direction sends
                // it), as in user space.
                if requested {
                    s.ktls_tx_update.set(true);
                }
                let r = ktls::rekey(s.client, &mut s.session.borrow_mut(), Direction::Rx);
                r.map_err(|e| ktls_rekey_error(s, e))?;
            }
        }
    }
}

async fn ktls_backend_to_client(s: &Shared<'_>) -> io::Result<()> {
    let result = ktls_backend_to_client_inner(s).await;
    if result.is_err() {
        s.pair.abort();
    }
    result
}

async fn ktls_backend_to_client_inner(s: &Shared<'_>) -> io::Result<()> {
    // Records the kernel sealed under the current key, at most: one per send, one per 16 KiB.
    let mut records = s.session.borrow().seqs().0;
    let (mut ready, mut hup) = (false, false);
    let mut budget = relay::Budget::default();
    loop {
        if budget.renew() {
            // Fair, as in user space (`backend_to_client_inner`): with the back end always
            // ready and the kernel always taking more, this loop would never wait.
            s.backend.poll(POLLIN | POLLRDHUP).await?;
        }
        let (buf, n) = read_backend(s, &mut ready, &mut hup, |buf| s.backend.try_recv(buf)).await?;
        if n == 0 {
            drop(buf);
            let open = !s.session.borrow().is_closed();
            if open {
                s.session.borrow_mut().mark_closed();
                ktls_send_record(s, content::ALERT, &record::alert_payload(alert::CLOSE_NOTIFY)).await?;
            }
            pass_fin(&s.pair, s.client);
            return Ok(());
        }
        s.read_from_backend(n);
        ready = n == buf.len();
        budget.spend(n);
        let (version, limit) = {
            let session = s.session.borrow();
            (session.version(), session.limit())
        };
        records += 1 + n.div_ceil(MAX_PLAINTEXT) as u64;
        if records + 2 * RECORDS as u64 >= limit {
            if version != Version::Tls13 {
                return Err(ktls_fail(
                    s,
                    Fatal { alert: Some(alert::CLOSE_NOTIFY), why: "TLS 1.2 keys at their limit" },
                ));
            }
            ktls_update_tx(s).await?;
            records = 0;
        }
        let mut at = 0;
        while at < n {
            match s.client.try_send(&buf[at..n]) {
                Ok(m) => {
                    at += m;
                    s.pair.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.client.poll(POLLOUT).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
pub(super) fn geometry_fits(session: &Session) -> bool {
    let stride = session.prefix() + MAX_PLAINTEXT + session.suffix();
    stride <= MAX_PLAINTEXT + super::buffers::OVERHEAD && super::record::HEADER <= session.prefix()
}

/// A direction reached end of stream: its FIN goes on to `dst`, unless the other direction has
/// ended too (the close that follows sends it).
fn pass_fin(pair: &relay::Pair<'_>, dst: &Socket) {
    pair.pass_end(dst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    /// The kernel TLS loops, run over plain sockets (what they see of kernel TLS is plaintext
    /// on the client socket; a read without a record-type message is application data): a
    /// direction whose source holds more than [`relay::YIELD_AFTER`] bytes and whose
    /// destination takes them all never has to wait, and without the budget would move them all
    /// before another task's ring operation (a poll, as an accept would be) is submitted. The
    /// other task sees the count between 0 and all of it only if the loop yielded on the way.
    fn yields_after_its_budget(upload: bool) {
        let (src, feed) = UnixStream::pair().unwrap();
        let (dst, sink) = UnixStream::pair().unwrap();
        for s in [&feed, &dst] {
            let _ = socket2::SockRef::from(s).set_send_buffer_size(4 << 20);
        }
        let room = [&feed, &dst].iter().map(|s| socket2::SockRef::from(*s).send_buffer_size().unwrap()).min().unwrap();
        // Unix stream sockets charge queued bytes to the sender's buffer (with per-skb
        // overhead): fill at most half of it.
        let total = (room / 2).min(4 * relay::YIELD_AFTER);
        if total < relay::YIELD_AFTER + (64 << 10) {
            eprintln!("skipped: socket buffers of {room} bytes cannot hold more than one budget");
            return;
        }
        feed.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 64 << 10];
        let mut fed = 0;
        while fed < total {
            fed += (&feed).write(&chunk[..(total - fed).min(chunk.len())]).expect("the feed fits its buffer");
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tokio_uring::start(async move {
                let (src, dst) = (Socket::from(OwnedFd::from(src)), Socket::from(OwnedFd::from(dst)));
                for s in [&src, &dst] {
                    s.set_nonblocking().unwrap();
                }
                let suite = crate::tls::tests::record_layer::suites()
                    .into_iter()
                    .find(|s| s.version() == &rustls::version::TLS13)
                    .unwrap();
                let est = crate::tls::tests::record_layer::pair_for(suite, b"").est;
                let (client, backend) = if upload { (&src, &dst) } else { (&dst, &src) };
                let s = Shared::new(client, backend, est.session, true);
                let moved = || if upload { s.to_backend.get() } else { s.to_client.get() };
                let other =
                    Socket::from(OwnedFd::from(std::fs::OpenOptions::new().write(true).open("/dev/null").unwrap()));
                let mut seen = Vec::new();
                let direction = async {
                    if upload {
                        ktls_client_to_backend_inner(&s).await
                    } else {
                        ktls_backend_to_client_inner(&s).await
                    }
                };
                tokio::select! {
                    biased;
                    r = direction => panic!("the direction ended: {r:?}"),
                    () = async {
                        while moved() < total as u64 {
                            other.poll(crate::sys::POLLOUT).await.unwrap();
                            seen.push(moved());
                        }
                    } => {}
                }
                tx.send(seen).unwrap();
            })
        });
        let seen = rx.recv_timeout(Duration::from_secs(60)).expect("the relay never let another task run");
        drop((feed, sink));
        let total = total as u64;
        assert!(
            seen.iter().any(|&n| n > 0 && n < total),
            "upload {upload}: another task ran only at {seen:?} of {total} bytes"
        );
    }

    #[test]
    fn the_kernel_tls_download_yields_after_its_budget() {
        yields_after_its_budget(false);
    }

    #[test]
    fn the_kernel_tls_upload_yields_after_its_budget() {
        yields_after_its_budget(true);
    }
}
