//! Base backups in the store: backup ids, taking a backup into `<ID>.partial/` and committing
//! it to `<ID>/`, removing interrupted ones, and listing what `backups/` holds.
//!
//! Every change to an entry of `backups/` (creating a `.partial`, renaming it into place,
//! removing one) happens under a short `flock` on `backups/lock`, so two backups starting at
//! once never race. A running backup holds a `flock` on `<ID>.partial/lock` for its whole
//! life; a `.partial` whose lock is free was interrupted. A complete backup is deleted by
//! renaming `<ID>` to `<ID>.deleting` durably, then removing that tree: a crash never leaves
//! a half-deleted directory under a complete backup's name, and a `.deleting` left by one is
//! ignored by listings and removed by the next backup or prune.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::durable;
use super::error::{Result, StoreError};
use super::format_utc;
use super::layout::{ClusterName, ClusterPaths, is_temp_name};

/// The name of the lock file, in `backups/` and in each `<ID>.partial/`.
const LOCK: &str = "lock";
const BACKUP_JSON: &str = "backup.json";
const PARTIAL: &str = ".partial";
const DELETING: &str = ".deleting";

/// What a backup directory's name says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryKind {
    /// `<ID>`: complete.
    Complete,
    /// `<ID>.partial`: being taken, or interrupted.
    Partial,
    /// `<ID>.deleting`: being deleted, or left by a crash while it was.
    Deleting,
}

/// A backup's id: its UTC start time, `20261122T193000Z`, with `-2`, `-3`... when a backup
/// with that time exists already. Ordered by time, then by that number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 when there is no `-N`.
    seq: u32,
}

impl BackupId {
    /// The id of a backup started at `t` (UTC, to the second), without a `-N`.
    pub fn from_time(t: SystemTime) -> Result<BackupId> {
        let id: String = format_utc(t)
            .chars()
            .filter(|c| !matches!(c, '-' | ':'))
            .collect();
        id.parse()
    }

    /// The id after this one for the same start time: `X` → `X-2` → `X-3`...
    fn next(self) -> BackupId {
        BackupId {
            seq: self.seq.saturating_add(1),
            ..self
        }
    }

    fn parse(s: &str) -> Option<BackupId> {
        let (time, seq) = match s.split_once('-') {
            Some((time, n)) if !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()) => {
                (time, n.parse().ok().filter(|&n| n >= 2)?)
            }
            Some(_) => return None,
            None => (s, 1),
        };
        if time.len() != 16 || time.get(8..9) != Some("T") || time.get(15..) != Some("Z") {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<u16> {
            let digits = time.get(from..to)?;
            digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse().ok())?
        };
        let small = |from, to| num(from, to).and_then(|n| u8::try_from(n).ok());
        let id = BackupId {
            year: num(0, 4)?,
            month: small(4, 6)?,
            day: small(6, 8)?,
            hour: small(9, 11)?,
            minute: small(11, 13)?,
            second: small(13, 15)?,
            seq,
        };
        let y = id.year;
        let leap = y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let days = match id.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        let valid =
            (1..=days).contains(&id.day) && id.hour < 24 && id.minute < 60 && id.second < 60;
        valid.then_some(id)
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )?;
        if self.seq > 1 {
            write!(f, "-{}", self.seq)?;
        }
        Ok(())
    }
}

impl FromStr for BackupId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        BackupId::parse(s).ok_or_else(|| StoreError::InvalidBackupId(s.to_string()))
    }
}

impl TryFrom<String> for BackupId {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.to_string()
    }
}

/// `STORE/<cluster>/backups/<ID>`: where the complete backup `id` is (or would be).
pub fn backup_dir(store_root: &Path, name: &ClusterName, id: BackupId) -> PathBuf {
    ClusterPaths::new(store_root, name)
        .backups()
        .join(id.to_string())
}

/// A backup being taken into `<ID>.partial/`, holding that directory's lock until it is
/// committed, abandoned or dropped. Dropped without [`commit`](Self::commit), it leaves an
/// interrupted `.partial` that the next [`begin`](Self::begin) removes.
#[derive(Debug)]
pub struct BackupWriter {
    backups: PathBuf,
    id: BackupId,
    dir: PathBuf,
    _lock: File,
}

impl BackupWriter {
    /// Starts a backup of cluster `name` (bound by [`bind_cluster`](super::bind_cluster)),
    /// begun at `started`: removes interrupted backups of the cluster, picks a fresh id and
    /// creates `<ID>.partial/`, locked.
    pub fn begin(store_root: &Path, name: &ClusterName, started: SystemTime) -> Result<Self> {
        let paths = ClusterPaths::new(store_root, name);
        if !paths.cluster_json().is_file() {
            return Err(StoreError::NoCluster {
                store: store_root.to_path_buf(),
                cluster: name.to_string(),
            });
        }
        let backups = paths.backups();
        durable::create_dir_all_durable(&backups)?;
        let _guard = lock_backups(&backups)?;
        remove_interrupted(&backups)?;
        let mut id = BackupId::from_time(started)?;
        let dir = loop {
            let dir = partial_dir(&backups, id);
            if !backups.join(id.to_string()).exists() {
                match fs::create_dir(&dir) {
                    Ok(()) => break dir,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(StoreError::io("create directory", &dir, e)),
                }
            }
            id = id.next();
        };
        durable::sync_dir(&backups)?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io("create", &lock_path, e))?;
        // Blocking: a listing may be testing this fresh lock for a moment.
        lock.lock()
            .map_err(|e| StoreError::io("lock", &lock_path, e))?;
        Ok(BackupWriter {
            backups,
            id,
            dir,
            _lock: lock,
        })
    }

    pub fn id(&self) -> BackupId {
        self.id
    }

    /// The `<ID>.partial` directory being written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the new file `rel_name` in the backup (`base.tar`, `16384.tar.zst`,
    /// `backup_manifest`, `config/postgresql.conf`...), creating its directories. A relative
    /// path of plain names only; `lock`, `backup.json` and `*.tmp` are the store's own.
    pub fn create_file(&self, rel_name: &str) -> Result<File> {
        check_file_name(rel_name)?;
        let path = self.dir.join(rel_name);
        if let Some(parent) = path.parent() {
            durable::create_dir_all_durable(parent)?;
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io("create", &path, e))
    }

    /// Completes the backup: fsyncs every file and directory in it, writes `backup.json`
    /// atomically, removes the lock file and renames `<ID>.partial` to `<ID>`, durably.
    /// Returns the final directory.
    pub fn commit(self, backup_json: &[u8]) -> Result<PathBuf> {
        durable::sync_tree(&self.dir)?;
        durable::write_file_atomic(&self.dir.join(BACKUP_JSON), backup_json)?;
        let done = self.backups.join(self.id.to_string());
        let _guard = lock_backups(&self.backups)?;
        // Removing the lock fsyncs the directory, which sync_tree has made whole.
        durable::remove_file_durable(&self.dir.join(LOCK))?;
        durable::rename_synced(&self.dir, &done)?;
        Ok(done)
    }

    /// Removes the `.partial` directory now (a backup that failed cleanly).
    pub fn abandon(self) -> Result<()> {
        let _guard = lock_backups(&self.backups)?;
        durable::remove_dir_all_durable(&self.dir)
    }
}

/// One entry of `backups/`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredBackup {
    pub id: BackupId,
    /// `backups/<ID>`, or `backups/<ID>.partial` for one not complete.
    pub path: PathBuf,
    /// A `.partial` whose writer is running (its lock is held).
    pub in_progress: bool,
    /// A `.partial` whose writer is gone; the next backup removes it.
    pub abandoned: bool,
    /// `backup.json`, parsed; `None` if missing or not JSON.
    pub json: Option<serde_json::Value>,
}

/// The backups of cluster `name`, complete and not, ordered by id (a complete one before a
/// `.partial` of the same id). Unknown entries of `backups/` are ignored with a warning.
pub fn list_backups(store_root: &Path, name: &ClusterName) -> Result<Vec<StoredBackup>> {
    let mut out = Vec::new();
    for (id, path, kind) in entries(&ClusterPaths::new(store_root, name).backups())? {
        let partial = match kind {
            EntryKind::Complete => false,
            EntryKind::Partial => true,
            EntryKind::Deleting => continue,
        };
        let in_progress = partial && is_running(&path)?;
        let json = fs::read(path.join(BACKUP_JSON))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        out.push(StoredBackup {
            id,
            path,
            in_progress,
            abandoned: partial && !in_progress,
            json,
        });
    }
    out.sort_by_key(|b| (b.id, b.in_progress || b.abandoned));
    Ok(out)
}

/// Whether a backup of cluster `name` is being taken now.
pub fn backup_in_progress(store_root: &Path, name: &ClusterName) -> Result<bool> {
    for (_, path, kind) in entries(&ClusterPaths::new(store_root, name).backups())? {
        if kind == EntryKind::Partial && is_running(&path)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn partial_dir(backups: &Path, id: BackupId) -> PathBuf {
    backups.join(format!("{id}{PARTIAL}"))
}

/// The backup directories in `backups/` (none if it does not exist): id, path and kind.
fn entries(backups: &Path) -> Result<Vec<(BackupId, PathBuf, EntryKind)>> {
    let list = match fs::read_dir(backups) {
        Ok(list) => list,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("list", backups, e)),
    };
    let mut out = Vec::new();
    for entry in list {
        let entry = entry.map_err(|e| StoreError::io("list", backups, e))?;
        let path = entry.path();
        let file_name = entry.file_name();
        let name = file_name.to_str().unwrap_or("");
        if name == LOCK {
            continue;
        }
        let (id, kind) = if let Some(base) = name.strip_suffix(PARTIAL) {
            (BackupId::parse(base), EntryKind::Partial)
        } else if let Some(base) = name.strip_suffix(DELETING) {
            (BackupId::parse(base), EntryKind::Deleting)
        } else {
            (BackupId::parse(name), EntryKind::Complete)
        };
        match id {
            Some(id) if entry.file_type().is_ok_and(|t| t.is_dir()) => out.push((id, path, kind)),
            _ => {
                tracing::warn!(path = %path.display(), "ignoring an unknown entry in the backups directory")
            }
        }
    }
    Ok(out)
}

/// Whether the writer of the `.partial` directory `dir` holds its lock. One without a lock
/// file was interrupted between creating the directory and its lock.
fn is_running(dir: &Path) -> Result<bool> {
    let path = dir.join(LOCK);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io("open", &path, e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(StoreError::io("test the lock", &path, e)),
    }
}

/// Takes `backups/lock` (`backups/` must exist), waiting for it: held while an entry of
/// `backups/` changes. Released when the returned file is dropped.
pub(crate) fn lock_backups(backups: &Path) -> Result<File> {
    let path = backups.join(LOCK);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io("open", &path, e))?;
    file.lock().map_err(|e| StoreError::io("lock", &path, e))?;
    Ok(file)
}

/// Removes the `.partial` directories whose writer is gone and the `.deleting` ones a crash
/// left, returning their paths. The caller holds `backups/lock`.
pub(crate) fn remove_interrupted(backups: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (path, id, kind) in interrupted(backups)? {
        durable::remove_dir_all_durable(&path)?;
        match kind {
            EntryKind::Deleting => {
                tracing::warn!(path = %path.display(), "finished deleting backup {id}")
            }
            _ => tracing::warn!(path = %path.display(), "removed the interrupted backup {id}"),
        }
        removed.push(path);
    }
    Ok(removed)
}

/// The paths [`remove_interrupted`] would remove now.
pub(crate) fn interrupted_dirs(backups: &Path) -> Result<Vec<PathBuf>> {
    Ok(interrupted(backups)?
        .into_iter()
        .map(|(path, _, _)| path)
        .collect())
}

/// The `.partial` directories whose writer is gone and the `.deleting` ones.
fn interrupted(backups: &Path) -> Result<Vec<(PathBuf, BackupId, EntryKind)>> {
    let mut out = Vec::new();
    for (id, path, kind) in entries(backups)? {
        let gone = match kind {
            EntryKind::Complete => false,
            EntryKind::Partial => !is_running(&path)?,
            EntryKind::Deleting => true,
        };
        if gone {
            out.push((path, id, kind));
        }
    }
    Ok(out)
}

/// Deletes the complete backup `id`: renames `<ID>` to `<ID>.deleting` durably, then removes
/// that tree. The caller holds `backups/lock` (and has removed any older `.deleting` of the
/// same id with [`remove_interrupted`]).
pub(crate) fn delete_backup(backups: &Path, id: BackupId) -> Result<()> {
    let dir = backups.join(id.to_string());
    let deleting = backups.join(format!("{id}{DELETING}"));
    durable::rename_synced(&dir, &deleting)?;
    durable::remove_dir_all_durable(&deleting)
}

/// Accepts a relative path of plain names that are not the store's own files.
fn check_file_name(rel_name: &str) -> Result<()> {
    let plain = |part: &str| {
        !part.is_empty()
            && part.len() <= 255
            && !part.starts_with('.')
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let ok = rel_name.split('/').all(plain)
        && !matches!(rel_name, LOCK | BACKUP_JSON)
        && !is_temp_name(rel_name);
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidBackupFileName(rel_name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::SystemId;
    use crate::store::tests::{Holder, open, server};
    use crate::store::{ClusterInfo, ClusterReader, ClusterWriter, WalArchive, bind_cluster};
    use std::collections::BTreeSet;
    use std::io::Write;
    use std::process::Command;
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, UNIX_EPOCH};

    /// 2026-11-22T19:30:00Z plus `secs`.
    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_375_800 + secs)
    }

    fn id(s: &str) -> BackupId {
        s.parse().unwrap()
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        out.sort();
        out
    }

    /// A store with cluster `main` bound to the test server.
    fn bound() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        bind_cluster(root.path(), &ClusterName::default(), &server(16)).unwrap();
        root
    }

    fn begin(root: &Path, t: SystemTime) -> BackupWriter {
        BackupWriter::begin(root, &ClusterName::default(), t).unwrap()
    }

    fn list(root: &Path) -> Vec<(String, bool, bool)> {
        list_backups(root, &ClusterName::default())
            .unwrap()
            .into_iter()
            .map(|b| (b.id.to_string(), b.in_progress, b.abandoned))
            .collect()
    }

    #[test]
    fn backup_ids() {
        for ok in [
            "20261122T193000Z",
            "20261122T193000Z-2",
            "20261122T193000Z-4294967295",
            "20280229T235959Z",
            "20000229T000000Z",
            "19700101T000000Z",
        ] {
            assert_eq!(id(ok).to_string(), ok);
        }
        for bad in [
            "",
            "20261122T193000",
            "20261122t193000Z",
            "20261122 193000Z",
            "2026-11-22T19:30:00Z",
            "20261122T193000Z-",
            "20261122T193000Z-1",
            "20261122T193000Z-0",
            "20261122T193000Z-02",
            "20261122T193000Z-+3",
            "20261122T193000Z-4294967296",
            "20261122T193000Z.partial",
            "20261322T193000Z",
            "20261100T193000Z",
            "20260229T193000Z",
            "21000229T193000Z",
            "20260431T193000Z",
            "20261122T243000Z",
            "20261122T196000Z",
            "20261122T193060Z",
            "2026112+T193000Z",
            "lock",
        ] {
            let err = bad.parse::<BackupId>().unwrap_err();
            assert!(matches!(err, StoreError::InvalidBackupId(_)), "{bad:?}");
            assert!(err.is_config());
        }
        assert_eq!(
            BackupId::from_time(at(0)).unwrap().to_string(),
            "20261122T193000Z"
        );
        assert_eq!(
            BackupId::from_time(UNIX_EPOCH + Duration::from_millis(951_782_400_999))
                .unwrap()
                .to_string(),
            "20000229T000000Z"
        );
        assert_eq!(
            id("20261122T193000Z").next().to_string(),
            "20261122T193000Z-2"
        );
        // By time first, then by number.
        let mut ids = [
            id("20261122T193001Z"),
            id("20261122T193000Z-10"),
            id("20261122T193000Z-2"),
            id("20261122T193000Z"),
            id("20251231T235959Z-3"),
        ];
        ids.sort();
        let sorted: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(
            sorted,
            [
                "20251231T235959Z-3",
                "20261122T193000Z",
                "20261122T193000Z-2",
                "20261122T193000Z-10",
                "20261122T193001Z"
            ]
        );
        let json = serde_json::to_string(&id("20261122T193000Z-2")).unwrap();
        assert_eq!(json, r#""20261122T193000Z-2""#);
        assert_eq!(
            serde_json::from_str::<BackupId>(&json).unwrap(),
            id("20261122T193000Z-2")
        );
        assert!(serde_json::from_str::<BackupId>(r#""../x""#).is_err());
    }

    #[test]
    fn bind_cluster_creates_accepts_and_refuses_like_open() {
        let root = tempfile::tempdir().unwrap();
        let name = ClusterName::default();
        let info = bind_cluster(root.path(), &name, &server(16)).unwrap();
        let json = root.path().join("main/cluster.json");
        let stored: ClusterInfo = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        assert_eq!(stored, info);
        assert_eq!(info.system_identifier, SystemId(7711086575738853143));
        assert_eq!(
            names(&root.path().join("main")),
            ["cluster.json"],
            "no lock taken"
        );

        // Beside a receiver holding the lock: accepted, nothing changed.
        let receiver = open(root.path(), 16);
        assert_eq!(receiver.info(), &info);
        assert_eq!(bind_cluster(root.path(), &name, &server(16)).unwrap(), info);
        let before = fs::read(&json).unwrap();
        drop(receiver);

        // Refused with the very errors of ClusterWriter::open.
        let mut other = server(16);
        other.system_id = SystemId(456);
        let err = bind_cluster(root.path(), &name, &other).unwrap_err();
        assert_eq!(
            err.to_string(),
            ClusterWriter::open(root.path(), &name, &other)
                .unwrap_err()
                .to_string()
        );
        assert!(matches!(err, StoreError::SystemMismatch { .. }), "{err}");
        let err = bind_cluster(root.path(), &name, &server(64)).unwrap_err();
        assert!(matches!(err, StoreError::SegSizeMismatch { .. }), "{err}");
        let mut major = server(16);
        major.server_version_num = 160004;
        let err = bind_cluster(root.path(), &name, &major).unwrap_err();
        assert!(
            matches!(err, StoreError::MajorVersionMismatch { .. }),
            "{err}"
        );

        // A minor upgrade is accepted; only the lock holder records it.
        let mut minor = server(16);
        minor.server_version_num = 150020;
        let got = bind_cluster(root.path(), &name, &minor).unwrap();
        assert_eq!(got.server_version_num, 150018);
        assert_eq!(
            fs::read(&json).unwrap(),
            before,
            "bind_cluster changes nothing"
        );
        ClusterWriter::open(root.path(), &name, &minor).unwrap();
        let r = ClusterReader::open(root.path(), &name).unwrap();
        assert_eq!(r.info().server_version_num, 150020);
        assert_eq!(r.info().created, info.created);

        fs::write(&json, b"{not json").unwrap();
        let err = bind_cluster(root.path(), &name, &server(16)).unwrap_err();
        assert!(matches!(err, StoreError::BadMetadata { .. }), "{err}");
    }

    #[test]
    fn bind_cluster_racing_a_receiver_on_a_new_cluster() {
        for round in 0..20 {
            let root = tempfile::tempdir().unwrap();
            // The same server: both succeed and agree.
            let barrier = Arc::new(Barrier::new(2));
            let (b, p) = (Arc::clone(&barrier), root.path().to_path_buf());
            let receiver = std::thread::spawn(move || {
                b.wait();
                ClusterWriter::open(&p, &ClusterName::default(), &server(16))
                    .unwrap()
                    .info()
                    .clone()
            });
            barrier.wait();
            let bound = bind_cluster(root.path(), &ClusterName::default(), &server(16)).unwrap();
            let opened = receiver.join().unwrap();
            assert_eq!(bound.system_identifier, opened.system_identifier);
            let cluster = root.path().join("main");
            assert_eq!(
                names(&cluster),
                ["cluster.json", "lock", "wal"],
                "round {round}"
            );

            // Different servers on a fresh cluster: exactly one wins, the other is refused.
            let barrier = Arc::new(Barrier::new(2));
            let (b, p) = (Arc::clone(&barrier), root.path().to_path_buf());
            let name = ClusterName::new("fresh").unwrap();
            let n = name.clone();
            let first = std::thread::spawn(move || {
                b.wait();
                bind_cluster(&p, &n, &server(16))
            });
            let mut other = server(16);
            other.system_id = SystemId(456);
            barrier.wait();
            let second = bind_cluster(root.path(), &name, &other);
            let first = first.join().unwrap();
            let stored = ClusterReader::open(root.path(), &name)
                .unwrap()
                .info()
                .clone();
            match (first, second) {
                (Ok(a), Err(StoreError::SystemMismatch { .. })) => assert_eq!(a, stored),
                (Err(StoreError::SystemMismatch { .. }), Ok(b)) => assert_eq!(b, stored),
                other => panic!("round {round}: {other:?}"),
            }
            assert_eq!(names(&root.path().join("fresh")), ["cluster.json"]);
        }
    }

    #[test]
    fn begin_and_commit() {
        let root = bound();
        let w = begin(root.path(), at(0));
        let backups = root.path().join("main/backups");
        assert_eq!(w.id(), id("20261122T193000Z"));
        assert_eq!(w.dir(), backups.join("20261122T193000Z.partial"));
        assert_eq!(names(w.dir()), ["lock"]);
        assert!(backup_in_progress(root.path(), &ClusterName::default()).unwrap());

        w.create_file("base.tar")
            .unwrap()
            .write_all(b"base")
            .unwrap();
        w.create_file("16384.tar.zst")
            .unwrap()
            .write_all(b"ts")
            .unwrap();
        w.create_file("backup_manifest")
            .unwrap()
            .write_all(b"m")
            .unwrap();
        let mut conf = w.create_file("config/postgresql.conf").unwrap();
        conf.write_all(b"port = 5432\n").unwrap();
        w.create_file("config/pg_hba.conf").unwrap();
        // Not twice.
        assert!(matches!(
            w.create_file("base.tar"),
            Err(StoreError::Io { .. })
        ));
        assert_eq!(fs::read(w.dir().join("base.tar")).unwrap(), b"base");
        assert!(!w.dir().join(BACKUP_JSON).exists(), "only commit writes it");
        assert_eq!(
            list(root.path()),
            [("20261122T193000Z".into(), true, false)]
        );

        let done = w.commit(br#"{"status":"complete"}"#).unwrap();
        assert_eq!(done, backups.join("20261122T193000Z"));
        assert_eq!(
            done,
            backup_dir(root.path(), &ClusterName::default(), id("20261122T193000Z"))
        );
        assert_eq!(names(&backups), ["20261122T193000Z", "lock"]);
        assert_eq!(
            names(&done),
            [
                "16384.tar.zst",
                "backup.json",
                "backup_manifest",
                "base.tar",
                "config"
            ]
        );
        assert_eq!(
            names(&done.join("config")),
            ["pg_hba.conf", "postgresql.conf"]
        );
        assert_eq!(
            fs::read(done.join("config/postgresql.conf")).unwrap(),
            b"port = 5432\n"
        );
        assert!(!backup_in_progress(root.path(), &ClusterName::default()).unwrap());
        let listed = list_backups(root.path(), &ClusterName::default()).unwrap();
        assert_eq!(
            listed,
            [StoredBackup {
                id: id("20261122T193000Z"),
                path: done.clone(),
                in_progress: false,
                abandoned: false,
                json: Some(serde_json::json!({"status": "complete"})),
            }]
        );

        // Same start time again: the next number.
        let w = begin(root.path(), at(0));
        assert_eq!(w.id().to_string(), "20261122T193000Z-2");
        w.commit(b"{}").unwrap();
        // A clean failure removes its directory at once.
        let w = begin(root.path(), at(0));
        assert_eq!(w.id().to_string(), "20261122T193000Z-3");
        w.abandon().unwrap();
        assert_eq!(
            names(&backups),
            ["20261122T193000Z", "20261122T193000Z-2", "lock"]
        );
        // There is no cluster "other": no backup can begin.
        assert!(matches!(
            BackupWriter::begin(root.path(), &ClusterName::new("other").unwrap(), at(0)),
            Err(StoreError::NoCluster { .. })
        ));
    }

    #[test]
    fn create_file_takes_plain_relative_names_only() {
        let root = bound();
        let w = begin(root.path(), at(0));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "config/../../x",
            "./base.tar",
            "config//x",
            "config/",
            ".hidden",
            "config/.x",
            "a b",
            "a\\b",
            "lock",
            "backup.json",
            "base.tar.tmp",
            "tå",
        ] {
            let err = w.create_file(bad).unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidBackupFileName(_)),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(names(w.dir()), ["lock"], "nothing was created");
        w.create_file("config/lock").unwrap();
        w.create_file("pg_wal.tar").unwrap();
    }

    #[test]
    fn concurrent_backups_get_distinct_ids() {
        let root = bound();
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, p) = (Arc::clone(&barrier), root.path().to_path_buf());
                std::thread::spawn(move || {
                    b.wait();
                    begin(&p, at(0))
                })
            })
            .collect();
        let writers: Vec<BackupWriter> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let ids: BTreeSet<String> = writers.iter().map(|w| w.id().to_string()).collect();
        assert_eq!(
            ids.into_iter().collect::<Vec<_>>(),
            [
                "20261122T193000Z",
                "20261122T193000Z-2",
                "20261122T193000Z-3",
                "20261122T193000Z-4"
            ]
        );
        // All running, none removed as interrupted by the others.
        assert!(list(root.path()).iter().all(|(_, running, _)| *running));
        let done: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = writers
                .into_iter()
                .map(|w| s.spawn(move || w.commit(b"{}").unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(done.iter().all(|d| d.is_dir()));
        assert!(list(root.path()).iter().all(|(_, r, a)| !r && !a));
    }

    #[test]
    fn interrupted_backups_are_removed_and_running_ones_kept() {
        let root = bound();
        let backups = root.path().join("main/backups");
        // An interrupted backup: its writer is gone.
        let dropped = begin(root.path(), at(0));
        dropped.create_file("base.tar").unwrap();
        drop(dropped);
        // One whose directory was made but not its lock.
        fs::create_dir(backups.join("20261122T193002Z.partial")).unwrap();
        // A running one in another process: `flock -o` holds the lock itself, not its child.
        let live = backups.join("20261122T193001Z.partial");
        fs::create_dir(&live).unwrap();
        fs::write(live.join("lock"), b"").unwrap();
        let child = Command::new("flock")
            .args(["-x", "-o"])
            .arg(live.join("lock"))
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let holder = Holder {
            child,
            grandchild: None,
        };
        let name = ClusterName::default();
        let mut waited = 0;
        while !backup_in_progress(root.path(), &name).unwrap() {
            assert!(waited < 500, "the flock child never took the lock");
            std::thread::sleep(Duration::from_millis(10));
            waited += 1;
        }
        // Unknown entries are listed nowhere and left alone.
        fs::write(backups.join("notes.txt"), b"x").unwrap();
        fs::create_dir(backups.join("20261122T193003Z.old")).unwrap();
        assert_eq!(
            list(root.path()),
            [
                ("20261122T193000Z".into(), false, true),
                ("20261122T193001Z".into(), true, false),
                ("20261122T193002Z".into(), false, true),
            ]
        );

        let w = begin(root.path(), at(10));
        assert_eq!(
            names(&backups),
            [
                "20261122T193001Z.partial",
                "20261122T193003Z.old",
                "20261122T193010Z.partial",
                "lock",
                "notes.txt"
            ]
        );
        w.commit(b"not json").unwrap();
        assert_eq!(
            list(root.path()),
            [
                ("20261122T193001Z".into(), true, false),
                ("20261122T193010Z".into(), false, false),
            ]
        );
        let listed = list_backups(root.path(), &name).unwrap();
        assert_eq!(listed[1].json, None, "backup.json that is not JSON");

        // Its writer gone, the running one is interrupted too and goes with the next backup.
        drop(holder);
        let mut waited = 0;
        while backup_in_progress(root.path(), &name).unwrap() {
            assert!(waited < 500, "the lock was not released");
            std::thread::sleep(Duration::from_millis(10));
            waited += 1;
        }
        assert_eq!(
            list(root.path())[0],
            ("20261122T193001Z".into(), false, true)
        );
        begin(root.path(), at(20)).abandon().unwrap();
        assert_eq!(
            list(root.path()),
            [("20261122T193010Z".into(), false, false)]
        );
        // A missing cluster has no backups.
        assert_eq!(
            list_backups(root.path(), &ClusterName::new("nope").unwrap()).unwrap(),
            []
        );
    }

    #[test]
    fn writers_can_move_to_a_blocking_thread() {
        fn send<T: Send + 'static>() {}
        send::<BackupWriter>();
        send::<StoredBackup>();
    }
}
