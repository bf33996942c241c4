//! The session registry: which connection owns each session's runtime on
//! this node, and when the commands that change sessions are issued.
//!
//! `attach` implements CONNECT's session rules: take over a connected
//! client id (kick the old connection, wait for it to finish), then
//! `Command::Connect`, which resumes the session or replaces it (clean
//! start, another user) and reports session-present. `detach` runs when a
//! connection ends: `Command::Disconnect` ends a session with expiry 0 at
//! once and leaves any other waiting for its expiry; the will is
//! published now, after its delay, or when the session ends, unless the
//! session resumes first. The sweeper's timers become `Command::Expire`,
//! `Command::WillDue` and `Command::ExpireRetained`.
//!
//! Races are settled by claims, not flags: every CONNECT makes a new
//! claim, and a DISCONNECT or timer that names an older one changes
//! nothing (`state/control.rs`). A session's end is one command, and its
//! effects remove the runtime, the trie entries and the records together,
//! under the control lock, so a new instance never loses its records to
//! the old one's teardown.
//!
//! Shared subscriptions (MQTT 5, 4.8.2): deliveries still queued (not yet
//! sent) go to another member whenever a member disconnects; in-flight
//! QoS 1 messages go to another member when the session ends (moved just
//! before the command that ends it); in-flight QoS 2 messages never go to
//! anyone else (MQTT-4.8.2-5).
//!
//! Lock order: as in `state/mod.rs` (control, session-map shard, session
//! mutex, trie); the session's mutex is never held while submitting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::clock::now_ms;
use crate::codec::{QoS, Will};
use crate::ids::{Claim, ConnectionId, SessionKey};
use crate::message::{Delivery, Message};
use crate::metrics::{DropReason, Metrics};
use crate::persist::{Restored, Write};
use crate::route::router::Router;
use crate::session::sweeper::{self, Due};
use crate::session::{OutState, Owner, Session};
use crate::state::command::{Applied, Command, DelayedWill, Limit};
use crate::state::{Control, ControlError, Done, State};
use crate::tenant::quota::QuotaKind;
use crate::topic::TopicName;

/// How long a taking-over connection waits for the old one to let the
/// session go. A kicked connection detaches as soon as its task runs (its
/// last packets are flushed after), so this is a safety net.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// What a kick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Kicked {
    /// The session had a connection, now closed.
    pub connected: bool,
    /// The session no longer exists (discarded, or clean).
    pub ended: bool,
}

/// What a CONNECT got.
#[derive(Debug, Clone)]
pub struct Attached {
    pub session: Arc<Session>,
    /// An existing session was resumed (session present).
    pub resumed: bool,
    /// This connection's claim: what its DISCONNECT names.
    pub claim: Claim,
}

/// Why a CONNECT got no session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Quota(QuotaKind),
    Unavailable(ControlError),
}

/// Cheap to clone: timer tasks carry their own handle.
#[derive(Debug, Clone)]
pub struct Registry {
    state: Arc<State>,
    control: Arc<dyn Control>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Registry {
    pub fn new(
        state: Arc<State>,
        control: Arc<dyn Control>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Registry {
        Registry {
            state,
            control,
            router,
            metrics,
            shutdown,
        }
    }

    /// Submits a command and publishes the wills it released.
    async fn submit(&self, cmd: Command) -> Result<Done, ControlError> {
        let done = self.control.submit(cmd).await;
        self.released(done)
    }

    /// Submits a command from a caller that cannot wait (see
    /// `state/seam.rs`).
    fn submit_now(&self, cmd: Command) -> Result<Done, ControlError> {
        let done = self.control.submit(cmd).now();
        self.released(done)
    }

    /// Publishes the wills a command released.
    fn released(&self, done: Result<Done, ControlError>) -> Result<Done, ControlError> {
        let mut done =
            done.inspect_err(|e| tracing::warn!(error = %e, "Session command not applied"))?;
        for (key, will) in std::mem::take(&mut done.wills) {
            self.publish_will(&key, will);
        }
        Ok(done)
    }

    /// Attaches a new connection to the session of `key` for `user`.
    /// Returns the session, or why not: the quota that refuses a new
    /// durable session (`max_persistent_sessions`, `max_persistent`), or
    /// the control state unavailable.
    pub async fn attach(
        &self,
        key: SessionKey,
        clean_start: bool,
        expiry_interval: u32,
        user: Option<String>,
        max_persistent: Option<u64>,
        owner: Owner,
    ) -> Result<Attached, Refused> {
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
            // A session this CONNECT replaces ends: its shared deliveries
            // move to other members first.
            let (exists, foreign) = self.state.read(|c| match c.session(&key) {
                Some(r) => (true, r.foreign(user.as_deref())),
                None => (false, false),
            });
            if foreign {
                // Its subscriptions and messages were granted to that user.
                tracing::info!(client = %key.client, "Session belonged to another user: starting a clean one");
            }
            if exists && (clean_start || foreign) {
                if let Some(old) = self.state.session(&key) {
                    self.redispatch_shared(&old, true);
                }
            }
            let done = self
                .submit(Command::Connect {
                    key: key.clone(),
                    clean_start,
                    expiry_interval,
                    user: user.clone(),
                    max_persistent,
                })
                .await
                .map_err(Refused::Unavailable)?;
            let (claim, resumed) = match done.applied {
                Applied::Connected { claim, resumed, .. } => (claim, resumed),
                Applied::OverLimit(Limit::PersistentSessions) => {
                    return Err(Refused::Quota(QuotaKind::PersistentSessions))
                }
                other => {
                    tracing::warn!(session = %key, ?other, "CONNECT not applied: retrying");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let Some(session) = self.state.session(&key) else {
                tokio::task::yield_now().await;
                continue;
            };
            // Take the runtime unless a later CONNECT claimed the session
            // meanwhile (the loop then kicks it, as a takeover does).
            let won = {
                let mut st = session.lock();
                if st.claim != claim {
                    false
                } else if st.owner.is_some() && Instant::now() < deadline {
                    // Someone attached with an older claim meanwhile:
                    // kick them too, then claim again.
                    false
                } else {
                    if let Some(old) = st.owner.replace(owner.clone()) {
                        old.kick.cancel();
                    }
                    true
                }
            };
            if won {
                session.set_online(true);
                return Ok(Attached {
                    session,
                    resumed,
                    claim,
                });
            }
            tokio::task::yield_now().await;
        }
    }

    /// Called by a connection when it ends. `will` is the will still due
    /// (absent after DISCONNECT 0x00 and on node shutdown).
    pub async fn detach(
        &self,
        session: &Arc<Session>,
        conn: ConnectionId,
        claim: Claim,
        will: Option<DelayedWill>,
    ) {
        let owned = {
            let mut st = session.lock();
            let owned = st.owner.as_ref().is_some_and(|o| o.conn == conn);
            if owned {
                st.owner = None;
            }
            owned
        };
        if !owned {
            // Taken over. A resumed session cancels a delayed will, so
            // only a will without delay is due now.
            if let Some(w) = will.filter(|w| w.delay == 0) {
                self.publish_will(&session.key, w.will);
            }
            return;
        }
        session.set_online(false);
        // A session with expiry 0 ends now: its shared deliveries move to
        // other members first.
        let ends = self.state.read(|c| {
            c.session(&session.key)
                .is_some_and(|r| r.claim == claim && r.expiry_interval == 0)
        });
        if ends {
            self.redispatch_shared(session, true);
        }
        let instant_will = will.as_ref().is_some_and(|w| w.delay == 0);
        let done = self
            .submit(Command::Disconnect {
                key: session.key.clone(),
                claim,
                at_ms: now_ms(),
                will: will.clone(),
            })
            .await;
        // (Its write is best effort: the state in memory is what counts now.)
        match done.map(|d| d.applied) {
            Ok(Applied::Disconnected { ended: false }) => {}
            Ok(Applied::Disconnected { ended: true }) => return,
            _ => {
                // Claimed by a newer CONNECT that has not taken the
                // runtime yet: as a takeover.
                if let Some(w) = will.filter(|_| instant_will) {
                    self.publish_will(&session.key, w.will);
                }
                return;
            }
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
    }

    /// A connected client set a new session expiry (MQTT 5 DISCONNECT).
    pub fn set_expiry(&self, key: &SessionKey, claim: Claim, expiry_interval: u32) {
        drop(self.submit_now(Command::SetExpiry {
            key: key.clone(),
            claim,
            expiry_interval,
        }));
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
                self.handle_due(d).await;
            }
            if let Some(p) = self.state.persist() {
                // Deferred records reach the disk within a tick even when
                // nobody waits for an fsync (under `never` there is no group
                // committer: they are written here, and sled flushes them).
                if p.store().fsync_mode() == porchlight_storage::FsyncMode::Never {
                    // Off the worker: a tick may have a large fan-out's
                    // records to write.
                    crate::route::off_worker(|| p.flush_pending());
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

    async fn handle_due(&self, due: Due) {
        // A timer fires at its monotonic deadline; the command says the
        // time is at least the wall-clock one it was set for.
        match due {
            Due::SessionExpiry {
                session,
                timers,
                claim,
                due_ms,
            } => {
                if let Some(session) = session.upgrade().filter(|_| !timers.is_cancelled()) {
                    self.expire(&session, claim, now_ms().max(due_ms)).await;
                }
            }
            Due::Will {
                session,
                timers,
                claim,
                due_ms,
            } => {
                if let Some(session) = session.upgrade().filter(|_| !timers.is_cancelled()) {
                    let due = Command::WillDue {
                        key: session.key.clone(),
                        claim,
                        at_ms: now_ms().max(due_ms),
                    };
                    drop(self.submit(due).await);
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
            Due::Retained {
                tenant,
                topic,
                due_ms,
            } => {
                let expire = Command::ExpireRetained {
                    tenant,
                    topic,
                    at_ms: now_ms().max(due_ms),
                };
                drop(self.submit(expire).await);
            }
        }
    }

    /// An operator's kick (admin API): the session's connection, if any,
    /// closes with DISCONNECT 0x98 (its will is due), and this waits for
    /// it to finish closing; with `discard` the session then ends too, as
    /// an expired one does. `None`: no such session.
    pub async fn kick(&self, key: &SessionKey, discard: bool) -> Option<Kicked> {
        let session = self.state.session(key)?;
        // The claim and the owner as one look: a discard ends exactly the
        // session the kicked connection held, never a later one.
        let (owner, claim) = {
            let st = session.lock();
            (st.owner.clone(), st.claim)
        };
        let connected = owner.is_some();
        if let Some(o) = owner {
            // A takeover that got there first keeps its own reason.
            if !o.kick.is_cancelled() {
                o.info
                    .kicked
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                o.kick.cancel();
            }
            let _ = tokio::time::timeout(TAKEOVER_WAIT, o.done.cancelled()).await;
        }
        if discard {
            // Only while it is still that instance, disconnected since the
            // claim (a client that reconnected at once keeps its session,
            // and its shared deliveries stay with it).
            let ended = self.state.read(|c| {
                c.session(key)
                    .is_some_and(|r| r.session == session.id && r.claim == claim && !r.connected)
            });
            if ended {
                self.redispatch_shared(&session, true);
                let key = key.clone();
                drop(self.submit(Command::Discard { key, claim }).await);
            }
        }
        let ended = self
            .state
            .read(|c| c.session(key).is_none_or(|r| r.session != session.id));
        tracing::info!(session = %key, connected, discard, ended, "Kicked by an operator");
        Some(Kicked { connected, ended })
    }

    /// Ends the session if it is still disconnected since `claim` and its
    /// expiry has passed at `at_ms`; its shared deliveries move first.
    async fn expire(&self, session: &Arc<Session>, claim: Claim, at_ms: u64) {
        let due = self.state.read(|c| {
            c.session(&session.key)
                .is_some_and(|r| r.expired(claim, at_ms))
        });
        if !due {
            return;
        }
        self.redispatch_shared(session, true);
        let done = self
            .submit(Command::Expire {
                key: session.key.clone(),
                claim,
                at_ms,
            })
            .await;
        if done.is_ok_and(|d| d.applied == Applied::Ended) {
            debug!(session = %session.key, "Session expired");
        }
    }

    /// Rebuilds the durable sessions and retained messages read at
    /// start-up. Every session comes back offline; one whose expiry passed
    /// while the node was down ends now (its will, if any, is published),
    /// the others get their remaining expiry and will delay. Retained
    /// messages come back, but not expired ones, nor `$SYS`'s.
    pub fn restore(&self, restored: Restored) {
        let now = now_ms();
        for m in restored.retained {
            // `$SYS` is not written to disk (`State::persists`); records an
            // earlier build wrote are the last run's figures, and are
            // deleted: kept, they could outlive a change of who may read
            // them (a node now under `--tenants` would leave its node-wide
            // figures in `default`).
            let stale_sys = crate::topic::is_sys(m.message.topic.as_str());
            if stale_sys || m.message.is_expired(Instant::now()) {
                if let Some(p) = self.state.persist() {
                    let (tenant, topic) = (&m.message.tenant, &m.message.topic);
                    drop(Write::from_result(p.delete_retained(tenant, topic)));
                }
                continue;
            }
            self.state.restore_retained(m);
        }
        for r in restored.sessions {
            // A session that was connected at the crash counts as
            // disconnected now.
            let since = if r.disconnected_at_ms == 0 {
                now
            } else {
                r.disconnected_at_ms
            };
            let expiry = r.expiry_interval;
            let expires_ms = since.saturating_add(u64::from(expiry) * 1000);
            let will_due = r.will.as_ref().map(|(_, due)| *due);
            let session = self.state.restore_session(r, since);
            let (claim, timers) = {
                let st = session.lock();
                (st.claim, st.timers.clone())
            };
            // Timers already due (the session expired, or its will fell
            // due, while the node was down) fire on the sweeper's first
            // tick: after every session is back, so shared messages may go
            // to members restored later and will subscribers hear them.
            if let Some(due_ms) = will_due {
                self.state.sweeper().at(
                    crate::clock::instant_from_unix_ms(due_ms),
                    Due::Will {
                        session: Arc::downgrade(&session),
                        timers: timers.clone(),
                        claim,
                        due_ms,
                    },
                );
            }
            if expiry != u32::MAX {
                if expires_ms <= now {
                    debug!(session = %session.key, "Session expired while the node was down");
                }
                self.state.sweeper().at(
                    crate::clock::instant_from_unix_ms(expires_ms),
                    Due::SessionExpiry {
                        session: Arc::downgrade(&session),
                        timers,
                        claim,
                        due_ms: expires_ms,
                    },
                );
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

#[cfg(test)]
mod tests;
