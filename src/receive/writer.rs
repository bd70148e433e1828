//! The writer: a blocking thread that verifies received WAL, writes it into `.partial`
//! segments, fsyncs, completes segments, and publishes how far the store is durable.
//!
//! It runs apart from the network task so that a slow fsync never delays reading the stream
//! or answering keepalives. The flushed position flows back through a `watch` channel; the
//! network task reports it to the server only after it was published here, i.e. after the
//! bytes were fsynced.

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::ReceiveError;
use crate::store::{ClusterWriter, Compression, SegmentWriter};
use crate::wal::{Lsn, SegNo, TimelineId, VerifierConfig, WalSegSize, WalVerifier};

/// Work for the writer, in stream order.
pub(super) enum Command {
    /// A new stream begins at `start` (a segment boundary) on `config.tli`.
    Begin { config: VerifierConfig, start: Lsn },
    /// WAL chunks in stream order, each starting where the previous one ended.
    Wal(Vec<(Lsn, Bytes)>),
    /// Make everything written so far durable and publish it.
    Sync,
    /// The stream ended (end of timeline, reconnect, shutdown): make the open segment durable
    /// and keep it as `.partial`. Answers with the durable position.
    End(oneshot::Sender<Lsn>),
    /// Run something against the store, in order with the writes (the writer owns it).
    WithStore(Box<dyn FnOnce(&mut ClusterWriter) + Send>),
}

/// What the writer has made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Durable {
    /// Every byte before this is fsynced in the store.
    pub flushed: Lsn,
    /// The writer stopped on an error; join it to learn which.
    pub failed: bool,
    /// Segments completed since the writer started.
    pub segments: u64,
}

/// The network task's side of the writer.
pub(super) struct WriterHandle {
    pub commands: mpsc::Sender<Command>,
    pub durable: watch::Receiver<Durable>,
    /// `None` once joined.
    thread: Option<tokio::task::JoinHandle<Result<(), ReceiveError>>>,
}

/// Commands in flight: with batches of at most [`super::session::BATCH_BYTES`] (plus one
/// message of at most 128 kB), this bounds the WAL held in memory to a few MB.
const QUEUE_DEPTH: usize = 8;

impl WriterHandle {
    /// Starts the writer thread, which owns the store's cluster writer from now on.
    pub fn spawn(store: ClusterWriter, synchronous: bool, compression: Compression) -> Self {
        let (commands, rx) = mpsc::channel(QUEUE_DEPTH);
        let (durable_tx, durable) = watch::channel(Durable {
            flushed: Lsn::INVALID,
            failed: false,
            segments: 0,
        });
        let thread = tokio::task::spawn_blocking(move || {
            let mut writer = Writer {
                store,
                synchronous,
                compression,
                stream: None,
                durable: durable_tx,
            };
            let result = writer.run(rx);
            if result.is_err() {
                writer.durable.send_modify(|d| d.failed = true);
            }
            result
        });
        WriterHandle {
            commands,
            durable,
            thread: Some(thread),
        }
    }

    /// Sends a command; if the writer has stopped, returns the error it stopped with.
    pub async fn send(&mut self, command: Command) -> Result<(), ReceiveError> {
        if self.commands.send(command).await.is_err() {
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// Ends the current stream and waits until its data is durable.
    pub async fn end_stream(&mut self) -> Result<Lsn, ReceiveError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::End(tx)).await?;
        match rx.await {
            Ok(lsn) => Ok(lsn),
            Err(_) => Err(self.failure().await),
        }
    }

    /// Runs `f` on the store in the writer thread and returns its result.
    pub async fn with_store<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut ClusterWriter) -> T + Send + 'static,
    ) -> Result<T, ReceiveError> {
        let (tx, rx) = oneshot::channel();
        let job = move |store: &mut ClusterWriter| {
            let _ = tx.send(f(store));
        };
        self.send(Command::WithStore(Box::new(job))).await?;
        match rx.await {
            Ok(value) => Ok(value),
            Err(_) => Err(self.failure().await),
        }
    }

    /// Whether the writer's thread has been joined (its error, if any, already returned by
    /// [`failure`](Self::failure)).
    pub fn has_stopped(&self) -> bool {
        self.thread.is_none()
    }

    /// The writer's error, once it has stopped on one.
    pub async fn failure(&mut self) -> ReceiveError {
        let Some(thread) = self.thread.take() else {
            return ReceiveError::Internal("the WAL writer stopped after an earlier error".into());
        };
        match thread.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => ReceiveError::Internal("the WAL writer stopped unexpectedly".into()),
            Err(e) => ReceiveError::Internal(format!("the WAL writer crashed: {e}")),
        }
    }

    /// Stops the writer after it has made everything durable.
    pub async fn shutdown(mut self) -> Result<(), ReceiveError> {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.commands, closed));
        match self.thread.take() {
            Some(thread) => match thread.await {
                Ok(result) => result,
                Err(e) => Err(ReceiveError::Internal(format!(
                    "the WAL writer crashed: {e}"
                ))),
            },
            None => Ok(()),
        }
    }
}

/// One stream being written: its verifier and the open segment.
struct Stream {
    tli: TimelineId,
    verifier: WalVerifier,
    /// Where the next byte belongs.
    next: Lsn,
    segment: Option<SegmentWriter>,
}

struct Writer {
    store: ClusterWriter,
    synchronous: bool,
    compression: Compression,
    stream: Option<Stream>,
    durable: watch::Sender<Durable>,
}

impl Writer {
    fn seg_size(&self) -> WalSegSize {
        self.store.info().wal_segment_size
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Command>) -> Result<(), ReceiveError> {
        while let Some(command) = rx.blocking_recv() {
            match command {
                Command::Begin { config, start } => {
                    self.end()?;
                    let verifier = WalVerifier::new(config, start).map_err(|e| {
                        ReceiveError::Internal(format!("cannot verify from {start}: {e}"))
                    })?;
                    self.stream = Some(Stream {
                        tli: config.tli,
                        verifier,
                        next: start,
                        segment: None,
                    });
                    self.publish(start);
                }
                Command::Wal(chunks) => {
                    for (start, data) in chunks {
                        if let Err(e) = self.write(start, &data) {
                            // Keep what we have, durable, for inspection.
                            let _ = self.end();
                            return Err(e);
                        }
                    }
                    if self.synchronous && rx.is_empty() {
                        self.sync()?;
                    }
                }
                Command::Sync => self.sync()?,
                Command::End(reply) => {
                    let flushed = self.end()?;
                    let _ = reply.send(flushed);
                }
                Command::WithStore(job) => job(&mut self.store),
            }
        }
        self.end()?;
        Ok(())
    }

    /// Verifies `data` and writes it, completing segments as their last byte arrives.
    fn write(&mut self, start: Lsn, data: &[u8]) -> Result<(), ReceiveError> {
        let seg_size = self.seg_size();
        let compression = self.compression;
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| ReceiveError::Internal("WAL received before its stream began".into()))?;
        if start != stream.next {
            return Err(ReceiveError::Protocol(format!(
                "server sent WAL at {start}, expected {}",
                stream.next
            )));
        }
        stream.verifier.feed(data).map_err(ReceiveError::Verify)?;
        let mut rest = data;
        while !rest.is_empty() {
            let segno = stream.next.segno(seg_size);
            let offset = stream.next.segment_offset(seg_size);
            let room = (seg_size.bytes() - u64::from(offset)) as usize;
            let (piece, after) = rest.split_at(room.min(rest.len()));
            let segment = match stream.segment.as_mut() {
                Some(s) => s,
                None => stream
                    .segment
                    .insert(self.store.open_segment(stream.tli, segno)?),
            };
            segment.write(offset, piece)?;
            stream.next = Lsn(stream.next.0 + piece.len() as u64);
            rest = after;
            if piece.len() == room {
                let done = stream.segment.take().ok_or_else(|| {
                    ReceiveError::Internal("segment vanished while writing".into())
                })?;
                done.finish(compression)?;
                let end = stream.next;
                self.durable.send_modify(|d| {
                    d.flushed = d.flushed.max(end);
                    d.segments += 1;
                });
            }
        }
        Ok(())
    }

    /// fsyncs the open segment and publishes the durable position.
    fn sync(&mut self) -> Result<(), ReceiveError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        if let Some(segment) = stream.segment.as_mut() {
            segment.sync()?;
        }
        let next = stream.next;
        self.publish(next);
        Ok(())
    }

    /// Ends the current stream: the open segment is fsynced and stays `.partial`.
    fn end(&mut self) -> Result<Lsn, ReceiveError> {
        let Some(mut stream) = self.stream.take() else {
            return Ok(self.durable.borrow().flushed);
        };
        if let Some(segment) = stream.segment.take() {
            segment.close_partial()?;
        }
        self.publish(stream.next);
        Ok(stream.next)
    }

    fn publish(&self, flushed: Lsn) {
        self.durable.send_modify(|d| d.flushed = flushed);
    }
}

/// The segment holding `lsn`; used by callers that round positions.
pub(super) fn segment_start(lsn: Lsn, seg_size: WalSegSize) -> Lsn {
    SegNo::start_lsn(lsn.segno(seg_size), seg_size)
}
