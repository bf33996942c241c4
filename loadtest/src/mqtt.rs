//! The wire: MQTT 3.1.1 and 5.0 packets through `mqttbytes`, reduced to
//! what a load-generating client sends and needs to read. `client.rs`
//! calls [`Wire`] to encode into its output buffer and to decode frames
//! from its input buffer.
//!
//! One gap of `mqttbytes` (decision 0001) is bridged here: its MQTT 5
//! decoder refuses a DISCONNECT without reason code (remaining length 0),
//! which is how a server ends a connection normally; such a frame is
//! recognised before the decoder sees it.

use bytes::{Bytes, BytesMut};
use mqttbytes::{v4, v5, QoS};

use crate::plan::Version;

/// The largest packet accepted from a broker.
const MAX_PACKET: usize = 256 * 1024 * 1024 + 1024;

/// What arrived, whatever the protocol version.
#[derive(Debug)]
pub enum Incoming {
    ConnAck {
        code: u8,
    },
    Publish {
        qos: u8,
        pkid: u16,
        payload: Bytes,
    },
    PubAck {
        failed: bool,
    },
    PubRec {
        pkid: u16,
    },
    PubRel {
        pkid: u16,
    },
    SubAck {
        failed: usize,
    },
    PingResp,
    Disconnect {
        reason: u8,
    },
    /// Anything a client does not expect from a server.
    Other,
}

/// Encoder and decoder for one protocol version.
#[derive(Debug, Clone, Copy)]
pub struct Wire {
    pub version: Version,
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Encoding into a `BytesMut` only fails for values a run never builds
/// (strings over 64 KiB, packets over 256 MiB); `plan.rs` bounds them.
fn written(r: Result<usize, mqttbytes::Error>) -> std::io::Result<()> {
    r.map(|_| ())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e:?}")))
}

pub struct ConnectOptions<'a> {
    pub client_id: &'a str,
    pub keepalive: u16,
    pub clean: bool,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub session_expiry: u32,
}

impl Wire {
    pub fn connect(&self, o: &ConnectOptions<'_>, out: &mut BytesMut) -> std::io::Result<()> {
        match self.version {
            Version::V4 => {
                let mut c = v4::Connect::new(o.client_id);
                c.keep_alive = o.keepalive;
                c.clean_session = o.clean;
                if let Some(u) = o.username {
                    c.set_login(u, o.password.unwrap_or(""));
                }
                written(c.write(out))
            }
            Version::V5 => {
                let mut c = v5::Connect::new(o.client_id);
                c.keep_alive = o.keepalive;
                c.clean_session = o.clean;
                if let Some(u) = o.username {
                    c.set_login(u, o.password.unwrap_or(""));
                }
                if o.session_expiry > 0 {
                    c.properties = Some(v5::ConnectProperties {
                        session_expiry_interval: Some(o.session_expiry),
                        receive_maximum: None,
                        max_packet_size: None,
                        topic_alias_max: None,
                        request_response_info: None,
                        request_problem_info: None,
                        user_properties: Vec::new(),
                        authentication_method: None,
                        authentication_data: None,
                    });
                }
                written(c.write(out))
            }
        }
    }

    pub fn subscribe(
        &self,
        pkid: u16,
        filter: &str,
        q: u8,
        out: &mut BytesMut,
    ) -> std::io::Result<()> {
        match self.version {
            Version::V4 => {
                let mut s = v4::Subscribe::new(filter, qos(q));
                s.pkid = pkid;
                written(s.write(out))
            }
            Version::V5 => {
                let mut s = v5::Subscribe::new(filter, qos(q));
                s.pkid = pkid;
                written(s.write(out))
            }
        }
    }

    pub fn publish(
        &self,
        topic: &str,
        q: u8,
        pkid: u16,
        retain: bool,
        payload: Bytes,
        out: &mut BytesMut,
    ) -> std::io::Result<()> {
        match self.version {
            Version::V4 => {
                let mut p = v4::Publish::from_bytes(topic, qos(q), payload);
                p.pkid = pkid;
                p.retain = retain;
                written(p.write(out))
            }
            Version::V5 => {
                let mut p = v5::Publish::from_bytes(topic, qos(q), payload);
                p.pkid = pkid;
                p.retain = retain;
                written(p.write(out))
            }
        }
    }

    pub fn puback(&self, pkid: u16, out: &mut BytesMut) -> std::io::Result<()> {
        match self.version {
            Version::V4 => written(v4::PubAck::new(pkid).write(out)),
            Version::V5 => written(v5::PubAck::new(pkid).write(out)),
        }
    }

    pub fn pubrec(&self, pkid: u16, out: &mut BytesMut) -> std::io::Result<()> {
        match self.version {
            Version::V4 => written(v4::PubRec::new(pkid).write(out)),
            Version::V5 => written(v5::PubRec::new(pkid).write(out)),
        }
    }

    pub fn pubrel(&self, pkid: u16, out: &mut BytesMut) -> std::io::Result<()> {
        match self.version {
            Version::V4 => written(v4::PubRel::new(pkid).write(out)),
            Version::V5 => written(v5::PubRel::new(pkid).write(out)),
        }
    }

    pub fn pubcomp(&self, pkid: u16, out: &mut BytesMut) -> std::io::Result<()> {
        match self.version {
            Version::V4 => written(v4::PubComp::new(pkid).write(out)),
            Version::V5 => written(v5::PubComp::new(pkid).write(out)),
        }
    }

    pub fn pingreq(&self, out: &mut BytesMut) -> std::io::Result<()> {
        match self.version {
            Version::V4 => written(v4::PingReq.write(out)),
            Version::V5 => written(v5::PingReq.write(out)),
        }
    }

    pub fn disconnect(&self, out: &mut BytesMut) -> std::io::Result<()> {
        match self.version {
            Version::V4 => written(v4::Disconnect.write(out)),
            Version::V5 => written(v5::Disconnect::new().write(out)),
        }
    }

    /// The next whole packet in `buf`, removed from it; `Ok(None)` when
    /// more bytes are needed. An error is a protocol violation by the
    /// broker (or a decoder gap), and ends the connection.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Incoming>, String> {
        if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
            let _ = buf.split_to(2);
            return Ok(Some(Incoming::Disconnect { reason: 0 }));
        }
        let packet = match self.version {
            Version::V4 => match v4::read(buf, MAX_PACKET) {
                Ok(p) => from_v4(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
                Err(e) => return Err(format!("{e:?}")),
            },
            Version::V5 => match v5::read(buf, MAX_PACKET) {
                Ok(p) => from_v5(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
                Err(e) => return Err(format!("{e:?}")),
            },
        };
        Ok(Some(packet))
    }
}

fn from_v4(p: v4::Packet) -> Incoming {
    match p {
        v4::Packet::ConnAck(a) => Incoming::ConnAck { code: a.code as u8 },
        v4::Packet::Publish(p) => Incoming::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            payload: p.payload,
        },
        v4::Packet::PubAck(_) => Incoming::PubAck { failed: false },
        v4::Packet::PubRec(r) => Incoming::PubRec { pkid: r.pkid },
        v4::Packet::PubRel(r) => Incoming::PubRel { pkid: r.pkid },
        v4::Packet::SubAck(a) => Incoming::SubAck {
            failed: a
                .return_codes
                .iter()
                .filter(|c| matches!(c, v4::SubscribeReasonCode::Failure))
                .count(),
        },
        v4::Packet::PingResp => Incoming::PingResp,
        _ => Incoming::Other,
    }
}

fn from_v5(p: v5::Packet) -> Incoming {
    match p {
        v5::Packet::ConnAck(a) => Incoming::ConnAck { code: a.code as u8 },
        v5::Packet::Publish(p) => Incoming::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            payload: p.payload,
        },
        v5::Packet::PubAck(a) => Incoming::PubAck {
            failed: a.reason as u8 >= 0x80,
        },
        v5::Packet::PubRec(r) => Incoming::PubRec { pkid: r.pkid },
        v5::Packet::PubRel(r) => Incoming::PubRel { pkid: r.pkid },
        v5::Packet::SubAck(a) => Incoming::SubAck {
            failed: a.return_codes.iter().filter(|c| **c as u8 >= 0x80).count(),
        },
        v5::Packet::PingResp => Incoming::PingResp,
        v5::Packet::Disconnect(d) => Incoming::Disconnect {
            reason: d.reason_code as u8,
        },
        _ => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_round_trip_in_both_versions_and_a_short_disconnect_decodes() {
        for version in [Version::V4, Version::V5] {
            let w = Wire { version };
            let mut buf = BytesMut::new();
            w.publish(
                "a/b",
                1,
                7,
                false,
                Bytes::from_static(b"0123456789abcdef"),
                &mut buf,
            )
            .expect("encode");
            let half = buf.split_to(5);
            let mut partial = half.clone();
            assert!(w.decode(&mut partial).expect("ok").is_none(), "{version:?}");
            let mut whole = half;
            whole.extend_from_slice(&buf);
            match w.decode(&mut whole).expect("ok") {
                Some(Incoming::Publish {
                    qos: 1,
                    pkid: 7,
                    payload,
                }) => {
                    assert_eq!(&payload[..], b"0123456789abcdef")
                }
                other => panic!("{version:?}: {other:?}"),
            }
            assert!(whole.is_empty());
            let mut d = BytesMut::from(&[0xE0u8, 0][..]);
            assert!(matches!(
                w.decode(&mut d),
                Ok(Some(Incoming::Disconnect { reason: 0 }))
            ));
        }
    }
}
