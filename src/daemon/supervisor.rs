//! `walden run`: one supervisor task per `[cluster.NAME]`, each independent of the others.
//!
//! Per cluster, three loops run side by side until the cluster is stopped:
//! - the **receiver**: `receive::run` with the configured slot (created if missing), restarted
//!   with capped backoff whenever it returns (ERROR once per distinct error, WARN for
//!   repeats); a full disk is one such error: nothing is written past the last durable byte,
//!   and streaming resumes from the store when space returns;
//! - **backups**: one at a time, when `schedule::next_backup` says so and the receiver is
//!   streaming (a cluster without a backup gets one at once, a missed schedule runs once),
//!   each followed by retention (`store::prune`) with the cluster's policy;
//! - the **reporter**: every few seconds checks the store's free space against
//!   `min_free_space` and writes `STORE/<cluster>/status.json` atomically (again at stop).
//!
//! [`run`] starts them, stops them all on SIGTERM/SIGINT (receivers make everything durable
//! first; a backup in flight is abandoned) and on SIGHUP reloads the file: new clusters are
//! started, removed ones stopped, changed ones restarted, unchanged ones left alone. A file
//! that does not load is logged and the running configuration kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use super::config::{self, BackupPolicy, ClusterConfig, Config, ConfigError, StatusThresholds};
use super::schedule::{self, Due};
use super::status::human_bytes;
use super::status_file::{
    self, BackupSnapshot, DiskSnapshot, FORMAT, ReceiverSnapshot, StatusFile, WRITE_EVERY,
    format_time,
};
use crate::backup::{self, BackupError, BackupOptions};
use crate::pg::{ConnParams, quote};
use crate::receive::{self, ReceiveOptions, ReceiverState, ReceiverStatus, StopAt};
use crate::store::{self, RetentionPolicy, StoreError};

/// Why `walden run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Http(#[from] super::http::HttpError),
}

impl RunError {
    /// 2 for a configuration that does not load, 4 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) => crate::exit::USAGE,
            RunError::Store(_) | RunError::Http(_) => crate::exit::FAILURE,
        }
    }
}

/// Shortest and longest wait before a receiver that returned is started again.
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A receiver that ran this long before it returned starts over from [`RESTART_MIN`].
const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);
/// Shortest and longest wait before a failed backup is tried again.
const BACKUP_RETRY_MIN: Duration = Duration::from_secs(30);
const BACKUP_RETRY_MAX: Duration = Duration::from_secs(3600);
/// The schedule is looked at again at least this often (clock changes, retries).
const SCHEDULE_RECHECK: Duration = Duration::from_secs(60);
/// How long a scheduled backup waits for the receiver to store its WAL.
const BACKUP_WAIT_FOR_WAL: Duration = Duration::from_secs(300);

/// Everything a cluster's supervisor depends on: when any of it changes on reload, the
/// cluster is restarted.
#[derive(Clone, Debug, PartialEq)]
struct Settings {
    cluster: ClusterConfig,
    store: PathBuf,
    min_free_space: u64,
    status: StatusThresholds,
}

struct Supervised {
    settings: Arc<Settings>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the daemon with the configuration in `config_path` until `shutdown` turns true;
/// each message on `reload` reloads the file.
pub async fn run(
    config_path: &Path,
    mut shutdown: watch::Receiver<bool>,
    mut reload: mpsc::Receiver<()>,
) -> Result<(), RunError> {
    let config = config::load(config_path)?;
    store::durable::create_dir_all_durable(&config.store)?;
    tracing::info!(
        "walden run: {} cluster(s), store {}, pid {}",
        config.clusters.len(),
        config.store.display(),
        std::process::id()
    );
    let http = match &config.http {
        Some(http) => {
            let status = super::live_status::DaemonStatus::new(
                config_path,
                config.clone(),
                tokio::runtime::Handle::current(),
            );
            let server =
                super::http::Server::bind(http, config.store.clone(), std::sync::Arc::new(status))
                    .await?;
            Some(tokio::spawn(server.run(shutdown.clone())))
        }
        None => None,
    };
    let mut clusters = BTreeMap::new();
    apply(&config, &mut clusters).await;
    let mut reload_open = true;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            message = reload.recv(), if reload_open => match message {
                None => reload_open = false,
                Some(()) => match config::load(config_path) {
                    Ok(new) => {
                        if let Err(e) = store::durable::create_dir_all_durable(&new.store) {
                            tracing::error!("reload: cannot create the store: {e}; keeping the running configuration");
                        } else {
                            apply(&new, &mut clusters).await;
                            tracing::info!("configuration reloaded: {} cluster(s)", clusters.len());
                        }
                    }
                    Err(e) => tracing::error!("reload: {e}; keeping the running configuration"),
                },
            },
        }
    }
    tracing::info!("stopping {} cluster(s)", clusters.len());
    for c in clusters.values() {
        let _ = c.stop.send(true);
    }
    for (name, c) in clusters {
        if let Err(e) = c.task.await {
            tracing::error!("cluster {name}: its supervisor crashed: {e}");
        }
    }
    if let Some(http) = http {
        // It heard the same shutdown and lets requests in flight finish.
        let _ = http.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Makes the running clusters match `config`.
async fn apply(config: &Config, clusters: &mut BTreeMap<String, Supervised>) {
    let wanted: BTreeMap<String, Settings> = config
        .clusters
        .iter()
        .map(|c| {
            let settings = Settings {
                cluster: c.clone(),
                store: config.store.clone(),
                min_free_space: config.min_free_space,
                status: config.status,
            };
            (c.name.to_string(), settings)
        })
        .collect();
    let outdated: Vec<String> = clusters
        .iter()
        .filter(|(name, c)| wanted.get(*name) != Some(&*c.settings))
        .map(|(name, _)| name.clone())
        .collect();
    for name in outdated {
        let Some(c) = clusters.remove(&name) else {
            continue;
        };
        let why = if wanted.contains_key(&name) {
            "changed: restarting it"
        } else {
            "removed from the configuration: stopping it"
        };
        tracing::info!("cluster {name} {why}");
        let _ = c.stop.send(true);
        if let Err(e) = c.task.await {
            tracing::error!("cluster {name}: its supervisor crashed: {e}");
        }
    }
    for (name, settings) in wanted {
        if clusters.contains_key(&name) {
            continue;
        }
        let settings = Arc::new(settings);
        let (stop, stop_rx) = watch::channel(false);
        let span = tracing::info_span!("cluster", name = %name);
        let task = tokio::spawn(supervise(settings.clone(), stop_rx).instrument(span));
        clusters.insert(
            name,
            Supervised {
                settings,
                stop,
                task,
            },
        );
    }
}

/// What the three loops of a cluster share (never held across an await).
#[derive(Default)]
struct Shared {
    restarts: u64,
    backup: BackupSnapshot,
    disk: DiskSnapshot,
}

type SharedState = Arc<Mutex<Shared>>;

fn with<T>(shared: &SharedState, f: impl FnOnce(&mut Shared) -> T) -> T {
    let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

/// One cluster, until `stop` turns true.
async fn supervise(settings: Arc<Settings>, stop: watch::Receiver<bool>) {
    let started = SystemTime::now();
    let (status_tx, status_rx) = watch::channel(ReceiverStatus::new(started));
    let shared: SharedState = Arc::new(Mutex::new(Shared {
        backup: BackupSnapshot {
            schedule: settings.cluster.backup.map(|b| b.schedule.to_string()),
            ..BackupSnapshot::default()
        },
        disk: DiskSnapshot {
            min_free_bytes: settings.min_free_space,
            ..DiskSnapshot::default()
        },
        ..Shared::default()
    }));
    tracing::info!(
        "supervising: slot {}, {}",
        settings.cluster.slot,
        settings
            .cluster
            .backup
            .map_or("no scheduled backups".to_string(), |b| format!(
                "backups {}",
                b.schedule
            ))
    );
    let mut reporter = Reporter {
        settings: &settings,
        status: status_rx.clone(),
        shared: &shared,
        started,
        last_error: None,
    };
    tokio::join!(
        receiver_loop(&settings, status_tx, stop.clone(), &shared),
        backup_loop(&settings, status_rx, stop.clone(), &shared),
        reporter.run(stop),
    );
    reporter.write(true).await;
}

/// The connection string with the password from `password_file`, if there is one.
fn source_with_password(c: &ClusterConfig) -> Result<String, String> {
    let Some(file) = &c.password_file else {
        return Ok(c.source.clone());
    };
    let password = config::read_password_file(file)
        .map_err(|e| format!("cannot read password_file {}: {e}", file.display()))?;
    let params = ConnParams::parse(&c.source).map_err(|e| e.to_string())?;
    let mut words: Vec<String> = params
        .iter()
        .filter(|(k, _)| *k != "password")
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    words.push(format!("password={}", quote(&password)));
    Ok(words.join(" "))
}

/// Logs an error at ERROR the first time, at WARN when it repeats the previous one.
fn log_error(last: &mut Option<String>, text: String, retry: Duration) {
    let wait = humantime::format_duration(Duration::from_secs(retry.as_secs().max(1)));
    if last.as_deref() == Some(text.as_str()) {
        tracing::warn!("{text} (again); retrying in {wait}");
    } else {
        tracing::error!("{text}; retrying in {wait}");
        *last = Some(text);
    }
}

/// Waits `d`; false when `stop` turned true first.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let slept = tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    slept && !*stop.borrow()
}

async fn receiver_loop(
    s: &Settings,
    status: watch::Sender<ReceiverStatus>,
    mut stop: watch::Receiver<bool>,
    shared: &SharedState,
) {
    let c = &s.cluster;
    let mut backoff = RESTART_MIN;
    let mut last_error = None;
    while !*stop.borrow() {
        let began = Instant::now();
        let bytes_before = status.borrow().bytes_received;
        let result = match source_with_password(c) {
            Ok(source) => {
                let options = ReceiveOptions {
                    source,
                    store: s.store.clone(),
                    cluster: c.name.clone(),
                    slot: Some(c.slot.clone()),
                    create_slot: true,
                    synchronous: c.synchronous,
                    status_interval: c.status_interval,
                    compression: c.compression,
                    stop: StopAt::Never,
                    max_backoff: RESTART_MAX,
                    status: Some(status.clone()),
                };
                receive::run(&options, stop.clone())
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => {
                status.send_modify(|r| {
                    r.state = ReceiverState::Stopped;
                    r.last_error = Some(e.clone());
                    r.last_error_at = Some(SystemTime::now());
                });
                Err(e)
            }
        };
        if *stop.borrow() {
            break;
        }
        if began.elapsed() >= RESTART_RESET_AFTER || status.borrow().bytes_received > bytes_before {
            backoff = RESTART_MIN;
        }
        let text = match result {
            Ok(()) => "the receiver stopped unexpectedly".to_string(),
            Err(e) => format!("receiver: {e}"),
        };
        log_error(&mut last_error, text, backoff);
        with(shared, |sh| sh.restarts += 1);
        if !pause(backoff, &mut stop).await {
            break;
        }
        backoff = (backoff * 2).min(RESTART_MAX);
    }
}

fn backup_options(s: &Settings, policy: &BackupPolicy) -> Result<BackupOptions, String> {
    Ok(BackupOptions {
        source: source_with_password(&s.cluster)?,
        store: s.store.clone(),
        cluster: s.cluster.name.clone(),
        label: None,
        fast_checkpoint: policy.fast_checkpoint,
        compression: policy.compression,
        max_rate: policy.max_rate,
        wait_for_wal: BACKUP_WAIT_FOR_WAL,
        include_wal: false,
        verify_checksums: true,
        progress_bar: false,
    })
}

/// The start of the newest complete backup in the store, if any.
async fn last_backup_start(s: &Settings) -> Result<Option<SystemTime>, String> {
    let (store, cluster) = (s.store.clone(), s.cluster.name.clone());
    let listed = tokio::task::spawn_blocking(move || {
        if !store.join(cluster.as_str()).join("cluster.json").is_file() {
            return Ok(Vec::new());
        }
        crate::inspect::backups::backups(&store, &cluster)
    })
    .await
    .map_err(|e| format!("listing backups crashed: {e}"))?
    .map_err(|e| e.to_string())?;
    Ok(listed
        .iter()
        .rev()
        .find(|b| b.status == "complete")
        .and_then(|b| b.start_time.as_deref())
        .and_then(status_file::parse_time))
}

async fn backup_loop(
    s: &Settings,
    mut receiver: watch::Receiver<ReceiverStatus>,
    mut stop: watch::Receiver<bool>,
    shared: &SharedState,
) {
    let Some(policy) = s.cluster.backup else {
        let _ = stop.wait_for(|s| *s).await;
        return;
    };
    let tz = jiff::tz::TimeZone::system();
    let mut retry_at: Option<SystemTime> = None;
    let mut failures = 0u32;
    let mut last_error = None;
    while !*stop.borrow() {
        let now = SystemTime::now();
        let due = match last_backup_start(s).await {
            Ok(last) => {
                let due_at = schedule::due_at(&policy.schedule, last, &tz);
                with(shared, |sh| sh.backup.next_due = due_at.map(format_time));
                schedule::next_backup(&policy.schedule, last, now, &tz)
            }
            Err(e) => {
                tracing::warn!("cannot list backups: {e}");
                Due::At(now + SCHEDULE_RECHECK)
            }
        };
        let mut start_at = match due {
            Due::Now => now,
            Due::At(t) => t,
        };
        if let Some(r) = retry_at {
            start_at = start_at.max(r);
        }
        if let Ok(wait) = start_at.duration_since(now)
            && !wait.is_zero()
        {
            if !pause(wait.min(SCHEDULE_RECHECK), &mut stop).await {
                return;
            }
            continue;
        }
        // Due: a backup needs the receiver to store its WAL.
        tokio::select! {
            streaming = receiver.wait_for(|r| r.state == ReceiverState::Streaming) => {
                if streaming.is_err() {
                    return;
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let result = match backup_options(s, &policy) {
            Ok(options) => {
                tracing::info!("starting a scheduled base backup ({})", policy.schedule);
                let began = SystemTime::now();
                with(shared, |sh| {
                    sh.backup.running_since = Some(format_time(began));
                });
                let result = backup::take_backup(&options, stop.clone()).await;
                with(shared, |sh| sh.backup.running_since = None);
                result.map_err(|e| match e {
                    BackupError::Interrupted => None,
                    e => Some(e.to_string()),
                })
            }
            Err(e) => Err(Some(e)),
        };
        match result {
            Ok(record) => {
                tracing::info!("{}", record.summary());
                with(shared, |sh| sh.backup.taken += 1);
                failures = 0;
                retry_at = None;
                last_error = None;
                prune(s, shared).await;
            }
            Err(None) => return,
            Err(Some(e)) => {
                if *stop.borrow() {
                    return;
                }
                failures += 1;
                let delay = BACKUP_RETRY_MIN
                    .saturating_mul(1 << failures.min(8).saturating_sub(1))
                    .min(BACKUP_RETRY_MAX);
                retry_at = Some(SystemTime::now() + delay);
                with(shared, |sh| {
                    sh.backup.failed += 1;
                    sh.backup.last_error = Some(e.clone());
                    sh.backup.last_error_at = Some(format_time(SystemTime::now()));
                });
                log_error(&mut last_error, format!("backup failed: {e}"), delay);
            }
        }
    }
}

/// Retention after a backup, with the cluster's policy (nothing without one).
async fn prune(s: &Settings, shared: &SharedState) {
    let r = s.cluster.retention;
    if r.keep_backups.is_none() && r.recovery_window.is_none() {
        return;
    }
    let policy = RetentionPolicy {
        keep_backups: r.keep_backups.map(|k| k as usize),
        recovery_window: r.recovery_window,
    };
    let (store, cluster) = (s.store.clone(), s.cluster.name.clone());
    let result = tokio::task::spawn_blocking(move || {
        store::prune(&store, &cluster, &policy, false, SystemTime::now())
    })
    .await;
    let report = match result {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            tracing::warn!("retention: {e}");
            return;
        }
        Err(e) => {
            tracing::error!("retention crashed: {e}");
            return;
        }
    };
    for w in &report.warnings {
        tracing::warn!("retention: {w}");
    }
    let mut done = Vec::new();
    if !report.deleted_backups.is_empty() {
        let ids: Vec<String> = report
            .deleted_backups
            .iter()
            .map(|b| b.id.to_string())
            .collect();
        done.push(format!("deleted backup(s) {}", ids.join(", ")));
    }
    if report.deleted_wal.count > 0 {
        done.push(format!(
            "deleted {} WAL file(s) {}..{}",
            report.deleted_wal.count,
            report.deleted_wal.first.as_deref().unwrap_or("?"),
            report.deleted_wal.last.as_deref().unwrap_or("?")
        ));
    }
    if !report.removed_interrupted.is_empty() {
        done.push(format!(
            "removed interrupted {}",
            report.removed_interrupted.join(", ")
        ));
    }
    let text = if done.is_empty() {
        "nothing to delete".to_string()
    } else {
        format!(
            "{}; {} freed",
            done.join("; "),
            human_bytes(report.bytes_freed)
        )
    };
    tracing::info!("retention: {text}");
    with(shared, |sh| sh.backup.last_prune = Some(text));
}

/// Checks free space and writes status.json.
struct Reporter<'a> {
    settings: &'a Settings,
    status: watch::Receiver<ReceiverStatus>,
    shared: &'a SharedState,
    started: SystemTime,
    /// The last failure to write status.json, logged once.
    last_error: Option<String>,
}

impl Reporter<'_> {
    async fn run(&mut self, mut stop: watch::Receiver<bool>) {
        loop {
            self.check_disk().await;
            self.write(false).await;
            if !pause(WRITE_EVERY, &mut stop).await {
                return;
            }
        }
    }

    async fn check_disk(&mut self) {
        let store = self.settings.store.clone();
        let free = tokio::task::spawn_blocking(move || store::free_space(&store))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let min = self.settings.min_free_space;
        let was_low = with(self.shared, |sh| sh.disk.low);
        match free {
            Ok(free) => {
                let low = min > 0 && free < min;
                if low && !was_low {
                    tracing::error!(
                        "the store's filesystem ({}) has {} free, below min_free_space {}: free space or lower the retention, or WAL archiving will stop when it is full",
                        self.settings.store.display(),
                        human_bytes(free),
                        human_bytes(min)
                    );
                } else if was_low && !low {
                    tracing::info!(
                        "the store's filesystem has {} free again",
                        human_bytes(free)
                    );
                }
                with(self.shared, |sh| {
                    sh.disk.free_bytes = Some(free);
                    sh.disk.low = low;
                    sh.disk.error = None;
                });
            }
            Err(e) => {
                tracing::warn!("cannot check free space: {e}");
                with(self.shared, |sh| sh.disk.error = Some(e));
            }
        }
    }

    async fn write(&mut self, stopped: bool) {
        let s = self.settings;
        let receiver = self.status.borrow().clone();
        let file = with(self.shared, |sh| StatusFile {
            format: FORMAT,
            cluster: s.cluster.name.to_string(),
            pid: std::process::id(),
            started: format_time(self.started),
            written: format_time(SystemTime::now()),
            stopped,
            slot: s.cluster.slot.to_string(),
            receiver: ReceiverSnapshot::new(&receiver, sh.restarts),
            backup: sh.backup.clone(),
            disk: sh.disk.clone(),
            receiver_down_after_seconds: s.status.receiver_down_after.as_secs(),
            backup_grace_seconds: s.status.backup_grace.as_secs(),
        });
        let store = s.store.clone();
        let written = tokio::task::spawn_blocking(move || status_file::write(&store, &file))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match written {
            Ok(()) => {
                if self.last_error.take().is_some() {
                    tracing::info!("status.json written again");
                }
            }
            Err(e) => {
                if self.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!("cannot write the status file: {e}");
                    self.last_error = Some(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(text: &str) -> ClusterConfig {
        let config = config::parse(text, Path::new("/etc/walden/walden.toml")).expect("config");
        config.clusters.into_iter().next().expect("a cluster")
    }

    #[test]
    fn password_file_joins_the_connection_string() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "it's secret\nignored\n").expect("write");
        let c = cluster(&format!(
            "store = \"/s\"\n[cluster.main]\nsource = \"postgresql://walden@db1:5433/?sslmode=require\"\npassword_file = \"{}\"\n",
            pw.display()
        ));
        let source = source_with_password(&c).expect("source");
        let params = ConnParams::parse(&source).expect("parses back");
        assert_eq!(params.get("password"), Some("it's secret"));
        assert_eq!(params.get("host"), Some("db1"));
        assert_eq!(params.get("port"), Some("5433"));
        assert_eq!(params.get("user"), Some("walden"));
        assert_eq!(params.get("sslmode"), Some("require"));

        let plain = cluster("store = \"/s\"\n[cluster.main]\nsource = \"host=db1\"\n");
        assert_eq!(source_with_password(&plain).as_deref(), Ok("host=db1"));

        std::fs::remove_file(&pw).expect("remove");
        let err = source_with_password(&c).expect_err("file gone");
        assert!(err.contains("cannot read password_file"), "{err}");
    }

    #[test]
    fn repeated_errors_are_remembered_once() {
        let mut last = None;
        log_error(&mut last, "a".into(), Duration::from_secs(1));
        assert_eq!(last.as_deref(), Some("a"));
        log_error(&mut last, "a".into(), Duration::from_secs(2));
        assert_eq!(last.as_deref(), Some("a"));
        log_error(&mut last, "b".into(), Duration::from_secs(2));
        assert_eq!(last.as_deref(), Some("b"));
    }
}
