//! Sequence tracking: for one receiver (a subscriber, or a shared
//! subscription group) and one publisher stream, which sequence numbers
//! arrived — counting unique messages, duplicates and out-of-order
//! arrivals in constant memory. `client.rs` feeds it from each received
//! PUBLISH; `run.rs` compares the unique counts with what publishers sent
//! to get the losses.

/// Width of the window of recent sequence numbers remembered exactly.
/// MQTT delivers one publisher's messages to one subscriber in order
/// (MQTT 4.6), so reordering beyond a window this wide does not happen.
const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Received again (or older than the window: too late to tell).
    pub duplicates: u64,
    /// Arrived after a higher sequence number of the same stream.
    pub out_of_order: u64,
    /// One past the highest sequence number seen (0: none).
    pub high: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.high += other.high;
    }

    /// Messages missing below the highest one seen: a lower bound on loss
    /// when the number sent is not known (`sub` alone).
    pub fn gaps(&self) -> u64 {
        self.high.saturating_sub(self.unique)
    }
}

/// One stream seen by one receiver.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// The lowest sequence number still inside the window.
    base: u64,
    bits: [u64; WORDS],
    counts: Counts,
}

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    New,
    Duplicate,
    OutOfOrder,
}

impl Tracker {
    pub fn record(&mut self, seq: u32) -> Arrival {
        let seq = u64::from(seq);
        if seq < self.base {
            self.counts.duplicates += 1;
            return Arrival::Duplicate;
        }
        if seq >= self.base + WINDOW {
            self.slide_to(seq + 1 - WINDOW);
        }
        let (word, bit) = (((seq % WINDOW) / 64) as usize, seq % 64);
        if self.bits[word] & (1 << bit) != 0 {
            self.counts.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.bits[word] |= 1 << bit;
        self.counts.unique += 1;
        if seq + 1 < self.counts.high {
            self.counts.out_of_order += 1;
            return Arrival::OutOfOrder;
        }
        self.counts.high = seq + 1;
        Arrival::New
    }

    /// Moves the window's bottom up to `base`, forgetting what falls out.
    fn slide_to(&mut self, base: u64) {
        if base - self.base >= WINDOW {
            self.bits = [0; WORDS];
        } else {
            for s in self.base..base {
                let (word, bit) = (((s % WINDOW) / 64) as usize, s % 64);
                self.bits[word] &= !(1 << bit);
            }
        }
        self.base = base;
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_all_new() {
        let mut t = Tracker::default();
        for s in 0..5000 {
            assert_eq!(t.record(s), Arrival::New);
        }
        assert_eq!(
            t.counts(),
            &Counts {
                unique: 5000,
                duplicates: 0,
                out_of_order: 0,
                high: 5000
            }
        );
        assert_eq!(t.counts().gaps(), 0);
    }

    #[test]
    fn duplicates_gaps_and_reordering_are_told_apart() {
        let mut t = Tracker::default();
        for s in [0, 1, 2, 5, 6, 3, 3, 6, 9] {
            t.record(s);
        }
        let c = t.counts();
        assert_eq!(c.unique, 7, "0 1 2 3 5 6 9");
        assert_eq!(c.duplicates, 2, "the second 3 and 6");
        assert_eq!(c.out_of_order, 1, "3 after 6");
        assert_eq!(c.high, 10);
        assert_eq!(c.gaps(), 3, "4 7 8 never came");
    }

    #[test]
    fn the_window_slides_over_long_streams_and_heavy_loss() {
        let mut t = Tracker::default();
        // Every third message of 100k arrives (QoS 0 under overload).
        for s in (0..100_000).step_by(3) {
            assert_eq!(t.record(s), Arrival::New);
        }
        assert_eq!(t.counts().unique, 33_334);
        assert_eq!(t.counts().gaps(), 100_000 - 33_334);
        // A repeat inside the window is a duplicate, and so is anything
        // older than the window.
        assert_eq!(t.record(99_999), Arrival::Duplicate);
        assert_eq!(t.record(5), Arrival::Duplicate);
        // A late arrival inside the window fills a gap.
        assert_eq!(t.record(99_998), Arrival::OutOfOrder);
        // A jump further than the window clears it.
        assert_eq!(t.record(1_000_000), Arrival::New);
        assert_eq!(t.record(999_999), Arrival::OutOfOrder);
        assert_eq!(t.record(1_000_000), Arrival::Duplicate);
    }

    #[test]
    fn counts_add_up() {
        let mut a = Tracker::default();
        let mut b = Tracker::default();
        for s in 0..10 {
            a.record(s);
        }
        for s in [0, 0, 2] {
            b.record(s);
        }
        let mut sum = a.counts().clone();
        sum.add(b.counts());
        assert_eq!(sum.unique, 12);
        assert_eq!(sum.duplicates, 1);
        assert_eq!(sum.gaps(), 1);
    }
}
