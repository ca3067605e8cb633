//! The TLS relay of a terminating route: plaintext between a handshaken rustls connection and
//! the back end.
//!
//! Ring sockets take owned buffers and are not `AsyncRead`/`AsyncWrite`, so this is the small
//! adapter between the two:
//! - ciphertext from the client arrives by io_uring recv into a reused `Vec<u8>`;
//! - what rustls produces (records for the client, plaintext for the back end) leaves its buffers
//!   by non-blocking send(2) ([`Direct`], `plaintext_to_backend`), waiting for POLLOUT only when a
//!   socket's send buffer is full, so no byte is copied out of rustls first.
//!
//! The two directions share the connection through a `RefCell` (one thread, no borrow is held
//! across an await); records leave in the order of rustls's single outgoing queue, whichever
//! direction flushes it. The idle watchdog, abort and the outcome are the passthrough relay's
//! ([`relay::Pair`], [`relay::Relayed`]).

use super::handshake::READ_SIZE;
use crate::metrics::RelayKind;
use crate::relay::{self, Pair, Relayed};
use crate::sys::{Socket as TcpStream, POLLOUT};
use rustls::ServerConnection;
use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// Relay reads start at one record's worth and grow to this once a read fills its buffer:
/// a bulk transfer then moves four full records per system call, while an idle or chatty
/// connection keeps small buffers. A multiple of 16 KiB, so that plaintext from the back end
/// becomes whole records rather than a full one and a sliver.
const RELAY_READ_SIZE: usize = 64 * 1024;

/// Grows a relay buffer whose last read filled it (see [`RELAY_READ_SIZE`]).
fn grow_if_full(buf: &mut Vec<u8>, n: usize) {
    if n == buf.capacity() && n < RELAY_READ_SIZE {
        buf.clear();
        buf.reserve_exact(RELAY_READ_SIZE);
    }
}

struct Shared<'a> {
    pair: Pair<'a>,
    client: &'a TcpStream,
    backend: &'a TcpStream,
    tls: RefCell<ServerConnection>,
    to_backend: Cell<u64>,
    to_client: Cell<u64>,
    first_to_client: Cell<Option<Instant>>,
}

impl Shared<'_> {
    /// Sends every record rustls has queued. The records go to the kernel straight from rustls's
    /// own buffers ([`Direct`]), one copy fewer than collecting them into a buffer for an io_uring
    /// send. Both directions may call this; rustls's queue keeps the records in order, and no
    /// borrow of it is held across the wait for room.
    async fn flush_to_client(&self) -> io::Result<()> {
        loop {
            let sent = {
                let mut tls = self.tls.borrow_mut();
                if !tls.wants_write() {
                    return Ok(());
                }
                tls.write_tls(&mut Direct(self.client))
            };
            if let Err(e) = sent {
                wait_for_room(self.client, e).await?;
            }
        }
    }

    /// Sends the plaintext rustls has decrypted to the back end, straight from rustls's buffer
    /// ([`Direct`]); true once the client's close_notify has been read.
    async fn plaintext_to_backend(&self) -> io::Result<bool> {
        loop {
            let sent = {
                let mut tls = self.tls.borrow_mut();
                let mut reader = tls.reader();
                let sent = match reader.fill_buf() {
                    Ok([]) => return Ok(true),
                    Ok(chunk) => Direct(self.backend).write(chunk),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                };
                if let Ok(n) = sent {
                    reader.consume(n);
                }
                sent
            };
            match sent {
                Ok(n) => self.to_backend.set(self.to_backend.get() + n as u64),
                Err(e) => wait_for_room(self.backend, e).await?,
            }
        }
    }

    fn abort(&self) {
        self.pair.abort();
    }
}

/// Relays plaintext between a handshaken TLS client and `backend` until both directions are
/// closed. Half-close in both directions: the client's close_notify (or EOF) shuts the back
/// end's write side; the back end's EOF sends close_notify and shuts the client's write side;
/// the other direction keeps flowing. `idle` closes both with no traffic either way.
pub async fn relay(client: &TcpStream, tls: ServerConnection, backend: &TcpStream, idle: Duration) -> Relayed {
    let s = Shared {
        pair: Pair::new(client, backend),
        client,
        backend,
        tls: RefCell::new(tls),
        to_backend: Cell::new(0),
        to_client: Cell::new(0),
        first_to_client: Cell::new(None),
    };
    let both = async {
        let (up, down) = tokio::join!(client_to_backend(&s), backend_to_client(&s));
        up.and(down)
    };
    let (res, idle) = s.pair.watch(idle, both).await;
    Relayed {
        kind: RelayKind::Tls,
        end: relay::end_of(res, idle),
        to_backend: s.to_backend.get(),
        to_client: s.to_client.get(),
        first_to_client: s.first_to_client.get(),
    }
}

/// `io::Write` over a socket's non-blocking send(2): the kernel has copied the bytes when a
/// write returns, so rustls can hand over its buffers without copying them out first. A full
/// send buffer is `WouldBlock`, for [`wait_for_room`].
struct Direct<'a>(&'a TcpStream);

/// After a failed [`Direct`] write: waits for POLLOUT on a full send buffer, retries at once
/// after EINTR, and passes any other error on.
async fn wait_for_room(sock: &TcpStream, e: io::Error) -> io::Result<()> {
    match e.kind() {
        io::ErrorKind::WouldBlock => sock.poll(POLLOUT).await.map(drop),
        io::ErrorKind::Interrupted => Ok(()),
        _ => Err(e),
    }
}

impl Write for Direct<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_send_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_send_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn client_to_backend(s: &Shared<'_>) -> io::Result<()> {
    let result = client_to_backend_inner(s).await;
    match &result {
        Ok(()) => {
            s.backend.shutdown(Shutdown::Write);
        }
        Err(_) => s.abort(),
    }
    result
}

async fn client_to_backend_inner(s: &Shared<'_>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(READ_SIZE);
    // Application data that arrived with the handshake's last flight.
    let mut closed = s.plaintext_to_backend().await?;
    while !closed {
        buf.clear();
        let (res, b) = s.client.recv(buf).await;
        buf = b;
        if res? == 0 {
            // EOF without close_notify: a truncation, but the bytes relayed so far stand.
            return Ok(());
        }
        s.pair.touch();
        // rustls holds at most 16 KiB of decrypted plaintext: pass it on after every record
        // batch, or a client uploading full-size records fills it and the read fails.
        let mut at = 0;
        let mut bad = None;
        while at < buf.len() && !closed {
            let processed = {
                let mut tls = s.tls.borrow_mut();
                let mut rest = &buf[at..];
                let read = tls.read_tls(&mut rest)?;
                at = buf.len() - rest.len();
                if read == 0 {
                    break;
                }
                tls.process_new_packets().map(|_| ())
            };
            if let Err(e) = processed {
                bad = Some(e);
                break;
            }
            closed = s.plaintext_to_backend().await?;
        }
        let n = buf.len();
        grow_if_full(&mut buf, n);
        // Alerts, key-update answers: whatever rustls has to say goes out first.
        s.flush_to_client().await?;
        if let Some(e) = bad {
            tracing::debug!("TLS error from client: {e}");
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
    Ok(())
}

async fn backend_to_client(s: &Shared<'_>) -> io::Result<()> {
    let result = backend_to_client_inner(s).await;
    if result.is_err() {
        s.abort();
    }
    result
}

async fn backend_to_client_inner(s: &Shared<'_>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let (res, b) = s.backend.recv(buf).await;
        buf = b;
        let n = res?;
        if n == 0 {
            s.tls.borrow_mut().send_close_notify();
            s.flush_to_client().await?;
            s.client.shutdown(Shutdown::Write);
            return Ok(());
        }
        s.pair.touch();
        let now = Instant::now();
        if s.first_to_client.get().is_none() {
            s.first_to_client.set(Some(now));
        }
        s.to_client.set(s.to_client.get() + n as u64);
        s.tls.borrow_mut().writer().write_all(&buf[..n])?;
        grow_if_full(&mut buf, n);
        s.flush_to_client().await?;
    }
}
