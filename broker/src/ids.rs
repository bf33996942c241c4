//! Identities as newtypes: tenants, clients, and the session key that joins
//! them.
//!
//! Every piece of broker state is keyed by a [`SessionKey`] or carries a
//! [`TenantId`], so the tenants issue and the Raft state machine find the
//! tenant in every key. Ids are `Arc<str>`: cloned on every delivery, never
//! copied.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: impl Into<Arc<str>>) -> Self {
                $name(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map($name::new)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

string_id!(
    /// A tenant: the namespace of topics, sessions and limits. Single-node
    /// deployments without tenant configuration use [`TenantId::default_tenant`].
    TenantId
);
string_id!(
    /// An MQTT client identifier, unique within its tenant.
    ClientId
);

/// See [`TenantId::node`].
pub const NODE_TENANT: &str = "$node";

impl TenantId {
    /// The tenant every connection belongs to until tenants are configured.
    pub fn default_tenant() -> Self {
        TenantId::new("default")
    }

    /// Where the node-wide `$SYS` is published under `--tenants`: no
    /// configured tenant can take the id (`$` is not allowed in one), and
    /// only operators address it (`$tenant/$node/$SYS/#`).
    pub fn node() -> Self {
        TenantId::new(NODE_TENANT)
    }

    pub fn is_node(&self) -> bool {
        self.as_str() == NODE_TENANT
    }
}

/// The identity of a session: client ids are unique per tenant, so two
/// tenants may both have a client "sensor-1" with separate sessions.
/// Ordered by tenant, then client id (the control state's order).
#[derive(
    Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SessionKey {
    pub tenant: TenantId,
    pub client: ClientId,
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.client)
    }
}

/// One session instance: the control-state log position of the CONNECT
/// that created it. A client id that starts a clean session gets a new
/// one, so the node's indexes (trie entries, timers) tell a stale instance
/// from the live one, and every node of a cluster names it alike.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SessionId(pub u64);

/// One connection's claim on a session: the log position of its CONNECT.
/// Every CONNECT makes a new claim, so what a connection asks after it was
/// taken over (its DISCONNECT, its session's expiry) names a claim that is
/// no longer the session's, and changes nothing.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Claim(pub u64);

/// A process-unique number for one network connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConnectionId(pub u64);

impl ConnectionId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
