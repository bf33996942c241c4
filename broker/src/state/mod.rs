//! The control state and the node's view of it.
//!
//! - `state/command.rs`: [`Command`]s, what applying one did ([`Applied`]) and
//!   caused ([`Effect`]), as serde data with a format byte.
//! - `control.rs`: [`ControlState`], the deterministic state machine: the
//!   replicated session records and retained messages. No I/O, no clock.
//! - `state/trie.rs`, `state/retained.rs`: the node's indexes over those records for
//!   the hot paths (matching a publish, retained messages for a new
//!   subscription), holding the node's runtime session handles.
//! - this file: [`State`], which submits commands to the control state in
//!   log order and acts on their effects for this node: its runtime
//!   sessions (`session/mod.rs`), the indexes, the durable store (`persist/`),
//!   the sweeper's timers, metrics and tenant usage.
//!
//! One writer: commands apply under one lock, with their effects, so this
//! node's indexes, disk and timers change in the same order as the
//! control state. Reads of the indexes (the publish path, retained
//! lookups, session lookups) take no global lock: the session map is
//! sharded, the trie locks per node, the retained index per tenant.
//!
//! Lock order: the control lock, a session-map shard, a session's mutex,
//! trie nodes. Nothing takes the control lock while holding a session's.

pub mod command;
pub mod control;
pub mod retained;
pub mod seam;
pub mod trie;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::clock::instant_from_unix_ms;
use crate::codec::Will;
use crate::ids::{Claim, SessionId, SessionKey, TenantId};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::persist::{Persist, Write};
use crate::session::sweeper::{Due, Sweeper};
use crate::session::Session;
use crate::tenant::quota::{release, QuotaKind};
use crate::topic::TopicFilter;

pub use command::{Applied, Command, Effect, Limit, RetainChange, Retained, StoredSubscription};
pub use control::{namespace, ControlState, SessionRecord};
use retained::RetainedStore;
pub use seam::{Control, ControlError, LocalControl, Receipt};
use trie::{Matches, Subscriber, SubscriptionTrie};

/// What submitting a command did on this node.
#[derive(Debug)]
pub struct Done {
    pub applied: Applied,
    /// When this node's durable writes for it are on disk.
    pub write: Write,
    /// Wills the command released, to publish (after the control lock is
    /// released: publishing may retain, which is a command).
    pub wills: Vec<(SessionKey, Box<Will>)>,
    prepared: Prepared,
    /// Counters a retained change moves.
    retained_counts: Option<RetainedCounts>,
}

/// What a RETAIN's effects need that does not depend on the control
/// state, looked up or encoded before the control lock is taken (RETAIN
/// publishes serialise on that lock: the less done under it, the more of
/// them per second).
#[derive(Debug, Default)]
struct Prepared {
    /// The store record, encoded.
    record: Option<Vec<u8>>,
    /// The tenant's usage and retained index.
    usage: Option<Arc<crate::tenant::quota::Usage>>,
    tree: Option<Arc<parking_lot::RwLock<retained::Node>>>,
}

/// What a retained change does to its tenant's usage and the node's count.
#[derive(Debug)]
struct RetainedCounts {
    tenant: TenantId,
    /// `$SYS` topics are not the tenant's.
    counted: bool,
    added: bool,
    removed: bool,
    bytes_added: u64,
    bytes_removed: u64,
}

impl RetainedCounts {
    /// `m` is retained now, replacing a message of `replaced` bytes.
    fn set(m: &Message, replaced: Option<u64>) -> RetainedCounts {
        RetainedCounts {
            tenant: m.tenant.clone(),
            counted: !crate::topic::is_sys(&m.topic),
            added: replaced.is_none(),
            removed: false,
            bytes_added: m.size() as u64,
            bytes_removed: replaced.unwrap_or(0),
        }
    }
}

impl Done {
    /// Adds a durable write this command made.
    fn also(&mut self, w: Write) {
        self.write = std::mem::replace(&mut self.write, Write::None).and(w);
    }
}

/// The control state with its log position: the single-node log.
#[derive(Debug, Default)]
struct Log {
    /// Position of the last command applied: what `SessionId`s and
    /// `Claim`s are made of. Restored records take positions too, so the
    /// positions given after a restart never repeat one in use.
    index: u64,
    control: ControlState,
}

#[derive(Debug)]
pub struct State {
    metrics: Arc<Metrics>,
    /// Durable store; `None` only in unit tests.
    persist: Option<Arc<Persist>>,
    /// Deadlines: session expiry, delayed wills, expiring messages.
    sweeper: Arc<Sweeper>,
    /// Every session queue's messages, for `--max-queued-memory`.
    queue_memory: Arc<crate::session::queue_memory::QueueMemory>,
    log: Mutex<Log>,
    /// The runtime of every session the control state has, by key.
    sessions: DashMap<SessionKey, Arc<Session>, foldhash::fast::RandomState>,
    trie: SubscriptionTrie,
    retained: RetainedStore,
    /// Per-tenant usage: mirrors of the control state's counts (for
    /// `$SYS` and metrics) and node-local usage.
    tenants: Arc<crate::tenant::Tenants>,
}

impl State {
    pub fn new(metrics: Arc<Metrics>, persist: Option<Arc<Persist>>) -> State {
        State {
            metrics,
            persist,
            sweeper: Arc::new(Sweeper::default()),
            queue_memory: Arc::default(),
            log: Mutex::default(),
            sessions: DashMap::default(),
            trie: SubscriptionTrie::default(),
            retained: RetainedStore::default(),
            tenants: Arc::default(),
        }
    }

    /// The node-wide count of queued messages (`--max-queued-memory`).
    pub fn queue_memory(&self) -> &Arc<crate::session::queue_memory::QueueMemory> {
        &self.queue_memory
    }

    /// Every tenant's usage on this node.
    pub fn tenants(&self) -> &Arc<crate::tenant::Tenants> {
        &self.tenants
    }

    /// Applies one command at the next log position and acts on its
    /// effects, all under the control lock: the single-node log
    /// (`LocalControl`). Everything else submits through a `Control`.
    pub(crate) fn apply_next(&self, cmd: Command) -> Done {
        let prepared = self.prepare(&cmd);
        let mut log = self.log.lock();
        let index = log.index + 1;
        self.apply_locked(&mut log, index, cmd, prepared)
    }

    /// What a command's effects can use that does not depend on the
    /// control state.
    fn prepare(&self, cmd: &Command) -> Prepared {
        let Command::Retain { message, .. } = cmd else {
            return Prepared::default();
        };
        let tenant = &message.message.tenant;
        Prepared {
            record: (self.persists(&message.message.topic) && !message.message.payload.is_empty())
                .then(|| crate::records::encode(message)),
            usage: Some(self.tenants.usage(tenant)),
            tree: Some(self.retained.tenant(tenant)),
        }
    }

    /// The counters a retained change moves (under the control lock: a
    /// saturating release must not overtake the add before it); `usage`
    /// is the tenant's, if looked up already.
    fn count_retained(&self, c: RetainedCounts, usage: Option<Arc<crate::tenant::quota::Usage>>) {
        // `$SYS` topics are the broker's own: neither the tenant's nor the
        // node's count (`$SYS/broker/retained messages/count`).
        if !c.counted {
            return;
        }
        let u = usage.unwrap_or_else(|| self.tenants.usage(&c.tenant));
        if c.added {
            u.retained_messages.fetch_add(1, Ordering::Relaxed);
            self.metrics.inc(&self.metrics.retained);
        }
        if c.removed {
            release(&u.retained_messages, 1);
            self.metrics.dec(&self.metrics.retained);
        }
        u.retained_bytes.fetch_add(c.bytes_added, Ordering::Relaxed);
        release(&u.retained_bytes, c.bytes_removed);
    }

    /// Applies a command at the log position a replicated log gave it
    /// (positions only grow; an old one is refused as already applied).
    pub fn apply_at(&self, index: u64, cmd: Command) -> Result<Done, ControlError> {
        let prepared = self.prepare(&cmd);
        let mut log = self.log.lock();
        if index <= log.index {
            return Err(ControlError::Unavailable(format!(
                "log position {index} is already applied (last {})",
                log.index
            )));
        }
        Ok(self.apply_locked(&mut log, index, cmd, prepared))
    }

    fn apply_locked(&self, log: &mut Log, index: u64, cmd: Command, prepared: Prepared) -> Done {
        log.index = index;
        let out = log.control.apply(index, cmd);
        let mut done = Done {
            applied: out.applied,
            write: Write::None,
            wills: Vec::new(),
            prepared,
            retained_counts: None,
        };
        for effect in out.effects {
            self.observe(effect, &mut done);
        }
        if let Some(c) = done.retained_counts.take() {
            self.count_retained(c, done.prepared.usage.take());
        }
        done
    }

    /// Reads the control state (under its lock: keep it short).
    pub fn read<R>(&self, f: impl FnOnce(&ControlState) -> R) -> R {
        f(&self.log.lock().control)
    }

    /// Acts on one effect for this node.
    fn observe(&self, effect: Effect, done: &mut Done) {
        match effect {
            e @ (Effect::SessionCreated { .. }
            | Effect::Claimed { .. }
            | Effect::BecamePersistent { .. }
            | Effect::SessionRecord { .. }
            | Effect::SessionEnded { .. }) => self.observe_session(e, done),
            e @ (Effect::WillPending { .. }
            | Effect::WillCleared { .. }
            | Effect::PublishWill { .. }
            | Effect::ExpiryDue { .. }) => self.observe_timers(e, done),
            e @ (Effect::Subscribed { .. } | Effect::Unsubscribed { .. }) => {
                self.observe_subscription(e, done)
            }
            e @ (Effect::RetainedSet { .. } | Effect::RetainedRemoved { .. }) => {
                self.observe_retained(e, done)
            }
        }
    }

    /// Effects on a session record or its runtime.
    fn observe_session(&self, effect: Effect, done: &mut Done) {
        match effect {
            Effect::SessionCreated {
                key,
                session,
                persistent,
            } => {
                let usage = self.tenants.usage(&key.tenant);
                usage.sessions.fetch_add(1, Ordering::Relaxed);
                if persistent {
                    usage.persistent_sessions.fetch_add(1, Ordering::Relaxed);
                }
                let runtime = Arc::new(Session::new(
                    key.clone(),
                    session,
                    Some(usage),
                    Some(self.queue_memory.clone()),
                ));
                if persistent {
                    runtime.lock().persist = self.persist.clone();
                }
                self.sessions.insert(key, runtime);
                self.metrics.inc(&self.metrics.sessions);
            }
            Effect::Claimed {
                key,
                session,
                claim,
            } => {
                let Some(s) = self.instance(&key, session) else {
                    return;
                };
                let mut st = s.lock();
                st.claim = claim;
                // Timers of earlier claims (expiry, delayed will) are dead.
                st.timers.cancel();
                st.timers = tokio_util::sync::CancellationToken::new();
            }
            Effect::BecamePersistent { key, subscriptions } => {
                let Some(s) = self.session(&key) else { return };
                self.tenants
                    .usage(&key.tenant)
                    .persistent_sessions
                    .fetch_add(1, Ordering::Relaxed);
                let mut st = s.lock();
                st.persist = self.persist.clone();
                if let Some(p) = &st.persist {
                    // What it already has is durable from now on.
                    for (f, sub) in &subscriptions {
                        let w =
                            Write::from_result(p.put_subscription(&key, f, sub.options, sub.id));
                        done.also(w);
                    }
                }
            }
            Effect::SessionRecord { key, meta } => {
                let Some(s) = self.session(&key) else { return };
                let st = s.lock();
                if let Some(p) = &st.persist {
                    done.also(Write::from_result(p.put_session(&key, &meta)));
                }
            }
            Effect::SessionEnded {
                key,
                session,
                persistent,
                subscriptions,
            } => self.session_ended(&key, session, persistent, subscriptions, done),
            _ => {}
        }
    }

    /// Effects on wills and expiry: the disk, the sweeper, the wills to publish.
    fn observe_timers(&self, effect: Effect, done: &mut Done) {
        match effect {
            Effect::WillPending {
                key,
                claim,
                will,
                due_ms,
            } => {
                let Some(s) = self.session(&key) else { return };
                let (persist, timers) = {
                    let st = s.lock();
                    (st.persist.clone(), st.timers.clone())
                };
                if let Some(p) = persist {
                    // Best effort: the state in memory is what counts now.
                    let pending = control::PendingWill { will, due_ms };
                    drop(Write::from_result(p.put_will(&key, &pending)));
                }
                self.sweeper.at(
                    instant_from_unix_ms(due_ms),
                    Due::Will {
                        session: Arc::downgrade(&s),
                        timers,
                        claim,
                        due_ms,
                    },
                );
            }
            Effect::WillCleared { key, .. } => {
                let Some(s) = self.session(&key) else { return };
                let st = s.lock();
                if let Some(p) = &st.persist {
                    drop(Write::from_result(p.delete_will(&key)));
                }
            }
            Effect::PublishWill { key, will } => done.wills.push((key, will)),
            Effect::ExpiryDue { key, claim, due_ms } => {
                let Some(s) = self.session(&key) else { return };
                let timers = s.lock().timers.clone();
                self.sweeper.at(
                    instant_from_unix_ms(due_ms),
                    Due::SessionExpiry {
                        session: Arc::downgrade(&s),
                        timers,
                        claim,
                        due_ms,
                    },
                );
            }
            _ => {}
        }
    }

    /// Effects on a subscription: the trie, the disk, the tenant count.
    fn observe_subscription(&self, effect: Effect, done: &mut Done) {
        match effect {
            Effect::Subscribed {
                key,
                session,
                filter,
                options,
                id,
                existed,
                ..
            } => {
                let Some(s) = self.instance(&key, session) else {
                    return;
                };
                let ns = namespace(&key.tenant, &filter);
                if !existed {
                    self.tenants
                        .usage(&ns)
                        .subscriptions
                        .fetch_add(1, Ordering::Relaxed);
                }
                let st = s.lock();
                if let Some(p) = &st.persist {
                    let w = Write::from_result(p.put_subscription(&key, &filter, options, id));
                    done.also(w);
                }
                drop(st);
                self.trie.subscribe(
                    &ns,
                    filter.filter(),
                    filter.group(),
                    Subscriber {
                        session: s,
                        options,
                        id,
                    },
                );
            }
            Effect::Unsubscribed {
                key,
                session,
                filter,
                ..
            } => {
                let ns = namespace(&key.tenant, &filter);
                release(&self.tenants.usage(&ns).subscriptions, 1);
                self.trie
                    .unsubscribe(&ns, filter.filter(), filter.group(), session);
                if let Some(s) = self.instance(&key, session) {
                    let st = s.lock();
                    if let Some(p) = &st.persist {
                        let w = Write::from_result(p.delete_subscription(&key, &filter));
                        done.also(w);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether a retained message of `topic` goes to disk: not `$SYS`'s,
    /// which `ops/sys.rs` republishes every interval.
    fn persists(&self, topic: &str) -> bool {
        self.persist.is_some() && !crate::topic::is_sys(topic)
    }

    /// Effects on a retained message: the index, the disk, the sweeper, the counts.
    fn observe_retained(&self, effect: Effect, done: &mut Done) {
        match effect {
            Effect::RetainedSet { message, replaced } => {
                if let Some(p) = self
                    .persist
                    .as_ref()
                    .filter(|_| self.persists(&message.message.topic))
                {
                    let record = done
                        .prepared
                        .record
                        .take()
                        .unwrap_or_else(|| crate::records::encode(&message));
                    let m = &message.message;
                    done.also(Write::from_result(
                        p.put_retained_record(&m.tenant, &m.topic, &record),
                    ));
                }
                self.expire_retained_later(&message);
                let m = message.message;
                done.retained_counts = Some(RetainedCounts::set(&m, replaced));
                match done.prepared.tree.take() {
                    Some(tree) => RetainedStore::set_in(&mut tree.write(), m),
                    None => self.retained.set(m),
                }
            }
            Effect::RetainedRemoved {
                tenant,
                topic,
                size,
            } => {
                if let Some(p) = self.persist.as_ref().filter(|_| self.persists(&topic)) {
                    done.also(Write::from_result(p.delete_retained(&tenant, &topic)));
                }
                self.retained.remove(&tenant, &topic);
                done.retained_counts = Some(RetainedCounts {
                    counted: !crate::topic::is_sys(&topic),
                    tenant,
                    added: false,
                    removed: true,
                    bytes_added: 0,
                    bytes_removed: size,
                });
            }
            _ => {}
        }
    }

    /// A session instance is gone: its runtime, its trie entries, its
    /// records on disk (in this apply, so a new instance's records, written
    /// next, are never deleted with them), its usage.
    fn session_ended(
        &self,
        key: &SessionKey,
        session: SessionId,
        persistent: bool,
        subscriptions: Vec<TopicFilter>,
        done: &mut Done,
    ) {
        for filter in &subscriptions {
            let ns = namespace(&key.tenant, filter);
            release(&self.tenants.usage(&ns).subscriptions, 1);
            self.trie
                .unsubscribe(&ns, filter.filter(), filter.group(), session);
        }
        let Some((_, s)) = self.sessions.remove_if(key, |_, s| s.id == session) else {
            return;
        };
        self.metrics.dec(&self.metrics.sessions);
        let mut st = s.lock();
        st.timers.cancel();
        if let Some(u) = &st.usage {
            release(&u.sessions, 1);
            if persistent {
                release(&u.persistent_sessions, 1);
            }
        }
        st.forget_tenant();
        if let Some(p) = st.persist.take() {
            let w = Write::from_result(p.delete_session(key));
            done.also(w);
        }
        drop(st);
        // Whoever still holds the runtime (its connection, a publisher)
        // sees it offline: nothing waits on it.
        s.set_online(false);
    }

    /// Rebuilds a durable session found on disk at start-up, without
    /// writing anything back. It comes back offline, disconnected since
    /// `disconnected_at_ms`; its claim is the one it gets here.
    pub fn restore_session(
        &self,
        r: crate::persist::RestoredSession,
        disconnected_at_ms: u64,
    ) -> Arc<Session> {
        let mut log = self.log.lock();
        log.index += 1;
        let index = log.index;
        let (session, claim) = (SessionId(index), Claim(index));
        let usage = self.tenants.usage(&r.key.tenant);
        // Counted without a limit: what was stored before a restart (or
        // before the limit was lowered) is kept.
        usage.sessions.fetch_add(1, Ordering::Relaxed);
        usage.persistent_sessions.fetch_add(1, Ordering::Relaxed);
        let runtime = Arc::new(Session::new(
            r.key.clone(),
            session,
            Some(usage),
            Some(self.queue_memory.clone()),
        ));
        let mut record = SessionRecord {
            session,
            claim,
            connected: false,
            expiry_interval: r.expiry_interval,
            persistent: true,
            user: r.user.map(Into::into),
            disconnected_at_ms,
            will: r
                .will
                .map(|(will, due_ms)| Box::new(control::PendingWill { will, due_ms })),
            subscriptions: Default::default(),
        };
        {
            let mut st = runtime.lock();
            st.persist = self.persist.clone();
            st.claim = claim;
            for (filter, options, id) in r.subscriptions {
                let ns = namespace(&r.key.tenant, &filter);
                self.tenants
                    .usage(&ns)
                    .subscriptions
                    .fetch_add(1, Ordering::Relaxed);
                self.trie.subscribe(
                    &ns,
                    filter.filter(),
                    filter.group(),
                    Subscriber {
                        session: runtime.clone(),
                        options,
                        id,
                    },
                );
                record
                    .subscriptions
                    .insert(filter, StoredSubscription { options, id });
            }
            st.restore_queues(&r.key, r.queue, r.inflight, r.incoming);
        }
        log.control.restore_session(r.key.clone(), record);
        self.sessions.insert(r.key, runtime.clone());
        self.metrics.inc(&self.metrics.sessions);
        runtime
    }

    /// A sweeper entry for a retained message that expires.
    fn expire_retained_later(&self, r: &Retained) {
        let m = &r.message;
        if let (Some(at), Some(due_ms)) = (m.expires_at, r.expires_at_ms) {
            self.sweeper.at(
                at,
                Due::Retained {
                    tenant: m.tenant.clone(),
                    topic: m.topic.clone(),
                    due_ms,
                },
            );
        }
    }

    /// Puts a retained message found on disk back, without writing.
    pub fn restore_retained(&self, r: Retained) {
        let m = r.message.clone();
        let mut log = self.log.lock();
        log.control.restore_retained(r.clone());
        self.expire_retained_later(&r);
        self.count_retained(RetainedCounts::set(&m, None), None);
        drop(log);
        self.retained.set(m);
    }

    pub fn sweeper(&self) -> &Arc<Sweeper> {
        &self.sweeper
    }

    pub fn persist(&self) -> Option<&Arc<Persist>> {
        self.persist.as_ref()
    }

    /// The runtime of the session of `key`, if the control state has one.
    pub fn session(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.sessions.get(key).map(|s| s.clone())
    }

    /// The runtime of exactly that instance of the session of `key`.
    fn instance(&self, key: &SessionKey, session: SessionId) -> Option<Arc<Session>> {
        self.session(key).filter(|s| s.id == session)
    }

    /// The session's subscriptions (as the client named them).
    pub fn subscriptions(&self, key: &SessionKey) -> Vec<TopicFilter> {
        self.read(|c| {
            c.session(key)
                .map(|r| r.subscriptions.keys().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Removes gateway subscriptions (`$tenant/<id>/`) and the queued and
    /// unacknowledged deliveries of other tenants from every session whose
    /// pair (its tenant, the other tenant) `keep` refuses: at start-up and
    /// after each reload, for sessions no connection checks (offline ones,
    /// and those restored from disk before any grant was looked at). A
    /// connected session's own principal is checked by its connection
    /// (`connection/inbound.rs` `drop_ungranted`).
    pub fn drop_gateway_state(
        &self,
        control: &dyn Control,
        keep: impl Fn(&TenantId, &str) -> bool,
    ) {
        for session in self.all_sessions() {
            let home = &session.key.tenant;
            session
                .lock()
                .purge_tenants(&session.key, |t| t == home || keep(home, t.as_str()));
            let filters: Vec<TopicFilter> = self
                .subscriptions(&session.key)
                .into_iter()
                .filter(|f| f.tenant().is_some_and(|t| !keep(home, t)))
                .collect();
            for filter in filters {
                tracing::info!(session = %session.key, filter = filter.as_str(), "Gateway subscription without a grant: removed");
                let r = control.submit(Command::Unsubscribe {
                    key: session.key.clone(),
                    filter,
                });
                if let Err(e) = r.now() {
                    tracing::warn!(session = %session.key, error = %e, "Gateway subscription not removed");
                }
            }
        }
    }

    /// Wakes the connections of the connected sessions of `tenants`:
    /// after a reload each re-checks its tenant (closing if it was
    /// removed) and its gateway grants (`Directory::affected_by`). Others
    /// pick the reload up at their next packet, so a reload that removes
    /// nothing wakes no one. One notify per connection, no lock held
    /// across.
    pub fn wake_tenants(&self, tenants: &std::collections::HashSet<TenantId>) {
        if tenants.is_empty() {
            return;
        }
        for s in self.sessions.iter() {
            if s.is_online() && tenants.contains(&s.key.tenant) {
                s.notify.notify_one();
            }
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Every session on the node now (the admin endpoint's reads).
    pub fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.iter().map(|s| s.clone()).collect()
    }

    /// Subscriptions matching a published topic (the publish path).
    pub fn matches(&self, tenant: &TenantId, topic: &str) -> Matches {
        self.trie.matches(tenant, topic)
    }

    /// Retained messages for a new subscription, without those expired
    /// (the sweeper removes them by command).
    pub fn retained_matching(&self, tenant: &TenantId, filter: &str) -> Vec<Arc<Message>> {
        self.retained.matching(tenant, filter, Instant::now())
    }
}

/// The tenant-usage kind a control-state limit is counted under.
pub fn quota_kind(limit: Limit) -> QuotaKind {
    match limit {
        Limit::PersistentSessions => QuotaKind::PersistentSessions,
        Limit::SessionSubscriptions | Limit::Subscriptions => QuotaKind::Subscriptions,
        Limit::RetainedMessages => QuotaKind::RetainedMessages,
        Limit::RetainedBytes => QuotaKind::RetainedBytes,
    }
}
