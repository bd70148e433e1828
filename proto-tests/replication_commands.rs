//! The `pg` client's replication commands and session kinds against real servers.

use walden::pg::{ConnConfig, Connection, SessionKind, SlotName, SlotOptions, SystemId};
use walden::wal::{Lsn, TimelineId};

use crate::harness::{self, Pg, Server, proto_test};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(srv: &Server, kind: SessionKind) -> Connection {
    let config = ConnConfig::parse(&format!(
        "{} sslmode=disable",
        srv.conninfo(harness::U_TRUST)
    ))
    .unwrap();
    Connection::connect(&config, kind).await.unwrap()
}

proto_test!(replication_commands, |pg: &Pg| {
    let srv = pg.start();
    runtime().block_on(async {
        let mut conn = connect(&srv, SessionKind::Physical).await;
        assert_eq!(conn.server_version().major(), srv.major());

        let info = conn.identify_system().await.unwrap();
        let sysid: SystemId = srv
            .psql("select system_identifier from pg_control_system()")
            .parse()
            .unwrap();
        assert_eq!(info.system_id, sysid);
        assert_eq!(info.timeline, TimelineId(1));
        assert_eq!(info.dbname, None);

        assert_eq!(conn.show("wal_level").await.unwrap(), "replica");
        assert_eq!(conn.show("wal_segment_size").await.unwrap(), "16MB");
        assert!(
            conn.show("wal_level; DROP").await.is_err(),
            "SHOW takes names only"
        );

        // SQL is refused on a physical WAL sender; the session stays usable.
        let err = conn.simple_query("SELECT 1").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot execute SQL commands in WAL sender"),
            "{err}"
        );
        conn.identify_system().await.unwrap();

        // Timeline 1 never has a history file.
        let err = conn.timeline_history(TimelineId(1)).await.unwrap_err();
        assert!(err.to_string().contains("00000001.history"), "{err}");

        // A permanent slot with WAL reserved at once.
        let slot: SlotName = "walden_test".parse().unwrap();
        conn.create_physical_slot(
            &slot,
            SlotOptions {
                temporary: false,
                reserve_wal: true,
            },
        )
        .await
        .unwrap();
        let restart: Lsn = srv
            .psql("select restart_lsn from pg_replication_slots where slot_name = 'walden_test'")
            .parse()
            .expect("RESERVE_WAL sets restart_lsn at once");
        let read = conn.read_replication_slot(&slot).await.unwrap().unwrap();
        assert_eq!(read.restart_lsn, Some(restart));
        assert_eq!(read.restart_tli, Some(TimelineId(1)));
        let again = conn
            .create_physical_slot(&slot, SlotOptions::default())
            .await
            .unwrap_err();
        assert_eq!(again.sqlstate(), Some("42710"), "{again}");

        let missing: SlotName = "no_such_slot".parse().unwrap();
        assert_eq!(conn.read_replication_slot(&missing).await.unwrap(), None);

        // A slot without RESERVE_WAL has no restart position yet.
        let lazy: SlotName = "walden_lazy".parse().unwrap();
        conn.create_physical_slot(&lazy, SlotOptions::default())
            .await
            .unwrap();
        let read = conn.read_replication_slot(&lazy).await.unwrap().unwrap();
        assert_eq!(read.restart_lsn, None);

        conn.drop_replication_slot(&slot, false).await.unwrap();
        conn.drop_replication_slot(&lazy, true).await.unwrap();
        assert_eq!(srv.psql("select count(*) from pg_replication_slots"), "0");
        let err = conn.drop_replication_slot(&slot, false).await.unwrap_err();
        assert_eq!(err.sqlstate(), Some("42704"), "{err}");

        // A temporary slot lives as long as its session.
        let temp: SlotName = "walden_temp".parse().unwrap();
        conn.create_physical_slot(
            &temp,
            SlotOptions {
                temporary: true,
                reserve_wal: true,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            srv.psql("select temporary from pg_replication_slots where slot_name = 'walden_temp'"),
            "t"
        );
        conn.close().await;
        for _ in 0..100 {
            if srv.psql("select count(*) from pg_replication_slots") == "0" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(srv.psql("select count(*) from pg_replication_slots"), "0");
    });
});

proto_test!(database_and_sql_sessions, |pg: &Pg| {
    let srv = pg.start();
    runtime().block_on(async {
        // replication=database: replication commands and SQL in one session.
        let mut conn = connect(&srv, SessionKind::Database).await;
        let info = conn.identify_system().await.unwrap();
        assert_eq!(info.dbname.as_deref(), Some("postgres"));
        let results = conn
            .simple_query("SELECT 1 AS one, NULL::text AS nothing, 'x' AS x; SELECT 2")
            .await
            .unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].columns, ["one", "nothing", "x"]);
        let row = &results[0].rows[0];
        assert_eq!(row.required::<i32>(0).unwrap(), 1);
        assert_eq!(row.text(1).unwrap(), None);
        assert!(row.required::<i32>(2).is_err(), "'x' is not an integer");
        assert!(row.text(3).is_err(), "no fourth column");
        assert_eq!(results[1].rows[0].required::<i32>(0).unwrap(), 2);
        assert_eq!(results[0].tag, "SELECT 1");

        // An error carries its SQLSTATE, message, detail and hint; the session survives.
        let err = conn
            .simple_query("SELECT * FROM no_such_table")
            .await
            .unwrap_err();
        let server = err.server_error().expect("a server error");
        assert_eq!(server.code, "42P01");
        assert_eq!(server.severity, "ERROR");
        assert!(server.message.contains("no_such_table"));
        let err = conn
            .simple_query("DO $$ BEGIN RAISE EXCEPTION 'boom' USING DETAIL = 'the detail', HINT = 'the hint', ERRCODE = '22023'; END $$")
            .await
            .unwrap_err();
        let server = err.server_error().unwrap();
        assert_eq!(
            (server.code.as_str(), server.message.as_str(), server.detail.as_deref(), server.hint.as_deref()),
            ("22023", "boom", Some("the detail"), Some("the hint"))
        );
        assert_eq!(conn.simple_query("SELECT 3").await.unwrap()[0].rows.len(), 1);
        conn.close().await;

        // An ordinary SQL session.
        let mut sql = connect(&srv, SessionKind::Sql).await;
        let results = sql.simple_query("SHOW application_name").await.unwrap();
        assert_eq!(results[0].rows[0].text(0).unwrap(), Some("walden"));
        sql.close().await;
    });
});
