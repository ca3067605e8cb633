//! Record buffers: one size (four full records and room for a few control records), zeroed
//! once when first allocated and then reused, so that the relay reads into them and seals in
//! them without clearing, growing or allocating anything per record.
//!
//! A connection holds one only while bytes are moving through it: the relay waits for
//! readiness without a buffer, takes one to read, and gives it back once what it read has been
//! sent. Each worker thread keeps its own free list (no locks), at most [`MAX_FREE`] buffers
//! (about 2 MiB); more are freed when returned.

use super::record::{MAX_PLAINTEXT, MAX_RECORD};
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Full records a buffer holds (the plaintext of one read from the back end, sealed in place).
pub(crate) const RECORDS: usize = 4;
/// Room per record for what surrounds its plaintext (header, explicit nonce, type, tag: at most 30).
pub(crate) const OVERHEAD: usize = 32;
/// Bytes of a buffer: [`RECORDS`] full records, and room for control records behind them.
pub(crate) const SIZE: usize = RECORDS * (MAX_PLAINTEXT + OVERHEAD) + 256;
/// Free buffers kept per worker.
const MAX_FREE: usize = 32;

const _: () = assert!(SIZE >= 2 * MAX_RECORD, "a buffer holds at least two of the largest records");

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A record buffer of [`SIZE`] bytes, back on its worker's free list when dropped.
pub(crate) struct RecordBuf(Option<Box<[u8]>>);

impl RecordBuf {
    pub(crate) fn take() -> Self {
        let b = FREE.with(|f| f.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; SIZE].into_boxed_slice());
        Self(Some(b))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl Deref for RecordBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl DerefMut for RecordBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for RecordBuf {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            // A thread-local being torn down (thread exit) just frees the buffer.
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < MAX_FREE {
                    f.push(b);
                }
            });
        }
    }
}

/// Buffers on this thread's free list (for tests and the memory figures).
#[cfg(test)]
pub(crate) fn free() -> usize {
    FREE.with(|f| f.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let held: Vec<RecordBuf> = (0..MAX_FREE + 5).map(|_| RecordBuf::take()).collect();
        assert!(held.iter().all(|b| b.len() == SIZE));
        drop(held);
        assert_eq!(free(), MAX_FREE);
        let mut b = RecordBuf::take();
        assert_eq!(free(), MAX_FREE - 1);
        b[0] = 7;
        drop(b);
        assert_eq!(free(), MAX_FREE);
    }
}
