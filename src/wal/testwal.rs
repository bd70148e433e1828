//! Test support: builds well-formed WAL in memory (page headers, records split across pages
//! and segments, CRCs) so tests can corrupt it byte by byte, and reads the real fixtures.

use super::{
    Lsn, PageMagic, RECORD_HEADER_LEN, SegNo, TimelineId, VerifierConfig, WAL_BLOCK_SIZE,
    WalSegSize, record_crc,
};

pub const MAGIC: PageMagic = PageMagic(0xD110);
pub const SYSID: u64 = 7_000_000_000_000_000_001;
const BLCKSZ: u64 = WAL_BLOCK_SIZE as u64;

pub fn mb() -> WalSegSize {
    WalSegSize::new(1 << 20).unwrap()
}

pub fn config(tli: u32) -> VerifierConfig {
    VerifierConfig {
        seg_size: mb(),
        magic: MAGIC,
        tli: TimelineId(tli),
        system_identifier: Some(SYSID),
    }
}

/// WAL being written from the start of a segment, like PostgreSQL's insert path.
pub struct WalBuilder {
    pub seg_size: WalSegSize,
    pub tli: u32,
    /// LSN of `bytes[0]`.
    pub base: u64,
    pub bytes: Vec<u8>,
    prev: u64,
}

/// A record the builder wrote: its start and unaligned end.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub start: Lsn,
    pub end: Lsn,
}

impl WalBuilder {
    pub fn new(segno: u64) -> Self {
        let seg_size = mb();
        let base = SegNo(segno).start_lsn(seg_size).0;
        WalBuilder {
            seg_size,
            tli: 1,
            base,
            bytes: Vec::new(),
            prev: base.saturating_sub(0x100),
        }
    }

    fn pos(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Writes a page header at the current (page-aligned) position.
    fn page_header(&mut self, rem_len: u32) {
        self.page_header_with(rem_len, 0);
    }

    /// Simulates crash recovery abandoning a record that ran into the current page: the page
    /// is rewritten with XLP_FIRST_IS_OVERWRITE_CONTRECORD and the back link returns to
    /// `prev` (the last complete record).
    pub fn overwrite_contrecord(&mut self, prev: Lsn) -> Written {
        let page = (self.pos() - 1) / BLCKSZ * BLCKSZ;
        self.bytes.truncate((page - self.base) as usize);
        self.page_header_with(0, 0x0008);
        self.prev = prev.0;
        self.record_with(0, 0xD0, 16)
    }

    fn page_header_with(&mut self, rem_len: u32, extra_info: u16) {
        let pos = self.pos();
        let first = pos.is_multiple_of(self.seg_size.bytes());
        let mut info: u16 = if rem_len > 0 { 1 } else { 0 };
        if first {
            info |= 2;
        }
        info |= 4 | extra_info; // XLP_BKP_REMOVABLE, as 10–18 commonly set it
        self.bytes.extend_from_slice(&MAGIC.0.to_le_bytes());
        self.bytes.extend_from_slice(&info.to_le_bytes());
        self.bytes.extend_from_slice(&self.tli.to_le_bytes());
        self.bytes.extend_from_slice(&pos.to_le_bytes());
        self.bytes.extend_from_slice(&rem_len.to_le_bytes());
        self.bytes.extend_from_slice(&[0; 4]);
        if first {
            self.bytes.extend_from_slice(&SYSID.to_le_bytes());
            self.bytes
                .extend_from_slice(&(self.seg_size.bytes() as u32).to_le_bytes());
            self.bytes.extend_from_slice(&WAL_BLOCK_SIZE.to_le_bytes());
        }
    }

    /// Appends raw record bytes, inserting page headers with the continuation fields.
    fn append(&mut self, record: &[u8]) {
        let mut done = 0;
        while done < record.len() {
            if self.pos().is_multiple_of(BLCKSZ) {
                self.page_header(if done == 0 {
                    0
                } else {
                    (record.len() - done) as u32
                });
            }
            let room = (BLCKSZ - self.pos() % BLCKSZ) as usize;
            let take = room.min(record.len() - done);
            self.bytes.extend_from_slice(&record[done..done + take]);
            done += take;
        }
    }

    /// Writes a record of `payload_len` payload bytes with the given rmgr and info.
    pub fn record_with(&mut self, rmid: u8, info: u8, payload_len: usize) -> Written {
        let start = self.next_record_start();
        let payload: Vec<u8> = (0..payload_len)
            .map(|i| (i * 7 + start as usize) as u8 | 1)
            .collect();
        self.record_bytes(rmid, info, 742, &payload)
    }

    /// Where the next record will start.
    fn next_record_start(&self) -> u64 {
        let pos = self.pos();
        if pos.is_multiple_of(BLCKSZ) {
            let header = if pos.is_multiple_of(self.seg_size.bytes()) {
                40
            } else {
                24
            };
            pos + header
        } else {
            pos
        }
    }

    /// Writes a record with this header and payload (everything after the 24-byte header).
    pub fn record_bytes(&mut self, rmid: u8, info: u8, xid: u32, payload: &[u8]) -> Written {
        if self.pos().is_multiple_of(BLCKSZ) {
            self.page_header(0);
        }
        let start = self.pos();
        let tot_len = (RECORD_HEADER_LEN + payload.len()) as u32;
        let mut rec = Vec::with_capacity(tot_len as usize);
        rec.extend_from_slice(&tot_len.to_le_bytes());
        rec.extend_from_slice(&xid.to_le_bytes());
        rec.extend_from_slice(&self.prev.to_le_bytes());
        rec.extend_from_slice(&[info, rmid, 0, 0, 0, 0, 0, 0]);
        rec.extend_from_slice(payload);
        let crc = record_crc(&rec).unwrap();
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
        self.append(&rec);
        let end = self.pos();
        self.prev = start;
        let aligned = (end + 7) & !7;
        self.bytes.resize((aligned - self.base) as usize, 0);
        Written {
            start: Lsn(start),
            end: Lsn(end),
        }
    }

    pub fn record(&mut self, payload_len: usize) -> Written {
        self.record_with(10, 0x00, payload_len)
    }

    /// An XLOG_SWITCH record; the rest of the segment is left as zero pages with headers.
    pub fn switch(&mut self) -> Written {
        let w = self.record_with(0, 0x40, 0);
        let seg_end =
            (w.end.0 - 1) / self.seg_size.bytes() * self.seg_size.bytes() + self.seg_size.bytes();
        while self.pos() < seg_end {
            if self.pos().is_multiple_of(BLCKSZ) {
                self.page_header(0);
            }
            let fill = BLCKSZ - self.pos() % BLCKSZ;
            self.bytes.resize(self.bytes.len() + fill as usize, 0);
        }
        w
    }

    /// Zero-pads to the end of the current segment.
    pub fn pad_segment(&mut self) {
        let seg = self.seg_size.bytes();
        let end = self.pos().div_ceil(seg) * seg;
        self.bytes
            .resize((end.max(self.base + seg) - self.base) as usize, 0);
    }

    /// Index into `bytes` of an LSN.
    pub fn at(&self, lsn: Lsn) -> usize {
        (lsn.0 - self.base) as usize
    }
}

/// The bytes of a real fixture file.
pub fn fixture(version: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/fixtures/wal/{version}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The record list pg_waldump printed for a fixture segment: (start, xl_tot_len, rmgr).
pub fn fixture_records(version: &str, name: &str) -> Vec<(Lsn, u32, String)> {
    let path = format!(
        "{}/fixtures/wal/{version}/{name}.records",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            let lsn = f.next().unwrap().parse().unwrap();
            let len = f.next().unwrap().parse().unwrap();
            (lsn, len, f.next().unwrap().to_string())
        })
        .collect()
}

/// One server version's fixtures: timeline 1 segments `first_segno..first_segno + 4`
/// (the last ends after a shutdown checkpoint) and timeline 2's segment `first_segno + 3`.
pub struct FixtureSet {
    pub dir: &'static str,
    pub magic: PageMagic,
    pub first_segno: u64,
}

pub const FIXTURES: [FixtureSet; 3] = [
    FixtureSet {
        dir: "pg15",
        magic: PageMagic(0xD110),
        first_segno: 7,
    },
    FixtureSet {
        dir: "pg16",
        magic: PageMagic(0xD113),
        first_segno: 6,
    },
    FixtureSet {
        dir: "pg18",
        magic: PageMagic(0xD118),
        first_segno: 8,
    },
];

impl FixtureSet {
    /// File name of segment `first_segno + i` on timeline `tli`.
    pub fn name(&self, tli: u32, i: u64) -> String {
        super::segment_file_name(TimelineId(tli), SegNo(self.first_segno + i), mb())
    }

    pub fn config(&self, tli: u32) -> VerifierConfig {
        VerifierConfig {
            seg_size: mb(),
            magic: self.magic,
            tli: TimelineId(tli),
            system_identifier: None,
        }
    }
}
