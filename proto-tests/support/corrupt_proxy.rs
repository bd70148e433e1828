//! A loopback TCP proxy that corrupts WAL or a base backup on its way to a client: it forwards
//! the client's bytes untouched and parses the server's message stream (type byte + Int32
//! length), and when armed flips one byte, once: in the WAL payload of one CopyData `w`
//! (XLogData) message, or in one file's data inside a BASE_BACKUP archive (PostgreSQL 15+
//! framing: CopyData `n` starts an archive, `d` carries its bytes, `m` starts the manifest).
//!
//! Use it with `sslmode=disable` (it does not answer an SSLRequest itself; the server's `N` is
//! a bare byte outside the message framing, so TLS or GSS negotiation is not supported).
//! Bounded: at most [`MAX_CONNECTIONS`] connections at a time, messages up to
//! [`MAX_MESSAGE`] bytes (a longer one closes the connection).

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use walden::wal::Lsn;

use super::tar::TarWalker;

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest backend message passed on (XLogData is at most ~128 KiB + 25).
pub const MAX_MESSAGE: usize = 16 << 20;
/// `w` + dataStart + walEnd + sendTime: where the WAL starts in a CopyData body.
const XLOGDATA_HEADER: usize = 25;

/// Which WAL byte to flip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The byte at exactly this LSN, when a message carries it.
    AtLsn(Lsn),
    /// The middle byte of the first occurrence of this pattern (e.g. a marker string the test
    /// wrote into a table row, so the flipped byte is inside a record's data).
    Marker(Vec<u8>),
    /// The middle data byte of the first regular file of at least `min_size` bytes whose
    /// path starts with `path_prefix`, in the uncompressed archive named `archive` (e.g.
    /// `base.tar`) of a BASE_BACKUP stream.
    FileData {
        archive: String,
        path_prefix: String,
        min_size: u64,
    },
}

/// Where a [`Trigger::FileData`] flip landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlippedFile {
    /// The archive (`base.tar`, `16384.tar`).
    pub archive: String,
    /// The member path inside it.
    pub member: String,
    /// The offset of the flipped byte in the member's data.
    pub offset: u64,
}

/// The state of one connection's BASE_BACKUP stream, kept for every message whether or not
/// the proxy is armed (so that arming mid-stream still knows where the files are).
#[derive(Debug, Default)]
pub struct BackupTracker {
    /// The current archive and its walker; `None` outside archives (before the first, in the
    /// manifest).
    archive: Option<(String, TarWalker)>,
}

impl BackupTracker {
    /// Follows one backend message; when `trigger` is a [`Trigger::FileData`] whose byte this
    /// message carries, flips it (XOR 0xFF) and says where.
    pub fn follow(&mut self, msg: &mut [u8], trigger: Option<&Trigger>) -> Option<FlippedFile> {
        if msg.first() != Some(&b'd') {
            return None;
        }
        let body = msg.get_mut(5..)?;
        match body.first()? {
            b'n' => {
                let name = body.get(1..)?.split(|&b| b == 0).next()?;
                let name = String::from_utf8_lossy(name).into_owned();
                self.archive = Some((name, TarWalker::default()));
                None
            }
            b'm' => {
                self.archive = None;
                None
            }
            b'd' => {
                let (name, walker) = self.archive.as_mut()?;
                if !name.ends_with(".tar") {
                    return None; // compressed: no tar to walk
                }
                let want = match trigger {
                    Some(Trigger::FileData {
                        archive,
                        path_prefix,
                        min_size,
                    }) if archive == name => Some((path_prefix.as_str(), *min_size)),
                    _ => None,
                };
                let mut flipped = None;
                walker.feed(body.get_mut(1..)?, |m, off, bytes| {
                    let Some((prefix, min)) = want else { return };
                    if flipped.is_some() || !m.name.starts_with(prefix) || m.size < min {
                        return;
                    }
                    let target = m.size / 2;
                    if let Some(i) = target
                        .checked_sub(off)
                        .and_then(|i| usize::try_from(i).ok())
                        .filter(|&i| i < bytes.len())
                    {
                        bytes[i] ^= 0xFF;
                        flipped = Some(FlippedFile {
                            archive: name.clone(),
                            member: m.name.clone(),
                            offset: target,
                        });
                    }
                });
                flipped
            }
            _ => None,
        }
    }
}

/// Splits a backend byte stream into whole messages (type byte + Int32 length incl. itself).
#[derive(Debug, Default)]
pub struct MessageSplitter {
    buf: Vec<u8>,
}

/// A stream that does not follow the message framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError(pub String);

impl MessageSplitter {
    /// Adds `data` and returns every message now complete, in order.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, FramingError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(len_bytes) = self.buf.get(1..5) {
            let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
            let len = usize::try_from(len)
                .ok()
                .filter(|l| (4..=MAX_MESSAGE).contains(l))
                .ok_or_else(|| FramingError(format!("bad message length {len}")))?;
            if self.buf.len() < len + 1 {
                break;
            }
            let rest = self.buf.split_off(len + 1);
            out.push(std::mem::replace(&mut self.buf, rest));
        }
        Ok(out)
    }
}

/// If `msg` is a CopyData XLogData message holding the byte `trigger` wants, flips that byte
/// (XOR 0xFF) and returns its LSN.
pub fn corrupt_xlogdata(msg: &mut [u8], trigger: &Trigger) -> Option<Lsn> {
    if msg.first() != Some(&b'd') || msg.get(5) != Some(&b'w') {
        return None;
    }
    let start = u64::from_be_bytes(msg.get(6..14)?.try_into().ok()?);
    let wal_at = 5 + XLOGDATA_HEADER;
    let wal = msg.get_mut(wal_at..)?;
    let offset = match trigger {
        Trigger::AtLsn(lsn) => {
            let off = usize::try_from(lsn.0.checked_sub(start)?).ok()?;
            (off < wal.len()).then_some(off)?
        }
        Trigger::Marker(pattern) if !pattern.is_empty() => {
            wal.windows(pattern.len())
                .position(|w| w == pattern.as_slice())?
                + pattern.len() / 2
        }
        Trigger::Marker(_) | Trigger::FileData { .. } => return None,
    };
    let byte = wal.get_mut(offset)?;
    *byte ^= 0xFF;
    Some(Lsn(start + offset as u64))
}

#[derive(Debug, Default)]
struct Shared {
    trigger: Mutex<Option<Trigger>>,
    flipped: Mutex<Option<Lsn>>,
    flipped_file: Mutex<Option<FlippedFile>>,
    stop: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
}

/// The running proxy: listens on 127.0.0.1:`port()` and forwards to 127.0.0.1:`upstream`.
#[derive(Debug)]
pub struct CorruptProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl CorruptProxy {
    /// Starts a proxy in front of the server on 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> CorruptProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy on 127.0.0.1");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || accept_loop(&listener, upstream, &s));
        CorruptProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Arms the proxy: the next WAL or backup byte matching `trigger` is flipped, once.
    pub fn arm(&self, trigger: Trigger) {
        *lock(&self.shared.trigger) = Some(trigger);
    }

    /// The LSN of the byte flipped, once it happened.
    pub fn flipped(&self) -> Option<Lsn> {
        *lock(&self.shared.flipped)
    }

    /// Where a [`Trigger::FileData`] flip landed, once it happened.
    pub fn flipped_file(&self) -> Option<FlippedFile> {
        lock(&self.shared.flipped_file).clone()
    }
}

impl Drop for CorruptProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for s in lock(&self.shared.sockets).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: &TcpListener, upstream: u16, shared: &Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        workers.retain(|w| !w.is_finished());
        match listener.accept() {
            Ok((client, _)) => {
                if workers.len() >= MAX_CONNECTIONS * 2 {
                    continue; // dropped: too many connections
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                workers.extend(serve(client, server, shared));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    for s in lock(&shared.sockets).drain(..) {
        let _ = s.shutdown(Shutdown::Both);
    }
    for w in workers {
        let _ = w.join();
    }
}

/// Two threads: client → server verbatim, server → client message by message.
fn serve(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    let clones = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    );
    let (Ok(mut c_read), Ok(mut s_write), Ok(c_keep), Ok(s_keep)) = clones else {
        return Vec::new();
    };
    lock(&shared.sockets).extend([c_keep, s_keep]);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Both);
        let _ = c_read.shutdown(Shutdown::Both);
    });
    let s = Arc::clone(shared);
    let down = std::thread::spawn(move || {
        let (mut s_read, mut c_write) = (server, client);
        let mut splitter = MessageSplitter::default();
        let mut backup = BackupTracker::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match s_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Ok(messages) = splitter.push(&buf[..n]) else {
                break;
            };
            let mut out = Vec::with_capacity(n);
            for mut msg in messages {
                let mut trigger = lock(&s.trigger);
                if let Some(t) = trigger.as_ref()
                    && let Some(lsn) = corrupt_xlogdata(&mut msg, t)
                {
                    *trigger = None;
                    *lock(&s.flipped) = Some(lsn);
                }
                if let Some(file) = backup.follow(&mut msg, trigger.as_ref()) {
                    *trigger = None;
                    *lock(&s.flipped_file) = Some(file);
                }
                drop(trigger);
                out.extend_from_slice(&msg);
            }
            if c_write.write_all(&out).is_err() {
                break;
            }
        }
        let _ = c_write.shutdown(Shutdown::Both);
        let _ = s_read.shutdown(Shutdown::Both);
    });
    vec![up, down]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlogdata(start: u64, wal: &[u8]) -> Vec<u8> {
        let mut body = vec![b'w'];
        body.extend_from_slice(&start.to_be_bytes());
        body.extend_from_slice(&(start + wal.len() as u64).to_be_bytes());
        body.extend_from_slice(&7u64.to_be_bytes());
        body.extend_from_slice(wal);
        message(b'd', &body)
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(i32::try_from(body.len() + 4).unwrap()).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn stream() -> Vec<u8> {
        let wal: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let mut s = message(b'R', &0i32.to_be_bytes());
        s.extend(message(b'Z', b"I"));
        s.extend(message(b'd', b"k\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"));
        s.extend(xlogdata(0x0100_0000, &wal));
        s.extend(xlogdata(0x0100_0000 + 3000, &wal));
        s
    }

    /// Splits at every position pattern in `cuts`, corrupting as the proxy does.
    fn run(input: &[u8], chunk: usize, trigger: &Trigger) -> (Vec<u8>, Vec<Lsn>) {
        let mut sp = MessageSplitter::default();
        let (mut out, mut flips) = (Vec::new(), Vec::new());
        let mut armed = true;
        for piece in input.chunks(chunk) {
            for mut m in sp.push(piece).unwrap() {
                if armed && let Some(l) = corrupt_xlogdata(&mut m, trigger) {
                    flips.push(l);
                    armed = false;
                }
                out.extend(m);
            }
        }
        assert!(sp.buf.is_empty(), "bytes left over");
        (out, flips)
    }

    #[test]
    fn splitter_keeps_bytes_and_boundaries_for_any_chunking() {
        let input = stream();
        for chunk in [1, 2, 5, 7, 100, 3030, input.len()] {
            let mut sp = MessageSplitter::default();
            let mut msgs = Vec::new();
            for piece in input.chunks(chunk) {
                msgs.extend(sp.push(piece).unwrap());
            }
            assert_eq!(msgs.concat(), input, "chunk {chunk}");
            let tags: Vec<u8> = msgs.iter().map(|m| m[0]).collect();
            assert_eq!(tags, b"RZddd", "chunk {chunk}");
        }
    }

    #[test]
    fn flips_exactly_the_byte_at_the_lsn_in_the_right_message() {
        let input = stream();
        let target = Lsn(0x0100_0000 + 3000 + 1234);
        for chunk in [1, 9, 4096] {
            let (out, flips) = run(&input, chunk, &Trigger::AtLsn(target));
            assert_eq!(flips, vec![target]);
            let diffs: Vec<usize> = (0..input.len()).filter(|&i| input[i] != out[i]).collect();
            // The second XLogData starts after R(9) Z(6) k(23) and the first XLogData.
            let second = 9 + 6 + 23 + (5 + 25 + 3000);
            assert_eq!(diffs, vec![second + 5 + 25 + 1234]);
            assert_eq!(out[diffs[0]], input[diffs[0]] ^ 0xFF);
        }
    }

    #[test]
    fn marker_flips_the_middle_of_its_first_occurrence_once() {
        let mut wal = vec![0u8; 500];
        wal.extend_from_slice(b"MARKER-MARKER");
        wal.extend(vec![0u8; 100]);
        let mut input = xlogdata(0x2000, &wal);
        input.extend(xlogdata(0x2000 + wal.len() as u64, &wal));
        let (out, flips) = run(&input, 3, &Trigger::Marker(b"MARKER-MARKER".to_vec()));
        assert_eq!(flips, vec![Lsn(0x2000 + 500 + 6)]);
        let diffs: Vec<usize> = (0..input.len()).filter(|&i| input[i] != out[i]).collect();
        assert_eq!(diffs, vec![30 + 506]);
    }

    #[test]
    fn leaves_other_messages_and_missing_lsns_alone() {
        let input = stream();
        for trigger in [
            Trigger::AtLsn(Lsn(0x0100_0000 + 6000)),
            Trigger::AtLsn(Lsn(0x00FF_FFFF)),
            Trigger::Marker(b"not there".to_vec()),
            Trigger::Marker(Vec::new()),
        ] {
            let (out, flips) = run(&input, 11, &trigger);
            assert!(flips.is_empty(), "{trigger:?}");
            assert_eq!(out, input, "{trigger:?}");
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut sp = MessageSplitter::default();
        assert!(sp.push(&[b'd', 0, 0, 0, 3]).is_err());
        let mut sp = MessageSplitter::default();
        assert!(sp.push(&[b'd', 0x7F, 0xFF, 0xFF, 0xFF]).is_err());
        let mut sp = MessageSplitter::default();
        assert_eq!(sp.push(&[b'd', 0, 0, 0]).unwrap(), Vec::<Vec<u8>>::new());
    }

    /// A 15+ BASE_BACKUP stream: a tablespace archive and base.tar (`tar` in 1000-byte
    /// CopyData `d` messages with a progress message between them), then the manifest.
    fn backup_stream(tar: &[u8]) -> Vec<u8> {
        let mut s = message(b'H', &[0, 0, 0]);
        s.extend(message(b'd', b"n16384.tar\0/ts\0"));
        for piece in tar.chunks(700) {
            s.extend(message(b'd', &[b"d", piece].concat()));
        }
        s.extend(message(b'd', b"nbase.tar\0\0"));
        for piece in tar.chunks(1000) {
            s.extend(message(b'd', &[b"d", piece].concat()));
            s.extend(message(b'd', b"p\0\0\0\0\0\0\x10\0"));
        }
        s.extend(message(b'd', b"m"));
        s.extend(message(b'd', &[b"d", &tar[..3000]].concat()));
        s.extend(message(b'c', b""));
        s
    }

    #[test]
    fn flips_one_byte_of_the_chosen_file_in_the_chosen_archive() {
        use crate::support::tar::tests::archive;
        let tar = archive(&[
            ("backup_label", vec![1u8; 300]),
            ("base/1/1259", vec![2u8; 9000]),
            ("base/5/2608", vec![3u8; 20_000]),
        ]);
        let input = backup_stream(&tar);
        let trigger = Trigger::FileData {
            archive: "base.tar".into(),
            path_prefix: "base/".into(),
            min_size: 10_000,
        };
        for chunk in [1, 17, 1000, input.len()] {
            let mut sp = MessageSplitter::default();
            let mut tracker = BackupTracker::default();
            let (mut out, mut flips) = (Vec::new(), Vec::new());
            for piece in input.chunks(chunk) {
                for mut m in sp.push(piece).unwrap() {
                    let armed = flips.is_empty().then_some(&trigger);
                    flips.extend(tracker.follow(&mut m, armed));
                    assert_eq!(corrupt_xlogdata(&mut m, &trigger), None);
                    out.extend(m);
                }
            }
            assert_eq!(
                flips,
                vec![FlippedFile {
                    archive: "base.tar".into(),
                    member: "base/5/2608".into(),
                    offset: 10_000,
                }],
                "chunk {chunk}"
            );
            let diffs: Vec<usize> = (0..input.len()).filter(|&i| input[i] != out[i]).collect();
            assert_eq!(diffs.len(), 1, "chunk {chunk}");
            assert_eq!(out[diffs[0]], 3 ^ 0xFF);
            // It is in the second archive: after the whole first one.
            let base_at = input.windows(9).position(|w| w == b"nbase.tar").unwrap();
            assert!(diffs[0] > base_at, "chunk {chunk}");
        }
        // Nothing matches: nothing changes.
        let mut tracker = BackupTracker::default();
        let mut sp = MessageSplitter::default();
        let none = Trigger::FileData {
            archive: "base.tar.zst".into(),
            path_prefix: "base/".into(),
            min_size: 0,
        };
        for mut m in sp.push(&input).unwrap() {
            assert_eq!(tracker.follow(&mut m, Some(&none)), None);
        }
    }
}
