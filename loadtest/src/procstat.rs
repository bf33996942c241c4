//! CPU and memory of a process from `/proc` (Linux): the broker's, when
//! `--broker-pid` names it, and the generator's own, so a reader can tell
//! whether the generator was the limit. `run.rs` samples it once a second.

use std::path::PathBuf;

/// `/proc/PID/stat` reports CPU time in USER_HZ ticks, 100 per second on
/// Linux whatever the kernel's internal tick rate.
const TICKS_PER_SECOND: f64 = 100.0;

/// One process to watch.
#[derive(Debug, Clone)]
pub struct Proc {
    dir: PathBuf,
}

/// A reading: CPU seconds used so far and resident memory now.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
}

impl Proc {
    pub fn pid(pid: u32) -> Proc {
        Proc {
            dir: PathBuf::from(format!("/proc/{pid}")),
        }
    }

    pub fn current() -> Proc {
        Proc {
            dir: PathBuf::from("/proc/self"),
        }
    }

    /// `None` when the process is gone or `/proc` is not there.
    pub fn usage(&self) -> Option<Usage> {
        let stat = std::fs::read_to_string(self.dir.join("stat")).ok()?;
        // Fields after the command name, which may contain spaces and is
        // closed by the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and
        // 13 (0-based 11, 12) after the name.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string(self.dir.join("status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Some(Usage {
            cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
            rss_kib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let before = Proc::current().usage().expect("/proc/self");
        assert!(before.rss_kib > 0);
        // Burn a little CPU, bounded.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = Proc::current().usage().expect("/proc/self");
        assert!(after.cpu_seconds >= before.cpu_seconds);
        assert!(Proc::pid(u32::MAX).usage().is_none());
    }
}
