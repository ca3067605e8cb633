//! Log lines that a flood cannot turn into a flood of lines: at most one per second per call
//! site, carrying how many were held back since the last one (`suppressed = N`).
//!
//! ```ignore
//! crate::warn_every_second!(worker = w, error = %e, "accept: out of descriptors; backing off");
//! crate::debug_every_second!(peer = ?peer, reason = r.as_str(), "connection dropped");
//! ```
//!
//! Each call site has its own [`Limiter`] (a `static` the macro declares), shared by every
//! worker; checking it is one atomic load unless a line is due. The debug form checks first
//! whether debug lines are wanted at all, so a hostile peer costs nothing when they are not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since the first limiter was checked: a clock every call site shares.
fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One line per `every_ns` at most, and a count of the others.
#[derive(Debug)]
pub struct Limiter {
    every_ns: u64,
    /// When the next line may go (ns on [`now_ns`]'s clock).
    next: AtomicU64,
    held_back: AtomicU64,
}

impl Limiter {
    pub const fn new(every_ns: u64) -> Self {
        Self { every_ns, next: AtomicU64::new(0), held_back: AtomicU64::new(0) }
    }

    /// `Some(held back since the last line)` when a line may go now, else `None` (and this one
    /// is counted as held back).
    pub fn check(&self) -> Option<u64> {
        let now = now_ns();
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(next, now.saturating_add(self.every_ns), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// `tracing::warn!` at most once per second per call site, with `suppressed = N`.
#[macro_export]
macro_rules! warn_every_second {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::logs::Limiter = $crate::logs::Limiter::new(1_000_000_000);
        if let Some(suppressed) = LIMIT.check() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

/// `tracing::debug!` at most once per second per call site, with `suppressed = N`; free when
/// debug lines are off.
#[macro_export]
macro_rules! debug_every_second {
    ($($arg:tt)+) => {{
        if ::tracing::enabled!(::tracing::Level::DEBUG) {
            static LIMIT: $crate::logs::Limiter = $crate::logs::Limiter::new(1_000_000_000);
            if let Some(suppressed) = LIMIT.check() {
                ::tracing::debug!(suppressed, $($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_a_count() {
        let l = Limiter::new(60_000_000_000);
        assert_eq!(l.check(), Some(0));
        for _ in 0..5 {
            assert_eq!(l.check(), None);
        }
        let fast = Limiter::new(0);
        assert_eq!(fast.check(), Some(0));
        assert_eq!(fast.check(), Some(0));
        // The count goes with the next line that is let through.
        let l = Limiter::new(0);
        l.held_back.store(7, Ordering::Relaxed);
        assert_eq!(l.check(), Some(7));
    }
}
