//! Group commit: when is a write on disk.
//!
//! Every successful write gets a [`Ticket`], a sequence number issued
//! after sled applied it. A flusher thread waits for someone to ask for
//! durability, gathers further requests for the group window (none under
//! `Always`; the window ends early once writes stop coming, see
//! [`gather`]), reads the newest ticket issued, fsyncs (`sled::Db::flush`),
//! and publishes that ticket as durable: every write with a ticket up to it
//! was applied before the fsync began, so it is covered. Waiters resolve
//! through a `watch` channel. Under `Never`, nothing waits and sled's own
//! background flush (every 500 ms) is all there is.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::error;

use crate::error::StorageError;

/// When acknowledgements wait for the disk (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// Every write is fsynced before it is acknowledged (concurrent waiters
    /// still share an fsync that covers them all).
    Always,
    /// Writes are gathered for the group window (or until they stop
    /// coming), then one fsync covers them all before any of them is
    /// acknowledged.
    Group,
    /// Acknowledge at once; sled flushes in the background every 500 ms.
    Never,
}

/// The position of one write in the store's write order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Ticket(pub u64);

#[derive(Debug, Clone, Default)]
struct Durable {
    upto: u64,
    error: Option<String>,
}

#[derive(Debug, Default)]
struct Requests {
    wanted: u64,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    requests: Mutex<Requests>,
    wake: Condvar,
}

type Hook = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// See `Store::defer`.
pub(crate) type Barrier = Arc<parking_lot::RwLock<()>>;

/// What the flusher runs around each flush: the pre-flush hook under the
/// barrier's write side before it, the blob files' fsync after it.
pub(crate) struct AroundFlush {
    pub pre_flush: PreFlush,
    pub barrier: Barrier,
    pub blobs: Arc<crate::blobs::Blobs>,
}

/// Called by the flusher just before each fsync (see
/// `Store::add_pre_flush`): every participant, in the order they joined.
#[derive(Clone, Default)]
pub(crate) struct PreFlush(Arc<std::sync::RwLock<Vec<Hook>>>);

impl std::fmt::Debug for PreFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreFlush")
    }
}

impl PreFlush {
    pub(crate) fn add(&self, hook: Hook) {
        if let Ok(mut hooks) = self.0.write() {
            hooks.push(hook);
        }
    }

    /// Runs every participant; the first failure fails the flush (which
    /// is retried), after the others have run.
    pub(crate) fn run(&self) -> Result<(), String> {
        let hooks = self
            .0
            .read()
            .map_err(|_| "pre-flush hook poisoned".to_owned())?;
        hooks.iter().map(|hook| hook()).fold(Ok(()), Result::and)
    }
}

#[derive(Debug)]
pub(crate) struct Committer {
    mode: FsyncMode,
    issued: Arc<AtomicU64>,
    durable: watch::Receiver<Durable>,
    shared: Arc<Shared>,
    failed: Arc<AtomicBool>,
    flushes: Arc<AtomicU64>,
    path: PathBuf,
    /// Joined on drop: the thread holds a handle to the database, and the
    /// directory stays locked until it is gone.
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Committer {
    /// Stops the fsync thread and waits for it (unless called on it), so
    /// its handle on the database is gone when this returns.
    pub(crate) fn stop(&self) {
        {
            let mut r = self
                .shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            r.stop = true;
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.lock().take() {
            // The last handle may be dropped on the fsync thread itself
            // (from its pre-flush hook): it then simply returns.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    pub(crate) fn start(
        db: sled::Db,
        path: PathBuf,
        mode: FsyncMode,
        window: Duration,
        disk_used: Arc<AtomicU64>,
        around: AroundFlush,
    ) -> Committer {
        let issued = Arc::new(AtomicU64::new(0));
        let (tx, durable) = watch::channel(Durable::default());
        let shared = Arc::new(Shared {
            requests: Mutex::new(Requests::default()),
            wake: Condvar::new(),
        });
        let failed = Arc::new(AtomicBool::new(false));
        let flushes = Arc::new(AtomicU64::new(0));
        let mut thread = None;
        if mode != FsyncMode::Never {
            let window = if mode == FsyncMode::Group {
                window
            } else {
                Duration::ZERO
            };
            let (issued, shared, failed, flushes) = (
                issued.clone(),
                shared.clone(),
                failed.clone(),
                flushes.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name("porchlight-fsync".into())
                .spawn(move || {
                    flusher(
                        db, tx, issued, shared, failed, flushes, window, disk_used, around,
                    )
                });
            match spawned {
                Ok(t) => thread = Some(t),
                Err(e) => {
                    error!(error = %e, "Cannot start the fsync thread; writes will not be acknowledged")
                }
            }
        }
        Committer {
            mode,
            issued,
            durable,
            shared,
            failed,
            flushes,
            path,
            thread: parking_lot::Mutex::new(thread),
        }
    }

    pub(crate) fn mode(&self) -> FsyncMode {
        self.mode
    }

    /// A ticket for a write just applied.
    pub(crate) fn issue(&self) -> Ticket {
        Ticket(self.issued.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// The newest ticket issued (for writes with nothing to write).
    pub(crate) fn current(&self) -> Ticket {
        Ticket(self.issued.load(Ordering::Acquire))
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    pub(crate) fn is_durable(&self, t: Ticket) -> bool {
        self.mode == FsyncMode::Never || self.durable.borrow().upto >= t.0
    }

    /// Asks for a flush covering `t`, without waiting.
    pub(crate) fn request(&self, t: Ticket) {
        let mut r = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if r.wanted < t.0 {
            r.wanted = t.0;
            self.shared.wake.notify_one();
        }
    }

    pub(crate) async fn wait(&self, t: Ticket) -> Result<(), StorageError> {
        if self.is_durable(t) {
            return Ok(());
        }
        self.request(t);
        let mut rx = self.durable.clone();
        let result = rx
            .wait_for(|d| d.upto >= t.0 || d.error.is_some())
            .await
            .map(|d| d.error.clone());
        match result {
            Ok(None) => Ok(()),
            Ok(Some(detail)) => Err(StorageError::Flush {
                path: self.path.clone(),
                detail,
            }),
            Err(_) => Err(StorageError::Flush {
                path: self.path.clone(),
                detail: "fsync thread stopped".into(),
            }),
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(clippy::too_many_arguments)]
fn flusher(
    db: sled::Db,
    tx: watch::Sender<Durable>,
    issued: Arc<AtomicU64>,
    shared: Arc<Shared>,
    failed: Arc<AtomicBool>,
    flushes: Arc<AtomicU64>,
    window: Duration,
    disk_used: Arc<AtomicU64>,
    around: AroundFlush,
) {
    let AroundFlush {
        pre_flush,
        barrier,
        blobs,
    } = around;
    loop {
        {
            let mut r = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
            while !r.stop && r.wanted <= tx.borrow().upto {
                r = shared.wake.wait(r).unwrap_or_else(|p| p.into_inner());
            }
            if r.stop {
                return;
            }
        }
        if !window.is_zero() {
            gather(&issued, window);
        }
        // Deferred writes and the target are taken together: every ticket
        // up to the target had its deferred writes recorded before this.
        let (target, hooked) = {
            let _guard = barrier.write();
            let hooked = pre_flush.run();
            (issued.load(Ordering::Acquire), hooked)
        };
        // The log, then the blob files it may name (`blobs.rs`): both are on
        // disk before any acknowledgement waiting on this flush.
        let flushed = hooked
            .and_then(|()| db.flush().map(|_| ()).map_err(|e| e.to_string()))
            .and_then(|()| {
                blobs
                    .sync()
                    .map(|_| ())
                    .map_err(|e| format!("blob fsync: {e}"))
            });
        match flushed {
            Ok(_) => {
                flushes.fetch_add(1, Ordering::Relaxed);
                failed.store(false, Ordering::Relaxed);
                tx.send_modify(|d| {
                    d.upto = d.upto.max(target);
                    d.error = None;
                });
                if let Ok(n) = db.size_on_disk() {
                    disk_used.store(n, Ordering::Relaxed);
                }
            }
            Err(e) => {
                error!(error = %e, "fsync failed; durable acknowledgements are refused until it succeeds");
                failed.store(true, Ordering::Relaxed);
                tx.send_modify(|d| d.error = Some(e.clone()));
                // Do not spin on a failing disk.
                std::thread::sleep(Duration::from_millis(100));
                let mut r = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
                if r.stop {
                    return;
                }
                // Waiters were told; the next request retries.
                r.wanted = tx.borrow().upto;
            }
        }
    }
}

/// The group window: waits up to `window` for more writes to join the
/// flush, but ends early once writes stop coming — when no ticket was
/// issued during an eighth of the window (at least 50 µs), every writer
/// that could join is waiting on this flush (a publisher whose in-flight
/// window is full), and waiting longer only adds latency.
fn gather(issued: &AtomicU64, window: Duration) {
    let deadline = std::time::Instant::now() + window;
    let quiet = (window / 8).max(Duration::from_micros(50));
    let mut seen = issued.load(Ordering::Acquire);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(quiet.min(left));
        let now = issued.load(Ordering::Acquire);
        if now == seen {
            return;
        }
        seen = now;
    }
}
