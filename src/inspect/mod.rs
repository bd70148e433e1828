//! What a store holds (`walden list`) and whether it is intact (`walden verify`).

pub mod backups;
pub mod wal;

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::store::{ClusterName, ClusterReader, StoreError, WalArchive};
use crate::wal::{Lsn, TimelineId};

/// `walden list`: one cluster's contents.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    pub cluster: String,
    pub system_identifier: String,
    pub server_version_num: u32,
    pub wal_segment_size: u64,
    pub backups: Vec<backups::BackupSummary>,
    pub wal: wal::WalInventory,
    /// What a restore can reach; `None` without a usable backup.
    pub recoverable: Option<Window>,
}

/// The span a point-in-time restore from this store can reach.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// The oldest complete backup usable for it (no recorded gap after its stop position).
    pub from_backup: String,
    /// The earliest point: that backup's end (a restore cannot stop before it).
    pub from_time: Option<String>,
    pub from_lsn: String,
    /// The latest point: the end of valid WAL on the newest timeline.
    pub to_lsn: Option<Lsn>,
    pub to_timeline: Option<TimelineId>,
    /// When walden last wrote that WAL: the newest commit a restore can reach is at or
    /// before this time.
    pub to_time: Option<String>,
}

/// Lists a cluster of a store.
pub fn list(store: &Path, cluster: &ClusterName) -> Result<Listing, StoreError> {
    let reader = ClusterReader::open(store, cluster)?;
    let info = reader.info();
    let backups = backups::backups(store, cluster)?;
    let wal = wal::wal_inventory(&reader)?;
    let recoverable = window(&reader, &backups, &wal)?;
    Ok(Listing {
        cluster: cluster.to_string(),
        system_identifier: info.system_identifier.to_string(),
        server_version_num: info.server_version_num,
        wal_segment_size: info.wal_segment_size.bytes(),
        backups,
        wal,
        recoverable,
    })
}

/// The recoverable window: from the oldest complete backup after the last recorded gap to
/// the end of valid WAL on the newest timeline.
fn window(
    reader: &ClusterReader,
    backups: &[backups::BackupSummary],
    wal: &wal::WalInventory,
) -> Result<Option<Window>, StoreError> {
    let after_gaps = wal.gaps.iter().map(|g| g.to).max().unwrap_or(Lsn::INVALID);
    let usable = backups.iter().find(|b| {
        b.status == "complete"
            && b.stop_lsn
                .as_deref()
                .and_then(|l| l.parse::<Lsn>().ok())
                .is_some_and(|stop| stop >= after_gaps)
    });
    let Some(backup) = usable else {
        return Ok(None);
    };
    let end = wal::end_of_stored_wal(reader, wal)?;
    Ok(Some(Window {
        from_backup: backup.id.clone(),
        from_time: backup.stop_time.clone(),
        from_lsn: backup.stop_lsn.clone().unwrap_or_default(),
        to_lsn: end.as_ref().map(|e| e.lsn),
        to_timeline: end.as_ref().map(|e| e.timeline),
        to_time: end.and_then(|e| e.written),
    }))
}

impl Listing {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cluster {} (system {}, PostgreSQL {}, {} MB segments)",
            self.cluster,
            self.system_identifier,
            crate::store::major_version(self.server_version_num),
            self.wal_segment_size >> 20
        );
        if self.backups.is_empty() {
            let _ = writeln!(out, "backups: none");
        }
        for b in &self.backups {
            let dash = || "-".to_string();
            let _ = writeln!(
                out,
                "backup {} {}: {} .. {} (timeline {}), {} MB, {}{}",
                b.id,
                b.status,
                b.start_lsn.clone().unwrap_or_else(dash),
                b.stop_lsn.clone().unwrap_or_else(dash),
                b.stop_timeline.map_or_else(dash, |t| t.to_string()),
                b.bytes.unwrap_or(0) >> 20,
                b.stop_time.clone().unwrap_or_else(dash),
                b.label
                    .as_ref()
                    .map(|l| format!(", label {l:?}"))
                    .unwrap_or_default()
            );
        }
        if self.wal.timelines.is_empty() {
            let _ = writeln!(out, "WAL: none");
        }
        for t in &self.wal.timelines {
            let _ = writeln!(
                out,
                "WAL timeline {}: {} .. {} ({} segments{}){}",
                t.timeline,
                t.first_segment,
                t.last_segment,
                t.segments,
                if t.partial.is_empty() {
                    String::new()
                } else {
                    format!(", partial: {}", t.partial.join(", "))
                },
                match t.ends_at {
                    Some(end) => format!(", ends at {end}"),
                    None => String::new(),
                }
            );
            for name in &t.missing {
                let _ = writeln!(out, "  missing: {name}");
            }
        }
        match &self.recoverable {
            Some(w) => {
                let _ = writeln!(
                    out,
                    "recoverable: from {} ({}, backup {}) to {} on timeline {} (WAL last written {})",
                    w.from_time.as_deref().unwrap_or("-"),
                    w.from_lsn,
                    w.from_backup,
                    w.to_lsn.map_or_else(|| "-".to_string(), |l| l.to_string()),
                    w.to_timeline
                        .map_or_else(|| "-".to_string(), |t| t.to_string()),
                    w.to_time.as_deref().unwrap_or("-"),
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "recoverable: nothing (no complete backup after the last gap)"
                );
            }
        }
        for gap in &self.wal.gaps {
            let _ = writeln!(
                out,
                "gap on timeline {}: {} .. {} ({}; detected {})",
                gap.timeline, gap.from, gap.to, gap.reason, gap.detected
            );
        }
        out
    }
}

/// `walden verify`: what is wrong with a cluster of a store (nothing, ideally).
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub cluster: String,
    pub backups_checked: usize,
    pub backup_problems: Vec<backups::BackupProblem>,
    pub wal: wal::WalCheck,
}

impl Verification {
    pub fn is_ok(&self) -> bool {
        self.wal.problems.is_empty() && self.backup_problems.is_empty()
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for p in &self.backup_problems {
            let _ = writeln!(out, "backup {}: {}", p.backup, p.problem);
        }
        for p in &self.wal.problems {
            let _ = writeln!(out, "{}: {}", p.file, p.problem);
        }
        let problems = self.wal.problems.len() + self.backup_problems.len();
        let _ = writeln!(
            out,
            "cluster {}: {} backups and {} WAL segments checked ({} MB of WAL), {} problem{}",
            self.cluster,
            self.backups_checked,
            self.wal.segments_checked,
            self.wal.bytes_checked >> 20,
            problems,
            if problems == 1 { "" } else { "s" }
        );
        out
    }
}

/// Re-checks everything stored for a cluster.
pub fn verify(store: &Path, cluster: &ClusterName) -> Result<Verification, StoreError> {
    let reader = ClusterReader::open(store, cluster)?;
    let (backups_checked, backup_problems) = backups::verify_backups(store, cluster)?;
    Ok(Verification {
        cluster: cluster.to_string(),
        backups_checked,
        backup_problems,
        wal: wal::verify_wal(&reader)?,
    })
}
