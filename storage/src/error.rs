//! The storage crate's error type.

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("data directory {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "data directory {path} has format version {found}, this build reads version {expected}"
    )]
    Incompatible {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error("cannot open data directory {path}: {detail}")]
    Open { path: PathBuf, detail: String },

    #[error("data directory {path} is in use by another process (its lock was not released within 5 s); give each broker its own --data-dir")]
    Locked { path: PathBuf },

    #[error("write to {path} failed: {detail}")]
    Write { path: PathBuf, detail: String },

    #[error("data directory {path} is full: {used} of {limit} bytes used (--max-disk-bytes)")]
    Full {
        path: PathBuf,
        used: u64,
        limit: u64,
    },

    #[error("flush of {path} failed: {detail}")]
    Flush { path: PathBuf, detail: String },
}
