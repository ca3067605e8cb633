//! A read-only map from host name to route, built for a million names.
//!
//! All names are stored back to back in one byte arena; the index is split into shards by the
//! top bits of the hash, each an open-addressing table (linear probing, load factor at most 1/2)
//! of 16-byte slots holding the hash, the name's place in the arena and the route. A lookup
//! hashes once, lands in one shard and compares bytes only on a full hash match. Per name that
//! is at most 32 bytes of index beyond the name's own bytes, and two allocations for the whole
//! map instead of one per name.

use super::RouteId;
use std::hash::{BuildHasher, Hasher};

/// Shards: enough that each stays a modest allocation at a million names, few enough that a
/// small table is not mostly empty shards.
const MAX_SHARD_BITS: u32 = 6;
const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Slot {
    hash: u32,
    off: u32,
    len: u32,
    route: u32,
}

const EMPTY_SLOT: Slot = Slot { hash: 0, off: 0, len: 0, route: EMPTY };

#[derive(Debug)]
pub struct NameIndex {
    arena: Box<[u8]>,
    slots: Box<[Slot]>,
    /// log2 of the slots per shard; shards are `slots` cut into equal runs.
    shard_slot_bits: u32,
    shard_bits: u32,
    seed: u64,
    len: usize,
}

/// Collects names, then builds a [`NameIndex`].
pub struct NameIndexBuilder {
    arena: Vec<u8>,
    entries: Vec<(u32, u32, RouteId)>,
}

impl NameIndexBuilder {
    pub fn with_capacity(names: usize) -> Self {
        Self { arena: Vec::with_capacity(names * 16), entries: Vec::with_capacity(names) }
    }

    pub fn push(&mut self, name: &str, route: RouteId) {
        let off = self.arena.len() as u32;
        self.arena.extend_from_slice(name.as_bytes());
        self.entries.push((off, name.len() as u32, route));
    }

    /// Builds the index; a name pushed twice is an error carrying the name and both routes.
    pub fn build(self) -> Result<NameIndex, (String, RouteId, RouteId)> {
        let n = self.entries.len();
        let shard_bits = MAX_SHARD_BITS.min((n / 64).max(1).ilog2());
        let per_shard = (n >> shard_bits) + 1;
        // Load factor at most 1/2 in the fullest shard, with some slack for uneven shards.
        let shard_slot_bits = (per_shard * 2 + per_shard / 4 + 8).next_power_of_two().ilog2();
        let mut index = NameIndex {
            arena: self.arena.into_boxed_slice(),
            slots: vec![EMPTY_SLOT; 1usize << (shard_bits + shard_slot_bits)].into_boxed_slice(),
            shard_slot_bits,
            shard_bits,
            seed: std::collections::hash_map::RandomState::new().build_hasher().finish(),
            len: n,
        };
        for &(off, len, route) in &self.entries {
            let name = &index.arena[off as usize..(off + len) as usize];
            let h = hash(index.seed, name);
            let mut i = index.home(h);
            loop {
                let slot = index.slots[i];
                if slot.route == EMPTY {
                    index.slots[i] = Slot { hash: h as u32, off, len, route: route.0 };
                    break;
                }
                if slot.hash == h as u32 && index.name_at(slot) == name {
                    let name = String::from_utf8_lossy(name).into_owned();
                    return Err((name, RouteId(slot.route), route));
                }
                i = index.next(i);
            }
        }
        Ok(index)
    }
}

impl NameIndex {
    /// The route of `name`, which must already be normalised.
    #[inline]
    pub fn get(&self, name: &str) -> Option<RouteId> {
        if self.len == 0 {
            return None;
        }
        let name = name.as_bytes();
        let h = hash(self.seed, name);
        let mut i = self.home(h);
        loop {
            let slot = self.slots[i];
            if slot.route == EMPTY {
                return None;
            }
            if slot.hash == h as u32 && self.name_at(slot) == name {
                return Some(RouteId(slot.route));
            }
            i = self.next(i);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of heap this index holds (names and slots).
    pub fn heap_bytes(&self) -> usize {
        self.arena.len() + self.slots.len() * std::mem::size_of::<Slot>()
    }

    #[inline]
    fn name_at(&self, slot: Slot) -> &[u8] {
        &self.arena[slot.off as usize..(slot.off + slot.len) as usize]
    }

    /// The first slot to probe: the shard from the hash's top bits, the place in it from the low bits.
    #[inline]
    fn home(&self, h: u64) -> usize {
        let shard = if self.shard_bits == 0 { 0 } else { (h >> (64 - self.shard_bits)) as usize };
        let mask = (1usize << self.shard_slot_bits) - 1;
        (shard << self.shard_slot_bits) | (h as usize & mask)
    }

    /// The next slot, wrapping inside the same shard.
    #[inline]
    fn next(&self, i: usize) -> usize {
        let mask = (1usize << self.shard_slot_bits) - 1;
        (i & !mask) | ((i + 1) & mask)
    }
}

/// A fast seeded hash for short strings: 8 bytes at a time with a multiply-fold, finished with
/// murmur3's avalanche so that both the low (slot) and high (shard) bits are well mixed.
#[inline]
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
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
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}
