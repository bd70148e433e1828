//! Point-in-time recovery for tests: `walden-restore` runs (the copy the `postgres` user can
//! execute, so the `restore_command` it writes works for the restored server), restored
//! servers started in place and waited for until recovery ends, and a marker workload: one row
//! per step in two databases, with each step's xid, exact commit time, the LSN after it and a
//! named restore point, so a restore to any of them has an exact expected content.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use walden::wal::Lsn;

use crate::harness::{Pg, Server, reachable_walden_restore, wait_for};

/// The second database the markers are written to (before the same step in `postgres`).
pub const OTHER_DB: &str = "other";

/// How long a restored server may take to finish recovery.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// `walden-restore` (the copy the `postgres` user can reach), ready for arguments.
pub fn walden_restore() -> Command {
    Command::new(reachable_walden_restore())
}

/// What one `walden-restore` run did.
#[derive(Debug)]
pub struct RestoreRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl RestoreRun {
    fn from(args: Vec<String>, out: Output) -> RestoreRun {
        RestoreRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args,
        }
    }

    /// The command line and its output, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "walden-restore {}\nexit {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// Panics with the context unless it exited 0.
    pub fn assert_ok(&self) -> &RestoreRun {
        assert_eq!(self.code, 0, "restore failed\n{}", self.context());
        self
    }
}

/// Runs `walden-restore restore --from <store> --pgdata <pgdata> <extra...>`.
pub fn run_restore(store: &Path, pgdata: &Path, extra: &[&str]) -> RestoreRun {
    let mut args: Vec<String> = vec!["restore".into(), "--from".into()];
    args.push(store.display().to_string());
    args.extend(["--pgdata".into(), pgdata.display().to_string()]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let out = walden_restore()
        .args(&args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run walden-restore: {e}"));
    RestoreRun::from(args, out)
}

/// Runs `walden-restore wal-fetch --from <store> <file> <dest>`.
pub fn run_wal_fetch(store: &Path, file: &str, dest: &Path) -> RestoreRun {
    let args: Vec<String> = vec![
        "wal-fetch".into(),
        "--from".into(),
        store.display().to_string(),
        file.into(),
        dest.display().to_string(),
    ];
    let out = walden_restore()
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run walden-restore: {e}"));
    RestoreRun::from(args, out)
}

/// A restore into a new test directory and the server started on it.
pub struct Restored {
    pub run: RestoreRun,
    pub server: Server,
}

/// Restores `store` into a new test directory with `extra` arguments, starts the server
/// there (with `extra_conf`) and, unless it is a standby, waits until recovery has ended.
pub fn restore_and_start(pg: &Pg, store: &Path, extra: &[&str], extra_conf: &[&str]) -> Restored {
    let dir = pg.new_server_dir();
    let run = run_restore(store, &dir.join("data"), extra);
    run.assert_ok();
    let mut server = pg.restored(
        dir.keep(),
        extra_conf.iter().map(|l| (*l).to_owned()).collect(),
    );
    if let Err(e) = server.try_start() {
        panic!("the restored server did not start: {e}\n{}", run.context());
    }
    if !extra.contains(&"--standby") {
        wait_for(
            "the restored server to finish recovery",
            RECOVERY_TIMEOUT,
            || server.try_psql("select pg_is_in_recovery()").as_deref() == Ok("f"),
            || format!("{}\n{}", run.context(), server.context()),
        );
    }
    Restored { run, server }
}

/// A restore that must be refused before anything is written: returns the run.
pub fn restore_refused(store: &Path, pgdata: &Path, extra: &[&str]) -> RestoreRun {
    let run = run_restore(store, pgdata, extra);
    assert_ne!(
        run.code,
        0,
        "restore should have been refused\n{}",
        run.context()
    );
    run
}

/// One step of the marker workload.
#[derive(Debug, Clone)]
pub struct Mark {
    /// The xid of the step's transaction in `postgres`.
    pub xid: String,
    /// Its exact commit time (`track_commit_timestamp`), `YYYY-MM-DD HH:MM:SS.ffffff+00`.
    pub commit_time: String,
    /// The insert position right after the commit.
    pub lsn_after: Lsn,
    /// A restore point made right after the step: `step_<n>`.
    pub restore_point: String,
}

/// Creates database [`OTHER_DB`] and the `marks` table in it and in `postgres`. The server
/// needs `track_commit_timestamp = on`.
pub fn setup_marks(srv: &Server) {
    srv.psql(&format!("CREATE DATABASE {OTHER_DB}"));
    srv.psql("CREATE TABLE marks (step int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    other(srv, "CREATE TABLE marks (step int PRIMARY KEY)");
}

fn other(srv: &Server, sql: &str) -> String {
    let conninfo = srv
        .conninfo_socket("postgres")
        .replace("dbname=postgres", "dbname=other");
    srv.psql_conn(&conninfo, sql)
        .unwrap_or_else(|e| panic!("psql on {OTHER_DB}: {e}\nSQL: {sql}"))
}

/// Step `step`: a row in [`OTHER_DB`], then one in `postgres` (whose xid, commit time and
/// following LSN are recorded), then a restore point.
pub fn mark(srv: &Server, step: u32) -> Mark {
    other(srv, &format!("INSERT INTO marks VALUES ({step})"));
    let lsn_before = srv.insert_lsn();
    let xid = srv.psql(&format!(
        "BEGIN;\nINSERT INTO marks (step) VALUES ({step});\nSELECT pg_current_xact_id();\nCOMMIT;"
    ));
    let lsn_after = srv.insert_lsn();
    let commit_time = commit_time_in_wal(srv, lsn_before, lsn_after, &xid);
    let restore_point = format!("step_{step}");
    srv.psql(&format!(
        "SELECT pg_create_restore_point('{restore_point}')"
    ));
    Mark {
        xid,
        commit_time,
        lsn_after,
        restore_point,
    }
}

/// The commit time of `xid` as its commit record holds it (what recovery compares a time
/// target with), read by this version's `pg_waldump` from the server's `pg_wal` between
/// `from` and `to`, as `YYYY-MM-DD HH:MM:SS.ffffff+00`. `pg_xact_commit_timestamp` is not
/// that: on 18 it was once a microsecond earlier than the record's.
fn commit_time_in_wal(srv: &Server, from: Lsn, to: Lsn, xid: &str) -> String {
    let tli = srv.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)");
    let tli = u32::from_str_radix(&tli, 16)
        .unwrap_or_else(|e| panic!("bad timeline {tli:?} from the server: {e}"));
    let out = Command::new(srv.bin("pg_waldump"))
        .env("TZ", "UTC")
        .arg("-p")
        .arg(srv.data_dir().join("pg_wal"))
        .args(["-t", &tli.to_string(), "-r", "Transaction"])
        .args(["-s", &from.to_string(), "-e", &to.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run pg_waldump: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter(|line| {
            let tx = line
                .split_once("tx:")
                .and_then(|(_, r)| r.split(',').next());
            tx.map(str::trim) == Some(xid)
        })
        .find_map(|line| line.split_once("desc: COMMIT ").map(|(_, rest)| rest))
        .and_then(|rest| rest.split(';').next()?.trim().strip_suffix(" UTC"))
        .map(|time| format!("{time}+00"))
        .unwrap_or_else(|| {
            panic!(
                "pg_waldump shows no commit of xid {xid} between {from} and {to} ({}):\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The steps in `marks` of `postgres` and of [`OTHER_DB`], in order.
pub fn steps(srv: &Server) -> (Vec<u32>, Vec<u32>) {
    let parse = |text: String| -> Vec<u32> {
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.parse().unwrap_or_else(|e| panic!("step {l:?}: {e}")))
            .collect()
    };
    let sql = "SELECT step FROM marks ORDER BY step";
    (parse(srv.psql(sql)), parse(other(srv, sql)))
}

/// `1..=n` as a vector.
pub fn upto(n: u32) -> Vec<u32> {
    (1..=n).collect()
}

/// Waits until `walden receive` (application name `walden`) has reported `lsn` flushed, i.e.
/// fsynced in the store.
pub fn wait_flushed(srv: &Server, lsn: Lsn, context: impl Fn() -> String) {
    wait_for(
        &format!("walden to report {lsn} flushed"),
        Duration::from_secs(60),
        || {
            srv.psql(&format!(
                "select count(*) from pg_stat_replication \
                 where application_name = 'walden' and flush_lsn >= '{lsn}'"
            )) == "1"
        },
        context,
    );
}

/// A store directory in `srv`'s test directory.
pub fn new_store(srv: &Server) -> PathBuf {
    let dir = srv.dir().join("store");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
