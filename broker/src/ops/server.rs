//! Listeners and the node's lifetime: bind, accept, shut down.
//!
//! [`Server::bind`] prepares the data directory, loads the TLS material and
//! the auth file, and binds every `--listen`, `--tls-listen`,
//! `--ws-listen` and `--wss-listen` address (port 0 works:
//! [`Server::addrs`] reports the real ports).
//! [`Server::run`] accepts until the shutdown token is cancelled; each
//! accepted socket gets its own task, so the accept loop never waits on a
//! client. In that task the layers a listener needs run in order, all
//! within one `--connect-timeout`: the PROXY header (`net/proxy.rs`, where
//! `--proxy-protocol` asks for it), the TLS handshake (`net/tls.rs`), the
//! WebSocket upgrade (`net/ws.rs`); then `connection/mod.rs` serves the resulting
//! byte stream. Shutdown: stop accepting, connections send v5 DISCONNECT
//! 0x8B and close, then wait for every task up to `--shutdown-grace`, then
//! flush the store.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::broker::Broker;
use crate::config::Config;
use crate::connection::Origin;
use crate::error::BrokerError;
use crate::net::tls::TlsMaterial;
use crate::net::ListenerKind;

struct Listener {
    tcp: TcpListener,
    kind: ListenerKind,
    /// Reads a PROXY header before anything else.
    proxy: bool,
}

pub struct Server {
    listeners: Vec<Listener>,
    tls: Option<TlsMaterial>,
    broker: Arc<Broker>,
    /// `--admin-listen`, bound with the rest.
    admin: Option<crate::ops::admin::Admin>,
    ready: Arc<crate::ops::admin::Readiness>,
}

impl Server {
    /// Creates the data directory and binds every listener. Nothing is
    /// served until [`Server::run`].
    pub async fn bind(config: Config, shutdown: CancellationToken) -> Result<Server, BrokerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BrokerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        // TLS material, the auth file and then the store are checked
        // before any port is bound.
        let tls = match &config.tls {
            Some(files) => Some(TlsMaterial::load(files)?),
            None => None,
        };
        let broker = Broker::open(Arc::new(config), shutdown)?;
        let config = &broker.config;
        let mut listeners = Vec::new();
        for (kind, addrs) in [
            (ListenerKind::Tcp, &config.listen),
            (ListenerKind::Tls, &config.tls_listen),
            (ListenerKind::Ws, &config.ws_listen),
            (ListenerKind::Wss, &config.wss_listen),
        ] {
            for addr in addrs {
                let tcp =
                    listen(*addr, config.listen_backlog).map_err(|source| BrokerError::Bind {
                        addr: *addr,
                        source,
                    })?;
                let proxy = config.proxy_protocol.applies(kind, *addr);
                listeners.push(Listener { tcp, kind, proxy });
            }
        }
        let admin = match config.admin_listen {
            Some(addr) => Some(
                crate::ops::admin::Admin::bind(
                    addr,
                    config.admin_tls.clone(),
                    config.admin_tls_reload,
                )
                .await?,
            ),
            None => None,
        };
        Ok(Server {
            listeners,
            tls,
            broker,
            admin,
            ready: Arc::default(),
        })
    }

    /// What `/readyz` reports; [`stop_after_drain_delay`] marks it.
    pub fn readiness(&self) -> Arc<crate::ops::admin::Readiness> {
        self.ready.clone()
    }

    /// The bound `--admin-listen` address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr())
    }

    /// The bound addresses of one kind, in flag order.
    pub fn addrs(&self, kind: ListenerKind) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|l| l.kind == kind)
            .filter_map(|l| l.tcp.local_addr().ok())
            .collect()
    }

    /// The bound `--listen` addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(ListenerKind::Tcp)
    }

    /// The bound `--tls-listen` addresses.
    pub fn tls_local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(ListenerKind::Tls)
    }

    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn run(self) {
        let broker = self.broker;
        started_line(&broker, &self.listeners, self.admin.as_ref());
        if broker.config.loopback_only {
            warn!("No authentication configured: MQTT on loopback only (127.0.0.1:1883). Configure --auth-file, --tenants or --tls-client-auth required, or pass --allow-anonymous, to accept clients from the network");
        }
        for l in &self.listeners {
            if let Ok(addr) = l.tcp.local_addr() {
                info!(%addr, proxy_protocol = l.proxy, "Listening for MQTT over {}", l.kind.label());
            }
        }
        broker.tasks.spawn(broker.registry.clone().sweep());
        broker.tasks.spawn(
            broker
                .auth
                .clone()
                .watch(broker.metrics.clone(), broker.shutdown.clone()),
        );
        broker.tasks.spawn(wake_on_reload(broker.clone()));
        if let Some(interval) = broker.config.sys_interval {
            broker
                .tasks
                .spawn(crate::ops::sys::run(broker.clone(), interval));
        }
        let admin_stop = CancellationToken::new();
        let listed: Vec<crate::ops::admin::api::ListenerInfo> = self
            .listeners
            .iter()
            .filter_map(|l| {
                Some(crate::ops::admin::api::ListenerInfo {
                    kind: l.kind.name(),
                    addr: l.tcp.local_addr().ok()?.to_string(),
                })
            })
            .collect();
        let admin = self.admin.map(|admin| {
            let serve = admin.serve(
                broker.clone(),
                self.ready.clone(),
                listed,
                admin_stop.clone(),
            );
            tokio::spawn(serve)
        });
        if let Some(tls) = &self.tls {
            broker.metrics.tls_certificate_expiry.store(
                tls.certificate_expiry(),
                std::sync::atomic::Ordering::Relaxed,
            );
            broker.tasks.spawn(
                tls.clone()
                    .watch(broker.metrics.clone(), broker.shutdown.clone()),
            );
        }
        let mut accept_loops = tokio::task::JoinSet::new();
        for l in self.listeners {
            accept_loops.spawn(accept_loop(l, self.tls.clone(), broker.clone()));
        }
        self.ready.set_accepting();
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
        if let Err(e) = broker.persist.close() {
            error!(error = %e, "Final flush of the store failed");
        }
        info!("Shutdown complete");
        // The admin endpoint answered "not ready" through the drain; it
        // goes last.
        admin_stop.cancel();
        if let Some(task) = admin {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

/// The one line that says what this node is: version, listeners, admin
/// endpoint, storage path, auth mode, tenants.
fn started_line(broker: &Broker, listeners: &[Listener], admin: Option<&crate::ops::admin::Admin>) {
    let listening: Vec<String> = listeners
        .iter()
        .filter_map(|l| Some(format!("{} {}", l.kind.name(), l.tcp.local_addr().ok()?)))
        .collect();
    let c = &broker.config;
    let auth = match (&c.auth.tenants, &c.auth.file) {
        (Some(t), _) => format!("tenants file {}", t.display()),
        (None, Some(f)) => format!("auth file {}", f.display()),
        (None, None) if c.auth.client_certificates => "client certificates".to_owned(),
        (None, None) => "anonymous".to_owned(),
    };
    info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("PORCHLIGHT_GIT_COMMIT"),
        listeners = %listening.join(", "),
        admin = %admin.and_then(|a| a.local_addr()).map_or("off".to_owned(), |a| a.to_string()),
        data_dir = %c.data_dir.display(),
        auth = %auth,
        allow_anonymous = c.auth.allow_anonymous,
        tenants = broker.auth.directory().ids().count(),
        "Porchlight started"
    );
}

/// A stop in two steps: `/readyz` answers 503 at once, so load balancers
/// and Kubernetes endpoints stop sending new clients here; the node keeps
/// serving for `--drain-delay`, then `shutdown` is cancelled and the drain
/// of [`Server::run`] begins.
pub async fn stop_after_drain_delay(
    ready: Arc<crate::ops::admin::Readiness>,
    delay: Duration,
    shutdown: CancellationToken,
) {
    ready.set_draining();
    if !delay.is_zero() {
        info!(
            drain_delay_secs = delay.as_secs(),
            "Not ready: closing the listeners after the drain delay"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    shutdown.cancel();
}

/// Counts an open socket in `porchlight_connections` (node-wide and for
/// its listener) for as long as it lives, whatever path its task takes.
struct Counted(Arc<crate::metrics::Metrics>, ListenerKind);

impl Counted {
    fn new(m: &Arc<crate::metrics::Metrics>, kind: ListenerKind) -> Counted {
        m.inc(&m.listener_connections[kind as usize]);
        m.inc(&m.listener_connections_total[kind as usize]);
        Counted(m.clone(), kind)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec(&self.0.connections_current);
        self.0.dec(&self.0.listener_connections[self.1 as usize]);
    }
}

async fn accept_loop(listener: Listener, tls: Option<TlsMaterial>, broker: Arc<Broker>) {
    let (kind, proxy) = (listener.kind, listener.proxy);
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.tcp.accept().await {
            Ok(s) => {
                if let Some(failed) = backoff.succeeded() {
                    info!(failed, "Accepting connections again");
                }
                s
            }
            Err(e) => {
                // EMFILE and friends: the pending connection stays queued
                // and the next accept fails the same way, so wait, longer
                // each time, and log at powers of two.
                broker.metrics.inc(&broker.metrics.accept_failures);
                let (wait, log) = backoff.failed();
                if log {
                    warn!(error = %e, failed = backoff.failures, wait_ms = wait.as_millis() as u64,
                        "Accept failed");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let m = &broker.metrics;
        let current = m.connections_current.fetch_add(1, Ordering::Relaxed);
        let counted = Counted::new(m, kind);
        let over_limit = current >= broker.config.max_connections as u64;
        if kind == ListenerKind::Tcp && !proxy {
            // The common case, spawned on its own so its task is no larger
            // than the connection needs.
            let origin = Origin {
                peer,
                listener: kind,
                tls: None,
            };
            let serve =
                crate::connection::serve(stream, origin, broker.clone(), over_limit, counted);
            broker.tasks.spawn(serve);
            continue;
        }
        let layers = Layers {
            kind,
            tls: tls.clone(),
            broker: broker.clone(),
            over_limit,
            deadline: tokio::time::Instant::now() + broker.config.connect_timeout,
        };
        broker.tasks.spawn(async move {
            let _counted = counted;
            if !proxy {
                return layers.serve(stream, peer).await;
            }
            let m = layers.broker.metrics.clone();
            match tokio::time::timeout_at(layers.deadline, crate::net::proxy::accept(stream, peer))
                .await
            {
                Ok(Ok((stream, real))) => layers.serve(stream, real).await,
                Ok(Err(e)) => {
                    m.inc(&m.proxy_header_errors);
                    debug!(%peer, error = %e, "PROXY header refused");
                }
                Err(_) => {
                    m.inc(&m.proxy_header_errors);
                    debug!(%peer, "No PROXY header within the connect timeout");
                }
            }
        });
    }
}

/// Consecutive `accept` failures: each waits twice as long as the one
/// before ([`ACCEPT_WAIT_MIN`] to [`ACCEPT_WAIT_MAX`]), and is logged only
/// at the 1st, 2nd, 4th, 8th… of a run, so a node out of file
/// descriptors neither spins nor floods its log. A success ends the run.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u64,
}

/// The first wait after a failed `accept`.
const ACCEPT_WAIT_MIN: Duration = Duration::from_millis(5);
/// The longest wait: a freed descriptor is used within a second.
const ACCEPT_WAIT_MAX: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    /// One more failure: how long to wait, and whether to log it.
    fn failed(&mut self) -> (Duration, bool) {
        self.failures += 1;
        let shift = (self.failures - 1).min(8) as u32;
        let wait = ACCEPT_WAIT_MIN
            .saturating_mul(1 << shift)
            .min(ACCEPT_WAIT_MAX);
        (wait, self.failures.is_power_of_two())
    }

    /// A success: the length of the run of failures it ended, if any.
    fn succeeded(&mut self) -> Option<u64> {
        let run = std::mem::take(&mut self.failures);
        (run > 0).then_some(run)
    }
}

/// The layers between an accepted socket and MQTT: TLS and WebSocket.
struct Layers {
    kind: ListenerKind,
    tls: Option<TlsMaterial>,
    broker: Arc<Broker>,
    over_limit: bool,
    /// The TLS handshake and WebSocket upgrade finish by then
    /// (`--connect-timeout` after accept).
    deadline: tokio::time::Instant,
}

impl Layers {
    /// Runs this listener's layers on `stream` and serves MQTT over the
    /// result. Each branch is boxed, so a task holds only the state of the
    /// layers it uses.
    async fn serve<S>(self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Layers {
            kind,
            tls,
            broker,
            over_limit,
            deadline,
        } = self;
        let m = broker.metrics.clone();
        let origin = |tls: Option<crate::net::tls::TlsPeer>| Origin {
            peer,
            listener: kind,
            tls: tls.map(Box::new),
        };
        match (kind, tls) {
            (ListenerKind::Tcp, _) => {
                Box::pin(crate::connection::serve(
                    stream,
                    origin(None),
                    broker,
                    over_limit,
                    (),
                ))
                .await
            }
            (ListenerKind::Ws, _) => {
                let Some(ws) = upgrade(stream, peer, &broker, deadline).await else {
                    return;
                };
                Box::pin(crate::connection::serve(
                    ws,
                    origin(None),
                    broker,
                    over_limit,
                    (),
                ))
                .await
            }
            (ListenerKind::Tls, Some(tls)) => {
                let Some((s, hello)) = Box::pin(tls.handshake(stream, peer, deadline, &m)).await
                else {
                    return;
                };
                Box::pin(crate::connection::serve(
                    s,
                    origin(Some(hello)),
                    broker,
                    over_limit,
                    (),
                ))
                .await
            }
            (ListenerKind::Wss, Some(tls)) => {
                let Some((s, hello)) = Box::pin(tls.handshake(stream, peer, deadline, &m)).await
                else {
                    return;
                };
                let Some(ws) = upgrade(s, peer, &broker, deadline).await else {
                    return;
                };
                Box::pin(crate::connection::serve(
                    ws,
                    origin(Some(hello)),
                    broker,
                    over_limit,
                    (),
                ))
                .await
            }
            // `bind` loads TLS material whenever a TLS listener exists.
            (ListenerKind::Tls | ListenerKind::Wss, None) => {}
        }
    }
}

/// The WebSocket upgrade, until `deadline`; failures are logged at debug
/// and counted as handshake failures of the listener.
async fn upgrade<S>(
    stream: S,
    peer: SocketAddr,
    broker: &Broker,
    deadline: tokio::time::Instant,
) -> Option<crate::net::ws::WsIo<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Room for a maximum-size packet plus framing of batched packets.
    let max = broker.config.max_packet_size.saturating_add(64 * 1024);
    let path = &broker.config.ws_path;
    match tokio::time::timeout_at(
        deadline,
        Box::pin(crate::net::ws::accept(
            stream,
            path,
            &broker.config.ws_allowed_origins,
            max,
        )),
    )
    .await
    {
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) => {
            broker.metrics.inc(&broker.metrics.ws_handshake_failures);
            debug!(%peer, error = %e, "WebSocket upgrade failed");
            None
        }
        Err(_) => {
            broker.metrics.inc(&broker.metrics.ws_handshake_failures);
            debug!(%peer, "No WebSocket upgrade within the connect timeout");
            None
        }
    }
}

/// Binds a listening socket with `backlog` pending connections (the
/// kernel caps it at `net.core.somaxconn`); address reuse as
/// `TcpListener::bind` does, so a restart does not wait out TIME_WAIT.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// After each reload of `--tenants`/`--auth-file`, puts the new limits the
/// state enforces in force and wakes the connections it affects
/// (`Directory::affected_by`), so a removed tenant's idle clients are
/// closed (v5 0x87) and withdrawn gateway grants take effect at once, not
/// at their next packet. Everyone else picks the reload up at their next
/// PUBLISH or SUBSCRIBE: adding a device's user to a file shared by a
/// million connections does not wake the million.
async fn wake_on_reload(broker: Arc<Broker>) {
    let mut reloads = broker.auth.reloads();
    let mut previous = reloads.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            changed = reloads.changed() => {
                if changed.is_err() {
                    return;
                }
                let directory = reloads.borrow_and_update().clone();
                broker.tenants.apply(&directory);
                broker.state.drop_gateway_state(&*broker.control, |home, target| {
                    directory.grants_any(home, target)
                });
                broker.state.wake_tenants(&previous.affected_by(&directory));
                previous = directory;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_failures_back_off_and_log_at_powers_of_two() {
        let mut b = super::AcceptBackoff::default();
        let runs: Vec<(u64, bool)> = (0..12)
            .map(|_| b.failed())
            .map(|(w, log)| (w.as_millis() as u64, log))
            .collect();
        let waits: Vec<u64> = runs.iter().map(|r| r.0).collect();
        assert_eq!(
            waits,
            [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]
        );
        let logged: Vec<usize> = (0..12).filter(|&i| runs[i].1).map(|i| i + 1).collect();
        assert_eq!(logged, [1, 2, 4, 8]);
        assert_eq!(b.succeeded(), Some(12));
        assert_eq!(b.succeeded(), None);
        assert_eq!(
            b.failed(),
            (super::ACCEPT_WAIT_MIN, true),
            "a new run starts over"
        );
    }

    use std::time::Duration;

    use tokio::net::TcpStream;
    use tokio::time::timeout;

    use super::listen;

    /// Connects `n` clients to a listener that never accepts; how many
    /// the kernel completed (each waits at most `wait`).
    async fn completed(addr: std::net::SocketAddr, n: usize, wait: Duration) -> usize {
        let mut held = Vec::new();
        for _ in 0..n {
            if let Ok(Ok(s)) = timeout(wait, TcpStream::connect(addr)).await {
                held.push(s);
            }
        }
        held.len()
    }

    #[tokio::test]
    async fn the_listen_backlog_is_the_one_asked_for() {
        // A queue of 1: the kernel completes at most two handshakes
        // nobody accepts; later SYNs are dropped (retried after 1 s).
        let small = listen("127.0.0.1:0".parse().expect("addr"), 1).expect("listen");
        let addr = small.local_addr().expect("addr");
        let n = completed(addr, 6, Duration::from_millis(300)).await;
        assert!(n <= 2, "{n} connections completed with a backlog of 1");
        // A deep queue holds a burst of 200.
        let deep = listen("127.0.0.1:0".parse().expect("addr"), 4096).expect("listen");
        let addr = deep.local_addr().expect("addr");
        assert_eq!(completed(addr, 200, Duration::from_secs(5)).await, 200);
    }
}
