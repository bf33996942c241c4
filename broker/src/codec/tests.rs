//! Codec unit tests: round trips in every protocol version and the strict
//! rejections that the integration tests exercise over sockets.

use bytes::{Bytes, BytesMut};

use super::*;

fn roundtrip(p: Packet, protocol: Protocol) -> Packet {
    let mut buf = BytesMut::new();
    encode(&p, protocol, &mut buf);
    assert_eq!(buf.len(), encoded_len(&p, protocol), "{}", p.name());
    let level = if matches!(p, Packet::Connect(_)) {
        None
    } else {
        Some(protocol)
    };
    let out = decode(&mut buf, level, usize::MAX)
        .expect("decodes")
        .expect("complete");
    assert!(buf.is_empty());
    out
}

fn props() -> Properties {
    Properties {
        user_properties: vec![("k".into(), "v".into())],
        reason_string: Some("why".into()),
        ..Properties::default()
    }
}

#[test]
fn every_packet_round_trips_in_v5() {
    let connect = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: "c1".into(),
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(5),
                ..Properties::default()
            },
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(&[0xff, 0])),
        properties: Properties {
            session_expiry_interval: Some(60),
            receive_maximum: Some(10),
            ..Properties::default()
        },
    }));
    let publish = Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: 7,
        properties: Properties {
            subscription_identifiers: vec![1, 300],
            user_properties: vec![("x".into(), "y".into())],
            message_expiry_interval: Some(9),
            ..Properties::default()
        },
        payload: Bytes::from_static(b"hello"),
    });
    let mut ack = Ack::new(3, reason::NO_MATCHING_SUBSCRIBERS);
    ack.properties = props();
    let packets = vec![
        connect,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: 0,
            properties: props(),
        }),
        publish,
        Packet::PubAck(Ack::new(1, 0)),
        Packet::PubRec(ack.clone()),
        Packet::PubRel(Ack::new(1, reason::PACKET_IDENTIFIER_NOT_FOUND)),
        Packet::PubComp(ack),
        Packet::Subscribe(Subscribe {
            packet_id: 2,
            filters: vec![(
                "a/+".into(),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            )],
            properties: Properties {
                subscription_identifiers: vec![5],
                ..Properties::default()
            },
        }),
        Packet::SubAck(SubAck {
            packet_id: 2,
            reasons: vec![0, 1, 0x87],
            properties: props(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 4,
            filters: vec!["a".into(), "b/#".into()],
            properties: Properties::default(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 4,
            reasons: vec![0, 0x11],
            properties: Properties::default(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::new(0)),
        Packet::Disconnect(Disconnect {
            reason: reason::SESSION_TAKEN_OVER,
            properties: props(),
        }),
        Packet::Auth(Auth {
            reason: reason::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some("x".into()),
                ..Properties::default()
            },
        }),
    ];
    for p in packets {
        assert_eq!(roundtrip(p.clone(), Protocol::V5), p);
    }
}

#[test]
fn v311_drops_properties_and_maps_codes() {
    let mut buf = BytesMut::new();
    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        reasons: vec![1, reason::NOT_AUTHORIZED],
        properties: props(),
    });
    encode(&suback, Protocol::V311, &mut buf);
    assert_eq!(&buf[..], &[0x90, 4, 0, 1, 1, 0x80]);
    buf.clear();
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: reason::BAD_USER_NAME_OR_PASSWORD,
        properties: props(),
    });
    encode(&connack, Protocol::V311, &mut buf);
    assert_eq!(&buf[..], &[0x20, 2, 0, 4]);
    buf.clear();
    encode(&Packet::PubAck(Ack::new(9, 0x10)), Protocol::V311, &mut buf);
    assert_eq!(&buf[..], &[0x40, 2, 0, 9]);
}

#[test]
fn v31_connect_round_trips() {
    let c = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V31,
        clean_start: true,
        keep_alive: 10,
        client_id: "old".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    assert_eq!(roundtrip(c.clone(), Protocol::V31), c);
}

fn decode_bytes(bytes: &[u8], protocol: Option<Protocol>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, protocol, 1 << 20)
}

#[test]
fn partial_packets_need_more_bytes() {
    let full = [0x30, 5, 0, 1, b'a', b'h', b'i'];
    for n in 0..full.len() {
        assert_eq!(
            decode_bytes(&full[..n], Some(Protocol::V311)),
            Ok(None),
            "{n}"
        );
    }
    assert!(decode_bytes(&full, Some(Protocol::V311))
        .expect("ok")
        .is_some());
}

#[test]
fn strict_rejections() {
    let v4 = Some(Protocol::V311);
    let v5 = Some(Protocol::V5);
    let cases: Vec<(&[u8], Option<Protocol>, u8)> = vec![
        // remaining length with 5 bytes
        (
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            v4,
            reason::MALFORMED_PACKET,
        ),
        // SUBSCRIBE with flags 0 instead of 2
        (
            &[0x80, 6, 0, 1, 0, 1, b'a', 0],
            v4,
            reason::MALFORMED_PACKET,
        ),
        // PINGREQ with a flag bit
        (&[0xC1, 0], v4, reason::MALFORMED_PACKET),
        // QoS 3 publish
        (&[0x36, 5, 0, 1, b'a', 0, 1], v4, reason::MALFORMED_PACKET),
        // invalid UTF-8 topic
        (&[0x30, 4, 0, 2, 0xC3, 0x28], v4, reason::MALFORMED_PACKET),
        // U+0000 in topic
        (&[0x30, 3, 0, 1, 0], v4, reason::MALFORMED_PACKET),
        // QoS 1 publish with packet id 0
        (&[0x32, 5, 0, 1, b'a', 0, 0], v4, reason::MALFORMED_PACKET),
        // packet type 0
        (&[0x00, 0], v4, reason::MALFORMED_PACKET),
        // AUTH in 3.1.1
        (&[0xF0, 0], v4, reason::MALFORMED_PACKET),
        // truncated string inside a complete frame
        (&[0x30, 3, 0, 9, b'a'], v4, reason::MALFORMED_PACKET),
        // PUBACK with a property not allowed there (topic alias 0x23)
        (
            &[0x40, 7, 0, 1, 0, 3, 0x23, 0, 1],
            v5,
            reason::PROTOCOL_ERROR,
        ),
        // PUBLISH with a duplicated message expiry
        (
            &[0x30, 14, 0, 1, b'a', 10, 2, 0, 0, 0, 1, 2, 0, 0, 0, 1],
            v5,
            reason::PROTOCOL_ERROR,
        ),
        // SUBSCRIBE without filters
        (&[0x82, 2, 0, 1], v4, reason::PROTOCOL_ERROR),
        // SUBSCRIBE with reserved option bits
        (
            &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40],
            v5,
            reason::MALFORMED_PACKET,
        ),
        // DISCONNECT with a body in 3.1.1
        (&[0xE0, 1, 0], v4, reason::MALFORMED_PACKET),
        // bytes after the end of a PINGREQ
        (&[0xC0, 1, 0], v4, reason::MALFORMED_PACKET),
        // CONNECT with the reserved flag set
        (
            &[
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 60, 0, 0, 0,
            ],
            None,
            reason::MALFORMED_PACKET,
        ),
    ];
    for (bytes, protocol, code) in cases {
        let err = decode_bytes(bytes, protocol).expect_err("must be rejected");
        assert_eq!(err.reason(), code, "{bytes:02x?}: {err}");
    }
}

#[test]
fn oversized_packets_are_refused_from_the_header() {
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x01][..]);
    let err = decode(&mut buf, Some(Protocol::V311), 1024).expect_err("too large");
    assert_eq!(err.reason(), reason::PACKET_TOO_LARGE);
}

#[test]
fn v5_short_forms_decode() {
    // DISCONNECT with no body, PUBACK with only a packet id.
    assert_eq!(
        decode_bytes(&[0xE0, 0], Some(Protocol::V5)),
        Ok(Some(Packet::Disconnect(Disconnect::new(0))))
    );
    assert_eq!(
        decode_bytes(&[0x40, 2, 0, 5], Some(Protocol::V5)),
        Ok(Some(Packet::PubAck(Ack::new(5, 0))))
    );
}

#[test]
fn unsupported_protocol_reports_level() {
    let bytes = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 10];
    match decode_bytes(&bytes, None) {
        Err(DecodeError::UnsupportedProtocol { level: 9, .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
}
