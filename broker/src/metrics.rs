//! Broker-wide counters: lock-free atomics bumped on the hot path and read
//! by `$SYS` (`ops/sys.rs`), tests, and later the admin `/metrics` endpoint.
//!
//! Names are Prometheus names, kept as constants so the exporter, the docs
//! and the tests agree. Labels are bounded (a fixed set of reasons);
//! client ids never become labels.

use std::sync::atomic::{AtomicU64, Ordering};

/// Open TCP connections, including those still in the CONNECT handshake.
pub const CONNECTIONS_CURRENT: &str = "porchlight_connections";
/// Clients past CONNACK.
pub const CLIENTS_CONNECTED: &str = "porchlight_clients_connected";
pub const CONNECTIONS_TOTAL: &str = "porchlight_connections_total";
pub const CONNECTIONS_REFUSED: &str = "porchlight_connections_refused_total";
pub const MESSAGES_RECEIVED: &str = "porchlight_messages_received_total";
pub const MESSAGES_SENT: &str = "porchlight_messages_sent_total";
pub const BYTES_RECEIVED: &str = "porchlight_bytes_received_total";
pub const BYTES_SENT: &str = "porchlight_bytes_sent_total";
pub const MESSAGES_DROPPED: &str = "porchlight_messages_dropped_total";
pub const BAD_PACKETS: &str = "porchlight_bad_packets_total";
pub const RETAINED: &str = "porchlight_retained_messages";
pub const SESSIONS: &str = "porchlight_sessions";
pub const TLS_HANDSHAKE_FAILURES: &str = "porchlight_tls_handshake_failures_total";
pub const TLS_RELOADS: &str = "porchlight_tls_reloads_total";
pub const TLS_RELOAD_FAILURES: &str = "porchlight_tls_reload_failures_total";
/// CONNECTs refused for bad credentials or refused anonymous access.
pub const AUTH_FAILURES: &str = "porchlight_auth_failures_total";
/// `--auth-file` changes taken into use, and refused.
pub const AUTH_RELOADS: &str = "porchlight_auth_reloads_total";
pub const AUTH_RELOAD_FAILURES: &str = "porchlight_auth_reload_failures_total";
/// PUBLISH and SUBSCRIBE refused by the ACL, by action.
pub const ACL_DENIED: &str = "porchlight_acl_denied_total";
/// PROXY-protocol headers that were malformed or missing.
pub const PROXY_HEADER_ERRORS: &str = "porchlight_proxy_header_errors_total";
/// WebSocket upgrades refused (wrong path, no `mqtt` subprotocol, not
/// HTTP) or timed out.
pub const WS_HANDSHAKE_FAILURES: &str = "porchlight_ws_handshake_failures_total";
/// Publishers paused by flow control, and pauses that ran out (the
/// subscriber was then treated as stuck).
pub const PUBLISH_BACKPRESSURE_WAITS: &str = "porchlight_publish_backpressure_waits_total";
pub const PUBLISH_BACKPRESSURE_TIMEOUTS: &str = "porchlight_publish_backpressure_timeouts_total";

/// Why a message was not delivered to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session queue was full (`--queue-overflow` decided which).
    QueueFull,
    /// Larger than the subscriber's Maximum Packet Size.
    PacketTooLarge,
    /// Its Message Expiry Interval ran out before delivery.
    Expired,

    /// Shared-subscription messages of an ended session with no other
    /// member to take them.
    SessionEnded,
    /// A durable session's copy whose write the store refused (disk full
    /// or failing); the publisher was told.
    NotDurable,
    /// An MQTT 5 QoS 0 publish over its tenant's or connection's rate.
    RateLimited,
    /// Over a tenant quota kept in the state: the subscriber tenant's
    /// queued bytes, or a retained publish over the retained limits.
    TenantQuota,
    /// A QoS 0 message for an offline session while the node's queued
    /// messages are at `--max-queued-memory`.
    QueueMemory,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::QueueFull,
        DropReason::PacketTooLarge,
        DropReason::Expired,
        DropReason::SessionEnded,
        DropReason::NotDurable,
        DropReason::RateLimited,
        DropReason::TenantQuota,
        DropReason::QueueMemory,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::PacketTooLarge => "packet_too_large",
            DropReason::Expired => "expired",

            DropReason::SessionEnded => "session_ended",
            DropReason::NotDurable => "not_durable",
            DropReason::RateLimited => "rate_limited",
            DropReason::TenantQuota => "tenant_quota",
            DropReason::QueueMemory => "queue_memory",
        }
    }
}

/// Why a connection was closed for bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPacket {
    Malformed,
    ProtocolError,
    TooLarge,
    UnsupportedProtocol,
    NotConnectFirst,
    ConnectTimeout,
    KeepAliveTimeout,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
}

impl BadPacket {
    pub const ALL: [BadPacket; 9] = [
        BadPacket::Malformed,
        BadPacket::ProtocolError,
        BadPacket::TooLarge,
        BadPacket::UnsupportedProtocol,
        BadPacket::NotConnectFirst,
        BadPacket::ConnectTimeout,
        BadPacket::KeepAliveTimeout,
        BadPacket::ReceiveMaximumExceeded,
        BadPacket::TopicAliasInvalid,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BadPacket::Malformed => "malformed",
            BadPacket::ProtocolError => "protocol_error",
            BadPacket::TooLarge => "too_large",
            BadPacket::UnsupportedProtocol => "unsupported_protocol",
            BadPacket::NotConnectFirst => "not_connect_first",
            BadPacket::ConnectTimeout => "connect_timeout",
            BadPacket::KeepAliveTimeout => "keepalive_timeout",
            BadPacket::ReceiveMaximumExceeded => "receive_maximum_exceeded",
            BadPacket::TopicAliasInvalid => "topic_alias_invalid",
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_current: AtomicU64,
    pub clients_connected: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub retained: AtomicU64,
    pub sessions: AtomicU64,
    /// Handshakes that failed or timed out (`--tls-listen`).
    pub tls_handshake_failures: AtomicU64,
    /// Certificate/key/CA changes taken into use, and refused.
    pub tls_reloads: AtomicU64,
    pub tls_reload_failures: AtomicU64,
    pub auth_failures: AtomicU64,
    pub auth_reloads: AtomicU64,
    pub auth_reload_failures: AtomicU64,
    pub acl_denied_publish: AtomicU64,
    pub acl_denied_subscribe: AtomicU64,
    pub proxy_header_errors: AtomicU64,
    pub ws_handshake_failures: AtomicU64,
    pub backpressure_waits: AtomicU64,
    pub backpressure_timeouts: AtomicU64,
    /// Failed `accept` calls (out of file descriptors, mostly):
    /// `porchlight_accept_failures_total`.
    pub accept_failures: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    bad_packets: [AtomicU64; 9],
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn inc(&self, c: &AtomicU64) {
        add(c, 1);
    }

    pub fn add(&self, c: &AtomicU64, n: u64) {
        add(c, n);
    }

    pub fn dec(&self, c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) {
        add(&self.dropped[reason as usize], 1);
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn bad_packet(&self, kind: BadPacket) {
        add(&self.bad_packets[kind as usize], 1);
    }

    pub fn bad_packet_count(&self, kind: BadPacket) -> u64 {
        self.bad_packets[kind as usize].load(Ordering::Relaxed)
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of every counter (served by the admin
    /// API; `$SYS` publishes the same values).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let g = Self::get;
        for (name, v) in [
            (CONNECTIONS_CURRENT, g(&self.connections_current)),
            (CLIENTS_CONNECTED, g(&self.clients_connected)),
            (CONNECTIONS_TOTAL, g(&self.connections_total)),
            (CONNECTIONS_REFUSED, g(&self.connections_refused)),
            (MESSAGES_RECEIVED, g(&self.messages_received)),
            (MESSAGES_SENT, g(&self.messages_sent)),
            (BYTES_RECEIVED, g(&self.bytes_received)),
            (BYTES_SENT, g(&self.bytes_sent)),
            (RETAINED, g(&self.retained)),
            (SESSIONS, g(&self.sessions)),
            (TLS_HANDSHAKE_FAILURES, g(&self.tls_handshake_failures)),
            (TLS_RELOADS, g(&self.tls_reloads)),
            (TLS_RELOAD_FAILURES, g(&self.tls_reload_failures)),
            (AUTH_FAILURES, g(&self.auth_failures)),
            (AUTH_RELOADS, g(&self.auth_reloads)),
            (AUTH_RELOAD_FAILURES, g(&self.auth_reload_failures)),
            (PROXY_HEADER_ERRORS, g(&self.proxy_header_errors)),
            (WS_HANDSHAKE_FAILURES, g(&self.ws_handshake_failures)),
            (PUBLISH_BACKPRESSURE_WAITS, g(&self.backpressure_waits)),
            (
                PUBLISH_BACKPRESSURE_TIMEOUTS,
                g(&self.backpressure_timeouts),
            ),
        ] {
            let _ = writeln!(s, "{name} {v}");
        }
        for (action, v) in [
            ("publish", g(&self.acl_denied_publish)),
            ("subscribe", g(&self.acl_denied_subscribe)),
        ] {
            let _ = writeln!(s, "{ACL_DENIED}{{action=\"{action}\"}} {v}");
        }
        for r in DropReason::ALL {
            let _ = writeln!(
                s,
                "{MESSAGES_DROPPED}{{reason=\"{}\"}} {}",
                r.label(),
                self.dropped_count(r)
            );
        }
        for k in BadPacket::ALL {
            let _ = writeln!(
                s,
                "{BAD_PACKETS}{{kind=\"{}\"}} {}",
                k.label(),
                self.bad_packet_count(k)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_counter_with_bounded_labels() {
        let m = Metrics::default();
        m.inc(&m.messages_received);
        m.dropped(DropReason::QueueFull);
        m.bad_packet(BadPacket::Malformed);
        let text = m.render();
        assert!(
            text.contains("porchlight_messages_received_total 1\n"),
            "{text}"
        );
        assert!(text.contains("porchlight_messages_dropped_total{reason=\"queue_full\"} 1\n"));
        assert!(text.contains("porchlight_bad_packets_total{kind=\"malformed\"} 1\n"));
        assert!(text.contains("porchlight_bad_packets_total{kind=\"too_large\"} 0\n"));
    }
}
