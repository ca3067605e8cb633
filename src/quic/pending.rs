//! The flows of one worker whose ClientHello is not complete yet, keyed by the client's address
//! (and the socket it sent to):
//! at most `max` of them, each for at most its timeout from its first Initial. When the table is
//! full, the oldest entry makes room for the new one (so a flood of first Initials from random
//! ports keeps each entry about `max / rate` seconds instead of locking every newcomer out until
//! the flood's entries time out); the caller counts it. Insertion order is creation order, so
//! both eviction and expiry pop from the front of one queue: O(1) per entry.

use std::collections::{HashMap, VecDeque};
/// The tables' hasher: the keys are client addresses (peer-chosen), so it is keyed, by a random
/// seed per process; a fraction of SipHash's cost, which every datagram pays.
pub type FlowHasher = foldhash::fast::RandomState;
use std::hash::Hash;
use std::time::Instant;

/// A bounded table of pending entries.
#[derive(Debug)]
pub struct PendingTable<K, V> {
    map: HashMap<K, (u64, V), FlowHasher>,
    /// (sequence, client, created) in creation order; entries whose sequence no longer matches
    /// the map's were removed early and are skipped.
    order: VecDeque<(u64, K, Instant)>,
    next: u64,
    max: usize,
}

impl<K: Hash + Eq + Copy, V> PendingTable<K, V> {
    pub fn new(max: usize) -> Self {
        Self { map: HashMap::default(), order: VecDeque::new(), next: 0, max: max.max(1) }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get_mut(&mut self, client: &K) -> Option<&mut V> {
        self.map.get_mut(client).map(|(_, v)| v)
    }

    pub fn remove(&mut self, client: &K) -> Option<V> {
        let v = self.map.remove(client).map(|(_, v)| v);
        self.compact();
        v
    }

    /// Inserts `v` for `client` (created `now`); returns the entry evicted to make room.
    pub fn insert(&mut self, client: K, v: V, now: Instant) -> Option<(K, V)> {
        let mut evicted = None;
        if !self.map.contains_key(&client) && self.map.len() >= self.max {
            while let Some((seq, addr, _)) = self.order.pop_front() {
                if self.map.get(&addr).is_some_and(|(s, _)| *s == seq) {
                    evicted = self.map.remove(&addr).map(|(_, v)| (addr, v));
                    break;
                }
            }
        }
        let seq = self.next;
        self.next += 1;
        self.map.insert(client, (seq, v));
        self.order.push_back((seq, client, now));
        evicted
    }

    /// Removes and returns every entry created before `deadline`.
    pub fn expire(&mut self, deadline: Instant, mut out: impl FnMut(K, V)) {
        while let Some(&(seq, addr, created)) = self.order.front() {
            if created >= deadline {
                break;
            }
            self.order.pop_front();
            if self.map.get(&addr).is_some_and(|(s, _)| *s == seq) {
                if let Some((_, v)) = self.map.remove(&addr) {
                    out(addr, v);
                }
            }
        }
    }

    /// Keeps the queue from growing past twice the live entries when many are removed early.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|(seq, addr, _)| map.get(addr).is_some_and(|(s, _)| s == seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn full_table_evicts_the_oldest_and_expiry_is_by_age() {
        let t0 = Instant::now();
        let mut t = PendingTable::new(3);
        for p in 1..=3 {
            assert!(t.insert(addr(p), p, t0 + Duration::from_millis(u64::from(p))).is_none());
        }
        assert_eq!(t.remove(&addr(1)), Some(1));
        assert!(t.insert(addr(4), 4, t0 + Duration::from_millis(4)).is_none());
        // Full: the oldest live entry (2) goes.
        assert_eq!(t.insert(addr(5), 5, t0 + Duration::from_millis(5)), Some((addr(2), 2)));
        assert_eq!(t.len(), 3);
        let mut gone = Vec::new();
        t.expire(t0 + Duration::from_millis(5), |a, v| gone.push((a, v)));
        assert_eq!(gone, vec![(addr(3), 3), (addr(4), 4)]);
        assert_eq!(t.get_mut(&addr(5)), Some(&mut 5));
    }

    #[test]
    fn a_flood_never_grows_the_table() {
        let t0 = Instant::now();
        let mut t = PendingTable::new(100);
        for p in 0..20_000u16 {
            t.insert(addr(p), (), t0);
            if p % 3 == 0 {
                t.remove(&addr(p));
            }
        }
        assert!(t.len() <= 100);
        assert!(t.order.len() <= 2 * t.len() + 64 + 100, "{}", t.order.len());
    }
}
