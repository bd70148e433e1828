//! The server on a fabricated store, spoken to with raw HTTP/1.1 so that every byte of the
//! request (odd paths included) is ours.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;

use super::testing::{BACKUP, Fixed, SYSID, TOKEN, TestServer, fixture, store};
use super::*;

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request exactly as given and reads the whole answer.
fn request(addr: SocketAddr, method: &str, target: &str, auth: Option<&str>) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn get(addr: SocketAddr, target: &str) -> Answer {
    request(addr, "GET", target, Some(&format!("Bearer {TOKEN}")))
}

fn fixed(healthy: bool) -> Arc<Fixed> {
    Arc::new(Fixed::new(healthy))
}

#[test]
fn healthz_needs_no_token_and_follows_the_status_source() {
    let dir = store();
    let status = fixed(true);
    let server = TestServer::start(dir.path(), status.clone());
    let a = request(server.addr, "GET", "/healthz", None);
    assert_eq!((a.status, a.text().as_str()), (200, "ok\n"));
    status.set(false);
    let a = request(server.addr, "GET", "/healthz", None);
    assert_eq!((a.status, a.text().as_str()), (503, "unhealthy\n"));
}

#[test]
fn a_missing_or_wrong_token_gets_the_same_401_for_every_path() {
    let dir = store();
    let server = TestServer::start(dir.path(), fixed(true));
    let paths = [
        "/status",
        "/metrics",
        "/v1/clusters/main/info",
        "/v1/clusters/main/wal/000000010000000000000007",
        "/v1/clusters/main/wal/0000000100000000000000FF",
        "/v1/clusters/nosuch/info",
        &format!("/v1/clusters/main/backups/{BACKUP}/base.tar"),
        &format!("/v1/clusters/main/backups/{BACKUP}/nosuch.tar"),
        "/v1/clusters/%2e%2e/etc/passwd",
        "/nothing/here",
    ];
    let wrong = [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer{TOKEN}")),
        Some("Bearer ".to_string()),
    ];
    let mut first: Option<(String, Option<String>)> = None;
    for path in paths {
        for auth in &wrong {
            for method in ["GET", "POST"] {
                let a = request(server.addr, method, path, auth.as_deref());
                assert_eq!(a.status, 401, "{method} {path} with {auth:?}");
                assert_eq!(
                    a.headers.get("www-authenticate").map(String::as_str),
                    Some("Bearer realm=\"walden\"")
                );
                let seen = (a.text(), a.headers.get("content-length").cloned());
                match &first {
                    None => first = Some(seen),
                    Some(f) => assert_eq!(&seen, f, "{path}: the 401 must not differ"),
                }
            }
        }
    }
    // The scheme is case-insensitive; surrounding blanks are not part of the token.
    for auth in [format!("bearer {TOKEN}"), format!("BEARER  {TOKEN} ")] {
        let a = request(server.addr, "GET", "/v1/clusters/main/info", Some(&auth));
        assert_eq!(a.status, 200, "{auth}");
    }
}

#[test]
fn the_store_api_serves_what_the_store_holds() {
    let dir = store();
    let server = TestServer::start(dir.path(), fixed(true));
    let main = dir.path().join("main");

    let a = get(server.addr, "/v1/clusters");
    assert_eq!(
        serde_json::from_slice::<Vec<String>>(&a.body).unwrap(),
        ["main"]
    );

    let a = get(server.addr, "/v1/clusters/main/info");
    assert_eq!(a.status, 200);
    assert_eq!(a.body, fs::read(main.join("cluster.json")).unwrap());

    let a = get(server.addr, "/v1/clusters/main/backups");
    let list: Vec<crate::http_api::BackupEntry> = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(list.len(), 1, "only the complete backup: {}", a.text());
    assert_eq!(list[0].id, BACKUP);
    assert_eq!(list[0].backup["stop_time"], "2026-11-22T19:31:00Z");

    let file = |name: &str| {
        get(
            server.addr,
            &format!("/v1/clusters/main/backups/{BACKUP}/{name}"),
        )
    };
    assert_eq!(file("base.tar").body, b"the base archive");
    assert_eq!(file("backup_manifest").body, b"{\"manifest\": 1}");
    assert_eq!(file("config/postgresql.conf").body, b"port = 5432\n");
    assert_eq!(file("config/my%20conf").body, b"x = 1\n");
    assert_eq!(file("backup.json").status, 200);

    let wal = |name: &str| get(server.addr, &format!("/v1/clusters/main/wal/{name}"));
    let seg = |name: &str| fs::read(main.join("wal/0000000100000000").join(name)).unwrap();
    for (name, stored) in [
        ("000000010000000000000007", "000000010000000000000007"),
        ("000000010000000000000008", "000000010000000000000008.zst"),
        (
            "000000010000000000000009",
            "000000010000000000000009.partial",
        ),
    ] {
        let a = wal(name);
        assert_eq!(a.status, 200, "{name}");
        assert_eq!(
            a.headers.get(STORED_AS_HEADER).map(String::as_str),
            Some(stored)
        );
        assert!(a.body == seg(stored), "{name}: the stored bytes, as stored");
    }
    assert_eq!(wal("00000001000000000000000A").status, 404);

    let a = get(server.addr, "/v1/clusters/main/wal");
    let list: Vec<crate::http_api::WalEntry> = serde_json::from_slice(&a.body).unwrap();
    let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "000000010000000000000007",
            "000000010000000000000008.zst",
            "000000010000000000000009.partial"
        ]
    );
    assert_eq!(list[0].size, 1 << 20);

    assert_eq!(
        get(server.addr, "/v1/clusters/main/history").text(),
        "[\n  2\n]\n"
    );
    let a = get(server.addr, "/v1/clusters/main/history/2");
    assert_eq!(a.body, fixture("00000002.history"));
    assert_eq!(get(server.addr, "/v1/clusters/main/history/3").status, 404);

    let a = get(server.addr, "/v1/clusters/main/gaps");
    let gaps: Vec<crate::store::Gap> = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(gaps.len(), 1);

    let a = get(server.addr, "/status");
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.text(), "{\n  \"fixed\": true\n}\n");
    let a = get(server.addr, "/metrics");
    assert!(a.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    assert_eq!(
        a.text(),
        "# HELP walden_test A test gauge\n# TYPE walden_test gauge\nwalden_test{cluster=\"main\"} 1\n"
    );
}

const STORED_AS_HEADER: &str = crate::http_api::STORED_AS;

#[test]
fn traversal_and_bad_names_find_nothing() {
    let dir = store();
    let server = TestServer::start(dir.path(), fixed(true));
    let b = format!("/v1/clusters/main/backups/{BACKUP}");
    let attempts = [
        "/v1/clusters/../main/cluster.json".to_string(),
        "/v1/clusters/main/../main/info".to_string(),
        "/v1/clusters/%2e%2e/main/info".to_string(),
        "/v1/clusters/.main/info".to_string(),
        "/v1/clusters//main/info".to_string(),
        "/v1/clusters/main//info".to_string(),
        "//etc/passwd".to_string(),
        "/etc/passwd".to_string(),
        "/v1/clusters/main/info/".to_string(),
        format!("{b}/../../../cluster.json"),
        format!("{b}/%2e%2e/%2e%2e/%2e%2e/cluster.json"),
        format!("{b}/%2E%2E%2F%2E%2E%2Fcluster.json"),
        format!("{b}/config/..%2f..%2fcluster.json"),
        format!("{b}/config/%2e%2e/backup.json"),
        format!("{b}/unlisted.txt"),
        format!("{b}/link.tar"),
        format!("{b}/%2Fetc%2Fpasswd"),
        format!("{b}/base.tar%00"),
        format!("{b}/config"),
        "/v1/clusters/main/backups/20261123T000000Z.partial/backup.json".to_string(),
        "/v1/clusters/main/backups/20261123T000000Z/backup.json".to_string(),
        "/v1/clusters/main/backups/..%2f..%2fmain/backup.json".to_string(),
        "/v1/clusters/main/wal/000000010000000000000008.zst".to_string(),
        "/v1/clusters/main/wal/000000010000000000000009.partial".to_string(),
        "/v1/clusters/main/wal/0000000100000000%2f000000010000000000000007".to_string(),
        "/v1/clusters/main/wal/..%2f..%2fcluster.json".to_string(),
        "/v1/clusters/main/wal/".to_string(),
        "/v1/clusters/main/history/0".to_string(),
        "/v1/clusters/main/history/-2".to_string(),
        "/v1/clusters/main/history/+2".to_string(),
        "/v1/clusters/main/history/00000002.history".to_string(),
        "/v1/clusters/main/history/%2e%2e".to_string(),
        "/v1/clusters/main/history/99999999999".to_string(),
    ];
    for path in &attempts {
        let a = get(server.addr, path);
        assert_eq!(a.status, 404, "{path}: {}", a.text());
        assert_eq!(a.text(), "not found\n", "{path}");
    }
    // The absolute form of a request target is read for its path only.
    let a = get(server.addr, "http://localhost/etc/passwd");
    assert_eq!(a.status, 404);
}

#[test]
fn only_get_and_head_and_head_has_no_body() {
    let dir = store();
    let server = TestServer::start(dir.path(), fixed(true));
    let auth = format!("Bearer {TOKEN}");
    let a = request(server.addr, "DELETE", "/v1/clusters/main/info", Some(&auth));
    assert_eq!(a.status, 405);
    assert_eq!(a.headers["allow"], "GET, HEAD");
    let a = request(
        server.addr,
        "HEAD",
        "/v1/clusters/main/wal/000000010000000000000008",
        Some(&auth),
    );
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());
    assert_eq!(a.headers[STORED_AS_HEADER], "000000010000000000000008.zst");
    let stored = dir
        .path()
        .join("main/wal/0000000100000000/000000010000000000000008.zst");
    assert_eq!(
        a.headers["content-length"],
        fs::metadata(stored).unwrap().len().to_string()
    );
}

#[test]
fn a_large_file_is_streamed_in_bounded_frames() {
    use hyper::body::Body as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let len: u64 = 256 << 20;
    let file = fs::File::create(&path).unwrap();
    file.set_len(len).unwrap(); // sparse: costs no disk
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (frames, total, largest) = rt.block_on(async {
        let mut body = Body::file(fs::File::open(&path).unwrap(), len);
        assert_eq!(body.size_hint().exact(), Some(len));
        let (mut frames, mut total, mut largest) = (0u64, 0u64, 0usize);
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let data = frame.unwrap().into_data().unwrap();
            largest = largest.max(data.len());
            total += data.len() as u64;
            frames += 1;
        }
        assert!(body.is_end_stream());
        (frames, total, largest)
    });
    assert_eq!(total, len);
    assert!(largest <= CHUNK, "a frame of {largest} bytes");
    assert!(frames >= len / CHUNK as u64);

    // A file shorter than announced ends in an error, not a short body that looks whole.
    let short = dir.path().join("short");
    fs::write(&short, b"abc").unwrap();
    let errored = rt.block_on(async {
        let mut body = Body::file(fs::File::open(&short).unwrap(), 10);
        let mut errored = false;
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            errored |= frame.is_err();
        }
        errored
    });
    assert!(errored);
}

#[test]
fn a_large_file_arrives_whole_over_the_connection() {
    let dir = store();
    let big = dir.path().join(format!("main/backups/{BACKUP}/base.tar"));
    let len: u64 = 64 << 20;
    fs::File::create(&big).unwrap().set_len(len).unwrap();
    let server = TestServer::start(dir.path(), fixed(true));
    let mut stream = TcpStream::connect(server.addr).unwrap();
    write!(
        stream,
        "GET /v1/clusters/main/backups/{BACKUP}/base.tar HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    // Read in small pieces, counting: the client side stays small too.
    let mut buf = [0u8; 8192];
    let mut received: u64 = 0;
    let mut head = Vec::new();
    let mut in_body = false;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if in_body {
            received += n as u64;
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            received += (head.len() - end - 4) as u64;
            head.truncate(end);
            in_body = true;
        }
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {len}")), "{head}");
    assert_eq!(received, len);
}

#[test]
fn the_store_status_reports_clusters_and_metrics() {
    let dir = store();
    fs::write(
        dir.path().join("main/status.json"),
        r#"{"healthy": true, "receiver": "streaming"}"#,
    )
    .unwrap();
    let status = StoreStatus::new(dir.path());
    let json = status.status_json();
    assert_eq!(json["healthy"], true, "{json:#}");
    assert_eq!(json["clusters"][0]["cluster"], "main");
    assert_eq!(json["clusters"][0]["daemon"]["receiver"], "streaming");
    assert_eq!(
        json["clusters"][0]["listing"]["system_identifier"], SYSID,
        "{json:#}"
    );
    assert!(json["free_bytes"].as_u64().is_some());
    assert!(status.healthy());
    let metrics = status.metrics();
    for line in [
        "# TYPE walden_backups gauge",
        "walden_backups{cluster=\"main\"} 1",
        "walden_backup_in_progress{cluster=\"main\"} 0",
        "walden_last_backup_timestamp_seconds{cluster=\"main\"} 1795375860",
        "walden_wal_segments{cluster=\"main\"} 3",
        "walden_wal_gaps{cluster=\"main\"} 1",
        "walden_cluster_healthy{cluster=\"main\"} 1",
        "walden_healthy 1",
        "# HELP walden_store_free_bytes Bytes available on the store's filesystem",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} not in\n{metrics}"
        );
    }
    // Every sample's family is announced with HELP and TYPE before it.
    let mut announced = std::collections::HashSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            announced.insert(rest.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(announced.contains(name), "{name} has no # TYPE\n{metrics}");
        }
    }

    // The daemon says the cluster is unhealthy: so is the store (after the cache expires,
    // so a fresh StoreStatus).
    fs::write(dir.path().join("main/status.json"), r#"{"healthy": false}"#).unwrap();
    let status = StoreStatus::new(dir.path());
    assert!(!status.healthy());
    assert!(
        status
            .metrics()
            .contains("walden_cluster_healthy{cluster=\"main\"} 0")
    );
}

#[test]
fn metric_labels_are_escaped() {
    let mut m = Metrics::new();
    m.gauge("x", "line\none")
        .sample("x", &[("a", "q\"b\\n\n")], 2.5);
    assert_eq!(
        m.finish(),
        "# HELP x line\\none\n# TYPE x gauge\nx{a=\"q\\\"b\\\\n\\n\"} 2.5\n"
    );
}

#[test]
fn the_token_file_is_trimmed_and_an_empty_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    fs::write(&path, format!("  {TOKEN}\n")).unwrap();
    let token = Token::read(&path).unwrap();
    assert!(token.matches(TOKEN.as_bytes()));
    assert!(!token.matches(b"s3cret-toke"));
    fs::write(&path, "\n \n").unwrap();
    assert!(matches!(
        Token::read(&path),
        Err(HttpError::EmptyToken { .. })
    ));
    assert!(matches!(
        Token::read(&dir.path().join("absent")),
        Err(HttpError::TokenRead { .. })
    ));
}
