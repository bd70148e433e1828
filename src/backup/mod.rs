//! Base backups: checking a backup's tar archives against its `backup_manifest` while they
//! stream in ([`tar_stream`] parses archives, [`manifest`] parses and compares manifests).
//! Pure state machines: callers hand them bytes.

pub mod manifest;
pub mod tar_stream;
