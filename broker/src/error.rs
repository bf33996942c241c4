//! The broker crate's error type: fatal start-up and run-time failures.
//!
//! Protocol violations by one client are not errors of this kind; they
//! close that connection with a reason code (`connection/mod.rs`) and are
//! counted in `metrics.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid value for {flag}: {reason}")]
    InvalidFlag { flag: &'static str, reason: String },

    #[error("cannot bind MQTT listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid {flag} {path}: {detail}")]
    Tls {
        flag: &'static str,
        path: PathBuf,
        detail: String,
    },

    #[error("invalid --auth-file {path}: {detail}")]
    AuthFile { path: PathBuf, detail: String },

    #[error("invalid --tenants {path}: {detail}")]
    TenantsFile { path: PathBuf, detail: String },

    #[error("{0}")]
    Storage(#[from] porchlight_storage::StorageError),

    #[error("cannot install signal handler: {0}")]
    Signal(#[source] std::io::Error),
}
