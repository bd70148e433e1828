//! `walden run` and `walden status` against several servers at once. These use two (or
//! three) installed versions together, so they are ordinary tests rather than `proto_test!`:
//! each picks versions from `harness::installs()` and skips (failing under CI) when fewer than
//! two are installed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Pg, ServerOptions, U_TRUST, in_ci, installs, is_root};
use crate::support::daemon::{
    ClusterSpec, Daemon, assert_verifies, backup_ids, cluster_report, lsn, walden_status,
    write_config,
};

/// Two different installed versions, or `None` (with a note) when there are not two.
fn two_versions(test: &str) -> Option<(&'static Pg, &'static Pg)> {
    let all = installs();
    match (all.first(), all.get(1)) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => {
            assert!(!in_ci(), "{test} needs two PostgreSQL versions installed");
            eprintln!("{test}: skipped, fewer than two PostgreSQL versions are installed");
            None
        }
    }
}

const STREAMING: Duration = Duration::from_secs(30);

fn taken(v: &Value) -> u64 {
    v["backup"]["taken"].as_u64().unwrap_or(0)
}

/// The pids of the WAL senders serving the server's replication connections.
fn sender_pids(srv: &crate::harness::Server) -> String {
    srv.psql("select string_agg(pid::text, ',' order by pid) from pg_stat_replication")
}

#[test]
fn daemon_two_versions_schedules_retention_kill_and_recover() {
    let Some((pg_a, pg_b)) = two_versions("daemon_two_versions") else {
        return;
    };
    let a = pg_a.start();
    let mut b = pg_b.start();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let config = dir.path().join("walden.toml");
    let cluster = |name: &str, srv: &crate::harness::Server| {
        ClusterSpec::new(
            name,
            srv.conninfo(U_TRUST),
            &[
                "status_interval = \"1s\"",
                "backup.every = \"12s\"",
                "backup.checkpoint = \"fast\"",
                "retention.keep_backups = 1",
            ],
        )
    };
    write_config(
        &config,
        &store,
        &[
            "min_free_space = \"0\"",
            "[status]",
            "receiver_down_after = \"3s\"",
        ],
        &[cluster("a", &a), cluster("b", &b)],
    );
    let mut d = Daemon::start(&config, &store);
    d.wait_streaming("a", STREAMING);
    d.wait_streaming("b", STREAMING);

    // The schedule is observed: a first backup at once, the next ones every 12 s; retention
    // keeps one.
    for name in ["a", "b"] {
        d.wait_status(name, "two backups", Duration::from_secs(90), |v| {
            taken(v) >= 2 && !v["backup"]["last_prune"].is_null()
        });
        let ids = backup_ids(&store, name);
        assert_eq!(
            ids.len(),
            1,
            "{name}: keep_backups = 1 keeps one: {ids:?}\n{}",
            d.context()
        );
    }

    // Status against the servers.
    a.psql("create table daemon_t as select g from generate_series(1, 10000) g");
    let written = a.current_lsn().0;
    d.wait_status("a", "the new rows flushed", STREAMING, |v| {
        lsn(&v["receiver"]["flushed_lsn"]).is_some_and(|f| f >= written)
    });
    let config_arg = config.display().to_string();
    let (code, report) = walden_status(&["--config", &config_arg]);
    assert_eq!(code, 0, "both healthy: {report:#}\n{}", d.context());
    assert_eq!(report["healthy"], true);
    let ra = cluster_report(&report, "a");
    assert!(
        lsn(&ra["receiver"]["flushed_lsn"]).is_some_and(|f| f >= written),
        "{ra:#}"
    );
    assert_eq!(ra["receiver"]["state"], "streaming");
    assert_eq!(ra["slot"]["name"], "walden");
    assert_eq!(ra["slot"]["exists"], true, "{ra:#}");
    assert_eq!(ra["slot"]["active"], true, "{ra:#}");
    assert!(ra["slot"]["retained_bytes"].is_u64(), "{ra:#}");
    let newest = backup_ids(&store, "a").pop().expect("a backup");
    // A backup may have completed since: compare with the store at the same moment.
    let reported = ra["last_backup"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reported == newest || backup_ids(&store, "a").contains(&reported),
        "last_backup {reported} vs store {newest}"
    );
    assert!(ra["recoverable"]["from_backup"].is_string(), "{ra:#}");
    assert!(
        ra["store"]["bytes"].as_u64().is_some_and(|b| b > 0),
        "{ra:#}"
    );
    assert!(ra["store"]["free_bytes"].is_u64(), "{ra:#}");

    // One server crashes: the other keeps streaming and backing up; the dead one's status
    // is unhealthy with its error.
    b.kill9();
    let before = taken(&d.status_file("a"));
    d.wait_status(
        "a",
        "another backup while b is down",
        Duration::from_secs(60),
        |v| taken(v) > before,
    );
    d.wait_status("b", "b's receiver failing", STREAMING, |v| {
        v["receiver"]["state"] != "streaming" && !v["receiver"]["last_error"].is_null()
    });
    std::thread::sleep(Duration::from_secs(4));
    let store_arg = store.display().to_string();
    let (code, report) = walden_status(&["--store", &store_arg]);
    assert_eq!(code, 6, "b is unhealthy: {report:#}");
    assert_eq!(cluster_report(&report, "a")["healthy"], true, "{report:#}");
    let rb = cluster_report(&report, "b");
    assert_eq!(rb["healthy"], false);
    let problems = rb["problems"].to_string();
    assert!(problems.contains("not streaming"), "{problems}");
    assert!(rb["receiver"]["last_error"].is_string(), "{rb:#}");
    a.psql("insert into daemon_t select g from generate_series(1, 1000) g");
    let written = a.current_lsn().0;
    d.wait_status("a", "a still streams", STREAMING, |v| {
        lsn(&v["receiver"]["flushed_lsn"]).is_some_and(|f| f >= written)
    });

    // The server comes back: the receiver recovers on its own.
    b.start();
    d.wait_streaming("b", Duration::from_secs(60));
    let (code, report) = walden_status(&["--store", &store_arg]);
    assert_eq!(code, 0, "recovered: {report:#}\n{}", d.context());

    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)), 0, "{}", d.context());
    for name in ["a", "b"] {
        assert_verifies(&store, name);
    }
}

#[test]
fn daemon_sighup_adds_and_removes_clusters_and_sigterm_stops_cleanly() {
    let Some((pg_a, pg_b)) = two_versions("daemon_sighup") else {
        return;
    };
    let a = pg_a.start();
    let b = pg_b.start();
    let c = pg_a.start();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let config = dir.path().join("walden.toml");
    let spec = |name: &str, srv: &crate::harness::Server| {
        ClusterSpec::new(name, srv.conninfo(U_TRUST), &["status_interval = \"1s\""])
    };
    let top = ["min_free_space = \"0\""];
    write_config(&config, &store, &top, &[spec("a", &a), spec("b", &b)]);
    let mut d = Daemon::start(&config, &store);
    d.wait_streaming("a", STREAMING);
    d.wait_streaming("b", STREAMING);
    let (pid_a, pid_b) = (sender_pids(&a), sender_pids(&b));
    assert!(!pid_a.is_empty() && !pid_b.is_empty());

    // A third cluster: it starts; the others keep their connections.
    write_config(
        &config,
        &store,
        &top,
        &[spec("a", &a), spec("b", &b), spec("c", &c)],
    );
    d.signal("HUP");
    d.wait_streaming("c", STREAMING);
    assert_eq!(sender_pids(&a), pid_a, "a was not restarted");
    assert_eq!(sender_pids(&b), pid_b, "b was not restarted");

    // A broken file is refused and the running configuration kept.
    std::fs::write(&config, "store = \n").expect("write");
    d.signal("HUP");
    crate::harness::wait_for(
        "the reload refused",
        Duration::from_secs(10),
        || d.output().contains("keeping the running configuration"),
        || d.context(),
    );
    assert!(d.is_running());

    // b removed, a changed (restarted), c untouched.
    let changed = ClusterSpec::new("a", a.conninfo(U_TRUST), &["status_interval = \"2s\""]);
    write_config(&config, &store, &top, &[changed, spec("c", &c)]);
    let pid_c = sender_pids(&c);
    d.signal("HUP");
    d.wait_status("b", "b stopped", STREAMING, |v| v["stopped"] == true);
    crate::harness::wait_for(
        "a reconnected with a new WAL sender",
        STREAMING,
        || {
            let now = sender_pids(&a);
            !now.is_empty() && now != pid_a
        },
        || d.context(),
    );
    assert_eq!(sender_pids(&b), "", "b's receiver is gone");
    assert_eq!(sender_pids(&c), pid_c, "c was not restarted");

    // SIGTERM: exit 0, every status file says stopped, the store verifies clean.
    a.psql("create table t as select g from generate_series(1, 5000) g");
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)), 0, "{}", d.context());
    for name in ["a", "c"] {
        let v = d.status_file(name);
        assert_eq!(v["stopped"], true, "{name}: {v:#}");
        assert_eq!(v["receiver"]["state"], "stopped", "{name}: {v:#}");
        assert_verifies(&store, name);
    }
    assert_verifies(&store, "b");
    let store_arg = store.display().to_string();
    let (code, report) = walden_status(&["--store", &store_arg, "--cluster", "a"]);
    assert_eq!(
        report["clusters"][0]["receiver"]["state"],
        "daemon-not-running"
    );
    assert_eq!(
        code, 0,
        "stopped a moment ago: not yet unhealthy: {report:#}"
    );
}

/// Mounts a tmpfs of `size` at `dir`; false (with a note) where mounting is not permitted.
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    if !is_root() {
        eprintln!("disk pressure test skipped: mounting a tmpfs needs root");
        return false;
    }
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("disk pressure test skipped: mount -t tmpfs is not permitted here");
    }
    ok
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[test]
fn daemon_disk_full_stops_writing_and_resumes_without_a_gap() {
    let Some(pg) = installs().first() else {
        assert!(!in_ci(), "no PostgreSQL installed");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    std::fs::create_dir(&store).expect("mkdir");
    if !mount_tmpfs(&store, "40m") {
        return;
    }
    let _unmount = Unmount(&store);
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    let config = dir.path().join("walden.toml");
    write_config(
        &config,
        &store,
        &[
            "min_free_space = \"20MB\"",
            "[status]",
            "receiver_down_after = \"2s\"",
        ],
        &[ClusterSpec::new(
            "main",
            srv.conninfo(U_TRUST),
            &["status_interval = \"1s\""],
        )],
    );
    let mut d = Daemon::start(&config, &store);
    d.wait_streaming("main", STREAMING);
    srv.generate_wal(2 << 20);
    let store_arg = store.display().to_string();
    let (code, report) = walden_status(&["--store", &store_arg]);
    assert_eq!(code, 0, "{report:#}");

    // Fill the filesystem to within half a segment: WAL stops, small files still fit.
    let free = walden::store::free_space(&store).expect("free space");
    let filler = store.join("filler");
    let blocks = free.saturating_sub(512 << 10) / (64 << 10);
    let out = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "status=none"])
        .arg(format!("of={}", filler.display()))
        .arg(format!("count={blocks}"))
        .output()
        .expect("run dd");
    if !out.status.success() {
        // The receiver took space meanwhile and dd filled the rest: give half a segment
        // back so that small files (status.json) still fit.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("No space left"), "dd failed: {stderr}");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .expect("open the filler");
        let len = f.metadata().expect("filler size").len();
        f.set_len(len.saturating_sub(512 << 10))
            .expect("shrink the filler");
    }
    let left = walden::store::free_space(&store).expect("free space");
    assert!(left < (1 << 20), "{left} bytes still free");
    srv.generate_wal(3 << 20);
    let v = d.wait_status(
        "main",
        "the disk-full error",
        Duration::from_secs(60),
        |v| {
            v["receiver"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("disk full"))
        },
    );
    assert!(v["disk"]["low"] == true, "{v:#}");
    std::thread::sleep(Duration::from_secs(3));
    let (code, report) = walden_status(&["--store", &store_arg]);
    assert_eq!(code, 6, "unhealthy: {report:#}");
    let problems = cluster_report(&report, "main")["problems"].to_string();
    assert!(problems.contains("below min_free_space"), "{problems}");
    assert!(
        d.output().contains("below min_free_space"),
        "{}",
        d.context()
    );

    // Space returns: streaming resumes where it stopped.
    std::fs::remove_file(&filler).expect("remove filler");
    let target = srv.current_lsn().0;
    d.wait_status(
        "main",
        "streaming past the full disk",
        Duration::from_secs(90),
        |v| {
            v["receiver"]["state"] == "streaming"
                && lsn(&v["receiver"]["flushed_lsn"]).is_some_and(|f| f >= target)
        },
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)), 0, "{}", d.context());
    assert_verifies(&store, "main");
    let out = crate::harness::run_ok(crate::harness::walden_cmd().args([
        "list",
        "--json",
        "--store",
        &store_arg,
        "--cluster",
        "main",
    ]));
    let listing: Value = serde_json::from_str(&out).expect("list json");
    for t in listing["wal"]["timelines"].as_array().expect("timelines") {
        assert_eq!(
            t["missing"],
            Value::Array(Vec::new()),
            "no gap: {listing:#}"
        );
    }
    assert_eq!(listing["wal"]["gaps"], Value::Array(Vec::new()));
}

/// `GET path` over plain HTTP/1.1 with an optional bearer token: (status code, body).
fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

crate::harness::proto_test!(daemon_serves_health_status_metrics_and_wal, |pg: &Pg| {
    let srv = pg.start();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let config = dir.path().join("walden.toml");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("write the token");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    write_config(
        &config,
        &store,
        &[
            "min_free_space = \"0\"",
            "[http]",
            &format!("listen = \"{addr}\""),
            &format!("token_file = \"{}\"", token.display()),
        ],
        &[ClusterSpec::new(
            "main",
            srv.conninfo(U_TRUST),
            &[
                "status_interval = \"1s\"",
                "backup.every = \"1h\"",
                "backup.checkpoint = \"fast\"",
            ],
        )],
    );
    let mut d = Daemon::start(&config, &store);
    d.wait_streaming("main", STREAMING);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while backup_ids(&store, "main").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no first backup\n{}",
            d.context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let switched = srv.switch_wal();

    let (code, body) = http_get(&addr, "/status", None);
    assert_eq!(
        code,
        401,
        "/status without a token: {body}\n{}",
        d.context()
    );
    let (code, body) = http_get(&addr, "/status", Some("s3cret-token"));
    assert_eq!(code, 200, "{body}\n{}", d.context());
    let status: Value = serde_json::from_str(&body).expect("/status is JSON");
    let main = cluster_report(&status, "main");
    assert_eq!(main["receiver"]["state"], "streaming", "{status}");
    assert_eq!(
        main["slot"]["exists"], true,
        "the slot is asked on the primary: {status}"
    );
    let (code, metrics) = http_get(&addr, "/metrics", Some("s3cret-token"));
    assert_eq!(code, 200, "{metrics}");
    for line in [
        "walden_receiver_streaming{cluster=\"main\"} 1",
        "walden_backups{cluster=\"main\"} 1",
        "# TYPE walden_received_bytes_total counter",
        "walden_slot_retained_bytes{cluster=\"main\"}",
        "walden_receiver_lag_bytes{cluster=\"main\"}",
        "walden_last_backup_timestamp_seconds{cluster=\"main\"}",
    ] {
        assert!(
            metrics.contains(line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
    let (code, body) = http_get(&addr, "/healthz", None);
    assert!(
        code == 200 && body.trim() == "ok",
        "/healthz: {code} {body}\n{status}"
    );

    // The daemon serves the store to walden-restore on another machine.
    let wait = std::time::Instant::now() + Duration::from_secs(30);
    let dest = dir.path().join("fetched");
    loop {
        let out = crate::support::restore::walden_restore()
            .args([
                "wal-fetch",
                "--from",
                &format!("http://{addr}"),
                "--token-file",
            ])
            .arg(&token)
            .arg(&switched.segment)
            .arg(&dest)
            .output()
            .expect("run wal-fetch");
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < wait,
            "wal-fetch over HTTP of {}: {}",
            switched.segment,
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let size = std::fs::metadata(&dest).expect("fetched").len();
    assert_eq!(size, srv.wal_seg_size().bytes());

    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.context());
});
