//! The process's own figures for `/metrics` (`process_*`, the names every
//! Prometheus client library uses): CPU time, resident memory, open file
//! descriptors and their limit, start time. Read from `/proc/self` at
//! each scrape; absent where there is no `/proc`.

/// What one scrape read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Process {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`): 100 on every Linux
/// build that matters.
const TICKS: f64 = 100.0;

pub fn read() -> Process {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name (which may hold spaces) in brackets.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(") "))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15; starttime 22; rss 24 (pages).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = field(14)
        .zip(field(15))
        .map(|(u, s)| (u + s) as f64 / TICKS);
    let resident_bytes = field(24).map(|pages| pages * 4096);
    let start_time_seconds = field(22).and_then(|ticks| {
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        Some(now - uptime + ticks as f64 / TICKS)
    });
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        });
    Process {
        cpu_seconds,
        resident_bytes,
        open_fds,
        max_fds,
        start_time_seconds,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let p = super::read();
        assert!(p.resident_bytes.is_some_and(|r| r > 1024 * 1024), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(
            p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap_or(0)),
            "{p:?}"
        );
        assert!(p.cpu_seconds.is_some(), "{p:?}");
        let start = p.start_time_seconds.expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
    }
}
