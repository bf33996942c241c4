//! The load generator's payload header: which publisher stream a message
//! belongs to, its sequence number in that stream, and when it was sent.
//! Publishers in `client.rs` write it; receivers read it back for loss,
//! duplicate and order tracking (`seq.rs`) and end-to-end latency
//! (`stats.rs`). The rest of the payload, up to `--size`, is zeros.

use std::time::{SystemTime, UNIX_EPOCH};

/// Header length: stream (u32), sequence (u32), send time (u64 ns since
/// the Unix epoch), big-endian. Payloads shorter than this are raised to
/// it (16 bytes is also the Open MQTT Benchmark Suite's payload).
pub const HEADER: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub stream: u32,
    pub seq: u32,
    pub sent_ns: u64,
}

impl Header {
    /// Writes the header into the start of `buf` (at least [`HEADER`] long).
    pub fn write(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&self.stream.to_be_bytes());
        buf[4..8].copy_from_slice(&self.seq.to_be_bytes());
        buf[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a header; `None` when the payload is too short (not ours).
    pub fn read(payload: &[u8]) -> Option<Header> {
        let stream = u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
        let seq = u32::from_be_bytes(payload.get(4..8)?.try_into().ok()?);
        let sent_ns = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
        Some(Header {
            stream,
            seq,
            sent_ns,
        })
    }
}

/// Wall-clock nanoseconds since the Unix epoch: comparable between
/// processes on one machine (`pub` and `sub` run separately).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_short_payloads() {
        let h = Header {
            stream: 7,
            seq: 4_000_000_000,
            sent_ns: now_ns(),
        };
        let mut buf = vec![0u8; 32];
        h.write(&mut buf);
        assert_eq!(Header::read(&buf), Some(h));
        assert_eq!(Header::read(&buf[..15]), None);
    }
}
