//! Which back end a connection tries first, and which next when a connect fails: a [`Plan`]
//! walks the route's pool by its `balance` policy over three tiers — the primaries that are up
//! and not set aside, then the backups that are, then (last resort, so that passive ejection
//! never takes the last working back ends away) those that are up but set aside. A back end
//! that the health checks marked down is never tried; when every one is, the plan is empty
//! and the connection is dropped (`backends_down`).
//!
//! Every policy is per worker and allocation-free: round robin walks a precomputed smooth
//! weighted schedule from the worker's own cursor; least connections compares the worker's own
//! open connections to each back end (relative to weight: "least" means least of this worker's
//! connections, which with `SO_REUSEPORT` spreading clients evenly is the host's order too);
//! random_two draws two by weight from the worker's own xorshift generator and keeps the less
//! loaded; the hashes are weighted rendezvous hashes (score `-weight / ln(u)`, `u` the hash of
//! the key and the back end's name), so removing one of N back ends moves only the keys it had,
//! about 1/N, and every worker and every host with the same back ends agrees.

use super::pool::{mix, stable_hash, Pool, Pools, Shared};
use crate::route::Balance;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

/// What the hashes hash: the client address (IPv4 address, IPv6 /64) or the SNI's hash
/// ([`Key::sni_hash`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Key {
    pub client: Option<IpAddr>,
    pub sni: u64,
}

impl Key {
    /// The SNI as `hash_sni` hashes it (no SNI hashes as the empty name).
    pub fn sni_hash(sni: Option<&str>) -> u64 {
        stable_hash(sni.unwrap_or("").as_bytes())
    }

    fn hash(&self, balance: Balance) -> u64 {
        match balance {
            Balance::HashClient => client_key(self.client).map_or(0, mix),
            Balance::HashSni => self.sni,
            _ => 0,
        }
    }
}

/// The client address as the hashes and per-client limits see it: an IPv4 address, or the /64
/// of an IPv6 address (IPv4-mapped addresses are IPv4); distinct for v4 and v6.
#[inline]
pub fn client_key(ip: Option<IpAddr>) -> Option<u64> {
    match ip? {
        IpAddr::V4(v4) => Some(u64::from(u32::from(v4)) | (1 << 63)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Some(u64::from(u32::from(v4)) | (1 << 63)),
            None => Some((u128::from(v6) >> 64) as u64 & !(1 << 63)),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Primary,
    Backup,
    LastResort,
}

/// Which members of a pool a [`Plan`] has handed out (a bit each; a pool has at most
/// [`MAX_BACKENDS`](super::pool::MAX_BACKENDS)).
pub type Tried = [u64; 4];

/// The order in which one connection tries its route's back ends (an iterator of back ends).
pub struct Plan<'a> {
    pools: &'a Pools,
    pool: &'a Pool,
    worker: usize,
    hash: u64,
    /// [`now_ms`](super::pool::now_ms), read when a back end turns out to be set aside (0: not yet).
    now: std::cell::Cell<u64>,
    tried: Tried,
    tier: Tier,
    /// Round robin: where the walk of the schedule is.
    rr_at: Option<usize>,
    /// Least connections: the rotating start of the scan (ties go to the first in it).
    start: usize,
    picked_in_tier: bool,
}

impl<'a> Plan<'a> {
    pub fn new(pools: &'a Pools, pool: &'a Pool, worker: usize, key: &Key) -> Self {
        Self::make(pools, pool, worker, key, true)
    }

    /// The rest of a plan that has handed out the members in `tried` ([`Plan::tried`]): a QUIC
    /// flow whose back end turned out to be unreachable after its first datagrams went out goes
    /// on from here, with the health verdicts and ejections of now. The worker's cursor is not
    /// stepped again (one step per connection).
    pub fn resume(pools: &'a Pools, pool: &'a Pool, worker: usize, key: &Key, tried: Tried) -> Self {
        let mut p = Self::make(pools, pool, worker, key, false);
        p.tried = tried;
        p
    }

    /// The members handed out so far.
    pub fn tried(&self) -> Tried {
        self.tried
    }

    fn make(pools: &'a Pools, pool: &'a Pool, worker: usize, key: &Key, step: bool) -> Self {
        let cursor = pool.cursor(worker);
        let pos = cursor.pos.load(Relaxed);
        // One step per connection (not per attempt): the worker's own cursor.
        if step && matches!(pool.balance, Balance::RoundRobin | Balance::LeastConn | Balance::RandomTwo) {
            cursor.pos.store(pos.wrapping_add(1), Relaxed);
        }
        let n = pool.members.len().max(1);
        Self {
            pools,
            pool,
            worker,
            hash: key.hash(pool.balance),
            now: std::cell::Cell::new(0),
            tried: [0; 4],
            tier: Tier::Primary,
            rr_at: None,
            start: (pos % n as u64) as usize,
            picked_in_tier: false,
        }
    }

    fn shared(&self, i: usize) -> Option<&'a Shared> {
        self.pools.backend(self.pool.members.get(i)?.id)
    }

    fn was_tried(&self, i: usize) -> bool {
        self.tried[i / 64] & (1 << (i % 64)) != 0
    }

    fn eligible(&self, i: usize, tier: Tier) -> bool {
        let Some(m) = self.pool.members.get(i) else { return false };
        let Some(b) = self.pools.backend(m.id) else { return false };
        if self.was_tried(i) || !b.is_up() {
            return false;
        }
        let ejected = b.ejected_with(self.worker, || {
            if self.now.get() == 0 {
                self.now.set(super::pool::now_ms());
            }
            self.now.get()
        });
        match tier {
            Tier::Primary => !m.backup && !ejected,
            Tier::Backup => m.backup && !ejected,
            Tier::LastResort => ejected,
        }
    }

    fn load(&self, i: usize) -> u64 {
        self.shared(i).map_or(u64::MAX, |b| b.slot(self.worker).active.load(Relaxed))
    }

    fn weight(&self, i: usize) -> u64 {
        self.pool.members.get(i).map_or(1, |m| u64::from(m.weight.max(1)))
    }

    /// Fewest open connections relative to weight, scanning from the rotating start.
    fn least_loaded(&self, tier: Tier) -> Option<usize> {
        let n = self.pool.members.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.start + k) % n;
            if !self.eligible(i, tier) {
                continue;
            }
            best = match best {
                Some(b)
                    if u128::from(self.load(i)) * u128::from(self.weight(b))
                        >= u128::from(self.load(b)) * u128::from(self.weight(i)) =>
                {
                    Some(b)
                }
                _ => Some(i),
            };
        }
        best
    }

    fn first_in_order(&self, tier: Tier) -> Option<usize> {
        (0..self.pool.members.len()).find(|&i| self.eligible(i, tier))
    }

    fn rendezvous(&self, tier: Tier) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for i in 0..self.pool.members.len() {
            if !self.eligible(i, tier) {
                continue;
            }
            let Some(b) = self.shared(i) else { continue };
            let score = rendezvous_score(self.hash, b.seed, self.weight(i));
            if best.is_none_or_lower(score) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }

    fn round_robin(&mut self, tier: Tier) -> Option<usize> {
        let schedule = &self.pool.schedule;
        if tier != Tier::Primary || schedule.is_empty() {
            return self.first_in_order(tier);
        }
        let mut at = match self.rr_at {
            Some(at) => at + 1,
            None => (self.pool.cursor(self.worker).pos.load(Relaxed).wrapping_sub(1) % schedule.len() as u64) as usize,
        };
        for _ in 0..schedule.len() {
            let i = usize::from(schedule[at % schedule.len()]);
            if self.eligible(i, tier) {
                self.rr_at = Some(at);
                return Some(i);
            }
            at += 1;
        }
        self.rr_at = Some(at);
        None
    }

    fn random_two(&mut self, tier: Tier) -> Option<usize> {
        let total: u64 = (0..self.pool.members.len()).filter(|&i| self.eligible(i, tier)).map(|i| self.weight(i)).sum();
        if total == 0 {
            return None;
        }
        let cursor = self.pool.cursor(self.worker);
        let mut rng = cursor.rng.load(Relaxed);
        let draw = |rng: &mut u64| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            let mut r = *rng % total;
            (0..self.pool.members.len()).filter(|&i| self.eligible(i, tier)).find(|&i| {
                let w = self.weight(i);
                if r < w {
                    true
                } else {
                    r -= w;
                    false
                }
            })
        };
        let a = draw(&mut rng);
        let b = draw(&mut rng);
        cursor.rng.store(rng, Relaxed);
        match (a, b) {
            (Some(a), Some(b)) => {
                let (la, lb) = (u128::from(self.load(a)), u128::from(self.load(b)));
                Some(if lb * u128::from(self.weight(a)) < la * u128::from(self.weight(b)) { b } else { a })
            }
            (a, b) => a.or(b),
        }
    }

    fn select(&mut self, tier: Tier) -> Option<usize> {
        let first = !self.picked_in_tier;
        match self.pool.balance {
            Balance::First => self.first_in_order(tier),
            Balance::RoundRobin => self.round_robin(tier),
            Balance::LeastConn => self.least_loaded(tier),
            Balance::RandomTwo if first => self.random_two(tier),
            Balance::RandomTwo => self.least_loaded(tier),
            Balance::HashClient | Balance::HashSni => self.rendezvous(tier),
        }
    }
}

trait LowerThan {
    fn is_none_or_lower(&self, score: f64) -> bool;
}

impl LowerThan for Option<(usize, f64)> {
    fn is_none_or_lower(&self, score: f64) -> bool {
        match self {
            None => true,
            Some((_, best)) => score > *best,
        }
    }
}

/// The weighted rendezvous score of a back end (seed) for a key (hash): `-weight / ln(u)`,
/// `u` uniform in (0, 1) from the two hashes.
#[inline]
fn rendezvous_score(hash: u64, seed: u64, weight: u64) -> f64 {
    let h = mix(hash ^ seed);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight as f64) / u.ln()
}

impl<'a> Iterator for Plan<'a> {
    /// The back end's index in its pools (for the trace) and its state.
    type Item = (super::BackendId, &'a Shared);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(i) = self.select(self.tier) {
                self.tried[i / 64] |= 1 << (i % 64);
                self.picked_in_tier = true;
                let id = self.pool.members[i].id;
                return self.pools.backend(id).map(|b| (id, b));
            }
            self.tier = match self.tier {
                Tier::Primary => Tier::Backup,
                Tier::Backup => Tier::LastResort,
                Tier::LastResort => return None,
            };
            self.picked_in_tier = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{self, Action, Backend, ProxyProtocol, RouteId, Table, TlsVersion, Upstream};
    use std::collections::HashMap;

    fn pools(backends: &[(&str, u32, bool)], balance: Balance) -> Pools {
        let route = route::Route::<()> {
            name: "r".into(),
            action: Action::Passthrough,
            sni: vec![],
            dedicated_ips: vec![],
            min_tls: TlsVersion::TLS12,
            backends: backends
                .iter()
                .map(|(t, w, b)| Backend { target: t.parse().unwrap(), weight: *w, backup: *b })
                .collect(),
            proxy_protocol: ProxyProtocol::None,
            upstream: Upstream { balance, ..Upstream::default() },
            alpn_match: vec![],
            half_close: true,
        };
        let table = Table::build(vec![route], None, None).unwrap();
        Pools::build(&table, 2).unwrap()
    }

    fn targets(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:443", i + 1)).collect()
    }

    fn first_pick(p: &Pools, worker: usize, key: &Key) -> Option<String> {
        let pool = p.pool(RouteId(0)).unwrap();
        Plan::new(p, pool, worker, key).next().map(|(_, b)| b.target.to_string())
    }

    fn all(p: &Pools, worker: usize, key: &Key) -> Vec<String> {
        let pool = p.pool(RouteId(0)).unwrap();
        Plan::new(p, pool, worker, key).map(|(_, b)| b.target.to_string()).collect()
    }

    #[test]
    fn first_tries_in_order_then_backups_and_skips_down_ones() {
        let p = pools(&[("10.0.0.1:1", 1, false), ("10.0.0.2:1", 1, true), ("10.0.0.3:1", 1, false)], Balance::First);
        let k = Key::default();
        assert_eq!(all(&p, 0, &k), ["10.0.0.1:1", "10.0.0.3:1", "10.0.0.2:1"]);
        p.shared()[0].set_up(false);
        assert_eq!(all(&p, 0, &k), ["10.0.0.3:1", "10.0.0.2:1"]);
        p.shared()[2].set_up(false);
        assert_eq!(all(&p, 0, &k), ["10.0.0.2:1"]);
        p.shared()[1].set_up(false);
        assert!(all(&p, 0, &k).is_empty(), "all down: nothing to try");
    }

    /// A resumed plan (a QUIC flow failing over later) skips what was handed out and does not
    /// step the worker's round-robin cursor again.
    #[test]
    fn a_resumed_plan_goes_on_without_stepping_the_cursor() {
        let t = targets(3);
        let list: Vec<(&str, u32, bool)> = t.iter().map(|s| (s.as_str(), 1, false)).collect();
        let p = pools(&list, Balance::RoundRobin);
        let pool = p.pool(RouteId(0)).unwrap();
        let k = Key::default();
        let mut plan = Plan::new(&p, pool, 0, &k);
        let first = plan.next().unwrap().1.target.to_string();
        let tried = plan.tried();
        let before = pool.cursor(0).pos.load(Relaxed);
        let rest: Vec<String> = Plan::resume(&p, pool, 0, &k, tried).map(|(_, b)| b.target.to_string()).collect();
        assert_eq!(pool.cursor(0).pos.load(Relaxed), before, "resuming stepped the cursor");
        assert_eq!(rest.len(), 2, "{rest:?}");
        assert!(!rest.contains(&first), "{first} handed out twice: {rest:?}");
        // The next connection's plan starts where round robin left off.
        assert_ne!(first_pick(&p, 0, &k).unwrap(), first);
    }

    #[test]
    fn ejected_back_ends_come_last_and_only_for_the_worker_that_ejected_them() {
        let p = pools(&[("10.0.0.1:1", 1, false), ("10.0.0.2:1", 1, false)], Balance::First);
        let eject = crate::route::Eject { after: 1, base_ms: 60_000, max_ms: 60_000 };
        assert!(p.shared()[0].failed(0, crate::metrics::ConnectCause::Refused, &eject));
        let k = Key::default();
        assert_eq!(all(&p, 0, &k), ["10.0.0.2:1", "10.0.0.1:1"]);
        assert_eq!(all(&p, 1, &k), ["10.0.0.1:1", "10.0.0.2:1"]);
    }

    #[test]
    fn round_robin_is_even_and_weighted() {
        let t = targets(3);
        let list: Vec<(&str, u32, bool)> = t.iter().map(|s| (s.as_str(), 1, false)).collect();
        let p = pools(&list, Balance::RoundRobin);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for i in 0..3000 {
            *counts.entry(first_pick(&p, i % 2, &Key::default()).unwrap()).or_default() += 1;
        }
        assert!(counts.values().all(|&c| c == 1000), "{counts:?}");
        let p = pools(&[("10.0.0.1:1", 3, false), ("10.0.0.2:1", 1, false)], Balance::RoundRobin);
        let picks: Vec<String> = (0..8).map(|_| first_pick(&p, 0, &Key::default()).unwrap()).collect();
        assert_eq!(picks.iter().filter(|s| *s == "10.0.0.2:1").count(), 2, "{picks:?}");
        // Failover goes on along the schedule, each back end once.
        let mut order = all(&p, 0, &Key::default());
        order.sort();
        assert_eq!(order, ["10.0.0.1:1", "10.0.0.2:1"]);
    }

    #[test]
    fn least_conn_prefers_the_idle_back_end_relative_to_weight() {
        let p = pools(&[("10.0.0.1:1", 1, false), ("10.0.0.2:1", 2, false)], Balance::LeastConn);
        let b = p.shared();
        let _a1 = b[0].open(0);
        let _b1 = b[1].open(0);
        // 1/1 against 1/2: the weighted one.
        assert_eq!(first_pick(&p, 0, &Key::default()).unwrap(), "10.0.0.2:1");
        let _b2 = b[1].open(0);
        let _b3 = b[1].open(0);
        assert_eq!(first_pick(&p, 0, &Key::default()).unwrap(), "10.0.0.1:1");
        // Per worker: worker 1 has nothing open anywhere, so ties rotate.
        let picks: std::collections::HashSet<String> =
            (0..4).map(|_| first_pick(&p, 1, &Key::default()).unwrap()).collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn random_two_spreads_by_weight() {
        let p =
            pools(&[("10.0.0.1:1", 1, false), ("10.0.0.2:1", 1, false), ("10.0.0.3:1", 2, false)], Balance::RandomTwo);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..4000 {
            *counts.entry(first_pick(&p, 0, &Key::default()).unwrap()).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts["10.0.0.3:1"] > counts["10.0.0.1:1"], "{counts:?}");
    }

    /// The consistent-hash property: removing one of N back ends moves only the keys it held
    /// (about 1/N of them), and every other key keeps its back end.
    #[test]
    fn hashes_are_consistent() {
        for balance in [Balance::HashClient, Balance::HashSni] {
            let n = 10;
            let t = targets(n);
            let list: Vec<(&str, u32, bool)> = t.iter().map(|s| (s.as_str(), 1, false)).collect();
            let full = pools(&list, balance);
            let fewer = pools(&list[1..], balance);
            let keys = 20_000u32;
            let (mut moved, mut on_removed) = (0, 0);
            let mut counts: HashMap<String, usize> = HashMap::new();
            for k in 0..keys {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + k * 7919));
                let sni = format!("site{k}.example.com");
                let key = Key { client: Some(ip), sni: Key::sni_hash(Some(&sni)) };
                let before = first_pick(&full, 0, &key).unwrap();
                let after = first_pick(&fewer, 1, &key).unwrap();
                *counts.entry(before.clone()).or_default() += 1;
                if before == t[0] {
                    on_removed += 1;
                }
                if before != after {
                    moved += 1;
                    assert_eq!(before, t[0], "{balance:?}: a key moved from a back end that stayed");
                }
            }
            assert_eq!(moved, on_removed);
            let share = moved as f64 / f64::from(keys);
            assert!((0.08..0.12).contains(&share), "{balance:?}: {share} of the keys moved, expected about 1/{n}");
            // And the keys are spread evenly in the first place.
            assert!(counts.values().all(|&c| (1700..2300).contains(&c)), "{balance:?}: {counts:?}");
            // The same key, the same back end, on every worker (and process).
            let key = Key { client: Some("192.0.2.1".parse().unwrap()), sni: Key::sni_hash(Some("a.example")) };
            assert_eq!(first_pick(&full, 0, &key), first_pick(&pools(&list, balance), 1, &key));
        }
    }

    #[test]
    fn weighted_hashing_follows_the_weights() {
        let p = pools(&[("10.0.0.1:1", 1, false), ("10.0.0.2:1", 3, false)], Balance::HashClient);
        let heavy = (0..8000u32)
            .filter(|k| {
                let key = Key { client: Some(IpAddr::from(std::net::Ipv4Addr::from(*k))), sni: 0 };
                first_pick(&p, 0, &key).unwrap() == "10.0.0.2:1"
            })
            .count();
        assert!((5600..6400).contains(&heavy), "{heavy} of 8000 on the weight-3 back end");
    }

    #[test]
    fn client_keys() {
        let v6a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let v6c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(Some(v6a)), client_key(Some(v6b)), "one /64");
        assert_ne!(client_key(Some(v6a)), client_key(Some(v6c)));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(Some(v4)), client_key(Some(mapped)));
        assert_ne!(client_key(Some("0.0.0.1".parse().unwrap())), client_key(Some("::1".parse().unwrap())));
    }
}
