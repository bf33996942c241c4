use super::*;
use crate::codec::Properties;
use crate::ids::{ClientId, TenantId};
use crate::message::Message;
use crate::topic::TopicName;

fn session() -> Session {
    let key = SessionKey {
        tenant: TenantId::default_tenant(),
        client: ClientId::new("s"),
    };
    Session::new(key, SessionId(1), None, None)
}

/// A delivery of QoS `qos` whose payload is `tag`.
fn delivery(qos: u8, tag: u8) -> Delivery {
    let qos = QoS::from_u8(qos).expect("qos");
    let msg = Message::new(
        TenantId::default_tenant(),
        TopicName::trusted("t".into()),
        bytes::Bytes::copy_from_slice(&[tag]),
        qos,
        false,
        &Properties::default(),
        None,
    );
    Delivery {
        msg: Arc::new(msg),
        qos,
        retain: false,
        subscription_ids: Box::default(),
        share: None,
        seq: 0,
    }
}

fn limits(overflow: QueueOverflow, backpressure: bool) -> QueueLimits {
    QueueLimits {
        max_messages: 4,
        max_bytes: 1 << 20,
        overflow,
        backpressure,
    }
}

/// The queue as (QoS, tag) pairs, oldest first.
fn queue(s: &Session) -> Vec<(u8, u8)> {
    let st = s.lock();
    st.queue
        .iter()
        .map(|d| (d.qos as u8, d.msg.payload[0]))
        .collect()
}

fn push(s: &Session, qos: u8, tag: u8, l: QueueLimits) -> EnqueueOutcome {
    s.enqueue(delivery(qos, tag), l).0
}

#[test]
fn qos0_never_displaces_a_queued_qos1_message() {
    for overflow in [QueueOverflow::DropOldest, QueueOverflow::DropNew] {
        let s = session();
        for tag in 1..=4 {
            assert_eq!(
                push(&s, 1, tag, limits(overflow, false)),
                EnqueueOutcome::Queued
            );
        }
        assert_eq!(
            push(&s, 0, 9, limits(overflow, false)),
            EnqueueOutcome::DroppedNew
        );
        assert_eq!(queue(&s), [(1, 1), (1, 2), (1, 3), (1, 4)]);
    }
}

#[test]
fn a_qos0_message_held_past_the_bound_by_flow_control_drops_only_itself() {
    // Flow control let QoS 1 fill the queue to twice its bound; QoS 0
    // (never under flow control) arriving then used to empty the
    // queue down to its bound, QoS 1 messages included.
    let s = session();
    for tag in 1..=8 {
        push(&s, 1, tag, limits(QueueOverflow::DropOldest, true));
    }
    let before = queue(&s);
    assert_eq!(before.len(), 8);
    assert_eq!(
        push(&s, 0, 9, limits(QueueOverflow::DropOldest, false)),
        EnqueueOutcome::DroppedNew
    );
    assert_eq!(queue(&s), before);
}

#[test]
fn qos1_under_flow_control_is_queued_past_twice_the_bound() {
    let s = session();
    for tag in 1..=12 {
        assert_eq!(
            push(&s, 1, tag, limits(QueueOverflow::DropOldest, true)),
            EnqueueOutcome::Queued
        );
    }
    assert_eq!(queue(&s).len(), 12);
    assert!(s.full.load(Ordering::Relaxed));
}

#[test]
fn a_full_queue_drops_its_oldest_qos0_message_first() {
    for overflow in [QueueOverflow::DropOldest, QueueOverflow::DropNew] {
        let s = session();
        for (qos, tag) in [(1, 1), (0, 2), (1, 3), (0, 4)] {
            push(&s, qos, tag, limits(overflow, false));
        }
        // A QoS 1 message takes the place of the oldest QoS 0 one,
        // under either policy.
        assert_eq!(
            push(&s, 1, 5, limits(overflow, false)),
            EnqueueOutcome::DroppedOldest(1)
        );
        assert_eq!(queue(&s), [(1, 1), (1, 3), (0, 4), (1, 5)]);
        // A QoS 0 one too under drop-oldest; drop-new drops it.
        let expect = match overflow {
            QueueOverflow::DropOldest => EnqueueOutcome::DroppedOldest(1),
            QueueOverflow::DropNew => EnqueueOutcome::DroppedNew,
        };
        assert_eq!(push(&s, 0, 6, limits(overflow, false)), expect);
    }
}

#[test]
fn without_qos0_to_drop_the_policy_decides_for_qos1() {
    let s = session();
    for tag in 1..=4 {
        push(&s, 1, tag, limits(QueueOverflow::DropOldest, false));
    }
    assert_eq!(
        push(&s, 1, 5, limits(QueueOverflow::DropOldest, false)),
        EnqueueOutcome::DroppedOldest(1)
    );
    assert_eq!(queue(&s), [(1, 2), (1, 3), (1, 4), (1, 5)]);
    assert_eq!(
        push(&s, 1, 6, limits(QueueOverflow::DropNew, false)),
        EnqueueOutcome::DroppedNew
    );
    assert_eq!(queue(&s), [(1, 2), (1, 3), (1, 4), (1, 5)]);
}

#[test]
fn queue_counters_follow_every_change() {
    let s = session();
    for (qos, tag) in [(0, 1), (1, 2), (0, 3)] {
        push(&s, qos, tag, limits(QueueOverflow::DropOldest, false));
    }
    let mut st = s.lock();
    assert_eq!(
        (st.queued_qos0, st.queued_qos0_bytes, st.queued_bytes),
        (2, 4, 6)
    );
    let d = st.pop_queued().expect("one");
    assert_eq!((st.queued_qos0, st.queued_bytes), (1, 4));
    st.unpop_queued(d);
    assert_eq!((st.queued_qos0, st.queued_bytes), (2, 6));
    st.retain_queued(|d| d.qos != QoS::AtMostOnce);
    assert_eq!(
        (st.queued_qos0, st.queued_qos0_bytes, st.queued_bytes),
        (0, 0, 2)
    );
}

/// A durable, offline session on a real store, with a node-wide
/// queued-memory bound of `limit` bytes.
fn durable_session(dir: &std::path::Path, limit: u64) -> (Session, Arc<QueueMemory>) {
    let key = SessionKey {
        tenant: TenantId::default_tenant(),
        client: ClientId::new("d"),
    };
    let memory = Arc::new(QueueMemory::new(limit));
    let s = Session::new(key.clone(), SessionId(1), None, Some(memory.clone()));
    let p = Persist::open(dir, porchlight_storage::StoreOptions::default()).expect("open");
    p.put_session(&key, &crate::records::SessionMeta::new(3600, 0, None))
        .expect("session");
    s.lock().persist = Some(p);
    (s, memory)
}

fn roomy() -> QueueLimits {
    QueueLimits {
        max_messages: 100,
        ..limits(QueueOverflow::DropOldest, false)
    }
}

/// Tags of every queued delivery, taken in order (spilled ones read
/// back from the store).
fn drain(s: &Session) -> Vec<u8> {
    let mut st = s.lock();
    std::iter::from_fn(|| st.pop_queued())
        .map(|d| d.msg.payload[0])
        .collect()
}

/// A spilled entry's place in memory is what `SPILL_COST` counts.
#[test]
fn a_spilled_place_stays_small() {
    assert!(std::mem::size_of::<Spilled>() <= 24);
}

/// Issue 16 item 2: at the node's bound, durable sessions' bodies are
/// kept on disk only. Each entry here is 2 bytes + 64: the 12th passes
/// three quarters of 1,000, and the ones after it are spilled.
#[test]
fn past_three_quarters_of_the_bound_an_offline_durable_queue_spills_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, memory) = durable_session(dir.path(), 1000);
    for tag in 1..=20 {
        assert_eq!(push(&s, 1, tag, roomy()), EnqueueOutcome::Queued);
    }
    {
        let st = s.lock();
        assert_eq!((st.queue.len(), st.spilled.len()), (12, 8));
        assert_eq!((st.queued_len(), st.queued_bytes), (20, 40));
    }
    let per_entry = 2 + crate::session::queue_memory::ENTRY_COST;
    let spill = crate::session::queue_memory::SPILL_COST;
    assert_eq!(memory.used(), 12 * per_entry + 8 * spill);
    assert_eq!(memory.spilled(), 8);
    // Under the bound again, a queue that spills goes on spilling
    // until it is read back: order is kept.
    memory.set_limit(1 << 20);
    push(&s, 1, 21, roomy());
    assert_eq!(s.lock().spilled.len(), 9);
    s.lock().persist.as_ref().expect("durable").flush_pending();
    assert_eq!(drain(&s), (1..=21).collect::<Vec<u8>>());
    assert_eq!((memory.used(), memory.spilled()), (0, 0));
    let st = s.lock();
    assert_eq!((st.queued_bytes, st.queued_qos0), (0, 0));
}

#[test]
fn spilled_entries_are_dropped_and_expire_without_being_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, memory) = durable_session(dir.path(), 100);
    // 66 bytes an entry: past three quarters from the third on.
    push(&s, 1, 1, roomy());
    push(&s, 1, 2, roomy());
    push(&s, 0, 3, roomy());
    let mut expiring = delivery(1, 4);
    let props = Properties {
        message_expiry_interval: Some(0),
        ..Properties::default()
    };
    expiring.msg = Arc::new(Message::new(
        TenantId::default_tenant(),
        TopicName::trusted("t".into()),
        bytes::Bytes::from_static(&[4]),
        QoS::AtLeastOnce,
        false,
        &props,
        None,
    ));
    s.enqueue(expiring, roomy());
    push(&s, 1, 5, roomy());
    assert_eq!(s.lock().spilled.len(), 3);
    // The expired one goes, by its queue position.
    let gone = s.lock().take_expired(Instant::now());
    assert_eq!(gone, [4]);
    // A full queue drops its spilled QoS 0 entry first.
    let full = QueueLimits {
        max_messages: 4,
        ..roomy()
    };
    assert_eq!(push(&s, 1, 6, full), EnqueueOutcome::DroppedOldest(1));
    assert_eq!(memory.spilled(), 2, "5 and 6");
    assert_eq!(drain(&s), [1, 2, 5, 6]);
    assert_eq!((memory.used(), memory.spilled()), (0, 0));
}

#[test]
fn a_queue_restored_past_three_quarters_of_the_bound_stays_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (s, _) = durable_session(dir.path(), 0);
        for tag in 1..=5 {
            push(&s, 1, tag, roomy());
        }
        let p = s.lock().persist.clone().expect("durable");
        p.close().expect("close");
    }
    let p = Persist::open(dir.path(), porchlight_storage::StoreOptions::default()).expect("reopen");
    let limits = crate::topic::TopicLimits {
        max_length: 64,
        max_levels: 8,
    };
    let mut restored = p.load(limits).expect("load");
    let r = restored.sessions.pop().expect("one session");
    let memory = Arc::new(QueueMemory::new(1000));
    memory.add(800);
    let s = Session::new(r.key.clone(), SessionId(1), None, Some(memory.clone()));
    {
        let mut st = s.lock();
        st.persist = Some(p);
        st.restore_queues(&r.key, r.queue, r.inflight, r.incoming);
        assert_eq!((st.queue.len(), st.spilled.len()), (0, 5));
    }
    drop(restored);
    assert_eq!(drain(&s), [1, 2, 3, 4, 5]);
}
