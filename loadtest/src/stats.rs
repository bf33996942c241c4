//! Measurements shared by every connection task: counters (atomics) and
//! latency histograms (hdrhistogram, split into shards so two worker
//! threads rarely meet on one lock). `client.rs` records into them;
//! `run.rs` samples the counters once a second into the time series and
//! merges the shards into the final [`Percentiles`] for `report.rs`. It
//! also keeps when the last PUBLISH arrived, which ends the delivery time
//! `run.rs` divides by.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::error::LoadError;

/// Latencies are recorded in microseconds, up to an hour.
const MAX_MICROS: u64 = 3_600_000_000;
const SHARDS: usize = 16;

/// Run-wide counters; each is a total since the start of the run.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections open now.
    pub connected: AtomicU64,
    /// CONNACKs with success, including reconnects.
    pub connects: AtomicU64,
    /// Connection attempts that failed (refused, timed out, rejected).
    pub connect_failures: AtomicU64,
    /// Connections the broker (or the network) closed during the run.
    pub dropped: AtomicU64,
    pub reconnects: AtomicU64,
    /// PUBLISH packets written by publishers.
    pub sent: AtomicU64,
    /// PUBACKs received by QoS 1 publishers.
    pub acked: AtomicU64,
    /// PUBLISH packets received by subscribers (duplicates included).
    pub received: AtomicU64,
    /// Publishes a rate-limited publisher could not send in time because
    /// its in-flight window was full (emqtt-bench's `pub_overrun`).
    pub overrun: AtomicU64,
    /// Subscriptions the broker refused (SUBACK failure codes).
    pub subscribe_failures: AtomicU64,
    /// PUBACKs with a failure reason (MQTT 5).
    pub publish_failures: AtomicU64,
    /// Clients subscribed and ready.
    pub ready: AtomicU64,
    /// Reconnect storm: clients through their warm-up connect.
    pub warm: AtomicU64,
    /// Counted connects over TLS, and those that resumed a session.
    pub tls_handshakes: AtomicU64,
    pub tls_resumed: AtomicU64,
    /// Counted TLS connects whose key exchange was X25519MLKEM768.
    pub tls_post_quantum: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A histogram split into shards; `record` takes the caller's shard.
#[derive(Debug)]
pub struct Shards {
    shards: Vec<Mutex<Histogram<u64>>>,
}

fn histogram() -> Result<Histogram<u64>, LoadError> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3)
        .map_err(|e| LoadError::Report(format!("histogram: {e}")))
}

impl Shards {
    pub fn new() -> Result<Shards, LoadError> {
        let mut shards = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            shards.push(Mutex::new(histogram()?));
        }
        Ok(Shards { shards })
    }

    /// Records `micros` (clamped to 1 µs .. 1 h) into shard `key % SHARDS`.
    pub fn record(&self, key: usize, micros: u64) {
        self.shards[key % SHARDS]
            .lock()
            .saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Records a batch under one lock.
    pub fn record_all(&self, key: usize, micros: &[u64]) {
        let mut h = self.shards[key % SHARDS].lock();
        for &m in micros {
            h.saturating_record(m.clamp(1, MAX_MICROS));
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = self.shards[0].lock().clone();
        all.reset();
        for s in &self.shards {
            merge(&mut all, &s.lock());
        }
        all
    }
}

/// Adds `other` into `into`; both share the same bounds, so this cannot
/// overflow the range.
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) {
    if into.add(other).is_err() {
        for v in other.iter_recorded() {
            into.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

/// A latency distribution summarised, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Every measurement of a run.
#[derive(Debug)]
pub struct Stats {
    pub counters: Counters,
    /// End-to-end latency: payload timestamp to arrival.
    pub latency: Shards,
    /// TCP connect (plus TLS) to CONNACK.
    pub connect_latency: Shards,
    /// Failed connects by reason (`tcp: address not available`,
    /// `connack 5`, `timeout`, ...): rare, so one lock is enough.
    pub connect_errors: parking_lot::Mutex<std::collections::BTreeMap<String, u64>>,
    /// When the last PUBLISH arrived, in nanoseconds after `epoch` (0:
    /// none yet): the end of the delivery time, which may run past the
    /// publishing time when a broker buffers and delivers late.
    last_receipt_ns: AtomicU64,
    /// tokio's clock, like `run.rs`'s (it may be paused in tests).
    epoch: tokio::time::Instant,
}

impl Stats {
    pub fn new() -> Result<Stats, LoadError> {
        Ok(Stats {
            counters: Counters::default(),
            latency: Shards::new()?,
            connect_latency: Shards::new()?,
            connect_errors: Default::default(),
            last_receipt_ns: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        })
    }

    /// Notes that PUBLISH packets arrived just now (once per read).
    pub fn mark_receipt(&self) {
        let ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_receipt_ns.fetch_max(ns.max(1), Ordering::Relaxed);
    }

    /// When the last PUBLISH arrived, if any did.
    pub fn last_receipt(&self) -> Option<tokio::time::Instant> {
        match self.last_receipt_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch + std::time::Duration::from_nanos(ns)),
        }
    }

    /// Counts one failed connect and why.
    pub fn connect_failed(&self, reason: String) {
        Counters::inc(&self.counters.connect_failures);
        *self.connect_errors.lock().entry(reason).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_one_distribution() {
        let s = Shards::new().expect("shards");
        for i in 0..10_000u64 {
            s.record(i as usize, i + 1);
        }
        s.record_all(3, &[0, MAX_MICROS * 2]);
        let h = s.merged();
        assert_eq!(h.len(), 10_002);
        let p = Percentiles::of(&h);
        assert_eq!(p.min, 1, "0 is clamped to 1 µs");
        assert!(p.max >= MAX_MICROS && p.max <= MAX_MICROS + MAX_MICROS / 1000);
        // 3 significant figures: within 0.1 %.
        assert!((4995..=5005).contains(&p.p50), "{}", p.p50);
        assert!((9885..=9905).contains(&p.p99), "{}", p.p99);
    }

    #[test]
    fn merging_separate_histograms_equals_recording_into_one() {
        let h = || histogram().expect("histogram");
        let (mut a, mut b, mut both) = (h(), h(), h());
        for v in 1..=1000u64 {
            let h = if v % 2 == 0 { &mut a } else { &mut b };
            h.saturating_record(v * 37);
            both.saturating_record(v * 37);
        }
        merge(&mut a, &b);
        assert_eq!(Percentiles::of(&a), Percentiles::of(&both));
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeros() {
        assert_eq!(
            Percentiles::of(&histogram().expect("histogram")),
            Percentiles::default()
        );
    }
}
