//! The state machine's contract: deterministic, restorable from its
//! snapshot, counts consistent with its records, and each command's
//! effects as documented.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::codec::{Properties, QoS, SubscriptionOptions, Will};
use crate::ids::ClientId;
use crate::message::Message;
use crate::state::command::{decode, encode, DecodeError, FORMAT};

fn key(tenant: &str, client: &str) -> SessionKey {
    SessionKey {
        tenant: TenantId::new(tenant),
        client: ClientId::new(client),
    }
}

fn filter(f: &str) -> TopicFilter {
    TopicFilter::parse(f, crate::topic::TopicLimits::WIDEST).expect("filter")
}

fn will(topic: &str, delay: u32) -> DelayedWill {
    DelayedWill {
        will: Box::new(Will {
            topic: topic.into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        }),
        delay,
    }
}

fn retained(tenant: &str, topic: &str, payload: &'static [u8], expires: Option<u64>) -> Retained {
    Retained {
        message: Arc::new(Message::new(
            TenantId::new(tenant),
            TopicName::trusted(topic.into()),
            Bytes::from_static(payload),
            QoS::AtMostOnce,
            true,
            &Properties::default(),
            None,
        )),
        expires_at_ms: expires,
    }
}

fn connect(k: &SessionKey, clean: bool, expiry: u32) -> Command {
    Command::Connect {
        key: k.clone(),
        clean_start: clean,
        expiry_interval: expiry,
        user: None,
        max_persistent: None,
    }
}

fn subscribe(k: &SessionKey, f: &str) -> Command {
    Command::Subscribe {
        key: k.clone(),
        filter: filter(f),
        options: SubscriptionOptions::new(QoS::AtLeastOnce),
        id: None,
        limits: SubscribeLimits::default(),
    }
}

/// Applies commands at positions 1, 2, …, returning the last output.
struct Machine {
    state: ControlState,
    index: u64,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            state: ControlState::default(),
            index: 0,
        }
    }

    fn apply(&mut self, cmd: Command) -> Output {
        self.index += 1;
        let out = self.state.apply(self.index, cmd);
        assert_eq!(
            self.state.recount(),
            *self.state.all_counts(),
            "counts kept as commands apply equal those rebuilt from the records"
        );
        out
    }

    fn claim(&self, k: &SessionKey) -> Claim {
        self.state.session(k).expect("session").claim
    }
}

fn kinds(out: &Output) -> Vec<&'static str> {
    out.effects
        .iter()
        .map(|e| match e {
            Effect::SessionCreated { .. } => "created",
            Effect::Claimed { .. } => "claimed",
            Effect::BecamePersistent { .. } => "persistent",
            Effect::SessionRecord { .. } => "record",
            Effect::SessionEnded { .. } => "ended",
            Effect::WillPending { .. } => "will-pending",
            Effect::WillCleared { .. } => "will-cleared",
            Effect::PublishWill { .. } => "publish-will",
            Effect::ExpiryDue { .. } => "expiry-due",
            Effect::Subscribed { .. } => "subscribed",
            Effect::Unsubscribed { .. } => "unsubscribed",
            Effect::RetainedSet { .. } => "retained-set",
            Effect::RetainedRemoved { .. } => "retained-removed",
        })
        .collect()
}

#[test]
fn connect_creates_resumes_and_replaces() {
    let mut m = Machine::new();
    let k = key("t", "c");
    let out = m.apply(connect(&k, true, 0));
    assert_eq!(
        out.applied,
        Applied::Connected {
            session: SessionId(1),
            claim: Claim(1),
            resumed: false
        }
    );
    assert_eq!(kinds(&out), ["created", "claimed"]);

    // Resumed: same instance, new claim; a clean session becoming durable
    // brings its subscriptions along.
    m.apply(subscribe(&k, "a/+"));
    let out = m.apply(connect(&k, false, 60));
    assert_eq!(
        out.applied,
        Applied::Connected {
            session: SessionId(1),
            claim: Claim(3),
            resumed: true
        }
    );
    assert_eq!(kinds(&out), ["persistent", "claimed", "record"]);
    assert_eq!(m.state.counts(&k.tenant).persistent_sessions, 1);

    // Clean start: the old instance ends (with its subscriptions), a new
    // one begins.
    let out = m.apply(connect(&k, true, 60));
    assert_eq!(kinds(&out), ["ended", "created", "claimed", "record"]);
    let Effect::SessionEnded {
        session,
        subscriptions,
        persistent,
        ..
    } = &out.effects[0]
    else {
        panic!("ended first");
    };
    assert_eq!(
        (*session, subscriptions.clone(), *persistent),
        (SessionId(1), vec![filter("a/+")], true)
    );
    assert_eq!(m.state.session(&k).expect("session").session, SessionId(4));
    assert_eq!(m.state.counts(&k.tenant).persistent_sessions, 1);
    assert_eq!(m.state.counts(&k.tenant).subscriptions, 0);
}

#[test]
fn a_session_of_another_user_is_not_handed_over() {
    let mut m = Machine::new();
    let k = key("t", "c");
    let as_user = |u: &str| Command::Connect {
        key: k.clone(),
        clean_start: false,
        expiry_interval: 60,
        user: Some(u.into()),
        max_persistent: None,
    };
    m.apply(as_user("alice"));
    let out = m.apply(as_user("alice"));
    assert!(matches!(
        out.applied,
        Applied::Connected { resumed: true, .. }
    ));
    let out = m.apply(as_user("mallory"));
    assert!(matches!(
        out.applied,
        Applied::Connected { resumed: false, .. }
    ));
    assert_eq!(kinds(&out)[0], "ended");
}

#[test]
fn the_persistent_session_limit_travels_in_the_command() {
    let mut m = Machine::new();
    let limited = |c: &str, max| Command::Connect {
        key: key("t", c),
        clean_start: true,
        expiry_interval: 60,
        user: None,
        max_persistent: Some(max),
    };
    assert!(matches!(
        m.apply(limited("a", 1)).applied,
        Applied::Connected { .. }
    ));
    let before = m.state.clone();
    let out = m.apply(limited("b", 1));
    assert_eq!(out.applied, Applied::OverLimit(Limit::PersistentSessions));
    assert!(out.effects.is_empty());
    assert_eq!(m.state, before, "a refused command changes nothing");
    // A clean session is not durable: no seat needed.
    assert!(matches!(
        m.apply(connect(&key("t", "b"), true, 0)).applied,
        Applied::Connected { .. }
    ));
    // Raised: it fits.
    assert!(matches!(
        m.apply(limited("c", 2)).applied,
        Applied::Connected { .. }
    ));
    // Replacing one's own durable session reuses its seat.
    assert!(matches!(
        m.apply(limited("a", 2)).applied,
        Applied::Connected { .. }
    ));
}

#[test]
fn disconnect_ends_a_clean_session_and_parks_a_durable_one() {
    let mut m = Machine::new();
    let clean = key("t", "clean");
    m.apply(connect(&clean, true, 0));
    m.apply(subscribe(&clean, "x"));
    let c = m.claim(&clean);
    let out = m.apply(Command::Disconnect {
        key: clean.clone(),
        claim: c,
        at_ms: 1_000,
        will: Some(will("w", 30)),
    });
    assert_eq!(out.applied, Applied::Disconnected { ended: true });
    // Expiry 0 caps the will delay: published now.
    assert_eq!(kinds(&out), ["publish-will", "ended"]);
    assert!(m.state.session(&clean).is_none());

    let durable = key("t", "durable");
    m.apply(connect(&durable, false, 60));
    let c = m.claim(&durable);
    let out = m.apply(Command::Disconnect {
        key: durable.clone(),
        claim: c,
        at_ms: 1_000,
        will: Some(will("w", 30)),
    });
    assert_eq!(out.applied, Applied::Disconnected { ended: false });
    assert_eq!(kinds(&out), ["will-pending", "record", "expiry-due"]);
    assert!(out.effects.contains(&Effect::ExpiryDue {
        key: durable.clone(),
        claim: c,
        due_ms: 61_000
    }));
    let rec = m.state.session(&durable).expect("session");
    assert_eq!((rec.connected, rec.disconnected_at_ms), (false, 1_000));
    assert_eq!(rec.will.as_ref().map(|w| w.due_ms), Some(31_000));

    // Said twice (or by a connection taken over): stale, nothing changes.
    let before = m.state.clone();
    let out = m.apply(Command::Disconnect {
        key: durable,
        claim: c,
        at_ms: 2_000,
        will: None,
    });
    assert_eq!(out.applied, Applied::Stale);
    assert_eq!(m.state, before);
}

#[test]
fn a_takeover_makes_the_old_claim_stale() {
    let mut m = Machine::new();
    let k = key("t", "c");
    m.apply(connect(&k, false, 60));
    let old = m.claim(&k);
    m.apply(connect(&k, false, 60));
    let out = m.apply(Command::Disconnect {
        key: k.clone(),
        claim: old,
        at_ms: 5,
        will: None,
    });
    assert_eq!(out.applied, Applied::Stale);
    assert!(m.state.session(&k).expect("session").connected);
    let out = m.apply(Command::SetExpiry {
        key: k.clone(),
        claim: old,
        expiry_interval: 0,
    });
    assert_eq!(out.applied, Applied::Stale);
    let new = m.claim(&k);
    let out = m.apply(Command::SetExpiry {
        key: k.clone(),
        claim: new,
        expiry_interval: 5,
    });
    assert_eq!(out.applied, Applied::ExpirySet);
    assert_eq!(kinds(&out), ["record"]);
    assert_eq!(m.state.session(&k).expect("session").expiry_interval, 5);
}

#[test]
fn expiry_and_will_fall_due_by_the_time_in_the_command() {
    let mut m = Machine::new();
    let k = key("t", "c");
    m.apply(connect(&k, false, 10));
    m.apply(subscribe(&k, "$share/g/x"));
    let c = m.claim(&k);
    m.apply(Command::Disconnect {
        key: k.clone(),
        claim: c,
        at_ms: 1_000,
        will: Some(will("w", 5)),
    });
    let will_due = |at_ms| Command::WillDue {
        key: k.clone(),
        claim: c,
        at_ms,
    };
    assert_eq!(m.apply(will_due(5_999)).applied, Applied::Stale);
    let out = m.apply(will_due(6_000));
    assert_eq!(out.applied, Applied::WillReleased);
    assert_eq!(kinds(&out), ["will-cleared", "publish-will"]);
    assert_eq!(m.apply(will_due(6_000)).applied, Applied::Stale, "once");

    let expire = |at_ms| Command::Expire {
        key: k.clone(),
        claim: c,
        at_ms,
    };
    assert_eq!(m.apply(expire(10_999)).applied, Applied::Stale);
    let out = m.apply(expire(11_000));
    assert_eq!(out.applied, Applied::Ended);
    assert_eq!(kinds(&out), ["ended"]);
    assert!(m.state.session(&k).is_none());
    assert_eq!(m.state.counts(&k.tenant), TenantCounts::default());
    assert_eq!(m.apply(expire(12_000)).applied, Applied::NoSession);
}

#[test]
fn a_resume_cancels_the_pending_will_and_the_expiry() {
    let mut m = Machine::new();
    let k = key("t", "c");
    m.apply(connect(&k, false, 10));
    let c = m.claim(&k);
    m.apply(Command::Disconnect {
        key: k.clone(),
        claim: c,
        at_ms: 0,
        will: Some(will("w", 5)),
    });
    let out = m.apply(connect(&k, false, 10));
    assert_eq!(kinds(&out), ["claimed", "will-cleared", "record"]);
    for cmd in [
        Command::WillDue {
            key: k.clone(),
            claim: c,
            at_ms: 99_000,
        },
        Command::Expire {
            key: k.clone(),
            claim: c,
            at_ms: 99_000,
        },
    ] {
        assert_eq!(m.apply(cmd).applied, Applied::Stale);
    }
    // A session that ends with its will pending publishes it.
    let c = m.claim(&k);
    m.apply(Command::Disconnect {
        key: k.clone(),
        claim: c,
        at_ms: 0,
        will: Some(will("w", 5)),
    });
    let out = m.apply(Command::Expire {
        key: k.clone(),
        claim: c,
        at_ms: 10_000,
    });
    // (Its stored will goes with the session's records: no separate delete.)
    assert_eq!(kinds(&out), ["publish-will", "ended"]);
    // Never expires.
    m.apply(connect(&k, false, u32::MAX));
    let c = m.claim(&k);
    let out = m.apply(Command::Disconnect {
        key: k.clone(),
        claim: c,
        at_ms: 0,
        will: None,
    });
    assert_eq!(kinds(&out), ["record"]);
    let out = m.apply(Command::Expire {
        key: k.clone(),
        claim: c,
        at_ms: u64::MAX,
    });
    assert_eq!(out.applied, Applied::Stale);
    // An operator's discard ends it all the same, once disconnected and
    // unclaimed since.
    let out = m.apply(Command::Discard {
        key: k.clone(),
        claim: Claim(c.0 + 1),
    });
    assert_eq!(
        out.applied,
        Applied::Stale,
        "a later claim is not discarded"
    );
    let out = m.apply(Command::Discard { key: k, claim: c });
    assert_eq!(kinds(&out), ["ended"]);
}

#[test]
fn subscriptions_count_against_the_limits_they_carry() {
    let mut m = Machine::new();
    let k = key("t", "c");
    m.apply(connect(&k, true, 0));
    let limited = |f: &str, per_session, tenant| Command::Subscribe {
        key: k.clone(),
        filter: filter(f),
        options: SubscriptionOptions::new(QoS::AtMostOnce),
        id: Some(7),
        limits: SubscribeLimits {
            per_session,
            tenant,
        },
    };
    let out = m.apply(limited("a", Some(2), Some(2)));
    assert_eq!(out.applied, Applied::Existed(false));
    assert_eq!(kinds(&out), ["subscribed"]);
    // Replacing one needs no room.
    assert_eq!(
        m.apply(limited("a", Some(1), Some(1))).applied,
        Applied::Existed(true)
    );
    assert_eq!(
        m.apply(limited("b", Some(1), None)).applied,
        Applied::OverLimit(Limit::SessionSubscriptions)
    );
    assert_eq!(
        m.apply(limited("b", None, Some(1))).applied,
        Applied::OverLimit(Limit::Subscriptions)
    );
    // A gateway's filter counts in the tenant it addresses.
    m.apply(limited("$tenant/other/x", None, Some(1)));
    assert_eq!(m.state.counts(&TenantId::new("other")).subscriptions, 1);
    assert_eq!(m.state.counts(&k.tenant).subscriptions, 1);

    let out = m.apply(Command::Unsubscribe {
        key: k.clone(),
        filter: filter("a"),
    });
    assert_eq!(out.applied, Applied::Existed(true));
    assert_eq!(kinds(&out), ["unsubscribed"]);
    let out = m.apply(Command::Unsubscribe {
        key: k.clone(),
        filter: filter("a"),
    });
    assert_eq!(out.applied, Applied::Existed(false));
    assert!(out.effects.is_empty());
    assert_eq!(
        m.apply(subscribe(&key("t", "nobody"), "a")).applied,
        Applied::NoSession
    );
}

#[test]
fn retained_messages_count_against_the_limits_they_carry() {
    let mut m = Machine::new();
    let limits = RetainLimits {
        messages: Some(1),
        bytes: Some(10),
    };
    let retain = |r: Retained| Command::Retain { message: r, limits };
    let out = m.apply(retain(retained("t", "a", b"12345", None)));
    assert_eq!(out.applied, Applied::Retained(RetainChange::Added));
    assert_eq!(kinds(&out), ["retained-set"]);
    assert_eq!(
        m.apply(retain(retained("t", "b", b"1", None))).applied,
        Applied::OverLimit(Limit::RetainedMessages)
    );
    // `$SYS` topics are the broker's own: not counted.
    assert_eq!(
        m.apply(retain(retained("t", "$SYS/x", b"1", None))).applied,
        Applied::Retained(RetainChange::Added)
    );
    // Topic "a" plus 10 bytes of payload: over 10 bytes.
    assert_eq!(
        m.apply(retain(retained("t", "a", b"1234567890", None)))
            .applied,
        Applied::OverLimit(Limit::RetainedBytes)
    );
    let out = m.apply(retain(retained("t", "a", b"1", None)));
    assert_eq!(out.applied, Applied::Retained(RetainChange::Replaced));
    assert!(matches!(
        &out.effects[0],
        Effect::RetainedSet {
            replaced: Some(6),
            ..
        }
    ));
    let c = m.state.counts(&TenantId::new("t"));
    assert_eq!((c.retained_messages, c.retained_bytes), (1, 2));
    let out = m.apply(retain(retained("t", "a", b"", None)));
    assert_eq!(out.applied, Applied::Retained(RetainChange::Removed));
    assert_eq!(kinds(&out), ["retained-removed"]);
    assert_eq!(
        m.apply(retain(retained("t", "a", b"", None))).applied,
        Applied::Retained(RetainChange::Unchanged)
    );
}

#[test]
fn a_retained_message_expires_by_the_time_in_the_command() {
    let mut m = Machine::new();
    m.apply(Command::Retain {
        message: retained("t", "a", b"x", Some(5_000)),
        limits: RetainLimits::default(),
    });
    let expire = |at_ms| Command::ExpireRetained {
        tenant: TenantId::new("t"),
        topic: TopicName::trusted("a".into()),
        at_ms,
    };
    assert_eq!(
        m.apply(expire(4_999)).applied,
        Applied::Retained(RetainChange::Unchanged)
    );
    let out = m.apply(expire(5_000));
    assert_eq!(out.applied, Applied::Retained(RetainChange::Removed));
    assert_eq!(kinds(&out), ["retained-removed"]);
    assert!(m.state.retained(&TenantId::new("t"), "a").is_none());
}

#[test]
fn commands_results_and_snapshots_round_trip_with_their_format_byte() {
    let k = key("t", "c");
    let cmds = vec![
        Command::Connect {
            key: k.clone(),
            clean_start: false,
            expiry_interval: 60,
            user: Some("u".into()),
            max_persistent: Some(3),
        },
        Command::Disconnect {
            key: k.clone(),
            claim: Claim(1),
            at_ms: 7,
            will: Some(will("w/x", 3)),
        },
        subscribe(&k, "$tenant/o/$share/g/a/#"),
        Command::Retain {
            message: retained("t", "r", b"payload", Some(9)),
            limits: RetainLimits {
                messages: Some(1),
                bytes: None,
            },
        },
    ];
    let mut m = Machine::new();
    for cmd in cmds {
        let bytes = encode(&cmd);
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(decode::<Command>(&bytes), Ok(cmd.clone()));
        let out = m.apply(cmd);
        assert_eq!(decode::<Output>(&encode(&out)), Ok(out));
    }
    assert_eq!(decode::<Command>(&[]), Err(DecodeError::Empty));
    let mut wrong = encode(&subscribe(&k, "a"));
    wrong[0] = FORMAT + 1;
    assert_eq!(
        decode::<Command>(&wrong),
        Err(DecodeError::Format(FORMAT + 1))
    );
    assert!(matches!(
        decode::<Command>(&[FORMAT, 0xff, 0xff]),
        Err(DecodeError::Body(_))
    ));
    let restored = ControlState::from_snapshot(&m.state.snapshot()).expect("snapshot");
    assert_eq!(restored, m.state);
}

/// Random commands over a few tenants, clients, filters and topics, with
/// claims drawn near the positions in use so that stale ones occur too.
fn command() -> impl Strategy<Value = Command> {
    let key =
        (0..2usize, 0..4usize).prop_map(|(t, c)| key(["t0", "t1"][t], ["a", "b", "c", "d"][c]));
    let filter = prop::sample::select(vec![
        "x",
        "x/+",
        "#",
        "$share/g/x",
        "$tenant/t1/x",
        "$tenant/t0/$share/h/#",
    ]);
    let topic = prop::sample::select(vec!["x", "x/y", "$SYS/s", "z"]);
    let expiry = prop::sample::select(vec![0u32, 1, 5, u32::MAX]);
    let claim = (1u64..40).prop_map(Claim);
    let at = 0u64..20_000;
    prop_oneof![
        (
            key.clone(),
            any::<bool>(),
            expiry.clone(),
            prop::option::of(0..2usize),
            prop::option::of(0u64..3)
        )
            .prop_map(
                |(key, clean_start, expiry_interval, user, max_persistent)| Command::Connect {
                    key,
                    clean_start,
                    expiry_interval,
                    user: user.map(|u| ["alice", "bob"][u].to_owned()),
                    max_persistent,
                }
            ),
        (
            key.clone(),
            claim.clone(),
            at.clone(),
            prop::option::of(0u32..10)
        )
            .prop_map(|(key, claim, at_ms, delay)| Command::Disconnect {
                key,
                claim,
                at_ms,
                will: delay.map(|d| will("w", d)),
            }),
        (key.clone(), claim.clone(), expiry).prop_map(|(key, claim, expiry_interval)| {
            Command::SetExpiry {
                key,
                claim,
                expiry_interval,
            }
        }),
        (key.clone(), claim.clone(), at.clone()).prop_map(|(key, claim, at_ms)| Command::Expire {
            key,
            claim,
            at_ms
        }),
        (key.clone(), claim.clone()).prop_map(|(key, claim)| Command::Discard { key, claim }),
        (key.clone(), claim, at.clone()).prop_map(|(key, claim, at_ms)| Command::WillDue {
            key,
            claim,
            at_ms
        }),
        (
            key.clone(),
            filter.clone(),
            prop::option::of(0u64..4),
            prop::option::of(0u64..6)
        )
            .prop_map(|(key, f, per_session, tenant)| Command::Subscribe {
                key,
                filter: filter_of(f),
                options: SubscriptionOptions::new(QoS::AtLeastOnce),
                id: None,
                limits: SubscribeLimits {
                    per_session,
                    tenant,
                },
            }),
        (key, filter).prop_map(|(key, f)| Command::Unsubscribe {
            key,
            filter: filter_of(f),
        }),
        (
            0..2usize,
            topic.clone(),
            prop::sample::select(vec![&b""[..], b"v", b"longer"]),
            prop::option::of(0u64..20_000),
            prop::option::of(0u64..3)
        )
            .prop_map(|(t, topic, payload, expires, max)| Command::Retain {
                message: retained(["t0", "t1"][t], topic, payload, expires),
                limits: RetainLimits {
                    messages: max,
                    bytes: max.map(|m| m * 8),
                },
            }),
        (0..2usize, topic, at).prop_map(|(t, topic, at_ms)| Command::ExpireRetained {
            tenant: TenantId::new(["t0", "t1"][t]),
            topic: TopicName::trusted(topic.into()),
            at_ms,
        }),
    ]
}

fn filter_of(f: &str) -> TopicFilter {
    filter(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The same log gives the same state and the same outputs, and the
    /// counts always equal those rebuilt from the records.
    #[test]
    fn the_same_log_gives_the_same_state(cmds in prop::collection::vec(command(), 1..60)) {
        let (mut a, mut b) = (Machine::new(), Machine::new());
        for cmd in cmds {
            // Through the wire format, as a follower receives it.
            let wire: Command = decode(&encode(&cmd)).expect("decode");
            prop_assert_eq!(&wire, &cmd);
            let out_a = a.apply(cmd);
            let out_b = b.apply(wire);
            prop_assert_eq!(decode::<Output>(&encode(&out_a)).expect("decode"), out_a.clone());
            prop_assert_eq!(out_a, out_b);
        }
        prop_assert_eq!(a.state.snapshot(), b.state.snapshot());
        prop_assert_eq!(&a.state, &b.state);
    }

    /// A snapshot taken anywhere restores to an equal state, which goes on
    /// exactly as the original does.
    #[test]
    fn snapshot_restore_goes_on_alike(
        before in prop::collection::vec(command(), 0..40),
        after in prop::collection::vec(command(), 0..20),
    ) {
        let mut a = Machine::new();
        for cmd in before {
            a.apply(cmd);
        }
        let mut b = Machine {
            state: ControlState::from_snapshot(&a.state.snapshot()).expect("restore"),
            index: a.index,
        };
        prop_assert_eq!(&a.state, &b.state);
        for cmd in after {
            prop_assert_eq!(a.apply(cmd.clone()), b.apply(cmd));
        }
        prop_assert_eq!(a.state.snapshot(), b.state.snapshot());
    }
}
