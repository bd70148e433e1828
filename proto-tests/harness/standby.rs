//! Hot standbys of test servers: a base backup taken with the version's own `pg_basebackup
//! -R -X stream`, started in its own test directory streaming from the primary; promotion;
//! waiting for replay.

use std::time::Duration;

use walden::wal::Lsn;

use super::server::new_test_dir;
use super::{Server, U_TRUST, log_tail, postgres_cmd, run_ok, wait_for};

/// How long a standby may take to stream, replay or promote.
const STANDBY_TIMEOUT: Duration = Duration::from_secs(60);

impl Server {
    /// A started hot standby of this running primary: a base backup (`pg_basebackup -R -X
    /// stream -c fast`, as `u_trust` over TCP) into a new test directory, our port/socket
    /// settings plus `extra_conf`, started and waited for until its WAL receiver streams.
    /// Its `primary_conninfo` names the primary's port at this moment.
    pub fn start_standby(&self, extra_conf: &[&str]) -> Server {
        let dir = new_test_dir();
        let data = dir.join("data");
        run_ok(
            postgres_cmd(self.bin("pg_basebackup"))
                .arg("-D")
                .arg(&data)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
                .arg("-d")
                .arg(self.conninfo(U_TRUST))
                .current_dir(&dir),
        );
        let mut standby = Server::configure(
            self.pg().clone(),
            dir,
            extra_conf.iter().map(|l| (*l).to_owned()).collect(),
        );
        standby.start();
        wait_for(
            "the standby's WAL receiver to stream",
            STANDBY_TIMEOUT,
            || {
                standby.psql("select count(*) from pg_stat_wal_receiver where status = 'streaming'")
                    == "1"
            },
            || standby.context(),
        );
        standby
    }

    /// Promotes this standby (`pg_promote()`) and waits until it is out of recovery.
    pub fn promote(&self) {
        let done = self.psql("select pg_promote(true, 60)");
        assert_eq!(done, "t", "pg_promote did not finish\n{}", self.context());
        wait_for(
            "the promoted standby to leave recovery",
            STANDBY_TIMEOUT,
            || self.psql("select pg_is_in_recovery()") == "f",
            || self.context(),
        );
    }

    /// Waits until this standby has replayed everything up to `lsn`.
    pub fn wait_replayed(&self, lsn: Lsn) {
        wait_for(
            &format!("the standby to replay up to {lsn}"),
            STANDBY_TIMEOUT,
            || self.psql(&format!("select pg_last_wal_replay_lsn() >= '{lsn}'")) == "t",
            || {
                let state = self.try_psql(
                    "select 'received ' || pg_last_wal_receive_lsn() || ', replayed ' || \
                     pg_last_wal_replay_lsn() || ', paused ' || pg_is_wal_replay_paused()",
                );
                format!("{state:?}\n{}", self.context())
            },
        );
    }

    /// The data directory and the server log tail, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "PostgreSQL {} in {}\n--- server log tail ---\n{}",
            self.major(),
            self.dir().display(),
            log_tail(&self.log(), 30)
        )
    }
}
