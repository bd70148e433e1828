//! Recovery configuration text and files.

use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const AT: &str = "2026-11-22T19:30:00Z";
const CMD: &str = "/usr/bin/walden-restore wal-fetch --from /srv/store --cluster main %f %p";

fn settings() -> RecoverySettings {
    RecoverySettings {
        restore_command: CMD.to_string(),
        target: None,
        inclusive: true,
        timeline: None,
        action: None,
        standby: false,
        primary_conninfo: None,
        primary_slot_name: None,
    }
}

fn text(major: u32, s: &RecoverySettings) -> String {
    recovery_text(major, s, AT).unwrap()
}

const HEAD: &str = "# Recovery settings written by walden-restore at 2026-11-22T19:30:00Z\n\
    restore_command = '/usr/bin/walden-restore wal-fetch --from /srv/store --cluster main %f %p'\n";

#[test]
fn latest_has_no_target_and_follows_the_newest_timeline_on_every_version() {
    assert_eq!(text(12, &settings()), HEAD);
    assert_eq!(text(18, &settings()), HEAD);
    assert_eq!(
        text(11, &settings()),
        format!("{HEAD}recovery_target_timeline = 'latest'\n")
    );
    assert_eq!(
        text(10, &settings()),
        format!("{HEAD}recovery_target_timeline = 'latest'\n")
    );
    assert!(matches!(
        recovery_text(9, &settings(), AT),
        Err(RecoveryError::UnsupportedVersion(9))
    ));
}

#[test]
fn each_target_kind() {
    for (kind, value, line) in [
        (
            TargetKind::Time,
            "2026-11-22 19:30:00.123456+00",
            "recovery_target_time = '2026-11-22 19:30:00.123456+00'",
        ),
        (
            TargetKind::Lsn,
            "0/3000060",
            "recovery_target_lsn = '0/3000060'",
        ),
        (TargetKind::Xid, "771", "recovery_target_xid = '771'"),
        (
            TargetKind::Name,
            "before 'the' migration",
            "recovery_target_name = 'before ''the'' migration'",
        ),
        (TargetKind::Immediate, "", "recovery_target = 'immediate'"),
    ] {
        let s = RecoverySettings {
            target: Some((kind, value.to_string())),
            ..settings()
        };
        assert_eq!(text(16, &s), format!("{HEAD}{line}\n"), "{kind:?}");
        assert_eq!(
            text(11, &s),
            format!("{HEAD}{line}\nrecovery_target_timeline = 'latest'\n"),
            "{kind:?}"
        );
    }
}

#[test]
fn inclusive_timeline_and_action() {
    let s = RecoverySettings {
        target: Some((TargetKind::Lsn, "0/3000060".into())),
        inclusive: false,
        timeline: Some("2".into()),
        action: Some("promote".into()),
        ..settings()
    };
    let options = "recovery_target_lsn = '0/3000060'\n\
        recovery_target_inclusive = 'off'\n\
        recovery_target_timeline = '2'\n\
        recovery_target_action = 'promote'\n";
    assert_eq!(text(15, &s), format!("{HEAD}{options}"));
    assert_eq!(text(11, &s), format!("{HEAD}{options}"));

    // Exclusive means nothing for a name or immediate target: not written.
    let s = RecoverySettings {
        target: Some((TargetKind::Name, "p".into())),
        inclusive: false,
        timeline: Some("latest".into()),
        action: Some("shutdown".into()),
        ..settings()
    };
    assert_eq!(
        text(13, &s),
        format!("{HEAD}recovery_target_name = 'p'\nrecovery_target_action = 'shutdown'\n")
    );
    // The version's default timeline is not written; the other one is.
    let current = RecoverySettings {
        timeline: Some("current".into()),
        ..settings()
    };
    assert_eq!(text(11, &current), HEAD);
    assert_eq!(
        text(12, &current),
        format!("{HEAD}recovery_target_timeline = 'current'\n")
    );
    let latest = RecoverySettings {
        timeline: Some("latest".into()),
        ..settings()
    };
    assert_eq!(text(12, &latest), HEAD);
    assert_eq!(
        text(11, &latest),
        format!("{HEAD}recovery_target_timeline = 'latest'\n")
    );
}

#[test]
fn standby_with_conninfo_and_slot() {
    let s = RecoverySettings {
        standby: true,
        primary_conninfo: Some(r"host=db1 user=rep password='it''s \secret'".into()),
        primary_slot_name: Some("walden_standby".into()),
        ..settings()
    };
    let standby = "primary_conninfo = 'host=db1 user=rep password=''it''''s \\\\secret'''\n\
        primary_slot_name = 'walden_standby'\n";
    assert_eq!(text(16, &s), format!("{HEAD}{standby}"));
    assert_eq!(
        text(11, &s),
        format!("{HEAD}standby_mode = 'on'\nrecovery_target_timeline = 'latest'\n{standby}")
    );
    let broken = RecoverySettings {
        primary_conninfo: Some("host=a\nrestore_command='rm -rf /'".into()),
        ..s
    };
    let err = recovery_text(16, &broken, AT).unwrap_err();
    assert!(
        matches!(
            err,
            RecoveryError::Unwritable {
                what: "primary_conninfo",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn restore_command_words() {
    let main = ClusterName::default();
    assert_eq!(
        restore_command(
            Path::new("/usr/bin/walden-restore"),
            Path::new("/srv/store"),
            &main,
            0,
            Some(Path::new("/ignored"))
        )
        .unwrap(),
        CMD
    );
    assert_eq!(
        restore_command(
            Path::new("/usr/bin/walden-restore"),
            Path::new("/srv/store"),
            &ClusterName::new("db-1.prod").unwrap(),
            4,
            Some(Path::new("/var/tmp/spool"))
        )
        .unwrap(),
        "/usr/bin/walden-restore wal-fetch --from /srv/store --cluster db-1.prod --prefetch 4 \
         --spool /var/tmp/spool %f %p"
    );
    assert_eq!(
        restore_command(
            Path::new("/opt/my tools/walden-restore"),
            Path::new("/srv/it's 100%"),
            &main,
            0,
            None
        )
        .unwrap(),
        r"'/opt/my tools/walden-restore' wal-fetch --from '/srv/it'\''s 100%%' --cluster main %f %p"
    );
    let err = restore_command(Path::new("bin/x"), Path::new("/s"), &main, 0, None).unwrap_err();
    assert!(matches!(err, RecoveryError::RelativePath(_)), "{err}");
    let err = restore_command(Path::new("/x"), Path::new("store"), &main, 0, None).unwrap_err();
    assert!(
        err.to_string().contains("store is not an absolute path"),
        "{err}"
    );
    assert!(this_executable().unwrap().is_absolute());
}

/// Reads a quoted value back as PostgreSQL's configuration parser does (`''` and
/// backslash escapes).
fn parse_config_value(quoted: &str) -> String {
    let inner = quoted
        .strip_prefix('\'')
        .unwrap()
        .strip_suffix('\'')
        .unwrap();
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap()),
            '\'' => {
                assert_eq!(chars.next(), Some('\''));
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    out
}

/// Expands `%f`, `%p` and `%%` as the server does before running the command.
fn expand(command: &str, f: &str, p: &str) -> String {
    let mut out = String::new();
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('f') => out.push_str(f),
                Some('p') => out.push_str(p),
                Some('%') => out.push('%'),
                other => panic!("unexpected %{other:?}"),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn hostile_paths_survive_the_config_file_the_expansion_and_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = dir.path().join(r#"a b'c"d$HOME`x`%f%%\e;&|"#);
    fs::create_dir(&hostile).unwrap();
    // A stand-in for the binary that records its arguments, one per line.
    let exe = hostile.join("fake restore");
    let args_file = dir.path().join("args");
    fs::write(
        &exe,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\n",
            args_file.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let store = hostile.join("store");
    let command =
        restore_command(&exe, &store, &ClusterName::default(), 2, Some(&hostile)).unwrap();
    let s = RecoverySettings {
        restore_command: command,
        ..settings()
    };
    let written = text(16, &s);
    let line = written.lines().nth(1).unwrap();
    let value = parse_config_value(line.strip_prefix("restore_command = ").unwrap());
    let run = expand(&value, "000000010000000000000003", "pg_wal/RECOVERYXLOG");
    let status = Command::new("sh").arg("-c").arg(&run).status().unwrap();
    assert!(status.success(), "{run}");
    let got = fs::read_to_string(&args_file).unwrap();
    let expected = [
        "wal-fetch",
        "--from",
        store.to_str().unwrap(),
        "--cluster",
        "main",
        "--prefetch",
        "2",
        "--spool",
        hostile.to_str().unwrap(),
        "000000010000000000000003",
        "pg_wal/RECOVERYXLOG",
    ];
    assert_eq!(got.lines().collect::<Vec<_>>(), expected);
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn version_12_appends_and_signals_last() {
    let pgdata = tempfile::tempdir().unwrap();
    let p = pgdata.path();
    let auto = "# Do not edit this file manually!\nwork_mem = '8MB'";
    fs::write(p.join("postgresql.auto.conf"), auto).unwrap();
    fs::write(p.join("backup_label"), "label").unwrap();
    // Inherited from a standby's backup, and a stray recovery.conf.
    fs::write(p.join("standby.signal"), "").unwrap();
    fs::write(p.join("recovery.conf"), "standby_mode = on\n").unwrap();
    let s = RecoverySettings {
        target: Some((TargetKind::Xid, "771".into())),
        ..settings()
    };
    let files = write_recovery_config(p, 16, &s).unwrap();
    assert_eq!(
        names(p),
        ["backup_label", "postgresql.auto.conf", "recovery.signal"]
    );
    assert_eq!(files.config_file, p.join("postgresql.auto.conf"));
    assert_eq!(files.signal_file, Some(p.join("recovery.signal")));
    assert_eq!(files.created, [p.join("recovery.signal")]);
    assert_eq!(
        files.removed,
        [p.join("recovery.conf"), p.join("standby.signal")]
    );
    let conf = fs::read_to_string(p.join("postgresql.auto.conf")).unwrap();
    assert_eq!(conf, format!("{auto}\n{}", files.text));
    assert!(
        files
            .text
            .starts_with("# Recovery settings written by walden-restore at 20")
    );
    assert!(files.text.ends_with("restore_command = '/usr/bin/walden-restore wal-fetch --from /srv/store --cluster main %f %p'\nrecovery_target_xid = '771'\n"));
    assert_eq!(fs::read(p.join("recovery.signal")).unwrap(), b"");
    assert_eq!(mode(&p.join("recovery.signal")), 0o600);

    // A second run appends again (the server takes the last value of each setting).
    write_recovery_config(p, 16, &s).unwrap();
    let twice = fs::read_to_string(p.join("postgresql.auto.conf")).unwrap();
    assert_eq!(twice.matches("recovery_target_xid").count(), 2);
}

#[test]
fn version_12_standby_and_a_missing_auto_conf() {
    let pgdata = tempfile::tempdir().unwrap();
    let p = pgdata.path();
    fs::write(p.join("recovery.signal"), "").unwrap();
    let s = RecoverySettings {
        standby: true,
        primary_conninfo: Some("host=db1".into()),
        ..settings()
    };
    let files = write_recovery_config(p, 12, &s).unwrap();
    assert_eq!(names(p), ["postgresql.auto.conf", "standby.signal"]);
    assert_eq!(
        files.created,
        [p.join("postgresql.auto.conf"), p.join("standby.signal")]
    );
    assert_eq!(files.removed, [p.join("recovery.signal")]);
    assert_eq!(mode(&p.join("postgresql.auto.conf")), 0o600);
    assert_eq!(
        fs::read_to_string(p.join("postgresql.auto.conf")).unwrap(),
        files.text
    );
    assert!(files.text.ends_with("primary_conninfo = 'host=db1'\n"));
}

#[test]
fn version_11_writes_recovery_conf() {
    let pgdata = tempfile::tempdir().unwrap();
    let p = pgdata.path();
    fs::write(p.join("postgresql.auto.conf"), "# untouched\n").unwrap();
    fs::write(p.join("recovery.conf"), "standby_mode = 'on'\nold = 1\n").unwrap();
    let s = RecoverySettings {
        target: Some((TargetKind::Time, "2026-11-22 19:30:00+00".into())),
        action: Some("promote".into()),
        ..settings()
    };
    let files = write_recovery_config(p, 11, &s).unwrap();
    assert_eq!(names(p), ["postgresql.auto.conf", "recovery.conf"]);
    assert_eq!(files.config_file, p.join("recovery.conf"));
    assert_eq!(files.signal_file, None);
    assert!(files.created.is_empty() && files.removed.is_empty());
    assert_eq!(
        fs::read_to_string(p.join("recovery.conf")).unwrap(),
        files.text
    );
    assert!(files.text.ends_with(
        "recovery_target_time = '2026-11-22 19:30:00+00'\n\
         recovery_target_timeline = 'latest'\n\
         recovery_target_action = 'promote'\n"
    ));
    assert_eq!(mode(&p.join("recovery.conf")), 0o600);
    assert_eq!(
        fs::read_to_string(p.join("postgresql.auto.conf")).unwrap(),
        "# untouched\n"
    );
    let fresh = tempfile::tempdir().unwrap();
    let files = write_recovery_config(fresh.path(), 10, &s).unwrap();
    assert_eq!(files.created, [fresh.path().join("recovery.conf")]);
}
