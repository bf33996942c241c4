//! The registry on a node without sockets: real state, control and
//! router, owners as the tokens a connection holds.

use super::*;
use crate::codec::{Properties, SubscriptionOptions};
use crate::ids::{ClientId, TenantId};
use crate::session::QueueLimits;
use crate::state::LocalControl;
use crate::topic::TopicFilter;

struct Node {
    state: Arc<State>,
    control: Arc<dyn Control>,
    registry: Registry,
}

fn node() -> Node {
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(State::new(metrics.clone(), None));
    let control: Arc<dyn Control> = Arc::new(LocalControl::new(state.clone()));
    let limits = QueueLimits {
        max_messages: 100,
        max_bytes: 1 << 20,
        overflow: crate::session::QueueOverflow::DropOldest,
        backpressure: false,
    };
    let router = Arc::new(Router::new(
        limits,
        metrics.clone(),
        state.clone(),
        control.clone(),
    ));
    let registry = Registry::new(
        state.clone(),
        control.clone(),
        router,
        metrics,
        CancellationToken::new(),
    );
    Node {
        state,
        control,
        registry,
    }
}

fn key(client: &str) -> SessionKey {
    SessionKey {
        tenant: TenantId::default_tenant(),
        client: ClientId::new(client),
    }
}

fn owner(conn: u64) -> Owner {
    Owner {
        conn: ConnectionId(conn),
        kick: CancellationToken::new(),
        done: CancellationToken::new(),
        info: std::sync::Arc::new(crate::session::ConnInfo {
            peer: "127.0.0.1:1".parse().expect("addr"),
            listener: crate::net::ListenerKind::Tcp,
            protocol_level: 5,
            keep_alive: 30,
            username: None,
            connected_at: std::time::Instant::now(),
            kicked: Default::default(),
        }),
    }
}

impl Node {
    async fn attach(&self, client: &str, clean: bool, expiry: u32, conn: u64) -> (Attached, Owner) {
        let o = owner(conn);
        let a = self
            .registry
            .attach(key(client), clean, expiry, None, None, o.clone())
            .await
            .expect("attached");
        (a, o)
    }

    fn record(&self, client: &str) -> Option<crate::state::SessionRecord> {
        self.state.read(|c| c.session(&key(client)).cloned())
    }

    /// A session subscribed to `filter`, connected.
    async fn subscriber(&self, client: &str, filter: &str) -> Arc<Session> {
        let (a, _) = self.attach(client, true, 0, 900).await;
        let f = TopicFilter::parse(filter, crate::topic::TopicLimits::WIDEST).expect("filter");
        let cmd = Command::Subscribe {
            key: key(client),
            filter: f,
            options: SubscriptionOptions::new(QoS::AtLeastOnce),
            id: None,
            limits: Default::default(),
        };
        self.control.submit(cmd).now().expect("subscribed");
        a.session
    }
}

fn will(topic: &str, delay: u32) -> DelayedWill {
    DelayedWill {
        will: Box::new(Will {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        }),
        delay,
    }
}

#[tokio::test]
async fn a_clean_session_ends_with_its_connection() {
    let n = node();
    let (a, o) = n.attach("c", true, 0, 1).await;
    assert!(!a.resumed);
    assert!(a.session.is_online());
    n.registry.detach(&a.session, o.conn, a.claim, None).await;
    assert!(n.record("c").is_none());
    assert!(n.state.session(&key("c")).is_none());
    assert!(!a.session.is_online());
}

#[tokio::test]
async fn a_durable_session_waits_disconnected_and_resumes_with_a_new_claim() {
    let n = node();
    let (a, o) = n.attach("d", false, 60, 1).await;
    n.registry.detach(&a.session, o.conn, a.claim, None).await;
    let rec = n.record("d").expect("kept");
    assert!(!rec.connected && rec.disconnected_at_ms > 0);
    let (b, _) = n.attach("d", false, 60, 2).await;
    assert!(b.resumed);
    assert!(Arc::ptr_eq(&a.session, &b.session), "the same runtime");
    assert!(b.claim > a.claim);
    // The first connection's late DISCONNECT changes nothing.
    n.registry.detach(&a.session, o.conn, a.claim, None).await;
    assert!(n.record("d").expect("kept").connected);
}

#[tokio::test]
async fn a_clean_start_replaces_the_instance() {
    let n = node();
    let (a, o) = n.attach("r", false, 60, 1).await;
    n.registry.detach(&a.session, o.conn, a.claim, None).await;
    let (b, _) = n.attach("r", true, 60, 2).await;
    assert!(!b.resumed);
    assert_ne!(a.session.id, b.session.id, "a new instance");
    assert!(!Arc::ptr_eq(&a.session, &b.session));
}

#[tokio::test]
async fn a_takeover_kicks_the_owner_and_waits_for_it() {
    let n = node();
    let (a, first) = n.attach("t", false, 60, 1).await;
    // The first connection leaves when kicked, as a connection does.
    let leaving = {
        let (registry, session, first) = (n.registry.clone(), a.session.clone(), first.clone());
        tokio::spawn(async move {
            first.kick.cancelled().await;
            registry.detach(&session, first.conn, a.claim, None).await;
            first.done.cancel();
        })
    };
    let (b, _) = tokio::time::timeout(Duration::from_secs(10), n.attach("t", false, 60, 2))
        .await
        .expect("taken over in time");
    leaving.await.expect("left");
    assert!(b.resumed);
    let owner = b.session.lock().owner.clone().expect("owned");
    assert_eq!(owner.conn, ConnectionId(2));
    assert!(n.record("t").expect("kept").connected);
}

#[tokio::test]
async fn expiry_is_a_command_that_a_resume_makes_stale() {
    let n = node();
    let (a, o) = n.attach("e", false, 1, 1).await;
    n.registry.detach(&a.session, o.conn, a.claim, None).await;
    let rec = n.record("e").expect("kept");
    let due = rec.disconnected_at_ms + 1000;
    // Not due yet: nothing happens.
    n.registry.expire(&a.session, a.claim, due - 1).await;
    assert!(n.record("e").is_some());
    // Resumed meanwhile: the old claim's expiry is stale.
    let (b, ob) = n.attach("e", false, 1, 2).await;
    n.registry.expire(&a.session, a.claim, due + 60_000).await;
    assert!(n.record("e").is_some(), "a resumed session does not expire");
    n.registry.detach(&b.session, ob.conn, b.claim, None).await;
    let due = n.record("e").expect("kept").disconnected_at_ms + 1000;
    n.registry.expire(&b.session, b.claim, due).await;
    assert!(n.record("e").is_none(), "expired");
    assert!(n.state.session(&key("e")).is_none());
}

#[tokio::test]
async fn wills_are_published_now_after_their_delay_or_never_on_resume() {
    let n = node();
    let watcher = n.subscriber("watch", "wills/#").await;
    let queued = || watcher.lock().queue.len();
    // No delay: published as the connection ends.
    let (a, o) = n.attach("w1", false, 60, 1).await;
    n.registry
        .detach(&a.session, o.conn, a.claim, Some(will("wills/w1", 0)))
        .await;
    assert_eq!(queued(), 1);
    // A delay: pending, published when due.
    let (a, o) = n.attach("w2", false, 60, 2).await;
    n.registry
        .detach(&a.session, o.conn, a.claim, Some(will("wills/w2", 5)))
        .await;
    assert_eq!(queued(), 1, "not yet");
    let due = n.record("w2").and_then(|r| r.will).expect("pending").due_ms;
    drop(
        n.registry
            .submit(Command::WillDue {
                key: key("w2"),
                claim: a.claim,
                at_ms: due,
            })
            .await,
    );
    assert_eq!(queued(), 2);
    // Resumed within the delay: never published.
    let (a, o) = n.attach("w3", false, 60, 3).await;
    n.registry
        .detach(&a.session, o.conn, a.claim, Some(will("wills/w3", 5)))
        .await;
    n.attach("w3", false, 60, 4).await;
    assert!(n.record("w3").expect("kept").will.is_none());
    assert_eq!(queued(), 2);
}
