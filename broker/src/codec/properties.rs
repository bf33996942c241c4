//! MQTT 5 properties: one struct for all of them, decoded with the set of
//! identifiers the enclosing packet allows (MQTT 5, table 2-4) and written
//! back in a fixed order.
//!
//! A property that is not allowed where it appears, a duplicate of a
//! single-valued property, or an out-of-range value is rejected here;
//! `decode.rs` turns that into a closed connection with the reason code.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::decode::{read_binary, read_string, read_u16, read_u32, read_u8, read_vbi, DecodeError};
use super::encode::{write_binary, write_string, write_vbi};
use super::vbi_len;

/// Where a property block appears; decides which identifiers are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Connect,
    ConnAck,
    Publish,
    Will,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

fn allowed(id: u8, ctx: Context) -> bool {
    use Context::*;
    match id {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => matches!(ctx, Publish | Will),
        SUBSCRIPTION_IDENTIFIER => matches!(ctx, Publish | Subscribe),
        SESSION_EXPIRY_INTERVAL => matches!(ctx, Connect | ConnAck | Disconnect),
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => ctx == ConnAck,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => matches!(ctx, Connect | ConnAck | Auth),
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => ctx == Connect,
        WILL_DELAY_INTERVAL => ctx == Will,
        SERVER_REFERENCE => matches!(ctx, ConnAck | Disconnect),
        REASON_STRING => matches!(ctx, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth),
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
            matches!(ctx, Connect | ConnAck)
        }
        TOPIC_ALIAS => ctx == Publish,
        USER_PROPERTY => true,
        _ => false,
    }
}

/// All MQTT 5 properties. Absent means "not on the wire"; defaults are
/// applied by the protocol layer, not here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

fn set_once<T>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol(name));
    }
    *slot = Some(v);
    Ok(())
}

fn bool_byte(v: u8, name: &'static str) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::Protocol(name));
    }
    Ok(v)
}

impl Properties {
    /// Reads a property block (length prefix included) from `buf`.
    pub(crate) fn read(buf: &mut Bytes, ctx: Context) -> Result<Properties, DecodeError> {
        let len = read_vbi(buf)?;
        if len > buf.remaining() {
            return Err(DecodeError::Malformed("property length exceeds packet"));
        }
        let mut block = buf.split_to(len);
        let mut p = Properties::default();
        while block.has_remaining() {
            let id = read_vbi(&mut block)?;
            let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property"))?;
            if !allowed(id, ctx) {
                return Err(DecodeError::Protocol("property not allowed in this packet"));
            }
            let b = &mut block;
            match id {
                PAYLOAD_FORMAT_INDICATOR => {
                    let v = bool_byte(read_u8(b)?, "payload format indicator")?;
                    set_once(
                        &mut p.payload_format_indicator,
                        v,
                        "duplicate payload format",
                    )?
                }
                MESSAGE_EXPIRY_INTERVAL => set_once(
                    &mut p.message_expiry_interval,
                    read_u32(b)?,
                    "duplicate message expiry",
                )?,
                CONTENT_TYPE => set_once(
                    &mut p.content_type,
                    read_string(b)?,
                    "duplicate content type",
                )?,
                RESPONSE_TOPIC => {
                    // A topic name: no wildcards [MQTT-3.3.2-14], not
                    // empty [MQTT-4.7.3-1]; in a PUBLISH and a will alike.
                    let topic = read_string(b)?;
                    if topic.is_empty() || topic.contains(['+', '#']) {
                        return Err(DecodeError::Protocol("response topic not a topic name"));
                    }
                    set_once(&mut p.response_topic, topic, "duplicate response topic")?
                }
                CORRELATION_DATA => set_once(
                    &mut p.correlation_data,
                    read_binary(b)?,
                    "duplicate correlation data",
                )?,
                SUBSCRIPTION_IDENTIFIER => {
                    let v = read_vbi(b)?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    if ctx == Context::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("duplicate subscription identifier"));
                    }
                    // v <= MAX_VBI < u32::MAX, so the conversion is lossless.
                    p.subscription_identifiers.push(v as u32);
                }
                SESSION_EXPIRY_INTERVAL => set_once(
                    &mut p.session_expiry_interval,
                    read_u32(b)?,
                    "duplicate session expiry",
                )?,
                ASSIGNED_CLIENT_IDENTIFIER => set_once(
                    &mut p.assigned_client_identifier,
                    read_string(b)?,
                    "duplicate assigned client id",
                )?,
                SERVER_KEEP_ALIVE => set_once(
                    &mut p.server_keep_alive,
                    read_u16(b)?,
                    "duplicate keep alive",
                )?,
                AUTHENTICATION_METHOD => set_once(
                    &mut p.authentication_method,
                    read_string(b)?,
                    "duplicate auth method",
                )?,
                AUTHENTICATION_DATA => set_once(
                    &mut p.authentication_data,
                    read_binary(b)?,
                    "duplicate auth data",
                )?,
                REQUEST_PROBLEM_INFORMATION => {
                    let v = bool_byte(read_u8(b)?, "request problem information")?;
                    set_once(
                        &mut p.request_problem_information,
                        v,
                        "duplicate problem info",
                    )?
                }
                WILL_DELAY_INTERVAL => set_once(
                    &mut p.will_delay_interval,
                    read_u32(b)?,
                    "duplicate will delay",
                )?,
                REQUEST_RESPONSE_INFORMATION => {
                    let v = bool_byte(read_u8(b)?, "request response information")?;
                    set_once(
                        &mut p.request_response_information,
                        v,
                        "duplicate response info",
                    )?
                }
                RESPONSE_INFORMATION => set_once(
                    &mut p.response_information,
                    read_string(b)?,
                    "duplicate response information",
                )?,
                SERVER_REFERENCE => set_once(
                    &mut p.server_reference,
                    read_string(b)?,
                    "duplicate server reference",
                )?,
                REASON_STRING => set_once(
                    &mut p.reason_string,
                    read_string(b)?,
                    "duplicate reason string",
                )?,
                RECEIVE_MAXIMUM => {
                    let v = read_u16(b)?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    set_once(&mut p.receive_maximum, v, "duplicate receive maximum")?
                }
                TOPIC_ALIAS_MAXIMUM => set_once(
                    &mut p.topic_alias_maximum,
                    read_u16(b)?,
                    "duplicate topic alias maximum",
                )?,
                TOPIC_ALIAS => {
                    let v = read_u16(b)?;
                    if v == 0 {
                        return Err(DecodeError::TopicAliasInvalid);
                    }
                    set_once(&mut p.topic_alias, v, "duplicate topic alias")?
                }
                MAXIMUM_QOS => {
                    let v = bool_byte(read_u8(b)?, "maximum qos")?;
                    set_once(&mut p.maximum_qos, v, "duplicate maximum qos")?
                }
                RETAIN_AVAILABLE => {
                    let v = bool_byte(read_u8(b)?, "retain available")?;
                    set_once(&mut p.retain_available, v, "duplicate retain available")?
                }
                USER_PROPERTY => {
                    let k = read_string(b)?;
                    let v = read_string(b)?;
                    p.user_properties.push((k, v));
                }
                MAXIMUM_PACKET_SIZE => {
                    let v = read_u32(b)?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set_once(
                        &mut p.maximum_packet_size,
                        v,
                        "duplicate maximum packet size",
                    )?
                }
                WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    let v = bool_byte(read_u8(b)?, "wildcard available")?;
                    set_once(&mut p.wildcard_subscription_available, v, "duplicate")?
                }
                SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    let v = bool_byte(read_u8(b)?, "subscription id available")?;
                    set_once(&mut p.subscription_identifier_available, v, "duplicate")?
                }
                SHARED_SUBSCRIPTION_AVAILABLE => {
                    let v = bool_byte(read_u8(b)?, "shared available")?;
                    set_once(&mut p.shared_subscription_available, v, "duplicate")?
                }
                _ => return Err(DecodeError::Malformed("unknown property")),
            }
        }
        Ok(p)
    }

    /// Encoded length of the properties, without the length prefix.
    pub(crate) fn body_len(&self) -> usize {
        fn s(v: &Option<String>) -> usize {
            v.as_ref().map_or(0, |v| 3 + v.len())
        }
        fn b(v: &Option<Bytes>) -> usize {
            v.as_ref().map_or(0, |v| 3 + v.len())
        }
        fn n<T>(v: &Option<T>, size: usize) -> usize {
            v.as_ref().map_or(0, |_| 1 + size)
        }
        n(&self.payload_format_indicator, 1)
            + n(&self.message_expiry_interval, 4)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|id| 1 + vbi_len(*id as usize))
                .sum::<usize>()
            + n(&self.session_expiry_interval, 4)
            + s(&self.assigned_client_identifier)
            + n(&self.server_keep_alive, 2)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n(&self.request_problem_information, 1)
            + n(&self.will_delay_interval, 4)
            + n(&self.request_response_information, 1)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n(&self.receive_maximum, 2)
            + n(&self.topic_alias_maximum, 2)
            + n(&self.topic_alias, 2)
            + n(&self.maximum_qos, 1)
            + n(&self.retain_available, 1)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
            + n(&self.maximum_packet_size, 4)
            + n(&self.wildcard_subscription_available, 1)
            + n(&self.subscription_identifier_available, 1)
            + n(&self.shared_subscription_available, 1)
    }

    /// Encoded length including the Variable Byte Integer length prefix.
    pub(crate) fn wire_len(&self) -> usize {
        let body = self.body_len();
        vbi_len(body) + body
    }

    /// Writes the length prefix and every present property.
    pub(crate) fn write(&self, out: &mut BytesMut) {
        write_vbi(out, self.body_len());
        self.write_fields(out);
    }

    /// Writes every present property without the length prefix; used to
    /// pre-encode the forwarded properties of a routed message once.
    pub fn write_fields(&self, out: &mut BytesMut) {
        fn u8p(out: &mut BytesMut, id: u8, v: Option<u8>) {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u8(v);
            }
        }
        fn u16p(out: &mut BytesMut, id: u8, v: Option<u16>) {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u16(v);
            }
        }
        fn u32p(out: &mut BytesMut, id: u8, v: Option<u32>) {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u32(v);
            }
        }
        fn strp(out: &mut BytesMut, id: u8, v: &Option<String>) {
            if let Some(v) = v {
                out.put_u8(id);
                write_string(out, v);
            }
        }
        fn binp(out: &mut BytesMut, id: u8, v: &Option<Bytes>) {
            if let Some(v) = v {
                out.put_u8(id);
                write_binary(out, v);
            }
        }
        u8p(out, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        u32p(out, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        strp(out, CONTENT_TYPE, &self.content_type);
        strp(out, RESPONSE_TOPIC, &self.response_topic);
        binp(out, CORRELATION_DATA, &self.correlation_data);
        for id in &self.subscription_identifiers {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            write_vbi(out, *id as usize);
        }
        u32p(out, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        strp(
            out,
            ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        u16p(out, SERVER_KEEP_ALIVE, self.server_keep_alive);
        strp(out, AUTHENTICATION_METHOD, &self.authentication_method);
        binp(out, AUTHENTICATION_DATA, &self.authentication_data);
        u8p(
            out,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        u32p(out, WILL_DELAY_INTERVAL, self.will_delay_interval);
        u8p(
            out,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        strp(out, RESPONSE_INFORMATION, &self.response_information);
        strp(out, SERVER_REFERENCE, &self.server_reference);
        strp(out, REASON_STRING, &self.reason_string);
        u16p(out, RECEIVE_MAXIMUM, self.receive_maximum);
        u16p(out, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        u16p(out, TOPIC_ALIAS, self.topic_alias);
        u8p(out, MAXIMUM_QOS, self.maximum_qos);
        u8p(out, RETAIN_AVAILABLE, self.retain_available);
        for (k, v) in &self.user_properties {
            out.put_u8(USER_PROPERTY);
            write_string(out, k);
            write_string(out, v);
        }
        u32p(out, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        u8p(
            out,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        u8p(
            out,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        u8p(
            out,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
    }
}
