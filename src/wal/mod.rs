//! The WAL format as pure functions: positions, timelines, segment names, page and
//! record headers, record CRC validation, timeline history files.
//!
//! Architecture invariant: nothing in this module does I/O. Callers hand it bytes.

mod lsn;

pub use lsn::{Lsn, ParseLsnError, TimelineId};
