//! `walden run` and `walden status`: the configuration file ([`config`]: parsed, validated,
//! one error per line that names the file, the line and the fix), the backup schedule
//! arithmetic ([`schedule`]), the supervisor that keeps every cluster's receiver, backups and
//! retention going ([`supervisor`]), the status file it writes ([`status_file`]) and the
//! status report built from it ([`status`]), and the HTTP server ([`http`]) that `walden run`
//! starts when `[http]` is configured, answering from [`live_status`].

pub mod config;
pub mod http;
pub mod live_status;
pub mod schedule;
pub mod status;
pub mod status_file;
pub mod supervisor;
