//! The read side of a cluster: listing and looking up WAL, history files and gaps, and
//! opening a segment as a stream of its (decompressed) bytes. No lock is taken: everything a
//! reader can see was put in place by an atomic rename.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use super::layout::{
    ClusterInfo, ClusterName, ClusterPaths, FORMAT, Gap, is_conflict_name, is_temp_name,
};
use crate::wal::{SegNo, TimelineId, WalFileName, WalSegSize, parse_history_file_name};

/// One WAL file held by a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSegment {
    pub name: WalFileName,
    pub path: PathBuf,
    /// Bytes on disk (compressed size for `.zst`).
    pub size: u64,
}

/// The read side of a store, as `wal-fetch`, `restore` and `list` need it. The local
/// directory store implements it; an object-store tier can implement it beside it.
pub trait WalArchive {
    /// What `cluster.json` says.
    fn info(&self) -> &ClusterInfo;

    /// Every WAL file, sorted by (timeline, segment number), complete before partial, plain
    /// before compressed. Files whose names do not parse are logged and left out.
    fn list_wal(&self) -> Result<Vec<StoredSegment>>;

    /// The file holding one segment, looked up by name without listing anything: a complete
    /// segment (plain, then `.zst`), else a `.partial`. `None` if the store has none.
    fn find_segment(&self, tli: TimelineId, segno: SegNo) -> Result<Option<StoredSegment>>;

    /// The timelines that have a history file, ascending.
    fn history_files(&self) -> Result<Vec<TimelineId>>;

    /// The content of a timeline's history file, `None` if the store has none.
    fn read_history(&self, tli: TimelineId) -> Result<Option<Vec<u8>>>;

    /// The recorded WAL gaps, oldest first.
    fn gaps(&self) -> Result<Vec<Gap>>;

    /// The segment's bytes, decompressed, as a stream (bounded memory).
    fn open_segment(&self, segment: &StoredSegment) -> Result<Box<dyn Read + Send>>;
}

/// A cluster directory of a local store, opened for reading.
#[derive(Clone, Debug)]
pub struct ClusterReader {
    paths: ClusterPaths,
    info: ClusterInfo,
}

impl ClusterReader {
    /// Opens `<store_root>/<name>` by reading its `cluster.json`.
    pub fn open(store_root: &Path, name: &ClusterName) -> Result<ClusterReader> {
        let paths = ClusterPaths::new(store_root, name);
        match read_cluster_info(&paths)? {
            Some(info) => Ok(ClusterReader { paths, info }),
            None => Err(StoreError::NoCluster {
                store: store_root.to_path_buf(),
                cluster: name.to_string(),
            }),
        }
    }

    pub(crate) fn from_parts(paths: ClusterPaths, info: ClusterInfo) -> ClusterReader {
        ClusterReader { paths, info }
    }

    pub(crate) fn paths(&self) -> &ClusterPaths {
        &self.paths
    }

    fn seg_size(&self) -> WalSegSize {
        self.info.wal_segment_size
    }

    fn stored(&self, name: WalFileName) -> Result<Option<StoredSegment>> {
        let path = self.paths.segment(&name, self.seg_size());
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(StoredSegment {
                name,
                path,
                size: m.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("look at", &path, e)),
        }
    }

    /// The segments in one `wal/<16 hex digits>/` directory. Retention may remove old
    /// segments and their emptied directory while we list: what vanished is left out.
    fn scan_segment_dir(
        &self,
        dir: &Path,
        prefix: &str,
        out: &mut Vec<StoredSegment>,
    ) -> Result<()> {
        let list = match fs::read_dir(dir) {
            Ok(list) => list,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("list", dir, e)),
        };
        for entry in list {
            let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                tracing::warn!(dir = %dir.display(), name = ?file_name, "ignoring a file whose name is not a WAL segment name");
                continue;
            };
            if is_temp_name(name) {
                continue;
            }
            if is_conflict_name(name) {
                tracing::warn!(path = %entry.path().display(), "a conflicting copy of a segment is kept here for inspection");
                continue;
            }
            let parsed = match WalFileName::parse(name, self.seg_size()) {
                Ok(p) if name.starts_with(prefix) => p,
                Ok(_) => {
                    tracing::warn!(path = %entry.path().display(), "ignoring a WAL segment in the wrong directory");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), "ignoring an unknown file: {e}");
                    continue;
                }
            };
            let path = entry.path();
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("look at", &path, e)),
            };
            if !meta.is_file() {
                tracing::warn!(path = %path.display(), "ignoring something that is not a file");
                continue;
            }
            out.push(StoredSegment {
                name: parsed,
                path,
                size: meta.len(),
            });
        }
        Ok(())
    }
}

impl WalArchive for ClusterReader {
    fn info(&self) -> &ClusterInfo {
        &self.info
    }

    fn list_wal(&self) -> Result<Vec<StoredSegment>> {
        let wal = self.paths.wal();
        let mut out = Vec::new();
        if !wal.exists() {
            return Ok(out);
        }
        for entry in read_dir(&wal)? {
            let entry = entry.map_err(|e| StoreError::io("list", &wal, e))?;
            let file_name = entry.file_name();
            let name = file_name.to_str().unwrap_or("");
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && is_segment_dir_name(name) {
                self.scan_segment_dir(&entry.path(), name, &mut out)?;
            } else if !(parse_history_file_name(name).is_some() || is_temp_name(name)) {
                if is_conflict_name(name) {
                    tracing::warn!(path = %entry.path().display(), "a conflicting copy of a history file is kept here for inspection");
                } else {
                    tracing::warn!(path = %entry.path().display(), "ignoring an unknown file in the WAL directory");
                }
            }
        }
        out.sort_by_key(|s| (s.name.tli, s.name.segno, s.name.partial, s.name.compressed));
        Ok(out)
    }

    fn find_segment(&self, tli: TimelineId, segno: SegNo) -> Result<Option<StoredSegment>> {
        let plain = WalFileName::segment(tli, segno);
        let candidates = [
            plain,
            WalFileName {
                compressed: true,
                ..plain
            },
            WalFileName {
                partial: true,
                ..plain
            },
        ];
        for name in candidates {
            if let Some(found) = self.stored(name)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn history_files(&self) -> Result<Vec<TimelineId>> {
        let wal = self.paths.wal();
        let mut out = Vec::new();
        if !wal.exists() {
            return Ok(out);
        }
        for entry in read_dir(&wal)? {
            let entry = entry.map_err(|e| StoreError::io("list", &wal, e))?;
            if let Some(tli) = entry.file_name().to_str().and_then(parse_history_file_name) {
                out.push(tli);
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_history(&self, tli: TimelineId) -> Result<Option<Vec<u8>>> {
        let path = self.paths.history(tli);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read", &path, e)),
        }
    }

    fn gaps(&self) -> Result<Vec<Gap>> {
        let path = self.paths.gaps_json();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| StoreError::BadMetadata {
            path,
            reason: e.to_string(),
        })
    }

    fn open_segment(&self, segment: &StoredSegment) -> Result<Box<dyn Read + Send>> {
        let file =
            File::open(&segment.path).map_err(|e| StoreError::io("open", &segment.path, e))?;
        // Read front to back, once: a hint for a larger readahead window.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        if segment.name.compressed {
            let decoder = zstd::stream::read::Decoder::new(file)
                .map_err(|e| StoreError::io("start decompressing", &segment.path, e))?;
            Ok(Box::new(decoder))
        } else {
            Ok(Box::new(BufReader::new(file)))
        }
    }
}

/// `cluster.json`, or `None` if the cluster directory has none.
pub(crate) fn read_cluster_info(paths: &ClusterPaths) -> Result<Option<ClusterInfo>> {
    let path = paths.cluster_json();
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", &path, e)),
    };
    let info: ClusterInfo =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if info.format != FORMAT {
        return Err(StoreError::BadMetadata {
            path,
            reason: format!(
                "format {} is not {FORMAT}: it was written by another walden version",
                info.format
            ),
        });
    }
    if info.cluster != paths.name {
        return Err(StoreError::BadMetadata {
            path,
            reason: format!(
                "it names cluster {:?}, not {:?}",
                info.cluster.as_str(),
                paths.name.as_str()
            ),
        });
    }
    Ok(Some(info))
}

fn read_dir(dir: &Path) -> Result<fs::ReadDir> {
    fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))
}

/// `0000000100000000`: 16 upper-case hex digits, as the first part of a segment name.
fn is_segment_dir_name(name: &str) -> bool {
    name.len() == 16
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}
