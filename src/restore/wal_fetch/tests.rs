//! wal-fetch on stores built from the real PostgreSQL 15 fixtures (1 MiB segments).

use super::*;
use std::os::unix::fs::PermissionsExt;

const MB: u64 = 1 << 20;
/// The system identifier of the pg15 fixtures.
const SYSID: &str = "7711098426243390295";

fn fixture(name: &str) -> Vec<u8> {
    fs::read(format!(
        "{}/fixtures/wal/pg15/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// `bytes` compressed as the receiver does, in frames of `frame` bytes.
fn frames(bytes: &[u8], frame: usize) -> Vec<u8> {
    let mut out = Vec::new();
    crate::store::write_frames(&mut &bytes[..], &mut out, 3, frame).unwrap();
    out
}

/// A store with cluster `main` for the pg15 fixtures, and a pg_wal-like destination.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_sysid(SYSID)
    }

    fn with_sysid(sysid: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let cluster = dir.path().join("store/main");
        fs::create_dir_all(cluster.join("wal")).unwrap();
        fs::create_dir_all(dir.path().join("pg_wal")).unwrap();
        fs::write(
            cluster.join("cluster.json"),
            format!(
                r#"{{"cluster":"main","system_identifier":"{sysid}","server_version_num":150018,"wal_segment_size":1048576,"created":"2026-11-22T19:30:00Z","format":1}}"#
            ),
        )
        .unwrap();
        Setup { dir }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("pg_wal/RECOVERYXLOG")
    }

    /// Puts `bytes` into the store as `<name><suffix>`.
    fn put(&self, name: &str, suffix: &str, bytes: &[u8]) -> PathBuf {
        let dir = if name.ends_with(".history") {
            self.store().join("main/wal")
        } else {
            self.store().join("main/wal").join(&name[..16])
        };
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}{suffix}"));
        fs::write(&path, bytes).unwrap();
        path
    }

    /// As older stores hold it: one frame.
    fn put_zst(&self, name: &str, bytes: &[u8]) -> PathBuf {
        self.put(name, ".zst", &zstd::encode_all(bytes, 3).unwrap())
    }

    /// As the receiver writes it: frames of `frame` bytes (a quarter of a fixture segment
    /// makes four).
    fn put_zst_frames(&self, name: &str, bytes: &[u8], frame: usize) -> PathBuf {
        self.put(name, ".zst", &frames(bytes, frame))
    }

    fn fetcher(&self) -> WalFetcher {
        WalFetcher::open(&self.store(), &ClusterName::default()).unwrap()
    }

    fn fetch(&self, file: &str) -> Result<Option<Delivered>, FetchError> {
        let f = self.fetcher();
        match f.request(file) {
            Some(r) => f.fetch(r, &self.dest(), None),
            None => Ok(None),
        }
    }

    /// Everything in the destination directory.
    fn pg_wal(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path().join("pg_wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

#[test]
fn requests_are_segments_or_history_files() {
    let s = Setup::new();
    let f = s.fetcher();
    assert_eq!(
        f.request("000000010000000000000003"),
        Some(WalRequest::Segment {
            tli: TimelineId(1),
            segno: SegNo(3)
        })
    );
    assert_eq!(
        f.request("0000000A.history"),
        Some(WalRequest::History(TimelineId(10)))
    );
    for other in [
        "000000010000000000000003.partial",
        "000000010000000000000003.zst",
        "000000010000000000000002.00000028.backup",
        "00000001.history.tmp",
        "RECOVERYXLOG",
        "",
        "../000000010000000000000003",
    ] {
        assert_eq!(f.request(other), None, "{other:?}");
    }
}

#[test]
fn delivers_a_plain_and_a_compressed_segment_whole_and_atomically() {
    let s = Setup::new();
    let seg7 = fixture("000000010000000000000007");
    let seg9 = fixture("000000010000000000000009");
    s.put("000000010000000000000007", "", &seg7);
    s.put_zst("000000010000000000000009", &seg9);

    // A stale DEST is replaced.
    fs::write(s.dest(), b"stale").unwrap();
    assert_eq!(
        s.fetch("000000010000000000000007").unwrap(),
        Some(Delivered::Segment { compressed: false })
    );
    assert!(fs::read(s.dest()).unwrap() == seg7);
    assert_eq!(s.pg_wal(), ["RECOVERYXLOG"], "no temporary file is left");

    assert_eq!(
        s.fetch("000000010000000000000009").unwrap(),
        Some(Delivered::Segment { compressed: true })
    );
    assert!(fs::read(s.dest()).unwrap() == seg9);
    assert_eq!(s.pg_wal(), ["RECOVERYXLOG"]);
}

#[test]
fn a_segment_of_several_frames_is_decompressed_in_parallel_whole() {
    let s = Setup::new();
    let seg9 = fixture("000000010000000000000009");
    let path = s.put_zst_frames("000000010000000000000009", &seg9, 256 * 1024);
    assert_eq!(
        crate::store::zstd_frames(&fs::read(&path).unwrap())
            .unwrap()
            .len(),
        4
    );
    fs::write(s.dest(), b"stale").unwrap();
    assert_eq!(
        s.fetch("000000010000000000000009").unwrap(),
        Some(Delivered::Segment { compressed: true })
    );
    assert!(fs::read(s.dest()).unwrap() == seg9);
    assert_eq!(s.pg_wal(), ["RECOVERYXLOG"], "no temporary file is left");

    // Uneven frames (the last one short) work the same.
    let seg7 = fixture("000000010000000000000007");
    s.put_zst_frames("000000010000000000000007", &seg7, 300_000);
    assert!(s.fetch("000000010000000000000007").unwrap().is_some());
    assert!(fs::read(s.dest()).unwrap() == seg7);

    // The prefetch spool is filled by the same code.
    let spool = Spool::open(&s.dir.path().join("spool")).unwrap();
    s.put_zst_frames(
        "000000010000000000000008",
        &fixture("000000010000000000000008"),
        1 << 18,
    );
    assert_eq!(
        s.fetcher()
            .fill_spool(&spool, TimelineId(1), SegNo(7), 2)
            .unwrap(),
        2
    );
    assert!(
        fs::read(spool.dir().join("000000010000000000000009")).unwrap() == seg9,
        "spooled from frames"
    );
}

#[test]
fn a_damaged_frame_is_a_fault_and_leaves_nothing() {
    let s = Setup::new();
    let seg9 = fixture("000000010000000000000009");
    let good = frames(&seg9, 256 * 1024);
    let table = crate::store::zstd_frames(&good).unwrap();

    // A flipped byte inside the third frame: its checksum or block fails.
    let mut bad = good.clone();
    let third = &table[2];
    bad[(third.start + third.end) / 2] ^= 0xFF;
    s.put("000000010000000000000009", ".zst", &bad);
    let err = s.fetch("000000010000000000000009").unwrap_err();
    assert!(matches!(err, FetchError::Read { .. }), "{err}");
    assert!(err.to_string().contains("zstd frame at byte"), "{err}");
    assert!(s.pg_wal().is_empty(), "{:?}", s.pg_wal());

    // The last frame missing: whole frames, but not a whole segment.
    let last = table.last().unwrap();
    s.put("000000010000000000000009", ".zst", &good[..last.start]);
    let err = s.fetch("000000010000000000000009").unwrap_err();
    assert!(
        matches!(err, FetchError::WrongSize { size, .. } if size == 3 * 256 * 1024),
        "{err}"
    );
    // The last frame cut short: streamed, and still a fault.
    s.put("000000010000000000000009", ".zst", &good[..good.len() - 3]);
    assert!(s.fetch("000000010000000000000009").is_err());
    // Another segment's frames under this name: the first page header says so.
    s.put("000000010000000000000008", ".zst", &good);
    let err = s.fetch("000000010000000000000008").unwrap_err();
    assert!(matches!(err, FetchError::BadHeader { .. }), "{err}");
    assert!(s.pg_wal().is_empty(), "{:?}", s.pg_wal());
}

#[test]
fn absent_files_are_not_found() {
    let s = Setup::new();
    s.put(
        "000000010000000000000007",
        "",
        &fixture("000000010000000000000007"),
    );
    for absent in [
        "000000010000000000000008",
        "000000020000000000000007",
        "00000002.history",
        "000000010000000000000007.partial",
    ] {
        assert_eq!(s.fetch(absent).unwrap(), None, "{absent}");
    }
    assert!(s.pg_wal().is_empty(), "nothing is written for a miss");
}

#[test]
fn a_partial_is_served_up_to_its_valid_end_and_zero_filled() {
    let s = Setup::new();
    // Segment A of timeline 1: a shutdown checkpoint ending at 0/A000A0, zeros to the end of
    // the page, then recycled pages of an older segment (garbage for this segment).
    let seg_a = fixture("00000001000000000000000A");
    assert!(
        seg_a[8192..].iter().any(|b| *b != 0),
        "the fixture has garbage"
    );
    s.put("00000001000000000000000A", ".partial", &seg_a);
    assert_eq!(
        s.fetch("00000001000000000000000A").unwrap(),
        Some(Delivered::Partial {
            valid_end: Lsn(0xA0_00A0)
        })
    );
    let got = fs::read(s.dest()).unwrap();
    assert_eq!(got.len() as u64, MB);
    assert!(got[..0xA0] == seg_a[..0xA0]);
    assert!(got[0xA0..].iter().all(|b| *b == 0));
    assert_eq!(s.pg_wal(), ["RECOVERYXLOG"]);
}

#[test]
fn a_short_partial_is_padded_and_a_continuation_only_partial_kept() {
    let s = Setup::new();
    // Segment 9 cut in the middle of a record: served up to the last whole record.
    let seg9 = fixture("000000010000000000000009");
    s.put("000000010000000000000009", ".partial", &seg9[..0x70000]);
    let Some(Delivered::Partial { valid_end }) = s.fetch("000000010000000000000009").unwrap()
    else {
        panic!("not served as a partial");
    };
    assert!(
        valid_end > Lsn(0x90_0000) && valid_end < Lsn(0x97_0000),
        "{valid_end}"
    );
    let off = (valid_end.0 - 0x90_0000) as usize;
    let got = fs::read(s.dest()).unwrap();
    assert_eq!(got.len() as u64, MB);
    assert!(got[..off] == seg9[..off]);
    assert!(got[off..].iter().all(|b| *b == 0));

    // Segment 8 holds only the continuation of a record that began in 7: no record ends
    // in it, and all of it is kept.
    let seg8 = fixture("000000010000000000000008");
    s.put("000000010000000000000008", ".partial", &seg8);
    assert_eq!(
        s.fetch("000000010000000000000008").unwrap(),
        Some(Delivered::Partial {
            valid_end: Lsn(0x90_0000)
        })
    );
    assert!(fs::read(s.dest()).unwrap() == seg8);
}

#[test]
fn a_partial_without_wal_is_not_found_and_a_complete_segment_wins() {
    let s = Setup::new();
    s.put(
        "00000001000000000000000B",
        ".partial",
        &vec![0u8; MB as usize],
    );
    assert_eq!(s.fetch("00000001000000000000000B").unwrap(), None);
    assert!(s.pg_wal().is_empty());

    let seg9 = fixture("000000010000000000000009");
    s.put("000000010000000000000009", ".partial", &seg9[..0x1000]);
    s.put("000000010000000000000009", "", &seg9);
    assert_eq!(
        s.fetch("000000010000000000000009").unwrap(),
        Some(Delivered::Segment { compressed: false })
    );
}

#[test]
fn history_files_are_delivered_and_checked() {
    let s = Setup::new();
    let history = fixture("00000002.history");
    s.put("00000002.history", "", &history);
    assert_eq!(
        s.fetch("00000002.history").unwrap(),
        Some(Delivered::History)
    );
    assert_eq!(fs::read(s.dest()).unwrap(), history);
    s.put("00000003.history", "", b"1\tnot an lsn\tbroken\n");
    let err = s.fetch("00000003.history").unwrap_err();
    assert!(matches!(err, FetchError::BadHistory { .. }), "{err}");
}

#[test]
fn damaged_files_are_faults_and_leave_nothing() {
    let s = Setup::new();
    let seg7 = fixture("000000010000000000000007");
    // Corrupt compressed data: the zstd checksum or the frame fails.
    let mut zst = zstd::encode_all(&seg7[..], 3).unwrap();
    let mid = zst.len() / 2;
    zst[mid] ^= 0xFF;
    s.put("000000010000000000000007", ".zst", &zst);
    let err = s.fetch("000000010000000000000007").unwrap_err();
    assert!(matches!(err, FetchError::Read { .. }), "{err}");
    assert!(s.pg_wal().is_empty(), "{:?}", s.pg_wal());

    // A truncated compressed segment.
    s.put("000000010000000000000009", ".zst", &zst[..mid]);
    assert!(s.fetch("000000010000000000000009").is_err());

    // Segment 7's bytes stored under segment 8's name: wrong page address.
    s.put("000000010000000000000008", "", &seg7);
    let err = s.fetch("000000010000000000000008").unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::BadHeader {
                problem: PageError::PageAddress { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("not a valid copy of segment 000000010000000000000008")
    );

    // A short complete segment.
    let seg_a = fixture("00000001000000000000000A");
    s.put("00000001000000000000000A", "", &seg_a[..0x8000]);
    let err = s.fetch("00000001000000000000000A").unwrap_err();
    assert!(
        matches!(err, FetchError::WrongSize { size: 0x8000, .. }),
        "{err}"
    );
    // A segment of timeline 1 stored as timeline 3's: its pages say timeline 1, which is
    // allowed (a new timeline's first segment starts with its parent's pages)...
    s.put("000000030000000000000007", "", &seg7);
    assert!(s.fetch("000000030000000000000007").unwrap().is_some());
    // ...but timeline 2's pages under timeline 1's name are not.
    let seg_a2 = fixture("00000002000000000000000A");
    s.put("00000001000000000000000B", "", &seg_a2);
    assert!(s.fetch("00000001000000000000000B").is_err());
    assert_eq!(s.pg_wal(), ["RECOVERYXLOG"]);
}

#[test]
fn another_systems_wal_and_a_missing_store_are_faults() {
    let s = Setup::with_sysid("1234");
    s.put(
        "000000010000000000000007",
        "",
        &fixture("000000010000000000000007"),
    );
    let err = s.fetch("000000010000000000000007").unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::BadHeader {
                problem: PageError::SystemIdentifier { .. },
                ..
            }
        ),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let err = WalFetcher::open(&dir.path().join("nowhere"), &ClusterName::default()).unwrap_err();
    assert!(
        matches!(err, FetchError::Store(StoreError::NoCluster { .. })),
        "{err}"
    );
    fs::create_dir_all(dir.path().join("main")).unwrap();
    fs::write(dir.path().join("main/cluster.json"), b"{").unwrap();
    let err = WalFetcher::open(dir.path(), &ClusterName::default()).unwrap_err();
    assert!(
        matches!(err, FetchError::Store(StoreError::BadMetadata { .. })),
        "{err}"
    );
}

#[test]
fn a_full_disk_is_a_fault() {
    let s = Setup::new();
    s.put(
        "000000010000000000000007",
        "",
        &fixture("000000010000000000000007"),
    );
    let f = s.fetcher();
    let request = f.request("000000010000000000000007").unwrap();
    // /dev/full answers every write with ENOSPC; its directory takes no temporary file, so
    // write through a temp file that is /dev/full itself.
    let mut out = TempFile {
        path: PathBuf::from("/dev/full"),
        file: OpenOptions::new().write(true).open("/dev/full").unwrap(),
        committed: true,
    };
    let stored = f
        .reader()
        .find_segment(TimelineId(1), SegNo(7))
        .unwrap()
        .unwrap();
    let err = f.copy_segment(&stored, &mut out).unwrap_err();
    assert!(matches!(err, FetchError::DiskFull { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("disk full: cannot write /dev/full")
    );
    // DEST in a directory that does not exist.
    let err = f
        .fetch(request, &s.dir.path().join("nodir/X"), None)
        .unwrap_err();
    assert!(matches!(err, FetchError::Write { .. }), "{err}");
}

fn spool_names(spool: &Spool) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(spool.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn prefetch_fills_the_spool_and_the_next_call_takes_from_it() {
    let s = Setup::new();
    let seg8 = fixture("000000010000000000000008");
    s.put(
        "000000010000000000000007",
        "",
        &fixture("000000010000000000000007"),
    );
    s.put_zst("000000010000000000000008", &seg8);
    s.put(
        "000000010000000000000009",
        "",
        &fixture("000000010000000000000009"),
    );
    s.put(
        "00000001000000000000000A",
        ".partial",
        &fixture("00000001000000000000000A"),
    );
    let spool = Spool::open(&s.dir.path().join("spool")).unwrap();
    let f = s.fetcher();
    let seg = |n| WalRequest::Segment {
        tli: TimelineId(1),
        segno: SegNo(n),
    };

    // Leftovers: another timeline, an old segment, a temporary file of a killed worker.
    fs::write(spool.dir().join("000000020000000000000009"), b"x").unwrap();
    fs::write(spool.dir().join("000000010000000000000003"), b"x").unwrap();
    fs::write(spool.dir().join("000000010000000000000008.999.tmp"), b"x").unwrap();

    assert_eq!(
        f.fetch(seg(7), &s.dest(), Some(&spool)).unwrap(),
        Some(Delivered::Segment { compressed: false })
    );
    // Up to 3 after 7: 8 and 9; A exists only as a .partial and is never spooled.
    assert_eq!(f.fill_spool(&spool, TimelineId(1), SegNo(7), 3).unwrap(), 2);
    assert_eq!(
        spool_names(&spool),
        ["000000010000000000000008", "000000010000000000000009"]
    );
    assert!(fs::read(spool.dir().join("000000010000000000000008")).unwrap() == seg8);
    // Already there: nothing to do.
    assert_eq!(f.fill_spool(&spool, TimelineId(1), SegNo(7), 3).unwrap(), 0);

    assert_eq!(
        f.fetch(seg(8), &s.dest(), Some(&spool)).unwrap(),
        Some(Delivered::Spooled)
    );
    assert!(fs::read(s.dest()).unwrap() == seg8);
    assert_eq!(spool_names(&spool), ["000000010000000000000009"]);
    assert_eq!(s.pg_wal(), ["RECOVERYXLOG"]);

    // A spooled file that went bad is discarded and the store serves the segment.
    fs::write(
        spool.dir().join("000000010000000000000009"),
        vec![7u8; MB as usize],
    )
    .unwrap();
    assert_eq!(
        f.fetch(seg(9), &s.dest(), Some(&spool)).unwrap(),
        Some(Delivered::Segment { compressed: false })
    );
    assert!(spool_names(&spool).is_empty());
    // The partial comes from the store.
    assert_eq!(
        f.fetch(seg(10), &s.dest(), Some(&spool)).unwrap(),
        Some(Delivered::Partial {
            valid_end: Lsn(0xA0_00A0)
        })
    );
}

#[test]
fn a_spool_on_another_filesystem_is_copied_from() {
    // /dev/shm is a tmpfs; the test's temporary directory is not (when it is, the rename
    // path is taken and the test still checks delivery).
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let s = Setup::new();
    let seg8 = fixture("000000010000000000000008");
    s.put("000000010000000000000008", "", &seg8);
    let spool = Spool::open(&shm.path().join("spool")).unwrap();
    let f = s.fetcher();
    assert_eq!(f.fill_spool(&spool, TimelineId(1), SegNo(7), 1).unwrap(), 1);
    let request = f.request("000000010000000000000008").unwrap();
    assert_eq!(
        f.fetch(request, &s.dest(), Some(&spool)).unwrap(),
        Some(Delivered::Spooled)
    );
    assert!(fs::read(s.dest()).unwrap() == seg8);
    assert!(spool_names(&spool).is_empty());
    assert_eq!(s.pg_wal(), ["RECOVERYXLOG"]);
}

#[test]
fn a_claimed_name_is_left_to_its_worker() {
    let s = Setup::new();
    s.put(
        "000000010000000000000008",
        "",
        &fixture("000000010000000000000008"),
    );
    s.put(
        "000000010000000000000009",
        "",
        &fixture("000000010000000000000009"),
    );
    let spool = Spool::open(&s.dir.path().join("spool")).unwrap();
    let f = s.fetcher();
    let held = spool.claim("000000010000000000000008").unwrap().unwrap();
    assert!(spool.claim("000000010000000000000008").unwrap().is_none());
    assert_eq!(f.fill_spool(&spool, TimelineId(1), SegNo(7), 2).unwrap(), 1);
    assert_eq!(
        spool_names(&spool),
        ["000000010000000000000008.lock", "000000010000000000000009"]
    );
    drop(held);
    // Once free, cleaning removes the stale lock and the next worker fills the gap.
    assert_eq!(f.fill_spool(&spool, TimelineId(1), SegNo(7), 2).unwrap(), 1);
    assert_eq!(
        spool_names(&spool),
        ["000000010000000000000008", "000000010000000000000009"]
    );
}

#[test]
fn an_unsafe_spool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let err = Spool::open(&open).unwrap_err().to_string();
    assert!(err.contains("lets others in"), "{err}");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let err = Spool::open(&link).unwrap_err().to_string();
    assert!(err.contains("not a directory"), "{err}");
    let made = dir.path().join("made");
    Spool::open(&made).unwrap();
    assert_eq!(fs::metadata(&made).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn the_default_spool_names_cluster_user_and_store() {
    let a = Setup::new();
    let b = Setup::new();
    let (da, db) = (
        a.fetcher().default_spool_dir(),
        b.fetcher().default_spool_dir(),
    );
    assert_ne!(da, db, "two stores never share a spool");
    assert_eq!(da, a.fetcher().default_spool_dir());
    let name = da.file_name().unwrap().to_str().unwrap().to_string();
    let uid = rustix::process::getuid().as_raw();
    assert!(
        name.starts_with(&format!("walden-spool-main-{uid}-")),
        "{name}"
    );
    assert_eq!(da.parent(), Some(std::env::temp_dir().as_path()));
}
