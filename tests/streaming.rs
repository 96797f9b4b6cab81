//! pgoutput protocol 2: transactions streamed while in progress, against a real server whose
//! `logical_decoding_work_mem` is 64 kB (so a few hundred rows stream). Whatever is streamed,
//! aborted, rolled back to a savepoint or interrupted by a SIGKILL, the change log must equal
//! a protocol 1 reference run over the same WAL: the same changes with the same seqs, LSNs and
//! xids, and the same commits.

mod support;

use std::path::{Path, PathBuf};

use pgfanout::change::{Datum, Op, SequencedChange};
use pgfanout::changelog::{CommitInfo, LogRecord};
use support::*;

/// A fresh database whose walsenders stream (protocol 2) or spill (protocol 1) any transaction
/// past 64 kB of decoded changes, with two published tables.
async fn streaming_db(prefix: &str) -> (String, tokio_postgres::Client) {
    let db = fresh_db(prefix).await;
    let client = sql(&db).await;
    client
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET logical_decoding_work_mem = '64kB';
             CREATE TABLE items (id int PRIMARY KEY, v text);
             CREATE TABLE events (id serial PRIMARY KEY, item int, kind text);
             CREATE PUBLICATION pgfanout FOR TABLE items, events;"
        ))
        .await
        .unwrap();
    (db, client)
}

fn write_config(dir: &Path, db: &str, slot: &str, protocol: &str) -> (PathBuf, PathBuf) {
    let pg = server();
    let log_dir = dir.join(format!("log-{slot}"));
    let path = dir.join(format!("{slot}.toml"));
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = \"postgres://postgres@/{db}?host={}&port={}\"\nslot = \"{slot}\"\nprotocol = {protocol}\nstatus_interval = \"100ms\"\n\
             [log]\ndir = \"{}\"\nsync_interval = \"20ms\"\nsegment_mb = 1\n\
             [state]\ncheckpoint_interval = \"200ms\"\n",
            pg.socket_dir().display(),
            pg.port(),
            log_dir.display()
        ),
    )
    .unwrap();
    (path, log_dir)
}

/// Runs `pgfanout run --endpos <now>` to its end, which must succeed.
async fn logged_to_now(client: &tokio_postgres::Client, cfg: &Path) {
    let out = run_to_now(client, cfg, &[]).await;
    assert!(
        out.status.success(),
        "pgfanout run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The change log once it holds the end marker (an `events` row of kind `end`).
async fn wait_for_end(log: &Path) -> Vec<SequencedChange> {
    wait_for("the end marker in the change log", || {
        let log = log.to_owned();
        async move {
            let changes = tokio::task::spawn_blocking(move || read_log(&log))
                .await
                .unwrap();
            changes
                .iter()
                .any(|c| {
                    matches!(&c.change.op, Op::Insert { new }
                        if new.0.get(2) == Some(&Datum::Text("end".into())))
                })
                .then_some(changes)
        }
    })
    .await
}

fn commits(dir: &Path) -> Vec<CommitInfo> {
    records(dir)
        .into_iter()
        .filter_map(|r| match r {
            LogRecord::Commit(c) => Some(c),
            LogRecord::Change(_) => None,
        })
        .collect()
}

/// The `v` text of the `items` inserts in the log.
fn item_values(changes: &[SequencedChange]) -> Vec<String> {
    changes
        .iter()
        .filter(|c| c.change.relation.name == "items")
        .filter_map(|c| match &c.change.op {
            Op::Insert { new } => match new.0.get(1) {
                Some(Datum::Text(t)) => Some(String::from_utf8_lossy(t).into_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The slot's protocol-2 statistics: (streamed transactions, spilled bytes).
async fn slot_stats(client: &tokio_postgres::Client, slot: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT coalesce(stream_txns, 0), coalesce(spill_bytes, 0)
             FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn assert_same_log(got_dir: &Path, want_dir: &Path) {
    let got = read_log(got_dir);
    let want = read_log(want_dir);
    assert_eq!(got.len(), want.len(), "as many changes as protocol 1");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(comparable(g), comparable(w));
    }
    let got_commits = commits(got_dir);
    let want_commits = commits(want_dir);
    assert_eq!(got_commits, want_commits, "the same commits as protocol 1");
    pgfanout::changelog::verify(got_dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_aborted_and_rolled_back_transactions_log_exactly_what_protocol_1_logs() {
    let (db, client) = streaming_db("stream_seq").await;
    let tmp = tempfile::tempdir().unwrap();
    let (v1_cfg, v1_log) = write_config(tmp.path(), &db, &format!("v1_{db}"), "1");
    let (v2_cfg, v2_log) = write_config(tmp.path(), &db, &format!("v2_{db}"), "2");
    // Both slots start before any change: they see the same WAL.
    for slot in [format!("v1_{db}"), format!("v2_{db}")] {
        create_slot(&client, &slot).await;
    }

    let a = sql(&db).await;
    let b = sql(&db).await;
    let c = sql(&db).await;
    let row = |from: i32, n: i32, tag: &str| {
        format!("INSERT INTO items SELECT g, '{tag}' || g FROM generate_series({from}, {from} + {n} - 1) g;")
    };
    // Two large transactions interleaved, each with a savepoint rolled back and one released,
    // small ones committing in between, and a large one that aborts.
    a.batch_execute(&format!("BEGIN; {}", row(0, 3000, "a")))
        .await
        .unwrap();
    b.batch_execute(&format!("BEGIN; {}", row(10_000, 3000, "b")))
        .await
        .unwrap();
    c.batch_execute(&row(50_000, 1, "small")).await.unwrap();
    a.batch_execute(&format!(
        "SAVEPOINT s1; {} SAVEPOINT s2; {} ROLLBACK TO s1; {}",
        row(3000, 2000, "rolled back"),
        row(6000, 500, "rolled back nested"),
        row(3000, 1000, "a after rollback"),
    ))
    .await
    .unwrap();
    b.batch_execute(&format!(
        "SAVEPOINT t; {} RELEASE t; UPDATE items SET v = v || '+' WHERE id BETWEEN 10000 AND 10999;",
        row(13_000, 1500, "b released"),
    ))
    .await
    .unwrap();
    c.batch_execute(&row(50_001, 1, "small")).await.unwrap();
    c.batch_execute(&format!(
        "BEGIN; {} ROLLBACK;",
        row(60_000, 4000, "aborted")
    ))
    .await
    .unwrap();
    a.batch_execute("DELETE FROM items WHERE id < 500; INSERT INTO events (item, kind) SELECT g, 'e' FROM generate_series(1, 2000) g; COMMIT;")
        .await
        .unwrap();
    c.batch_execute(&row(50_002, 1, "small")).await.unwrap();
    b.batch_execute(&format!(
        "SAVEPOINT u; {} ROLLBACK TO u; COMMIT;",
        row(20_000, 1000, "rolled back")
    ))
    .await
    .unwrap();
    // A streamed transaction replicated from elsewhere (a session with a replication origin).
    let d = sql(&db).await;
    d.batch_execute(&format!(
        "SELECT pg_replication_origin_create('origin_{db}');
         SELECT pg_replication_origin_session_setup('origin_{db}');
         BEGIN; {} COMMIT;",
        row(80_000, 2000, "from elsewhere")
    ))
    .await
    .unwrap();
    // A streamed transaction that truncates what others wrote.
    c.batch_execute(&format!(
        "BEGIN; {} TRUNCATE events; INSERT INTO events (item, kind) VALUES (-1, 'end'); COMMIT;",
        row(70_000, 2000, "c")
    ))
    .await
    .unwrap();

    logged_to_now(&client, &v2_cfg).await;
    logged_to_now(&client, &v1_cfg).await;

    // Protocol 2 streamed, protocol 1 spilled: the test covers what it claims to.
    let (streamed, spilled) = wait_for("the slots' statistics", || {
        let client = &client;
        let db = &db;
        async move {
            let v2 = slot_stats(client, &format!("v2_{db}")).await;
            let v1 = slot_stats(client, &format!("v1_{db}")).await;
            (v2.0 > 0 && v1.1 > 0).then_some((v2.0, v1.1))
        }
    })
    .await;
    assert!(streamed >= 3, "{streamed} transactions streamed");
    assert!(spilled > 0);
    assert_eq!(
        slot_stats(&client, &format!("v2_{db}")).await.1,
        0,
        "protocol 2 spilled nothing"
    );

    assert_same_log(&v2_log, &v1_log);
    let values = item_values(&read_log(&v2_log));
    assert!(values.iter().all(|v| !v.starts_with("rolled back")));
    assert!(values.iter().all(|v| !v.starts_with("aborted")));
    assert_eq!(
        values.iter().filter(|v| v.starts_with("a after")).count(),
        1000
    );
    assert_eq!(
        values
            .iter()
            .filter(|v| v.starts_with("b released"))
            .count(),
        1500
    );
    assert_eq!(values.iter().filter(|v| v.starts_with("small")).count(), 3);
    assert_eq!(
        values
            .iter()
            .filter(|v| v.starts_with("from elsewhere"))
            .count(),
        2000
    );
    // Nothing is left in the spool once every transaction ended.
    let spool = v2_log.join("streaming");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0, "{spool:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_in_the_middle_of_a_streamed_transaction_loses_and_doubles_nothing() {
    let (db, client) = streaming_db("stream_kill").await;
    let tmp = tempfile::tempdir().unwrap();
    let (v1_cfg, v1_log) = write_config(tmp.path(), &db, &format!("v1_{db}"), "1");
    let (v2_cfg, v2_log) = write_config(tmp.path(), &db, &format!("v2_{db}"), "\"auto\"");
    for slot in [format!("v1_{db}"), format!("v2_{db}")] {
        create_slot(&client, &slot).await;
    }
    let mut daemon = Daemon::start(&v2_cfg);

    // A large transaction in progress, written in steps, with small ones committing meanwhile.
    let big = sql(&db).await;
    big.batch_execute("BEGIN").await.unwrap();
    let spool = v2_log.join("streaming");
    for step in 0..6 {
        big.batch_execute(&format!(
            "INSERT INTO items SELECT g, 'big' || g FROM generate_series({0}, {0} + 999) g",
            step * 1000
        ))
        .await
        .unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO events (item, kind) VALUES ({step}, 'small')"
            ))
            .await
            .unwrap();
        if step == 2 {
            // Killed while the transaction is spooled, not committed.
            wait_for("a spooled transaction", || {
                let spool = spool.clone();
                async move {
                    std::fs::read_dir(&spool)
                        .ok()
                        .and_then(|mut d| d.next())
                        .map(|_| ())
                }
            })
            .await;
            daemon.kill9();
            daemon = Daemon::start(&v2_cfg);
        }
    }
    big.batch_execute("COMMIT").await.unwrap();
    // The small transactions that committed while it was in progress reached the log before it.
    client
        .batch_execute("INSERT INTO events (item, kind) VALUES (-1, 'end')")
        .await
        .unwrap();
    let end_lsn = wal_insert_lsn(&client).await;
    wait_for_end(&v2_log).await;
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM should exit 0, got {status}");
    // The slot never confirms past what the log holds.
    let confirmed = confirmed_flush(&client, &format!("v2_{db}")).await;
    assert!(confirmed <= log_end(&v2_log).await);
    assert!(log_end(&v2_log).await >= end_lsn);

    logged_to_now(&client, &v1_cfg).await;
    assert_same_log(&v2_log, &v1_log);
    let changes = read_log(&v2_log);
    assert_eq!(changes.len(), 6000 + 6 + 1);
    // The small transactions come before the large one, which committed after them.
    let first_big = changes
        .iter()
        .position(|c| c.change.relation.name == "items")
        .unwrap();
    assert_eq!(first_big, 6, "six small commits first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_open_streamed_transactions_hold_one_file_open_and_end_as_they_should() {
    const OPEN: usize = 24;
    let (db, client) = streaming_db("stream_many").await;
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, log) = write_config(tmp.path(), &db, &format!("v2_{db}"), "2");
    create_slot(&client, &format!("v2_{db}")).await;
    let daemon = Daemon::start(&cfg);
    let mut open = Vec::new();
    for i in 0..OPEN {
        let c = sql(&db).await;
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO items SELECT g, 'open' || g FROM generate_series({0}, {0} + 1499) g",
            i * 10_000
        ))
        .await
        .unwrap();
        open.push(c);
    }
    // Another transaction makes the server stream what it holds beyond its memory limit.
    client
        .batch_execute("INSERT INTO events (item, kind) VALUES (0, 'nudge')")
        .await
        .unwrap();
    let spool = log.join("streaming");
    let spooled = wait_for("most open transactions spooled", || {
        let spool = spool.clone();
        async move {
            let n = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
            (n >= OPEN / 2).then_some(n)
        }
    })
    .await;
    // However many are open, the daemon holds at most the block being written.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.0.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|target| target.starts_with(&spool))
        .count();
    assert!(fds <= 1, "{fds} spool files open with {spooled} spooled");

    for (i, c) in open.iter().enumerate() {
        let end = if i % 2 == 0 { "COMMIT" } else { "ROLLBACK" };
        c.batch_execute(end).await.unwrap();
    }
    client
        .batch_execute("INSERT INTO events (item, kind) VALUES (-1, 'end')")
        .await
        .unwrap();
    let changes = wait_for_end(&log).await;
    assert!(daemon.stop().success());
    // The committed half, each transaction whole and in one piece, nothing of the others.
    assert_eq!(item_values(&changes).len(), OPEN / 2 * 1500);
    let mut xids: Vec<u32> = changes.iter().map(|c| c.change.xid).collect();
    xids.dedup();
    assert_eq!(xids.len(), OPEN / 2 + 2, "each transaction contiguous");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
}
