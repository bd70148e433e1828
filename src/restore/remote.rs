//! The client side of the store API (see [`crate::http_api`]): a store served by `walden
//! serve` or `walden run` read over HTTP(S), as a [`WalArchive`] and [`BackupFiles`], so
//! that `restore` and `wal-fetch` work the same on a URL as on a directory.
//!
//! - A small blocking client (ureq, rustls with ring): no async runtime, so `wal-fetch` starts
//!   fast. Connections are reused within a process.
//! - The token comes from `--token-file FILE` (its content, trimmed) or `WALDEN_TOKEN`; the
//!   server's certificate is checked against `--ca-file`/`WALDEN_CA_FILE`, else the system's
//!   CA bundle.
//! - 404 is "absent" (`None`); 401 is [`StoreError::Unauthorized`]; a network error or a 5xx
//!   is retried twice (after 0.2 s and 1 s), then reported as [`StoreError::Remote`].
//! - WAL segments arrive as the store holds them ([`STORED_AS`] says how): a `.zst` is
//!   decompressed here, and a `.partial` is left to `wal-fetch` to cut at its valid end, as
//!   for a local store.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ureq::http::Response;
use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};

use super::extract::BackupFiles;
use crate::http_api::{BackupEntry, PREFIX, STORED_AS, WalEntry, encode_segment};
use crate::store::{ClusterInfo, ClusterName, FORMAT, Gap, StoreError, StoredSegment, WalArchive};
use crate::wal::{SegNo, TimelineId, WalFileName};

/// Environment variable holding the bearer token when no `--token-file` is given.
pub const TOKEN_ENV: &str = "WALDEN_TOKEN";
/// Environment variable naming the CA file when no `--ca-file` is given.
pub const CA_FILE_ENV: &str = "WALDEN_CA_FILE";
/// Delays before the retries of a request that met a network error or a 5xx.
const RETRY_AFTER: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];
/// Most bytes of a list or metadata reply read into memory.
const SMALL_BODY_LIMIT: u64 = 64 << 20;

/// Where and how to reach a store over HTTP(S).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSpec {
    /// `http(s)://HOST:PORT`, without a trailing slash.
    pub url: String,
    /// The file holding the token; `None`: [`TOKEN_ENV`].
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) to check the server's certificate with; `None`: the system's.
    pub ca_file: Option<PathBuf>,
}

impl RemoteSpec {
    /// `Some` if `from` is an `http://` or `https://` URL; a path or anything else gives
    /// `None`. A URL with a path, query or fragment is an error.
    pub fn parse(
        from: &str,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Option<Result<RemoteSpec, StoreError>> {
        let lower = from.to_ascii_lowercase();
        let rest_at = if lower.starts_with("https://") {
            8
        } else if lower.starts_with("http://") {
            7
        } else {
            return None;
        };
        let url = from.strip_suffix('/').unwrap_or(from);
        let authority = url.get(rest_at..).unwrap_or_default();
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Some(Err(StoreError::Remote {
                url: from.to_string(),
                reason: "give the server's address only: http(s)://HOST:PORT".into(),
            }));
        }
        Some(Ok(RemoteSpec {
            url: url.to_string(),
            token_file,
            ca_file,
        }))
    }
}

/// A connection (pool) to a store served over HTTP(S).
#[derive(Clone)]
pub struct RemoteStore {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The token from `token_file`, else from [`TOKEN_ENV`].
fn read_token(spec: &RemoteSpec) -> Result<String, StoreError> {
    let bad = |reason: String| StoreError::Remote {
        url: spec.url.clone(),
        reason,
    };
    let token = match &spec.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read the token file {}: {e}", path.display())))?,
        None => std::env::var(TOKEN_ENV).map_err(|_| {
            bad(format!(
                "no token: give --token-file FILE (the content of the server's token_file) or set {TOKEN_ENV}"
            ))
        })?,
    };
    let token = token.trim();
    if token.is_empty() || token.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad(
            "the token is empty or holds control characters: it must be the content of the server's token_file".into(),
        ));
    }
    Ok(token.to_string())
}

/// The CA certificates to trust: `ca_file`, else the system's bundle.
fn read_roots(spec: &RemoteSpec) -> Result<Vec<ureq::tls::Certificate<'static>>, StoreError> {
    let path = match &spec.ca_file {
        Some(p) => p.clone(),
        None => crate::pg::system_bundle().map_err(|e| StoreError::Remote {
            url: spec.url.clone(),
            reason: format!("{e}; or give --ca-file"),
        })?,
    };
    let bad = |reason: String| StoreError::Remote {
        url: spec.url.clone(),
        reason: format!("CA file {}: {reason}", path.display()),
    };
    let pem = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(cert) = item.map_err(|e| bad(e.to_string()))? {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

impl RemoteStore {
    /// Reads the token (and, for https, the CA certificates); does not connect yet.
    pub fn new(spec: &RemoteSpec) -> Result<RemoteStore, StoreError> {
        let token = read_token(spec)?;
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)));
        if spec.url.to_ascii_lowercase().starts_with("https://") {
            let roots = read_roots(spec)?;
            config = config.tls_config(
                TlsConfig::builder()
                    .provider(TlsProvider::Rustls)
                    .root_certs(RootCerts::Specific(Arc::new(roots)))
                    .unversioned_rustls_crypto_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .build(),
            );
        }
        Ok(RemoteStore {
            agent: config.build().into(),
            base: spec.url.clone(),
            authorization: format!("Bearer {token}"),
        })
    }

    /// The server's address.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn full_url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET` (or `HEAD`) of `path`: `None` for 404.
    fn request(&self, path: &str, head: bool) -> Result<Option<Response<ureq::Body>>, StoreError> {
        let url = self.full_url(path);
        let mut retries = RETRY_AFTER.iter();
        loop {
            let sent = if head {
                self.agent
                    .head(&url)
                    .header("authorization", &self.authorization)
                    .call()
            } else {
                self.agent
                    .get(&url)
                    .header("authorization", &self.authorization)
                    .call()
            };
            let reason = match sent {
                Ok(response) => match response.status().as_u16() {
                    200 => return Ok(Some(response)),
                    404 => return Ok(None),
                    401 | 403 => return Err(StoreError::Unauthorized { url }),
                    status if status >= 500 => format!("HTTP {status}: {}", first_line(response)),
                    status => {
                        return Err(StoreError::Remote {
                            url,
                            reason: format!("HTTP {status}: {}", first_line(response)),
                        });
                    }
                },
                Err(e) => e.to_string(),
            };
            match retries.next() {
                Some(delay) => std::thread::sleep(*delay),
                None => return Err(StoreError::Remote { url, reason }),
            }
        }
    }

    /// A small reply read whole; `None` for 404.
    fn get_bytes(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(response) = self.request(path, false)? else {
            return Ok(None);
        };
        response
            .into_body()
            .with_config()
            .limit(SMALL_BODY_LIMIT)
            .read_to_vec()
            .map(Some)
            .map_err(|e| StoreError::Remote {
                url: self.full_url(path),
                reason: format!("reading the reply: {e}"),
            })
    }

    /// A JSON reply; `None` for 404.
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.get_bytes(path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Remote {
                url: self.full_url(path),
                reason: format!("not the JSON expected: {e}"),
            })
    }

    /// A JSON reply that must be there.
    fn get_json_present<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, StoreError> {
        self.get_json(path)?.ok_or_else(|| StoreError::Remote {
            url: self.full_url(path),
            reason: "not found (404): is this a walden server of the same version?".into(),
        })
    }

    /// Opens cluster `name` by reading its `cluster.json`.
    pub fn cluster(&self, name: &ClusterName) -> Result<RemoteCluster, StoreError> {
        let prefix = format!("{PREFIX}/{}", name.as_str());
        let path = format!("{prefix}/info");
        let Some(bytes) = self.get_bytes(&path)? else {
            return Err(StoreError::NoCluster {
                store: PathBuf::from(&self.base),
                cluster: name.to_string(),
            });
        };
        let bad = |reason: String| StoreError::BadMetadata {
            path: PathBuf::from(self.full_url(&path)),
            reason,
        };
        let info: ClusterInfo = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if info.format != FORMAT {
            return Err(bad(format!(
                "format {} is not {FORMAT}: the server runs another walden version",
                info.format
            )));
        }
        if &info.cluster != name {
            return Err(bad(format!("it names cluster {:?}", info.cluster.as_str())));
        }
        Ok(RemoteCluster {
            store: self.clone(),
            prefix,
            info,
        })
    }
}

/// The first line of an error reply, for messages.
fn first_line(response: Response<ureq::Body>) -> String {
    let mut text = String::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(1024)
        .read_to_string(&mut text);
    text.lines().next().unwrap_or("").trim().to_string()
}

/// One cluster of a store served over HTTP(S).
#[derive(Clone, Debug)]
pub struct RemoteCluster {
    store: RemoteStore,
    /// `/v1/clusters/<name>`.
    prefix: String,
    info: ClusterInfo,
}

impl RemoteCluster {
    /// The server's address.
    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// The complete backups with their `backup.json`, oldest first.
    pub fn backups(&self) -> Result<Vec<BackupEntry>, StoreError> {
        self.store
            .get_json_present(&format!("{}/backups", self.prefix))
    }

    /// The files of backup `id`.
    pub fn backup_files(&self, id: &str) -> RemoteBackupFiles {
        RemoteBackupFiles {
            store: self.store.clone(),
            prefix: format!("{}/backups/{}", self.prefix, encode_segment(id)),
        }
    }

    fn segment_path(&self, name: &WalFileName) -> String {
        let plain = WalFileName {
            partial: false,
            compressed: false,
            ..*name
        };
        format!(
            "{}/wal/{}",
            self.prefix,
            plain.format(self.info.wal_segment_size)
        )
    }

    /// The stored form named by a reply's [`STORED_AS`] header, which must be a form of
    /// `expected`.
    fn stored_as(
        &self,
        response: &Response<ureq::Body>,
        expected: &WalFileName,
        path: &str,
    ) -> Result<WalFileName, StoreError> {
        let header = response
            .headers()
            .get(STORED_AS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match WalFileName::parse(header, self.info.wal_segment_size) {
            Ok(n) if n.tli == expected.tli && n.segno == expected.segno => Ok(n),
            _ => Err(StoreError::Remote {
                url: self.store.full_url(path),
                reason: format!(
                    "the reply names the stored file {header:?}, not a form of the segment asked for"
                ),
            }),
        }
    }
}

impl WalArchive for RemoteCluster {
    fn info(&self) -> &ClusterInfo {
        &self.info
    }

    fn list_wal(&self) -> Result<Vec<StoredSegment>, StoreError> {
        let entries: Vec<WalEntry> = self
            .store
            .get_json_present(&format!("{}/wal", self.prefix))?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            match WalFileName::parse(&entry.name, self.info.wal_segment_size) {
                Ok(name) => out.push(StoredSegment {
                    path: PathBuf::from(self.store.full_url(&self.segment_path(&name))),
                    name,
                    size: entry.size,
                }),
                Err(e) => tracing::warn!("ignoring a listed WAL file {:?}: {e}", entry.name),
            }
        }
        out.sort_by_key(|s| (s.name.tli, s.name.segno, s.name.partial, s.name.compressed));
        Ok(out)
    }

    fn find_segment(
        &self,
        tli: TimelineId,
        segno: SegNo,
    ) -> Result<Option<StoredSegment>, StoreError> {
        let plain = WalFileName::segment(tli, segno);
        let path = self.segment_path(&plain);
        let Some(response) = self.store.request(&path, true)? else {
            return Ok(None);
        };
        let name = self.stored_as(&response, &plain, &path)?;
        let size = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Some(StoredSegment {
            name,
            path: PathBuf::from(self.store.full_url(&path)),
            size,
        }))
    }

    fn history_files(&self) -> Result<Vec<TimelineId>, StoreError> {
        let list: Vec<u32> = self
            .store
            .get_json_present(&format!("{}/history", self.prefix))?;
        Ok(list.into_iter().map(TimelineId).collect())
    }

    fn read_history(&self, tli: TimelineId) -> Result<Option<Vec<u8>>, StoreError> {
        self.store
            .get_bytes(&format!("{}/history/{}", self.prefix, tli.0))
    }

    fn gaps(&self) -> Result<Vec<Gap>, StoreError> {
        self.store
            .get_json_present(&format!("{}/gaps", self.prefix))
    }

    /// The segment's bytes, decompressed if the server holds it as `.zst` (whatever
    /// `segment` says: it may have been compressed since it was looked up).
    fn open_segment(&self, segment: &StoredSegment) -> Result<Box<dyn Read + Send>, StoreError> {
        let path = self.segment_path(&segment.name);
        let Some(response) = self.store.request(&path, false)? else {
            return Err(StoreError::Remote {
                url: self.store.full_url(&path),
                reason: "the segment vanished from the store (removed by retention?)".into(),
            });
        };
        let stored = self.stored_as(&response, &segment.name, &path)?;
        let body = response.into_body().into_reader();
        if stored.compressed {
            let decoder =
                zstd::stream::read::Decoder::new(body).map_err(|e| StoreError::Remote {
                    url: self.store.full_url(&path),
                    reason: format!("cannot start decompressing: {e}"),
                })?;
            Ok(Box::new(decoder))
        } else {
            Ok(Box::new(body))
        }
    }
}

/// The files of one backup of a store served over HTTP(S).
#[derive(Clone, Debug)]
pub struct RemoteBackupFiles {
    store: RemoteStore,
    /// `/v1/clusters/<name>/backups/<id>`.
    prefix: String,
}

impl BackupFiles for RemoteBackupFiles {
    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        let encoded: Vec<String> = name.split('/').map(encode_segment).collect();
        let path = format!("{}/{}", self.prefix, encoded.join("/"));
        match self.store.request(&path, false) {
            Ok(Some(response)) => Ok(Box::new(response.into_body().into_reader())),
            Ok(None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not in the store (404)", self.store.full_url(&path)),
            )),
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

#[cfg(test)]
mod tests;
