use std::time::Duration;

use porchlight_broker::codec::{reason, Ack, Packet, Protocol, QoS};

use crate::support::*;

fn persistent(protocol: Protocol, id: &str) -> porchlight_broker::codec::Connect {
    let mut c = connect_packet(protocol, id, false, 60);
    if protocol == Protocol::V5 {
        c.properties.session_expiry_interval = Some(300);
    }
    c
}

#[tokio::test]
async fn takeover_disconnects_old_connection_with_0x8e_and_keeps_session() {
    let b = TestBroker::start().await;
    let (mut old, ack) = RawClient::connect_with(b.addr, persistent(Protocol::V5, "dup-id")).await;
    assert!(!ack.session_present);
    old.subscribe("t/take", q(1)).await;
    let (mut new, ack) = RawClient::connect_with(b.addr, persistent(Protocol::V5, "dup-id")).await;
    assert!(
        ack.session_present,
        "session continues on the new connection"
    );
    old.expect_disconnect(Some(reason::SESSION_TAKEN_OVER))
        .await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "take-pub").await;
    p.publish("t/take", q(0), 0, b"to-new").await;
    assert_eq!(&new.expect_publish().await.payload[..], b"to-new");
    b.stop().await;
}

#[tokio::test]
async fn a_takeover_does_not_wait_for_an_old_connection_that_stopped_reading() {
    use porchlight_broker::metrics::DropReason;
    let b = TestBroker::start().await;
    let (mut old, _) = RawClient::connect_with(b.addr, persistent(Protocol::V5, "stuck")).await;
    old.subscribe("t/stuck", q(0)).await;
    // The old client never reads again: fill its socket, the broker's write
    // buffer and its queue until deliveries to it are dropped.
    let mut p = RawClient::connect(b.addr, Protocol::V5, "stuck-pub").await;
    let big = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    let mut sent = 0;
    while b.broker.metrics.dropped_count(DropReason::QueueFull) == 0 {
        assert!(
            sent < 5_000,
            "deliveries to a client that does not read are never dropped"
        );
        let mut m = publish("t/stuck", q(0), 0, b"");
        m.payload = big.clone();
        p.send(&Packet::Publish(m)).await;
        sent += 1;
    }
    // The device reconnects (say, after a network change). The old
    // connection cannot flush its DISCONNECT; the new one is not kept
    // waiting for it (it was, for the 2 s flush bound).
    let started = std::time::Instant::now();
    let (mut new, ack) = RawClient::connect_with(b.addr, persistent(Protocol::V5, "stuck")).await;
    let took = started.elapsed();
    assert!(ack.session_present);
    assert!(took < Duration::from_secs(1), "the takeover took {took:?}");
    // The session works on the new connection: what was queued arrives.
    assert_eq!(new.expect_publish().await.payload.len(), big.len());
    drop(old);
    b.stop().await;
}

#[tokio::test]
async fn v311_takeover_closes_old_socket() {
    let b = TestBroker::start().await;
    let mut old = RawClient::connect(b.addr, Protocol::V311, "v3-dup").await;
    let _new = RawClient::connect(b.addr, Protocol::V311, "v3-dup").await;
    old.expect_disconnect(None).await;
    b.stop().await;
}

#[tokio::test]
async fn offline_messages_are_queued_in_order_and_inflight_redelivered_with_dup() {
    let b = TestBroker::start().await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let id = format!("offline-{protocol:?}");
        let (mut s, _) = RawClient::connect_with(b.addr, persistent(protocol, &id)).await;
        s.subscribe("q/#", q(1)).await;
        let mut p = RawClient::connect(b.addr, Protocol::V311, "offline-pub").await;
        p.publish("q/1", q(1), 1, b"first").await;
        let first = s.expect_publish().await;
        assert!(!first.dup);
        // Drop the connection without acknowledging.
        drop(s);
        b.wait_offline(&id).await;
        for payload in [&b"second"[..], b"third"] {
            let mut m = publish("q/2", q(1), 2, b"");
            m.payload = bytes::Bytes::copy_from_slice(payload);
            p.send(&Packet::Publish(m)).await;
            assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
        }
        let (mut s, ack) = RawClient::connect_with(b.addr, persistent(protocol, &id)).await;
        assert!(ack.session_present);
        let again = s.expect_publish().await;
        assert!(again.dup, "unacknowledged message comes back with DUP");
        assert_eq!(again.packet_id, first.packet_id);
        assert_eq!(&again.payload[..], b"first");
        for expected in [&b"second"[..], b"third"] {
            let m = s.expect_publish().await;
            assert_eq!(&m.payload[..], expected);
            assert_eq!(m.qos, QoS::AtLeastOnce);
            s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
        }
        s.send(&Packet::PubAck(Ack::new(again.packet_id, 0))).await;
        s.send(&Packet::Disconnect(
            porchlight_broker::codec::Disconnect::new(0),
        ))
        .await;
    }
    b.stop().await;
}

#[tokio::test]
async fn pending_pubrel_is_resent_on_resume() {
    let b = TestBroker::start().await;
    let (mut s, _) = RawClient::connect_with(b.addr, persistent(Protocol::V311, "rel")).await;
    s.subscribe("rel", q(2)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V311, "rel-pub").await;
    p.publish("rel", q(2), 1, b"x").await;
    let m = s.expect_publish().await;
    s.send(&Packet::PubRec(Ack::new(m.packet_id, 0))).await;
    assert!(matches!(s.recv().await, Some(Packet::PubRel(_))));
    drop(s);
    tokio::task::yield_now().await;
    let (mut s, ack) = RawClient::connect_with(b.addr, persistent(Protocol::V311, "rel")).await;
    assert!(ack.session_present);
    match s.recv().await {
        Some(Packet::PubRel(a)) => assert_eq!(a.packet_id, m.packet_id),
        other => panic!("expected PUBREL again, got {other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn clean_start_discards_the_session() {
    let b = TestBroker::start().await;
    let (mut s, _) = RawClient::connect_with(b.addr, persistent(Protocol::V5, "clean")).await;
    s.subscribe("c/x", q(1)).await;
    drop(s);
    let mut c = persistent(Protocol::V5, "clean");
    c.clean_start = true;
    let (mut s, ack) = RawClient::connect_with(b.addr, c).await;
    assert!(!ack.session_present);
    let mut p = RawClient::connect(b.addr, Protocol::V5, "clean-pub").await;
    p.publish("c/x", q(0), 0, b"old sub is gone").await;
    s.expect_silence(Duration::from_millis(200)).await;
    b.stop().await;
}

#[tokio::test]
async fn v5_session_expiry_ends_the_session() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "short", false, 60);
    c.properties.session_expiry_interval = Some(1);
    let (s, _) = RawClient::connect_with(b.addr, c.clone()).await;
    drop(s);
    wait_until("session expired", || b.session("short").is_none()).await;
    let (_s, ack) = RawClient::connect_with(b.addr, c).await;
    assert!(!ack.session_present);
    b.stop().await;
}

#[tokio::test]
async fn v5_session_expiry_is_capped_and_reported() {
    let b = TestBroker::with(|c| c.max_session_expiry = 100).await;
    let mut c = connect_packet(Protocol::V5, "cap", false, 60);
    c.properties.session_expiry_interval = Some(u32::MAX);
    let (_s, ack) = RawClient::connect_with(b.addr, c).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(100));
    b.stop().await;
}

#[tokio::test]
async fn empty_client_ids() {
    let b = TestBroker::start().await;
    // 3.1.1 with clean session 0: identifier rejected (2).
    let mut c = RawClient::open(b.addr, Protocol::V311).await;
    c.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V311,
        "",
        false,
        60,
    ))))
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv().await, None);
    // 3.1.1 with clean session 1: accepted.
    let (_c, ack) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V311, "", true, 60)).await;
    assert_eq!(ack.reason, 0);
    // v5: assigned.
    let (_c, ack) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V5, "", false, 60)).await;
    assert_eq!(ack.reason, 0);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!assigned.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn rumqttc_v4_persistent_session_resumes() {
    let b = TestBroker::start().await;
    let mut s = V4::connect(b.addr, "rumq-persist", false).await;
    s.client
        .subscribe("persist/#", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    s.suback().await;
    s.client.disconnect().await.expect("disconnect");
    b.wait_offline("rumq-persist").await;
    let mut p = RawClient::connect(b.addr, Protocol::V311, "rp2").await;
    p.publish("persist/1", q(1), 1, b"while away").await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    let mut s = V4::connect(b.addr, "rumq-persist", false).await;
    assert_eq!(&s.next_publish().await.payload[..], b"while away");

    b.stop().await;
}

#[tokio::test]
async fn v311_clean_session_discards_and_is_not_kept() {
    let b = TestBroker::start().await;
    let (mut s, _) = RawClient::connect_with(b.addr, persistent(Protocol::V311, "v3clean")).await;
    s.subscribe("v3/x", q(1)).await;
    drop(s);
    b.wait_offline("v3clean").await;
    let (s, ack) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V311, "v3clean", true, 60)).await;
    assert!(
        !ack.session_present,
        "clean session discards the stored one"
    );
    drop(s);
    wait_until("clean session ended", || b.session("v3clean").is_none()).await;
    let (_s, ack) = RawClient::connect_with(b.addr, persistent(Protocol::V311, "v3clean")).await;
    assert!(!ack.session_present, "and keeps nothing after it");
    b.stop().await;
}

#[tokio::test]
async fn v311_persistent_session_lives_for_max_session_expiry() {
    let b = TestBroker::with(|c| c.max_session_expiry = 1).await;
    let (s, _) = RawClient::connect_with(b.addr, persistent(Protocol::V311, "v3life")).await;
    drop(s);
    b.wait_offline("v3life").await;
    let gone_from = tokio::time::Instant::now();
    wait_until("expired", || b.session("v3life").is_none()).await;
    assert!(gone_from.elapsed() >= Duration::from_millis(800));
    b.stop().await;
}

#[tokio::test]
async fn session_expiry_on_disconnect() {
    let b = TestBroker::start().await;
    // Expiry 0 at CONNECT, non-zero at DISCONNECT: protocol error.
    let (mut c, _) =
        RawClient::connect_with(b.addr, connect_packet(Protocol::V5, "exp0", true, 60)).await;
    let mut d = porchlight_broker::codec::Disconnect::new(0);
    d.properties.session_expiry_interval = Some(60);
    c.send(&Packet::Disconnect(d)).await;
    c.expect_disconnect(Some(reason::PROTOCOL_ERROR)).await;
    // Non-zero at CONNECT, 0 at DISCONNECT: the session ends now.
    let (mut c, _) = RawClient::connect_with(b.addr, persistent(Protocol::V5, "exp-now")).await;
    let mut d = porchlight_broker::codec::Disconnect::new(0);
    d.properties.session_expiry_interval = Some(0);
    c.send(&Packet::Disconnect(d)).await;
    assert_eq!(c.recv().await, None);
    wait_until("session ended", || b.session("exp-now").is_none()).await;
    b.stop().await;
}

#[tokio::test]
async fn qos2_publish_awaiting_pubrec_is_redelivered_with_dup() {
    let b = TestBroker::start().await;
    let (mut s, _) = RawClient::connect_with(b.addr, persistent(Protocol::V5, "q2dup")).await;
    s.subscribe("q2dup", q(2)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "q2dup-pub").await;
    p.publish("q2dup", q(2), 1, b"exactly").await;
    let first = s.expect_publish().await;
    drop(s);
    b.wait_offline("q2dup").await;
    let (mut s, ack) = RawClient::connect_with(b.addr, persistent(Protocol::V5, "q2dup")).await;
    assert!(ack.session_present);
    let again = s.expect_publish().await;
    assert!(again.dup);
    assert_eq!(
        (again.packet_id, again.qos),
        (first.packet_id, QoS::ExactlyOnce)
    );
    s.send(&Packet::PubRec(Ack::new(again.packet_id, 0))).await;
    assert!(matches!(s.recv().await, Some(Packet::PubRel(a)) if a.packet_id == first.packet_id));
    s.send(&Packet::PubComp(Ack::new(again.packet_id, 0))).await;
    s.expect_silence(Duration::from_millis(200)).await;
    b.stop().await;
}

#[tokio::test]
async fn client_id_length_limit() {
    let b = TestBroker::with(|c| c.max_client_id_length = 30).await;
    for (protocol, code) in [
        (Protocol::V5, reason::CLIENT_IDENTIFIER_NOT_VALID),
        (Protocol::V311, 2),
    ] {
        let mut c = RawClient::open(b.addr, protocol).await;
        let id = "x".repeat(31);
        c.send(&Packet::Connect(Box::new(connect_packet(
            protocol, &id, true, 60,
        ))))
        .await;
        assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.reason == code));
    }
    b.stop().await;
}
