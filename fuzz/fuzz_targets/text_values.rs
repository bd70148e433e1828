//! The small text parsers fed by the server's answers and by file names in a store or a
//! `pg_wal` listing: `Lsn`, WAL segment and history file names, `wal_segment_size`, slot
//! names, `server_version`, system identifiers.
//!
//! Input: one byte choosing the segment size (2^(20 + b % 11)), then UTF-8 text.
//!
//! Invariants: whatever parses formats back to the same text (file names, slot names) or to
//! text that parses to the same value (LSNs, system identifiers); sizes are powers of two.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walden::pg::{ServerVersion, SlotName, SystemId};
use walden::wal::{Lsn, WalFileName, WalSegSize, history_file_name, parse_history_file_name};

fuzz_target!(|input: &[u8]| {
    let Some((&size, text)) = input.split_first() else {
        return;
    };
    let size = WalSegSize::new(1 << (20 + size % 11)).unwrap();
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };

    if let Ok(lsn) = text.parse::<Lsn>() {
        assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn), "{text:?}");
    }
    if let Ok(name) = WalFileName::parse(text, size) {
        assert_eq!(name.format(size), text);
        assert!(name.tli.0 != 0);
    }
    if let Some(tli) = parse_history_file_name(text) {
        assert_eq!(history_file_name(tli), text);
    }
    if let Ok(parsed) = text.parse::<WalSegSize>() {
        assert!(parsed.bytes().is_power_of_two());
        assert_eq!(WalSegSize::new(parsed.bytes()), Ok(parsed));
    }
    if let Ok(slot) = text.parse::<SlotName>() {
        assert_eq!(slot.as_str(), text);
        assert_eq!(slot.to_string(), text);
    }
    if let Some(version) = ServerVersion::parse(text) {
        let _ = version.major();
    }
    if let Ok(id) = text.parse::<SystemId>() {
        assert_eq!(id.to_string().parse::<SystemId>(), Ok(id));
    }
});
