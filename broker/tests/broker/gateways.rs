//! Shared gateways end to end: a principal granted other tenants
//! publishes and subscribes in them through `$tenant/<id>/` under their
//! ACLs and quotas (and is refused without a grant), a durable gateway
//! session keeps other tenants' messages across a restart, and a withdrawn
//! grant takes its subscriptions and messages away.

use std::time::Duration;

use porchlight_broker::codec::{reason, Packet, Protocol};
use tracing::info;

use crate::support::*;
use crate::tenants::{as_user, cheap_phc, join, load, tenant_broker, tenants, usage};

/// Reads packets until a PUBLISH, skipping acknowledgements of our own.
async fn next_publish(c: &mut RawClient) -> porchlight_broker::codec::Publish {
    loop {
        match c.recv().await {
            Some(Packet::PubAck(_)) => {}
            Some(Packet::Publish(m)) => return m,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn gateway_grants_allow_exactly_what_they_say() {
    let phc = cheap_phc("pw");
    let grants = |ids: &str| {
        format!(
            "{}[[tenant]]\nid = \"acme\"\n[tenant.limits]\nmax_qos = 1\n\
             [[tenant.acl.rules]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"dev/#\"\n\
             [[tenant.users]]\nusername = \"u\"\npassword_hash = \"{phc}\"\n\
             [[tenant]]\nid = \"gw\"\n\
             [[tenant.users]]\nusername = \"hub\"\npassword_hash = \"{phc}\"\ntenants = [{ids}]\n\
             [[tenant.users]]\nusername = \"plain\"\npassword_hash = \"{phc}\"\n",
            tenants(&["globex", "initech"], "")
        )
    };
    let (b, dir) = tenant_broker(&grants("\"acme\", \"globex\""), |_| {}).await;
    let mut hub = join(b.addr, Protocol::V5, "hub", "hub@gw").await;
    let mut dev = join(b.addr, Protocol::V5, "dev", "u@acme").await;
    let mut glob = join(b.addr, Protocol::V5, "g", "u@globex").await;
    let mut ini = join(b.addr, Protocol::V5, "i", "u@initech").await;
    dev.subscribe("dev/#", q(1)).await;

    info!("--- subscriptions: granted tenants under their ACLs and quotas, others refused");
    let codes = hub
        .subscribe_codes(&[
            ("$tenant/acme/dev/#", 1),
            ("$tenant/globex/#", 1),
            ("$tenant/initech/#", 1),
            ("$tenant/acme/other/#", 1),
            ("$tenant/acme/dev/q2", 2),
            ("$tenant/gw/#", 1),
            ("$tenant/acme", 1),
        ])
        .await;
    assert_eq!(
        codes,
        [
            1,
            1,
            reason::NOT_AUTHORIZED,
            reason::NOT_AUTHORIZED,
            1, // acme's max_qos
            reason::NOT_AUTHORIZED,
            reason::TOPIC_FILTER_INVALID
        ]
    );
    assert_eq!(
        usage(&b, "acme")
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    info!("--- deliveries carry the prefix; an ungranted tenant's never arrive");
    ini.puback("x").await;
    dev.puback("dev/1").await;
    let m = next_publish(&mut hub).await;
    assert_eq!(m.topic, "$tenant/acme/dev/1");
    let _own = next_publish(&mut dev).await;
    glob.puback("g/1").await;
    assert_eq!(next_publish(&mut hub).await.topic, "$tenant/globex/g/1");
    hub.expect_silence(Duration::from_millis(200)).await;

    info!("--- publishes: into a granted tenant, unprefixed to its devices");
    let before = porchlight_broker::tenant::quota::total(&usage(&b, "acme").messages_in);
    hub.publish("$tenant/acme/dev/2", q(1), 5, b"cmd").await;
    let mut got_ack = false;
    let mut got_echo = false;
    while !(got_ack && got_echo) {
        match hub.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.reason, reason::SUCCESS);
                got_ack = true;
            }
            // Its own subscription to acme's dev/# sees it too.
            Some(Packet::Publish(m)) => {
                assert_eq!(m.topic, "$tenant/acme/dev/2");
                got_echo = true;
            }
            other => panic!("{other:?}"),
        }
    }
    let m = next_publish(&mut dev).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("dev/2", &b"cmd"[..]));
    assert_eq!(
        porchlight_broker::tenant::quota::total(&usage(&b, "acme").messages_in),
        before + 1,
        "counted in the target tenant"
    );
    assert_eq!(
        hub.puback("$tenant/initech/x").await,
        reason::NOT_AUTHORIZED
    );
    assert_eq!(
        hub.puback("$tenant/acme/other").await,
        reason::NOT_AUTHORIZED,
        "acme's ACL"
    );
    hub.send(&Packet::Publish(publish(
        "$tenant/acme/dev/q",
        q(2),
        6,
        b"x",
    )))
    .await;
    // Above acme's max_qos (CONNACK told the gateway its own tenant's):
    // this message is refused, the connection stays.
    match hub.recv().await {
        Some(Packet::PubRec(a)) => assert_eq!(a.reason, reason::QUOTA_EXCEEDED),
        other => panic!("expected PUBREC 0x97, got {other:?}"),
    }
    assert_eq!(
        hub.puback("$tenant/globex/still-here").await,
        reason::SUCCESS
    );
    drop(hub);
    let mut hub = join(b.addr, Protocol::V5, "hub2", "hub@gw").await;
    // Unprefixed: its own tenant, which acme's devices never see.
    assert_eq!(hub.puback("dev/3").await, reason::NO_MATCHING_SUBSCRIBERS);
    dev.expect_silence(Duration::from_millis(200)).await;

    info!("--- retained messages and shared groups of the target tenant");
    let mut r = publish("dev/r", q(0), 0, b"kept");
    r.retain = true;
    dev.send(&Packet::Publish(r)).await;
    let _ = next_publish(&mut dev).await; // its own delivery
    let codes = hub
        .subscribe_codes(&[
            ("$tenant/acme/dev/r", 1),
            ("$tenant/globex/$share/grp/s/#", 1),
        ])
        .await;
    assert_eq!(codes, [1, 1]);
    let m = next_publish(&mut hub).await;
    assert_eq!((m.topic.as_str(), m.retain), ("$tenant/acme/dev/r", true));
    glob.puback("s/1").await;
    assert_eq!(next_publish(&mut hub).await.topic, "$tenant/globex/s/1");

    info!("--- no-local is the publishing session's, not a same-named client's of the tenant");
    let mut same_id = join(b.addr, Protocol::V5, "hub2", "u@globex").await;
    let mut nl = porchlight_broker::codec::SubscriptionOptions::new(q(0));
    nl.no_local = true;
    same_id
        .subscribe_opts("nl", nl, porchlight_broker::codec::Properties::default())
        .await;
    hub.subscribe_opts(
        "$tenant/globex/nl",
        nl,
        porchlight_broker::codec::Properties::default(),
    )
    .await;
    hub.publish("$tenant/globex/nl", q(0), 0, b"n").await;
    assert_eq!(same_id.expect_publish().await.topic, "nl");
    hub.expect_silence(Duration::from_millis(200)).await;

    info!("--- without a grant the prefix is refused (v5 0x87, 3.1.1 0x80)");
    let mut plain = join(b.addr, Protocol::V5, "p", "plain@gw").await;
    assert_eq!(
        plain.subscribe_codes(&[("$tenant/acme/dev/#", 1)]).await,
        [reason::NOT_AUTHORIZED]
    );
    assert_eq!(
        plain.puback("$tenant/acme/dev/x").await,
        reason::NOT_AUTHORIZED
    );
    let mut plain3 = join(b.addr, Protocol::V311, "p3", "plain@gw").await;
    assert_eq!(
        plain3.subscribe_codes(&[("$tenant/acme/dev/#", 1)]).await,
        [0x80]
    );
    // A device of acme cannot use it either.
    assert_eq!(
        dev.subscribe_codes(&[("$tenant/globex/#", 1)]).await,
        [reason::NOT_AUTHORIZED]
    );
    dev.expect_silence(Duration::from_millis(100)).await;

    info!("--- a reload that withdraws a grant removes its subscriptions at once");
    let m = b.broker.metrics.clone();
    std::fs::write(dir.path().join("tenants.toml"), grants("\"globex\"")).expect("write");
    wait_until("reloaded", || {
        porchlight_broker::metrics::Metrics::get(&m.auth_reloads) == 1
    })
    .await;
    wait_until("acme subscriptions of the hub gone", || {
        b.session_in("gw", "hub2").is_some_and(|s| {
            !b.broker
                .state
                .subscriptions(&s.key)
                .iter()
                .any(|f| f.as_str().starts_with("$tenant/acme/"))
        })
    })
    .await;
    assert_eq!(
        usage(&b, "acme")
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    dev.puback("dev/5").await;
    let _ = next_publish(&mut dev).await;
    hub.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(
        hub.puback("$tenant/acme/dev/6").await,
        reason::NOT_AUTHORIZED
    );
    // Its globex subscriptions stay.
    glob.puback("s/2").await;
    assert_eq!(next_publish(&mut hub).await.topic, "$tenant/globex/s/2");
    info!("--- a PUBLISH to a malformed prefix is an invalid topic name (0x90)");
    hub.publish("$tenant/globex", q(1), 11, b"x").await;
    hub.expect_disconnect(Some(reason::TOPIC_NAME_INVALID))
        .await;
    b.stop().await;
}

#[tokio::test]
async fn a_durable_gateway_session_keeps_its_tenants_messages_across_a_restart() {
    let phc = cheap_phc("pw");
    let text = format!(
        "{}[[tenant]]\nid = \"gw\"\n\
         [[tenant.users]]\nusername = \"hub\"\npassword_hash = \"{phc}\"\ntenants = [\"acme\"]\n",
        tenants(&["acme"], "")
    );
    let (b, dir) = tenant_broker(&text, |_| {}).await;
    let mut c = as_user(Protocol::V5, "hub", "hub@gw");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (mut hub, ack) = RawClient::connect_with(b.addr, c.clone()).await;
    assert_eq!(ack.reason, 0);
    hub.subscribe("$tenant/acme/t/#", q(1)).await;
    drop(hub);
    b.wait_offline_in("gw", "hub").await;
    let mut dev = join(b.addr, Protocol::V5, "dev", "u@acme").await;
    assert_eq!(dev.puback("t/queued").await, reason::SUCCESS);
    let b = b.restart().await;
    let (mut hub, ack) = RawClient::connect_with(b.addr, c.clone()).await;
    assert!(ack.session_present);
    let m = hub.expect_publish().await;
    assert_eq!(m.topic, "$tenant/acme/t/queued");
    // And the subscription came back in acme's namespace.
    let mut dev = join(b.addr, Protocol::V5, "dev", "u@acme").await;
    dev.puback("t/live").await;
    let m = next_publish(&mut hub).await;
    assert_eq!(m.topic, "$tenant/acme/t/live");
    info!("--- a grant withdrawn while the gateway is offline: its subscription and queue go");
    hub.send(&Packet::PubAck(porchlight_broker::codec::Ack::new(
        m.packet_id,
        0,
    )))
    .await;
    drop(hub);
    b.wait_offline_in("gw", "hub").await;
    assert_eq!(dev.puback("t/waiting").await, reason::SUCCESS);
    let session = b.session_in("gw", "hub").expect("session");
    assert_eq!(session.lock().queue.len(), 1);
    let m = b.broker.metrics.clone();
    std::fs::write(
        dir.path().join("tenants.toml"),
        text.replace("tenants = [\"acme\"]", ""),
    )
    .expect("write");
    wait_until("reloaded", || {
        porchlight_broker::metrics::Metrics::get(&m.auth_reloads) == 1
    })
    .await;
    // (t/queued is still unacknowledged: in flight, it goes too.)
    wait_until("queue, in-flight and subscription gone", || {
        let st = session.lock();
        st.queue.is_empty()
            && st.inflight.is_empty()
            && b.broker.state.subscriptions(&session.key).is_empty()
    })
    .await;
    assert_eq!(load(&usage(&b, "acme").subscriptions), 0);
    assert_eq!(load(&usage(&b, "gw").queued_bytes), 0);
    assert_eq!(dev.puback("t/after").await, reason::NO_MATCHING_SUBSCRIBERS);
    let (mut hub, ack) = RawClient::connect_with(b.addr, c).await;
    assert!(ack.session_present);
    hub.expect_silence(Duration::from_millis(200)).await;
    b.stop().await;
}
