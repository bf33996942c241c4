//! Rate limiting: a [`Pacer`] says how many events (connects, publishes)
//! are due by a given instant at a fixed rate, so a task that wakes late
//! catches up instead of drifting. The connect loop in `run.rs` and each
//! publisher in `client.rs` own one; nothing is shared.

use std::time::Duration;

use tokio::time::Instant;

/// Events at `rate` per second from `start`; rate 0 means "as fast as
/// possible" (always due, no waiting).
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    /// Nanoseconds between events; 0 when unlimited.
    period_ns: u128,
    issued: u64,
    /// At most this many events are released at once after a stall, so a
    /// paused task does not flood the broker when it resumes.
    max_burst: u64,
}

impl Pacer {
    pub fn new(start: Instant, rate: f64, max_burst: u64) -> Pacer {
        let period_ns = if rate > 0.0 {
            (1e9 / rate).max(1.0) as u128
        } else {
            0
        };
        Pacer {
            start,
            period_ns,
            issued: 0,
            max_burst: max_burst.max(1),
        }
    }

    pub fn unlimited(&self) -> bool {
        self.period_ns == 0
    }

    /// How many events are due at `now` and not yet taken; at most
    /// `max_burst` (the rest stays due).
    pub fn due(&self, now: Instant) -> u64 {
        if self.unlimited() {
            return self.max_burst;
        }
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        // Event k is due at start + k * period; events 0..=elapsed/period.
        let total = (elapsed / self.period_ns) as u64 + 1;
        total.saturating_sub(self.issued).min(self.max_burst)
    }

    /// Marks `n` events as issued.
    pub fn take(&mut self, n: u64) {
        self.issued += n;
    }

    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// When the next event falls due (`None` when unlimited).
    pub fn next_due(&self) -> Option<Instant> {
        if self.unlimited() {
            return None;
        }
        let ns = self.period_ns.saturating_mul(self.issued as u128);
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        Some(self.start + Duration::from_nanos(ns))
    }

    /// Events that fell due more than `grace` before `now` and were not
    /// issued: how far behind its schedule the caller fell (events due
    /// within the grace are in progress, not late).
    pub fn behind(&self, now: Instant, grace: Duration) -> u64 {
        match now.checked_sub(grace) {
            Some(t) if !self.unlimited() && t >= self.start => self.due_uncapped(t),
            _ => 0,
        }
    }

    fn due_uncapped(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        ((elapsed / self.period_ns) as u64 + 1).saturating_sub(self.issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_events_at_the_rate_and_catches_up_within_the_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 1000.0, 50);
        assert_eq!(p.due(t0), 1, "the first event is due at once");
        p.take(1);
        assert_eq!(p.due(t0), 0);
        assert_eq!(p.next_due(), Some(t0 + Duration::from_millis(1)));
        // 10.5 ms later: events 1..=10 are due.
        assert_eq!(p.due(t0 + Duration::from_micros(10_500)), 10);
        p.take(10);
        assert_eq!(p.due(t0 + Duration::from_micros(10_500)), 0);
        // A one-second stall owes ~990 events, released 50 at a time.
        let late = t0 + Duration::from_secs(1);
        assert_eq!(p.due(late), 50);
        p.take(50);
        assert_eq!(p.due(late), 50);
        // Over any span the total never exceeds rate × time + 1.
        let mut q = Pacer::new(t0, 250.0, u64::MAX);
        let mut total = 0;
        for ms in (0..=2000).step_by(7) {
            let n = q.due(t0 + Duration::from_millis(ms));
            q.take(n);
            total += n;
        }
        assert_eq!(total, 1 + (1995 * 250) / 1000);
    }

    #[test]
    fn behind_counts_only_what_is_late_beyond_the_grace() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 100.0, 1000);
        let now = t0 + Duration::from_millis(1000);
        let n = p.due(now);
        p.take(n);
        assert_eq!(p.behind(now, Duration::from_millis(100)), 0, "on schedule");
        let later = now + Duration::from_millis(500);
        // 50 more fell due; those in the last 100 ms are not late.
        assert_eq!(p.behind(later, Duration::from_millis(100)), 40);
        assert_eq!(p.behind(t0, Duration::from_millis(100)), 0);
    }

    #[test]
    fn unlimited_is_always_due() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 0.0, 64);
        assert!(p.unlimited());
        assert_eq!(p.due(t0), 64);
        p.take(64);
        assert_eq!(p.due(t0), 64);
        assert_eq!(p.next_due(), None);
    }
}
