//! `ServerMessage::parse` on arbitrary CopyData payloads (what arrives inside CopyBoth).
//!
//! Invariants: `w` keeps every byte after its 25-byte header as WAL data; `k` is exactly 18
//! bytes; a parsed message re-encodes to the input; anything else is an error.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use walden::pg::ServerMessage;

fuzz_target!(|payload: &[u8]| {
    let parsed = ServerMessage::parse(Bytes::copy_from_slice(payload));
    let Ok(message) = parsed else {
        return;
    };
    let mut again = BytesMut::new();
    match &message {
        ServerMessage::XLogData(x) => {
            assert_eq!(payload.first(), Some(&b'w'));
            assert_eq!(x.data.len() + 25, payload.len());
            again.put_u8(b'w');
            again.put_u64(x.start.0);
            again.put_u64(x.wal_end.0);
            again.put_i64(x.send_time.0);
            again.put_slice(&x.data);
            // What a consumer does next: show the lag, compute where the data ends.
            let _ = x.send_time.to_system_time();
            let _ = x.start.checked_add(x.data.len() as u64);
        }
        ServerMessage::Keepalive(k) => {
            assert_eq!(payload.first(), Some(&b'k'));
            assert_eq!(payload.len(), 18);
            again.put_u8(b'k');
            again.put_u64(k.wal_end.0);
            again.put_i64(k.send_time.0);
            again.put_u8(payload[17]);
            assert_eq!(k.reply_requested, payload[17] != 0);
            let _ = k.send_time.to_system_time();
        }
    }
    assert_eq!(
        &again[..],
        payload,
        "{message:?} does not re-encode to its input"
    );
});
