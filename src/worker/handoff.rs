//! The receiving side of the hand-off (`[[listener]] handoff = "/path"`): every worker accepts
//! channels on the listener's unix socket; a channel is accepted only from a process whose uid
//! (`SO_PEERCRED`) is in `handoff_uids`, which is told so with one byte, and then carries one
//! message per connection: the client's socket, its addresses and its ClientHello
//! ([`crate::backend::handoff::Message`]). Each connection is served like an accepted one, by
//! this process's routes, its hello already read. Refusals are counted by cause
//! (`handoffs_rejected_total`). On stop a channel stops taking new connections (senders then
//! fall back to their next back end) and serves the ones already queued.

use super::{OpenGuard, Worker};
use crate::backend::handoff::{Message, ACCEPTED, HEADER, MAX_HELLO};
use crate::conn::{self, Accepted, Proxied};
use crate::metrics::HandoffCause;
use crate::sys::{self, Socket, POLLIN};
use std::io;
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

/// Accepts channels on `listener` until the worker is told to stop.
pub(crate) async fn run(w: Rc<Worker>, listener: Socket, path: PathBuf) {
    let mut stop = w.stop.clone();
    loop {
        if *stop.borrow() {
            break;
        }
        let res = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
        };
        match res {
            Ok(ch) => {
                let allowed =
                    w.config().handoff.iter().find(|h| h.path == path).map(|h| h.uids.clone()).unwrap_or_default();
                match sys::unix::peer_cred(&ch) {
                    Ok(cred) if allowed.contains(&cred.uid) => {
                        let _ = ch.try_send_vectored(&[io::IoSlice::new(&[ACCEPTED])]);
                        tokio_uring::spawn(channel(Rc::clone(&w), ch));
                    }
                    cred => {
                        w.metrics().bump(|c| c.handoffs_rejected.bump(HandoffCause::Uid));
                        crate::warn_every_second!(
                            worker = w.id(),
                            socket = %path.display(),
                            peer = ?cred.ok(),
                            "hand-off channel refused: the sender's uid is not in handoff_uids"
                        );
                    }
                }
            }
            Err(e) => {
                crate::warn_every_second!(worker = w.id(), socket = %path.display(), error = %e, "hand-off accept failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    if w.handoff_handed_off.get().is_some_and(|paths| paths.contains(&path)) {
        // A binary upgrade: the new process accepts on this socket now; cancel our accept,
        // leave the socket alone.
        let _ = listener.cancel_pending().await;
    } else {
        listener.shutdown(Shutdown::Both);
    }
}

/// One sender's channel: each message is a connection to serve.
async fn channel(w: Rc<Worker>, ch: Socket) {
    let mut stop = w.stop.clone();
    let mut buf = vec![0u8; HEADER + MAX_HELLO + 1];
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(2);
    let mut stopping = false;
    loop {
        if !stopping {
            tokio::select! {
                r = ch.poll(POLLIN) => if r.is_err() { return },
                _ = stop.changed() => {
                    // No new connections; the queued ones are still served.
                    ch.shutdown(Shutdown::Read);
                    stopping = true;
                }
            }
        }
        loop {
            fds.clear();
            match sys::unix::recv_fds(&ch, &mut buf, &mut fds, libc::MSG_DONTWAIT) {
                Ok(0) => return,
                Ok(n) => received(&w, &buf[..n], &mut fds),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // MSG_CTRUNC (more descriptors than room) or a broken channel.
                    w.metrics().bump(|c| c.handoffs_rejected.bump(HandoffCause::Descriptor));
                    crate::debug_every_second!(worker = w.id(), error = %e, "hand-off message refused");
                    if e.kind() != io::ErrorKind::InvalidData {
                        return;
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// One message: serves the connection it carries, or counts why not.
fn received(w: &Rc<Worker>, bytes: &[u8], fds: &mut Vec<OwnedFd>) {
    if fds.len() != 1 {
        w.metrics().bump(|c| c.handoffs_rejected.bump(HandoffCause::Descriptor));
        return;
    }
    let Some(msg) = Message::decode(bytes) else {
        w.metrics().bump(|c| c.handoffs_rejected.bump(HandoffCause::Malformed));
        return;
    };
    let Some(fd) = fds.pop() else { return };
    let client = Socket::from(fd);
    let at = w.conns.now();
    // Without addresses in the message the socket's own count (the client's TCP connection,
    // whatever process holds it): an unspecified listen address makes `dialed` ask it.
    let listen = msg.addresses.map_or(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0), |(_, d)| d);
    let mut conn = Accepted::new(client, listen, at);
    conn.proxied = msg.addresses.map(|(source, destination)| Proxied { source, destination });
    conn.early = msg.hello.to_vec();
    conn.handed_off = true;
    w.open.set(w.open.get() + 1);
    w.metrics().bump(|c| c.handoffs_received += 1);
    tokio_uring::spawn(serve(OpenGuard(Rc::clone(w)), conn));
}

async fn serve(guard: OpenGuard, mut conn: Accepted) {
    let w = &guard.0;
    conn::serve(&w.conns, &**w, &mut conn).await;
    conn.client.close();
}
