use super::*;
use crate::journal::*;

const T: Table = Table::broker(1);
const U: Table = Table::broker(2);

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).expect("open")
}

#[tokio::test]
async fn batches_span_tables_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        let mut b = Batch::default();
        b.put(T, &[0, 1], b"a");
        b.put(T, &[0, 2], b"b");
        b.put(U, &[0, 1], b"other table");
        let ticket = s.write(b).expect("write");
        s.durable(ticket).await.expect("durable");
        let mut b = Batch::default();
        b.delete(T, &[0, 1]);
        s.durable(s.write(b).expect("write"))
            .await
            .expect("durable");
    }
    let s = open(dir.path());
    let t: Vec<_> = s.scan(T).map(|r| r.expect("read")).collect();
    assert_eq!(t, vec![(vec![0, 2], b"b".to_vec())]);
    assert_eq!(s.keys_with_prefix(U, &[0]).expect("keys"), vec![vec![0, 1]]);
}

/// A batch of `n` puts to T (keys 0..n) and a delete of U's key [9].
fn big_batch(n: u32) -> Batch {
    let mut b = Batch::default();
    for i in 0..n {
        b.put(T, &i.to_be_bytes(), &i.to_le_bytes());
    }
    b.delete(U, &[9]);
    b
}

fn count(s: &Store, table: Table) -> usize {
    s.scan(table).count()
}

#[test]
fn atomic_batches_of_any_size_apply_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for n in [1, APPLY_BATCH_MAX as u32, 5_000] {
        let mut b = Batch::default();
        b.put(U, &[9], b"to be deleted");
        s.write_atomic(b).expect("put");
        s.write_atomic(big_batch(n)).expect("write");
        assert_eq!(count(&s, T), n as usize);
        assert_eq!(count(&s, U), 0);
        assert!(s.meta.get(JOURNAL_KEY).expect("meta").is_none());
    }
}

#[test]
fn a_large_batch_a_crash_interrupted_is_applied_whole_at_open() {
    // The journal record and a prefix of the operations reached the
    // disk, as after a crash in the middle of `write_atomic`.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        let mut b = Batch::default();
        b.put(U, &[9], b"to be deleted");
        s.write_atomic(b).expect("put");
        let ops = big_batch(10_000).ops;
        write_journal(&s.meta, &encode_journal(&ops)).expect("journal");
        assert!(
            s.meta.scan_prefix(JOURNAL_CHUNK_PREFIX).count() > 1,
            "a large journal is in chunks"
        );
        apply_ops(&s.data, ops.into_iter().take(1_000).collect()).expect("prefix");
        s.close().expect("close");
    }
    let s = open(dir.path());
    assert_eq!(count(&s, T), 10_000, "the rest applied");
    assert_eq!(count(&s, U), 0, "the delete too");
    assert!(s.meta.get(JOURNAL_KEY).expect("meta").is_none());
    assert_eq!(s.meta.scan_prefix(JOURNAL_CHUNK_PREFIX).count(), 0);
    drop(s);
    // A damaged journal, or one with a chunk missing, is refused,
    // naming the directory, not skipped.
    for (chunks, chunk) in [(1u32, Some(&[JOURNAL_V1, 0, 0][..])), (2, None)] {
        {
            let s = open(dir.path());
            if let Some(c) = chunk {
                s.meta.insert(chunk_key(0), c).expect("chunk");
            }
            s.meta
                .insert(JOURNAL_KEY, &chunks.to_be_bytes())
                .expect("journal");
            s.close().expect("close");
        }
        let err = Store::open(dir.path(), StoreOptions::default()).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("journal") && text.contains(&dir.path().display().to_string()),
            "{text}"
        );
        // Removed by hand, the store opens again.
        let db = sled::open(dir.path()).expect("sled");
        clear_journal(&db.open_tree(META_TREE).expect("meta")).expect("clear");
        db.flush().expect("flush");
    }
    assert_eq!(count(&open(dir.path()), T), 10_000);
}

#[tokio::test]
async fn a_large_values_blob_file_is_synced_before_its_write_is_durable() {
    // sled keeps such values in files its flush does not fsync
    // (`blobs.rs`).
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let mut b = Batch::default();
    b.put(T, b"small", &[1; 100]);
    s.durable(s.write(b).expect("write"))
        .await
        .expect("durable");
    assert!(
        s.blobs.synced.lock().is_empty(),
        "no blob for a small value"
    );
    let mut b = Batch::default();
    b.put(T, b"large", &vec![7; 1 << 20]);
    s.durable(s.write(b).expect("write"))
        .await
        .expect("durable");
    let blob_files = std::fs::read_dir(dir.path().join("blobs"))
        .expect("blobs")
        .count();
    assert!(blob_files >= 1, "sled made a blob of a 1 MiB value");
    assert_eq!(s.blobs.synced.lock().len(), blob_files, "each one synced");
}

#[test]
fn a_journal_left_by_a_failed_apply_is_removed_before_the_next_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    write_journal(&s.meta, &encode_journal(&big_batch(10).ops)).expect("journal");
    s.journal_left.store(true, Ordering::Relaxed);
    s.write_atomic(big_batch(1)).expect("write");
    assert!(s.meta.get(JOURNAL_KEY).expect("meta").is_none());
    assert_eq!(s.meta.scan_prefix(JOURNAL_CHUNK_PREFIX).count(), 0);
}

#[test]
fn incompatible_and_corrupt_directories_are_refused_not_wiped() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        let meta = s.db.open_tree(META_TREE).expect("meta");
        meta.insert(FORMAT_KEY, &99u32.to_be_bytes())
            .expect("insert");
        s.db.flush().expect("flush");
    }
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(StorageError::Incompatible {
            found: 99, path, ..
        }) => assert_eq!(path, dir.path()),
        other => panic!("{other:?}"),
    }
    // Garbage where sled's files are: refused with the path in the message.
    let bad = tempfile::tempdir().expect("tempdir");
    std::fs::write(bad.path().join("conf"), b"not a sled config").expect("write");
    std::fs::write(bad.path().join("db"), vec![0xA5u8; 4096]).expect("write");
    let err = Store::open(bad.path(), StoreOptions::default()).expect_err("refused");
    assert!(
        err.to_string().contains(&bad.path().display().to_string()),
        "{err}"
    );
    assert!(bad.path().join("db").exists(), "nothing wiped");
}

#[test]
fn a_held_lock_is_waited_for_then_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path());
    // Released while the second open is waiting: the open succeeds.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        first.close().expect("close");
        drop(first);
    });
    let second = Store::open(dir.path(), StoreOptions::default()).expect("open after release");
    release.join().expect("join");
    // Never released: reported as in use, naming the directory.
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(e @ StorageError::Locked { .. }) => {
            assert!(
                e.to_string().contains(&dir.path().display().to_string()),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    drop(second);
}

#[tokio::test]
async fn damage_to_an_initialised_store_is_refused_not_reinitialised() {
    // A damaged sled configuration file.
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()));
    let conf = dir.path().join("conf");
    let mut bytes = std::fs::read(&conf).expect("conf");
    bytes[0] ^= 0xFF;
    std::fs::write(&conf, &bytes).expect("write");
    let err = Store::open(dir.path(), StoreOptions::default()).expect_err("refused");
    assert!(err.to_string().contains("checksum"), "{err}");

    // A destroyed log: sled would come back empty; the marker says it
    // held a store, so it is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        let mut b = Batch::default();
        b.put(T, b"k", b"v");
        s.durable(s.write(b).expect("write"))
            .await
            .expect("durable");
    }
    let db = dir.path().join("db");
    let len = std::fs::metadata(&db).expect("db").len() as usize;
    std::fs::write(&db, vec![0u8; len]).expect("zero it");
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(StorageError::Corrupt { .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn limits_and_faults_refuse_writes_but_allow_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        max_disk_bytes: Some(1),
        ..StoreOptions::default()
    };
    let s = Store::open(dir.path(), opts).expect("open");
    s.refresh_disk_used();
    let mut b = Batch::default();
    b.put(T, b"k", b"v");
    assert!(matches!(s.write(b), Err(StorageError::Full { .. })));
    assert_eq!(s.health(), Health::Full);
    let mut b = Batch::default();
    b.delete(T, b"k");
    assert!(s.write(b).is_ok(), "deletes free space, so they pass");

    let s2 = open(tempfile::tempdir().expect("tempdir").path());
    s2.set_fail_writes(true);
    let mut b = Batch::default();
    b.put(T, b"k", b"v");
    assert!(matches!(s2.write(b), Err(StorageError::Write { .. })));
    assert_eq!(s2.health(), Health::Failed);
    assert_eq!(s.refused_writes(), 1, "the full store's put");
    assert_eq!(s2.refused_writes(), 1, "the injected fault");
    s2.set_fail_writes(false);
    assert_eq!(s2.health(), Health::Ok);
}

#[tokio::test]
async fn a_lone_write_does_not_wait_out_the_group_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(
        dir.path(),
        StoreOptions {
            group_window: Duration::from_secs(4),
            ..StoreOptions::default()
        },
    )
    .expect("open");
    let mut b = Batch::default();
    b.put(T, b"k", b"v");
    let t = s.write(b).expect("write");
    // Nothing else is written: the window ends after an eighth of it
    // (0.5 s) of quiet, not after 4 s.
    tokio::time::timeout(Duration::from_secs(2), s.durable(t))
        .await
        .expect("durable well before the window's end")
        .expect("durable");
}

#[tokio::test]
async fn group_commit_coalesces_concurrent_waiters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Arc::new(open(dir.path()));
    let mut waits = Vec::new();
    for i in 0..100u32 {
        let mut b = Batch::default();
        b.put(T, &i.to_be_bytes(), b"v");
        let t = s.write(b).expect("write");
        let s = s.clone();
        waits.push(tokio::spawn(async move { s.durable(t).await }));
    }
    let observed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = observed.clone();
    s.on_flush(move |f| seen.lock().expect("lock").push(f));
    for w in waits {
        w.await.expect("join").expect("durable");
    }
    assert!(
        s.fsync_count() < 100,
        "{} fsyncs for 100 writes",
        s.fsync_count()
    );
    // The observers were told of the fsyncs after they joined: each
    // covered at least one write, none more than were made.
    let observed = observed.lock().expect("lock");
    let writes: u64 = observed.iter().map(|f| f.writes).sum();
    assert!(observed.iter().all(|f| f.writes >= 1), "{observed:?}");
    assert!(writes <= 100, "{observed:?}");
}

/// Issue 17: the broker's deferred records and, later, a Raft log store
/// both write just before the fsync; one hook slot replaced the first
/// user silently. Every participant runs, and a failure of one fails
/// the flush (its waiters are told) while the others still run.
#[tokio::test]
async fn every_pre_flush_participant_runs_and_one_failure_fails_the_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Arc::new(open(dir.path()));
    let runs: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::default()).collect();
    let fail = Arc::new(AtomicBool::new(false));
    for (i, n) in runs.iter().enumerate() {
        let (n, fail) = (n.clone(), fail.clone());
        s.add_pre_flush(move || {
            n.fetch_add(1, Ordering::Relaxed);
            if i == 0 && fail.load(Ordering::Relaxed) {
                return Err("participant 0 refused".into());
            }
            Ok(())
        });
    }
    let write = |k: &[u8]| {
        let mut b = Batch::default();
        b.put(T, k, b"v");
        s.write(b).expect("write")
    };
    s.durable(write(b"a")).await.expect("durable");
    let counts = |runs: &[Arc<AtomicU64>]| -> Vec<u64> {
        runs.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    };
    assert!(counts(&runs).iter().all(|&n| n >= 1), "{:?}", counts(&runs));
    fail.store(true, Ordering::Relaxed);
    let before = counts(&runs);
    let failed = tokio::time::timeout(Duration::from_secs(5), s.durable(write(b"b")))
        .await
        .expect("answered");
    assert!(failed.is_err(), "a refused participant fails the flush");
    let after = counts(&runs);
    assert!(after[1] > before[1], "the other participant still ran");
    // Healed: the flush is retried, and a later write is durable.
    fail.store(false, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.durable(write(b"c")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never durable again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Captures the log lines written while `f` runs on this thread.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || out.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().expect("lock").clone();
    String::from_utf8(bytes).expect("utf-8")
}

/// Issue 18: a full disk under load is one warning and a count, not a
/// warning per refused write; the recovery is one line too.
#[test]
fn refusals_are_logged_once_per_change_of_state_and_all_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let log = logged(|| {
        s.set_fail_writes(true);
        for _ in 0..50 {
            assert!(s.check_writable(true).is_err());
        }
        s.set_fail_writes(false);
        // A check that passes is not yet a recovery; a write made is.
        assert!(s.check_writable(true).is_ok());
        for i in 0..5u8 {
            let mut b = Batch::default();
            b.put(T, &[i], b"v");
            assert!(s.write(b).is_ok());
        }
        s.set_fail_writes(true);
        assert!(s.check_writable(true).is_err());
    });
    assert_eq!(log.matches("The store refuses writes").count(), 2, "{log}");
    assert_eq!(
        log.matches("The store accepts writes again").count(),
        1,
        "{log}"
    );
    assert_eq!(s.refused_writes(), 51);
}
