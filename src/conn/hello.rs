//! Accepted → Routed: read the ClientHello (the whole hello within `hello_timeout_ms`) and route
//! it while the parse still borrows the buffer, so each hello is parsed once.
//!
//! Routing: the dedicated IP of the local address, then the SNI, then the fallbacks
//! ([`crate::route::Table::lookup`]); on a passthrough route `min_tls` against the best known
//! version offered, and the PROXY header, which goes in front of the hello bytes.

use super::trace::Trace;
use super::{proxy_header, Accepted, Resources, Routed};
use crate::config::Config;
use crate::hello::{self as parser, ClientHello, Parsed, Reject};
use crate::metrics::DropReason;
use crate::relay::BUF_SIZE;
use crate::route::{Action, Miss, ProxyProtocol};
use crate::sys::Socket;
use std::io;
use std::net::{IpAddr, Shutdown};
use std::time::Duration;

/// Room for a ClientHello of `max_hello_bytes` re-framed into many small records.
fn hello_capacity(max_hello_bytes: usize) -> usize {
    (2 * max_hello_bytes + 512).max(BUF_SIZE)
}

/// Reads and routes the hello; the routed connection, or why it is dropped.
pub(super) async fn read(res: &Resources, cfg: &Config, conn: &Accepted, t: &mut Trace) -> Result<Routed, DropReason> {
    let rt = &cfg.runtime;
    let buf = res.bufs.borrow_mut().take(hello_capacity(rt.max_hello_bytes));
    let decide = |hello: &ClientHello<'_>, buf_len: usize| {
        t.hello_done = res.now();
        t.hello_bytes = Some(hello.len() as u64);
        let d = route(res, cfg, conn, hello, buf_len, t);
        t.routed_at = res.now();
        d
    };
    let read = tokio::time::timeout(
        Duration::from_millis(rt.hello_timeout_ms),
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
        Ok(Decision { header: None, id, check_server }) => Ok(Routed { id, first: buf, check_server }),
        Ok(Decision { header: Some(mut first), id, check_server }) => {
            first.extend_from_slice(&buf);
            res.bufs.borrow_mut().give(buf);
            Ok(Routed { id, first, check_server })
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

/// Where a complete hello goes, and the PROXY header (if any) to send before it.
struct Decision {
    id: crate::route::RouteId,
    header: Option<Vec<u8>>,
    check_server: Option<crate::route::TlsVersion>,
}

/// Routes a complete hello: dedicated IP, SNI, fallback; `min_tls`; the PROXY header.
fn route(
    res: &Resources,
    cfg: &Config,
    conn: &Accepted,
    hello: &ClientHello<'_>,
    buf_len: usize,
    t: &mut Trace,
) -> Result<Decision, DropReason> {
    if t.log {
        t.sni = hello.sni().map(str::to_owned);
        t.alpn = hello.alpn().next().map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned());
    }
    let table = &cfg.table;
    // getsockname only when the answer matters: dedicated IPs exist (or for a PROXY header below).
    let mut local = None;
    let ip: IpAddr = if table.dedicated_ips().next().is_some() {
        let a = conn.client.local_addr().unwrap_or(conn.listen);
        local = Some(a);
        a.ip()
    } else {
        conn.listen.ip()
    };
    let (id, how) = table.lookup(ip, hello.sni()).map_err(|m| match m {
        Miss::NoSni => DropReason::NoSni,
        Miss::UnknownSni => DropReason::UnknownSni,
    })?;
    t.how = Some(how);
    t.route = Some(id);
    let route = table.route(id);
    // A terminating route leaves the version to rustls, which answers with a protocol_version
    // alert. A passthrough route compares the best version offered (known versions only, so no
    // unknown value can lift an old offer past it); and when the client also offered versions
    // below min_tls, the version the back end picks is checked in its ServerHello.
    let mut check_server = None;
    if matches!(route.action, Action::Passthrough) {
        if hello.max_version() < route.min_tls.0 {
            return Err(DropReason::BelowMinTls);
        }
        if hello.min_version() < route.min_tls.0 {
            check_server = Some(route.min_tls);
        }
    }
    res.metrics.routed(how);
    if route.proxy_protocol == ProxyProtocol::None || route.action.is_terminate() {
        return Ok(Decision { id, header: None, check_server });
    }
    let local = local.unwrap_or_else(|| conn.client.local_addr().unwrap_or(conn.listen));
    let alpn = hello.alpn().next();
    let header =
        proxy_header(res, route, &conn.client, local, hello.sni(), alpn.as_ref().map(|p| p.as_bytes()), buf_len);
    Ok(Decision { id, header: Some(header), check_server })
}
