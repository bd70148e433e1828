//! `backup_manifest` (PostgreSQL 13+): parsing versions 1 and 2 with the checks
//! pg_verifybackup makes (layout, paths, checksums, WAL ranges, the SHA-256 manifest checksum
//! over the raw bytes), and comparing a manifest with the files seen in a backup's archives.
//! Nothing here does I/O.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use sha2::Digest;

use super::tar_stream::{BackupPath, ChecksumAlgorithm, FileSummary};
use crate::wal::{Lsn, TimelineId};

/// One file the manifest lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: BackupPath,
    pub size: u64,
    /// `Last-Modified` as written (`YYYY-MM-DD HH:MM:SS GMT`), if present.
    pub last_modified: Option<String>,
    pub algorithm: ChecksumAlgorithm,
    /// The digest bytes; empty when `algorithm` is `NONE`.
    pub checksum: Vec<u8>,
}

/// One `WAL-Ranges` entry: the WAL a restore of the backup needs on one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: TimelineId,
    pub start: Lsn,
    pub end: Lsn,
}

/// A parsed and checksum-verified backup manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    version: u32,
    system_identifier: Option<u64>,
    files: Vec<ManifestFile>,
    index: HashMap<BackupPath, usize>,
    wal_ranges: Vec<WalRange>,
    manifest_checksum: [u8; 32],
}

/// A manifest that cannot be used; the messages follow pg_verifybackup's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("could not parse backup manifest: {0}")]
    Parse(String),
    #[error(
        "could not parse backup manifest: unexpected manifest version {0} (walden reads versions 1 and 2)"
    )]
    UnsupportedVersion(u64),
    #[error("could not parse backup manifest: a version 2 manifest must have a System-Identifier")]
    MissingSystemIdentifier,
    #[error("could not parse backup manifest: file entry #{0}: {1}")]
    BadFile(usize, &'static str),
    #[error("could not parse backup manifest: could not decode file name {0:?}")]
    BadEncodedPath(String),
    #[error("duplicate path name in backup manifest: \"{0}\"")]
    DuplicatePath(BackupPath),
    #[error("unrecognized checksum algorithm: \"{algorithm}\" (file \"{path}\")")]
    UnknownAlgorithm { path: BackupPath, algorithm: String },
    #[error("invalid checksum for file \"{path}\": \"{checksum}\"")]
    InvalidChecksum { path: BackupPath, checksum: String },
    #[error("could not parse backup manifest: WAL range #{0}: {1}")]
    BadWalRange(usize, String),
    #[error("could not parse backup manifest: expected at least 2 lines")]
    TooFewLines,
    #[error("could not parse backup manifest: last line not newline-terminated")]
    NoFinalNewline,
    #[error("invalid manifest checksum: \"{0}\"")]
    InvalidManifestChecksum(String),
    #[error(
        "manifest checksum mismatch: the manifest says {expected} but its contents hash to {actual}; the manifest is corrupt"
    )]
    ChecksumMismatch { expected: String, actual: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u64,
    #[serde(rename = "System-Identifier", default)]
    system_identifier: Option<u64>,
    #[serde(rename = "Files", default)]
    files: Vec<RawFile>,
    #[serde(rename = "WAL-Ranges", default)]
    wal_ranges: Vec<RawWalRange>,
    #[serde(rename = "Manifest-Checksum")]
    manifest_checksum: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: Option<u64>,
    #[serde(rename = "Last-Modified")]
    last_modified: Option<String>,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWalRange {
    #[serde(rename = "Timeline")]
    timeline: Option<u32>,
    #[serde(rename = "Start-LSN")]
    start: Option<String>,
    #[serde(rename = "End-LSN")]
    end: Option<String>,
}

const VERSION_KEY: &str = "\"PostgreSQL-Backup-Manifest-Version\"";

impl Manifest {
    /// Parses a manifest from its raw bytes exactly as the server sent them and verifies its
    /// `Manifest-Checksum`.
    pub fn parse(raw: &[u8]) -> Result<Manifest, ManifestError> {
        let after_brace = raw
            .trim_ascii_start()
            .strip_prefix(b"{")
            .map(<[u8]>::trim_ascii_start);
        if !after_brace.is_some_and(|rest| rest.starts_with(VERSION_KEY.as_bytes())) {
            return Err(ManifestError::Parse("expected version indicator".into()));
        }
        let doc: RawManifest =
            serde_json::from_slice(raw).map_err(|e| ManifestError::Parse(e.to_string()))?;
        let version = match doc.version {
            1 => 1,
            2 => 2,
            other => return Err(ManifestError::UnsupportedVersion(other)),
        };
        if version == 2 && doc.system_identifier.is_none() {
            return Err(ManifestError::MissingSystemIdentifier);
        }

        let mut files = Vec::with_capacity(doc.files.len());
        let mut index = HashMap::with_capacity(doc.files.len());
        for (n, f) in doc.files.into_iter().enumerate() {
            let file = parse_file(n + 1, f)?;
            if index.insert(file.path.clone(), files.len()).is_some() {
                return Err(ManifestError::DuplicatePath(file.path));
            }
            files.push(file);
        }
        let wal_ranges = doc
            .wal_ranges
            .into_iter()
            .enumerate()
            .map(|(n, r)| parse_wal_range(n + 1, r))
            .collect::<Result<Vec<_>, _>>()?;

        let actual = checksum_region(raw).map(sha2::Sha256::digest)?;
        let expected = decode_hex(&doc.manifest_checksum)
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| ManifestError::InvalidManifestChecksum(doc.manifest_checksum.clone()))?;
        if actual.as_slice() != expected {
            return Err(ManifestError::ChecksumMismatch {
                expected: doc.manifest_checksum,
                actual: hex(&actual),
            });
        }
        Ok(Manifest {
            version,
            system_identifier: doc.system_identifier,
            files,
            index,
            wal_ranges,
            manifest_checksum: expected,
        })
    }

    /// `PostgreSQL-Backup-Manifest-Version`: 1 (PostgreSQL 13–16) or 2 (17+).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The cluster's system identifier (version 2 manifests only).
    pub fn system_identifier(&self) -> Option<u64> {
        self.system_identifier
    }

    /// The files, in manifest order.
    pub fn files(&self) -> &[ManifestFile] {
        &self.files
    }

    /// The entry for one path, if listed.
    pub fn file(&self, path: &BackupPath) -> Option<&ManifestFile> {
        self.index.get(path).and_then(|&i| self.files.get(i))
    }

    /// The WAL ranges, newest timeline first (as the server writes them).
    pub fn wal_ranges(&self) -> &[WalRange] {
        &self.wal_ranges
    }

    /// The verified `Manifest-Checksum` (SHA-256).
    pub fn manifest_checksum(&self) -> [u8; 32] {
        self.manifest_checksum
    }

    /// The checksum algorithm every file uses, if they all use the same one (a server always
    /// writes one algorithm per backup); `None` for a manifest without files or a mixed one.
    pub fn checksum_algorithm(&self) -> Option<ChecksumAlgorithm> {
        let first = self.files.first()?.algorithm;
        self.files
            .iter()
            .all(|f| f.algorithm == first)
            .then_some(first)
    }
}

fn parse_file(n: usize, f: RawFile) -> Result<ManifestFile, ManifestError> {
    let path = match (f.path, f.encoded_path) {
        (Some(path), None) => BackupPath::from(path.as_str()),
        (None, Some(encoded)) => match decode_hex(&encoded) {
            Some(bytes) => BackupPath::new(bytes),
            None => return Err(ManifestError::BadEncodedPath(encoded)),
        },
        (None, None) => return Err(ManifestError::BadFile(n, "missing path name")),
        (Some(_), Some(_)) => {
            return Err(ManifestError::BadFile(
                n,
                "both path name and encoded path name",
            ));
        }
    };
    let size = f.size.ok_or(ManifestError::BadFile(n, "missing size"))?;
    let algorithm = match &f.algorithm {
        None if f.checksum.is_some() => {
            return Err(ManifestError::BadFile(n, "checksum without algorithm"));
        }
        None => ChecksumAlgorithm::None,
        Some(name) => name.parse().map_err(|_| ManifestError::UnknownAlgorithm {
            path: path.clone(),
            algorithm: name.clone(),
        })?,
    };
    let text = f.checksum.unwrap_or_default();
    let checksum = decode_hex(&text)
        .filter(|bytes| bytes.len() == algorithm.digest_len())
        .ok_or_else(|| ManifestError::InvalidChecksum {
            path: path.clone(),
            checksum: text.clone(),
        })?;
    Ok(ManifestFile {
        path,
        size,
        last_modified: f.last_modified,
        algorithm,
        checksum,
    })
}

fn parse_wal_range(n: usize, r: RawWalRange) -> Result<WalRange, ManifestError> {
    let bad = |what: &str| ManifestError::BadWalRange(n, what.to_string());
    let timeline = r.timeline.ok_or_else(|| bad("missing timeline"))?;
    let start = r.start.ok_or_else(|| bad("missing start LSN"))?;
    let end = r.end.ok_or_else(|| bad("missing end LSN"))?;
    let start: Lsn = start
        .parse()
        .map_err(|e| bad(&format!("could not parse start LSN: {e}")))?;
    let end: Lsn = end
        .parse()
        .map_err(|e| bad(&format!("could not parse end LSN: {e}")))?;
    Ok(WalRange {
        timeline: TimelineId(timeline),
        start,
        end,
    })
}

/// The bytes the manifest checksum covers: everything through the newline that precedes the
/// last line. The manifest must end with a newline and have at least two lines.
fn checksum_region(raw: &[u8]) -> Result<&[u8], ManifestError> {
    let mut newlines = raw
        .iter()
        .enumerate()
        .rev()
        .filter(|&(_, &b)| b == b'\n')
        .map(|(i, _)| i);
    let (last, penultimate) = (newlines.next(), newlines.next());
    match (last, penultimate) {
        (Some(last), Some(penultimate)) if last + 1 == raw.len() => Ok(&raw[..=penultimate]),
        (Some(_), Some(_)) => Err(ManifestError::NoFinalNewline),
        _ => Err(ManifestError::TooFewLines),
    }
}

/// Decodes hexadecimal (either case); `None` if odd-length or not hex.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16);
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

/// Lower-case hexadecimal, the way manifests print checksums.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A difference between a manifest and the files in a backup's archives. Messages follow
/// pg_verifybackup's ("on disk" becomes "in the archives").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// A regular file in the archives that the manifest does not list.
    NotInManifest { path: BackupPath },
    /// A file the manifest lists that no archive contains.
    MissingFromArchives { path: BackupPath },
    /// The same path appears twice in the archives.
    DuplicateInArchives { path: BackupPath },
    SizeDiffers {
        path: BackupPath,
        manifest: u64,
        archive: u64,
    },
    ChecksumDiffers {
        path: BackupPath,
        algorithm: ChecksumAlgorithm,
        manifest: Vec<u8>,
        archive: Vec<u8>,
    },
    /// The archive was read with another algorithm than the manifest's, so the checksum was
    /// not checked.
    AlgorithmDiffers {
        path: BackupPath,
        manifest: ChecksumAlgorithm,
        archive: ChecksumAlgorithm,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::NotInManifest { path } => {
                write!(
                    f,
                    "\"{path}\" is present in the archives but not in the manifest"
                )
            }
            Mismatch::MissingFromArchives { path } => {
                write!(
                    f,
                    "\"{path}\" is present in the manifest but not in the archives"
                )
            }
            Mismatch::DuplicateInArchives { path } => {
                write!(f, "\"{path}\" is present more than once in the archives")
            }
            Mismatch::SizeDiffers {
                path,
                manifest,
                archive,
            } => write!(
                f,
                "\"{path}\" has size {archive} in the archives but size {manifest} in the manifest"
            ),
            Mismatch::ChecksumDiffers {
                path,
                algorithm,
                manifest,
                archive,
            } => write!(
                f,
                "checksum mismatch for file \"{path}\": {algorithm} {} in the archives, {} in the manifest",
                hex(archive),
                hex(manifest)
            ),
            Mismatch::AlgorithmDiffers {
                path,
                manifest,
                archive,
            } => write!(
                f,
                "checksum of \"{path}\" not checked: the manifest uses {manifest} but the archives were read with {archive}"
            ),
        }
    }
}

/// Files pg_verifybackup never compares, in either direction (pg_basebackup may add or edit
/// them after the server wrote the manifest).
const EXEMPT: [&[u8]; 4] = [
    b"backup_manifest",
    b"postgresql.auto.conf",
    b"recovery.signal",
    b"standby.signal",
];

/// A WAL segment in `pg_wal/` (24 hex digits, possibly `.partial`): sent with the WAL option
/// but never listed. Status and history files there are listed and so are compared.
fn is_wal_segment(path: &[u8]) -> bool {
    path.strip_prefix(b"pg_wal/").is_some_and(|name| {
        let name = name.strip_suffix(b".partial").unwrap_or(name);
        name.len() == 24 && name.iter().all(u8::is_ascii_hexdigit)
    })
}

/// Compares a manifest with the regular files of all of a backup's archives (each with its
/// manifest path, e.g. from [`super::tar_stream::TarStream`] with the tablespace prefix).
/// Reports, in archive order then manifest order: files the manifest does not list (except
/// [`EXEMPT`] ones and WAL segments), size and checksum differences, and listed files no
/// archive had. Directories and symlinks are not listed in manifests and are not passed here.
pub fn compare(manifest: &Manifest, files: impl IntoIterator<Item = FileSummary>) -> Vec<Mismatch> {
    let mut found = vec![false; manifest.files.len()];
    let mut out = Vec::new();
    for file in files {
        let bytes = file.path.as_bytes();
        if EXEMPT.contains(&bytes) {
            continue;
        }
        let Some((&i, entry)) = manifest
            .index
            .get(&file.path)
            .and_then(|i| Some((i, manifest.files.get(*i)?)))
        else {
            if !is_wal_segment(bytes) {
                out.push(Mismatch::NotInManifest { path: file.path });
            }
            continue;
        };
        if let Some(seen) = found.get_mut(i) {
            if *seen {
                out.push(Mismatch::DuplicateInArchives { path: file.path });
                continue;
            }
            *seen = true;
        }
        if entry.size != file.size {
            out.push(Mismatch::SizeDiffers {
                path: file.path,
                manifest: entry.size,
                archive: file.size,
            });
        } else if entry.algorithm == ChecksumAlgorithm::None {
            // Written without checksums: nothing more to compare.
        } else if entry.algorithm != file.algorithm {
            out.push(Mismatch::AlgorithmDiffers {
                path: file.path,
                manifest: entry.algorithm,
                archive: file.algorithm,
            });
        } else if entry.checksum != file.checksum {
            out.push(Mismatch::ChecksumDiffers {
                path: file.path,
                algorithm: entry.algorithm,
                manifest: entry.checksum.clone(),
                archive: file.checksum,
            });
        }
    }
    for (entry, seen) in manifest.files.iter().zip(found) {
        if !seen && !EXEMPT.contains(&entry.path.as_bytes()) {
            out.push(Mismatch::MissingFromArchives {
                path: entry.path.clone(),
            });
        }
    }
    out
}
