//! Porchlight's MQTT broker as a library, so tests and embedders can start
//! a server in-process (`main.rs` is a thin wrapper).
//!
//! Layout, in the order a packet travels:
//! - `server.rs`: binds listeners, accepts, owns node shutdown;
//!   `proxy.rs`: PROXY protocol headers; `tls.rs`: TLS material for
//!   `--tls-listen`/`--wss-listen`; `ws.rs`: the WebSocket upgrade.
//! - `connection.rs`: one task per connection; its loop and its close.
//!   - `transport.rs`: read/write buffers and batched socket I/O.
//!   - `codec/`: MQTT 3.1/3.1.1/5.0 packets to and from bytes.
//!   - `connect.rs`: the CONNECT handshake and CONNACK.
//!   - `inbound.rs`: packets from the client after CONNECT.
//!   - `outbound.rs`: deliveries from the session to the client.
//! - `state/`: the control state: commands (`command.rs`), the
//!   deterministic state machine over the replicated records
//!   (`control.rs`), and `State`, which applies commands in log order and
//!   acts on their effects for this node; the node's indexes over the
//!   records (`trie.rs`, `retained.rs`).
//! - `registry.rs`: session ownership by connections; when session
//!   commands are issued; `sweeper.rs`: the deadlines it sweeps.
//! - `persist/`: durable records on `porchlight-storage`; `load.rs` reads
//!   them back at start-up.
//! - `session.rs`: one session's node-local runtime: queue, in-flight;
//!   `queue_memory.rs`: the node-wide bound on queued messages.
//! - `router.rs`: publish fan-out.
//! - `message.rs`, `topic.rs`, `ids.rs`: the nouns; `clock.rs`: wall time.
//! - `broker.rs`: the shared state; `config.rs`, `metrics.rs`, `sys.rs`,
//!   `error.rs`; `password.rs`: PHC password hashes.
//! - `reload.rs`: polls flag-named files (TLS material, auth file) for
//!   changes.
//! - `auth/`: who a client is (certificate, password, JWT) and what it may
//!   publish and subscribe (ACL rules).
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod connect;
pub mod connection;
pub mod error;
pub mod ids;
pub(crate) mod inbound;
pub mod message;
pub mod metrics;
pub mod outbound;
pub mod password;
pub mod persist;
pub mod proxy;
pub mod queue_memory;
pub mod registry;
pub mod reload;
pub mod router;
pub mod server;
pub mod session;
pub mod state;
pub mod sweeper;
pub mod sys;
pub mod tenant;
pub mod tls;
pub mod topic;
pub mod transport;
pub mod ws;

pub use config::{Cli, Config};
pub use error::BrokerError;
pub use server::Server;
