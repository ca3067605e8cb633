//! A map from host name to route, built for a million names and changed one route at a time.
//!
//! One index holds both kinds of key: exact names (`shop.example.com`) and wildcard parents
//! (`*.example.com` is stored as `example.com`, flagged as a wildcard). Names live in byte arenas
//! (a length byte, then the bytes); the slots are open-addressing tables (linear probing, load
//! factor at most 3/4, 1/2 after a build) of 12-byte entries holding the low 32 bits of the
//! hash, the name's place in the arena and the route.
//!
//! ## One pass, two probes in flight
//! A lookup of `a.shop.example.com` needs the exact name and, failing that, the wildcard over
//! its parent `shop.example.com`. The hash is built for that: the parent is hashed first and the
//! exact name's hash continues from the parent's state over the first label, so one pass over the
//! bytes yields both hashes. Both home slots are then read before either is compared, so the two
//! cache misses overlap instead of following each other (a wildcard hit no longer pays a whole
//! exact miss first).
//!
//! ## Shards, copy-on-write, and a delta
//! The index is split into `2^bits` shards by the hash's top bits, each behind its own `Arc`.
//! [`NameIndex::edit`] gives an [`Edit`] that copies only the shards a change touches (a memcpy
//! of their slots and arena, then an in-place insert or a backward-shift delete) and shares every
//! other shard with the index it came from, so adding or removing one route's names at a million
//! names copies a few shards and the old index stays valid for readers. Shards are about 4 MiB
//! at a million names (`TARGET_PER_SHARD` keys each), in transparent huge pages ([`HugeBuf`]):
//! probed at random, 4 KiB pages would add a TLB miss to nearly every lookup (measured: twice
//! the time of a cold lookup), and each copies in well under a millisecond.
//!
//! A change of a few routes does not even copy those: [`Edit`] writes their keys to a
//! [`Delta`], a small table (its own arena: two `memcpy`s to copy) that a lookup probes first
//! when there is one (one branch when there is none), with removed keys marked so. The delta is
//! folded into the shards later ([`NameIndex::folded`], copying each shard it touches once), by
//! the control plane once changes pause, or within an edit that would grow it past
//! [`DELTA_MAX`]: adding a route at a million names costs microseconds, not a 4 MiB copy.
//!
//! ## The wildcard filter
//! A one-bit-per-slot filter (a bitmap of eight bits per wildcard, so it stays in cache) says
//! whether a name's parent can be a wildcard at all; only then is the wildcard's slot read beside
//! the exact one. An exact hit or a miss under a parent that has no wildcard reads what it
//! would read without wildcards.

use super::RouteId;
use crate::sys::{parallel_map, HugeBuf};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// Keys per shard that a build aims for: slots and arena about 2 MiB each.
const TARGET_PER_SHARD: usize = 80 * 1024;
/// The most shards (a build at tens of millions of names).
const MAX_BITS: u32 = 10;
const EMPTY: u32 = u32::MAX;
/// Set in [`Slot::route`] for a wildcard parent.
const WILD: u32 = 1 << 31;
/// Route ids must stay below this (the top bit is the wildcard flag, `EMPTY` is taken).
pub const MAX_ROUTES: usize = (WILD - 1) as usize;
/// Keys a [`Delta`] holds at most: an edit that would pass this folds the delta into the shards
/// and goes on there (a change of thousands of routes, a reload).
const DELTA_MAX: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The low 32 bits of the key's hash (which also place it in its shard).
    hash: u32,
    /// Offset of the key's length byte in the shard's arena.
    off: u32,
    /// The route, with [`WILD`] for a wildcard parent; [`EMPTY`] for a free slot.
    route: u32,
}

const EMPTY_SLOT: Slot = Slot { hash: 0, off: 0, route: EMPTY };

/// The kind of a key: an exact name or the parent of a `*.` wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exact,
    Wildcard,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Exact(RouteId),
    /// The wildcard over the name's parent.
    Wildcard(RouteId),
    None,
}

#[derive(Clone, Debug, Default)]
struct Shard {
    /// Keys back to back; `arena[..used]` holds them.
    arena: HugeBuf<u8>,
    used: usize,
    /// Arena bytes of removed keys (compacted when they are half of it).
    garbage: usize,
    slots: HugeBuf<Slot>,
    len: usize,
}

/// The index (cheap to clone: the shards are shared).
#[derive(Clone, Debug)]
pub struct NameIndex {
    shards: Box<[Arc<Shard>]>,
    bits: u32,
    seed: u64,
    exact: usize,
    wildcard: usize,
    /// Bit `((h32 * bits) >> 32)` set for each wildcard parent's hash `h32` ([`filter_bit`]).
    filter: Arc<Vec<u64>>,
    /// Keys changed since the shards were last folded ([`Delta`]), probed before them; `None`
    /// (the usual state) costs a lookup one branch.
    delta: Option<Arc<Delta>>,
}

impl Default for NameIndex {
    fn default() -> Self {
        Self::empty(0, new_seed())
    }
}

fn new_seed() -> u64 {
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// Collects keys, then builds a [`NameIndex`] (in parallel over shards).
#[derive(Default)]
pub struct NameIndexBuilder {
    keys: Vec<(Box<str>, Kind, RouteId)>,
}

/// A key claimed twice: the key (wildcards as `*.parent`) and both routes.
pub type Duplicate = (String, RouteId, RouteId);

impl NameIndexBuilder {
    pub fn with_capacity(names: usize) -> Self {
        Self { keys: Vec::with_capacity(names) }
    }

    /// Adds a key of at most 255 bytes (host names are at most 253): an exact name, or the parent
    /// of a wildcard.
    pub fn push(&mut self, key: &str, kind: Kind, route: RouteId) {
        self.keys.push((key.into(), kind, route));
    }

    /// Builds the index; a key pushed twice is an error carrying it and both routes.
    pub fn build(self) -> Result<NameIndex, Duplicate> {
        NameIndex::from_keys(self.keys.iter().map(|(k, kind, r)| (k.as_ref(), *kind, *r)), self.keys.len())
    }
}

/// Shard bits for `n` keys.
fn bits_for(n: usize) -> u32 {
    let mut bits = 0;
    while bits < MAX_BITS && (n >> bits) > TARGET_PER_SHARD {
        bits += 1;
    }
    bits
}

/// Slots for a shard holding `n` keys (load factor 1/2, at least 8).
fn slots_for(n: usize) -> usize {
    (n * 2 + 1).max(8)
}

impl NameIndex {
    fn empty(bits: u32, seed: u64) -> Self {
        let shards = (0..1usize << bits).map(|_| Arc::new(Shard::with_slots(8, 0))).collect();
        Self { shards, bits, seed, exact: 0, wildcard: 0, filter: Arc::new(vec![0; 1]), delta: None }
    }

    /// Builds an index of borrowed keys (no copy of each key is made on the way).
    pub fn from_borrowed(keys: Vec<(&str, Kind, RouteId)>) -> Result<Self, Duplicate> {
        let n = keys.len();
        Self::from_keys(keys.into_iter(), n)
    }

    fn from_keys<'a>(keys: impl Iterator<Item = (&'a str, Kind, RouteId)>, n: usize) -> Result<Self, Duplicate> {
        let seed = new_seed();
        let bits = bits_for(n);
        // Hash once, in parallel; bucket by shard; build the shards in parallel.
        let keys: Vec<(&str, Kind, RouteId)> = keys.collect();
        let hash = |&(k, kind, _): &(&str, Kind, RouteId)| key_hash(seed, k, kind);
        let hashes = if n >= 16 * 1024 { parallel_map(&keys, hash) } else { keys.iter().map(hash).collect() };
        let mut per_shard: Vec<Vec<u32>> = vec![Vec::new(); 1 << bits];
        for (i, &h) in hashes.iter().enumerate() {
            per_shard[shard_of(h, bits)].push(i as u32);
        }
        let built = parallel_map(&per_shard, |members| {
            let bytes: usize = members.iter().map(|&i| keys[i as usize].0.len().min(255) + 1).sum();
            let mut shard = Shard::with_slots(slots_for(members.len()), bytes);
            for &i in members {
                let (k, kind, route) = keys[i as usize];
                if let Err(other) = shard.insert(hashes[i as usize] as u32, k.as_bytes(), kind, route) {
                    return Err(duplicate(k, kind, other, route));
                }
            }
            Ok(shard)
        });
        let mut shards = Vec::with_capacity(built.len());
        let (mut exact, mut wildcard) = (0, 0);
        for s in built {
            let s = s?;
            for slot in s.slots.iter().filter(|s| s.route != EMPTY) {
                if slot.route & WILD != 0 {
                    wildcard += 1;
                } else {
                    exact += 1;
                }
            }
            shards.push(Arc::new(s));
        }
        let mut index = Self {
            shards: shards.into_boxed_slice(),
            bits,
            seed,
            exact,
            wildcard,
            filter: Arc::default(),
            delta: None,
        };
        index.filter = Arc::new(index.build_filter());
        Ok(index)
    }

    /// The wildcard filter for the keys now in the index: eight bits per wildcard (at least 64).
    fn build_filter(&self) -> Vec<u64> {
        let bits = (self.wildcard * 8).max(64).next_power_of_two();
        let mut f = vec![0u64; bits / 64];
        for s in self.shards.iter() {
            for slot in s.slots.iter().filter(|s| s.route != EMPTY && s.route & WILD != 0) {
                let b = filter_bit(slot.hash, bits);
                f[b / 64] |= 1 << (b % 64);
            }
        }
        f
    }

    /// Whether a wildcard parent may hash to `h32`.
    #[inline]
    fn may_be_wild(&self, h32: u32) -> bool {
        let f = &self.filter;
        let b = filter_bit(h32, f.len() * 64);
        f.get(b / 64).is_some_and(|w| w >> (b % 64) & 1 != 0)
    }

    /// What `name` (already normalised) finds: its exact entry, else the wildcard over its
    /// parent, else nothing.
    #[inline]
    pub fn lookup(&self, name: &str) -> Found {
        if let Some(d) = &self.delta {
            return self.lookup_with(d, name);
        }
        let b = name.as_bytes();
        let (dot, parent, hp, he) = self.hash_name(b);
        let (se, ie) = self.home(he);
        let first_e = se.slots[ie];
        // Most exact hits are in their home slot: answered from two cache lines (the slot and
        // the name), as if there were no wildcards.
        if first_e.hash == he as u32 && first_e.route & WILD == 0 && name_at(&se.arena, first_e.off) == b {
            return Found::Exact(RouteId(first_e.route));
        }
        let hw = hash_wild(hp);
        if dot.is_none() || !self.may_be_wild(hw as u32) {
            return match first_e.route {
                EMPTY => Found::None,
                _ => se.find_from(ie, first_e, he as u32, b, 0).map_or(Found::None, |r| Found::Exact(RouteId(r))),
            };
        }
        let (sw, iw) = self.home(hw);
        // The wildcard's slot is loaded before the rest of the exact probe is compared: the
        // misses overlap.
        let first_w = sw.slots[iw];
        if first_e.route != EMPTY {
            if let Some(r) = se.find_from(ie, first_e, he as u32, b, 0) {
                return Found::Exact(RouteId(r));
            }
        }
        if first_w.route == EMPTY {
            return Found::None;
        }
        match sw.find_from(iw, first_w, hw as u32, parent, WILD) {
            Some(r) => Found::Wildcard(RouteId(r)),
            None => Found::None,
        }
    }

    /// One pass over a name: where its first dot is, its parent, the parent's hash state and the
    /// name's exact hash (the wildcard's is `hash_wild` of the state).
    #[inline(always)]
    fn hash_name<'n>(&self, b: &'n [u8]) -> (Option<usize>, &'n [u8], u64, u64) {
        let dot = b.iter().position(|&c| c == b'.');
        let (label, parent) = match dot {
            Some(i) => (&b[..i], &b[i + 1..]),
            None => (b, &b[b.len()..]),
        };
        let hp = hash_parent(self.seed, parent);
        (dot, parent, hp, hash_exact(hp, label))
    }

    /// [`NameIndex::lookup`] while keys changed since the last fold wait in the delta: the
    /// delta answers first for each of the two keys, the shards for what it does not hold.
    #[inline(never)]
    fn lookup_with(&self, d: &Delta, name: &str) -> Found {
        let b = name.as_bytes();
        let (dot, parent, hp, he) = self.hash_name(b);
        match d.get(he, b, 0) {
            Some(Some(r)) => return Found::Exact(RouteId(r)),
            Some(None) => {}
            None => {
                let (s, i) = self.home(he);
                if let Some(r) = s.find(i, he as u32, b, 0) {
                    return Found::Exact(RouteId(r));
                }
            }
        }
        if dot.is_none() {
            return Found::None;
        }
        let hw = hash_wild(hp);
        match d.get(hw, parent, WILD) {
            Some(Some(r)) => Found::Wildcard(RouteId(r)),
            Some(None) => Found::None,
            None if self.may_be_wild(hw as u32) => {
                let (s, i) = self.home(hw);
                s.find(i, hw as u32, parent, WILD).map_or(Found::None, |r| Found::Wildcard(RouteId(r)))
            }
            None => Found::None,
        }
    }

    /// The route of `key` of `kind`, exactly (no wildcard fallback).
    pub fn get(&self, key: &str, kind: Kind) -> Option<RouteId> {
        let h = key_hash(self.seed, key, kind);
        if let Some(d) = &self.delta {
            if let Some(r) = d.get(h, key.as_bytes(), flag(kind)) {
                return r.map(RouteId);
            }
        }
        let (s, i) = self.home(h);
        s.find(i, h as u32, key.as_bytes(), flag(kind)).map(RouteId)
    }

    /// Exact names.
    pub fn exact_len(&self) -> usize {
        self.exact
    }

    /// Wildcard parents.
    pub fn wildcard_len(&self) -> usize {
        self.wildcard
    }

    pub fn len(&self) -> usize {
        self.exact + self.wildcard
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shards (the unit of copy-on-write).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Every key with its kind and route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Kind, RouteId)> + '_ {
        let delta = self.delta.as_deref();
        let seed = self.seed;
        let kind_of = |flag: u32| if flag & WILD != 0 { Kind::Wildcard } else { Kind::Exact };
        let stored = self.shards.iter().flat_map(move |s| {
            s.slots.iter().filter(|s| s.route != EMPTY).map(move |slot| {
                // The arena holds only keys that arrived as `&str`.
                (
                    std::str::from_utf8(name_at(&s.arena, slot.off)).unwrap_or(""),
                    kind_of(slot.route),
                    RouteId(slot.route & !WILD),
                )
            })
        });
        // Keys the delta holds are its to give (or to hide: removed ones).
        let stored = stored.filter(move |(k, kind, _)| {
            delta.is_none_or(|d| d.find(key_hash(seed, k, *kind), k.as_bytes(), flag(*kind)).is_none())
        });
        let changed = delta.into_iter().flat_map(move |d| {
            d.entries.iter().filter(|e| e.route != EMPTY).map(move |e| {
                (std::str::from_utf8(name_at(&d.keys, e.off)).unwrap_or(""), kind_of(e.flag), RouteId(e.route))
            })
        });
        stored.chain(changed)
    }

    /// Bytes of heap this index holds (arenas, slots and the delta).
    pub fn heap_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.arena.allocated() + s.slots.allocated()).sum::<usize>()
            + self.filter.len() * 8
            + self.delta.as_ref().map_or(0, |d| d.bytes())
    }

    /// Shards this index shares with `other` (the same `Arc`).
    #[cfg(test)]
    pub(crate) fn shards_shared_with(&self, other: &Self) -> usize {
        self.shards.iter().zip(other.shards.iter()).filter(|(a, b)| Arc::ptr_eq(a, b)).count()
    }

    /// Keys changed since the shards were last folded (0: the index is all in its shards).
    pub fn delta_len(&self) -> usize {
        self.delta.as_ref().map_or(0, |d| d.entries.len())
    }

    /// This index with its delta folded into the shards (the shards that delta touches copied,
    /// the others shared); `None` when there is no delta. The control thread does this once
    /// changes pause, off the path of any change.
    pub fn folded(&self) -> Option<Self> {
        self.delta.as_ref()?;
        let mut index = self.clone();
        let mut touched = vec![false; index.shards.len()];
        index.fold(&mut touched);
        index.refilter();
        Some(index)
    }

    /// Moves the delta's keys into the shards (copying each shard it touches once).
    fn fold(&mut self, touched: &mut [bool]) {
        let Some(d) = self.delta.take() else { return };
        for e in &d.entries {
            let i = shard_of(e.hash, self.bits);
            touched[i] = true;
            let shard = Arc::make_mut(&mut self.shards[i]);
            let key = name_at(&d.keys, e.off);
            // Whatever the shard had for the key goes; what the delta says comes in.
            shard.remove(e.hash as u32, key, e.flag);
            if e.route == EMPTY {
                continue;
            }
            if (shard.len + 1) * 4 > shard.slots.len() * 3 {
                shard.grow();
            }
            let kind = if e.flag != 0 { Kind::Wildcard } else { Kind::Exact };
            let _ = shard.insert(e.hash as u32, key, kind, RouteId(e.route));
            if e.flag != 0 {
                let f = Arc::make_mut(&mut self.filter);
                let b = filter_bit(e.hash as u32, f.len() * 64);
                if let Some(w) = f.get_mut(b / 64) {
                    *w |= 1 << (b % 64);
                }
            }
        }
    }

    /// Removed wildcards leave their bits (a false positive costs one probe); a filter that has
    /// become crowded or sparse is made again.
    fn refilter(&mut self) {
        let bits = self.filter.len() * 64;
        if self.wildcard * 4 > bits || (bits > 4096 && self.wildcard * 32 < bits) {
            self.filter = Arc::new(self.build_filter());
        }
    }

    /// Starts a change: it goes to the delta (copied: a few KiB), or, past `DELTA_MAX` keys, to
    /// the shards it touches (copied), the others shared.
    pub fn edit(&self) -> Edit {
        Edit { base: self.clone(), touched: vec![false; self.shards.len()], direct: false }
    }

    #[inline]
    fn home(&self, h: u64) -> (&Shard, usize) {
        let s = &self.shards[shard_of(h, self.bits)];
        (s, s.home(h as u32))
    }
}

/// A change in progress to a [`NameIndex`] (see [`NameIndex::edit`]).
pub struct Edit {
    base: NameIndex,
    touched: Vec<bool>,
    /// The delta was full and folded: the rest of this edit goes to the shards.
    direct: bool,
}

impl Edit {
    /// The delta to write to, or `None` once this edit writes to the shards (the delta folded
    /// into them when it would grow past [`DELTA_MAX`]).
    fn delta(&mut self) -> Option<&mut Delta> {
        if !self.direct && self.base.delta_len() >= DELTA_MAX {
            self.base.fold(&mut self.touched);
            self.direct = true;
        }
        if self.direct {
            return None;
        }
        Some(Arc::make_mut(self.base.delta.get_or_insert_with(Arc::default)))
    }

    fn shard(&mut self, h: u64) -> &mut Shard {
        let i = shard_of(h, self.base.bits);
        self.touched[i] = true;
        Arc::make_mut(&mut self.base.shards[i])
    }

    /// Adds `key`; if it is already claimed, the route that claims it.
    pub fn insert(&mut self, key: &str, kind: Kind, route: RouteId) -> Result<(), RouteId> {
        let h = key_hash(self.base.seed, key, kind);
        if let Some(owner) = self.base.get(key, kind) {
            return Err(owner);
        }
        if let Some(d) = self.delta() {
            // The lookup asks the delta before the filter: the bit is set when it is folded.
            d.set(h, key.as_bytes(), flag(kind), route.0);
        } else {
            let shard = self.shard(h);
            if (shard.len + 1) * 4 > shard.slots.len() * 3 {
                shard.grow();
            }
            shard.insert(h as u32, key.as_bytes(), kind, route).map_err(RouteId)?;
            if kind == Kind::Wildcard {
                let f = Arc::make_mut(&mut self.base.filter);
                let b = filter_bit(h as u32, f.len() * 64);
                if let Some(w) = f.get_mut(b / 64) {
                    *w |= 1 << (b % 64);
                }
            }
        }
        match kind {
            Kind::Exact => self.base.exact += 1,
            Kind::Wildcard => self.base.wildcard += 1,
        }
        Ok(())
    }

    /// Removes `key` if `route` owns it; whether it did.
    pub fn remove(&mut self, key: &str, kind: Kind, route: RouteId) -> bool {
        let h = key_hash(self.base.seed, key, kind);
        let owner = self.base.get(key, kind);
        if owner != Some(route) {
            return false;
        }
        if let Some(d) = self.delta() {
            d.set(h, key.as_bytes(), flag(kind), EMPTY);
        } else {
            self.shard(h).remove(h as u32, key.as_bytes(), flag(kind));
        }
        match kind {
            Kind::Exact => self.base.exact -= 1,
            Kind::Wildcard => self.base.wildcard -= 1,
        }
        true
    }

    /// The current owner of `key`, this change included.
    pub fn get(&self, key: &str, kind: Kind) -> Option<RouteId> {
        self.base.get(key, kind)
    }

    /// Shards copied so far.
    pub fn touched(&self) -> usize {
        self.touched.iter().filter(|t| **t).count()
    }

    /// The new index. When the table has outgrown its shards (8 times the names they were
    /// sized for), it is rebuilt with more.
    pub fn finish(self) -> NameIndex {
        let index = self.base;
        if bits_for(index.len()) > index.bits + 2 {
            let n = index.len();
            let keys: Vec<(String, Kind, RouteId)> = index.iter().map(|(k, kind, r)| (k.to_owned(), kind, r)).collect();
            // The keys were unique in the old index, so they are in the new one.
            if let Ok(rebuilt) = NameIndex::from_keys(keys.iter().map(|(k, kind, r)| (k.as_str(), *kind, *r)), n) {
                return rebuilt;
            }
        }
        let mut index = index;
        index.refilter();
        index
    }
}

fn flag(kind: Kind) -> u32 {
    match kind {
        Kind::Exact => 0,
        Kind::Wildcard => WILD,
    }
}

fn duplicate(key: &str, kind: Kind, first: u32, second: RouteId) -> Duplicate {
    let name = match kind {
        Kind::Exact => key.to_owned(),
        Kind::Wildcard => format!("*.{key}"),
    };
    (name, RouteId(first), second)
}

/// Keys added, moved or removed since the shards were last folded: a small open-addressing
/// table (its own arena of keys, so that copying it for the next change is two `memcpy`s),
/// probed before the shards. A change of one route writes here instead of copying the shards
/// its names fall in (a few MiB each at a million names); the control thread folds it into the
/// shards once changes pause ([`NameIndex::folded`]).
#[derive(Clone, Debug, Default)]
struct Delta {
    entries: Vec<DeltaEntry>,
    /// Keys as in a shard's arena: a length byte, then the bytes.
    keys: Vec<u8>,
    /// `entries` index + 1 per slot (0: free); a power of two, at most half full.
    index: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct DeltaEntry {
    hash: u64,
    off: u32,
    /// [`WILD`] for a wildcard parent, else 0.
    flag: u32,
    /// The route; [`EMPTY`] for a key removed.
    route: u32,
}

impl Delta {
    #[inline]
    fn find(&self, h: u64, key: &[u8], flag: u32) -> Option<usize> {
        if self.index.is_empty() {
            return None;
        }
        let key = &key[..key.len().min(255)];
        let mask = self.index.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let e = self.index[i].checked_sub(1)? as usize;
            let entry = self.entries.get(e)?;
            if entry.hash == h && entry.flag == flag && name_at(&self.keys, entry.off) == key {
                return Some(e);
            }
            i = (i + 1) & mask;
        }
    }

    /// What the delta says of a key: `Some(Some(route))`, `Some(None)` for removed, `None` when
    /// the shards know.
    #[inline]
    fn get(&self, h: u64, key: &[u8], flag: u32) -> Option<Option<u32>> {
        self.find(h, key, flag).map(|e| Some(self.entries[e].route).filter(|&r| r != EMPTY))
    }

    /// Sets a key's route ([`EMPTY`]: removed).
    fn set(&mut self, h: u64, key: &[u8], flag: u32, route: u32) {
        if let Some(e) = self.find(h, key, flag) {
            self.entries[e].route = route;
            return;
        }
        if (self.entries.len() + 1) * 2 > self.index.len() {
            let n = (self.index.len() * 2).max(16);
            self.index = vec![0; n];
            for e in 0..self.entries.len() {
                self.place(e);
            }
        }
        let key = &key[..key.len().min(255)];
        let off = self.keys.len() as u32;
        self.keys.push(key.len() as u8);
        self.keys.extend_from_slice(key);
        self.entries.push(DeltaEntry { hash: h, off, flag, route });
        self.place(self.entries.len() - 1);
    }

    fn place(&mut self, e: usize) {
        let mask = self.index.len() - 1;
        let mut i = self.entries[e].hash as usize & mask;
        while self.index[i] != 0 {
            i = (i + 1) & mask;
        }
        self.index[i] = e as u32 + 1;
    }

    fn bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<DeltaEntry>() + self.keys.capacity() + self.index.capacity() * 4
    }
}

impl Shard {
    fn with_slots(n: usize, arena: usize) -> Self {
        Self { arena: HugeBuf::filled(arena, 0), used: 0, garbage: 0, slots: HugeBuf::filled(n, EMPTY_SLOT), len: 0 }
    }

    /// The first slot for a key hashing to `h`: the hash scaled to the shard's size (no modulo).
    #[inline]
    fn home(&self, h: u32) -> usize {
        ((h as u64 * self.slots.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    #[inline]
    fn find(&self, i: usize, h: u32, key: &[u8], flag: u32) -> Option<u32> {
        let first = self.slots[i];
        if first.route == EMPTY {
            return None;
        }
        self.find_from(i, first, h, key, flag)
    }

    /// Probes from slot `i` (whose content `slot` was already read) for `key` with `flag`.
    #[inline]
    fn find_from(&self, mut i: usize, mut slot: Slot, h: u32, key: &[u8], flag: u32) -> Option<u32> {
        loop {
            if slot.hash == h && slot.route & WILD == flag && name_at(&self.arena, slot.off) == key {
                return Some(slot.route & !WILD);
            }
            i = self.next(i);
            slot = self.slots[i];
            if slot.route == EMPTY {
                return None;
            }
        }
    }

    /// Inserts; the owner's raw route if the key is already there. The caller keeps the load
    /// factor below 1.
    fn insert(&mut self, h: u32, key: &[u8], kind: Kind, route: RouteId) -> Result<(), u32> {
        let key = &key[..key.len().min(255)];
        let flag = flag(kind);
        let mut i = self.home(h);
        loop {
            let slot = self.slots[i];
            if slot.route == EMPTY {
                let need = self.used + 1 + key.len();
                if need > self.arena.len() {
                    let mut grown = HugeBuf::filled(need.max(self.arena.len() * 3 / 2).max(64), 0);
                    grown[..self.used].copy_from_slice(&self.arena[..self.used]);
                    self.arena = grown;
                }
                let off = self.used as u32;
                let arena = &mut self.arena;
                arena[self.used] = key.len() as u8;
                arena[self.used + 1..need].copy_from_slice(key);
                self.used = need;
                self.slots[i] = Slot { hash: h, off, route: route.0 | flag };
                self.len += 1;
                return Ok(());
            }
            if slot.hash == h && slot.route & WILD == flag && name_at(&self.arena, slot.off) == key {
                return Err(slot.route & !WILD);
            }
            i = self.next(i);
        }
    }

    /// Removes a key known to be present, shifting later entries of its run back so that no
    /// probe sequence is broken (no tombstones).
    fn remove(&mut self, h: u32, key: &[u8], flag: u32) {
        let mut i = self.home(h);
        loop {
            let slot = self.slots[i];
            if slot.route == EMPTY {
                return;
            }
            if slot.hash == h && slot.route & WILD == flag && name_at(&self.arena, slot.off) == key {
                break;
            }
            i = self.next(i);
        }
        self.garbage += name_at(&self.arena, self.slots[i].off).len() + 1;
        self.len -= 1;
        let mut hole = i;
        let mut j = self.next(hole);
        loop {
            let slot = self.slots[j];
            if slot.route == EMPTY {
                break;
            }
            let home = self.home(slot.hash);
            // Move `slot` into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.slots[hole] = slot;
                hole = j;
            }
            j = self.next(j);
        }
        self.slots[hole] = EMPTY_SLOT;
        if self.garbage * 2 > self.used {
            self.rebuild(self.slots.len());
        }
    }

    /// Doubles the slots (a shard that filled up through changes).
    fn grow(&mut self) {
        self.rebuild(slots_for(self.len + 1).max(self.slots.len() * 2));
    }

    /// Re-inserts every key into `n` fresh slots and a compacted arena.
    fn rebuild(&mut self, n: usize) {
        let live: usize =
            self.slots.iter().filter(|s| s.route != EMPTY).map(|s| self.arena[s.off as usize] as usize + 1).sum();
        let mut fresh = Shard::with_slots(n, live);
        for slot in self.slots.iter().filter(|s| s.route != EMPTY) {
            let key = name_at(&self.arena, slot.off);
            let kind = if slot.route & WILD != 0 { Kind::Wildcard } else { Kind::Exact };
            let _ = fresh.insert(slot.hash, key, kind, RouteId(slot.route & !WILD));
        }
        *self = fresh;
    }
}

/// The filter bit of a wildcard parent's hash, among `bits`.
#[inline]
fn filter_bit(h32: u32, bits: usize) -> usize {
    // The high bits of the 32: the slot position uses the product with the shard's size, and
    // the two must not be the same bits.
    ((h32.rotate_left(16) as u64 * bits as u64) >> 32) as usize
}

#[inline]
fn shard_of(h: u64, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (h >> (64 - bits)) as usize
    }
}

/// The key stored at `off`: a length byte, then the bytes. Offsets come only from the shard.
#[inline]
fn name_at(arena: &[u8], off: u32) -> &[u8] {
    let off = off as usize;
    let len = arena.get(off).copied().unwrap_or(0) as usize;
    arena.get(off + 1..off + 1 + len).unwrap_or(&[])
}

/// The hash of a key: an exact name continues from its parent's state over its first label;
/// a wildcard parent is its parent's state, finished differently.
fn key_hash(seed: u64, key: &str, kind: Kind) -> u64 {
    let b = key.as_bytes();
    let b = &b[..b.len().min(255)];
    match kind {
        Kind::Wildcard => hash_wild(hash_parent(seed, b)),
        Kind::Exact => match b.iter().position(|&c| c == b'.') {
            Some(i) => hash_exact(hash_parent(seed, &b[i + 1..]), &b[..i]),
            None => hash_exact(hash_parent(seed, &[]), b),
        },
    }
}

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// Folds `bytes` into `h`, 8 at a time with a multiply-fold.
#[inline]
fn fold(mut h: u64, bytes: &[u8]) -> u64 {
    h ^= (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    h
}

/// murmur3's avalanche, so that both the low (slot) and high (shard) bits are well mixed.
#[inline]
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The unfinished state after the parent domain.
#[inline]
fn hash_parent(seed: u64, parent: &[u8]) -> u64 {
    fold(seed, parent)
}

#[inline]
fn hash_exact(parent_state: u64, label: &[u8]) -> u64 {
    finish(fold(parent_state ^ 0x51_7cc1_b727_220a, label))
}

#[inline]
fn hash_wild(parent_state: u64) -> u64 {
    finish(parent_state ^ 0x2545_f491_4f6c_dd1d)
}
