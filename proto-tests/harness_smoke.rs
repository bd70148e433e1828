//! Smoke tests of the harness itself on every installed version: servers start with the
//! expected version and settings, the test roles authenticate as documented, TLS material
//! works where the build has TLS, and servers can run side by side, restart and crash.

use crate::harness::*;

#[test]
fn ci_has_every_version() {
    let missing = missing_versions();
    if in_ci() {
        assert!(
            missing.is_empty(),
            "CI is set but PostgreSQL {missing:?} missing"
        );
    } else if !missing.is_empty() {
        println!("SKIP: PostgreSQL {missing:?} not installed (run scripts/install-postgres.sh)");
    }
}

proto_test!(version_and_settings, |pg: &Pg| {
    let srv = pg.start();
    let version = srv.psql("select version()");
    assert!(
        version.starts_with(&format!("PostgreSQL {}.", pg.major)),
        "{version}"
    );
    assert_eq!(srv.major(), pg.major);
    let settings = srv.psql(
        "select current_setting('wal_level'), current_setting('max_wal_senders'), \
         current_setting('fsync'), current_setting('password_encryption'), \
         current_setting('wal_segment_size'), current_setting('ssl'), \
         current_setting('server_encoding'), \
         (select datcollate from pg_database where datname = current_database())",
    );
    let ssl = if pg.tls { "on" } else { "off" };
    assert_eq!(
        settings,
        format!("replica|10|off|scram-sha-256|16MB|{ssl}|UTF8|C")
    );
    assert_eq!(srv.psql("show port"), srv.port().to_string());
    // The zstd flag matches what the server accepts.
    assert_eq!(srv.try_psql("set wal_compression = zstd").is_ok(), pg.zstd);
});

proto_test!(roles_exist_with_stored_password_kinds, |pg: &Pg| {
    let srv = pg.start();
    let roles = srv.psql(
        "select rolname, rolcanlogin, rolreplication, rolsuper, \
         coalesce(substr(rolpassword, 1, 3), '-') \
         from pg_authid where rolname like 'u\\_%' order by rolname",
    );
    assert_eq!(
        roles,
        "u_cert|t|t|f|-\n\
         u_md5|t|t|f|md5\n\
         u_nohba|t|t|f|SCR\n\
         u_norepl|t|f|f|-\n\
         u_password|t|t|f|SCR\n\
         u_scram|t|t|f|SCR\n\
         u_trust|t|t|f|-"
    );
});

proto_test!(roles_authenticate_as_configured, |pg: &Pg| {
    let srv = pg.start();
    let whoami = "select current_user";
    let with_password = |user: &str| {
        let pw = role_password(user).expect("role has a password");
        format!("{} password={pw} sslmode=disable", srv.conninfo(user))
    };
    for user in [U_PASSWORD, U_MD5, U_SCRAM] {
        assert_eq!(
            srv.psql_conn(&with_password(user), whoami).as_deref(),
            Ok(user)
        );
        let wrong = format!("{} password=wrong sslmode=disable", srv.conninfo(user));
        let err = srv.psql_conn(&wrong, whoami).unwrap_err();
        assert!(
            err.contains("password authentication failed"),
            "{user}: {err}"
        );
    }
    assert_eq!(
        srv.psql_conn(&srv.conninfo(U_TRUST), whoami).as_deref(),
        Ok(U_TRUST)
    );
    assert_eq!(
        srv.psql_conn(&srv.conninfo_socket(U_NOREPL), whoami)
            .as_deref(),
        Ok(U_NOREPL)
    );
    let err = srv.psql_conn(&with_password(U_NOHBA), whoami).unwrap_err();
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
    // Replication connections: allowed for REPLICATION roles, refused for u_norepl.
    let identify = "IDENTIFY_SYSTEM";
    let repl = |user: &str| format!("{} replication=true", srv.conninfo(user));
    let ident = srv.psql_conn(&repl(U_TRUST), identify).unwrap();
    assert!(ident.contains("|1|"), "IDENTIFY_SYSTEM: {ident}");
    let err = srv.psql_conn(&repl(U_NOREPL), identify).unwrap_err();
    assert!(
        err.contains("replication") || err.contains("WAL sender"),
        "{err}"
    );
    assert!(srv.log().contains("connection authorized: user=u_trust"));
});

proto_test!(tls_verify_full_cert_auth_and_failures, tls, |pg: &Pg| {
    let srv = pg.start();
    let tls = srv.tls_files().expect("TLS build");
    assert!(tls.ca_cert.starts_with(&tls.dir));
    let ssl_used = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    let verify_full = |host: &str, root: &std::path::Path| {
        format!(
            "host={host} port={} user={U_SCRAM} password={PW_SCRAM} dbname=postgres \
             sslmode=verify-full sslrootcert={}",
            srv.port(),
            root.display()
        )
    };
    assert_eq!(
        srv.psql_conn(&verify_full("localhost", &tls.ca_cert), ssl_used)
            .as_deref(),
        Ok("t")
    );
    let err = srv
        .psql_conn(&verify_full("127.0.0.1", &tls.ca_cert), ssl_used)
        .unwrap_err();
    assert!(err.contains("does not match host name"), "{err}");
    let err = srv
        .psql_conn(&verify_full("localhost", &tls.other_ca_cert), ssl_used)
        .unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
    let cert = format!(
        "{} sslmode=require sslcert={} sslkey={}",
        srv.conninfo(U_CERT),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    assert_eq!(
        srv.psql_conn(&cert, "select current_user").as_deref(),
        Ok(U_CERT)
    );
    let err = srv
        .psql_conn(
            &format!("{} sslmode=require", srv.conninfo(U_CERT)),
            "select 1",
        )
        .unwrap_err();
    assert!(err.contains("certificate"), "{err}");
});

proto_test!(tls_files_follow_the_build, |pg: &Pg| {
    assert_eq!(pg.require_tls().is_some(), pg.tls);
    // Debian's 15 is built with OpenSSL and zstd; the PyPI wheels with neither.
    assert_eq!(pg.tls, pg.major == 15);
    assert_eq!(pg.zstd, pg.major == 15);
});

proto_test!(zstd_wal_compression, zstd, |pg: &Pg| {
    let srv = pg.start_with(ServerOptions::default().conf("wal_compression = zstd"));
    assert_eq!(srv.psql("show wal_compression"), "zstd");
});

fn tables_named(srv: &Server, name: &str) -> String {
    srv.psql(&format!(
        "select count(*) from pg_class where relname = '{name}'"
    ))
}

proto_test!(two_servers_side_by_side, |pg: &Pg| {
    let a = pg.start();
    let b = pg.start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert_eq!(b.pg().major, pg.major);
    assert!(a.data_dir().starts_with(a.dir()));
    a.psql("create table only_in_a(x int)");
    assert_eq!(tables_named(&b, "only_in_a"), "0");
    assert_eq!(tables_named(&a, "only_in_a"), "1");
    let dir = a.dir().to_path_buf();
    drop(a);
    assert!(!dir.exists(), "test directory removed after a passing test");
});

proto_test!(small_segments_and_extra_conf, |pg: &Pg| {
    let opts = ServerOptions::default()
        .wal_segsize_mb(1)
        .conf("wal_keep_size = '8MB'");
    let srv = pg.start_with(opts);
    assert_eq!(
        srv.psql("select current_setting('wal_segment_size'), current_setting('wal_keep_size')"),
        "1MB|8MB"
    );
    let wal = std::fs::read_dir(srv.data_dir().join("pg_wal"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().len() == 24)
        .expect("a WAL segment");
    assert_eq!(wal.metadata().unwrap().len(), 1024 * 1024);
});

proto_test!(stop_start_crash_and_adopt, |pg: &Pg| {
    let mut srv = pg.start();
    srv.psql("create table t(x int); insert into t values (1), (2)");
    srv.restart();
    assert_eq!(srv.psql("select count(*) from t"), "2");
    srv.set_conf(&["work_mem = '7MB'"]);
    srv.reload();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while srv.psql("show work_mem") != "7MB" {
        assert!(std::time::Instant::now() < deadline, "reload not applied");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    srv.psql("insert into t values (3)");
    srv.kill9();
    assert!(!srv.is_running());
    srv.start();
    assert_eq!(srv.psql("select count(*) from t"), "3");
    assert!(
        srv.log().contains("not properly shut down"),
        "{}",
        srv.log()
    );
    srv.stop();
    let copy = pg.adopt(&srv.data_dir(), vec!["work_mem = '9MB'".to_owned()]);
    let mut copy = copy;
    copy.start();
    assert_ne!(copy.port(), srv.port());
    assert_eq!(
        copy.psql("select count(*), current_setting('work_mem') from t"),
        "3|9MB"
    );
});

proto_test!(tools_and_binaries_run, |pg: &Pg| {
    let out = run_ok(postgres_cmd(pg.bin("pg_receivewal")).arg("--version"));
    assert!(
        out.contains(&format!("(PostgreSQL) {}.", pg.major)),
        "{out}"
    );
    assert!(walden_cmd().arg("--help").status().unwrap().success());
    assert!(
        walden_restore_cmd()
            .arg("--help")
            .status()
            .unwrap()
            .success()
    );
});
