//! Tests of the backup oracle and the backup-corrupting proxy on real servers, with
//! `pg_basebackup -Ft` standing in for `walden backup` (same archive names and manifest) and
//! `walden receive` providing the WAL: a good backup passes `pg_verifybackup`, and a flipped
//! byte in a stored archive, in the stream, or missing WAL fails it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::backup::{
    collect_wal, manifest_wal_ranges, pg_verifybackup, populate, start_receiver, store_has_wal,
    verify_stored_backup,
};
use super::corrupt_proxy::{CorruptProxy, Trigger};
use super::tar::flip_file_byte;
use crate::harness::*;

const T: Duration = Duration::from_secs(30);

/// `pg_basebackup -Ft -c fast -D <server dir>/<name> <extra...>` as the superuser on
/// `conninfo`; returns the backup directory.
fn pg_basebackup(srv: &Server, conninfo: &str, name: &str, extra: &[&str]) -> PathBuf {
    let dir = srv.dir().join(name);
    run_ok(
        postgres_cmd(srv.bin("pg_basebackup"))
            .args(["-Ft", "-c", "fast", "-d", conninfo, "-D"])
            .arg(&dir)
            .args(extra),
    );
    dir
}

/// Waits until the store holds the WAL of the backup in `dir`.
fn wait_for_backup_wal(srv: &Server, store: &Path, dir: &Path) {
    for range in manifest_wal_ranges(&dir.join("backup_manifest")) {
        wait_for(
            "the backup's WAL in the store",
            T,
            || store_has_wal(store, "main", &range, srv.major()),
            || format!("range {range:?}\n{}", srv.context()),
        );
    }
}

proto_test!(oracle_passes_pg_basebackup_and_catches_damage, |pg: &Pg| {
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    let populated = populate(&srv);
    let store = srv.dir().join("store");
    let mut w = start_receiver(&srv, &store);
    let bk = pg_basebackup(&srv, &srv.conninfo(U_POSTGRES), "bk", &["-X", "none"]);
    assert!(
        bk.join(format!("{}.tar", populated.tablespace_oid))
            .is_file(),
        "a tablespace archive"
    );
    wait_for_backup_wal(&srv, &store, &bk);
    let scratch = srv.dir().join("x");
    let (verdict, data) = verify_stored_backup(&pg.bin_dir, &bk, Some((&store, "main")), &scratch);
    let out = verdict.unwrap_or_else(|e| panic!("{e}\n{}", w.context()));
    assert!(out.contains("backup successfully verified"), "{out}");
    let link = data
        .join("pg_tblspc")
        .join(populated.tablespace_oid.to_string());
    let version_dirs: Vec<String> = std::fs::read_dir(&link)
        .unwrap_or_else(|e| panic!("{}: {e}", link.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        version_dirs.len() == 1 && version_dirs[0].starts_with(&format!("PG_{}_", pg.major)),
        "the tablespace is linked: {version_dirs:?}"
    );

    // WAL missing from the range: pg_verifybackup's pg_waldump fails.
    let range = manifest_wal_ranges(&bk.join("backup_manifest"))[0];
    let wal = scratch.join("wal");
    let names = collect_wal(&store, "main", &range, &wal);
    std::fs::remove_file(wal.join(&names[names.len() - 1])).unwrap();
    let verdict = pg_verifybackup(&pg.bin_dir, &data, &bk.join("backup_manifest"), Some(&wal));
    assert!(
        verdict.is_err(),
        "verified without {}",
        names[names.len() - 1]
    );

    // One flipped byte in a relation file of base.tar: the oracle names the file.
    let tar_path = bk.join("base.tar");
    let mut tar = std::fs::read(&tar_path).unwrap();
    let member = flip_file_byte(&mut tar, |m| m.name.starts_with("base/") && m.size >= 8192)
        .expect("a relation file of a page or more");
    std::fs::write(&tar_path, tar).unwrap();
    let (verdict, _) = verify_stored_backup(&pg.bin_dir, &bk, Some((&store, "main")), &scratch);
    let err = verdict.expect_err("a corrupt base.tar verified");
    assert!(
        err.contains(&member.name),
        "{} not named:\n{err}",
        member.name
    );

    // WAL inside base.tar (-X fetch): verified without the store.
    let bk2 = pg_basebackup(&srv, &srv.conninfo(U_POSTGRES), "bk2", &["-X", "fetch"]);
    let (verdict, data2) = verify_stored_backup(&pg.bin_dir, &bk2, None, &srv.dir().join("x2"));
    verdict.unwrap_or_else(|e| panic!("{e}"));
    assert!(data2.join("pg_wal").read_dir().unwrap().count() > 0);
    w.interrupt();
});

proto_test!(oracle_reads_zstd_archives, zstd, |pg: &Pg| {
    let srv = pg.start_with(ServerOptions::default().wal_segsize_mb(1));
    let populated = populate(&srv);
    let store = srv.dir().join("store");
    let mut w = start_receiver(&srv, &store);
    for (name, compress) in [("server", "server-zstd:1"), ("client", "client-zstd:3")] {
        let bk = pg_basebackup(
            &srv,
            &srv.conninfo(U_POSTGRES),
            name,
            &["-X", "none", "--compress", compress],
        );
        assert!(bk.join("base.tar.zst").is_file(), "{compress}");
        let ts = format!("{}.tar.zst", populated.tablespace_oid);
        assert!(bk.join(ts).is_file(), "{compress}");
        wait_for_backup_wal(&srv, &store, &bk);
        let (verdict, _) = verify_stored_backup(
            &pg.bin_dir,
            &bk,
            Some((&store, "main")),
            &srv.dir().join(format!("x-{name}")),
        );
        verdict.unwrap_or_else(|e| panic!("{compress}: {e}"));
    }
    w.interrupt();
});

proto_test!(
    proxy_flips_a_file_byte_in_a_base_backup_stream,
    |pg: &Pg| {
        let srv = pg.start();
        populate(&srv);
        let proxy = CorruptProxy::start(srv.port());
        proxy.arm(Trigger::FileData {
            archive: "base.tar".into(),
            path_prefix: "base/".into(),
            min_size: 16384,
        });
        let via_proxy = format!(
            "host=127.0.0.1 port={} user={U_POSTGRES} sslmode=disable",
            proxy.port()
        );
        let bk = pg_basebackup(&srv, &via_proxy, "bk", &["-X", "fetch"]);
        let flipped = proxy.flipped_file().expect("the proxy flipped a byte");
        assert_eq!(flipped.archive, "base.tar");
        assert!(flipped.member.starts_with("base/"), "{flipped:?}");
        let (verdict, data) = verify_stored_backup(&pg.bin_dir, &bk, None, &srv.dir().join("x"));
        let err = verdict.expect_err("the corrupted backup verified");
        assert!(
            err.contains(&flipped.member),
            "{flipped:?} not named:\n{err}"
        );
        // Exactly that byte differs from the server's file (the table is not written to).
        let ours = std::fs::read(data.join(&flipped.member)).unwrap();
        let theirs = std::fs::read(srv.data_dir().join(&flipped.member)).unwrap();
        let diffs: Vec<usize> = (0..ours.len().min(theirs.len()))
            .filter(|&i| ours[i] != theirs[i])
            .collect();
        assert!(
            diffs.contains(&(flipped.offset as usize)),
            "{flipped:?}: differences at {diffs:?}"
        );
    }
);
