//! SUBSCRIBE and UNSUBSCRIBE from a connected client, and the gateway
//! grants a session's subscriptions depend on.
//!
//! Each filter is parsed, checked against its tenant (a gateway's
//! `$tenant/<id>/` needs a grant), the subscribe ACL and the store's
//! health, and submitted as `Command::Subscribe` with the session and
//! tenant limits (`state/`); the SUBACK waits for the durable write, and
//! retained messages follow it. A reload that withdraws a grant removes
//! the subscriptions in that tenant (`drop_ungranted`).

use tokio::io::{AsyncRead, AsyncWrite};

use super::inbound::{protocol_error, storage_reason};
use crate::auth::acl::Access;
use crate::codec::{
    reason, Packet, Properties, QoS, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::connection::{Close, Conn};
use crate::message::Delivery;
use crate::persist::Write;
use crate::session::effective_qos;
use crate::state::command::{Applied, Command, Limit, SubscribeLimits};
use crate::tenant::quota::QuotaKind;
use crate::topic::TopicFilter;

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Picks up a changed tenants file; a connection whose tenant was
    /// removed closes (v5: 0x87).
    pub(crate) fn tenant_check(&mut self) -> Result<(), Close> {
        if !self.authz.stale(&self.broker.auth) {
            return Ok(());
        }
        self.authz.refresh(&self.broker.auth);
        if self.authz.removed {
            tracing::info!(tenant = %self.key.tenant, client = %self.key.client, "Tenant removed: closing its connection");
            return Err(Close {
                reason: Some(reason::NOT_AUTHORIZED),
                bad: None,
                detail: "tenant removed".into(),
                will: false,
                why: crate::metrics::Ended::TenantRemoved,
            });
        }
        self.drop_ungranted();
        Ok(())
    }

    /// Removes the session's subscriptions in tenants its principal is no
    /// longer granted (a reload took the grant away, or a session resumed
    /// by a principal without it), so nothing of theirs is delivered.
    pub(crate) fn drop_ungranted(&mut self) {
        let gone: Vec<TopicFilter> = self
            .broker
            .state
            .subscriptions(&self.key)
            .into_iter()
            .filter(|f| f.tenant().is_some_and(|t| !self.authz.granted(t)))
            .collect();
        for filter in gone {
            tracing::info!(client = %self.key.client, filter = filter.as_str(), "Gateway grant withdrawn: subscription removed");
            let r = self.broker.control.submit(Command::Unsubscribe {
                key: self.key.clone(),
                filter,
            });
            if let Err(e) = r.now() {
                tracing::warn!(client = %self.key.client, error = %e, "Gateway subscription not removed");
            }
        }
        // Nor is anything of those tenants still queued or unacknowledged.
        let (authz, home) = (&self.authz, &self.key.tenant);
        self.session
            .lock()
            .purge_tenants(&self.key, |t| t == home || authz.granted(t.as_str()));
    }

    pub(crate) fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        self.tenant_check()?;
        let limits = self.broker.config.topic_limits();
        let max_subs = self.broker.config.max_subscriptions_per_client;
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained: Vec<Delivery> = Vec::new();
        let mut sub_write = Write::None;
        // A durable session's subscriptions must reach the disk; while the
        // store refuses writes, new ones are refused rather than lost later.
        let store_refuses = self.session.lock().persist.is_some()
            && self.broker.persist.health() != porchlight_storage::Health::Ok;
        for (raw, opts) in &s.filters {
            let filter = match TopicFilter::parse(raw, limits) {
                Ok(f) => f,
                Err(e) => {
                    reasons.push(e.0);
                    continue;
                }
            };
            if filter.group().is_some() && opts.no_local {
                return Err(protocol_error("no-local on a shared subscription"));
            }
            // Its tenant: the connection's own, or for a granted gateway
            // the one `$tenant/<id>/` names (refused without the grant).
            let target = match filter.tenant() {
                None => Some(&mut self.authz.home),
                Some(id) => self
                    .authz
                    .target(&self.broker.auth, &self.broker.tenants, id),
            };
            let Some(target) = target else {
                let m = &self.broker.metrics;
                m.inc(&m.acl_denied_subscribe);
                reasons.push(reason::NOT_AUTHORIZED);
                continue;
            };
            if !target.allows(Access::Subscribe, filter.filter(), &self.broker.metrics) {
                // The codec sends 3.1.1 clients 0x80 (failure).
                reasons.push(reason::NOT_AUTHORIZED);
                continue;
            }
            if store_refuses {
                reasons.push(match self.broker.persist.health() {
                    porchlight_storage::Health::Full => reason::QUOTA_EXCEEDED,
                    _ => reason::UNSPECIFIED_ERROR,
                });
                continue;
            }
            // The tenant's maximum QoS: granted lower, as MQTT allows.
            let mut opts = *opts;
            if let Some(max) = target.limits.max_qos.and_then(QoS::from_u8) {
                opts.qos = opts.qos.min(max);
            }
            let tenant = target.tenant.clone();
            let usage = target.usage.clone();
            let shared = filter.group().is_some();
            // The limits travel in the command: the control state counts.
            let limits = SubscribeLimits {
                per_session: u64::try_from(max_subs).ok(),
                tenant: target.limits.max_subscriptions,
            };
            let submitted = self.broker.control.submit(Command::Subscribe {
                key: self.key.clone(),
                filter: filter.clone(),
                options: opts,
                id: sub_id,
                limits,
            });
            let Ok(done) = submitted.now() else {
                reasons.push(reason::UNSPECIFIED_ERROR);
                continue;
            };
            // (Applied in memory even when the write failed.)
            if let Write::Failed(e) = &done.write {
                reasons.push(storage_reason(e));
                continue;
            }
            let existed = match done.applied {
                Applied::Existed(existed) => existed,
                Applied::OverLimit(limit) => {
                    if limit == Limit::Subscriptions {
                        usage.reject(QuotaKind::Subscriptions);
                    }
                    reasons.push(reason::QUOTA_EXCEEDED);
                    continue;
                }
                // The session ended under us (taken over): refuse.
                _ => {
                    reasons.push(reason::UNSPECIFIED_ERROR);
                    continue;
                }
            };
            sub_write = sub_write.and(done.write);
            reasons.push(opts.qos as u8);
            let send_retained = !shared
                && match opts.retain_handling {
                    RetainHandling::SendOnSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for msg in self
                    .broker
                    .state
                    .retained_matching(&tenant, filter.filter())
                {
                    retained.push(Delivery {
                        qos: effective_qos(msg.qos, opts.qos),
                        retain: true,
                        subscription_ids: sub_id.into_iter().collect(),
                        share: None,
                        seq: 0,
                        msg,
                    });
                }
            }
        }
        let properties = match reasons.iter().find(|r| **r >= 0x80) {
            Some(code) => self.problem(*code),
            None => Properties::default(),
        };
        let ticket = match sub_write {
            Write::Pending(t) => Some(t),
            _ => None,
        };
        self.send_after(
            ticket,
            Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                reasons,
                properties,
            }),
        );
        // Retained messages follow the SUBACK.
        for d in retained {
            self.broker.router.deliver(&self.session, d);
        }
        Ok(())
    }

    pub(crate) fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let limits = self.broker.config.topic_limits();
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut unsub_write = Write::None;
        for raw in &u.filters {
            match TopicFilter::parse(raw, limits) {
                Ok(filter) => {
                    let submitted = self.broker.control.submit(Command::Unsubscribe {
                        key: self.key.clone(),
                        filter,
                    });
                    reasons.push(match submitted.now() {
                        Ok(done) => {
                            unsub_write = unsub_write.and(done.write);
                            match done.applied {
                                Applied::Existed(true) => reason::SUCCESS,
                                _ => reason::NO_SUBSCRIPTION_EXISTED,
                            }
                        }
                        Err(_) => reason::UNSPECIFIED_ERROR,
                    });
                }
                Err(e) => reasons.push(e.0),
            }
        }
        let ticket = match unsub_write {
            Write::Pending(t) => Some(t),
            _ => None,
        };
        self.send_after(
            ticket,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reasons,
                properties: Properties::default(),
            }),
        );
        Ok(())
    }
}
