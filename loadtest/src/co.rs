//! Open-loop pacing and coordinated-omission correction.
//!
//! In an open loop, request `i` is *intended* to start at `start + i * interval`. Its latency is
//! measured from that intended start, not from the moment a worker got around to sending it, so
//! a stall of the system under test is charged to every request that should have been sent
//! during the stall. That is the correction HdrHistogram documents for `recordValueWithExpectedInterval`
//! (Rust: `Histogram::record_correct`), done at the source; the tests check that both agree.
//! Closed loops can apply `record_correct` after the fact with an expected interval.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};

/// The fixed-rate schedule of an open loop: slots handed out to workers in order.
#[derive(Debug)]
pub struct Schedule {
    interval_ns: u64,
    next: AtomicU64,
}

impl Schedule {
    /// `rate` requests per second.
    pub fn new(rate: f64) -> Self {
        assert!(rate > 0.0);
        Schedule { interval_ns: (1e9 / rate).round().max(1.0) as u64, next: AtomicU64::new(0) }
    }
    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }
    /// Take the next slot: its index and its intended start in ns after the schedule's start.
    pub fn take(&self) -> (u64, u64) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i, i * self.interval_ns)
    }
    /// Intended start of slot `i` in ns after the schedule's start.
    pub fn intended(&self, i: u64) -> u64 {
        i * self.interval_ns
    }
}

/// Latency of a request measured from its intended start (coordinated-omission corrected).
pub fn corrected_latency(intended_ns: u64, end_ns: u64) -> u64 {
    end_ns.saturating_sub(intended_ns)
}

/// Record `value` and the values that a stalled closed loop omitted, exactly as HdrHistogram's
/// `record_correct(value, expected_interval)` does.
pub fn record_with_expected_interval(h: &mut Histogram<u64>, value: u64, expected_interval: u64) {
    record(h, value);
    if expected_interval == 0 || value <= expected_interval {
        return;
    }
    let mut missing = value - expected_interval;
    while missing >= expected_interval {
        record(h, missing);
        missing -= expected_interval;
    }
}

/// Record `v`, growing an auto-resizing histogram, else clamping to its highest trackable value.
pub fn record(h: &mut Histogram<u64>, v: u64) {
    if h.record(v).is_err() {
        h.saturating_record(v);
    }
}

/// Simulate an open loop served by `workers` workers over a sequence of service times (ns),
/// returning (corrected, uncorrected) histograms. A pure model of what the workload threads do.
pub fn simulate_open_loop(interval_ns: u64, service_ns: &[u64], workers: usize) -> (Histogram<u64>, Histogram<u64>) {
    let mut corrected = Histogram::<u64>::new(3).unwrap();
    let mut raw = Histogram::<u64>::new(3).unwrap();
    let sched = Schedule { interval_ns, next: AtomicU64::new(0) };
    let mut free_at = vec![0u64; workers.max(1)];
    for &svc in service_ns {
        let (_, intended) = sched.take();
        // the worker that frees up first takes the slot
        let (w, &t) = free_at.iter().enumerate().min_by_key(|(_, &t)| t).unwrap();
        let start = t.max(intended);
        let end = start + svc;
        free_at[w] = end;
        record(&mut corrected, corrected_latency(intended, end));
        record(&mut raw, end - start);
    }
    (corrected, raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &Histogram<u64>, b: &Histogram<u64>) {
        assert_eq!(a.len(), b.len(), "counts differ");
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(a.value_at_quantile(q), b.value_at_quantile(q), "q {q}");
        }
        for v in a.iter_recorded() {
            assert_eq!(
                v.count_at_value(),
                b.count_between(v.value_iterated_to(), v.value_iterated_to()),
                "at {}",
                v.value_iterated_to()
            );
        }
    }

    #[test]
    fn mine_equals_hdrhistogram_record_correct() {
        let mut a = Histogram::<u64>::new(3).unwrap();
        let mut b = Histogram::<u64>::new(3).unwrap();
        for (v, i) in [(5u64, 10u64), (10, 10), (11, 10), (100, 10), (12345, 100), (1_000_000, 1000), (7, 0)] {
            record_with_expected_interval(&mut a, v, i);
            b.record_correct(v, i).unwrap();
        }
        same(&a, &b);
    }

    #[test]
    fn open_loop_stall_equals_record_correct() {
        // One worker, instant service except one stall of 50 intervals: the open loop charges the
        // stall to the requests that were due during it, like record_correct does for a closed loop.
        let interval = 1_000u64;
        let stall = 50 * interval;
        let mut svc = vec![0u64; 1000];
        svc[100] = stall;
        let (corrected, raw) = simulate_open_loop(interval, &svc, 1);

        let mut expected = Histogram::<u64>::new(3).unwrap();
        // The requests that were due during the stall, and the first one due after it, are the
        // ones whose slot was replaced by record_correct's synthetic values; each of the others
        // (950 in all) completed at its intended time.
        let mut n = 0;
        for (i, &s) in svc.iter().enumerate() {
            if (101..=150).contains(&i) {
                continue;
            }
            if s > 0 {
                expected.record_correct(s, interval).unwrap();
            } else {
                expected.record(0).unwrap();
            }
            n += 1;
        }
        // record_correct added 49 synthetic values (49, 48 .. 1 intervals); request 150 was due
        // exactly at the stall's end and so saw 0
        expected.record(0).unwrap();
        assert_eq!(n + 1 + 49, 1000);
        same(&corrected, &expected);

        // without correction the stall is a single outlier
        assert_eq!(raw.count_between(1, u64::MAX), 1);
        assert_eq!(corrected.count_between(1, u64::MAX), 50);
        assert_eq!(corrected.max(), raw.max());
    }

    #[test]
    fn open_loop_keeps_up_when_service_is_short() {
        let (c, r) = simulate_open_loop(1_000, &vec![300; 500], 2);
        assert_eq!(c.max(), 300);
        assert_eq!(r.max(), 300);
    }

    #[test]
    fn overloaded_open_loop_latency_grows() {
        // service 2x the interval with one worker: the backlog grows linearly
        let (c, r) = simulate_open_loop(1_000, &vec![2_000; 100], 1);
        assert_eq!(r.max(), 2_000);
        assert!(c.max() >= 100 * 1_000, "{}", c.max());
    }

    #[test]
    fn schedule_slots() {
        let s = Schedule::new(1000.0);
        assert_eq!(s.interval_ns(), 1_000_000);
        assert_eq!(s.take(), (0, 0));
        assert_eq!(s.take(), (1, 1_000_000));
        assert_eq!(s.intended(10), 10_000_000);
    }
}
