//! WAL positions of a test server: current LSNs, segment size, system identifier, and
//! `pg_switch_wal()` with the name of the segment it completed.

use walden::wal::{Lsn, WalSegSize};

use super::Server;

/// What one `pg_switch_wal()` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSwitch {
    /// The segment the switch completed (on the server's current timeline).
    pub segment: String,
    /// `pg_switch_wal()`'s result: the end of the switch record (within `segment`).
    pub lsn: Lsn,
}

impl Server {
    /// `pg_current_wal_lsn()` (the write position) of a primary.
    pub fn current_lsn(&self) -> Lsn {
        self.lsn_query("select pg_current_wal_lsn()")
    }

    /// `pg_current_wal_insert_lsn()` of a primary: the end of everything inserted so far.
    pub fn insert_lsn(&self) -> Lsn {
        self.lsn_query("select pg_current_wal_insert_lsn()")
    }

    /// The LSN a query returns (one row, one `pg_lsn` column).
    pub fn lsn_query(&self, sql: &str) -> Lsn {
        let text = self.psql(sql);
        let last = text.lines().last().unwrap_or_default();
        last.parse()
            .unwrap_or_else(|e| panic!("{sql}: {e} (output {text:?})"))
    }

    /// The server's `wal_segment_size`.
    pub fn wal_seg_size(&self) -> WalSegSize {
        let text = self.psql("select setting from pg_settings where name = 'wal_segment_size'");
        let bytes: u64 = text
            .parse()
            .unwrap_or_else(|e| panic!("wal_segment_size {text:?}: {e}"));
        WalSegSize::new(bytes).unwrap_or_else(|e| panic!("wal_segment_size {bytes}: {e}"))
    }

    /// The cluster's system identifier (`pg_control_system()`).
    pub fn system_identifier(&self) -> u64 {
        let text = self.psql("select system_identifier from pg_control_system()");
        text.parse()
            .unwrap_or_else(|e| panic!("system identifier {text:?}: {e}"))
    }

    /// Writes a small WAL record (so that there is something to switch away from), then
    /// `pg_switch_wal()`; returns the completed segment's name and the switch position.
    pub fn switch_wal(&self) -> WalSwitch {
        let out = self.psql(
            "select pg_logical_emit_message(false, 'walden-test', 'switch');\n\
             select pg_walfile_name(l) || ' ' || l from pg_switch_wal() l",
        );
        let last = out.lines().last().unwrap_or_default();
        let (segment, lsn) = last
            .split_once(' ')
            .unwrap_or_else(|| panic!("pg_switch_wal output {out:?}"));
        WalSwitch {
            segment: segment.to_owned(),
            lsn: lsn
                .parse()
                .unwrap_or_else(|e| panic!("pg_switch_wal output {out:?}: {e}")),
        }
    }

    /// The bytes of `pg_wal/<name>` in this server's data directory (read directly; we are
    /// root or the data directory's owner), `None` when the file is not there.
    pub fn pg_wal_file(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.data_dir().join("pg_wal").join(name)).ok()
    }
}
