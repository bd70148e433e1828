//! A physical replication stream driven by blocking calls from one thread: the receiver's
//! streaming phase, where every WAL byte is read, verified, written and (in synchronous mode)
//! fsynced and acknowledged without a hand-off between threads.
//!
//! [`Connection::into_copy_stream`](super::Connection::into_copy_stream) takes the socket out
//! of the async runtime once `START_REPLICATION` entered CopyBoth. From then on nothing wakes
//! the process unless the caller reads ([`CopyStream::read`]): a caller that reads only when
//! it is ready for more lets the kernel gather what the server sends meanwhile, and takes it
//! all at once. Waiting for the server is a blocking read where the socket allows it (plain
//! TCP and Unix sockets, with a receive timeout), so a synchronous commit costs one system
//! call to receive rather than a poll and a read. The stream ends with the connection: after
//! the end of a timeline or [`CopyStream::stop`], open a new one.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use rustix::event::{PollFd, PollFlags, Timespec};

use super::connection::filter_frame;
use super::error::{Error, ServerError};
use super::frame::{self, Frame};
use super::stream::{CopyEnd, ServerMessage, StatusUpdate, StreamEvent};

/// The socket under a [`CopyStream`]: plain sockets block (with timeouts, see
/// [`SyncIo::prepare`]), TLS does not.
pub(super) enum SyncIo {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>),
}

impl SyncIo {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            SyncIo::Tcp(s) => s.as_fd(),
            SyncIo::Unix(s) => s.as_fd(),
            SyncIo::Tls(s) => s.sock.as_fd(),
        }
    }

    /// Decrypted bytes wait inside the TLS layer (the socket may have nothing more).
    fn has_plaintext(&self) -> bool {
        match self {
            SyncIo::Tls(s) => !s.conn.wants_read(),
            _ => false,
        }
    }

    /// Makes a plain socket blocking, waiting at most [`WAIT_SLICE`] for something to read
    /// and [`SEND_TIMEOUT`] for room to send. A TLS socket stays non-blocking: decrypted
    /// records can wait inside rustls, so it is polled.
    fn prepare(&self) -> io::Result<()> {
        match self {
            SyncIo::Tcp(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(WAIT_SLICE))?;
                s.set_write_timeout(Some(SEND_TIMEOUT))
            }
            SyncIo::Unix(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(WAIT_SLICE))?;
                s.set_write_timeout(Some(SEND_TIMEOUT))
            }
            SyncIo::Tls(_) => Ok(()),
        }
    }

    /// Whether a read waits (up to [`WAIT_SLICE`]) for something to arrive.
    fn blocks(&self) -> bool {
        !matches!(self, SyncIo::Tls(_))
    }

    /// Reads into `buf`; with `wait`, a plain socket waits up to [`WAIT_SLICE`] for
    /// something to arrive, otherwise nothing waits (`WouldBlock` when there is nothing).
    fn read(&mut self, buf: &mut [u8], wait: bool) -> io::Result<usize> {
        let flags = rustix::net::RecvFlags::DONTWAIT;
        match self {
            SyncIo::Tcp(s) if wait => s.read(buf),
            SyncIo::Unix(s) if wait => s.read(buf),
            SyncIo::Tcp(s) => Ok(rustix::net::recv(&*s, buf, flags)?.0),
            SyncIo::Unix(s) => Ok(rustix::net::recv(&*s, buf, flags)?.0),
            SyncIo::Tls(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SyncIo::Tcp(s) => s.write(buf),
            SyncIo::Unix(s) => s.write(buf),
            SyncIo::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SyncIo::Tcp(s) => s.flush(),
            SyncIo::Unix(s) => s.flush(),
            SyncIo::Tls(s) => s.flush(),
        }
    }

    /// Waits until the socket is readable (`POLLIN`) or writable, or `timeout` passes.
    fn poll(&self, flags: PollFlags, timeout: Duration) -> io::Result<bool> {
        let fd = self.fd();
        let mut fds = [PollFd::new(&fd, flags)];
        let timeout = Timespec {
            tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// The most read from the socket at once.
const MAX_READ: usize = 256 * 1024;

/// A CopyBoth stream in blocking mode. See the module documentation.
pub struct CopyStream {
    io: SyncIo,
    rbuf: BytesMut,
    wbuf: BytesMut,
    peer: String,
    /// Where the socket is read into (then appended to `rbuf`): allocated and zeroed once,
    /// so a read costs a copy of what arrived rather than clearing room for what might.
    scratch: Vec<u8>,
}

impl CopyStream {
    pub(super) fn new(io: SyncIo, rbuf: BytesMut, peer: String) -> Result<CopyStream, Error> {
        let stream = CopyStream {
            io,
            rbuf,
            wbuf: BytesMut::new(),
            peer,
            scratch: vec![0; MAX_READ],
        };
        stream
            .io
            .prepare()
            .map_err(|source| stream.io_error(source))?;
        Ok(stream)
    }

    /// Where this stream comes from, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Waits up to `timeout` for the server to send something and reads what the socket
    /// holds, up to about `limit` bytes. True when there is something to take with
    /// [`next_event`](Self::next_event) (maybe only part of a message); false when nothing
    /// came in time. The end of the connection is an error.
    pub fn read(&mut self, timeout: Duration, limit: usize) -> Result<bool, Error> {
        if self.has_whole_message() || self.io.has_plaintext() {
            self.read_available(limit, false)?;
            return Ok(true);
        }
        // A blocking read waits WAIT_SLICE at most: exactly right for a longer wait, which
        // the caller's loop resumes; a shorter one is a poll.
        let block = self.io.blocks() && timeout >= WAIT_SLICE;
        if !block {
            let readable = self
                .io
                .poll(PollFlags::IN, timeout)
                .map_err(|source| self.io_error(source))?;
            if !readable {
                return Ok(false);
            }
        }
        Ok(self.read_available(limit, block)? > 0)
    }

    /// A whole message waits in the read buffer (type byte, then a length that counts
    /// itself): it may have come in with the last one read before this stream took over.
    fn has_whole_message(&self) -> bool {
        let Some(len) = self.rbuf.get(1..5) else {
            return false;
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        self.rbuf.len() as u64 > u64::from(len)
    }

    /// Reads what the socket holds, until a read comes back short (TLS: until the socket is
    /// empty) or `limit` bytes were read; with `wait`, the first read waits for something
    /// to arrive (up to [`WAIT_SLICE`]). Returns how many bytes were read; the end of the
    /// connection is an error.
    fn read_available(&mut self, limit: usize, mut wait: bool) -> Result<usize, Error> {
        let mut total = 0;
        while total < limit {
            let n = match self.io.read(&mut self.scratch, wait) {
                Ok(0) => {
                    return Err(self.io_error(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    )));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(source) => return Err(self.io_error(source)),
            };
            wait = false;
            self.rbuf
                .extend_from_slice(self.scratch.get(..n).unwrap_or_default());
            total += n;
            if n < MAX_READ && !matches!(self.io, SyncIo::Tls(_)) {
                // A short read: the socket is most likely empty now, and finding out costs a
                // system call; anything left is taken by the next read. Not with TLS: a
                // short read there is one record, and records already taken from the socket
                // into the TLS layer would not wake the next poll.
                break;
            }
        }
        Ok(total)
    }

    /// The next event among the bytes read so far; `None` when no whole message is there.
    /// At the end of a timeline (the server's CopyDone) this answers CopyDone and reads the
    /// rest of the exchange, waiting for it.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, Error> {
        let Some(frame) = self.next_frame()? else {
            return Ok(None);
        };
        match frame {
            Frame::Message(Message::CopyData(body)) => ServerMessage::parse(body.into_bytes())
                .map(|m| Some(StreamEvent::Message(m)))
                .map_err(|e| self.protocol_error(e.to_string())),
            Frame::Message(Message::CopyDone) => {
                self.send_copy_done()?;
                self.finish(Instant::now() + END_TIMEOUT).map(Some)
            }
            // Server shutdown: "COPY 0" without CopyDone, then ReadyForQuery or EOF.
            Frame::Message(Message::CommandComplete(_)) => Ok(Some(StreamEvent::Ended)),
            Frame::Message(Message::ErrorResponse(body)) => {
                Err(Error::Server(ServerError::from_fields(body.fields())))
            }
            other => Err(self.protocol_error(format!("unexpected {other:?} while streaming"))),
        }
    }

    /// Sends a standby status update and waits until it is on its way.
    pub fn send_status_update(&mut self, update: &StatusUpdate) -> Result<(), Error> {
        self.wbuf.clear();
        frontend::CopyData::new(&update.encode()[..])
            .map_err(|e| self.protocol_error(format!("cannot encode CopyData: {e}")))?
            .write(&mut self.wbuf);
        self.send_wbuf()
    }

    /// Ends streaming from our side: CopyDone, then the server's end of the exchange, for at
    /// most `timeout`. The connection is finished afterwards.
    pub fn stop(&mut self, timeout: Duration) -> Result<(), Error> {
        self.send_copy_done()?;
        self.finish(Instant::now() + timeout).map(drop)
    }

    /// Reads the end of COPY until ReadyForQuery (or the deadline).
    fn finish(&mut self, deadline: Instant) -> Result<StreamEvent, Error> {
        let mut end = CopyEnd::after_copy();
        loop {
            while let Some(frame) = self.next_frame()? {
                if let Some(outcome) = end.feed(frame, &self.peer)? {
                    return outcome;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.io_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer to the end of streaming",
                )));
            }
            self.read(left, MAX_READ)?;
        }
    }

    fn send_copy_done(&mut self) -> Result<(), Error> {
        self.wbuf.clear();
        frontend::copy_done(&mut self.wbuf);
        self.send_wbuf()
    }

    /// The next frame that matters (notices are logged, parameter changes ignored).
    fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        loop {
            let decoded = frame::decode(&mut self.rbuf).map_err(|source| Error::Frame {
                peer: self.peer.clone(),
                source,
            })?;
            let Some(frame) = decoded else {
                return Ok(None);
            };
            if let Some(frame) = filter_frame(frame, &self.peer, None) {
                return Ok(Some(frame));
            }
        }
    }

    /// Writes `wbuf` completely, waiting for room in the socket when it is full.
    fn send_wbuf(&mut self) -> Result<(), Error> {
        // Read the clock only when the socket is full (rare): this runs once per commit.
        let mut deadline = None;
        let mut sent = 0;
        let mut flushed = false;
        while !flushed {
            let result = match self.wbuf.get(sent..) {
                Some(rest) if !rest.is_empty() => self.io.write(rest).map(|n| sent += n),
                _ => self.io.flush().map(|()| flushed = true),
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    let left = deadline
                        .get_or_insert(now + SEND_TIMEOUT)
                        .saturating_duration_since(now);
                    if left.is_zero() {
                        return Err(self.io_error(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the server does not read what we send",
                        )));
                    }
                    self.io
                        .poll(PollFlags::OUT, left)
                        .map_err(|source| self.io_error(source))?;
                }
                Err(source) => return Err(self.io_error(source)),
            }
        }
        Ok(())
    }

    fn io_error(&self, source: io::Error) -> Error {
        Error::Io {
            peer: self.peer.clone(),
            source,
        }
    }

    fn protocol_error(&self, reason: impl Into<String>) -> Error {
        Error::Protocol {
            peer: self.peer.clone(),
            reason: reason.into(),
        }
    }
}

/// The longest wait for the rest of the end-of-timeline exchange.
const END_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait for room in the socket to send a message.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one blocking read waits for the server.
const WAIT_SLICE: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Lsn;
    use bytes::BufMut;

    /// A CopyData message holding an XLogData of `data` at `start`.
    fn xlogdata(start: u64, data: &[u8]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_u8(b'w');
        body.put_u64(start);
        body.put_u64(start + data.len() as u64);
        body.put_i64(0);
        body.put_slice(data);
        let mut msg = vec![b'd'];
        msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    fn pair(buffered: &[u8]) -> (CopyStream, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let stream =
            CopyStream::new(SyncIo::Unix(ours), BytesMut::from(buffered), "test".into()).unwrap();
        (stream, theirs)
    }

    fn wal(event: Option<StreamEvent>) -> (Lsn, Vec<u8>) {
        match event {
            Some(StreamEvent::Message(ServerMessage::XLogData(x))) => (x.start, x.data.to_vec()),
            other => panic!("expected XLogData, got {other:?}"),
        }
    }

    #[test]
    fn a_message_read_before_the_takeover_is_seen_without_waiting() {
        let (mut stream, _server) = pair(&xlogdata(0x1000, b"abc"));
        assert!(stream.read(Duration::from_secs(5), MAX_READ).unwrap());
        assert_eq!(
            wal(stream.next_event().unwrap()),
            (Lsn(0x1000), b"abc".to_vec())
        );
        assert!(stream.next_event().unwrap().is_none());
        // Nothing more: a short wait polls, a long one blocks for one slice; both give up.
        assert!(!stream.read(Duration::from_millis(10), MAX_READ).unwrap());
        let started = Instant::now();
        assert!(!stream.read(Duration::from_secs(60), MAX_READ).unwrap());
        assert!(started.elapsed() >= WAIT_SLICE && started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn messages_split_across_reads_come_out_whole_and_in_order() {
        let mut bytes = xlogdata(0x2000, &[7u8; 100_000]);
        bytes.extend(xlogdata(0x2000 + 100_000, b"tail"));
        let (first, rest) = bytes.split_at(50_001);
        let (mut stream, mut server) = pair(&first[..3]);
        // Only part of the first message: nothing to take yet.
        assert!(stream.next_event().unwrap().is_none());
        server.write_all(&first[3..]).unwrap();
        assert!(stream.read(Duration::from_secs(5), MAX_READ).unwrap());
        assert!(stream.next_event().unwrap().is_none());
        server.write_all(rest).unwrap();
        // A blocking read (the wait is longer than a slice) gets it.
        assert!(stream.read(Duration::from_secs(5), MAX_READ).unwrap());
        assert_eq!(
            wal(stream.next_event().unwrap()),
            (Lsn(0x2000), vec![7u8; 100_000])
        );
        assert_eq!(
            wal(stream.next_event().unwrap()),
            (Lsn(0x2000 + 100_000), b"tail".to_vec())
        );
    }

    #[test]
    fn the_end_of_the_connection_is_an_error() {
        let (mut stream, server) = pair(&[]);
        drop(server);
        let err = stream.read(Duration::from_secs(5), MAX_READ).unwrap_err();
        assert!(
            err.to_string().contains("server closed the connection"),
            "{err}"
        );
    }

    #[test]
    fn a_status_update_reaches_the_server_as_copydata() {
        let (mut stream, mut server) = pair(&[]);
        let update = StatusUpdate {
            write: Lsn(5),
            flush: Lsn(4),
            apply: Lsn::INVALID,
            time: crate::pg::PgTimestamp(0),
            reply_requested: false,
        };
        stream.send_status_update(&update).unwrap();
        let mut got = vec![0u8; 5 + 34];
        server.read_exact(&mut got).unwrap();
        assert_eq!(got[0], b'd');
        assert_eq!(&got[5..], &update.encode()[..]);
    }
}
