//! What `walden run` answers on `/healthz`, `/status` and `/metrics`: the report of `walden
//! status --config` (status files, the store, and each slot asked on its primary), and
//! Prometheus metrics derived from it beside the store's own ([`StoreStatus`]).
//!
//! The configuration file is read again on each request, so clusters added or removed by a
//! SIGHUP reload show up without restarting the HTTP server; a file that no longer parses is
//! answered from the last one that did. A report is reused for `REPORT_TTL` (5 s), so that
//! `/healthz`, `/status` and `/metrics` polled together ask the store and the primaries once.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::runtime::Handle;

use super::config::{self, Config};
use super::http::{Metrics, StatusSource, StoreStatus};
use super::status::{self, ClusterStatus, StatusReport};

/// How long one report answers every request.
const REPORT_TTL: Duration = Duration::from_secs(5);

/// The daemon's [`StatusSource`].
pub struct DaemonStatus {
    config_path: PathBuf,
    last_good: Mutex<Config>,
    cached: Mutex<Option<(Instant, StatusReport)>>,
    store: StoreStatus,
    runtime: Handle,
}

impl DaemonStatus {
    /// For the daemon started with `config` (read from `config_path`); the slot queries run
    /// on `runtime`.
    pub fn new(config_path: &Path, config: Config, runtime: Handle) -> DaemonStatus {
        DaemonStatus {
            config_path: config_path.to_path_buf(),
            store: StoreStatus::new(config.store.clone()),
            last_good: Mutex::new(config),
            cached: Mutex::new(None),
            runtime,
        }
    }

    /// The current configuration: the file as it is now if it parses, else the last good one.
    fn config(&self) -> Config {
        let mut last = self.last_good.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(text) = std::fs::read_to_string(&self.config_path)
            && let Ok(config) = config::parse(&text, &self.config_path)
        {
            *last = config;
        }
        last.clone()
    }

    /// The report, at most [`REPORT_TTL`] old; called on a blocking thread, so waiting for
    /// the slot queries is fine.
    fn report(&self) -> StatusReport {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, report)) = cached.as_ref()
            && at.elapsed() < REPORT_TTL
        {
            return report.clone();
        }
        let config = self.config();
        let report = self
            .runtime
            .block_on(status::from_config(&config, SystemTime::now()));
        *cached = Some((Instant::now(), report.clone()));
        report
    }
}

impl StatusSource for DaemonStatus {
    fn status_json(&self) -> Value {
        serde_json::to_value(self.report()).unwrap_or_else(
            |e| serde_json::json!({ "error": format!("cannot serialise the status: {e}") }),
        )
    }

    fn healthy(&self) -> bool {
        self.report().healthy
    }

    fn metrics(&self) -> String {
        let report = self.report();
        let mut text = self.store.metrics();
        text.push_str(&daemon_metrics(&report.clusters));
        text
    }
}

/// The receiver, slot and backup figures of each cluster (the store's own are in
/// [`StoreStatus`]'s metrics).
fn daemon_metrics(clusters: &[ClusterStatus]) -> String {
    type Value = fn(&ClusterStatus) -> Option<f64>;
    let families: [(&str, &str, bool, Value); 10] = [
        (
            "walden_receiver_streaming",
            "1 while the cluster's receiver is streaming",
            false,
            |c| Some(f64::from(u8::from(c.receiver.state == "streaming"))),
        ),
        (
            "walden_receiver_lag_bytes",
            "WAL the server has flushed that is not yet fsynced in the store",
            false,
            |c| c.receiver.lag_bytes.map(|b| b as f64),
        ),
        (
            "walden_receiver_lag_seconds",
            "Age of the newest fsynced WAL byte when behind (0 when caught up)",
            false,
            |c| c.receiver.lag_seconds,
        ),
        (
            "walden_receiver_flushed_lsn",
            "The position up to which WAL is fsynced in the store (bytes)",
            false,
            |c| c.receiver.flushed_lsn.map(|l| l.0 as f64),
        ),
        (
            "walden_received_bytes_total",
            "WAL bytes received since the daemon started",
            true,
            |c| Some(c.receiver.bytes_received as f64),
        ),
        (
            "walden_segments_stored_total",
            "WAL segments completed in the store since the daemon started",
            true,
            |c| Some(c.receiver.segments_completed as f64),
        ),
        (
            "walden_receiver_restarts_total",
            "Times the receiver was started again after an error",
            true,
            |c| Some(c.receiver.restarts as f64),
        ),
        (
            "walden_backups_taken_total",
            "Base backups taken since the daemon started",
            true,
            |c| Some(c.backups.taken as f64),
        ),
        (
            "walden_backups_failed_total",
            "Base backups that failed since the daemon started",
            true,
            |c| Some(c.backups.failed as f64),
        ),
        (
            "walden_slot_retained_bytes",
            "WAL the replication slot holds back on the primary",
            false,
            |c| c.slot.retained_bytes.map(|b| b as f64),
        ),
    ];
    let mut m = Metrics::new();
    m.gauge(
        "walden_cluster_problems",
        "Problems that make the cluster unhealthy (see /status)",
    );
    for c in clusters {
        m.sample(
            "walden_cluster_problems",
            &[("cluster", c.cluster.as_str())],
            c.problems.len() as f64,
        );
    }
    for (name, help, counter, value) in families {
        if counter {
            m.counter(name, help);
        } else {
            m.gauge(name, help);
        }
        for c in clusters {
            if let Some(v) = value(c) {
                m.sample(name, &[("cluster", c.cluster.as_str())], v);
            }
        }
    }
    m.finish()
}
