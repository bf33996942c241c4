//! Deliveries to a connected client: from the session queue into the
//! output buffer, within the send window and the client's limits.
//!
//! `pump` takes queued deliveries while the output buffer is below its
//! high-water mark and, for QoS > 0, while fewer than the send window are
//! in flight (never more than the client's Receive Maximum). Expired
//! messages are dropped; a message larger than the client's Maximum Packet
//! Size is dropped for that client; both are counted. `redeliver_inflight`
//! resends unacknowledged messages with DUP (and pending PUBRELs) when a
//! session resumes. Encoding writes the shared payload and pre-encoded
//! properties straight into the buffer; only the per-subscriber parts
//! (packet id, QoS, retain, subscription ids, remaining expiry) differ.

use std::time::Instant;

use bytes::{BufMut, BytesMut};
use porchlight_storage::Ticket;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::codec::{self, vbi_len, Ack, Packet, Protocol, QoS};
use crate::connection::Conn;
use crate::ids::TenantId;
use crate::message::Delivery;
use crate::metrics::DropReason;
use crate::net::transport::WRITE_HIGH_WATER;
use crate::persist::Write;
use crate::session::OutState;
use crate::topic::TENANT_PREFIX;

const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;

/// Who a delivery is encoded for.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub protocol: Protocol,
    /// The session's tenant: a message of another tenant (a gateway's
    /// subscription through `$tenant/<id>/`) is sent with that prefix.
    pub tenant: &'a TenantId,
    /// The client's Maximum Packet Size.
    pub max_size: usize,
}

/// Appends a PUBLISH for `d` unless it would exceed the peer's maximum
/// packet size; returns false (and writes nothing) in that case.
pub fn encode_delivery(
    out: &mut BytesMut,
    peer: Peer<'_>,
    d: &Delivery,
    packet_id: u16,
    dup: bool,
    now: Instant,
) -> bool {
    let (protocol, max_size) = (peer.protocol, peer.max_size);
    let v5 = protocol.is_v5();
    let msg = &d.msg;
    // Pointer-equal in the common case: one shared id per tenant.
    let foreign = (msg.tenant != *peer.tenant).then(|| msg.tenant.as_str());
    let topic_len = msg.topic.len() + foreign.map_or(0, |t| TENANT_PREFIX.len() + t.len() + 1);
    if topic_len > usize::from(u16::MAX) {
        return false;
    }
    let expiry = if v5 { msg.remaining_expiry(now) } else { None };
    let props_len = if v5 {
        msg.forwarded_properties.len()
            + expiry.map_or(0, |_| 5)
            + d.subscription_ids
                .iter()
                .map(|id| 1 + vbi_len(*id as usize))
                .sum::<usize>()
    } else {
        0
    };
    let id_len = if d.qos == QoS::AtMostOnce { 0 } else { 2 };
    let props_wire = if v5 {
        vbi_len(props_len) + props_len
    } else {
        0
    };
    let body = 2 + topic_len + id_len + props_wire + msg.payload.len();
    let total = 1 + vbi_len(body) + body;
    if total > max_size || body > codec::MAX_VBI {
        return false;
    }
    out.reserve(total);
    let mut byte1 = 0x30 | ((d.qos as u8) << 1);
    if dup && d.qos != QoS::AtMostOnce {
        byte1 |= 0x08;
    }
    if d.retain {
        byte1 |= 0x01;
    }
    out.put_u8(byte1);
    codec::write_vbi(out, body);
    match foreign {
        None => codec::write_string(out, &msg.topic),
        Some(t) => {
            out.put_u16(topic_len as u16);
            out.put_slice(TENANT_PREFIX.as_bytes());
            out.put_slice(t.as_bytes());
            out.put_u8(b'/');
            out.put_slice(msg.topic.as_bytes());
        }
    }
    if d.qos != QoS::AtMostOnce {
        out.put_u16(packet_id);
    }
    if v5 {
        codec::write_vbi(out, props_len);
        out.put_slice(&msg.forwarded_properties);
        if let Some(e) = expiry {
            out.put_u8(MESSAGE_EXPIRY_INTERVAL);
            out.put_u32(e);
        }
        for id in &d.subscription_ids {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            codec::write_vbi(out, *id as usize);
        }
    }
    out.put_slice(&msg.payload);
    true
}

/// One delivery in this many of each connection is timed for
/// `porchlight_publish_to_write_seconds` (the first qualifying one after
/// the count runs out).
pub const TIMED_EVERY: u8 = 8;

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Moves queued deliveries into the output buffer.
    pub fn pump(&mut self) {
        let now = Instant::now();
        let metrics = self.broker.metrics.clone();
        // Messages and payload bytes written, by QoS.
        let mut sent = [(0u64, 0u64); 3];
        // One delivery in [`TIMED_EVERY`] of each connection is timed: the
        // latency's distribution, at a cost the hot path does not notice.
        let mut untimed = self.untimed;
        // A held QoS 2 PUBLISH goes first, once its record is on disk;
        // until then nothing else may overtake it.
        if let Some((t, _)) = &self.held_publish {
            if !self.broker.persist.store().is_durable(*t) {
                return;
            }
            if let Some((_, bytes)) = self.held_publish.take() {
                self.io.wbuf.extend_from_slice(&bytes);
            }
        }
        let peer = Peer {
            protocol: self.protocol,
            tenant: &self.key.tenant,
            max_size: self.client_max_packet,
        };
        let mut st = self.session.lock();
        let persist = st.persist.clone();
        let mut sent_records = Vec::new();
        let mut holding: Option<(Ticket, BytesMut)> = None;
        // The resumed session's backlog goes first, in its original order.
        while self.io.wbuf.len() < WRITE_HIGH_WATER && st.window_used() < self.send_window {
            let Some(id) = st.resend.pop_front() else {
                break;
            };
            let Some(OutState::AwaitingAck(d)) = st.inflight.get(&id).map(|f| &f.state) else {
                continue; // acknowledged or released meanwhile
            };
            let ok = encode_delivery(&mut self.io.wbuf, peer, d, id, true, now);
            if ok {
                count_sent(&mut sent, d);
            } else {
                self.session.dropped(&metrics, DropReason::PacketTooLarge);
                let queue_seq = d.seq;
                st.inflight.remove(&id);
                if let Some(p) = &persist {
                    drop(Write::from_result(p.acknowledged(&self.key, id, queue_seq)));
                }
            }
        }
        while self.io.wbuf.len() + holding.as_ref().map_or(0, |(_, h)| h.len()) < WRITE_HIGH_WATER
            && st.resend.is_empty()
        {
            let Some(front) = st.front_queued() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && st.window_used() >= self.send_window {
                break;
            }
            let Some(d) = st.pop_queued() else {
                break;
            };
            if d.msg.is_expired(now) {
                self.session.dropped(&metrics, DropReason::Expired);
                if let Some(p) = &persist {
                    drop(Write::from_result(p.remove_queued(&self.key, d.seq)));
                }
                continue;
            }
            let packet_id = if d.qos == QoS::AtMostOnce {
                0
            } else {
                match st.allocate_packet_id() {
                    Some(id) => id,
                    None => {
                        st.unpop_queued(d);
                        break;
                    }
                }
            };
            // Exactly once to a durable session: the PUBLISH may only leave
            // once its in-flight record is on disk, or a crash right after
            // would resend it under a new packet id. From the first such
            // PUBLISH on, this pump's output is held (per-topic order) until
            // the newest of their records is durable: one fsync releases the
            // whole batch.
            let needs_hold = d.qos == QoS::ExactlyOnce && persist.is_some();
            if needs_hold && holding.is_none() {
                holding = Some((Ticket::default(), BytesMut::new()));
            }
            let out = match holding.as_mut() {
                Some((_, held)) => held,
                None => &mut self.io.wbuf,
            };
            let ok = encode_delivery(out, peer, &d, packet_id, false, now);
            if !ok {
                self.session.dropped(&metrics, DropReason::PacketTooLarge);
                if let Some(p) = &persist {
                    drop(Write::from_result(p.remove_queued(&self.key, d.seq)));
                }
                continue;
            }
            count_sent(&mut sent, &d);
            // Messages received while this connection was up: the broker's
            // own latency, not time spent queued for an offline session;
            // nor a retained message sent on a later SUBSCRIBE (sent with
            // the retain flag, as are retain-as-published ones: not timed).
            if untimed > 0 {
                untimed -= 1;
            } else {
                let since = self.info.connected_at;
                if let Some(at) = d.msg.received_at.filter(|at| *at >= since && !d.retain) {
                    metrics
                        .publish_to_write_seconds
                        .observe_duration(now.saturating_duration_since(at));
                    untimed = TIMED_EVERY - 1;
                }
            }
            if let (true, Some(p)) = (needs_hold, &persist) {
                let queue_seq = d.seq;
                let order = st.track_inflight(packet_id, OutState::AwaitingAck(d));
                let t = p.send(&self.key, packet_id, order, queue_seq);
                if let Some((held_ticket, _)) = holding.as_mut() {
                    *held_ticket = (*held_ticket).max(t);
                }
                continue;
            }
            // Durable: the queue entry becomes an in-flight record in one
            // atomic write (a QoS 0 one is simply gone).
            if d.qos == QoS::AtMostOnce {
                if let Some(p) = &persist {
                    drop(Write::from_result(p.remove_queued(&self.key, d.seq)));
                }
            } else {
                let queue_seq = d.seq;
                let order = st.track_inflight(packet_id, OutState::AwaitingAck(d));
                if persist.is_some() {
                    sent_records.push((packet_id, order, queue_seq));
                }
            }
        }
        // QoS 1 in-flight records only point at bodies written when they
        // were queued; they are recorded (deferred to the next group
        // commit) while the session is still ours.
        if let Some(p) = &persist {
            for (packet_id, order, queue_seq) in sent_records {
                p.send_deferred(&self.key, packet_id, order, queue_seq);
            }
        }
        self.untimed = untimed;
        let total: u64 = sent.iter().map(|(n, _)| n).sum();
        self.session
            .drained(&st, self.broker.config.queue_limits(), total);
        drop(st);
        if let Some((t, held)) = holding {
            if self.broker.persist.store().is_durable(t) {
                self.io.wbuf.extend_from_slice(&held);
            } else {
                self.held_publish = Some((t, held));
            }
        }
        if total > 0 {
            metrics.add(&metrics.messages_sent, total);
            // The tenant of the connection (a gateway's messages of other
            // tenants count as sent in its own).
            self.seat.usage.sent(&sent);
        }
    }

    /// Starts redelivery for a resumed session: PUBREL for messages
    /// awaiting PUBCOMP now; messages awaiting PUBACK/PUBREC go on the
    /// session's resend list, which `pump` sends (with DUP and their
    /// original packet ids) ahead of new messages as the client's Receive
    /// Maximum allows (MQTT-3.3.4-9).
    pub fn redeliver_inflight(&mut self) {
        let mut st = self.session.lock();
        st.resend.clear();
        for id in st.inflight_in_order() {
            match st.inflight.get(&id).map(|f| &f.state) {
                Some(OutState::AwaitingAck(_)) => st.resend.push_back(id),
                Some(OutState::AwaitingComp) => codec::encode(
                    &Packet::PubRel(Ack::new(id, codec::reason::SUCCESS)),
                    self.protocol,
                    &mut self.io.wbuf,
                ),
                None => {}
            }
        }
    }
}

/// Counts one delivery written, by its QoS.
fn count_sent(sent: &mut [(u64, u64); 3], d: &Delivery) {
    let slot = &mut sent[d.qos as usize];
    slot.0 += 1;
    slot.1 += d.msg.payload.len() as u64;
}
