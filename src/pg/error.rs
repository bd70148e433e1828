//! Errors of the PostgreSQL client: what went wrong, said so a user can act on it.

use std::fmt;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

use super::conninfo::ConnInfoError;
use super::frame::FrameError;
use super::tls::TlsError;

/// An `ErrorResponse` (or `NoticeResponse`) from the server, with its standard fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL`, `PANIC` (or `WARNING`, `NOTICE`... for notices), not localized.
    pub severity: String,
    /// The five-character SQLSTATE, e.g. `28P01`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    /// Reads the fields of an ErrorResponse or NoticeResponse body.
    pub fn from_fields(mut fields: ErrorFields<'_>) -> ServerError {
        let mut err = ServerError::default();
        let mut localized_severity = String::new();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => err.severity = value,
                b'S' => localized_severity = value,
                b'C' => err.code = value,
                b'M' => err.message = value,
                b'D' => err.detail = Some(value),
                b'H' => err.hint = Some(value),
                _ => {}
            }
        }
        if err.severity.is_empty() {
            err.severity = localized_severity;
        }
        err
    }

    /// SQLSTATE class 28: invalid authorization (wrong password, no pg_hba entry, unknown
    /// role). 42501 (insufficient privilege, e.g. no REPLICATION attribute) is not in it.
    pub fn is_auth_failure(&self) -> bool {
        self.code.starts_with("28")
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server said {}: {}", self.severity, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " hint: {hint}")?;
        }
        write!(f, " [SQLSTATE {}]", self.code)
    }
}

/// Everything that can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection string or settings are wrong: nothing was attempted.
    #[error("{0}")]
    Config(#[from] ConnInfoError),
    /// No socket could be opened.
    #[error("could not connect to {target}: {source}{hint}")]
    Connect {
        target: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("could not connect to {target}: timed out after {seconds} s (connect_timeout)")]
    ConnectTimeout { target: String, seconds: u64 },
    #[error("{target}: {source}")]
    Tls { target: String, source: TlsError },
    /// The server refused us or a command with an ErrorResponse.
    #[error("{0}")]
    Server(ServerError),
    /// Authentication could not proceed on our side (no password, channel binding...).
    #[error("{0}")]
    Auth(String),
    /// The peer sent something that is not the PostgreSQL protocol as we expect it.
    #[error("protocol violation from {peer}: {reason}")]
    Protocol { peer: String, reason: String },
    #[error("invalid message from {peer}: {source}; is this a PostgreSQL server?")]
    Frame { peer: String, source: FrameError },
    /// The connection broke after it was established.
    #[error("connection to {peer} lost: {source}")]
    Io {
        peer: String,
        source: std::io::Error,
    },
    /// A command answered with a result we cannot interpret.
    #[error("unexpected result from {command}: {reason}")]
    UnexpectedResult { command: String, reason: String },
}

impl Error {
    /// The SQLSTATE when the server sent an error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// The server error, if this is one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Error::Server(e) => Some(e),
            _ => None,
        }
    }

    /// True when the problem is in what the user gave us (connection string, files named in
    /// it), so retrying cannot help.
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
            || matches!(self, Error::Tls { source, .. } if source.is_config())
    }
}
