//! What WAL a store holds (per timeline: first and last segment, holes, recorded gaps) and
//! whether it is intact (every page header and record CRC, the chain across segments, the
//! history files consistent with each other).

use std::collections::BTreeMap;
use std::io::Read;

use serde::Serialize;

use crate::store::{Gap, StoreError, StoredSegment, WalArchive};
use crate::wal::{
    Lsn, PageMagic, SegNo, TimelineHistory, TimelineId, VerifierConfig, WalVerifier,
    find_end_of_valid_wal, segment_file_name,
};

/// The WAL of one timeline in the store.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineWal {
    pub timeline: TimelineId,
    /// First and last segment file names held (complete or partial).
    pub first_segment: String,
    pub last_segment: String,
    pub segments: usize,
    /// The `.partial` segments of this timeline (the one being written, or the last one of
    /// a timeline that ended).
    pub partial: Vec<String>,
    /// Segment names missing between the first and the last.
    pub missing: Vec<String>,
    /// Where WAL of this timeline begins and ends, from the history files (`None`: the
    /// first timeline begins at the start; the newest one has not ended).
    pub switched_from_at: Option<Lsn>,
    pub ends_at: Option<Lsn>,
}

/// Everything `walden list` says about WAL.
#[derive(Clone, Debug, Serialize)]
pub struct WalInventory {
    pub timelines: Vec<TimelineWal>,
    pub gaps: Vec<Gap>,
    pub history_files: Vec<TimelineId>,
}

/// Lists the store's WAL by timeline.
pub fn wal_inventory(archive: &dyn WalArchive) -> Result<WalInventory, StoreError> {
    let seg_size = archive.info().wal_segment_size;
    let history_files = archive.history_files()?;
    let histories = read_histories(archive, &history_files)?;
    let mut by_timeline: BTreeMap<TimelineId, Vec<StoredSegment>> = BTreeMap::new();
    for segment in archive.list_wal()? {
        by_timeline
            .entry(segment.name.tli)
            .or_default()
            .push(segment);
    }
    let newest_history = histories.values().max_by_key(|h| h.tli);
    let mut timelines = Vec::new();
    for (tli, segments) in by_timeline {
        let segnos: Vec<SegNo> = segments.iter().map(|s| s.name.segno).collect();
        let (Some(first), Some(last)) = (segnos.iter().min(), segnos.iter().max()) else {
            continue;
        };
        let mut missing = Vec::new();
        let mut expected = first.0;
        for segno in dedup_sorted(&segnos) {
            while expected < segno.0 {
                missing.push(segment_file_name(tli, SegNo(expected), seg_size));
                expected += 1;
            }
            expected = segno.0 + 1;
        }
        let (switched_from_at, ends_at) = match newest_history {
            Some(h) => (
                h.ranges().iter().find(|r| r.tli == tli).map(|r| r.begin),
                h.switchpoint(tli),
            ),
            None => (None, None),
        };
        timelines.push(TimelineWal {
            timeline: tli,
            first_segment: segment_file_name(tli, *first, seg_size),
            last_segment: segment_file_name(tli, *last, seg_size),
            segments: dedup_sorted(&segnos).len(),
            partial: segments
                .iter()
                .filter(|s| s.name.partial)
                .map(|s| s.name.format(seg_size))
                .collect(),
            missing,
            switched_from_at: switched_from_at.filter(|l| l.is_valid()),
            ends_at,
        });
    }
    Ok(WalInventory {
        timelines,
        gaps: archive.gaps()?,
        history_files,
    })
}

fn dedup_sorted(segnos: &[SegNo]) -> Vec<SegNo> {
    let mut v = segnos.to_vec();
    v.sort();
    v.dedup();
    v
}

fn read_histories(
    archive: &dyn WalArchive,
    timelines: &[TimelineId],
) -> Result<BTreeMap<TimelineId, TimelineHistory>, StoreError> {
    let mut histories = BTreeMap::new();
    for &tli in timelines {
        if let Some(bytes) = archive.read_history(tli)?
            && let Ok(h) = TimelineHistory::parse(tli, &String::from_utf8_lossy(&bytes))
        {
            histories.insert(tli, h);
        }
    }
    Ok(histories)
}

/// One thing wrong with the stored WAL.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WalProblem {
    /// The file (segment or history file) concerned.
    pub file: String,
    pub problem: String,
}

/// The result of checking every stored WAL file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WalCheck {
    pub segments_checked: usize,
    pub bytes_checked: u64,
    /// End of valid WAL in each `.partial` segment.
    pub partial_ends: Vec<(String, Option<Lsn>)>,
    pub problems: Vec<WalProblem>,
}

/// Re-checks every stored segment: complete segments strictly (page headers, record CRCs,
/// `xl_prev` chained across consecutive segments of a timeline), `.partial` segments up to
/// their end of valid WAL; history files parse and each extends its parent's.
pub fn verify_wal(archive: &dyn WalArchive) -> Result<WalCheck, StoreError> {
    let info = archive.info();
    let seg_size = info.wal_segment_size;
    let mut check = WalCheck::default();
    let Some(magic) = PageMagic::for_server_version_num(info.server_version_num) else {
        check.problems.push(WalProblem {
            file: "cluster.json".into(),
            problem: format!(
                "server version {} has no known WAL page format",
                info.server_version_num
            ),
        });
        return Ok(check);
    };
    check_histories(archive, &mut check)?;
    let mut by_timeline: BTreeMap<TimelineId, Vec<StoredSegment>> = BTreeMap::new();
    for segment in archive.list_wal()? {
        by_timeline
            .entry(segment.name.tli)
            .or_default()
            .push(segment);
    }
    for (tli, segments) in by_timeline {
        let config = VerifierConfig {
            seg_size,
            magic,
            tli,
            system_identifier: Some(info.system_identifier.0),
        };
        // One verifier per run of consecutive complete segments, so that records crossing
        // segment boundaries and the xl_prev chain are checked too.
        let mut chain: Option<(SegNo, WalVerifier)> = None;
        let mut seen = std::collections::BTreeSet::new();
        for segment in segments {
            let name = segment.name.format(seg_size);
            if !seen.insert((segment.name.segno, segment.name.partial)) {
                continue; // the same segment plain and compressed (an interrupted compression)
            }
            if segment.name.partial {
                let bytes = read_all(archive, &segment, &mut check, &name)?;
                let end = bytes
                    .as_deref()
                    .and_then(|b| find_end_of_valid_wal(b, config, segment.name.segno).ok())
                    .flatten();
                check.partial_ends.push((name, end));
                chain = None;
                continue;
            }
            let continues = matches!(&chain, Some((next, _)) if *next == segment.name.segno);
            if !continues {
                match WalVerifier::new(config, segment.name.segno.start_lsn(seg_size)) {
                    Ok(v) => chain = Some((segment.name.segno, v)),
                    Err(e) => {
                        check.problems.push(WalProblem {
                            file: name,
                            problem: e.to_string(),
                        });
                        chain = None;
                        continue;
                    }
                }
            }
            let Some((next, verifier)) = chain.as_mut() else {
                continue;
            };
            let ok = feed_segment(
                archive,
                &segment,
                verifier,
                &mut check,
                &name,
                seg_size.bytes(),
            )?;
            check.segments_checked += 1;
            if ok {
                *next = SegNo(segment.name.segno.0 + 1);
            } else {
                chain = None;
            }
        }
    }
    Ok(check)
}

/// Feeds one complete segment into the chain's verifier; false if it failed.
fn feed_segment(
    archive: &dyn WalArchive,
    segment: &StoredSegment,
    verifier: &mut WalVerifier,
    check: &mut WalCheck,
    name: &str,
    seg_bytes: u64,
) -> Result<bool, StoreError> {
    let mut reader = archive.open_segment(segment)?;
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                check.problems.push(WalProblem {
                    file: name.to_string(),
                    problem: format!("cannot read: {e}"),
                });
                return Ok(false);
            }
        };
        total += n as u64;
        if let Err(e) = verifier.feed(&buf[..n]) {
            check.problems.push(WalProblem {
                file: e.file.clone(),
                problem: format!("at offset 0x{:X}: {}", e.offset, e.problem),
            });
            return Ok(false);
        }
    }
    check.bytes_checked += total;
    if total != seg_bytes {
        check.problems.push(WalProblem {
            file: name.to_string(),
            problem: format!("holds {total} bytes, not the segment size {seg_bytes}"),
        });
        return Ok(false);
    }
    if let Some(end) = verifier.end_of_wal() {
        check.problems.push(WalProblem {
            file: name.to_string(),
            problem: format!("a complete segment whose WAL ends at {end} (zeros after it)"),
        });
        return Ok(false);
    }
    Ok(true)
}

fn read_all(
    archive: &dyn WalArchive,
    segment: &StoredSegment,
    check: &mut WalCheck,
    name: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut bytes = Vec::new();
    match archive.open_segment(segment)?.read_to_end(&mut bytes) {
        Ok(_) => Ok(Some(bytes)),
        Err(e) => {
            check.problems.push(WalProblem {
                file: name.to_string(),
                problem: format!("cannot read: {e}"),
            });
            Ok(None)
        }
    }
}

/// Each history file parses, and each timeline's history extends its parent's.
fn check_histories(archive: &dyn WalArchive, check: &mut WalCheck) -> Result<(), StoreError> {
    let timelines = archive.history_files()?;
    let mut parsed: BTreeMap<TimelineId, TimelineHistory> = BTreeMap::new();
    for &tli in &timelines {
        let name = crate::wal::history_file_name(tli);
        let Some(bytes) = archive.read_history(tli)? else {
            continue;
        };
        match TimelineHistory::parse(tli, &String::from_utf8_lossy(&bytes)) {
            Ok(h) => {
                parsed.insert(tli, h);
            }
            Err(e) => check.problems.push(WalProblem {
                file: name,
                problem: e.to_string(),
            }),
        }
    }
    for (tli, history) in &parsed {
        let Some(last) = history.entries.last() else {
            continue;
        };
        if let Some(parent) = parsed.get(&last.parent) {
            let prefix = &history.entries[..history.entries.len() - 1];
            if prefix != parent.entries.as_slice() {
                check.problems.push(WalProblem {
                    file: crate::wal::history_file_name(*tli),
                    problem: format!(
                        "does not extend the history of its parent timeline {}",
                        last.parent
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Where the stored WAL ends.
#[derive(Clone, Debug)]
pub struct WalEnd {
    pub timeline: TimelineId,
    pub lsn: Lsn,
    /// The newest WAL file's modification time.
    pub written: Option<String>,
}

/// The end of valid WAL on the newest timeline: the end of its newest `.partial` if that
/// holds valid WAL, else the end of its last complete segment.
pub fn end_of_stored_wal(
    archive: &dyn WalArchive,
    inventory: &WalInventory,
) -> Result<Option<WalEnd>, StoreError> {
    match inventory.timelines.last() {
        Some(newest) => end_of_timeline_wal(archive, newest.timeline),
        None => Ok(None),
    }
}

/// The end of valid WAL in timeline `tli`'s own segment files (None if it has none): the end
/// of its newest `.partial` if that holds valid WAL (its start if not), else the end of its
/// last complete segment. Segments in between are not looked at.
pub fn end_of_timeline_wal(
    archive: &dyn WalArchive,
    tli: TimelineId,
) -> Result<Option<WalEnd>, StoreError> {
    let info = archive.info();
    let seg_size = info.wal_segment_size;
    let segments: Vec<StoredSegment> = archive
        .list_wal()?
        .into_iter()
        .filter(|s| s.name.tli == tli)
        .collect();
    let Some(last) = segments
        .iter()
        .max_by_key(|s| (s.name.segno, !s.name.partial))
    else {
        return Ok(None);
    };
    let written = std::fs::metadata(&last.path)
        .and_then(|m| m.modified())
        .ok()
        .map(crate::store::format_utc);
    let mut lsn = last.name.segno.next().start_lsn(seg_size);
    if last.name.partial {
        let magic = PageMagic::for_server_version_num(info.server_version_num);
        let mut bytes = Vec::new();
        let readable = archive.open_segment(last)?.read_to_end(&mut bytes).is_ok();
        let end = match (magic, readable) {
            (Some(magic), true) => {
                let config = VerifierConfig {
                    seg_size,
                    magic,
                    tli,
                    system_identifier: Some(info.system_identifier.0),
                };
                find_end_of_valid_wal(&bytes, config, last.name.segno)
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        lsn = end.unwrap_or_else(|| last.name.segno.start_lsn(seg_size));
    }
    Ok(Some(WalEnd {
        timeline: tli,
        lsn,
        written,
    }))
}
