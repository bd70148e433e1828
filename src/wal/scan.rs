//! A streaming WAL record scanner: bytes in, records out, with the main data of the few
//! records a recovery target can name decoded — transaction commits and aborts (time, xid)
//! and restore points (time, name).
//!
//! [`WalScanner`] is the [`WalVerifier`] in scanning mode: the same page walk, continuation
//! and CRC checks (a record is only yielded once it passed them all), plus a queue of the
//! completed records. Only the payload of records [`decode_event`] can use is kept, one
//! record at a time, so memory stays bounded by the largest such record; everything else is
//! checked as it streams past. Feed bytes in pieces of any size and drain
//! [`WalScanner::next_record`] between pieces.
//!
//! Decoding follows PostgreSQL's `DecodeXLogRecord` (block reference headers, then block
//! images and data, then the main data last) and `ParseCommitRecord`/`ParseAbortRecord`
//! (the `xinfo`-flagged parts of `xl_xact_commit`/`xl_xact_abort`).

use super::page::{le_u16, le_u32, le_u64};
use super::record::RecordHeader;
use super::verify::Completed;
use super::{
    Lsn, PageMagic, StartError, TimelineId, UtcTime, VerifierConfig, VerifyError, WalVerifier,
};

/// Resource manager id of transactions (`RM_XACT_ID`).
pub const RM_XACT_ID: u8 = 1;
/// `XLOG_XACT_OPMASK`: the operation bits of a transaction record's `xl_info`.
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
/// `XLOG_XACT_HAS_INFO`: an `xl_xact_xinfo` follows the timestamp.
const XLOG_XACT_HAS_INFO: u8 = 0x80;
/// `XLOG_RESTORE_POINT` (rmgr XLOG): `pg_create_restore_point()`.
const XLOG_RESTORE_POINT: u8 = 0x70;

/// `xinfo` flags: which optional parts a commit or abort record has, in this order.
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;
/// `xl_xact_dbinfo`, `RelFileLocator`, `SharedInvalidationMessage`.
const DBINFO_LEN: usize = 8;
const RELFILELOCATOR_LEN: usize = 12;
const INVAL_MSG_LEN: usize = 16;

/// Block reference ids (`xlogrecord.h`).
const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;

/// `MAXFNAMELEN`: a restore point name is at most 63 bytes and a NUL.
pub const RESTORE_POINT_NAME_LEN: usize = 64;

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XactKind {
    Commit,
    Abort,
    CommitPrepared,
    AbortPrepared,
}

impl XactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            XactKind::Commit => "commit",
            XactKind::Abort => "abort",
            XactKind::CommitPrepared => "commit prepared",
            XactKind::AbortPrepared => "abort prepared",
        }
    }
}

/// What a record means for a recovery target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordEvent {
    /// A transaction's commit or abort: `xid` is the transaction's (for the `*_PREPARED`
    /// kinds the prepared transaction's, from the record's main data, as recovery uses it).
    TransactionEnd {
        kind: XactKind,
        xid: u32,
        time: UtcTime,
    },
    /// `pg_create_restore_point(name)`.
    RestorePoint { time: UtcTime, name: String },
}

/// A record whose CRC is right but whose contents do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("its block reference headers run past its end")]
    Truncated,
    #[error("it has an invalid block reference id {0}")]
    BlockId(u8),
    #[error("block reference {0}'s BKPBLOCK_HAS_DATA flag disagrees with its data length")]
    DataFlag(u8),
    #[error("a block reference says BKPBLOCK_SAME_REL but no relation precedes it")]
    SameRelFirst,
    #[error("its headers announce {declared} bytes of data but {actual} follow them")]
    DataLength { declared: u64, actual: u64 },
    #[error("its main data ({got} bytes) is too short for a {what}")]
    MainData { what: &'static str, got: usize },
    #[error("a prepared transaction's {0} record lacks the prepared transaction's xid")]
    NoTwoPhaseXid(&'static str),
}

/// One record that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedRecord {
    pub start: Lsn,
    /// Just after its last byte (not aligned): where recovery has replayed to after it.
    pub end: Lsn,
    pub header: RecordHeader,
    /// The decoded meaning of commit, abort and restore point records; `Ok(None)` for all
    /// other records.
    pub event: Result<Option<RecordEvent>, DecodeError>,
}

/// The streaming scanner; see the module documentation.
#[derive(Debug)]
pub struct WalScanner {
    verifier: WalVerifier,
    magic: PageMagic,
}

impl WalScanner {
    /// A scanner for WAL starting at the page-aligned `start` (as [`WalVerifier::new`]: a
    /// record continued onto the first page is skipped).
    pub fn new(config: VerifierConfig, start: Lsn) -> Result<WalScanner, StartError> {
        let mut verifier = WalVerifier::new(config, start)?;
        verifier.enable_scan(wants_payload);
        Ok(WalScanner {
            verifier,
            magic: config.magic,
        })
    }

    /// Checks the next bytes; records completed by them become available from
    /// [`next_record`](Self::next_record) (also those completed before an error).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), VerifyError> {
        self.verifier.feed(data)
    }

    /// The next completed record, oldest first.
    pub fn next_record(&mut self) -> Option<ScannedRecord> {
        let Completed {
            start,
            end,
            header,
            payload,
        } = self.verifier.pop_completed()?;
        let event = match payload {
            Some(payload) => decode_event(&header, &payload, self.magic),
            None => Ok(None),
        };
        Some(ScannedRecord {
            start,
            end,
            header,
            event,
        })
    }

    /// The bytes fed from now on come from a segment file of timeline `tli`.
    pub fn set_file_timeline(&mut self, tli: TimelineId) {
        self.verifier.set_file_timeline(tli);
    }

    /// The LSN of the next byte `feed` expects.
    pub fn position(&self) -> Lsn {
        self.verifier.position()
    }

    /// Where the end of WAL (zero record length or zero page) was found, if it was.
    pub fn end_of_wal(&self) -> Option<Lsn> {
        self.verifier.end_of_wal()
    }

    /// The end of the last record that passed every check.
    pub fn verified_up_to(&self) -> Option<Lsn> {
        self.verifier.verified_up_to()
    }
}

/// Whether a record's payload is kept for [`decode_event`].
fn wants_payload(h: &RecordHeader) -> bool {
    match h.rmid {
        RM_XACT_ID => matches!(
            h.info & XLOG_XACT_OPMASK,
            XLOG_XACT_COMMIT
                | XLOG_XACT_ABORT
                | XLOG_XACT_COMMIT_PREPARED
                | XLOG_XACT_ABORT_PREPARED
        ),
        super::RM_XLOG_ID => h.info & 0xF0 == XLOG_RESTORE_POINT,
        _ => false,
    }
}

/// The meaning of a record for recovery targets, from its header and `payload` (the bytes
/// after the 24-byte header), written by a server whose pages carry `magic`.
pub fn decode_event(
    header: &RecordHeader,
    payload: &[u8],
    magic: PageMagic,
) -> Result<Option<RecordEvent>, DecodeError> {
    if !wants_payload(header) {
        return Ok(None);
    }
    let main = main_data(payload, magic)?;
    if header.rmid == RM_XACT_ID {
        decode_xact_end(header, main, magic).map(Some)
    } else {
        decode_restore_point(main).map(Some)
    }
}

/// The main data of a record: `payload` is everything after the 24-byte header. Walks the
/// block reference headers as `DecodeXLogRecord` does and checks that the lengths they
/// announce account for every byte; the main data comes last.
pub fn main_data(payload: &[u8], magic: PageMagic) -> Result<&[u8], DecodeError> {
    let compressed_mask = if magic.0 >= PageMagic(0xD110).0 {
        // 15+: BKPIMAGE_COMPRESS_PGLZ | _LZ4 | _ZSTD.
        0x04 | 0x08 | 0x10
    } else {
        // 10–14: BKPIMAGE_IS_COMPRESSED.
        0x02
    };
    let mut p = 0usize;
    let byte = |at: usize| payload.get(at).copied().ok_or(DecodeError::Truncated);
    let need = |at: usize, n: usize| {
        if payload.len() >= at.saturating_add(n) {
            Ok(())
        } else {
            Err(DecodeError::Truncated)
        }
    };
    let mut datatotal: u64 = 0;
    let mut main_len: u64 = 0;
    let mut have_rel = false;
    while (payload.len() - p) as u64 > datatotal {
        let id = byte(p)?;
        p += 1;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = u64::from(byte(p)?);
                p += 1;
                datatotal += main_len;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                need(p, 4)?;
                main_len = u64::from(le_u32(payload, p));
                p += 4;
                datatotal += main_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                need(p, 2)?;
                p += 2;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                need(p, 4)?;
                p += 4;
            }
            0..=XLR_MAX_BLOCK_ID => {
                let fork_flags = byte(p)?;
                need(p + 1, 2)?;
                let data_len = le_u16(payload, p + 1);
                p += 3;
                if (fork_flags & BKPBLOCK_HAS_DATA != 0) != (data_len > 0) {
                    return Err(DecodeError::DataFlag(id));
                }
                datatotal += u64::from(data_len);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    need(p, 5)?;
                    let bimg_len = le_u16(payload, p);
                    let bimg_info = byte(p + 4)?;
                    p += 5;
                    if bimg_info & compressed_mask != 0 && bimg_info & BKPIMAGE_HAS_HOLE != 0 {
                        need(p, 2)?;
                        p += 2;
                    }
                    datatotal += u64::from(bimg_len);
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    need(p, RELFILELOCATOR_LEN)?;
                    p += RELFILELOCATOR_LEN;
                    have_rel = true;
                } else if !have_rel {
                    return Err(DecodeError::SameRelFirst);
                }
                need(p, 4)?;
                p += 4;
            }
            other => return Err(DecodeError::BlockId(other)),
        }
    }
    let actual = (payload.len() - p) as u64;
    if actual != datatotal {
        return Err(DecodeError::DataLength {
            declared: datatotal,
            actual,
        });
    }
    // main_len <= datatotal == the bytes left, so this is in range.
    let main_start = payload.len() - usize::try_from(main_len).unwrap_or(0);
    Ok(payload.get(main_start..).unwrap_or_default())
}

/// A commit or abort record's main data (`xl_xact_commit` / `xl_xact_abort` and its parts).
fn decode_xact_end(
    header: &RecordHeader,
    main: &[u8],
    magic: PageMagic,
) -> Result<RecordEvent, DecodeError> {
    let op = header.info & XLOG_XACT_OPMASK;
    let kind = match op {
        XLOG_XACT_COMMIT => XactKind::Commit,
        XLOG_XACT_ABORT => XactKind::Abort,
        XLOG_XACT_COMMIT_PREPARED => XactKind::CommitPrepared,
        _ => XactKind::AbortPrepared,
    };
    let short = || DecodeError::MainData {
        what: "transaction end",
        got: main.len(),
    };
    if main.len() < 8 {
        return Err(short());
    }
    let time = UtcTime::from_pg_timestamp(le_u64(main, 0) as i64);
    if matches!(kind, XactKind::Commit | XactKind::Abort) {
        return Ok(RecordEvent::TransactionEnd {
            kind,
            xid: header.xid,
            time,
        });
    }
    let mut off = 8usize;
    let mut xinfo = 0u32;
    if header.info & XLOG_XACT_HAS_INFO != 0 {
        xinfo = main
            .get(off..off + 4)
            .map(|_| le_u32(main, off))
            .ok_or_else(short)?;
        off += 4;
    }
    // xl_xact_stats_item: 12 bytes up to 17, 16 from 18 (64-bit object ids).
    let stats_item_len = if magic.0 >= PageMagic(0xD118).0 {
        16
    } else {
        12
    };
    let is_commit = kind == XactKind::CommitPrepared;
    let counted = |off: &mut usize, item: usize| -> Result<(), DecodeError> {
        let n = main
            .get(*off..*off + 4)
            .map(|_| le_u32(main, *off))
            .ok_or_else(short)?;
        let n = usize::try_from(i32::try_from(n).map_err(|_| short())?).map_err(|_| short())?;
        *off = off
            .checked_add(4)
            .and_then(|o| o.checked_add(n.checked_mul(item)?))
            .ok_or_else(short)?;
        Ok(())
    };
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        off += DBINFO_LEN;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        counted(&mut off, 4)?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILELOCATORS != 0 {
        counted(&mut off, RELFILELOCATOR_LEN)?;
    }
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        counted(&mut off, stats_item_len)?;
    }
    if is_commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        counted(&mut off, INVAL_MSG_LEN)?;
    }
    if xinfo & XACT_XINFO_HAS_TWOPHASE == 0 {
        return Err(DecodeError::NoTwoPhaseXid(kind.as_str()));
    }
    let xid = main
        .get(off..off + 4)
        .map(|_| le_u32(main, off))
        .ok_or_else(short)?;
    Ok(RecordEvent::TransactionEnd { kind, xid, time })
}

/// `xl_restore_point`: a timestamp and a NUL-terminated name of at most 63 bytes.
fn decode_restore_point(main: &[u8]) -> Result<RecordEvent, DecodeError> {
    let short = || DecodeError::MainData {
        what: "restore point",
        got: main.len(),
    };
    let name_area = main.get(8..).ok_or_else(short)?;
    let name_area = name_area.get(..RESTORE_POINT_NAME_LEN).unwrap_or(name_area);
    let len = name_area.iter().position(|b| *b == 0).ok_or_else(short)?;
    Ok(RecordEvent::RestorePoint {
        time: UtcTime::from_pg_timestamp(le_u64(main, 0) as i64),
        name: String::from_utf8_lossy(name_area.get(..len).unwrap_or_default()).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::testwal::{FIXTURES, FixtureSet, WalBuilder, config, fixture, fixture_records};
    use crate::wal::{RECORD_HEADER_LEN, SegNo};

    fn at(s: &str) -> UtcTime {
        s.parse().unwrap()
    }

    /// Commits pg_waldump shows in the fixtures: (xid, time) on timeline 1, then on 2.
    fn fixture_commits(dir: &str) -> (Vec<(u32, UtcTime)>, (u32, UtcTime)) {
        let day = "2026-11-22 20:40:";
        let list = |xid: u32, secs: [&str; 5], tli2: &str| {
            let first: Vec<(u32, UtcTime)> = secs
                .iter()
                .enumerate()
                .map(|(i, s)| (xid + i as u32, at(&format!("{day}{s}"))))
                .collect();
            (first, (xid + 5, at(&format!("{day}{tli2}"))))
        };
        match dir {
            "pg15" => list(
                724,
                [
                    "10.740639",
                    "10.740924",
                    "10.744411",
                    "10.749506",
                    "10.750412",
                ],
                "11.139208",
            ),
            "pg16" => list(
                730,
                [
                    "12.693140",
                    "12.693392",
                    "12.697266",
                    "12.703847",
                    "12.705145",
                ],
                "13.073360",
            ),
            _ => list(
                752,
                [
                    "14.534398",
                    "14.534802",
                    "14.539135",
                    "14.546688",
                    "14.547958",
                ],
                "14.910637",
            ),
        }
    }

    /// Scans `files` (timeline, segment index) in order, feeding `chunk` bytes at a time.
    fn scan_fixture(
        set: &FixtureSet,
        files: &[(u32, u64)],
        chunk: usize,
    ) -> (WalScanner, Vec<ScannedRecord>) {
        let start = SegNo(set.first_segno + files[0].1).start_lsn(crate::wal::testwal::mb());
        let mut scanner = WalScanner::new(set.config(files[0].0), start).unwrap();
        let mut out = Vec::new();
        for &(tli, i) in files {
            scanner.set_file_timeline(TimelineId(tli));
            for piece in fixture(set.dir, &set.name(tli, i)).chunks(chunk) {
                scanner.feed(piece).unwrap();
                while let Some(r) = scanner.next_record() {
                    out.push(r);
                }
            }
            if scanner.end_of_wal().is_some() {
                break;
            }
        }
        (scanner, out)
    }

    fn commits(records: &[ScannedRecord]) -> Vec<(u32, UtcTime, Lsn)> {
        records
            .iter()
            .filter_map(|r| match r.event.clone().unwrap() {
                Some(RecordEvent::TransactionEnd {
                    kind: XactKind::Commit,
                    xid,
                    time,
                }) => Some((xid, time, r.start)),
                Some(other) => panic!("unexpected event {other:?}"),
                None => None,
            })
            .collect()
    }

    #[test]
    fn finds_the_commits_pg_waldump_shows() {
        for set in &FIXTURES {
            let (tl1, (xid2, time2)) = fixture_commits(set.dir);
            let starts: Vec<Lsn> = (0..4)
                .flat_map(|i| fixture_records(set.dir, &set.name(1, i)))
                .filter(|r| r.2 == "Transaction")
                .map(|r| r.0)
                .collect();
            for chunk in [8192 * 128, 1000, 77] {
                let files = [(1, 0), (1, 1), (1, 2), (1, 3)];
                let (scanner, records) = scan_fixture(set, &files, chunk);
                let found = commits(&records);
                let expected: Vec<(u32, UtcTime, Lsn)> = tl1
                    .iter()
                    .zip(&starts)
                    .map(|((x, t), s)| (*x, *t, *s))
                    .collect();
                assert_eq!(found, expected, "{} chunk {chunk}", set.dir);
                // Every record pg_waldump listed, plus the 2.2 MB message it could not
                // decode from one file alone; ends are start + xl_tot_len.
                let listed: usize = (0..4)
                    .map(|i| fixture_records(set.dir, &set.name(1, i)).len())
                    .sum();
                assert_eq!(records.len(), listed + 1, "{}", set.dir);
                assert!(
                    records
                        .iter()
                        .all(|r| r.end.0 >= r.start.0 + u64::from(r.header.tot_len))
                );
                let last = records.last().unwrap();
                assert_eq!(scanner.end_of_wal(), Some(Lsn((last.end.0 + 7) & !7)));
                assert!(records.iter().any(|r| r.header.is_switch()));
            }
            // Along the history to timeline 2: timeline 1's segments, then timeline 2's.
            let (_, records) = scan_fixture(set, &[(1, 0), (1, 1), (1, 2), (2, 3)], 50_000);
            let found = commits(&records);
            assert_eq!(found.len(), 6, "{}", set.dir);
            assert_eq!((found[5].0, found[5].1), (xid2, time2), "{}", set.dir);
        }
    }

    /// Block reference headers and their data, then main data, as XLogRecordAssemble lays
    /// them out.
    struct Assembler {
        headers: Vec<u8>,
        data: Vec<u8>,
    }

    impl Assembler {
        fn new() -> Self {
            Assembler {
                headers: Vec::new(),
                data: Vec::new(),
            }
        }

        /// A block reference: optional image (length, hole offset, bimg_info, hole length
        /// when compressed with a hole), optional data, relation unless same_rel.
        fn block(
            &mut self,
            id: u8,
            image: Option<(u16, u8, bool)>,
            data: u16,
            same_rel: bool,
        ) -> &mut Self {
            let mut flags = 0u8;
            if image.is_some() {
                flags |= BKPBLOCK_HAS_IMAGE;
            }
            if data > 0 {
                flags |= BKPBLOCK_HAS_DATA;
            }
            if same_rel {
                flags |= BKPBLOCK_SAME_REL;
            }
            self.headers.extend_from_slice(&[id, flags]);
            self.headers.extend_from_slice(&data.to_le_bytes());
            if let Some((len, info, hole_len)) = image {
                self.headers.extend_from_slice(&len.to_le_bytes());
                self.headers.extend_from_slice(&100u16.to_le_bytes());
                self.headers.push(info);
                if hole_len {
                    self.headers.extend_from_slice(&4000u16.to_le_bytes());
                }
                self.data
                    .extend(std::iter::repeat_n(0xAB, usize::from(len)));
            }
            if !same_rel {
                self.headers
                    .extend_from_slice(&[1, 0, 0, 0, 5, 0, 0, 0, 9, 0, 0, 0]);
            }
            self.headers.extend_from_slice(&7u32.to_le_bytes());
            self.data
                .extend(std::iter::repeat_n(0xCD, usize::from(data)));
            self
        }

        fn raw(&mut self, bytes: &[u8]) -> &mut Self {
            self.headers.extend_from_slice(bytes);
            self
        }

        fn main(&self, main: &[u8]) -> Vec<u8> {
            let mut out = self.headers.clone();
            if main.len() < 256 {
                out.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
            } else {
                out.push(XLR_BLOCK_ID_DATA_LONG);
                out.extend_from_slice(&(main.len() as u32).to_le_bytes());
            }
            out.extend_from_slice(&self.data);
            out.extend_from_slice(main);
            out
        }
    }

    const V15: PageMagic = PageMagic(0xD110);
    const V14: PageMagic = PageMagic(0xD10D);
    const V18: PageMagic = PageMagic(0xD118);

    fn header(rmid: u8, info: u8, xid: u32, payload: &[u8]) -> RecordHeader {
        RecordHeader {
            tot_len: (RECORD_HEADER_LEN + payload.len()) as u32,
            xid,
            prev: Lsn(0),
            info,
            rmid,
            crc: 0,
        }
    }

    fn ts(t: &str) -> [u8; 8] {
        at(t).pg_timestamp().to_le_bytes()
    }

    #[test]
    fn main_data_after_block_references() {
        let main = b"the main data";
        let mut a = Assembler::new();
        a.raw(&[XLR_BLOCK_ID_ORIGIN, 3, 0])
            .raw(&[XLR_BLOCK_ID_TOPLEVEL_XID, 1, 2, 3, 4])
            .block(0, Some((8192, 0x02, false)), 0, false) // 15+: APPLY, whole page
            .block(1, Some((3000, 0x05, true)), 20, true) // pglz with a hole
            .block(3, None, 300, true);
        let payload = a.main(main);
        assert_eq!(main_data(&payload, V15), Ok(&main[..]));
        // Long main data.
        let long = vec![9u8; 300];
        assert_eq!(main_data(&a.main(&long), V18), Ok(&long[..]));
        // No main data at all.
        let mut none = Assembler::new();
        none.block(0, None, 10, false);
        let bytes = [none.headers.clone(), none.data.clone()].concat();
        assert_eq!(main_data(&bytes, V15), Ok(&[][..]));
        // 14 and older: 0x02 means compressed, so a hole length follows.
        let mut old = Assembler::new();
        old.block(0, Some((3000, 0x03, true)), 0, false);
        assert_eq!(main_data(&old.main(main), V14), Ok(&main[..]));
        assert!(main_data(&old.main(main), V15).is_err());
    }

    #[test]
    fn malformed_block_references_are_reported() {
        let main = b"xyz";
        let mut a = Assembler::new();
        a.block(0, None, 10, false);
        let good = a.main(main);
        assert_eq!(
            main_data(&good[..good.len() - 1], V15),
            Err(DecodeError::DataLength {
                declared: 13,
                actual: 12
            })
        );
        assert_eq!(main_data(&[0, 0x20], V15), Err(DecodeError::Truncated));
        assert_eq!(main_data(&[40, 0, 0], V15), Err(DecodeError::BlockId(40)));
        let mut same = Assembler::new();
        same.block(0, None, 1, true);
        assert_eq!(
            main_data(&same.main(main), V15),
            Err(DecodeError::SameRelFirst)
        );
        let mut flag = good.clone();
        flag[1] &= !BKPBLOCK_HAS_DATA;
        assert_eq!(main_data(&flag, V15), Err(DecodeError::DataFlag(0)));
    }

    #[test]
    fn decodes_commits_aborts_and_restore_points() {
        let t = "2026-11-22 19:30:00.123456";
        // A plain commit with xinfo (dbinfo and invals): the header's xid counts.
        let mut main = ts(t).to_vec();
        main.extend_from_slice(&(XACT_XINFO_HAS_DBINFO | XACT_XINFO_HAS_INVALS).to_le_bytes());
        main.extend_from_slice(&[0; 8]);
        main.extend_from_slice(&1i32.to_le_bytes());
        main.extend_from_slice(&[0; 16]);
        let payload = Assembler::new().main(&main);
        let commit = header(
            RM_XACT_ID,
            XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO,
            900,
            &payload,
        );
        assert_eq!(
            decode_event(&commit, &payload, V15),
            Ok(Some(RecordEvent::TransactionEnd {
                kind: XactKind::Commit,
                xid: 900,
                time: at(t)
            }))
        );
        let abort = header(RM_XACT_ID, XLOG_XACT_ABORT, 901, &payload);
        assert!(matches!(
            decode_event(&abort, &payload, V15),
            Ok(Some(RecordEvent::TransactionEnd {
                kind: XactKind::Abort,
                xid: 901,
                ..
            }))
        ));

        // COMMIT PREPARED: every optional part before the prepared transaction's xid.
        for (magic, stats_len) in [(V15, 12), (V18, 16)] {
            let xinfo = XACT_XINFO_HAS_DBINFO
                | XACT_XINFO_HAS_SUBXACTS
                | XACT_XINFO_HAS_RELFILELOCATORS
                | XACT_XINFO_HAS_DROPPED_STATS
                | XACT_XINFO_HAS_INVALS
                | XACT_XINFO_HAS_TWOPHASE
                | (1 << 7); // HAS_GID
            let parts = |invals: bool| {
                let mut m = ts(t).to_vec();
                m.extend_from_slice(&xinfo.to_le_bytes());
                m.extend_from_slice(&[0; 8]); // dbinfo
                m.extend_from_slice(&2i32.to_le_bytes());
                m.extend_from_slice(&[0; 8]); // 2 subxacts
                m.extend_from_slice(&1i32.to_le_bytes());
                m.extend_from_slice(&[0; 12]); // 1 relation
                m.extend_from_slice(&3i32.to_le_bytes());
                m.extend(std::iter::repeat_n(0, 3 * stats_len)); // 3 dropped stats
                if invals {
                    m.extend_from_slice(&2i32.to_le_bytes());
                    m.extend_from_slice(&[0; 32]);
                }
                m.extend_from_slice(&777u32.to_le_bytes());
                m.extend_from_slice(b"gid-1\0");
                m
            };
            let info = XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO;
            let payload = Assembler::new().main(&parts(true));
            assert_eq!(
                decode_event(&header(RM_XACT_ID, info, 950, &payload), &payload, magic),
                Ok(Some(RecordEvent::TransactionEnd {
                    kind: XactKind::CommitPrepared,
                    xid: 777,
                    time: at(t)
                }))
            );
            // ABORT PREPARED has no invalidation messages.
            let info = XLOG_XACT_ABORT_PREPARED | XLOG_XACT_HAS_INFO;
            let payload = Assembler::new().main(&parts(false));
            assert!(matches!(
                decode_event(&header(RM_XACT_ID, info, 951, &payload), &payload, magic),
                Ok(Some(RecordEvent::TransactionEnd {
                    kind: XactKind::AbortPrepared,
                    xid: 777,
                    ..
                }))
            ));
        }
        // A prepared commit without its xid, and a truncated one.
        let payload = Assembler::new().main(&ts(t));
        let h = header(RM_XACT_ID, XLOG_XACT_COMMIT_PREPARED, 1, &payload);
        assert_eq!(
            decode_event(&h, &payload, V15),
            Err(DecodeError::NoTwoPhaseXid("commit prepared"))
        );
        let payload = Assembler::new().main(&[1, 2, 3]);
        assert!(matches!(
            decode_event(
                &header(RM_XACT_ID, XLOG_XACT_COMMIT, 1, &payload),
                &payload,
                V15
            ),
            Err(DecodeError::MainData { .. })
        ));
        // Other transaction records (PREPARE 0x10, ASSIGNMENT 0x50) are not events.
        for info in [0x10, 0x50] {
            let h = header(RM_XACT_ID, info, 1, &payload);
            assert_eq!(decode_event(&h, &payload, V15), Ok(None));
        }

        // A restore point: the name up to its NUL.
        let mut rp = ts(t).to_vec();
        let mut name = [0u8; 64];
        name[..14].copy_from_slice(b"before-upgrade");
        rp.extend_from_slice(&name);
        let payload = Assembler::new().main(&rp);
        let h = header(0, XLOG_RESTORE_POINT, 0, &payload);
        assert_eq!(
            decode_event(&h, &payload, V15),
            Ok(Some(RecordEvent::RestorePoint {
                time: at(t),
                name: "before-upgrade".into()
            }))
        );
        let mut unterminated = ts(t).to_vec();
        unterminated.extend_from_slice(&[b'x'; 64]);
        let payload = Assembler::new().main(&unterminated);
        assert!(decode_event(&header(0, XLOG_RESTORE_POINT, 0, &payload), &payload, V15).is_err());
        // Other XLOG records are not.
        assert_eq!(
            decode_event(&header(0, 0x40, 0, &payload), &payload, V15),
            Ok(None)
        );
    }

    #[test]
    fn scanner_decodes_records_crossing_pages() {
        let t = "2026-11-22 19:30:00";
        let mut b = WalBuilder::new(3);
        let mut rp = ts(t).to_vec();
        let mut name = [0u8; 64];
        name[..4].copy_from_slice(b"here");
        rp.extend_from_slice(&name);
        let mut commit = Assembler::new();
        commit.block(0, Some((8192, 0x02, false)), 0, false);
        let commit = commit.main(&ts(t));
        let mut expected = Vec::new();
        // Records of every size around them, so they land across page boundaries.
        for i in 0..40u32 {
            b.record(1000 + i as usize * 13);
            let w = b.record_bytes(0, XLOG_RESTORE_POINT, 0, &Assembler::new().main(&rp));
            expected.push((w.start, None));
            let w = b.record_bytes(RM_XACT_ID, XLOG_XACT_COMMIT, 1000 + i, &commit);
            expected.push((w.start, Some(1000 + i)));
        }
        for chunk in [7, 500, 1 << 20] {
            let mut s = WalScanner::new(config(1), Lsn(b.base)).unwrap();
            let mut got = Vec::new();
            for piece in b.bytes.chunks(chunk) {
                s.feed(piece).unwrap();
                while let Some(r) = s.next_record() {
                    match r.event.unwrap() {
                        Some(RecordEvent::RestorePoint { name, time }) => {
                            assert_eq!((name.as_str(), time), ("here", at(t)));
                            got.push((r.start, None));
                        }
                        Some(RecordEvent::TransactionEnd { xid, time, .. }) => {
                            assert_eq!(time, at(t));
                            got.push((r.start, Some(xid)));
                        }
                        None => assert_eq!(r.header.rmid, 10),
                    }
                }
            }
            assert_eq!(got, expected, "chunk {chunk}");
        }
        // A corrupted record is not yielded; those before it are.
        let victim = b.at(expected[20].0) + 30;
        b.bytes[victim] ^= 1;
        let mut s = WalScanner::new(config(1), Lsn(b.base)).unwrap();
        assert!(s.feed(&b.bytes).is_err());
        let mut last = None;
        while let Some(r) = s.next_record() {
            last = Some(r.start);
        }
        assert!(last < Some(expected[20].0) && last >= Some(expected[19].0));
    }
}
