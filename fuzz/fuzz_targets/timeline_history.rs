//! `wal::TimelineHistory::parse` on arbitrary text (a history file fetched from the server
//! or read from the store).
//!
//! Input: 4 bytes of timeline id (little-endian), then the file's text.
//!
//! Invariants: a parsed history has increasing parents below its timeline and switch points
//! that never decrease; formatting it and parsing that gives the same history (for reasons
//! that survive a round trip); its ranges tile the LSN space in order; `timeline_of`
//! agrees with the ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walden::wal::{Lsn, SegNo, TimelineHistory, TimelineId, WalSegSize};

fuzz_target!(|input: &[u8]| {
    let Some((tli, text)) = input.split_first_chunk::<4>() else {
        return;
    };
    let tli = TimelineId(u32::from_le_bytes(*tli));
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let history = match TimelineHistory::parse(tli, text) {
        Ok(h) => h,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert_eq!(history.tli, tli);
    for pair in history.entries.windows(2) {
        assert!(pair[0].parent < pair[1].parent);
        assert!(pair[0].switchpoint <= pair[1].switchpoint);
    }
    for e in &history.entries {
        assert!(e.parent < tli);
    }

    // Reasons are free text: a round trip keeps them when they are one trimmed line.
    let plain_reasons = history
        .entries
        .iter()
        .all(|e| !e.reason.contains(['\n', '\r']) && e.reason.trim() == e.reason);
    if plain_reasons {
        let formatted = history.format();
        let again = TimelineHistory::parse(tli, &formatted)
            .unwrap_or_else(|e| panic!("formatted history {formatted:?} does not parse: {e}"));
        assert_eq!(again, history, "format/parse round trip of {text:?}");
    }

    let ranges = history.ranges();
    assert_eq!(ranges.len(), history.entries.len() + 1);
    assert_eq!(ranges.first().map(|r| r.begin), Some(Lsn::INVALID));
    assert_eq!(ranges.last().map(|r| (r.tli, r.end)), Some((tli, None)));
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].end, Some(pair[1].begin));
    }
    for r in &ranges {
        if r.end.is_none_or(|end| end > r.begin) {
            assert_eq!(history.timeline_of(r.begin), r.tli, "{history:?}");
        }
        if r.end.is_some() {
            assert_eq!(history.switchpoint(r.tli), r.end);
        }
    }
    let size = WalSegSize::DEFAULT;
    for r in &ranges {
        let segno = r.begin.segno(size);
        let tlis = history.timelines_for_segment(segno, size);
        assert!(tlis.contains(&r.tli));
        let _ = history.timeline_of_segment(SegNo(segno.0.saturating_add(1)), size);
    }
});
