//! What the receiver is doing, published for a supervisor (`walden run`) through an optional
//! `watch` channel in [`ReceiveOptions::status`](super::ReceiveOptions::status): its state,
//! positions, the server's WAL end (for lag in bytes), when the newest durable byte arrived
//! (for lag in seconds), counters and the last error. Publishing never changes what the
//! receiver does; without a channel it costs nothing.

use std::collections::VecDeque;
use std::time::SystemTime;

use tokio::sync::watch;

use super::ReceiveError;
use crate::wal::{Lsn, TimelineId};

/// The receiver's state, as `walden run` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverState {
    /// Opening a connection (at start, or after a wait).
    Connecting,
    /// Inside `START_REPLICATION`: WAL flows.
    Streaming,
    /// The connection ended or failed; a new one is tried after a backoff.
    WaitingToReconnect,
    /// `run` returned (stopped as asked, or on an error it cannot retry).
    Stopped,
}

impl ReceiverState {
    /// `connecting`, `streaming`, `waiting-to-reconnect`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverState::Connecting => "connecting",
            ReceiverState::Streaming => "streaming",
            ReceiverState::WaitingToReconnect => "waiting-to-reconnect",
            ReceiverState::Stopped => "stopped",
        }
    }
}

/// A snapshot of the receiver. Positions are `None` until known.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceiverStatus {
    pub state: ReceiverState,
    /// When `state` was entered.
    pub since: SystemTime,
    /// The timeline being streamed (the last one, when not streaming).
    pub timeline: Option<TimelineId>,
    /// End of the WAL received so far.
    pub received: Option<Lsn>,
    /// Every byte before this is fsynced in the store.
    pub flushed: Option<Lsn>,
    /// The server's flush position, from the newest XLogData or keepalive header.
    pub server_wal_end: Option<Lsn>,
    /// When the server last sent anything inside the stream.
    pub last_message_at: Option<SystemTime>,
    /// When the newest byte that is now durable arrived from the server.
    pub flushed_arrived_at: Option<SystemTime>,
    /// WAL bytes received through this channel (counted across restarts of `run`).
    pub bytes_received: u64,
    /// Segments completed (renamed to their final name) through this channel, likewise.
    pub segments_completed: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
}

impl ReceiverStatus {
    /// A receiver about to connect.
    pub fn new(now: SystemTime) -> Self {
        ReceiverStatus {
            state: ReceiverState::Connecting,
            since: now,
            timeline: None,
            received: None,
            flushed: None,
            server_wal_end: None,
            last_message_at: None,
            flushed_arrived_at: None,
            bytes_received: 0,
            segments_completed: 0,
            last_error: None,
            last_error_at: None,
        }
    }
}

/// Writes into the channel when there is one.
#[derive(Clone, Copy)]
pub(super) struct Publisher<'a>(pub Option<&'a watch::Sender<ReceiverStatus>>);

impl Publisher<'_> {
    /// Whether anyone listens (otherwise updates are dropped unseen).
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    pub fn update(&self, f: impl FnOnce(&mut ReceiverStatus)) {
        if let Some(tx) = self.0 {
            tx.send_modify(f);
        }
    }

    pub fn state(&self, state: ReceiverState) {
        self.update(|s| {
            if s.state != state {
                s.state = state;
                s.since = SystemTime::now();
            }
        });
    }

    pub fn error(&self, error: &ReceiveError) {
        self.update(|s| {
            s.last_error = Some(error.to_string());
            s.last_error_at = Some(SystemTime::now());
        });
    }
}

/// Arrival times of received WAL, so that when the durable position moves we know when its
/// newest byte arrived. Bounded: when full, the newest entry is coarsened (moved forward),
/// which can only make the reported lag larger, never smaller.
#[derive(Default)]
pub(super) struct Arrivals(VecDeque<(Lsn, SystemTime)>);

const MAX_ARRIVALS: usize = 1024;

impl Arrivals {
    /// WAL up to `end` had arrived by `at`.
    pub fn push(&mut self, end: Lsn, at: SystemTime) {
        if self.0.len() >= MAX_ARRIVALS {
            self.0.pop_back();
        }
        self.0.push_back((end, at));
    }

    /// Everything before `flushed` is durable: the arrival time of the newest such WAL, if
    /// the durable position passed a recorded arrival.
    pub fn flushed(&mut self, flushed: Lsn) -> Option<SystemTime> {
        let mut newest = None;
        while let Some(&(end, at)) = self.0.front() {
            if end > flushed {
                break;
            }
            newest = Some(at);
            self.0.pop_front();
        }
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn arrivals_report_the_newest_flushed_byte() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s| t0 + Duration::from_secs(s);
        let mut a = Arrivals::default();
        a.push(Lsn(100), at(1));
        a.push(Lsn(200), at(2));
        a.push(Lsn(300), at(3));
        assert_eq!(a.flushed(Lsn(99)), None);
        assert_eq!(a.flushed(Lsn(250)), Some(at(2)));
        assert_eq!(a.flushed(Lsn(250)), None, "already reported");
        assert_eq!(a.flushed(Lsn(300)), Some(at(3)));
        assert!(a.0.is_empty());
    }

    #[test]
    fn full_arrivals_coarsen_the_newest_entry() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut a = Arrivals::default();
        for i in 0..(MAX_ARRIVALS as u64 + 10) {
            a.push(Lsn(i + 1), t0 + Duration::from_secs(i));
        }
        assert_eq!(a.0.len(), MAX_ARRIVALS);
        // The oldest entries are intact...
        assert_eq!(a.flushed(Lsn(1)), Some(t0));
        // ...and the last one is the newest arrival.
        let last = MAX_ARRIVALS as u64 + 10;
        assert_eq!(
            a.flushed(Lsn(last)),
            Some(t0 + Duration::from_secs(last - 1))
        );
    }

    #[test]
    fn publisher_without_a_channel_does_nothing_and_with_one_tracks_state_changes() {
        Publisher(None).state(ReceiverState::Streaming);
        let t0 = SystemTime::UNIX_EPOCH;
        let (tx, rx) = watch::channel(ReceiverStatus::new(t0));
        let p = Publisher(Some(&tx));
        p.state(ReceiverState::Connecting);
        assert_eq!(rx.borrow().since, t0, "same state: since unchanged");
        p.state(ReceiverState::Streaming);
        assert_eq!(rx.borrow().state, ReceiverState::Streaming);
        assert!(rx.borrow().since > t0);
        p.error(&ReceiveError::Refused("no".into()));
        assert_eq!(rx.borrow().last_error.as_deref(), Some("no"));
    }
}
