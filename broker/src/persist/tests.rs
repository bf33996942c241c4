//! Unit tests of the record formats that span tables: message bodies
//! stored once for every durable queue entry naming them.

use super::*;
use crate::codec::Properties;
use crate::topic::TopicLimits;

const LIMITS: TopicLimits = TopicLimits {
    max_length: 1024,
    max_levels: 32,
};

fn key(client: &str) -> SessionKey {
    SessionKey {
        tenant: TenantId::default_tenant(),
        client: ClientId::new(client),
    }
}

fn message(payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message::new(
        TenantId::default_tenant(),
        TopicName::trusted("fleet/cmd".into()),
        Bytes::from_static(payload),
        QoS::AtLeastOnce,
        false,
        &Properties::default(),
        None,
    ))
}

fn delivery(msg: &Arc<Message>, seq: u64, sub_id: Option<u32>) -> Delivery {
    Delivery {
        msg: msg.clone(),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: sub_id.into_iter().collect(),
        share: None,
        seq,
    }
}

fn open(dir: &Path) -> Arc<Persist> {
    Persist::open(dir, StoreOptions::default()).expect("open")
}

/// Fails on the build before the body table: every queue entry carried
/// its own copy of the message (1 KiB here), so 200 sessions stored 200.
#[test]
fn a_message_queued_to_many_sessions_is_stored_once_and_shared_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payload: &'static [u8] = &[7u8; 1024];
    {
        let p = open(dir.path());
        let msg = message(payload);
        for i in 0..200u32 {
            let k = key(&format!("c{i}"));
            p.put_session(&k, &SessionMeta::new(3600, 0, None))
                .expect("session");
            p.push_queue(&k, &delivery(&msg, 1, Some(i + 1)), &[])
                .expect("queued");
        }
        p.close().expect("close");
        assert_eq!(p.store().scan(BODIES).count(), 1, "one body record");
        let entries: Vec<_> = p.store().scan(QUEUE).map(|r| r.expect("read")).collect();
        assert_eq!(entries.len(), 200);
        // The first entry carries the message; every other names its body.
        let small = entries.iter().filter(|(_, v)| v.len() < 32).count();
        assert_eq!(small, 199);
    }
    let p = open(dir.path());
    let r = p.load(LIMITS).expect("load");
    assert_eq!(r.sessions.len(), 200);
    let first = r.sessions[0].queue[0].msg.clone();
    assert_eq!(&first.payload[..], payload);
    assert_eq!(first.topic.as_str(), "fleet/cmd");
    for s in &r.sessions {
        assert_eq!(s.queue.len(), 1);
        let d = &s.queue[0];
        assert!(Arc::ptr_eq(&d.msg, &first), "one shared message");
        assert_eq!(d.seq, 1);
        assert_eq!(d.subscription_ids.len(), 1, "per-session fields kept");
    }
}

#[test]
fn a_body_is_deleted_once_no_queue_entry_holds_its_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = open(dir.path());
    let (a, b) = (key("a"), key("b"));
    p.put_session(&a, &SessionMeta::new(3600, 0, None))
        .expect("session");
    p.put_session(&b, &SessionMeta::new(3600, 0, None))
        .expect("session");
    let msg = message(b"on");
    let (da, db) = (delivery(&msg, 1, None), delivery(&msg, 1, None));
    drop(msg);
    p.push_queue(&a, &da, &[]).expect("queued");
    p.push_queue(&b, &db, &[]).expect("queued");
    p.flush_pending();
    assert_eq!(p.store().scan(BODIES).count(), 1);

    // One session took it: the other still names the body.
    p.remove_queued(&a, 1).expect("removed");
    drop(da);
    p.flush_pending();
    assert_eq!(p.store().scan(BODIES).count(), 1, "b still needs it");

    p.remove_queued(&b, 1).expect("removed");
    drop(db);
    p.flush_pending();
    assert_eq!(p.store().scan(BODIES).count(), 0, "released with the last");
    assert_eq!(p.store().scan(QUEUE).count(), 0);
}

#[test]
fn a_body_released_before_its_commit_is_never_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = open(dir.path());
    let a = key("a");
    p.put_session(&a, &SessionMeta::new(3600, 0, None))
        .expect("session");
    let msg = message(b"brief");
    p.push_queue(&a, &delivery(&msg, 1, None), &[])
        .expect("queued");
    p.remove_queued(&a, 1).expect("removed");
    drop(msg);
    p.flush_pending();
    assert_eq!(p.store().scan(BODIES).count(), 0);
    assert_eq!(p.store().scan(QUEUE).count(), 0);
}

#[test]
fn closing_keeps_the_bodies_of_messages_still_queued_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let p = open(dir.path());
        let a = key("a");
        p.put_session(&a, &SessionMeta::new(3600, 0, None))
            .expect("session");
        let msg = message(b"keep me");
        let d = delivery(&msg, 1, None);
        p.push_queue(&a, &d, &[]).expect("queued");
        p.close().expect("close");
        // The process drops its sessions after the store closed: nothing
        // was consumed, so nothing is released.
        drop((d, msg));
        p.flush_pending();
    }
    let p = open(dir.path());
    let r = p.load(LIMITS).expect("load");
    assert_eq!(&r.sessions[0].queue[0].msg.payload[..], b"keep me");
}

#[test]
fn unnamed_bodies_and_entries_without_a_body_are_purged_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (key("a"), key("b"));
    {
        let p = open(dir.path());
        // Two sessions each, so the bodies are records of their own; b's
        // entries carry the messages, and a's (read first) name them.
        let (named, lost) = (message(b"named"), message(b"lost"));
        for k in [&b, &a] {
            p.put_session(k, &SessionMeta::new(3600, 0, None))
                .expect("session");
            p.push_queue(k, &delivery(&named, 1, None), &[])
                .expect("queued");
            p.push_queue(k, &delivery(&lost, 2, None), &[])
                .expect("queued");
        }
        p.flush_pending();
        assert_eq!(p.store().scan(BODIES).count(), 2);
        // Crash remnants: a body nobody names, an entry naming a body that
        // is gone, and a body deleted while the entry carrying its message
        // (b's) is still there.
        let mut batch = Batch::default();
        batch.put(BODIES, &999u64.to_be_bytes(), &[V1, 0, 0]);
        let mut dangling = vec![V2];
        dangling.extend_from_slice(&4242u64.to_be_bytes());
        encode_delivery_fields(&mut dangling, &delivery(&named, 9, None));
        batch.put(QUEUE, &Persist::seq_key(&a, 9), &dangling);
        batch.delete(BODIES, &lost.stored.get().expect("stored").id.to_be_bytes());
        p.store().write(batch).expect("write");
        p.close().expect("close");
    }
    let p = open(dir.path());
    let r = p.load(LIMITS).expect("load");
    let queues: Vec<Vec<&[u8]>> = r
        .sessions
        .iter()
        .map(|s| s.queue.iter().map(|d| &d.msg.payload[..]).collect())
        .collect();
    // a's entry for "lost" finds the message in b's entry, read after it.
    assert_eq!(queues, [[&b"named"[..], b"lost"], [b"named", b"lost"]]);
    assert!(Arc::ptr_eq(
        &r.sessions[0].queue[1].msg,
        &r.sessions[1].queue[1].msg
    ));
    assert_eq!(
        p.store().scan(QUEUE).count(),
        4,
        "the dangling entry is gone"
    );
    // "lost"'s body is written again for a's entry; the unnamed one is gone.
    assert_eq!(p.store().scan(BODIES).count(), 1);
    p.flush_pending();
    assert_eq!(p.store().scan(BODIES).count(), 2);
    let unnamed = p.store().get(BODIES, &999u64.to_be_bytes()).expect("read");
    assert!(unnamed.is_none());
    // New bodies never reuse an id in use, on disk or named.
    drop(r);
    let fresh = message(b"fresh");
    p.push_queue(&a, &delivery(&fresh, 3, None), &[])
        .expect("queued");
    assert!(fresh.stored.get().expect("stored").id > 4242);
}

#[test]
fn queue_entries_written_before_the_body_table_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = key("a");
    {
        let p = open(dir.path());
        p.put_session(&a, &SessionMeta::new(3600, 0, None))
            .expect("session");
        let msg = message(b"old format");
        let d = delivery(&msg, 5, Some(9));
        let mut v = vec![V1];
        encode_message(&mut v, &msg);
        encode_delivery_fields(&mut v, &d);
        put_str(&mut v, msg.tenant.as_str());
        let mut b = Batch::default();
        b.put(QUEUE, &Persist::seq_key(&a, 5), &v);
        p.store().write(b).expect("write");
        p.close().expect("close");
    }
    let p = open(dir.path());
    let r = p.load(LIMITS).expect("load");
    let d = &r.sessions[0].queue[0];
    assert_eq!(&d.msg.payload[..], b"old format");
    assert_eq!((d.seq, &d.subscription_ids[..]), (5, &[9][..]));
}

/// One durable subscriber is the common case: its entry carries the
/// message (one record, not two); a second entry writes the body.
#[test]
fn the_first_entry_of_a_message_carries_it_and_the_second_writes_its_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (key("a"), key("b"), key("c"));
    let msg = message(b"just one");
    {
        let p = open(dir.path());
        for k in [&a, &b, &c] {
            p.put_session(k, &SessionMeta::new(3600, 0, None))
                .expect("session");
        }
        p.push_queue(&a, &delivery(&msg, 1, None), &[])
            .expect("queued");
        p.flush_pending();
        assert_eq!(p.store().scan(BODIES).count(), 0, "inside the entry");
        let (_, entry) = p.store().scan(QUEUE).next().expect("one").expect("read");
        assert_eq!(entry[0], V3);
        // Later, two more sessions queue it: now a body.
        p.push_queue(&b, &delivery(&msg, 1, None), &[])
            .expect("queued");
        p.push_queue(&c, &delivery(&msg, 1, None), &[])
            .expect("queued");
        p.flush_pending();
        assert_eq!(p.store().scan(BODIES).count(), 1);
        p.close().expect("close");
    }
    let p = open(dir.path());
    let r = p.load(LIMITS).expect("load");
    assert_eq!(r.sessions.len(), 3);
    for s in &r.sessions {
        assert_eq!(&s.queue[0].msg.payload[..], b"just one");
        // Every restored message has a body id, so its queue can spill.
        assert!(s.queue[0].msg.stored.get().is_some());
    }
}

/// The control state's records (session, subscription, will, retained)
/// are written in the one encoding (`records.rs`) and read back with the
/// user the session record now keeps; records in the layouts written
/// before it (byte 1 first) still load.
#[test]
fn control_records_use_the_one_encoding_and_legacy_ones_still_load() {
    use crate::codec::{SubscriptionOptions, Will};
    use crate::records::{self, PendingWill, Retained, SessionMeta};
    let dir = tempfile::tempdir().expect("tempdir");
    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
    };
    let retained = |topic: &str| {
        Arc::new(Message::new(
            TenantId::default_tenant(),
            TopicName::trusted(topic.into()),
            Bytes::from_static(b"r"),
            QoS::AtMostOnce,
            true,
            &Properties::default(),
            None,
        ))
    };
    let filter = TopicFilter::parse("a/+", LIMITS).expect("filter");
    let options = SubscriptionOptions::new(QoS::AtLeastOnce);
    {
        let p = open(dir.path());
        // Now: the one encoding.
        let new = key("new");
        p.put_session(&new, &SessionMeta::new(60, 5, Some("alice".into())))
            .expect("session");
        p.put_subscription(&new, &filter, options, Some(9))
            .expect("subscription");
        let pending = PendingWill {
            will: Box::new(will("w/new")),
            due_ms: 77,
        };
        p.put_will(&new, &pending).expect("will");
        p.put_retained(&Retained::new(retained("r/new")))
            .expect("retained");
        let sk = session_key_bytes(&new);
        let first = |t: Table, k: &[u8]| p.store.get(t, k).expect("get").expect("record")[0];
        assert_eq!(first(SESSIONS, &sk), records::FORMAT);
        assert_eq!(first(WILLS, &sk), records::FORMAT);
        // Before: the layouts of earlier builds, written as they did.
        let old = key("old");
        let osk = session_key_bytes(&old);
        let mut b = Batch::default();
        let mut v = vec![V1];
        v.extend_from_slice(&60u32.to_be_bytes());
        v.extend_from_slice(&5u64.to_be_bytes());
        b.put(SESSIONS, &osk, &v);
        let mut v = vec![V1, options_byte(options)];
        v.extend_from_slice(&9u32.to_be_bytes());
        b.put(SUBSCRIPTIONS, &with_suffix(&osk, b"a/+"), &v);
        let mut v = vec![V1];
        v.extend_from_slice(&77u64.to_be_bytes());
        v.push(QoS::AtLeastOnce as u8);
        v.push(1);
        put_str(&mut v, "w/old");
        put_bytes(&mut v, b"bye");
        let mut props = bytes::BytesMut::new();
        Properties::default().write(&mut props);
        put_bytes(&mut v, &props);
        b.put(WILLS, &osk, &v);
        let mut v = vec![V1];
        encode_message(&mut v, &retained("r/old"));
        b.put(
            RETAINED,
            &Persist::retained_key(&TenantId::default_tenant(), "r/old"),
            &v,
        );
        p.store.write(b).expect("legacy records");
        p.store.flush().expect("flush");
    }
    let p = open(dir.path());
    let restored = p.load(LIMITS).expect("load");
    let by = |c: &str| {
        restored
            .sessions
            .iter()
            .find(|s| s.key.client.as_str() == c)
            .expect("session")
    };
    for (c, user) in [("new", Some("alice")), ("old", None)] {
        let s = by(c);
        assert_eq!((s.expiry_interval, s.disconnected_at_ms), (60, 5), "{c}");
        assert_eq!(s.user.as_deref(), user, "{c}");
        assert_eq!(
            s.subscriptions,
            vec![(filter.clone(), options, Some(9))],
            "{c}"
        );
        let (w, due) = s.will.as_ref().expect("will");
        assert_eq!(
            (w.topic.as_str(), due),
            (format!("w/{c}").as_str(), &77),
            "{c}"
        );
    }
    let mut topics: Vec<&str> = restored
        .retained
        .iter()
        .map(|r| r.message.topic.as_str())
        .collect();
    topics.sort();
    assert_eq!(topics, ["r/new", "r/old"]);
}
