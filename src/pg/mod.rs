//! PostgreSQL client side of the wire and replication protocols.
//!
//! - [`frame`]: sans-IO decoding of backend messages (length caps, `W`, `v`).
//! - `conninfo`, `pgpass`: libpq connection strings, `PG*` variables and `.pgpass`.
//! - `tls`: rustls with libpq's `sslmode` semantics and SCRAM channel binding.
//! - `connection`: sockets, SSL negotiation, startup and authentication.
//! - `query`: simple queries with typed results.
//! - `replication`: the replication commands, spelled for each server version.
//! - `stream`: `START_REPLICATION` and the messages inside CopyBoth.
//! - `copy_stream`: the same stream driven by blocking calls from one thread (the receiver).
//! - `basebackup`: `BASE_BACKUP` for every server version, as a stream of events.
//!
//! Architecture invariant: this module never touches the store or any data file. The only
//! files it reads are the ones libpq would read for a connection: `.pgpass` and TLS
//! certificates and keys.

mod basebackup;
mod connection;
mod conninfo;
mod copy_stream;
mod error;
pub mod frame;
mod modes;
mod pgpass;
mod query;
mod replication;
mod stream;
mod tls;
pub(crate) use tls::system_bundle;

pub use basebackup::{
    BackupEvent, BaseBackupOptionError, BaseBackupOptions, BaseBackupStream, TablespaceInfo,
};
pub use connection::{Connection, ServerVersion, SessionKind};
pub use conninfo::{
    ConnConfig, ConnInfoError, ConnParams, DEFAULT_PORT, Environment, Host, Origin, Replication,
    SystemEnvironment, Target, Word, quote,
};
pub use copy_stream::CopyStream;
pub use error::{Error, ServerError};
pub use modes::{ChannelBinding, SslMode};
pub use query::{QueryResult, Row, RowError};
pub use replication::{SlotName, SlotOptions, SlotPosition, SystemId, SystemInfo, TimelineHistory};
pub use stream::{
    Keepalive, PgTimestamp, ServerMessage, StartReply, StatusUpdate, StreamEvent, XLogData,
};
pub use tls::{
    TlsConnector, TlsError, TlsSettings, Trust, channel_binding_hash, default_sslmode,
    server_certificate,
};
