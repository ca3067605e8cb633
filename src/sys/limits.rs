//! Process limits and memory hints.

use std::io;

/// Raises the soft RLIMIT_NOFILE to the hard limit (every connection costs two fds); returns the
/// new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Hints MADV_HUGEPAGE for the whole 2 MiB pages inside `[ptr, ptr + len)`, before they are
/// first touched. Small ranges and kernels that refuse are fine: it is only a hint.
pub fn advise_huge_pages(ptr: *const u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize).saturating_add(len) & !(HUGE - 1);
    if end > start {
        // SAFETY: madvise with MADV_HUGEPAGE changes only how the kernel backs the pages, never
        // their contents or validity, so no Rust invariant depends on its outcome; a range the
        // caller does not own is refused by the kernel (EINVAL/ENOMEM), and errors are ignored.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

/// `n` zeroed atomics from one zeroed allocation: large ones come straight from the kernel as
/// untouched zero pages, which cost no memory until written (the admission tables).
pub fn zeroed_atomics(n: usize) -> Box<[std::sync::atomic::AtomicU64]> {
    use std::alloc::{alloc_zeroed, handle_alloc_error, Layout};
    use std::sync::atomic::AtomicU64;
    let Ok(layout) = Layout::array::<AtomicU64>(n) else {
        return (0..n).map(|_| AtomicU64::new(0)).collect();
    };
    if layout.size() == 0 {
        return Box::new([]);
    }
    // SAFETY: the layout has a non-zero size; all-zero bytes are a valid AtomicU64; the pointer
    // comes from the global allocator with exactly this layout, which is what `Box` frees with.
    unsafe {
        let p = alloc_zeroed(layout).cast::<AtomicU64>();
        if p.is_null() {
            handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
    }
}
