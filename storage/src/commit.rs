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
    pub observers: Observers,
}

/// One group commit's fsync, as its observers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// The fsync of the log and the blob files.
    pub duration: Duration,
    /// Writes (tickets) it made durable: the size of the group.
    pub writes: u64,
}

type Observer = Box<dyn Fn(Flushed) + Send + Sync>;

/// Told after every successful fsync (see `Store::on_flush`).
#[derive(Clone, Default)]
pub(crate) struct Observers(Arc<std::sync::RwLock<Vec<Observer>>>);

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observers")
    }
}

impl Observers {
    pub(crate) fn add(&self, observer: Observer) {
        if let Ok(mut all) = self.0.write() {
            all.push(observer);
        }
    }

    fn tell(&self, flushed: Flushed) {
        if let Ok(all) = self.0.read() {
            for o in all.iter() {
                o(flushed);
            }
        }
    }
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
        observers,
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
        let started = std::time::Instant::now();
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
                let duration = started.elapsed();
                let before = tx.borrow().upto;
                flushes.fetch_add(1, Ordering::Relaxed);
                failed.store(false, Ordering::Relaxed);
                tx.send_modify(|d| {
                    d.upto = d.upto.max(target);
                    d.error = None;
                });
                if let Ok(n) = db.size_on_disk() {
                    disk_used.store(n, Ordering::Relaxed);
                }
                observers.tell(Flushed {
                    duration,
                    writes: target.saturating_sub(before),
                });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn committer(dir: &std::path::Path, mode: FsyncMode, window: Duration) -> Committer {
        let db = sled::Config::new().path(dir).open().expect("sled");
        let around = AroundFlush {
            pre_flush: PreFlush::default(),
            barrier: Barrier::default(),
            blobs: Arc::new(crate::blobs::Blobs::new(dir.to_owned())),
            observers: Observers::default(),
        };
        Committer::start(
            db,
            dir.to_owned(),
            mode,
            window,
            Arc::new(AtomicU64::new(0)),
            around,
        )
    }

    /// A flush publishes the newest ticket issued before it: waiting for a
    /// later ticket makes every earlier one durable, never a later one.
    #[tokio::test]
    async fn one_flush_covers_every_ticket_issued_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = committer(dir.path(), FsyncMode::Group, Duration::from_millis(5));
        let tickets: Vec<Ticket> = (0..10).map(|_| c.issue()).collect();
        assert_eq!(tickets[9], Ticket(10));
        assert!(
            !c.is_durable(tickets[0]),
            "nothing is durable before a flush"
        );
        tokio::time::timeout(Duration::from_secs(10), c.wait(tickets[9]))
            .await
            .expect("flushed in time")
            .expect("durable");
        assert!(tickets.iter().all(|t| c.is_durable(*t)));
        let later = c.issue();
        assert!(
            !c.is_durable(later),
            "a ticket issued after the flush waits for the next"
        );
        assert!(c.flushes() >= 1);
        assert_eq!(c.current(), later);
    }

    /// Many waiters on tickets issued together share flushes: far fewer
    /// fsyncs than waiters.
    #[tokio::test]
    async fn concurrent_waiters_share_a_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Arc::new(committer(
            dir.path(),
            FsyncMode::Group,
            Duration::from_millis(20),
        ));
        let tickets: Vec<Ticket> = (0..64).map(|_| c.issue()).collect();
        let waits = tickets.into_iter().map(|t| {
            let c = c.clone();
            tokio::spawn(async move { c.wait(t).await })
        });
        for w in waits.collect::<Vec<_>>() {
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("in time")
                .expect("task")
                .expect("durable");
        }
        assert!(c.flushes() < 64, "{} flushes for 64 waiters", c.flushes());
    }

    /// Under `Never` nothing waits: every ticket counts as durable (sled
    /// flushes in the background), and no fsync thread runs.
    #[tokio::test]
    async fn never_acknowledges_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = committer(dir.path(), FsyncMode::Never, Duration::from_millis(5));
        let t = c.issue();
        assert!(c.is_durable(t));
        c.wait(t).await.expect("at once");
        assert_eq!(c.flushes(), 0);
    }

    /// A waiter whose flush can no longer happen is told so, not left
    /// waiting.
    #[tokio::test]
    async fn a_stopped_committer_fails_its_waiters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = committer(dir.path(), FsyncMode::Always, Duration::ZERO);
        c.stop();
        let t = c.issue();
        let r = tokio::time::timeout(Duration::from_secs(10), c.wait(t))
            .await
            .expect("answered in time");
        assert!(matches!(r, Err(StorageError::Flush { .. })), "{r:?}");
    }

    /// Every pre-flush participant runs, in the order they joined; the
    /// first failure is the flush's.
    #[test]
    fn pre_flush_runs_every_participant_in_order() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let p = PreFlush::default();
        for (name, result) in [
            ("a", Ok(())),
            ("b", Err("b failed")),
            ("c", Err("c failed")),
        ] {
            let ran = ran.clone();
            p.add(Box::new(move || {
                ran.lock().expect("lock").push(name);
                result.map_err(str::to_owned)
            }));
        }
        assert_eq!(p.run(), Err("b failed".to_owned()));
        assert_eq!(*ran.lock().expect("lock"), ["a", "b", "c"]);
    }

    /// The group window ends once writes stop coming, and goes on while
    /// they come (bounded by the window).
    #[test]
    fn the_group_window_ends_when_writes_stop() {
        let issued = Arc::new(AtomicU64::new(0));
        let window = Duration::from_secs(5);
        // Nobody writes: over after one quiet period, not the window.
        let start = std::time::Instant::now();
        gather(&issued, window);
        assert!(start.elapsed() < window, "quiet window waited it out");
        // Writes every 10 ms for 400 ms: gathered until they stop.
        let writer = {
            let issued = issued.clone();
            std::thread::spawn(move || {
                for _ in 0..40 {
                    issued.fetch_add(1, Ordering::AcqRel);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let start = std::time::Instant::now();
        gather(&issued, Duration::from_millis(800));
        let gathered = issued.load(Ordering::Acquire);
        writer.join().expect("writer");
        assert!(
            gathered >= 30 || start.elapsed() >= Duration::from_millis(800),
            "stopped after {gathered} writes while they kept coming"
        );
    }
}
