use std::time::Duration;

use porchlight_broker::codec::{Packet, Properties, Protocol, RetainHandling, SubscriptionOptions};

use crate::support::*;

async fn publish_retained(c: &mut RawClient, topic: &str, payload: &'static [u8]) {
    let mut p = publish(topic, q(1), 1, payload);
    p.retain = true;
    c.send(&Packet::Publish(p)).await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(_))));
}

#[tokio::test]
async fn set_replace_delete_and_deliver_on_subscribe() {
    let b = TestBroker::start().await;
    let mut p = RawClient::connect(b.addr, Protocol::V311, "rp").await;
    publish_retained(&mut p, "r/a", b"1").await;
    publish_retained(&mut p, "r/a", b"2").await;
    publish_retained(&mut p, "r/b", b"b").await;
    publish_retained(&mut p, "r/b", b"").await; // delete

    let mut s = RawClient::connect(b.addr, Protocol::V311, "rs").await;
    s.subscribe("r/#", q(1)).await;
    let got = s.expect_publish().await;
    assert_eq!(&got.topic, "r/a");
    assert_eq!(&got.payload[..], b"2");
    assert!(got.retain, "retained delivery carries RETAIN");
    s.send(&Packet::PubAck(porchlight_broker::codec::Ack::new(
        got.packet_id,
        0,
    )))
    .await;
    s.expect_silence(Duration::from_millis(200)).await;

    // A live retained publish reaches an existing 3.1.1 subscriber with
    // RETAIN 0.
    publish_retained(&mut p, "r/c", b"live").await;
    let live = s.expect_publish().await;
    assert_eq!(&live.payload[..], b"live");
    assert!(!live.retain);
    b.stop().await;
}

#[tokio::test]
async fn retain_handling_and_retain_as_published() {
    let b = TestBroker::start().await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "rh-p").await;
    publish_retained(&mut p, "rh/x", b"keep").await;

    let mut s = RawClient::connect(b.addr, Protocol::V5, "rh-s").await;
    // 2: never send retained messages.
    let mut never = SubscriptionOptions::new(q(0));
    never.retain_handling = RetainHandling::DoNotSend;
    s.subscribe_opts("rh/#", never, Properties::default()).await;
    s.expect_silence(Duration::from_millis(200)).await;

    // 1: only when the subscription is new.
    let mut if_new = SubscriptionOptions::new(q(0));
    if_new.retain_handling = RetainHandling::SendIfNew;
    s.subscribe_opts("rh/+", if_new, Properties::default())
        .await;
    assert_eq!(&s.expect_publish().await.payload[..], b"keep");
    s.subscribe_opts("rh/+", if_new, Properties::default())
        .await;
    s.expect_silence(Duration::from_millis(200)).await;

    // Retain-as-published keeps the flag on live messages.
    let mut rap = SubscriptionOptions::new(q(0));
    rap.retain_as_published = true;
    rap.retain_handling = RetainHandling::DoNotSend;
    let mut s2 = RawClient::connect(b.addr, Protocol::V5, "rh-rap").await;
    s2.subscribe_opts("rh/x", rap, Properties::default()).await;
    publish_retained(&mut p, "rh/x", b"again").await;
    let got = s2.expect_publish().await;
    assert!(got.retain);
    // And the earlier "rh/+" subscription without RAP gets RETAIN 0.
    assert!(!s.expect_publish().await.retain);
    b.stop().await;
}

#[tokio::test]
async fn retained_message_expires() {
    let b = TestBroker::start().await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "exp-p").await;
    let mut m = publish("exp/t", q(0), 0, b"short");
    m.retain = true;
    m.properties.message_expiry_interval = Some(1);
    p.send(&Packet::Publish(m)).await;
    let mut s = RawClient::connect(b.addr, Protocol::V5, "exp-s").await;
    s.subscribe("exp/t", q(0)).await;
    let got = s.expect_publish().await;
    assert_eq!(got.properties.message_expiry_interval, Some(1));
    // Wait until the expiry deadline has passed, then a new subscriber
    // gets nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut s2 = RawClient::connect(b.addr, Protocol::V5, "exp-s2").await;
    s2.subscribe("exp/t", q(0)).await;
    s2.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(
        porchlight_broker::metrics::Metrics::get(&b.broker.metrics.retained),
        0,
        "the expired retained message was purged"
    );
    b.stop().await;
}
