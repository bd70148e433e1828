//! Base backups: `walden backup` ([`take`]) streams `BASE_BACKUP` into the store through a
//! [`sink`] that writes and checks each archive; [`tar_stream`] parses archives and
//! checksums their members as they pass, [`manifest`] parses and compares manifests. The
//! parsers are pure state machines: callers hand them bytes.

pub mod manifest;
pub mod sink;
pub mod take;
pub mod tar_stream;

pub use take::{BackupCompression, BackupError, BackupOptions, BackupRecord, take_backup};
