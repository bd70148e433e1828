//! Throw-away PostgreSQL servers: one `initdb` template per (version, WAL segment size, system
//! number) per test process, copied for each server (so servers of one template share a system
//! identifier); the postmaster runs as a child of the test process (through
//! `runuser`) so it is always reaped, and it is stopped on drop even when the test panics.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv6Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{
    PW_MD5, PW_NOHBA, PW_PASSWORD, PW_SCRAM, Pg, TlsFiles, U_CERT, U_MD5, U_NOHBA, U_NOREPL,
    U_PASSWORD, U_POSTGRES, U_SCRAM, U_TRUST, is_root, postgres_cmd, postgres_direct_cmd, run_ok,
};

/// How long a postmaster may take to become ready or to shut down.
const PG_TIMEOUT: Duration = Duration::from_secs(60);

/// The file (in the data directory) holding the per-server settings; `postgresql.conf`
/// includes it last, so its settings win.
const TEST_CONF: &str = "walden-test.conf";

/// Per-server choices. `ServerOptions::default()` is a plain server with 16 MB segments.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// `initdb --wal-segsize` in MB (a power of two, 1..=1024); `None` for the default 16.
    pub wal_segsize_mb: Option<u32>,
    /// Extra `postgresql.conf` lines (e.g. `"wal_keep_size = '64MB'"`), applied after ours.
    pub extra_conf: Vec<String>,
    /// Which `initdb` the server is a copy of: servers with the same version, segment size
    /// and `system` share one template and so one system identifier; another `system` value
    /// gets its own `initdb` (a different system identifier). 0 by default.
    pub system: u32,
}

impl ServerOptions {
    /// Sets the WAL segment size in MB.
    pub fn wal_segsize_mb(mut self, mb: u32) -> Self {
        self.wal_segsize_mb = Some(mb);
        self
    }

    /// Copies a separate `initdb` numbered `n`, for a system identifier that differs from
    /// the default servers' (see [`ServerOptions::system`]).
    pub fn system(mut self, n: u32) -> Self {
        self.system = n;
        self
    }

    /// Adds one `postgresql.conf` line.
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.extra_conf.push(line.into());
        self
    }
}

/// A running (or stopped) test server in its own directory `dir()`:
/// `data/` (data directory), `s/` (Unix socket directory) and `server.log`.
#[derive(Debug)]
pub struct Server {
    pg: Pg,
    dir: PathBuf,
    port: u16,
    extra_conf: Vec<String>,
    postmaster: Option<Postmaster>,
    /// False for templates, whose directory outlives the `Server` used to build them.
    remove_dir: bool,
}

#[derive(Debug)]
struct Postmaster {
    /// `runuser` (whose child is the postmaster) when root, the postmaster itself otherwise.
    child: Child,
    pid: u32,
}

impl Pg {
    /// A started server with default options.
    pub fn start(&self) -> Server {
        self.start_with(ServerOptions::default())
    }

    /// A started server with `opts`.
    pub fn start_with(&self, opts: ServerOptions) -> Server {
        let mut srv = self.create(opts);
        srv.start();
        srv
    }

    /// A configured but not yet started server (edit its data directory, then `start()`).
    pub fn create(&self, opts: ServerOptions) -> Server {
        let template = template(self, opts.wal_segsize_mb, opts.system);
        let dir = new_test_dir();
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(template)
                .arg(dir.join("data")),
        );
        Server::configure(self.clone(), dir, opts.extra_conf)
    }

    /// A not yet started server on a copy of `data_dir` (e.g. one restored by walden-restore):
    /// the copy is owned by `postgres`, and gets our port/socket settings and `extra_conf`.
    pub fn adopt(&self, data_dir: &Path, extra_conf: Vec<String>) -> Server {
        let dir = new_test_dir();
        let data = dir.join("data");
        run_ok(Command::new("cp").arg("-a").arg(data_dir).arg(&data));
        run_ok(Command::new("chmod").arg("0700").arg(&data));
        chown_postgres(&data);
        let conf = data.join("postgresql.conf");
        let text = std::fs::read_to_string(&conf).unwrap_or_default();
        if !text.contains(TEST_CONF) {
            append(&conf, &format!("include_if_exists = '{TEST_CONF}'\n"));
        }
        Server::configure(self.clone(), dir, extra_conf)
    }
}

impl Pg {
    /// A new empty test directory (owned by `postgres`) to restore a data directory into, as
    /// `<dir>/data`; then [`Pg::restored`] with [`TestDir::keep`]. Removed when dropped
    /// unless kept.
    pub fn new_server_dir(&self) -> TestDir {
        TestDir(Some(new_test_dir()))
    }

    /// A not yet started server on the data directory a restore left at `<dir>/data`, used in
    /// place: not copied and not chowned (its ownership and modes are the restore's), only
    /// given our port/socket settings and `extra_conf`.
    pub fn restored(&self, dir: PathBuf, extra_conf: Vec<String>) -> Server {
        let conf = dir.join("data").join("postgresql.conf");
        let text = std::fs::read_to_string(&conf).unwrap_or_default();
        if !text.contains(TEST_CONF) {
            append(&conf, &format!("include_if_exists = '{TEST_CONF}'\n"));
        }
        Server::assemble(self.clone(), dir, extra_conf, false)
    }
}

impl Server {
    pub(super) fn configure(pg: Pg, dir: PathBuf, extra_conf: Vec<String>) -> Server {
        Server::assemble(pg, dir, extra_conf, true)
    }

    /// A server in `dir` (whose `data/` is ready): the socket directory and log file made
    /// and given to `postgres` (with everything in `dir` when `chown_all`), a port picked,
    /// and our settings written.
    fn assemble(pg: Pg, dir: PathBuf, extra_conf: Vec<String>, chown_all: bool) -> Server {
        let sock = dir.join("s");
        std::fs::create_dir_all(&sock).expect("create the socket directory");
        let log = dir.join("server.log");
        std::fs::write(&log, "").expect("create server.log");
        if chown_all {
            chown_postgres(&dir);
        } else {
            chown_postgres(&sock);
            chown_postgres(&log);
        }
        let srv = Server {
            pg,
            dir,
            port: pick_port(),
            extra_conf,
            postmaster: None,
            remove_dir: true,
        };
        srv.write_test_conf();
        srv
    }

    fn write_test_conf(&self) {
        let mut conf = format!(
            "# written by the proto-tests harness for this server\n\
             listen_addresses = 'localhost'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n",
            self.port,
            self.socket_dir().display()
        );
        for line in &self.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let path = self.data_dir().join(TEST_CONF);
        std::fs::write(&path, conf).expect("write walden-test.conf");
        chown_postgres(&path);
    }

    /// The install this server runs.
    pub fn pg(&self) -> &Pg {
        &self.pg
    }

    /// Major version (15, 16, 18).
    pub fn major(&self) -> u32 {
        self.pg.major
    }

    /// The path of this version's `tool` (e.g. `"pg_receivewal"`).
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.pg.bin(tool)
    }

    /// TCP port (on 127.0.0.1 and ::1) and Unix socket port number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The per-test directory (kept after a panic; scratch space for the test too).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The Unix socket directory (`host=` value for socket connections).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("s")
    }

    /// The TLS files when this build has TLS (then the server runs with `ssl=on`).
    pub fn tls_files(&self) -> Option<&'static TlsFiles> {
        self.pg.tls_files()
    }

    /// A libpq-style connection string over TCP:
    /// `host=127.0.0.1 port=<port> user=<user> dbname=postgres` (no password, no sslmode).
    pub fn conninfo(&self, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres",
            self.port
        )
    }

    /// The same over the Unix socket: `host=<socket_dir> port=<port> user=<user> dbname=postgres`.
    pub fn conninfo_socket(&self, user: &str) -> String {
        format!(
            "host={} port={} user={user} dbname=postgres",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Runs `sql` (one or more statements) as the superuser over the Unix socket with this
    /// version's psql (`-XAtq`, stop on the first error) and returns its output without the
    /// final newline. Panics with psql's stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| {
            panic!(
                "psql failed on PostgreSQL {}: {e}\nSQL: {sql}",
                self.major()
            )
        })
    }

    /// Like [`Server::psql`], returning psql's stderr as the error.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.psql_conn(&self.conninfo_socket(U_POSTGRES), sql)
    }

    /// Like [`Server::try_psql`], but gives up after `timeout`: psql is killed and the error
    /// says so. The backend may still be running the statement (e.g. a commit waiting for a
    /// synchronous standby) until the server notices or is stopped.
    pub fn psql_timeout(&self, sql: &str, timeout: Duration) -> Result<String, String> {
        let mut child = postgres_direct_cmd(self.bin("psql"))
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-f", "-", "-d"])
            .arg(self.conninfo_socket(U_POSTGRES))
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(sql.as_bytes());
        }
        let deadline = Instant::now() + timeout;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("psql did not finish within {timeout:?}: {sql}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().expect("wait for psql");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            Ok(stdout.strip_suffix('\n').unwrap_or(&stdout).to_owned())
        } else {
            Err(format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Runs `sql` with this version's psql (as the `postgres` OS user) on any libpq
    /// connection string, e.g. with `password=`, `sslmode=`, `sslrootcert=`.
    pub fn psql_conn(&self, conninfo: &str, sql: &str) -> Result<String, String> {
        let mut child = postgres_cmd(self.bin("psql"))
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-f", "-", "-d", conninfo])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            // A failed write shows up as psql's own error below.
            let _ = stdin.write_all(sql.as_bytes());
        }
        let out = child.wait_with_output().expect("wait for psql");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            Ok(stdout.strip_suffix('\n').unwrap_or(&stdout).to_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                stdout
            ))
        }
    }

    /// Whether the postmaster was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.postmaster.is_some()
    }

    /// Starts the server (again); panics with the log tail when it does not come up.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// Starts the server and waits until it accepts connections (or is a standby); on failure
    /// returns the log tail. Retries on a new port when the port was taken meanwhile.
    pub fn try_start(&mut self) -> Result<(), String> {
        assert!(self.postmaster.is_none(), "server already running");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let log_start = std::fs::metadata(self.log_path()).map_or(0, |m| m.len());
            match self.spawn_and_wait() {
                Ok(pm) => {
                    self.postmaster = Some(pm);
                    return Ok(());
                }
                Err(why) => {
                    let log = self.log();
                    let new = log
                        .get(usize::try_from(log_start).unwrap_or(0)..)
                        .unwrap_or("");
                    if attempt < 5 && new.contains("Address already in use") {
                        self.port = pick_port();
                        self.write_test_conf();
                    } else if attempt < 5 && new.contains("shared memory block is still in use") {
                        std::thread::sleep(Duration::from_millis(500));
                    } else {
                        return Err(format!(
                            "PostgreSQL {} in {} did not start: {why}\n--- server log tail ---\n{}",
                            self.major(),
                            self.dir.display(),
                            tail(&log, 30)
                        ));
                    }
                }
            }
        }
    }

    fn spawn_and_wait(&self) -> Result<Postmaster, String> {
        let log = OpenOptions::new()
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open server.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut child = postgres_cmd(self.bin("postgres"))
            .arg("-D")
            .arg(self.data_dir())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot run postgres: {e}"))?;
        let deadline = Instant::now() + PG_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("postgres exited ({status})"));
            }
            if let Some(pid) = self.ready_postmaster(child.id()) {
                return Ok(Postmaster { child, pid });
            }
            if Instant::now() > deadline {
                kill(child.id(), "KILL");
                let _ = child.wait();
                return Err("not ready within 60 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The postmaster pid once `postmaster.pid` says ready/standby and belongs to our child.
    fn ready_postmaster(&self, child: u32) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        let pid: u32 = lines.first()?.trim().parse().ok()?;
        let status = lines.get(7)?.trim();
        let ours = pid == child || parent_of(pid) == Some(child);
        (ours && (status == "ready" || status == "standby")).then_some(pid)
    }

    /// Fast shutdown (SIGINT), waiting for it to finish.
    pub fn stop(&mut self) {
        if let Some(pm) = self.postmaster.take() {
            pm.shutdown("INT", PG_TIMEOUT)
                .unwrap_or_else(|e| panic!("stopping PostgreSQL {}: {e}", self.major()));
        }
    }

    /// Fast stop, then start.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Reloads the configuration (SIGHUP), e.g. after [`Server::set_conf`].
    pub fn reload(&self) {
        let pm = self
            .postmaster
            .as_ref()
            .expect("reload: server not running");
        kill(pm.pid, "HUP");
    }

    /// Adds `postgresql.conf` lines for this server; they apply on the next start or reload.
    pub fn set_conf(&mut self, lines: &[&str]) {
        self.extra_conf
            .extend(lines.iter().map(|l| (*l).to_owned()));
        self.write_test_conf();
    }

    /// Kills the postmaster with SIGKILL (a crash) and waits until it and its backends are gone,
    /// so the server can be started again (crash recovery).
    pub fn kill9(&mut self) {
        let mut pm = self.postmaster.take().expect("kill9: server not running");
        kill(pm.pid, "KILL");
        let _ = pm.child.wait();
        wait_for_orphans(&self.data_dir());
    }

    /// The server log so far (all starts).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pm) = self.postmaster.take() {
            let pid = pm.pid;
            if let Err(e) = pm.shutdown("QUIT", Duration::from_secs(20)) {
                eprintln!("harness: immediate stop of postmaster {pid} failed: {e}");
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "harness: PostgreSQL {} test directory kept: {}\n--- server log tail ---\n{}",
                self.major(),
                self.dir.display(),
                tail(&self.log(), 30)
            );
        } else if self.remove_dir
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            eprintln!("harness: cannot remove {}: {e}", self.dir.display());
        }
    }
}

impl Postmaster {
    /// Sends `signal` (INT fast, QUIT immediate) and waits; escalates to SIGKILL on timeout.
    fn shutdown(mut self, signal: &str, timeout: Duration) -> Result<(), String> {
        kill(self.pid, signal);
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    kill(self.pid, "KILL");
                    let _ = self.child.wait();
                    return Err(format!(
                        "did not stop within {timeout:?} after SIG{signal}; killed"
                    ));
                }
                Err(e) => return Err(format!("waiting for the postmaster: {e}")),
            }
        }
    }
}

/// Sends a signal with the shell's `kill` (root may signal the postgres user's processes).
pub(super) fn kill(pid: u32, signal: &str) {
    let _ = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\" 2>/dev/null", "sh", signal])
        .arg(pid.to_string())
        .status();
}

/// The parent pid of `pid` from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Waits (up to 10 s) until no live process has `data_dir` as its working directory: the
/// backends of a killed postmaster exit on their own but may still hold its shared memory.
fn wait_for_orphans(data_dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && processes_in(data_dir) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn processes_in(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    // Zombies have no working directory, so only live processes match.
    entries
        .flatten()
        .any(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd == dir))
}

pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// A free TCP port on 127.0.0.1 (and ::1 where there is IPv6) not yet handed out here.
fn pick_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let v6_free = match TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::AddrInUse,
        };
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if v6_free && given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A test directory that is removed when dropped, or kept for inspection when the test
/// fails (as a server's directory is).
pub struct TestDir(Option<PathBuf>);

impl TestDir {
    pub fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path().join(name)
    }

    /// Hands the directory over to whoever removes it (the server of [`Pg::restored`]).
    pub fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("harness: test directory kept: {}", dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("harness: cannot remove {}: {e}", dir.display());
        }
    }
}

/// `<base>/walden-<pid>-<seq>-<test name>`, created and owned by `postgres`.
pub(super) fn new_test_dir() -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    process_dir(); // clears leftovers of dead test processes first
    let name: String = std::thread::current()
        .name()
        .unwrap_or("test")
        .replace("::", "-")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let name = &name[name.len().saturating_sub(50)..];
    let dir = base_dir().join(format!(
        "walden-{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    // The socket path `<dir>/s/.s.PGSQL.<port>` must fit in sun_path (107 bytes).
    assert!(
        dir.as_os_str().len() + 17 < 107,
        "test directory {} too long for a Unix socket path; use a shorter WALDEN_TEST_TMPDIR",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    run_ok(Command::new("chmod").arg("0755").arg(&dir));
    chown_postgres(&dir);
    dir
}

/// The directory holding every test directory: `$WALDEN_TEST_TMPDIR`, or `/tmp` by default.
fn base_dir() -> PathBuf {
    std::env::var_os("WALDEN_TEST_TMPDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

/// `<base>/walden-tpl-<pid>`: this process's templates and TLS files (owned by `postgres`).
/// Created once, after removing the template dirs of dead test processes and killing any
/// postmaster a dead test process left running.
pub(super) fn process_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        clean_dead_processes();
        let base = base_dir();
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
        let dir = base.join(format!("walden-tpl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        run_ok(Command::new("chmod").arg("0755").arg(&dir));
        chown_postgres(&dir);
        dir
    })
}

fn clean_dead_processes() {
    let Ok(entries) = std::fs::read_dir(base_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("walden-") else {
            continue;
        };
        let (template, rest) = match rest.strip_prefix("tpl-") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        let data_dirs = [dir.join("data")].into_iter().chain(
            std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("data")),
        );
        for data in data_dirs {
            kill_leftover_postmaster(&data);
        }
        if template {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn kill_leftover_postmaster(data: &Path) {
    let Ok(text) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return;
    };
    let Some(Ok(pid)) = text.lines().next().map(|l| l.trim().parse::<u32>()) else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    if comm.trim() == "postgres" && cwd.as_deref() == Some(data) {
        kill(pid, "KILL");
        wait_for_orphans(data);
    }
}

/// Gives `path` (recursively) to the `postgres` user when we are root.
pub(super) fn chown_postgres(path: &Path) {
    if is_root() {
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(path),
        );
    }
}

/// The data directory of the template for (version, WAL segment size), made on first use.
fn template(pg: &Pg, wal_segsize_mb: Option<u32>, system: u32) -> PathBuf {
    type Templates = HashMap<(u32, Option<u32>, u32), Arc<OnceLock<PathBuf>>>;
    static TEMPLATES: Mutex<Option<Templates>> = Mutex::new(None);
    let cell = {
        let mut map = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            map.get_or_insert_with(HashMap::new)
                .entry((pg.major, wal_segsize_mb, system))
                .or_default(),
        )
    };
    cell.get_or_init(|| make_template(pg, wal_segsize_mb, system))
        .clone()
}

fn make_template(pg: &Pg, wal_segsize_mb: Option<u32>, system: u32) -> PathBuf {
    let seg = wal_segsize_mb.map_or("default".to_owned(), |mb| format!("{mb}mb"));
    let variant = if system == 0 {
        String::new()
    } else {
        format!("-s{system}")
    };
    let dir = process_dir().join(format!("pg{}-{seg}{variant}", pg.major));
    let data = dir.join("data");
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    chown_postgres(&dir);
    let mut initdb = postgres_cmd(pg.bin("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .current_dir(&dir);
    if let Some(mb) = wal_segsize_mb {
        initdb.arg(format!("--wal-segsize={mb}"));
    }
    run_ok(&mut initdb);

    let tls = pg.tls_files();
    append(&data.join("postgresql.conf"), &base_conf(tls));
    std::fs::write(data.join("pg_hba.conf"), hba_conf(tls.is_some())).expect("write pg_hba.conf");
    // Template-only settings: no TCP, socket in the template directory.
    let sock = dir.join("s");
    std::fs::create_dir(&sock).expect("create the template socket directory");
    std::fs::write(
        data.join(TEST_CONF),
        format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\n",
            sock.display()
        ),
    )
    .expect("write the template walden-test.conf");
    File::create(dir.join("server.log")).expect("create the template server.log");
    chown_postgres(&dir);

    let mut srv = Server {
        pg: pg.clone(),
        dir: dir.clone(),
        port: 5432,
        extra_conf: Vec::new(),
        postmaster: None,
        remove_dir: false,
    };
    srv.start();
    srv.psql(&roles_sql());
    srv.stop();
    drop(srv);
    std::fs::remove_file(data.join(TEST_CONF)).expect("remove the template walden-test.conf");
    data
}

fn base_conf(tls: Option<&TlsFiles>) -> String {
    let mut conf = String::from(
        "\n# proto-tests harness\n\
         listen_addresses = 'localhost'\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         fsync = off\n\
         shared_buffers = 32MB\n\
         max_connections = 40\n\
         password_encryption = 'scram-sha-256'\n\
         log_connections = on\n\
         log_replication_commands = on\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n",
    );
    if let Some(t) = tls {
        let _ = write!(
            conf,
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
            t.server_cert.display(),
            t.server_key.display(),
            t.ca_cert.display()
        );
    }
    let _ = writeln!(conf, "include_if_exists = '{TEST_CONF}'");
    conf
}

fn hba_conf(tls: bool) -> String {
    let mut hba = String::from("# proto-tests harness\n# TYPE DATABASE USER ADDRESS METHOD\n");
    let users = [
        (U_POSTGRES, "trust"),
        (U_TRUST, "trust"),
        (U_PASSWORD, "password"),
        (U_MD5, "md5"),
        (U_SCRAM, "scram-sha-256"),
        (U_NOREPL, "trust"),
    ];
    for db in ["replication", "all"] {
        for (user, method) in users {
            let _ = writeln!(hba, "local {db} {user} {method}");
            let _ = writeln!(hba, "host {db} {user} 127.0.0.1/32 {method}");
            let _ = writeln!(hba, "host {db} {user} ::1/128 {method}");
        }
        if tls {
            let _ = writeln!(hba, "hostssl {db} {U_CERT} 127.0.0.1/32 cert");
            let _ = writeln!(hba, "hostssl {db} {U_CERT} ::1/128 cert");
        }
    }
    hba
}

fn roles_sql() -> String {
    format!(
        "CREATE ROLE {U_TRUST} LOGIN REPLICATION;\n\
         CREATE ROLE {U_PASSWORD} LOGIN REPLICATION PASSWORD '{PW_PASSWORD}';\n\
         SET password_encryption = 'md5';\n\
         CREATE ROLE {U_MD5} LOGIN REPLICATION PASSWORD '{PW_MD5}';\n\
         RESET password_encryption;\n\
         CREATE ROLE {U_SCRAM} LOGIN REPLICATION PASSWORD '{PW_SCRAM}';\n\
         CREATE ROLE {U_CERT} LOGIN REPLICATION;\n\
         CREATE ROLE {U_NOREPL} LOGIN;\n\
         CREATE ROLE {U_NOHBA} LOGIN REPLICATION PASSWORD '{PW_NOHBA}';\n"
    )
}
