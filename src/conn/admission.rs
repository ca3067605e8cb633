//! Admission: who gets in, per listener. Before the hello is read (so a flood costs an accept,
//! a lookup and a reset): the address lists (`deny` wins over `allow`; `denied_address`), then the
//! per-client limits — connections open at once (`max_conns_per_client`, `client_conn_limit`) and
//! new connections per second (`max_conn_rate_per_client`, `client_rate_limit`). After the hello:
//! the JA4 lists (`denied_ja4`, with a `handshake_failure` alert). A client is its IPv4 address or
//! its IPv6 /64 ([`client_key`]); behind `accept_proxy` it is the PROXY header's source. A client
//! refused by a limit is also shunned in the kernel while the limit would refuse it
//! ([`super::shun`], `shun`).
//!
//! The limits hold over all workers: a [`ClientTable`] per listener has one row per worker
//! (count-min, two hashed slots of 16,384 per client), each row written only by its worker (a
//! load and a store, no read-modify-write, no lock) and read by all. A client's count is the
//! smaller of its two slots' sums over the rows. Stated error: counts are exact except that
//! (1) a client whose two slots are both shared with other active clients is over-counted
//! (refused early, never late), and (2) connections admitted in the same instant on different
//! workers may exceed a limit by at most workers − 1. The rate is a sliding window over two
//! one-second buckets (the previous second weighted by the part of it still in the window).

use super::trace::Trace;
use super::{Accepted, Resources};
use crate::backend::client_key;
use crate::backend::pool::{mix, now_ms};
use crate::config::{Admission, Listener};
use crate::hello::{ja4, ClientHello, Transport};
use crate::metrics::DropReason;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Slots per worker row of a [`ClientTable`].
pub const SLOTS: usize = 1 << 14;
/// Words per slot: connections open, this second's tag and count, the previous second's.
const WORDS: usize = 3;

/// The per-client counts of one listener, one row per worker.
pub struct ClientTable {
    workers: usize,
    words: Box<[AtomicU64]>,
    seed: u64,
}

impl std::fmt::Debug for ClientTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTable").field("workers", &self.workers).finish_non_exhaustive()
    }
}

impl ClientTable {
    pub fn new(workers: usize) -> Self {
        let workers = workers.max(1);
        let seed = mix(now_ms() ^ (std::process::id() as u64) << 20);
        Self { workers, words: crate::sys::zeroed_atomics(workers * SLOTS * WORDS), seed }
    }

    fn slots(&self, key: u64) -> [usize; 2] {
        let h = mix(key ^ self.seed);
        let a = (h as usize) & (SLOTS - 1);
        let mut b = ((h >> 32) as usize) & (SLOTS - 1);
        if a == b {
            b = (b + 1) & (SLOTS - 1);
        }
        [a, b]
    }

    #[inline]
    fn word(&self, worker: usize, slot: usize, k: usize) -> &AtomicU64 {
        &self.words[((worker % self.workers) * SLOTS + slot) * WORDS + k]
    }

    /// Connections open now for the client of `slots` (over all workers).
    fn open(&self, slots: [usize; 2]) -> u64 {
        slots
            .iter()
            .map(|&s| (0..self.workers).map(|w| self.word(w, s, 0).load(Relaxed)).sum::<u64>())
            .min()
            .unwrap_or(0)
    }

    /// New connections in the last second for the client of `slots`, at `now` (ms).
    fn rate(&self, slots: [usize; 2], now: u64) -> u64 {
        let sec = now / 1000;
        let left_of_prev = 1000 - now % 1000;
        slots
            .iter()
            .map(|&s| {
                let (mut cur, mut prev) = (0u64, 0u64);
                for w in 0..self.workers {
                    let b = self.word(w, s, 1).load(Relaxed);
                    let (tag, n) = (b >> 32, b & 0xffff_ffff);
                    if tag == sec {
                        cur += n;
                        let c = self.word(w, s, 2).load(Relaxed);
                        if c >> 32 == sec.wrapping_sub(1) {
                            prev += c & 0xffff_ffff;
                        }
                    } else if tag == sec.wrapping_sub(1) {
                        prev += n;
                    }
                }
                cur + (prev * left_of_prev) / 1000
            })
            .min()
            .unwrap_or(0)
    }

    /// Counts a new connection of the client of `slots` on `worker` at `now` (ms).
    fn count_new(&self, worker: usize, slots: [usize; 2], now: u64) {
        let sec = now / 1000;
        for s in slots {
            let cur = self.word(worker, s, 1);
            let b = cur.load(Relaxed);
            if b >> 32 == sec {
                cur.store(b + 1, Relaxed);
            } else {
                let prev = if b >> 32 == sec.wrapping_sub(1) { b } else { 0 };
                self.word(worker, s, 2).store(prev, Relaxed);
                cur.store(sec << 32 | 1, Relaxed);
            }
        }
    }

    /// Whether `limits` would refuse the client at `ip` now, and by which limit (a read: nothing
    /// counted).
    pub fn refuses(&self, ip: std::net::IpAddr, limits: &Admission) -> Option<DropReason> {
        let slots = self.slots(client_key(Some(ip))?);
        if limits.max_conns_per_client > 0 && self.open(slots) >= u64::from(limits.max_conns_per_client) {
            return Some(DropReason::ClientConnLimit);
        }
        let over = limits.max_conn_rate_per_client > 0
            && self.rate(slots, now_ms()) >= u64::from(limits.max_conn_rate_per_client);
        over.then_some(DropReason::ClientRateLimit)
    }

    /// Admits or refuses a client on `worker` under `limits`.
    fn admit(&self, worker: usize, key: u64, limits: &Admission) -> Result<Admitted<'_>, DropReason> {
        let slots = self.slots(key);
        if limits.max_conns_per_client > 0 && self.open(slots) >= u64::from(limits.max_conns_per_client) {
            return Err(DropReason::ClientConnLimit);
        }
        let now = now_ms();
        if limits.max_conn_rate_per_client > 0 && self.rate(slots, now) >= u64::from(limits.max_conn_rate_per_client) {
            return Err(DropReason::ClientRateLimit);
        }
        self.count_new(worker, slots, now);
        for s in slots {
            let w = self.word(worker, s, 0);
            w.store(w.load(Relaxed) + 1, Relaxed);
        }
        Ok(Admitted { table: self, worker, slots })
    }
}

/// A client's connection counted open; uncounted when dropped (on the worker that counted it).
pub struct Admitted<'a> {
    table: &'a ClientTable,
    worker: usize,
    slots: [usize; 2],
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        for s in self.slots {
            let w = self.table.word(self.worker, s, 0);
            w.store(w.load(Relaxed).saturating_sub(1), Relaxed);
        }
    }
}

/// One [`ClientTable`] per TCP listener of the server, shared by its workers. The tables'
/// memory is zeroed pages that cost nothing until a listener's limits touch them. A listener
/// that a reload adds gets a table of its own ([`Tables::add`], from the control thread): the
/// places are set once each, so the workers read them without a lock.
#[derive(Debug, Default)]
pub struct Tables {
    by_listener: Box<[std::sync::OnceLock<(SocketAddr, ClientTable)>]>,
    workers: usize,
}

/// Listeners with per-client counts, at most (beyond, a listener that a reload adds has none,
/// with a warning).
pub const MAX_LISTENERS: usize = 256;

impl Tables {
    pub fn new(listeners: &[SocketAddr], workers: usize) -> Self {
        let t = Self {
            by_listener: (0..MAX_LISTENERS.max(listeners.len())).map(|_| std::sync::OnceLock::new()).collect(),
            workers,
        };
        for &a in listeners {
            t.add(a);
        }
        t
    }

    /// Gives the listener bound to `listen` its table, unless it has one (the control thread
    /// alone calls this); false when every place is taken.
    pub fn add(&self, listen: SocketAddr) -> bool {
        if self.get(listen).is_some() {
            return true;
        }
        match self.by_listener.iter().find(|c| c.get().is_none()) {
            Some(cell) => cell.set((listen, ClientTable::new(self.workers))).is_ok(),
            None => false,
        }
    }

    pub(super) fn get(&self, listen: SocketAddr) -> Option<&ClientTable> {
        self.by_listener.iter().map_while(|c| c.get()).find(|(a, _)| *a == listen).map(|(_, t)| t)
    }
}

/// The checks before the hello: address lists, then per-client limits. The guard keeps the
/// connection counted open.
pub(super) fn before_hello<'r>(
    res: &'r Resources,
    listener: &Listener,
    conn: &Accepted,
) -> Result<Option<Admitted<'r>>, DropReason> {
    let rules = &listener.admission;
    let peer = conn.peer();
    let refuse = |reason: DropReason| {
        crate::debug_every_second!(worker = res.worker, peer = ?peer, reason = reason.as_str(), "connection refused");
        conn.client.set_reset_on_close();
        reason
    };
    let Some(ip) = peer.map(|p| p.ip()) else {
        // No address to judge (a peer that already left): let the hello read find out.
        return Ok(None);
    };
    if !rules.address_allowed(ip) {
        return Err(refuse(DropReason::DeniedAddress));
    }
    if !rules.has_limits() {
        return Ok(None);
    }
    let (Some(table), Some(key)) = (res.admission.get(conn.listen), client_key(Some(ip))) else { return Ok(None) };
    table.admit(res.worker, key, rules).map(Some).map_err(|reason| {
        if rules.shun {
            let max = rules.shun_max as usize;
            res.shuns.borrow_mut().shun(&res.metrics, res.worker, conn.listen, ip, reason, max);
        }
        refuse(reason)
    })
}

/// The checks on the hello: the JA4 lists. The fingerprint goes to the access log too.
pub(super) fn on_hello(listener: Option<&Listener>, hello: &ClientHello<'_>, t: &mut Trace) -> Result<(), DropReason> {
    let check = listener.is_some_and(|l| l.admission.checks_ja4());
    if !check && !t.log {
        return Ok(());
    }
    let fp = ja4(hello, Transport::Tcp);
    if t.log {
        t.ja4 = Some(Box::new(fp));
    }
    match listener {
        Some(l) if check && !l.admission.ja4_allowed(&fp) => Err(DropReason::DeniedJa4),
        _ => Ok(()),
    }
}

/// A fatal `handshake_failure` alert (RFC 8446 §6.2), what a TLS server answers a hello it
/// will not serve.
const HANDSHAKE_FAILURE: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40];

/// Tells a client refused by its JA4 so, as a TLS server would (one non-blocking send).
pub(super) fn send_refusal_alert(conn: &Accepted) {
    let _ = conn.client.try_send_vectored(&[IoSlice::new(&HANDSHAKE_FAILURE)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(conns: u32, rate: u32) -> Admission {
        Admission { max_conns_per_client: conns, max_conn_rate_per_client: rate, ..Admission::default() }
    }

    #[test]
    fn concurrency_is_counted_over_workers_and_released() {
        let t = ClientTable::new(2);
        let l = limits(3, 0);
        let a = t.admit(0, 1, &l).unwrap();
        let b = t.admit(1, 1, &l).unwrap();
        let c = t.admit(1, 1, &l).unwrap();
        assert!(matches!(t.admit(0, 1, &l), Err(DropReason::ClientConnLimit)));
        // Another client is not affected.
        let other = t.admit(0, 2, &l).unwrap();
        drop(b);
        let d = t.admit(0, 1, &l).unwrap();
        assert!(t.admit(1, 1, &l).is_err());
        drop((a, c, d, other));
        assert_eq!(t.open(t.slots(1)), 0);
    }

    #[test]
    fn the_rate_is_per_second_over_workers() {
        let t = ClientTable::new(2);
        let l = limits(0, 10);
        let mut admitted = 0;
        for i in 0..40 {
            if t.admit(i % 2, 7, &l).is_ok() {
                admitted += 1;
            }
        }
        // Within one second (or across one boundary, where the window still holds them).
        assert!((10..=20).contains(&admitted), "{admitted}");
        assert!(t.admit(0, 8, &l).is_ok(), "other clients are not limited");
        // The window's arithmetic at fixed times: 10 in second 5, then half of second 6 gone.
        let t = ClientTable::new(1);
        let s = t.slots(9);
        for _ in 0..10 {
            t.count_new(0, s, 5_000);
        }
        assert_eq!(t.rate(s, 5_999), 10);
        assert_eq!(t.rate(s, 6_500), 5);
        t.count_new(0, s, 6_500);
        assert_eq!(t.rate(s, 6_500), 6);
        assert_eq!(t.rate(s, 8_000), 0);
    }

    #[test]
    fn collisions_only_over_count() {
        let t = ClientTable::new(1);
        let l = limits(1, 0);
        let mut held = Vec::new();
        for key in 0..2000u64 {
            if let Ok(a) = t.admit(0, key, &l) {
                held.push(a);
            }
        }
        // 2,000 clients in 16,384 slots: refusals need both slots taken, rare. The k-th client
        // finds both taken with a chance of about (2k / 16,384)^2: about 40 refusals expected
        // (the seed is random; the standard deviation about 6), so more than 100 means broken.
        assert!(held.len() > 1900, "{} of 2000 admitted", held.len());
    }
}
