//! sled's blob files, made durable with the log that points at them.
//!
//! sled 0.34 writes a value too large for its log (over about 128 KiB) to
//! a file of its own under `<store>/blobs/`, and its flush fsyncs only the
//! log: after a power cut the log can name a blob that never reached the
//! disk, and sled's recovery then skips it, or stops there (losing every
//! later write). Writers note large values here ([`Blobs::note`]); the
//! group committer (`commit.rs`), after each flush that may have made
//! some and before any acknowledgement waiting on it, fsyncs the blob
//! files it has not synced yet and their directory ([`Blobs::sync`]).

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// Values at least this large may become blobs: well under sled's own
/// threshold, so none is missed.
pub const BLOB_CANDIDATE: usize = 32 * 1024;

#[derive(Debug)]
pub struct Blobs {
    dir: PathBuf,
    /// A large value was written since the last sync.
    pending: AtomicBool,
    /// Blob files already fsynced (the committer, or a shutdown flush).
    pub(crate) synced: parking_lot::Mutex<HashSet<OsString>>,
}

impl Blobs {
    pub fn new(store: PathBuf) -> Blobs {
        Blobs {
            dir: store.join("blobs"),
            pending: AtomicBool::new(false),
            synced: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    /// Called after a value of `len` bytes was written (so its blob file,
    /// if any, exists when the committer looks).
    pub fn note(&self, len: usize) {
        if len >= BLOB_CANDIDATE {
            self.pending.store(true, Ordering::Release);
        }
    }

    /// Fsyncs every blob file not synced yet, then the directory, if a
    /// large value was written since the last call; returns how many files
    /// it synced. Files sled has removed are forgotten.
    pub fn sync(&self) -> std::io::Result<usize> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Ok(0);
        }
        let result = self.sync_new();
        if result.is_err() {
            // Try again with the next flush.
            self.pending.store(true, Ordering::Release);
        }
        result
    }

    fn sync_new(&self) -> std::io::Result<usize> {
        let mut synced = self.synced.lock();
        let mut present = HashSet::new();
        let mut n = 0;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                std::fs::File::open(entry.path())?.sync_all()?;
                n += 1;
            }
            present.insert(name);
        }
        if n > 0 {
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        *synced = present;
        Ok(n)
    }
}
