//! `walden check-config` as a user runs it: no server needed. Exit 0 and a summary for a
//! valid file (warnings on standard error), 2 and one `FILE:LINE:` line for an invalid one.

use crate::harness::walden_cmd;

#[test]
fn check_config_valid_invalid_and_missing() {
    let dir = tempfile::tempdir().expect("tempdir");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/walden.toml.example");
    let out = walden_cmd()
        .args(["check-config", "--config", example])
        .output()
        .expect("run walden");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("valid, 2 clusters"), "{stdout}");
    assert!(stdout.contains("cluster reporting\n"), "{stdout}");
    assert!(
        stdout.contains("backups: daily at 03:30 local time"),
        "{stdout}"
    );

    let warn = dir.path().join("warn.toml");
    std::fs::write(
        &warn,
        "store = \"store\"\n[cluster.main]\nsource = \"host=db1 password=hunter2\"\n\
         backup.every = \"1h\"\n",
    )
    .expect("write");
    let out = walden_cmd()
        .args(["check-config", "--config"])
        .arg(&warn)
        .output()
        .expect("run walden");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("store: {}\n", dir.path().join("store").display())),
        "relative to the file: {stdout}"
    );
    assert!(
        stderr.contains("warn.toml:3: cluster \"main\": source holds a password"),
        "{stderr}"
    );
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "store = \"/s\"\n[cluster.main]\nsource = \"host=db1\"\nbackup.evry = \"1h\"\n",
    )
    .expect("write");
    let out = walden_cmd()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("run walden");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    let want = format!("walden: error: {}:4: unknown key `evry`", bad.display());
    assert!(stderr.starts_with(&want), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let out = walden_cmd()
        .args(["check-config", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .expect("run walden");
    assert_eq!(out.status.code(), Some(2));
}
