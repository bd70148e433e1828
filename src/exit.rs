//! Exit codes shared by both binaries; scripts and monitoring rely on them.

/// Success.
pub const OK: u8 = 0;
/// The thing asked for is not there (for example `wal-fetch` of a segment the store does not
/// hold: recovery relies on this code).
pub const NOT_FOUND: u8 = 1;
/// Usage or configuration error: a bad flag, connection string or config file. Retrying the
/// same command cannot help.
pub const USAGE: u8 = 2;
/// The server could not be reached or refused us: connection, TLS, authentication,
/// permission. Retrying may help once the cause is fixed.
pub const CONNECTION: u8 = 3;
/// Any other failure.
pub const FAILURE: u8 = 4;
/// The store is busy with something that must finish first (`prune` while a backup is in
/// progress): nothing was changed; run the same command again later.
pub const BUSY: u8 = 5;
/// `wal-fetch` hit a fault that must stop recovery (a corrupt or unreadable stored file, an
/// unreadable store, another cluster's WAL, a full disk). PostgreSQL treats an exit code
/// above 125 from `restore_command` as fatal; 1..125 would mean "not found" and end recovery
/// early, so `wal-fetch` never uses them for a fault.
pub const FETCH_FAULT: u8 = 255;

/// The exit code for a client error.
pub fn for_pg_error(e: &crate::pg::Error) -> u8 {
    if e.is_config() { USAGE } else { CONNECTION }
}
/// `walden status`: at least one cluster is unhealthy (the report says why). Distinct from
/// 4 so that a monitoring check can tell "unhealthy" from "status itself failed".
pub const UNHEALTHY: u8 = 6;
