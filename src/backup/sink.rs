//! The blocking side of a base backup, in two halves that run on their own threads and see
//! the same bytes: an [`ArchiveWriter`] writes each archive into the backup directory
//! (compressing it, or keeping the server's compression) and the manifest beside them; an
//! [`ArchiveChecker`] feeds the uncompressed bytes to a [`TarStream`] that checksums every
//! member (decompressing the server's zstd first) and at the end checks the manifest against
//! what the archives held. Apart, neither waits for the other: compression and checking run
//! side by side, and writing the server's compressed bytes never waits for their
//! decompression. Bounded memory: archives pass through in the chunks they arrive in.

use std::fs::File;
use std::io::{BufWriter, Write};

use super::manifest::{Manifest, Mismatch, compare};
use super::tar_stream::{ChecksumAlgorithm, FileSummary, MemberKind, TarStream};
use crate::store::{BackupWriter, StoreError};

/// How archives are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// As the server sent them (plain tar, or compressed by the server).
    AsSent,
    /// Compressed by us with zstd at this level.
    Zstd(i32),
}

/// One archive as stored, for `backup.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ArchiveRecord {
    /// The file name in the backup directory.
    pub name: String,
    pub tablespace_oid: Option<u32>,
    pub tablespace_location: Option<String>,
    /// Bytes on disk.
    pub bytes: u64,
    /// Bytes of the tar itself (before any compression).
    pub tar_bytes: u64,
}

/// What the archives held, once all are written and checked.
#[derive(Debug, Default)]
pub struct Written {
    pub archives: Vec<ArchiveRecord>,
    /// The main archive holds `standby.signal`: the backup was taken from a standby.
    pub from_standby: bool,
    pub manifest_files: usize,
}

/// What the checker found, in archive order.
#[derive(Debug, Default)]
pub struct Checked {
    /// Each archive's tar size (uncompressed).
    pub tar_bytes: Vec<u64>,
    pub from_standby: bool,
    /// Files the manifest lists (0 without a manifest).
    pub manifest_files: usize,
}

impl Checked {
    /// Joins the writer's records and the checker's findings about the same archives.
    pub fn merge(self, mut archives: Vec<ArchiveRecord>) -> Result<Written, SinkError> {
        if archives.len() != self.tar_bytes.len() {
            return Err(SinkError::Protocol(format!(
                "{} archives written but {} checked",
                archives.len(),
                self.tar_bytes.len()
            )));
        }
        for (record, tar_bytes) in archives.iter_mut().zip(self.tar_bytes) {
            record.tar_bytes = tar_bytes;
        }
        Ok(Written {
            archives,
            from_standby: self.from_standby,
            manifest_files: self.manifest_files,
        })
    }
}

/// Why the archives cannot be trusted or stored.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot write {name}: {source}")]
    Write {
        name: String,
        source: std::io::Error,
    },
    #[error("archive {0}")]
    Tar(#[from] super::tar_stream::TarError),
    #[error("backup_manifest: {0}")]
    Manifest(#[from] super::manifest::ManifestError),
    #[error(
        "the archives do not match the backup manifest ({count} problem{s}): {first}",
        s = if *count == 1 { "" } else { "s" }
    )]
    Mismatch { count: usize, first: String },
    #[error("{0}")]
    Protocol(String),
}

/// An archive's name as the server sent it (`base.tar`, `16384.tar`, either `+ .zst`).
struct ArchiveName<'a> {
    /// Compressed by the server.
    server_zstd: bool,
    /// The tar's own name (without `.zst`).
    tar_name: &'a str,
    tablespace_oid: Option<u32>,
}

impl ArchiveName<'_> {
    fn parse(name: &str) -> Result<ArchiveName<'_>, SinkError> {
        let server_zstd = name.ends_with(".tar.zst");
        let tar_name = name.strip_suffix(".zst").unwrap_or(name);
        let Some(stem) = tar_name.strip_suffix(".tar") else {
            return Err(SinkError::Protocol(format!(
                "unexpected archive {name}: walden stores tar archives, plain or zstd"
            )));
        };
        let tablespace_oid = match stem {
            "base" => None,
            oid => Some(
                oid.parse::<u32>()
                    .map_err(|_| SinkError::Protocol(format!("unexpected archive name {name}")))?,
            ),
        };
        Ok(ArchiveName {
            server_zstd,
            tar_name,
            tablespace_oid,
        })
    }
}

/// Where decompressed archive bytes go: the tar checker.
struct TarFeed(TarStream);

impl Write for TarFeed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .feed(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An archive file that asks the kernel to start writing back every [`WRITEBACK_STEP`] bytes
/// it has been given, so that the fsync at the end of the backup finds little left to write
/// (it would otherwise be on the backup's critical path), and the pages already written back
/// leave the page cache instead of evicting the server's.
struct ArchiveFile {
    file: File,
    written: u64,
    /// Where the last hint began.
    hinted: u64,
}

/// Bytes between two write-back hints.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

impl ArchiveFile {
    fn new(file: File) -> ArchiveFile {
        ArchiveFile {
            file,
            written: 0,
            hinted: 0,
        }
    }
}

impl Write for ArchiveFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.hinted >= 2 * WRITEBACK_STEP {
            // POSIX_FADV_DONTNEED starts the write-back of dirty pages in the range and drops
            // the clean ones: the previous step (written back by now) and this one. A hint
            // only: if it fails, the final fsync does the work.
            let len = std::num::NonZeroU64::new(self.written - self.hinted);
            let _ = rustix::fs::fadvise(&self.file, self.hinted, len, rustix::fs::Advice::DontNeed);
            self.hinted = self.written - WRITEBACK_STEP;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The file an archive is written to, possibly through our compressor.
enum Output {
    Plain(BufWriter<ArchiveFile>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<ArchiveFile>>),
}

impl Output {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Plain(w) => w.write_all(data),
            Output::Zstd(w) => w.write_all(data),
        }
    }

    fn finish(self) -> std::io::Result<File> {
        let writer = match self {
            Output::Plain(w) => w,
            Output::Zstd(w) => w.finish()?,
        };
        Ok(writer.into_inner().map_err(|e| e.into_error())?.file)
    }
}

/// The checker of an archive: fed directly, or through a zstd decoder when the server
/// compressed the archive.
enum Check {
    Tar(Box<TarFeed>),
    Zstd(Box<zstd::stream::write::Decoder<'static, TarFeed>>),
}

impl Check {
    fn feed(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Check::Tar(t) => t.write_all(data),
            Check::Zstd(d) => d.write_all(data),
        }
    }

    fn finish(self) -> std::io::Result<TarStream> {
        match self {
            Check::Tar(t) => Ok(t.0),
            Check::Zstd(mut d) => {
                d.flush()?;
                Ok(d.into_inner().0)
            }
        }
    }
}

/// Writes a backup's archives and manifest into the backup directory, in stream order.
pub struct ArchiveWriter {
    writer: BackupWriter,
    stored: Stored,
    current: Option<(ArchiveRecord, Output)>,
    archives: Vec<ArchiveRecord>,
    manifest: Vec<u8>,
}

const FILE_BUFFER: usize = 256 * 1024;

impl ArchiveWriter {
    pub fn new(writer: BackupWriter, stored: Stored) -> ArchiveWriter {
        ArchiveWriter {
            writer,
            stored,
            current: None,
            archives: Vec::new(),
            manifest: Vec::new(),
        }
    }

    /// A new archive, `name` as the server named it (`base.tar`, `16384.tar`, `+.zst`).
    pub fn begin_archive(
        &mut self,
        name: &str,
        tablespace_location: Option<String>,
    ) -> Result<(), SinkError> {
        if self.current.is_some() {
            return Err(SinkError::Protocol(format!(
                "archive {name} began before the previous one ended"
            )));
        }
        let parsed = ArchiveName::parse(name)?;
        let stored_name = match self.stored {
            Stored::Zstd(_) if !parsed.server_zstd => format!("{name}.zst"),
            _ => name.to_string(),
        };
        let file = self.writer.create_file(&stored_name)?;
        let buffered = BufWriter::with_capacity(FILE_BUFFER, ArchiveFile::new(file));
        let output = match self.stored {
            Stored::Zstd(level) if !parsed.server_zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(buffered, level)
                    .map_err(|source| write_error(&stored_name, source))?;
                encoder
                    .include_checksum(true)
                    .map_err(|source| write_error(&stored_name, source))?;
                Output::Zstd(encoder)
            }
            _ => Output::Plain(buffered),
        };
        let record = ArchiveRecord {
            name: stored_name,
            tablespace_oid: parsed.tablespace_oid,
            tablespace_location,
            bytes: 0,
            tar_bytes: 0,
        };
        self.current = Some((record, output));
        Ok(())
    }

    /// The next bytes of the current archive, as the server sent them.
    pub fn archive_data(&mut self, data: &[u8]) -> Result<(), SinkError> {
        let Some((record, output)) = self.current.as_mut() else {
            return Err(SinkError::Protocol(
                "archive data outside an archive".into(),
            ));
        };
        output
            .write_all(data)
            .map_err(|source| write_error(&record.name, source))
    }

    /// The current archive is complete: finish compression and the file.
    pub fn end_archive(&mut self) -> Result<(), SinkError> {
        let Some((mut record, output)) = self.current.take() else {
            return Err(SinkError::Protocol("archive end outside an archive".into()));
        };
        let file = output
            .finish()
            .map_err(|source| write_error(&record.name, source))?;
        record.bytes = file
            .metadata()
            .map(|m| m.len())
            .map_err(|source| write_error(&record.name, source))?;
        self.archives.push(record);
        Ok(())
    }

    pub fn manifest_data(&mut self, data: &[u8]) {
        self.manifest.extend_from_slice(data);
    }

    /// Stores the manifest as sent; hands the backup writer back for the final commit, with
    /// the archives written (their `tar_bytes` are the checker's to fill in). On failure the
    /// partial backup is removed.
    pub fn finish(self) -> Result<(BackupWriter, Vec<ArchiveRecord>), SinkError> {
        match self.write_manifest() {
            Ok(()) => Ok((self.writer, self.archives)),
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    fn write_manifest(&self) -> Result<(), SinkError> {
        if self.current.is_some() {
            return Err(SinkError::Protocol(
                "the backup ended inside an archive".into(),
            ));
        }
        if self.manifest.is_empty() {
            return Ok(());
        }
        let mut file = self.writer.create_file("backup_manifest")?;
        file.write_all(&self.manifest)
            .map_err(|source| write_error("backup_manifest", source))
    }

    /// Gives up: the partial backup directory is removed.
    pub fn abandon(self) {
        if let Err(e) = self.writer.abandon() {
            tracing::warn!("could not remove the failed backup's directory: {e}");
        }
    }
}

/// Checks a backup's archives member by member and, at the end, against its manifest.
#[derive(Default)]
pub struct ArchiveChecker {
    /// The current archive's name and checker.
    current: Option<(String, Check)>,
    files: Vec<FileSummary>,
    checked: Checked,
    manifest: Vec<u8>,
}

impl ArchiveChecker {
    pub fn new() -> ArchiveChecker {
        ArchiveChecker::default()
    }

    /// A new archive, `name` as the server named it.
    pub fn begin_archive(&mut self, name: &str) -> Result<(), SinkError> {
        if self.current.is_some() {
            return Err(SinkError::Protocol(format!(
                "archive {name} began before the previous one ended"
            )));
        }
        let parsed = ArchiveName::parse(name)?;
        let prefix = match parsed.tablespace_oid {
            Some(oid) => format!("pg_tblspc/{oid}"),
            None => String::new(),
        };
        let tar = TarFeed(TarStream::new(
            parsed.tar_name,
            &prefix,
            ChecksumAlgorithm::Crc32c,
        ));
        let check = if parsed.server_zstd {
            let decoder =
                zstd::stream::write::Decoder::new(tar).map_err(|e| check_error(name, e))?;
            Check::Zstd(Box::new(decoder))
        } else {
            Check::Tar(Box::new(tar))
        };
        self.current = Some((name.to_string(), check));
        Ok(())
    }

    /// The next bytes of the current archive, as the server sent them.
    pub fn archive_data(&mut self, data: &[u8]) -> Result<(), SinkError> {
        let Some((name, check)) = self.current.as_mut() else {
            return Err(SinkError::Protocol(
                "archive data outside an archive".into(),
            ));
        };
        check.feed(data).map_err(|e| check_error(name, e))
    }

    /// The current archive is complete: check the tar's end.
    pub fn end_archive(&mut self) -> Result<(), SinkError> {
        let Some((name, check)) = self.current.take() else {
            return Err(SinkError::Protocol("archive end outside an archive".into()));
        };
        let main = ArchiveName::parse(&name)?.tablespace_oid.is_none();
        let tar = check.finish().map_err(|e| check_error(&name, e))?;
        let contents = tar.finish()?;
        if main
            && contents
                .members
                .iter()
                .any(|m| m.path.as_bytes() == b"standby.signal" && m.kind == MemberKind::File)
        {
            self.checked.from_standby = true;
        }
        self.checked.tar_bytes.push(contents.bytes);
        self.files.extend(contents.files);
        Ok(())
    }

    pub fn manifest_data(&mut self, data: &[u8]) {
        self.manifest.extend_from_slice(data);
    }

    /// Checks every archived file against the manifest (when the server sent one).
    pub fn finish(mut self) -> Result<Checked, SinkError> {
        if self.current.is_some() {
            return Err(SinkError::Protocol(
                "the backup ended inside an archive".into(),
            ));
        }
        if self.manifest.is_empty() {
            return Ok(self.checked);
        }
        let manifest = Manifest::parse(&self.manifest)?;
        let mismatches: Vec<Mismatch> = compare(&manifest, std::mem::take(&mut self.files));
        if let Some(first) = mismatches.first() {
            return Err(SinkError::Mismatch {
                count: mismatches.len(),
                first: first.to_string(),
            });
        }
        self.checked.manifest_files = manifest.files().len();
        Ok(self.checked)
    }
}

fn write_error(name: &str, source: std::io::Error) -> SinkError {
    SinkError::Write {
        name: name.to_string(),
        source,
    }
}

/// A failure while checking: a tar error wrapped in I/O by the decoder, or a decompression
/// failure.
fn check_error(name: &str, e: std::io::Error) -> SinkError {
    if let Some(tar) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<super::tar_stream::TarError>())
    {
        return SinkError::Tar(tar.clone());
    }
    SinkError::Protocol(format!("archive {name} cannot be read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::tests::{file_line, manifest_text};
    use crate::backup::tar_stream::tests::{archive, dir, file};

    const PG_VERSION: &[u8] = b"15\n";
    const RELATION: &[u8] = &[7u8; 20_000];

    fn sample_tar(extra: &[(&str, &[u8])]) -> Vec<u8> {
        let mut entries = vec![
            file("PG_VERSION", PG_VERSION),
            dir("base"),
            file("base/1", RELATION),
        ];
        entries.extend(extra.iter().map(|(name, data)| file(name, data)));
        archive(&entries)
    }

    fn sample_manifest(relation: &[u8]) -> Vec<u8> {
        manifest_text(&[
            file_line("PG_VERSION", PG_VERSION, ChecksumAlgorithm::Crc32c),
            file_line("base/1", relation, ChecksumAlgorithm::Crc32c),
        ])
        .into_bytes()
    }

    /// Feeds one archive named `name` in `piece`-byte chunks, then `manifest`.
    fn check(
        name: &str,
        bytes: &[u8],
        piece: usize,
        manifest: &[u8],
    ) -> Result<Checked, SinkError> {
        let mut checker = ArchiveChecker::new();
        checker.begin_archive(name)?;
        for chunk in bytes.chunks(piece) {
            checker.archive_data(chunk)?;
        }
        checker.end_archive()?;
        checker.manifest_data(manifest);
        checker.finish()
    }

    #[test]
    fn checker_accepts_archives_that_match_the_manifest_plain_or_server_compressed() {
        let tar = sample_tar(&[]);
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for (name, bytes) in [("base.tar", &tar), ("base.tar.zst", &zst)] {
            for piece in [1, 511, 65536] {
                let checked = check(name, bytes, piece, &sample_manifest(RELATION))
                    .unwrap_or_else(|e| panic!("{name} in {piece}-byte pieces: {e}"));
                assert_eq!(checked.tar_bytes, vec![tar.len() as u64], "{name}");
                assert_eq!(checked.manifest_files, 2);
                assert!(!checked.from_standby);
            }
        }
    }

    #[test]
    fn checker_finds_a_file_that_differs_from_the_manifest() {
        let tar = sample_tar(&[]);
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let other = [8u8; 20_000];
        for (name, bytes) in [("base.tar", &tar), ("base.tar.zst", &zst)] {
            match check(name, bytes, 4096, &sample_manifest(&other)) {
                Err(SinkError::Mismatch { count: 1, first }) => {
                    assert!(first.contains("base/1"), "{first}")
                }
                other => panic!("{name}: expected one mismatch, got {other:?}"),
            }
        }
    }

    #[test]
    fn checker_sees_a_standby_and_refuses_broken_streams() {
        let tar = sample_tar(&[("standby.signal", b"")]);
        let manifest = manifest_text(&[
            file_line("PG_VERSION", PG_VERSION, ChecksumAlgorithm::Crc32c),
            file_line("base/1", RELATION, ChecksumAlgorithm::Crc32c),
            file_line("standby.signal", b"", ChecksumAlgorithm::Crc32c),
        ]);
        let checked = check("base.tar", &tar, 1000, manifest.as_bytes()).unwrap();
        assert!(checked.from_standby);

        // Cut short, not a tar, not zstd, data outside an archive.
        let cut = &tar[..tar.len() - 2048];
        assert!(check("base.tar", cut, 1000, manifest.as_bytes()).is_err());
        assert!(check("base.zip", &tar, 1000, b"").is_err());
        assert!(matches!(
            check("base.tar.zst", &tar, 1000, b""),
            Err(SinkError::Protocol(_))
        ));
        let mut checker = ArchiveChecker::new();
        assert!(checker.archive_data(b"x").is_err());
    }

    #[test]
    fn checked_archives_merge_with_the_written_ones_in_order() {
        let record = |name: &str| ArchiveRecord {
            name: name.to_string(),
            tablespace_oid: None,
            tablespace_location: None,
            bytes: 10,
            tar_bytes: 0,
        };
        let checked = Checked {
            tar_bytes: vec![100, 200],
            from_standby: true,
            manifest_files: 3,
        };
        let written = checked
            .merge(vec![record("base.tar"), record("16384.tar")])
            .unwrap();
        assert_eq!(written.archives[0].tar_bytes, 100);
        assert_eq!(written.archives[1].tar_bytes, 200);
        assert!(written.from_standby);
        assert_eq!(written.manifest_files, 3);
        let one_short = Checked {
            tar_bytes: vec![100],
            ..Checked::default()
        };
        assert!(one_short.merge(vec![record("a"), record("b")]).is_err());
    }

    #[test]
    fn archive_file_keeps_every_byte_across_write_back_hints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let mut out = ArchiveFile::new(File::create(&path).unwrap());
        // Odd-sized pieces past several hint points.
        let piece: Vec<u8> = (0..=250u8).cycle().take(1_000_003).collect();
        let pieces = (3 * WRITEBACK_STEP as usize) / piece.len() + 2;
        for _ in 0..pieces {
            out.write_all(&piece).unwrap();
        }
        out.flush().unwrap();
        assert_eq!(out.written, (pieces * piece.len()) as u64);
        assert!(out.hinted > 0, "no hint was given");
        drop(out);
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), pieces * piece.len());
        assert!(back.chunks(piece.len()).all(|c| c == piece.as_slice()));
    }
}
