//! [`HugeBuf`]: a fixed-size buffer of plain values that the kernel backs with transparent huge
//! pages. Tables probed at random (the route index: tens of MiB at a million names) otherwise
//! pay a TLB miss on nearly every lookup; a general-purpose allocator gives a few-MiB buffer
//! neither the 2 MiB alignment nor fresh pages that `MADV_HUGEPAGE` needs (measured: a
//! million-name index in sixteen few-MiB shards from the allocator looked up twice as slowly as
//! the same in one buffer). Buffers of [`HUGE_MIN`] bytes and more are mapped from the kernel
//! directly (`mmap`), 2 MiB-aligned, their size rounded up to whole 2 MiB pages, advised before
//! they are first touched, then filled; smaller ones are plain allocations.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

const HUGE: usize = 2 << 20;
/// From this size on, a buffer is made of whole huge pages.
pub const HUGE_MIN: usize = 1 << 20;

/// A boxed slice of `T` (plain data: `Copy`, no drop) in huge pages when it is large.
pub struct HugeBuf<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    /// What was allocated: from the allocator, or (`mapped`) from mmap.
    layout: Layout,
    mapped: bool,
}

// SAFETY: HugeBuf owns its elements exclusively, as a Box<[T]> would; it is Send/Sync exactly
// when T is.
unsafe impl<T: Copy + Send> Send for HugeBuf<T> {}
// SAFETY: shared references give only &[T]; see above.
unsafe impl<T: Copy + Sync> Sync for HugeBuf<T> {}

impl<T: Copy> HugeBuf<T> {
    /// `len` copies of `value`.
    pub fn filled(len: usize, value: T) -> Self {
        Self::init(len, |out| {
            for slot in out.iter_mut() {
                slot.write(value);
            }
        })
    }

    /// A copy of `items`.
    pub fn from_slice(items: &[T]) -> Self {
        Self::init(items.len(), |out| {
            for (slot, v) in out.iter_mut().zip(items) {
                slot.write(*v);
            }
        })
    }

    /// Allocates room for `len` elements and lets `fill` initialise every one of them.
    fn init(len: usize, fill: impl FnOnce(&mut [std::mem::MaybeUninit<T>])) -> Self {
        let size = std::mem::size_of::<T>().saturating_mul(len);
        let layout = if size >= HUGE_MIN {
            Layout::from_size_align(size.next_multiple_of(HUGE), HUGE)
        } else {
            Layout::array::<T>(len)
        };
        let Ok(layout) = layout else { handle_alloc_error(Layout::new::<T>()) };
        let mapped = layout.size() >= HUGE_MIN;
        let ptr = if layout.size() == 0 {
            NonNull::<T>::dangling()
        } else if mapped {
            match map_aligned(layout.size()) {
                Some(p) => p.cast::<T>(),
                None => handle_alloc_error(layout),
            }
        } else {
            // SAFETY: the layout has a non-zero size.
            let raw = unsafe { alloc(layout) };
            match NonNull::new(raw.cast::<T>()) {
                Some(p) => p,
                None => handle_alloc_error(layout),
            }
        };
        if mapped {
            super::advise_huge_pages(ptr.as_ptr().cast::<u8>(), layout.size());
        }
        // SAFETY: the allocation holds `len` elements of T (alignment from the layout, which is
        // at least T's); MaybeUninit<T> has T's layout and needs no initialisation.
        let out = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr().cast::<std::mem::MaybeUninit<T>>(), len) };
        fill(out);
        Self { ptr, len, layout, mapped }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated (whole huge pages for a large buffer).
    pub fn allocated(&self) -> usize {
        self.layout.size()
    }
}

impl<T: Copy> std::ops::Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` elements were initialised by `init`, and the buffer lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for HugeBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref; &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Clone for HugeBuf<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T: Copy> Drop for HugeBuf<T> {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: mapped by map_aligned with exactly this size; nothing refers to it after
            // drop; T needs no drop.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.layout.size()) };
        } else if self.layout.size() != 0 {
            // SAFETY: allocated in `init` with exactly this layout; T needs no drop.
            unsafe { dealloc(self.ptr.as_ptr().cast::<u8>(), self.layout) };
        }
    }
}

/// Fresh anonymous memory of `size` bytes (a multiple of 2 MiB), 2 MiB-aligned: a mapping of
/// `size + 2 MiB`, trimmed to the aligned part.
fn map_aligned(size: usize) -> Option<NonNull<u8>> {
    let total = size.checked_add(HUGE)?;
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing; no file.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE);
    let (head, tail) = (aligned - start, start + total - (aligned + size));
    // SAFETY: both ranges lie inside the mapping just made and outside the part kept.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    NonNull::new(aligned as *mut u8)
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for HugeBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugeBuf").field("len", &self.len).field("allocated", &self.layout.size()).finish()
    }
}

impl<T: Copy> Default for HugeBuf<T> {
    fn default() -> Self {
        Self::from_slice(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_large_and_empty() {
        let empty: HugeBuf<u32> = HugeBuf::filled(0, 7);
        assert!(empty.is_empty());
        let small = HugeBuf::filled(10, 3u16);
        assert_eq!(&*small, &[3u16; 10]);
        let mut large = HugeBuf::filled(3 << 20, 1u8);
        assert_eq!(large.len(), 3 << 20);
        assert_eq!(large.allocated(), 4 << 20);
        assert_eq!(large.as_ptr() as usize % HUGE, 0);
        large[12345] = 9;
        let copy = large.clone();
        assert_eq!(copy[12345], 9);
        assert_eq!(copy.iter().map(|&b| b as usize).sum::<usize>(), (3 << 20) + 8);
    }
}
