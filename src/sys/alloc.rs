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
    /// mimalloc's `mi_option_set(option, value)` (process-wide; read when pages are purged).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v2's `mi_option_e` (the 16th option; the vendored v2
/// header, `libmimalloc-sys`'s default), and its default in milliseconds.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
const PURGE_DELAY_DEFAULT_MS: std::ffi::c_long = 10;

/// While the returned guard lives, memory freed is given back to the kernel at once instead of
/// after mimalloc's purge delay. For reading a configuration before anything serves (`check`,
/// start): parsing a million names on several threads frees hundreds of MiB, and the peak RSS of
/// `check` at 1M names was 452 MB with the delay, 309 MB without (measured). Never while workers
/// serve: an immediate purge costs their frees system calls. Dropping the guard restores the
/// default delay.
pub fn purge_at_once() -> PurgeAtOnce {
    // SAFETY: mi_option_set takes plain integers and may be called at any time; the option is
    // an int read by later purges.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    PurgeAtOnce(())
}

/// See [`purge_at_once`].
pub struct PurgeAtOnce(());

impl Drop for PurgeAtOnce {
    fn drop(&mut self) {
        // SAFETY: as in `purge_at_once`.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_DEFAULT_MS) };
    }
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
