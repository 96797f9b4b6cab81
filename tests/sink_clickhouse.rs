//! The ClickHouse destination writer against a real server (Debian's 18.16 here): tables
//! created or validated, every mapped type through a real insert and select, versions and the
//! deleted flag under FINAL, batches written twice, unchanged TOAST values, truncates, views,
//! the watermark, and the errors a user sees.

mod support;

use pgfanout::config::{ClickHouseStore, Secret};
use pgfanout::disposition::{disposition, Classify, Disposition, Scope};
use pgfanout::report::Chain;
use pgfanout::sink::clickhouse::types::ServerVersion;
use pgfanout::sink::{
    text, Batch, Cell, ClickHouseError, ClickHouseSink, SinkError, TargetColumn, TargetTable,
};
use pgfanout::value::PgType;
use support::*;

fn store(db: &str) -> ClickHouseStore {
    ClickHouseStore {
        url: clickhouse().url(),
        user: "default".into(),
        password: None,
        database: db.into(),
        deleted_column: "sync_is_deleted".into(),
        views_database: None,
        reader_user: None,
        tenant_columns: vec!["project_id".into()],
    }
}

fn ch(sql: &str) -> String {
    clickhouse()
        .query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn t(s: &'static str) -> Cell<'static> {
    text(s)
}

/// `users(project_id, id, name, bio)` keyed by (project_id, id), versioned by sync_sequence_id.
fn users(db: &str) -> TargetTable {
    let mut table = TargetTable::new(
        db,
        "users",
        vec![
            TargetColumn::new("project_id", PgType::Text, false),
            TargetColumn::new("id", PgType::Int8, false),
            TargetColumn::new("name", PgType::Text, true),
            TargetColumn::new("bio", PgType::Text, true),
        ],
        vec!["project_id".into(), "id".into()],
    );
    table.version_column = "sync_sequence_id".into();
    table
}

async fn connected(db: &str, tables: &[TargetTable]) -> ClickHouseSink {
    let mut sink = ClickHouseSink::connect(&store(db)).await.unwrap();
    sink.ensure_tables("analytics", tables, true).await.unwrap();
    sink
}

fn live(db: &str) -> String {
    ch(&format!(
        "SELECT project_id, id, name, bio FROM `{db}`.users FINAL WHERE sync_is_deleted = 0 ORDER BY project_id, id"
    ))
}

#[tokio::test]
async fn creates_tables_and_applies_versions_deletes_and_the_watermark() {
    let db = fresh_ch_db("versions");
    let mut sink = connected(&db, &[users(&db)]).await;
    assert!(sink.server_version() >= ServerVersion::new(18, 16));
    let create = ch(&format!("SHOW CREATE TABLE `{db}`.users"));
    assert!(
        create.contains("ReplacingMergeTree(sync_sequence_id"),
        "{create}"
    );
    assert!(create.contains("ORDER BY (project_id, id)"), "{create}");
    assert_eq!(sink.watermark("analytics").await.unwrap(), 0);

    let mut b = Batch::new(5);
    b.upsert(0, 1, vec![t("p1"), t("1"), t("ann"), t("hi")])
        .upsert(0, 2, vec![t("p1"), t("2"), t("bob"), Cell::Null])
        .upsert(0, 3, vec![t("p2"), t("1"), t("cy"), t("x")])
        // Collapses with seq 1: the last op for a key wins.
        .upsert(0, 4, vec![t("p1"), t("1"), t("ann2"), t("hi")])
        .delete(0, 5, vec![t("p2"), t("1")]);
    sink.apply("analytics", &b).await.unwrap();
    assert_eq!(live(&db), "p1\t1\tann2\thi\np1\t2\tbob\t\\N\n");
    assert_eq!(sink.watermark("analytics").await.unwrap(), 5);
    // Every version was written (without unchanged cells a batch does not collapse); FINAL
    // keeps one row per key.
    assert_eq!(ch(&format!("SELECT count() FROM `{db}`.users")), "5\n");
    assert_eq!(
        ch(&format!("SELECT count() FROM `{db}`.users FINAL")),
        "3\n"
    );

    // A batch at or below the watermark is skipped.
    let mut old = Batch::new(5);
    old.upsert(0, 5, vec![t("p9"), t("9"), t("late"), Cell::Null]);
    sink.apply("analytics", &old).await.unwrap();
    assert_eq!(
        ch(&format!(
            "SELECT count() FROM `{db}`.users WHERE project_id = 'p9'"
        )),
        "0\n"
    );

    // The same batch written twice (a crash between data and watermark) collapses under FINAL.
    let mut again = Batch::new(7);
    again
        .upsert(0, 6, vec![t("p1"), t("2"), t("bob2"), Cell::Null])
        .delete(0, 7, vec![t("p1"), t("1")]);
    sink.replay("analytics", &again).await.unwrap();
    sink.apply("analytics", &again).await.unwrap();
    assert_eq!(live(&db), "p1\t2\tbob2\t\\N\n");
    assert_eq!(
        ch(&format!("SELECT count() FROM `{db}`.users FINAL")),
        "3\n",
        "each key once under FINAL: (p1,1) deleted, (p1,2), (p2,1) deleted"
    );
    assert_eq!(sink.watermark("analytics").await.unwrap(), 7);

    // Replaying an older version does not win over a newer one.
    let mut older = Batch::new(2);
    older.upsert(0, 2, vec![t("p1"), t("2"), t("bob"), Cell::Null]);
    sink.replay("analytics", &older).await.unwrap();
    assert_eq!(live(&db), "p1\t2\tbob2\t\\N\n");
    assert_eq!(
        sink.watermark("analytics").await.unwrap(),
        7,
        "replay leaves it"
    );

    // A reconnecting writer starts from the stored watermark.
    let mut sink = connected(&db, &[users(&db)]).await;
    assert_eq!(sink.watermark("analytics").await.unwrap(), 7);
}

#[tokio::test]
async fn unchanged_toast_values_come_from_the_batch_or_the_current_row() {
    let db = fresh_ch_db("toast");
    let mut sink = connected(&db, &[users(&db)]).await;
    let mut b = Batch::new(2);
    b.upsert(0, 1, vec![t("p1"), t("1"), t("ann"), t("long bio 1")])
        .upsert(0, 2, vec![t("p1"), t("2"), t("bob"), t("long bio 2")]);
    sink.apply("analytics", &b).await.unwrap();

    let mut b = Batch::new(6);
    // From ClickHouse's current row.
    b.upsert(0, 3, vec![t("p1"), t("1"), t("ann2"), Cell::Unchanged])
        // From an earlier op of the same batch.
        .upsert(0, 4, vec![t("p1"), t("3"), t("cy"), t("bio 3")])
        .upsert(0, 5, vec![t("p1"), t("3"), t("cy2"), Cell::Unchanged])
        // A row ClickHouse never saw: NULL, with a warning.
        .upsert(0, 6, vec![t("p7"), t("7"), t("new"), Cell::Unchanged]);
    sink.apply("analytics", &b).await.unwrap();
    assert_eq!(
        live(&db),
        "p1\t1\tann2\tlong bio 1\np1\t2\tbob\tlong bio 2\np1\t3\tcy2\tbio 3\np7\t7\tnew\t\\N\n"
    );
    // A deleted row is not a source: its values are gone.
    let mut b = Batch::new(8);
    b.delete(0, 7, vec![t("p1"), t("2")]).upsert(
        0,
        8,
        vec![t("p1"), t("2"), t("back"), Cell::Unchanged],
    );
    sink.apply("analytics", &b).await.unwrap();
    assert!(live(&db).contains("p1\t2\tback\t\\N\n"), "{}", live(&db));

    // A key change (here a move to another tenant) deletes the old key under the change's
    // seq: the new key's unchanged values come from the old key's row, in ClickHouse or
    // earlier in the batch.
    let mut b = Batch::new(14);
    b.delete(0, 9, vec![t("p1"), t("1")])
        .upsert(0, 9, vec![t("p2"), t("1"), t("moved"), Cell::Unchanged])
        .upsert(0, 10, vec![t("p1"), t("4"), t("dd"), t("bio 4")])
        .delete(0, 11, vec![t("p1"), t("4")])
        .upsert(0, 11, vec![t("p3"), t("4"), t("dd2"), Cell::Unchanged])
        .upsert(0, 12, vec![t("p2"), t("1"), t("moved2"), Cell::Unchanged])
        // Moved twice in one batch: from ClickHouse's row at the first key.
        .upsert(0, 13, vec![t("p1"), t("3"), t("cy3"), Cell::Unchanged])
        .delete(0, 14, vec![t("p1"), t("3")])
        .upsert(0, 14, vec![t("p5"), t("3"), t("cy4"), Cell::Unchanged]);
    sink.apply("analytics", &b).await.unwrap();
    let rows = live(&db);
    assert!(rows.contains("p2\t1\tmoved2\tlong bio 1\n"), "{rows}");
    assert!(rows.contains("p3\t4\tdd2\tbio 4\n"), "{rows}");
    assert!(rows.contains("p5\t3\tcy4\tbio 3\n"), "{rows}");
    assert!(
        !rows.contains("p1\t1\t") && !rows.contains("p1\t4\t"),
        "{rows}"
    );
}

#[tokio::test]
async fn truncate_hides_older_rows_and_keeps_later_ones() {
    let db = fresh_ch_db("truncate");
    let mut sink = connected(&db, &[users(&db)]).await;
    let mut b = Batch::new(2);
    b.upsert(0, 1, vec![t("p1"), t("1"), t("a"), Cell::Null])
        .upsert(0, 2, vec![t("p2"), t("2"), t("b"), Cell::Null]);
    sink.apply("analytics", &b).await.unwrap();
    let mut b = Batch::new(5);
    b.upsert(0, 3, vec![t("p1"), t("3"), t("c"), Cell::Null])
        .truncate(0, 4)
        .upsert(0, 5, vec![t("p1"), t("5"), t("after"), Cell::Null]);
    sink.apply("analytics", &b).await.unwrap();
    assert_eq!(live(&db), "p1\t5\tafter\t\\N\n");
    assert_eq!(
        ch(&format!(
            "SELECT count() FROM `{db}`.users FINAL WHERE sync_is_deleted = 1 AND sync_sequence_id = 4"
        )),
        "3\n"
    );
}

/// Every row of the documented type mapping, through a real insert and select.
#[tokio::test]
async fn every_mapped_type_round_trips() {
    let db = fresh_ch_db("types");
    let numeric_12_2 = Some(((12 << 16) | 2) + 4);
    let mut columns = vec![
        TargetColumn::new("project_id", PgType::Text, false),
        TargetColumn::new("id", PgType::Int4, false),
    ];
    let cases: Vec<(&str, PgType, Option<i32>, &'static str, &str)> = vec![
        // name, type, typmod, PostgreSQL text, what ClickHouse 18.16 prints (TabSeparated)
        ("b", PgType::Bool, None, "t", "1"),
        ("i2", PgType::Int2, None, "-32768", "-32768"),
        ("i4", PgType::Int4, None, "2147483647", "2147483647"),
        (
            "i8",
            PgType::Int8,
            None,
            "-9223372036854775808",
            "-9223372036854775808",
        ),
        ("f4", PgType::Float4, None, "1.5", "1.5"),
        ("f8", PgType::Float8, None, "-2.25", "-2.25"),
        ("f8nan", PgType::Float8, None, "NaN", "nan"),
        (
            "dec",
            PgType::Numeric,
            numeric_12_2,
            "-1234567890.5",
            "-1234567890.50",
        ),
        (
            "num",
            PgType::Numeric,
            None,
            "3.14159265358979323846264338327950288419716939937510",
            "3.14159265358979323846264338327950288419716939937510",
        ),
        ("txt", PgType::Text, None, "héllo wörld", "héllo wörld"),
        (
            "u",
            PgType::Uuid,
            None,
            "61f0c404-5cb3-11e7-907b-a6006ad3dba0",
            "61f0c404-5cb3-11e7-907b-a6006ad3dba0",
        ),
        (
            "j",
            PgType::Json,
            None,
            "{\"a\": [1, 2]}",
            "{\"a\": [1, 2]}",
        ),
        (
            "jb",
            PgType::Jsonb,
            None,
            "{\"a\": [1, 2]}",
            "{\"a\": [1, 2]}",
        ),
        ("raw", PgType::Bytea, None, "\\x414243", "ABC"),
        ("d", PgType::Date, None, "2024-02-29", "2024-02-29"),
        (
            "ts",
            PgType::Timestamp,
            None,
            "2024-01-02 03:04:05.678",
            "2024-01-02 03:04:05",
        ),
        (
            "tstz",
            PgType::TimestampTz,
            None,
            "2024-01-02 03:04:05+00",
            "2024-01-02 03:04:05",
        ),
        ("tm", PgType::Time, None, "12:34:56.5", "12:34:56.5"),
        (
            "iv",
            PgType::Interval,
            None,
            "1 day 02:00:00",
            "1 day 02:00:00",
        ),
        ("ip", PgType::Inet, None, "10.0.0.1/8", "10.0.0.1/8"),
        ("en", PgType::Enum, None, "happy", "happy"),
        (
            "ai",
            PgType::Array(Box::new(PgType::Int4)),
            None,
            "{1,NULL,3}",
            "[1,NULL,3]",
        ),
        (
            "at",
            PgType::Array(Box::new(PgType::Text)),
            None,
            "{\"a b\",c}",
            "['a b','c']",
        ),
        ("nul", PgType::Int8, None, "", "\\N"),
    ];
    for (name, ty, typmod, _, _) in &cases {
        let mut c = TargetColumn::new(*name, ty.clone(), true);
        c.typmod = *typmod;
        columns.push(c);
    }
    let table = TargetTable::new(
        &db,
        "types",
        columns,
        vec!["project_id".into(), "id".into()],
    );
    let mut sink = connected(&db, std::slice::from_ref(&table)).await;
    let mut cells = vec![t("p"), t("1")];
    for (name, _, _, value, _) in &cases {
        cells.push(if *name == "nul" { Cell::Null } else { t(value) });
    }
    let mut b = Batch::new(1);
    b.upsert(0, 1, cells);
    sink.apply("analytics", &b).await.unwrap();
    for (name, _, _, _, printed) in &cases {
        let got = ch(&format!("SELECT `{name}` FROM `{db}`.types"));
        assert_eq!(got.trim_end_matches('\n'), *printed, "column {name}");
    }
    let types = ch(&format!(
        "SELECT name, type FROM system.columns WHERE database = '{db}' AND table = 'types'"
    ));
    for expected in [
        "dec\tNullable(Decimal(12, 2))",
        "num\tNullable(String)",
        "en\tLowCardinality(Nullable(String))",
        "ai\tArray(Nullable(Int32))",
        "u\tNullable(UUID)",
    ] {
        assert!(types.contains(expected), "{expected} in\n{types}");
    }
}

#[tokio::test]
async fn existing_tables_are_validated_with_every_problem() {
    let db = fresh_ch_db("validate");
    ch(&format!(
        "CREATE TABLE `{db}`.users (project_id String, id String, name UInt8, \
         sync_sequence_id UInt32) ENGINE = MergeTree ORDER BY id"
    ));
    let mut sink = ClickHouseSink::connect(&store(&db)).await.unwrap();
    // `pgfanout check` reports the same, read-only.
    let checked = sink
        .check_tables("analytics", &[users(&db)], true)
        .await
        .unwrap_err()
        .to_string();
    let e = sink
        .ensure_tables("analytics", &[users(&db)], true)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert_eq!(checked, msg);
    for part in [
        "column `id` is String, which cannot hold the Int64",
        "column `name` is UInt8",
        "column `bio` is missing",
        "column `sync_sequence_id` is UInt32",
        "column `sync_is_deleted` is missing",
        "the engine is MergeTree, not ReplacingMergeTree",
    ] {
        assert!(msg.contains(part), "{part:?} in {msg}");
    }
    // Without create_tables a missing table is an error, not created; with it, check is
    // content and creates nothing.
    let db2 = fresh_ch_db("validate");
    let mut sink = ClickHouseSink::connect(&store(&db2)).await.unwrap();
    sink.check_tables("analytics", &[users(&db2)], true)
        .await
        .unwrap();
    assert_eq!(ch(&format!("SHOW TABLES FROM `{db2}`")), "");
    let e = sink
        .check_tables("analytics", &[users(&db2)], false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = sink
        .ensure_tables("analytics", &[users(&db2)], false)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("does not exist; create it, or set create_tables = true"),
        "{e}"
    );
}

#[tokio::test]
async fn a_value_the_column_cannot_hold_is_rejected_with_table_column_and_seq_but_not_the_value() {
    let db = fresh_ch_db("reject");
    let mut table = TargetTable::new(
        &db,
        "events",
        vec![
            TargetColumn::new("project_id", PgType::Text, false),
            TargetColumn::new("id", PgType::Int8, false),
            TargetColumn::new("day", PgType::Date, true),
        ],
        vec!["project_id".into(), "id".into()],
    );
    table.version_column = "v".into();
    let mut sink = connected(&db, std::slice::from_ref(&table)).await;
    let mut b = Batch::new(1);
    b.upsert(0, 1, vec![t("p"), t("1"), t("1969-07-20")]);
    let e = sink.apply("analytics", &b).await.unwrap_err();
    let msg = e.to_string();
    for part in [
        "table `",
        "events`",
        "column day",
        "seq 1",
        "1970-01-01",
        "log read --from-seq 1",
    ] {
        assert!(msg.contains(part), "{part:?} in {msg}");
    }
    assert!(
        !msg.contains("1969-07-20"),
        "the value is never shown: {msg}"
    );
    assert!(!e.is_transient());
    assert_eq!(
        disposition(SinkError::from(e).kind(), Scope::Destination),
        Disposition::StopDestination
    );
    assert_eq!(
        sink.watermark("analytics").await.unwrap(),
        0,
        "nothing moved"
    );
}

/// A server error that quotes the row's value (a MATERIALIZED column that cannot parse it):
/// what the sink reports names the destination's table and the exception, never the value.
#[tokio::test]
async fn server_errors_that_quote_a_value_are_withheld() {
    let db = fresh_ch_db("quoting");
    let mut sink = connected(&db, &[users(&db)]).await;
    ch(&format!(
        "ALTER TABLE `{db}`.users ADD COLUMN name_number UInt64 MATERIALIZED toUInt64(name)"
    ));
    const SECRET: &str = "s3cr3t-value";
    // The server itself quotes the value (so this test can fail).
    let direct = clickhouse()
        .query(&format!(
            "INSERT INTO `{db}`.users (project_id, id, name, bio, sync_sequence_id, sync_is_deleted) VALUES ('p', 1, '{SECRET}', NULL, 1, 0)"
        ))
        .unwrap_err()
        .to_string();
    assert!(direct.contains(SECRET), "{direct}");

    let mut b = Batch::new(1);
    b.upsert(0, 1, vec![t("p1"), t("1"), t(SECRET), Cell::Null]);
    let e = sink.apply("analytics", &b).await.unwrap_err();
    let msg = Chain(&e).to_string();
    assert!(!msg.contains(SECRET), "{msg}");
    assert!(
        msg.contains("inserting seq 1 (table ") && msg.contains(&format!("`{db}`.`users`")),
        "{msg}"
    );
    assert!(
        msg.contains("ClickHouse exception 6 (CANNOT_PARSE_TEXT)"),
        "{msg}"
    );
    assert!(
        matches!(e, ClickHouseError::Server { code: Some(6), .. }),
        "{e:?}"
    );
    assert_eq!(
        disposition(SinkError::from(e).kind(), Scope::Destination),
        Disposition::StopDestination
    );
    assert_eq!(sink.watermark("analytics").await.unwrap(), 0);
}

#[tokio::test]
async fn views_show_live_rows_without_the_sync_columns() {
    let db = fresh_ch_db("views");
    let views = fresh_ch_db("views_pub");
    let mut st = store(&db);
    st.views_database = Some(views.clone());
    let mut sink = ClickHouseSink::connect(&st).await.unwrap();
    sink.ensure_tables("analytics", &[users(&db)], true)
        .await
        .unwrap();
    let mut b = Batch::new(3);
    b.upsert(0, 1, vec![t("p1"), t("1"), t("a"), Cell::Null])
        .upsert(0, 2, vec![t("p1"), t("2"), t("b"), Cell::Null])
        .delete(0, 3, vec![t("p1"), t("1")]);
    sink.apply("analytics", &b).await.unwrap();
    assert_eq!(
        ch(&format!("SELECT * FROM `{views}`.users")),
        "p1\t2\tb\t\\N\n"
    );
    let cols = ch(&format!(
        "SELECT name FROM system.columns WHERE database = '{views}' AND table = 'users'"
    ));
    assert_eq!(cols, "project_id\nid\nname\nbio\n");
    // Idempotent at every start; a changed column list recreates the view.
    let mut narrower = users(&db);
    narrower.columns.pop();
    let mut sink = ClickHouseSink::connect(&st).await.unwrap();
    sink.ensure_tables("analytics", &[users(&db)], true)
        .await
        .unwrap();
    let mut sink2 = ClickHouseSink::connect(&st).await.unwrap();
    sink2
        .ensure_tables("analytics", &[narrower], true)
        .await
        .unwrap();
    let cols = ch(&format!(
        "SELECT name FROM system.columns WHERE database = '{views}' AND table = 'users'"
    ));
    assert_eq!(cols, "project_id\nid\nname\n");
    drop(sink);
}

#[tokio::test]
async fn reader_user_is_refused_on_servers_without_access_control() {
    let db = fresh_ch_db("reader");
    let mut st = store(&db);
    st.views_database = Some("default".into());
    st.reader_user = Some("limited_user".into());
    let mut sink = ClickHouseSink::connect(&st).await.unwrap();
    if sink.server_version().supports_reader_policies() {
        return; // a current server: the statements are unit-tested in sink::clickhouse::ddl
    }
    let e = sink
        .ensure_tables("analytics", &[users(&db)], true)
        .await
        .unwrap_err();
    assert!(matches!(e, ClickHouseError::Schema { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("reader_user needs SQL access control"),
        "{e}"
    );
}

#[tokio::test]
async fn a_password_user_connects_and_a_wrong_password_is_a_clear_error() {
    let db = fresh_ch_db("auth");
    let (user, password) = pgfanout_testkit::localch::LocalClickHouse::PASSWORD_USER;
    let mut st = store(&db);
    st.user = user.into();
    st.password = Some(Secret::new(password));
    let mut sink = ClickHouseSink::connect(&st).await.unwrap();
    sink.ensure_tables("analytics", &[users(&db)], true)
        .await
        .unwrap();
    st.password = Some(Secret::new("wrong"));
    let e = ClickHouseSink::connect(&st).await.unwrap_err();
    let msg = Chain(&e).to_string();
    assert!(!e.is_transient(), "{msg}");
    assert!(!msg.contains(password) && !msg.contains("wrong"), "{msg}");
}

#[tokio::test]
async fn https_needs_a_trusted_certificate() {
    let db = fresh_ch_db("https");
    let mut st = store(&db);
    st.url = clickhouse().https_url();
    // Not trusted: the system's roots do not know the tests' CA.
    let e = ClickHouseSink::connect(&st).await.unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    // Trusted through SSL_CERT_FILE, as rustls' native roots read it. Only this test speaks
    // HTTPS, so setting it here changes nothing for the others.
    std::env::set_var("SSL_CERT_FILE", clickhouse().ca_cert());
    let mut sink = ClickHouseSink::connect(&st).await.unwrap();
    sink.ensure_tables("analytics", &[users(&db)], true)
        .await
        .unwrap();
    let mut b = Batch::new(1);
    b.upsert(0, 1, vec![t("p1"), t("1"), t("over tls"), Cell::Null]);
    sink.apply("analytics", &b).await.unwrap();
    assert_eq!(live(&db), "p1\t1\tover tls\t\\N\n");
}

/// `pgfanout check` warns when a ClickHouse password goes over http://, and not over https://.
#[tokio::test]
async fn check_warns_about_a_password_over_http() {
    let db = fresh_ch_db("plain_http");
    let (user, password) = pgfanout_testkit::localch::LocalClickHouse::PASSWORD_USER;
    let dir = tempfile::tempdir().unwrap();
    let config = |url: &str| {
        let path = dir.path().join("pgfanout.toml");
        let text = format!(
            "[source]\nurl = {:?}\n[log]\ndir = {:?}\n\
             [[mappings]]\nname = \"m\"\nsource = \"public.t\"\ntenant_key = \"tenant\"\ntarget = \"t\"\n\
             [mappings.columns]\nid = \"id\"\n\
             [[destinations]]\nname = \"analytics\"\nkind = \"clickhouse\"\nurl = {url:?}\n\
             user = {user:?}\npassword = \"${{CH_TEST_PASSWORD}}\"\ndatabase = {db:?}\n\
             tenants = \"*\"\nmappings = [\"m\"]\n",
            server().socket_url("postgres"),
            dir.path().join("log").display().to_string(),
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |path: std::path::PathBuf| async move {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"));
        cmd.args(["check", "--config"])
            .arg(path)
            .env("CH_TEST_PASSWORD", password)
            .env("RUST_LOG", "warn");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let out = run(config(&clickhouse().url())).await;
    assert!(out.contains("analytics: reachable"), "{out}");
    assert!(
        out.contains("warning encryption: destination analytics: a password is configured, but the ClickHouse URL http://"),
        "{out}"
    );
    assert!(!out.contains(password), "{out}");
    // https://: no warning (the connection itself may fail here: the tests' CA is not trusted).
    let out = run(config(&clickhouse().https_url())).await;
    assert!(!out.contains("password is configured"), "{out}");
}
