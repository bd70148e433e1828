//! What `/healthz`, `/status` and `/metrics` report: the [`StatusSource`] trait the server
//! asks, a Prometheus text builder ([`Metrics`]) and [`StoreStatus`], the implementation
//! `walden serve` uses, built from what the store holds.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::inspect::{self, Listing};
use crate::store::{self, ClusterName};

/// Where the HTTP server's status comes from. The daemon implements it from its supervisor's
/// live state; [`StoreStatus`] implements it from the store alone. The methods are called
/// from a blocking thread: they may read the disk.
pub trait StatusSource: Send + Sync {
    /// The `/status` document.
    fn status_json(&self) -> Value;
    /// `/healthz`: 200 when true, 503 otherwise.
    fn healthy(&self) -> bool;
    /// The `/metrics` text (Prometheus exposition format 0.0.4), `# HELP` and `# TYPE`
    /// included.
    fn metrics(&self) -> String;
}

/// A Prometheus text exposition being built: each metric family once, with its help and
/// type, then its samples.
#[derive(Debug, Default)]
pub struct Metrics {
    text: String,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Starts a gauge family.
    pub fn gauge(&mut self, name: &str, help: &str) -> &mut Metrics {
        self.family(name, help, "gauge")
    }

    /// Starts a counter family (`name` should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str) -> &mut Metrics {
        self.family(name, help, "counter")
    }

    fn family(&mut self, name: &str, help: &str, kind: &str) -> &mut Metrics {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the family just started.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Metrics {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let val = val
                    .replace('\\', r"\\")
                    .replace('"', "\\\"")
                    .replace('\n', r"\n");
                let _ = write!(self.text, "{key}=\"{val}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
        self
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// The clusters of a store: its subdirectories with a valid name and a `cluster.json`,
/// sorted by name.
pub fn store_clusters(store: &Path) -> io::Result<Vec<ClusterName>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(store)? {
        let entry = entry?;
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| ClusterName::new(n).ok())
        else {
            continue;
        };
        if entry.path().join("cluster.json").is_file() {
            out.push(name);
        }
    }
    out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(out)
}

/// How long a computed status is reused: `/healthz`, `/status` and `/metrics` polled
/// together cost one look at the store.
const CACHE_FOR: Duration = Duration::from_secs(5);

/// The status of a store read from the store itself (`walden serve`): per cluster what
/// `walden list` says, plus `STORE/<cluster>/status.json` when a daemon wrote one.
#[derive(Debug)]
pub struct StoreStatus {
    store: PathBuf,
    cache: Mutex<Option<(Instant, Snapshot)>>,
}

#[derive(Clone, Debug)]
struct Snapshot {
    json: Value,
    healthy: bool,
    metrics: String,
}

/// One cluster as the store shows it.
struct ClusterState {
    name: ClusterName,
    listing: Result<Listing, String>,
    daemon: Option<Value>,
}

impl ClusterState {
    /// Readable, and not declared unhealthy by the daemon's `status.json`.
    fn healthy(&self) -> bool {
        let daemon_ok = self
            .daemon
            .as_ref()
            .and_then(|d| d.get("healthy"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        self.listing.is_ok() && daemon_ok
    }
}

impl StoreStatus {
    pub fn new(store: impl Into<PathBuf>) -> StoreStatus {
        StoreStatus {
            store: store.into(),
            cache: Mutex::new(None),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut cache = match self.cache.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((at, snap)) = cache.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return snap.clone();
        }
        let snap = self.compute();
        *cache = Some((Instant::now(), snap.clone()));
        snap
    }

    fn compute(&self) -> Snapshot {
        let free = store::free_space(&self.store).map_err(|e| e.to_string());
        let clusters = store_clusters(&self.store)
            .map_err(|e| format!("cannot list store {}: {e}", self.store.display()));
        let states: Vec<ClusterState> = clusters
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|name| ClusterState {
                name: name.clone(),
                listing: inspect::list(&self.store, name).map_err(|e| e.to_string()),
                daemon: read_daemon_status(&self.store, name),
            })
            .collect();
        let healthy = free.is_ok() && clusters.is_ok() && states.iter().all(ClusterState::healthy);
        let mut problems: Vec<String> = Vec::new();
        problems.extend(free.as_ref().err().cloned());
        problems.extend(clusters.as_ref().err().cloned());
        let json = json!({
            "source": "store",
            "store": self.store.display().to_string(),
            "time": store::utc_now(),
            "healthy": healthy,
            "free_bytes": free.as_ref().ok(),
            "problems": problems,
            "clusters": states.iter().map(|s| json!({
                "cluster": s.name.as_str(),
                "healthy": s.healthy(),
                "error": s.listing.as_ref().err(),
                "listing": s.listing.as_ref().ok(),
                "daemon": s.daemon,
            })).collect::<Vec<_>>(),
        });
        let metrics = store_metrics(free.ok(), healthy, &states);
        Snapshot {
            json,
            healthy,
            metrics,
        }
    }
}

impl StatusSource for StoreStatus {
    fn status_json(&self) -> Value {
        self.snapshot().json
    }

    fn healthy(&self) -> bool {
        self.snapshot().healthy
    }

    fn metrics(&self) -> String {
        self.snapshot().metrics
    }
}

/// `STORE/<cluster>/status.json` as the daemon wrote it; a file that is not JSON is reported
/// as such rather than hidden.
fn read_daemon_status(store: &Path, cluster: &ClusterName) -> Option<Value> {
    let path = store.join(cluster.as_str()).join("status.json");
    let bytes = fs::read(&path).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap_or_else(
        |e| json!({ "unreadable": format!("{} is not JSON: {e}", path.display()) }),
    ))
}

/// Seconds since the epoch of a `2026-11-22T19:30:00Z` time.
fn epoch_seconds(text: &str) -> Option<f64> {
    let ts: jiff::Timestamp = text.parse().ok()?;
    Some(ts.as_millisecond() as f64 / 1000.0)
}

fn store_metrics(free: Option<u64>, healthy: bool, states: &[ClusterState]) -> String {
    let mut m = Metrics::new();
    m.gauge(
        "walden_healthy",
        "1 when every cluster of the store is readable and healthy",
    )
    .sample("walden_healthy", &[], f64::from(u8::from(healthy)));
    if let Some(free) = free {
        m.gauge(
            "walden_store_free_bytes",
            "Bytes available on the store's filesystem",
        )
        .sample("walden_store_free_bytes", &[], free as f64);
    }
    type Value = fn(&Listing) -> Option<f64>;
    let per_cluster: [(&str, &str, Value); 8] = [
        (
            "walden_backups",
            "Complete base backups in the store",
            |l| Some(complete(l).count() as f64),
        ),
        (
            "walden_backup_in_progress",
            "1 while a base backup is being taken",
            |l| {
                Some(f64::from(u8::from(
                    l.backups.iter().any(|b| b.status == "in progress"),
                )))
            },
        ),
        (
            "walden_last_backup_timestamp_seconds",
            "When the newest complete base backup ended (Unix time)",
            |l| {
                complete(l)
                    .filter_map(|b| b.stop_time.as_deref().and_then(epoch_seconds))
                    .reduce(f64::max)
            },
        ),
        (
            "walden_last_backup_bytes",
            "Size on disk of the newest complete base backup",
            |l| complete(l).last().and_then(|b| b.bytes).map(|b| b as f64),
        ),
        (
            "walden_recoverable_window_start_timestamp_seconds",
            "The earliest time a point-in-time restore can reach (Unix time)",
            |l| {
                l.recoverable
                    .as_ref()
                    .and_then(|w| w.from_time.as_deref())
                    .and_then(epoch_seconds)
            },
        ),
        (
            "walden_recoverable_window_end_timestamp_seconds",
            "When the newest WAL a restore can reach was written (Unix time)",
            |l| {
                l.recoverable
                    .as_ref()
                    .and_then(|w| w.to_time.as_deref())
                    .and_then(epoch_seconds)
            },
        ),
        (
            "walden_wal_segments",
            "WAL segment files in the store, complete and partial",
            |l| Some(l.wal.timelines.iter().map(|t| t.segments).sum::<usize>() as f64),
        ),
        (
            "walden_wal_gaps",
            "Recorded WAL gaps (WAL the server no longer had when walden asked)",
            |l| Some(l.wal.gaps.len() as f64),
        ),
    ];
    m.gauge(
        "walden_cluster_healthy",
        "1 when the cluster's store is readable and its daemon reports it healthy",
    );
    for s in states {
        m.sample(
            "walden_cluster_healthy",
            &[("cluster", s.name.as_str())],
            f64::from(u8::from(s.healthy())),
        );
    }
    for (name, help, value) in per_cluster {
        m.gauge(name, help);
        for s in states {
            if let Some(v) = s.listing.as_ref().ok().and_then(value) {
                m.sample(name, &[("cluster", s.name.as_str())], v);
            }
        }
    }
    m.finish()
}

fn complete(l: &Listing) -> impl Iterator<Item = &inspect::backups::BackupSummary> {
    l.backups.iter().filter(|b| b.status == "complete")
}
