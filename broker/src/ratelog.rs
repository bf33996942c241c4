//! A per-second budget for log lines that a storm would multiply (client
//! connects and disconnects): up to the budget each second they are
//! logged; past it they are counted, and the count rides on the next line
//! logged (`suppressed`), so the log says how many it left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug)]
pub struct RateLog {
    per_second: u64,
    start: Instant,
    /// The second (since `start`) the budget is counted in.
    second: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLog {
    /// `per_second` lines a second; 0 logs none (all are counted).
    pub fn new(per_second: u64) -> RateLog {
        RateLog {
            per_second,
            start: Instant::now(),
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one logged)` when this line may
    /// be logged now; `None` (counted) when the second's budget is spent.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(self.start.elapsed().as_secs())
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let second = self.second.load(Ordering::Relaxed);
        if now != second
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_budget_per_second_and_the_count_of_the_rest() {
        let r = super::RateLog::new(3);
        let first: Vec<Option<u64>> = (0..5).map(|_| r.admit_at(0)).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        // The next second's first line carries the two left out.
        assert_eq!(r.admit_at(1), Some(2));
        assert_eq!(r.admit_at(1), Some(0));
        let off = super::RateLog::new(0);
        assert_eq!(off.admit_at(0), None);
    }
}
