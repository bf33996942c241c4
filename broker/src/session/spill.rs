//! Spill: queue entries of offline durable sessions kept on disk only
//! past three quarters of `--max-queued-memory` (see `session/mod.rs`).
//! A [`Spilled`] place keeps what the queue's bounds and expiry need; its
//! body stays in the store until the entry is read back, in order, as the
//! connection takes from the queue, or dropped without reading.

use std::sync::Arc;

use super::{grow_by_half, SessionState};
use crate::codec::QoS;
use crate::message::StoredBody;

/// A queue entry kept on disk only: its queue record names its body in
/// the store, which `body` keeps there; what the queue's bounds and expiry
/// need stays in memory (24 bytes).
#[derive(Debug)]
pub struct Spilled {
    pub(super) seq: u64,
    pub(super) body: Arc<StoredBody>,
    pub(super) size: u32,
    pub(super) qos: QoS,
    /// Came through a shared subscription (`Delivery::share`).
    pub(super) shared: bool,
}

/// How many spilled entries a connection reads back at a time.
pub(super) const READ_BACK: usize = 64;

impl SessionState {
    /// Keeps the counters in step with a spilled entry that left the queue
    /// without being read back (dropped or expired).
    pub(super) fn left_spill(&mut self, s: &Spilled) {
        let size = s.size as usize;
        self.queued_bytes -= size;
        self.count_qos0(s.qos, size, false);
        self.tenant_queued_sub(size);
        if let Some(m) = &self.node_memory {
            m.sub_spilled(1);
        }
    }

    /// Reads up to `n` spilled entries back into memory, oldest first. An
    /// entry that cannot be read is dropped and logged (the store refuses
    /// reads only when damaged).
    pub(super) fn read_back(&mut self, n: usize) {
        let (Some(p), Some(key)) = (self.persist.clone(), self.spill_key.clone()) else {
            return;
        };
        for _ in 0..n {
            let Some(s) = self.spilled.pop_front() else {
                break;
            };
            match p.read_queued(&key, s.seq, &s.body) {
                Ok(Some(d)) => {
                    // Counted in `queued_bytes` and the QoS 0 counts already.
                    if let Some(m) = &self.node_memory {
                        m.sub_spilled(1);
                        m.add(d.msg.size());
                    }
                    grow_by_half(&mut self.queue);
                    self.queue.push_back(d);
                }
                r => {
                    let error = r.err().map(|e| e.to_string());
                    tracing::warn!(client_id = %key.client, seq = s.seq, ?error, "Dropping a queued message that cannot be read back from the store");
                    self.left_spill(&s);
                }
            }
        }
    }

    /// Drops the spilled entries `drop` picks, without reading them back;
    /// returns their queue positions.
    pub(super) fn drop_spilled(&mut self, drop: impl Fn(&Spilled) -> bool) -> Vec<u64> {
        if !self.spilled.iter().any(&drop) {
            return Vec::new();
        }
        let (out, kept): (Vec<_>, Vec<_>) = self.spilled.drain(..).partition(|s| drop(s));
        self.spilled.extend(kept);
        out.iter()
            .map(|s| {
                self.left_spill(s);
                s.seq
            })
            .collect()
    }
}
