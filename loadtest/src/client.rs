//! One simulated device: a task that connects (TCP, optionally from a
//! chosen source address, optionally TLS), speaks MQTT through
//! `mqtt.rs`, and then idles, subscribes or publishes as its role says
//! until the run tells it to stop. It records into the shared
//! [`Stats`](crate::stats::Stats) and, for subscribers, into its
//! [`Receiver`]; `run.rs` spawns the tasks and reads the results.
//!
//! Slow consumer policy: the client's own output buffer is bounded
//! ([`OUT_HIGH_WATER`]); a publisher generates more only when the buffer
//! has drained below it (and, at QoS 1, when its in-flight window has
//! room), so a slow broker slows the publisher instead of growing memory.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::mqtt::{ConnectOptions, Incoming, Wire};
use crate::pacer::Pacer;
use crate::payload::{self, Header};
use crate::plan::{Connection, Publish};
use crate::seq::Tracker;
use crate::stats::{Counters, Stats};

/// Stop generating publishes while this much is waiting to be written.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// At most this many publishes are generated per wake-up.
const BURST: u64 = 256;

/// A byte stream to a broker: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// What one receiver (a subscriber, or a whole shared-subscription
/// group) got, per publisher stream.
#[derive(Debug, Default)]
pub struct Receiver {
    /// The filter as subscribed, without any `$share/G/` prefix.
    pub filter: String,
    pub streams: HashMap<u32, Tracker>,
    /// Messages without a load-generator header (retained leftovers,
    /// other clients' traffic).
    pub foreign: u64,
    /// A shared-subscription group: its members receive in parallel, so
    /// arrival order across them says nothing about the broker.
    pub shared: bool,
    /// The QoS subscribed with: what a QoS 1/2 publisher's message is
    /// delivered at, at most.
    pub qos: u8,
}

/// Everything the tasks of a run share.
pub struct Shared {
    pub stats: Arc<Stats>,
    pub connection: Arc<Connection>,
    pub wire: Wire,
    pub tls: Option<Tls>,
    /// Publishing starts when this is cancelled (everyone connected).
    pub go: CancellationToken,
    /// Publishing ends.
    pub stop_publishing: CancellationToken,
    /// Everyone disconnects.
    pub stop: CancellationToken,
    /// Reconnect storm (`--cycles`): everyone has connected once; go.
    pub storm: CancellationToken,
    /// Messages sent per publisher stream, indexed by stream.
    pub sent: Arc<Vec<std::sync::atomic::AtomicU64>>,
    /// QoS 1 messages the broker acknowledged with success, per stream.
    pub acked: Arc<Vec<std::sync::atomic::AtomicU64>>,
}

/// A TLS client configuration and the name to ask for.
#[derive(Clone)]
pub struct Tls {
    /// Without a resumption store: [`Tls::for_client`] adds one per client.
    pub config: Arc<rustls::ClientConfig>,
    pub resume: bool,
    pub name: rustls::pki_types::ServerName<'static>,
}

/// What one client does.
#[derive(Debug, Clone)]
pub enum Task {
    Idle,
    Subscribe {
        /// The filter to send, `$share/G/` included.
        filter: String,
        qos: u8,
        receiver: Arc<Mutex<Receiver>>,
    },
    Publish {
        /// The group's settings, with the topic expanded.
        spec: Publish,
        stream: u32,
        /// Where in the first period this publisher starts (0..1), so a
        /// group's publishers do not fire together.
        phase: f64,
    },
}

/// One client of the run.
#[derive(Debug, Clone)]
pub struct Client {
    /// Index over the whole run (shards, source addresses).
    pub index: usize,
    pub client_id: String,
    pub broker: SocketAddr,
    pub source: Option<IpAddr>,
    pub task: Task,
}

/// How a connection ended.
enum End {
    /// The run asked it to stop.
    Stopped,
    /// It could not connect, or the broker closed it.
    Lost,
}

/// A publisher's progress, kept across reconnects.
struct Progress {
    seq: u64,
    pacer: Option<Pacer>,
    /// Set once the publishing window has closed (or the limit is reached).
    finished: bool,
}

/// Runs one client until the run stops; reconnects if the run asks for it.
pub async fn run(client: Client, shared: Arc<Shared>) {
    let mut progress = Progress {
        seq: 0,
        pacer: None,
        finished: false,
    };
    let tls = shared.tls.as_ref().map(Tls::for_client);
    let tls = tls.as_ref();
    if shared.connection.cycles > 1 && !storm(&client, &shared, tls).await {
        return;
    }
    let mut first = true;
    loop {
        if !first {
            Counters::inc(&shared.stats.counters.reconnects);
        }
        first = false;
        match session(&client, &shared, tls, &mut progress).await {
            End::Stopped => return,
            End::Lost => {
                let Some(delay) = shared.connection.reconnect else {
                    return;
                };
                tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// The reconnect storm of `--cycles`: a warm-up connect (not counted as a
/// connect: it fetches the TLS session ticket), the wait for everyone
/// else's, then `cycles - 2` connect-and-disconnect rounds; the caller's
/// session is the last cycle. False: the client is done (it failed, or
/// the run stopped).
async fn storm(client: &Client, shared: &Shared, tls: Option<&TlsConnector>) -> bool {
    let counters = &shared.stats.counters;
    let mut inbuf = BytesMut::new();
    match connect(client, shared, tls, &mut inbuf, false).await {
        Some(stream) => {
            hang_up(shared, stream).await;
            Counters::inc(&counters.warm);
        }
        None => return false,
    }
    tokio::select! {
        _ = shared.storm.cancelled() => {}
        _ = shared.stop.cancelled() => return false,
    }
    for _ in 2..shared.connection.cycles {
        inbuf.clear();
        let Some(stream) = connect(client, shared, tls, &mut inbuf, true).await else {
            return false;
        };
        hang_up(shared, stream).await;
    }
    true
}

/// DISCONNECT and close, bounded in time.
async fn hang_up(shared: &Shared, mut stream: Box<dyn Io>) {
    let mut out = BytesMut::with_capacity(4);
    let _ = shared.wire.disconnect(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// What a TLS handshake turned out to be.
#[derive(Debug, Clone, Copy)]
struct Handshake {
    resumed: bool,
    /// The key exchange was the hybrid X25519MLKEM768 (`--tls-pq`).
    post_quantum: bool,
}

/// Opens the byte stream: TCP from the chosen source, then TLS. With TLS,
/// also says how the handshake went.
async fn open(
    client: &Client,
    shared: &Shared,
    tls: Option<&TlsConnector>,
) -> Result<(Box<dyn Io>, Option<Handshake>), String> {
    let socket = match client.broker {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(io_reason("socket"))?;
    if let Some(ip) = client.source {
        // Let connect pick the port for this 4-tuple: a port bound
        // without knowing the destination cannot be shared across
        // brokers or reuse a TIME_WAIT one. Best effort: without it the
        // bind still works, with ~28k ports per source address.
        #[cfg(target_os = "linux")]
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(io_reason("bind"))?;
    }
    let tcp = socket
        .connect(client.broker)
        .await
        .map_err(io_reason("tcp"))?;
    tcp.set_nodelay(true).map_err(io_reason("tcp"))?;
    match (tls, &shared.tls) {
        (Some(connector), Some(t)) => {
            let stream = connector
                .connect(t.name.clone(), tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            let conn = stream.get_ref().1;
            let handshake = Handshake {
                resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
                post_quantum: conn
                    .negotiated_key_exchange_group()
                    .is_some_and(|g| g.name() == rustls::NamedGroup::X25519MLKEM768),
            };
            Ok((Box::new(stream), Some(handshake)))
        }
        _ => Ok((Box::new(tcp), None)),
    }
}

/// Connects and sends CONNECT; returns the stream once CONNACK says yes.
/// `record`: count it as a connect (a storm's warm-up is not).
async fn connect(
    client: &Client,
    shared: &Shared,
    tls: Option<&TlsConnector>,
    inbuf: &mut BytesMut,
    record: bool,
) -> Option<Box<dyn Io>> {
    let c = &shared.connection;
    let started = Instant::now();
    let mut resumed = None;
    let attempt = async {
        let (mut stream, r) = open(client, shared, tls).await?;
        resumed = r;
        let mut out = BytesMut::with_capacity(128);
        let options = ConnectOptions {
            client_id: &client.client_id,
            keepalive: c.keepalive,
            clean: c.clean,
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            session_expiry: c.session_expiry,
        };
        shared
            .wire
            .connect(&options, &mut out)
            .map_err(|e| format!("encode: {e}"))?;
        stream.write_all(&out).await.map_err(io_reason("write"))?;
        loop {
            match shared.wire.decode(inbuf) {
                Ok(Some(Incoming::ConnAck { code: 0 })) => return Ok(stream),
                Ok(Some(Incoming::ConnAck { code })) => return Err(format!("connack {code}")),
                Ok(Some(_)) => return Err("a packet before CONNACK".to_owned()),
                Err(e) => return Err(format!("bad CONNACK: {e}")),
                Ok(None) => {}
            }
            inbuf.reserve(256);
            if stream.read_buf(inbuf).await.map_err(io_reason("read"))? == 0 {
                return Err("closed before CONNACK".to_owned());
            }
        }
    };
    let stream = tokio::select! {
        _ = shared.stop.cancelled() => return None,
        r = tokio::time::timeout(c.connect_timeout, attempt) => {
            r.unwrap_or_else(|_| Err("timeout".to_owned()))
        }
    };
    let counters = &shared.stats.counters;
    match stream {
        Ok(s) if !record => Some(s),
        Ok(s) => {
            if let Some(h) = resumed {
                Counters::inc(&counters.tls_handshakes);
                if h.resumed {
                    Counters::inc(&counters.tls_resumed);
                }
                if h.post_quantum {
                    Counters::inc(&counters.tls_post_quantum);
                }
            }
            let micros = started.elapsed().as_micros() as u64;
            shared.stats.connect_latency.record(client.index, micros);
            Counters::inc(&counters.connects);
            Some(s)
        }
        Err(reason) => {
            if !shared.stop.is_cancelled() {
                shared.stats.connect_failed(reason);
            }
            None
        }
    }
}

/// Names an I/O failure by step and kind (`tcp: address not available`).
fn io_reason(step: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{step}: {}", e.kind())
}

/// One connection's life.
async fn session(
    client: &Client,
    shared: &Shared,
    tls: Option<&TlsConnector>,
    progress: &mut Progress,
) -> End {
    let mut inbuf = BytesMut::new();
    let Some(stream) = connect(client, shared, tls, &mut inbuf, true).await else {
        return if shared.stop.is_cancelled() {
            End::Stopped
        } else {
            End::Lost
        };
    };
    let counters = &shared.stats.counters;
    Counters::inc(&counters.connected);
    let end = connected(client, shared, progress, stream, inbuf).await;
    counters
        .connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if matches!(end, End::Lost) {
        Counters::inc(&counters.dropped);
    }
    end
}

async fn connected(
    client: &Client,
    shared: &Shared,
    progress: &mut Progress,
    stream: Box<dyn Io>,
    mut inbuf: BytesMut,
) -> End {
    let wire = shared.wire;
    let counters = &shared.stats.counters;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut out = BytesMut::new();
    let keepalive = Duration::from_secs(u64::from(shared.connection.keepalive).max(1));
    let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Receivers batch latencies and take the shard lock once per read.
    let mut latencies: Vec<u64> = Vec::new();
    let mut pkid: u16 = 0;
    let mut inflight: u16 = 0;
    let mut ready_marked = false;
    let (publishing_role, read_reserve) = match &client.task {
        Task::Idle => (false, 64),
        Task::Subscribe { .. } => (false, 16 * 1024),
        Task::Publish { .. } => (true, 1024),
    };
    match &client.task {
        Task::Subscribe { filter, qos, .. } => {
            if wire.subscribe(1, filter, *qos, &mut out).is_err() {
                return End::Lost;
            }
        }
        _ => {
            Counters::inc(&counters.ready);
            ready_marked = true;
        }
    }
    loop {
        // Generate what is due, within the window and the buffer.
        let mut wake_at = None;
        if let Task::Publish {
            spec:
                Publish {
                    topic,
                    qos,
                    size,
                    rate,
                    limit,
                    inflight: window,
                    retain,
                },
            stream,
            phase,
        } = &client.task
        {
            if shared.go.is_cancelled() && !progress.finished {
                if shared.stop_publishing.is_cancelled() || limit.is_some_and(|l| progress.seq >= l)
                {
                    progress.finished = true;
                    if let Some(p) = &progress.pacer {
                        // What the schedule wanted but the broker's pace
                        // (the in-flight window) did not allow.
                        let behind = p.behind(Instant::now(), Duration::from_millis(100));
                        Counters::add(&counters.overrun, behind);
                    }
                } else {
                    let pacer = progress.pacer.get_or_insert_with(|| {
                        let offset = if *rate > 0.0 { phase / rate } else { 0.0 };
                        Pacer::new(
                            Instant::now() + Duration::from_secs_f64(offset),
                            *rate,
                            BURST,
                        )
                    });
                    let now = Instant::now();
                    let mut n = pacer.due(now);
                    if *qos > 0 {
                        n = n.min(u64::from(window.saturating_sub(inflight)));
                    }
                    if let Some(l) = limit {
                        n = n.min(l - progress.seq);
                    }
                    if out.len() >= OUT_HIGH_WATER {
                        n = 0;
                    }
                    let len = (*size).max(payload::HEADER);
                    for _ in 0..n {
                        let mut body = vec![0u8; len];
                        Header {
                            stream: *stream,
                            seq: progress.seq as u32,
                            sent_ns: payload::now_ns(),
                        }
                        .write(&mut body);
                        let id = if *qos > 0 {
                            pkid = pkid.checked_add(1).unwrap_or(1);
                            inflight += 1;
                            pkid
                        } else {
                            0
                        };
                        if wire
                            .publish(topic, *qos, id, *retain, Bytes::from(body), &mut out)
                            .is_err()
                        {
                            return End::Lost;
                        }
                        progress.seq += 1;
                    }
                    pacer.take(n);
                    if n > 0 {
                        Counters::add(&counters.sent, n);
                        if let Some(s) = shared.sent.get(*stream as usize) {
                            s.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    let room = *qos == 0 || inflight < *window;
                    if room && out.len() < OUT_HIGH_WATER {
                        wake_at = pacer.next_due();
                        if pacer.unlimited() && out.is_empty() {
                            // Unlimited and nothing to write: go again now.
                            wake_at = Some(now);
                        }
                    }
                }
            }
        }
        let waiting_to_start = publishing_role && !shared.go.is_cancelled();
        let publishing = publishing_role && shared.go.is_cancelled() && !progress.finished;
        inbuf.reserve(read_reserve);
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            r = rd.read_buf(&mut inbuf) => {
                match r {
                    Ok(0) | Err(_) => return End::Lost,
                    Ok(_) => {}
                }
                let mut received_any = false;
                loop {
                    let packet = match wire.decode(&mut inbuf) {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(_) => return End::Lost,
                    };
                    match packet {
                        Incoming::Publish { qos, pkid, payload } => {
                            Counters::inc(&counters.received);
                            if !received_any {
                                // One mark per read (its packets arrived
                                // together), before anything can return.
                                received_any = true;
                                shared.stats.mark_receipt();
                            }
                            if let Task::Subscribe { receiver, .. } = &client.task {
                                receive(receiver, &payload, &mut latencies);
                            }
                            let ack = match qos {
                                1 => wire.puback(pkid, &mut out),
                                2 => wire.pubrec(pkid, &mut out),
                                _ => Ok(()),
                            };
                            if ack.is_err() {
                                return End::Lost;
                            }
                        }
                        Incoming::PubRel { pkid } => {
                            if wire.pubcomp(pkid, &mut out).is_err() {
                                return End::Lost;
                            }
                        }
                        Incoming::PubRec { pkid } => {
                            // Not sent by our QoS ≤ 1 publishers; answered
                            // so a broker's exchange still completes.
                            if wire.pubrel(pkid, &mut out).is_err() {
                                return End::Lost;
                            }
                        }
                        Incoming::PubAck { failed } => {
                            inflight = inflight.saturating_sub(1);
                            Counters::inc(&counters.acked);
                            if failed {
                                Counters::inc(&counters.publish_failures);
                            } else if let Task::Publish { stream, .. } = &client.task {
                                if let Some(a) = shared.acked.get(*stream as usize) {
                                    a.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        }
                        Incoming::SubAck { failed } => {
                            if failed > 0 {
                                Counters::add(&counters.subscribe_failures, failed as u64);
                            }
                            if !ready_marked {
                                Counters::inc(&counters.ready);
                                ready_marked = true;
                            }
                        }
                        Incoming::Disconnect { .. } => return End::Lost,
                        Incoming::ConnAck { .. } | Incoming::PingResp | Incoming::Other => {}
                    }
                }
                if !latencies.is_empty() {
                    shared.stats.latency.record_all(client.index, &latencies);
                    latencies.clear();
                }
                if inbuf.is_empty() && inbuf.capacity() > 64 * 1024 {
                    inbuf = BytesMut::new();
                }
            }
            r = wr.write_buf(&mut out), if !out.is_empty() => {
                if r.is_err() {
                    return End::Lost;
                }
                if out.is_empty() && out.capacity() > 4 * OUT_HIGH_WATER {
                    out = BytesMut::new();
                }
            }
            _ = shared.go.cancelled(), if waiting_to_start => {}
            _ = shared.stop_publishing.cancelled(), if publishing => {}
            _ = sleep_until_opt(wake_at), if publishing && wake_at.is_some() => {}
            _ = ping.tick() => {
                if wire.pingreq(&mut out).is_err() {
                    return End::Lost;
                }
            }
        }
    }
    // Stopping: flush what is queued, then DISCONNECT, bounded in time.
    let _ = wire.disconnect(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = wr.write_all(&out).await;
        let _ = wr.shutdown().await;
    })
    .await;
    End::Stopped
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Records one received message in `receiver` and its latency in `batch`.
fn receive(receiver: &Mutex<Receiver>, payload: &[u8], batch: &mut Vec<u64>) {
    let Some(h) = Header::read(payload) else {
        receiver.lock().foreign += 1;
        return;
    };
    receiver
        .lock()
        .streams
        .entry(h.stream)
        .or_default()
        .record(h.seq);
    let micros = payload::now_ns().saturating_sub(h.sent_ns) / 1000;
    batch.push(micros);
}
