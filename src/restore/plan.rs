//! Restore planning: everything `walden-restore restore` decides before it touches the data
//! directory — the recovery target and its options as the user gives them, the target
//! timeline and its history, where in the stored WAL the target lies, which backup to
//! start from, and the WAL segments recovery will ask for (all present, on the right
//! timelines, no recorded gap). Pure logic over a [`WalArchive`] and the backup records: it
//! reads WAL, never writes.
//!
//! # What PostgreSQL does, and what the plan therefore checks
//! Recovery replays from the backup's start (its checkpoint's redo point) and checks every
//! record against the target (`recoveryStopsBefore`/`recoveryStopsAfter`):
//! * time: stops *before* the first commit or abort whose timestamp is after the target
//!   (at or after it with `--target-exclusive`);
//! * xid: stops after (exclusive: before) that transaction's commit or abort;
//! * name: stops after the first restore point of that name;
//! * LSN: stops after (exclusive: before) the first record starting at or after it;
//! * immediate: stops before the first record after the backup's end (consistency);
//! * latest: replays to the end of the WAL.
//!
//! A stop before the backup's end is fatal ("requested recovery stop point is before
//! consistent recovery point"), and so is running out of WAL before the target ("recovery
//! ended before configured recovery target was reached"). So the plan finds the record
//! recovery will stop at, chooses the newest backup that ends at or before that point, and
//! refuses with the reason when there is none.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde::Serialize;

use crate::backup::BackupRecord;
use crate::inspect::wal::end_of_timeline_wal;
use crate::store::{Gap, StoreError, StoredSegment, WalArchive};
use crate::wal::{
    Lsn, PageMagic, RESTORE_POINT_NAME_LEN, RecordEvent, ScannedRecord, SegNo, TimelineHistory,
    TimelineId, UtcTime, VerifierConfig, WAL_BLOCK_SIZE, WalScanner, WalSegSize, history_file_name,
    segment_file_name,
};

// ---------------------------------------------------------------------------------------
// What the user asks for.

/// A transaction id as `--target-xid` takes it. PostgreSQL reads `recovery_target_xid` as a
/// 64-bit number and compares its low 32 bits with the records' xids, so epoch-qualified ids
/// (`txid_current()`) work; the plan does the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetXid(pub u64);

impl TargetXid {
    /// The 32-bit xid records carry.
    pub fn xid(self) -> u32 {
        self.0 as u32
    }
}

impl FromStr for TargetXid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<u64>() {
            Ok(n) if n as u32 >= 3 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(TargetXid(n)),
            _ => Err(format!(
                "invalid transaction id {s:?}: expected a decimal number of a normal transaction (3 or more), e.g. 742 or the value of txid_current()"
            )),
        }
    }
}

impl fmt::Display for TargetXid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A restore point name as `pg_create_restore_point()` takes it: 1 to 63 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RestorePointName(String);

impl RestorePointName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RestorePointName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() >= RESTORE_POINT_NAME_LEN || s.contains('\0') {
            return Err(format!(
                "invalid restore point name {s:?}: it must be 1 to {} bytes without NUL",
                RESTORE_POINT_NAME_LEN - 1
            ));
        }
        Ok(RestorePointName(s.to_string()))
    }
}

/// Where recovery should stop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the stored WAL (no recovery target setting).
    #[default]
    Latest,
    /// As soon as the backup is consistent (`recovery_target = 'immediate'`).
    Immediate,
    Time(UtcTime),
    Lsn(Lsn),
    Xid(TargetXid),
    Name(RestorePointName),
}

impl RecoveryTarget {
    /// `latest`, `immediate`, `time`, `lsn`, `xid` or `name`.
    pub fn kind(&self) -> &'static str {
        match self {
            RecoveryTarget::Latest => "latest",
            RecoveryTarget::Immediate => "immediate",
            RecoveryTarget::Time(_) => "time",
            RecoveryTarget::Lsn(_) => "lsn",
            RecoveryTarget::Xid(_) => "xid",
            RecoveryTarget::Name(_) => "name",
        }
    }

    /// The PostgreSQL setting and its value in canonical form (a time as
    /// `2026-11-22 19:30:00.123456+00`, so the server reads exactly the instant the plan
    /// used); None for latest, which has no setting.
    pub fn setting(&self) -> Option<(&'static str, String)> {
        match self {
            RecoveryTarget::Latest => None,
            RecoveryTarget::Immediate => Some(("recovery_target", "immediate".into())),
            RecoveryTarget::Time(t) => Some(("recovery_target_time", t.to_string())),
            RecoveryTarget::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
            RecoveryTarget::Xid(x) => Some(("recovery_target_xid", x.to_string())),
            RecoveryTarget::Name(n) => Some(("recovery_target_name", n.0.clone())),
        }
    }

    /// Whether `recovery_target_inclusive` means anything for this target.
    pub fn has_inclusive(&self) -> bool {
        matches!(
            self,
            RecoveryTarget::Time(_) | RecoveryTarget::Lsn(_) | RecoveryTarget::Xid(_)
        )
    }
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("latest (the end of the stored WAL)"),
            RecoveryTarget::Immediate => f.write_str("immediate (the end of the backup)"),
            RecoveryTarget::Time(t) => write!(f, "time {t}"),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Xid(x) => write!(f, "xid {x}"),
            RecoveryTarget::Name(n) => write!(f, "restore point {:?}", n.0),
        }
    }
}

/// `--target-timeline`: which timeline recovery follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetTimeline {
    /// The newest timeline whose history file the store holds.
    #[default]
    Latest,
    /// The backup's own timeline.
    Current,
    Id(TimelineId),
}

impl FromStr for TargetTimeline {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(TargetTimeline::Latest),
            "current" => Ok(TargetTimeline::Current),
            _ => match s.parse::<u32>() {
                Ok(n) if n >= 1 && s.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(TargetTimeline::Id(TimelineId(n)))
                }
                _ => Err(format!(
                    "invalid target timeline {s:?}: expected latest, current or a timeline number (1 or more)"
                )),
            },
        }
    }
}

impl fmt::Display for TargetTimeline {
    /// The value of `recovery_target_timeline`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetTimeline::Latest => f.write_str("latest"),
            TargetTimeline::Current => f.write_str("current"),
            TargetTimeline::Id(t) => write!(f, "{t}"),
        }
    }
}

/// `--target-action`: what the server does once the target is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetAction {
    /// PostgreSQL's default: stay in recovery, paused, read-only.
    #[default]
    Pause,
    Promote,
    Shutdown,
}

impl TargetAction {
    /// The value of `recovery_target_action`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

impl FromStr for TargetAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pause" => Ok(TargetAction::Pause),
            "promote" => Ok(TargetAction::Promote),
            "shutdown" => Ok(TargetAction::Shutdown),
            _ => Err(format!(
                "invalid target action {s:?}: expected pause, promote or shutdown"
            )),
        }
    }
}

impl fmt::Display for TargetAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--backup`: the newest suitable backup, or this one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BackupChoice {
    #[default]
    Latest,
    Id(String),
}

impl FromStr for BackupChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("empty backup id: expected latest or a backup id from `walden list`".into()),
            "latest" => Ok(BackupChoice::Latest),
            id => Ok(BackupChoice::Id(id.to_string())),
        }
    }
}

/// What to plan for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanRequest {
    pub target: RecoveryTarget,
    /// False with `--target-exclusive`.
    pub inclusive: bool,
    pub timeline: TargetTimeline,
    pub backup: BackupChoice,
}

// ---------------------------------------------------------------------------------------
// The plan.

/// Whether recovery stops just before the target record (it is not replayed) or just
/// after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stop {
    Before,
    After,
}

/// Everything decided before the data directory is touched.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub backup: PlannedBackup,
    pub target: PlannedTarget,
    pub wal: PlannedWal,
    /// The timelines whose segments recovery reads, oldest first.
    pub timelines: Vec<TimelineId>,
    /// The history files recovery needs (those of the target timeline's history).
    pub history_files: Vec<String>,
    /// Where the stored WAL ends on the target timeline's history.
    pub end_of_wal: Lsn,
}

/// The backup restored.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedBackup {
    pub id: String,
    pub start_lsn: Lsn,
    pub start_timeline: TimelineId,
    pub stop_lsn: Lsn,
    pub stop_timeline: TimelineId,
    pub start_time: String,
    pub stop_time: String,
    /// It carries the WAL from its start to its end itself.
    pub includes_wal: bool,
}

/// The target as resolved in the stored WAL.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedTarget {
    /// `latest`, `immediate`, `time`, `lsn`, `xid` or `name`.
    pub kind: &'static str,
    /// The canonical value handed to PostgreSQL (none for latest and immediate).
    pub value: Option<String>,
    pub inclusive: bool,
    /// The target timeline, and how it was asked for (`latest`, `current`, a number).
    pub timeline: TimelineId,
    pub timeline_requested: String,
    /// Where replay ends: before or after the target record, the end of the WAL for latest.
    pub stops_at: Lsn,
    /// The record recovery stops at (none for latest).
    pub record: Option<TargetRecord>,
}

/// The WAL record where recovery stops.
#[derive(Clone, Debug, Serialize)]
pub struct TargetRecord {
    pub lsn: Lsn,
    pub end: Lsn,
    pub timeline: TimelineId,
    pub stop: Stop,
    /// `commit`, `abort`, `commit prepared`, `abort prepared`, `restore point` or `record`.
    pub kind: &'static str,
    pub xid: Option<u32>,
    pub time: Option<UtcTime>,
    pub name: Option<String>,
}

/// The WAL recovery reads from the store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlannedWal {
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub segments: usize,
    /// Segment bytes recovery replays (`segments` × the segment size).
    pub bytes: u64,
    /// What those files take in the store (compressed size for `.zst`).
    pub stored_bytes: u64,
    /// The last segment is the store's `.partial` (served zero-filled after its end).
    pub last_is_partial: bool,
}

impl Plan {
    /// The plan as printed before anything is touched.
    pub fn to_text(&self) -> String {
        let b = &self.backup;
        let t = &self.target;
        let mut out = String::from("Restore plan\n");
        out += &format!(
            "  backup:    {} (timeline {}, {} .. {}, {} .. {}{})\n",
            b.id,
            b.stop_timeline,
            b.start_lsn,
            b.stop_lsn,
            b.start_time,
            b.stop_time,
            if b.includes_wal { ", with its WAL" } else { "" }
        );
        let what = match &t.value {
            Some(v) if t.kind == "name" => format!("restore point {v:?}"),
            Some(v) => format!("{} {v}", if t.kind == "lsn" { "LSN" } else { t.kind }),
            None => t.kind.to_string(),
        };
        let inclusive = match (t.kind, t.inclusive) {
            ("time" | "lsn" | "xid", true) => " (inclusive)",
            ("time" | "lsn" | "xid", false) => " (exclusive)",
            _ => "",
        };
        out += &format!(
            "  target:    {what}{inclusive} on timeline {} (--target-timeline {})\n",
            t.timeline, t.timeline_requested
        );
        match &t.record {
            Some(r) => {
                let mut desc = r.kind.to_string();
                if let Some(x) = r.xid {
                    desc += &format!(" of xid {x}");
                }
                if let Some(n) = &r.name {
                    desc += &format!(" {n:?}");
                }
                if let Some(time) = r.time {
                    desc += &format!(" at {time}");
                }
                let stop = match r.stop {
                    Stop::Before => "before",
                    Stop::After => "after",
                };
                out += &format!(
                    "             recovery stops {stop} the {desc}: record {} on timeline {}, replayed up to {}\n",
                    r.lsn, r.timeline, t.stops_at
                );
            }
            None => out += &format!("             recovery replays up to {}\n", t.stops_at),
        }
        let w = &self.wal;
        match (&w.first_segment, &w.last_segment) {
            (Some(first), Some(last)) => {
                out += &format!(
                    "  WAL:       {first} .. {last}{}: {} segment{}, {} MB ({} MB stored)\n",
                    if w.last_is_partial { " (partial)" } else { "" },
                    w.segments,
                    if w.segments == 1 { "" } else { "s" },
                    w.bytes >> 20,
                    w.stored_bytes.div_ceil(1 << 20)
                );
            }
            _ => out += "  WAL:       none from the store (the backup holds what it needs)\n",
        }
        let timelines: Vec<String> = self.timelines.iter().map(|t| t.to_string()).collect();
        out += &format!("  timelines: {}", timelines.join(", "));
        if !self.history_files.is_empty() {
            out += &format!(" (history: {})", self.history_files.join(", "));
        }
        out += &format!("\n  stored WAL ends at {}\n", self.end_of_wal);
        out
    }
}

/// Why no plan can be made: one line naming the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the store holds no complete backup of this cluster: take one with `walden backup`")]
    NoBackups,
    #[error("there is no complete backup {id:?} in the store (complete backups: {known})")]
    UnknownBackup { id: String, known: String },
    #[error(
        "timeline {0} has no history file in the store: is it a timeline of this cluster? (see `walden list`)"
    )]
    MissingHistory(TimelineId),
    #[error("the history file of timeline {tli} is unusable: {reason}")]
    BadHistory { tli: TimelineId, reason: String },
    #[error("server version {0} has no known WAL page format: this walden cannot read its WAL")]
    UnknownVersion(u32),
    #[error(
        "no complete backup lies on the history of timeline {0}: choose another --target-timeline, or take a backup"
    )]
    NoBackupOnTimeline(TimelineId),
    #[error(
        "backup {id} (timeline {timeline}, ending at {stop}) is not on the history of timeline {target_timeline}: choose another --backup or --target-timeline"
    )]
    BackupNotOnTimeline {
        id: String,
        timeline: TimelineId,
        stop: Lsn,
        target_timeline: TimelineId,
    },
    #[error("backup {id} cannot reach the target: {reason}")]
    BackupCannotReach { id: String, reason: String },
    #[error(
        "target {target} is before the oldest usable backup {oldest} (which ends at {stop}, {stop_time}){found}: a backup can only be rolled forward; choose a later target"
    )]
    BeforeOldestBackup {
        target: String,
        oldest: String,
        stop: Lsn,
        stop_time: String,
        /// Where the target was found, or empty.
        found: String,
    },
    #[error(
        "target {target} is not in the stored WAL, which ends at {end} on timeline {timeline}{why}: recovery would end before reaching it; choose an earlier target (or wait for `walden receive` to store more WAL)"
    )]
    BeyondEnd {
        target: String,
        end: Lsn,
        timeline: TimelineId,
        /// Why the WAL ends there, or empty.
        why: String,
    },
    #[error(
        "the store lacks WAL segment {name}, needed to replay from backup {backup} to the target: recovery would stop there; restore the file into the store, or choose a backup taken after it"
    )]
    MissingSegment { name: String, backup: String },
    #[error(
        "WAL from {from} to {to} on timeline {timeline} is missing (recorded gap: {reason}), and recovery from backup {backup} to the target needs it: choose a backup taken after {to}"
    )]
    Gap {
        timeline: TimelineId,
        from: Lsn,
        to: Lsn,
        reason: String,
        backup: String,
    },
    #[error(
        "the store holds no WAL on the history of timeline {0}: is `walden receive` running for this cluster?"
    )]
    NoWal(TimelineId),
    #[error(
        "no backup's WAL is all in the store yet (the newest, {id}, needs WAL up to {stop}; the store has it up to {end}): wait for `walden receive`, or restore with --backup and an older backup"
    )]
    WalNotYetStored { id: String, stop: Lsn, end: Lsn },
    #[error(
        "target {target} is not in the stored WAL from {from} (where the oldest usable backup begins) to its end at {end} on timeline {timeline}{why}: it is older than every backup, or not yet in the store (then wait for `walden receive`)"
    )]
    NotFound {
        target: String,
        from: Lsn,
        end: Lsn,
        timeline: TimelineId,
        /// Why the WAL ends there, or empty.
        why: String,
    },
    #[error("cannot read WAL segment {file}: {error}")]
    Unreadable { file: String, error: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PlanError {
    /// The process exit code: 1 when what was asked for does not exist, 4 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            PlanError::UnknownBackup { .. } | PlanError::NoBackups => crate::exit::NOT_FOUND,
            PlanError::Store(e) if e.is_config() => crate::exit::USAGE,
            _ => crate::exit::FAILURE,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Planning.

/// Makes the plan for `request` from the store's WAL and its complete `backups`.
///
/// Finding a record target (time, xid, name) means reading WAL. The search starts at the
/// newest candidate backup and walks back to older ones only when the target is not after
/// that backup's end: recovery from a backup replays only what follows it, so a target
/// before a backup's end needs an older backup; and the WAL between two backups is read once
/// (each older backup's search stops where the newer one's began and reuses its result).
///
/// For time targets a backup that holds a transaction committed after the target time is not
/// a candidate (recovery cannot notice it: it only sees the commits it replays). Commits in
/// the backup's own WAL range are found by the scan, which must reach the backup's end
/// before the first commit after the target; commits before the backup's start (its
/// checkpoint) are ruled out by its recorded start time: a backup that began after the
/// target time (client clock, whole seconds) is not a candidate, and no WAL is read for it.
///
/// A backup that carries its own WAL is searched from its end (the store need not hold what
/// it carries).
pub fn make_plan(
    archive: &dyn WalArchive,
    backups: &[BackupRecord],
    request: &PlanRequest,
) -> Result<Plan, PlanError> {
    let mut sorted: Vec<&BackupRecord> = backups.iter().collect();
    sorted.sort_by(|a, b| (b.stop_lsn, &b.id).cmp(&(a.stop_lsn, &a.id)));
    let Some(newest) = sorted.first().copied() else {
        return Err(PlanError::NoBackups);
    };
    let explicit = match &request.backup {
        BackupChoice::Latest => None,
        BackupChoice::Id(id) => Some(sorted.iter().copied().find(|b| &b.id == id).ok_or_else(
            || {
                PlanError::UnknownBackup {
                    id: id.clone(),
                    known: sorted
                        .iter()
                        .map(|b| b.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            },
        )?),
    };
    let target_tli = match request.timeline {
        TargetTimeline::Latest => archive
            .history_files()?
            .into_iter()
            .max()
            .unwrap_or(TimelineId(1)),
        TargetTimeline::Current => explicit.unwrap_or(newest).stop_timeline,
        TargetTimeline::Id(t) => t,
    };
    let chain = Chain::new(archive, target_tli)?;
    let candidates: Vec<&BackupRecord> = match explicit {
        Some(b) if !chain.holds(b) => {
            return Err(PlanError::BackupNotOnTimeline {
                id: b.id.clone(),
                timeline: b.stop_timeline,
                stop: b.stop_lsn,
                target_timeline: target_tli,
            });
        }
        Some(b) => vec![b],
        None => sorted.into_iter().filter(|b| chain.holds(b)).collect(),
    };
    if candidates.is_empty() {
        return Err(PlanError::NoBackupOnTimeline(target_tli));
    }
    let end = chain.end()?.ok_or(PlanError::NoWal(target_tli))?;
    let planner = Planner {
        chain: &chain,
        request,
        explicit: explicit.is_some(),
        end,
    };
    let (backup, stop) = planner.choose(&candidates)?;
    planner.assemble(backup, stop)
}

/// Where recovery will stop: the end of the WAL, or a record.
#[derive(Clone, Debug)]
enum StopPoint {
    EndOfWal,
    Record(ScannedRecord, Stop),
}

impl StopPoint {
    /// Where replay ends.
    fn replayed_to(&self, end: Lsn) -> Lsn {
        match self {
            StopPoint::EndOfWal => end,
            StopPoint::Record(r, Stop::Before) => r.start,
            StopPoint::Record(r, Stop::After) => r.end,
        }
    }

    /// The end of the WAL recovery must read.
    fn read_to(&self, end: Lsn) -> Lsn {
        match self {
            StopPoint::EndOfWal => end,
            StopPoint::Record(r, _) => r.end,
        }
    }
}

/// What a scan looks for.
#[derive(Clone, Copy, Debug)]
enum Wanted<'a> {
    /// The first record starting at or after an LSN.
    At(Lsn, Stop),
    Time(UtcTime, bool),
    Xid(u32, bool),
    Name(&'a str),
}

impl Wanted<'_> {
    /// Whether recovery stops at `r`, and on which side.
    fn stop_at(&self, r: &ScannedRecord) -> Option<Stop> {
        let incl = |inclusive: bool| if inclusive { Stop::After } else { Stop::Before };
        let event = match &r.event {
            Ok(e) => e.as_ref(),
            Err(e) => {
                tracing::warn!(
                    "WAL record at {} does not decode ({e}); not considered as a target",
                    r.start
                );
                None
            }
        };
        match (*self, event) {
            (Wanted::At(lsn, stop), _) => (r.start >= lsn).then_some(stop),
            (Wanted::Time(t, inclusive), Some(RecordEvent::TransactionEnd { time, .. })) => {
                let past = if inclusive { *time > t } else { *time >= t };
                past.then_some(Stop::Before)
            }
            (Wanted::Xid(x, inclusive), Some(RecordEvent::TransactionEnd { xid, .. })) => {
                (*xid == x).then_some(incl(inclusive))
            }
            (Wanted::Name(n), Some(RecordEvent::RestorePoint { name, .. })) => {
                (name == n).then_some(Stop::After)
            }
            _ => None,
        }
    }
}

/// How a scan ended.
#[derive(Clone, Debug)]
enum Scan {
    Found(ScannedRecord, Stop),
    /// The `until` bound was reached without a match.
    Reached,
    /// The WAL ran out at `at`.
    Ended {
        at: Lsn,
        why: EndWhy,
    },
}

#[derive(Clone, Debug)]
enum EndWhy {
    EndOfWal,
    Invalid(String),
    Missing(SegNo),
}

/// The target timeline's history and the segment files along it.
struct Chain<'a> {
    archive: &'a dyn WalArchive,
    history: TimelineHistory,
    seg_size: WalSegSize,
    config: VerifierConfig,
}

/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 128 * 1024;

impl<'a> Chain<'a> {
    fn new(archive: &'a dyn WalArchive, tli: TimelineId) -> Result<Chain<'a>, PlanError> {
        let info = archive.info();
        let history = if tli.0 == 1 {
            TimelineHistory::first()
        } else {
            let bytes = archive
                .read_history(tli)?
                .ok_or(PlanError::MissingHistory(tli))?;
            TimelineHistory::parse(tli, &String::from_utf8_lossy(&bytes)).map_err(|e| {
                PlanError::BadHistory {
                    tli,
                    reason: e.to_string(),
                }
            })?
        };
        let magic = PageMagic::for_server_version_num(info.server_version_num)
            .ok_or(PlanError::UnknownVersion(info.server_version_num))?;
        Ok(Chain {
            archive,
            history,
            seg_size: info.wal_segment_size,
            config: VerifierConfig {
                seg_size: info.wal_segment_size,
                magic,
                tli,
                system_identifier: Some(info.system_identifier.0),
            },
        })
    }

    fn tli(&self) -> TimelineId {
        self.history.tli
    }

    /// Whether `(tli, lsn)` lies on the history: `tli` is an ancestor-or-self and `lsn` is
    /// within its span (at most where the history leaves it).
    fn has_point(&self, tli: TimelineId, lsn: Lsn) -> bool {
        self.history
            .ranges()
            .iter()
            .any(|r| r.tli == tli && r.begin <= lsn && r.end.is_none_or(|e| lsn <= e))
    }

    /// Whether a backup's start and end lie on the history.
    fn holds(&self, b: &BackupRecord) -> bool {
        self.has_point(b.start_timeline, b.start_lsn) && self.has_point(b.stop_timeline, b.stop_lsn)
    }

    /// The file recovery reads for `segno`: that of the newest timeline of the history that
    /// began at or before it and has the file (as `XLogFileReadAnyTLI`).
    fn segment(&self, segno: SegNo) -> Result<Option<StoredSegment>, PlanError> {
        for tli in self.history.timelines_for_segment(segno, self.seg_size) {
            if let Some(found) = self.archive.find_segment(tli, segno)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The name of the file that should hold `lsn`'s segment.
    fn file_name_for(&self, lsn: Lsn) -> String {
        let segno = lsn.segno(self.seg_size);
        segment_file_name(self.history.timeline_of(lsn), segno, self.seg_size)
    }

    /// Where the stored WAL ends along the history: the end of the newest timeline that has
    /// segment files, but not past where the history leaves it.
    fn end(&self) -> Result<Option<Lsn>, PlanError> {
        for range in self.history.ranges().iter().rev() {
            let Some(end) = end_of_timeline_wal(self.archive, range.tli)? else {
                continue;
            };
            let lsn = range.end.map_or(end.lsn, |e| end.lsn.min(e));
            if lsn > range.begin || range.begin == Lsn::INVALID {
                return Ok(Some(lsn));
            }
        }
        Ok(None)
    }

    /// Reads the WAL along the history from `from` for the first record `wanted` stops at,
    /// up to records starting at `until` (if given) or the end of the WAL. Only records
    /// starting at or after `from` count.
    fn scan(&self, from: Lsn, until: Option<Lsn>, wanted: &Wanted<'_>) -> Result<Scan, PlanError> {
        let page = Lsn(from.0 - from.0 % u64::from(WAL_BLOCK_SIZE));
        let mut scanner =
            WalScanner::new(self.config, page).map_err(|e| PlanError::Unreadable {
                file: self.file_name_for(page),
                error: e.to_string(),
            })?;
        let mut segno = page.segno(self.seg_size);
        let mut skip = u64::from(page.segment_offset(self.seg_size));
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let Some(file) = self.segment(segno)? else {
                let at = scanner.verified_up_to().unwrap_or(from).max(from);
                return Ok(Scan::Ended {
                    at,
                    why: EndWhy::Missing(segno),
                });
            };
            let name = file.name.format(self.seg_size);
            let unreadable = |e: &dyn fmt::Display| PlanError::Unreadable {
                file: name.clone(),
                error: e.to_string(),
            };
            scanner.set_file_timeline(file.name.tli);
            // Records past where the history leaves this file's timeline are not on it.
            let leaves = self.history.switchpoint(file.name.tli);
            let mut reader = self.archive.open_segment(&file)?;
            let mut total = 0u64;
            loop {
                let n = reader.read(&mut buf).map_err(|e| unreadable(&e))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                let skipped = usize::try_from(skip).unwrap_or(usize::MAX).min(n);
                skip -= skipped as u64;
                let fed = scanner.feed(buf.get(skipped..n).unwrap_or_default());
                while let Some(r) = scanner.next_record() {
                    if let Some(sp) = leaves.filter(|sp| r.start >= *sp) {
                        return Ok(Scan::Ended {
                            at: sp,
                            why: EndWhy::Missing(sp.segno(self.seg_size)),
                        });
                    }
                    if until.is_some_and(|u| r.start >= u) {
                        return Ok(Scan::Reached);
                    }
                    if r.start < from {
                        continue;
                    }
                    if let Some(stop) = wanted.stop_at(&r) {
                        return Ok(Scan::Found(r, stop));
                    }
                }
                if let Err(e) = fed {
                    return Ok(Scan::Ended {
                        at: scanner.verified_up_to().unwrap_or(from),
                        why: EndWhy::Invalid(e.to_string()),
                    });
                }
                if let Some(at) = scanner.end_of_wal() {
                    return Ok(Scan::Ended {
                        at,
                        why: EndWhy::EndOfWal,
                    });
                }
            }
            if total != self.seg_size.bytes() {
                return Ok(Scan::Ended {
                    at: scanner.verified_up_to().unwrap_or(from),
                    why: EndWhy::Invalid(format!(
                        "{name} holds {total} bytes, not the segment size {}",
                        self.seg_size.bytes()
                    )),
                });
            }
            segno = segno.next();
        }
    }
}

/// The search state shared by the steps of one plan.
struct Planner<'a> {
    chain: &'a Chain<'a>,
    request: &'a PlanRequest,
    explicit: bool,
    /// Where the stored WAL ends along the history.
    end: Lsn,
}

impl<'a> Planner<'a> {
    /// Chooses the backup and the stop point.
    fn choose(
        &self,
        candidates: &[&'a BackupRecord],
    ) -> Result<(&'a BackupRecord, StopPoint), PlanError> {
        let inclusive = self.request.inclusive;
        match &self.request.target {
            RecoveryTarget::Latest => {
                let b = candidates
                    .iter()
                    .copied()
                    .find(|b| b.stop_lsn <= self.end)
                    .ok_or_else(|| {
                        let newest = candidates[0];
                        if self.explicit {
                            self.cannot_reach(newest, format!(
                                "its WAL is not all in the store: it needs WAL up to {}, the store has it up to {}",
                                newest.stop_lsn, self.end
                            ))
                        } else {
                            PlanError::WalNotYetStored {
                                id: newest.id.clone(),
                                stop: newest.stop_lsn,
                                end: self.end,
                            }
                        }
                    })?;
                Ok((b, StopPoint::EndOfWal))
            }
            RecoveryTarget::Immediate => {
                let b = candidates[0];
                let stop = self.find_from(b.stop_lsn, &Wanted::At(b.stop_lsn, Stop::Before), b)?;
                Ok((b, stop))
            }
            RecoveryTarget::Lsn(lsn) => {
                let Some(b) = candidates.iter().copied().find(|b| b.stop_lsn <= *lsn) else {
                    let oldest = candidates[candidates.len() - 1];
                    return Err(self.too_early(oldest, String::new()));
                };
                let stop = if inclusive { Stop::After } else { Stop::Before };
                let point = self.find_from(*lsn, &Wanted::At(*lsn, stop), b)?;
                Ok((b, point))
            }
            RecoveryTarget::Time(t) => {
                // Only backups that began by the target time (see make_plan).
                let ended: Vec<&BackupRecord> = candidates
                    .iter()
                    .copied()
                    .filter(|b| recorded_start_time(b).is_none_or(|start| start <= *t))
                    .collect();
                if ended.is_empty() {
                    let oldest = candidates[candidates.len() - 1];
                    return Err(self.too_early(oldest, String::new()));
                }
                self.search(&ended, &Wanted::Time(*t, inclusive))
            }
            RecoveryTarget::Xid(x) => self.search(candidates, &Wanted::Xid(x.xid(), inclusive)),
            RecoveryTarget::Name(n) => self.search(candidates, &Wanted::Name(n.as_str())),
        }
    }

    /// Where a backup's search starts: its start, or its end when it carries its WAL.
    fn search_start(b: &BackupRecord) -> Lsn {
        if b.includes_wal {
            b.stop_lsn
        } else {
            b.start_lsn
        }
    }

    /// The newest of `candidates` from whose start recovery's first stop lies at or after
    /// its end. See [`make_plan`] for the order of the search.
    fn search(
        &self,
        candidates: &[&'a BackupRecord],
        wanted: &Wanted<'_>,
    ) -> Result<(&'a BackupRecord, StopPoint), PlanError> {
        // The first stop at or after `.0` (None: not up to the end of the WAL).
        let mut known: Option<(Lsn, Option<(ScannedRecord, Stop)>)> = None;
        let mut found_before: Option<(ScannedRecord, Stop)> = None;
        let mut last_end: Option<(Lsn, EndWhy)> = None;
        for &b in candidates {
            let from = Self::search_start(b);
            let scan = match &known {
                Some((k, _)) if from <= *k => self.chain.scan(from, Some(*k), wanted)?,
                _ => self.chain.scan(from, None, wanted)?,
            };
            let first = match scan {
                Scan::Found(r, stop) => Some((r, stop)),
                Scan::Reached => known.and_then(|(_, f)| f),
                Scan::Ended { at, why } => {
                    last_end = Some(self.ended(at, why, b)?);
                    None
                }
            };
            known = Some((from, first.clone()));
            match first {
                Some((r, stop)) => {
                    let point = StopPoint::Record(r.clone(), stop);
                    if point.replayed_to(self.end) >= b.stop_lsn {
                        return Ok((b, point));
                    }
                    found_before = Some((r, stop));
                }
                None => continue,
            }
        }
        let oldest = candidates[candidates.len() - 1];
        match found_before {
            Some((r, _)) => {
                let what = format!(" (recovery would stop at {})", r.start);
                Err(self.too_early(oldest, what))
            }
            None => {
                let (at, why) = last_end.unwrap_or((self.end, EndWhy::EndOfWal));
                if self.explicit {
                    return Err(self.cannot_reach(
                        oldest,
                        format!(
                            "target {} is not in the stored WAL from its start {} to the end at {at}: it is before this backup, or not yet in the store",
                            self.target_text(),
                            Self::search_start(oldest)
                        ),
                    ));
                }
                Err(match self.beyond_end(at, &why) {
                    PlanError::BeyondEnd {
                        target,
                        end,
                        timeline,
                        why,
                    } => PlanError::NotFound {
                        target,
                        from: Self::search_start(oldest),
                        end,
                        timeline,
                        why,
                    },
                    other => other,
                })
            }
        }
    }

    /// The first stop at or after `from`, which must exist; `b` is the backup to restore.
    fn find_from(
        &self,
        from: Lsn,
        wanted: &Wanted<'_>,
        b: &BackupRecord,
    ) -> Result<StopPoint, PlanError> {
        match self.chain.scan(from, None, wanted)? {
            Scan::Found(r, stop) => Ok(StopPoint::Record(r, stop)),
            Scan::Reached => Err(self.beyond_end(self.end, &EndWhy::EndOfWal)),
            Scan::Ended { at, why } => {
                let (at, why) = self.ended(at, why, b)?;
                Err(self.beyond_end(at, &why))
            }
        }
    }

    /// Where a scan for backup `b` ran out of WAL, and why; an error for a segment missing
    /// in the middle of the stored WAL (a hole, not the end).
    fn ended(&self, at: Lsn, why: EndWhy, b: &BackupRecord) -> Result<(Lsn, EndWhy), PlanError> {
        match why {
            EndWhy::Missing(segno) if self.missing_in_the_middle(segno) => {
                Err(self.missing(segno, b))
            }
            EndWhy::Missing(_) => Ok((self.end, EndWhy::EndOfWal)),
            why => Ok((at, why)),
        }
    }

    /// Whether the store has WAL after a missing segment (a hole, not the end).
    fn missing_in_the_middle(&self, segno: SegNo) -> bool {
        self.end.0 > 0 && segno <= Lsn(self.end.0 - 1).segno(self.chain.seg_size)
    }

    /// The error for a segment missing in the middle of what `b` needs: the recorded gap
    /// covering it, if there is one.
    fn missing(&self, segno: SegNo, b: &BackupRecord) -> PlanError {
        let lsn = segno.start_lsn(self.chain.seg_size);
        match self.gap_over(lsn, segno.next().start_lsn(self.chain.seg_size)) {
            Ok(Some(gap)) => self.gap_error(gap, b),
            Ok(None) => PlanError::MissingSegment {
                name: self.chain.file_name_for(lsn),
                backup: b.id.clone(),
            },
            Err(e) => e,
        }
    }

    fn target_text(&self) -> String {
        self.request.target.to_string()
    }

    fn cannot_reach(&self, b: &BackupRecord, reason: String) -> PlanError {
        PlanError::BackupCannotReach {
            id: b.id.clone(),
            reason,
        }
    }

    /// The target lies before `oldest`'s end (`found`: where, if known).
    fn too_early(&self, oldest: &BackupRecord, found: String) -> PlanError {
        if self.explicit {
            return self.cannot_reach(
                oldest,
                format!(
                    "the target {}{found} lies before its end {} ({}): a backup can only be rolled forward; choose an older backup",
                    self.target_text(),
                    oldest.stop_lsn,
                    oldest.stop_time
                ),
            );
        }
        PlanError::BeforeOldestBackup {
            target: self.target_text(),
            oldest: oldest.id.clone(),
            stop: oldest.stop_lsn,
            stop_time: oldest.stop_time.clone(),
            found,
        }
    }

    fn beyond_end(&self, at: Lsn, why: &EndWhy) -> PlanError {
        let why = match why {
            EndWhy::EndOfWal => String::new(),
            EndWhy::Invalid(e) => format!(" (invalid WAL there: {e})"),
            EndWhy::Missing(segno) => format!(
                " (the next segment, {}, is not in the store)",
                self.chain
                    .file_name_for(segno.start_lsn(self.chain.seg_size))
            ),
        };
        PlanError::BeyondEnd {
            target: self.target_text(),
            end: at,
            timeline: self.chain.history.timeline_of(at),
            why,
        }
    }

    /// A recorded gap on the history overlapping `[from, to)`.
    fn gap_over(&self, from: Lsn, to: Lsn) -> Result<Option<Gap>, PlanError> {
        let gaps = self.chain.archive.gaps()?;
        let ranges = self.chain.history.ranges();
        Ok(gaps.into_iter().find(|g| {
            ranges.iter().any(|r| {
                let lo = g.from.max(r.begin).max(from);
                let hi = g.to.min(r.end.unwrap_or(Lsn(u64::MAX))).min(to);
                r.tli == g.timeline && lo < hi
            })
        }))
    }

    fn gap_error(&self, gap: Gap, b: &BackupRecord) -> PlanError {
        PlanError::Gap {
            timeline: gap.timeline,
            from: gap.from,
            to: gap.to,
            reason: gap.reason,
            backup: b.id.clone(),
        }
    }

    /// Checks the WAL from the backup to the stop point and puts the plan together.
    fn assemble(&self, b: &BackupRecord, stop: StopPoint) -> Result<Plan, PlanError> {
        let chain = self.chain;
        let seg_size = chain.seg_size;
        let from = Self::search_start(b);
        let to = stop.read_to(self.end).max(b.stop_lsn);
        if let Some(gap) = self.gap_over(from, to)? {
            return Err(self.gap_error(gap, b));
        }
        let mut files: Vec<StoredSegment> = Vec::new();
        if to > from {
            let first = from.segno(seg_size);
            let last = Lsn(to.0 - 1).segno(seg_size);
            for segno in first.0..=last.0 {
                let segno = SegNo(segno);
                let needed_to = segno.next().start_lsn(seg_size).min(to);
                let wanted = chain.file_name_for(Lsn(needed_to.0 - 1));
                let missing = || PlanError::MissingSegment {
                    name: wanted.clone(),
                    backup: b.id.clone(),
                };
                let file = chain.segment(segno)?.ok_or_else(missing)?;
                let usable = chain
                    .history
                    .switchpoint(file.name.tli)
                    .is_none_or(|sp| needed_to <= sp);
                if !usable || (file.name.partial && segno != last) {
                    return Err(missing());
                }
                files.push(file);
            }
        }
        let mut timelines: Vec<TimelineId> = files.iter().map(|f| f.name.tli).collect();
        timelines.dedup();
        if timelines.is_empty() {
            timelines.push(b.stop_timeline);
        }
        let mut history_files = Vec::new();
        for range in chain.history.ranges() {
            if range.tli.0 > 1 && chain.archive.read_history(range.tli)?.is_some() {
                history_files.push(history_file_name(range.tli));
            }
        }
        let record = match &stop {
            StopPoint::EndOfWal => None,
            StopPoint::Record(r, s) => Some(target_record(r, *s, &chain.history)),
        };
        let stops_at = stop.replayed_to(self.end);
        Ok(Plan {
            backup: PlannedBackup {
                id: b.id.clone(),
                start_lsn: b.start_lsn,
                start_timeline: b.start_timeline,
                stop_lsn: b.stop_lsn,
                stop_timeline: b.stop_timeline,
                start_time: b.start_time.clone(),
                stop_time: b.stop_time.clone(),
                includes_wal: b.includes_wal,
            },
            target: PlannedTarget {
                kind: self.request.target.kind(),
                value: match &self.request.target {
                    RecoveryTarget::Latest | RecoveryTarget::Immediate => None,
                    t => t.setting().map(|(_, v)| v),
                },
                inclusive: self.request.inclusive,
                timeline: chain.tli(),
                timeline_requested: self.request.timeline.to_string(),
                stops_at,
                record,
            },
            wal: PlannedWal {
                first_segment: files
                    .first()
                    .map(|f| segment_file_name(f.name.tli, f.name.segno, seg_size)),
                last_segment: files
                    .last()
                    .map(|f| segment_file_name(f.name.tli, f.name.segno, seg_size)),
                segments: files.len(),
                bytes: files.len() as u64 * seg_size.bytes(),
                stored_bytes: files.iter().map(|f| f.size).sum(),
                last_is_partial: files.last().is_some_and(|f| f.name.partial),
            },
            timelines,
            history_files,
            end_of_wal: self.end,
        })
    }
}

/// When a backup began, by the client's clock as recorded (whole seconds, so at or before
/// the server's checkpoint for it). None if it does not parse.
fn recorded_start_time(b: &BackupRecord) -> Option<UtcTime> {
    UtcTime::parse(&b.start_time).ok()
}

fn target_record(r: &ScannedRecord, stop: Stop, history: &TimelineHistory) -> TargetRecord {
    let (kind, xid, time, name) = match &r.event {
        Ok(Some(RecordEvent::TransactionEnd { kind, xid, time })) => {
            (kind.as_str(), Some(*xid), Some(*time), None)
        }
        Ok(Some(RecordEvent::RestorePoint { time, name })) => {
            ("restore point", None, Some(*time), Some(name.clone()))
        }
        _ => ("record", None, None, None),
    };
    TargetRecord {
        lsn: r.start,
        end: r.end,
        timeline: history.timeline_of(r.start),
        stop,
        kind,
        xid,
        time,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::take::ConfigCapture;
    use crate::pg::SystemId;
    use crate::store::{ClusterName, ClusterReader, ClusterWriter, ServerIdentity};
    use crate::wal::WalFileName;
    use crate::wal::testwal::{self, WalBuilder};
    use std::path::Path;

    const MB: u64 = 1 << 20;
    const PG15_SYSID: u64 = 7711098426243390295;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    fn at(s: &str) -> UtcTime {
        s.parse().unwrap()
    }

    /// A store for a 1 MB-segment cluster, with these files put in place by hand.
    fn store(sysid: u64, version: u32, files: &[(String, Vec<u8>)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let server = ServerIdentity {
            system_id: SystemId(sysid),
            server_version_num: version,
            wal_segment_size: WalSegSize::new(MB).unwrap(),
        };
        drop(ClusterWriter::open(root.path(), &ClusterName::default(), &server).unwrap());
        let wal = root.path().join("main/wal");
        for (name, bytes) in files {
            let dir = if name.ends_with(".history") {
                wal.clone()
            } else {
                wal.join(&name[..16])
            };
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        root
    }

    fn reader(root: &Path) -> ClusterReader {
        ClusterReader::open(root, &ClusterName::default()).unwrap()
    }

    fn backup(id: &str, start: &str, stop: &str, times: (&str, &str)) -> BackupRecord {
        BackupRecord {
            id: id.into(),
            label: id.into(),
            status: "complete".into(),
            start_lsn: lsn(start),
            start_timeline: TimelineId(1),
            stop_lsn: lsn(stop),
            stop_timeline: TimelineId(1),
            start_time: times.0.into(),
            stop_time: times.1.into(),
            server_version: "15.18".into(),
            server_version_num: 150018,
            system_identifier: PG15_SYSID.to_string(),
            wal_segment_size: MB,
            compression: "none".into(),
            includes_wal: false,
            from_standby: false,
            archives: Vec::new(),
            tablespaces: Vec::new(),
            bytes: 0,
            manifest_files: 0,
            history_files: Vec::new(),
            config_files: ConfigCapture::default(),
        }
    }

    /// The PostgreSQL 15 fixtures as a store: timeline 1's segments 7–9 and its last one
    /// (A) as the `.partial` it ends with, timeline 2's A being written, and the history.
    /// Commits (pg_waldump): xid 724–726 in segment 7 at 20:40:10.740639, .740924, .744411,
    /// 727 at 0/972258 (.749506), 728 at 0/981968 (.750412), then a switch; after the
    /// promotion at 0/A000A0, 729 at 0/A079C8 on timeline 2 (20:40:11.139208).
    fn pg15_files() -> Vec<(String, Vec<u8>)> {
        let f = |name: &str| testwal::fixture("pg15", name);
        vec![
            (
                "000000010000000000000007".into(),
                f("000000010000000000000007"),
            ),
            (
                "000000010000000000000008".into(),
                f("000000010000000000000008"),
            ),
            (
                "000000010000000000000009".into(),
                f("000000010000000000000009"),
            ),
            (
                "00000001000000000000000A.partial".into(),
                f("00000001000000000000000A"),
            ),
            (
                "00000002000000000000000A.partial".into(),
                f("00000002000000000000000A"),
            ),
            ("00000002.history".into(), f("00000002.history")),
        ]
    }

    fn pg15_store(drop: &[&str]) -> tempfile::TempDir {
        let files: Vec<_> = pg15_files()
            .into_iter()
            .filter(|(n, _)| !drop.contains(&n.as_str()))
            .collect();
        store(PG15_SYSID, 150018, &files)
    }

    /// B1 ends before the first commit, B2 in segment 9 after xid 726.
    fn pg15_backups() -> Vec<BackupRecord> {
        vec![
            backup(
                "B1",
                "0/700028",
                "0/719F48",
                ("2026-11-22T20:40:08Z", "2026-11-22T20:40:09Z"),
            ),
            backup(
                "B2",
                "0/963198",
                "0/9649B0",
                ("2026-11-22T20:40:11Z", "2026-11-22T20:40:11Z"),
            ),
        ]
    }

    fn request(target: RecoveryTarget) -> PlanRequest {
        PlanRequest {
            target,
            inclusive: true,
            ..PlanRequest::default()
        }
    }

    fn plan(root: &Path, req: &PlanRequest) -> Result<Plan, PlanError> {
        make_plan(&reader(root), &pg15_backups(), req)
    }

    #[test]
    fn target_options_parse() {
        assert_eq!("742".parse::<TargetXid>(), Ok(TargetXid(742)));
        assert_eq!("4294967296742".parse::<TargetXid>().unwrap().xid(), 742);
        for bad in ["", "0", "2", "4294967298", "-5", "+7", "0x10", "7a"] {
            assert!(bad.parse::<TargetXid>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "before upgrade"
                .parse::<RestorePointName>()
                .unwrap()
                .as_str(),
            "before upgrade"
        );
        assert!("x".repeat(63).parse::<RestorePointName>().is_ok());
        for bad in [String::new(), "x".repeat(64), "a\0b".into()] {
            assert!(bad.parse::<RestorePointName>().is_err(), "{bad:?}");
        }
        assert_eq!("latest".parse(), Ok(TargetTimeline::Latest));
        assert_eq!("current".parse(), Ok(TargetTimeline::Current));
        assert_eq!("2".parse(), Ok(TargetTimeline::Id(TimelineId(2))));
        for bad in ["0", "", "-1", "two", "0x2"] {
            assert!(bad.parse::<TargetTimeline>().is_err(), "{bad:?}");
        }
        assert_eq!(TargetTimeline::Id(TimelineId(3)).to_string(), "3");
        assert_eq!("promote".parse(), Ok(TargetAction::Promote));
        assert_eq!("pause".parse(), Ok(TargetAction::Pause));
        assert_eq!(
            "shutdown".parse::<TargetAction>().unwrap().as_str(),
            "shutdown"
        );
        let err = "resume".parse::<TargetAction>().unwrap_err();
        assert!(err.contains("pause, promote or shutdown"), "{err}");
        assert_eq!("latest".parse(), Ok(BackupChoice::Latest));
        assert_eq!(
            "20261122T193000Z".parse(),
            Ok(BackupChoice::Id("20261122T193000Z".into()))
        );
        assert!("".parse::<BackupChoice>().is_err());

        let time = RecoveryTarget::Time(at("2026-11-22 20:30:00.5+01"));
        assert_eq!(
            time.setting(),
            Some((
                "recovery_target_time",
                "2026-11-22 19:30:00.500000+00".into()
            ))
        );
        assert_eq!(
            RecoveryTarget::Lsn(lsn("0/16B3748")).setting(),
            Some(("recovery_target_lsn", "0/16B3748".into()))
        );
        assert_eq!(
            RecoveryTarget::Xid(TargetXid(742)).setting(),
            Some(("recovery_target_xid", "742".into()))
        );
        let name = RecoveryTarget::Name("rp".parse().unwrap());
        assert_eq!(name.setting(), Some(("recovery_target_name", "rp".into())));
        assert_eq!(
            RecoveryTarget::Immediate.setting(),
            Some(("recovery_target", "immediate".into()))
        );
        assert_eq!(RecoveryTarget::Latest.setting(), None);
        assert_eq!(RecoveryTarget::default(), RecoveryTarget::Latest);
        assert!(time.has_inclusive() && !name.has_inclusive());
        assert_eq!(name.to_string(), "restore point \"rp\"");
    }

    #[test]
    fn latest_on_the_newest_timeline() {
        let root = pg15_store(&[]);
        let p = plan(root.path(), &request(RecoveryTarget::Latest)).unwrap();
        assert_eq!(p.backup.id, "B2");
        assert_eq!(p.target.timeline, TimelineId(2));
        assert_eq!(p.target.stops_at, lsn("0/A07A68"));
        assert_eq!(p.end_of_wal, lsn("0/A07A68"));
        assert!(p.target.record.is_none());
        assert_eq!(
            p.wal.first_segment.as_deref(),
            Some("000000010000000000000009")
        );
        assert_eq!(
            p.wal.last_segment.as_deref(),
            Some("00000002000000000000000A")
        );
        assert_eq!((p.wal.segments, p.wal.bytes), (2, 2 * MB));
        assert_eq!(p.wal.stored_bytes, 2 * MB);
        assert!(p.wal.last_is_partial);
        assert_eq!(p.timelines, vec![TimelineId(1), TimelineId(2)]);
        assert_eq!(p.history_files, vec!["00000002.history".to_string()]);
        let text = p.to_text();
        assert!(
            text.contains("backup:    B2 (timeline 1, 0/963198 .. 0/9649B0"),
            "{text}"
        );
        assert!(
            text.contains(
                "000000010000000000000009 .. 00000002000000000000000A (partial): 2 segments"
            ),
            "{text}"
        );
        assert!(
            text.contains("timelines: 1, 2 (history: 00000002.history)"),
            "{text}"
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["target"]["stops_at"], "0/A07A68");
        assert_eq!(json["target"]["kind"], "latest");

        // On timeline 1 (the backups' own): its WAL ends where timeline 2 began.
        let req = PlanRequest {
            timeline: TargetTimeline::Current,
            ..request(RecoveryTarget::Latest)
        };
        let p = plan(root.path(), &req).unwrap();
        assert_eq!(p.target.timeline, TimelineId(1));
        assert_eq!(p.target.stops_at, lsn("0/A000A0"));
        assert_eq!(
            p.wal.last_segment.as_deref(),
            Some("00000001000000000000000A")
        );
        assert!(p.wal.last_is_partial && p.history_files.is_empty());
        assert_eq!(p.timelines, vec![TimelineId(1)]);

        // An explicit older backup replays more.
        let req = PlanRequest {
            backup: BackupChoice::Id("B1".into()),
            ..request(RecoveryTarget::Latest)
        };
        let p = plan(root.path(), &req).unwrap();
        assert_eq!((p.backup.id.as_str(), p.wal.segments), ("B1", 4));
        let req = PlanRequest {
            backup: BackupChoice::Id("B9".into()),
            ..request(RecoveryTarget::Latest)
        };
        let err = plan(root.path(), &req).unwrap_err().to_string();
        assert!(
            err.contains("no complete backup \"B9\"") && err.contains("B2, B1"),
            "{err}"
        );
        assert!(matches!(
            make_plan(&reader(root.path()), &[], &request(RecoveryTarget::Latest)),
            Err(PlanError::NoBackups)
        ));
    }

    #[test]
    fn lsn_targets() {
        let root = pg15_store(&[]);
        let p = plan(root.path(), &request(RecoveryTarget::Lsn(lsn("0/972258")))).unwrap();
        assert_eq!(p.backup.id, "B2");
        let r = p.target.record.as_ref().unwrap();
        assert_eq!(
            (r.lsn, r.end, r.stop),
            (lsn("0/972258"), lsn("0/97227A"), Stop::After)
        );
        assert_eq!((r.kind, r.xid), ("commit", Some(727)));
        assert_eq!(p.target.stops_at, lsn("0/97227A"));
        assert_eq!(p.target.value.as_deref(), Some("0/972258"));
        assert_eq!((p.wal.segments, p.wal.last_is_partial), (1, false));
        let excl = PlanRequest {
            inclusive: false,
            ..request(RecoveryTarget::Lsn(lsn("0/972258")))
        };
        let p = plan(root.path(), &excl).unwrap();
        assert_eq!(p.target.stops_at, lsn("0/972258"));
        assert!(
            p.to_text().contains("LSN 0/972258 (exclusive)"),
            "{}",
            p.to_text()
        );

        // Between two records: the next one is where recovery stops; an older backup.
        let p = plan(root.path(), &request(RecoveryTarget::Lsn(lsn("0/71E000")))).unwrap();
        assert_eq!(p.backup.id, "B1");
        assert!(p.target.record.as_ref().unwrap().lsn >= lsn("0/71E000"));

        let err = plan(root.path(), &request(RecoveryTarget::Lsn(lsn("0/710000")))).unwrap_err();
        assert!(
            matches!(&err, PlanError::BeforeOldestBackup { oldest, .. } if oldest == "B1"),
            "{err}"
        );
        let err = plan(root.path(), &request(RecoveryTarget::Lsn(lsn("0/B00000")))).unwrap_err();
        assert!(
            matches!(&err, PlanError::BeyondEnd { end, .. } if *end == lsn("0/A07A68")),
            "{err}"
        );
        // An explicit backup newer than the target.
        let req = PlanRequest {
            backup: BackupChoice::Id("B2".into()),
            ..request(RecoveryTarget::Lsn(lsn("0/71E140")))
        };
        let err = plan(root.path(), &req).unwrap_err().to_string();
        assert!(err.starts_with("backup B2 cannot reach the target: the target LSN 0/71E140 lies before its end 0/9649B0"), "{err}");

        // Immediate: the first record after the backup's end.
        let p = plan(root.path(), &request(RecoveryTarget::Immediate)).unwrap();
        assert_eq!(p.backup.id, "B2");
        let r = p.target.record.as_ref().unwrap();
        assert_eq!((r.lsn, r.stop), (lsn("0/9649B0"), Stop::Before));
        assert_eq!(p.target.stops_at, lsn("0/9649B0"));
    }

    #[test]
    fn time_targets() {
        let root = pg15_store(&[]);
        // Between xid 726 and 727: B2 began after it, so B1; recovery stops before 727.
        let t = RecoveryTarget::Time(at("2026-11-22 20:40:10.745"));
        let p = plan(root.path(), &request(t.clone())).unwrap();
        assert_eq!(p.backup.id, "B1");
        let r = p.target.record.as_ref().unwrap();
        assert_eq!(
            (r.lsn, r.xid, r.stop),
            (lsn("0/972258"), Some(727), Stop::Before)
        );
        assert_eq!(r.time, Some(at("2026-11-22 20:40:10.749506")));
        assert_eq!(p.target.stops_at, lsn("0/972258"));
        assert_eq!(
            p.target.value.as_deref(),
            Some("2026-11-22 20:40:10.745000+00")
        );
        assert_eq!(p.wal.segments, 3);
        assert!(
            p.to_text()
                .contains("recovery stops before the commit of xid 727"),
            "{}",
            p.to_text()
        );
        // An explicit B2 cannot: it began after the target time.
        let req = PlanRequest {
            backup: BackupChoice::Id("B2".into()),
            ..request(t)
        };
        assert!(matches!(
            plan(root.path(), &req),
            Err(PlanError::BackupCannotReach { .. })
        ));

        // Exactly at 727's commit time: inclusive stops before 728, exclusive before 727.
        let t727 = RecoveryTarget::Time(at("2026-11-22 20:40:10.749506"));
        let p = plan(root.path(), &request(t727.clone())).unwrap();
        assert_eq!(p.target.record.unwrap().xid, Some(728));
        let excl = PlanRequest {
            inclusive: false,
            ..request(t727)
        };
        assert_eq!(
            plan(root.path(), &excl).unwrap().target.record.unwrap().xid,
            Some(727)
        );

        // On timeline 2: the commit after the promotion.
        let p = plan(
            root.path(),
            &request(RecoveryTarget::Time(at("2026-11-22 20:40:11"))),
        )
        .unwrap();
        assert_eq!(p.backup.id, "B2");
        let r = p.target.record.as_ref().unwrap();
        assert_eq!(
            (r.xid, r.lsn, r.timeline),
            (Some(729), lsn("0/A079C8"), TimelineId(2))
        );
        assert_eq!(
            p.wal.last_segment.as_deref(),
            Some("00000002000000000000000A")
        );

        // After the last commit, and before every backup.
        let err = plan(
            root.path(),
            &request(RecoveryTarget::Time(at("2026-11-22 20:40:12"))),
        )
        .unwrap_err();
        assert!(
            matches!(&err, PlanError::NotFound { end, .. } if *end == lsn("0/A07A68")),
            "{err}"
        );
        let err = plan(
            root.path(),
            &request(RecoveryTarget::Time(at("2026-11-22 20:40:05"))),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "target time 2026-11-22 20:40:05+00 is before the oldest usable backup B1"
            ),
            "{err}"
        );
    }

    #[test]
    fn xid_targets() {
        let root = pg15_store(&[]);
        let xid = |x: u64| RecoveryTarget::Xid(TargetXid(x));
        // Before B2's start: found walking back to B1.
        let p = plan(root.path(), &request(xid(725))).unwrap();
        assert_eq!(p.backup.id, "B1");
        let r = p.target.record.as_ref().unwrap();
        assert_eq!(
            (r.lsn, r.stop, r.kind),
            (lsn("0/71E738"), Stop::After, "commit")
        );
        assert_eq!(p.target.stops_at, r.end);
        let p = plan(root.path(), &request(xid(728))).unwrap();
        assert_eq!(
            (p.backup.id.as_str(), p.target.record.unwrap().lsn),
            ("B2", lsn("0/981968"))
        );
        let p = plan(root.path(), &request(xid(729))).unwrap();
        assert_eq!(p.target.record.unwrap().timeline, TimelineId(2));
        let excl = PlanRequest {
            inclusive: false,
            ..request(xid(727))
        };
        let p = plan(root.path(), &excl).unwrap();
        assert_eq!(p.target.stops_at, lsn("0/972258"));
        let err = plan(root.path(), &request(xid(999))).unwrap_err();
        assert!(
            matches!(&err, PlanError::NotFound { from, .. } if *from == lsn("0/700028")),
            "{err}"
        );
        // An explicit B2 does not see 725.
        let req = PlanRequest {
            backup: BackupChoice::Id("B2".into()),
            ..request(xid(725))
        };
        let err = plan(root.path(), &req).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "backup B2 cannot reach the target: target xid 725 is not in the stored WAL"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_segments_and_gaps() {
        let t = RecoveryTarget::Time(at("2026-11-22 20:40:10.745"));
        let root = pg15_store(&["000000010000000000000008"]);
        let err = plan(root.path(), &request(t.clone()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("the store lacks WAL segment 000000010000000000000008, needed to replay from backup B1"), "{err}");
        let req = PlanRequest {
            backup: BackupChoice::Id("B1".into()),
            ..request(RecoveryTarget::Latest)
        };
        assert!(
            matches!(plan(root.path(), &req), Err(PlanError::MissingSegment { name, .. }) if name == "000000010000000000000008")
        );
        // B2 needs nothing before segment 9.
        assert_eq!(
            plan(root.path(), &request(RecoveryTarget::Latest))
                .unwrap()
                .backup
                .id,
            "B2"
        );

        // A recorded gap over it says why.
        let server = ServerIdentity {
            system_id: SystemId(PG15_SYSID),
            server_version_num: 150018,
            wal_segment_size: WalSegSize::new(MB).unwrap(),
        };
        let w = ClusterWriter::open(root.path(), &ClusterName::default(), &server).unwrap();
        w.record_gap(crate::store::Gap {
            timeline: TimelineId(1),
            from: lsn("0/800000"),
            to: lsn("0/900000"),
            detected: "2026-11-22T20:41:00Z".into(),
            reason: "the server had removed it".into(),
        })
        .unwrap();
        drop(w);
        for req in [request(t), req] {
            let err = plan(root.path(), &req).unwrap_err().to_string();
            assert!(err.starts_with("WAL from 0/800000 to 0/900000 on timeline 1 is missing (recorded gap: the server had removed it), and recovery from backup B1"), "{err}");
        }

        // Timeline 2's segment missing: its WAL cannot be read past the switch.
        let root = pg15_store(&["00000002000000000000000A.partial"]);
        let err = plan(root.path(), &request(RecoveryTarget::Xid(TargetXid(729)))).unwrap_err();
        assert!(matches!(err, PlanError::NotFound { .. }), "{err}");
        let p = plan(root.path(), &request(RecoveryTarget::Latest)).unwrap();
        assert_eq!(p.target.stops_at, lsn("0/A000A0"));
        assert_eq!(
            p.wal.last_segment.as_deref(),
            Some("00000001000000000000000A")
        );
    }

    #[test]
    fn target_timelines() {
        let root = pg15_store(&["00000002.history"]);
        // Without the history file, latest is timeline 1; timeline 2 cannot be followed.
        let p = plan(root.path(), &request(RecoveryTarget::Latest)).unwrap();
        assert_eq!(p.target.timeline, TimelineId(1));
        let req = PlanRequest {
            timeline: TargetTimeline::Id(TimelineId(2)),
            ..request(RecoveryTarget::Latest)
        };
        assert!(matches!(
            plan(root.path(), &req),
            Err(PlanError::MissingHistory(TimelineId(2)))
        ));
        // A backup on timeline 2 is not on timeline 1's history.
        let root = pg15_store(&[]);
        let mut b3 = backup(
            "B3",
            "0/A00108",
            "0/A03198",
            ("2026-11-22T20:40:11Z", "2026-11-22T20:40:11Z"),
        );
        b3.start_timeline = TimelineId(2);
        b3.stop_timeline = TimelineId(2);
        let mut backups = pg15_backups();
        backups.push(b3);
        let req = PlanRequest {
            timeline: TargetTimeline::Id(TimelineId(1)),
            backup: BackupChoice::Id("B3".into()),
            ..request(RecoveryTarget::Latest)
        };
        let err = make_plan(&reader(root.path()), &backups, &req).unwrap_err();
        assert!(
            matches!(err, PlanError::BackupNotOnTimeline { .. }),
            "{err}"
        );
        // On timeline 2 it is the newest; current follows it.
        let req = PlanRequest {
            timeline: TargetTimeline::Current,
            ..request(RecoveryTarget::Latest)
        };
        let p = make_plan(&reader(root.path()), &backups, &req).unwrap();
        assert_eq!(
            (p.backup.id.as_str(), p.target.timeline),
            ("B3", TimelineId(2))
        );
        assert_eq!(p.timelines, vec![TimelineId(2)]);
    }

    /// Synthetic WAL (PostgreSQL 15 format) with restore points: segments 3 and 4.
    fn restore_point_store() -> (tempfile::TempDir, Vec<BackupRecord>, Vec<Lsn>) {
        let mut b = WalBuilder::new(3);
        let rp = |name: &str| {
            let mut main = at("2026-11-22 19:00:00")
                .pg_timestamp()
                .to_le_bytes()
                .to_vec();
            let mut field = [0u8; 64];
            field[..name.len()].copy_from_slice(name.as_bytes());
            main.extend_from_slice(&field);
            [vec![255, main.len() as u8], main].concat()
        };
        let start = b.record(100);
        let mut marks = Vec::new();
        for i in 0..450 {
            b.record(3000);
            if i == 10 {
                marks.push(b.record_bytes(0, 0x70, 0, &rp("first")).start);
            }
            if i == 300 || i == 400 {
                marks.push(b.record_bytes(0, 0x70, 0, &rp("twice")).start);
            }
        }
        let stop = b.record(10);
        b.pad_segment();
        let size = testwal::mb();
        let files: Vec<(String, Vec<u8>)> = b
            .bytes
            .chunks(MB as usize)
            .enumerate()
            .map(|(i, c)| {
                let name = WalFileName {
                    partial: i > 0,
                    ..WalFileName::segment(TimelineId(1), SegNo(3 + i as u64))
                };
                (name.format(size), c.to_vec())
            })
            .collect();
        assert_eq!(files.len(), 2);
        let root = store(testwal::SYSID, 150000, &files);
        let mut bk = backup(
            "S",
            &start.start.to_string(),
            &marks[0].to_string(),
            ("2026-11-22T18:00:00Z", "2026-11-22T18:00:01Z"),
        );
        bk.server_version_num = 150000;
        marks.push(stop.start);
        (root, vec![bk], marks)
    }

    #[test]
    fn restore_point_targets() {
        let (root, backups, marks) = restore_point_store();
        let name = |n: &str| request(RecoveryTarget::Name(n.parse().unwrap()));
        let p = make_plan(&reader(root.path()), &backups, &name("twice")).unwrap();
        let r = p.target.record.as_ref().unwrap();
        assert_eq!(
            (r.lsn, r.stop, r.kind),
            (marks[1], Stop::After, "restore point")
        );
        assert_eq!(
            (r.name.as_deref(), r.time),
            (Some("twice"), Some(at("2026-11-22 19:00:00")))
        );
        assert_eq!(p.target.stops_at, r.end);
        assert!(
            p.to_text()
                .contains("restore point \"twice\" on timeline 1"),
            "{}",
            p.to_text()
        );
        // The backup ends at "first": recovery stops after it, at the backup's end.
        let p = make_plan(&reader(root.path()), &backups, &name("first")).unwrap();
        assert_eq!(p.target.record.unwrap().lsn, marks[0]);
        let err = make_plan(&reader(root.path()), &backups, &name("nope")).unwrap_err();
        assert!(matches!(&err, PlanError::NotFound { .. }), "{err}");
        // Latest reads the partial segment to its end.
        let p = make_plan(
            &reader(root.path()),
            &backups,
            &request(RecoveryTarget::Latest),
        )
        .unwrap();
        assert!(p.wal.last_is_partial && p.end_of_wal > marks[3]);
    }
}
