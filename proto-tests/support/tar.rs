//! A minimal reader of the ustar archives PostgreSQL writes (plain ustar headers, names in
//! the name and prefix fields, octal sizes): the members of a stored archive with where their
//! data starts, and a streaming walker that tells, chunk by chunk, which bytes are a regular
//! file's data. Tests use them to corrupt one byte of one file, in a stored archive or in a
//! BASE_BACKUP stream. Independent of walden's own tar parser on purpose.

/// The size of a tar block.
pub const BLOCK: usize = 512;

/// One archive member, from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The path (ustar prefix + `/` + name when there is a prefix).
    pub name: String,
    /// The data size in bytes.
    pub size: u64,
    /// The type flag (`b'0'` or `0` regular file, `b'5'` directory, `b'2'` symlink, ...).
    pub typeflag: u8,
}

impl Member {
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.typeflag == b'0' || self.typeflag == 0
    }
}

/// Parses one header block; `None` for an all-zero block (end of archive) or one that is not
/// a header (no ustar magic, bad size).
pub fn parse_header(block: &[u8]) -> Option<Member> {
    let block = block.get(..BLOCK)?;
    if block.iter().all(|&b| b == 0) || block.get(257..262)? != b"ustar" {
        return None;
    }
    let text = |range: std::ops::Range<usize>| {
        let field = block.get(range).unwrap_or_default();
        let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        String::from_utf8_lossy(&field[..end]).into_owned()
    };
    let name = text(0..100);
    let prefix = text(345..500);
    let size_field = text(124..136);
    let size =
        u64::from_str_radix(size_field.trim_matches(|c: char| c == ' ' || c == '\0'), 8).ok()?;
    Some(Member {
        name: if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        },
        size,
        typeflag: *block.get(156)?,
    })
}

/// The padded length of `size` data bytes.
fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// Every member of a whole archive with the offset of its first data byte, up to the end
/// marker (or the first block that is not a header).
pub fn members(tar: &[u8]) -> Vec<(Member, usize)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(member) = tar.get(at..).and_then(parse_header) {
        let data = at + BLOCK;
        let Ok(next) = usize::try_from(padded(member.size)).map(|p| data + p) else {
            break;
        };
        out.push((member, data));
        at = next;
    }
    out
}

/// Flips (XOR 0xFF) the middle data byte of the first regular file in `tar` for which `pick`
/// is true; returns the member, or `None` when no member matches.
pub fn flip_file_byte(tar: &mut [u8], pick: impl Fn(&Member) -> bool) -> Option<Member> {
    let (member, data) = members(tar)
        .into_iter()
        .find(|(m, _)| m.is_file() && m.size > 0 && pick(m))?;
    let at = data + usize::try_from(member.size / 2).ok()?;
    *tar.get_mut(at)? ^= 0xFF;
    Some(member)
}

/// Walks an archive that arrives in chunks of any size.
#[derive(Debug, Default)]
pub struct TarWalker {
    /// The bytes of a header block collected so far.
    header: Vec<u8>,
    /// The member whose data is being passed, if any.
    member: Option<Member>,
    /// The offset in the member's data of the next data byte.
    offset: u64,
    /// Data bytes of the current member still to come.
    data_left: u64,
    /// Padding bytes after them.
    pad_left: u64,
    /// The end marker (or something that is not a header) was seen.
    ended: bool,
}

impl TarWalker {
    /// Walks the next `chunk` of the archive, calling `on_data(member, offset, bytes)` for
    /// each run of a regular file's data in it (`offset`: of `bytes[0]` within the file).
    pub fn feed(&mut self, chunk: &mut [u8], mut on_data: impl FnMut(&Member, u64, &mut [u8])) {
        let mut at = 0usize;
        while at < chunk.len() && !self.ended {
            let rest = chunk.len() - at;
            if self.data_left > 0 {
                let n = rest.min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                if let Some(m) = self.member.as_ref().filter(|m| m.is_file()) {
                    on_data(m, self.offset, &mut chunk[at..at + n]);
                }
                self.offset += n as u64;
                self.data_left -= n as u64;
                at += n;
            } else if self.pad_left > 0 {
                let n = rest.min(usize::try_from(self.pad_left).unwrap_or(usize::MAX));
                self.pad_left -= n as u64;
                at += n;
            } else {
                let n = rest.min(BLOCK - self.header.len());
                self.header.extend_from_slice(&chunk[at..at + n]);
                at += n;
                if self.header.len() == BLOCK {
                    match parse_header(&self.header) {
                        Some(m) => {
                            self.data_left = m.size;
                            self.pad_left = padded(m.size) - m.size;
                            self.offset = 0;
                            self.member = Some(m);
                        }
                        None => self.ended = true,
                    }
                    self.header.clear();
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ustar header for a regular file (or `typeflag`) of `size` bytes.
    pub(crate) fn header(name: &str, size: u64, typeflag: u8) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    /// A terminated archive of `(name, data)` regular files, with a directory first.
    pub(crate) fn archive(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut tar = header("base", 0, b'5');
        for (name, data) in files {
            tar.extend(header(name, data.len() as u64, b'0'));
            tar.extend_from_slice(data);
            tar.resize(tar.len().next_multiple_of(BLOCK), 0);
        }
        tar.extend([0u8; 2 * BLOCK]);
        tar
    }

    fn sample() -> Vec<u8> {
        archive(&[
            ("backup_label", b"START WAL LOCATION".to_vec()),
            (
                "base/5/1259",
                (0..20_000u32).map(|i| (i % 7) as u8).collect(),
            ),
            ("base/5/empty", Vec::new()),
            ("global/pg_control", vec![9u8; 8192]),
        ])
    }

    #[test]
    fn lists_members_and_data_offsets() {
        let tar = sample();
        let m = members(&tar);
        let names: Vec<&str> = m.iter().map(|(m, _)| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "base",
                "backup_label",
                "base/5/1259",
                "base/5/empty",
                "global/pg_control"
            ]
        );
        assert_eq!(m[2].0.size, 20_000);
        assert_eq!(m[2].1, 4 * BLOCK);
        assert_eq!(tar[m[2].1 + 8], 1);
        assert!(!m[0].0.is_file() && m[1].0.is_file());
    }

    #[test]
    fn flips_the_middle_byte_of_the_picked_file() {
        let orig = sample();
        let mut tar = orig.clone();
        let m = flip_file_byte(&mut tar, |m| m.name.starts_with("base/") && m.size >= 8192);
        assert_eq!(m.map(|m| m.name).as_deref(), Some("base/5/1259"));
        let diffs: Vec<usize> = (0..tar.len()).filter(|&i| tar[i] != orig[i]).collect();
        assert_eq!(diffs, vec![4 * BLOCK + 10_000]);
        assert!(flip_file_byte(&mut tar, |m| m.name == "nothing").is_none());
    }

    #[test]
    fn walker_sees_the_same_data_for_any_chunking() {
        let tar = sample();
        for chunk in [1, 3, 511, 512, 513, 4096, tar.len()] {
            let mut walker = TarWalker::default();
            let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
            let mut copy = tar.clone();
            for piece in copy.chunks_mut(chunk) {
                walker.feed(piece, |m, off, bytes| {
                    if seen.last().is_none_or(|(n, _)| *n != m.name) {
                        seen.push((m.name.clone(), Vec::new()));
                    }
                    let data = &mut seen.last_mut().unwrap().1;
                    assert_eq!(data.len() as u64, off, "chunk {chunk}");
                    data.extend_from_slice(bytes);
                });
            }
            let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                ["backup_label", "base/5/1259", "global/pg_control"],
                "chunk {chunk}"
            );
            assert_eq!(seen[1].1.len(), 20_000);
            assert_eq!(seen[2].1, vec![9u8; 8192]);
            assert!(walker.ended, "chunk {chunk}");
        }
    }
}
