//! Extracting a complete backup into an empty data directory and its tablespace
//! directories, the way PostgreSQL needs them.
//!
//! Archives are streamed (plain tar, or zstd through a streaming decoder) through our own tar
//! parser ([`TarStream`], which insists on the end-of-archive blocks, so a truncated plain
//! archive is an error, not a quietly short restore). Every member is checked before anything
//! is written: no absolute paths, no `..`, nothing beneath a symbolic link made earlier, no
//! hard links or special files, and symbolic links only as `pg_tblspc/<oid>` of a tablespace
//! the backup holds. Files are created with `O_EXCL`.
//!
//! Permissions follow the backup: directories 0700 and files 0600, or 0750/0640 when the
//! source data directory allowed group access (decided by the first member of the base
//! archive, `backup_label`, which the server writes with its file creation mode). Tablespaces
//! go to their recorded location or to the directory `--tablespace-map` gives; the
//! `tablespace_map` file is rewritten with the final paths (the server makes its
//! `pg_tblspc/<oid>` links from it at start) and the links are made here too, so the
//! directory is complete before the server ever starts. An in-place tablespace (a directory
//! `pg_tblspc/<oid>`) is extracted inside the data directory.
//!
//! Afterwards: `pg_wal/archive_status` (and `pg_wal/summaries` for 17+) exist, the files a
//! server must not find (`postmaster.pid`, `postmaster.opts`, `recovery.signal`,
//! `recovery.conf`) are removed, the captured configuration files are put into
//! `walden-config/`, and everything written is fsynced. On failure, what was written is
//! removed again, so the directories are empty as they were.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use indicatif::ProgressBar;

use crate::backup::BackupRecord;
use crate::backup::sink::ArchiveRecord;
use crate::backup::tar_stream::{
    ChecksumAlgorithm, Member, MemberKind, MemberVisitor, TarError, TarStream,
};
use crate::store::{StoreError, durable};

/// Where a restore reads a backup's files from.
pub trait BackupFiles {
    /// Opens a file of the backup by its name in the backup directory (`base.tar.zst`,
    /// `16384.tar`, `config/postgresql.conf`).
    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>>;
}

/// A backup directory on a local filesystem (`STORE/<cluster>/backups/<ID>/`).
#[derive(Clone, Debug)]
pub struct LocalBackupFiles {
    dir: PathBuf,
}

impl LocalBackupFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalBackupFiles { dir: dir.into() }
    }
}

impl BackupFiles for LocalBackupFiles {
    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        if relative_components(name.as_bytes()).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a file name inside the backup"),
            ));
        }
        Ok(Box::new(File::open(self.dir.join(name))?))
    }
}

/// Which tablespace a `--tablespace-map` entry means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TablespaceSelector {
    Oid(u32),
    Name(String),
}

impl std::fmt::Display for TablespaceSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TablespaceSelector::Oid(oid) => write!(f, "{oid}"),
            TablespaceSelector::Name(name) => f.write_str(name),
        }
    }
}

/// One `--tablespace-map OID_OR_NAME=DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceMapping {
    pub tablespace: TablespaceSelector,
    pub dir: PathBuf,
}

impl FromStr for TablespaceMapping {
    type Err = String;

    /// `OID=DIR` or `NAME=DIR`; `DIR` must be absolute (PostgreSQL's rule for locations).
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, dir) = s
            .split_once('=')
            .ok_or_else(|| format!("invalid tablespace mapping {s:?}: expected OID_OR_NAME=DIR"))?;
        if key.is_empty() {
            return Err(format!(
                "invalid tablespace mapping {s:?}: the tablespace OID or name is empty"
            ));
        }
        let dir = PathBuf::from(dir);
        if !dir.is_absolute() {
            return Err(format!(
                "invalid tablespace mapping {s:?}: the directory must be an absolute path"
            ));
        }
        let tablespace = match key.parse::<u32>() {
            Ok(oid) if key.bytes().all(|b| b.is_ascii_digit()) => TablespaceSelector::Oid(oid),
            _ => TablespaceSelector::Name(key.to_string()),
        };
        Ok(TablespaceMapping { tablespace, dir })
    }
}

/// The user and group that own everything written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// What [`extract_backup`] is asked to do.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// The data directory: it must exist and be empty ([`prepare_pgdata`]).
    pub pgdata: PathBuf,
    pub tablespace_map: Vec<TablespaceMapping>,
    /// Give every file, directory and link to this owner (needs root; see [`resolve_owner`]).
    pub owner: Option<Owner>,
    /// Advanced by the tar bytes extracted; its length is set to the backup's total.
    pub progress: Option<ProgressBar>,
}

impl ExtractOptions {
    pub fn new(pgdata: impl Into<PathBuf>) -> Self {
        ExtractOptions {
            pgdata: pgdata.into(),
            tablespace_map: Vec::new(),
            owner: None,
            progress: None,
        }
    }
}

/// Where one tablespace went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractedTablespace {
    pub oid: u32,
    pub name: Option<String>,
    pub dir: PathBuf,
    /// Inside the data directory as `pg_tblspc/<oid>` (`allow_in_place_tablespaces`).
    pub in_place: bool,
}

/// What [`extract_backup`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Bytes of file data written.
    pub bytes: u64,
    /// Regular files written.
    pub files: u64,
    /// The data directory allows group access (0750/0640).
    pub group_access: bool,
    pub tablespaces: Vec<ExtractedTablespace>,
    /// `PGDATA/walden-config` when configuration files were restored there.
    pub config_dir: Option<PathBuf>,
    pub config_files: Vec<String>,
    /// Files removed from the data directory after extraction (names relative to it).
    pub removed: Vec<String>,
}

/// Why a backup cannot be extracted. Each names the file or member and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(
        "data directory {path} is not empty: restore into an empty or absent directory (--force empties it)"
    )]
    NotEmpty { path: PathBuf },
    #[error("{path} is not a directory: give --pgdata a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "a server is running in {path} (pid {pid} in postmaster.pid): stop it before restoring into its data directory"
    )]
    ServerRunning { path: PathBuf, pid: i32 },
    #[error(
        "tablespace {oid} directory {path} is not empty: empty it, or restore the tablespace elsewhere with --tablespace-map {oid}=DIR"
    )]
    TablespaceNotEmpty { oid: u32, path: PathBuf },
    #[error(
        "tablespace {oid} would be restored to {path}, inside the data directory {pgdata}: restore it elsewhere with --tablespace-map {oid}=DIR"
    )]
    TablespaceInPgdata {
        oid: u32,
        path: PathBuf,
        pgdata: PathBuf,
    },
    #[error("--tablespace-map: {0}")]
    Mapping(String),
    #[error("disk full: cannot write {path}: free space on that filesystem and restore again")]
    NoSpace { path: PathBuf },
    #[error("permission denied: cannot {action} {path}: check its owner and mode")]
    PermissionDenied { action: &'static str, path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot read {name} of the backup: {source}")]
    Read { name: String, source: io::Error },
    #[error(
        "{name} is corrupt or truncated ({source}): the stored backup is damaged; restore another backup"
    )]
    Corrupt { name: String, source: io::Error },
    #[error("{0}: the stored backup is damaged; restore another backup")]
    Tar(#[from] TarError),
    #[error(
        "archive {archive}: member {member:?}: {reason}; refusing to extract it (nothing outside the target directories was written)"
    )]
    Unsafe {
        archive: String,
        member: String,
        reason: String,
    },
    #[error("owner {spec:?}: {reason}")]
    Owner { spec: String, reason: String },
    #[error(
        "the data directory would belong to root (the owner of {dir}), and PostgreSQL refuses to run as root: give --owner USER[:GROUP], e.g. --owner postgres"
    )]
    RootOwner { dir: PathBuf },
    #[error("backup {id}: {reason}; the backup record is inconsistent")]
    Record { id: String, reason: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl ExtractError {
    /// Refusals the user fixes by changing the command or the target directories are usage
    /// errors; everything else (damaged backup, disk, I/O) is a failure.
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            ExtractError::NotEmpty { .. }
            | ExtractError::NotADirectory { .. }
            | ExtractError::ServerRunning { .. }
            | ExtractError::TablespaceNotEmpty { .. }
            | ExtractError::TablespaceInPgdata { .. }
            | ExtractError::Mapping(_)
            | ExtractError::Owner { .. }
            | ExtractError::RootOwner { .. } => exit::USAGE,
            _ => exit::FAILURE,
        }
    }

    /// Wraps an I/O error with what was being done, turning "no space" and "permission
    /// denied" into their own variants.
    fn io(action: &'static str, path: &Path, source: io::Error) -> ExtractError {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                ExtractError::NoSpace { path }
            }
            io::ErrorKind::PermissionDenied => ExtractError::PermissionDenied { action, path },
            _ => ExtractError::Io {
                action,
                path,
                source,
            },
        }
    }
}

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
const GROUP_DIR_MODE: u32 = 0o750;
const GROUP_FILE_MODE: u32 = 0o640;
/// Where the captured configuration files go, inside the data directory.
pub const CONFIG_DIR: &str = "walden-config";
/// Files a restored data directory must not hold.
const REMOVE_AFTER: [&str; 4] = [
    "postmaster.pid",
    "postmaster.opts",
    "recovery.signal",
    "recovery.conf",
];
/// The largest `tablespace_map` accepted (it holds one line per tablespace).
const MAX_TABLESPACE_MAP: usize = 1 << 20;
const READ_CHUNK: usize = 256 * 1024;

/// Refuses, without changing anything, a `pgdata` that [`prepare_pgdata`] would refuse: not a
/// directory, not empty (unless `force`), or (with `force`) the data directory of a running
/// server. Absent or empty is fine.
pub fn check_pgdata(pgdata: &Path, force: bool) -> Result<(), ExtractError> {
    match fs::metadata(pgdata) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ExtractError::io("look at", pgdata, e)),
        Ok(m) if !m.is_dir() => Err(ExtractError::NotADirectory {
            path: pgdata.to_path_buf(),
        }),
        Ok(_) if is_empty_dir(pgdata)? => Ok(()),
        Ok(_) if !force => Err(ExtractError::NotEmpty {
            path: pgdata.to_path_buf(),
        }),
        Ok(_) => match running_postmaster(pgdata) {
            Some(pid) => Err(ExtractError::ServerRunning {
                path: pgdata.to_path_buf(),
                pid,
            }),
            None => Ok(()),
        },
    }
}

/// Makes `pgdata` ready for [`extract_backup`]: absent → created (0700, missing parents with
/// default permissions); empty → left as is; not empty → refused unless `force`, which
/// removes everything in it but keeps the directory. A data directory whose server is
/// running (a live pid in `postmaster.pid`) is never emptied.
pub fn prepare_pgdata(pgdata: &Path, force: bool) -> Result<(), ExtractError> {
    check_pgdata(pgdata, force)?;
    if fs::symlink_metadata(pgdata).is_err() {
        if let Some(parent) = pgdata.parent().filter(|p| !p.as_os_str().is_empty()) {
            durable::create_dir_all_durable(parent)?;
        }
        fs::create_dir(pgdata).map_err(|e| ExtractError::io("create directory", pgdata, e))?;
        set_mode(pgdata, DIR_MODE)?;
        durable::sync_dir(parent_of(pgdata))?;
    } else if !is_empty_dir(pgdata)? {
        empty_dir(pgdata)?;
        durable::sync_dir(pgdata)?;
    }
    Ok(())
}

/// The pid in `postmaster.pid` when that process exists.
fn running_postmaster(pgdata: &Path) -> Option<i32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let alive = match rustix::process::test_kill_process(rustix::process::Pid::from_raw(pid)?) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    };
    alive.then_some(pid)
}

/// Who should own the restored files. `None` when not running as root (files then belong
/// to the user running walden). As root: `spec` (`USER[:GROUP]`, names or numeric ids); by
/// default the owner of `pgdata`, or of its nearest existing ancestor. Root itself is
/// refused, since PostgreSQL will not run as root. Call this before [`prepare_pgdata`]
/// creates the directory.
pub fn resolve_owner(spec: Option<&str>, pgdata: &Path) -> Result<Option<Owner>, ExtractError> {
    if !rustix::process::geteuid().is_root() {
        return match spec {
            Some(spec) => Err(ExtractError::Owner {
                spec: spec.to_string(),
                reason: "only root can give files to another user; run as root or without --owner"
                    .into(),
            }),
            None => Ok(None),
        };
    }
    let owner = match spec {
        Some(spec) => {
            let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
            parse_owner(spec, &read("/etc/passwd"), &read("/etc/group")).map_err(|reason| {
                ExtractError::Owner {
                    spec: spec.to_string(),
                    reason,
                }
            })?
        }
        None => {
            let (dir, meta) = nearest_existing(pgdata)?;
            if meta.uid() == 0 {
                return Err(ExtractError::RootOwner { dir });
            }
            Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            }
        }
    };
    if owner.uid == 0 {
        return Err(ExtractError::Owner {
            spec: spec.unwrap_or_default().to_string(),
            reason: "PostgreSQL refuses to run as root: name the user the server runs as".into(),
        });
    }
    Ok(Some(owner))
}

/// `path` or its nearest ancestor that exists, with its metadata. An empty `path` owned by
/// root says nothing about who runs the server (an earlier failed restore may have made it):
/// its parent decides then.
fn nearest_existing(path: &Path) -> Result<(PathBuf, fs::Metadata), ExtractError> {
    let absolute = std::path::absolute(path).map_err(|e| ExtractError::io("look at", path, e))?;
    for dir in absolute.ancestors() {
        match fs::metadata(dir) {
            Ok(m) if dir == absolute && m.is_dir() && m.uid() == 0 && is_empty_dir(dir)? => {}
            Ok(m) => return Ok((dir.to_path_buf(), m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ExtractError::io("look at", dir, e)),
        }
    }
    Err(ExtractError::io(
        "look at",
        path,
        io::Error::from(io::ErrorKind::NotFound),
    ))
}

/// `USER[:GROUP]` against the text of `/etc/passwd` and `/etc/group`. Numeric ids need no
/// entry; a user without a group gets its primary group.
pub fn parse_owner(spec: &str, passwd: &str, group: &str) -> Result<Owner, String> {
    let (user, group_name) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group_name.is_some_and(str::is_empty) {
        return Err("expected USER[:GROUP]".into());
    }
    let numeric = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let users = passwd_entries(passwd);
    let (uid, primary) = match numeric(user) {
        Some(uid) => (
            uid,
            users.clone().find(|&(_, u, _)| u == uid).map(|(_, _, g)| g),
        ),
        None => {
            let (_, uid, gid) = users
                .clone()
                .find(|&(name, _, _)| name == user)
                .ok_or_else(|| format!("no user {user:?} in /etc/passwd"))?;
            (uid, Some(gid))
        }
    };
    let gid = match group_name {
        Some(g) => match numeric(g) {
            Some(gid) => gid,
            None => group
                .lines()
                .find_map(|line| {
                    let mut f = line.split(':');
                    (f.next()? == g).then_some(())?;
                    f.nth(1)?.parse::<u32>().ok()
                })
                .ok_or_else(|| format!("no group {g:?} in /etc/group"))?,
        },
        None => primary.ok_or_else(|| {
            format!("user id {uid} has no /etc/passwd entry to take a group from: give USER:GROUP")
        })?,
    };
    Ok(Owner { uid, gid })
}

/// (name, uid, gid) of each well-formed line of `/etc/passwd` text.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32)> + Clone {
    passwd.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let uid = f.nth(1)?.parse::<u32>().ok()?;
        let gid = f.next()?.parse::<u32>().ok()?;
        Some((name, uid, gid))
    })
}

/// The login name of `uid` in `/etc/passwd`, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd_entries(&passwd)
        .find(|&(_, u, _)| u == uid)
        .map(|(name, _, _)| name.to_string())
}

/// One tablespace's archive and where it goes.
struct TablespaceTarget<'a> {
    oid: u32,
    name: Option<String>,
    archive: &'a ArchiveRecord,
    dir: PathBuf,
    in_place: bool,
}

/// Fills the empty data directory `opts.pgdata` (and the tablespace directories) from a
/// complete backup: see the module documentation. Nothing is written until every target has
/// been checked; on failure what was written is removed again.
pub fn extract_backup(
    record: &BackupRecord,
    files: &dyn BackupFiles,
    opts: &ExtractOptions,
) -> Result<ExtractSummary, ExtractError> {
    let pgdata = &opts.pgdata;
    match fs::metadata(pgdata) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ExtractError::NotADirectory {
                path: pgdata.clone(),
            });
        }
        Err(e) => return Err(ExtractError::io("look at", pgdata, e)),
    }
    if !is_empty_dir(pgdata)? {
        return Err(ExtractError::NotEmpty {
            path: pgdata.clone(),
        });
    }
    let record_error = |reason: String| ExtractError::Record {
        id: record.id.clone(),
        reason,
    };
    let base = match record
        .archives
        .iter()
        .filter(|a| a.tablespace_oid.is_none())
        .collect::<Vec<_>>()[..]
    {
        [base] => base,
        _ => return Err(record_error("it must list exactly one base archive".into())),
    };
    let targets = plan_tablespaces(record, &opts.tablespace_map, pgdata)?;
    for t in targets.iter().filter(|t| !t.in_place) {
        match fs::symlink_metadata(&t.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ExtractError::io("look at", &t.dir, e)),
            Ok(m) if m.is_dir() && is_empty_dir(&t.dir)? => {}
            Ok(_) => {
                return Err(ExtractError::TablespaceNotEmpty {
                    oid: t.oid,
                    path: t.dir.clone(),
                });
            }
        }
    }
    let mut created_dirs = Vec::new();
    let result = extract_all(record, files, opts, base, &targets, &mut created_dirs);
    if result.is_err() {
        let _ = empty_dir(pgdata);
        for t in targets.iter().filter(|t| !t.in_place) {
            let _ = empty_dir(&t.dir);
        }
        for dir in created_dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
    result
}

/// Every tablespace of the backup with its archive and final directory.
fn plan_tablespaces<'a>(
    record: &'a BackupRecord,
    mappings: &[TablespaceMapping],
    pgdata: &Path,
) -> Result<Vec<TablespaceTarget<'a>>, ExtractError> {
    let record_error = |reason: String| ExtractError::Record {
        id: record.id.clone(),
        reason,
    };
    let pgdata_abs = canonical_or_lexical(pgdata)?;
    let mut used = vec![false; mappings.len()];
    let mut targets = Vec::new();
    for archive in &record.archives {
        let Some(oid) = archive.tablespace_oid else {
            continue;
        };
        let ts = record.tablespaces.iter().find(|t| t.oid == oid);
        let location = ts
            .map(|t| t.location.as_str())
            .or(archive.tablespace_location.as_deref())
            .ok_or_else(|| record_error(format!("archive {} has no location", archive.name)))?;
        let name = ts.and_then(|t| t.name.clone());
        let mut mapped = None;
        for (i, m) in mappings.iter().enumerate() {
            let hit = match &m.tablespace {
                TablespaceSelector::Oid(o) => *o == oid,
                TablespaceSelector::Name(n) => name.as_deref() == Some(n.as_str()),
            };
            if hit {
                if mapped.is_some() {
                    return Err(ExtractError::Mapping(format!(
                        "tablespace {oid} is mapped more than once"
                    )));
                }
                used[i] = true;
                mapped = Some(m.dir.clone());
            }
        }
        let in_place = !location.starts_with('/');
        let dir = if in_place {
            if location != format!("pg_tblspc/{oid}") {
                return Err(record_error(format!(
                    "tablespace {oid} has the relative location {location:?}, not pg_tblspc/{oid}"
                )));
            }
            if mapped.is_some() {
                return Err(ExtractError::Mapping(format!(
                    "tablespace {oid} is an in-place tablespace (inside the data directory) and cannot be mapped"
                )));
            }
            pgdata.join(location)
        } else {
            let dir = mapped.unwrap_or_else(|| PathBuf::from(location));
            let abs = canonical_or_lexical(&dir)?;
            if abs.starts_with(&pgdata_abs) || pgdata_abs.starts_with(&abs) {
                return Err(ExtractError::TablespaceInPgdata {
                    oid,
                    path: dir,
                    pgdata: pgdata.to_path_buf(),
                });
            }
            dir
        };
        if targets
            .iter()
            .any(|t: &TablespaceTarget<'_>| !in_place && t.dir == dir)
        {
            return Err(ExtractError::Mapping(format!(
                "two tablespaces would share the directory {}",
                dir.display()
            )));
        }
        targets.push(TablespaceTarget {
            oid,
            name,
            archive,
            dir,
            in_place,
        });
    }
    if let Some(t) = record
        .tablespaces
        .iter()
        .find(|t| !targets.iter().any(|x| x.oid == t.oid))
    {
        return Err(record_error(format!("tablespace {} has no archive", t.oid)));
    }
    if let Some(i) = used.iter().position(|u| !u) {
        let known: Vec<String> = targets
            .iter()
            .map(|t| match &t.name {
                Some(n) => format!("{} ({n})", t.oid),
                None => t.oid.to_string(),
            })
            .collect();
        return Err(ExtractError::Mapping(format!(
            "the backup has no tablespace {} (it has: {})",
            mappings[i].tablespace,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    Ok(targets)
}

/// The absolute form of `path` with symbolic links resolved as far as it exists.
fn canonical_or_lexical(path: &Path) -> Result<PathBuf, ExtractError> {
    let absolute = std::path::absolute(path).map_err(|e| ExtractError::io("look at", path, e))?;
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        match fs::canonicalize(existing) {
            Ok(mut c) => {
                for part in missing.iter().rev() {
                    c.push(part);
                }
                return Ok(c);
            }
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    missing.push(name.to_os_string());
                    existing = parent;
                }
                _ => return Ok(absolute),
            },
        }
    }
}

fn extract_all(
    record: &BackupRecord,
    files: &dyn BackupFiles,
    opts: &ExtractOptions,
    base: &ArchiveRecord,
    targets: &[TablespaceTarget<'_>],
    created_dirs: &mut Vec<PathBuf>,
) -> Result<ExtractSummary, ExtractError> {
    let pgdata = &opts.pgdata;
    if let Some(bar) = &opts.progress {
        bar.set_length(record.archives.iter().map(|a| a.tar_bytes).sum());
    }
    let links: Vec<(u32, PathBuf)> = targets
        .iter()
        .filter(|t| !t.in_place)
        .map(|t| (t.oid, t.dir.clone()))
        .collect();
    let mut main = Extractor::new(pgdata.clone(), base.name.clone(), opts.owner);
    main.tablespace_links = Some(links.clone());
    stream_archive(files, base, &mut main, opts.progress.as_ref())?;
    let modes = main.modes.unwrap_or(Modes::PRIVATE);
    main.modes = Some(modes);
    main.set_root_mode()?;
    let mut summary = ExtractSummary {
        group_access: modes == Modes::GROUP,
        ..ExtractSummary::default()
    };

    for t in targets {
        let root = if t.in_place {
            let rel = format!("pg_tblspc/{}", t.oid);
            main.ensure_dir(rel.as_bytes())?;
            t.dir.clone()
        } else {
            create_tablespace_dir(&t.dir, modes, opts.owner, created_dirs)?;
            t.dir.clone()
        };
        let mut ts = Extractor::new(root, t.archive.name.clone(), opts.owner);
        ts.modes = Some(modes);
        stream_archive(files, t.archive, &mut ts, opts.progress.as_ref())?;
        summary.bytes += ts.bytes;
        summary.files += ts.files;
        summary.tablespaces.push(ExtractedTablespace {
            oid: t.oid,
            name: t.name.clone(),
            dir: t.dir.clone(),
            in_place: t.in_place,
        });
    }

    // The links the server would make from tablespace_map, made now as well.
    for (oid, dir) in &links {
        let rel = format!("pg_tblspc/{oid}");
        let path = pgdata.join(&rel);
        match fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                main.ensure_dir(b"pg_tblspc")?;
                main.symlink(dir, &path)?;
            }
            Err(e) => return Err(ExtractError::io("look at", &path, e)),
        }
    }

    main.ensure_dir(b"pg_wal/archive_status")?;
    if record.server_version_num >= 170_000 {
        main.ensure_dir(b"pg_wal/summaries")?;
    }
    for name in REMOVE_AFTER {
        let path = pgdata.join(name);
        match fs::symlink_metadata(&path) {
            Ok(m) if !m.is_dir() => {
                fs::remove_file(&path).map_err(|e| ExtractError::io("remove", &path, e))?;
                summary.removed.push(name.to_string());
            }
            _ => {}
        }
    }

    let config = &record.config_files;
    if config.captured && !config.files.is_empty() {
        let dir = restore_config(record, files, &mut main)?;
        summary.config_dir = Some(dir);
        summary.config_files = config.files.clone();
    }

    summary.bytes += main.bytes;
    summary.files += main.files;
    durable::sync_tree(pgdata)?;
    for t in targets.iter().filter(|t| !t.in_place) {
        durable::sync_tree(&t.dir)?;
        durable::sync_dir(parent_of(&t.dir))?;
    }
    Ok(summary)
}

/// Creates a tablespace's directory (it is empty or absent, checked before) with the data
/// directory's mode and owner; missing ancestors get default permissions.
fn create_tablespace_dir(
    dir: &Path,
    modes: Modes,
    owner: Option<Owner>,
    created: &mut Vec<PathBuf>,
) -> Result<(), ExtractError> {
    if let Some(parent) = dir.parent() {
        for a in parent.ancestors() {
            if a.as_os_str().is_empty() || a.exists() {
                break;
            }
            created.push(a.to_path_buf());
        }
        durable::create_dir_all_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => created.push(dir.to_path_buf()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ExtractError::io("create directory", dir, e)),
    }
    set_mode(dir, modes.dir)?;
    if let Some(o) = owner {
        std::os::unix::fs::chown(dir, Some(o.uid), Some(o.gid))
            .map_err(|e| ExtractError::io("change the owner of", dir, e))?;
    }
    Ok(())
}

/// Copies the captured configuration files into `PGDATA/walden-config/` (0700/0600).
fn restore_config(
    record: &BackupRecord,
    files: &dyn BackupFiles,
    main: &mut Extractor,
) -> Result<PathBuf, ExtractError> {
    let dir = main.root.join(CONFIG_DIR);
    main.mkdir_at(&dir, DIR_MODE)?;
    for name in &record.config_files.files {
        let plain = !name.is_empty()
            && !name.contains('/')
            && name != "."
            && name != ".."
            && !name.contains('\0');
        if !plain {
            return Err(ExtractError::Record {
                id: record.id.clone(),
                reason: format!("configuration file name {name:?} is not a plain file name"),
            });
        }
        let stored = format!("config/{name}");
        let mut source = files.open(&stored).map_err(|source| ExtractError::Read {
            name: stored.clone(),
            source,
        })?;
        let path = dir.join(name);
        let mut file = main.create_file(&path, FILE_MODE)?;
        let copied = io::copy(&mut source, &mut file).map_err(|e| {
            if e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded {
                ExtractError::io("write", &path, e)
            } else {
                ExtractError::Read {
                    name: stored.clone(),
                    source: e,
                }
            }
        })?;
        main.bytes += copied;
        main.files += 1;
    }
    Ok(dir)
}

/// An error of the backup's own file (not of decompression), kept apart through the decoder.
#[derive(Debug)]
struct SourceError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

struct Tagged(Box<dyn Read + Send>);

impl Read for Tagged {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::Interrupted => e,
            kind => io::Error::new(kind, SourceError(e)),
        })
    }
}

/// Streams one archive through the tar parser into `extractor`.
fn stream_archive(
    files: &dyn BackupFiles,
    archive: &ArchiveRecord,
    extractor: &mut Extractor,
    progress: Option<&ProgressBar>,
) -> Result<(), ExtractError> {
    let name = archive.name.as_str();
    let source = files.open(name).map_err(|source| ExtractError::Read {
        name: name.to_string(),
        source,
    })?;
    let tar_name = name.strip_suffix(".zst");
    let mut reader: Box<dyn Read> = match tar_name {
        Some(_) => Box::new(zstd::stream::read::Decoder::new(Tagged(source)).map_err(
            |source| ExtractError::Read {
                name: name.to_string(),
                source,
            },
        )?),
        None => Box::new(Tagged(source)),
    };
    let mut tar = TarStream::new(tar_name.unwrap_or(name), "", ChecksumAlgorithm::None);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(name, e)),
        };
        tar.feed_with(buf.get(..n).unwrap_or_default(), extractor)?;
        if let Some(bar) = progress {
            bar.inc(n as u64);
        }
    }
    tar.finish()?;
    extractor.close_file()
}

/// A read error: the stored file's own, or the decoder's (corrupt or truncated data).
fn read_error(name: &str, e: io::Error) -> ExtractError {
    let kind = e.kind();
    match e.into_inner() {
        Some(inner) => match inner.downcast::<SourceError>() {
            Ok(source) => ExtractError::Read {
                name: name.to_string(),
                source: source.0,
            },
            Err(other) => ExtractError::Corrupt {
                name: name.to_string(),
                source: io::Error::new(kind, other),
            },
        },
        None => ExtractError::Corrupt {
            name: name.to_string(),
            source: io::Error::from(kind),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Modes {
    dir: u32,
    file: u32,
}

impl Modes {
    const PRIVATE: Modes = Modes {
        dir: DIR_MODE,
        file: FILE_MODE,
    };
    const GROUP: Modes = Modes {
        dir: GROUP_DIR_MODE,
        file: GROUP_FILE_MODE,
    };
}

/// Where the current regular file's bytes go.
enum Output {
    None,
    File(File, PathBuf),
    /// `tablespace_map`, kept to be rewritten with the final paths.
    TablespaceMap(Vec<u8>),
}

/// Writes one archive's members under `root`.
struct Extractor {
    root: PathBuf,
    archive: String,
    owner: Option<Owner>,
    /// Decided by the base archive's first member; given for tablespace archives.
    modes: Option<Modes>,
    /// For the base archive: the final directory of each tablespace kept outside the data
    /// directory (targets for `pg_tblspc/<oid>` links and `tablespace_map`). `None` for a
    /// tablespace archive, where links are refused.
    tablespace_links: Option<Vec<(u32, PathBuf)>>,
    /// Directories known to exist (made by us), relative to `root`.
    dirs: HashSet<Vec<u8>>,
    /// Symbolic links made, relative to `root`: nothing may be written beneath them.
    symlinks: HashSet<Vec<u8>>,
    output: Output,
    bytes: u64,
    files: u64,
}

impl Extractor {
    fn new(root: PathBuf, archive: String, owner: Option<Owner>) -> Self {
        Extractor {
            root,
            archive,
            owner,
            modes: None,
            tablespace_links: None,
            dirs: HashSet::new(),
            symlinks: HashSet::new(),
            output: Output::None,
            bytes: 0,
            files: 0,
        }
    }

    fn unsafe_member(&self, member: &[u8], reason: impl Into<String>) -> ExtractError {
        ExtractError::Unsafe {
            archive: self.archive.clone(),
            member: String::from_utf8_lossy(member).into_owned(),
            reason: reason.into(),
        }
    }

    fn modes(&self) -> Modes {
        self.modes.unwrap_or(Modes::PRIVATE)
    }

    /// Applies the directory mode and owner to the root itself.
    fn set_root_mode(&self) -> Result<(), ExtractError> {
        set_mode(&self.root, self.modes().dir)?;
        self.chown(&self.root, false)
    }

    fn chown(&self, path: &Path, link: bool) -> Result<(), ExtractError> {
        let Some(o) = self.owner else {
            return Ok(());
        };
        let result = if link {
            std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid))
        } else {
            std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid))
        };
        result.map_err(|e| ExtractError::io("change the owner of", path, e))
    }

    /// Refuses a path beneath a symbolic link made from this archive.
    fn check_not_beneath_link(&self, rel: &[u8]) -> Result<(), ExtractError> {
        for (i, &b) in rel.iter().enumerate() {
            if b == b'/' && self.symlinks.contains(&rel[..i]) {
                let link = String::from_utf8_lossy(&rel[..i]).into_owned();
                return Err(
                    self.unsafe_member(rel, format!("it lies beneath the symbolic link {link}"))
                );
            }
        }
        Ok(())
    }

    /// Makes sure the directory `rel` (and its ancestors) exist, as real directories.
    fn ensure_dir(&mut self, rel: &[u8]) -> Result<(), ExtractError> {
        if rel.is_empty() || self.dirs.contains(rel) {
            return Ok(());
        }
        self.check_not_beneath_link(rel)?;
        if let Some(cut) = rel.iter().rposition(|&b| b == b'/') {
            self.ensure_dir(&rel[..cut])?;
        }
        let path = self.root.join(OsStr::from_bytes(rel));
        let mode = self.modes().dir;
        match fs::create_dir(&path) {
            Ok(()) => {
                set_mode(&path, mode)?;
                self.chown(&path, false)?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(&path)
                    .map_err(|e| ExtractError::io("look at", &path, e))?;
                if !meta.is_dir() {
                    return Err(self.unsafe_member(rel, "a non-directory of that name exists"));
                }
            }
            Err(e) => return Err(ExtractError::io("create directory", &path, e)),
        }
        self.dirs.insert(rel.to_vec());
        Ok(())
    }

    /// Creates a directory outside the tar's own members (e.g. `walden-config`).
    fn mkdir_at(&self, path: &Path, mode: u32) -> Result<(), ExtractError> {
        fs::create_dir(path).map_err(|e| ExtractError::io("create directory", path, e))?;
        set_mode(path, mode)?;
        self.chown(path, false)
    }

    /// Creates a new file (`O_EXCL`) with `mode` and the owner.
    fn create_file(&self, path: &Path, mode: u32) -> Result<File, ExtractError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| ExtractError::io("create", path, e))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| ExtractError::io("set the mode of", path, e))?;
        if let Some(o) = self.owner {
            std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))
                .map_err(|e| ExtractError::io("change the owner of", path, e))?;
        }
        Ok(file)
    }

    fn symlink(&mut self, target: &Path, path: &Path) -> Result<(), ExtractError> {
        std::os::unix::fs::symlink(target, path)
            .map_err(|e| ExtractError::io("create symbolic link", path, e))?;
        self.chown(path, true)
    }

    /// Closes the current file (data complete).
    fn close_file(&mut self) -> Result<(), ExtractError> {
        match std::mem::replace(&mut self.output, Output::None) {
            Output::None => Ok(()),
            Output::File(..) => {
                self.files += 1;
                Ok(())
            }
            Output::TablespaceMap(original) => {
                let links = self.tablespace_links.clone().unwrap_or_default();
                let text = rewrite_tablespace_map(&original, &links)
                    .map_err(|reason| self.unsafe_member(b"tablespace_map", reason))?;
                let path = self.root.join("tablespace_map");
                let mut file = self.create_file(&path, self.modes().file)?;
                file.write_all(&text)
                    .map_err(|e| ExtractError::io("write", &path, e))?;
                self.bytes += text.len() as u64;
                self.files += 1;
                Ok(())
            }
        }
    }
}

impl MemberVisitor for Extractor {
    type Error = ExtractError;

    fn member(&mut self, member: &Member) -> Result<(), ExtractError> {
        self.close_file()?;
        let raw = member.path.as_bytes();
        let rel = relative_components(raw).ok_or_else(|| {
            self.unsafe_member(
                raw,
                "absolute paths and '..' components are not allowed in a backup",
            )
        })?;
        if self.modes.is_none() && matches!(member.kind, MemberKind::File | MemberKind::Directory) {
            self.modes = Some(if member.mode & 0o040 != 0 {
                Modes::GROUP
            } else {
                Modes::PRIVATE
            });
            self.set_root_mode()?;
        }
        if rel.is_empty() {
            return match member.kind {
                MemberKind::Directory => Ok(()),
                _ => Err(self.unsafe_member(raw, "it names the target directory itself")),
            };
        }
        self.check_not_beneath_link(&rel)?;
        let path = self.root.join(OsStr::from_bytes(&rel));
        match &member.kind {
            MemberKind::Directory => self.ensure_dir(&rel),
            MemberKind::File => {
                if let Some(cut) = rel.iter().rposition(|&b| b == b'/') {
                    self.ensure_dir(&rel[..cut])?;
                }
                if self.tablespace_links.is_some() && rel == b"tablespace_map" {
                    self.output = Output::TablespaceMap(Vec::new());
                    return Ok(());
                }
                let file = match self.create_file(&path, self.modes().file) {
                    Err(ExtractError::Io { source, .. })
                        if source.kind() == io::ErrorKind::AlreadyExists =>
                    {
                        return Err(self.unsafe_member(&rel, "it appears twice in the archive"));
                    }
                    other => other?,
                };
                self.output = Output::File(file, path);
                Ok(())
            }
            MemberKind::Symlink { .. } => {
                let oid = rel
                    .strip_prefix(b"pg_tblspc/")
                    .and_then(|o| std::str::from_utf8(o).ok())
                    .and_then(|o| o.parse::<u32>().ok());
                let dir = match (&self.tablespace_links, oid) {
                    (Some(links), Some(oid)) => links
                        .iter()
                        .find(|(o, _)| *o == oid)
                        .map(|(_, d)| d.clone())
                        .ok_or_else(|| {
                            self.unsafe_member(
                                &rel,
                                format!(
                                    "a link for tablespace {oid}, which the backup does not hold"
                                ),
                            )
                        })?,
                    _ => {
                        return Err(self.unsafe_member(
                            &rel,
                            "symbolic links are allowed only as pg_tblspc/<oid> in the base archive",
                        ));
                    }
                };
                self.ensure_dir(b"pg_tblspc")?;
                self.symlink(&dir, &path)?;
                self.symlinks.insert(rel);
                Ok(())
            }
            MemberKind::HardLink { .. } => {
                Err(self.unsafe_member(&rel, "hard links are not allowed"))
            }
            MemberKind::Other { typeflag } => Err(self.unsafe_member(
                &rel,
                format!(
                    "device files, FIFOs and other special members (type {:?}) are not allowed",
                    char::from(*typeflag)
                ),
            )),
        }
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), ExtractError> {
        match &mut self.output {
            Output::None => Ok(()),
            Output::File(file, path) => {
                file.write_all(bytes)
                    .map_err(|e| ExtractError::io("write", path, e))?;
                self.bytes += bytes.len() as u64;
                Ok(())
            }
            Output::TablespaceMap(buf) => {
                if buf.len() + bytes.len() > MAX_TABLESPACE_MAP {
                    return Err(self.unsafe_member(b"tablespace_map", "it is larger than 1 MB"));
                }
                buf.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn file_end(&mut self) -> Result<(), ExtractError> {
        self.close_file()
    }
}

/// The components of a member path joined by `/`, without empty and `.` components; `None`
/// for an absolute path or one with a `..` component.
fn relative_components(path: &[u8]) -> Option<Vec<u8>> {
    if path.first() == Some(&b'/') {
        return None;
    }
    let mut out = Vec::with_capacity(path.len());
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            part => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    Some(out)
}

/// Parses a `tablespace_map` (`<oid> <path>` lines; a backslash makes the next character
/// literal, so paths may hold newlines) into `(oid, path)` pairs.
fn parse_tablespace_map(text: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut entries = Vec::new();
    let mut line = Vec::new();
    let mut escaped = false;
    for &b in text {
        if !escaped && (b == b'\n' || b == b'\r') {
            if line.is_empty() {
                continue;
            }
            let space = line
                .iter()
                .position(|&c| c == b' ')
                .filter(|&n| n >= 1 && n + 1 < line.len())
                .ok_or("a line is not '<oid> <path>'")?;
            let oid = &line[..space];
            if !oid.iter().all(u8::is_ascii_digit) {
                return Err(format!(
                    "{:?} is not a tablespace OID",
                    String::from_utf8_lossy(oid)
                ));
            }
            let oid = String::from_utf8_lossy(oid).into_owned();
            entries.push((oid, line[space + 1..].to_vec()));
            line.clear();
        } else if !escaped && b == b'\\' {
            escaped = true;
        } else {
            line.push(b);
            escaped = false;
        }
    }
    if !line.is_empty() || escaped {
        return Err("its last line is not terminated".into());
    }
    Ok(entries)
}

/// `tablespace_map` with each listed tablespace's path replaced by its final directory,
/// escaped as the server expects (`\` before newline, carriage return and backslash).
fn rewrite_tablespace_map(original: &[u8], links: &[(u32, PathBuf)]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(original.len());
    for (oid, path) in parse_tablespace_map(original)? {
        let path = links
            .iter()
            .find(|(o, _)| o.to_string() == oid)
            .map_or(path, |(_, dir)| dir.as_os_str().as_bytes().to_vec());
        out.extend_from_slice(oid.as_bytes());
        out.push(b' ');
        for b in path {
            if matches!(b, b'\n' | b'\r' | b'\\') {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'\n');
    }
    Ok(out)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ExtractError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| ExtractError::io("set the mode of", path, e))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn is_empty_dir(path: &Path) -> Result<bool, ExtractError> {
    let mut entries = fs::read_dir(path).map_err(|e| ExtractError::io("list", path, e))?;
    Ok(entries.next().is_none())
}

/// Removes everything inside `dir`, keeping `dir`; symbolic links are removed, not followed.
fn empty_dir(dir: &Path) -> Result<(), ExtractError> {
    for entry in fs::read_dir(dir).map_err(|e| ExtractError::io("list", dir, e))? {
        let entry = entry.map_err(|e| ExtractError::io("list", dir, e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| ExtractError::io("look at", &path, e))?;
        let removed = if kind.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| ExtractError::io("remove", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Cursor;

    /// One tar member: name, typeflag, mode, data, link target.
    fn member(name: &str, typeflag: u8, mode: u32, data: &[u8], link: &str) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(format!("{mode:07o}").as_bytes());
        h[108..115].copy_from_slice(b"0000764");
        h[116..123].copy_from_slice(b"0000764");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"15071334000");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..265].copy_from_slice(b"ustar\x0000");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
        out
    }

    fn file(name: &str, data: &[u8]) -> Vec<u8> {
        member(name, b'0', 0o600, data, "")
    }

    fn dir(name: &str) -> Vec<u8> {
        member(name, b'5', 0o700, b"", "")
    }

    fn tar(members: &[Vec<u8>]) -> Vec<u8> {
        let mut out = members.concat();
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(bytes, 3).unwrap()
    }

    struct MemFiles(HashMap<String, Vec<u8>>);

    impl BackupFiles for MemFiles {
        fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
            match self.0.get(name) {
                Some(b) => Ok(Box::new(Cursor::new(b.clone()))),
                None => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        }
    }

    /// A record of `archives` (name, tablespace oid, location) and `tablespaces`
    /// (oid, location, name).
    fn record(
        archives: &[(&str, Option<u32>, Option<&str>)],
        tablespaces: &[(u32, &str, Option<&str>)],
        files: &MemFiles,
    ) -> BackupRecord {
        let archives: Vec<_> = archives
            .iter()
            .map(|(name, oid, loc)| {
                serde_json::json!({
                    "name": name, "tablespace_oid": oid, "tablespace_location": loc,
                    "bytes": 0, "tar_bytes": files.0.get(*name).map_or(0, |b| {
                        if name.ends_with(".zst") {
                            zstd::stream::decode_all(&b[..]).map_or(0, |t| t.len())
                        } else {
                            b.len()
                        }
                    }),
                })
            })
            .collect();
        let tablespaces: Vec<_> = tablespaces
            .iter()
            .map(|(oid, loc, name)| serde_json::json!({"oid": oid, "location": loc, "name": name}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": "20261122T193000Z", "label": "t", "status": "complete",
            "start_lsn": "0/2000028", "start_timeline": 1, "stop_lsn": "0/2000100",
            "stop_timeline": 1, "start_time": "2026-11-22T19:30:00Z",
            "stop_time": "2026-11-22T19:30:05Z", "server_version": "16.4",
            "server_version_num": 160004, "system_identifier": "7",
            "wal_segment_size": 16777216, "compression": "none", "includes_wal": false,
            "from_standby": false, "archives": archives, "tablespaces": tablespaces,
            "bytes": 0, "manifest_files": 0, "history_files": [],
            "config_files": {"captured": false, "files": [], "sources": [], "reason": null},
        }))
        .unwrap()
    }

    fn base_members() -> Vec<Vec<u8>> {
        vec![
            file("backup_label", b"START WAL LOCATION: 0/2000028\n"),
            dir("base/"),
            dir("base/1/"),
            file("base/1/1259", &vec![9; 20_000]),
            dir("global/"),
            file("global/pg_control", &[7; 8192]),
            dir("pg_wal/"),
            dir("pg_tblspc/"),
            file("postmaster.opts", b"/usr/bin/postgres\n"),
            file("PG_VERSION", b"16\n"),
        ]
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn one_archive(name: &str, bytes: Vec<u8>) -> (BackupRecord, MemFiles) {
        let files = MemFiles(HashMap::from([(name.to_string(), bytes)]));
        (record(&[(name, None, None)], &[], &files), files)
    }

    #[test]
    fn plain_and_zstd_archives_extract_with_private_modes() {
        let plain = tar(&base_members());
        for (name, bytes) in [("base.tar", plain.clone()), ("base.tar.zst", zstd(&plain))] {
            let tmp = tempfile::tempdir().unwrap();
            let pgdata = tmp.path().join("data");
            prepare_pgdata(&pgdata, false).unwrap();
            let (rec, files) = one_archive(name, bytes);
            let mut opts = ExtractOptions::new(&pgdata);
            let bar = ProgressBar::hidden();
            opts.progress = Some(bar.clone());
            let sum = extract_backup(&rec, &files, &opts).unwrap();
            assert_eq!(bar.position(), plain.len() as u64, "{name}");
            assert_eq!(bar.length(), Some(plain.len() as u64));
            assert_eq!(
                fs::read(pgdata.join("base/1/1259")).unwrap(),
                vec![9; 20_000]
            );
            assert_eq!(fs::read(pgdata.join("PG_VERSION")).unwrap(), b"16\n");
            assert_eq!(
                sum.files, 5,
                "postmaster.opts counted as written, then removed"
            );
            assert_eq!(sum.bytes, 30 + 20_000 + 8192 + 18 + 3);
            assert_eq!(sum.removed, ["postmaster.opts"]);
            assert!(!pgdata.join("postmaster.opts").exists());
            assert!(!sum.group_access);
            assert!(pgdata.join("pg_wal/archive_status").is_dir());
            assert!(!pgdata.join("pg_wal/summaries").exists(), "only for 17+");
            assert_eq!(mode(&pgdata), 0o700);
            assert_eq!(mode(&pgdata.join("base/1")), 0o700);
            assert_eq!(mode(&pgdata.join("pg_wal/archive_status")), 0o700);
            assert_eq!(mode(&pgdata.join("global/pg_control")), 0o600);
            assert_eq!(sum.config_dir, None);
        }
    }

    #[test]
    fn group_access_is_kept_and_17_gets_summaries() {
        let mut members = base_members();
        members[0] = member("backup_label", b'0', 0o640, b"START\n", "");
        members[1] = member("base/", b'5', 0o750, b"", "");
        let (mut rec, files) = one_archive("base.tar", tar(&members));
        rec.server_version_num = 170_002;
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        prepare_pgdata(&pgdata, false).unwrap();
        let sum = extract_backup(&rec, &files, &ExtractOptions::new(&pgdata)).unwrap();
        assert!(sum.group_access);
        assert_eq!(mode(&pgdata), 0o750);
        assert_eq!(mode(&pgdata.join("base/1")), 0o750);
        assert_eq!(mode(&pgdata.join("pg_wal/summaries")), 0o750);
        assert_eq!(mode(&pgdata.join("base/1/1259")), 0o640);
        assert_eq!(mode(&pgdata.join("backup_label")), 0o640);
    }

    /// Extracts a base archive of `members` into a fresh data directory.
    fn extract_members(
        members: &[Vec<u8>],
    ) -> (tempfile::TempDir, Result<ExtractSummary, ExtractError>) {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        prepare_pgdata(&pgdata, false).unwrap();
        let (rec, files) = one_archive("base.tar", tar(members));
        let result = extract_backup(&rec, &files, &ExtractOptions::new(&pgdata));
        (tmp, result)
    }

    #[test]
    fn escapes_and_special_members_are_refused_and_nothing_is_left() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (file("../x", b"evil"), "'..' components"),
            (file("base/../../x", b"evil"), "'..' components"),
            (file("/abs", b"evil"), "absolute paths"),
            (member("lnk", b'1', 0o600, b"", "PG_VERSION"), "hard links"),
            (
                member("fifo", b'6', 0o600, b"", ""),
                "special members (type '6')",
            ),
            (
                member("dev", b'3', 0o600, b"", ""),
                "special members (type '3')",
            ),
            (
                member("lnk", b'2', 0o777, b"", "/etc"),
                "only as pg_tblspc/<oid>",
            ),
            (
                member("pg_tblspc/99", b'2', 0o777, b"", "/etc"),
                "tablespace 99, which",
            ),
            (file("PG_VERSION", b"again"), "appears twice"),
        ];
        for (bad, why) in cases {
            let mut members = base_members();
            members.push(bad);
            members.push(file("after", b"x"));
            let (tmp, result) = extract_members(&members);
            let err = result.unwrap_err();
            assert!(matches!(err, ExtractError::Unsafe { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(why), "{msg}");
            assert!(msg.starts_with("archive base.tar: member "), "{msg}");
            let left: Vec<_> = fs::read_dir(tmp.path().join("data")).unwrap().collect();
            assert!(
                left.is_empty(),
                "the data directory is emptied again: {left:?}"
            );
            let outside: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
            assert_eq!(outside.len(), 1, "nothing written beside it");
        }
    }

    #[test]
    fn nothing_is_written_through_a_tablespace_link() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        let ts = tmp.path().join("ts");
        prepare_pgdata(&pgdata, false).unwrap();
        let mut members = base_members();
        members.push(member("pg_tblspc/16384", b'2', 0o777, b"", "/old/ts"));
        members.push(file("pg_tblspc/16384/evil", b"x"));
        let base = tar(&members);
        let ts_tar = tar(&[dir("PG_16_202307071/")]);
        let files = MemFiles(HashMap::from([
            ("base.tar".to_string(), base),
            ("16384.tar".to_string(), ts_tar),
        ]));
        let loc = ts.to_str().unwrap();
        let rec = record(
            &[
                ("16384.tar", Some(16384), Some(loc)),
                ("base.tar", None, None),
            ],
            &[(16384, loc, None)],
            &files,
        );
        let err = extract_backup(&rec, &files, &ExtractOptions::new(&pgdata)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("beneath the symbolic link pg_tblspc/16384"),
            "{msg}"
        );
        assert!(!ts.join("evil").exists());
        assert_eq!(fs::read_dir(&pgdata).unwrap().count(), 0);
    }

    #[test]
    fn damaged_archives_are_reported_by_name() {
        let plain = tar(&base_members());
        // Plain tar cut at a member boundary: only the missing end blocks tell.
        let cut = plain.len() - 1024 - 512 - 512;
        let (_t, r) = extract_members_raw("base.tar", plain[..cut].to_vec());
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("base.tar is truncated"), "{msg}");
        assert!(msg.contains("restore another backup"), "{msg}");

        let z = zstd(&plain);
        let (_t, r) = extract_members_raw("base.tar.zst", z[..z.len() / 2].to_vec());
        let err = r.unwrap_err();
        assert!(matches!(err, ExtractError::Corrupt { .. }), "{err:?}");
        assert_eq!(err.exit_code(), crate::exit::FAILURE);
        assert!(
            err.to_string()
                .starts_with("base.tar.zst is corrupt or truncated")
        );

        let mut bad = z.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        bad[mid + 1] ^= 0xff;
        let (_t, r) = extract_members_raw("base.tar.zst", bad);
        assert!(matches!(
            r,
            Err(ExtractError::Corrupt { .. }) | Err(ExtractError::Tar(_))
        ));

        let tmp = tempfile::tempdir().unwrap();
        let (rec, _) = one_archive("base.tar", plain);
        let err = extract_backup(
            &rec,
            &MemFiles(HashMap::new()),
            &ExtractOptions::new(tmp.path()),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read base.tar of the backup"),
            "{err}"
        );
    }

    fn extract_members_raw(
        name: &str,
        bytes: Vec<u8>,
    ) -> (tempfile::TempDir, Result<ExtractSummary, ExtractError>) {
        let tmp = tempfile::tempdir().unwrap();
        let (rec, files) = one_archive(name, bytes);
        let r = extract_backup(&rec, &files, &ExtractOptions::new(tmp.path()));
        (tmp, r)
    }

    /// A backup with tablespace 16384 ("ts1", recorded at `location`) taken with
    /// TABLESPACE_MAP, and an in-place tablespace 16385.
    fn tablespace_backup(location: &str) -> (BackupRecord, MemFiles) {
        let mut members = base_members();
        let escaped = location.replace('\\', "\\\\").replace('\n', "\\\n");
        members.insert(
            1,
            file("tablespace_map", format!("16384 {escaped}\n").as_bytes()),
        );
        members.push(dir("pg_tblspc/16385/"));
        let files = MemFiles(HashMap::from([
            ("base.tar.zst".to_string(), zstd(&tar(&members))),
            (
                "16384.tar".to_string(),
                tar(&[
                    dir("PG_16_202307071/"),
                    dir("PG_16_202307071/5/"),
                    file("PG_16_202307071/5/16390", b"rel"),
                ]),
            ),
            (
                "16385.tar".to_string(),
                tar(&[
                    dir("PG_16_202307071/"),
                    file("PG_16_202307071/x", b"inplace"),
                ]),
            ),
        ]));
        let rec = record(
            &[
                ("16384.tar", Some(16384), Some(location)),
                ("16385.tar", Some(16385), Some("pg_tblspc/16385")),
                ("base.tar.zst", None, None),
            ],
            &[
                (16384, location, Some("ts1")),
                (16385, "pg_tblspc/16385", None),
            ],
            &files,
        );
        (rec, files)
    }

    #[test]
    fn tablespaces_go_to_their_location_or_the_mapped_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let original = tmp.path().join("orig ts\nwith newline");
        let mapped = tmp.path().join("mapped\\ts");
        for map in [None, Some("ts1"), Some("16384")] {
            let pgdata = tmp.path().join("data");
            prepare_pgdata(&pgdata, true).unwrap();
            for d in [&original, &mapped] {
                let _ = fs::remove_dir_all(d);
            }
            let (rec, files) = tablespace_backup(original.to_str().unwrap());
            let mut opts = ExtractOptions::new(&pgdata);
            if let Some(key) = map {
                opts.tablespace_map = vec![format!("{key}={}", mapped.display()).parse().unwrap()];
            }
            let sum = extract_backup(&rec, &files, &opts).unwrap();
            let target = if map.is_some() { &mapped } else { &original };
            assert_eq!(
                fs::read(target.join("PG_16_202307071/5/16390")).unwrap(),
                b"rel"
            );
            assert_eq!(mode(target), 0o700);
            assert_eq!(
                fs::read_link(pgdata.join("pg_tblspc/16384")).unwrap(),
                *target
            );
            let map_text = fs::read(pgdata.join("tablespace_map")).unwrap();
            let mut want = b"16384 ".to_vec();
            for b in target.as_os_str().as_bytes() {
                if matches!(b, b'\n' | b'\\') {
                    want.push(b'\\');
                }
                want.push(*b);
            }
            want.push(b'\n');
            assert_eq!(map_text, want);
            assert_eq!(
                parse_tablespace_map(&map_text).unwrap(),
                [("16384".to_string(), target.as_os_str().as_bytes().to_vec())]
            );
            assert_eq!(
                fs::read(pgdata.join("pg_tblspc/16385/PG_16_202307071/x")).unwrap(),
                b"inplace"
            );
            assert!(
                pgdata
                    .join("pg_tblspc/16385")
                    .symlink_metadata()
                    .unwrap()
                    .is_dir()
            );
            assert_eq!(sum.tablespaces.len(), 2);
            assert_eq!(sum.tablespaces[0].dir, *target);
            assert_eq!(sum.tablespaces[0].name.as_deref(), Some("ts1"));
            assert!(sum.tablespaces[1].in_place);
        }
    }

    #[test]
    fn tablespace_targets_are_checked_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        prepare_pgdata(&pgdata, false).unwrap();
        let busy = tmp.path().join("busy");
        fs::create_dir(&busy).unwrap();
        fs::write(busy.join("f"), b"x").unwrap();
        let (rec, files) = tablespace_backup(busy.to_str().unwrap());
        let err = extract_backup(&rec, &files, &ExtractOptions::new(&pgdata)).unwrap_err();
        assert!(
            matches!(err, ExtractError::TablespaceNotEmpty { oid: 16384, .. }),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::exit::USAGE);
        assert!(err.to_string().contains("--tablespace-map 16384=DIR"));
        assert_eq!(fs::read_dir(&pgdata).unwrap().count(), 0);

        let mut opts = ExtractOptions::new(&pgdata);
        opts.tablespace_map = vec![format!("ts1={}/inside", pgdata.display()).parse().unwrap()];
        let err = extract_backup(&rec, &files, &opts).unwrap_err();
        assert!(
            matches!(err, ExtractError::TablespaceInPgdata { .. }),
            "{err}"
        );

        for (arg, want) in [
            (
                "nope=/x",
                "the backup has no tablespace nope (it has: 16384 (ts1), 16385)",
            ),
            ("16385=/x", "in-place tablespace"),
        ] {
            opts.tablespace_map = vec![arg.parse().unwrap()];
            let err = extract_backup(&rec, &files, &opts).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
        opts.tablespace_map = vec!["ts1=/a".parse().unwrap(), "16384=/b".parse().unwrap()];
        let err = extract_backup(&rec, &files, &opts).unwrap_err();
        assert!(err.to_string().contains("mapped more than once"), "{err}");
        assert_eq!(fs::read_dir(&pgdata).unwrap().count(), 0);
    }

    #[test]
    fn tablespace_mapping_arguments() {
        let m: TablespaceMapping = "16384=/srv/ts".parse().unwrap();
        assert_eq!(m.tablespace, TablespaceSelector::Oid(16384));
        assert_eq!(m.dir, Path::new("/srv/ts"));
        let m: TablespaceMapping = "fast=/srv/a=b".parse().unwrap();
        assert_eq!(m.tablespace, TablespaceSelector::Name("fast".into()));
        assert_eq!(m.dir, Path::new("/srv/a=b"));
        let m: TablespaceMapping = "+1=/x".parse().unwrap();
        assert_eq!(m.tablespace, TablespaceSelector::Name("+1".into()));
        for bad in ["16384", "=/x", "16384=rel/dir"] {
            assert!(bad.parse::<TablespaceMapping>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tablespace_map_parsing_follows_the_server() {
        let text = b"16384 /a b\r\n\n16385 /with\\\nnewline\\\\x\n";
        assert_eq!(
            parse_tablespace_map(text).unwrap(),
            [
                ("16384".to_string(), b"/a b".to_vec()),
                ("16385".to_string(), b"/with\nnewline\\x".to_vec()),
            ]
        );
        assert!(parse_tablespace_map(b"16384 /a").is_err());
        assert!(parse_tablespace_map(b"16384\n").is_err());
        assert!(parse_tablespace_map(b"16384 /a\\").is_err());
        let err = parse_tablespace_map(b"../x /a\n").unwrap_err();
        assert!(err.contains("not a tablespace OID"), "{err}");
        let out = rewrite_tablespace_map(text, &[(16385, PathBuf::from("/new\\\rdir"))]).unwrap();
        assert_eq!(out, b"16384 /a b\n16385 /new\\\\\\\rdir\n");
    }

    #[test]
    fn config_files_go_to_walden_config() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        prepare_pgdata(&pgdata, false).unwrap();
        let (mut rec, mut files) = one_archive("base.tar", tar(&base_members()));
        rec.config_files.captured = true;
        rec.config_files.files = vec!["postgresql.conf".into(), "pg_hba.conf".into()];
        files
            .0
            .insert("config/postgresql.conf".into(), b"port = 5433\n".to_vec());
        files.0.insert(
            "config/pg_hba.conf".into(),
            b"local all all trust\n".to_vec(),
        );
        let sum = extract_backup(&rec, &files, &ExtractOptions::new(&pgdata)).unwrap();
        let dir = pgdata.join(CONFIG_DIR);
        assert_eq!(sum.config_dir.as_deref(), Some(dir.as_path()));
        assert_eq!(sum.config_files, ["postgresql.conf", "pg_hba.conf"]);
        assert_eq!(
            fs::read(dir.join("postgresql.conf")).unwrap(),
            b"port = 5433\n"
        );
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("pg_hba.conf")), 0o600);
        assert!(
            !pgdata.join("postgresql.conf").exists(),
            "never the live name"
        );

        rec.config_files.files = vec!["../escape".into()];
        prepare_pgdata(&pgdata, true).unwrap();
        let err = extract_backup(&rec, &files, &ExtractOptions::new(&pgdata)).unwrap_err();
        assert!(err.to_string().contains("not a plain file name"), "{err}");
    }

    #[test]
    fn prepare_pgdata_cases() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("a/b/data");
        prepare_pgdata(&pgdata, false).unwrap();
        assert_eq!(mode(&pgdata), 0o700);
        prepare_pgdata(&pgdata, false).unwrap();
        fs::create_dir(pgdata.join("base")).unwrap();
        fs::write(pgdata.join("base/f"), b"x").unwrap();
        std::os::unix::fs::symlink(tmp.path(), pgdata.join("link")).unwrap();
        let err = prepare_pgdata(&pgdata, false).unwrap_err();
        assert!(matches!(err, ExtractError::NotEmpty { .. }), "{err}");
        assert!(err.to_string().contains("--force"));
        prepare_pgdata(&pgdata, true).unwrap();
        assert_eq!(fs::read_dir(&pgdata).unwrap().count(), 0);
        assert!(
            tmp.path().join("a").is_dir(),
            "a link's target is not followed"
        );

        fs::write(
            pgdata.join("postmaster.pid"),
            format!("{}\n/x\n", std::process::id()),
        )
        .unwrap();
        let err = prepare_pgdata(&pgdata, true).unwrap_err();
        assert!(matches!(err, ExtractError::ServerRunning { .. }), "{err}");
        assert!(pgdata.join("postmaster.pid").exists());

        let f = tmp.path().join("file");
        fs::write(&f, b"x").unwrap();
        assert!(matches!(
            prepare_pgdata(&f, true),
            Err(ExtractError::NotADirectory { .. })
        ));
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        postgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\nssl-cert:x:103:postgres\npostgres:x:104:\n";

    #[test]
    fn owner_specs() {
        let owner = |spec| parse_owner(spec, PASSWD, GROUP);
        assert_eq!(owner("postgres"), Ok(Owner { uid: 101, gid: 104 }));
        assert_eq!(owner("postgres:ssl-cert"), Ok(Owner { uid: 101, gid: 103 }));
        assert_eq!(owner("postgres:7"), Ok(Owner { uid: 101, gid: 7 }));
        assert_eq!(owner("101"), Ok(Owner { uid: 101, gid: 104 }));
        assert_eq!(
            owner("5000:5001"),
            Ok(Owner {
                uid: 5000,
                gid: 5001
            })
        );
        assert!(owner("5000").unwrap_err().contains("give USER:GROUP"));
        assert!(owner("nobody").unwrap_err().contains("no user \"nobody\""));
        assert!(owner("postgres:nogroup").unwrap_err().contains("no group"));
        for bad in ["", ":x", "postgres:"] {
            assert!(owner(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owner_is_applied_to_everything_when_root() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("home");
        fs::create_dir(&parent).unwrap();
        std::os::unix::fs::chown(&parent, Some(4321), Some(4322)).unwrap();
        let pgdata = parent.join("data");
        let owner = resolve_owner(None, &pgdata).unwrap();
        assert_eq!(
            owner,
            Some(Owner {
                uid: 4321,
                gid: 4322
            }),
            "the parent's owner"
        );
        let err = resolve_owner(None, tmp.path()).unwrap_err();
        assert!(matches!(err, ExtractError::RootOwner { .. }), "{err}");
        assert!(err.to_string().contains("--owner"), "{err}");
        // An empty data directory left by root (a failed run) defers to its parent.
        fs::create_dir(&pgdata).unwrap();
        assert_eq!(resolve_owner(None, &pgdata).unwrap(), owner);
        fs::write(pgdata.join("f"), b"x").unwrap();
        assert!(matches!(
            resolve_owner(None, &pgdata),
            Err(ExtractError::RootOwner { .. })
        ));
        fs::remove_file(pgdata.join("f")).unwrap();
        assert!(resolve_owner(Some("root"), &pgdata).is_err());

        prepare_pgdata(&pgdata, false).unwrap();
        let ts = tmp.path().join("ts");
        let (rec, files) = tablespace_backup(ts.to_str().unwrap());
        let mut opts = ExtractOptions::new(&pgdata);
        opts.owner = owner;
        extract_backup(&rec, &files, &opts).unwrap();
        for p in [
            pgdata.clone(),
            pgdata.join("base/1/1259"),
            pgdata.join("pg_wal/archive_status"),
            pgdata.join("tablespace_map"),
            pgdata.join("pg_tblspc/16384"),
            pgdata.join("pg_tblspc/16385/PG_16_202307071/x"),
            ts.clone(),
            ts.join("PG_16_202307071/5/16390"),
        ] {
            let m = fs::symlink_metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (4321, 4322), "{}", p.display());
        }
    }
}
