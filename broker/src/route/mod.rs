//! Where messages and session events go.
//!
//! - `route/router.rs`: publish fan-out: matches (the trie, `state/`), merges
//!   overlapping subscriptions per session, queues deliveries on session
//!   runtimes (`session/`), submits `Command::Retain`;
//! - `route/registry.rs`: the session lifecycle: which connection owns each
//!   session's runtime, and when `Connect`, `Disconnect`, `Expire`,
//!   `WillDue`, `ExpireRetained` are submitted; wills go back through the
//!   router, and so do shared deliveries of a member that leaves.
//!
//! Called by `connection/` (publishes, attach, detach) and by the sweep
//! task `ops/server.rs` spawns.

pub mod registry;
pub mod router;

pub use registry::Registry;
pub use router::Router;

/// Runs `f`, which may take milliseconds or wait on a lock (a large
/// fan-out, writing a group commit's records), with this runtime worker's
/// other tasks handed to another worker (`tokio::task::block_in_place`),
/// so they are not held up behind it. Runs `f` as is outside a
/// multi-threaded runtime (unit and integration tests).
pub fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
