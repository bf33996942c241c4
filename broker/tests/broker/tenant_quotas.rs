//! Every tenant quota at its limit, with the right reason code, while
//! another tenant on the same broker is unaffected: connections, connect
//! rate, protocol versions, message and byte rates (v5 refusals, the v3
//! throttle), subscriptions, max QoS, packet size, retained messages and
//! bytes, persistent sessions, queued bytes; and the per-tenant metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use porchlight_broker::codec::{reason, Packet, Protocol};
use porchlight_broker::tenant::quota::QuotaKind;
use tracing::info;

use crate::support::*;
use crate::tenants::{as_user, join, load, publish_bytes, tenant_broker, tenants, usage};

#[tokio::test]
async fn connection_quotas_refuse_with_the_right_codes_and_spare_other_tenants() {
    let text = format!(
        "{}{}{}",
        tenants(
            &["small"],
            "[tenant.limits]\nmax_connections = 2\nprotocol_versions = [\"5\"]"
        ),
        tenants(&["slow"], "[tenant.limits]\nmax_connect_rate = 2"),
        tenants(&["other"], "")
    );
    let (b, _dir) = tenant_broker(&text, |c| c.auth.allow_anonymous = true).await;
    info!("--- max_connections");
    let _a = join(b.addr, Protocol::V5, "a", "u@small").await;
    let _b = join(b.addr, Protocol::V5, "b", "u@small").await;
    let refused = RawClient::connect_with(b.addr, as_user(Protocol::V5, "c", "u@small")).await;
    assert_eq!(refused.1.reason, reason::QUOTA_EXCEEDED);
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(join(b.addr, Protocol::V5, &format!("o{i}"), "u@other").await);
    }
    assert_eq!(usage(&b, "small").rejections(QuotaKind::Connections), 1);
    info!("--- a seat is given back when a connection ends");
    drop(_a);
    wait_until("seat released", || {
        usage(&b, "small")
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            < 2
    })
    .await;
    let _c = join(b.addr, Protocol::V5, "c", "u@small").await;
    info!("--- protocol_versions");
    let v3 = RawClient::connect_with(b.addr, as_user(Protocol::V311, "d", "u@small")).await;
    assert_eq!(v3.1.reason, 1, "3.1.1: unacceptable protocol version");
    info!("--- max_connect_rate: a burst of one second's worth, then 0x9F");
    let mut codes = Vec::new();
    for i in 0..4 {
        let c = RawClient::connect_with(b.addr, as_user(Protocol::V5, &format!("r{i}"), "u@slow"))
            .await;
        codes.push(c.1.reason);
    }
    assert_eq!(
        codes,
        vec![
            0,
            0,
            reason::CONNECTION_RATE_EXCEEDED,
            reason::CONNECTION_RATE_EXCEEDED
        ]
    );
    let _ = join(b.addr, Protocol::V5, "o-late", "u@other").await;
    b.stop().await;
}

#[tokio::test]
async fn message_rates_refuse_v5_throttle_v311_and_spare_other_tenants() {
    let text = format!(
        "{}{}",
        tenants(
            &["metered"],
            "[tenant.limits]\nmax_messages_in_per_second = 5"
        ),
        tenants(&["other"], "")
    );
    let (b, _dir) = tenant_broker(&text, |c| c.auth.allow_anonymous = true).await;
    info!("--- MQTT 5: past the burst, PUBACK 0x96");
    let mut v5 = join(b.addr, Protocol::V5, "m5", "u@metered").await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(v5.puback("m/t").await);
    }
    assert!(codes[..5].iter().all(|c| *c < 0x80), "{codes:?}");
    assert!(
        codes[5..]
            .iter()
            .all(|c| *c == reason::MESSAGE_RATE_TOO_HIGH),
        "{codes:?}"
    );
    // A QoS 0 publish over the rate is dropped and counted.
    v5.publish("m/t", q(0), 0, b"x").await;
    wait_until("QoS 0 counted as rate-limited", || {
        b.broker
            .metrics
            .dropped_count(porchlight_broker::metrics::DropReason::RateLimited)
            == 1
    })
    .await;
    info!("--- another tenant publishes freely meanwhile");
    let mut o = join(b.addr, Protocol::V5, "o", "u@other").await;
    for _ in 0..50 {
        assert!(o.puback("o/t").await < 0x80);
    }
    info!("--- MQTT 3.1.1: everything is taken, at the rate");
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the bucket refill
    let mut v3 = join(b.addr, Protocol::V311, "m3", "u@metered").await;
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert_eq!(v3.puback("m/t").await, 0);
    }
    // 5 in the burst, then 5 more at 5/s: at least ~0.8 s.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert!(usage(&b, "metered").rejections(QuotaKind::MessagesIn) >= 3);
    b.stop().await;
}

#[tokio::test]
async fn subscription_qos_and_packet_size_limits() {
    let text = format!(
        "{}{}",
        tenants(
            &["tight"],
            "[tenant.limits]\nmax_subscriptions = 2\nmax_qos = 1\nmax_packet_size = 256"
        ),
        tenants(&["other"], "")
    );
    let (b, _dir) = tenant_broker(&text, |c| c.auth.allow_anonymous = true).await;
    let (mut c, ack) = RawClient::connect_with(b.addr, as_user(Protocol::V5, "s", "u@tight")).await;
    assert_eq!(ack.properties.maximum_qos, Some(1));
    assert_eq!(ack.properties.maximum_packet_size, Some(256));
    info!("--- max_subscriptions over the tenant, max_qos granted lower");
    let granted = c.subscribe_codes(&[("a", 2), ("b", 0), ("c", 0)]).await;
    assert_eq!(granted, vec![1, 0, reason::QUOTA_EXCEEDED]);
    // Replacing an existing subscription is not a new one.
    assert_eq!(c.subscribe_codes(&[("a", 0)]).await, vec![0]);
    let mut d = join(b.addr, Protocol::V311, "s2", "u@tight").await;
    assert_eq!(d.subscribe_codes(&[("d", 0)]).await, vec![0x80]);
    let mut o = join(b.addr, Protocol::V5, "o", "u@other").await;
    assert_eq!(
        o.subscribe_codes(&[("a", 2), ("b", 2), ("c", 2)]).await,
        vec![2, 2, 2]
    );
    info!("--- an unsubscribe frees a place");
    c.send(&Packet::Unsubscribe(
        porchlight_broker::codec::Unsubscribe {
            packet_id: 9,
            filters: vec!["b".into()],
            properties: Default::default(),
        },
    ))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::UnsubAck(_))));
    assert_eq!(d.subscribe_codes(&[("d", 0)]).await, vec![0]);
    info!("--- a QoS 2 publish is above the tenant's maximum");
    c.send(&Packet::Publish(publish_bytes(
        "a",
        q(2),
        5,
        Bytes::from_static(b"x"),
    )))
    .await;
    c.expect_disconnect(Some(reason::QOS_NOT_SUPPORTED)).await;
    info!("--- a packet above max_packet_size");
    let mut big = join(b.addr, Protocol::V5, "big", "u@tight").await;
    big.send(&Packet::Publish(publish_bytes(
        "a",
        q(0),
        0,
        Bytes::from(vec![0u8; 400]),
    )))
    .await;
    big.expect_disconnect(Some(reason::PACKET_TOO_LARGE)).await;
    let mut fine = join(b.addr, Protocol::V5, "big", "u@other").await;
    fine.send(&Packet::Publish(publish_bytes(
        "a",
        q(0),
        0,
        Bytes::from(vec![0u8; 400]),
    )))
    .await;
    fine.expect_silence(Duration::from_millis(200)).await;
    b.stop().await;
}

#[tokio::test]
async fn retained_persistent_session_and_queued_byte_limits() {
    let limited = |persistent: u32| {
        format!(
            "{}{}",
            tenants(
                &["acme"],
                &format!(
                    "[tenant.limits]\nmax_retained_messages = 2\nmax_retained_bytes = 1000\n\
                     max_persistent_sessions = {persistent}\nmax_queued_bytes = 300\n"
                ),
            ),
            tenants(&["globex"], "")
        )
    };
    let (b, dir) = tenant_broker(&limited(1), |_| {}).await;
    let retain = |topic: &str, payload: Bytes| {
        let mut m = publish_bytes(topic, q(1), 3, payload);
        m.retain = true;
        Packet::Publish(m)
    };
    async fn ack(c: &mut RawClient) -> u8 {
        match c.recv().await {
            Some(Packet::PubAck(a)) => a.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    info!("--- retained messages: count and bytes, replacing and deleting stay allowed");
    let mut a = join(b.addr, Protocol::V5, "a", "u@acme").await;
    let small = || Bytes::from_static(b"v");
    for (topic, payload, want) in [
        ("r/1", small(), reason::NO_MATCHING_SUBSCRIBERS),
        ("r/2", small(), reason::NO_MATCHING_SUBSCRIBERS),
        ("r/3", small(), reason::QUOTA_EXCEEDED),
        (
            "r/1",
            Bytes::from_static(b"v2"),
            reason::NO_MATCHING_SUBSCRIBERS,
        ),
        ("r/2", Bytes::new(), reason::NO_MATCHING_SUBSCRIBERS),
        ("r/3", small(), reason::NO_MATCHING_SUBSCRIBERS),
        ("r/1", Bytes::from(vec![b'x'; 2000]), reason::QUOTA_EXCEEDED),
    ] {
        a.send(&retain(topic, payload)).await;
        assert_eq!(ack(&mut a).await, want, "{topic}");
    }
    let u = usage(&b, "acme");
    assert_eq!(load(&u.retained_messages), 2);
    // The broker's own retained $SYS topics do not count.
    porchlight_broker::ops::sys::publish_stats(&b.broker);
    assert_eq!(load(&u.retained_messages), 2);
    assert_eq!(u.rejections(QuotaKind::RetainedMessages), 1);
    assert_eq!(u.rejections(QuotaKind::RetainedBytes), 1);
    // 3.1.1 cannot be told: its retained message over the limit is dropped.
    let mut a3 = join(b.addr, Protocol::V311, "a3", "s@acme").await;
    a3.send(&retain("r/4", small())).await;
    assert_eq!(ack(&mut a3).await, 0);
    let mut check = join(b.addr, Protocol::V5, "check", "p@acme").await;
    check.subscribe("r/#", q(0)).await;
    let mut seen = BTreeMap::new();
    for _ in 0..2 {
        let m = check.expect_publish().await;
        seen.insert(m.topic.clone(), m.payload.clone());
    }
    check.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["r/1", "r/3"]
    );
    assert_eq!(&seen["r/1"][..], b"v2");
    // A retained will over the limit still reaches subscribers, unretained.
    let mut w = as_user(Protocol::V5, "dies", "u@acme");
    w.will = Some(porchlight_broker::codec::Will {
        topic: "r/will".into(),
        payload: Bytes::from_static(b"gone"),
        qos: q(0),
        retain: true,
        properties: porchlight_broker::codec::Properties::default(),
    });
    let (dying, connack) = RawClient::connect_with(b.addr, w).await;
    assert_eq!(connack.reason, 0);
    drop(dying);
    let m = check.expect_publish().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("r/will", &b"gone"[..]));
    assert_eq!(load(&usage(&b, "acme").retained_messages), 2);
    let mut g = join(b.addr, Protocol::V5, "g", "u@globex").await;
    for i in 0..5 {
        g.send(&retain(&format!("r/{i}"), small())).await;
        assert!(ack(&mut g).await < 0x80, "globex is unaffected");
    }

    info!("--- persistent sessions: a new durable session over the limit is refused");
    let durable = |p: Protocol, id: &str, user: &str| {
        let mut c = as_user(p, id, user);
        c.clean_start = false;
        if p == Protocol::V5 {
            c.properties.session_expiry_interval = Some(600);
        }
        c
    };
    let (p1, ack1) = RawClient::connect_with(b.addr, durable(Protocol::V5, "p1", "u@acme")).await;
    assert_eq!(ack1.reason, 0);
    let (_, ack2) = RawClient::connect_with(b.addr, durable(Protocol::V5, "p2", "u@acme")).await;
    assert_eq!(ack2.reason, reason::QUOTA_EXCEEDED);
    let (_, ack3) = RawClient::connect_with(b.addr, durable(Protocol::V311, "p3", "u@acme")).await;
    assert_eq!(ack3.reason, 3, "3.1.1: server unavailable");
    let (mut gp, ackg) =
        RawClient::connect_with(b.addr, durable(Protocol::V5, "p2", "u@globex")).await;
    assert_eq!(ackg.reason, 0, "globex is unaffected");
    gp.subscribe("q/#", q(1)).await;
    drop(gp);
    b.wait_offline_in("globex", "p2").await;
    assert_eq!(load(&usage(&b, "acme").persistent_sessions), 1);
    assert_eq!(
        usage(&b, "acme").rejections(QuotaKind::PersistentSessions),
        2
    );

    info!("--- queued bytes: an offline session's queue stops at the tenant's bytes");
    let mut p1 = p1;
    p1.subscribe("q/#", q(1)).await;
    drop(p1);
    b.wait_offline_in("acme", "p1").await;
    for i in 0..4u16 {
        a.send(&Packet::Publish(publish_bytes(
            "q/x",
            q(1),
            10 + i,
            Bytes::from(vec![b'q'; 100]),
        )))
        .await;
        assert!(ack(&mut a).await < 0x80);
    }
    for i in 0..4u16 {
        g.send(&Packet::Publish(publish_bytes(
            "q/x",
            q(1),
            20 + i,
            Bytes::from(vec![b'q'; 100]),
        )))
        .await;
        assert!(ack(&mut g).await < 0x80);
    }
    assert!(
        load(&usage(&b, "globex").queued_bytes) >= 400,
        "globex queues all four"
    );
    let u = usage(&b, "acme");
    assert!(load(&u.queued_bytes) <= 300, "{}", load(&u.queued_bytes));
    assert_eq!(u.rejections(QuotaKind::QueuedBytes), 2);
    // Two here, and the 3.1.1 retained publish above (the v5 ones were
    // refused with 0x97, not dropped).
    assert_eq!(
        u.drops(porchlight_broker::metrics::DropReason::TenantQuota),
        3
    );
    let (mut p1, ack1) =
        RawClient::connect_with(b.addr, durable(Protocol::V5, "p1", "u@acme")).await;
    assert!(ack1.session_present);
    for _ in 0..2 {
        let m = p1.expect_publish().await;
        p1.send(&Packet::PubAck(porchlight_broker::codec::Ack::new(
            m.packet_id,
            0,
        )))
        .await;
    }
    wait_until("queue drained", || load(&u.queued_bytes) == 0).await;

    info!("--- the metrics carry all of it");
    let text = porchlight_broker::ops::admin::metrics::render_node(&b.broker);
    for line in [
        "porchlight_tenant_retained_messages{tenant=\"acme\"} 2",
        "porchlight_tenant_sessions{tenant=\"acme\",kind=\"persistent\"} 1",
        "porchlight_tenant_quota_rejections_total{tenant=\"acme\",kind=\"queued_bytes\"} 2",
        "porchlight_tenant_messages_dropped_total{tenant=\"acme\",reason=\"tenant_quota\"} 3",
        "porchlight_tenant_retained_messages{tenant=\"globex\"} 5",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    use porchlight_broker::tenant::quota::total;
    assert!(total(&u.messages_out) >= 4 && total(&u.bytes_out) >= 200);

    info!("--- a reload raises the limit for new sessions");
    let m = b.broker.metrics.clone();
    std::fs::write(dir.path().join("tenants.toml"), limited(2)).expect("write");
    wait_until("reloaded", || {
        porchlight_broker::metrics::Metrics::get(&m.auth_reloads) == 1
    })
    .await;
    let (_, ack2) = RawClient::connect_with(b.addr, durable(Protocol::V5, "p2", "u@acme")).await;
    assert_eq!(ack2.reason, 0);
    b.stop().await;
}
