//! `walden receive` as a background process for tests: its stderr (logs and the one-line
//! error) goes to a file so that failure messages can quote it; it can be killed (SIGKILL),
//! interrupted (SIGINT) or waited for with an expected exit code.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{log_tail, send_signal, walden_cmd};

/// A running (or finished) `walden receive`; killed on drop.
#[derive(Debug)]
pub struct Receiver {
    child: Child,
    log: PathBuf,
    args: Vec<String>,
    status: Option<i32>,
}

impl Receiver {
    /// Starts `walden receive --source <source> --store <store> <extra...>`, logging at debug
    /// level without colours to `<store>.walden-<n>.log` (one file per start).
    pub fn start(source: &str, store: &Path, extra: &[&str]) -> Receiver {
        let log = (0..)
            .map(|n| PathBuf::from(format!("{}.walden-{n}.log", store.display())))
            .find(|p| !p.exists())
            .expect("a free log name");
        let out = std::fs::File::create(&log).expect("create the walden log");
        let err = out.try_clone().expect("clone the walden log handle");
        let mut args: Vec<String> = vec!["receive".into(), "--source".into(), source.into()];
        args.extend(["--store".into(), store.display().to_string()]);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let child = walden_cmd()
            .args(&args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run walden: {e}"));
        Receiver {
            child,
            log,
            args,
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote so far (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The command line and its output tail, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "walden {} (exit {:?})\n--- walden output tail ---\n{}",
            self.args.join(" "),
            self.status,
            log_tail(&self.output(), 40)
        )
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.poll().is_none()
    }

    /// Its exit code once it exited (`-1` when killed by a signal).
    fn poll(&mut self) -> Option<i32> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status.code().unwrap_or(-1));
        }
        self.status
    }

    /// Asserts that it still runs, quoting its output otherwise.
    pub fn assert_running(&mut self, when: &str) {
        assert!(
            self.is_running(),
            "walden exited {when}\n{}",
            self.context()
        );
    }

    /// Kills it with SIGKILL (a crash) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.status = Some(-1);
    }

    /// Waits up to `timeout` for it to exit; its exit code. Panics with its output on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.poll() {
                return code;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("walden did not exit within {timeout:?}\n{}", self.context());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit with `code`; returns its output. Panics with the output otherwise.
    pub fn expect_exit(&mut self, code: i32, timeout: Duration) -> String {
        let got = self.wait_exit(timeout);
        assert_eq!(got, code, "unexpected walden exit code\n{}", self.context());
        self.output()
    }

    /// Stops it with SIGINT and expects exit code 0 within 30 s.
    pub fn interrupt(&mut self) {
        self.assert_running("before SIGINT");
        send_signal(self.pid(), "INT");
        self.expect_exit(0, Duration::from_secs(30));
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if self.poll().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `walden receive` to completion (e.g. with `--once` or a refusal expected): returns
/// the exit code and the output. Panics when it runs longer than `timeout`.
pub fn run_receive(source: &str, store: &Path, extra: &[&str], timeout: Duration) -> (i32, String) {
    let mut r = Receiver::start(source, store, extra);
    let code = r.wait_exit(timeout);
    (code, r.output())
}
