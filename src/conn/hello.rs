//! Accepted → Routed: read the ClientHello (the whole hello within `hello_timeout_ms`) and
//! route it ([`super::routing`]) while the parse still borrows the buffer, so each hello is parsed
//! once.

use super::routing::{route, Decision};
use super::trace::Trace;
use super::{Accepted, Resources, Routed, Snapshots};
use crate::config::{Limits, Listener};
use crate::hello::{self as parser, ClientHello, Parsed, Reject};
use crate::metrics::DropReason;
use crate::relay::BUF_SIZE;
use crate::sys::Socket;
use std::io;
use std::net::Shutdown;
use std::time::Duration;

/// Room for a ClientHello of `max_hello_bytes` re-framed into many small records.
fn hello_capacity(max_hello_bytes: usize) -> usize {
    (2 * max_hello_bytes + 512).max(BUF_SIZE)
}

/// Reads and routes the hello; the routed connection, or why it is dropped.
pub(super) async fn read(
    res: &Resources,
    rt: &Limits,
    snaps: &dyn Snapshots,
    listener: Option<&Listener>,
    conn: &Accepted,
    t: &mut Trace,
) -> Result<Routed, DropReason> {
    let mut buf = res.bufs.borrow_mut().take(hello_capacity(rt.max_hello_bytes));
    // A connection handed over by another process comes with its hello bytes.
    buf.extend_from_slice(&conn.early);
    let decide = |hello: &ClientHello<'_>, buf_len: usize| {
        t.hello_done = res.now();
        t.hello_bytes = Some(hello.len() as u64);
        let d = route(res, snaps, listener, conn, hello, buf_len, t);
        t.routed_at = res.now();
        d
    };
    let read = tokio::time::timeout(
        // Behind a PROXY header the header and the hello share the one timeout.
        conn.hello_deadline.map_or(Duration::from_millis(rt.hello_timeout_ms), |d| {
            d.saturating_duration_since(std::time::Instant::now())
        }),
        read_until_complete(&conn.client, buf, rt.max_hello_bytes, decide),
    )
    .await;
    let (decided, buf) = match read {
        Err(_) => {
            // The recv is still pending; shutting down completes it so the fd is freed.
            conn.client.shutdown(Shutdown::Both);
            return Err(DropReason::HelloTimeout);
        }
        Ok(x) => x,
    };
    match decided {
        Ok(Decision { header: None, id, route, check_server, sni_hash }) => {
            Ok(Routed { id, route, first: buf, header: 0, check_server, sni_hash })
        }
        Ok(Decision { header: Some(mut first), id, route, check_server, sni_hash }) => {
            let header = first.len();
            first.extend_from_slice(&buf);
            res.bufs.borrow_mut().give(buf);
            Ok(Routed { id, route, first, header, check_server, sni_hash })
        }
        Err(reason) => {
            res.bufs.borrow_mut().give(buf);
            Err(reason)
        }
    }
}

/// Reads until the buffer holds a complete ClientHello (or a reason to drop the connection), then
/// hands the parsed hello to `decide` while it still borrows the buffer: one parse per hello.
async fn read_until_complete<R>(
    client: &Socket,
    mut buf: Vec<u8>,
    max: usize,
    mut decide: impl FnMut(&ClientHello<'_>, usize) -> Result<R, DropReason>,
) -> (Result<R, DropReason>, Vec<u8>) {
    if !buf.is_empty() {
        match parser::parse(&buf, max) {
            Parsed::NeedMore => {}
            Parsed::Complete(hello) => return (decide(&hello, buf.len()), buf),
            Parsed::Rejected(r) => return (Err(drop_reason(r)), buf),
        }
    }
    loop {
        if buf.len() == buf.capacity() {
            return (Err(DropReason::Oversize), buf);
        }
        let (res, b) = client.recv(buf).await;
        buf = b;
        match res {
            Ok(0) => return (Err(DropReason::ClientClosed), buf),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return (Err(DropReason::ClientClosed), buf),
        }
        let verdict = match parser::parse(&buf, max) {
            Parsed::NeedMore => continue,
            Parsed::Complete(hello) => decide(&hello, buf.len()),
            Parsed::Rejected(r) => Err(drop_reason(r)),
        };
        return (verdict, buf);
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
