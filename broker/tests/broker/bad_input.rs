use std::time::Duration;

use porchlight_broker::codec::{reason, Packet, Protocol};
use porchlight_broker::metrics::BadPacket;

use crate::support::*;

struct Case {
    name: &'static str,
    /// Protocol to CONNECT with first; `None` sends the bytes first.
    connect: Option<Protocol>,
    bytes: &'static [u8],
    /// The v5 DISCONNECT reason expected before the close.
    disconnect: Option<u8>,
    counted: BadPacket,
}

const CASES: &[Case] = &[
    Case {
        name: "remaining length over four bytes",
        connect: Some(Protocol::V5),
        bytes: &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        disconnect: Some(reason::MALFORMED_PACKET),
        counted: BadPacket::Malformed,
    },
    Case {
        name: "reserved flag bits on SUBSCRIBE",
        connect: Some(Protocol::V311),
        bytes: &[0x80, 6, 0, 1, 0, 1, b'a', 0],
        disconnect: None,
        counted: BadPacket::Malformed,
    },
    Case {
        name: "invalid UTF-8 in a topic",
        connect: Some(Protocol::V5),
        bytes: &[0x30, 5, 0, 2, 0xC3, 0x28, 0],
        disconnect: Some(reason::MALFORMED_PACKET),
        counted: BadPacket::Malformed,
    },
    Case {
        name: "wildcard in a PUBLISH topic",
        connect: Some(Protocol::V5),
        bytes: &[0x30, 6, 0, 3, b'a', b'/', b'#', 0],
        disconnect: Some(reason::TOPIC_NAME_INVALID),
        counted: BadPacket::ProtocolError,
    },
    Case {
        name: "packet id 0 on a QoS 1 PUBLISH",
        connect: Some(Protocol::V311),
        bytes: &[0x32, 5, 0, 1, b'a', 0, 0],
        disconnect: None,
        counted: BadPacket::Malformed,
    },
    Case {
        name: "packet type 0",
        connect: Some(Protocol::V5),
        bytes: &[0x00, 0],
        disconnect: Some(reason::MALFORMED_PACKET),
        counted: BadPacket::Malformed,
    },
    Case {
        name: "bytes after the end of a packet",
        connect: Some(Protocol::V311),
        bytes: &[0xC0, 1, 0],
        disconnect: None,
        counted: BadPacket::Malformed,
    },
    Case {
        name: "QoS 0 payload that is not the UTF-8 its format indicator says",
        connect: Some(Protocol::V5),
        bytes: &[0x30, 8, 0, 1, b'a', 2, 0x01, 1, 0xFF, 0xFE],
        disconnect: Some(reason::PAYLOAD_FORMAT_INVALID),
        counted: BadPacket::ProtocolError,
    },
    Case {
        name: "unknown packet type",
        connect: Some(Protocol::V311),
        bytes: &[0xF0, 0],
        disconnect: None,
        counted: BadPacket::Malformed,
    },
    Case {
        name: "truncated field inside a packet",
        connect: Some(Protocol::V5),
        bytes: &[0x30, 3, 0, 9, b'a'],
        disconnect: Some(reason::MALFORMED_PACKET),
        counted: BadPacket::Malformed,
    },
    Case {
        name: "property not allowed in PUBACK",
        connect: Some(Protocol::V5),
        bytes: &[0x40, 7, 0, 1, 0, 3, 0x23, 0, 1],
        disconnect: Some(reason::PROTOCOL_ERROR),
        counted: BadPacket::ProtocolError,
    },
    Case {
        name: "subscription identifier in a client PUBLISH",
        connect: Some(Protocol::V5),
        bytes: &[0x30, 6, 0, 1, b'a', 2, 0x0B, 1],
        disconnect: Some(reason::PROTOCOL_ERROR),
        counted: BadPacket::ProtocolError,
    },
    Case {
        name: "second CONNECT",
        connect: Some(Protocol::V5),
        bytes: &[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 0],
        disconnect: Some(reason::PROTOCOL_ERROR),
        counted: BadPacket::ProtocolError,
    },
    Case {
        name: "packet before CONNECT",
        connect: None,
        bytes: &[0xC0, 0],
        disconnect: None,
        counted: BadPacket::NotConnectFirst,
    },
    Case {
        name: "server-only packet from a client",
        connect: Some(Protocol::V5),
        bytes: &[0xD0, 0],
        disconnect: Some(reason::PROTOCOL_ERROR),
        counted: BadPacket::ProtocolError,
    },
    Case {
        name: "malformed CONNECT",
        connect: None,
        bytes: &[0x10, 4, 0, 9, b'M', b'Q'],
        disconnect: None,
        counted: BadPacket::Malformed,
    },
    Case {
        name: "an HTTP request on the MQTT port",
        connect: None,
        bytes: b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n",
        disconnect: None,
        counted: BadPacket::NotConnectFirst,
    },
    Case {
        name: "CONNECT with a protocol name that is not MQTT",
        connect: None,
        bytes: &[0x10, 12, 0, 4, b'H', b'T', b'T', b'P'],
        disconnect: None,
        counted: BadPacket::Malformed,
    },
    Case {
        name: "wildcard in a PUBLISH Response Topic",
        connect: Some(Protocol::V5),
        // PUBLISH "a", properties: Response Topic "reply/+".
        bytes: &[
            0x30, 14, 0, 1, b'a', 10, 0x08, 0, 7, b'r', b'e', b'p', b'l', b'y', b'/', b'+',
        ],
        disconnect: Some(reason::PROTOCOL_ERROR),
        counted: BadPacket::ProtocolError,
    },
];

/// A new client can still publish and subscribe.
async fn broker_still_serves(b: &TestBroker) {
    let mut s = RawClient::connect(b.addr, Protocol::V311, "after-sub").await;
    s.subscribe("after", q(0)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "after-pub").await;
    p.publish("after", q(0), 0, b"still here").await;
    assert_eq!(&s.expect_publish().await.payload[..], b"still here");
}

#[tokio::test]
async fn each_bad_input_closes_only_its_connection() {
    let b = TestBroker::start().await;
    // A bystander connected throughout must be undisturbed.
    let mut bystander = RawClient::connect(b.addr, Protocol::V5, "bystander").await;
    bystander.subscribe("bystander", q(0)).await;
    for case in CASES {
        let before = b.broker.metrics.bad_packet_count(case.counted);
        let mut c = match case.connect {
            Some(p) => RawClient::connect(b.addr, p, "offender").await,
            None => RawClient::open(b.addr, Protocol::V311).await,
        };
        c.send_bytes(case.bytes).await;
        match c.recv().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(Some(d.reason), case.disconnect, "{}", case.name);
                assert_eq!(c.recv().await, None, "{}: closed", case.name);
            }
            None => assert_eq!(case.disconnect, None, "{}: expected DISCONNECT", case.name),
            other => panic!("{}: unexpected {other:?}", case.name),
        }
        wait_until(case.name, || {
            b.broker.metrics.bad_packet_count(case.counted) == before + 1
        })
        .await;
        broker_still_serves(&b).await;
        let mut p = RawClient::connect(b.addr, Protocol::V311, "bystander-pub").await;
        p.publish("bystander", q(0), 0, b"ok").await;
        assert_eq!(
            &bystander.expect_publish().await.payload[..],
            b"ok",
            "{}",
            case.name
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn connect_must_arrive_within_the_timeout() {
    let b = TestBroker::with(|c| c.connect_timeout = Duration::from_millis(300)).await;
    let mut c = RawClient::open(b.addr, Protocol::V311).await;
    let start = tokio::time::Instant::now();
    assert_eq!(c.recv().await, None);
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        b.broker.metrics.bad_packet_count(BadPacket::ConnectTimeout),
        1
    );
    // A half-sent CONNECT is bounded by the same timeout.
    let mut c = RawClient::open(b.addr, Protocol::V311).await;
    c.send_bytes(&[0x10, 20, 0, 4]).await;
    assert_eq!(c.recv().await, None);
    broker_still_serves(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn first_bytes_that_cannot_start_a_connect_close_at_once() {
    // Issue 16 item 5: these used to hold the connection for the whole
    // connect timeout.
    let b = TestBroker::with(|c| c.connect_timeout = Duration::from_secs(60)).await;
    let cases: [&[u8]; 4] = [
        b"G",
        b"GET /mqtt HTTP/1.1\r\n",
        &[0x10, 3, 0, 4, b'M'],
        &[0x10, 30, 0, 4, b'M', b'Q', b'X'],
    ];
    for bytes in cases {
        let mut c = RawClient::open(b.addr, Protocol::V311).await;
        c.send_bytes(bytes).await;
        let closed = c.recv_within(Duration::from_secs(3)).await;
        assert_eq!(closed, Ok(None), "{bytes:?}: closed at once");
    }
    broker_still_serves(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn a_will_whose_response_topic_has_wildcards_is_a_protocol_error() {
    // [MQTT-3.3.2-14], in the will properties too (issue 16 item 4).
    let b = TestBroker::start().await;
    for bad in ["resp+t/#", "reply/+", ""] {
        let mut c = connect_packet(Protocol::V5, "will-rt", true, 60);
        c.will = Some(porchlight_broker::codec::Will {
            topic: "will/rt".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: q(0),
            retain: false,
            properties: porchlight_broker::codec::Properties {
                response_topic: Some(bad.into()),
                ..Default::default()
            },
        });
        let mut raw = RawClient::open(b.addr, Protocol::V5).await;
        raw.send(&Packet::Connect(Box::new(c))).await;
        match raw.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason, reason::PROTOCOL_ERROR, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
        assert_eq!(raw.recv().await, None);
    }
    // A proper one is accepted and forwarded.
    let mut s = RawClient::connect(b.addr, Protocol::V5, "rt-sub").await;
    s.subscribe("rt", q(0)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "rt-pub").await;
    let mut m = publish("rt", q(0), 0, b"x");
    m.properties.response_topic = Some("reply/rt-pub".into());
    p.send(&Packet::Publish(m)).await;
    let got = s.expect_publish().await;
    assert_eq!(
        got.properties.response_topic.as_deref(),
        Some("reply/rt-pub")
    );
    b.stop().await;
}

#[tokio::test]
async fn unsupported_protocol_version_gets_the_right_connack() {
    let b = TestBroker::start().await;
    // Level 6 under "MQTT": 3.1.1-format CONNACK with return code 1.
    let mut c = RawClient::open(b.addr, Protocol::V311).await;
    c.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 0])
        .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv().await, None);
    broker_still_serves(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn garbage_floods_do_not_disturb_the_broker() {
    let b = TestBroker::start().await;
    // Bounded: 50 connections of pseudo-random bytes.
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..50 {
        let mut bytes = vec![0u8; 64];
        for byte in bytes.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *byte = seed as u8;
        }
        let mut c = RawClient::open(b.addr, Protocol::V311).await;
        c.send_bytes(&bytes).await;
        drop(c);
    }
    broker_still_serves(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn malformed_connect_gets_connack_in_v5_and_a_close_in_v3() {
    let b = TestBroker::start().await;
    // Reserved CONNECT flag set: v5 is told 0x81, 3.1.1 is just closed.
    let mut c = RawClient::open(b.addr, Protocol::V5).await;
    c.send_bytes(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 60, 0, 0, 0,
    ])
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason, reason::MALFORMED_PACKET),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv().await, None);
    let mut c = RawClient::open(b.addr, Protocol::V311).await;
    c.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 0])
        .await;
    assert_eq!(c.recv().await, None);
    assert_eq!(b.broker.metrics.bad_packet_count(BadPacket::Malformed), 2);
    broker_still_serves(&b).await;
    b.stop().await;
}
