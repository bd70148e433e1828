//! `walden run` as a background process for tests: a configuration file written from
//! cluster specs, the daemon's log in a file (quoted in failure messages), signals, its
//! `status.json` files, and `walden status` / `walden verify` runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{log_tail, send_signal, walden_cmd};

/// One `[cluster.NAME]` table: a name, a connection string and extra `key = value` lines.
pub struct ClusterSpec {
    pub name: String,
    pub source: String,
    pub extra: Vec<String>,
}

impl ClusterSpec {
    pub fn new(name: &str, source: String, extra: &[&str]) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            source,
            extra: extra.iter().map(|l| (*l).to_owned()).collect(),
        }
    }
}

/// Writes a configuration file: `store`, the `top` lines (before any table), and the clusters.
pub fn write_config(path: &Path, store: &Path, top: &[&str], clusters: &[ClusterSpec]) {
    let mut text = format!("store = \"{}\"\n", store.display());
    for line in top {
        text += line;
        text += "\n";
    }
    for c in clusters {
        text += &format!("[cluster.{}]\nsource = \"{}\"\n", c.name, c.source);
        for line in &c.extra {
            text += line;
            text += "\n";
        }
    }
    std::fs::write(path, text).expect("write the configuration file");
}

/// A running (or finished) `walden run`; killed on drop.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    pub store: PathBuf,
    status: Option<i32>,
}

impl Daemon {
    /// Starts `walden run --config <config>`, logging at debug level to `<config>.log`.
    pub fn start(config: &Path, store: &Path) -> Daemon {
        let log = config.with_extension("log");
        let out = std::fs::File::create(&log).expect("create the daemon log");
        let err = out.try_clone().expect("clone the log handle");
        let child = walden_cmd()
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,walden=debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run walden run: {e}"));
        Daemon {
            child,
            log,
            store: store.to_path_buf(),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log tail and every status.json, for failure messages.
    pub fn context(&self) -> String {
        let mut out = format!(
            "walden run (exit {:?})\n--- log tail ---\n{}\n",
            self.status,
            log_tail(&self.output(), 60)
        );
        if let Ok(list) = std::fs::read_dir(&self.store) {
            for e in list.flatten() {
                let status = e.path().join("status.json");
                if let Ok(text) = std::fs::read_to_string(&status) {
                    out += &format!("--- {} ---\n{text}\n", status.display());
                }
            }
        }
        out
    }

    pub fn is_running(&mut self) -> bool {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status.code().unwrap_or(-1));
        }
        self.status.is_none()
    }

    pub fn signal(&mut self, signal: &str) {
        assert!(self.is_running(), "walden run exited\n{}", self.context());
        send_signal(self.pid(), signal);
    }

    /// Waits up to `timeout` for it to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "walden run did not exit within {timeout:?}\n{}",
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.status.unwrap_or(-1)
    }

    /// The cluster's status.json (`Value::Null` while there is none).
    pub fn status_file(&self, cluster: &str) -> Value {
        read_status_file(&self.store, cluster)
    }

    /// Waits until `cond` holds for the cluster's status.json.
    pub fn wait_status(
        &mut self,
        cluster: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.status_file(cluster);
            if cond(&v) {
                return v;
            }
            assert!(
                self.is_running(),
                "walden run exited while waiting for {cluster}: {what}\n{}",
                self.context()
            );
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {cluster}: {what}\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the cluster's receiver is streaming.
    pub fn wait_streaming(&mut self, cluster: &str, timeout: Duration) -> Value {
        self.wait_status(cluster, "receiver streaming", timeout, |v| {
            v["receiver"]["state"] == "streaming"
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `STORE/<cluster>/status.json`, or `Value::Null`.
pub fn read_status_file(store: &Path, cluster: &str) -> Value {
    std::fs::read(store.join(cluster).join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// Runs `walden status <args> --json`: its exit code and the parsed report.
pub fn walden_status(args: &[&str]) -> (i32, Value) {
    let out = walden_cmd()
        .arg("status")
        .args(args)
        .arg("--json")
        .output()
        .expect("run walden status");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "walden status printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// The report of `cluster` in a `walden status --json` output.
pub fn cluster_report<'a>(report: &'a Value, cluster: &str) -> &'a Value {
    report["clusters"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["cluster"] == cluster))
        .unwrap_or_else(|| panic!("no cluster {cluster} in {report:#}"))
}

/// The ids of the complete backups of `cluster`, oldest first.
pub fn backup_ids(store: &Path, cluster: &str) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(store.join(cluster).join("backups"))
        .map(|list| {
            list.flatten()
                .filter(|e| e.path().join("backup.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.contains('.'))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// `walden verify --store <store> --cluster <cluster>` must exit 0.
pub fn assert_verifies(store: &Path, cluster: &str) {
    let out = walden_cmd()
        .args(["verify", "--store"])
        .arg(store)
        .args(["--cluster", cluster])
        .output()
        .expect("run walden verify");
    assert!(
        out.status.success(),
        "walden verify of {cluster} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An LSN in a JSON value (`"0/16B3748"`), as a number.
pub fn lsn(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| s.parse::<walden::wal::Lsn>().ok())
        .map(|l| l.0)
}
