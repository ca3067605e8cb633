//! Accepted → Accepted with its real addresses, on a listener with `accept_proxy`: the
//! connection must come from `trusted_sources` (else `proxy_untrusted`, refused before a byte is
//! read) and start with a PROXY header of an accepted version (else `proxy_header`), complete
//! within `hello_timeout_ms`.
//!
//! The header is read exactly, so that the hello reader starts at the first TLS byte: each read
//! first peeks (`MSG_PEEK`) at what is queued, and only the header's own bytes are consumed —
//! all of them once the header is complete, or everything queued while it is still a prefix
//! (those bytes can only be header). A header and hello that arrive together cost one peek and
//! one read.

use super::{Accepted, Proxied, Resources};
use crate::config::Listener;
use crate::metrics::DropReason;
use crate::proxy_protocol::{self, Accept, Decoded};
use std::net::Shutdown;
use std::time::Duration;

/// Checks the source and reads the header of `conn`, filling in [`Accepted::proxied`] (and the
/// TLVs to pass on) from it.
pub(super) async fn read(
    res: &Resources,
    listener: &Listener,
    accept: Accept,
    conn: &mut Accepted,
    timeout: Duration,
) -> Result<(), DropReason> {
    let trusted = conn.client.peer_addr().is_ok_and(|p| listener.trusted_sources.contains(p.ip()));
    if !trusted {
        crate::debug_every_second!(worker = res.worker, peer = ?conn.client.peer_addr().ok(), "PROXY header from an untrusted source");
        conn.client.set_reset_on_close();
        return Err(DropReason::ProxyUntrusted);
    }
    let read = tokio::time::timeout(timeout, read_header(res, conn, accept)).await;
    match read {
        Ok(r) => r,
        Err(_) => {
            // The peek is still pending; shutting down completes it so the fd is freed.
            conn.client.shutdown(Shutdown::Both);
            crate::debug_every_second!(worker = res.worker, peer = ?conn.client.peer_addr().ok(), "PROXY header not complete in time");
            Err(DropReason::ProxyHeader)
        }
    }
}

async fn read_header(res: &Resources, conn: &mut Accepted, accept: Accept) -> Result<(), DropReason> {
    let cap = match accept {
        Accept::V1 => proxy_protocol::V1_MAX,
        _ => proxy_protocol::V2_MAX,
    };
    // Header bytes consumed while it was still incomplete (rare: a header split over segments).
    let mut consumed: Vec<u8> = Vec::new();
    let mut peeked = res.bufs.borrow_mut().take(cap);
    let outcome = loop {
        let want = cap - consumed.len();
        if want == 0 {
            break Err("longer than allowed");
        }
        let (r, b) = conn.client.peek(peeked, want).await;
        peeked = b;
        match r {
            Ok(0) | Err(_) => break Err("closed before its PROXY header was complete"),
            Ok(_) => {}
        }
        let decoded = if consumed.is_empty() {
            decode_into(conn, &peeked, accept)
        } else {
            let mut all = consumed.clone();
            all.extend_from_slice(&peeked);
            decode_into(conn, &all, accept)
        };
        match decoded {
            Ok(Some(len)) => {
                let take = len - consumed.len();
                if take == peeked.len() {
                    // No hello behind the header yet: its ACK goes now, so a sender whose
                    // Nagle holds the hello for it does not wait (see `Socket::ack_now`).
                    conn.client.ack_now();
                }
                break consume(res, conn, take).await.map_err(|()| "closed while its PROXY header was read");
            }
            Ok(None) => {
                conn.client.ack_now();
                let n = peeked.len();
                if consume(res, conn, n).await.is_err() {
                    break Err("closed while its PROXY header was read");
                }
                consumed.extend_from_slice(&peeked);
            }
            Err(why) => break Err(why),
        }
    };
    res.bufs.borrow_mut().give(peeked);
    outcome.map_err(|why| {
        crate::debug_every_second!(worker = res.worker, peer = ?conn.client.peer_addr().ok(), why, "bad PROXY header");
        DropReason::ProxyHeader
    })
}

/// Decodes; on a complete header fills in `conn` and returns its length.
fn decode_into(conn: &mut Accepted, bytes: &[u8], accept: Accept) -> Result<Option<usize>, &'static str> {
    match proxy_protocol::decode(bytes, accept) {
        Decoded::NeedMore => Ok(None),
        Decoded::Invalid(why) => Err(why),
        Decoded::Header(h) => {
            conn.proxied = h.addresses.map(|(source, destination)| Proxied { source, destination });
            if !h.tlvs.is_empty() {
                proxy_protocol::passable_tlvs(h.tlvs, &mut conn.tlvs);
            }
            Ok(Some(h.len))
        }
    }
}

/// Reads and discards exactly `n` bytes that a peek showed are queued.
async fn consume(res: &Resources, conn: &Accepted, mut n: usize) -> Result<(), ()> {
    let mut buf = res.bufs.borrow_mut().take(n.min(proxy_protocol::V2_MAX));
    let mut ok = Ok(());
    while n > 0 {
        buf.clear();
        let (r, b) = conn.client.recv_at_most(buf, n).await;
        buf = b;
        match r {
            Ok(0) | Err(_) => {
                ok = Err(());
                break;
            }
            Ok(k) => n -= k.min(n),
        }
    }
    res.bufs.borrow_mut().give(buf);
    ok
}
