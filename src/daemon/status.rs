//! `walden status`: one [`ClusterStatus`] per cluster, built from the daemon's
//! `status.json` (`status_file`), the store's listing and free space,
//! and (with a configuration file) the slot as the primary sees it. [`build`] is pure, so
//! the same report can be served as JSON over HTTP and turned into metrics.
//!
//! A cluster is unhealthy when its receiver has not been streaming for longer than
//! `receiver_down_after` (the daemon not running counts), its next backup is later than its
//! schedule plus `backup_grace`, the store records a WAL gap or misses segments after the
//! newest backup, or the store's free space is below `min_free_space`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::config::{ClusterConfig, Config, DEFAULT_BACKUP_GRACE, DEFAULT_RECEIVER_DOWN_AFTER};
use super::schedule;
use super::status_file::{self, STALE_AFTER, StatusFile, format_time, parse_time, seconds_since};
use crate::inspect::{self, Listing};
use crate::pg::{Connection, SessionKind};
use crate::store::{ClusterName, StoreError};
use crate::wal::Lsn;

/// Every cluster's status: what `walden status --json` prints (and `/status` serves).
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// Every cluster is healthy.
    pub healthy: bool,
    pub clusters: Vec<ClusterStatus>,
}

/// One cluster. The JSON keys are stable; README "walden status" documents them.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub healthy: bool,
    /// Why it is unhealthy, one line each; empty when healthy.
    pub problems: Vec<String>,
    pub daemon: DaemonView,
    pub receiver: ReceiverView,
    pub slot: SlotView,
    pub last_backup: Option<LastBackup>,
    pub backups: BackupsView,
    pub recoverable: Option<RecoverableView>,
    pub store: StoreView,
}

#[derive(Clone, Debug, Serialize)]
pub struct DaemonView {
    /// `walden run` is running for this cluster (its pid exists and it wrote status.json
    /// within the last 30 s).
    pub running: bool,
    pub pid: Option<u32>,
    pub started: Option<String>,
    /// When status.json was written, and how long ago.
    pub status_written: Option<String>,
    pub status_age_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReceiverView {
    /// `connecting`, `streaming`, `waiting-to-reconnect`, `stopped`, or
    /// `daemon-not-running`.
    pub state: String,
    /// When it entered that state (for `daemon-not-running`: when the daemon last wrote).
    pub since: Option<String>,
    pub timeline: Option<u32>,
    pub received_lsn: Option<Lsn>,
    pub flushed_lsn: Option<Lsn>,
    pub server_wal_end: Option<Lsn>,
    /// The server's WAL end less what is durable here.
    pub lag_bytes: Option<u64>,
    /// 0 when everything the server had is durable; otherwise how long ago the newest durable
    /// byte arrived.
    pub lag_seconds: Option<f64>,
    pub last_message: Option<String>,
    pub bytes_received: u64,
    pub segments_completed: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// The replication slot as the primary sees it (only with `--config`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SlotView {
    pub name: Option<String>,
    /// The primary was asked.
    pub checked: bool,
    pub exists: Option<bool>,
    pub active: Option<bool>,
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    /// WAL the slot holds on the primary: its current position less `restart_lsn`.
    pub retained_bytes: Option<u64>,
    /// Why the primary could not be asked.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastBackup {
    pub id: String,
    pub start_time: Option<String>,
    pub stop_time: Option<String>,
    /// Since its start.
    pub age_seconds: Option<f64>,
    pub bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BackupsView {
    /// Complete backups in the store.
    pub count: usize,
    pub schedule: Option<String>,
    pub next_due: Option<String>,
    pub running_since: Option<String>,
    /// Taken and failed since the daemon started.
    pub taken: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub last_prune: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecoverableView {
    pub from_backup: String,
    pub from_time: Option<String>,
    pub from_lsn: String,
    pub to_lsn: Option<Lsn>,
    pub to_timeline: Option<u32>,
    pub to_time: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreView {
    pub path: PathBuf,
    /// Bytes of this cluster's files.
    pub bytes: Option<u64>,
    /// Free bytes on the store's filesystem.
    pub free_bytes: Option<u64>,
    /// `min_free_space`; 0: not checked.
    pub min_free_bytes: u64,
    /// Why the store could not be read.
    pub error: Option<String>,
}

/// When a cluster counts as unhealthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub receiver_down_after: Duration,
    pub backup_grace: Duration,
    pub min_free_bytes: u64,
}

/// Everything [`build`] looks at.
pub struct Inputs<'a> {
    pub cluster: &'a str,
    pub now: SystemTime,
    pub file: Option<&'a StatusFile>,
    /// The daemon that wrote `file` still runs (see [`daemon_running`]).
    pub daemon_running: bool,
    /// The store's view of the cluster; `Err` when it could not be read (a cluster the
    /// receiver has not created yet is `Ok(None)`).
    pub listing: Result<Option<&'a Listing>, String>,
    pub store: StoreView,
    pub thresholds: Thresholds,
    /// The schedule in words, and when the next backup is due by it.
    pub schedule: Option<String>,
    pub backup_due: Option<SystemTime>,
    pub slot: SlotView,
}

/// Whether the daemon that wrote `file` still runs: not stopped, its pid exists, the file
/// is fresh.
pub fn daemon_running(file: &StatusFile, now: SystemTime) -> bool {
    let fresh = parse_time(&file.written)
        .is_some_and(|w| seconds_since(w, now) < STALE_AFTER.as_secs_f64());
    !file.stopped && fresh && status_file::process_exists(file.pid)
}

/// One cluster's status and health.
pub fn build(inputs: Inputs<'_>) -> ClusterStatus {
    let now = inputs.now;
    let mut problems = Vec::new();
    let file = inputs.file;
    let daemon = DaemonView {
        running: inputs.daemon_running,
        pid: file.map(|f| f.pid),
        started: file.map(|f| f.started.clone()),
        status_written: file.map(|f| f.written.clone()),
        status_age_seconds: file
            .and_then(|f| parse_time(&f.written))
            .map(|w| seconds_since(w, now)),
    };
    let receiver = receiver_view(file, inputs.daemon_running, now);
    let down_after = inputs.thresholds.receiver_down_after;
    match file {
        None => problems.push(
            "no status.json: walden run has not run for this cluster (or not with this store)"
                .to_string(),
        ),
        Some(f) if receiver.state != "streaming" => {
            let since = receiver
                .since
                .as_deref()
                .and_then(parse_time)
                .unwrap_or(now);
            let down = seconds_since(since, now);
            if down > down_after.as_secs_f64() {
                let what = if inputs.daemon_running {
                    format!("receiver {}", receiver.state.replace('-', " "))
                } else if f.stopped {
                    "walden run stopped".to_string()
                } else {
                    format!("walden run (pid {}) is not running", f.pid)
                };
                let error = receiver
                    .last_error
                    .as_deref()
                    .map(|e| format!(": last error: {e}"))
                    .unwrap_or_default();
                problems.push(format!(
                    "not streaming for {} ({what}){error}",
                    human_duration(down)
                ));
            }
        }
        Some(_) => {}
    }

    let listing = match &inputs.listing {
        Ok(l) => *l,
        Err(e) => {
            problems.push(format!("cannot read the store: {e}"));
            None
        }
    };
    let complete: Vec<_> = listing
        .map(|l| {
            l.backups
                .iter()
                .filter(|b| b.status == "complete")
                .collect()
        })
        .unwrap_or_default();
    let newest = complete.last();
    let last_backup = newest.map(|b| LastBackup {
        id: b.id.clone(),
        start_time: b.start_time.clone(),
        stop_time: b.stop_time.clone(),
        age_seconds: b
            .start_time
            .as_deref()
            .and_then(parse_time)
            .map(|t| seconds_since(t, now)),
        bytes: b.bytes,
    });
    if let (Some(schedule), Some(due)) = (&inputs.schedule, inputs.backup_due) {
        let late = seconds_since(due, now);
        if late > inputs.thresholds.backup_grace.as_secs_f64() {
            let what = match &last_backup {
                Some(b) => format!("the last backup is {}", b.id),
                None => "there is no backup yet".to_string(),
            };
            problems.push(format!(
                "backup overdue by {} ({schedule}; {what})",
                human_duration(late)
            ));
        }
    }
    if let Some(l) = listing {
        let after: Lsn = newest
            .and_then(|b| b.stop_lsn.as_deref())
            .and_then(|s| s.parse().ok())
            .unwrap_or(Lsn::INVALID);
        for g in l.wal.gaps.iter().filter(|g| g.to > after) {
            problems.push(format!(
                "WAL gap {}..{} on timeline {} (detected {}): restores cannot cross it; take a new base backup",
                g.from, g.to, g.timeline, g.detected
            ));
        }
        for t in &l.wal.timelines {
            if !t.missing.is_empty() {
                problems.push(format!(
                    "{} WAL segment(s) missing on timeline {}, first {}",
                    t.missing.len(),
                    t.timeline,
                    t.missing.first().map(String::as_str).unwrap_or("?")
                ));
            }
        }
    }
    let min = inputs.thresholds.min_free_bytes;
    if let Some(free) = inputs.store.free_bytes
        && min > 0
        && free < min
    {
        problems.push(format!(
            "store filesystem has {} free, below min_free_space {}",
            human_bytes(free),
            human_bytes(min)
        ));
    }
    if let Some(e) = &inputs.store.error {
        problems.push(format!("store: {e}"));
    }

    let backups = BackupsView {
        count: complete.len(),
        schedule: inputs.schedule.clone(),
        next_due: inputs.backup_due.map(format_time),
        running_since: file.and_then(|f| {
            inputs
                .daemon_running
                .then(|| f.backup.running_since.clone())
                .flatten()
        }),
        taken: file.map_or(0, |f| f.backup.taken),
        failed: file.map_or(0, |f| f.backup.failed),
        last_error: file.and_then(|f| f.backup.last_error.clone()),
        last_error_at: file.and_then(|f| f.backup.last_error_at.clone()),
        last_prune: file.and_then(|f| f.backup.last_prune.clone()),
    };
    let recoverable = listing
        .and_then(|l| l.recoverable.as_ref())
        .map(|w| RecoverableView {
            from_backup: w.from_backup.clone(),
            from_time: w.from_time.clone(),
            from_lsn: w.from_lsn.clone(),
            to_lsn: w.to_lsn,
            to_timeline: w.to_timeline.map(|t| t.0),
            to_time: w.to_time.clone(),
        });
    ClusterStatus {
        cluster: inputs.cluster.to_string(),
        healthy: problems.is_empty(),
        problems,
        daemon,
        receiver,
        slot: SlotView {
            name: inputs.slot.name.or_else(|| file.map(|f| f.slot.clone())),
            ..inputs.slot
        },
        last_backup,
        backups,
        recoverable,
        store: StoreView {
            min_free_bytes: min,
            ..inputs.store
        },
    }
}

fn receiver_view(file: Option<&StatusFile>, running: bool, now: SystemTime) -> ReceiverView {
    let Some(f) = file else {
        return ReceiverView {
            state: "daemon-not-running".into(),
            ..ReceiverView::default()
        };
    };
    let r = &f.receiver;
    let lag_bytes = match (r.server_wal_end, r.flushed_lsn) {
        (Some(end), Some(flushed)) if running => Some(end.0.saturating_sub(flushed.0)),
        _ => None,
    };
    let lag_seconds = match lag_bytes {
        Some(0) => Some(0.0),
        Some(_) => r
            .flushed_arrived
            .as_deref()
            .and_then(parse_time)
            .map(|t| seconds_since(t, now)),
        None => None,
    };
    let (state, since) = if running {
        (r.state.clone(), Some(r.since.clone()))
    } else {
        // Down since the daemon last saw it streaming (or since it stopped streaming).
        let since = if r.state == "streaming" {
            f.written.clone()
        } else {
            r.since.clone()
        };
        ("daemon-not-running".to_string(), Some(since))
    };
    ReceiverView {
        state,
        since,
        timeline: r.timeline,
        received_lsn: r.received_lsn,
        flushed_lsn: r.flushed_lsn,
        server_wal_end: r.server_wal_end,
        lag_bytes,
        lag_seconds,
        last_message: r.last_message.clone(),
        bytes_received: r.bytes_received,
        segments_completed: r.segments_completed,
        restarts: r.restarts,
        last_error: r.last_error.clone(),
        last_error_at: r.last_error_at.clone(),
    }
}

/// Why `walden status` could not report at all.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot list the clusters of store {}: {source} (check --store)", store.display())]
    ListStore {
        store: PathBuf,
        source: std::io::Error,
    },
    #[error("store {} holds no cluster (no directory with cluster.json or status.json)", .0.display())]
    NoClusters(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The status of every cluster of `config`, asking each primary about its slot.
pub async fn from_config(config: &Config, now: SystemTime) -> StatusReport {
    let tz = jiff::tz::TimeZone::system();
    let mut clusters = Vec::new();
    for c in &config.clusters {
        let thresholds = Thresholds {
            receiver_down_after: config.status.receiver_down_after,
            backup_grace: config.status.backup_grace,
            min_free_bytes: config.min_free_space,
        };
        let slot = query_slot(c).await;
        let local = Local::read(&config.store, &c.name, now);
        let schedule = c.backup.map(|b| b.schedule);
        let backup_due = schedule.and_then(|s| {
            let last = local.last_backup_start();
            match last {
                Some(_) => schedule::due_at(&s, last, &tz),
                // The first backup is due when the daemon started.
                None => local.file.as_ref().and_then(|f| parse_time(&f.started)),
            }
        });
        clusters.push(local.build(
            &config.store,
            c.name.as_str(),
            thresholds,
            schedule.map(|s| s.to_string()),
            backup_due,
            slot,
            now,
        ));
    }
    report(clusters)
}

/// The status of `cluster` (or every cluster) of `store`, from status.json and the store
/// alone; thresholds and schedule as the daemon recorded them.
pub fn from_store(
    store: &Path,
    cluster: Option<&ClusterName>,
    now: SystemTime,
) -> Result<StatusReport, StatusError> {
    let names = match cluster {
        Some(c) => vec![c.clone()],
        None => clusters_in(store)?,
    };
    let mut clusters = Vec::new();
    for name in &names {
        let local = Local::read(store, name, now);
        let file = local.file.as_ref();
        let thresholds = Thresholds {
            receiver_down_after: file.map_or(DEFAULT_RECEIVER_DOWN_AFTER, |f| {
                Duration::from_secs(f.receiver_down_after_seconds)
            }),
            backup_grace: file.map_or(DEFAULT_BACKUP_GRACE, |f| {
                Duration::from_secs(f.backup_grace_seconds)
            }),
            min_free_bytes: file.map_or(0, |f| f.disk.min_free_bytes),
        };
        let schedule = file.and_then(|f| f.backup.schedule.clone());
        let backup_due = file.and_then(|f| {
            f.backup
                .next_due
                .as_deref()
                .and_then(parse_time)
                .or_else(|| {
                    f.backup
                        .schedule
                        .as_ref()
                        .and_then(|_| parse_time(&f.started))
                })
        });
        clusters.push(local.build(
            store,
            name.as_str(),
            thresholds,
            schedule,
            backup_due,
            SlotView::default(),
            now,
        ));
    }
    Ok(report(clusters))
}

fn report(clusters: Vec<ClusterStatus>) -> StatusReport {
    StatusReport {
        healthy: clusters.iter().all(|c| c.healthy),
        clusters,
    }
}

/// The names of the clusters in `store`, sorted.
fn clusters_in(store: &Path) -> Result<Vec<ClusterName>, StatusError> {
    let list = std::fs::read_dir(store).map_err(|source| StatusError::ListStore {
        store: store.to_path_buf(),
        source,
    })?;
    let mut names: Vec<ClusterName> = list
        .filter_map(Result::ok)
        .filter(|e| {
            let dir = e.path();
            dir.join("cluster.json").is_file() || dir.join(status_file::FILE_NAME).is_file()
        })
        .filter_map(|e| ClusterName::new(&e.file_name().to_string_lossy()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    if names.is_empty() {
        return Err(StatusError::NoClusters(store.to_path_buf()));
    }
    Ok(names)
}

/// What the local store says about a cluster.
struct Local {
    file: Option<StatusFile>,
    file_error: Option<String>,
    running: bool,
    listing: Result<Option<Listing>, String>,
    bytes: Option<u64>,
    free: Result<u64, String>,
}

impl Local {
    fn read(store: &Path, name: &ClusterName, now: SystemTime) -> Local {
        let (file, file_error) = match status_file::read(store, name) {
            Ok(f) => (f, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let running = file.as_ref().is_some_and(|f| daemon_running(f, now));
        let dir = store.join(name.as_str());
        let listing = if dir.join("cluster.json").is_file() {
            inspect::list(store, name)
                .map(Some)
                .map_err(|e| e.to_string())
        } else {
            Ok(None)
        };
        Local {
            file,
            file_error,
            running,
            listing,
            bytes: tree_size(&dir).ok(),
            free: crate::store::free_space(store).map_err(|e| e.to_string()),
        }
    }

    fn last_backup_start(&self) -> Option<SystemTime> {
        let listing = self.listing.as_ref().ok()?.as_ref()?;
        listing
            .backups
            .iter()
            .rev()
            .find(|b| b.status == "complete")
            .and_then(|b| b.start_time.as_deref())
            .and_then(parse_time)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        store: &Path,
        cluster: &str,
        thresholds: Thresholds,
        schedule: Option<String>,
        backup_due: Option<SystemTime>,
        slot: SlotView,
        now: SystemTime,
    ) -> ClusterStatus {
        let mut status = build(Inputs {
            cluster,
            now,
            file: self.file.as_ref(),
            daemon_running: self.running,
            listing: self
                .listing
                .as_ref()
                .map(Option::as_ref)
                .map_err(Clone::clone),
            store: StoreView {
                path: store.to_path_buf(),
                bytes: self.bytes,
                free_bytes: self.free.as_ref().ok().copied(),
                min_free_bytes: thresholds.min_free_bytes,
                error: self.free.as_ref().err().cloned(),
            },
            thresholds,
            schedule,
            backup_due,
            slot,
        });
        if let Some(e) = &self.file_error {
            status.problems.push(e.clone());
            status.healthy = false;
        }
        status
    }
}

/// Bytes of the regular files under `dir` (symbolic links not followed; files that vanish
/// while counting are skipped).
pub fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if meta.is_dir() {
            total = total.saturating_add(tree_size(&entry.path()).unwrap_or(0));
        } else if meta.is_file() {
            total = total.saturating_add(meta.len());
        }
    }
    Ok(total)
}

/// Asks the primary about the cluster's slot over a normal SQL session (10 s at most).
pub async fn query_slot(c: &ClusterConfig) -> SlotView {
    let mut view = SlotView {
        name: Some(c.slot.as_str().to_string()),
        checked: true,
        ..SlotView::default()
    };
    let asked = tokio::time::timeout(Duration::from_secs(10), ask_slot(c)).await;
    match asked {
        Ok(Ok(Some((active, restart_lsn, wal_status, retained)))) => {
            view.exists = Some(true);
            view.active = Some(active);
            view.restart_lsn = restart_lsn;
            view.wal_status = wal_status;
            view.retained_bytes = retained;
        }
        Ok(Ok(None)) => view.exists = Some(false),
        Ok(Err(e)) => view.error = Some(e),
        Err(_) => view.error = Some("the server did not answer within 10 s".into()),
    }
    view
}

type SlotRow = (bool, Option<Lsn>, Option<String>, Option<u64>);

async fn ask_slot(c: &ClusterConfig) -> Result<Option<SlotRow>, String> {
    let mut conn_config = crate::backup::take::sql_config(&c.conn);
    if let Some(file) = &c.password_file {
        let password = super::config::read_password_file(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        conn_config.set_password(Some(password));
    }
    let mut conn = Connection::connect(&conn_config, SessionKind::Sql)
        .await
        .map_err(|e| e.to_string())?;
    let wal_status = if conn.server_version().major() >= 13 {
        "wal_status"
    } else {
        "NULL::text"
    };
    // Slot names are [a-z0-9_]: safe to quote as a literal.
    let sql = format!(
        "SELECT active, restart_lsn, {wal_status}, \
         (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
          ELSE pg_current_wal_lsn() END - restart_lsn)::bigint \
         FROM pg_replication_slots WHERE slot_name = '{}'",
        c.slot.as_str()
    );
    let results = conn.simple_query(&sql).await.map_err(|e| e.to_string());
    conn.close().await;
    let results = results?;
    let Some(row) = results.first().and_then(|r| r.rows.first()) else {
        return Ok(None);
    };
    let text = |e: crate::pg::RowError| e.to_string();
    let active = row.text(0).map_err(text)? == Some("t");
    let restart = row.parse::<Lsn>(1).map_err(text)?;
    let wal_status = row.text(2).map_err(text)?.map(str::to_string);
    let retained = row
        .parse::<i64>(3)
        .map_err(text)?
        .map(|b| b.max(0).unsigned_abs());
    Ok(Some((active, restart, wal_status, retained)))
}

/// `1.5 GB`, `12.0 MB`, `512 B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `3h 2m`, `45s`, `2d 4h`.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s / 60 % 60),
        _ => format!("{}d {}h", s / 86_400, s / 3600 % 24),
    }
}

impl StatusReport {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.clusters {
            out += &c.to_text();
        }
        out
    }
}

impl ClusterStatus {
    /// The human-readable form: a headline, then one line per aspect.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "cluster {}: {}\n",
            self.cluster,
            if self.healthy { "healthy" } else { "UNHEALTHY" }
        );
        for p in &self.problems {
            let _ = writeln!(out, "  problem: {p}");
        }
        let r = &self.receiver;
        let opt = |l: Option<Lsn>| l.map_or("-".to_string(), |l| l.to_string());
        let _ = writeln!(
            out,
            "  receiver: {}{}{}",
            r.state.replace('-', " "),
            r.since
                .as_deref()
                .map(|s| format!(" since {s}"))
                .unwrap_or_default(),
            r.timeline
                .map(|t| format!(", timeline {t}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "    received {}, flushed {}, server at {}; lag {}, {}",
            opt(r.received_lsn),
            opt(r.flushed_lsn),
            opt(r.server_wal_end),
            r.lag_bytes.map_or("-".into(), human_bytes),
            r.lag_seconds.map_or("-".into(), |s| format!("{s:.1} s"))
        );
        let _ = writeln!(
            out,
            "    {} received, {} segments completed, {} restarts",
            human_bytes(r.bytes_received),
            r.segments_completed,
            r.restarts
        );
        if let Some(e) = &r.last_error {
            let _ = writeln!(
                out,
                "    last error{}: {e}",
                r.last_error_at
                    .as_deref()
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_default()
            );
        }
        let s = &self.slot;
        let name = s.name.as_deref().unwrap_or("-");
        let _ = match (&s.error, s.exists, s.checked) {
            (Some(e), _, _) => writeln!(out, "  slot {name}: cannot ask the server: {e}"),
            (None, Some(false), _) => writeln!(out, "  slot {name}: does not exist on the server"),
            (None, Some(true), _) => writeln!(
                out,
                "  slot {name}: {}, restart_lsn {}, wal_status {}, holds {} on the server",
                if s.active == Some(true) {
                    "active"
                } else {
                    "inactive"
                },
                opt(s.restart_lsn),
                s.wal_status.as_deref().unwrap_or("-"),
                s.retained_bytes.map_or("-".into(), human_bytes)
            ),
            _ => writeln!(out, "  slot {name}: not checked (use --config)"),
        };
        let b = &self.backups;
        let _ = match &self.last_backup {
            Some(l) => writeln!(
                out,
                "  last backup: {}, {} old ({} complete backups)",
                l.id,
                l.age_seconds.map_or("?".into(), human_duration),
                b.count
            ),
            None => writeln!(out, "  last backup: none"),
        };
        let _ = writeln!(
            out,
            "    schedule: {}{}{}",
            b.schedule.as_deref().unwrap_or("none"),
            b.next_due
                .as_deref()
                .map(|d| format!(", next due {d}"))
                .unwrap_or_default(),
            b.running_since
                .as_deref()
                .map(|d| format!(", one running since {d}"))
                .unwrap_or_default()
        );
        if let Some(e) = &b.last_error {
            let _ = writeln!(out, "    last backup error: {e}");
        }
        let _ = match &self.recoverable {
            Some(w) => writeln!(
                out,
                "  recoverable: from {} ({}, backup {}) to {} ({})",
                w.from_lsn,
                w.from_time.as_deref().unwrap_or("?"),
                w.from_backup,
                opt(w.to_lsn),
                w.to_time.as_deref().unwrap_or("?")
            ),
            None => writeln!(out, "  recoverable: nothing (no usable backup)"),
        };
        let st = &self.store;
        let _ = writeln!(
            out,
            "  store: {}, {} for this cluster, {} free{}",
            st.path.display(),
            st.bytes.map_or("?".into(), human_bytes),
            st.free_bytes.map_or("?".into(), human_bytes),
            if st.min_free_bytes > 0 {
                format!(" (minimum {})", human_bytes(st.min_free_bytes))
            } else {
                String::new()
            }
        );
        out
    }
}

#[cfg(test)]
mod tests;
