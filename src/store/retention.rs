//! Retention (`walden prune`): which backups and WAL a policy lets go, and deleting them.
//!
//! [`plan_retention`] is the decision, pure over a listing of the store. [`prune`] lists the store,
//! refuses while a backup is in progress, and deletes crash-safely: interrupted backups and
//! old complete ones first, under `backups/lock` (each renamed to `<ID>.deleting` durably,
//! then removed), then WAL oldest first, fsyncing each directory after its files went. It
//! never takes the cluster's writer lock: a running receiver writes only at the head of the
//! WAL, and retention deletes only segments before the oldest kept backup's start.
//! `gaps.json` is left alone: only the writer rewrites it, and an old gap hides nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::backups::{
    BackupId, StoredBackup, delete_backup, interrupted_dirs, list_backups, lock_backups,
    remove_interrupted,
};
use super::durable;
use super::error::StoreError;
use super::layout::ClusterName;
use super::reader::{ClusterReader, StoredSegment, WalArchive};
use crate::wal::{Lsn, SegNo, TimelineHistory, TimelineId, WalSegSize};

/// How much to keep. At least one rule must be set; a backup is kept if either rule keeps
/// it, and the newest complete backup is always kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the newest N complete backups (N ≥ 1).
    pub keep_backups: Option<usize>,
    /// Keep every backup a restore to any point of the last `DURATION` needs: those that
    /// ended within it and the newest one that ended before it.
    pub recovery_window: Option<Duration>,
}

impl RetentionPolicy {
    /// Refuses a policy that keeps nothing in particular.
    pub fn validate(&self) -> Result<(), RetentionError> {
        match (self.keep_backups, self.recovery_window) {
            (None, None) => Err(RetentionError::NoPolicy),
            (Some(0), _) => Err(RetentionError::KeepZero),
            _ => Ok(()),
        }
    }
}

/// Why retention refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(
        "no retention policy: give --keep-backups N and/or --recovery-window DURATION (e.g. 14d)"
    )]
    NoPolicy,
    #[error("--keep-backups must be at least 1 (the newest backup is never deleted)")]
    KeepZero,
    #[error("backup {0} is in progress: nothing was deleted; prune again when it has finished")]
    BackupInProgress(BackupId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RetentionError {
    /// The exit code of `walden prune` for this error.
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            RetentionError::NoPolicy | RetentionError::KeepZero => exit::USAGE,
            RetentionError::BackupInProgress(_) => exit::BUSY,
            RetentionError::Store(e) if e.is_config() => exit::USAGE,
            RetentionError::Store(_) => exit::FAILURE,
        }
    }
}

/// Why a backup is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepReason {
    /// The newest complete backup: never deleted.
    Newest,
    /// Among the newest `keep_backups`.
    KeepBackups,
    /// Needed for a restore within the recovery window.
    RecoveryWindow,
    /// Its `backup.json` cannot be read: a human should look at it.
    Unreadable,
}

impl KeepReason {
    fn text(self) -> &'static str {
        match self {
            KeepReason::Newest => "newest",
            KeepReason::KeepBackups => "keep-backups",
            KeepReason::RecoveryWindow => "recovery window",
            KeepReason::Unreadable => "backup.json unreadable",
        }
    }
}

/// A complete backup, as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackupEntry {
    pub id: BackupId,
    #[serde(skip)]
    pub path: PathBuf,
    pub start_time: Option<String>,
    pub stop_time: Option<String>,
    pub start_lsn: Option<Lsn>,
    pub start_timeline: Option<TimelineId>,
    /// Bytes on disk; counted for the backups deleted only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Empty for a backup deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_because: Vec<KeepReason>,
}

/// What a policy lets go, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub delete_backups: Vec<BackupEntry>,
    pub keep_backups: Vec<BackupEntry>,
    /// WAL before this segment (on every timeline) may go; `None`: no WAL is deleted.
    pub wal_cutoff: Option<SegNo>,
    pub delete_wal: Vec<StoredSegment>,
    pub warnings: Vec<String>,
}

/// The fields of `backup.json` retention reads.
#[derive(Deserialize)]
struct Record {
    start_lsn: Lsn,
    start_timeline: TimelineId,
    start_time: String,
    stop_time: String,
}

/// Decides what `policy` lets go at time `now`, given the cluster's backups (as
/// [`list_backups`] returns them), its WAL files (as [`WalArchive::list_wal`] returns them) and
/// the parsed history files. Refuses while any backup is in progress. Interrupted backups
/// are not part of the plan (see [`prune`]).
///
/// Backups: the newest complete one is kept, then the newest `keep_backups`, then those that
/// ended after `now - recovery_window` and the newest one that ended at or before it; a
/// backup whose `backup.json` cannot be read is kept. The rest go.
///
/// WAL: files whose segment number is below the segment of the oldest kept backup's start,
/// on every timeline; a `.partial` only if its timeline ended (a history file names it as a
/// parent, and a newer timeline exists). History files are never part of the plan. If a kept
/// backup's start is unknown, no WAL goes.
pub fn plan_retention(
    policy: &RetentionPolicy,
    now: SystemTime,
    backups: &[StoredBackup],
    wal: &[StoredSegment],
    histories: &[TimelineHistory],
    seg_size: WalSegSize,
) -> Result<Plan, RetentionError> {
    policy.validate()?;
    if let Some(running) = backups.iter().find(|b| b.in_progress) {
        return Err(RetentionError::BackupInProgress(running.id));
    }
    let mut complete: Vec<&StoredBackup> = backups
        .iter()
        .filter(|b| !b.in_progress && !b.abandoned)
        .collect();
    complete.sort_by_key(|b| b.id);
    let records: Vec<Option<Record>> = complete
        .iter()
        .map(|b| {
            b.json
                .as_ref()
                .and_then(|j| serde_json::from_value::<Record>(j.clone()).ok())
        })
        .collect();
    let stop_times: Vec<Option<SystemTime>> = records
        .iter()
        .map(|r| {
            r.as_ref()
                .and_then(|r| humantime::parse_rfc3339(&r.stop_time).ok())
        })
        .collect();

    let count = complete.len();
    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); count];
    for (i, why) in reasons.iter_mut().enumerate() {
        // Positions from the newest: 0 is the newest.
        let from_newest = count - 1 - i;
        if from_newest == 0 {
            why.push(KeepReason::Newest);
        }
        if policy.keep_backups.is_some_and(|n| from_newest < n) {
            why.push(KeepReason::KeepBackups);
        }
        if stop_times.get(i).copied().flatten().is_none() {
            why.push(KeepReason::Unreadable);
        }
    }
    if let Some(window) = policy.recovery_window {
        let window_start = now.checked_sub(window);
        // The newest backup that ended at or before the window's start: the window's start
        // is reachable from it.
        let anchor = window_start.and_then(|start| {
            stop_times
                .iter()
                .rposition(|t| t.is_some_and(|t| t <= start))
        });
        for (i, why) in reasons.iter_mut().enumerate() {
            let within = match (window_start, stop_times.get(i).copied().flatten()) {
                (None, _) => true,
                (Some(start), Some(stop)) => stop > start,
                (Some(_), None) => false,
            };
            if within || anchor == Some(i) {
                why.push(KeepReason::RecoveryWindow);
            }
        }
    }

    let mut out = Plan {
        delete_backups: Vec::new(),
        keep_backups: Vec::new(),
        wal_cutoff: None,
        delete_wal: Vec::new(),
        warnings: Vec::new(),
    };
    for ((backup, record), why) in complete.iter().zip(&records).zip(reasons) {
        let entry = BackupEntry {
            id: backup.id,
            path: backup.path.clone(),
            start_time: record.as_ref().map(|r| r.start_time.clone()),
            stop_time: record.as_ref().map(|r| r.stop_time.clone()),
            start_lsn: record.as_ref().map(|r| r.start_lsn),
            start_timeline: record.as_ref().map(|r| r.start_timeline),
            bytes: None,
            kept_because: why,
        };
        if entry.kept_because.is_empty() {
            out.delete_backups.push(entry);
        } else {
            out.keep_backups.push(entry);
        }
    }
    if out.keep_backups.is_empty() {
        out.warnings
            .push("no complete backup: no WAL is deleted".to_string());
        return Ok(out);
    }
    if let Some(b) = out
        .keep_backups
        .iter()
        .find(|b| b.kept_because.contains(&KeepReason::Unreadable))
    {
        out.warnings.push(format!(
            "backup {} has no readable backup.json, so the WAL it needs is unknown: no WAL is deleted; check it with walden verify, then repair or remove it by hand",
            b.id
        ));
        return Ok(out);
    }
    let cutoff = out
        .keep_backups
        .iter()
        .filter_map(|b| b.start_lsn)
        .map(|lsn| lsn.segno(seg_size))
        .min();
    out.wal_cutoff = cutoff;
    let Some(cutoff) = cutoff else {
        return Ok(out);
    };

    let newest_tli = wal
        .iter()
        .map(|s| s.name.tli)
        .chain(histories.iter().map(|h| h.tli))
        .max();
    let ended: BTreeSet<TimelineId> = histories
        .iter()
        .flat_map(|h| h.entries.iter().map(|e| e.parent))
        .filter(|&tli| Some(tli) != newest_tli)
        .collect();
    let mut delete: Vec<StoredSegment> = wal
        .iter()
        .filter(|s| s.name.segno < cutoff && (!s.name.partial || ended.contains(&s.name.tli)))
        .cloned()
        .collect();
    delete.sort_by_key(|s| (s.name.segno, s.name.tli, s.name.partial, s.name.compressed));
    out.delete_wal = delete;
    Ok(out)
}

/// What `walden prune` did (or, in a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    pub cluster: String,
    pub dry_run: bool,
    pub deleted_backups: Vec<BackupEntry>,
    pub kept_backups: Vec<BackupEntry>,
    /// Directory names in `backups/` of interrupted backups and interrupted deletions.
    pub removed_interrupted: Vec<String>,
    pub deleted_wal: WalDeleted,
    /// WAL before this position (the start of the oldest kept backup's segment) is deleted;
    /// `null` when no WAL is.
    pub wal_kept_from: Option<Lsn>,
    /// Backups and WAL together.
    pub bytes_freed: u64,
    pub warnings: Vec<String>,
}

/// The WAL files deleted: the oldest and newest names, how many, their bytes on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WalDeleted {
    pub first: Option<String>,
    pub last: Option<String>,
    pub count: usize,
    pub bytes: u64,
}

/// Applies `policy` to cluster `cluster` at time `now` (see [`plan_retention`]); with `dry_run`,
/// only reports. Safe beside a running receiver; refuses while a backup is in progress.
pub fn prune(
    store_root: &Path,
    cluster: &ClusterName,
    policy: &RetentionPolicy,
    dry_run: bool,
    now: SystemTime,
) -> Result<PruneReport, RetentionError> {
    policy.validate()?;
    let reader = ClusterReader::open(store_root, cluster)?;
    let seg_size = reader.info().wal_segment_size;
    let backups_dir = reader.paths().backups();
    let has_backups = backups_dir.is_dir();
    // Held while backups are listed and deleted: no backup begins or commits meanwhile.
    let lock = if has_backups && !dry_run {
        Some(lock_backups(&backups_dir)?)
    } else {
        None
    };
    let listing = list_backups(store_root, cluster)?;
    let mut histories = Vec::new();
    let mut warnings = Vec::new();
    for tli in reader.history_files()? {
        let Some(bytes) = reader.read_history(tli)? else {
            continue;
        };
        match TimelineHistory::parse(tli, &String::from_utf8_lossy(&bytes)) {
            Ok(h) => histories.push(h),
            Err(e) => warnings.push(format!(
                "{e}: the .partial segments of the timelines it names are kept"
            )),
        }
    }
    let wal = reader.list_wal()?;
    let mut plan = plan_retention(policy, now, &listing, &wal, &histories, seg_size)?;
    for b in &mut plan.delete_backups {
        b.bytes = Some(tree_size(&b.path)?);
    }

    let leftovers = match (has_backups, dry_run) {
        (false, _) => Vec::new(),
        (true, true) => interrupted_dirs(&backups_dir)?,
        (true, false) => remove_interrupted(&backups_dir)?,
    };
    if !dry_run {
        for b in &plan.delete_backups {
            delete_backup(&backups_dir, b.id)?;
            tracing::info!("deleted backup {}", b.id);
        }
    }
    drop(lock);
    if let (Some(cutoff), false) = (plan.wal_cutoff, dry_run) {
        delete_wal(&plan.delete_wal, cutoff, seg_size, &reader.paths().wal())?;
    }

    let deleted_wal = WalDeleted {
        first: plan.delete_wal.first().map(|s| s.name.format(seg_size)),
        last: plan.delete_wal.last().map(|s| s.name.format(seg_size)),
        count: plan.delete_wal.len(),
        bytes: plan.delete_wal.iter().map(|s| s.size).sum(),
    };
    let backup_bytes: u64 = plan.delete_backups.iter().filter_map(|b| b.bytes).sum();
    warnings.extend(plan.warnings);
    Ok(PruneReport {
        cluster: cluster.to_string(),
        dry_run,
        bytes_freed: backup_bytes.saturating_add(deleted_wal.bytes),
        deleted_backups: plan.delete_backups,
        kept_backups: plan.keep_backups,
        removed_interrupted: leftovers
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect(),
        deleted_wal,
        wal_kept_from: plan.wal_cutoff.map(|s| s.start_lsn(seg_size)),
        warnings,
    })
}

/// Deletes WAL files, a directory at a time in order of their oldest segment, each
/// directory fsynced after its files went; then removes the directories emptied whose
/// whole range lies before `cutoff` (no writer can need them again).
fn delete_wal(
    segments: &[StoredSegment],
    cutoff: SegNo,
    seg_size: WalSegSize,
    wal_dir: &Path,
) -> Result<(), StoreError> {
    // 4 GiB of WAL per directory: the high half of the LSN is the directory's "xlogid".
    let xlogid = |segno: SegNo| segno.start_lsn(seg_size).0 >> 32;
    let mut by_dir: BTreeMap<PathBuf, (SegNo, Vec<&StoredSegment>)> = BTreeMap::new();
    for s in segments {
        let dir = s.path.parent().unwrap_or(wal_dir).to_path_buf();
        let group = by_dir.entry(dir).or_insert((s.name.segno, Vec::new()));
        group.0 = group.0.min(s.name.segno);
        group.1.push(s);
    }
    let mut dirs: Vec<(PathBuf, SegNo, Vec<&StoredSegment>)> = by_dir
        .into_iter()
        .map(|(dir, (first, files))| (dir, first, files))
        .collect();
    dirs.sort_by_key(|(dir, first, _)| (*first, dir.clone()));
    let mut removed_dirs = false;
    for (dir, first, files) in dirs {
        for s in files {
            match fs::remove_file(&s.path) {
                Ok(()) => {}
                // Another prune got there first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove", &s.path, e)),
            }
        }
        durable::sync_dir(&dir)?;
        if xlogid(first) < xlogid(cutoff) {
            match fs::remove_dir(&dir) {
                Ok(()) => removed_dirs = true,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                    ) => {}
                Err(e) => return Err(StoreError::io("remove directory", &dir, e)),
            }
        }
    }
    if removed_dirs {
        durable::sync_dir(wal_dir)?;
    }
    Ok(())
}

/// Bytes of the regular files under `dir` (symbolic links not followed).
fn tree_size(dir: &Path) -> Result<u64, StoreError> {
    let mut total = 0u64;
    let list = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    for entry in list {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(|e| StoreError::io("look at", &path, e))?;
        if meta.is_dir() {
            total = total.saturating_add(tree_size(&path)?);
        } else if meta.is_file() {
            total = total.saturating_add(meta.len());
        }
    }
    Ok(total)
}

impl PruneReport {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let (delete, remove) = if self.dry_run {
            ("would delete", "would remove")
        } else {
            ("deleted", "removed")
        };
        let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_string());
        for b in &self.deleted_backups {
            let _ = writeln!(
                out,
                "{delete} backup {} ({} .. {}, {} MB)",
                b.id,
                dash(&b.start_time),
                dash(&b.stop_time),
                b.bytes.unwrap_or(0) >> 20
            );
        }
        for b in &self.kept_backups {
            let why: Vec<&str> = b.kept_because.iter().map(|r| r.text()).collect();
            let _ = writeln!(
                out,
                "keep backup {} ({} .. {}; {})",
                b.id,
                dash(&b.start_time),
                dash(&b.stop_time),
                why.join(", ")
            );
        }
        for name in &self.removed_interrupted {
            let _ = writeln!(out, "{remove} leftover backup directory {name}");
        }
        match (&self.deleted_wal.first, &self.deleted_wal.last) {
            (Some(first), Some(last)) => {
                let _ = writeln!(
                    out,
                    "{delete} WAL {first} .. {last} ({} file{}, {} MB)",
                    self.deleted_wal.count,
                    if self.deleted_wal.count == 1 { "" } else { "s" },
                    self.deleted_wal.bytes >> 20
                );
            }
            _ => {
                let _ = writeln!(out, "no WAL to delete");
            }
        }
        if let Some(from) = self.wal_kept_from {
            let _ = writeln!(out, "WAL is kept from {from} on");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let _ = writeln!(
            out,
            "cluster {}: {} backup{} and {} WAL file{} {}, {} kept, {} MB freed",
            self.cluster,
            self.deleted_backups.len(),
            if self.deleted_backups.len() == 1 {
                ""
            } else {
                "s"
            },
            self.deleted_wal.count,
            if self.deleted_wal.count == 1 { "" } else { "s" },
            if self.dry_run { "would go" } else { "deleted" },
            self.kept_backups.len(),
            self.bytes_freed >> 20
        );
        out
    }
}

#[cfg(test)]
mod tests;
