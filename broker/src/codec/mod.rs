//! The MQTT wire codec: one packet model for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Owns the byte layout of every control packet and nothing else: it knows
//! no sessions, topics-as-routes or limits beyond the maximum packet size it
//! is handed. `decode` turns the front of a read buffer into a [`Packet`]
//! (`Ok(None)` when more bytes are needed), `encode` appends a packet to a
//! write buffer for a given [`Protocol`]. Decoded packets go to
//! `connection/mod.rs`, which applies the protocol state machine.
//!
//! Why not `mqttbytes`: see `docs/decisions/0001-own-mqtt-codec.md`.
//!
//! Strictness: reserved fixed-header flags, property placement, duplicate
//! properties, UTF-8 (including the ban on U+0000), packet id 0 and
//! truncated fields are all rejected here with a [`DecodeError`] that names
//! the MQTT 5 reason code to answer with.

mod decode;
mod encode;
mod properties;
pub mod reason;

use bytes::Bytes;

pub use decode::{cannot_start_connect, frame_len, peek_connect_level};
pub use decode::{decode, DecodeError};
pub use encode::{encode, encoded_len, fit_to, write_string, write_vbi};
pub(crate) use properties::Context as PropertyContext;
pub use properties::Properties;

/// Protocol level negotiated in CONNECT; decides how everything after it is
/// encoded and decoded on that connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V311,
    /// MQTT 5.0, protocol name "MQTT", level 5.
    V5,
}

impl Protocol {
    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }

    /// The version as people write it: "3.1", "3.1.1" or "5" (tenant
    /// limits, logs).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V31 => "3.1",
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }

    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service level.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Retain handling option of a subscription (MQTT 5, 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    SendOnSubscribe = 0,
    /// 1: send them only if the subscription did not exist yet.
    SendIfNew = 1,
    /// 2: never send retained messages for this subscription.
    DoNotSend = 2,
}

/// Options of one topic filter in a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub fn new(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendOnSubscribe,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub protocol: Protocol,
    /// "Clean session" in 3.1.1, "clean start" in 5.0.
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    /// Binary data, not a string: MQTT never says a password is UTF-8.
    pub password: Option<Bytes>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnAck {
    pub session_present: bool,
    /// An MQTT 5 reason code; `encode` maps it to a 3.1.1 return code.
    pub reason: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in MQTT 5 when a topic alias is given.
    pub topic: String,
    /// 0 for QoS 0 (no packet id on the wire).
    pub packet_id: u16,
    pub properties: Properties,
    /// A slice of the frame it was decoded from: shared, never copied.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub packet_id: u16,
    pub reason: u8,
    pub properties: Properties,
}

impl Ack {
    pub fn new(packet_id: u16, reason: u8) -> Self {
        Ack {
            packet_id,
            reason,
            properties: Properties::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<(String, SubscriptionOptions)>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SubAck {
    pub packet_id: u16,
    /// MQTT 5 reason codes, one per filter; mapped to 0x80 for 3.1.1 failures.
    pub reasons: Vec<u8>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// MQTT 5 reason codes; absent from the 3.1.1 encoding.
    pub reasons: Vec<u8>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Disconnect {
    pub reason: u8,
    pub properties: Properties,
}

impl Disconnect {
    pub fn new(reason: u8) -> Self {
        Disconnect {
            reason,
            properties: Properties::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub reason: u8,
    pub properties: Properties,
}

/// Every MQTT control packet, both directions.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// A short name for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// Length of a Variable Byte Integer encoding of `v`.
pub(crate) fn vbi_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Largest value a Variable Byte Integer (and so a remaining length) holds.
pub const MAX_VBI: usize = 268_435_455;

#[cfg(test)]
mod tests;
