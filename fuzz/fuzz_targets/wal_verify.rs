//! The streaming WAL verifier and `find_end_of_valid_wal` on arbitrary bytes.
//!
//! Input: a 32-byte header, then the WAL bytes.
//! - bytes 0..8: chunking seed (`walden_fuzz::Chunks`; 0 = one piece);
//! - 8..10: page magic (u16 LE); 10..14: timeline (u32 LE);
//! - 14: segment size, 2^(20 + b % 11) bytes; 15: bit 0 = system identifier known;
//! - 16..24: system identifier (u64 LE); 24..32: LSN of the first WAL byte (u64 LE).
//!
//! The seeds (fuzz/seeds/wal_verify, made by fuzz/make-wal-seeds.py) are slices of the real
//! segments in fixtures/wal with the header their pages expect.
//!
//! Invariants: positions only move forward (`position` is the start plus the bytes fed,
//! `verified_up_to`, `records` and the end of WAL never go back and stay within what was
//! fed); after an error every call returns that error; feeding in chunks gives exactly the
//! result of feeding everything at once; the end of valid WAL lies inside the segment
//! bytes given and is the verified end rounded up to 8.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walden::wal::{
    Lsn, PageMagic, StartError, TimelineId, VerifierConfig, VerifyError, WAL_BLOCK_SIZE,
    WalSegSize, WalVerifier, find_end_of_valid_wal, maxalign,
};
use walden_fuzz::{Chunks, SEED_LEN};

const HEADER_LEN: usize = SEED_LEN + 24;
const MAX_START: u64 = 1 << 62;

fuzz_target!(|input: &[u8]| {
    let Some((header, wal)) = input.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let u64_at = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap());
    let seed = u64_at(0);
    let magic = PageMagic(u16::from_le_bytes([header[8], header[9]]));
    let tli = TimelineId(u32::from_le_bytes([
        header[10], header[11], header[12], header[13],
    ]));
    let seg_size = WalSegSize::new(1 << (20 + header[14] % 11)).unwrap();
    let system_identifier = (header[15] & 1 == 1).then(|| u64_at(16));
    let config = VerifierConfig {
        seg_size,
        magic,
        tli,
        system_identifier,
    };
    let raw_start = Lsn(u64_at(24));

    // Bad starts are refused; otherwise verify from the page holding the start.
    let block = u64::from(WAL_BLOCK_SIZE);
    match WalVerifier::new(config, raw_start) {
        Err(StartError::NotPageAligned(at)) => {
            assert!(at == raw_start && !raw_start.0.is_multiple_of(block))
        }
        Err(StartError::TooLarge(at)) => assert!(at == raw_start && raw_start.0 > MAX_START),
        Ok(_) => assert!(raw_start.0.is_multiple_of(block) && raw_start.0 <= MAX_START),
    }
    let start = Lsn(raw_start.0 - raw_start.0 % block);
    if start.0 > MAX_START {
        return;
    }

    let whole = verify(config, start, Chunks::new(0, wal));
    let chunked = verify(config, start, Chunks::new(seed, wal));
    assert_eq!(
        chunked, whole,
        "the result depends on how the bytes were split"
    );

    // The end of valid WAL, reading the same bytes as the segment holding the start.
    let segno = start.segno(seg_size);
    let seg_start = segno.start_lsn(seg_size);
    let end = find_end_of_valid_wal(wal, config, segno).expect("a segment start is a valid start");
    let in_segment = wal.len().min(usize::try_from(seg_size.bytes()).unwrap());
    if let Some(end) = end {
        assert!(
            end > seg_start,
            "end of WAL {end} not after the segment start {seg_start}"
        );
        let limit = maxalign(seg_start.0 + in_segment as u64);
        assert!(
            end.0 <= limit,
            "end of WAL {end} beyond the {in_segment} bytes given"
        );
    }
    if start == seg_start {
        let verified = if in_segment == wal.len() {
            whole.verified
        } else {
            verify(config, start, Chunks::new(0, &wal[..in_segment])).verified
        };
        assert_eq!(end, verified.map(|v| Lsn(maxalign(v.0))));
    }
});

/// What the verifier said at the end.
#[derive(Debug, PartialEq)]
struct Outcome {
    result: Result<Lsn, VerifyError>,
    verified: Option<Lsn>,
    last_record: Option<Lsn>,
    records: u64,
    end_of_wal: Option<Lsn>,
}

fn verify<'a>(config: VerifierConfig, start: Lsn, chunks: Chunks<'a>) -> Outcome {
    let mut v = WalVerifier::new(config, start).expect("a page-aligned start is valid");
    assert_eq!(v.position(), start);
    let mut fed = 0u64;
    let mut result = Ok(start);
    for chunk in chunks {
        let before = (v.verified_up_to(), v.records(), v.end_of_wal());
        fed += chunk.len() as u64;
        let r = v.feed(chunk);
        let pos = v.position();
        if let Some(verified) = v.verified_up_to() {
            assert!(
                before.0 <= Some(verified),
                "verified_up_to went back from {before:?}"
            );
            assert!(
                start < verified && verified <= pos,
                "verified {verified} outside {start}..={pos}"
            );
        } else {
            assert_eq!(before.0, None, "verified_up_to was forgotten");
        }
        assert!(before.1 <= v.records());
        if let Some(last) = v.last_record() {
            assert!(start <= last && Some(last) < v.verified_up_to());
        }
        if let Some(end) = before.2 {
            assert_eq!(v.end_of_wal(), Some(end), "the end of WAL moved");
        }
        if let Some(end) = v.end_of_wal() {
            assert!(start <= end && end <= pos);
        }
        match r {
            Ok(()) => assert_eq!(pos, Lsn(start.0 + fed)),
            Err(e) => {
                // Where the problem is: a page, a record, or the stray byte after the end.
                assert!(
                    e.at.0 < start.0 + fed,
                    "error at {} beyond the bytes fed",
                    e.at
                );
                assert_eq!(e.offset, e.at.segment_offset(config.seg_size));
                assert!(!e.to_string().is_empty());
                assert_eq!(v.feed(&[]), Err(e.clone()), "an error was forgotten");
                assert_eq!(v.feed(chunk), Err(e.clone()), "an error was forgotten");
                result = Err(e);
                break;
            }
        }
        result = Ok(pos);
    }
    Outcome {
        result,
        verified: v.verified_up_to(),
        last_record: v.last_record(),
        records: v.records(),
        end_of_wal: v.end_of_wal(),
    }
}
