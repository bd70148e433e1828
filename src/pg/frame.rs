//! Sans-IO decoding of backend messages.
//!
//! [`decode`] looks at a read buffer and either takes one whole message off its front or
//! leaves it untouched (so it is safe to call again after more bytes arrive, and safe inside
//! `select!`). It caps the announced length of every message, handles the two messages
//! `postgres-protocol` does not know (`W` CopyBothResponse and `v` NegotiateProtocolVersion)
//! itself, and hands everything else to `postgres_protocol::message::backend::Message`.
//!
//! Architecture invariant: nothing here panics on any input; bad bytes become a
//! [`FrameError`].

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::Message;

/// The largest message we accept. WAL arrives in chunks of at most 128 kB and base backup
/// data in smaller ones; anything near this size means the peer is not speaking the protocol.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;

/// One decoded backend message.
pub enum Frame {
    /// Any message `postgres-protocol` understands.
    Message(Message),
    /// `W`: the server entered CopyBoth mode (START_REPLICATION).
    CopyBothResponse,
    /// `v`: the server supports an older minor protocol version or not all our options.
    NegotiateProtocolVersion {
        newest_minor: i32,
        unrecognized_options: Vec<String>,
    },
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Message(m) => f.write_str(message_name(m)),
            Frame::CopyBothResponse => f.write_str("CopyBothResponse"),
            Frame::NegotiateProtocolVersion {
                newest_minor,
                unrecognized_options,
            } => write!(
                f,
                "NegotiateProtocolVersion(minor {newest_minor}, unrecognized {unrecognized_options:?})"
            ),
        }
    }
}

/// The name of a message, for error texts (`Message` itself has no `Debug`).
pub fn message_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::AuthenticationCleartextPassword => "AuthenticationCleartextPassword",
        Message::AuthenticationMd5Password(_) => "AuthenticationMD5Password",
        Message::AuthenticationSasl(_) => "AuthenticationSASL",
        Message::AuthenticationSaslContinue(_) => "AuthenticationSASLContinue",
        Message::AuthenticationSaslFinal(_) => "AuthenticationSASLFinal",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "unexpected message",
    }
}

/// The peer sent bytes that are not a valid PostgreSQL backend message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message type {tag:?} announces a length of {len} bytes, which is invalid")]
    BadLength { tag: char, len: u32 },
    #[error(
        "message type {tag:?} announces {len} bytes, more than the {MAX_MESSAGE_LEN}-byte limit"
    )]
    TooLong { tag: char, len: u32 },
    #[error("malformed message of type {tag:?}: {reason}")]
    Malformed { tag: char, reason: String },
}

const COPY_BOTH_RESPONSE: u8 = b'W';
const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';

/// Takes one complete message off the front of `buf`, or returns `Ok(None)` (leaving `buf`
/// as it was) when the message is not complete yet.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: char::from(tag),
            len,
        });
    }
    let len_usize = len as usize;
    if len_usize > MAX_MESSAGE_LEN {
        return Err(FrameError::TooLong {
            tag: char::from(tag),
            len,
        });
    }
    let total = len_usize + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let malformed = |reason: &str| FrameError::Malformed {
        tag: char::from(tag),
        reason: reason.to_string(),
    };
    match tag {
        COPY_BOTH_RESPONSE => {
            let mut body = buf.split_to(total).freeze();
            body.advance(5);
            decode_copy_both_response(&mut body).ok_or_else(|| malformed("truncated body"))?;
            Ok(Some(Frame::CopyBothResponse))
        }
        NEGOTIATE_PROTOCOL_VERSION => {
            let mut body = buf.split_to(total).freeze();
            body.advance(5);
            let frame = decode_negotiate_protocol_version(&mut body)
                .ok_or_else(|| malformed("truncated body"))?;
            Ok(Some(frame))
        }
        _ => match Message::parse(buf) {
            Ok(Some(message)) => Ok(Some(Frame::Message(message))),
            // Unreachable in practice: we checked the whole frame is present.
            Ok(None) => Ok(None),
            Err(e) => Err(malformed(&e.to_string())),
        },
    }
}

fn decode_copy_both_response(body: &mut bytes::Bytes) -> Option<()> {
    let _overall_format = body.try_get_i8().ok()?;
    let columns = body.try_get_i16().ok()?;
    for _ in 0..columns.max(0) {
        body.try_get_i16().ok()?;
    }
    body.is_empty().then_some(())
}

fn decode_negotiate_protocol_version(body: &mut bytes::Bytes) -> Option<Frame> {
    let newest_minor = body.try_get_i32().ok()?;
    let count = body.try_get_i32().ok()?;
    let mut unrecognized_options = Vec::new();
    for _ in 0..count.max(0) {
        let end = body.iter().position(|&b| b == 0)?;
        let name = String::from_utf8_lossy(&body[..end]).into_owned();
        body.advance(end + 1);
        unrecognized_options.push(name);
    }
    body.is_empty().then_some(Frame::NegotiateProtocolVersion {
        newest_minor,
        unrecognized_options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use proptest::prelude::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn incomplete_leaves_buffer_untouched() {
        let whole = frame(b'Z', b"I");
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert!(decode(&mut buf).unwrap().is_none());
            assert_eq!(&buf[..], &whole[..cut]);
        }
        let mut buf = BytesMut::from(&whole[..]);
        assert!(matches!(
            decode(&mut buf).unwrap(),
            Some(Frame::Message(Message::ReadyForQuery(_)))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn copy_both_response() {
        let mut buf = BytesMut::from(&frame(b'W', &[0, 0, 0])[..]);
        buf.extend_from_slice(&frame(b'Z', b"I"));
        assert!(matches!(
            decode(&mut buf).unwrap(),
            Some(Frame::CopyBothResponse)
        ));
        assert!(decode(&mut buf).unwrap().is_some());
        let mut bad = BytesMut::from(&frame(b'W', &[0, 0, 2, 0])[..]);
        assert!(matches!(
            decode(&mut bad),
            Err(FrameError::Malformed { tag: 'W', .. })
        ));
    }

    #[test]
    fn negotiate_protocol_version() {
        let mut body = Vec::new();
        body.put_i32(0);
        body.put_i32(2);
        body.extend_from_slice(b"_pq_.a\0_pq_.b\0");
        let mut buf = BytesMut::from(&frame(b'v', &body)[..]);
        match decode(&mut buf).unwrap() {
            Some(Frame::NegotiateProtocolVersion {
                newest_minor,
                unrecognized_options,
            }) => {
                assert_eq!(newest_minor, 0);
                assert_eq!(unrecognized_options, ["_pq_.a", "_pq_.b"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut buf = BytesMut::from(&b"Z\0\0\0\x02"[..]);
        assert_eq!(
            decode(&mut buf).unwrap_err(),
            FrameError::BadLength { tag: 'Z', len: 2 }
        );
        // An HTTP server answering our startup packet.
        let mut buf = BytesMut::from(&b"HTTP/1.1 400 Bad Request\r\n"[..]);
        assert!(matches!(
            decode(&mut buf),
            Err(FrameError::TooLong { tag: 'H', .. })
        ));
    }

    #[test]
    fn unknown_tag_is_an_error() {
        let mut buf = BytesMut::from(&frame(b'?', b"xyz")[..]);
        assert!(matches!(
            decode(&mut buf),
            Err(FrameError::Malformed { tag: '?', .. })
        ));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                match decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn valid_frames_split_anywhere_decode_the_same(
            rows in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut stream = Vec::new();
            for r in &rows {
                stream.extend_from_slice(&frame(b'd', r));
            }
            let cut = cut.index(stream.len() + 1);
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut got = Vec::new();
            loop {
                match decode(&mut buf).unwrap() {
                    Some(Frame::Message(Message::CopyData(d))) => got.push(d.data().to_vec()),
                    Some(other) => panic!("unexpected {other:?}"),
                    None => break,
                }
            }
            buf.extend_from_slice(&stream[cut..]);
            while let Some(Frame::Message(Message::CopyData(d))) = decode(&mut buf).unwrap() {
                got.push(d.data().to_vec());
            }
            prop_assert_eq!(got, rows);
        }
    }
}
