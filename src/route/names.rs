//! A read-only map from host name to route, built for a million names.
//!
//! All names are stored back to back in one byte arena, each behind a length byte; the index is
//! split into shards by the top bits of the hash, each an open-addressing table (linear probing,
//! sized for a load factor of 1/2) of 12-byte slots holding the hash, the name's place in the
//! arena and the route. A lookup hashes once, lands in one shard and compares bytes only on a
//! full 32-bit hash match. Per name that is about 24 bytes of index and one length byte beyond the
//! name's own bytes, and a handful of allocations for the whole map instead of one per name.

use super::RouteId;
use crate::sys::advise_huge_pages;
use std::hash::{BuildHasher, Hasher};

/// Shards: each stays a modest allocation-sized run at a million names, and building can place
/// one shard at a time in cache.
const MAX_SHARD_BITS: u32 = 6;
const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Slot {
    hash: u32,
    /// Offset of the length byte in the arena.
    off: u32,
    route: u32,
}

const EMPTY_SLOT: Slot = Slot { hash: 0, off: 0, route: EMPTY };

#[derive(Debug)]
pub struct NameIndex {
    arena: Box<[u8]>,
    slots: Box<[Slot]>,
    /// `shards[i]..shards[i + 1]` are shard i's slots.
    shards: Box<[u32]>,
    shard_bits: u32,
    seed: u64,
    len: usize,
}

/// Collects names, then builds a [`NameIndex`].
pub struct NameIndexBuilder {
    arena: Vec<u8>,
    entries: Vec<(u32, RouteId)>,
}

impl NameIndexBuilder {
    pub fn with_capacity(names: usize) -> Self {
        Self { arena: Vec::with_capacity(names * 24), entries: Vec::with_capacity(names) }
    }

    /// Adds a name of at most 255 bytes (host names are at most 253).
    pub fn push(&mut self, name: &str, route: RouteId) {
        let off = self.arena.len() as u32;
        let bytes = &name.as_bytes()[..name.len().min(255)];
        self.arena.push(bytes.len() as u8);
        self.arena.extend_from_slice(bytes);
        self.entries.push((off, route));
    }

    /// Builds the index; a name pushed twice is an error carrying the name and both routes.
    pub fn build(self) -> Result<NameIndex, (String, RouteId, RouteId)> {
        let n = self.entries.len();
        let shard_bits = if n < 4096 { 0 } else { MAX_SHARD_BITS };
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let arena = huge_copy(&self.arena);
        // Hash once; count per shard so that each shard gets exactly twice its names in slots.
        let hashes: Vec<u64> = self.entries.iter().map(|&(off, _)| hash(seed, name_at(&arena, off))).collect();
        let mut counts = vec![0u32; 1 << shard_bits];
        for &h in &hashes {
            counts[shard_of(h, shard_bits)] += 1;
        }
        let mut shards = Vec::with_capacity(counts.len() + 1);
        let mut total = 0u32;
        shards.push(0);
        for c in counts {
            total += c * 2 + 1;
            shards.push(total);
        }
        let mut index = NameIndex {
            arena,
            slots: huge_filled(total as usize, EMPTY_SLOT),
            shards: shards.into_boxed_slice(),
            shard_bits,
            seed,
            len: n,
        };
        for (&(off, route), &h) in self.entries.iter().zip(&hashes) {
            let (mut i, start, end) = index.home(h);
            loop {
                let slot = index.slots[i];
                if slot.route == EMPTY {
                    index.slots[i] = Slot { hash: h as u32, off, route: route.0 };
                    break;
                }
                if slot.hash == h as u32 && name_at(&index.arena, slot.off) == name_at(&index.arena, off) {
                    let name = String::from_utf8_lossy(name_at(&index.arena, off)).into_owned();
                    return Err((name, RouteId(slot.route), route));
                }
                i = if i + 1 == end { start } else { i + 1 };
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
        let (mut i, start, end) = self.home(h);
        loop {
            let slot = self.slots[i];
            if slot.route == EMPTY {
                return None;
            }
            if slot.hash == h as u32 && name_at(&self.arena, slot.off) == name {
                return Some(RouteId(slot.route));
            }
            i = if i + 1 == end { start } else { i + 1 };
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every name with its route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, RouteId)> + '_ {
        self.slots.iter().filter(|s| s.route != EMPTY).map(|s| {
            // The arena holds only names that arrived as `&str`.
            (std::str::from_utf8(name_at(&self.arena, s.off)).unwrap_or(""), RouteId(s.route))
        })
    }

    /// Bytes of heap this index holds (names and slots).
    pub fn heap_bytes(&self) -> usize {
        self.arena.len() + self.slots.len() * std::mem::size_of::<Slot>() + self.shards.len() * 4
    }

    /// The first slot to probe and the bounds of its shard: the shard from the hash's top bits,
    /// the place in it from the low 32 bits scaled to the shard's size (no modulo).
    #[inline]
    fn home(&self, h: u64) -> (usize, usize, usize) {
        let shard = shard_of(h, self.shard_bits);
        let (start, end) = (self.shards[shard] as usize, self.shards[shard + 1] as usize);
        let size = (end - start) as u64;
        (start + (((h as u32 as u64) * size) >> 32) as usize, start, end)
    }
}

/// A boxed slice of `n` copies of `value`, in transparent huge pages where the kernel allows.
/// At a million names the slots and the arena are tens of MiB probed at random: with 4 KiB
/// pages nearly every lookup also misses the TLB.
fn huge_filled<T: Copy>(n: usize, value: T) -> Box<[T]> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    advise_huge_pages(v.as_ptr().cast(), n * std::mem::size_of::<T>());
    v.resize(n, value);
    v.into_boxed_slice()
}

fn huge_copy(bytes: &[u8]) -> Box<[u8]> {
    let mut v: Vec<u8> = Vec::with_capacity(bytes.len());
    advise_huge_pages(v.as_ptr(), bytes.len());
    v.extend_from_slice(bytes);
    v.into_boxed_slice()
}

#[inline]
fn shard_of(h: u64, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (h >> (64 - bits)) as usize
    }
}

/// The name stored at `off`: a length byte, then the bytes. Offsets come only from the builder.
#[inline]
fn name_at(arena: &[u8], off: u32) -> &[u8] {
    let off = off as usize;
    let len = arena.get(off).copied().unwrap_or(0) as usize;
    arena.get(off + 1..off + 1 + len).unwrap_or(&[])
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
