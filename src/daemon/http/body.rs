//! The response body: a small buffer, or a file streamed in chunks of at most [`CHUNK`]
//! bytes as the connection takes them (never the whole file in memory).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

/// Most bytes read from a file per frame.
pub const CHUNK: usize = 64 * 1024;

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// Bytes already in memory (taken on the first poll).
    Full(Option<Bytes>),
    /// The first `remaining` bytes of a file, read as they are sent.
    File {
        file: tokio::fs::File,
        remaining: u64,
        buf: Vec<u8>,
    },
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }

    /// Streams the first `len` bytes of `file`. A file that turns out shorter is an error
    /// (the connection is cut, so the client sees a short body, never a wrong one).
    pub fn file(file: std::fs::File, len: u64) -> Body {
        Body::File {
            file: tokio::fs::File::from_std(file),
            remaining: len,
            buf: Vec::new(),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::File {
                file,
                remaining,
                buf,
            } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let want = usize::try_from(*remaining).map_or(CHUNK, |r| r.min(CHUNK));
                buf.resize(want, 0);
                let mut read_buf = ReadBuf::new(buf);
                match Pin::new(file).poll_read(cx, &mut read_buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) => {
                        let filled = read_buf.filled();
                        if filled.is_empty() {
                            *remaining = 0;
                            return Poll::Ready(Some(Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the file became shorter while it was sent",
                            ))));
                        }
                        *remaining -= filled.len() as u64;
                        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(filled)))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::File { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::File { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}
