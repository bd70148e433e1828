//! `wal-fetch`, PostgreSQL's `restore_command`: delivers one WAL segment or timeline history
//! file from the store to the path the server names, and optionally prefetches the following
//! segments into a spool directory.
//!
//! # Contract (what the server relies on)
//! - A request is a segment name (`000000010000000000000003`) or `NNNNNNNN.history`; anything
//!   else (`.partial`, `.backup`, garbage) is "not found".
//! - Lookup is by name ([`WalArchive::find_segment`], [`WalArchive::read_history`]): the store
//!   is never listed, and `cluster.json` is read once.
//! - A segment is always delivered as exactly `wal_segment_size` bytes, decompressed while
//!   copying. When the store holds only a `.partial` for the name (the newest segment of a
//!   timeline, or the last one of an ended timeline), its valid WAL is delivered up to the end
//!   of its last good record and zeros after, whatever the file held there. A `.partial`
//!   without any WAL (a zero first page) is "not found".
//! - Before delivering, the first page header must match: page magic of the cluster's major
//!   version, system identifier, segment size, page address and a timeline not after the
//!   file's. A complete segment of the wrong length is a fault.
//! - DEST is written as `<DEST>.walden-<pid>.tmp` in DEST's directory and renamed over DEST,
//!   so the server never sees a short file.
//!
//! # Exit codes (the binary maps [`fetch`](WalFetcher::fetch)'s result onto them)
//! - `0`: delivered.
//! - `1` ([`NOT_FOUND`](crate::exit::NOT_FOUND)): the store does not have it. Nothing is printed on stdout or
//!   stderr: the server probes many absent names.
//! - `255` ([`FETCH_FAULT`](crate::exit::FETCH_FAULT)): a fault that must stop recovery — a corrupt, short or
//!   unreadable stored file, a missing or unreadable store or `cluster.json`, another
//!   cluster's WAL, a decompression error, a full disk under DEST. One line on stderr. The
//!   server treats any exit above 125 as fatal; an exit of 1..125 would make it end recovery
//!   early and promote, silently losing the WAL it did not get. No other code is used.
//!
//! # Durability of DEST: none, on purpose
//! DEST is neither fsynced nor is its directory. The server never relies on it surviving a
//! crash: it deletes DEST before every call and, after a crash, recovery starts again from the
//! last restartpoint and fetches again. Where the server keeps a restored file (standby mode,
//! `KeepFileRestoredFromArchive`) it makes it durable itself (`durable_rename`). Measured on
//! ext4 here (medians of 60 interleaved runs, 16 MiB segment): `cp` 15.3 ms, `wal-fetch` of a
//! plain segment 15.0 ms, of a `.zst` one 28.8 ms; an fsync of the delivered file would add
//! 27.8 ms and one of `pg_wal/` 2-4 ms per call, for nothing. A miss costs 1.1 ms (`cp` of
//! an absent file 1.5 ms).
//!
//! A complete, uncompressed segment is copied by the kernel (`copy_file_range` or
//! `sendfile`) after its size is checked, and its first page header checked after the copy
//! (nothing is read before it: a small first read makes the kernel's readahead start small).
//! A complete local `.zst` is read whole (one read) and, when it holds several frames (as
//! the receiver writes it, see `store::zstd_frames`), its frames are
//! decompressed on up to `available_parallelism` threads, each written at its offset in
//! DEST's temporary file: the server waits for this call with its replay stopped, so the
//! other cores are free. A one-frame `.zst` (older stores), a `.partial` and anything from a
//! walden server stream through a 256 KiB buffer. The same code fills the prefetch spool.
//!
//! No read-ahead hint is given for the next segment: on this kernel `posix_fadvise(WILLNEED)`
//! reads synchronously (up to `read_ahead_kb`) before it returns, so the hint costs the call
//! about what it would save the next one (measured: it made cold calls slower).
//!
//! # From a walden server
//! With `--from http(s)://...` ([`WalFetcher::open_source`]) the same rules hold over the
//! store API: `cluster.json` is one request, a lookup is a `HEAD` and the copy a `GET` on the
//! same connection. The server sends the file as stored (`.zst`, `.partial` or plain) and
//! the checks, decompression and zero-filling happen here, as for a local store. A 404 is
//! "not found"; a 401, a TLS or network error or a 5xx (after two quick retries) is a fault.
//!
//! # Prefetch spool
//! With `--prefetch N` a detached child ([`WalFetcher::fill_spool`]) copies the next N
//! segments of the same timeline into a spool directory outside PGDATA, and the next call
//! takes its file from there. Rules:
//! - Files are spooled by their full name (which includes the timeline), written as
//!   `<name>.<pid>.tmp` and renamed, so only whole, checked files are ever found.
//! - A spooled file is checked again (size, first page header) when taken, and moved into
//!   place with one rename (or copied, across filesystems); two callers cannot both take it.
//! - A `.partial` is never spooled: it may still grow in the store.
//! - Workers claim a name with a `flock` on `<name>.lock`; a claimed name is skipped. A
//!   temporary file whose name is not claimed was left by a killed worker and is removed.
//! - Each worker first removes files it will not need: other timelines, segments at or
//!   before the one just delivered, and any more than 2N ahead. So the spool stays bounded.
//! - The default spool is `$TMPDIR/walden-spool-<cluster>-<uid>-<hash>`, the hash naming the
//!   store and system, so two stores with the same cluster name never share one. It must be a
//!   directory owned by the caller and closed to others (0700); otherwise it is not used.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use super::Source;
use super::remote::{RemoteCluster, RemoteStore};
use crate::store::{
    ClusterName, ClusterReader, StoreError, StoredSegment, WalArchive, ZstdFrame, durable,
    zstd_frames,
};
use crate::wal::{
    LONG_HEADER_LEN, Lsn, PageError, PageExpectations, PageHeader, PageMagic, Problem, SegNo,
    TimelineHistory, TimelineId, VerifierConfig, WalFileName, WalVerifier, history_file_name,
    maxalign, parse_history_file_name,
};

/// Bytes per read and write while copying.
const CHUNK: usize = 256 * 1024;

/// What the server asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalRequest {
    /// A WAL segment, by its plain name.
    Segment { tli: TimelineId, segno: SegNo },
    /// A timeline history file.
    History(TimelineId),
}

/// How a request was satisfied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// A complete segment from the store; `compressed` if it was stored as `.zst`.
    Segment { compressed: bool },
    /// Only a `.partial` was stored: its WAL up to `valid_end`, zeros after.
    Partial { valid_end: Lsn },
    /// A segment taken from the prefetch spool.
    Spooled,
    /// A timeline history file.
    History,
}

/// A fault that must stop recovery (exit 255). "Not found" is not an error.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "cannot read {}: {source}: the stored file is damaged or unreadable; repair it or restore the store from a copy", path.display()
    )]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot copy {} to {}: {source}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("disk full: cannot write {}: free space there and restart the server", path.display())]
    DiskFull { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{} holds {size} bytes of WAL, not the segment size {expected}: the stored segment is damaged; restore it from a copy or move it aside", path.display()
    )]
    WrongSize {
        path: PathBuf,
        size: u64,
        expected: u64,
    },
    #[error(
        "{} is not a valid copy of segment {name}: {problem}; the store holds a wrong or damaged file", path.display()
    )]
    BadHeader {
        path: PathBuf,
        name: String,
        problem: PageError,
    },
    #[error(
        "{} is not a valid timeline history file: {reason}; restore it from a copy", path.display()
    )]
    BadHistory { path: PathBuf, reason: String },
    #[error("spool directory {}: {reason}", path.display())]
    Spool { path: PathBuf, reason: String },
}

impl FetchError {
    fn write(path: &Path, source: io::Error) -> FetchError {
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => FetchError::DiskFull {
                path: path.to_path_buf(),
            },
            _ => FetchError::Write {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    fn read(path: &Path, source: io::Error) -> FetchError {
        FetchError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where a [`WalFetcher`] reads: a local store, or one served over HTTP(S).
#[derive(Debug)]
enum Archive {
    Local(ClusterReader),
    Remote(RemoteCluster),
}

/// One cluster of a store, opened to serve `restore_command` calls.
#[derive(Debug)]
pub struct WalFetcher {
    archive: Archive,
    /// The store directory, or the server's URL (for messages and the spool's name).
    store: PathBuf,
    /// The page magic of the cluster's major version; None if this walden does not know it
    /// (the first page's own magic is then accepted).
    magic: Option<PageMagic>,
}

/// One `restore_command` call: `file` (what the server asks for) to `dest`; with `prefetch` > 0
/// the following segments are then spooled by a detached worker (`spool`, or the default).
pub struct Call<'a> {
    pub source: &'a Source,
    pub cluster: &'a ClusterName,
    pub file: &'a str,
    pub dest: &'a Path,
    pub prefetch: u32,
    pub spool: Option<&'a Path>,
}

/// What a call did: whether the file was delivered (false: the store does not have it), and
/// lines for standard error that do not change that (why prefetching is off).
#[derive(Debug)]
pub struct Answer {
    pub delivered: bool,
    pub notes: Vec<String>,
}

/// Answers one `restore_command` call (see the module documentation for the contract).
pub fn answer(call: &Call<'_>) -> Result<Answer, FetchError> {
    let fetcher = WalFetcher::open_source(call.source, call.cluster)?;
    let mut notes = Vec::new();
    let Some(request) = fetcher.request(call.file) else {
        return Ok(Answer {
            delivered: false,
            notes,
        });
    };
    let spool = match (call.prefetch, request) {
        (1.., WalRequest::Segment { .. }) => {
            let dir = call
                .spool
                .map_or_else(|| fetcher.default_spool_dir(), Path::to_path_buf);
            Spool::open(&dir)
                .map_err(|e| notes.push(format!("not prefetching: {e}")))
                .ok()
        }
        _ => None,
    };
    let delivered = fetcher.fetch(request, call.dest, spool.as_ref())?.is_some();
    if delivered
        && let Some(spool) = &spool
        && let Err(e) = spawn_prefetch_worker(call, spool.dir())
    {
        notes.push(format!("not prefetching: cannot start a worker: {e}"));
    }
    Ok(Answer { delivered, notes })
}

/// Starts this binary's hidden `wal-prefetch` detached: its own process group, no standard
/// streams, not waited for, so the call returns at once.
fn spawn_prefetch_worker(call: &Call<'_>, spool: &Path) -> io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new(std::env::current_exe()?)
        .arg("wal-prefetch")
        .args(super::from_args(call.source))
        .arg("--cluster")
        .arg(call.cluster.as_str())
        .arg("--spool")
        .arg(spool)
        .arg("--count")
        .arg(call.prefetch.to_string())
        .arg(call.file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
}

/// The `wal-prefetch` worker: spools up to `count` segments following `file`; returns how
/// many it added.
pub fn prefetch_after(
    source: &Source,
    cluster: &ClusterName,
    spool: &Path,
    count: u32,
    file: &str,
) -> Result<u32, FetchError> {
    let fetcher = WalFetcher::open_source(source, cluster)?;
    let Some(WalRequest::Segment { tli, segno }) = fetcher.request(file) else {
        return Ok(0);
    };
    let spool = Spool::open(spool)?;
    fetcher.fill_spool(&spool, tli, segno, count)
}

impl WalFetcher {
    /// Opens `<store>/<cluster>` (one read of `cluster.json`). A missing or unreadable store
    /// or `cluster.json` is an error, not "not found".
    pub fn open(store: &Path, cluster: &ClusterName) -> Result<WalFetcher, FetchError> {
        let reader = ClusterReader::open(store, cluster)?;
        Ok(WalFetcher::new(Archive::Local(reader), store.to_path_buf()))
    }

    /// Opens the cluster of a local store or of one served over HTTP(S) (one request for
    /// its `cluster.json`).
    pub fn open_source(source: &Source, cluster: &ClusterName) -> Result<WalFetcher, FetchError> {
        match source {
            Source::Local(store) => WalFetcher::open(store, cluster),
            Source::Remote(spec) => {
                let remote = RemoteStore::new(spec)?.cluster(cluster)?;
                Ok(WalFetcher::new(
                    Archive::Remote(remote),
                    PathBuf::from(&spec.url),
                ))
            }
        }
    }

    fn new(archive: Archive, store: PathBuf) -> WalFetcher {
        let mut fetcher = WalFetcher {
            archive,
            store,
            magic: None,
        };
        fetcher.magic =
            PageMagic::for_server_version_num(fetcher.reader().info().server_version_num);
        fetcher
    }

    fn reader(&self) -> &dyn WalArchive {
        match &self.archive {
            Archive::Local(reader) => reader,
            Archive::Remote(remote) => remote,
        }
    }

    /// What `file` (the server's `%f`) asks for; None for anything this store never serves
    /// (a `.partial`, `.backup` or unknown name), which is "not found".
    pub fn request(&self, file: &str) -> Option<WalRequest> {
        if let Some(tli) = parse_history_file_name(file) {
            return Some(WalRequest::History(tli));
        }
        match WalFileName::parse(file, self.reader().info().wal_segment_size) {
            Ok(name) if !name.partial && !name.compressed => Some(WalRequest::Segment {
                tli: name.tli,
                segno: name.segno,
            }),
            _ => None,
        }
    }

    /// Delivers `request` to `dest`: `Ok(None)` if the store does not have it. With a spool,
    /// a segment is taken from it when there.
    pub fn fetch(
        &self,
        request: WalRequest,
        dest: &Path,
        spool: Option<&Spool>,
    ) -> Result<Option<Delivered>, FetchError> {
        match request {
            WalRequest::History(tli) => self.fetch_history(tli, dest),
            WalRequest::Segment { tli, segno } => {
                if let Some(spool) = spool
                    && self.take_from_spool(spool, tli, segno, dest)?
                {
                    return Ok(Some(Delivered::Spooled));
                }
                match self.reader().find_segment(tli, segno)? {
                    None => Ok(None),
                    Some(stored) => {
                        let mut out = TempFile::create(dest)?;
                        let delivered = self.copy_segment(&stored, &mut out)?;
                        if delivered.is_some() {
                            out.commit(dest)?;
                        }
                        Ok(delivered)
                    }
                }
            }
        }
    }

    fn fetch_history(&self, tli: TimelineId, dest: &Path) -> Result<Option<Delivered>, FetchError> {
        let Some(bytes) = self.reader().read_history(tli)? else {
            return Ok(None);
        };
        let path = self.store_path(&history_file_name(tli));
        let text = std::str::from_utf8(&bytes).map_err(|e| FetchError::BadHistory {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        TimelineHistory::parse(tli, text).map_err(|e| FetchError::BadHistory {
            path,
            reason: e.to_string(),
        })?;
        let mut out = TempFile::create(dest)?;
        out.write(&bytes)?;
        out.commit(dest)?;
        Ok(Some(Delivered::History))
    }

    /// A path in the store's WAL directory, for messages.
    fn store_path(&self, name: &str) -> PathBuf {
        self.store
            .join(self.reader().info().cluster.as_str())
            .join("wal")
            .join(name)
    }

    fn seg_bytes(&self) -> u64 {
        self.reader().info().wal_segment_size.bytes()
    }

    /// `path` holds (or decompresses to) `size` bytes, not a segment's.
    fn wrong_size(&self, path: &Path, size: u64) -> FetchError {
        FetchError::WrongSize {
            path: path.to_path_buf(),
            size,
            expected: self.seg_bytes(),
        }
    }

    fn segment_name(&self, tli: TimelineId, segno: SegNo) -> String {
        WalFileName::segment(tli, segno).format(self.reader().info().wal_segment_size)
    }

    /// Checks the first page header of segment `tli`/`segno` read from `path`; returns the
    /// page magic to verify the rest with.
    fn check_first_page(
        &self,
        first: &[u8],
        tli: TimelineId,
        segno: SegNo,
        path: &Path,
    ) -> Result<PageMagic, FetchError> {
        let info = self.reader().info();
        let bad = |problem| FetchError::BadHeader {
            path: path.to_path_buf(),
            name: self.segment_name(tli, segno),
            problem,
        };
        let header = PageHeader::parse(first).map_err(bad)?;
        let expect = PageExpectations {
            magic: self.magic.unwrap_or(header.magic),
            seg_size: info.wal_segment_size,
            system_identifier: Some(info.system_identifier.0),
            file_tli: tli,
        };
        expect
            .validate(&header, segno.start_lsn(info.wal_segment_size), None)
            .map_err(bad)?;
        Ok(expect.magic)
    }

    /// Copies a stored segment into `out`: exactly the segment size, checked, `.partial`
    /// zero-filled after its valid WAL. None for a `.partial` that holds no WAL.
    fn copy_segment(
        &self,
        stored: &StoredSegment,
        out: &mut TempFile,
    ) -> Result<Option<Delivered>, FetchError> {
        let local_complete = !stored.name.partial && matches!(self.archive, Archive::Local(_));
        if local_complete && !stored.name.compressed {
            return self.copy_plain(stored, out);
        }
        // zstd never makes WAL much larger: a bigger file is streamed from disk (and refused).
        if local_complete && stored.size <= self.seg_bytes().saturating_mul(2) {
            return self.copy_zstd(stored, out);
        }
        let mut input = self.reader().open_segment(stored)?;
        self.copy_stream(stored, &mut input, out)
    }

    /// Streams `input`, the (decompressed) bytes of `stored`, into `out`, checking the first
    /// page header, the size, and for a `.partial` where its valid WAL ends.
    fn copy_stream(
        &self,
        stored: &StoredSegment,
        input: &mut dyn Read,
        out: &mut TempFile,
    ) -> Result<Option<Delivered>, FetchError> {
        let seg_bytes = self.seg_bytes();
        let (tli, segno) = (stored.name.tli, stored.name.segno);
        let start = segno.start_lsn(self.reader().info().wal_segment_size);
        let mut buf = vec![0u8; CHUNK];
        let mut total: u64 = 0;
        let mut verifier: Option<WalVerifier> = None;
        let mut failure: Option<Problem> = None;
        let mut failed_at: Option<Lsn> = None;
        loop {
            let n = read_full(input, &mut buf).map_err(|e| FetchError::read(&stored.path, e))?;
            let chunk = buf.get(..n).unwrap_or_default();
            if n == 0 {
                break;
            }
            if total == 0 {
                if stored.name.partial
                    && chunk
                        .get(..LONG_HEADER_LEN)
                        .unwrap_or(chunk)
                        .iter()
                        .all(|b| *b == 0)
                {
                    // Created ahead of its first WAL: nothing to serve.
                    return Ok(None);
                }
                let magic = self.check_first_page(chunk, tli, segno, &stored.path)?;
                if stored.name.partial {
                    let config = VerifierConfig {
                        seg_size: self.reader().info().wal_segment_size,
                        magic,
                        tli,
                        system_identifier: Some(self.reader().info().system_identifier.0),
                    };
                    // The segment start is page-aligned and far below the limit.
                    verifier = WalVerifier::new(config, start).ok();
                }
            }
            total += n as u64;
            if total > seg_bytes {
                return Err(self.wrong_size(&stored.path, total));
            }
            if let Some(v) = verifier.as_mut()
                && failure.is_none()
                && let Err(e) = v.feed(chunk)
            {
                failure = Some(e.problem);
                failed_at = Some(e.at);
            }
            out.write(chunk)?;
        }
        if !stored.name.partial {
            if total != seg_bytes {
                return Err(self.wrong_size(&stored.path, total));
            }
            return Ok(Some(Delivered::Segment {
                compressed: stored.name.compressed,
            }));
        }
        let Some(v) = verifier else {
            // An empty `.partial`.
            return Ok(None);
        };
        let end = valid_end(&v, failure, failed_at, Lsn(start.0 + total));
        let keep = end.0.saturating_sub(start.0).min(total);
        out.zero_from(keep, seg_bytes)?;
        Ok(Some(Delivered::Partial {
            valid_end: Lsn(start.0 + keep),
        }))
    }

    /// Decompresses a complete local `.zst`, read whole into memory (one read: a cold file
    /// gets the kernel's full readahead). Several frames (see
    /// [`zstd_frames`](crate::store::zstd_frames)) are decompressed in parallel, on up to
    /// `available_parallelism` threads; anything else (one frame: older stores; frames
    /// without a content size; damage) is streamed from those bytes as before. Frames that
    /// do not add up to the segment size are a fault.
    fn copy_zstd(
        &self,
        stored: &StoredSegment,
        out: &mut TempFile,
    ) -> Result<Option<Delivered>, FetchError> {
        let seg_bytes = self.seg_bytes();
        let path = &stored.path;
        let bytes = fs::read(path).map_err(|e| FetchError::read(path, e))?;
        let frames = match zstd_frames(&bytes) {
            Some(frames) if frames.len() > 1 => frames,
            _ => {
                let mut input = zstd::stream::read::Decoder::with_buffer(&bytes[..])
                    .map_err(|e| FetchError::read(path, e))?;
                return self.copy_stream(stored, &mut input, out);
            }
        };
        let total = frames.last().map_or(0, |f| f.offset + f.len);
        if total != seg_bytes {
            return Err(self.wrong_size(path, total));
        }
        let first = decompress_frames(&bytes, &frames, out, path)?;
        self.check_first_page(&first, stored.name.tli, stored.name.segno, path)?;
        Ok(Some(Delivered::Segment { compressed: true }))
    }

    /// Copies a complete, uncompressed segment: size checked, copied by the kernel
    /// (`copy_file_range` or `sendfile`, through `io::copy`), never through our memory, then
    /// the first page header checked (from the page cache by then). Nothing is read before
    /// the copy: a small first read makes the kernel's readahead start small, which made a
    /// cold copy a third slower here.
    fn copy_plain(
        &self,
        stored: &StoredSegment,
        out: &mut TempFile,
    ) -> Result<Option<Delivered>, FetchError> {
        let seg_bytes = self.seg_bytes();
        let path = &stored.path;
        let mut file = File::open(path).map_err(|e| FetchError::read(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| FetchError::read(path, e))?
            .len();
        if len != seg_bytes {
            return Err(self.wrong_size(path, len));
        }
        let copied = out.copy_from(&mut file, path)?;
        if copied != seg_bytes {
            return Err(self.wrong_size(path, copied));
        }
        let mut first = [0u8; LONG_HEADER_LEN];
        file.read_exact_at(&mut first, 0)
            .map_err(|e| FetchError::read(path, e))?;
        self.check_first_page(&first, stored.name.tli, stored.name.segno, path)?;
        Ok(Some(Delivered::Segment { compressed: false }))
    }

    /// Moves the spooled copy of the segment to `dest` if the spool has a good one.
    fn take_from_spool(
        &self,
        spool: &Spool,
        tli: TimelineId,
        segno: SegNo,
        dest: &Path,
    ) -> Result<bool, FetchError> {
        let path = spool.dir.join(self.segment_name(tli, segno));
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(_) => return Ok(false),
        };
        if let Err(reason) = self.check_spooled(&mut file, tli, segno, &path) {
            eprintln!(
                "walden-restore wal-fetch: discarding spooled {}: {reason}",
                path.display()
            );
            let _ = fs::remove_file(&path);
            return Ok(false);
        }
        match fs::rename(&path, dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                let mut out = TempFile::create(dest)?;
                file.rewind().map_err(|e| FetchError::read(&path, e))?;
                out.copy_from(&mut file, &path)?;
                out.commit(dest)?;
                let _ = fs::remove_file(&path);
                Ok(true)
            }
            // Taken by another caller, or unusable: the store has it.
            Err(_) => Ok(false),
        }
    }

    /// Size and first page header of a spooled file.
    fn check_spooled(
        &self,
        file: &mut File,
        tli: TimelineId,
        segno: SegNo,
        path: &Path,
    ) -> Result<(), String> {
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len != self.seg_bytes() {
            return Err(format!("{len} bytes, not {}", self.seg_bytes()));
        }
        let mut first = [0u8; LONG_HEADER_LEN];
        file.read_exact(&mut first).map_err(|e| e.to_string())?;
        self.check_first_page(&first, tli, segno, path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The default spool directory for this store and cluster:
    /// `$TMPDIR/walden-spool-<cluster>-<uid>-<hash of store path and system>`.
    pub fn default_spool_dir(&self) -> PathBuf {
        let store = fs::canonicalize(&self.store).unwrap_or_else(|_| self.store.clone());
        let info = self.reader().info();
        let mut hash = Sha256::new();
        hash.update(store.as_os_str().as_encoded_bytes());
        hash.update([0]);
        hash.update(info.cluster.as_str());
        hash.update([0]);
        hash.update(info.system_identifier.to_string());
        let digest = hash.finalize();
        let short: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        std::env::temp_dir().join(format!(
            "walden-spool-{}-{}-{short}",
            info.cluster,
            rustix::process::getuid().as_raw()
        ))
    }

    /// Copies the `count` segments after `tli`/`segno` into the spool (those not there or
    /// claimed by another worker), after removing files no longer needed. Stops at the first
    /// segment the store lacks or holds only as `.partial`. Returns how many it copied.
    pub fn fill_spool(
        &self,
        spool: &Spool,
        tli: TimelineId,
        segno: SegNo,
        count: u32,
    ) -> Result<u32, FetchError> {
        let seg_size = self.reader().info().wal_segment_size;
        spool.clean(seg_size, tli, segno, count)?;
        let mut copied = 0;
        let mut next = segno;
        for _ in 0..count {
            next = next.next();
            let name = self.segment_name(tli, next);
            let target = spool.dir.join(&name);
            if target.exists() {
                continue;
            }
            let Some(_claim) = spool.claim(&name)? else {
                continue;
            };
            let result = self.spool_one(tli, next, &target);
            spool.release(&name);
            match result? {
                SpoolStep::Copied => copied += 1,
                SpoolStep::Present => {}
                SpoolStep::End => break,
            }
        }
        Ok(copied)
    }

    /// Copies one segment into the spool as `target`; the caller holds its claim.
    fn spool_one(
        &self,
        tli: TimelineId,
        segno: SegNo,
        target: &Path,
    ) -> Result<SpoolStep, FetchError> {
        if target.exists() {
            return Ok(SpoolStep::Present);
        }
        let stored = match self.reader().find_segment(tli, segno)? {
            Some(s) if !s.name.partial => s,
            _ => return Ok(SpoolStep::End),
        };
        let mut tmp = target.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let mut out = TempFile::create_named(Path::new(&tmp))?;
        self.copy_segment(&stored, &mut out)?;
        out.commit(target)?;
        Ok(SpoolStep::Copied)
    }
}

/// What [`WalFetcher::spool_one`] did.
enum SpoolStep {
    Copied,
    Present,
    /// The store has no complete segment of that name: nothing further to prefetch.
    End,
}

/// Where valid WAL of a `.partial` ends, from a verifier fed all of it: the `MAXALIGN`ed end
/// of its last good record (as [`find_end_of_valid_wal`](crate::wal::find_end_of_valid_wal));
/// when no record was completed in it (it holds only the continuation of an earlier record),
/// where that continuation stopped being valid.
fn valid_end(
    v: &WalVerifier,
    failure: Option<Problem>,
    failed_at: Option<Lsn>,
    fed_to: Lsn,
) -> Lsn {
    if let Some(end) = v.verified_up_to() {
        return Lsn(maxalign(end.0));
    }
    if let Some(end) = v.end_of_wal() {
        return end;
    }
    match (failure, failed_at) {
        (Some(Problem::DataAfterEnd { end } | Problem::PageAfterEnd { end }), _) => end,
        (Some(_), Some(at)) => at,
        _ => fed_to,
    }
}

/// Decompresses `frames` of `file` (read from `path`) into `out`, each at its offset, on up
/// to `available_parallelism` threads (the calling one among them); each thread holds one
/// frame's content at a time. Returns the first page's header bytes (the start of the frame
/// at offset 0). The first fault stops all threads.
fn decompress_frames(
    file: &[u8],
    frames: &[ZstdFrame],
    out: &TempFile,
    path: &Path,
) -> Result<Vec<u8>, FetchError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let damaged = |at: usize, what: String| {
        FetchError::read(
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("zstd frame at byte {at}: {what}"),
            ),
        )
    };
    let work = || -> Result<Option<Vec<u8>>, FetchError> {
        let mut dctx = zstd::bulk::Decompressor::new().map_err(|e| FetchError::read(path, e))?;
        let mut content = Vec::new();
        let mut first = None;
        while !failed.load(Ordering::Relaxed) {
            let Some(frame) = frames.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let step = (|| {
                let input = file
                    .get(frame.start..frame.end)
                    .ok_or_else(|| damaged(frame.start, "beyond the end of the file".into()))?;
                let len = usize::try_from(frame.len)
                    .map_err(|_| damaged(frame.start, "too large".into()))?;
                content.clear();
                content.reserve(len);
                let n = dctx
                    .decompress_to_buffer(input, &mut content)
                    .map_err(|e| damaged(frame.start, e.to_string()))?;
                if n != len {
                    return Err(damaged(
                        frame.start,
                        format!("{n} bytes, not the {len} its header declares"),
                    ));
                }
                if frame.offset == 0 && len > 0 {
                    first = Some(content.get(..LONG_HEADER_LEN).unwrap_or(&content).to_vec());
                }
                out.write_at(&content, frame.offset)
            })();
            if let Err(e) = step {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(first)
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(frames.len())
        .max(1);
    let results = std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut results = vec![work()];
        for handle in others {
            results.push(
                handle
                    .join()
                    .unwrap_or_else(|_| Err(damaged(0, "a decompression thread failed".into()))),
            );
        }
        results
    });
    let mut first = None;
    for result in results {
        if let Some(bytes) = result? {
            first = Some(bytes);
        }
    }
    first.ok_or_else(|| damaged(0, "no frame starts the segment".into()))
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A file being written beside its final name; removed unless committed.
struct TempFile {
    path: PathBuf,
    file: File,
    committed: bool,
}

impl TempFile {
    /// `<dest>.walden-<pid>.tmp` in DEST's directory.
    fn create(dest: &Path) -> Result<TempFile, FetchError> {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!(".walden-{}.tmp", std::process::id()));
        TempFile::create_named(Path::new(&name))
    }

    /// Creates `path` (replacing a file of that name: a leftover of a killed process that
    /// had our pid).
    fn create_named(path: &Path) -> Result<TempFile, FetchError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| FetchError::write(path, e))?;
        Ok(TempFile {
            path: path.to_path_buf(),
            file,
            committed: false,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), FetchError> {
        self.file
            .write_all(bytes)
            .map_err(|e| FetchError::write(&self.path, e))
    }

    /// Writes `bytes` at `offset` (several threads may write disjoint ranges at once).
    fn write_at(&self, bytes: &[u8], offset: u64) -> Result<(), FetchError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| FetchError::write(&self.path, e))
    }

    /// Copies all of `input` (read from `path`) into the file; returns the bytes copied.
    /// File to file, the kernel copies (`copy_file_range`).
    fn copy_from(&mut self, input: &mut File, path: &Path) -> Result<u64, FetchError> {
        io::copy(input, &mut self.file).map_err(|e| match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                FetchError::write(&self.path, e)
            }
            // io::copy does not say which side failed: name both.
            _ => FetchError::Copy {
                from: path.to_path_buf(),
                to: self.path.clone(),
                source: e,
            },
        })
    }

    /// Makes bytes `[from, to)` zero and the file `to` bytes long (real zeros, not a hole:
    /// the server may write into the file later).
    fn zero_from(&mut self, from: u64, to: u64) -> Result<(), FetchError> {
        let zeros = vec![0u8; CHUNK];
        let mut at = from;
        while at < to {
            let n = usize::try_from(to - at).map_or(CHUNK, |r| r.min(CHUNK));
            self.file
                .write_all_at(zeros.get(..n).unwrap_or_default(), at)
                .map_err(|e| FetchError::write(&self.path, e))?;
            at += n as u64;
        }
        self.file
            .set_len(to)
            .map_err(|e| FetchError::write(&self.path, e))
    }

    /// Renames the file to `dest` (no fsync: see the module documentation).
    fn commit(mut self, dest: &Path) -> Result<(), FetchError> {
        durable::rename_unsynced(&self.path, dest).map_err(|e| match e {
            StoreError::NoSpace { .. } => FetchError::DiskFull {
                path: dest.to_path_buf(),
            },
            other => FetchError::Store(other),
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The prefetch spool directory (see the module documentation).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens the spool at `dir`, creating it (0700) if missing. Refused unless it is a real
    /// directory owned by the caller and closed to group and others.
    pub fn open(dir: &Path) -> Result<Spool, FetchError> {
        let refuse = |reason: String| FetchError::Spool {
            path: dir.to_path_buf(),
            reason,
        };
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(refuse(format!("cannot create it: {e}"))),
        }
        let meta = fs::symlink_metadata(dir).map_err(|e| refuse(e.to_string()))?;
        if !meta.is_dir() {
            return Err(refuse("not a directory".into()));
        }
        let uid = rustix::process::getuid().as_raw();
        if meta.uid() != uid {
            return Err(refuse(format!(
                "owned by uid {}, not by us (uid {uid})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refuse(format!(
                "mode {:o} lets others in; make it 0700",
                meta.mode() & 0o777
            )));
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Claims `name` for this worker: the held lock, or None if another worker holds it.
    fn claim(&self, name: &str) -> Result<Option<File>, FetchError> {
        let path = self.dir.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| FetchError::write(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(FetchError::write(&path, e)),
        }
    }

    /// Removes `name`'s lock file; called while holding it. A worker that opened it just
    /// before locks a removed file, then finds the spooled file in place and skips it.
    fn release(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join(format!("{name}.lock")));
    }

    /// Removes what the worker after `tli`/`segno` will not need: segments of other
    /// timelines, at or before `segno`, or more than `2 * count` ahead; temporary and lock
    /// files of names no worker holds.
    fn clean(
        &self,
        seg_size: crate::wal::WalSegSize,
        tli: TimelineId,
        segno: SegNo,
        count: u32,
    ) -> Result<(), FetchError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| FetchError::Spool {
            path: self.dir.clone(),
            reason: format!("cannot list it: {e}"),
        })?;
        let horizon = segno.0.saturating_add(2 * u64::from(count));
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let base = name.split('.').next().unwrap_or(name);
            let Ok(parsed) = WalFileName::parse(base, seg_size) else {
                continue;
            };
            if base == name {
                let wanted = parsed.tli == tli && parsed.segno > segno && parsed.segno.0 <= horizon;
                if !wanted {
                    let _ = fs::remove_file(entry.path());
                }
            } else if name.ends_with(".tmp") || name.ends_with(".lock") {
                // Not claimed by a live worker: left by a killed one.
                if let Some(_claim) = self.claim(base)? {
                    if name.ends_with(".tmp") {
                        let _ = fs::remove_file(entry.path());
                    }
                    self.release(base);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
