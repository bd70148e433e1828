//! `walden identify` against real servers: every authentication method, every TLS mode (on
//! builds with TLS), and every way a connection can fail, each with its exit code and one
//! clear line.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

use crate::harness::{self, Pg, Server, proto_test};

/// Runs `walden identify --json` with a clean environment: an empty HOME (no ~/.pgpass or
/// ~/.postgresql of the machine's), no PG* variables but those given.
fn identify(conninfo: &str, env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().expect("temp home");
    identify_in(home.path(), conninfo, env)
}

fn identify_in(home: &Path, conninfo: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = harness::walden_cmd();
    cmd.args(["identify", "--json", "--source", conninfo])
        .env("HOME", home);
    for (key, _) in std::env::vars() {
        if key.starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run walden identify")
}

/// Asserts success and returns the JSON document.
#[track_caller]
fn identify_ok(conninfo: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let out = identify(conninfo, env);
    parse_ok(&out, conninfo)
}

#[track_caller]
fn parse_ok(out: &Output, conninfo: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "walden identify {conninfo:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("identify prints JSON")
}

/// Asserts failure with `code` and one line on stderr containing `needle`; returns it.
#[track_caller]
fn identify_fails(conninfo: &str, env: &[(&str, &str)], code: i32, needle: &str) -> String {
    let out = identify(conninfo, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "walden identify {conninfo:?}: expected exit {code}; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {stderr}");
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in the error, got: {}",
        lines[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
    stderr
}

/// Checks the identity against what the server says over SQL.
#[track_caller]
fn check_identity(srv: &Server, id: &serde_json::Value) {
    let sysid = srv.psql("select system_identifier from pg_control_system()");
    assert_eq!(id["system_identifier"], serde_json::json!(sysid));
    assert_eq!(id["timeline"], 1);
    let version_num: u64 = srv.psql("show server_version_num").parse().unwrap();
    assert_eq!(id["server_version_num"], version_num);
    assert_eq!(id["wal_segment_size"], 16 * 1024 * 1024);
    assert_eq!(id["in_recovery"], false);
    let position: walden::wal::Lsn = id["wal_position"].as_str().unwrap().parse().unwrap();
    let now: walden::wal::Lsn = srv
        .psql("select pg_current_wal_flush_lsn()")
        .parse()
        .unwrap();
    assert!(
        position.is_valid() && position <= now,
        "{position} vs {now}"
    );
}

proto_test!(identify_trust_tcp_and_socket, |pg: &Pg| {
    let srv = pg.start();
    let id = identify_ok(&srv.conninfo(harness::U_TRUST), &[]);
    check_identity(&srv, &id);
    assert_eq!(
        id["tls"], pg.tls,
        "sslmode=prefer uses TLS where the server has it: {id}"
    );
    let id = identify_ok(&srv.conninfo_socket(harness::U_TRUST), &[]);
    check_identity(&srv, &id);
    assert_eq!(id["tls"], false, "never TLS over a Unix socket");

    // Human output names every field.
    let home = tempfile::tempdir().unwrap();
    let mut cmd = harness::walden_cmd();
    let out = cmd
        .args(["identify", "--source", &srv.conninfo(harness::U_TRUST)])
        .env("HOME", home.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for field in [
        "system identifier:",
        "timeline:",
        "WAL position:",
        "server version:",
        "wal_segment_size:  16MB",
    ] {
        assert!(text.contains(field), "{field:?} missing from {text}");
    }
});

proto_test!(identify_password_methods, |pg: &Pg| {
    let srv = pg.start();
    // Cleartext password from PGPASSWORD.
    let id = identify_ok(
        &format!("{} sslmode=disable", srv.conninfo(harness::U_PASSWORD)),
        &[("PGPASSWORD", harness::PW_PASSWORD)],
    );
    check_identity(&srv, &id);

    // md5 (stored as an md5 hash, so the server really asks for md5) from a password file.
    let home = tempfile::tempdir().unwrap();
    let passfile = home.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "127.0.0.1:{}:replication:{}:{}\n",
            srv.port(),
            harness::U_MD5,
            harness::PW_MD5
        ),
    )
    .unwrap();
    set_mode(&passfile, 0o600);
    let out = identify_in(
        home.path(),
        &format!("{} sslmode=disable", srv.conninfo(harness::U_MD5)),
        &[("PGPASSFILE", passfile.to_str().unwrap())],
    );
    check_identity(&srv, &parse_ok(&out, "md5 via PGPASSFILE"));

    // The same file as ~/.pgpass; a line for another database must not match: replication
    // connections match the database field "replication".
    let default_passfile = home.path().join(".pgpass");
    std::fs::write(
        &default_passfile,
        format!(
            "127.0.0.1:{port}:postgres:{user}:wrong\n127.0.0.1:{port}:replication:{user}:{pw}\n",
            port = srv.port(),
            user = harness::U_SCRAM,
            pw = harness::PW_SCRAM
        ),
    )
    .unwrap();
    set_mode(&default_passfile, 0o600);
    let out = identify_in(home.path(), &srv.conninfo(harness::U_SCRAM), &[]);
    check_identity(&srv, &parse_ok(&out, "scram via ~/.pgpass"));

    // SCRAM with the password in a URI.
    let uri = format!(
        "postgresql://{}:{}@127.0.0.1:{}/postgres?sslmode=disable",
        harness::U_SCRAM,
        harness::PW_SCRAM,
        srv.port()
    );
    check_identity(&srv, &identify_ok(&uri, &[]));
});

proto_test!(identify_refusals, |pg: &Pg| {
    let mut srv = pg.start();
    let port = srv.port();
    let conn = |user: &str| format!("host=127.0.0.1 port={port} user={user} sslmode=disable");
    let stderr = identify_fails(
        &conn(harness::U_SCRAM),
        &[("PGPASSWORD", "not-the-password")],
        3,
        "password authentication failed",
    );
    assert!(
        !stderr.contains("not-the-password"),
        "password leaked: {stderr}"
    );
    identify_fails(&conn(harness::U_SCRAM), &[], 3, "PGPASSWORD");
    identify_fails(&conn(harness::U_MD5), &[("PGPASSWORD", "bad")], 3, "28P01");
    identify_fails(&conn("no_such_user"), &[], 3, "28000");
    identify_fails(
        &conn(harness::U_NOHBA),
        &[("PGPASSWORD", harness::PW_NOHBA)],
        3,
        "no pg_hba.conf entry",
    );
    identify_fails(&conn(harness::U_NOREPL), &[], 3, "42501");
    identify_fails(
        &format!("{} frobnicate=1", conn(harness::U_TRUST)),
        &[],
        2,
        "invalid connection option \"frobnicate\"",
    );
    identify_fails("host=127.0.0.1 port=notaport", &[], 2, "port");
    identify_fails(
        &format!("{} channel_binding=require", conn(harness::U_SCRAM)),
        &[("PGPASSWORD", harness::PW_SCRAM)],
        3,
        "channel_binding=require",
    );

    srv.stop();
    identify_fails(&conn(harness::U_TRUST), &[], 3, "Connection refused");
    identify_fails(
        &srv.conninfo_socket(harness::U_TRUST),
        &[],
        3,
        "could not connect",
    );
});

proto_test!(identify_tls_modes, |pg: &Pg| {
    let srv = pg.start();
    let Some(tls) = srv.tls_files() else {
        // Builds without OpenSSL: prefer falls back to plain, require and stronger refuse.
        let id = identify_ok(
            &format!("{} sslmode=prefer", srv.conninfo(harness::U_TRUST)),
            &[],
        );
        assert_eq!(id["tls"], false);
        identify_ok(
            &format!("{} sslmode=allow", srv.conninfo(harness::U_TRUST)),
            &[],
        );
        identify_fails(
            &format!("{} sslmode=require", srv.conninfo(harness::U_TRUST)),
            &[],
            3,
            "server does not support SSL",
        );
        return;
    };
    let root = tls.ca_cert.display().to_string();
    let users = [
        (harness::U_TRUST, None),
        (harness::U_PASSWORD, Some(harness::PW_PASSWORD)),
        (harness::U_MD5, Some(harness::PW_MD5)),
        (harness::U_SCRAM, Some(harness::PW_SCRAM)),
    ];
    let modes = [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ];
    for (user, password) in users {
        for mode in modes {
            let mut conninfo = format!(
                "host=localhost port={} user={user} sslmode={mode}",
                srv.port()
            );
            if mode.starts_with("verify") {
                conninfo.push_str(&format!(" sslrootcert={root}"));
            }
            let env: Vec<(&str, &str)> = password.map(|p| ("PGPASSWORD", p)).into_iter().collect();
            let id = identify_ok(&conninfo, &env);
            check_identity(&srv, &id);
            let encrypted = !matches!(mode, "disable" | "allow");
            assert_eq!(id["tls"], encrypted, "{user} {mode}: {id}");
        }
    }

    // SCRAM-SHA-256-PLUS: channel binding required and obtained over verify-full.
    let plus = format!(
        "host=localhost port={} user={} sslmode=verify-full sslrootcert={root} channel_binding=require",
        srv.port(),
        harness::U_SCRAM
    );
    let id = identify_ok(&plus, &[("PGPASSWORD", harness::PW_SCRAM)]);
    assert_eq!(id["tls"], true);
    // ... and refused for a method that cannot bind.
    identify_fails(
        &format!(
            "host=localhost port={} user={} sslmode=require channel_binding=require",
            srv.port(),
            harness::U_MD5
        ),
        &[("PGPASSWORD", harness::PW_MD5)],
        3,
        "channel_binding=require",
    );

    // A client certificate for the `cert` method.
    let client_key = copy_key_0600(&tls.client_key);
    let cert_conn = format!(
        "host=localhost port={} user={} sslmode=verify-full sslrootcert={root} sslcert={} sslkey={}",
        srv.port(),
        harness::U_CERT,
        tls.client_cert.display(),
        client_key.1.display()
    );
    check_identity(&srv, &identify_ok(&cert_conn, &[]));

    // The certificate names localhost only: verify-full to 127.0.0.1 is a name mismatch.
    identify_fails(
        &format!(
            "host=127.0.0.1 port={} user={} sslmode=verify-full sslrootcert={root}",
            srv.port(),
            harness::U_TRUST
        ),
        &[],
        3,
        "does not match host name \"127.0.0.1\"",
    );
    // verify-ca does not check names.
    identify_ok(
        &format!(
            "host=127.0.0.1 port={} user={} sslmode=verify-ca sslrootcert={root}",
            srv.port(),
            harness::U_TRUST
        ),
        &[],
    );
    // A CA that did not sign the server certificate.
    identify_fails(
        &format!(
            "host=localhost port={} user={} sslmode=verify-ca sslrootcert={}",
            srv.port(),
            harness::U_TRUST,
            tls.other_ca_cert.display()
        ),
        &[],
        3,
        "not signed by a trusted certificate authority",
    );
    // verify-full without any root certificate: a configuration error, before connecting.
    identify_fails(
        &format!(
            "host=localhost port={} user={} sslmode=verify-full",
            srv.port(),
            harness::U_TRUST
        ),
        &[],
        2,
        "root certificate file",
    );
});

/// A server that is not PostgreSQL: answers anything with an HTTP error.
#[test]
fn identify_against_a_non_postgres_server() {
    for mode in ["disable", "prefer", "require"] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            if let Ok((mut sock, _)) = listener.accept() {
                let _ = sock.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        identify_fails(
            &format!("host=127.0.0.1 port={port} user=x sslmode={mode}"),
            &[],
            3,
            "PostgreSQL server?",
        );
        server.join().unwrap();
    }
}

/// A copy of a key file that the current user owns with mode 0600 (libpq's rule).
fn copy_key_0600(key: &Path) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("client.key");
    std::fs::copy(key, &copy).unwrap();
    set_mode(&copy, 0o600);
    (dir, copy)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
