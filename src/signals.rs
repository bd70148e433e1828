//! SIGINT and SIGTERM as a shutdown request every long-running command can watch.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// A receiver that turns true at the first SIGINT or SIGTERM. Must be called inside the
/// tokio runtime.
pub fn shutdown_on_signal() -> std::io::Result<watch::Receiver<bool>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received; stopping"),
            _ = terminate.recv() => tracing::info!("SIGTERM received; stopping"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}
