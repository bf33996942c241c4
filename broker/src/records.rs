//! The control state's records as data, and their one encoding.
//!
//! A session's durable parts (`SessionMeta`, each `StoredSubscription`, a
//! `PendingWill`) and a `Retained` message are what the control state
//! replicates (`state/`) and what the store keeps (`persist/`). Both write
//! them the same way: [`encode`], a format byte then postcard, the
//! encoding of commands and their results too, so there is one format.
//! Records written before it start with byte 1 (`persist/`'s legacy
//! layouts), which [`FORMAT`] is not, and still load.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::codec::{Properties, PropertyContext, QoS, SubscriptionOptions, Will};
use crate::ids::{SessionKey, TenantId};
use crate::message::Message;
use crate::topic::TopicName;

/// The encoding of commands, results and control-state records: a byte
/// with this value, then postcard. Bump it when a type changes shape, and
/// keep reading the old one. (16: records before it began with 1.)
pub const FORMAT: u8 = 16;

/// A command, a result or a snapshot as bytes: [`FORMAT`], then postcard.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Writing to a Vec fails only for types serde cannot express, which
    // none here are; the lone format byte then fails `decode` loudly.
    postcard::to_extend(value, vec![FORMAT]).unwrap_or_else(|_| vec![FORMAT])
}

/// Why bytes are not a command (or result, or snapshot) of this build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty control-state record")]
    Empty,
    #[error("control-state format {0} is not one this build reads ({FORMAT})")]
    Format(u8),
    #[error("malformed control-state record: {0}")]
    Body(String),
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&format, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if format != FORMAT {
        return Err(DecodeError::Format(format));
    }
    postcard::from_bytes(body).map_err(|e| DecodeError::Body(e.to_string()))
}

/// A durable session's own record: its expiry, when its connection
/// ended (0 while connected) and the authenticated user of its latest
/// claim (a session is not handed to another user after a restart either).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub expiry_interval: u32,
    pub disconnected_at_ms: u64,
    pub user: Option<String>,
}

impl SessionMeta {
    pub fn new(expiry_interval: u32, disconnected_at_ms: u64, user: Option<String>) -> SessionMeta {
        SessionMeta {
            expiry_interval,
            disconnected_at_ms,
            user,
        }
    }
}

/// A subscription as the session holds it (the node's trie holds its own
/// copy, with the session's runtime handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// A will waiting for its delay or its session's end, due at `due_ms`.
pub struct PendingWill {
    #[serde(with = "will_serde")]
    pub will: Box<Will>,
    pub due_ms: u64,
}

/// A retained message: the routed message (shared with the node's index
/// and with deliveries) and its expiry as a wall-clock time, which is what
/// the control state compares and records (the message's own `Instant` is
/// node-local).
#[derive(Debug, Clone)]
pub struct Retained {
    pub message: Arc<Message>,
    pub expires_at_ms: Option<u64>,
}

impl Retained {
    /// A message as received now: its expiry instant read as wall time.
    pub fn new(message: Arc<Message>) -> Retained {
        let expires_at_ms = message.expires_at.map(crate::clock::unix_ms);
        Retained {
            message,
            expires_at_ms,
        }
    }

    /// Bytes it counts in the tenant's `max_retained_bytes`.
    pub fn size(&self) -> u64 {
        self.message.size() as u64
    }
}

/// The data of a retained message, for [`Retained`]'s serde.
#[derive(Serialize, Deserialize)]
struct RetainedData {
    tenant: TenantId,
    topic: TopicName,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    forwarded_properties: Bytes,
    expires_at_ms: Option<u64>,
    publisher: Option<SessionKey>,
}

/// [`RetainedData`] borrowed from the message, for writing (the same
/// fields in the same order: serde writes `&T` as `T`).
#[derive(Serialize)]
struct RetainedRef<'a> {
    tenant: &'a TenantId,
    topic: &'a TopicName,
    payload: &'a Bytes,
    qos: QoS,
    retain: bool,
    forwarded_properties: &'a Bytes,
    expires_at_ms: Option<u64>,
    publisher: &'a Option<SessionKey>,
}

impl Serialize for Retained {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = &self.message;
        RetainedRef {
            tenant: &m.tenant,
            topic: &m.topic,
            payload: &m.payload,
            qos: m.qos,
            retain: m.retain,
            forwarded_properties: &m.forwarded_properties,
            expires_at_ms: self.expires_at_ms,
            publisher: &m.publisher,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Retained {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RetainedData::deserialize(d)?;
        Ok(Retained {
            message: Arc::new(Message {
                tenant: r.tenant,
                topic: r.topic,
                payload: r.payload,
                qos: r.qos,
                retain: r.retain,
                forwarded_properties: r.forwarded_properties,
                expires_at: r.expires_at_ms.map(crate::clock::instant_from_unix_ms),
                received_at: None,
                publisher: r.publisher,
                stored: std::sync::OnceLock::new(),
            }),
            expires_at_ms: r.expires_at_ms,
        })
    }
}

/// Equal as data (what a replica would hold), not as node-local handles.
impl PartialEq for Retained {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.message, &other.message);
        self.expires_at_ms == other.expires_at_ms
            && a.tenant == b.tenant
            && a.topic == b.topic
            && a.payload == b.payload
            && a.qos == b.qos
            && a.retain == b.retain
            && a.forwarded_properties == b.forwarded_properties
            && a.publisher == b.publisher
    }
}

/// A will as data: its properties in their wire encoding.
pub mod will_serde {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct WillData {
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Bytes,
    }

    pub fn serialize<S: serde::Serializer>(w: &Will, s: S) -> Result<S::Ok, S::Error> {
        let mut props = BytesMut::new();
        w.properties.write(&mut props);
        WillData {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
            properties: props.freeze(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<Will>, D::Error> {
        let w = WillData::deserialize(d)?;
        let mut props = w.properties;
        let properties = Properties::read(&mut props, PropertyContext::Will)
            .map_err(|_| serde::de::Error::custom("invalid will properties"))?;
        Ok(Box::new(Will {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties,
        }))
    }
}
