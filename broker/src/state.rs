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

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::command::{Applied, Command};
use crate::ids::{SessionKey, TenantId};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::retained::{RetainChange, RetainedStore};
use crate::session::{Session, StoredSubscription};
use crate::trie::{Matches, Subscriber, SubscriptionTrie};

#[derive(Debug)]
pub struct State {
    metrics: Arc<Metrics>,
    sessions: DashMap<SessionKey, Arc<Session>>,
    trie: SubscriptionTrie,
    retained: RetainedStore,
}

impl State {
    pub fn new(metrics: Arc<Metrics>) -> State {
        State {
            metrics,
            sessions: DashMap::new(),
            trie: SubscriptionTrie::default(),
            retained: RetainedStore::default(),
        }
    }

    /// Applies one command. The only way the control state changes.
    pub fn apply(&self, cmd: Command) -> Applied {
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
                    return Applied::NoSession;
                };
                let mut st = session.lock();
                if st.ended {
                    return Applied::NoSession;
                }
                let existed = st
                    .subscriptions
                    .insert(filter.clone(), StoredSubscription { options, id })
                    .is_some();
                self.trie.subscribe(
                    &key.tenant,
                    filter.filter(),
                    filter.group(),
                    Subscriber {
                        session: session.clone(),
                        options,
                        id,
                    },
                );
                Applied::Existed(existed)
            }
            Command::Unsubscribe { key, filter } => {
                let Some(session) = self.session(&key) else {
                    return Applied::NoSession;
                };
                let mut st = session.lock();
                let existed = st.subscriptions.remove(filter.as_str()).is_some();
                self.trie
                    .unsubscribe(&key.tenant, filter.filter(), filter.group(), session.id);
                Applied::Existed(existed)
            }
            Command::Retain { message } => {
                let change = self.retained.set(message);
                match change {
                    RetainChange::Added => self.metrics.inc(&self.metrics.retained),
                    RetainChange::Removed => self.metrics.dec(&self.metrics.retained),
                    RetainChange::Replaced | RetainChange::Unchanged => {}
                }
                Applied::Retained(change)
            }
        }
    }

    fn put_session(&self, key: SessionKey, expiry_interval: u32) -> Applied {
        match self.sessions.entry(key) {
            Entry::Occupied(e) => {
                let session = e.get().clone();
                let mut st = session.lock();
                if st.ended {
                    return Applied::Ending;
                }
                st.expiry_interval = expiry_interval;
                drop(st);
                Applied::Session {
                    session,
                    created: false,
                }
            }
            Entry::Vacant(v) => {
                let session = Arc::new(Session::new(v.key().clone(), expiry_interval));
                v.insert(session.clone());
                self.metrics.inc(&self.metrics.sessions);
                Applied::Session {
                    session,
                    created: true,
                }
            }
        }
    }

    fn delete_session(&self, key: &SessionKey) -> Applied {
        let Some((_, session)) = self.sessions.remove_if(key, |_, s| s.lock().ended) else {
            return Applied::Deleted(false);
        };
        self.metrics.dec(&self.metrics.sessions);
        let mut st = session.lock();
        for (filter, _) in st.subscriptions.drain() {
            self.trie
                .unsubscribe(&key.tenant, filter.filter(), filter.group(), session.id);
        }
        Applied::Deleted(true)
    }

    pub fn session(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.sessions.get(key).map(|s| s.clone())
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
        let (live, expired) = self.retained.matching(tenant, filter, Instant::now());
        for _ in 0..expired {
            self.metrics.dec(&self.metrics.retained);
        }
        live
    }
}
