//! The writer: verifies received WAL, writes it into `.partial` segments, fsyncs, completes
//! segments, and knows how far the store is durable.
//!
//! It is driven by the streaming thread itself ([`super::session`]), with no hand-off: WAL
//! is verified as it is taken ([`Writer::write`]), queued without a copy (the pieces share
//! the network buffer), and written with one `pwritev` per segment when the caller has
//! handled everything one read brought ([`Writer::write_out`]). Only [`Writer::sync`],
//! [`Writer::end`] and the completion of a segment move [`Writer::flushed`], so a position
//! read there is durable and may be reported to the server.

use bytes::Bytes;

use super::ReceiveError;
use crate::store::{ClusterWriter, Compression, SegmentWriter};
use crate::wal::{Lsn, SegNo, TimelineId, VerifierConfig, WalSegSize, WalVerifier};

/// One stream being written: its verifier, the open segment and the WAL queued for it.
struct Stream {
    tli: TimelineId,
    verifier: WalVerifier,
    /// Where the next byte taken belongs.
    next: Lsn,
    segment: Option<SegmentWriter>,
    /// Verified WAL not yet written, all of it in the open segment, from its position on.
    queued: Vec<Bytes>,
}

/// The store's side of the receiver. See the module documentation.
pub(super) struct Writer {
    store: ClusterWriter,
    compression: Compression,
    stream: Option<Stream>,
    /// Every byte before this is fsynced in the store.
    flushed: Lsn,
    /// Segments completed since the writer was created.
    segments: u64,
}

impl Writer {
    pub fn new(store: ClusterWriter, compression: Compression) -> Writer {
        Writer {
            store,
            compression,
            stream: None,
            flushed: Lsn::INVALID,
            segments: 0,
        }
    }

    /// The store, for what is not streaming (history files, gaps, the resume point).
    pub fn store(&mut self) -> &mut ClusterWriter {
        &mut self.store
    }

    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    pub fn segments(&self) -> u64 {
        self.segments
    }

    fn seg_size(&self) -> WalSegSize {
        self.store.info().wal_segment_size
    }

    /// A new stream begins at `start` (a segment boundary) on `config.tli`; the previous one,
    /// if any, ends first.
    pub fn begin(&mut self, config: VerifierConfig, start: Lsn) -> Result<(), ReceiveError> {
        self.end()?;
        let verifier = WalVerifier::new(config, start)
            .map_err(|e| ReceiveError::Internal(format!("cannot verify from {start}: {e}")))?;
        self.stream = Some(Stream {
            tli: config.tli,
            verifier,
            next: start,
            segment: None,
            queued: Vec::new(),
        });
        self.flushed = start;
        Ok(())
    }

    /// Verifies `data`, which starts at `start`, and queues it; a segment whose last byte
    /// arrives is written, fsynced and completed at once. On an error what came before is
    /// kept, durable, as `.partial`.
    pub fn write(&mut self, start: Lsn, data: Bytes) -> Result<(), ReceiveError> {
        let result = self.take(start, data);
        if result.is_err() {
            let _ = self.end();
        }
        result
    }

    fn take(&mut self, start: Lsn, mut data: Bytes) -> Result<(), ReceiveError> {
        let seg_size = self.seg_size();
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
        stream.verifier.feed(&data).map_err(ReceiveError::Verify)?;
        while !data.is_empty() {
            let offset = stream.next.segment_offset(seg_size);
            let room = (seg_size.bytes() - u64::from(offset)) as usize;
            let piece = data.split_to(room.min(data.len()));
            stream.next = Lsn(stream.next.0 + piece.len() as u64);
            let completes = piece.len() == room;
            stream.queued.push(piece);
            if completes {
                Self::write_queued(&mut self.store, stream, seg_size)?;
                let done = stream.segment.take().ok_or_else(|| {
                    ReceiveError::Internal("segment vanished while writing".into())
                })?;
                done.finish(self.compression)?;
                self.flushed = self.flushed.max(stream.next);
                self.segments += 1;
            }
        }
        Ok(())
    }

    /// Writes everything queued (no fsync).
    pub fn write_out(&mut self) -> Result<(), ReceiveError> {
        let seg_size = self.seg_size();
        if let Some(stream) = self.stream.as_mut() {
            Self::write_queued(&mut self.store, stream, seg_size)?;
        }
        Ok(())
    }

    fn write_queued(
        store: &mut ClusterWriter,
        stream: &mut Stream,
        seg_size: WalSegSize,
    ) -> Result<(), ReceiveError> {
        if stream.queued.is_empty() {
            return Ok(());
        }
        let len: usize = stream.queued.iter().map(Bytes::len).sum();
        let first = Lsn(stream.next.0 - len as u64);
        let segment = match stream.segment.as_mut() {
            Some(s) => s,
            None => stream
                .segment
                .insert(store.open_segment(stream.tli, first.segno(seg_size))?),
        };
        segment.write(first.segment_offset(seg_size), &stream.queued)?;
        stream.queued.clear();
        Ok(())
    }

    /// Writes what is queued, fsyncs the open segment (unless nothing was written since the
    /// last time), and returns the durable position.
    pub fn sync(&mut self) -> Result<Lsn, ReceiveError> {
        self.write_out()?;
        if let Some(stream) = self.stream.as_mut()
            && stream.next > self.flushed
        {
            if let Some(segment) = stream.segment.as_mut() {
                segment.sync()?;
            }
            self.flushed = stream.next;
        }
        Ok(self.flushed)
    }

    /// Ends the current stream: what is queued is written, the open segment fsynced and kept
    /// as `.partial`. Returns the durable position.
    pub fn end(&mut self) -> Result<Lsn, ReceiveError> {
        let seg_size = self.seg_size();
        let Some(mut stream) = self.stream.take() else {
            return Ok(self.flushed);
        };
        // Whatever happens to the queued WAL, what was written before is made durable.
        let written = Self::write_queued(&mut self.store, &mut stream, seg_size);
        let closed = match stream.segment.take() {
            Some(segment) => segment.close_partial().map_err(ReceiveError::from),
            None => Ok(()),
        };
        written?;
        closed?;
        self.flushed = stream.next;
        Ok(stream.next)
    }
}

/// The segment holding `lsn`; used by callers that round positions.
pub(super) fn segment_start(lsn: Lsn, seg_size: WalSegSize) -> Lsn {
    SegNo::start_lsn(lsn.segno(seg_size), seg_size)
}
