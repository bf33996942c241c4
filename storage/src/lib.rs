//! Porchlight's durable store: byte-oriented tables on one sled database.
//!
//! Layout:
//! - `store.rs`: [`Store`] opens and checks the data directory, applies
//!   atomic [`Batch`]es, scans tables, and tracks disk use and health.
//! - `commit.rs`: group commit; turns a write's [`Ticket`] into "on disk"
//!   according to the [`FsyncMode`].
//! - `table.rs`: [`Table`], the one registry of table ids, with a range
//!   for each user (the broker; the cluster, later).
//! - `error.rs`: [`StorageError`].
//!
//! The crate knows no MQTT types: callers (the broker's `persist/`, and
//! later the Raft log store) encode their own records and put a
//! format-version byte at the front of every value.
#![forbid(unsafe_code)]

mod blobs;
mod commit;
mod error;
mod journal;
mod store;
mod table;

pub use commit::{Flushed, FsyncMode, Ticket};
pub use error::StorageError;
pub use store::{Batch, Health, Store, StoreOptions, DEFAULT_CACHE_BYTES};
pub use table::{Table, BROKER, CLUSTER};
