//! The state database against a real server: migrations (fresh, repeated, racing, changed,
//! newer, failing), hostile schema names, checkpoints, and error classification.

mod support;

use std::sync::Arc;

use pgfanout::binding::{Lineage, SourceId};
use pgfanout::config::Secret;
use pgfanout::disposition::Classify;
use pgfanout::lsn::Lsn;
use pgfanout::pgconn::{Host, SslMode};
use pgfanout::report::Chain;
use pgfanout::state::{
    migrate, Binding, Checkpoint, Coverage, Hold, HoldKind, Migration, NewSnapshot, RangeProgress,
    SnapshotState, StateDb, StateError, TableProgress, DEFAULT_SCHEMA, MIGRATIONS,
};
use support::*;

/// `(version, name, checksum)` rows of `schema`'s history.
async fn history(client: &tokio_postgres::Client, schema: &str) -> Vec<(i32, String, String)> {
    client
        .query(
            &format!(
                "SELECT version, name, checksum FROM {}.migrations ORDER BY version",
                pgfanout::sql::quote_ident(schema)
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn schema_exists(client: &tokio_postgres::Client, schema: &str) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0)
}

/// Names of the tables in `schema`, sorted.
async fn tables(client: &tokio_postgres::Client, schema: &str) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_schema_tables_and_history_then_applies_nothing() {
    let db = fresh_db("state_fresh").await;
    let mut client = sql(&db).await;
    assert!(!schema_exists(&client, DEFAULT_SCHEMA).await);

    let report = migrate(&mut client, DEFAULT_SCHEMA, MIGRATIONS)
        .await
        .unwrap();
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(report.applied, all);
    assert_eq!(report.current, MIGRATIONS.last().map(|m| m.version));
    assert_eq!(
        tables(&client, DEFAULT_SCHEMA).await,
        [
            "checkpoints",
            "coverage",
            "daemon_heartbeats",
            "destination_holds",
            "destinations",
            "migrations",
            "snapshot_ranges",
            "snapshot_tables",
            "snapshots"
        ]
    );
    let expected: Vec<(i32, String, String)> = MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_owned(), m.checksum()))
        .collect();
    assert_eq!(history(&client, DEFAULT_SCHEMA).await, expected);
    assert_eq!(MIGRATIONS[0].name, "0001_state.sql");

    // Again, directly and through StateDb::connect: nothing to do, history unchanged.
    let again = migrate(&mut client, DEFAULT_SCHEMA, MIGRATIONS)
        .await
        .unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(again.current, report.current);
    let state = StateDb::connect(&conninfo(&db), DEFAULT_SCHEMA)
        .await
        .unwrap();
    assert!(state.migrations().applied.is_empty());
    assert_eq!(state.schema(), DEFAULT_SCHEMA);
    assert_eq!(history(&client, DEFAULT_SCHEMA).await, expected);
}

/// Slow first step, so the racers certainly meet at the lock; a second step that fails if it
/// runs twice.
const COUNTER: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_counter.sql",
        sql: "CREATE TABLE counter (n int PRIMARY KEY); SELECT pg_sleep(0.3);",
    },
    Migration {
        version: 2,
        name: "0002_count.sql",
        sql: "INSERT INTO counter VALUES (1);",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_each_migration_exactly_once() {
    let db = fresh_db("state_race").await;
    const RACERS: usize = 4;
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..RACERS {
        let db = db.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let mut client = sql(&db).await;
            barrier.wait().await;
            migrate(&mut client, "race", COUNTER).await
        });
    }
    let mut reports = Vec::new();
    while let Some(r) = tasks.join_next().await {
        reports.push(r.unwrap().expect("every racer finishes OK"));
    }
    assert_eq!(reports.len(), RACERS);
    let winners: Vec<_> = reports.iter().filter(|r| !r.applied.is_empty()).collect();
    assert_eq!(winners.len(), 1, "{reports:?}");
    assert_eq!(winners[0].applied, [1, 2]);
    assert!(reports.iter().all(|r| r.current == Some(2)), "{reports:?}");

    let client = sql(&db).await;
    let h = history(&client, "race").await;
    assert_eq!(
        h.iter()
            .map(|(v, n, _)| (*v, n.as_str()))
            .collect::<Vec<_>>(),
        [(1, "0001_counter.sql"), (2, "0002_count.sql")]
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM race.counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the second migration's SQL ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_applied_migration_is_refused_naming_the_file() {
    let db = fresh_db("state_changed").await;
    let mut client = sql(&db).await;
    const ORIGINAL: &[Migration] = &[Migration {
        version: 1,
        name: "0001_a.sql",
        sql: "CREATE TABLE a (x int);",
    }];
    const CHANGED: &[Migration] = &[Migration {
        version: 1,
        name: "0001_a.sql",
        sql: "CREATE TABLE a (x bigint);",
    }];
    migrate(&mut client, DEFAULT_SCHEMA, ORIGINAL)
        .await
        .unwrap();
    let e = migrate(&mut client, DEFAULT_SCHEMA, CHANGED)
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::ChecksumMismatch { .. }), "{e:?}");
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(
        msg.contains("migration 0001_a.sql was changed after it was applied"),
        "{msg}"
    );
    assert!(
        msg.contains(&ORIGINAL[0].checksum()) && msg.contains(&CHANGED[0].checksum()),
        "{msg}"
    );
    assert!(msg.contains("HINT: restore the file"), "{msg}");
    // The original is still what is recorded, and the connection is usable.
    assert_eq!(
        history(&client, DEFAULT_SCHEMA).await[0].2,
        ORIGINAL[0].checksum()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_newer_than_the_binary_is_refused() {
    let db = fresh_db("state_newer").await;
    let mut client = sql(&db).await;
    const NEWER: &[Migration] = &[
        Migration {
            version: 1,
            name: "0001_a.sql",
            sql: "CREATE TABLE a (x int);",
        },
        Migration {
            version: 2,
            name: "0002_b.sql",
            sql: "CREATE TABLE b (x int);",
        },
    ];
    migrate(&mut client, "s", NEWER).await.unwrap();
    let e = migrate(&mut client, "s", &NEWER[..1]).await.unwrap_err();
    assert!(
        matches!(
            e,
            StateError::UnknownMigration {
                version: 2,
                latest_known: Some(1),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(
        msg.contains("migration 2 (0002_b.sql)") && msg.contains("up to 1"),
        "{msg}"
    );

    // The real binary against a schema a future pgfanout migrated.
    migrate(&mut client, DEFAULT_SCHEMA, MIGRATIONS)
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO pgfanout.migrations (version, name, checksum) VALUES (9999, '9999_future.sql', 'x')",
            &[],
        )
        .await
        .unwrap();
    let e = StateDb::connect(&conninfo(&db), DEFAULT_SCHEMA)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("9999_future.sql"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_added_below_the_latest_applied_is_refused() {
    let db = fresh_db("state_order").await;
    let mut client = sql(&db).await;
    let m = |version, name| Migration {
        version,
        name,
        sql: "SELECT 1;",
    };
    migrate(&mut client, "s", &[m(1, "0001_a.sql"), m(3, "0003_c.sql")])
        .await
        .unwrap();
    let e = migrate(
        &mut client,
        "s",
        &[m(1, "0001_a.sql"), m(2, "0002_b.sql"), m(3, "0003_c.sql")],
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StateError::OutOfOrder { .. }), "{e:?}");
    assert!(e.to_string().contains("0002_b.sql"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_leaves_nothing_behind() {
    let db = fresh_db("state_fail").await;
    let mut client = sql(&db).await;
    const FAILING: &[Migration] = &[
        Migration {
            version: 1,
            name: "0001_ok.sql",
            sql: "CREATE TABLE ok (x int);",
        },
        Migration {
            version: 2,
            name: "0002_broken.sql",
            sql: "CREATE TABLE broken (x int); SELECT 1/0;",
        },
    ];
    let e = migrate(&mut client, "s", FAILING).await.unwrap_err();
    assert!(matches!(e, StateError::Apply { .. }), "{e:?}");
    assert_eq!(e.sqlstate(), Some("22012"));
    assert!(!e.is_transient());
    let msg = Chain(&e).to_string();
    assert!(
        msg.contains("0002_broken.sql") && msg.contains("division by zero"),
        "{msg}"
    );
    // One transaction: not even the schema or the first migration survived.
    assert!(!schema_exists(&client, "s").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_schema_name_is_quoted() {
    let db = fresh_db("state_hostile").await;
    let schema = "pg\"fanout; drop";
    let state = StateDb::connect(&conninfo(&db), schema).await.unwrap();
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(state.migrations().applied, all);
    let client = sql(&db).await;
    assert!(schema_exists(&client, schema).await);
    assert_eq!(
        tables(&client, schema).await,
        [
            "checkpoints",
            "coverage",
            "daemon_heartbeats",
            "destination_holds",
            "destinations",
            "migrations",
            "snapshot_ranges",
            "snapshot_tables",
            "snapshots"
        ]
    );
    assert!(!schema_exists(&client, DEFAULT_SCHEMA).await);
    assert!(!schema_exists(&client, "pg").await);
    assert_eq!(history(&client, schema).await.len(), MIGRATIONS.len());

    // Snapshots: a request, its start with tables and ranges, progress, the end; coverage.
    let snapshots = state.snapshots();
    let request = NewSnapshot {
        reason: "resync".into(),
        destinations: vec!["a".into()],
        tenants: Some(vec!["t'1".into()]),
        mappings: None,
        clears_hold: true,
    };
    let id = snapshots.request(&request).await.unwrap();
    let open = snapshots.open().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].id, &open[0].request, open[0].state),
        (id, &request, SnapshotState::Pending)
    );
    let range = |n: u32, lower: Option<&str>, upper: Option<&str>| RangeProgress {
        range_no: n,
        lower: lower.map(|k| vec![k.to_owned(), "1".into()]),
        upper: upper.map(|k| vec![k.to_owned(), "1".into()]),
        ..RangeProgress::default()
    };
    let table = TableProgress {
        source_table: "public.orders".into(),
        mappings: vec!["orders".into()],
        key_columns: vec!["tenant".into(), "id".into()],
        estimated_rows: 1234,
        done: false,
        ranges: vec![range(0, None, Some("m")), range(1, Some("m"), None)],
    };
    snapshots
        .start(id, 77, std::slice::from_ref(&table))
        .await
        .unwrap();
    let mut second = table.ranges[1].clone();
    second.position = Some(vec!["q".into(), "9".into()]);
    second.chunks = 3;
    second.rows = 2500;
    second.mark_seq = 990;
    snapshots
        .save_range(id, "public.orders", &second)
        .await
        .unwrap();
    let tables = snapshots.tables(id).await.unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].ranges, vec![table.ranges[0].clone(), second]);
    assert_eq!(tables[0].estimated_rows, 1234);
    snapshots.table_done(id, "public.orders").await.unwrap();
    snapshots
        .finish(id, SnapshotState::Done, Some(1000), None)
        .await
        .unwrap();
    let done = snapshots.get(id).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.start_seq, done.done_seq),
        (SnapshotState::Done, Some(77), Some(1000))
    );
    assert!(snapshots.open().await.unwrap().is_empty());
    assert!(snapshots.tables(id).await.unwrap()[0].done);
    let covered = Coverage {
        destination: "a".into(),
        mapping: "orders".into(),
        tenant: "*".into(),
    };
    snapshots
        .add_coverage(&[covered.clone(), covered.clone()])
        .await
        .unwrap();
    assert_eq!(snapshots.coverage().await.unwrap(), vec![covered]);

    // The binding round-trips too, with a system identifier beyond bigint's range.
    let bound = |lsn: u64, seq: u64, lineage: Lineage| Checkpoint {
        commit_end_lsn: Lsn(lsn),
        last_seq: seq,
        binding: Some(Binding {
            lineage,
            source: SourceId {
                system_identifier: u64::MAX,
                timeline: 3,
                database: "app".into(),
                slot: "slot'; --".into(),
            },
        }),
    };
    let first = Lineage::random();
    let cp = bound(0x1_0000_0A00, 5, first);
    assert!(state.checkpoints().save("slot'; --", &cp).await.unwrap());
    assert_eq!(
        state.checkpoints().load("slot'; --").await.unwrap(),
        Some(cp)
    );
    // An older checkpoint of the same numbering is refused; one of a new numbering (started
    // on purpose, after start-up's checks) replaces it whatever its numbers.
    assert!(!state
        .checkpoints()
        .save("slot'; --", &bound(0x10, 1, first))
        .await
        .unwrap());
    let renumbered = bound(0x10, 1, Lineage::random());
    assert!(state
        .checkpoints()
        .save("slot'; --", &renumbered)
        .await
        .unwrap());
    assert_eq!(
        state.checkpoints().load("slot'; --").await.unwrap(),
        Some(renumbered)
    );
    let hold = Hold {
        kind: HoldKind::Failed,
        reason: "x'; --".into(),
        seq: None,
    };
    state.holds().set("d'; --", &hold).await.unwrap();
    assert_eq!(state.holds().load_all().await.unwrap()[0].hold, hold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_round_trip_and_never_move_backwards() {
    let db = fresh_db("state_checkpoints").await;
    let state = StateDb::connect(&conninfo(&db), DEFAULT_SCHEMA)
        .await
        .unwrap();
    let store = state.checkpoints().clone();
    assert_eq!(store.load("s1").await.unwrap(), None);

    let cp = |lsn: u64, seq: u64| Checkpoint {
        commit_end_lsn: Lsn(lsn),
        last_seq: seq,
        binding: None,
    };
    let first = cp(0x16_B374_D848, 100);
    assert!(store.save("s1", &first).await.unwrap());
    assert_eq!(store.load("s1").await.unwrap(), Some(first.clone()));
    assert_eq!(store.load("s2").await.unwrap(), None, "slots are separate");

    // Older seq: ignored.
    assert!(!store.save("s1", &cp(0x17_0000_0000, 99)).await.unwrap());
    assert_eq!(store.load("s1").await.unwrap(), Some(first.clone()));
    // Same seq, older LSN: ignored. Same seq, later LSN: progress (an empty transaction).
    assert!(!store.save("s1", &cp(0x16_B374_D847, 100)).await.unwrap());
    let later = cp(0x16_B374_D900, 100);
    assert!(store.save("s1", &later).await.unwrap());
    assert_eq!(store.load("s1").await.unwrap(), Some(later.clone()));
    // The same checkpoint again is fine.
    assert!(store.save("s1", &later).await.unwrap());
    // Newer: written. LSNs above 32 bits and seqs up to i64::MAX survive the round trip.
    let newest = cp(0xFFFF_FFFE_0000_0001, i64::MAX as u64);
    assert!(store.save("s1", &newest).await.unwrap());
    assert_eq!(store.load("s1").await.unwrap(), Some(newest.clone()));

    let e = store.save("s1", &cp(1, u64::MAX)).await.unwrap_err();
    assert!(matches!(e, StateError::InvalidValue { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert_eq!(store.load("s1").await.unwrap(), Some(newest.clone()));
}

/// Holds survive reconnecting, are cleared on purpose only, and a resync is never forgotten:
/// a failure over it keeps it aside, a restart's `clear_failed` brings it back, and only
/// `clear` (resume) accepts the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_holds_keep_a_resync_under_a_failure_until_cleared() {
    let db = fresh_db("state_holds").await;
    let state = StateDb::connect(&conninfo(&db), DEFAULT_SCHEMA)
        .await
        .unwrap();
    let holds = state.holds();
    assert!(holds.load_all().await.unwrap().is_empty());
    let hold = |kind, reason: &str, seq| Hold {
        kind,
        reason: reason.into(),
        seq,
    };
    let failed = hold(
        HoldKind::Failed,
        "value too long, table t, column c",
        Some(7),
    );
    holds
        .set_at("a", &failed, Some("public.t"), Some("c"))
        .await
        .unwrap();
    holds
        .set("b", &hold(HoldKind::NeedsResync, "gap 3..9", Some(3)))
        .await
        .unwrap();
    // A second resync keeps the first one's reason and the lower seq.
    holds
        .set("b", &hold(HoldKind::NeedsResync, "gap 20..30", Some(20)))
        .await
        .unwrap();
    let state = StateDb::connect(&conninfo(&db), DEFAULT_SCHEMA)
        .await
        .unwrap();
    let holds = state.holds();
    let all = holds.load_all().await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!((all[0].name.as_str(), &all[0].hold), ("a", &failed));
    assert_eq!(all[0].table.as_deref(), Some("public.t"));
    assert_eq!(all[0].column.as_deref(), Some("c"));
    assert!(
        all[0].since.ends_with('Z') && all[0].age_seconds >= 0.0,
        "{all:?}"
    );
    assert_eq!(
        all[1].hold,
        hold(HoldKind::NeedsResync, "gap 3..9", Some(3))
    );

    // b fails: failed, with the resync aside; a restart clears the failure, not the resync.
    holds
        .set("b", &hold(HoldKind::Failed, "constraint x", Some(12)))
        .await
        .unwrap();
    let b = holds.load_all().await.unwrap().remove(1);
    assert_eq!(b.hold, hold(HoldKind::Failed, "constraint x", Some(12)));
    assert_eq!(b.resync_reason.as_deref(), Some("gap 3..9"));
    assert!(holds.clear_failed("b").await.unwrap());
    let b = holds.load_all().await.unwrap().remove(1);
    assert_eq!(b.hold.kind, HoldKind::NeedsResync);
    assert_eq!(b.hold.reason, "gap 3..9");
    assert!(
        !holds.clear_failed("b").await.unwrap(),
        "not failed any more"
    );
    // A failed destination that then loses its log needs a resync.
    holds
        .set("a", &hold(HoldKind::NeedsResync, "gap 5..8", Some(5)))
        .await
        .unwrap();
    let a = holds.load_all().await.unwrap().remove(0);
    assert_eq!(a.hold, hold(HoldKind::NeedsResync, "gap 5..8", Some(5)));
    assert_eq!((a.table, a.column), (None, None));

    // Resume clears everything; clearing nothing says so.
    assert!(holds.clear("a").await.unwrap());
    assert!(holds.clear("b").await.unwrap());
    assert!(!holds.clear("b").await.unwrap());
    assert!(holds.load_all().await.unwrap().is_empty());
    let e = holds
        .set("c", &hold(HoldKind::Failed, "x", Some(u64::MAX)))
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::InvalidValue { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_whether_a_retry_can_help_and_hide_the_password() {
    let db = fresh_db("state_errors").await;

    // Nothing listens: transient, and the password stays out of the message.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut refused = conninfo(&db);
    refused.host = Host::Tcp("127.0.0.1".into());
    refused.port = port;
    refused.password = Some(Secret::new("hunter2"));
    let e = StateDb::connect(&refused, DEFAULT_SCHEMA)
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, StateError::Connect { .. }), "{e:?}");
    assert!(e.is_transient(), "{e}");
    assert!(!Chain(&e).to_string().contains("hunter2") && !format!("{e:?}").contains("hunter2"));
    assert!(e.to_string().contains("could not connect"), "{e}");

    // TLS per sslmode, with the same rustls setup as the replication session: verify-full
    // against the certificate's name works, against another name fails, and a missing CA file
    // is a definite configuration error.
    let tls_db = fresh_db("state_tls").await;
    let mut tls = conninfo(&tls_db);
    tls.host = Host::Tcp("localhost".into());
    tls.sslmode = SslMode::VerifyFull;
    tls.sslrootcert = Some(server().ca_cert());
    StateDb::connect(&tls, DEFAULT_SCHEMA)
        .await
        .expect("verify-full to the certificate's name");
    let mut wrong_name = tls.clone();
    wrong_name.host = Host::Tcp("127.0.0.1".into());
    assert!(StateDb::connect(&wrong_name, DEFAULT_SCHEMA).await.is_err());
    let mut no_ca = tls.clone();
    no_ca.sslrootcert = Some("/nonexistent/ca.pem".into());
    let e = StateDb::connect(&no_ca, DEFAULT_SCHEMA)
        .await
        .err()
        .expect("missing CA file");
    assert!(matches!(e, StateError::Tls(_)), "{e:?}");
    assert!(Chain(&e).to_string().contains("/nonexistent/ca.pem"), "{e}");
    assert!(!e.is_transient());

    // A role without CREATE on the database: permission denied is definite.
    let mut unprivileged = conninfo(&db);
    unprivileged.user = "no_repl".into();
    let e = StateDb::connect(&unprivileged, DEFAULT_SCHEMA)
        .await
        .err()
        .expect("refused");
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");
    assert!(!e.is_transient());
    let msg = Chain(&e).to_string();
    assert!(
        msg.contains("creating the state schema") && msg.contains("permission denied"),
        "{msg}"
    );

    // Once an owner has migrated the schema, the same role only needs to use it.
    StateDb::connect(&conninfo(&db), DEFAULT_SCHEMA)
        .await
        .unwrap();
    sql(&db)
        .await
        .batch_execute(
            "GRANT USAGE ON SCHEMA pgfanout TO no_repl;
             GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA pgfanout TO no_repl;",
        )
        .await
        .unwrap();
    let state = StateDb::connect(&unprivileged, DEFAULT_SCHEMA)
        .await
        .unwrap();
    let cp = Checkpoint {
        commit_end_lsn: Lsn(42),
        last_seq: 1,
        binding: None,
    };
    assert!(state.checkpoints().save("s", &cp).await.unwrap());
    assert_eq!(state.checkpoints().load("s").await.unwrap(), Some(cp));

    // Invalid schema names never reach the server.
    let e = StateDb::connect(&conninfo(&db), "")
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, StateError::InvalidSchema { .. }), "{e:?}");
}
