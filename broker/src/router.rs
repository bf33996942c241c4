//! The router: from one published [`Message`] to a delivery in every
//! matching session's queue.
//!
//! `publish` updates the retained store (RETAIN flag only), asks the trie
//! for matches, merges overlapping subscriptions of one session into a
//! single delivery (highest granted QoS, every subscription identifier, as
//! MQTT 3.1.1 section 3.3.5 and MQTT 5 section 3.3.4 allow), honours
//! no-local, and pushes each delivery into its session (`session.rs`),
//! which wakes the connection. No global lock: the trie locks per node and
//! each session has its own mutex.
//!
//! `subscribe` and `unsubscribe` keep the session's own subscription list
//! and the trie in step.

use std::sync::Arc;
use std::time::Instant;

use crate::codec::SubscriptionOptions;
use crate::config::Config;
use crate::ids::SessionId;
use crate::message::{Delivery, Message, ShareRef};
use crate::metrics::{DropReason, Metrics};
use crate::retained::{RetainChange, RetainedStore};
use crate::session::{effective_qos, EnqueueOutcome, Session, StoredSubscription};
use crate::topic::ParsedFilter;
use crate::trie::{Subscriber, SubscriptionTrie};

#[derive(Debug)]
pub struct Router {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    trie: SubscriptionTrie,
    retained: RetainedStore,
}

impl Router {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Router {
        Router {
            config,
            metrics,
            trie: SubscriptionTrie::default(),
            retained: RetainedStore::default(),
        }
    }

    /// Routes `msg` to every matching session.
    pub fn publish(&self, msg: Arc<Message>) -> PublishOutcome {
        if msg.retain {
            match self.retained.set(msg.clone()) {
                RetainChange::Added => self.metrics.inc(&self.metrics.retained),
                RetainChange::Removed => self.metrics.dec(&self.metrics.retained),
                RetainChange::Replaced | RetainChange::Unchanged => {}
            }
        }
        let mut m = self.trie.matches(&msg.tenant, &msg.topic);
        let mut out = PublishOutcome::default();
        // Merge overlapping subscriptions: sort by session, fold runs.
        m.direct.sort_unstable_by_key(|s| s.session.id);
        let mut current: Option<(Arc<Session>, Delivery)> = None;
        for sub in m.direct {
            if sub.options.no_local
                && msg
                    .publisher
                    .as_ref()
                    .is_some_and(|p| *p == sub.session.key.client)
            {
                continue;
            }
            let qos = effective_qos(msg.qos, sub.options.qos);
            let retain = sub.options.retain_as_published && msg.retain;
            match &mut current {
                Some((s, d)) if s.id == sub.session.id => {
                    d.qos = d.qos.max(qos);
                    d.retain |= retain;
                    d.subscription_ids.extend(sub.id);
                }
                _ => {
                    if let Some((s, d)) = current.take() {
                        out.add(self.deliver(&s, d));
                    }
                    let d = Delivery {
                        msg: msg.clone(),
                        qos,
                        retain,
                        subscription_ids: sub.id.into_iter().collect(),
                        share: None,
                    };
                    current = Some((sub.session, d));
                }
            }
        }
        if let Some((s, d)) = current.take() {
            out.add(self.deliver(&s, d));
        }
        for (sub, share) in m.shared {
            let d = Delivery {
                msg: msg.clone(),
                qos: effective_qos(msg.qos, sub.options.qos),
                retain: sub.options.retain_as_published && msg.retain,
                subscription_ids: sub.id.into_iter().collect(),
                share: Some(share),
            };
            out.add(self.deliver(&sub.session, d));
        }
        out
    }

    /// Queues one delivery, counting overflow drops.
    pub fn deliver(&self, session: &Session, d: Delivery) -> EnqueueOutcome {
        let outcome = session.enqueue(
            d,
            self.config.max_queued_messages,
            self.config.queue_overflow,
        );
        if outcome != EnqueueOutcome::Queued {
            self.metrics.dropped(DropReason::QueueFull);
        }
        outcome
    }

    /// Adds (or replaces) a subscription. Returns whether it existed.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        raw: &str,
        parsed: &ParsedFilter<'_>,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> bool {
        let existed = {
            let mut st = session.lock();
            if st.ended {
                // A connection still finishing on a session that ended:
                // its subscription would outlive the session.
                return false;
            }
            st.subscriptions
                .insert(raw.to_owned(), StoredSubscription { options, id })
                .is_some()
        };
        self.trie.subscribe(
            &session.key.tenant,
            parsed.filter,
            parsed.group,
            Subscriber {
                session: session.clone(),
                options,
                id,
            },
        );
        existed
    }

    /// Removes a subscription by the filter the client used. True if it
    /// existed.
    pub fn unsubscribe(&self, session: &Session, raw: &str, parsed: &ParsedFilter<'_>) -> bool {
        let existed = session.lock().subscriptions.remove(raw).is_some();
        self.trie
            .unsubscribe(&session.key.tenant, parsed.filter, parsed.group, session.id);
        existed
    }

    /// Removes every subscription of an ending session from the trie.
    pub fn remove_all(&self, session: &Session) {
        let filters: Vec<String> = session
            .lock()
            .subscriptions
            .drain()
            .map(|(f, _)| f)
            .collect();
        let limits = self.config.topic_limits();
        for raw in filters {
            if let Ok(parsed) = crate::topic::parse_filter(&raw, limits) {
                self.trie
                    .unsubscribe(&session.key.tenant, parsed.filter, parsed.group, session.id);
            }
        }
    }

    /// Retained messages for a new subscription (expired ones are purged).
    pub fn retained_matching(&self, session: &Session, filter: &str) -> Vec<Arc<Message>> {
        let (live, expired) = self
            .retained
            .matching(&session.key.tenant, filter, Instant::now());
        for _ in 0..expired {
            self.metrics.dec(&self.metrics.retained);
        }
        live
    }

    /// Hands an unacknowledged shared-subscription delivery to another
    /// member of its group. False if the group has no other member.
    pub fn redispatch_shared(&self, d: Delivery, share: &ShareRef, leaving: SessionId) -> bool {
        let tenant = d.msg.tenant.clone();
        let m = self.trie.matches(&tenant, &d.msg.topic);
        let mut candidates: Vec<Subscriber> = Vec::new();
        for (sub, s) in m.shared {
            if s == *share && sub.session.id != leaving {
                candidates.push(sub);
            }
        }
        // `matches` chose one member per group; if it chose the leaving
        // session, look for any other member through a second round.
        if candidates.is_empty() {
            let again = self.trie.matches(&tenant, &d.msg.topic);
            candidates.extend(
                again
                    .shared
                    .into_iter()
                    .filter(|(sub, s)| s == share && sub.session.id != leaving)
                    .map(|(sub, _)| sub),
            );
        }
        let Some(sub) = candidates.into_iter().next() else {
            return false;
        };
        let d = Delivery {
            qos: effective_qos(d.msg.qos, sub.options.qos),
            subscription_ids: sub.id.into_iter().collect(),
            ..d
        };
        self.deliver(&sub.session, d) != EnqueueOutcome::DroppedNew
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, QoS, SubscriptionOptions};
    use crate::ids::{ClientId, SessionKey, TenantId};
    use crate::topic::parse_filter;

    fn session(name: &str) -> Arc<Session> {
        Arc::new(Session::new(
            SessionKey {
                tenant: TenantId::default_tenant(),
                client: ClientId::new(name),
            },
            0,
        ))
    }

    #[test]
    fn one_decoded_payload_is_shared_by_every_delivery() {
        let config = Arc::new(Config::for_tests(std::env::temp_dir()));
        let router = Router::new(config.clone(), Arc::new(Metrics::default()));
        let (a, b) = (session("a"), session("b"));
        for s in [&a, &b] {
            let f = parse_filter("t/#", config.topic_limits()).expect("filter");
            router.subscribe(
                s,
                "t/#",
                &f,
                SubscriptionOptions::new(QoS::AtLeastOnce),
                None,
            );
        }
        let msg = Message::new(
            TenantId::default_tenant(),
            Arc::from("t/x"),
            bytes::Bytes::from(vec![7u8; 1024]),
            QoS::AtLeastOnce,
            false,
            &Properties::default(),
            None,
        );
        let out = router.publish(Arc::new(msg));
        assert_eq!(out.queued, 2);
        let da = a.lock().queue.pop_front().expect("a got it");
        let db = b.lock().queue.pop_front().expect("b got it");
        assert!(Arc::ptr_eq(&da.msg, &db.msg), "one message, not copies");
        assert_eq!(da.msg.payload.as_ptr(), db.msg.payload.as_ptr());
    }
}

/// What one publish did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Sessions the message was queued for.
    pub queued: usize,
    /// Whether some session's queue was full (a message was dropped).
    pub overflowed: bool,
}

impl PublishOutcome {
    fn add(&mut self, e: EnqueueOutcome) {
        match e {
            EnqueueOutcome::Queued => self.queued += 1,
            EnqueueOutcome::DroppedOldest => {
                self.queued += 1;
                self.overflowed = true;
            }
            EnqueueOutcome::DroppedNew => self.overflowed = true,
        }
    }
}
