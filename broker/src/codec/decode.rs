//! Decoding: frames one packet off the front of a read buffer and parses it.
//!
//! A partial packet is `Ok(None)` and consumes nothing; a complete packet is
//! split off the buffer and frozen, so PUBLISH payloads are slices of the
//! frame (refcounted, not copied). Any error means the connection must close;
//! [`DecodeError::reason`] says with which MQTT 5 reason code.

use bytes::{Buf, Bytes, BytesMut};

use super::properties::{Context, Properties};
use super::*;

/// Why a packet could not be decoded. Every variant closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("topic alias 0")]
    TopicAliasInvalid,
}

impl DecodeError {
    /// The MQTT 5 reason code for a DISCONNECT (or CONNACK) answering this.
    pub fn reason(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicAliasInvalid => reason::TOPIC_ALIAS_INVALID,
        }
    }
}

pub(crate) fn read_u8(b: &mut Bytes) -> Result<u8, DecodeError> {
    if b.remaining() < 1 {
        return Err(DecodeError::Malformed("truncated"));
    }
    Ok(b.get_u8())
}

pub(crate) fn read_u16(b: &mut Bytes) -> Result<u16, DecodeError> {
    if b.remaining() < 2 {
        return Err(DecodeError::Malformed("truncated"));
    }
    Ok(b.get_u16())
}

pub(crate) fn read_u32(b: &mut Bytes) -> Result<u32, DecodeError> {
    if b.remaining() < 4 {
        return Err(DecodeError::Malformed("truncated"));
    }
    Ok(b.get_u32())
}

pub(crate) fn read_binary(b: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = read_u16(b)? as usize;
    if b.remaining() < len {
        return Err(DecodeError::Malformed("truncated"));
    }
    Ok(b.split_to(len))
}

/// A UTF-8 encoded string (MQTT 1.5.4): valid UTF-8 with no U+0000.
pub(crate) fn read_string(b: &mut Bytes) -> Result<String, DecodeError> {
    let raw = read_binary(b)?;
    let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::Malformed("invalid UTF-8"))?;
    if s.contains('\0') {
        return Err(DecodeError::Malformed("U+0000 in a string"));
    }
    Ok(s.to_owned())
}

/// A Variable Byte Integer of at most four bytes.
pub(crate) fn read_vbi(b: &mut Bytes) -> Result<usize, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = read_u8(b)?;
        value |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

/// Parses the fixed header at the front of `buf` without consuming it.
/// Returns `(first byte, header length, remaining length)` or `None` when
/// more bytes are needed.
fn frame_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((buf[0], 2 + i, remaining)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}

/// Total length of the frame at the front of `buf`, if its fixed header is
/// complete. The connection uses it to reserve room for large packets.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    match frame_header(buf) {
        Ok(Some((_, h, r))) => Some(h + r),
        _ => None,
    }
}

/// Whether the first bytes of a connection can no longer become a CONNECT:
/// the first byte is not 0x10, the remaining length is malformed or too
/// short for any CONNECT, or the protocol name read so far is neither
/// `MQTT` nor `MQIsdp`. The connection closes at once instead of holding
/// its slot for the connect timeout (an HTTP request sent to the MQTT
/// port is refused at its first byte).
pub fn cannot_start_connect(buf: &[u8]) -> bool {
    let Some(&first) = buf.first() else {
        return false;
    };
    if first != 0x10 {
        return true;
    }
    let header_len = match frame_header(buf) {
        Err(_) => return true,
        Ok(None) => return false,
        // Protocol name (2 + 4), level, flags, keep alive, and a client id
        // (2, even when empty): nothing shorter is a CONNECT.
        Ok(Some((_, _, remaining))) if remaining < 12 => return true,
        Ok(Some((_, header_len, _))) => header_len,
    };
    let name = buf.get(header_len..).unwrap_or_default();
    let prefix_of = |want: &[u8]| name.iter().zip(want).all(|(a, b)| a == b);
    !(prefix_of(b"\0\x04MQTT") || prefix_of(b"\0\x06MQIsdp"))
}

/// The protocol level of a CONNECT at the front of `buf`, if enough of it
/// is there; lets a refusal of a malformed CONNECT answer in the client's
/// protocol version.
pub fn peek_connect_level(buf: &[u8]) -> Option<u8> {
    let (byte1, header_len, _) = frame_header(buf).ok()??;
    if byte1 >> 4 != 1 {
        return None;
    }
    let name_len = u16::from_be_bytes([*buf.get(header_len)?, *buf.get(header_len + 1)?]);
    buf.get(header_len + 2 + usize::from(name_len)).copied()
}

/// Decodes one packet from the front of `buf`.
///
/// `protocol` is the connection's negotiated level (`None` before CONNECT;
/// then only the fixed header and CONNECT are understood). `max_size` is the
/// largest whole packet accepted; a larger one is refused as soon as its
/// fixed header is read, before its body arrives.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((byte1, header_len, remaining)) = frame_header(buf)? else {
        return Ok(None);
    };
    let size = header_len + remaining;
    if size > max_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header_len);
    let v5 = protocol == Some(Protocol::V5);
    let packet_type = byte1 >> 4;
    let flags = byte1 & 0x0F;
    let expected_flags = match packet_type {
        3 => flags, // PUBLISH flags are checked by its parser
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected_flags {
        return Err(DecodeError::Malformed("reserved fixed header flags"));
    }
    let p = protocol.unwrap_or(Protocol::V311);
    let packet = match packet_type {
        1 => Packet::Connect(Box::new(read_connect(&mut frame)?)),
        2 => Packet::ConnAck(read_connack(&mut frame, v5)?),
        3 => Packet::Publish(read_publish(&mut frame, flags, v5)?),
        4 => Packet::PubAck(read_ack(&mut frame, v5)?),
        5 => Packet::PubRec(read_ack(&mut frame, v5)?),
        6 => Packet::PubRel(read_ack(&mut frame, v5)?),
        7 => Packet::PubComp(read_ack(&mut frame, v5)?),
        8 => Packet::Subscribe(read_subscribe(&mut frame, p)?),
        9 => Packet::SubAck(read_suback(&mut frame, v5)?),
        10 => Packet::Unsubscribe(read_unsubscribe(&mut frame, v5)?),
        11 => Packet::UnsubAck(read_unsuback(&mut frame, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(read_disconnect(&mut frame, v5)?),
        15 if v5 => Packet::Auth(read_auth(&mut frame)?),
        _ => return Err(DecodeError::Malformed("unknown packet type")),
    };
    if frame.has_remaining() {
        return Err(DecodeError::Malformed("bytes after the end of the packet"));
    }
    Ok(Some(packet))
}

fn read_packet_id(b: &mut Bytes) -> Result<u16, DecodeError> {
    let id = read_u16(b)?;
    if id == 0 {
        return Err(DecodeError::Malformed("packet identifier 0"));
    }
    Ok(id)
}

fn read_connect(b: &mut Bytes) -> Result<Connect, DecodeError> {
    let name = read_string(b)?;
    let level = read_u8(b)?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        ("MQIsdp", 3) => Protocol::V31,
        _ => return Err(DecodeError::UnsupportedProtocol { name, level }),
    };
    let v5 = protocol.is_v5();
    let flags = read_u8(b)?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved connect flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "will qos or retain without will flag",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will qos 3"))?;
    if !v5 && has_password && !has_username {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let keep_alive = read_u16(b)?;
    let properties = if v5 {
        Properties::read(b, Context::Connect)?
    } else {
        Properties::default()
    };
    let client_id = read_string(b)?;
    let will = if will_flag {
        let properties = if v5 {
            Properties::read(b, Context::Will)?
        } else {
            Properties::default()
        };
        let topic = read_string(b)?;
        let payload = read_binary(b)?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(read_string(b)?)
    } else {
        None
    };
    let password = if has_password {
        Some(read_binary(b)?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn read_connack(b: &mut Bytes, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = read_u8(b)?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("reserved connack flags"));
    }
    let reason = read_u8(b)?;
    let properties = if v5 {
        Properties::read(b, Context::ConnAck)?
    } else {
        Properties::default()
    };
    Ok(ConnAck {
        session_present: flags & 1 == 1,
        reason,
        properties,
    })
}

fn read_publish(b: &mut Bytes, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("publish qos 3"))?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 publish"));
    }
    let topic = read_string(b)?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        read_packet_id(b)?
    };
    let properties = if v5 {
        Properties::read(b, Context::Publish)?
    } else {
        Properties::default()
    };
    let payload = b.split_to(b.remaining());
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP. In MQTT 5 the reason code and properties
/// may be omitted (remaining length 2 or 3).
fn read_ack(b: &mut Bytes, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = read_packet_id(b)?;
    let mut ack = Ack::new(packet_id, reason::SUCCESS);
    if v5 && b.has_remaining() {
        ack.reason = read_u8(b)?;
        if b.has_remaining() {
            ack.properties = Properties::read(b, Context::Ack)?;
        }
    }
    Ok(ack)
}

fn read_subscribe(b: &mut Bytes, protocol: Protocol) -> Result<Subscribe, DecodeError> {
    let v5 = protocol.is_v5();
    let packet_id = read_packet_id(b)?;
    let properties = if v5 {
        Properties::read(b, Context::Subscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while b.has_remaining() {
        let filter = read_string(b)?;
        let opts = read_u8(b)?;
        let reserved = if v5 { opts & 0xC0 } else { opts & 0xFC };
        if reserved != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits"));
        }
        let qos = QoS::from_u8(opts & 0x03).ok_or(DecodeError::Malformed("subscribe qos 3"))?;
        let retain_handling = match (opts >> 4) & 0x03 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::Protocol("retain handling 3")),
        };
        filters.push((
            filter,
            SubscriptionOptions {
                qos,
                no_local: opts & 0x04 != 0,
                retain_as_published: opts & 0x08 != 0,
                retain_handling,
            },
        ));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE with no topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn read_suback(b: &mut Bytes, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = read_packet_id(b)?;
    let properties = if v5 {
        Properties::read(b, Context::SubAck)?
    } else {
        Properties::default()
    };
    let reasons = b.split_to(b.remaining()).to_vec();
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn read_unsubscribe(b: &mut Bytes, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = read_packet_id(b)?;
    let properties = if v5 {
        Properties::read(b, Context::Unsubscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while b.has_remaining() {
        filters.push(read_string(b)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE with no topic filter"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn read_unsuback(b: &mut Bytes, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = read_packet_id(b)?;
    if !v5 {
        return Ok(UnsubAck {
            packet_id,
            reasons: Vec::new(),
            properties: Properties::default(),
        });
    }
    let properties = Properties::read(b, Context::UnsubAck)?;
    let reasons = b.split_to(b.remaining()).to_vec();
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}

/// DISCONNECT: empty in 3.1.1; in MQTT 5 an empty body means reason 0x00.
fn read_disconnect(b: &mut Bytes, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::new(reason::SUCCESS);
    if v5 && b.has_remaining() {
        d.reason = read_u8(b)?;
        if b.has_remaining() {
            d.properties = Properties::read(b, Context::Disconnect)?;
        }
    }
    Ok(d)
}

fn read_auth(b: &mut Bytes) -> Result<Auth, DecodeError> {
    let mut a = Auth {
        reason: reason::SUCCESS,
        properties: Properties::default(),
    };
    if b.has_remaining() {
        a.reason = read_u8(b)?;
        if b.has_remaining() {
            a.properties = Properties::read(b, Context::Auth)?;
        }
    }
    Ok(a)
}
