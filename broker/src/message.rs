//! A routed application message and one subscriber's delivery of it.
//!
//! A PUBLISH is decoded once into a [`Message`] behind an `Arc`; every
//! subscriber's [`Delivery`] shares it (payload and pre-encoded properties
//! included) and adds only what differs per subscriber: granted QoS,
//! retain flag and subscription identifiers. `connection/outbound.rs` encodes a
//! delivery for one connection. A message queued for durable sessions is
//! also written once to the store's body table (`persist/`); its
//! [`StoredBody`] handle says where, and frees the record when the last
//! delivery holding the message is gone.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::codec::{Properties, QoS};
use crate::ids::{SessionKey, TenantId};
use crate::topic::TopicName;

/// An application message as the broker routes and stores it.
#[derive(Debug)]
pub struct Message {
    pub tenant: TenantId,
    pub topic: TopicName,
    pub payload: Bytes,
    /// QoS the publisher used; a delivery gets min(this, subscription QoS).
    pub qos: QoS,
    /// The publisher's retain flag (kept for retain-as-published).
    pub retain: bool,
    /// The properties forwarded unchanged to subscribers (payload format,
    /// content type, response topic, correlation data, user properties),
    /// encoded once without their length prefix. Empty for none.
    pub forwarded_properties: Bytes,
    /// Message expiry deadline (MQTT 5 message expiry interval).
    pub expires_at: Option<Instant>,
    /// When this node received it (built it from the PUBLISH); `None` for
    /// a message read back from disk.
    pub received_at: Option<Instant>,
    /// The publishing session, for no-local subscriptions (its tenant is
    /// not the message's when a gateway published through `$tenant/`).
    pub publisher: Option<SessionKey>,
    /// Its record in the store's body table, from the first time it is
    /// queued for a durable session (`Persist::push_queue`); every durable
    /// queue entry of it names that record instead of carrying a copy.
    pub stored: OnceLock<Arc<StoredBody>>,
}

/// Body ids whose message is gone, for the store to delete with its next
/// group commit (after the queue records that named them).
pub type ReleasedBodies = parking_lot::Mutex<Vec<u64>>;

/// A message's record in the store's body table. It is held by the
/// message and by every queue entry kept on disk only (`session/mod.rs`'s
/// spill): once none holds it, no queue record on disk names the body
/// (each was deleted before its delivery was dropped), and dropping this
/// hands the id to the store to delete.
#[derive(Debug)]
pub struct StoredBody {
    pub id: u64,
    /// The message's tenant and expiry, for queue entries that no longer
    /// hold it.
    pub tenant: TenantId,
    pub expires_at: Option<Instant>,
    /// The message as last read back from disk, while something holds it:
    /// entries of many sessions read back share one copy.
    pub loaded: parking_lot::Mutex<Weak<Message>>,
    /// Whether the body is a record of its own ([`UNWRITTEN`] until a
    /// second durable entry needs it: the first carries the message).
    state: AtomicU8,
    released: Weak<ReleasedBodies>,
}

/// Only inside the first entry (or none) on disk: nothing to delete.
const UNWRITTEN: u8 = 0;
/// Deferred for the next commit.
const PENDING: u8 = 1;
/// A record of the store's body table.
const WRITTEN: u8 = 2;

impl StoredBody {
    pub fn new(id: u64, msg: &Message, released: Weak<ReleasedBodies>) -> StoredBody {
        StoredBody {
            id,
            tenant: msg.tenant.clone(),
            expires_at: msg.expires_at,
            loaded: parking_lot::Mutex::new(Weak::new()),
            state: AtomicU8::new(UNWRITTEN),
            released,
        }
    }

    /// A body found written at start-up.
    pub fn written(self) -> StoredBody {
        self.state.store(WRITTEN, Ordering::Relaxed);
        self
    }

    /// Whether an entry naming it must also defer the body.
    pub fn needs_writing(&self) -> bool {
        self.state.load(Ordering::Acquire) == UNWRITTEN
    }

    /// Claims the deferring of the body; false if another entry did.
    /// Called under the store's deferred-writes lock.
    pub fn mark_pending(&self) -> bool {
        self.state
            .compare_exchange(UNWRITTEN, PENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The commit that carried the body is on disk.
    pub fn set_written(&self) {
        self.state.store(WRITTEN, Ordering::Release);
    }
}

impl StoredBody {
    /// Makes `msg`, read back from the store, the message of this body
    /// (shared by whatever reads it back while it lives).
    pub fn adopt(self: &Arc<Self>, msg: Message, loaded: &mut Weak<Message>) -> Arc<Message> {
        let _ = msg.stored.set(self.clone());
        let m = Arc::new(msg);
        *loaded = Arc::downgrade(&m);
        m
    }
}

impl Drop for StoredBody {
    fn drop(&mut self) {
        // Never a record of its own: nothing to delete. The store is gone
        // (shutdown): its records stay for the restart.
        if self.state.load(Ordering::Acquire) == UNWRITTEN {
            return;
        }
        if let Some(r) = self.released.upgrade() {
            r.lock().push(self.id);
        }
    }
}

impl Message {
    /// Builds a message from a publish's parts, received now, encoding the
    /// properties that travel with it.
    pub fn new(
        tenant: TenantId,
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        props: &Properties,
        publisher: Option<SessionKey>,
    ) -> Message {
        let received_at = Instant::now();
        let forwarded = Properties {
            payload_format_indicator: props.payload_format_indicator,
            content_type: props.content_type.clone(),
            response_topic: props.response_topic.clone(),
            correlation_data: props.correlation_data.clone(),
            user_properties: props.user_properties.clone(),
            ..Properties::default()
        };
        let mut buf = BytesMut::new();
        forwarded.write_fields(&mut buf);
        Message {
            tenant,
            topic,
            payload,
            qos,
            retain,
            forwarded_properties: buf.freeze(),
            expires_at: props
                .message_expiry_interval
                .map(|s| received_at + std::time::Duration::from_secs(u64::from(s))),
            received_at: Some(received_at),
            publisher,
            stored: OnceLock::new(),
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Remaining expiry interval in whole seconds, rounded up, for the
    /// Message Expiry Interval property sent to subscribers.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// Bytes this message holds (for queue accounting and metrics).
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + self.forwarded_properties.len()
    }
}

/// The shared subscription a delivery came through, so an unacknowledged
/// message can go to another member when this one leaves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShareRef {
    pub group: Arc<str>,
    pub filter: Arc<str>,
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// min(message QoS, granted QoS of the matching subscriptions).
    pub qos: QoS,
    /// The RETAIN flag to send: set for retained messages sent on
    /// subscribe, or when retain-as-published asks for the original flag.
    pub retain: bool,
    /// Subscription identifiers of every matching subscription (MQTT 5).
    /// Boxed, not a `Vec`: a queued delivery costs 8 bytes less, and most
    /// have none (an empty box does not allocate).
    pub subscription_ids: Box<[u32]>,
    pub share: Option<Arc<ShareRef>>,
    /// Position in a durable session's queue (its storage key); 0 until
    /// queued in one.
    pub seq: u64,
}

#[cfg(test)]
mod size_tests {
    /// A queued message costs one `Delivery` per session that queues it
    /// (the message itself is shared): issue 16 sets a budget of 100 bytes
    /// per queue entry beyond the shared body, and the queue's spare
    /// capacity comes out of it too.
    #[test]
    fn a_delivery_stays_small() {
        assert!(
            std::mem::size_of::<super::Delivery>() <= 48,
            "{} bytes",
            std::mem::size_of::<super::Delivery>()
        );
    }
}
