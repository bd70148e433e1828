//! walden: a PostgreSQL streaming-replication archiver.
//!
//! # Layout
//! - [`pg`] speaks the PostgreSQL wire and replication protocol; it knows nothing of disks.
//! - [`wal`] knows the WAL format (positions, segments, pages, records) and does no I/O.
//!
//! The binaries in `src/bin/` only parse arguments and call into this library.

pub mod pg;
pub mod wal;
