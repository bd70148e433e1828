//! The backups a store holds (`walden list`) and whether each still matches its manifest
//! (`walden verify`).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::Serialize;

use crate::backup::manifest::{Manifest, compare};
use crate::backup::tar_stream::{ChecksumAlgorithm, FileSummary, TarStream};
use crate::store::{ClusterName, StoreError, StoredBackup, list_backups};

/// One backup as `walden list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct BackupSummary {
    pub id: String,
    /// `complete`, `in progress` or `abandoned`.
    pub status: &'static str,
    pub label: Option<String>,
    pub start_time: Option<String>,
    pub stop_time: Option<String>,
    pub start_lsn: Option<String>,
    pub stop_lsn: Option<String>,
    pub start_timeline: Option<u32>,
    pub stop_timeline: Option<u32>,
    pub bytes: Option<u64>,
    pub compression: Option<String>,
    pub includes_wal: Option<bool>,
}

/// Every backup of the cluster, oldest first.
pub fn backups(store: &Path, cluster: &ClusterName) -> Result<Vec<BackupSummary>, StoreError> {
    Ok(list_backups(store, cluster)?
        .into_iter()
        .map(|b| summarize(&b))
        .collect())
}

fn summarize(b: &StoredBackup) -> BackupSummary {
    let json = b.json.as_ref();
    let text = |key: &str| {
        json.and_then(|j| j.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let number = |key: &str| json.and_then(|j| j.get(key)).and_then(|v| v.as_u64());
    BackupSummary {
        id: b.id.to_string(),
        status: if b.in_progress {
            "in progress"
        } else if b.abandoned {
            "abandoned"
        } else {
            "complete"
        },
        label: text("label"),
        start_time: text("start_time"),
        stop_time: text("stop_time"),
        start_lsn: text("start_lsn"),
        stop_lsn: text("stop_lsn"),
        start_timeline: number("start_timeline").and_then(|n| u32::try_from(n).ok()),
        stop_timeline: number("stop_timeline").and_then(|n| u32::try_from(n).ok()),
        bytes: number("bytes"),
        compression: text("compression"),
        includes_wal: json
            .and_then(|j| j.get("includes_wal"))
            .and_then(|v| v.as_bool()),
    }
}

/// One thing wrong with a stored backup.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackupProblem {
    pub backup: String,
    pub problem: String,
}

/// Re-reads every complete backup's archives and compares them with its manifest.
pub fn verify_backups(
    store: &Path,
    cluster: &ClusterName,
) -> Result<(usize, Vec<BackupProblem>), StoreError> {
    let mut problems = Vec::new();
    let mut checked = 0;
    for backup in list_backups(store, cluster)? {
        if backup.in_progress || backup.abandoned {
            continue;
        }
        checked += 1;
        let id = backup.id.to_string();
        if let Err(problem) = verify_one(&backup.path) {
            problems.push(BackupProblem {
                backup: id,
                problem,
            });
        }
    }
    Ok((checked, problems))
}

fn verify_one(dir: &Path) -> Result<(), String> {
    let manifest_bytes = std::fs::read(dir.join("backup_manifest"))
        .map_err(|e| format!("cannot read backup_manifest: {e}"))?;
    let manifest = Manifest::parse(&manifest_bytes).map_err(|e| format!("backup_manifest: {e}"))?;
    let algorithm = manifest
        .checksum_algorithm()
        .unwrap_or(ChecksumAlgorithm::Crc32c);
    let mut files: Vec<FileSummary> = Vec::new();
    let mut entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar") || n.ends_with(".tar.zst"))
        .collect();
    entries.sort();
    if !entries.iter().any(|n| n.starts_with("base.tar")) {
        return Err("base.tar is missing".into());
    }
    for name in entries {
        let stem = name.trim_end_matches(".zst").trim_end_matches(".tar");
        let prefix = if stem == "base" {
            String::new()
        } else {
            format!("pg_tblspc/{stem}")
        };
        let path = dir.join(&name);
        let file = File::open(&path).map_err(|e| format!("cannot open {name}: {e}"))?;
        let mut reader: Box<dyn Read> = if name.ends_with(".zst") {
            Box::new(
                zstd::stream::read::Decoder::new(file)
                    .map_err(|e| format!("cannot decompress {name}: {e}"))?,
            )
        } else {
            Box::new(BufReader::new(file))
        };
        let mut tar = TarStream::new(name.clone(), &prefix, algorithm);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| format!("cannot read {name}: {e}"))?;
            if n == 0 {
                break;
            }
            tar.feed(&buf[..n]).map_err(|e| format!("{name}: {e}"))?;
        }
        let contents = tar.finish().map_err(|e| format!("{name}: {e}"))?;
        files.extend(contents.files);
    }
    let mismatches = compare(&manifest, files);
    if mismatches.is_empty() {
        Ok(())
    } else {
        let list: Vec<String> = mismatches.iter().map(ToString::to_string).collect();
        Err(format!("does not match its manifest: {}", list.join("; ")))
    }
}
