//! Base backups in a walden store, for tests: `walden backup` as a (background) process with
//! its stdout and stderr kept apart, a view of `STORE/<cluster>/backups/`, and the oracle —
//! extraction of a tar-format backup (`base.tar[.zst]`, `<oid>.tar[.zst]`, `backup_manifest`,
//! as walden and `pg_basebackup -Ft` write them) into a plain data directory with its
//! tablespaces linked, the backup's WAL range (from the manifest's `WAL-Ranges`) copied out of
//! the store into a flat directory, and the version's own `pg_verifybackup` over both.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walden::store::{ClusterName, ClusterReader, WalArchive};
use walden::wal::{
    Lsn, PageMagic, SegNo, TimelineId, VerifierConfig, WalSegSize, find_end_of_valid_wal,
    segment_file_name,
};

use super::receiver::Receiver;
use crate::harness::{Server, U_POSTGRES, U_TRUST, log_tail, postgres_cmd, run_ok, walden_cmd};

/// A running (or finished) `walden backup`; killed on drop.
#[derive(Debug)]
pub struct BackupRun {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    args: Vec<String>,
    status: Option<i32>,
}

/// How a `walden backup` ended.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// The exit code (`-1` when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command line and both outputs, for failure messages.
    pub context: String,
}

impl BackupOutcome {
    /// Panics with the context unless the backup exited 0.
    pub fn assert_ok(&self) -> &BackupOutcome {
        assert_eq!(self.code, 0, "walden backup failed\n{}", self.context);
        self
    }
}

impl BackupRun {
    /// Starts `walden backup --source <source> --store <store> <extra...>` with the default
    /// log level, without colours; stdout and stderr go to `<store>.backup-<n>.out` / `.err`.
    pub fn start(source: &str, store: &Path, extra: &[&str]) -> BackupRun {
        let n = (0..)
            .find(|n| !PathBuf::from(format!("{}.backup-{n}.out", store.display())).exists())
            .expect("a free log name");
        let stdout = PathBuf::from(format!("{}.backup-{n}.out", store.display()));
        let stderr = PathBuf::from(format!("{}.backup-{n}.err", store.display()));
        let mut args: Vec<String> = vec!["backup".into(), "--source".into(), source.into()];
        args.extend(["--store".into(), store.display().to_string()]);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let child = walden_cmd()
            .args(&args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create the stdout file"))
            .stderr(File::create(&stderr).expect("create the stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run walden: {e}"));
        BackupRun {
            child,
            stdout,
            stderr,
            args,
            status: None,
        }
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The command line and output tails, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "walden {} (exit {:?})\n--- stdout tail ---\n{}\n--- stderr tail ---\n{}",
            self.args.join(" "),
            self.status,
            log_tail(&self.stdout(), 20),
            log_tail(&self.stderr(), 40)
        )
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.poll().is_none()
    }

    fn poll(&mut self) -> Option<i32> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status.code().unwrap_or(-1));
        }
        self.status
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.status = Some(-1);
    }

    /// Waits up to `timeout` for it to exit; panics with its output on timeout.
    pub fn wait(&mut self, timeout: Duration) -> BackupOutcome {
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Some(code) = self.poll() {
                break code;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!(
                    "walden backup did not exit within {timeout:?}\n{}",
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        BackupOutcome {
            code,
            stdout: self.stdout(),
            stderr: self.stderr(),
            context: self.context(),
        }
    }
}

impl Drop for BackupRun {
    fn drop(&mut self) {
        if self.poll().is_none() {
            self.kill9();
        }
    }
}

/// Runs `walden backup` to completion (see [`BackupRun::start`]).
pub fn run_backup(source: &str, store: &Path, extra: &[&str], timeout: Duration) -> BackupOutcome {
    BackupRun::start(source, store, extra).wait(timeout)
}

/// `STORE/<cluster>/backups/`.
#[derive(Debug, Clone)]
pub struct BackupsView {
    dir: PathBuf,
}

impl BackupsView {
    pub fn new(store: &Path, cluster: &str) -> BackupsView {
        BackupsView {
            dir: store.join(cluster).join("backups"),
        }
    }

    /// The sorted names of the subdirectories.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The ids of complete backups: directories not ending in `.partial` (nor hidden).
    pub fn complete(&self) -> Vec<String> {
        self.names()
            .into_iter()
            .filter(|n| !n.ends_with(".partial") && !n.starts_with('.'))
            .collect()
    }

    /// The `.partial` directories (names with the suffix).
    pub fn partial(&self) -> Vec<String> {
        self.names()
            .into_iter()
            .filter(|n| n.ends_with(".partial"))
            .collect()
    }

    /// The directory of backup `id`.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The only complete backup's id; panics with the listing when there is not exactly one.
    pub fn only_complete(&self) -> String {
        let complete = self.complete();
        assert!(
            complete.len() == 1,
            "expected one complete backup\n{}",
            self.listing()
        );
        complete.into_iter().next().unwrap_or_default()
    }

    /// Everything under the directory (names and sizes), for failure messages.
    pub fn listing(&self) -> String {
        let mut out = format!("{}:", self.dir.display());
        for name in self.names() {
            out.push_str(&format!("\n  {name}/"));
            let mut files: Vec<(String, u64)> = std::fs::read_dir(self.dir.join(&name))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| {
                    let len = e.metadata().map_or(0, |m| m.len());
                    (e.file_name().to_string_lossy().into_owned(), len)
                })
                .collect();
            files.sort();
            for (f, len) in files {
                out.push_str(&format!("\n    {f} ({len} bytes)"));
            }
        }
        out
    }
}

/// A backup's `backup.json`, parsed.
pub fn backup_json(backup_dir: &Path) -> serde_json::Value {
    let path = backup_dir.join("backup.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

/// Whether `id` looks like a backup id: `YYYYMMDDTHHMMSSZ`, maybe with a `-N` suffix.
pub fn is_backup_id(id: &str) -> bool {
    let (stamp, suffix) = id.split_once('-').unwrap_or((id, "1"));
    let b = stamp.as_bytes();
    b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && !suffix.is_empty()
        && suffix.bytes().all(|c| c.is_ascii_digit())
}

/// One entry of a manifest's `WAL-Ranges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: TimelineId,
    pub start: Lsn,
    pub end: Lsn,
}

/// The `WAL-Ranges` of a `backup_manifest` file, read with serde_json (not walden's parser).
pub fn manifest_wal_ranges(manifest: &Path) -> Vec<WalRange> {
    let text = std::fs::read_to_string(manifest)
        .unwrap_or_else(|e| panic!("read {}: {e}", manifest.display()));
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", manifest.display()));
    let ranges = json["WAL-Ranges"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no WAL-Ranges", manifest.display()));
    ranges
        .iter()
        .map(|r| {
            let lsn = |key: &str| -> Lsn {
                r[key]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("bad {key} in WAL range {r}"))
            };
            let timeline = r["Timeline"]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or_else(|| panic!("bad Timeline in WAL range {r}"));
            WalRange {
                timeline: TimelineId(timeline),
                start: lsn("Start-LSN"),
                end: lsn("End-LSN"),
            }
        })
        .collect()
}

/// Writes the tar archive in `file` (decompressing a `.zst` one) into `dest` with GNU tar.
fn untar(file: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap_or_else(|e| panic!("create {}: {e}", dest.display()));
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    if name.as_deref().is_some_and(|n| n.ends_with(".zst")) {
        let mut tar = Command::new("tar")
            .arg("-xf")
            .arg("-")
            .arg("-C")
            .arg(dest)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run tar: {e}"));
        let input = File::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
        let mut stdin = tar.stdin.take().expect("tar's stdin");
        zstd::stream::copy_decode(input, &mut stdin)
            .unwrap_or_else(|e| panic!("decompress {}: {e}", file.display()));
        drop(stdin);
        let status = tar.wait().expect("wait for tar");
        assert!(status.success(), "tar -x of {} failed", file.display());
    } else {
        run_ok(Command::new("tar").arg("-xf").arg(file).arg("-C").arg(dest));
    }
}

/// Extracts the tar-format backup in `backup_dir` into `dest`: `base.tar[.zst]` into
/// `dest/data`, each `<oid>.tar[.zst]` into `dest/tablespaces/<oid>` with
/// `data/pg_tblspc/<oid>` a symlink to it (the `tablespace_map` stays; pg_verifybackup checks
/// it as a file of the manifest). Returns the data directory and the tablespace oids.
pub fn extract_backup(backup_dir: &Path, dest: &Path) -> (PathBuf, Vec<u32>) {
    let mut archives: Vec<(String, PathBuf)> = std::fs::read_dir(backup_dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", backup_dir.display()))
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| n.ends_with(".tar") || n.ends_with(".tar.zst"))
        .collect();
    archives.sort();
    let data = dest.join("data");
    let base = archives
        .iter()
        .find(|(n, _)| n == "base.tar" || n == "base.tar.zst")
        .unwrap_or_else(|| panic!("no base.tar[.zst] in {}", backup_dir.display()));
    untar(&base.1, &data);
    let mut oids = Vec::new();
    for (name, path) in &archives {
        let stem = name.trim_end_matches(".zst").trim_end_matches(".tar");
        if stem == "base" {
            continue;
        }
        let oid: u32 = stem
            .parse()
            .unwrap_or_else(|_| panic!("unexpected archive {name} in {}", backup_dir.display()));
        let ts = dest.join("tablespaces").join(stem);
        untar(path, &ts);
        let link = data.join("pg_tblspc").join(stem);
        let _ = std::fs::remove_file(&link);
        std::fs::create_dir_all(data.join("pg_tblspc")).expect("create pg_tblspc");
        std::os::unix::fs::symlink(&ts, &link)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
        oids.push(oid);
    }
    (data, oids)
}

/// The decompressed bytes of the stored file for (`tli`, `segno`): complete, `.zst` or a
/// `.partial` (padded with zeros to the segment size). `None` when the store has none.
fn stored_segment(
    reader: &ClusterReader,
    tli: TimelineId,
    segno: SegNo,
    size: WalSegSize,
) -> Option<Vec<u8>> {
    // The receiver may complete a .partial between the lookup and the open: look again.
    for _ in 0..3 {
        let seg = reader.find_segment(tli, segno).ok().flatten()?;
        let mut bytes = Vec::new();
        let read = reader
            .open_segment(&seg)
            .ok()
            .and_then(|mut r| r.read_to_end(&mut bytes).ok());
        if read.is_some() {
            if seg.name.partial {
                bytes.resize(usize::try_from(size.bytes()).unwrap_or(usize::MAX), 0);
            }
            return Some(bytes);
        }
    }
    None
}

/// Copies the segments holding `range` (on its timeline) out of `STORE/<cluster>` into `dest`
/// under their plain names, decompressed; a `.partial` one is padded to the segment size.
/// Panics naming the first segment the store lacks. Returns the names.
pub fn collect_wal(store: &Path, cluster: &str, range: &WalRange, dest: &Path) -> Vec<String> {
    let name = ClusterName::new(cluster).expect("a valid cluster name");
    let reader = ClusterReader::open(store, &name)
        .unwrap_or_else(|e| panic!("open the store cluster {cluster}: {e}"));
    let size = reader.info().wal_segment_size;
    std::fs::create_dir_all(dest).unwrap_or_else(|e| panic!("create {}: {e}", dest.display()));
    let first = range.start.segno(size);
    let last = Lsn(range.end.0.saturating_sub(1).max(range.start.0)).segno(size);
    let mut names = Vec::new();
    let mut segno = first;
    while segno <= last {
        let file = segment_file_name(range.timeline, segno, size);
        let bytes = stored_segment(&reader, range.timeline, segno, size)
            .unwrap_or_else(|| panic!("the store lacks {file} for the WAL range {range:?}"));
        std::fs::write(dest.join(&file), bytes).expect("write a WAL segment");
        names.push(file);
        segno = segno.next();
    }
    names
}

/// Whether the store holds valid WAL up to `range.end` on the range's timeline: the segment
/// of the range's last byte is complete, or is a `.partial` with valid records up to there.
pub fn store_has_wal(store: &Path, cluster: &str, range: &WalRange, major: u32) -> bool {
    let Ok(name) = ClusterName::new(cluster) else {
        return false;
    };
    let Ok(reader) = ClusterReader::open(store, &name) else {
        return false;
    };
    let size = reader.info().wal_segment_size;
    let last = Lsn(range.end.0.saturating_sub(1)).segno(size);
    let Some(seg) = reader.find_segment(range.timeline, last).ok().flatten() else {
        return false;
    };
    if !seg.name.partial {
        return true;
    }
    let Some(bytes) = stored_segment(&reader, range.timeline, last, size) else {
        return false;
    };
    let Some(magic) = PageMagic::for_major(major) else {
        return false;
    };
    let config = VerifierConfig {
        seg_size: size,
        magic,
        tli: range.timeline,
        system_identifier: None,
    };
    matches!(find_end_of_valid_wal(&bytes, config, last), Ok(Some(end)) if end >= range.end)
}

/// Runs `pg_verifybackup` from `bin_dir` on the extracted `data_dir` with the manifest
/// `manifest` and the WAL in `wal_dir` (`None`: the data directory's own `pg_wal`); its
/// output on success, its output as the error otherwise.
pub fn pg_verifybackup(
    bin_dir: &Path,
    data_dir: &Path,
    manifest: &Path,
    wal_dir: Option<&Path>,
) -> Result<String, String> {
    let mut cmd = Command::new(bin_dir.join("pg_verifybackup"));
    cmd.arg("-m").arg(manifest);
    if let Some(wal) = wal_dir {
        cmd.arg("-w").arg(wal);
    }
    cmd.arg(data_dir);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run pg_verifybackup: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd:?} failed ({}):\n{text}", out.status))
    }
}

/// The whole oracle on a stored tar-format backup: extracts `backup_dir` into `scratch`,
/// copies its WAL range out of `STORE/<cluster>` (when `wal_from` is `Some((store,
/// cluster))`; otherwise the WAL must be in the archive's `pg_wal`), and runs the version's
/// `pg_verifybackup`. Returns pg_verifybackup's verdict and the extracted data directory.
pub fn verify_stored_backup(
    bin_dir: &Path,
    backup_dir: &Path,
    wal_from: Option<(&Path, &str)>,
    scratch: &Path,
) -> (Result<String, String>, PathBuf) {
    let _ = std::fs::remove_dir_all(scratch);
    let (data, _) = extract_backup(backup_dir, scratch);
    let manifest = backup_dir.join("backup_manifest");
    let wal_dir = wal_from.map(|(store, cluster)| {
        let dir = scratch.join("wal");
        for range in manifest_wal_ranges(&manifest) {
            collect_wal(store, cluster, &range, &dir);
        }
        dir
    });
    (
        pg_verifybackup(bin_dir, &data, &manifest, wal_dir.as_deref()),
        data,
    )
}

/// What [`populate`] created.
#[derive(Debug, Clone)]
pub struct Populated {
    /// The user tablespace `ts1`.
    pub tablespace_oid: u32,
    /// Its location (`<server dir>/ts1`).
    pub tablespace_path: String,
}

/// Makes a small cluster worth backing up: databases `db1` and `db2` beside `postgres`, two
/// tables with rows and an index in each, and tablespace `ts1` in the server's directory
/// holding one table of `postgres` and one of `db1`.
pub fn populate(srv: &Server) -> Populated {
    let dir = srv.dir().join("ts1");
    run_ok(postgres_cmd("mkdir").arg(&dir));
    let path = dir.display().to_string();
    srv.psql(&format!(
        "CREATE DATABASE db1;\nCREATE DATABASE db2;\nCREATE TABLESPACE ts1 LOCATION '{path}';"
    ));
    for (i, db) in ["postgres", "db1", "db2"].into_iter().enumerate() {
        let conninfo = format!(
            "host={} port={} user={U_POSTGRES} dbname={db}",
            srv.socket_dir().display(),
            srv.port()
        );
        let ts_table = if i < 2 {
            "CREATE TABLE t_ts (id int, v text) TABLESPACE ts1;\n\
             INSERT INTO t_ts SELECT g, md5(g::text) FROM generate_series(1, 2000) g;"
        } else {
            ""
        };
        let sql = format!(
            "CREATE TABLE t_a (id int PRIMARY KEY, v text);\n\
             INSERT INTO t_a SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 3000) g;\n\
             CREATE TABLE t_b (id bigint, at timestamptz, n numeric);\n\
             INSERT INTO t_b SELECT g, now(), g * 1.5 FROM generate_series(1, 1500) g;\n\
             {ts_table}"
        );
        srv.psql_conn(&conninfo, &sql)
            .unwrap_or_else(|e| panic!("populate {db}: {e}"));
    }
    let oid = srv
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'")
        .parse()
        .expect("a tablespace oid");
    Populated {
        tablespace_oid: oid,
        tablespace_path: path,
    }
}

/// Starts `walden receive --slot s --create-slot` from `srv` (as [`U_TRUST`]) into `store`
/// and waits until it streams, so that a backup taken next finds its WAL in the store.
pub fn start_receiver(srv: &Server, store: &Path) -> Receiver {
    let mut w = Receiver::start(
        &srv.conninfo(U_TRUST),
        store,
        &["--slot", "s", "--create-slot"],
    );
    let query = "select count(*) from pg_stat_replication \
                 where application_name = 'walden' and state = 'streaming'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while srv.psql(query) == "0" {
        w.assert_running("while waiting for it to stream");
        assert!(
            Instant::now() < deadline,
            "walden receive did not stream within 30 s\n{}\n{}",
            w.context(),
            srv.context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    w
}
