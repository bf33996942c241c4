//! The last minutes of the node's rates, for the status page's
//! sparklines: a sample of a few counters every [`EVERY`], the newest
//! [`KEPT`] kept (a bounded ring; the oldest is dropped).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;

pub const EVERY: Duration = Duration::from_secs(5);
/// Ten minutes of samples.
pub const KEPT: usize = 120;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken: rates divide by the real gap, so a late tick
    /// (a busy runtime) does not read as a spike.
    pub at: std::time::Instant,
    pub clients: u64,
    pub received: u64,
    pub sent: u64,
}

#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

/// Per-second rates between consecutive samples, and the clients
/// connected at each.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Series {
    pub clients: Vec<f64>,
    pub received_per_sec: Vec<f64>,
    pub sent_per_sec: Vec<f64>,
}

impl History {
    pub fn record(&self, s: Sample) {
        let mut samples = self.samples.lock();
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(s);
    }

    pub fn series(&self) -> Series {
        let samples = self.samples.lock();
        let rate = |f: fn(&Sample) -> u64| -> Vec<f64> {
            samples
                .iter()
                .zip(samples.iter().skip(1))
                .map(|(a, b)| {
                    let secs = b.at.saturating_duration_since(a.at).as_secs_f64();
                    let n = f(b).saturating_sub(f(a)) as f64;
                    if secs > 0.0 {
                        n / secs
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        Series {
            clients: samples.iter().map(|s| s.clients as f64).collect(),
            received_per_sec: rate(|s| s.received),
            sent_per_sec: rate(|s| s.sent),
        }
    }
}

fn sample(broker: &Broker) -> Sample {
    let m = &broker.metrics;
    Sample {
        at: std::time::Instant::now(),
        clients: m.clients_connected.load(Ordering::Relaxed),
        received: m.messages_received.load(Ordering::Relaxed),
        sent: m.messages_sent.load(Ordering::Relaxed),
    }
}

/// Samples until `stop`.
pub async fn run(history: Arc<History>, broker: Arc<Broker>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => history.record(sample(&broker)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_between_samples_and_a_bounded_ring() {
        let h = History::default();
        let t0 = std::time::Instant::now();
        for i in 0..(KEPT as u64 + 10) {
            h.record(Sample {
                at: t0 + EVERY * i as u32,
                clients: i,
                received: i * 50,
                sent: i * 100,
            });
        }
        let s = h.series();
        assert_eq!(s.clients.len(), KEPT);
        assert_eq!(s.clients[0], 10.0, "the oldest were dropped");
        assert_eq!(s.received_per_sec.len(), KEPT - 1);
        assert!(s.received_per_sec.iter().all(|r| *r == 10.0));
        assert!(s.sent_per_sec.iter().all(|r| *r == 20.0));
    }
}
