//! Write load for test servers: the version's own `pgbench` (every install here has one:
//! Debian's 15 and the 16/18 wheels all ship it), run in the foreground for `-i` and in the
//! background for timed runs, and a plain-SQL WAL generator for an exact amount of WAL.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{Server, U_POSTGRES, log_tail, postgres_direct_cmd, run_ok, send_signal};

/// A background `pgbench` run; killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct Pgbench {
    child: Child,
    log: PathBuf,
    duration: Duration,
}

impl Server {
    /// `pgbench -i -s <scale> -q` into the `postgres` database.
    pub fn pgbench_init(&self, scale: u32) {
        let mut cmd = postgres_direct_cmd(self.bin("pgbench"));
        cmd.args(["-i", "-q", "-s", &scale.to_string()])
            .args(self.pgbench_conn())
            .current_dir(self.dir());
        run_ok(&mut cmd);
    }

    /// Starts `pgbench -n -c <clients> -j <jobs> -T <duration>` in the background (the tables
    /// of [`Server::pgbench_init`] must exist). Its output goes to `pgbench-<n>.log` in `dir()`.
    pub fn pgbench(&self, clients: u32, jobs: u32, duration: Duration) -> Pgbench {
        let secs = duration.as_secs().max(1);
        let log = (0..)
            .map(|n| self.dir().join(format!("pgbench-{n}.log")))
            .find(|p| !p.exists())
            .expect("a free pgbench log name");
        let out = std::fs::File::create(&log).expect("create the pgbench log");
        let err = out.try_clone().expect("clone the pgbench log handle");
        let child = postgres_direct_cmd(self.bin("pgbench"))
            .args(["-n", "-c", &clients.to_string(), "-j", &jobs.to_string()])
            .args(["-T", &secs.to_string()])
            .args(self.pgbench_conn())
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run pgbench: {e}"));
        Pgbench {
            child,
            log,
            duration: Duration::from_secs(secs),
        }
    }

    fn pgbench_conn(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir().display().to_string(),
            "-p".into(),
            self.port().to_string(),
            "-U".into(),
            U_POSTGRES.into(),
            "postgres".into(),
        ]
    }

    /// Generates at least `bytes` of WAL with plain SQL (rows of ~1 KB of incompressible
    /// text into `walden_fill`, in transactions of ~1 MB), as the superuser over psql.
    pub fn generate_wal(&self, bytes: u64) {
        self.psql(
            "create table if not exists walden_fill (id bigserial primary key, payload text)",
        );
        let start = self.insert_lsn();
        while self.insert_lsn().0.saturating_sub(start.0) < bytes {
            self.psql(
                "insert into walden_fill (payload) \
                 select string_agg(md5(random()::text), '') from generate_series(1, 32), \
                 generate_series(1, 1000) g group by g",
            );
        }
    }
}

impl Pgbench {
    /// Waits for the run to end (it ends by itself after its duration) and returns its
    /// output; panics with the output when pgbench failed or overran by 30 s.
    pub fn wait(mut self) -> String {
        let deadline = Instant::now() + self.duration + Duration::from_secs(30);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => {
                    send_signal(self.child.id(), "KILL");
                    panic!(
                        "pgbench did not finish in time:\n{}",
                        log_tail(&self.output(), 20)
                    );
                }
                Err(e) => panic!("waiting for pgbench: {e}"),
            }
        };
        let output = self.output();
        assert!(status.success(), "pgbench failed ({status}):\n{output}");
        output
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
