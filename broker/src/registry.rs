//! The session registry: which sessions exist, which connection owns each,
//! and how sessions end.
//!
//! `attach` implements CONNECT's session rules: take over a connected
//! client id (kick the old connection, wait for it to finish), resume or
//! discard the old session (clean start), and report session-present.
//! `detach` runs when a connection ends: a session with expiry 0 ends at
//! once; a persistent one starts its expiry timer; the will is published
//! now, after its delay, or when the session ends, unless the session
//! resumes first.
//!
//! Ending a session is one path, [`Registry::end_instance`], entered only
//! after the session was marked `ended` under its own lock by whoever won
//! the race (detach, the expiry timer, or a clean-start attach). `attach`
//! treats an ended session as absent, so a reconnect that races a closing
//! connection can never resume a session that is being torn down.
//!
//! Shared subscriptions (MQTT 5, 4.8.2): deliveries still queued (not yet
//! sent) go to another member whenever a member disconnects; in-flight
//! QoS 1 messages go to another member when the session ends; in-flight
//! QoS 2 messages never go to anyone else (MQTT-4.8.2-5).
//!
//! Lock order: a registry shard (DashMap entry) may be held while taking a
//! session mutex, never the other way round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::codec::{QoS, Will};
use crate::ids::{ConnectionId, SessionKey};
use crate::message::{Delivery, Message};
use crate::metrics::{DropReason, Metrics};
use crate::router::Router;
use crate::session::{OutState, Owner, Session};

/// How long a taking-over connection waits for the old one to close. It
/// exceeds the 2 s a closing connection may spend flushing.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A will to publish when its connection ends abnormally.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// Boxed: a will is large and most connections have none.
    pub will: Box<Will>,
    /// Will Delay Interval, seconds.
    pub delay: u32,
}

/// Cheap to clone: timer tasks carry their own handle.
#[derive(Debug, Clone)]
pub struct Registry {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    sessions: Arc<DashMap<SessionKey, Arc<Session>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Registry {
    pub fn new(
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Registry {
        Registry {
            router,
            metrics,
            sessions: Arc::new(DashMap::new()),
            tasks,
            shutdown,
        }
    }

    pub fn get(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.sessions.get(key).map(|s| s.clone())
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Attaches a new connection to the session of `key`. Returns the
    /// session and whether an existing session was resumed.
    pub async fn attach(
        &self,
        key: SessionKey,
        clean_start: bool,
        expiry_interval: u32,
        owner: Owner,
    ) -> (Arc<Session>, bool) {
        let deadline = Instant::now() + TAKEOVER_WAIT;
        loop {
            // Kick whoever owns the session now and wait for them to
            // finish closing (their `detach` runs before `done`).
            let current = self.get(&key).and_then(|s| s.lock().owner.clone());
            if let Some(old) = current {
                debug!(session = %key, old = %old.conn, new = %owner.conn, "Taking over session");
                old.kick.cancel();
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, old.done.cancelled()).await;
            }
            let mut discarded = None;
            let claimed = {
                let fresh = || {
                    let s = Arc::new(Session::new(key.clone(), expiry_interval));
                    s.lock().owner = Some(owner.clone());
                    s.set_online(true);
                    s
                };
                let mut entry = self.sessions.entry(key.clone()).or_insert_with(|| {
                    self.metrics.inc(&self.metrics.sessions);
                    Arc::new(Session::new(key.clone(), expiry_interval))
                });
                let session = entry.value().clone();
                let mut st = session.lock();
                if st.ended {
                    // Being torn down by its own ender: start afresh.
                    drop(st);
                    let s = fresh();
                    *entry.value_mut() = s.clone();
                    Some((s, false))
                } else if st.owner.is_some() && Instant::now() < deadline {
                    None // someone attached meanwhile: kick them too
                } else if clean_start && (st.disconnected_at.is_some() || st.owner.is_some()) {
                    // Clean start ends the previous session.
                    st.ended = true;
                    st.owner = None;
                    st.timers.cancel();
                    let will = st.pending_will.take();
                    drop(st);
                    discarded = Some((session, will));
                    let s = fresh();
                    *entry.value_mut() = s.clone();
                    Some((s, false))
                } else {
                    let resumed = st.disconnected_at.is_some() || st.owner.is_some();
                    st.owner = Some(owner.clone());
                    st.disconnected_at = None;
                    st.expiry_interval = expiry_interval;
                    // The session resumed in time: no delayed will, no expiry.
                    st.pending_will = None;
                    st.timers.cancel();
                    st.timers = CancellationToken::new();
                    drop(st);
                    session.set_online(true);
                    Some((session, resumed))
                }
            };
            if let Some((old, will)) = discarded {
                self.end_instance(&old, will);
            }
            if let Some(result) = claimed {
                return result;
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
            st.disconnected_at = Some(Instant::now());
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
        if will_delay > 0 {
            let this = self.clone();
            let session = session.clone();
            let timers = timers.clone();
            let delay = Duration::from_secs(u64::from(will_delay));
            self.tasks.spawn(async move {
                tokio::select! {
                    biased;
                    _ = timers.cancelled() => {}
                    _ = this.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {
                        let will = {
                            let mut st = session.lock();
                            if timers.is_cancelled() { None } else { st.pending_will.take() }
                        };
                        if let Some(will) = will {
                            this.publish_will(&session.key, will);
                        }
                    }
                }
            });
        }
        if expiry != u32::MAX {
            let this = self.clone();
            let session = session.clone();
            let delay = Duration::from_secs(u64::from(expiry));
            self.tasks.spawn(async move {
                tokio::select! {
                    biased;
                    _ = timers.cancelled() => {}
                    _ = this.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => this.expire(&session, &timers),
                }
            });
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

    /// Tears down a session already marked `ended`: removes it from the
    /// registry (if still there), its subscriptions from the trie, hands
    /// shared deliveries to other members, and publishes a will that was
    /// waiting for its delay.
    fn end_instance(&self, session: &Arc<Session>, will: Option<Box<Will>>) {
        if self
            .sessions
            .remove_if(&session.key, |_, s| Arc::ptr_eq(s, session))
            .is_some()
        {
            self.metrics.dec(&self.metrics.sessions);
        }
        session.lock().timers.cancel();
        self.router.remove_all(session);
        self.redispatch_shared(session, true);
        if let Some(will) = will {
            self.publish_will(&session.key, will);
        }
    }

    fn publish_will(&self, key: &SessionKey, will: Box<Will>) {
        let will = *will;
        debug!(session = %key, topic = %will.topic, "Publishing will");
        let msg = Message::new(
            key.tenant.clone(),
            Arc::from(will.topic.as_str()),
            will.payload,
            will.qos,
            will.retain,
            &will.properties,
            Some(key.client.clone()),
        );
        self.router.publish(Arc::new(msg));
    }

    /// Moves shared-subscription deliveries of a leaving member to other
    /// members: queued ones always, in-flight QoS 1 ones when the session
    /// has `ended`. In-flight QoS 2 ones stay (MQTT-4.8.2-4/5).
    fn redispatch_shared(&self, session: &Session, ended: bool) {
        let pending: Vec<Delivery> = {
            let mut st = session.lock();
            let mut out = Vec::new();
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
                            out.push(d);
                        }
                    }
                }
            }
            if st.queue.iter().any(|d| d.share.is_some()) {
                let (shared, rest): (Vec<_>, Vec<_>) =
                    st.queue.drain(..).partition(|d| d.share.is_some());
                st.queue.extend(rest);
                out.extend(shared);
            }
            out
        };
        for d in pending {
            let Some(share) = d.share.clone() else {
                continue;
            };
            let keep = (!ended).then(|| d.clone());
            if !self.router.redispatch_shared(d, &share, session.id) {
                match keep {
                    // No other member: a live session keeps its delivery.
                    Some(d) => session.lock().queue.push_back(d),
                    None => self.metrics.dropped(DropReason::SessionEnded),
                }
            }
        }
    }
}
