//! Replication commands with typed results, spelled for each server version.
//!
//! Keywords are upper-case (the WAL sender's lexer is case-sensitive) and every slot name is
//! double-quoted, after validation, so nothing the user types can change a command.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use super::connection::Connection;
use super::error::Error;
use super::query::{QueryResult, Row, RowError};
use crate::wal::{Lsn, TimelineId};

/// The system identifier `initdb` gave a cluster: the same on a primary and its standbys, and
/// different for every other cluster.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct SystemId(pub u64);

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for SystemId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(SystemId)
    }
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SystemInfo {
    pub system_id: SystemId,
    pub timeline: TimelineId,
    /// The server's current WAL flush position (its replay position on a standby).
    pub xlogpos: Lsn,
    /// `None` for a physical replication connection.
    pub dbname: Option<String>,
}

/// A replication slot name: 1 to 63 characters of `a-z`, `0-9` and `_`, as PostgreSQL
/// requires.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlotName(String);

impl SlotName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SlotName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if s.is_empty() || s.len() > 63 || !valid_chars {
            return Err(format!(
                "invalid replication slot name {s:?}: use 1 to 63 characters of a-z, 0-9 and _"
            ));
        }
        Ok(SlotName(s.to_string()))
    }
}

/// What `READ_REPLICATION_SLOT` says of an existing physical slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotPosition {
    /// Where the server keeps WAL from; `None` until the slot has reserved WAL.
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<TimelineId>,
}

/// The answer to `TIMELINE_HISTORY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    /// `NNNNNNNN.history`.
    pub file_name: String,
    /// The file's bytes, exactly as the server has them.
    pub content: Bytes,
}

/// Options of `CREATE_REPLICATION_SLOT ... PHYSICAL`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotOptions {
    /// Dropped when the session ends.
    pub temporary: bool,
    /// Reserve WAL at once instead of at first use.
    pub reserve_wal: bool,
}

impl Connection {
    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, Error> {
        let row = self.single_row("IDENTIFY_SYSTEM").await?;
        let info = (|| {
            Ok::<_, RowError>(SystemInfo {
                system_id: row.required(0)?,
                timeline: TimelineId(row.required(1)?),
                xlogpos: row.required(2)?,
                dbname: row.parse(3)?,
            })
        })();
        info.map_err(|e| unexpected("IDENTIFY_SYSTEM", e))
    }

    /// `SHOW name`: a setting as the server prints it (`16MB`, `replica`, ...).
    pub async fn show(&mut self, name: &str) -> Result<String, Error> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !valid {
            return Err(Error::UnexpectedResult {
                command: "SHOW".into(),
                reason: format!("refusing to ask for setting {name:?}: not a setting name"),
            });
        }
        let command = format!("SHOW {name}");
        let row = self.single_row(&command).await?;
        row.required(0).map_err(|e| unexpected(&command, e))
    }

    /// `TIMELINE_HISTORY tli`: the history file of a timeline (none exists for timeline 1).
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<TimelineHistory, Error> {
        let command = format!("TIMELINE_HISTORY {}", tli.0);
        let row = self.single_row(&command).await?;
        let file_name: String = row.required(0).map_err(|e| unexpected(&command, e))?;
        let expected = format!("{:08X}.history", tli.0);
        if file_name != expected {
            return Err(unexpected(
                &command,
                format!("server sent file {file_name:?}, expected {expected:?}"),
            ));
        }
        let content = row
            .bytes(1)
            .map_err(|e| unexpected(&command, e))?
            .cloned()
            .ok_or_else(|| unexpected(&command, "history content is NULL"))?;
        Ok(TimelineHistory { file_name, content })
    }

    /// `CREATE_REPLICATION_SLOT "name" [TEMPORARY] PHYSICAL ...`, in the syntax of the
    /// server's version. Returns the server's error for a slot that exists (SQLSTATE 42710).
    pub async fn create_physical_slot(
        &mut self,
        slot: &SlotName,
        options: SlotOptions,
    ) -> Result<(), Error> {
        let temporary = if options.temporary { " TEMPORARY" } else { "" };
        let reserve = match (options.reserve_wal, self.server_version().major() >= 15) {
            (false, _) => "",
            (true, true) => " (RESERVE_WAL)",
            (true, false) => " RESERVE_WAL",
        };
        let command = format!("CREATE_REPLICATION_SLOT \"{slot}\"{temporary} PHYSICAL{reserve}");
        self.single_row(&command).await?;
        Ok(())
    }

    /// `READ_REPLICATION_SLOT name` (15 and later): `None` when there is no such slot.
    pub async fn read_replication_slot(
        &mut self,
        slot: &SlotName,
    ) -> Result<Option<SlotPosition>, Error> {
        let version = self.server_version();
        if version.major() < 15 {
            return Err(Error::UnexpectedResult {
                command: "READ_REPLICATION_SLOT".into(),
                reason: format!(
                    "needs PostgreSQL 15 or later; the server is {}",
                    version.major()
                ),
            });
        }
        let command = format!("READ_REPLICATION_SLOT \"{slot}\"");
        let row = self.single_row(&command).await?;
        let slot_type: Option<String> = row.parse(0).map_err(|e| unexpected(&command, e))?;
        if slot_type.is_none() {
            return Ok(None);
        }
        let position = (|| {
            Ok::<_, RowError>(SlotPosition {
                restart_lsn: row.parse(1)?,
                restart_tli: row.parse::<u32>(2)?.map(TimelineId),
            })
        })();
        position.map(Some).map_err(|e| unexpected(&command, e))
    }

    /// `DROP_REPLICATION_SLOT "name" [WAIT]`.
    pub async fn drop_replication_slot(
        &mut self,
        slot: &SlotName,
        wait: bool,
    ) -> Result<(), Error> {
        let wait = if wait { " WAIT" } else { "" };
        self.simple_query(&format!("DROP_REPLICATION_SLOT \"{slot}\"{wait}"))
            .await?;
        Ok(())
    }

    /// Runs a command that answers with exactly one row.
    async fn single_row(&mut self, command: &str) -> Result<Row, Error> {
        let results = self.simple_query(command).await?;
        let mut rows = results
            .into_iter()
            .flat_map(|r: QueryResult| r.rows.into_iter());
        match (rows.next(), rows.next()) {
            (Some(row), None) => Ok(row),
            (None, _) => Err(unexpected(command, "no row")),
            (Some(_), Some(_)) => Err(unexpected(command, "more than one row")),
        }
    }
}

fn unexpected(command: &str, reason: impl fmt::Display) -> Error {
    Error::UnexpectedResult {
        command: command.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert!("walden".parse::<SlotName>().is_ok());
        assert!("a_1".parse::<SlotName>().is_ok());
        assert!("x".repeat(63).parse::<SlotName>().is_ok());
        for bad in ["", "Walden", "a-b", "a\"b", "a b", &"x".repeat(64)] {
            assert!(bad.parse::<SlotName>().is_err(), "{bad:?}");
        }
    }
}
