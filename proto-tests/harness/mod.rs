//! Test harness for the proto-tests: finds the installed PostgreSQL versions (15 from Debian,
//! 16 and 18 unpacked by `scripts/install-postgres.sh`), runs each scenario once per version
//! (`proto_test!`), and starts throw-away servers copied from a per-process `initdb` template,
//! with the test roles, `pg_hba.conf` and (where the build has it) TLS already set up.
//!
//! Everything runs as the `postgres` user when the tests run as root. Per-test directories are
//! `<base>/walden-<pid>-<seq>-<test>`, where `<base>` is `$WALDEN_TEST_TMPDIR` or `/tmp` (a tmpfs
//! such as `/dev/shm` is several times faster; `scripts/test.sh` picks it when it can). They are
//! removed when the test passes and kept (with the server log tail printed) when it panics.
//! Templates and TLS files live in `<base>/walden-tpl-<pid>`, removed by the next test process
//! after this one exits (which also kills any postmaster a killed test process left behind).
//!
//! Beyond single servers: hot standbys and promotion (`standby`), pgbench and SQL write load
//! (`load`), the version's own pg_receivewal as a reference receiver (`receivewal`), and WAL
//! positions and `pg_switch_wal()` (`walpos`).

mod install;
mod load;
mod receivewal;
mod server;
mod standby;
mod tls;
mod walpos;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub use install::{Pg, installs, missing_versions, run_scenario};
pub use receivewal::ReceiveWal;
pub use server::{Server, ServerOptions};
pub use tls::{TlsFiles, tls_files};

/// Every major version the suite expects; under `CI` all of them must be installed.
pub const MAJORS: [u32; 3] = [15, 16, 18];

/// Superuser, trusted everywhere; the harness administers servers with it.
pub const U_POSTGRES: &str = "postgres";
/// REPLICATION role authenticated by `trust`.
pub const U_TRUST: &str = "u_trust";
/// REPLICATION role authenticated by `password` (cleartext); password [`PW_PASSWORD`].
pub const U_PASSWORD: &str = "u_password";
/// REPLICATION role authenticated by `md5`, password stored as an md5 hash; password [`PW_MD5`].
pub const U_MD5: &str = "u_md5";
/// REPLICATION role authenticated by `scram-sha-256`; password [`PW_SCRAM`].
pub const U_SCRAM: &str = "u_scram";
/// REPLICATION role authenticated only by a client certificate (`hostssl ... cert`, CN=u_cert);
/// the role always exists, its `pg_hba.conf` entries only on TLS builds.
pub const U_CERT: &str = "u_cert";
/// Role without the REPLICATION attribute, authenticated by `trust`.
pub const U_NOREPL: &str = "u_norepl";
/// REPLICATION role without any `pg_hba.conf` entry.
pub const U_NOHBA: &str = "u_nohba";

/// Password of [`U_PASSWORD`].
pub const PW_PASSWORD: &str = "clear-Pa55word";
/// Password of [`U_MD5`].
pub const PW_MD5: &str = "md5-Pa55word";
/// Password of [`U_SCRAM`].
pub const PW_SCRAM: &str = "scram-Pa55word";
/// Password of [`U_NOHBA`] (it never gets far enough to use it).
pub const PW_NOHBA: &str = "nohba-Pa55word";

/// The password of a test role, `None` for roles that authenticate without one.
pub fn role_password(user: &str) -> Option<&'static str> {
    match user {
        U_PASSWORD => Some(PW_PASSWORD),
        U_MD5 => Some(PW_MD5),
        U_SCRAM => Some(PW_SCRAM),
        U_NOHBA => Some(PW_NOHBA),
        _ => None,
    }
}

/// Our own `walden` binary, ready for arguments.
pub fn walden_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_walden"))
}

/// Our own `walden-restore` binary, ready for arguments.
pub fn walden_restore_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_walden-restore"))
}

/// A copy of our `walden-restore` binary that the `postgres` user can execute (the build's
/// own may sit where that user cannot enter): `<process dir>/bin/walden-restore`, made once.
/// Restores run this copy, so the `restore_command` they write names it.
pub fn reachable_walden_restore() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = server::process_dir().join("bin");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join("walden-restore");
        std::fs::copy(env!("CARGO_BIN_EXE_walden-restore"), &path)
            .unwrap_or_else(|e| panic!("copy walden-restore to {}: {e}", path.display()));
        run_ok(Command::new("chmod").arg("0755").arg(&dir).arg(&path));
        path
    })
    .clone()
}

/// A command that runs `program` as the `postgres` user (through `runuser` when we are root,
/// directly otherwise). Add arguments, environment and I/O as with any `Command`.
pub fn postgres_cmd(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Like [`postgres_cmd`], but the command itself (not `runuser`) is the child, so that
/// signals sent to the child's pid reach the program: when root, the child switches to the
/// `postgres` user (uid, gid, no supplementary groups) before it runs `program`. For
/// background programs the tests stop with a signal (pg_receivewal, pgbench).
pub fn postgres_direct_cmd(program: impl AsRef<OsStr>) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(program);
    if is_root() {
        let (uid, gid) = postgres_ids();
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    cmd
}

/// The `postgres` user's uid and gid, from `/etc/passwd`.
fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        passwd
            .lines()
            .find_map(|l| {
                let fields: Vec<&str> = l.split(':').collect();
                (fields.first() == Some(&"postgres")).then(|| {
                    let id = |i: usize| fields.get(i).and_then(|f| f.parse().ok());
                    id(2).zip(id(3))
                })?
            })
            .expect("/etc/passwd has a postgres user with numeric uid and gid")
    })
}

/// Sends `signal` (`"INT"`, `"TERM"`, `"KILL"`, ...) to `pid`, ignoring a process that is gone.
pub fn send_signal(pid: u32, signal: &str) {
    server::kill(pid, signal);
}

/// The last `lines` lines of `text` (for failure messages).
pub fn log_tail(text: &str, lines: usize) -> String {
    server::tail(text, lines)
}

/// Polls `cond` every 50 ms until it is true; panics after `timeout` with `what` and the
/// output of `context` (e.g. logs) so that the failure explains itself.
pub fn wait_for(
    what: &str,
    timeout: std::time::Duration,
    mut cond: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether this process runs as root (effective uid 0), read from `/proc/self/status`.
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Whether the `CI` environment variable asks for the strict mode (all versions required).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The repository root (where `Cargo.toml` and `.pg/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`, panicking with its stderr unless it exits 0; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Declares one scenario as one test per PostgreSQL version: `name::pg15`, `name::pg16`,
/// `name::pg18`. The closure gets the `&Pg` install. A missing version is skipped with a note,
/// or fails the test when `CI` is set.
///
/// ```ignore
/// proto_test!(smoke_select, |pg: &Pg| { let srv = pg.start(); srv.psql("select 1"); });
/// proto_test!(needs_tls, tls, |pg: &Pg| { ... });   // skipped on builds without TLS
/// proto_test!(needs_zstd, zstd, |pg: &Pg| { ... }); // skipped on builds without zstd
/// ```
macro_rules! proto_test {
    ($name:ident, tls, $body:expr) => {
        $crate::harness::proto_test!(@versions $name, $crate::harness::Needs::Tls, $body);
    };
    ($name:ident, zstd, $body:expr) => {
        $crate::harness::proto_test!(@versions $name, $crate::harness::Needs::Zstd, $body);
    };
    ($name:ident, $body:expr) => {
        $crate::harness::proto_test!(@versions $name, $crate::harness::Needs::Nothing, $body);
    };
    (@versions $name:ident, $needs:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn pg15() {
                $crate::harness::run_scenario(15, $needs, $body);
            }
            #[test]
            fn pg16() {
                $crate::harness::run_scenario(16, $needs, $body);
            }
            #[test]
            fn pg18() {
                $crate::harness::run_scenario(18, $needs, $body);
            }
        }
    };
}
pub(crate) use proto_test;

/// What a scenario needs from the build beyond a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Runs on every version.
    Nothing,
    /// Runs only where the server was built with TLS (OpenSSL).
    Tls,
    /// Runs only where the server was built with zstd.
    Zstd,
}
