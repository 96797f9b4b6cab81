//! The replication source against a real PostgreSQL: every pgoutput message type, replica
//! identities, TRUNCATE flags, schema changes mid-stream, unchanged TOAST, commit order, slot
//! feedback, slot and publication management.

mod support;

use pgfanout::change::{Datum, OldTuple, Op, ReplicaIdentity};
use pgfanout::disposition::Classify;
use pgfanout::lsn::Lsn;
use pgfanout::sequencer::Sequencer;
use pgfanout::source::{LogicalStream, SlotSpec, SourceError, SourceEvent};
use support::*;

fn kind(e: &SourceEvent) -> String {
    match e {
        SourceEvent::Begin { .. } => "Begin".into(),
        SourceEvent::Commit { .. } => "Commit".into(),
        SourceEvent::Relation(r) => format!("Relation({})", r.name),
        SourceEvent::Type { name, .. } => format!("Type({name})"),
        SourceEvent::Origin { name, .. } => format!("Origin({name})"),
        SourceEvent::Message {
            prefix,
            transactional,
            ..
        } => format!("Message({prefix},{transactional})"),
        SourceEvent::Change(c) => format!("{}({})", c.op.name(), c.relation.name),
        SourceEvent::Keepalive { .. } => "Keepalive".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_from_a_real_server() {
    let db = fresh_db("every_message").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             CREATE TABLE d (id int PRIMARY KEY, v text, m mood);
             CREATE TABLE f (id int PRIMARY KEY, v text);
             ALTER TABLE f REPLICA IDENTITY FULL;
             CREATE TABLE parent (id serial PRIMARY KEY);
             CREATE TABLE child (id serial PRIMARY KEY, parent_id int REFERENCES parent(id));
             SELECT pg_replication_origin_create('upstream');",
        )
        .await
        .unwrap();
    let mut stream = LogicalStream::start(&source_config(&db, None), SlotSpec::Temporary)
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO d VALUES (1, 'a', 'ok');
             UPDATE d SET v = 'b' WHERE id = 1;
             UPDATE d SET id = 2 WHERE id = 1;
             DELETE FROM d WHERE id = 2;
             INSERT INTO f VALUES (1, 'x');
             UPDATE f SET v = 'y';
             DELETE FROM f;
             INSERT INTO parent DEFAULT VALUES;
             INSERT INTO child (parent_id) SELECT id FROM parent;
             TRUNCATE parent RESTART IDENTITY CASCADE;
             SELECT pg_logical_emit_message(true, 'tx-prefix', 'in a transaction');
             SELECT pg_logical_emit_message(false, 'nontx', '\\x00ff'::bytea);",
        )
        .await
        .unwrap();
    // Each call is its own transaction; the origin is stamped on the commit record.
    client
        .batch_execute("SELECT pg_replication_origin_session_setup('upstream')")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO d VALUES (3, 'from upstream', 'sad')")
        .await
        .unwrap();
    client
        .batch_execute("SELECT pg_replication_origin_session_reset()")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO d VALUES (100, 'end', 'happy')")
        .await
        .unwrap();
    let events = events_until(&mut stream, |evs| {
        matches!(evs.last(), Some(SourceEvent::Commit { .. }))
            && evs.iter().any(|e| matches!(e, SourceEvent::Change(c) if c.relation.name == "d" && matches!(&c.op, Op::Insert { new } if new.0[0] == Datum::Text("100".into()))))
    })
    .await;
    let kinds: Vec<String> = events.iter().map(kind).collect();
    for expected in [
        "Type(mood)",
        "Relation(d)",
        "Relation(f)",
        "Relation(parent)",
        "Relation(child)",
        "insert(d)",
        "update(d)",
        "delete(d)",
        "update(f)",
        "delete(f)",
        "truncate(parent)",
        "truncate(child)",
        "Message(tx-prefix,true)",
        "Message(nontx,false)",
        "Origin(upstream)",
        "Begin",
        "Commit",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "no {expected} in {kinds:#?}"
        );
    }

    let changes: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Change(c) => Some(c),
            _ => None,
        })
        .collect();
    // d: plain update has no old tuple; the key change carries the old key only.
    let d_updates: Vec<_> = changes
        .iter()
        .filter(|c| c.relation.name == "d" && c.op.name() == "update")
        .collect();
    assert_eq!(d_updates.len(), 2);
    assert!(matches!(&d_updates[0].op, Op::Update { old: None, .. }));
    match &d_updates[1].op {
        Op::Update {
            old: Some(OldTuple::Key(old)),
            new,
        } => {
            assert_eq!(old.0[0], Datum::Text("1".into()));
            assert_eq!(
                old.0[1],
                Datum::Null,
                "non-key columns of a key tuple are null"
            );
            assert_eq!(new.0[0], Datum::Text("2".into()));
        }
        other => panic!("primary-key change should carry the old key: {other:?}"),
    }
    let d_rel = &d_updates[0].relation;
    assert_eq!(d_rel.replica_identity, ReplicaIdentity::Default);
    assert_eq!(
        d_rel.columns.iter().map(|c| c.is_key).collect::<Vec<_>>(),
        [true, false, false]
    );
    let d_delete = changes
        .iter()
        .find(|c| c.relation.name == "d" && c.op.name() == "delete")
        .unwrap();
    assert!(
        matches!(&d_delete.op, Op::Delete { old: OldTuple::Key(t) } if t.0[0] == Datum::Text("2".into()))
    );

    // f: REPLICA IDENTITY FULL sends whole old rows.
    let f_update = changes
        .iter()
        .find(|c| c.relation.name == "f" && c.op.name() == "update")
        .unwrap();
    assert_eq!(f_update.relation.replica_identity, ReplicaIdentity::Full);
    match &f_update.op {
        Op::Update {
            old: Some(OldTuple::Full(old)),
            new,
        } => {
            assert_eq!(
                old.0,
                vec![Datum::Text("1".into()), Datum::Text("x".into())]
            );
            assert_eq!(new.0[1], Datum::Text("y".into()));
        }
        other => panic!("FULL identity update should carry the old row: {other:?}"),
    }
    let f_delete = changes
        .iter()
        .find(|c| c.relation.name == "f" && c.op.name() == "delete")
        .unwrap();
    assert!(
        matches!(&f_delete.op, Op::Delete { old: OldTuple::Full(t) } if t.0[1] == Datum::Text("y".into()))
    );

    // TRUNCATE … CASCADE RESTART IDENTITY: one change per relation, flags kept.
    let truncates: Vec<_> = changes
        .iter()
        .filter(|c| c.op.name() == "truncate")
        .collect();
    assert_eq!(truncates.len(), 2);
    for t in &truncates {
        assert_eq!(
            t.op,
            Op::Truncate {
                cascade: true,
                restart_identity: true
            }
        );
    }
    assert_eq!(truncates[0].xid, truncates[1].xid);

    // The message contents arrive byte for byte.
    let nontx = events
        .iter()
        .find_map(|e| match e {
            SourceEvent::Message {
                prefix, content, ..
            } if prefix == "nontx" => Some(content.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(&nontx[..], b"\x00\xff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_is_dense_and_follows_commit_order_not_begin_order() {
    let db = fresh_db("commit_order").await;
    let a = sql(&db).await;
    let b = sql(&db).await;
    a.batch_execute("CREATE TABLE t (id int PRIMARY KEY, who text)")
        .await
        .unwrap();
    let mut stream = LogicalStream::start(&source_config(&db, Some(&["t"])), SlotSpec::Temporary)
        .await
        .unwrap();
    // A begins and writes first, B commits first: B's changes must be numbered first.
    a.batch_execute("BEGIN; INSERT INTO t VALUES (1, 'a'), (2, 'a');")
        .await
        .unwrap();
    b.batch_execute("BEGIN; INSERT INTO t VALUES (3, 'b'); COMMIT;")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO t VALUES (4, 'a'); COMMIT;")
        .await
        .unwrap();
    b.batch_execute("INSERT INTO t SELECT g, 'c' FROM generate_series(10, 29) g")
        .await
        .unwrap();

    let mut sequencer = Sequencer::resume_after(0);
    let numbered: Vec<_> = changes(&mut stream, 24)
        .await
        .into_iter()
        .map(|c| sequencer.assign(c))
        .collect();
    let seqs: Vec<u64> = numbered.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (1..=24).collect::<Vec<_>>());
    let who: Vec<&str> = numbered
        .iter()
        .map(|c| match &c.change.op {
            Op::Insert { new } => support::text(&c.change, new, "who").unwrap(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(&who[..4], ["b", "a", "a", "a"]);
    // LSNs grow within and across transactions in commit order's per-transaction blocks.
    assert!(numbered[1].change.lsn < numbered[2].change.lsn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_mid_stream_apply_to_the_changes_after_them() {
    let db = fresh_db("alter").await;
    let client = sql(&db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text)")
        .await
        .unwrap();
    let mut stream = LogicalStream::start(&source_config(&db, Some(&["t"])), SlotSpec::Temporary)
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO t VALUES (1, 'one');
             ALTER TABLE t ADD COLUMN b int DEFAULT 7;
             INSERT INTO t VALUES (2, 'two', 8);
             UPDATE t SET a = 'uno' WHERE id = 1;
             ALTER TABLE t DROP COLUMN a;
             INSERT INTO t VALUES (3, 9);",
        )
        .await
        .unwrap();
    let got = changes(&mut stream, 4).await;
    let names = |i: usize| {
        got[i]
            .relation
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(0), ["id", "a"]);
    assert_eq!(names(1), ["id", "a", "b"]);
    assert_eq!(names(2), ["id", "a", "b"]);
    match &got[2].op {
        Op::Update { new, .. } => {
            assert_eq!(new.0[2], Datum::Text("7".into()), "default filled in")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(names(3), ["id", "b"]);
    match &got[3].op {
        Op::Insert { new } => assert_eq!(
            new.0,
            vec![Datum::Text("3".into()), Datum::Text("9".into())]
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_leaves_a_large_value_alone_marks_it_unchanged_toast() {
    let db = fresh_db("toast").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
             -- EXTERNAL: stored out of line without compression, whatever the content.
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
        )
        .await
        .unwrap();
    let mut stream =
        LogicalStream::start(&source_config(&db, Some(&["docs"])), SlotSpec::Temporary)
            .await
            .unwrap();
    client
        .batch_execute(
            "INSERT INTO docs SELECT 1, 'draft', string_agg(md5(random()::text), '') FROM generate_series(1, 600);
             UPDATE docs SET title = 'final' WHERE id = 1;",
        )
        .await
        .unwrap();
    let got = changes(&mut stream, 2).await;
    match &got[0].op {
        Op::Insert { new } => match &new.0[2] {
            Datum::Text(body) => assert!(body.len() > 8 * 1024, "body is {} bytes", body.len()),
            other => panic!("insert should carry the body: {other:?}"),
        },
        other => panic!("{other:?}"),
    }
    match &got[1].op {
        Op::Update { new, .. } => {
            assert_eq!(new.0[1], Datum::Text("final".into()));
            assert_eq!(new.0[2], Datum::UnchangedToast);
        }
        other => panic!("{other:?}"),
    }
}

async fn confirmed_flush_lsn(client: &tokio_postgres::Client, slot: &str) -> Lsn {
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_never_passes_an_unconfirmed_commit_and_advances_while_idle() {
    let db = fresh_db("feedback").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id serial, pad text)",
        )
        .await
        .unwrap();
    let cfg = source_config(&db, Some(&["t"]));
    let mut stream = LogicalStream::start(&cfg, SlotSpec::Named(cfg.slot.clone()))
        .await
        .unwrap();
    let start = confirmed_flush_lsn(&client, &cfg.slot).await;

    // A transaction is read but not confirmed: keepalives and status updates must not move
    // the slot past it, however long we wait and however much other WAL is written.
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let events = events_until(&mut stream, |e| {
        matches!(e.last(), Some(SourceEvent::Commit { .. }))
    })
    .await;
    let Some(SourceEvent::Commit { end_lsn, .. }) = events.last() else {
        unreachable!()
    };
    let end_lsn = *end_lsn;
    for _ in 0..10 {
        client
            .batch_execute(
                "INSERT INTO other (pad) SELECT repeat('x', 100) FROM generate_series(1, 100)",
            )
            .await
            .unwrap();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), stream.next()).await;
        let confirmed = confirmed_flush_lsn(&client, &cfg.slot).await;
        assert!(
            confirmed < end_lsn,
            "slot confirmed {confirmed} past the unconfirmed commit ending at {end_lsn}"
        );
    }
    assert!(confirmed_flush_lsn(&client, &cfg.slot).await >= start);

    // Once confirmed, and with only unpublished WAL after it, the slot moves to the server's
    // WAL end while the client receives no changes.
    stream.confirm(end_lsn);
    let deadline = tokio::time::Instant::now() + WAIT;
    let advanced = loop {
        client
            .batch_execute("INSERT INTO other (pad) VALUES ('idle traffic')")
            .await
            .unwrap();
        while let Ok(ev) =
            tokio::time::timeout(std::time::Duration::from_millis(300), stream.next()).await
        {
            let ev = ev.unwrap();
            assert!(
                matches!(ev, SourceEvent::Keepalive { .. }),
                "only keepalives expected, got {}",
                kind(&ev)
            );
        }
        let confirmed = confirmed_flush_lsn(&client, &cfg.slot).await;
        if confirmed > end_lsn {
            break confirmed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot stuck at {confirmed} while idle"
        );
    };
    assert!(advanced > end_lsn);
    stream.close().await.unwrap();
    drop_slot(&client, &cfg.slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_slot_resumes_after_the_confirmed_position() {
    let db = fresh_db("resume").await;
    let client = sql(&db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let cfg = source_config(&db, Some(&["t"]));
    let slot = SlotSpec::Named(cfg.slot.clone());
    let mut stream = LogicalStream::start(&cfg, slot.clone()).await.unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    let events = events_until(&mut stream, |e| {
        e.iter()
            .filter(|e| matches!(e, SourceEvent::Commit { .. }))
            .count()
            == 2
    })
    .await;
    // Confirm only the first transaction.
    let first_end = events
        .iter()
        .find_map(|e| match e {
            SourceEvent::Commit { end_lsn, .. } => Some(*end_lsn),
            _ => None,
        })
        .unwrap();
    stream.confirm(first_end);
    stream.close().await.unwrap();
    // The walsender may hold the slot for a moment after the session ends.
    let mut stream = wait_for("the slot to be released", || {
        let (cfg, slot) = (cfg.clone(), slot.clone());
        async move {
            match LogicalStream::start(&cfg, slot).await {
                Ok(s) => Some(s),
                Err(e) if e.is_transient() => None,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    let again = changes(&mut stream, 1).await;
    match &again[0].op {
        Op::Insert { new } => assert_eq!(
            new.0[0],
            Datum::Text("2".into()),
            "the unconfirmed transaction is sent again"
        ),
        other => panic!("{other:?}"),
    }
    stream.close().await.unwrap();
    drop_slot(&client, &cfg.slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_creates_what_is_missing_and_refuses_what_is_wrong() {
    let db = fresh_db("manage").await;
    let client = sql(&db).await;
    client
        .batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
        .await
        .unwrap();

    // Without manage, a missing publication and a missing slot are errors with a hint.
    let mut cfg = source_config(&db, Some(&["a"]));
    cfg.manage = false;
    let err = LogicalStream::start(&cfg, SlotSpec::Named(cfg.slot.clone()))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SourceError::PublicationMissing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HINT"), "{err}");
    client
        .batch_execute("CREATE PUBLICATION pgfanout FOR TABLE a")
        .await
        .unwrap();
    let err = LogicalStream::start(&cfg, SlotSpec::Named(cfg.slot.clone()))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::SlotMissing { .. }), "{err}");

    // With manage, the slot is created and missing tables are added to the publication.
    cfg.manage = true;
    cfg.tables = Some(vec![
        pgfanout::sql::QualifiedName::parse("a").unwrap(),
        pgfanout::sql::QualifiedName::parse("b").unwrap(),
    ]);
    let stream = LogicalStream::start(&cfg, SlotSpec::Named(cfg.slot.clone()))
        .await
        .unwrap();
    stream.close().await.unwrap();
    let published: Vec<String> = client
        .query("SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'pgfanout' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["a", "b"]);
    let plugin: String = client
        .query_one(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plugin, "pgoutput");
    drop_slot(&client, &cfg.slot).await;

    // A slot with another plugin is refused, and so is a slot of another database.
    let other = format!("{}_td", cfg.slot);
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&other],
        )
        .await
        .unwrap();
    let err = LogicalStream::start(&cfg, SlotSpec::Named(other.clone()))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::SlotPlugin { .. }), "{err}");
    assert!(err.to_string().contains("test_decoding"), "{err}");
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&other])
        .await
        .unwrap();

    let elsewhere_db = fresh_db("manage_other").await;
    let elsewhere = sql(&elsewhere_db).await;
    let foreign = format!("{}_foreign", cfg.slot);
    create_slot(&elsewhere, &foreign).await;
    let err = LogicalStream::start(&cfg, SlotSpec::Named(foreign.clone()))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::SlotDatabase { .. }), "{err}");
    assert!(err.to_string().contains(&elsewhere_db), "{err}");
    elsewhere
        .execute("SELECT pg_drop_replication_slot($1)", &[&foreign])
        .await
        .unwrap();

    // A role without REPLICATION cannot open the session; the error says how to fix it.
    let mut no_repl = cfg.clone();
    no_repl.conn.user = "no_repl".into();
    let err = LogicalStream::start(&no_repl, SlotSpec::Temporary)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SourceError::NoReplicationPrivilege { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("ALTER ROLE no_repl WITH REPLICATION"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_below_logical_is_refused() {
    let pg = tokio::task::spawn_blocking(|| {
        pgfanout_testkit::localpg::LocalPostgres::start(&pgfanout_testkit::localpg::Options {
            conf: vec!["wal_level = replica".into()],
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let mut cfg = source_config("postgres", None);
    cfg.conn = pg_conninfo(&pg, "postgres");
    let err = LogicalStream::start(&cfg, SlotSpec::Temporary)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, SourceError::WalLevel { actual } if actual == "replica"),
        "{err}"
    );
    assert!(err.to_string().contains("wal_level = logical"), "{err}");
}
