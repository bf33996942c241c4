//! The node's lifetime: what runs it and what reports on it.
//!
//! - `ops/server.rs`: binds the listeners, accepts, runs each socket's layers
//!   (`net/`) and hands it to `connection/`; spawns the sweep and reload
//!   tasks; shuts down within `--shutdown-grace`;
//! - `ops/sys.rs`: the `$SYS/broker/...` topics;
//! - `ops/admin/`: the admin HTTP listener (probes, `/metrics`).

pub mod admin;
pub mod server;
pub mod sys;
