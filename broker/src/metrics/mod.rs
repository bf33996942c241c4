//! Broker-wide counters: lock-free atomics bumped on the hot path and read
//! by `$SYS` (`ops/sys.rs`), tests, and the admin `/metrics` endpoint
//! (`ops/admin/metrics.rs`, which names and describes each one; the
//! per-tenant ones are in `tenant/quota.rs`). Histograms are in
//! `histogram.rs`.
//!
//! Labels are bounded (fixed sets of reasons, listeners and QoS levels);
//! client ids never become labels.

pub mod histogram;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub use histogram::AtomicHistogram;

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

/// The listener kinds' labels, indexed by `net::ListenerKind as usize`.
pub const LISTENERS: [&str; 4] = ["tcp", "tls", "ws", "wss"];

/// Why a connection past CONNACK ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The peer closed the socket without DISCONNECT.
    PeerClosed,
    /// The socket failed (reset, TLS or WebSocket error).
    ConnectionError,
    KeepAliveTimeout,
    /// Malformed input or a protocol violation (`BadPacket` says which).
    BadPacket,
    /// A new connection with the same client id took the session.
    TakenOver,
    ServerShutdown,
    /// Its credentials expired (JWT `exp`).
    NotAuthorized,
    /// Its tenant was removed from `--tenants`.
    TenantRemoved,
    /// A write it needed was refused by the store, or a 3.1.1 publish was
    /// refused for want of room (store or queued memory full).
    Refused,
    /// An operator kicked it (admin API).
    Kicked,
}

impl Ended {
    pub const ALL: [Ended; 11] = [
        Ended::ClientDisconnect,
        Ended::PeerClosed,
        Ended::ConnectionError,
        Ended::KeepAliveTimeout,
        Ended::BadPacket,
        Ended::TakenOver,
        Ended::ServerShutdown,
        Ended::NotAuthorized,
        Ended::TenantRemoved,
        Ended::Refused,
        Ended::Kicked,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Ended::ClientDisconnect => "client_disconnect",
            Ended::PeerClosed => "peer_closed",
            Ended::ConnectionError => "connection_error",
            Ended::KeepAliveTimeout => "keepalive_timeout",
            Ended::BadPacket => "bad_packet",
            Ended::TakenOver => "taken_over",
            Ended::ServerShutdown => "server_shutdown",
            Ended::NotAuthorized => "not_authorized",
            Ended::TenantRemoved => "tenant_removed",
            Ended::Refused => "refused",
            Ended::Kicked => "kicked",
        }
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// Not finished within `--connect-timeout`.
    Timeout,
    /// The client's certificate was refused (mutual TLS).
    Certificate,
    /// No common protocol version or cipher suite, or a bad message.
    Protocol,
    /// The socket closed or failed during the handshake.
    Io,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 4] = [
        TlsFailure::Timeout,
        TlsFailure::Certificate,
        TlsFailure::Protocol,
        TlsFailure::Io,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::Timeout => "timeout",
            TlsFailure::Certificate => "certificate",
            TlsFailure::Protocol => "protocol",
            TlsFailure::Io => "io",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub connections_current: AtomicU64,
    pub clients_connected: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub retained: AtomicU64,
    pub sessions: AtomicU64,
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
    /// Open sockets and accepted sockets, by listener ([`LISTENERS`]).
    pub listener_connections: [AtomicU64; 4],
    pub listener_connections_total: [AtomicU64; 4],
    /// CONNECTs refused, by CONNACK reason code.
    refused_by_code: Box<[AtomicU64; 256]>,
    disconnects: [AtomicU64; Ended::ALL.len()],
    /// Completed TLS handshakes, full and resumed.
    pub tls_handshakes_full: AtomicU64,
    pub tls_handshakes_resumed: AtomicU64,
    tls_failures: [AtomicU64; TlsFailure::ALL.len()],
    /// Successful handshakes, from the first byte to finished.
    pub tls_handshake_seconds: AtomicHistogram,
    /// The server certificate's notAfter (seconds since the epoch); 0
    /// without TLS.
    pub tls_certificate_expiry: AtomicI64,
    /// From a PUBLISH decoded to its delivery written to a subscriber's
    /// socket (one observation per delivery written).
    pub publish_to_write_seconds: AtomicHistogram,
    /// The store's fsyncs (durations) and how many writes each covered.
    pub fsync_seconds: AtomicHistogram,
    pub group_commit_writes: AtomicHistogram,
    dropped: [AtomicU64; DropReason::ALL.len()],
    bad_packets: [AtomicU64; 9],
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            connections_current: AtomicU64::default(),
            clients_connected: AtomicU64::default(),
            messages_received: AtomicU64::default(),
            messages_sent: AtomicU64::default(),
            bytes_received: AtomicU64::default(),
            bytes_sent: AtomicU64::default(),
            retained: AtomicU64::default(),
            sessions: AtomicU64::default(),
            tls_reloads: AtomicU64::default(),
            tls_reload_failures: AtomicU64::default(),
            auth_failures: AtomicU64::default(),
            auth_reloads: AtomicU64::default(),
            auth_reload_failures: AtomicU64::default(),
            acl_denied_publish: AtomicU64::default(),
            acl_denied_subscribe: AtomicU64::default(),
            proxy_header_errors: AtomicU64::default(),
            ws_handshake_failures: AtomicU64::default(),
            backpressure_waits: AtomicU64::default(),
            backpressure_timeouts: AtomicU64::default(),
            accept_failures: AtomicU64::default(),
            listener_connections: Default::default(),
            listener_connections_total: Default::default(),
            refused_by_code: Box::new([const { AtomicU64::new(0) }; 256]),
            disconnects: Default::default(),
            tls_handshakes_full: AtomicU64::default(),
            tls_handshakes_resumed: AtomicU64::default(),
            tls_failures: Default::default(),
            tls_handshake_seconds: AtomicHistogram::latency(),
            tls_certificate_expiry: AtomicI64::default(),
            publish_to_write_seconds: AtomicHistogram::latency(),
            fsync_seconds: AtomicHistogram::latency(),
            group_commit_writes: AtomicHistogram::counts(),
            dropped: Default::default(),
            bad_packets: Default::default(),
        }
    }
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

    /// A CONNECT refused with CONNACK `code`.
    pub fn refused(&self, code: u8) {
        add(&self.refused_by_code[code as usize], 1);
    }

    /// The refusals so far, by reason code, for the codes seen.
    pub fn refused_counts(&self) -> Vec<(u8, u64)> {
        (0..=255u8)
            .map(|c| (c, self.refused_by_code[c as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn disconnected(&self, why: Ended) {
        add(&self.disconnects[why as usize], 1);
    }

    pub fn disconnect_count(&self, why: Ended) -> u64 {
        self.disconnects[why as usize].load(Ordering::Relaxed)
    }

    pub fn tls_failed(&self, why: TlsFailure) {
        add(&self.tls_failures[why as usize], 1);
    }

    /// TLS handshakes failed, for any reason (`--tls-listen`).
    pub fn tls_failures_total(&self) -> u64 {
        self.tls_failures
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn tls_failure_count(&self, why: TlsFailure) -> u64 {
        self.tls_failures[why as usize].load(Ordering::Relaxed)
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_code_and_in_total() {
        let m = Metrics::default();
        m.refused(0x87);
        m.refused(0x87);
        m.refused(0x86);
        assert_eq!(m.refused_counts(), vec![(0x86, 1), (0x87, 2)]);
        assert_eq!(m.refused_counts().iter().map(|(_, n)| n).sum::<u64>(), 3);
    }
}
