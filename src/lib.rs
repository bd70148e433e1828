//! walden: a PostgreSQL streaming-replication archiver.
//!
//! # Layout
//! - [`pg`] speaks the PostgreSQL wire and replication protocol; it knows nothing of disks.
//! - [`wal`] knows the WAL format (positions, segments, pages, records) and does no I/O.
//! - [`store`] owns the on-disk store: layout, durable writes, the per-cluster lock, lookup.
//! - [`identify`] composes them into `walden identify`.
//! - [`inspect`] reports what a store holds and whether it is intact (`list`, `verify`).
//! - [`receive`] composes them into `walden receive`: the WAL receiver.
//! - [`backup`] checks base-backup tar archives against their `backup_manifest` (no I/O).
//! - [`daemon`] is `walden run` (configuration, schedules, one supervisor per cluster) and
//!   `walden status`.
//! - [`exit`], [`logging`] and [`signals`] are shared by the two binaries.
//!
//! The binaries in `src/bin/` only parse arguments and call into this library.

pub mod backup;
pub mod daemon;
pub mod exit;
pub mod http_api;
pub mod identify;
pub mod inspect;
pub mod logging;
pub mod pg;
pub mod receive;
pub mod restore;
pub mod signals;
pub mod store;
pub mod wal;
