//! Names and paths: cluster names, `cluster.json`, `gaps.json`, and where each file lives.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::StoreError;
use crate::pg::SystemId;
use crate::wal::{Lsn, SegNo, TimelineId, WalFileName, WalSegSize, history_file_name};

/// The `format` written into `cluster.json`; a store with a higher number is refused.
pub const FORMAT: u32 = 1;

/// The name of one source cluster inside a store: 1 to 64 characters of `A-Za-z0-9_.-`, not
/// starting with `.` (so it is always a plain directory name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(name: &str) -> Result<Self, StoreError> {
        let ok = (1..=64).contains(&name.len())
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(ClusterName(name.to_string()))
        } else {
            Err(StoreError::InvalidClusterName(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClusterName {
    /// `main`.
    fn default() -> Self {
        ClusterName("main".to_string())
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClusterName {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClusterName::new(s)
    }
}

impl TryFrom<String> for ClusterName {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ClusterName::new(&s)
    }
}

impl From<ClusterName> for String {
    fn from(n: ClusterName) -> String {
        n.0
    }
}

/// What the store needs to know about the server it receives from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerIdentity {
    pub system_id: SystemId,
    /// `server_version_num`, e.g. 150018.
    pub server_version_num: u32,
    pub wal_segment_size: WalSegSize,
}

/// The major version of a `server_version_num`: `15` for 150018, `9.6` for 90624.
pub fn major_version(server_version_num: u32) -> String {
    if server_version_num >= 100_000 {
        (server_version_num / 10_000).to_string()
    } else {
        format!(
            "{}.{}",
            server_version_num / 10_000,
            server_version_num / 100 % 100
        )
    }
}

/// `cluster.json`: which server a cluster directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster: ClusterName,
    /// Written as a string: 64-bit identifiers do not survive JSON readers that use doubles.
    #[serde(with = "sysid_string")]
    pub system_identifier: SystemId,
    /// The server's version when the cluster was created, updated on minor upgrades.
    pub server_version_num: u32,
    #[serde(with = "seg_size_bytes")]
    pub wal_segment_size: WalSegSize,
    /// UTC, `2026-11-22T19:30:00Z`.
    pub created: String,
    pub format: u32,
}

mod sysid_string {
    use super::SystemId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &SystemId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

mod seg_size_bytes {
    use super::WalSegSize;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(size: &WalSegSize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(size.bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WalSegSize, D::Error> {
        WalSegSize::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// WAL the server no longer had when we asked for it: an entry of `gaps.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub timeline: TimelineId,
    pub from: Lsn,
    pub to: Lsn,
    /// UTC time of detection, `2026-11-22T19:30:00Z` (see [`utc_now`](super::utc_now)).
    pub detected: String,
    pub reason: String,
}

/// The paths of one cluster directory.
#[derive(Clone, Debug)]
pub(crate) struct ClusterPaths {
    pub store: PathBuf,
    pub name: ClusterName,
    pub dir: PathBuf,
}

impl ClusterPaths {
    pub fn new(store: &Path, name: &ClusterName) -> Self {
        ClusterPaths {
            store: store.to_path_buf(),
            name: name.clone(),
            dir: store.join(name.as_str()),
        }
    }

    pub fn cluster_json(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }

    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }

    pub fn gaps_json(&self) -> PathBuf {
        self.dir.join("gaps.json")
    }

    pub fn backups(&self) -> PathBuf {
        self.dir.join("backups")
    }

    pub fn wal(&self) -> PathBuf {
        self.dir.join("wal")
    }

    /// `wal/<timeline and xlogid>/`: the first 16 hex digits of the segment's name.
    pub fn segment_dir(&self, tli: TimelineId, segno: SegNo, size: WalSegSize) -> PathBuf {
        let name = WalFileName::segment(tli, segno).format(size);
        self.wal().join(&name[..16])
    }

    pub fn segment(&self, name: &WalFileName, size: WalSegSize) -> PathBuf {
        self.segment_dir(name.tli, name.segno, size)
            .join(name.format(size))
    }

    pub fn history(&self, tli: TimelineId) -> PathBuf {
        self.wal().join(history_file_name(tli))
    }
}

/// Whether a directory entry is one of the store's own temporary files (`*.tmp`).
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.ends_with(".tmp")
}

/// Whether a directory entry is a copy kept after a conflict (`<name>.conflict.<n>`).
pub(crate) fn is_conflict_name(name: &str) -> bool {
    name.contains(".conflict.")
}

/// The first free `<path>.conflict.<n>`.
pub(crate) fn conflict_path(path: &Path) -> PathBuf {
    let mut n = 1u32;
    loop {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".conflict.{n}"));
        let candidate = PathBuf::from(s);
        if !candidate.exists() || n == u32::MAX {
            return candidate;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        for ok in ["main", "a", "db-1.prod_eu", &"x".repeat(64), "9"] {
            assert_eq!(ClusterName::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
            "a\0",
        ] {
            let err = ClusterName::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid cluster name"), "{bad:?}: {err}");
        }
        assert_eq!(ClusterName::default().as_str(), "main");
        assert!(serde_json::from_str::<ClusterName>("\"../x\"").is_err());
    }

    #[test]
    fn cluster_json_shape() {
        let info = ClusterInfo {
            cluster: ClusterName::default(),
            system_identifier: SystemId(7711086575738853143),
            server_version_num: 150018,
            wal_segment_size: WalSegSize::DEFAULT,
            created: "2026-11-22T19:30:00Z".to_string(),
            format: FORMAT,
        };
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(
            json,
            r#"{"cluster":"main","system_identifier":"7711086575738853143","server_version_num":150018,"wal_segment_size":16777216,"created":"2026-11-22T19:30:00Z","format":1}"#
        );
        assert_eq!(serde_json::from_str::<ClusterInfo>(&json).unwrap(), info);
        let bad = json.replace("16777216", "1000");
        assert!(serde_json::from_str::<ClusterInfo>(&bad).is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(major_version(150018), "15");
        assert_eq!(major_version(180000), "18");
        assert_eq!(major_version(90624), "9.6");
    }

    #[test]
    fn gap_json() {
        let gap = Gap {
            timeline: TimelineId(2),
            from: Lsn(0x100_0000),
            to: Lsn(0x300_0000),
            detected: "2026-11-22T19:30:00Z".into(),
            reason: "requested WAL segment has already been removed".into(),
        };
        let json = serde_json::to_string(&gap).unwrap();
        assert!(json.contains(r#""timeline":2,"from":"0/1000000","to":"0/3000000""#));
        assert_eq!(serde_json::from_str::<Gap>(&json).unwrap(), gap);
    }
}
