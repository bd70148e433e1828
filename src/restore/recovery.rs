//! The recovery configuration of a restored data directory, by server version: the text of
//! the settings (`restore_command` running this binary's `wal-fetch`, the target and its
//! options, standby settings) and writing it where the server reads it.
//!
//! - PostgreSQL 12 and later: the settings are appended to `postgresql.auto.conf` (never
//!   rewritten: the server owns that file) under a comment saying walden wrote them and when;
//!   then `recovery.signal` (or `standby.signal`) is created, last. An inherited
//!   `standby.signal` is removed unless a standby is wanted (and `recovery.signal` when one
//!   is), and a `recovery.conf` is always removed: 12+ refuses to start with one.
//! - PostgreSQL 10 and 11: `recovery.conf` (0600) holds the settings, with
//!   `standby_mode = 'on'` for a standby.
//!
//! Timeline: with no explicit timeline, recovery follows the newest one on every version —
//! the default of 12+, written as `recovery_target_timeline = 'latest'` for 10 and 11 (whose
//! default is `current`). An explicit timeline is written unless it is the version's default.
//! A recovery to the latest WAL has no target setting at all.
//!
//! Quoting: each argument of `restore_command` is shell-quoted (the server runs it with
//! `sh -c`), `%` is doubled (the server expands `%f`, `%p`, `%r` and `%%`), then every value
//! is quoted for the configuration file (`'` doubled, `\` doubled: the file's parser reads
//! backslash escapes). Values with a line break or NUL cannot be written and are refused.
//! Every write is durable (file and data directory fsynced).

use std::path::{Path, PathBuf};

use super::remote::RemoteSpec;
use crate::store::{ClusterName, StoreError, durable};

/// The kind of recovery target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// `recovery_target_time`: a timestamp with time zone.
    Time,
    /// `recovery_target_lsn`.
    Lsn,
    /// `recovery_target_xid`.
    Xid,
    /// `recovery_target_name`: a restore point.
    Name,
    /// `recovery_target = 'immediate'`: stop as soon as the backup is consistent.
    Immediate,
}

/// What the recovery configuration says; the restore plan is mapped onto it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoverySettings {
    /// The whole command, from [`restore_command`].
    pub restore_command: String,
    /// None: recover to the end of the available WAL. The value is ignored for
    /// [`TargetKind::Immediate`].
    pub target: Option<(TargetKind, String)>,
    /// Stop after the target (PostgreSQL's default) rather than just before it; applies to
    /// time, LSN and xid targets.
    pub inclusive: bool,
    /// `latest`, `current` or a timeline number; None: the newest timeline.
    pub timeline: Option<String>,
    /// `pause`, `promote` or `shutdown`; None: the server's default (`pause`).
    pub action: Option<String>,
    /// Start as a standby (`standby.signal` / `standby_mode`).
    pub standby: bool,
    pub primary_conninfo: Option<String>,
    pub primary_slot_name: Option<String>,
}

/// What [`write_recovery_config`] did, for the final summary (and for `chown` when running
/// as root: `created` lists the files made by this process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryFiles {
    /// `postgresql.auto.conf` (appended to) or `recovery.conf` (written).
    pub config_file: PathBuf,
    /// `recovery.signal` or `standby.signal` (12+).
    pub signal_file: Option<PathBuf>,
    /// Files this call created (the config file if it did not exist, the signal file).
    pub created: Vec<PathBuf>,
    /// Files removed: an inherited `recovery.conf`, `standby.signal` or `recovery.signal`.
    pub removed: Vec<PathBuf>,
    /// The settings text written.
    pub text: String,
}

/// Why the recovery configuration cannot be made or written.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{what} {value:?} cannot be written into PostgreSQL's configuration: it contains a line break or NUL"
    )]
    Unwritable { what: &'static str, value: String },
    #[error(
        "{} is not an absolute path: restore_command runs in the data directory, so it needs absolute paths", .0.display()
    )]
    RelativePath(PathBuf),
    #[error(
        "{} is not valid UTF-8 and cannot be written into PostgreSQL's configuration: use another path", .0.display()
    )]
    NotUtf8(PathBuf),
    #[error("PostgreSQL {0} is not supported: walden restores PostgreSQL 10 and later")]
    UnsupportedVersion(u32),
    #[error("cannot find this program's own path for restore_command: {0}")]
    OwnPath(std::io::Error),
}

/// The absolute, canonical path of the running binary, for `restore_command`.
pub fn this_executable() -> Result<PathBuf, RecoveryError> {
    std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(RecoveryError::OwnPath)
}

/// `restore_command`'s value: `EXE wal-fetch --from STORE --cluster NAME [--prefetch N
/// [--spool DIR]] %f %p`, each argument shell-quoted and `%` doubled. `exe`, `store` and
/// `spool` must be absolute (the server runs the command in the data directory).
pub fn restore_command(
    exe: &Path,
    store: &Path,
    cluster: &ClusterName,
    prefetch: u32,
    spool: Option<&Path>,
) -> Result<String, RecoveryError> {
    let from = vec![path_word(store)?];
    command_words(exe, from, cluster, prefetch, spool)
}

/// `restore_command` for a store served over HTTP(S): `EXE wal-fetch --from URL
/// --token-file FILE [--ca-file FILE] --cluster NAME [--prefetch N] %f %p`. The token itself
/// never appears; `exe` and the files must be absolute.
pub fn remote_restore_command(
    exe: &Path,
    remote: &RemoteSpec,
    cluster: &ClusterName,
    prefetch: u32,
    spool: Option<&Path>,
) -> Result<String, RecoveryError> {
    let mut from = vec![command_word(&remote.url)];
    for (flag, file) in [
        ("--token-file", &remote.token_file),
        ("--ca-file", &remote.ca_file),
    ] {
        if let Some(file) = file {
            from.push(flag.to_string());
            from.push(path_word(file)?);
        }
    }
    command_words(exe, from, cluster, prefetch, spool)
}

fn command_words(
    exe: &Path,
    from: Vec<String>,
    cluster: &ClusterName,
    prefetch: u32,
    spool: Option<&Path>,
) -> Result<String, RecoveryError> {
    let mut words = vec![
        path_word(exe)?,
        "wal-fetch".to_string(),
        "--from".to_string(),
    ];
    words.extend(from);
    words.extend(["--cluster".to_string(), command_word(cluster.as_str())]);
    if prefetch > 0 {
        words.push("--prefetch".to_string());
        words.push(prefetch.to_string());
        if let Some(spool) = spool {
            words.push("--spool".to_string());
            words.push(path_word(spool)?);
        }
    }
    words.push("%f".to_string());
    words.push("%p".to_string());
    Ok(words.join(" "))
}

fn path_word(path: &Path) -> Result<String, RecoveryError> {
    if !path.is_absolute() {
        return Err(RecoveryError::RelativePath(path.to_path_buf()));
    }
    let text = path
        .to_str()
        .ok_or_else(|| RecoveryError::NotUtf8(path.to_path_buf()))?;
    Ok(command_word(text))
}

/// One argument as `sh -c` reads it after the server's `%` expansion: left bare when it
/// holds only characters the shell does not interpret, else single-quoted (`'` as `'\''`);
/// then `%` doubled.
fn command_word(arg: &str) -> String {
    let bare = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,@".contains(&b));
    let quoted = if bare {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    };
    quoted.replace('%', "%%")
}

/// A value quoted for postgresql.conf / recovery.conf.
fn config_value(what: &'static str, value: &str) -> Result<String, RecoveryError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(RecoveryError::Unwritable {
            what,
            value: value.to_string(),
        });
    }
    Ok(format!(
        "'{}'",
        value.replace('\\', r"\\").replace('\'', "''")
    ))
}

/// The settings text for a server of major version `major` (10, 11, 12, ...), starting with
/// a comment line naming walden and `written_at`.
pub fn recovery_text(
    major: u32,
    settings: &RecoverySettings,
    written_at: &str,
) -> Result<String, RecoveryError> {
    if major < 10 {
        return Err(RecoveryError::UnsupportedVersion(major));
    }
    let modern = major >= 12;
    let mut lines = vec![format!(
        "# Recovery settings written by walden-restore at {written_at}"
    )];
    let mut set = |name: &'static str, value: &str| -> Result<(), RecoveryError> {
        lines.push(format!("{name} = {}", config_value(name, value)?));
        Ok(())
    };
    set("restore_command", &settings.restore_command)?;
    if settings.standby && !modern {
        set("standby_mode", "on")?;
    }
    if let Some((kind, value)) = &settings.target {
        match kind {
            TargetKind::Time => set("recovery_target_time", value)?,
            TargetKind::Lsn => set("recovery_target_lsn", value)?,
            TargetKind::Xid => set("recovery_target_xid", value)?,
            TargetKind::Name => set("recovery_target_name", value)?,
            TargetKind::Immediate => set("recovery_target", "immediate")?,
        }
        let inclusive_applies =
            matches!(kind, TargetKind::Time | TargetKind::Lsn | TargetKind::Xid);
        if !settings.inclusive && inclusive_applies {
            set("recovery_target_inclusive", "off")?;
        }
    }
    let default_timeline = if modern { "latest" } else { "current" };
    match settings.timeline.as_deref() {
        None if !modern => set("recovery_target_timeline", "latest")?,
        Some(t) if t != default_timeline => set("recovery_target_timeline", t)?,
        _ => {}
    }
    if let Some(action) = &settings.action {
        set("recovery_target_action", action)?;
    }
    if let Some(conninfo) = &settings.primary_conninfo {
        set("primary_conninfo", conninfo)?;
    }
    if let Some(slot) = &settings.primary_slot_name {
        set("primary_slot_name", slot)?;
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Ok(text)
}

/// Writes the recovery configuration into `pgdata` for a server of major version `major`
/// (see the module documentation for what goes where, and in which order).
pub fn write_recovery_config(
    pgdata: &Path,
    major: u32,
    settings: &RecoverySettings,
) -> Result<RecoveryFiles, RecoveryError> {
    let text = recovery_text(major, settings, &crate::store::utc_now())?;
    let mut created = Vec::new();
    let mut removed = Vec::new();
    let mut remove = |name: &str| -> Result<(), RecoveryError> {
        let path = pgdata.join(name);
        if path.symlink_metadata().is_ok() {
            durable::remove_file_durable(&path)?;
            removed.push(path);
        }
        Ok(())
    };
    if major < 12 {
        let config_file = pgdata.join("recovery.conf");
        if config_file.symlink_metadata().is_err() {
            created.push(config_file.clone());
        }
        durable::write_file_atomic_mode(&config_file, text.as_bytes(), 0o600)?;
        return Ok(RecoveryFiles {
            config_file,
            signal_file: None,
            created,
            removed,
            text,
        });
    }
    remove("recovery.conf")?;
    let (signal, other) = if settings.standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    remove(other)?;
    let config_file = pgdata.join("postgresql.auto.conf");
    let mut appended = String::new();
    match std::fs::read(&config_file) {
        Ok(existing) if !existing.is_empty() && !existing.ends_with(b"\n") => appended.push('\n'),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => created.push(config_file.clone()),
        Err(e) => return Err(StoreError::io("read", &config_file, e).into()),
    }
    appended.push_str(&text);
    durable::append_file(&config_file, appended.as_bytes(), 0o600)?;
    let signal_file = pgdata.join(signal);
    if signal_file.symlink_metadata().is_err() {
        created.push(signal_file.clone());
    }
    durable::write_file_atomic_mode(&signal_file, b"", 0o600)?;
    Ok(RecoveryFiles {
        config_file,
        signal_file: Some(signal_file),
        created,
        removed,
        text,
    })
}

#[cfg(test)]
mod tests;
