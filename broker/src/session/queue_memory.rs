//! The node-wide bound on queued messages (`--max-queued-memory`).
//!
//! Owns one count for the whole node: the bytes of every queued delivery
//! held in memory (topic, payload and properties, as `--max-queued-bytes`
//! counts them) plus [`ENTRY_COST`] per such entry, plus [`SPILL_COST`] per
//! entry kept on disk only. Session queues (`session/mod.rs`) add and subtract
//! as deliveries come and go. It does not own the queues, nor the
//! per-session and per-tenant bounds.
//!
//! Two thresholds, so the bound is never passed:
//! - from three quarters of it ([`QueueMemory::spills`]), what joins an
//!   offline durable session's queue is kept on disk only: its message
//!   body is in the store already, and the queue keeps its place (24
//!   bytes) until the session reads it back;
//! - at the bound ([`QueueMemory::is_full`]) the router refuses QoS 1/2
//!   publishes that would queue for an offline session (v5 0x97) and QoS 0
//!   ones skip offline sessions.
//!
//! A body shared by many queues is counted once per queue: an upper bound.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use tracing::{info, warn};

/// What one queue entry costs beyond its message's bytes: the 48-byte
/// `Delivery` and the queue's spare room.
pub const ENTRY_COST: u64 = 64;

/// What one queue entry kept on disk only costs: its 24-byte place in the
/// queue and the queue's spare room.
pub const SPILL_COST: u64 = 32;

/// Where queued memory stands against its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Under = 0,
    /// Past three quarters: offline durable sessions' entries spill.
    Spill = 1,
    /// At the bound: publishes that would queue offline are refused.
    Full = 2,
}

#[derive(Debug, Default)]
pub struct QueueMemory {
    /// The queued deliveries' message bytes plus [`ENTRY_COST`] each: one
    /// counter, so a queue change is one atomic add on a shared line.
    used: AtomicU64,
    /// The bound in bytes; 0: none. Set once at start-up.
    limit: AtomicU64,
    /// The [`Level`] as last seen: a change is logged once.
    level: AtomicU8,
    /// Publishes refused and deliveries dropped at the bound.
    refused: AtomicU64,
    /// Queue entries kept on disk only, now.
    spilled: AtomicU64,
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
        self.sub_raw(bytes as u64 + (entries as u64).saturating_mul(ENTRY_COST));
    }

    fn sub_raw(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// An entry joined a queue on disk only.
    pub fn add_spilled(&self) {
        self.used.fetch_add(SPILL_COST, Ordering::Relaxed);
        self.spilled.fetch_add(1, Ordering::Relaxed);
    }

    /// `entries` entries kept on disk only left their queues (or were read
    /// back into memory).
    pub fn sub_spilled(&self, entries: usize) {
        self.sub_raw((entries as u64).saturating_mul(SPILL_COST));
        let _ = self
            .spilled
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(entries as u64))
            });
    }

    /// Queue entries kept on disk only, now.
    pub fn spilled(&self) -> u64 {
        self.spilled.load(Ordering::Relaxed)
    }

    /// The node's queued memory, as this module counts it.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether queued memory is at its bound (the router refuses what
    /// would queue for offline sessions).
    pub fn is_full(&self) -> bool {
        self.level() == Level::Full
    }

    /// Whether what joins an offline durable session's queue is kept on
    /// disk only (past three quarters of the bound).
    pub fn spills(&self) -> bool {
        self.level() >= Level::Spill
    }

    /// Where queued memory stands. Logs when that changes: passing a
    /// threshold at warn, falling back under one at info.
    fn level(&self) -> Level {
        let limit = self.limit();
        if limit == 0 {
            return Level::Under;
        }
        let used = self.used();
        let level = if used >= limit {
            Level::Full
        } else if used >= limit - limit / 4 {
            Level::Spill
        } else {
            Level::Under
        };
        // Read first: the line is only written when the level changes.
        let l = level as u8;
        if self.level.load(Ordering::Relaxed) != l {
            let was = self.level.swap(l, Ordering::Relaxed);
            if was != l {
                self.log_change(was, level, used, limit);
            }
        }
        level
    }

    fn log_change(&self, was: u8, now: Level, used: u64, limit: u64) {
        let (refused, spilled) = (self.refused(), self.spilled());
        let rising = now as u8 > was;
        match now {
            Level::Full => warn!(used, limit, spilled, "Queued messages reached --max-queued-memory: messages for offline sessions are refused (v5 0x97) or dropped (QoS 0)"),
            Level::Spill if rising => warn!(used, limit, "Queued messages passed 3/4 of --max-queued-memory: new messages for offline durable sessions are kept on disk only"),
            Level::Spill => info!(used, limit, refused, spilled, "Queued messages back under --max-queued-memory: offline sessions queue again, still on disk only"),
            Level::Under => info!(used, limit, refused, spilled, "Queued messages back under 3/4 of --max-queued-memory: new messages are held in memory again"),
        }
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
        assert!(m.spills(), "past three quarters");
        m.sub(72, 2);
        assert_eq!(m.used(), 700);
        assert!(!m.spills());
        m.add_spilled();
        assert_eq!((m.used(), m.spilled()), (700 + SPILL_COST, 1));
        m.sub_spilled(1);
        assert_eq!((m.used(), m.spilled()), (700, 0));
        m.sub(10_000, 100);
        assert_eq!(m.used(), 0, "never below zero");
        assert!(!QueueMemory::new(0).is_full(), "0: no bound");
        assert!(!QueueMemory::new(0).spills(), "0: no bound");
    }

    /// Issue 16: a change of state is logged once, not once per message.
    #[test]
    fn each_threshold_is_logged_once_when_passed_and_once_when_left() {
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let m = QueueMemory::new(1000);
            // Under → spill → full → spill → under, each level checked
            // many times over.
            for used in [100u64, 800, 1000, 800, 100] {
                let now = m.used();
                if used > now {
                    m.add((used - now - ENTRY_COST) as usize);
                } else {
                    m.sub_raw(now - used);
                }
                for _ in 0..100 {
                    m.is_full();
                    m.spills();
                }
            }
        });
        let text = String::from_utf8(lines.0.lock().clone()).expect("utf-8");
        let logged: Vec<&str> = text.lines().collect();
        assert_eq!(logged.len(), 4, "{text}");
        assert!(logged[0].contains("WARN") && logged[0].contains("3/4"));
        assert!(logged[1].contains("WARN") && logged[1].contains("reached"));
        assert!(logged[2].contains("INFO") && logged[2].contains("back under --max"));
        assert!(logged[3].contains("INFO") && logged[3].contains("back under 3/4"));
    }

    #[test]
    fn the_default_is_a_quarter_of_what_this_machine_has() {
        let limit = default_limit();
        assert!(limit > 0, "this machine has /proc/meminfo");
    }
}
