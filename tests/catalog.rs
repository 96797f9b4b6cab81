//! Catalog lookups against a real PostgreSQL, checked against what the replication stream
//! itself sends: relations (every replica identity, dropped, generated and INCLUDE columns,
//! hostile names), the enum registry, and the tenant registry snapshot.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use pgfanout::change::{Relation, ReplicaIdentity};
use pgfanout::disposition::Classify;
use pgfanout::fanout::route::TenantRegistry;
use pgfanout::report::Chain;
use pgfanout::source::catalog::{self, CatalogError};
use pgfanout::source::{LogicalStream, SlotSpec, SourceEvent};
use pgfanout::sql::QualifiedName;
use pgfanout::value::PgType;
use support::*;

fn keys(rel: &Relation) -> Vec<(&str, bool)> {
    rel.columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_key))
        .collect()
}

/// Publishes every table, inserts a row into each, and returns the Relation messages the
/// stream sent, by table name.
async fn streamed_relations(
    db: &str,
    client: &tokio_postgres::Client,
    inserts: &str,
    tables: usize,
) -> HashMap<(String, String), Arc<Relation>> {
    let mut stream = LogicalStream::start(&source_config(db, None), SlotSpec::Temporary)
        .await
        .unwrap();
    client.batch_execute(inserts).await.unwrap();
    let events = events_until(&mut stream, |evs| {
        let relations = evs
            .iter()
            .filter(|e| matches!(e, SourceEvent::Relation(_)))
            .count();
        relations >= tables && matches!(evs.last(), Some(SourceEvent::Commit { .. }))
    })
    .await;
    stream.close().await.unwrap();
    events
        .into_iter()
        .filter_map(|e| match e {
            SourceEvent::Relation(r) => Some(((r.schema.clone(), r.name.clone()), r)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relation_equals_what_pgoutput_sends() {
    let db = fresh_db("cat_relation").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            r#"CREATE TYPE mood AS ENUM ('sad', 'ok');
             CREATE TABLE composite (a int, b varchar(20), c numeric(10,2), m mood,
                                     n numeric(5,1)[], PRIMARY KEY (b, a));
             CREATE TABLE full_t (id int PRIMARY KEY, v text);
             ALTER TABLE full_t REPLICA IDENTITY FULL;
             CREATE TABLE idx_t (id int PRIMARY KEY, code text NOT NULL, v int);
             CREATE UNIQUE INDEX idx_t_code ON idx_t (code);
             ALTER TABLE idx_t REPLICA IDENTITY USING INDEX idx_t_code;
             CREATE TABLE nothing_t (id int PRIMARY KEY, v text);
             ALTER TABLE nothing_t REPLICA IDENTITY NOTHING;
             CREATE TABLE shaped (id int PRIMARY KEY, gone text, v int,
                                  g int GENERATED ALWAYS AS (v * 2) STORED, w timestamptz(3));
             ALTER TABLE shaped DROP COLUMN gone;
             CREATE TABLE include_t (id int, x int, PRIMARY KEY (id) INCLUDE (x));
             CREATE TABLE deferred_t (id int PRIMARY KEY DEFERRABLE, v text);
             CREATE SCHEMA "s;ch ""x""";
             CREATE TABLE "s;ch ""x"""."We;ird ""T" ("Id" int, "a""b" text, c bit(3),
                                                   PRIMARY KEY ("a""b", "Id"));"#,
        )
        .await
        .unwrap();
    let inserts = r#"INSERT INTO composite VALUES (1, 'b', 1.5, 'ok', '{1.5}');
         INSERT INTO full_t VALUES (1, 'x');
         INSERT INTO idx_t VALUES (1, 'c', 2);
         INSERT INTO nothing_t VALUES (1, 'x');
         INSERT INTO shaped (id, v, w) VALUES (1, 2, now());
         INSERT INTO include_t VALUES (1, 2);
         INSERT INTO deferred_t VALUES (1, 'x');
         INSERT INTO "s;ch ""x"""."We;ird ""T" VALUES (1, 'y', B'101');"#;
    let streamed = streamed_relations(&db, &client, inserts, 8).await;
    assert_eq!(streamed.len(), 8, "{:#?}", streamed.keys());

    for ((schema, name), sent) in &streamed {
        let qn = QualifiedName::new(schema, name);
        let looked_up = catalog::relation(&client, &qn)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{qn} not found"));
        assert_eq!(&looked_up, sent.as_ref(), "{qn}");
    }

    // The comparison above is only as good as the variety: pin what each case looks like.
    let rel = |schema: &'static str, name: &'static str| {
        streamed[&(schema.to_owned(), name.to_owned())].clone()
    };
    let composite = rel("public", "composite");
    assert_eq!(
        keys(&composite),
        [
            ("a", true),
            ("b", true),
            ("c", false),
            ("m", false),
            ("n", false)
        ]
    );
    assert_eq!(composite.columns[1].type_modifier, 20 + 4, "varchar(20)");
    assert_eq!(composite.replica_identity, ReplicaIdentity::Default);
    let full = rel("public", "full_t");
    assert_eq!(full.replica_identity, ReplicaIdentity::Full);
    assert_eq!(keys(&full), [("id", true), ("v", true)]);
    let idx = rel("public", "idx_t");
    assert_eq!(idx.replica_identity, ReplicaIdentity::Index);
    assert_eq!(keys(&idx), [("id", false), ("code", true), ("v", false)]);
    let nothing = rel("public", "nothing_t");
    assert_eq!(nothing.replica_identity, ReplicaIdentity::Nothing);
    assert_eq!(keys(&nothing), [("id", false), ("v", false)]);
    assert_eq!(
        keys(&rel("public", "shaped")),
        [("id", true), ("v", false), ("w", false)],
        "dropped and generated columns are not sent"
    );
    assert_eq!(
        keys(&rel("public", "include_t")),
        [("id", true), ("x", false)],
        "INCLUDE columns are not part of the identity"
    );
    assert_eq!(
        keys(&rel("public", "deferred_t")),
        [("id", false), ("v", false)],
        "a deferrable primary key is no replica identity"
    );
    assert_eq!(
        keys(&rel(r#"s;ch "x""#, r#"We;ird "T"#)),
        [("Id", true), (r#"a"b"#, true), ("c", false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relation_follows_schema_changes() {
    let db = fresh_db("cat_alter").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TABLE t (id int, a text, b int);
             ALTER TABLE t DROP COLUMN a;
             ALTER TABLE t ADD COLUMN c varchar(7) NOT NULL DEFAULT '';
             ALTER TABLE t ADD PRIMARY KEY (c, id);
             CREATE TABLE empty ();",
        )
        .await
        .unwrap();
    let streamed = streamed_relations(
        &db,
        &client,
        "INSERT INTO t (id, b) VALUES (1, 2); INSERT INTO empty DEFAULT VALUES;",
        2,
    )
    .await;
    let t = &streamed[&("public".to_owned(), "t".to_owned())];
    assert_eq!(keys(t), [("id", true), ("b", false), ("c", true)]);
    let empty = &streamed[&("public".to_owned(), "empty".to_owned())];
    assert!(empty.columns.is_empty());
    for sent in [t, empty] {
        let looked_up = catalog::relation(&client, &QualifiedName::new("public", &sent.name))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&looked_up, sent.as_ref());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tables_and_non_tables_are_none() {
    let db = fresh_db("cat_missing").await;
    let client = sql(&db).await;
    let long = "l".repeat(70);
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int);
             CREATE VIEW v AS SELECT 1 AS id;
             CREATE SEQUENCE s;
             CREATE TABLE {long} (id int);"
        ))
        .await
        .unwrap();
    let found = |schema: &str, name: &str| {
        let client = &client;
        let qn = QualifiedName::new(schema, name);
        async move { catalog::relation(client, &qn).await.unwrap().is_some() }
    };
    assert!(found("public", "t").await);
    assert!(!found("public", "nope").await);
    assert!(!found("other", "t").await);
    assert!(!found("public", "T").await, "names are case-sensitive");
    assert!(!found("public", "v").await, "a view is not a table");
    assert!(!found("public", "s").await);
    // PostgreSQL truncated the long name to 63 bytes; the 70-byte name is not that table.
    assert!(found("public", &long[..63]).await);
    assert!(!found("public", &long).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_reports_enums_like_the_replication_session() {
    let db = fresh_db("cat_types").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'ok');
             CREATE DOMAIN posint AS int CHECK (VALUE > 0);",
        )
        .await
        .unwrap();
    let oid_of = |name: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT oid, typarray FROM pg_type WHERE typname = $1",
                    &[&name],
                )
                .await
                .map(|r| (r.get::<_, u32>(0), r.get::<_, u32>(1)))
                .unwrap()
        }
    };
    let (mood, mood_array) = oid_of("mood").await;
    let (posint, _) = oid_of("posint").await;

    let types = catalog::types(&client).await.unwrap();
    assert_eq!(types.pg_type(mood), PgType::Enum);
    assert_eq!(
        types.pg_type(mood_array),
        PgType::Array(Box::new(PgType::Enum))
    );
    assert_eq!(types.pg_type(posint), PgType::Other);
    assert_eq!(types.pg_type(23), PgType::Int4);

    let stream = LogicalStream::start(&source_config(&db, None), SlotSpec::Temporary)
        .await
        .unwrap();
    for oid in [mood, mood_array, posint, 23, 1007] {
        assert_eq!(types.pg_type(oid), stream.types().pg_type(oid), "oid {oid}");
    }
    stream.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_snapshot_reads_what_live_updates_would_send() {
    let db = fresh_db("cat_tenants").await;
    // Output defaults unlike the replication session's: the snapshot must still read the text
    // the stream sends.
    sql(&db)
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET TimeZone = 'Asia/Kolkata';
             ALTER DATABASE {db} SET DateStyle = 'SQL, DMY';
             ALTER DATABASE {db} SET IntervalStyle = 'iso_8601';
             ALTER DATABASE {db} SET extra_float_digits = -2;"
        ))
        .await
        .unwrap();
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TABLE tenancies (id uuid PRIMARY KEY, gone int, name text, plan numeric(6,2),
                                     active bool, seen timestamptz, every interval,
                                     ratio float8, note text);
             ALTER TABLE tenancies DROP COLUMN gone;
             ALTER TABLE tenancies REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let mut stream = LogicalStream::start(
        &source_config(&db, Some(&["tenancies"])),
        SlotSpec::Temporary,
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "INSERT INTO tenancies VALUES
               ('A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 'acme', 12.5, true,
                '2024-05-06 07:08:09.5+00', '1 day 02:03:04', 0.1::float8 + 0.2, NULL),
               ('b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a22', 'Zeta \"q\"', NULL, false, NULL, NULL,
                NULL, 'n');",
        )
        .await
        .unwrap();
    let live = changes(&mut stream, 2).await;
    stream.close().await.unwrap();

    let table = QualifiedName::new("public", "tenancies");
    let query = "SELECT id AS tenant, name AS label, plan, active, seen, every, ratio, note
                 FROM tenancies ORDER BY id; -- trailing comment";
    let snap = catalog::tenants(&client, query, Some(&table))
        .await
        .unwrap();
    let attributes = ["label", "plan", "active", "seen", "every", "ratio", "note"];
    assert_eq!(snap.attributes, attributes);
    assert_eq!(snap.key_column.as_deref(), Some("id"));
    let mut columns = attributes;
    columns[0] = "name";
    assert_eq!(snap.attribute_columns, columns);
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        snap.rows,
        vec![
            (
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_owned(),
                vec![
                    s("acme"),
                    s("12.50"),
                    s("t"),
                    s("2024-05-06 07:08:09.5+00"),
                    s("1 day 02:03:04"),
                    s("0.30000000000000004"),
                    None
                ]
            ),
            (
                "b1eebc99-9c0b-4ef8-bb6d-6bb9bd380a22".to_owned(),
                vec![s("Zeta \"q\""), None, s("f"), None, None, None, s("n")]
            ),
        ]
    );
    // The output settings held for the query alone.
    let zone: String = client.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(zone, "Asia/Kolkata");

    // A registry loaded from the snapshot equals one built from the stream's changes with the
    // columns the snapshot names.
    let mut loaded = TenantRegistry::new(snap.attributes.clone());
    loaded.load(snap.rows.clone());
    let mut applied = TenantRegistry::new(snap.attributes.clone());
    let rel = &live[0].relation;
    let index = |name: &str| rel.columns.iter().position(|c| c.name == name).unwrap();
    let key = index(snap.key_column.as_deref().unwrap());
    let attrs: Vec<usize> = snap.attribute_columns.iter().map(|c| index(c)).collect();
    for change in &live {
        applied.apply(change, key, &attrs).unwrap();
    }
    assert_eq!(applied.len(), 2);
    for (tenant, _) in &snap.rows {
        assert_eq!(
            loaded.attributes(tenant),
            applied.attributes(tenant),
            "{tenant}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_resolves_aliases_to_table_columns() {
    let db = fresh_db("cat_alias").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            r#"CREATE SCHEMA "s;ch";
             CREATE TABLE "s;ch"."We;ird ""T" (pad int, id text PRIMARY KEY, project_id int,
                                               x text);
             ALTER TABLE "s;ch"."We;ird ""T" DROP COLUMN pad;
             INSERT INTO "s;ch"."We;ird ""T" VALUES ('t1', 7, 'X'), ('t2', NULL, NULL);
             CREATE TABLE other (id text, z int);"#,
        )
        .await
        .unwrap();
    let table = QualifiedName::new("s;ch", r#"We;ird "T"#);
    let q = r#"SELECT id AS tenant, project_id AS p, x FROM "s;ch"."We;ird ""T" ORDER BY id"#;
    let snap = catalog::tenants(&client, q, Some(&table)).await.unwrap();
    assert_eq!(snap.attributes, ["p", "x"]);
    assert_eq!(snap.key_column.as_deref(), Some("id"));
    assert_eq!(snap.attribute_columns, ["project_id", "x"]);
    assert_eq!(
        snap.rows,
        vec![
            (
                "t1".to_owned(),
                vec![Some("7".to_owned()), Some("X".to_owned())]
            ),
            ("t2".to_owned(), vec![None, None]),
        ]
    );

    // Tenant first or not, the attributes keep query order.
    let q = r#"SELECT x AS a, id AS tenant FROM "s;ch"."We;ird ""T" t ORDER BY id DESC"#;
    let snap = catalog::tenants(&client, q, Some(&table)).await.unwrap();
    assert_eq!(snap.attributes, ["a"]);
    assert_eq!(snap.key_column.as_deref(), Some("id"));
    assert_eq!(snap.attribute_columns, ["x"]);
    assert_eq!(snap.rows[0], ("t2".to_owned(), vec![None]));

    // Without a table nothing is resolved.
    let snap = catalog::tenants(
        &client,
        r#"SELECT id AS tenant, lower(x) AS y FROM "s;ch"."We;ird ""T" ORDER BY id"#,
        None,
    )
    .await
    .unwrap();
    assert_eq!(snap.key_column, None);
    assert!(snap.attribute_columns.is_empty());
    assert_eq!(snap.rows[0], ("t1".to_owned(), vec![Some("x".to_owned())]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_rejects_what_live_updates_cannot_follow() {
    let db = fresh_db("cat_plain").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TABLE t (id text PRIMARY KEY, x text,
                             g text GENERATED ALWAYS AS (upper(x)) STORED);
             CREATE TABLE other (id text, z int);
             CREATE VIEW tv AS SELECT id, x FROM t;
             INSERT INTO t VALUES ('t1', 'X');",
        )
        .await
        .unwrap();
    let table = QualifiedName::new("public", "t");
    let not_plain = |query: &'static str, column: &'static str| {
        let (client, table) = (&client, &table);
        async move {
            let err = catalog::tenants(client, query, Some(table))
                .await
                .unwrap_err();
            match &err {
                CatalogError::NotPlainColumn { column: c, .. } => assert_eq!(c, column, "{err}"),
                other => panic!("{query}: {other}"),
            }
            let text = err.to_string();
            assert!(
                text.contains(&format!("output column {column} "))
                    && text.contains("[tenants].table"),
                "{text}"
            );
        }
    };
    not_plain("SELECT id AS tenant, lower(x) AS y FROM t", "y").await;
    not_plain("SELECT lower(id) AS tenant, x FROM t", "tenant").await;
    not_plain("SELECT id AS tenant, g FROM t", "g").await;
    not_plain(
        "SELECT t.id AS tenant, o.z FROM t JOIN other o USING (id)",
        "z",
    )
    .await;
    not_plain("SELECT id AS tenant, x FROM tv", "tenant").await;

    let err = catalog::tenants(
        &client,
        "SELECT id AS tenant FROM t",
        Some(&QualifiedName::new("public", "nope")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, CatalogError::TenantTableMissing { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_query_problems_are_named() {
    let db = fresh_db("cat_bad").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TABLE t (id text, x text);
             INSERT INTO t VALUES ('t1', 'secret-value'), (NULL, 'y'), ('t1', 'z');",
        )
        .await
        .unwrap();
    let err_of = |query: &'static str| {
        let client = &client;
        async move { catalog::tenants(client, query, None).await.unwrap_err() }
    };

    let err = err_of("SELECT id AS tenant_id, x FROM t").await;
    assert!(matches!(err, CatalogError::NoTenantColumn), "{err}");
    assert!(err.to_string().contains("named tenant"), "{err}");

    let err = err_of("SELEC id AS tenant FROM t").await;
    let text = err.to_string();
    assert!(
        text.contains("[tenants].query") && text.contains("syntax error"),
        "{text}"
    );
    assert_eq!(err.sqlstate(), Some("42601"));
    assert!(!err.is_transient());

    let err = err_of("SELECT id AS tenant FROM t; DELETE FROM t").await;
    assert!(err.to_string().contains("[tenants].query"), "{err}");
    assert_eq!(err.sqlstate(), Some("42601"));

    let err = err_of("SELECT id AS tenant, x, x FROM t").await;
    assert!(
        matches!(&err, CatalogError::DuplicateColumn { column, count: 2 } if column == "x"),
        "{err}"
    );

    let err = err_of("SELECT id AS tenant FROM t WHERE x = $1").await;
    assert!(matches!(err, CatalogError::Parameters), "{err}");

    let err = err_of("SELECT id AS tenant, x FROM t WHERE id IS NULL").await;
    assert!(matches!(err, CatalogError::NullTenant { row: 1 }), "{err}");
    assert!(err.to_string().contains("[tenants].query"), "{err}");

    let err = err_of("SELECT id AS tenant FROM t WHERE id IS NOT NULL").await;
    assert!(
        matches!(
            err,
            CatalogError::DuplicateTenant {
                first: 1,
                second: 2
            }
        ),
        "{err}"
    );
    assert!(!Chain(&err).to_string().contains("t1"), "{err}");

    // A data error while running: named, but the value it trips over is not repeated.
    let err = err_of("SELECT id AS tenant, x::int AS n FROM t").await;
    let text = Chain(&err).to_string();
    assert!(text.contains("running [tenants].query"), "{text}");
    assert_eq!(err.sqlstate(), Some("22P02"));
    assert!(!text.contains("secret-value"), "{text}");
    assert!(std::error::Error::source(&err).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_transient() {
    let db = fresh_db("cat_lost").await;
    let client = sql(&db).await;
    let admin = sql(&db).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let err = wait_for("the terminated session to fail", || async {
        catalog::relation(&client, &QualifiedName::new("public", "t"))
            .await
            .err()
    })
    .await;
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("public.t"), "{err}");
}
