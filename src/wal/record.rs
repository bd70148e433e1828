//! WAL record headers (`XLogRecord`, 24 bytes), their sanity checks, and the record CRC.
//!
//! PostgreSQL's record CRC is CRC-32C over the payload (everything after the 24-byte header)
//! followed by the first 20 header bytes (all of it but `xl_crc`; the two padding bytes are
//! included). [`RecordCrc`] computes it incrementally so no record has to be buffered.

use super::Lsn;
use super::page::{le_u32, le_u64};

/// Size of a record header (`SizeOfXLogRecord`).
pub const RECORD_HEADER_LEN: usize = 24;
/// The largest record PostgreSQL writes (`XLogRecordMaxSize`, 1020 MiB).
pub const MAX_RECORD_LEN: u32 = 1020 * 1024 * 1024;
/// Header bytes covered by the CRC: all but `xl_crc`.
const CRC_COVERED_HEADER: usize = 20;

/// Resource manager id of XLOG itself.
pub const RM_XLOG_ID: u8 = 0;
/// `XLOG_SWITCH` (rmgr XLOG, high nibble of `xl_info`): the rest of the segment is unused.
const XLOG_SWITCH: u8 = 0x40;
/// Highest built-in resource manager id (21 in 10–18, 22 in 19); newer ids are accepted.
const RM_MAX_BUILTIN_ID: u8 = 22;
/// Custom resource managers (15+) use ids 128–255.
const RM_MIN_CUSTOM_ID: u8 = 128;

/// Rounds up to PostgreSQL's `MAXALIGN` (8 bytes on 64-bit platforms).
pub fn maxalign(n: u64) -> u64 {
    n.saturating_add(7) & !7
}

/// A parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Length of the whole record, header included.
    pub tot_len: u32,
    pub xid: u32,
    /// Start of the previous record.
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record at {at} has length {tot_len}, below the 24-byte header")]
    TooShort { at: Lsn, tot_len: u32 },
    #[error("record at {at} has length {tot_len}, above the 1020 MB maximum")]
    TooLong { at: Lsn, tot_len: u32 },
    #[error("record at {at} has invalid resource manager id {rmid}")]
    ResourceManager { at: Lsn, rmid: u8 },
    #[error("record at {at} points back to {found} where the previous record is at {expected}")]
    PrevLink { at: Lsn, found: Lsn, expected: Lsn },
    #[error("record at {at} points back to {found}, which is not before it")]
    PrevNotBefore { at: Lsn, found: Lsn },
    #[error("record at {at} has CRC 0x{stored:08X} but its bytes give 0x{computed:08X}")]
    Crc { at: Lsn, stored: u32, computed: u32 },
}

impl RecordHeader {
    /// Parses the 24 header bytes.
    pub fn parse(b: &[u8; RECORD_HEADER_LEN]) -> RecordHeader {
        RecordHeader {
            tot_len: le_u32(b, 0),
            xid: le_u32(b, 4),
            prev: Lsn(le_u64(b, 8)),
            info: b[16],
            rmid: b[17],
            crc: le_u32(b, 20),
        }
    }

    /// Whether this is an `XLOG_SWITCH` record.
    pub fn is_switch(&self) -> bool {
        self.rmid == RM_XLOG_ID && self.info & 0xF0 == XLOG_SWITCH
    }

    /// Checks `xl_tot_len` alone: it is all that is guaranteed to be on a record's first page.
    pub fn check_length(at: Lsn, tot_len: u32) -> Result<(), RecordError> {
        if (tot_len as usize) < RECORD_HEADER_LEN {
            Err(RecordError::TooShort { at, tot_len })
        } else if tot_len > MAX_RECORD_LEN {
            Err(RecordError::TooLong { at, tot_len })
        } else {
            Ok(())
        }
    }

    /// `ValidXLogRecordHeader`: length, resource manager and the back link. `prev` is the
    /// start of the record read before this one, or None when reading starts here (then the
    /// link need only point backwards).
    pub fn validate(&self, at: Lsn, prev: Option<Lsn>) -> Result<(), RecordError> {
        Self::check_length(at, self.tot_len)?;
        if !(self.rmid <= RM_MAX_BUILTIN_ID || self.rmid >= RM_MIN_CUSTOM_ID) {
            return Err(RecordError::ResourceManager {
                at,
                rmid: self.rmid,
            });
        }
        match prev {
            Some(expected) if self.prev != expected => Err(RecordError::PrevLink {
                at,
                found: self.prev,
                expected,
            }),
            None if self.prev >= at => Err(RecordError::PrevNotBefore {
                at,
                found: self.prev,
            }),
            _ => Ok(()),
        }
    }
}

/// Incremental record CRC: feed the payload as it arrives, then finish with the header.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordCrc(u32);

impl RecordCrc {
    /// Adds payload bytes (those after the 24-byte header), in order.
    pub fn update(&mut self, payload: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, payload);
    }

    /// The CRC PostgreSQL stores in `xl_crc` for this payload and header.
    pub fn finish(self, header: &[u8; RECORD_HEADER_LEN]) -> u32 {
        crc32c::crc32c_append(self.0, &header[..CRC_COVERED_HEADER])
    }
}

/// The CRC of a whole record held in memory (header then payload), as stored in `xl_crc`.
pub fn record_crc(record: &[u8]) -> Option<u32> {
    let header: &[u8; RECORD_HEADER_LEN] = record.get(..RECORD_HEADER_LEN)?.try_into().ok()?;
    let mut crc = RecordCrc::default();
    crc.update(record.get(RECORD_HEADER_LEN..)?);
    Some(crc.finish(header))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real record from a PostgreSQL 15 cluster: XLOG CHECKPOINT_SHUTDOWN (114 bytes) at
    /// 0/A00028 of fixtures/wal/pg15/00000001000000000000000A.
    fn real_record() -> Vec<u8> {
        let seg = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/wal/pg15/00000001000000000000000A"
        ))
        .unwrap();
        seg[0x28..0x28 + 114].to_vec()
    }

    #[test]
    fn crc_matches_postgresql() {
        let rec = real_record();
        let hdr = RecordHeader::parse(rec[..24].try_into().unwrap());
        assert_eq!(hdr.tot_len, 114);
        assert_eq!((hdr.rmid, hdr.info & 0xF0), (RM_XLOG_ID, 0x00));
        assert_eq!(record_crc(&rec), Some(hdr.crc));
        // Incremental in odd pieces gives the same.
        let mut crc = RecordCrc::default();
        for piece in rec[24..].chunks(7) {
            crc.update(piece);
        }
        assert_eq!(crc.finish(rec[..24].try_into().unwrap()), hdr.crc);
        // xl_crc itself is not covered; the padding bytes are.
        let mut other = rec.clone();
        other[20] ^= 1;
        assert_eq!(record_crc(&other), Some(hdr.crc));
        other[18] ^= 1;
        assert_ne!(record_crc(&other), Some(hdr.crc));
        assert_eq!(record_crc(&rec[..10]), None);
    }

    #[test]
    fn header_checks() {
        let at = Lsn(0x100_0028);
        let ok = RecordHeader {
            tot_len: 30,
            xid: 0,
            prev: Lsn(0x100_0000),
            info: 0x40,
            rmid: 0,
            crc: 0,
        };
        assert!(ok.is_switch());
        assert_eq!(ok.validate(at, Some(Lsn(0x100_0000))), Ok(()));
        assert_eq!(ok.validate(at, None), Ok(()));
        assert!(matches!(
            ok.validate(at, Some(Lsn(8))),
            Err(RecordError::PrevLink { .. })
        ));
        let forward = RecordHeader { prev: at, ..ok };
        assert!(matches!(
            forward.validate(at, None),
            Err(RecordError::PrevNotBefore { .. })
        ));
        for rmid in [23u8, 100, 127] {
            let h = RecordHeader { rmid, ..ok };
            assert!(matches!(
                h.validate(at, None),
                Err(RecordError::ResourceManager { .. })
            ));
        }
        for rmid in [21u8, 128, 255] {
            assert_eq!(RecordHeader { rmid, ..ok }.validate(at, None), Ok(()));
        }
        assert!(!RecordHeader { info: 0x50, ..ok }.is_switch());
        assert!(!RecordHeader { rmid: 1, ..ok }.is_switch());
        assert!(matches!(
            RecordHeader::check_length(at, 23),
            Err(RecordError::TooShort { .. })
        ));
        assert!(matches!(
            RecordHeader::check_length(at, MAX_RECORD_LEN + 1),
            Err(RecordError::TooLong { .. })
        ));
        assert_eq!(maxalign(0), 0);
        assert_eq!(maxalign(1), 8);
        assert_eq!(maxalign(114), 120);
        assert_eq!(maxalign(u64::MAX), 0xFFFF_FFFF_FFFF_FFF8);
    }
}
