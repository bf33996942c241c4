//! Wall-clock time as the control state sees it: milliseconds since the
//! Unix epoch, carried inside commands and records (`state/`, `persist/`),
//! converted to and from the monotonic `Instant`s the node's timers use.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the Unix epoch for a monotonic instant.
pub fn unix_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
    };
    wall.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The monotonic instant for a wall-clock time (now, if it has passed).
pub fn instant_from_unix_ms(ms: u64) -> Instant {
    let now_ms = unix_ms(Instant::now());
    Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms))
}
