//! Instants as PostgreSQL writes them in WAL (`TimestampTz`: microseconds since 2000-01-01
//! UTC) and as users type them, with one canonical text form that PostgreSQL parses back to
//! exactly the same microsecond.

use std::fmt;
use std::str::FromStr;

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_MICROS: i64 = 946_684_800 * 1_000_000;
const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// An instant with microsecond precision, as microseconds since 1970-01-01 00:00:00 UTC.
///
/// Text form (parse): `YYYY-MM-DD HH:MM:SS[.ffffff][ZONE]`, with `T` (or a space) between
/// date and time, and ZONE one of `Z`, `+HH`, `+HH:MM`, `+HHMM` (or `-`), optionally after
/// a space. **Without a zone the time is UTC** (not the server's or this machine's zone), so
/// a plan made here and the server agree whatever their settings.
///
/// Display is the canonical form handed to PostgreSQL: `2026-11-22 19:30:00.123456+00`
/// (the fraction only when not zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime(i64);

/// A time that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid time {0:?}: expected YYYY-MM-DD HH:MM:SS[.ffffff][Z|+HH|+HH:MM|-HH:MM], e.g. 2026-11-22 19:30:00+01 (UTC when no offset is given)"
)]
pub struct ParseTimeError(pub String);

impl UtcTime {
    pub fn from_unix_micros(micros: i64) -> UtcTime {
        UtcTime(micros)
    }

    pub fn unix_micros(self) -> i64 {
        self.0
    }

    /// From a `TimestampTz` read from WAL.
    pub fn from_pg_timestamp(ts: i64) -> UtcTime {
        UtcTime(ts.saturating_add(PG_EPOCH_MICROS))
    }

    /// As a `TimestampTz`, comparable with those in WAL.
    pub fn pg_timestamp(self) -> i64 {
        self.0.saturating_sub(PG_EPOCH_MICROS)
    }

    /// From the store's `2026-11-22T19:30:00Z` (and any form [`FromStr`] accepts).
    pub fn parse(s: &str) -> Result<UtcTime, ParseTimeError> {
        s.parse()
    }
}

impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(MICROS_PER_SEC);
        let micros = self.0.rem_euclid(MICROS_PER_SEC);
        let (days, rem) = (secs.div_euclid(SECS_PER_DAY), secs.rem_euclid(SECS_PER_DAY));
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )?;
        if micros != 0 {
            write!(f, ".{micros:06}")?;
        }
        f.write_str("+00")
    }
}

impl FromStr for UtcTime {
    type Err = ParseTimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_time(s).ok_or_else(|| ParseTimeError(s.to_string()))
    }
}

impl serde::Serialize for UtcTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A cursor over ASCII text.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    /// Exactly `n` decimal digits.
    fn digits(&mut self, n: usize) -> Option<i64> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        if !head.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.rest = tail;
        Some(head.iter().fold(0, |acc, d| acc * 10 + i64::from(d - b'0')))
    }

    fn eat(&mut self, c: u8) -> bool {
        match self.rest.split_first() {
            Some((first, tail)) if *first == c => {
                self.rest = tail;
                true
            }
            _ => false,
        }
    }

    fn eat_any(&mut self, set: &[u8]) -> bool {
        set.iter().any(|c| self.eat(*c))
    }
}

fn parse_time(s: &str) -> Option<UtcTime> {
    let mut c = Cursor { rest: s.as_bytes() };
    let year = c.digits(4)?;
    c.eat(b'-').then_some(())?;
    let month = c.digits(2)?;
    c.eat(b'-').then_some(())?;
    let day = c.digits(2)?;
    c.eat_any(b" Tt").then_some(())?;
    let hour = c.digits(2)?;
    c.eat(b':').then_some(())?;
    let minute = c.digits(2)?;
    c.eat(b':').then_some(())?;
    let second = c.digits(2)?;
    let mut micros = 0;
    if c.eat(b'.') {
        let n = c.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=6).contains(&n) {
            return None;
        }
        micros = c.digits(n)? * 10i64.pow(6 - n as u32);
    }
    c.eat(b' ');
    let offset_secs = parse_zone(&mut c)?;
    if !c.rest.is_empty()
        || year == 0
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * SECS_PER_DAY + hour * 3600 + minute * 60 + second - offset_secs;
    Some(UtcTime(secs * MICROS_PER_SEC + micros))
}

/// `Z`, `±HH`, `±HH:MM`, `±HHMM`, or nothing (UTC): the offset east of UTC in seconds.
fn parse_zone(c: &mut Cursor<'_>) -> Option<i64> {
    if c.rest.is_empty() || c.eat_any(b"Zz") {
        return Some(0);
    }
    let sign = if c.eat(b'+') {
        1
    } else if c.eat(b'-') {
        -1
    } else {
        return None;
    };
    let hours = c.digits(2)?;
    let minutes = if c.rest.is_empty() {
        0
    } else {
        c.eat(b':');
        c.digits(2)?
    };
    (hours <= 15 && minutes <= 59).then_some(sign * (hours * 3600 + minutes * 60))
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> UtcTime {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_the_accepted_forms() {
        let base = t("2026-11-22 19:30:00");
        assert_eq!(base.unix_micros(), 1_795_375_800 * 1_000_000);
        for same in [
            "2026-11-22T19:30:00",
            "2026-11-22t19:30:00z",
            "2026-11-22 19:30:00Z",
            "2026-11-22 19:30:00+00",
            "2026-11-22 19:30:00 +00:00",
            "2026-11-22 20:30:00+01",
            "2026-11-22 21:00:00+01:30",
            "2026-11-22 21:00:00+0130",
            "2026-11-22 14:30:00-05",
            "2026-11-23 04:30:00+09:00",
            "2026-11-22 19:30:00.000000",
        ] {
            assert_eq!(t(same), base, "{same}");
        }
        assert_eq!(
            t("2026-11-22 19:30:00.5").unix_micros() - base.unix_micros(),
            500_000
        );
        assert_eq!(
            t("2026-11-22 19:30:00.123456").unix_micros() - base.unix_micros(),
            123_456
        );
        assert_eq!(
            t("2024-02-29 00:00:00").to_string(),
            "2024-02-29 00:00:00+00"
        );
        assert_eq!(t("1970-01-01 00:00:00").unix_micros(), 0);
        assert_eq!(t("1969-12-31 23:59:59.999999").unix_micros(), -1);
    }

    #[test]
    fn rejects_what_is_not_a_time() {
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22 19:30",
            "2026-11-22 19:30:00.",
            "2026-11-22 19:30:00.1234567",
            "2026-13-01 00:00:00",
            "2026-02-29 00:00:00",
            "2026-04-31 00:00:00",
            "2026-11-22 24:00:00",
            "2026-11-22 19:60:00",
            "2026-11-22 19:30:60",
            "2026-11-22 19:30:00+16",
            "2026-11-22 19:30:00+01:60",
            "2026-11-22 19:30:00 CET",
            "2026-11-22 19:30:00+1",
            "2026-11-22  19:30:00",
            "0000-01-01 00:00:00",
            "26-11-22 19:30:00",
            "2026-11-22 19:30:00Z ",
            "now",
        ] {
            assert!(bad.parse::<UtcTime>().is_err(), "{bad:?} should not parse");
        }
        let err = "yesterday".parse::<UtcTime>().unwrap_err().to_string();
        assert!(err.contains("\"yesterday\"") && err.contains("UTC when no offset"));
    }

    #[test]
    fn canonical_text_and_pg_timestamps() {
        // pg_waldump printed this commit time for fixtures/wal/pg15 (tx 726) as
        // 2026-11-22 20:40:10.744411 UTC.
        let ts = t("2026-11-22 20:40:10.744411").pg_timestamp();
        assert_eq!(
            UtcTime::from_pg_timestamp(ts),
            t("2026-11-22 20:40:10.744411Z")
        );
        assert_eq!(
            UtcTime::from_pg_timestamp(0).to_string(),
            "2000-01-01 00:00:00+00"
        );
        assert_eq!(
            t("2026-11-22 19:30:00.123456-02:00").to_string(),
            "2026-11-22 21:30:00.123456+00"
        );
        assert_eq!(
            t("2026-11-22 19:30:00.1").to_string(),
            "2026-11-22 19:30:00.100000+00"
        );
        assert_eq!(
            UtcTime::parse("2026-11-22T19:30:00Z"),
            Ok(t("2026-11-22 19:30:00"))
        );
        assert_eq!(
            serde_json::to_string(&t("2026-11-22 19:30:00")).unwrap(),
            "\"2026-11-22 19:30:00+00\""
        );
    }

    proptest! {
        #[test]
        fn canonical_text_round_trips(micros in -62_135_596_800_000_000i64..253_402_300_799_999_999) {
            let time = UtcTime::from_unix_micros(micros);
            prop_assert_eq!(time.to_string().parse::<UtcTime>(), Ok(time));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<UtcTime>();
        }
    }
}
