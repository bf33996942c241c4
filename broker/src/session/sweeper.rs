//! Deadlines: when sessions expire, delayed wills fall due, and queued or
//! retained messages expire.
//!
//! One min-heap of deadlines instead of a timer task per session (an
//! offline session costs a heap entry, not a task). `route/registry.rs` runs the
//! sweep: every tick (at most [`TICK`]) it takes at most [`BUDGET`] due
//! entries and acts on them, so a burst of expiries never stalls the node;
//! what is left waits for the next tick. Entries hold weak references and
//! the session's timer token, so a session that resumed or ended meanwhile
//! is skipped, not acted on.
//!
//! Such dead entries are also swept out without waiting for their time:
//! a persistent session that reconnects leaves its expiry entry behind
//! (cancelled), due only a `--max-session-expiry` later, so a device
//! reconnecting all day would otherwise grow the heap by one entry per
//! reconnect. Whenever the heap has doubled since its last compaction, the
//! dead entries are dropped (amortised O(1) per entry), so the heap stays
//! within twice its live entries (or [`COMPACT_MIN`]).

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::ids::{Claim, TenantId};
use crate::session::Session;
use crate::topic::TopicName;

/// Longest time between sweeps (and so the precision of expiries).
pub const TICK: Duration = Duration::from_millis(100);
/// Most due entries handled per tick.
pub const BUDGET: usize = 1000;

/// The heap is never compacted below this many entries.
pub const COMPACT_MIN: usize = 4096;

/// Something that falls due.
#[derive(Debug)]
pub enum Due {
    /// The session, disconnected since `claim` ended, expires at `due_ms`
    /// (a `Command::Expire`); skipped once `timers` was cancelled (it
    /// resumed), which the command would find stale anyway.
    SessionExpiry {
        session: Weak<Session>,
        timers: CancellationToken,
        claim: Claim,
        due_ms: u64,
    },
    /// The session's pending will falls due (a `Command::WillDue`).
    Will {
        session: Weak<Session>,
        timers: CancellationToken,
        claim: Claim,
        due_ms: u64,
    },
    /// A message queued for this session expires: purge its expired ones.
    QueuedMessage { session: Weak<Session> },
    /// The retained message of this topic may have expired at `due_ms`.
    Retained {
        tenant: TenantId,
        topic: TopicName,
        due_ms: u64,
    },
}

impl Due {
    /// Whether acting on it could still do something: false once its
    /// session is gone or its timer was cancelled (the session resumed).
    fn is_live(&self) -> bool {
        match self {
            Due::SessionExpiry {
                session, timers, ..
            }
            | Due::Will {
                session, timers, ..
            } => !timers.is_cancelled() && session.strong_count() > 0,
            Due::QueuedMessage { session } => session.strong_count() > 0,
            Due::Retained { .. } => true,
        }
    }
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    /// Insertion order, to break ties and keep `Ord` total.
    n: u64,
    due: Due,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.n) == (other.at, other.n)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.at, self.n).cmp(&(other.at, other.n))
    }
}

#[derive(Debug, Default)]
pub struct Sweeper {
    heap: Mutex<Heap>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct Heap {
    entries: BinaryHeap<Reverse<Entry>>,
    /// The length at which dead entries are dropped next.
    compact_at: usize,
}

impl Sweeper {
    /// Schedules `due` at `at`.
    pub fn at(&self, at: Instant, due: Due) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let heap = &mut *self.heap.lock();
        heap.entries.push(Reverse(Entry { at, n, due }));
        if heap.entries.len() >= heap.compact_at {
            heap.entries.retain(|Reverse(e)| e.due.is_live());
            heap.compact_at = (heap.entries.len() * 2).max(COMPACT_MIN);
            heap.entries.shrink_to(heap.compact_at);
        }
    }

    /// Takes up to `budget` entries due by `now`, earliest first.
    pub fn take_due(&self, now: Instant, budget: usize) -> Vec<Due> {
        let mut heap = self.heap.lock();
        let mut out = Vec::new();
        while out.len() < budget {
            match heap.entries.peek() {
                Some(Reverse(e)) if e.at <= now => {}
                _ => break,
            }
            if let Some(Reverse(e)) = heap.entries.pop() {
                out.push(e.due);
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.heap.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.lock().entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_order_within_budget() {
        let s = Sweeper::default();
        let now = Instant::now();
        for i in [3u64, 1, 2, 10] {
            s.at(
                now + Duration::from_secs(i),
                Due::Retained {
                    tenant: TenantId::default_tenant(),
                    topic: TopicName::trusted(format!("t{i}")),
                    due_ms: 0,
                },
            );
        }
        let names = |v: Vec<Due>| -> Vec<String> {
            v.into_iter()
                .map(|d| match d {
                    Due::Retained { topic, .. } => topic.to_string(),
                    _ => String::new(),
                })
                .collect()
        };
        let later = now + Duration::from_secs(5);
        assert_eq!(names(s.take_due(later, 2)), ["t1", "t2"]);
        assert_eq!(names(s.take_due(later, 2)), ["t3"]);
        assert_eq!(s.len(), 1, "t10 is not due yet");
    }

    #[test]
    fn entries_of_resumed_sessions_do_not_pile_up() {
        // Issue 16 item 3: each reconnect of a persistent session left its
        // cancelled expiry entry in the heap for --max-session-expiry.
        let s = Sweeper::default();
        let session = std::sync::Arc::new(Session::new(
            crate::ids::SessionKey {
                tenant: TenantId::default_tenant(),
                client: crate::ids::ClientId::new("flaky"),
            },
            crate::ids::SessionId(1),
            None,
            None,
        ));
        let week = Instant::now() + Duration::from_secs(604_800);
        let mut live = CancellationToken::new();
        for _ in 0..100_000 {
            // A disconnect schedules the expiry; the reconnect cancels it.
            live.cancel();
            live = CancellationToken::new();
            s.at(
                week,
                Due::SessionExpiry {
                    session: std::sync::Arc::downgrade(&session),
                    timers: live.clone(),
                    claim: Claim(1),
                    due_ms: 0,
                },
            );
        }
        assert!(
            s.len() <= COMPACT_MIN,
            "{} entries for one session",
            s.len()
        );
        // The live entry and those of other kinds stay.
        let retained = Due::Retained {
            tenant: TenantId::default_tenant(),
            topic: TopicName::trusted("r".into()),
            due_ms: 0,
        };
        s.at(week, retained);
        let due = s.take_due(week, usize::MAX);
        let live_left = due.iter().filter(|d| d.is_live()).count();
        assert_eq!(live_left, 2);
    }
}
