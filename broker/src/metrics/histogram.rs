//! A histogram that hot paths can observe into without a lock: one atomic
//! add for the bucket hit, one for the sum.
//!
//! `prometheus-client`'s own `Histogram` takes a write lock on every
//! observation; the publish-to-write latency is observed once per delivery
//! (a million a second in a fan-out), so it would serialise the workers on
//! that lock. The admin endpoint (`ops/admin/metrics.rs`) reads a
//! [`Snapshot`] per scrape and hands it to `prometheus-client`'s encoder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, for latencies from 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds for counts of things (writes per group commit).
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// One more than `bounds`: the last is `+Inf`. Their total is the
    /// count (no counter of its own: one atomic less per observation).
    buckets: Box<[AtomicU64]>,
    /// The sum in millionths of the unit (microseconds for latencies),
    /// so it is one integer add.
    sum_micros: AtomicU64,
}

/// A histogram's values at one moment, cumulative per bucket as
/// Prometheus wants them.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub sum: f64,
    pub count: u64,
    /// `(upper bound, observations at or below it)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn latency() -> AtomicHistogram {
        Self::new(LATENCY_BUCKETS)
    }

    pub fn counts() -> AtomicHistogram {
        Self::new(COUNT_BUCKETS)
    }

    /// One observation of `v` (in the histogram's unit).
    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = (v.max(0.0) * 1e6) as u64;
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        Snapshot {
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            // The buckets were read one by one while others observed:
            // the count is their total, so `+Inf` always equals it.
            count: cumulative,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = AtomicHistogram::new(&[0.001, 0.01, 0.1]);
        for v in [0.0005, 0.001, 0.002, 0.05, 3.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(
            s.buckets,
            vec![(0.001, 2), (0.01, 3), (0.1, 4), (f64::INFINITY, 5)]
        );
        assert!((s.sum - 3.0535).abs() < 1e-6, "{}", s.sum);
    }
}
