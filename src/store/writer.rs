//! The one writer of a cluster directory: lock, `cluster.json` checks, start position, segment
//! writers, history files and gaps.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::durable;
use super::error::{Result, StoreError};
use super::layout::{
    ClusterInfo, ClusterName, ClusterPaths, FORMAT, Gap, ServerIdentity, conflict_path,
    is_temp_name, major_version,
};
use super::reader::{ClusterReader, StoredSegment, WalArchive, read_cluster_info};
use super::segment::SegmentWriter;
use super::utc_now;
use crate::wal::{Lsn, SegNo, TimelineId};

/// A cluster directory opened for writing, holding its lock.
#[derive(Debug)]
pub struct ClusterWriter {
    reader: ClusterReader,
    lock: Arc<File>,
    write_through: bool,
}

impl ClusterWriter {
    /// Opens (creating if needed) `<store_root>/<name>` for the server `server`: creates the
    /// directories durably, takes the cluster's lock, and creates or checks `cluster.json`.
    ///
    /// A different system identifier, segment size or major version is refused. A minor
    /// version change is accepted and recorded in `cluster.json`. Temporary files left by a
    /// crash are removed.
    pub fn open(
        store_root: &Path,
        name: &ClusterName,
        server: &ServerIdentity,
    ) -> Result<ClusterWriter> {
        let paths = ClusterPaths::new(store_root, name);
        durable::create_dir_all_durable(&paths.dir)?;
        let lock = take_lock(&paths)?;
        let mut info = bind(&paths, server)?;
        if info.server_version_num != server.server_version_num {
            tracing::info!(
                cluster = %paths.name,
                from = info.server_version_num,
                to = server.server_version_num,
                "server minor version changed; recording it in cluster.json"
            );
            info.server_version_num = server.server_version_num;
            write_cluster_info(&paths, &info)?;
        }
        durable::create_dir_all_durable(&paths.wal())?;
        remove_temp_files(&paths)?;
        Ok(ClusterWriter {
            reader: ClusterReader::from_parts(paths, info),
            lock,
            write_through: false,
        })
    }

    pub fn info(&self) -> &ClusterInfo {
        self.reader.info()
    }

    /// The read side of this cluster.
    pub fn reader(&self) -> &ClusterReader {
        &self.reader
    }

    /// Where to resume streaming, from the newest segment in the store (highest segment
    /// number; then highest timeline; then complete before partial): the start of that segment
    /// if it is a `.partial`, the start of the next one if complete. `None` for an empty store.
    ///
    /// Every complete uncompressed segment must be exactly the segment size, and a complete
    /// `.zst` chosen as newest must declare that size: anything else is a corrupt store.
    pub fn streaming_start(&self) -> Result<Option<(TimelineId, Lsn)>> {
        let size = self.info().wal_segment_size;
        let segments = self.reader.list_wal()?;
        for s in &segments {
            if !s.name.partial && !s.name.compressed && s.size != size.bytes() {
                return Err(StoreError::Corrupt {
                    path: s.path.clone(),
                    reason: format!("is {} bytes, not a whole {size} segment", s.size),
                });
            }
        }
        let Some(newest) = segments
            .iter()
            .max_by_key(|s| (s.name.segno, s.name.tli, !s.name.partial))
        else {
            return Ok(None);
        };
        let segno = if newest.name.partial {
            newest.name.segno
        } else {
            if newest.name.compressed {
                check_compressed_size(newest, size.bytes())?;
            }
            newest.name.segno.next()
        };
        Ok(Some((newest.name.tli, segno.start_lsn(size))))
    }

    /// Opens `<segment>.partial` for writing in its directory (created durably if needed).
    /// A new file is preallocated to the segment size and made durable before use; an
    /// existing full-size `.partial` is fsynced and reused from offset 0; one of any other size
    /// is refused.
    pub fn open_segment(&mut self, tli: TimelineId, segno: SegNo) -> Result<SegmentWriter> {
        let size = self.info().wal_segment_size;
        let dir = self.reader.paths().segment_dir(tli, segno, size);
        durable::create_dir_all_durable(&dir)?;
        SegmentWriter::open(
            &dir,
            tli,
            segno,
            size,
            Arc::clone(&self.lock),
            self.write_through,
        )
    }

    /// Whether segments are written through to the disk: every write is durable when it
    /// returns (direct I/O with `O_DSYNC`, see [`SegmentWriter`]), and new segments are
    /// filled with zeros when created. For synchronous mode, which makes every commit durable
    /// at once: one system call per commit instead of a write and an `fdatasync`. The zeros
    /// matter on ext4, where the first write into reserved, never-written space also changes
    /// the file's extent map, so each durable write would write the inode as well; written
    /// once at creation, they cost one more write of each segment, as pg_receivewal always
    /// pays. Where the file system has no direct I/O (tmpfs before Linux 6.6, some network
    /// file systems), writes go through the page cache and are fsynced on request.
    pub fn set_write_through(&mut self, write_through: bool) {
        self.write_through = write_through;
    }

    /// Stores a timeline history file atomically. An identical existing file is fine; a
    /// different one is kept, ours is written beside it as `<name>.conflict.<n>`, and
    /// [`StoreError::Conflict`] is returned.
    pub fn write_history(&self, tli: TimelineId, content: &[u8]) -> Result<()> {
        let path = self.reader.paths().history(tli);
        match self.reader.read_history(tli)? {
            None => durable::write_file_atomic(&path, content),
            Some(existing) if existing == content => Ok(()),
            Some(_) => {
                let kept = conflict_path(&path);
                durable::write_file_atomic(&kept, content)?;
                Err(StoreError::Conflict {
                    existing: path,
                    kept,
                })
            }
        }
    }

    pub fn has_history(&self, tli: TimelineId) -> bool {
        self.reader.paths().history(tli).is_file()
    }

    pub fn read_history(&self, tli: TimelineId) -> Result<Option<Vec<u8>>> {
        self.reader.read_history(tli)
    }

    /// Appends a gap to `gaps.json` (read, add, replace atomically).
    pub fn record_gap(&self, gap: Gap) -> Result<()> {
        let mut gaps = self.reader.gaps()?;
        gaps.push(gap);
        let path = self.reader.paths().gaps_json();
        let json = serde_json::to_vec_pretty(&gaps).map_err(|e| StoreError::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        durable::write_file_atomic(&path, &json)
    }

    pub fn gaps(&self) -> Result<Vec<Gap>> {
        self.reader.gaps()
    }
}

/// Binds `<store_root>/<name>` to the server `server` without taking the cluster's lock, for
/// a command that runs beside `walden receive` (a backup): creates the cluster directory and
/// `cluster.json` if missing, else checks the server with the rules of [`ClusterWriter::open`].
///
/// Returns `cluster.json` as stored. A minor upgrade is accepted but not recorded: only the
/// lock holder rewrites `cluster.json`. If another process creates `cluster.json` at the same
/// moment, one of the two wins and the other's server is checked against it.
pub fn bind_cluster(
    store_root: &Path,
    name: &ClusterName,
    server: &ServerIdentity,
) -> Result<ClusterInfo> {
    let paths = ClusterPaths::new(store_root, name);
    durable::create_dir_all_durable(&paths.dir)?;
    bind(&paths, server)
}

/// Reads `cluster.json`, creating it for `server` if missing (never replacing one another
/// process made first), and refuses a server it does not belong to. Returns it as stored.
fn bind(paths: &ClusterPaths, server: &ServerIdentity) -> Result<ClusterInfo> {
    let stored = match read_cluster_info(paths)? {
        Some(stored) => stored,
        None => {
            let info = ClusterInfo {
                cluster: paths.name.clone(),
                system_identifier: server.system_id,
                server_version_num: server.server_version_num,
                wal_segment_size: server.wal_segment_size,
                created: utc_now(),
                format: FORMAT,
            };
            if durable::create_file_atomic(&paths.cluster_json(), &cluster_json(paths, &info)?)? {
                return Ok(info);
            }
            // Another process created it first: check ours against theirs.
            read_cluster_info(paths)?.ok_or_else(|| StoreError::NoCluster {
                store: paths.store.clone(),
                cluster: paths.name.to_string(),
            })?
        }
    };
    check_identity(paths, &stored, server)?;
    Ok(stored)
}

/// Takes the exclusive, non-blocking lock on `<cluster>/lock` and writes our pid into it.
fn take_lock(paths: &ClusterPaths) -> Result<Arc<File>> {
    let path = paths.lock();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = (&file).take(32).read_to_string(&mut text);
            return Err(StoreError::Locked {
                store: paths.store.clone(),
                cluster: paths.name.to_string(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(StoreError::io("lock", &path, e)),
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
        .map_err(|e| StoreError::io("write our pid into", &path, e))?;
    Ok(Arc::new(file))
}

fn cluster_json(paths: &ClusterPaths, info: &ClusterInfo) -> Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(info).map_err(|e| StoreError::BadMetadata {
        path: paths.cluster_json(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    Ok(json)
}

fn write_cluster_info(paths: &ClusterPaths, info: &ClusterInfo) -> Result<()> {
    durable::write_file_atomic(&paths.cluster_json(), &cluster_json(paths, info)?)
}

/// Refuses a server that is not the one this cluster belongs to: another system identifier,
/// segment size or major version. A minor version change is accepted.
fn check_identity(
    paths: &ClusterPaths,
    stored: &ClusterInfo,
    server: &ServerIdentity,
) -> Result<()> {
    let stored_major = major_version(stored.server_version_num);
    let server_major = major_version(server.server_version_num);
    if stored.system_identifier != server.system_id {
        return Err(StoreError::SystemMismatch {
            store: paths.store.clone(),
            cluster: paths.name.to_string(),
            stored: stored.system_identifier,
            stored_desc: format!(
                "PostgreSQL {stored_major}, {} segments",
                stored.wal_segment_size
            ),
            server: server.system_id,
        });
    }
    if stored.wal_segment_size != server.wal_segment_size {
        return Err(StoreError::SegSizeMismatch {
            store: paths.store.clone(),
            cluster: paths.name.to_string(),
            stored: stored.wal_segment_size,
            server: server.wal_segment_size,
        });
    }
    if stored_major != server_major {
        return Err(StoreError::MajorVersionMismatch {
            store: paths.store.clone(),
            cluster: paths.name.to_string(),
            stored: stored_major,
            server: server_major,
        });
    }
    Ok(())
}

/// Removes `*.tmp` files a crash left in the cluster directory, `wal/` and its segment
/// directories. Only the lock holder writes temporary files, and it holds the lock now.
fn remove_temp_files(paths: &ClusterPaths) -> Result<()> {
    let wal = paths.wal();
    let mut dirs = vec![paths.dir.clone(), wal.clone()];
    for entry in fs::read_dir(&wal).map_err(|e| StoreError::io("list", &wal, e))? {
        let entry = entry.map_err(|e| StoreError::io("list", &wal, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    for dir in dirs {
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_file && entry.file_name().to_str().is_some_and(is_temp_name) {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing a temporary file left by an interrupted write");
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove", &path, e)),
                }
            }
        }
    }
    Ok(())
}

/// Checks that a complete `.zst` segment's frame headers declare a whole segment (one frame,
/// or several: see [`zstd_frames`](super::segment::zstd_frames)).
fn check_compressed_size(segment: &StoredSegment, expected: u64) -> Result<()> {
    let path = &segment.path;
    let bytes = fs::read(path).map_err(|e| StoreError::io("read", path, e))?;
    let frames = super::segment::zstd_frames(&bytes).ok_or_else(|| StoreError::Corrupt {
        path: path.clone(),
        reason: "is not whole zstd frames that each declare their content size".to_string(),
    })?;
    match frames.last().map_or(0, |f| f.offset + f.len) {
        n if n == expected => Ok(()),
        n => Err(StoreError::Corrupt {
            path: path.clone(),
            reason: format!("decompresses to {n} bytes, not a whole segment of {expected}"),
        }),
    }
}
