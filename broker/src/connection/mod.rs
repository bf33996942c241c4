//! One client connection, from accepted socket to close.
//!
//! `serve` runs the whole life of a connection in one task: the CONNECT
//! handshake (`connection/connect.rs`) under `--connect-timeout`, then a loop that
//! decodes every complete packet in the read buffer and handles it
//! (`connection/inbound.rs`), pulls deliveries from the session as the send window
//! allows (`connection/outbound.rs`), and waits on the socket, the session's wake-up,
//! the keepalive deadline, a takeover kick and node shutdown. When it ends,
//! a [`Close`] says why: the v5 DISCONNECT reason to send, the bad-input
//! counter to bump, and whether the will is due; then the session is
//! detached (`route/registry.rs`).
//!
//! This layer is one client's protocol actor: it sits on `net/` (the byte
//! stream) and submits to `route/` (publishes, attach, detach) and
//! `state/` (subscriptions, through `Control`).

pub mod connect;
pub(crate) mod inbound;
pub mod outbound;
mod subscribe;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use porchlight_storage::Ticket;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::broker::Broker;
use crate::codec::{self, reason, DecodeError, Disconnect, Packet, Properties, Protocol};
use crate::ids::{ConnectionId, SessionKey};
use crate::metrics::{BadPacket, Ended};
use crate::net::transport::{IoEvent, Transport, WRITE_HIGH_WATER};
use crate::session::Session;
use crate::state::command::DelayedWill;
use crate::topic::TopicName;

/// Held acknowledgements above this stop reading from the client until
/// the disk catches up (compliant v5 clients stop at Receive Maximum).
const PENDING_HIGH_WATER: usize = 1024;

/// Deliveries one connection may queue (its publishes' fan-out) before it
/// lets the other tasks of its worker run: a publisher whose buffered
/// PUBLISHes fan out to thousands of sessions each would otherwise hold
/// its worker for seconds in one poll (100 publishes to 15,000 offline
/// sessions stalled unrelated clients for 1.3 to 1.6 s, issue 16).
const ROUTE_BUDGET: usize = 4096;

/// How long a closing connection may take to write its last packets.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection ends.
#[derive(Debug)]
pub struct Close {
    /// MQTT 5 DISCONNECT reason to send (v5 clients only).
    pub reason: Option<u8>,
    /// Bad-input counter to bump.
    pub bad: Option<BadPacket>,
    pub detail: Cow<'static, str>,
    /// Whether the will is due (everything but a normal DISCONNECT and
    /// node shutdown).
    pub will: bool,
    /// For `porchlight_disconnects_total` and the disconnect log line.
    pub why: Ended,
}

impl Close {
    pub fn protocol(reason: u8, bad: BadPacket, detail: impl Into<Cow<'static, str>>) -> Close {
        Close {
            reason: Some(reason),
            bad: Some(bad),
            detail: detail.into(),
            will: true,
            why: match bad {
                BadPacket::KeepAliveTimeout => Ended::KeepAliveTimeout,
                _ => Ended::BadPacket,
            },
        }
    }

    /// Closed without telling the client why.
    pub fn quiet(detail: &'static str, will: bool, why: Ended) -> Close {
        Close {
            reason: None,
            bad: None,
            detail: detail.into(),
            will,
            why,
        }
    }

    pub fn from_decode(e: &DecodeError) -> Close {
        let bad = match e {
            DecodeError::Malformed(_) => BadPacket::Malformed,
            DecodeError::Protocol(_) => BadPacket::ProtocolError,
            DecodeError::PacketTooLarge { .. } => BadPacket::TooLarge,
            DecodeError::UnsupportedProtocol { .. } => BadPacket::UnsupportedProtocol,
            DecodeError::TopicAliasInvalid => BadPacket::TopicAliasInvalid,
        };
        Close::protocol(e.reason(), bad, e.to_string())
    }
}

/// Where a connection comes from: the client's address (from the PROXY
/// header when the listener takes one), the listener, and what its TLS
/// handshake showed, if any. Handed to the CONNECT handshake and dropped
/// with it: a connected client keeps none of it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub peer: SocketAddr,
    pub listener: crate::net::ListenerKind,
    /// Boxed: most connections have none, and the task keeps this slot.
    pub tls: Option<Box<crate::net::tls::TlsPeer>>,
}

impl Origin {
    /// The verified client certificate's identity (`--tls-identity-field`).
    pub fn cert_identity(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.identity.as_deref())
    }
}

/// The state of a connected client, after a successful CONNECT.
pub struct Conn<S> {
    pub io: Transport<S>,
    pub broker: Arc<Broker>,
    pub id: ConnectionId,
    pub protocol: Protocol,
    pub key: SessionKey,
    pub session: Arc<Session>,
    /// This connection's claim on the session (`Command::Connect`).
    pub claim: crate::ids::Claim,
    /// Keepalive in force (after Server Keep Alive); zero means none.
    pub keep_alive: Duration,
    pub last_seen: Instant,
    /// Most QoS > 0 deliveries in flight: min(client Receive Maximum,
    /// `--max-inflight`).
    pub send_window: usize,
    /// The client's Maximum Packet Size (ours when it gave none).
    pub client_max_packet: usize,
    /// Inbound topic aliases (index = alias - 1).
    pub topic_aliases: Vec<Option<TopicName>>,
    pub will: Option<DelayedWill>,
    /// v5: the CONNECT had Session Expiry Interval 0, so DISCONNECT may
    /// not set a non-zero one.
    pub connect_expiry_zero: bool,
    /// Cancelled on takeover; a child of the node's shutdown token.
    pub kick: CancellationToken,
    pub done: CancellationToken,
    /// Acknowledgements held until the writes they promise are on disk
    /// (`--fsync`), in the order they must reach the client.
    pub pending: VecDeque<(Option<Ticket>, Packet)>,
    /// A QoS 2 PUBLISH to a durable session, encoded, waiting for its
    /// in-flight record to reach the disk (see `connection/outbound.rs`).
    pub held_publish: Option<(Ticket, bytes::BytesMut)>,
    /// PUBACKs among `pending`: with the QoS 2 ids awaiting PUBREL, what
    /// counts against our Receive Maximum.
    pub pending_pubacks: usize,
    /// MQTT 5 Request Problem Information: when false, no reason strings
    /// on anything but CONNACK, PUBLISH and DISCONNECT (MQTT-3.1.2-29).
    pub problem_info: bool,
    /// Set when a publish from this client found a full subscriber queue:
    /// the connection yields before reading more, so the runtime spends
    /// its time draining queues rather than accepting messages it drops.
    pub overflowed: bool,
    /// Set when a publish from this client woke an idle subscriber's
    /// connection: if this one has output of its own (acknowledgements),
    /// it yields before writing it, so the woken connection (next on this
    /// worker) writes the delivery first. Only idle ones: a busy
    /// subscriber gains nothing from the yield.
    pub woke_subscriber: bool,
    /// Deliveries this connection's publishes queued since the task last
    /// yielded: past [`ROUTE_BUDGET`] it yields before the next packet.
    pub routed: usize,
    /// A subscriber session this client's last publish filled (flow
    /// control): nothing more is read or decoded from the client until it
    /// drains; our own output still flows.
    pub backpressure: Option<Backpressure>,
    /// Who the client is and what it may do (`auth/`); when its
    /// credentials expire (a JWT's `exp`) the connection closes.
    pub authz: crate::auth::Authz,
    /// The connection's place in its tenant's connection limit, and the
    /// tenant's usage its publishes and subscriptions count against.
    pub seat: crate::tenant::quota::Seat,
    /// Largest packet the client may send: `--max-packet-size`, or the
    /// tenant's smaller `max_packet_size`.
    pub max_packet: usize,
    /// An MQTT 3.1.1 client over its tenant's inbound rate: nothing more
    /// is read until then (3.1.1 has no way to refuse a publish).
    pub throttle: Option<tokio::time::Instant>,
    /// `max_messages_per_connection_per_second`.
    pub conn_rate: crate::tenant::quota::Rate,
    /// Deliveries to write before the next one is timed
    /// (`outbound::TIMED_EVERY`).
    pub untimed: u8,
    /// Where the client connects from (after PROXY), on which listener,
    /// and whether an operator kicked it: for logs and the admin API.
    pub info: Arc<crate::session::ConnInfo>,
}

/// Serves one accepted connection until it closes. `over_limit` is true
/// when `--max-connections` was already reached: the CONNECT is read and
/// answered with "quota exceeded".
///
/// `guard` is held until the connection ends (the listener's connection
/// count): passing it in, rather than wrapping this future in another
/// that holds it, keeps the task from laying this future out twice.
pub async fn serve<S, G>(stream: S, origin: Origin, broker: Arc<Broker>, over_limit: bool, guard: G)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    let _guard = guard;
    let id = ConnectionId::next();
    let span = tracing::debug_span!(
        "conn",
        peer = %origin.peer,
        conn = %id,
        cert = origin.cert_identity(),
        tenant = tracing::field::Empty,
        client = tracing::field::Empty
    );
    async move {
        let io = Transport::new(stream);
        // Boxed: its state is large and needed only once, so it must not
        // size the future every idle connection keeps for its lifetime.
        let handshake = Box::pin(crate::connection::connect::handshake(
            io, &broker, id, over_limit, origin,
        ));
        let Some(conn) = handshake.await else {
            return;
        };
        let span = tracing::Span::current();
        span.record("tenant", tracing::field::display(&conn.key.tenant));
        span.record("client", tracing::field::display(&conn.key.client));
        conn.run().await;
    }
    .instrument(span)
    .await;
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Boxed (by `connect::handshake`) so the connection's state is one
    /// allocation of its own size that the task's future only points to:
    /// a `Conn` held by value across the handshake's await and then moved
    /// into this future would be laid out twice in the task.
    async fn run(mut self: Box<Self>) {
        self.redeliver_inflight();
        let close = self.main_loop().await;
        // Boxed for the same reason as the handshake.
        Box::pin(self.finish(close)).await;
    }

    async fn main_loop(&mut self) -> Close {
        let shutdown = self.broker.shutdown.clone();
        let kick = self.kick.clone();
        let max = self.max_packet;
        let persist = self.broker.persist.clone();
        loop {
            // Handle every complete packet already buffered, unless the
            // client is not reading our output. One clock read per batch:
            // its packets arrived together.
            let mut batch_time = None;
            while self.io.wbuf.len() < WRITE_HIGH_WATER
                && self.backpressure.is_none()
                && self.throttle.is_none()
                && self.routed < ROUTE_BUDGET
            {
                match codec::decode(&mut self.io.rbuf, Some(self.protocol), max) {
                    Ok(Some(packet)) => {
                        self.last_seen = *batch_time.get_or_insert_with(Instant::now);
                        if let Err(close) = self.handle(packet) {
                            return close;
                        }
                    }
                    Ok(None) => {
                        if let Some(n) = codec::frame_len(&self.io.rbuf) {
                            self.io.reserve_frame(n);
                        }
                        break;
                    }
                    Err(e) => return Close::from_decode(&e),
                }
            }
            // Yielding first only helps when we have output of our own
            // (acknowledgements) that would otherwise be written first.
            let woke = std::mem::take(&mut self.woke_subscriber) && !self.io.wbuf.is_empty();
            // Over the routing budget: yield, then go on with the packets
            // still buffered (the socket may have nothing new to say).
            let spent = std::mem::take(&mut self.routed) >= ROUTE_BUDGET;
            if std::mem::take(&mut self.overflowed) || woke || spent {
                tokio::task::yield_now().await;
            }
            // A reload may have removed the tenant or withdrawn a grant
            // (one atomic load when nothing changed).
            if let Err(close) = self.tenant_check() {
                return close;
            }
            self.release_pending();
            self.pump();
            self.count_written();
            if spent && self.io.wbuf.len() < WRITE_HIGH_WATER {
                continue;
            }
            self.io.release_idle_buffers();
            let room =
                self.io.wbuf.len() < WRITE_HIGH_WATER && self.pending.len() < PENDING_HIGH_WATER;
            let read = room && self.backpressure.is_none() && self.throttle.is_none();
            let deadline = self.keepalive_deadline();
            let auth_deadline = self.authz.expires_at();
            // Wait on the front ticket even if it became durable since
            // `release_pending` looked: the wait then returns at once, where
            // skipping it could leave the acks held with nothing to wake us.
            let waiting = [
                self.pending.front().and_then(|(t, _)| *t),
                self.held_publish.as_ref().map(|(t, _)| *t),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                biased;
                // `kick` is a child of the node's shutdown token: one wait
                // covers both takeover and shutdown.
                _ = kick.cancelled() => {
                    return if shutdown.is_cancelled() {
                        Close {
                            reason: Some(reason::SERVER_SHUTTING_DOWN),
                            bad: None,
                            detail: "server shutting down".into(),
                            will: false,
                            why: Ended::ServerShutdown,
                        }
                    } else if self.info.kicked.load(std::sync::atomic::Ordering::Relaxed) {
                        Close {
                            reason: Some(reason::ADMINISTRATIVE_ACTION),
                            bad: None,
                            detail: "disconnected by an operator".into(),
                            will: true,
                            why: Ended::Kicked,
                        }
                    } else {
                        Close {
                            reason: Some(reason::SESSION_TAKEN_OVER),
                            bad: None,
                            detail: "session taken over".into(),
                            will: true,
                            why: Ended::TakenOver,
                        }
                    };
                }
                timed_out = wait_for_room(&self.backpressure) => {
                    if let (true, Some(mut wait)) = (timed_out, self.backpressure.take()) {
                        let limits = self.broker.config.queue_limits();
                        if wait.progressed(limits.max_messages) {
                            // Slow, not stuck: wait again. The client's
                            // silence is ours (we are not reading), so its
                            // keepalive starts over too.
                            if let Some(limit) = self.broker.config.publish_backpressure {
                                self.last_seen = Instant::now();
                                wait.restart(limit);
                                self.backpressure = Some(wait);
                            }
                        } else {
                            wait.full.mark_stuck();
                            let m = &self.broker.metrics;
                            m.inc(&m.backpressure_timeouts);
                            debug!(
                                subscriber = %wait.full.key.client,
                                "subscriber queue did not drain within --publish-backpressure-ms: dropping for it until it does"
                            );
                        }
                    }
                }
                _ = sleep_until_opt(self.throttle) => {
                    self.throttle = None;
                }
                ev = self.io.ready(read) => match ev {
                    Ok(IoEvent::Read(_)) => {}
                    Ok(IoEvent::Wrote) => {
                        // While we are not reading (the client is behind on
                        // our output), its progress reading counts as life.
                        if !room {
                            self.last_seen = Instant::now();
                        }
                    }
                    Ok(IoEvent::Eof) => return Close::quiet("peer closed the connection", true, Ended::PeerClosed),
                    Err(_) => return Close::quiet("connection error", true, Ended::ConnectionError),
                },
                _ = self.session.notify.notified(), if room => {}
                r = wait_durable(&persist, waiting), if waiting.is_some() => {
                    if r.is_err() {
                        // A held QoS 2 PUBLISH cannot go out without its
                        // record: close rather than spin on the error.
                        if self.held_publish.is_some() {
                            return crate::connection::inbound::durable_write_failed();
                        }
                        if let Err(close) = self.fail_pending() {
                            return close;
                        }
                    }
                }
                _ = sleep_until_opt(auth_deadline), if auth_deadline.is_some() => {
                    return Close {
                        reason: Some(reason::NOT_AUTHORIZED),
                        bad: None,
                        detail: "credentials expired".into(),
                        will: true,
                        why: Ended::NotAuthorized,
                    };
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    return Close::protocol(
                        reason::KEEP_ALIVE_TIMEOUT,
                        BadPacket::KeepAliveTimeout,
                        "keepalive timeout",
                    );
                }
            }
        }
    }

    fn keepalive_deadline(&self) -> Option<tokio::time::Instant> {
        if self.keep_alive.is_zero() {
            return None;
        }
        // MQTT: one and a half times the keepalive.
        let grace = self.keep_alive + self.keep_alive / 2;
        Some(tokio::time::Instant::from_std(self.last_seen + grace))
    }

    /// Moves the transport's byte counts into the metrics.
    pub fn count_written(&mut self) {
        count_bytes(&mut self.io, &self.broker.metrics);
    }

    /// Appends a packet to the output buffer.
    pub fn send(&mut self, packet: &Packet) {
        codec::encode(packet, self.protocol, &mut self.io.wbuf);
    }

    /// Appends an acknowledgement that may only leave once `write` is on
    /// disk; earlier held acknowledgements keep their place in front.
    pub fn send_after(&mut self, ticket: Option<Ticket>, packet: Packet) {
        let durable = ticket.is_none_or(|t| self.broker.persist.store().is_durable(t));
        if durable && self.pending.is_empty() {
            self.send_fitted(packet);
            return;
        }
        if matches!(packet, Packet::PubAck(_)) {
            self.pending_pubacks += 1;
        }
        self.pending.push_back((ticket, packet));
    }

    /// Sends held acknowledgements whose writes are now on disk, in order.
    fn release_pending(&mut self) {
        while let Some((t, _)) = self.pending.front() {
            if t.is_some_and(|t| !self.broker.persist.store().is_durable(t)) {
                break;
            }
            if let Some((_, packet)) = self.pending.pop_front() {
                if matches!(packet, Packet::PubAck(_)) {
                    self.pending_pubacks -= 1;
                }
                self.send_fitted(packet);
            }
        }
    }

    /// The store could not make held writes durable: every held
    /// acknowledgement turns into a failure (v5), or the connection closes
    /// (3.1.1 has no way to say it).
    fn fail_pending(&mut self) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        // PUBREL and PUBCOMP have no failure code that fits: their writes
        // must be durable, so the connection closes and the client retries.
        if self
            .pending
            .iter()
            .any(|(_, p)| matches!(p, Packet::PubRel(_) | Packet::PubComp(_)))
        {
            return Err(crate::connection::inbound::durable_write_failed());
        }
        let mut forget = Vec::new();
        for (t, packet) in self.pending.iter_mut() {
            *t = None;
            match packet {
                Packet::PubAck(a) if a.reason < 0x80 => {
                    if !v5 {
                        return Err(Close::quiet("durable write failed", true, Ended::Refused));
                    }
                    a.reason = reason::UNSPECIFIED_ERROR;
                }
                Packet::PubRec(a) if a.reason < 0x80 => {
                    if !v5 {
                        return Err(Close::quiet("durable write failed", true, Ended::Refused));
                    }
                    forget.push(a.packet_id);
                    a.reason = reason::UNSPECIFIED_ERROR;
                }
                Packet::SubAck(s) => {
                    for r in s.reasons.iter_mut().filter(|r| **r < 0x80) {
                        *r = reason::UNSPECIFIED_ERROR;
                    }
                }
                _ => {}
            }
        }
        // A refused QoS 2 publish was not stored: its packet id is free again.
        if !forget.is_empty() {
            let mut st = self.session.lock();
            for id in forget {
                st.incoming_qos2.remove(&id);
                if let Some(p) = &st.persist {
                    drop(crate::persist::Write::from_result(
                        p.incoming(&self.key, id, false),
                    ));
                }
            }
        }
        self.release_pending();
        Ok(())
    }

    /// Appends a packet carrying optional diagnostics (reason string, user
    /// properties), dropping them if the packet would exceed the client's
    /// Maximum Packet Size.
    pub fn send_fitted(&mut self, mut packet: Packet) {
        codec::fit_to(&mut packet, self.protocol, self.client_max_packet);
        self.send(&packet);
    }

    async fn finish(mut self: Box<Self>, close: Close) {
        if let Some(bad) = close.bad {
            self.broker.metrics.bad_packet(bad);
        }
        self.broker.metrics.disconnected(close.why);
        if let Some(suppressed) = self.broker.client_log.admit() {
            tracing::info!(
                client = %self.key.client,
                tenant = %self.key.tenant,
                peer = %self.info.peer,
                protocol = self.protocol.name(),
                reason = close.why.label(),
                detail = %close.detail,
                code = close.reason,
                suppressed,
                "Client disconnected"
            );
        }
        let told = self.protocol.is_v5() && close.reason.is_some();
        if self.protocol.is_v5() {
            if let Some(code) = close.reason {
                self.send_fitted(Packet::Disconnect(Disconnect {
                    reason: code,
                    properties: Properties {
                        reason_string: Some(close.detail.to_string()),
                        ..Properties::default()
                    },
                }));
            }
        }
        // The session goes first: a connection taking it over (the same
        // client reconnecting after a network change) must not wait on
        // whether this peer still reads. What is in flight stays in the
        // session and is sent again on the next connection.
        let will = if close.will { self.will.take() } else { None };
        self.broker
            .registry
            .detach(&self.session, self.id, self.claim, will)
            .await;
        self.done.cancel();
        self.broker
            .metrics
            .dec(&self.broker.metrics.clients_connected);
        // Then the last packets and the close (TLS close_notify, WebSocket
        // Close frame), bounded: a peer that stopped reading cannot keep
        // this task, or its socket, alive.
        // After a server DISCONNECT the close lingers (`Transport::
        // close_lingering`), so the reason reaches a client that is still
        // sending instead of being lost to a reset.
        let io = &mut self.io;
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async move {
            if io.flush_all().await.is_ok() && !told {
                io.shutdown().await;
            }
        })
        .await;
        if told {
            self.io.close_lingering(CLOSE_FLUSH_TIMEOUT).await;
        }
        self.count_written();
    }
}

/// Adds a transport's read and written byte counts to the metrics.
pub fn count_bytes<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Transport<S>,
    metrics: &crate::metrics::Metrics,
) {
    let (r, w) = (io.take_read(), io.take_written());
    if r > 0 {
        metrics.add(&metrics.bytes_received, r as u64);
    }
    if w > 0 {
        metrics.add(&metrics.bytes_sent, w as u64);
    }
}

/// Waits until `ticket` is on disk. Cancel-safe (a watch receiver). The
/// wait is boxed: only connections with held acknowledgements pay for its
/// state, not every idle connection's future.
async fn wait_durable(
    persist: &crate::persist::Persist,
    ticket: Option<Ticket>,
) -> Result<(), porchlight_storage::StorageError> {
    match ticket {
        Some(t) => Box::pin(persist.store().durable(t)).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A publisher waiting for a subscriber queue it filled (flow control).
pub struct Backpressure {
    /// The session whose queue is full.
    pub full: Arc<Session>,
    /// When this wait runs out.
    deadline: tokio::time::Instant,
    /// `full.taken()` when this wait started.
    taken_at_start: u64,
}

impl Backpressure {
    pub fn new(full: Arc<Session>, limit: Duration) -> Backpressure {
        let taken_at_start = full.taken();
        Backpressure {
            full,
            deadline: tokio::time::Instant::now() + limit,
            taken_at_start,
        }
    }

    /// Whether the subscriber's connection took at least a quarter of the
    /// queue bound (and at least one) since the wait started: it is slow,
    /// not stuck.
    fn progressed(&self, max_queued: usize) -> bool {
        let need = (max_queued as u64 / 4).max(1);
        self.full.taken().saturating_sub(self.taken_at_start) >= need
    }

    fn restart(&mut self, limit: Duration) {
        self.deadline = tokio::time::Instant::now() + limit;
        self.taken_at_start = self.full.taken();
    }
}

/// Flow control: resolves when the session a publish filled has drained
/// to half (or went offline, or was found stuck): false; or when the wait
/// ran out: true. Never resolves without a wait. Cancel-safe: it only
/// reads the wait.
async fn wait_for_room(wait: &Option<Backpressure>) -> bool {
    let Some(Backpressure { full, deadline, .. }) = wait else {
        return std::future::pending().await;
    };
    loop {
        let room = full.room.notified();
        tokio::pin!(room);
        // Registered before the check, so a drain in between wakes us.
        room.as_mut().enable();
        if !full.backpressures() {
            return false;
        }
        tokio::select! {
            _ = &mut room => {}
            _ = tokio::time::sleep_until(*deadline) => return true,
        }
    }
}
