//! `BASE_BACKUP` over the replication protocol, for servers 10 and later: the command spelled
//! for each version ([`BaseBackupOptions::command`]) and a pull-style stream of
//! [`BackupEvent`]s ([`Connection::start_base_backup`]) that hides the two framings:
//!
//! - 10–14: start and tablespace result sets, then one CopyOut per tablespace carrying a tar
//!   **without** its two zero end blocks (we append them), then on 13/14 a CopyOut with the
//!   manifest, then the end result set;
//! - 15+: the same result sets around a single CopyOut whose CopyData payloads start with a
//!   type byte: `n` (next archive: name, tablespace location), `d` (data of the current archive
//!   or, after `m`, of the manifest), `p` (progress: bytes done), `m` (manifest follows).
//!
//! Memory stays bounded: archive and manifest data are passed on as the `Bytes` of each
//! CopyData message, never gathered.
//!
//! Errors: an ErrorResponse at any point ends the stream with [`Error::Server`] once the
//! server is ready again. A failed data-page checksum verification (SQLSTATE `XX001`) arrives
//! **after** the end position: `next()` first returns [`BackupEvent::Ended`] (every archive and
//! the manifest are then complete), and then the error. Callers tell the two cases apart with
//! [`BaseBackupStream::end_position`], which is `Some` once `Ended` was returned.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};
use postgres_protocol::message::backend::Message;

use super::connection::{Connection, data_row_values};
use super::error::{Error, ServerError};
use super::frame::{Frame, message_name};
use crate::wal::{Lsn, TimelineId};

/// The two 512-byte zero blocks that end a tar archive; servers before 15 omit them.
static TAR_END_BLOCKS: [u8; 1024] = [0; 1024];

/// Manifest checksum algorithms the server knows (`MANIFEST_CHECKSUMS`).
const MANIFEST_CHECKSUM_ALGORITHMS: [&str; 6] =
    ["NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512"];

/// Server-side compression methods (15+), each with the suffix it adds to archive names.
const SERVER_COMPRESSION_METHODS: [&str; 3] = ["gzip", "lz4", "zstd"];

/// What to ask of `BASE_BACKUP`. [`Default`] gives the server's defaults (spread checkpoint,
/// wait for WAL archiving, checksum verification on, no manifest) with label
/// `walden base backup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// Written into `backup_label`; any text without NUL bytes.
    pub label: String,
    /// Request an immediate checkpoint instead of a spread one.
    pub fast_checkpoint: bool,
    /// Ask the server to size the tablespaces first (fills [`TablespaceInfo::size_kb`]; 15+
    /// also send [`BackupEvent::Progress`]).
    pub progress: bool,
    /// `WAL`: append the WAL needed for consistency to the main archive.
    pub wal: bool,
    /// `WAIT`: the server waits until the last WAL segment is archived (false = `NOWAIT` /
    /// `WAIT 0`, for clients that collect WAL themselves).
    pub wait_for_archive: bool,
    /// Limit the server's send rate, in kB/s (32 to 1048576).
    pub max_rate_kb: Option<u32>,
    /// Send a `tablespace_map` file in the main archive instead of `pg_tblspc` symlinks.
    pub tablespace_map: bool,
    /// Verify data-page checksums while reading (11+; servers 10 never verify). Failures
    /// end the backup with SQLSTATE `XX001` after the end position.
    pub verify_checksums: bool,
    /// Ask for a backup manifest (13+).
    pub manifest: bool,
    /// The manifest's file checksum algorithm (`NONE`, `CRC32C`, `SHA224`, `SHA256`,
    /// `SHA384`, `SHA512`); `None` leaves the server's default, CRC32C. Needs `manifest`.
    pub manifest_checksums: Option<String>,
    /// Server-side compression (15+): method (`gzip`, `lz4`, `zstd`) and optional detail
    /// (`level=N,long,workers=N` or just a level). Archive names get `.gz`, `.lz4`, `.zst`.
    pub server_compression: Option<(String, Option<String>)>,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions {
            label: "walden base backup".into(),
            fast_checkpoint: false,
            progress: false,
            wal: false,
            wait_for_archive: true,
            max_rate_kb: None,
            tablespace_map: false,
            verify_checksums: true,
            manifest: false,
            manifest_checksums: None,
            server_compression: None,
        }
    }
}

/// Options that cannot be sent to a server, found before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseBackupOptionError {
    #[error("BASE_BACKUP needs PostgreSQL 10 or later; the server is version {0}")]
    ServerTooOld(u32),
    #[error(
        "BASE_BACKUP option {option} needs PostgreSQL {needs} or later; the server is version {server}: turn it off"
    )]
    NotSupported {
        option: &'static str,
        needs: u32,
        server: u32,
    },
    #[error("invalid BASE_BACKUP option {option}: {reason}")]
    Invalid {
        option: &'static str,
        reason: String,
    },
}

impl BaseBackupOptions {
    /// The command for a server of major version `server_major`: the keyword form for 10–14
    /// (`BASE_BACKUP LABEL '…' PROGRESS FAST …`), the parenthesised form for 15 and later
    /// (`BASE_BACKUP (LABEL '…', PROGRESS, CHECKPOINT 'fast', …, TARGET 'client')`). Strings
    /// are single-quoted with `'` doubled, so no label can change the command.
    pub fn command(&self, server_major: u32) -> Result<String, BaseBackupOptionError> {
        use BaseBackupOptionError::{Invalid, NotSupported, ServerTooOld};
        if server_major < 10 {
            return Err(ServerTooOld(server_major));
        }
        let too_old = |option, needs| NotSupported {
            option,
            needs,
            server: server_major,
        };
        if self.label.contains('\0') {
            return Err(Invalid {
                option: "LABEL",
                reason: "the label contains a NUL byte".into(),
            });
        }
        if let Some(rate) = self.max_rate_kb
            && !(32..=1_048_576).contains(&rate)
        {
            return Err(Invalid {
                option: "MAX_RATE",
                reason: format!("{rate} kB/s is outside 32 to 1048576"),
            });
        }
        if self.manifest && server_major < 13 {
            return Err(too_old("MANIFEST", 13));
        }
        let checksums = match &self.manifest_checksums {
            None => None,
            Some(_) if !self.manifest => {
                return Err(Invalid {
                    option: "MANIFEST_CHECKSUMS",
                    reason: "it needs MANIFEST".into(),
                });
            }
            Some(name) => Some(
                MANIFEST_CHECKSUM_ALGORITHMS
                    .into_iter()
                    .find(|a| a.eq_ignore_ascii_case(name))
                    .ok_or_else(|| Invalid {
                        option: "MANIFEST_CHECKSUMS",
                        reason: format!(
                            "unknown algorithm {name:?}; use one of {}",
                            MANIFEST_CHECKSUM_ALGORITHMS.join(", ")
                        ),
                    })?,
            ),
        };
        let compression = match &self.server_compression {
            None => None,
            Some(_) if server_major < 15 => return Err(too_old("COMPRESSION", 15)),
            Some((method, detail)) => {
                let method = SERVER_COMPRESSION_METHODS
                    .into_iter()
                    .find(|m| m.eq_ignore_ascii_case(method))
                    .ok_or_else(|| Invalid {
                        option: "COMPRESSION",
                        reason: format!(
                            "unknown method {method:?}; use one of {}",
                            SERVER_COMPRESSION_METHODS.join(", ")
                        ),
                    })?;
                if detail.as_deref().is_some_and(|d| d.contains('\0')) {
                    return Err(Invalid {
                        option: "COMPRESSION_DETAIL",
                        reason: "the detail contains a NUL byte".into(),
                    });
                }
                Some((method, detail.as_deref()))
            }
        };

        let mut words = vec![format!("LABEL {}", quote(&self.label))];
        if server_major >= 15 {
            if self.progress {
                words.push("PROGRESS".into());
            }
            if self.fast_checkpoint {
                words.push("CHECKPOINT 'fast'".into());
            }
            if self.wal {
                words.push("WAL".into());
            }
            if !self.wait_for_archive {
                words.push("WAIT 0".into());
            }
            if let Some(rate) = self.max_rate_kb {
                words.push(format!("MAX_RATE {rate}"));
            }
            if self.tablespace_map {
                words.push("TABLESPACE_MAP".into());
            }
            if !self.verify_checksums {
                words.push("VERIFY_CHECKSUMS 0".into());
            }
            if self.manifest {
                words.push("MANIFEST 'yes'".into());
            }
            if let Some(algorithm) = checksums {
                words.push(format!("MANIFEST_CHECKSUMS '{algorithm}'"));
            }
            words.push("TARGET 'client'".into());
            if let Some((method, detail)) = compression {
                words.push(format!("COMPRESSION '{method}'"));
                if let Some(detail) = detail {
                    words.push(format!("COMPRESSION_DETAIL {}", quote(detail)));
                }
            }
            Ok(format!("BASE_BACKUP ({})", words.join(", ")))
        } else {
            if self.progress {
                words.push("PROGRESS".into());
            }
            if self.fast_checkpoint {
                words.push("FAST".into());
            }
            if self.wal {
                words.push("WAL".into());
            }
            if !self.wait_for_archive {
                words.push("NOWAIT".into());
            }
            if let Some(rate) = self.max_rate_kb {
                words.push(format!("MAX_RATE {rate}"));
            }
            if self.tablespace_map {
                words.push("TABLESPACE_MAP".into());
            }
            // 10 has no verification to turn off.
            if !self.verify_checksums && server_major >= 11 {
                words.push("NOVERIFY_CHECKSUMS".into());
            }
            if self.manifest {
                words.push("MANIFEST 'yes'".into());
            }
            if let Some(algorithm) = checksums {
                words.push(format!("MANIFEST_CHECKSUMS '{algorithm}'"));
            }
            Ok(format!("BASE_BACKUP {}", words.join(" ")))
        }
    }
}

/// A replication-command string literal: single quotes, `'` doubled (the WAL sender's lexer
/// takes backslashes literally).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// One row of the tablespace header result set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceInfo {
    /// The tablespace's OID; `None` for the main data directory (always the last row).
    pub oid: Option<u32>,
    /// Its location on the server (relative for in-place tablespaces); `None` for the main
    /// data directory.
    pub location: Option<String>,
    /// Its size in kB when `progress` was asked for.
    pub size_kb: Option<u64>,
}

/// What a base backup yields, in order: `Started`, `Tablespaces`, for each archive
/// `ArchiveBegin`, `ArchiveData`…, `ArchiveEnd` (user tablespaces first, `base.tar` last), with
/// `Progress` anywhere in between (15+), then `ManifestData`…, `ManifestEnd` when a manifest
/// was asked for, then `Ended`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupEvent {
    /// The backup's start position (the checkpoint's redo point) and timeline.
    Started {
        start: Lsn,
        timeline: TimelineId,
    },
    Tablespaces(Vec<TablespaceInfo>),
    /// A new archive begins: `base.tar` for the main data directory, `<oid>.tar` for a
    /// tablespace, with `.gz`/`.lz4`/`.zst` appended under server compression (15+). Servers
    /// before 15 send no names; these are derived from the tablespace list as pg_basebackup
    /// does.
    ArchiveBegin {
        name: String,
        tablespace_location: Option<String>,
    },
    /// The next bytes of the current archive. For servers before 15 the last chunk is the
    /// 1024 zero bytes we append to terminate the tar.
    ArchiveData(Bytes),
    ArchiveEnd,
    /// Bytes read from the data directory so far, over the whole backup (15+ only).
    Progress(u64),
    /// The next bytes of the backup manifest (JSON text).
    ManifestData(Bytes),
    ManifestEnd,
    /// The backup's end position and timeline: every archive and the manifest are complete.
    Ended {
        end: Lsn,
        timeline: TimelineId,
    },
}

/// A running `BASE_BACKUP`; pull events with [`BaseBackupStream::next`].
///
/// Cancel-safe: each `next()` awaits only [`Connection::recv`] (which is cancel-safe) and
/// keeps every decoded event and a pending server error in the stream, so dropping a `next()`
/// future loses nothing. Dropping the stream itself mid-backup leaves the connection in COPY:
/// close it.
#[must_use = "a base backup does nothing unless its events are read"]
pub struct BaseBackupStream<'a> {
    conn: &'a mut Connection,
    decoder: Decoder,
}

impl Connection {
    /// Sends `BASE_BACKUP` with `opts`, spelled for this server's version. Options the version
    /// lacks are refused before anything is sent (as [`Error::UnexpectedResult`]).
    pub async fn start_base_backup(
        &mut self,
        opts: &BaseBackupOptions,
    ) -> Result<BaseBackupStream<'_>, Error> {
        let major = self.server_version().major();
        let command = opts.command(major).map_err(|e| Error::UnexpectedResult {
            command: "BASE_BACKUP".into(),
            reason: e.to_string(),
        })?;
        self.send_query(&command).await?;
        Ok(BaseBackupStream {
            conn: self,
            decoder: Decoder::new(major, opts.manifest),
        })
    }
}

impl BaseBackupStream<'_> {
    /// The next event, or `None` after the server's final ReadyForQuery (the connection is
    /// then ready for another command).
    ///
    /// An ErrorResponse becomes [`Error::Server`] once the server is ready again. If
    /// [`Self::end_position`] is `Some` at that point, the error came after the end position
    /// (SQLSTATE `XX001`: checksum failures) and the data received is complete; otherwise the
    /// backup is incomplete. After any error the stream is over and further calls fail.
    pub async fn next(&mut self) -> Result<Option<BackupEvent>, Error> {
        loop {
            if let Some(event) = self.decoder.events.pop_front() {
                return Ok(Some(event));
            }
            match self.decoder.state {
                State::Done => return Ok(None),
                State::Broken => {
                    return Err(Error::UnexpectedResult {
                        command: "BASE_BACKUP".into(),
                        reason: "the backup already ended with an error; start a new one".into(),
                    });
                }
                _ => {}
            }
            let frame = match self.conn.recv().await {
                Ok(frame) => frame,
                Err(e) => {
                    // A FATAL error may close the connection before ReadyForQuery: the
                    // server's words explain more than the broken connection.
                    let pending = self.decoder.take_pending_error();
                    self.decoder.state = State::Broken;
                    return Err(pending.map_or(e, Error::Server));
                }
            };
            match self.decoder.handle(frame) {
                Ok(None) => {}
                Ok(Some(error)) => return Err(Error::Server(error)),
                Err(reason) => {
                    self.decoder.state = State::Broken;
                    return Err(self.conn.protocol_error(format!("BASE_BACKUP: {reason}")));
                }
            }
        }
    }

    /// The end position and timeline, once [`BackupEvent::Ended`] was returned.
    pub fn end_position(&self) -> Option<(Lsn, TimelineId)> {
        self.decoder.end
    }
}

/// The three result sets a backup sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResultKind {
    Start,
    Tablespaces,
    End,
}

impl ResultKind {
    fn name(self) -> &'static str {
        match self {
            ResultKind::Start => "start position",
            ResultKind::Tablespaces => "tablespace header",
            ResultKind::End => "end position",
        }
    }

    fn columns(self) -> usize {
        match self {
            ResultKind::Start | ResultKind::End => 2,
            ResultKind::Tablespaces => 3,
        }
    }
}

/// Where in the response the decoder is.
enum State {
    /// Inside one of the result sets.
    Result {
        kind: ResultKind,
        described: bool,
        rows: Vec<Vec<Option<Bytes>>>,
    },
    /// Before 15: between CopyOuts; `next` archives done, `manifest_done` whether the
    /// manifest CopyOut was seen.
    LegacyBetween { next: usize, manifest_done: bool },
    /// Before 15: inside the CopyOut of tablespace `index`.
    LegacyArchive { index: usize },
    /// Before 15: inside the manifest CopyOut.
    LegacyManifest,
    /// 15+: after the tablespace header, before the CopyOut.
    AwaitCopy,
    /// 15+: inside the CopyOut.
    Copy {
        archives: usize,
        archive_open: bool,
        in_manifest: bool,
    },
    /// After the end position: CommandCompletes up to ReadyForQuery.
    AfterEnd,
    /// An ErrorResponse arrived: skipping to ReadyForQuery.
    Failed(ServerError),
    /// ReadyForQuery after success.
    Done,
    /// The stream ended with an error.
    Broken,
}

/// Sans-IO interpretation of the frames of a `BASE_BACKUP` response.
struct Decoder {
    major: u32,
    manifest_wanted: bool,
    state: State,
    events: VecDeque<BackupEvent>,
    tablespaces: Vec<TablespaceInfo>,
    end: Option<(Lsn, TimelineId)>,
}

impl Decoder {
    fn new(major: u32, manifest_wanted: bool) -> Decoder {
        Decoder {
            major,
            manifest_wanted,
            state: State::Result {
                kind: ResultKind::Start,
                described: false,
                rows: Vec::new(),
            },
            events: VecDeque::new(),
            tablespaces: Vec::new(),
            end: None,
        }
    }

    fn take_pending_error(&mut self) -> Option<ServerError> {
        match std::mem::replace(&mut self.state, State::Broken) {
            State::Failed(error) => Some(error),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Takes one frame: queues the events it makes, returns the server's error once the
    /// server is ready after an ErrorResponse, or why the frame is a protocol violation.
    fn handle(&mut self, frame: Frame) -> Result<Option<ServerError>, String> {
        let message = match frame {
            Frame::Message(m) => m,
            other => return Err(format!("unexpected {other:?}")),
        };
        match message {
            // Connection::recv consumes these; ignoring them keeps the decoder usable alone.
            Message::NoticeResponse(_) | Message::ParameterStatus(_) => return Ok(None),
            Message::ErrorResponse(body) => {
                match self.state {
                    State::Failed(_) => return Err("a second ErrorResponse".into()),
                    State::Done | State::Broken => {
                        return Err("ErrorResponse after the end of the backup".into());
                    }
                    _ => {}
                }
                self.state = State::Failed(ServerError::from_fields(body.fields()));
                return Ok(None);
            }
            _ => {}
        }
        let state = std::mem::replace(&mut self.state, State::Broken);
        self.state = match state {
            State::Result {
                kind,
                described,
                rows,
            } => self.result_message(kind, described, rows, message)?,
            State::LegacyBetween {
                next,
                manifest_done,
            } => self.legacy_between(next, manifest_done, message)?,
            State::LegacyArchive { index } => match message {
                Message::CopyData(body) => {
                    let data = body.into_bytes();
                    if !data.is_empty() {
                        self.events.push_back(BackupEvent::ArchiveData(data));
                    }
                    State::LegacyArchive { index }
                }
                Message::CopyDone => {
                    self.events
                        .push_back(BackupEvent::ArchiveData(Bytes::from_static(
                            &TAR_END_BLOCKS,
                        )));
                    self.events.push_back(BackupEvent::ArchiveEnd);
                    State::LegacyBetween {
                        next: index + 1,
                        manifest_done: false,
                    }
                }
                other => return Err(unexpected(&other, "an archive")),
            },
            State::LegacyManifest => match message {
                Message::CopyData(body) => {
                    let data = body.into_bytes();
                    if !data.is_empty() {
                        self.events.push_back(BackupEvent::ManifestData(data));
                    }
                    State::LegacyManifest
                }
                Message::CopyDone => {
                    self.events.push_back(BackupEvent::ManifestEnd);
                    State::LegacyBetween {
                        next: self.tablespaces.len(),
                        manifest_done: true,
                    }
                }
                other => return Err(unexpected(&other, "the manifest")),
            },
            State::AwaitCopy => match message {
                Message::CopyOutResponse(_) => State::Copy {
                    archives: 0,
                    archive_open: false,
                    in_manifest: false,
                },
                other => return Err(unexpected(&other, "place of the CopyOutResponse")),
            },
            State::Copy {
                archives,
                archive_open,
                in_manifest,
            } => self.copy_message(archives, archive_open, in_manifest, message)?,
            State::AfterEnd => match message {
                Message::CommandComplete(_) => State::AfterEnd,
                Message::ReadyForQuery(_) => State::Done,
                other => return Err(unexpected(&other, "end of the backup")),
            },
            State::Failed(error) => match message {
                Message::ReadyForQuery(_) => {
                    self.state = State::Broken;
                    return Ok(Some(error));
                }
                // What the server had sent before its error.
                _ => State::Failed(error),
            },
            State::Done | State::Broken => {
                return Err(format!(
                    "unexpected {} after the end of the backup",
                    message_name(&message)
                ));
            }
        };
        Ok(None)
    }

    fn result_message(
        &mut self,
        kind: ResultKind,
        described: bool,
        mut rows: Vec<Vec<Option<Bytes>>>,
        message: Message,
    ) -> Result<State, String> {
        match message {
            Message::RowDescription(_) if !described => Ok(State::Result {
                kind,
                described: true,
                rows,
            }),
            Message::DataRow(body) if described => {
                let values = data_row_values(&body).map_err(|e| format!("bad DataRow: {e}"))?;
                if values.len() != kind.columns() {
                    return Err(format!(
                        "{} row has {} columns, expected {}",
                        kind.name(),
                        values.len(),
                        kind.columns()
                    ));
                }
                rows.push(values);
                Ok(State::Result {
                    kind,
                    described,
                    rows,
                })
            }
            Message::CommandComplete(_) if described => self.result_complete(kind, rows),
            other => Err(unexpected(&other, &format!("{} result", kind.name()))),
        }
    }

    fn result_complete(
        &mut self,
        kind: ResultKind,
        rows: Vec<Vec<Option<Bytes>>>,
    ) -> Result<State, String> {
        match kind {
            ResultKind::Start | ResultKind::End => {
                let [row] = rows.as_slice() else {
                    return Err(format!(
                        "{} result has {} rows, expected 1",
                        kind.name(),
                        rows.len()
                    ));
                };
                let lsn: Lsn = parse_column(row, 0, "recptr")?
                    .ok_or_else(|| format!("{} is NULL", kind.name()))?;
                let tli: u32 = parse_column(row, 1, "tli")?
                    .ok_or_else(|| format!("{} timeline is NULL", kind.name()))?;
                let timeline = TimelineId(tli);
                if kind == ResultKind::Start {
                    self.events.push_back(BackupEvent::Started {
                        start: lsn,
                        timeline,
                    });
                    Ok(State::Result {
                        kind: ResultKind::Tablespaces,
                        described: false,
                        rows: Vec::new(),
                    })
                } else {
                    self.end = Some((lsn, timeline));
                    self.events
                        .push_back(BackupEvent::Ended { end: lsn, timeline });
                    Ok(State::AfterEnd)
                }
            }
            ResultKind::Tablespaces => {
                if rows.is_empty() {
                    return Err("tablespace header has no rows".into());
                }
                self.tablespaces = rows
                    .iter()
                    .map(|row| {
                        Ok(TablespaceInfo {
                            oid: parse_column(row, 0, "spcoid")?,
                            location: parse_column(row, 1, "spclocation")?,
                            size_kb: parse_column(row, 2, "size")?,
                        })
                    })
                    .collect::<Result<_, String>>()?;
                self.events
                    .push_back(BackupEvent::Tablespaces(self.tablespaces.clone()));
                Ok(if self.major >= 15 {
                    State::AwaitCopy
                } else {
                    State::LegacyBetween {
                        next: 0,
                        manifest_done: false,
                    }
                })
            }
        }
    }

    /// Before 15, between CopyOuts: the next tablespace's archive, the manifest, or the end
    /// position.
    fn legacy_between(
        &mut self,
        next: usize,
        manifest_done: bool,
        message: Message,
    ) -> Result<State, String> {
        match message {
            Message::CopyOutResponse(_) => {
                if let Some(tablespace) = self.tablespaces.get(next) {
                    let name = match tablespace.oid {
                        Some(oid) => format!("{oid}.tar"),
                        None => "base.tar".to_string(),
                    };
                    self.events.push_back(BackupEvent::ArchiveBegin {
                        name,
                        tablespace_location: tablespace.location.clone(),
                    });
                    Ok(State::LegacyArchive { index: next })
                } else if self.manifest_wanted && !manifest_done {
                    Ok(State::LegacyManifest)
                } else {
                    Err("more CopyOuts than tablespaces and manifest".into())
                }
            }
            Message::RowDescription(_) => {
                if next < self.tablespaces.len() {
                    return Err(format!(
                        "end position after {next} of {} archives",
                        self.tablespaces.len()
                    ));
                }
                if self.manifest_wanted && !manifest_done {
                    return Err("the server sent no backup manifest".into());
                }
                Ok(State::Result {
                    kind: ResultKind::End,
                    described: true,
                    rows: Vec::new(),
                })
            }
            other => Err(unexpected(&other, "place of a CopyOutResponse")),
        }
    }

    /// 15+: one message inside the CopyOut.
    fn copy_message(
        &mut self,
        mut archives: usize,
        mut archive_open: bool,
        mut in_manifest: bool,
        message: Message,
    ) -> Result<State, String> {
        match message {
            Message::CopyData(body) => {
                let mut payload = body.into_bytes();
                let kind = payload
                    .try_get_u8()
                    .map_err(|_| "empty CopyData message".to_string())?;
                match kind {
                    b'n' => {
                        if in_manifest {
                            return Err("an archive after the manifest".into());
                        }
                        let name = cstring(&mut payload, "archive name")?;
                        let location = cstring(&mut payload, "tablespace location")?;
                        if !payload.is_empty() {
                            return Err("trailing bytes in a new-archive message".into());
                        }
                        validate_archive_name(&name)?;
                        if archive_open {
                            self.events.push_back(BackupEvent::ArchiveEnd);
                        }
                        self.events.push_back(BackupEvent::ArchiveBegin {
                            name,
                            tablespace_location: (!location.is_empty()).then_some(location),
                        });
                        archives += 1;
                        archive_open = true;
                    }
                    b'd' if payload.is_empty() => {}
                    b'd' => {
                        if in_manifest {
                            self.events.push_back(BackupEvent::ManifestData(payload));
                        } else if archive_open {
                            self.events.push_back(BackupEvent::ArchiveData(payload));
                        } else {
                            return Err("archive data before any archive began".into());
                        }
                    }
                    b'p' => {
                        let done = payload
                            .try_get_u64()
                            .map_err(|_| "progress message too short".to_string())?;
                        if !payload.is_empty() {
                            return Err("progress message too long".into());
                        }
                        self.events.push_back(BackupEvent::Progress(done));
                    }
                    b'm' => {
                        if in_manifest {
                            return Err("a second manifest".into());
                        }
                        if !payload.is_empty() {
                            return Err("trailing bytes in a manifest message".into());
                        }
                        if archive_open {
                            self.events.push_back(BackupEvent::ArchiveEnd);
                        }
                        archive_open = false;
                        in_manifest = true;
                    }
                    other => {
                        return Err(format!("unknown CopyData message type 0x{other:02x}"));
                    }
                }
                Ok(State::Copy {
                    archives,
                    archive_open,
                    in_manifest,
                })
            }
            Message::CopyDone => {
                if archives == 0 {
                    return Err("the server sent no archive".into());
                }
                if archive_open {
                    self.events.push_back(BackupEvent::ArchiveEnd);
                }
                if in_manifest {
                    self.events.push_back(BackupEvent::ManifestEnd);
                } else if self.manifest_wanted {
                    return Err("the server sent no backup manifest".into());
                }
                Ok(State::Result {
                    kind: ResultKind::End,
                    described: false,
                    rows: Vec::new(),
                })
            }
            other => Err(unexpected(&other, "the backup's CopyOut")),
        }
    }
}

fn unexpected(message: &Message, place: &str) -> String {
    format!("unexpected {} in the {place}", message_name(message))
}

/// Column `index` of a row, parsed from its text form; `None` for NULL.
fn parse_column<T: std::str::FromStr>(
    row: &[Option<Bytes>],
    index: usize,
    column: &str,
) -> Result<Option<T>, String> {
    let Some(bytes) = row.get(index).and_then(Option::as_ref) else {
        return Ok(None);
    };
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            format!(
                "column {column} has invalid value {:?}",
                String::from_utf8_lossy(bytes)
            )
        })
}

/// A NUL-terminated UTF-8 string off the front of `payload`.
fn cstring(payload: &mut Bytes, what: &str) -> Result<String, String> {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| format!("{what} is not NUL-terminated"))?;
    let text = payload.split_to(end);
    payload.advance(1);
    String::from_utf8(text.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// Archive names as pg_basebackup accepts them: non-empty, not starting with `.`, no `/` or
/// `\` (the name becomes a file name on our side).
fn validate_archive_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        return Err(format!("invalid archive name {name:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::frame;
    use bytes::{BufMut, BytesMut};
    use proptest::prelude::*;

    // --- backend message encoders ---------------------------------------------------------

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn row_description(names: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_i16(names.len() as i16);
        for name in names {
            b.extend_from_slice(name.as_bytes());
            b.put_u8(0);
            b.put_i32(0);
            b.put_i16(0);
            b.put_i32(25);
            b.put_i16(-1);
            b.put_i32(0);
            b.put_i16(0);
        }
        msg(b'T', &b)
    }

    fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        msg(b'D', &b)
    }

    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', format!("{tag}\0").as_bytes())
    }

    fn copy_out() -> Vec<u8> {
        msg(b'H', &[0, 0, 0])
    }

    fn copy_data(payload: &[u8]) -> Vec<u8> {
        msg(b'd', payload)
    }

    fn typed(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![kind];
        p.extend_from_slice(payload);
        copy_data(&p)
    }

    fn error(code: &str, message: &str) -> Vec<u8> {
        msg(
            b'E',
            format!("SERROR\0VERROR\0C{code}\0M{message}\0\0").as_bytes(),
        )
    }

    fn position(lsn: &str, tli: &str) -> Vec<u8> {
        [
            row_description(&["recptr", "tli"]),
            data_row(&[Some(lsn), Some(tli)]),
            complete("SELECT"),
        ]
        .concat()
    }

    fn header(rows: &[[Option<&str>; 3]]) -> Vec<u8> {
        let mut v = row_description(&["spcoid", "spclocation", "size"]);
        for r in rows {
            v.extend(data_row(r));
        }
        v.extend(complete("SELECT"));
        v
    }

    /// What the decoder made of `bytes`, fed in chunks of the sizes in `splits` (cycled).
    struct Outcome {
        events: Vec<BackupEvent>,
        /// `Ok(None)` finished, `Ok(Some)` the server's error, `Err` a protocol violation.
        end: Result<Option<ServerError>, String>,
        end_position: Option<(Lsn, TimelineId)>,
    }

    fn decode(major: u32, manifest: bool, bytes: &[u8], splits: &[usize]) -> Outcome {
        let mut decoder = Decoder::new(major, manifest);
        let mut events = Vec::new();
        let mut buf = BytesMut::new();
        let mut rest = bytes;
        let mut sizes = splits.iter().copied().cycle();
        loop {
            loop {
                match frame::decode(&mut buf) {
                    Ok(Some(f)) => {
                        let result = decoder.handle(f);
                        events.extend(decoder.events.drain(..));
                        match result {
                            Ok(None) if matches!(decoder.state, State::Done) => {
                                return Outcome {
                                    events,
                                    end: Ok(None),
                                    end_position: decoder.end,
                                };
                            }
                            Ok(None) => {}
                            other => {
                                return Outcome {
                                    events,
                                    end: other,
                                    end_position: decoder.end,
                                };
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => panic!("frame error {e}"),
                }
            }
            assert!(!rest.is_empty(), "stream ended before ReadyForQuery");
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
    }

    /// Reassembles archives and the manifest from events; checks the event grammar.
    #[derive(Debug, Default)]
    struct Backup {
        started: Option<(Lsn, TimelineId)>,
        tablespaces: Vec<TablespaceInfo>,
        archives: Vec<(String, Option<String>, Vec<u8>)>,
        progress: Vec<u64>,
        manifest: Option<Vec<u8>>,
        ended: Option<(Lsn, TimelineId)>,
    }

    fn assemble(events: &[BackupEvent]) -> Backup {
        let mut b = Backup::default();
        let mut open = false;
        let mut manifest_done = false;
        for e in events {
            match e {
                BackupEvent::Started { start, timeline } => {
                    assert!(b.started.is_none());
                    b.started = Some((*start, *timeline));
                }
                BackupEvent::Tablespaces(t) => b.tablespaces = t.clone(),
                BackupEvent::ArchiveBegin {
                    name,
                    tablespace_location,
                } => {
                    assert!(!open && b.manifest.is_none());
                    open = true;
                    b.archives
                        .push((name.clone(), tablespace_location.clone(), Vec::new()));
                }
                BackupEvent::ArchiveData(d) => {
                    assert!(open);
                    b.archives.last_mut().unwrap().2.extend_from_slice(d);
                }
                BackupEvent::ArchiveEnd => {
                    assert!(open);
                    open = false;
                }
                BackupEvent::Progress(p) => b.progress.push(*p),
                BackupEvent::ManifestData(d) => {
                    assert!(!open && !manifest_done);
                    b.manifest.get_or_insert_with(Vec::new).extend_from_slice(d);
                }
                BackupEvent::ManifestEnd => {
                    manifest_done = true;
                    b.manifest.get_or_insert_with(Vec::new);
                }
                BackupEvent::Ended { end, timeline } => {
                    assert!(!open);
                    b.ended = Some((*end, *timeline));
                }
            }
        }
        b
    }

    /// The member names of a ustar archive that ends with two zero blocks and nothing after.
    fn tar_members(tar: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut at = 0;
        loop {
            let block = &tar[at..at + 512];
            if block.iter().all(|&b| b == 0) {
                assert!(tar[at..].iter().all(|&b| b == 0), "data after the end");
                assert_eq!(tar.len() - at, 1024, "exactly two end blocks");
                return names;
            }
            assert_eq!(&block[257..262], b"ustar");
            let name_end = block[..100].iter().position(|&b| b == 0).unwrap_or(100);
            names.push(String::from_utf8(block[..name_end].to_vec()).unwrap());
            let size_text = std::str::from_utf8(&block[124..136]).unwrap();
            let size = u64::from_str_radix(size_text.trim_matches(['\0', ' ']), 8).unwrap();
            at += 512 + (size as usize).div_ceil(512) * 512;
        }
    }

    fn tar_member<'a>(tar: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
        let mut at = 0;
        while at + 512 <= tar.len() && tar[at..at + 512].iter().any(|&b| b != 0) {
            let block = &tar[at..at + 512];
            let name_end = block[..100].iter().position(|&b| b == 0).unwrap_or(100);
            let size_text = std::str::from_utf8(&block[124..136]).unwrap();
            let size = u64::from_str_radix(size_text.trim_matches(['\0', ' ']), 8).unwrap();
            if &block[..name_end] == wanted.as_bytes() {
                return Some(&tar[at + 512..at + 512 + size as usize]);
            }
            at += 512 + (size as usize).div_ceil(512) * 512;
        }
        None
    }

    // --- the command ----------------------------------------------------------------------

    fn all_options() -> BaseBackupOptions {
        BaseBackupOptions {
            label: "it's walden".into(),
            fast_checkpoint: true,
            progress: true,
            wal: true,
            wait_for_archive: false,
            max_rate_kb: Some(1024),
            tablespace_map: true,
            verify_checksums: false,
            manifest: true,
            manifest_checksums: Some("sha256".into()),
            server_compression: None,
        }
    }

    #[test]
    fn command_keyword_form_before_15() {
        assert_eq!(
            all_options().command(14).unwrap(),
            "BASE_BACKUP LABEL 'it''s walden' PROGRESS FAST WAL NOWAIT MAX_RATE 1024 \
             TABLESPACE_MAP NOVERIFY_CHECKSUMS MANIFEST 'yes' MANIFEST_CHECKSUMS 'SHA256'"
        );
        assert_eq!(
            BaseBackupOptions::default().command(13).unwrap(),
            "BASE_BACKUP LABEL 'walden base backup'"
        );
        let no_manifest = BaseBackupOptions {
            manifest: false,
            manifest_checksums: None,
            ..all_options()
        };
        assert_eq!(
            no_manifest.command(10).unwrap(),
            "BASE_BACKUP LABEL 'it''s walden' PROGRESS FAST WAL NOWAIT MAX_RATE 1024 TABLESPACE_MAP",
            "10 has no checksum verification to turn off"
        );
        assert!(
            no_manifest
                .command(11)
                .unwrap()
                .ends_with(" NOVERIFY_CHECKSUMS")
        );
    }

    #[test]
    fn command_parenthesised_form_from_15() {
        let opts = BaseBackupOptions {
            server_compression: Some(("ZSTD".into(), Some("level=3,long".into()))),
            ..all_options()
        };
        assert_eq!(
            opts.command(15).unwrap(),
            "BASE_BACKUP (LABEL 'it''s walden', PROGRESS, CHECKPOINT 'fast', WAL, WAIT 0, \
             MAX_RATE 1024, TABLESPACE_MAP, VERIFY_CHECKSUMS 0, MANIFEST 'yes', \
             MANIFEST_CHECKSUMS 'SHA256', TARGET 'client', COMPRESSION 'zstd', \
             COMPRESSION_DETAIL 'level=3,long')"
        );
        assert_eq!(
            BaseBackupOptions::default().command(18).unwrap(),
            "BASE_BACKUP (LABEL 'walden base backup', TARGET 'client')"
        );
    }

    #[test]
    fn command_refuses_what_the_server_lacks_or_rejects() {
        use BaseBackupOptionError::*;
        let opts = all_options();
        assert_eq!(opts.command(9), Err(ServerTooOld(9)));
        assert!(matches!(
            opts.command(12),
            Err(NotSupported {
                option: "MANIFEST",
                needs: 13,
                server: 12
            })
        ));
        let compressed = BaseBackupOptions {
            server_compression: Some(("zstd".into(), None)),
            ..all_options()
        };
        assert!(matches!(
            compressed.command(14),
            Err(NotSupported {
                option: "COMPRESSION",
                needs: 15,
                ..
            })
        ));
        let bad = |o: BaseBackupOptions| o.command(16).unwrap_err();
        assert!(matches!(
            bad(BaseBackupOptions {
                server_compression: Some(("xz".into(), None)),
                ..all_options()
            }),
            Invalid {
                option: "COMPRESSION",
                ..
            }
        ));
        assert!(matches!(
            bad(BaseBackupOptions {
                manifest_checksums: Some("md5".into()),
                ..all_options()
            }),
            Invalid {
                option: "MANIFEST_CHECKSUMS",
                ..
            }
        ));
        assert!(matches!(
            bad(BaseBackupOptions {
                manifest: false,
                ..all_options()
            }),
            Invalid {
                option: "MANIFEST_CHECKSUMS",
                ..
            }
        ));
        for rate in [0, 31, 1_048_577] {
            assert!(matches!(
                bad(BaseBackupOptions {
                    max_rate_kb: Some(rate),
                    ..all_options()
                }),
                Invalid {
                    option: "MAX_RATE",
                    ..
                }
            ));
        }
        assert!(matches!(
            bad(BaseBackupOptions {
                label: "a\0b".into(),
                ..all_options()
            }),
            Invalid {
                option: "LABEL",
                ..
            }
        ));
        let err = bad(BaseBackupOptions {
            server_compression: Some(("zstd".into(), Some("x\0".into()))),
            ..all_options()
        });
        assert!(err.to_string().contains("COMPRESSION_DETAIL"), "{err}");
    }

    // --- PostgreSQL 15 capture --------------------------------------------------------------

    fn pg15_stream() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/basebackup/pg15-stream.bin.zst"
        );
        let compressed = std::fs::read(path).expect("read the PG 15 capture");
        zstd::stream::decode_all(&compressed[..]).expect("decompress the PG 15 capture")
    }

    fn check_pg15(outcome: Outcome) {
        assert_eq!(outcome.end, Ok(None));
        let b = assemble(&outcome.events);
        let (start, start_tli) = b.started.expect("Started");
        let (end, end_tli) = b.ended.expect("Ended");
        assert_eq!(outcome.end_position, Some((end, end_tli)));
        assert!(start < end, "{start} < {end}");
        assert_eq!((start_tli, end_tli), (TimelineId(1), TimelineId(1)));
        assert!(matches!(
            outcome.events.first(),
            Some(BackupEvent::Started { .. })
        ));
        assert!(matches!(
            outcome.events.last(),
            Some(BackupEvent::Ended { .. })
        ));

        // A user tablespace, then the main directory, sizes given (PROGRESS).
        assert_eq!(b.tablespaces.len(), 2);
        let ts = &b.tablespaces[0];
        let oid = ts.oid.expect("user tablespace oid");
        assert_eq!(ts.location.as_deref(), Some("/tmp/walden-bb-fixtures/ts1"));
        assert!(ts.size_kb.is_some());
        assert_eq!(
            (b.tablespaces[1].oid, &b.tablespaces[1].location),
            (None, &None)
        );
        assert!(b.tablespaces[1].size_kb.unwrap() > 10_000);

        // One archive per tablespace, in the same order, base.tar last.
        let names: Vec<_> = b.archives.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(names, [format!("{oid}.tar").as_str(), "base.tar"]);
        assert_eq!(b.archives[0].1, ts.location);
        assert_eq!(b.archives[1].1, None);
        let ts_members = tar_members(&b.archives[0].2);
        assert!(ts_members[0].starts_with("PG_15_"), "{ts_members:?}");
        let base = &b.archives[1].2;
        let members = tar_members(base);
        assert_eq!(&members[..2], ["backup_label", "tablespace_map"]);
        assert_eq!(
            members.last().map(String::as_str),
            Some("global/pg_control")
        );
        let label = String::from_utf8(tar_member(base, "backup_label").unwrap().to_vec()).unwrap();
        assert!(
            label.starts_with(&format!("START WAL LOCATION: {start} ")),
            "{label}"
        );
        assert!(label.contains("LABEL: walden fixture\n"), "{label}");
        let map = String::from_utf8(tar_member(base, "tablespace_map").unwrap().to_vec()).unwrap();
        assert_eq!(map, format!("{oid} /tmp/walden-bb-fixtures/ts1\n"));

        // Progress never goes back and ends near the size announced.
        assert!(!b.progress.is_empty());
        assert!(
            b.progress.windows(2).all(|w| w[0] <= w[1]),
            "{:?}",
            b.progress
        );

        // The manifest, in several chunks, names the WAL range of the backup.
        let chunks = outcome
            .events
            .iter()
            .filter(|e| matches!(e, BackupEvent::ManifestData(_)))
            .count();
        assert!(chunks > 1, "manifest in {chunks} chunks");
        let manifest = String::from_utf8(b.manifest.expect("manifest")).unwrap();
        assert!(manifest.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\": 1,"));
        assert!(
            manifest.contains(&format!("\"Start-LSN\": \"{start}\"")),
            "start"
        );
        assert!(manifest.contains(&format!("\"End-LSN\": \"{end}\"")), "end");
        let last_line = manifest.trim_end().lines().last().unwrap();
        assert!(
            last_line.starts_with("\"Manifest-Checksum\": \""),
            "{last_line}"
        );
    }

    #[test]
    fn pg15_capture_whole() {
        let stream = pg15_stream();
        check_pg15(decode(15, true, &stream, &[stream.len()]));
    }

    #[test]
    fn pg15_capture_in_awkward_splits() {
        let stream = pg15_stream();
        check_pg15(decode(
            15,
            true,
            &stream,
            &[1, 2, 3, 4, 5, 8191, 8192, 8193, 131_071],
        ));
        check_pg15(decode(15, true, &stream, &[65_536]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4))]
        #[test]
        fn pg15_capture_in_random_splits(
            splits in proptest::collection::vec(1usize..300_000, 1..16)
        ) {
            let stream = pg15_stream();
            check_pg15(decode(15, true, &stream, &splits));
        }
    }

    // --- framing before 15 --------------------------------------------------------------------

    fn tar_without_end(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = Vec::new();
        for (name, data) in members {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
            h[257..263].copy_from_slice(b"ustar\0");
            tar.extend_from_slice(&h);
            tar.extend_from_slice(data);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
        tar
    }

    fn legacy_stream(manifest: bool, tail: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let ts = tar_without_end(&[("PG_14_202107181/", b""), ("PG_14_202107181/1/x", b"rel")]);
        let base = tar_without_end(&[("backup_label", b"START WAL LOCATION: 0/2000028\n")]);
        let mut s = position("0/2000028", "1");
        s.extend(header(&[
            [Some("16384"), Some("/srv/ts"), None],
            [None, None, None],
        ]));
        s.extend(copy_out());
        s.extend(copy_data(&ts[..700]));
        s.extend(copy_data(&ts[700..]));
        s.extend(msg(b'c', b""));
        s.extend(copy_out());
        s.extend(copy_data(&base));
        s.extend(msg(b'N', b"SWARNING\0VWARNING\0C01000\0Ma warning\0\0"));
        s.extend(msg(b'c', b""));
        if manifest {
            s.extend(copy_out());
            s.extend(copy_data(b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n"));
            s.extend(copy_data(b"\"Manifest-Checksum\": \"00\"}\n"));
            s.extend(msg(b'c', b""));
        }
        s.extend(position("0/2000100", "1"));
        s.extend(tail);
        (s, ts, base)
    }

    #[test]
    fn legacy_framing_terminates_tars_and_reads_the_manifest() {
        let tail = [complete("BASE_BACKUP"), msg(b'Z', b"I")].concat();
        let (stream, ts, base) = legacy_stream(true, &tail);
        for splits in [vec![stream.len()], vec![1], vec![3, 7, 511]] {
            let out = decode(14, true, &stream, &splits);
            assert_eq!(out.end, Ok(None));
            let b = assemble(&out.events);
            assert_eq!(b.started, Some((Lsn(0x2000028), TimelineId(1))));
            assert_eq!(b.ended, Some((Lsn(0x2000100), TimelineId(1))));
            assert_eq!(
                b.tablespaces,
                [
                    TablespaceInfo {
                        oid: Some(16384),
                        location: Some("/srv/ts".into()),
                        size_kb: None
                    },
                    TablespaceInfo {
                        oid: None,
                        location: None,
                        size_kb: None
                    }
                ]
            );
            let end = [0u8; 1024];
            assert_eq!(b.archives.len(), 2);
            assert_eq!(b.archives[0].0, "16384.tar");
            assert_eq!(b.archives[0].1.as_deref(), Some("/srv/ts"));
            assert_eq!(b.archives[0].2, [&ts[..], &end].concat());
            assert_eq!(b.archives[1].0, "base.tar");
            assert_eq!(b.archives[1].2, [&base[..], &end].concat());
            assert_eq!(tar_members(&b.archives[1].2), ["backup_label"]);
            assert!(b.progress.is_empty());
            assert_eq!(
                b.manifest.unwrap(),
                b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Manifest-Checksum\": \"00\"}\n"
            );
        }
        // 10-13 send a second "SELECT" instead of "BASE_BACKUP".
        let tail = [complete("SELECT"), msg(b'Z', b"I")].concat();
        let (stream, _, _) = legacy_stream(false, &tail);
        let out = decode(12, false, &stream, &[100]);
        assert_eq!(out.end, Ok(None));
        assert!(
            !out.events
                .iter()
                .any(|e| matches!(e, BackupEvent::ManifestEnd))
        );
    }

    #[test]
    fn checksum_failure_after_the_end_position() {
        let tail = [
            error("XX001", "checksum verification failure during base backup"),
            msg(b'Z', b"I"),
        ]
        .concat();
        let (stream, _, _) = legacy_stream(true, &tail);
        let out = decode(14, true, &stream, &[97]);
        let err = out.end.unwrap().expect("the server's error");
        assert_eq!(err.code, "XX001");
        assert!(matches!(out.events.last(), Some(BackupEvent::Ended { .. })));
        assert_eq!(out.end_position, Some((Lsn(0x2000100), TimelineId(1))));
    }

    #[test]
    fn errors_before_the_end_leave_no_end_position() {
        let mut s = position("0/2000028", "1");
        s.extend(header(&[[None, None, None]]));
        s.extend(copy_out());
        s.extend(typed(b'n', b"base.tar\0\0"));
        s.extend(typed(b'd', b"abc"));
        s.extend(error("57P01", "terminating connection"));
        s.extend(msg(b'Z', b"I"));
        let out = decode(16, false, &s, &[5]);
        assert_eq!(out.end.unwrap().unwrap().code, "57P01");
        assert_eq!(out.end_position, None);
        assert_eq!(
            out.events.last(),
            Some(&BackupEvent::ArchiveData(Bytes::from_static(b"abc")))
        );
    }

    fn copy_prefix() -> Vec<u8> {
        let mut s = position("0/2000028", "1");
        s.extend(header(&[[None, None, None]]));
        s.extend(copy_out());
        s
    }

    #[track_caller]
    fn violation(major: u32, manifest: bool, body: &[u8]) -> String {
        let mut s = copy_prefix();
        s.extend(body);
        s.extend(msg(b'c', b""));
        s.extend(position("0/3000000", "1"));
        s.extend(complete("BASE_BACKUP"));
        s.extend(msg(b'Z', b"I"));
        decode(major, manifest, &s, &[s.len()]).end.unwrap_err()
    }

    #[test]
    fn protocol_violations_in_the_copy() {
        let n = |name: &[u8]| typed(b'n', &[name, b"\0\0"].concat());
        for bad in [&b""[..], b".hidden", b"a/b", b"a\\b"] {
            let why = violation(15, false, &n(bad));
            assert!(why.contains("invalid archive name"), "{why}");
        }
        let why = violation(15, false, &[n(b"base.tar"), typed(b'x', b"")].concat());
        assert!(why.contains("unknown CopyData message type 0x78"), "{why}");
        let why = violation(15, false, &typed(b'd', b"x"));
        assert!(why.contains("before any archive"), "{why}");
        let why = violation(
            15,
            true,
            &[n(b"base.tar"), typed(b'm', b""), n(b"1.tar")].concat(),
        );
        assert!(why.contains("archive after the manifest"), "{why}");
        let why = violation(15, true, &n(b"base.tar"));
        assert!(why.contains("no backup manifest"), "{why}");
        let why = violation(15, false, b"");
        assert!(why.contains("no archive"), "{why}");
        let why = violation(15, false, &[n(b"base.tar"), typed(b'p', b"\0\0")].concat());
        assert!(why.contains("progress message too short"), "{why}");
        let why = violation(15, false, &typed(b'n', b"base.tar"));
        assert!(why.contains("not NUL-terminated"), "{why}");
        let why = violation(15, false, &copy_data(b""));
        assert!(why.contains("empty CopyData"), "{why}");
        // Before 15 a manifest that was asked for must come.
        let why = violation(14, true, &copy_data(b"payload"));
        assert!(why.contains("no backup manifest"), "{why}");
    }

    #[test]
    fn progress_and_manifest_in_the_copy() {
        let mut s = copy_prefix();
        s.extend(typed(b'n', b"base.tar.zst\0\0"));
        s.extend(typed(b'd', b"zz"));
        s.extend(typed(b'p', &42u64.to_be_bytes()));
        s.extend(typed(b'm', b""));
        s.extend(typed(b'd', b"{}"));
        s.extend(msg(b'c', b""));
        s.extend(position("0/3000000", "2"));
        s.extend(complete("BASE_BACKUP"));
        s.extend(msg(b'Z', b"I"));
        let out = decode(18, true, &s, &[1]);
        assert_eq!(out.end, Ok(None));
        assert_eq!(
            out.events[2..],
            [
                BackupEvent::ArchiveBegin {
                    name: "base.tar.zst".into(),
                    tablespace_location: None
                },
                BackupEvent::ArchiveData(Bytes::from_static(b"zz")),
                BackupEvent::Progress(42),
                BackupEvent::ArchiveEnd,
                BackupEvent::ManifestData(Bytes::from_static(b"{}")),
                BackupEvent::ManifestEnd,
                BackupEvent::Ended {
                    end: Lsn(0x3000000),
                    timeline: TimelineId(2)
                },
            ]
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_copy_payloads(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..12),
            major in prop::sample::select(vec![14u32, 15]),
        ) {
            let mut decoder = Decoder::new(major, true);
            let mut s = copy_prefix();
            for p in &payloads {
                s.extend(copy_data(p));
            }
            s.extend(msg(b'c', b""));
            let mut buf = BytesMut::from(&s[..]);
            while let Ok(Some(f)) = frame::decode(&mut buf) {
                if decoder.handle(f).is_err() {
                    break;
                }
            }
        }
    }
}
