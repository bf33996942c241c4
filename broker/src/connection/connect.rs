//! The CONNECT handshake: read the first packet under the connect timeout,
//! validate it, attach the session, answer CONNACK.
//!
//! Refusals get the CONNACK code the spec gives (MQTT 5 reason codes,
//! mapped to 3.1.1 return codes by the codec) and close the connection.
//! On success the connection becomes a [`Conn`] and `connection/mod.rs` takes
//! over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::auth::acl::Access;
use crate::auth::{Credentials, Decision};
use crate::broker::Broker;
use crate::codec::{self, reason, ConnAck, Connect, DecodeError, Packet, Properties, Protocol};
use crate::connection::{count_bytes, Conn, Origin};
use crate::ids::{ClientId, ConnectionId, SessionKey};
use crate::metrics::{BadPacket, Metrics};
use crate::net::transport::Transport;
use crate::route::registry::Refused;
use crate::session::{ConnInfo, Owner};
use crate::state::command::DelayedWill;
use crate::tenant::quota::{QuotaKind, Rate, Seat, StateLimits};
use crate::topic;

enum FirstError {
    Io,
    /// The decode error, and the protocol level if the bytes were a CONNECT
    /// that got as far as naming it.
    Decode(DecodeError, Option<u8>),
    /// The bytes so far cannot start a CONNECT (`codec::cannot_start_connect`).
    NotConnect,
}

async fn read_first<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Transport<S>,
    max: usize,
) -> Result<Packet, FirstError> {
    loop {
        if codec::cannot_start_connect(&io.rbuf) {
            return Err(FirstError::NotConnect);
        }
        let level = codec::peek_connect_level(&io.rbuf);
        match codec::decode(&mut io.rbuf, None, max) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {
                if let Some(n) = codec::frame_len(&io.rbuf) {
                    io.reserve_frame(n);
                }
                match io.read_some().await {
                    Ok(0) | Err(_) => return Err(FirstError::Io),
                    Ok(_) => {}
                }
            }
            Err(e) => return Err(FirstError::Decode(e, level)),
        }
    }
}

/// Why a CONNECT is refused, as a value every phase of the handshake can
/// return: the CONNACK reason (none: close without one, as 3.1.1 asks
/// for a malformed will) and its reason string, and whether it counts in
/// `porchlight_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    code: Option<u8>,
    why: &'static str,
    counted: bool,
}

impl Refusal {
    /// Refused with a CONNACK, counted.
    fn counted(code: u8, why: &'static str) -> Refusal {
        Refusal {
            code: Some(code),
            why,
            counted: true,
        }
    }

    /// Refused with a CONNACK, not counted (shutdown; a bad will, which
    /// counts as a bad packet).
    fn quiet(code: u8, why: &'static str) -> Refusal {
        Refusal {
            code: Some(code),
            why,
            counted: false,
        }
    }

    /// Closed without a CONNACK.
    fn close(why: &'static str) -> Refusal {
        Refusal {
            code: None,
            why,
            counted: false,
        }
    }

    /// Counts it, answers it and closes.
    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        io: Transport<S>,
        protocol: Protocol,
        client_max_packet: usize,
        metrics: &Metrics,
    ) {
        if let (true, Some(code)) = (self.counted, self.code) {
            metrics.refused(code);
        }
        match self.code {
            Some(code) => refuse(io, protocol, code, self.why, client_max_packet, metrics).await,
            None => debug!(why = self.why, "Connection closed at CONNECT"),
        }
    }
}

/// Answers CONNECT with a refusal and closes.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: Transport<S>,
    protocol: Protocol,
    code: u8,
    why: &'static str,
    client_max_packet: usize,
    metrics: &Metrics,
) {
    debug!(code, why, "Connection refused");
    let mut properties = Properties::default();
    if protocol.is_v5() {
        properties.reason_string = Some(why.to_owned());
    }
    let mut ack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: code,
        properties,
    });
    codec::fit_to(&mut ack, protocol, client_max_packet);
    codec::encode(&ack, protocol, &mut io.wbuf);
    // The close lingers, so the refusal is not lost to a reset when the
    // client sent more after its CONNECT.
    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), io.flush_all()).await {
        io.close_lingering(Duration::from_secs(2)).await;
    }
    count_bytes(&mut io, metrics);
}

/// Assigned client ids: unique per process run and across runs.
fn assign_client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "auto-{:x}-{:x}",
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the handshake; `None` when the connection was refused or lost.
/// Its phases: the first packet (`read_connect`), then `admit` (admission,
/// client id, tenant and identity, the tenant's seat, keepalive, will,
/// session expiry, the session itself), each returning a [`Refusal`] or
/// what the next needs; then the `Conn` and its CONNACK.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: Transport<S>,
    broker: &Arc<Broker>,
    id: ConnectionId,
    over_limit: bool,
    origin: Origin,
) -> Option<Box<Conn<S>>> {
    let c = match read_connect(&mut io, broker).await {
        Ok(c) => c,
        Err(Some((p, r))) => {
            r.answer(io, p, usize::MAX, &broker.metrics).await;
            return None;
        }
        Err(None) => return None,
    };
    let p = c.protocol;
    let max_out = c
        .properties
        .maximum_packet_size
        .map_or(usize::MAX, |m| m as usize);
    let admitted = match admit(broker, &c, id, over_limit, origin).await {
        Ok(a) => a,
        Err(r) => {
            r.answer(io, p, max_out, &broker.metrics).await;
            return None;
        }
    };
    Some(connected(io, broker, id, c, admitted))
}

/// The first packet, which must be a CONNECT. Otherwise the refusal to
/// answer, in the protocol the bytes named, or none (just close).
async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Transport<S>,
    broker: &Broker,
) -> Result<Connect, Option<(Protocol, Refusal)>> {
    let (cfg, metrics) = (&broker.config, &broker.metrics);
    let first = tokio::time::timeout(cfg.connect_timeout, read_first(io, cfg.max_packet_size));
    let packet = match first.await {
        Err(_) => {
            metrics.bad_packet(BadPacket::ConnectTimeout);
            debug!("No CONNECT within the connect timeout");
            return Err(None);
        }
        Ok(Err(FirstError::Io)) => return Err(None),
        Ok(Err(FirstError::NotConnect)) => {
            // Another packet (or an HTTP request) first, or a CONNECT
            // broken in its first bytes.
            let bad = if io.rbuf.first() == Some(&0x10) {
                BadPacket::Malformed
            } else {
                BadPacket::NotConnectFirst
            };
            metrics.bad_packet(bad);
            debug!(kind = bad.label(), "First bytes cannot start a CONNECT");
            return Err(None);
        }
        Ok(Err(FirstError::Decode(e, level))) => {
            debug!(error = %e, "Bad first packet");
            let close = crate::connection::Close::from_decode(&e);
            if let Some(bad) = close.bad {
                metrics.bad_packet(bad);
            }
            return Err(match (e, level) {
                (DecodeError::UnsupportedProtocol { level, .. }, _) => {
                    let p = if level == 5 {
                        Protocol::V5
                    } else {
                        Protocol::V311
                    };
                    let code = reason::UNSUPPORTED_PROTOCOL_VERSION;
                    Some((p, Refusal::quiet(code, "unsupported protocol")))
                }
                // A v5 CONNECT that named its level: it may get a CONNACK
                // with the reason (MQTT 5, 4.13.1); 3.1.1 says just close.
                (e, Some(5)) => Some((
                    Protocol::V5,
                    Refusal::quiet(e.reason(), "malformed CONNECT"),
                )),
                _ => None,
            });
        }
        Ok(Ok(p)) => p,
    };
    let Packet::Connect(c) = packet else {
        metrics.bad_packet(BadPacket::NotConnectFirst);
        debug!(packet = packet.name(), "First packet was not CONNECT");
        return Err(None);
    };
    Ok(*c)
}

/// What `admit` found: everything the connection is built from.
struct Admitted {
    key: SessionKey,
    session: Arc<crate::session::Session>,
    present: bool,
    claim: crate::ids::Claim,
    assigned: Option<String>,
    authz: crate::auth::Authz,
    seat: Seat,
    max_packet: usize,
    tenant_max_qos: Option<u8>,
    keep_alive: u16,
    server_keep_alive: Option<u16>,
    will: Option<DelayedWill>,
    requested_expiry: u32,
    expiry: u32,
    kick: CancellationToken,
    done: CancellationToken,
    info: Arc<ConnInfo>,
}

/// Every check a CONNECT passes, in order, and the session it attaches.
async fn admit(
    broker: &Arc<Broker>,
    c: &Connect,
    id: ConnectionId,
    over_limit: bool,
    origin: Origin,
) -> Result<Admitted, Refusal> {
    let cfg = &broker.config;
    if over_limit {
        return Err(Refusal::counted(
            reason::QUOTA_EXCEEDED,
            "connection limit reached",
        ));
    }
    if broker.shutdown.is_cancelled() {
        return Err(Refusal::quiet(
            reason::SERVER_UNAVAILABLE,
            "server shutting down",
        ));
    }
    if c.properties.authentication_method.is_some() {
        let why = "no enhanced authentication configured";
        return Err(Refusal::counted(reason::BAD_AUTHENTICATION_METHOD, why));
    }
    let (client_id, assigned) = client_id(c, cfg.max_client_id_length)?;
    let (listener, peer) = (origin.listener, origin.peer);
    let (tenant, principal, address) = identify(broker, c, &client_id, origin).await?;
    let seat = take_seat(broker, &tenant, listener)?;
    let mut authz = crate::auth::Authz::new(
        &broker.auth,
        principal,
        tenant.id.clone(),
        seat.usage.clone(),
        &client_id,
        address,
    );
    let max_packet = tenant
        .limits
        .max_packet_size
        .map_or(cfg.max_packet_size, |m| {
            (m as usize).min(cfg.max_packet_size)
        });
    let (keep_alive, server_keep_alive) = keep_alive(c, cfg.max_keepalive)?;
    let will = will(broker, c, &mut authz)?;
    let (requested_expiry, expiry) = session_expiry(broker, c)?;

    let key = SessionKey {
        tenant: tenant.id.clone(),
        client: ClientId::new(client_id),
    };
    let kick = broker.shutdown.child_token();
    let done = CancellationToken::new();
    let info = Arc::new(ConnInfo {
        peer,
        listener,
        protocol_level: c.protocol.level(),
        keep_alive,
        username: authz.principal.username.clone(),
        connected_at: Instant::now(),
        kicked: std::sync::atomic::AtomicBool::new(false),
    });
    let owner = Owner {
        conn: id,
        kick: kick.clone(),
        done: done.clone(),
        info: info.clone(),
    };
    // A session last held by another authenticated user is not handed
    // over: its subscriptions and messages were granted to that user. The
    // client gets a fresh session instead (as if it asked for clean start).
    // Only checked usernames count (without configured authentication a
    // username is whatever the client says).
    let user: Option<String> = authz
        .principal
        .username
        .as_deref()
        .filter(|_| broker.auth.required())
        .map(str::to_owned);
    let usage = broker.state.tenants().usage(&tenant.id);
    let max_persistent = StateLimits::get(&usage.state_limits.persistent_sessions);
    let attached = broker
        .registry
        .attach(
            key.clone(),
            c.clean_start,
            expiry,
            user,
            max_persistent,
            owner,
        )
        .await;
    let (session, present, claim) = match attached {
        Ok(a) => (a.session, a.resumed, a.claim),
        Err(Refused::Quota(kind)) => {
            // The tenant's `max_persistent_sessions` (counted in the
            // control state).
            usage.reject(kind);
            let why = "tenant persistent session limit reached";
            return Err(Refusal::counted(reason::QUOTA_EXCEEDED, why));
        }
        Err(Refused::Unavailable(e)) => {
            tracing::warn!(client = %key.client, error = %e, "CONNECT refused: control state unavailable");
            let why = "session state unavailable";
            return Err(Refusal::counted(reason::SERVER_UNAVAILABLE, why));
        }
    };
    Ok(Admitted {
        key,
        session,
        present,
        claim,
        assigned,
        authz,
        seat,
        max_packet,
        tenant_max_qos: tenant.limits.max_qos,
        keep_alive,
        server_keep_alive,
        will,
        requested_expiry,
        expiry,
        kick,
        done,
        info,
    })
}

/// The client identifier, and the one assigned when it sent none.
fn client_id(c: &Connect, max_len: usize) -> Result<(String, Option<String>), Refusal> {
    let invalid = reason::CLIENT_IDENTIFIER_NOT_VALID;
    if c.client_id.is_empty() {
        let p = c.protocol;
        if p == Protocol::V31 || (p == Protocol::V311 && !c.clean_start) {
            return Err(Refusal::counted(
                invalid,
                "empty client id needs clean session",
            ));
        }
        let id = assign_client_id();
        return Ok((id.clone(), Some(id)));
    }
    if c.client_id.len() > max_len {
        return Err(Refusal::counted(invalid, "client id too long"));
    }
    Ok((c.client_id.clone(), None))
}

/// Which tenant (`tenant/mod.rs`, fixed for the connection's life) and who
/// is connecting (certificate, password, JWT or anonymous) in its realm.
async fn identify(
    broker: &Broker,
    c: &Connect,
    client_id: &str,
    origin: Origin,
) -> Result<
    (
        Arc<crate::tenant::TenantDef>,
        crate::auth::Principal,
        std::net::IpAddr,
    ),
    Refusal,
> {
    let metrics = &broker.metrics;
    // IPv4-mapped IPv6 (dual-stack listeners, PROXY TCP6) counts as IPv4,
    // so ACL `address` rules and the backoff see one form.
    let address = origin.peer.ip().to_canonical();
    let directory = broker.auth.directory();
    let tls = origin.tls.as_deref();
    let hello = crate::tenant::Hello {
        listener: origin.listener,
        sni: tls.and_then(|t| t.sni.as_deref()),
        cert: tls.and_then(|t| t.cert.as_ref()),
        username: c.username.as_deref(),
    };
    let resolved = match directory.resolve(&hello) {
        Ok(r) => r,
        Err(no) => {
            if no.code == reason::BAD_USER_NAME_OR_PASSWORD {
                broker.auth.failed(address, client_id, metrics);
            } else {
                debug!(%address, client = %client_id, why = no.why, "No tenant");
            }
            return Err(Refusal::counted(no.code, no.why));
        }
    };
    let tenant = resolved.tenant.clone();
    if !tenant.limits.allows_protocol(c.protocol) {
        broker.tenants.usage(&tenant.id).reject(QuotaKind::Protocol);
        let why = "protocol version not allowed for this tenant";
        return Err(Refusal::counted(reason::UNSUPPORTED_PROTOCOL_VERSION, why));
    }
    let credentials = Credentials {
        client_id: client_id.to_owned(),
        username: resolved.username,
        password: c.password.as_ref().map(|p| p.to_vec()),
        cert_identity: origin.cert_identity().map(str::to_owned),
        address,
    };
    drop(origin);
    let realm = tenant.realm.clone();
    match broker.auth.authenticate(credentials, realm, metrics).await {
        Decision::Allow(principal) => Ok((tenant, principal, address)),
        Decision::Refuse { code, why } => Err(Refusal::counted(code, why)),
    }
}

/// The tenant's connection quotas: rate, then a seat (given back when the
/// connection ends).
fn take_seat(
    broker: &Broker,
    tenant: &crate::tenant::TenantDef,
    listener: crate::net::ListenerKind,
) -> Result<Seat, Refusal> {
    let usage = broker.tenants.usage(&tenant.id);
    if let Some(rate) = tenant.limits.max_connect_rate {
        if usage.connect_rate.take(1, u64::from(rate)).is_err() {
            usage.reject(QuotaKind::ConnectRate);
            let why = "tenant connect rate exceeded";
            return Err(Refusal::counted(reason::CONNECTION_RATE_EXCEEDED, why));
        }
    }
    let max = tenant.limits.max_connections;
    Seat::take(usage, max, listener as usize).ok_or(Refusal::counted(
        reason::QUOTA_EXCEEDED,
        "tenant connection limit reached",
    ))
}

/// Keepalive, and the Server Keep Alive to send: v5 gets it; 3.1.1 asking
/// too much is refused (as Mosquitto does), since 3.1.1 cannot be told.
fn keep_alive(c: &Connect, max: u16) -> Result<(u16, Option<u16>), Refusal> {
    if c.protocol.is_v5() {
        if c.keep_alive == 0 || c.keep_alive > max {
            return Ok((max, Some(max)));
        }
        return Ok((c.keep_alive, None));
    }
    if c.keep_alive > max {
        let why = "keepalive above --max-keepalive";
        return Err(Refusal::counted(reason::CLIENT_IDENTIFIER_NOT_VALID, why));
    }
    Ok((c.keep_alive, None))
}

/// The will: a valid topic the client may publish to, a UTF-8 payload if
/// it says so.
fn will(
    broker: &Broker,
    c: &Connect,
    authz: &mut crate::auth::Authz,
) -> Result<Option<DelayedWill>, Refusal> {
    let Some(w) = &c.will else {
        return Ok(None);
    };
    let metrics = &broker.metrics;
    if topic::TopicName::new(&w.topic, broker.config.topic_limits()).is_err() {
        metrics.bad_packet(BadPacket::ProtocolError);
        let why = "invalid will topic";
        return Err(if c.protocol.is_v5() {
            Refusal::quiet(reason::TOPIC_NAME_INVALID, why)
        } else {
            Refusal::close(why)
        });
    }
    let denied = !authz.allows(&broker.auth, Access::Publish, &w.topic, metrics);
    if topic::is_reserved(&w.topic) || denied {
        return Err(Refusal::counted(
            reason::NOT_AUTHORIZED,
            "will topic not authorized",
        ));
    }
    if w.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&w.payload).is_err()
    {
        let why = "will payload is not UTF-8";
        return Err(Refusal::quiet(reason::PAYLOAD_FORMAT_INVALID, why));
    }
    Ok(Some(DelayedWill {
        will: Box::new(w.clone()),
        delay: w.properties.will_delay_interval.unwrap_or(0),
    }))
}

/// The session expiry asked for and the one granted. A durable session
/// needs its session record on disk: while the store refuses writes, say
/// so now rather than lose the session at restart.
fn session_expiry(broker: &Broker, c: &Connect) -> Result<(u32, u32), Refusal> {
    let max = broker.config.max_session_expiry;
    let requested = if c.protocol.is_v5() {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        max
    };
    let expiry = requested.min(max);
    if expiry > 0 {
        let why = "store refuses writes: no persistent sessions";
        match broker.persist.health() {
            porchlight_storage::Health::Ok => {}
            porchlight_storage::Health::Full => {
                return Err(Refusal::counted(reason::QUOTA_EXCEEDED, why))
            }
            porchlight_storage::Health::Failed => {
                return Err(Refusal::counted(reason::SERVER_UNAVAILABLE, why))
            }
        }
    }
    Ok((requested, expiry))
}

/// The connection of an admitted CONNECT, with its CONNACK queued.
fn connected<S: AsyncRead + AsyncWrite + Unpin>(
    io: Transport<S>,
    broker: &Arc<Broker>,
    id: ConnectionId,
    c: Connect,
    a: Admitted,
) -> Box<Conn<S>> {
    let (cfg, metrics) = (&broker.config, &broker.metrics);
    let p = c.protocol;
    let v5 = p.is_v5();
    let mut props = Properties::default();
    if v5 {
        if a.expiry != a.requested_expiry {
            props.session_expiry_interval = Some(a.expiry);
        }
        props.receive_maximum = Some(cfg.receive_maximum);
        props.maximum_packet_size = u32::try_from(a.max_packet).ok();
        if let Some(q) = a.tenant_max_qos.filter(|q| *q < 2) {
            props.maximum_qos = Some(q);
        }
        if cfg.topic_alias_maximum > 0 {
            props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        }
        props.assigned_client_identifier = a.assigned;
        props.server_keep_alive = a.server_keep_alive;
    }
    let client_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
    let max_out = c
        .properties
        .maximum_packet_size
        .map_or(usize::MAX, |m| m as usize);
    let present = a.present;
    let mut conn = Box::new(Conn {
        io,
        broker: broker.clone(),
        id,
        protocol: p,
        key: a.key,
        session: a.session,
        claim: a.claim,
        keep_alive: Duration::from_secs(u64::from(a.keep_alive)),
        last_seen: Instant::now(),
        send_window: usize::from(client_receive_max.min(cfg.max_inflight)),
        client_max_packet: max_out,
        topic_aliases: Vec::new(),
        will: a.will,
        // MQTT-3.14.2-2 is about what the client asked for.
        connect_expiry_zero: v5 && a.requested_expiry == 0,
        kick: a.kick,
        done: a.done,
        overflowed: false,
        woke_subscriber: false,
        routed: 0,
        backpressure: None,
        pending: std::collections::VecDeque::new(),
        pending_pubacks: 0,
        held_publish: None,
        problem_info: c.properties.request_problem_information != Some(0),
        authz: a.authz,
        seat: a.seat,
        max_packet: a.max_packet,
        throttle: None,
        conn_rate: Rate::default(),
        info: a.info,
        untimed: 0,
    });
    // A resumed session keeps no subscription in a tenant this principal
    // is not granted (now, or no longer).
    if present {
        conn.drop_ungranted();
    }
    conn.send(&Packet::ConnAck(ConnAck {
        session_present: present,
        reason: reason::SUCCESS,
        properties: props,
    }));
    metrics.inc(&metrics.clients_connected);
    if let Some(suppressed) = broker.client_log.admit() {
        let info = &conn.info;
        tracing::info!(
            client = %conn.key.client,
            tenant = %conn.key.tenant,
            peer = %info.peer,
            listener = info.listener.name(),
            protocol = p.name(),
            present,
            keep_alive = a.keep_alive,
            auth = conn.authz.principal.method,
            user = conn.authz.principal.username.as_deref(),
            suppressed,
            "Client connected"
        );
    }
    conn
}
