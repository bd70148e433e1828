use super::*;
use crate::daemon::status_file::{BackupSnapshot, DiskSnapshot, ReceiverSnapshot};
use crate::inspect::backups::BackupSummary;
use crate::inspect::wal::WalInventory;
use crate::store::Gap;
use crate::wal::TimelineId;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

const NOW: u64 = 10_000;

fn thresholds() -> Thresholds {
    Thresholds {
        receiver_down_after: Duration::from_secs(300),
        backup_grace: Duration::from_secs(3600),
        min_free_bytes: 1 << 30,
    }
}

/// A daemon that wrote its file a second ago, its receiver streaming since `since`.
fn file(state: &str, since: u64) -> StatusFile {
    StatusFile {
        format: 1,
        cluster: "main".into(),
        pid: std::process::id(),
        started: format_time(t(0)),
        written: format_time(t(NOW - 1)),
        stopped: false,
        slot: "walden".into(),
        receiver: ReceiverSnapshot {
            state: state.into(),
            since: format_time(t(since)),
            timeline: Some(1),
            received_lsn: Some(Lsn(0x3000_0000)),
            flushed_lsn: Some(Lsn(0x2F00_0000)),
            server_wal_end: Some(Lsn(0x3000_0000)),
            last_message: Some(format_time(t(NOW - 1))),
            flushed_arrived: Some(format_time(t(NOW - 4))),
            bytes_received: 123,
            segments_completed: 7,
            restarts: 1,
            last_error: Some("connection refused".into()),
            last_error_at: Some(format_time(t(since))),
        },
        backup: BackupSnapshot::default(),
        disk: DiskSnapshot::default(),
        receiver_down_after_seconds: 300,
        backup_grace_seconds: 3600,
    }
}

fn backup(id: &str, start: u64, stop_lsn: Lsn) -> BackupSummary {
    BackupSummary {
        id: id.into(),
        status: "complete",
        label: None,
        start_time: Some(format_time(t(start))),
        stop_time: Some(format_time(t(start + 60))),
        start_lsn: None,
        stop_lsn: Some(stop_lsn.to_string()),
        start_timeline: Some(1),
        stop_timeline: Some(1),
        bytes: Some(1000),
        compression: None,
        includes_wal: Some(false),
    }
}

fn listing(backups: Vec<BackupSummary>, gaps: Vec<Gap>) -> Listing {
    Listing {
        cluster: "main".into(),
        system_identifier: "1".into(),
        server_version_num: 170000,
        wal_segment_size: 16 << 20,
        backups,
        wal: WalInventory {
            timelines: Vec::new(),
            gaps,
            history_files: Vec::new(),
        },
        recoverable: None,
    }
}

fn inputs<'a>(file: Option<&'a StatusFile>, listing: Option<&'a Listing>) -> Inputs<'a> {
    Inputs {
        cluster: "main",
        now: t(NOW),
        file,
        daemon_running: file.is_some(),
        listing: Ok(listing),
        store: StoreView {
            free_bytes: Some(10 << 30),
            ..StoreView::default()
        },
        thresholds: thresholds(),
        schedule: Some("every 1day".into()),
        backup_due: Some(t(NOW + 100)),
        slot: SlotView::default(),
    }
}

#[test]
fn streaming_with_a_recent_backup_is_healthy_and_reports_lag() {
    let f = file("streaming", 100);
    let l = listing(vec![backup("B1", NOW - 500, Lsn(0x100))], Vec::new());
    let s = build(inputs(Some(&f), Some(&l)));
    assert!(s.healthy, "{:?}", s.problems);
    assert_eq!(s.receiver.state, "streaming");
    assert_eq!(s.receiver.lag_bytes, Some(0x100_0000));
    assert_eq!(s.receiver.lag_seconds, Some(4.0));
    assert_eq!(s.receiver.segments_completed, 7);
    let last = s.last_backup.expect("last backup");
    assert_eq!(last.id, "B1");
    assert_eq!(last.age_seconds, Some(500.0));
    assert_eq!(s.backups.count, 1);
    assert_eq!(s.store.min_free_bytes, 1 << 30);

    let json = serde_json::to_value(build(inputs(Some(&f), Some(&l)))).expect("json");
    for key in [
        "cluster",
        "healthy",
        "problems",
        "daemon",
        "receiver",
        "slot",
        "last_backup",
        "backups",
        "recoverable",
        "store",
    ] {
        assert!(json.get(key).is_some(), "{key} missing: {json}");
    }
    assert_eq!(json["receiver"]["flushed_lsn"], "0/2F000000");
    assert_eq!(json["store"]["free_bytes"], 10u64 << 30);
}

#[test]
fn caught_up_receiver_has_no_lag() {
    let mut f = file("streaming", 100);
    f.receiver.flushed_lsn = f.receiver.server_wal_end;
    let s = build(inputs(Some(&f), None));
    assert_eq!(s.receiver.lag_bytes, Some(0));
    assert_eq!(s.receiver.lag_seconds, Some(0.0));
}

#[test]
fn receiver_down_too_long_is_unhealthy_with_its_error() {
    let f = file("waiting-to-reconnect", NOW - 200);
    assert!(
        build(inputs(Some(&f), None)).healthy,
        "within the threshold"
    );
    let f = file("waiting-to-reconnect", NOW - 400);
    let s = build(inputs(Some(&f), None));
    assert!(!s.healthy);
    assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
    let p = &s.problems[0];
    assert!(p.contains("not streaming for 6m 40s"), "{p}");
    assert!(p.contains("receiver waiting to reconnect"), "{p}");
    assert!(p.contains("connection refused"), "{p}");
}

#[test]
fn a_daemon_that_is_gone_counts_as_down_from_its_last_write() {
    let mut f = file("streaming", 100);
    f.written = format_time(t(NOW - 100));
    let mut i = inputs(Some(&f), None);
    i.daemon_running = false;
    let s = build(i);
    assert!(s.healthy, "down 100 s only: {:?}", s.problems);
    assert_eq!(s.receiver.state, "daemon-not-running");
    assert_eq!(s.receiver.lag_bytes, None, "no live lag without a daemon");

    f.written = format_time(t(NOW - 1000));
    let mut i = inputs(Some(&f), None);
    i.daemon_running = false;
    let s = build(i);
    assert!(!s.healthy);
    assert!(s.problems[0].contains("is not running"), "{:?}", s.problems);

    let s = build(inputs(None, None));
    assert!(!s.healthy);
    assert!(s.problems[0].contains("no status.json"), "{:?}", s.problems);
}

#[test]
fn an_overdue_backup_is_unhealthy_after_the_grace() {
    let f = file("streaming", 100);
    let l = listing(vec![backup("B1", 0, Lsn(0x100))], Vec::new());
    let mut i = inputs(Some(&f), Some(&l));
    i.backup_due = Some(t(NOW - 3000));
    assert!(build(i).healthy, "within the grace");
    let mut i = inputs(Some(&f), Some(&l));
    i.backup_due = Some(t(NOW - 4000));
    let s = build(i);
    assert!(!s.healthy);
    assert!(
        s.problems[0].contains("backup overdue by 1h 6m") && s.problems[0].contains("B1"),
        "{:?}",
        s.problems
    );
    let mut i = inputs(Some(&f), Some(&l));
    i.schedule = None;
    i.backup_due = None;
    assert!(build(i).healthy, "no schedule, never overdue");
}

#[test]
fn a_gap_after_the_newest_backup_is_unhealthy() {
    let f = file("streaming", 100);
    let gap = |from, to| Gap {
        timeline: TimelineId(1),
        from: Lsn(from),
        to: Lsn(to),
        detected: "2027-01-15T08:00:00Z".into(),
        reason: "removed".into(),
    };
    let old = listing(
        vec![backup("B1", NOW - 500, Lsn(0x9000))],
        vec![gap(0x1000, 0x2000)],
    );
    assert!(build(inputs(Some(&f), Some(&old))).healthy);
    let new = listing(
        vec![backup("B1", NOW - 500, Lsn(0x9000))],
        vec![gap(0xA000, 0xB000)],
    );
    let s = build(inputs(Some(&f), Some(&new)));
    assert!(!s.healthy);
    assert!(
        s.problems[0].contains("WAL gap 0/A000..0/B000"),
        "{:?}",
        s.problems
    );
}

#[test]
fn low_free_space_is_unhealthy_unless_the_check_is_off() {
    let f = file("streaming", 100);
    let mut i = inputs(Some(&f), None);
    i.store.free_bytes = Some(100 << 20);
    let s = build(i);
    assert!(!s.healthy);
    assert!(
        s.problems[0].contains("100.0 MB free, below min_free_space 1.0 GB"),
        "{:?}",
        s.problems
    );
    let mut i = inputs(Some(&f), None);
    i.store.free_bytes = Some(100 << 20);
    i.thresholds.min_free_bytes = 0;
    assert!(build(i).healthy);
}

#[test]
fn text_names_the_problems_and_the_aspects() {
    let f = file("connecting", NOW - 1000);
    let s = build(inputs(Some(&f), None));
    let text = s.to_text();
    assert!(
        text.starts_with("cluster main: UNHEALTHY\n  problem: not streaming"),
        "{text}"
    );
    for part in [
        "  receiver: connecting since",
        "  slot walden",
        "  last backup: none",
        "  store: ",
    ] {
        assert!(text.contains(part), "{part} missing:\n{text}");
    }
}

#[test]
fn human_units() {
    assert_eq!(human_bytes(512), "512 B");
    assert_eq!(human_bytes(1536), "1.5 kB");
    assert_eq!(human_bytes(3 << 30), "3.0 GB");
    assert_eq!(human_duration(59.9), "59s");
    assert_eq!(human_duration(3700.0), "1h 1m");
    assert_eq!(human_duration(90_000.0), "1d 1h");
}
