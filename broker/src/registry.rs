//! The session registry: which sessions exist, which connection owns each,
//! and what happens when a connection ends.
//!
//! `attach` implements CONNECT's session rules: take over a connected
//! client id (kick the old connection, wait for it to finish), resume or
//! discard the old session (clean start), and report session-present.
//! `detach` runs when a connection ends: a clean session ends at once; a
//! persistent one starts its expiry timer; the will is published now or
//! after its delay, unless the session resumes first. Shared-subscription
//! messages the leaving member had not had acknowledged go to another
//! member (`router.rs`).
//!
//! Lock order: a registry shard (DashMap entry) may be held while taking a
//! session mutex, never the other way round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::codec::Will;
use crate::ids::{ConnectionId, SessionKey};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::session::{OutState, Owner, Session};

/// How long a taking-over connection waits for the old one to close.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A will to publish when its connection ends abnormally.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// Boxed: a will is large and most connections have none.
    pub will: Box<Will>,
    /// Will Delay Interval, seconds.
    pub delay: u32,
}

#[derive(Debug)]
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
                let mut entry = self.sessions.entry(key.clone()).or_insert_with(|| {
                    self.metrics.inc(&self.metrics.sessions);
                    Arc::new(Session::new(key.clone(), expiry_interval))
                });
                let session = entry.value().clone();
                let mut st = session.lock();
                if st.owner.is_some() && Instant::now() < deadline {
                    None // someone attached meanwhile: kick them too
                } else if clean_start && (st.disconnected_at.is_some() || st.owner.is_some()) {
                    // Clean start discards the previous session.
                    drop(st);
                    discarded = Some(session);
                    let fresh = Arc::new(Session::new(key.clone(), expiry_interval));
                    fresh.lock().owner = Some(owner.clone());
                    fresh.set_online(true);
                    *entry.value_mut() = fresh.clone();
                    Some((fresh, false))
                } else {
                    let resumed = st.disconnected_at.is_some() || st.owner.is_some();
                    st.owner = Some(owner.clone());
                    st.disconnected_at = None;
                    st.expiry_interval = expiry_interval;
                    st.pending_will = None;
                    // Cancel a pending delayed will and the expiry timer.
                    st.timers.cancel();
                    st.timers = CancellationToken::new();
                    drop(st);
                    session.set_online(true);
                    Some((session, resumed))
                }
            };
            if let Some(old) = discarded {
                self.finish_session(&old);
            }
            if let Some(result) = claimed {
                return result;
            }
        }
    }

    /// Called by a connection when it ends. `will` is the will still due
    /// (absent after a normal DISCONNECT).
    pub fn detach(&self, session: &Arc<Session>, conn: ConnectionId, will: Option<PendingWill>) {
        let (still_owner, expiry, timers) = {
            let mut st = session.lock();
            let mine = st.owner.as_ref().is_some_and(|o| o.conn == conn);
            if mine {
                st.owner = None;
                st.disconnected_at = Some(Instant::now());
                session.set_online(false);
            }
            (mine, st.expiry_interval, st.timers.clone())
        };
        if !still_owner {
            // Taken over. A resumed session cancels a delayed will, so only
            // a will without delay is due now.
            if let Some(w) = will.filter(|w| w.delay == 0) {
                self.publish_will(&session.key, w.will);
            }
            return;
        }
        self.redispatch_unacked_shared(session);
        if expiry == 0 {
            if let Some(w) = will {
                self.publish_will(&session.key, w.will);
            }
            self.end_session(session);
            return;
        }
        if let Some(w) = will {
            let delay = w.delay.min(expiry);
            if delay == 0 {
                self.publish_will(&session.key, w.will);
            } else {
                session.lock().pending_will = Some(w.will);
                let session = session.clone();
                let router = self.router.clone();
                let timers = timers.clone();
                let shutdown = self.shutdown.clone();
                self.tasks.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {
                            let will = session.lock().pending_will.take();
                            if let Some(will) = will {
                                publish_will(&router, &session.key, will);
                            }
                        }
                        _ = timers.cancelled() => {}
                        _ = shutdown.cancelled() => {}
                    }
                });
            }
        }
        if expiry != u32::MAX {
            let registry_session = session.clone();
            let sessions = self.sessions.clone();
            let router = self.router.clone();
            let metrics = self.metrics.clone();
            let shutdown = self.shutdown.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(u64::from(expiry))) => {
                        debug!(session = %registry_session.key, "Session expired");
                        remove_session(&sessions, &router, &metrics, &registry_session);
                    }
                    _ = timers.cancelled() => {}
                    _ = shutdown.cancelled() => {}
                }
            });
        }
    }

    fn publish_will(&self, key: &SessionKey, will: Box<Will>) {
        publish_will(&self.router, key, will);
    }

    /// Ends a session now: removes it and its subscriptions.
    pub fn end_session(&self, session: &Arc<Session>) {
        remove_session(&self.sessions, &self.router, &self.metrics, session);
    }

    /// A session replaced by a clean start: its subscriptions go, and a
    /// pending delayed will is due now because the session ended.
    fn finish_session(&self, old: &Arc<Session>) {
        let will = {
            let mut st = old.lock();
            st.timers.cancel();
            st.pending_will.take()
        };
        if let Some(will) = will {
            self.publish_will(&old.key, will);
        }
        self.router.remove_all(old);
        self.redispatch_unacked_shared(old);
    }

    /// Messages from shared subscriptions that the leaving member had not
    /// acknowledged (in flight or queued) go to another member.
    fn redispatch_unacked_shared(&self, session: &Session) {
        let pending: Vec<_> = {
            let mut st = session.lock();
            let mut out = Vec::new();
            let ids: Vec<u16> = st
                .inflight
                .iter()
                .filter(|(_, f)| matches!(&f.state, OutState::AwaitingAck(d) if d.share.is_some()))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(f) = st.inflight.remove(&id) {
                    if let OutState::AwaitingAck(d) = f.state {
                        out.push(d);
                    }
                }
            }
            let (shared, rest): (Vec<_>, Vec<_>) =
                st.queue.drain(..).partition(|d| d.share.is_some());
            st.queue.extend(rest);
            out.extend(shared);
            out
        };
        for d in pending {
            if let Some(share) = d.share.clone() {
                let d2 = d.clone();
                if !self.router.redispatch_shared(d, &share, session.id) {
                    // No other member: keep it for this session.
                    session.lock().queue.push_back(d2);
                }
            }
        }
    }
}

fn publish_will(router: &Router, key: &SessionKey, will: Box<Will>) {
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
    router.publish(Arc::new(msg));
}

fn remove_session(
    sessions: &DashMap<SessionKey, Arc<Session>>,
    router: &Router,
    metrics: &Metrics,
    session: &Arc<Session>,
) {
    // Only if the registry still holds this instance and nobody attached.
    let removed = sessions.remove_if(&session.key, |_, s| {
        Arc::ptr_eq(s, session) && s.lock().owner.is_none()
    });
    if removed.is_some() {
        metrics.dec(&metrics.sessions);
        router.remove_all(session);
        // The session ended: a will still waiting for its delay is due now.
        let will = session.lock().pending_will.take();
        if let Some(will) = will {
            publish_will(router, &session.key, will);
        }
    }
}
