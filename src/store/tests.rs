//! Store tests on temporary directories.

use super::*;
use std::time::Duration;

#[test]
fn utc_times() {
    let t = |s| format_utc(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(t(0), "1970-01-01T00:00:00Z");
    assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(t(1_795_375_800), "2026-11-22T19:30:00Z");
    assert_eq!(utc_now().len(), 20);
}
