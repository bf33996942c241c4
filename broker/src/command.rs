//! Commands: every change to the broker's control state, as a value.
//!
//! The control state is what a client's session means beyond one
//! connection: which sessions exist (per tenant and client id, with their
//! expiry), their subscriptions, and the retained messages. It changes only
//! by [`crate::state::State::apply`] of a `Command`, so the same sequence of
//! commands always yields the same state. That is the seam for the durable
//! store (commands become records) and for the Raft cluster (commands
//! become log entries applied by every node's state machine).
//!
//! Node-local facts are not commands: which connection owns a session,
//! timers, in-flight windows, and the message queues (the data plane,
//! persisted by the storage work as its own records).

use std::sync::Arc;

use crate::codec::SubscriptionOptions;
use crate::ids::SessionKey;
use crate::message::Message;
use crate::topic::TopicFilter;

#[derive(Debug, Clone)]
pub enum Command {
    /// The session of `key` exists with this expiry interval: created if
    /// absent, its expiry updated if present.
    PutSession {
        key: SessionKey,
        expiry_interval: u32,
    },
    /// The session of `key`, already marked ended, is gone, and with it
    /// every subscription it had.
    DeleteSession { key: SessionKey },
    /// Add or replace a subscription of a session.
    Subscribe {
        key: SessionKey,
        filter: TopicFilter,
        options: SubscriptionOptions,
        id: Option<u32>,
    },
    /// Remove a subscription of a session.
    Unsubscribe {
        key: SessionKey,
        filter: TopicFilter,
    },
    /// Make `message` the retained message of its topic, or delete that
    /// topic's retained message when the payload is empty.
    Retain { message: Arc<Message> },
}

/// What applying a command did.
#[derive(Debug, Clone)]
pub enum Applied {
    /// `PutSession`: the live session, and whether it was created now.
    Session {
        session: Arc<crate::session::Session>,
        created: bool,
    },
    /// `PutSession` found the previous instance still being torn down by
    /// whoever ended it; apply again shortly.
    Ending,
    /// `DeleteSession`: whether an ended session was removed.
    Deleted(bool),
    /// `Subscribe`/`Unsubscribe`: whether the subscription existed before.
    Existed(bool),
    /// `Subscribe`/`Unsubscribe` for a session that does not exist (or has
    /// ended): nothing changed.
    NoSession,
    /// `Retain`: what happened to the retained store.
    Retained(crate::retained::RetainChange),
    /// `PutSession` (a new durable session) or `Retain` (a new retained
    /// message or more retained bytes) over the tenant's limit: nothing
    /// changed.
    OverQuota(crate::tenant::quota::QuotaKind),
}

/// What a command's (or a data-plane change's) durable write did.
#[derive(Debug, Clone)]
pub enum Write {
    /// Nothing to write: a clean session, or persistence does not apply.
    None,
    /// Written; on disk once the store says this ticket is durable.
    Pending(porchlight_storage::Ticket),
    /// The write was refused (disk limit, I/O error): not durable.
    Failed(porchlight_storage::StorageError),
}

impl Write {
    pub fn from_result(
        r: Result<porchlight_storage::Ticket, porchlight_storage::StorageError>,
    ) -> Write {
        match r {
            Ok(t) => Write::Pending(t),
            Err(e) => {
                tracing::warn!(error = %e, "Durable write refused");
                Write::Failed(e)
            }
        }
    }

    /// Combines two writes made for one acknowledgement: the later ticket,
    /// and any failure wins.
    pub fn and(self, other: Write) -> Write {
        match (self, other) {
            (Write::Failed(e), _) | (_, Write::Failed(e)) => Write::Failed(e),
            (Write::Pending(a), Write::Pending(b)) => Write::Pending(a.max(b)),
            (Write::Pending(t), Write::None) | (Write::None, Write::Pending(t)) => {
                Write::Pending(t)
            }
            (Write::None, Write::None) => Write::None,
        }
    }
}
