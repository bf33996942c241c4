use bytes::Bytes;
use porchlight_broker::codec::{Packet, Properties, Protocol, QoS, SubscriptionOptions};

use crate::support::*;

#[tokio::test]
async fn v311_qos_0_1_2_round_trip_with_downgrade() {
    let b = TestBroker::start().await;
    let mut sub = V4::connect(b.addr, "sub", true).await;
    sub.client
        .subscribe("home/+/temp", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let ack = sub.suback().await;
    assert_eq!(
        ack.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtLeastOnce
        )]
    );
    let publisher = V4::connect(b.addr, "pub", true).await;
    for (i, qos) in [
        rumqttc::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        publisher
            .client
            .publish("home/kitchen/temp", qos, false, vec![i as u8])
            .await
            .expect("publish");
        let p = sub.next_publish().await;
        assert_eq!(&p.topic, "home/kitchen/temp");
        assert_eq!(&p.payload[..], &[i as u8]);
        // Delivered at min(published, granted).
        let expected = if qos == rumqttc::QoS::AtMostOnce {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        };
        assert_eq!(p.qos, expected);
        assert!(!p.retain);
    }
    b.stop().await;
}

#[tokio::test]
async fn per_topic_order_is_preserved_at_qos1() {
    let b = TestBroker::start().await;
    let mut sub = V4::connect(b.addr, "order-sub", true).await;
    sub.client
        .subscribe("seq", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;
    let publisher = V4::connect(b.addr, "order-pub", true).await;
    let mut events = publisher.events;
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
    for i in 0..200u32 {
        publisher
            .client
            .publish(
                "seq",
                rumqttc::QoS::AtLeastOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await
            .expect("publish");
    }
    for i in 0..200u32 {
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], &i.to_be_bytes());
    }
    drain.abort();
    b.stop().await;
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let b = TestBroker::start().await;
    let mut all = RawClient::connect(b.addr, Protocol::V311, "all").await;
    all.subscribe("#", q(0)).await;
    let mut plus = RawClient::connect(b.addr, Protocol::V311, "plus").await;
    plus.subscribe("+/status", q(0)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V311, "p").await;
    p.publish("$internal/status", q(0), 0, b"hidden").await;
    p.publish("dev/status", q(0), 0, b"seen").await;
    assert_eq!(&all.expect_publish().await.payload[..], b"seen");
    assert_eq!(&plus.expect_publish().await.payload[..], b"seen");
    all.expect_silence(std::time::Duration::from_millis(200))
        .await;
    b.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_max_qos_with_all_ids() {
    let b = TestBroker::start().await;
    let mut sub = RawClient::connect(b.addr, Protocol::V5, "overlap").await;
    sub.subscribe_opts(
        "a/+",
        SubscriptionOptions::new(q(0)),
        Properties {
            subscription_identifiers: vec![7],
            ..Properties::default()
        },
    )
    .await;
    sub.subscribe_opts(
        "a/#",
        SubscriptionOptions::new(q(1)),
        Properties {
            subscription_identifiers: vec![9],
            ..Properties::default()
        },
    )
    .await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "pp").await;
    p.publish("a/b", q(1), 1, b"x").await;
    let got = sub.expect_publish().await;
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![7, 9]);
    sub.expect_silence(std::time::Duration::from_millis(200))
        .await;

    // Same for 3.1.1: one copy at the highest QoS.
    let mut v3 = RawClient::connect(b.addr, Protocol::V311, "overlap3").await;
    v3.subscribe("c/+", q(0)).await;
    v3.subscribe("c/#", q(2)).await;
    p.publish("c/d", q(2), 2, b"y").await;
    let got = v3.expect_publish().await;
    assert_eq!(got.qos, QoS::ExactlyOnce);
    v3.expect_silence(std::time::Duration::from_millis(200))
        .await;
    b.stop().await;
}

#[tokio::test]
async fn no_local_suppresses_own_messages() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr, Protocol::V5, "self").await;
    let mut opts = SubscriptionOptions::new(q(0));
    opts.no_local = true;
    c.subscribe_opts("loop", opts, Properties::default()).await;
    let mut other = RawClient::connect(b.addr, Protocol::V5, "other").await;
    c.publish("loop", q(0), 0, b"mine").await;
    other.publish("loop", q(0), 0, b"theirs").await;
    assert_eq!(&c.expect_publish().await.payload[..], b"theirs");
    b.stop().await;
}

#[tokio::test]
async fn v5_properties_pass_through_unchanged() {
    let b = TestBroker::start().await;
    let mut sub = V5::connect(b.addr, "v5sub").await;
    sub.client
        .subscribe("req/+", v5::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;
    let publisher = V5::connect(b.addr, "v5pub").await;
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("resp/1".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("req/x", v5::QoS::AtLeastOnce, false, "{}", props)
        .await
        .expect("publish");
    let p = sub.next_publish().await;
    let got = p.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(got.response_topic.as_deref(), Some("resp/1"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(
        got.user_properties,
        vec![
            ("a".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string())
        ]
    );
    b.stop().await;
}

#[tokio::test]
async fn qos2_exactly_once_with_retransmitted_publish() {
    let b = TestBroker::start().await;
    let mut sub = RawClient::connect(b.addr, Protocol::V311, "q2sub").await;
    sub.subscribe("q2", q(2)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V311, "q2pub").await;
    p.publish("q2", q(2), 10, b"once").await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 10));
    // The publisher retransmits before PUBREL: no second delivery.
    let mut again = publish("q2", q(2), 10, b"once");
    again.dup = true;
    p.send(&Packet::Publish(again)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 10));
    p.send(&Packet::PubRel(porchlight_broker::codec::Ack::new(10, 0)))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 10));

    let got = sub.expect_publish().await;
    assert_eq!(got.qos, QoS::ExactlyOnce);
    sub.send(&Packet::PubRec(porchlight_broker::codec::Ack::new(
        got.packet_id,
        0,
    )))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.packet_id == got.packet_id));
    sub.send(&Packet::PubComp(porchlight_broker::codec::Ack::new(
        got.packet_id,
        0,
    )))
    .await;
    sub.expect_silence(std::time::Duration::from_millis(300))
        .await;
    b.stop().await;
}

#[tokio::test]
async fn v5_puback_reports_no_matching_subscribers() {
    let b = TestBroker::start().await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "lonely").await;
    p.publish("nobody/listens", q(1), 3, b"x").await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, 0x10),
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn unsubscribe_reason_codes() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr, Protocol::V5, "unsub").await;
    c.subscribe("x/y", q(0)).await;
    c.send(&Packet::Unsubscribe(
        porchlight_broker::codec::Unsubscribe {
            packet_id: 5,
            filters: vec!["x/y".into(), "never".into(), "bad/#/x".into()],
            properties: Properties::default(),
        },
    ))
    .await;
    match c.recv().await {
        Some(Packet::UnsubAck(u)) => assert_eq!(u.reasons, vec![0x00, 0x11, 0x8F]),
        other => panic!("{other:?}"),
    }
    let mut p = RawClient::connect(b.addr, Protocol::V5, "unsub-pub").await;
    p.publish("x/y", q(0), 0, b"gone").await;
    c.expect_silence(std::time::Duration::from_millis(200))
        .await;
    b.stop().await;
}

#[tokio::test]
async fn suback_reports_invalid_filters_per_version() {
    let b = TestBroker::start().await;
    for (protocol, expected) in [(Protocol::V5, 0x8F), (Protocol::V311, 0x80)] {
        let mut c = RawClient::connect(b.addr, protocol, "badfilter").await;
        c.send(&Packet::Subscribe(porchlight_broker::codec::Subscribe {
            packet_id: 2,
            filters: vec![
                ("ok/+".into(), SubscriptionOptions::new(q(2))),
                ("bad#".into(), SubscriptionOptions::new(q(0))),
            ],
            properties: Properties::default(),
        }))
        .await;
        match c.recv().await {
            Some(Packet::SubAck(s)) => assert_eq!(s.reasons, vec![2, expected]),
            other => panic!("{other:?}"),
        }
    }
    b.stop().await;
}
