//! Command-line flags (each also `PORCHLIGHT_<FLAG>`) and the validated
//! configuration the rest of the broker reads.
//!
//! `Cli` is what clap parses (`cli.rs`); [`Cli::validate`] turns it into
//! a [`Config`] or an error that names the offending flag, one group of
//! flags at a time (`net.rs`: listeners, TLS, WebSocket, PROXY;
//! `limits.rs`: packets, queues, topics, store, sessions). Nothing is bound or opened
//! here; `main.rs` validates before `ops/server.rs` binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::BrokerError;

mod cli;
pub mod ctl;
mod limits;
mod net;

pub use crate::session::QueueOverflow;
pub use cli::{Cli, FsyncFlag, LogFormat, Subcommand};
pub use ctl::CtlArgs;

/// The validated configuration, shared as `Arc<Config>`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// The default `--listen` was narrowed to loopback: no authentication
    /// and no `--allow-anonymous` (said at start-up).
    pub loopback_only: bool,
    pub tls_listen: Vec<SocketAddr>,
    pub ws_listen: Vec<SocketAddr>,
    pub wss_listen: Vec<SocketAddr>,
    /// Path of the WebSocket upgrade (starts with `/`).
    pub ws_path: String,
    /// `--ws-allowed-origins`, normalized (`ws::normalize_origin`); empty
    /// allows any.
    pub ws_allowed_origins: Vec<String>,
    /// Listeners that read a PROXY header first.
    pub proxy_protocol: crate::net::ProxyListeners,
    /// Set when `tls_listen` is not empty.
    pub tls: Option<crate::net::tls::TlsFiles>,
    pub data_dir: PathBuf,
    pub max_connections: usize,
    pub listen_backlog: u32,
    pub max_packet_size: usize,
    pub receive_maximum: u16,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// `--max-queued-memory`, resolved (0: no bound).
    pub max_queued_memory: u64,
    pub queue_overflow: QueueOverflow,
    /// See `--publish-backpressure-ms`; `None` when 0.
    pub publish_backpressure: Option<Duration>,
    pub store: porchlight_storage::StoreOptions,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    pub max_subscriptions_per_client: usize,
    pub max_keepalive: u16,
    pub max_session_expiry: u32,
    pub connect_timeout: Duration,
    pub topic_alias_maximum: u16,
    pub max_client_id_length: usize,
    /// `None` when `$SYS` topics are off.
    pub sys_interval: Option<Duration>,
    pub shutdown_grace: Duration,
    /// `--drain-delay`.
    pub drain_delay: Duration,
    /// `--log-client-events-per-second`.
    pub log_client_events_per_second: u64,
    pub auth: crate::auth::AuthOptions,
    /// `--admin-listen`; `None` with `--no-admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--admin-token-file`, checked readable and not empty.
    pub admin_token_file: Option<PathBuf>,
    /// The admin endpoint's TLS certificate and key, when it serves TLS
    /// (`--admin-tls` with the `--tls-*` files, or its own).
    pub admin_tls: Option<(PathBuf, PathBuf)>,
    /// How often those files are looked at for a renewal
    /// (`--tls-reload-interval`, as for the MQTT listeners); `None`: never.
    pub admin_tls_reload: Option<Duration>,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> BrokerError {
    BrokerError::InvalidFlag {
        flag,
        reason: reason.into(),
    }
}

impl Cli {
    /// The admin endpoint's TLS files: its own pair, or the MQTT
    /// listeners' with `--admin-tls`.
    fn admin_tls_files(&self) -> Result<Option<(PathBuf, PathBuf)>, BrokerError> {
        match (&self.admin_tls_cert, &self.admin_tls_key) {
            (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
            (Some(_), None) => Err(invalid("--admin-tls-cert", "needs --admin-tls-key")),
            (None, Some(_)) => Err(invalid("--admin-tls-key", "needs --admin-tls-cert")),
            (None, None) if self.admin_tls => match (&self.tls_cert, &self.tls_key) {
                (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
                _ => Err(invalid(
                    "--admin-tls",
                    "needs --tls-cert and --tls-key (or --admin-tls-cert and --admin-tls-key)",
                )),
            },
            (None, None) => Ok(None),
        }
    }

    /// `--admin-token-file`: must hold a token now (it may change later).
    fn admin_token(&self) -> Result<Option<PathBuf>, BrokerError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let flag = "--admin-token-file";
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(flag, format!("cannot read {}: {e}", path.display())))?;
        if text.trim().is_empty() {
            return Err(invalid(flag, format!("{} is empty", path.display())));
        }
        Ok(Some(path.clone()))
    }

    /// Checks every flag, one group at a time (`net.rs`, `limits.rs`), and
    /// builds the configuration.
    pub fn validate(&self) -> Result<Config, BrokerError> {
        self.check_listeners()?;
        self.check_limits()?;
        let tls = self.tls_files()?;
        let ws_allowed_origins = self.websocket()?;
        let proxy_protocol = self.proxy_listeners()?;
        Ok(Config {
            listen: self.tcp_listen(),
            loopback_only: !self.no_tcp_listen && self.listen.is_empty() && !self.network_open(),
            tls_listen: self.tls_listen.clone(),
            ws_listen: self.ws_listen.clone(),
            wss_listen: self.wss_listen.clone(),
            ws_path: self.ws_path.clone(),
            ws_allowed_origins,
            proxy_protocol,
            tls: tls.clone(),
            data_dir: self.data_dir.clone(),
            max_connections: self.max_connections,
            listen_backlog: self.listen_backlog,
            max_packet_size: self.max_packet_size,
            receive_maximum: self.receive_maximum,
            max_inflight: self.max_inflight,
            max_queued_messages: self.max_queued_messages,
            max_queued_bytes: self.max_queued_bytes,
            max_queued_memory: self
                .max_queued_memory
                .unwrap_or_else(crate::session::queue_memory::default_limit),
            queue_overflow: self.queue_overflow,
            publish_backpressure: (self.publish_backpressure_ms > 0)
                .then(|| Duration::from_millis(self.publish_backpressure_ms)),
            store: porchlight_storage::StoreOptions {
                fsync: match self.fsync {
                    FsyncFlag::Always => porchlight_storage::FsyncMode::Always,
                    FsyncFlag::Group => porchlight_storage::FsyncMode::Group,
                    FsyncFlag::Never => porchlight_storage::FsyncMode::Never,
                },
                group_window: Duration::from_millis(self.fsync_group_window),
                max_disk_bytes: (self.max_disk_bytes > 0).then_some(self.max_disk_bytes),
                cache_bytes: self.store_cache_bytes,
            },
            max_topic_length: self.max_topic_length,
            max_topic_levels: self.max_topic_levels,
            max_subscriptions_per_client: self.max_subscriptions_per_client,
            max_keepalive: self.max_keepalive,
            max_session_expiry: self.max_session_expiry,
            connect_timeout: Duration::from_secs(self.connect_timeout),
            topic_alias_maximum: self.topic_alias_maximum,
            max_client_id_length: self.max_client_id_length,
            sys_interval: (!self.no_sys_topics).then(|| Duration::from_secs(self.sys_interval)),
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            drain_delay: Duration::from_secs(self.drain_delay),
            log_client_events_per_second: self.log_client_events_per_second,
            admin_listen: (!self.no_admin_listen).then_some(self.admin_listen),
            admin_token_file: self.admin_token()?,
            admin_tls: self.admin_tls_files()?,
            admin_tls_reload: (self.tls_reload_interval > 0)
                .then(|| Duration::from_secs(self.tls_reload_interval)),
            auth: crate::auth::AuthOptions {
                file: self.auth_file.clone(),
                tenants: self.tenants.clone(),
                reload_interval: (self.auth_reload_interval > 0)
                    .then(|| Duration::from_secs(self.auth_reload_interval)),
                allow_anonymous: self.allow_anonymous,
                client_certificates: tls
                    .as_ref()
                    .is_some_and(|t| t.client_auth != crate::net::tls::ClientAuth::None),
            },
        })
    }
}

impl Config {
    /// A configuration for tests and embedding: defaults, listening on
    /// 127.0.0.1 port 0.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        let cli = <Cli as clap::Parser>::parse_from(["porchlight", "--listen", "127.0.0.1:0"]);
        let mut c = cli.validate().expect("defaults are valid");
        c.data_dir = data_dir;
        // Tests that want it ask for one on port 0.
        c.admin_listen = None;
        c
    }

    /// A session queue's bounds, without flow control (the router sets
    /// that per delivery).
    pub fn queue_limits(&self) -> crate::session::QueueLimits {
        crate::session::QueueLimits {
            max_messages: self.max_queued_messages,
            max_bytes: self.max_queued_bytes,
            overflow: self.queue_overflow,
            backpressure: false,
        }
    }

    pub fn topic_limits(&self) -> crate::topic::TopicLimits {
        crate::topic::TopicLimits {
            max_length: self.max_topic_length,
            max_levels: self.max_topic_levels,
        }
    }
}

#[cfg(test)]
mod tests;
