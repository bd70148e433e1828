//! The CopyBoth loop of one timeline, on one blocking thread: read what the socket holds,
//! verify and queue it, write it with one call per segment, fsync when durability is asked
//! for, and answer the server — no hand-off between threads, so a synchronous commit waits
//! for one read, one durable write (the store writes through to the disk in synchronous
//! mode, see [`ClusterWriter::set_write_through`](crate::store::ClusterWriter::set_write_through))
//! and one status update, and nothing more.
//!
//! When to fsync and report:
//! - synchronous mode: after every read that brought WAL, then a status update at once;
//! - asynchronous mode: when a segment completes (its fsync is part of completing it), at
//!   every status interval, when the server asks for a reply, at `--until`, and at the end;
//! - a status update goes out whenever the durable position moved, and at every interval.
//!
//! In asynchronous mode a read that brought little is followed by a short pause
//! ([`READ_PACE`]): the kernel gathers what the server sends meanwhile, and the next read
//! takes it all, instead of waking up for every small message. A busy stream is read flat
//! out.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::ReceiveError;
use super::status::{Arrivals, Publisher, ReceiverStatus};
use super::writer::Writer;
use crate::pg::{CopyStream, PgTimestamp, ServerMessage, StatusUpdate, StreamEvent};
use crate::wal::{Lsn, TimelineId};

/// What the streaming thread needs besides the stream and the writer.
pub(super) struct Settings {
    pub synchronous: bool,
    pub status_interval: Duration,
    /// Stop once everything before this is durable.
    pub target: Option<Lsn>,
    pub status: Option<watch::Sender<ReceiverStatus>>,
    pub shutdown: watch::Receiver<bool>,
}

/// How the loop ended without an error.
pub(super) enum Copy {
    /// Stopped as asked (signal, target): everything received is durable and reported.
    Stopped,
    /// The server ended the stream (it is shutting down).
    ServerEnded,
    /// The timeline ended; the next one starts at `next_start`.
    TimelineEnded {
        next_timeline: TimelineId,
        next_start: Lsn,
    },
}

/// Status updates are never sent more often than this from the timer.
const MIN_STATUS: Duration = Duration::from_millis(100);
/// The longest wait before looking at the shutdown flag again.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// In asynchronous mode, the pause after a read that brought less than [`PACE_BELOW`].
pub(super) const READ_PACE: Duration = Duration::from_millis(20);
const PACE_BELOW: u64 = 64 * 1024;
/// The most read from the socket before what was read is written: bounds the WAL held in
/// memory.
const READ_LIMIT: usize = 1024 * 1024;
/// The longest wait for the server's end of the exchange after our CopyDone.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams one timeline from `start` until stopped, ended, or an error. `streamed` tells
/// whether any WAL arrived (the caller's reconnection backoff starts over then).
pub(super) fn run(
    settings: &Settings,
    stream: &mut CopyStream,
    writer: &mut Writer,
    start: Lsn,
    streamed: &mut bool,
) -> Result<Copy, ReceiveError> {
    let publish = Publisher(settings.status.as_ref());
    let mut published = Published {
        publish,
        segments: writer.segments(),
    };
    let mut received = start;
    let mut reported = writer.flushed();
    let mut arrivals = Arrivals::default();
    let status_every = settings.status_interval.max(MIN_STATUS);
    let mut next_status = Instant::now() + status_every;
    loop {
        if *settings.shutdown.borrow() {
            return stop(stream, writer, received, &mut published, &mut arrivals);
        }
        let now = Instant::now();
        if now >= next_status {
            let flushed = writer.sync()?;
            send_status(stream, received, flushed)?;
            reported = flushed;
            published.flushed(writer, &mut arrivals, flushed);
            next_status = now + status_every;
        }
        let wait = next_status
            .saturating_duration_since(now)
            .min(SHUTDOWN_POLL);
        if !stream.read(wait, READ_LIMIT)? {
            continue;
        }
        let before = received;
        let mut reply = false;
        let mut server_end = None;
        let mut ended = None;
        while let Some(event) = stream.next_event()? {
            match event {
                StreamEvent::Message(ServerMessage::XLogData(x)) => {
                    *streamed = true;
                    server_end = Some(x.wal_end);
                    received = received.max(Lsn(x.start.0 + x.data.len() as u64));
                    writer.write(x.start, x.data)?;
                }
                StreamEvent::Message(ServerMessage::Keepalive(k)) => {
                    server_end = Some(k.wal_end);
                    reply |= k.reply_requested;
                }
                StreamEvent::EndOfTimeline {
                    next_timeline,
                    next_start,
                } => {
                    ended = Some(Copy::TimelineEnded {
                        next_timeline,
                        next_start,
                    });
                    break;
                }
                StreamEvent::Ended => {
                    ended = Some(Copy::ServerEnded);
                    break;
                }
            }
        }
        writer.write_out()?;
        // Arrival times only serve the published status: no clock read without a listener.
        if publish.enabled() {
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
        }
        if let Some(ended) = ended {
            return Ok(ended);
        }
        let reached = settings.target.is_some_and(|target| received >= target);
        let flushed = if settings.synchronous || reply || reached {
            writer.sync()?
        } else {
            writer.flushed()
        };
        if flushed > reported || reply {
            send_status(stream, received, flushed)?;
            reported = flushed;
            published.flushed(writer, &mut arrivals, flushed);
        }
        if reached {
            return stop(stream, writer, received, &mut published, &mut arrivals);
        }
        if !settings.synchronous && received.0 - before.0 < PACE_BELOW {
            std::thread::sleep(READ_PACE);
        }
    }
}

/// What the supervisor was told (through [`Publisher`]) of the writer's progress.
struct Published<'a> {
    publish: Publisher<'a>,
    /// The writer's completed-segment count already added to the published status.
    segments: u64,
}

impl Published<'_> {
    /// The durable position moved to `flushed`.
    fn flushed(&mut self, writer: &Writer, arrivals: &mut Arrivals, flushed: Lsn) {
        let arrived = arrivals.flushed(flushed);
        let completed = writer.segments() - self.segments;
        self.segments = writer.segments();
        self.publish.update(|s| {
            s.flushed = Some(flushed);
            s.segments_completed += completed;
            if arrived.is_some() {
                s.flushed_arrived_at = arrived;
            }
        });
    }
}

/// Stops streaming on our side: everything durable, reported, then CopyDone.
fn stop(
    stream: &mut CopyStream,
    writer: &mut Writer,
    received: Lsn,
    published: &mut Published<'_>,
    arrivals: &mut Arrivals,
) -> Result<Copy, ReceiveError> {
    let flushed = writer.end()?;
    published.flushed(writer, arrivals, flushed);
    send_status(stream, received, flushed)?;
    // Be polite, but do not hang on a server that does not answer.
    let _ = stream.stop(STOP_TIMEOUT);
    Ok(Copy::Stopped)
}

fn send_status(stream: &mut CopyStream, received: Lsn, flushed: Lsn) -> Result<(), ReceiveError> {
    let update = StatusUpdate {
        write: received,
        flush: flushed,
        apply: Lsn::INVALID,
        time: PgTimestamp::now(),
        reply_requested: false,
    };
    stream.send_status_update(&update)?;
    Ok(())
}
