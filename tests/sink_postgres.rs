//! The PostgreSQL destination writer against a real server: tables created from a spec or
//! validated, batches applied with key collapse, the seq guard, the watermark, soft deletes,
//! unchanged values, hostile identifiers, and value errors.

mod support;

use pgfanout::disposition::Classify;
use pgfanout::sink::{
    text, ApplyOutcome, Batch, Cell, ColumnType, PostgresError, PostgresSink, TargetColumn,
    TargetTable,
};
use pgfanout::sql::quote_ident;
use pgfanout::value::PgType;
use support::*;

async fn sink(db: &str, schema: &str) -> PostgresSink {
    let client = conninfo(db).connect_sql().await.unwrap();
    PostgresSink::new(client, schema)
}

/// Every row of a query, values in text format (the session runs in UTC).
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

fn t(s: &'static str) -> Cell<'static> {
    text(s)
}

fn items_table() -> TargetTable {
    TargetTable::new(
        "public",
        "items",
        vec![
            TargetColumn::new("tenant", PgType::Text, false),
            TargetColumn::new("id", PgType::Int8, false),
            TargetColumn::new("price", PgType::Numeric, true),
            TargetColumn::new("at", PgType::TimestampTz, true),
            TargetColumn::new("doc", PgType::Jsonb, true),
            TargetColumn::new("uid", PgType::Uuid, true),
            TargetColumn::new("flag", PgType::Bool, true),
        ],
        vec!["tenant".into(), "id".into()],
    )
}

fn item(tenant: &'static str, id: &'static str, price: &'static str) -> Vec<Cell<'static>> {
    vec![
        t(tenant),
        t(id),
        t(price),
        t("2024-01-02 03:04:05.123456+00"),
        t(r#"{"a": [1, "x"]}"#),
        t("6d6c1f3e-0000-4000-8000-000000000001"),
        t("t"),
    ]
}

const ITEMS: &str =
    "SELECT tenant, id, price, at, doc, uid, flag, _seq FROM items ORDER BY tenant, id";

fn item_row(tenant: &str, id: &str, price: &str, seq: &str) -> Vec<Option<String>> {
    row(&[
        Some(tenant),
        Some(id),
        Some(price),
        Some("2024-01-02 03:04:05.123456+00"),
        Some(r#"{"a": [1, "x"]}"#),
        Some("6d6c1f3e-0000-4000-8000-000000000001"),
        Some("t"),
        Some(seq),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_tables_and_applies_inserts_updates_deletes_with_collapse() {
    let db = fresh_db("sink_apply").await;
    let client = sql(&db).await;
    let mut sink = sink(&db, "public").await;
    sink.ensure_tables(&[items_table()], true).await.unwrap();
    // Creating again, and validating what was created, both succeed.
    sink.ensure_tables(&[items_table()], true).await.unwrap();
    sink.ensure_tables(&[items_table()], false).await.unwrap();
    assert_eq!(sink.watermark("d1").await.unwrap(), 0);

    let mut b = Batch::new(10);
    b.upsert(0, 1, item("a", "1", "1.50"))
        .upsert(0, 2, item("a", "2", "2.00"))
        .upsert(0, 3, item("b", "1", "3"))
        .upsert(0, 4, item("a", "1", "12.50")) // collapses over seq 1
        .delete(0, 5, vec![t("a"), t("2")]) // collapses over seq 2: never written
        .upsert(0, 6, item("a", "3", "NaN"))
        .delete(0, 7, vec![t("b"), t("9")]); // no such row
    assert_eq!(sink.apply("d1", &b).await.unwrap(), ApplyOutcome::Applied);
    assert_eq!(
        rows(&client, ITEMS).await,
        vec![
            item_row("a", "1", "12.50", "4"),
            item_row("a", "3", "NaN", "6"),
            item_row("b", "1", "3", "3"),
        ]
    );
    assert_eq!(sink.watermark("d1").await.unwrap(), 10);

    let mut b = Batch::new(20);
    b.upsert(0, 11, item("a", "3", "-0.001"))
        .delete(0, 12, vec![t("a"), t("1")])
        .upsert(0, 13, item("c", "-9223372036854775808", "0"));
    sink.apply("d1", &b).await.unwrap();
    assert_eq!(
        rows(&client, ITEMS).await,
        vec![
            item_row("a", "3", "-0.001", "11"),
            item_row("b", "1", "3", "3"),
            item_row("c", "-9223372036854775808", "0", "13"),
        ]
    );
    assert_eq!(sink.watermark("d1").await.unwrap(), 20);
    // Another destination's watermark is its own.
    assert_eq!(sink.watermark("d2").await.unwrap(), 0);
    // NULLs travel as NULLs.
    let mut b = Batch::new(21);
    b.upsert(
        0,
        21,
        vec![
            t("a"),
            t("3"),
            Cell::Null,
            Cell::Null,
            Cell::Null,
            Cell::Null,
            Cell::Null,
        ],
    );
    sink.apply("d1", &b).await.unwrap();
    assert_eq!(
        rows(
            &client,
            "SELECT price, at, doc, uid, flag, _seq FROM items WHERE tenant = 'a' AND id = 3"
        )
        .await,
        vec![row(&[None, None, None, None, None, Some("21")])]
    );
}

fn kv_table(soft_delete: bool) -> TargetTable {
    TargetTable {
        soft_delete,
        ..TargetTable::new(
            "public",
            "kv",
            vec![
                TargetColumn::new("id", PgType::Int8, false),
                TargetColumn::new("big", PgType::Text, true),
                TargetColumn::new("small", PgType::Int4, true),
            ],
            vec!["id".into()],
        )
    }
}

/// A fresh database with the `kv` table (see [`kv_table`]) and a sink on it.
async fn kv_fixture(prefix: &str, soft_delete: bool) -> (tokio_postgres::Client, PostgresSink) {
    let db = fresh_db(prefix).await;
    let client = sql(&db).await;
    let mut sink = sink(&db, "public").await;
    sink.ensure_tables(&[kv_table(soft_delete)], true)
        .await
        .unwrap();
    (client, sink)
}

fn kv(id: &'static str, big: Cell<'static>, small: &'static str) -> Vec<Cell<'static>> {
    vec![t(id), big, t(small)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_changes_never_win_and_applied_batches_are_no_ops() {
    let (client, mut sink) = kv_fixture("sink_guard", false).await;
    const KV: &str = "SELECT id, big, small, _seq FROM kv ORDER BY id";

    let mut a = Batch::new(10);
    a.upsert(0, 9, kv("1", t("new"), "1"))
        .upsert(0, 10, kv("2", t("two"), "2"));
    assert_eq!(sink.apply("d", &a).await.unwrap(), ApplyOutcome::Applied);

    // A later batch carrying older changes (a replay overlapping the watermark) loses to the
    // newer rows, upserts and deletes alike.
    let mut old = Batch::new(15);
    old.upsert(0, 5, kv("1", t("old"), "0"))
        .delete(0, 6, vec![t("2")]);
    assert_eq!(sink.apply("d", &old).await.unwrap(), ApplyOutcome::Applied);
    let expected = vec![
        row(&[Some("1"), Some("new"), Some("1"), Some("9")]),
        row(&[Some("2"), Some("two"), Some("2"), Some("10")]),
    ];
    assert_eq!(rows(&client, KV).await, expected);
    assert_eq!(sink.watermark("d").await.unwrap(), 15);

    // Re-applying an applied batch is a no-op and the watermark does not move back.
    assert_eq!(
        sink.apply("d", &a).await.unwrap(),
        ApplyOutcome::AlreadyApplied { watermark: 15 }
    );
    let mut same = Batch::new(15);
    same.upsert(0, 15, kv("1", t("ignored"), "7"));
    assert_eq!(
        sink.apply("d", &same).await.unwrap(),
        ApplyOutcome::AlreadyApplied { watermark: 15 }
    );
    assert_eq!(rows(&client, KV).await, expected);
    assert_eq!(sink.watermark("d").await.unwrap(), 15);

    // An empty batch still moves the watermark (changes that concern no table here).
    assert_eq!(
        sink.apply("d", &Batch::new(30)).await.unwrap(),
        ApplyOutcome::Applied
    );
    assert_eq!(sink.watermark("d").await.unwrap(), 30);

    // A batch whose ops run past its last_seq is refused before anything is written.
    let mut bad = Batch::new(31);
    bad.upsert(0, 32, kv("1", t("x"), "1"));
    assert!(matches!(
        sink.apply("d", &bad).await,
        Err(PostgresError::InvalidBatch { .. })
    ));
    assert_eq!(sink.watermark("d").await.unwrap(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_and_unchanged_cells_keep_existing_values() {
    let (client, mut sink) = kv_fixture("sink_soft", true).await;
    const KV: &str = "SELECT id, big, small, _deleted, _seq FROM kv ORDER BY id";

    let mut b = Batch::new(2);
    b.upsert(0, 1, kv("1", t("X"), "1"))
        .upsert(0, 2, kv("2", t("Y"), "2"));
    sink.apply("d", &b).await.unwrap();

    let mut b = Batch::new(4);
    b.upsert(0, 3, kv("1", Cell::Unchanged, "10"))
        .delete(0, 4, vec![t("2")]);
    sink.apply("d", &b).await.unwrap();
    assert_eq!(
        rows(&client, KV).await,
        vec![
            row(&[Some("1"), Some("X"), Some("10"), Some("f"), Some("3")]),
            row(&[Some("2"), Some("Y"), Some("2"), Some("t"), Some("4")]),
        ]
    );

    let mut b = Batch::new(9);
    // An upsert after a soft delete revives the row.
    b.upsert(0, 5, kv("2", t("Y2"), "5"))
        // A row the target never saw: its unchanged column is NULL.
        .upsert(0, 6, kv("3", Cell::Unchanged, "6"))
        // Inside a batch an unchanged cell takes the earlier change's value.
        .upsert(0, 7, kv("4", t("Z"), "7"))
        .upsert(0, 8, kv("4", Cell::Unchanged, "8"))
        // A mix of rows with and without unchanged cells for existing rows.
        .upsert(0, 9, kv("1", Cell::Unchanged, "9"));
    sink.apply("d", &b).await.unwrap();
    assert_eq!(
        rows(&client, KV).await,
        vec![
            row(&[Some("1"), Some("X"), Some("9"), Some("f"), Some("9")]),
            row(&[Some("2"), Some("Y2"), Some("5"), Some("f"), Some("5")]),
            row(&[Some("3"), None, Some("6"), Some("f"), Some("6")]),
            row(&[Some("4"), Some("Z"), Some("8"), Some("f"), Some("8")]),
        ]
    );

    // An older unchanged-carrying change does not win either.
    let mut b = Batch::new(10);
    b.upsert(0, 2, kv("1", Cell::Unchanged, "0"));
    sink.apply("d", &b).await.unwrap();
    assert_eq!(
        rows(&client, "SELECT small, _seq FROM kv WHERE id = 1").await,
        vec![row(&[Some("9"), Some("9")])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_keeps_unchanged_values_from_the_old_key() {
    for soft in [false, true] {
        let (client, mut sink) = kv_fixture("sink_rekey", soft).await;
        let mut b = Batch::new(1);
        b.upsert(0, 1, kv("1", t("big one"), "1"));
        sink.apply("d", &b).await.unwrap();
        // An update of the primary key with the large value untouched: pgoutput sends the old
        // key and the new row with the value as unchanged TOAST, under one seq.
        let mut b = Batch::new(5);
        b.delete(0, 2, vec![t("1")])
            .upsert(0, 2, kv("2", Cell::Unchanged, "2"))
            // Written and moved inside one batch, then moved again.
            .upsert(0, 3, kv("5", t("big five"), "3"))
            .delete(0, 4, vec![t("5")])
            .upsert(0, 4, kv("6", Cell::Unchanged, "4"))
            .delete(0, 5, vec![t("2")])
            .upsert(0, 5, kv("7", Cell::Unchanged, "5"));
        sink.apply("d", &b).await.unwrap();
        let live = if soft {
            "SELECT id, big, small FROM kv WHERE NOT _deleted ORDER BY id"
        } else {
            "SELECT id, big, small FROM kv ORDER BY id"
        };
        assert_eq!(
            rows(&client, live).await,
            vec![
                row(&[Some("6"), Some("big five"), Some("4")]),
                row(&[Some("7"), Some("big one"), Some("5")]),
            ],
            "soft delete: {soft}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_without_create_reports_every_problem() {
    let db = fresh_db("sink_validate").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TABLE v (id bigint PRIMARY KEY, name integer, _seq bigint NOT NULL);
             CREATE TABLE w (id bigint, _seq bigint NOT NULL);",
        )
        .await
        .unwrap();
    let mut sink = sink(&db, "public").await;
    let v = TargetTable::new(
        "public",
        "v",
        vec![
            TargetColumn::new("id", PgType::Int8, false),
            TargetColumn::new("name", PgType::Text, true),
            TargetColumn::new("missing_col", PgType::TimestampTz, true),
        ],
        vec!["id".into()],
    );
    let w = TargetTable::new(
        "public",
        "w",
        vec![TargetColumn::new("id", PgType::Int8, false)],
        vec!["id".into()],
    );
    let absent = TargetTable::new(
        "public",
        "absent",
        vec![TargetColumn::new("id", PgType::Int8, false)],
        vec!["id".into()],
    );
    let err = sink
        .ensure_tables(&[v.clone(), w, absent], false)
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    let msg = err.to_string();
    let PostgresError::Schema { problems } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(problems.len(), 4, "{msg}");
    assert!(
        msg.contains(r#"column "public"."v"."missing_col" does not exist"#),
        "{msg}"
    );
    assert!(
        msg.contains("ADD COLUMN \"missing_col\" timestamptz"),
        "{msg}"
    );
    assert!(
        msg.contains(r#"column "public"."v"."name" has type integer but the mapping writes text"#),
        "{msg}"
    );
    assert!(
        msg.contains(r#"table "public"."w" has no primary key or unique index on exactly ("id")"#),
        "{msg}"
    );
    assert!(
        msg.contains(r#"table "public"."absent" does not exist"#),
        "{msg}"
    );

    // Problems in the spec itself are found before the server is asked.
    let mut bad = v;
    bad.key = vec!["nope".into()];
    bad.columns[1].ty = pgfanout::sink::ColumnType::Named("int; DROP TABLE v".into());
    let msg = sink
        .ensure_tables(&[bad], true)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("key column \"nope\""), "{msg}");
    assert!(msg.contains("not allowed in a type name"), "{msg}");
    assert_eq!(
        rows(&client, "SELECT count(*) FROM v").await,
        vec![row(&[Some("0")])]
    );

    // A named type is checked against the catalog too.
    client
        .batch_execute("CREATE TYPE mood AS ENUM ('ok', 'meh'); ALTER TABLE v ADD COLUMN m mood")
        .await
        .unwrap();
    let enum_table = TargetTable::new(
        "public",
        "v",
        vec![
            TargetColumn::new("id", PgType::Int8, false),
            TargetColumn::new("m", pgfanout::sink::ColumnType::Named("mood".into()), true),
        ],
        vec!["id".into()],
    );
    sink.ensure_tables(&[enum_table], false).await.unwrap();
    let mut b = Batch::new(1);
    b.upsert(0, 1, vec![t("1"), t("meh")]);
    sink.apply("d", &b).await.unwrap();
    assert_eq!(
        rows(&client, "SELECT id, m FROM v").await,
        vec![row(&[Some("1"), Some("meh")])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_work_and_inject_nothing() {
    let db = fresh_db("sink_hostile").await;
    let client = sql(&db).await;
    let schema = r#"We"ird; Schema"#;
    let table = r#"Ta"ble; DROP TABLE sentinel; --"#;
    let key = r#"K"ey;"#;
    let col = "Sp ace'); DELETE FROM sentinel; --";
    client
        .batch_execute("CREATE TABLE sentinel (x int); INSERT INTO sentinel VALUES (1)")
        .await
        .unwrap();
    let mut sink = sink(&db, schema).await;
    let spec = TargetTable {
        version_column: "Ver\"sion".into(),
        soft_delete: true,
        ..TargetTable::new(
            schema,
            table,
            vec![
                TargetColumn::new(key, PgType::Text, false),
                TargetColumn::new(col, PgType::Text, true),
            ],
            vec![key.into()],
        )
    };
    sink.ensure_tables(std::slice::from_ref(&spec), true)
        .await
        .unwrap();
    sink.ensure_tables(std::slice::from_ref(&spec), false)
        .await
        .unwrap();
    let mut b = Batch::new(2);
    b.upsert(0, 1, vec![t("'; DROP TABLE sentinel; --"), t("\"v\"")])
        .upsert(0, 2, vec![t("k2"), Cell::Unchanged]);
    sink.apply("dest'; --", &b).await.unwrap();
    let mut b = Batch::new(3);
    b.delete(0, 3, vec![t("k2")]);
    sink.apply("dest'; --", &b).await.unwrap();
    let q = format!(
        "SELECT {}, {}, {}, _deleted FROM {}.{} ORDER BY 1",
        quote_ident(key),
        quote_ident(col),
        quote_ident("Ver\"sion"),
        quote_ident(schema),
        quote_ident(table)
    );
    assert_eq!(
        rows(&client, &q).await,
        vec![
            row(&[
                Some("'; DROP TABLE sentinel; --"),
                Some("\"v\""),
                Some("1"),
                Some("f")
            ]),
            row(&[Some("k2"), None, Some("3"), Some("t")]),
        ]
    );
    assert_eq!(sink.watermark("dest'; --").await.unwrap(), 3);
    assert_eq!(
        rows(&client, "SELECT x FROM sentinel").await,
        vec![row(&[Some("1")])]
    );
}

/// PostgreSQL names no column for 22001 (too long) or 22003 (out of range): the sink finds
/// the column and the first change carrying such a value, and quotes neither value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_long_or_out_of_range_names_its_column_and_change_not_the_value() {
    let db = fresh_db("sink_toolong").await;
    let client = sql(&db).await;
    let mut sink = sink(&db, "public").await;
    let spec = TargetTable::new(
        "public",
        "people",
        vec![
            TargetColumn::new("id", PgType::Text, false),
            TargetColumn::new("name", ColumnType::Named("varchar(5)".into()), true),
            TargetColumn::new("amount", ColumnType::Named("numeric(4,1)".into()), true),
        ],
        vec!["id".into()],
    );
    sink.ensure_tables(&[spec], true).await.unwrap();
    // (batch, the value that does not fit, the column, its SQLSTATE, the first bad change)
    let mut too_long = Batch::new(20);
    for seq in 11..=20 {
        let name = if seq >= 14 { "secret-name" } else { "ok" };
        too_long.upsert(0, seq, vec![t(ID[seq as usize]), t(name), t("1.5")]);
    }
    let mut too_big = Batch::new(30);
    too_big
        .upsert(0, 21, vec![t("k"), t("a"), t("999.9")])
        .upsert(0, 22, vec![t("l"), t("b"), t("12345.6")])
        .upsert(0, 23, vec![t("m"), t("c"), t("1")]);
    for (batch, code, column, seq) in [
        (&too_long, "22001", "name", 14),
        (&too_big, "22003", "amount", 22),
    ] {
        let err = sink.apply("d", batch).await.unwrap_err();
        let msg = err.to_string();
        assert!(!err.is_transient(), "{msg}");
        assert_eq!(err.sqlstate(), Some(code), "{msg}");
        assert_eq!(err.column(), Some(column), "{msg}");
        assert_eq!(err.location().and_then(|l| l.seq), Some(seq), "{msg}");
        for part in [
            "public.people",
            &format!("column {column}"),
            &format!("change {seq}"),
        ] {
            assert!(msg.contains(part), "{part:?} in {msg}");
        }
        assert!(!msg.contains("secret") && !msg.contains("12345"), "{msg}");
        assert!(!format!("{err:?}").contains("secret"));
    }
    // Nothing was kept, no probe table is left, and the sink works on.
    assert_eq!(sink.watermark("d").await.unwrap(), 0);
    assert_eq!(
        rows(&client, "SELECT count(*) FROM people").await,
        vec![row(&[Some("0")])]
    );
    let mut fine = Batch::new(40);
    fine.upsert(0, 31, vec![t("z"), t("short"), t("999.9")]);
    assert_eq!(sink.apply("d", &fine).await.unwrap(), ApplyOutcome::Applied);
}

const ID: [&str; 21] = [
    "", "", "", "", "", "", "", "", "", "", "", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_the_wrong_type_is_a_definite_error_that_names_the_table_not_the_value() {
    let db = fresh_db("sink_typeerr").await;
    let client = sql(&db).await;
    let mut sink = sink(&db, "public").await;
    let spec = TargetTable::new(
        "public",
        "nums",
        vec![
            TargetColumn::new("id", PgType::Text, false),
            TargetColumn::new("n", PgType::Int8, true),
        ],
        vec!["id".into()],
    );
    sink.ensure_tables(&[spec], true).await.unwrap();
    let mut good = Batch::new(5);
    good.upsert(0, 5, vec![t("a"), t("1")]);
    sink.apply("d", &good).await.unwrap();

    let mut bad = Batch::new(10);
    bad.upsert(0, 6, vec![t("b"), t("2")])
        .upsert(0, 7, vec![t("c"), t("secret-abc")]);
    let err = sink.apply("d", &bad).await.unwrap_err();
    let msg = err.to_string();
    assert!(!err.is_transient(), "{msg}");
    assert_eq!(err.sqlstate(), Some("22P02"), "{msg}");
    assert_eq!(err.column(), Some("n"), "{msg}");
    assert_eq!(err.location().and_then(|l| l.seq), Some(7), "{msg}");
    assert!(msg.contains("public.nums"), "{msg}");
    assert!(msg.contains("column n"), "{msg}");
    assert!(msg.contains("change 7"), "{msg}");
    assert!(msg.contains("\"d\""), "{msg}");
    assert!(!msg.contains("secret"), "{msg}");
    let mut chain = std::error::Error::source(&err);
    while let Some(e) = chain {
        assert!(!e.to_string().contains("secret"), "{e}");
        chain = e.source();
    }
    assert!(!format!("{err:?}").contains("secret"));
    // Nothing of the batch was kept and the watermark stayed.
    assert_eq!(sink.watermark("d").await.unwrap(), 5);
    assert_eq!(
        rows(&client, "SELECT id, n, _seq FROM nums ORDER BY id").await,
        vec![row(&[Some("a"), Some("1"), Some("5")])]
    );
    // The sink is usable afterwards.
    sink.apply("d", &good).await.unwrap();
    let mut fixed = Batch::new(10);
    fixed.upsert(0, 7, vec![t("c"), t("3")]);
    assert_eq!(
        sink.apply("d", &fixed).await.unwrap(),
        ApplyOutcome::Applied
    );
    assert_eq!(sink.watermark("d").await.unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_removes_older_rows_and_keeps_newer_ones_of_the_same_batch() {
    let (client, mut sink) = kv_fixture("sink_truncate", false).await;
    const KV: &str = "SELECT id, big, small, _seq FROM kv ORDER BY id";

    let mut b = Batch::new(3);
    b.upsert(0, 1, kv("1", t("a"), "1"))
        .upsert(0, 2, kv("2", t("b"), "2"))
        .upsert(0, 3, kv("3", t("c"), "3"));
    sink.apply("d", &b).await.unwrap();

    // Seq order: 4 upsert, 5 truncate, 6 and 7 upserts, 8 another truncate of nothing newer.
    let mut b = Batch::new(10);
    b.upsert(0, 4, kv("4", t("d"), "4"))
        .truncate(0, 5)
        .upsert(0, 6, kv("5", t("e"), "5"))
        .upsert(0, 7, kv("1", t("a2"), "10"))
        .truncate(0, 2);
    assert_eq!(sink.apply("d", &b).await.unwrap(), ApplyOutcome::Applied);
    assert_eq!(
        rows(&client, KV).await,
        vec![
            row(&[Some("1"), Some("a2"), Some("10"), Some("7")]),
            row(&[Some("5"), Some("e"), Some("5"), Some("6")]),
        ]
    );
    assert_eq!(sink.watermark("d").await.unwrap(), 10);

    // A truncate that is the whole batch removes everything older.
    let mut b = Batch::new(12);
    b.truncate(0, 12);
    sink.apply("d", &b).await.unwrap();
    assert_eq!(rows(&client, KV).await, Vec::<Vec<Option<String>>>::new());
    assert_eq!(sink.watermark("d").await.unwrap(), 12);

    // Truncates are checked like row changes, and a bad one writes nothing.
    let mut b = Batch::new(20);
    b.upsert(0, 13, kv("6", t("f"), "6")).truncate(1, 14);
    let err = sink.apply("d", &b).await.unwrap_err();
    assert!(matches!(err, PostgresError::InvalidBatch { .. }), "{err}");
    assert!(err.to_string().contains("out of range"), "{err}");
    let mut b = Batch::new(20);
    b.upsert(0, 13, kv("6", t("f"), "6")).truncate(0, 21);
    let err = sink.apply("d", &b).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("truncate seq 21 is beyond the batch's last_seq 20"),
        "{err}"
    );
    assert_eq!(rows(&client, KV).await, Vec::<Vec<Option<String>>>::new());
    assert_eq!(sink.watermark("d").await.unwrap(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_truncate_marks_rows_deleted_and_an_upsert_revives_them() {
    let (client, mut sink) = kv_fixture("sink_truncate_soft", true).await;
    const KV: &str = "SELECT id, big, small, _deleted, _seq FROM kv ORDER BY id";

    let mut b = Batch::new(3);
    b.upsert(0, 1, kv("1", t("a"), "1"))
        .upsert(0, 2, kv("2", t("b"), "2"))
        .upsert(0, 3, kv("3", t("c"), "3"));
    sink.apply("d", &b).await.unwrap();
    let mut b = Batch::new(4);
    b.delete(0, 4, vec![t("3")]);
    sink.apply("d", &b).await.unwrap();

    let mut b = Batch::new(10);
    b.upsert(0, 5, kv("4", t("d"), "4"))
        .truncate(0, 6)
        .upsert(0, 7, kv("2", t("b2"), "20"));
    sink.apply("d", &b).await.unwrap();
    assert_eq!(
        rows(&client, KV).await,
        vec![
            // Marked deleted at the truncate's seq, values kept.
            row(&[Some("1"), Some("a"), Some("1"), Some("t"), Some("6")]),
            // Written after the truncate.
            row(&[Some("2"), Some("b2"), Some("20"), Some("f"), Some("7")]),
            // Already deleted: left as it was.
            row(&[Some("3"), Some("c"), Some("3"), Some("t"), Some("4")]),
            // Written before the truncate in the same batch.
            row(&[Some("4"), Some("d"), Some("4"), Some("t"), Some("6")]),
        ]
    );

    // A later upsert revives a truncated row; an older one does not.
    let mut b = Batch::new(12);
    b.upsert(0, 11, kv("1", t("a3"), "30"))
        .upsert(0, 5, kv("4", t("stale"), "0"));
    sink.apply("d", &b).await.unwrap();
    assert_eq!(
        rows(
            &client,
            "SELECT id, big, small, _deleted, _seq FROM kv WHERE id IN (1, 4) ORDER BY id"
        )
        .await,
        vec![
            row(&[Some("1"), Some("a3"), Some("30"), Some("f"), Some("11")]),
            row(&[Some("4"), Some("d"), Some("4"), Some("t"), Some("6")]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_truncate_leaves_newer_rows() {
    for soft_delete in [false, true] {
        let db = fresh_db(if soft_delete {
            "sink_truncate_old_soft"
        } else {
            "sink_truncate_old_hard"
        })
        .await;
        let client = sql(&db).await;
        let mut sink = sink(&db, "public").await;
        sink.ensure_tables(&[kv_table(soft_delete)], true)
            .await
            .unwrap();
        let kv_rows = if soft_delete {
            "SELECT id, big, _seq FROM kv WHERE NOT _deleted ORDER BY id"
        } else {
            "SELECT id, big, _seq FROM kv ORDER BY id"
        };

        let mut b = Batch::new(10);
        b.upsert(0, 5, kv("1", t("a"), "1"))
            .upsert(0, 7, kv("2", t("b"), "2"))
            .upsert(0, 10, kv("3", t("c"), "3"));
        sink.apply("d", &b).await.unwrap();

        // A later batch carrying an older truncate: only rows below its seq go; a row at
        // exactly its seq stays too.
        let mut b = Batch::new(20);
        b.truncate(0, 7);
        sink.apply("d", &b).await.unwrap();
        assert_eq!(
            rows(&client, kv_rows).await,
            vec![
                row(&[Some("2"), Some("b"), Some("7")]),
                row(&[Some("3"), Some("c"), Some("10")]),
            ],
            "soft_delete = {soft_delete}"
        );
        // One older than every row removes nothing.
        let mut b = Batch::new(21);
        b.truncate(0, 3);
        sink.apply("d", &b).await.unwrap();
        assert_eq!(
            rows(&client, kv_rows).await,
            vec![
                row(&[Some("2"), Some("b"), Some("7")]),
                row(&[Some("3"), Some("c"), Some("10")]),
            ],
            "soft_delete = {soft_delete}"
        );
        if soft_delete {
            assert_eq!(
                rows(&client, "SELECT id, _deleted, _seq FROM kv ORDER BY id").await,
                vec![
                    row(&[Some("1"), Some("t"), Some("7")]),
                    row(&[Some("2"), Some("f"), Some("7")]),
                    row(&[Some("3"), Some("f"), Some("10")]),
                ]
            );
        }
    }
}

const WATERMARKS: &str =
    "SELECT destination, seq, updated_at FROM _pgfanout_watermarks ORDER BY destination";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_a_wiped_table_and_leaves_the_watermark_alone() {
    let (client, mut sink) = kv_fixture("sink_replay", false).await;
    const KV: &str = "SELECT id, big, small, _seq FROM kv ORDER BY id";

    let mut b1 = Batch::new(5);
    b1.upsert(0, 1, kv("1", t("a"), "1"))
        .upsert(0, 2, kv("2", t("b"), "2"))
        .upsert(0, 3, kv("3", t("c"), "3"));
    let mut b2 = Batch::new(10);
    b2.truncate(0, 6)
        .upsert(0, 7, kv("1", t("a2"), "10"))
        .upsert(0, 8, kv("4", t("d"), "4"))
        .upsert(0, 9, kv("6", t("f"), "6"));
    let mut b3 = Batch::new(15);
    b3.upsert(0, 12, kv("4", Cell::Unchanged, "40"))
        .upsert(0, 13, kv("5", t("e"), "5"))
        .delete(0, 14, vec![t("6")]);
    for b in [&b1, &b2, &b3] {
        assert_eq!(sink.apply("d", b).await.unwrap(), ApplyOutcome::Applied);
    }
    let applied = vec![
        row(&[Some("1"), Some("a2"), Some("10"), Some("7")]),
        row(&[Some("4"), Some("d"), Some("40"), Some("12")]),
        row(&[Some("5"), Some("e"), Some("5"), Some("13")]),
    ];
    assert_eq!(rows(&client, KV).await, applied);
    let watermarks = rows(&client, WATERMARKS).await;
    assert_eq!(watermarks.len(), 1);
    assert_eq!(watermarks[0][1].as_deref(), Some("15"));

    // Lost rows; apply would skip the history, replay writes it again.
    client.batch_execute("DELETE FROM kv").await.unwrap();
    assert_eq!(
        sink.apply("d", &b2).await.unwrap(),
        ApplyOutcome::AlreadyApplied { watermark: 15 }
    );
    assert_eq!(rows(&client, KV).await, Vec::<Vec<Option<String>>>::new());
    for b in [&b1, &b2, &b3] {
        sink.replay("d", b).await.unwrap();
    }
    assert_eq!(rows(&client, KV).await, applied);
    // Not moved, not even touched; replay for another destination creates no watermark.
    sink.replay("other", &b3).await.unwrap();
    assert_eq!(rows(&client, WATERMARKS).await, watermarks);
    assert_eq!(sink.watermark("d").await.unwrap(), 15);

    // Old changes replayed over newer rows lose to them: upserts, deletes and truncates.
    let mut stale = Batch::new(10);
    stale
        .upsert(0, 3, kv("1", t("stale"), "0"))
        .upsert(0, 9, kv("4", Cell::Unchanged, "0"))
        .truncate(0, 5)
        .delete(0, 10, vec![t("5")]);
    sink.replay("d", &stale).await.unwrap();
    assert_eq!(rows(&client, KV).await, applied);

    // A bad batch is refused before anything is written, as by apply.
    let mut bad = Batch::new(10);
    bad.upsert(0, 20, kv("1", t("x"), "1"));
    assert!(matches!(
        sink.replay("d", &bad).await,
        Err(PostgresError::InvalidBatch { .. })
    ));
    assert_eq!(rows(&client, KV).await, applied);
    assert_eq!(rows(&client, WATERMARKS).await, watermarks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_an_old_batch_over_soft_deleted_rows_changes_nothing() {
    let (client, mut sink) = kv_fixture("sink_replay_soft", true).await;
    const KV: &str = "SELECT id, big, small, _deleted, _seq FROM kv ORDER BY id";

    let mut b1 = Batch::new(5);
    b1.upsert(0, 1, kv("1", t("a"), "1"))
        .upsert(0, 2, kv("2", t("b"), "2"))
        .upsert(0, 3, kv("3", t("c"), "3"));
    let mut b2 = Batch::new(10);
    b2.delete(0, 6, vec![t("2")])
        .truncate(0, 7)
        .upsert(0, 8, kv("3", t("c2"), "30"));
    sink.apply("d", &b1).await.unwrap();
    sink.apply("d", &b2).await.unwrap();
    let applied = vec![
        row(&[Some("1"), Some("a"), Some("1"), Some("t"), Some("7")]),
        row(&[Some("2"), Some("b"), Some("2"), Some("t"), Some("6")]),
        row(&[Some("3"), Some("c2"), Some("30"), Some("f"), Some("8")]),
    ];
    assert_eq!(rows(&client, KV).await, applied);
    let watermarks = rows(&client, WATERMARKS).await;

    // Every row is newer than b1: its upserts neither revive nor overwrite anything.
    sink.replay("d", &b1).await.unwrap();
    assert_eq!(rows(&client, KV).await, applied);
    // Replaying the newest batch again is a no-op as well.
    sink.replay("d", &b2).await.unwrap();
    assert_eq!(rows(&client, KV).await, applied);
    assert_eq!(rows(&client, WATERMARKS).await, watermarks);
    assert_eq!(sink.watermark("d").await.unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermark_of_another_lineage_is_refused_in_the_batch_transaction() {
    use pgfanout::binding::Lineage;
    let db = fresh_db("sink_lineage").await;
    let client = sql(&db).await;
    let (ours, theirs) = (Lineage::random(), Lineage::random());
    let mut first = sink(&db, "public").await;
    first.ensure_tables(&[items_table()], true).await.unwrap();
    // A watermark written before lineages existed is bound by the first batch with one.
    let mut b = Batch::new(5);
    b.upsert(0, 5, item("a", "1", "1"));
    first.apply("d", &b).await.unwrap();
    assert_eq!(first.lineage("d").await.unwrap(), None);
    first.bind_lineage(ours);
    let mut b = Batch::new(6);
    b.upsert(0, 6, item("a", "1", "2"));
    first.apply("d", &b).await.unwrap();
    assert_eq!(first.lineage("d").await.unwrap(), Some(ours.to_string()));

    // A writer of another numbering changes nothing: not the rows, not the watermark.
    let mut other = sink(&db, "public").await;
    other.ensure_tables(&[items_table()], false).await.unwrap();
    other.bind_lineage(theirs);
    let mut b = Batch::new(50);
    b.upsert(0, 50, item("a", "1", "99"));
    let err = other.apply("d", &b).await.unwrap_err();
    let msg = pgfanout::report::Chain(&err).to_string();
    assert!(
        msg.contains("holds the seqs of another change log")
            && msg.contains(&ours.to_string())
            && msg.contains(&theirs.to_string()),
        "{msg}"
    );
    assert_eq!(err.kind(), pgfanout::disposition::ErrorKind::Rejected);
    assert_eq!(other.watermark("d").await.unwrap(), 6);
    assert_eq!(
        rows(&client, ITEMS).await,
        vec![item_row("a", "1", "2", "6")]
    );
}

/// Parallel apply (invariant 35): a batch split over two connections whose second connection
/// committed its share while the batch transaction did not (a crash or an error between the
/// commits) leaves that share's rows written and the watermark where it was. Retried over
/// other batch boundaries, as after a restart, the rows a share already committed are not
/// written again: an older upsert re-written after the newer delete that removed its row
/// would bring the row back.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_apply_interrupted_between_its_commits_writes_no_change_twice() {
    let db = fresh_db("sink_parallel").await;
    let client = sql(&db).await;
    let mut sink = sink(&db, "public").await;
    sink.ensure_tables(&[kv_table(false)], true).await.unwrap();
    sink.add_apply_connection(conninfo(&db).connect_sql().await.unwrap())
        .await
        .unwrap();
    assert_eq!(sink.apply_connections(), 2);
    // Enough rows that a batch is split (smaller ones are written by one connection).
    const N: u64 = 300;
    let kv_at = |id: u64, big: &'static str, small: &'static str| {
        vec![text(id.to_string()), t(big), t(small)]
    };
    const KV: &str = "SELECT id, big, _seq FROM kv ORDER BY id";

    let mut a = Batch::new(1000);
    for id in 1..=N {
        a.upsert(0, id, kv_at(id, "one", "1"));
    }
    assert_eq!(sink.apply("d", &a).await.unwrap(), ApplyOutcome::Applied);
    assert_eq!(rows(&client, KV).await.len(), N as usize);

    // Every row updated, then deleted; the batch transaction fails once the other
    // connection committed its share.
    let updates = |b: &mut Batch<'static>| {
        for id in 1..=N {
            b.upsert(0, 1000 + id, kv_at(id, "two", "2"));
        }
    };
    let deletes = |b: &mut Batch<'static>| {
        for id in 1..=N {
            b.delete(0, 2000 + id, vec![text(id.to_string())]);
        }
    };
    let mut b = Batch::new(3000);
    updates(&mut b);
    deletes(&mut b);
    pgfanout::failpoint::arm("sink::postgres::between_partitions=1*return(error)").unwrap();
    assert!(sink.apply("d", &b).await.is_err());
    assert_eq!(sink.watermark("d").await.unwrap(), 1000);
    let survivors: Vec<u64> = rows(&client, KV)
        .await
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    // The batch was split: one share's deletes are committed, the other's rolled back.
    assert!(
        !survivors.is_empty() && survivors.len() < N as usize,
        "both connections had keys: {} of {N} rows left",
        survivors.len()
    );

    // Retried over a shorter batch: only the updates. The committed share's rows stay deleted.
    let mut c = Batch::new(2000);
    updates(&mut c);
    assert_eq!(sink.apply("d", &c).await.unwrap(), ApplyOutcome::Applied);
    let expected: Vec<Vec<Option<String>>> = survivors
        .iter()
        .map(|id| {
            let (id, seq) = (id.to_string(), (1000 + id).to_string());
            row(&[Some(&id), Some("two"), Some(&seq)])
        })
        .collect();
    let mut got = rows(&client, KV).await;
    got.sort_by_key(|r| r[0].as_deref().unwrap().parse::<u64>().unwrap());
    assert_eq!(got, expected);
    assert_eq!(sink.watermark("d").await.unwrap(), 2000);

    // The rest of the retry: every row is gone, the watermark at the end.
    let mut d = Batch::new(3000);
    deletes(&mut d);
    assert_eq!(sink.apply("d", &d).await.unwrap(), ApplyOutcome::Applied);
    assert!(rows(&client, KV).await.is_empty());
    assert_eq!(sink.watermark("d").await.unwrap(), 3000);
}
