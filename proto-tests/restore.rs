//! `walden-restore` against real servers on every version: point-in-time recovery to each kind
//! of target (time, xid, LSN, name, immediate, latest; inclusive and exclusive), proven by
//! starting the restored server and reading exactly the marker rows committed up to the
//! target in two databases at once; the newest WAL only in walden's `.partial`; a target on
//! timeline 2 after a promoted standby; a tablespace restored to a mapped directory; refusals
//! (target before the backup, a missing segment, a non-empty data directory) and `wal-fetch`
//! of an absent file; a restored hot standby streaming from the primary; and a restore from a
//! zstd store and zstd backup with `--prefetch`.

use std::time::Duration;

use walden::wal::WalFileName;

use crate::harness::*;
use crate::support::backup::{populate, run_backup, start_receiver};
use crate::support::receiver::Receiver;
use crate::support::restore::{
    Mark, OTHER_DB, mark, new_store, restore_and_start, restore_refused, run_restore,
    run_wal_fetch, setup_marks, steps, upto, wait_flushed,
};
use crate::support::store::StoreView;

/// Timeout for one backup of a small cluster.
const T: Duration = Duration::from_secs(60);

/// A primary with markers written around one backup, and walden's store of it.
struct Source {
    srv: Server,
    store: std::path::PathBuf,
    receiver: Receiver,
    marks: Vec<Mark>,
}

/// Steps 1–3, a backup, steps 4–8 (with pgbench writing beside them), everything flushed to
/// the store; the last steps are only in the store's `.partial` segment.
fn pitr_source(pg: &Pg) -> Source {
    let srv = pg.start_with(ServerOptions::default().conf("track_commit_timestamp = on"));
    let store = new_store(&srv);
    let receiver = start_receiver(&srv, &store);
    srv.pgbench_init(1);
    setup_marks(&srv);
    let load = srv.pgbench(1, 1, Duration::from_secs(4));
    let mut marks: Vec<Mark> = (1..=3).map(|s| mark(&srv, s)).collect();
    let backup = run_backup(&srv.conninfo(U_TRUST), &store, &["--label", "pitr"], T);
    backup.assert_ok();
    marks.extend((4..=7).map(|s| mark(&srv, s)));
    load.wait();
    // Step 8 after the load: it is the last write, so it stays in the newest (.partial)
    // segment whatever WAL volume the load produced on this server.
    marks.push(mark(&srv, 8));
    let end = srv.insert_lsn();
    wait_flushed(&srv, end, || receiver.context());
    Source {
        srv,
        store,
        receiver,
        marks,
    }
}

proto_test!(pitr_to_every_kind_of_target, |pg: &Pg| {
    let src = pitr_source(pg);
    let m = |step: u32| src.marks[step as usize - 1].clone();
    let cases: Vec<(String, Vec<String>, u32, u32)> = vec![
        (
            "time, inclusive".into(),
            vec!["--target-time".into(), m(6).commit_time],
            6,
            6,
        ),
        (
            "time, exclusive".into(),
            vec![
                "--target-time".into(),
                m(6).commit_time,
                "--target-exclusive".into(),
            ],
            5,
            6,
        ),
        (
            "xid, inclusive".into(),
            vec!["--target-xid".into(), m(7).xid],
            7,
            7,
        ),
        (
            "xid, exclusive".into(),
            vec!["--target-xid".into(), m(7).xid, "--target-exclusive".into()],
            6,
            7,
        ),
        (
            "lsn".into(),
            vec!["--target-lsn".into(), m(5).lsn_after.to_string()],
            5,
            5,
        ),
        (
            "name".into(),
            vec!["--target-name".into(), m(4).restore_point],
            4,
            4,
        ),
        ("immediate".into(), vec!["--target-immediate".into()], 3, 3),
    ];
    for (what, args, in_postgres, in_other) in cases {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--target-action", "promote"]);
        let r = restore_and_start(pg, &src.store, &args, &[]);
        assert_eq!(
            steps(&r.server),
            (upto(in_postgres), upto(in_other)),
            "restore to {what}: the marker rows in postgres and {OTHER_DB} are not those \
             committed up to the target\n{}\n{}",
            r.run.context(),
            r.server.context()
        );
    }
    // Latest (the default): everything, including step 8, which is only in the .partial.
    let view = StoreView::new(&src.store, "main", src.srv.wal_seg_size());
    let seg_size = src.srv.wal_seg_size();
    let last = WalFileName::segment(walden::wal::TimelineId(1), m(8).lsn_after.segno(seg_size));
    assert!(
        view.partials()
            .contains(&format!("{}.partial", last.format(seg_size)))
            && !view.has_completed(&last.format(seg_size)),
        "step 8 should be only in a .partial segment: partials {:?}\n{}",
        view.partials(),
        src.receiver.context()
    );
    let r = restore_and_start(pg, &src.store, &[], &[]);
    assert_eq!(
        steps(&r.server),
        (upto(8), upto(8)),
        "restore to latest\n{}\n{}",
        r.run.context(),
        r.server.context()
    );
});

proto_test!(dry_run_prints_the_plan_and_touches_nothing, |pg: &Pg| {
    let src = pitr_source(pg);
    let dir = pg.new_server_dir();
    let pgdata = dir.join("data");
    let run = run_restore(
        &src.store,
        &pgdata,
        &["--target-name", &src.marks[5].restore_point, "--dry-run"],
    );
    run.assert_ok();
    assert!(
        !pgdata.exists(),
        "--dry-run created the data directory\n{}",
        run.context()
    );
    let plan = run.stdout.to_lowercase();
    for word in ["backup", "step_6", "timeline"] {
        assert!(
            plan.contains(word),
            "the plan does not mention {word:?}\n{}",
            run.context()
        );
    }
});

proto_test!(refusals_before_touching_anything, |pg: &Pg| {
    let src = pitr_source(pg);
    let dir = pg.new_server_dir();
    let pgdata = dir.join("data");
    // A target before the backup.
    let run = restore_refused(
        &src.store,
        &pgdata,
        &["--target-time", &src.marks[0].commit_time],
    );
    assert!(
        run.stderr.contains("before") && !pgdata.exists(),
        "a target before the only backup: the error should say so and nothing be written\n{}",
        run.context()
    );
    // A name the WAL does not hold.
    let run = restore_refused(&src.store, &pgdata, &["--target-name", "no_such_point"]);
    assert!(run.stderr.contains("no_such_point"), "{}", run.context());
    // A non-empty data directory.
    std::fs::create_dir_all(&pgdata).expect("create pgdata");
    std::fs::write(pgdata.join("PG_VERSION"), "old").expect("write into pgdata");
    let run = restore_refused(&src.store, &pgdata, &[]);
    assert!(
        run.stderr.contains("empty") && pgdata.join("PG_VERSION").exists(),
        "a non-empty data directory must be refused and left alone\n{}",
        run.context()
    );
    std::fs::remove_dir_all(&pgdata).expect("remove pgdata");
    // wal-fetch of an absent file: exit 1, nothing on stdout.
    let dest = dir.join("RECOVERYXLOG");
    let run = run_wal_fetch(&src.store, "0000000700000000000000FF", &dest);
    assert!(
        run.code == 1 && run.stdout.is_empty() && !dest.exists(),
        "wal-fetch of an absent segment must exit 1 quietly\n{}",
        run.context()
    );
    let run = run_wal_fetch(&src.store, "00000009.history", &dest);
    assert_eq!(run.code, 1, "{}", run.context());
    // A segment missing in the middle of the WAL the restore needs: step 8's, once two
    // more segments followed it.
    src.srv.switch_wal();
    src.srv.psql("INSERT INTO marks (step) VALUES (100)");
    src.srv.switch_wal();
    src.srv.psql("INSERT INTO marks (step) VALUES (101)");
    wait_flushed(&src.srv, src.srv.insert_lsn(), || src.receiver.context());
    let seg_size = src.srv.wal_seg_size();
    let victim = WalFileName::segment(
        walden::wal::TimelineId(1),
        src.marks[7].lsn_after.segno(seg_size),
    )
    .format(seg_size);
    let view = StoreView::new(&src.store, "main", seg_size);
    assert!(
        view.has_completed(&victim),
        "{victim} should be complete: {:?}",
        view.completed()
    );
    std::fs::remove_file(view.segment_path(&victim)).expect("remove a segment");
    let run = restore_refused(&src.store, &pgdata, &[]);
    assert!(
        run.stderr.contains(&victim) && !pgdata.exists(),
        "a missing segment must be named\n{}",
        run.context()
    );
});

proto_test!(restore_to_a_point_on_timeline_2, |pg: &Pg| {
    let primary = pg.start_with(ServerOptions::default().conf("track_commit_timestamp = on"));
    setup_marks(&primary);
    mark(&primary, 1);
    let standby = primary.start_standby(&["track_commit_timestamp = on"]);
    let store = new_store(&primary);
    // walden streams from the standby; the backup is taken from it too (it carries the
    // standby's standby.signal, which restore must remove).
    let receiver = start_receiver(&standby, &store);
    let backup = run_backup(&standby.conninfo(U_TRUST), &store, &["--label", "tli"], T);
    backup.assert_ok();
    mark(&primary, 2);
    standby.wait_replayed(primary.insert_lsn());
    standby.promote();
    let m3 = mark(&standby, 3);
    mark(&standby, 4);
    let end = standby.insert_lsn();
    wait_flushed(&standby, end, || receiver.context());
    let r = restore_and_start(
        pg,
        &store,
        &[
            "--target-name",
            &m3.restore_point,
            "--target-action",
            "promote",
        ],
        &[],
    );
    assert_eq!(
        steps(&r.server),
        (upto(3), upto(3)),
        "restore to a restore point on timeline 2\n{}\n{}",
        r.run.context(),
        r.server.context()
    );
    let tli = r
        .server
        .psql("select timeline_id from pg_control_checkpoint()");
    assert_ne!(tli, "1", "the restored server should be past timeline 2");
});

proto_test!(tablespace_restored_to_a_mapped_directory, |pg: &Pg| {
    let srv = pg.start();
    let store = new_store(&srv);
    let _receiver = start_receiver(&srv, &store);
    let populated = populate(&srv);
    run_backup(&srv.conninfo(U_TRUST), &store, &["--label", "ts"], T).assert_ok();
    srv.psql("INSERT INTO t_ts SELECT g, 'after' FROM generate_series(1, 10) g");
    let end = srv.insert_lsn();
    wait_flushed(&srv, end, String::new);
    let dir = pg.new_server_dir();
    let mapped = dir.join("ts-mapped");
    let map = format!("ts1={}", mapped.display());
    let r = restore_and_start(pg, &store, &["--tablespace-map", &map], &[]);
    assert_eq!(
        r.server.psql("select count(*) from t_ts"),
        "2010",
        "{}",
        r.run.context()
    );
    let location = r.server.psql(&format!(
        "select pg_tablespace_location({})",
        populated.tablespace_oid
    ));
    assert_eq!(
        location,
        mapped.display().to_string(),
        "{}",
        r.run.context()
    );
});

proto_test!(restored_standby_streams_from_the_primary, |pg: &Pg| {
    let srv = pg.start();
    let store = new_store(&srv);
    let _receiver = start_receiver(&srv, &store);
    srv.psql("CREATE TABLE t (id int)");
    run_backup(&srv.conninfo(U_TRUST), &store, &["--label", "standby"], T).assert_ok();
    let conninfo = srv.conninfo(U_TRUST);
    let r = restore_and_start(
        pg,
        &store,
        &["--standby", "--primary-conninfo", &conninfo],
        &[],
    );
    wait_for(
        "the restored standby to stream from the primary",
        Duration::from_secs(60),
        || {
            r.server
                .try_psql("select count(*) from pg_stat_wal_receiver where status = 'streaming'")
                .as_deref()
                == Ok("1")
        },
        || format!("{}\n{}", r.run.context(), r.server.context()),
    );
    srv.psql("INSERT INTO t VALUES (42)");
    r.server.wait_replayed(srv.insert_lsn());
    assert_eq!(r.server.psql("select id from t"), "42");
    assert_eq!(r.server.psql("select pg_is_in_recovery()"), "t");
});

proto_test!(restore_from_a_compressed_store_with_prefetch, |pg: &Pg| {
    let srv = pg.start();
    let store = new_store(&srv);
    let receiver = Receiver::start(
        &srv.conninfo(U_TRUST),
        &store,
        &["--slot", "s", "--create-slot", "--compress", "zstd"],
    );
    srv.psql("CREATE TABLE t (id int, v text)");
    run_backup(
        &srv.conninfo(U_TRUST),
        &store,
        &["--label", "zstd", "--compress", "zstd"],
        T,
    )
    .assert_ok();
    let mut switched = Vec::new();
    for _ in 0..3 {
        srv.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
        switched.push(srv.switch_wal().segment);
    }
    srv.psql("INSERT INTO t VALUES (-1, 'last')");
    let end = srv.insert_lsn();
    wait_flushed(&srv, end, || receiver.context());
    let view = StoreView::new(&store, "main", srv.wal_seg_size());
    assert!(
        view.has_completed(&format!("{}.zst", switched[0])),
        "the store should hold {}.zst: {:?}",
        switched[0],
        view.partials()
    );
    let r = restore_and_start(pg, &store, &["--prefetch", "4"], &[]);
    assert_eq!(
        r.server.psql("select count(*), sum(id) from t"),
        "60001|600029999",
        "{}\n{}",
        r.run.context(),
        r.server.context()
    );
    let auto_conf = std::fs::read_to_string(r.server.data_dir().join("postgresql.auto.conf"))
        .expect("read postgresql.auto.conf");
    assert!(
        auto_conf.contains("wal-fetch")
            && auto_conf.contains("--prefetch 4")
            && auto_conf.contains(".data.walden-spool"),
        "restore_command should prefetch:\n{auto_conf}"
    );
});

proto_test!(every_kept_backup_restores_after_prune, |pg: &Pg| {
    let srv = pg.start_with(ServerOptions::default().conf("track_commit_timestamp = on"));
    let store = new_store(&srv);
    let receiver = start_receiver(&srv, &store);
    setup_marks(&srv);
    // Three backups, each after one more step and a segment switch.
    let mut ids = Vec::new();
    for step in 1..=3 {
        mark(&srv, step);
        srv.switch_wal();
        let out = run_backup(&srv.conninfo(U_TRUST), &store, &["--label", "prune"], T);
        out.assert_ok();
        ids.push(crate::support::backup::BackupsView::new(&store, "main").complete());
    }
    mark(&srv, 4);
    wait_flushed(&srv, srv.insert_lsn(), || receiver.context());
    let all = ids.last().expect("three backups").clone();
    assert_eq!(all.len(), 3, "{all:?}");
    let view = StoreView::new(&store, "main", srv.wal_seg_size());
    let first_segment = view.completed().first().cloned().expect("some WAL");

    let out = walden_cmd()
        .args(["prune", "--store"])
        .arg(&store)
        .args(["--keep-backups", "2", "--json"])
        .output()
        .expect("run walden prune");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "prune failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).expect("prune --json");
    assert_eq!(
        report["deleted_backups"][0]["id"],
        all[0].as_str(),
        "{report}"
    );
    let kept = crate::support::backup::BackupsView::new(&store, "main").complete();
    assert_eq!(kept, all[1..].to_vec(), "{report}");
    assert!(
        !view.has_completed(&first_segment),
        "WAL before the oldest kept backup should be gone: {report}"
    );

    // Each kept backup still restores on its own (to its end), and latest from the oldest.
    for (i, id) in kept.iter().enumerate() {
        let r = restore_and_start(
            pg,
            &store,
            &[
                "--backup",
                id,
                "--target-immediate",
                "--target-action",
                "promote",
            ],
            &[],
        );
        let n = u32::try_from(i).expect("small") + 2;
        assert_eq!(
            steps(&r.server),
            (upto(n), upto(n)),
            "backup {id} restored to its end\n{}",
            r.run.context()
        );
    }
    let r = restore_and_start(pg, &store, &["--backup", &kept[0]], &[]);
    assert_eq!(steps(&r.server), (upto(4), upto(4)), "{}", r.run.context());
});
