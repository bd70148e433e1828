//! The WAL format as pure functions: positions, timelines, segment names, page and
//! record headers, record CRC validation, a streaming verifier, the end of valid WAL in a
//! segment, timeline history files, a record scanner that decodes what recovery targets
//! name (commits, aborts, restore points), and PostgreSQL timestamps.
//!
//! Architecture invariant: nothing in this module does I/O. Callers hand it bytes.

mod history;
mod lsn;
mod page;
mod record;
mod scan;
mod segment;
mod time;
mod verify;

#[cfg(test)]
pub(crate) mod testwal;

pub use history::{HistoryEntry, HistoryError, TimelineHistory, TimelineRange};
pub use lsn::{Lsn, ParseLsnError, TimelineId};
pub use page::{
    LONG_HEADER_LEN, LongPageHeader, PageError, PageExpectations, PageHeader, PageMagic,
    SHORT_HEADER_LEN, WAL_BLOCK_SIZE, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
};
pub use record::{
    MAX_RECORD_LEN, RECORD_HEADER_LEN, RM_XLOG_ID, RecordCrc, RecordError, RecordHeader, maxalign,
    record_crc,
};
pub use scan::{
    DecodeError, RESTORE_POINT_NAME_LEN, RM_XACT_ID, RecordEvent, ScannedRecord, WalScanner,
    XactKind, decode_event, main_data,
};
pub use segment::{
    SegNo, WalFileName, WalFileNameError, WalSegSize, WalSegSizeError, history_file_name,
    parse_history_file_name, segment_file_name,
};
pub use time::{ParseTimeError, UtcTime};
pub use verify::{
    Problem, StartError, VerifierConfig, VerifyError, WalVerifier, find_end_of_valid_wal,
};
