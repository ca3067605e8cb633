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
    /// mimalloc's `mi_option_get(option)` (the value set, or from `MIMALLOC_*`, or the default).
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// `mi_option_purge_delay` in `mi_option_e` (the 16th option, in v3, which `libmimalloc-sys`
/// builds by default, as in v2).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// While the returned guard lives, memory freed is given back to the kernel at once instead of
/// after mimalloc's purge delay. For reading a configuration before anything serves (`check`,
/// start): parsing a million names on several threads frees hundreds of MiB, and the peak RSS of
/// `check` at 1M names was 452 MB with the delay, 309 MB without (measured). Never while workers
/// serve: an immediate purge costs their frees system calls. Dropping the guard restores the
/// delay that was in force (mimalloc's default, or what `MIMALLOC_PURGE_DELAY` set).
pub fn purge_at_once() -> PurgeAtOnce {
    let before = purge_delay_ms();
    // SAFETY: mi_option_set takes plain integers and may be called at any time; the option is
    // an int read by later purges.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    PurgeAtOnce { before }
}

/// mimalloc's purge delay now, in milliseconds.
fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: mi_option_get takes a plain integer and may be called at any time.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

/// See [`purge_at_once`].
pub struct PurgeAtOnce {
    before: std::ffi::c_long,
}

impl Drop for PurgeAtOnce {
    fn drop(&mut self) {
        // SAFETY: as in `purge_at_once`.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, self.before) };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purging_at_once_sets_the_purge_delay_and_gives_the_old_one_back() {
        let before = purge_delay_ms();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // mimalloc v3's default for `purge_delay` (1000 ms; no other option defaults to it):
            // the option number is the right one.
            assert_eq!(before, 1000);
        }
        let guard = purge_at_once();
        assert_eq!(purge_delay_ms(), 0);
        drop(guard);
        assert_eq!(purge_delay_ms(), before);
    }
}
