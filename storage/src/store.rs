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

use crate::commit::{Committer, Flushed, FsyncMode, Ticket};
use crate::error::StorageError;
use crate::journal::{apply_ops, clear_journal, encode_journal, replay_journal, write_journal};
use crate::table::Table;
use tracing::{info, warn};

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

/// The store's state as its log lines report it (`Store::note`).
const WRITABLE: u8 = 0;
const FULL: u8 = 1;
const FAILING: u8 = 2;

fn refusal(e: &StorageError) -> u8 {
    match e {
        StorageError::Full { .. } => FULL,
        _ => FAILING,
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

impl Health {
    /// `ok`, `full` or `failed` (metric labels, the admin API).
    pub fn name(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Full => "full",
            Health::Failed => "failed",
        }
    }
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
    observers: crate::commit::Observers,
    /// Writes refused (`Store::refused_writes`).
    refused: AtomicU64,
    /// What the log last said: [`WRITABLE`], [`FULL`] or [`FAILING`].
    refusing: std::sync::atomic::AtomicU8,
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
        let observers = crate::commit::Observers::default();
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
                observers: observers.clone(),
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
            observers,
            refused: AtomicU64::new(0),
            refusing: std::sync::atomic::AtomicU8::new(WRITABLE),
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
        let batch_puts = batch.puts > 0;
        self.check_writable(batch_puts)?;
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
                let e = StorageError::Write {
                    path: self.path.clone(),
                    detail: e.to_string(),
                };
                self.note(FAILING, Some(&e));
                e
            })?;
        }
        self.failed.store(false, Ordering::Relaxed);
        if batch_puts {
            self.note(WRITABLE, None);
        }
        Ok(self.commit.issue())
    }

    /// Whether a write (with puts, or deletes only) would be accepted now.
    pub fn check_writable(&self, puts: bool) -> Result<(), StorageError> {
        let r = self.writable(puts);
        // A pass is not a recovery (the write itself may still fail):
        // only a write made says the store accepts writes again.
        if let Err(e) = &r {
            self.note(refusal(e), Some(e));
        }
        r
    }

    /// Counts a refusal, and logs only when the store's state changes
    /// (accepting, full, failing): a full disk under load is one warning
    /// and a count, not a warning per message.
    fn note(&self, state: u8, error: Option<&StorageError>) {
        if let Some(e) = error {
            self.refused.fetch_add(1, Ordering::Relaxed);
            if self.refusing.swap(state, Ordering::Relaxed) != state {
                warn!(path = %self.path.display(), error = %e,
                    "The store refuses writes; further refusals are counted (porchlight_storage_refused_writes_total), not logged, until it accepts them again");
            }
        } else if self.refusing.swap(WRITABLE, Ordering::Relaxed) != WRITABLE {
            info!(path = %self.path.display(), refused = self.refused.load(Ordering::Relaxed),
                "The store accepts writes again");
        }
    }

    fn writable(&self, puts: bool) -> Result<(), StorageError> {
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

    /// Adds an observer told after every successful group-commit fsync
    /// how long it took and how many writes it covered (the broker's
    /// metrics). It runs on the fsync thread: it must not block.
    pub fn on_flush(&self, observer: impl Fn(Flushed) + Send + Sync + 'static) {
        self.observers.add(Box::new(observer));
    }

    /// Writes refused so far (disk limit, failure, injected fault).
    pub fn refused_writes(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// `--max-disk-bytes`, if set.
    pub fn disk_limit(&self) -> Option<u64> {
        self.max_disk_bytes
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
mod tests;
