//! Measures what group commit costs on this disk with sled: N writes of
//! `SIZE` bytes, then one `flush`, repeated; prints time and CPU per flush.
//! usage: cargo run --release -p porchlight-storage --example flush_cost [N]
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let dir = std::env::temp_dir().join(format!("flush-cost-{}", std::process::id()));
    let db = sled::Config::new()
        .path(&dir)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .expect("open");
    let value = vec![7u8; 150];
    let rounds = 200;
    let start = Instant::now();
    let mut flush_total = std::time::Duration::ZERO;
    let mut key = 0u64;
    for _ in 0..rounds {
        for _ in 0..n {
            key += 1;
            // As the broker writes: small atomic batches (put, and the
            // delete of an acknowledged message).
            let mut b = sled::Batch::default();
            b.insert(&key.to_be_bytes(), value.as_slice());
            if key > 1000 {
                b.remove(&(key - 1000).to_be_bytes());
            }
            db.apply_batch(b).expect("batch");
        }
        let f = Instant::now();
        db.flush().expect("flush");
        flush_total += f.elapsed();
    }
    let total = start.elapsed();
    // The same while another thread keeps writing, as connections do.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop, value) = (db.clone(), stop.clone(), value.clone());
        std::thread::spawn(move || {
            let mut k = 1u64 << 40;
            let mut count = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                db.insert(k.to_be_bytes(), value.as_slice())
                    .expect("insert");
                count += 1;
            }
            count
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = Instant::now();
    for _ in 0..50 {
        db.flush().expect("flush");
    }
    let busy = f.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().expect("writer");
    println!(
        "with a concurrent writer: {:.2} ms per flush ({} writes meanwhile)",
        busy.as_secs_f64() * 1000.0 / 50.0,
        written
    );
    println!(
        "{n} writes per flush: {:.2} ms per flush, {:.0} messages/s overall",
        flush_total.as_secs_f64() * 1000.0 / rounds as f64,
        (n * rounds) as f64 / total.as_secs_f64()
    );
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}
