//! WAL page headers: the 24-byte short header on every 8 KiB WAL page and the 40-byte long
//! header on the first page of each segment, parsed from the server's native (little-endian)
//! byte order and validated as PostgreSQL's `XLogReaderValidatePageHeader` does.

use super::{Lsn, TimelineId, WalSegSize};

/// The WAL page size, `XLOG_BLCKSZ`. Only the default 8 KiB is supported.
pub const WAL_BLOCK_SIZE: u32 = 8192;
/// Size of the short page header (`SizeOfXLogShortPHD`).
pub const SHORT_HEADER_LEN: usize = 24;
/// Size of the long page header (`SizeOfXLogLongPHD`).
pub const LONG_HEADER_LEN: usize = 40;

/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record from earlier pages.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_LONG_HEADER`: the page has the long header (first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;

/// `XLOG_PAGE_MAGIC`: the WAL format version written in every page header.
///
/// It is a format version, not a server version: minor releases of one major keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageMagic(pub u16);

impl PageMagic {
    /// The last magic of the PostgreSQL 10–18 flag layout (18's).
    const LAST_OLD_FLAGS: u16 = 0xD118;

    /// The magic a server of this major version (10, 11, … 18) writes.
    pub fn for_major(major: u32) -> Option<PageMagic> {
        let magic = match major {
            10 => 0xD097,
            11 => 0xD098,
            12 => 0xD101,
            13 => 0xD106,
            14 => 0xD10D,
            15 => 0xD110,
            16 => 0xD113,
            17 => 0xD116,
            18 => 0xD118,
            _ => return None,
        };
        Some(PageMagic(magic))
    }

    /// The magic of a server reporting this `server_version_num` (e.g. 150018).
    pub fn for_server_version_num(num: u32) -> Option<PageMagic> {
        Self::for_major(num / 10000)
    }

    /// `XLP_FIRST_IS_OVERWRITE_CONTRECORD` in this format: 0x0008 up to 18, 0x0004 after
    /// (where 18's `XLP_BKP_REMOVABLE` 0x0004 was removed).
    pub fn overwrite_contrecord_flag(self) -> u16 {
        if self.0 <= Self::LAST_OLD_FLAGS {
            0x0008
        } else {
            0x0004
        }
    }

    /// `XLP_ALL_FLAGS` in this format: any other bit makes a header invalid.
    pub fn valid_info_mask(self) -> u16 {
        if self.0 <= Self::LAST_OLD_FLAGS {
            0x000F
        } else {
            0x0007
        }
    }
}

/// A parsed WAL page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: PageMagic,
    pub info: u16,
    /// Timeline of the first record on the page (may be older than the file's timeline).
    pub tli: TimelineId,
    /// The LSN of the page itself.
    pub pageaddr: Lsn,
    /// Bytes of a record continued from earlier pages that remain, from this page on.
    pub rem_len: u32,
    /// Present when `XLP_LONG_HEADER` is set.
    pub long: Option<LongPageHeader>,
}

/// The extra fields of a long page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPageHeader {
    pub system_identifier: u64,
    pub seg_size: u32,
    pub block_size: u32,
}

/// What is wrong with a page header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page header needs {needed} bytes, only {got} given")]
    Truncated { needed: usize, got: usize },
    #[error("page magic 0x{found:04X} where 0x{expected:04X} was expected (wrong server version?)")]
    Magic { found: u16, expected: u16 },
    #[error("page info bits 0x{0:04X} include unknown flags")]
    InfoBits(u16),
    #[error("first page of the segment lacks the long header")]
    MissingLongHeader,
    #[error("long header on a page that is not the first of its segment")]
    UnexpectedLongHeader,
    #[error("page is from system {found} where {expected} was expected (another cluster's WAL)")]
    SystemIdentifier { found: u64, expected: u64 },
    #[error("page says segment size {found} bytes where {expected} was expected")]
    SegmentSize { found: u32, expected: u64 },
    #[error("page says block size {0} bytes; only 8192 is supported")]
    BlockSize(u32),
    #[error("page address {found} where {expected} was expected")]
    PageAddress { found: Lsn, expected: Lsn },
    #[error("page timeline {found} is below the previous page's {previous}")]
    TimelineDecreased {
        found: TimelineId,
        previous: TimelineId,
    },
    #[error("page timeline {found} is beyond the file's timeline {file}")]
    TimelineAfterFile { found: TimelineId, file: TimelineId },
}

impl PageHeader {
    /// Parses a header from the start of `bytes`: 24 bytes, and the long fields too when
    /// the long flag is set and 40 bytes are given (validation reports a long-flagged header
    /// whose long fields were not given).
    pub fn parse(bytes: &[u8]) -> Result<PageHeader, PageError> {
        let short = bytes.get(..SHORT_HEADER_LEN).ok_or(PageError::Truncated {
            needed: SHORT_HEADER_LEN,
            got: bytes.len(),
        })?;
        let info = le_u16(short, 2);
        let long = match bytes.get(..LONG_HEADER_LEN) {
            Some(l) if info & XLP_LONG_HEADER != 0 => Some(LongPageHeader {
                system_identifier: le_u64(l, 24),
                seg_size: le_u32(l, 32),
                block_size: le_u32(l, 36),
            }),
            _ => None,
        };
        Ok(PageHeader {
            magic: PageMagic(le_u16(short, 0)),
            info,
            tli: TimelineId(le_u32(short, 4)),
            pageaddr: Lsn(le_u64(short, 8)),
            rem_len: le_u32(short, 16),
            long,
        })
    }

    /// The header's size: where the page's data starts.
    pub fn header_len(&self) -> usize {
        if self.info & XLP_LONG_HEADER != 0 {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    /// Whether the page starts with the continuation of an earlier record.
    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// Whether the page says the record continued into it was abandoned (crash) and a new
    /// `XLOG_OVERWRITE_CONTRECORD` record starts after the header instead.
    pub fn is_overwrite_contrecord(&self) -> bool {
        self.info & self.magic.overwrite_contrecord_flag() != 0
    }
}

/// What a page header is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageExpectations {
    pub magic: PageMagic,
    pub seg_size: WalSegSize,
    /// The cluster's system identifier, when known.
    pub system_identifier: Option<u64>,
    /// The timeline in the segment file's name.
    pub file_tli: TimelineId,
}

impl PageExpectations {
    /// Validates `hdr`, read at `expected` (the page's LSN), after a page of timeline
    /// `previous_tli` (None for the first page read).
    pub fn validate(
        &self,
        hdr: &PageHeader,
        expected: Lsn,
        previous_tli: Option<TimelineId>,
    ) -> Result<(), PageError> {
        if hdr.magic != self.magic {
            return Err(PageError::Magic {
                found: hdr.magic.0,
                expected: self.magic.0,
            });
        }
        if hdr.info & !self.magic.valid_info_mask() != 0 {
            return Err(PageError::InfoBits(hdr.info));
        }
        self.validate_long(hdr, expected)?;
        if hdr.pageaddr != expected {
            return Err(PageError::PageAddress {
                found: hdr.pageaddr,
                expected,
            });
        }
        if let Some(previous) = previous_tli.filter(|p| hdr.tli < *p) {
            return Err(PageError::TimelineDecreased {
                found: hdr.tli,
                previous,
            });
        }
        if hdr.tli > self.file_tli {
            return Err(PageError::TimelineAfterFile {
                found: hdr.tli,
                file: self.file_tli,
            });
        }
        Ok(())
    }

    /// The long header is required exactly on the first page of a segment, and must agree.
    fn validate_long(&self, hdr: &PageHeader, expected: Lsn) -> Result<(), PageError> {
        let first_page = expected.segment_offset(self.seg_size) == 0;
        let flagged = hdr.info & XLP_LONG_HEADER != 0;
        let long = match (first_page, flagged, hdr.long) {
            (false, false, _) => return Ok(()),
            (false, true, _) => return Err(PageError::UnexpectedLongHeader),
            (true, false, _) => return Err(PageError::MissingLongHeader),
            (true, true, None) => {
                return Err(PageError::Truncated {
                    needed: LONG_HEADER_LEN,
                    got: SHORT_HEADER_LEN,
                });
            }
            (true, true, Some(long)) => long,
        };
        if let Some(sysid) = self
            .system_identifier
            .filter(|s| *s != long.system_identifier)
        {
            return Err(PageError::SystemIdentifier {
                found: long.system_identifier,
                expected: sysid,
            });
        }
        if u64::from(long.seg_size) != self.seg_size.bytes() {
            return Err(PageError::SegmentSize {
                found: long.seg_size,
                expected: self.seg_size.bytes(),
            });
        }
        if long.block_size != WAL_BLOCK_SIZE {
            return Err(PageError::BlockSize(long.block_size));
        }
        Ok(())
    }
}

/// Little-endian reads at fixed offsets; out-of-range reads yield 0 (callers check lengths).
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn first_page_of(version: &str, name: &str) -> Vec<u8> {
        let path = format!(
            "{}/fixtures/wal/{version}/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap()[..8192].to_vec()
    }

    #[test]
    fn magic_by_version() {
        assert_eq!(PageMagic::for_major(15), Some(PageMagic(0xD110)));
        assert_eq!(PageMagic::for_major(17), Some(PageMagic(0xD116)));
        assert_eq!(
            PageMagic::for_server_version_num(180006),
            Some(PageMagic(0xD118))
        );
        assert_eq!(PageMagic::for_major(9), None);
        assert_eq!(PageMagic(0xD118).overwrite_contrecord_flag(), 0x0008);
        assert_eq!(PageMagic(0xD120).overwrite_contrecord_flag(), 0x0004);
        assert_eq!(PageMagic(0xD120).valid_info_mask(), 0x0007);
    }

    #[test]
    fn parses_and_validates_a_real_long_header() {
        let page = first_page_of("pg16", "000000010000000000000007");
        let h = PageHeader::parse(&page).unwrap();
        assert_eq!(h.magic, PageMagic::for_major(16).unwrap());
        assert_eq!(h.header_len(), LONG_HEADER_LEN);
        assert!(h.is_contrecord() && !h.is_overwrite_contrecord());
        assert_eq!(h.pageaddr, Lsn(0x70_0000));
        let long = h.long.unwrap();
        assert_eq!((long.seg_size, long.block_size), (1 << 20, 8192));
        let expect = PageExpectations {
            magic: h.magic,
            seg_size: WalSegSize::new(1 << 20).unwrap(),
            system_identifier: Some(long.system_identifier),
            file_tli: TimelineId(1),
        };
        assert_eq!(expect.validate(&h, Lsn(0x70_0000), None), Ok(()));
        assert_eq!(
            expect.validate(&h, Lsn(0x80_0000), None),
            Err(PageError::PageAddress {
                found: Lsn(0x70_0000),
                expected: Lsn(0x80_0000)
            })
        );
        // Given only 24 bytes, the long fields are missing and validation says so.
        let short = PageHeader::parse(&page[..24]).unwrap();
        assert!(matches!(
            expect.validate(&short, Lsn(0x70_0000), None),
            Err(PageError::Truncated { .. })
        ));
        assert!(matches!(
            PageHeader::parse(&page[..23]),
            Err(PageError::Truncated {
                needed: 24,
                got: 23
            })
        ));
        // A long header where a short one belongs.
        let mut moved = h;
        moved.pageaddr = Lsn(0x70_2000);
        assert_eq!(
            expect.validate(&moved, Lsn(0x70_2000), None),
            Err(PageError::UnexpectedLongHeader)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(h) = PageHeader::parse(&bytes) {
                let expect = PageExpectations {
                    magic: h.magic,
                    seg_size: WalSegSize::DEFAULT,
                    system_identifier: Some(1),
                    file_tli: TimelineId(1),
                };
                let _ = expect.validate(&h, h.pageaddr, Some(TimelineId(2)));
            }
        }
    }
}
