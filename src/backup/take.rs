//! `walden backup`: one base backup of the whole cluster into the store.
//!
//! A network task pulls `BASE_BACKUP` events from the server and hands the same bytes to two
//! blocking threads: an [`ArchiveWriter`] that writes (or compresses) the archives and an
//! [`ArchiveChecker`] that checks them (decompressing the server's zstd). Then the manifest is checked, the
//! server's configuration files are captured when the role may read them, and the backup
//! waits until the store holds every WAL byte from its start to its stop position (written
//! by `walden receive`), unless it carries its own WAL. Only then is `backup.json` written
//! and `<ID>.partial` renamed to `<ID>`.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::sink::{ArchiveChecker, ArchiveRecord, ArchiveWriter, Checked, SinkError, Stored};
use crate::pg::{
    self, BackupEvent, BaseBackupOptions, ConnConfig, Connection, SessionKind, TablespaceInfo,
};
use crate::store::{self, BackupWriter, ClusterName, ServerIdentity, StoreError};
use crate::wal::{Lsn, TimelineId, WalSegSize};

/// What `walden backup` was asked to do.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub source: String,
    pub store: PathBuf,
    pub cluster: ClusterName,
    pub label: Option<String>,
    pub fast_checkpoint: bool,
    pub compression: BackupCompression,
    /// Bytes per second the server may send at most.
    pub max_rate: Option<u64>,
    /// How long to wait for `walden receive` to store the backup's WAL.
    pub wait_for_wal: Duration,
    /// Put the backup's WAL into the backup itself (the `WAL` option).
    pub include_wal: bool,
    /// Verify data-page checksums on the server (`VERIFY_CHECKSUMS`).
    pub verify_checksums: bool,
    /// Show a progress bar (stdout is a terminal).
    pub progress_bar: bool,
}

/// How archives are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupCompression {
    None,
    /// By walden, as the archives arrive.
    Zstd(i32),
    /// By the server (PostgreSQL 15 and later, built with zstd).
    ServerZstd(i32),
}

impl FromStr for BackupCompression {
    type Err = String;

    /// `none`, `zstd[:LEVEL]` or `server-zstd[:LEVEL]` (levels 1 to 19, default 3).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!(
                "invalid compression {s:?}: expected none, zstd[:LEVEL] or server-zstd[:LEVEL] (LEVEL 1-19)"
            )
        };
        let (method, level) = match s.split_once(':') {
            Some((m, l)) => (m, l.parse::<i32>().map_err(|_| invalid())?),
            None => (s, 3),
        };
        if !(1..=19).contains(&level) {
            return Err(invalid());
        }
        match method {
            "none" if !s.contains(':') => Ok(BackupCompression::None),
            "zstd" => Ok(BackupCompression::Zstd(level)),
            "server-zstd" => Ok(BackupCompression::ServerZstd(level)),
            _ => Err(invalid()),
        }
    }
}

impl std::fmt::Display for BackupCompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupCompression::None => f.write_str("none"),
            BackupCompression::Zstd(l) => write!(f, "zstd:{l}"),
            BackupCompression::ServerZstd(l) => write!(f, "server-zstd:{l}"),
        }
    }
}

/// Why a backup failed. [`BackupError::exit_code`] classifies it.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Pg(#[from] pg::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Sink(#[from] SinkError),
    #[error(
        "data page checksum verification failed on the server ({0}): the backup is not kept; fix the damaged pages (see the server log), or take it with --no-verify knowingly"
    )]
    Checksum(String),
    #[error(
        "the store does not hold the WAL from {start} to {stop} (timeline {timeline}) after waiting {waited} s: is `walden receive` running for cluster {cluster:?}? (or use --include-wal)"
    )]
    WalMissing {
        start: Lsn,
        stop: Lsn,
        timeline: TimelineId,
        waited: u64,
        cluster: String,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("internal error: {0}")]
    Internal(String),
}

impl BackupError {
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            BackupError::Config(_) => exit::USAGE,
            BackupError::Pg(e) if e.is_config() => exit::USAGE,
            BackupError::Store(e) if e.is_config() => exit::USAGE,
            BackupError::Pg(_) => exit::CONNECTION,
            _ => exit::FAILURE,
        }
    }
}

/// The outcome of a backup, as recorded in `backup.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BackupRecord {
    pub id: String,
    pub label: String,
    pub status: String,
    pub start_lsn: Lsn,
    pub start_timeline: TimelineId,
    pub stop_lsn: Lsn,
    pub stop_timeline: TimelineId,
    pub start_time: String,
    pub stop_time: String,
    pub server_version: String,
    pub server_version_num: u32,
    pub system_identifier: String,
    pub wal_segment_size: u64,
    pub compression: String,
    pub includes_wal: bool,
    pub from_standby: bool,
    pub archives: Vec<ArchiveRecord>,
    pub tablespaces: Vec<TablespaceRecord>,
    pub bytes: u64,
    pub manifest_files: usize,
    pub history_files: Vec<String>,
    pub config_files: ConfigCapture,
}

impl BackupRecord {
    /// The line printed when the backup is complete.
    pub fn summary(&self) -> String {
        format!(
            "backup {} complete: {} .. {} on timeline {}, {} archive{}, {} MB",
            self.id,
            self.start_lsn,
            self.stop_lsn,
            self.stop_timeline,
            self.archives.len(),
            if self.archives.len() == 1 { "" } else { "s" },
            self.bytes >> 20
        )
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TablespaceRecord {
    pub oid: u32,
    pub location: String,
    /// Its name (`pg_tablespace.spcname`) when an SQL session could read it.
    #[serde(default)]
    pub name: Option<String>,
}

/// Whether the server's configuration files were stored under `config/`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ConfigCapture {
    pub captured: bool,
    /// The names of the files stored under `config/`.
    pub files: Vec<String>,
    /// For each stored name, the setting and the path it had on the server.
    pub sources: Vec<ConfigSource>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ConfigSource {
    pub file: String,
    pub setting: String,
    pub server_path: String,
}

/// Archive bytes are handed to the writer and checker threads in batches of about this size.
const DATA_BATCH: usize = 1024 * 1024;

/// A piece of the stream, for both the writer and the checker.
#[derive(Clone)]
enum Piece {
    Begin(String, Option<String>),
    /// Archive bytes, several network messages at once (fewer thread wake-ups).
    Data(Vec<Bytes>),
    End,
    Manifest(Bytes),
}

/// Work for the writer or the checker thread: pieces, then the request for its result.
enum Job<T> {
    Piece(Piece),
    Finish(oneshot::Sender<Result<T, SinkError>>),
}

/// One of the two threads the stream is handed to.
trait Half: Send + 'static {
    type Done: Send + 'static;
    fn piece(&mut self, piece: Piece) -> Result<(), SinkError>;
    fn finish(self) -> Result<Self::Done, SinkError>;
    /// Stopping without finishing.
    fn abandon(self);
}

impl Half for ArchiveWriter {
    type Done = (BackupWriter, Vec<ArchiveRecord>);

    fn piece(&mut self, piece: Piece) -> Result<(), SinkError> {
        match piece {
            Piece::Begin(name, location) => self.begin_archive(&name, location),
            Piece::Data(chunks) => chunks.iter().try_for_each(|data| self.archive_data(data)),
            Piece::End => self.end_archive(),
            Piece::Manifest(data) => {
                self.manifest_data(&data);
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<Self::Done, SinkError> {
        ArchiveWriter::finish(self)
    }

    fn abandon(self) {
        ArchiveWriter::abandon(self)
    }
}

impl Half for ArchiveChecker {
    type Done = Checked;

    fn piece(&mut self, piece: Piece) -> Result<(), SinkError> {
        match piece {
            Piece::Begin(name, _) => self.begin_archive(&name),
            Piece::Data(chunks) => chunks.iter().try_for_each(|data| self.archive_data(data)),
            Piece::End => self.end_archive(),
            Piece::Manifest(data) => {
                self.manifest_data(&data);
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<Checked, SinkError> {
        ArchiveChecker::finish(self)
    }

    fn abandon(self) {}
}

/// A half's thread and the queue to it.
struct Worker<H: Half> {
    jobs: mpsc::Sender<Job<H::Done>>,
    thread: tokio::task::JoinHandle<Result<(), SinkError>>,
}

impl<H: Half> Worker<H> {
    fn spawn(half: H) -> Worker<H> {
        // At most a few batches in flight: bounded memory (both halves share the bytes).
        let (jobs, rx) = mpsc::channel(4);
        let thread = tokio::task::spawn_blocking(move || run_half(half, rx));
        Worker { jobs, thread }
    }

    /// Asks for the half's result; a half that stopped on an error gives that error.
    async fn finish(self) -> Result<H::Done, SinkError> {
        let (done_tx, done_rx) = oneshot::channel();
        let sent = self.jobs.send(Job::Finish(done_tx)).await.is_ok();
        drop(self.jobs);
        let reply = match sent {
            true => done_rx.await.ok(),
            false => None,
        };
        let joined = self.thread.await;
        match (reply, joined) {
            (Some(result), _) => result,
            (None, Ok(Err(e))) => Err(e),
            (None, _) => Err(SinkError::Protocol(
                "the archive writer or checker stopped unexpectedly".into(),
            )),
        }
    }

    /// Stops the half after a failure elsewhere: the error it stopped with, if any.
    async fn stop(self) -> Option<SinkError> {
        drop(self.jobs);
        match self.thread.await {
            Ok(Err(e)) => Some(e),
            _ => None,
        }
    }
}

/// The writer and the checker, fed the same pieces.
struct Halves {
    writer: Worker<ArchiveWriter>,
    checker: Worker<ArchiveChecker>,
}

impl Halves {
    /// False when either half has stopped (on an error, given when it is stopped).
    async fn send(&self, piece: Piece) -> bool {
        self.checker
            .jobs
            .send(Job::Piece(piece.clone()))
            .await
            .is_ok()
            && self.writer.jobs.send(Job::Piece(piece)).await.is_ok()
    }

    /// After a failure: stops both (the writer removes the partial backup) and returns the
    /// error one of them stopped with, which is then the cause.
    async fn stop(self) -> Option<SinkError> {
        let checker = self.checker.stop().await;
        let writer = self.writer.stop().await;
        checker.or(writer)
    }
}

/// Takes a base backup. `shutdown` turning true stops it; nothing complete-looking is left.
pub async fn take_backup(
    options: &BackupOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<BackupRecord, BackupError> {
    let config = ConnConfig::parse(&options.source).map_err(pg::Error::Config)?;
    let mut conn = Connection::connect(&config, SessionKind::Physical).await?;
    let system = conn.identify_system().await?;
    let seg_text = conn.show("wal_segment_size").await?;
    let wal_segment_size: WalSegSize = seg_text
        .parse()
        .map_err(|e| BackupError::Internal(format!("server's wal_segment_size: {e}")))?;
    let version = conn.server_version();
    if matches!(options.compression, BackupCompression::ServerZstd(_)) && version.major() < 15 {
        return Err(BackupError::Config(format!(
            "--compress server-zstd needs PostgreSQL 15 or later; the server is {}",
            version.major()
        )));
    }
    let identity = ServerIdentity {
        system_id: system.system_id,
        server_version_num: version.0,
        wal_segment_size,
    };
    store::bind_cluster(&options.store, &options.cluster, &identity)?;
    let started = SystemTime::now();
    let writer = BackupWriter::begin(&options.store, &options.cluster, started)?;
    let id = writer.id().to_string();
    let label = options
        .label
        .clone()
        .unwrap_or_else(|| format!("walden backup {id}"));
    tracing::info!("backup {id} started from {}", conn.peer());

    let stored = match options.compression {
        BackupCompression::Zstd(level) => Stored::Zstd(level),
        _ => Stored::AsSent,
    };
    let halves = Halves {
        writer: Worker::spawn(ArchiveWriter::new(writer, stored)),
        checker: Worker::spawn(ArchiveChecker::new()),
    };

    let bb_options = BaseBackupOptions {
        label: label.clone(),
        fast_checkpoint: options.fast_checkpoint,
        // The server sizes the whole cluster before sending when asked for progress: only
        // worth it for a progress bar.
        progress: options.progress_bar,
        wal: options.include_wal,
        wait_for_archive: false,
        max_rate_kb: options
            .max_rate
            .map(|r| u32::try_from((r / 1024).clamp(32, 1_048_576)).unwrap_or(1_048_576)),
        tablespace_map: true,
        verify_checksums: options.verify_checksums,
        manifest: version.major() >= 13,
        manifest_checksums: (version.major() >= 13).then(|| "CRC32C".to_string()),
        server_compression: match options.compression {
            BackupCompression::ServerZstd(level) => {
                Some(("zstd".to_string(), Some(level.to_string())))
            }
            _ => None,
        },
    };
    let streamed = stream_backup(&mut conn, &bb_options, &halves, &mut shutdown, options).await;
    let (start, stop, mut tablespaces) = match streamed {
        Ok(positions) => positions,
        Err(e) => {
            // When a half stopped first, its error is the cause.
            return Err(match halves.stop().await {
                Some(sink_error) => sink_error.into(),
                None => e,
            });
        }
    };
    let Halves { writer, checker } = halves;
    let (written, checked) = tokio::join!(writer.finish(), checker.finish());
    // The checker's verdict first: a mismatch explains more than a failed write.
    let (writer, written) = match (written, checked) {
        (Ok((writer, archives)), checked) => match checked.and_then(|c| c.merge(archives)) {
            Ok(written) => (writer, written),
            Err(e) => {
                if let Err(abandon_error) = writer.abandon() {
                    tracing::warn!(
                        "could not remove the failed backup's directory: {abandon_error}"
                    );
                }
                return Err(e.into());
            }
        },
        // The writer removed the partial backup when it failed.
        (Err(write_error), checked) => return Err(checked.err().unwrap_or(write_error).into()),
    };
    conn.close().await;
    let stopped = SystemTime::now();

    let config_files = capture_config(&config, &writer).await;
    if !tablespaces.is_empty() {
        name_tablespaces(&config, &mut tablespaces).await;
    }
    let history_files = if options.include_wal {
        Vec::new()
    } else {
        match wait_for_wal(options, &config, &identity, start, stop, &mut shutdown).await {
            Ok(files) => files,
            Err(e) => {
                if let Err(abandon_error) = writer.abandon() {
                    tracing::warn!(
                        "could not remove the failed backup's directory: {abandon_error}"
                    );
                }
                return Err(e);
            }
        }
    };
    let record = BackupRecord {
        id: id.clone(),
        label,
        status: "complete".into(),
        start_lsn: start.0,
        start_timeline: start.1,
        stop_lsn: stop.0,
        stop_timeline: stop.1,
        start_time: store::format_utc(started),
        stop_time: store::format_utc(stopped),
        server_version: format!("{}", version.major()),
        server_version_num: version.0,
        system_identifier: system.system_id.to_string(),
        wal_segment_size: wal_segment_size.bytes(),
        compression: options.compression.to_string(),
        includes_wal: options.include_wal,
        from_standby: written.from_standby,
        bytes: written.archives.iter().map(|a| a.bytes).sum(),
        archives: written.archives,
        tablespaces,
        manifest_files: written.manifest_files,
        history_files,
        config_files,
    };
    let json = serde_json::to_vec_pretty(&record)
        .map_err(|e| BackupError::Internal(format!("cannot encode backup.json: {e}")))?;
    writer.commit(&json)?;
    Ok(record)
}

/// Pulls the backup's events and feeds the sink; returns the start and stop positions and
/// the user tablespaces.
async fn stream_backup(
    conn: &mut Connection,
    bb_options: &BaseBackupOptions,
    halves: &Halves,
    shutdown: &mut watch::Receiver<bool>,
    options: &BackupOptions,
) -> Result<((Lsn, TimelineId), (Lsn, TimelineId), Vec<TablespaceRecord>), BackupError> {
    let mut stream = conn.start_base_backup(bb_options).await?;
    let mut pending: Vec<Bytes> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut start = None;
    let mut end = None;
    let mut tablespaces = Vec::new();
    let client_zstd = matches!(options.compression, BackupCompression::Zstd(_));
    let mut progress = Progress::new(options.progress_bar, client_zstd);
    loop {
        let event = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return Err(BackupError::Interrupted),
            event = stream.next() => event,
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(e) if e.sqlstate() == Some("XX001") && stream.end_position().is_some() => {
                return Err(BackupError::Checksum(e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let send = |piece| halves.send(piece);
        if !matches!(
            event,
            BackupEvent::ArchiveData(_) | BackupEvent::Progress(_)
        ) && !pending.is_empty()
        {
            pending_bytes = 0;
            if !send(Piece::Data(std::mem::take(&mut pending))).await {
                return Err(BackupError::Internal("the archive writer stopped".into()));
            }
        }
        let ok = match event {
            BackupEvent::Started {
                start: lsn,
                timeline,
            } => {
                start = Some((lsn, timeline));
                true
            }
            BackupEvent::Tablespaces(list) => {
                progress.set_total(&list);
                tablespaces = list
                    .into_iter()
                    .filter_map(|t: TablespaceInfo| {
                        Some(TablespaceRecord {
                            oid: t.oid?,
                            location: t.location?,
                            name: None,
                        })
                    })
                    .collect();
                true
            }
            BackupEvent::ArchiveBegin {
                name,
                tablespace_location,
            } => {
                progress.archive(&name);
                send(Piece::Begin(name, tablespace_location)).await
            }
            BackupEvent::ArchiveData(data) => {
                pending_bytes += data.len();
                pending.push(data);
                if pending_bytes >= DATA_BATCH {
                    pending_bytes = 0;
                    send(Piece::Data(std::mem::take(&mut pending))).await
                } else {
                    true
                }
            }
            BackupEvent::ArchiveEnd => send(Piece::End).await,
            BackupEvent::Progress(done) => {
                progress.done(done);
                true
            }
            BackupEvent::ManifestData(data) => send(Piece::Manifest(data)).await,
            BackupEvent::ManifestEnd => true,
            BackupEvent::Ended { end: lsn, timeline } => {
                end = Some((lsn, timeline));
                true
            }
        };
        if !ok {
            // The sink stopped on an error: it is reported when the sink is joined.
            return Err(BackupError::Internal("the archive writer stopped".into()));
        }
    }
    if !pending.is_empty() && !halves.send(Piece::Data(pending)).await {
        return Err(BackupError::Internal("the archive writer stopped".into()));
    }
    progress.finish();
    match (start, end) {
        (Some(start), Some(end)) => Ok((start, end, tablespaces)),
        _ => Err(BackupError::Internal(
            "the server ended the backup without its start and end positions".into(),
        )),
    }
}

fn run_half<H: Half>(mut half: H, mut rx: mpsc::Receiver<Job<H::Done>>) -> Result<(), SinkError> {
    while let Some(job) = rx.blocking_recv() {
        match job {
            Job::Piece(piece) => {
                if let Err(e) = half.piece(piece) {
                    half.abandon();
                    return Err(e);
                }
            }
            Job::Finish(reply) => {
                let _ = reply.send(half.finish());
                return Ok(());
            }
        }
    }
    half.abandon();
    Ok(())
}

/// Waits until the store holds every WAL byte of `[start, stop)` durably; forces a segment
/// switch on the server once if that does not happen promptly. Returns the history files
/// the store holds.
async fn wait_for_wal(
    options: &BackupOptions,
    config: &ConnConfig,
    identity: &ServerIdentity,
    start: (Lsn, TimelineId),
    stop: (Lsn, TimelineId),
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Vec<String>, BackupError> {
    let began = Instant::now();
    let mut switched = false;
    loop {
        let covered = store::wal_covered(
            &options.store,
            &options.cluster,
            identity.wal_segment_size,
            start,
            stop,
        )?;
        if covered {
            return Ok(store::history_file_names(&options.store, &options.cluster)?);
        }
        let waited = began.elapsed();
        if waited >= options.wait_for_wal {
            return Err(BackupError::WalMissing {
                start: start.0,
                stop: stop.0,
                timeline: stop.1,
                waited: waited.as_secs(),
                cluster: options.cluster.to_string(),
            });
        }
        if !switched && waited >= Duration::from_secs(3) {
            switched = true;
            force_switch(config).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Err(BackupError::Interrupted),
        }
    }
}

/// `SELECT pg_switch_wal()` over an SQL connection, so that an idle server completes the
/// segment holding the backup's end. Fails quietly (a standby cannot switch; the role may
/// not connect to a database): waiting goes on.
async fn force_switch(config: &ConnConfig) {
    let result = async {
        let mut sql = Connection::connect(&sql_config(config), SessionKind::Sql).await?;
        let result = sql.simple_query("SELECT pg_switch_wal()").await;
        sql.close().await;
        result
    }
    .await;
    match result {
        Ok(_) => {
            tracing::info!("forced a WAL segment switch so the backup's WAL reaches the store")
        }
        Err(e) => tracing::debug!("could not force a WAL segment switch: {e}"),
    }
}

/// The connection settings for an SQL session: the database named in the connection string,
/// else `postgres`.
pub(crate) fn sql_config(config: &ConnConfig) -> ConnConfig {
    let mut sql = config.clone();
    if sql.dbname == sql.user || sql.dbname == "replication" {
        sql.dbname = "postgres".to_string();
    }
    sql
}

/// Reads `config_file`, `hba_file` and `ident_file` through an SQL session and stores them
/// under `config/` when the role may (superuser or `pg_read_server_files`).
async fn capture_config(config: &ConnConfig, writer: &BackupWriter) -> ConfigCapture {
    match read_config_files(config).await {
        Ok(files) => {
            let mut capture = ConfigCapture {
                captured: true,
                ..ConfigCapture::default()
            };
            for (setting, server_path, content) in files {
                let name = std::path::Path::new(&server_path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| setting.clone());
                let stored_as = format!("config/{name}");
                let written = writer.create_file(&stored_as).and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(&content)
                        .map_err(|e| StoreError::io("write", std::path::Path::new(&stored_as), e))
                });
                if let Err(e) = written {
                    capture.captured = false;
                    capture.reason = Some(e.to_string());
                    break;
                }
                capture.files.push(name.clone());
                capture.sources.push(ConfigSource {
                    file: name,
                    setting,
                    server_path,
                });
            }
            capture
        }
        Err(reason) => {
            tracing::warn!(
                "the server's configuration files are not stored with the backup: {reason} (grant pg_read_server_files to the role to capture them)"
            );
            ConfigCapture {
                captured: false,
                reason: Some(reason),
                ..ConfigCapture::default()
            }
        }
    }
}

async fn read_config_files(config: &ConnConfig) -> Result<Vec<(String, String, Vec<u8>)>, String> {
    let mut sql = Connection::connect(&sql_config(config), SessionKind::Sql)
        .await
        .map_err(|e| format!("cannot open an SQL session: {e}"))?;
    let mut files = Vec::new();
    for setting in ["config_file", "hba_file", "ident_file"] {
        let query =
            format!("SELECT s, pg_read_binary_file(s) FROM current_setting('{setting}') AS s");
        let results = sql
            .simple_query(&query)
            .await
            .map_err(|e| format!("cannot read {setting}: {e}"))?;
        let row = results
            .first()
            .and_then(|r| r.rows.first())
            .ok_or_else(|| format!("no answer for {setting}"))?;
        let path: String = row.required(0).map_err(|e| e.to_string())?;
        let hex: String = row.required(1).map_err(|e| e.to_string())?;
        let content = decode_bytea_hex(&hex).ok_or_else(|| format!("unreadable {setting}"))?;
        files.push((setting.to_string(), path, content));
    }
    sql.close().await;
    Ok(files)
}

/// Fills in the tablespaces' names (for `walden-restore --tablespace-map NAME=DIR`); without
/// an SQL session they stay unnamed and restore maps them by oid.
async fn name_tablespaces(config: &ConnConfig, tablespaces: &mut [TablespaceRecord]) {
    let names = async {
        let mut sql = Connection::connect(&sql_config(config), SessionKind::Sql).await?;
        let results = sql
            .simple_query("SELECT oid, spcname FROM pg_tablespace")
            .await?;
        sql.close().await;
        Ok::<_, pg::Error>(results)
    }
    .await;
    let results = match names {
        Ok(results) => results,
        Err(e) => {
            tracing::warn!("cannot read the tablespaces' names ({e}); restore maps them by oid");
            return;
        }
    };
    for row in results.iter().flat_map(|r| r.rows.iter()) {
        let (Ok(oid), Ok(name)) = (row.required::<u32>(0), row.required::<String>(1)) else {
            continue;
        };
        if let Some(t) = tablespaces.iter_mut().find(|t| t.oid == oid) {
            t.name = Some(name);
        }
    }
}

/// `\x0a0b…` (bytea's hex output) to bytes.
fn decode_bytea_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A progress bar on a terminal; one log line per archive otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Archives get `.zst` appended as they are stored.
    client_zstd: bool,
}

impl Progress {
    fn new(terminal: bool, client_zstd: bool) -> Progress {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Progress { bar, client_zstd }
    }

    fn set_total(&mut self, tablespaces: &[TablespaceInfo]) {
        let kb: u64 = tablespaces.iter().filter_map(|t| t.size_kb).sum();
        if let Some(bar) = &self.bar {
            bar.set_length(kb * 1024);
        }
    }

    fn archive(&mut self, name: &str) {
        let stored = if self.client_zstd && !name.ends_with(".zst") {
            format!("{name}.zst")
        } else {
            name.to_string()
        };
        match &self.bar {
            Some(bar) => bar.set_message(stored),
            None => println!("receiving archive {stored}"),
        }
    }

    fn done(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_names() {
        assert_eq!("none".parse(), Ok(BackupCompression::None));
        assert_eq!("zstd".parse(), Ok(BackupCompression::Zstd(3)));
        assert_eq!("zstd:9".parse(), Ok(BackupCompression::Zstd(9)));
        assert_eq!("server-zstd".parse(), Ok(BackupCompression::ServerZstd(3)));
        assert_eq!(
            "server-zstd:1".parse(),
            Ok(BackupCompression::ServerZstd(1))
        );
        for bad in ["", "gzip", "zstd:0", "zstd:20", "none:1", "server-zstd:x"] {
            assert!(bad.parse::<BackupCompression>().is_err(), "{bad}");
        }
        assert_eq!(
            BackupCompression::ServerZstd(4).to_string(),
            "server-zstd:4"
        );
    }

    #[test]
    fn bytea_hex() {
        assert_eq!(decode_bytea_hex("\\x0a41"), Some(vec![0x0a, 0x41]));
        assert_eq!(decode_bytea_hex("\\x"), Some(vec![]));
        assert_eq!(decode_bytea_hex("0a"), None);
        assert_eq!(decode_bytea_hex("\\x0"), None);
        assert_eq!(decode_bytea_hex("\\xzz"), None);
    }
}
