//! The allocator's side of memory going back to the system.
//!
//! The binary's global allocator is mimalloc (`src/main.rs`), built with its `no_thp` feature:
//! on hosts whose transparent huge pages are `madvise`-only (the common default), mimalloc
//! otherwise asks MADV_HUGEPAGE for every arena it maps, and each connection then pays for 2 MiB
//! pages it barely touches (measured: 47 KiB of RSS per connection waiting for its hello, 8 KiB
//! without; see tuning/README.md, "Memory per connection"). Huge pages stay where they pay: the
//! route table asks for them on its own arena ([`super::advise_huge_pages`]).
//!
//! mimalloc purges freed pages after a delay, but only when the thread that freed them calls
//! into it again; a worker whose clients have left makes no such call, so its freed memory
//! stays resident. [`release_free_memory`] is that call, made by each worker on its housekeeping
//! tick (about once a second).

// Links mimalloc's static library into every binary of the crate (tests and benches too, whose
// global allocator is the system's), so that `mi_collect` resolves.
extern crate mimalloc as _;

extern "C" {
    /// mimalloc's `mi_collect`: frees the calling thread's empty pages and purges what the
    /// purge delay allows (`force` purges everything now, which is slower).
    fn mi_collect(force: bool);
}

/// Returns the calling thread's free allocator pages to the system, as far as mimalloc's purge
/// delay allows (pages freed at least a second ago). Cheap when there is nothing to do; harmless
/// when mimalloc is not the global allocator (it then holds nothing).
pub fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time; it
    // only walks and releases the calling thread's own free pages.
    unsafe { mi_collect(false) }
}

/// Hands memory that was freed back to the kernel now, purge delay or not: after a configuration
/// was read (parsing a million names frees hundreds of MiB) the RSS then is what the table needs.
/// Costs a walk of the calling thread's heap and the abandoned ones; the control plane calls it,
/// never a worker (workers use [`release_free_memory`] on their tick).
pub fn release_all_free_memory() {
    // SAFETY: as in `release_free_memory`: no pointers, any thread, any time.
    unsafe { mi_collect(true) }
}
