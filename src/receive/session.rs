//! One connection's worth of streaming: where to start, which timeline, the CopyBoth loop,
//! status updates, timeline switches, and classifying what the server says when it refuses.

use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::status::{Arrivals, Publisher, ReceiverState};
use super::writer::{Command, WriterHandle, segment_start};
use super::{ReceiveError, ReceiveOptions, StopAt};
use crate::pg::{
    self, ConnConfig, Connection, PgTimestamp, ServerMessage, SessionKind, SlotOptions, StartReply,
    StatusUpdate, StreamEvent, SystemInfo,
};
use crate::store::{ClusterWriter, Gap, ServerIdentity};
use crate::wal::{Lsn, PageMagic, TimelineId, VerifierConfig, WalSegSize};

/// How a session ended without an error.
pub(super) enum Ended {
    /// Stopped as asked (signal, `--once`, `--until`): everything received is durable.
    Done,
    /// The server ended the stream (it is shutting down, or we must start over elsewhere).
    Reconnect { streamed: bool },
}

/// A session that ended with an error; `streamed` tells whether it got any WAL first (so the
/// reconnection backoff can start over).
pub(super) struct Failure {
    pub error: ReceiveError,
    pub streamed: bool,
}

/// The receiver across sessions: the store (through the writer), what it knows of the
/// server, and where the next session must start when the store alone cannot say.
pub(super) struct Receiver<'a> {
    options: &'a ReceiveOptions,
    config: &'a ConnConfig,
    writer: WriterHandle,
    identity: ServerIdentity,
    magic: PageMagic,
    target: Option<Lsn>,
    /// A connection already open (the first one, or one kept across a timeline switch).
    conn: Option<Connection>,
    /// Where to start instead of the store's own resume point: the next timeline after a
    /// switch, or what the server still has after a gap.
    resume_at: Option<(TimelineId, Lsn)>,
    /// The writer's completed-segment count already added to the published status.
    segments_published: u64,
}

impl<'a> Receiver<'a> {
    /// Connects, binds the store to the server (or checks it is the same one), prepares the
    /// slot, and starts the writer.
    pub async fn start(
        options: &'a ReceiveOptions,
        config: &'a ConnConfig,
    ) -> Result<Receiver<'a>, ReceiveError> {
        let mut conn = Connection::connect(config, SessionKind::Physical).await?;
        let system = conn.identify_system().await?;
        let seg_text = conn.show("wal_segment_size").await?;
        let wal_segment_size: WalSegSize = seg_text.parse().map_err(|e| {
            ReceiveError::Protocol(format!("server's wal_segment_size {seg_text:?}: {e}"))
        })?;
        let version = conn.server_version();
        let magic = PageMagic::for_major(version.major()).ok_or_else(|| {
            ReceiveError::Refused(format!(
                "{} runs PostgreSQL {}, which walden does not support (10 to 18)",
                conn.peer(),
                version.major()
            ))
        })?;
        let identity = ServerIdentity {
            system_id: system.system_id,
            server_version_num: version.0,
            wal_segment_size,
        };
        let store = ClusterWriter::open(&options.store, &options.cluster, &identity)?;
        let target = match options.stop {
            StopAt::Never => None,
            StopAt::CurrentEnd => Some(system.xlogpos),
            StopAt::Lsn(lsn) => Some(lsn),
        };
        match &options.slot {
            None => tracing::warn!(
                "no replication slot: the server may remove WAL before walden has stored it; use --slot NAME --create-slot"
            ),
            Some(slot) if options.create_slot => {
                let reserve = SlotOptions {
                    temporary: false,
                    reserve_wal: true,
                };
                match conn.create_physical_slot(slot, reserve).await {
                    Ok(()) => tracing::info!("created replication slot {slot} with WAL reserved"),
                    Err(e) if e.sqlstate() == Some("42710") => {
                        tracing::debug!("replication slot {slot} exists")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Some(_) => {}
        }
        let writer = WriterHandle::spawn(store, options.synchronous, options.compression);
        Ok(Receiver {
            options,
            config,
            writer,
            identity,
            magic,
            target,
            conn: Some(conn),
            resume_at: None,
            segments_published: 0,
        })
    }

    /// Streams until stopped, or until the connection ends.
    pub async fn stream(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Ended, Failure> {
        let mut streamed = false;
        match self.stream_timelines(shutdown, &mut streamed).await {
            Ok(ended) => Ok(ended),
            Err(error) => {
                // Whatever happened, what was received stays durable as .partial.
                let writer_failed = self.writer.has_stopped();
                let error = match self.writer.end_stream().await {
                    Ok(_) => error,
                    // The writer's own error was already taken: `error` is it (or says more).
                    Err(_) if writer_failed => error,
                    Err(writer_error) if !matches!(error, ReceiveError::Verify(_)) => writer_error,
                    Err(_) => error,
                };
                Err(Failure { error, streamed })
            }
        }
    }

    /// Ends the run: waits until the writer has made everything durable.
    pub async fn finish(self) -> Result<(), ReceiveError> {
        let flushed = self.writer.durable.borrow().flushed;
        self.writer.shutdown().await?;
        tracing::info!("stopped; WAL is durable in the store up to {flushed}");
        Ok(())
    }

    async fn stream_timelines(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        streamed: &mut bool,
    ) -> Result<Ended, ReceiveError> {
        let (mut conn, mut system) = match self.conn.take() {
            Some(mut conn) => {
                let system = conn.identify_system().await?;
                (conn, system)
            }
            None => self.reconnect().await?,
        };
        self.fetch_histories(&mut conn, system.timeline).await?;
        loop {
            let (tli, start) = self.start_position(&mut conn, &system).await?;
            if self.target.is_some_and(|target| start >= target) {
                return Ok(Ended::Done);
            }
            if tli > system.timeline {
                return Err(ReceiveError::Refused(format!(
                    "the store holds WAL of timeline {tli}, but {} is on timeline {}: it is not the server this store follows, or it was restored from an older backup; point walden at the right server or use another --cluster",
                    conn.peer(),
                    system.timeline
                )));
            }
            tracing::info!("starting streaming at {start} on timeline {tli}");
            let reply = conn
                .start_replication(self.options.slot.as_ref(), start, tli)
                .await
                .map_err(|e| self.classify_start_error(e, start, tli))?;
            match reply {
                StartReply::TimelineEnded {
                    next_timeline,
                    next_start,
                } => {
                    self.switch_timeline(&mut conn, tli, next_timeline, next_start)
                        .await?;
                    system = conn.identify_system().await?;
                    continue;
                }
                StartReply::Streaming => {}
            }
            self.publisher().update(|s| s.timeline = Some(tli));
            self.publisher().state(ReceiverState::Streaming);
            let config = VerifierConfig {
                seg_size: self.identity.wal_segment_size,
                magic: self.magic,
                tli,
                system_identifier: Some(self.identity.system_id.0),
            };
            self.writer.send(Command::Begin { config, start }).await?;
            let outcome = self.copy_loop(&mut conn, shutdown, start, streamed).await;
            match outcome {
                Ok(Copy::Stopped) => return Ok(Ended::Done),
                Ok(Copy::ServerEnded) => {
                    self.writer.end_stream().await?;
                    return Ok(Ended::Reconnect {
                        streamed: *streamed,
                    });
                }
                Ok(Copy::TimelineEnded {
                    next_timeline,
                    next_start,
                }) => {
                    self.writer.end_stream().await?;
                    self.switch_timeline(&mut conn, tli, next_timeline, next_start)
                        .await?;
                    system = conn.identify_system().await?;
                }
                Err(e) => return self.handle_stream_error(e, tli, start).await,
            }
        }
    }

    fn publisher(&self) -> Publisher<'a> {
        Publisher(self.options.status.as_ref())
    }

    /// A new connection after a failure: the same server as before?
    async fn reconnect(&mut self) -> Result<(Connection, SystemInfo), ReceiveError> {
        let mut conn = Connection::connect(self.config, SessionKind::Physical).await?;
        let system = conn.identify_system().await?;
        if system.system_id != self.identity.system_id {
            return Err(ReceiveError::Refused(format!(
                "{} is now system {}, but this store holds system {}: the connection string points at another cluster",
                conn.peer(),
                system.system_id,
                self.identity.system_id
            )));
        }
        tracing::info!("reconnected to {}", conn.peer());
        Ok((conn, system))
    }

    /// Stores every timeline history file the server has that the store lacks.
    async fn fetch_histories(
        &mut self,
        conn: &mut Connection,
        current: TimelineId,
    ) -> Result<(), ReceiveError> {
        for tli in 2..=current.0 {
            let tli = TimelineId(tli);
            if self.writer.with_store(move |s| s.has_history(tli)).await? {
                continue;
            }
            match conn.timeline_history(tli).await {
                Ok(history) => {
                    let content = history.content.to_vec();
                    self.writer
                        .with_store(move |s| s.write_history(tli, &content))
                        .await??;
                    tracing::info!("stored {}", history.file_name);
                }
                // The server's own timeline file must be there; older ones may be gone.
                Err(e) if tli != current && e.server_error().is_some() => {
                    tracing::warn!("timeline history of {tli} not available on the server: {e}")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Where this session starts: after a switch or gap, where we were told; otherwise where
    /// the store leaves off; in an empty store, at the slot's restart position or the
    /// server's current position (rounded down to a segment start).
    async fn start_position(
        &mut self,
        conn: &mut Connection,
        system: &SystemInfo,
    ) -> Result<(TimelineId, Lsn), ReceiveError> {
        let seg_size = self.identity.wal_segment_size;
        if let Some(resume) = self.resume_at.take() {
            return Ok(resume);
        }
        if let Some(position) = self.writer.with_store(|s| s.streaming_start()).await?? {
            return Ok(position);
        }
        if let Some(slot) = &self.options.slot
            && conn.server_version().major() >= 15
        {
            match conn.read_replication_slot(slot).await? {
                None => return Err(missing_slot(slot, conn.peer())),
                Some(position) => {
                    if let (Some(lsn), Some(tli)) = (position.restart_lsn, position.restart_tli) {
                        return Ok((tli, segment_start(lsn, seg_size)));
                    }
                }
            }
        }
        Ok((system.timeline, segment_start(system.xlogpos, seg_size)))
    }

    async fn switch_timeline(
        &mut self,
        conn: &mut Connection,
        old: TimelineId,
        next: TimelineId,
        switch_point: Lsn,
    ) -> Result<(), ReceiveError> {
        if next <= old {
            return Err(ReceiveError::Protocol(format!(
                "server switched from timeline {old} to {next}, which is not newer"
            )));
        }
        tracing::info!("switched to timeline {next} at {switch_point}");
        self.fetch_histories(conn, next).await?;
        self.resume_at = Some((
            next,
            segment_start(switch_point, self.identity.wal_segment_size),
        ));
        Ok(())
    }

    /// Errors before COPY: the server refused the start point or the slot.
    fn classify_start_error(&self, e: pg::Error, start: Lsn, tli: TimelineId) -> ReceiveError {
        let Some(server) = e.server_error() else {
            return e.into();
        };
        let message = &server.message;
        if server.code == "42704"
            && let Some(slot) = &self.options.slot
        {
            return missing_slot(slot, "the server");
        }
        if message.contains("is not in this server's history") {
            return ReceiveError::Refused(format!(
                "the server's history does not contain {start} on timeline {tli} ({}): the store followed a timeline this server never had; point walden at the right server or use another --cluster",
                server.detail.as_deref().unwrap_or(message)
            ));
        }
        if message.contains("is ahead of the WAL flush position") {
            return ReceiveError::Refused(format!(
                "the store already holds WAL beyond the server's flush position ({message}): was the server restored from an older backup? walden will not overwrite the store; use another --cluster"
            ));
        }
        if message.contains("can no longer access replication slot")
            || message.contains("has been invalidated")
        {
            return ReceiveError::Refused(format!(
                "replication slot {:?} was invalidated by the server ({message}): WAL is missing; take a new base backup, then drop and re-create the slot",
                self.options.slot.as_ref().map(|s| s.as_str()).unwrap_or("")
            ));
        }
        e.into()
    }

    /// Errors inside COPY. The server removed WAL we need: record the gap and go on from
    /// what it has (or stop, if a slot should have kept it).
    async fn handle_stream_error(
        &mut self,
        error: ReceiveError,
        tli: TimelineId,
        start: Lsn,
    ) -> Result<Ended, ReceiveError> {
        let removed = match &error {
            ReceiveError::Pg(e) => e.server_error().is_some_and(|s| {
                s.code == "58P01" && s.message.contains("has already been removed")
            }),
            _ => false,
        };
        if !removed {
            return Err(error);
        }
        self.writer.end_stream().await?;
        // Go on from the start of the segment the server is writing now: it certainly has it.
        let (conn, system) = self.reconnect().await?;
        let resume = segment_start(system.xlogpos, self.identity.wal_segment_size);
        let gap = Gap {
            timeline: tli,
            from: start,
            to: resume,
            detected: crate::store::utc_now(),
            reason: error.to_string(),
        };
        let recorded = gap.clone();
        self.writer
            .with_store(move |s| s.record_gap(recorded))
            .await??;
        if let Some(slot) = &self.options.slot {
            return Err(ReceiveError::Refused(format!(
                "{error}, although replication slot {slot:?} should have kept it: the slot was invalidated (max_slot_wal_keep_size?); the gap {}..{} is recorded in the store; take a new base backup, then drop and re-create the slot",
                gap.from, gap.to
            )));
        }
        tracing::error!(
            "WAL from {} to {} on timeline {} is lost: the server removed it before walden stored it ({error}); the gap is recorded in the store; take a new base backup, and use a replication slot (--slot) to prevent this",
            gap.from,
            gap.to,
            tli
        );
        self.resume_at = Some((system.timeline, resume));
        self.conn = Some(conn);
        Ok(Ended::Reconnect { streamed: true })
    }

    /// The CopyBoth loop of one timeline.
    ///
    /// WAL is handed to the writer in batches: everything that arrived in one read, and in
    /// asynchronous mode everything of the last [`BATCH_WAIT`] up to [`BATCH_BYTES`], so the
    /// writer thread is woken a few dozen times a second rather than per message. Nothing
    /// waits in a batch when durability is asked for (synchronous mode, a status update, a
    /// keepalive that wants a reply, the stop position, the end of the stream).
    async fn copy_loop(
        &mut self,
        conn: &mut Connection,
        shutdown: &mut watch::Receiver<bool>,
        start: Lsn,
        streamed: &mut bool,
    ) -> Result<Copy, ReceiveError> {
        let mut received = start;
        let mut durable = self.writer.durable.clone();
        let publish = self.publisher();
        let mut arrivals = Arrivals::default();
        let mut ticker = tokio::time::interval(self.options.status_interval.max(MIN_STATUS));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Batch::default();
        // In asynchronous mode the socket is read at most every READ_PACE: the kernel gathers
        // what the server sends meanwhile, and one wake-up handles it all.
        let pace = (!self.options.synchronous).then_some(READ_PACE);
        let mut next_read = tokio::time::Instant::now();
        loop {
            let paused = tokio::time::Instant::now() < next_read;
            tokio::select! {
                biased;
                _ = crate::signals::requested(shutdown) => {
                    self.flush_batch(&mut batch).await?;
                    self.stop(conn, received).await?;
                    return Ok(Copy::Stopped);
                }
                changed = durable.changed() => {
                    if changed.is_err() || durable.borrow().failed {
                        return Err(self.writer.failure().await);
                    }
                    let now = *durable.borrow_and_update();
                    let flushed = now.flushed;
                    let arrived = arrivals.flushed(flushed);
                    let completed = now.segments.saturating_sub(self.segments_published);
                    self.segments_published = now.segments;
                    publish.update(|s| {
                        s.flushed = Some(flushed);
                        s.segments_completed += completed;
                        if arrived.is_some() {
                            s.flushed_arrived_at = arrived;
                        }
                    });
                    send_status(conn, received, flushed).await?;
                    if self.target.is_some_and(|target| flushed >= target) {
                        self.flush_batch(&mut batch).await?;
                        self.stop(conn, received).await?;
                        return Ok(Copy::Stopped);
                    }
                }
                _ = ticker.tick() => {
                    self.flush_batch(&mut batch).await?;
                    if !self.options.synchronous {
                        self.writer.send(Command::Sync).await?;
                    }
                    let flushed = durable.borrow().flushed;
                    send_status(conn, received, flushed).await?;
                }
                _ = tokio::time::sleep_until(batch.deadline()), if !batch.is_empty() => {
                    self.flush_batch(&mut batch).await?;
                }
                _ = tokio::time::sleep_until(next_read), if paused => {}
                frame = conn.recv(), if !paused => {
                    // This frame and every other one already read: one batch for the writer.
                    let before = received;
                    let mut server_end = None;
                    let mut next = Some(frame?);
                    while let Some(frame) = next {
                        let event = conn.stream_event(frame).await?;
                        match event {
                            StreamEvent::Message(ServerMessage::XLogData(x)) => {
                                *streamed = true;
                                server_end = Some(x.wal_end);
                                received = received.max(Lsn(x.start.0 + x.data.len() as u64));
                                batch.push(x.start, x.data);
                            }
                            StreamEvent::Message(ServerMessage::Keepalive(k)) => {
                                server_end = Some(k.wal_end);
                                if k.reply_requested {
                                    // Answer now, and fsync so that the next answer (sent
                                    // when the flush lands) lets a shutting-down server finish.
                                    self.flush_batch(&mut batch).await?;
                                    let flushed = durable.borrow().flushed;
                                    send_status(conn, received, flushed).await?;
                                    if !self.options.synchronous {
                                        self.writer.send(Command::Sync).await?;
                                    }
                                }
                            }
                            StreamEvent::EndOfTimeline { next_timeline, next_start } => {
                                self.flush_batch(&mut batch).await?;
                                return Ok(Copy::TimelineEnded { next_timeline, next_start });
                            }
                            StreamEvent::Ended => {
                                self.flush_batch(&mut batch).await?;
                                return Ok(Copy::ServerEnded);
                            }
                        }
                        next = conn.try_recv_buffered()?;
                    }
                    let arrived = SystemTime::now();
                    if received > before {
                        arrivals.push(received, arrived);
                    }
                    publish.update(|s| {
                        s.last_message_at = Some(arrived);
                        s.received = Some(received);
                        s.bytes_received += received.0 - before.0;
                        if let Some(end) = server_end {
                            s.server_wal_end = Some(end);
                        }
                    });
                    // Pause only when the socket had little: a busy stream is read flat out.
                    if let Some(pace) = pace
                        && received.0 - before.0 < PACE_BELOW
                    {
                        next_read = tokio::time::Instant::now() + pace;
                    }
                    let reached = self.target.is_some_and(|target| received >= target);
                    if self.options.synchronous || reached || batch.bytes >= BATCH_BYTES {
                        self.flush_batch(&mut batch).await?;
                    }
                    if reached && !self.options.synchronous {
                        self.writer.send(Command::Sync).await?;
                    }
                }
            }
        }
    }

    /// Hands the batched WAL to the writer.
    async fn flush_batch(&mut self, batch: &mut Batch) -> Result<(), ReceiveError> {
        if !batch.is_empty() {
            let chunks = std::mem::take(&mut batch.chunks);
            batch.bytes = 0;
            self.writer.send(Command::Wal(chunks)).await?;
        }
        Ok(())
    }

    /// Stops streaming on our side: everything durable, reported, then CopyDone.
    async fn stop(&mut self, conn: &mut Connection, received: Lsn) -> Result<(), ReceiveError> {
        let flushed = self.writer.end_stream().await?;
        send_status(conn, received, flushed).await?;
        // Be polite, but do not hang on a server that does not answer.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.stop_streaming()).await;
        Ok(())
    }
}

/// Status updates are never sent more often than this from the timer.
const MIN_STATUS: Duration = Duration::from_millis(100);

/// In asynchronous mode, WAL is handed to the writer once this much has accumulated...
pub(super) const BATCH_BYTES: usize = 512 * 1024;
/// ... or once the oldest WAL in the batch has waited this long.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// In asynchronous mode, the least time between two reads of the socket...
const READ_PACE: Duration = Duration::from_millis(20);
/// ... when a read brought less WAL than this.
const PACE_BELOW: u64 = 64 * 1024;

/// WAL received but not yet handed to the writer.
#[derive(Default)]
struct Batch {
    chunks: Vec<(Lsn, bytes::Bytes)>,
    bytes: usize,
    since: Option<tokio::time::Instant>,
}

impl Batch {
    fn push(&mut self, start: Lsn, data: bytes::Bytes) {
        if self.chunks.is_empty() {
            self.since = Some(tokio::time::Instant::now());
        }
        self.bytes += data.len();
        self.chunks.push((start, data));
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// When the batch must be handed over at the latest.
    fn deadline(&self) -> tokio::time::Instant {
        self.since.unwrap_or_else(tokio::time::Instant::now) + BATCH_WAIT
    }
}

enum Copy {
    Stopped,
    ServerEnded,
    TimelineEnded {
        next_timeline: TimelineId,
        next_start: Lsn,
    },
}

async fn send_status(
    conn: &mut Connection,
    received: Lsn,
    flushed: Lsn,
) -> Result<(), ReceiveError> {
    let update = StatusUpdate {
        write: received,
        flush: flushed,
        apply: Lsn::INVALID,
        time: PgTimestamp::now(),
        reply_requested: false,
    };
    conn.send_status_update(&update).await?;
    Ok(())
}

fn missing_slot(slot: &pg::SlotName, peer: &str) -> ReceiveError {
    ReceiveError::Refused(format!(
        "replication slot {:?} does not exist on {peer}: create it with --create-slot (walden never re-creates a slot on its own: a missing slot may mean lost WAL)",
        slot.as_str()
    ))
}
