//! The client against the real server (plain HTTP on loopback) on a fabricated store: what
//! it reads must be what a local read of the same store gives.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::daemon::http::testing::{BACKUP, Fixed, TOKEN, TestServer, fixture, store};
use crate::restore::recovery::remote_restore_command;
use crate::restore::wal_fetch::{Delivered, FetchError, WalFetcher};
use crate::restore::{Source, from_args};

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    fs::write(&path, format!("{token}\n")).unwrap();
    path
}

fn spec(server: &TestServer, token_file: PathBuf) -> RemoteSpec {
    RemoteSpec {
        url: format!("http://{}", server.addr),
        token_file: Some(token_file),
        ca_file: None,
    }
}

fn main() -> ClusterName {
    ClusterName::default()
}

#[test]
fn wal_fetch_over_http_delivers_what_a_local_fetch_delivers() {
    let dir = store();
    let server = TestServer::start(dir.path(), Arc::new(Fixed::new(true)));
    let work = tempfile::tempdir().unwrap();
    let source = Source::Remote(spec(&server, token_file(work.path(), TOKEN)));
    let remote = WalFetcher::open_source(&source, &main()).unwrap();
    let local = WalFetcher::open(dir.path(), &main()).unwrap();
    let (at_remote, at_local) = (work.path().join("remote"), work.path().join("local"));
    for name in [
        "000000010000000000000007",
        "000000010000000000000008",
        "000000010000000000000009",
        "00000002.history",
    ] {
        let request = remote.request(name).unwrap();
        let got = remote.fetch(request, &at_remote, None).unwrap();
        let want = local.fetch(request, &at_local, None).unwrap();
        assert_eq!(got, want, "{name}");
        assert!(
            fs::read(&at_remote).unwrap() == fs::read(&at_local).unwrap(),
            "{name}: the same bytes"
        );
    }
    // The .zst was decompressed and the .partial cut and zero-filled, as locally.
    let request = remote.request("000000010000000000000008").unwrap();
    assert_eq!(
        remote.fetch(request, &at_remote, None).unwrap(),
        Some(Delivered::Segment { compressed: true })
    );
    assert!(fs::read(&at_remote).unwrap() == fixture("000000010000000000000008"));
    let request = remote.request("000000010000000000000009").unwrap();
    assert!(matches!(
        remote.fetch(request, &at_remote, None).unwrap(),
        Some(Delivered::Partial { .. })
    ));
    for absent in ["00000001000000000000000A", "00000003.history"] {
        let request = remote.request(absent).unwrap();
        assert_eq!(remote.fetch(request, &at_remote, None).unwrap(), None);
    }
}

#[test]
fn prefetch_over_http_fills_the_spool() {
    let dir = store();
    let server = TestServer::start(dir.path(), Arc::new(Fixed::new(true)));
    let work = tempfile::tempdir().unwrap();
    let source = Source::Remote(spec(&server, token_file(work.path(), TOKEN)));
    let fetcher = WalFetcher::open_source(&source, &main()).unwrap();
    let spool = crate::restore::wal_fetch::Spool::open(&work.path().join("spool")).unwrap();
    // After 6: 7 (plain) and 8 (.zst) are spooled; 9 is only a .partial, where it stops.
    let copied = fetcher
        .fill_spool(&spool, TimelineId(1), SegNo(6), 4)
        .unwrap();
    assert_eq!(copied, 2);
    assert!(
        fs::read(spool.dir().join("000000010000000000000008")).unwrap()
            == fixture("000000010000000000000008")
    );
}

#[test]
fn a_wrong_token_is_refused_and_an_unreachable_server_is_a_fault() {
    let dir = store();
    let server = TestServer::start(dir.path(), Arc::new(Fixed::new(true)));
    let work = tempfile::tempdir().unwrap();
    let source = Source::Remote(spec(&server, token_file(work.path(), "wrong")));
    let started = std::time::Instant::now();
    let err = WalFetcher::open_source(&source, &main()).unwrap_err();
    assert!(
        matches!(err, FetchError::Store(StoreError::Unauthorized { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("refused the token (401)"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1100),
        "a 401 is not retried"
    );

    let missing = RemoteSpec {
        token_file: Some(work.path().join("absent")),
        ..spec(&server, PathBuf::new())
    };
    let err = RemoteStore::new(&missing).unwrap_err();
    assert!(
        err.to_string().contains("cannot read the token file"),
        "{err}"
    );

    // Nobody listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = RemoteSpec {
        url: format!("http://127.0.0.1:{port}"),
        token_file: Some(token_file(work.path(), TOKEN)),
        ca_file: None,
    };
    let started = std::time::Instant::now();
    let err = WalFetcher::open_source(&Source::Remote(dead), &main()).unwrap_err();
    assert!(
        matches!(err, FetchError::Store(StoreError::Remote { .. })),
        "{err}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1200),
        "retried twice first"
    );
}

#[test]
fn backups_wal_history_and_gaps_read_over_http_match_the_store() {
    let dir = store();
    let server = TestServer::start(dir.path(), Arc::new(Fixed::new(true)));
    let work = tempfile::tempdir().unwrap();
    let remote = RemoteStore::new(&spec(&server, token_file(work.path(), TOKEN)))
        .unwrap()
        .cluster(&main())
        .unwrap();
    let local = crate::store::ClusterReader::open(dir.path(), &main()).unwrap();
    assert_eq!(remote.info(), local.info());

    let backups = remote.backups().unwrap();
    assert_eq!(
        backups.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        [BACKUP]
    );
    let files = remote.backup_files(BACKUP);
    let read = |name: &str| {
        let mut out = Vec::new();
        files.open(name).unwrap().read_to_end(&mut out).unwrap();
        out
    };
    assert_eq!(read("base.tar"), b"the base archive");
    assert_eq!(read("config/my conf"), b"x = 1\n");
    for absent in ["nosuch.tar", "../cluster.json", "unlisted.txt"] {
        let err = files.open(absent).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{absent}");
    }

    let names = |list: Vec<StoredSegment>| -> Vec<(WalFileName, u64)> {
        list.into_iter().map(|s| (s.name, s.size)).collect()
    };
    assert_eq!(
        names(remote.list_wal().unwrap()),
        names(local.list_wal().unwrap())
    );
    assert_eq!(
        remote.history_files().unwrap(),
        local.history_files().unwrap()
    );
    assert_eq!(
        remote.read_history(TimelineId(2)).unwrap(),
        local.read_history(TimelineId(2)).unwrap()
    );
    assert_eq!(remote.read_history(TimelineId(3)).unwrap(), None);
    assert_eq!(remote.gaps().unwrap(), local.gaps().unwrap());
    let found = remote
        .find_segment(TimelineId(1), SegNo(8))
        .unwrap()
        .unwrap();
    assert!(found.name.compressed && !found.name.partial);
    assert_eq!(
        found.size,
        local
            .find_segment(TimelineId(1), SegNo(8))
            .unwrap()
            .unwrap()
            .size
    );
    assert_eq!(remote.find_segment(TimelineId(1), SegNo(10)).unwrap(), None);

    let err = RemoteStore::new(&spec(&server, token_file(work.path(), TOKEN)))
        .unwrap()
        .cluster(&ClusterName::new("other").unwrap())
        .unwrap_err();
    assert!(matches!(err, StoreError::NoCluster { .. }), "{err}");
}

#[test]
fn urls_are_told_from_paths() {
    assert!(RemoteSpec::parse("/srv/store", None, None).is_none());
    assert!(RemoteSpec::parse("store", None, None).is_none());
    for (from, url) in [
        ("https://archive:7480", "https://archive:7480"),
        ("https://archive:7480/", "https://archive:7480"),
        ("HTTP://[::1]:7480", "HTTP://[::1]:7480"),
    ] {
        let spec = RemoteSpec::parse(from, None, None).unwrap().unwrap();
        assert_eq!(spec.url, url);
    }
    for bad in [
        "https://",
        "https://archive:7480/v1",
        "http://a?x",
        "http://user@a",
    ] {
        assert!(
            RemoteSpec::parse(bad, None, None).unwrap().is_err(),
            "{bad}"
        );
    }
    assert_eq!(
        Source::new("/srv/store", None, None).unwrap(),
        Source::Local(PathBuf::from("/srv/store"))
    );
}

#[test]
fn restore_command_names_the_token_file_never_the_token() {
    let spec = RemoteSpec {
        url: "https://archive:7480".into(),
        token_file: Some(PathBuf::from("/etc/walden/token")),
        ca_file: Some(PathBuf::from("/etc/walden/my ca.pem")),
    };
    let exe = Path::new("/usr/bin/walden-restore");
    assert_eq!(
        remote_restore_command(exe, &spec, &main(), 0, None).unwrap(),
        "/usr/bin/walden-restore wal-fetch --from https://archive:7480 --token-file /etc/walden/token --ca-file '/etc/walden/my ca.pem' --cluster main %f %p"
    );
    let relative = RemoteSpec {
        token_file: Some(PathBuf::from("token")),
        ..spec.clone()
    };
    assert!(remote_restore_command(exe, &relative, &main(), 0, None).is_err());
    assert_eq!(
        from_args(&Source::Remote(spec)),
        [
            "--from",
            "https://archive:7480",
            "--token-file",
            "/etc/walden/token",
            "--ca-file",
            "/etc/walden/my ca.pem"
        ]
        .map(std::ffi::OsString::from)
    );
}
