//! Tests of the harness extensions and test utilities on real servers (no walden involved):
//! standby + promotion, pgbench and SQL load, pg_receivewal against the server's own files,
//! and the corrupting proxy in front of pg_receivewal.

use std::time::{Duration, Instant};

use walden::wal::{Lsn, TimelineId, segment_file_name};

use super::corrupt_proxy::{CorruptProxy, Trigger};
use super::store::StoreView;
use super::{assert_same_as, assert_waldump_ok};
use crate::harness::*;

const T: Duration = Duration::from_secs(30);

proto_test!(standby_streams_and_promotes, |pg: &Pg| {
    let t0 = Instant::now();
    let primary = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    primary.pgbench_init(1);
    let standby = primary.start_standby(&[]);
    let ready = t0.elapsed();
    let out = primary.pgbench(2, 1, Duration::from_secs(2)).wait();
    assert!(
        out.contains("number of transactions actually processed"),
        "{out}"
    );
    standby.wait_replayed(primary.current_lsn());
    let count = "select count(*) from pgbench_history";
    assert_eq!(standby.psql(count), primary.psql(count));
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");
    standby.promote();
    let sw = standby.switch_wal();
    assert!(sw.segment.starts_with("00000002"), "{sw:?}");
    assert!(standby.pg_wal_file("00000002.history").is_some());
    println!(
        "PostgreSQL {}: primary + pgbench -i + standby {ready:?}, total {:?}",
        pg.major,
        t0.elapsed()
    );
});

proto_test!(receivewal_matches_the_server_files, |pg: &Pg| {
    let t0 = Instant::now();
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    let size = srv.wal_seg_size();
    srv.create_physical_slot("pgrw");
    let mut rw = srv.start_receivewal(&srv.dir().join("pgrw"), "pgrw");
    srv.generate_wal(3 << 20);
    let sw = srv.switch_wal();
    rw.wait_for_segment(&sw.segment, T);
    assert!(rw.is_running());
    let mut names: Vec<String> = std::fs::read_dir(rw.dir())
        .expect("read the pg_receivewal directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    let missing = assert_same_as(
        |n| std::fs::read(rw.file(n)).expect("read a pg_receivewal segment"),
        &names,
        &srv.data_dir().join("pg_wal"),
        || rw.log(),
    );
    assert!(missing.is_empty(), "not in pg_wal: {missing:?}");
    assert_waldump_ok(&srv, rw.dir(), &names[0], &sw.segment);

    // Some WAL into the next segment, received (written) by pg_receivewal before it stops.
    srv.psql("create table after_switch (v text); insert into after_switch values ('x')");
    let end = srv.insert_lsn();
    wait_for(
        "pg_receivewal to write the last insert",
        T,
        || {
            srv.psql(&format!(
                "select write_lsn >= '{end}' from pg_stat_replication"
            )) == "t"
        },
        || rw.log(),
    );
    let status = rw.stop();
    assert!(status.success(), "pg_receivewal exited {status}");

    // The store view reads a store laid out as walden's from pg_receivewal's files.
    let store_dir = srv.dir().join("store");
    for entry in std::fs::read_dir(srv.dir().join("pgrw"))
        .expect("read")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let sub = store_dir.join("main/wal").join(&name[..16]);
        std::fs::create_dir_all(&sub).expect("create a store directory");
        std::fs::copy(entry.path(), sub.join(&name)).expect("copy into the store");
    }
    let cluster = store_dir.join("main");
    std::fs::write(
        cluster.join("cluster.json"),
        format!(r#"{{"system_identifier": "{}"}}"#, srv.system_identifier()),
    )
    .expect("write cluster.json");
    std::fs::write(
        cluster.join("gaps.json"),
        r#"[{"timeline": 1, "from": "0/1000000", "to": "0/3000000", "reason": "removed"}]"#,
    )
    .expect("write gaps.json");
    let store = StoreView::new(&store_dir, "main", size);
    assert_eq!(store.completed(), names);
    let partial = format!(
        "{}.partial",
        segment_file_name(TimelineId(1), end.segno(size), size)
    );
    assert_eq!(
        store.partials(),
        vec![partial.clone()],
        "{}",
        store.listing()
    );
    let valid = store.end_of_valid_wal(pg.major).expect("a partial");
    assert!(
        valid >= end && valid.segno(size) == end.segno(size),
        "{valid} vs {end}"
    );
    assert_eq!(store.valid_end(&partial, pg.major), Some(valid));
    assert_eq!(
        store.cluster_json()["system_identifier"].as_str(),
        Some(srv.system_identifier().to_string().as_str())
    );
    let gaps = store.gaps();
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].from, gaps[0].to),
        (Lsn(0x100_0000), Lsn(0x300_0000))
    );
    assert!(store.history(2).is_none() && store.history_timelines().is_empty());
    println!("PostgreSQL {}: {:?}", pg.major, t0.elapsed());
});

proto_test!(proxy_flips_one_wal_byte, |pg: &Pg| {
    let t0 = Instant::now();
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    let size = srv.wal_seg_size();
    let proxy = CorruptProxy::start(srv.port());
    let via_proxy = |user: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres sslmode=disable",
            proxy.port()
        )
    };
    assert_eq!(
        srv.psql_conn(&via_proxy(U_POSTGRES), "select 6 * 7")
            .as_deref(),
        Ok("42")
    );
    srv.psql("create table marked (v text)");
    srv.create_physical_slot("pgrw");
    let rw = srv.start_receivewal_conn(&via_proxy(U_TRUST), &srv.dir().join("pgrw"), "pgrw");
    wait_for(
        "pg_receivewal to stream through the proxy",
        T,
        || srv.psql("select count(*) from pg_stat_replication where state = 'streaming'") == "1",
        || rw.log(),
    );
    let marker = "walden-corrupt-proxy-marker:";
    proxy.arm(Trigger::Marker(marker.as_bytes().to_vec()));
    srv.psql(&format!("insert into marked select repeat('{marker}', 50)"));
    wait_for(
        "the proxy to flip a byte",
        T,
        || proxy.flipped().is_some(),
        || rw.log(),
    );
    let flipped = proxy.flipped().expect("flipped");
    let sw = srv.switch_wal();
    rw.wait_for_segment(&sw.segment, T);
    let name = segment_file_name(TimelineId(1), flipped.segno(size), size);
    let theirs = srv
        .pg_wal_file(&name)
        .expect("the server still has the segment");
    let ours = std::fs::read(rw.file(&name)).expect("pg_receivewal has the segment");
    let diffs: Vec<usize> = (0..ours.len()).filter(|&i| ours[i] != theirs[i]).collect();
    let at = flipped.segment_offset(size) as usize;
    assert_eq!(
        diffs,
        vec![at],
        "only the byte at {flipped} ({name} offset {at:#X}) differs"
    );
    assert_eq!(ours[at], theirs[at] ^ 0xFF);
    assert!(
        name <= sw.segment,
        "flipped in {name}, after the switch ({sw:?})"
    );
    println!("PostgreSQL {}: {:?}", pg.major, t0.elapsed());
});

proto_test!(system_option_gives_another_system_identifier, |pg: &Pg| {
    let a = pg.start();
    let b = pg.start();
    let c = pg.start_with(ServerOptions::default().system(1));
    assert_eq!(a.system_identifier(), b.system_identifier());
    assert_ne!(a.system_identifier(), c.system_identifier());
    assert_eq!(c.wal_seg_size().bytes(), 16 << 20);
});
