use std::time::Duration;

use porchlight_broker::codec::{reason, Ack, Auth, Packet, Properties, Protocol};
use porchlight_broker::metrics::{BadPacket, DropReason};

use crate::support::*;

#[tokio::test]
async fn topic_aliases_are_accepted_up_to_our_maximum() {
    let b = TestBroker::with(|c| c.topic_alias_maximum = 2).await;
    let mut s = RawClient::connect(b.addr, Protocol::V311, "alias-sub").await;
    s.subscribe("alias/#", q(0)).await;
    let (mut p, ack) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V5, "alias-pub", true, 60)).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(2));
    let mut m = publish("alias/long/topic", q(0), 0, b"1");
    m.properties.topic_alias = Some(1);
    p.send(&Packet::Publish(m)).await;
    let mut m = publish("", q(0), 0, b"2");
    m.properties.topic_alias = Some(1);
    p.send(&Packet::Publish(m)).await;
    for expected in [&b"1"[..], b"2"] {
        let got = s.expect_publish().await;
        assert_eq!(&got.topic, "alias/long/topic");
        assert_eq!(&got.payload[..], expected);
    }
    // Alias above the maximum: DISCONNECT 0x94.
    let mut m = publish("alias/x", q(0), 0, b"3");
    m.properties.topic_alias = Some(3);
    p.send(&Packet::Publish(m)).await;
    p.expect_disconnect(Some(reason::TOPIC_ALIAS_INVALID)).await;
    // Unknown alias with empty topic: protocol error.
    let mut p = RawClient::connect(b.addr, Protocol::V5, "alias-pub2").await;
    let mut m = publish("", q(0), 0, b"4");
    m.properties.topic_alias = Some(2);
    p.send(&Packet::Publish(m)).await;
    p.expect_disconnect(Some(reason::PROTOCOL_ERROR)).await;
    b.stop().await;
}

#[tokio::test]
async fn client_exceeding_our_receive_maximum_is_disconnected() {
    let b = TestBroker::with(|c| c.receive_maximum = 2).await;
    let (mut p, ack) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V5, "greedy", true, 60)).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for id in 1..=3u16 {
        p.publish("rm", q(2), id, b"x").await;
    }
    assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    p.expect_disconnect(Some(reason::RECEIVE_MAXIMUM_EXCEEDED))
        .await;
    assert_eq!(
        b.broker
            .metrics
            .bad_packet_count(BadPacket::ReceiveMaximumExceeded),
        1
    );
    b.stop().await;
}

#[tokio::test]
async fn receive_maximum_is_not_applied_to_v311_clients() {
    let b = TestBroker::with(|c| c.receive_maximum = 2).await;
    let mut p = RawClient::connect(b.addr, Protocol::V311, "v3-many").await;
    for id in 1..=3u16 {
        p.publish("rm3", q(2), id, b"x").await;
    }
    for _ in 0..3 {
        assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    }
    b.stop().await;
}

#[tokio::test]
async fn redelivery_on_resume_respects_the_new_receive_maximum() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "resume-rm", false, 60);
    c.properties.session_expiry_interval = Some(60);
    c.properties.receive_maximum = Some(3);
    let (mut s, _) = RawClient::connect_with(b.addr, c.clone()).await;
    s.subscribe("rr", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "rr-pub").await;
    for id in 1..=3u16 {
        p.publish("rr", q(1), id, b"m").await;
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(s.expect_publish().await.packet_id);
    }
    drop(s);
    c.properties.receive_maximum = Some(1);
    b.wait_offline("resume-rm").await;
    let (mut s, ack) = RawClient::connect_with(b.addr, c).await;
    assert!(ack.session_present);
    for expected in first {
        let m = s.expect_publish().await;
        assert!(m.dup);
        assert_eq!(m.packet_id, expected, "original order and id");
        s.expect_silence(Duration::from_millis(200)).await;
        s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn we_never_exceed_the_clients_receive_maximum() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "slow", true, 60);
    c.properties.receive_maximum = Some(2);
    let (mut s, _) = RawClient::connect_with(b.addr, c).await;
    s.subscribe("rx", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "rx-pub").await;
    for id in 1..=5u16 {
        p.publish("rx", q(1), id, b"m").await;
    }
    let a = s.expect_publish().await;
    let _b2 = s.expect_publish().await;
    s.expect_silence(Duration::from_millis(300)).await;
    s.send(&Packet::PubAck(Ack::new(a.packet_id, 0))).await;
    let _c3 = s.expect_publish().await;
    s.expect_silence(Duration::from_millis(300)).await;
    b.stop().await;
}

#[tokio::test]
async fn maximum_packet_size_both_ways() {
    let b = TestBroker::with(|c| c.max_packet_size = 2048).await;
    // Oversize from the client: DISCONNECT 0x95.
    let mut p = RawClient::connect(b.addr, Protocol::V5, "big").await;
    let big: &'static [u8] = Box::leak(vec![0u8; 4096].into_boxed_slice());
    p.publish("size", q(0), 0, big).await;
    p.expect_disconnect(Some(reason::PACKET_TOO_LARGE)).await;
    assert_eq!(b.broker.metrics.bad_packet_count(BadPacket::TooLarge), 1);

    // To a client with a small Maximum Packet Size: dropped and counted.
    let mut c = connect_packet(Protocol::V5, "small", true, 60);
    c.properties.maximum_packet_size = Some(64);
    let (mut s, _) = RawClient::connect_with(b.addr, c.clone()).await;
    s.subscribe("size", q(0)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "sender").await;
    let medium: &'static [u8] = Box::leak(vec![1u8; 200].into_boxed_slice());
    p.publish("size", q(0), 0, medium).await;
    p.publish("size", q(0), 0, b"fits").await;
    assert_eq!(&s.expect_publish().await.payload[..], b"fits");
    assert_eq!(
        b.broker.metrics.dropped_count(DropReason::PacketTooLarge),
        1
    );

    // A DISCONNECT that would not fit loses its reason string, not its
    // reason code.
    c.client_id = "tiny".into();
    c.properties.maximum_packet_size = Some(8);
    let (mut t, _) = RawClient::connect_with(b.addr, c).await;
    t.send_bytes(&[0xF0, 0]).await; // AUTH out of place: protocol error
    match t.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, reason::PROTOCOL_ERROR);
            assert_eq!(d.properties.reason_string, None);
        }
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn one_mib_payload_fits_by_default() {
    let b = TestBroker::start().await;
    let mut opts = rumqttc::MqttOptions::new("mib-sub", b.addr.ip().to_string(), b.addr.port());
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let mut s = V4::connect_opts(opts).await;
    s.client
        .subscribe("mib", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("sub");
    s.suback().await;
    let mut opts = rumqttc::MqttOptions::new("mib-pub", b.addr.ip().to_string(), b.addr.port());
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let p = V4::connect_opts(opts).await;
    let payload = vec![7u8; 1 << 20];
    p.client
        .publish("mib", rumqttc::QoS::AtLeastOnce, false, payload.clone())
        .await
        .expect("publish");
    let got = s.next_publish().await;
    assert_eq!(got.payload.len(), 1 << 20);
    b.stop().await;
}

#[tokio::test]
async fn expired_messages_are_never_delivered() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "exp-offline", false, 60);
    c.properties.session_expiry_interval = Some(60);
    let (mut s, _) = RawClient::connect_with(b.addr, c.clone()).await;
    s.subscribe("ttl", q(1)).await;
    drop(s);
    let mut p = RawClient::connect(b.addr, Protocol::V5, "ttl-pub").await;
    let mut short = publish("ttl", q(1), 1, b"short");
    short.properties.message_expiry_interval = Some(1);
    p.send(&Packet::Publish(short)).await;
    let mut long = publish("ttl", q(1), 2, b"long");
    long.properties.message_expiry_interval = Some(100);
    p.send(&Packet::Publish(long)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (mut s, _) = RawClient::connect_with(b.addr, c).await;
    let got = s.expect_publish().await;
    assert_eq!(&got.payload[..], b"long");
    let left = got
        .properties
        .message_expiry_interval
        .expect("remaining expiry");
    assert!(
        left <= 99 && left > 90,
        "remaining interval forwarded: {left}"
    );
    assert_eq!(b.broker.metrics.dropped_count(DropReason::Expired), 1);
    b.stop().await;
}

#[tokio::test]
async fn keepalive_is_enforced_at_one_and_a_half_times() {
    let b = TestBroker::start().await;
    let (mut c, _) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V5, "sleepy", true, 1)).await;
    let start = tokio::time::Instant::now();
    c.expect_disconnect(Some(reason::KEEP_ALIVE_TIMEOUT)).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early: {waited:?}"
    );
    // A client that pings stays connected.
    let (mut c, _) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V311, "pinger", true, 1)).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Some(Packet::PingResp));
    }
    b.stop().await;
}

#[tokio::test]
async fn server_keep_alive_when_client_asks_more_than_the_maximum() {
    let b = TestBroker::with(|c| c.max_keepalive = 30).await;
    let (_c, ack) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V5, "ka", true, 600)).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let (_c, ack) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V5, "ka0", true, 0)).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let (_c, ack) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V5, "ka10", true, 10)).await;
    assert_eq!(ack.properties.server_keep_alive, None);
    // 3.1.1 cannot be told: refused like Mosquitto does.
    let mut c = RawClient::open(b.addr, Protocol::V311).await;
    c.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V311,
        "ka3",
        true,
        600,
    ))))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.reason == 2));
    b.stop().await;
}

#[tokio::test]
async fn auth_is_rejected_cleanly_without_enhanced_authentication() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "auth", true, 60);
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let mut raw = RawClient::open(b.addr, Protocol::V5).await;
    raw.send(&Packet::Connect(Box::new(c))).await;
    match raw.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason, reason::BAD_AUTHENTICATION_METHOD),
        other => panic!("{other:?}"),
    }
    assert_eq!(raw.recv().await, None);
    // AUTH after a plain CONNECT: protocol error.
    let mut raw = RawClient::connect(b.addr, Protocol::V5, "auth2").await;
    raw.send(&Packet::Auth(Auth {
        reason: reason::CONTINUE_AUTHENTICATION,
        properties: Properties::default(),
    }))
    .await;
    raw.expect_disconnect(Some(reason::PROTOCOL_ERROR)).await;
    b.stop().await;
}

#[tokio::test]
async fn topic_length_and_level_limits() {
    let b = TestBroker::with(|c| {
        c.max_topic_levels = 3;
        c.max_topic_length = 16;
    })
    .await;
    let mut c = RawClient::connect(b.addr, Protocol::V5, "limits").await;
    c.send(&Packet::Subscribe(porchlight_broker::codec::Subscribe {
        packet_id: 1,
        filters: vec![
            (
                "a/b/c".into(),
                porchlight_broker::codec::SubscriptionOptions::new(q(0)),
            ),
            (
                "a/b/c/d".into(),
                porchlight_broker::codec::SubscriptionOptions::new(q(0)),
            ),
            (
                "this/is/too/long/for/it".into(),
                porchlight_broker::codec::SubscriptionOptions::new(q(0)),
            ),
        ],
        properties: Properties::default(),
    }))
    .await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => assert_eq!(
            s.reasons,
            vec![
                0,
                reason::TOPIC_FILTER_INVALID,
                reason::TOPIC_FILTER_INVALID
            ]
        ),
        other => panic!("{other:?}"),
    }
    c.publish("a/b/c/d", q(0), 0, b"deep").await;
    c.expect_disconnect(Some(reason::TOPIC_NAME_INVALID)).await;
    b.stop().await;
}

#[tokio::test]
async fn payload_format_indicator_is_checked() {
    let b = TestBroker::start().await;
    let mut s = RawClient::connect(b.addr, Protocol::V5, "pfi-sub").await;
    s.subscribe("pfi", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "pfi-pub").await;
    let mut bad = publish("pfi", q(1), 1, &[0xFF, 0xFE]);
    bad.properties.payload_format_indicator = Some(1);
    p.send(&Packet::Publish(bad)).await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubAck(a)) if a.reason == reason::PAYLOAD_FORMAT_INVALID)
    );
    let mut good = publish("pfi", q(1), 2, "é".as_bytes());
    good.properties.payload_format_indicator = Some(1);
    good.properties.content_type = Some("text/plain".into());
    p.send(&Packet::Publish(good)).await;
    let got = s.expect_publish().await;
    assert_eq!(got.payload, "é".as_bytes());
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.properties.payload_format_indicator, Some(1));
    b.stop().await;
}

/// A broker with 2 messages in flight and 4 queued per session, and flow
/// control waits of `wait`.
async fn small_queues(wait: Duration) -> TestBroker {
    TestBroker::with(|c| {
        c.max_inflight = 2;
        c.max_queued_messages = 4;
        c.publish_backpressure = Some(wait);
    })
    .await
}

/// Sends `n` QoS 1 publishes to `topic` in one write; payloads are the
/// packet ids.
async fn burst(p: &mut RawClient, topic: &str, n: u16) {
    tagged_burst(p, topic, 1, 0, n).await;
}

/// PUBACKs that arrive before `quiet` passes without one.
async fn pubacks(p: &mut RawClient, quiet: Duration) -> usize {
    let mut n = 0;
    while let Ok(Some(Packet::PubAck(_))) = p.recv_within(quiet).await {
        n += 1;
    }
    n
}

#[tokio::test]
async fn a_full_subscriber_queue_slows_the_publisher_instead_of_dropping() {
    for flow_control in [true, false] {
        let b = TestBroker::with(|c| {
            c.max_inflight = 2;
            c.max_queued_messages = 4;
            c.publish_backpressure = flow_control.then(|| Duration::from_secs(30));
        })
        .await;
        let mut s = RawClient::connect(b.addr, Protocol::V311, "bp-sub").await;
        s.subscribe("bp/t", q(1)).await;
        let mut p = RawClient::connect(b.addr, Protocol::V311, "bp-pub").await;
        // 30 messages at once; the subscriber reads nothing yet.
        burst(&mut p, "bp/t", 30).await;
        let early = pubacks(&mut p, Duration::from_millis(500)).await;
        if flow_control {
            // 2 in flight + a queue of 4 (+ the one that filled it).
            assert!(early <= 8, "publisher not held: {early} PUBACKs");
        } else {
            assert_eq!(early, 30, "without flow control nothing waits");
        }
        // The subscriber now takes and acknowledges everything.
        let mut got = std::collections::BTreeSet::new();
        loop {
            let quiet = if flow_control {
                WAIT
            } else {
                Duration::from_secs(1)
            };
            match s.recv_within(quiet).await {
                Ok(Some(Packet::Publish(m))) => {
                    got.insert(m.payload.to_vec());
                    s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
                    if got.len() == 30 {
                        break;
                    }
                }
                Err(()) if !flow_control => break,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        let dropped = b.broker.metrics.dropped_count(DropReason::QueueFull);
        if flow_control {
            assert_eq!(got.len(), 30, "every message delivered");
            assert_eq!(dropped, 0);
            assert_eq!(early + pubacks(&mut p, Duration::from_secs(1)).await, 30);
            assert!(
                b.broker
                    .metrics
                    .backpressure_waits
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0
            );
        } else {
            // At most 2 in flight + 4 queued survive the burst.
            assert!(got.len() <= 6, "{} delivered", got.len());
            assert_eq!(dropped as usize, 30 - got.len());
        }
        b.stop().await;
    }
}

#[tokio::test]
async fn a_subscriber_that_never_reads_stalls_publishers_only_briefly() {
    let b = small_queues(Duration::from_millis(300)).await;
    let mut s = RawClient::connect(b.addr, Protocol::V311, "stuck-sub").await;
    s.subscribe("bp/stuck", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V311, "stuck-pub").await;
    burst(&mut p, "bp/stuck", 30).await;
    // One wait of 300 ms, then the subscriber counts as stuck and its
    // queue drops: every publish is acknowledged.
    let started = std::time::Instant::now();
    let mut acked = 0;
    while acked < 30 {
        match p.recv().await {
            Some(Packet::PubAck(_)) => acked += 1,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let m = &b.broker.metrics;
    assert_eq!(
        m.backpressure_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(m.dropped_count(DropReason::QueueFull) > 0);
    // A second publisher is not held by the stuck subscriber at all.
    let mut p2 = RawClient::connect(b.addr, Protocol::V311, "stuck-pub2").await;
    burst(&mut p2, "bp/stuck", 10).await;
    assert_eq!(pubacks(&mut p2, Duration::from_millis(200)).await, 10);
    b.stop().await;
}

#[tokio::test]
async fn a_client_filling_its_own_queue_is_not_held_by_it() {
    // It drains its own queue; waiting on it would stall it for the
    // whole backpressure time on every publish.
    let b = small_queues(Duration::from_secs(30)).await;
    let mut c = RawClient::connect(b.addr, Protocol::V311, "self-sub").await;
    c.subscribe("bp/self", q(1)).await;
    burst(&mut c, "bp/self", 30).await;
    let mut acked = 0;
    while acked < 30 {
        match c.recv().await {
            Some(Packet::PubAck(_)) => acked += 1,
            Some(Packet::Publish(_)) => {} // its own messages, not acknowledged
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let waits = b
        .broker
        .metrics
        .backpressure_waits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(waits, 0);
    b.stop().await;
}

#[tokio::test]
async fn a_slow_subscriber_that_keeps_reading_is_not_treated_as_stuck() {
    // It takes one message every 150 ms: no wait of 300 ms sees the queue
    // drain to half, but each sees it move, so the publisher goes at its
    // pace and nothing is dropped.
    let b = TestBroker::with(|c| {
        c.max_inflight = 1;
        c.max_queued_messages = 4;
        c.publish_backpressure = Some(Duration::from_millis(300));
    })
    .await;
    let mut s = RawClient::connect(b.addr, Protocol::V311, "slow-sub").await;
    s.subscribe("bp/slow", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V311, "slow-pub").await;
    burst(&mut p, "bp/slow", 16).await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 16 {
        match s.recv_within(WAIT).await {
            Ok(Some(Packet::Publish(m))) => {
                got.insert(m.payload.to_vec());
                tokio::time::sleep(Duration::from_millis(150)).await;
                s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(pubacks(&mut p, Duration::from_millis(500)).await, 16);
    let m = &b.broker.metrics;
    assert_eq!(m.dropped_count(DropReason::QueueFull), 0);
    assert_eq!(
        m.backpressure_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(
        m.backpressure_waits
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    b.stop().await;
}

/// `n` publishes of `qos` to `topic`, payloads `tag` + a 2-byte counter,
/// sent in one write.
async fn tagged_burst(p: &mut RawClient, topic: &str, qos: u8, tag: u8, n: u16) {
    let mut out = bytes::BytesMut::new();
    for id in 1..=n {
        let mut m = publish(topic, q(qos), if qos == 0 { 0 } else { id }, b"");
        let [hi, lo] = id.to_be_bytes();
        m.payload = bytes::Bytes::copy_from_slice(&[tag, hi, lo]);
        porchlight_broker::codec::encode(&Packet::Publish(m), Protocol::V311, &mut out);
    }
    p.send_bytes(&out).await;
}

#[tokio::test]
async fn qos0_traffic_never_costs_a_connected_subscriber_an_acknowledged_qos1_message() {
    // Issue 16 item 1: QoS 0 deliveries into a queue held past its bound
    // by flow control used to drop the oldest queued deliveries, QoS 1
    // ones included, which their publishers had been PUBACKed for; and
    // many QoS 1 publishers could push the queue past twice its bound,
    // where it dropped too. Now QoS 0 goes first, and QoS 1 under flow
    // control is never dropped for a subscriber that keeps reading.
    let b = small_queues(Duration::from_secs(30)).await;
    let mut s = RawClient::connect(b.addr, Protocol::V311, "mix-sub").await;
    s.subscribe("mix/#", q(1)).await;
    // Twelve QoS 1 publishers: each adds to the full queue before it
    // waits, together past twice the bound.
    let mut qos1 = Vec::new();
    for i in 0..12u8 {
        let mut p = RawClient::connect(b.addr, Protocol::V311, &format!("mix-q1-{i}")).await;
        tagged_burst(&mut p, "mix/q1", 1, i, 5).await;
        qos1.push(p);
    }
    // QoS 0 at full speed into the same queue.
    let mut p0 = RawClient::connect(b.addr, Protocol::V311, "mix-q0").await;
    for _ in 0..4 {
        tagged_burst(&mut p0, "mix/q0", 0, 0xFF, 100).await;
    }
    // The QoS 0 publisher is never held: a PINGRESP proves all 400 were
    // handled before the subscriber reads anything.
    p0.send(&Packet::PingReq).await;
    assert!(matches!(p0.recv().await, Some(Packet::PingResp)));
    // The subscriber now takes everything and acknowledges it.
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 60 {
        match s.recv_within(WAIT).await {
            Ok(Some(Packet::Publish(m))) => {
                if m.qos == q(1) {
                    got.insert(m.payload.to_vec());
                    s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
                }
            }
            other => panic!(
                "expected PUBLISH, got {other:?} after {} QoS 1 messages",
                got.len()
            ),
        }
    }
    // Every QoS 1 message was acknowledged to its publisher, and delivered.
    for p in &mut qos1 {
        assert_eq!(pubacks(p, Duration::from_millis(500)).await, 5);
    }
    assert!(b.broker.metrics.dropped_count(DropReason::QueueFull) > 0);
    b.stop().await;
}

#[tokio::test]
async fn a_server_disconnect_reaches_a_client_that_is_still_sending() {
    // Issue 16 item 5 (Paho's test_flow_control2): the broker closed its
    // socket at once, so the client's next writes met a reset and a client
    // library that stops at a failed write never read DISCONNECT 0x93. Now
    // the close lingers: half-close, then drain the input for a bounded
    // time, so the client can go on writing until it reads the reason.
    let b = TestBroker::with(|c| c.receive_maximum = 2).await;
    let (mut p, _) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V5, "flow2", true, 60)).await;
    let mut out = bytes::BytesMut::new();
    for id in 1..=21u16 {
        porchlight_broker::codec::encode(
            &Packet::Publish(publish("fc2", q(2), id, b"m")),
            Protocol::V5,
            &mut out,
        );
    }
    p.send_bytes(&out).await;
    wait_until("the broker refused the third QoS 2 publish", || {
        b.broker
            .metrics
            .bad_packet_count(BadPacket::ReceiveMaximumExceeded)
            == 1
    })
    .await;
    // The client keeps writing for a while, as a client busy publishing
    // does: every write goes through (a reset would fail the second).
    let mut ping = bytes::BytesMut::new();
    porchlight_broker::codec::encode(&Packet::PingReq, Protocol::V5, &mut ping);
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let wrote = p.try_send_bytes(&ping).await;
        assert!(wrote.is_ok(), "write {i} after the DISCONNECT: {wrote:?}");
    }
    let mut acks = 0;
    loop {
        match p.recv().await {
            Some(Packet::PubRec(_)) => acks += 1,
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, reason::RECEIVE_MAXIMUM_EXCEEDED);
                break;
            }
            other => panic!("expected PUBREC or DISCONNECT, got {other:?} after {acks} PUBRECs"),
        }
    }
    assert_eq!(acks, 2);
    b.stop().await;
}

/// A v5 persistent session `id` subscribed to `filter` at QoS 1, left
/// offline.
async fn offline_session(b: &TestBroker, id: &str, filter: &str) {
    let (mut s, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, id)).await;
    s.subscribe(filter, q(1)).await;
    drop(s);
    b.wait_offline(id).await;
}

#[tokio::test]
async fn the_node_wide_queued_memory_bound_spills_then_refuses_what_offline_sessions_would_queue() {
    // Issue 16 item 2: offline queues had no bound but each session's;
    // at the bound, durable sessions' bodies are kept on disk only.
    let b = TestBroker::with(|c| c.max_queued_memory = 64 * 1024).await;
    for id in ["off-1", "off-2"] {
        offline_session(&b, id, "mem/#").await;
    }
    let mut p = RawClient::connect(b.addr, Protocol::V5, "mem-pub").await;
    // Each message: 1,029 bytes + 64 per queue, twice. Three quarters of
    // the bound hold 22 in memory; after that each queue keeps a 32-byte
    // place per message, its body on disk, until the bound: about 260.
    let payload = |i: u32| -> &'static [u8] {
        let mut v = vec![7u8; 1024];
        v[..4].copy_from_slice(&i.to_be_bytes());
        Box::leak(v.into_boxed_slice())
    };
    let mut accepted = 0u32;
    let refused = loop {
        let id = accepted + 1;
        p.publish("mem/x", q(1), id as u16, payload(id)).await;
        match p.recv().await {
            Some(Packet::PubAck(a)) if a.reason == reason::SUCCESS => accepted += 1,
            Some(Packet::PubAck(a)) => break a.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
        assert!(accepted <= 400, "never refused");
    };
    assert_eq!(refused, reason::QUOTA_EXCEEDED);
    assert!(accepted > 200, "{accepted}: memory alone holds 22");
    let memory = b.broker.state.queue_memory().clone();
    assert_eq!(memory.refused(), 1);
    assert!(
        memory.spilled() >= 2 * (u64::from(accepted) - 23),
        "{} spilled of {accepted}",
        memory.spilled()
    );
    assert!(memory.used() < memory.limit() + 2 * 1093, "the bound holds");
    // QoS 0 is not refused but skips the offline sessions, counted; a
    // connected subscriber still gets it.
    let mut live = RawClient::connect(b.addr, Protocol::V5, "mem-live").await;
    live.subscribe("mem/#", q(0)).await;
    p.publish("mem/x", q(0), 0, b"zero").await;
    assert_eq!(&live.expect_publish().await.payload[..], b"zero");
    let m = &b.broker.metrics;
    assert_eq!(m.dropped_count(DropReason::QueueMemory), 2);
    // MQTT 3.1.1 has no reason code: the publisher is disconnected.
    let mut v3 = RawClient::connect(b.addr, Protocol::V311, "mem-pub-v3").await;
    v3.publish("mem/x", q(1), 1, b"v3").await;
    assert_eq!(v3.recv().await, None);
    // A restart keeps every accepted message (the spilled ones were on
    // disk all along), and the restored queues spill again.
    drop((p, live));
    let b = b.restart().await;
    let memory = b.broker.state.queue_memory().clone();
    assert!(memory.spilled() > 0, "restored on disk only");
    assert!(
        memory.used() < memory.limit() + 2 * 1093,
        "restored within the bound: {}",
        memory.used()
    );
    // One offline session comes back and takes its whole queue, the
    // spilled part read back from disk, in order: room again.
    let (mut s, ack) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "off-1")).await;
    assert!(ack.session_present);
    for i in 1..=accepted {
        let got = s.expect_publish().await;
        assert_eq!(got.payload[..4], i.to_be_bytes(), "message {i} in order");
        assert_eq!(got.payload.len(), 1024);
        s.send(&Packet::PubAck(Ack::new(got.packet_id, 0))).await;
    }
    wait_until("queued memory back under three quarters", || {
        memory.used() < memory.limit() / 4 * 3
    })
    .await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "mem-pub").await;
    p.publish("mem/x", q(1), 100, b"again").await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, reason::SUCCESS),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    b.stop().await;
}
