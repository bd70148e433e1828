//! `pg::frame::decode` on an arbitrary byte stream, as a connection reads it: bytes arrive in
//! chunks (cut by the first 8 input bytes, see `walden_fuzz::Chunks`), and after each chunk
//! the connection decodes whole messages until `decode` asks for more. Every decoded message
//! is then taken apart the way the client does (error fields, rows, parameter values,
//! CopyData through `ServerMessage::parse`).
//!
//! Invariants: `Ok(None)` leaves the buffer untouched and only happens when the announced
//! message is not complete; `Ok(Some)` consumes exactly the announced length; decoding
//! the same bytes delivered in one piece gives the same messages and the same error.
#![no_main]

use std::str::FromStr;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use libfuzzer_sys::fuzz_target;
use postgres_protocol::message::backend::Message;
use walden::pg::frame::{self, Frame, FrameError};
use walden::pg::{ServerError, ServerMessage, ServerVersion, SystemId};
use walden::wal::Lsn;
use walden_fuzz::{Chunks, split_seed};

fuzz_target!(|input: &[u8]| {
    let (seed, stream) = split_seed(input);
    let chunked = read_stream(Chunks::new(seed, stream));
    let whole = read_stream(Chunks::new(0, stream));
    assert_eq!(
        chunked, whole,
        "the result depends on how the bytes were split"
    );
});

/// What a connection saw: each message's size and description, then the error, if any.
#[derive(Debug, PartialEq)]
struct Seen {
    messages: Vec<(usize, String)>,
    error: Option<FrameError>,
}

fn read_stream<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Seen {
    let mut seen = Seen {
        messages: Vec::new(),
        error: None,
    };
    let mut buf = BytesMut::new();
    // The bytes not yet decoded, kept aside to check what `decode` leaves in `buf`.
    let mut pending: Vec<u8> = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        pending.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match frame::decode(&mut buf) {
                Ok(Some(frame)) => {
                    let used = before - buf.len();
                    let announced = pending
                        .get(1..5)
                        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize + 1);
                    assert_eq!(
                        Some(used),
                        announced,
                        "consumed other than the announced length"
                    );
                    pending.drain(..used);
                    assert_eq!(buf.first(), pending.first());
                    seen.messages.push((used, take_apart(frame)));
                }
                Ok(None) => {
                    assert_eq!(&buf[..], &pending[..], "Ok(None) changed the buffer");
                    if let Some(l) = pending.get(1..5) {
                        let total = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize + 1;
                        assert!(
                            pending.len() < total,
                            "Ok(None) with a whole message buffered"
                        );
                    }
                    break;
                }
                Err(e) => {
                    // A connection gives up on the first framing error.
                    let _ = e.to_string();
                    seen.error = Some(e);
                    return seen;
                }
            }
        }
    }
    seen
}

/// Reads every part of a message as the client would, and describes it.
fn take_apart(frame: Frame) -> String {
    let message = match frame {
        Frame::Message(m) => m,
        other => return format!("{other:?}"),
    };
    let name = frame::message_name(&message);
    match message {
        Message::ErrorResponse(body) => {
            let e = ServerError::from_fields(body.fields());
            let _ = (e.to_string(), e.is_auth_failure());
        }
        Message::NoticeResponse(body) => {
            let _ = ServerError::from_fields(body.fields()).to_string();
        }
        Message::ParameterStatus(body) => {
            // The connection parses `server_version`; any value will do for the parser.
            if let (Ok(_), Ok(value)) = (body.name(), body.value())
                && let Some(v) = ServerVersion::parse(value)
            {
                let _ = v.major();
            }
        }
        Message::RowDescription(body) => {
            let mut fields = body.fields();
            while let Ok(Some(field)) = fields.next() {
                let _ = (field.name(), field.type_oid(), field.format());
            }
        }
        Message::DataRow(body) => {
            let buffer = body.buffer();
            let mut ranges = body.ranges();
            while let Ok(Some(range)) = ranges.next() {
                let Some(range) = range else { continue };
                // Values are read as IDENTIFY_SYSTEM and the timeline switch result read them.
                if let Some(text) = buffer.get(range).and_then(|v| std::str::from_utf8(v).ok()) {
                    if let Ok(lsn) = Lsn::from_str(text) {
                        assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
                    }
                    if let Ok(id) = SystemId::from_str(text) {
                        assert_eq!(id.to_string().parse::<SystemId>().ok(), Some(id));
                    }
                    let _ = text.parse::<u32>();
                }
            }
        }
        Message::CommandComplete(body) => {
            let _ = body.tag();
        }
        Message::CopyData(body) => {
            if let Ok(m) = ServerMessage::parse(body.into_bytes()) {
                return format!("{name} {m:?}");
            }
        }
        Message::CopyOutResponse(body) => {
            let mut formats = body.column_formats();
            while let Ok(Some(_)) = formats.next() {}
        }
        Message::CopyInResponse(body) => {
            let mut formats = body.column_formats();
            while let Ok(Some(_)) = formats.next() {}
        }
        Message::AuthenticationSasl(body) => {
            let mut mechanisms = body.mechanisms();
            while let Ok(Some(_)) = mechanisms.next() {}
        }
        Message::AuthenticationMd5Password(body) => {
            let _ = body.salt();
        }
        Message::BackendKeyData(body) => {
            let _ = (body.process_id(), body.secret_key());
        }
        Message::ReadyForQuery(body) => {
            let _ = body.status();
        }
        _ => {}
    }
    name.to_string()
}
