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
use crate::session::Owner;
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

/// Counts a refused CONNECT, answers it and closes; `None`, for the
/// handshake to return.
async fn refused<S: AsyncRead + AsyncWrite + Unpin, T>(
    io: Transport<S>,
    protocol: Protocol,
    code: u8,
    why: &'static str,
    client_max_packet: usize,
    metrics: &Metrics,
) -> Option<T> {
    metrics.inc(&metrics.connections_refused);
    refuse(io, protocol, code, why, client_max_packet, metrics).await;
    None
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
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: Transport<S>,
    broker: &Arc<Broker>,
    id: ConnectionId,
    over_limit: bool,
    origin: Origin,
) -> Option<Box<Conn<S>>> {
    let cfg = broker.config.clone();
    let metrics = &broker.metrics;
    let first = tokio::time::timeout(
        cfg.connect_timeout,
        read_first(&mut io, cfg.max_packet_size),
    );
    let packet = match first.await {
        Err(_) => {
            metrics.bad_packet(BadPacket::ConnectTimeout);
            debug!("No CONNECT within the connect timeout");
            return None;
        }
        Ok(Err(FirstError::Io)) => return None,
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
            return None;
        }
        Ok(Err(FirstError::Decode(e, level))) => {
            debug!(error = %e, "Bad first packet");
            let close = crate::connection::Close::from_decode(&e);
            if let Some(bad) = close.bad {
                metrics.bad_packet(bad);
            }
            match (e, level) {
                (DecodeError::UnsupportedProtocol { level, .. }, _) => {
                    let p = if level == 5 {
                        Protocol::V5
                    } else {
                        Protocol::V311
                    };
                    let why = "unsupported protocol";
                    refuse(
                        io,
                        p,
                        reason::UNSUPPORTED_PROTOCOL_VERSION,
                        why,
                        usize::MAX,
                        metrics,
                    )
                    .await;
                }
                // A v5 CONNECT that named its level: it may get a CONNACK with
                // the reason (MQTT 5, 4.13.1); 3.1.1 says just close.
                (e, Some(5)) => {
                    refuse(
                        io,
                        Protocol::V5,
                        e.reason(),
                        "malformed CONNECT",
                        usize::MAX,
                        metrics,
                    )
                    .await;
                }
                _ => {}
            }
            return None;
        }
        Ok(Ok(p)) => p,
    };
    let Packet::Connect(c) = packet else {
        metrics.bad_packet(BadPacket::NotConnectFirst);
        debug!(packet = packet.name(), "First packet was not CONNECT");
        return None;
    };
    let c: Connect = *c;
    let p = c.protocol;
    let v5 = p.is_v5();
    let max_out = c
        .properties
        .maximum_packet_size
        .map_or(usize::MAX, |m| m as usize);

    if over_limit {
        return refused(
            io,
            p,
            reason::QUOTA_EXCEEDED,
            "connection limit reached",
            max_out,
            metrics,
        )
        .await;
    }
    if broker.shutdown.is_cancelled() {
        refuse(
            io,
            p,
            reason::SERVER_UNAVAILABLE,
            "server shutting down",
            max_out,
            metrics,
        )
        .await;
        return None;
    }
    if c.properties.authentication_method.is_some() {
        return refused(
            io,
            p,
            reason::BAD_AUTHENTICATION_METHOD,
            "no enhanced authentication configured",
            max_out,
            metrics,
        )
        .await;
    }

    // Client identifier.
    let mut assigned = None;
    let client_id = if c.client_id.is_empty() {
        if p == Protocol::V31 || (p == Protocol::V311 && !c.clean_start) {
            return refused(
                io,
                p,
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                "empty client id needs clean session",
                max_out,
                metrics,
            )
            .await;
        }
        let id = assign_client_id();
        assigned = Some(id.clone());
        id
    } else if c.client_id.len() > cfg.max_client_id_length {
        return refused(
            io,
            p,
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            "client id too long",
            max_out,
            metrics,
        )
        .await;
    } else {
        c.client_id.clone()
    };

    // Which tenant (`tenant/mod.rs`): fixed for the connection's life.
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
            metrics.inc(&metrics.connections_refused);
            if no.code == reason::BAD_USER_NAME_OR_PASSWORD {
                broker.auth.failed(address, &client_id, metrics);
            } else {
                debug!(%address, client = %client_id, why = no.why, "No tenant");
            }
            refuse(io, p, no.code, no.why, max_out, metrics).await;
            return None;
        }
    };
    let tenant = resolved.tenant.clone();
    let usage = broker.tenants.usage(&tenant.id);
    if !tenant.limits.allows_protocol(p) {
        usage.reject(QuotaKind::Protocol);
        metrics.inc(&metrics.connections_refused);
        let why = "protocol version not allowed for this tenant";
        refuse(
            io,
            p,
            reason::UNSUPPORTED_PROTOCOL_VERSION,
            why,
            max_out,
            metrics,
        )
        .await;
        return None;
    }

    // Who is connecting (certificate, password, JWT or anonymous), in the
    // tenant's realm.
    let credentials = Credentials {
        client_id: client_id.clone(),
        username: resolved.username,
        password: c.password.as_ref().map(|p| p.to_vec()),
        cert_identity: origin.cert_identity().map(str::to_owned),
        address,
    };
    drop(origin);
    let realm = tenant.realm.clone();
    let principal = match broker.auth.authenticate(credentials, realm, metrics).await {
        Decision::Allow(p) => p,
        Decision::Refuse { code, why } => {
            return refused(io, p, code, why, max_out, metrics).await;
        }
    };

    // The tenant's connection quotas: rate, then a seat (given back when
    // the connection ends).
    if let Some(rate) = tenant.limits.max_connect_rate {
        if usage.connect_rate.take(1, u64::from(rate)).is_err() {
            usage.reject(QuotaKind::ConnectRate);
            metrics.inc(&metrics.connections_refused);
            let why = "tenant connect rate exceeded";
            refuse(
                io,
                p,
                reason::CONNECTION_RATE_EXCEEDED,
                why,
                max_out,
                metrics,
            )
            .await;
            return None;
        }
    }
    let Some(seat) = Seat::take(usage, tenant.limits.max_connections) else {
        metrics.inc(&metrics.connections_refused);
        let why = "tenant connection limit reached";
        refuse(io, p, reason::QUOTA_EXCEEDED, why, max_out, metrics).await;
        return None;
    };
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

    // Keepalive: v5 gets Server Keep Alive; v3 asking too much is refused
    // (as Mosquitto does), since 3.1.1 cannot tell the client.
    let max_ka = cfg.max_keepalive;
    let mut server_keep_alive = None;
    let keep_alive = if v5 {
        if c.keep_alive == 0 || c.keep_alive > max_ka {
            server_keep_alive = Some(max_ka);
            max_ka
        } else {
            c.keep_alive
        }
    } else if c.keep_alive > max_ka {
        return refused(
            io,
            p,
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            "keepalive above --max-keepalive",
            max_out,
            metrics,
        )
        .await;
    } else {
        c.keep_alive
    };

    // Will.
    let will = match c.will {
        Some(w) => {
            if topic::TopicName::new(&w.topic, cfg.topic_limits()).is_err() {
                metrics.bad_packet(BadPacket::ProtocolError);
                if v5 {
                    refuse(
                        io,
                        p,
                        reason::TOPIC_NAME_INVALID,
                        "invalid will topic",
                        max_out,
                        metrics,
                    )
                    .await;
                }
                return None;
            }
            let denied = !authz.allows(&broker.auth, Access::Publish, &w.topic, metrics);
            if topic::is_reserved(&w.topic) || denied {
                return refused(
                    io,
                    p,
                    reason::NOT_AUTHORIZED,
                    "will topic not authorized",
                    max_out,
                    metrics,
                )
                .await;
            }
            if w.properties.payload_format_indicator == Some(1)
                && std::str::from_utf8(&w.payload).is_err()
            {
                refuse(
                    io,
                    p,
                    reason::PAYLOAD_FORMAT_INVALID,
                    "will payload is not UTF-8",
                    max_out,
                    metrics,
                )
                .await;
                return None;
            }
            let delay = w.properties.will_delay_interval.unwrap_or(0);
            Some(DelayedWill {
                will: Box::new(w),
                delay,
            })
        }
        None => None,
    };

    // Session expiry.
    let requested_expiry = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        cfg.max_session_expiry
    };
    let expiry = requested_expiry.min(cfg.max_session_expiry);

    // A durable session needs its session record on disk; while the store
    // refuses writes, say so now rather than lose the session at restart.
    if expiry > 0 {
        let code = match broker.persist.health() {
            porchlight_storage::Health::Ok => None,
            porchlight_storage::Health::Full => Some(reason::QUOTA_EXCEEDED),
            porchlight_storage::Health::Failed => Some(reason::SERVER_UNAVAILABLE),
        };
        if let Some(code) = code {
            return refused(
                io,
                p,
                code,
                "store refuses writes: no persistent sessions",
                max_out,
                metrics,
            )
            .await;
        }
    }

    let key = SessionKey {
        tenant: tenant.id.clone(),
        client: ClientId::new(client_id),
    };
    let kick = broker.shutdown.child_token();
    let done = CancellationToken::new();
    let owner = Owner {
        conn: id,
        kick: kick.clone(),
        done: done.clone(),
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
    let max_persistent = StateLimits::get(
        &broker
            .state
            .tenants()
            .usage(&tenant.id)
            .state_limits
            .persistent_sessions,
    );
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
            broker.state.tenants().usage(&tenant.id).reject(kind);
            metrics.inc(&metrics.connections_refused);
            let why = "tenant persistent session limit reached";
            refuse(io, p, reason::QUOTA_EXCEEDED, why, max_out, metrics).await;
            return None;
        }
        Err(Refused::Unavailable(e)) => {
            tracing::warn!(client = %key.client, error = %e, "CONNECT refused: control state unavailable");
            metrics.inc(&metrics.connections_refused);
            let why = "session state unavailable";
            refuse(io, p, reason::SERVER_UNAVAILABLE, why, max_out, metrics).await;
            return None;
        }
    };

    let mut props = Properties::default();
    if v5 {
        if expiry != requested_expiry {
            props.session_expiry_interval = Some(expiry);
        }
        props.receive_maximum = Some(cfg.receive_maximum);
        props.maximum_packet_size = u32::try_from(max_packet).ok();
        if let Some(q) = tenant.limits.max_qos.filter(|q| *q < 2) {
            props.maximum_qos = Some(q);
        }
        if cfg.topic_alias_maximum > 0 {
            props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        }
        props.assigned_client_identifier = assigned;
        props.server_keep_alive = server_keep_alive;
    }
    let client_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
    let mut conn = Box::new(Conn {
        io,
        broker: broker.clone(),
        id,
        protocol: p,
        key,
        session,
        claim,
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        last_seen: Instant::now(),
        send_window: usize::from(client_receive_max.min(cfg.max_inflight)),
        client_max_packet: max_out,
        topic_aliases: Vec::new(),
        will,
        // MQTT-3.14.2-2 is about what the client asked for.
        connect_expiry_zero: v5 && requested_expiry == 0,
        kick,
        done,
        overflowed: false,
        woke_subscriber: false,
        routed: 0,
        backpressure: None,
        pending: std::collections::VecDeque::new(),
        pending_pubacks: 0,
        held_publish: None,
        problem_info: c.properties.request_problem_information != Some(0),
        authz,
        seat,
        max_packet,
        throttle: None,
        conn_rate: Rate::default(),
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
    metrics.inc(&metrics.connections_total);
    metrics.inc(&metrics.clients_connected);
    debug!(
        client = %conn.key.client,
        ?p,
        present,
        keep_alive,
        auth = conn.authz.principal.method,
        user = conn.authz.principal.username.as_deref(),
        "Client connected"
    );
    Some(conn)
}
