//! WAL segments: the segment size, segment numbers, and the file names PostgreSQL gives
//! segments (`000000010000000000000001`) and timeline history files (`00000002.history`).
//!
//! Names depend on the segment size: the middle eight hex digits count 4 GiB "xlogids" and the
//! last eight count segments within one, so segment 256 of 16 MiB is `…0000000100000000` but
//! with 1 MiB segments it is `…0000000000000100`.

use std::fmt;
use std::str::FromStr;

use super::{Lsn, TimelineId};

/// The `wal_segment_size` of a cluster: a power of two from 1 MiB to 1 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalSegSize(u32);

/// A segment size that PostgreSQL would not accept, or a setting that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalSegSizeError {
    #[error("WAL segment size {0} bytes is invalid: it must be a power of two from 1MB to 1GB")]
    Invalid(u64),
    #[error("cannot parse WAL segment size {0:?}: expected a size such as 16MB, 1MB or 1GB")]
    Unparsable(String),
}

impl WalSegSize {
    /// The default size, 16 MiB (the only size PostgreSQL 10 supports).
    pub const DEFAULT: WalSegSize = WalSegSize(16 * 1024 * 1024);
    const MIN: u64 = 1024 * 1024;
    const MAX: u64 = 1024 * 1024 * 1024;

    /// Validates a size in bytes.
    pub fn new(bytes: u64) -> Result<Self, WalSegSizeError> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            u32::try_from(bytes)
                .map(WalSegSize)
                .map_err(|_| WalSegSizeError::Invalid(bytes))
        } else {
            Err(WalSegSizeError::Invalid(bytes))
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    /// Segments per 4 GiB "xlogid", the unit of the middle part of a segment name.
    fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.bytes()
    }
}

impl FromStr for WalSegSize {
    type Err = WalSegSizeError;

    /// Parses `SHOW wal_segment_size` output (`16MB`, `1GB`, `1024kB`) or plain bytes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unparsable = || WalSegSizeError::Unparsable(s.to_string());
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let (num, unit) = s.split_at(digits);
        let multiplier: u64 = match unit {
            "" | "B" => 1,
            "kB" => 1024,
            "MB" => 1024 * 1024,
            "GB" => 1024 * 1024 * 1024,
            _ => return Err(unparsable()),
        };
        let n: u64 = num.parse().map_err(|_| unparsable())?;
        Self::new(n.checked_mul(multiplier).ok_or_else(unparsable)?)
    }
}

impl fmt::Display for WalSegSize {
    /// Formats as PostgreSQL shows the setting: `16MB`, `1GB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1024 * 1024 * 1024 {
            write!(f, "{}GB", self.0 >> 30)
        } else {
            write!(f, "{}MB", self.0 >> 20)
        }
    }
}

/// A segment number: the index of a `wal_segment_size` slice of the WAL stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegNo(pub u64);

impl SegNo {
    /// The first LSN of this segment.
    pub fn start_lsn(self, size: WalSegSize) -> Lsn {
        Lsn(self.0.wrapping_mul(size.bytes()))
    }

    /// The following segment.
    pub fn next(self) -> SegNo {
        SegNo(self.0.wrapping_add(1))
    }
}

impl Lsn {
    /// The segment holding the byte at this position (`XLByteToSeg`).
    pub fn segno(self, size: WalSegSize) -> SegNo {
        SegNo(self.0 / size.bytes())
    }

    /// The segment holding the byte just before this position (`XLByteToPrevSeg`): where a
    /// record that ends here was completed.
    pub fn prev_segno(self, size: WalSegSize) -> SegNo {
        SegNo(self.0.saturating_sub(1) / size.bytes())
    }

    /// This position's byte offset within its segment (`XLogSegmentOffset`).
    pub fn segment_offset(self, size: WalSegSize) -> u32 {
        // The offset is below the segment size, which fits in u32.
        (self.0 & (size.bytes() - 1)) as u32
    }
}

/// The name of a WAL segment file as it appears in `pg_wal/` or in a store:
/// `TTTTTTTTXXXXXXXXYYYYYYYY[.zst][.partial]` (compressed partials are named like
/// pg_receivewal's `.gz.partial`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalFileName {
    pub tli: TimelineId,
    pub segno: SegNo,
    /// `.partial`: a segment not (yet) complete.
    pub partial: bool,
    /// `.zst`: the content is zstd-compressed.
    pub compressed: bool,
}

/// A file name that is not a WAL segment name for the given segment size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a WAL segment file name for {size} segments")]
pub struct WalFileNameError {
    pub name: String,
    pub size: WalSegSize,
}

impl WalFileName {
    /// A plain (complete, uncompressed) segment name.
    pub fn segment(tli: TimelineId, segno: SegNo) -> Self {
        WalFileName {
            tli,
            segno,
            partial: false,
            compressed: false,
        }
    }

    /// Formats the name PostgreSQL gives this segment with this segment size.
    pub fn format(&self, size: WalSegSize) -> String {
        let mut name = segment_file_name(self.tli, self.segno, size);
        if self.compressed {
            name.push_str(".zst");
        }
        if self.partial {
            name.push_str(".partial");
        }
        name
    }

    /// Parses a segment name (with optional `.zst` and `.partial` suffixes, in that order).
    /// Only names PostgreSQL itself could produce for this size are accepted: upper-case hex,
    /// a timeline above zero, a within-xlogid part below the segments per xlogid.
    pub fn parse(name: &str, size: WalSegSize) -> Result<Self, WalFileNameError> {
        let err = || WalFileNameError {
            name: name.to_string(),
            size,
        };
        let (rest, partial) = strip(name, ".partial");
        let (base, compressed) = strip(rest, ".zst");
        if base.len() != 24 || !base.is_ascii() {
            return Err(err());
        }
        let tli = upper_hex_u32(&base[0..8])
            .filter(|t| *t != 0)
            .ok_or_else(err)?;
        let log = upper_hex_u32(&base[8..16]).ok_or_else(err)?;
        let seg = upper_hex_u32(&base[16..24]).ok_or_else(err)?;
        let per_id = size.segments_per_xlogid();
        if u64::from(seg) >= per_id {
            return Err(err());
        }
        let segno = SegNo(u64::from(log) * per_id + u64::from(seg));
        Ok(WalFileName {
            tli: TimelineId(tli),
            segno,
            partial,
            compressed,
        })
    }
}

fn strip<'a>(s: &'a str, suffix: &str) -> (&'a str, bool) {
    match s.strip_suffix(suffix) {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

/// Eight upper-case hex digits, as PostgreSQL writes them in file names.
fn upper_hex_u32(s: &str) -> Option<u32> {
    if s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// `%08X%08X%08X` of timeline, xlogid and segment within it (`XLogFileName`).
pub fn segment_file_name(tli: TimelineId, segno: SegNo, size: WalSegSize) -> String {
    let per_id = size.segments_per_xlogid();
    // The xlogid part of a 64-bit segment number always fits in 32 bits (per_id >= 4).
    format!(
        "{:08X}{:08X}{:08X}",
        tli.0,
        segno.0 / per_id,
        segno.0 % per_id
    )
}

/// `%08X.history`: the name of a timeline's history file.
pub fn history_file_name(tli: TimelineId) -> String {
    format!("{:08X}.history", tli.0)
}

/// The timeline of a history file name (`00000002.history`), if it is one.
pub fn parse_history_file_name(name: &str) -> Option<TimelineId> {
    let hex = name.strip_suffix(".history")?;
    upper_hex_u32(hex).filter(|t| *t != 0).map(TimelineId)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn size(mb: u64) -> WalSegSize {
        WalSegSize::new(mb << 20).unwrap()
    }

    #[test]
    fn seg_size_settings() {
        assert_eq!("16MB".parse(), Ok(WalSegSize::DEFAULT));
        assert_eq!("1MB".parse::<WalSegSize>().unwrap().bytes(), 1 << 20);
        assert_eq!("1GB".parse::<WalSegSize>().unwrap().bytes(), 1 << 30);
        assert_eq!("1024kB".parse::<WalSegSize>().unwrap().bytes(), 1 << 20);
        assert_eq!("2097152".parse::<WalSegSize>().unwrap().bytes(), 2 << 20);
        for bad in [
            "",
            "MB",
            "3MB",
            "512kB",
            "2GB",
            "16 MB",
            "16mb",
            "-1MB",
            "99999999999999GB",
        ] {
            assert!(
                bad.parse::<WalSegSize>().is_err(),
                "{bad:?} should not parse"
            );
        }
        assert_eq!(WalSegSize::DEFAULT.to_string(), "16MB");
        assert_eq!(size(1024).to_string(), "1GB");
    }

    #[test]
    fn names_match_postgresql() {
        let t1 = TimelineId(1);
        assert_eq!(
            segment_file_name(t1, SegNo(1), WalSegSize::DEFAULT),
            "000000010000000000000001"
        );
        // 16 MiB: 256 segments per xlogid.
        assert_eq!(
            segment_file_name(t1, SegNo(256), WalSegSize::DEFAULT),
            "000000010000000100000000"
        );
        // 1 MiB: 4096 per xlogid; 1 GiB: 4.
        assert_eq!(
            segment_file_name(t1, SegNo(256), size(1)),
            "000000010000000000000100"
        );
        assert_eq!(
            segment_file_name(TimelineId(0xA), SegNo(4097), size(1)),
            "0000000A0000000100000001"
        );
        assert_eq!(
            segment_file_name(t1, SegNo(5), size(1024)),
            "000000010000000100000001"
        );
        let lsn: Lsn = "1/A3000028".parse().unwrap();
        assert_eq!(lsn.segno(WalSegSize::DEFAULT), SegNo(0x1A3));
        assert_eq!(lsn.segment_offset(WalSegSize::DEFAULT), 0x28);
        assert_eq!(Lsn(0x300_0000).prev_segno(WalSegSize::DEFAULT), SegNo(2));
        assert_eq!(
            SegNo(0x1A3).start_lsn(WalSegSize::DEFAULT),
            "1/A3000000".parse().unwrap()
        );
    }

    #[test]
    fn name_parsing() {
        let s = WalSegSize::DEFAULT;
        let n = WalFileName::parse("0000000200000001000000A3.zst.partial", s).unwrap();
        assert_eq!(
            n,
            WalFileName {
                tli: TimelineId(2),
                segno: SegNo(0x1A3),
                partial: true,
                compressed: true
            }
        );
        assert_eq!(n.format(s), "0000000200000001000000A3.zst.partial");
        assert!(
            WalFileName::parse("000000010000000000000001.partial", s)
                .unwrap()
                .partial
        );
        for bad in [
            "00000001000000000000000",
            "0000000100000000000000010",
            "000000010000000000000001.partial.zst",
            "00000001000000000000000a",
            "000000000000000000000001",
            "000000010000000000000100", // seg part 0x100 >= 256 per xlogid at 16 MiB
            "00000001.history",
            "+00000010000000000000001",
        ] {
            assert!(
                WalFileName::parse(bad, s).is_err(),
                "{bad:?} should not parse"
            );
        }
        assert!(WalFileName::parse("000000010000000000000100", size(1)).is_ok());
        assert_eq!(history_file_name(TimelineId(0x1F)), "0000001F.history");
        assert_eq!(
            parse_history_file_name("0000001F.history"),
            Some(TimelineId(0x1F))
        );
        for bad in [
            "0000001f.history",
            "1F.history",
            "00000000.history",
            "0000001F.histor",
        ] {
            assert_eq!(parse_history_file_name(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn names_round_trip(tli in 1u32.., segno in any::<u64>(), shift in 20u32..=30, partial: bool, compressed: bool) {
            let size = WalSegSize::new(1 << shift).unwrap();
            // Segment numbers are bounded by the 64-bit LSN space.
            let segno = SegNo(segno >> shift);
            let name = WalFileName { tli: TimelineId(tli), segno, partial, compressed };
            prop_assert_eq!(WalFileName::parse(&name.format(size), size), Ok(name));
            prop_assert_eq!(parse_history_file_name(&history_file_name(TimelineId(tli))), Some(TimelineId(tli)));
        }

        #[test]
        fn name_parsers_never_panic(s in "\\PC{0,40}", shift in 20u32..=30) {
            let size = WalSegSize::new(1 << shift).unwrap();
            let _ = WalFileName::parse(&s, size);
            let _ = parse_history_file_name(&s);
            let _ = s.parse::<WalSegSize>();
        }
    }
}
