//! Requests to replies, once the token has been checked: `/status`, `/metrics` and the
//! read-only store API (see [`crate::http_api`]). Runs on a blocking thread (it reads the
//! disk). Every name in a path is parsed by the type that owns it ([`ClusterName`],
//! [`BackupId`], [`WalFileName`], a timeline number) or looked up in the backup's own file
//! list, so no path can leave the store: `..`, `%2e%2e`, empty segments and absolute paths
//! match nothing and get 404.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use hyper::StatusCode;
use serde_json::Value;

use super::status::{StatusSource, store_clusters};
use crate::http_api::{BackupEntry, STORED_AS, WalEntry, decode_segment};
use crate::store::{
    BackupId, ClusterName, ClusterReader, StoreError, WalArchive, backup_dir, list_backups,
};
use crate::wal::{TimelineId, WalFileName};

/// What to send back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    pub body: ReplyBody,
}

#[derive(Debug)]
pub enum ReplyBody {
    Bytes(Vec<u8>),
    /// A file and its length, streamed.
    File(File, u64),
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const BINARY: &str = "application/octet-stream";
/// Prometheus text exposition format.
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Reply {
    pub fn text(status: StatusCode, text: &str) -> Reply {
        Reply {
            status,
            content_type: TEXT,
            headers: Vec::new(),
            body: ReplyBody::Bytes(format!("{text}\n").into_bytes()),
        }
    }

    fn json(value: &impl serde::Serialize) -> Reply {
        match serde_json::to_vec_pretty(value) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                Reply {
                    status: StatusCode::OK,
                    content_type: JSON,
                    headers: Vec::new(),
                    body: ReplyBody::Bytes(bytes),
                }
            }
            Err(e) => Reply::text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    pub fn not_found() -> Reply {
        Reply::text(StatusCode::NOT_FOUND, "not found")
    }

    fn error(e: &dyn std::fmt::Display) -> Reply {
        tracing::error!("HTTP store API: {e}");
        Reply::text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
    }

    fn store_error(e: StoreError) -> Reply {
        match e {
            StoreError::NoCluster { .. } => Reply::not_found(),
            other => Reply::error(&other),
        }
    }

    /// A regular file streamed (404 if absent or not a regular file).
    fn file(path: &Path, content_type: &'static str) -> Reply {
        match open_regular(path) {
            Ok(Some((file, len))) => Reply {
                status: StatusCode::OK,
                content_type,
                headers: Vec::new(),
                body: ReplyBody::File(file, len),
            },
            Ok(None) => Reply::not_found(),
            Err(e) => Reply::error(&format!("cannot open {}: {e}", path.display())),
        }
    }
}

/// Opens `path` if it is a regular file (not following a symbolic link); its length.
fn open_regular(path: &Path) -> io::Result<Option<(File, u64)>> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    Ok(Some((file, len)))
}

/// The reply to an authorized `GET`/`HEAD` of `path` (the raw, still percent-encoded path).
pub fn route(store: &Path, status: &dyn StatusSource, path: &str) -> Reply {
    let Some(rest) = path.strip_prefix('/') else {
        return Reply::not_found();
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["status"] => Reply::json(&status.status_json()),
        ["metrics"] => Reply {
            status: StatusCode::OK,
            content_type: METRICS,
            headers: Vec::new(),
            body: ReplyBody::Bytes(status.metrics().into_bytes()),
        },
        ["v1", "clusters"] => match store_clusters(store) {
            Ok(names) => Reply::json(&names),
            Err(e) => Reply::error(&format!("cannot list store {}: {e}", store.display())),
        },
        ["v1", "clusters", cluster, rest @ ..] => match ClusterName::new(cluster) {
            Ok(name) => cluster_route(store, &name, rest),
            Err(_) => Reply::not_found(),
        },
        _ => Reply::not_found(),
    }
}

fn cluster_route(store: &Path, name: &ClusterName, rest: &[&str]) -> Reply {
    let reader = match ClusterReader::open(store, name) {
        Ok(r) => r,
        Err(e) => return Reply::store_error(e),
    };
    match rest {
        ["info"] => Reply::file(&store.join(name.as_str()).join("cluster.json"), JSON),
        ["backups"] => match complete_backups(store, name) {
            Ok(list) => Reply::json(&list),
            Err(e) => Reply::store_error(e),
        },
        ["backups", id, file @ ..] if !file.is_empty() => backup_file(store, name, id, file),
        ["wal"] => match reader.list_wal() {
            Ok(list) => Reply::json(
                &list
                    .iter()
                    .map(|s| WalEntry {
                        name: file_name(&s.path),
                        size: s.size,
                    })
                    .collect::<Vec<_>>(),
            ),
            Err(e) => Reply::store_error(e),
        },
        ["wal", segment] => wal_segment(&reader, segment),
        ["history"] => match reader.history_files() {
            Ok(list) => Reply::json(&list.iter().map(|t| t.0).collect::<Vec<_>>()),
            Err(e) => Reply::store_error(e),
        },
        ["history", tli] => match parse_timeline(tli) {
            Some(tli) => match reader.read_history(tli) {
                Ok(Some(bytes)) => Reply {
                    status: StatusCode::OK,
                    content_type: TEXT,
                    headers: Vec::new(),
                    body: ReplyBody::Bytes(bytes),
                },
                Ok(None) => Reply::not_found(),
                Err(e) => Reply::store_error(e),
            },
            None => Reply::not_found(),
        },
        ["gaps"] => match reader.gaps() {
            Ok(gaps) => Reply::json(&gaps),
            Err(e) => Reply::store_error(e),
        },
        _ => Reply::not_found(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A timeline in decimal, 1 or more, digits only.
fn parse_timeline(text: &str) -> Option<TimelineId> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|t| *t > 0).map(TimelineId)
}

/// The complete backups with their `backup.json`, oldest first.
fn complete_backups(store: &Path, name: &ClusterName) -> Result<Vec<BackupEntry>, StoreError> {
    Ok(list_backups(store, name)?
        .into_iter()
        .filter(|b| !b.in_progress && !b.abandoned)
        .filter_map(|b| {
            b.json.map(|backup| BackupEntry {
                id: b.id.to_string(),
                backup,
            })
        })
        .collect())
}

/// The files a backup lists in its `backup.json`: its archives, `backup_manifest`,
/// `backup.json` and `config/<name>` for each captured configuration file.
fn listed_files(record: &Value) -> Vec<String> {
    let mut names = vec!["backup.json".to_string(), "backup_manifest".to_string()];
    let strings = |v: Option<&Value>, key: Option<&str>| -> Vec<String> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| match key {
                Some(k) => item.get(k).and_then(Value::as_str),
                None => item.as_str(),
            })
            .map(str::to_string)
            .collect()
    };
    names.extend(strings(record.get("archives"), Some("name")));
    let config = record.get("config_files").and_then(|c| c.get("files"));
    names.extend(
        strings(config, None)
            .into_iter()
            .map(|n| format!("config/{n}")),
    );
    names.retain(|n| is_plain_relative(n));
    names
}

/// Plain names separated by `/`: none empty, `.`, `..` or holding a NUL.
fn is_plain_relative(name: &str) -> bool {
    name.split('/')
        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

fn backup_file(store: &Path, name: &ClusterName, id: &str, file: &[&str]) -> Reply {
    let Ok(id) = id.parse::<BackupId>() else {
        return Reply::not_found();
    };
    let mut parts = Vec::with_capacity(file.len());
    for segment in file {
        match decode_segment(segment) {
            Some(part) => parts.push(part),
            None => return Reply::not_found(),
        }
    }
    let wanted = parts.join("/");
    let dir = backup_dir(store, name, id);
    let record: Value = match fs::read(dir.join("backup.json")) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => return Reply::not_found(),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Reply::not_found(),
        Err(e) => return Reply::error(&format!("cannot read {}: {e}", dir.display())),
    };
    if !listed_files(&record).contains(&wanted) {
        return Reply::not_found();
    }
    let content_type = if wanted.ends_with(".json") || wanted == "backup_manifest" {
        JSON
    } else {
        BINARY
    };
    Reply::file(&dir.join(&wanted), content_type)
}

/// A segment by its plain name, served as the store holds it, with [`STORED_AS`] naming the
/// stored file.
fn wal_segment(reader: &ClusterReader, segment: &str) -> Reply {
    let Ok(name) = WalFileName::parse(segment, reader.info().wal_segment_size) else {
        return Reply::not_found();
    };
    if name.partial || name.compressed {
        return Reply::not_found();
    }
    // A segment may be compressed (its plain file removed) between lookup and open: look again.
    for _ in 0..3 {
        let stored = match reader.find_segment(name.tli, name.segno) {
            Ok(Some(s)) => s,
            Ok(None) => return Reply::not_found(),
            Err(e) => return Reply::store_error(e),
        };
        match open_regular(&stored.path) {
            Ok(Some((file, len))) => {
                return Reply {
                    status: StatusCode::OK,
                    content_type: BINARY,
                    headers: vec![(STORED_AS, file_name(&stored.path))],
                    body: ReplyBody::File(file, len),
                };
            }
            Ok(None) => continue,
            Err(e) => {
                return Reply::error(&format!("cannot open {}: {e}", stored.path.display()));
            }
        }
    }
    Reply::not_found()
}
