//! Retention on fabricated stores: backups taken through `BackupWriter`, WAL files put by
//! hand where the store keeps them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::store::tests::{open, server};
use crate::store::{BackupWriter, backup_in_progress, bind_cluster, format_utc};
use crate::wal::{TimelineId, WalFileName};

const MB: u64 = 1 << 20;
const SEG: u64 = 16 * MB;
const DAY: u64 = 86_400;

fn seg_size() -> WalSegSize {
    WalSegSize::new(SEG).unwrap()
}

/// 2026-11-22T19:30:00Z plus `secs`.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_375_800 + secs)
}

fn main() -> ClusterName {
    ClusterName::default()
}

/// A store with cluster `main` bound to a server with 16 MB segments.
fn store() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    bind_cluster(root.path(), &main(), &server(16)).unwrap();
    root
}

/// Takes a backup started on day `day` at segment `segno` of timeline `tli`, ending five
/// minutes later; `base.tar` holds `len` bytes.
fn backup(root: &Path, day: u64, segno: u64, tli: u32, len: usize) -> BackupId {
    let started = at(day * DAY);
    let w = BackupWriter::begin(root, &main(), started).unwrap();
    w.create_file("base.tar")
        .unwrap()
        .write_all(&vec![7u8; len])
        .unwrap();
    let id = w.id();
    let json = serde_json::json!({
        "id": id.to_string(),
        "status": "complete",
        "start_lsn": Lsn(segno * SEG + 0x28).to_string(),
        "start_timeline": tli,
        "stop_lsn": Lsn(segno * SEG + 0x1000).to_string(),
        "stop_timeline": tli,
        "start_time": format_utc(started),
        "stop_time": format_utc(started + Duration::from_secs(300)),
    });
    w.commit(json.to_string().as_bytes()).unwrap();
    id
}

/// Puts a WAL file of `len` bytes where the store keeps it; `suffix` is "", ".zst",
/// ".partial"...
fn put(root: &Path, tli: u32, segno: u64, suffix: &str, len: u64) {
    let name = WalFileName::segment(TimelineId(tli), SegNo(segno)).format(seg_size());
    let dir = root.join("main/wal").join(&name[..16]);
    fs::create_dir_all(&dir).unwrap();
    let f = fs::File::create(dir.join(format!("{name}{suffix}"))).unwrap();
    f.set_len(len).unwrap();
}

fn put_history(root: &Path, tli: u32, text: &str) {
    let dir = root.join("main/wal");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("{tli:08X}.history")), text).unwrap();
}

/// Every file and directory under `dir`, relative, with file sizes: a snapshot.
fn tree(dir: &Path) -> BTreeMap<String, Option<u64>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Option<u64>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                walk(base, &path, out);
            } else {
                out.insert(rel, Some(e.metadata().unwrap().len()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The WAL file names the store holds, sorted.
fn wal_names(root: &Path) -> Vec<String> {
    tree(&root.join("main/wal"))
        .into_iter()
        .filter(|(_, size)| size.is_some())
        .map(|(rel, _)| rel.rsplit('/').next().unwrap().to_string())
        .collect()
}

fn backup_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.join("main/backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn keep(n: usize) -> RetentionPolicy {
    RetentionPolicy {
        keep_backups: Some(n),
        recovery_window: None,
    }
}

fn window(secs: u64) -> RetentionPolicy {
    RetentionPolicy {
        keep_backups: None,
        recovery_window: Some(Duration::from_secs(secs)),
    }
}

fn id_list(entries: &[BackupEntry]) -> Vec<String> {
    entries.iter().map(|b| b.id.to_string()).collect()
}

fn seg(tli: u32, segno: u64) -> String {
    WalFileName::segment(TimelineId(tli), SegNo(segno)).format(seg_size())
}

/// Four daily backups on timeline 1 starting in segments 250, 254, 258 and 262 (segment 256
/// opens the second WAL directory), WAL 248..=265 of 1000 bytes each, the last a .partial.
fn four_backups() -> (tempfile::TempDir, Vec<BackupId>) {
    let root = store();
    let ids = [250, 254, 258, 262]
        .iter()
        .enumerate()
        .map(|(day, &segno)| backup(root.path(), day as u64, segno, 1, 4096))
        .collect();
    for segno in 248..265 {
        put(root.path(), 1, segno, "", 1000);
    }
    put(root.path(), 1, 265, ".partial", 1000);
    (root, ids)
}

#[test]
fn keep_n_deletes_older_backups_then_their_wal() {
    let (root, ids) = four_backups();
    let on_disk = |id: &BackupId| {
        let dir = root.path().join("main/backups").join(id.to_string());
        4096 + fs::metadata(dir.join("backup.json")).unwrap().len()
    };
    let sizes = [on_disk(&ids[0]), on_disk(&ids[1])];
    let report = prune(root.path(), &main(), &keep(2), false, at(10 * DAY)).unwrap();
    assert_eq!(
        id_list(&report.deleted_backups),
        [&ids[0], &ids[1]].map(ToString::to_string)
    );
    assert_eq!(
        id_list(&report.kept_backups),
        [&ids[2], &ids[3]].map(ToString::to_string)
    );
    assert_eq!(
        report.kept_backups[0].kept_because,
        [KeepReason::KeepBackups]
    );
    assert_eq!(
        report.kept_backups[1].kept_because,
        [KeepReason::Newest, KeepReason::KeepBackups]
    );
    assert_eq!(
        report
            .deleted_backups
            .iter()
            .map(|b| b.bytes)
            .collect::<Vec<_>>(),
        sizes.map(Some)
    );
    assert_eq!(
        report.deleted_backups[0].start_time.as_deref(),
        Some("2026-11-22T19:30:00Z")
    );
    assert_eq!(
        report.deleted_wal,
        WalDeleted {
            first: Some(seg(1, 248)),
            last: Some(seg(1, 257)),
            count: 10,
            bytes: 10_000,
        }
    );
    assert_eq!(report.wal_kept_from, Some(Lsn(258 * SEG)));
    assert_eq!(report.bytes_freed, sizes[0] + sizes[1] + 10_000);
    assert!(!report.dry_run);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    // On disk: the backups gone whole, no .deleting left, WAL from segment 258 on.
    assert_eq!(
        backup_names(root.path()),
        [ids[2].to_string(), ids[3].to_string(), "lock".to_string()]
    );
    let expected: Vec<String> = (258..265)
        .map(|s| seg(1, s))
        .chain([format!("{}.partial", seg(1, 265))])
        .collect();
    assert_eq!(wal_names(root.path()), expected);
    // The first WAL directory (segments 0..=255) was emptied and removed.
    let dirs: Vec<String> = tree(&root.path().join("main/wal")).into_keys().collect();
    assert!(!dirs.iter().any(|d| d == "0000000100000000"), "{dirs:?}");
    assert!(dirs.iter().any(|d| d == "0000000100000001"), "{dirs:?}");

    // JSON keys as documented.
    let json = serde_json::to_value(&report).unwrap();
    for key in [
        "deleted_backups",
        "kept_backups",
        "deleted_wal",
        "dry_run",
        "bytes_freed",
        "wal_kept_from",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["deleted_wal"]["count"], 10);
    assert_eq!(json["deleted_wal"]["first"], seg(1, 248));
    assert_eq!(json["deleted_backups"][0]["id"], ids[0].to_string());
    assert_eq!(json["kept_backups"][1]["kept_because"][0], "newest");
    assert_eq!(json["wal_kept_from"], "1/2000000");
    let text = report.to_text();
    assert!(
        text.contains(&format!("deleted backup {} (2026-11-22T19:30:00Z", ids[0])),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "deleted WAL {} .. {} (10 files",
            seg(1, 248),
            seg(1, 257)
        )),
        "{text}"
    );

    // Again: nothing more to do.
    let again = prune(root.path(), &main(), &keep(2), false, at(10 * DAY)).unwrap();
    assert!(again.deleted_backups.is_empty());
    assert_eq!(again.deleted_wal.count, 0);
    assert_eq!(again.bytes_freed, 0);
}

#[test]
fn recovery_window_keeps_the_backup_that_reaches_its_start() {
    // Backups end at day 0, 1, 2, 3 (+5 min). Now is day 4 + 5 min.
    let now = at(4 * DAY + 300);
    let (root, ids) = four_backups();
    let complete = list_backups(root.path(), &main()).unwrap();
    let wal = ClusterReader::open(root.path(), &main())
        .unwrap()
        .list_wal()
        .unwrap();
    let decide =
        |policy: RetentionPolicy| plan_retention(&policy, now, &complete, &wal, &[], seg_size());

    // A window of 2.5 days starts at day 1.5: backup 1 (ended day 1) reaches it, 2 and 3
    // ended within it; backup 0 goes, and the WAL before backup 1's start.
    let p = decide(window(5 * DAY / 2)).unwrap();
    assert_eq!(id_list(&p.delete_backups), [ids[0].to_string()]);
    assert_eq!(
        id_list(&p.keep_backups),
        ids[1..].iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    assert!(
        p.keep_backups
            .iter()
            .all(|b| b.kept_because.contains(&KeepReason::RecoveryWindow))
    );
    assert_eq!(p.wal_cutoff, Some(SegNo(254)));
    assert_eq!(
        p.delete_wal
            .iter()
            .map(|s| s.name.segno.0)
            .collect::<Vec<_>>(),
        (248..254).collect::<Vec<_>>()
    );

    // The window starting exactly at a backup's end: that backup reaches it.
    let p = decide(window(3 * DAY)).unwrap();
    assert_eq!(id_list(&p.delete_backups), [ids[0].to_string()]);

    // A window longer than the history keeps everything, and WAL before the oldest goes.
    let p = decide(window(30 * DAY)).unwrap();
    assert!(p.delete_backups.is_empty());
    assert_eq!(p.wal_cutoff, Some(SegNo(250)));
    assert_eq!(p.delete_wal.len(), 2);
    // So does a window reaching before the epoch.
    let p = plan_retention(&window(u64::MAX / 4), now, &complete, &wal, &[], seg_size()).unwrap();
    assert!(p.delete_backups.is_empty());

    // A short window that starts after the newest backup ended: only the newest, which
    // reaches it.
    let p = decide(window(60)).unwrap();
    assert_eq!(id_list(&p.keep_backups), [ids[3].to_string()]);
    assert_eq!(
        p.keep_backups[0].kept_because,
        [KeepReason::Newest, KeepReason::RecoveryWindow]
    );
    assert_eq!(p.delete_backups.len(), 3);
    assert_eq!(p.wal_cutoff, Some(SegNo(262)));

    // A clock behind every backup: all of them ended "within" the window.
    let p = plan_retention(&window(60), at(0), &complete, &wal, &[], seg_size()).unwrap();
    assert!(p.delete_backups.is_empty());
}

#[test]
fn both_rules_keep_what_either_keeps() {
    let now = at(4 * DAY + 300);
    let (root, ids) = four_backups();
    let policy = RetentionPolicy {
        keep_backups: Some(3),
        recovery_window: Some(Duration::from_secs(60)),
    };
    let report = prune(root.path(), &main(), &policy, false, now).unwrap();
    assert_eq!(id_list(&report.deleted_backups), [ids[0].to_string()]);
    assert_eq!(
        report.kept_backups[0].kept_because,
        [KeepReason::KeepBackups]
    );
    assert_eq!(
        report.kept_backups[2].kept_because,
        [
            KeepReason::Newest,
            KeepReason::KeepBackups,
            KeepReason::RecoveryWindow
        ]
    );
    // The window keeps more than the count.
    let policy = RetentionPolicy {
        keep_backups: Some(1),
        recovery_window: Some(Duration::from_secs(3 * DAY)),
    };
    let report = prune(root.path(), &main(), &policy, false, now).unwrap();
    assert!(report.deleted_backups.is_empty());
    assert_eq!(report.kept_backups.len(), 3);
    assert_eq!(
        report.kept_backups[0].kept_because,
        [KeepReason::RecoveryWindow]
    );
    assert_eq!(report.wal_kept_from, Some(Lsn(254 * SEG)));
}

#[test]
fn the_newest_backup_is_never_deleted() {
    let (root, ids) = four_backups();
    let report = prune(root.path(), &main(), &keep(1), false, at(10 * DAY)).unwrap();
    assert_eq!(id_list(&report.kept_backups), [ids[3].to_string()]);
    // Even when its backup.json is unreadable: then no WAL goes, with a warning.
    let root = store();
    let old = backup(root.path(), 0, 250, 1, 10);
    let w = BackupWriter::begin(root.path(), &main(), at(DAY)).unwrap();
    let newest = w.id();
    w.commit(b"not json").unwrap();
    put(root.path(), 1, 249, "", 10);
    let report = prune(root.path(), &main(), &keep(1), false, at(10 * DAY)).unwrap();
    assert_eq!(id_list(&report.deleted_backups), [old.to_string()]);
    assert_eq!(id_list(&report.kept_backups), [newest.to_string()]);
    assert_eq!(
        report.kept_backups[0].kept_because,
        [
            KeepReason::Newest,
            KeepReason::KeepBackups,
            KeepReason::Unreadable
        ]
    );
    assert_eq!(report.deleted_wal.count, 0);
    assert_eq!(report.wal_kept_from, None);
    assert!(
        report.warnings[0].contains("no readable backup.json"),
        "{:?}",
        report.warnings
    );
    assert_eq!(wal_names(root.path()), [seg(1, 249)]);

    // Without any complete backup nothing goes.
    let root = store();
    put(root.path(), 1, 1, "", 10);
    let report = prune(root.path(), &main(), &keep(1), false, at(0)).unwrap();
    assert_eq!(report.deleted_wal.count, 0);
    assert!(report.kept_backups.is_empty());
    assert_eq!(wal_names(root.path()), [seg(1, 1)]);
}

#[test]
fn nothing_is_deleted_while_a_backup_is_in_progress() {
    let (root, _) = four_backups();
    let running = BackupWriter::begin(root.path(), &main(), at(5 * DAY)).unwrap();
    assert!(backup_in_progress(root.path(), &main()).unwrap());
    let before = tree(root.path());
    for dry_run in [true, false] {
        let err = prune(root.path(), &main(), &keep(1), dry_run, at(10 * DAY)).unwrap_err();
        assert!(
            matches!(err, RetentionError::BackupInProgress(id) if id == running.id()),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::exit::BUSY);
        assert!(
            err.to_string().contains("in progress: nothing was deleted"),
            "{err}"
        );
    }
    assert_eq!(tree(root.path()), before, "nothing changed");
    running.abandon().unwrap();
    let report = prune(root.path(), &main(), &keep(1), false, at(10 * DAY)).unwrap();
    assert_eq!(report.deleted_backups.len(), 3);
}

#[test]
fn timelines_keep_history_the_newest_partial_and_what_is_not_before_the_cutoff() {
    let root = store();
    // Timeline 1 ran to 0/107000100 (segment 263) and ended; timeline 2 began there.
    put_history(
        root.path(),
        2,
        "1\t1/07000100\tno recovery target specified\n",
    );
    for segno in 250..263 {
        put(root.path(), 1, segno, ".zst", 100);
    }
    // An interrupted compression left a segment both plain and compressed.
    put(root.path(), 1, 252, "", 1000);
    put(root.path(), 1, 263, ".partial", 1000);
    for segno in 263..267 {
        put(root.path(), 2, segno, "", 1000);
    }
    put(root.path(), 2, 267, ".partial", 1000);
    // Not something walden writes, but a .partial of the newest timeline stays anyway.
    put(root.path(), 2, 251, ".partial", 1000);
    backup(root.path(), 0, 251, 1, 10);
    backup(root.path(), 1, 265, 2, 10);

    let report = prune(root.path(), &main(), &keep(1), false, at(10 * DAY)).unwrap();
    assert_eq!(report.wal_kept_from, Some(Lsn(265 * SEG)));
    assert_eq!(
        report.deleted_wal.first,
        Some(format!("{}.zst", seg(1, 250)))
    );
    assert_eq!(report.deleted_wal.last, Some(seg(2, 264)));
    // 13 compressed + 1 plain + timeline 1's .partial + 263 and 264 of timeline 2.
    assert_eq!(report.deleted_wal.count, 17);
    assert_eq!(report.deleted_wal.bytes, 13 * 100 + 1000 + 1000 + 2000);
    let mut left = wal_names(root.path());
    left.sort();
    assert_eq!(
        left,
        [
            "00000002.history".to_string(),
            format!("{}.partial", seg(2, 251)),
            seg(2, 265),
            seg(2, 266),
            format!("{}.partial", seg(2, 267)),
        ]
    );

    // A .partial of a timeline no history file says ended is kept, as is one whose history
    // file does not parse.
    let root = store();
    put(root.path(), 1, 250, ".partial", 10);
    put(root.path(), 3, 250, ".partial", 10);
    put_history(root.path(), 3, "garbage\n");
    put(root.path(), 3, 251, "", 10);
    backup(root.path(), 0, 252, 3, 10);
    let report = prune(root.path(), &main(), &keep(1), false, at(10 * DAY)).unwrap();
    assert_eq!(report.deleted_wal.count, 1);
    assert_eq!(report.deleted_wal.first, Some(seg(3, 251)));
    assert!(
        report.warnings[0].contains("timeline 3"),
        "{:?}",
        report.warnings
    );
}

#[test]
fn dry_run_deletes_nothing_and_reports_what_a_run_does() {
    let (root, _) = four_backups();
    // Crash leftovers, reported too.
    let backups = root.path().join("main/backups");
    drop(BackupWriter::begin(root.path(), &main(), at(9 * DAY)).unwrap());
    let before = tree(root.path());
    let dry = prune(root.path(), &main(), &keep(2), true, at(10 * DAY)).unwrap();
    assert_eq!(tree(root.path()), before, "a dry run changes nothing");
    assert!(dry.dry_run);
    let text = dry.to_text();
    assert!(text.contains("would delete backup"), "{text}");
    assert!(
        text.contains("would remove leftover backup directory"),
        "{text}"
    );

    let real = prune(root.path(), &main(), &keep(2), false, at(10 * DAY)).unwrap();
    assert!(!real.dry_run);
    assert_eq!(dry.deleted_backups, real.deleted_backups);
    assert_eq!(dry.kept_backups, real.kept_backups);
    assert_eq!(dry.deleted_wal, real.deleted_wal);
    assert_eq!(dry.bytes_freed, real.bytes_freed);
    assert_eq!(dry.removed_interrupted, real.removed_interrupted);
    assert_eq!(
        real.removed_interrupted,
        [format!(
            "{}.partial",
            BackupId::from_time(at(9 * DAY)).unwrap()
        )]
    );
    assert_eq!(backup_names(root.path()).len(), 3);
    assert!(
        !backups
            .join(format!(
                "{}.partial",
                BackupId::from_time(at(9 * DAY)).unwrap()
            ))
            .exists()
    );
}

#[test]
fn deleting_leftovers_are_ignored_by_listings_and_cleaned() {
    let (root, ids) = four_backups();
    let backups = root.path().join("main/backups");
    // A crash between the rename and the removal of the tree.
    let leftover = backups.join(format!("{}.deleting", ids[0]));
    fs::rename(backups.join(ids[0].to_string()), &leftover).unwrap();
    fs::remove_file(leftover.join("backup.json")).unwrap();
    let listed: Vec<BackupId> = list_backups(root.path(), &main())
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(listed, ids[1..]);
    assert!(!backup_in_progress(root.path(), &main()).unwrap());

    let report = prune(root.path(), &main(), &keep(10), false, at(10 * DAY)).unwrap();
    assert_eq!(report.removed_interrupted, [format!("{}.deleting", ids[0])]);
    assert!(report.deleted_backups.is_empty());
    assert!(!leftover.exists());
    // WAL goes up to the oldest backup still there.
    assert_eq!(report.wal_kept_from, Some(Lsn(254 * SEG)));

    // The next backup cleans one up too.
    let again = backups.join(format!("{}.deleting", ids[1]));
    fs::rename(backups.join(ids[1].to_string()), &again).unwrap();
    BackupWriter::begin(root.path(), &main(), at(20 * DAY))
        .unwrap()
        .abandon()
        .unwrap();
    assert!(!again.exists());
    assert_eq!(
        backup_names(root.path()),
        [ids[2].to_string(), ids[3].to_string(), "lock".to_string()]
    );
}

#[test]
fn prune_runs_beside_a_receiver() {
    let root = tempfile::tempdir().unwrap();
    let mut receiver = open(root.path(), 16);
    // Whole (sparse) segments: the receiver checks their size when it starts streaming.
    for segno in 250..260 {
        put(root.path(), 1, segno, "", SEG);
    }
    backup(root.path(), 0, 255, 1, 10);
    backup(root.path(), 1, 258, 1, 10);
    // The receiver holds the cluster lock and writes the segment after the last.
    let mut head = receiver.open_segment(TimelineId(1), SegNo(260)).unwrap();
    head.write(0, &[&[1u8; 4096]]).unwrap();
    let report = prune(root.path(), &main(), &keep(1), false, at(10 * DAY)).unwrap();
    assert_eq!(report.deleted_wal.count, 8);
    head.write(4096, &[&[2u8; 4096]]).unwrap();
    head.sync().unwrap();
    assert_eq!(
        wal_names(root.path()),
        [seg(1, 258), seg(1, 259), format!("{}.partial", seg(1, 260))]
    );
    assert_eq!(
        receiver.streaming_start().unwrap(),
        Some((TimelineId(1), Lsn(260 * SEG)))
    );
}

#[test]
fn policies_must_keep_something() {
    let root = store();
    let err = prune(
        root.path(),
        &main(),
        &RetentionPolicy::default(),
        true,
        at(0),
    )
    .unwrap_err();
    assert!(matches!(err, RetentionError::NoPolicy));
    assert_eq!(err.exit_code(), crate::exit::USAGE);
    let err = prune(root.path(), &main(), &keep(0), true, at(0)).unwrap_err();
    assert!(matches!(err, RetentionError::KeepZero));
    assert_eq!(err.exit_code(), crate::exit::USAGE);
    let err = prune(
        root.path(),
        &ClusterName::new("other").unwrap(),
        &keep(1),
        true,
        at(0),
    )
    .unwrap_err();
    assert!(
        matches!(err, RetentionError::Store(StoreError::NoCluster { .. })),
        "{err}"
    );
    assert_eq!(err.exit_code(), crate::exit::USAGE);
    // A cluster with no backups directory at all: nothing to do, nothing created.
    let report = prune(root.path(), &main(), &keep(1), false, at(0)).unwrap();
    assert!(report.kept_backups.is_empty());
    assert!(!root.path().join("main/backups").exists());
}
