//! A worker's pooled resources for relaying: pipes for splice, buffers for copies, and the one
//! scratch buffer that reads land in.
//!
//! All of them belong to one worker thread (no locks). Nothing is held by an idle connection:
//! a relay direction takes a pipe when its socket is readable and gives it back once the pipe
//! is drained, so `pipe_pool` pipes serve any number of connections (only those moving bytes
//! at the same moment hold one); reads go to the worker's [`Scratch`] and only what a full
//! socket did not take is kept, in a pooled buffer, until it is sent.
//!
//! Both pools are bounded (pipes in descriptors, buffers in bytes) and shrink when the worker is
//! quiet ([`PipePool::trim`], [`BufPool::trim`], on the worker's housekeeping tick): after a
//! burst of connections, their pipes and buffers go back to the system within two ticks.

use crate::metrics::PipeMiss;
use crate::sys::Pipe;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Size of a pooled relay buffer (and of the buffer a back end's ServerHello is read into).
pub const BUF_SIZE: usize = 16 * 1024;
/// Pipe capacity requested with F_SETPIPE_SZ: 256 KiB moves a bulk stream in few splices
/// while an idle pipe costs no memory (pipe pages are allocated on write).
pub const PIPE_SIZE: usize = 256 * 1024;
/// The worker's scratch buffer: the most one non-blocking read takes (hello or buffered relay).
pub const SCRATCH_SIZE: usize = 64 * 1024;
/// Bytes of free buffers a worker keeps for reuse; more are freed when returned.
pub const MAX_FREE_BUF_BYTES: usize = 1 << 20;

/// A worker's pipes: at most `limit` exist at once (two descriptors each); created when a
/// relay direction has data to move and none is free, reused when returned empty, closed by
/// [`trim`](Self::trim) when not needed.
#[derive(Debug)]
pub struct PipePool {
    free: Vec<Pipe>,
    live: usize,
    limit: usize,
    /// Most pipes in use at once since the last trim.
    peak: usize,
}

impl PipePool {
    pub fn new(limit: usize) -> Self {
        Self { free: Vec::new(), live: 0, limit, peak: 0 }
    }

    /// A clean pipe, or why there is none: the pool's limit is reached (every pipe is moving
    /// bytes for some connection right now), or a new pipe could not be made (descriptors).
    pub(crate) fn take(&mut self) -> Result<Pipe, PipeMiss> {
        let p = match self.free.pop() {
            Some(p) => p,
            None if self.live >= self.limit => return Err(PipeMiss::PoolFull),
            None => {
                let p = Pipe::new(PIPE_SIZE).map_err(|e| PipeMiss::of(&e))?;
                self.live += 1;
                p
            }
        };
        self.peak = self.peak.max(self.in_use());
        Ok(p)
    }

    /// Returns a pipe; one still holding bytes (a relay cut short) is closed instead.
    pub(crate) fn give(&mut self, p: Pipe) {
        if p.held == 0 {
            self.free.push(p);
        } else {
            self.live -= 1;
        }
    }

    /// Closes the free pipes that the busiest moment since the last trim did not need, so an
    /// idle worker holds no pipe after two trims; returns how many were closed.
    pub fn trim(&mut self) -> usize {
        let in_use = self.in_use();
        let keep = self.peak.saturating_sub(in_use).min(self.free.len());
        let closed = self.free.len() - keep;
        // The most recently returned pipes are at the end: keep those (their pages are warm).
        self.free.drain(..closed);
        self.live -= closed;
        self.peak = in_use;
        closed
    }

    /// Pipes in existence (in use or free).
    pub fn live(&self) -> usize {
        self.live
    }

    /// Pipes lent to relays right now.
    pub fn in_use(&self) -> usize {
        self.live - self.free.len()
    }
}

/// A pipe on loan; goes back to its pool when dropped (also when a relay is abandoned).
pub(crate) struct PipeLoan<'a> {
    pipe: Option<Pipe>,
    pool: &'a RefCell<PipePool>,
}

impl<'a> PipeLoan<'a> {
    /// Borrows a pipe from `pool`.
    pub(crate) fn take(pool: &'a RefCell<PipePool>) -> Result<Self, PipeMiss> {
        let pipe = pool.borrow_mut().take()?;
        Ok(Self { pipe: Some(pipe), pool })
    }

    pub(crate) fn get(&mut self) -> &mut Pipe {
        #[allow(clippy::expect_used)]
        self.pipe.as_mut().expect("a loan holds its pipe until dropped")
    }
}

impl Drop for PipeLoan<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pipe.take() {
            self.pool.borrow_mut().give(p);
        }
    }
}

/// Reusable buffers of at least [`BUF_SIZE`] bytes, at most [`MAX_FREE_BUF_BYTES`] of them kept
/// free. Smaller buffers are not pooled (the allocator serves them as fast).
#[derive(Debug, Default)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
    free_bytes: usize,
    /// A buffer was taken since the last trim.
    used: bool,
}

impl BufPool {
    /// An empty buffer with at least `cap` bytes of capacity.
    pub fn take(&mut self, cap: usize) -> Vec<u8> {
        self.used = true;
        if cap < BUF_SIZE {
            return Vec::with_capacity(cap);
        }
        let mut b = match self.free.pop() {
            Some(b) => {
                self.free_bytes -= b.capacity();
                b
            }
            None => Vec::new(),
        };
        b.clear();
        if b.capacity() < cap {
            b.reserve_exact(cap);
        }
        b
    }

    pub fn give(&mut self, b: Vec<u8>) {
        let cap = b.capacity();
        if cap >= BUF_SIZE && self.free_bytes + cap <= MAX_FREE_BUF_BYTES {
            self.free_bytes += cap;
            self.free.push(b);
        }
    }

    /// Frees every free buffer when none was taken since the last trim.
    pub fn trim(&mut self) {
        if !std::mem::take(&mut self.used) {
            self.free = Vec::new();
            self.free_bytes = 0;
        }
    }

    /// Bytes held in free buffers.
    pub fn free_bytes(&self) -> usize {
        self.free_bytes
    }
}

/// The worker's scratch buffer: non-blocking reads land here and are handled (sent on, parsed,
/// or the part that must wait copied out) before the next await, so one buffer serves every
/// connection of the worker. Borrow it only between awaits.
#[derive(Debug)]
pub struct Scratch(Box<[u8]>);

impl Default for Scratch {
    fn default() -> Self {
        Self(vec![0u8; SCRATCH_SIZE].into_boxed_slice())
    }
}

impl Deref for Scratch {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_go_back_when_idle_and_the_limit_holds() {
        let mut pool = PipePool::new(3);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        let c = pool.take().unwrap();
        assert_eq!(pool.take().unwrap_err(), PipeMiss::PoolFull);
        assert_eq!((pool.live(), pool.in_use()), (3, 3));
        pool.give(a);
        pool.give(b);
        // The peak (3 in use) still wants them: nothing closed.
        assert_eq!(pool.trim(), 0);
        assert_eq!(pool.live(), 3);
        // Quiet since: the free ones go.
        assert_eq!(pool.trim(), 2);
        assert_eq!((pool.live(), pool.in_use()), (1, 1));
        pool.give(c);
        assert_eq!(pool.trim(), 0, "the last second needed it");
        assert_eq!(pool.trim(), 1);
        assert_eq!(pool.live(), 0);
    }

    #[test]
    fn a_pipe_returned_with_bytes_is_closed() {
        let mut pool = PipePool::new(2);
        let mut p = pool.take().unwrap();
        p.held = 1;
        pool.give(p);
        assert_eq!(pool.live(), 0);
    }

    #[test]
    fn buffers_are_bounded_in_bytes_and_freed_when_idle() {
        let mut pool = BufPool::default();
        let bufs: Vec<_> = (0..100).map(|_| pool.take(BUF_SIZE)).collect();
        for b in bufs {
            pool.give(b);
        }
        assert!(pool.free_bytes() <= MAX_FREE_BUF_BYTES);
        assert!(pool.free_bytes() >= MAX_FREE_BUF_BYTES - BUF_SIZE);
        // Small buffers are never pooled.
        pool.give(Vec::with_capacity(100));
        pool.trim();
        assert!(pool.free_bytes() > 0, "used since the last trim");
        pool.trim();
        assert_eq!(pool.free_bytes(), 0);
    }
}
