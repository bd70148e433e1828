//! The store API's wire contract, shared by the server (`walden serve`, `walden run`) and the
//! client (`walden-restore --from http(s)://...`): paths, the header that says how a WAL
//! segment is stored, the JSON shapes of the lists, and percent-encoding of path segments.
//!
//! Paths (all `GET` or `HEAD`, all but `/healthz` need `Authorization: Bearer <token>`):
//! ```text
//! /v1/clusters                               ["main", ...]
//! /v1/clusters/<c>/info                      cluster.json
//! /v1/clusters/<c>/backups                   [BackupEntry] of the complete backups, oldest first
//! /v1/clusters/<c>/backups/<id>/<file>       a file the backup lists: an archive,
//!                                            backup_manifest, backup.json, config/<name>
//! /v1/clusters/<c>/wal                       [WalEntry] of every stored WAL file
//! /v1/clusters/<c>/wal/<segment>             a segment by its PostgreSQL name, as stored
//!                                            (header `Walden-Stored-As`)
//! /v1/clusters/<c>/history                   [timeline, ...] with a history file
//! /v1/clusters/<c>/history/<timeline>        a history file (timeline in decimal)
//! /v1/clusters/<c>/gaps                      gaps.json ([] when none)
//! ```

use serde::{Deserialize, Serialize};

/// Where the store API lives.
pub const PREFIX: &str = "/v1/clusters";

/// Response header of a WAL segment: the name of the file the store holds for it
/// (`<segment>`, `<segment>.zst` or `<segment>.partial`). The body is that file as stored: the
/// client decompresses a `.zst` and zero-fills a `.partial` after its valid WAL.
pub const STORED_AS: &str = "walden-stored-as";

/// One complete backup in the `backups` list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupEntry {
    pub id: String,
    /// Its `backup.json`.
    pub backup: serde_json::Value,
}

/// One stored WAL file in the `wal` list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalEntry {
    /// The stored file name (`.zst` and `.partial` included).
    pub name: String,
    /// Bytes on disk.
    pub size: u64,
}

/// A path segment with everything but `A-Za-z0-9._-~` percent-encoded.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"._-~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A percent-encoded path segment decoded; `None` if an escape is malformed or the result is
/// not UTF-8.
pub fn decode_segment(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_bad_escapes_are_refused() {
        for text in ["postgresql.conf", "my conf/../x", "100%", "é"] {
            let encoded = encode_segment(text);
            assert!(!encoded.contains(['/', ' ']), "{encoded}");
            assert_eq!(decode_segment(&encoded).as_deref(), Some(text));
        }
        assert_eq!(encode_segment("a b"), "a%20b");
        assert_eq!(decode_segment("%2e%2e").as_deref(), Some(".."));
        assert_eq!(decode_segment("%2"), None);
        assert_eq!(decode_segment("%zz"), None);
        assert_eq!(decode_segment("%ff"), None);
    }
}
