//! The node-wide bound on queued messages (`--max-queued-memory`).
//!
//! Owns one count for the whole node: the bytes of every queued delivery
//! (topic, payload and properties, as `--max-queued-bytes` counts them)
//! plus [`ENTRY_COST`] per queue entry. Session queues (`session.rs`) add
//! and subtract as deliveries come and go; the router (`router.rs`) asks
//! [`QueueMemory::is_full`] before it queues a message for an offline
//! session, and refuses or drops at the bound. It does not own the queues,
//! nor the per-session and per-tenant bounds.
//!
//! A body shared by many queues is counted once per queue: an upper bound
//! for the bodies, which stands in for what the store keeps per entry (a
//! durable session's entry is a record of its own in sled).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::{info, warn};

/// What one queue entry costs beyond its message's bytes: the 48-byte
/// `Delivery` and the queue's spare room.
pub const ENTRY_COST: u64 = 64;

#[derive(Debug, Default)]
pub struct QueueMemory {
    /// The queued deliveries' message bytes plus [`ENTRY_COST`] each: one
    /// counter, so a queue change is one atomic add on a shared line.
    used: AtomicU64,
    /// The bound in bytes; 0: none. Set once at start-up.
    limit: AtomicU64,
    /// At the bound as last seen: a change is logged once.
    over: AtomicBool,
    /// Publishes refused and deliveries dropped at the bound.
    refused: AtomicU64,
}

impl QueueMemory {
    pub fn new(limit: u64) -> QueueMemory {
        let m = QueueMemory::default();
        m.set_limit(limit);
        m
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// One delivery of `bytes` joined a queue.
    pub fn add(&self, bytes: usize) {
        self.used
            .fetch_add(bytes as u64 + ENTRY_COST, Ordering::Relaxed);
    }

    /// `entries` deliveries of `bytes` in all left their queues.
    pub fn sub(&self, bytes: usize, entries: usize) {
        let n = bytes as u64 + (entries as u64).saturating_mul(ENTRY_COST);
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// The node's queued memory, as this module counts it.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether queued memory is at its bound. Logs when that changes:
    /// reaching the bound at warn, falling below it at info.
    pub fn is_full(&self) -> bool {
        let limit = self.limit();
        if limit == 0 {
            return false;
        }
        let used = self.used();
        let full = used >= limit;
        // Read first: the flag's line is only written when it changes.
        if self.over.load(Ordering::Relaxed) != full
            && self.over.swap(full, Ordering::Relaxed) != full
        {
            let refused = self.refused();
            if full {
                warn!(used, limit, "Queued messages reached --max-queued-memory: messages for offline sessions are refused (v5 0x97) or dropped (QoS 0)");
            } else {
                info!(
                    used,
                    limit, refused, "Queued messages back under --max-queued-memory"
                );
            }
        }
        full
    }

    /// Counts a publish refused, or a delivery dropped, at the bound.
    pub fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The default bound: a quarter of the memory this process may use (its
/// cgroup's limit, as a Kubernetes memory limit sets it, or else the
/// machine's), or none where neither can be read.
pub fn default_limit() -> u64 {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    .find(|&n| n > 0 && n < (1 << 60));
    let physical = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    match (cgroup, physical) {
        (Some(c), Some(p)) => c.min(p) / 4,
        (Some(n), None) | (None, Some(n)) => n / 4,
        (None, None) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_entries_and_reports_the_bound() {
        let m = QueueMemory::new(1000);
        assert!(!m.is_full());
        for _ in 0..10 {
            m.add(36); // 36 + 64 per entry: 100
        }
        assert_eq!(m.used(), 1000);
        assert!(m.is_full());
        m.sub(36, 1);
        assert_eq!(m.used(), 900);
        assert!(!m.is_full());
        m.sub(10_000, 100);
        assert_eq!(m.used(), 0, "never below zero");
        assert!(!QueueMemory::new(0).is_full(), "0: no bound");
    }

    #[test]
    fn the_default_is_a_quarter_of_what_this_machine_has() {
        let limit = default_limit();
        assert!(limit > 0, "this machine has /proc/meminfo");
    }
}
