//! Test utilities beyond the server harness: a proxy corrupting WAL or base backups, a
//! scripted WAL sender speaking the PostgreSQL 14 BASE_BACKUP framing, `walden receive` and
//! `walden backup` as background processes, read-only views of a walden store's WAL and
//! backups, a minimal tar reader, the backup oracle (extraction + `pg_verifybackup`), and WAL
//! comparisons (byte identity with reference files, contiguity, `pg_waldump`).

pub mod backup;
pub mod corrupt_proxy;
pub mod daemon;
pub mod fake_walsender;
pub mod receiver;
pub mod restore;
pub mod store;
pub mod tar;

mod backup_smoke;
mod smoke;

use std::path::Path;
use std::process::Command;

use walden::wal::{WalFileName, WalSegSize};

use crate::harness::Server;

/// Compares each segment of `names` (read with `ours`) with the file of the same name in
/// `reference_dir` (pg_receivewal's directory or a server's `pg_wal`) where that file exists.
/// Panics naming the first differing segment and offset, with `context()`; returns the names
/// that had no reference file.
pub fn assert_same_as(
    ours: impl Fn(&str) -> Vec<u8>,
    names: &[String],
    reference_dir: &Path,
    context: impl Fn() -> String,
) -> Vec<String> {
    let mut missing = Vec::new();
    for name in names {
        let Ok(theirs) = std::fs::read(reference_dir.join(name)) else {
            missing.push(name.clone());
            continue;
        };
        let ours = ours(name);
        if ours != theirs {
            let first = ours
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(theirs.len()));
            panic!(
                "segment {name} differs from {}: sizes {} vs {}, first difference at offset \
                 0x{first:X}\n{}",
                reference_dir.join(name).display(),
                ours.len(),
                theirs.len(),
                context()
            );
        }
    }
    missing
}

/// Asserts that `names` (completed segments of one timeline, in order) have no hole.
pub fn assert_contiguous(names: &[String], seg_size: WalSegSize) {
    let parsed: Vec<WalFileName> = names
        .iter()
        .map(|n| WalFileName::parse(n, seg_size).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for pair in parsed.windows(2) {
        assert!(
            pair[0].tli == pair[1].tli && pair[1].segno.0 == pair[0].segno.0 + 1,
            "segments missing between {} and {} in {names:?}",
            pair[0].format(seg_size),
            pair[1].format(seg_size)
        );
    }
}

/// Runs this version's `pg_waldump --stats` over the segments `first..=last` in `dir`, which
/// must decode cleanly; panics with its output otherwise.
pub fn assert_waldump_ok(srv: &Server, dir: &Path, first: &str, last: &str) {
    let out = Command::new(srv.bin("pg_waldump"))
        .arg("--stats")
        .arg("-p")
        .arg(dir)
        .args([first, last])
        .output()
        .unwrap_or_else(|e| panic!("cannot run pg_waldump: {e}"));
    assert!(
        out.status.success(),
        "pg_waldump {first}..{last} in {} failed ({}):\n{}{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A small xorshift generator for test randomness (seeded from the clock, printed by the
/// caller so that a failing run can be repeated).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the clock (`WALDEN_TEST_SEED` overrides); prints the seed.
    pub fn from_clock() -> Rng {
        let seed = std::env::var("WALDEN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        println!("random seed {seed} (set WALDEN_TEST_SEED to repeat)");
        Rng(seed)
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }
}
