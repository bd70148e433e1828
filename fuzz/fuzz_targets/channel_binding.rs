//! `pg::channel_binding_hash` on arbitrary bytes as the server's certificate. With
//! `sslmode=require` or `prefer` the certificate is not verified, so any server (or anyone
//! in between) chooses these bytes.
//!
//! Invariant: when a hash is returned it is a SHA-256, SHA-384 or SHA-512 digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walden::pg::channel_binding_hash;

fuzz_target!(|der: &[u8]| {
    if let Some(hash) = channel_binding_hash(der) {
        assert!(matches!(hash.len(), 32 | 48 | 64), "{} bytes", hash.len());
    }
});
