//! Test helpers: a fabricated store and a server on it, shared by the server's tests and the
//! client's (`restore::remote`).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use tokio::sync::watch;

use super::{HttpConfig, Metrics, Server, StatusSource, Token};

pub const TOKEN: &str = "s3cret-token";
pub const BACKUP: &str = "20261122T193000Z";
pub const SYSID: &str = "7711098426243390295";

pub fn fixture(name: &str) -> Vec<u8> {
    fs::read(format!(
        "{}/fixtures/wal/pg15/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A store with cluster `main`: a plain, a compressed and a partial segment, a history file,
/// a gap, one complete backup (with a captured config file) and one in progress.
pub fn store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main");
    let segs = main.join("wal/0000000100000000");
    fs::create_dir_all(&segs).unwrap();
    fs::write(
        main.join("cluster.json"),
        format!(
            r#"{{"cluster":"main","system_identifier":"{SYSID}","server_version_num":150018,"wal_segment_size":1048576,"created":"2026-11-22T19:30:00Z","format":1}}"#
        ),
    )
    .unwrap();
    fs::write(
        segs.join("000000010000000000000007"),
        fixture("000000010000000000000007"),
    )
    .unwrap();
    fs::write(
        segs.join("000000010000000000000008.zst"),
        zstd::encode_all(&fixture("000000010000000000000008")[..], 3).unwrap(),
    )
    .unwrap();
    fs::write(
        segs.join("000000010000000000000009.partial"),
        fixture("000000010000000000000009"),
    )
    .unwrap();
    fs::write(
        main.join("wal/00000002.history"),
        fixture("00000002.history"),
    )
    .unwrap();
    fs::write(
        main.join("gaps.json"),
        r#"[{"timeline":1,"from":"0/1000000","to":"0/2000000","detected":"2026-11-22T19:30:00Z","reason":"test"}]"#,
    )
    .unwrap();
    let backup = main.join("backups").join(BACKUP);
    fs::create_dir_all(backup.join("config")).unwrap();
    fs::write(
        backup.join("backup.json"),
        json!({
            "id": BACKUP, "status": "complete", "stop_time": "2026-11-22T19:31:00Z",
            "archives": [{"name": "base.tar"}, {"name": "link.tar"}],
            "config_files": {"files": ["postgresql.conf", "my conf"]},
        })
        .to_string(),
    )
    .unwrap();
    fs::write(backup.join("base.tar"), b"the base archive").unwrap();
    fs::write(backup.join("backup_manifest"), b"{\"manifest\": 1}").unwrap();
    fs::write(backup.join("config/postgresql.conf"), b"port = 5432\n").unwrap();
    fs::write(backup.join("config/my conf"), b"x = 1\n").unwrap();
    fs::write(backup.join("unlisted.txt"), b"not in backup.json").unwrap();
    // Listed, but a symbolic link out of the store: never followed.
    std::os::unix::fs::symlink("/etc/passwd", backup.join("link.tar")).unwrap();
    fs::create_dir_all(main.join("backups/20261123T000000Z.partial")).unwrap();
    dir
}

/// A status source whose health a test sets.
pub struct Fixed(AtomicBool);

impl Fixed {
    pub fn new(healthy: bool) -> Fixed {
        Fixed(AtomicBool::new(healthy))
    }

    pub fn set(&self, healthy: bool) {
        self.0.store(healthy, Ordering::SeqCst);
    }
}

impl StatusSource for Fixed {
    fn status_json(&self) -> serde_json::Value {
        json!({ "fixed": true })
    }
    fn healthy(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn metrics(&self) -> String {
        let mut m = Metrics::new();
        m.gauge("walden_test", "A test gauge")
            .sample("walden_test", &[("cluster", "main")], 1.0);
        m.finish()
    }
}

/// A server on its own thread and runtime, stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(store: &Path, status: Arc<dyn StatusSource>) -> TestServer {
        let (stop, rx) = watch::channel(false);
        let (tx_addr, rx_addr) = std::sync::mpsc::channel();
        let store = store.to_path_buf();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let config = HttpConfig {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    token_file: PathBuf::from("/unused"),
                    tls: None,
                };
                let server =
                    Server::bind_with_token(&config, Token::new(TOKEN).unwrap(), store, status)
                        .await
                        .unwrap();
                tx_addr.send(server.local_addr().unwrap()).unwrap();
                server.run(rx).await;
            });
        });
        TestServer {
            addr: rx_addr.recv().unwrap(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
