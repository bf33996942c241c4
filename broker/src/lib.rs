//! Porchlight's MQTT broker as a library, so tests and embedders can start
//! a server in-process (`main.rs` is a thin wrapper).
//!
//! Layers, top to bottom; a module imports only from layers below it (and
//! its own):
//! - `ctl/`: `porchlight ctl`, a client of the admin API (over HTTP only).
//! - `ops/`: the node's lifetime (`ops/server.rs`: listeners, accept, shutdown;
//!   `ops/sys.rs`: `$SYS`; `ops/admin/`: the admin HTTP listener).
//! - `connection/`: one client's protocol actor: CONNECT (`connection/connect.rs`),
//!   packets in (`connection/inbound.rs`) and deliveries out (`connection/outbound.rs`).
//! - `broker.rs` (the node's shared handles, and how they are built) and
//!   `config/` (flags to a validated `Config`).
//! - `route/`: publish fan-out (`route/router.rs`) and the session lifecycle
//!   (`route/registry.rs`: takeover, detach, timers, wills).
//! - `state/`: the control state: commands, the deterministic state
//!   machine, the `Control` seam, and the node's view of it (`State`: the
//!   trie and retained index, runtime sessions, effects on disk and
//!   timers).
//! - `session/`: one session's node-local runtime (queue, in-flight),
//!   the node's queued-memory bound, the sweeper's deadlines.
//! - `persist/`: durable records on `porchlight-storage`.
//! - `auth/`, `tenant/`: policy: who a client is, what it may do, its
//!   tenant's limits and usage.
//! - `net/`: sockets below MQTT: PROXY, TLS, WebSocket, batched I/O.
//! - the nouns: `codec/` (MQTT packets), `ids.rs`, `message.rs`,
//!   `topic.rs`, `clock.rs`, `metrics/`, `error.rs`, `reload.rs` (file
//!   change polling), `ratelog.rs` (a per-second budget for storm-prone
//!   log lines), `records.rs` (the control state's records and their
//!   one encoding).
//!
//! The public surface is what an embedder or a test needs: [`Server`],
//! [`Cli`]/[`Config`], [`Broker`] and the layers' types below it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod error;
pub mod ids;
pub mod message;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod persist;
pub mod ratelog;
pub mod records;
pub mod reload;
pub mod route;
pub mod session;
pub mod state;
pub mod tenant;
pub mod topic;

pub use broker::Broker;
pub use config::{Cli, Config};
pub use error::BrokerError;
pub use ops::server::Server;
