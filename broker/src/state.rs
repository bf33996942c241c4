//! The broker's control state and the one function that changes it.
//!
//! Owns the sessions (by tenant and client id), the subscription trie and
//! the retained store, and applies [`Command`]s to them. Reads (trie
//! matching on the publish path, retained lookups, session lookups) take
//! no global lock: the session map is sharded, the trie locks per node, the
//! retained store per tenant.
//!
//! Lock order: a session-map shard, then a session's mutex, then trie
//! nodes. Subscription changes touch the trie while holding the session's
//! mutex, so a subscription can never outlive a deleted session.

use std::sync::Arc;
use std::time::Instant;

use std::sync::atomic::Ordering;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::codec::SubscriptionOptions;
use crate::command::{Applied, Command, Write};
use crate::ids::{SessionKey, TenantId};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::persist::{Persist, RestoredSession};
use crate::retained::{RetainChange, RetainedStore};
use crate::session::{Session, SessionState, StoredSubscription};
use crate::sweeper::{Due, Sweeper};
use crate::tenant::quota::{release, reserve, QuotaKind, StateLimits, Usage};
use crate::topic::TopicFilter;
use crate::trie::{Matches, Subscriber, SubscriptionTrie};

#[derive(Debug)]
pub struct State {
    metrics: Arc<Metrics>,
    /// Durable store; `None` only in unit tests.
    persist: Option<Arc<Persist>>,
    /// Deadlines: expiring retained messages are registered here.
    sweeper: Arc<Sweeper>,
    /// Every session queue's messages, for `--max-queued-memory`.
    queue_memory: Arc<crate::queue_memory::QueueMemory>,
    sessions: DashMap<SessionKey, Arc<Session>, foldhash::fast::RandomState>,
    trie: SubscriptionTrie,
    retained: RetainedStore,
    /// Per-tenant usage: subscriptions are counted where they change.
    tenants: Arc<crate::tenant::Tenants>,
}

impl State {
    pub fn new(metrics: Arc<Metrics>, persist: Option<Arc<Persist>>) -> State {
        let tenants: Arc<crate::tenant::Tenants> = Arc::default();
        State {
            metrics,
            persist,
            sweeper: Arc::new(Sweeper::default()),
            queue_memory: Arc::default(),
            sessions: DashMap::default(),
            trie: SubscriptionTrie::default(),
            retained: RetainedStore::new(tenants.clone()),
            tenants,
        }
    }

    /// The node-wide count of queued messages (`--max-queued-memory`).
    pub fn queue_memory(&self) -> &Arc<crate::queue_memory::QueueMemory> {
        &self.queue_memory
    }

    /// Every tenant's usage on this node. Subscriptions: a live SUBSCRIBE
    /// reserves its count before applying (`inbound.rs`, so the limit is
    /// exact), a restored one counts here, and every removal gives back.
    pub fn tenants(&self) -> &Arc<crate::tenant::Tenants> {
        &self.tenants
    }

    /// The tenant whose trie holds a subscription of a session in
    /// `home`, and whose count it is: `home`, or the one a gateway's
    /// `$tenant/<id>/` filter names.
    pub fn namespace(home: &TenantId, filter: &TopicFilter) -> TenantId {
        match filter.tenant() {
            Some(id) => TenantId::new(id),
            None => home.clone(),
        }
    }

    fn subscriptions_gone(&self, tenant: &TenantId, n: usize) {
        if n > 0 {
            let usage = self.tenants.usage(tenant);
            release(&usage.subscriptions, n as u64);
        }
    }

    /// Applies one command: the only way the control state changes. Changes
    /// to durable sessions and to retained messages are written through to
    /// the store; the returned [`Write`] says when they are on disk.
    pub fn apply(&self, cmd: Command) -> (Applied, Write) {
        match cmd {
            Command::PutSession {
                key,
                expiry_interval,
            } => self.put_session(key, expiry_interval),
            Command::DeleteSession { key } => self.delete_session(&key),
            Command::Subscribe {
                key,
                filter,
                options,
                id,
            } => {
                let Some(session) = self.session(&key) else {
                    return (Applied::NoSession, Write::None);
                };
                let mut st = session.lock();
                if st.ended {
                    return (Applied::NoSession, Write::None);
                }
                let write = match &st.persist {
                    Some(p) => Write::from_result(p.put_subscription(&key, &filter, options, id)),
                    None => Write::None,
                };
                let existed = self.add_subscription(&session, &mut st, filter, options, id);
                (Applied::Existed(existed), write)
            }
            Command::Unsubscribe { key, filter } => {
                let Some(session) = self.session(&key) else {
                    return (Applied::NoSession, Write::None);
                };
                let mut st = session.lock();
                let existed = st.subscriptions.remove(filter.as_str()).is_some();
                let ns = Self::namespace(&key.tenant, &filter);
                if existed {
                    self.subscriptions_gone(&ns, 1);
                }
                let write = match (&st.persist, existed) {
                    (Some(p), true) => Write::from_result(p.delete_subscription(&key, &filter)),
                    _ => Write::None,
                };
                self.trie
                    .unsubscribe(&ns, filter.filter(), filter.group(), session.id);
                (Applied::Existed(existed), write)
            }
            Command::Retain { message } => {
                let mut write = Write::None;
                let change = self.set_retained(message, true, |m| {
                    if let Some(p) = &self.persist {
                        write = Write::from_result(p.put_retained(m));
                    }
                });
                match change {
                    RetainChange::Refused(kind) => (Applied::OverQuota(kind), Write::None),
                    change => (Applied::Retained(change), write),
                }
            }
        }
    }

    fn add_subscription(
        &self,
        session: &Arc<Session>,
        st: &mut SessionState,
        filter: TopicFilter,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> bool {
        let existed = st
            .subscriptions
            .insert(filter.clone(), StoredSubscription { options, id })
            .is_some();
        self.trie.subscribe(
            &Self::namespace(&session.key.tenant, &filter),
            filter.filter(),
            filter.group(),
            Subscriber {
                session: session.clone(),
                options,
                id,
            },
        );
        existed
    }

    fn set_retained(
        &self,
        message: Arc<Message>,
        enforce: bool,
        durable: impl FnOnce(&Message),
    ) -> RetainChange {
        if let (Some(at), false) = (message.expires_at, message.payload.is_empty()) {
            self.sweeper.at(
                at,
                Due::Retained {
                    tenant: message.tenant.clone(),
                    topic: message.topic.clone(),
                },
            );
        }
        let change = self.retained.set_with(message, enforce, durable);
        match change {
            RetainChange::Added => self.metrics.inc(&self.metrics.retained),
            RetainChange::Removed => self.metrics.dec(&self.metrics.retained),
            RetainChange::Replaced | RetainChange::Unchanged | RetainChange::Refused(_) => {}
        }
        change
    }

    fn put_session(&self, key: SessionKey, expiry_interval: u32) -> (Applied, Write) {
        let (session, created) = match self.sessions.entry(key) {
            Entry::Occupied(e) => {
                if e.get().lock().ended {
                    return (Applied::Ending, Write::None);
                }
                (e.get().clone(), false)
            }
            Entry::Vacant(v) => {
                let usage = self.tenants.usage(&v.key().tenant);
                // A new durable session needs room in the tenant's
                // `max_persistent_sessions`, reserved before it exists.
                if expiry_interval > 0 && !Self::reserve_persistent(&usage) {
                    return (
                        Applied::OverQuota(QuotaKind::PersistentSessions),
                        Write::None,
                    );
                }
                usage.sessions.fetch_add(1, Ordering::Relaxed);
                let session = Arc::new(Session::new(
                    v.key().clone(),
                    expiry_interval,
                    Some(usage),
                    Some(self.queue_memory.clone()),
                ));
                // Before it is visible: a concurrent `PutSession` must not
                // see it unreserved and reserve again.
                session.lock().persistent = expiry_interval > 0;
                v.insert(session.clone());
                self.metrics.inc(&self.metrics.sessions);
                (session, true)
            }
        };
        let mut st = session.lock();
        if expiry_interval > 0 && !st.persistent {
            // A clean session resumed as a persistent one.
            if !st
                .usage
                .as_ref()
                .is_none_or(|u| Self::reserve_persistent(u))
            {
                return (
                    Applied::OverQuota(QuotaKind::PersistentSessions),
                    Write::None,
                );
            }
            st.persistent = true;
        }
        st.expiry_interval = expiry_interval;
        // A session with an expiry outlives its connection: it is durable
        // from now on (clean sessions never touch the disk).
        if st.persist.is_none() && expiry_interval > 0 {
            st.persist = self.persist.clone();
            if let Some(p) = &st.persist {
                // A clean session resumed as a persistent one: write what it
                // already has.
                for (f, sub) in &st.subscriptions {
                    if let Err(e) = p.put_subscription(&session.key, f, sub.options, sub.id) {
                        tracing::warn!(error = %e, "Durable write refused");
                    }
                }
            }
        }
        let write = match &st.persist {
            Some(p) => Write::from_result(p.put_session(&session.key, expiry_interval, 0)),
            None => Write::None,
        };
        drop(st);
        (Applied::Session { session, created }, write)
    }

    /// Takes one of the tenant's `max_persistent_sessions`, counting the
    /// refusal.
    fn reserve_persistent(usage: &Usage) -> bool {
        let max = StateLimits::get(&usage.state_limits.persistent_sessions);
        let ok = reserve(&usage.persistent_sessions, max);
        if !ok {
            usage.reject(QuotaKind::PersistentSessions);
        }
        ok
    }

    fn delete_session(&self, key: &SessionKey) -> (Applied, Write) {
        let Some((_, session)) = self.sessions.remove_if(key, |_, s| s.lock().ended) else {
            return (Applied::Deleted(false), Write::None);
        };
        self.metrics.dec(&self.metrics.sessions);
        let mut st = session.lock();
        if let Some(u) = &st.usage {
            release(&u.sessions, 1);
            if st.persistent {
                release(&u.persistent_sessions, 1);
            }
        }
        st.persistent = false;
        st.forget_tenant();
        for (filter, _) in st.subscriptions.drain() {
            let ns = Self::namespace(&key.tenant, &filter);
            self.subscriptions_gone(&ns, 1);
            self.trie
                .unsubscribe(&ns, filter.filter(), filter.group(), session.id);
        }
        let write = match st.persist.take() {
            Some(p) => Write::from_result(p.delete_session(key)),
            None => Write::None,
        };
        (Applied::Deleted(true), write)
    }

    /// Rebuilds a durable session found on disk at start-up, without
    /// writing anything back. It comes back offline.
    pub fn restore_session(&self, r: RestoredSession) -> Arc<Session> {
        let usage = self.tenants.usage(&r.key.tenant);
        // Counted without a limit: what was stored before a restart (or
        // before the limit was lowered) is kept.
        usage.sessions.fetch_add(1, Ordering::Relaxed);
        usage.persistent_sessions.fetch_add(1, Ordering::AcqRel);
        let session = Arc::new(Session::new(
            r.key.clone(),
            r.expiry_interval,
            Some(usage),
            Some(self.queue_memory.clone()),
        ));
        {
            let mut st = session.lock();
            st.persistent = true;
            st.persist = self.persist.clone();
            st.disconnected_at = Some(Instant::now());
            for (filter, options, id) in r.subscriptions {
                let usage = self.tenants.usage(&Self::namespace(&r.key.tenant, &filter));
                usage.subscriptions.fetch_add(1, Ordering::AcqRel);
                self.add_subscription(&session, &mut st, filter, options, id);
            }
            st.restore_queues(r.queue, r.inflight, r.incoming);
        }
        self.sessions.insert(r.key, session.clone());
        self.metrics.inc(&self.metrics.sessions);
        session
    }

    /// Puts a retained message found on disk back, without writing.
    pub fn restore_retained(&self, message: Message) {
        // Kept whatever the limits: it was retained before.
        self.set_retained(Arc::new(message), false, |_| {});
    }

    pub fn sweeper(&self) -> &Arc<Sweeper> {
        &self.sweeper
    }

    pub fn persist(&self) -> Option<&Arc<Persist>> {
        self.persist.as_ref()
    }

    pub fn session(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.sessions.get(key).map(|s| s.clone())
    }

    /// Removes gateway subscriptions (`$tenant/<id>/`) and the queued and
    /// unacknowledged deliveries of other tenants from every session whose pair (its
    /// tenant, the other tenant) `keep` refuses: at start-up and after each
    /// reload, for sessions no connection checks (offline ones, and those
    /// restored from disk before any grant was looked at). A connected
    /// session's own principal is checked by its connection
    /// (`inbound.rs` `drop_ungranted`).
    pub fn drop_gateway_state(&self, keep: impl Fn(&TenantId, &str) -> bool) {
        let sessions: Vec<Arc<Session>> = self.sessions.iter().map(|s| s.clone()).collect();
        for session in sessions {
            let home = &session.key.tenant;
            let filters: Vec<TopicFilter> = {
                let mut st = session.lock();
                st.purge_tenants(&session.key, |t| t == home || keep(home, t.as_str()));
                st.subscriptions
                    .keys()
                    .filter(|f| f.tenant().is_some_and(|t| !keep(home, t)))
                    .cloned()
                    .collect()
            };
            for filter in filters {
                tracing::info!(session = %session.key, filter = filter.as_str(), "Gateway subscription without a grant: removed");
                drop(self.apply(Command::Unsubscribe {
                    key: session.key.clone(),
                    filter,
                }));
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

    /// Subscriptions matching a published topic (the publish path).
    pub fn matches(&self, tenant: &TenantId, topic: &str) -> Matches {
        self.trie.matches(tenant, topic)
    }

    /// Retained messages for a new subscription. Expired ones found on the
    /// way are purged (their expiry was fixed when they were retained, so
    /// this is deterministic, not a new decision).
    pub fn retained_matching(&self, tenant: &TenantId, filter: &str) -> Vec<Arc<Message>> {
        let persist = self.persist.clone();
        let (live, expired) = self
            .retained
            .matching_with(tenant, filter, Instant::now(), |m| {
                if let Some(p) = &persist {
                    if let Err(e) = p.delete_retained(&m.tenant, &m.topic) {
                        tracing::warn!(error = %e, "Cannot delete an expired retained message");
                    }
                }
            });
        for _ in expired {
            self.metrics.dec(&self.metrics.retained);
        }
        live
    }
}
