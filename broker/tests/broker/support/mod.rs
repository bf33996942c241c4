//! Shared test helpers: an in-process broker on 127.0.0.1 port 0, a
//! raw-packet client (our codec, or literal bytes for malformed input),
//! rumqttc v4/v5 clients whose events arrive on a channel, and a
//! deadline-bounded condition wait; the test PKI is in `pki.rs`, the admin
//! listener's HTTP client and metrics parser in `admin.rs`.
#![allow(dead_code)]

mod admin;
mod pki;
pub use admin::*;
pub use pki::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use porchlight_broker::codec::{
    self, Connect, Packet, Properties, Protocol, Publish, QoS, Subscribe, SubscriptionOptions,
};
use porchlight_broker::net::ListenerKind;
use porchlight_broker::Broker;
use porchlight_broker::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long any single expectation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "porchlight_broker=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct TestBroker {
    pub addr: SocketAddr,
    /// The first `--tls-listen` address, when TLS is configured.
    pub tls_addr: Option<SocketAddr>,
    /// The first `--ws-listen` and `--wss-listen` addresses, if any.
    pub ws_addr: Option<SocketAddr>,
    pub wss_addr: Option<SocketAddr>,
    /// The admin listener, when the test asked for one.
    pub admin_addr: Option<SocketAddr>,
    pub ready: Arc<porchlight_broker::ops::admin::Readiness>,
    pub broker: Arc<Broker>,
    pub shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    config: Config,
    dir: Arc<tempfile::TempDir>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::with(|_| {}).await
    }

    pub async fn with(f: impl FnOnce(&mut Config)) -> TestBroker {
        init_tracing();
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let mut config = Config::for_tests(dir.path().join("data"));
        config.sys_interval = None;
        f(&mut config);
        Self::start_with(config, dir).await
    }

    async fn start_with(config: Config, dir: Arc<tempfile::TempDir>) -> TestBroker {
        let shutdown = CancellationToken::new();
        let server = Server::bind(config.clone(), shutdown.clone())
            .await
            .expect("bind");
        let addr = server.local_addrs()[0];
        let tls_addr = server.tls_local_addrs().first().copied();
        let ws_addr = server.addrs(ListenerKind::Ws).first().copied();
        let wss_addr = server.addrs(ListenerKind::Wss).first().copied();
        let admin_addr = server.admin_addr();
        let ready = server.readiness();
        let broker = server.broker();
        let handle = tokio::spawn(server.run());
        TestBroker {
            addr,
            tls_addr,
            ws_addr,
            wss_addr,
            admin_addr,
            ready,
            broker,
            shutdown,
            handle,
            config,
            dir,
        }
    }

    /// A graceful stop and a new broker on the same data directory (on a
    /// new port).
    pub async fn restart(self) -> TestBroker {
        self.restart_with(|_| {}).await
    }

    /// Like `restart`, changing the configuration first.
    pub async fn restart_with(self, f: impl FnOnce(&mut Config)) -> TestBroker {
        let (mut config, dir) = (self.config.clone(), self.dir.clone());
        f(&mut config);
        self.stop().await;
        Self::start_with(config, dir).await
    }

    /// The session of `client_id` in the default tenant, if it exists.
    pub fn session(&self, client_id: &str) -> Option<Arc<porchlight_broker::session::Session>> {
        self.broker.state.session(&session_key(client_id))
    }

    /// Whether the session of `client_id` has a subscription to exactly
    /// `filter` (as the client wrote it).
    pub fn subscribed(&self, client_id: &str, filter: &str) -> bool {
        self.broker
            .state
            .subscriptions(&session_key(client_id))
            .iter()
            .any(|f| f.as_str() == filter)
    }

    /// The session of `client_id` in `tenant`, if it exists.
    pub fn session_in(
        &self,
        tenant: &str,
        client_id: &str,
    ) -> Option<Arc<porchlight_broker::session::Session>> {
        self.broker
            .state
            .session(&porchlight_broker::ids::SessionKey {
                tenant: porchlight_broker::ids::TenantId::new(tenant),
                client: porchlight_broker::ids::ClientId::new(client_id),
            })
    }

    /// Waits until the session of `client_id` exists with no connection.
    pub async fn wait_offline(&self, client_id: &str) {
        wait_until(&format!("{client_id} offline"), || {
            self.session(client_id).is_some_and(|s| !s.is_online())
        })
        .await;
    }

    /// Waits until the session of `client_id` in `tenant` exists with no
    /// connection.
    pub async fn wait_offline_in(&self, tenant: &str, client_id: &str) {
        wait_until(&format!("{tenant}/{client_id} offline"), || {
            self.session_in(tenant, client_id)
                .is_some_and(|s| !s.is_online())
        })
        .await;
    }

    /// Starts shutdown and waits for the server to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("server stops within the grace period")
            .expect("server task");
    }
}

/// The key of `client_id` in the default tenant.
pub fn session_key(client_id: &str) -> porchlight_broker::ids::SessionKey {
    porchlight_broker::ids::SessionKey {
        tenant: porchlight_broker::ids::TenantId::default_tenant(),
        client: porchlight_broker::ids::ClientId::new(client_id),
    }
}

/// Polls `cond` until it is true or `WAIT` passes.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client speaking packets through our codec, or raw bytes.
/// Any byte stream a raw client can speak MQTT over (TCP, TLS,
/// WebSocket).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

pub struct RawClient {
    pub stream: Box<dyn Io>,
    pub buf: BytesMut,
    pub protocol: Protocol,
}

/// A CONNECT for a persistent session: clean session 0, and for v5 a
/// Session Expiry Interval of an hour.
pub fn durable_client(protocol: Protocol, id: &str) -> codec::Connect {
    let mut c = connect_packet(protocol, id, false, 60);
    if protocol == Protocol::V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

pub fn connect_packet(
    protocol: Protocol,
    client_id: &str,
    clean: bool,
    keep_alive: u16,
) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

impl RawClient {
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> RawClient {
        RawClient {
            stream: Box::new(TcpStream::connect(addr).await.expect("connect")),
            buf: BytesMut::new(),
            protocol,
        }
    }

    /// Opens a connection, sends CONNECT and expects a successful CONNACK.
    pub async fn connect(addr: SocketAddr, protocol: Protocol, client_id: &str) -> RawClient {
        Self::connect_with(addr, connect_packet(protocol, client_id, true, 60))
            .await
            .0
    }

    pub async fn connect_with(addr: SocketAddr, c: Connect) -> (RawClient, codec::ConnAck) {
        let client = RawClient::open(addr, c.protocol).await;
        client.handshake(c).await
    }

    /// A raw client over an already open stream (TLS, WebSocket).
    pub fn over(stream: impl Io + 'static, protocol: Protocol) -> RawClient {
        RawClient {
            stream: Box::new(stream),
            buf: BytesMut::new(),
            protocol,
        }
    }

    /// Sends CONNECT and returns the CONNACK, whatever its code.
    pub async fn handshake(self, c: Connect) -> (RawClient, codec::ConnAck) {
        let mut client = self;
        client.send(&Packet::Connect(Box::new(c))).await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) => (client, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, self.protocol, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed; that is for the caller to check.
        let _ = self.try_send_bytes(bytes).await;
    }

    /// Writes `bytes`, saying whether the write went through (it fails
    /// once the broker has reset the connection).
    pub async fn try_send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Next packet, or `None` if the connection closed. Fails the test if
    /// nothing arrives within `WAIT`.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .await
            .expect("a packet or a close in time")
    }

    /// `Err(())` on timeout, `Ok(None)` on close.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = codec::decode(&mut self.buf, Some(self.protocol), usize::MAX)
                .expect("broker sent a valid packet")
            {
                return Ok(Some(p));
            }
            let mut tmp = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Expects nothing to arrive for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(p) = self.recv_within(wait).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// Expects the connection to close, optionally after a v5 DISCONNECT
    /// with `reason`.
    pub async fn expect_disconnect(&mut self, reason: Option<u8>) {
        match self.recv().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(Some(d.reason), reason, "DISCONNECT reason {d:?}");
                assert_eq!(self.recv().await, None, "closed after DISCONNECT");
            }
            None => assert_eq!(reason, None, "expected DISCONNECT {reason:?} before close"),
            Some(p) => panic!("expected DISCONNECT/close, got {p:?}"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.subscribe_opts(filter, SubscriptionOptions::new(qos), Properties::default())
            .await;
    }

    pub async fn subscribe_opts(
        &mut self,
        filter: &str,
        opts: SubscriptionOptions,
        props: Properties,
    ) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(filter.into(), opts)],
            properties: props,
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(s)) => assert!(s.reasons[0] < 0x80, "SUBACK {s:?}"),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Subscribes to `filters` (filter, QoS) in one SUBSCRIBE and returns
    /// the SUBACK's codes, whatever they are.
    pub async fn subscribe_codes(&mut self, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 2,
            filters: filters
                .iter()
                .map(|(f, qos)| ((*f).into(), SubscriptionOptions::new(q(*qos))))
                .collect(),
            properties: Properties::default(),
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(s)) => s.reasons,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn publish(&mut self, topic: &str, qos: QoS, packet_id: u16, payload: &'static [u8]) {
        self.send(&Packet::Publish(publish(topic, qos, packet_id, payload)))
            .await;
    }

    /// Publishes at QoS 1 and returns the PUBACK's reason code.
    pub async fn puback(&mut self, topic: &str) -> u8 {
        self.publish(topic, q(1), 9, b"x").await;
        match self.recv().await {
            Some(Packet::PubAck(a)) => a.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// Next PUBLISH (skipping nothing: anything else fails).
    pub async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

pub fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    }
}

/// A rumqttc v3.1.1 client whose events arrive on a channel.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub events: mpsc::Receiver<rumqttc::Event>,
}

impl V4 {
    pub async fn connect(addr: SocketAddr, id: &str, clean: bool) -> V4 {
        let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        Self::connect_opts(opts).await
    }

    pub async fn connect_opts(opts: rumqttc::MqttOptions) -> V4 {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
        let (tx, events) = mpsc::channel(1000);
        tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        let mut c = V4 { client, events };
        c.wait_for(|e| matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))))
            .await;
        c
    }

    pub async fn wait_for(&mut self, mut f: impl FnMut(&rumqttc::Event) -> bool) -> rumqttc::Event {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) if f(&e) => return e,
                Ok(Some(_)) => {}
                Ok(None) => panic!("v4 event loop ended"),
                Err(_) => panic!("timed out waiting for a v4 event"),
            }
        }
    }

    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        match self
            .wait_for(|e| matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))))
            .await
        {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => p,
            _ => unreachable!(),
        }
    }

    pub async fn suback(&mut self) -> rumqttc::SubAck {
        match self
            .wait_for(|e| matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))))
            .await
        {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s)) => s,
            _ => unreachable!(),
        }
    }
}

pub mod v5 {
    pub use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet, Publish, PublishProperties};
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};
}

/// A rumqttc MQTT 5 client whose events arrive on a channel.
pub struct V5 {
    pub client: v5::AsyncClient,
    pub events: mpsc::Receiver<v5::Event>,
    pub connack: v5::ConnAck,
}

impl V5 {
    pub async fn connect(addr: SocketAddr, id: &str) -> V5 {
        let opts = v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        Self::connect_opts(opts).await
    }

    pub async fn connect_opts(mut opts: v5::MqttOptions) -> V5 {
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = v5::AsyncClient::new(opts, 100);
        let (tx, mut events) = mpsc::channel(1000);
        tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        let deadline = tokio::time::Instant::now() + WAIT;
        let connack = loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(v5::Event::Incoming(v5::Packet::ConnAck(c)))) => break c,
                Ok(Some(_)) => {}
                other => panic!("no v5 CONNACK: {other:?}"),
            }
        };
        V5 {
            client,
            events,
            connack,
        }
    }

    pub async fn wait_for(&mut self, mut f: impl FnMut(&v5::Event) -> bool) -> v5::Event {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) if f(&e) => return e,
                Ok(Some(_)) => {}
                Ok(None) => panic!("v5 event loop ended"),
                Err(_) => panic!("timed out waiting for a v5 event"),
            }
        }
    }

    pub async fn next_publish(&mut self) -> v5::Publish {
        match self
            .wait_for(|e| matches!(e, v5::Event::Incoming(v5::Packet::Publish(_))))
            .await
        {
            v5::Event::Incoming(v5::Packet::Publish(p)) => p,
            _ => unreachable!(),
        }
    }

    pub async fn suback(&mut self) {
        self.wait_for(|e| matches!(e, v5::Event::Incoming(v5::Packet::SubAck(_))))
            .await;
    }
}

/// QoS helper for raw tests.
pub fn q(n: u8) -> QoS {
    QoS::from_u8(n).expect("qos")
}

/// A `porchlight` process started by a test, killed when dropped: a test
/// that fails (panics) before its `kill9` does not leave the broker
/// running, holding the test harness's stderr open.
#[derive(Debug)]
pub struct Spawned(pub std::process::Child);

impl std::ops::Deref for Spawned {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Already reaped (by `kill9` or a wait) is fine.
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the real `porchlight` binary on 127.0.0.1 port 0 with `data_dir`
/// and returns it with the address it reported.
pub fn spawn_binary_in(data_dir: &std::path::Path, extra: &[&str]) -> (Spawned, SocketAddr) {
    let (child, addr, _) = spawn_binary_logged(data_dir, extra);
    (child, addr)
}

/// Like `spawn_binary_in`, keeping every JSON log line it prints (in
/// order) for the test to read.
pub fn spawn_binary_logged(
    data_dir: &std::path::Path,
    extra: &[&str],
) -> (Spawned, SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    spawn_binary_bare_logged(data_dir, &args)
}

/// Like `spawn_binary_logged` with no `--listen` of its own: `args` name
/// every listener; the address returned is the first one reported.
pub fn spawn_binary_bare_logged(
    data_dir: &std::path::Path,
    extra: &[&str],
) -> (Spawned, SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    spawn_binary_with_fds(data_dir, extra, None)
}

/// Like `spawn_binary_logged`, with the process's open-file limit set to
/// `max_fds` (through the shell's `ulimit -n`, which lowering needs no
/// privilege for) when given.
pub fn spawn_binary_with_fds(
    data_dir: &std::path::Path,
    extra: &[&str],
    max_fds: Option<u32>,
) -> (Spawned, SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader};
    let bin = env!("CARGO_BIN_EXE_porchlight");
    let mut command = match max_fds {
        Some(n) => {
            let mut c = std::process::Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(bin);
            c
        }
        None => std::process::Command::new(bin),
    };
    // Each process its own admin port, unless the test names one.
    if !extra
        .iter()
        .any(|a| a.starts_with("--admin-listen") || *a == "--no-admin-listen")
    {
        command.args(["--admin-listen", "127.0.0.1:0"]);
    }
    let mut child = Spawned(
        command
            .args(["--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn porchlight"),
    );
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = loop {
        let line = lines
            .next()
            .expect("porchlight printed its listening address")
            .expect("line");
        let addr = line
            .find("\"addr\":\"")
            .and_then(|i| line[i + 8..].split('"').next())
            .and_then(|s| s.parse().ok());
        log.lock().expect("log").push(line);
        if let Some(a) = addr {
            break a;
        }
    };
    // Keep draining so the child never blocks on a full pipe.
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().expect("log").push(line);
        }
    });
    (child, addr, log)
}

/// Waits until the process exits (polling, at most `within`).
pub async fn wait_exited(
    child: &mut std::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the process did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The JSON log lines of a spawned `porchlight` whose message is
/// `message`, in order.
pub fn log_entries(log: &std::sync::Mutex<Vec<String>>, message: &str) -> Vec<serde_json::Value> {
    log.lock()
        .expect("log")
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

/// SIGKILL, and wait until the process is gone.
pub fn kill9(child: &mut std::process::Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// The Mosquitto clients are required in CI (`.ci/run` installs them); on
/// a developer machine without them the interop test says so and skips.
pub fn mosquitto_available() -> bool {
    let found = std::process::Command::new("mosquitto_sub")
        .arg("--help")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto_sub/mosquitto_pub not found in CI: apt-get install mosquitto-clients"
        );
        eprintln!("SKIPPED interop test: apt-get install mosquitto-clients to run it");
    }
    found
}
