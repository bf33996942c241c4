//! A session's node-local runtime: what one node keeps for a session
//! while it serves it.
//!
//! Owns the queue of deliveries not yet sent, the outgoing QoS 1/2
//! messages awaiting acknowledgement, the incoming QoS 2 packet ids
//! awaiting PUBREL, the handle of the connection attached, its timers and
//! its durable-store handle. The replicated half of a session (its
//! instance, claim, expiry, user, will, subscriptions) is its record in
//! the control state (`state/control.rs`); the node creates and drops
//! this runtime as that record's effects say (`state/mod.rs`). It does not
//! own the subscription trie (`state/trie.rs`) or the registry
//! (`route/registry.rs`).
//!
//! Concurrency: each session has its own mutex, held only for short,
//! non-async sections (never across `.await`). Publishers push deliveries
//! with [`Session::enqueue`] and wake the attached connection through
//! `notify`; the connection (`connection/outbound.rs`) pulls from the queue as its
//! send window allows. The queue is bounded by `--max-queued-messages`
//! with the `--queue-overflow` policy; every drop is counted.
//!
//! Flow control (`--publish-backpressure-ms`): a QoS 1/2 delivery to a
//! connected session that is not stuck may fill its queue up to twice the
//! bound; the first one past the bound marks the session `full`, and the
//! publisher that sees it (`route/router.rs`) stops reading until the session's
//! connection has drained the queue to half (`room`). A wait that runs
//! out while the connection keeps taking from the queue (at least a
//! quarter of the bound per wait, counted in `taken`) starts again: the
//! subscriber is slow, not gone, and the publisher goes at its pace. One
//! that took less marks the session `stuck` (it then drops as without
//! flow control until it drains).
//!
//! Spill (`--max-queued-memory`): past three quarters of the node's bound,
//! what joins an offline durable session's queue is kept on disk only (a
//! [`Spilled`] place: its body is in the store already). Spilled entries
//! always follow the ones in memory, so once a queue spills, everything
//! after joins the spill until it is read back (in batches, as the
//! connection takes from the queue): order is kept.

pub mod queue_memory;
mod spill;
pub mod sweeper;

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::codec::QoS;
use crate::ids::{Claim, ConnectionId, SessionId, SessionKey};
use crate::message::Delivery;
use crate::metrics::DropReason;
use crate::persist::Write;
use crate::persist::{Persist, RestoredInflight};
use crate::session::queue_memory::QueueMemory;
use crate::tenant::quota::{release, reserve_n, QuotaKind, StateLimits, Usage};

/// Where an outgoing QoS > 0 message stands.
#[derive(Debug, Clone)]
pub enum OutState {
    /// QoS 1 sent, waiting for PUBACK; QoS 2 sent, waiting for PUBREC.
    AwaitingAck(Delivery),
    /// QoS 2 PUBREL sent, waiting for PUBCOMP. The message is done.
    AwaitingComp,
}

#[derive(Debug)]
pub struct Inflight {
    /// Send order, so redelivery keeps the original order.
    pub seq: u64,
    pub state: OutState,
}

pub use spill::Spilled;
use spill::READ_BACK;

/// The connection currently attached to a session.
#[derive(Debug, Clone)]
pub struct Owner {
    pub conn: ConnectionId,
    /// Cancelled to make that connection close (takeover).
    pub kick: CancellationToken,
    /// Cancelled by that connection when it has finished closing.
    pub done: CancellationToken,
    /// What the admin API shows of the connection.
    pub info: Arc<ConnInfo>,
}

/// A connection as the admin API shows it, and the flag that tells it an
/// operator kicked it (rather than a takeover).
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub listener: crate::net::ListenerKind,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub protocol_level: u8,
    pub keep_alive: u16,
    pub username: Option<String>,
    /// When CONNECT was admitted: deliveries of messages received since
    /// are timed (`publish_to_write_seconds`), a backlog's are not.
    pub connected_at: Instant,
    pub kicked: AtomicBool,
}

#[derive(Debug)]
pub struct SessionState {
    /// The queue's entries held in memory, oldest first; `spilled` follows.
    pub queue: VecDeque<Delivery>,
    /// The queue's entries kept on disk only, after every one in `queue`.
    spilled: VecDeque<Spilled>,
    /// The session's key, to read spilled entries back: set when the
    /// queue first spills (most sessions never do, and pay 8 bytes).
    spill_key: Option<Box<SessionKey>>,
    pub inflight: HashMap<u16, Inflight>,
    next_seq: u64,
    /// Incoming QoS 2 packet ids whose PUBLISH was routed; PUBREL pending.
    pub incoming_qos2: HashSet<u16>,
    next_packet_id: u16,
    pub owner: Option<Owner>,
    /// Cancels a pending delayed will or session-expiry timer.
    pub timers: CancellationToken,
    /// In-flight ids still to be resent on this connection (a resumed
    /// session's backlog), in original order; they do not count against
    /// the send window until resent.
    pub resend: VecDeque<u16>,
    /// The durable store, while this session is durable (its expiry
    /// outlives a connection); `None` for clean sessions.
    pub persist: Option<Arc<Persist>>,
    /// Last queue position given to a delivery of a durable session.
    next_queue_seq: u64,
    /// How many queued deliveries (in `queue` and `spilled`) are QoS 0: a
    /// full queue drops them first, and skips looking for one when there
    /// is none.
    queued_qos0: usize,
    /// Bytes of the queued QoS 0 deliveries.
    queued_qos0_bytes: usize,
    /// Bytes of the queued messages, in `queue` and `spilled` (for
    /// `--max-queued-bytes`).
    /// Change it only through the queue methods below: they keep the
    /// tenant's `queued_bytes` in step.
    pub queued_bytes: usize,
    /// The session's tenant's usage (queued bytes, drops); `None` once the
    /// session is deleted (its queue no longer counts) and in unit tests.
    pub usage: Option<Arc<Usage>>,
    /// The node's queued memory (`--max-queued-memory`), kept in step
    /// with `queue` like the tenant's; `None` once deleted, and in tests.
    node_memory: Option<Arc<QueueMemory>>,
    /// The claim of the connection attached or last attached (the control
    /// state's [`Claim`]): a timer or a DISCONNECT naming another is stale.
    pub claim: Claim,
}

/// What [`Session::enqueue`] did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Queued,
    /// Queued, and this many older queued deliveries were dropped to make
    /// room (QoS 0 ones first).
    DroppedOldest(usize),
    /// The queue was full and this delivery was dropped.
    DroppedNew,
    /// A durable session's queue entry could not be written: dropped.
    NotDurable,
    /// The session's tenant is at its `max_queued_bytes`: dropped (counted
    /// in the tenant's rejections and drops).
    OverTenantQuota,
}

#[derive(Debug)]
pub struct Session {
    pub key: SessionKey,
    pub id: SessionId,
    /// Mirrors `state.owner.is_some()` for lock-free reads (shared
    /// subscription selection prefers online members).
    online: AtomicBool,
    /// Wakes the attached connection when deliveries arrive.
    pub notify: Notify,
    /// The queue passed its bound under flow control; publishers wait.
    full: AtomicBool,
    /// Did not drain within the publishers' wait: no flow control until
    /// it drains.
    stuck: AtomicBool,
    /// Wakes waiting publishers: the queue drained to half, or the
    /// session went offline.
    pub room: Notify,
    /// Deliveries the connection has taken from the queue, ever: a
    /// waiting publisher tells a slow subscriber from a stuck one by it.
    taken: AtomicU64,
    /// The tenant's usage, for drops counted per tenant.
    usage: Option<Arc<Usage>>,
    state: Mutex<SessionState>,
}

impl Session {
    pub fn new(
        key: SessionKey,
        id: SessionId,
        usage: Option<Arc<Usage>>,
        node_memory: Option<Arc<QueueMemory>>,
    ) -> Session {
        Session {
            key,
            id,
            online: AtomicBool::new(false),
            notify: Notify::new(),
            full: AtomicBool::new(false),
            stuck: AtomicBool::new(false),
            room: Notify::new(),
            taken: AtomicU64::new(0),
            usage: usage.clone(),
            state: Mutex::new(SessionState {
                queue: VecDeque::new(),
                spilled: VecDeque::new(),
                spill_key: None,
                inflight: HashMap::new(),
                next_seq: 0,
                incoming_qos2: HashSet::new(),
                next_packet_id: 1,
                owner: None,
                timers: CancellationToken::new(),
                resend: VecDeque::new(),
                persist: None,
                next_queue_seq: 0,
                queued_qos0: 0,
                queued_qos0_bytes: 0,
                queued_bytes: 0,
                usage,
                node_memory,
                claim: Claim(id.0),
            }),
        }
    }

    /// Counts a message dropped for this session: node-wide and for its
    /// tenant.
    pub fn dropped(&self, metrics: &crate::metrics::Metrics, reason: DropReason) {
        metrics.dropped(reason);
        if let Some(u) = &self.usage {
            u.dropped(reason);
        }
    }

    /// Locks the state. Never hold the guard across `.await`.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock()
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
        if !online {
            // Nobody drains an offline queue: publishers stop waiting.
            self.room.notify_waiters();
        }
    }

    /// Whether a QoS 1/2 delivery may use flow control: the session is
    /// connected (someone drains it) and has not been found stuck.
    pub fn accepts_backpressure(&self) -> bool {
        self.is_online() && !self.stuck.load(Ordering::Relaxed)
    }

    /// Whether a publisher should wait for this session's queue to drain.
    pub fn backpressures(&self) -> bool {
        self.full.load(Ordering::Relaxed) && self.accepts_backpressure()
    }

    /// The wait for room ran out: drop instead of waiting until the queue
    /// drains.
    pub fn mark_stuck(&self) {
        self.stuck.store(true, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// Deliveries taken from the queue so far (see `taken`).
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Called by the connection after taking `took` deliveries from the
    /// queue: at half the bound, the flow-control state clears and waiting
    /// publishers go on.
    pub fn drained(&self, st: &SessionState, limits: QueueLimits, took: u64) {
        if took > 0 {
            self.taken.fetch_add(took, Ordering::Relaxed);
        }
        if !self.full.load(Ordering::Relaxed) && !self.stuck.load(Ordering::Relaxed) {
            return;
        }
        if st.queued_len() * 2 <= limits.max_messages && st.queued_bytes * 2 <= limits.max_bytes {
            self.full.store(false, Ordering::Relaxed);
            self.stuck.store(false, Ordering::Relaxed);
            self.room.notify_waiters();
        }
    }

    /// Queues a delivery, applying the overflow policy at `max_queued`,
    /// and wakes the connection. For a durable session the queue entry is
    /// written under the session's lock, so the store sees queue changes in
    /// the order memory does; past three quarters of `--max-queued-memory`
    /// an offline one keeps it on disk only. The flag is true when the
    /// delivery went into an empty queue of a connected session: its
    /// connection was probably idle and this wakes it.
    pub fn enqueue(
        &self,
        mut delivery: Delivery,
        limits: QueueLimits,
    ) -> (EnqueueOutcome, Write, bool) {
        let was_empty;
        let (outcome, write) = {
            let mut st = self.state.lock();
            was_empty = st.queued_len() == 0;
            if st.persist.is_some() {
                st.next_queue_seq += 1;
                delivery.seq = st.next_queue_seq;
            }
            let size = delivery.msg.size();
            // The tenant's queued bytes (`max_queued_bytes`): reserved
            // first, so concurrent sessions of a tenant cannot pass it.
            if let Some(u) = &st.usage {
                let max = StateLimits::get(&u.state_limits.queued_bytes);
                if !reserve_n(&u.queued_bytes, size as u64, max) {
                    u.reject(QuotaKind::QueuedBytes);
                    return (EnqueueOutcome::OverTenantQuota, Write::None, false);
                }
            }
            // Under flow control the queue may take up to twice its bound
            // while publishers are being slowed; past that it drops.
            let slack = if limits.backpressure { 2 } else { 1 };
            let (max_messages, max_bytes) = (limits.max_messages * slack, limits.max_bytes * slack);
            let fits = |st: &SessionState| {
                st.queued_len() < max_messages && st.queued_bytes + size <= max_bytes
            };
            let mut dropped = Vec::new();
            let mut outcome = if fits(&st) {
                EnqueueOutcome::Queued
            } else if size > max_bytes {
                EnqueueOutcome::DroppedNew
            } else {
                let new = (delivery.qos, size);
                st.make_room(new, (max_messages, max_bytes), limits, &mut dropped)
            };
            let write = match (&st.persist, outcome) {
                (Some(p), EnqueueOutcome::Queued | EnqueueOutcome::DroppedOldest(_)) => {
                    Write::from_result(p.push_queue(&self.key, &delivery, &dropped))
                }
                _ => Write::None,
            };
            if matches!(write, Write::Failed(_)) {
                // Not on disk, so not queued: the publisher is told, and a
                // restart cannot disagree with what was delivered.
                outcome = EnqueueOutcome::NotDurable;
            }
            if matches!(
                outcome,
                EnqueueOutcome::Queued | EnqueueOutcome::DroppedOldest(_)
            ) {
                let spill = st.persist.is_some()
                    && !self.is_online()
                    && st.node_memory.as_ref().is_some_and(|m| m.spills());
                st.push_reserved(delivery, spill.then_some(&self.key));
            } else {
                st.tenant_queued_sub(size);
            }
            if limits.backpressure
                && (st.queued_len() >= limits.max_messages || st.queued_bytes >= limits.max_bytes)
            {
                self.full.store(true, Ordering::Relaxed);
            }
            (outcome, write)
        };
        let queued = matches!(
            outcome,
            EnqueueOutcome::Queued | EnqueueOutcome::DroppedOldest(_)
        );
        if queued {
            self.notify.notify_one();
        }
        (outcome, write, queued && was_empty && self.is_online())
    }
}

/// What happens when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueOverflow {
    /// Drop the oldest queued message to make room for the new one.
    DropOldest,
    /// Keep the queue and drop the new message.
    DropNew,
}

/// Grows a queue by half, not double: a million offline queues carry on
/// average a quarter spare instead of half (still amortised O(1)).
fn grow_by_half<T>(q: &mut VecDeque<T>) {
    let len = q.len();
    if len == q.capacity() {
        q.reserve_exact((len / 2).max(4));
    }
}

/// The bounds of one session's queue and what a full queue drops.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub overflow: QueueOverflow,
    /// This delivery is under flow control (QoS 1/2, session connected
    /// and not stuck, `--publish-backpressure-ms` set).
    pub backpressure: bool,
}

impl SessionState {
    /// Adds `n` bytes to the tenant's queued bytes (none once deleted).
    fn tenant_queued_add(&self, n: usize) {
        if let Some(u) = &self.usage {
            u.queued_bytes.fetch_add(n as u64, Ordering::AcqRel);
        }
    }

    fn tenant_queued_sub(&self, n: usize) {
        if let Some(u) = &self.usage {
            release(&u.queued_bytes, n as u64);
        }
    }

    /// Appends to the queue, keeping `queued_bytes` (and the tenant's) in
    /// step.
    pub fn push_queued(&mut self, d: Delivery) {
        self.tenant_queued_add(d.msg.size());
        self.push_reserved(d, None);
    }

    /// Appends a delivery whose bytes the tenant already counted: to the
    /// spill if asked (`spill`, and its message has a stored body) or if
    /// the queue already spills (order is kept), else in memory.
    /// `spill`: the session's key when this delivery may be kept on disk
    /// only.
    fn push_reserved(&mut self, d: Delivery, spill: Option<&SessionKey>) {
        if let Some(key) = spill {
            if self.spill_key.is_none() {
                self.spill_key = Some(Box::new(key.clone()));
            }
        }
        if spill.is_some() || !self.spilled.is_empty() {
            if let Some(body) = d.msg.stored.get() {
                let s = Spilled {
                    seq: d.seq,
                    body: body.clone(),
                    size: d.msg.size() as u32,
                    qos: d.qos,
                    shared: d.share.is_some(),
                };
                self.queued_bytes += d.msg.size();
                self.count_qos0(d.qos, d.msg.size(), true);
                if let Some(m) = &self.node_memory {
                    m.add_spilled();
                }
                grow_by_half(&mut self.spilled);
                self.spilled.push_back(s);
                return;
            }
        }
        self.entered_queue(&d);
        grow_by_half(&mut self.queue);
        self.queue.push_back(d);
    }

    /// How many deliveries are queued, in memory and on disk only.
    pub fn queued_len(&self) -> usize {
        self.queue.len() + self.spilled.len()
    }

    /// Whether some queued deliveries came through a shared subscription.
    pub fn has_shared_queued(&self) -> bool {
        self.queue.iter().any(|d| d.share.is_some()) || self.spilled.iter().any(|s| s.shared)
    }

    /// The oldest queued delivery, read back from disk if it was spilled.
    pub fn front_queued(&mut self) -> Option<&Delivery> {
        if self.queue.is_empty() {
            self.read_back(READ_BACK);
        }
        self.queue.front()
    }

    /// Keeps the counters in step with a delivery that joined the queue
    /// (the tenant's is the caller's: `push_reserved` reserved it first).
    fn entered_queue(&mut self, d: &Delivery) {
        self.queued_bytes += d.msg.size();
        self.count_qos0(d.qos, d.msg.size(), true);
        if let Some(m) = &self.node_memory {
            m.add(d.msg.size());
        }
    }

    /// Keeps the counters in step with a delivery that left the queue.
    fn left_queue(&mut self, d: &Delivery) {
        self.queued_bytes -= d.msg.size();
        self.count_qos0(d.qos, d.msg.size(), false);
        self.tenant_queued_sub(d.msg.size());
        if let Some(m) = &self.node_memory {
            m.sub(d.msg.size(), 1);
        }
    }

    /// Counts a QoS 0 delivery of `size` bytes into (`added`) or out of
    /// the queue.
    fn count_qos0(&mut self, qos: QoS, size: usize, added: bool) {
        if qos != QoS::AtMostOnce {
            return;
        }
        if added {
            self.queued_qos0 += 1;
            self.queued_qos0_bytes += size;
        } else {
            self.queued_qos0 -= 1;
            self.queued_qos0_bytes -= size;
        }
    }

    /// Takes the oldest queued delivery (read back from disk if spilled),
    /// keeping `queued_bytes` in step.
    pub fn pop_queued(&mut self) -> Option<Delivery> {
        self.front_queued()?;
        let d = self.queue.pop_front()?;
        self.left_queue(&d);
        Some(d)
    }

    /// Drops the oldest queued delivery (without reading a spilled one
    /// back); returns its queue position.
    fn drop_oldest(&mut self) -> Option<u64> {
        if let Some(d) = self.queue.pop_front() {
            self.left_queue(&d);
            return Some(d.seq);
        }
        let s = self.spilled.pop_front()?;
        self.left_spill(&s);
        Some(s.seq)
    }

    /// Drops the oldest queued QoS 0 delivery, if any; returns its queue
    /// position.
    fn drop_oldest_qos0(&mut self) -> Option<u64> {
        if self.queued_qos0 == 0 {
            return None;
        }
        if let Some(i) = self.queue.iter().position(|d| d.qos == QoS::AtMostOnce) {
            let d = self.queue.remove(i)?;
            self.left_queue(&d);
            return Some(d.seq);
        }
        let i = self.spilled.iter().position(|s| s.qos == QoS::AtMostOnce)?;
        let s = self.spilled.remove(i)?;
        self.left_spill(&s);
        Some(s.seq)
    }

    /// Makes room in a full queue for a delivery of `size` bytes and QoS
    /// `qos`, within `max_messages` and `max_bytes`, pushing the queue
    /// positions of what it dropped to `dropped`, and says what becomes of
    /// the new delivery (the caller queues it unless dropped).
    ///
    /// QoS 0 goes first: queued QoS 0 deliveries, oldest first, make room
    /// for a QoS 1/2 delivery under either policy and for a QoS 0 one
    /// under drop-oldest, and a QoS 0 delivery never displaces a QoS 1/2
    /// one. Under flow control a QoS 1/2 delivery is then queued past the
    /// bound rather than dropped: its publisher is about to wait for this
    /// queue (it sees `full`), so the queue grows by at most one delivery
    /// per publisher, and a subscriber that keeps reading loses nothing
    /// that was acknowledged. Otherwise `--queue-overflow` decides.
    fn make_room(
        &mut self,
        (qos, size): (QoS, usize),
        (max_messages, max_bytes): (usize, usize),
        limits: QueueLimits,
        dropped: &mut Vec<u64>,
    ) -> EnqueueOutcome {
        let fits = |st: &SessionState| {
            st.queued_len() < max_messages && st.queued_bytes + size <= max_bytes
        };
        // Whether dropping every queued QoS 0 delivery would make it fit.
        let fits_without_qos0 = self.queued_len() - self.queued_qos0 < max_messages
            && self.queued_bytes - self.queued_qos0_bytes + size <= max_bytes;
        let qos0 = qos == QoS::AtMostOnce;
        let evict_qos0 = if qos0 {
            limits.overflow == QueueOverflow::DropOldest && fits_without_qos0
        } else {
            fits_without_qos0 || limits.backpressure || limits.overflow == QueueOverflow::DropOldest
        };
        if !evict_qos0 {
            return EnqueueOutcome::DroppedNew;
        }
        let mut evict = |st: &mut SessionState, pop: fn(&mut SessionState) -> Option<u64>| {
            while !fits(st) {
                match pop(st) {
                    Some(seq) => dropped.push(seq),
                    None => break,
                }
            }
        };
        evict(self, SessionState::drop_oldest_qos0);
        if !limits.backpressure {
            // Drop-oldest for a QoS 1/2 delivery: QoS 0 is gone, the
            // oldest QoS 1/2 ones go next.
            evict(self, SessionState::drop_oldest);
        }
        match dropped.len() {
            0 => EnqueueOutcome::Queued,
            n => EnqueueOutcome::DroppedOldest(n),
        }
    }

    /// Puts a delivery back at the front (it could not be sent yet).
    pub fn unpop_queued(&mut self, d: Delivery) {
        self.tenant_queued_add(d.msg.size());
        self.entered_queue(&d);
        self.queue.push_front(d);
    }

    /// Keeps only the queued deliveries `keep` accepts (in order) and
    /// returns the others. Spilled entries are read back first: this is
    /// for rare, whole-queue changes (a leaving member of a shared
    /// subscription with shared deliveries queued).
    pub fn retain_queued(&mut self, keep: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        self.read_back(usize::MAX);
        self.retain_in_memory(keep)
    }

    /// [`SessionState::retain_queued`] for the entries held in memory.
    fn retain_in_memory(&mut self, mut keep: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let (kept, gone): (Vec<_>, Vec<_>) = self.queue.drain(..).partition(|d| keep(d));
        self.queue.extend(kept);
        for d in &gone {
            self.left_queue(d);
        }
        gone
    }

    /// Forgets the queued and unacknowledged deliveries of messages whose
    /// tenant `keep` refuses (a gateway's withdrawn grant), on disk too.
    pub fn purge_tenants(
        &mut self,
        key: &SessionKey,
        keep: impl Fn(&crate::ids::TenantId) -> bool,
    ) {
        let mut gone: Vec<u64> = self
            .retain_in_memory(|d| keep(&d.msg.tenant))
            .iter()
            .map(|d| d.seq)
            .collect();
        gone.extend(self.drop_spilled(|s| !keep(&s.body.tenant)));
        let ids: Vec<(u16, u64)> = self
            .inflight
            .iter()
            .filter_map(|(id, f)| match &f.state {
                OutState::AwaitingAck(d) if !keep(&d.msg.tenant) => Some((*id, d.seq)),
                _ => None,
            })
            .collect();
        for (id, _) in &ids {
            self.inflight.remove(id);
        }
        if let Some(p) = &self.persist {
            for seq in &gone {
                drop(Write::from_result(p.remove_queued(key, *seq)));
            }
            for (id, queue_seq) in &ids {
                drop(Write::from_result(p.acknowledged(key, *id, *queue_seq)));
            }
        }
    }

    /// The session is deleted: its queue no longer counts for its tenant.
    pub fn forget_tenant(&mut self) {
        self.tenant_queued_sub(self.queued_bytes);
        self.usage = None;
        if let Some(m) = self.node_memory.take() {
            let spilled: usize = self.spilled.iter().map(|s| s.size as usize).sum();
            m.sub(self.queued_bytes - spilled, self.queue.len());
            m.sub_spilled(self.spilled.len());
        }
    }

    /// Removes expired queued deliveries (spilled ones without reading
    /// them back); returns their queue positions.
    pub fn take_expired(&mut self, now: Instant) -> Vec<u64> {
        let expired = |at: Option<Instant>| at.is_some_and(|t| t <= now);
        let mut gone = Vec::new();
        if self.queue.iter().any(|d| expired(d.msg.expires_at)) {
            let out = self.retain_in_memory(|d| !expired(d.msg.expires_at));
            gone.extend(out.iter().map(|d| d.seq));
        }
        gone.extend(self.drop_spilled(|s| expired(s.body.expires_at)));
        gone
    }

    /// The earliest expiry among queued deliveries.
    pub fn earliest_expiry(&self) -> Option<Instant> {
        let queued = self.queue.iter().filter_map(|d| d.msg.expires_at);
        let spilled = self.spilled.iter().filter_map(|s| s.body.expires_at);
        queued.chain(spilled).min()
    }

    /// Allocates a packet id not used by any in-flight message, or `None`
    /// when all 65,535 are in use.
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Records a sent message as in flight; returns its send order.
    pub fn track_inflight(&mut self, packet_id: u16, state: OutState) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.inflight.insert(packet_id, Inflight { seq, state });
        seq
    }

    /// Puts back what a durable session had on disk: its queue (in order),
    /// its in-flight messages (redelivered with DUP on resume) and the
    /// incoming QoS 2 ids still awaiting PUBREL.
    pub fn restore_queues(
        &mut self,
        key: &SessionKey,
        queue: Vec<Delivery>,
        inflight: Vec<RestoredInflight>,
        incoming: Vec<u16>,
    ) {
        // Past three quarters of the node's bound, a restored queue stays
        // on disk (`load` gives every message a body id; a queue with one
        // that has none is kept whole in memory, as order must hold).
        let can_spill =
            self.persist.is_some() && queue.iter().all(|d| d.msg.stored.get().is_some());
        for d in queue {
            self.next_queue_seq = self.next_queue_seq.max(d.seq);
            let spill = can_spill && self.node_memory.as_ref().is_some_and(|m| m.spills());
            self.tenant_queued_add(d.msg.size());
            self.push_reserved(d, spill.then_some(key));
        }
        for f in inflight {
            self.next_seq = self.next_seq.max(f.seq);
            // Its body keeps its queue position: never hand that out again.
            self.next_queue_seq = self.next_queue_seq.max(f.queue_seq);
            let state = match (f.awaiting_ack, f.delivery) {
                (true, Some(d)) => OutState::AwaitingAck(d),
                (true, None) => continue, // dropped by `load`, never here
                (false, _) => OutState::AwaitingComp,
            };
            self.inflight
                .insert(f.packet_id, Inflight { seq: f.seq, state });
        }
        self.incoming_qos2.extend(incoming);
    }

    /// In-flight packet ids in the order they were first sent.
    pub fn inflight_in_order(&self) -> Vec<u16> {
        let mut ids: Vec<(u64, u16)> = self.inflight.iter().map(|(id, f)| (f.seq, *id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// QoS > 0 messages sent on this connection and not yet acknowledged
    /// (what the client's Receive Maximum limits).
    pub fn window_used(&self) -> usize {
        self.inflight.len().saturating_sub(self.resend.len())
    }
}

/// QoS a subscriber gets: the lower of what was published and granted.
pub fn effective_qos(published: QoS, granted: QoS) -> QoS {
    published.min(granted)
}

#[cfg(test)]
mod tests;
