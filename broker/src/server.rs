//! Listeners and the node's lifetime: bind, accept, shut down.
//!
//! [`Server::bind`] prepares the data directory, loads the TLS material and
//! binds every `--listen` and `--tls-listen` address (port 0 works:
//! [`Server::local_addrs`] and [`Server::tls_local_addrs`] report the real
//! ports).
//! [`Server::run`] accepts until the shutdown token is cancelled; each
//! accepted socket gets its own task (`connection.rs`), so the accept loop
//! never waits on a client (a TLS handshake runs in that task, under
//! `--connect-timeout`). Shutdown: stop accepting, connections send v5
//! DISCONNECT 0x8B and close, then wait for every task up to
//! `--shutdown-grace`, then flush the store.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::tls::TlsMaterial;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::broker::Broker;
use crate::config::Config;
use crate::error::BrokerError;

pub struct Server {
    listeners: Vec<TcpListener>,
    tls_listeners: Vec<TcpListener>,
    tls: Option<TlsMaterial>,
    broker: Arc<Broker>,
}

impl Server {
    /// Creates the data directory and binds every listener. Nothing is
    /// served until [`Server::run`].
    pub async fn bind(config: Config, shutdown: CancellationToken) -> Result<Server, BrokerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BrokerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        // TLS material and then the store are checked before any port is bound.
        let tls = match &config.tls {
            Some(files) => Some(TlsMaterial::load(files)?),
            None => None,
        };
        let broker = Broker::open(Arc::new(config), shutdown)?;
        let config = &broker.config;
        let listeners = bind_all(&config.listen).await?;
        let tls_listeners = match tls {
            Some(_) => bind_all(&config.tls_listen).await?,
            None => Vec::new(),
        };
        Ok(Server {
            listeners,
            tls_listeners,
            tls,
            broker,
        })
    }

    /// The bound addresses, in `--listen` order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound TLS addresses, in `--tls-listen` order.
    pub fn tls_local_addrs(&self) -> Vec<SocketAddr> {
        self.tls_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn run(self) {
        let broker = self.broker;
        for addr in self.listeners.iter().filter_map(|l| l.local_addr().ok()) {
            info!(%addr, "Listening for MQTT over TCP");
        }
        for addr in self
            .tls_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
        {
            info!(%addr, "Listening for MQTT over TLS");
        }
        broker.tasks.spawn(broker.registry.clone().sweep());
        broker.tasks.spawn(
            broker
                .auth
                .clone()
                .watch(broker.metrics.clone(), broker.shutdown.clone()),
        );
        if let Some(interval) = broker.config.sys_interval {
            broker
                .tasks
                .spawn(crate::sys::run(broker.clone(), interval));
        }
        let mut accept_loops = tokio::task::JoinSet::new();
        for listener in self.listeners {
            accept_loops.spawn(accept_loop(listener, None, broker.clone()));
        }
        if let Some(tls) = &self.tls {
            broker.tasks.spawn(
                tls.clone()
                    .watch(broker.metrics.clone(), broker.shutdown.clone()),
            );
        }
        for listener in self.tls_listeners {
            accept_loops.spawn(accept_loop(listener, self.tls.clone(), broker.clone()));
        }
        broker.shutdown.cancelled().await;
        info!("Shutting down: no longer accepting connections");
        accept_loops.shutdown().await;
        broker.tasks.close();
        let grace = broker.config.shutdown_grace;
        if tokio::time::timeout(grace, broker.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                grace_secs = grace.as_secs(),
                "Some tasks did not finish within the grace period"
            );
        }
        // Last: everything the sessions wrote reaches the disk.
        broker.persist.flush_pending();
        if let Err(e) = broker.persist.store().close() {
            error!(error = %e, "Final flush of the store failed");
        }
        info!("Shutdown complete");
    }
}

async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, BrokerError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind {
                addr: *addr,
                source,
            })?;
        listeners.push(l);
    }
    Ok(listeners)
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsMaterial>, broker: Arc<Broker>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "Accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let m = &broker.metrics;
        let current = m.connections_current.fetch_add(1, Ordering::Relaxed);
        let over_limit = current >= broker.config.max_connections as u64;
        match &tls {
            None => broker.tasks.spawn(crate::connection::serve(
                stream,
                crate::connection::Origin {
                    peer,
                    cert_identity: None,
                },
                broker.clone(),
                over_limit,
            )),
            Some(tls) => broker
                .tasks
                .spawn(tls.serve(stream, peer, broker.clone(), over_limit)),
        };
    }
}
