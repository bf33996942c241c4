//! Commands: every change to the replicated control state, as data, and
//! what applying one did.
//!
//! The control state is what a client's session means beyond one
//! connection and one node: which sessions exist (per tenant and client
//! id), which connection claims each, their expiry, user, disconnect time
//! and pending will, their subscriptions, and the retained messages. It
//! changes only by [`crate::state::ControlState::apply`] of a [`Command`],
//! so the same sequence of commands gives the same state on every node:
//! the seam for the Raft cluster, whose log entries are these commands.
//!
//! A command is self-contained: times travel in it (milliseconds since the
//! Unix epoch, read by the node that proposed it), and so do the limits
//! that gate it (the tenant's quotas as that node knows them). Identities
//! are log positions ([`SessionId`], [`Claim`]), never a process counter.
//!
//! Commands and their results are serde data in the one encoding of
//! `records.rs` ([`encode`], [`decode`]), which the control-state records
//! on disk use too.
//!
//! Next: `control.rs` applies a command and returns [`Output`]: the
//! caller's [`Applied`] and the [`Effect`]s the node's observers act on
//! (`state/mod.rs`: indexes, persistence, timers, metrics).

use serde::{Deserialize, Serialize};

use crate::codec::{SubscriptionOptions, Will};
use crate::ids::{Claim, SessionId, SessionKey, TenantId};
pub use crate::records::{
    decode, encode, will_serde, DecodeError, Retained, SessionMeta, StoredSubscription, FORMAT,
};
use crate::topic::{TopicFilter, TopicName};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A connection claims the session of `key` (CONNECT). The session is
    /// resumed unless `clean_start`, or unless it was last claimed by
    /// another authenticated `user`; otherwise a new instance replaces it.
    /// A new durable session (expiry > 0) needs room under
    /// `max_persistent` (the tenant's `max_persistent_sessions`).
    Connect {
        key: SessionKey,
        clean_start: bool,
        expiry_interval: u32,
        user: Option<String>,
        max_persistent: Option<u64>,
    },
    /// The connection holding `claim` ended at `at_ms`, leaving `will`
    /// (absent after DISCONNECT 0x00). A session with expiry 0 ends; any
    /// other waits, disconnected, for its expiry.
    Disconnect {
        key: SessionKey,
        claim: Claim,
        at_ms: u64,
        will: Option<DelayedWill>,
    },
    /// The client holding `claim` set a new session expiry (MQTT 5
    /// DISCONNECT).
    SetExpiry {
        key: SessionKey,
        claim: Claim,
        expiry_interval: u32,
    },
    /// A timer: the session, disconnected since `claim` ended, has expired
    /// if its expiry has passed at `at_ms`; it ends and its will is due.
    Expire {
        key: SessionKey,
        claim: Claim,
        at_ms: u64,
    },
    /// An operator ended the session (admin API): if no CONNECT claimed it
    /// since `claim`, and it is disconnected, it ends as an expired one
    /// does (its will is due), whatever its expiry.
    Discard { key: SessionKey, claim: Claim },
    /// A timer: the will of the session disconnected since `claim` ended
    /// is due if its delay has passed at `at_ms`.
    WillDue {
        key: SessionKey,
        claim: Claim,
        at_ms: u64,
    },
    /// Add or replace a subscription of a session. A new one needs room
    /// under `limits`.
    Subscribe {
        key: SessionKey,
        filter: TopicFilter,
        options: SubscriptionOptions,
        id: Option<u32>,
        limits: SubscribeLimits,
    },
    /// Remove a subscription of a session.
    Unsubscribe {
        key: SessionKey,
        filter: TopicFilter,
    },
    /// Make `message` the retained message of its topic, or delete that
    /// topic's retained message when the payload is empty. A new message,
    /// or more bytes, need room under `limits` (except on `$SYS` topics).
    Retain {
        message: Retained,
        limits: RetainLimits,
    },
    /// A timer: the retained message of `topic` goes if it expired by
    /// `at_ms` (a newer one that has not is kept).
    ExpireRetained {
        tenant: TenantId,
        topic: TopicName,
        at_ms: u64,
    },
}

/// The limits a new subscription must fit in, as the proposing node knows
/// them: per session (`--max-subscriptions-per-client`) and per tenant
/// (`max_subscriptions`, counted in the tenant its filter addresses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeLimits {
    pub per_session: Option<u64>,
    pub tenant: Option<u64>,
}

/// A tenant's `max_retained_messages` and `max_retained_bytes`, or none
/// (a restored message, a `$SYS` one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainLimits {
    pub messages: Option<u64>,
    pub bytes: Option<u64>,
}

/// A will and its delay (Will Delay Interval, seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelayedWill {
    #[serde(with = "will_serde")]
    pub will: Box<Will>,
    pub delay: u32,
}

/// A limit of the control state that refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limit {
    /// The tenant's `max_persistent_sessions`.
    PersistentSessions,
    /// The session's `--max-subscriptions-per-client`.
    SessionSubscriptions,
    /// The tenant's `max_subscriptions`.
    Subscriptions,
    RetainedMessages,
    RetainedBytes,
}

/// What a retained publish did to its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetainChange {
    Added,
    Replaced,
    Removed,
    Unchanged,
}

/// What applying a command did, for whoever submitted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// `Connect`: the session instance and this connection's claim on it;
    /// `resumed` when an existing session was resumed (session present).
    Connected {
        session: SessionId,
        claim: Claim,
        resumed: bool,
    },
    /// `Disconnect`: the session is disconnected, or `ended` (expiry 0).
    Disconnected { ended: bool },
    /// `Expire`, `Discard`: the session ended.
    Ended,
    /// `WillDue`: the will was released (an effect publishes it).
    WillReleased,
    /// `SetExpiry` done.
    ExpirySet,
    /// `Subscribe`/`Unsubscribe`: whether the subscription existed before.
    Existed(bool),
    /// `Retain`/`ExpireRetained`: what happened to the topic.
    Retained(RetainChange),
    /// The session named does not exist: nothing changed.
    NoSession,
    /// The claim named is no longer the session's (taken over, resumed,
    /// ended), or what a timer asked for is not due: nothing changed.
    Stale,
    /// Over a limit: nothing changed.
    OverLimit(Limit),
}

/// What applying a command caused, for the node's observers. Every node
/// applying the same log sees the same effects; each acts on them for its
/// own indexes, disk, timers and metrics (`state/mod.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    /// A session instance now exists; `persistent` when it is durable
    /// (counted in the tenant's persistent sessions, written to disk).
    SessionCreated {
        key: SessionKey,
        session: SessionId,
        persistent: bool,
    },
    /// The connection of `claim` holds the session now (a CONNECT applied:
    /// the session was created or resumed); timers of earlier claims are
    /// stale.
    Claimed {
        key: SessionKey,
        session: SessionId,
        claim: Claim,
    },
    /// A clean session resumed with an expiry: durable from now on, with
    /// the subscriptions it already has.
    BecamePersistent {
        key: SessionKey,
        subscriptions: Vec<(TopicFilter, StoredSubscription)>,
    },
    /// A durable session's own record changed: its expiry, when it was
    /// last disconnected (0 while connected), its user.
    SessionRecord { key: SessionKey, meta: SessionMeta },
    /// A session instance is gone, with its subscriptions.
    SessionEnded {
        key: SessionKey,
        session: SessionId,
        persistent: bool,
        subscriptions: Vec<TopicFilter>,
    },
    /// A will waits until `due_ms` (or the session's end).
    WillPending {
        key: SessionKey,
        claim: Claim,
        #[serde(with = "will_serde")]
        will: Box<Will>,
        due_ms: u64,
    },
    /// The pending will is gone (resumed in time, or published).
    WillCleared { key: SessionKey },
    /// Publish this will now.
    PublishWill {
        key: SessionKey,
        #[serde(with = "will_serde")]
        will: Box<Will>,
    },
    /// The session, disconnected since `claim` ended, expires at `due_ms`.
    ExpiryDue {
        key: SessionKey,
        claim: Claim,
        due_ms: u64,
    },
    Subscribed {
        key: SessionKey,
        session: SessionId,
        filter: TopicFilter,
        options: SubscriptionOptions,
        id: Option<u32>,
        existed: bool,
    },
    Unsubscribed {
        key: SessionKey,
        session: SessionId,
        filter: TopicFilter,
    },
    /// `message` is its topic's retained message; it replaced one of
    /// `replaced` bytes, if any.
    RetainedSet {
        message: Retained,
        replaced: Option<u64>,
    },
    /// The retained message of `topic` (`size` bytes) is gone.
    RetainedRemoved {
        tenant: TenantId,
        topic: TopicName,
        size: u64,
    },
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub applied: Applied,
    pub effects: Vec<Effect>,
}

impl Output {
    pub(crate) fn only(applied: Applied) -> Output {
        Output {
            applied,
            effects: Vec::new(),
        }
    }
}
