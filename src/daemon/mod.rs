//! `walden run`'s ground work: the configuration file ([`config`]: parsed, validated, one
//! error per line that names the file, the line and the fix) and the backup schedule
//! arithmetic ([`schedule`]: when is the next base backup due).

pub mod config;
pub mod http;
pub mod schedule;
