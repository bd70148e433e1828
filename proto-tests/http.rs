//! `walden serve` and `walden-restore --from https://...` against real servers on every
//! version: a primary archived by `walden receive` and `walden backup`, the store served over
//! TLS (the harness's test CA) with a bearer token; `/healthz`, `/status`, `/metrics`; a
//! restore over HTTPS into a new data directory whose server then fetches its WAL over HTTPS
//! (the token file in restore_command) and holds exactly the data written; `wal-fetch` of a
//! present and an absent file (exit 0, 1), with the token from the environment, and without
//! the CA (a fault); a wrong token (401 without saying whether a file exists, a failed
//! restore with a clear message, nothing written); SIGTERM stops the server cleanly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;
use crate::support::backup::{run_backup, start_receiver};
use crate::support::restore::{
    mark, new_store, restore_and_start, run_wal_fetch, setup_marks, steps, upto, wait_flushed,
    walden_restore,
};
use crate::support::store::StoreView;

const TOKEN: &str = "proto-test-token-0123456789abcdef";
const T: Duration = Duration::from_secs(60);

/// `walden serve` running in the background; SIGKILLed on drop if still running.
struct Serve {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Serve {
    fn start(store: &Path, token_file: &Path, tls: &TlsFiles) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = PathBuf::from(format!("{}.serve.log", store.display()));
        let out = std::fs::File::create(&log).expect("create the serve log");
        let err = out.try_clone().expect("clone the log handle");
        let child = walden_cmd()
            .arg("serve")
            .arg("--store")
            .arg(store)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--token-file")
            .arg(token_file)
            .arg("--tls-cert")
            .arg(&tls.server_cert)
            .arg("--tls-key")
            .arg(&tls.server_key)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("run walden serve");
        let serve = Serve { child, log, port };
        let agent = agent(tls);
        wait_for(
            "walden serve to answer /healthz",
            T,
            || agent.get(&serve.url("/healthz")).call().is_ok(),
            || serve.output(),
        );
        serve
    }

    fn base(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS client that trusts the test CA and reports every status as a response.
fn agent(tls: &TlsFiles) -> ureq::Agent {
    let pem = std::fs::read(&tls.ca_cert).expect("read the test CA");
    let roots: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls_config = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls_config)
        .build()
        .into()
}

/// Status and body of a GET with `token` (None: no Authorization header).
fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (status, body)
}

/// Writes `token` into a file the `postgres` user can read (and nobody else).
fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).expect("write the token file");
    run_ok(Command::new("chmod").arg("0600").arg(&path));
    if is_root() {
        run_ok(Command::new("chown").arg("postgres:postgres").arg(&path));
    }
    path
}

/// `walden-restore wal-fetch --from URL ...` with `extra` flags and environment.
fn remote_wal_fetch(
    url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    file: &str,
    dest: &Path,
) -> (i32, String) {
    let out = walden_restore()
        .arg("wal-fetch")
        .args(["--from", url])
        .args(extra)
        .arg(file)
        .arg(dest)
        .env_remove("WALDEN_TOKEN")
        .env_remove("WALDEN_CA_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("run walden-restore wal-fetch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

proto_test!(restore_and_wal_fetch_over_https, |pg: &Pg| {
    let tls = tls_files();
    let srv = pg.start_with(ServerOptions::default().conf("track_commit_timestamp = on"));
    let store = new_store(&srv);
    let receiver = start_receiver(&srv, &store);
    setup_marks(&srv);
    for step in 1..=2 {
        mark(&srv, step);
    }
    run_backup(&srv.conninfo(U_TRUST), &store, &["--label", "http"], T).assert_ok();
    for step in 3..=4 {
        mark(&srv, step);
    }
    let end = srv.insert_lsn();
    wait_flushed(&srv, end, || receiver.context());

    let good = token_file(srv.dir(), "token", TOKEN);
    let wrong = token_file(srv.dir(), "wrong-token", "not-the-token");
    let serve = Serve::start(&store, &good, tls);
    let agent = agent(tls);
    let ca = tls.ca_cert.display().to_string();
    let good_s = good.display().to_string();
    let wrong_s = wrong.display().to_string();

    // /healthz needs no token; /status and /metrics describe the store.
    assert_eq!(
        get(&agent, &serve.url("/healthz"), None),
        (200, "ok\n".to_string())
    );
    let (code, status) = get(&agent, &serve.url("/status"), Some(TOKEN));
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    assert_eq!(status["healthy"], true, "{status:#}");
    assert_eq!(status["clusters"][0]["cluster"], "main", "{status:#}");
    assert_eq!(
        status["clusters"][0]["listing"]["backups"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{status:#}"
    );
    let (code, metrics) = get(&agent, &serve.url("/metrics"), Some(TOKEN));
    assert_eq!(code, 200);
    for line in [
        "# TYPE walden_backups gauge",
        "walden_backups{cluster=\"main\"} 1",
        "walden_healthy 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("walden_last_backup_timestamp_seconds{cluster=\"main\"} ")),
        "{metrics}"
    );

    // A wrong or missing token: the same 401 for a file that exists and one that does not.
    let view = StoreView::new(&store, "main", srv.wal_seg_size());
    let present = view
        .completed()
        .first()
        .cloned()
        .expect("a completed segment");
    let absent = "000000090000000000000001";
    let mut answers = Vec::new();
    for path in [
        format!("/v1/clusters/main/wal/{present}"),
        format!("/v1/clusters/main/wal/{absent}"),
        "/status".to_string(),
    ] {
        for token in [None, Some("not-the-token")] {
            answers.push(get(&agent, &serve.url(&path), token));
        }
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 401);

    // wal-fetch over HTTPS: present (the same bytes as from the store directly), absent.
    let scratch = srv.dir().join("fetched");
    std::fs::create_dir_all(&scratch).unwrap();
    let by_url = scratch.join("by-url");
    let by_path = scratch.join("by-path");
    let url = serve.base();
    let auth = ["--token-file", good_s.as_str(), "--ca-file", ca.as_str()];
    let (code, stderr) = remote_wal_fetch(&url, &auth, &[], &present, &by_url);
    assert_eq!(code, 0, "wal-fetch {present} over https: {stderr}");
    run_wal_fetch(&store, &present, &by_path).assert_ok();
    assert!(std::fs::read(&by_url).unwrap() == std::fs::read(&by_path).unwrap());
    let (code, stderr) = remote_wal_fetch(&url, &auth, &[], absent, &by_url);
    assert_eq!((code, stderr.as_str()), (1, ""), "an absent segment");
    // The token from the environment; the CA from the environment.
    let (code, stderr) = remote_wal_fetch(
        &url,
        &[],
        &[("WALDEN_TOKEN", TOKEN), ("WALDEN_CA_FILE", &ca)],
        &present,
        &by_url,
    );
    assert_eq!(code, 0, "token and CA from the environment: {stderr}");
    // Faults (exit 255): a wrong token, a server certificate nobody vouches for.
    let (code, stderr) = remote_wal_fetch(
        &url,
        &["--token-file", &wrong_s, "--ca-file", &ca],
        &[],
        &present,
        &by_url,
    );
    assert_eq!(code, 255, "{stderr}");
    assert!(stderr.contains("refused the token (401)"), "{stderr}");
    let (code, stderr) = remote_wal_fetch(&url, &["--token-file", &good_s], &[], &present, &by_url);
    assert_eq!(code, 255, "an unknown CA must be a fault: {stderr}");

    // A restore with the wrong token fails before writing anything, and says why.
    let refused_parent = pg.new_server_dir();
    let refused_dir = refused_parent.join("data");
    let out = walden_restore()
        .args(["restore", "--from", &url, "--token-file", &wrong_s])
        .args(["--ca-file", &ca, "--pgdata"])
        .arg(&refused_dir)
        .output()
        .expect("run walden-restore restore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused the token (401)"), "{stderr}");
    assert!(
        std::fs::read_dir(&refused_dir).map_or(true, |mut d| d.next().is_none()),
        "nothing written into {}",
        refused_dir.display()
    );

    // The restore over HTTPS; the restored server fetches its WAL over HTTPS too.
    let restored = restore_and_start(
        pg,
        Path::new(&url),
        &[
            "--token-file",
            &good_s,
            "--ca-file",
            &ca,
            "--target-action",
            "promote",
        ],
        &[],
    );
    assert_eq!(
        steps(&restored.server),
        (upto(4), upto(4)),
        "every step, in both databases\n{}\n{}",
        restored.run.context(),
        restored.server.context()
    );
    let auto_conf =
        std::fs::read_to_string(restored.server.data_dir().join("postgresql.auto.conf"))
            .unwrap_or_default();
    assert!(
        auto_conf.contains(&format!("--token-file {good_s}")) && !auto_conf.contains(TOKEN),
        "restore_command names the token file, never the token:\n{auto_conf}"
    );
    assert!(
        serve.output().contains("path=/v1/clusters/main/wal/"),
        "WAL went over HTTPS:\n{}",
        serve.output()
    );

    // SIGTERM: a clean stop.
    let mut serve = serve;
    send_signal(serve.child.id(), "TERM");
    let log = serve.log.clone();
    let mut code = None;
    wait_for(
        "walden serve to stop",
        T,
        || {
            code = serve.child.try_wait().ok().flatten().and_then(|s| s.code());
            code.is_some()
        },
        || std::fs::read_to_string(&log).unwrap_or_default(),
    );
    assert_eq!(code, Some(0), "{}", serve.output());
});
