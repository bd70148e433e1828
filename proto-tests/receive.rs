//! `walden receive` against real servers on every version: byte identity with the version's
//! own pg_receivewal, crash safety under `kill -9`, reconnection after a terminated walsender
//! and a server restart, following a promoted standby to timeline 2, synchronous mode, the
//! refusals (locked cluster, other system, corrupt WAL, unknown slot), 1 MB and 64 MB
//! segments, and WAL the server removed before walden got it (`gaps.json`).
//!
//! Every failure message quotes walden's output tail and, where useful, the store listing and
//! the server log tail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use walden::wal::{Lsn, SegNo, TimelineHistory, TimelineId, WalFileName, segment_file_name};

use crate::harness::*;
use crate::support::corrupt_proxy::{CorruptProxy, Trigger};
use crate::support::receiver::{Receiver, run_receive};
use crate::support::store::StoreView;
use crate::support::{Rng, assert_contiguous, assert_same_as, assert_waldump_ok};

/// Timeout for one step (a segment arriving, a reconnection, an exit).
const T: Duration = Duration::from_secs(30);

/// A new empty store directory in the server's test directory.
fn new_store(srv: &Server, name: &str) -> PathBuf {
    let dir = srv.dir().join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// The `main` cluster of `store` for `srv`'s segment size.
fn view(srv: &Server, store: &Path) -> StoreView {
    StoreView::new(store, "main", srv.wal_seg_size())
}

/// walden's output, the store listing and the server log tail.
fn context(w: &Receiver, store: &StoreView, srv: &Server) -> String {
    format!("{}\n{}\n{}", w.context(), store.listing(), srv.context())
}

/// The pid of walden's walsender (`application_name = 'walden'`) once it streams, other than
/// `not`; panics with the context when none appears within `T` or walden exits.
fn wait_walsender(srv: &Server, w: &mut Receiver, store: &StoreView, not: Option<u32>) -> u32 {
    let query = "select pid from pg_stat_replication \
                 where application_name = 'walden' and state = 'streaming'";
    let deadline = Instant::now() + T;
    loop {
        w.assert_running("while waiting for it to stream");
        let out = srv.psql(query);
        if let Some(pid) = out
            .lines()
            .filter_map(|l| l.parse().ok())
            .find(|p| Some(*p) != not)
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "walden did not stream (pg_stat_replication: {:?})\n{}",
            srv.psql("select application_name, state, sync_state from pg_stat_replication"),
            context(w, store, srv)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until walden's output contains `needle`.
fn wait_log(w: &mut Receiver, needle: &str) {
    let deadline = Instant::now() + T;
    while !w.output().contains(needle) {
        w.assert_running(&format!("while waiting for {needle:?} in its output"));
        assert!(
            Instant::now() < deadline,
            "walden never logged {needle:?}\n{}",
            w.context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the completed segment `name` is in the store.
fn wait_completed(store: &StoreView, w: &mut Receiver, srv: &Server, name: &str) {
    let deadline = Instant::now() + T;
    while !store.has_completed(name) {
        assert!(
            w.is_running() && Instant::now() < deadline,
            "{name} did not complete in the store (walden running: {})\n{}",
            w.is_running(),
            context(w, store, srv)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The start of the segment after the one holding `lsn`'s preceding byte: `--until` this
/// makes walden complete the segment `pg_switch_wal()` returned `lsn` for.
fn end_of_segment(lsn: Lsn, srv: &Server) -> Lsn {
    let size = srv.wal_seg_size();
    lsn.prev_segno(size).next().start_lsn(size)
}

/// Checks the store's completed segments against pg_receivewal's: no hole, every one present
/// there and byte-identical, at least `min` of them, and pg_waldump decodes them. Returns them.
fn check_against_receivewal(
    srv: &Server,
    store: &StoreView,
    rw: &ReceiveWal,
    min: usize,
    context: impl Fn() -> String,
) -> Vec<String> {
    let names = store.completed();
    assert!(
        names.len() >= min,
        "expected at least {min} completed segments\n{}",
        context()
    );
    assert_contiguous(&names, srv.wal_seg_size());
    let missing = assert_same_as(|n| store.read(n), &names, rw.dir(), &context);
    assert!(
        missing.is_empty(),
        "pg_receivewal does not have {missing:?} (it started later?)\n--- pg_receivewal log ---\n{}\n{}",
        log_tail(&rw.log(), 20),
        context()
    );
    let first = &names[0];
    let dir = store
        .segment_path(first)
        .parent()
        .map(Path::to_path_buf)
        .expect("segment directory");
    assert_waldump_ok(srv, &dir, first, &names[names.len() - 1]);
    names
}

proto_test!(byte_identical_to_pg_receivewal, |pg: &Pg| {
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    srv.create_physical_slot("pgrw");
    let rw = srv.start_receivewal(&srv.dir().join("pgrw"), "pgrw");
    let dir = new_store(&srv, "store");
    let store = view(&srv, &dir);
    let src = srv.conninfo(U_TRUST);
    let mut w = Receiver::start(&src, &dir, &["--slot", "walden", "--create-slot"]);
    wait_walsender(&srv, &mut w, &store, None);
    srv.pgbench_init(1);
    srv.pgbench(2, 1, Duration::from_secs(5)).wait();
    let sw = srv.switch_wal();
    wait_completed(&store, &mut w, &srv, &sw.segment);
    rw.wait_for_segment(&sw.segment, T);
    w.interrupt();
    check_against_receivewal(&srv, &store, &rw, 3, || context(&w, &store, &srv));

    let cluster = store.cluster_json();
    let sysid = srv.system_identifier().to_string();
    assert_eq!(
        cluster["system_identifier"].as_str(),
        Some(sysid.as_str()),
        "{cluster}"
    );
    assert_eq!(
        cluster["wal_segment_size"].as_u64(),
        Some(srv.wal_seg_size().bytes()),
        "{cluster}"
    );
    let version: u64 = srv
        .psql("show server_version_num")
        .parse()
        .expect("a number");
    assert_eq!(
        cluster["server_version_num"].as_u64(),
        Some(version),
        "{cluster}"
    );
    assert!(store.gaps().is_empty(), "{:?}", store.gaps());
});

proto_test!(survives_kill9_at_random_moments, |pg: &Pg| {
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    srv.create_physical_slot("pgrw");
    let rw = srv.start_receivewal(&srv.dir().join("pgrw"), "pgrw");
    let dir = new_store(&srv, "store");
    let store = view(&srv, &dir);
    let src = srv.conninfo(U_TRUST);
    let args = ["--slot", "walden", "--create-slot"];
    let mut w = Receiver::start(&src, &dir, &args);
    wait_walsender(&srv, &mut w, &store, None);
    srv.pgbench_init(1);
    let bench = srv.pgbench(2, 1, Duration::from_secs(15));
    let mut rng = Rng::from_clock();
    for kill in 1..=12 {
        std::thread::sleep(Duration::from_millis(rng.range(200, 2000)));
        w.assert_running(&format!("before kill -9 number {kill}"));
        w.kill9();
        w = Receiver::start(&src, &dir, &args);
    }
    bench.wait();
    // Let the last receiver get going (a SIGINT before it installed its handlers would kill
    // it outright), then stop it.
    wait_log(&mut w, "starting streaming");
    w.interrupt();
    let sw = srv.switch_wal();
    let until = end_of_segment(sw.lsn, &srv).to_string();
    let with_until: Vec<&str> = args.iter().copied().chain(["--until", &until]).collect();
    let mut last = Receiver::start(&src, &dir, &with_until);
    last.expect_exit(0, Duration::from_secs(60));
    assert!(
        store.has_completed(&sw.segment),
        "--until {until} exited 0 without completing {}\n{}",
        sw.segment,
        context(&last, &store, &srv)
    );
    rw.wait_for_segment(&sw.segment, T);
    let names = check_against_receivewal(&srv, &store, &rw, 5, || context(&last, &store, &srv));
    assert_eq!(names.last(), Some(&sw.segment));
});

proto_test!(
    reconnects_after_walsender_kill_and_server_restart,
    |pg: &Pg| {
        let mut srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
        srv.create_physical_slot("pgrw");
        let mut rw = srv.start_receivewal(&srv.dir().join("pgrw"), "pgrw");
        let dir = new_store(&srv, "store");
        let store = view(&srv, &dir);
        let mut w = Receiver::start(
            &srv.conninfo(U_TRUST),
            &dir,
            &["--slot", "walden", "--create-slot"],
        );
        let first = wait_walsender(&srv, &mut w, &store, None);
        srv.generate_wal(2 << 20);
        assert_eq!(
            srv.psql(&format!("select pg_terminate_backend({first})")),
            "t"
        );
        let second = wait_walsender(&srv, &mut w, &store, Some(first));
        w.assert_running("after its walsender was terminated");
        srv.generate_wal(2 << 20);
        srv.restart();
        wait_walsender(&srv, &mut w, &store, Some(second));
        w.assert_running("after the server restarted");
        srv.generate_wal(2 << 20);
        let sw = srv.switch_wal();
        wait_completed(&store, &mut w, &srv, &sw.segment);
        rw.wait_for_segment(&sw.segment, T);
        assert!(rw.is_running(), "pg_receivewal exited\n{}", rw.log());
        w.interrupt();
        let out = w.output();
        assert!(
            out.contains("WARN"),
            "no reconnection warning in walden's log\n{}",
            w.context()
        );
        check_against_receivewal(&srv, &store, &rw, 6, || context(&w, &store, &srv));
        assert!(store.gaps().is_empty(), "{:?}", store.gaps());
    }
);

proto_test!(follows_a_promoted_standby_to_timeline_2, |pg: &Pg| {
    let primary = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    let standby = primary.start_standby(&[]);
    let size = standby.wal_seg_size();
    let dir = new_store(&standby, "store");
    let store = view(&standby, &dir);
    let mut w = Receiver::start(
        &standby.conninfo(U_TRUST),
        &dir,
        &["--slot", "walden", "--create-slot"],
    );
    wait_walsender(&standby, &mut w, &store, None);
    primary.generate_wal(2 << 20);
    let sw1 = primary.switch_wal();
    standby.wait_replayed(sw1.lsn);
    wait_completed(&store, &mut w, &standby, &sw1.segment);
    primary.generate_wal(300 << 10);
    standby.wait_replayed(primary.current_lsn());
    standby.promote();
    standby.generate_wal(2 << 20);
    let sw2 = standby.switch_wal();
    assert!(sw2.segment.starts_with("00000002"), "{sw2:?}");
    wait_completed(&store, &mut w, &standby, &sw2.segment);
    w.interrupt();
    let ctx = || context(&w, &store, &standby);

    // The history file is the server's.
    let history = store
        .history(2)
        .unwrap_or_else(|| panic!("no 00000002.history in the store\n{}", ctx()));
    let server_history = standby
        .pg_wal_file("00000002.history")
        .expect("the promoted standby has its history file");
    assert_eq!(history.as_bytes(), server_history.as_slice());
    let parsed = TimelineHistory::parse(TimelineId(2), &history).expect("a valid history file");
    let switchpoint = parsed
        .switchpoint(TimelineId(1))
        .expect("timeline 1 ends in the history");

    // The timeline-1 segment of the switch stays partial, holding WAL up to the switch point.
    let switch_seg = switchpoint.segno(size);
    let tli1_name = segment_file_name(TimelineId(1), switch_seg, size);
    let tli1_partial = format!("{tli1_name}.partial");
    assert!(
        store.partials().contains(&tli1_partial) && !store.has_completed(&tli1_name),
        "expected {tli1_partial} (switch point {switchpoint}) and no completed {tli1_name}\n{}",
        ctx()
    );
    let end = store
        .valid_end(&tli1_partial, pg.major)
        .expect("parsable name");
    assert!(
        end >= switchpoint,
        "{tli1_partial} holds WAL up to {end} only, switch point {switchpoint}\n{}",
        ctx()
    );
    let off = switchpoint.segment_offset(size) as usize;
    let ours = store.read(&tli1_partial);
    let primary_seg = primary
        .pg_wal_file(&tli1_name)
        .expect("the primary still has the switch segment");
    assert!(
        ours.get(..off) == primary_seg.get(..off),
        "{tli1_partial} differs from the primary's {tli1_name} before the switch point\n{}",
        ctx()
    );

    // Completed segments on both timelines equal the servers' own files.
    let names = store.completed();
    let (tli1, tli2): (Vec<String>, Vec<String>) = names
        .iter()
        .cloned()
        .partition(|n| n.starts_with("00000001"));
    assert_contiguous(&tli1, size);
    assert_contiguous(&tli2, size);
    let tli2_first = segment_file_name(TimelineId(2), switch_seg, size);
    assert_eq!(tli2.first(), Some(&tli2_first), "{}", ctx());
    assert_eq!(tli2.last(), Some(&sw2.segment), "{}", ctx());
    assert_eq!(
        tli1.last()
            .map(|n| WalFileName::parse(n, size).map(|p| p.segno)),
        Some(Ok(SegNo(switch_seg.0 - 1))),
        "timeline 1 must be complete up to the switch segment\n{}",
        ctx()
    );
    let missing1 = assert_same_as(
        |n| store.read(n),
        &tli1,
        &primary.data_dir().join("pg_wal"),
        ctx,
    );
    assert!(
        missing1.len() < tli1.len(),
        "no timeline-1 segment compared\n{}",
        ctx()
    );
    let missing2 = assert_same_as(
        |n| store.read(n),
        &tli2,
        &standby.data_dir().join("pg_wal"),
        ctx,
    );
    assert!(
        missing2.is_empty(),
        "the standby lacks {missing2:?}\n{}",
        ctx()
    );
    assert!(
        store.read(&tli2_first).get(..off) == primary_seg.get(..off),
        "{tli2_first} does not start with timeline 1's WAL\n{}",
        ctx()
    );
});

proto_test!(synchronous_commit_is_stored_before_it_returns, |pg: &Pg| {
    let srv = pg.start_with(
        ServerOptions::default()
            .wal_segsize_mb(1)
            .conf("synchronous_standby_names = 'walden'"),
    );
    srv.psql("set synchronous_commit = local; create table sync_t (round int, note text)");
    let dir = new_store(&srv, "store");
    let store = view(&srv, &dir);
    let args = ["--synchronous", "--slot", "s", "--create-slot"];
    let mut previous = None;
    for round in 0..4 {
        let mut w = Receiver::start(&srv.conninfo(U_TRUST), &dir, &args);
        let pid = wait_walsender(&srv, &mut w, &store, previous);
        previous = Some(pid);
        let state = format!("select sync_state from pg_stat_replication where pid = {pid}");
        wait_for(
            "walden to be the synchronous standby",
            T,
            || srv.psql(&state) == "sync",
            || context(&w, &store, &srv),
        );
        // The commit waits for walden's flush report; a stuck one is cancelled and fails.
        let insert = format!(
            "insert into sync_t select {round}, repeat('x', 200 * {round});\n\
             select pg_current_wal_insert_lsn()"
        );
        let committed = srv.psql_timeout(&insert, Duration::from_secs(20));
        w.kill9();
        let out = committed.unwrap_or_else(|e| {
            srv.psql(
                "select pg_cancel_backend(pid) from pg_stat_activity where wait_event = 'SyncRep'",
            );
            panic!(
                "round {round}: the commit did not return: {e}\n{}",
                context(&w, &store, &srv)
            )
        });
        let lsn: Lsn = out
            .lines()
            .last()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("no LSN in {out:?}"));
        let end = store.end_of_valid_wal(pg.major);
        assert!(
            end.is_some_and(|e| e >= lsn),
            "round {round}: committed up to {lsn} but the store holds valid WAL up to {end:?}\n{}",
            context(&w, &store, &srv)
        );
    }
});

proto_test!(refuses_a_locked_cluster_and_another_system, |pg: &Pg| {
    let srv = pg.start();
    let dir = new_store(&srv, "store");
    let store = view(&srv, &dir);
    let src = srv.conninfo(U_TRUST);
    let mut first = Receiver::start(&src, &dir, &[]);
    wait_walsender(&srv, &mut first, &store, None);
    let (code, out) = run_receive(&src, &dir, &["--once"], T);
    let locked = format!("locked by pid {}", first.pid());
    assert!(
        code == 2 && out.contains(&locked),
        "a second receiver on the cluster: exit {code}, expected 2 and {locked:?}:\n{out}\n{}",
        first.context()
    );
    first.interrupt();

    // A copy of the same template would have the same system identifier.
    let other = pg.start_with(ServerOptions::default().system(1));
    assert_ne!(other.system_identifier(), srv.system_identifier());
    let (code, out) = run_receive(&other.conninfo(U_TRUST), &dir, &["--once"], T);
    let ours = srv.system_identifier().to_string();
    let theirs = other.system_identifier().to_string();
    assert!(
        code == 2 && out.contains(&ours) && out.contains(&theirs),
        "another server's WAL into this cluster: exit {code}, expected 2 naming {ours} and \
         {theirs}:\n{out}"
    );
    assert_eq!(
        store.cluster_json()["system_identifier"].as_str(),
        Some(ours.as_str())
    );
});

proto_test!(refuses_corrupt_wal_from_the_network, |pg: &Pg| {
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    let size = srv.wal_seg_size();
    srv.psql("create table marked (v text)");
    let proxy = CorruptProxy::start(srv.port());
    let src = format!(
        "host=127.0.0.1 port={} user={U_TRUST} dbname=postgres sslmode=disable",
        proxy.port()
    );
    let dir = new_store(&srv, "store");
    let store = view(&srv, &dir);
    let mut w = Receiver::start(&src, &dir, &[]);
    wait_walsender(&srv, &mut w, &store, None);
    let marker = "walden-corrupt-proxy-marker:";
    proxy.arm(Trigger::Marker(marker.as_bytes().to_vec()));
    srv.psql(&format!("insert into marked select repeat('{marker}', 50)"));
    wait_for(
        "the proxy to flip a byte",
        T,
        || proxy.flipped().is_some(),
        || context(&w, &store, &srv),
    );
    let flipped = proxy.flipped().expect("flipped");
    let out = w.expect_exit(4, T);
    // The record holding the byte starts in its segment or (rarely) the one before.
    let seg = flipped.segno(size);
    let names: Vec<String> = [SegNo(seg.0.saturating_sub(1)), seg]
        .iter()
        .map(|s| segment_file_name(TimelineId(1), *s, size))
        .collect();
    assert!(
        out.lines()
            .any(|l| names.iter().any(|n| l.contains(n.as_str())) && l.contains("offset")),
        "no error line naming {names:?} and an offset (byte flipped at {flipped})\n{}",
        w.context()
    );
    let partial = format!("{}.partial", names[1]);
    assert!(
        store.partials().contains(&partial) && !store.has_completed(&names[1]),
        "{partial} must be kept and {} not completed\n{}",
        names[1],
        store.listing()
    );
});

proto_test!(refuses_an_unknown_slot, |pg: &Pg| {
    let srv = pg.start();
    let dir = new_store(&srv, "store");
    let (code, out) = run_receive(&srv.conninfo(U_TRUST), &dir, &["--slot", "nosuch"], T);
    assert!(
        code == 3 && out.contains("nosuch"),
        "--slot nosuch without --create-slot: exit {code}, expected 3 naming the slot:\n{out}"
    );
});

proto_test!(streams_1mb_and_64mb_segments, |pg: &Pg| {
    for mb in [1u32, 64] {
        let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(mb));
        let size = srv.wal_seg_size();
        assert_eq!(size.bytes(), u64::from(mb) << 20);
        let dir = new_store(&srv, "store");
        let store = view(&srv, &dir);
        let mut w = Receiver::start(&srv.conninfo(U_TRUST), &dir, &[]);
        wait_walsender(&srv, &mut w, &store, None);
        srv.generate_wal(200 << 10);
        let sw = srv.switch_wal();
        wait_completed(&store, &mut w, &srv, &sw.segment);
        w.interrupt();
        let names = store.completed();
        for name in &names {
            let len = std::fs::metadata(store.segment_path(name)).map(|m| m.len());
            assert_eq!(len.ok(), Some(size.bytes()), "{name} with {mb} MB segments");
        }
        let missing = assert_same_as(
            |n| store.read(n),
            &names,
            &srv.data_dir().join("pg_wal"),
            || context(&w, &store, &srv),
        );
        assert!(missing.is_empty(), "the server lacks {missing:?}");
        let cluster = store.cluster_json();
        assert_eq!(
            cluster["wal_segment_size"].as_u64(),
            Some(size.bytes()),
            "{cluster}"
        );
    }
});

proto_test!(streams_over_tls_and_stops_cleanly, |pg: &Pg| {
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    let dir = new_store(&srv, "store");
    let store = view(&srv, &dir);
    let conninfo = format!(
        "host=127.0.0.1 port={} user={U_TRUST} sslmode=require",
        srv.port()
    );
    if srv.tls_files().is_none() {
        // A build without OpenSSL: require must refuse, never stream in the clear.
        let (code, out) = run_receive(&conninfo, &dir, &["--once"], T);
        assert_ne!(code, 0, "sslmode=require streamed without TLS:\n{out}");
        assert!(out.contains("does not support SSL"), "{out}");
        return;
    }
    let mut w = Receiver::start(&conninfo, &dir, &[]);
    wait_walsender(&srv, &mut w, &store, None);
    let encrypted = "select s.ssl from pg_stat_ssl s join pg_stat_replication r using (pid) \
                     where r.application_name = 'walden'";
    assert_eq!(srv.psql(encrypted), "t", "{}", context(&w, &store, &srv));
    srv.generate_wal(3 << 20);
    let sw = srv.switch_wal();
    wait_completed(&store, &mut w, &srv, &sw.segment);
    w.interrupt();
    let names = store.completed();
    assert!(names.len() >= 3, "{names:?}");
    let missing = assert_same_as(
        |n| store.read(n),
        &names,
        &srv.data_dir().join("pg_wal"),
        || context(&w, &store, &srv),
    );
    assert!(missing.is_empty(), "the server lacks {missing:?}");
});

proto_test!(records_a_gap_when_the_server_removed_wal, |pg: &Pg| {
    let srv = pg.start_with(
        ServerOptions::default()
            .wal_segsize_mb(1)
            .conf("wal_keep_size = 0"),
    );
    let size = srv.wal_seg_size();
    let dir = new_store(&srv, "store");
    let store = view(&srv, &dir);
    let src = srv.conninfo(U_TRUST);
    let (code, out) = run_receive(&src, &dir, &["--once"], T);
    assert_eq!(code, 0, "walden receive --once:\n{out}");
    // Where walden will resume: the newest .partial, or after the newest completed segment.
    let resume = store
        .partials()
        .last()
        .map(|p| WalFileName::parse(p, size).expect("a segment name").segno)
        .or_else(|| {
            store.completed().last().map(|n| {
                WalFileName::parse(n, size)
                    .expect("a segment name")
                    .segno
                    .next()
            })
        })
        .unwrap_or_else(|| panic!("--once stored nothing\n{out}\n{}", store.listing()));
    let needed = segment_file_name(TimelineId(1), resume, size);
    for _ in 0..4 {
        srv.generate_wal(512 << 10);
        srv.switch_wal();
    }
    srv.psql("checkpoint");
    srv.switch_wal();
    srv.psql("checkpoint");
    let present = format!("select count(*) from pg_ls_waldir() where name = '{needed}'");
    assert_eq!(
        srv.psql(&present),
        "0",
        "the server still has {needed}: {}",
        srv.psql("select string_agg(name, ' ' order by name) from pg_ls_waldir()")
    );
    let mut w = Receiver::start(&src, &dir, &[]);
    wait_for(
        "gaps.json to record the removed WAL",
        T,
        || !store.gaps().is_empty(),
        || context(&w, &store, &srv),
    );
    w.assert_running("after recording a gap");
    let gaps = store.gaps();
    let gap = &gaps[0];
    let resume_lsn = resume.start_lsn(size);
    assert!(
        gap.timeline == 1
            && gap.from >= resume_lsn
            && gap.from <= resume.next().start_lsn(size)
            && gap.to > gap.from
            && gap.to <= srv.current_lsn(),
        "unexpected gap {gap:?} (walden resumed at {resume_lsn})\n{}",
        context(&w, &store, &srv)
    );
    assert!(
        w.output().to_lowercase().contains("removed"),
        "walden did not log that the WAL was removed\n{}",
        w.context()
    );
    srv.generate_wal(512 << 10);
    let sw = srv.switch_wal();
    wait_completed(&store, &mut w, &srv, &sw.segment);
    w.interrupt();
    assert_eq!(store.gaps().len(), gaps.len(), "{:?}", store.gaps());
});

proto_test!(compresses_completed_segments_and_lists_them, |pg: &Pg| {
    use walden::store::{ClusterName, ClusterReader, WalArchive};
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    let dir = new_store(&srv, "store");
    let store = view(&srv, &dir);
    let mut w = Receiver::start(&srv.conninfo(U_TRUST), &dir, &["--compress", "zstd:5"]);
    wait_walsender(&srv, &mut w, &store, None);
    srv.generate_wal(3 << 20);
    let sw = srv.switch_wal();
    let size = srv.wal_seg_size();
    let switched = WalFileName::parse(&sw.segment, size).unwrap();
    let deadline = Instant::now() + T;
    loop {
        let found = ClusterReader::open(&dir, &ClusterName::default())
            .ok()
            .and_then(|r| r.find_segment(switched.tli, switched.segno).ok().flatten());
        if found.is_some_and(|s| s.name.compressed) {
            break;
        }
        assert!(
            w.is_running() && Instant::now() < deadline,
            "{}.zst did not appear\n{}",
            sw.segment,
            context(&w, &store, &srv)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    w.interrupt();
    let output = w.output();
    // The partial segments stay plain; the completed ones are .zst only, and decompress to
    // exactly the server's own files.
    let reader = ClusterReader::open(&dir, &ClusterName::default()).unwrap();
    let segments = reader.list_wal().unwrap();
    let completed: Vec<_> = segments.iter().filter(|s| !s.name.partial).collect();
    assert!(completed.len() >= 3, "{segments:?}\n{output}");
    for s in &completed {
        let name = s.name.format(size);
        assert!(
            s.name.compressed && name.ends_with(".zst"),
            "{name} is not compressed"
        );
        assert!(s.size < size.bytes(), "{name}: {} bytes compressed", s.size);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut reader.open_segment(s).unwrap(), &mut bytes).unwrap();
        let plain = WalFileName {
            compressed: false,
            ..s.name
        }
        .format(size);
        assert!(
            srv.pg_wal_file(&plain).as_deref() == Some(&bytes[..]),
            "{name} differs from the server's {plain}"
        );
    }
    assert!(
        segments
            .iter()
            .all(|s| !s.name.partial || !s.name.compressed),
        "{segments:?}"
    );

    // walden list and walden verify read the compressed store.
    let listing = run_ok(walden_cmd().args(["list", "--json", "--store"]).arg(&dir));
    let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let t1 = &listing["wal"]["timelines"][0];
    assert_eq!(t1["timeline"], 1, "{listing}");
    assert_eq!(t1["missing"], serde_json::json!([]), "{listing}");
    assert_eq!(
        t1["last_segment"].as_str(),
        Some(sw.segment.as_str()),
        "{listing}"
    );
    let verify = run_ok(walden_cmd().args(["verify", "--store"]).arg(&dir));
    assert!(verify.contains(", 0 problems"), "{verify}");

    // A corrupted byte inside a compressed segment is found by walden verify (exit 4).
    let victim = completed[1];
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut reader.open_segment(victim).unwrap(), &mut bytes).unwrap();
    bytes[300_000] ^= 0x55;
    let recompressed = zstd::encode_all(&bytes[..], 3).unwrap();
    std::fs::write(&victim.path, recompressed).unwrap();
    let out = walden_cmd()
        .args(["verify", "--store"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    let victim_name = WalFileName {
        compressed: false,
        ..victim.name
    }
    .format(size);
    assert!(text.contains(&victim_name), "{text}");
    assert!(store.gaps().is_empty());
});
