//! Whether the store holds a range of WAL durably: what a base backup needs before it may be
//! called complete, and what restore will check before it starts.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::durable;
use super::error::Result;
use super::layout::ClusterName;
use super::reader::{ClusterReader, WalArchive};
use crate::wal::{
    Lsn, PageMagic, TimelineHistory, TimelineId, VerifierConfig, WalSegSize, find_end_of_valid_wal,
    history_file_name,
};

/// True when every WAL byte of `[start, stop)` is durable in the store: on the timelines the
/// history of `stop`'s timeline gives for each segment (the newest one that has the segment
/// wins), complete segments, or, for the last segment only, a `.partial` whose valid WAL
/// reaches `stop` (fsynced here before it is read).
pub fn wal_covered(
    store_root: &Path,
    name: &ClusterName,
    seg_size: WalSegSize,
    start: (Lsn, TimelineId),
    stop: (Lsn, TimelineId),
) -> Result<bool> {
    let reader = ClusterReader::open(store_root, name)?;
    let history = if stop.1.0 == 1 {
        TimelineHistory::first()
    } else {
        match reader.read_history(stop.1)? {
            Some(bytes) => match TimelineHistory::parse(stop.1, &String::from_utf8_lossy(&bytes)) {
                Ok(h) => h,
                Err(_) => return Ok(false),
            },
            None => return Ok(false),
        }
    };
    if stop.0 <= start.0 {
        return Ok(true);
    }
    let first = start.0.segno(seg_size);
    let last = Lsn(stop.0.0 - 1).segno(seg_size);
    let Some(magic) = PageMagic::for_server_version_num(reader.info().server_version_num) else {
        return Ok(false);
    };
    for segno in first.0..=last.0 {
        let segno = crate::wal::SegNo(segno);
        let mut found = None;
        for tli in history.timelines_for_segment(segno, seg_size) {
            if let Some(segment) = reader.find_segment(tli, segno)? {
                found = Some(segment);
                break;
            }
        }
        let Some(segment) = found else {
            return Ok(false);
        };
        if !segment.name.partial {
            continue;
        }
        if segno != last {
            return Ok(false);
        }
        // The receiver fsyncs its .partial only now and then: make what it holds durable
        // before relying on it.
        let mut file = File::open(&segment.path)
            .map_err(|e| super::StoreError::io("open", &segment.path, e))?;
        durable::sync_file(&file, &segment.path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| super::StoreError::io("read", &segment.path, e))?;
        let config = VerifierConfig {
            seg_size,
            magic,
            tli: segment.name.tli,
            system_identifier: Some(reader.info().system_identifier.0),
        };
        let end = find_end_of_valid_wal(&bytes, config, segno).ok().flatten();
        if end.is_none_or(|end| end < stop.0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The names of the timeline history files the store holds.
pub fn history_file_names(store_root: &Path, name: &ClusterName) -> Result<Vec<String>> {
    let reader = ClusterReader::open(store_root, name)?;
    Ok(reader
        .history_files()?
        .into_iter()
        .map(history_file_name)
        .collect())
}
