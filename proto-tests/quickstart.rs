//! The README's quick start (`scripts/quickstart.sh`) runs end to end with this build's
//! binaries: a temporary server, `walden run`, a backup, a point-in-time restore and the
//! comparison of the restored data. The script checks the data itself and exits non-zero
//! on any mismatch.

use std::process::Command;

use crate::harness::{Pg, installs, log_tail, repo_root};

#[test]
fn quickstart_script_runs_end_to_end() {
    let Some(pg) = installs()
        .iter()
        .find(|p: &&Pg| p.major == 15)
        .or(installs().first())
    else {
        eprintln!("quickstart: no PostgreSQL installed, skipped");
        return;
    };
    let bindir = pg.bin("postgres");
    let bindir = bindir.parent().expect("the server's bin directory");
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/quickstart.sh"))
        .env("PGBIN", bindir)
        .env("WALDEN", env!("CARGO_BIN_EXE_walden"))
        .env("WALDEN_RESTORE", env!("CARGO_BIN_EXE_walden-restore"))
        .output()
        .expect("run scripts/quickstart.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("Success: both databases were restored"),
        "quickstart failed ({}):\n{}\n{}",
        out.status,
        log_tail(&stdout, 40),
        log_tail(&stderr, 40)
    );
}
