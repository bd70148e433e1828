//! Timeline history files (`00000002.history`): parsing, formatting, and the questions
//! restore asks of them — which timeline holds a position, where a timeline ends, which
//! timelines may hold a segment.
//!
//! A file for timeline N lists every ancestor, one line each:
//! `<parent tli>\t<switch point X/X>\t<reason>`; blank lines and `#` comments are allowed and
//! timeline ids must increase and stay below N (`timeline.c readTimeLineHistory`).

use std::fmt::Write as _;

use super::{Lsn, SegNo, TimelineId, WalSegSize};

/// One ancestor line: timeline `parent` ended at `switchpoint` and its child began there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: TimelineId,
    pub switchpoint: Lsn,
    /// Free text written at promotion (e.g. `no recovery target specified`).
    pub reason: String,
}

/// The parsed history of one timeline: its ancestors, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    pub tli: TimelineId,
    pub entries: Vec<HistoryEntry>,
}

/// One timeline's span of the WAL: `[begin, end)`; `end` is None for the newest timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineRange {
    pub tli: TimelineId,
    pub begin: Lsn,
    pub end: Option<Lsn>,
}

/// A history file that does not parse or breaks PostgreSQL's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "history of timeline {tli}, line {line}: {text:?} is not \"<timeline>\\t<X/X>\\t<reason>\""
    )]
    Syntax {
        tli: TimelineId,
        line: usize,
        text: String,
    },
    #[error("history of timeline {tli}, line {line}: timeline {found} does not increase")]
    NotIncreasing {
        tli: TimelineId,
        line: usize,
        found: TimelineId,
    },
    #[error("history of timeline {tli}, line {line}: timeline {found} is not below {tli}")]
    NotBelowChild {
        tli: TimelineId,
        line: usize,
        found: TimelineId,
    },
    #[error(
        "history of timeline {tli}, line {line}: switch point {found} is before the previous one"
    )]
    SwitchpointDecreases {
        tli: TimelineId,
        line: usize,
        found: Lsn,
    },
}

impl TimelineHistory {
    /// The history of timeline 1, which has no ancestors and no file.
    pub fn first() -> Self {
        TimelineHistory {
            tli: TimelineId(1),
            entries: Vec::new(),
        }
    }

    /// Parses the contents of timeline `tli`'s history file.
    pub fn parse(tli: TimelineId, text: &str) -> Result<Self, HistoryError> {
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let entry = parse_line(trimmed).ok_or_else(|| HistoryError::Syntax {
                tli,
                line,
                text: raw.to_string(),
            })?;
            if let Some(last) = entries.last() {
                if entry.parent <= last.parent {
                    return Err(HistoryError::NotIncreasing {
                        tli,
                        line,
                        found: entry.parent,
                    });
                }
                if entry.switchpoint < last.switchpoint {
                    return Err(HistoryError::SwitchpointDecreases {
                        tli,
                        line,
                        found: entry.switchpoint,
                    });
                }
            }
            if entry.parent >= tli {
                return Err(HistoryError::NotBelowChild {
                    tli,
                    line,
                    found: entry.parent,
                });
            }
            entries.push(entry);
        }
        Ok(TimelineHistory { tli, entries })
    }

    /// The file contents PostgreSQL writes for this history.
    pub fn format(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let _ = writeln!(out, "{}\t{}\t{}", e.parent.0, e.switchpoint, e.reason);
        }
        out
    }

    /// Every timeline of the history with its span, oldest first, ending with `self.tli`.
    pub fn ranges(&self) -> Vec<TimelineRange> {
        let mut begin = Lsn::INVALID;
        let mut out = Vec::with_capacity(self.entries.len() + 1);
        for e in &self.entries {
            out.push(TimelineRange {
                tli: e.parent,
                begin,
                end: Some(e.switchpoint),
            });
            begin = e.switchpoint;
        }
        out.push(TimelineRange {
            tli: self.tli,
            begin,
            end: None,
        });
        out
    }

    /// The timeline that holds the WAL at `lsn` on the way to `self.tli`
    /// (`tliOfPointInHistory`).
    pub fn timeline_of(&self, lsn: Lsn) -> TimelineId {
        self.entries
            .iter()
            .find(|e| lsn < e.switchpoint)
            .map_or(self.tli, |e| e.parent)
    }

    /// Where timeline `tli` ended (its child began): None for `self.tli` itself or a
    /// timeline not in this history.
    pub fn switchpoint(&self, tli: TimelineId) -> Option<Lsn> {
        self.entries
            .iter()
            .find(|e| e.parent == tli)
            .map(|e| e.switchpoint)
    }

    /// The timelines whose files may hold segment `segno`, newest first, in the order the
    /// server tries them (`XLogFileReadAnyTLI`): those that began at or before it.
    pub fn timelines_for_segment(&self, segno: SegNo, size: WalSegSize) -> Vec<TimelineId> {
        self.ranges()
            .iter()
            .rev()
            .filter(|r| r.begin.segno(size) <= segno)
            .map(|r| r.tli)
            .collect()
    }

    /// The timeline whose file holds the WAL wanted of segment `segno`: the newest timeline
    /// that began at or before it.
    pub fn timeline_of_segment(&self, segno: SegNo, size: WalSegSize) -> TimelineId {
        self.timelines_for_segment(segno, size)
            .first()
            .copied()
            .unwrap_or(self.tli)
    }
}

/// `%u\t%X/%X` then an optional reason (PostgreSQL's sscanf accepts any whitespace).
fn parse_line(line: &str) -> Option<HistoryEntry> {
    let (tli, rest) = line.split_once(|c: char| c.is_ascii_whitespace())?;
    let rest = rest.trim_start();
    let (lsn, reason) = match rest.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((lsn, reason)) => (lsn, reason.trim()),
        None => (rest, ""),
    };
    if !tli.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(HistoryEntry {
        parent: TimelineId(tli.parse().ok()?),
        switchpoint: lsn.parse().ok()?,
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn parses_real_file() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/wal/pg15/00000002.history"
        ))
        .unwrap();
        let h = TimelineHistory::parse(TimelineId(2), &text).unwrap();
        assert_eq!(
            h.entries,
            vec![HistoryEntry {
                parent: TimelineId(1),
                switchpoint: lsn("0/A000A0"),
                reason: "no recovery target specified".into()
            }]
        );
        assert_eq!(h.format(), text);
    }

    #[test]
    fn answers_restore_questions() {
        let text = "# comment\n1\t0/95F280\tno recovery target specified\n\n  2\t0/3000000\tbefore 2026-01-01\n";
        let h = TimelineHistory::parse(TimelineId(3), text).unwrap();
        let size = WalSegSize::DEFAULT;
        let seg = |n| SegNo(n);
        assert_eq!(
            h.ranges(),
            vec![
                TimelineRange {
                    tli: TimelineId(1),
                    begin: Lsn(0),
                    end: Some(lsn("0/95F280"))
                },
                TimelineRange {
                    tli: TimelineId(2),
                    begin: lsn("0/95F280"),
                    end: Some(lsn("0/3000000"))
                },
                TimelineRange {
                    tli: TimelineId(3),
                    begin: lsn("0/3000000"),
                    end: None
                },
            ]
        );
        assert_eq!(h.timeline_of(lsn("0/95F27F")), TimelineId(1));
        assert_eq!(h.timeline_of(lsn("0/95F280")), TimelineId(2));
        assert_eq!(h.timeline_of(lsn("5/0")), TimelineId(3));
        assert_eq!(h.switchpoint(TimelineId(1)), Some(lsn("0/95F280")));
        assert_eq!(h.switchpoint(TimelineId(3)), None);
        // 16 MiB segments: TLI 2 begins in segment 0, TLI 3 in segment 3.
        assert_eq!(
            h.timelines_for_segment(seg(2), size),
            vec![TimelineId(2), TimelineId(1)]
        );
        assert_eq!(
            h.timelines_for_segment(seg(3), size),
            vec![TimelineId(3), TimelineId(2), TimelineId(1)]
        );
        assert_eq!(h.timeline_of_segment(seg(2), size), TimelineId(2));
        // The example of the protocol notes (§7.4) with 1 MiB segments: switch in segment 9.
        let h2 = TimelineHistory::parse(TimelineId(2), "1\t0/95F280\tx\n").unwrap();
        let mb = WalSegSize::new(1 << 20).unwrap();
        assert_eq!(h2.timelines_for_segment(seg(8), mb), vec![TimelineId(1)]);
        assert_eq!(
            h2.timelines_for_segment(seg(9), mb),
            vec![TimelineId(2), TimelineId(1)]
        );
        assert_eq!(TimelineHistory::first().ranges().len(), 1);
    }

    #[test]
    fn rejects_bad_files() {
        let t = TimelineId(3);
        assert!(matches!(
            TimelineHistory::parse(t, "x\t0/1\tr\n"),
            Err(HistoryError::Syntax { line: 1, .. })
        ));
        assert!(matches!(
            TimelineHistory::parse(t, "1\t0-1\tr\n"),
            Err(HistoryError::Syntax { .. })
        ));
        assert!(matches!(
            TimelineHistory::parse(t, "1\n"),
            Err(HistoryError::Syntax { .. })
        ));
        assert!(matches!(
            TimelineHistory::parse(t, "2\t0/1\ta\n1\t0/2\tb\n"),
            Err(HistoryError::NotIncreasing { line: 2, .. })
        ));
        assert!(matches!(
            TimelineHistory::parse(t, "3\t0/1\ta\n"),
            Err(HistoryError::NotBelowChild { .. })
        ));
        assert!(matches!(
            TimelineHistory::parse(t, "1\t0/5\ta\n2\t0/4\tb\n"),
            Err(HistoryError::SwitchpointDecreases { .. })
        ));
        assert_eq!(TimelineHistory::parse(t, "").unwrap().entries, vec![]);
    }

    proptest! {
        #[test]
        fn parser_never_panics(text in "\\PC{0,200}", tli: u32) {
            let _ = TimelineHistory::parse(TimelineId(tli), &text);
        }

        #[test]
        fn format_round_trips(points in proptest::collection::vec(any::<u64>(), 0..6)) {
            let mut points = points;
            points.sort();
            let entries: Vec<_> = points.iter().enumerate().map(|(i, p)| HistoryEntry {
                parent: TimelineId(i as u32 + 1),
                switchpoint: Lsn(*p),
                reason: format!("reason {i}"),
            }).collect();
            let h = TimelineHistory { tli: TimelineId(entries.len() as u32 + 1), entries };
            prop_assert_eq!(TimelineHistory::parse(h.tli, &h.format()), Ok(h));
        }
    }
}
