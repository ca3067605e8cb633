//! A worker's pooled resources for relaying: pipes for splice, buffers for copies.
//!
//! Both pools belong to one worker thread (no locks); a relay borrows from them and returns
//! what it took when it ends (also when it is abandoned: loans return on drop).

use crate::sys::Pipe;
use std::cell::RefCell;

/// Size of a pooled relay buffer (and the minimum size of a hello buffer).
pub const BUF_SIZE: usize = 16 * 1024;
/// Pipe capacity requested with F_SETPIPE_SZ: 256 KiB moves a bulk stream in few splices
/// while an idle pipe costs no memory (pipe pages are allocated on write).
pub const PIPE_SIZE: usize = 256 * 1024;
/// Buffers kept for reuse per worker; more are freed when returned.
const MAX_FREE_BUFS: usize = 4096;

/// A worker's pipes: at most `limit` exist at once; created lazily, reused when returned empty.
#[derive(Debug)]
pub struct PipePool {
    free: Vec<Pipe>,
    live: usize,
    limit: usize,
}

impl PipePool {
    pub fn new(limit: usize) -> Self {
        Self { free: Vec::new(), live: 0, limit }
    }

    /// A clean pipe, or `None` when the pool's limit is reached (or pipe creation failed).
    pub(crate) fn take(&mut self) -> Option<Pipe> {
        if let Some(p) = self.free.pop() {
            return Some(p);
        }
        if self.live >= self.limit {
            return None;
        }
        let p = Pipe::new(PIPE_SIZE).ok()?;
        self.live += 1;
        Some(p)
    }

    /// Returns a pipe; one still holding bytes (a relay cut short) is closed instead.
    pub(crate) fn give(&mut self, p: Pipe) {
        if p.held == 0 {
            self.free.push(p);
        } else {
            self.live -= 1;
        }
    }

    /// Pipes in existence (in use or free).
    pub fn live(&self) -> usize {
        self.live
    }
}

/// A pipe on loan; goes back to its pool when dropped (also when a relay is abandoned).
pub(crate) struct PipeLoan<'a> {
    pipe: Option<Pipe>,
    pool: &'a RefCell<PipePool>,
}

impl PipeLoan<'_> {
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

/// Reusable buffers of at least [`BUF_SIZE`] bytes capacity.
#[derive(Debug, Default)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
}

impl BufPool {
    /// An empty buffer with at least `cap` bytes of capacity.
    pub fn take(&mut self, cap: usize) -> Vec<u8> {
        let mut b = self.free.pop().unwrap_or_default();
        b.clear();
        if b.capacity() < cap {
            b.reserve_exact(cap);
        }
        b
    }

    pub fn give(&mut self, b: Vec<u8>) {
        if b.capacity() >= BUF_SIZE && self.free.len() < MAX_FREE_BUFS {
            self.free.push(b);
        }
    }
}

/// Takes two pipes from `pool`, or none.
pub(crate) fn take_two(pool: &RefCell<PipePool>) -> Option<(PipeLoan<'_>, PipeLoan<'_>)> {
    let mut p = pool.borrow_mut();
    let a = p.take()?;
    match p.take() {
        Some(b) => Some((PipeLoan { pipe: Some(a), pool }, PipeLoan { pipe: Some(b), pool })),
        None => {
            p.give(a);
            None
        }
    }
}
