//! Packets from a connected client: the protocol state machine for
//! everything after CONNECT.
//!
//! PUBLISH is validated (topic alias, topic name, payload format, receive
//! maximum), turned into a shared [`Message`] and handed to the router;
//! its acknowledgement (PUBACK/PUBREC) is appended to the output buffer in
//! the same batch. SUBSCRIBE/UNSUBSCRIBE are `subscribe.rs`'s.
//! Acknowledgements from the client advance
//! the outgoing state machines in the session. A protocol violation
//! returns a [`Close`] with the reason code; `connection/mod.rs` closes.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::acl::Access;
use crate::auth::Target;
use crate::codec::{reason, Ack, Packet, Properties, Publish, QoS};
use crate::connection::{Close, Conn};
use crate::message::Message;
use crate::metrics::{BadPacket, DropReason, Ended};
use crate::persist::Write;
use crate::session::OutState;
use crate::tenant::quota::{QuotaKind, Rate};
use crate::topic::TopicName;

/// Closing a connection whose next packet promises a write the store
/// refused (3.1.1 has no other way to say it; for PUBREL/PUBCOMP v5 has no
/// fitting reason code either). The client retries after reconnecting.
pub(crate) fn durable_write_failed() -> Close {
    Close {
        reason: Some(reason::UNSPECIFIED_ERROR),
        bad: None,
        detail: "a write this answer promises could not be made durable".into(),
        will: true,
        why: Ended::Refused,
    }
}

/// The queue position whose stored body an in-flight entry still uses.
fn queue_seq_of(f: Option<crate::session::Inflight>) -> u64 {
    match f.map(|f| f.state) {
        Some(OutState::AwaitingAck(d)) => d.seq,
        _ => 0,
    }
}

/// The reason code for a refused durable write: quota when the store is
/// at `--max-disk-bytes`, unspecified for an I/O failure.
pub(crate) fn storage_reason(e: &porchlight_storage::StorageError) -> u8 {
    match e {
        porchlight_storage::StorageError::Full { .. } => reason::QUOTA_EXCEEDED,
        _ => reason::UNSPECIFIED_ERROR,
    }
}

pub(crate) fn protocol_error(detail: &'static str) -> Close {
    Close::protocol(reason::PROTOCOL_ERROR, BadPacket::ProtocolError, detail)
}

/// Takes one publish of `bytes` from the target tenant's and the
/// connection's rates; when one is spent, how long until it allows more.
/// MQTT 5 publishes over a rate are refused and take nothing (`force`
/// false); 3.1.1 ones cannot be refused, so they are taken as debt and the
/// connection waits it out.
fn take_publish_rate(
    conn_rate: &Rate,
    target: &Target,
    bytes: usize,
    force: bool,
) -> Option<std::time::Duration> {
    let (limits, usage) = (&target.limits, &target.usage);
    let take = |rate: &Rate, n: u64, per_second: u64| {
        if force {
            rate.force(n, per_second)
        } else {
            rate.take(n, per_second)
        }
    };
    let checks = [
        (
            conn_rate,
            limits.max_messages_per_connection_per_second.map(u64::from),
            1,
            QuotaKind::ConnectionMessages,
        ),
        (
            &usage.messages_in_rate,
            limits.max_messages_in_per_second.map(u64::from),
            1,
            QuotaKind::MessagesIn,
        ),
        (
            &usage.bytes_in_rate,
            limits.max_bytes_in_per_second,
            bytes as u64,
            QuotaKind::BytesIn,
        ),
    ];
    let mut wait = None;
    for (rate, limit, n, kind) in checks {
        let Some(per_second) = limit else { continue };
        if let Err(w) = take(rate, n, per_second) {
            usage.reject(kind);
            wait = Some(wait.map_or(w, |x: std::time::Duration| x.max(w)));
            if !force {
                break;
            }
        }
    }
    wait
}

/// A PUBLISH that passed its checks, and what routing it needs.
struct AdmittedPublish {
    /// Its topic in its tenant (a gateway's `$tenant/<id>/` split off).
    topic: TopicName,
    tenant: crate::ids::TenantId,
    /// For a retained message refused by its tenant's retained quota.
    retain_usage: Option<Arc<crate::tenant::quota::Usage>>,
    /// `SUCCESS`, or why it is acknowledged without routing.
    code: u8,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Handles one decoded packet.
    pub fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                self.on_puback(a.packet_id);
                Ok(())
            }
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubRel(a) => self.on_pubrel(a.packet_id),
            Packet::PubComp(a) => {
                self.on_pubcomp(a.packet_id);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d.reason, &d.properties),
            Packet::Connect(_) => Err(protocol_error("second CONNECT")),
            Packet::Auth(_) => Err(protocol_error("AUTH without an authentication method")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(protocol_error("server-to-client packet sent by a client"))
            }
        }
    }

    fn on_disconnect(&mut self, code: u8, props: &Properties) -> Result<(), Close> {
        if let Some(expiry) = props.session_expiry_interval {
            if self.connect_expiry_zero && expiry != 0 {
                return Err(protocol_error("session expiry set on DISCONNECT after 0"));
            }
            let expiry = expiry.min(self.broker.config.max_session_expiry);
            self.broker
                .registry
                .set_expiry(&self.key, self.claim, expiry);
        }
        Err(Close {
            reason: None,
            bad: None,
            detail: "client sent DISCONNECT".into(),
            // Only DISCONNECT 0x00 discards the will (MQTT-3.14.4-3).
            will: code != reason::SUCCESS,
            why: Ended::ClientDisconnect,
        })
    }

    /// Resolves and validates the topic of a PUBLISH, applying MQTT 5
    /// topic aliases (an aliased topic was validated when it was set).
    fn resolve_topic(&mut self, p: &Publish) -> Result<TopicName, Close> {
        let alias = match p.properties.topic_alias {
            None if p.topic.is_empty() => {
                return Err(protocol_error("empty topic without topic alias"))
            }
            None => None,
            Some(alias) if alias > self.broker.config.topic_alias_maximum => {
                return Err(Close::protocol(
                    reason::TOPIC_ALIAS_INVALID,
                    BadPacket::TopicAliasInvalid,
                    "topic alias above the maximum",
                ));
            }
            // The decoder refuses alias 0, so this cannot underflow.
            Some(alias) => Some(usize::from(alias - 1)),
        };
        if let (Some(idx), true) = (alias, p.topic.is_empty()) {
            return self
                .topic_aliases
                .get(idx)
                .cloned()
                .flatten()
                .ok_or_else(|| protocol_error("unknown topic alias"));
        }
        let topic = TopicName::new(&p.topic, self.broker.config.topic_limits()).map_err(|e| {
            Close::protocol(
                e.0,
                BadPacket::ProtocolError,
                "invalid topic name in PUBLISH",
            )
        })?;
        if let Some(idx) = alias {
            if self.topic_aliases.len() <= idx {
                self.topic_aliases.resize(idx + 1, None);
            }
            self.topic_aliases[idx] = Some(topic.clone());
        }
        Ok(topic)
    }

    /// A PUBLISH: its topic, then `admit_publish` (tenant, quotas, rate,
    /// exactly-once, Receive Maximum, ACL, payload format), `route_publish`
    /// (the router, the QoS 2 id, flow control) and `acknowledge_durably`.
    fn on_publish(&mut self, mut p: Publish) -> Result<(), Close> {
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(protocol_error(
                "subscription identifier in a client PUBLISH",
            ));
        }
        let topic = self.resolve_topic(&p)?;
        let Some(admitted) = self.admit_publish(&p, topic)? else {
            return Ok(());
        };
        let (code, write) = if admitted.code == reason::SUCCESS {
            let payload = std::mem::take(&mut p.payload);
            self.route_publish(&p, payload, admitted)?
        } else {
            (admitted.code, Write::None)
        };
        self.acknowledge_durably(&p, code, write)
    }

    /// Everything a PUBLISH must pass before it is routed, in order. `None`
    /// when it was answered already (denied tenant, a QoS 2 retransmission,
    /// a rate-limited QoS 0 message); otherwise the code it has so far.
    fn admit_publish(
        &mut self,
        p: &Publish,
        topic: TopicName,
    ) -> Result<Option<AdmittedPublish>, Close> {
        let v5 = self.protocol.is_v5();
        let metrics = self.broker.metrics.clone();
        metrics.inc(&metrics.messages_received);
        self.tenant_check()?;
        // A gateway addresses another tenant as `$tenant/<id>/<topic>`:
        // the message is that tenant's, under its quotas and ACL. Without
        // a grant the prefix is refused like a denied topic.
        let (topic, target, gateway) = match crate::topic::split_tenant(&topic) {
            None => (topic, Some(&mut self.authz.home), false),
            Some(Ok((id, rest))) => {
                let rest = TopicName::trusted(rest.to_owned());
                let target = self
                    .authz
                    .target(&self.broker.auth, &self.broker.tenants, id);
                (rest, target, true)
            }
            Some(Err(e)) => {
                return Err(Close::protocol(
                    e.0,
                    BadPacket::ProtocolError,
                    "malformed $tenant/ prefix in PUBLISH",
                ))
            }
        };
        let Some(target) = target else {
            metrics.inc(&metrics.acl_denied_publish);
            self.acknowledge(p.qos, p.packet_id, reason::NOT_AUTHORIZED, None);
            return Ok(None);
        };
        let usage = &target.usage;
        usage.received(p.qos as usize, p.payload.len() as u64);
        if target.limits.max_qos.is_some_and(|max| p.qos as u8 > max) {
            usage.reject(QuotaKind::Qos);
            if gateway {
                // CONNACK told the gateway its own tenant's Maximum QoS,
                // not this one's: refuse the message, keep the connection.
                self.acknowledge(p.qos, p.packet_id, reason::QUOTA_EXCEEDED, None);
                return Ok(None);
            }
            return Err(Close::protocol(
                reason::QOS_NOT_SUPPORTED,
                BadPacket::ProtocolError,
                "QoS above the tenant's maximum",
            ));
        }
        let over_rate = take_publish_rate(&self.conn_rate, target, p.payload.len(), !v5);

        // Exactly-once: a QoS 2 packet id still awaiting PUBREL is a
        // retransmission and is not routed again.
        if p.qos == QoS::ExactlyOnce && self.session.lock().incoming_qos2.contains(&p.packet_id) {
            // The first copy's writes may still be on their way to disk.
            let ticket = self
                .session
                .lock()
                .persist
                .as_ref()
                .map(|p| p.store().current_ticket());
            self.send_after(
                ticket,
                Packet::PubRec(Ack::new(p.packet_id, reason::SUCCESS)),
            );
            return Ok(None);
        }
        // Receive Maximum (an MQTT 5 notion; 3.1.1 clients are bound by
        // their packet ids): QoS 1 acknowledgements still held for the disk
        // and QoS 2 ids awaiting PUBREL.
        if v5 && p.qos != QoS::AtMostOnce {
            let unacked = self.pending_pubacks + self.session.lock().incoming_qos2.len();
            if unacked >= usize::from(self.broker.config.receive_maximum) {
                return Err(Close::protocol(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    BadPacket::ReceiveMaximumExceeded,
                    "receive maximum exceeded",
                ));
            }
        }

        let mut code = reason::SUCCESS;
        if let Some(wait) = over_rate {
            if v5 {
                // Refused: a QoS 1/2 publisher hears 0x96; QoS 0 is
                // dropped (counted by kind in the tenant's metrics).
                if p.qos == QoS::AtMostOnce {
                    metrics.dropped(DropReason::RateLimited);
                    target.usage.dropped(DropReason::RateLimited);
                    return Ok(None);
                }
                code = reason::MESSAGE_RATE_TOO_HIGH;
            } else {
                // 3.1.1 cannot refuse: this one goes through and the
                // connection is not read until the rate allows more.
                self.throttle = Some(tokio::time::Instant::now() + wait);
            }
        }
        let denied = code == reason::SUCCESS
            && (topic.is_reserved()
                || !target.allows(Access::Publish, topic.as_str(), &self.broker.metrics));
        if denied {
            // v5 hears 0x87; 3.1.1 has no way to say it: the message is
            // dropped (counted in porchlight_acl_denied_total) and the
            // acknowledgement sent as usual, as Mosquitto does.
            code = reason::NOT_AUTHORIZED;
        } else if code == reason::SUCCESS
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            if p.qos == QoS::AtMostOnce && v5 {
                return Err(Close::protocol(
                    reason::PAYLOAD_FORMAT_INVALID,
                    BadPacket::ProtocolError,
                    "payload is not UTF-8 as its format indicator says",
                ));
            }
            code = reason::PAYLOAD_FORMAT_INVALID;
        }
        let tenant = target.tenant.clone();
        // For a retained message refused by its tenant's retained quota.
        let retain_usage = p.retain.then(|| target.usage.clone());

        Ok(Some(AdmittedPublish {
            topic,
            tenant,
            retain_usage,
            code,
        }))
    }

    /// Routes an admitted PUBLISH; the code for its acknowledgement and the
    /// durable writes it waits for.
    fn route_publish(
        &mut self,
        p: &Publish,
        payload: bytes::Bytes,
        a: AdmittedPublish,
    ) -> Result<(u8, Write), Close> {
        let v5 = self.protocol.is_v5();
        let AdmittedPublish {
            topic,
            tenant,
            retain_usage,
            mut code,
        } = a;
        let msg = Arc::new(Message::new(
            tenant,
            topic,
            payload,
            p.qos,
            p.retain,
            &p.properties,
            Some(self.key.clone()),
        ));
        let qos2 = p.qos == QoS::ExactlyOnce;
        let (router, session, key, packet_id) = (
            self.broker.router.clone(),
            self.session.clone(),
            self.key.clone(),
            p.packet_id,
        );
        // Route, and for QoS 2 remember the packet id: for a durable
        // session both are deferred under one barrier guard, so they
        // reach the disk in the same atomic batch (a retransmit after a
        // crash is then either routed once or recognised).
        let route = move || {
            let outcome = router.publish(msg);
            let mut incoming = Write::None;
            // (A v5 publish refused for the retained quota ends with
            // its PUBREC; 3.1.1 goes on to PUBREL as if accepted.)
            if qos2 && outcome.refused.is_none() && !(v5 && outcome.quota.is_some()) {
                let mut st = session.lock();
                st.incoming_qos2.insert(packet_id);
                if let Some(persist) = &st.persist {
                    incoming = Write::from_result(persist.incoming(&key, packet_id, true));
                }
            }
            (outcome, incoming)
        };
        let durable_qos2 = qos2 && self.session.lock().persist.is_some();
        let ((outcome, incoming), outer) = if durable_qos2 {
            let (r, t) = self.broker.persist.store().defer(route);
            (r, Write::Pending(t))
        } else {
            (route(), Write::None)
        };
        if outcome.quota.is_some() {
            // Over the tenant's retained limits (counted there): v5
            // QoS 1/2 hears 0x97; QoS 0 and 3.1.1 cannot, so the
            // message is dropped (counted in the message's tenant).
            if v5 && p.qos != QoS::AtMostOnce {
                code = reason::QUOTA_EXCEEDED;
            } else {
                let m = &self.broker.metrics;
                m.dropped(DropReason::TenantQuota);
                if let Some(u) = &retain_usage {
                    u.dropped(DropReason::TenantQuota);
                }
            }
        } else if let Some(refused) = outcome.refused {
            if !v5 && p.qos != QoS::AtMostOnce {
                // 3.1.1 has no reason codes: the connection is closed.
                return Err(Close::quiet(
                    "publish refused (store or queued memory full)",
                    true,
                    Ended::Refused,
                ));
            }
            code = refused;
        } else if outcome.queued == 0 && !outcome.overflowed {
            code = reason::NO_MATCHING_SUBSCRIBERS;
        }
        self.overflowed |= outcome.overflowed;
        self.woke_subscriber |= outcome.woke;
        self.routed += outcome.queued;
        // Flow control: stop reading this client until the subscriber
        // queue it filled drains (not our own queue: we drain it).
        if let (Some(full), Some(limit)) = (outcome.full, self.broker.config.publish_backpressure) {
            if !Arc::ptr_eq(&full, &self.session) {
                let m = &self.broker.metrics;
                m.inc(&m.backpressure_waits);
                self.backpressure = Some(crate::connection::Backpressure::new(full, limit));
            }
        }
        let mut write = outcome.write.and(incoming);
        if !matches!(write, Write::Failed(_)) {
            write = write.and(outer);
        }
        Ok((code, write))
    }

    /// The acknowledgement promises durability: it waits for the writes,
    /// and a write that was refused turns it into a failure.
    fn acknowledge_durably(
        &mut self,
        p: &Publish,
        mut code: u8,
        write: Write,
    ) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        let ticket = match write {
            Write::None => None,
            Write::Pending(t) => Some(t),
            Write::Failed(e) if p.qos != QoS::AtMostOnce => {
                if !v5 {
                    return Err(Close::quiet("durable write refused", true, Ended::Refused));
                }
                code = storage_reason(&e);
                if p.qos == QoS::ExactlyOnce {
                    self.session.lock().incoming_qos2.remove(&p.packet_id);
                }
                None
            }
            Write::Failed(_) => None,
        };
        self.acknowledge(p.qos, p.packet_id, code, ticket);
        Ok(())
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) with `code`, once `ticket` is on
    /// disk; nothing for QoS 0.
    fn acknowledge(
        &mut self,
        qos: QoS,
        packet_id: u16,
        code: u8,
        ticket: Option<porchlight_storage::Ticket>,
    ) {
        let mut ack = Ack::new(packet_id, code);
        if code >= 0x80 {
            ack.properties = self.problem(code);
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_after(ticket, Packet::PubAck(ack)),
            QoS::ExactlyOnce => self.send_after(ticket, Packet::PubRec(ack)),
        }
    }

    /// A Reason String for a failure, unless the client asked for none.
    pub(crate) fn problem(&self, code: u8) -> Properties {
        Properties {
            reason_string: (self.protocol.is_v5() && self.problem_info)
                .then(|| reason::text(code).to_owned()),
            ..Properties::default()
        }
    }

    fn on_puback(&mut self, id: u16) {
        let mut st = self.session.lock();
        if matches!(st.inflight.get(&id), Some(f) if matches!(f.state, OutState::AwaitingAck(ref d) if d.qos == QoS::AtLeastOnce))
        {
            let queue_seq = queue_seq_of(st.inflight.remove(&id));
            if let Some(p) = &st.persist {
                drop(Write::from_result(p.acknowledged(&self.key, id, queue_seq)));
            }
        }
    }

    fn on_pubrec(&mut self, a: Ack) -> Result<(), Close> {
        let mut st = self.session.lock();
        let persist = st.persist.clone();
        let Some(f) = st.inflight.get_mut(&a.packet_id) else {
            drop(st);
            self.send(&Packet::PubRel(Ack::new(
                a.packet_id,
                reason::PACKET_IDENTIFIER_NOT_FOUND,
            )));
            return Ok(());
        };
        if a.reason >= 0x80 {
            // The receiver refused the message: it is done.
            let queue_seq = queue_seq_of(st.inflight.remove(&a.packet_id));
            if let Some(p) = &persist {
                drop(Write::from_result(p.acknowledged(
                    &self.key,
                    a.packet_id,
                    queue_seq,
                )));
            }
            return Ok(());
        }
        let queue_seq = match &f.state {
            OutState::AwaitingAck(d) => d.seq,
            OutState::AwaitingComp => 0,
        };
        f.state = OutState::AwaitingComp;
        let order = f.seq;
        let write = match &persist {
            Some(p) => Write::from_result(p.released(&self.key, a.packet_id, order, queue_seq)),
            None => Write::None,
        };
        drop(st);
        // Once PUBREL is out the body is gone for good: the record saying
        // so must be on disk first, or a restart would resend the message.
        // If it cannot be written, the connection closes instead; the
        // client resends PUBREC when it is back.
        let ticket = match write {
            Write::Pending(t) => Some(t),
            Write::None => None,
            Write::Failed(_) => return Err(durable_write_failed()),
        };
        self.send_after(
            ticket,
            Packet::PubRel(Ack::new(a.packet_id, reason::SUCCESS)),
        );
        Ok(())
    }

    fn on_pubrel(&mut self, id: u16) -> Result<(), Close> {
        let (known, write) = {
            let mut st = self.session.lock();
            let known = st.incoming_qos2.remove(&id);
            let write = match (&st.persist, known) {
                (Some(p), true) => Write::from_result(p.incoming(&self.key, id, false)),
                _ => Write::None,
            };
            (known, write)
        };
        let code = if known {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        // PUBCOMP frees the packet id for reuse: the forgetting must be on
        // disk first, or a restart would take the next PUBLISH with this id
        // for a duplicate. If it cannot be written, the id stays and the
        // connection closes: the client resends PUBREL when it comes back.
        let ticket = match write {
            Write::Pending(t) => Some(t),
            Write::Failed(_) => {
                self.session.lock().incoming_qos2.insert(id);
                return Err(durable_write_failed());
            }
            Write::None => None,
        };
        self.send_after(ticket, Packet::PubComp(Ack::new(id, code)));
        Ok(())
    }

    fn on_pubcomp(&mut self, id: u16) {
        let mut st = self.session.lock();
        if matches!(st.inflight.get(&id), Some(f) if matches!(f.state, OutState::AwaitingComp)) {
            st.inflight.remove(&id);
            if let Some(p) = &st.persist {
                drop(Write::from_result(p.acknowledged(&self.key, id, 0)));
            }
        }
    }
}
