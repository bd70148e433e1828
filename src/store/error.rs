//! `StoreError`: everything that can go wrong in the store, one line each, naming the path or
//! thing and what to do.

use std::io;
use std::path::{Path, PathBuf};

use crate::pg::SystemId;
use crate::wal::WalSegSize;

/// An error from the segment store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "disk full: cannot {op} {path}: free space on that filesystem (or give the store a bigger one) and start again"
    )]
    NoSpace { op: &'static str, path: PathBuf },
    #[error(
        "invalid cluster name {0:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and '-', not starting with '.'"
    )]
    InvalidClusterName(String),
    #[error(
        "invalid backup id {0:?}: a backup id is a UTC start time like 20261122T193000Z, optionally followed by -2, -3..."
    )]
    InvalidBackupId(String),
    #[error(
        "invalid file name {0:?} in a backup: use a relative path of plain names (A-Z, a-z, 0-9, '_', '.', '-', not starting with '.')"
    )]
    InvalidBackupFileName(String),
    #[error("cluster {cluster:?} in store {} is locked by {} (another walden receive?)", store.display(), match pid { Some(p) => format!("pid {p}"), None => "another process".to_string() })]
    Locked {
        store: PathBuf,
        cluster: String,
        pid: Option<u32>,
    },
    #[error(
        "store {} cluster {cluster:?} belongs to system {stored} ({stored_desc}), but the server is system {server}: use another --cluster name or another store", store.display()
    )]
    SystemMismatch {
        store: PathBuf,
        cluster: String,
        stored: SystemId,
        stored_desc: String,
        server: SystemId,
    },
    #[error(
        "store {} cluster {cluster:?} holds {stored} WAL segments, but the server uses {server} segments: use another --cluster name or another store", store.display()
    )]
    SegSizeMismatch {
        store: PathBuf,
        cluster: String,
        stored: WalSegSize,
        server: WalSegSize,
    },
    #[error(
        "store {} cluster {cluster:?} holds WAL of PostgreSQL {stored}, but the server runs PostgreSQL {server}: after a major upgrade use another --cluster name", store.display()
    )]
    MajorVersionMismatch {
        store: PathBuf,
        cluster: String,
        stored: String,
        server: String,
    },
    #[error("store {} has no cluster {cluster:?} (no cluster.json): check --store and --cluster", store.display())]
    NoCluster { store: PathBuf, cluster: String },
    #[error("{} is not a valid walden metadata file ({reason}): repair or move it aside", path.display())]
    BadMetadata { path: PathBuf, reason: String },
    #[error("corrupt store: {} {reason}; move it aside and start again", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{} is {size} bytes, not the segment size {expected}: it was not left by walden; move it aside and start again", path.display()
    )]
    PartialWrongSize {
        path: PathBuf,
        size: u64,
        expected: u64,
    },
    #[error("WAL for {} arrived at offset {got:#x}, expected {expected:#x}: the stream skipped or repeated data", path.display())]
    OutOfOrder {
        path: PathBuf,
        expected: u32,
        got: u32,
    },
    #[error("{len} bytes at offset {offset:#x} run past the end of {} ({size} bytes): split writes at segment boundaries", path.display())]
    PastSegmentEnd {
        path: PathBuf,
        offset: u32,
        len: usize,
        size: u64,
    },
    #[error("{} holds {position} of {size} bytes: only a whole segment can be completed; keep it as .partial", path.display())]
    Incomplete {
        path: PathBuf,
        position: u32,
        size: u64,
    },
    #[error("{url}: {reason}")]
    Remote { url: String, reason: String },
    #[error(
        "{url}: the server refused the token (401): give the token from the server's token_file with --token-file FILE or WALDEN_TOKEN"
    )]
    Unauthorized { url: String },
    #[error(
        "{} already exists with different contents; ours is kept as {}: compare them by hand (did the server's history diverge?)", existing.display(), kept.display()
    )]
    Conflict { existing: PathBuf, kept: PathBuf },
}

impl StoreError {
    /// Wraps an I/O error with the operation and path, turning "no space" into [`NoSpace`].
    ///
    /// [`NoSpace`]: StoreError::NoSpace
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> StoreError {
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::NoSpace {
                op,
                path: path.to_path_buf(),
            },
            _ => StoreError::Io {
                op,
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

impl StoreError {
    /// True when the store refuses the request as given (another cluster's store, a locked
    /// cluster, a bad name): retrying the same command cannot help; the user must change it.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidClusterName(_)
                | StoreError::InvalidBackupId(_)
                | StoreError::Locked { .. }
                | StoreError::SystemMismatch { .. }
                | StoreError::SegSizeMismatch { .. }
                | StoreError::MajorVersionMismatch { .. }
                | StoreError::NoCluster { .. }
                | StoreError::Unauthorized { .. }
        )
    }
}

/// Results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
