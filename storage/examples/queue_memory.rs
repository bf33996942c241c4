//! What sled's memory costs per queue entry, as the broker writes them:
//! SESSIONS sessions each get one entry per message, written as one
//! `apply_batch` per message (one group commit), then flushed. Prints the
//! process's RSS per entry for a value of VALUE bytes (a whole encoded
//! delivery is ~150; a reference to a shared body ~20).
//! usage: cargo run --release -p porchlight-storage --example queue_memory [SESSIONS] [MESSAGES] [VALUE]
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (sessions, messages, value_len) = (arg(1, 5000), arg(2, 150), arg(3, 150));
    let cache_mib = arg(4, 64) as u64;
    // Entries per `apply_batch` (0: one `insert` each).
    let chunk = arg(5, sessions);
    let dir = std::env::temp_dir().join(format!("queue-memory-{}", std::process::id()));
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(cache_mib * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(Some(500))
        .open()
        .expect("open");
    let value = vec![7u8; value_len];
    let before = rss_kib();
    for m in 0..messages as u64 {
        let mut b = sled::Batch::default();
        for s in 0..sessions {
            let mut key = format!("\0\x07default\0\x0cclient-{s:05}").into_bytes();
            key.push(3);
            key.extend_from_slice(&(m + 1).to_be_bytes());
            if chunk == 0 {
                db.insert(key, value.as_slice()).expect("insert");
                continue;
            }
            b.insert(key, value.as_slice());
            if (s + 1) % chunk == 0 {
                db.apply_batch(std::mem::take(&mut b)).expect("batch");
            }
        }
        db.apply_batch(b).expect("batch");
        db.flush().expect("flush");
    }
    let entries = (sessions * messages) as u64;
    let after = rss_kib();
    println!(
        "{entries} entries of {value_len} B: RSS {} -> {} MiB, {:.0} B per entry; disk {} MiB",
        before / 1024,
        after / 1024,
        (after - before) as f64 * 1024.0 / entries as f64,
        db.size_on_disk().unwrap_or(0) >> 20
    );
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}
