//! Hot reload of the files flags name: TLS material (`net/tls.rs`) and the
//! auth or tenants file with the JWT key files it names (`auth/mod.rs`).
//!
//! [`watch_files`] polls the files' contents (not their timestamps:
//! Kubernetes swaps a Secret's files through a symlink, and cert-manager
//! may rewrite identical bytes) and calls back on a blocking thread when
//! they change. The callback builds the new state and swaps it in, or logs
//! why not and keeps the old; each distinct content is handed over once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The files' contents, `None` for one that cannot be read.
pub type Snapshot = Vec<Option<Vec<u8>>>;

/// Reads `paths` now. Owners take this just before loading the files, so
/// a change made between load and the first poll is not missed.
pub fn snapshot(paths: &[PathBuf]) -> Snapshot {
    paths.iter().map(|p| std::fs::read(p).ok()).collect()
}

/// Polls the files `paths` names every `every` until `shutdown`; runs
/// `changed` on a blocking thread each time their contents differ from the
/// last look (the first look is `loaded`, of `paths()` at load time).
/// `paths` is asked on every look, so an owner whose files name further
/// files (the auth file's JWT key files) watches the set in force.
pub async fn watch_files<P, F>(
    paths: P,
    loaded: Snapshot,
    every: Duration,
    shutdown: CancellationToken,
    changed: F,
) where
    P: Fn() -> Vec<PathBuf> + Send + Sync + 'static,
    F: Fn() + Send + Sync + 'static,
{
    let paths = Arc::new(paths);
    let changed = Arc::new(changed);
    let look = || {
        let p = paths.clone();
        tokio::task::spawn_blocking(move || snapshot(&p()))
    };
    let mut seen = loaded;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(now) = look().await else {
            continue;
        };
        if now == seen {
            continue;
        }
        seen = now;
        let c = changed.clone();
        let _ = tokio::task::spawn_blocking(move || c()).await;
    }
}
