//! The version's own `pg_receivewal` as a reference receiver: physical slots, a background
//! run into a directory owned by `postgres`, stopping it with SIGINT, and waiting for files.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::server::chown_postgres;
use super::{Server, U_TRUST, log_tail, postgres_direct_cmd, send_signal, wait_for};

/// A background `pg_receivewal`; killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct ReceiveWal {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Creates the physical replication slot `name` with its WAL reserved now.
    pub fn create_physical_slot(&self, name: &str) {
        self.psql(&format!(
            "select pg_create_physical_replication_slot('{name}', true)"
        ));
    }

    /// Starts this version's `pg_receivewal -D <dir> --slot <slot> -v --status-interval=1`
    /// against `conninfo`, as the `postgres` user. It loops: when the connection drops it
    /// reconnects by itself every 5 s. `dir` is created and given to `postgres`; the log is
    /// `<dir>.log`. Create the slot first ([`Server::create_physical_slot`]): on an empty
    /// directory pg_receivewal starts at the slot's `restart_lsn`.
    pub fn start_receivewal_conn(&self, conninfo: &str, dir: &Path, slot: &str) -> ReceiveWal {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        chown_postgres(dir);
        let log = dir.with_extension("log");
        let out = std::fs::File::create(&log).expect("create the pg_receivewal log");
        let err = out.try_clone().expect("clone the pg_receivewal log handle");
        let child = postgres_direct_cmd(self.bin("pg_receivewal"))
            .arg("-D")
            .arg(dir)
            .args([
                "--slot",
                slot,
                "-v",
                "-w",
                "--status-interval=1",
                "-d",
                conninfo,
            ])
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run pg_receivewal: {e}"));
        ReceiveWal {
            child,
            dir: dir.to_path_buf(),
            log,
        }
    }

    /// [`Server::start_receivewal_conn`] over TCP as `u_trust`.
    pub fn start_receivewal(&self, dir: &Path, slot: &str) -> ReceiveWal {
        self.start_receivewal_conn(&self.conninfo(U_TRUST), dir, slot)
    }
}

impl ReceiveWal {
    /// The directory it writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The path of segment `name` in its directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Waits until the completed segment `name` is in its directory; panics with its log.
    pub fn wait_for_segment(&self, name: &str, timeout: Duration) {
        wait_for_file(&self.dir, name, timeout, || {
            format!(
                "--- pg_receivewal log tail ---\n{}",
                log_tail(&self.log(), 20)
            )
        });
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it with SIGINT (it flushes and exits 0) and waits up to 30 s; returns its status.
    pub fn stop(mut self) -> ExitStatus {
        send_signal(self.child.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => panic!(
                    "pg_receivewal did not stop within 30 s of SIGINT\n{}",
                    log_tail(&self.log(), 20)
                ),
                Err(e) => panic!("waiting for pg_receivewal: {e}"),
            }
        }
    }
}

impl Drop for ReceiveWal {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `dir/name` exists; panics after `timeout` with a listing of `dir` and
/// `context()` (e.g. a log tail).
pub fn wait_for_file(dir: &Path, name: &str, timeout: Duration, context: impl FnOnce() -> String) {
    wait_for(
        &format!("{name} in {}", dir.display()),
        timeout,
        || dir.join(name).exists(),
        || {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            format!("{} holds: {names:?}\n{}", dir.display(), context())
        },
    );
}
