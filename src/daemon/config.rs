//! The daemon's configuration file (`/etc/walden/walden.toml`): TOML read in two steps, a
//! raw serde form that refuses unknown keys, then validated settings (durations, sizes,
//! cluster and slot names, connection strings, files). Every error is one line,
//! `FILE:LINE: what (what to do)`; doubtful but workable choices (a password written into a
//! `source`, a secret file others can read) become warnings. Relative paths are taken
//! relative to the configuration file's directory.
//!
//! Secrets are never read here: a `password_file` is only checked to exist, and read when
//! connecting ([`read_password_file`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::schedule::BackupSchedule;
use crate::backup::BackupCompression;
use crate::pg::{ConnConfig, ConnParams, Host, SlotName, SystemEnvironment};
use crate::store::{ClusterName, Compression};

/// Where `walden run` and `walden check-config` look without `--config`.
pub const DEFAULT_PATH: &str = "/etc/walden/walden.toml";
/// `[http] listen` when not given.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7480);
/// `slot` when not given.
pub const DEFAULT_SLOT: &str = "walden";
/// `status_interval` when not given.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// `min_free_space` when not given: 1 GiB.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 1 << 30;
/// `[status] receiver_down_after` when not given.
pub const DEFAULT_RECEIVER_DOWN_AFTER: Duration = Duration::from_secs(5 * 60);
/// `[status] backup_grace` when not given.
pub const DEFAULT_BACKUP_GRACE: Duration = Duration::from_secs(6 * 3600);

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{}: cannot read the configuration file: {source} (check the path and its permissions, or pass --config FILE)",
        path.display()
    )]
    Read { path: PathBuf, source: io::Error },
    #[error("{}:{line}: {what} ({fix})", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        what: String,
        fix: String,
    },
}

impl ConfigError {
    /// The 1-based line the error is on, when it is about the content.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { line, .. } => Some(*line),
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// The store directory (created if missing).
    pub store: PathBuf,
    /// Below this many free bytes on the store's filesystem walden reports unhealthy; 0 turns
    /// the check off.
    pub min_free_space: u64,
    pub http: Option<HttpConfig>,
    pub status: StatusThresholds,
    /// The clusters, in name order (names are unique).
    pub clusters: Vec<ClusterConfig>,
    /// Choices that work but deserve a second look, each `FILE:LINE: ...`.
    pub warnings: Vec<String>,
}

/// `[http]`: the status, metrics and read-only store API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Holds the bearer token required for everything but `/healthz`.
    pub token_file: PathBuf,
    pub tls: Option<TlsFiles>,
}

/// A certificate chain and its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[status]`: when a cluster counts as unhealthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusThresholds {
    /// A receiver not streaming for longer than this.
    pub receiver_down_after: Duration,
    /// A backup later than its schedule by more than this.
    pub backup_grace: Duration,
}

/// One `[cluster.NAME]` table.
#[derive(Clone, PartialEq)]
pub struct ClusterConfig {
    pub name: ClusterName,
    /// The connection string as written. It may hold a password: never log it; show
    /// [`ClusterConfig::conn`] (whose `Display` leaves the password out) instead.
    pub source: String,
    /// `source` resolved as libpq would, against the environment at load time.
    pub conn: ConnConfig,
    /// A file whose first line is the password, read at each connection.
    pub password_file: Option<PathBuf>,
    /// Physical replication slot, created if missing.
    pub slot: SlotName,
    /// Flush and acknowledge every write at once (for `synchronous_standby_names`).
    pub synchronous: bool,
    /// How completed WAL segments are stored.
    pub compression: Compression,
    /// How often the receiver reports its position to the server.
    pub status_interval: Duration,
    /// Scheduled base backups; `None`: only WAL is archived.
    pub backup: Option<BackupPolicy>,
    pub retention: Retention,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("name", &self.name)
            .field("conn", &self.conn)
            .field("password_file", &self.password_file)
            .field("slot", &self.slot)
            .field("synchronous", &self.synchronous)
            .field("compression", &self.compression)
            .field("status_interval", &self.status_interval)
            .field("backup", &self.backup)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// `backup.*`: when and how base backups are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupPolicy {
    pub schedule: BackupSchedule,
    pub compression: BackupCompression,
    /// `checkpoint = "fast"`: an immediate checkpoint rather than the server's paced one.
    pub fast_checkpoint: bool,
    /// Most bytes per second the server may send.
    pub max_rate: Option<u64>,
}

/// `retention.*`: what pruning keeps. With neither set, everything is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at least this many newest complete backups.
    pub keep_backups: Option<u32>,
    /// Keep whatever restoring to any point in this window before now needs.
    pub recovery_window: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: Spanned<String>,
    min_free_space: Option<Spanned<String>>,
    http: Option<Spanned<RawHttp>>,
    status: Option<RawStatus>,
    #[serde(default)]
    cluster: BTreeMap<Spanned<String>, RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    token_file: Spanned<String>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    receiver_down_after: Option<Spanned<String>>,
    backup_grace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    source: Spanned<String>,
    password_file: Option<Spanned<String>>,
    slot: Option<Spanned<String>>,
    #[serde(default)]
    synchronous: bool,
    compression: Option<Spanned<String>>,
    status_interval: Option<Spanned<String>>,
    backup: Option<RawBackup>,
    retention: Option<RawRetention>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    every: Option<Spanned<String>>,
    at: Option<Spanned<String>>,
    compress: Option<Spanned<String>>,
    checkpoint: Option<Spanned<String>>,
    max_rate: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_backups: Option<Spanned<i64>>,
    recovery_window: Option<Spanned<String>>,
}

/// Reads and validates `path`, logging each warning.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = parse(&text, path)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

/// Validates `text`, the content of `file` (named in messages; relative paths in the
/// configuration are taken relative to its directory).
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut cx = Context {
        text,
        file,
        base: std::path::absolute(file)
            .ok()
            .and_then(|f| f.parent().map(Path::to_path_buf))
            .unwrap_or_default(),
        warnings: Vec::new(),
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| cx.toml_error(&e))?;

    let store = cx.path(&raw.store);
    let min_free_space = match &raw.min_free_space {
        None => DEFAULT_MIN_FREE_SPACE,
        Some(s) => parse_size(s.get_ref()).map_err(|what| {
            cx.error(
                s.span(),
                format!("min_free_space: {what}"),
                "write a size like \"10GB\" or \"0\" to turn the check off",
            )
        })?,
    };
    let http = raw.http.as_ref().map(|h| cx.http(h)).transpose()?;
    let status = match &raw.status {
        None => StatusThresholds {
            receiver_down_after: DEFAULT_RECEIVER_DOWN_AFTER,
            backup_grace: DEFAULT_BACKUP_GRACE,
        },
        Some(s) => StatusThresholds {
            receiver_down_after: cx
                .opt_duration(&s.receiver_down_after, "status.receiver_down_after")?
                .unwrap_or(DEFAULT_RECEIVER_DOWN_AFTER),
            backup_grace: cx
                .opt_duration(&s.backup_grace, "status.backup_grace")?
                .unwrap_or(DEFAULT_BACKUP_GRACE),
        },
    };
    if raw.cluster.is_empty() {
        return Err(cx.error(
            0..0,
            "no [cluster.NAME] table".to_string(),
            "add one per PostgreSQL server to archive; see the README's \"Configuration file\"",
        ));
    }
    let clusters = raw
        .cluster
        .iter()
        .map(|(name, c)| cx.cluster(name, c))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, c) in clusters.iter().enumerate() {
        if let Some(first) = clusters[..i]
            .iter()
            .find(|o| o.slot == c.slot && o.conn.targets == c.conn.targets)
        {
            let span = raw
                .cluster
                .keys()
                .find(|k| k.get_ref() == c.name.as_str())
                .map_or(0..0, Spanned::span);
            return Err(cx.error(
                span,
                format!(
                    "clusters {:?} and {:?} both stream from slot {:?} of the same server",
                    first.name.as_str(),
                    c.name.as_str(),
                    c.slot.as_str()
                ),
                "a slot serves one receiver: give one of them another slot",
            ));
        }
    }
    Ok(Config {
        file: file.to_path_buf(),
        store,
        min_free_space,
        http,
        status,
        clusters,
        warnings: cx.warnings,
    })
}

/// The password in `path`: its first line, without the line end. Called when connecting, so
/// a changed password is picked up without a reload.
pub fn read_password_file(path: &Path) -> io::Result<String> {
    let text = fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

struct Context<'a> {
    text: &'a str,
    file: &'a Path,
    /// The configuration file's directory.
    base: PathBuf,
    warnings: Vec<String>,
}

impl Context<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text
            .as_bytes()
            .get(..end)
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
            + 1
    }

    fn error(&self, span: Range<usize>, what: String, fix: &str) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(&span),
            what,
            fix: fix.to_string(),
        }
    }

    fn warn(&mut self, span: Range<usize>, what: String) {
        let line = self.line(&span);
        self.warnings
            .push(format!("{}:{line}: {what}", self.file.display()));
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim_end();
        let fix = if message.starts_with("unknown field") {
            "remove it or correct its spelling; the README's \"Configuration file\" lists every key"
        } else if message.starts_with("missing field") {
            "add it; the README's \"Configuration file\" lists every key"
        } else if message.starts_with("invalid type") {
            "write the value as the README's \"Configuration file\" shows"
        } else {
            "fix the TOML syntax"
        };
        let what = match message.strip_prefix("unknown field") {
            Some(rest) => format!("unknown key{rest}"),
            None => message.replace("missing field", "missing key"),
        };
        self.error(e.span().unwrap_or(0..0), what, fix)
    }

    fn path(&self, s: &Spanned<String>) -> PathBuf {
        self.base.join(s.get_ref())
    }

    /// A path that must name an existing file; a secret one draws a warning if others may
    /// read it.
    fn existing_file(
        &mut self,
        s: &Spanned<String>,
        key: &str,
        secret: bool,
    ) -> Result<PathBuf, ConfigError> {
        let path = self.path(s);
        let meta = fs::metadata(&path).map_err(|e| {
            self.error(
                s.span(),
                format!("{key}: cannot use {}: {e}", path.display()),
                "create the file or correct the path",
            )
        })?;
        if !meta.is_file() {
            return Err(self.error(
                s.span(),
                format!("{key}: {} is not a file", path.display()),
                "name a regular file",
            ));
        }
        // Opened, not read: a file walden's user cannot read is found now, not at 3 a.m.
        if let Err(e) = fs::File::open(&path) {
            return Err(self.error(
                s.span(),
                format!("{key}: cannot read {}: {e}", path.display()),
                "let the user walden runs as read it",
            ));
        }
        if secret && meta.permissions().mode() & 0o044 != 0 {
            self.warn(
                s.span(),
                format!(
                    "{key}: {} can be read by other users (chmod 600 it)",
                    path.display()
                ),
            );
        }
        Ok(path)
    }

    fn duration(&self, s: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(self.error(
                s.span(),
                format!("{key}: the duration must be more than zero"),
                "write a duration like \"90s\", \"24h\" or \"14d\"",
            )),
            Err(e) => Err(self.error(
                s.span(),
                format!("{key}: invalid duration {:?}: {e}", s.get_ref()),
                "write a duration like \"90s\", \"24h\" or \"14d\"",
            )),
        }
    }

    fn opt_duration(
        &self,
        s: &Option<Spanned<String>>,
        key: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        s.as_ref().map(|s| self.duration(s, key)).transpose()
    }

    fn http(&mut self, h: &Spanned<RawHttp>) -> Result<HttpConfig, ConfigError> {
        let listen = match &h.get_ref().listen {
            None => DEFAULT_LISTEN,
            Some(l) => l.get_ref().parse().map_err(|_| {
                self.error(
                    l.span(),
                    format!("http.listen: invalid address {:?}", l.get_ref()),
                    "write IP:PORT, like \"127.0.0.1:7480\" or \"[::]:7480\"",
                )
            })?,
        };
        let token_file = self.existing_file(&h.get_ref().token_file, "http.token_file", true)?;
        let tls = match (&h.get_ref().tls_cert, &h.get_ref().tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: self.existing_file(cert, "http.tls_cert", false)?,
                key: self.existing_file(key, "http.tls_key", true)?,
            }),
            (Some(only), None) | (None, Some(only)) => {
                return Err(self.error(
                    only.span(),
                    "http: tls_cert and tls_key go together".to_string(),
                    "give both files for HTTPS, or neither for plain HTTP",
                ));
            }
        };
        if tls.is_none() && !listen.ip().is_loopback() {
            self.warn(
                h.span(),
                format!(
                    "http: listening on {listen} without TLS: the bearer token and the \
                     backups cross the network in clear (set tls_cert and tls_key)"
                ),
            );
        }
        Ok(HttpConfig {
            listen,
            token_file,
            tls,
        })
    }

    fn cluster(
        &mut self,
        name: &Spanned<String>,
        c: &RawCluster,
    ) -> Result<ClusterConfig, ConfigError> {
        let cluster_name = ClusterName::new(name.get_ref()).map_err(|_| {
            self.error(
                name.span(),
                format!("invalid cluster name {:?}", name.get_ref()),
                "use 1 to 64 characters of A-Z, a-z, 0-9, _, . and -, not starting with .",
            )
        })?;
        let n = cluster_name.as_str();
        let key = |k: &str| format!("cluster.{n}.{k}");

        let src = &c.source;
        let bad_source = |e: String| {
            self.error(
                src.span(),
                format!("cluster {n:?}: invalid source: {e}"),
                "write a libpq connection string like \"host=db1 user=walden\" or a postgresql:// URI",
            )
        };
        let params = ConnParams::parse(src.get_ref()).map_err(|e| bad_source(e.to_string()))?;
        let conn = ConnConfig::resolve(&params, &SystemEnvironment)
            .map_err(|e| bad_source(e.to_string()))?;
        let password_in_source = params.get("password").is_some_and(|p| !p.is_empty());
        let password_file = match &c.password_file {
            None => None,
            Some(_) if password_in_source => {
                return Err(self.error(
                    src.span(),
                    format!("cluster {n:?}: a password in both source and password_file"),
                    "remove password= from source",
                ));
            }
            Some(p) => Some(self.existing_file(p, &key("password_file"), true)?),
        };
        if password_in_source {
            self.warn(
                src.span(),
                format!(
                    "cluster {n:?}: source holds a password in plain text; prefer \
                     password_file, a passfile= (.pgpass) or PGPASSWORD in the service's \
                     environment"
                ),
            );
        }

        let slot = match &c.slot {
            None => DEFAULT_SLOT.parse(),
            Some(s) => s.get_ref().parse(),
        }
        .map_err(|e: String| {
            let span = c.slot.as_ref().map_or(0..0, Spanned::span);
            self.error(
                span,
                format!("{}: {e}", key("slot")),
                "PostgreSQL slot names are lower case",
            )
        })?;
        let compression = match &c.compression {
            None => Compression::None,
            Some(s) => s.get_ref().parse().map_err(|e: String| {
                self.error(
                    s.span(),
                    format!("{}: {e}", key("compression")),
                    "write \"none\", \"zstd\" or \"zstd:LEVEL\"",
                )
            })?,
        };
        let status_interval = self
            .opt_duration(&c.status_interval, &key("status_interval"))?
            .unwrap_or(DEFAULT_STATUS_INTERVAL);
        let backup = self.backup(name, c.backup.as_ref(), n)?;
        let retention = self.retention(c.retention.as_ref(), n)?;

        Ok(ClusterConfig {
            name: cluster_name,
            source: src.get_ref().clone(),
            conn,
            password_file,
            slot,
            synchronous: c.synchronous,
            compression,
            status_interval,
            backup,
            retention,
        })
    }

    fn backup(
        &mut self,
        name: &Spanned<String>,
        b: Option<&RawBackup>,
        n: &str,
    ) -> Result<Option<BackupPolicy>, ConfigError> {
        let key = |k: &str| format!("cluster.{n}.backup.{k}");
        let get = |f: fn(&RawBackup) -> &Option<Spanned<String>>| b.and_then(|b| f(b).as_ref());
        let schedule = match (get(|b| &b.every), get(|b| &b.at)) {
            (Some(_), Some(at)) => {
                return Err(self.error(
                    at.span(),
                    format!("cluster {n:?}: both backup.every and backup.at"),
                    "keep one: every = \"24h\" for an interval, or at = \"03:00\" for a daily time",
                ));
            }
            (Some(every), None) => BackupSchedule::Every(self.duration(every, &key("every"))?),
            (None, Some(at)) => BackupSchedule::DailyAt(at.get_ref().parse().map_err(|e| {
                self.error(
                    at.span(),
                    format!("{}: {e}", key("at")),
                    "write a local time like \"03:00\"",
                )
            })?),
            (None, None) => {
                let others = [
                    get(|b| &b.compress),
                    get(|b| &b.checkpoint),
                    get(|b| &b.max_rate),
                ];
                if let Some(other) = others.into_iter().flatten().next() {
                    return Err(self.error(
                        other.span(),
                        format!("cluster {n:?}: backup settings without backup.every or backup.at"),
                        "add backup.every = \"24h\" or backup.at = \"03:00\"",
                    ));
                }
                self.warn(
                    name.span(),
                    format!(
                        "cluster {n:?}: no backup.every or backup.at, so no scheduled base \
                         backups: only WAL is archived"
                    ),
                );
                return Ok(None);
            }
        };
        let compression = match get(|b| &b.compress) {
            None => BackupCompression::None,
            Some(s) => s.get_ref().parse().map_err(|e: String| {
                self.error(
                    s.span(),
                    format!("{}: {e}", key("compress")),
                    "write \"none\", \"zstd[:LEVEL]\" or \"server-zstd[:LEVEL]\"",
                )
            })?,
        };
        let fast_checkpoint = match get(|b| &b.checkpoint) {
            None => false,
            Some(s) => match s.get_ref().as_str() {
                "fast" => true,
                "spread" => false,
                other => {
                    return Err(self.error(
                        s.span(),
                        format!("{}: invalid value {other:?}", key("checkpoint")),
                        "write \"fast\" or \"spread\"",
                    ));
                }
            },
        };
        let max_rate = match get(|b| &b.max_rate) {
            None => None,
            Some(s) => match parse_size(s.get_ref()) {
                Ok(0) | Err(_) => {
                    return Err(self.error(
                        s.span(),
                        format!("{}: invalid rate {:?}", key("max_rate"), s.get_ref()),
                        "write bytes per second like \"50MB\"",
                    ));
                }
                Ok(r) => Some(r),
            },
        };
        Ok(Some(BackupPolicy {
            schedule,
            compression,
            fast_checkpoint,
            max_rate,
        }))
    }

    fn retention(&self, r: Option<&RawRetention>, n: &str) -> Result<Retention, ConfigError> {
        let Some(r) = r else {
            return Ok(Retention::default());
        };
        let keep_backups = match &r.keep_backups {
            None => None,
            Some(k) => Some(
                u32::try_from(*k.get_ref())
                    .ok()
                    .filter(|k| *k >= 1)
                    .ok_or_else(|| {
                        self.error(
                            k.span(),
                            format!(
                                "cluster.{n}.retention.keep_backups: {} is not a number of backups",
                                k.get_ref()
                            ),
                            "write 1 or more; the newest backup is always kept",
                        )
                    })?,
            ),
        };
        let recovery_window = self.opt_duration(
            &r.recovery_window,
            &format!("cluster.{n}.retention.recovery_window"),
        )?;
        Ok(Retention {
            keep_backups,
            recovery_window,
        })
    }
}

/// A size in bytes: a whole number with an optional unit `B`, `kB`, `MB`, `GB` or `TB`
/// (powers of 1024, as PostgreSQL counts; case and an `i` as in `GiB` do not matter).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let invalid = || format!("invalid size {s:?}: expected a number and a unit like 10GB or 512MB");
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(invalid()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

impl Config {
    /// A short human summary: what `walden check-config` prints. Never shows a password.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{}: valid, {} cluster{}\nstore: {}\n",
            self.file.display(),
            self.clusters.len(),
            if self.clusters.len() == 1 { "" } else { "s" },
            self.store.display()
        );
        out += &match self.min_free_space {
            0 => "min_free_space: not checked\n".to_string(),
            b => format!("min_free_space: {}\n", format_size(b)),
        };
        out += &format!(
            "status: unhealthy when a receiver is down for {} or a backup is {} late\n",
            humantime::format_duration(self.status.receiver_down_after),
            humantime::format_duration(self.status.backup_grace)
        );
        match &self.http {
            None => out += "http: off\n",
            Some(h) => {
                out += &format!(
                    "http: {}://{} (token in {})\n",
                    if h.tls.is_some() { "https" } else { "http" },
                    h.listen,
                    h.token_file.display()
                );
            }
        }
        for c in &self.clusters {
            out += &c.summary();
        }
        out
    }
}

impl ClusterConfig {
    /// Where the password comes from, in words.
    fn password_origin(&self) -> String {
        if let Some(f) = &self.password_file {
            format!("password from {}", f.display())
        } else if self.source_has_password() {
            "password written in the config file".to_string()
        } else if self.conn.password().is_some() {
            "password from PGPASSWORD".to_string()
        } else {
            match &self.conn.passfile {
                Some(p) => format!("password, if needed, from {}", p.display()),
                None => "no password".to_string(),
            }
        }
    }

    fn source_has_password(&self) -> bool {
        ConnParams::parse(&self.source)
            .ok()
            .and_then(|p| p.get("password").map(|p| !p.is_empty()))
            .unwrap_or(false)
    }

    fn summary(&self) -> String {
        let targets: Vec<String> = self
            .conn
            .targets
            .iter()
            .map(|t| match &t.host {
                Host::Unix(_) => format!("socket {t}"),
                Host::Tcp(_) => t.to_string(),
            })
            .collect();
        let mut out = format!(
            "cluster {}\n  source: {} user {} sslmode {}; {}\n  slot: {}, synchronous: {}, \
             WAL compression: {}, status every {}\n",
            self.name,
            targets.join(", "),
            self.conn.user,
            self.conn.sslmode,
            self.password_origin(),
            self.slot,
            if self.synchronous { "yes" } else { "no" },
            match self.compression {
                Compression::None => "none".to_string(),
                Compression::Zstd(l) => format!("zstd:{l}"),
            },
            humantime::format_duration(self.status_interval)
        );
        out += &match &self.backup {
            None => "  backups: none scheduled\n".to_string(),
            Some(b) => format!(
                "  backups: {}, compress {}, {} checkpoint{}\n",
                b.schedule,
                b.compression,
                if b.fast_checkpoint { "fast" } else { "spread" },
                b.max_rate
                    .map(|r| format!(", at most {}/s", format_size(r)))
                    .unwrap_or_default()
            ),
        };
        let r = &self.retention;
        out += &match (r.keep_backups, r.recovery_window) {
            (None, None) => "  retention: keep everything\n".to_string(),
            (k, w) => {
                let mut parts = Vec::new();
                if let Some(k) = k {
                    parts.push(format!("{k} newest backups"));
                }
                if let Some(w) = w {
                    parts.push(format!(
                        "a recovery window of {}",
                        humantime::format_duration(w)
                    ));
                }
                format!("  retention: keep {}\n", parts.join(" and "))
            }
        };
        out
    }
}

/// `10GB`, `512MB`, `1536kB`: the largest unit that divides exactly.
fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TB"), (30, "GB"), (20, "MB"), (10, "kB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::schedule::TimeOfDay;

    const FILE: &str = "/etc/walden/walden.toml";

    fn ok(text: &str) -> Config {
        parse(text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
    }

    /// The error's line and its message.
    fn err(text: &str) -> (usize, String) {
        match parse(text, Path::new(FILE)) {
            Ok(c) => panic!("accepted: {c:?}\n---\n{text}"),
            Err(e) => (e.line().expect("a line"), e.to_string()),
        }
    }

    fn minimal(cluster_body: &str) -> String {
        format!(
            "store = \"/var/lib/walden\"\n[cluster.main]\nsource = \"host=db1 user=walden\"\n{cluster_body}"
        )
    }

    /// A directory with mode-600 files of these names.
    fn secrets(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in names {
            let p = dir.path().join(n);
            fs::write(&p, "s3cret\nsecond line\n").expect("write");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        dir
    }

    #[test]
    fn every_key_is_read() {
        let dir = secrets(&["token", "cert.pem", "key.pem", "db1.pass"]);
        let d = dir.path().display();
        let text = format!(
            r#"store = "/srv/walden"
min_free_space = "10GB"
[status]
receiver_down_after = "90s"
backup_grace = "2h"
[http]
listen = "[::1]:8443"
token_file = "{d}/token"
tls_cert = "{d}/cert.pem"
tls_key = "{d}/key.pem"
[cluster.main]
source = "host=db1,db2 port=5433,5434 user=walden sslmode=require"
password_file = "{d}/db1.pass"
slot = "walden_main"
synchronous = true
compression = "zstd:5"
status_interval = "2s"
backup.at = "03:15"
backup.compress = "server-zstd:4"
backup.checkpoint = "fast"
backup.max_rate = "50MB"
retention.keep_backups = 7
retention.recovery_window = "14d"
"#
        );
        let c = ok(&text);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.store, PathBuf::from("/srv/walden"));
        assert_eq!(c.min_free_space, 10 << 30);
        assert_eq!(
            c.status,
            StatusThresholds {
                receiver_down_after: Duration::from_secs(90),
                backup_grace: Duration::from_secs(7200),
            }
        );
        assert_eq!(
            c.http,
            Some(HttpConfig {
                listen: "[::1]:8443".parse().unwrap(),
                token_file: dir.path().join("token"),
                tls: Some(TlsFiles {
                    cert: dir.path().join("cert.pem"),
                    key: dir.path().join("key.pem"),
                }),
            })
        );
        let [m] = c.clusters.as_slice() else {
            panic!("one cluster: {:?}", c.clusters)
        };
        assert_eq!(m.name.as_str(), "main");
        assert_eq!(
            m.source,
            "host=db1,db2 port=5433,5434 user=walden sslmode=require"
        );
        let targets: Vec<String> = m.conn.targets.iter().map(|t| t.to_string()).collect();
        assert_eq!(targets, ["db1:5433", "db2:5434"]);
        assert_eq!(m.conn.user, "walden");
        assert_eq!(m.password_file, Some(dir.path().join("db1.pass")));
        assert_eq!(m.slot.as_str(), "walden_main");
        assert!(m.synchronous);
        assert_eq!(m.compression, Compression::Zstd(5));
        assert_eq!(m.status_interval, Duration::from_secs(2));
        assert_eq!(
            m.backup,
            Some(BackupPolicy {
                schedule: BackupSchedule::DailyAt(TimeOfDay::new(3, 15).unwrap()),
                compression: BackupCompression::ServerZstd(4),
                fast_checkpoint: true,
                max_rate: Some(50 << 20),
            })
        );
        assert_eq!(
            m.retention,
            Retention {
                keep_backups: Some(7),
                recovery_window: Some(Duration::from_secs(14 * 86400)),
            }
        );
    }

    #[test]
    fn defaults() {
        let c = ok(&minimal("backup.every = \"12h\"\n"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.min_free_space, DEFAULT_MIN_FREE_SPACE);
        assert_eq!(c.http, None);
        assert_eq!(c.status.receiver_down_after, Duration::from_secs(300));
        assert_eq!(c.status.backup_grace, Duration::from_secs(6 * 3600));
        let m = &c.clusters[0];
        assert_eq!(m.slot.as_str(), "walden");
        assert!(!m.synchronous);
        assert_eq!(m.compression, Compression::None);
        assert_eq!(m.status_interval, Duration::from_secs(10));
        assert_eq!(m.password_file, None);
        assert_eq!(
            m.backup,
            Some(BackupPolicy {
                schedule: BackupSchedule::Every(Duration::from_secs(12 * 3600)),
                compression: BackupCompression::None,
                fast_checkpoint: false,
                max_rate: None,
            })
        );
        assert_eq!(m.retention, Retention::default());
    }

    #[test]
    fn backup_tables_may_be_written_as_sub_tables() {
        let c = ok(&minimal(
            "[cluster.main.backup]\nevery = \"1h\"\n[cluster.main.retention]\nkeep_backups = 2\n",
        ));
        let m = &c.clusters[0];
        assert_eq!(
            m.backup.map(|b| b.schedule),
            Some(BackupSchedule::Every(Duration::from_secs(3600)))
        );
        assert_eq!(m.retention.keep_backups, Some(2));
    }

    #[test]
    fn several_clusters_in_name_order() {
        let c = ok(
            "store = \"/s\"\n[cluster.zeta]\nsource = \"host=a\"\nbackup.every = \"1h\"\n\
                    [cluster.Alpha-1]\nsource = \"host=b\"\nbackup.every = \"1h\"\n\
                    [cluster.\"db.example\"]\nsource = \"host=c\"\nbackup.every = \"1h\"\n",
        );
        let names: Vec<&str> = c.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Alpha-1", "db.example", "zeta"]);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let (line, msg) =
            err("store = \"/s\"\n\nstroe = \"/t\"\n[cluster.main]\nsource = \"host=a\"\n");
        assert_eq!(line, 3, "{msg}");
        assert!(
            msg.starts_with("/etc/walden/walden.toml:3: unknown key `stroe`"),
            "{msg}"
        );
        assert!(msg.contains("correct its spelling"), "{msg}");

        let (line, msg) = err(&minimal("slot = \"w\"\n\nsynchronus = true\n"));
        assert_eq!(line, 6, "{msg}");
        assert!(msg.contains("unknown key `synchronus`"), "{msg}");
        assert!(
            msg.contains("`synchronous`"),
            "the valid keys are listed: {msg}"
        );

        let (line, msg) = err(&minimal("backup.evry = \"1h\"\n"));
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("unknown key `evry`"), "{msg}");

        let (line, msg) = err(&minimal(
            "[cluster.main.retention]\nkeep_backups = 1\nkeep = 3\n",
        ));
        assert_eq!(line, 6, "{msg}");
        assert!(msg.contains("unknown key `keep`"), "{msg}");

        let (line, msg) = err("store = \"/s\"\n[status]\nbackup_grace = \"1h\"\ngrace = \"1h\"\n");
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("unknown key `grace`"), "{msg}");

        let (line, msg) = err("store = \"/s\"\n[http]\ntoken_file = \"/t\"\nport = 80\n");
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("unknown key `port`"), "{msg}");
    }

    #[test]
    fn syntax_and_type_errors_have_lines() {
        let (line, msg) = err("store = \"/s\"\n[cluster.main]\nsource = \"host=a\n");
        assert_eq!(line, 3, "{msg}");
        assert!(msg.ends_with("(fix the TOML syntax)"), "{msg}");
        let (line, msg) = err(&minimal("synchronous = \"yes\"\n"));
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
        let (line, msg) = err("store = \"/s\"\n[cluster.main]\nslot = \"w\"\n");
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("missing key `source`"), "{msg}");
        let (_, msg) = err("[cluster.main]\nsource = \"host=a\"\n");
        assert!(msg.contains("missing key `store`"), "{msg}");
        let (_, msg) = err("store = \"/s\"\n");
        assert!(msg.contains("no [cluster.NAME] table"), "{msg}");
    }

    #[test]
    fn every_and_at_together_are_refused() {
        let (line, msg) = err(&minimal("backup.every = \"24h\"\nbackup.at = \"03:00\"\n"));
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("both backup.every and backup.at"), "{msg}");
        assert!(msg.contains("keep one"), "{msg}");
    }

    #[test]
    fn backup_settings_need_a_schedule() {
        let (line, msg) = err(&minimal("backup.compress = \"zstd\"\n"));
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("without backup.every or backup.at"), "{msg}");
        // No backup table at all: allowed, with a warning.
        let c = ok(&minimal(""));
        assert_eq!(c.clusters[0].backup, None);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0]
                .starts_with("/etc/walden/walden.toml:2: cluster \"main\": no backup.every")
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let cases: &[(&str, &str)] = &[
            (
                "backup.every = \"soon\"",
                "cluster.main.backup.every: invalid duration \"soon\"",
            ),
            ("backup.every = \"0s\"", "more than zero"),
            (
                "backup.at = \"25:00\"",
                "cluster.main.backup.at: invalid time of day",
            ),
            ("backup.at = \"3pm\"", "invalid time of day"),
            (
                "status_interval = \"10 parsecs\"",
                "cluster.main.status_interval: invalid duration",
            ),
            (
                "retention.recovery_window = \"two weeks\"",
                "retention.recovery_window: invalid duration",
            ),
            (
                "retention.keep_backups = 0",
                "keep_backups: 0 is not a number of backups",
            ),
            ("retention.keep_backups = -2", "keep_backups: -2 is not"),
            (
                "compression = \"gzip\"",
                "cluster.main.compression: invalid compression \"gzip\"",
            ),
            (
                "backup.every = \"1h\"\nbackup.compress = \"lz4\"",
                "backup.compress: invalid compression",
            ),
            (
                "backup.every = \"1h\"\nbackup.checkpoint = \"slow\"",
                "backup.checkpoint: invalid value \"slow\"",
            ),
            (
                "backup.every = \"1h\"\nbackup.max_rate = \"fast\"",
                "backup.max_rate: invalid rate",
            ),
            (
                "backup.every = \"1h\"\nbackup.max_rate = \"0\"",
                "backup.max_rate: invalid rate",
            ),
            (
                "slot = \"Walden\"",
                "cluster.main.slot: invalid replication slot name",
            ),
        ];
        for (body, want) in cases {
            let (line, msg) = err(&minimal(&format!("{body}\n")));
            let want_line = 4 + body.lines().count() - 1;
            assert_eq!(line, want_line, "{body}: {msg}");
            assert!(msg.contains(want), "{body}: {msg}");
            assert!(msg.ends_with(')'), "a fix is given: {msg}");
        }
        let (line, msg) =
            err("store = \"/s\"\nmin_free_space = \"lots\"\n[cluster.m]\nsource = \"host=a\"\n");
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("min_free_space: invalid size"), "{msg}");
        let (line, msg) = err("store = \"/s\"\n[status]\nreceiver_down_after = \"5 mins ago\"\n");
        assert_eq!(line, 3, "{msg}");
        assert!(
            msg.contains("status.receiver_down_after: invalid duration"),
            "{msg}"
        );
    }

    #[test]
    fn two_clusters_cannot_share_a_slot_on_one_server() {
        let (line, msg) = err(
            "store = \"/s\"\n[cluster.a]\nsource = \"host=db1 user=x\"\n\
                               [cluster.b]\nsource = \"host=db1 user=y\"\n",
        );
        assert_eq!(line, 4, "{msg}");
        assert!(
            msg.contains("clusters \"a\" and \"b\" both stream from slot \"walden\""),
            "{msg}"
        );
        // Another slot, or another server: fine.
        ok(
            "store = \"/s\"\n[cluster.a]\nsource = \"host=db1\"\nbackup.every = \"1h\"\n\
            [cluster.b]\nsource = \"host=db1\"\nslot = \"walden_b\"\nbackup.every = \"1h\"\n\
            [cluster.c]\nsource = \"host=db2\"\nbackup.every = \"1h\"\n",
        );
    }

    #[test]
    fn bad_cluster_names_are_refused() {
        let (line, msg) = err("store = \"/s\"\n\n[cluster.\".hidden\"]\nsource = \"host=a\"\n");
        assert_eq!(line, 3, "{msg}");
        assert!(msg.contains("invalid cluster name \".hidden\""), "{msg}");
        let (_, msg) = err("store = \"/s\"\n[cluster.\"a/b\"]\nsource = \"host=a\"\n");
        assert!(msg.contains("invalid cluster name \"a/b\""), "{msg}");
    }

    #[test]
    fn bad_conninfo_names_the_cluster() {
        for (source, want) in [
            ("host", "missing \"=\""),
            (
                "host=db1 port=notaport",
                "invalid integer value \"notaport\"",
            ),
            ("host=db1 frobnicate=1", "invalid connection option"),
            ("postgresql://db1:x/", "invalid integer value \"x\""),
        ] {
            let text = format!("store = \"/s\"\n[cluster.db1]\n\nsource = {source:?}\n");
            let (line, msg) = err(&text);
            assert_eq!(line, 4, "{msg}");
            assert!(msg.contains("cluster \"db1\": invalid source: "), "{msg}");
            assert!(msg.contains(want), "{source}: {msg}");
        }
    }

    #[test]
    fn tls_files_go_together() {
        let dir = secrets(&["token", "cert.pem", "key.pem"]);
        let d = dir.path().display();
        for (tls, line) in [
            (format!("tls_cert = \"{d}/cert.pem\""), 4),
            (format!("tls_key = \"{d}/key.pem\""), 4),
        ] {
            let text = format!("store = \"/s\"\n[http]\ntoken_file = \"{d}/token\"\n{tls}\n");
            let (l, msg) = err(&text);
            assert_eq!(l, line, "{msg}");
            assert!(msg.contains("tls_cert and tls_key go together"), "{msg}");
        }
    }

    #[test]
    fn secret_files_must_exist_and_should_be_private() {
        let dir = secrets(&["token", "db.pass"]);
        let d = dir.path().display();
        let (line, msg) = err(&format!(
            "store = \"/s\"\n[http]\ntoken_file = \"{d}/missing\"\n"
        ));
        assert_eq!(line, 3, "{msg}");
        assert!(msg.contains("http.token_file: cannot use"), "{msg}");
        let (line, msg) = err(&minimal(&format!("password_file = \"{d}\"\n")));
        assert_eq!(line, 4, "{msg}");
        assert!(
            msg.contains("cluster.main.password_file:") && msg.contains("is not a file"),
            "{msg}"
        );

        fs::set_permissions(
            dir.path().join("db.pass"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let c = ok(&minimal(&format!(
            "password_file = \"{d}/db.pass\"\nbackup.every = \"1h\"\n"
        )));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains(":4: cluster.main.password_file:"));
        assert!(c.warnings[0].contains("can be read by other users"));
        // Read at connect time: the first line.
        assert_eq!(
            read_password_file(&dir.path().join("db.pass")).unwrap(),
            "s3cret"
        );
    }

    #[test]
    fn passwords_in_source_are_warned_about_and_never_shown() {
        for source in [
            "host=db1 user=walden password=hunter2",
            "postgresql://walden:hunter2@db1/",
        ] {
            let c = ok(&format!(
                "store = \"/s\"\n[cluster.main]\nsource = {source:?}\nbackup.every = \"1h\"\n"
            ));
            assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
            assert!(c.warnings[0].contains(":3: cluster \"main\": source holds a password"));
            assert!(c.warnings[0].contains("password_file"));
            let summary = c.summary();
            assert!(!summary.contains("hunter2"), "{summary}");
            assert!(
                summary.contains("password written in the config file"),
                "{summary}"
            );
            assert!(!format!("{c:?}").contains("hunter2"));
        }
        let dir = secrets(&["db.pass"]);
        let (line, msg) = err(&format!(
            "store = \"/s\"\n[cluster.main]\nsource = \"host=a password=x\"\npassword_file = \"{}/db.pass\"\n",
            dir.path().display()
        ));
        assert_eq!(line, 3, "{msg}");
        assert!(
            msg.contains("a password in both source and password_file"),
            "{msg}"
        );
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let dir = secrets(&["token"]);
        let file = dir.path().join("walden.toml");
        let text = "store = \"store\"\n[http]\ntoken_file = \"token\"\n\
                    [cluster.main]\nsource = \"host=a\"\nbackup.every = \"1h\"\n";
        fs::write(&file, text).unwrap();
        let c = load(&file).unwrap();
        assert_eq!(c.store, dir.path().join("store"));
        assert_eq!(c.http.unwrap().token_file, dir.path().join("token"));
        assert_eq!(c.file, file);
    }

    #[test]
    fn an_exposed_listener_without_tls_is_warned_about() {
        let dir = secrets(&["token"]);
        let c = ok(&format!(
            "store = \"/s\"\n[http]\nlisten = \"0.0.0.0:7480\"\ntoken_file = \"{}/token\"\n\
             [cluster.main]\nsource = \"host=a\"\nbackup.every = \"1h\"\n",
            dir.path().display()
        ));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("without TLS"), "{:?}", c.warnings);
        let (line, msg) =
            err("store = \"/s\"\n[http]\nlisten = \"localhost\"\ntoken_file = \"/t\"\n");
        assert_eq!(line, 3, "{msg}");
        assert!(msg.contains("http.listen: invalid address"), "{msg}");
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let e = load(Path::new("/nonexistent/walden.toml")).unwrap_err();
        assert_eq!(e.line(), None);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/walden.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("10GB"), Ok(10 << 30));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("64kB"), Ok(64 << 10));
        assert_eq!(parse_size("2TB"), Ok(2 << 40));
        assert_eq!(parse_size("3m"), Ok(3 << 20));
        for bad in ["", "GB", "1.5GB", "-1GB", "10 parsecs", "99999999999999TB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(format_size(10 << 30), "10GB");
        assert_eq!(format_size(1536 << 10), "1536kB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn summary_shows_what_was_understood() {
        let c = ok("store = \"/var/lib/walden\"\nmin_free_space = \"0\"\n\
                    [cluster.main]\nsource = \"host=db1 port=6543 user=walden\"\n\
                    backup.at = \"03:00\"\nbackup.max_rate = \"50MB\"\n\
                    retention.keep_backups = 7\nretention.recovery_window = \"14d\"\n");
        let s = c.summary();
        for want in [
            "/etc/walden/walden.toml: valid, 1 cluster\n",
            "store: /var/lib/walden\n",
            "min_free_space: not checked\n",
            "http: off\n",
            "cluster main\n",
            "  source: db1:6543 user walden",
            "slot: walden, synchronous: no, WAL compression: none, status every 10s\n",
            "  backups: daily at 03:00 local time, compress none, spread checkpoint, at most 50MB/s\n",
            "  retention: keep 7 newest backups and a recovery window of 14days\n",
        ] {
            assert!(s.contains(want), "{want:?} not in:\n{s}");
        }
    }

    /// The example in contrib/ parses as shipped, and with every optional setting enabled
    /// (lines written `#key = value` or `#[table]`) and its files present.
    #[test]
    fn the_example_config_is_valid() {
        let example = include_str!("../../contrib/walden.toml.example");
        let c = ok(example);
        let names: Vec<&str> = c.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["main", "reporting"]);
        assert_eq!(c.clusters[0].compression, Compression::Zstd(3));
        assert_eq!(
            c.clusters[1].backup.map(|b| b.schedule),
            Some(BackupSchedule::DailyAt(TimeOfDay::new(3, 30).unwrap()))
        );

        let dir = secrets(&["token", "cert.pem", "key.pem", "main.pass"]);
        let enabled: String = example
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => {
                    rest
                }
                _ => l,
            })
            .map(|l| l.replace("/etc/walden/", &format!("{}/", dir.path().display())) + "\n")
            .collect();
        let c = ok(&enabled);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(c.http.as_ref().is_some_and(|h| h.tls.is_some()));
        assert_eq!(c.min_free_space, 10 << 30);
        let main = &c.clusters[0];
        assert!(main.password_file.is_some());
        assert!(
            main.backup
                .is_some_and(|b| b.fast_checkpoint && b.max_rate.is_some())
        );
    }
}
