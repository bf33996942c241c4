use std::collections::HashSet;
use std::time::Duration;

use porchlight_broker::codec::{reason, Ack, Packet, Properties, Protocol, SubscriptionOptions};

use crate::support::*;

#[tokio::test]
async fn each_message_goes_to_exactly_one_member() {
    let b = TestBroker::start().await;
    let mut m1 = RawClient::connect(b.addr, Protocol::V5, "m1").await;
    let mut m2 = RawClient::connect(b.addr, Protocol::V311, "m2").await;
    m1.subscribe("$share/g/jobs/+", q(1)).await;
    m2.subscribe("$share/g/jobs/+", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "jobs-pub").await;
    let n = 20u16;
    for i in 1..=n {
        let mut m = publish("jobs/a", q(0), 0, b"");
        m.payload = bytes::Bytes::from(i.to_be_bytes().to_vec());
        p.send(&Packet::Publish(m)).await;
    }
    let mut seen = HashSet::new();
    let (mut c1, mut c2) = (0, 0);
    for _ in 0..n {
        tokio::select! {
            m = m1.expect_publish() => { c1 += 1; assert!(seen.insert(m.payload)); }
            m = m2.expect_publish() => { c2 += 1; assert!(seen.insert(m.payload)); }
        }
    }
    assert_eq!(seen.len(), usize::from(n));
    assert_eq!((c1, c2), (10, 10), "round robin");
    m1.expect_silence(Duration::from_millis(200)).await;
    m2.expect_silence(Duration::from_millis(100)).await;
    b.stop().await;
}

#[tokio::test]
async fn unacknowledged_messages_of_a_departing_member_go_to_another() {
    let b = TestBroker::start().await;
    let mut leaver = RawClient::connect(b.addr, Protocol::V5, "leaver").await;
    leaver.subscribe("$share/w/work", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "work-pub").await;
    p.publish("work", q(1), 1, b"task").await;
    let got = leaver.expect_publish().await;
    assert_eq!(&got.payload[..], b"task");
    let mut stayer = RawClient::connect(b.addr, Protocol::V5, "stayer").await;
    stayer.subscribe("$share/w/work", q(1)).await;
    drop(leaver); // never acknowledged
    let again = stayer.expect_publish().await;
    assert_eq!(&again.payload[..], b"task");
    stayer
        .send(&Packet::PubAck(Ack::new(again.packet_id, 0)))
        .await;
    b.stop().await;
}

#[tokio::test]
async fn in_flight_qos2_is_never_given_to_another_member() {
    let b = TestBroker::start().await;
    let mut leaver = RawClient::connect(b.addr, Protocol::V5, "q2-leaver").await;
    leaver.subscribe("$share/x/q2work", q(2)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "q2-pub").await;
    p.publish("q2work", q(2), 1, b"once").await;
    assert_eq!(&leaver.expect_publish().await.payload[..], b"once");
    let mut stayer = RawClient::connect(b.addr, Protocol::V5, "q2-stayer").await;
    stayer.subscribe("$share/x/q2work", q(2)).await;
    drop(leaver);
    stayer.expect_silence(Duration::from_millis(400)).await;
    b.stop().await;
}

#[tokio::test]
async fn shared_subscription_rules() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr, Protocol::V5, "rules").await;
    // Invalid share names are refused per filter.
    c.send(&Packet::Subscribe(porchlight_broker::codec::Subscribe {
        packet_id: 1,
        filters: vec![("$share/bad+name/x".into(), SubscriptionOptions::new(q(0)))],
        properties: Properties::default(),
    }))
    .await;
    assert!(
        matches!(c.recv().await, Some(Packet::SubAck(s)) if s.reasons == vec![reason::TOPIC_FILTER_INVALID])
    );
    // No-local on a shared subscription is a protocol error.
    let mut opts = SubscriptionOptions::new(q(0));
    opts.no_local = true;
    c.send(&Packet::Subscribe(porchlight_broker::codec::Subscribe {
        packet_id: 2,
        filters: vec![("$share/g/x".into(), opts)],
        properties: Properties::default(),
    }))
    .await;
    c.expect_disconnect(Some(reason::PROTOCOL_ERROR)).await;
    b.stop().await;
}

#[tokio::test]
async fn queued_deliveries_of_a_persistent_member_move_when_it_disconnects() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "slowpoke", false, 60);
    c.properties.session_expiry_interval = Some(60);
    c.properties.receive_maximum = Some(1);
    let (mut a, _) = RawClient::connect_with(b.addr, c.clone()).await;
    a.subscribe("$share/q/jobs", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "q-pub").await;
    for id in 1..=3u16 {
        p.publish("jobs", q(1), id, b"j").await;
    }
    let in_flight = a.expect_publish().await; // the other two wait in its queue
    let mut helper = RawClient::connect(b.addr, Protocol::V5, "helper").await;
    helper.subscribe("$share/q/jobs", q(1)).await;
    drop(a);
    for _ in 0..2 {
        let m = helper.expect_publish().await;
        helper.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
    helper.expect_silence(Duration::from_millis(200)).await;
    // The in-flight one stays with its persistent session.
    let (mut a, ack) = RawClient::connect_with(b.addr, c).await;
    assert!(ack.session_present);
    let again = a.expect_publish().await;
    assert!(again.dup);
    assert_eq!(again.packet_id, in_flight.packet_id);
    b.stop().await;
}
