//! `STORE/<cluster>/status.json`: what `walden run` is doing for a cluster, written atomically
//! by the daemon every few seconds and when it stops, so that `walden status --store` can
//! answer without asking the daemon. Also the time format every status field uses
//! (RFC 3339 UTC with milliseconds, `2026-11-22T19:30:00.123Z`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::receive::ReceiverStatus;
use crate::store::{ClusterName, StoreError, durable};
use crate::wal::Lsn;

/// The file's name in the cluster's directory.
pub const FILE_NAME: &str = "status.json";

/// The format version in [`StatusFile::format`].
pub const FORMAT: u32 = 1;

/// How often the daemon rewrites the file.
pub const WRITE_EVERY: Duration = Duration::from_secs(5);

/// A file not rewritten for this long belongs to a daemon that is gone or hung.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// The content of `status.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    pub format: u32,
    pub cluster: String,
    /// The daemon's process id.
    pub pid: u32,
    /// When the daemon (or, after a reload that changed the cluster, its supervisor) started.
    pub started: String,
    /// When this file was written.
    pub written: String,
    /// The daemon stopped this cluster cleanly (shutdown, or removed from the configuration).
    pub stopped: bool,
    pub slot: String,
    pub receiver: ReceiverSnapshot,
    pub backup: BackupSnapshot,
    pub disk: DiskSnapshot,
    /// The configured `[status]` thresholds, in seconds.
    pub receiver_down_after_seconds: u64,
    pub backup_grace_seconds: u64,
}

/// The receiver, as published by `receive::run`, plus the supervisor's restart count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceiverSnapshot {
    /// `connecting`, `streaming`, `waiting-to-reconnect` or `stopped`.
    pub state: String,
    pub since: String,
    pub timeline: Option<u32>,
    pub received_lsn: Option<Lsn>,
    pub flushed_lsn: Option<Lsn>,
    pub server_wal_end: Option<Lsn>,
    pub last_message: Option<String>,
    pub flushed_arrived: Option<String>,
    pub bytes_received: u64,
    pub segments_completed: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

impl ReceiverSnapshot {
    pub fn new(status: &ReceiverStatus, restarts: u64) -> Self {
        ReceiverSnapshot {
            state: status.state.as_str().to_string(),
            since: format_time(status.since),
            timeline: status.timeline.map(|t| t.0),
            received_lsn: status.received,
            flushed_lsn: status.flushed,
            server_wal_end: status.server_wal_end,
            last_message: status.last_message_at.map(format_time),
            flushed_arrived: status.flushed_arrived_at.map(format_time),
            bytes_received: status.bytes_received,
            segments_completed: status.segments_completed,
            restarts,
            last_error: status.last_error.clone(),
            last_error_at: status.last_error_at.map(format_time),
        }
    }
}

/// Scheduled backups.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupSnapshot {
    /// `every 1day`, `daily at 03:00 local time`; `None`: no backups scheduled.
    pub schedule: Option<String>,
    /// When the schedule wants the next backup (in the past when one is overdue); `None`
    /// with no schedule, or before the first backup.
    pub next_due: Option<String>,
    /// The backup being taken started at this time.
    pub running_since: Option<String>,
    pub taken: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// What the last retention run deleted, in words.
    pub last_prune: Option<String>,
}

/// The store's filesystem as the daemon last saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskSnapshot {
    pub free_bytes: Option<u64>,
    /// `min_free_space`; 0: not checked.
    pub min_free_bytes: u64,
    /// Free space is below the minimum.
    pub low: bool,
    /// Why the free space or this file could not be had.
    pub error: Option<String>,
}

/// `STORE/<cluster>/status.json`.
pub fn status_path(store: &Path, cluster: &ClusterName) -> PathBuf {
    store.join(cluster.as_str()).join(FILE_NAME)
}

/// Writes the file atomically (through `status.json.tmp`), creating the cluster's directory
/// if the receiver has not yet.
pub fn write(store: &Path, status: &StatusFile) -> Result<(), StoreError> {
    let cluster = ClusterName::new(&status.cluster)?;
    let path = status_path(store, &cluster);
    if let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        durable::create_dir_all_durable(dir)?;
    }
    let json = serde_json::to_vec_pretty(status).map_err(|e| StoreError::BadMetadata {
        path: path.clone(),
        reason: format!("cannot encode: {e}"),
    })?;
    match durable::write_file_atomic(&path, &json) {
        // The receiver removes `*.tmp` files of its cluster directory when it (re)opens the
        // store, and may have taken ours between the write and the rename: write it again.
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            durable::write_file_atomic(&path, &json)
        }
        other => other,
    }
}

/// Reads the file; `Ok(None)` when there is none.
pub fn read(store: &Path, cluster: &ClusterName) -> Result<Option<StatusFile>, StoreError> {
    let path = status_path(store, cluster);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", &path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::BadMetadata {
            path,
            reason: e.to_string(),
        })
}

/// Whether a process with this id exists (Linux: `/proc/<pid>`).
pub fn process_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// `2026-11-22T19:30:00.123Z`.
pub fn format_time(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.round(jiff::Unit::Millisecond).unwrap_or(ts).to_string(),
        Err(_) => crate::store::format_utc(t),
    }
}

/// The inverse of [`format_time`] (any RFC 3339 time); `None` if it is not one.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    s.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

/// Seconds from `then` to `now`, 0 when `then` is later.
pub fn seconds_since(then: SystemTime, now: SystemTime) -> f64 {
    now.duration_since(then).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::ReceiverState;
    use crate::wal::TimelineId;

    #[test]
    fn times_round_trip_to_the_millisecond() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        let s = format_time(t);
        assert_eq!(s, "2026-09-21T14:13:20.123Z");
        assert_eq!(parse_time(&s), Some(t));
        assert!(parse_time("2026-11-22T19:30:00Z").is_some());
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(seconds_since(t + Duration::from_secs(5), t), 0.0);
        assert_eq!(seconds_since(t, t + Duration::from_millis(1500)), 1.5);
    }

    #[test]
    fn status_file_round_trips_through_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = ClusterName::new("main").expect("name");
        assert_eq!(read(dir.path(), &cluster).expect("read"), None);
        let now = SystemTime::now();
        let mut receiver = ReceiverStatus::new(now);
        receiver.state = ReceiverState::Streaming;
        receiver.timeline = Some(TimelineId(2));
        receiver.flushed = Some(Lsn(0x1_0000_0000));
        let file = StatusFile {
            format: FORMAT,
            cluster: "main".into(),
            pid: std::process::id(),
            started: format_time(now),
            written: format_time(now),
            stopped: false,
            slot: "walden".into(),
            receiver: ReceiverSnapshot::new(&receiver, 3),
            backup: BackupSnapshot::default(),
            disk: DiskSnapshot::default(),
            receiver_down_after_seconds: 300,
            backup_grace_seconds: 3600,
        };
        write(dir.path(), &file).expect("write");
        let back = read(dir.path(), &cluster).expect("read").expect("present");
        assert_eq!(back, file);
        assert_eq!(back.receiver.state, "streaming");
        assert_eq!(back.receiver.timeline, Some(2));
        assert_eq!(back.receiver.restarts, 3);
        assert!(process_exists(back.pid));

        std::fs::write(status_path(dir.path(), &cluster), b"{").expect("write");
        assert!(matches!(
            read(dir.path(), &cluster),
            Err(StoreError::BadMetadata { .. })
        ));
    }
}
