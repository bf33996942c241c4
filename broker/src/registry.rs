//! The session registry: which connection owns each session, and how
//! sessions end. The sessions themselves live in `state.rs` and change by
//! commands; this file decides when to issue them.
//!
//! `attach` implements CONNECT's session rules: take over a connected
//! client id (kick the old connection, wait for it to finish), resume or
//! discard the old session (clean start), and report session-present.
//! `detach` runs when a connection ends: a session with expiry 0 ends at
//! once; a persistent one starts its expiry timer; the will is published
//! now, after its delay, or when the session ends, unless the session
//! resumes first.
//!
//! Ending a session is one path, `end_instance`, entered only after the
//! session was marked `ended` under its own lock by whoever won the race
//! (detach, the expiry timer, or a clean-start attach); it applies
//! `DeleteSession`. `PutSession` never returns an ended session, so a
//! reconnect that races a closing connection can never resume a session
//! that is being torn down.
//!
//! Shared subscriptions (MQTT 5, 4.8.2): deliveries still queued (not yet
//! sent) go to another member whenever a member disconnects; in-flight
//! QoS 1 messages go to another member when the session ends; in-flight
//! QoS 2 messages never go to anyone else (MQTT-4.8.2-5).
//!
//! Lock order: as in `state.rs` (session-map shard, session mutex, trie).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::codec::{QoS, Will};
use crate::command::{Applied, Command, Write};
use crate::ids::{ConnectionId, SessionKey};
use crate::message::{Delivery, Message};
use crate::metrics::{DropReason, Metrics};
use crate::persist::{unix_ms, Restored};
use crate::router::Router;
use crate::session::{OutState, Owner, Session};
use crate::state::State;
use crate::sweeper::{self, Due};
use crate::tenant::quota::QuotaKind;
use crate::topic::TopicName;

/// How long a taking-over connection waits for the old one to let the
/// session go. A kicked connection detaches as soon as its task runs (its
/// last packets are flushed after), so this is a safety net.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A will to publish when its connection ends abnormally.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// Boxed: a will is large and most connections have none.
    pub will: Box<Will>,
    /// Will Delay Interval, seconds.
    pub delay: u32,
}

/// What `attach` decided under a session's lock.
enum Claim {
    Retry,
    Discard(Option<Box<Will>>),
    Claimed { resumed: bool },
}

/// Cheap to clone: timer tasks carry their own handle.
#[derive(Debug, Clone)]
pub struct Registry {
    state: Arc<State>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Registry {
    pub fn new(
        state: Arc<State>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Registry {
        Registry {
            state,
            router,
            metrics,
            shutdown,
        }
    }

    /// Attaches a new connection to the session of `key`. Returns the
    /// session and whether an existing session was resumed, or the quota
    /// that refuses a new durable session (`max_persistent_sessions`).
    pub async fn attach(
        &self,
        key: SessionKey,
        clean_start: bool,
        expiry_interval: u32,
        owner: Owner,
    ) -> Result<(Arc<Session>, bool), QuotaKind> {
        let deadline = Instant::now() + TAKEOVER_WAIT;
        loop {
            // Kick whoever owns the session now and wait for them to
            // finish closing (their `detach` runs before `done`).
            let current = self
                .state
                .session(&key)
                .and_then(|s| s.lock().owner.clone());
            if let Some(old) = current {
                debug!(session = %key, old = %old.conn, new = %owner.conn, "Taking over session");
                old.kick.cancel();
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, old.done.cancelled()).await;
            }
            let put = self.state.apply(Command::PutSession {
                key: key.clone(),
                expiry_interval,
            });
            if let (Applied::OverQuota(kind), _) = put {
                return Err(kind);
            }
            let (Applied::Session { session, .. }, _) = put else {
                // The previous instance is being torn down by whoever
                // ended it; that finishes without waiting on anything.
                tokio::task::yield_now().await;
                continue;
            };
            // Decide under the session's lock; act after releasing it.
            let decision = {
                let mut st = session.lock();
                // Ended meanwhile, or someone attached meanwhile (kick them
                // too): try again.
                if st.ended || (st.owner.is_some() && Instant::now() < deadline) {
                    Claim::Retry
                } else {
                    let existed = st.disconnected_at.is_some() || st.owner.is_some();
                    if clean_start && existed {
                        // Clean start ends the previous session; the next
                        // round creates a fresh one.
                        st.ended = true;
                        st.owner = None;
                        Claim::Discard(st.pending_will.take())
                    } else {
                        st.owner = Some(owner.clone());
                        st.disconnected_at = None;
                        // Resumed in time: no delayed will, no expiry.
                        if st.pending_will.take().is_some() {
                            if let Some(p) = &st.persist {
                                drop(Write::from_result(p.delete_will(&key)));
                            }
                        }
                        st.timers.cancel();
                        st.timers = CancellationToken::new();
                        Claim::Claimed { resumed: existed }
                    }
                }
            };
            match decision {
                Claim::Retry => tokio::task::yield_now().await,
                Claim::Discard(will) => self.end_instance(&session, will),
                Claim::Claimed { resumed } => {
                    session.set_online(true);
                    return Ok((session, resumed));
                }
            }
        }
    }

    /// Called by a connection when it ends. `will` is the will still due
    /// (absent after DISCONNECT 0x00 and on node shutdown).
    pub fn detach(&self, session: &Arc<Session>, conn: ConnectionId, will: Option<PendingWill>) {
        // Everything that decides the session's fate happens under one
        // lock, so a racing `attach` sees either a live session it may
        // resume or an ended one it must replace.
        let mut will_now = None;
        let (expiry, will_delay, timers, ended) = {
            let mut st = session.lock();
            if !st.owner.as_ref().is_some_and(|o| o.conn == conn) {
                drop(st);
                // Taken over. A resumed session cancels a delayed will, so
                // only a will without delay is due now.
                if let Some(w) = will.filter(|w| w.delay == 0) {
                    self.publish_will(&session.key, w.will);
                }
                return;
            }
            st.owner = None;
            let now = Instant::now();
            st.disconnected_at = Some(now);
            session.set_online(false);
            let expiry = st.expiry_interval;
            let mut will_delay = 0;
            if let Some(w) = will {
                will_delay = w.delay.min(expiry);
                if will_delay == 0 {
                    will_now = Some(w.will);
                } else {
                    st.pending_will = Some(w.will);
                }
            }
            if expiry == 0 {
                st.ended = true;
            } else if let Some(p) = &st.persist {
                // Durable: the disconnect time (for the expiry deadline after
                // a restart) and a will waiting for its delay.
                let mut write =
                    Write::from_result(p.put_session(&session.key, expiry, unix_ms(now)));
                if let Some(w) = &st.pending_will {
                    let due = now + Duration::from_secs(u64::from(will_delay));
                    write = write.and(Write::from_result(p.put_will(
                        &session.key,
                        w,
                        unix_ms(due),
                    )));
                }
                drop(write); // best effort: the state in memory is what counts now
            }
            (expiry, will_delay, st.timers.clone(), st.ended)
        };
        if let Some(w) = will_now {
            self.publish_will(&session.key, w);
        }
        if ended {
            self.end_instance(session, None);
            return;
        }
        // Queued shared deliveries were never sent: another member takes them.
        self.redispatch_shared(session, false);
        // Nobody sends this queue now: the sweeper purges what expires in it.
        let earliest = session.lock().earliest_expiry();
        if let Some(at) = earliest {
            self.state.sweeper().at(
                at,
                Due::QueuedMessage {
                    session: Arc::downgrade(session),
                },
            );
        }
        if will_delay > 0 {
            self.schedule_will(
                session,
                timers.clone(),
                Duration::from_secs(u64::from(will_delay)),
            );
        }
        if expiry != u32::MAX {
            self.schedule_expiry(session, timers, Duration::from_secs(u64::from(expiry)));
        }
    }

    /// Publishes the session's pending will after `delay`, unless the
    /// session resumes (or ends, which publishes it) first.
    fn schedule_will(&self, session: &Arc<Session>, timers: CancellationToken, delay: Duration) {
        self.state.sweeper().at(
            Instant::now() + delay,
            Due::Will {
                session: Arc::downgrade(session),
                timers,
            },
        );
    }

    /// Ends the session after `delay` unless it resumes first.
    fn schedule_expiry(&self, session: &Arc<Session>, timers: CancellationToken, delay: Duration) {
        self.state.sweeper().at(
            Instant::now() + delay,
            Due::SessionExpiry {
                session: Arc::downgrade(session),
                timers,
            },
        );
    }

    /// Runs the sweep until shutdown: every tick, at most `sweeper::BUDGET`
    /// due deadlines are handled; a full tick is followed at once by the
    /// next, an idle one waits `sweeper::TICK`.
    pub async fn sweep(self) {
        loop {
            let due = self
                .state
                .sweeper()
                .take_due(Instant::now(), sweeper::BUDGET);
            let full = due.len() == sweeper::BUDGET;
            for d in due {
                self.handle_due(d);
            }
            if let Some(p) = self.state.persist() {
                // Deferred records reach the disk within a tick even when
                // nobody waits for an fsync (under `never` there is no group
                // committer: they are written here, and sled flushes them).
                if p.store().fsync_mode() == porchlight_storage::FsyncMode::Never {
                    // Off the worker: a tick may have a large fan-out's
                    // records to write.
                    crate::broker::off_worker(|| p.flush_pending());
                } else {
                    p.store().request_flush();
                }
                p.store().refresh_disk_used();
            }
            let pause = if full { Duration::ZERO } else { sweeper::TICK };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    fn handle_due(&self, due: Due) {
        match due {
            Due::SessionExpiry { session, timers } => {
                if let Some(session) = session.upgrade() {
                    self.expire(&session, &timers);
                }
            }
            Due::Will { session, timers } => {
                let Some(session) = session.upgrade() else {
                    return;
                };
                let will = {
                    let mut st = session.lock();
                    if timers.is_cancelled() {
                        None
                    } else {
                        let will = st.pending_will.take();
                        if let (Some(_), Some(p)) = (&will, &st.persist) {
                            drop(Write::from_result(p.delete_will(&session.key)));
                        }
                        will
                    }
                };
                if let Some(will) = will {
                    self.publish_will(&session.key, will);
                }
            }
            Due::QueuedMessage { session } => {
                let Some(session) = session.upgrade() else {
                    return;
                };
                if session.is_online() {
                    return; // its connection drops expired messages as it sends
                }
                let next = {
                    let mut st = session.lock();
                    for seq in st.take_expired(Instant::now()) {
                        session.dropped(&self.metrics, DropReason::Expired);
                        if let Some(p) = &st.persist {
                            drop(Write::from_result(p.remove_queued(&session.key, seq)));
                        }
                    }
                    st.earliest_expiry()
                };
                // The next message to expire in this queue.
                if let Some(at) = next {
                    self.state.sweeper().at(
                        at,
                        Due::QueuedMessage {
                            session: Arc::downgrade(&session),
                        },
                    );
                }
            }
            Due::Retained { tenant, topic } => {
                // A lookup purges what expired (memory and disk).
                self.state.retained_matching(&tenant, &topic);
            }
        }
    }

    /// Rebuilds the durable sessions and retained messages read at
    /// start-up. Every session comes back offline; one whose expiry passed
    /// while the node was down ends now (its will, if any, is published),
    /// the others get their remaining expiry and will delay.
    pub fn restore(&self, restored: Restored) {
        let now_ms = unix_ms(Instant::now());
        for m in restored.retained {
            if m.is_expired(Instant::now()) {
                drop(Write::from_result(self.state_persist_delete_retained(&m)));
                continue;
            }
            self.state.restore_retained(m);
        }
        let mut due_wills = Vec::new();
        let mut expired = Vec::new();
        for r in restored.sessions {
            // A session that was connected at the crash counts as
            // disconnected now.
            let since = if r.disconnected_at_ms == 0 {
                now_ms
            } else {
                r.disconnected_at_ms
            };
            let expiry = r.expiry_interval;
            let expires_ms = since.saturating_add(u64::from(expiry) * 1000);
            let will = r.will.clone();
            let session = self.state.restore_session(r);
            let timers = session.lock().timers.clone();
            if expiry != u32::MAX && expires_ms <= now_ms {
                // Ended once every session is back: its shared messages
                // may go to members restored after it.
                expired.push((session, will.map(|(w, _)| w)));
                continue;
            }
            if let Some((w, due_ms)) = will {
                if due_ms <= now_ms {
                    due_wills.push((session.clone(), w));
                } else {
                    session.lock().pending_will = Some(w);
                    self.schedule_will(
                        &session,
                        timers.clone(),
                        Duration::from_millis(due_ms - now_ms),
                    );
                }
            }
            if expiry != u32::MAX {
                self.schedule_expiry(&session, timers, Duration::from_millis(expires_ms - now_ms));
            }
            let earliest = session.lock().earliest_expiry();
            if let Some(at) = earliest {
                self.state.sweeper().at(
                    at,
                    Due::QueuedMessage {
                        session: Arc::downgrade(&session),
                    },
                );
            }
        }
        for (session, will) in expired {
            session.lock().ended = true;
            debug!(session = %session.key, "Session expired while the node was down");
            // Its will, if still pending, is due now: the session ended.
            self.end_instance(&session, will);
        }
        // Wills fall due after every session is back, so subscribers of
        // the will topics receive them.
        for (session, will) in due_wills {
            if let Some(p) = &session.lock().persist {
                drop(Write::from_result(p.delete_will(&session.key)));
            }
            self.publish_will(&session.key, will);
        }
    }

    fn state_persist_delete_retained(
        &self,
        m: &Message,
    ) -> Result<porchlight_storage::Ticket, porchlight_storage::StorageError> {
        match self.state.persist() {
            Some(p) => p.delete_retained(&m.tenant, &m.topic),
            None => Ok(porchlight_storage::Ticket::default()),
        }
    }

    /// The expiry timer fired: end the session unless it resumed.
    fn expire(&self, session: &Arc<Session>, timers: &CancellationToken) {
        let will = {
            let mut st = session.lock();
            if timers.is_cancelled() || st.owner.is_some() || st.ended {
                return;
            }
            st.ended = true;
            st.pending_will.take()
        };
        debug!(session = %session.key, "Session expired");
        self.end_instance(session, will);
    }

    /// Tears down a session already marked `ended`: the `DeleteSession`
    /// command removes it and its subscriptions; shared deliveries go to
    /// other members; a will that was waiting for its delay is published.
    fn end_instance(&self, session: &Arc<Session>, will: Option<Box<Will>>) {
        session.lock().timers.cancel();
        // Shared deliveries move before the session's records go.
        self.redispatch_shared(session, true);
        self.state.apply(Command::DeleteSession {
            key: session.key.clone(),
        });
        if let Some(will) = will {
            self.publish_will(&session.key, will);
        }
    }

    fn publish_will(&self, key: &SessionKey, will: Box<Will>) {
        let will = *will;
        debug!(session = %key, topic = %will.topic, "Publishing will");
        let build = |retain: bool| {
            Arc::new(Message::new(
                key.tenant.clone(),
                TopicName::trusted(will.topic.clone()),
                will.payload.clone(),
                will.qos,
                retain,
                &will.properties,
                Some(key.clone()),
            ))
        };
        if self.router.publish(build(will.retain)).quota.is_some() {
            // Over the tenant's retained limits: the subscribers still
            // hear of the client's end, it is just not retained.
            debug!(session = %key, "Will not retained: tenant retained limit");
            self.router.publish(build(false));
        }
    }

    /// Moves shared-subscription deliveries of a leaving member to other
    /// members: queued ones always, in-flight QoS 1 ones when the session
    /// has `ended`. In-flight QoS 2 ones stay (MQTT-4.8.2-4/5).
    fn redispatch_shared(&self, session: &Arc<Session>, ended: bool) {
        // Take them out of memory first; their records stay on disk until
        // the copy at the other member is written (a crash in between
        // duplicates a QoS 1 message rather than losing it).
        let (pending, persist) = {
            let mut st = session.lock();
            let mut out: Vec<(Delivery, Source)> = Vec::new();
            if ended {
                let ids: Vec<u16> = st
                    .inflight
                    .iter()
                    .filter(|(_, f)| {
                        matches!(&f.state, OutState::AwaitingAck(d)
                            if d.share.is_some() && d.qos == QoS::AtLeastOnce)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    if let Some(f) = st.inflight.remove(&id) {
                        if let OutState::AwaitingAck(d) = f.state {
                            let seq = d.seq;
                            out.push((d, Source::InFlight(id, seq)));
                        }
                    }
                }
            }
            if st.has_shared_queued() {
                let shared = st.retain_queued(|d| d.share.is_none());
                out.extend(shared.into_iter().map(|d| {
                    let seq = d.seq;
                    (d, Source::Queued(seq))
                }));
            }
            (out, st.persist.clone())
        };
        for (d, source) in pending {
            let Some(share) = d.share.clone() else {
                continue;
            };
            let keep = (!ended).then(|| d.clone());
            if !self.router.redispatch_shared(d, &share, session.id) {
                match keep {
                    // No other member: a live session keeps its delivery
                    // (queued again, under a new position).
                    Some(d) => {
                        let _ = self.router.deliver(session, d);
                    }
                    None => session.dropped(&self.metrics, DropReason::SessionEnded),
                }
            }
            if let Some(p) = &persist {
                let r = match source {
                    Source::InFlight(id, seq) => p.acknowledged(&session.key, id, seq),
                    Source::Queued(seq) => p.remove_queued(&session.key, seq),
                };
                drop(Write::from_result(r));
            }
        }
    }
}

/// Where a redispatched delivery's record lives in the leaving session.
enum Source {
    InFlight(u16, u64),
    Queued(u64),
}
