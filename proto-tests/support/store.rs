//! Read-only view of a walden store's cluster for tests: completed segments, `.partial`
//! files, history files, `cluster.json`, `gaps.json`, and the end of valid WAL (with the
//! library's `find_end_of_valid_wal`). Only plain (uncompressed) segments are read.

use std::path::{Path, PathBuf};

use walden::wal::{
    Lsn, PageMagic, SegNo, TimelineId, VerifierConfig, WalFileName, WalSegSize,
    find_end_of_valid_wal, parse_history_file_name,
};

/// One gap recorded in `gaps.json`: WAL the server no longer had.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Gap {
    pub timeline: u32,
    pub from: Lsn,
    pub to: Lsn,
    pub reason: String,
}

/// `STORE/<cluster>` of a walden store, for WAL of `seg_size` segments.
#[derive(Debug, Clone)]
pub struct StoreView {
    cluster_dir: PathBuf,
    seg_size: WalSegSize,
}

impl StoreView {
    pub fn new(store: &Path, cluster: &str, seg_size: WalSegSize) -> StoreView {
        StoreView {
            cluster_dir: store.join(cluster),
            seg_size,
        }
    }

    /// `STORE/<cluster>/wal`.
    pub fn wal_dir(&self) -> PathBuf {
        self.cluster_dir.join("wal")
    }

    /// Where a segment file (any suffix) of this name lives: `wal/<first 16 hex>/<name>`.
    pub fn segment_path(&self, name: &str) -> PathBuf {
        self.wal_dir()
            .join(name.get(..16).unwrap_or(name))
            .join(name)
    }

    /// Every WAL segment file in the store (complete, compressed or partial), parsed, sorted
    /// by timeline and segment number. Other files (e.g. a writer's temporary files) are left
    /// out here and shown by [`StoreView::listing`].
    fn files(&self) -> Vec<(WalFileName, String)> {
        let mut out: Vec<(WalFileName, String)> = self
            .all_names()
            .into_iter()
            .filter_map(|name| Some((WalFileName::parse(&name, self.seg_size).ok()?, name)))
            .collect();
        out.sort_by_key(|(p, _)| (p.tli, p.segno, p.partial));
        out
    }

    /// The names of all files in the per-timeline directories under `wal/`, sorted.
    fn all_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.wal_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                for file in std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    names.push(file.file_name().to_string_lossy().into_owned());
                }
            }
        }
        names.sort();
        names
    }

    /// Completed segment names, in WAL order (timeline, segment number). Panics on a
    /// compressed one: this view reads plain segments only.
    pub fn completed(&self) -> Vec<String> {
        self.files()
            .into_iter()
            .filter(|(p, _)| !p.partial)
            .map(|(p, name)| {
                assert!(
                    !p.compressed,
                    "{name}: compressed segments are not readable by this test view"
                );
                name
            })
            .collect()
    }

    /// `.partial` file names (with the suffix), in WAL order.
    pub fn partials(&self) -> Vec<String> {
        self.files()
            .into_iter()
            .filter(|(p, _)| p.partial)
            .map(|(_, name)| name)
            .collect()
    }

    /// Whether the completed segment `name` is in the store.
    pub fn has_completed(&self, name: &str) -> bool {
        self.segment_path(name).is_file()
    }

    /// The bytes of a segment file (complete or `.partial`, by its full name).
    pub fn read(&self, name: &str) -> Vec<u8> {
        let path = self.segment_path(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The contents of `wal/NNNNNNNN.history` for `tli`, if present.
    pub fn history(&self, tli: u32) -> Option<String> {
        std::fs::read_to_string(self.wal_dir().join(format!("{tli:08X}.history"))).ok()
    }

    /// The timelines with a history file in the store.
    pub fn history_timelines(&self) -> Vec<TimelineId> {
        let mut tlis: Vec<TimelineId> = std::fs::read_dir(self.wal_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| parse_history_file_name(&e.file_name().to_string_lossy()))
            .collect();
        tlis.sort();
        tlis
    }

    /// `cluster.json`, parsed.
    pub fn cluster_json(&self) -> serde_json::Value {
        let path = self.cluster_dir.join("cluster.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
    }

    /// `gaps.json`, parsed; empty when the file does not exist.
    pub fn gaps(&self) -> Vec<Gap> {
        let path = self.cluster_dir.join("gaps.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display())),
            Err(_) => Vec::new(),
        }
    }

    /// How far the store holds valid WAL: the end of the last valid record in the newest
    /// `.partial` (its start when it holds none), else the end of the newest completed
    /// segment; `None` for an empty store. `major` picks the page magic.
    pub fn end_of_valid_wal(&self, major: u32) -> Option<Lsn> {
        let (newest, name) = self.files().pop()?;
        if newest.partial {
            self.valid_end(&name, major)
        } else {
            Some(SegNo(newest.segno.0 + 1).start_lsn(self.seg_size))
        }
    }

    /// The end of the last valid record in the segment file `name` (complete or `.partial`,
    /// checked on its own timeline), or the segment's start when it holds none.
    pub fn valid_end(&self, name: &str, major: u32) -> Option<Lsn> {
        let parsed = WalFileName::parse(name, self.seg_size).ok()?;
        let config = VerifierConfig {
            seg_size: self.seg_size,
            magic: PageMagic::for_major(major).expect("a supported major version"),
            tli: parsed.tli,
            system_identifier: None,
        };
        let bytes = self.read(name);
        let end = find_end_of_valid_wal(&bytes, config, parsed.segno)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Some(end.unwrap_or_else(|| parsed.segno.start_lsn(self.seg_size)))
    }

    /// A listing of the WAL directory for failure messages (every file, WAL or not).
    pub fn listing(&self) -> String {
        let names = self.all_names();
        format!(
            "store {} holds {} files under wal/: {names:?}; history: {:?}",
            self.cluster_dir.display(),
            names.len(),
            self.history_timelines()
        )
    }
}
