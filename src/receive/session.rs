//! One connection's worth of streaming: where to start, which timeline, the CopyBoth loop,
//! status updates, timeline switches, and classifying what the server says when it refuses.

use tokio::sync::watch;

use super::status::{Publisher, ReceiverState};
use super::streaming::{self, Copy};
use super::writer::{Writer, segment_start};
use super::{ReceiveError, ReceiveOptions, StopAt};
use crate::pg::{self, ConnConfig, Connection, SessionKind, SlotOptions, StartReply, SystemInfo};
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
    /// `None` only while the streaming thread has it (or after that thread crashed).
    writer: Option<Writer>,
    identity: ServerIdentity,
    magic: PageMagic,
    target: Option<Lsn>,
    /// A connection already open (the first one, or one kept across a timeline switch).
    conn: Option<Connection>,
    /// Where to start instead of the store's own resume point: the next timeline after a
    /// switch, or what the server still has after a gap.
    resume_at: Option<(TimelineId, Lsn)>,
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
        let mut store = ClusterWriter::open(&options.store, &options.cluster, &identity)?;
        store.set_write_through(options.synchronous);
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
        Ok(Receiver {
            options,
            config,
            writer: Some(Writer::new(store, options.compression)),
            identity,
            magic,
            target,
            conn: Some(conn),
            resume_at: None,
        })
    }

    /// Streams until stopped, or until the connection ends.
    pub async fn stream(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Ended, Failure> {
        let mut streamed = false;
        match self.stream_timelines(shutdown, &mut streamed).await {
            Ok(ended) => Ok(ended),
            Err(error) => {
                // Whatever happened, what was received stays durable as .partial; a store
                // that fails now says more than the connection error that came first.
                let error = match self.writer().and_then(Writer::end) {
                    Err(end_error) if matches!(error, ReceiveError::Pg(_)) => end_error,
                    _ => error,
                };
                Err(Failure { error, streamed })
            }
        }
    }

    /// Ends the run: everything received is durable.
    pub async fn finish(mut self) -> Result<(), ReceiveError> {
        let flushed = self.writer()?.end()?;
        tracing::info!("stopped; WAL is durable in the store up to {flushed}");
        Ok(())
    }

    fn writer(&mut self) -> Result<&mut Writer, ReceiveError> {
        self.writer.as_mut().ok_or_else(lost_writer)
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
            self.writer()?.begin(config, start)?;
            let outcome = self.copy(conn, shutdown, start, streamed).await;
            match outcome {
                Ok(Copy::Stopped) => return Ok(Ended::Done),
                Ok(Copy::ServerEnded) => {
                    self.writer()?.end()?;
                    return Ok(Ended::Reconnect {
                        streamed: *streamed,
                    });
                }
                Ok(Copy::TimelineEnded {
                    next_timeline,
                    next_start,
                }) => {
                    self.writer()?.end()?;
                    // The stream took the connection along: the next timeline gets a new one.
                    (conn, system) = self.reconnect().await?;
                    self.switch_timeline(&mut conn, tli, next_timeline, next_start)
                        .await?;
                }
                Err(e) => return self.handle_stream_error(e, tli, start).await,
            }
        }
    }

    /// Streams one timeline on a blocking thread (see [`streaming`]), which owns the
    /// connection and the writer meanwhile.
    async fn copy(
        &mut self,
        conn: Connection,
        shutdown: &watch::Receiver<bool>,
        start: Lsn,
        streamed: &mut bool,
    ) -> Result<Copy, ReceiveError> {
        let mut stream = conn.into_copy_stream()?;
        let mut writer = self.writer.take().ok_or_else(lost_writer)?;
        let settings = streaming::Settings {
            synchronous: self.options.synchronous,
            status_interval: self.options.status_interval,
            target: self.target,
            status: self.options.status.clone(),
            shutdown: shutdown.clone(),
        };
        let thread = tokio::task::spawn_blocking(move || {
            let mut streamed = false;
            let outcome = streaming::run(&settings, &mut stream, &mut writer, start, &mut streamed);
            (writer, outcome, streamed)
        });
        match thread.await {
            Ok((writer, outcome, got_wal)) => {
                self.writer = Some(writer);
                *streamed |= got_wal;
                outcome
            }
            Err(e) => Err(ReceiveError::Internal(format!(
                "the streaming thread crashed: {e}"
            ))),
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
            if self.writer()?.store().has_history(tli) {
                continue;
            }
            match conn.timeline_history(tli).await {
                Ok(history) => {
                    self.writer()?
                        .store()
                        .write_history(tli, &history.content)?;
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
        if let Some(position) = self.writer()?.store().streaming_start()? {
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
        self.writer()?.end()?;
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
        self.writer()?.store().record_gap(gap.clone())?;
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
}

fn lost_writer() -> ReceiveError {
    ReceiveError::Internal("the WAL writer was lost with the streaming thread".into())
}

fn missing_slot(slot: &pg::SlotName, peer: &str) -> ReceiveError {
    ReceiveError::Refused(format!(
        "replication slot {:?} does not exist on {peer}: create it with --create-slot (walden never re-creates a slot on its own: a missing slot may mean lost WAL)",
        slot.as_str()
    ))
}
