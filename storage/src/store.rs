//! The store: one sled database with a `meta` tree (format version) and a
//! `data` tree holding every table, each key prefixed by its table byte.
//!
//! A [`Batch`] is applied operation by operation, in order, not with
//! sled's `apply_batch`: in sled 0.34 every `apply_batch` forces its own log
//! write and `sync_file_range`, which caps the store at a few thousand
//! batches a second whatever the group commit does (decision 0004). sled
//! recovers a prefix of its log, so after a crash a batch may be partly
//! applied; callers order their operations so that every prefix is a state
//! they can read back. Keys are chosen by the caller; big-endian integers
//! keep them in order within a table.
//!
//! Writes return a [`Ticket`]; `commit.rs` says when it is on disk. A write
//! that cannot be made (disk limit, injected fault, sled error) is refused
//! with an error and leaves the store [`Health::Full`] or
//! [`Health::Failed`]; reads and deletes keep working so the broker can
//! serve everything that needs no durability.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::commit::{Committer, FsyncMode, Ticket};
use crate::error::StorageError;
use crate::journal::{apply_ops, clear_journal, encode_journal, replay_journal, write_journal};
use crate::table::Table;

/// Format of the data directory; bump when records change incompatibly.
pub const FORMAT_VERSION: u32 = 1;
const META_TREE: &str = "meta";
const DATA_TREE: &str = "data";
const FORMAT_KEY: &[u8] = b"format-version";
/// Atomic batches up to this many operations are one sled `apply_batch`;
/// larger ones go through the journal. sled 0.34 keeps far more memory
/// than the data after large `apply_batch` calls: 5,000 entries per batch
/// left about 2.4 KB of RSS per entry, 500 about 190 B
/// (`examples/queue_memory.rs`, decision 0006).
pub const APPLY_BATCH_MAX: usize = 512;

/// sled's page cache, unless configured: 16 MiB. sled sizes it by what its
/// pages take on disk; small records take several times that in memory.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub fsync: FsyncMode,
    /// The longest group commit gathers writes before one fsync; it stops
    /// sooner once no write came for an eighth of it.
    pub group_window: Duration,
    /// Refuse new writes once the database uses this many bytes on disk.
    pub max_disk_bytes: Option<u64>,
    /// sled's page cache size.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            fsync: FsyncMode::Group,
            group_window: Duration::from_millis(2),
            max_disk_bytes: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Whether the store accepts writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// At `max_disk_bytes`: deletes only.
    Full,
    /// The last write or flush failed; see the log.
    Failed,
}

/// Writes applied together, in order (not atomically: see the module
/// header). Callers order them so that any prefix a crash leaves behind
/// is a state they can read back.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    puts: usize,
}

fn prefixed(table: Table, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(table.id());
    k.extend_from_slice(key);
    k
}

impl Batch {
    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.ops.push((prefixed(table, key), Some(value.to_vec())));
        self.puts += 1;
    }

    pub fn delete(&mut self, table: Table, key: &[u8]) {
        self.ops.push((prefixed(table, key), None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    /// Format version and the journal of a large atomic batch.
    meta: sled::Tree,
    data: sled::Tree,
    /// A journal's operations failed to apply and its record may still be
    /// there: removed before the next atomic batch, so it is never
    /// replayed over what came after.
    journal_left: AtomicBool,
    /// Large values' blob files, fsynced by the committer.
    blobs: Arc<crate::blobs::Blobs>,
    commit: Committer,
    max_disk_bytes: Option<u64>,
    disk_used: Arc<AtomicU64>,
    failed: AtomicBool,
    /// Fault injection: every write fails while set (tests and drills).
    fail_writes: AtomicBool,
    /// Run by the group committer before each fsync.
    pre_flush: crate::commit::PreFlush,
    /// Deferred writers hold the read side; the committer holds the write
    /// side while the pre-flush hook takes their writes and it reads the
    /// newest ticket.
    barrier: crate::commit::Barrier,
}

impl Store {
    /// Opens (or creates) the store at `path`. Refuses a directory written
    /// by an incompatible format, or one sled finds corrupt, naming the
    /// path and the problem; never wipes anything.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StorageError> {
        let marked = check_directory(path)?;
        let db = open_sled(path, &opts)?;
        let open_err = |e: sled::Error| StorageError::Open {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        let meta = db.open_tree(META_TREE).map_err(open_err)?;
        let data = db.open_tree(DATA_TREE).map_err(open_err)?;
        match meta.get(FORMAT_KEY).map_err(open_err)? {
            Some(v) => {
                let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| StorageError::Corrupt {
                    path: path.to_owned(),
                    detail: format!("format version record has {} bytes", v.len()),
                })?;
                let found = u32::from_be_bytes(bytes);
                if found != FORMAT_VERSION {
                    return Err(StorageError::Incompatible {
                        path: path.to_owned(),
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
            }
            None if marked || !data.is_empty() => {
                // sled recovers a garbled log as empty; the marker says this
                // directory held a store, so that is corruption, not news.
                return Err(StorageError::Corrupt {
                    path: path.to_owned(),
                    detail: "the database has no format record (its log did not survive)".into(),
                });
            }
            None => {
                meta.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())
                    .map_err(open_err)?;
                db.flush().map_err(open_err)?;
                write_marker(path)?;
            }
        }
        let disk_used = Arc::new(AtomicU64::new(db.size_on_disk().unwrap_or(0)));
        let pre_flush = crate::commit::PreFlush::default();
        let barrier = crate::commit::Barrier::default();
        let blobs = Arc::new(crate::blobs::Blobs::new(path.to_owned()));
        let commit = Committer::start(
            db.clone(),
            path.to_owned(),
            opts.fsync,
            opts.group_window,
            disk_used.clone(),
            crate::commit::AroundFlush {
                pre_flush: pre_flush.clone(),
                barrier: barrier.clone(),
                blobs: blobs.clone(),
            },
        );
        replay_journal(&db, &meta, &data).map_err(|e| StorageError::Open {
            path: path.to_owned(),
            detail: format!("cannot replay the journal of an interrupted batch: {e}"),
        })?;
        Ok(Store {
            path: path.to_owned(),
            db,
            meta,
            data,
            journal_left: AtomicBool::new(false),
            blobs,
            pre_flush,
            barrier,
            commit,
            max_disk_bytes: opts.max_disk_bytes,
            disk_used,
            failed: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fsync_mode(&self) -> FsyncMode {
        self.commit.mode()
    }

    /// Applies `batch` atomically. The returned ticket is on disk once
    /// [`Store::durable`] says so.
    pub fn write(&self, batch: Batch) -> Result<Ticket, StorageError> {
        if batch.is_empty() {
            return Ok(self.commit.current());
        }
        self.check_writable(batch.puts > 0)?;
        for (key, value) in batch.ops {
            let r = match value {
                Some(v) => {
                    let len = v.len();
                    let r = self.data.insert(key, v).map(|_| ());
                    self.blobs.note(len);
                    r
                }
                None => self.data.remove(key).map(|_| ()),
            };
            r.map_err(|e| {
                self.failed.store(true, Ordering::Relaxed);
                StorageError::Write {
                    path: self.path.clone(),
                    detail: e.to_string(),
                }
            })?;
        }
        self.failed.store(false, Ordering::Relaxed);
        Ok(self.commit.issue())
    }

    /// Whether a write (with puts, or deletes only) would be accepted now.
    pub fn check_writable(&self, puts: bool) -> Result<(), StorageError> {
        if self.fail_writes.load(Ordering::Relaxed) {
            self.failed.store(true, Ordering::Relaxed);
            return Err(StorageError::Write {
                path: self.path.clone(),
                detail: "injected write failure".into(),
            });
        }
        if puts {
            if let Some(limit) = self.max_disk_bytes {
                let used = self.disk_used.load(Ordering::Relaxed);
                if used >= limit {
                    return Err(StorageError::Full {
                        path: self.path.clone(),
                        used,
                        limit,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs `f`, which records writes to be made by the pre-flush hook, and
    /// returns a ticket that is durable only once they are: the hook takes
    /// the deferred writes and the committer reads the newest ticket under
    /// the write side of the same barrier. Re-entrant; `f` may write at once
    /// too. Never call it while the pre-flush hook runs on this thread.
    pub fn defer<R>(&self, f: impl FnOnce() -> R) -> (R, Ticket) {
        let _guard = self.barrier.read_recursive();
        let r = f();
        (r, self.commit.issue())
    }

    /// Applies `batch` atomically: for the pre-flush hook, whose writes must
    /// land all together or not at all after a crash. The fsync that
    /// follows makes them durable; no ticket is issued. Not to be called
    /// concurrently (the committer calls it under the barrier).
    ///
    /// Up to [`APPLY_BATCH_MAX`] operations are one sled batch. A larger
    /// batch is written as a journal first (chunks of at most
    /// [`crate::journal::JOURNAL_CHUNK`], then a record naming how many), then applied
    /// operation by operation, then the journal is removed. sled recovers
    /// a prefix of its log, so after a crash either no operation of the
    /// batch is on disk (nor the record), or the record and its chunks
    /// are, and `Store::open` applies the batch again whole.
    pub fn write_atomic(&self, batch: Batch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let err = |e: sled::Error| {
            self.failed.store(true, Ordering::Relaxed);
            StorageError::Write {
                path: self.path.clone(),
                detail: e.to_string(),
            }
        };
        if self.journal_left.load(Ordering::Relaxed) {
            clear_journal(&self.meta).map_err(err)?;
            self.journal_left.store(false, Ordering::Relaxed);
        }
        let largest = batch
            .ops
            .iter()
            .filter_map(|(_, v)| v.as_ref())
            .map(Vec::len)
            .max();
        if batch.ops.len() <= APPLY_BATCH_MAX {
            let mut b = sled::Batch::default();
            for (key, value) in batch.ops {
                match value {
                    Some(v) => b.insert(key, v),
                    None => b.remove(key),
                }
            }
            let r = self.data.apply_batch(b).map_err(err);
            self.blobs.note(largest.unwrap_or(0));
            return r;
        }
        write_journal(&self.meta, &encode_journal(&batch.ops)).map_err(err)?;
        let applied = apply_ops(&self.data, batch.ops).and_then(|()| clear_journal(&self.meta));
        self.blobs.note(largest.unwrap_or(0));
        if applied.is_err() {
            self.journal_left.store(true, Ordering::Relaxed);
        }
        applied.map_err(err)
    }

    /// Runs `f` with deferred writers kept out (the write side of the
    /// barrier): for writing deferred work outside the committer, at
    /// shutdown.
    pub fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.barrier.write();
        f()
    }

    /// Asks the group committer for a flush (and so the pre-flush hook)
    /// without waiting for it.
    pub fn request_flush(&self) {
        self.commit.request(self.commit.current());
    }

    /// Adds a participant to the work done just before every group-commit
    /// fsync: writes that only need to be as durable as the next fsync can
    /// be deferred (and often skipped) instead of written at once. Any
    /// number of users may join (the broker's deferred records; later a
    /// Raft log store); each runs under the barrier's write side, in the
    /// order they joined.
    pub fn add_pre_flush(&self, hook: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        self.pre_flush.add(Box::new(hook));
    }

    /// The newest ticket issued: on disk, it covers every write so far.
    pub fn current_ticket(&self) -> Ticket {
        self.commit.current()
    }

    /// Resolves when `ticket` is on disk (at once under `FsyncMode::Never`).
    pub async fn durable(&self, ticket: Ticket) -> Result<(), StorageError> {
        self.commit.wait(ticket).await
    }

    /// Whether `ticket` is already on disk, without waiting.
    pub fn is_durable(&self, ticket: Ticket) -> bool {
        self.commit.is_durable(ticket)
    }

    /// Every record of `table`, in key order, keys without the table byte.
    pub fn scan(
        &self,
        table: Table,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + '_ {
        self.scan_prefix(table, &[])
    }

    /// Records of `table` whose key starts with `prefix`.
    pub fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + '_ {
        self.data
            .scan_prefix(prefixed(table, prefix))
            .map(move |r| {
                r.map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                    .map_err(|e| StorageError::Corrupt {
                        path: self.path.clone(),
                        detail: e.to_string(),
                    })
            })
    }

    /// The record of `table` under `key`, if any.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.data
            .get(prefixed(table, key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StorageError::Corrupt {
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }

    /// The largest key of `table` (without the table byte), if any: where
    /// a table keyed by a counter resumes it.
    pub fn last_key(&self, table: Table) -> Result<Option<Vec<u8>>, StorageError> {
        match self.data.scan_prefix([table.id()]).next_back() {
            None => Ok(None),
            Some(Ok((k, _))) => Ok(Some(k[1..].to_vec())),
            Some(Err(e)) => Err(StorageError::Corrupt {
                path: self.path.clone(),
                detail: e.to_string(),
            }),
        }
    }

    /// Keys of `table` starting with `prefix` (to delete a group).
    pub fn keys_with_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        self.scan_prefix(table, prefix)
            .map(|r| r.map(|(k, _)| k))
            .collect()
    }

    pub fn health(&self) -> Health {
        if self.failed.load(Ordering::Relaxed)
            || self.fail_writes.load(Ordering::Relaxed)
            || self.commit.failed()
        {
            return Health::Failed;
        }
        match self.max_disk_bytes {
            Some(limit) if self.disk_used.load(Ordering::Relaxed) >= limit => Health::Full,
            _ => Health::Ok,
        }
    }

    /// How many fsyncs the group committer has done (a metric: writes per
    /// fsync shows how well group commit batches).
    pub fn fsync_count(&self) -> u64 {
        self.commit.flushes()
    }

    /// Bytes on disk as of the last refresh.
    pub fn disk_used(&self) -> u64 {
        self.disk_used.load(Ordering::Relaxed)
    }

    /// Re-reads the size on disk (the flusher also does after each flush).
    pub fn refresh_disk_used(&self) {
        if let Ok(n) = self.db.size_on_disk() {
            self.disk_used.store(n, Ordering::Relaxed);
        }
    }

    /// Fault injection: while `fail` is set, every write fails.
    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::Relaxed);
        if !fail {
            self.failed.store(false, Ordering::Relaxed);
        }
    }

    /// Shutdown: flushes, then stops the group committer, so nothing but
    /// the remaining `Store` handles keeps the directory locked.
    pub fn close(&self) -> Result<(), StorageError> {
        let flushed = self.flush();
        self.commit.stop();
        flushed
    }

    /// Flushes everything to disk now (shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        let err = |detail: String| StorageError::Flush {
            path: self.path.clone(),
            detail,
        };
        self.db.flush().map_err(|e| err(e.to_string()))?;
        self.blobs
            .sync()
            .map(|_| ())
            .map_err(|e| err(format!("blob fsync: {e}")))
    }
}

/// Opens sled. A directory still locked (by a process that is exiting, or
/// a store handle being released) is retried for up to 5 s before the
/// error is reported.
fn open_sled(path: &Path, opts: &StoreOptions) -> Result<sled::Db, StorageError> {
    let mut tries = 0;
    loop {
        let r = sled::Config::new()
            .path(path)
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Writes nobody waits for (disconnect times, wills, deletions)
            // still reach the disk within 500 ms, in every mode.
            .flush_every_ms(Some(500))
            .open();
        match r {
            Ok(db) => return Ok(db),
            // sled 0.34 reports a held lock as `ErrorKind::Other` with this text.
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::Other
                    && e.to_string().contains("could not acquire lock") =>
            {
                if tries == 50 {
                    return Err(StorageError::Locked {
                        path: path.to_owned(),
                    });
                }
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e @ sled::Error::Corruption { .. }) => {
                return Err(StorageError::Corrupt {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })
            }
            Err(e) => {
                return Err(StorageError::Open {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })
            }
        }
    }
}

/// Written (and fsynced) once a store is initialised; read before sled
/// opens anything, because sled treats a missing or damaged directory as
/// new and starts over in it.
const MARKER: &str = "PORCHLIGHT_STORE";

fn write_marker(path: &Path) -> Result<(), StorageError> {
    use std::io::Write;
    let err = |e: std::io::Error| StorageError::Open {
        path: path.to_owned(),
        detail: format!("cannot write {MARKER}: {e}"),
    };
    let mut f = std::fs::File::create(path.join(MARKER)).map_err(err)?;
    f.write_all(format!("porchlight store format {FORMAT_VERSION}\n").as_bytes())
        .map_err(err)?;
    f.sync_all().map_err(err)
}

/// Refuses a directory sled would silently reset: sled files without our
/// marker, an unreadable marker, a marker of another format, or a sled
/// configuration file that fails its own checksum. Returns whether the
/// directory holds an initialised store.
fn check_directory(path: &Path) -> Result<bool, StorageError> {
    let corrupt = |detail: String| StorageError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let entries: Vec<String> = match std::fs::read_dir(path) {
        Ok(d) => d
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(StorageError::Open {
                path: path.to_owned(),
                detail: e.to_string(),
            })
        }
    };
    if !entries.iter().any(|e| e == MARKER) {
        if entries.is_empty() {
            return Ok(false);
        }
        return Err(corrupt(format!(
            "files present ({}) but no {MARKER} marker: not a Porchlight store, or one \
             damaged before it was initialised; refusing to open it so nothing is overwritten",
            entries.join(", ")
        )));
    }
    let marker = std::fs::read_to_string(path.join(MARKER))
        .map_err(|e| corrupt(format!("{MARKER} unreadable: {e}")))?;
    let found: u32 = marker
        .trim()
        .strip_prefix("porchlight store format ")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(format!("{MARKER} does not name a format: {marker:?}")))?;
    if found != FORMAT_VERSION {
        return Err(StorageError::Incompatible {
            path: path.to_owned(),
            found,
            expected: FORMAT_VERSION,
        });
    }
    // sled's configuration file ends in a CRC32 of the rest; sled itself
    // only warns on a mismatch and starts over on a short file.
    let conf = std::fs::read(path.join("conf"))
        .map_err(|e| corrupt(format!("sled conf unreadable: {e}")))?;
    if conf.len() <= 8 {
        return Err(corrupt(format!("sled conf has {} bytes", conf.len())));
    }
    let (body, crc) = conf.split_at(conf.len() - 4);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != expected {
        return Err(corrupt("sled conf fails its checksum".into()));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
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
        for w in waits {
            w.await.expect("join").expect("durable");
        }
        assert!(
            s.fsync_count() < 100,
            "{} fsyncs for 100 writes",
            s.fsync_count()
        );
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
}
