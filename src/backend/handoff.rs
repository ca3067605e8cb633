//! The hand-off: a client connection, with its ClientHello already read, given to a local
//! sni-dispatch (a `[[listener]] handoff = "/path"`) over a unix `SOCK_SEQPACKET` socket: one
//! message per connection, the client's socket attached (`SCM_RIGHTS`), the addresses and the
//! hello bytes in the message ([`Message`]). The receiver then owns the connection; the sender
//! moves no byte of it and closes its copy.
//!
//! Each worker keeps one channel per hand-off socket, opened on first use: connect, then wait
//! (at most the connect timeout) for the receiver's one-byte acceptance, which it sends only
//! after checking the sender's uid (`SO_PEERCRED`). A receiver that refuses, is gone, or whose
//! queue is full makes the attempt fail with a cause (`handoff_refused`, `handoff_gone`,
//! `handoff_full`), and the connection goes on to the route's next back end.

use crate::metrics::ConnectCause;
use crate::sys::{self, Socket};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The first bytes of every message.
pub const MAGIC: [u8; 4] = *b"SNIH";
pub const VERSION: u8 = 1;
/// Bytes before the hello: magic, version, flags, 2 reserved, two addresses, the hello length.
pub const HEADER: usize = 8 + 2 * ADDR + 4;
const ADDR: usize = 20;
/// The largest hello handed off (a message must fit a unix socket's buffer).
pub const MAX_HELLO: usize = 64 * 1024;
/// What the receiver answers on a channel it accepts.
pub const ACCEPTED: u8 = b'K';

/// One connection handed over: who the client is and what it dialed when something in front
/// said so (a PROXY header; else the receiver asks the socket itself, when it needs to), and
/// the bytes already read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The client (source) and the address it dialed (destination).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    pub hello: &'a [u8],
}

/// Flag: the message carries the addresses.
const ADDRESSES: u8 = 1;

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let (family, ip) = match a.ip() {
        IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => (6u8, v6),
    };
    out.push(family);
    out.push(0);
    out.extend_from_slice(&a.port().to_be_bytes());
    out.extend_from_slice(&ip.octets());
}

fn get_addr(b: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    let octets: [u8; 16] = b.get(4..20)?.try_into().ok()?;
    let v6 = Ipv6Addr::from(octets);
    let ip = match b.first()? {
        4 => IpAddr::V4(v6.to_ipv4_mapped()?),
        6 => IpAddr::V6(v6),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

impl<'a> Message<'a> {
    /// Appends the message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        let unspecified = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
        let (flags, (source, destination)) = match self.addresses {
            Some(a) => (ADDRESSES, a),
            None => (0, (unspecified, unspecified)),
        };
        out.extend_from_slice(&[VERSION, flags, 0, 0]);
        put_addr(out, source);
        put_addr(out, destination);
        out.extend_from_slice(&(self.hello.len() as u32).to_be_bytes());
        out.extend_from_slice(self.hello);
    }

    /// Reads a message; `None` if it is not one (the receiver counts it `malformed`).
    pub fn decode(b: &'a [u8]) -> Option<Self> {
        if b.get(..4)? != MAGIC || *b.get(4)? != VERSION {
            return None;
        }
        let flags = *b.get(5)?;
        let source = get_addr(b.get(8..8 + ADDR)?)?;
        let destination = get_addr(b.get(8 + ADDR..8 + 2 * ADDR)?)?;
        let addresses = (flags & ADDRESSES != 0).then_some((source, destination));
        let len = u32::from_be_bytes(b.get(HEADER - 4..HEADER)?.try_into().ok()?) as usize;
        let hello = b.get(HEADER..)?;
        (hello.len() == len && len > 0 && len <= MAX_HELLO).then_some(Self { addresses, hello })
    }
}

thread_local! {
    /// This worker's channels, by hand-off socket path.
    static CHANNELS: RefCell<HashMap<PathBuf, Socket>> = RefCell::new(HashMap::new());
    /// The message being sent (reused: no allocation per hand-off).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(HEADER + 4096));
}

/// Hands `client` to the receiver at `path`, with `msg`; the cause if it did not go.
pub async fn hand_off(path: &Path, client: &Socket, msg: &Message<'_>, timeout: Duration) -> Result<(), ConnectCause> {
    if msg.hello.len() > MAX_HELLO {
        return Err(ConnectCause::Other);
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        msg.encode(&mut s);
    });
    // A channel that went stale (the receiver restarted) is found at the first send: one more
    // try on a new channel.
    for fresh in [false, true] {
        let channel = match CHANNELS.with(|c| c.borrow().get(path).cloned()) {
            Some(ch) if !fresh => ch,
            _ => {
                CHANNELS.with(|c| c.borrow_mut().remove(path));
                let ch = open(path, timeout).await?;
                CHANNELS.with(|c| c.borrow_mut().insert(path.to_owned(), ch.clone()));
                ch
            }
        };
        let sent =
            SCRATCH.with(|s| sys::unix::send_fds(&channel, &s.borrow(), &[client.as_raw_fd()], libc::MSG_DONTWAIT));
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(ConnectCause::HandoffFull),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE)) => return Err(ConnectCause::Other),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM)) => {
                return Err(ConnectCause::LocalResources)
            }
            Err(_) => {
                CHANNELS.with(|c| c.borrow_mut().remove(path));
                if fresh {
                    return Err(ConnectCause::HandoffGone);
                }
            }
        }
    }
    Err(ConnectCause::HandoffGone)
}

/// Opens a channel: connect, then the receiver's acceptance within `timeout`.
async fn open(path: &Path, timeout: Duration) -> Result<Socket, ConnectCause> {
    let ch = Socket::seqpacket_connect(path).map_err(|e| match e.raw_os_error() {
        Some(libc::EAGAIN) => ConnectCause::HandoffFull,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => ConnectCause::LocalResources,
        _ => ConnectCause::HandoffGone,
    })?;
    let answer = tokio::time::timeout(timeout, ch.recv(Vec::with_capacity(1))).await;
    match answer {
        Ok((Ok(1), b)) if b.first() == Some(&ACCEPTED) => Ok(ch),
        Ok(_) => Err(ConnectCause::HandoffRefused),
        Err(_) => {
            ch.shutdown(std::net::Shutdown::Both);
            Err(ConnectCause::TimedOut)
        }
    }
}

/// Forgets this worker's channels (tests).
pub fn close_channels() {
    CHANNELS.with(|c| c.borrow_mut().clear());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let hello = b"\x16\x03\x01hello".to_vec();
        let pairs = [Some(("192.0.2.1:5000", "127.0.0.2:443")), Some(("[2001:db8::1]:1", "[::1]:8443")), None];
        for pair in pairs {
            let addresses = pair.map(|(s, d)| (s.parse().unwrap(), d.parse().unwrap()));
            let m = Message { addresses, hello: &hello };
            let mut out = Vec::new();
            m.encode(&mut out);
            assert_eq!(out.len(), HEADER + hello.len());
            assert_eq!(Message::decode(&out), Some(m.clone()));
            for cut in 0..out.len() {
                assert_eq!(Message::decode(&out[..cut]), None, "cut at {cut}");
            }
            let mut bad = out.clone();
            bad[4] = 9;
            assert_eq!(Message::decode(&bad), None);
            let mut bad = out.clone();
            bad[8] = 5;
            assert_eq!(Message::decode(&bad), None, "no such address family");
            let mut longer = out.clone();
            longer.push(0);
            assert_eq!(Message::decode(&longer), None);
        }
    }
}
