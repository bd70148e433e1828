//! `walden backup` against real servers on every version. The oracle is the version's own
//! `pg_verifybackup`: every complete backup is extracted by hand (tablespaces linked), its WAL
//! range copied out of the store as `walden receive` left it, and verified — plain, zstd,
//! server-side zstd (where built) and with the WAL inside (`--include-wal`, no receiver).
//! Beside it: a terminated walsender and a `kill -9` mid-stream leave no complete backup (and
//! the next backup clears the abandoned one), a byte flipped on the wire fails the backup
//! against the manifest, an idle server backs up quickly, a backup without its WAL fails after
//! `--wait-for-wal`, config files are captured when the role may read them, `walden list` and
//! `walden verify` see stored backups and a corrupted archive member, and a data-page checksum
//! failure fails the backup unless `--no-verify`.
//!
//! Every failure message quotes walden's output tails and the backups directory listing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use walden::wal::{Lsn, TimelineId};

use crate::harness::*;
use crate::support::backup::{
    BackupOutcome, BackupRun, BackupsView, Populated, backup_json, is_backup_id,
    manifest_wal_ranges, populate, run_backup, start_receiver, verify_stored_backup,
};
use crate::support::corrupt_proxy::{CorruptProxy, Trigger};
use crate::support::tar::flip_file_byte;

/// Timeout for one backup of a small cluster.
const T: Duration = Duration::from_secs(60);

/// The label the tests give their backups.
const LABEL: &str = "walden proto-test";

/// A new store directory in the server's test directory.
fn new_store(srv: &Server) -> PathBuf {
    let dir = srv.dir().join("store");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Asserts that `out` exited with `code`, quoting its output and the backups.
fn expect_code(out: &BackupOutcome, code: i32, what: &str, backups: &BackupsView) {
    assert_eq!(
        out.code,
        code,
        "{what}: unexpected exit code\n{}\n{}",
        out.context,
        backups.listing()
    );
}

/// An LSN from a JSON string.
fn lsn(v: &serde_json::Value) -> Lsn {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an LSN: {v}"))
}

/// What a backup was asked for.
struct Expected<'a> {
    /// `compression` in backup.json: exactly this, or this prefix when it ends with `:`.
    compression: &'a str,
    /// The archive suffix after `.tar` (`""` or `".zst"`).
    suffix: &'a str,
    includes_wal: bool,
}

/// Checks a complete backup's directory and `backup.json` against the server and the
/// manifest; returns `backup.json`.
fn check_backup(
    srv: &Server,
    dir: &Path,
    id: &str,
    populated: &Populated,
    expected: &Expected,
    context: &str,
) -> serde_json::Value {
    let json = backup_json(dir);
    let ctx = || format!("backup.json: {json:#}\n{context}");
    assert!(is_backup_id(id), "backup id {id:?}\n{}", ctx());
    assert_eq!(json["id"].as_str(), Some(id), "{}", ctx());
    assert_eq!(json["status"], "complete", "{}", ctx());
    assert_eq!(json["label"], LABEL, "{}", ctx());

    // The LSNs are the manifest's WAL range.
    let ranges = manifest_wal_ranges(&dir.join("backup_manifest"));
    assert_eq!(ranges.len(), 1, "{ranges:?}\n{}", ctx());
    let range = ranges[0];
    assert_eq!(range.timeline, TimelineId(1));
    assert_eq!(lsn(&json["start_lsn"]), range.start, "{}", ctx());
    assert_eq!(lsn(&json["stop_lsn"]), range.end, "{}", ctx());
    assert_eq!(json["start_timeline"], 1, "{}", ctx());
    assert_eq!(json["stop_timeline"], 1, "{}", ctx());
    let (start, stop) = (
        json["start_time"].as_str().unwrap_or_default(),
        json["stop_time"].as_str().unwrap_or_default(),
    );
    assert!(
        start.len() >= 20 && start.contains('T') && start <= stop,
        "start_time {start:?}, stop_time {stop:?}\n{}",
        ctx()
    );

    // The server.
    let version: u64 = srv
        .psql("show server_version_num")
        .parse()
        .expect("a number");
    assert_eq!(
        json["server_version_num"].as_u64(),
        Some(version),
        "{}",
        ctx()
    );
    let sysid = srv.system_identifier().to_string();
    assert_eq!(
        json["system_identifier"].as_str(),
        Some(&*sysid),
        "{}",
        ctx()
    );
    assert_eq!(
        json["wal_segment_size"].as_u64(),
        Some(srv.wal_seg_size().bytes()),
        "{}",
        ctx()
    );
    let compression = json["compression"].as_str().unwrap_or_default();
    let compression_ok = match expected.compression.strip_suffix(':') {
        Some(algorithm) => compression
            .strip_prefix(algorithm)
            .and_then(|l| l.strip_prefix(':'))
            .is_some_and(|level| level.parse::<i32>().is_ok()),
        None => compression == expected.compression,
    };
    assert!(compression_ok, "compression {compression:?}\n{}", ctx());
    assert_eq!(json["includes_wal"], expected.includes_wal, "{}", ctx());
    assert_eq!(json["from_standby"], false, "{}", ctx());
    assert_eq!(json["history_files"], serde_json::json!([]), "{}", ctx());

    // Tablespaces and archives.
    let oid = populated.tablespace_oid;
    assert_eq!(
        json["tablespaces"],
        serde_json::json!([{"oid": oid, "location": populated.tablespace_path, "name": "ts1"}]),
        "{}",
        ctx()
    );
    let archives = json["archives"].as_array().cloned().unwrap_or_default();
    let base_name = format!("base.tar{}", expected.suffix);
    let ts_name = format!("{oid}.tar{}", expected.suffix);
    let names: BTreeSet<&str> = archives.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([base_name.as_str(), ts_name.as_str()]),
        "{}",
        ctx()
    );
    for a in &archives {
        let name = a["name"].as_str().unwrap_or_default();
        assert!(
            dir.join(name).is_file(),
            "{name} is not in the backup\n{}",
            ctx()
        );
        assert!(a["bytes"].as_u64().is_some_and(|b| b > 0), "{a}\n{}", ctx());
        if name == base_name {
            assert!(a["tablespace_oid"].is_null(), "{a}\n{}", ctx());
        } else {
            assert_eq!(a["tablespace_oid"], oid, "{a}\n{}", ctx());
            assert_eq!(
                a["tablespace_location"],
                populated.tablespace_path,
                "{a}\n{}",
                ctx()
            );
        }
    }

    // Nothing else in the directory but backup.json, the manifest and config/.
    let entries: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut allowed: BTreeSet<String> = ["backup.json", "backup_manifest", "config"]
        .map(String::from)
        .into();
    allowed.extend([base_name, ts_name]);
    assert!(
        entries.is_subset(&allowed) && entries.len() + 1 >= allowed.len(),
        "backup directory holds {entries:?}, expected {allowed:?} (config/ optional)\n{}",
        ctx()
    );
    let manifest = std::fs::read_to_string(dir.join("backup_manifest")).unwrap_or_default();
    let last = manifest.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("\"Manifest-Checksum\""),
        "backup_manifest is not the server's: last line {last:?}"
    );
    json
}

/// The oracle scenario: a populated cluster, a receiver beside unless `include_wal`, one
/// `walden backup <extra>` as `u_trust`, its layout checked, then pg_verifybackup on it.
fn oracle(pg: &Pg, extra: &[&str], expected: &Expected) {
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    let populated = populate(&srv);
    let store = new_store(&srv);
    let backups = BackupsView::new(&store, "main");
    let mut receiver = (!expected.includes_wal).then(|| start_receiver(&srv, &store));
    let args: Vec<&str> = ["--label", LABEL]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let out = run_backup(&srv.conninfo(U_TRUST), &store, &args, T);
    expect_code(&out, 0, "walden backup", &backups);
    let id = backups.only_complete();
    assert!(
        backups.partial().is_empty(),
        "a .partial remains\n{}",
        backups.listing()
    );
    let dir = backups.path(&id);
    let json = check_backup(&srv, &dir, &id, &populated, expected, &out.context);
    assert!(
        out.stdout.contains(&format!("backup {id} complete")),
        "no `backup {id} complete` on stdout\n{}",
        out.context
    );
    for a in json["archives"].as_array().into_iter().flatten() {
        let name = a["name"].as_str().unwrap_or_default();
        assert!(
            out.stdout.lines().any(|l| l.contains(name)),
            "no stdout line for archive {name}\n{}",
            out.context
        );
    }

    // Complete means the WAL is in the store already: no waiting here.
    let wal_from = (!expected.includes_wal).then_some((store.as_path(), "main"));
    let (verdict, data) = verify_stored_backup(&pg.bin_dir, &dir, wal_from, &srv.dir().join("x"));
    verdict.unwrap_or_else(|e| {
        panic!(
            "pg_verifybackup rejects backup {id}:\n{e}\n{}\n{}",
            out.context,
            backups.listing()
        )
    });
    let label = std::fs::read_to_string(data.join("backup_label")).unwrap_or_default();
    assert!(label.contains(&format!("LABEL: {LABEL}")), "{label}");
    if expected.includes_wal {
        assert!(
            data.join("pg_wal").read_dir().is_ok_and(|d| d.count() > 0),
            "--include-wal: base.tar has no WAL in pg_wal/"
        );
    }
    if let Some(r) = receiver.as_mut() {
        r.interrupt();
    }
}

proto_test!(backup_passes_pg_verifybackup, |pg: &Pg| {
    oracle(
        pg,
        &[],
        &Expected {
            compression: "none",
            suffix: "",
            includes_wal: false,
        },
    );
});

proto_test!(zstd_backup_passes_pg_verifybackup, |pg: &Pg| {
    oracle(
        pg,
        &["--compress", "zstd"],
        &Expected {
            compression: "zstd:",
            suffix: ".zst",
            includes_wal: false,
        },
    );
});

proto_test!(
    server_zstd_backup_passes_pg_verifybackup,
    zstd,
    |pg: &Pg| {
        oracle(
            pg,
            &["--compress", "server-zstd:3"],
            &Expected {
                compression: "server-zstd:",
                suffix: ".zst",
                includes_wal: false,
            },
        );
    }
);

proto_test!(backup_with_wal_stands_alone, |pg: &Pg| {
    oracle(
        pg,
        &["--include-wal"],
        &Expected {
            compression: "none",
            suffix: "",
            includes_wal: true,
        },
    );
});

/// Waits until a base backup streams data files (past its first MB) and returns its
/// walsender's pid.
fn wait_backup_streaming(srv: &Server, run: &mut BackupRun) -> u32 {
    let query = "select pid from pg_stat_progress_basebackup \
                 where phase = 'streaming database files' and backup_streamed > 1000000";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = srv.psql(query).lines().find_map(|l| l.parse().ok()) {
            return pid;
        }
        assert!(
            run.is_running() && Instant::now() < deadline,
            "the backup did not stream (running: {})\n{}\n{}",
            run.is_running(),
            run.context(),
            srv.context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

proto_test!(terminated_walsender_fails_the_backup, |pg: &Pg| {
    let srv = pg.start();
    srv.pgbench_init(5);
    let store = new_store(&srv);
    let backups = BackupsView::new(&store, "main");
    let mut run = BackupRun::start(
        &srv.conninfo(U_TRUST),
        &store,
        &["--max-rate", "2M", "--include-wal"],
    );
    let pid = wait_backup_streaming(&srv, &mut run);
    assert_eq!(
        srv.psql(&format!("select pg_terminate_backend({pid})")),
        "t"
    );
    let out = run.wait(T);
    assert!(
        out.code > 0 && !out.stderr.trim().is_empty(),
        "a terminated walsender: expected a failure exit with a message\n{}",
        out.context
    );
    assert!(
        backups.complete().is_empty(),
        "a complete backup after the walsender was terminated\n{}",
        backups.listing()
    );
});

proto_test!(
    killed_backup_is_abandoned_and_the_next_succeeds,
    |pg: &Pg| {
        let srv = pg.start();
        srv.pgbench_init(5);
        let store = new_store(&srv);
        let backups = BackupsView::new(&store, "main");
        let mut receiver = start_receiver(&srv, &store);
        let src = srv.conninfo(U_TRUST);
        let mut run = BackupRun::start(&src, &store, &["--max-rate", "2M"]);
        wait_backup_streaming(&srv, &mut run);
        assert!(
            !backups.partial().is_empty(),
            "no .partial directory while streaming\n{}",
            backups.listing()
        );
        run.kill9();
        assert!(
            backups.complete().is_empty(),
            "kill -9 left a complete-looking backup\n{}",
            backups.listing()
        );
        let out = run_backup(&src, &store, &["--label", LABEL], T);
        expect_code(&out, 0, "the backup after kill -9", &backups);
        let id = backups.only_complete();
        assert!(
            backups.partial().is_empty(),
            "the abandoned .partial is still there\n{}",
            backups.listing()
        );
        let (verdict, _) = verify_stored_backup(
            &pg.bin_dir,
            &backups.path(&id),
            Some((&store, "main")),
            &srv.dir().join("x"),
        );
        verdict.unwrap_or_else(|e| panic!("{e}\n{}", out.context));
        receiver.interrupt();
    }
);

proto_test!(
    flipped_byte_on_the_wire_fails_against_the_manifest,
    |pg: &Pg| {
        let srv = pg.start();
        populate(&srv);
        let store = new_store(&srv);
        let backups = BackupsView::new(&store, "main");
        let proxy = CorruptProxy::start(srv.port());
        proxy.arm(Trigger::FileData {
            archive: "base.tar".into(),
            path_prefix: "base/".into(),
            min_size: 16384,
        });
        let src = format!(
            "host=127.0.0.1 port={} user={U_TRUST} dbname=postgres sslmode=disable",
            proxy.port()
        );
        let out = run_backup(&src, &store, &["--include-wal"], T);
        let flipped = proxy
            .flipped_file()
            .unwrap_or_else(|| panic!("the proxy flipped nothing\n{}", out.context));
        expect_code(&out, 4, "a corrupted stream", &backups);
        let stderr = out.stderr.to_lowercase();
        assert!(
            out.stderr.contains(&flipped.member)
                && (stderr.contains("manifest") || stderr.contains("checksum")),
            "stderr does not name {} and the manifest/checksum ({flipped:?})\n{}",
            flipped.member,
            out.context
        );
        assert!(
            backups.complete().is_empty(),
            "a corrupted backup was completed\n{}",
            backups.listing()
        );
    }
);

proto_test!(idle_server_backs_up_within_20s, |pg: &Pg| {
    let srv = pg.start();
    let store = new_store(&srv);
    let backups = BackupsView::new(&store, "main");
    let mut receiver = start_receiver(&srv, &store);
    let t0 = Instant::now();
    let out = run_backup(&srv.conninfo(U_TRUST), &store, &[], Duration::from_secs(20));
    expect_code(&out, 0, "a backup of an idle server", &backups);
    backups.only_complete();
    println!("PostgreSQL {}: idle backup in {:?}", pg.major, t0.elapsed());
    receiver.interrupt();
});

proto_test!(backup_without_its_wal_fails_after_the_wait, |pg: &Pg| {
    let srv = pg.start();
    let store = new_store(&srv);
    let backups = BackupsView::new(&store, "main");
    let t0 = Instant::now();
    let out = run_backup(&srv.conninfo(U_TRUST), &store, &["--wait-for-wal", "3s"], T);
    expect_code(&out, 4, "no receiver and no --include-wal", &backups);
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "failed before the wait was over"
    );
    assert!(
        out.stderr.contains("WAL"),
        "the message does not say WAL is missing\n{}",
        out.context
    );
    assert!(backups.complete().is_empty(), "{}", backups.listing());
});

/// The config file names walden captures.
const CONFIG_FILES: [&str; 3] = ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"];

proto_test!(config_files_are_captured_when_readable, |pg: &Pg| {
    let srv = pg.start();
    let store = new_store(&srv);
    let backups = BackupsView::new(&store, "main");
    let mut receiver = start_receiver(&srv, &store);

    // A superuser may read them: copies identical to the server's.
    let out = run_backup(&srv.conninfo(U_POSTGRES), &store, &[], T);
    expect_code(&out, 0, "a backup as postgres", &backups);
    let first = backups.only_complete();
    let dir = backups.path(&first);
    let config = &backup_json(&dir)["config_files"];
    assert_eq!(config["captured"], true, "{config}\n{}", out.context);
    assert!(config["reason"].is_null(), "{config}");
    let names: BTreeSet<&str> = config["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(CONFIG_FILES), "{config}");
    for name in CONFIG_FILES {
        let ours = std::fs::read(dir.join("config").join(name))
            .unwrap_or_else(|e| panic!("config/{name}: {e}\n{}", backups.listing()));
        let theirs = std::fs::read(srv.data_dir().join(name)).expect("the server's file");
        assert!(ours == theirs, "config/{name} differs from the server's");
    }

    // u_trust may not: the backup goes on, says why once, and records it.
    let out = run_backup(&srv.conninfo(U_TRUST), &store, &[], T);
    expect_code(&out, 0, "a backup as u_trust", &backups);
    let second: Vec<String> = backups
        .complete()
        .into_iter()
        .filter(|id| *id != first)
        .collect();
    assert_eq!(second.len(), 1, "{}", backups.listing());
    let dir = backups.path(&second[0]);
    let config = &backup_json(&dir)["config_files"];
    assert_eq!(config["captured"], false, "{config}");
    assert!(
        config["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{config}"
    );
    let files = std::fs::read_dir(dir.join("config")).map_or(0, Iterator::count);
    assert_eq!(files, 0, "config/ holds files\n{}", backups.listing());
    let mentions = out
        .stderr
        .lines()
        .filter(|l| l.to_lowercase().contains("config"))
        .count();
    assert_eq!(
        mentions, 1,
        "stderr should say once that the config files were not captured\n{}",
        out.context
    );
    receiver.interrupt();
});

/// Runs `walden <args> --store <store>`; (exit code, stdout + stderr).
fn walden(args: &[&str], store: &Path) -> (i32, String) {
    let out = walden_cmd()
        .args(args)
        .arg("--store")
        .arg(store)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run walden: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

proto_test!(list_and_verify_see_stored_backups, |pg: &Pg| {
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    populate(&srv);
    let store = new_store(&srv);
    let backups = BackupsView::new(&store, "main");
    let mut receiver = start_receiver(&srv, &store);
    let out = run_backup(&srv.conninfo(U_TRUST), &store, &["--label", LABEL], T);
    expect_code(&out, 0, "walden backup", &backups);
    receiver.interrupt();
    let id = backups.only_complete();
    let dir = backups.path(&id);
    let json = backup_json(&dir);

    let (code, text) = walden(&["list", "--json"], &store);
    assert_eq!(code, 0, "walden list --json:\n{text}");
    let listing: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    let entries = listing["backups"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{listing:#}");
    let entry = &entries[0];
    assert_eq!(entry["id"].as_str(), Some(id.as_str()), "{listing:#}");
    assert_eq!(entry["status"], "complete", "{listing:#}");
    assert_eq!(entry["label"], LABEL, "{listing:#}");
    for key in ["start_lsn", "stop_lsn"] {
        assert_eq!(lsn(&entry[key]), lsn(&json[key]), "{key}\n{listing:#}");
    }
    for key in ["start_timeline", "stop_timeline", "start_time", "stop_time"] {
        assert_eq!(entry[key], json[key], "{key}\n{listing:#}");
    }
    assert!(
        entry["bytes"].as_u64().is_some_and(|b| b > 0),
        "{listing:#}"
    );
    assert!(listing["wal"]["timelines"].is_array(), "{listing:#}");
    assert_eq!(listing["wal"]["gaps"], serde_json::json!([]), "{listing:#}");
    // The recoverable window runs from this backup's end to the end of the stored WAL.
    let window = &listing["recoverable"];
    assert_eq!(
        window["from_backup"].as_str(),
        Some(id.as_str()),
        "{listing:#}"
    );
    assert_eq!(window["from_time"], json["stop_time"], "{listing:#}");
    assert!(
        lsn(&window["to_lsn"]) >= lsn(&json["stop_lsn"]),
        "the window must reach the backup's end\n{listing:#}"
    );

    let (code, text) = walden(&["verify"], &store);
    assert_eq!(code, 0, "walden verify on a good store:\n{text}");

    // One byte of one file's data in base.tar: verify names the member.
    let tar_path = dir.join("base.tar");
    let mut tar = std::fs::read(&tar_path).expect("read base.tar");
    let member = flip_file_byte(&mut tar, |m| m.name.starts_with("base/") && m.size >= 8192)
        .expect("a relation file of a page or more in base.tar");
    std::fs::write(&tar_path, tar).expect("write base.tar");
    let (code, text) = walden(&["verify"], &store);
    assert!(
        code == 4 && text.contains(&member.name),
        "walden verify after corrupting {} in base.tar: exit {code}, expected 4 naming it:\n{text}",
        member.name
    );
});

proto_test!(checksum_failure_fails_the_backup, |pg: &Pg| {
    let mut srv = pg.start();
    if srv.psql("SHOW data_checksums") != "on" {
        println!(
            "SKIP: PostgreSQL {} initdb leaves data checksums off",
            srv.major()
        );
        return;
    }
    srv.psql(
        "CREATE TABLE t_bad (id int, v text);\n\
         INSERT INTO t_bad SELECT g, md5(g::text) FROM generate_series(1, 50) g;\n\
         CHECKPOINT;",
    );
    let relation = srv.psql("SELECT pg_relation_filepath('t_bad')");
    srv.stop();
    let file = srv.data_dir().join(&relation);
    let mut bytes = std::fs::read(&file).expect("read the heap file");
    assert!(bytes.len() >= 8192, "one heap page");
    for b in &mut bytes[4000..4016] {
        *b ^= 0xA5;
    }
    std::fs::write(&file, &bytes).expect("write the heap file");
    srv.start();
    let store = new_store(&srv);
    let backups = BackupsView::new(&store, "main");
    let src = srv.conninfo(U_TRUST);

    let out = run_backup(&src, &store, &["--include-wal"], T);
    expect_code(&out, 4, "a backup over a corrupt page", &backups);
    assert!(
        out.stderr.to_lowercase().contains("checksum"),
        "stderr does not mention the checksum failure\n{}",
        out.context
    );
    assert!(
        backups.complete().is_empty(),
        "a backup with a checksum failure was completed\n{}",
        backups.listing()
    );

    let out = run_backup(&src, &store, &["--include-wal", "--no-verify"], T);
    expect_code(&out, 0, "--no-verify over a corrupt page", &backups);
    let id = backups.only_complete();
    assert!(
        backups.path(&id).join("base.tar").is_file(),
        "{}",
        backups.listing()
    );
});

proto_test!(backup_from_a_standby_is_marked_as_such, |pg: &Pg| {
    let primary = pg.start();
    primary.psql("CREATE TABLE on_primary AS SELECT g FROM generate_series(1, 1000) g");
    let standby = primary.start_standby(&[]);
    let store = new_store(&standby);
    let backups = BackupsView::new(&store, "main");
    // A standby cannot switch WAL segments, so the backup carries its own WAL here.
    let out = run_backup(&standby.conninfo(U_TRUST), &store, &["--include-wal"], T);
    expect_code(&out, 0, "a backup of a standby", &backups);
    let id = backups.only_complete();
    let json = backup_json(&backups.path(&id));
    assert_eq!(json["from_standby"], true, "{json:#}");
    assert_eq!(json["includes_wal"], true, "{json:#}");
    // The primary's backup is not.
    let store2 = new_store(&primary);
    let backups2 = BackupsView::new(&store2, "main");
    let out = run_backup(&primary.conninfo(U_TRUST), &store2, &["--include-wal"], T);
    expect_code(&out, 0, "a backup of the primary", &backups2);
    let json = backup_json(&backups2.path(&backups2.only_complete()));
    assert_eq!(json["from_standby"], false, "{json:#}");
});
