//! The worker's one timer: every connection deadline of a worker (the hello timeout, the idle
//! watchdog, the back end's ServerHello wait) on one wheel, advanced by the worker's tick.
//!
//! A connection arms a [`Deadline`] (a slab slot and a bucket entry: no allocation once the
//! worker has warmed up, no runtime timer, nothing in the kernel) and drops it when that stage
//! ends; a connection that ends in microseconds costs an insert and a remove, and never a timer
//! that could not fire first. Activity ([`Deadline::touch`]) only writes the current tick into
//! the slot: the wheel re-files the entry lazily when its old due tick comes round.
//!
//! When a deadline passes, the wheel shuts its sockets down (`shutdown(2)` both ways), which
//! completes every operation pending on them: the connection's task wakes, finds its socket
//! closed, and asks [`Deadline::fired`] whether that was the timeout. Deadlines are checked on
//! each tick of [`TICK`]: they fire at most one tick late.

use crate::sys::Socket;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// How often the worker advances its wheel (its housekeeping tick).
pub const TICK: Duration = Duration::from_millis(100);
/// Buckets of the wheel: deadlines up to this many ticks ahead are filed exactly; later ones
/// are looked at once per turn and re-filed.
const SLOTS: u32 = 256;
/// `bucket` of an entry that is in no bucket (it fired).
const NONE: u32 = u32::MAX;

struct Entry {
    /// Tick of the last activity (or of arming).
    last: u32,
    /// Ticks after `last` at which it fires.
    after: u32,
    bucket: u32,
    /// Index in its bucket's list.
    pos: u32,
    sockets: [Option<Socket>; 2],
}

#[derive(Default)]
struct Wheel {
    entries: Slab<Entry>,
    buckets: Vec<Vec<u32>>,
    /// Ticks processed so far.
    done: u32,
}

impl Wheel {
    fn file(&mut self, key: usize, now: u32) {
        let Some(e) = self.entries.get_mut(key) else { return };
        let due = e.last.saturating_add(e.after);
        // Due within a turn: its own bucket, visited exactly at `due`; else the last bucket of
        // this turn, to be looked at again then.
        let at = if due.saturating_sub(now) < SLOTS { due.max(now + 1) } else { now + SLOTS - 1 };
        let b = at % SLOTS;
        let Some(list) = self.buckets.get_mut(b as usize) else { return };
        e.bucket = b;
        e.pos = list.len() as u32;
        list.push(key as u32);
    }

    fn unfile(&mut self, key: usize) {
        let Some(e) = self.entries.get_mut(key) else { return };
        let (b, pos) = (e.bucket, e.pos as usize);
        e.bucket = NONE;
        let Some(list) = self.buckets.get_mut(b as usize) else { return };
        if pos < list.len() {
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos) {
                if let Some(m) = self.entries.get_mut(moved as usize) {
                    m.pos = pos as u32;
                }
            }
        }
    }
}

/// A worker's deadlines (one thread: `RefCell`s, no locks).
pub struct Timers {
    start: Instant,
    /// The current tick, as of the last [`advance`](Self::advance).
    now: Cell<u32>,
    wheel: RefCell<Wheel>,
}

impl Default for Timers {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Timers {
    pub fn new(start: Instant) -> Self {
        let wheel = Wheel { buckets: (0..SLOTS).map(|_| Vec::new()).collect(), ..Wheel::default() };
        Self { start, now: Cell::new(0), wheel: RefCell::new(wheel) }
    }

    /// Ticks a deadline of `d` waits: rounded up, plus one because the current tick may be
    /// nearly over when it is armed (so a deadline never fires early, and at most two ticks late).
    fn after_ticks(d: Duration) -> u32 {
        let t = d.as_nanos().div_ceil(TICK.as_nanos()).saturating_add(1);
        u32::try_from(t).unwrap_or(u32::MAX)
    }

    /// A deadline `after` from now, or from the last [`Deadline::touch`] (never early, at most
    /// two ticks late): when it passes, `sockets` are shut down both ways.
    pub fn arm(&self, sockets: [Option<&Socket>; 2], after: Duration) -> Deadline<'_> {
        let now = self.now.get();
        let mut w = self.wheel.borrow_mut();
        let entry = Entry {
            last: now,
            after: Self::after_ticks(after),
            bucket: NONE,
            pos: 0,
            sockets: sockets.map(|s| s.cloned()),
        };
        let key = w.entries.insert(entry);
        w.file(key, now);
        Deadline { timers: self, key }
    }

    /// Fires every deadline due by `at`: shuts its sockets down. Returns how many fired.
    pub fn advance(&self, at: Instant) -> usize {
        let elapsed = at.saturating_duration_since(self.start).as_nanos() / TICK.as_nanos();
        let target = u32::try_from(elapsed).unwrap_or(u32::MAX);
        self.now.set(target.max(self.now.get()));
        let mut fired = 0;
        let mut w = self.wheel.borrow_mut();
        // After a long stall every bucket is visited once, which covers every entry.
        let from = w.done.max(target.saturating_sub(SLOTS));
        for t in from + 1..=target {
            let b = (t % SLOTS) as usize;
            let Some(list) = w.buckets.get_mut(b) else { continue };
            let keys = std::mem::take(list);
            for &key in &keys {
                let key = key as usize;
                let Some(e) = w.entries.get_mut(key) else { continue };
                e.bucket = NONE;
                if e.last.saturating_add(e.after) <= target {
                    for s in e.sockets.iter_mut().filter_map(Option::take) {
                        s.shutdown(Shutdown::Both);
                    }
                    fired += 1;
                } else {
                    w.file(key, target);
                }
            }
            // Keep the list's capacity for the next turn.
            let mut keys = keys;
            keys.clear();
            if let Some(list) = w.buckets.get_mut(b) {
                if list.is_empty() {
                    *list = keys;
                }
            }
        }
        w.done = target;
        fired
    }

    /// Deadlines armed now.
    pub fn len(&self) -> usize {
        self.wheel.borrow().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frees the wheel's spare capacity after a burst of connections (housekeeping).
    pub fn shrink(&self) {
        let mut w = self.wheel.borrow_mut();
        if w.entries.is_empty() {
            w.entries = Slab::new();
        } else if w.entries.len() * 4 < w.entries.capacity() {
            w.entries.shrink_to_fit();
        }
        for list in &mut w.buckets {
            if list.len() * 4 < list.capacity() {
                list.shrink_to_fit();
            }
        }
    }
}

/// An armed deadline; disarmed when dropped.
pub struct Deadline<'a> {
    timers: &'a Timers,
    key: usize,
}

impl Deadline<'_> {
    /// Activity: the deadline restarts from now.
    #[inline]
    pub fn touch(&self) {
        let now = self.timers.now.get();
        if let Some(e) = self.timers.wheel.borrow_mut().entries.get_mut(self.key) {
            e.last = now;
        }
    }

    /// Whether the deadline passed (and its sockets were shut down).
    pub fn fired(&self) -> bool {
        self.timers.wheel.borrow().entries.get(self.key).is_some_and(|e| e.bucket == NONE)
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        let mut w = self.timers.wheel.borrow_mut();
        if w.entries.get(self.key).is_some_and(|e| e.bucket != NONE) {
            w.unfile(self.key);
        }
        if w.entries.contains(self.key) {
            w.entries.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fires_once_due_and_not_before() {
        let t0 = Instant::now();
        let timers = Timers::new(t0);
        let d = timers.arm([None, None], ms(250));
        assert_eq!(timers.advance(t0 + ms(200)), 0);
        assert!(!d.fired());
        assert_eq!(timers.advance(t0 + ms(400)), 1);
        assert!(d.fired());
        assert_eq!(timers.advance(t0 + ms(900)), 0, "fires once");
        drop(d);
        assert!(timers.is_empty());
    }

    #[test]
    fn touch_postpones_and_far_deadlines_are_refiled() {
        let t0 = Instant::now();
        let timers = Timers::new(t0);
        let d = timers.arm([None, None], ms(300));
        timers.advance(t0 + ms(250));
        d.touch();
        assert_eq!(timers.advance(t0 + ms(450)), 0, "touched at tick 2, due at tick 5");
        assert_eq!(timers.advance(t0 + ms(700)), 1);
        // Beyond one turn of the wheel (256 ticks = 25.6 s): refiled until due.
        let far = timers.arm([None, None], Duration::from_secs(60));
        let mut at = t0 + ms(700);
        for _ in 0..58 {
            at += Duration::from_secs(1);
            assert_eq!(timers.advance(at), 0);
        }
        assert!(!far.fired());
        assert_eq!(timers.advance(at + Duration::from_secs(3)), 1);
    }

    #[test]
    fn removal_keeps_the_other_entries_filed() {
        let t0 = Instant::now();
        let timers = Timers::new(t0);
        let mut rest: Vec<_> = (0..10).map(|_| timers.arm([None, None], ms(500))).collect();
        drop(rest.remove(0));
        drop(rest.remove(3));
        assert_eq!(timers.advance(t0 + ms(800)), 8);
        assert!(rest.iter().all(Deadline::fired));
        drop(rest);
        assert!(timers.is_empty());
        timers.shrink();
    }

    #[test]
    fn a_stalled_tick_fires_everything_due() {
        let t0 = Instant::now();
        let timers = Timers::new(t0);
        let a = timers.arm([None, None], ms(100));
        let b = timers.arm([None, None], Duration::from_secs(100));
        assert_eq!(timers.advance(t0 + Duration::from_secs(1000)), 2);
        assert!(a.fired() && b.fired());
    }
}
