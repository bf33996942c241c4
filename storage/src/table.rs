//! The one registry of table ids. A table is a one-byte key prefix in the
//! store's data tree; every user of the store takes its tables from a
//! range of its own, so two users (the broker's records and, later, the
//! cluster's Raft logs and snapshots) can never share a table by mistake.
//! `store.rs` prefixes keys with [`Table::id`]; nothing else reads it.

use std::ops::Range;

/// The broker's tables (sessions, subscriptions, queues, retained, ...).
pub const BROKER: Range<u8> = 1..64;
/// The cluster's tables (Raft logs, votes, snapshots): reserved.
pub const CLUSTER: Range<u8> = 64..128;

// The ranges never overlap: checked when the crate builds.
const _: () = assert!(BROKER.end <= CLUSTER.start);

/// A table within the data tree. Made only through the range of its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Table(u8);

impl Table {
    /// The broker's table `id`. Out of [`BROKER`], a `const` fails to
    /// build.
    pub const fn broker(id: u8) -> Table {
        assert!(
            id >= BROKER.start && id < BROKER.end,
            "not a broker table id"
        );
        Table(id)
    }

    /// The cluster's table `id`. Out of [`CLUSTER`], a `const` fails to
    /// build.
    pub const fn cluster(id: u8) -> Table {
        assert!(
            id >= CLUSTER.start && id < CLUSTER.end,
            "not a cluster table id"
        );
        Table(id)
    }

    /// The key prefix, as stored.
    pub const fn id(self) -> u8 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranges_are_apart_and_enforced() {
        assert_eq!(Table::broker(1).id(), 1);
        assert_eq!(Table::cluster(64).id(), 64);
        assert!(std::panic::catch_unwind(|| Table::broker(64)).is_err());
        assert!(std::panic::catch_unwind(|| Table::cluster(63)).is_err());
        assert!(std::panic::catch_unwind(|| Table::broker(0)).is_err());
    }
}
