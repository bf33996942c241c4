//! The admin HTTP listener (`--admin-listen`): probes, Prometheus metrics,
//! the admin API and the status page.
//!
//! [`Admin::bind`] binds it with the MQTT listeners (`ops/server.rs`), so a
//! taken port fails start-up like any other; [`Admin::serve`] runs axum on
//! it (`serve.rs`, plain or TLS) until the node has drained, so `/readyz` answers 503 for the whole
//! drain. Requests only read the node's shared state (`Broker`) and its
//! counters (`metrics/`); each route's handler is in its own file:
//! `probes.rs` (`/livez`, `/readyz`), `metrics.rs` (`/metrics`, with
//! `process.rs` for the process's own figures), `api.rs` (`/api/v1/...`,
//! with `token.rs` for who may call it), `page.rs` (`/`, the status
//! page, with `history.rs` sampling its rates).

pub mod api;
mod history;
pub mod metrics;
pub mod page;
pub mod probes;
mod process;
mod serve;
mod tls;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::broker::Broker;
use crate::error::BrokerError;

pub use probes::Readiness;

/// What every handler reads.
#[derive(Clone)]
pub struct AdminState {
    pub broker: Arc<Broker>,
    pub ready: Arc<Readiness>,
    pub registry: Arc<prometheus_client::registry::Registry>,
    pub token: Arc<token::Token>,
    /// Whether the admin listener is on a loopback address (the API's
    /// rules without a token file).
    pub loopback: bool,
    pub admin_addr: Option<SocketAddr>,
    /// The MQTT listeners, for `/api/v1/node` and the status page.
    pub listeners: Vec<api::ListenerInfo>,
    /// The last minutes of rates, for the status page.
    pub history: Arc<history::History>,
}

/// The bound admin listener, not yet serving.
#[derive(Debug)]
pub struct Admin {
    listener: TcpListener,
    /// Its TLS, when it serves HTTPS.
    tls: Option<tls::AdminTls>,
}

impl Admin {
    /// Loads the TLS files, if any (a bad one stops start-up naming the
    /// flag), and binds.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
        reload: Option<std::time::Duration>,
    ) -> Result<Admin, BrokerError> {
        let tls = match tls {
            Some((cert, key)) => Some(tls::AdminTls::load(cert, key, reload)?),
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind { addr, source })?;
        Ok(Admin { listener, tls })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop` is cancelled (after the node drained), letting
    /// requests in progress finish.
    pub async fn serve(
        self,
        broker: Arc<Broker>,
        ready: Arc<Readiness>,
        listeners: Vec<api::ListenerInfo>,
        stop: CancellationToken,
    ) {
        let admin_addr = self.local_addr();
        let loopback = admin_addr.is_some_and(|a| a.ip().is_loopback());
        let token = Arc::new(token::Token::new(broker.config.admin_token_file.clone()));
        if let Some(addr) = admin_addr {
            let api = match (&broker.config.admin_token_file, loopback) {
                (Some(_), _) => "on, with a bearer token",
                (None, true) => "read-only (no --admin-token-file)",
                (None, false) => "off (no --admin-token-file on a non-loopback address)",
            };
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            info!(admin_addr = %addr, scheme, api, "Admin endpoint listening: /livez /readyz /metrics /api/v1");
        }
        let history = Arc::new(history::History::default());
        let sampler = tokio::spawn(history::run(history.clone(), broker.clone(), stop.clone()));
        let state = AdminState {
            history,
            registry: Arc::new(metrics::registry(broker.clone())),
            broker,
            ready,
            token,
            loopback,
            admin_addr,
            listeners,
        };
        let app = router(state);
        let watch = self
            .tls
            .clone()
            .map(|tls| tokio::spawn(tls.watch(stop.clone())));
        serve::serve(self.listener, app, self.tls, stop).await;
        if let Some(w) = watch {
            w.abort();
        }
        sampler.abort();
    }
}

/// Every route.
pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/", get(page::page))
        .route("/livez", get(probes::livez))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(metrics::scrape))
        .merge(api::routes(state.clone()))
        .with_state(state)
}
