use std::time::Duration;

use bytes::Bytes;
use porchlight_broker::codec::{reason, Disconnect, Packet, Properties, Protocol, Will};

use crate::support::*;

fn with_will(
    protocol: Protocol,
    id: &str,
    delay: Option<u32>,
    expiry: u32,
) -> porchlight_broker::codec::Connect {
    let mut c = connect_packet(protocol, id, expiry == 0, 60);
    if protocol == Protocol::V5 {
        c.properties.session_expiry_interval = Some(expiry);
    }
    c.will = Some(Will {
        topic: format!("will/{id}"),
        payload: Bytes::from_static(b"gone"),
        qos: q(1),
        retain: false,
        properties: Properties {
            will_delay_interval: delay,
            ..Properties::default()
        },
    });
    c
}

async fn watcher(b: &TestBroker) -> RawClient {
    let mut w = RawClient::connect(b.addr, Protocol::V311, "watcher").await;
    w.subscribe("will/#", q(1)).await;
    w
}

#[tokio::test]
async fn will_sent_on_abnormal_close_not_on_disconnect() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let (c, _) = RawClient::connect_with(b.addr, with_will(protocol, "abrupt", None, 0)).await;
        drop(c);
        let got = w.expect_publish().await;
        assert_eq!(&got.topic, "will/abrupt");
        assert_eq!(&got.payload[..], b"gone");
        w.send(&Packet::PubAck(porchlight_broker::codec::Ack::new(
            got.packet_id,
            0,
        )))
        .await;

        let (mut c, _) =
            RawClient::connect_with(b.addr, with_will(protocol, "polite", None, 0)).await;
        c.send(&Packet::Disconnect(Disconnect::new(0))).await;
        assert_eq!(c.recv().await, None);
        w.expect_silence(Duration::from_millis(300)).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn v5_disconnect_other_than_0x00_sends_the_will() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    for (id, code) in [
        ("asks", reason::DISCONNECT_WITH_WILL),
        ("errs", reason::UNSPECIFIED_ERROR),
    ] {
        let (mut c, _) =
            RawClient::connect_with(b.addr, with_will(Protocol::V5, id, None, 0)).await;
        c.send(&Packet::Disconnect(Disconnect::new(code))).await;
        let got = w.expect_publish().await;
        assert_eq!(got.topic, format!("will/{id}"));
        w.send(&Packet::PubAck(porchlight_broker::codec::Ack::new(
            got.packet_id,
            0,
        )))
        .await;
    }
    b.stop().await;
}

#[tokio::test]
async fn will_to_a_reserved_topic_is_refused() {
    let b = TestBroker::start().await;
    for (protocol, code) in [(Protocol::V5, reason::NOT_AUTHORIZED), (Protocol::V311, 5)] {
        let mut c = with_will(protocol, "sneaky", None, 0);
        if let Some(w) = c.will.as_mut() {
            w.topic = "$SYS/broker/version".into();
        }
        let mut raw = RawClient::open(b.addr, protocol).await;
        raw.send(&Packet::Connect(Box::new(c))).await;
        assert!(matches!(raw.recv().await, Some(Packet::ConnAck(a)) if a.reason == code));
    }
    b.stop().await;
}

#[tokio::test]
async fn will_delay_is_cancelled_by_reconnect_and_fires_otherwise() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    // Reconnect within the delay: no will.
    let (c, _) =
        RawClient::connect_with(b.addr, with_will(Protocol::V5, "delayed", Some(2), 60)).await;
    drop(c);
    tokio::task::yield_now().await;
    let mut resume = connect_packet(Protocol::V5, "delayed", false, 60);
    resume.properties.session_expiry_interval = Some(60);
    let (_c, ack) = RawClient::connect_with(b.addr, resume).await;
    assert!(ack.session_present);
    w.expect_silence(Duration::from_millis(2500)).await;

    // No reconnect: the will arrives after the delay, not before.
    let (c, _) =
        RawClient::connect_with(b.addr, with_will(Protocol::V5, "late", Some(1), 60)).await;
    let dropped_at = tokio::time::Instant::now();
    drop(c);
    let got = w.expect_publish().await;
    assert_eq!(&got.topic, "will/late");
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(900),
        "will waited for its delay"
    );
    b.stop().await;
}

#[tokio::test]
async fn will_delay_longer_than_session_expiry_fires_at_session_end() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let (c, _) =
        RawClient::connect_with(b.addr, with_will(Protocol::V5, "ends", Some(600), 1)).await;
    let dropped_at = tokio::time::Instant::now();
    drop(c);
    assert_eq!(&w.expect_publish().await.topic, "will/ends");
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(900),
        "the will waited for the session to end"
    );
    b.stop().await;
}

#[tokio::test]
async fn will_keeps_its_qos_and_retain_flag() {
    let b = TestBroker::start().await;
    let mut c = with_will(Protocol::V311, "retainer", None, 0);
    if let Some(w) = c.will.as_mut() {
        w.retain = true;
        w.qos = q(2);
    }
    let (client, _) = RawClient::connect_with(b.addr, c).await;
    drop(client);
    // A subscriber arriving later still gets it: it was retained.
    let mut late = RawClient::connect(b.addr, Protocol::V311, "late-watcher").await;
    wait_until("will retained", || {
        porchlight_broker::metrics::Metrics::get(&b.broker.metrics.retained) == 1
    })
    .await;
    late.subscribe("will/#", q(2)).await;
    let got = late.expect_publish().await;
    assert_eq!(&got.topic, "will/retainer");
    assert!(got.retain);
    assert_eq!(got.qos, porchlight_broker::codec::QoS::ExactlyOnce);
    b.stop().await;
}

#[tokio::test]
async fn will_without_delay_is_sent_on_takeover() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let (mut old, _) =
        RawClient::connect_with(b.addr, with_will(Protocol::V5, "taken", None, 60)).await;
    let mut again = connect_packet(Protocol::V5, "taken", false, 60);
    again.properties.session_expiry_interval = Some(60);
    let (_new, ack) = RawClient::connect_with(b.addr, again).await;
    assert!(ack.session_present);
    old.expect_disconnect(Some(reason::SESSION_TAKEN_OVER))
        .await;
    assert_eq!(&w.expect_publish().await.topic, "will/taken");
    b.stop().await;
}
