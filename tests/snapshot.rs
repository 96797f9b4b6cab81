//! Snapshots against real servers: rows that existed before the slot reach the destinations,
//! consistently with a workload running while they are read (DBLog watermarks), across
//! SIGKILLs, and when a destination's coverage grows or a resync is asked for.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const TABLES: [&str; 3] = ["accounts", "orders", "notes"];
const TENANTS: [&str; 4] = ["t1", "t2", "t3", "t4"];

/// Three tables keyed by (tenant, id), with a value and a large column.
async fn source_with_rows(prefix: &str, rows_per_table: i32) -> (String, tokio_postgres::Client) {
    let db = fresh_db(prefix).await;
    let source = sql(&db).await;
    for t in TABLES {
        source
            .batch_execute(&format!(
                "CREATE TABLE {t} (tenant text NOT NULL, id int NOT NULL, v text, big text,
                                   PRIMARY KEY (tenant, id));
                 INSERT INTO {t} SELECT 't' || (1 + g % 4), g, 'v' || g,
                        CASE WHEN g % 500 = 0
                             THEN (SELECT string_agg(md5(g::text || k), '') FROM generate_series(1, 200) k)
                        END
                 FROM generate_series(1, {rows_per_table}) g;"
            ))
            .await
            .unwrap();
    }
    (db, source)
}

fn mappings_toml() -> String {
    TABLES
        .iter()
        .map(|t| {
            format!(
                "\n[[mappings]]\nname = \"{t}\"\nsource = \"public.{t}\"\ntenant_key = \"tenant\"\n\
                 target = \"{t}\"\n[mappings.columns]\ntenant = \"tenant\"\nid = \"id\"\nv = \"v\"\nbig = \"big\"\n"
            )
        })
        .collect()
}

fn pg_destination(name: &str, db: &str, tenants: &[&str], mappings: &[&str]) -> String {
    let list = |xs: &[&str]| {
        xs.iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n[[destinations]]\nname = \"{name}\"\nkind = \"postgres\"\nurl = \"{}\"\n\
         tenants = [{}]\nmappings = [{}]\nflush_interval = \"50ms\"\n",
        url_on(server(), db),
        list(tenants),
        list(mappings)
    )
}

fn write_config(dir: &Path, db: &str, snapshot: &str, destinations: &str) -> PathBuf {
    let path = dir.join("pgfanout.toml");
    let tables: Vec<String> = TABLES.iter().map(|t| format!("\"public.{t}\"")).collect();
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = \"s_{db}\"\ntables = [{}]\nstatus_interval = \"100ms\"\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\n\
             [state]\ncheckpoint_interval = \"200ms\"\n\
             [snapshot]\n{snapshot}\n{}{destinations}",
            toml_str(&url_on(server(), db)),
            tables.join(", "),
            toml_str(&dir.join("log").display().to_string()),
            mappings_toml(),
        ),
    )
    .unwrap();
    path
}

type TableRows = Vec<(String, i32, Option<String>, Option<String>)>;

async fn rows_of(
    client: &tokio_postgres::Client,
    table: &str,
    tenants: &[&str],
) -> Option<TableRows> {
    let tenants: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
    match client
        .query(
            &format!(
                "SELECT tenant, id, v, md5(big) FROM {table} WHERE tenant = ANY($1) ORDER BY tenant, id"
            ),
            &[&tenants],
        )
        .await
    {
        Ok(rows) => Some(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect(),
        ),
        Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => None,
        Err(e) => panic!("reading {table}: {e}"),
    }
}

/// Waits until every table of `target` equals the source's rows of `tenants`.
async fn wait_projection(
    source: &tokio_postgres::Client,
    target_db: &str,
    tables: &[&str],
    tenants: &[&str],
) {
    let target = sql(target_db).await;
    let deadline = Instant::now() + WAIT * 3;
    for t in tables {
        loop {
            let want = rows_of(source, t, tenants).await.unwrap();
            let got = rows_of(&target, t, tenants).await.unwrap_or_default();
            if want == got {
                // Only the destination's tenants, nothing else.
                let all = rows_of(&target, t, &TENANTS).await.unwrap_or_default();
                assert_eq!(
                    all.len(),
                    got.len(),
                    "{target_db}.{t} holds rows of tenants it does not serve"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {target_db}.{t} to equal the source's rows of {tenants:?}: {} expected, {} found; first missing {:?}; first extra {:?}",
                want.len(),
                got.len(),
                want.iter().find(|r| !got.contains(r)),
                got.iter().find(|r| !want.contains(r)),
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Writes aimed at the keys being read: updates, deletes, inserts, key changes and tenant
/// moves, in small transactions, until `stop`. Returns the rounds run.
async fn churn(db: String, worker: i32, max_id: i32, stop: Arc<AtomicBool>) -> u64 {
    let client = sql(&db).await;
    let mut rounds = 0u64;
    let mut next_new = 1_000_000 + worker * 100_000;
    while !stop.load(Ordering::Relaxed) {
        let t = TABLES[(rounds % 3) as usize];
        let id = 1 + (rand::random::<u32>() % max_id as u32) as i32;
        let statement = match rounds % 6 {
            0 => format!("UPDATE {t} SET v = v || '+' WHERE id BETWEEN {id} AND {id} + 20"),
            1 => format!("DELETE FROM {t} WHERE id BETWEEN {id} AND {id} + 3"),
            2 => {
                next_new += 1;
                format!("INSERT INTO {t} VALUES ('t{}', {next_new}, 'new', NULL)", 1 + next_new % 4)
            }
            // A key change: the row leaves its place in the key order.
            3 => format!("UPDATE {t} SET id = id + 2000000 WHERE id = {id}"),
            // A tenant move: into another destination's tenants, and into one no one serves.
            4 => format!("UPDATE {t} SET tenant = CASE tenant WHEN 't1' THEN 't2' WHEN 't2' THEN 't4' ELSE 't1' END WHERE id BETWEEN {id} AND {id} + 2"),
            _ => format!("UPDATE {t} SET big = NULL, v = 'cleared' WHERE id = {id}"),
        };
        // Key changes may collide with an earlier one; that transaction just fails.
        let _ = client.batch_execute(&statement).await;
        rounds += 1;
    }
    rounds
}

async fn snapshots_done(state: &tokio_postgres::Client) -> bool {
    match state
        .query_one(
            "SELECT count(*) FILTER (WHERE state IN ('pending', 'running')), count(*) FROM pgfanout.snapshots",
            &[],
        )
        .await
    {
        Ok(r) => r.get::<_, i64>(0) == 0 && r.get::<_, i64>(1) > 0,
        Err(_) => false,
    }
}

async fn wait_snapshots_done(state: &tokio_postgres::Client) {
    wait_for("the snapshots to complete", || async {
        snapshots_done(state).await.then_some(())
    })
    .await;
}

/// The initial snapshot of 3 × 34,000 pre-existing rows, while a workload changes, deletes,
/// re-keys and moves the rows being read: every destination ends equal to its tenants'
/// projection, nothing lost, doubled, stale or resurrected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_under_write_load_equals_the_source() {
    let (db, source) = source_with_rows("snap_init", 34_000).await;
    let (a, b) = (fresh_db("snap_init_a").await, fresh_db("snap_init_b").await);
    let dir = tempfile::tempdir().unwrap();
    let destinations = pg_destination("a", &a, &["t1"], &TABLES)
        + &pg_destination("b", &b, &["t2", "t3"], &TABLES);
    let config = write_config(
        dir.path(),
        &db,
        "chunk_rows = 2000\nparallelism = 3",
        &destinations,
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(churn(db.clone(), w, 34_000, stop.clone())))
        .collect();
    wait_snapshots_done(&source).await;
    // Changes keep coming after the snapshot too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rounds = stop_workload(&stop, workers).await;
    assert!(rounds > 100, "the workload ran {rounds} rounds");
    wait_projection(&source, &a, &TABLES, &["t1"]).await;
    wait_projection(&source, &b, &TABLES, &["t2", "t3"]).await;

    // Every chunk was emitted into the log once: each (table, range, chunk) mark appears once.
    let mut marks = std::collections::HashSet::new();
    let mut snapshot_rows = 0;
    for c in read_log(&dir.path().join("log")) {
        match &c.change.op {
            pgfanout::change::Op::SnapshotMark { mark, .. } if !mark.table_done => {
                assert!(
                    marks.insert((c.change.relation.name.clone(), mark.range, mark.chunk)),
                    "chunk {:?} emitted twice",
                    (c.change.relation.name.clone(), mark.range, mark.chunk)
                );
            }
            pgfanout::change::Op::Snapshot { .. } => snapshot_rows += 1,
            _ => {}
        }
    }
    assert!(
        snapshot_rows > 90_000,
        "{snapshot_rows} snapshot rows in the log"
    );
    assert!(daemon.stop().success());
}

/// Per (table, range), the chunk numbers of the marks in the log, in log order.
fn chunk_marks(log: &Path) -> std::collections::BTreeMap<(String, u32), Vec<u64>> {
    let mut marks: std::collections::BTreeMap<(String, u32), Vec<u64>> = Default::default();
    for c in read_log(log) {
        if let pgfanout::change::Op::SnapshotMark { mark, .. } = &c.change.op {
            if !mark.table_done {
                marks
                    .entry((c.change.relation.name.clone(), mark.range))
                    .or_default()
                    .push(mark.chunk);
            }
        }
    }
    marks
}

/// SIGKILL five times at random moments while a snapshot runs under write load: the targets
/// still equal the source, every chunk is in the log once, and no range ever starts over
/// (its chunks are numbered 1, 2, 3 … without a repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_killed_five_times_continues_from_its_last_chunk() {
    let (db, source) = source_with_rows("snap_kill", 30_000).await;
    let a = fresh_db("snap_kill_a").await;
    let dir = tempfile::tempdir().unwrap();
    let destinations = pg_destination("a", &a, &["t1", "t2", "t3", "t4"], &TABLES);
    let config = write_config(
        dir.path(),
        &db,
        "chunk_rows = 300\nparallelism = 2",
        &destinations,
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(churn(db.clone(), w, 30_000, stop.clone())))
        .collect();
    let daemon = kill_at_random_moments(daemon, &config, 5, 400).await;
    wait_snapshots_done(&source).await;
    stop_workload(&stop, workers).await;
    wait_projection(&source, &a, &TABLES, &TENANTS).await;
    let marks = chunk_marks(&dir.path().join("log"));
    // Each table of 30,000 rows is read as two key ranges at once (parallelism 2).
    assert_eq!(marks.len(), 6, "(table, range) pairs: {:?}", marks.keys());
    for (range, chunks) in &marks {
        let expected: Vec<u64> = (1..=chunks.len() as u64).collect();
        assert_eq!(chunks, &expected, "the chunks of {range:?} in the log");
    }
    assert!(daemon.stop().success());
}

/// `pgfanout resync` refills a wiped target table and removes a row the source never had,
/// with the daemon running; a tenant added to a destination's configuration is backfilled
/// at the next start while another destination streams on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_refills_a_wiped_table_and_a_new_tenant_is_backfilled() {
    let (db, source) = source_with_rows("snap_resync", 6_000).await;
    let (a, b) = (
        fresh_db("snap_resync_a").await,
        fresh_db("snap_resync_b").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let both = |a_tenants: &[&str]| {
        pg_destination("a", &a, a_tenants, &TABLES) + &pg_destination("b", &b, &["t2"], &TABLES)
    };
    let config = write_config(dir.path(), &db, "chunk_rows = 1000", &both(&["t1"]));
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    wait_snapshots_done(&source).await;
    wait_projection(&source, &a, &TABLES, &["t1"]).await;

    // Wiped, plus a row the source does not have.
    let target = sql(&a).await;
    target
        .batch_execute("DELETE FROM orders; INSERT INTO orders (tenant, id, v, _seq) VALUES ('t1', -5, 'stray', 1)")
        .await
        .unwrap();
    let out = cli(
        &["resync", "--destination", "a", "--mapping", "orders"],
        &config,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resync failed: {stderr}");
    assert!(stderr.contains("done:"), "{stderr}");
    wait_projection(&source, &a, &TABLES, &["t1"]).await;
    // status --json lists it with its progress; `log read` shows its rows.
    let out = cli(&["status", "--json"], &config).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resync = status["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["reason"] == "resync")
        .unwrap_or_else(|| panic!("no resync in {status}"));
    assert_eq!(resync["state"], "done", "{resync}");
    assert_eq!(resync["tables"], 1, "{resync}");
    assert_eq!(resync["tables_done"], 1, "{resync}");
    assert!(resync["rows"].as_u64().unwrap() >= 6_000, "{resync}");
    let from = resync["done_seq"].as_u64().unwrap().to_string();
    let out = cli(
        &["log", "read", "--from-seq", &from, "--limit", "1"],
        &config,
    )
    .await;
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("\"op\":\"snapshot_mark\""), "{line}");

    // Refused before anything is requested.
    for (args, says) in [
        (
            &["resync", "--destination", "nope"][..],
            "no destination named \"nope\"",
        ),
        (
            &["resync", "--destination", "a", "--tenant", "t2"][..],
            "does not serve tenant \"t2\"",
        ),
        (
            &["resync", "--destination", "a", "--mapping", "x"][..],
            "has no mapping \"x\"",
        ),
    ] {
        let out = cli(args, &config).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }

    // Tenant t3 is added to destination a under write load: backfilled at the next start.
    assert!(daemon.stop().success());
    let config = write_config(dir.path(), &db, "chunk_rows = 1000", &both(&["t1", "t3"]));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..1)
        .map(|w| tokio::spawn(churn(db.clone(), w, 6_000, stop.clone())))
        .collect();
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    wait_snapshots_done(&source).await;
    stop_workload(&stop, workers).await;
    wait_projection(&source, &a, &TABLES, &["t1", "t3"]).await;
    wait_projection(&source, &b, &TABLES, &["t2"]).await;
    let reasons: Vec<String> = source
        .query("SELECT reason FROM pgfanout.snapshots ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, ["initial", "resync", "coverage: new tenants"]);
    assert!(daemon.stop().success());
}

/// ClickHouse: the initial snapshot under the same write load; under FINAL every live row
/// equals the source's, each key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_under_write_load_reaches_clickhouse() {
    let ch = clickhouse();
    let (db, source) = source_with_rows("snap_ch", 20_000).await;
    let database = fresh_ch_db("snap_ch");
    let dir = tempfile::tempdir().unwrap();
    let destination = format!(
        "\n[[destinations]]\nname = \"analytics\"\nkind = \"clickhouse\"\nurl = {}\n\
         database = {}\ntenants = \"*\"\nmappings = [\"accounts\", \"orders\", \"notes\"]\n\
         tenant_columns = [\"tenant\"]\nflush_interval = \"100ms\"\n",
        toml_str(&ch.url()),
        toml_str(&database)
    );
    let config = write_config(
        dir.path(),
        &db,
        "chunk_rows = 1500\nparallelism = 3",
        &destination,
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(churn(db.clone(), w, 20_000, stop.clone())))
        .collect();
    wait_snapshots_done(&source).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_workload(&stop, workers).await;
    let deadline = Instant::now() + WAIT * 3;
    for t in TABLES {
        loop {
            let want: String = source
                .query(
                    &format!(
                        "SELECT tenant || E'\\t' || id || E'\\t' || coalesce(v, '\\N') || E'\\t' || coalesce(length(big)::text, '\\N')
                         FROM {t} ORDER BY tenant, id"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0) + "\n")
                .collect();
            let got = ch
                .query(&format!(
                    "SELECT tenant, id, v, length(big) FROM `{database}`.`{t}` FINAL \
                     WHERE _is_deleted = 0 ORDER BY tenant, id"
                ))
                .unwrap_or_default();
            if want == got {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for ClickHouse {t} to equal the source: {} rows expected, {} found; first differing: {:?}",
                want.lines().count(),
                got.lines().count(),
                want.lines().zip(got.lines()).find(|(a, b)| a != b)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let counts = ch
            .query(&format!(
                "SELECT count(), uniqExact(tenant, id) FROM `{database}`.`{t}` FINAL"
            ))
            .unwrap();
        let (n, distinct) = counts.trim().split_once('\t').unwrap();
        assert_eq!(n, distinct, "{t}: rows under FINAL vs distinct keys");
    }
    assert!(daemon.stop().success());
}

/// Changes the change log never saw (here: the slot was dropped while pgfanout was down, and
/// `run --recreate-slot` held every destination `needs resync`) are made good by the
/// automatic resync: deleted rows leave the target, updated ones are current, and the hold
/// clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_missed_changes_is_resynced_on_its_own() {
    let (db, source) = source_with_rows("snap_auto", 3_000).await;
    let a = fresh_db("snap_auto_a").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        "chunk_rows = 500",
        &pg_destination("a", &a, &TENANTS, &TABLES),
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    wait_snapshots_done(&source).await;
    wait_projection(&source, &a, &TABLES, &TENANTS).await;
    assert!(daemon.stop().success());

    // The server lets go of the slot a moment after the daemon exits.
    let slot = format!("s_{db}");
    wait_for("the slot to be released", || async {
        source
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    source
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    source
        .batch_execute(
            "DELETE FROM orders WHERE id % 3 = 0;
             UPDATE accounts SET v = 'while away' WHERE id % 5 = 0;
             INSERT INTO notes SELECT 't1', g, 'new', NULL FROM generate_series(5000, 5100) g;",
        )
        .await
        .unwrap();
    let mut daemon = Daemon::start_with(&config, &["--recreate-slot"]);
    wait_streaming(&mut daemon, &source, &db).await;
    wait_for("the automatic resync to complete", || async {
        source
            .query_opt(
                "SELECT 1 FROM pgfanout.snapshots WHERE reason = 'auto resync' AND state = 'done'",
                &[],
            )
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    wait_projection(&source, &a, &TABLES, &TENANTS).await;
    // The hold clears once the destination reported a watermark past the snapshot.
    wait_for("the hold to clear", || async {
        let status = destination_status(&config).await;
        status["a"]["hold"].is_null().then_some(())
    })
    .await;
    assert!(daemon.stop().success());
}
