//! The blocking side of a base backup: writes each archive into the backup directory
//! (compressing it, or keeping the server's compression), feeds the uncompressed bytes to a
//! [`TarStream`] that checksums every member, and at the end checks the manifest against what
//! the archives held. Bounded memory: archives pass through in the chunks they arrive in.

use std::fs::File;
use std::io::{BufWriter, Write};

use bytes::Bytes;

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

/// What the archives held, once all are written.
#[derive(Debug, Default)]
pub struct Written {
    pub archives: Vec<ArchiveRecord>,
    /// The main archive holds `standby.signal`: the backup was taken from a standby.
    pub from_standby: bool,
    pub manifest_files: usize,
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

struct OpenArchive {
    record: ArchiveRecord,
    output: Output,
    check: Check,
}

/// Receives a backup's archives and manifest in stream order.
pub struct Sink {
    writer: BackupWriter,
    stored: Stored,
    current: Option<OpenArchive>,
    files: Vec<FileSummary>,
    written: Written,
    manifest: Vec<u8>,
}

const FILE_BUFFER: usize = 256 * 1024;

impl Sink {
    pub fn new(writer: BackupWriter, stored: Stored) -> Sink {
        Sink {
            writer,
            stored,
            current: None,
            files: Vec::new(),
            written: Written::default(),
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
        let stored_name = match self.stored {
            Stored::Zstd(_) if !server_zstd => format!("{name}.zst"),
            _ => name.to_string(),
        };
        let file = self.writer.create_file(&stored_name)?;
        let buffered = BufWriter::with_capacity(FILE_BUFFER, ArchiveFile::new(file));
        let output = match self.stored {
            Stored::Zstd(level) if !server_zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(buffered, level)
                    .map_err(|source| write_error(&stored_name, source))?;
                encoder
                    .include_checksum(true)
                    .map_err(|source| write_error(&stored_name, source))?;
                Output::Zstd(encoder)
            }
            _ => Output::Plain(buffered),
        };
        let prefix = match tablespace_oid {
            Some(oid) => format!("pg_tblspc/{oid}"),
            None => String::new(),
        };
        let tar = TarFeed(TarStream::new(tar_name, &prefix, ChecksumAlgorithm::Crc32c));
        let check = if server_zstd {
            let decoder = zstd::stream::write::Decoder::new(tar)
                .map_err(|source| write_error(name, source))?;
            Check::Zstd(Box::new(decoder))
        } else {
            Check::Tar(Box::new(tar))
        };
        self.current = Some(OpenArchive {
            record: ArchiveRecord {
                name: stored_name,
                tablespace_oid,
                tablespace_location,
                bytes: 0,
                tar_bytes: 0,
            },
            output,
            check,
        });
        Ok(())
    }

    /// The next bytes of the current archive, as the server sent them.
    pub fn archive_data(&mut self, data: &Bytes) -> Result<(), SinkError> {
        let Some(archive) = self.current.as_mut() else {
            return Err(SinkError::Protocol(
                "archive data outside an archive".into(),
            ));
        };
        archive
            .output
            .write_all(data)
            .map_err(|source| write_error(&archive.record.name, source))?;
        archive.record.bytes += data.len() as u64;
        archive
            .check
            .feed(data)
            .map_err(|e| check_error(&archive.record.name, e))?;
        Ok(())
    }

    /// The current archive is complete: finish compression, check the tar's end.
    pub fn end_archive(&mut self) -> Result<(), SinkError> {
        let Some(archive) = self.current.take() else {
            return Err(SinkError::Protocol("archive end outside an archive".into()));
        };
        let name = archive.record.name.clone();
        let file = archive
            .output
            .finish()
            .map_err(|source| write_error(&name, source))?;
        let stored_bytes = file
            .metadata()
            .map(|m| m.len())
            .map_err(|source| write_error(&name, source))?;
        let tar = archive.check.finish().map_err(|e| check_error(&name, e))?;
        let contents = tar.finish()?;
        let mut record = archive.record;
        record.bytes = stored_bytes;
        record.tar_bytes = contents.bytes;
        if record.tablespace_oid.is_none()
            && contents
                .members
                .iter()
                .any(|m| m.path.as_bytes() == b"standby.signal" && m.kind == MemberKind::File)
        {
            self.written.from_standby = true;
        }
        self.files.extend(contents.files);
        self.written.archives.push(record);
        Ok(())
    }

    pub fn manifest_data(&mut self, data: &Bytes) {
        self.manifest.extend_from_slice(data);
    }

    /// Stores the manifest as sent and checks every archived file against it; then hands the
    /// backup writer back for the final commit. On failure the partial backup is removed.
    pub fn finish(mut self) -> Result<(BackupWriter, Written), SinkError> {
        match self.check_manifest() {
            Ok(()) => Ok((self.writer, self.written)),
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    fn check_manifest(&mut self) -> Result<(), SinkError> {
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
            .map_err(|source| write_error("backup_manifest", source))?;
        let manifest = Manifest::parse(&self.manifest)?;
        let mismatches: Vec<Mismatch> = compare(&manifest, std::mem::take(&mut self.files));
        if let Some(first) = mismatches.first() {
            return Err(SinkError::Mismatch {
                count: mismatches.len(),
                first: first.to_string(),
            });
        }
        self.written.manifest_files = manifest.files().len();
        Ok(())
    }

    /// Gives up: the partial backup directory is removed.
    pub fn abandon(self) {
        if let Err(e) = self.writer.abandon() {
            tracing::warn!("could not remove the failed backup's directory: {e}");
        }
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
