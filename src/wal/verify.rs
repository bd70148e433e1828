//! The streaming WAL verifier: checks WAL bytes as they arrive, in chunks of any size, with
//! bounded memory, and finds the end of valid WAL in a segment.
//!
//! [`WalVerifier`] is a state machine over the byte stream of one timeline starting at a page
//! boundary. It checks every page header (magic, info bits, long header on segment starts,
//! page address, timeline order), every record header (length, resource manager, `xl_prev`
//! chain) and every record's CRC, also for records that cross pages and segments. It never
//! buffers a record: the CRC is computed as payload bytes pass, and only the 24-byte record
//! header and the current page header are kept (either may be split across `feed` calls).
//!
//! # Where reading starts
//! The start must be page-aligned (usually a segment start). No predecessor is known there,
//! so as `XLogFindNextRecord` does, a record continued onto the first page is skipped
//! (`MAXALIGN(xlp_rem_len)`, page after page if it is longer) and the first record found
//! need only point backwards; from then on every `xl_prev` must be the previous record.
//!
//! # End-of-WAL rules
//! * A record whose `xl_tot_len` is zero, or a page whose header is all zeros, is the **end
//!   of WAL**, not an error: [`WalVerifier::end_of_wal`] reports where it was found. This is
//!   how a `.partial` segment, or the unused tail of a file, looks.
//! * After the end, the rest of that page must be zeros (PostgreSQL writes whole pages, zeroed
//!   past the insert position). Later pages may hold anything (a recycled segment's old
//!   pages), except a valid page header at the expected address: that would be WAL after a
//!   hole, and is an error.
//! * A record that is still incomplete when the bytes stop is neither verified nor an error:
//!   a streaming caller feeds only what the server sent and may feed more later.
//! * After an `XLOG_SWITCH` record the rest of the segment is unused and not examined.
//!
//! So the receiver feeds exactly the bytes the server sent; a whole-file check feeds the
//! whole file and then looks at [`WalVerifier::end_of_wal`] (a complete segment has none).
//! A file padded with zeros after a record cut in the middle of a page fails that record's
//! CRC: for such files, and for "how far can recovery go" questions, use
//! [`find_end_of_valid_wal`], which is lenient in the way recovery is: it stops at the first
//! problem of any kind and returns the end of the last good record.
//!
//! [`WalVerifier::verified_up_to`] is the end of the last complete good record (the end of
//! the segment once a switch record's segment has been fed to its end).

use std::collections::VecDeque;

use super::page::{
    LONG_HEADER_LEN, PageError, PageExpectations, PageHeader, PageMagic, SHORT_HEADER_LEN,
    WAL_BLOCK_SIZE,
};
use super::record::{RECORD_HEADER_LEN, RecordCrc, RecordError, RecordHeader, maxalign};
use super::segment::segment_file_name;
use super::{Lsn, SegNo, TimelineId, WalSegSize};

const BLCKSZ: u64 = WAL_BLOCK_SIZE as u64;
/// Starts beyond this are refused so that positions can never overflow.
const MAX_START: u64 = 1 << 62;

/// What a verifier checks WAL against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifierConfig {
    pub seg_size: WalSegSize,
    /// The page magic the server's major version writes ([`PageMagic::for_major`]).
    pub magic: PageMagic,
    /// The timeline of the segment files being checked.
    pub tli: TimelineId,
    /// The cluster's system identifier, when known.
    pub system_identifier: Option<u64>,
}

/// A WAL verification failure: which file, where in it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} at offset 0x{offset:X}: {problem}")]
pub struct VerifyError {
    /// The segment file name (on the verifier's timeline) holding `at`.
    pub file: String,
    /// `at`'s offset within that segment.
    pub offset: u32,
    /// The page (for page problems) or record (for record problems) that is wrong.
    pub at: Lsn,
    pub problem: Problem,
}

/// What is wrong, in [`VerifyError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("page says it continues a record where a new record was expected")]
    UnexpectedContinuation,
    #[error("record at {record} continues onto a page that does not say it continues a record")]
    MissingContinuation { record: Lsn },
    #[error("record at {record} continues with xlp_rem_len {found} where {expected} bytes remain")]
    ContinuationLength {
        record: Lsn,
        found: u32,
        expected: u32,
    },
    #[error("non-zero byte after the end of WAL at {end}")]
    DataAfterEnd { end: Lsn },
    #[error("a valid WAL page follows the end of WAL at {end}: WAL is missing in between")]
    PageAfterEnd { end: Lsn },
}

/// A start position the verifier cannot begin at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("WAL verification must start at a page boundary, not at {0}")]
    NotPageAligned(Lsn),
    #[error("WAL verification cannot start at {0}: too close to the end of the LSN space")]
    TooLarge(Lsn),
}

/// Where the verifier is in the byte stream.
#[derive(Clone, Copy, Debug)]
enum State {
    /// No record boundary known yet: decided by the next page header.
    Seeking,
    /// Bytes up to `until` belong to no record we check; then `after`.
    Skip { until: u64, after: AfterSkip },
    /// Gathering a record's header; `have == 0` means a new record starts at the next body
    /// byte (its start is then fixed).
    Header {
        start: Lsn,
        buf: [u8; RECORD_HEADER_LEN],
        have: usize,
    },
    /// Gathering a record's payload into the CRC.
    Payload {
        start: Lsn,
        header: [u8; RECORD_HEADER_LEN],
        tot_len: u32,
        gathered: u32,
        crc: RecordCrc,
    },
    /// The end of WAL was found at `at`.
    Ended { at: Lsn },
}

#[derive(Clone, Copy, Debug)]
enum AfterSkip {
    Seeking,
    NewRecord,
    /// The unused rest of a segment after a switch record: the next segment starts clean.
    SegmentEnd,
}

const NEW_RECORD: State = State::Header {
    start: Lsn(0),
    buf: [0; RECORD_HEADER_LEN],
    have: 0,
};

/// A streaming WAL verifier; see the module documentation for its rules.
#[derive(Debug)]
pub struct WalVerifier {
    config: VerifierConfig,
    expect: PageExpectations,
    /// LSN of the next byte to be fed.
    pos: u64,
    state: State,
    page_buf: [u8; LONG_HEADER_LEN],
    prev_page_tli: Option<TimelineId>,
    last_record: Option<Lsn>,
    verified: Option<Lsn>,
    records: u64,
    failed: Option<VerifyError>,
    /// Set by [`WalScanner`](super::WalScanner): completed records are queued for it.
    scan: Option<ScanState>,
}

/// A record that passed every check, as queued for the scanner.
#[derive(Debug)]
pub(super) struct Completed {
    pub start: Lsn,
    /// Just after its last byte (not aligned).
    pub end: Lsn,
    pub header: RecordHeader,
    /// The bytes after the 24-byte header, for the records the scanner keeps.
    pub payload: Option<Vec<u8>>,
}

#[derive(Debug)]
struct ScanState {
    /// Whether a record's payload is wanted, decided from its header.
    keep: fn(&RecordHeader) -> bool,
    capturing: bool,
    payload: Vec<u8>,
    done: VecDeque<Completed>,
}

impl WalVerifier {
    /// A verifier for WAL starting at `start`, which must be page-aligned.
    pub fn new(config: VerifierConfig, start: Lsn) -> Result<Self, StartError> {
        if !start.0.is_multiple_of(BLCKSZ) {
            return Err(StartError::NotPageAligned(start));
        }
        if start.0 > MAX_START {
            return Err(StartError::TooLarge(start));
        }
        let expect = PageExpectations {
            magic: config.magic,
            seg_size: config.seg_size,
            system_identifier: config.system_identifier,
            file_tli: config.tli,
        };
        Ok(WalVerifier {
            config,
            expect,
            pos: start.0,
            state: State::Seeking,
            page_buf: [0; LONG_HEADER_LEN],
            prev_page_tli: None,
            last_record: None,
            verified: None,
            records: 0,
            failed: None,
            scan: None,
        })
    }

    /// Checks the next bytes of the stream. After an error every later call returns it again.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), VerifyError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        while !data.is_empty() {
            match self.step(data) {
                Ok(n) => data = data.get(n..).unwrap_or_default(),
                Err((at, problem)) => {
                    let err = self.error(at, problem);
                    self.failed = Some(err.clone());
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// The LSN of the next byte `feed` expects.
    pub fn position(&self) -> Lsn {
        Lsn(self.pos)
    }

    /// The end of the last complete record that passed every check (or of a switch record's
    /// segment once fed to its end); None before the first.
    pub fn verified_up_to(&self) -> Option<Lsn> {
        self.verified
    }

    /// The start of the last record that passed every check.
    pub fn last_record(&self) -> Option<Lsn> {
        self.last_record
    }

    /// How many records passed every check.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Where the end of WAL (zero `xl_tot_len` or zero page) was found, if it was.
    pub fn end_of_wal(&self) -> Option<Lsn> {
        match self.state {
            State::Ended { at } => Some(at),
            _ => None,
        }
    }

    /// Whether a record has started but not yet completed.
    pub fn in_record(&self) -> bool {
        matches!(
            self.state,
            State::Header { have: 1.., .. } | State::Payload { .. }
        )
    }

    /// Queues every record that passes, keeping the payload of those `keep` selects.
    pub(super) fn enable_scan(&mut self, keep: fn(&RecordHeader) -> bool) {
        self.scan = Some(ScanState {
            keep,
            capturing: false,
            payload: Vec::new(),
            done: VecDeque::new(),
        });
    }

    /// The oldest queued record (scanning only).
    pub(super) fn pop_completed(&mut self) -> Option<Completed> {
        self.scan.as_mut()?.done.pop_front()
    }

    /// The bytes fed from now on come from a file of timeline `tli` (reading along a
    /// timeline history crosses from an ancestor's segments to a descendant's): page headers
    /// are checked against it, and errors name its files.
    pub(super) fn set_file_timeline(&mut self, tli: TimelineId) {
        self.config.tli = tli;
        self.expect.file_tli = tli;
    }

    /// A record's header passed its checks: decide whether its payload is kept.
    fn begin_capture(&mut self, header: &RecordHeader) {
        if let Some(scan) = self.scan.as_mut() {
            scan.capturing = (scan.keep)(header);
            scan.payload.clear();
        }
    }

    fn capture(&mut self, bytes: &[u8]) {
        if let Some(scan) = self.scan.as_mut().filter(|s| s.capturing) {
            scan.payload.extend_from_slice(bytes);
        }
    }

    fn error(&self, at: Lsn, problem: Problem) -> VerifyError {
        let size = self.config.seg_size;
        VerifyError {
            file: segment_file_name(self.config.tli, at.segno(size), size),
            offset: at.segment_offset(size),
            at,
            problem,
        }
    }

    /// Consumes a non-empty prefix of `data`.
    fn step(&mut self, data: &[u8]) -> Result<usize, (Lsn, Problem)> {
        if let State::Skip { until, .. } = self.state {
            let n = usize::try_from(until - self.pos)
                .unwrap_or(usize::MAX)
                .min(data.len());
            self.pos += n as u64;
            self.finish_skip();
            return Ok(n);
        }
        let in_page = self.pos % BLCKSZ;
        let header_len = self.header_len_here();
        if in_page < header_len as u64 {
            return self.page_header_bytes(data, in_page as usize, header_len);
        }
        let room = usize::try_from(BLCKSZ - in_page).unwrap_or(usize::MAX);
        let body = data.get(..room.min(data.len())).unwrap_or(data);
        self.body_bytes(body)
    }

    /// The size of the page header of the page holding `pos`.
    fn header_len_here(&self) -> usize {
        if self.pos & (self.config.seg_size.bytes() - 1) < BLCKSZ {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    /// Moves to `until` with nothing to check in between, then to `after`.
    fn skip_to(&mut self, until: u64, after: AfterSkip) {
        self.state = State::Skip { until, after };
        self.finish_skip();
    }

    fn finish_skip(&mut self) {
        let State::Skip { until, after } = self.state else {
            return;
        };
        if self.pos < until {
            return;
        }
        self.state = match after {
            AfterSkip::Seeking => State::Seeking,
            AfterSkip::NewRecord => NEW_RECORD,
            AfterSkip::SegmentEnd => {
                self.verified = Some(Lsn(until));
                NEW_RECORD
            }
        };
    }

    fn page_header_bytes(
        &mut self,
        data: &[u8],
        in_page: usize,
        header_len: usize,
    ) -> Result<usize, (Lsn, Problem)> {
        let take = (header_len - in_page).min(data.len());
        if let (Some(dst), Some(src)) = (
            self.page_buf.get_mut(in_page..in_page + take),
            data.get(..take),
        ) {
            dst.copy_from_slice(src);
        }
        self.pos += take as u64;
        if in_page + take == header_len {
            let page = Lsn(self.pos - header_len as u64);
            self.on_page_header(page, header_len)
                .map_err(|p| (page, p))?;
        }
        Ok(take)
    }

    /// Validates a complete page header and applies it to the record in progress.
    fn on_page_header(&mut self, page: Lsn, header_len: usize) -> Result<(), Problem> {
        let raw = self.page_buf.get(..header_len).unwrap_or_default();
        let header = PageHeader::parse(raw)?;
        if let State::Ended { at } = self.state {
            return match self.expect.validate(&header, page, None) {
                Ok(()) => Err(Problem::PageAfterEnd { end: at }),
                Err(_) => Ok(()),
            };
        }
        if raw.iter().all(|b| *b == 0) {
            self.state = State::Ended { at: page };
            return Ok(());
        }
        self.expect.validate(&header, page, self.prev_page_tli)?;
        self.prev_page_tli = Some(header.tli);
        let body_room = BLCKSZ - header_len as u64;
        match self.state {
            State::Seeking if header.is_contrecord() => {
                let rem = maxalign(u64::from(header.rem_len));
                if rem >= body_room {
                    self.skip_to(page.0 + BLCKSZ, AfterSkip::Seeking);
                } else {
                    self.skip_to(self.pos + rem, AfterSkip::NewRecord);
                }
            }
            State::Seeking => self.state = NEW_RECORD,
            State::Header { have: 0, .. } if header.is_contrecord() => {
                return Err(Problem::UnexpectedContinuation);
            }
            State::Header { have: 1.., .. } | State::Payload { .. }
                if header.is_overwrite_contrecord() =>
            {
                // The record in progress was abandoned by a crash; a new one starts here.
                self.state = NEW_RECORD;
                if header.is_contrecord() {
                    return Err(Problem::UnexpectedContinuation);
                }
            }
            State::Header {
                start,
                buf,
                have: have @ 1..,
            } => {
                let tot_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                check_continuation(&header, start, tot_len, have as u32)?;
            }
            State::Payload {
                start,
                tot_len,
                gathered,
                ..
            } => {
                check_continuation(&header, start, tot_len, gathered)?;
            }
            State::Header { .. } | State::Skip { .. } | State::Ended { .. } => {}
        }
        Ok(())
    }

    /// Consumes a non-empty prefix of `body`, which lies within one page after its header.
    fn body_bytes(&mut self, body: &[u8]) -> Result<usize, (Lsn, Problem)> {
        let mut used = 0;
        while matches!(self.state, State::Header { have: 0, .. })
            && let Some(n) = self.whole_record(body.get(used..).unwrap_or_default())?
        {
            used += n;
        }
        if used > 0 {
            return Ok(used);
        }
        match self.state {
            State::Seeking | State::Skip { .. } => {
                // Unreachable: Seeking is resolved by a page header, Skip handled in `step`.
                self.pos += body.len() as u64;
                Ok(body.len())
            }
            State::Ended { at } => {
                if self.pos / BLCKSZ == at.0 / BLCKSZ
                    && let Some(i) = body.iter().position(|b| *b != 0)
                {
                    return Err((Lsn(self.pos + i as u64), Problem::DataAfterEnd { end: at }));
                }
                self.pos += body.len() as u64;
                Ok(body.len())
            }
            State::Header { start, buf, have } => self.header_bytes(body, start, buf, have),
            State::Payload {
                start,
                header,
                tot_len,
                gathered,
                crc,
            } => {
                let take = ((tot_len - gathered) as usize).min(body.len());
                let mut crc = crc;
                let piece = body.get(..take).unwrap_or_default();
                crc.update(piece);
                self.capture(piece);
                self.pos += take as u64;
                let gathered = gathered + take as u32;
                self.state = State::Payload {
                    start,
                    header,
                    tot_len,
                    gathered,
                    crc,
                };
                if gathered == tot_len {
                    self.complete_record(start, &header, crc)?;
                }
                Ok(take)
            }
        }
    }

    /// The fast path: a record that starts at `body[0]` and lies wholly within `body` is
    /// checked in place, with its alignment padding. None if it does not fit (or is the
    /// end of WAL): the byte-wise path handles it.
    fn whole_record(&mut self, body: &[u8]) -> Result<Option<usize>, (Lsn, Problem)> {
        let Some(raw) = body
            .get(..RECORD_HEADER_LEN)
            .and_then(|h| <&[u8; RECORD_HEADER_LEN]>::try_from(h).ok())
        else {
            return Ok(None);
        };
        let header = RecordHeader::parse(raw);
        // Lengths below the header's (zero: end of WAL) give no slice: the byte-wise path.
        let Some(payload) = body.get(RECORD_HEADER_LEN..header.tot_len as usize) else {
            return Ok(None);
        };
        let start = Lsn(self.pos);
        header
            .validate(start, self.last_record)
            .map_err(|e| (start, e.into()))?;
        let mut crc = RecordCrc::default();
        crc.update(payload);
        self.begin_capture(&header);
        self.capture(payload);
        self.pos += u64::from(header.tot_len);
        self.complete_record(start, raw, crc)?;
        let mut used = header.tot_len as usize;
        if let State::Skip { until, .. } = self.state {
            let pad = (until - self.pos) as usize;
            if pad <= body.len() - used {
                self.pos = until;
                used += pad;
                self.finish_skip();
            }
        }
        Ok(Some(used))
    }

    fn header_bytes(
        &mut self,
        body: &[u8],
        start: Lsn,
        mut buf: [u8; RECORD_HEADER_LEN],
        have: usize,
    ) -> Result<usize, (Lsn, Problem)> {
        let start = if have == 0 { Lsn(self.pos) } else { start };
        let take = (RECORD_HEADER_LEN - have).min(body.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(have..have + take), body.get(..take)) {
            dst.copy_from_slice(src);
        }
        self.pos += take as u64;
        let have = have + take;
        self.state = State::Header { start, buf, have };
        if have < 4 {
            return Ok(take);
        }
        let tot_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if tot_len == 0 {
            self.state = State::Ended { at: start };
            if let Some(i) = buf
                .get(4..have)
                .and_then(|b| b.iter().position(|b| *b != 0))
            {
                let at = Lsn(start.0 + 4 + i as u64);
                return Err((at, Problem::DataAfterEnd { end: start }));
            }
            return Ok(take);
        }
        RecordHeader::check_length(start, tot_len).map_err(|e| (start, e.into()))?;
        if have < RECORD_HEADER_LEN {
            return Ok(take);
        }
        let header = RecordHeader::parse(&buf);
        header
            .validate(start, self.last_record)
            .map_err(|e| (start, e.into()))?;
        let crc = RecordCrc::default();
        self.begin_capture(&header);
        self.state = State::Payload {
            start,
            header: buf,
            tot_len,
            gathered: have as u32,
            crc,
        };
        if tot_len as usize == RECORD_HEADER_LEN {
            self.complete_record(start, &buf, crc)?;
        }
        Ok(take)
    }

    /// A record's last byte has arrived: check its CRC and move to what follows it.
    fn complete_record(
        &mut self,
        start: Lsn,
        raw: &[u8; RECORD_HEADER_LEN],
        crc: RecordCrc,
    ) -> Result<(), (Lsn, Problem)> {
        let header = RecordHeader::parse(raw);
        let computed = crc.finish(raw);
        if computed != header.crc {
            let problem = RecordError::Crc {
                at: start,
                stored: header.crc,
                computed,
            };
            return Err((start, problem.into()));
        }
        self.last_record = Some(start);
        self.verified = Some(Lsn(self.pos));
        self.records += 1;
        if let Some(scan) = self.scan.as_mut() {
            let payload = scan.capturing.then(|| std::mem::take(&mut scan.payload));
            scan.capturing = false;
            scan.done.push_back(Completed {
                start,
                end: Lsn(self.pos),
                header,
                payload,
            });
        }
        if header.is_switch() {
            let next = Lsn(self.pos - 1).segno(self.config.seg_size).next();
            self.skip_to(
                next.start_lsn(self.config.seg_size).0,
                AfterSkip::SegmentEnd,
            );
        } else {
            self.skip_to(maxalign(self.pos), AfterSkip::NewRecord);
        }
        Ok(())
    }
}

/// The checks on a page that continues the record at `record` after `gathered` of its
/// `tot_len` bytes.
fn check_continuation(
    header: &PageHeader,
    record: Lsn,
    tot_len: u32,
    gathered: u32,
) -> Result<(), Problem> {
    if !header.is_contrecord() {
        return Err(Problem::MissingContinuation { record });
    }
    let expected = tot_len.saturating_sub(gathered);
    if header.rem_len == 0 || header.rem_len != expected {
        return Err(Problem::ContinuationLength {
            record,
            found: header.rem_len,
            expected,
        });
    }
    Ok(())
}

/// The end of valid WAL in one segment's bytes (`segment` holds segment `segno` from its
/// start, possibly truncated): where recovery reading this segment would stop, i.e. the
/// `MAXALIGN`ed end of the last record that passes every check (the segment's end after a
/// switch record). None if no record is completed in `segment` — a record that began in an
/// earlier segment cannot be checked from this segment alone.
pub fn find_end_of_valid_wal(
    segment: &[u8],
    config: VerifierConfig,
    segno: SegNo,
) -> Result<Option<Lsn>, StartError> {
    let mut verifier = WalVerifier::new(config, segno.start_lsn(config.seg_size))?;
    let len = usize::try_from(config.seg_size.bytes()).unwrap_or(usize::MAX);
    // A failure only stops the search: what was verified before it stands.
    let _ = verifier.feed(segment.get(..len).unwrap_or(segment));
    Ok(verifier.verified_up_to().map(|end| Lsn(maxalign(end.0))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::MAX_RECORD_LEN;
    use crate::wal::testwal::{self, FIXTURES, WalBuilder, config, fixture, fixture_records};
    use proptest::prelude::*;

    fn verify_all(
        bytes: &[u8],
        cfg: VerifierConfig,
        start: Lsn,
    ) -> (WalVerifier, Result<(), VerifyError>) {
        let mut v = WalVerifier::new(cfg, start).unwrap();
        let r = v.feed(bytes);
        (v, r)
    }

    /// Synthetic WAL: small records, records over pages, one over a segment boundary.
    fn sample() -> (WalBuilder, Vec<testwal::Written>) {
        let mut b = WalBuilder::new(3);
        let mut w = Vec::new();
        for len in [50, 8000, 3, 20000, 0, 100] {
            w.push(b.record(len));
        }
        // Fill to just before the segment end, then cross it with a 3-page record.
        while b.bytes.len() < (1 << 20) - 9000 {
            w.push(b.record(3000));
        }
        w.push(b.record(30000));
        w.push(b.record(10));
        (b, w)
    }

    #[test]
    fn accepts_synthetic_wal_and_reports_progress() {
        let (b, w) = sample();
        let (v, r) = verify_all(&b.bytes, config(1), Lsn(b.base));
        r.unwrap();
        assert_eq!(v.records(), w.len() as u64);
        assert_eq!(v.verified_up_to(), Some(w.last().unwrap().end));
        assert_eq!(v.last_record(), Some(w.last().unwrap().start));
        assert_eq!(v.end_of_wal(), None);
        // Zeros after the last record: end of WAL, not an error.
        let mut padded = b.bytes.clone();
        padded.resize(padded.len() + 20000, 0);
        let (v, r) = verify_all(&padded, config(1), Lsn(b.base));
        r.unwrap();
        assert_eq!(v.end_of_wal(), Some(end(*w.last().unwrap())));
        // Looking at segment 3 alone, the end is that of the last record completed in it.
        let in_seg3 = w.iter().rev().find(|r| r.end.0 <= 4 << 20).unwrap();
        assert_eq!(
            find_end_of_valid_wal(&padded, config(1), SegNo(3)).unwrap(),
            Some(end(*in_seg3))
        );
    }

    #[test]
    fn incomplete_record_is_pending_not_verified() {
        let (b, w) = sample();
        let cut = b.at(w[3].start) + 9000; // inside the 20000-byte record
        let (v, r) = verify_all(&b.bytes[..cut], config(1), Lsn(b.base));
        r.unwrap();
        assert!(v.in_record());
        assert_eq!(v.verified_up_to(), Some(w[2].end));
        assert_eq!(v.position(), Lsn(b.base + cut as u64));
    }

    #[test]
    fn starting_at_a_segment_that_opens_with_a_long_continuation() {
        let mut b = WalBuilder::new(3);
        b.record(100);
        let big = b.record(2_150_000); // runs through all of segment 4 into segment 5
        let after = b.record(10);
        let seg5 = b.at(Lsn(5 << 20));
        let (v, r) = verify_all(&b.bytes[seg5..], config(1), Lsn(5 << 20));
        r.unwrap();
        assert_eq!(v.records(), 1);
        assert_eq!(v.last_record(), Some(after.start));
        // All of segment 4 is continuation: nothing to verify, nothing wrong.
        let seg4 = b.at(Lsn(4 << 20));
        let (v, r) = verify_all(&b.bytes[seg4..seg5], config(1), Lsn(4 << 20));
        r.unwrap();
        assert_eq!((v.records(), v.verified_up_to()), (0, None));
        assert!(big.end.0 > 5 << 20);
    }

    #[test]
    fn switch_record_skips_the_rest_of_the_segment() {
        let mut b = WalBuilder::new(3);
        b.record(100);
        let sw = b.switch();
        // Garbage in the unused tail is not examined.
        let i = b.at(sw.end) + 5000;
        b.bytes[i] = 0xAB;
        let next = b.record(10);
        assert_eq!(next.start, Lsn((4 << 20) + 40));
        let mut v = WalVerifier::new(config(1), Lsn(b.base)).unwrap();
        v.feed(&b.bytes[..b.at(sw.end) + 100]).unwrap();
        assert_eq!(v.verified_up_to(), Some(sw.end));
        v.feed(&b.bytes[b.at(sw.end) + 100..]).unwrap();
        assert_eq!(v.records(), 3);
        assert_eq!(v.verified_up_to(), Some(next.end));
        let seg_only = &b.bytes[..b.at(Lsn(4 << 20))];
        assert_eq!(
            find_end_of_valid_wal(seg_only, config(1), SegNo(3)).unwrap(),
            Some(Lsn(4 << 20))
        );
    }

    /// Verifies `bytes`, expecting a failure matching `problem` and the end of valid WAL at
    /// `end`.
    fn expect_failure(bytes: &[u8], base: u64, end: Lsn, problem: impl Fn(&Problem) -> bool) {
        let (v, r) = verify_all(bytes, config(1), Lsn(base));
        let err = r.expect_err("corruption must be reported");
        assert!(problem(&err.problem), "unexpected problem: {err}");
        assert_eq!(
            v.verified_up_to().map(|e| Lsn(maxalign(e.0))),
            Some(end),
            "{err}"
        );
        assert_eq!(
            find_end_of_valid_wal(bytes, config(1), Lsn(base).segno(testwal::mb())).unwrap(),
            Some(end)
        );
    }

    /// Two records, then a third that crosses into the next page.
    fn end_of_wal_case() -> (WalBuilder, testwal::Written, testwal::Written) {
        let mut b = WalBuilder::new(3);
        b.record(100);
        let good = b.record(7000);
        let crossing = b.record(3000);
        b.record(10);
        b.pad_segment();
        (b, good, crossing)
    }

    fn end(w: testwal::Written) -> Lsn {
        Lsn(maxalign(w.end.0))
    }

    // The cases of PostgreSQL's src/test/recovery/t/039_end_of_wal.pl.

    #[test]
    fn end_of_wal_zero_tot_len() {
        let (mut b, good, crossing) = end_of_wal_case();
        let i = b.at(crossing.start);
        let n = b.bytes.len();
        b.bytes[i..n].fill(0);
        let (v, r) = verify_all(&b.bytes, config(1), Lsn(b.base));
        r.unwrap();
        assert_eq!(v.end_of_wal(), Some(crossing.start));
        assert_eq!(v.verified_up_to(), Some(good.end));
        assert_eq!(
            find_end_of_valid_wal(&b.bytes, config(1), SegNo(3)).unwrap(),
            Some(end(good))
        );
    }

    #[test]
    fn end_of_wal_bad_lengths() {
        for (len, short) in [(23u32, true), (MAX_RECORD_LEN + 1, false)] {
            let (mut b, good, crossing) = end_of_wal_case();
            let i = b.at(crossing.start);
            b.bytes[i..i + 4].copy_from_slice(&len.to_le_bytes());
            expect_failure(&b.bytes, b.base, end(good), |p| match p {
                Problem::Record(RecordError::TooShort { .. }) => short,
                Problem::Record(RecordError::TooLong { .. }) => !short,
                _ => false,
            });
        }
    }

    #[test]
    fn end_of_wal_bad_prev_link() {
        let (mut b, good, crossing) = end_of_wal_case();
        let i = b.at(crossing.start) + 8;
        b.bytes[i] ^= 0x08;
        expect_failure(&b.bytes, b.base, end(good), |p| {
            matches!(p, Problem::Record(RecordError::PrevLink { .. }))
        });
    }

    #[test]
    fn end_of_wal_bad_crc() {
        let (mut b, good, crossing) = end_of_wal_case();
        let i = b.at(crossing.end) - 1; // last payload byte, on the next page
        b.bytes[i] ^= 0xFF;
        expect_failure(&b.bytes, b.base, end(good), |p| {
            matches!(p, Problem::Record(RecordError::Crc { .. }))
        });
    }

    /// The page the crossing record continues on.
    fn next_page(b: &WalBuilder, crossing: testwal::Written) -> usize {
        (b.at(crossing.start) / 8192 + 1) * 8192
    }

    #[test]
    fn end_of_wal_zero_next_page() {
        let (mut b, good, crossing) = end_of_wal_case();
        let p = next_page(&b, crossing);
        b.bytes[p..p + 8192].fill(0);
        let (v, r) = verify_all(&b.bytes[..p + 8192], config(1), Lsn(b.base));
        r.unwrap();
        assert_eq!(v.end_of_wal(), Some(Lsn(b.base + p as u64)));
        assert_eq!(v.verified_up_to(), Some(good.end));
        assert_eq!(
            find_end_of_valid_wal(&b.bytes, config(1), SegNo(3)).unwrap(),
            Some(end(good))
        );
    }

    #[test]
    fn end_of_wal_garbage_next_page() {
        let (mut b, good, crossing) = end_of_wal_case();
        let p = next_page(&b, crossing);
        for (k, byte) in b.bytes[p..p + 8192].iter_mut().enumerate() {
            *byte = (k * 31 + 7) as u8;
        }
        expect_failure(&b.bytes, b.base, end(good), |p| {
            matches!(p, Problem::Page(PageError::Magic { .. }))
        });
    }

    #[test]
    fn end_of_wal_recycled_page() {
        let (mut b, good, crossing) = end_of_wal_case();
        let p = next_page(&b, crossing);
        let old = (b.base + p as u64 - (2 << 20)).to_le_bytes();
        b.bytes[p + 8..p + 16].copy_from_slice(&old);
        expect_failure(&b.bytes, b.base, end(good), |p| {
            matches!(p, Problem::Page(PageError::PageAddress { .. }))
        });
    }

    #[test]
    fn end_of_wal_bogus_info_bits() {
        let (mut b, good, crossing) = end_of_wal_case();
        let p = next_page(&b, crossing);
        b.bytes[p + 2] |= 0x10;
        expect_failure(&b.bytes, b.base, end(good), |p| {
            matches!(p, Problem::Page(PageError::InfoBits(_)))
        });
    }

    #[test]
    fn end_of_wal_missing_contrecord_flag() {
        let (mut b, good, crossing) = end_of_wal_case();
        let p = next_page(&b, crossing);
        b.bytes[p + 2] &= !0x01;
        expect_failure(&b.bytes, b.base, end(good), |p| {
            matches!(p, Problem::MissingContinuation { .. })
        });
    }

    #[test]
    fn end_of_wal_wrong_rem_len() {
        for rem in [0u32, 1, 5000] {
            let (mut b, good, crossing) = end_of_wal_case();
            let p = next_page(&b, crossing);
            b.bytes[p + 16..p + 20].copy_from_slice(&rem.to_le_bytes());
            expect_failure(&b.bytes, b.base, end(good), |p| {
                matches!(p, Problem::ContinuationLength { .. })
            });
        }
    }

    #[test]
    fn page_header_checks() {
        let (b, _, _) = end_of_wal_case();
        // Wrong magic, system identifier, segment size on the first page.
        type Check = fn(&Problem) -> bool;
        let cases: [(usize, u8, Check); 4] = [
            (0, 0x01, |p| {
                matches!(p, Problem::Page(PageError::Magic { .. }))
            }),
            (24, 0x01, |p| {
                matches!(p, Problem::Page(PageError::SystemIdentifier { .. }))
            }),
            (34, 0x01, |p| {
                matches!(p, Problem::Page(PageError::SegmentSize { .. }))
            }),
            (2, 0x02, |p| {
                matches!(p, Problem::Page(PageError::MissingLongHeader))
            }),
        ];
        for (offset, flip, check) in cases {
            let mut bytes = b.bytes.clone();
            bytes[offset] ^= flip;
            let (_, r) = verify_all(&bytes, config(1), Lsn(b.base));
            let err = r.unwrap_err();
            assert!(check(&err.problem), "{err}");
            assert_eq!((err.offset, err.at), (0, Lsn(b.base)));
        }
        // A page timeline beyond the file's, or going backwards.
        let (_, r) = verify_all(&b.bytes, config(0), Lsn(b.base));
        assert!(matches!(
            r.unwrap_err().problem,
            Problem::Page(PageError::TimelineAfterFile { .. })
        ));
        let mut bytes = b.bytes.clone();
        bytes[4] = 2;
        let err = verify_all(&bytes, config(2), Lsn(b.base)).1.unwrap_err();
        assert!(
            matches!(
                err.problem,
                Problem::Page(PageError::TimelineDecreased { .. })
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "000000020000000000000003 at offset 0x2000: page timeline 1 is below the previous page's 2"
        );
        // The error message names file, offset and the address mismatch.
        let mut bytes = b.bytes.clone();
        bytes[0x2008..0x2010].copy_from_slice(&0x2FF_E000u64.to_le_bytes());
        let err = verify_all(&bytes, config(1), Lsn(b.base)).1.unwrap_err();
        assert_eq!(
            err.to_string(),
            "000000010000000000000003 at offset 0x2000: page address 0/2FFE000 where 0/302000 was expected"
        );
        assert!(WalVerifier::new(config(1), Lsn(100)).is_err());
    }

    #[test]
    fn new_record_on_a_continuation_page_is_rejected() {
        let mut b = WalBuilder::new(3);
        b.record(0);
        while !b.bytes.len().is_multiple_of(8192) {
            b.record(0);
        }
        let p = b.bytes.len();
        b.record(10);
        b.bytes[p + 2] |= 0x01;
        b.bytes[p + 16] = 8;
        let err = verify_all(&b.bytes, config(1), Lsn(b.base)).1.unwrap_err();
        assert!(
            matches!(err.problem, Problem::UnexpectedContinuation),
            "{err}"
        );
    }

    #[test]
    fn data_after_end_is_rejected() {
        let (mut b, _, crossing) = end_of_wal_case();
        let i = b.at(crossing.start);
        let n = b.bytes.len();
        b.bytes[i..n].fill(0);
        b.bytes[i + 30] = 1;
        let err = verify_all(&b.bytes, config(1), Lsn(b.base)).1.unwrap_err();
        assert!(matches!(err.problem, Problem::DataAfterEnd { .. }), "{err}");
        assert_eq!(err.at, Lsn(crossing.start.0 + 30));
        // A valid page at the expected address after the end: WAL after a hole.
        let (mut b, good, _) = end_of_wal_case();
        let i = b.at(good.end.next_record());
        b.bytes[i..i + 4].fill(0);
        let err = verify_all(&b.bytes, config(1), Lsn(b.base)).1.unwrap_err();
        assert!(
            matches!(
                err.problem,
                Problem::DataAfterEnd { .. } | Problem::PageAfterEnd { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn overwritten_contrecord_restarts_at_the_page() {
        let mut b = WalBuilder::new(3);
        let good = b.record(100);
        let abandoned = b.record(9000); // runs into the second page
        let overwrite = b.overwrite_contrecord(good.start);
        let after = b.record(10);
        assert_eq!(overwrite.start, Lsn(b.base + 8192 + 24));
        let (v, r) = verify_all(&b.bytes, config(1), Lsn(b.base));
        r.unwrap();
        assert_eq!(v.records(), 3);
        assert_eq!(v.last_record(), Some(after.start));
        assert!(abandoned.end > overwrite.start);
    }

    #[test]
    fn record_header_split_across_pages() {
        let mut b = WalBuilder::new(3);
        let mut last = b.record(0);
        while last.end.0 % 8192 != 8176 {
            last = b.record(0);
        }
        let split = b.record(500); // 16 header bytes here, 8 on the next page
        b.record(10);
        for chunk in 1..=48 {
            let mut v = WalVerifier::new(config(1), Lsn(b.base)).unwrap();
            for c in b.bytes.chunks(chunk) {
                v.feed(c).unwrap();
            }
            assert!(v.records() > 300 && !v.in_record(), "chunk {chunk}");
        }
        // The part of the header on the next page (info, rmid, CRC) is checked too.
        let i = b.at(split.start) + 16 + 24 + 1;
        b.bytes[i] ^= 0x40;
        let err = verify_all(&b.bytes, config(1), Lsn(b.base)).1.unwrap_err();
        assert_eq!(err.at, split.start);
        assert!(
            matches!(
                err.problem,
                Problem::Record(RecordError::ResourceManager { .. })
            ),
            "{err}"
        );
    }

    trait NextRecord {
        fn next_record(self) -> Lsn;
    }
    impl NextRecord for Lsn {
        fn next_record(self) -> Lsn {
            Lsn(maxalign(self.0))
        }
    }

    // Real WAL from PostgreSQL 15, 16 and 18 (fixtures/wal).

    #[test]
    fn accepts_real_segments_end_to_end() {
        for set in &FIXTURES {
            let mut v = WalVerifier::new(set.config(1), Lsn((set.first_segno) << 20)).unwrap();
            for i in 0..4 {
                v.feed(&fixture(set.dir, &set.name(1, i)))
                    .unwrap_or_else(|e| panic!("{}: {e}", set.dir));
            }
            // The last timeline 1 segment holds one shutdown checkpoint, then its end.
            let last = fixture_records(set.dir, &set.name(1, 3));
            let end = Lsn(last[0].0.0 + maxalign(u64::from(last[0].1)));
            assert_eq!(v.end_of_wal(), Some(end), "{}", set.dir);
            assert_eq!(v.last_record(), Some(last[0].0));
            // Timeline 2's first segment starts with timeline 1's pages.
            let seg = fixture(set.dir, &set.name(2, 3));
            let (v, r) = verify_all(&seg, set.config(2), Lsn((set.first_segno + 3) << 20));
            r.unwrap_or_else(|e| panic!("{}: {e}", set.dir));
            let recs = fixture_records(set.dir, &set.name(2, 3));
            let (lsn, len, _) = recs.last().unwrap();
            assert_eq!(v.records(), recs.len() as u64);
            assert_eq!(
                v.end_of_wal(),
                Some(Lsn(lsn.0 + maxalign(u64::from(*len)))),
                "{}",
                set.dir
            );
            let segno = SegNo(set.first_segno + 3);
            assert_eq!(
                find_end_of_valid_wal(&seg, set.config(2), segno).unwrap(),
                v.end_of_wal()
            );
        }
    }

    #[test]
    fn real_segments_alone_match_pg_waldump() {
        for set in &FIXTURES {
            for i in 0..3 {
                let name = set.name(1, i);
                let (v, r) = verify_all(
                    &fixture(set.dir, &name),
                    set.config(1),
                    Lsn((set.first_segno + i) << 20),
                );
                r.unwrap_or_else(|e| panic!("{}: {e}", set.dir));
                let recs = fixture_records(set.dir, &name);
                assert_eq!(v.records(), recs.len() as u64, "{}/{name}", set.dir);
                assert_eq!(
                    v.last_record(),
                    recs.last().map(|r| r.0),
                    "{}/{name}",
                    set.dir
                );
            }
        }
    }

    /// The file offsets of the bytes of the record at `start` (`tot_len` long), skipping
    /// page headers.
    fn record_offsets(start: Lsn, tot_len: u32) -> Vec<usize> {
        let mut out = Vec::new();
        let mut pos = start.0;
        while out.len() < tot_len as usize {
            let in_page = pos % 8192;
            let hdr = if pos % (1 << 20) < 8192 { 40 } else { 24 };
            if in_page < hdr {
                pos += hdr - in_page;
                continue;
            }
            out.push((pos % (1 << 20)) as usize);
            pos += 1;
        }
        out
    }

    #[test]
    fn flipping_any_record_byte_fails_at_that_record() {
        let set = &FIXTURES[0];
        let name = set.name(1, 2);
        let seg = fixture(set.dir, &name);
        let base = Lsn((set.first_segno + 2) << 20);
        let recs = fixture_records(set.dir, &name);
        for (k, (start, len, _)) in recs.iter().enumerate().step_by(3) {
            let offsets = record_offsets(*start, *len);
            for (j, off) in offsets.iter().enumerate().step_by(37) {
                let mut bad = seg.clone();
                bad[*off] ^= 1 << (j % 8);
                let (v, r) = verify_all(&bad, set.config(1), base);
                let err = r.expect_err("a flipped byte must be found");
                let last = *offsets.last().unwrap() as u64;
                assert!(
                    err.at >= *start && err.at.0 <= base.0 + last,
                    "record {k} byte {j}: {err}"
                );
                assert!(v.verified_up_to() <= Some(*start), "record {k}: {err}");
            }
        }
    }

    #[test]
    fn end_of_valid_wal_of_a_truncated_real_segment() {
        for set in &FIXTURES {
            let name = set.name(1, 2);
            let seg = fixture(set.dir, &name);
            let recs = fixture_records(set.dir, &name);
            for k in (1..recs.len()).step_by(5) {
                let mut partial = seg.clone();
                let cut = recs[k].0.segment_offset(testwal::mb()) as usize;
                partial[cut..].fill(0);
                let end =
                    find_end_of_valid_wal(&partial, set.config(1), SegNo(set.first_segno + 2))
                        .unwrap()
                        .unwrap();
                // pg_waldump's next record starts at the end, or after the next page header.
                let next = recs[k].0;
                assert!(
                    end == next || (end.0.is_multiple_of(8192) && next.0 == end.0 + 24),
                    "{} {k}: {end} vs {next}",
                    set.dir
                );
                let (v, r) = verify_all(&partial, set.config(1), Lsn((set.first_segno + 2) << 20));
                r.unwrap();
                assert_eq!(v.last_record(), Some(recs[k - 1].0));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn any_chunking_gives_the_same_result(cuts in proptest::collection::vec(1usize..140_000, 1..40), real: bool) {
            let set = &FIXTURES[2];
            let (bytes, cfg, start) = if real {
                let mut all = Vec::new();
                for i in 0..4 { all.extend(fixture(set.dir, &set.name(1, i))); }
                (all, set.config(1), Lsn(set.first_segno << 20))
            } else {
                let (b, _) = sample();
                (b.bytes, config(1), Lsn(3 << 20))
            };
            let (whole, r) = verify_all(&bytes, cfg, start);
            r.unwrap();
            let mut v = WalVerifier::new(cfg, start).unwrap();
            let mut rest = &bytes[..];
            let mut cuts = cuts.into_iter().cycle();
            while !rest.is_empty() {
                let n = cuts.next().unwrap().min(rest.len());
                v.feed(&rest[..n]).unwrap();
                rest = &rest[n..];
            }
            prop_assert_eq!(v.records(), whole.records());
            prop_assert_eq!(v.verified_up_to(), whole.verified_up_to());
            prop_assert_eq!(v.end_of_wal(), whole.end_of_wal());
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(
            data in proptest::collection::vec(any::<u8>(), 0..30_000),
            chunk in 1usize..5000,
            page in 0u64..300,
            magic: u16,
        ) {
            let cfg = VerifierConfig { magic: PageMagic(magic), ..config(1) };
            let mut v = WalVerifier::new(cfg, Lsn(page * 8192)).unwrap();
            for c in data.chunks(chunk) {
                if v.feed(c).is_err() { break; }
            }
            let _ = find_end_of_valid_wal(&data, cfg, SegNo(page));
            let _ = PageHeader::parse(&data);
        }

        #[test]
        fn never_panics_on_corrupted_wal(flips in proptest::collection::vec((0usize..1_200_000, any::<u8>()), 1..20), chunk in 1usize..70_000) {
            let (mut b, _) = sample();
            let n = b.bytes.len();
            for (i, x) in flips { b.bytes[i % n] ^= x; }
            let mut v = WalVerifier::new(config(1), Lsn(b.base)).unwrap();
            for c in b.bytes.chunks(chunk) {
                if v.feed(c).is_err() { break; }
            }
            let _ = find_end_of_valid_wal(&b.bytes, config(1), SegNo(3));
        }
    }
}
