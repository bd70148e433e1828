//! `walden receive`: stream a cluster's WAL into the store, losing nothing.
//!
//! Shape: an async task (this module and `session`) connects, picks the start position and
//! timeline, and handles what ends a stream; while WAL flows, one blocking thread
//! (`streaming`) reads the stream, has the `writer` verify, write and fsync it, and
//! reports a position to the server only once it is durable. Sessions end
//! on network trouble, server restarts and terminated WAL senders; [`run`] reconnects with
//! capped exponential backoff and resumes from what the store holds, so nothing is skipped
//! and nothing is stored twice.
//!
//! Failures that retrying cannot fix (authentication, a missing slot, a store that belongs to
//! another cluster, WAL that fails verification) end the run with an error instead.
//!
//! A supervisor can follow the receiver through [`ReceiveOptions::status`] (`status`).

mod session;
mod status;
mod streaming;
mod writer;

pub use status::{ReceiverState, ReceiverStatus};

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::pg::{self, ConnConfig, SlotName};
use crate::store::{ClusterName, Compression, StoreError};
use crate::wal::{Lsn, VerifyError};

/// What `walden receive` was asked to do.
#[derive(Clone, Debug)]
pub struct ReceiveOptions {
    /// libpq connection string of the server to stream from.
    pub source: String,
    pub store: PathBuf,
    pub cluster: ClusterName,
    pub slot: Option<SlotName>,
    /// Create `slot` (reserving WAL at once) when it does not exist.
    pub create_slot: bool,
    /// fsync every batch and report it at once: the server may wait for us at commit.
    pub synchronous: bool,
    /// How often to send status updates when nothing else prompts one.
    pub status_interval: Duration,
    pub compression: Compression,
    pub stop: StopAt,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Where to publish the receiver's state and positions (`walden run`); `None` for none.
    pub status: Option<watch::Sender<ReceiverStatus>>,
}

/// When to stop without being told to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopAt {
    /// Run until SIGINT/SIGTERM.
    Never,
    /// Stop once everything the server had flushed at start is durable here.
    CurrentEnd,
    /// Stop once everything before this position is durable here.
    Lsn(Lsn),
}

/// Why receiving stopped with an error. [`ReceiveError::exit_code`] classifies it.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Pg(#[from] pg::Error),
    /// The server refused us in a way retrying cannot fix.
    #[error("{0}")]
    Refused(String),
    #[error("WAL verification failed: {0}; the segment is kept as .partial for inspection")]
    Verify(VerifyError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ReceiveError {
    /// Whether reconnecting may help (the network, a restarting server, a terminated WAL
    /// sender), as opposed to a problem a person must fix.
    pub fn is_transient(&self) -> bool {
        match self {
            ReceiveError::Pg(e) => match e {
                pg::Error::Connect { .. }
                | pg::Error::ConnectTimeout { .. }
                | pg::Error::Io { .. } => true,
                pg::Error::Server(s) => transient_sqlstate(&s.code),
                _ => false,
            },
            _ => false,
        }
    }

    /// The process exit code (see README): 2 configuration or store binding, 3 the server
    /// refused us, 4 data or disk failure.
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            ReceiveError::Store(e) if e.is_config() => exit::USAGE,
            ReceiveError::Pg(e) if e.is_config() => exit::USAGE,
            ReceiveError::Pg(_) | ReceiveError::Refused(_) => exit::CONNECTION,
            ReceiveError::Store(_)
            | ReceiveError::Verify(_)
            | ReceiveError::Protocol(_)
            | ReceiveError::Internal(_) => exit::FAILURE,
        }
    }
}

/// SQLSTATEs after which a new connection may succeed: the server is shutting down or
/// starting, our WAL sender was terminated, too many connections, our slot is still held by
/// a WAL sender of ours that has not noticed it is dead yet.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57P")
        || matches!(code, "53300" | "55006" | "40001" | "XX000")
}

/// Streams until stopped. `shutdown` turning true (SIGINT/SIGTERM) ends the run cleanly:
/// everything received is made durable and reported first.
pub async fn run(
    options: &ReceiveOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ReceiveError> {
    let publish = status::Publisher(options.status.as_ref());
    publish.state(ReceiverState::Connecting);
    let result = run_sessions(options, shutdown, publish).await;
    if let Err(e) = &result {
        publish.error(e);
    }
    publish.state(ReceiverState::Stopped);
    result
}

async fn run_sessions(
    options: &ReceiveOptions,
    mut shutdown: watch::Receiver<bool>,
    publish: status::Publisher<'_>,
) -> Result<(), ReceiveError> {
    let config =
        ConnConfig::parse(&options.source).map_err(|e| ReceiveError::Pg(pg::Error::Config(e)))?;
    // The first connection must work: a typo or wrong password should not spin forever.
    let mut receiver = session::Receiver::start(options, &config).await?;
    let mut backoff = INITIAL_BACKOFF;
    loop {
        match receiver.stream(&mut shutdown).await {
            Ok(session::Ended::Done) => return receiver.finish().await,
            Ok(session::Ended::Reconnect { streamed }) => {
                if streamed {
                    backoff = INITIAL_BACKOFF;
                }
                tracing::warn!(
                    "the server ended streaming; reconnecting in {:.1} s",
                    backoff.as_secs_f64()
                );
            }
            Err(session::Failure { error, streamed }) if error.is_transient() => {
                if streamed {
                    backoff = INITIAL_BACKOFF;
                }
                publish.error(&error);
                tracing::warn!("{error}; reconnecting in {:.1} s", backoff.as_secs_f64());
            }
            Err(session::Failure { error, .. }) => {
                let _ = receiver.finish().await;
                return Err(error);
            }
        }
        publish.state(ReceiverState::WaitingToReconnect);
        let stopped = tokio::select! {
            _ = tokio::time::sleep(backoff) => false,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        if stopped {
            return receiver.finish().await;
        }
        publish.state(ReceiverState::Connecting);
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
