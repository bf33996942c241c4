//! Encoding: appends one packet to a write buffer in the connection's
//! protocol version.
//!
//! Reason codes are MQTT 5 everywhere in the broker; for 3.1.1 and 3.1 they
//! are mapped here (CONNACK return codes, SUBACK 0x80) or left out
//! (PUBACK and friends, UNSUBACK, properties). `encoded_len` gives the exact
//! size first so the caller can honour the client's Maximum Packet Size.

use bytes::{BufMut, BytesMut};

use super::properties::Properties;
use super::*;

/// Appends a Variable Byte Integer.
pub fn write_vbi(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

pub(crate) fn write_binary(out: &mut BytesMut, v: &[u8]) {
    // Callers bound every field by the packet size limits; a field longer
    // than u16::MAX cannot come from a decoded packet.
    out.put_u16(v.len() as u16);
    out.put_slice(v);
}

/// Appends a length-prefixed UTF-8 string.
pub fn write_string(out: &mut BytesMut, v: &str) {
    write_binary(out, v.as_bytes());
}

fn props_len(p: &Properties, v5: bool) -> usize {
    if v5 {
        p.wire_len()
    } else {
        0
    }
}

/// Length of everything after the fixed header.
fn body_len(packet: &Packet, protocol: Protocol) -> usize {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => {
            let name = if protocol == Protocol::V31 { 6 } else { 4 };
            let mut len = 2 + name + 1 + 1 + 2 + props_len(&c.properties, v5) + 2;
            len += c.client_id.len();
            if let Some(w) = &c.will {
                len += props_len(&w.properties, v5) + 2 + w.topic.len() + 2 + w.payload.len();
            }
            len += c.username.as_ref().map_or(0, |u| 2 + u.len());
            len += c.password.as_ref().map_or(0, |p| 2 + p.len());
            len
        }
        Packet::ConnAck(c) => 2 + props_len(&c.properties, v5),
        Packet::Publish(p) => {
            let id = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
            2 + p.topic.len() + id + props_len(&p.properties, v5) + p.payload.len()
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            ack_body_len(a, v5)
        }
        Packet::Subscribe(s) => {
            2 + props_len(&s.properties, v5)
                + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>()
        }
        Packet::SubAck(s) => 2 + props_len(&s.properties, v5) + s.reasons.len(),
        Packet::Unsubscribe(u) => {
            2 + props_len(&u.properties, v5) + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            if v5 {
                2 + u.properties.wire_len() + u.reasons.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if !v5 || (d.reason == reason::SUCCESS && d.properties == Properties::default()) {
                0
            } else {
                1 + d.properties.wire_len()
            }
        }
        Packet::Auth(a) => 1 + a.properties.wire_len(),
    }
}

fn ack_body_len(a: &Ack, v5: bool) -> usize {
    if !v5 || (a.reason == reason::SUCCESS && a.properties == Properties::default()) {
        2
    } else if a.properties == Properties::default() {
        3
    } else {
        3 + a.properties.wire_len()
    }
}

/// Removes the Reason String and User Properties of a packet that would
/// exceed `max` bytes, as MQTT 5 requires before sending it (MQTT-3.2.2-19,
/// MQTT-3.14.2-3 and their siblings). Returns the final encoded length.
pub fn fit_to(packet: &mut Packet, protocol: Protocol, max: usize) -> usize {
    let len = encoded_len(packet, protocol);
    if len <= max {
        return len;
    }
    let props = match packet {
        Packet::ConnAck(c) => &mut c.properties,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            &mut a.properties
        }
        Packet::SubAck(s) => &mut s.properties,
        Packet::UnsubAck(u) => &mut u.properties,
        Packet::Disconnect(d) => &mut d.properties,
        Packet::Auth(a) => &mut a.properties,
        _ => return len,
    };
    props.reason_string = None;
    props.user_properties.clear();
    encoded_len(packet, protocol)
}

/// Exact number of bytes `encode` will append for this packet.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let body = body_len(packet, protocol);
    1 + vbi_len(body) + body
}

/// Appends `packet` to `out`, encoded for `protocol`.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    let v5 = protocol.is_v5();
    let body = body_len(packet, protocol);
    out.reserve(1 + vbi_len(body) + body);
    let header = |out: &mut BytesMut, byte1: u8| {
        out.put_u8(byte1);
        write_vbi(out, body);
    };
    match packet {
        Packet::Connect(c) => {
            header(out, 0x10);
            match protocol {
                Protocol::V31 => write_string(out, "MQIsdp"),
                _ => write_string(out, "MQTT"),
            }
            out.put_u8(protocol.level());
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            out.put_u8(flags);
            out.put_u16(c.keep_alive);
            if v5 {
                c.properties.write(out);
            }
            write_string(out, &c.client_id);
            if let Some(w) = &c.will {
                if v5 {
                    w.properties.write(out);
                }
                write_string(out, &w.topic);
                write_binary(out, &w.payload);
            }
            if let Some(u) = &c.username {
                write_string(out, u);
            }
            if let Some(p) = &c.password {
                write_binary(out, p);
            }
        }
        Packet::ConnAck(c) => {
            header(out, 0x20);
            out.put_u8(u8::from(c.session_present));
            if v5 {
                out.put_u8(c.reason);
                c.properties.write(out);
            } else {
                out.put_u8(reason::connack_v3(c.reason));
            }
        }
        Packet::Publish(p) => {
            let mut byte1 = 0x30 | ((p.qos as u8) << 1);
            if p.dup {
                byte1 |= 0x08;
            }
            if p.retain {
                byte1 |= 0x01;
            }
            header(out, byte1);
            write_string(out, &p.topic);
            if p.qos != QoS::AtMostOnce {
                out.put_u16(p.packet_id);
            }
            if v5 {
                p.properties.write(out);
            }
            out.put_slice(&p.payload);
        }
        Packet::PubAck(a) => write_ack(out, 0x40, a, body, v5),
        Packet::PubRec(a) => write_ack(out, 0x50, a, body, v5),
        Packet::PubRel(a) => write_ack(out, 0x62, a, body, v5),
        Packet::PubComp(a) => write_ack(out, 0x70, a, body, v5),
        Packet::Subscribe(s) => {
            header(out, 0x82);
            out.put_u16(s.packet_id);
            if v5 {
                s.properties.write(out);
            }
            for (f, o) in &s.filters {
                write_string(out, f);
                let mut opts = o.qos as u8;
                if v5 {
                    if o.no_local {
                        opts |= 0x04;
                    }
                    if o.retain_as_published {
                        opts |= 0x08;
                    }
                    opts |= (o.retain_handling as u8) << 4;
                }
                out.put_u8(opts);
            }
        }
        Packet::SubAck(s) => {
            header(out, 0x90);
            out.put_u16(s.packet_id);
            if v5 {
                s.properties.write(out);
                out.put_slice(&s.reasons);
            } else {
                for r in &s.reasons {
                    out.put_u8(reason::suback_v3(*r));
                }
            }
        }
        Packet::Unsubscribe(u) => {
            header(out, 0xA2);
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.write(out);
            }
            for f in &u.filters {
                write_string(out, f);
            }
        }
        Packet::UnsubAck(u) => {
            header(out, 0xB0);
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.write(out);
                out.put_slice(&u.reasons);
            }
        }
        Packet::PingReq => header(out, 0xC0),
        Packet::PingResp => header(out, 0xD0),
        Packet::Disconnect(d) => {
            header(out, 0xE0);
            if body > 0 {
                out.put_u8(d.reason);
                d.properties.write(out);
            }
        }
        Packet::Auth(a) => {
            header(out, 0xF0);
            out.put_u8(a.reason);
            a.properties.write(out);
        }
    }
}

fn write_ack(out: &mut BytesMut, byte1: u8, a: &Ack, body: usize, v5: bool) {
    out.put_u8(byte1);
    write_vbi(out, body);
    out.put_u16(a.packet_id);
    if v5 && body > 2 {
        out.put_u8(a.reason);
        if body > 3 {
            a.properties.write(out);
        }
    }
}
