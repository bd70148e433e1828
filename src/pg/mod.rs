//! PostgreSQL client side of the wire and replication protocols.
//!
//! Architecture invariant: this module never touches the store or any data file. The only
//! files it reads are the ones libpq would read for a connection: `.pgpass` and TLS
//! certificates and keys.

mod conninfo;
mod modes;
mod pgpass;
mod tls;

pub use conninfo::{
    ConnConfig, ConnInfoError, ConnParams, DEFAULT_PORT, Environment, Host, Origin, Replication,
    SystemEnvironment, Target, Word, quote,
};
pub use modes::{ChannelBinding, SslMode};
pub use tls::{
    TlsConnector, TlsError, TlsSettings, Trust, channel_binding_hash, default_sslmode,
    server_certificate,
};
