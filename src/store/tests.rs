//! Store tests on temporary directories.

use super::*;
use std::time::Duration;

#[test]
fn utc_times() {
    let t = |s| format_utc(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(t(0), "1970-01-01T00:00:00Z");
    assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(t(1_795_375_800), "2026-11-22T19:30:00Z");
    assert_eq!(utc_now().len(), 20);
}

use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command};

use crate::pg::SystemId;
use crate::wal::{Lsn, SegNo, TimelineId, WalFileName, WalSegSize};

const MB: u64 = 1 << 20;

pub(super) fn server(seg_mb: u64) -> ServerIdentity {
    ServerIdentity {
        system_id: SystemId(7711086575738853143),
        server_version_num: 150018,
        wal_segment_size: WalSegSize::new(seg_mb * MB).unwrap(),
    }
}

pub(super) fn open(root: &Path, seg_mb: u64) -> ClusterWriter {
    ClusterWriter::open(root, &ClusterName::default(), &server(seg_mb)).unwrap()
}

/// Deterministic, segment-specific content.
fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 12) as u8))
        .collect()
}

/// Writes a whole segment in uneven chunks and returns its content.
fn write_whole(seg: &mut SegmentWriter, size: u64, seed: u8) -> Vec<u8> {
    let data = pattern(size, seed);
    let mut off = 0usize;
    for chunk in data.chunks(100_003) {
        seg.write(off as u32, &[chunk]).unwrap();
        off += chunk.len();
    }
    data
}

/// Puts a file by hand where the store keeps this segment.
fn put(root: &Path, seg_mb: u64, tli: u32, segno: u64, suffix: &str, len: u64) -> PathBuf {
    let size = WalSegSize::new(seg_mb * MB).unwrap();
    let name = WalFileName::segment(TimelineId(tli), SegNo(segno)).format(size);
    let dir = root.join("main/wal").join(&name[..16]);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}{suffix}"));
    let f = fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
    path
}

fn start(w: &ClusterWriter) -> Option<(TimelineId, Lsn)> {
    w.streaming_start().unwrap()
}

fn seg_start(seg_mb: u64, segno: u64) -> Lsn {
    Lsn(segno * seg_mb * MB)
}

#[test]
fn layout_and_names_for_each_segment_size() {
    for (mb, segno, name) in [
        (1, 4097, "000000010000000100000001"),
        (16, 0x1A3, "0000000100000001000000A3"),
        (64, 65, "000000010000000100000001"),
    ] {
        let root = tempfile::tempdir().unwrap();
        let mut w = open(root.path(), mb);
        let cluster = root.path().join("main");
        let info: serde_json::Value =
            serde_json::from_slice(&fs::read(cluster.join("cluster.json")).unwrap()).unwrap();
        assert_eq!(info["cluster"], "main");
        assert_eq!(info["system_identifier"], "7711086575738853143");
        assert_eq!(info["server_version_num"], 150018);
        assert_eq!(info["wal_segment_size"], mb * MB);
        assert_eq!(info["format"], 1);
        assert!(info["created"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            fs::read_to_string(cluster.join("lock")).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert!(!cluster.join("backups").exists());
        assert!(!cluster.join("gaps.json").exists());

        let mut seg = w.open_segment(TimelineId(1), SegNo(segno)).unwrap();
        let dir = cluster.join("wal").join(&name[..16]);
        assert_eq!(seg.path(), dir.join(format!("{name}.partial")));
        assert_eq!(fs::metadata(seg.path()).unwrap().len(), mb * MB);
        let data = write_whole(&mut seg, mb * MB, mb as u8);
        let path = seg.finish(Compression::None).unwrap();
        assert_eq!(path, dir.join(name));
        assert!(fs::read(&path).unwrap() == data);
        assert!(!dir.join(format!("{name}.partial")).exists());
        assert_eq!(
            start(&w),
            Some((TimelineId(1), seg_start(mb, segno + 1))),
            "{mb}MB"
        );
        let found = w
            .reader()
            .find_segment(TimelineId(1), SegNo(segno))
            .unwrap()
            .unwrap();
        assert_eq!(found.path, path);
        assert_eq!(found.size, mb * MB);
    }
}

#[test]
fn second_writer_in_this_process_is_refused_until_all_handles_drop() {
    let root = tempfile::tempdir().unwrap();
    let mut a = open(root.path(), 1);
    let err = ClusterWriter::open(root.path(), &ClusterName::default(), &server(1)).unwrap_err();
    match &err {
        StoreError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "cluster \"main\" in store {} is locked by pid {} (another walden receive?)",
            root.path().display(),
            std::process::id()
        )
    );
    // A segment writer keeps the lock alive after the cluster writer is gone.
    let seg = a.open_segment(TimelineId(1), SegNo(1)).unwrap();
    drop(a);
    assert!(matches!(
        ClusterWriter::open(root.path(), &ClusterName::default(), &server(1)),
        Err(StoreError::Locked { .. })
    ));
    seg.close_partial().unwrap();
    let b = open(root.path(), 1);
    assert_eq!(start(&b), Some((TimelineId(1), seg_start(1, 1))));
    // Another cluster name in the same store is independent.
    let other = ClusterName::new("other").unwrap();
    ClusterWriter::open(root.path(), &other, &server(1)).unwrap();
}

/// Kills a child we started (and the grandchild whose pid it wrote), by pid.
pub(super) struct Holder {
    pub(super) child: Child,
    pub(super) grandchild: Option<u32>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(pid) = self.grandchild {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn lock_is_seen_across_processes() {
    let root = tempfile::tempdir().unwrap();
    let w = open(root.path(), 1);
    let lock = root.path().join("main/lock");
    // Another process cannot take it while we hold it...
    let status = Command::new("flock")
        .args(["-n", "-x"])
        .arg(&lock)
        .arg("true")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    drop(w);
    // ...and we cannot take it while another process holds it.
    let child = Command::new("flock")
        .arg("-x")
        .arg(&lock)
        .args(["sh", "-c", "echo $$ > \"$0\"; exec sleep 30"])
        .arg(&lock)
        .spawn()
        .unwrap();
    let mut holder = Holder {
        child,
        grandchild: None,
    };
    let mut pid = None;
    for _ in 0..500 {
        let text = fs::read_to_string(&lock).unwrap_or_default();
        if let Ok(p) = text.trim().parse::<u32>()
            && p != std::process::id()
        {
            pid = Some(p);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    holder.grandchild = pid;
    assert!(pid.is_some(), "the flock child never wrote its pid");
    match ClusterWriter::open(root.path(), &ClusterName::default(), &server(1)) {
        Err(StoreError::Locked { pid: got, .. }) => assert_eq!(got, pid),
        other => panic!("{other:?}"),
    }
    drop(holder);
    let mut reopened = None;
    for _ in 0..500 {
        match ClusterWriter::open(root.path(), &ClusterName::default(), &server(1)) {
            Ok(w) => {
                reopened = Some(w);
                break;
            }
            Err(StoreError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        reopened.is_some(),
        "lock not released after the holder died"
    );
}

#[test]
fn a_different_server_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let name = ClusterName::default();
    drop(open(root.path(), 16));
    let json = root.path().join("main/cluster.json");
    let before = fs::read(&json).unwrap();

    let mut other = server(16);
    other.system_id = SystemId(456);
    let err = ClusterWriter::open(root.path(), &name, &other).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "store {} cluster \"main\" belongs to system 7711086575738853143 (PostgreSQL 15, 16MB segments), but the server is system 456: use another --cluster name or another store",
            root.path().display()
        )
    );
    let err = ClusterWriter::open(root.path(), &name, &server(64)).unwrap_err();
    assert!(matches!(err, StoreError::SegSizeMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("holds 16MB WAL segments, but the server uses 64MB")
    );
    let mut upgraded = server(16);
    upgraded.server_version_num = 160004;
    let err = ClusterWriter::open(root.path(), &name, &upgraded).unwrap_err();
    assert!(
        err.to_string()
            .contains("PostgreSQL 15, but the server runs PostgreSQL 16"),
        "{err}"
    );
    assert_eq!(fs::read(&json).unwrap(), before, "refusals change nothing");

    // A minor upgrade is accepted and recorded.
    let mut minor = server(16);
    minor.server_version_num = 150020;
    let w = ClusterWriter::open(root.path(), &name, &minor).unwrap();
    assert_eq!(w.info().server_version_num, 150020);
    drop(w);
    let r = ClusterReader::open(root.path(), &name).unwrap();
    assert_eq!(r.info().server_version_num, 150020);
    assert_eq!(r.info().created, open(root.path(), 16).info().created);

    let missing = ClusterReader::open(root.path(), &ClusterName::new("nope").unwrap());
    assert!(matches!(missing, Err(StoreError::NoCluster { .. })));
    fs::write(&json, b"{not json").unwrap();
    let err = ClusterWriter::open(root.path(), &name, &server(16)).unwrap_err();
    assert!(matches!(err, StoreError::BadMetadata { .. }), "{err}");
}

#[test]
fn streaming_start_follows_pg_receivewal_rules() {
    let root = tempfile::tempdir().unwrap();
    let p = root.path();
    let w = open(p, 1);
    assert_eq!(start(&w), None);

    put(p, 1, 1, 3, "", MB);
    assert_eq!(start(&w), Some((TimelineId(1), seg_start(1, 4))));
    // A newer partial: restart at its beginning.
    put(p, 1, 1, 4, ".partial", MB);
    assert_eq!(start(&w), Some((TimelineId(1), seg_start(1, 4))));
    // Same segment, complete and partial: complete wins.
    put(p, 1, 1, 4, "", MB);
    assert_eq!(start(&w), Some((TimelineId(1), seg_start(1, 5))));
    // Same segment on a higher timeline wins even as a partial.
    put(p, 1, 2, 4, ".partial", MB);
    assert_eq!(start(&w), Some((TimelineId(2), seg_start(1, 4))));
    // A higher segment number wins over a higher timeline, across xlogid directories.
    put(p, 1, 1, 4096, ".partial", MB);
    assert_eq!(start(&w), Some((TimelineId(1), seg_start(1, 4096))));
    put(p, 1, 3, 4096, "", MB);
    assert_eq!(start(&w), Some((TimelineId(3), seg_start(1, 4097))));

    // Unknown files are ignored and kept.
    let junk = [
        p.join("main/wal/0000000300000001/garbage"),
        p.join("main/wal/0000000300000001/00000003000000010000000G"),
        p.join("main/wal/notes.txt"),
    ];
    for j in &junk {
        fs::write(j, b"x").unwrap();
    }
    // A segment in the wrong directory is not taken as the newest.
    let wrong = p.join("main/wal/0000000100000000/000000050000000100000009");
    fs::write(&wrong, vec![0u8; MB as usize]).unwrap();
    assert_eq!(start(&w), Some((TimelineId(3), seg_start(1, 4097))));
    for j in &junk {
        assert!(j.exists());
    }
    assert!(wrong.exists());

    // A complete plain segment of the wrong size is a corrupt store, named.
    let short = put(p, 1, 1, 2, "", MB - 1);
    let err = w.streaming_start().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }));
    assert!(
        err.to_string().contains(&short.display().to_string()),
        "{err}"
    );
}

#[test]
fn streaming_start_checks_a_compressed_newest_segment() {
    let root = tempfile::tempdir().unwrap();
    let mut w = open(root.path(), 1);
    let mut seg = w.open_segment(TimelineId(1), SegNo(7)).unwrap();
    write_whole(&mut seg, MB, 7);
    let path = seg.finish(Compression::Zstd(3)).unwrap();
    assert!(
        path.to_str()
            .unwrap()
            .ends_with("000000010000000000000007.zst")
    );
    assert_eq!(start(&w), Some((TimelineId(1), seg_start(1, 8))));
    // A .zst that does not declare a whole segment is corrupt.
    let bad = zstd::stream::encode_all(&b"short"[..], 3).unwrap();
    let bad_path = put(root.path(), 1, 1, 8, ".zst", 0);
    fs::write(&bad_path, bad).unwrap();
    assert!(matches!(
        w.streaming_start(),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn a_compressed_segment_is_frames_of_one_mib() {
    let root = tempfile::tempdir().unwrap();
    let mut w = open(root.path(), 4);
    let mut seg = w.open_segment(TimelineId(1), SegNo(3)).unwrap();
    let data = write_whole(&mut seg, 4 * MB, 3);
    let zst = seg.finish(Compression::Zstd(3)).unwrap();
    let file = fs::read(&zst).unwrap();
    let frames = crate::store::zstd_frames(&file).unwrap();
    let parts: Vec<(u64, u64)> = frames.iter().map(|f| (f.offset, f.len)).collect();
    assert_eq!(parts, [(0, MB), (MB, MB), (2 * MB, MB), (3 * MB, MB)]);
    assert!(zstd::stream::decode_all(&file[..]).unwrap() == data);
    // The receiver resumes after it; a frame cut off at the end makes it corrupt.
    assert_eq!(start(&w), Some((TimelineId(1), Lsn(4 * 4 * MB))));
    fs::write(&zst, &file[..file.len() - 10]).unwrap();
    let err = w.streaming_start().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    // Whole frames that do not make a segment, too.
    let first = &frames[0];
    fs::write(&zst, &file[first.start..first.end]).unwrap();
    let err = w.streaming_start().unwrap_err();
    assert!(
        err.to_string().contains("decompresses to 1048576 bytes"),
        "{err}"
    );
}

#[test]
fn segments_write_sync_and_finish_plain_and_compressed() {
    let root = tempfile::tempdir().unwrap();
    let mut w = open(root.path(), 1);
    let tli = TimelineId(1);

    let mut seg = w.open_segment(tli, SegNo(1)).unwrap();
    assert_eq!((seg.tli(), seg.segno(), seg.position()), (tli, SegNo(1), 0));
    let data = pattern(MB, 1);
    seg.write(0, &[&data[..1000]]).unwrap();
    assert_eq!(seg.synced_up_to(), 0);
    seg.sync().unwrap();
    assert_eq!((seg.position(), seg.synced_up_to()), (1000, 1000));
    assert_eq!(seg.synced_lsn(), Lsn(MB + 1000));
    // Out of order and past the end are refused without writing.
    assert!(matches!(
        seg.write(999, &[&data[999..1001]]),
        Err(StoreError::OutOfOrder {
            expected: 1000,
            got: 999,
            ..
        })
    ));
    assert!(matches!(
        seg.write(1000, &[&vec![0u8; MB as usize]]),
        Err(StoreError::PastSegmentEnd { .. })
    ));
    seg.write(1000, &[&data[1000..]]).unwrap();
    let plain = seg.finish(Compression::None).unwrap();
    assert!(fs::read(&plain).unwrap() == data);

    let mut seg = w.open_segment(tli, SegNo(2)).unwrap();
    let data2 = write_whole(&mut seg, MB, 2);
    let zst = seg.finish(Compression::Zstd(3)).unwrap();
    let dir = root.path().join("main/wal/0000000100000000");
    assert_eq!(zst, dir.join("000000010000000000000002.zst"));
    assert!(!dir.join("000000010000000000000002").exists());
    assert!(!dir.join("000000010000000000000002.partial").exists());
    assert!(!dir.join("000000010000000000000002.zst.tmp").exists());
    assert!(zstd::stream::decode_all(fs::File::open(&zst).unwrap()).unwrap() == data2);

    // Finishing early is refused and keeps the partial, synced.
    let mut seg = w.open_segment(tli, SegNo(3)).unwrap();
    seg.write(0, &[&data[..10]]).unwrap();
    assert!(matches!(
        seg.finish(Compression::None),
        Err(StoreError::Incomplete { position: 10, .. })
    ));
    assert!(dir.join("000000010000000000000003.partial").exists());

    // The read side.
    let r = ClusterReader::open(root.path(), &ClusterName::default()).unwrap();
    let listed: Vec<String> = r
        .list_wal()
        .unwrap()
        .iter()
        .map(|s| s.name.format(r.info().wal_segment_size))
        .collect();
    assert_eq!(
        listed,
        [
            "000000010000000000000001",
            "000000010000000000000002.zst",
            "000000010000000000000003.partial"
        ]
    );
    let found = r.find_segment(tli, SegNo(2)).unwrap().unwrap();
    assert!(found.name.compressed && !found.name.partial);
    assert!(found.size < MB);
    let mut back = Vec::new();
    r.open_segment(&found)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data2);
    let found = r.find_segment(tli, SegNo(1)).unwrap().unwrap();
    let mut back = Vec::new();
    r.open_segment(&found)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data);
    assert!(r.find_segment(tli, SegNo(3)).unwrap().unwrap().name.partial);
    assert_eq!(r.find_segment(tli, SegNo(4)).unwrap(), None);
    assert_eq!(r.find_segment(TimelineId(2), SegNo(1)).unwrap(), None);
}

#[test]
fn a_completed_name_is_never_rewritten() {
    let root = tempfile::tempdir().unwrap();
    let mut w = open(root.path(), 1);
    let tli = TimelineId(1);
    let dir = root.path().join("main/wal/0000000100000000");
    let mut seg = w.open_segment(tli, SegNo(5)).unwrap();
    let a = write_whole(&mut seg, MB, 5);
    let path = seg.finish(Compression::None).unwrap();

    // The same bytes again: fine, the partial goes away.
    let mut seg = w.open_segment(tli, SegNo(5)).unwrap();
    write_whole(&mut seg, MB, 5);
    assert_eq!(seg.finish(Compression::Zstd(3)).unwrap(), path);
    assert!(!dir.join("000000010000000000000005.partial").exists());

    // Different bytes: both kept, an error naming both.
    let mut seg = w.open_segment(tli, SegNo(5)).unwrap();
    let b = write_whole(&mut seg, MB, 6);
    match seg.finish(Compression::None) {
        Err(StoreError::Conflict { existing, kept }) => {
            assert_eq!(existing, path);
            assert_eq!(kept, dir.join("000000010000000000000005.conflict.1"));
            assert!(fs::read(&kept).unwrap() == b);
        }
        other => panic!("{other:?}"),
    }
    assert!(fs::read(&path).unwrap() == a);
    assert!(!dir.join("000000010000000000000005.partial").exists());

    // Against a compressed copy too.
    let mut seg = w.open_segment(tli, SegNo(6)).unwrap();
    write_whole(&mut seg, MB, 6);
    let zst = seg.finish(Compression::Zstd(1)).unwrap();
    let mut seg = w.open_segment(tli, SegNo(6)).unwrap();
    write_whole(&mut seg, MB, 6);
    assert_eq!(seg.finish(Compression::None).unwrap(), zst);
    let mut seg = w.open_segment(tli, SegNo(6)).unwrap();
    write_whole(&mut seg, MB, 7);
    assert!(matches!(
        seg.finish(Compression::None),
        Err(StoreError::Conflict { .. })
    ));
    assert!(dir.join("000000010000000000000006.zst.conflict.1").exists());
    // Conflict copies are not taken as WAL.
    assert_eq!(start(&w), Some((tli, seg_start(1, 7))));
}

#[test]
fn partials_are_reused_or_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut w = open(root.path(), 1);
    let tli = TimelineId(1);
    let mut seg = w.open_segment(tli, SegNo(9)).unwrap();
    let data = pattern(MB, 9);
    seg.write(0, &[&data[..5000]]).unwrap();
    seg.close_partial().unwrap();
    assert_eq!(start(&w), Some((tli, seg_start(1, 9))));

    // Reopened from offset 0 over the old contents.
    let mut seg = w.open_segment(tli, SegNo(9)).unwrap();
    assert_eq!(seg.position(), 0);
    seg.write(0, &[&data]).unwrap();
    let path = seg.finish(Compression::None).unwrap();
    assert!(fs::read(path).unwrap() == data);

    let odd = put(root.path(), 1, 1, 10, ".partial", 12345);
    match w.open_segment(tli, SegNo(10)) {
        Err(e @ StoreError::PartialWrongSize { .. }) => {
            assert!(e.to_string().contains(&odd.display().to_string()))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::metadata(&odd).unwrap().len(), 12345, "left alone");
    // An empty one is recreated.
    let empty = put(root.path(), 1, 1, 11, ".partial", 0);
    let seg = w.open_segment(tli, SegNo(11)).unwrap();
    assert_eq!(fs::metadata(&empty).unwrap().len(), MB);
    seg.close_partial().unwrap();
}

#[test]
fn a_crash_between_steps_leaves_a_usable_store() {
    let root = tempfile::tempdir().unwrap();
    let p = root.path();
    let tli = TimelineId(1);
    {
        let mut w = open(p, 1);
        let mut seg = w.open_segment(tli, SegNo(1)).unwrap();
        write_whole(&mut seg, MB, 1);
        seg.finish(Compression::None).unwrap();
        // "Crash" with a full-size partial after writing part of segment 2.
        let mut seg = w.open_segment(tli, SegNo(2)).unwrap();
        seg.write(0, &[&[1; 100]]).unwrap();
        drop(seg);
    }
    let dir = p.join("main/wal/0000000100000000");
    // Leftovers of interrupted writes of every kind, and a crash after compressing
    // segment 1 but before removing its plain copy.
    let temps = [
        p.join("main/cluster.json.tmp"),
        p.join("main/gaps.json.tmp"),
        p.join("main/wal/00000002.history.tmp"),
        dir.join("000000010000000000000003.partial.tmp"),
        dir.join("000000010000000000000001.zst.tmp"),
    ];
    for t in &temps {
        fs::write(t, b"half-written").unwrap();
    }
    let plain1 = fs::read(dir.join("000000010000000000000001")).unwrap();
    fs::write(
        dir.join("000000010000000000000001.zst"),
        zstd::stream::encode_all(&plain1[..], 1).unwrap(),
    )
    .unwrap();

    let mut w = open(p, 1);
    for t in &temps {
        assert!(!t.exists(), "{} should be gone", t.display());
    }
    assert_eq!(start(&w), Some((tli, seg_start(1, 2))));
    assert!(w.gaps().unwrap().is_empty());
    assert_eq!(w.reader().history_files().unwrap(), []);
    let mut seg = w.open_segment(tli, SegNo(2)).unwrap();
    let data = write_whole(&mut seg, MB, 2);
    let path = seg.finish(Compression::None).unwrap();
    assert!(fs::read(path).unwrap() == data);
    assert_eq!(start(&w), Some((tli, seg_start(1, 3))));
    // Both copies of segment 1 are listed; lookup prefers the plain one.
    let found = w.reader().find_segment(tli, SegNo(1)).unwrap().unwrap();
    assert!(!found.name.compressed);
}

/// `wchar` of this thread: bytes it passed to write-like system calls.
fn thread_wchar() -> u64 {
    let io = fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn write_through_segments_hold_exactly_what_was_written() {
    let root = tempfile::tempdir().unwrap();
    let mut w = open(root.path(), 16);
    w.set_write_through(true);
    let size = 16 * MB;
    let data = pattern(size, 9);
    let mut seg = w.open_segment(TimelineId(1), SegNo(1)).unwrap();
    // A new write-through segment is all zeros, and written (no reserved, unwritten space
    // left to convert at the first durable write).
    let mut file = fs::File::open(seg.path()).unwrap();
    assert_eq!(file.metadata().unwrap().len(), size);
    // Pieces that end inside a block, exactly at a block's end, a byte at a time, several at
    // once, and more than one direct write holds (3 MiB).
    let writes: &[&[usize]] = &[
        &[100],
        &[1],
        &[3995],
        &[4096],
        &[1, 1, 1],
        &[5000, 20_000, 7],
        &[3 * MB as usize],
        &[4096 * 3 + 17],
        &[1],
    ];
    let mut at = 0usize;
    let mut got = vec![0u8; 64 * 1024];
    for pieces in writes {
        let parts: Vec<&[u8]> = pieces
            .iter()
            .scan(at, |from, len| {
                let part = &data[*from..*from + len];
                *from += len;
                Some(part)
            })
            .collect();
        seg.write(at as u32, &parts).unwrap();
        at += pieces.iter().sum::<usize>();
        // Without any sync: what was written is in the file, zeros after it.
        let from = at.saturating_sub(32 * 1024);
        file.seek(std::io::SeekFrom::Start(from as u64)).unwrap();
        file.read_exact(&mut got).unwrap();
        let split = at - from;
        assert!(got[..split] == data[from..at], "written bytes before {at}");
        assert!(got[split..].iter().all(|&b| b == 0), "zeros after {at}");
    }
    seg.sync().unwrap();
    assert_eq!(seg.synced_up_to() as usize, at);
    let rest = size as usize - at;
    seg.write(
        at as u32,
        &[&data[at..at + rest / 2], &data[at + rest / 2..]],
    )
    .unwrap();
    let plain = seg.finish(Compression::None).unwrap();
    assert!(fs::read(plain).unwrap() == data);
}

#[test]
fn preallocation_writes_no_zeros() {
    let root = tempfile::tempdir().unwrap();
    let mut w = open(root.path(), 16);
    let size = 16 * MB;
    let before = thread_wchar();
    let mut seg = w.open_segment(TimelineId(1), SegNo(1)).unwrap();
    let after_open = thread_wchar();
    assert!(
        after_open - before < 4096,
        "preallocation wrote {} bytes",
        after_open - before
    );
    let meta = fs::metadata(seg.path()).unwrap();
    assert_eq!(meta.len(), size);
    // fallocate reserves exactly the segment (set_len would reserve nothing).
    assert!(
        meta.blocks() * 512 <= size + 64 * 1024,
        "{} blocks",
        meta.blocks()
    );
    write_whole(&mut seg, size, 3);
    seg.sync().unwrap();
    let written = thread_wchar() - after_open;
    assert!(
        written as f64 <= 1.05 * size as f64,
        "{written} bytes written"
    );
    let meta = fs::metadata(seg.path()).unwrap();
    assert!(
        meta.blocks() * 512 <= size + 64 * 1024,
        "{} blocks",
        meta.blocks()
    );
    seg.close_partial().unwrap();
}

#[test]
fn history_files_and_gaps() {
    let root = tempfile::tempdir().unwrap();
    let w = open(root.path(), 16);
    let t2 = TimelineId(2);
    assert!(!w.has_history(t2));
    assert_eq!(w.read_history(t2).unwrap(), None);
    let content = b"1\t0/95F280\tno recovery target specified\n";
    w.write_history(t2, content).unwrap();
    let path = root.path().join("main/wal/00000002.history");
    assert_eq!(fs::read(&path).unwrap(), content);
    assert!(w.has_history(t2));
    w.write_history(t2, content).unwrap();
    match w.write_history(t2, b"1\t0/1000000\tother\n") {
        Err(StoreError::Conflict { existing, kept }) => {
            assert_eq!(existing, path);
            assert_eq!(fs::read(kept).unwrap(), b"1\t0/1000000\tother\n");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.read_history(t2).unwrap().unwrap(), content);
    w.write_history(TimelineId(3), b"x").unwrap();
    assert_eq!(w.reader().history_files().unwrap(), [t2, TimelineId(3)]);

    assert_eq!(w.gaps().unwrap(), []);
    let gap = |from, reason: &str| Gap {
        timeline: TimelineId(1),
        from: Lsn(from),
        to: Lsn(from + 16 * MB),
        detected: "2026-11-22T19:30:00Z".into(),
        reason: reason.into(),
    };
    w.record_gap(gap(0, "first")).unwrap();
    w.record_gap(gap(32 * MB, "second")).unwrap();
    let r = ClusterReader::open(root.path(), &ClusterName::default()).unwrap();
    assert_eq!(r.gaps().unwrap(), [gap(0, "first"), gap(32 * MB, "second")]);
    assert!(!root.path().join("main/gaps.json.tmp").exists());
}

#[test]
fn free_space_is_reported() {
    let root = tempfile::tempdir().unwrap();
    assert!(free_space(root.path()).unwrap() > 0);
    assert!(matches!(
        free_space(&root.path().join("missing")),
        Err(StoreError::Io { .. })
    ));
}

#[test]
fn writers_can_move_to_a_blocking_thread() {
    fn send<T: Send + 'static>() {}
    send::<ClusterWriter>();
    send::<SegmentWriter>();
    send::<ClusterReader>();
    let root = tempfile::tempdir().unwrap();
    let mut w = open(root.path(), 1);
    let seg = w.open_segment(TimelineId(1), SegNo(1)).unwrap();
    let path = std::thread::spawn(move || {
        let mut seg = seg;
        write_whole(&mut seg, MB, 1);
        seg.finish(Compression::None).unwrap()
    })
    .join()
    .unwrap();
    assert!(path.ends_with("000000010000000000000001"));
}
