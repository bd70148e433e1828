//! `walden identify`: who a server is, over the replication protocol.

use std::fmt;

use crate::pg::{self, ConnConfig, Connection, SessionKind, SystemId};
use crate::wal::{Lsn, TimelineId, WalSegSize};

/// What `walden identify` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdentity {
    pub system_id: SystemId,
    pub timeline: TimelineId,
    /// The server's current WAL flush position (replay position on a standby).
    pub wal_position: Lsn,
    /// `server_version` as the server reports it, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub server_version: String,
    /// e.g. 150018.
    pub server_version_num: u32,
    pub wal_segment_size: WalSegSize,
    /// Whether the server is a standby (reported by 14 and later).
    pub in_recovery: Option<bool>,
    /// Whether the session was encrypted.
    pub tls: bool,
}

/// Connects with `source` (a libpq connection string) and asks the server who it is.
pub async fn identify(source: &str) -> Result<ServerIdentity, pg::Error> {
    let config = ConnConfig::parse(source)?;
    let mut conn = Connection::connect(&config, SessionKind::Physical).await?;
    let info = conn.identify_system().await?;
    let segment_size_text = conn.show("wal_segment_size").await?;
    let wal_segment_size: WalSegSize =
        segment_size_text
            .parse()
            .map_err(
                |e: crate::wal::WalSegSizeError| pg::Error::UnexpectedResult {
                    command: "SHOW wal_segment_size".into(),
                    reason: e.to_string(),
                },
            )?;
    let identity = ServerIdentity {
        system_id: info.system_id,
        timeline: info.timeline,
        wal_position: info.xlogpos,
        server_version: conn.parameter("server_version").unwrap_or("").to_string(),
        server_version_num: conn.server_version().0,
        wal_segment_size,
        in_recovery: conn.parameter("in_hot_standby").map(|v| v == "on"),
        tls: conn.is_tls(),
    };
    conn.close().await;
    Ok(identity)
}

impl ServerIdentity {
    /// The JSON form. The system identifier is a string: it does not fit a double, and JSON
    /// readers such as jq would round it.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "system_identifier": self.system_id.to_string(),
            "timeline": self.timeline.0,
            "wal_position": self.wal_position.to_string(),
            "server_version": self.server_version,
            "server_version_num": self.server_version_num,
            "wal_segment_size": self.wal_segment_size.bytes(),
            "in_recovery": self.in_recovery,
            "tls": self.tls,
        })
        .to_string()
    }
}

impl fmt::Display for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "system identifier: {}", self.system_id)?;
        writeln!(f, "timeline:          {}", self.timeline)?;
        writeln!(f, "WAL position:      {}", self.wal_position)?;
        writeln!(
            f,
            "server version:    {} ({})",
            self.server_version, self.server_version_num
        )?;
        writeln!(f, "wal_segment_size:  {}", self.wal_segment_size)?;
        if let Some(in_recovery) = self.in_recovery {
            writeln!(
                f,
                "role:              {}",
                if in_recovery { "standby" } else { "primary" }
            )?;
        }
        writeln!(
            f,
            "encrypted:         {}",
            if self.tls { "yes" } else { "no" }
        )
    }
}
