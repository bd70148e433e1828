//! The on-disk store: its layout, atomic and durable writes, the per-cluster lock, segment
//! compression, base backups, listing and lookup for readers, and retention.
//!
//! # Layout
//! ```text
//! STORE/<cluster>/cluster.json   which server: system identifier (a string), server_version_num,
//!                                wal_segment_size, created (UTC), format (1)
//! STORE/<cluster>/lock           flock'd by the one writer; holds its pid as text
//! STORE/<cluster>/gaps.json      WAL the server no longer had when we needed it (absent = none)
//! STORE/<cluster>/status.json    written by `walden run` (`daemon::status_file`), never by the store
//! STORE/<cluster>/wal/<first 16 hex digits of the name>/<segment>[.zst|.partial]
//! STORE/<cluster>/wal/NNNNNNNN.history
//! STORE/<cluster>/backups/lock   flock'd for the moment a backup directory is created,
//!                                renamed or removed
//! STORE/<cluster>/backups/<ID>/  a complete backup: backup.json, base.tar[.zst],
//!                                <tablespace oid>.tar[.zst], backup_manifest, config/ (the
//!                                server's configuration files, optional)
//! STORE/<cluster>/backups/<ID>.partial/   a backup being taken; its writer flocks
//!                                <ID>.partial/lock. One whose lock is free was interrupted
//!                                and is removed when the next backup begins.
//! STORE/<cluster>/backups/<ID>.deleting/  a backup being deleted by retention (or left by a
//!                                crash while it was): never listed, removed by the next
//!                                backup or prune.
//! ```
//! Names are PostgreSQL's, so an administrator can copy files by hand. A cluster name is 1 to
//! 64 characters of `A-Za-z0-9_.-` not starting with `.` (default `main`). A backup `<ID>` is
//! its UTC start time, `20261122T193000Z`, followed by `-2`, `-3`... if a backup with that
//! time exists already. Besides these, a
//! store may hold `*.tmp` (an interrupted write; removed when the cluster is next opened for
//! writing) and `<name>.conflict.<n>` (our copy of a file whose name was already taken by
//! different bytes; kept for a human, never read).
//!
//! # Durability rules
//! - Only [`durable`] fsyncs or renames, in this order: fsync the file, rename, fsync the
//!   directory. New directories are made durable by fsyncing their parent.
//! - Metadata files (`cluster.json`, `gaps.json`, history files) are replaced whole through
//!   `<name>.tmp`.
//! - A segment is written as `<name>.partial`, created at its full size (preallocated, then
//!   fsynced with its directory) so its size never changes while WAL is written into it.
//!   Only a whole, fsynced segment is renamed to its final name; compression then writes
//!   `<name>.zst.tmp`, fsyncs, renames, and only after that removes the plain file. So a file
//!   with a final name is always whole and durable, and a `.partial` is always full-size.
//! - A backup is written into `<ID>.partial/`. To commit it, every file and directory in it
//!   is fsynced, `backup.json` is written atomically, its `lock` removed and the directory
//!   renamed to `<ID>`. So a backup directory with a final name is whole and durable.
//! - A complete backup is deleted by renaming it to `<ID>.deleting` (durably) before removing
//!   the tree; WAL is deleted oldest first, each directory fsynced after its files went.
//! - A completed name is never rewritten with different bytes ([`StoreError::Conflict`]).
//! - A store belongs to one system identifier, segment size and major version per cluster.
//! - One writer per cluster, by `flock` on `lock` (advisory; not reliable on NFS). Backups
//!   run beside it without that lock: they only add to `backups/`, and `cluster.json` is
//!   created with a hard link, never replacing one (so a receiver and a backup starting on a
//!   new cluster at once agree on it). Only the lock holder rewrites `cluster.json`.

mod backups;
mod coverage;
pub mod durable;
mod error;
mod layout;
mod reader;
mod retention;
mod segment;
mod writer;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub use backups::{
    BackupId, BackupWriter, StoredBackup, backup_dir, backup_in_progress, list_backups,
};
pub use coverage::{history_file_names, wal_covered};
pub use error::{Result, StoreError};
pub use layout::{ClusterInfo, ClusterName, FORMAT, Gap, ServerIdentity, major_version};
pub use reader::{ClusterReader, StoredSegment, WalArchive};
pub use retention::{
    BackupEntry, KeepReason, Plan, PruneReport, RetentionError, RetentionPolicy, WalDeleted,
    plan_retention, prune,
};
#[cfg(test)]
pub(crate) use segment::write_frames;
pub use segment::{Compression, SegmentWriter, ZSTD_FRAME_INPUT, ZstdFrame, zstd_frames};
pub use writer::{ClusterWriter, bind_cluster};

/// Bytes available to unprivileged users on the filesystem holding `path` (`statvfs`).
pub fn free_space(path: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(path)
        .map_err(|e| StoreError::io("get free space of", path, e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The current UTC time as `2026-11-22T19:30:00Z`.
pub fn utc_now() -> String {
    format_utc(SystemTime::now())
}

/// A time as `2026-11-22T19:30:00Z`.
pub fn format_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
