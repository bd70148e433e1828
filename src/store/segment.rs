//! Writing one WAL segment: `<name>.partial`, preallocated, written sequentially, fsynced on
//! request, and on completion renamed to its final name (and optionally compressed).
//!
//! # `.zst` format
//! A compressed segment is a sequence of independent zstd frames, one per
//! [`ZSTD_FRAME_INPUT`] (1 MiB) of the segment, 16 for 16 MiB, each declaring its content
//! size and carrying a checksum. The file is an ordinary `.zst` (`zstd -d` reads it); the
//! frames let a reader decompress parts of one segment in parallel ([`zstd_frames`]). On
//! pgbench WAL, 1 MiB frames made files 1% larger than one frame and wal-fetch's parallel
//! decompression faster than 2 or 4 MiB frames did (smaller buffers, better balance).
//! Older stores hold a single frame declaring the whole segment; every reader accepts both.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, IoSlice, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::durable;
use super::error::{Result, StoreError};
use super::layout::conflict_path;
use crate::wal::{Lsn, SegNo, TimelineId, WalFileName, WalSegSize};

/// How a completed segment is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// As PostgreSQL wrote it.
    #[default]
    None,
    /// `<name>.zst` at this level: zstd frames of [`ZSTD_FRAME_INPUT`] bytes each, with
    /// their content size and a checksum (see the module documentation).
    Zstd(i32),
}

impl std::str::FromStr for Compression {
    type Err = String;

    /// `none`, `zstd` (level 3) or `zstd:LEVEL` (1 to 19).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let invalid =
            || format!("invalid compression {s:?}: expected none, zstd or zstd:LEVEL (1-19)");
        match s.split_once(':') {
            None if s == "none" => Ok(Compression::None),
            None if s == "zstd" => Ok(Compression::Zstd(DEFAULT_ZSTD_LEVEL)),
            Some(("zstd", level)) => match level.parse::<i32>() {
                Ok(l) if (1..=19).contains(&l) => Ok(Compression::Zstd(l)),
                _ => Err(invalid()),
            },
            _ => Err(invalid()),
        }
    }
}

/// zstd's own default level: a good ratio on WAL at several hundred MB/s.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Buffer size for streaming copies and comparisons (bounded memory).
const CHUNK: usize = 128 * 1024;

/// The most pieces one `pwritev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Bytes of a segment compressed into one zstd frame of its `.zst` file.
pub const ZSTD_FRAME_INPUT: usize = 1024 * 1024;

/// One frame of a `.zst` file held in memory: its bytes in the file and where its content
/// goes in the segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZstdFrame {
    /// The frame's bytes: `file[start..end]`.
    pub start: usize,
    pub end: usize,
    /// Where its content starts in the decompressed segment.
    pub offset: u64,
    /// Its declared content size.
    pub len: u64,
}

/// The frames of the whole `.zst` file `file`, in order, each with its declared content size
/// and its offset in the decompressed data. None unless `file` is nothing but whole zstd
/// frames (skippable ones count as empty) that all declare their content size. Only frame
/// headers are read: the blocks are checked when decompressed.
pub fn zstd_frames(file: &[u8]) -> Option<Vec<ZstdFrame>> {
    let mut frames = Vec::new();
    let (mut start, mut offset) = (0usize, 0u64);
    while let Some(rest) = file.get(start..) {
        if rest.is_empty() {
            return Some(frames);
        }
        let size = zstd::zstd_safe::find_frame_compressed_size(rest).ok()?;
        let len = zstd::zstd_safe::get_frame_content_size(rest).ok()??;
        let end = start
            .checked_add(size)
            .filter(|&e| size > 0 && e <= file.len())?;
        frames.push(ZstdFrame {
            start,
            end,
            offset,
            len,
        });
        offset = offset.checked_add(len)?;
        start = end;
    }
    None
}

/// A `.partial` segment open for writing. Owned (no borrow of the cluster writer), so it can
/// be moved to a blocking thread; it keeps the cluster's lock alive while it exists.
#[derive(Debug)]
pub struct SegmentWriter {
    file: File,
    /// Set in write-through mode: the writes go there, each durable when it returns.
    direct: Option<DirectWriter>,
    /// `<dir>/<name>.partial`.
    partial: PathBuf,
    tli: TimelineId,
    segno: SegNo,
    size: WalSegSize,
    position: u32,
    synced: u32,
    _lock: Arc<File>,
}

impl SegmentWriter {
    /// Opens or creates `<dir>/<name>.partial`; `dir` must exist and be durable. With
    /// `write_through` (see [`ClusterWriter::set_write_through`](super::ClusterWriter::set_write_through))
    /// a new file is filled with zeros and every write is durable when it returns.
    pub(crate) fn open(
        dir: &Path,
        tli: TimelineId,
        segno: SegNo,
        size: WalSegSize,
        lock: Arc<File>,
        write_through: bool,
    ) -> Result<SegmentWriter> {
        let name = WalFileName {
            partial: true,
            ..WalFileName::segment(tli, segno)
        };
        let partial = dir.join(name.format(size));
        let existing = match fs::metadata(&partial) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io("look at", &partial, e)),
        };
        let file = match existing {
            Some(len) if len == size.bytes() => {
                // Left by an earlier run, maybe by a crash: make what it holds durable before
                // writing over it, as pg_receivewal does.
                let file = open_rw(&partial)?;
                durable::sync_file(&file, &partial)?;
                file
            }
            Some(len) if len != 0 => {
                return Err(StoreError::PartialWrongSize {
                    path: partial,
                    size: len,
                    expected: size.bytes(),
                });
            }
            // Absent, or empty (a crash before preallocation in an older layout): create it.
            _ => create_preallocated(&partial, size.bytes(), write_through)?,
        };
        let direct = if write_through {
            DirectWriter::open(&partial)?
        } else {
            None
        };
        Ok(SegmentWriter {
            file,
            direct,
            partial,
            tli,
            segno,
            size,
            position: 0,
            synced: 0,
            _lock: lock,
        })
    }

    pub fn tli(&self) -> TimelineId {
        self.tli
    }

    pub fn segno(&self) -> SegNo {
        self.segno
    }

    /// The offset in the segment the next write must start at.
    pub fn position(&self) -> u32 {
        self.position
    }

    /// The offset up to which the data is durable (after [`sync`](Self::sync)).
    pub fn synced_up_to(&self) -> u32 {
        self.synced
    }

    /// The LSN of [`synced_up_to`](Self::synced_up_to): what may be reported as flushed.
    pub fn synced_lsn(&self) -> Lsn {
        Lsn(self.segno.start_lsn(self.size).0 + u64::from(self.synced))
    }

    /// The `.partial` file being written.
    pub fn path(&self) -> &Path {
        &self.partial
    }

    /// Writes `pieces`, one after the other, at `offset`, which must be the current position;
    /// they must end within the segment (the caller splits writes at segment boundaries).
    /// Several pieces go to the kernel in one system call (`pwritev`).
    pub fn write<B: AsRef<[u8]>>(&mut self, offset: u32, pieces: &[B]) -> Result<()> {
        if offset != self.position {
            return Err(StoreError::OutOfOrder {
                path: self.partial.clone(),
                expected: self.position,
                got: offset,
            });
        }
        let len: usize = pieces.iter().map(|p| p.as_ref().len()).sum();
        let end = u64::from(offset) + len as u64;
        if end > self.size.bytes() {
            return Err(StoreError::PastSegmentEnd {
                path: self.partial.clone(),
                offset,
                len,
                size: self.size.bytes(),
            });
        }
        match self
            .direct
            .as_mut()
            .map(|d| d.write(u64::from(offset), pieces))
        {
            None => self.write_buffered(u64::from(offset), pieces)?,
            Some(Ok(())) => {}
            Some(Err(e)) if refused(&e) => {
                // The file system opened the file for direct I/O but refuses its writes: go
                // on through the page cache (fsynced on request). What direct writes stored
                // is durable already, and these pieces are written whole from `offset`.
                if !DIRECT_REFUSED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        path = %self.partial.display(),
                        "direct writes refused ({e}); writing through the page cache and fsyncing instead"
                    );
                }
                self.direct = None;
                self.write_buffered(u64::from(offset), pieces)?;
            }
            Some(Err(e)) => return Err(StoreError::io("write WAL to", &self.partial, e)),
        }
        // end <= segment size <= 1 GiB, so it fits.
        self.position = end as u32;
        Ok(())
    }

    /// All of `pieces` at `at` through the page cache, as few `pwritev` calls as it takes.
    fn write_buffered<B: AsRef<[u8]>>(&self, mut at: u64, pieces: &[B]) -> Result<()> {
        let mut slices: Vec<IoSlice<'_>> =
            pieces.iter().map(|p| IoSlice::new(p.as_ref())).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let batch = rest.len().min(IOV_MAX);
            match rustix::io::pwritev(&self.file, rest.get(..batch).unwrap_or_default(), at) {
                Ok(0) => {
                    return Err(StoreError::io(
                        "write WAL to",
                        &self.partial,
                        std::io::ErrorKind::WriteZero.into(),
                    ));
                }
                Ok(n) => {
                    at += n as u64;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(StoreError::io("write WAL to", &self.partial, e.into())),
            }
        }
        Ok(())
    }

    /// Makes everything written so far durable (`fdatasync`; nothing to do in write-through
    /// mode, where every write already is).
    pub fn sync(&mut self) -> Result<()> {
        if self.direct.is_none() {
            durable::sync_data(&self.file, &self.partial)?;
        }
        self.synced = self.position;
        Ok(())
    }

    /// Fsyncs and keeps the `.partial` (end of timeline, shutdown, error).
    pub fn close_partial(mut self) -> Result<()> {
        self.sync()
    }

    /// Completes the segment: requires the whole segment written; fsyncs, renames `.partial`
    /// to the final name, and with [`Compression::Zstd`] then replaces it by `<name>.zst`.
    /// Returns the final path.
    ///
    /// If the final name already exists with the same bytes, the `.partial` is removed. With
    /// different bytes, the existing file is left alone, ours is kept as
    /// `<name>.conflict.<n>`, and [`StoreError::Conflict`] is returned.
    ///
    /// A compression failure is logged and leaves the complete, durable plain segment: the
    /// WAL is safe either way.
    pub fn finish(mut self, compression: Compression) -> Result<PathBuf> {
        if u64::from(self.position) != self.size.bytes() {
            self.sync()?;
            return Err(StoreError::Incomplete {
                path: self.partial,
                position: self.position,
                size: self.size.bytes(),
            });
        }
        durable::sync_file(&self.file, &self.partial)?;
        let dir = self
            .partial
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let plain_name = WalFileName::segment(self.tli, self.segno);
        let plain = dir.join(plain_name.format(self.size));
        let zst = dir.join(
            WalFileName {
                compressed: true,
                ..plain_name
            }
            .format(self.size),
        );
        // The lock guarantees no other writer: check, then rename.
        for (existing, compressed) in [(&plain, false), (&zst, true)] {
            if existing.exists() {
                return if same_as_stored(&self.partial, existing, compressed)? {
                    tracing::info!(path = %existing.display(), "segment already stored with the same bytes");
                    durable::remove_file_durable(&self.partial)?;
                    Ok(existing.clone())
                } else {
                    let kept = conflict_path(existing);
                    durable::rename_synced(&self.partial, &kept)?;
                    Err(StoreError::Conflict {
                        existing: existing.clone(),
                        kept,
                    })
                };
            }
        }
        durable::rename_synced(&self.partial, &plain)?;
        drop(self.file);
        match compression {
            Compression::None => Ok(plain),
            Compression::Zstd(level) => match compress(&plain, &zst, level, self.size.bytes()) {
                Ok(()) => {
                    durable::remove_file_durable(&plain)?;
                    Ok(zst)
                }
                Err(e) => {
                    tracing::warn!(path = %plain.display(), "segment kept uncompressed: {e}");
                    let _ = fs::remove_file(durable::temp_path(&zst));
                    Ok(plain)
                }
            },
        }
    }
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io("open", path, e))
}

/// Creates `path` at its full size through `<path>.tmp`, so a `.partial` never exists with
/// any other size. `fallocate` reserves the blocks without writing them (ext4, xfs, btrfs and
/// tmpfs mark them unwritten: no zeros go to disk, unlike pg_receivewal's padding); where it
/// is not supported, `set_len` makes a sparse file. Either way the size never changes
/// afterwards, so `fdatasync` has no size to commit.
///
/// With `zero_fill` the reserved space is then written with zeros (see
/// [`ClusterWriter::set_write_through`](super::ClusterWriter::set_write_through)).
fn create_preallocated(path: &Path, len: u64, zero_fill: bool) -> Result<File> {
    let tmp = durable::temp_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StoreError::io("create", &tmp, e))?;
    let remove = |file: File, e: io::Error, op: &'static str| {
        // Disk full, most likely: do not leave a file holding part of the space.
        drop(file);
        let _ = fs::remove_file(&tmp);
        StoreError::io(op, &tmp, e)
    };
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => {}
        Err(e)
            if e == rustix::io::Errno::OPNOTSUPP
                || e == rustix::io::Errno::NOSYS
                || e == rustix::io::Errno::INVAL =>
        {
            file.set_len(len)
                .map_err(|e| StoreError::io("set the size of", &tmp, e))?;
        }
        Err(e) => return Err(remove(file, e.into(), "preallocate")),
    }
    if zero_fill && let Err(e) = fill_with_zeros(&file, &tmp, len) {
        return Err(remove(file, e, "fill with zeros"));
    }
    durable::sync_file(&file, &tmp)?;
    durable::rename_synced(&tmp, path)?;
    Ok(file)
}

/// Writes `len` zeros into `file` (at `path`): with direct I/O, [`ZERO_CHUNK_DIRECT`] at a
/// time, bypassing the page cache; where the file system has no direct I/O, through the
/// page cache one page at a time. The size matters there: the kernel caches a file in
/// pieces ("folios") as large as the writes that created them and writes a dirty piece back
/// whole, so zeros written 1 MiB at a time made each later small write and fsync write 1 MiB
/// (measured: 148 disk bytes per WAL byte in synchronous mode).
fn fill_with_zeros(file: &File, path: &Path, len: u64) -> io::Result<()> {
    if let Some(direct) = open_direct(path, false)? {
        let zeros = AlignedBuf::zeroed(ZERO_CHUNK_DIRECT);
        match write_zeros(&direct, zeros.as_slice(), len) {
            Err(e) if refused(&e) => {
                tracing::debug!(path = %path.display(), "direct I/O refused: {e}");
            }
            done => return done,
        }
    }
    write_zeros(file, &[0; 4096], len)
}

fn write_zeros(file: &File, zeros: &[u8], len: u64) -> io::Result<()> {
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(zeros.get(..n).unwrap_or_default(), at)?;
        at += n as u64;
    }
    Ok(())
}

/// Whether `e` is the file system refusing direct I/O (`EINVAL`: no `O_DIRECT` there, or an
/// alignment it will not take).
fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// Whether direct writes were refused once (warned about once per process).
static DIRECT_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Zeros written at once by one direct write when a segment is created.
const ZERO_CHUNK_DIRECT: usize = 1024 * 1024;

/// The most direct I/O needs aligned (offsets, lengths and memory): the largest logical
/// block size of common disks, and the page size.
const DIRECT_ALIGN: usize = 4096;

/// The most one direct write takes: a synchronous-mode read (1 MiB) is written with one call.
const DIRECT_BUF: usize = 1024 * 1024 + DIRECT_ALIGN;

/// Opens `path` for direct writes (`O_DIRECT`, and `O_DSYNC` with `dsync`); None where the
/// file system does not do direct I/O.
fn open_direct(path: &Path, dsync: bool) -> io::Result<Option<File>> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = if dsync {
        OFlags::DIRECT | OFlags::DSYNC
    } else {
        OFlags::DIRECT
    };
    match OpenOptions::new()
        .write(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(e) if refused(&e) => {
            tracing::debug!(path = %path.display(), "no direct I/O here: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The alignment direct writes to `file` need (`statx` knows it since Linux 6.1; 4096 where
/// it does not say, which suits every disk). Smaller is cheaper: each durable write rewrites
/// up to one such block already written.
fn direct_alignment(file: &File) -> usize {
    use rustix::fs::{AtFlags, StatxFlags, statx};
    match statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) {
        Ok(st) if st.stx_mask & StatxFlags::DIOALIGN.bits() != 0 => {
            let offset = st.stx_dio_offset_align as usize;
            let memory = st.stx_dio_mem_align as usize;
            if offset.is_power_of_two() && offset <= DIRECT_ALIGN && memory <= DIRECT_ALIGN {
                offset
            } else {
                DIRECT_ALIGN
            }
        }
        _ => DIRECT_ALIGN,
    }
}

/// A zeroed buffer whose start is aligned to [`DIRECT_ALIGN`], as direct I/O requires.
struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

/// Its length, not its megabyte of content.
impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

impl AlignedBuf {
    fn zeroed(len: usize) -> AlignedBuf {
        let bytes = vec![0; len + DIRECT_ALIGN];
        // An offset past DIRECT_ALIGN cannot happen for bytes; 0 then merely makes the
        // direct writes fail with EINVAL, which falls back to buffered writes.
        let start = match bytes.as_ptr().align_offset(DIRECT_ALIGN) {
            o if o < DIRECT_ALIGN => o,
            _ => 0,
        };
        AlignedBuf { bytes, start, len }
    }

    fn as_slice(&self) -> &[u8] {
        self.bytes
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.bytes
            .get_mut(self.start..self.start + self.len)
            .unwrap_or_default()
    }
}

/// The writes of a write-through segment: `O_DIRECT | O_DSYNC`, so each is on disk when it
/// returns, with no page cache and no separate fsync. In synchronous mode that is one system
/// call per commit instead of a write and an `fdatasync` (measured on this project's disk:
/// less than half the kernel time per commit, and a shorter wait for the committing client).
///
/// Direct I/O writes whole aligned blocks (the disk's logical block, 512 bytes on most, as
/// the kernel reports it, else 4096), so the block holding the end of the WAL written so far
/// is kept here and written again, with what follows, by the next write. Past the end of the
/// WAL a written block holds zeros, as the rest of the (zero-filled) segment does.
#[derive(Debug)]
struct DirectWriter {
    file: File,
    /// The alignment of offsets and lengths: a power of two, at most [`DIRECT_ALIGN`].
    align: usize,
    buf: AlignedBuf,
    /// The bytes of the block being filled that were written before: `buf[..tail]`. None
    /// after a failed write, when what the file holds there is no longer known.
    tail: Option<usize>,
}

impl DirectWriter {
    /// None where the file system does not do direct I/O: the segment is then written
    /// through the page cache and fsynced on request.
    fn open(path: &Path) -> Result<Option<DirectWriter>> {
        let file = open_direct(path, true).map_err(|e| StoreError::io("open", path, e))?;
        Ok(file.map(|file| DirectWriter {
            align: direct_alignment(&file),
            file,
            buf: AlignedBuf::zeroed(DIRECT_BUF),
            // A `.partial` is always written from its start.
            tail: Some(0),
        }))
    }

    /// Writes `pieces` at `at`, the end of what was written before (0 for the first write).
    fn write<B: AsRef<[u8]>>(&mut self, at: u64, pieces: &[B]) -> io::Result<()> {
        let tail = self
            .tail
            .take()
            .ok_or_else(|| io::Error::other("an earlier write to it failed"))?;
        let mut block_at = at - tail as u64;
        let mut fill = tail;
        let mut dirty = false;
        let buf = self.buf.as_mut_slice();
        let write = |bytes: &[u8], block_at: u64| self.file.write_all_at(bytes, block_at);
        for piece in pieces {
            let mut piece = piece.as_ref();
            while let Some(room) = buf.get_mut(fill..).filter(|_| !piece.is_empty()) {
                let n = room.len().min(piece.len());
                let (now, later) = piece.split_at(n);
                room.split_at_mut(n).0.copy_from_slice(now);
                fill += n;
                dirty = true;
                piece = later;
                if fill == buf.len() {
                    write(buf, block_at)?;
                    block_at += fill as u64;
                    fill = 0;
                    dirty = false;
                }
            }
        }
        let end = fill.next_multiple_of(self.align);
        if dirty && let Some(last) = buf.get_mut(..end) {
            last.get_mut(fill..).unwrap_or_default().fill(0);
            write(last, block_at)?;
        }
        let keep = fill % self.align;
        buf.copy_within(fill - keep..fill, 0);
        self.tail = Some(keep);
        Ok(())
    }
}

/// Compresses `src` into `dst` through `<dst>.tmp` (see [`write_frames`]), then fsyncs and
/// renames.
fn compress(src: &Path, dst: &Path, level: i32, content_size: u64) -> Result<()> {
    let tmp = durable::temp_path(dst);
    let mut input = File::open(src).map_err(|e| StoreError::io("open", src, e))?;
    let output = File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
    let err = |e| StoreError::io("compress into", &tmp, e);
    let mut out = BufWriter::with_capacity(CHUNK, output);
    let total = write_frames(&mut input, &mut out, level, ZSTD_FRAME_INPUT).map_err(err)?;
    if total != content_size {
        return Err(StoreError::Corrupt {
            path: src.to_path_buf(),
            reason: format!("held {total} bytes while compressing it, not {content_size}"),
        });
    }
    let output = out.into_inner().map_err(|e| err(e.into_error()))?;
    durable::sync_file(&output, &tmp)?;
    drop(output);
    durable::rename_synced(&tmp, dst)
}

/// Compresses all of `input` into `out` as independent zstd frames of `frame_input` bytes
/// of input each (the last may be shorter), each with its content size and a checksum.
/// Memory: one frame's input and output. Returns the input bytes.
pub(crate) fn write_frames(
    input: &mut impl Read,
    out: &mut impl Write,
    level: i32,
    frame_input: usize,
) -> io::Result<u64> {
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
    let mut chunk = vec![0u8; frame_input];
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(frame_input));
    let mut total: u64 = 0;
    loop {
        let n = read_full(input, &mut chunk)?;
        if n == 0 {
            return Ok(total);
        }
        frame.clear();
        compressor.compress_to_buffer(chunk.get(..n).unwrap_or_default(), &mut frame)?;
        out.write_all(&frame)?;
        total += n as u64;
    }
}

/// Whether the stored file (decompressed if `compressed`) holds exactly the bytes of `ours`.
fn same_as_stored(ours: &Path, stored: &Path, compressed: bool) -> Result<bool> {
    let a = File::open(ours).map_err(|e| StoreError::io("open", ours, e))?;
    let b = File::open(stored).map_err(|e| StoreError::io("open", stored, e))?;
    let mut a = BufReader::with_capacity(CHUNK, a);
    let same = if compressed {
        let mut b = zstd::stream::read::Decoder::new(b)
            .map_err(|e| StoreError::io("start decompressing", stored, e))?;
        same_bytes(&mut a, &mut b)
    } else {
        same_bytes(&mut a, &mut BufReader::with_capacity(CHUNK, b))
    };
    // A damaged compressed copy is "different": it must not be taken as ours.
    match same {
        Ok(same) => Ok(same),
        Err(e)
            if compressed
                && matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::InvalidData) =>
        {
            Ok(false)
        }
        Err(e) => Err(StoreError::io("compare with", stored, e)),
    }
}

/// Compares two streams chunk by chunk.
pub(crate) fn same_bytes(a: &mut impl Read, b: &mut impl Read) -> io::Result<bool> {
    let mut buf_a = vec![0u8; CHUNK];
    let mut buf_b = vec![0u8; CHUNK];
    loop {
        let n = read_full(a, &mut buf_a)?;
        let m = read_full(b, &mut buf_b)?;
        if buf_a.get(..n) != buf_b.get(..m) {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod write_through_tests {
    use super::*;

    #[test]
    fn refused_direct_writes_fall_back_to_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let lock = Arc::new(File::create(dir.path().join("lock")).unwrap());
        let size = WalSegSize::new(1024 * 1024).unwrap();
        let mut seg =
            SegmentWriter::open(dir.path(), TimelineId(1), SegNo(1), size, lock, true).unwrap();
        // Force writes a disk refuses: direct I/O to ext4 and most disks needs 512-byte
        // blocks (tmpfs takes anything, and then nothing falls back).
        if let Some(direct) = seg.direct.as_mut() {
            direct.align = 1;
        }
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        seg.write(0, &[&data[..100]]).unwrap();
        seg.write(100, &[&data[100..3000], &data[3000..]]).unwrap();
        seg.sync().unwrap();
        assert_eq!(seg.synced_up_to(), 5000);
        let stored = fs::read(seg.path()).unwrap();
        assert!(stored[..5000] == data[..], "the WAL written");
        assert!(stored[5000..].iter().all(|&b| b == 0), "zeros after it");
    }
}

#[cfg(test)]
mod compression_tests {
    use super::{Compression, ZstdFrame, write_frames, zstd_frames};

    #[test]
    fn compression_names() {
        assert_eq!("none".parse(), Ok(Compression::None));
        assert_eq!("zstd".parse(), Ok(Compression::Zstd(3)));
        assert_eq!("zstd:19".parse(), Ok(Compression::Zstd(19)));
        for bad in ["", "zstd:0", "zstd:20", "zstd:x", "gzip", "none:1"] {
            assert!(bad.parse::<Compression>().is_err(), "{bad}");
        }
    }

    /// Bytes that compress, but not to nothing.
    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i / 7) % 251) as u8 ^ (i % 3) as u8)
            .collect()
    }

    #[test]
    fn frames_are_independent_with_content_sizes_and_checksums() {
        let data = sample(10_000);
        let mut file = Vec::new();
        let total = write_frames(&mut &data[..], &mut file, 3, 4096).unwrap();
        assert_eq!(total, 10_000);
        let frames = zstd_frames(&file).unwrap();
        let offsets: Vec<(u64, u64)> = frames.iter().map(|f| (f.offset, f.len)).collect();
        assert_eq!(offsets, [(0, 4096), (4096, 4096), (8192, 1808)]);
        assert_eq!(frames.last().unwrap().end, file.len());
        // An ordinary .zst: a streaming decoder reads all frames in order.
        assert!(zstd::stream::decode_all(&file[..]).unwrap() == data);
        // Each frame decompresses alone to its part, its checksum checked.
        for ZstdFrame {
            start,
            end,
            offset,
            len,
        } in &frames
        {
            let part = zstd::bulk::decompress(&file[*start..*end], *len as usize).unwrap();
            assert!(part[..] == data[*offset as usize..(*offset + *len) as usize]);
        }
        let second = &frames[1];
        let mut damaged = file[second.start..second.end].to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1; // the checksum
        assert!(zstd::bulk::decompress(&damaged, 4096).is_err());
        // Nothing in, nothing out.
        let mut empty = Vec::new();
        assert_eq!(write_frames(&mut &[][..], &mut empty, 3, 4096).unwrap(), 0);
        assert_eq!(zstd_frames(&empty), Some(Vec::new()));
    }

    #[test]
    fn frame_tables_need_whole_frames_with_content_sizes() {
        let data = sample(10_000);
        let mut file = Vec::new();
        write_frames(&mut &data[..], &mut file, 3, 4096).unwrap();
        // A single frame (older stores) is a table of one.
        let one = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(zstd_frames(&one).unwrap().len(), 1);
        // Truncated: the last frame is not whole.
        assert_eq!(zstd_frames(&file[..file.len() - 1]), None);
        // Garbage after the frames.
        let mut trailing = file.clone();
        trailing.extend_from_slice(b"garbage");
        assert_eq!(zstd_frames(&trailing), None);
        // A frame streamed in pieces, without a content size.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        for piece in data.chunks(1000) {
            std::io::Write::write_all(&mut encoder, piece).unwrap();
        }
        let streamed = encoder.finish().unwrap();
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&streamed),
            Ok(None)
        ));
        assert_eq!(zstd_frames(&streamed), None);
        assert_eq!(zstd_frames(b"not zstd"), None);
    }
}
