//! The database side: choosing a backup and the WAL for a recovery target, extracting the
//! backup into a data directory, writing the recovery configuration for the server's
//! version, and serving WAL to the server as its `restore_command` (`wal-fetch`).
//!
//! [`restore`] composes them in this order, so that every refusal comes before anything is
//! written: plan (backup, target, WAL present on the right timelines, no gap) → print the plan
//! (`--dry-run` stops here) → owner and data directory checks → a trial run of the very
//! `restore_command` the server will use, as the user the server will run as → extraction →
//! recovery configuration (signal file last) → summary with the command that starts the server.

pub mod extract;
pub mod plan;
pub mod recovery;
pub mod remote;
pub mod wal_fetch;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backup::BackupRecord;
use crate::store::{ClusterName, ClusterReader, StoreError, WalArchive, backup_dir, list_backups};
use extract::{BackupFiles, ExtractError, ExtractOptions, ExtractSummary, LocalBackupFiles, Owner};
use plan::{Plan, PlanError, PlanRequest, RecoveryTarget, TargetAction};
use recovery::{RecoveryError, RecoveryFiles, RecoverySettings, TargetKind};
use remote::{RemoteCluster, RemoteSpec, RemoteStore};

/// Where a restore or `wal-fetch` reads the store: a directory, or a walden server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Local(PathBuf),
    Remote(RemoteSpec),
}

impl Source {
    /// `--from`: an `http://` or `https://` URL (with the token and CA files for it), else a
    /// directory.
    pub fn new(
        from: &str,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Result<Source, StoreError> {
        match RemoteSpec::parse(from, token_file, ca_file) {
            Some(spec) => Ok(Source::Remote(spec?)),
            None => Ok(Source::Local(PathBuf::from(from))),
        }
    }
}

/// A source opened on one cluster.
enum Opened {
    Local {
        store: PathBuf,
        reader: ClusterReader,
    },
    Remote(RemoteCluster),
}

impl Opened {
    fn open(source: &Source, cluster: &ClusterName) -> Result<Opened, StoreError> {
        Ok(match source {
            Source::Local(store) => Opened::Local {
                store: store.clone(),
                reader: ClusterReader::open(store, cluster)?,
            },
            Source::Remote(spec) => Opened::Remote(RemoteStore::new(spec)?.cluster(cluster)?),
        })
    }

    fn archive(&self) -> &dyn WalArchive {
        match self {
            Opened::Local { reader, .. } => reader,
            Opened::Remote(remote) => remote,
        }
    }

    /// The complete backups: id and `backup.json` (None if unreadable), oldest first.
    fn backups(
        &self,
        cluster: &ClusterName,
    ) -> Result<Vec<(String, Option<serde_json::Value>)>, StoreError> {
        Ok(match self {
            Opened::Local { store, .. } => list_backups(store, cluster)?
                .into_iter()
                .filter(|b| !b.in_progress && !b.abandoned)
                .map(|b| (b.id.to_string(), b.json))
                .collect(),
            Opened::Remote(remote) => remote
                .backups()?
                .into_iter()
                .map(|b| (b.id, Some(b.backup)))
                .collect(),
        })
    }

    fn files(&self, cluster: &ClusterName, id: &str) -> Result<Box<dyn BackupFiles>, StoreError> {
        Ok(match self {
            Opened::Local { store, .. } => Box::new(LocalBackupFiles::new(backup_dir(
                store,
                cluster,
                id.parse()?,
            ))),
            Opened::Remote(remote) => Box::new(remote.backup_files(id)),
        })
    }
}

/// Everything `walden-restore restore` was asked to do.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub source: Source,
    pub cluster: ClusterName,
    pub pgdata: PathBuf,
    pub request: PlanRequest,
    /// `recovery_target_action`; None leaves the server's default (pause).
    pub action: Option<TargetAction>,
    pub standby: bool,
    pub primary_conninfo: Option<String>,
    pub primary_slot_name: Option<String>,
    pub tablespace_map: Vec<extract::TablespaceMapping>,
    /// The major version of the server that will run the restored directory (default: the
    /// backup's).
    pub pg_version: Option<u32>,
    /// `USER[:GROUP]` to own the files when running as root.
    pub owner: Option<String>,
    /// `wal-fetch --prefetch N` in `restore_command` (0: none).
    pub prefetch: u32,
    /// The prefetch spool (default: `.<PGDATA name>.walden-spool` beside PGDATA, so that a
    /// spooled segment is renamed into `pg_wal`, not copied).
    pub spool: Option<PathBuf>,
    pub dry_run: bool,
    pub force: bool,
    /// Show a progress bar while extracting.
    pub progress: bool,
}

/// Why a restore was refused or failed. Nothing is left half-done: refusals come before the
/// data directory is touched, and a failed extraction empties it again.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error("backup {id}: its backup.json cannot be read ({why}); check it with `walden verify`")]
    BadRecord { id: String, why: String },
    #[error(
        "restore_command will not work for the server: {why}. The binary {exe} and the store {store} must be readable (and the binary executable) by {user}: install walden-restore in a shared directory such as /usr/local/bin and make the store readable by that user"
    )]
    Unreachable {
        user: String,
        exe: String,
        store: String,
        why: String,
    },
    #[error(
        "restore_command will not work for the server: {why}. The binary {exe} must be executable and {files} readable by {user}, and {url} must accept the token: install walden-restore in a shared directory such as /usr/local/bin and give that user read access to those files"
    )]
    UnreachableRemote {
        user: String,
        exe: String,
        files: String,
        url: String,
        why: String,
    },
}

impl RestoreError {
    /// The process exit code (see `crate::exit`).
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            RestoreError::Usage(_) => exit::USAGE,
            RestoreError::Store(e) if e.is_config() => exit::USAGE,
            RestoreError::Store(_) => exit::FAILURE,
            RestoreError::Plan(e) => e.exit_code(),
            RestoreError::Extract(e) => e.exit_code(),
            RestoreError::Recovery(_) | RestoreError::BadRecord { .. } => exit::FAILURE,
            RestoreError::Unreachable { .. } | RestoreError::UnreachableRemote { .. } => {
                exit::FAILURE
            }
        }
    }
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub plan: Plan,
    /// None for `--dry-run`.
    pub done: Option<Done>,
}

/// What a restore that ran wrote.
#[derive(Debug)]
pub struct Done {
    pub extracted: ExtractSummary,
    pub recovery: RecoveryFiles,
    pub major: u32,
    pub owner: Option<Owner>,
}

/// Plans, prints the plan to `out`, and (unless `dry_run`) restores.
pub fn restore(options: &RestoreOptions, out: &mut dyn Write) -> Result<Restored, RestoreError> {
    check_options(options)?;
    let opened = Opened::open(&options.source, &options.cluster)?;
    let records = complete_backups(opened.backups(&options.cluster)?, opened.archive())?;
    let plan = plan::make_plan(opened.archive(), &records, &options.request)?;
    let _ = writeln!(out, "{}", plan.to_text().trim_end());
    if options.dry_run {
        let _ = writeln!(out, "dry run: nothing was written");
        return Ok(Restored { plan, done: None });
    }
    let record = records
        .iter()
        .find(|r| r.id == plan.backup.id)
        .ok_or_else(|| RestoreError::Usage(format!("backup {} vanished", plan.backup.id)))?;
    let major = options
        .pg_version
        .unwrap_or(record.server_version_num / 10_000);

    // Refusals first, then the owner (before prepare_pgdata creates the directory).
    extract::check_pgdata(&options.pgdata, options.force)?;
    let owner = extract::resolve_owner(options.owner.as_deref(), &options.pgdata)?;
    extract::prepare_pgdata(&options.pgdata, options.force)?;
    let pgdata = std::fs::canonicalize(&options.pgdata)
        .map_err(|e| StoreError::io("resolve", &options.pgdata, e))?;
    let source = absolute_source(&options.source)?;
    if let Some(o) = owner {
        std::os::unix::fs::chown(&pgdata, Some(o.uid), Some(o.gid))
            .map_err(|e| StoreError::io("change the owner of", &pgdata, e))?;
    }
    let exe = recovery::this_executable()?;
    let spool = match options.prefetch {
        0 => None,
        _ => Some(prepare_spool(options.spool.as_deref(), &pgdata, owner)?),
    };
    let (prefetch, spool) = (options.prefetch, spool.as_deref());
    let restore_command = match &source {
        Source::Local(store) => {
            recovery::restore_command(&exe, store, &options.cluster, prefetch, spool)?
        }
        Source::Remote(spec) => {
            recovery::remote_restore_command(&exe, spec, &options.cluster, prefetch, spool)?
        }
    };
    if let Some(first) = &plan.wal.first_segment {
        probe_restore_command(&exe, &source, &options.cluster, first, &pgdata, owner)?;
    }

    let files = opened.files(&options.cluster, &record.id)?;
    let extracted = extract_with_progress(record, files.as_ref(), options, &pgdata, owner)?;
    let settings = recovery_settings(options, restore_command);
    let recovery = recovery::write_recovery_config(&pgdata, major, &settings)?;
    if let Some(owner) = owner {
        for path in &recovery.created {
            std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
                .map_err(|e| StoreError::io("change the owner of", path, e))?;
        }
    }
    Ok(Restored {
        plan,
        done: Some(Done {
            extracted,
            recovery,
            major,
            owner,
        }),
    })
}

fn check_options(options: &RestoreOptions) -> Result<(), RestoreError> {
    if let Source::Remote(spec) = &options.source
        && spec.token_file.is_none()
        && !options.dry_run
    {
        return Err(RestoreError::Usage(format!(
            "restoring from {} needs --token-file FILE, readable by the user the server will run as: restore_command passes the token to wal-fetch that way ({} is not seen by the server)",
            spec.url,
            remote::TOKEN_ENV
        )));
    }
    if !options.standby
        && (options.primary_conninfo.is_some() || options.primary_slot_name.is_some())
    {
        return Err(RestoreError::Usage(
            "--primary-conninfo and --primary-slot-name need --standby".into(),
        ));
    }
    if options.standby && options.action.is_some() {
        return Err(RestoreError::Usage(
            "--target-action has no effect on a standby (it never ends recovery by itself); leave it out".into(),
        ));
    }
    if options.request.target.has_inclusive() || options.request.inclusive {
        return Ok(());
    }
    Err(RestoreError::Usage(format!(
        "--target-exclusive applies to time, LSN and xid targets, not to {}",
        options.request.target.kind()
    )))
}

/// The prefetch spool: `explicit`, or `.<PGDATA name>.walden-spool` beside PGDATA (outside
/// it, on the same filesystem as `pg_wal` in the usual layout, so a spooled segment is
/// renamed into place rather than copied). Created 0700 for the server's user; one left by an
/// earlier restore is emptied (its files could be of another cluster's timeline).
fn prepare_spool(
    explicit: Option<&Path>,
    pgdata: &Path,
    owner: Option<Owner>,
) -> Result<PathBuf, RestoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = match explicit {
        Some(dir) => std::path::absolute(dir).map_err(|e| StoreError::io("resolve", dir, e))?,
        None => {
            let name = pgdata
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pgdata".into());
            pgdata.with_file_name(format!(".{name}.walden-spool"))
        }
    };
    if dir.starts_with(pgdata) {
        return Err(RestoreError::Usage(format!(
            "the spool {} is inside the data directory: give a directory outside it",
            dir.display()
        )));
    }
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
            }
        }
        Err(_) => std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?,
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| StoreError::io("set the permissions of", &dir, e))?;
    if let Some(o) = owner {
        std::os::unix::fs::chown(&dir, Some(o.uid), Some(o.gid))
            .map_err(|e| StoreError::io("change the owner of", &dir, e))?;
    }
    Ok(dir)
}

/// The source with its paths made absolute, as `restore_command` needs them (the server runs
/// it in the data directory).
fn absolute_source(source: &Source) -> Result<Source, RestoreError> {
    let absolute = |p: &Path| std::fs::canonicalize(p).map_err(|e| StoreError::io("resolve", p, e));
    Ok(match source {
        Source::Local(store) => Source::Local(absolute(store)?),
        Source::Remote(spec) => Source::Remote(RemoteSpec {
            url: spec.url.clone(),
            token_file: spec.token_file.as_deref().map(absolute).transpose()?,
            ca_file: spec.ca_file.as_deref().map(absolute).transpose()?,
        }),
    })
}

/// The complete backups of the cluster (id and `backup.json`), read as records.
fn complete_backups(
    entries: Vec<(String, Option<serde_json::Value>)>,
    archive: &dyn WalArchive,
) -> Result<Vec<BackupRecord>, RestoreError> {
    let system = archive.info().system_identifier.to_string();
    let mut records = Vec::new();
    for (id, json) in entries {
        let Some(json) = json else {
            tracing::warn!("backup {id} has no readable backup.json; it is not considered");
            continue;
        };
        let record: BackupRecord =
            serde_json::from_value(json).map_err(|e| RestoreError::BadRecord {
                id: id.clone(),
                why: e.to_string(),
            })?;
        if record.system_identifier != system {
            return Err(RestoreError::BadRecord {
                id,
                why: format!(
                    "it is of system {}, the cluster's store of system {system}",
                    record.system_identifier
                ),
            });
        }
        if record.status == "complete" {
            records.push(record);
        }
    }
    Ok(records)
}

/// Runs `restore_command` once the way the server will: as the owner of the data directory,
/// fetching the first segment recovery needs into a scratch file. Catches a binary or a
/// store that user cannot reach before anything is extracted.
fn probe_restore_command(
    exe: &Path,
    source: &Source,
    cluster: &ClusterName,
    segment: &str,
    pgdata: &Path,
    owner: Option<Owner>,
) -> Result<(), RestoreError> {
    use std::os::unix::process::CommandExt as _;
    let scratch = pgdata.join(format!(".walden-probe-{}", std::process::id()));
    std::fs::create_dir(&scratch).map_err(|e| StoreError::io("create", &scratch, e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("wal-fetch").args(from_args(source));
    // The server will not have our environment: the token must come from the file.
    cmd.env_remove(remote::TOKEN_ENV)
        .env_remove(remote::CA_FILE_ENV)
        .arg("--cluster")
        .arg(cluster.as_str())
        .arg(segment)
        .arg(scratch.join("RECOVERYXLOG"))
        .current_dir("/");
    let user = match owner {
        Some(o) => {
            std::os::unix::fs::chown(&scratch, Some(o.uid), Some(o.gid))
                .map_err(|e| StoreError::io("change the owner of", &scratch, e))?;
            cmd.uid(o.uid).gid(o.gid);
            format!("uid {} (the data directory's owner)", o.uid)
        }
        None => "this user".to_string(),
    };
    let result = cmd.output();
    let _ = std::fs::remove_dir_all(&scratch);
    let why = match result {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(1) => format!("it did not find {segment} in the store"),
                _ => format!(
                    "it failed ({}): {}",
                    out.status,
                    stderr.lines().last().unwrap_or("").trim()
                ),
            }
        }
        Err(e) => format!("it cannot be run: {e}"),
    };
    let exe = exe.display().to_string();
    Err(match source {
        Source::Local(store) => RestoreError::Unreachable {
            user,
            exe,
            store: store.display().to_string(),
            why,
        },
        Source::Remote(spec) => RestoreError::UnreachableRemote {
            user,
            exe,
            files: [&spec.token_file, &spec.ca_file]
                .into_iter()
                .flatten()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and "),
            url: spec.url.clone(),
            why,
        },
    })
}

/// `--from ...` for a `wal-fetch` of `source` (the token and CA files with a URL).
pub fn from_args(source: &Source) -> Vec<OsString> {
    match source {
        Source::Local(store) => vec!["--from".into(), store.into()],
        Source::Remote(spec) => {
            let mut args: Vec<OsString> = vec!["--from".into(), spec.url.clone().into()];
            if let Some(token) = &spec.token_file {
                args.extend(["--token-file".into(), token.into()]);
            }
            if let Some(ca) = &spec.ca_file {
                args.extend(["--ca-file".into(), ca.into()]);
            }
            args
        }
    }
}

fn extract_with_progress(
    record: &BackupRecord,
    files: &dyn BackupFiles,
    options: &RestoreOptions,
    pgdata: &Path,
    owner: Option<Owner>,
) -> Result<ExtractSummary, RestoreError> {
    let mut extract_options = ExtractOptions::new(pgdata);
    extract_options.tablespace_map = options.tablespace_map.clone();
    extract_options.owner = owner;
    if options.progress {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "extracting {bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        extract_options.progress = Some(bar);
    }
    let summary = extract::extract_backup(record, files, &extract_options);
    if let Some(bar) = &extract_options.progress {
        bar.finish_and_clear();
    }
    Ok(summary?)
}

/// The recovery configuration for the plan's target and the options.
fn recovery_settings(options: &RestoreOptions, restore_command: String) -> RecoverySettings {
    let target = &options.request.target;
    let kind = match target {
        RecoveryTarget::Latest => None,
        RecoveryTarget::Immediate => Some(TargetKind::Immediate),
        RecoveryTarget::Time(_) => Some(TargetKind::Time),
        RecoveryTarget::Lsn(_) => Some(TargetKind::Lsn),
        RecoveryTarget::Xid(_) => Some(TargetKind::Xid),
        RecoveryTarget::Name(_) => Some(TargetKind::Name),
    };
    let value = target.setting().map(|(_, v)| v).unwrap_or_default();
    RecoverySettings {
        restore_command,
        target: kind.map(|k| (k, value)),
        inclusive: options.request.inclusive,
        timeline: Some(options.request.timeline.to_string()),
        action: options.action.map(|a| a.as_str().to_string()),
        standby: options.standby,
        primary_conninfo: options.primary_conninfo.clone(),
        primary_slot_name: options.primary_slot_name.clone(),
    }
}

impl Restored {
    /// The final summary: what was written, and how to start the server.
    pub fn summary(&self, options: &RestoreOptions) -> String {
        let Some(done) = &self.done else {
            return String::new();
        };
        let pgdata = options.pgdata.display();
        let mut text = format!(
            "restored backup {} into {pgdata}: {} files, {} MB\n",
            self.plan.backup.id,
            done.extracted.files,
            done.extracted.bytes >> 20
        );
        for t in &done.extracted.tablespaces {
            text.push_str(&format!(
                "tablespace {}{} in {}\n",
                t.oid,
                t.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                t.dir.display()
            ));
        }
        if let Some(dir) = &done.extracted.config_dir {
            text.push_str(&format!(
                "the source server's configuration files ({}) are in {} for reference; the restored server uses those in {pgdata}\n",
                done.extracted.config_files.join(", "),
                dir.display()
            ));
        }
        text.push_str(&format!(
            "recovery settings appended to {}{}\n",
            done.recovery.config_file.display(),
            done.recovery
                .signal_file
                .as_ref()
                .map(|s| format!(", {} created", s.display()))
                .unwrap_or_default()
        ));
        let pg_ctl = pg_ctl_for(done.major);
        let start = format!("{pg_ctl} -D {pgdata} -l {pgdata}/restore.log start");
        let user = done
            .owner
            .and_then(|o| extract::user_name(o.uid))
            .map(|name| format!("runuser -u {name} -- "))
            .unwrap_or_default();
        text.push_str(&format!("start the server with:\n  {user}{start}\n"));
        text
    }
}

/// The version's `pg_ctl` where Debian/Ubuntu or the PGDG RPMs put it, else `pg_ctl`.
fn pg_ctl_for(major: u32) -> String {
    [
        format!("/usr/lib/postgresql/{major}/bin/pg_ctl"),
        format!("/usr/pgsql-{major}/bin/pg_ctl"),
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or_else(|| "pg_ctl".to_string())
}
