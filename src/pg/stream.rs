//! Physical streaming: `START_REPLICATION`, the messages inside CopyBoth (`w` XLogData, `k`
//! keepalive in; `r` standby status update out), and the end-of-timeline sequence.
//!
//! Message layouts (all integers big-endian, times in microseconds since 2000-01-01 UTC):
//! - `w`: dataStart i64, walEnd i64, sendTime i64, then WAL bytes;
//! - `k`: walEnd i64, sendTime i64, replyRequested u8;
//! - `r`: write i64, flush i64, apply i64, clientTime i64, replyRequested u8 (positions are
//!   "last byte + 1").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use postgres_protocol::message::backend::Message;

use super::connection::Connection;
use super::error::{Error, ServerError};
use super::frame::Frame;
use super::frame::message_name;
use super::replication::SlotName;
use crate::wal::{Lsn, TimelineId};

/// Seconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00:00 UTC.
const POSTGRES_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// A message the server sends inside CopyBoth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    XLogData(XLogData),
    Keepalive(Keepalive),
}

/// A chunk of WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// Position of the first byte of `data`.
    pub start: Lsn,
    /// The server's flush position when it sent this (useful for lag).
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    pub data: Bytes,
}

/// A keepalive; when `reply_requested`, the server wants a status update at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    pub reply_requested: bool,
}

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    pub fn now() -> PgTimestamp {
        PgTimestamp::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> PgTimestamp {
        let since_unix = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let micros = since_unix.as_micros() as i64 - (POSTGRES_EPOCH_UNIX_SECS as i64) * 1_000_000;
        PgTimestamp(micros)
    }

    /// The time as a `SystemTime`; times before 1970 (or absurd ones from a broken server)
    /// become the Unix epoch.
    pub fn to_system_time(self) -> SystemTime {
        let unix_micros = self
            .0
            .checked_add((POSTGRES_EPOCH_UNIX_SECS as i64) * 1_000_000)
            .and_then(|m| u64::try_from(m).ok());
        match unix_micros {
            Some(m) => UNIX_EPOCH + Duration::from_micros(m),
            None => UNIX_EPOCH,
        }
    }
}

/// A CopyData payload that is not a valid `w` or `k` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid replication message: {0}")]
pub struct StreamMessageError(String);

impl ServerMessage {
    /// Decodes one CopyData payload received in physical streaming.
    pub fn parse(mut payload: Bytes) -> Result<ServerMessage, StreamMessageError> {
        let short = |what: &str| StreamMessageError(format!("{what} message too short"));
        let tag = payload.try_get_u8().map_err(|_| short("empty"))?;
        match tag {
            b'w' => {
                let start = payload.try_get_u64().map_err(|_| short("XLogData"))?;
                let wal_end = payload.try_get_u64().map_err(|_| short("XLogData"))?;
                let send_time = payload.try_get_i64().map_err(|_| short("XLogData"))?;
                Ok(ServerMessage::XLogData(XLogData {
                    start: Lsn(start),
                    wal_end: Lsn(wal_end),
                    send_time: PgTimestamp(send_time),
                    data: payload,
                }))
            }
            b'k' => {
                let wal_end = payload.try_get_u64().map_err(|_| short("keepalive"))?;
                let send_time = payload.try_get_i64().map_err(|_| short("keepalive"))?;
                let reply = payload.try_get_u8().map_err(|_| short("keepalive"))?;
                if !payload.is_empty() {
                    return Err(StreamMessageError("keepalive message too long".into()));
                }
                Ok(ServerMessage::Keepalive(Keepalive {
                    wal_end: Lsn(wal_end),
                    send_time: PgTimestamp(send_time),
                    reply_requested: reply != 0,
                }))
            }
            other => Err(StreamMessageError(format!(
                "unknown message type 0x{other:02x}"
            ))),
        }
    }
}

/// Our standby status update (`r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusUpdate {
    /// Received up to here (last byte + 1).
    pub write: Lsn,
    /// Durable up to here. `Lsn::INVALID` when we do not report durability (no slot, not
    /// synchronous): the server then never counts us as a synchronous standby.
    pub flush: Lsn,
    /// We never replay WAL: always invalid.
    pub apply: Lsn,
    pub time: PgTimestamp,
    pub reply_requested: bool,
}

impl StatusUpdate {
    /// The CopyData payload (no allocation: one is sent per commit in synchronous mode).
    pub fn encode(&self) -> [u8; 34] {
        let mut buf = [0u8; 34];
        let mut w = &mut buf[..];
        w.put_u8(b'r');
        w.put_u64(self.write.0);
        w.put_u64(self.flush.0);
        w.put_u64(self.apply.0);
        w.put_i64(self.time.0);
        w.put_u8(u8::from(self.reply_requested));
        buf
    }
}

/// How a `START_REPLICATION` ended or what it yields.
#[derive(Debug)]
pub enum StreamEvent {
    /// A message inside CopyBoth.
    Message(ServerMessage),
    /// The server finished the timeline we asked for: the next timeline starts at
    /// `next_start` (the switch point). The connection is ready for another command.
    EndOfTimeline {
        next_timeline: TimelineId,
        next_start: Lsn,
    },
    /// The server ended streaming without a next timeline (it is shutting down, or it
    /// acknowledged our CopyDone). The connection is ready or closed.
    Ended,
}

/// What `START_REPLICATION` answered.
#[derive(Debug)]
pub enum StartReply {
    /// CopyBoth began: read events with [`Connection::next_stream_event`].
    Streaming,
    /// The start position is exactly the end of the historic timeline asked for: the server
    /// skipped COPY and told us where the next timeline starts.
    TimelineEnded {
        next_timeline: TimelineId,
        next_start: Lsn,
    },
}

impl Connection {
    /// `START_REPLICATION [SLOT "s"] PHYSICAL X/X TIMELINE n`. An error before COPY (unknown
    /// slot, slot in use, a start point not in the server's history) is returned as the
    /// server's error.
    pub async fn start_replication(
        &mut self,
        slot: Option<&SlotName>,
        start: Lsn,
        timeline: TimelineId,
    ) -> Result<StartReply, Error> {
        let slot = slot.map(|s| format!("SLOT \"{s}\" ")).unwrap_or_default();
        let command = format!(
            "START_REPLICATION {slot}PHYSICAL {:X}/{:08X} TIMELINE {}",
            start.0 >> 32,
            start.0 & 0xFFFF_FFFF,
            timeline.0
        );
        self.send_query(&command).await?;
        match self.recv().await? {
            Frame::CopyBothResponse => Ok(StartReply::Streaming),
            Frame::Message(Message::ErrorResponse(body)) => {
                let error = ServerError::from_fields(body.fields());
                self.wait_ready().await?;
                Err(Error::Server(error))
            }
            Frame::Message(Message::RowDescription(_)) => {
                let (next_timeline, next_start) = self.read_next_timeline_row().await?;
                Ok(StartReply::TimelineEnded {
                    next_timeline,
                    next_start,
                })
            }
            other => Err(self.protocol_error(format!(
                "unexpected {other:?} in reply to START_REPLICATION"
            ))),
        }
    }

    /// The next thing that happens in a stream started with [`Self::start_replication`].
    ///
    /// Not cancel-safe as a whole (the end of a timeline is a short exchange); in `select!`,
    /// await [`Connection::recv`] (which is) and pass its frame to [`Self::stream_event`].
    pub async fn next_stream_event(&mut self) -> Result<StreamEvent, Error> {
        let frame = self.recv().await?;
        self.stream_event(frame).await
    }

    /// Interprets one frame received while streaming.
    pub async fn stream_event(&mut self, frame: Frame) -> Result<StreamEvent, Error> {
        match frame {
            Frame::Message(Message::CopyData(body)) => ServerMessage::parse(body.into_bytes())
                .map(StreamEvent::Message)
                .map_err(|e| self.protocol_error(e.to_string())),
            Frame::Message(Message::CopyDone) => {
                // End of a historic timeline: answer CopyDone, then read the next timeline.
                self.send_copy_done().await?;
                self.finish_stream().await
            }
            Frame::Message(Message::CommandComplete(_)) => {
                // Server shutdown: "COPY 0" without CopyDone, then ReadyForQuery or EOF.
                Ok(StreamEvent::Ended)
            }
            Frame::Message(Message::ErrorResponse(body)) => {
                Err(Error::Server(ServerError::from_fields(body.fields())))
            }
            other => Err(self.protocol_error(format!("unexpected {other:?} while streaming"))),
        }
    }

    /// Ends streaming from our side (CopyDone) and reads the server's end of it; the
    /// connection is then ready for another command.
    pub async fn stop_streaming(&mut self) -> Result<(), Error> {
        self.send_copy_done().await?;
        self.finish_stream().await.map(drop)
    }

    /// Sends a standby status update.
    pub async fn send_status_update(&mut self, update: &StatusUpdate) -> Result<(), Error> {
        self.send_copy_data(&update.encode()).await
    }

    /// Reads what follows the end of COPY: the next-timeline result set (if any) and the
    /// command completion, up to ReadyForQuery.
    async fn finish_stream(&mut self) -> Result<StreamEvent, Error> {
        self.read_copy_end(CopyEnd::after_copy()).await
    }

    /// After the RowDescription of the next-timeline result: its one row, then the command
    /// completions up to ReadyForQuery.
    async fn read_next_timeline_row(&mut self) -> Result<(TimelineId, Lsn), Error> {
        match self.read_copy_end(CopyEnd::in_result()).await? {
            StreamEvent::EndOfTimeline {
                next_timeline,
                next_start,
            } => Ok((next_timeline, next_start)),
            _ => Err(self.protocol_error("next-timeline result set without a row")),
        }
    }

    async fn read_copy_end(&mut self, mut end: CopyEnd) -> Result<StreamEvent, Error> {
        loop {
            let frame = self.recv().await?;
            if let Some(outcome) = end.feed(frame, self.peer())? {
                return outcome;
            }
        }
    }

    /// Skips to ReadyForQuery (after an error).
    async fn wait_ready(&mut self) -> Result<(), Error> {
        loop {
            if let Frame::Message(Message::ReadyForQuery(_)) = self.recv().await? {
                return Ok(());
            }
        }
    }
}

/// What follows the end of COPY, one frame at a time (sans-IO, shared by the async
/// [`Connection`] and the blocking [`super::CopyStream`]): the next-timeline result set if
/// any (one row: timeline, switch point), command completions, data the server had in flight
/// before it saw our CopyDone, and an error, up to ReadyForQuery.
pub(super) struct CopyEnd {
    next: Option<(TimelineId, Lsn)>,
    /// Inside the next-timeline result set (after its RowDescription).
    in_result: bool,
    error: Option<ServerError>,
}

impl CopyEnd {
    /// After CopyDone (ours, the server's, or both).
    pub fn after_copy() -> CopyEnd {
        CopyEnd {
            next: None,
            in_result: false,
            error: None,
        }
    }

    /// After the RowDescription of the next-timeline result set.
    fn in_result() -> CopyEnd {
        CopyEnd {
            in_result: true,
            ..CopyEnd::after_copy()
        }
    }

    /// Takes the next frame; `Some` once ReadyForQuery ended the exchange: the next
    /// timeline, [`StreamEvent::Ended`], or the server's error.
    pub fn feed(
        &mut self,
        frame: Frame,
        peer: &str,
    ) -> Result<Option<Result<StreamEvent, Error>>, Error> {
        let protocol = |reason: String| Error::Protocol {
            peer: peer.to_string(),
            reason,
        };
        match frame {
            Frame::Message(Message::ReadyForQuery(_)) => {
                if let Some(error) = self.error.take() {
                    return Ok(Some(Err(Error::Server(error))));
                }
                return Ok(Some(Ok(match self.next {
                    Some((next_timeline, next_start)) => StreamEvent::EndOfTimeline {
                        next_timeline,
                        next_start,
                    },
                    None if self.in_result => {
                        return Err(protocol("next-timeline result set without a row".into()));
                    }
                    None => StreamEvent::Ended,
                })));
            }
            // After an error, everything up to ReadyForQuery is skipped.
            _ if self.error.is_some() => {}
            Frame::Message(Message::ErrorResponse(body)) => {
                self.error = Some(ServerError::from_fields(body.fields()));
            }
            Frame::Message(Message::RowDescription(_)) if !self.in_result => {
                self.in_result = true;
            }
            Frame::Message(Message::DataRow(body)) if self.in_result => {
                let values = super::connection::data_row_values(&body)
                    .map_err(|e| protocol(format!("bad DataRow: {e}")))?;
                let text = |i: usize| {
                    values
                        .get(i)
                        .and_then(|v| v.as_ref())
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .map(str::to_string)
                };
                let tli = text(0).and_then(|t| t.parse::<u32>().ok());
                let lsn = text(1).and_then(|t| t.parse::<Lsn>().ok());
                match (tli, lsn) {
                    (Some(tli), Some(lsn)) => self.next = Some((TimelineId(tli), lsn)),
                    _ => {
                        return Err(protocol(
                            "unreadable next-timeline row after streaming".into(),
                        ));
                    }
                }
            }
            Frame::Message(Message::CommandComplete(_)) => {}
            // Data the server had in flight before it saw our CopyDone.
            Frame::Message(Message::CopyData(_)) | Frame::Message(Message::CopyDone)
                if !self.in_result => {}
            Frame::Message(other) => {
                return Err(protocol(format!(
                    "unexpected {} after the end of streaming",
                    message_name(&other)
                )));
            }
            other => {
                return Err(protocol(format!(
                    "unexpected {other:?} after the end of streaming"
                )));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    #[test]
    fn xlogdata() {
        let mut buf = BytesMut::new();
        buf.put_u8(b'w');
        buf.put_u64(0x0100_0000);
        buf.put_u64(0x0100_0100);
        buf.put_i64(42);
        buf.put_slice(b"wal!");
        let msg = ServerMessage::parse(buf.freeze()).unwrap();
        assert_eq!(
            msg,
            ServerMessage::XLogData(XLogData {
                start: Lsn(0x0100_0000),
                wal_end: Lsn(0x0100_0100),
                send_time: PgTimestamp(42),
                data: Bytes::from_static(b"wal!"),
            })
        );
    }

    #[test]
    fn keepalive() {
        let mut buf = BytesMut::new();
        buf.put_u8(b'k');
        buf.put_u64(7);
        buf.put_i64(8);
        buf.put_u8(1);
        assert_eq!(
            ServerMessage::parse(buf.freeze()).unwrap(),
            ServerMessage::Keepalive(Keepalive {
                wal_end: Lsn(7),
                send_time: PgTimestamp(8),
                reply_requested: true,
            })
        );
    }

    #[test]
    fn status_update_layout() {
        let update = StatusUpdate {
            write: Lsn(0x10),
            flush: Lsn(0x8),
            apply: Lsn::INVALID,
            time: PgTimestamp(1),
            reply_requested: false,
        };
        let bytes = update.encode();
        assert_eq!(bytes.len(), 34);
        assert_eq!(bytes[0], b'r');
        assert_eq!(&bytes[1..9], &0x10u64.to_be_bytes());
        assert_eq!(&bytes[9..17], &0x8u64.to_be_bytes());
        assert_eq!(&bytes[17..25], &0u64.to_be_bytes());
        assert_eq!(&bytes[25..33], &1i64.to_be_bytes());
        assert_eq!(bytes[33], 0);
    }

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_secs(POSTGRES_EPOCH_UNIX_SECS + 1);
        assert_eq!(PgTimestamp::from_system_time(t), PgTimestamp(1_000_000));
        assert_eq!(PgTimestamp(1_000_000).to_system_time(), t);
        // Found by fuzzing: a server-sent time near i64::MAX must not overflow.
        assert_eq!(PgTimestamp(i64::MAX).to_system_time(), UNIX_EPOCH);
        assert_eq!(PgTimestamp(i64::MIN).to_system_time(), UNIX_EPOCH);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ServerMessage::parse(Bytes::from(bytes));
        }
    }
}
