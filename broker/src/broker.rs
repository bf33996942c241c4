//! The broker's shared state, handed to every connection as `Arc<Broker>`.
//!
//! Holds the validated configuration, the metrics, the control state
//! (sessions, trie, retained store), the router, the session registry, the
//! root shutdown token and the task tracker. It owns no sockets: `ops/server.rs` accepts and
//! `connection/mod.rs` serves.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::persist::Persist;
use crate::route::registry::Registry;
use crate::route::router::Router;
use crate::state::{Control, LocalControl, State};

#[derive(Debug)]
pub struct Broker {
    pub config: Arc<Config>,
    /// Authentication and ACLs (`--auth-file`).
    pub auth: Arc<crate::auth::Auth>,
    pub metrics: Arc<Metrics>,
    /// The durable store (`<data-dir>/state`).
    pub persist: Arc<Persist>,
    /// The control state: sessions, subscriptions, retained messages, and
    /// the node's view of them (read here).
    pub state: Arc<State>,
    /// Where every change to the control state is submitted.
    pub control: Arc<dyn Control>,
    /// Per-tenant usage and quota counters (`tenant/`), shared with
    /// `state`.
    pub tenants: Arc<crate::tenant::Tenants>,
    pub router: Arc<Router>,
    pub registry: Registry,
    pub started_at: Instant,
    /// The budget of client connect/disconnect log lines
    /// (`--log-client-events-per-second`).
    pub client_log: crate::ratelog::RateLog,
    /// Cancelled when the node shuts down; every task watches it.
    pub shutdown: CancellationToken,
    /// Every spawned task (connections, timers, `$SYS`), so shutdown can
    /// wait for them within the grace period.
    pub tasks: TaskTracker,
}

impl Broker {
    /// Opens the durable store under `--data-dir`, refusing a corrupt or
    /// incompatible one, and restores what it holds: sessions with their
    /// subscriptions, queues and in-flight messages, retained messages,
    /// pending wills. Expired sessions and messages are purged on the way.
    pub fn open(
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Broker>, BrokerError> {
        // The auth file is checked before the store is opened.
        let auth = Arc::new(crate::auth::Auth::load(&config.auth)?);
        let path = config.data_dir.join("state");
        let persist = Persist::open(&path, config.store.clone())?;
        let restored = persist.load(config.topic_limits())?;
        let metrics = Arc::new(Metrics::default());
        let observed = metrics.clone();
        persist.store().on_flush(move |f| {
            observed.fsync_seconds.observe_duration(f.duration);
            observed.group_commit_writes.observe(f.writes as f64);
        });
        let state = Arc::new(State::new(metrics.clone(), Some(persist.clone())));
        state.queue_memory().set_limit(config.max_queued_memory);
        // The limits the state enforces (retained, persistent sessions,
        // queued bytes); `ops/server.rs` applies them again after each reload.
        state.tenants().apply(&auth.directory());
        let control: Arc<dyn Control> = Arc::new(LocalControl::new(state.clone()));
        let router = Arc::new(Router::new(
            crate::session::QueueLimits {
                backpressure: config.publish_backpressure.is_some(),
                ..config.queue_limits()
            },
            metrics.clone(),
            state.clone(),
            control.clone(),
        ));
        let tasks = TaskTracker::new();
        let registry = Registry::new(
            state.clone(),
            control.clone(),
            router.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        registry.restore(restored);
        let directory = auth.directory();
        state.drop_gateway_state(&*control, |home, target| directory.grants_any(home, target));
        let client_log = crate::ratelog::RateLog::new(config.log_client_events_per_second);
        Ok(Arc::new(Broker {
            config,
            auth,
            metrics,
            persist,
            tenants: state.tenants().clone(),
            state,
            control,
            router,
            registry,
            started_at: Instant::now(),
            client_log,
            shutdown,
            tasks,
        }))
    }
}
