//! Signals every long-running command can watch: SIGINT and SIGTERM as a shutdown request,
//! SIGHUP as a reload request (`walden run`).

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

/// Resolves once `shutdown` is true (or its sender is gone), keeping no borrow of the value:
/// unlike `wait_for`, the result can live across an `.await` in a task that must be `Send`.
pub async fn requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A channel that receives a message at each SIGHUP (several close together may arrive as
/// one). Must be called inside the tokio runtime.
pub fn reload_on_hangup() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received; reloading the configuration");
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}
