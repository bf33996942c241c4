//! Per-tenant limits and the counters that enforce them.
//!
//! [`Limits`] is what the tenants file says (`tenant/file.rs`), every key
//! optional, a tenant's own keys falling back to `[defaults.limits]`.
//! [`Usage`] is one tenant's live count on this node: connections and
//! subscriptions as atomics reserved with compare-and-swap, rates as GCRA
//! cells ([`Rate`], a token bucket in one atomic), so limits hold exactly
//! under concurrency without a lock and one tenant at its limit touches
//! no other tenant's state. `connection/connect.rs` asks at CONNECT, `connection/inbound.rs` on
//! PUBLISH and SUBSCRIBE; each refusal is counted by kind. The limits on
//! what the state holds (retained messages and bytes, persistent
//! sessions, queued bytes) are copied into [`Usage::state_limits`], where
//! `state/retained.rs`, `state/mod.rs` and `session/mod.rs` enforce them as they change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::codec::Protocol;
use crate::metrics::DropReason;

/// A tenant's limits; `None` means unlimited (or: the broker's own
/// limit).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Connections at once on this node.
    pub max_connections: Option<u64>,
    /// New connections per second (bursts up to one second's worth).
    pub max_connect_rate: Option<u32>,
    /// PUBLISH packets per second from all the tenant's clients.
    pub max_messages_in_per_second: Option<u32>,
    /// PUBLISH payload bytes per second from all the tenant's clients.
    pub max_bytes_in_per_second: Option<u64>,
    /// PUBLISH packets per second from any one connection.
    pub max_messages_per_connection_per_second: Option<u32>,
    /// Subscriptions held by the tenant's sessions.
    pub max_subscriptions: Option<u64>,
    /// Highest QoS a client may publish or be granted.
    pub max_qos: Option<u8>,
    /// Largest packet a client may send (and is told in CONNACK).
    pub max_packet_size: Option<u32>,
    /// MQTT versions the tenant's clients may speak: "3.1", "3.1.1", "5".
    pub protocol_versions: Option<Vec<String>>,
    /// Retained messages the tenant keeps.
    pub max_retained_messages: Option<u64>,
    /// Bytes (topic, payload and properties) of those retained messages.
    pub max_retained_bytes: Option<u64>,
    /// Sessions with a Session Expiry Interval (3.1.1: clean session 0).
    pub max_persistent_sessions: Option<u64>,
    /// Bytes of messages waiting in the queues of the tenant's sessions.
    pub max_queued_bytes: Option<u64>,
}

impl Limits {
    /// Refuses values that cannot be meant: a sentence naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.max_qos.is_some_and(|q| q > 2) {
            return Err("max_qos must be 0, 1 or 2".into());
        }
        for (key, zero) in [
            ("max_connect_rate", self.max_connect_rate == Some(0)),
            (
                "max_messages_in_per_second",
                self.max_messages_in_per_second == Some(0),
            ),
            (
                "max_bytes_in_per_second",
                self.max_bytes_in_per_second == Some(0),
            ),
            (
                "max_messages_per_connection_per_second",
                self.max_messages_per_connection_per_second == Some(0),
            ),
        ] {
            if zero {
                return Err(format!(
                    "{key} = 0 would refuse everything; leave the key out for no limit"
                ));
            }
        }
        if self.max_packet_size.is_some_and(|m| m < 64) {
            return Err("max_packet_size must be at least 64 bytes".into());
        }
        if let Some(v) = &self.protocol_versions {
            if let Some(bad) = v
                .iter()
                .find(|v| !matches!(v.as_str(), "3.1" | "3.1.1" | "5"))
            {
                return Err(format!(
                    "protocol_versions: {bad:?} is not one of \"3.1\", \"3.1.1\", \"5\""
                ));
            }
            if v.is_empty() {
                return Err("protocol_versions is empty: no client could connect".into());
            }
        }
        Ok(())
    }

    /// These limits, with each key not set taken from `defaults`.
    pub fn or(self, defaults: &Limits) -> Limits {
        let d = defaults.clone();
        Limits {
            max_connections: self.max_connections.or(d.max_connections),
            max_connect_rate: self.max_connect_rate.or(d.max_connect_rate),
            max_messages_in_per_second: self
                .max_messages_in_per_second
                .or(d.max_messages_in_per_second),
            max_bytes_in_per_second: self.max_bytes_in_per_second.or(d.max_bytes_in_per_second),
            max_messages_per_connection_per_second: self
                .max_messages_per_connection_per_second
                .or(d.max_messages_per_connection_per_second),
            max_subscriptions: self.max_subscriptions.or(d.max_subscriptions),
            max_qos: self.max_qos.or(d.max_qos),
            max_packet_size: self.max_packet_size.or(d.max_packet_size),
            protocol_versions: self.protocol_versions.or(d.protocol_versions),
            max_retained_messages: self.max_retained_messages.or(d.max_retained_messages),
            max_retained_bytes: self.max_retained_bytes.or(d.max_retained_bytes),
            max_persistent_sessions: self.max_persistent_sessions.or(d.max_persistent_sessions),
            max_queued_bytes: self.max_queued_bytes.or(d.max_queued_bytes),
        }
    }

    /// Whether a client speaking `p` may connect.
    pub fn allows_protocol(&self, p: Protocol) -> bool {
        let name = p.name();
        self.protocol_versions
            .as_ref()
            .is_none_or(|v| v.iter().any(|x| x == name))
    }
}

/// Nanoseconds since the first call: the clock rates run on.
fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A rate limit as a GCRA cell: the "theoretical arrival time" of the
/// next unit in one atomic. Equivalent to a token bucket holding one
/// second's worth, refilled continuously; exact under concurrency.
#[derive(Debug, Default)]
pub struct Rate {
    tat: AtomicU64,
}

/// The burst a rate allows: one second's worth.
const BURST: Duration = Duration::from_secs(1);

impl Rate {
    /// Takes `n` units at `per_second`; on refusal, how long until they
    /// would fit. A request larger than the whole burst fits only into a
    /// full bucket (and then empties it), so it is slowed, never refused
    /// forever.
    pub fn take(&self, n: u64, per_second: u64) -> Result<(), Duration> {
        self.take_at(n, per_second, now_ns(), false)
    }

    /// Takes `n` units even past the burst (a debt later takes pay off):
    /// for what cannot be refused, only slowed. `Err` says how long until
    /// the debt is paid down to the burst.
    pub fn force(&self, n: u64, per_second: u64) -> Result<(), Duration> {
        self.take_at(n, per_second, now_ns(), true)
    }

    fn take_at(&self, n: u64, per_second: u64, now: u64, force: bool) -> Result<(), Duration> {
        let interval = 1_000_000_000 / per_second.max(1);
        let burst = BURST.as_nanos() as u64;
        let cost = n.saturating_mul(interval).min(burst);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let base = tat.max(now);
            let next = base.saturating_add(cost);
            let ahead = next - now;
            if ahead > burst && !force {
                return Err(Duration::from_nanos(ahead - burst));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if ahead > burst => return Err(Duration::from_nanos(ahead - burst)),
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Reserves one of at most `max` (unlimited when `None`); false when full.
pub fn reserve(count: &AtomicU64, max: Option<u64>) -> bool {
    reserve_n(count, 1, max)
}

/// Reserves `n` of at most `max` in one step; false (and nothing taken)
/// when they do not all fit.
pub fn reserve_n(count: &AtomicU64, n: u64, max: Option<u64>) -> bool {
    match max {
        None => {
            count.fetch_add(n, Ordering::AcqRel);
            true
        }
        Some(max) => count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c.saturating_add(n) <= max).then_some(c + n)
            })
            .is_ok(),
    }
}

/// Gives back `n` reserved with [`reserve`].
pub fn release(count: &AtomicU64, n: u64) {
    let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        Some(c.saturating_sub(n))
    });
}

/// Why a tenant's request was refused: the `kind` label of
/// `porchlight_tenant_quota_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Connections,
    ConnectRate,
    MessagesIn,
    BytesIn,
    ConnectionMessages,
    Subscriptions,
    Qos,
    PacketSize,
    Protocol,
    RetainedMessages,
    RetainedBytes,
    PersistentSessions,
    QueuedBytes,
}

impl QuotaKind {
    pub const ALL: [QuotaKind; 13] = [
        QuotaKind::Connections,
        QuotaKind::ConnectRate,
        QuotaKind::MessagesIn,
        QuotaKind::BytesIn,
        QuotaKind::ConnectionMessages,
        QuotaKind::Subscriptions,
        QuotaKind::Qos,
        QuotaKind::PacketSize,
        QuotaKind::Protocol,
        QuotaKind::RetainedMessages,
        QuotaKind::RetainedBytes,
        QuotaKind::PersistentSessions,
        QuotaKind::QueuedBytes,
    ];

    pub fn label(self) -> &'static str {
        match self {
            QuotaKind::Connections => "connections",
            QuotaKind::ConnectRate => "connect_rate",
            QuotaKind::MessagesIn => "messages_in",
            QuotaKind::BytesIn => "bytes_in",
            QuotaKind::ConnectionMessages => "connection_messages",
            QuotaKind::Subscriptions => "subscriptions",
            QuotaKind::Qos => "qos",
            QuotaKind::PacketSize => "packet_size",
            QuotaKind::Protocol => "protocol",
            QuotaKind::RetainedMessages => "retained_messages",
            QuotaKind::RetainedBytes => "retained_bytes",
            QuotaKind::PersistentSessions => "persistent_sessions",
            QuotaKind::QueuedBytes => "queued_bytes",
        }
    }
}

/// One tenant's live usage on this node, and its per-tenant metrics.
#[derive(Debug, Default)]
pub struct Usage {
    pub connections: AtomicU64,
    pub subscriptions: AtomicU64,
    pub connect_rate: Rate,
    pub messages_in_rate: Rate,
    pub bytes_in_rate: Rate,
    /// Connected clients and connections taken, by listener
    /// (`metrics::LISTENERS`).
    pub listener_connections: [AtomicU64; 4],
    pub listener_connections_total: [AtomicU64; 4],
    /// PUBLISH packets received into the tenant, and their payload bytes,
    /// by QoS.
    pub messages_in: [AtomicU64; 3],
    pub bytes_in: [AtomicU64; 3],
    /// PUBLISH packets sent to the tenant's connections, and their
    /// payload bytes, by QoS.
    pub messages_out: [AtomicU64; 3],
    pub bytes_out: [AtomicU64; 3],
    /// Sessions in the node's state, and those of them that are durable.
    pub sessions: AtomicU64,
    pub persistent_sessions: AtomicU64,
    /// Changed only under the tenant's retained-store lock
    /// (`state/retained.rs`), so the limits on them are exact.
    pub retained_messages: AtomicU64,
    pub retained_bytes: AtomicU64,
    /// Bytes waiting in the tenant's session queues (`session/mod.rs`).
    pub queued_bytes: AtomicU64,
    /// The limits enforced inside the state (retained store, sessions,
    /// queues), where no connection's `Authz` is at hand: set from the
    /// directory at start and after each reload (`Tenants::apply`).
    /// `u64::MAX` is no limit.
    pub state_limits: StateLimits,
    rejections: [AtomicU64; QuotaKind::ALL.len()],
    drops: [AtomicU64; DropReason::ALL.len()],
}

/// See [`Usage::state_limits`].
#[derive(Debug)]
pub struct StateLimits {
    pub retained_messages: AtomicU64,
    pub retained_bytes: AtomicU64,
    pub persistent_sessions: AtomicU64,
    pub queued_bytes: AtomicU64,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            retained_messages: AtomicU64::new(u64::MAX),
            retained_bytes: AtomicU64::new(u64::MAX),
            persistent_sessions: AtomicU64::new(u64::MAX),
            queued_bytes: AtomicU64::new(u64::MAX),
        }
    }
}

impl StateLimits {
    pub fn set(&self, l: &Limits) {
        let none = u64::MAX;
        for (cell, v) in [
            (&self.retained_messages, l.max_retained_messages),
            (&self.retained_bytes, l.max_retained_bytes),
            (&self.persistent_sessions, l.max_persistent_sessions),
            (&self.queued_bytes, l.max_queued_bytes),
        ] {
            cell.store(v.unwrap_or(none), Ordering::Relaxed);
        }
    }

    /// A limit as `reserve` takes it.
    pub fn get(cell: &AtomicU64) -> Option<u64> {
        Some(cell.load(Ordering::Relaxed)).filter(|v| *v != u64::MAX)
    }
}

/// The sum of a by-QoS (or by-listener) family.
pub fn total(cells: &[AtomicU64]) -> u64 {
    cells.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

impl Usage {
    /// A PUBLISH of `bytes` of payload received at `qos`.
    pub fn received(&self, qos: usize, bytes: u64) {
        self.messages_in[qos].fetch_add(1, Ordering::Relaxed);
        self.bytes_in[qos].fetch_add(bytes, Ordering::Relaxed);
    }

    /// PUBLISH packets sent, and their payload bytes, by QoS.
    pub fn sent(&self, by_qos: &[(u64, u64); 3]) {
        for (qos, (n, bytes)) in by_qos.iter().enumerate() {
            if *n > 0 {
                self.messages_out[qos].fetch_add(*n, Ordering::Relaxed);
                self.bytes_out[qos].fetch_add(*bytes, Ordering::Relaxed);
            }
        }
    }

    /// Every count, as (Prometheus series after `porchlight_tenant_`,
    /// `$SYS/broker/` path, value): one list for both exports.
    pub fn counts(&self) -> [(&'static str, &'static str, u64); 13] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("connections", "clients/connected", g(&self.connections)),
            // Clients with a session here, connected or not (as the
            // node-wide `clients/total` and Mosquitto's).
            ("clients_total", "clients/total", g(&self.sessions)),
            (
                "connections_total",
                "connections/total",
                total(&self.listener_connections_total),
            ),
            (
                "messages_received_total",
                "messages/received",
                total(&self.messages_in),
            ),
            (
                "bytes_received_total",
                "bytes/received",
                total(&self.bytes_in),
            ),
            (
                "messages_sent_total",
                "messages/sent",
                total(&self.messages_out),
            ),
            ("bytes_sent_total", "bytes/sent", total(&self.bytes_out)),
            (
                "subscriptions",
                "subscriptions/count",
                g(&self.subscriptions),
            ),
            ("sessions", "sessions/count", g(&self.sessions)),
            (
                "persistent_sessions",
                "sessions/persistent",
                g(&self.persistent_sessions),
            ),
            (
                "retained_messages",
                "retained/count",
                g(&self.retained_messages),
            ),
            ("retained_bytes", "retained/bytes", g(&self.retained_bytes)),
            ("queued_bytes", "queued/bytes", g(&self.queued_bytes)),
        ]
    }

    /// Counts a message dropped for one of the tenant's sessions (beside
    /// the node-wide `porchlight_messages_dropped_total`).
    pub fn dropped(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    pub fn reject(&self, kind: QuotaKind) {
        self.rejections[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejections(&self, kind: QuotaKind) -> u64 {
        self.rejections[kind as usize].load(Ordering::Relaxed)
    }
}

/// One connection's place in its tenant's `max_connections`, given back
/// when the connection ends (dropped with it).
#[derive(Debug)]
pub struct Seat {
    pub usage: std::sync::Arc<Usage>,
    /// The listener it came in on (an index of `metrics::LISTENERS`).
    listener: usize,
}

impl Seat {
    /// A seat, or `None` (counted) when the tenant is at its limit.
    pub fn take(usage: std::sync::Arc<Usage>, max: Option<u64>, listener: usize) -> Option<Seat> {
        if !reserve(&usage.connections, max) {
            usage.reject(QuotaKind::Connections);
            return None;
        }
        usage.listener_connections[listener].fetch_add(1, Ordering::Relaxed);
        usage.listener_connections_total[listener].fetch_add(1, Ordering::Relaxed);
        Some(Seat { usage, listener })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        release(&self.usage.connections, 1);
        release(&self.usage.listener_connections[self.listener], 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_allows_one_second_of_burst_then_paces() {
        let r = Rate::default();
        let t0 = 10_000_000_000;
        for i in 0..10 {
            assert!(r.take_at(1, 10, t0, false).is_ok(), "burst item {i}");
        }
        let wait = r.take_at(1, 10, t0, false).expect_err("the burst is spent");
        assert_eq!(wait, Duration::from_millis(100));
        // 100 ms later exactly one more fits.
        assert!(r.take_at(1, 10, t0 + 100_000_000, false).is_ok());
        assert!(r.take_at(1, 10, t0 + 100_000_000, false).is_err());
        // A request bigger than the burst waits for a full bucket.
        let big = Rate::default();
        assert!(big.take_at(1_000, 10, t0, false).is_ok());
        assert!(big.take_at(1, 10, t0, false).is_err());
        // Forced takes go into debt: each one waits longer.
        let debt = Rate::default();
        for _ in 0..10 {
            assert!(debt.take_at(1, 10, t0, true).is_ok());
        }
        assert_eq!(
            debt.take_at(1, 10, t0, true),
            Err(Duration::from_millis(100))
        );
        assert_eq!(
            debt.take_at(1, 10, t0, true),
            Err(Duration::from_millis(200))
        );
        // 300 ms later the debt is paid down to a full burst: one fits.
        assert!(debt.take_at(1, 10, t0 + 300_000_000, false).is_ok());
        assert!(debt.take_at(1, 10, t0 + 300_000_000, false).is_err());
    }

    #[test]
    fn a_rate_is_exact_under_concurrency() {
        let r = std::sync::Arc::new(Rate::default());
        let t0 = 10_000_000_000;
        let ok = std::sync::Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (r, ok) = (r.clone(), ok.clone());
                s.spawn(move || {
                    for _ in 0..1_000 {
                        if r.take_at(1, 500, t0, false).is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::Relaxed), 500);
    }

    #[test]
    fn reserve_never_passes_the_maximum() {
        let c = std::sync::Arc::new(AtomicU64::new(0));
        let ok = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if reserve(&c, Some(50)) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::Relaxed), 50);
        release(&c, 60);
        assert_eq!(c.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn protocol_versions_are_checked() {
        let l = Limits {
            protocol_versions: Some(vec!["5".into()]),
            ..Limits::default()
        };
        assert!(l.allows_protocol(Protocol::V5));
        assert!(!l.allows_protocol(Protocol::V311));
        assert!(Limits::default().allows_protocol(Protocol::V31));
    }
}
