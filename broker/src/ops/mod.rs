//! The node's lifetime: what runs it and what reports on it.
//!
//! - `ops/server.rs`: binds the listeners, accepts, runs each socket's layers
//!   (`net/`) and hands it to `connection/`; spawns the sweep and reload
//!   tasks; shuts down within `--shutdown-grace`;
//! - `ops/sys.rs`: the `$SYS/broker/...` topics.

pub mod server;
pub mod sys;
