//! The router: from one published [`Message`] to a delivery in every
//! matching session's queue.
//!
//! `publish` updates the retained store (RETAIN flag only), asks the trie
//! for matches, merges overlapping subscriptions of one session into a
//! single delivery (highest granted QoS, every subscription identifier, as
//! MQTT 3.1.1 section 3.3.5 and MQTT 5 section 3.3.4 allow), honours
//! no-local, and pushes each delivery into its session (`session/mod.rs`),
//! which wakes the connection. No global lock: the trie locks per node and
//! each session has its own mutex.
//!
//! Subscriptions and retained messages change through `state/mod.rs` commands;
//! the router only reads them (and applies `Retain` for RETAIN publishes).

use std::sync::Arc;

use crate::codec::{reason, QoS};
use crate::ids::SessionId;
use crate::message::{Delivery, Message, ShareRef};
use crate::metrics::{DropReason, Metrics};
use crate::persist::Write;
use crate::session::sweeper::Due;
use crate::session::{effective_qos, EnqueueOutcome, QueueLimits, Session};
use crate::state::command::{Applied, Command, RetainChange, RetainLimits, Retained};
use crate::state::trie::{Matches, Subscriber};
use crate::state::{Control, State};
use crate::tenant::quota::{QuotaKind, StateLimits};
use porchlight_storage::Health;

/// Matches from which a publish's deliveries are queued off the runtime's
/// worker (`tokio::task::block_in_place`).
const LARGE_FANOUT: usize = 1024;

#[derive(Debug)]
pub struct Router {
    /// Every session queue's bounds; `backpressure`: whether publisher
    /// flow control is on (`--publish-backpressure-ms`).
    queue: QueueLimits,
    metrics: Arc<Metrics>,
    state: Arc<State>,
    /// Where a RETAIN publish's `Command::Retain` goes.
    control: Arc<dyn Control>,
}

impl Router {
    pub fn new(
        queue: QueueLimits,
        metrics: Arc<Metrics>,
        state: Arc<State>,
        control: Arc<dyn Control>,
    ) -> Router {
        Router {
            queue,
            metrics,
            state,
            control,
        }
    }

    /// Routes `msg` to every matching session.
    pub fn publish(&self, msg: Arc<Message>) -> PublishOutcome {
        let mut out = PublishOutcome::default();
        let m = self.state.matches(&msg.tenant, &msg.topic);
        // A QoS 1/2 message that needs durability (retained, or queued for
        // a durable session) is refused whole while the store refuses
        // writes: better than delivering it to some and failing the ack.
        if msg.qos != QoS::AtMostOnce {
            if let Some(code) = self.refusal(&msg, &m) {
                out.refused = Some(code);
                return out;
            }
        }
        // At `--max-queued-memory`, nothing more is queued for offline
        // sessions (whose queues nobody drains): a QoS 1/2 message that
        // would be is refused whole (0x97; the publisher may retry), a QoS 0
        // one skips them (counted). Connected sessions' queues are bounded
        // by flow control and still take it.
        let memory = self.state.queue_memory();
        let full = memory.is_full();
        if full && msg.qos != QoS::AtMostOnce && m.any_offline() {
            memory.refuse();
            out.refused = Some(reason::QUOTA_EXCEEDED);
            return out;
        }
        if msg.retain {
            let usage = self.state.tenants().usage(&msg.tenant);
            let limits = RetainLimits {
                messages: StateLimits::get(&usage.state_limits.retained_messages),
                bytes: StateLimits::get(&usage.state_limits.retained_bytes),
            };
            let submitted = self.control.submit(Command::Retain {
                message: Retained::new(msg.clone()),
                limits,
            });
            let done = match submitted.now() {
                Ok(done) => done,
                Err(e) => {
                    // Not retained, so not published: the publisher may
                    // retry without a duplicate delivery.
                    tracing::warn!(topic = %msg.topic, error = %e, "Retained publish refused");
                    out.refused = Some(reason::UNSPECIFIED_ERROR);
                    return out;
                }
            };
            // Over the tenant's retained limits: refused whole, so a
            // publisher told 0x97 can retry without a duplicate delivery.
            if let Applied::OverLimit(limit) = done.applied {
                let kind = crate::state::quota_kind(limit);
                usage.reject(kind);
                out.quota = Some(kind);
                return out;
            }
            out.write = std::mem::replace(&mut out.write, Write::None).and(done.write);
        }
        // A large fan-out takes milliseconds, and may wait on the store's
        // barrier while a group commit writes: off the runtime's worker, so
        // the other tasks queued on it (unrelated clients) move to another.
        let large = m.direct.len() + m.shared.len() >= LARGE_FANOUT;
        if large {
            crate::route::off_worker(|| self.deliver_all(&msg, m, full, &mut out));
        } else {
            self.deliver_all(&msg, m, full, &mut out);
        }
        out
    }

    /// Removes the retained message of `topic` (an operator's delete: an
    /// empty retained message through the control state, delivered to
    /// nobody). Whether there was one; done once its removal is durable.
    pub async fn delete_retained(
        &self,
        tenant: crate::ids::TenantId,
        topic: crate::topic::TopicName,
    ) -> Result<bool, crate::state::ControlError> {
        let empty = Message::new(
            tenant,
            topic,
            bytes::Bytes::new(),
            QoS::AtMostOnce,
            true,
            &crate::codec::Properties::default(),
            None,
        );
        let done = self
            .control
            .submit(Command::Retain {
                message: Retained::new(Arc::new(empty)),
                limits: RetainLimits::default(),
            })
            .await?;
        if let Write::Pending(t) = done.write {
            if let Some(p) = self.state.persist() {
                let _ = p.store().durable(t).await;
            }
        }
        Ok(done.applied == Applied::Retained(RetainChange::Removed))
    }

    /// Queues `msg` for every match; at the node's queued-memory bound
    /// (`full`) offline sessions are skipped.
    fn deliver_all(
        &self,
        msg: &Arc<Message>,
        mut m: Matches,
        full: bool,
        out: &mut PublishOutcome,
    ) {
        // Only QoS 0 skips offline sessions: a QoS 1/2 message was refused
        // before (`publish`), and one whose session went offline since is
        // queued as usual, never dropped after its publisher is answered.
        let skip_offline = full && msg.qos == QoS::AtMostOnce;
        // Merge overlapping subscriptions: sort by session, fold runs.
        m.direct.sort_unstable_by_key(|s| s.session.id);
        let mut current: Option<(Arc<Session>, Delivery)> = None;
        // Sorted by session: overlapping subscriptions of one skipped
        // session are one drop.
        let mut skipped = None;
        for sub in m.direct {
            if skip_offline && !sub.session.is_online() {
                if skipped != Some(sub.session.id) {
                    skipped = Some(sub.session.id);
                    self.skipped_at_memory_bound(&sub.session);
                }
                continue;
            }
            if sub.options.no_local
                && msg
                    .publisher
                    .as_ref()
                    .is_some_and(|p| *p == sub.session.key)
            {
                continue;
            }
            let qos = effective_qos(msg.qos, sub.options.qos);
            let retain = sub.options.retain_as_published && msg.retain;
            match &mut current {
                Some((s, d)) if s.id == sub.session.id => {
                    d.qos = d.qos.max(qos);
                    d.retain |= retain;
                    if let Some(id) = sub.id {
                        // Overlapping subscriptions of one session: rare.
                        let ids = d.subscription_ids.iter().copied().chain([id]);
                        d.subscription_ids = ids.collect();
                    }
                }
                _ => {
                    if let Some((s, d)) = current.take() {
                        self.deliver_to(out, &s, d);
                    }
                    let d = Delivery {
                        msg: msg.clone(),
                        qos,
                        retain,
                        subscription_ids: sub.id.into_iter().collect(),
                        share: None,
                        seq: 0,
                    };
                    current = Some((sub.session, d));
                }
            }
        }
        if let Some((s, d)) = current.take() {
            self.deliver_to(out, &s, d);
        }
        for (sub, share) in m.shared {
            if skip_offline && !sub.session.is_online() {
                self.skipped_at_memory_bound(&sub.session);
                continue;
            }
            let d = Delivery {
                msg: msg.clone(),
                qos: effective_qos(msg.qos, sub.options.qos),
                retain: sub.options.retain_as_published && msg.retain,
                subscription_ids: sub.id.into_iter().collect(),
                share: Some(share),
                seq: 0,
            };
            self.deliver_to(out, &sub.session, d);
        }
    }

    /// Counts a QoS 0 message not queued for an offline session at the
    /// node's queued-memory bound.
    fn skipped_at_memory_bound(&self, session: &Session) {
        self.state.queue_memory().refuse();
        session.dropped(&self.metrics, DropReason::QueueMemory);
    }

    /// Queues one delivery of a publish and notes, for the publisher, the
    /// first session whose queue asks it to wait.
    /// Only a QoS 1/2 delivery makes its publisher wait: a QoS 0 one is
    /// dropped first from a full queue, so holding its publisher saves
    /// nothing.
    fn deliver_to(&self, out: &mut PublishOutcome, session: &Arc<Session>, d: Delivery) {
        let flow_controlled = d.qos != QoS::AtMostOnce;
        out.add(self.enqueue(session, d));
        if out.full.is_none() && flow_controlled && session.backpressures() {
            out.full = Some(session.clone());
        }
    }

    /// The reason code to refuse `msg` with, if it needs durable writes the
    /// store will not take now.
    fn refusal(&self, msg: &Message, m: &Matches) -> Option<u8> {
        let health = self.state.persist()?.health();
        if health == Health::Ok {
            return None;
        }
        let durable = |s: &Subscriber| s.session.lock().persist.is_some();
        let needs =
            msg.retain || m.direct.iter().any(durable) || m.shared.iter().any(|(s, _)| durable(s));
        needs.then_some(match health {
            Health::Full => reason::QUOTA_EXCEEDED,
            _ => reason::UNSPECIFIED_ERROR,
        })
    }

    /// Queues one delivery, counting overflow drops.
    pub fn deliver(&self, session: &Arc<Session>, d: Delivery) -> (EnqueueOutcome, Write) {
        let (outcome, write, _) = self.enqueue(session, d);
        (outcome, write)
    }

    /// [`Router::deliver`], and whether it woke an idle connection.
    fn enqueue(&self, session: &Arc<Session>, d: Delivery) -> (EnqueueOutcome, Write, bool) {
        let expires = d.msg.expires_at;
        let backpressure =
            self.queue.backpressure && d.qos != QoS::AtMostOnce && session.accepts_backpressure();
        let (outcome, write, woke) = session.enqueue(
            d,
            QueueLimits {
                backpressure,
                ..self.queue
            },
        );
        // An offline session does not pump: the sweeper purges what expires
        // in its queue (an online one drops expired messages as it sends).
        if let (Some(at), false, EnqueueOutcome::Queued | EnqueueOutcome::DroppedOldest(_)) =
            (expires, session.is_online(), outcome)
        {
            self.state.sweeper().at(
                at,
                Due::QueuedMessage {
                    session: Arc::downgrade(session),
                },
            );
        }
        match outcome {
            EnqueueOutcome::Queued => {}
            EnqueueOutcome::DroppedOldest(n) => {
                for _ in 0..n {
                    session.dropped(&self.metrics, DropReason::QueueFull);
                }
            }
            EnqueueOutcome::DroppedNew => session.dropped(&self.metrics, DropReason::QueueFull),
            EnqueueOutcome::NotDurable => session.dropped(&self.metrics, DropReason::NotDurable),
            EnqueueOutcome::OverTenantQuota => {
                session.dropped(&self.metrics, DropReason::TenantQuota)
            }
        }
        (outcome, write, woke)
    }

    /// Hands an unacknowledged shared-subscription delivery to another
    /// member of its group. False if the group has no other member.
    pub fn redispatch_shared(&self, d: Delivery, share: &ShareRef, leaving: SessionId) -> bool {
        let tenant = d.msg.tenant.clone();
        let m = self.state.matches(&tenant, &d.msg.topic);
        let mut candidates: Vec<Subscriber> = Vec::new();
        for (sub, s) in m.shared {
            if *s == *share && sub.session.id != leaving {
                candidates.push(sub);
            }
        }
        // `matches` chose one member per group; if it chose the leaving
        // session, look for any other member through a second round.
        if candidates.is_empty() {
            let again = self.state.matches(&tenant, &d.msg.topic);
            candidates.extend(
                again
                    .shared
                    .into_iter()
                    .filter(|(sub, s)| **s == *share && sub.session.id != leaving)
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
        matches!(
            self.deliver(&sub.session, d).0,
            EnqueueOutcome::Queued | EnqueueOutcome::DroppedOldest(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, QoS, SubscriptionOptions};
    use crate::config::Config;
    use crate::ids::{ClientId, SessionKey, TenantId};
    use crate::topic::{TopicFilter, TopicName};

    fn key(name: &str) -> SessionKey {
        SessionKey {
            tenant: TenantId::default_tenant(),
            client: ClientId::new(name),
        }
    }

    fn router() -> (Router, Arc<State>, Arc<Config>) {
        let config = Arc::new(Config::for_tests(std::env::temp_dir()));
        let metrics = Arc::new(Metrics::default());
        let state = Arc::new(State::new(metrics.clone(), None));
        (
            Router::new(
                QueueLimits {
                    backpressure: config.publish_backpressure.is_some(),
                    ..config.queue_limits()
                },
                metrics,
                state.clone(),
                Arc::new(crate::state::LocalControl::new(state.clone())),
            ),
            state,
            config,
        )
    }

    /// A session `name` subscribed to `filter`.
    fn subscribed(
        state: &State,
        config: &Config,
        name: &str,
        filter: &str,
        qos: QoS,
    ) -> Arc<Session> {
        let done = state.apply_next(Command::Connect {
            key: key(name),
            clean_start: true,
            expiry_interval: 0,
            user: None,
            max_persistent: None,
        });
        assert!(matches!(done.applied, Applied::Connected { .. }));
        state.apply_next(Command::Subscribe {
            key: key(name),
            filter: TopicFilter::parse(filter, config.topic_limits()).expect("filter"),
            options: SubscriptionOptions::new(qos),
            id: None,
            limits: Default::default(),
        });
        state.session(&key(name)).expect("session")
    }

    fn message(topic: &str, payload: bytes::Bytes, qos: QoS) -> Arc<Message> {
        Arc::new(Message::new(
            TenantId::default_tenant(),
            TopicName::trusted(topic.into()),
            payload,
            qos,
            false,
            &Properties::default(),
            None,
        ))
    }

    #[test]
    fn one_decoded_payload_is_shared_by_every_delivery() {
        let (router, state, config) = router();
        let sessions: Vec<_> = ["a", "b"]
            .iter()
            .map(|name| subscribed(&state, &config, name, "t/#", QoS::AtLeastOnce))
            .collect();
        let msg = message("t/x", bytes::Bytes::from(vec![7u8; 1024]), QoS::AtLeastOnce);
        let out = router.publish(msg);
        assert_eq!(out.queued, 2);
        let da = sessions[0].lock().queue.pop_front().expect("a got it");
        let db = sessions[1].lock().queue.pop_front().expect("b got it");
        assert!(Arc::ptr_eq(&da.msg, &db.msg), "one message, not copies");
        assert_eq!(da.msg.payload.as_ptr(), db.msg.payload.as_ptr());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_fan_out_is_queued_off_the_worker_and_whole() {
        // At LARGE_FANOUT matches and more, deliveries are queued inside
        // `block_in_place` (on a multi-threaded runtime, as the binary
        // runs): every session still gets the message once.
        let (router, state, config) = router();
        let n = LARGE_FANOUT + 76;
        let sessions: Vec<_> = (0..n)
            .map(|i| subscribed(&state, &config, &format!("s{i}"), "big/#", QoS::AtLeastOnce))
            .collect();
        let out = router.publish(message(
            "big/x",
            bytes::Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
        ));
        assert_eq!(out.queued, n);
        assert!(sessions.iter().all(|s| s.lock().queue.len() == 1));
    }

    #[test]
    fn at_the_memory_bound_only_qos0_skips_offline_sessions() {
        // A QoS 1 message is refused before routing when it would queue
        // for an offline session; one whose subscriber went offline after
        // that check must still be queued, not skipped after its PUBACK.
        let (router, state, config) = router();
        let session = subscribed(&state, &config, "off", "t", QoS::AtLeastOnce);
        for (qos, queued) in [(QoS::AtLeastOnce, 1), (QoS::AtMostOnce, 0)] {
            let msg = message("t", bytes::Bytes::from_static(b"x"), qos);
            let m = state.matches(&msg.tenant, &msg.topic);
            let mut out = PublishOutcome::default();
            router.deliver_all(&msg, m, true, &mut out);
            assert_eq!(out.queued, queued, "{qos:?}");
        }
        assert_eq!(session.lock().queue.len(), 1);
    }

    #[test]
    fn a_qos0_message_skipping_an_offline_session_is_one_drop_however_many_filters_match() {
        let (router, state, config) = router();
        let session = subscribed(&state, &config, "off", "t/#", QoS::AtMostOnce);
        state.apply_next(Command::Subscribe {
            key: key("off"),
            filter: TopicFilter::parse("t/+", config.topic_limits()).expect("filter"),
            options: SubscriptionOptions::new(QoS::AtMostOnce),
            id: None,
            limits: Default::default(),
        });
        let msg = message("t/x", bytes::Bytes::from_static(b"x"), QoS::AtMostOnce);
        let m = state.matches(&msg.tenant, &msg.topic);
        assert_eq!(m.direct.len(), 2);
        router.deliver_all(&msg, m, true, &mut PublishOutcome::default());
        assert_eq!(router.metrics.dropped_count(DropReason::QueueMemory), 1);
        assert_eq!(state.queue_memory().refused(), 1);
        assert!(session.lock().queue.is_empty());
    }

    #[test]
    fn a_publish_says_when_it_woke_an_idle_connection() {
        let (router, state, config) = router();
        let session = subscribed(&state, &config, "s", "t", QoS::AtMostOnce);
        let publish = || {
            router.publish(message(
                "t",
                bytes::Bytes::from_static(b"x"),
                QoS::AtMostOnce,
            ))
        };
        // Offline: nobody to wake.
        assert!(!publish().woke);
        session.lock().queue.clear();
        session.set_online(true);
        // Online with an empty queue: its connection was waiting.
        assert!(publish().woke);
        // The queue is not empty now: the connection is already awake.
        let again = publish();
        assert_eq!(again.queued, 1);
        assert!(!again.woke);
    }
}

/// What one publish did.
#[derive(Debug)]
pub struct PublishOutcome {
    /// Sessions the message was queued for.
    pub queued: usize,
    /// Whether some session's queue was full (a message was dropped).
    pub overflowed: bool,
    /// Whether a delivery went into the empty queue of a connected
    /// session, waking its connection.
    pub woke: bool,
    /// A connected session whose queue is past its bound under flow
    /// control: the publisher waits for it to drain (`connection/mod.rs`).
    pub full: Option<Arc<Session>>,
    /// The durable writes made for it (queues of durable sessions, the
    /// retained store): its PUBACK/PUBREC waits for them.
    pub write: Write,
    /// Not routed at all: the store refuses the writes it needs (the
    /// reason code for the PUBACK/PUBREC).
    pub refused: Option<u8>,
    /// Not routed at all: a retained message over its tenant's retained
    /// limits.
    pub quota: Option<QuotaKind>,
}

impl Default for PublishOutcome {
    fn default() -> Self {
        PublishOutcome {
            queued: 0,
            overflowed: false,
            woke: false,
            full: None,
            write: Write::None,
            refused: None,
            quota: None,
        }
    }
}

impl PublishOutcome {
    fn add(&mut self, (e, write, woke): (EnqueueOutcome, Write, bool)) {
        self.woke |= woke;
        self.write = std::mem::replace(&mut self.write, Write::None).and(write);
        match e {
            EnqueueOutcome::Queued => self.queued += 1,
            EnqueueOutcome::DroppedOldest(_) => {
                self.queued += 1;
                self.overflowed = true;
            }
            EnqueueOutcome::DroppedNew | EnqueueOutcome::OverTenantQuota => self.overflowed = true,
            EnqueueOutcome::NotDurable => {}
        }
    }
}
