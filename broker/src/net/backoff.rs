//! Slowing repeated failures from one address: authentication failures
//! (`auth/`) and refused TLS client certificates (`net/tls.rs`) each keep a
//! table of their own.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Failures an address gets before it is slowed.
const FREE_FAILURES: u32 = 3;
/// First delay after the free failures; doubles with each further one.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest delay: below the default `--connect-timeout`, so clients
/// behind a shared address with one broken neighbour still get in.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// An address with no failure for this long starts afresh.
const BACKOFF_FORGET: Duration = Duration::from_secs(600);
/// Addresses tracked before stale ones are pruned.
const BACKOFF_ENTRIES: usize = 100_000;

/// Failures per address, and the delay they earn: authentication
/// failures here; refused TLS client certificates are counted in a table
/// of their own (`net/tls.rs`), for their log only.
#[derive(Debug)]
pub struct Backoff {
    failures: DashMap<IpAddr, (u32, Instant)>,
    pruned: parking_lot::Mutex<Instant>,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            failures: DashMap::new(),
            pruned: parking_lot::Mutex::new(Instant::now()),
        }
    }
}

impl Backoff {
    /// The key an address is tracked under: IPv4 as is (IPv4-mapped IPv6
    /// too), IPv6 by its /64, which one host or site usually holds whole.
    fn key(addr: IpAddr) -> IpAddr {
        match addr.to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
            v4 => v4,
        }
    }

    /// How long the next attempt from `addr` waits before it is checked.
    pub fn delay(&self, addr: IpAddr) -> Duration {
        match self.failures.get(&Self::key(addr)).map(|e| *e) {
            Some((n, last)) if n >= FREE_FAILURES && last.elapsed() < BACKOFF_FORGET => {
                let shift = (n - FREE_FAILURES).min(16);
                BACKOFF_BASE.saturating_mul(1 << shift).min(BACKOFF_MAX)
            }
            _ => Duration::ZERO,
        }
    }

    /// Records a failure; returns how many `addr` has now.
    pub fn fail(&self, addr: IpAddr) -> u32 {
        let addr = Self::key(addr);
        if self.failures.len() >= BACKOFF_ENTRIES && !self.failures.contains_key(&addr) {
            // Prune at most once a second; while the table stays full of
            // recent failures, new addresses are not tracked (still
            // counted and logged) rather than grow it.
            let mut last = self.pruned.lock();
            if last.elapsed() >= Duration::from_secs(1) {
                *last = Instant::now();
                drop(last);
                self.failures
                    .retain(|_, (_, last)| last.elapsed() < BACKOFF_FORGET);
            }
            if self.failures.len() >= BACKOFF_ENTRIES {
                return 1;
            }
        }
        let mut e = self.failures.entry(addr).or_insert((0, Instant::now()));
        if e.1.elapsed() >= BACKOFF_FORGET {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = Instant::now();
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_after_the_free_failures_and_is_capped() {
        let b = Backoff::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..FREE_FAILURES {
            assert_eq!(b.delay(a), Duration::ZERO);
            b.fail(a);
        }
        assert_eq!(b.delay(a), BACKOFF_BASE);
        b.fail(a);
        assert_eq!(b.delay(a), BACKOFF_BASE * 2);
        for _ in 0..40 {
            b.fail(a);
        }
        assert_eq!(b.delay(a), BACKOFF_MAX);
        assert_eq!(b.delay(IpAddr::from([10, 0, 0, 2])), Duration::ZERO);
        // IPv4-mapped IPv6 is the same address; an IPv6 /64 is one key.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("addr");
        assert_eq!(b.delay(mapped), BACKOFF_MAX);
        let v6a: IpAddr = "2001:db8:1:2::1".parse().expect("addr");
        let v6b: IpAddr = "2001:db8:1:2::ffff".parse().expect("addr");
        for _ in 0..FREE_FAILURES {
            b.fail(v6a);
        }
        assert_eq!(b.delay(v6b), BACKOFF_BASE);
    }
}
