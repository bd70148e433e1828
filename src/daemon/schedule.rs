//! When the next scheduled base backup of a cluster is due: pure arithmetic on the policy
//! (`every` a duration, or daily `at` a local time of day), the start of the last complete
//! backup and the current time. Local time follows the machine's time-zone rules (`TZ`, else
//! `/etc/localtime`), passed in as a [`TimeZone`] so tests can fix it.
//!
//! There is never a pile of backups: the answer is one [`Due`], and the daemon asks again after
//! each backup, whose start then becomes the new "last". A schedule missed while walden was
//! down is therefore due once, at start-up.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::{AmbiguousOffset, TimeZone};

/// A backup that started at most this long before a daily slot counts for that slot (so a
/// timer that fires a hair early, or a clock slewed by NTP, does not cause a second backup).
pub const SLOT_TOLERANCE: Duration = Duration::from_secs(60);

/// How often a cluster is backed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupSchedule {
    /// A fixed interval after the start of the last complete backup.
    Every(Duration),
    /// Once a day at this local time.
    DailyAt(TimeOfDay),
}

impl fmt::Display for BackupSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupSchedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            BackupSchedule::DailyAt(t) => write!(f, "daily at {t} local time"),
        }
    }
}

/// A local time of day, `HH:MM` (24-hour clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOfDay {
    hour: u8,
    minute: u8,
}

impl TimeOfDay {
    /// `None` unless `hour` is 0-23 and `minute` 0-59.
    pub fn new(hour: u8, minute: u8) -> Option<Self> {
        (hour < 24 && minute < 60).then_some(TimeOfDay { hour, minute })
    }
}

impl FromStr for TimeOfDay {
    type Err = String;

    /// `HH:MM` or `H:MM`, 00:00 to 23:59.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("invalid time of day {s:?}: expected HH:MM from 00:00 to 23:59");
        let (h, m) = s.split_once(':').ok_or_else(invalid)?;
        let digits = |p: &str, max_len| {
            (!p.is_empty() && p.len() <= max_len && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u8>().ok())
                .flatten()
        };
        match (digits(h, 2), digits(m, 2).filter(|_| m.len() == 2)) {
            (Some(h), Some(m)) => TimeOfDay::new(h, m).ok_or_else(invalid),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

/// Whether to start a backup now or wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Start one backup now (for a cluster with no backup yet: as soon as its receiver
    /// streams).
    Now,
    /// Nothing to do before this instant.
    At(SystemTime),
}

/// When the next backup falls due by the schedule, which may be in the past (then it is
/// overdue: status compares this plus a grace period with the current time). `None` when
/// there is no complete backup yet: one is due at once.
///
/// `Every(d)`: the last start plus `d`. `DailyAt(t)`: the first instant after the last start
/// (less [`SLOT_TOLERANCE`]) at which the local clock reads `t`. On a day when `t` does not
/// exist (the clocks jump over it) that is the instant of the jump; when `t` happens twice
/// (the clocks go back) it is the first time.
pub fn due_at(
    schedule: &BackupSchedule,
    last_start: Option<SystemTime>,
    tz: &TimeZone,
) -> Option<SystemTime> {
    let last = last_start?;
    match schedule {
        // Overflow needs a start near the end of time; treat it as due.
        BackupSchedule::Every(d) => Some(last.checked_add(*d).unwrap_or(last)),
        BackupSchedule::DailyAt(t) => {
            // A start outside jiff's range (years -9999 to 9999) is nonsense: due.
            let last = Timestamp::try_from(last).ok()?;
            Some(next_daily_slot(*t, last, tz)?.into())
        }
    }
}

/// Whether a backup is due now, and if not, when. A schedule missed during downtime is due
/// once ([`Due::Now`]); after that backup the next one is a full period away. A last start
/// in the future (the clock was set back) counts as now, so a clock change cannot stop
/// backups for long.
pub fn next_backup(
    schedule: &BackupSchedule,
    last_start: Option<SystemTime>,
    now: SystemTime,
    tz: &TimeZone,
) -> Due {
    match due_at(schedule, last_start.map(|l| l.min(now)), tz) {
        Some(at) if at > now => Due::At(at),
        _ => Due::Now,
    }
}

/// The first slot strictly after `last + SLOT_TOLERANCE`.
fn next_daily_slot(t: TimeOfDay, last: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
    let after = last.checked_add(SLOT_TOLERANCE).ok()?;
    let mut date = tz.to_datetime(last).date();
    // The slot on the day of `last` or one of the next two days is always later than `after`
    // (a day's clock can shift by a few hours at most).
    for _ in 0..3 {
        if let Some(slot) = slot_on(date, t, tz).filter(|s| *s > after) {
            return Some(slot);
        }
        date = date.tomorrow().ok()?;
    }
    None
}

/// The instant the local clock reads `t` on `date`: the first of two in a fold, the end of
/// the gap when the clocks skip `t`.
fn slot_on(date: Date, t: TimeOfDay, tz: &TimeZone) -> Option<Timestamp> {
    let dt = date.at(t.hour as i8, t.minute as i8, 0, 0);
    let ambiguous = tz.to_ambiguous_timestamp(dt);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the later offset, `dt` is an instant just before the jump; the
            // next transition is the jump itself, the first valid instant after `t`.
            let early = after.to_timestamp(dt).ok()?;
            tz.following(early).next().map(|tr| tr.timestamp())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> SystemTime {
        s.parse::<Timestamp>().expect("test timestamp").into()
    }

    fn daily(s: &str) -> BackupSchedule {
        BackupSchedule::DailyAt(s.parse().expect("test time of day"))
    }

    /// US Eastern: 2024-03-10 02:00 EST -> 03:00 EDT, 2024-11-03 02:00 EDT -> 01:00 EST.
    fn new_york() -> TimeZone {
        TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").expect("posix tz")
    }

    /// Central Europe: 2024-03-31 02:00 CET -> 03:00 CEST, 2024-10-27 03:00 CEST -> 02:00 CET.
    fn berlin() -> TimeZone {
        TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("posix tz")
    }

    #[test]
    fn time_of_day_parses_and_refuses() {
        assert_eq!("03:00".parse(), Ok(TimeOfDay::new(3, 0).unwrap()));
        assert_eq!("3:05".parse(), Ok(TimeOfDay::new(3, 5).unwrap()));
        assert_eq!("23:59".parse::<TimeOfDay>().unwrap().to_string(), "23:59");
        for bad in [
            "24:00", "12:60", "3", "3:5", "03:00:00", "-1:00", "+3:00", "", "ab:cd",
        ] {
            let err = bad.parse::<TimeOfDay>().unwrap_err();
            assert!(err.contains("HH:MM"), "{bad}: {err}");
        }
    }

    #[test]
    fn no_backup_yet_is_due_now() {
        let now = ts("2024-05-01T12:00:00Z");
        let every = BackupSchedule::Every(Duration::from_secs(3600));
        assert_eq!(due_at(&every, None, &TimeZone::UTC), None);
        assert_eq!(next_backup(&every, None, now, &TimeZone::UTC), Due::Now);
        assert_eq!(
            next_backup(&daily("03:00"), None, now, &TimeZone::UTC),
            Due::Now
        );
    }

    #[test]
    fn every_is_counted_from_the_last_start() {
        let every = BackupSchedule::Every(Duration::from_secs(24 * 3600));
        let last = ts("2024-05-01T10:00:00Z");
        let now = ts("2024-05-01T18:00:00Z");
        assert_eq!(
            next_backup(&every, Some(last), now, &TimeZone::UTC),
            Due::At(ts("2024-05-02T10:00:00Z"))
        );
        // Exactly at the due instant: due.
        let at = ts("2024-05-02T10:00:00Z");
        assert_eq!(
            next_backup(&every, Some(last), at, &TimeZone::UTC),
            Due::Now
        );
    }

    #[test]
    fn a_missed_schedule_runs_once_not_a_pile() {
        let every = BackupSchedule::Every(Duration::from_secs(3600));
        let last = ts("2024-05-01T00:00:00Z");
        // Down for 10 hours: ten periods missed, but one backup is due...
        let start = ts("2024-05-01T10:30:00Z");
        assert_eq!(
            next_backup(&every, Some(last), start, &TimeZone::UTC),
            Due::Now
        );
        // ...and once it has started, the next is a full period later.
        let later = ts("2024-05-01T10:31:00Z");
        assert_eq!(
            next_backup(&every, Some(start), later, &TimeZone::UTC),
            Due::At(ts("2024-05-01T11:30:00Z"))
        );
        // The same for a daily slot missed on several days.
        let sched = daily("03:00");
        let last = ts("2024-05-01T03:00:00Z");
        let start = ts("2024-05-05T09:00:00Z");
        assert_eq!(
            next_backup(&sched, Some(last), start, &TimeZone::UTC),
            Due::Now
        );
        assert_eq!(
            next_backup(
                &sched,
                Some(start),
                ts("2024-05-05T09:10:00Z"),
                &TimeZone::UTC
            ),
            Due::At(ts("2024-05-06T03:00:00Z"))
        );
    }

    #[test]
    fn overdue_instant_stays_in_the_past_for_status() {
        let every = BackupSchedule::Every(Duration::from_secs(3600));
        let last = ts("2024-05-01T00:00:00Z");
        assert_eq!(
            due_at(&every, Some(last), &TimeZone::UTC),
            Some(ts("2024-05-01T01:00:00Z"))
        );
    }

    #[test]
    fn a_last_start_in_the_future_counts_as_now() {
        let every = BackupSchedule::Every(Duration::from_secs(3600));
        let now = ts("2024-05-01T00:00:00Z");
        let last = ts("2025-05-01T00:00:00Z");
        assert_eq!(
            next_backup(&every, Some(last), now, &TimeZone::UTC),
            Due::At(ts("2024-05-01T01:00:00Z"))
        );
    }

    #[test]
    fn daily_slot_in_local_time() {
        let sched = daily("03:00");
        let tz = new_york();
        // Last backup 2024-05-01 03:00 EDT (07:00Z); now midday: next is tomorrow 03:00 EDT.
        let last = ts("2024-05-01T07:00:00Z");
        assert_eq!(
            next_backup(&sched, Some(last), ts("2024-05-01T16:00:00Z"), &tz),
            Due::At(ts("2024-05-02T07:00:00Z"))
        );
        // A backup taken by hand at 01:00 local does not skip that day's 03:00 slot.
        let manual = ts("2024-05-01T05:00:00Z");
        assert_eq!(
            next_backup(&sched, Some(manual), ts("2024-05-01T05:30:00Z"), &tz),
            Due::At(ts("2024-05-01T07:00:00Z"))
        );
        // One that started a few seconds before its slot counts for that slot.
        let early = ts("2024-05-01T06:59:58Z");
        assert_eq!(
            due_at(&sched, Some(early), &tz),
            Some(ts("2024-05-02T07:00:00Z"))
        );
    }

    #[test]
    fn daily_slot_across_midnight_and_date_line() {
        // 23:30 local in UTC+10 (no DST) is 13:30Z.
        let tz = TimeZone::posix("AEST-10").expect("posix tz");
        let last = ts("2024-05-01T13:30:00Z");
        assert_eq!(
            due_at(&daily("23:30"), Some(last), &tz),
            Some(ts("2024-05-02T13:30:00Z"))
        );
        // 00:15 local after a 23:30 backup is 45 minutes later.
        assert_eq!(
            due_at(&daily("00:15"), Some(last), &tz),
            Some(ts("2024-05-01T14:15:00Z"))
        );
    }

    #[test]
    fn a_time_skipped_by_dst_runs_at_the_jump() {
        let tz = new_york();
        // 2024-03-10: 02:30 does not exist; the clocks jump 02:00 EST -> 03:00 EDT at 07:00Z.
        let last = ts("2024-03-09T07:30:00Z"); // 02:30 EST the day before
        assert_eq!(
            due_at(&daily("02:30"), Some(last), &tz),
            Some(ts("2024-03-10T07:00:00Z"))
        );
        // The day after is normal again: 02:30 EDT.
        assert_eq!(
            due_at(&daily("02:30"), Some(ts("2024-03-10T07:00:00Z")), &tz),
            Some(ts("2024-03-11T06:30:00Z"))
        );
        // Europe: 2024-03-31 02:00 CET -> 03:00 CEST at 01:00Z; 02:00 itself is skipped.
        let tz = berlin();
        let last = ts("2024-03-30T01:00:00Z"); // 02:00 CET
        assert_eq!(
            due_at(&daily("02:00"), Some(last), &tz),
            Some(ts("2024-03-31T01:00:00Z"))
        );
        // 03:00 exists (it is the first instant after the jump).
        let last = ts("2024-03-30T02:00:00Z"); // 03:00 CET
        assert_eq!(
            due_at(&daily("03:00"), Some(last), &tz),
            Some(ts("2024-03-31T01:00:00Z"))
        );
    }

    #[test]
    fn a_time_repeated_by_dst_runs_once_at_its_first_occurrence() {
        let tz = new_york();
        // 2024-11-03: 01:30 happens at 05:30Z (EDT) and again at 06:30Z (EST).
        let last = ts("2024-11-02T05:30:00Z"); // 01:30 EDT the day before
        let first = ts("2024-11-03T05:30:00Z");
        assert_eq!(due_at(&daily("01:30"), Some(last), &tz), Some(first));
        // After the backup at the first 01:30, the second one is not another slot.
        assert_eq!(
            next_backup(
                &daily("01:30"),
                Some(first),
                ts("2024-11-03T06:30:00Z"),
                &tz
            ),
            Due::At(ts("2024-11-04T06:30:00Z"))
        );
        // Europe: 2024-10-27 02:30 happens at 00:30Z (CEST) and 01:30Z (CET).
        let tz = berlin();
        assert_eq!(
            due_at(&daily("02:30"), Some(ts("2024-10-26T00:30:00Z")), &tz),
            Some(ts("2024-10-27T00:30:00Z"))
        );
    }

    #[test]
    fn every_is_not_affected_by_dst() {
        let every = BackupSchedule::Every(Duration::from_secs(24 * 3600));
        let last = ts("2024-03-09T08:00:00Z");
        assert_eq!(
            due_at(&every, Some(last), &new_york()),
            Some(ts("2024-03-10T08:00:00Z"))
        );
    }

    #[test]
    fn schedule_display() {
        assert_eq!(
            BackupSchedule::Every(Duration::from_secs(86400)).to_string(),
            "every 1day"
        );
        assert_eq!(daily("3:00").to_string(), "daily at 03:00 local time");
    }
}
