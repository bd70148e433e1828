//! The database side: choosing a backup and the WAL for a recovery target, extracting the
//! backup into a data directory, writing the recovery configuration for the server's
//! version, and serving WAL to the server as its `restore_command` (`wal-fetch`).

pub mod extract;
pub mod plan;
pub mod recovery;
pub mod wal_fetch;
