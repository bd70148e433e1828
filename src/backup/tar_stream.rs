//! A push parser for the tar archives of a base backup. It takes an archive in chunks of any
//! size as they arrive, keeps no more than one 512-byte header block (plus the body of a PAX or
//! GNU long-name header, capped at [`MAX_EXTENSION_LEN`]), records every member, and computes
//! each regular file's checksum while its bytes pass, in the manifest's checksum algorithm.
//!
//! Dialect: ustar (POSIX `ustar\0` and GNU `ustar  ` magic), octal or base-256 numbers, the
//! ustar prefix field, PAX `x` headers (`path`, `linkpath`, `size`), PAX `g` headers (skipped),
//! GNU `L`/`K` long names. PostgreSQL itself writes only plain ustar with names ≤ 99 bytes.
//! Nothing here does I/O: an extractor gets members and file data through a
//! [`MemberVisitor`].

use std::fmt;
use std::str::FromStr;

use sha2::Digest;

/// The size of a tar block: headers, data padding and the end-of-archive marker.
pub const BLOCK_LEN: usize = 512;

/// The largest PAX or GNU long-name header body that is buffered; larger ones are errors.
pub const MAX_EXTENSION_LEN: u64 = 1 << 20;

/// A backup_manifest checksum algorithm (`Checksum-Algorithm`, `MANIFEST_CHECKSUMS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    None,
    Crc32c,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl ChecksumAlgorithm {
    /// The name PostgreSQL uses in manifests and in `MANIFEST_CHECKSUMS`.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::None => "NONE",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Sha224 => "SHA224",
            ChecksumAlgorithm::Sha256 => "SHA256",
            ChecksumAlgorithm::Sha384 => "SHA384",
            ChecksumAlgorithm::Sha512 => "SHA512",
        }
    }

    /// The length in bytes of a checksum in this algorithm (0 for `NONE`).
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::None => 0,
            ChecksumAlgorithm::Crc32c => 4,
            ChecksumAlgorithm::Sha224 => 28,
            ChecksumAlgorithm::Sha256 => 32,
            ChecksumAlgorithm::Sha384 => 48,
            ChecksumAlgorithm::Sha512 => 64,
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A checksum algorithm name PostgreSQL does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unrecognized checksum algorithm {0:?}: expected NONE, CRC32C, SHA224, SHA256, SHA384 or SHA512"
)]
pub struct UnknownAlgorithm(pub String);

impl FromStr for ChecksumAlgorithm {
    type Err = UnknownAlgorithm;

    /// Case-insensitive, like PostgreSQL's `pg_checksum_parse_type`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ChecksumAlgorithm::None,
            ChecksumAlgorithm::Crc32c,
            ChecksumAlgorithm::Sha224,
            ChecksumAlgorithm::Sha256,
            ChecksumAlgorithm::Sha384,
            ChecksumAlgorithm::Sha512,
        ]
        .into_iter()
        .find(|a| a.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| UnknownAlgorithm(s.to_string()))
    }
}

/// A path relative to the data directory, as raw bytes (PostgreSQL file names need not be
/// UTF-8). Displayed as UTF-8 with invalid bytes shown as `\xNN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupPath(Vec<u8>);

impl BackupPath {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        BackupPath(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl From<&str> for BackupPath {
    fn from(s: &str) -> Self {
        BackupPath(s.as_bytes().to_vec())
    }
}

impl fmt::Display for BackupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// What a tar member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberKind {
    /// Typeflag `0`, NUL or `7`.
    File,
    /// Typeflag `5`.
    Directory,
    /// Typeflag `2` (PostgreSQL's `pg_tblspc/<oid>` links).
    Symlink { target: BackupPath },
    /// Typeflag `1`.
    HardLink { target: BackupPath },
    /// Devices, FIFOs and unknown typeflags.
    Other { typeflag: u8 },
}

/// One member of an archive. `path` is the path relative to the data directory: the archive's
/// prefix joined with the member name, without a leading `./` or a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub path: BackupPath,
    pub kind: MemberKind,
    pub size: u64,
    pub mode: u32,
}

/// A regular file seen in an archive: what the manifest is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    pub path: BackupPath,
    pub size: u64,
    pub algorithm: ChecksumAlgorithm,
    /// The digest bytes (CRC-32C as its 4 little-endian bytes, like the manifest); empty for
    /// [`ChecksumAlgorithm::None`].
    pub checksum: Vec<u8>,
}

/// Everything a complete archive held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveContents {
    pub members: Vec<Member>,
    pub files: Vec<FileSummary>,
    /// Bytes fed, end-of-archive blocks and padding included.
    pub bytes: u64,
}

/// A malformed or incomplete archive. Each names the archive and the member or byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error(
        "archive {archive}: the header at byte {offset} (name {name:?}) has a bad checksum; the archive is corrupt"
    )]
    HeaderChecksum {
        archive: String,
        offset: u64,
        name: String,
    },
    #[error(
        "archive {archive}: the block at byte {offset} is not a ustar header (magic {magic:?}); the archive is corrupt or not a tar archive"
    )]
    NotUstar {
        archive: String,
        offset: u64,
        magic: String,
    },
    #[error("archive {archive}: member {member}: invalid {field} field {value:?} in its header")]
    BadNumber {
        archive: String,
        member: String,
        field: &'static str,
        value: String,
    },
    #[error("archive {archive}: the header at byte {offset} has an empty member name")]
    EmptyName { archive: String, offset: u64 },
    #[error(
        "archive {archive}: the extended header at byte {offset} is {size} bytes, more than the {MAX_EXTENSION_LEN} bytes walden accepts"
    )]
    ExtensionTooLarge {
        archive: String,
        offset: u64,
        size: u64,
    },
    #[error("archive {archive}: the PAX header at byte {offset} is malformed: {reason}")]
    BadPax {
        archive: String,
        offset: u64,
        reason: String,
    },
    #[error(
        "archive {archive}: a single zero block at byte {offset} is followed by a header; the archive is corrupt"
    )]
    LoneZeroBlock { archive: String, offset: u64 },
    #[error("archive {archive}: non-zero data at byte {offset} after the end-of-archive blocks")]
    DataAfterEnd { archive: String, offset: u64 },
    #[error("archive {archive} is truncated {place}; the archive is incomplete")]
    Truncated { archive: String, place: String },
}

/// What [`TarStream::feed_with`] reports while an archive passes, in archive order: for each
/// member [`member`](MemberVisitor::member); for a regular file then its bytes in one or
/// more [`data`](MemberVisitor::data) calls and [`file_end`](MemberVisitor::file_end) (at
/// once for an empty file).
pub trait MemberVisitor {
    type Error: From<TarError>;
    /// A member's header was read; `member` is as [`TarStream::members`] records it.
    fn member(&mut self, member: &Member) -> Result<(), Self::Error>;
    /// The next bytes of the current regular file.
    fn data(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
    /// The current regular file is complete.
    fn file_end(&mut self) -> Result<(), Self::Error>;
}

/// The visitor of a plain [`TarStream::feed`].
struct NoVisitor;

impl MemberVisitor for NoVisitor {
    type Error = TarError;

    fn member(&mut self, _: &Member) -> Result<(), TarError> {
        Ok(())
    }

    fn data(&mut self, _: &[u8]) -> Result<(), TarError> {
        Ok(())
    }

    fn file_end(&mut self) -> Result<(), TarError> {
        Ok(())
    }
}

/// Pushes an archive through, chunk by chunk: see the module documentation.
pub struct TarStream {
    archive: String,
    prefix: Vec<u8>,
    algorithm: ChecksumAlgorithm,
    header: [u8; BLOCK_LEN],
    header_len: usize,
    header_offset: u64,
    offset: u64,
    state: State,
    pending: Overrides,
    members: Vec<Member>,
    files: Vec<FileSummary>,
    failed: Option<TarError>,
}

enum State {
    /// Collecting a header block.
    Header,
    /// The data of a regular file.
    FileData {
        path: BackupPath,
        size: u64,
        remaining: u64,
        hasher: Hasher,
        padding: u64,
    },
    /// The body of a PAX `x` or GNU `L`/`K` header, buffered.
    Extension {
        kind: Extension,
        body: Vec<u8>,
        remaining: u64,
        padding: u64,
        offset: u64,
    },
    /// Data not looked at: other members' data, PAX `g` bodies, padding.
    Skip { remaining: u64 },
    /// One zero block seen: collecting the block that must be the second.
    SecondZero,
    /// Both zero blocks seen: only zero padding may follow.
    End,
}

#[derive(Clone, Copy)]
enum Extension {
    Pax,
    LongName,
    LongLink,
}

/// Values from PAX or GNU long-name headers for the next member.
#[derive(Default)]
struct Overrides {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
}

enum Hasher {
    None,
    Crc32c(u32),
    Sha224(Box<sha2::Sha224>),
    Sha256(Box<sha2::Sha256>),
    Sha384(Box<sha2::Sha384>),
    Sha512(Box<sha2::Sha512>),
}

impl Hasher {
    fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::None => Hasher::None,
            ChecksumAlgorithm::Crc32c => Hasher::Crc32c(0),
            ChecksumAlgorithm::Sha224 => Hasher::Sha224(Box::default()),
            ChecksumAlgorithm::Sha256 => Hasher::Sha256(Box::default()),
            ChecksumAlgorithm::Sha384 => Hasher::Sha384(Box::default()),
            ChecksumAlgorithm::Sha512 => Hasher::Sha512(Box::default()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, bytes),
            Hasher::Sha224(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha384(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::None => Vec::new(),
            Hasher::Crc32c(crc) => crc.to_le_bytes().to_vec(),
            Hasher::Sha224(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// Computes a whole buffer's checksum the way [`TarStream`] does, e.g. for tests or for a
/// file read back from disk.
pub fn checksum(algorithm: ChecksumAlgorithm, bytes: &[u8]) -> Vec<u8> {
    let mut h = Hasher::new(algorithm);
    h.update(bytes);
    h.finish()
}

// Header field positions (POSIX ustar).
const NAME: std::ops::Range<usize> = 0..100;
const MODE: std::ops::Range<usize> = 100..108;
const SIZE: std::ops::Range<usize> = 124..136;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MAGIC: std::ops::Range<usize> = 257..265;
const PREFIX: std::ops::Range<usize> = 345..500;

const MAGIC_POSIX: &[u8] = b"ustar\x00";
const MAGIC_GNU: &[u8] = b"ustar  \x00";

impl TarStream {
    /// A parser for one archive. `archive` names it in errors (e.g. `base.tar`); `prefix` is
    /// prepended to member names to form manifest paths (`""` for `base.tar`,
    /// `pg_tblspc/<oid>` for a tablespace archive); `algorithm` is the checksum to compute
    /// for regular files (the manifest's; PostgreSQL's default is CRC32C).
    pub fn new(archive: impl Into<String>, prefix: &str, algorithm: ChecksumAlgorithm) -> Self {
        TarStream {
            archive: archive.into(),
            prefix: prefix.trim_end_matches('/').as_bytes().to_vec(),
            algorithm,
            header: [0; BLOCK_LEN],
            header_len: 0,
            header_offset: 0,
            offset: 0,
            state: State::Header,
            pending: Overrides::default(),
            members: Vec::new(),
            files: Vec::new(),
            failed: None,
        }
    }

    /// The members whose headers have been read so far.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The regular files whose data has been read completely so far.
    pub fn files(&self) -> &[FileSummary] {
        &self.files
    }

    /// Bytes fed so far.
    pub fn bytes_fed(&self) -> u64 {
        self.offset
    }

    /// Takes the next chunk of the archive. After an error the stream stays failed: every
    /// later call returns the same error.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), TarError> {
        self.feed_with(bytes, &mut NoVisitor)
    }

    /// [`TarStream::feed`], telling `visitor` about each member and handing it each regular
    /// file's data as it passes (for extraction). A visitor error stops the feed at once.
    pub fn feed_with<V: MemberVisitor>(
        &mut self,
        bytes: &[u8],
        visitor: &mut V,
    ) -> Result<(), V::Error> {
        if let Some(err) = &self.failed {
            return Err(err.clone().into());
        }
        let mut input = bytes;
        while !input.is_empty() {
            let (members, files) = (self.members.len(), self.files.len());
            let in_data = matches!(self.state, State::FileData { .. });
            let used = match self.step(input) {
                Ok(used) => used,
                Err(err) => {
                    self.failed = Some(err.clone());
                    return Err(err.into());
                }
            };
            self.offset += used as u64;
            let (done, rest) = input.split_at_checked(used).unwrap_or((input, &[]));
            input = rest;
            if in_data {
                visitor.data(done)?;
            }
            if self.members.len() > members
                && let Some(member) = self.members.last()
            {
                visitor.member(member)?;
            }
            if self.files.len() > files {
                visitor.file_end()?;
            }
        }
        Ok(())
    }

    /// Ends the archive: it must have ended with its two zero blocks (for a PostgreSQL ≤ 14
    /// archive, the caller appends them before calling this).
    pub fn finish(self) -> Result<ArchiveContents, TarError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let place = match &self.state {
            State::End => {
                return Ok(ArchiveContents {
                    members: self.members,
                    files: self.files,
                    bytes: self.offset,
                });
            }
            State::Header if self.header_len == 0 => match self.members.last() {
                Some(m) => format!(
                    "after member {}: the end-of-archive blocks are missing",
                    m.path
                ),
                None => "before its first member".to_string(),
            },
            State::Header => format!("inside the header at byte {}", self.header_offset),
            State::SecondZero => format!(
                "inside the end-of-archive blocks at byte {}",
                self.header_offset
            ),
            State::FileData {
                path,
                size,
                remaining,
                ..
            } => format!("inside member {path}: {remaining} of its {size} bytes are missing"),
            State::Extension { offset, .. } => {
                format!("inside the extended header at byte {offset}")
            }
            State::Skip { .. } => match self.members.last() {
                Some(m) => format!("inside the data or padding of member {}", m.path),
                None => format!("inside the extended header before byte {}", self.offset),
            },
        };
        Err(TarError::Truncated {
            archive: self.archive,
            place,
        })
    }

    /// Consumes a prefix of `input` (never empty when `input` isn't); returns its length.
    fn step(&mut self, input: &[u8]) -> Result<usize, TarError> {
        match &mut self.state {
            State::Header | State::SecondZero => {
                if self.header_len == 0 {
                    self.header_offset = self.offset;
                }
                let n = (BLOCK_LEN - self.header_len).min(input.len());
                let (src, dst) = (&input[..n], &mut self.header[self.header_len..][..n]);
                dst.copy_from_slice(src);
                self.header_len += n;
                if self.header_len == BLOCK_LEN {
                    self.header_len = 0;
                    self.on_block()?;
                }
                Ok(n)
            }
            State::FileData {
                remaining, hasher, ..
            } => {
                let n = clamp(*remaining, input.len());
                hasher.update(&input[..n]);
                *remaining -= n as u64;
                if *remaining == 0
                    && let State::FileData {
                        path,
                        size,
                        hasher,
                        padding,
                        ..
                    } = std::mem::replace(&mut self.state, State::Header)
                {
                    self.files.push(FileSummary {
                        path,
                        size,
                        algorithm: self.algorithm,
                        checksum: hasher.finish(),
                    });
                    self.state = State::Skip { remaining: padding };
                    self.skip_if_done();
                }
                Ok(n)
            }
            State::Extension {
                body, remaining, ..
            } => {
                let n = clamp(*remaining, input.len());
                body.extend_from_slice(&input[..n]);
                *remaining -= n as u64;
                if *remaining == 0
                    && let State::Extension {
                        kind,
                        body,
                        padding,
                        offset,
                        ..
                    } = std::mem::replace(&mut self.state, State::Skip { remaining: 0 })
                {
                    self.state = State::Skip { remaining: padding };
                    self.apply_extension(kind, &body, offset)?;
                    self.skip_if_done();
                }
                Ok(n)
            }
            State::Skip { remaining } => {
                let n = clamp(*remaining, input.len());
                *remaining -= n as u64;
                self.skip_if_done();
                Ok(n)
            }
            State::End => match input.iter().position(|&b| b != 0) {
                Some(i) => Err(TarError::DataAfterEnd {
                    archive: self.archive.clone(),
                    offset: self.offset + i as u64,
                }),
                None => Ok(input.len()),
            },
        }
    }

    fn skip_if_done(&mut self) {
        if let State::Skip { remaining: 0 } = self.state {
            self.state = State::Header;
        }
    }

    /// A complete block in `self.header` while in `Header` or `SecondZero`.
    fn on_block(&mut self) -> Result<(), TarError> {
        let zero = self.header.iter().all(|&b| b == 0);
        if let State::SecondZero = self.state {
            if !zero {
                return Err(TarError::LoneZeroBlock {
                    archive: self.archive.clone(),
                    offset: self.header_offset.saturating_sub(BLOCK_LEN as u64),
                });
            }
            self.state = State::End;
            return Ok(());
        }
        if zero {
            self.state = State::SecondZero;
            return Ok(());
        }
        self.on_header()
    }

    fn on_header(&mut self) -> Result<(), TarError> {
        let h = &self.header;
        let raw_name = cstr(&h[NAME]);
        let magic = &h[MAGIC];
        let posix = magic.starts_with(MAGIC_POSIX);
        if !posix && magic != MAGIC_GNU {
            return Err(TarError::NotUstar {
                archive: self.archive.clone(),
                offset: self.header_offset,
                magic: String::from_utf8_lossy(magic).into_owned(),
            });
        }
        let stored = parse_number(&h[CHKSUM]);
        let unsigned: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if CHKSUM.contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        let signed: i64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if CHKSUM.contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        if stored != Some(unsigned) && stored.map(|s| s as i64) != Some(signed) {
            return Err(TarError::HeaderChecksum {
                archive: self.archive.clone(),
                offset: self.header_offset,
                name: String::from_utf8_lossy(raw_name).into_owned(),
            });
        }

        let typeflag = h[TYPEFLAG];
        let header_size = parse_number(&h[SIZE]);
        let shown = String::from_utf8_lossy(raw_name).into_owned();
        let bad_number = |field: &'static str, value: &[u8]| TarError::BadNumber {
            archive: self.archive.clone(),
            member: shown.clone(),
            field,
            value: String::from_utf8_lossy(value).into_owned(),
        };
        // A PAX size applies to the next member, not to another extended header.
        let extension = matches!(typeflag, b'x' | b'g' | b'L' | b'K');
        let size = match (self.pending.size.filter(|_| !extension), header_size) {
            (Some(size), _) => size,
            (None, Some(size)) => size,
            (None, None) => return Err(bad_number("size", &h[SIZE])),
        };
        let padding = (BLOCK_LEN as u64 - size % BLOCK_LEN as u64) % BLOCK_LEN as u64;

        if matches!(typeflag, b'x' | b'L' | b'K') {
            if size > MAX_EXTENSION_LEN {
                return Err(TarError::ExtensionTooLarge {
                    archive: self.archive.clone(),
                    offset: self.header_offset,
                    size,
                });
            }
            let kind = match typeflag {
                b'x' => Extension::Pax,
                b'L' => Extension::LongName,
                _ => Extension::LongLink,
            };
            if size > 0 {
                self.state = State::Extension {
                    kind,
                    body: Vec::new(),
                    remaining: size,
                    padding,
                    offset: self.header_offset,
                };
            }
            return Ok(());
        }
        if typeflag == b'g' {
            self.state = State::Skip {
                remaining: size.saturating_add(padding),
            };
            self.skip_if_done();
            return Ok(());
        }

        let mode = parse_number(&h[MODE])
            .and_then(|m| u32::try_from(m).ok())
            .ok_or_else(|| bad_number("mode", &h[MODE]))?;
        let pending = std::mem::take(&mut self.pending);
        let name = match pending.path {
            Some(path) => path,
            None => {
                let prefix = cstr(&h[PREFIX]);
                if posix && !prefix.is_empty() {
                    let mut full = prefix.to_vec();
                    full.push(b'/');
                    full.extend_from_slice(raw_name);
                    full
                } else {
                    raw_name.to_vec()
                }
            }
        };
        if name.is_empty() {
            return Err(TarError::EmptyName {
                archive: self.archive.clone(),
                offset: self.header_offset,
            });
        }
        let link = || {
            BackupPath::new(
                pending
                    .link
                    .clone()
                    .unwrap_or_else(|| cstr(&h[LINKNAME]).to_vec()),
            )
        };
        let kind = match typeflag {
            b'0' | 0 | b'7' => MemberKind::File,
            b'5' => MemberKind::Directory,
            b'2' => MemberKind::Symlink { target: link() },
            b'1' => MemberKind::HardLink { target: link() },
            other => MemberKind::Other { typeflag: other },
        };
        let path = self.manifest_path(&name);
        let is_file = kind == MemberKind::File;
        self.members.push(Member {
            path: path.clone(),
            kind,
            size,
            mode,
        });
        if is_file {
            if size == 0 {
                self.files.push(FileSummary {
                    path,
                    size,
                    algorithm: self.algorithm,
                    checksum: Hasher::new(self.algorithm).finish(),
                });
            } else {
                self.state = State::FileData {
                    path,
                    size,
                    remaining: size,
                    hasher: Hasher::new(self.algorithm),
                    padding,
                };
            }
        } else {
            self.state = State::Skip {
                remaining: size.saturating_add(padding),
            };
            self.skip_if_done();
        }
        Ok(())
    }

    fn apply_extension(
        &mut self,
        kind: Extension,
        body: &[u8],
        offset: u64,
    ) -> Result<(), TarError> {
        match kind {
            Extension::LongName => self.pending.path = Some(cstr(body).to_vec()),
            Extension::LongLink => self.pending.link = Some(cstr(body).to_vec()),
            Extension::Pax => {
                let bad = |reason: &str| TarError::BadPax {
                    archive: self.archive.clone(),
                    offset,
                    reason: reason.to_string(),
                };
                let mut rest = body;
                while !rest.is_empty() {
                    let space = rest
                        .iter()
                        .position(|&b| b == b' ')
                        .ok_or_else(|| bad("a record has no length"))?;
                    let len: usize = std::str::from_utf8(&rest[..space])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .filter(|&len| len > space + 1 && len <= rest.len())
                        .ok_or_else(|| bad("a record length is invalid"))?;
                    let record = &rest[space + 1..len];
                    rest = &rest[len..];
                    let record = record
                        .strip_suffix(b"\n")
                        .ok_or_else(|| bad("a record does not end with a newline"))?;
                    let eq = record
                        .iter()
                        .position(|&b| b == b'=')
                        .ok_or_else(|| bad("a record has no '='"))?;
                    let (key, value) = (&record[..eq], &record[eq + 1..]);
                    match key {
                        b"path" => self.pending.path = Some(value.to_vec()),
                        b"linkpath" => self.pending.link = Some(value.to_vec()),
                        b"size" => {
                            let size = std::str::from_utf8(value)
                                .ok()
                                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                                .and_then(|s| s.parse().ok())
                                .ok_or_else(|| bad("the size is not a decimal number"))?;
                            self.pending.size = Some(size);
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// The archive prefix joined with a member name, without `./` in front or `/` behind.
    fn manifest_path(&self, name: &[u8]) -> BackupPath {
        let mut name = name;
        while let Some(rest) = name.strip_prefix(b"./") {
            name = rest;
        }
        if name == b"." {
            name = b"";
        }
        while let Some(rest) = name.strip_suffix(b"/") {
            name = rest;
        }
        let mut path = self.prefix.clone();
        if !path.is_empty() && !name.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        BackupPath::new(path)
    }
}

/// `min(remaining, available)` as a slice length.
fn clamp(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

/// The bytes of a NUL-terminated field, up to the NUL (or the whole field).
fn cstr(field: &[u8]) -> &[u8] {
    field
        .iter()
        .position(|&b| b == 0)
        .map_or(field, |end| &field[..end])
}

/// A numeric header field: octal digits (leading spaces, then NUL or space terminated), or
/// base-256 (first byte 0x80, big-endian). `None` if malformed, negative or beyond u64.
fn parse_number(field: &[u8]) -> Option<u64> {
    let (&first, rest) = field.split_first()?;
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return None; // negative
        }
        return rest.iter().try_fold(u64::from(first & 0x3f), |acc, &b| {
            acc.checked_mul(256)?.checked_add(u64::from(b))
        });
    }
    let field = field.trim_ascii_start();
    let digits = field
        .iter()
        .take_while(|b| (b'0'..=b'7').contains(b))
        .count();
    if digits == 0 || !field[digits..].iter().all(|&b| b == 0 || b == b' ') {
        return None;
    }
    field[..digits].iter().try_fold(0u64, |acc, &b| {
        acc.checked_mul(8)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// How a test header writes its size field.
    #[derive(Clone, Copy)]
    pub(in crate::backup) enum SizeField {
        Octal,
        Base256,
    }

    /// A ustar header with a correct checksum. `name` goes into the prefix field when longer
    /// than 100 bytes (split at a `/`).
    pub(in crate::backup) fn header(
        name: &[u8],
        typeflag: u8,
        size: u64,
        size_field: SizeField,
        link: &[u8],
    ) -> [u8; BLOCK_LEN] {
        let mut h = [0u8; BLOCK_LEN];
        let (prefix, name) = if name.len() > 100 {
            let cut = name[..name.len() - 1]
                .iter()
                .rposition(|&b| b == b'/')
                .unwrap();
            (&name[..cut], &name[cut + 1..])
        } else {
            (&b""[..], name)
        };
        h[..name.len()].copy_from_slice(name);
        h[PREFIX][..prefix.len()].copy_from_slice(prefix);
        h[MODE][..7].copy_from_slice(b"0000600");
        h[108..115].copy_from_slice(b"0000764");
        h[116..123].copy_from_slice(b"0000764");
        match size_field {
            SizeField::Octal => h[SIZE][..11].copy_from_slice(format!("{size:011o}").as_bytes()),
            SizeField::Base256 => {
                h[SIZE.start] = 0x80;
                h[SIZE][4..].copy_from_slice(&size.to_be_bytes());
            }
        }
        h[136..147].copy_from_slice(b"15071334000");
        h[TYPEFLAG] = typeflag;
        h[LINKNAME][..link.len()].copy_from_slice(link);
        h[MAGIC].copy_from_slice(b"ustar\x0000");
        h[265..273].copy_from_slice(b"postgres");
        h[297..305].copy_from_slice(b"postgres");
        h[CHKSUM].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[CHKSUM][..7].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    /// One member of a test archive: name, typeflag, data, link target.
    pub(in crate::backup) struct Entry<'a> {
        pub name: &'a [u8],
        pub typeflag: u8,
        pub data: &'a [u8],
        pub link: &'a [u8],
    }

    pub(in crate::backup) fn file<'a>(name: &'a str, data: &'a [u8]) -> Entry<'a> {
        Entry {
            name: name.as_bytes(),
            typeflag: b'0',
            data,
            link: b"",
        }
    }

    pub(in crate::backup) fn dir(name: &str) -> Entry<'_> {
        Entry {
            name: name.as_bytes(),
            typeflag: b'5',
            data: b"",
            link: b"",
        }
    }

    fn append(out: &mut Vec<u8>, e: &Entry<'_>, size_field: SizeField) {
        out.extend_from_slice(&header(
            e.name,
            e.typeflag,
            e.data.len() as u64,
            size_field,
            e.link,
        ));
        out.extend_from_slice(e.data);
        out.resize(out.len().next_multiple_of(BLOCK_LEN), 0);
    }

    /// A terminated archive of `entries`.
    pub(in crate::backup) fn archive(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            append(&mut out, e, SizeField::Octal);
        }
        out.extend_from_slice(&[0; 2 * BLOCK_LEN]);
        out
    }

    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body_len + 1;
        while len.to_string().len() + body_len != len {
            len += 1;
        }
        let mut rec = format!("{len} {key}=").into_bytes();
        rec.extend_from_slice(value);
        rec.push(b'\n');
        rec
    }

    pub(in crate::backup) fn parse_all(
        bytes: &[u8],
        prefix: &str,
        algorithm: ChecksumAlgorithm,
    ) -> Result<ArchiveContents, TarError> {
        let mut t = TarStream::new("test.tar", prefix, algorithm);
        t.feed(bytes)?;
        t.finish()
    }

    fn parse_chunked(bytes: &[u8], cuts: &[usize]) -> Result<ArchiveContents, TarError> {
        let mut t = TarStream::new("test.tar", "", ChecksumAlgorithm::Crc32c);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut at = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            t.feed(&bytes[at..c])?;
            at = c;
        }
        t.finish()
    }

    fn real_tablespace_tar(major: u32) -> Vec<u8> {
        let path = format!(
            "{}/fixtures/manifests/pg{major}/crc32c-tablespace.tar",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap()
    }

    fn sample() -> Vec<u8> {
        let big: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        archive(&[
            file("backup_label", b"START WAL LOCATION: 0/2000028\n"),
            dir("base/"),
            dir("base/1/"),
            file("base/1/1259", &big),
            file("empty", b""),
            Entry {
                name: b"pg_tblspc/16384/",
                typeflag: b'2',
                data: b"",
                link: b"/srv/ts1",
            },
            file("global/pg_control", &[7; 8192]),
        ])
    }

    /// Records what a visitor is told, as text.
    #[derive(Default)]
    struct Recorder {
        events: Vec<String>,
        data: Vec<u8>,
    }

    impl MemberVisitor for Recorder {
        type Error = TarError;

        fn member(&mut self, m: &Member) -> Result<(), TarError> {
            self.events.push(format!("member {}", m.path));
            Ok(())
        }

        fn data(&mut self, bytes: &[u8]) -> Result<(), TarError> {
            self.data.extend_from_slice(bytes);
            Ok(())
        }

        fn file_end(&mut self) -> Result<(), TarError> {
            self.events.push(format!("end {}", self.data.len()));
            self.data.clear();
            Ok(())
        }
    }

    #[test]
    fn a_visitor_sees_members_and_data_in_order_in_any_chunking() {
        let bytes = sample();
        let want = [
            "member backup_label",
            "end 30",
            "member base",
            "member base/1",
            "member base/1/1259",
            "end 20000",
            "member empty",
            "end 0",
            "member pg_tblspc/16384",
            "member global/pg_control",
            "end 8192",
        ];
        for chunk in [1, 7, 512, 4096, bytes.len()] {
            let mut t = TarStream::new("test.tar", "", ChecksumAlgorithm::None);
            let mut r = Recorder::default();
            for piece in bytes.chunks(chunk) {
                t.feed_with(piece, &mut r).unwrap();
            }
            t.finish().unwrap();
            assert_eq!(r.events, want, "chunks of {chunk}");
        }
    }

    #[test]
    fn members_and_checksums_of_a_simple_archive() {
        let bytes = sample();
        let got = parse_all(&bytes, "", ChecksumAlgorithm::Crc32c).unwrap();
        assert_eq!(got.bytes, bytes.len() as u64);
        let kinds: Vec<(String, MemberKind, u64)> = got
            .members
            .iter()
            .map(|m| (m.path.to_string(), m.kind.clone(), m.size))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("backup_label".into(), MemberKind::File, 30),
                ("base".into(), MemberKind::Directory, 0),
                ("base/1".into(), MemberKind::Directory, 0),
                ("base/1/1259".into(), MemberKind::File, 20_000),
                ("empty".into(), MemberKind::File, 0),
                (
                    "pg_tblspc/16384".into(),
                    MemberKind::Symlink {
                        target: "/srv/ts1".into()
                    },
                    0
                ),
                ("global/pg_control".into(), MemberKind::File, 8192),
            ]
        );
        assert!(got.members.iter().all(|m| m.mode == 0o600));
        let files: Vec<(String, u64, Vec<u8>)> = got
            .files
            .iter()
            .map(|f| (f.path.to_string(), f.size, f.checksum.clone()))
            .collect();
        let big: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let crc = |d: &[u8]| crc32c::crc32c(d).to_le_bytes().to_vec();
        assert_eq!(
            files,
            vec![
                (
                    "backup_label".into(),
                    30,
                    crc(b"START WAL LOCATION: 0/2000028\n")
                ),
                ("base/1/1259".into(), 20_000, crc(&big)),
                ("empty".into(), 0, vec![0, 0, 0, 0]),
                ("global/pg_control".into(), 8192, crc(&[7; 8192])),
            ]
        );
    }

    #[test]
    fn sha2_and_none_checksums() {
        use sha2::Digest;
        let bytes = archive(&[file("a", b"abc"), file("b", b"")]);
        let sha = |alg| parse_all(&bytes, "", alg).unwrap().files;
        assert_eq!(
            sha(ChecksumAlgorithm::Sha256)[0].checksum,
            sha2::Sha256::digest(b"abc").to_vec()
        );
        assert_eq!(
            sha(ChecksumAlgorithm::Sha224)[0].checksum,
            sha2::Sha224::digest(b"abc").to_vec()
        );
        assert_eq!(
            sha(ChecksumAlgorithm::Sha384)[1].checksum,
            sha2::Sha384::digest(b"").to_vec()
        );
        assert_eq!(
            sha(ChecksumAlgorithm::Sha512)[0].checksum,
            sha2::Sha512::digest(b"abc").to_vec()
        );
        assert!(
            sha(ChecksumAlgorithm::None)
                .iter()
                .all(|f| f.checksum.is_empty())
        );
        for alg in [
            ChecksumAlgorithm::None,
            ChecksumAlgorithm::Crc32c,
            ChecksumAlgorithm::Sha224,
            ChecksumAlgorithm::Sha256,
            ChecksumAlgorithm::Sha384,
            ChecksumAlgorithm::Sha512,
        ] {
            assert_eq!(sha(alg)[0].checksum.len(), alg.digest_len());
            assert_eq!(sha(alg)[0].algorithm, alg);
            assert_eq!(
                alg.name().to_lowercase().parse::<ChecksumAlgorithm>(),
                Ok(alg)
            );
        }
        assert_eq!(
            "md5".parse::<ChecksumAlgorithm>(),
            Err(UnknownAlgorithm("md5".into()))
        );
        // The manifest prints CRC-32C as the little-endian bytes of the value (verified 15).
        assert_eq!(
            checksum(ChecksumAlgorithm::Crc32c, b"123456789"),
            0xE306_9283u32.to_le_bytes()
        );
    }

    #[test]
    fn tablespace_prefix_is_prepended() {
        let bytes = archive(&[
            dir("PG_15_202209061/"),
            file("PG_15_202209061/5/16385", b"x"),
        ]);
        for prefix in ["pg_tblspc/16384", "pg_tblspc/16384/"] {
            let got = parse_all(&bytes, prefix, ChecksumAlgorithm::Crc32c).unwrap();
            assert_eq!(
                got.members[0].path.to_string(),
                "pg_tblspc/16384/PG_15_202209061"
            );
            assert_eq!(
                got.files[0].path.to_string(),
                "pg_tblspc/16384/PG_15_202209061/5/16385"
            );
        }
    }

    #[test]
    fn ustar_prefix_field_and_dot_slash_names() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let bytes = archive(&[file(&long, b"data"), file("./x/./y", b""), dir("./")]);
        let got = parse_all(&bytes, "", ChecksumAlgorithm::None).unwrap();
        assert_eq!(got.files[0].path.to_string(), long);
        assert_eq!(got.files[1].path.to_string(), "x/./y");
        assert_eq!(got.members[2].path.to_string(), "");
    }

    #[test]
    fn gnu_magic_ignores_the_prefix_area() {
        let mut h = header(b"file", b'0', 3, SizeField::Octal, b"");
        h[MAGIC].copy_from_slice(MAGIC_GNU);
        h[PREFIX][..5].copy_from_slice(b"atime"); // GNU keeps other fields there
        h[CHKSUM].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[CHKSUM][..7].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut bytes = h.to_vec();
        bytes.extend_from_slice(b"abc");
        bytes.resize(BLOCK_LEN * 4, 0);
        let got = parse_all(&bytes, "", ChecksumAlgorithm::None).unwrap();
        assert_eq!(got.files[0].path.to_string(), "file");
    }

    #[test]
    fn base256_sizes() {
        let mut bytes = Vec::new();
        append(&mut bytes, &file("f", &[1; 700]), SizeField::Base256);
        bytes.extend_from_slice(&[0; 1024]);
        let got = parse_all(&bytes, "", ChecksumAlgorithm::Crc32c).unwrap();
        assert_eq!(got.files[0].size, 700);
        assert_eq!(
            got.files[0].checksum,
            checksum(ChecksumAlgorithm::Crc32c, &[1; 700])
        );

        // PostgreSQL writes sizes >= 8 GiB as 0x80 + big-endian in the 12-byte field.
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[4..].copy_from_slice(&(9u64 << 30).to_be_bytes());
        assert_eq!(parse_number(&field), Some(9 << 30));
        assert_eq!(parse_number(b"00000001750\0"), Some(1000));
        assert_eq!(parse_number(b"  1750 \0\0\0\0\0"), Some(1000));
        assert_eq!(parse_number(&[0xff; 12]), None, "negative");
        let mut huge = [0xffu8; 12];
        huge[0] = 0x80;
        assert_eq!(parse_number(&huge), None, "beyond u64");
        assert_eq!(parse_number(b"0000000175x\0"), None);
        assert_eq!(parse_number(b"00000001789\0"), None);
        assert_eq!(parse_number(&[0; 12]), None);
    }

    #[test]
    fn pax_and_gnu_long_names_override_the_next_member() {
        let long: String = "base/16384/".to_string() + &"n".repeat(150);
        let mut pax = pax_record("path", long.as_bytes());
        pax.extend(pax_record("size", b"5"));
        pax.extend(pax_record("mtime", b"1700000000.5"));
        let mut bytes = Vec::new();
        append(
            &mut bytes,
            &Entry {
                name: b"PaxHeaders/x",
                typeflag: b'x',
                data: &pax,
                link: b"",
            },
            SizeField::Octal,
        );
        // The ustar size field says 0; the PAX size (5) wins.
        bytes.extend_from_slice(&header(b"short", b'0', 0, SizeField::Octal, b""));
        bytes.extend_from_slice(b"hello");
        bytes.resize(bytes.len().next_multiple_of(BLOCK_LEN), 0);
        let global = pax_record("path", b"ignored");
        append(
            &mut bytes,
            &Entry {
                name: b"g",
                typeflag: b'g',
                data: &global,
                link: b"",
            },
            SizeField::Octal,
        );
        let gnu_name = "pg_tblspc/".to_string() + &"L".repeat(200);
        let mut long_name = gnu_name.clone().into_bytes();
        long_name.push(0);
        append(
            &mut bytes,
            &Entry {
                name: b"././@LongLink",
                typeflag: b'L',
                data: &long_name,
                link: b"",
            },
            SizeField::Octal,
        );
        let long_link = "/".to_string() + &"t".repeat(300);
        append(
            &mut bytes,
            &Entry {
                name: b"././@LongLink",
                typeflag: b'K',
                data: long_link.as_bytes(),
                link: b"",
            },
            SizeField::Octal,
        );
        append(
            &mut bytes,
            &Entry {
                name: b"cut",
                typeflag: b'2',
                data: b"",
                link: b"cut-target",
            },
            SizeField::Octal,
        );
        append(&mut bytes, &file("after", b"zz"), SizeField::Octal);
        bytes.extend_from_slice(&[0; 1024]);

        let got = parse_all(&bytes, "", ChecksumAlgorithm::Crc32c).unwrap();
        let paths: Vec<String> = got.members.iter().map(|m| m.path.to_string()).collect();
        assert_eq!(paths, vec![long.clone(), gnu_name, "after".into()]);
        assert_eq!(got.files[0].size, 5);
        assert_eq!(
            got.files[0].checksum,
            checksum(ChecksumAlgorithm::Crc32c, b"hello")
        );
        assert_eq!(
            got.members[1].kind,
            MemberKind::Symlink {
                target: BackupPath::from(long_link.as_str())
            }
        );
        assert_eq!(got.files[1].path.to_string(), "after");
        assert_eq!(got.files[1].size, 2);
    }

    #[test]
    fn malformed_pax_records_are_errors() {
        for (body, reason) in [
            (&b"abc"[..], "no length"),
            (b"99 path=x\n", "length is invalid"),
            (b"3 x\n", "newline"),
            (b"9 path=x!", "newline"),
            (b"7 path\n", "no '='"),
            (b"11 size=1x\n", "decimal"),
        ] {
            let bytes = archive(&[
                Entry {
                    name: b"pax",
                    typeflag: b'x',
                    data: body,
                    link: b"",
                },
                file("f", b""),
            ]);
            let err = parse_all(&bytes, "", ChecksumAlgorithm::Crc32c).unwrap_err();
            assert!(
                matches!(&err, TarError::BadPax { offset: 0, reason: r, .. } if r.contains(reason)),
                "{body:?}: {err}"
            );
        }
        let mut bytes = header(b"pax", b'x', MAX_EXTENSION_LEN + 1, SizeField::Octal, b"").to_vec();
        bytes.extend_from_slice(&[b'1'; 600]);
        assert!(matches!(
            parse_all(&bytes, "", ChecksumAlgorithm::None),
            Err(TarError::ExtensionTooLarge { size, .. }) if size == MAX_EXTENSION_LEN + 1
        ));
    }

    #[test]
    fn other_member_kinds_are_recorded_and_skipped() {
        let bytes = archive(&[
            Entry {
                name: b"hard",
                typeflag: b'1',
                data: b"",
                link: b"base/1/1259",
            },
            Entry {
                name: b"fifo",
                typeflag: b'6',
                data: b"",
                link: b"",
            },
            Entry {
                name: b"dir-with-data/",
                typeflag: b'5',
                data: &[9; 600],
                link: b"",
            },
            file("f", b"1"),
        ]);
        let got = parse_all(&bytes, "", ChecksumAlgorithm::None).unwrap();
        assert_eq!(
            got.members[0].kind,
            MemberKind::HardLink {
                target: "base/1/1259".into()
            }
        );
        assert_eq!(got.members[1].kind, MemberKind::Other { typeflag: b'6' });
        assert_eq!(got.members[2].size, 600);
        assert_eq!(got.files.len(), 1);
        assert_eq!(got.files[0].path.to_string(), "f");
    }

    #[test]
    fn corrupt_headers_are_errors_naming_the_member() {
        let good = sample();
        let mut bad = good.clone();
        bad[3] ^= 1; // "backup_label" name, checksum no longer matches
        let err = parse_all(&bad, "", ChecksumAlgorithm::Crc32c).unwrap_err();
        assert!(
            matches!(&err, TarError::HeaderChecksum { offset: 0, name, .. } if name == "bacjup_label"),
            "{err}"
        );
        assert!(err.to_string().contains("test.tar"), "{err}");

        let mut bad = good.clone();
        bad[MAGIC.start] = b'X';
        assert!(matches!(
            parse_all(&bad, "", ChecksumAlgorithm::Crc32c),
            Err(TarError::NotUstar { offset: 0, .. })
        ));

        let mut h = header(b"base/1/2600", b'0', 0, SizeField::Octal, b"");
        h[SIZE][3] = b'9';
        h[CHKSUM].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[CHKSUM][..7].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let err = parse_all(&h, "", ChecksumAlgorithm::Crc32c).unwrap_err();
        assert!(
            matches!(&err, TarError::BadNumber { member, field: "size", .. } if member == "base/1/2600"),
            "{err}"
        );
        assert!(err.to_string().contains("base/1/2600"));

        let empty = header(b"", b'0', 0, SizeField::Octal, b"");
        assert!(matches!(
            parse_all(&empty, "", ChecksumAlgorithm::Crc32c),
            Err(TarError::EmptyName { offset: 0, .. })
        ));
    }

    #[test]
    fn end_of_archive_rules() {
        let good = sample();
        let body = &good[..good.len() - 2 * BLOCK_LEN];

        // PostgreSQL <= 14 leaves the end blocks off: incomplete until the caller adds them.
        let err = parse_all(body, "", ChecksumAlgorithm::Crc32c).unwrap_err();
        assert!(
            err.to_string().contains("after member global/pg_control"),
            "{err}"
        );
        let mut terminated = body.to_vec();
        terminated.extend_from_slice(&[0; 2 * BLOCK_LEN]);
        assert!(parse_all(&terminated, "", ChecksumAlgorithm::Crc32c).is_ok());

        // One zero block is not enough; zero padding after the end is fine (tar pads to 10 kB).
        let mut one = body.to_vec();
        one.extend_from_slice(&[0; BLOCK_LEN]);
        assert!(matches!(
            parse_all(&one, "", ChecksumAlgorithm::Crc32c),
            Err(TarError::Truncated { place, .. }) if place.contains("end-of-archive")
        ));
        let mut padded = good.clone();
        let record_len = good.len().next_multiple_of(10240);
        padded.resize(record_len, 0);
        assert_eq!(
            parse_all(&padded, "", ChecksumAlgorithm::Crc32c)
                .unwrap()
                .bytes,
            record_len as u64
        );

        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0, 0, 1]);
        assert!(matches!(
            parse_all(&trailing, "", ChecksumAlgorithm::Crc32c),
            Err(TarError::DataAfterEnd { offset, .. }) if offset == good.len() as u64 + 2
        ));

        // A zero block, then a header.
        let mut lone = vec![0; BLOCK_LEN];
        lone.extend_from_slice(&good);
        assert!(matches!(
            parse_all(&lone, "", ChecksumAlgorithm::Crc32c),
            Err(TarError::LoneZeroBlock { offset: 0, .. })
        ));

        assert!(matches!(
            parse_all(b"", "", ChecksumAlgorithm::Crc32c),
            Err(TarError::Truncated { place, .. }) if place == "before its first member"
        ));
    }

    #[test]
    fn every_truncation_is_reported() {
        let good = real_tablespace_tar(15);
        let end = good.len() - 2 * BLOCK_LEN; // the archive is complete only with both blocks
        for cut in (0..good.len())
            .step_by(37)
            .chain([end - 1, end, end + BLOCK_LEN])
        {
            let err = parse_all(&good[..cut], "", ChecksumAlgorithm::Crc32c).unwrap_err();
            assert!(
                matches!(err, TarError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
        let err =
            parse_all(&good[..BLOCK_LEN * 3 + 100], "", ChecksumAlgorithm::Crc32c).unwrap_err();
        assert_eq!(
            err.to_string(),
            "archive test.tar is truncated inside member PG_15_202209061/5/16389: 8092 of its 8192 bytes are missing; the archive is incomplete"
        );
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        for typeflag in [b'5', b'0', b'g', b'x'] {
            let mut h = header(b"d/", typeflag, 0, SizeField::Base256, b"");
            h[SIZE][4..].fill(0xff); // u64::MAX: size + padding would overflow
            h[CHKSUM].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
            h[CHKSUM][..7].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            let err = parse_all(&h, "", ChecksumAlgorithm::Crc32c).unwrap_err();
            assert!(
                matches!(
                    err,
                    TarError::Truncated { .. } | TarError::ExtensionTooLarge { .. }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut bad = sample();
        bad[0] ^= 1;
        let mut t = TarStream::new("base.tar", "", ChecksumAlgorithm::Crc32c);
        let first = t.feed(&bad[..600]).unwrap_err();
        assert_eq!(t.feed(&[0; 1024]), Err(first.clone()));
        assert_eq!(t.finish().unwrap_err(), first);
    }

    #[test]
    fn real_postgresql_tablespace_archives() {
        for (major, version_dir) in [(15, "PG_15_202209061"), (18, "PG_18_202506291")] {
            let bytes = real_tablespace_tar(major);
            let got = parse_all(&bytes, "pg_tblspc/16384", ChecksumAlgorithm::Crc32c).unwrap();
            let paths: Vec<String> = got.members.iter().map(|m| m.path.to_string()).collect();
            let p = |rest: &str| format!("pg_tblspc/16384/{version_dir}{rest}");
            assert_eq!(
                paths,
                [p(""), p("/5"), p("/5/16389"), p("/5/16388"), p("/5/16385")]
            );
            assert_eq!(got.files.len(), 3);
            assert_eq!(got.members[0].mode, 0o700);
            assert_eq!(got.bytes, bytes.len() as u64);
        }
    }

    fn byte_chunks() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(0usize..30_000, 0..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_chunking_gives_the_same_result(cuts in byte_chunks()) {
            for bytes in [sample(), real_tablespace_tar(18)] {
                let whole = parse_all(&bytes, "", ChecksumAlgorithm::Crc32c).unwrap();
                prop_assert_eq!(parse_chunked(&bytes, &cuts).unwrap(), whole);
            }
        }

        #[test]
        fn byte_at_a_time_chunks(step in 1usize..700) {
            let bytes = real_tablespace_tar(15);
            let cuts: Vec<usize> = (0..bytes.len()).step_by(step).collect();
            prop_assert_eq!(
                parse_chunked(&bytes, &cuts).unwrap(),
                parse_all(&bytes, "", ChecksumAlgorithm::Crc32c).unwrap()
            );
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4096), cuts in byte_chunks()) {
            let _ = parse_chunked(&bytes, &cuts);
            // Garbage that looks like a header at the start.
            let mut framed = header(b"x", b'0', 0, SizeField::Octal, b"").to_vec();
            framed.extend_from_slice(&bytes);
            let _ = parse_chunked(&framed, &cuts);
        }

        #[test]
        fn random_headers_with_valid_checksums_never_panic(
            blocks in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), BLOCK_LEN), prop::sample::select(&b"0125xgLK7\0"[..]), 0usize..1500),
                1..6,
            ),
            cuts in byte_chunks(),
        ) {
            let mut bytes = Vec::new();
            for (mut h, typeflag, data_len) in blocks {
                h[TYPEFLAG] = typeflag;
                h[MAGIC].copy_from_slice(b"ustar\x0000");
                h[MODE].copy_from_slice(b"0000644\0");
                h[SIZE].copy_from_slice(format!("{data_len:011o}\0").as_bytes());
                h[CHKSUM].copy_from_slice(b"        ");
                let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
                h[CHKSUM][..7].copy_from_slice(format!("{sum:06o}\0").as_bytes());
                bytes.extend_from_slice(&h);
                bytes.extend((0..data_len).map(|i| (i % 10) as u8 + b'0'));
            }
            let _ = parse_chunked(&bytes, &cuts);
        }

        #[test]
        fn corrupted_real_archives_never_panic(
            flips in prop::collection::vec((0usize..19_968, any::<u8>()), 1..8),
            cut in 0usize..19_968,
            cuts in byte_chunks(),
        ) {
            let mut bytes = real_tablespace_tar(15);
            for (at, value) in flips {
                bytes[at] = value;
            }
            let _ = parse_chunked(&bytes, &cuts);
            let _ = parse_chunked(&bytes[..cut], &cuts);
        }
    }
}
