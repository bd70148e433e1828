//! `Connection::start_base_backup`: the PostgreSQL 14 framing against a scripted fake WAL
//! sender serving real PostgreSQL 15 archives, and real servers (15, 16, 18) with a user
//! tablespace, server-side zstd (where built) and checksum failures (where data checksums are
//! on).

use std::path::Path;
use std::process::Command;

use walden::pg::{BackupEvent, BaseBackupOptions, ConnConfig, Connection, Error, SessionKind};
use walden::wal::{Lsn, TimelineId};

use crate::harness::{self, Pg, Server, postgres_cmd, proto_test, run_ok};
use crate::support::fake_walsender::{FakeWalSender, msg};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Everything a backup yielded.
#[derive(Debug, Default)]
struct Collected {
    /// The events in order, with runs of data events shown once (`ArchiveData*`).
    sequence: Vec<String>,
    started: Option<(Lsn, TimelineId)>,
    tablespaces: Vec<walden::pg::TablespaceInfo>,
    /// (name, tablespace location, bytes)
    archives: Vec<(String, Option<String>, Vec<u8>)>,
    progress: Vec<u64>,
    manifest: Vec<u8>,
    ended: Option<(Lsn, TimelineId)>,
    /// How the stream ended when it did not end with `None`, and the stream's end position
    /// at that moment.
    error: Option<(Error, Option<(Lsn, TimelineId)>)>,
}

async fn collect(conn: &mut Connection, opts: &BaseBackupOptions) -> Collected {
    let mut c = Collected::default();
    let mut stream = conn
        .start_base_backup(opts)
        .await
        .expect("start BASE_BACKUP");
    loop {
        let event = match stream.next().await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(e) => {
                let at = stream.end_position();
                let again = stream.next().await;
                assert!(again.is_err(), "the stream is over after an error");
                c.error = Some((e, at));
                break;
            }
        };
        let entry = match &event {
            BackupEvent::Started { start, timeline } => {
                c.started = Some((*start, *timeline));
                format!("Started {start} {timeline}")
            }
            BackupEvent::Tablespaces(t) => {
                c.tablespaces = t.clone();
                format!("Tablespaces {}", t.len())
            }
            BackupEvent::ArchiveBegin {
                name,
                tablespace_location,
            } => {
                c.archives
                    .push((name.clone(), tablespace_location.clone(), Vec::new()));
                format!("ArchiveBegin {name}")
            }
            BackupEvent::ArchiveData(d) => {
                c.archives
                    .last_mut()
                    .expect("data inside an archive")
                    .2
                    .extend_from_slice(d);
                "ArchiveData*".into()
            }
            BackupEvent::ArchiveEnd => "ArchiveEnd".into(),
            BackupEvent::Progress(p) => {
                c.progress.push(*p);
                "Progress*".into()
            }
            BackupEvent::ManifestData(d) => {
                c.manifest.extend_from_slice(d);
                "ManifestData*".into()
            }
            BackupEvent::ManifestEnd => "ManifestEnd".into(),
            BackupEvent::Ended { end, timeline } => {
                c.ended = Some((*end, *timeline));
                format!("Ended {end} {timeline}")
            }
        };
        if c.sequence.last() != Some(&entry) || !entry.ends_with('*') {
            c.sequence.push(entry);
        }
    }
    c
}

// --- PostgreSQL 14 framing, from a fake WAL sender -------------------------------------------

/// The archives and manifest of the captured PostgreSQL 15 stream
/// (fixtures/basebackup/pg15-stream.bin.zst), read with a minimal parser of its own.
struct Pg15Backup {
    /// (name, tablespace location, bytes, terminated as 15 sends them)
    archives: Vec<(String, String, Vec<u8>)>,
    manifest: Vec<u8>,
}

fn pg15_backup() -> Pg15Backup {
    let path = harness::repo_root().join("fixtures/basebackup/pg15-stream.bin.zst");
    let stream = zstd::stream::decode_all(&std::fs::read(path).expect("read the capture")[..])
        .expect("decompress the capture");
    let mut archives: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut manifest = Vec::new();
    let mut in_manifest = false;
    let mut at = 0;
    while at < stream.len() {
        let tag = stream[at];
        let len = u32::from_be_bytes(stream[at + 1..at + 5].try_into().unwrap()) as usize;
        let body = &stream[at + 5..at + 1 + len];
        at += 1 + len;
        if tag != b'd' {
            continue;
        }
        match body[0] {
            b'n' => {
                let mut parts = body[1..].split(|&b| b == 0);
                let name = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
                let location = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
                archives.push((name, location, Vec::new()));
            }
            b'm' => in_manifest = true,
            b'd' if in_manifest => manifest.extend_from_slice(&body[1..]),
            b'd' => archives.last_mut().unwrap().2.extend_from_slice(&body[1..]),
            _ => {}
        }
    }
    Pg15Backup { archives, manifest }
}

const FAKE_START: &str = "0/2000028";
const FAKE_END: &str = "0/2000100";

/// What a PostgreSQL 14 server sends for BASE_BACKUP, up to the end position result set,
/// with `archives` as tablespaces (user ones first, `base.tar` last).
fn pg14_reply(backup: &Pg15Backup) -> Vec<u8> {
    let position = |lsn: &str| {
        [
            msg::row_description(&[("recptr", 25), ("tli", 20)]),
            msg::data_row(&[Some(lsn), Some("1")]),
            msg::command_complete("SELECT"),
        ]
        .concat()
    };
    let mut r = position(FAKE_START);
    r.extend(msg::row_description(&[
        ("spcoid", 26),
        ("spclocation", 25),
        ("size", 20),
    ]));
    for (name, location, _) in &backup.archives {
        let row = match name.strip_suffix(".tar") {
            Some("base") => msg::data_row(&[None, None, Some("22943")]),
            Some(oid) => msg::data_row(&[Some(oid), Some(location), Some("18")]),
            None => panic!("unexpected archive {name}"),
        };
        r.extend(row);
    }
    r.extend(msg::command_complete("SELECT"));
    for (_, _, tar) in &backup.archives {
        // 14 leaves out the two zero blocks that end the tar.
        let unterminated = tar
            .strip_suffix(&[0u8; 1024][..])
            .expect("a terminated tar");
        r.extend(msg::copy_out());
        for chunk in unterminated.chunks(32 * 1024) {
            r.extend(msg::copy_data(chunk));
        }
        r.extend(msg::copy_done());
    }
    r.extend(msg::copy_out());
    for chunk in backup.manifest.chunks(8000) {
        r.extend(msg::copy_data(chunk));
    }
    r.extend(msg::copy_done());
    r.extend(position(FAKE_END));
    r
}

fn pg14_options() -> BaseBackupOptions {
    BaseBackupOptions {
        label: "walden 14 test".into(),
        fast_checkpoint: true,
        progress: true,
        wait_for_archive: false,
        tablespace_map: true,
        manifest: true,
        manifest_checksums: Some("CRC32C".into()),
        ..BaseBackupOptions::default()
    }
}

const PG14_COMMAND: &str = "BASE_BACKUP LABEL 'walden 14 test' PROGRESS FAST NOWAIT \
                            TABLESPACE_MAP MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'";

const PG14_PARAMETERS: [(&str, &str); 2] =
    [("server_version", "14.11"), ("integer_datetimes", "on")];

async fn connect_fake(fake: &FakeWalSender) -> Connection {
    let config = ConnConfig::parse(&fake.conninfo()).unwrap();
    Connection::connect(&config, SessionKind::Physical)
        .await
        .expect("connect to the fake WAL sender")
}

#[test]
fn pg14_framing_from_a_fake_wal_sender() {
    let backup = pg15_backup();
    assert_eq!(backup.archives.len(), 2, "a tablespace and base.tar");
    let mut reply = pg14_reply(&backup);
    reply.extend(msg::command_complete("BASE_BACKUP"));
    reply.extend(msg::ready());
    runtime().block_on(async {
        let fake = FakeWalSender::start(&PG14_PARAMETERS, vec![reply]).await;
        let mut conn = connect_fake(&fake).await;
        assert_eq!(conn.server_version().major(), 14);
        let c = collect(&mut conn, &pg14_options()).await;
        assert!(c.error.is_none(), "{:?}", c.error);
        conn.close().await;
        assert_eq!(fake.queries().await, [PG14_COMMAND]);

        let oid = backup.archives[0].0.strip_suffix(".tar").unwrap();
        assert_eq!(
            c.sequence,
            [
                format!("Started {FAKE_START} 1"),
                "Tablespaces 2".into(),
                format!("ArchiveBegin {oid}.tar"),
                "ArchiveData*".into(),
                "ArchiveEnd".into(),
                "ArchiveBegin base.tar".into(),
                "ArchiveData*".into(),
                "ArchiveEnd".into(),
                "ManifestData*".into(),
                "ManifestEnd".into(),
                format!("Ended {FAKE_END} 1"),
            ]
        );
        assert_eq!(c.tablespaces[0].oid, Some(oid.parse().unwrap()));
        assert_eq!(
            c.tablespaces[0].location.as_deref(),
            Some(&*backup.archives[0].1)
        );
        assert_eq!(c.tablespaces[0].size_kb, Some(18));
        assert_eq!(
            (
                c.tablespaces[1].oid,
                c.tablespaces[1].location.as_deref(),
                c.tablespaces[1].size_kb
            ),
            (None, None, Some(22943))
        );
        assert!(c.progress.is_empty(), "servers before 15 send no progress");
        // The reassembled archives equal the originals, end blocks included.
        for ((name, location, bytes), (orig_name, orig_location, orig)) in
            c.archives.iter().zip(&backup.archives)
        {
            assert_eq!(name, orig_name);
            let expected_location = (!orig_location.is_empty()).then_some(orig_location);
            assert_eq!(location.as_ref(), expected_location);
            assert!(bytes == orig, "{name} differs from the original");
        }
        assert_eq!(c.manifest, backup.manifest);
        let manifest = String::from_utf8(c.manifest).unwrap();
        assert!(
            manifest
                .trim_end()
                .lines()
                .last()
                .unwrap()
                .starts_with("\"Manifest-Checksum\"")
        );
    });
}

#[test]
fn pg14_checksum_failure_after_the_end_position() {
    let backup = pg15_backup();
    let mut reply = pg14_reply(&backup);
    reply.extend(msg::report(
        b'N',
        "WARNING",
        "XX001",
        "checksum verification failed in file \"./base/5/16384\", block 0",
    ));
    reply.extend(msg::report(
        b'E',
        "ERROR",
        "XX001",
        "checksum verification failure during base backup",
    ));
    reply.extend(msg::ready());
    let show = [
        msg::row_description(&[("wal_segment_size", 25)]),
        msg::data_row(&[Some("16MB")]),
        msg::command_complete("SHOW"),
        msg::ready(),
    ]
    .concat();
    runtime().block_on(async {
        let fake = FakeWalSender::start(&PG14_PARAMETERS, vec![reply, show]).await;
        let mut conn = connect_fake(&fake).await;
        let c = collect(&mut conn, &pg14_options()).await;
        let (error, end_position) = c.error.expect("the backup fails");
        assert_eq!(error.sqlstate(), Some("XX001"), "{error}");
        assert_eq!(c.sequence.last().unwrap(), &format!("Ended {FAKE_END} 1"));
        assert_eq!(
            end_position,
            Some((FAKE_END.parse().unwrap(), TimelineId(1)))
        );
        assert_eq!(c.manifest, backup.manifest, "the data is complete");
        // The server was ready again: the session goes on.
        assert_eq!(conn.show("wal_segment_size").await.unwrap(), "16MB");
        conn.close().await;
        assert_eq!(
            fake.queries().await,
            [PG14_COMMAND, "SHOW wal_segment_size"]
        );
    });
}

// --- real servers --------------------------------------------------------------------------

async fn connect(srv: &Server) -> Connection {
    let config = ConnConfig::parse(&format!(
        "{} sslmode=disable",
        srv.conninfo(harness::U_TRUST)
    ))
    .unwrap();
    Connection::connect(&config, SessionKind::Physical)
        .await
        .unwrap()
}

/// Creates tablespace `ts1` in `<server dir>/ts1` with a small table; returns (oid, path).
fn add_tablespace(srv: &Server) -> (u32, String) {
    let dir = srv.dir().join("ts1");
    run_ok(postgres_cmd("mkdir").arg(&dir));
    let path = dir.display().to_string();
    srv.psql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{path}';\n\
         CREATE TABLE t_ts (id int, v text) TABLESPACE ts1;\n\
         INSERT INTO t_ts SELECT g, md5(g::text) FROM generate_series(1, 500) g;"
    ));
    let oid = srv
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'")
        .parse()
        .unwrap();
    (oid, path)
}

/// The member names of a tar file, as GNU tar lists them (fails on an invalid archive).
fn tar_list(file: &Path) -> Vec<String> {
    run_ok(Command::new("tar").arg("-tf").arg(file))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes each archive to `dir` (decompressing `.zst` ones) and checks it is a terminated tar;
/// returns the tar files.
fn write_archives(c: &Collected, dir: &Path) -> Vec<std::path::PathBuf> {
    c.archives
        .iter()
        .map(|(name, _, bytes)| {
            let (name, tar) = match name.strip_suffix(".zst") {
                Some(plain) => (
                    plain,
                    zstd::stream::decode_all(&bytes[..]).expect("a valid zstd frame"),
                ),
                None => (name.as_str(), bytes.clone()),
            };
            assert!(
                tar.len() >= 1024 && tar[tar.len() - 1024..].iter().all(|&b| b == 0),
                "{name} ends with two zero blocks"
            );
            let file = dir.join(name);
            std::fs::write(&file, &tar).unwrap();
            file
        })
        .collect()
}

fn check_backup(srv: &Server, c: &Collected, ts: (u32, &str), suffix: &str) {
    let (oid, ts_path) = ts;
    assert!(c.error.is_none(), "{:?}", c.error);
    let (start, start_tli) = c.started.expect("Started");
    let (end, end_tli) = c.ended.expect("Ended");
    assert!(start <= end, "{start} <= {end}");
    assert_eq!((start_tli, end_tli), (TimelineId(1), TimelineId(1)));

    assert_eq!(c.tablespaces.len(), 2, "{:?}", c.tablespaces);
    assert_eq!(c.tablespaces[0].oid, Some(oid));
    assert_eq!(c.tablespaces[0].location.as_deref(), Some(ts_path));
    assert_eq!(
        (c.tablespaces[1].oid, &c.tablespaces[1].location),
        (None, &None)
    );
    assert!(
        c.tablespaces.iter().all(|t| t.size_kb.is_some()),
        "PROGRESS gives sizes"
    );
    assert!(!c.progress.is_empty(), "15+ report progress");
    assert!(
        c.progress.windows(2).all(|w| w[0] <= w[1]),
        "{:?}",
        c.progress
    );

    let names: Vec<&str> = c.archives.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(
        names,
        [format!("{oid}.tar{suffix}"), format!("base.tar{suffix}")]
    );
    assert_eq!(c.archives[0].1.as_deref(), Some(ts_path));
    assert_eq!(c.archives[1].1, None);

    let files = write_archives(c, srv.dir());
    let ts_members = tar_list(&files[0]);
    assert!(
        ts_members[0].starts_with(&format!("PG_{}_", srv.major())),
        "{ts_members:?}"
    );
    let base_members = tar_list(&files[1]);
    assert_eq!(&base_members[..2], ["backup_label", "tablespace_map"]);
    assert!(base_members.iter().any(|m| m == "global/pg_control"));
    let map = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(&files[1])
            .arg("tablespace_map"),
    );
    assert_eq!(map, format!("{oid} {ts_path}\n"));
    let label = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(&files[1])
            .arg("backup_label"),
    );
    assert!(
        label.starts_with(&format!("START WAL LOCATION: {start} ")),
        "{label}"
    );

    let manifest = String::from_utf8(c.manifest.clone()).expect("manifest is text");
    assert!(manifest.contains("\"Path\": \"backup_label\""));
    let last = manifest.trim_end().lines().last().unwrap();
    assert!(last.starts_with("\"Manifest-Checksum\": \""), "{last}");
}

fn backup_options() -> BaseBackupOptions {
    BaseBackupOptions {
        label: "walden proto-test".into(),
        fast_checkpoint: true,
        progress: true,
        wait_for_archive: false,
        tablespace_map: true,
        manifest: true,
        ..BaseBackupOptions::default()
    }
}

proto_test!(base_backup_with_tablespace, |pg: &Pg| {
    let srv = pg.start();
    let (oid, path) = add_tablespace(&srv);
    runtime().block_on(async {
        let mut conn = connect(&srv).await;
        let c = collect(&mut conn, &backup_options()).await;
        check_backup(&srv, &c, (oid, &path), "");
        // The session is ready for more.
        conn.identify_system().await.unwrap();
        conn.close().await;
    });
});

proto_test!(base_backup_server_zstd, zstd, |pg: &Pg| {
    let srv = pg.start();
    let (oid, path) = add_tablespace(&srv);
    runtime().block_on(async {
        let mut conn = connect(&srv).await;
        let opts = BaseBackupOptions {
            server_compression: Some(("zstd".into(), Some("level=1".into()))),
            ..backup_options()
        };
        let c = collect(&mut conn, &opts).await;
        check_backup(&srv, &c, (oid, &path), ".zst");
        conn.close().await;
    });
});

proto_test!(base_backup_checksum_failure, |pg: &Pg| {
    let mut srv = pg.start();
    if srv.psql("SHOW data_checksums") != "on" {
        println!(
            "SKIP: PostgreSQL {} initdb leaves data checksums off",
            srv.major()
        );
        return;
    }
    srv.psql(
        "CREATE TABLE t_bad (id int, v text);\n\
         INSERT INTO t_bad SELECT g, md5(g::text) FROM generate_series(1, 50) g;\n\
         CHECKPOINT;",
    );
    let relation = srv.psql("SELECT pg_relation_filepath('t_bad')");
    srv.stop();
    let file = srv.data_dir().join(relation);
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() >= 8192, "one heap page");
    for b in &mut bytes[4000..4016] {
        *b ^= 0xA5;
    }
    std::fs::write(&file, &bytes).unwrap();
    srv.start();
    runtime().block_on(async {
        let mut conn = connect(&srv).await;
        let opts = BaseBackupOptions {
            verify_checksums: true,
            ..backup_options()
        };
        let c = collect(&mut conn, &opts).await;
        let (error, end_position) = c.error.expect("the backup fails");
        assert_eq!(error.sqlstate(), Some("XX001"), "{error}");
        assert!(c.ended.is_some(), "Ended came before the error");
        assert_eq!(end_position, c.ended);
        assert!(
            c.sequence.last().unwrap().starts_with("Ended "),
            "{:?}",
            c.sequence
        );
        assert!(!c.manifest.is_empty(), "the data is complete");
        conn.identify_system().await.unwrap();
        conn.close().await;
    });
    assert!(
        srv.log().contains("checksum verification failed in file"),
        "the server warned about the file"
    );
});
