//! The `walden-restore wal-fetch` binary as PostgreSQL runs it: exit codes, silence on a
//! miss, one stderr line on a fault, and the detached prefetch worker.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> Vec<u8> {
    fs::read(format!(
        "{}/fixtures/wal/pg15/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A store holding pg15 segments 7 to 9 of timeline 1 (8 compressed) and a pg_wal.
fn store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    let segs = store.join("main/wal/0000000100000000");
    fs::create_dir_all(&segs).unwrap();
    fs::create_dir_all(dir.join("pg_wal")).unwrap();
    fs::write(
        store.join("main/cluster.json"),
        r#"{"cluster":"main","system_identifier":"7711098426243390295","server_version_num":150018,"wal_segment_size":1048576,"created":"2026-11-22T19:30:00Z","format":1}"#,
    )
    .unwrap();
    for name in ["000000010000000000000007", "000000010000000000000009"] {
        fs::write(segs.join(name), fixture(name)).unwrap();
    }
    let seg8 = zstd::encode_all(&fixture("000000010000000000000008")[..], 3).unwrap();
    fs::write(segs.join("000000010000000000000008.zst"), seg8).unwrap();
    store
}

fn wal_fetch(store: &Path, extra: &[&str], file: &str, dest: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walden-restore"))
        .arg("wal-fetch")
        .arg("--from")
        .arg(store)
        .args(extra)
        .arg(file)
        .arg(dest)
        .output()
        .unwrap()
}

#[test]
fn exit_codes_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let dest = dir.path().join("pg_wal/RECOVERYXLOG");

    let out = wal_fetch(&store, &[], "000000010000000000000008", &dest);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert!(fs::read(&dest).unwrap() == fixture("000000010000000000000008"));

    for absent in ["00000001000000000000000A", "00000002.history", "x.backup"] {
        let out = wal_fetch(&store, &["--cluster", "main"], absent, &dest);
        assert_eq!(out.status.code(), Some(1), "{absent}: {out:?}");
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    }

    let out = wal_fetch(
        &dir.path().join("nowhere"),
        &[],
        "000000010000000000000008",
        &dest,
    );
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("has no cluster \"main\""), "{stderr}");

    // A damaged segment stops recovery.
    let seg9 = store.join("main/wal/0000000100000000/000000010000000000000009");
    fs::write(&seg9, &fixture("000000010000000000000009")[..4096]).unwrap();
    let out = wal_fetch(&store, &[], "000000010000000000000009", &dest);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(out.stdout.is_empty());
    let names: Vec<_> = fs::read_dir(dir.path().join("pg_wal")).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");

    // A bad restore_command (an option twice, an unknown one, an argument missing) must stop
    // recovery too: clap's usual exit code 2 would be "not found" to the server.
    for extra in [
        &["--spool", "/a", "--spool", "/b"][..],
        &["--no-such-option"],
        &["--cluster"],
    ] {
        let out = wal_fetch(&store, extra, "000000010000000000000008", &dest);
        assert_eq!(out.status.code(), Some(255), "{extra:?}: {out:?}");
    }
    // Help is still help.
    let out = Command::new(env!("CARGO_BIN_EXE_walden-restore"))
        .args(["wal-fetch", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn prefetch_runs_in_the_background_and_feeds_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let dest = dir.path().join("pg_wal/RECOVERYXLOG");
    let spool = dir.path().join("spool");
    let spool_arg = spool.to_str().unwrap();
    let args = ["--prefetch", "2", "--spool", spool_arg];

    let out = wal_fetch(&store, &args, "000000010000000000000007", &dest);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    let spooled = ["000000010000000000000008", "000000010000000000000009"];
    let started = Instant::now();
    while !spooled.iter().all(|n| spool.join(n).exists()) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the spool was not filled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Remove 8 from the store: the next call can only have it from the spool.
    fs::remove_file(store.join("main/wal/0000000100000000/000000010000000000000008.zst")).unwrap();
    let out = wal_fetch(&store, &args, "000000010000000000000008", &dest);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(fs::read(&dest).unwrap() == fixture("000000010000000000000008"));
    assert!(!spool.join("000000010000000000000008").exists(), "consumed");
}
