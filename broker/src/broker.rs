//! The broker's shared state, handed to every connection as `Arc<Broker>`.
//!
//! Holds the validated configuration, the metrics, the control state
//! (sessions, trie, retained store), the router, the session registry, the
//! root shutdown token and the task tracker. It owns no sockets: `server.rs` accepts and
//! `connection.rs` serves.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router::Router;
use crate::state::State;

#[derive(Debug)]
pub struct Broker {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// The control state: sessions, subscriptions, retained messages.
    pub state: Arc<State>,
    pub router: Arc<Router>,
    pub registry: Registry,
    pub started_at: Instant,
    /// Cancelled when the node shuts down; every task watches it.
    pub shutdown: CancellationToken,
    /// Every spawned task (connections, timers, `$SYS`), so shutdown can
    /// wait for them within the grace period.
    pub tasks: TaskTracker,
}

impl Broker {
    pub fn new(config: Arc<Config>, shutdown: CancellationToken) -> Arc<Broker> {
        let metrics = Arc::new(Metrics::default());
        let state = Arc::new(State::new(metrics.clone()));
        let router = Arc::new(Router::new(config.clone(), metrics.clone(), state.clone()));
        let tasks = TaskTracker::new();
        let registry = Registry::new(
            state.clone(),
            router.clone(),
            metrics.clone(),
            tasks.clone(),
            shutdown.clone(),
        );
        Arc::new(Broker {
            config,
            metrics,
            state,
            router,
            registry,
            started_at: Instant::now(),
            shutdown,
            tasks,
        })
    }
}
