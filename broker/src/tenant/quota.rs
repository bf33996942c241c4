//! Per-tenant limits and the counters that enforce them.
//!
//! [`Limits`] is what the tenants file says (`tenant/file.rs`), every key
//! optional, a tenant's own keys falling back to `[defaults.limits]`.
//! [`Usage`] is one tenant's live count on this node: connections and
//! subscriptions as atomics reserved with compare-and-swap, rates as GCRA
//! cells ([`Rate`], a token bucket in one atomic), so limits hold exactly
//! under concurrency without a lock and one tenant at its limit touches
//! no other tenant's state. `connect.rs` asks at CONNECT, `inbound.rs` on
//! PUBLISH and SUBSCRIBE; each refusal is counted by kind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::codec::Protocol;

/// A tenant's limits; `None` means unlimited (or: the broker's own
/// limit).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
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
        }
    }

    /// Whether a client speaking `p` may connect.
    pub fn allows_protocol(&self, p: Protocol) -> bool {
        let name = match p {
            Protocol::V31 => "3.1",
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        };
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
    match max {
        None => {
            count.fetch_add(1, Ordering::AcqRel);
            true
        }
        Some(max) => count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
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
}

impl QuotaKind {
    pub const ALL: [QuotaKind; 9] = [
        QuotaKind::Connections,
        QuotaKind::ConnectRate,
        QuotaKind::MessagesIn,
        QuotaKind::BytesIn,
        QuotaKind::ConnectionMessages,
        QuotaKind::Subscriptions,
        QuotaKind::Qos,
        QuotaKind::PacketSize,
        QuotaKind::Protocol,
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
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    rejections: [AtomicU64; QuotaKind::ALL.len()],
}

impl Usage {
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
}

impl Seat {
    /// A seat, or `None` (counted) when the tenant is at its limit.
    pub fn take(usage: std::sync::Arc<Usage>, max: Option<u64>) -> Option<Seat> {
        if !reserve(&usage.connections, max) {
            usage.reject(QuotaKind::Connections);
            return None;
        }
        usage.connections_total.fetch_add(1, Ordering::Relaxed);
        Some(Seat { usage })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        release(&self.usage.connections, 1);
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
