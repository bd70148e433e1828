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
/// `EXEMPT` ones and WAL segments), size and checksum differences, and listed files no
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::backup::tar_stream::TarStream;
    use crate::backup::tar_stream::tests::{archive, dir, file, parse_all};

    fn fixture_dir(major: u32) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("fixtures/manifests/pg{major}"))
    }

    fn info(major: u32, key: &str) -> String {
        let text = std::fs::read_to_string(fixture_dir(major).join("INFO")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
            .unwrap()
            .to_string()
    }

    fn fixture(major: u32, variant: &str) -> Vec<u8> {
        std::fs::read(fixture_dir(major).join(format!("{variant}.backup_manifest"))).unwrap()
    }

    /// Appends the manifest checksum line to `body` (which must end with a newline).
    fn seal(body: &str) -> String {
        let sum = hex(&sha2::Sha256::digest(body.as_bytes()));
        format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n")
    }

    pub(in crate::backup) fn file_line(path: &str, data: &[u8], alg: ChecksumAlgorithm) -> String {
        let sum = crate::backup::tar_stream::checksum(alg, data);
        if alg == ChecksumAlgorithm::None {
            format!(
                "{{ \"Path\": \"{path}\", \"Size\": {}, \"Last-Modified\": \"2026-11-22 19:54:18 GMT\" }}",
                data.len()
            )
        } else {
            format!(
                "{{ \"Path\": \"{path}\", \"Size\": {}, \"Last-Modified\": \"2026-11-22 19:54:18 GMT\", \"Checksum-Algorithm\": \"{alg}\", \"Checksum\": \"{}\" }}",
                data.len(),
                hex(&sum)
            )
        }
    }

    pub(in crate::backup) fn manifest_text(files: &[String]) -> String {
        seal(&format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7711086575738853143,\n\"Files\": [\n{}\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": 2, \"Start-LSN\": \"0/5000000\", \"End-LSN\": \"0/5000100\" }},\n{{ \"Timeline\": 1, \"Start-LSN\": \"0/4000028\", \"End-LSN\": \"0/5000000\" }}\n],\n",
            files.join(",\n")
        ))
    }

    const ALL_VARIANTS: [(u32, &str, ChecksumAlgorithm); 13] = [
        (15, "crc32c", ChecksumAlgorithm::Crc32c),
        (15, "sha256", ChecksumAlgorithm::Sha256),
        (15, "none", ChecksumAlgorithm::None),
        (15, "force-encode", ChecksumAlgorithm::Crc32c),
        (15, "wal-fetch", ChecksumAlgorithm::Crc32c),
        (18, "crc32c", ChecksumAlgorithm::Crc32c),
        (18, "sha224", ChecksumAlgorithm::Sha224),
        (18, "sha256", ChecksumAlgorithm::Sha256),
        (18, "sha384", ChecksumAlgorithm::Sha384),
        (18, "sha512", ChecksumAlgorithm::Sha512),
        (18, "none", ChecksumAlgorithm::None),
        (18, "force-encode", ChecksumAlgorithm::Crc32c),
        (18, "wal-fetch", ChecksumAlgorithm::Crc32c),
    ];

    #[test]
    fn every_real_manifest_parses_and_its_checksum_verifies() {
        for (major, variant, alg) in ALL_VARIANTS {
            let raw = fixture(major, variant);
            let m = Manifest::parse(&raw).unwrap_or_else(|e| panic!("pg{major} {variant}: {e}"));
            let what = format!("pg{major} {variant}");
            assert_eq!(m.version(), if major >= 17 { 2 } else { 1 }, "{what}");
            let sysid: u64 = info(major, "system_identifier").parse().unwrap();
            assert_eq!(
                m.system_identifier(),
                (major >= 17).then_some(sysid),
                "{what}"
            );
            assert_eq!(m.checksum_algorithm(), Some(alg), "{what}");
            assert!(m.files().len() > 900, "{what}: {}", m.files().len());
            assert!(
                m.files()
                    .iter()
                    .all(|f| f.checksum.len() == alg.digest_len())
            );
            let control = m
                .file(&"global/pg_control".into())
                .expect("pg_control listed");
            assert_eq!(control.size, 8192);
            assert!(m.file(&"backup_label".into()).is_some(), "{what}");
            assert!(m.file(&"tablespace_map".into()).is_some(), "{what}");
            let ts = format!("pg_tblspc/{}/", info(major, "tablespace_oid"));
            assert_eq!(
                m.files()
                    .iter()
                    .filter(|f| f.path.as_bytes().starts_with(ts.as_bytes()))
                    .count(),
                3,
                "{what}"
            );
            assert!(m.files().iter().all(|f| {
                f.last_modified
                    .as_deref()
                    .is_some_and(|t| t.ends_with(" GMT"))
            }));
            let [range] = m.wal_ranges() else {
                panic!("{what}: {:?}", m.wal_ranges())
            };
            assert_eq!(range.timeline, TimelineId(1));
            assert!(
                range.start.is_valid() && range.start <= range.end,
                "{what}: {range:?}"
            );
            // The checksum covers everything through the newline before the last line.
            let last_line = raw[..raw.len() - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .unwrap()
                + 1;
            assert!(raw[last_line..].starts_with(b"\"Manifest-Checksum\": \""));
            assert_eq!(
                m.manifest_checksum().to_vec(),
                sha2::Sha256::digest(&raw[..last_line]).to_vec()
            );

            let wal: Vec<&ManifestFile> = m
                .files()
                .iter()
                .filter(|f| f.path.as_bytes().starts_with(b"pg_wal/"))
                .collect();
            if variant == "wal-fetch" {
                // Status files are listed, segments are not.
                assert!(!wal.is_empty());
                assert!(
                    wal.iter()
                        .all(|f| f.path.to_string().ends_with(".done") && f.size == 0)
                );
            } else {
                assert!(wal.is_empty(), "{what}");
            }
        }
    }

    #[test]
    fn force_encoded_paths_decode_to_the_plain_ones() {
        for major in [15, 18] {
            let raw = fixture(major, "force-encode");
            assert!(!raw.windows(8).any(|w| w == b"\"Path\": "));
            let encoded = Manifest::parse(&raw).unwrap();
            let plain = Manifest::parse(&fixture(major, "crc32c")).unwrap();
            for f in plain.files() {
                if f.path.as_bytes().starts_with(b"pg_tblspc/")
                    || f.path.to_string() == "global/pg_control"
                {
                    assert_eq!(
                        encoded.file(&f.path).map(|e| e.size),
                        Some(f.size),
                        "{}",
                        f.path
                    );
                }
            }
        }
    }

    #[test]
    fn one_corrupted_byte_fails_the_manifest_checksum() {
        let raw = fixture(15, "crc32c");
        // A digit of the first file checksum: still valid JSON, wrong content.
        let at = raw
            .windows(13)
            .position(|w| w == b"\"Checksum\": \"")
            .unwrap()
            + 13;
        let mut bad = raw.clone();
        bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
        assert!(matches!(
            Manifest::parse(&bad),
            Err(ManifestError::ChecksumMismatch { .. })
        ));
        // A letter of a path.
        let mut bad = raw.clone();
        let at = raw.windows(9).position(|w| w == b"PG_VERSIO").unwrap();
        bad[at] = b'Q';
        let err = Manifest::parse(&bad).unwrap_err();
        assert!(
            err.to_string().starts_with("manifest checksum mismatch"),
            "{err}"
        );
        // The checksum itself.
        let mut bad = raw.clone();
        let at = bad.len() - 5;
        bad[at] = if bad[at] == b'a' { b'b' } else { b'a' };
        assert!(matches!(
            Manifest::parse(&bad),
            Err(ManifestError::ChecksumMismatch { .. })
        ));
        // A byte that breaks the JSON is a parse error.
        let mut bad = raw.clone();
        bad[0] = b'[';
        assert!(matches!(
            Manifest::parse(&bad),
            Err(ManifestError::Parse(_))
        ));
    }

    #[test]
    fn parser_errors_like_pg_verifybackup() {
        let ok = manifest_text(&[file_line("a", b"x", ChecksumAlgorithm::Crc32c)]);
        let m = Manifest::parse(ok.as_bytes()).unwrap();
        assert_eq!(m.system_identifier(), Some(7711086575738853143));
        assert_eq!(
            m.wal_ranges(),
            [
                WalRange {
                    timeline: TimelineId(2),
                    start: Lsn(0x500_0000),
                    end: Lsn(0x500_0100)
                },
                WalRange {
                    timeline: TimelineId(1),
                    start: Lsn(0x400_0028),
                    end: Lsn(0x500_0000)
                },
            ]
        );

        let v = |version: &str, sysid: &str| {
            seal(&format!(
                "{{ \"PostgreSQL-Backup-Manifest-Version\": {version},\n{sysid}\"Files\": [],\n\"WAL-Ranges\": [],\n"
            ))
        };
        let parse = |text: &str| Manifest::parse(text.as_bytes());
        assert_eq!(parse(&v("1", "")).unwrap().version(), 1);
        assert!(matches!(
            parse(&v("3", "")),
            Err(ManifestError::UnsupportedVersion(3))
        ));
        assert!(matches!(
            parse(&v("\"1\"", "")),
            Err(ManifestError::Parse(_))
        ));
        assert!(matches!(
            parse(&v("2", "")),
            Err(ManifestError::MissingSystemIdentifier)
        ));
        assert!(matches!(
            parse(&v("2", "\"System-Identifier\": \"x\",\n")),
            Err(ManifestError::Parse(_))
        ));
        assert_eq!(
            parse(&seal(
                "{ \"Files\": [],\n\"PostgreSQL-Backup-Manifest-Version\": 1,\n"
            ))
            .unwrap_err(),
            ManifestError::Parse("expected version indicator".into())
        );
        assert!(matches!(
            parse(&v("1", "\"Extra\": 1,\n")),
            Err(ManifestError::Parse(msg)) if msg.contains("unknown field")
        ));

        let with_file = |line: &str| manifest_text(&[line.to_string()]);
        let cases: [(&str, ManifestError); 9] = [
            (
                r#"{ "Size": 1 }"#,
                ManifestError::BadFile(1, "missing path name"),
            ),
            (
                r#"{ "Path": "a", "Encoded-Path": "61", "Size": 1 }"#,
                ManifestError::BadFile(1, "both path name and encoded path name"),
            ),
            (
                r#"{ "Path": "a" }"#,
                ManifestError::BadFile(1, "missing size"),
            ),
            (
                r#"{ "Encoded-Path": "6", "Size": 1 }"#,
                ManifestError::BadEncodedPath("6".into()),
            ),
            (
                r#"{ "Encoded-Path": "zz", "Size": 1 }"#,
                ManifestError::BadEncodedPath("zz".into()),
            ),
            (
                r#"{ "Path": "a", "Size": 1, "Checksum": "00" }"#,
                ManifestError::BadFile(1, "checksum without algorithm"),
            ),
            (
                r#"{ "Path": "a", "Size": 1, "Checksum-Algorithm": "MD5", "Checksum": "00" }"#,
                ManifestError::UnknownAlgorithm {
                    path: "a".into(),
                    algorithm: "MD5".into(),
                },
            ),
            (
                r#"{ "Path": "a", "Size": 1, "Checksum-Algorithm": "CRC32C", "Checksum": "0011223" }"#,
                ManifestError::InvalidChecksum {
                    path: "a".into(),
                    checksum: "0011223".into(),
                },
            ),
            (
                r#"{ "Path": "a", "Size": 1, "Checksum-Algorithm": "SHA256", "Checksum": "00112233" }"#,
                ManifestError::InvalidChecksum {
                    path: "a".into(),
                    checksum: "00112233".into(),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(&with_file(line)).err(), Some(want), "{line}");
        }
        assert!(matches!(
            parse(&with_file(r#"{ "Path": "a", "Size": -1 }"#)),
            Err(ManifestError::Parse(_))
        ));
        assert_eq!(
            parse(&manifest_text(&[
                file_line("a", b"1", ChecksumAlgorithm::Crc32c),
                file_line("a", b"2", ChecksumAlgorithm::Crc32c)
            ]))
            .unwrap_err(),
            ManifestError::DuplicatePath("a".into())
        );

        let ranges = |range: &str| {
            seal(&format!(
                "{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [],\n\"WAL-Ranges\": [\n{range}\n],\n"
            ))
        };
        for (range, msg) in [
            (
                r#"{ "Start-LSN": "0/1", "End-LSN": "0/2" }"#,
                "missing timeline",
            ),
            (
                r#"{ "Timeline": 1, "End-LSN": "0/2" }"#,
                "missing start LSN",
            ),
            (
                r#"{ "Timeline": 1, "Start-LSN": "0/1" }"#,
                "missing end LSN",
            ),
            (
                r#"{ "Timeline": 1, "Start-LSN": "0-1", "End-LSN": "0/2" }"#,
                "could not parse start LSN",
            ),
            (
                r#"{ "Timeline": 1, "Start-LSN": "0/1", "End-LSN": "G/2" }"#,
                "could not parse end LSN",
            ),
        ] {
            assert!(
                matches!(parse(&ranges(range)), Err(ManifestError::BadWalRange(1, m)) if m.starts_with(msg)),
                "{range}"
            );
        }

        // Layout checks on the raw bytes.
        let one_line = ok.replace('\n', " ");
        assert_eq!(parse(&one_line).err(), Some(ManifestError::TooFewLines));
        assert_eq!(
            parse(ok.trim_end()).err(),
            Some(ManifestError::NoFinalNewline)
        );
        let bad_sum = ok.replace("\"Manifest-Checksum\": \"", "\"Manifest-Checksum\": \"zz");
        assert!(matches!(
            parse(&bad_sum),
            Err(ManifestError::InvalidManifestChecksum(_))
        ));
    }

    #[test]
    fn encoded_paths_may_be_any_bytes() {
        let text =
            manifest_text(&[r#"{ "Encoded-Path": "62617365ff2f78", "Size": 0 }"#.to_string()]);
        let m = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(m.files()[0].path.as_bytes(), b"base\xff/x");
        assert_eq!(m.files()[0].path.to_string(), "base\\xff/x");
        assert_eq!(m.checksum_algorithm(), Some(ChecksumAlgorithm::None));
    }

    fn summary(path: &str, data: &[u8], alg: ChecksumAlgorithm) -> FileSummary {
        FileSummary {
            path: path.into(),
            size: data.len() as u64,
            algorithm: alg,
            checksum: crate::backup::tar_stream::checksum(alg, data),
        }
    }

    /// A synthetic backup: base.tar and a tablespace archive, and a manifest that matches.
    fn synthetic(alg: ChecksumAlgorithm) -> (Manifest, Vec<u8>, Vec<u8>) {
        let base = archive(&[
            file("backup_label", b"START WAL LOCATION: 0/4000028\n"),
            file("tablespace_map", b"16384 /srv/ts1\n"),
            dir("base/"),
            dir("base/1/"),
            file("base/1/1259", &[3; 9000]),
            file("PG_VERSION", b"18\n"),
            file("postgresql.auto.conf", b"# edited by pg_basebackup -R\n"),
            file("standby.signal", b""),
            dir("pg_wal/"),
            file("pg_wal/000000010000000000000004", &[0; 4096]),
            dir("pg_wal/archive_status/"),
            file("pg_wal/archive_status/000000010000000000000004.done", b""),
            file(
                "pg_wal/00000002.history",
                b"1\t0/5000000\tno recovery target specified\n",
            ),
            file("global/pg_control", &[9; 8192]),
        ]);
        let ts = archive(&[
            dir("PG_18_202506291/"),
            dir("PG_18_202506291/5/"),
            file("PG_18_202506291/5/16385", &[5; 8192]),
        ]);
        let text = manifest_text(&[
            file_line("backup_label", b"START WAL LOCATION: 0/4000028\n", alg),
            file_line("tablespace_map", b"16384 /srv/ts1\n", alg),
            file_line("base/1/1259", &[3; 9000], alg),
            file_line("PG_VERSION", b"18\n", alg),
            file_line("postgresql.auto.conf", b"", alg),
            file_line(
                "pg_wal/archive_status/000000010000000000000004.done",
                b"",
                alg,
            ),
            file_line(
                "pg_wal/00000002.history",
                b"1\t0/5000000\tno recovery target specified\n",
                alg,
            ),
            file_line("pg_tblspc/16384/PG_18_202506291/5/16385", &[5; 8192], alg),
            file_line("global/pg_control", &[9; 8192], alg),
        ]);
        (Manifest::parse(text.as_bytes()).unwrap(), base, ts)
    }

    fn archive_files(base: &[u8], ts: &[u8], alg: ChecksumAlgorithm) -> Vec<FileSummary> {
        let mut files = parse_all(base, "", alg).unwrap().files;
        files.extend(parse_all(ts, "pg_tblspc/16384", alg).unwrap().files);
        files
    }

    #[test]
    fn matching_archives_have_no_mismatch() {
        for alg in [
            ChecksumAlgorithm::Crc32c,
            ChecksumAlgorithm::Sha256,
            ChecksumAlgorithm::None,
            ChecksumAlgorithm::Sha512,
        ] {
            let (m, base, ts) = synthetic(alg);
            // postgresql.auto.conf and standby.signal differ or are unlisted, the WAL segment
            // is unlisted: pg_verifybackup ignores all three.
            assert_eq!(compare(&m, archive_files(&base, &ts, alg)), vec![], "{alg}");
        }
    }

    #[test]
    fn each_kind_of_mismatch_is_reported() {
        let alg = ChecksumAlgorithm::Crc32c;
        let (m, base, ts) = synthetic(alg);
        let mut files = archive_files(&base, &ts, alg);
        // Same size, other content.
        let i = files
            .iter()
            .position(|f| f.path.to_string() == "base/1/1259")
            .unwrap();
        files[i] = summary("base/1/1259", &[4; 9000], alg);
        // Longer.
        let i = files
            .iter()
            .position(|f| f.path.to_string() == "PG_VERSION")
            .unwrap();
        files[i] = summary("PG_VERSION", b"18\n\n", alg);
        // Missing from the archives: the tablespace file.
        files.retain(|f| !f.path.as_bytes().starts_with(b"pg_tblspc/"));
        // Extra: not listed, not ignored (status files and history files are listed).
        files.push(summary("base/1/99999", b"", alg));
        files.push(summary(
            "pg_wal/archive_status/000000010000000000000005.done",
            b"",
            alg,
        ));
        files.push(summary("pg_wal/00000003.history", b"", alg));
        // Twice.
        files.push(summary("global/pg_control", &[9; 8192], alg));

        let got = compare(&m, files);
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                format!(
                    "checksum mismatch for file \"base/1/1259\": CRC32C {} in the archives, {} in the manifest",
                    hex(&crate::backup::tar_stream::checksum(alg, &[4; 9000])),
                    hex(&crate::backup::tar_stream::checksum(alg, &[3; 9000]))
                ),
                "\"PG_VERSION\" has size 4 in the archives but size 3 in the manifest".to_string(),
                "\"base/1/99999\" is present in the archives but not in the manifest".to_string(),
                "\"pg_wal/archive_status/000000010000000000000005.done\" is present in the archives but not in the manifest".to_string(),
                "\"pg_wal/00000003.history\" is present in the archives but not in the manifest".to_string(),
                "\"global/pg_control\" is present more than once in the archives".to_string(),
                "\"pg_tblspc/16384/PG_18_202506291/5/16385\" is present in the manifest but not in the archives".to_string(),
            ]
        );
        assert!(matches!(
            &got[0],
            Mismatch::ChecksumDiffers {
                algorithm: ChecksumAlgorithm::Crc32c,
                ..
            }
        ));
        assert!(matches!(
            &got[1],
            Mismatch::SizeDiffers {
                manifest: 3,
                archive: 4,
                ..
            }
        ));
    }

    #[test]
    fn a_wrong_algorithm_is_reported_not_silently_passed() {
        let (m, base, ts) = synthetic(ChecksumAlgorithm::Sha256);
        let got = compare(&m, archive_files(&base, &ts, ChecksumAlgorithm::Crc32c));
        assert_eq!(
            got.len(),
            m.files().len() - 1,
            "all but the exempt postgresql.auto.conf"
        );
        assert!(got.iter().all(|g| matches!(
            g,
            Mismatch::AlgorithmDiffers {
                manifest: ChecksumAlgorithm::Sha256,
                archive: ChecksumAlgorithm::Crc32c,
                ..
            }
        )));
        // A manifest without checksums compares sizes only.
        let (m, base, ts) = synthetic(ChecksumAlgorithm::None);
        assert_eq!(
            compare(&m, archive_files(&base, &ts, ChecksumAlgorithm::Sha384)),
            vec![]
        );
    }

    #[test]
    fn wal_segment_names_are_recognised() {
        assert!(is_wal_segment(b"pg_wal/000000010000000000000004"));
        assert!(is_wal_segment(b"pg_wal/00000001000000000000000A.partial"));
        assert!(!is_wal_segment(b"pg_wal/00000002.history"));
        assert!(!is_wal_segment(
            b"pg_wal/archive_status/000000010000000000000004.done"
        ));
        assert!(!is_wal_segment(b"000000010000000000000004"));
        assert!(!is_wal_segment(b"pg_wal/00000001000000000000000G"));
    }

    #[test]
    fn real_tablespace_archive_matches_its_manifest() {
        for major in [15, 18] {
            let m = Manifest::parse(&fixture(major, "crc32c")).unwrap();
            let oid = info(major, "tablespace_oid");
            let tar = std::fs::read(fixture_dir(major).join("crc32c-tablespace.tar")).unwrap();
            let files = parse_all(&tar, &format!("pg_tblspc/{oid}"), ChecksumAlgorithm::Crc32c)
                .unwrap()
                .files;
            assert_eq!(files.len(), 3);
            let got = compare(&m, files);
            // Only base.tar's files are missing (but the exempt postgresql.auto.conf):
            // everything from the tablespace matched.
            assert_eq!(got.len(), m.files().len() - 3 - 1);
            assert!(got.iter().all(|g| matches!(g,
                Mismatch::MissingFromArchives { path } if !path.as_bytes().starts_with(b"pg_tblspc/"))));

            // Read with the wrong prefix, nothing matches.
            let files = parse_all(&tar, "", ChecksumAlgorithm::Crc32c)
                .unwrap()
                .files;
            assert_eq!(
                compare(&m, files)
                    .iter()
                    .filter(|g| matches!(g, Mismatch::NotInManifest { .. }))
                    .count(),
                3
            );
        }
    }

    /// Feeds every archive of each pg_basebackup -Ft backup in `WALDEN_BACKUP_DIRS`
    /// (colon-separated directories of backups, as fixtures/manifests/make-manifests.sh leaves
    /// them) through TarStream in odd-sized chunks and compares it with its own manifest.
    #[test]
    #[ignore = "needs the backups fixtures/manifests/make-manifests.sh takes"]
    fn real_backups_end_to_end() {
        let dirs = std::env::var("WALDEN_BACKUP_DIRS").expect("WALDEN_BACKUP_DIRS");
        let mut checked = 0;
        for parent in dirs.split(':') {
            let mut backups: Vec<_> = std::fs::read_dir(parent)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            backups.sort();
            for backup in backups {
                let m = Manifest::parse(&std::fs::read(backup.join("backup_manifest")).unwrap())
                    .unwrap();
                let alg = m.checksum_algorithm().unwrap();
                let mut files = Vec::new();
                let mut base_tar = Vec::new();
                for entry in std::fs::read_dir(&backup).unwrap() {
                    let path = entry.unwrap().path();
                    let name = path.file_name().unwrap().to_str().unwrap().to_string();
                    let Some(stem) = name.strip_suffix(".tar") else {
                        continue;
                    };
                    let prefix = if stem == "base" {
                        String::new()
                    } else {
                        format!("pg_tblspc/{stem}")
                    };
                    let bytes = std::fs::read(&path).unwrap();
                    let mut t = TarStream::new(name.clone(), &prefix, alg);
                    for chunk in bytes.chunks(65_537) {
                        t.feed(chunk).unwrap();
                    }
                    files.extend(t.finish().unwrap().files);
                    if stem == "base" {
                        base_tar = bytes;
                    }
                }
                let mismatches = compare(&m, files.clone());
                println!(
                    "e2e {}: {} files, {} WAL range(s), {alg}: {} mismatches",
                    backup.display(),
                    files.len(),
                    m.wal_ranges().len(),
                    mismatches.len()
                );
                assert_eq!(mismatches, vec![], "{}", backup.display());

                // One flipped byte in the data of pg_control (last file before any WAL).
                if alg != ChecksumAlgorithm::None {
                    let at = base_tar
                        .windows(17)
                        .position(|w| w == b"global/pg_control")
                        .unwrap()
                        + BLOCK
                        + 100;
                    base_tar[at] ^= 0x40;
                    let mut summaries = parse_all(&base_tar, "", alg).unwrap().files;
                    summaries.extend(
                        files
                            .into_iter()
                            .filter(|f| f.path.as_bytes().starts_with(b"pg_tblspc/")),
                    );
                    let got = compare(&m, summaries);
                    assert!(
                        matches!(&got[..], [Mismatch::ChecksumDiffers { path, .. }] if path.to_string() == "global/pg_control"),
                        "{got:?}"
                    );
                }
                checked += 1;
            }
        }
        println!("e2e checked {checked} backups");
        assert!(checked > 0);
    }

    const BLOCK: usize = crate::backup::tar_stream::BLOCK_LEN;
}
