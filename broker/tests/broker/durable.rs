use std::time::Duration;

use bytes::Bytes;
use porchlight_broker::codec::{reason, Ack, Disconnect, Packet, Properties, Protocol, QoS, Will};
use porchlight_broker::persist;
use porchlight_storage::FsyncMode;

use crate::support::*;

fn numbered(topic: &str, qos: QoS, id: u16, n: u32) -> Packet {
    let mut p = publish(topic, qos, id, b"");
    p.payload = Bytes::from(n.to_be_bytes().to_vec());
    Packet::Publish(p)
}

fn number(p: &porchlight_broker::codec::Publish) -> u32 {
    u32::from_be_bytes(p.payload[..4].try_into().expect("4 bytes"))
}

/// Publishes `n` QoS 1 and `n` QoS 2 messages and waits for every
/// acknowledgement (QoS 2 completed with PUBREL/PUBCOMP).
async fn publish_acknowledged(p: &mut RawClient, n: u32) {
    for i in 0..n {
        let id = (i + 1) as u16;
        p.send(&numbered("d/q1", QoS::AtLeastOnce, id, i)).await;
        assert!(
            matches!(p.recv().await, Some(Packet::PubAck(a)) if a.packet_id == id && a.reason < 0x80)
        );
        p.send(&numbered("d/q2", QoS::ExactlyOnce, id, i)).await;
        assert!(
            matches!(p.recv().await, Some(Packet::PubRec(a)) if a.packet_id == id && a.reason < 0x80)
        );
        p.send(&Packet::PubRel(Ack::new(id, 0))).await;
        assert!(matches!(p.recv().await, Some(Packet::PubComp(a)) if a.packet_id == id));
    }
}

/// Receives until both topics delivered `0..n` in order, acknowledging;
/// QoS 2 exactly once.
async fn drain_in_order(s: &mut RawClient, n: u32) {
    let (mut q1, mut q2, mut completed) = (0u32, 0u32, 0u32);
    while q1 < n || q2 < n || completed < n {
        let m = match s.recv().await {
            Some(Packet::Publish(m)) => m,
            Some(Packet::PubRel(a)) => {
                s.send(&Packet::PubComp(Ack::new(a.packet_id, 0))).await;
                completed += 1;
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        match m.topic.as_str() {
            "d/q1" => {
                assert_eq!(number(&m), q1, "QoS 1 in order");
                q1 += 1;
                s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
            }
            "d/q2" => {
                assert_eq!(number(&m), q2, "QoS 2 in order, exactly once");
                q2 += 1;
                s.send(&Packet::PubRec(Ack::new(m.packet_id, 0))).await;
            }
            t => panic!("unexpected topic {t}"),
        }
    }
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn queued_messages_and_retained_survive_a_restart_in_every_fsync_mode() {
    for mode in [FsyncMode::Group, FsyncMode::Always, FsyncMode::Never] {
        let b = TestBroker::with(|c| c.store.fsync = mode).await;
        let (mut s, _) =
            RawClient::connect_with(b.addr, durable_client(Protocol::V5, "keeper")).await;
        s.subscribe("d/#", q(2)).await;
        drop(s);
        b.wait_offline("keeper").await;
        let mut p = RawClient::connect(b.addr, Protocol::V311, "pub").await;
        publish_acknowledged(&mut p, 20).await;
        let mut r = publish("r/retained", q(1), 99, b"kept");
        r.retain = true;
        p.send(&Packet::Publish(r)).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
        drop(p);

        let b = b.restart().await;
        let (mut s, ack) =
            RawClient::connect_with(b.addr, durable_client(Protocol::V5, "keeper")).await;
        assert!(ack.session_present, "{mode:?}: the session survived");
        drain_in_order(&mut s, 20).await;
        let mut late = RawClient::connect(b.addr, Protocol::V311, "late").await;
        late.subscribe("r/retained", q(0)).await;
        assert_eq!(&late.expect_publish().await.payload[..], b"kept");
        b.stop().await;
    }
}

#[tokio::test]
async fn in_flight_messages_come_back_with_dup_after_a_restart() {
    let b = TestBroker::start().await;
    let (mut s, _) =
        RawClient::connect_with(b.addr, durable_client(Protocol::V311, "flight")).await;
    s.subscribe("f", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "f-pub").await;
    p.send(&numbered("f", QoS::AtLeastOnce, 1, 7)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    let first = s.expect_publish().await; // never acknowledged
    drop((s, p));
    b.wait_offline("flight").await;
    let b = b.restart().await;
    let (mut s, ack) =
        RawClient::connect_with(b.addr, durable_client(Protocol::V311, "flight")).await;
    assert!(ack.session_present);
    let again = s.expect_publish().await;
    assert!(again.dup);
    assert_eq!((again.packet_id, number(&again)), (first.packet_id, 7));
    b.stop().await;
}

#[tokio::test]
async fn exactly_once_survives_a_restart_between_pubrec_and_pubrel() {
    let b = TestBroker::start().await;
    let mut watch = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "eo-sub"))
        .await
        .0;
    watch.subscribe("eo", q(2)).await;
    drop(watch);
    b.wait_offline("eo-sub").await;
    let (mut p, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "eo-pub")).await;
    p.send(&numbered("eo", QoS::ExactlyOnce, 7, 1)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 7));
    drop(p); // no PUBREL before the restart
    b.wait_offline("eo-pub").await;
    let b = b.restart().await;
    let (mut p, ack) =
        RawClient::connect_with(b.addr, durable_client(Protocol::V5, "eo-pub")).await;
    assert!(ack.session_present);
    // The publisher retransmits: it must not be routed a second time.
    let mut again = publish("eo", q(2), 7, b"");
    again.payload = Bytes::from(1u32.to_be_bytes().to_vec());
    again.dup = true;
    p.send(&Packet::Publish(again)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 7));
    p.send(&Packet::PubRel(Ack::new(7, 0))).await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 7 && a.reason == 0)
    );
    let (mut s, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "eo-sub")).await;
    let m = s.expect_publish().await;
    assert_eq!(number(&m), 1);
    s.send(&Packet::PubRec(Ack::new(m.packet_id, 0))).await;
    assert!(matches!(s.recv().await, Some(Packet::PubRel(_))));
    s.send(&Packet::PubComp(Ack::new(m.packet_id, 0))).await;
    s.expect_silence(Duration::from_millis(300)).await;
    b.stop().await;
}

#[tokio::test]
async fn will_delay_and_session_expiry_survive_a_restart() {
    let b = TestBroker::start().await;
    let (mut w, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "w-watch")).await;
    w.subscribe("will/#", q(1)).await;
    drop(w);
    // A session that expires (1 s) while the node is down: its will
    // (delay 600 s) is due when the session ends.
    let mut c = connect_packet(Protocol::V5, "short-lived", false, 60);
    c.properties.session_expiry_interval = Some(1);
    c.will = Some(Will {
        topic: "will/short-lived".into(),
        payload: Bytes::from_static(b"expired"),
        qos: q(1),
        retain: false,
        properties: Properties {
            will_delay_interval: Some(600),
            ..Properties::default()
        },
    });
    let (short, _) = RawClient::connect_with(b.addr, c).await;
    // A session whose will waits 2 s: due after the restart.
    let mut c = durable_client(Protocol::V5, "delayed");
    c.will = Some(Will {
        topic: "will/delayed".into(),
        payload: Bytes::from_static(b"late"),
        qos: q(1),
        retain: false,
        properties: Properties {
            will_delay_interval: Some(2),
            ..Properties::default()
        },
    });
    let (delayed, _) = RawClient::connect_with(b.addr, c).await;
    drop((short, delayed));
    b.wait_offline("short-lived").await;
    b.wait_offline("delayed").await;
    let stopped = tokio::time::Instant::now();
    let dir_broker = b;
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the 1 s expiry pass while down
    let b = {
        dir_broker.shutdown.cancel();
        dir_broker.restart().await
    };
    assert!(
        b.session("short-lived").is_none(),
        "expired while down: purged at start-up"
    );
    let (mut w, ack) =
        RawClient::connect_with(b.addr, durable_client(Protocol::V5, "w-watch")).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = w.expect_publish().await;
        w.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
        got.push((m.topic.clone(), stopped.elapsed()));
    }
    got.sort();
    assert_eq!(got[0].0, "will/delayed");
    assert!(
        got[0].1 >= Duration::from_millis(1900),
        "the delay was kept: {:?}",
        got[0].1
    );
    assert_eq!(got[1].0, "will/short-lived");
    b.stop().await;
}

#[tokio::test]
async fn clean_sessions_never_touch_the_disk() {
    let b = TestBroker::start().await;
    let count = |b: &TestBroker| {
        [
            persist::SESSIONS,
            persist::SUBSCRIPTIONS,
            persist::QUEUE,
            persist::INFLIGHT,
        ]
        .iter()
        .map(|t| b.broker.persist.store().scan(*t).count())
        .sum::<usize>()
    };
    let mut s = RawClient::connect(b.addr, Protocol::V5, "clean").await;
    s.subscribe("c/#", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V311, "clean-pub").await;
    p.publish("c/x", q(1), 1, b"m").await;
    s.expect_publish().await;
    assert_eq!(count(&b), 0);
    let (mut d, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "dur")).await;
    d.subscribe("c/#", q(1)).await;
    assert!(
        count(&b) >= 2,
        "a durable session and its subscription are on disk"
    );
    d.send(&Packet::Disconnect(Disconnect::new(0))).await;
    b.stop().await;
}

#[tokio::test]
async fn a_full_store_refuses_publishes_that_need_durability_and_serves_the_rest() {
    let b = TestBroker::start().await;
    let (mut s, _) =
        RawClient::connect_with(b.addr, durable_client(Protocol::V5, "full-sub")).await;
    s.subscribe("full/#", q(1)).await;
    drop(s);
    b.wait_offline("full-sub").await;
    let mut clean = RawClient::connect(b.addr, Protocol::V5, "full-clean").await;
    clean.subscribe("mem/#", q(1)).await;
    let b = b.restart_with(|c| c.store.max_disk_bytes = Some(1)).await;
    b.broker.persist.store().refresh_disk_used();
    let mut clean = RawClient::connect(b.addr, Protocol::V5, "full-clean").await;
    clean.subscribe("mem/#", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "full-pub").await;
    p.send(&numbered("full/x", QoS::AtLeastOnce, 1, 1)).await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, reason::QUOTA_EXCEEDED),
        other => panic!("{other:?}"),
    }
    // What needs no durability still flows.
    p.send(&numbered("mem/x", QoS::AtLeastOnce, 2, 2)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(a)) if a.reason == 0));
    assert_eq!(number(&clean.expect_publish().await), 2);
    // 3.1.1 cannot be told: the connection is closed.
    let mut v3 = RawClient::connect(b.addr, Protocol::V311, "full-v3").await;
    v3.send(&numbered("full/y", QoS::AtLeastOnce, 1, 3)).await;
    assert_eq!(v3.recv().await, None);
    let mut again = RawClient::connect(b.addr, Protocol::V311, "still-serving").await;
    again.subscribe("ok", q(0)).await;
    b.stop().await;
}

#[tokio::test]
async fn a_failing_disk_refuses_durable_publishes_until_it_recovers() {
    let b = TestBroker::start().await;
    let (mut s, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "io-sub")).await;
    s.subscribe("io", q(1)).await;
    drop(s);
    b.wait_offline("io-sub").await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "io-pub").await;
    b.broker.persist.store().set_fail_writes(true);
    p.send(&numbered("io", QoS::AtLeastOnce, 1, 1)).await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, reason::UNSPECIFIED_ERROR),
        other => panic!("{other:?}"),
    }
    b.broker.persist.store().set_fail_writes(false);
    p.send(&numbered("io", QoS::AtLeastOnce, 2, 2)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(a)) if a.reason == 0));
    let (mut s, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "io-sub")).await;
    assert_eq!(number(&s.expect_publish().await), 2);
    b.stop().await;
}

/// Flags that keep every message of a long crash run queued.
const ROOMY: &[&str] = &[
    "--max-queued-messages",
    "1000000",
    "--max-queued-bytes",
    "1000000000",
];

#[tokio::test]
async fn sigkill_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut broker, addr) = spawn_binary_in(&data, ROOMY);
    let (mut s, _) = RawClient::connect_with(addr, durable_client(Protocol::V5, "crash-sub")).await;
    s.subscribe("d/#", q(2)).await;
    s.send(&Packet::Disconnect(Disconnect::new(0))).await;
    drop(s);
    let mut p = RawClient::connect(addr, Protocol::V311, "crash-pub").await;
    publish_acknowledged(&mut p, 100).await;
    kill9(&mut broker);

    let (mut broker, addr) = spawn_binary_in(&data, ROOMY);
    let (mut s, ack) =
        RawClient::connect_with(addr, durable_client(Protocol::V5, "crash-sub")).await;
    assert!(ack.session_present, "the session survived SIGKILL");
    drain_in_order(&mut s, 100).await;
    kill9(&mut broker);
}

/// Streams QoS 1 messages, up to 100 unacknowledged, until `until`;
/// returns the numbers the broker acknowledged.
async fn stream_until(
    addr: std::net::SocketAddr,
    first: u32,
    until: tokio::time::Instant,
) -> (Vec<u32>, u32) {
    let mut p = RawClient::connect(addr, Protocol::V5, "stream-pub").await;
    let mut next = first;
    let mut inflight = std::collections::HashMap::new();
    let mut acked = Vec::new();
    let mut id: u16 = 0;
    while tokio::time::Instant::now() < until {
        while inflight.len() < 100 {
            id = id.checked_add(1).unwrap_or(1);
            p.send(&numbered("crash/stream", QoS::AtLeastOnce, id, next))
                .await;
            inflight.insert(id, next);
            next += 1;
        }
        match p.recv_within(Duration::from_millis(5)).await {
            Ok(Some(Packet::PubAck(a))) => {
                assert_eq!(a.reason, 0x00);
                if let Some(n) = inflight.remove(&a.packet_id) {
                    acked.push(n);
                }
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => break,
            Err(()) => {}
        }
    }
    (acked, next)
}

/// A xorshift generator seeded from the clock; the seed is printed so a
/// failing run can be reproduced.
fn seeded_rand(what: &str) -> impl FnMut() -> u64 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1;
    eprintln!("{what} seed {seed}");
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// Creates the durable session `id` subscribed to `filter` in a fresh
/// broker on `data`, then kills that broker.
async fn durable_subscriber_in(data: &std::path::Path, id: &str, filter: &str, qos: u8) {
    let (mut broker, addr) = spawn_binary_in(data, ROOMY);
    let (mut s, _) = RawClient::connect_with(addr, durable_client(Protocol::V5, id)).await;
    s.subscribe(filter, q(qos)).await;
    s.send(&Packet::Disconnect(Disconnect::new(0))).await;
    drop(s);
    kill9(&mut broker);
}

#[tokio::test]
async fn randomized_sigkill_during_a_stream_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut rand = seeded_rand("crash test");
    durable_subscriber_in(&data, "stream-sub", "crash/stream", 1).await;
    let mut acked = Vec::new();
    let mut next = 0;
    for _round in 0..20 {
        let (mut broker, addr) = spawn_binary_in(&data, ROOMY);
        // SIGKILL at a random moment 20-220 ms into the stream.
        let until = tokio::time::Instant::now() + Duration::from_millis(20 + rand() % 200);
        let (got, n) = stream_until(addr, next, until).await;
        kill9(&mut broker);
        acked.extend(got);
        next = n;
    }
    assert!(
        acked.len() > 1000,
        "the stream made progress: {} acknowledged",
        acked.len()
    );

    let (mut broker, addr) = spawn_binary_in(&data, ROOMY);
    let (mut s, ack) =
        RawClient::connect_with(addr, durable_client(Protocol::V5, "stream-sub")).await;
    assert!(ack.session_present);
    let mut missing: std::collections::BTreeSet<u32> = acked.iter().copied().collect();
    let mut last_first_seen = None;
    let mut seen = std::collections::HashSet::new();
    while !missing.is_empty() {
        let m = s.expect_publish().await;
        let n = number(&m);
        if seen.insert(n) {
            // Per-topic order: first deliveries never go backwards.
            assert!(last_first_seen < Some(n), "{n} after {last_first_seen:?}");
            last_first_seen = Some(n);
        }
        missing.remove(&n);
        s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
    kill9(&mut broker);
}

#[test]
fn a_corrupt_data_directory_stops_start_up_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("data").join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(state.join("conf"), b"garbage").expect("write");
    std::fs::write(state.join("db"), vec![0x5Au8; 8192]).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&state.display().to_string()),
        "names the path: {text}"
    );
    assert_eq!(
        std::fs::read(state.join("db")).expect("still there").len(),
        8192,
        "not wiped"
    );
}

#[tokio::test]
async fn the_sweeper_purges_expired_messages_while_running() {
    let b = TestBroker::start().await;
    let (mut s, _) =
        RawClient::connect_with(b.addr, durable_client(Protocol::V5, "sweep-sub")).await;
    s.subscribe("sweep", q(1)).await;
    drop(s);
    b.wait_offline("sweep-sub").await;
    let mut p = RawClient::connect(b.addr, Protocol::V5, "sweep-pub").await;
    let mut m = publish("sweep", q(1), 1, b"short-lived");
    m.properties.message_expiry_interval = Some(1);
    p.send(&Packet::Publish(m)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    let mut r = publish("sweep/retained", q(1), 2, b"also short-lived");
    r.retain = true;
    r.properties.message_expiry_interval = Some(1);
    p.send(&Packet::Publish(r)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    let on_disk = |t| b.broker.persist.store().scan(t).count();
    assert_eq!(on_disk(persist::QUEUE), 1);
    assert_eq!(on_disk(persist::RETAINED), 1);
    // Nobody connects or subscribes: the sweeper alone purges both.
    wait_until("expired messages purged", || {
        on_disk(persist::QUEUE) == 0 && on_disk(persist::RETAINED) == 0
    })
    .await;
    assert_eq!(
        b.session("sweep-sub").expect("session").lock().queue.len(),
        0
    );
    assert_eq!(
        b.broker
            .metrics
            .dropped_count(porchlight_broker::metrics::DropReason::Expired),
        1
    );
    b.stop().await;
}

#[tokio::test]
async fn queue_positions_are_not_reused_after_a_restart() {
    let b = TestBroker::start().await;
    let (mut s, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "reuse")).await;
    s.subscribe("ru", q(1)).await;
    let mut p = RawClient::connect(b.addr, Protocol::V311, "ru-pub").await;
    for i in 1..=3u32 {
        p.send(&numbered("ru", QoS::AtLeastOnce, i as u16, i)).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    for _ in 0..3 {
        s.expect_publish().await; // in flight, never acknowledged
    }
    drop((s, p));
    b.wait_offline("reuse").await;
    let b = b.restart().await;
    let (mut s, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "reuse")).await;
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(s.expect_publish().await.packet_id);
    }
    // New messages after the restart, then the old ones are acknowledged:
    // that must not delete the new ones' stored bodies.
    let mut p = RawClient::connect(b.addr, Protocol::V311, "ru-pub").await;
    for i in 4..=6u32 {
        p.send(&numbered("ru", QoS::AtLeastOnce, i as u16, i)).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    for id in old {
        s.send(&Packet::PubAck(Ack::new(id, 0))).await;
    }
    let mut newer = Vec::new();
    for _ in 0..3 {
        newer.push(number(&s.expect_publish().await));
    }
    assert_eq!(newer, vec![4, 5, 6]);
    drop((s, p));
    b.wait_offline("reuse").await;
    let b = b.restart().await;
    let (mut s, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, "reuse")).await;
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(number(&s.expect_publish().await));
    }
    assert_eq!(
        again,
        vec![4, 5, 6],
        "unacknowledged messages survive the second restart"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_will_cancelled_by_reconnecting_stays_cancelled_after_a_restart() {
    let b = TestBroker::start().await;
    let (mut w, _) =
        RawClient::connect_with(b.addr, durable_client(Protocol::V5, "wc-watch")).await;
    w.subscribe("will/#", q(1)).await;
    drop(w);
    let mut c = durable_client(Protocol::V5, "wc");
    c.will = Some(Will {
        topic: "will/wc".into(),
        payload: Bytes::from_static(b"should not appear"),
        qos: q(1),
        retain: false,
        properties: Properties {
            will_delay_interval: Some(1),
            ..Properties::default()
        },
    });
    let (first, _) = RawClient::connect_with(b.addr, c).await;
    drop(first);
    b.wait_offline("wc").await;
    let (mut again, ack) =
        RawClient::connect_with(b.addr, durable_client(Protocol::V5, "wc")).await;
    assert!(
        ack.session_present,
        "reconnected within the delay: will cancelled"
    );
    again.send(&Packet::Disconnect(Disconnect::new(0))).await;
    b.wait_offline("wc").await;
    let b = b.restart().await;
    let (mut w, _) =
        RawClient::connect_with(b.addr, durable_client(Protocol::V5, "wc-watch")).await;
    // Longer than the will's 1 s delay: a stale will record would fire.
    w.expect_silence(Duration::from_millis(1500)).await;
    b.stop().await;
}

/// Streams QoS 2 messages (up to 100 unfinished) until `until`; returns
/// the numbers the broker took responsibility for (PUBREC).
async fn stream_qos2_until(
    addr: std::net::SocketAddr,
    first: u32,
    until: tokio::time::Instant,
) -> (Vec<u32>, u32) {
    let mut p = RawClient::connect(addr, Protocol::V5, "stream2-pub").await;
    let mut next = first;
    let mut open = std::collections::HashMap::new();
    let mut recorded = Vec::new();
    let mut id: u16 = 0;
    while tokio::time::Instant::now() < until {
        while open.len() < 100 {
            id = id.checked_add(1).unwrap_or(1);
            p.send(&numbered("crash/exactly", QoS::ExactlyOnce, id, next))
                .await;
            open.insert(id, next);
            next += 1;
        }
        match p.recv_within(Duration::from_millis(5)).await {
            Ok(Some(Packet::PubRec(a))) => {
                assert_eq!(a.reason, 0x00);
                if let Some(n) = open.get(&a.packet_id) {
                    recorded.push(*n);
                }
                p.send(&Packet::PubRel(Ack::new(a.packet_id, 0))).await;
            }
            Ok(Some(Packet::PubComp(a))) => {
                open.remove(&a.packet_id);
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => break,
            Err(()) => {}
        }
    }
    (recorded, next)
}

#[tokio::test]
async fn randomized_sigkill_keeps_qos2_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut rand = seeded_rand("QoS 2 crash test");
    durable_subscriber_in(&data, "exact-sub", "crash/exactly", 2).await;
    let mut recorded = Vec::new();
    let mut next = 0;
    for _round in 0..20 {
        let (mut broker, addr) = spawn_binary_in(&data, ROOMY);
        let until = tokio::time::Instant::now() + Duration::from_millis(20 + rand() % 200);
        let (got, n) = stream_qos2_until(addr, next, until).await;
        kill9(&mut broker);
        recorded.extend(got);
        next = n;
    }
    assert!(
        recorded.len() > 200,
        "the stream made progress: {}",
        recorded.len()
    );

    let (mut broker, addr) = spawn_binary_in(&data, ROOMY);
    let (mut s, ack) =
        RawClient::connect_with(addr, durable_client(Protocol::V5, "exact-sub")).await;
    assert!(ack.session_present);
    let mut missing: std::collections::BTreeSet<u32> = recorded.iter().copied().collect();
    let mut seen = std::collections::HashSet::new();
    loop {
        let packet = if missing.is_empty() {
            // Everything recorded arrived; anything more must still be new.
            match s.recv_within(Duration::from_millis(500)).await {
                Ok(p) => p,
                Err(()) => break,
            }
        } else {
            s.recv().await
        };
        match packet {
            Some(Packet::Publish(m)) => {
                let n = number(&m);
                assert!(seen.insert(n), "message {n} delivered twice");
                missing.remove(&n);
                s.send(&Packet::PubRec(Ack::new(m.packet_id, 0))).await;
            }
            Some(Packet::PubRel(a)) => s.send(&Packet::PubComp(Ack::new(a.packet_id, 0))).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    kill9(&mut broker);
}

#[tokio::test]
async fn fsync_never_still_reaches_the_disk_within_its_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let flags = ["--fsync", "never"];
    let (mut broker, addr) = spawn_binary_in(&data, &flags);
    let (mut s, _) = RawClient::connect_with(addr, durable_client(Protocol::V5, "never-sub")).await;
    s.subscribe("d/#", q(2)).await;
    s.send(&Packet::Disconnect(Disconnect::new(0))).await;
    drop(s);
    let mut p = RawClient::connect(addr, Protocol::V311, "never-pub").await;
    publish_acknowledged(&mut p, 20).await;
    // The documented window: a sweeper tick (100 ms) to write deferred
    // records, then sled's background flush (500 ms). Past it, SIGKILL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill9(&mut broker);
    let (mut broker, addr) = spawn_binary_in(&data, &flags);
    let (mut s, ack) =
        RawClient::connect_with(addr, durable_client(Protocol::V5, "never-sub")).await;
    assert!(ack.session_present);
    drain_in_order(&mut s, 20).await;
    kill9(&mut broker);
}

#[tokio::test]
async fn a_message_queued_to_many_sessions_is_shared_again_after_a_restart() {
    // Issue 16 item 2: restored queues held one copy of a message per
    // session; a message is now one shared body in memory after a restart
    // too (it is still stored once per session on disk).
    let b = TestBroker::start().await;
    for id in ["share-1", "share-2", "share-3"] {
        let (mut s, _) = RawClient::connect_with(b.addr, durable_client(Protocol::V5, id)).await;
        s.subscribe("d/#", q(1)).await;
        drop(s);
        b.wait_offline(id).await;
    }
    let mut p = RawClient::connect(b.addr, Protocol::V311, "share-pub").await;
    // Two messages (QoS 1 and QoS 2).
    publish_acknowledged(&mut p, 1).await;
    drop(p);
    let b = b.restart().await;
    let fronts: Vec<_> = ["share-1", "share-2", "share-3"]
        .iter()
        .map(|id| {
            let s = b.session(id).expect("restored");
            let st = s.lock();
            assert_eq!(st.queue.len(), 2, "{id}");
            st.queue.iter().map(|d| d.msg.clone()).collect::<Vec<_>>()
        })
        .collect();
    for other in &fronts[1..] {
        for (a, b) in fronts[0].iter().zip(other) {
            assert!(std::sync::Arc::ptr_eq(a, b), "one shared message");
        }
    }
    assert!(!std::sync::Arc::ptr_eq(&fronts[0][0], &fronts[0][1]));
    b.stop().await;
}
